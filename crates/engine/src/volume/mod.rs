//! One vDisk: the log-structured, tiered `BlockDevice`.
//!
//! Write path: clusters are appended to the open container (SCO) and a
//! 64-byte record per cluster to the open tlog buffer, under the writer lock;
//! the mapping goes into the in-memory memtable (visible to reads at once).
//! A whole-cluster rewrite (16+ clusters) of data written since the last
//! hard barrier instead overwrites its own slots (*in-place rewrites*,
//! below). A sync (FUA, flush, timer, seal) runs as group commit: one leader
//! grabs the work under the writer lock and fdatasyncs the containers then
//! the tlogs without holding it; every writer that arrived before the grab
//! is covered by that one sync. A sync also commits the memtable and the
//! replay marker to RocksDB when it is FUA or flush, precedes a rollback
//! or a scrub, the last commit is `index_commit_interval` old, or reads
//! have walked the memtable as many times as it has entries (see `grab`,
//! `read_commit_due`); the memtable holds one entry per key, so rewrites
//! between commits cost RocksDB nothing. Shipping does not commit: a
//! shipped segment's local tlog is deleted once a commit covers it
//! (`drop_applied_tlogs`). A cluster appended again while its previous
//! mapping is in the memtable leaves a dead slot, dropped from the page
//! cache once a sync made it clean (`drop_dead_pages`).
//!
//! In-place rewrites: a slot is *mutable* while it is at or above the frozen
//! watermark (container, slot) and its container's segment has not begun to
//! ship. Hard barriers (FUA, SYNCHRONIZE CACHE, snapshot, rollback, scrub's
//! cut) raise the watermark to the append position; shipping freezes the
//! segments it ships; the periodic sync freezes nothing. Sealed segments
//! wait to ship until `ship_interval` old or the write buffer is ¾ full,
//! so a hot working set keeps being rewritten in the same page-cache pages
//! instead of new ones. Replay (`replay_local`) checks records slot by slot.
//!
//! Read path: mappings from the memtables → the chunked index cache
//! (`crate::icache`, filled by one RocksDB range scan per 256 clusters) →
//! parent chain, resolved up to 256 clusters at a time; data: runs of whole
//! clusters in consecutive slots of one local container are read with one
//! positioned read straight into the caller's buffer, anything else per
//! cluster from local container → read cache → ranged GET; crc32c checked
//! on every path. `try_read_nowait` runs the same path but only from memory
//! and page-cache-resident local containers (`preadv2(RWF_NOWAIT)`). A
//! checksum failure that raced an in-place rewrite is read again (the
//! `rewrites` seqlock), at last under the range lock of its clusters.
//!
//! Ownership (grid): a volume is opened under an [`Owner`] (generation and
//! the daemon's fencing hook; generation 0 is standalone). Its objects'
//! keys carry the generation of the epoch that covers them (`epochs`, a
//! copy of the manifest's table); a grid owner's manifest PUTs are fenced
//! (`fence`: the hook, then a conditional PUT on the last e-tag, or a read
//! of the manifest's newest epoch where the store ignores conditions). A
//! fenced volume fails every later read, write and ship with
//! [`EngineError::Fenced`]. A volume opened only as a grid clone's parent
//! is a *reader*: it reads, and never writes, ships or publishes. A live
//! move hands the unshipped segments over (`handover`).
//!
//! Lock order (never acquired in the other direction):
//! `admin` → `ship_lock` → `manifest` → `ranges` → `writer` → `commit` →
//! `index_lock` → `memtable` / `meta` / `files` / `icache` / `epochs` /
//! `owner`.
//!
//! Invariants:
//! - An appended cluster's record is written after its data; an in-place
//!   rewrite's records before its data. Both happen under the writer lock,
//!   so a completed sync covers every record and byte before its grab, and
//!   a kill leaves at most in-place records without their data.
//! - Every record that points into a container is in the tlog of that
//!   container's segment, so a slot's records are in one file in write
//!   order and a segment ships self-contained.
//! - A slot is rewritten in place only while mutable; a hard barrier or the
//!   start of its segment's shipping makes it final for good.
//! - RocksDB only ever receives mappings whose data and records are durable.
//! - Segments (a sealed tlog and its containers) ship in order; the backend
//!   manifest is written after the objects it names.
//! - A container file is written only while it is the open container or
//!   mutable (scrub output is written once, under a fresh sequence number,
//!   before it is registered). Once its segment ships it is never written
//!   again, truncated or rewritten: a local-directory backend may hold it as
//!   a hard link (`Backend::put_link`). Eviction only unlinks the flash name.
//! - The index cache is updated by commits under `index_lock` and filled
//!   under it (see `crate::icache`), so it never serves a mapping older
//!   than RocksDB's; a committed memtable is dropped only after that.
//! - The owner check costs the I/O path one atomic load (`fence`) and,
//!   under the writer lock it already holds, one bool (`Writer::stopped`);
//!   the daemon's hook and the backend are asked per manifest PUT and
//!   per delete only.
//!
//! Layout: `impl Volume` is spread over the child modules, one
//! responsibility each; this module keeps the struct, the small types they
//! share and the accessors. The children's `use super::…` imports stand in
//! the order below, each using only earlier ones (their methods call each
//! other both ways: they are one type's):
//! - `segments`: flash files — container and tlog names and headers, the
//!   open container and tlog, sealed segments, vectored positioned writes,
//!   page-cache hints, container handles and scrub's local containers.
//! - `mirror`: the mirror seam — the types a mirror (the daemon's DTL
//!   client) is handed, and each sync's batch of the unshipped window.
//! - `fence`: ownership — object keys from the epoch table, fencing, the
//!   fenced manifest upload, claiming a new epoch at open.
//! - `lookup`: the memtables and the lookups (memtable → index cache →
//!   RocksDB → parent chain).
//! - `defrag`: relocation on read.
//! - `read`: the read path.
//! - `rewrite`: in-place rewrites.
//! - `write`: the write path (throttle, appends, sealing, non-blocking
//!   writes).
//! - `sync`: group commit (handing each batch to the mirror), index
//!   commits, attaching a mirror, and the background tick.
//! - `replay`: building a volume and the local replay of its tlogs.
//! - `restore`: rebuilding a volume's index from the backend.
//! - `ship`: shipping segments to the backend.
//! - `handover`: a live move's source side — precopy, freeze, close — and
//!   where the window's files are for a mirror.
//! - `snapshot`: snapshots, rollback, resize, templates and scrub's cut.
//! - `unmap`: unmap and provisioning.
//! - `device`: the [`BlockDevice`](depot_block::BlockDevice) impl.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use depot_block::blocks_in;
use parking_lot::{Condvar, Mutex, RwLock};

use crate::backend::ETag;
use crate::error::{EngineError, EngineResult};
use crate::format::{CLUSTER_SIZE, Location};
use crate::icache::{self, IndexCache};
use crate::index::IndexBatch;
use crate::meta::{Epoch, VolumeMeta};
use crate::owner::Owner;
use crate::ranges::RangeLocks;
use crate::shared::Shared;

mod defrag;
mod device;
mod fence;
mod handover;
mod lookup;
mod mirror;
mod read;
mod replay;
mod restore;
mod rewrite;
mod segments;
mod ship;
mod snapshot;
mod sync;
mod unmap;
mod write;

pub use handover::{HandoverFile, HandoverFileKind, HandoverState};
pub use mirror::{Held, HeldNow, Mirror, MirrorBatch, MirrorWait, WindowSegment};
pub(crate) use replay::Opening;
pub(crate) use restore::{restore_index, restore_tlogs};

use lookup::Memtables;
use segments::{OpenContainer, OpenTlog, Segment};
use sync::CommitState;

/// A snapshot as the API reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// Name.
    pub name: String,
    /// Creation time (Unix seconds).
    pub created_unix: u64,
    /// Internal generation number.
    pub generation: u32,
    /// Whether all its data is on the backend.
    pub on_backend: bool,
    /// Number of clones made from it.
    pub clones: usize,
}

/// Per-volume numbers the daemon can export.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VolumeStats {
    /// Size in bytes.
    pub size_bytes: u64,
    /// Bytes written but not yet on the backend (the write buffer in use).
    pub unshipped_bytes: u64,
    /// Containers waiting to ship.
    pub segments_waiting: usize,
    /// Bytes of shipped containers kept on flash.
    pub local_shipped_bytes: u64,
    /// Read calls.
    pub reads: u64,
    /// Write calls.
    pub writes: u64,
    /// Clusters read from a local container.
    pub local_reads: u64,
    /// Clusters read from the backend.
    pub backend_reads: u64,
    /// Syncs performed (group-commit leaders).
    pub syncs: u64,
    /// Memtable commits to RocksDB (each after a sync's fdatasyncs).
    pub index_commits: u64,
    /// Times a writer had to wait for uploads (write buffer full).
    pub throttled: u64,
    /// Time writers spent waiting for uploads, summed over writers.
    pub throttle_wait: Duration,
    /// Pieces reads were served in: one per run of consecutive slots read
    /// with one positioned read (or ranged GET), one per cluster read on
    /// its own; unmapped clusters do not count. A fragmented 1 MiB read
    /// adds up to 256, a contiguous one 1.
    pub read_runs: u64,
    /// Clusters rewritten contiguously by relocation on read (see
    /// `volume/defrag.rs`).
    pub relocated_clusters: u64,
    /// Clusters rewritten in place (a whole-cluster write over a slot
    /// written since the last hard barrier; module docs).
    pub rewritten_clusters: u64,
    /// Slots adopted by replay after an unclean stop (bytes matched no
    /// record; see `replay_local`).
    pub adopted_clusters: u64,
    /// Superseded clusters dropped from the page cache (`drop_dead_pages`).
    pub dropped_clusters: u64,
    /// Number of snapshots.
    pub snapshots: usize,
    /// Whether the volume is a template.
    pub template: bool,
}

#[derive(Debug, Default)]
struct Counters {
    reads: AtomicU64,
    writes: AtomicU64,
    local_reads: AtomicU64,
    backend_reads: AtomicU64,
    syncs: AtomicU64,
    commits: AtomicU64,
    throttled: AtomicU64,
    throttle_us: AtomicU64,
    read_runs: AtomicU64,
    relocated: AtomicU64,
    rewritten: AtomicU64,
    adopted: AtomicU64,
    dropped: AtomicU64,
}

struct Writer {
    generation: u32,
    container: Option<OpenContainer>,
    tlog: Option<OpenTlog>,
    next_container: u64,
    next_tlog: u64,
    unsynced: Vec<Arc<File>>,
    dir_dirty: bool,
    write_seq: u64,
    /// When the index was last committed (a soft sync commits only every
    /// `index_commit_interval` or above
    /// [`MEMTABLE_COMMIT_ENTRIES`](sync::MEMTABLE_COMMIT_ENTRIES)).
    last_commit: Instant,
    segments: VecDeque<Segment>,
    shipped_local: VecDeque<(u64, u64)>,
    shipped_local_bytes: u64,
    /// Slots at or above this (container, slot) are mutable: written since
    /// the last hard barrier, so a whole-cluster rewrite may overwrite them
    /// in place (module docs). Only ever raised.
    frozen: (u64, u32),
    /// Writable handles of this incarnation's unshipped containers.
    mutable: HashMap<u64, Arc<File>, icache::Build>,
    /// Sealed containers and tlogs written in place since the last grab.
    touched: Vec<Arc<File>>,
    /// Slots whose cluster was appended again since the last grab (found
    /// in the active memtable), at most
    /// [`DEAD_SLOTS_MAX`](write::DEAD_SLOTS_MAX): their page cache is
    /// dropped once a sync made them clean (`drop_dead_pages`).
    dead: Vec<(u64, u32)>,
    /// Set by a hand-over's freeze: nothing more is appended, rewritten or
    /// unmapped, and no segment is marked shipped (`handover`).
    stopped: bool,
    /// A mirror is attached: in-place rewrites are remembered for it
    /// (`mirror`).
    mirroring: bool,
    /// Container ranges rewritten in place since the last grab, while
    /// mirroring: (container, offset, length).
    mirror_rewrites: Vec<(u64, u64, u64)>,
    /// The segment list last handed to the mirror and what identified it
    /// (`Volume::mirror_window`): a batch shares it while it holds.
    mirror_window: Option<(mirror::WindowKey, Arc<Vec<WindowSegment>>)>,
    /// A hard barrier froze the slots since the last grab: the next sync's
    /// mirror batch is one every mirror mode waits for.
    hard_pending: bool,
}

impl Writer {
    /// Where the next appended cluster goes; everything written so far is
    /// below it.
    fn append_pos(&self) -> (u64, u32) {
        match &self.container {
            Some(c) => (c.seq, c.next_slot),
            None => (self.next_container, 0),
        }
    }

    /// A hard barrier: every slot written so far becomes final.
    fn freeze(&mut self) {
        self.frozen = self.frozen.max(self.append_pos());
        self.hard_pending = true;
    }

    fn touch(&mut self, f: &Arc<File>) {
        if !self.touched.iter().any(|t| Arc::ptr_eq(t, f)) {
            self.touched.push(f.clone());
        }
    }
}

/// A vDisk. Implements [`BlockDevice`](depot_block::BlockDevice); clone and
/// snapshot management is on the inherent methods.
pub struct Volume {
    pub(crate) shared: Arc<Shared>,
    pub(crate) id: u64,
    name: String,
    dir: PathBuf,
    block_size: u32,
    num_blocks: AtomicU64,
    head_gen: AtomicU32,
    template: AtomicBool,
    pub(crate) parent: Option<(Arc<Volume>, u32)>,
    pub(crate) meta: Mutex<VolumeMeta>,
    meta_dirty: AtomicBool,
    writer: Mutex<Writer>,
    memtable: RwLock<Memtables>,
    commit: Mutex<CommitState>,
    commit_cv: Condvar,
    index_lock: Mutex<()>,
    icache: Mutex<IndexCache>,
    /// Cluster ranges of writes in progress (see [`RangeLocks`]).
    pub(crate) ranges: RangeLocks,
    files: Mutex<HashMap<u64, Arc<File>, icache::Build>>,
    ship_lock: Mutex<()>,
    admin: Mutex<()>,
    throttle_lock: Mutex<()>,
    throttle_cv: Condvar,
    unshipped: AtomicU64,
    failed: Mutex<Option<String>>,
    closed: AtomicBool,
    last_sync: Mutex<Instant>,
    /// Superseded slots made clean by a sync, for the ticker to drop from
    /// the page cache; at most [`DEAD_SLOTS_MAX`](write::DEAD_SLOTS_MAX)
    /// however far the ticker lags.
    dead_clean: Mutex<Vec<(u64, u32)>>,
    /// Local tlogs of shipped segments with the write sequence number the
    /// ship's sync covered: deleted once an index commit covers it and
    /// RocksDB's WAL is synced (`drop_applied_tlogs`).
    shipped_tlogs: Mutex<Vec<(u64, u64)>>,
    counters: Counters,
    /// Seqlock of in-place rewrites: odd while one is between its data
    /// write and its memtable update. A read whose checksum fails while
    /// this moved retries instead of reporting corruption.
    rewrites: AtomicU64,
    /// Lookups answered by the memtable since its last commit. Reads pay a
    /// pointer-chasing tree walk there (about 1 µs over 256 Ki entries)
    /// and a few nanoseconds in the index cache once it is committed, so
    /// the periodic sync commits early once the reads have cost about what
    /// the commit will ([`Volume::read_commit_due`]).
    memtable_hits: AtomicU64,
    /// The owner this volume was opened under.
    owner: Mutex<Owner>,
    /// Opened only as a grid clone's parent: reads only; never writes,
    /// ships or publishes its manifest.
    reader: AtomicBool,
    /// `fence::FENCE_*`: not fenced, frozen for a hand-over (abortable), or
    /// fenced for good.
    fence: AtomicU8,
    /// Why the volume is fenced.
    fence_reason: Mutex<Option<String>>,
    /// The e-tag of the manifest last read or written (conditional
    /// fencing); held across every manifest upload.
    manifest: Mutex<Option<ETag>>,
    /// The manifest's epoch table, for building object keys.
    epochs: RwLock<Vec<Epoch>>,
    /// A live move is under way: background checkpoints leave it alone.
    moving: AtomicBool,
    /// Where the unshipped window is mirrored, if anywhere (`mirror`).
    mirror: Mutex<mirror::MirrorSlot>,
    /// Write rounds (`mirror`), with `rounds_cv` for writers waiting.
    rounds: Mutex<mirror::Rounds>,
    rounds_cv: Condvar,
}

impl std::fmt::Debug for Volume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Volume")
            .field("name", &self.name)
            .field("id", &format_args!("{:016x}", self.id))
            .finish()
    }
}

/// A volume's flash directory (`<cache_dir>/vols/<id>`).
pub(crate) fn local_dir_of(cache_dir: &Path, id: u64) -> PathBuf {
    cache_dir.join("vols").join(format!("{id:016x}"))
}

/// Whether a location is stored as version 1 writes it (a whole, plain
/// cluster); only those are read directly from container files.
fn plain(loc: &Location) -> bool {
    loc.len as usize == CLUSTER_SIZE && loc.flags == 0
}

impl Volume {
    /// Volume name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Volume id (hex in backend keys).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Persists metadata locally and marks the backend manifest stale.
    pub(crate) fn persist_meta(&self, meta: &VolumeMeta) -> EngineResult<()> {
        self.persist_meta_quiet(meta)?;
        self.meta_dirty.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Persists metadata locally only.
    fn persist_meta_quiet(&self, meta: &VolumeMeta) -> EngineResult<()> {
        let mut b = IndexBatch::default();
        b.put_meta(meta)?;
        self.shared.index.write_sync(b)
    }

    fn check_ok(&self) -> EngineResult<()> {
        if self.fence.load(Ordering::Relaxed) != fence::FENCE_NONE {
            return Err(self.fenced_error());
        }
        if self.closed.load(Ordering::Relaxed) {
            return Err(EngineError::ShutDown);
        }
        if let Some(f) = self.failed.lock().as_ref() {
            return Err(EngineError::Failed(f.clone()));
        }
        Ok(())
    }

    fn check_writable(&self) -> EngineResult<()> {
        self.check_ok()?;
        if self.template.load(Ordering::Relaxed) || self.reader.load(Ordering::Relaxed) {
            return Err(EngineError::ReadOnly);
        }
        Ok(())
    }

    /// For admin changes (snapshots, resize, templates): open, not fenced,
    /// and owned here (a reader publishes nothing).
    fn check_admin(&self) -> EngineResult<()> {
        self.check_ok()?;
        if self.reader.load(Ordering::Relaxed) {
            return Err(EngineError::ReadOnly);
        }
        Ok(())
    }

    /// Closed or fenced: background work and non-blocking paths leave it
    /// alone.
    fn inactive(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
            || self.fence.load(Ordering::Relaxed) != fence::FENCE_NONE
    }

    fn byte_range(&self, lba: u64, len: usize) -> EngineResult<(u64, u64)> {
        let blocks = blocks_in(len, self.block_size)
            .map_err(|e| EngineError::InvalidArgument(e.to_string()))?;
        match lba.checked_add(blocks) {
            Some(end) if end <= self.num_blocks.load(Ordering::Acquire) => {}
            _ => return Err(EngineError::OutOfRange { lba, blocks }),
        }
        let bs = u64::from(self.block_size);
        Ok((lba * bs, len as u64))
    }

    /// Per-volume numbers.
    pub fn stats(&self) -> VolumeStats {
        let (segments_waiting, local_shipped_bytes) = {
            let w = self.writer.lock();
            (w.segments.len(), w.shipped_local_bytes)
        };
        let m = self.meta.lock();
        VolumeStats {
            size_bytes: m.size_bytes,
            unshipped_bytes: self.unshipped.load(Ordering::Relaxed),
            segments_waiting,
            local_shipped_bytes,
            reads: self.counters.reads.load(Ordering::Relaxed),
            writes: self.counters.writes.load(Ordering::Relaxed),
            local_reads: self.counters.local_reads.load(Ordering::Relaxed),
            backend_reads: self.counters.backend_reads.load(Ordering::Relaxed),
            syncs: self.counters.syncs.load(Ordering::Relaxed),
            index_commits: self.counters.commits.load(Ordering::Relaxed),
            throttled: self.counters.throttled.load(Ordering::Relaxed),
            throttle_wait: Duration::from_micros(self.counters.throttle_us.load(Ordering::Relaxed)),
            read_runs: self.counters.read_runs.load(Ordering::Relaxed),
            relocated_clusters: self.counters.relocated.load(Ordering::Relaxed),
            rewritten_clusters: self.counters.rewritten.load(Ordering::Relaxed),
            adopted_clusters: self.counters.adopted.load(Ordering::Relaxed),
            dropped_clusters: self.counters.dropped.load(Ordering::Relaxed),
            snapshots: m.snapshots.len(),
            template: m.template,
        }
    }

    pub(crate) fn unshipped_bytes(&self) -> u64 {
        self.unshipped.load(Ordering::Relaxed)
    }

    /// Flash bytes used by this volume's containers and tlogs.
    pub(crate) fn flash_bytes(&self) -> u64 {
        let mut total = 0;
        for sub in ["containers", "tlogs"] {
            if let Ok(rd) = std::fs::read_dir(self.dir.join(sub)) {
                for e in rd.flatten() {
                    total += e.metadata().map(|m| m.len()).unwrap_or(0);
                }
            }
        }
        total
    }

    /// Stops background work on this volume (delete, shutdown).
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.throttle_cv.notify_all();
    }

    /// Whether the volume was closed (deleted, shut down, handed over).
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Remembers the e-tag of the manifest just written or read.
    pub(crate) fn set_manifest_etag(&self, etag: Option<ETag>) {
        *self.manifest.lock() = etag;
    }

    pub(crate) fn local_dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn admin_lock(&self) -> parking_lot::MutexGuard<'_, ()> {
        self.admin.lock()
    }
    pub(crate) fn ship_guard(&self) -> parking_lot::MutexGuard<'_, ()> {
        self.ship_lock.lock()
    }
    pub(crate) fn index_guard(&self) -> parking_lot::MutexGuard<'_, ()> {
        self.index_lock.lock()
    }
}
