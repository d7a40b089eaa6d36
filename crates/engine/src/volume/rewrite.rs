//! In-place rewrites: a whole-cluster write of at least
//! [`REWRITE_MIN_CLUSTERS`] clusters whose own mappings are consecutive
//! slots written since the last hard barrier overwrites those slots
//! instead of appending ([`Volume::rewrite_target`] before the writer lock,
//! [`Volume::rewrite`] under it).
//!
//! Invariants (module docs of `crate::volume`):
//! - Only mutable slots are rewritten: at or above the frozen watermark, in
//!   a container of this incarnation whose segment has not begun to ship,
//!   in the head generation.
//! - The records reach the tlog of the container's segment before the data
//!   reaches the slots; a kill leaves at most records without their data,
//!   which replay drops. A failure after the first write fails the volume.
//! - The `rewrites` seqlock is odd from the data write to the memtable
//!   update, so a racing read that fails its checksum retries.

use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;

use crate::error::{EngineError, EngineResult};
use crate::format::{
    CLUSTER_SIZE, Location, Mapping, TLOG_HEADER_SIZE, TLOG_RECORD_SIZE, TlogRecord, slot_offset,
};
use crate::icache::CHUNK_LEN;

use super::segments::write_all_parts_at;
use super::{Volume, Writer, plain};

/// Smallest run of whole clusters rewritten in place. Smaller writes
/// append: a small overwrite inside a large page-cache folio costs ext4 a
/// walk over the folio's buffers (measured: 4K random rewrites in place
/// ran at half the rate of appends), while an append only fills new pages.
pub(super) const REWRITE_MIN_CLUSTERS: usize = 16;

impl Volume {
    /// Where the `n` clusters from `first` could be rewritten in place: the
    /// first slot, if their own head mappings are `n` consecutive plain
    /// slots of one container. Looked up before the writer lock; the
    /// caller's range lock keeps the mappings until [`Volume::rewrite`]
    /// re-checks the slots under it. `None` with `nowait` also when the
    /// lookup would block.
    pub(super) fn rewrite_target(
        &self,
        first: u64,
        n: usize,
        nowait: bool,
    ) -> EngineResult<Option<Location>> {
        if !(REWRITE_MIN_CLUSTERS..=CHUNK_LEN).contains(&n) || self.template.load(Ordering::Relaxed)
        {
            return Ok(None);
        }
        let mut maps: [Option<Option<Mapping>>; CHUNK_LEN] = [None; CHUNK_LEN];
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
    /// at `at` (from [`Volume::rewrite_target`]), with the concatenation of
    /// `parts` (one vectored write), if those slots are still mutable;
    /// `Ok(false)`: nothing was written, append instead.
    ///
    /// Order (module docs): the records reach the tlog file of the
    /// container's segment first, then the data its slots, then the
    /// memtable; a kill can only leave a record without its data, which
    /// replay drops. A failure after the first write fails the volume.
    pub(super) fn rewrite(
        &self,
        w: &mut Writer,
        first: u64,
        at: Location,
        parts: &[&[u8]],
        sums: &[(u32, u128)],
    ) -> EngineResult<bool> {
        self.check_running(w)?;
        let n = sums.len();
        if n == 0
            || u32::try_from(n).is_err()
            || n * CLUSTER_SIZE != parts.iter().map(|p| p.len()).sum::<usize>()
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
        // Fewer than 2^32 (checked above).
        for (i, &(crc, hash)) in (0u32..).zip(sums) {
            TlogRecord {
                cluster: first + u64::from(i),
                mapping: Mapping::Data(Location {
                    slot: at.slot + i,
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
            write_all_parts_at(&file, parts, slot_offset(at.slot))
                .map_err(|e| EngineError::io("rewriting container slots", e))
        });
        if let Err(e) = r {
            self.rewrites.fetch_add(1, Ordering::SeqCst);
            *self.failed.lock() = Some(e.to_string());
            return Err(e);
        }
        if w.mirroring {
            let len = u64::try_from(n * CLUSTER_SIZE).unwrap_or(u64::MAX);
            w.mirror_rewrites
                .push((at.container, slot_offset(at.slot), len));
        }
        {
            let mut mem = self.memtable.write();
            for (i, &(crc, hash)) in (0u32..).zip(sums) {
                let m = Mapping::Data(Location {
                    slot: at.slot + i,
                    crc,
                    hash,
                    ..at
                });
                w.write_seq += 1;
                mem.active.insert((first + u64::from(i), generation), m);
            }
        }
        self.rewrites.fetch_add(1, Ordering::SeqCst);
        self.counters
            .rewritten
            .fetch_add(n as u64, Ordering::Relaxed);
        Ok(true)
    }
}
