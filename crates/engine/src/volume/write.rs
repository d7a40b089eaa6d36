//! The write path: throttling on the write buffer, the open tlog and
//! container ([`Volume::ensure_container`]), sealing, appends
//! ([`Volume::append_parts`], one vectored write per container), whole
//! writes with their read-modify-write edges and in-place rewrites
//! ([`Volume::write_runs`]), vectored writes ([`Volume::write_pieces`]) and
//! the non-blocking write ([`Volume::try_append_nowait`]).
//!
//! Invariants (module docs of `crate::volume`):
//! - An appended cluster's data is written before its record, both under
//!   the writer lock, and the memtable is updated under it too.
//! - A write is all or nothing with respect to concurrent writers of its
//!   clusters (range lock), and not durable until a sync.
//! - Checksums and content hashes are computed before the writer lock.
//! - The pieces of a vectored write are written as they are, one
//!   `pwritev` per container, unless tiny pieces are gathered into runs of
//!   at least [`VECTORED_RUN_MIN`] bytes.

use std::borrow::Cow;
use std::fs::OpenOptions;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::checksum;
use crate::conv::{min_usize, usize_of};
use crate::error::{EngineError, EngineResult};
use crate::format::{
    CLUSTER_SIZE, CLUSTER_SIZE_U32, CLUSTER_SIZE_U64, CONTAINER_VERSION, ContainerHeader, Location,
    Mapping, TLOG_RECORD_SIZE, TLOG_VERSION, TlogHeader, TlogRecord, content_hash, slot_offset,
};
use crate::icache::{CHUNK_CLUSTERS, CHUNK_LEN};

use super::mirror::MirrorWait;
use super::rewrite::REWRITE_MIN_CLUSTERS;
use super::segments::{
    OpenContainer, OpenTlog, RangeHint, Segment, WRITEBACK_STEP, create_segment_file, range_hint,
    take_front, write_all_parts_at,
};
use super::{Volume, Writer};

/// Largest write `try_write_nowait` completes inline (bigger buffered
/// copies are left to the blocking pool).
pub(super) const NOWAIT_WRITE_MAX: u64 = 128 * 1024;
pub(super) const TLOG_BUF_FLUSH: usize = 64 * 1024;

/// Smallest run a vectored write is cut into (see `write_pieces`): pieces
/// smaller than this are gathered with their neighbours, so a write that
/// arrived in tiny PDUs is still stored as few large runs, each large
/// enough to be rewritten in place.
const VECTORED_RUN_MIN: usize = REWRITE_MIN_CLUSTERS * CLUSTER_SIZE;

/// Most superseded slots remembered between syncs (16 bytes each); beyond
/// it their pages are left to the kernel's reclaim.
pub(super) const DEAD_SLOTS_MAX: usize = 1 << 18;

/// The error for runs that break [`Volume::write_runs`]' contract (a
/// boundary inside a cluster); never expected from `write_pieces`.
fn unaligned_runs(off: u64, runs: &[&[u8]]) -> EngineError {
    let lens: Vec<usize> = runs.iter().map(|r| r.len()).collect();
    EngineError::Failed(format!(
        "write at byte {off} cut into runs of {lens:?} bytes with a boundary inside a cluster"
    ))
}

/// (crc32c, xxh3-128) of each whole cluster of the concatenation of
/// `parts` (a short tail is ignored). A cluster inside one part is hashed
/// where it is; only a cluster cut between parts is copied (into a stack
/// buffer) first.
pub(super) fn cluster_sums(parts: &[&[u8]]) -> Vec<(u32, u128)> {
    let sum = |c: &[u8]| (checksum::crc32c(c), content_hash(c));
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let mut out = Vec::with_capacity(total / CLUSTER_SIZE);
    let (mut rest, mut head): (&[&[u8]], &[u8]) = (parts, &[]);
    loop {
        match take_front(&mut rest, &mut head, CLUSTER_SIZE).as_slice() {
            [one] if one.len() == CLUSTER_SIZE => out.push(sum(one)),
            cut if cut.iter().map(|p| p.len()).sum::<usize>() == CLUSTER_SIZE => {
                let mut c = [0u8; CLUSTER_SIZE];
                let mut at = 0;
                for p in cut {
                    c[at..at + p.len()].copy_from_slice(p);
                    at += p.len();
                }
                out.push(sum(&c));
            }
            _ => return out,
        }
    }
}

impl Volume {
    pub(super) fn throttle(&self) {
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

    /// Under the writer lock: fails once a hand-over's freeze stopped the
    /// writer (a bool the lock already guards; no extra cost per write).
    pub(super) fn check_running(&self, w: &Writer) -> EngineResult<()> {
        if w.stopped {
            return Err(self.fenced_error());
        }
        Ok(())
    }

    pub(super) fn ensure_tlog(&self, w: &mut Writer) -> EngineResult<()> {
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

    pub(super) fn ensure_container(&self, w: &mut Writer) -> EngineResult<()> {
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
    pub(super) fn seal(&self, w: &mut Writer) -> EngineResult<()> {
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
    pub(super) fn append(
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
    pub(super) fn append_parts(
        &self,
        w: &mut Writer,
        mut cluster: u64,
        parts: &[&[u8]],
        sums: &[(u32, u128)],
    ) -> EngineResult<()> {
        self.check_running(w)?;
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
            let room = slots - oc.next_slot;
            let k32 = u32::try_from(sums.len()).map_or(room, |n| n.min(room));
            let k = k32 as usize;
            let now = take_front(&mut rest, &mut head, k * CLUSTER_SIZE);
            let (now_sums, later_sums) = sums.split_at(k);
            let first_slot = oc.next_slot;
            let cseq = oc.seq;
            let r = write_all_parts_at(&oc.file, &now, slot_offset(first_slot));
            if let Err(e) = r {
                return Err(EngineError::io("appending to a container", e));
            }
            oc.next_slot += k32;
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
            // `first_slot + k32` is at most `slots`.
            for (slot, &(crc, hash)) in (first_slot..).zip(now_sums) {
                let loc = Location {
                    container: cseq,
                    slot,
                    len: CLUSTER_SIZE_U32,
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

    pub(super) fn write_bytes(&self, off: u64, data: &[u8], fua: bool) -> EngineResult<()> {
        self.write_pieces(off, &[data], fua)
    }

    /// Writes the concatenation of `pieces` at byte `off`. It is cut at
    /// cluster-aligned piece boundaries into runs of at least
    /// [`VECTORED_RUN_MIN`] bytes; a run that is one piece is written from
    /// the caller's buffer, only runs of several (small or unaligned)
    /// pieces are gathered. The runs go in with one [`Volume::write_runs`].
    pub(super) fn write_pieces(&self, off: u64, pieces: &[&[u8]], fua: bool) -> EngineResult<()> {
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
    pub(super) fn write_runs(&self, off: u64, runs: &[&[u8]]) -> EngineResult<()> {
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
            let from = usize_of(off - first * CLUSTER_SIZE_U64)?;
            let n = min_usize(CLUSTER_SIZE - from, len);
            let src = first_run
                .get(..n)
                .ok_or_else(|| unaligned_runs(off, runs))?;
            head[from..from + n].copy_from_slice(src);
        }
        if tail_partial {
            self.read_cluster(last, &mut tail)?;
            let n = usize_of(end - last * CLUSTER_SIZE_U64)?;
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
                let bytes = &r[usize_of(a - at)?..usize_of(b - at)?];
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
        let edge = |partial: bool, b: &[u8]| {
            if partial {
                cluster_sums(&[b])
            } else {
                Vec::new()
            }
        };
        let head_sums = edge(head_partial, &head);
        let tail_sums = edge(tail_partial, &tail);
        let piece = CHUNK_LEN * CLUSTER_SIZE;
        let mut work = Vec::new();
        for &(c0, bytes) in &segments {
            for (i, part) in bytes.chunks(piece).enumerate() {
                let at = c0 + i as u64 * CHUNK_CLUSTERS;
                let sums = cluster_sums(&[part]);
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
                && self.rewrite(&mut w, *at, *loc, &[*bytes], sums)?
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

    /// Writes the concatenation of `pieces` (`len` bytes) at byte `off`
    /// if that needs no waiting, taking the pieces as they are: in place
    /// (one vectored write into the slots) or as an append into the open
    /// container (one vectored write, as `append_parts` always does). See
    /// `try_write_vectored_nowait` in the `BlockDevice` impl. A write that
    /// needs a mirror round declines, unless `defer`: then it is written
    /// and its round's wait returned (`Some(Some(wait))`); it completes
    /// when that says so. `None`: declined, nothing written.
    pub(super) fn try_append_inline(
        &self,
        off: u64,
        pieces: &[&[u8]],
        len: u64,
        defer: bool,
    ) -> EngineResult<Option<Option<MirrorWait>>> {
        if len == 0
            || len > NOWAIT_WRITE_MAX
            || !off.is_multiple_of(CLUSTER_SIZE_U64)
            || !len.is_multiple_of(CLUSTER_SIZE_U64)
            || self.inactive()
            || self.template.load(Ordering::Relaxed)
            || self.is_reader()
            || self.unshipped.load(Ordering::Relaxed) + len > self.shared.cfg.write_buffer_bytes
            || (!defer && self.needs_rounds())
        {
            return Ok(None);
        }
        match self.failed.try_lock() {
            Some(f) if f.is_none() => {}
            _ => return Ok(None),
        }
        let first = off / CLUSTER_SIZE_U64;
        let n = len / CLUSTER_SIZE_U64;
        let Some(range) = self.ranges.try_lock(first, first + n - 1) else {
            return Ok(None);
        };
        let sums = cluster_sums(pieces);
        let target = self.rewrite_target(first, n as usize, true)?;
        let Some(mut w) = self.writer.try_lock() else {
            return Ok(None);
        };
        let rewritten = match target {
            Some(loc) => self.rewrite(&mut w, first, loc, pieces, &sums)?,
            None => false,
        };
        if !rewritten {
            let slots = self.shared.cfg.container_slots();
            let room = w
                .container
                .as_ref()
                .map_or(0, |c| u64::from(slots.saturating_sub(c.next_slot)));
            // Strictly more room than needed: filling it would seal inline.
            if w.tlog.is_none() || room <= n {
                return Ok(None);
            }
            self.append_parts(&mut w, first, pieces, &sums)?;
        }
        let round = self.inline_round(&mut w)?;
        drop(w);
        drop(range);
        self.counters.writes.fetch_add(1, Ordering::Relaxed);
        Ok(Some(round))
    }
}

#[cfg(test)]
// Test data patterns truncate on purpose.
#[allow(clippy::cast_possible_truncation)]
mod tests {
    use super::*;

    #[test]
    fn cluster_sums_of_pieces_are_those_of_their_concatenation() {
        let data: Vec<u8> = (0..5 * CLUSTER_SIZE + 100)
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        let want: Vec<(u32, u128)> = data
            .chunks_exact(CLUSTER_SIZE)
            .map(|c| (checksum::crc32c(c), content_hash(c)))
            .collect();
        assert_eq!(cluster_sums(&[&data]), want);
        for cuts in [
            vec![1],
            vec![CLUSTER_SIZE],
            vec![1000, 5000, 5000, 5001, 12_000],
            vec![0, 4095, 4097, 8192, 20_479],
        ] {
            let mut pieces: Vec<&[u8]> = Vec::new();
            let mut at = 0;
            for c in cuts {
                pieces.push(&data[at..c]);
                at = c;
            }
            pieces.push(&data[at..]);
            let lens: Vec<usize> = pieces.iter().map(|p| p.len()).collect();
            assert_eq!(cluster_sums(&pieces), want, "pieces of {lens:?} bytes");
        }
        assert!(cluster_sums(&[]).is_empty());
        assert!(cluster_sums(&[&data[..100]]).is_empty());
    }
}
