//! The block device a clustered router puts under every vDisk's LUN, and
//! what it switches between:
//!
//! - [`Routed`] holds the device of the moment: the owner's real device
//!   (engine volume or raw file) while this router owns the vDisk, a
//!   [`Standby`] otherwise. Every answer from the real device is given only
//!   if the router's fence is still open once the device is done, so
//!   nothing reaches an initiator after this router's lease could have
//!   lapsed (a late write may be on local flash, but it is never
//!   acknowledged).
//! - Switching ([`Routed::switch`]) and holding ([`Routed::hold`]) take
//!   the device's write lock: they wait for commands in progress, and new
//!   commands wait until the switch is done (the inline, non-blocking path
//!   declines instead of waiting), which is how a move pauses I/O without
//!   failing it.
//! - [`Standby`] has the vDisk's geometry for the commands a standby port
//!   serves (INQUIRY, REPORT LUNS, RTPG, PR) and answers `Unavailable` to
//!   any I/O that reaches it.
//!
//! Invariants: on the I/O path a `Routed` device adds one uncontended read
//! lock, one atomic load and one clock read per command; geometry calls
//! (`block_size`, `num_blocks`, ...) and the non-blocking calls never wait
//! for a switch or a hold, because the inline path makes them on the
//! runtime's threads, which a move needs to talk to the other router.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use depot_block::{BlockDevice, BlockError, BlockResult, Later, Provisioning, Stored};
use depot_cluster::Fence;
use parking_lot::{RwLock, RwLockWriteGuard};

fn lapsed() -> BlockError {
    BlockError::Unavailable("this router's cluster lease lapsed; it no longer serves I/O".into())
}

/// The device under a clustered vDisk's LUN.
pub struct Routed {
    inner: RwLock<Arc<dyn BlockDevice>>,
    fence: Arc<Fence>,
    /// Capacity as last read, for callers that must not wait while I/O is
    /// held (the inline path runs on the runtime's threads: blocking there
    /// could stall the very connection a move waits on).
    blocks: AtomicU64,
    /// Geometry that never changes for a vDisk: block size, physical block
    /// exponent, thin provisioning.
    geometry: (u32, u8, bool),
}

/// I/O held on a [`Routed`] device until this is dropped (or passed to
/// [`Routed::switch_held`]).
pub struct Held<'a>(RwLockWriteGuard<'a, Arc<dyn BlockDevice>>);

impl Routed {
    /// Starts with `inner`.
    pub fn new(inner: Arc<dyn BlockDevice>, fence: Arc<Fence>) -> Self {
        let geometry = (
            inner.block_size(),
            inner.physical_block_exponent(),
            inner.thin_provisioned(),
        );
        Routed {
            blocks: AtomicU64::new(inner.num_blocks()),
            inner: RwLock::new(inner),
            fence,
            geometry,
        }
    }

    /// Replaces the device once commands in progress are done.
    pub fn switch(&self, to: Arc<dyn BlockDevice>) {
        *self.inner.write() = to;
    }

    /// Holds new commands (they wait; the non-blocking path declines) once
    /// those in progress are done: how a move pauses I/O without failing it.
    pub fn hold(&self) -> Held<'_> {
        Held(self.inner.write())
    }

    /// Replaces the device while holding, then lets commands go on.
    pub fn switch_held(held: Held<'_>, to: Arc<dyn BlockDevice>) {
        let mut g = held.0;
        *g = to;
    }

    fn gate<T>(&self, r: BlockResult<T>) -> BlockResult<T> {
        if self.fence.is_open() {
            r
        } else {
            Err(lapsed())
        }
    }

    /// Runs a non-blocking call, declining when a switch is under way.
    fn nowait(&self, f: impl FnOnce(&dyn BlockDevice) -> BlockResult<bool>) -> BlockResult<bool> {
        let Some(d) = self.inner.try_read() else {
            return Ok(false);
        };
        let r = f(d.as_ref());
        self.gate(r)
    }
}

impl BlockDevice for Routed {
    fn block_size(&self) -> u32 {
        self.geometry.0
    }
    /// Never waits: while I/O is held, the capacity as last read.
    fn num_blocks(&self) -> u64 {
        match self.inner.try_read() {
            Some(d) => {
                let n = d.num_blocks();
                self.blocks.store(n, Ordering::Relaxed);
                n
            }
            None => self.blocks.load(Ordering::Relaxed),
        }
    }
    fn physical_block_exponent(&self) -> u8 {
        self.geometry.1
    }
    fn read(&self, lba: u64, buf: &mut [u8]) -> BlockResult<()> {
        let r = self.inner.read().read(lba, buf);
        self.gate(r)
    }
    fn write(&self, lba: u64, data: &[u8], fua: bool) -> BlockResult<()> {
        let r = self.inner.read().write(lba, data, fua);
        self.gate(r)
    }
    fn write_vectored(&self, lba: u64, pieces: &[&[u8]], fua: bool) -> BlockResult<()> {
        let r = self.inner.read().write_vectored(lba, pieces, fua);
        self.gate(r)
    }
    fn flush(&self) -> BlockResult<()> {
        let r = self.inner.read().flush();
        self.gate(r)
    }
    fn try_read_nowait(&self, lba: u64, buf: &mut [u8]) -> BlockResult<bool> {
        self.nowait(|d| d.try_read_nowait(lba, buf))
    }
    fn try_write_nowait(&self, lba: u64, data: &[u8]) -> BlockResult<bool> {
        self.nowait(|d| d.try_write_nowait(lba, data))
    }
    fn try_write_vectored_nowait(&self, lba: u64, pieces: &[&[u8]]) -> BlockResult<bool> {
        self.nowait(|d| d.try_write_vectored_nowait(lba, pieces))
    }
    /// A deferred answer is gated too, when it comes: a write the mirror
    /// held only after this router's lease lapsed is not acknowledged.
    fn try_write_deferred(&self, lba: u64, pieces: &[&[u8]]) -> BlockResult<Stored> {
        let Some(d) = self.inner.try_read() else {
            return Ok(Stored::Declined);
        };
        let r = d.try_write_deferred(lba, pieces);
        drop(d);
        match self.gate(r)? {
            Stored::Later(later) => {
                let fence = self.fence.clone();
                Ok(Stored::Later(Later::new(move |settle| {
                    later.then(Box::new(move |r| {
                        settle(if fence.is_open() { r } else { Err(lapsed()) });
                    }));
                })))
            }
            other => Ok(other),
        }
    }
    fn thin_provisioned(&self) -> bool {
        self.geometry.2
    }
    fn unmap(&self, lba: u64, blocks: u64) -> BlockResult<()> {
        let r = self.inner.read().unmap(lba, blocks);
        self.gate(r)
    }
    fn provisioning(&self, lba: u64, max_blocks: u64) -> BlockResult<(Provisioning, u64)> {
        let r = self.inner.read().provisioning(lba, max_blocks);
        self.gate(r)
    }
}

/// A vDisk another router owns: geometry only.
pub struct Standby {
    block_size: u32,
    blocks: AtomicU64,
    thin: bool,
}

impl Standby {
    /// A standby device of `size_bytes` in blocks of `block_size`.
    pub fn new(size_bytes: u64, block_size: u32, thin: bool) -> Self {
        Standby {
            block_size,
            blocks: AtomicU64::new(size_bytes / u64::from(block_size.max(1))),
            thin,
        }
    }
}

fn not_owner() -> BlockError {
    BlockError::Unavailable("another router owns this vDisk".into())
}

impl BlockDevice for Standby {
    fn block_size(&self) -> u32 {
        self.block_size
    }
    fn num_blocks(&self) -> u64 {
        self.blocks.load(Ordering::Acquire)
    }
    fn physical_block_exponent(&self) -> u8 {
        // Engine vDisks store 4 KiB clusters (as the owner reports them).
        if self.thin && self.block_size == 512 {
            3
        } else {
            0
        }
    }
    fn read(&self, _lba: u64, _buf: &mut [u8]) -> BlockResult<()> {
        Err(not_owner())
    }
    fn write(&self, _lba: u64, _data: &[u8], _fua: bool) -> BlockResult<()> {
        Err(not_owner())
    }
    fn flush(&self) -> BlockResult<()> {
        Err(not_owner())
    }
    fn thin_provisioned(&self) -> bool {
        self.thin
    }
    fn unmap(&self, _lba: u64, _blocks: u64) -> BlockResult<()> {
        Err(not_owner())
    }
    fn provisioning(&self, _lba: u64, _max_blocks: u64) -> BlockResult<(Provisioning, u64)> {
        Err(not_owner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use depot_block::MemDevice;

    #[test]
    fn a_closed_fence_refuses_what_the_device_did() {
        let mem = Arc::new(MemDevice::new(512, 64));
        let d = Routed::new(mem.clone(), Fence::closed());
        assert!(matches!(
            d.write(0, &[1u8; 512], true),
            Err(BlockError::Unavailable(_))
        ));
        let open = Routed::new(mem, Fence::always_open());
        open.write(0, &[2u8; 512], true).unwrap();
        let mut b = [0u8; 512];
        open.read(0, &mut b).unwrap();
        assert_eq!(b[0], 2);
    }

    #[test]
    fn a_held_device_declines_nowait_and_switches_when_released() {
        let mem: Arc<dyn BlockDevice> = Arc::new(MemDevice::new(512, 64));
        let d = Routed::new(mem, Fence::always_open());
        let held = d.hold();
        assert!(
            !d.try_write_nowait(0, &[1u8; 512]).unwrap(),
            "declines while held"
        );
        Routed::switch_held(held, Arc::new(Standby::new(512 * 64, 512, false)));
        assert!(matches!(
            d.read(0, &mut [0u8; 512]),
            Err(BlockError::Unavailable(_))
        ));
    }

    #[test]
    fn a_switch_changes_what_the_lun_reaches() {
        let mem: Arc<dyn BlockDevice> = Arc::new(MemDevice::new(512, 64));
        let d = Routed::new(mem, Fence::always_open());
        d.write(0, &[1u8; 512], false).unwrap();
        d.switch(Arc::new(Standby::new(512 * 64, 512, false)));
        assert!(matches!(
            d.read(0, &mut [0u8; 512]),
            Err(BlockError::Unavailable(_))
        ));
        assert_eq!(d.num_blocks(), 64);
    }

    #[test]
    fn standby_has_geometry_and_no_data() {
        let s = Standby::new(1 << 20, 512, true);
        assert_eq!(s.num_blocks(), 2048);
        assert_eq!(s.physical_block_exponent(), 3);
        assert!(s.read(0, &mut [0u8; 512]).is_err());
        assert!(s.write(0, &[0u8; 512], false).is_err());
    }
}
