//! [`MeteredDevice`]: a vDisk's `BlockDevice` with its I/O counted into the
//! metric families of `crate::metrics` (the composition root wraps every
//! device in one before handing it to SCSI).
//!
//! Invariants: every command is counted once, when it completes (a deferred
//! write when it settles, its latency including the wait for the mirror);
//! the depth gauge rises when a command starts and falls when it ends.

use std::sync::Arc;
use std::time::Instant;

use depot_block::{BlockDevice, BlockResult, Later, Provisioning, Stored};
use prometheus::{IntCounter, IntGauge};

/// A vDisk's device with its I/O counted (the composition root wraps every
/// device in one before handing it to SCSI).
pub struct MeteredDevice {
    pub(crate) inner: Arc<dyn BlockDevice>,
    pub(crate) read_ops: IntCounter,
    pub(crate) write_ops: IntCounter,
    pub(crate) flush_ops: IntCounter,
    pub(crate) unmap_ops: IntCounter,
    pub(crate) read_bytes: IntCounter,
    pub(crate) write_bytes: IntCounter,
    pub(crate) errors: IntCounter,
    pub(crate) read_latency: prometheus::Histogram,
    pub(crate) write_latency: prometheus::Histogram,
    pub(crate) depth: IntGauge,
    pub(crate) size: IntGauge,
}

impl MeteredDevice {
    /// Updates the size gauge (after a grow).
    pub fn resized(&self) {
        self.size.set(
            i64::try_from(self.inner.num_blocks() * u64::from(self.inner.block_size()))
                .unwrap_or(i64::MAX),
        );
    }

    fn count_read(&self, started: Instant, len: u64) {
        self.read_latency.observe(started.elapsed().as_secs_f64());
        self.read_ops.inc();
        self.read_bytes.inc_by(len);
    }

    fn count_write(&self, started: Instant, len: u64) {
        self.write_latency.observe(started.elapsed().as_secs_f64());
        self.write_ops.inc();
        self.write_bytes.inc_by(len);
    }

    fn track<T>(&self, f: impl FnOnce() -> BlockResult<T>) -> BlockResult<T> {
        self.depth.inc();
        let r = f();
        self.depth.dec();
        if r.is_err() {
            self.errors.inc();
        }
        r
    }
}

impl BlockDevice for MeteredDevice {
    fn block_size(&self) -> u32 {
        self.inner.block_size()
    }

    fn num_blocks(&self) -> u64 {
        self.inner.num_blocks()
    }

    fn physical_block_exponent(&self) -> u8 {
        self.inner.physical_block_exponent()
    }

    fn read(&self, lba: u64, buf: &mut [u8]) -> BlockResult<()> {
        let t = Instant::now();
        let len = buf.len() as u64;
        let r = self.track(|| self.inner.read(lba, buf));
        if r.is_ok() {
            self.count_read(t, len);
        } else {
            self.read_latency.observe(t.elapsed().as_secs_f64());
        }
        r
    }

    fn write(&self, lba: u64, data: &[u8], fua: bool) -> BlockResult<()> {
        self.write_vectored(lba, &[data], fua)
    }

    fn write_vectored(&self, lba: u64, pieces: &[&[u8]], fua: bool) -> BlockResult<()> {
        let t = Instant::now();
        let r = self.track(|| self.inner.write_vectored(lba, pieces, fua));
        if r.is_ok() {
            self.count_write(t, pieces.iter().map(|p| p.len() as u64).sum());
        } else {
            self.write_latency.observe(t.elapsed().as_secs_f64());
        }
        r
    }

    fn try_read_nowait(&self, lba: u64, buf: &mut [u8]) -> BlockResult<bool> {
        let t = Instant::now();
        let len = buf.len() as u64;
        let r = self.track(|| self.inner.try_read_nowait(lba, buf));
        if let Ok(true) = r {
            self.count_read(t, len);
        }
        r
    }

    fn try_write_nowait(&self, lba: u64, data: &[u8]) -> BlockResult<bool> {
        let t = Instant::now();
        let r = self.track(|| self.inner.try_write_nowait(lba, data));
        if let Ok(true) = r {
            self.count_write(t, data.len() as u64);
        }
        r
    }

    fn try_write_vectored_nowait(&self, lba: u64, pieces: &[&[u8]]) -> BlockResult<bool> {
        let t = Instant::now();
        let r = self.track(|| self.inner.try_write_vectored_nowait(lba, pieces));
        if let Ok(true) = r {
            self.count_write(t, pieces.iter().map(|p| p.len() as u64).sum());
        }
        r
    }

    /// A deferred write counts when it settles: its latency and the queue
    /// depth include the wait for the mirror.
    fn try_write_deferred(&self, lba: u64, pieces: &[&[u8]]) -> BlockResult<Stored> {
        let t = Instant::now();
        let len = pieces.iter().map(|p| p.len() as u64).sum();
        self.depth.inc();
        let r = self.inner.try_write_deferred(lba, pieces);
        match r {
            Ok(Stored::Later(later)) => {
                let (latency, ops, bytes, depth, errors) = (
                    self.write_latency.clone(),
                    self.write_ops.clone(),
                    self.write_bytes.clone(),
                    self.depth.clone(),
                    self.errors.clone(),
                );
                Ok(Stored::Later(Later::new(move |settle| {
                    later.then(Box::new(move |r| {
                        depth.dec();
                        latency.observe(t.elapsed().as_secs_f64());
                        if r.is_ok() {
                            ops.inc();
                            bytes.inc_by(len);
                        } else {
                            errors.inc();
                        }
                        settle(r);
                    }));
                })))
            }
            r => {
                self.depth.dec();
                match &r {
                    Ok(Stored::Done) => self.count_write(t, len),
                    Err(_) => self.errors.inc(),
                    _ => {}
                }
                r
            }
        }
    }

    fn flush(&self) -> BlockResult<()> {
        self.flush_ops.inc();
        self.track(|| self.inner.flush())
    }

    fn thin_provisioned(&self) -> bool {
        self.inner.thin_provisioned()
    }

    fn unmap(&self, lba: u64, blocks: u64) -> BlockResult<()> {
        self.unmap_ops.inc();
        self.track(|| self.inner.unmap(lba, blocks))
    }

    fn provisioning(&self, lba: u64, max_blocks: u64) -> BlockResult<(Provisioning, u64)> {
        self.inner.provisioning(lba, max_blocks)
    }
}
