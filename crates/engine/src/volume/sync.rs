//! Group commit and the background tick. A sync (FUA, flush, timer, seal,
//! barrier) grabs its work under the writer lock ([`Volume::grab`]) and
//! fdatasyncs containers then tlogs without it ([`Volume::run_sync`]); every
//! writer that arrived before the grab is covered. A sync commits the
//! memtable and the replay marker to RocksDB when forced or due
//! ([`Commit`]). The tick ([`Volume::tick`]) runs the periodic soft sync,
//! seals idle containers, drops superseded pages and applied tlogs.
//!
//! Invariants:
//! - One sync makes data durable at a time (`syncing`), one commit runs at a
//!   time (`committing`), in order; a commit may overlap the next sync.
//! - RocksDB only receives mappings whose data and records are durable.
//! - A failed fdatasync or commit fails the volume: nothing is trusted
//!   until it is reopened and replayed.
//! - Hard barriers freeze every slot written so far before they sync; the
//!   periodic sync freezes nothing.

use std::fs::File;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use crate::error::{EngineError, EngineResult};
use crate::format::{CLUSTER_SIZE_U64, slot_offset};
use crate::index::{Entry, Marker};

use super::lookup::MemTable;
use super::mirror::{Mirror, MirrorBatch, MirrorSlot};
use super::segments::{RangeHint, range_hint, sync_dir};
use super::write::DEAD_SLOTS_MAX;
use super::{Volume, Writer};

/// A sync commits the index once the memtable holds this many entries
/// (about 50 MiB), even before `index_commit_interval`.
pub(super) const MEMTABLE_COMMIT_ENTRIES: usize = 1 << 19;

/// Memtable hits below which reads never make a commit due
/// ([`Volume::read_commit_due`]).
const READ_COMMIT_MIN_HITS: u64 = 4096;

/// A sync's work, grabbed under the writer lock ([`Volume::grab`]) and run
/// without it ([`Volume::run_sync`]).
pub(super) struct SyncWork {
    pub(super) files: Vec<Arc<File>>,
    /// The memtable to commit with its replay marker; `None`: the sync
    /// only makes data durable (the marker stays, replay covers the rest).
    pub(super) commit: Option<(Arc<MemTable>, Marker)>,
    pub(super) upto: u64,
    pub(super) dir_sync: bool,
    /// `Writer::dead` at the grab: clean once this sync's fdatasyncs end.
    pub(super) dead: Vec<(u64, u32)>,
    /// The mirror's batch (`mirror`), handed over before the fdatasyncs
    /// and waited for after them.
    pub(super) mirror: Option<(Arc<dyn Mirror>, MirrorBatch)>,
}

/// Where group commit stands (the volume's `commit` mutex, with
/// `commit_cv` for waiters).
#[derive(Default)]
pub(super) struct CommitState {
    /// Every write with a sequence number up to this is durable on flash.
    pub(super) durable: u64,
    /// ... and up to this also in RocksDB.
    pub(super) committed: u64,
    /// A sync is making data durable (one at a time: group commit).
    pub(super) syncing: bool,
    /// A sync whose data is durable is committing its memtable to RocksDB
    /// (one at a time, in order). Runs alongside the next `syncing`, so a
    /// sync that needs no commit never waits for one.
    pub(super) committing: bool,
}

/// Whether a sync commits the index to RocksDB.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Commit {
    /// Never (a snapshot: durable without waiting for a commit).
    Skip,
    /// When `index_commit_interval` or [`MEMTABLE_COMMIT_ENTRIES`] says so.
    IfDue,
    /// Always (FUA, flush, rollback, scrub).
    Force,
}

impl Volume {
    /// Grabs a sync's work under the writer lock. It commits the index when
    /// asked to (hard barriers, rollback, scrub) or, with
    /// [`Commit::IfDue`], when the last commit is `index_commit_interval`
    /// old or the memtable holds [`MEMTABLE_COMMIT_ENTRIES`]; and only if
    /// no commit is under way (then the caller waits for it and grabs again).
    /// Otherwise it only makes data durable.
    pub(super) fn grab(&self, w: &mut Writer, commit: Commit) -> EngineResult<SyncWork> {
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
            mirror: self.mirror_batch(w, true),
        })
    }

    /// Runs grabbed work: the fdatasyncs, then (with the `syncing` flag
    /// dropped, so the next group commit can start) the index commit.
    /// Either failing fails the volume: after a failed fdatasync (EIO, or
    /// ENOSPC from delayed allocation) the kernel may have dropped dirty
    /// pages, and a failed commit leaves the memtable ahead of RocksDB;
    /// nothing can be trusted until the pool is reopened and the logs
    /// replayed.
    pub(super) fn run_sync(&self, mut work: SyncWork) -> EngineResult<()> {
        // The mirror copies the batch while this router syncs its own
        // flash; the writes count as durable once both hold them.
        let mirrored = work.mirror.take().map(|(m, batch)| m.sync(batch));
        let r = self.sync_data(&work);
        if let Some(wait) = mirrored {
            wait.wait();
            self.mirror_held(work.upto);
        }
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

    pub(super) fn fail(&self, e: EngineError) -> EngineError {
        *self.failed.lock() = Some(e.to_string());
        e
    }

    pub(super) fn sync_data(&self, work: &SyncWork) -> EngineResult<()> {
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
    pub(super) fn commit_table(&self, table: &MemTable, marker: &Marker) -> EngineResult<()> {
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
    pub(super) fn begin(&self, w: &mut Writer, commit: Commit) -> EngineResult<SyncWork> {
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
    pub(super) fn sync_to(&self, target: u64, commit: bool) -> EngineResult<()> {
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
    pub(super) fn barrier(&self) -> EngineResult<()> {
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
    pub(super) fn sync_locked(&self, w: &mut Writer, commit: Commit) -> EngineResult<()> {
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

    /// Starts mirroring this volume to `mirror` (replacing any mirror it
    /// had): the next sync hands it the whole unshipped window and the
    /// metadata. Returns after a sync, so the mirror has its first batch.
    pub fn attach_mirror(&self, mirror: Arc<dyn Mirror>) -> EngineResult<()> {
        {
            let mut w = self.writer.lock();
            w.mirror_rewrites.clear();
            w.mirroring = true;
            let mut slot = self.mirror.lock();
            slot.mirror = Some(mirror);
            slot.sent_meta = None;
        }
        // A hard barrier's sync under the writer lock: it grabs a batch
        // however little was written.
        let mut w = self.writer.lock();
        self.sync_locked(&mut w, Commit::Skip)
    }

    /// Stops mirroring: later syncs hand nothing over.
    pub fn detach_mirror(&self) {
        let mut w = self.writer.lock();
        w.mirroring = false;
        w.mirror_rewrites.clear();
        *self.mirror.lock() = MirrorSlot::default();
    }

    pub(super) fn flush_all(&self) -> EngineResult<()> {
        self.barrier()
    }

    /// Reads have walked the memtable at least as many times as it has
    /// entries (and [`READ_COMMIT_MIN_HITS`]): committing it now, one
    /// RocksDB entry per key, costs about what the next as many reads
    /// would. A write-only workload never triggers this, so rewrites keep
    /// their one entry per `index_commit_interval`.
    pub(super) fn read_commit_due(&self) -> bool {
        let hits = self.memtable_hits.load(Ordering::Relaxed);
        hits >= READ_COMMIT_MIN_HITS && hits >= self.memtable.read().active.len() as u64
    }

    /// Background tick: periodic sync and sealing of idle containers.
    pub(crate) fn tick(&self) -> EngineResult<()> {
        if self.inactive() || self.failed.lock().is_some() {
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
    pub(super) fn drop_dead_pages(&self, mut dead: Vec<(u64, u32)>) {
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
}
