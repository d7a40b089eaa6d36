//! Live moves of a vDisk between routers (`depot vdisk move`, `vm move`,
//! `router drain`): the source's side here, the target's in
//! `move_target`.
//!
//! The owner (source) drives a move; the target answers peer calls:
//! 1. prepare — the target checks it has flash space, opens the vPool and
//!    restores the backend part of the vDisk (slow for a big index; the
//!    guest still runs);
//! 2. precopy — in rounds, the source lists its sealed, unshipped segments
//!    (final from then on) and streams them to the target, which applies
//!    first what the source shipped since the prepare (fetched from the
//!    backend), then them; the guest still runs. It ends with a round that
//!    brought little of either;
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
use std::io::{Seek, SeekFrom};
use std::sync::Arc;
use std::time::{Duration, Instant};

use depot_cluster::owner;
use depot_engine::{HandoverFile, HandoverState, Volume};
use serde::{Deserialize, Serialize};

use super::bootstrap::standby_of;
use super::{Manager, bad, not_found, target_name};
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
/// A precopy round whose target fetched at most this many tlogs shipped
/// meanwhile ends the precopy (about what the pause then fetches).
const FETCHED_DONE: usize = 2;
/// How long a move waits for single-path sessions to close before it lets
/// their held commands go.
const SESSIONS_CLOSE: Duration = Duration::from_secs(5);

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

/// The answer to `move.precopied`.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct PrecopyApplied {
    /// Tlogs the source shipped since the import was prepared, fetched
    /// from the backend and applied first (each one the pause would
    /// otherwise fetch).
    #[serde(default)]
    pub fetched: usize,
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
        // The first precopy listing comes before the target's prepare: from
        // it on no checkpoint, scrub or snapshot moves the manifest on (one
        // under way finishes first), so the backend part the target
        // restores stays the base its import extends; a checkpoint after
        // it made the target restore everything again in the pause.
        let mut first = Some(volume.handover_precopy().map_err(|e| abort(e.into()))?);
        let unshipped = volume.stats().unshipped_bytes;
        call(
            "move.prepare",
            &serde_json::to_value(Prepare {
                vdisk: name.to_string(),
                bytes: unshipped,
            })
            .map_err(|e| DepotError::Internal(e.to_string()))?,
            &[],
        )
        .map_err(abort)?;
        // 2. Precopy while the guest runs, in rounds: each sends what was
        // sealed since the last one, until a round is small (what is left
        // for the pause) or the writes outpace the copy.
        let mut sent: HashMap<(String, u64), u64> = HashMap::new();
        let mut precopied = 0u64;
        for _round in 0..PRECOPY_ROUNDS {
            let pre = match first.take() {
                Some(pre) => pre,
                None => volume.handover_precopy().map_err(|e| abort(e.into()))?,
            };
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
            // Even with no new file: the target catches up with what was
            // shipped meanwhile.
            let msg = serde_json::to_value(Precopied {
                vdisk: name.to_string(),
                files: round,
            })
            .map_err(|e| DepotError::Internal(e.to_string()))?;
            let (applied, _): (serde_json::Value, _) = node
                .block_on(peer.call("move.precopied", &msg, &[], CALL))
                .map_err(|e| abort(e.into()))?;
            let fetched = serde_json::from_value::<PrecopyApplied>(applied)
                .unwrap_or_default()
                .fetched;
            if bytes <= PRECOPY_DONE && fetched <= FETCHED_DONE {
                break;
            }
        }
        // 3. Pause: hold I/O, freeze, send what changed, stage.
        let paused = Instant::now();
        let mut phases = Phases::default();
        let held = routed.hold();
        let state = match volume.handover_freeze() {
            Ok(s) => s,
            Err(e) => {
                drop(held);
                return Err(abort(e.into()));
            }
        };
        phases.freeze = paused.elapsed();
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
        phases.copy = paused.elapsed();
        if let Err(e) = call("move.stage", &stage, &[]) {
            drop(held);
            return Err(abort(e));
        }
        phases.stage = paused.elapsed();
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
        phases.transfer = paused.elapsed();
        // 5. The target serves (a target that fails here finishes from
        // what it staged as soon as it sees it owns the vDisk).
        let commit = serde_json::to_value(Commit {
            vdisk: name.to_string(),
            generation: moved.generation,
        })
        .map_err(|e| DepotError::Internal(e.to_string()))?;
        let committed = call("move.commit", &commit, &[]);
        phases.commit = paused.elapsed();
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
            phases = %phases,
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
}

/// When each step of a move's pause ended, from its start (the log line
/// of a move shows them, to tell where a long pause went).
#[derive(Default)]
struct Phases {
    freeze: Duration,
    copy: Duration,
    stage: Duration,
    transfer: Duration,
    commit: Duration,
}

impl std::fmt::Display for Phases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |d: Duration| d.as_millis();
        write!(
            f,
            "frozen {} ms, copied {} ms, staged {} ms, owner changed {} ms, committed {} ms",
            ms(self.freeze),
            ms(self.copy),
            ms(self.stage),
            ms(self.transfer),
            ms(self.commit)
        )
    }
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
