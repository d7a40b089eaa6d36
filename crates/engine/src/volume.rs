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
//! Lock order (never acquired in the other direction):
//! `admin` → `ship_lock` → `ranges` → `writer` → `commit` →
//! `index_lock` → `memtable` / `meta` / `files` / `icache`.
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

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use depot_block::{BlockDevice, BlockError, BlockResult, Provisioning, blocks_in};
use parking_lot::{Condvar, Mutex, RwLock};
use rocksdb::WriteBatch;
use smallvec::SmallVec;

use crate::backend;
use crate::checksum;
use crate::error::{EngineError, EngineResult};
use crate::format::{
    CLUSTER_SIZE, CLUSTER_SIZE_U64, CONTAINER_VERSION, ContainerHeader, Location, Mapping,
    TLOG_HEADER_SIZE, TLOG_RECORD_SIZE, TLOG_VERSION, TlogHeader, TlogRecord, content_hash,
    slot_offset,
};
use crate::icache::{self, CHUNK_CLUSTERS, Chunk, IndexCache, Slot};
use crate::index::{Entry, Index, Marker};
use crate::meta::{SnapshotMeta, TlogRef, VolumeMeta};
use crate::pool::Shared;
use crate::ranges::RangeLocks;

mod defrag;

/// Largest write `try_write_nowait` completes inline (bigger buffered
/// copies are left to the blocking pool).
const NOWAIT_WRITE_MAX: u64 = 128 * 1024;
const TLOG_BUF_FLUSH: usize = 64 * 1024;
/// A sync commits the index once the memtable holds this many entries
/// (about 50 MiB), even before `index_commit_interval`.
const MEMTABLE_COMMIT_ENTRIES: usize = 1 << 19;

/// Memtable hits below which reads never make a commit due
/// ([`Volume::read_commit_due`]).
const READ_COMMIT_MIN_HITS: u64 = 4096;
/// Smallest run of whole clusters rewritten in place. Smaller writes
/// append: a small overwrite inside a large page-cache folio costs ext4 a
/// walk over the folio's buffers (measured: 4K random rewrites in place
/// ran at half the rate of appends), while an append only fills new pages.
const REWRITE_MIN_CLUSTERS: usize = 16;

/// Smallest run a vectored write is cut into (see `write_pieces`): pieces
/// smaller than this are gathered with their neighbours, so a write that
/// arrived in tiny PDUs is still stored as few large runs, each large
/// enough to be rewritten in place.
const VECTORED_RUN_MIN: usize = REWRITE_MIN_CLUSTERS * CLUSTER_SIZE;

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

struct OpenContainer {
    seq: u64,
    file: Arc<File>,
    next_slot: u32,
    opened: Instant,
}

struct OpenTlog {
    opened: Instant,
    seq: u64,
    generation: u32,
    file: Arc<File>,
    on_file: u64,
    buf: Vec<u8>,
    containers: Vec<u64>,
}

impl OpenTlog {
    fn flush_buf(&mut self) -> EngineResult<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let off = TLOG_HEADER_SIZE as u64 + self.on_file * TLOG_RECORD_SIZE as u64;
        self.file
            .write_all_at(&self.buf, off)
            .map_err(|e| EngineError::io("appending to the tlog", e))?;
        self.on_file += (self.buf.len() / TLOG_RECORD_SIZE) as u64;
        self.buf.clear();
        Ok(())
    }
}

/// A sealed tlog and the containers it references, waiting to ship.
#[derive(Debug, Clone)]
pub(crate) struct Segment {
    tlog: u64,
    generation: u32,
    containers: Vec<u64>,
    bytes: u64,
    /// When its tlog was opened: shipping waits for this age (or for
    /// write-buffer pressure) so recent data can still be rewritten in place.
    opened: Instant,
    /// The sealed tlog's writable handle while its containers may still be
    /// rewritten in place (sealed by this incarnation, not yet frozen by a
    /// ship); in-place records of those containers are appended to it.
    tlog_file: Option<Arc<File>>,
    /// Records in the tlog file.
    records: u64,
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
    /// `index_commit_interval` or above [`MEMTABLE_COMMIT_ENTRIES`]).
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
    /// in the active memtable), at most [`DEAD_SLOTS_MAX`]: their page
    /// cache is dropped once a sync made them clean (`drop_dead_pages`).
    dead: Vec<(u64, u32)>,
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
    }

    fn touch(&mut self, f: &Arc<File>) {
        if !self.touched.iter().any(|t| Arc::ptr_eq(t, f)) {
            self.touched.push(f.clone());
        }
    }
}

struct SyncWork {
    files: Vec<Arc<File>>,
    /// The memtable to commit with its replay marker; `None`: the sync
    /// only makes data durable (the marker stays, replay covers the rest).
    commit: Option<(Arc<MemTable>, Marker)>,
    upto: u64,
    dir_sync: bool,
    /// `Writer::dead` at the grab: clean once this sync's fdatasyncs end.
    dead: Vec<(u64, u32)>,
}

#[derive(Default)]
struct CommitState {
    /// Every write with a sequence number up to this is durable on flash.
    durable: u64,
    /// ... and up to this also in RocksDB.
    committed: u64,
    /// A sync is making data durable (one at a time: group commit).
    syncing: bool,
    /// A sync whose data is durable is committing its memtable to RocksDB
    /// (one at a time, in order). Runs alongside the next `syncing`, so a
    /// sync that needs no commit never waits for one.
    committing: bool,
}

/// Whether a sync commits the index to RocksDB.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Commit {
    /// Never (a snapshot: durable without waiting for a commit).
    Skip,
    /// When `index_commit_interval` or [`MEMTABLE_COMMIT_ENTRIES`] says so.
    IfDue,
    /// Always (FUA, flush, rollback, scrub).
    Force,
}

type MemTable = BTreeMap<(u64, u32), Mapping>;

/// Mappings not yet in RocksDB. Writes go to `active`; a committing sync
/// moves it to `committing` (shared with the sync, read-only) and drops that
/// once RocksDB and the index cache hold it. Lookups read `active`, then
/// `committing`, then the index cache. Each holds one entry per key, so a
/// commit writes every key once however often it was rewritten.
#[derive(Default)]
struct Memtables {
    active: MemTable,
    committing: Option<Arc<MemTable>>,
}

impl Memtables {
    /// Newest entry of `cluster` with generation ≤ `generation`.
    fn newest(&self, cluster: u64, generation: u32) -> Option<Mapping> {
        let find = |m: &MemTable| {
            m.range((cluster, 0)..=(cluster, generation))
                .next_back()
                .map(|(_, m)| *m)
        };
        find(&self.active).or_else(|| self.committing.as_deref().and_then(find))
    }

    /// Keys of clusters `from..to`, any generation.
    fn keys(&self, from: u64, to: u64) -> impl Iterator<Item = (u64, u32)> + '_ {
        let c = self.committing.as_deref().into_iter();
        c.chain(std::iter::once(&self.active))
            .flat_map(move |m| m.range((from, 0)..(to, 0)).map(|(k, _)| *k))
    }
}

/// The memtable entries of clusters `first..end` visible at `generation`,
/// as (cluster, entry generation, mapping), oldest table first and in
/// ascending (cluster, generation) order within each: for each cluster the
/// last one yielded is the newest with generation ≤ `generation`, which is
/// the one that counts.
fn memtable_run(
    m: &Memtables,
    first: u64,
    end: u64,
    generation: u32,
) -> impl Iterator<Item = (u64, u32, Mapping)> + '_ {
    let c = m.committing.as_deref().into_iter();
    c.chain(std::iter::once(&m.active)).flat_map(move |t| {
        t.range((first, 0)..(end, 0))
            .filter(move |((_, g), _)| *g <= generation)
            .map(|(&(c, g), &mapping)| (c, g, mapping))
    })
}

/// A vDisk. Implements [`BlockDevice`]; clone and snapshot management is on
/// the inherent methods.
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
    /// the page cache; at most [`DEAD_SLOTS_MAX`] however far the ticker
    /// lags.
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
}

impl std::fmt::Debug for Volume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Volume")
            .field("name", &self.name)
            .field("id", &format_args!("{:016x}", self.id))
            .finish()
    }
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn sync_dir(dir: &Path) -> EngineResult<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| EngineError::io(format!("syncing directory {}", dir.display()), e))
}

/// Parses `0123abcd...` file names (16 hex digits + extension).
fn parse_seq(name: &str, ext: &str) -> Option<u64> {
    let stem = name.strip_suffix(ext)?;
    if stem.len() != 16 {
        return None;
    }
    u64::from_str_radix(stem, 16).ok()
}

fn list_seqs(dir: &Path, ext: &str) -> EngineResult<Vec<u64>> {
    let mut out = Vec::new();
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(EngineError::io(format!("listing {}", dir.display()), e)),
    };
    for ent in rd {
        let ent = ent.map_err(|e| EngineError::io("listing the volume directory", e))?;
        if let Some(s) = ent.file_name().to_str().and_then(|n| parse_seq(n, ext)) {
            out.push(s);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// Where a cluster's data comes from.
#[derive(Clone, Copy)]
struct Resolved<'a> {
    owner: &'a Volume,
    loc: Location,
}

/// Bytes of an open container handed to writeback at a time.
const WRITEBACK_STEP: u64 = 4 << 20;

/// A page-cache hint for a byte range of a container file.
#[derive(Clone, Copy)]
enum RangeHint {
    /// Start writing the range back (`sync_file_range(SYNC_FILE_RANGE_WRITE)`):
    /// asynchronous, durability unchanged.
    StartWriteback,
    /// Drop the range from the page cache (`posix_fadvise(POSIX_FADV_DONTNEED)`):
    /// clean pages are freed, dirty ones stay.
    DropCached,
}

/// Gives the kernel `hint` for `len` bytes at `offset` of `file`. Errors
/// are ignored: these are hints, and the next fdatasync reports real ones.
fn range_hint(file: &File, offset: u64, len: u64, hint: RangeHint) {
    use std::os::fd::AsRawFd;
    let (Ok(off), Ok(n)) = (
        libc::off64_t::try_from(offset),
        libc::off64_t::try_from(len),
    ) else {
        return;
    };
    let fd = file.as_raw_fd();
    // SAFETY: both calls only read their integer arguments; the descriptor
    // belongs to `file`, borrowed (so open) for the call.
    #[allow(unsafe_code)]
    unsafe {
        match hint {
            RangeHint::StartWriteback => {
                libc::sync_file_range(fd, off, n, libc::SYNC_FILE_RANGE_WRITE);
            }
            RangeHint::DropCached => {
                libc::posix_fadvise(fd, off, n, libc::POSIX_FADV_DONTNEED);
            }
        }
    }
}

/// Writes the concatenation of `parts` at `offset` of `file`, with one
/// `pwritev` unless the kernel writes short. One write per append matters
/// beyond the syscall: the page cache sizes a new folio by the write that
/// creates it, so a 1 MiB append written as four 256 KiB pieces left four
/// times as many small folios, and every later cache-hot read of them
/// walked a deeper page-cache tree (docs/BENCHMARKS.md).
/// No heap allocation for up to [`INLINE_PARTS`] parts (a 4 KiB append is
/// one).
fn write_all_parts_at(file: &File, parts: &[&[u8]], mut offset: u64) -> std::io::Result<()> {
    use std::io::{Error, ErrorKind, IoSlice};
    use std::os::fd::AsRawFd;
    let mut slices: SmallVec<[IoSlice<'_>; INLINE_PARTS]> = parts
        .iter()
        .filter(|p| !p.is_empty())
        .map(|p| IoSlice::new(p))
        .collect();
    let mut bufs = &mut slices[..];
    while !bufs.is_empty() {
        let count = bufs.len().min(IOV_MAX);
        let off = libc::off64_t::try_from(offset)
            .map_err(|_| Error::new(ErrorKind::InvalidInput, "file offset out of range"))?;
        // SAFETY: `IoSlice` is ABI-compatible with `iovec` on Unix, and the
        // `count` slices it points at are borrowed for the call; the kernel
        // only reads them. The descriptor belongs to `file`, borrowed (so
        // open) for the call.
        #[allow(unsafe_code)]
        let n = unsafe {
            libc::pwritev64(
                file.as_raw_fd(),
                bufs.as_ptr().cast::<libc::iovec>(),
                count as libc::c_int,
                off,
            )
        };
        match usize::try_from(n) {
            Ok(0) => return Err(Error::from(ErrorKind::WriteZero)),
            Ok(n) => {
                offset += n as u64;
                IoSlice::advance_slices(&mut bufs, n);
            }
            Err(_) => {
                let e = Error::last_os_error();
                if e.kind() != ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    Ok(())
}

/// Most iovecs one `pwritev` takes (Linux's `UIO_MAXIOV`).
const IOV_MAX: usize = 1024;

/// Parts of one append kept on the stack (a 1 MiB command arrives in four
/// Data-Out segments from libiscsi and open-iscsi).
const INLINE_PARTS: usize = 8;

/// Takes the first `n` bytes (fewer if fewer are left) off the front of
/// `head` followed by `parts`, as slices in order. `head` is the
/// unconsumed rest of a part already taken from `parts`; both are advanced
/// past what is returned.
fn take_front<'a>(
    parts: &mut &[&'a [u8]],
    head: &mut &'a [u8],
    mut n: usize,
) -> SmallVec<[&'a [u8]; INLINE_PARTS]> {
    let mut out = SmallVec::new();
    while n > 0 {
        if head.is_empty() {
            let Some((first, rest)) = parts.split_first() else {
                break;
            };
            *head = first;
            *parts = rest;
            continue;
        }
        let k = n.min(head.len());
        let (now, later) = head.split_at(k);
        out.push(now);
        *head = later;
        n -= k;
    }
    out
}

/// Most superseded slots remembered between syncs (16 bytes each); beyond
/// it their pages are left to the kernel's reclaim.
const DEAD_SLOTS_MAX: usize = 1 << 18;

/// The error for runs that break [`Volume::write_runs`]' contract (a
/// boundary inside a cluster); never expected from `write_pieces`.
fn unaligned_runs(off: u64, runs: &[&[u8]]) -> EngineError {
    let lens: Vec<usize> = runs.iter().map(|r| r.len()).collect();
    EngineError::Failed(format!(
        "write at byte {off} cut into runs of {lens:?} bytes with a boundary inside a cluster"
    ))
}

/// (crc32c, xxh3-128) of each whole cluster of `data`.
fn cluster_sums(data: &[u8]) -> Vec<(u32, u128)> {
    data.chunks_exact(CLUSTER_SIZE)
        .map(|c| (checksum::crc32c(c), content_hash(c)))
        .collect()
}

/// Whether a location is stored as version 1 writes it (a whole, plain
/// cluster); only those are read directly from container files.
fn plain(loc: &Location) -> bool {
    loc.len as usize == CLUSTER_SIZE && loc.flags == 0
}

/// Creates a tlog or container file with `opts` (which say how an existing
/// name is treated) and writes its header.
fn create_segment_file(
    opts: &OpenOptions,
    path: &Path,
    header: &[u8],
    what: &str,
) -> EngineResult<File> {
    let file = opts
        .clone()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| EngineError::io(format!("creating a {what}"), e))?;
    file.write_all_at(header, 0)
        .map_err(|e| EngineError::io(format!("writing a {what} header"), e))?;
    Ok(file)
}

impl Volume {
    fn container_path(&self, seq: u64) -> PathBuf {
        self.dir.join("containers").join(format!("{seq:016x}.sco"))
    }
    fn tlog_path(&self, seq: u64) -> PathBuf {
        self.dir.join("tlogs").join(format!("{seq:016x}.tlog"))
    }

    /// Volume name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Volume id (hex in backend keys).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Builds the in-memory volume and replays local tlogs. `meta` comes
    /// from the local index (or was just restored from the backend).
    pub(crate) fn load(
        shared: Arc<Shared>,
        meta: VolumeMeta,
        parent: Option<(Arc<Volume>, u32)>,
    ) -> EngineResult<Arc<Volume>> {
        let dir = shared.dir.join("vols").join(format!("{:016x}", meta.id));
        for sub in ["containers", "tlogs"] {
            std::fs::create_dir_all(dir.join(sub))
                .map_err(|e| EngineError::io(format!("creating {}", dir.display()), e))?;
        }
        let vol = Volume {
            id: meta.id,
            name: meta.name.clone(),
            block_size: meta.block_size,
            num_blocks: AtomicU64::new(meta.size_bytes / u64::from(meta.block_size)),
            head_gen: AtomicU32::new(meta.head_gen),
            template: AtomicBool::new(meta.template),
            parent,
            writer: Mutex::new(Writer {
                generation: meta.head_gen,
                container: None,
                tlog: None,
                next_container: meta.next_container,
                next_tlog: meta.next_tlog,
                unsynced: Vec::new(),
                dir_dirty: false,
                last_commit: Instant::now(),
                write_seq: 0,
                segments: VecDeque::new(),
                shipped_local: VecDeque::new(),
                shipped_local_bytes: 0,
                // Replay leaves every existing slot final.
                frozen: (u64::MAX, u32::MAX),
                mutable: HashMap::default(),
                touched: Vec::new(),
                dead: Vec::new(),
            }),
            meta: Mutex::new(meta),
            // The previous incarnation may have died between a metadata
            // change and its upload: always re-upload once after opening.
            meta_dirty: AtomicBool::new(true),
            memtable: RwLock::new(Memtables::default()),
            commit: Mutex::new(CommitState::default()),
            commit_cv: Condvar::new(),
            index_lock: Mutex::new(()),
            icache: Mutex::new(IndexCache::default()),
            ranges: RangeLocks::default(),
            files: Mutex::new(HashMap::default()),
            ship_lock: Mutex::new(()),
            admin: Mutex::new(()),
            throttle_lock: Mutex::new(()),
            throttle_cv: Condvar::new(),
            unshipped: AtomicU64::new(0),
            failed: Mutex::new(None),
            closed: AtomicBool::new(false),
            last_sync: Mutex::new(Instant::now()),
            dead_clean: Mutex::new(Vec::new()),
            shipped_tlogs: Mutex::new(Vec::new()),
            counters: Counters::default(),
            rewrites: AtomicU64::new(0),
            memtable_hits: AtomicU64::new(0),
            shared,
            dir,
        };
        vol.replay_local()?;
        Ok(Arc::new(vol))
    }

    /// Local restart: replays the local tlogs from the replay marker and
    /// rebuilds the ship queue.
    ///
    /// A tlog's torn tail (a record that fails its own checksum) is cut
    /// off; later tlogs still count. Every data record is checked against
    /// its slot, slot by slot ([`Volume::check_slots`]): the newest record
    /// whose crc matches the slot's bytes holds, later records of the slot
    /// were never written and are dropped. A tlog that loses records this
    /// way is rewritten without them (its committed prefix unchanged), so
    /// a restore from the backend never sees them either.
    fn replay_local(&self) -> EngineResult<()> {
        let index = &self.shared.index;
        let marker = index.marker(self.id)?;
        let meta = self.meta.lock().clone();
        // A replay that died while rewriting a tlog left its temporary copy.
        for seq in list_seqs(&self.dir.join("tlogs"), ".tlog.tmp")? {
            let _ = std::fs::remove_file(self.tlog_path(seq).with_extension("tlog.tmp"));
        }
        let tlogs = list_seqs(&self.dir.join("tlogs"), ".tlog")?;
        let containers = list_seqs(&self.dir.join("containers"), ".sco")?;
        let mut open_files: HashMap<u64, File> = HashMap::new();
        let mut segments = VecDeque::new();
        let mut max_tlog = None;
        let mut batch: Vec<Entry> = Vec::new();
        let mut replayed: Vec<u64> = Vec::new();
        let last_tlog = tlogs.last().copied();
        for &seq in &tlogs {
            let path = self.tlog_path(seq);
            max_tlog = Some(seq);
            let data = std::fs::read(&path).map_err(|e| EngineError::io("reading a tlog", e))?;
            let hdr = match TlogHeader::decode(&data) {
                Ok(h) if h.volume_id == self.id && h.seq == seq => h,
                _ if Some(seq) == last_tlog => {
                    // Created but its header never reached the disk.
                    std::fs::remove_file(&path)
                        .map_err(|e| EngineError::io("removing a torn tlog", e))?;
                    continue;
                }
                _ => {
                    return Err(EngineError::corrupt(
                        format!("tlog {seq:016x} of {}", self.name),
                        "bad header",
                    ));
                }
            };
            if meta.is_discarded(hdr.generation) {
                std::fs::remove_file(&path)
                    .map_err(|e| EngineError::io("removing a rolled-back tlog", e))?;
                continue;
            }
            let mut recs: Vec<TlogRecord> = Vec::new();
            let mut torn = false;
            for rec in data[TLOG_HEADER_SIZE..].chunks(TLOG_RECORD_SIZE) {
                match TlogRecord::decode(rec) {
                    Some(r) => recs.push(r),
                    None => {
                        torn = true;
                        break;
                    }
                }
            }
            if torn {
                tracing::warn!(volume = %self.name, tlog = seq, records = recs.len(), "torn tlog tail truncated on replay");
                let f = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(|e| EngineError::io("opening a torn tlog", e))?;
                f.set_len((TLOG_HEADER_SIZE + recs.len() * TLOG_RECORD_SIZE) as u64)
                    .and_then(|()| f.sync_all())
                    .map_err(|e| EngineError::io("truncating a torn tlog", e))?;
            }
            let skip = usize::try_from(marker.records_applied(seq))
                .unwrap_or(usize::MAX)
                .min(recs.len());
            let tail = if seq < meta.shipped.next_tlog {
                // Shipped: `ship_one` made every record durable and its
                // slot final first, and the containers may be evicted
                // since; the records hold as they are.
                recs[skip..].to_vec()
            } else {
                self.check_slots(seq, &recs, skip, marker.frozen, &mut open_files)?
            };
            let rewritten = tail.len() != recs.len() - skip
                || tail.iter().zip(&recs[skip..]).any(|(a, b)| a != b);
            if rewritten {
                let mut out =
                    Vec::with_capacity(TLOG_HEADER_SIZE + (skip + tail.len()) * TLOG_RECORD_SIZE);
                out.extend_from_slice(&data[..TLOG_HEADER_SIZE + skip * TLOG_RECORD_SIZE]);
                let mut rec = [0u8; TLOG_RECORD_SIZE];
                for r in &tail {
                    r.encode(&mut rec);
                    out.extend_from_slice(&rec);
                }
                self.replace_tlog(seq, &out)?;
            }
            let mut seg_containers: Vec<u64> = Vec::new();
            for r in recs[..skip].iter().chain(&tail) {
                if let Mapping::Data(l) = r.mapping
                    && !seg_containers.contains(&l.container)
                {
                    seg_containers.push(l.container);
                }
            }
            batch.extend(tail.iter().map(|r| (r.cluster, hdr.generation, r.mapping)));
            replayed.push(seq);
            if batch.len() > 65536 {
                // Tlogs up to `seq` are applied; later ones keep their
                // marker positions.
                let mut m = marker.clone();
                m.applied = m.applied.max((seq + 1, 0));
                m.sealed.retain(|(s, _)| *s > seq);
                index.commit(self.id, &batch, &m)?;
                batch.clear();
            }
            if seq >= meta.shipped.next_tlog {
                let bytes = seg_containers
                    .iter()
                    .map(|c| {
                        std::fs::metadata(self.container_path(*c))
                            .map(|m| m.len())
                            .unwrap_or(0)
                    })
                    .sum();
                segments.push_back(Segment {
                    tlog: seq,
                    generation: hdr.generation,
                    containers: seg_containers,
                    bytes,
                    opened: Instant::now(),
                    tlog_file: None,
                    records: (skip + tail.len()) as u64,
                });
            }
        }
        let next_tlog = max_tlog
            .map_or(0, |m| m + 1)
            .max(meta.next_tlog)
            .max(meta.shipped.next_tlog)
            .max(marker.applied.0);
        let next_container = containers
            .last()
            .map_or(0, |m| m + 1)
            .max(meta.next_container);
        // Every slot replay kept is final from now on: make the bytes it
        // checked durable (after a kill they may be only in the page cache)
        // before the marker says so.
        for f in open_files.values() {
            f.sync_data()
                .map_err(|e| EngineError::io("fdatasync of a replayed container", e))?;
        }
        for &seq in &replayed {
            if let Ok(f) = File::open(self.tlog_path(seq)) {
                f.sync_data()
                    .map_err(|e| EngineError::io("fdatasync of a replayed tlog", e))?;
            }
        }
        index.commit(
            self.id,
            &batch,
            &Marker::at((next_tlog, 0), (next_container, 0)),
        )?;
        // Everything replayed is in RocksDB; make it durable before
        // deleting shipped tlogs.
        index.sync_wal()?;
        for &seq in &tlogs {
            if seq < meta.shipped.next_tlog && self.tlog_path(seq).exists() {
                let _ = std::fs::remove_file(self.tlog_path(seq));
            }
        }
        let in_segments: BTreeSet<u64> = segments
            .iter()
            .flat_map(|s: &Segment| s.containers.iter().copied())
            .collect();
        let mut w = self.writer.lock();
        w.next_tlog = next_tlog;
        w.next_container = next_container;
        w.frozen = (next_container, 0);
        let mut unshipped = 0;
        for s in &segments {
            unshipped += s.bytes;
        }
        w.segments = segments;
        for &c in &containers {
            if !in_segments.contains(&c) {
                let len = std::fs::metadata(self.container_path(c))
                    .map(|m| m.len())
                    .unwrap_or(0);
                w.shipped_local.push_back((c, len));
                w.shipped_local_bytes += len;
            }
        }
        self.unshipped.store(unshipped, Ordering::Relaxed);
        let (nc, nt) = (w.next_container, w.next_tlog);
        drop(w);
        let mut m = self.meta.lock();
        if m.next_container != nc || m.next_tlog != nt {
            m.next_container = nc;
            m.next_tlog = nt;
            self.persist_meta(&m)?;
        }
        Ok(())
    }

    /// Replay's per-slot check of tlog `seq`'s records (`recs`, of which
    /// the first `skip` are in the index already); returns the records to
    /// apply after those `skip`.
    ///
    /// For each slot the records name, the newest record whose crc matches
    /// the slot's bytes holds, and the slot's later records are dropped:
    /// their data never reached the slot (a kill between an in-place
    /// record and its data, or a power cut before a sync). Nothing dropped
    /// was promised: a completed sync after a record makes its data
    /// durable, and a hard barrier stops later rewrites of the slot.
    ///
    /// A slot that matches none of its records, although one is committed,
    /// was rewritten in place after a soft (periodic) sync and the power
    /// was cut mid-way. If it was mutable at the last commit (at or above
    /// `frozen`) and still is its cluster's current slot, its bytes are one
    /// version of that cluster and are **adopted**: a record with their crc
    /// and hash is inserted after the slot's last record. Below `frozen`
    /// the slot was final and synced, so a mismatch is corruption: it is
    /// left for reads to report, never adopted.
    fn check_slots(
        &self,
        seq: u64,
        recs: &[TlogRecord],
        skip: usize,
        frozen: (u64, u32),
        open_files: &mut HashMap<u64, File>,
    ) -> EngineResult<Vec<TlogRecord>> {
        let mut slots: HashMap<(u64, u32), Vec<usize>> = HashMap::new();
        for (i, r) in recs.iter().enumerate() {
            if let Mapping::Data(l) = r.mapping {
                slots.entry((l.container, l.slot)).or_default().push(i);
            }
        }
        let mut keep = vec![true; recs.len()];
        let mut inserts: Vec<(usize, TlogRecord)> = Vec::new();
        let mut buf = vec![0u8; CLUSTER_SIZE];
        for (&(container, slot), idxs) in &slots {
            let f = match open_files.entry(container) {
                std::collections::hash_map::Entry::Occupied(o) => Some(o.into_mut()),
                std::collections::hash_map::Entry::Vacant(v) => {
                    File::open(self.container_path(container))
                        .ok()
                        .map(|f| v.insert(f))
                }
            };
            let bytes_crc = f
                .and_then(|f| f.read_exact_at(&mut buf, slot_offset(slot)).ok())
                .map(|()| checksum::crc32c(&buf));
            let matches = |i: &usize| match recs[*i].mapping {
                Mapping::Data(l) => l.len as usize == CLUSTER_SIZE && Some(l.crc) == bytes_crc,
                Mapping::Unmapped => false,
            };
            let last = idxs[idxs.len() - 1];
            let newest_match = idxs.iter().rev().find(|i| matches(i)).copied();
            let drop_from = match newest_match {
                Some(k) => k + 1,
                None => 0,
            };
            for &i in idxs {
                if i >= skip && i >= drop_from {
                    keep[i] = false;
                }
            }
            if newest_match.is_some() || bytes_crc.is_none() || idxs[0] >= skip {
                continue;
            }
            let cluster = recs[last].cluster;
            let current = !recs[last + 1..skip.max(last + 1)]
                .iter()
                .any(|r| r.cluster == cluster);
            if (container, slot) >= frozen && current {
                let Mapping::Data(mut loc) = recs[last].mapping else {
                    continue;
                };
                loc.crc = bytes_crc.unwrap_or_default();
                loc.hash = content_hash(&buf);
                tracing::warn!(volume = %self.name, tlog = seq, cluster, container, slot,
                    "slot matches none of its records after an unclean stop; adopting its bytes");
                self.counters.adopted.fetch_add(1, Ordering::Relaxed);
                inserts.push((
                    (last + 1).max(skip),
                    TlogRecord {
                        cluster,
                        mapping: Mapping::Data(loc),
                    },
                ));
            } else {
                tracing::error!(volume = %self.name, tlog = seq, cluster, container, slot,
                    "cluster data does not match its committed record");
            }
        }
        inserts.sort_by_key(|(at, _)| *at);
        let mut out = Vec::with_capacity(recs.len() - skip + inserts.len());
        let mut ins = inserts.into_iter().peekable();
        for (i, r) in recs.iter().enumerate().skip(skip) {
            while let Some((_, a)) = ins.next_if(|(at, _)| *at <= i) {
                out.push(a);
            }
            if keep[i] {
                out.push(*r);
            }
        }
        out.extend(ins.map(|(_, a)| a));
        Ok(out)
    }

    /// Replaces tlog `seq` with `bytes` (write, sync, rename).
    fn replace_tlog(&self, seq: u64, bytes: &[u8]) -> EngineResult<()> {
        let path = self.tlog_path(seq);
        let tmp = path.with_extension("tlog.tmp");
        std::fs::write(&tmp, bytes)
            .and_then(|()| File::open(&tmp)?.sync_all())
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| EngineError::io("rewriting a replayed tlog", e))?;
        sync_dir(&self.dir.join("tlogs"))
    }

    /// Persists metadata locally and marks the backend manifest stale.
    pub(crate) fn persist_meta(&self, meta: &VolumeMeta) -> EngineResult<()> {
        self.persist_meta_quiet(meta)?;
        self.meta_dirty.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Persists metadata locally only.
    fn persist_meta_quiet(&self, meta: &VolumeMeta) -> EngineResult<()> {
        let mut b = WriteBatch::default();
        Index::put_meta(&mut b, meta)?;
        self.shared.index.write_sync(b)
    }

    fn check_ok(&self) -> EngineResult<()> {
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
        if self.template.load(Ordering::Relaxed) {
            return Err(EngineError::ReadOnly);
        }
        Ok(())
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

    // ----------------------------------------------------------------- lookup

    /// The memtable, read-locked; `None` only with `nowait` when a writer
    /// holds it.
    fn memtable_read(&self, nowait: bool) -> Option<parking_lot::RwLockReadGuard<'_, Memtables>> {
        if nowait {
            self.memtable.try_read()
        } else {
            Some(self.memtable.read())
        }
    }

    /// Own mapping of one cluster (memtable, index cache, RocksDB); `None`
    /// inside means no entry. The outer `None` only with `nowait`:
    /// answering would have waited.
    fn lookup_own(
        &self,
        cluster: u64,
        generation: u32,
        nowait: bool,
    ) -> EngineResult<Option<Option<Mapping>>> {
        {
            let Some(m) = self.memtable_read(nowait) else {
                return Ok(None);
            };
            if let Some(mapping) = m.newest(cluster, generation) {
                self.memtable_hits.fetch_add(1, Ordering::Relaxed);
                return Ok(Some(Some(mapping)));
            }
        }
        if let Some(hit) = self.icache.lock().get(cluster, generation) {
            return Ok(Some(hit.map(|(_, m)| m)));
        }
        let chunk = cluster / CHUNK_CLUSTERS;
        let Some(slots) = self.fill_chunk(chunk, generation, nowait)? else {
            return Ok(None);
        };
        let idx = (cluster % CHUNK_CLUSTERS) as usize;
        Ok(Some(slots.get(idx).copied().flatten().map(|(_, m)| m)))
    }

    /// Loads one chunk of committed lookups from RocksDB into the index
    /// cache and returns it. Holds `index_lock` across the scan so a
    /// concurrent commit either is in the scan or updates the inserted
    /// chunk afterwards (see `crate::icache`). With `nowait` it returns
    /// `Ok(None)` instead: a RocksDB read may touch the disk, and the
    /// pinned rust-rocksdb (0.21) does not export `ReadTier`, so a
    /// block-cache-only read cannot be asked for.
    fn fill_chunk(
        &self,
        chunk: u64,
        generation: u32,
        nowait: bool,
    ) -> EngineResult<Option<Vec<Slot>>> {
        if nowait {
            return Ok(None);
        }
        let _g = self.index_lock.lock();
        let epoch = self.icache.lock().epoch();
        let slots = self.shared.index.lookup_range(
            self.id,
            chunk * CHUNK_CLUSTERS,
            CHUNK_CLUSTERS as usize,
            generation,
        )?;
        let limit = self.shared.icache_chunks_per_volume();
        self.icache
            .lock()
            .insert_within(chunk, Chunk::new(generation, &slots), epoch, limit);
        Ok(Some(slots))
    }

    /// Own mappings (memtable, then index cache, then RocksDB) of the
    /// `out.len()` clusters from `first` at `generation`, written into the
    /// entries of `out` that are `None` (unanswered): `Some(None)` means no
    /// entry (look at the parent). `Ok(false)` only with `nowait`:
    /// answering would have waited. Allocates nothing on an index-cache
    /// hit.
    fn lookup_run(
        &self,
        first: u64,
        out: &mut [Option<Option<Mapping>>],
        generation: u32,
        nowait: bool,
    ) -> EngineResult<bool> {
        let end = first + out.len() as u64;
        {
            let Some(m) = self.memtable_read(nowait) else {
                return Ok(false);
            };
            let mut hit = false;
            for (c, _, mapping) in memtable_run(&m, first, end, generation) {
                out[(c - first) as usize] = Some(Some(mapping));
                hit = true;
            }
            if hit {
                self.memtable_hits.fetch_add(1, Ordering::Relaxed);
            }
        }
        let mut c = first;
        while c < end {
            let chunk = c / CHUNK_CLUSTERS;
            let chunk_end = ((chunk + 1) * CHUNK_CLUSTERS).min(end);
            let part = &mut out[(c - first) as usize..(chunk_end - first) as usize];
            if part.iter().any(Option::is_none) && !self.icache.lock().fill_run(c, generation, part)
            {
                let Some(slots) = self.fill_chunk(chunk, generation, nowait)? else {
                    return Ok(false);
                };
                let base = (c - chunk * CHUNK_CLUSTERS) as usize;
                for (i, o) in part.iter_mut().enumerate() {
                    if o.is_none() {
                        *o = Some(slots.get(base + i).copied().flatten().map(|s| s.1));
                    }
                }
            }
            c = chunk_end;
        }
        Ok(true)
    }

    /// Empties the index-lookup cache (after bulk index rewrites).
    pub(crate) fn clear_index_cache(&self) {
        self.icache.lock().clear();
    }

    fn resolve(&self, cluster: u64) -> EngineResult<Option<Resolved<'_>>> {
        self.resolve_one(cluster, false)?
            .ok_or_else(|| EngineError::Failed("a blocking index lookup declined".into()))
    }

    /// Where `cluster`'s data is (walking the parent chain), `Some(None)`
    /// if it reads as zeros; `None` only with `nowait`.
    fn resolve_one(
        &self,
        cluster: u64,
        nowait: bool,
    ) -> EngineResult<Option<Option<Resolved<'_>>>> {
        let mut vol: &Volume = self;
        let mut generation = self.head_gen.load(Ordering::Acquire);
        loop {
            let Some(m) = vol.lookup_own(cluster, generation, nowait)? else {
                return Ok(None);
            };
            match m {
                Some(Mapping::Data(loc)) => return Ok(Some(Some(Resolved { owner: vol, loc }))),
                Some(Mapping::Unmapped) => return Ok(Some(None)),
                None => match &vol.parent {
                    Some((p, pg)) => {
                        vol = p;
                        generation = *pg;
                    }
                    None => return Ok(Some(None)),
                },
            }
        }
    }

    /// [`Volume::resolve`] for the `out.len()` (at most [`CHUNK_CLUSTERS`])
    /// clusters from `first`, walking the parent chain only for clusters
    /// this volume has no entry for. `Ok(false)` only with `nowait`.
    /// Allocates nothing (its scratch space is on the stack).
    fn resolve_run<'a>(
        &'a self,
        first: u64,
        out: &mut [Option<Resolved<'a>>],
        nowait: bool,
    ) -> EngineResult<bool> {
        const MAX: usize = CHUNK_CLUSTERS as usize;
        let n = out.len();
        if n > MAX {
            return Err(EngineError::Failed(format!(
                "resolving {n} clusters at once"
            )));
        }
        out.fill(None);
        let mut maps: [Option<Option<Mapping>>; MAX] = [None; MAX];
        let mut pending = [false; MAX];
        pending[..n].fill(true);
        // Indexes still unanswered are all within `lo..hi`.
        let (mut lo, mut hi) = (0usize, n);
        let mut vol: &Volume = self;
        let mut generation = self.head_gen.load(Ordering::Acquire);
        while lo < hi {
            let part = &mut maps[lo..hi];
            part.fill(None);
            if !vol.lookup_run(first + lo as u64, part, generation, nowait)? {
                return Ok(false);
            }
            let (mut next_lo, mut next_hi) = (usize::MAX, 0);
            for i in lo..hi {
                if !pending[i] {
                    continue;
                }
                match maps[i].flatten() {
                    Some(Mapping::Data(loc)) => out[i] = Some(Resolved { owner: vol, loc }),
                    Some(Mapping::Unmapped) => {}
                    None => {
                        next_lo = next_lo.min(i);
                        next_hi = i + 1;
                        continue;
                    }
                }
                pending[i] = false;
            }
            match &vol.parent {
                Some((p, pg)) if next_hi > 0 => {
                    vol = p;
                    generation = *pg;
                    (lo, hi) = (next_lo, next_hi);
                }
                _ => break,
            }
        }
        Ok(true)
    }

    /// An open handle on container `seq`: the flash file, or, once that was
    /// evicted, the object's file in a local-directory backend (the same
    /// immutable bytes, often the same inode). Cached in `files`.
    fn container_file(&self, seq: u64) -> Option<Arc<File>> {
        if let Some(f) = self.files.lock().get(&seq) {
            return Some(f.clone());
        }
        let f = match File::open(self.container_path(seq)) {
            Ok(f) => f,
            Err(_) if self.shared.cfg.local_backend_shortcuts => {
                let key = backend::container_key(self.id, seq);
                File::open(self.shared.backend.local_path(&key)?).ok()?
            }
            Err(_) => return None,
        };
        let f = Arc::new(f);
        let mut files = self.files.lock();
        if files.len() >= 256 {
            files.clear();
        }
        files.insert(seq, f.clone());
        Some(f)
    }

    /// Reads one cluster at `loc` (owned by `self`) into `out`, checking its
    /// checksum on every path.
    fn read_location(&self, loc: &Location, lba: u64, out: &mut [u8]) -> EngineResult<()> {
        let out = &mut out[..CLUSTER_SIZE];
        if !plain(loc) {
            return Err(EngineError::Integrity {
                what: format!("cluster in container {:016x}", loc.container),
                detail: format!(
                    "unsupported stored length {} / flags {}",
                    loc.len, loc.flags
                ),
                lba: Some(lba),
            });
        }
        let mut local_bad = false;
        if let Some(f) = self.container_file(loc.container)
            && f.read_exact_at(out, slot_offset(loc.slot)).is_ok()
        {
            if checksum::crc32c(out) == loc.crc {
                self.counters.local_reads.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
            local_bad = true;
        }
        let loc_id = self.cache_loc_id(loc);
        if self.shared.cache.lookup(loc.hash, loc_id, loc.crc, out) {
            return Ok(());
        }
        let key = backend::container_key(self.id, loc.container);
        let off = slot_offset(loc.slot);
        let data = match self
            .shared
            .backend
            .get_range(&key, off..off + CLUSTER_SIZE_U64)
        {
            Ok(d) => d,
            Err(EngineError::ObjectNotFound(k)) if local_bad => {
                return Err(EngineError::Integrity {
                    what: format!("cluster in local container {:016x}", loc.container),
                    detail: format!("checksum mismatch and {k} is not on the backend"),
                    lba: Some(lba),
                });
            }
            Err(e) => return Err(e),
        };
        self.counters.backend_reads.fetch_add(1, Ordering::Relaxed);
        if checksum::crc32c(&data) != loc.crc {
            return Err(EngineError::Integrity {
                what: format!("cluster {key} slot {}", loc.slot),
                detail: "crc32c mismatch on data from the backend".into(),
                lba: Some(lba),
            });
        }
        out.copy_from_slice(&data);
        self.shared.cache.insert(loc.hash, loc_id, out);
        Ok(())
    }

    /// Reads the current contents of `cluster` into `out` (zeros if
    /// unmapped). Retries once if the location moved under it (scrub).
    fn read_cluster(&self, cluster: u64, out: &mut [u8]) -> EngineResult<()> {
        let lba = self.cluster_lba(cluster);
        for attempt in 0..2 {
            match self.resolve(cluster)? {
                None => {
                    out[..CLUSTER_SIZE].fill(0);
                    return Ok(());
                }
                Some(r) => match r.owner.read_location(&r.loc, lba, out) {
                    Err(EngineError::ObjectNotFound(_)) if attempt == 0 => continue,
                    other => return other,
                },
            }
        }
        Err(EngineError::Integrity {
            what: format!("cluster {cluster} of {}", self.name),
            detail: "its container is missing locally and on the backend".into(),
            lba: Some(lba),
        })
    }

    fn cluster_lba(&self, cluster: u64) -> u64 {
        cluster * CLUSTER_SIZE_U64 / u64::from(self.block_size)
    }

    /// Reads one resolved cluster. Blocking: every tier, re-resolving once
    /// if the location vanished (scrub). `nowait`: only from a local
    /// container whose pages are cached; `Ok(false)` otherwise.
    fn read_resolved(
        &self,
        cluster: u64,
        r: Resolved<'_>,
        out: &mut [u8],
        nowait: bool,
    ) -> EngineResult<bool> {
        let out = &mut out[..CLUSTER_SIZE];
        if nowait {
            return Ok(plain(&r.loc)
                && r.owner
                    .read_local_nowait(r.loc.container, slot_offset(r.loc.slot), out)
                && checksum::crc32c(out) == r.loc.crc);
        }
        match r
            .owner
            .read_location(&r.loc, self.cluster_lba(cluster), out)
        {
            Err(EngineError::ObjectNotFound(_)) => self.read_cluster(cluster, out)?,
            other => other?,
        }
        Ok(true)
    }

    /// `preadv2(RWF_NOWAIT)` of a whole span from a local container that is
    /// already open: false if the file is not open here, any page is not
    /// in the page cache, or anything else goes wrong (the blocking path
    /// then handles it).
    fn read_local_nowait(&self, container: u64, offset: u64, out: &mut [u8]) -> bool {
        let Some(f) = self.files.lock().get(&container).cloned() else {
            return false;
        };
        // A miss, a short file or an error: the blocking path sorts it out.
        depot_block::pread_nowait(&f, out, offset).unwrap_or(false)
    }

    /// Reads `k` clusters that sit in consecutive slots of one container of
    /// `owner` with one positioned read straight into `span`, then checks
    /// each checksum; a cluster that fails (or a failed read) goes through
    /// [`Volume::read_resolved`] (blocking) or declines (`nowait`).
    fn read_run(
        &self,
        first: u64,
        run: &[Option<Resolved<'_>>],
        span: &mut [u8],
        nowait: bool,
    ) -> EngineResult<bool> {
        let Some(Some(r0)) = run.first().copied() else {
            return Ok(false);
        };
        let off = slot_offset(r0.loc.slot);
        let ok = if nowait {
            r0.owner.read_local_nowait(r0.loc.container, off, span)
        } else {
            r0.owner
                .container_file(r0.loc.container)
                .is_some_and(|f| f.read_exact_at(span, off).is_ok())
        };
        if !ok && nowait {
            return Ok(false);
        }
        // Not on flash: one ranged GET for the whole run (unless its first
        // cluster is in the read cache) instead of one per cluster.
        let fetched = !ok && run.len() > 1 && r0.owner.fetch_run(&r0.loc, span);
        let mut good = 0u64;
        for (i, (r, chunk)) in run
            .iter()
            .zip(span.chunks_exact_mut(CLUSTER_SIZE))
            .enumerate()
        {
            let Some(r) = *r else {
                return Ok(false);
            };
            if (ok || fetched) && checksum::crc32c(chunk) == r.loc.crc {
                good += 1;
                if fetched {
                    r0.owner
                        .shared
                        .cache
                        .insert(r.loc.hash, r0.owner.cache_loc_id(&r.loc), chunk);
                }
            } else if nowait || !self.read_resolved(first + i as u64, r, chunk, false)? {
                return Ok(false);
            }
        }
        let counter = if ok {
            &r0.owner.counters.local_reads
        } else {
            &r0.owner.counters.backend_reads
        };
        counter.fetch_add(good, Ordering::Relaxed);
        Ok(true)
    }

    /// Read-cache location id of a cluster of this volume (dedup stats).
    fn cache_loc_id(&self, loc: &Location) -> u64 {
        self.id ^ loc.container.rotate_left(20) ^ u64::from(loc.slot)
    }

    /// Fills `span` (whole clusters from `first`'s slot on) with one ranged
    /// GET of this volume's container. False, with nothing to trust in
    /// `span`, if the first cluster is in the read cache (the per-cluster
    /// path serves it cheaply) or the GET fails; checksums are the
    /// caller's.
    fn fetch_run(&self, first: &Location, span: &mut [u8]) -> bool {
        let head = &mut span[..CLUSTER_SIZE];
        if self
            .shared
            .cache
            .lookup(first.hash, self.cache_loc_id(first), first.crc, head)
        {
            return false;
        }
        let key = backend::container_key(self.id, first.container);
        let off = slot_offset(first.slot);
        match self
            .shared
            .backend
            .get_range(&key, off..off + span.len() as u64)
        {
            Ok(d) if d.len() == span.len() => {
                span.copy_from_slice(&d);
                true
            }
            _ => false,
        }
    }

    /// Reads `buf.len()` bytes at byte offset `off`. Clusters are resolved
    /// up to a chunk (256) at a time; runs of whole clusters in consecutive
    /// slots of one container are read with one positioned read into `buf`.
    /// With `nowait`, returns `Ok(false)` as soon as anything would wait
    /// (`buf` then holds garbage). `log`, if given, receives the locations
    /// of fragmented batches (relocation on read, `defrag`).
    fn read_span(
        &self,
        off: u64,
        buf: &mut [u8],
        nowait: bool,
        mut log: Option<&mut defrag::ReadLog>,
    ) -> EngineResult<bool> {
        let len = buf.len() as u64;
        if len == 0 {
            return Ok(true);
        }
        let end = off + len;
        let first = off / CLUSTER_SIZE_U64;
        let last = (end - 1) / CLUSTER_SIZE_U64;
        let mut c = first;
        let mut total_runs = 0usize;
        while c <= last {
            let n = (last - c + 1).min(CHUNK_CLUSTERS) as usize;
            let mut runs = 0usize;
            // Resolutions of this batch, on the stack: no read allocates,
            // and a one-cluster read (the common small read) initialises
            // no batch array and skips the run machinery.
            let one: [Option<Resolved<'_>>; 1];
            let mut batch: [Option<Resolved<'_>>; CHUNK_CLUSTERS as usize];
            let res: &[Option<Resolved<'_>>] = if n == 1 {
                let Some(r) = self.resolve_one(c, nowait)? else {
                    return Ok(false);
                };
                one = [r];
                &one
            } else {
                batch = [None; CHUNK_CLUSTERS as usize];
                if !self.resolve_run(c, &mut batch[..n], nowait)? {
                    return Ok(false);
                }
                &batch[..n]
            };
            let mut i = 0;
            while i < n {
                let cl = c + i as u64;
                let cs = cl * CLUSTER_SIZE_U64;
                let lo = cs.max(off);
                let hi = (cs + CLUSTER_SIZE_U64).min(end);
                let (dlo, dhi) = ((lo - off) as usize, (hi - off) as usize);
                let whole = lo == cs && hi == cs + CLUSTER_SIZE_U64;
                match res[i] {
                    None => {
                        buf[dlo..dhi].fill(0);
                        i += 1;
                    }
                    Some(r) if !whole => {
                        let mut tmp = [0u8; CLUSTER_SIZE];
                        if !self.read_resolved(cl, r, &mut tmp, nowait)? {
                            return Ok(false);
                        }
                        let from = (lo - cs) as usize;
                        buf[dlo..dhi].copy_from_slice(&tmp[from..from + (dhi - dlo)]);
                        runs += 1;
                        i += 1;
                    }
                    Some(r) => {
                        let mut k = 1usize;
                        while i + k < n && (cl + k as u64 + 1) * CLUSTER_SIZE_U64 <= end {
                            match res[i + k] {
                                Some(n2)
                                    if std::ptr::eq(n2.owner, r.owner)
                                        && plain(&n2.loc)
                                        && n2.loc.container == r.loc.container
                                        && u64::from(n2.loc.slot)
                                            == u64::from(r.loc.slot) + k as u64 =>
                                {
                                    k += 1;
                                }
                                _ => break,
                            }
                        }
                        let span = &mut buf[dlo..dlo + k * CLUSTER_SIZE];
                        let done = if plain(&r.loc) {
                            self.read_run(cl, &res[i..i + k], span, nowait)?
                        } else {
                            self.read_resolved(cl, r, span, nowait)?
                        };
                        if !done {
                            return Ok(false);
                        }
                        runs += 1;
                        i += k;
                    }
                }
            }
            if let Some(log) = log.as_deref_mut() {
                log.note(self, c, res, runs, |cl| {
                    cl * CLUSTER_SIZE_U64 >= off && (cl + 1) * CLUSTER_SIZE_U64 <= end
                });
            }
            total_runs += runs;
            c += n as u64;
        }
        self.counters
            .read_runs
            .fetch_add(total_runs as u64, Ordering::Relaxed);
        Ok(true)
    }

    fn read_bytes(&self, off: u64, buf: &mut [u8]) -> EngineResult<()> {
        self.counters.reads.fetch_add(1, Ordering::Relaxed);
        let mut attempt = 0;
        loop {
            // A checksum failure while an in-place rewrite ran may be this
            // read seeing new bytes under an old mapping (or half of them):
            // read again. Without a rewrite in between it is real. After a
            // few tries the read excludes writers of its clusters.
            let seen = self.rewrites.load(Ordering::SeqCst);
            let mut log = defrag::ReadLog::for_read(buf.len());
            let _range = (attempt >= 4 && !buf.is_empty()).then(|| {
                let end = off + buf.len() as u64;
                self.ranges
                    .lock(off / CLUSTER_SIZE_U64, (end - 1) / CLUSTER_SIZE_U64)
            });
            match self.read_span(off, buf, false, log.as_mut()) {
                Ok(true) => {
                    drop(_range);
                    if let Some(log) = log {
                        self.relocate(off, buf, log);
                    }
                    return Ok(());
                }
                Ok(false) => return Err(EngineError::Failed("blocking read declined".into())),
                Err(EngineError::Integrity { .. })
                    if attempt < 5
                        && (seen % 2 == 1 || self.rewrites.load(Ordering::SeqCst) != seen) =>
                {
                    attempt += 1;
                    std::thread::yield_now();
                }
                Err(e) => return Err(e),
            }
        }
    }

    // ------------------------------------------------------------------ write

    fn throttle(&self) {
        let cap = self.shared.cfg.write_buffer_bytes;
        if self.unshipped.load(Ordering::Relaxed) <= cap {
            return;
        }
        self.counters.throttled.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let mut g = self.throttle_lock.lock();
        while self.unshipped.load(Ordering::Relaxed) > cap && !self.closed.load(Ordering::Relaxed) {
            self.shared.wake_shipper();
            self.throttle_cv.wait_for(&mut g, Duration::from_millis(50));
        }
        drop(g);
        let waited = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.counters
            .throttle_us
            .fetch_add(waited, Ordering::Relaxed);
    }

    fn ensure_tlog(&self, w: &mut Writer) -> EngineResult<()> {
        if w.tlog.is_some() {
            return Ok(());
        }
        let seq = w.next_tlog;
        let hdr = TlogHeader {
            version: TLOG_VERSION,
            flags: 0,
            volume_id: self.id,
            seq,
            generation: w.generation,
        };
        let mut opts = OpenOptions::new();
        opts.create(true).truncate(true);
        let file = create_segment_file(&opts, &self.tlog_path(seq), &hdr.encode(), "tlog")?;
        w.next_tlog += 1;
        w.dir_dirty = true;
        w.tlog = Some(OpenTlog {
            opened: Instant::now(),
            seq,
            generation: w.generation,
            file: Arc::new(file),
            on_file: 0,
            buf: Vec::with_capacity(TLOG_BUF_FLUSH + TLOG_RECORD_SIZE),
            containers: Vec::new(),
        });
        Ok(())
    }

    fn ensure_container(&self, w: &mut Writer) -> EngineResult<()> {
        self.ensure_tlog(w)?;
        if w.container.is_some() {
            return Ok(());
        }
        let seq = w.next_container;
        let hdr = ContainerHeader {
            version: CONTAINER_VERSION,
            flags: 0,
            volume_id: self.id,
            seq,
        };
        // `create_new`: a container name is never reused, and an existing
        // file may be a shipped object's hard link that must not be
        // truncated.
        let mut opts = OpenOptions::new();
        opts.create_new(true);
        let file =
            create_segment_file(&opts, &self.container_path(seq), &hdr.encode(), "container")?;
        w.next_container += 1;
        w.dir_dirty = true;
        // Segment sizes count the header; so does the write-buffer gauge.
        self.unshipped
            .fetch_add(CLUSTER_SIZE_U64, Ordering::Relaxed);
        let file = Arc::new(file);
        self.files.lock().insert(seq, file.clone());
        w.mutable.insert(seq, file.clone());
        if let Some(t) = w.tlog.as_mut() {
            t.containers.push(seq);
        }
        w.container = Some(OpenContainer {
            seq,
            file,
            next_slot: 0,
            opened: Instant::now(),
        });
        Ok(())
    }

    /// Closes the open container and tlog into a segment for shipping.
    fn seal(&self, w: &mut Writer) -> EngineResult<()> {
        if let Some(t) = w.tlog.as_mut() {
            t.flush_buf()?;
        }
        let Some(t) = w.tlog.take() else {
            return Ok(());
        };
        let bytes = w.container.as_ref().map_or(0, |c| slot_offset(c.next_slot));
        if let Some(c) = w.container.take() {
            w.unsynced.push(c.file);
        }
        w.unsynced.push(t.file.clone());
        w.segments.push_back(Segment {
            tlog: t.seq,
            generation: t.generation,
            containers: t.containers,
            bytes,
            opened: t.opened,
            tlog_file: Some(t.file),
            records: t.on_file,
        });
        self.shared.wake_shipper();
        Ok(())
    }

    /// Appends whole clusters (contiguous bytes) starting at `cluster`;
    /// `sums` holds each cluster's (crc32c, xxh3-128), computed by
    /// [`cluster_sums`] before the writer lock was taken.
    fn append(
        &self,
        w: &mut Writer,
        cluster: u64,
        data: &[u8],
        sums: &[(u32, u128)],
    ) -> EngineResult<()> {
        self.append_parts(w, cluster, &[data], sums)
    }

    /// [`Volume::append`] of the concatenation of `parts`, written with one
    /// vectored write per container it lands in.
    fn append_parts(
        &self,
        w: &mut Writer,
        mut cluster: u64,
        parts: &[&[u8]],
        sums: &[(u32, u128)],
    ) -> EngineResult<()> {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        if sums.len() * CLUSTER_SIZE != total {
            return Err(EngineError::Failed(
                "cluster checksums do not match the data".into(),
            ));
        }
        let slots = self.shared.cfg.container_slots();
        let (mut rest, mut head): (&[&[u8]], &[u8]) = (parts, &[]);
        let mut sums = sums;
        while !sums.is_empty() {
            self.ensure_container(w)?;
            let generation = w.generation;
            let Some(oc) = w.container.as_mut() else {
                return Err(EngineError::Failed("no open container".into()));
            };
            let room = (slots - oc.next_slot) as usize;
            let k = room.min(sums.len());
            let now = take_front(&mut rest, &mut head, k * CLUSTER_SIZE);
            let (now_sums, later_sums) = sums.split_at(k);
            let first_slot = oc.next_slot;
            let cseq = oc.seq;
            let r = write_all_parts_at(&oc.file, &now, slot_offset(first_slot));
            if let Err(e) = r {
                return Err(EngineError::io("appending to a container", e));
            }
            oc.next_slot += k as u32;
            // Start writeback of each completed WRITEBACK_STEP of the
            // container now, so syncs find little left to write and dirty
            // pages never pile up (the data is not durable until a sync).
            let (before, after) = (slot_offset(first_slot), slot_offset(oc.next_slot));
            if before / WRITEBACK_STEP != after / WRITEBACK_STEP {
                let end = after / WRITEBACK_STEP * WRITEBACK_STEP;
                range_hint(
                    &oc.file,
                    end.saturating_sub(WRITEBACK_STEP),
                    WRITEBACK_STEP,
                    RangeHint::StartWriteback,
                );
            }
            let full = oc.next_slot >= slots;
            let Some(t) = w.tlog.as_mut() else {
                return Err(EngineError::Failed("no open tlog".into()));
            };
            let mut mem = self.memtable.write();
            let mut rec = [0u8; TLOG_RECORD_SIZE];
            for (i, &(crc, hash)) in now_sums.iter().enumerate() {
                let loc = Location {
                    container: cseq,
                    slot: first_slot + i as u32,
                    len: CLUSTER_SIZE as u32,
                    flags: 0,
                    crc,
                    hash,
                };
                let m = Mapping::Data(loc);
                TlogRecord {
                    cluster,
                    mapping: m,
                }
                .encode(&mut rec);
                t.buf.extend_from_slice(&rec);
                w.write_seq += 1;
                if let Some(Mapping::Data(old)) = mem.active.insert((cluster, generation), m)
                    && w.dead.len() < DEAD_SLOTS_MAX
                {
                    w.dead.push((old.container, old.slot));
                }
                cluster += 1;
            }
            drop(mem);
            if t.buf.len() >= TLOG_BUF_FLUSH {
                t.flush_buf()?;
            }
            self.unshipped
                .fetch_add((k * CLUSTER_SIZE) as u64, Ordering::Relaxed);
            if full {
                self.seal(w)?;
            }
            sums = later_sums;
        }
        Ok(())
    }

    /// Where the `n` clusters from `first` could be rewritten in place: the
    /// first slot, if their own head mappings are `n` consecutive plain
    /// slots of one container. Looked up before the writer lock; the
    /// caller's range lock keeps the mappings until [`Volume::rewrite`]
    /// re-checks the slots under it. `None` with `nowait` also when the
    /// lookup would block.
    fn rewrite_target(&self, first: u64, n: usize, nowait: bool) -> EngineResult<Option<Location>> {
        if !(REWRITE_MIN_CLUSTERS..=CHUNK_CLUSTERS as usize).contains(&n)
            || self.template.load(Ordering::Relaxed)
        {
            return Ok(None);
        }
        let mut maps: [Option<Option<Mapping>>; CHUNK_CLUSTERS as usize] =
            [None; CHUNK_CLUSTERS as usize];
        let generation = self.head_gen.load(Ordering::Acquire);
        if !self.lookup_run(first, &mut maps[..n], generation, nowait)? {
            return Ok(None);
        }
        let Some(Some(Mapping::Data(l0))) = maps[0] else {
            return Ok(None);
        };
        let contiguous = maps[..n].iter().enumerate().all(|(i, m)| {
            matches!(m, Some(Some(Mapping::Data(l)))
                if plain(l)
                    && l.container == l0.container
                    && u64::from(l.slot) == u64::from(l0.slot) + i as u64)
        });
        Ok(contiguous.then_some(l0))
    }

    /// Overwrites whole clusters from `first` in their own slots, starting
    /// at `at` (from [`Volume::rewrite_target`]), if those slots are still
    /// mutable; `Ok(false)`: nothing was written, append instead.
    ///
    /// Order (module docs): the records reach the tlog file of the
    /// container's segment first, then the data its slots, then the
    /// memtable; a kill can only leave a record without its data, which
    /// replay drops. A failure after the first write fails the volume.
    fn rewrite(
        &self,
        w: &mut Writer,
        first: u64,
        at: Location,
        data: &[u8],
        sums: &[(u32, u128)],
    ) -> EngineResult<bool> {
        let n = sums.len();
        if n == 0
            || n * CLUSTER_SIZE != data.len()
            || (at.container, at.slot) < w.frozen
            || w.generation != self.head_gen.load(Ordering::Acquire)
        {
            return Ok(false);
        }
        let Some(file) = w.mutable.get(&at.container).cloned() else {
            return Ok(false);
        };
        let generation = w.generation;
        let mut rec = [0u8; TLOG_RECORD_SIZE];
        let mut records = Vec::with_capacity(n * TLOG_RECORD_SIZE);
        for (i, &(crc, hash)) in sums.iter().enumerate() {
            TlogRecord {
                cluster: first + i as u64,
                mapping: Mapping::Data(Location {
                    slot: at.slot + i as u32,
                    crc,
                    hash,
                    ..at
                }),
            }
            .encode(&mut rec);
            records.extend_from_slice(&rec);
        }
        let in_open = w
            .tlog
            .as_ref()
            .is_some_and(|t| t.containers.contains(&at.container));
        let r = if in_open {
            let Some(t) = w.tlog.as_mut() else {
                return Ok(false);
            };
            t.buf.extend_from_slice(&records);
            t.flush_buf()
        } else {
            let Some(seg) = w
                .segments
                .iter_mut()
                .find(|s| s.containers.contains(&at.container))
            else {
                return Ok(false);
            };
            let Some(tf) = seg.tlog_file.clone() else {
                return Ok(false);
            };
            let off = TLOG_HEADER_SIZE as u64 + seg.records * TLOG_RECORD_SIZE as u64;
            seg.records += n as u64;
            w.touch(&tf);
            w.touch(&file);
            tf.write_all_at(&records, off)
                .map_err(|e| EngineError::io("appending in-place records to a tlog", e))
        };
        self.rewrites.fetch_add(1, Ordering::SeqCst);
        let r = r.and_then(|()| {
            file.write_all_at(data, slot_offset(at.slot))
                .map_err(|e| EngineError::io("rewriting container slots", e))
        });
        if let Err(e) = r {
            self.rewrites.fetch_add(1, Ordering::SeqCst);
            *self.failed.lock() = Some(e.to_string());
            return Err(e);
        }
        {
            let mut mem = self.memtable.write();
            for (i, &(crc, hash)) in sums.iter().enumerate() {
                let m = Mapping::Data(Location {
                    slot: at.slot + i as u32,
                    crc,
                    hash,
                    ..at
                });
                w.write_seq += 1;
                mem.active.insert((first + i as u64, generation), m);
            }
        }
        self.rewrites.fetch_add(1, Ordering::SeqCst);
        self.counters
            .rewritten
            .fetch_add(n as u64, Ordering::Relaxed);
        Ok(true)
    }

    fn append_unmaps(&self, w: &mut Writer, clusters: &[u64]) -> EngineResult<()> {
        self.ensure_tlog(w)?;
        let generation = w.generation;
        let Some(t) = w.tlog.as_mut() else {
            return Err(EngineError::Failed("no open tlog".into()));
        };
        let mut mem = self.memtable.write();
        let mut rec = [0u8; TLOG_RECORD_SIZE];
        for &c in clusters {
            TlogRecord {
                cluster: c,
                mapping: Mapping::Unmapped,
            }
            .encode(&mut rec);
            t.buf.extend_from_slice(&rec);
            w.write_seq += 1;
            mem.active.insert((c, generation), Mapping::Unmapped);
        }
        drop(mem);
        if t.buf.len() >= TLOG_BUF_FLUSH {
            t.flush_buf()?;
        }
        Ok(())
    }

    fn write_bytes(&self, off: u64, data: &[u8], fua: bool) -> EngineResult<()> {
        self.write_pieces(off, &[data], fua)
    }

    /// Writes the concatenation of `pieces` at byte `off`. It is cut at
    /// cluster-aligned piece boundaries into runs of at least
    /// [`VECTORED_RUN_MIN`] bytes; a run that is one piece is written from
    /// the caller's buffer, only runs of several (small or unaligned)
    /// pieces are gathered. The runs go in with one [`Volume::write_runs`].
    fn write_pieces(&self, off: u64, pieces: &[&[u8]], fua: bool) -> EngineResult<()> {
        self.check_writable()?;
        self.counters.writes.fetch_add(1, Ordering::Relaxed);
        let mut owned: Vec<Cow<'_, [u8]>> = Vec::new();
        let (mut start, mut run_len, mut pos) = (0, 0usize, off);
        for (i, p) in pieces.iter().enumerate() {
            run_len += p.len();
            pos += p.len() as u64;
            let last = i + 1 == pieces.len();
            if last || (pos.is_multiple_of(CLUSTER_SIZE_U64) && run_len >= VECTORED_RUN_MIN) {
                let run = match &pieces[start..=i] {
                    [one] => Cow::Borrowed(*one),
                    several => Cow::Owned(several.concat()),
                };
                if !run.is_empty() {
                    owned.push(run);
                }
                (start, run_len) = (i + 1, 0);
            }
        }
        let runs: Vec<&[u8]> = owned.iter().map(|r| &**r).collect();
        if runs.is_empty() {
            return if fua { self.flush_all() } else { Ok(()) };
        }
        self.write_runs(off, &runs)?;
        if fua {
            self.barrier()?;
        }
        Ok(())
    }

    /// Writes the concatenation of `runs` at byte `off` under its range
    /// lock and the writer lock, all or nothing with respect to
    /// concurrent writers; not durable. Runs are non-empty, and every
    /// boundary between two runs is cluster-aligned, so only the first run
    /// can start inside a cluster and only the last can end inside one.
    fn write_runs(&self, off: u64, runs: &[&[u8]]) -> EngineResult<()> {
        let len: u64 = runs.iter().map(|r| r.len() as u64).sum();
        let (Some(first_run), Some(last_run)) = (runs.first(), runs.last()) else {
            return Ok(());
        };
        if len == 0 {
            return Ok(());
        }
        self.throttle();
        let end = off + len;
        let first = off / CLUSTER_SIZE_U64;
        let last = (end - 1) / CLUSTER_SIZE_U64;
        let _range = self.ranges.lock(first, last);
        // Read-modify-write edges, before the writer lock.
        let mut head = [0u8; CLUSTER_SIZE];
        let mut tail = [0u8; CLUSTER_SIZE];
        let head_partial =
            !off.is_multiple_of(CLUSTER_SIZE_U64) || (first == last && len < CLUSTER_SIZE_U64);
        let tail_partial = last != first && !end.is_multiple_of(CLUSTER_SIZE_U64);
        if head_partial {
            self.read_cluster(first, &mut head)?;
            let from = (off - first * CLUSTER_SIZE_U64) as usize;
            let n = (CLUSTER_SIZE - from).min(len as usize);
            let src = first_run
                .get(..n)
                .ok_or_else(|| unaligned_runs(off, runs))?;
            head[from..from + n].copy_from_slice(src);
        }
        if tail_partial {
            self.read_cluster(last, &mut tail)?;
            let n = (end - last * CLUSTER_SIZE_U64) as usize;
            let src = last_run
                .len()
                .checked_sub(n)
                .and_then(|at| last_run.get(at..))
                .ok_or_else(|| unaligned_runs(off, runs))?;
            tail[..n].copy_from_slice(src);
        }
        // The whole clusters [c, full_end), as (first cluster, bytes) per
        // run.
        let c = if head_partial { first + 1 } else { first };
        let full_end = if tail_partial { last } else { last + 1 };
        let (lo, hi) = (c * CLUSTER_SIZE_U64, full_end * CLUSTER_SIZE_U64);
        let mut segments = Vec::with_capacity(runs.len());
        let mut at = off;
        for r in runs {
            let (a, b) = (at.max(lo), (at + r.len() as u64).min(hi));
            if a < b {
                let bytes = &r[(a - at) as usize..(b - at) as usize];
                if !a.is_multiple_of(CLUSTER_SIZE_U64) || !bytes.len().is_multiple_of(CLUSTER_SIZE)
                {
                    return Err(unaligned_runs(off, runs));
                }
                segments.push((a / CLUSTER_SIZE_U64, bytes));
            }
            at += r.len() as u64;
        }
        // Checksums and content hashes are computed before the writer lock,
        // so concurrent writers hash in parallel; each piece of up to a
        // chunk gets the slot it could be rewritten in (looked up before
        // the writer lock too).
        let edge = |partial: bool, b: &[u8]| if partial { cluster_sums(b) } else { Vec::new() };
        let head_sums = edge(head_partial, &head);
        let tail_sums = edge(tail_partial, &tail);
        let piece = CHUNK_CLUSTERS as usize * CLUSTER_SIZE;
        let mut work = Vec::new();
        for &(c0, bytes) in &segments {
            for (i, part) in bytes.chunks(piece).enumerate() {
                let at = c0 + (i * CHUNK_CLUSTERS as usize) as u64;
                let sums = cluster_sums(part);
                let target = self.rewrite_target(at, sums.len(), false)?;
                work.push((at, part, sums, target));
            }
        }
        let mut w = self.writer.lock();
        if head_partial {
            self.append(&mut w, first, &head, &head_sums)?;
        }
        // Consecutive pieces that are not rewritten in place go in as one
        // append (one write), in order with the rewrites.
        let (mut from, mut parts, mut part_sums) = (0u64, Vec::<&[u8]>::new(), Vec::new());
        for (at, bytes, sums, target) in &work {
            let contiguous = from + part_sums.len() as u64 == *at;
            if (target.is_some() || !contiguous) && !part_sums.is_empty() {
                self.append_parts(&mut w, from, &parts, &part_sums)?;
                parts.clear();
                part_sums.clear();
            }
            if let Some(loc) = target
                && self.rewrite(&mut w, *at, *loc, bytes, sums)?
            {
                continue;
            }
            if part_sums.is_empty() {
                from = *at;
            }
            parts.push(bytes);
            part_sums.extend_from_slice(sums);
        }
        if !part_sums.is_empty() {
            self.append_parts(&mut w, from, &parts, &part_sums)?;
        }
        if tail_partial {
            self.append(&mut w, last, &tail, &tail_sums)?;
        }
        Ok(())
    }

    /// See `try_write_nowait` in the `BlockDevice` impl.
    fn try_append_nowait(&self, off: u64, data: &[u8], len: u64) -> EngineResult<bool> {
        if data.is_empty()
            || len > NOWAIT_WRITE_MAX
            || !off.is_multiple_of(CLUSTER_SIZE_U64)
            || !len.is_multiple_of(CLUSTER_SIZE_U64)
            || self.closed.load(Ordering::Relaxed)
            || self.template.load(Ordering::Relaxed)
            || self.unshipped.load(Ordering::Relaxed) + len > self.shared.cfg.write_buffer_bytes
        {
            return Ok(false);
        }
        match self.failed.try_lock() {
            Some(f) if f.is_none() => {}
            _ => return Ok(false),
        }
        let first = off / CLUSTER_SIZE_U64;
        let n = len / CLUSTER_SIZE_U64;
        let Some(range) = self.ranges.try_lock(first, first + n - 1) else {
            return Ok(false);
        };
        let sums = cluster_sums(data);
        let target = self.rewrite_target(first, n as usize, true)?;
        let Some(mut w) = self.writer.try_lock() else {
            return Ok(false);
        };
        if let Some(loc) = target
            && self.rewrite(&mut w, first, loc, data, &sums)?
        {
            drop(w);
            drop(range);
            self.counters.writes.fetch_add(1, Ordering::Relaxed);
            return Ok(true);
        }
        let slots = self.shared.cfg.container_slots();
        let room = w
            .container
            .as_ref()
            .map_or(0, |c| u64::from(slots.saturating_sub(c.next_slot)));
        // Strictly more room than needed: filling it would seal inline.
        if w.tlog.is_none() || room <= n {
            return Ok(false);
        }
        self.append(&mut w, first, data, &sums)?;
        drop(w);
        drop(range);
        self.counters.writes.fetch_add(1, Ordering::Relaxed);
        Ok(true)
    }

    // ------------------------------------------------------------------- sync

    /// Grabs a sync's work under the writer lock. It commits the index when
    /// asked to (hard barriers, rollback, scrub) or, with
    /// [`Commit::IfDue`], when the last commit is `index_commit_interval`
    /// old or the memtable holds [`MEMTABLE_COMMIT_ENTRIES`]; and only if
    /// no commit is under way (then the caller waits for it and grabs again).
    /// Otherwise it only makes data durable.
    fn grab(&self, w: &mut Writer, commit: Commit) -> EngineResult<SyncWork> {
        if let Some(t) = w.tlog.as_mut() {
            t.flush_buf()?;
        }
        let mut files: Vec<Arc<File>> = Vec::with_capacity(w.unsynced.len() + 2);
        if let Some(c) = &w.container {
            files.push(c.file.clone());
        }
        files.append(&mut w.unsynced);
        files.append(&mut w.touched);
        if let Some(t) = &w.tlog {
            files.push(t.file.clone());
        }
        let applied = match &w.tlog {
            Some(t) => (t.seq, t.on_file),
            None => (w.next_tlog, 0),
        };
        let mut mem = self.memtable.write();
        let due = match commit {
            Commit::Skip => false,
            Commit::IfDue => {
                w.last_commit.elapsed() >= self.shared.cfg.index_commit_interval
                    || mem.active.len() >= MEMTABLE_COMMIT_ENTRIES
            }
            Commit::Force => true,
        };
        // A commit that failed left its table behind: the volume is failed
        // and nothing commits again until it is reopened.
        let commit = (due && mem.committing.is_none()).then(|| {
            let table = Arc::new(std::mem::take(&mut mem.active));
            self.memtable_hits.store(0, Ordering::Relaxed);
            mem.committing = Some(table.clone());
            let marker = Marker {
                applied,
                sealed: w
                    .segments
                    .iter()
                    .filter(|s| s.tlog_file.is_some())
                    .map(|s| (s.tlog, s.records))
                    .collect(),
                frozen: w.frozen,
            };
            (table, marker)
        });
        drop(mem);
        if commit.is_some() {
            w.last_commit = Instant::now();
        }
        let dir_sync = std::mem::take(&mut w.dir_dirty);
        Ok(SyncWork {
            files,
            commit,
            upto: w.write_seq,
            dir_sync,
            dead: std::mem::take(&mut w.dead),
        })
    }

    /// Runs grabbed work: the fdatasyncs, then (with the `syncing` flag
    /// dropped, so the next group commit can start) the index commit.
    /// Either failing fails the volume: after a failed fdatasync (EIO, or
    /// ENOSPC from delayed allocation) the kernel may have dropped dirty
    /// pages, and a failed commit leaves the memtable ahead of RocksDB;
    /// nothing can be trusted until the pool is reopened and the logs
    /// replayed.
    fn run_sync(&self, mut work: SyncWork) -> EngineResult<()> {
        let r = self.sync_data(&work);
        if r.is_ok() && !work.dead.is_empty() {
            let mut d = self.dead_clean.lock();
            work.dead.truncate(DEAD_SLOTS_MAX.saturating_sub(d.len()));
            d.append(&mut work.dead);
        }
        {
            let mut cs = self.commit.lock();
            cs.syncing = false;
            match &r {
                Ok(()) => cs.durable = cs.durable.max(work.upto),
                Err(_) => cs.committing = false,
            }
            self.commit_cv.notify_all();
        }
        if let Err(e) = r {
            return Err(self.fail(e));
        }
        self.counters.syncs.fetch_add(1, Ordering::Relaxed);
        *self.last_sync.lock() = Instant::now();
        let Some((table, marker)) = work.commit else {
            return Ok(());
        };
        let r = self.commit_table(&table, &marker);
        {
            let mut cs = self.commit.lock();
            cs.committing = false;
            if r.is_ok() {
                cs.committed = cs.committed.max(work.upto);
                self.counters.commits.fetch_add(1, Ordering::Relaxed);
            }
            self.commit_cv.notify_all();
        }
        r.map_err(|e| self.fail(e))
    }

    fn fail(&self, e: EngineError) -> EngineError {
        *self.failed.lock() = Some(e.to_string());
        e
    }

    fn sync_data(&self, work: &SyncWork) -> EngineResult<()> {
        // Containers come before tlogs in `files` except the sealed ones;
        // syncing all data before any log is not required for correctness
        // (replay verifies data crcs) but keeps torn tails rare.
        for f in &work.files {
            f.sync_data()
                .map_err(|e| EngineError::io("fdatasync of flash data", e))?;
        }
        if work.dir_sync {
            sync_dir(&self.dir.join("containers"))?;
            sync_dir(&self.dir.join("tlogs"))?;
        }
        Ok(())
    }

    /// Commits a grabbed memtable (its data is durable) with its marker.
    fn commit_table(&self, table: &MemTable, marker: &Marker) -> EngineResult<()> {
        // One entry per key, in key order.
        let entries: Vec<Entry> = table.iter().map(|(&(c, g), &m)| (c, g, m)).collect();
        {
            // The index cache is updated under the same lock as the
            // commit (see `crate::icache`).
            let _g = self.index_lock.lock();
            self.shared.index.commit(self.id, &entries, marker)?;
            self.icache.lock().apply(&entries);
        }
        // RocksDB and the index cache answer for these entries now.
        self.memtable.write().committing = None;
        Ok(())
    }

    /// Starts grabbed work's bookkeeping: called with the writer lock and
    /// `syncing` held, so no other sync sees the commit flag late.
    fn begin(&self, w: &mut Writer, commit: Commit) -> EngineResult<SyncWork> {
        match self.grab(w, commit) {
            Ok(work) => {
                if work.commit.is_some() {
                    self.commit.lock().committing = true;
                }
                Ok(work)
            }
            Err(e) => {
                self.commit.lock().syncing = false;
                self.commit_cv.notify_all();
                Err(e)
            }
        }
    }

    /// Makes every write with seq ≤ `target` durable (group commit).
    /// With `commit`, also until RocksDB has every write up to `target`.
    fn sync_to(&self, target: u64, commit: bool) -> EngineResult<()> {
        let done = |cs: &CommitState| cs.durable >= target && (!commit || cs.committed >= target);
        loop {
            self.check_ok()?;
            if done(&self.commit.lock()) {
                return Ok(());
            }
            let mut w = self.writer.lock();
            let mut cs = self.commit.lock();
            if done(&cs) {
                return Ok(());
            }
            // Wait for the group commit under way, or, with the data
            // durable already, for the index commit under way (a new one
            // cannot start before it ends).
            if cs.syncing || (commit && cs.committing && cs.durable >= target) {
                drop(w);
                self.commit_cv.wait(&mut cs);
                continue;
            }
            cs.syncing = true;
            drop(cs);
            let mode = if commit { Commit::Force } else { Commit::IfDue };
            let work = self.begin(&mut w, mode)?;
            drop(w);
            self.run_sync(work)?;
        }
    }

    /// A hard barrier (FUA, SYNCHRONIZE CACHE, shipping): every slot
    /// written so far becomes final, then everything written so far is
    /// made durable. A sync already under way may have grabbed before the
    /// freeze; its marker then still calls those slots mutable, which only
    /// widens what replay may adopt, never what it trusts.
    fn barrier(&self) -> EngineResult<()> {
        let target = {
            let mut w = self.writer.lock();
            w.freeze();
            w.write_seq
        };
        self.sync_to(target, true)
    }

    /// Sync while already holding the writer lock (admin operations); a
    /// hard barrier. [`Commit::Force`] also puts every write so far in
    /// RocksDB (rollback and scrub work on the committed index), waiting
    /// for a commit under way first; [`Commit::Skip`] leaves the index to
    /// commit on its own schedule and waits for no commit.
    fn sync_locked(&self, w: &mut Writer, commit: Commit) -> EngineResult<()> {
        self.check_ok()?;
        w.freeze();
        let mut cs = self.commit.lock();
        while cs.syncing || (commit == Commit::Force && cs.committing) {
            self.commit_cv.wait(&mut cs);
        }
        // A commit that failed meanwhile left its table behind; a forced
        // sync would then commit nothing.
        if let Some(f) = self.failed.lock().as_ref() {
            return Err(EngineError::Failed(f.clone()));
        }
        cs.syncing = true;
        drop(cs);
        let work = self.begin(w, commit)?;
        self.run_sync(work)
    }

    fn flush_all(&self) -> EngineResult<()> {
        self.barrier()
    }

    /// Reads have walked the memtable at least as many times as it has
    /// entries (and [`READ_COMMIT_MIN_HITS`]): committing it now, one
    /// RocksDB entry per key, costs about what the next as many reads
    /// would. A write-only workload never triggers this, so rewrites keep
    /// their one entry per `index_commit_interval`.
    fn read_commit_due(&self) -> bool {
        let hits = self.memtable_hits.load(Ordering::Relaxed);
        hits >= READ_COMMIT_MIN_HITS && hits >= self.memtable.read().active.len() as u64
    }

    /// Background tick: periodic sync and sealing of idle containers.
    pub(crate) fn tick(&self) -> EngineResult<()> {
        if self.closed.load(Ordering::Relaxed) || self.failed.lock().is_some() {
            return Ok(());
        }
        let cfg = &self.shared.cfg;
        let (dirty, commit_due, old_container) = {
            let w = self.writer.lock();
            let cs = self.commit.lock();
            let dirty = w.write_seq > cs.durable || !w.unsynced.is_empty() || !w.touched.is_empty();
            let commit_due = w.write_seq > cs.committed
                && (w.last_commit.elapsed() >= cfg.index_commit_interval || self.read_commit_due());
            drop(cs);
            // A tlog with only unmap records has no container but must
            // ship on the same schedule.
            let old = w
                .container
                .as_ref()
                .is_some_and(|c| c.next_slot > 0 && c.opened.elapsed() >= cfg.ship_interval)
                || w.tlog.as_ref().is_some_and(|t| {
                    (t.on_file > 0 || !t.buf.is_empty()) && t.opened.elapsed() >= cfg.ship_interval
                });
            (dirty, commit_due, old)
        };
        if (dirty || commit_due) && self.last_sync.lock().elapsed() >= cfg.sync_interval {
            // A soft sync: durable, but slots stay mutable (module docs);
            // the index is committed only when that is due.
            let target = self.writer.lock().write_seq;
            self.sync_to(target, commit_due)?;
        }
        if old_container {
            let mut w = self.writer.lock();
            self.seal(&mut w)?;
        }
        let dead = std::mem::take(&mut *self.dead_clean.lock());
        self.drop_dead_pages(dead);
        self.drop_applied_tlogs()
    }

    /// Drops superseded slots from the page cache, runs of consecutive
    /// slots at a time (`POSIX_FADV_DONTNEED`; the slots are clean, so the
    /// pages are freed at once). Only a cache hint: a racing reader that
    /// still holds the old mapping reads the bytes from disk. The point is
    /// the pages: a log-structured write takes a new page-cache page per
    /// cluster, and a page freed here is the next append's, where a page
    /// the kernel has not handed out lately can cost many times the copy
    /// (a host fault per page in a VM whose free memory is reported back
    /// to the host; docs/BENCHMARKS.md).
    fn drop_dead_pages(&self, mut dead: Vec<(u64, u32)>) {
        if dead.is_empty() {
            return;
        }
        dead.sort_unstable();
        dead.dedup();
        let mut dropped = 0u64;
        for run in dead.chunk_by(|a, b| a.0 == b.0 && a.1.checked_add(1) == Some(b.1)) {
            let (c, first) = run[0];
            let n = run.len() as u64;
            if let Some(f) = self.container_file(c) {
                range_hint(
                    &f,
                    slot_offset(first),
                    n * CLUSTER_SIZE_U64,
                    RangeHint::DropCached,
                );
                dropped += n;
            }
        }
        self.counters.dropped.fetch_add(dropped, Ordering::Relaxed);
    }

    // ------------------------------------------------------------- shipping

    /// Whether this volume has work for the shipper.
    ///
    /// A sealed segment waits until its tlog is `ship_interval` old, the
    /// write buffer is three quarters full, a snapshot follows it, or it is already
    /// frozen (an earlier incarnation's): until then its slots can still be
    /// rewritten in place, and shipping freezes them. The backend's
    /// recovery point stays bounded by `ship_interval`, as for the open
    /// container.
    pub(crate) fn wants_ship(&self) -> bool {
        if self.closed.load(Ordering::Relaxed) {
            return false;
        }
        if self.meta_dirty.load(Ordering::SeqCst) {
            return true;
        }
        let cfg = &self.shared.cfg;
        let w = self.writer.lock();
        w.segments.front().is_some_and(|s| {
            s.tlog_file.is_none()
                || s.generation != w.generation
                || s.opened.elapsed() >= cfg.ship_interval
                || self.unshipped.load(Ordering::Relaxed) > self.ship_threshold()
        })
    }

    /// Unshipped bytes above which sealed segments ship without waiting
    /// for `ship_interval`: ¾ of the write buffer, leaving a quarter for
    /// bursts before writers throttle.
    pub(crate) fn ship_threshold(&self) -> u64 {
        self.shared.cfg.write_buffer_bytes / 4 * 3
    }

    fn manifest_for_backend(&self) -> VolumeMeta {
        let w = self.writer.lock();
        let first_unshipped_gen = w.segments.front().map_or(w.generation, |s| s.generation);
        let (nc, nt) = (w.next_container, w.next_tlog);
        drop(w);
        let mut m = self.meta.lock().clone();
        m.snapshots.retain(|s| s.generation < first_unshipped_gen);
        m.next_container = m.next_container.max(nc);
        m.next_tlog = m.next_tlog.max(nt);
        m
    }

    pub(crate) fn upload_manifest(&self, forever: bool) -> EngineResult<()> {
        self.meta_dirty.store(false, Ordering::SeqCst);
        let m = self.manifest_for_backend();
        let body =
            serde_json::to_vec(&m).map_err(|e| EngineError::corrupt("manifest", e.to_string()))?;
        let r =
            self.shared
                .backend
                .put(&backend::manifest_key(self.id), Bytes::from(body), forever);
        if r.is_err() {
            self.meta_dirty.store(true, Ordering::SeqCst);
        }
        r
    }

    /// Ships the oldest sealed segment; returns whether there was one.
    pub(crate) fn ship_one(&self, forever: bool) -> EngineResult<bool> {
        let _g = self.ship_lock.lock();
        if self.closed.load(Ordering::Relaxed) {
            return Ok(false);
        }
        let seg = self.writer.lock().segments.front().cloned();
        let Some(seg) = seg else {
            if self.meta_dirty.load(Ordering::SeqCst) {
                self.upload_manifest(forever)?;
            }
            return Ok(false);
        };
        // The segment's containers and tlog are final from here on (its
        // in-place records went to that tlog), then durable. Other
        // segments stay mutable. The index is not committed for it: the
        // local tlog stays until a regular commit covers it (replay
        // applies a shipped tlog's records as they are).
        let target = {
            let mut w = self.writer.lock();
            for &c in &seg.containers {
                w.mutable.remove(&c);
            }
            if let Some(s) = w.segments.iter_mut().find(|s| s.tlog == seg.tlog) {
                s.tlog_file = None;
            }
            w.write_seq
        };
        self.sync_to(target, false)?;
        let be = &self.shared.backend;
        for &c in &seg.containers {
            // A sealed container is never written again (module docs), so a
            // local-directory backend can take it as a hard link.
            let key = backend::container_key(self.id, c);
            if self.shared.cfg.local_backend_shortcuts
                && be.put_link(&key, &self.container_path(c), forever)?
            {
                continue;
            }
            let data = std::fs::read(self.container_path(c))
                .map_err(|e| EngineError::io("reading a container to ship", e))?;
            be.put(
                &backend::container_key(self.id, c),
                Bytes::from(data),
                forever,
            )?;
        }
        let tlog = std::fs::read(self.tlog_path(seg.tlog))
            .map_err(|e| EngineError::io("reading a tlog to ship", e))?;
        be.put(
            &backend::tlog_key(self.id, seg.tlog),
            Bytes::from(tlog),
            forever,
        )?;
        let (nc, nt) = {
            let w = self.writer.lock();
            (w.next_container, w.next_tlog)
        };
        {
            let mut m = self.meta.lock();
            // Sequence numbers are never reused: a reused name would
            // overwrite a shipped object.
            m.next_container = m.next_container.max(nc);
            m.next_tlog = m.next_tlog.max(nt);
            m.shipped.tlogs.push(TlogRef {
                seq: seg.tlog,
                generation: seg.generation,
            });
            m.shipped.next_tlog = seg.tlog + 1;
        }
        {
            let mut w = self.writer.lock();
            if w.segments.front().is_some_and(|s| s.tlog == seg.tlog) {
                w.segments.pop_front();
            }
            for &c in &seg.containers {
                let len = std::fs::metadata(self.container_path(c))
                    .map(|m| m.len())
                    .unwrap_or(0);
                w.shipped_local.push_back((c, len));
                w.shipped_local_bytes += len;
            }
        }
        {
            let m = self.meta.lock();
            self.persist_meta_quiet(&m)?;
        }
        // Clears the dirty flag before it snapshots the metadata, so a
        // concurrent change (a new snapshot) re-marks it and is uploaded
        // by the next round.
        self.upload_manifest(forever)?;
        self.unshipped.fetch_sub(
            seg.bytes.min(self.unshipped.load(Ordering::Relaxed)),
            Ordering::Relaxed,
        );
        self.throttle_cv.notify_all();
        // The metadata that calls the segment shipped is durable
        // (`persist_meta_quiet` syncs), so replay will trust the tlog's
        // records without the containers evicted here.
        self.shipped_tlogs.lock().push((seg.tlog, target));
        self.drop_applied_tlogs()?;
        self.evict_local(self.shared.cfg.keep_shipped_bytes);
        Ok(true)
    }

    /// Deletes the local tlogs of shipped segments that an index commit
    /// covers, after syncing RocksDB's WAL (the commit itself is not
    /// synced: until then the tlog is the durable copy).
    fn drop_applied_tlogs(&self) -> EngineResult<()> {
        let committed = self.commit.lock().committed;
        let mut pending = self.shipped_tlogs.lock();
        if !pending.iter().any(|&(_, upto)| upto <= committed) {
            return Ok(());
        }
        self.shared.index.sync_wal()?;
        pending.retain(|&(seq, upto)| {
            if upto > committed {
                return true;
            }
            let _ = std::fs::remove_file(self.tlog_path(seq));
            false
        });
        Ok(())
    }

    /// Deletes the oldest shipped local containers beyond `keep` bytes.
    pub(crate) fn evict_local(&self, keep: u64) {
        let mut w = self.writer.lock();
        while w.shipped_local_bytes > keep {
            let Some((c, len)) = w.shipped_local.pop_front() else {
                break;
            };
            w.shipped_local_bytes -= len;
            self.files.lock().remove(&c);
            let _ = std::fs::remove_file(self.container_path(c));
        }
    }

    /// Closes the open container and ships everything to the backend;
    /// returns once the backend holds every write made before the call.
    pub fn sync_to_backend(&self) -> EngineResult<()> {
        self.check_ok()?;
        {
            let mut w = self.writer.lock();
            self.seal(&mut w)?;
        }
        while self.ship_one(false)? {}
        if self.meta_dirty.load(Ordering::SeqCst) {
            let _g = self.ship_lock.lock();
            self.upload_manifest(false)?;
        }
        Ok(())
    }

    // ------------------------------------------------------------ snapshots

    /// Creates a snapshot in O(1): seals, syncs and starts a new generation.
    pub fn create_snapshot(&self, name: &str) -> EngineResult<SnapshotInfo> {
        crate::name::check_name("snapshot", name)?;
        if name.starts_with('@') {
            return Err(EngineError::InvalidArgument(
                "snapshot names starting with '@' are reserved".into(),
            ));
        }
        self.snapshot_inner(name)
    }

    pub(crate) fn snapshot_inner(&self, name: &str) -> EngineResult<SnapshotInfo> {
        self.check_ok()?;
        let _a = self.admin.lock();
        if self.meta.lock().snapshot(name).is_some() {
            return Err(EngineError::SnapshotExists(name.to_string()));
        }
        let mut w = self.writer.lock();
        self.seal(&mut w)?;
        // Durable, not committed: the sealed segment's tlog carries the old
        // generation, so replay files its records under it, and lookups of
        // the snapshot see the memtable. Committing here would make the
        // snapshot wait for up to `index_commit_interval` of writes (179 ms
        // after a GiB of them); the next regular commit puts the records
        // in RocksDB.
        self.sync_locked(&mut w, Commit::Skip)?;
        let mut m = self.meta.lock();
        let old = m.clone();
        let snap = SnapshotMeta {
            name: name.to_string(),
            generation: w.generation,
            created_unix: now_unix(),
        };
        let new_gen = m.next_gen;
        m.next_gen += 1;
        m.head_gen = new_gen;
        m.snapshots.push(snap.clone());
        m.next_container = w.next_container;
        m.next_tlog = w.next_tlog;
        if let Err(e) = self.persist_meta(&m) {
            *m = old;
            return Err(e);
        }
        w.generation = new_gen;
        self.head_gen.store(new_gen, Ordering::Release);
        drop(m);
        drop(w);
        self.shared.wake_shipper();
        Ok(SnapshotInfo {
            name: snap.name,
            created_unix: snap.created_unix,
            generation: snap.generation,
            on_backend: false,
            clones: 0,
        })
    }

    /// Lists snapshots, oldest first.
    pub fn list_snapshots(&self) -> Vec<SnapshotInfo> {
        let first_unshipped = {
            let w = self.writer.lock();
            w.segments.front().map_or(w.generation, |s| s.generation)
        };
        let m = self.meta.lock();
        m.snapshots
            .iter()
            .map(|s| SnapshotInfo {
                name: s.name.clone(),
                created_unix: s.created_unix,
                generation: s.generation,
                on_backend: s.generation < first_unshipped,
                clones: m.children.iter().filter(|c| c.snapshot == s.name).count(),
            })
            .collect()
    }

    /// Deletes a snapshot (metadata only; scrub reclaims its data). Refused
    /// while clones depend on it.
    pub fn delete_snapshot(&self, name: &str) -> EngineResult<()> {
        self.check_ok()?;
        let _a = self.admin.lock();
        {
            let mut m = self.meta.lock();
            if m.snapshot(name).is_none() {
                return Err(EngineError::SnapshotNotFound(name.to_string()));
            }
            if m.children.iter().any(|c| c.snapshot == name) {
                return Err(EngineError::HasClones(format!("snapshot {name:?}")));
            }
            let old = m.clone();
            m.snapshots.retain(|s| s.name != name);
            if let Err(e) = self.persist_meta(&m) {
                *m = old;
                return Err(e);
            }
        }
        self.compact_index()?;
        self.shared.wake_shipper();
        Ok(())
    }

    /// Removes index entries no snapshot or the head can see any more
    /// (superseded within a generation range, or rolled back).
    fn compact_index(&self) -> EngineResult<()> {
        let meta = self.meta.lock().clone();
        let has_parent = self.parent.is_some();
        let mut b = WriteBatch::default();
        let mut n = 0usize;
        let mut group: Vec<(u32, Mapping)> = Vec::new();
        let mut cur: Option<u64> = None;
        let id = self.id;
        let flush_group =
            |c: u64, group: &mut Vec<(u32, Mapping)>, b: &mut WriteBatch, n: &mut usize| {
                // group is in ascending generation order.
                let mut keep: Vec<bool> = vec![true; group.len()];
                for i in 0..group.len() {
                    let g = group[i].0;
                    if meta.is_discarded(g) {
                        keep[i] = false;
                        continue;
                    }
                    let bnd = meta.boundary(g);
                    if group[i + 1..]
                        .iter()
                        .any(|(g2, _)| !meta.is_discarded(*g2) && meta.boundary(*g2) == bnd)
                    {
                        keep[i] = false;
                    }
                }
                if !has_parent
                    && let Some(first) = (0..group.len()).find(|&i| keep[i])
                    && group[first].1 == Mapping::Unmapped
                {
                    keep[first] = false;
                }
                for (i, (g, _)) in group.iter().enumerate() {
                    if !keep[i] {
                        b.delete(crate::format::keys::index(id, c, *g));
                        *n += 1;
                    }
                }
                group.clear();
            };
        self.shared.index.scan(self.id, 0, u64::MAX, |c, g, m| {
            if cur != Some(c) {
                if let Some(pc) = cur {
                    flush_group(pc, &mut group, &mut b, &mut n);
                }
                cur = Some(c);
            }
            group.push((g, m));
            true
        })?;
        if let Some(pc) = cur {
            flush_group(pc, &mut group, &mut b, &mut n);
        }
        if n > 0 {
            let _g = self.index_lock.lock();
            self.shared.index.write(b)?;
            drop(_g);
            self.clear_index_cache();
        }
        Ok(())
    }

    /// Rolls the volume back to a snapshot: later writes and later
    /// snapshots are discarded. Refused while a later snapshot has clones.
    pub fn rollback(&self, name: &str) -> EngineResult<()> {
        self.check_writable()?;
        let _a = self.admin.lock();
        let target = self
            .meta
            .lock()
            .snapshot(name)
            .cloned()
            .ok_or_else(|| EngineError::SnapshotNotFound(name.to_string()))?;
        {
            let m = self.meta.lock();
            for s in m
                .snapshots
                .iter()
                .filter(|s| s.generation > target.generation)
            {
                if m.children.iter().any(|c| c.snapshot == s.name) {
                    return Err(EngineError::HasClones(format!("snapshot {:?}", s.name)));
                }
            }
        }
        let _s = self.ship_lock.lock();
        let mut w = self.writer.lock();
        self.seal(&mut w)?;
        self.sync_locked(&mut w, Commit::Force)?;
        let mut m = self.meta.lock();
        let old_meta = m.clone();
        let old_head = w.generation;
        let new_gen = m.next_gen;
        m.next_gen += 1;
        m.discarded_gens.push((target.generation + 1, old_head));
        m.head_gen = new_gen;
        m.snapshots.retain(|s| s.generation <= target.generation);
        m.shipped
            .tlogs
            .retain(|t| t.generation <= target.generation);
        m.next_container = w.next_container;
        m.next_tlog = w.next_tlog;
        // One atomic batch: metadata + removal of every discarded mapping.
        let mut b = WriteBatch::default();
        Index::put_meta(&mut b, &m)?;
        let mut dels = Vec::new();
        self.shared.index.scan(self.id, 0, u64::MAX, |c, g, _| {
            if g > target.generation {
                dels.push((c, g));
            }
            true
        })?;
        for (c, g) in &dels {
            b.delete(crate::format::keys::index(self.id, *c, *g));
        }
        if let Err(e) = self.shared.index.write_sync(b) {
            *m = old_meta;
            return Err(e);
        }
        self.clear_index_cache();
        self.meta_dirty.store(true, Ordering::SeqCst);
        w.generation = new_gen;
        self.head_gen.store(new_gen, Ordering::Release);
        self.memtable.write().active.clear();
        drop(m);
        let mut dropped_bytes = 0;
        let mut keep = VecDeque::new();
        let segments = std::mem::take(&mut w.segments);
        for s in segments {
            if s.generation > target.generation {
                dropped_bytes += s.bytes;
                let _ = std::fs::remove_file(self.tlog_path(s.tlog));
                for c in &s.containers {
                    self.files.lock().remove(c);
                    w.mutable.remove(c);
                    let _ = std::fs::remove_file(self.container_path(*c));
                }
            } else {
                keep.push_back(s);
            }
        }
        if keep.is_empty() {
            // Nothing before the discarded segments waits to ship.
            let mut m = self.meta.lock();
            m.shipped.next_tlog = m.shipped.next_tlog.max(w.next_tlog);
        }
        w.segments = keep;
        self.unshipped.fetch_sub(
            dropped_bytes.min(self.unshipped.load(Ordering::Relaxed)),
            Ordering::Relaxed,
        );
        drop(w);
        self.throttle_cv.notify_all();
        self.shared.wake_shipper();
        Ok(())
    }

    /// Whether every segment with a tlog below `cut` has shipped.
    pub(crate) fn shipped_before(&self, cut: u64) -> bool {
        self.writer
            .lock()
            .segments
            .front()
            .is_none_or(|s| s.tlog >= cut)
    }

    /// Grows the volume (shrinking is refused).
    pub fn resize(&self, new_size_bytes: u64) -> EngineResult<()> {
        self.check_ok()?;
        let _a = self.admin.lock();
        let bs = u64::from(self.block_size);
        let cur = self.num_blocks.load(Ordering::Acquire) * bs;
        if !new_size_bytes.is_multiple_of(bs) || new_size_bytes < cur {
            return Err(EngineError::InvalidArgument(format!(
                "new size {new_size_bytes} must be a multiple of {bs} and at least {cur}"
            )));
        }
        let mut m = self.meta.lock();
        m.size_bytes = new_size_bytes;
        self.persist_meta(&m)?;
        self.num_blocks
            .store(new_size_bytes / bs, Ordering::Release);
        drop(m);
        self.shared.wake_shipper();
        Ok(())
    }

    /// Marks or unmarks the volume as a template. A template is read-only
    /// and can be cloned from its current state; marking takes an internal
    /// snapshot (`@template-N`) that clones of the current state use.
    pub fn set_template(&self, on: bool) -> EngineResult<()> {
        self.check_ok()?;
        if on == self.template.load(Ordering::Acquire) {
            return Ok(());
        }
        if on {
            let generation = self.head_gen.load(Ordering::Acquire);
            self.snapshot_inner(&format!("@template-{generation}"))?;
        }
        let _a = self.admin.lock();
        let mut m = self.meta.lock();
        m.template = on;
        self.persist_meta(&m)?;
        self.template.store(on, Ordering::Release);
        drop(m);
        self.shared.wake_shipper();
        Ok(())
    }

    /// Whether the volume is a template.
    pub fn is_template(&self) -> bool {
        self.template.load(Ordering::Acquire)
    }

    /// The snapshot a clone of the template's current state uses.
    pub(crate) fn template_snapshot(&self) -> Option<String> {
        if !self.is_template() {
            return None;
        }
        let m = self.meta.lock();
        m.snapshots
            .iter()
            .rev()
            .find(|s| s.name.starts_with("@template-"))
            .map(|s| s.name.clone())
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

    pub(crate) fn local_dir(&self) -> &Path {
        &self.dir
    }

    // -------------------------------------------------------------- unmap

    /// Clusters in `[from, to)` that may be mapped (any generation, any
    /// ancestor); a superset the caller resolves exactly.
    fn candidates(&self, from: u64, to: u64, out: &mut BTreeSet<u64>) -> EngineResult<()> {
        let mut vol: &Volume = self;
        let mut generation = self.head_gen.load(Ordering::Acquire);
        loop {
            for (c, g) in vol.memtable.read().keys(from, to) {
                if g <= generation {
                    out.insert(c);
                }
            }
            vol.shared.index.scan(vol.id, from, to, |c, g, _| {
                if g <= generation {
                    out.insert(c);
                }
                true
            })?;
            match &vol.parent {
                Some((p, pg)) => {
                    vol = p;
                    generation = *pg;
                }
                None => return Ok(()),
            }
        }
    }

    fn unmap_bytes(&self, off: u64, len: u64) -> EngineResult<()> {
        self.check_writable()?;
        if len == 0 {
            return Ok(());
        }
        let end = off + len;
        let first_full = off.div_ceil(CLUSTER_SIZE_U64);
        let end_full = end / CLUSTER_SIZE_U64;
        // Partial clusters at the edges: write zeros into them if mapped.
        let zeros = [0u8; CLUSTER_SIZE];
        let head = off / CLUSTER_SIZE_U64;
        let tail = (end - 1) / CLUSTER_SIZE_U64;
        for c in [head, tail] {
            let cs = c * CLUSTER_SIZE_U64;
            let lo = cs.max(off);
            let hi = (cs + CLUSTER_SIZE_U64).min(end);
            let partial = hi - lo < CLUSTER_SIZE_U64;
            if partial && (c == head || tail != head) && self.resolve(c)?.is_some() {
                self.write_bytes(lo, &zeros[..(hi - lo) as usize], false)?;
            }
        }
        if first_full >= end_full {
            return Ok(());
        }
        let mut cands = BTreeSet::new();
        self.candidates(first_full, end_full, &mut cands)?;
        let _range = self.ranges.lock(first_full, end_full - 1);
        let mut todo = Vec::new();
        for c in cands {
            if self.resolve(c)?.is_some() {
                todo.push(c);
            }
        }
        if todo.is_empty() {
            return Ok(());
        }
        let mut w = self.writer.lock();
        for chunk in todo.chunks(4096) {
            self.append_unmaps(&mut w, chunk)?;
        }
        Ok(())
    }

    fn provisioning_inner(&self, lba: u64, max_blocks: u64) -> EngineResult<(Provisioning, u64)> {
        let total = self.num_blocks.load(Ordering::Acquire);
        if lba >= total {
            return Err(EngineError::OutOfRange { lba, blocks: 1 });
        }
        let bs = u64::from(self.block_size);
        let limit = max_blocks.clamp(1, total - lba);
        let off = lba * bs;
        let end = (lba + limit) * bs;
        let c0 = off / CLUSTER_SIZE_U64;
        let mapped = self.resolve(c0)?.is_some();
        let state = if mapped {
            Provisioning::Mapped
        } else {
            Provisioning::Deallocated
        };
        let last_c = (end - 1) / CLUSTER_SIZE_U64;
        let mut c = c0 + 1;
        if mapped {
            while c <= last_c && c - c0 < 65536 && self.resolve(c)?.is_some() {
                c += 1;
            }
        } else {
            let mut cands = BTreeSet::new();
            self.candidates(c, (last_c + 1).min(c + 1_000_000), &mut cands)?;
            let mut stop = (last_c + 1).min(c + 1_000_000);
            for cand in cands {
                if self.resolve(cand)?.is_some() {
                    stop = cand;
                    break;
                }
            }
            c = stop;
        }
        let run_end = (c * CLUSTER_SIZE_U64).min(end);
        Ok((state, ((run_end - off) / bs).max(1)))
    }

    // ---------------------------------------------------------------- scrub

    /// Rewrites this volume's sparsely used containers and writes a fresh
    /// index checkpoint; see `crate::scrub`.
    pub(crate) fn scrub(&self, report: &mut crate::pool::ScrubReport) -> EngineResult<()> {
        crate::scrub::scrub_volume(self, report)
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

    /// Seals, syncs, and returns (cut tlog seq, next container seq) with the
    /// index at exactly that cut; used by scrub.
    pub(crate) fn cut(&self) -> EngineResult<(u64, u64, rocksdb::Snapshot<'_>)> {
        let mut w = self.writer.lock();
        self.seal(&mut w)?;
        self.sync_locked(&mut w, Commit::Force)?;
        let snap = self.shared.index.snapshot();
        Ok((w.next_tlog, w.next_container, snap))
    }

    /// Allocates a container sequence number (scrub output).
    pub(crate) fn alloc_container(&self) -> u64 {
        let mut w = self.writer.lock();
        let s = w.next_container;
        w.next_container += 1;
        s
    }

    /// Registers a scrub-written container as a shipped local container.
    pub(crate) fn adopt_local_container(&self, seq: u64, data: &[u8]) -> EngineResult<()> {
        let path = self.container_path(seq);
        // A fresh sequence number: never overwrite an existing file.
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .and_then(|mut f| std::io::Write::write_all(&mut f, data))
            .map_err(|e| EngineError::io("writing a scrubbed container", e))?;
        let mut w = self.writer.lock();
        w.shipped_local.push_back((seq, data.len() as u64));
        w.shipped_local_bytes += data.len() as u64;
        Ok(())
    }

    /// Removes a local container file (after scrub released it).
    pub(crate) fn drop_local_container(&self, seq: u64) {
        self.files.lock().remove(&seq);
        let mut w = self.writer.lock();
        if let Some(pos) = w.shipped_local.iter().position(|(c, _)| *c == seq)
            && let Some((_, len)) = w.shipped_local.remove(pos)
        {
            w.shipped_local_bytes -= len;
        }
        drop(w);
        let _ = std::fs::remove_file(self.container_path(seq));
    }

    /// Reads a whole container (local file, else backend).
    pub(crate) fn fetch_container(&self, seq: u64) -> EngineResult<Bytes> {
        match std::fs::read(self.container_path(seq)) {
            Ok(d) => Ok(Bytes::from(d)),
            Err(_) => self
                .shared
                .backend
                .get(&backend::container_key(self.id, seq)),
        }
    }
}

impl BlockDevice for Volume {
    fn block_size(&self) -> u32 {
        self.block_size
    }

    fn num_blocks(&self) -> u64 {
        self.num_blocks.load(Ordering::Acquire)
    }

    fn physical_block_exponent(&self) -> u8 {
        if self.block_size < CLUSTER_SIZE as u32 {
            (CLUSTER_SIZE as u32 / self.block_size).trailing_zeros() as u8
        } else {
            0
        }
    }

    fn read(&self, lba: u64, buf: &mut [u8]) -> BlockResult<()> {
        self.check_ok()?;
        let (off, _) = self.byte_range(lba, buf.len())?;
        self.read_bytes(off, buf).map_err(BlockError::from)
    }

    /// Completes only if the index answers from memory (memtable, index
    /// cache, or RocksDB's memtables and block cache) and every cluster is
    /// unmapped or in a local container file already open here whose pages
    /// are in the page cache. Declines (`Ok(false)`) on a backend or
    /// read-cache tier, a page-cache miss, a checksum mismatch, a contended
    /// lock or a closed/failed volume; the blocking `read` then handles it
    /// (and reports any error).
    fn try_read_nowait(&self, lba: u64, buf: &mut [u8]) -> BlockResult<bool> {
        if self.closed.load(Ordering::Relaxed) {
            return Ok(false);
        }
        match self.failed.try_lock() {
            Some(f) if f.is_none() => {}
            _ => return Ok(false),
        }
        let (off, _) = self.byte_range(lba, buf.len())?;
        match self.read_span(off, buf, true, None) {
            Ok(true) => {
                self.counters.reads.fetch_add(1, Ordering::Relaxed);
                Ok(true)
            }
            Ok(false) | Err(_) => Ok(false),
        }
    }

    /// Completes a non-FUA write only when it is a plain append: whole
    /// clusters (no read-modify-write), at most [`NOWAIT_WRITE_MAX`] bytes,
    /// the write buffer below its cap, its cluster range and the writer
    /// lock free, and room in the already-open container (so no file is
    /// created and nothing is sealed inline). The data then goes into the
    /// page cache with one buffered `pwrite`, exactly as `write` would do
    /// it. Declines (`Ok(false)`, nothing written) otherwise.
    fn try_write_nowait(&self, lba: u64, data: &[u8]) -> BlockResult<bool> {
        let (off, len) = self.byte_range(lba, data.len())?;
        self.try_append_nowait(off, data, len)
            .map_err(BlockError::from)
    }

    fn write(&self, lba: u64, data: &[u8], fua: bool) -> BlockResult<()> {
        let (off, _) = self.byte_range(lba, data.len())?;
        self.write_bytes(off, data, fua).map_err(BlockError::from)
    }

    /// The pieces go to the container files as they are (see
    /// `write_pieces`): a 1 MiB write that arrived in four PDUs is stored
    /// without gathering it first.
    fn write_vectored(&self, lba: u64, pieces: &[&[u8]], fua: bool) -> BlockResult<()> {
        let len = pieces.iter().map(|p| p.len()).sum();
        let (off, _) = self.byte_range(lba, len)?;
        self.write_pieces(off, pieces, fua)
            .map_err(BlockError::from)
    }

    fn flush(&self) -> BlockResult<()> {
        self.check_ok()?;
        self.flush_all().map_err(BlockError::from)
    }

    fn thin_provisioned(&self) -> bool {
        true
    }

    fn unmap(&self, lba: u64, blocks: u64) -> BlockResult<()> {
        let total = self.num_blocks.load(Ordering::Acquire);
        match lba.checked_add(blocks) {
            Some(end) if end <= total => {}
            _ => return Err(BlockError::OutOfRange { lba, blocks }),
        }
        let bs = u64::from(self.block_size);
        self.unmap_bytes(lba * bs, blocks * bs)
            .map_err(BlockError::from)
    }

    fn provisioning(&self, lba: u64, max_blocks: u64) -> BlockResult<(Provisioning, u64)> {
        self.check_ok()?;
        self.provisioning_inner(lba, max_blocks)
            .map_err(BlockError::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn mapping(tag: u32) -> Mapping {
        Mapping::Data(Location {
            container: u64::from(tag),
            slot: tag,
            len: CLUSTER_SIZE as u32,
            flags: 0,
            crc: tag,
            hash: u128::from(tag),
        })
    }

    #[test]
    fn take_front_cuts_parts_at_any_byte() {
        let (a, b, c) = (&[1u8, 2, 3][..], &[][..], &[4u8, 5, 6, 7, 8][..]);
        let all = [a, b, c];
        let (mut rest, mut head): (&[&[u8]], &[u8]) = (&all, &[]);
        let mut take = |n| take_front(&mut rest, &mut head, n).to_vec();
        assert_eq!(take(4), vec![a, &c[..1]]);
        assert_eq!(take(0), Vec::<&[u8]>::new());
        assert_eq!(take(2), vec![&c[1..3]]);
        // Asking for more than is left takes what is left.
        assert_eq!(take(9), vec![&c[3..]]);
        assert!(rest.is_empty() && head.is_empty());
    }

    #[test]
    fn parts_are_written_as_their_concatenation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = File::create(&path).unwrap();
        let data: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
        // More parts than one pwritev takes, some empty.
        let parts: Vec<&[u8]> = data.chunks(2).flat_map(|c| [c, &[][..]]).collect();
        assert!(parts.len() > IOV_MAX);
        write_all_parts_at(&file, &parts, 100).unwrap();
        let back = std::fs::read(&path).unwrap();
        assert_eq!(back.len(), 3100);
        assert!(back[..100].iter().all(|&b| b == 0));
        assert_eq!(&back[100..], &data[..]);
    }

    proptest! {
        /// `Memtables::newest` against the definition: in `active`, else
        /// in `committing`, the entry with the greatest generation ≤ the
        /// one asked for.
        #[test]
        fn newest_is_the_latest_generation_at_or_below(
            active in prop::collection::vec((0u64..6, 0u32..6), 0..24),
            committing in prop::option::of(prop::collection::vec((0u64..6, 0u32..6), 0..24)),
            cluster in 0u64..6,
            generation in 0u32..7,
        ) {
            let table = |keys: &[(u64, u32)], base: u32| -> MemTable {
                keys.iter().map(|&(c, g)| ((c, g), mapping(base + g * 8 + c as u32))).collect()
            };
            let m = Memtables {
                active: table(&active, 0),
                committing: committing.as_deref().map(|k| Arc::new(table(k, 100))),
            };
            let naive = |t: &MemTable| {
                t.iter()
                    .filter(|((c, g), _)| *c == cluster && *g <= generation)
                    .max_by_key(|((_, g), _)| *g)
                    .map(|(_, m)| *m)
            };
            let want = naive(&m.active).or_else(|| m.committing.as_deref().and_then(naive));
            prop_assert_eq!(m.newest(cluster, generation), want);
        }
    }
}
