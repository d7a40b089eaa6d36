//! [`Shared`]: the state a vPool shares with its volumes and its workers —
//! configuration, the flash directory, the RocksDB index, the backend, the
//! read cache, the backend's fencing mode, the shipper's wake-up signal and
//! the shutdown flag.
//!
//! It names no volume: the pool keeps the map of open volumes, so
//! volumes depend on this module and never on the pool.
//!
//! Invariants:
//! - One `Shared` per vPool, created by `VPool::open` and held in an `Arc`
//!   by the pool, every volume and every worker.
//! - `open_volumes` follows the size of the pool's volume map: the pool
//!   stores it whenever the map changes, under the map's lock.
//! - The fencing mode is probed at most until it is known, then never
//!   changes; unknown counts as [`FencingMode::External`] (nothing is
//!   assumed of the store).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

use crate::backend::Backend;
use crate::cache::ReadCache;
use crate::config::VPoolConfig;
use crate::error::EngineResult;
use crate::icache::{CHUNK_BYTES, MAX_CHUNKS};
use crate::index::Index;
use crate::owner::FencingMode;

/// State shared by the pool, its volumes and its workers.
pub(crate) struct Shared {
    pub(crate) cfg: VPoolConfig,
    pub(crate) dir: PathBuf,
    pub(crate) index: Index,
    pub(crate) backend: Backend,
    pub(crate) cache: ReadCache,
    /// Number of open volumes, readable without the pool's map lock
    /// (index-cache budget).
    open_volumes: AtomicUsize,
    wake: Mutex<bool>,
    wake_cv: Condvar,
    shutdown: AtomicBool,
    /// The backend's fencing mode once probed.
    fencing: Mutex<Option<FencingMode>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("pool", &self.cfg.name)
            .finish()
    }
}

impl Shared {
    /// The state of a freshly opened pool: no volume open, not shut down.
    pub(crate) fn new(
        cfg: VPoolConfig,
        dir: PathBuf,
        index: Index,
        backend: Backend,
        cache: ReadCache,
    ) -> Self {
        Shared {
            cfg,
            dir,
            index,
            backend,
            cache,
            open_volumes: AtomicUsize::new(0),
            wake: Mutex::new(false),
            wake_cv: Condvar::new(),
            shutdown: AtomicBool::new(false),
            fencing: Mutex::new(None),
        }
    }

    /// The fencing mode, probing the backend if it is not known yet (a
    /// local directory is [`FencingMode::Local`] without asking).
    pub(crate) fn probe_fencing(&self) -> EngineResult<FencingMode> {
        let mut f = self.fencing.lock();
        if let Some(m) = *f {
            return Ok(m);
        }
        let m = if self.backend.is_local() {
            FencingMode::Local
        } else if self.backend.probe_conditional()? {
            FencingMode::Conditional
        } else {
            FencingMode::External
        };
        *f = Some(m);
        Ok(m)
    }

    /// The fencing mode as known now: unknown (the probe could not reach
    /// the store yet) is [`FencingMode::External`].
    pub(crate) fn fencing_mode(&self) -> FencingMode {
        self.fencing.lock().unwrap_or(FencingMode::External)
    }

    /// Wakes the shipper (a segment was sealed, metadata changed).
    pub(crate) fn wake_shipper(&self) {
        *self.wake.lock() = true;
        self.wake_cv.notify_all();
    }

    /// Waits up to `d` for [`Shared::wake_shipper`] (returns at once if it
    /// was called since the last wait), and consumes the wake-up.
    pub(crate) fn wait_for_wake(&self, d: Duration) {
        let mut w = self.wake.lock();
        if !*w {
            self.wake_cv.wait_for(&mut w, d);
        }
        *w = false;
    }

    /// Whether the pool is shutting down (workers stop).
    pub(crate) fn is_shut_down(&self) -> bool {
        self.shutdown.load(Ordering::SeqCst)
    }

    /// Marks the pool as shutting down; returns whether it already was.
    pub(crate) fn begin_shutdown(&self) -> bool {
        self.shutdown.swap(true, Ordering::SeqCst)
    }

    /// Records the number of open volumes (call with the pool's volume map
    /// locked).
    pub(crate) fn set_open_volumes(&self, n: usize) {
        self.open_volumes.store(n, Ordering::Relaxed);
    }

    /// How many index-cache chunks one volume may keep now: the pool's
    /// `index_cache_bytes` shared among the open volumes, within
    /// [`MIN_ICACHE_CHUNKS`] and the per-volume cap.
    pub(crate) fn icache_chunks_per_volume(&self) -> usize {
        let budget =
            usize::try_from(self.cfg.index_cache_bytes / CHUNK_BYTES as u64).unwrap_or(usize::MAX);
        let n = self.open_volumes.load(Ordering::Relaxed).max(1);
        (budget / n).clamp(MIN_ICACHE_CHUNKS, MAX_CHUNKS)
    }
}

/// Index-cache chunks a volume may always keep (64 MiB of data covered, about
/// 1.3 MiB of memory), however many volumes share the pool's budget.
const MIN_ICACHE_CHUNKS: usize = 64;
