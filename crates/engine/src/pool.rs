//! The vPool: one backend, one flash directory, one RocksDB index and one
//! read cache shared by its vDisks, plus the background workers.
//!
//! Workers (std threads owned by the pool, joined on shutdown):
//! - the *shipper* uploads sealed segments of every volume, in order, retrying
//!   with backoff forever (a slow or dead backend throttles writers through
//!   the write-buffer cap; it never fails them);
//! - the *ticker* makes uncommitted index updates durable every
//!   `sync_interval` and seals containers older than `ship_interval`.
//!
//! Catalog: `catalog/<name>` on the backend maps a name to a volume id; the
//! local RocksDB keeps the same mapping for the volumes this node has opened.
//! Creation writes the manifest before the catalog entry, deletion removes the
//! catalog entry first, so a half-done create/delete leaves only unreferenced
//! objects that scrub collects.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::{Condvar, Mutex};
use rocksdb::WriteBatch;
use tokio::runtime::Handle;

use crate::backend::{self, Backend, FaultInjector};
use crate::cache::ReadCache;
use crate::config::VPoolConfig;
use crate::error::{EngineError, EngineResult};
use crate::format::{
    TLOG_HEADER_SIZE, TLOG_RECORD_SIZE, TlogHeader, TlogRecord, stream_checkpoint,
};
use crate::icache::{CHUNK_BYTES, MAX_CHUNKS};
use crate::index::{Entry, Index, Marker};
use crate::meta::{CatalogEntry, ChildRef, META_VERSION, ParentRef, Shipped, VolumeMeta};
use crate::name::check_name;
use crate::volume::Volume;

/// State shared by the pool, its volumes and its workers.
pub struct Shared {
    pub(crate) cfg: VPoolConfig,
    pub(crate) dir: PathBuf,
    pub(crate) index: Index,
    pub(crate) backend: Backend,
    pub(crate) cache: ReadCache,
    volumes: Mutex<HashMap<u64, Arc<Volume>>>,
    /// Serialises pool-level admin work (create, clone, delete, scrub,
    /// background checkpoints).
    admin: Mutex<()>,
    /// `volumes.len()`, readable without the lock (index-cache budget).
    open_volumes: AtomicUsize,
    wake: Mutex<bool>,
    wake_cv: Condvar,
    shutdown: AtomicBool,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("pool", &self.cfg.name)
            .finish()
    }
}

impl Shared {
    /// Wakes the shipper (a segment was sealed, metadata changed).
    pub(crate) fn wake_shipper(&self) {
        *self.wake.lock() = true;
        self.wake_cv.notify_all();
    }

    fn volumes(&self) -> Vec<Arc<Volume>> {
        self.volumes.lock().values().cloned().collect()
    }

    /// Records the number of open volumes (call with the map locked).
    fn count_volumes(&self, vols: &HashMap<u64, Arc<Volume>>) {
        self.open_volumes.store(vols.len(), Ordering::Relaxed);
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

/// What a scrub did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScrubReport {
    /// Volumes scrubbed.
    pub volumes: usize,
    /// Containers whose live clusters were copied into new containers.
    pub containers_rewritten: usize,
    /// Container objects deleted from the backend.
    pub containers_deleted: usize,
    /// Live clusters copied.
    pub clusters_moved: u64,
    /// Backend bytes released.
    pub bytes_reclaimed: u64,
    /// Tlog objects deleted (folded into a checkpoint).
    pub tlogs_deleted: usize,
    /// Checkpoints written.
    pub checkpoints_written: usize,
    /// Unreferenced objects (from interrupted scrubs, deletes, uploads)
    /// deleted.
    pub orphans_deleted: usize,
    /// Volumes that could not be scrubbed, with the reason.
    pub errors: Vec<String>,
}

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

/// A vPool. See the module docs.
pub struct VPool {
    shared: Arc<Shared>,
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

fn rand_id() -> u64 {
    loop {
        let id: u64 = rand::random();
        if id != 0 && id != u64::MAX {
            return id;
        }
    }
}

impl VPool {
    /// Opens (creating) a vPool. `rt` must be a multi-threaded runtime; the
    /// engine blocks on it from its own threads and from blocking-pool
    /// threads, never from async tasks.
    pub fn open(cfg: VPoolConfig, rt: Handle) -> EngineResult<Arc<VPool>> {
        cfg.validate()?;
        let dir = cfg.cache_dir.clone();
        std::fs::create_dir_all(dir.join("vols"))
            .map_err(|e| EngineError::io(format!("creating {}", dir.display()), e))?;
        let index = Index::open(&dir.join("index"))?;
        let backend = Backend::open(&cfg.backend, &cfg.name, rt, cfg.retry.clone())?;
        let cache = ReadCache::open(&dir.join("readcache"), cfg.read_cache_bytes)?;
        let shared = Arc::new(Shared {
            cfg,
            dir,
            index,
            backend,
            cache,
            volumes: Mutex::new(HashMap::new()),
            admin: Mutex::new(()),
            open_volumes: AtomicUsize::new(0),
            wake: Mutex::new(false),
            wake_cv: Condvar::new(),
            shutdown: AtomicBool::new(false),
        });
        let mut threads = Vec::new();
        let s1 = shared.clone();
        threads.push(
            std::thread::Builder::new()
                .name(format!("depot-ship-{}", shared.cfg.name))
                .spawn(move || shipper(s1))
                .map_err(|e| EngineError::io("spawning the shipper", e))?,
        );
        let s2 = shared.clone();
        threads.push(
            std::thread::Builder::new()
                .name(format!("depot-tick-{}", shared.cfg.name))
                .spawn(move || ticker(s2))
                .map_err(|e| EngineError::io("spawning the ticker", e))?,
        );
        if shared.cfg.checkpoint_tlogs > 0 {
            let s3 = shared.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("depot-ckpt-{}", shared.cfg.name))
                    .spawn(move || checkpointer(s3))
                    .map_err(|e| EngineError::io("spawning the checkpointer", e))?,
            );
        }
        Ok(Arc::new(VPool {
            shared,
            threads: Mutex::new(threads),
            reclaimed: std::sync::atomic::AtomicU64::new(0),
        }))
    }

    fn check_open(&self) -> EngineResult<()> {
        if self.shared.shutdown.load(Ordering::SeqCst) {
            Err(EngineError::ShutDown)
        } else {
            Ok(())
        }
    }

    /// The backend fault injector (tests, drills).
    pub fn faults(&self) -> Arc<FaultInjector> {
        self.shared.backend.faults.clone()
    }

    /// Creates a thin vDisk.
    pub fn create_volume(
        &self,
        name: &str,
        size_bytes: u64,
        block_size: u32,
    ) -> EngineResult<Arc<Volume>> {
        self.check_open()?;
        check_name("vDisk", name)?;
        if block_size != 512 && block_size != 4096 {
            return Err(EngineError::InvalidArgument(format!(
                "block size {block_size} must be 512 or 4096"
            )));
        }
        if size_bytes == 0 || !size_bytes.is_multiple_of(u64::from(block_size)) {
            return Err(EngineError::InvalidArgument(format!(
                "size {size_bytes} must be a positive multiple of {block_size}"
            )));
        }
        let _a = self.shared.admin.lock();
        let meta = self.new_meta(name, size_bytes, block_size, None)?;
        self.register(meta, None)
    }

    fn new_meta(
        &self,
        name: &str,
        size_bytes: u64,
        block_size: u32,
        parent: Option<ParentRef>,
    ) -> EngineResult<VolumeMeta> {
        if self.shared.index.name_to_id(name)?.is_some() {
            return Err(EngineError::VolumeExists(name.to_string()));
        }
        match self.shared.backend.get(&backend::catalog_key(name)) {
            Ok(_) => return Err(EngineError::VolumeExists(name.to_string())),
            Err(EngineError::ObjectNotFound(_)) => {}
            Err(e) => return Err(e),
        }
        Ok(VolumeMeta {
            version: META_VERSION,
            id: rand_id(),
            name: name.to_string(),
            size_bytes,
            block_size,
            created_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            template: false,
            parent,
            children: Vec::new(),
            head_gen: 1,
            next_gen: 2,
            snapshots: Vec::new(),
            discarded_gens: Vec::new(),
            next_container: 0,
            next_tlog: 0,
            shipped: Shipped::default(),
        })
    }

    /// Writes a new volume's manifest, catalog entry and local state.
    fn register(
        &self,
        meta: VolumeMeta,
        parent: Option<(Arc<Volume>, u32)>,
    ) -> EngineResult<Arc<Volume>> {
        let be = &self.shared.backend;
        let body = serde_json::to_vec(&meta)
            .map_err(|e| EngineError::corrupt("manifest", e.to_string()))?;
        be.put(&backend::manifest_key(meta.id), Bytes::from(body), false)?;
        let cat = serde_json::to_vec(&CatalogEntry {
            name: meta.name.clone(),
            id: meta.id,
        })
        .map_err(|e| EngineError::corrupt("catalog entry", e.to_string()))?;
        be.put(&backend::catalog_key(&meta.name), Bytes::from(cat), false)?;
        let mut b = WriteBatch::default();
        Index::put_meta(&mut b, &meta)?;
        Index::put_name(&mut b, &meta.name, meta.id);
        Index::put_applied(&mut b, meta.id, (0, 0));
        self.shared.index.write_sync(b)?;
        let vol = Volume::load(self.shared.clone(), meta, parent)?;
        let mut vols = self.shared.volumes.lock();
        vols.insert(vol.id, vol.clone());
        self.shared.count_volumes(&vols);
        drop(vols);
        Ok(vol)
    }

    /// Opens a vDisk: a local restart (replaying its logs) when this node's
    /// flash knows it, otherwise a restart from the backend (everything that
    /// had been shipped; see docs/engine-formats.md "Recovery point").
    pub fn open_volume(&self, name: &str) -> EngineResult<Arc<Volume>> {
        self.check_open()?;
        check_name("vDisk", name)?;
        self.open_inner(name, 0)
    }

    fn open_inner(&self, name: &str, depth: u32) -> EngineResult<Arc<Volume>> {
        if depth > 1024 {
            return Err(EngineError::corrupt("clone chain", "too deep or cyclic"));
        }
        if let Some(v) = self
            .shared
            .volumes
            .lock()
            .values()
            .find(|v| v.name() == name)
        {
            return Ok(v.clone());
        }
        let idx = &self.shared.index;
        let local = match idx.name_to_id(name)? {
            Some(id) => idx.meta(id)?,
            None => None,
        };
        let meta = match local {
            Some(m) => m,
            None => self.restore_from_backend(name, depth)?,
        };
        let parent = match &meta.parent {
            Some(p) => {
                let pv = self.open_inner(&p.name, depth + 1)?;
                if pv.id != p.id {
                    return Err(EngineError::corrupt(
                        format!("parent of {name}"),
                        format!("{} now names another volume", p.name),
                    ));
                }
                Some((pv, p.generation))
            }
            None => None,
        };
        let mut vols = self.shared.volumes.lock();
        if let Some(v) = vols.values().find(|v| v.name() == name) {
            return Ok(v.clone());
        }
        let vol = Volume::load(self.shared.clone(), meta, parent)?;
        vols.insert(vol.id, vol.clone());
        self.shared.count_volumes(&vols);
        Ok(vol)
    }

    fn restore_from_backend(&self, name: &str, depth: u32) -> EngineResult<VolumeMeta> {
        let be = &self.shared.backend;
        let cat = match be.get(&backend::catalog_key(name)) {
            Ok(c) => c,
            Err(EngineError::ObjectNotFound(_)) => {
                return Err(EngineError::VolumeNotFound(name.to_string()));
            }
            Err(e) => return Err(e),
        };
        let cat: CatalogEntry = serde_json::from_slice(&cat)
            .map_err(|e| EngineError::corrupt("catalog entry", e.to_string()))?;
        let m = be.get(&backend::manifest_key(cat.id))?;
        let meta: VolumeMeta = serde_json::from_slice(&m)
            .map_err(|e| EngineError::corrupt("manifest", e.to_string()))?;
        if meta.id != cat.id || meta.name != name {
            return Err(EngineError::corrupt(
                "manifest",
                "does not match the catalog",
            ));
        }
        if let Some(p) = &meta.parent {
            self.open_inner(&p.name, depth + 1)?;
        }
        tracing::info!(volume = name, "restoring from the backend");
        restore_index(&self.shared, &meta)?;
        let mut b = WriteBatch::default();
        Index::put_meta(&mut b, &meta)?;
        Index::put_name(&mut b, name, meta.id);
        self.shared.index.write_sync(b)?;
        Ok(meta)
    }

    /// Deletes a vDisk and everything it stored. Refused while clones depend
    /// on any of its snapshots.
    pub fn delete_volume(&self, name: &str) -> EngineResult<()> {
        self.check_open()?;
        let _a = self.shared.admin.lock();
        let vol = self.open_inner(name, 0)?;
        if !vol.meta.lock().children.is_empty() {
            return Err(EngineError::HasClones(format!("vDisk {name:?}")));
        }
        let be = &self.shared.backend;
        be.delete(&backend::catalog_key(name), false)?;
        vol.close();
        {
            let mut vols = self.shared.volumes.lock();
            vols.remove(&vol.id);
            self.shared.count_volumes(&vols);
        }
        self.shared.index.delete_volume(vol.id, name)?;
        let _ = std::fs::remove_dir_all(vol.local_dir());
        if let Ok(objs) = be.list(&backend::volume_prefix(vol.id)) {
            for (k, _) in objs {
                let _ = be.delete(&k, false);
            }
        }
        if let Some((p, _)) = &vol.parent {
            let mut m = p.meta.lock();
            m.children.retain(|c| c.id != vol.id);
            p.persist_meta(&m)?;
            drop(m);
            self.shared.wake_shipper();
        }
        Ok(())
    }

    /// Creates a clone sharing its parent's data: from a snapshot, or (with
    /// `None`) from a template's current state.
    pub fn clone_volume(
        &self,
        parent: &str,
        snapshot: Option<&str>,
        new_name: &str,
    ) -> EngineResult<Arc<Volume>> {
        self.check_open()?;
        check_name("vDisk", new_name)?;
        let _a = self.shared.admin.lock();
        let p = self.open_inner(parent, 0)?;
        let snap = match snapshot {
            Some(s) => s.to_string(),
            None => p.template_snapshot().ok_or_else(|| {
                EngineError::InvalidArgument(format!(
                    "{parent:?} is not a template; name a snapshot to clone from"
                ))
            })?,
        };
        let (generation, size, bs) = {
            let m = p.meta.lock();
            let s = m
                .snapshot(&snap)
                .ok_or_else(|| EngineError::SnapshotNotFound(snap.clone()))?;
            (s.generation, m.size_bytes, m.block_size)
        };
        let meta = self.new_meta(
            new_name,
            size,
            bs,
            Some(ParentRef {
                id: p.id,
                name: parent.to_string(),
                snapshot: snap.clone(),
                generation,
            }),
        )?;
        {
            let mut m = p.meta.lock();
            m.children.push(ChildRef {
                id: meta.id,
                name: new_name.to_string(),
                snapshot: snap,
            });
            p.persist_meta(&m)?;
        }
        self.shared.wake_shipper();
        self.register(meta, Some((p, generation)))
    }

    /// Names of all vDisks in the pool (backend catalog plus local).
    pub fn list_volumes(&self) -> EngineResult<Vec<String>> {
        self.check_open()?;
        let mut names: HashSet<String> = self.shared.index.names()?.into_iter().collect();
        for (k, _) in self.shared.backend.list("catalog/")? {
            if let Some(n) = k.strip_prefix("catalog/") {
                names.insert(n.to_string());
            }
        }
        let mut v: Vec<String> = names.into_iter().collect();
        v.sort();
        Ok(v)
    }

    /// Reclaims backend space: rewrites sparsely used containers of every
    /// open vDisk, folds tlogs into checkpoints, and deletes unreferenced
    /// objects. Safe to interrupt at any point.
    pub fn scrub(&self) -> EngineResult<ScrubReport> {
        self.check_open()?;
        let _a = self.shared.admin.lock();
        let mut report = ScrubReport::default();
        for v in self.shared.volumes() {
            match v.scrub(&mut report) {
                Ok(()) => report.volumes += 1,
                Err(e) => report.errors.push(format!("{}: {e}", v.name())),
            }
        }
        // Objects of volumes that no longer exist (interrupted deletes).
        let be = &self.shared.backend;
        let mut live: HashSet<u64> = self.shared.volumes.lock().keys().copied().collect();
        for (k, _) in be.list("catalog/")? {
            let c: CatalogEntry = serde_json::from_slice(&be.get(&k)?)
                .map_err(|e| EngineError::corrupt("catalog entry", e.to_string()))?;
            live.insert(c.id);
        }
        for (k, size) in be.list("vol/")? {
            let id = k
                .strip_prefix("vol/")
                .and_then(|r| r.get(..16))
                .and_then(|h| u64::from_str_radix(h, 16).ok());
            if let Some(id) = id
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
        checkpoint_due(&self.shared)
    }

    /// Pool-wide numbers.
    pub fn stats(&self) -> VPoolStats {
        let c = &self.shared.cache.counters;
        let hits = c.hits.load(Ordering::Relaxed);
        let misses = c.misses.load(Ordering::Relaxed);
        let b = &self.shared.backend.counters;
        let vols = self.shared.volumes();
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
        if self.shared.shutdown.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        self.shared.wake_shipper();
        for t in self.threads.lock().drain(..) {
            let _ = t.join();
        }
        let mut first_err = None;
        for v in self.shared.volumes() {
            if let Err(e) = v.sync_to_backend() {
                tracing::warn!(volume = v.name(), error = %e, "shutdown: could not ship everything; it stays on flash");
            }
            if let Err(e) = depot_block::BlockDevice::flush(&*v) {
                first_err.get_or_insert(EngineError::Failed(e.to_string()));
            }
            v.close();
        }
        self.shared.backend.begin_shutdown();
        self.shared.volumes.lock().clear();
        self.shared.open_volumes.store(0, Ordering::Relaxed);
        first_err.map_or(Ok(()), Err)
    }

    /// Stops the workers without syncing or shipping anything: what a crash
    /// leaves behind (tests).
    pub fn abandon(&self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        self.shared.backend.begin_shutdown();
        self.shared.wake_shipper();
        for t in self.threads.lock().drain(..) {
            let _ = t.join();
        }
        for v in self.shared.volumes() {
            v.close();
        }
        self.shared.volumes.lock().clear();
        self.shared.open_volumes.store(0, Ordering::Relaxed);
    }
}

impl Drop for VPool {
    fn drop(&mut self) {
        if !self.shared.shutdown.load(Ordering::SeqCst) {
            let _ = self.shutdown();
        }
    }
}

/// Checkpoint bytes fetched per ranged GET while restoring (whole entries).
const RESTORE_CHUNK: u64 = 16 << 20;

/// Rebuilds a volume's index from the backend (flash was lost): the
/// checkpoint, then the shipped tlogs after it.
///
/// The checkpoint is streamed in `RESTORE_CHUNK` ranged GETs straight into a
/// sorted table file that RocksDB ingests in one step (no WAL, no memtable),
/// so memory stays bounded by one chunk whatever the index size, and the
/// crc32c of the whole object is checked before anything is ingested. Tlogs
/// are then committed normally; they are newer than the ingested entries.
fn restore_index(shared: &Shared, meta: &VolumeMeta) -> EngineResult<()> {
    let be = &shared.backend;
    if let Some((ck, _cut)) = meta.shipped.checkpoint {
        let key = backend::checkpoint_key(meta.id, ck);
        let sst = shared.dir.join(format!("restore-{:016x}.sst", meta.id));
        let mut load = shared.index.bulk_load(meta.id, sst)?;
        let h = stream_checkpoint(
            |r| be.get_range(&key, r),
            RESTORE_CHUNK,
            |e| {
                if meta.is_discarded(e.generation) {
                    Ok(())
                } else {
                    load.add(e.cluster, meta.boundary(e.generation), e.mapping)
                }
            },
        )?;
        if h.volume_id != meta.id {
            return Err(EngineError::corrupt(
                "checkpoint",
                "belongs to another volume",
            ));
        }
        load.ingest()?;
    }
    let mut batch: Vec<Entry> = Vec::new();
    let mut last = meta.shipped.next_tlog;
    for t in &meta.shipped.tlogs {
        if meta.is_discarded(t.generation) {
            continue;
        }
        let data = be.get(&backend::tlog_key(meta.id, t.seq))?;
        let hdr = TlogHeader::decode(&data)?;
        if hdr.volume_id != meta.id || hdr.seq != t.seq {
            return Err(EngineError::corrupt(
                format!("tlog {:016x}", t.seq),
                "header names another log",
            ));
        }
        let gen_ = meta.boundary(hdr.generation);
        for rec in data
            .get(TLOG_HEADER_SIZE..)
            .unwrap_or_default()
            .chunks(TLOG_RECORD_SIZE)
        {
            let Some(r) = TlogRecord::decode(rec) else {
                return Err(EngineError::corrupt(
                    format!("tlog {:016x} on the backend", t.seq),
                    "bad record checksum",
                ));
            };
            batch.push((r.cluster, gen_, r.mapping));
        }
        last = last.max(t.seq + 1);
        if batch.len() > 65536 {
            shared
                .index
                .commit(meta.id, &batch, &Marker::at((0, 0), (0, 0)))?;
            batch.clear();
        }
    }
    shared
        .index
        .commit(meta.id, &batch, &Marker::at((last, 0), (0, 0)))?;
    Ok(())
}

fn wait(shared: &Shared, d: Duration) {
    let mut w = shared.wake.lock();
    if !*w {
        shared.wake_cv.wait_for(&mut w, d);
    }
    *w = false;
}

fn shipper(shared: Arc<Shared>) {
    while !shared.shutdown.load(Ordering::SeqCst) {
        for v in shared.volumes() {
            while v.wants_ship() && !shared.shutdown.load(Ordering::SeqCst) {
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
        wait(&shared, Duration::from_millis(200));
    }
}

/// One checkpointer pass: see [`VPool::checkpoint_if_due`].
fn checkpoint_due(shared: &Shared) -> EngineResult<usize> {
    let want = shared.cfg.checkpoint_tlogs;
    let mut written = 0;
    for v in shared.volumes() {
        if want == 0 || shared.shutdown.load(Ordering::SeqCst) {
            break;
        }
        if v.meta.lock().shipped.tlogs.len() < want {
            continue;
        }
        let _a = shared.admin.lock();
        if !shared.volumes.lock().contains_key(&v.id) {
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
fn checkpointer(shared: Arc<Shared>) {
    let mut last = std::time::Instant::now();
    while !shared.shutdown.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(200));
        if last.elapsed() < Duration::from_secs(5) {
            continue;
        }
        last = std::time::Instant::now();
        let _ = checkpoint_due(&shared);
    }
}

fn ticker(shared: Arc<Shared>) {
    let period =
        (shared.cfg.sync_interval / 2).clamp(Duration::from_millis(10), Duration::from_millis(500));
    while !shared.shutdown.load(Ordering::SeqCst) {
        for v in shared.volumes() {
            if let Err(e) = v.tick() {
                tracing::warn!(volume = v.name(), error = %e, "background sync failed");
            }
        }
        std::thread::sleep(period);
    }
}
