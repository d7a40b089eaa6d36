//! The manager's part in a cluster: which vPools and vDisks this router
//! serves, claiming ownership generations, applying the cluster feed, and
//! making the live state match the cluster's (reconcile).
//!
//! Invariants:
//! - this router serves a vDisk's I/O only under an ownership generation it
//!   claimed itself (a compare-and-swap that bumps the generation, so a
//!   previous incarnation of this router, or anyone else, is fenced off);
//!   every other router shows the vDisk as standby with the same identity;
//! - a local-directory vPool belongs to the router that created it and is
//!   opened only there; an S3 vPool is opened on every router, each with
//!   its own flash cache under its data directory;
//! - reconcile is idempotent: it may run after every feed batch, and only
//!   changes what differs from the catalog and the view.

use std::collections::BTreeSet;
use std::sync::Arc;

use depot_block::BlockDevice;
use depot_cluster::keys::kind;
use depot_cluster::{FeedEvent, Ownership, owner};
use depot_engine::BackendConfig;

use super::bootstrap::standby_of;
use super::{Manager, State};
use crate::cluster::feed::revision_of;
use crate::error::{DepotError, DepotResult};
use crate::model::{VDiskRecord, VPoolRecord};

/// A vDisk's ownership and mirror as the API shows them (cluster only).
#[derive(Debug, Default)]
pub(super) struct Owned {
    pub(super) router: Option<String>,
    pub(super) generation: Option<u64>,
    pub(super) dtl: Option<crate::model::DtlView>,
}

/// Gives vDisk `name`'s logical unit a reservation state another router
/// committed (unless its own store already has that or a newer one).
fn push_reservations(st: &State, name: &str, v: &depot_cluster::Versioned) {
    let Some(live) = st.disks.get(name) else {
        return;
    };
    let Some(store) = &live.reservations else {
        return;
    };
    let state = match v.json::<depot_scsi::PrState>() {
        Ok(state) => state,
        Err(e) => {
            tracing::warn!(vdisk = name, error = %e, "ignoring a bad reservation state");
            return;
        }
    };
    // Decided under the unit's PR serialization: a PR OUT of this router
    // may be committing a newer state right now.
    live.lu
        .replace_reservations_if(|| store.newer(v.mod_revision).then_some(state));
}

impl Manager {
    /// Whether this router opens vPool `p`: every vPool on a standalone
    /// router; in a cluster S3 vPools everywhere, a local vPool only on the
    /// router that holds it.
    pub(super) fn opens_here(&self, p: &VPoolRecord) -> bool {
        match (&self.cluster, &p.backend) {
            (None, _) | (Some(_), BackendConfig::S3 { .. }) => true,
            (Some(node), BackendConfig::Local { .. }) => p.router.as_deref() == Some(node.name()),
        }
    }

    /// The router a new vDisk of `vm` in `vpool` should belong to: the
    /// router of a local-directory vPool; else the owner of the VM's other
    /// vDisks when it is up (a VM's disks stay together); else this router.
    pub(super) fn placement(&self, st: &State, vm: &str, vpool: Option<&str>) -> Option<String> {
        let node = self.cluster.as_ref()?;
        if let Some(r) = vpool
            .and_then(|p| st.catalog.vpool(p))
            .and_then(|p| p.router.clone())
        {
            return Some(r);
        }
        let view = node.view();
        st.catalog
            .vm_disks(vm)
            .iter()
            .find_map(|d| view.owners.get(&d.info.name))
            .map(|o| o.router.clone())
            .filter(|r| view.is_up(r))
            .or_else(|| Some(node.name().to_string()))
    }

    /// The engine owner context of `vdisk` under `generation`: standalone
    /// (generation 0) on a standalone router; in a cluster, fenced by this
    /// router's lease and, on a backend without conditional PUTs, by the
    /// ownership in etcd.
    pub(super) fn owner(
        &self,
        vdisk: &str,
        generation: u64,
        pool: &depot_engine::VPool,
    ) -> depot_engine::Owner {
        match &self.cluster {
            None => depot_engine::Owner::standalone(),
            Some(node) => depot_engine::Owner::new(crate::cluster::fencing::VdiskFencing::new(
                node.clone(),
                vdisk,
                generation,
                pool.fencing_mode(),
            )),
        }
    }

    /// Claims `vdisk` for this router under a new generation: from no owner
    /// (a new vDisk) or from this router's own earlier generation (a
    /// restart). The view learns it at once.
    pub(super) fn claim(&self, vdisk: &str) -> DepotResult<Ownership> {
        let Some(node) = &self.cluster else {
            return Ok(Ownership {
                router: String::new(),
                generation: 0,
            });
        };
        let store = node.store().clone();
        let me = node.name().to_string();
        let name = vdisk.to_string();
        let got = node.block_on(async move {
            let cur = owner::get(&store, &name).await?;
            if let Some(c) = &cur
                && c.router != me
            {
                return Err(depot_cluster::ClusterError::Conflict(format!(
                    "vDisk {name:?} is owned by router {}",
                    c.router
                )));
            }
            owner::transfer(&store, &name, cur.as_ref(), &me).await
        })?;
        node.apply_owner(vdisk, Some(got.clone()));
        Ok(got)
    }

    /// Claims a vDisk about to be created here: exclusive (a claim by
    /// another router means it is being created there), or this router's
    /// own leftover claim from a create that failed.
    pub(super) fn claim_new(&self, vdisk: &str) -> DepotResult<u64> {
        let Some(node) = &self.cluster else {
            return Ok(0);
        };
        let store = node.store().clone();
        let me = node.name().to_string();
        let name = vdisk.to_string();
        let got = node.block_on(async move {
            let cur = owner::get(&store, &name).await?;
            if let Some(c) = &cur
                && c.router != me
            {
                return Err(depot_cluster::ClusterError::Conflict(format!(
                    "vDisk {name:?} is being created on router {}",
                    c.router
                )));
            }
            owner::transfer(&store, &name, cur.as_ref(), &me).await
        })?;
        let g = got.generation;
        node.apply_owner(vdisk, Some(got));
        Ok(g)
    }

    /// Gives up the claim of a vDisk whose creation failed.
    pub(super) fn release_claim(&self, vdisk: &str, generation: u64) {
        let Some(node) = &self.cluster else {
            return;
        };
        let store = node.store().clone();
        let name = vdisk.to_string();
        let r = node.block_on(async move {
            let key = owner::key(&store, &name);
            let txn = depot_cluster::Txn::new()
                .guard(depot_cluster::Guard::Revision(
                    key.clone(),
                    i64::try_from(generation).unwrap_or(i64::MAX),
                ))
                .op(depot_cluster::Op::Delete(key));
            store.commit(txn).await
        });
        if let Err(e) = r {
            tracing::warn!(vdisk, error = %e, "cannot release the claim of a failed create");
        }
        node.apply_owner(vdisk, None);
    }

    /// The generation this router serves `d` under, or `None` when another
    /// router owns it. `claimed` is a generation the caller has just
    /// claimed; without one, a router that owns `d` claims a fresh one.
    pub(super) fn serving_generation(
        &self,
        d: &VDiskRecord,
        claimed: Option<u64>,
    ) -> DepotResult<Option<u64>> {
        let Some(node) = &self.cluster else {
            return Ok(Some(0));
        };
        if let Some(g) = claimed {
            return Ok(Some(g));
        }
        let owned = node
            .view()
            .owners
            .get(&d.info.name)
            .is_some_and(|o| o.router == node.name());
        if !owned {
            return Ok(None);
        }
        Ok(Some(self.claim(&d.info.name)?.generation))
    }

    /// Applies one batch of the cluster feed, then reconciles.
    pub fn apply_feed(&self, ev: FeedEvent) {
        let Some(node) = self.cluster.clone() else {
            return;
        };
        let rev = revision_of(&ev);
        let mut st = self.lock();
        match &ev {
            FeedEvent::Snapshot { kvs, revision } => {
                st.catalog.reset(kvs, *revision);
                node.reset_view(kvs, *revision);
            }
            FeedEvent::Changes(changes) => {
                for c in changes {
                    match c {
                        depot_cluster::Change::Put(v) => {
                            if !node.apply_view(Some(v), &v.key) {
                                st.catalog.apply_put(v);
                            } else if let Some((kind::PR, name)) = node.store().keys().parse(&v.key)
                            {
                                push_reservations(&st, name, v);
                            }
                        }
                        depot_cluster::Change::Delete { key, revision } => {
                            if !node.apply_view(None, key) {
                                st.catalog.apply_delete(key, *revision);
                            }
                        }
                    }
                }
            }
        }
        st.catalog.advance(rev);
        self.reconcile(&mut st);
        drop(st);
        node.set_applied(rev);
    }

    /// Re-checks every ownership after the router rejoined.
    pub fn revalidate(&self) {
        let mut st = self.lock();
        self.reconcile(&mut st);
    }

    /// Makes the live state match the catalog and the view.
    pub(super) fn reconcile(&self, st: &mut State) {
        let Some(node) = self.cluster.clone() else {
            return;
        };
        // vPools.
        let pools: Vec<VPoolRecord> = st.catalog.vpools().cloned().collect();
        for p in &pools {
            if self.opens_here(p) && !st.pools.contains_key(&p.name) {
                match self.open_pool(p) {
                    Ok(pool) => {
                        tracing::info!(vpool = %p.name, "vPool opened");
                        st.pools.insert(p.name.clone(), pool);
                    }
                    Err(e) => {
                        tracing::error!(vpool = %p.name, error = %e, "cannot open vPool")
                    }
                }
            }
        }
        // VMs.
        let vms: Vec<_> = st.catalog.vms().cloned().collect();
        for vm in &vms {
            if !st.scsi.contains_key(&vm.info.name)
                && let Err(e) = self.add_target(st, vm)
            {
                tracing::error!(vm = %vm.info.name, error = %e, "cannot build the target");
            }
        }
        // vDisks.
        let disks: Vec<VDiskRecord> = st.catalog.vdisks().cloned().collect();
        let (me, owners) = {
            let v = node.view();
            (node.name().to_string(), v.owners.clone())
        };
        for d in &disks {
            let name = &d.info.name;
            let mine = owners.get(name).is_some_and(|o| o.router == me);
            let Some(live) = st.disks.get(name) else {
                if let Err(e) = self.attach(st, d, false, None) {
                    tracing::error!(vdisk = %name, error = %e, "cannot attach vDisk");
                }
                continue;
            };
            let serving = live.volume.is_some() || live.raw.is_some();
            if serving && !mine && !self.moving(name) {
                self.stand_by(st, d);
            } else if !serving && !mine {
                // Follow a resize made on the owner.
                if live.metered.num_blocks() * u64::from(live.metered.block_size())
                    != d.info.size_bytes
                    && let Some(r) = &live.routed
                {
                    r.switch(standby_of(d));
                    live.metered.resized();
                    live.lu.capacity_changed();
                }
            } else if !serving && mine && !self.moving(name) {
                // Owned here but not served: a move whose commit never
                // came (finish it from what was staged), a takeover by this
                // router, or an attach that failed earlier.
                if self.staged_in(st, name) {
                    if let Err(e) = self.finish_staged_locked(st, name) {
                        tracing::error!(vdisk = %name, error = %e, "cannot finish a staged move");
                    }
                } else if self.has_taken_copy(name) {
                    // Taken over from its mirror: only that copy has every
                    // acknowledged write.
                    if let Err(e) = self.serve_from_copy(st, name) {
                        tracing::error!(vdisk = %name, error = %e, "cannot serve from the mirror yet; retrying");
                    }
                } else {
                    self.serve(st, d);
                }
            }
        }
        let names: BTreeSet<&str> = disks.iter().map(|d| d.info.name.as_str()).collect();
        let gone: Vec<String> = st
            .disks
            .keys()
            .filter(|n| !names.contains(n.as_str()))
            .cloned()
            .collect();
        for name in gone {
            self.detach(st, &name);
        }
        let vm_names: BTreeSet<&str> = vms.iter().map(|v| v.info.name.as_str()).collect();
        let gone: Vec<String> = st
            .scsi
            .keys()
            .filter(|n| !vm_names.contains(n.as_str()))
            .cloned()
            .collect();
        for vm in gone {
            let _ = self.targets.remove_target(&super::target_name(&vm), true);
            st.scsi.remove(&vm);
            tracing::info!(vm = %vm, "VM removed");
        }
        self.take_over_mirrored(st);
        self.update_paths(st);
        self.sync_mirrors(st);
        let pool_names: BTreeSet<&str> = pools.iter().map(|p| p.name.as_str()).collect();
        let gone: Vec<String> = st
            .pools
            .keys()
            .filter(|n| !pool_names.contains(n.as_str()))
            .cloned()
            .collect();
        for p in gone {
            if let Some(pool) = st.pools.remove(&p) {
                let _ = pool.shutdown();
            }
            tracing::info!(vpool = %p, "vPool closed (deleted)");
        }
    }

    /// The routers of the cluster with their state and how many vDisks
    /// each owns.
    pub fn list_routers(&self) -> DepotResult<Vec<crate::model::RouterView>> {
        let Some(node) = &self.cluster else {
            return Err(DepotError::BadRequest(
                "this router runs standalone (no [cluster] configured)".into(),
            ));
        };
        let v = node.view();
        Ok(v.routers
            .values()
            .map(|r| crate::model::RouterView {
                name: r.name.clone(),
                portal: r.portal.clone(),
                api: r.api.clone(),
                state: if v.is_up(&r.name) { "up" } else { "down" }.into(),
                vdisks: v.owners.values().filter(|o| o.router == r.name).count(),
                tpgt: r.tpgt,
                failure_domain: r.failure_domain.clone(),
            })
            .collect())
    }

    /// The owner, generation and mirror of vDisk `name` (cluster only).
    pub(super) fn ownership_of(&self, st: &State, name: &str) -> Owned {
        let Some(node) = &self.cluster else {
            return Owned::default();
        };
        let v = node.view();
        let Some(o) = v.owners.get(name) else {
            return Owned::default();
        };
        let mode = st
            .catalog
            .vdisk(name)
            .and_then(|d| st.catalog.vm(&d.info.vm))
            .map(|vm| vm.info.dtl)
            .unwrap_or_default();
        // The record counts only for the current generation; a new owner
        // has not placed its mirror yet.
        let rec = v
            .mirrors
            .get(name)
            .filter(|m| m.record.generation == o.generation);
        let local = (o.router == node.name())
            .then(|| self.mirror_status(name))
            .flatten();
        let mirrored = mode != depot_dtl::Mode::None;
        let dtl = Some(crate::model::DtlView {
            mode,
            state: mirrored
                .then(|| rec.map_or_else(|| "degraded".to_string(), |m| m.record.state.clone())),
            holder: rec.and_then(|m| m.record.holder.clone()),
            error: local.as_ref().and_then(|s| s.error.clone()),
            bytes_sent: local.as_ref().map(|s| s.bytes_sent),
        });
        Owned {
            router: Some(o.router.clone()),
            generation: Some(o.generation),
            dtl,
        }
    }

    /// Runs an operation on vDisk `name` here only if this router owns it:
    /// `Elsewhere` names the owner otherwise.
    pub(super) fn owner_here(&self, name: &str) -> DepotResult<()> {
        let Some(node) = &self.cluster else {
            return Ok(());
        };
        match node.view().owners.get(name) {
            Some(o) if o.router != node.name() => Err(DepotError::Elsewhere {
                router: o.router.clone(),
            }),
            _ => Ok(()),
        }
    }

    /// Serves vDisk `vdisk` here from `volume`, opened under generation
    /// `g` (an import or a takeover): its LUN's device switches to it.
    pub(super) fn go_online(
        &self,
        st: &mut State,
        vdisk: &str,
        volume: Arc<depot_engine::Volume>,
        g: u64,
    ) -> DepotResult<()> {
        let live = st
            .disks
            .get_mut(vdisk)
            .ok_or_else(|| DepotError::Internal(format!("vDisk {vdisk} is not attached")))?;
        if let Some(r) = &live.routed {
            r.switch(volume.clone() as Arc<dyn BlockDevice>);
        }
        live.volume = Some(volume);
        live.generation = Some(g);
        Ok(())
    }

    /// Tells every target where else it is served: the other routers'
    /// portals for SendTargets, and for a VM without multipath the router
    /// that serves its vDisks (logins elsewhere are redirected there).
    pub(super) fn update_paths(&self, st: &State) {
        let Some(node) = &self.cluster else {
            return;
        };
        let v = node.view();
        let me = node.name();
        let others: Vec<(String, u16)> = v
            .routers
            .values()
            .filter(|r| r.name != me && v.is_up(&r.name))
            .map(|r| (r.portal.clone(), r.tpgt))
            .collect();
        for vm in st.catalog.vms() {
            let Some(entry) = self.targets.target(&super::target_name(&vm.info.name)) else {
                continue;
            };
            let redirect = if vm.info.multipath {
                None
            } else {
                st.catalog
                    .vm_disks(&vm.info.name)
                    .first()
                    .and_then(|d| v.owners.get(&d.info.name))
                    .filter(|o| o.router != me && v.is_up(&o.router))
                    .and_then(|o| v.routers.get(&o.router))
                    .map(|r| format!("{},{}", r.portal, r.tpgt))
            };
            let paths = depot_iscsi_target::TargetPaths {
                others: others.clone(),
                redirect,
            };
            let mut cur = entry.paths.write();
            if *cur != paths {
                *cur = paths;
            }
        }
        // ALUA: one target port group per router; the owner's is
        // active/optimized while it is up, every other router's standby.
        let Some(local) = v.routers.get(me).map(|r| r.tpgt) else {
            return;
        };
        for (name, live) in &st.disks {
            let owner = v.owners.get(name).map(|o| o.router.as_str());
            let groups = v
                .routers
                .values()
                .map(|r| depot_scsi::Group {
                    tpg: r.tpgt,
                    relative_port: r.tpgt,
                    state: if !v.is_up(&r.name) {
                        depot_scsi::AccessState::Unavailable
                    } else if owner == Some(r.name.as_str()) {
                        depot_scsi::AccessState::ActiveOptimized
                    } else {
                        depot_scsi::AccessState::Standby
                    },
                })
                .collect();
            let paths = depot_scsi::Paths {
                local_tpg: local,
                groups,
            };
            if live.lu.paths().as_ref() != Some(&paths)
                && let Err(e) = live.lu.set_paths(paths)
            {
                tracing::warn!(vdisk = %name, error = %e, "cannot set the vDisk's paths");
            }
        }
    }

    /// Moves every vDisk of `vm` to router `to` (each on its owner, in LUN
    /// order); what each move took.
    pub fn move_vm(&self, vm: &str, to: &str) -> DepotResult<Vec<crate::model::MoveReport>> {
        let node = self.cluster.clone().ok_or_else(|| {
            DepotError::BadRequest(
                "this router runs standalone: there is nowhere to move to".into(),
            )
        })?;
        let disks: Vec<String> = {
            let st = self.lock();
            if st.catalog.vm(vm).is_none() {
                return Err(super::not_found("VM", vm));
            }
            st.catalog
                .vm_disks(vm)
                .iter()
                .map(|d| d.info.name.clone())
                .collect()
        };
        let mut reports = Vec::new();
        for d in disks {
            let owner = node.view().owners.get(&d).map(|o| o.router.clone());
            match owner {
                Some(o) if o == to => {}
                Some(o) if o == node.name() => reports.push(self.move_vdisk(&d, to, false)?),
                Some(o) => reports.push(self.move_remote(&node, &o, &d, to)?),
                None => {
                    return Err(DepotError::Unavailable(format!("vDisk {d:?} has no owner")));
                }
            }
        }
        Ok(reports)
    }

    /// Asks router `owner` to move vDisk `d` to `to`.
    fn move_remote(
        &self,
        node: &Arc<crate::cluster::Node>,
        owner: &str,
        d: &str,
        to: &str,
    ) -> DepotResult<crate::model::MoveReport> {
        let body = serde_json::to_vec(&crate::model::MoveRequest {
            to: to.to_string(),
            force: false,
        })
        .map_err(|e| DepotError::Internal(e.to_string()))?;
        let uri = format!("/api/v1/vdisks/{d}/move");
        let (status, body) = node.block_on(crate::cluster::peer::forward(
            node,
            owner,
            &axum::http::Method::POST,
            &uri,
            &body,
        ))?;
        if !status.is_success() {
            let msg = serde_json::from_slice::<crate::model::ErrorBody>(&body)
                .map(|e| e.message)
                .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
            return Err(DepotError::Unavailable(format!(
                "moving vDisk {d:?} on router {owner}: {msg}"
            )));
        }
        serde_json::from_slice(&body).map_err(|e| DepotError::Internal(e.to_string()))
    }

    /// Moves everything off router `name` (maintenance): each VM with
    /// vDisks there goes, whole, to the up router that owns the fewest
    /// vDisks (another failure domain first).
    pub fn drain_router(&self, name: &str) -> DepotResult<Vec<crate::model::MoveReport>> {
        let node = self
            .cluster
            .clone()
            .ok_or_else(|| DepotError::BadRequest("this router runs standalone".into()))?;
        let (vms, targets) = {
            let st = self.lock();
            let v = node.view();
            let Some(drained) = v.routers.get(name) else {
                return Err(DepotError::BadRequest(format!(
                    "router {name:?} is not a member"
                )));
            };
            let mut vms: Vec<String> = st
                .catalog
                .vdisks()
                .filter(|d| v.owners.get(&d.info.name).is_some_and(|o| o.router == name))
                .map(|d| d.info.vm.clone())
                .collect();
            vms.sort();
            vms.dedup();
            let mut targets: Vec<(bool, usize, String)> = v
                .routers
                .values()
                .filter(|r| r.name != name && v.is_up(&r.name))
                .map(|r| {
                    let load = v.owners.values().filter(|o| o.router == r.name).count();
                    let same_domain =
                        r.failure_domain.is_some() && r.failure_domain == drained.failure_domain;
                    (same_domain, load, r.name.clone())
                })
                .collect();
            targets.sort();
            (vms, targets)
        };
        if !vms.is_empty() && targets.is_empty() {
            return Err(DepotError::Unavailable(format!(
                "no other router is up to take router {name:?}'s vDisks"
            )));
        }
        let mut reports = Vec::new();
        for (i, vm) in vms.iter().enumerate() {
            let to = &targets[i % targets.len()].2;
            reports.extend(self.move_vm(vm, to)?);
        }
        Ok(reports)
    }

    /// Whether a move of `vdisk` is under way on this router (its state is
    /// the move's business, not reconcile's).
    pub(super) fn moving(&self, vdisk: &str) -> bool {
        self.moves.lock().contains(vdisk)
    }

    /// Stops serving `d` (another router owns it now): its LUN shows it as
    /// standby, its volume is closed without shipping.
    fn stand_by(&self, st: &mut State, d: &VDiskRecord) {
        let Some(live) = st.disks.get_mut(&d.info.name) else {
            return;
        };
        if let Some(r) = &live.routed {
            r.switch(standby_of(d));
        }
        live.generation = None;
        let volume = live.volume.take();
        live.raw = None;
        tracing::error!(vdisk = %d.info.name, "another router took this vDisk over; it is standby here (writes this router acknowledged but had not shipped are not in the new owner's copy)");
        if let Some(v) = volume {
            v.close_for_handover();
        }
        if let Some(pool) = d.info.vpool.as_ref().and_then(|p| st.pools.get(p))
            && let Err(e) = pool.forget_volume(&d.info.name)
        {
            tracing::warn!(vdisk = %d.info.name, error = %e, "cannot forget the local copy");
        }
    }

    /// Starts serving `d`, which this router owns, under a fresh claim.
    fn serve(&self, st: &mut State, d: &VDiskRecord) {
        let result = (|| -> DepotResult<()> {
            let g = self.claim(&d.info.name)?.generation;
            let (dev, volume, raw) = self.open_storage(st, d, false, g)?;
            let live = st
                .disks
                .get_mut(&d.info.name)
                .ok_or_else(|| DepotError::Internal("vDisk not attached".into()))?;
            if let Some(r) = &live.routed {
                r.switch(dev as Arc<dyn BlockDevice>);
            }
            live.volume = volume;
            live.raw = raw;
            live.generation = Some(g);
            tracing::info!(vdisk = %d.info.name, generation = g, "vDisk online here");
            Ok(())
        })();
        if let Err(e) = result {
            tracing::error!(vdisk = %d.info.name, error = %e, "cannot serve an owned vDisk");
        }
    }

    /// Removes `name`'s LUN (the vDisk was deleted).
    fn detach(&self, st: &mut State, name: &str) {
        let Some(live) = st.disks.remove(name) else {
            return;
        };
        if let Some(scsi) = st.scsi.get(&live.vm) {
            scsi.remove_lun(live.lun);
        }
        self.metrics.forget_vdisk(&live.vm, name);
        tracing::info!(vdisk = %name, "vDisk removed");
    }
}
