//! The manager's part in mirroring (DTL, crates/dtl): a mirror client for
//! every engine vDisk this router serves in a cluster (unless its VM says
//! `none`), the copies this router holds for other owners, and the
//! takeover from such a copy when its owner is down.
//!
//! Invariants:
//! - a client mirrors one ownership generation: a vDisk served under
//!   another generation (a restart, a move) gets a new client and a new
//!   copy;
//! - this router takes a vDisk over only from a copy it holds of the
//!   current generation whose record in etcd says in sync, with the owner
//!   down, in one guarded transaction (depot_cluster::dtl); a vDisk taken
//!   over that way is served only from that copy — if the import fails it
//!   is retried, never replaced by the backend's older state;
//! - a copy is dropped once the cluster names another holder or a newer
//!   generation for its vDisk, or the vDisk is gone.

use std::collections::HashMap;
use std::sync::Arc;

use depot_dtl::proto::{Close, Commit, Open, Write};
use depot_dtl::{ClientConfig, MirrorClient, MirrorStatus, Mode, ReplicaStore, Subject};
use depot_engine::Volume;

use super::{Manager, State};
use crate::cluster::dtl::EtcdControl;
use crate::error::{DepotError, DepotResult};
use crate::model::VDiskKind;

/// The mirrors of vDisks this router serves, and the copies it holds.
#[derive(Default)]
pub(super) struct Mirrors {
    /// vDisk → (generation, client, the volume it mirrors).
    clients: HashMap<String, (u64, Arc<MirrorClient>, Arc<Volume>)>,
    /// Copies held for other owners (cluster only).
    replicas: Option<Arc<ReplicaStore>>,
}

impl Mirrors {
    /// The copies kept under `<data_dir>/dtl` (cluster routers).
    pub(super) fn open(data_dir: &std::path::Path, clustered: bool) -> DepotResult<Self> {
        let replicas = if clustered {
            Some(Arc::new(
                ReplicaStore::open(&data_dir.join("dtl"))
                    .map_err(|e| DepotError::Internal(e.to_string()))?,
            ))
        } else {
            None
        };
        Ok(Mirrors {
            clients: HashMap::new(),
            replicas,
        })
    }
}

impl Manager {
    /// After a reconcile: every served engine vDisk has a client of its
    /// generation (its VM's mode permitting), and no client outlives its
    /// volume.
    pub(super) fn sync_mirrors(&self, st: &State) {
        let Some(node) = &self.cluster else {
            return;
        };
        let mut want: HashMap<String, (u64, Arc<Volume>, Mode, String)> = HashMap::new();
        for (name, live) in &st.disks {
            let (Some(v), Some(g)) = (&live.volume, live.generation) else {
                continue;
            };
            let Some(rec) = st.catalog.vdisk(name) else {
                continue;
            };
            if rec.info.kind != VDiskKind::Engine {
                continue;
            }
            let mode = st
                .catalog
                .vm(&live.vm)
                .map(|vm| vm.info.dtl)
                .unwrap_or_default();
            if mode == Mode::None {
                continue;
            }
            let vpool = rec.info.vpool.clone().unwrap_or_default();
            want.insert(name.clone(), (g, v.clone(), mode, vpool));
        }
        let mut m = self.mirrors.lock();
        let stale: Vec<String> = m
            .clients
            .iter()
            .filter(|(n, (g, _, v))| {
                want.get(*n)
                    .is_none_or(|(wg, wv, ..)| wg != g || !Arc::ptr_eq(wv, v))
            })
            .map(|(n, _)| n.clone())
            .collect();
        for n in stale {
            if let Some((_, client, v)) = m.clients.remove(&n) {
                v.detach_mirror();
                client.stop();
                tracing::info!(vdisk = %n, "mirror stopped");
            }
        }
        for (name, (g, v, mode, vpool)) in want {
            if m.clients.contains_key(&name) {
                continue;
            }
            let weak = Arc::downgrade(&v);
            let client = MirrorClient::start(
                Subject {
                    vdisk: name.clone(),
                    vpool,
                    id: v.id(),
                    generation: g,
                },
                ClientConfig {
                    mode,
                    ..ClientConfig::default()
                },
                Arc::new(move |kind, seq| {
                    weak.upgrade()
                        .map(|v| v.window_file(kind, seq))
                        .unwrap_or_default()
                }),
                EtcdControl::new(node.clone(), &name, g),
            );
            if let Err(e) = v.attach_mirror(client.clone()) {
                tracing::error!(vdisk = %name, error = %e, "cannot attach the mirror");
                client.stop();
                continue;
            }
            m.clients.insert(name, (g, client, v));
        }
    }

    /// Stops every mirror client (shutdown, after the vPools shipped).
    pub(super) fn stop_mirrors(&self) {
        let clients: Vec<_> = self.mirrors.lock().clients.drain().collect();
        for (_, (_, client, v)) in clients {
            v.detach_mirror();
            client.stop();
        }
    }

    /// The mirror of vDisk `name` as this router (its owner) runs it.
    pub fn mirror_status(&self, name: &str) -> Option<MirrorStatus> {
        self.mirrors
            .lock()
            .clients
            .get(name)
            .map(|(_, c, _)| c.status())
    }

    /// A `dtl.*` request from router `from`.
    pub(super) fn dtl_op(
        &self,
        from: &str,
        op: &str,
        msg: serde_json::Value,
        body: &[u8],
    ) -> Result<serde_json::Value, String> {
        fn arg<T: serde::de::DeserializeOwned>(msg: serde_json::Value) -> Result<T, String> {
            serde_json::from_value(msg).map_err(|e| format!("bad request: {e}"))
        }
        let store = self
            .mirrors
            .lock()
            .replicas
            .clone()
            .ok_or_else(|| "this router runs standalone".to_string())?;
        // Only a vDisk's owner writes its mirror, under its generation.
        let owns = |vdisk: &str, generation: u64| -> Result<(), String> {
            let node = self.cluster.as_ref().ok_or("standalone")?;
            let is_owner = || {
                node.view()
                    .owners
                    .get(vdisk)
                    .is_some_and(|o| o.router == from && o.generation == generation)
            };
            // A new owner's first call may arrive before this router's
            // feed applied its claim: catch up with etcd once.
            if !is_owner() && generation > 0 {
                let _ = node.block_on(node.sync());
            }
            match is_owner() {
                true => Ok(()),
                false => {
                    tracing::warn!(
                        router = from,
                        vdisk,
                        generation,
                        "DTL request refused: not the vDisk's owner"
                    );
                    self.metrics.dtl_refused();
                    Err(format!(
                        "router {from} does not own vDisk {vdisk:?} under generation {generation}"
                    ))
                }
            }
        };
        let r = match op {
            "dtl.open" => {
                let o: Open = arg(msg)?;
                owns(&o.vdisk, o.generation)?;
                store.begin(&o)
            }
            "dtl.write" => {
                let w: Write = arg(msg)?;
                owns(&w.vdisk, w.generation)?;
                store.write(&w, body)
            }
            "dtl.commit" => {
                let c: Commit = arg(msg)?;
                owns(&c.vdisk, c.generation)?;
                store.commit(&c, body)
            }
            "dtl.close" => {
                let c: Close = arg(msg)?;
                let node = self.cluster.as_ref().ok_or("standalone")?;
                let owner = node.view().owners.get(&c.vdisk).map(|o| o.router.clone());
                if owner.as_deref() != Some(from) {
                    return Err(format!("router {from} does not own vDisk {:?}", c.vdisk));
                }
                store.close(&c.vdisk)
            }
            other => return Err(format!("unknown operation {other:?}")),
        };
        r.map(|()| serde_json::Value::Null)
            .map_err(|e| e.to_string())
    }

    /// Holder side, in a reconcile: takes over every vDisk whose owner is
    /// down and whose in-sync mirror of the current generation this router
    /// holds; drops copies the cluster no longer wants here.
    pub(super) fn take_over_mirrored(&self, st: &mut State) {
        let Some(node) = self.cluster.clone() else {
            return;
        };
        let Some(store) = self.mirrors.lock().replicas.clone() else {
            return;
        };
        let me = node.name().to_string();
        let due: Vec<(String, depot_cluster::Ownership, depot_cluster::Mirrored)> = {
            let v = node.view();
            store
                .list()
                .into_iter()
                .filter_map(|c| {
                    let owner = v.owners.get(&c.vdisk)?;
                    let m = v.mirrors.get(&c.vdisk)?;
                    (owner.router != me
                        && !v.is_up(&owner.router)
                        && m.lets_take_over(&me, owner)
                        && c.generation == owner.generation)
                        .then(|| (c.vdisk.clone(), owner.clone(), m.clone()))
                })
                .collect()
        };
        for (vdisk, from, mirror) in due {
            let s = node.store().clone();
            let (vd, me2, old) = (vdisk.clone(), me.clone(), from.clone());
            let got = node.block_on(async move {
                depot_cluster::dtl::take_over(&s, &vd, &old, &mirror, &me2).await
            });
            match got {
                Ok(o) => {
                    tracing::warn!(vdisk = %vdisk, from = %from.router, generation = o.generation,
                        "owner is down; taking the vDisk over from its in-sync mirror");
                    node.apply_owner(&vdisk, Some(o));
                    if let Err(e) = self.serve_from_copy(st, &vdisk) {
                        tracing::error!(vdisk = %vdisk, error = %e, "cannot serve from the mirror yet; retrying");
                    }
                }
                Err(e) => {
                    tracing::info!(vdisk = %vdisk, error = %e, "no takeover from the mirror");
                }
            }
        }
        // Copies nobody wants here any more.
        let v = node.view();
        for c in store.list() {
            let gone = st.catalog.vdisk(&c.vdisk).is_none();
            let owner = v.owners.get(&c.vdisk);
            let elsewhere = v.mirrors.get(&c.vdisk).is_some_and(|m| {
                m.record.generation > c.generation
                    || (m.record.generation == c.generation
                        && m.record.holder.as_deref() != Some(me.as_str()))
            });
            let newer_owner = owner.is_some_and(|o| o.generation > c.generation && o.router != me);
            let taken = owner.is_some_and(|o| o.router == me) && self.serving(st, &c.vdisk);
            if gone || elsewhere || newer_owner || taken {
                if let Err(e) = store.close(&c.vdisk) {
                    tracing::warn!(vdisk = %c.vdisk, error = %e, "cannot drop a mirror copy");
                } else {
                    tracing::info!(vdisk = %c.vdisk, "mirror copy dropped");
                }
            }
        }
    }

    fn serving(&self, st: &State, vdisk: &str) -> bool {
        st.disks
            .get(vdisk)
            .is_some_and(|l| l.volume.is_some() || l.raw.is_some())
    }

    /// Whether this router holds a copy of `vdisk` handed to a takeover
    /// (then it is served from that copy, never from the backend alone).
    /// A copy this router holds while a live move brings it the vDisk is
    /// not one: the move's staged state is newer.
    pub(super) fn has_taken_copy(&self, vdisk: &str) -> bool {
        let store = self.mirrors.lock().replicas.clone();
        let (Some(store), Some(node)) = (store, &self.cluster) else {
            return false;
        };
        let Some(g) = store.generation(vdisk) else {
            return false;
        };
        store.is_taken(vdisk)
            && node
                .view()
                .owners
                .get(vdisk)
                .is_some_and(|o| o.router == node.name() && o.generation > g)
    }

    /// Imports `vdisk` (owned here now) from the mirror copy held here and
    /// serves it.
    pub(super) fn serve_from_copy(&self, st: &mut State, vdisk: &str) -> DepotResult<()> {
        let node = self
            .cluster
            .clone()
            .ok_or_else(|| DepotError::Internal("standalone".into()))?;
        let g = node
            .view()
            .owners
            .get(vdisk)
            .filter(|o| o.router == node.name())
            .map(|o| o.generation)
            .ok_or_else(|| DepotError::Internal(format!("vDisk {vdisk} is not owned here")))?;
        let store = self
            .mirrors
            .lock()
            .replicas
            .clone()
            .ok_or_else(|| DepotError::Internal("no mirror store".into()))?;
        let (vpool, copy) = store.copy(vdisk).ok_or_else(|| {
            DepotError::Internal(format!("no usable mirror copy of {vdisk} here"))
        })?;
        let pool = st
            .pools
            .get(&vpool)
            .cloned()
            .ok_or_else(|| super::not_found("vPool", &vpool))?;
        let owner = self.owner(vdisk, g, &pool);
        let started = std::time::Instant::now();
        let volume = pool.recover_mirror(&copy, &owner)?;
        self.go_online(st, vdisk, volume, g)?;
        if let Err(e) = store.close(vdisk) {
            tracing::warn!(vdisk, error = %e, "cannot drop the imported mirror copy");
        }
        self.update_paths(st);
        self.metrics.dtl_takeover();
        tracing::warn!(
            vdisk,
            generation = g,
            import_ms = started.elapsed().as_millis(),
            "vDisk online here from its mirror"
        );
        Ok(())
    }
}

impl Manager {
    /// `depot vdisk recover NAME`: vDisk `name`'s owner is down and no
    /// router holds an in-sync mirror of it, so nobody takes it over by
    /// itself (module docs). States the recovery point — the backend's
    /// copy — and, with `accept_loss`, takes it over here from the backend.
    pub fn recover_vdisk(
        &self,
        name: &str,
        accept_loss: bool,
    ) -> DepotResult<crate::model::RecoverReport> {
        let node = self.cluster.clone().ok_or_else(|| {
            DepotError::BadRequest("this router runs standalone: restart it to recover".into())
        })?;
        let (owner, mirror) = {
            let v = node.view();
            let owner = v
                .owners
                .get(name)
                .cloned()
                .ok_or_else(|| super::not_found("vDisk", name))?;
            if v.is_up(&owner.router) {
                return Err(DepotError::InUse(format!(
                    "router {} (the owner of vDisk {name:?}) is up: there is nothing to recover",
                    owner.router
                )));
            }
            let mirror = v.mirrors.get(name).cloned();
            if let Some(m) = &mirror
                && m.record.state == "in_sync"
                && m.record.generation == owner.generation
                && let Some(h) = &m.record.holder
                && v.is_up(h)
            {
                return Err(DepotError::InUse(format!(
                    "router {h} holds an in-sync mirror of vDisk {name:?} and takes it over by itself, with nothing lost"
                )));
            }
            (owner, mirror)
        };
        let pool = {
            let st = self.lock();
            let rec = st
                .catalog
                .vdisk(name)
                .ok_or_else(|| super::not_found("vDisk", name))?;
            let p = rec.info.vpool.clone().unwrap_or_default();
            st.pools
                .get(&p)
                .cloned()
                .ok_or_else(|| DepotError::Unavailable(format!("vPool {p:?} is not open here")))?
        };
        let meta = pool.backend_manifest(name)?;
        let why = match mirror.filter(|m| m.record.generation == owner.generation) {
            Some(m) => format!("its mirror was {}", m.record.state.replace('_', " ")),
            None => "it had no mirror".to_string(),
        };
        let snaps: Vec<&str> = meta.snapshots.iter().map(|s| s.name.as_str()).collect();
        let point = format!(
            "router {} (the owner of vDisk {name:?}) is down and {why}. Recovery point: the backend's copy \
             ({} log segments shipped, up to segment {:016x}; snapshots: {}). Writes router {} \
             acknowledged after its last upload are only on its flash: they are lost unless it \
             comes back.",
            owner.router,
            meta.shipped.tlogs.len(),
            meta.shipped.next_tlog.saturating_sub(1),
            if snaps.is_empty() {
                "none".to_string()
            } else {
                snaps.join(", ")
            },
            owner.router,
        );
        if !accept_loss {
            return Err(DepotError::InUse(format!(
                "{point} Run again with --accept-loss to take it over from there."
            )));
        }
        let report = self.move_vdisk(name, node.name(), true)?;
        tracing::warn!(vdisk = name, from = %owner.router, "vDisk recovered from the backend: {point}");
        Ok(crate::model::RecoverReport {
            vdisk: name.to_string(),
            from: owner.router,
            to: report.to,
            generation: report.generation,
            recovery_point: point,
        })
    }
}
