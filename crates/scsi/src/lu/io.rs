//! The data path: READ, WRITE, WRITE AND VERIFY, VERIFY, ORWRITE,
//! COMPARE AND WRITE, WRITE SAME, SYNCHRONIZE CACHE and PRE-FETCH, and the
//! inline (non-blocking) READ and WRITE the transport tries first.
//!
//! Invariants:
//! - Every write to the medium holds the stripe locks of its LBA range
//!   shared; COMPARE AND WRITE and ORWRITE hold them exclusive across their
//!   read-compare/modify-write, so they are atomic against all writes.
//! - Writes use FUA when the CDB asks for it or when the caching mode
//!   page's WCE is 0.
//! - A READ buffer holds only the whole blocks the initiator will receive
//!   (bounded by the expected length and the maximum transfer length).
//! - Write data goes to the device as the transport's pieces, never
//!   gathered (the inline path included); only commands that compare data
//!   see it in one piece.
//! - The inline path either completes the command exactly as the blocking
//!   path would, or does nothing and declines (`None`).

use std::borrow::Cow;

use super::LogicalUnit;
use super::checks::Payload;
use super::reply::{CmdResult, Reply, dev_err, first_difference};
use crate::cdb::BlockIo;
use crate::sense::{Sense, asc};
use crate::{Command, Status};
use depot_block::{Later, Stored};

/// Bytes written per device call by WRITE SAME.
const WRITE_SAME_CHUNK: usize = 1 << 20;
/// Bytes read per device call by VERIFY.
const VERIFY_CHUNK: usize = 1 << 20;

impl LogicalUnit {
    pub(super) fn read(&self, cmd: &Command<'_>, io: BlockIo) -> CmdResult {
        let (mut buf, want) = self.read_buffer(cmd, io)?;
        if !buf.is_empty() {
            self.device.read(io.lba, &mut buf).map_err(dev_err(false))?;
        }
        Ok(self.read_reply(buf, want, io))
    }

    /// READ on the inline path: `None` unless the device filled the buffer
    /// without waiting.
    pub(super) fn read_nowait(&self, cmd: &Command<'_>, io: BlockIo) -> Option<Reply> {
        let (mut buf, want) = self.read_buffer(cmd, io).ok()?;
        if !buf.is_empty() && !self.device.try_read_nowait(io.lba, &mut buf).ok()? {
            return None;
        }
        Some(self.read_reply(buf, want, io))
    }

    /// A READ's checks and its buffer: only the blocks the initiator will
    /// receive, whole; plus how many bytes of it the initiator wants.
    fn read_buffer(&self, cmd: &Command<'_>, io: BlockIo) -> Result<(Vec<u8>, usize), Sense> {
        self.check_range(io.lba, u64::from(io.blocks))?;
        self.check_transfer(io.blocks)?;
        let bs = self.limits.block_size as usize;
        let want = (io.blocks as usize * bs).min(cmd.expected_in as usize);
        Ok((vec![0u8; want.div_ceil(bs) * bs], want))
    }

    /// The GOOD reply of a READ whose buffer was filled.
    fn read_reply(&self, mut buf: Vec<u8>, want: usize, io: BlockIo) -> Reply {
        buf.truncate(want);
        Reply {
            status: Status::GOOD,
            sense: None,
            data: buf,
            transfer_length: io.blocks.saturating_mul(self.limits.block_size),
        }
    }

    /// A WRITE's checks and the whole blocks of data it carries.
    fn write_payload<'a>(&self, cmd: &Command<'a>, io: BlockIo) -> Result<Payload<'a>, Sense> {
        self.check_range(io.lba, u64::from(io.blocks))?;
        self.check_transfer(io.blocks)?;
        self.check_writable()?;
        self.write_data(cmd, io.blocks)
    }

    /// WRITE, and WRITE AND VERIFY when `verify`.
    pub(super) fn write(&self, cmd: &Command<'_>, io: BlockIo, verify: bool) -> CmdResult {
        let data = self.write_payload(cmd, io)?;
        if data.len == 0 {
            return Ok(Reply::good());
        }
        let n = (data.len / self.limits.block_size as usize) as u64;
        {
            let _guard = self.locks.shared(io.lba, n);
            self.device
                .write_vectored(io.lba, &data.pieces, self.fua(io.fua || verify))
                .map_err(dev_err(true))?;
        }
        if verify {
            let mut back = vec![0u8; data.len];
            self.device
                .read(io.lba, &mut back)
                .map_err(dev_err(false))?;
            if let Some(off) = first_difference(&back, &data.gather()) {
                return Err(Sense::miscompare(off as u64));
            }
        }
        Ok(Reply::good())
    }

    /// WRITE on the inline path: a cached (non-FUA, WCE = 1) write whose
    /// stripe locks are free and which the device stores without waiting,
    /// handed over in the pieces it arrived in; `None` otherwise, with
    /// nothing written. `Err(later)`: stored, and complete when `later`
    /// settles (the device's mirror must hold it first).
    pub(super) fn write_nowait(
        &self,
        cmd: &Command<'_>,
        io: BlockIo,
    ) -> Option<Result<Reply, Later>> {
        if io.fua || !self.mode.wce() {
            return None;
        }
        let data = self.write_payload(cmd, io).ok()?;
        if data.len == 0 {
            return None;
        }
        let n = (data.len / self.limits.block_size as usize) as u64;
        let _guard = self.locks.try_shared(io.lba, n)?;
        match self.device.try_write_deferred(io.lba, &data.pieces).ok()? {
            Stored::Declined => None,
            Stored::Done => Some(Ok(Reply::good())),
            Stored::Later(later) => Some(Err(later)),
        }
    }

    pub(super) fn verify(&self, cmd: &Command<'_>, io: BlockIo, bytchk: u8) -> CmdResult {
        self.check_range(io.lba, u64::from(io.blocks))?;
        self.check_transfer(io.blocks)?;
        let bs = self.limits.block_size as usize;
        let (expected, blocks): (Cow<'_, [u8]>, u64) = match bytchk {
            0 => (Cow::Borrowed(&[]), u64::from(io.blocks)),
            1 => {
                let d = self.write_data(cmd, io.blocks)?;
                let blocks = (d.len / bs) as u64;
                (d.gather(), blocks)
            }
            _ => {
                if io.blocks == 0 {
                    return Ok(Reply::good());
                }
                let d = cmd
                    .data_out
                    .head(bs)
                    .ok_or_else(|| Sense::illegal(asc::INVALID_FIELD_IN_IU))?;
                (d, u64::from(io.blocks))
            }
        };
        let chunk = (VERIFY_CHUNK / bs).max(1);
        let mut buf = vec![0u8; crate::min_usize(chunk, blocks) * bs];
        // Blocks and bytes done: at most `blocks` (from a u32, or the
        // length of the data-out buffer), so within a usize.
        let (mut done, mut base) = (0u64, 0usize);
        while done < blocks {
            let n = crate::min_usize(chunk, blocks - done);
            let len = n * bs;
            self.device
                .read(io.lba + done, &mut buf[..len])
                .map_err(dev_err(false))?;
            match bytchk {
                1 => {
                    if let Some(off) = first_difference(&buf[..len], &expected[base..base + len]) {
                        return Err(Sense::miscompare((base + off) as u64));
                    }
                }
                3 => {
                    for block in buf[..len].chunks_exact(bs) {
                        if let Some(off) = first_difference(block, &expected) {
                            return Err(Sense::miscompare(off as u64));
                        }
                    }
                }
                _ => {}
            }
            done += n as u64;
            base += len;
        }
        Ok(Reply::good())
    }

    pub(super) fn or_write(&self, cmd: &Command<'_>, io: BlockIo) -> CmdResult {
        self.check_range(io.lba, u64::from(io.blocks))?;
        self.check_transfer(io.blocks)?;
        self.check_writable()?;
        let data = self.write_data(cmd, io.blocks)?;
        if data.len == 0 {
            return Ok(Reply::good());
        }
        let n = (data.len / self.limits.block_size as usize) as u64;
        let _guard = self.locks.exclusive(io.lba, n);
        let mut cur = vec![0u8; data.len];
        self.device.read(io.lba, &mut cur).map_err(dev_err(false))?;
        for (c, d) in cur.iter_mut().zip(data.pieces.iter().copied().flatten()) {
            *c |= *d;
        }
        self.device
            .write(io.lba, &cur, self.fua(io.fua))
            .map_err(dev_err(true))?;
        Ok(Reply::good())
    }

    pub(super) fn compare_and_write(&self, cmd: &Command<'_>, io: BlockIo) -> CmdResult {
        if io.blocks > u32::from(self.limits.max_caw_blocks) {
            return Err(Sense::invalid_cdb_field(13, None));
        }
        self.check_range(io.lba, u64::from(io.blocks))?;
        self.check_writable()?;
        let len = io.blocks as usize * self.limits.block_size as usize;
        if cmd.data_out.len() != 2 * len {
            // The data-out must hold exactly the verify and write halves
            // (this also catches 256 blocks wrapping to 0 in the CDB).
            return Err(Sense::invalid_cdb_field(13, None));
        }
        if io.blocks == 0 {
            return Ok(Reply::good());
        }
        let both = cmd
            .data_out
            .head(2 * len)
            .ok_or_else(|| Sense::invalid_cdb_field(13, None))?;
        let (verify, write) = both.split_at(len);
        let _guard = self.locks.exclusive(io.lba, u64::from(io.blocks));
        let mut cur = vec![0u8; len];
        self.device.read(io.lba, &mut cur).map_err(dev_err(false))?;
        if let Some(off) = first_difference(&cur, verify) {
            return Err(Sense::miscompare(off as u64));
        }
        self.device
            .write(io.lba, write, self.fua(io.fua))
            .map_err(dev_err(true))?;
        Ok(Reply::good())
    }

    pub(super) fn write_same(
        &self,
        cmd: &Command<'_>,
        lba: u64,
        blocks: u32,
        unmap: bool,
        anchor: bool,
        ndob: bool,
    ) -> CmdResult {
        if anchor {
            return Err(Sense::invalid_cdb_field(1, Some(4)));
        }
        if blocks == 0 {
            // WSNZ=1: "to the end of the medium" is not supported.
            self.check_range(lba, 0)?;
            return Err(Sense::invalid_cdb_field(10, None));
        }
        if u64::from(blocks) > self.limits.max_write_same_blocks {
            return Err(Sense::invalid_cdb_field(10, None));
        }
        self.check_range(lba, u64::from(blocks))?;
        self.check_writable()?;
        if unmap && !self.limits.thin {
            return Err(Sense::invalid_cdb_field(1, Some(3)));
        }
        let bs = self.limits.block_size as usize;
        let pattern: Cow<'_, [u8]> = if ndob {
            Cow::Owned(vec![0u8; bs])
        } else {
            match cmd.data_out.head(bs) {
                Some(p) if cmd.data_out.len() == bs => p,
                _ => return Err(Sense::illegal(asc::INVALID_FIELD_IN_IU)),
            }
        };
        let blocks = u64::from(blocks);
        let _guard = self.locks.shared(lba, blocks);
        if unmap && pattern.iter().all(|b| *b == 0) {
            // LBPRZ: unmapped blocks read as zeros, exactly what was asked.
            self.device.unmap(lba, blocks).map_err(dev_err(true))?;
            return Ok(Reply::good());
        }
        let chunk = (WRITE_SAME_CHUNK / bs).max(1);
        let buf = pattern.repeat(crate::min_usize(chunk, blocks));
        let fua = self.fua(false);
        let mut done = 0u64;
        while done < blocks {
            let n = crate::min_usize(chunk, blocks - done);
            self.device
                .write(lba + done, &buf[..n * bs], fua)
                .map_err(dev_err(true))?;
            done += n as u64;
        }
        Ok(Reply::good())
    }

    /// SYNCHRONIZE CACHE: the range is checked, the whole device flushed.
    pub(super) fn synchronize_cache(&self, lba: u64, blocks: u32) -> CmdResult {
        self.check_range(lba, u64::from(blocks))?;
        self.device.flush().map_err(dev_err(true))?;
        Ok(Reply::good())
    }

    /// PRE-FETCH: the range is checked; nothing is cached ahead.
    pub(super) fn pre_fetch(&self, lba: u64, blocks: u32) -> CmdResult {
        self.check_range(lba, u64::from(blocks))?;
        Ok(Reply::good())
    }
}
