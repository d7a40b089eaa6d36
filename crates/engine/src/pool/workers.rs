//! The vPool's worker threads (std threads owned by the pool, joined on
//! shutdown):
//! - the *shipper* uploads sealed segments of every volume, in order,
//!   retrying with backoff forever (a slow or dead backend throttles
//!   writers through the write-buffer cap; it never fails them);
//! - the *ticker* runs each volume's tick: the periodic sync and index
//!   commit, sealing of containers older than `ship_interval`;
//! - the *checkpointer* (when `checkpoint_tlogs` is set) folds shipped
//!   tlogs into fresh index checkpoints.
//!
//! Invariants:
//! - Each worker stops once the pool is shut down; a failing volume is
//!   logged and retried on the next round, never fatal to the worker.
//! - Checkpoints take the pool's admin lock and skip volumes deleted
//!   meanwhile, being moved to another router, fenced, or open only as a
//!   grid clone's parent.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::error::{EngineError, EngineResult};
use crate::scrub::ScrubReport;
use crate::shared::Shared;

use super::PoolState;

/// Starts the pool's workers.
pub(super) fn spawn(
    shared: &Arc<Shared>,
    state: &Arc<PoolState>,
) -> EngineResult<Vec<JoinHandle<()>>> {
    let mut threads = Vec::new();
    let (s1, p1) = (shared.clone(), state.clone());
    threads.push(
        std::thread::Builder::new()
            .name(format!("depot-ship-{}", shared.cfg.name))
            .spawn(move || shipper(&s1, &p1))
            .map_err(|e| EngineError::io("spawning the shipper", e))?,
    );
    let (s2, p2) = (shared.clone(), state.clone());
    threads.push(
        std::thread::Builder::new()
            .name(format!("depot-tick-{}", shared.cfg.name))
            .spawn(move || ticker(&s2, &p2))
            .map_err(|e| EngineError::io("spawning the ticker", e))?,
    );
    if shared.cfg.checkpoint_tlogs > 0 {
        let (s3, p3) = (shared.clone(), state.clone());
        threads.push(
            std::thread::Builder::new()
                .name(format!("depot-ckpt-{}", shared.cfg.name))
                .spawn(move || checkpointer(&s3, &p3))
                .map_err(|e| EngineError::io("spawning the checkpointer", e))?,
        );
    }
    Ok(threads)
}

fn shipper(shared: &Shared, state: &PoolState) {
    while !shared.is_shut_down() {
        for v in state.list() {
            while v.wants_ship() && !shared.is_shut_down() {
                match v.ship_one(true) {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(e) => {
                        tracing::warn!(volume = v.name(), error = %e, "shipping failed; will retry");
                        std::thread::sleep(Duration::from_millis(200));
                        break;
                    }
                }
            }
        }
        shared.wait_for_wake(Duration::from_millis(200));
    }
}

/// One checkpointer pass: see [`VPool::checkpoint_if_due`](super::VPool::checkpoint_if_due).
pub(super) fn checkpoint_due(shared: &Shared, state: &PoolState) -> EngineResult<usize> {
    let want = shared.cfg.checkpoint_tlogs;
    let mut written = 0;
    for v in state.list() {
        if want == 0 || shared.is_shut_down() {
            break;
        }
        if v.is_moving() || v.is_fenced() || v.is_reader() {
            continue;
        }
        if v.meta.lock().shipped.tlogs.len() < want {
            continue;
        }
        let _a = state.admin.lock();
        if !state.volumes.lock().contains_key(&v.id) {
            continue; // deleted meanwhile
        }
        let mut report = ScrubReport::default();
        match crate::scrub::checkpoint_volume(&v, &mut report) {
            Ok(()) => written += report.checkpoints_written,
            Err(e) => {
                tracing::warn!(volume = v.name(), error = %e, "background checkpoint failed; will retry");
            }
        }
    }
    Ok(written)
}

/// Background checkpoints (`VPoolConfig::checkpoint_tlogs`), checked every
/// 5 s; a volume that fails (backend down) is logged and retried on the next
/// round.
fn checkpointer(shared: &Shared, state: &PoolState) {
    let mut last = std::time::Instant::now();
    while !shared.is_shut_down() {
        std::thread::sleep(Duration::from_millis(200));
        if last.elapsed() < Duration::from_secs(5) {
            continue;
        }
        last = std::time::Instant::now();
        let _ = checkpoint_due(shared, state);
    }
}

fn ticker(shared: &Shared, state: &PoolState) {
    let period =
        (shared.cfg.sync_interval / 2).clamp(Duration::from_millis(10), Duration::from_millis(500));
    while !shared.is_shut_down() {
        for v in state.list() {
            if let Err(e) = v.tick() {
                tracing::warn!(volume = v.name(), error = %e, "background sync failed");
            }
        }
        std::thread::sleep(period);
    }
}
