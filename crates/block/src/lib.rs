//! The `BlockDevice` seam: what SCSI block semantics need from storage.
//!
//! Layering is one-way: the iSCSI wire protocol knows nothing of storage, the
//! SCSI layer (`depot-scsi`) speaks only this trait, and storage engines (the
//! tiered engine, the raw file, memory) implement it. Only the binary wires a
//! concrete device to a LUN.
//!
//! Invariants every implementation keeps:
//! - Addresses and lengths are in logical blocks of [`BlockDevice::block_size`]
//!   bytes; buffers passed in are whole multiples of it. Callers (the SCSI
//!   layer) range-check against [`BlockDevice::num_blocks`] before calling;
//!   implementations still refuse out-of-range I/O with
//!   [`BlockError::OutOfRange`] rather than trusting them.
//! - A `write` with `fua = true`, or any write followed by a successful
//!   `flush`, is durable: it survives the process being killed.
//! - Blocks never written, or unmapped, read as zeros.
//! - All methods take `&self` and may be called from many threads at once;
//!   concurrent writes to the same block land in some order, never torn
//!   within a block.

mod file;
mod mem;

pub use file::{FileDevice, pread_nowait};
pub use mem::MemDevice;

/// What can go wrong below the SCSI layer. The SCSI crate maps each variant to
/// sense data in one place (`depot_scsi::sense`).
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The request addresses blocks past the end of the device.
    #[error("blocks {lba}+{blocks} are beyond the end of the device")]
    OutOfRange {
        /// First block of the request.
        lba: u64,
        /// Number of blocks requested.
        blocks: u64,
    },
    /// Stored data failed its integrity check; nothing is returned for it.
    #[error("integrity check failed at block {lba}: {detail}")]
    Integrity {
        /// First logical block whose data is bad.
        lba: u64,
        /// What failed.
        detail: String,
    },
    /// The device refuses writes (read-only vDisk, template, snapshot).
    #[error("device is read-only")]
    ReadOnly,
    /// No space left to store the write.
    #[error("no space left for the write: {0}")]
    NoSpace(String),
    /// A dependency (backend, peer) is not reachable now; retrying may work.
    #[error("temporarily unavailable: {0}")]
    Unavailable(String),
    /// The operation is not supported by this device (e.g. unmap on a thick
    /// device).
    #[error("operation not supported: {0}")]
    Unsupported(&'static str),
    /// An I/O error from the local system.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// Result alias for block operations.
pub type BlockResult<T> = Result<T, BlockError>;

/// Provisioning status of a run of blocks, as GET LBA STATUS reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provisioning {
    /// Blocks hold written data.
    Mapped,
    /// Blocks are unallocated and read as zeros.
    Deallocated,
}

/// Receives the answer of a write stored without waiting ([`Later`]).
pub type Settle = Box<dyn FnOnce(BlockResult<()>) + Send>;

/// A write stored without waiting whose answer comes later (a mirror must
/// hold it first): [`then`](Later::then) registers who gets the answer,
/// on whatever thread settles it (at once if it is settled already).
pub struct Later(Box<dyn FnOnce(Settle) + Send>);

impl Later {
    /// A pending answer; `register` is called with the receiver.
    pub fn new(register: impl FnOnce(Settle) + Send + 'static) -> Self {
        Later(Box::new(register))
    }

    /// Hands the answer to `settle` once it is known.
    pub fn then(self, settle: Settle) {
        (self.0)(settle);
    }
}

impl std::fmt::Debug for Later {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Later")
    }
}

/// What [`BlockDevice::try_write_deferred`] did.
#[derive(Debug)]
pub enum Stored {
    /// Nothing was written: write with `write` where blocking is allowed.
    Declined,
    /// Written, and the write is complete.
    Done,
    /// Written; the write completes when this settles.
    Later(Later),
}

/// A block device a LUN is backed by.
pub trait BlockDevice: Send + Sync + 'static {
    /// Logical block size in bytes (512 or 4096).
    fn block_size(&self) -> u32;

    /// Capacity in logical blocks. May grow while the device is in use.
    fn num_blocks(&self) -> u64;

    /// Logical blocks per physical block, as a power of two (READ CAPACITY 16
    /// "logical blocks per physical block exponent"): 3 for 512-byte blocks
    /// over 4 KiB clusters.
    fn physical_block_exponent(&self) -> u8 {
        0
    }

    /// Reads `buf.len() / block_size` blocks starting at `lba` into `buf`.
    fn read(&self, lba: u64, buf: &mut [u8]) -> BlockResult<()>;

    /// Writes `data` (whole blocks) at `lba`. With `fua`, returns only once
    /// the data is durable.
    fn write(&self, lba: u64, data: &[u8], fua: bool) -> BlockResult<()>;

    /// Writes the concatenation of `pieces` (whole blocks in all, each
    /// piece any length) at `lba`, as [`write`](Self::write) would write
    /// it gathered. Transports pass the data segments of the PDUs a write
    /// arrived in, so a device that can store them as they are saves a
    /// copy of the whole write. The default gathers them.
    fn write_vectored(&self, lba: u64, pieces: &[&[u8]], fua: bool) -> BlockResult<()> {
        match pieces {
            [one] => self.write(lba, one, fua),
            _ => self.write(lba, &pieces.concat(), fua),
        }
    }

    /// Makes every write that completed before this call durable.
    fn flush(&self) -> BlockResult<()>;

    /// Like [`read`](Self::read), but only if it can finish without waiting
    /// for a disk or the network: the data is in memory or the page cache.
    /// `Ok(false)` means it would have waited; `buf` may then hold anything
    /// and the caller repeats the read with `read` on a thread that may
    /// block. Lets a transport complete hot reads on the thread that received
    /// them. The default never completes.
    fn try_read_nowait(&self, _lba: u64, _buf: &mut [u8]) -> BlockResult<bool> {
        Ok(false)
    }

    /// Like a non-FUA [`write`](Self::write), but only if it can finish
    /// without waiting for a disk, the network or a throttle. `Ok(false)`
    /// means nothing was written and the caller repeats the write with
    /// `write` on a thread that may block. The default never completes.
    fn try_write_nowait(&self, _lba: u64, _data: &[u8]) -> BlockResult<bool> {
        Ok(false)
    }

    /// [`try_write_nowait`](Self::try_write_nowait) of the concatenation
    /// of `pieces`, as [`write_vectored`](Self::write_vectored) is to
    /// [`write`](Self::write): transports pass the data segments a write
    /// arrived in. The default passes one piece through and declines
    /// several, so a device that completes writes inline overrides it to
    /// store the pieces as they are.
    fn try_write_vectored_nowait(&self, lba: u64, pieces: &[&[u8]]) -> BlockResult<bool> {
        match pieces {
            [one] => self.try_write_nowait(lba, one),
            _ => Ok(false),
        }
    }

    /// [`try_write_vectored_nowait`](Self::try_write_vectored_nowait),
    /// except that a device may store the write without waiting and
    /// complete it later ([`Stored::Later`]: a mirror must hold it first),
    /// so the caller's thread does not wait for it. The default completes
    /// at once or declines.
    fn try_write_deferred(&self, lba: u64, pieces: &[&[u8]]) -> BlockResult<Stored> {
        Ok(if self.try_write_vectored_nowait(lba, pieces)? {
            Stored::Done
        } else {
            Stored::Declined
        })
    }

    /// Whether the device is thin-provisioned: `unmap` releases space and
    /// `provisioning` answers truthfully.
    fn thin_provisioned(&self) -> bool {
        false
    }

    /// Deallocates `blocks` blocks at `lba`; they read as zeros afterwards.
    fn unmap(&self, _lba: u64, _blocks: u64) -> BlockResult<()> {
        Err(BlockError::Unsupported("unmap"))
    }

    /// Provisioning status of the run starting at `lba`: the status of `lba`
    /// and how many consecutive blocks (at least 1, at most `max_blocks`)
    /// share it.
    fn provisioning(&self, lba: u64, max_blocks: u64) -> BlockResult<(Provisioning, u64)> {
        check_range(self.num_blocks(), lba, 1)?;
        let remaining = self.num_blocks() - lba;
        Ok((Provisioning::Mapped, max_blocks.clamp(1, remaining)))
    }
}

/// Checks that `blocks` blocks at `lba` fit in a device of `num_blocks`.
pub fn check_range(num_blocks: u64, lba: u64, blocks: u64) -> BlockResult<()> {
    match lba.checked_add(blocks) {
        Some(end) if end <= num_blocks => Ok(()),
        _ => Err(BlockError::OutOfRange { lba, blocks }),
    }
}

/// Number of whole blocks in `len` bytes, or an error if `len` is not a
/// multiple of `block_size`.
pub fn blocks_in(len: usize, block_size: u32) -> BlockResult<u64> {
    let bs = block_size as usize;
    if bs == 0 || !len.is_multiple_of(bs) {
        return Err(BlockError::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("buffer of {len} bytes is not whole {block_size}-byte blocks"),
        )));
    }
    Ok((len / bs) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_checks_overflow() {
        assert!(check_range(10, 0, 10).is_ok());
        assert!(check_range(10, 9, 1).is_ok());
        assert!(check_range(10, 10, 1).is_err());
        assert!(check_range(10, u64::MAX, 2).is_err());
        assert!(check_range(10, 10, 0).is_ok());
    }

    #[test]
    fn blocks_in_requires_whole_blocks() {
        assert_eq!(blocks_in(4096, 512).unwrap(), 8);
        assert!(blocks_in(100, 512).is_err());
        assert!(blocks_in(512, 0).is_err());
    }
}
