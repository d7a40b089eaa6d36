//! Unmap (SCSI UNMAP / WRITE SAME with unmap) and provisioning status (GET
//! LBA STATUS): whole clusters are unmapped with records in the tlog,
//! partial clusters at the edges are written with zeros, and provisioning
//! runs are found from the candidate clusters of the volume and its
//! parents.
//!
//! Invariants:
//! - An unmap record goes through the tlog and the memtable like any write,
//!   under the clusters' range lock and the writer lock; only clusters that
//!   resolve to data get one.
//! - A cluster reads as zeros after an unmap, through its whole parent
//!   chain.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;

use depot_block::Provisioning;

use crate::error::{EngineError, EngineResult};
use crate::format::{CLUSTER_SIZE, CLUSTER_SIZE_U64, Mapping, TLOG_RECORD_SIZE, TlogRecord};

use super::write::TLOG_BUF_FLUSH;
use super::{Volume, Writer};

impl Volume {
    pub(super) fn append_unmaps(&self, w: &mut Writer, clusters: &[u64]) -> EngineResult<()> {
        self.check_running(w)?;
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

    /// Clusters in `[from, to)` that may be mapped (any generation, any
    /// ancestor); a superset the caller resolves exactly.
    pub(super) fn candidates(
        &self,
        from: u64,
        to: u64,
        out: &mut BTreeSet<u64>,
    ) -> EngineResult<()> {
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

    pub(super) fn unmap_bytes(&self, off: u64, len: u64) -> EngineResult<()> {
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
                self.write_bytes(lo, &zeros[..crate::conv::usize_of(hi - lo)?], false)?;
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

    pub(super) fn provisioning_inner(
        &self,
        lba: u64,
        max_blocks: u64,
    ) -> EngineResult<(Provisioning, u64)> {
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
}
