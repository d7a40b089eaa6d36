//! The [`BlockDevice`] impl of [`Volume`]: block addressing and range checks
//! on top of the byte-addressed read, write, sync and unmap paths of the
//! sibling modules, and the non-blocking read and write the transports try
//! first.
//!
//! Invariants:
//! - Out-of-range requests are errors, never declines.
//! - `try_read_nowait` and the non-blocking writes decline (`Ok(false)`,
//!   nothing written) whenever they would wait; the blocking call then
//!   reports any error.

use std::sync::atomic::Ordering;

use depot_block::{BlockDevice, BlockError, BlockResult, Later, Provisioning, Stored};

use crate::format::CLUSTER_SIZE_U32;

use super::Volume;

impl BlockDevice for Volume {
    fn block_size(&self) -> u32 {
        self.block_size
    }

    fn num_blocks(&self) -> u64 {
        self.num_blocks.load(Ordering::Acquire)
    }

    fn physical_block_exponent(&self) -> u8 {
        if self.block_size < CLUSTER_SIZE_U32 {
            // At most 32 (trailing zeros of a u32).
            u8::try_from((CLUSTER_SIZE_U32 / self.block_size).trailing_zeros()).unwrap_or(u8::MAX)
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
        if self.inactive() {
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

    /// Completes a non-FUA write only when it needs no waiting: whole
    /// clusters (no read-modify-write), at most `NOWAIT_WRITE_MAX` (128 KiB),
    /// the write buffer below its cap, its cluster range and the writer
    /// lock free, and either slots it may rewrite in place or room in the
    /// already-open container (so no file is created and nothing is sealed
    /// inline), and no mirror that must hold every write before it
    /// completes (a write round waits). The data then goes into the page
    /// cache with one buffered write, exactly as `write` would do it.
    /// Declines (`Ok(false)`, nothing written) otherwise. One piece of
    /// [`try_write_vectored_nowait`](BlockDevice::try_write_vectored_nowait).
    fn try_write_nowait(&self, lba: u64, data: &[u8]) -> BlockResult<bool> {
        self.try_write_vectored_nowait(lba, &[data])
    }

    /// [`try_write_nowait`](BlockDevice::try_write_nowait) of the
    /// concatenation of `pieces`, stored as they are: one vectored write
    /// (`pwritev`) into the open container or the rewritten slots, no
    /// gathering. Only a cluster cut between two pieces is copied, to
    /// checksum it.
    fn try_write_vectored_nowait(&self, lba: u64, pieces: &[&[u8]]) -> BlockResult<bool> {
        let len = pieces.iter().map(|p| p.len()).sum();
        let (off, len) = self.byte_range(lba, len)?;
        Ok(self
            .try_append_inline(off, pieces, len, false)
            .map_err(BlockError::from)?
            .is_some())
    }

    /// [`try_write_vectored_nowait`](BlockDevice::try_write_vectored_nowait)
    /// that also takes writes a mirror must hold before they complete:
    /// stored at once, completed once the mirror's round for it is held
    /// (`Stored::Later`), so no thread waits for the round trip.
    fn try_write_deferred(&self, lba: u64, pieces: &[&[u8]]) -> BlockResult<Stored> {
        let len = pieces.iter().map(|p| p.len()).sum();
        let (off, len) = self.byte_range(lba, len)?;
        Ok(
            match self
                .try_append_inline(off, pieces, len, true)
                .map_err(BlockError::from)?
            {
                None => Stored::Declined,
                Some(None) => Stored::Done,
                Some(Some(held)) => Stored::Later(Later::new(move |settle| {
                    held.then(Box::new(move || settle(Ok(()))));
                })),
            },
        )
    }

    fn write(&self, lba: u64, data: &[u8], fua: bool) -> BlockResult<()> {
        let (off, _) = self.byte_range(lba, data.len())?;
        self.write_bytes(off, data, fua)
            .and_then(|()| self.mirror_writes())
            .map_err(BlockError::from)
    }

    /// The pieces go to the container files as they are (see
    /// `write_pieces`): a 1 MiB write that arrived in four PDUs is stored
    /// without gathering it first.
    fn write_vectored(&self, lba: u64, pieces: &[&[u8]], fua: bool) -> BlockResult<()> {
        let len = pieces.iter().map(|p| p.len()).sum();
        let (off, _) = self.byte_range(lba, len)?;
        self.write_pieces(off, pieces, fua)
            .and_then(|()| self.mirror_writes())
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
            .and_then(|()| self.mirror_writes())
            .map_err(BlockError::from)
    }

    fn provisioning(&self, lba: u64, max_blocks: u64) -> BlockResult<(Provisioning, u64)> {
        self.check_ok()?;
        self.provisioning_inner(lba, max_blocks)
            .map_err(BlockError::from)
    }
}
