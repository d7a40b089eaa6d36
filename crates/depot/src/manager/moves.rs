//! Live moves of a vDisk between routers (`depot vdisk move`, `vm move`,
//! `router drain`), both ends.
//!
//! The owner (source) drives a move; the target answers peer calls:
//! 1. prepare — the target checks it has flash space, opens the vPool and
//!    restores the backend part of the vDisk (slow for a big index; the
//!    guest still runs);
//! 2. precopy — the source lists its sealed, unshipped segments (final from
//!    then on) and streams them to the target, the guest still running;
//! 3. pause — the source holds new I/O on the vDisk's LUN (commands wait,
//!    none fails), freezes the volume (seal, sync) and sends what changed
//!    since the precopy, then the frozen state, which the target keeps on
//!    its flash (a target that restarts from here can finish alone);
//! 4. the ownership moves in etcd (compare-and-swap on the source's
//!    generation): the target's new generation;
//! 5. commit — the target finishes the import under that generation
//!    (publishes its epoch before it serves) and serves the LUN;
//! 6. the source turns its LUN standby, lets the held commands go (they
//!    get "standby" and multipath retries them on the new owner; a VM
//!    without multipath has its sessions dropped and logs in again, where
//!    the redirect sends it), and forgets its copy.
//!
//! Invariants: at no moment do two routers acknowledge the vDisk's I/O —
//! the source holds I/O from step 3 and never serves it again unless the
//! move aborts before step 4; the target serves only after step 5, under a
//! generation newer than the source's. A failure before step 4 aborts (the
//! source resumes); after it, the target owns the vDisk and finishes the
//! import from what it staged. The guest's pause is steps 3 to 6.

use std::collections::HashMap;
use std::io::{Seek, SeekFrom, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use depot_block::BlockDevice;
use depot_cluster::owner;
use depot_engine::{HandoverFile, HandoverState, Owner, Volume};
use serde::{Deserialize, Serialize};

use super::bootstrap::standby_of;
use super::{Manager, State, bad, not_found, target_name};
use crate::cluster::fencing::VdiskFencing;
use crate::error::{DepotError, DepotResult};
use crate::model::{MoveReport, VDiskKind};

/// Bytes per file chunk sent between routers.
const CHUNK: usize = 8 << 20;
/// How long one peer call of a move may take.
const CALL: Duration = Duration::from_secs(120);
/// Precopy rounds at most (each sends what was sealed during the last).
const PRECOPY_ROUNDS: usize = 8;
/// A precopy round this small ends the precopy: about what the pause then
/// has to copy (one open container's worth).
const PRECOPY_DONE: u64 = 64 << 20;
/// How long a move waits for single-path sessions to close before it lets
/// their held commands go.
const SESSIONS_CLOSE: Duration = Duration::from_secs(5);
/// Flash a target keeps free beyond what a move brings.
const FLASH_MARGIN: u64 = 1 << 30;

/// `move.prepare`: get ready to take a vDisk over.
#[derive(Debug, Serialize, Deserialize)]
pub struct Prepare {
    /// The vDisk.
    pub vdisk: String,
    /// Bytes the source will send (its unshipped window).
    pub bytes: u64,
}

/// `move.file`: bytes of one hand-over file at an offset (the body).
#[derive(Debug, Serialize, Deserialize)]
pub struct FileChunk {
    /// The vDisk.
    pub vdisk: String,
    /// The file's name in the import directory.
    pub file: String,
    /// Where the body goes.
    pub offset: u64,
}

/// `move.precopied`: these precopied files arrived; check and apply them
/// while the guest still runs.
#[derive(Debug, Serialize, Deserialize)]
pub struct Precopied {
    /// The vDisk.
    pub vdisk: String,
    /// The files, as the source listed them.
    pub files: Vec<HandoverFile>,
}

/// `move.stage`: the frozen state, kept on the target's flash.
#[derive(Debug, Serialize, Deserialize)]
pub struct Stage {
    /// The source's frozen state.
    pub state: HandoverState,
}

/// `move.commit`: the ownership is the target's under `generation`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Commit {
    /// The vDisk.
    pub vdisk: String,
    /// The target's generation.
    pub generation: u64,
}

/// `move.abort`: the move will not happen.
#[derive(Debug, Serialize, Deserialize)]
pub struct Abort {
    /// The vDisk.
    pub vdisk: String,
}

/// What a move on the source works with.
struct Moving {
    volume: Arc<Volume>,
    routed: Arc<crate::cluster::device::Routed>,
    pool: Arc<depot_engine::VPool>,
    vm: String,
    multipath: bool,
}

/// The name of the staged state in an import directory.
const STAGED: &str = "handover.json";

/// Imports under way on this router (target side).
#[derive(Default)]
pub(super) struct Imports {
    prepared: HashMap<String, depot_engine::ImportPrep>,
}

impl Manager {
    /// Moves vDisk `name` to router `to` (runs on its owner); what the
    /// move took. With the owner down, `force` takes the vDisk over on `to`
    /// from the backend instead.
    pub fn move_vdisk(&self, name: &str, to: &str, force: bool) -> DepotResult<MoveReport> {
        let node = self
            .cluster
            .clone()
            .ok_or_else(|| bad("this router runs standalone: there is nowhere to move to"))?;
        let owner = node.view().owners.get(name).cloned();
        if let Some(o) = owner
            && o.router != node.name()
            && !node.view().is_up(&o.router)
        {
            return self.take_over(&node, name, &o, to, force);
        }
        self.owner_here(name)?;
        if to == node.name() {
            return Err(bad(format!("vDisk {name:?} is already on router {to}")));
        }
        {
            let v = node.view();
            if !v.routers.contains_key(to) {
                return Err(bad(format!("router {to:?} is not a member of the cluster")));
            }
            if !v.is_up(to) {
                return Err(bad(format!("router {to:?} is down")));
            }
        }
        let (volume, routed, pool, vm, multipath) = {
            let st = self.lock();
            let rec = st
                .catalog
                .vdisk(name)
                .ok_or_else(|| not_found("vDisk", name))?;
            if rec.info.kind != VDiskKind::Engine {
                return Err(bad(format!(
                    "{name:?} is a raw vDisk: its image is a file on this router; only engine vDisks move"
                )));
            }
            let pool_name = rec.info.vpool.clone().unwrap_or_default();
            let prec = st
                .catalog
                .vpool(&pool_name)
                .ok_or_else(|| not_found("vPool", &pool_name))?;
            if prec.router.is_some() {
                return Err(bad(format!(
                    "vDisk {name:?} is on vPool {pool_name:?}, a local directory of this router; only vDisks of a shared (S3) vPool move"
                )));
            }
            let live = st
                .disks
                .get(name)
                .ok_or_else(|| DepotError::Unavailable(format!("vDisk {name:?} is offline")))?;
            let volume = live
                .volume
                .clone()
                .ok_or_else(|| DepotError::Unavailable(format!("vDisk {name:?} is offline")))?;
            let routed = live
                .routed
                .clone()
                .ok_or_else(|| DepotError::Internal("a clustered vDisk without a route".into()))?;
            let pool = st.pools.get(&pool_name).cloned().ok_or_else(|| {
                DepotError::Unavailable(format!("vPool {pool_name:?} is offline"))
            })?;
            let vm = st.catalog.vm(&rec.info.vm).cloned();
            let multipath = vm.as_ref().is_some_and(|v| v.info.multipath);
            (volume, routed, pool, rec.info.vm.clone(), multipath)
        };
        if !self.moves.lock().insert(name.to_string()) {
            return Err(DepotError::InUse(format!(
                "a move of vDisk {name:?} is already under way"
            )));
        }
        let m = Moving {
            volume,
            routed,
            pool,
            vm,
            multipath,
        };
        let r = self.run_move(&node, name, to, &m);
        self.moves.lock().remove(name);
        let report = r?;
        let mut st = self.lock();
        self.reconcile(&mut st);
        Ok(report)
    }

    fn run_move(
        &self,
        node: &Arc<crate::cluster::Node>,
        name: &str,
        to: &str,
        m: &Moving,
    ) -> DepotResult<MoveReport> {
        let Moving {
            volume,
            routed,
            pool,
            vm,
            multipath,
        } = m;
        let multipath = *multipath;
        let started = Instant::now();
        let peer = node.peer(to)?;
        let call = |op: &str, msg: &serde_json::Value, body: &[u8]| -> DepotResult<()> {
            let (_, _): (serde_json::Value, _) = node.block_on(peer.call(op, msg, body, CALL))?;
            Ok(())
        };
        let unshipped = volume.stats().unshipped_bytes;
        call(
            "move.prepare",
            &serde_json::to_value(Prepare {
                vdisk: name.to_string(),
                bytes: unshipped,
            })
            .map_err(|e| DepotError::Internal(e.to_string()))?,
            &[],
        )?;
        let abort = |e: DepotError| -> DepotError {
            let _ = volume.handover_abort();
            let _ = node.block_on(peer.call::<_, serde_json::Value>(
                "move.abort",
                &Abort {
                    vdisk: name.to_string(),
                },
                &[],
                CALL,
            ));
            e
        };
        // 2. Precopy while the guest runs, in rounds: each sends what was
        // sealed since the last one, until a round is small (what is left
        // for the pause) or the writes outpace the copy.
        let mut sent: HashMap<(String, u64), u64> = HashMap::new();
        let mut precopied = 0u64;
        for _round in 0..PRECOPY_ROUNDS {
            let pre = volume.handover_precopy().map_err(|e| abort(e.into()))?;
            let mut round = Vec::new();
            for f in pre {
                if sent.contains_key(&(f.file_name(), f.seq)) {
                    continue;
                }
                match send_file(&call, name, &f, 0) {
                    Ok(n) => {
                        precopied += n;
                        sent.insert((f.file_name(), f.seq), f.len);
                        round.push(f);
                    }
                    // The shipper may have uploaded and evicted it: the
                    // freeze will not list it then.
                    Err(e) if !f.path.exists() => {
                        tracing::debug!(file = %f.path.display(), error = %e, "precopy file vanished")
                    }
                    Err(e) => return Err(abort(e)),
                }
            }
            let bytes: u64 = round.iter().map(|f| f.len).sum();
            if !round.is_empty() {
                let msg = serde_json::to_value(Precopied {
                    vdisk: name.to_string(),
                    files: round,
                })
                .map_err(|e| DepotError::Internal(e.to_string()))?;
                call("move.precopied", &msg, &[]).map_err(abort)?;
            }
            if bytes <= PRECOPY_DONE {
                break;
            }
        }
        // 3. Pause: hold I/O, freeze, send what changed, stage.
        let paused = Instant::now();
        let held = routed.hold();
        let state = match volume.handover_freeze() {
            Ok(s) => s,
            Err(e) => {
                drop(held);
                return Err(abort(e.into()));
            }
        };
        let mut delta = 0u64;
        for f in &state.files {
            if sent.get(&(f.file_name(), f.seq)) == Some(&f.len) {
                continue;
            }
            match send_file(&call, name, f, 0) {
                Ok(n) => delta += n,
                Err(e) => {
                    drop(held);
                    return Err(abort(e));
                }
            }
        }
        let stage = serde_json::to_value(Stage {
            state: state.clone(),
        })
        .map_err(|e| DepotError::Internal(e.to_string()))?;
        if let Err(e) = call("move.stage", &stage, &[]) {
            drop(held);
            return Err(abort(e));
        }
        // 4. The ownership moves.
        let from = depot_cluster::Ownership {
            router: node.name().to_string(),
            generation: state.generation,
        };
        let store = node.store().clone();
        let (vd, target) = (name.to_string(), to.to_string());
        let moved =
            node.block_on(async move { owner::transfer(&store, &vd, Some(&from), &target).await });
        let moved = match moved {
            Ok(o) => o,
            Err(e) => {
                drop(held);
                return Err(abort(e.into()));
            }
        };
        node.apply_owner(name, Some(moved.clone()));
        // 5. The target serves (a target that fails here finishes from
        // what it staged as soon as it sees it owns the vDisk).
        let commit = serde_json::to_value(Commit {
            vdisk: name.to_string(),
            generation: moved.generation,
        })
        .map_err(|e| DepotError::Internal(e.to_string()))?;
        let committed = call("move.commit", &commit, &[]);
        // 6. Standby here. A single-path initiator loses its session while
        // its commands are still held (it reconnects, is redirected to the
        // new owner and resends them: none is answered here); multipath
        // initiators get the held commands back with "standby" and retry
        // them on the new owner's path.
        if !multipath {
            let target = target_name(vm);
            self.targets.drop_sessions(&target);
            let t0 = Instant::now();
            while self.targets.session_count(&target) > 0 && t0.elapsed() < SESSIONS_CLOSE {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        let rec = self.lock().catalog.vdisk(name).cloned();
        if let Some(rec) = &rec {
            crate::cluster::device::Routed::switch_held(held, standby_of(rec));
        } else {
            drop(held);
        }
        let pause = paused.elapsed();
        volume.close_for_handover();
        {
            let mut st = self.lock();
            if let Some(live) = st.disks.get_mut(name) {
                live.volume = None;
                live.generation = None;
            }
            self.update_paths(&st);
        }
        if let Err(e) = pool.forget_volume(name) {
            tracing::warn!(vdisk = name, error = %e, "forgetting the moved vDisk's local copy");
        }
        if let Err(e) = committed {
            tracing::error!(vdisk = name, router = to, error = %e, "the new owner did not confirm the move; it finishes the import from what it staged");
        }
        tracing::info!(
            vdisk = name,
            to,
            generation = moved.generation,
            precopied,
            delta,
            pause_ms = u64::try_from(pause.as_millis()).unwrap_or(u64::MAX),
            "vDisk moved"
        );
        Ok(MoveReport {
            vdisk: name.to_string(),
            from: node.name().to_string(),
            to: to.to_string(),
            generation: moved.generation,
            precopied_bytes: precopied,
            paused_bytes: delta,
            pause_ms: u64::try_from(pause.as_millis()).unwrap_or(u64::MAX),
            total_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        })
    }

    /// Takes vDisk `name` over from its owner `from`, which is down, on
    /// router `to` (forwarded there): a new generation guarded on `from`
    /// staying down, then the vDisk opened from the backend.
    fn take_over(
        &self,
        node: &Arc<crate::cluster::Node>,
        name: &str,
        from: &depot_cluster::Ownership,
        to: &str,
        force: bool,
    ) -> DepotResult<MoveReport> {
        if !force {
            return Err(DepotError::InUse(format!(
                "router {} (the owner of vDisk {name:?}) is down; writes it acknowledged but had not shipped are only on its flash. Wait for it, or take the vDisk over from the backend with --force (those writes are lost)",
                from.router
            )));
        }
        if to != node.name() {
            return Err(DepotError::Elsewhere {
                router: to.to_string(),
            });
        }
        let started = Instant::now();
        // Marked as moving, reconcile does not open it under a newer
        // generation of its own first (owned here, not yet served).
        if !self.moves.lock().insert(name.to_string()) {
            return Err(DepotError::InUse(format!(
                "vDisk {name:?} is being moved or taken over already"
            )));
        }
        let r = self.take_over_moving(node, name, from, to, started);
        self.moves.lock().remove(name);
        r
    }

    /// [`Manager::take_over`], the vDisk marked as moving.
    fn take_over_moving(
        &self,
        node: &Arc<crate::cluster::Node>,
        name: &str,
        from: &depot_cluster::Ownership,
        to: &str,
        started: Instant,
    ) -> DepotResult<MoveReport> {
        let store = node.store().clone();
        let (vd, me, old) = (name.to_string(), node.name().to_string(), from.clone());
        let got = node.block_on(async move { owner::take_over(&store, &vd, &old, &me).await })?;
        node.apply_owner(name, Some(got.clone()));
        let mut st = self.lock();
        let rec = st
            .catalog
            .vdisk(name)
            .cloned()
            .ok_or_else(|| not_found("vDisk", name))?;
        let (dev, volume, raw) = self.open_storage(&st, &rec, false, got.generation)?;
        let live = st
            .disks
            .get_mut(name)
            .ok_or_else(|| DepotError::Internal(format!("vDisk {name} is not attached")))?;
        if let Some(r) = &live.routed {
            r.switch(dev);
        }
        live.volume = volume;
        live.raw = raw;
        live.generation = Some(got.generation);
        self.update_paths(&st);
        tracing::warn!(vdisk = name, from = %from.router, generation = got.generation, "vDisk taken over from a router that is down");
        Ok(MoveReport {
            vdisk: name.to_string(),
            from: from.router.clone(),
            to: to.to_string(),
            generation: got.generation,
            precopied_bytes: 0,
            paused_bytes: 0,
            pause_ms: 0,
            total_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        })
    }

    // ------------------------------------------------------------ target

    /// `move.prepare` on the target.
    pub fn move_prepare(&self, p: Prepare) -> DepotResult<()> {
        let node = self.cluster.clone().ok_or_else(|| bad("not clustered"))?;
        let st = self.lock();
        let rec = st
            .catalog
            .vdisk(&p.vdisk)
            .ok_or_else(|| not_found("vDisk", &p.vdisk))?;
        let pool_name = rec.info.vpool.clone().unwrap_or_default();
        let pool = st.pools.get(&pool_name).cloned().ok_or_else(|| {
            DepotError::Unavailable(format!(
                "vPool {pool_name:?} is not open on router {}",
                node.name()
            ))
        })?;
        drop(st);
        let dir = pool.import_dir(&p.vdisk)?;
        let free = free_bytes(&dir)?;
        if free < p.bytes + FLASH_MARGIN {
            return Err(DepotError::InUse(format!(
                "router {} lacks flash space for vDisk {:?}: {} free, {} needed",
                node.name(),
                p.vdisk,
                crate::size::format(free),
                crate::size::format(p.bytes + FLASH_MARGIN)
            )));
        }
        self.moves.lock().insert(p.vdisk.clone());
        // A provisional owner newer than any generation so far; the
        // commit gives the real one.
        let cur = node.view().owners.get(&p.vdisk).map_or(0, |o| o.generation);
        let fencing = VdiskFencing::new(node.clone(), &p.vdisk, cur + 1, pool.fencing_mode());
        let prep = pool.prepare_import(&p.vdisk, &Owner::new(fencing));
        let prep = match prep {
            Ok(p) => p,
            Err(e) => {
                self.moves.lock().remove(&p.vdisk);
                return Err(e.into());
            }
        };
        self.imports.lock().prepared.insert(p.vdisk, prep);
        Ok(())
    }

    /// `move.file` on the target.
    pub fn move_file(&self, c: FileChunk, body: &[u8]) -> DepotResult<()> {
        if !self.moves.lock().contains(&c.vdisk) {
            return Err(bad(format!(
                "no move of vDisk {:?} is being prepared here",
                c.vdisk
            )));
        }
        if c.file.contains('/') || c.file.starts_with('.') {
            return Err(bad(format!("bad hand-over file name {:?}", c.file)));
        }
        let dir = self.import_dir_of(&c.vdisk)?;
        let path = dir.join(&c.file);
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| DepotError::io(format!("opening {}", path.display()), e))?;
        f.seek(SeekFrom::Start(c.offset))
            .and_then(|_| f.write_all(body))
            .map_err(|e| DepotError::io(format!("writing {}", path.display()), e))?;
        Ok(())
    }

    /// `move.precopied` on the target: applies what the precopy brought
    /// (the slow part of an import, before the pause).
    pub fn move_precopied(&self, p: Precopied) -> DepotResult<()> {
        let (pool, dir) = {
            let st = self.lock();
            (pool_of(&st, &p.vdisk)?, import_dir_in(&st, &p.vdisk)?)
        };
        let mut imports = self.imports.lock();
        let prep = imports.prepared.get_mut(&p.vdisk).ok_or_else(|| {
            bad(format!(
                "no move of vDisk {:?} is being prepared here",
                p.vdisk
            ))
        })?;
        pool.import_precopied(prep, &p.files, &dir)?;
        Ok(())
    }

    /// `move.stage` on the target: keeps the frozen state on flash.
    pub fn move_stage(&self, s: Stage) -> DepotResult<()> {
        let dir = self.import_dir_of(&s.state.name)?;
        let body = serde_json::to_vec(&s.state).map_err(|e| DepotError::Internal(e.to_string()))?;
        let tmp = dir.join(format!("{STAGED}.tmp"));
        let dst = dir.join(STAGED);
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&body)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &dst)?;
            std::fs::File::open(&dir)?.sync_all()
        };
        write().map_err(|e| DepotError::io(format!("staging {}", dst.display()), e))
    }

    /// `move.commit` on the target: finish the import and serve.
    ///
    /// The source committed the ownership in etcd before it sent this, but
    /// this router's feed may not have delivered the change yet. It is
    /// recorded in the view first (only if newer than what the view has),
    /// so that neither the paths (ALUA) nor reconcile act on the old owner:
    /// reconcile, once the move no longer shields the vDisk, would stand
    /// the just-imported volume by and drop the un-shipped data it brought.
    pub fn move_commit(&self, c: Commit) -> DepotResult<()> {
        if let Some(node) = &self.cluster {
            node.apply_owner(
                &c.vdisk,
                Some(depot_cluster::Ownership {
                    router: node.name().to_string(),
                    generation: c.generation,
                }),
            );
        }
        let r = self.finish_staged(&c.vdisk, c.generation);
        self.moves.lock().remove(&c.vdisk);
        let mut st = self.lock();
        self.reconcile(&mut st);
        r
    }

    /// `move.abort` on the target.
    pub fn move_abort(&self, a: Abort) {
        self.imports.lock().prepared.remove(&a.vdisk);
        self.moves.lock().remove(&a.vdisk);
        if let Ok(dir) = self.import_dir_of(&a.vdisk) {
            let _ = std::fs::remove_dir_all(dir);
        }
    }

    /// The import directory of `vdisk` on its vPool's flash.
    fn import_dir_of(&self, vdisk: &str) -> DepotResult<std::path::PathBuf> {
        import_dir_in(&self.lock(), vdisk)
    }

    /// Whether a staged import of `vdisk` waits on this router.
    pub(super) fn staged_in(&self, st: &State, vdisk: &str) -> bool {
        import_dir_in(st, vdisk).is_ok_and(|d| d.join(STAGED).is_file())
    }

    /// Finishes the staged import of `vdisk` under generation
    /// `generation` (the commit's) and serves it.
    fn finish_staged(&self, vdisk: &str, generation: u64) -> DepotResult<()> {
        let mut st = self.lock();
        self.finish_staged_with(&mut st, vdisk, generation)
    }

    /// Finishes a staged import whose commit never came, under this
    /// router's ownership as the view has it (reconcile).
    pub(super) fn finish_staged_locked(&self, st: &mut State, vdisk: &str) -> DepotResult<()> {
        let node = self.cluster.clone().ok_or_else(|| bad("not clustered"))?;
        let g = match node.view().owners.get(vdisk) {
            Some(o) if o.router == node.name() => o.generation,
            _ => {
                return Err(bad(format!(
                    "router {} does not own vDisk {vdisk:?}",
                    node.name()
                )));
            }
        };
        self.finish_staged_with(st, vdisk, g)
    }

    fn finish_staged_with(&self, st: &mut State, vdisk: &str, g: u64) -> DepotResult<()> {
        let dir = import_dir_in(st, vdisk)?;
        let body = std::fs::read(dir.join(STAGED))
            .map_err(|e| DepotError::io(format!("reading the staged move of {vdisk}"), e))?;
        let state: HandoverState = serde_json::from_slice(&body)
            .map_err(|e| DepotError::Internal(format!("staged move of {vdisk}: {e}")))?;
        let pool = pool_of(st, vdisk)?;
        let owner = self.owner(vdisk, g, &pool);
        let prep = match self.imports.lock().prepared.remove(vdisk) {
            Some(p) => p,
            None => pool.prepare_import(vdisk, &owner)?,
        };
        let volume = pool.finish_import(prep.with_owner(owner), &state, &dir)?;
        let _ = std::fs::remove_file(dir.join(STAGED));
        let live = st
            .disks
            .get_mut(vdisk)
            .ok_or_else(|| DepotError::Internal(format!("vDisk {vdisk} is not attached")))?;
        if let Some(r) = &live.routed {
            r.switch(volume.clone() as Arc<dyn BlockDevice>);
        }
        live.volume = Some(volume);
        live.generation = Some(g);
        self.update_paths(st);
        tracing::info!(vdisk, generation = g, "vDisk moved here and online");
        Ok(())
    }
}

/// The open vPool of vDisk `vdisk`.
fn pool_of(st: &State, vdisk: &str) -> DepotResult<Arc<depot_engine::VPool>> {
    let rec = st
        .catalog
        .vdisk(vdisk)
        .ok_or_else(|| not_found("vDisk", vdisk))?;
    let pool_name = rec.info.vpool.clone().unwrap_or_default();
    st.pools
        .get(&pool_name)
        .cloned()
        .ok_or_else(|| DepotError::Unavailable(format!("vPool {pool_name:?} is not open")))
}

/// The import directory of `vdisk` on its vPool's flash.
fn import_dir_in(st: &State, vdisk: &str) -> DepotResult<std::path::PathBuf> {
    Ok(pool_of(st, vdisk)?.import_dir(vdisk)?)
}

/// Sends `f` from `offset` in chunks; the bytes sent.
fn send_file(
    call: &impl Fn(&str, &serde_json::Value, &[u8]) -> DepotResult<()>,
    vdisk: &str,
    f: &HandoverFile,
    offset: u64,
) -> DepotResult<u64> {
    use std::io::Read;
    let mut file = std::fs::File::open(&f.path)
        .map_err(|e| DepotError::io(format!("opening {}", f.path.display()), e))?;
    file.seek(SeekFrom::Start(offset))
        .map_err(|e| DepotError::io(format!("seeking {}", f.path.display()), e))?;
    let mut left = f.len.saturating_sub(offset);
    let mut at = offset;
    let mut buf = vec![0u8; CHUNK];
    while left > 0 {
        let n = usize::try_from(left).unwrap_or(CHUNK).min(CHUNK);
        file.read_exact(&mut buf[..n])
            .map_err(|e| DepotError::io(format!("reading {}", f.path.display()), e))?;
        let msg = serde_json::to_value(FileChunk {
            vdisk: vdisk.to_string(),
            file: f.file_name(),
            offset: at,
        })
        .map_err(|e| DepotError::Internal(e.to_string()))?;
        call("move.file", &msg, &buf[..n])?;
        at += n as u64;
        left -= n as u64;
    }
    Ok(at - offset)
}

/// Free bytes on the file system holding `dir`.
fn free_bytes(dir: &std::path::Path) -> DepotResult<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| DepotError::Internal(e.to_string()))?;
    let mut s: libc::statvfs = unsafe_zeroed();
    // SAFETY: `c` is a NUL-terminated path and `s` a statvfs the call
    // fills; both live across the call.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut s) };
    if rc != 0 {
        return Err(DepotError::io(
            format!("statvfs {}", dir.display()),
            std::io::Error::last_os_error(),
        ));
    }
    Ok(s.f_bavail.saturating_mul(s.f_frsize))
}

fn unsafe_zeroed() -> libc::statvfs {
    // SAFETY: statvfs is a plain C struct of integers; all-zero is valid.
    #[allow(unsafe_code)]
    unsafe {
        std::mem::zeroed()
    }
}
