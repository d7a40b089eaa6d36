//! The vPool: one backend, one flash directory, one RocksDB index and one
//! read cache shared by its vDisks, plus the background workers.
//!
//! Workers (std threads owned by the pool, joined on shutdown) ship sealed
//! segments, tick every volume (periodic sync, sealing) and write background
//! checkpoints; see `workers`.
//!
//! Catalog: `catalog/<name>` on the backend maps a name to a volume id; the
//! local RocksDB keeps the same mapping for the volumes this node has opened.
//! Creation writes the manifest before the catalog entry, deletion removes the
//! catalog entry first, so a half-done create/delete leaves only unreferenced
//! objects that scrub collects.
//!
//! Layout:
//! - this module: the [`VPool`] handle — opening, pool-wide scrub and
//!   checkpoints, stats, shutdown — and the map of open volumes it shares
//!   with its workers;
//! - `volumes`: the vDisk API — create, open (a local restart, or a restore
//!   from the backend), clone, delete, list; standalone or as a grid owner;
//! - `import`: a live move's receiving side (prepare, receive, finish) and
//!   forgetting a vDisk this router no longer owns;
//! - `received`: checking a received segment and putting a received file
//!   in place (for `import`);
//! - `workers`: the worker threads (shipper, ticker, checkpointer).
//!
//! Fencing mode: opening a pool on S3 probes whether the store enforces
//! conditional PUTs ([`VPool::fencing_mode`]); a store that cannot be
//! reached then is probed again when a grid owner first needs to know.
//!
//! Invariants:
//! - Pool-level admin work (create, clone, delete, scrub, checkpoints) is
//!   serialised by one admin lock; anything that loads, inserts or drops an
//!   open volume by one open lock (taken after the admin lock).
//! - A vDisk being imported is opened by nothing but its import.
//! - A volume is in the open-volume map at most once; `Shared`'s count of
//!   open volumes follows the map.
//! - Workers only run while the pool is not shut down; shutdown joins them
//!   before it syncs and ships the volumes.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::runtime::Handle;

use crate::backend::{Backend, FaultInjector, keys};
use crate::cache::ReadCache;
use crate::config::VPoolConfig;
use crate::error::{EngineError, EngineResult};
use crate::index::Index;
use crate::meta::CatalogEntry;
use crate::owner::FencingMode;
use crate::shared::Shared;
use crate::volume::Volume;

pub use crate::scrub::ScrubReport;

mod import;
mod received;
mod volumes;
mod workers;

pub use import::{ImportPrep, MirrorCopy};

/// Pool-wide numbers the daemon can export.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VPoolStats {
    /// Read-cache hits.
    pub read_cache_hits: u64,
    /// Read-cache misses.
    pub read_cache_misses: u64,
    /// hits / (hits + misses), 0 when idle.
    pub read_cache_hit_ratio: f64,
    /// Logical clusters served per cached cluster (content dedup).
    pub read_cache_dedup_ratio: f64,
    /// Bytes in the read cache.
    pub read_cache_bytes: u64,
    /// Cached clusters that failed their checksum.
    pub read_cache_integrity_errors: u64,
    /// Bytes written but not yet on the backend, all open volumes.
    pub bytes_waiting_to_ship: u64,
    /// Failed backend attempts (each retry counts).
    pub backend_errors: u64,
    /// Objects uploaded.
    pub uploads: u64,
    /// Bytes uploaded.
    pub bytes_uploaded: u64,
    /// Objects/ranges downloaded.
    pub downloads: u64,
    /// Bytes downloaded.
    pub bytes_downloaded: u64,
    /// Flash bytes in containers and tlogs (read cache and index excluded).
    pub flash_bytes: u64,
    /// Backend bytes uploaded minus bytes scrub released (this process).
    pub backend_bytes_estimate: u64,
    /// Open volumes.
    pub volumes_open: usize,
    /// Clusters the open volumes rewrote contiguously on read (relocation
    /// on read), since they were opened.
    pub relocated_clusters: u64,
    /// Clusters the open volumes rewrote in place, since they were opened.
    pub rewritten_clusters: u64,
    /// Superseded clusters the open volumes dropped from the page cache,
    /// since they were opened.
    pub dropped_clusters: u64,
    /// Time the open volumes' writers waited for uploads because their
    /// write buffer was full, summed over writers, since they were opened.
    pub throttle_wait: Duration,
}

/// What the pool's API shares with its workers besides [`Shared`]: the
/// open volumes and the admin lock.
#[derive(Default)]
struct PoolState {
    volumes: Mutex<HashMap<u64, Arc<Volume>>>,
    /// Serialises pool-level admin work (create, clone, delete, scrub,
    /// background checkpoints).
    admin: Mutex<()>,
    /// Serialises loading, inserting and dropping open volumes (opens,
    /// creates, clones, deletes, imports, forgets).
    open: Mutex<()>,
    /// Names of vDisks being imported (from `prepare_import` until its
    /// [`ImportPrep`] is finished or dropped): nothing else opens them.
    importing: Arc<Mutex<HashSet<String>>>,
}

impl PoolState {
    /// The open volumes, in no particular order.
    fn list(&self) -> Vec<Arc<Volume>> {
        self.volumes.lock().values().cloned().collect()
    }
}

/// A vPool. See the module docs.
pub struct VPool {
    shared: Arc<Shared>,
    state: Arc<PoolState>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    reclaimed: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for VPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VPool")
            .field("name", &self.shared.cfg.name)
            .finish()
    }
}

impl VPool {
    /// Opens (creating) a vPool. `rt` must be a multi-threaded runtime; the
    /// engine blocks on it from its own threads and from blocking-pool
    /// threads, never from async tasks. An S3 backend is probed for
    /// conditional PUTs ([`VPool::fencing_mode`]; a few small requests, one
    /// attempt each); an unreachable store does not fail the open.
    pub fn open(cfg: VPoolConfig, rt: Handle) -> EngineResult<Arc<VPool>> {
        cfg.validate()?;
        let dir = cfg.cache_dir.clone();
        std::fs::create_dir_all(dir.join("vols"))
            .map_err(|e| EngineError::io(format!("creating {}", dir.display()), e))?;
        let index = Index::open(&dir.join("index"))?;
        let backend = Backend::open(&cfg.backend, &cfg.name, rt, cfg.retry.clone())?;
        let cache = ReadCache::open(&dir.join("readcache"), cfg.read_cache_bytes)?;
        let shared = Arc::new(Shared::new(cfg, dir, index, backend, cache));
        if let Err(e) = shared.probe_fencing() {
            tracing::warn!(pool = %shared.cfg.name, error = %e,
                "could not probe the backend for conditional PUTs; will retry when a grid owner needs it");
        }
        let state = Arc::new(PoolState::default());
        let threads = workers::spawn(&shared, &state)?;
        Ok(Arc::new(VPool {
            shared,
            state,
            threads: Mutex::new(threads),
            reclaimed: std::sync::atomic::AtomicU64::new(0),
        }))
    }

    fn check_open(&self) -> EngineResult<()> {
        if self.shared.is_shut_down() {
            Err(EngineError::ShutDown)
        } else {
            Ok(())
        }
    }

    /// How this pool's backend fences a deposed grid owner: conditional
    /// PUTs the store enforces (probed when the pool was opened), only the
    /// daemon's check (`External`: the store ignores conditions or was not
    /// reachable to probe), or a local directory.
    pub fn fencing_mode(&self) -> FencingMode {
        self.shared.fencing_mode()
    }

    /// Probes the backend again if its fencing mode is not known yet.
    pub fn probe_fencing(&self) -> EngineResult<FencingMode> {
        self.check_open()?;
        self.shared.probe_fencing()
    }

    /// The backend fault injector (tests, drills).
    pub fn faults(&self) -> Arc<FaultInjector> {
        self.shared.backend.faults.clone()
    }

    /// Reclaims backend space: rewrites sparsely used containers of every
    /// open vDisk, folds tlogs into checkpoints, and deletes unreferenced
    /// objects. Safe to interrupt at any point.
    pub fn scrub(&self) -> EngineResult<ScrubReport> {
        self.check_open()?;
        let _a = self.state.admin.lock();
        let mut report = ScrubReport::default();
        for v in self.state.list() {
            match crate::scrub::scrub_volume(&v, &mut report) {
                Ok(()) => report.volumes += 1,
                Err(e) => report.errors.push(format!("{}: {e}", v.name())),
            }
        }
        // Objects of volumes that no longer exist (interrupted deletes).
        let be = &self.shared.backend;
        let mut live: HashSet<u64> = self.state.volumes.lock().keys().copied().collect();
        for (k, _) in be.list(keys::CATALOG_PREFIX)? {
            let c: CatalogEntry = serde_json::from_slice(&be.get(&k)?)
                .map_err(|e| EngineError::corrupt("catalog entry", e.to_string()))?;
            live.insert(c.id);
        }
        for (k, size) in be.list(keys::VOLUMES_PREFIX)? {
            if let Some(id) = keys::volume_of(&k)
                && !live.contains(&id)
            {
                be.delete(&k, false)?;
                report.orphans_deleted += 1;
                report.bytes_reclaimed += size;
            }
        }
        self.reclaimed
            .fetch_add(report.bytes_reclaimed, Ordering::Relaxed);
        Ok(report)
    }

    /// Writes a fresh index checkpoint for every open vDisk whose backend
    /// manifest lists at least `checkpoint_tlogs` tlogs after its last
    /// checkpoint (what the background checkpointer does every few
    /// seconds); returns how many were written.
    pub fn checkpoint_if_due(&self) -> EngineResult<usize> {
        self.check_open()?;
        workers::checkpoint_due(&self.shared, &self.state)
    }

    /// Pool-wide numbers.
    pub fn stats(&self) -> VPoolStats {
        let c = &self.shared.cache.counters;
        let hits = c.hits.load(Ordering::Relaxed);
        let misses = c.misses.load(Ordering::Relaxed);
        let b = &self.shared.backend.counters;
        let vols = self.state.list();
        let vol_stats: Vec<_> = vols.iter().map(|v| v.stats()).collect();
        let put_bytes = b.put_bytes.load(Ordering::Relaxed);
        VPoolStats {
            read_cache_hits: hits,
            read_cache_misses: misses,
            read_cache_hit_ratio: if hits + misses == 0 {
                0.0
            } else {
                hits as f64 / (hits + misses) as f64
            },
            read_cache_dedup_ratio: self.shared.cache.dedup_ratio(),
            read_cache_bytes: self.shared.cache.used_bytes(),
            read_cache_integrity_errors: c.integrity_errors.load(Ordering::Relaxed),
            bytes_waiting_to_ship: vols.iter().map(|v| v.unshipped_bytes()).sum(),
            backend_errors: b.errors.load(Ordering::Relaxed),
            uploads: b.puts.load(Ordering::Relaxed),
            bytes_uploaded: put_bytes,
            downloads: b.gets.load(Ordering::Relaxed),
            bytes_downloaded: b.get_bytes.load(Ordering::Relaxed),
            flash_bytes: vols.iter().map(|v| v.flash_bytes()).sum(),
            backend_bytes_estimate: put_bytes
                .saturating_sub(self.reclaimed.load(Ordering::Relaxed)),
            volumes_open: vols.len(),
            relocated_clusters: vol_stats.iter().map(|s| s.relocated_clusters).sum(),
            rewritten_clusters: vol_stats.iter().map(|s| s.rewritten_clusters).sum(),
            dropped_clusters: vol_stats.iter().map(|s| s.dropped_clusters).sum(),
            throttle_wait: vol_stats.iter().map(|s| s.throttle_wait).sum(),
        }
    }

    /// Stops the workers, makes every volume's writes durable on flash, and
    /// tries (bounded retries) to ship what is waiting. Idempotent.
    pub fn shutdown(&self) -> EngineResult<()> {
        if self.shared.begin_shutdown() {
            return Ok(());
        }
        self.shared.wake_shipper();
        for t in self.threads.lock().drain(..) {
            let _ = t.join();
        }
        let mut first_err = None;
        for v in self.state.list() {
            if v.is_fenced() {
                // Not this router's any more: nothing to ship or flush.
                v.close();
                continue;
            }
            if let Err(e) = v.sync_to_backend() {
                tracing::warn!(volume = v.name(), error = %e, "shutdown: could not ship everything; it stays on flash");
            }
            if let Err(e) = depot_block::BlockDevice::flush(&*v) {
                first_err.get_or_insert(EngineError::Failed(e.to_string()));
            }
            v.close();
        }
        self.shared.backend.begin_shutdown();
        self.state.volumes.lock().clear();
        self.shared.set_open_volumes(0);
        first_err.map_or(Ok(()), Err)
    }

    /// Stops the workers without syncing or shipping anything: what a crash
    /// leaves behind (tests).
    pub fn abandon(&self) {
        self.shared.begin_shutdown();
        self.shared.backend.begin_shutdown();
        self.shared.wake_shipper();
        for t in self.threads.lock().drain(..) {
            let _ = t.join();
        }
        for v in self.state.list() {
            v.close();
        }
        self.state.volumes.lock().clear();
        self.shared.set_open_volumes(0);
    }
}

impl Drop for VPool {
    fn drop(&mut self) {
        if !self.shared.is_shut_down() {
            let _ = self.shutdown();
        }
    }
}
