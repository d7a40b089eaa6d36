//! Capacity and logical block provisioning: READ CAPACITY (10/16) with
//! the LBPME / LBPRZ bits, GET LBA STATUS, UNMAP, and the unit attention
//! for a capacity change.
//!
//! Invariants: the capacity reported is the device's at the time of the
//! command (it may grow while in use); UNMAP validates every descriptor
//! (count, per-descriptor length, range) before deallocating anything and
//! holds each range's stripe locks shared while it is unmapped; unmapped
//! blocks read as zeros (LBPRZ); GET LBA STATUS returns at most
//! [`MAX_LBA_STATUS_DESCRIPTORS`] descriptors, always at least one.

use depot_block::Provisioning;

use super::LogicalUnit;
use super::reply::{CmdResult, Reply, dev_err};
use crate::Command;
use crate::sense::{Sense, asc};

/// Most GET LBA STATUS descriptors returned.
const MAX_LBA_STATUS_DESCRIPTORS: u32 = 512;

impl LogicalUnit {
    /// Establishes CAPACITY DATA HAS CHANGED for every nexus (call after
    /// the device grew or shrank).
    pub fn capacity_changed(&self) {
        self.ua.post_all(asc::CAPACITY_DATA_CHANGED);
    }

    pub(super) fn read_capacity_10(&self) -> CmdResult {
        let last = self.device.num_blocks().saturating_sub(1);
        let mut d = Vec::with_capacity(8);
        d.extend_from_slice(&u32::try_from(last).unwrap_or(u32::MAX).to_be_bytes());
        d.extend_from_slice(&self.limits.block_size.to_be_bytes());
        Ok(Reply::alloc(d, 8))
    }

    pub(super) fn read_capacity_16(&self, alloc_len: u32) -> CmdResult {
        let mut d = vec![0u8; 32];
        d[0..8].copy_from_slice(&self.device.num_blocks().saturating_sub(1).to_be_bytes());
        d[8..12].copy_from_slice(&self.limits.block_size.to_be_bytes());
        d[13] = self.limits.lbppbe & 0x0f;
        if self.limits.thin {
            d[14] = 0x80 | 0x40; // LBPME, LBPRZ
        }
        Ok(Reply::alloc(d, alloc_len))
    }

    pub(super) fn unmap(&self, cmd: &Command<'_>, anchor: bool, param_len: u32) -> CmdResult {
        if !self.limits.thin {
            return Err(Sense::invalid_opcode());
        }
        if anchor {
            return Err(Sense::invalid_cdb_field(1, Some(0)));
        }
        self.check_writable()?;
        if param_len == 0 {
            return Ok(Reply::good());
        }
        if param_len < 8 {
            return Err(Sense::param_list_length());
        }
        let p = Self::params(cmd, param_len)?;
        let bd_len = usize::from(u16::from_be_bytes([p[2], p[3]]));
        let descriptors = bd_len.min(p.len() - 8) / 16;
        if descriptors > self.limits.max_unmap_descriptors as usize {
            return Err(Sense::invalid_param_field(2));
        }
        let mut ranges = Vec::with_capacity(descriptors);
        for (i, d) in p[8..8 + descriptors * 16].chunks_exact(16).enumerate() {
            let mut lba = [0u8; 8];
            lba.copy_from_slice(&d[..8]);
            let lba = u64::from_be_bytes(lba);
            let n = u32::from_be_bytes([d[8], d[9], d[10], d[11]]);
            if n == 0 {
                continue;
            }
            if n > self.limits.max_unmap_blocks {
                return Err(Sense::invalid_param_field(crate::sat_u16(8 + i * 16 + 8)));
            }
            self.check_range(lba, u64::from(n))?;
            ranges.push((lba, u64::from(n)));
        }
        for (lba, n) in ranges {
            let _guard = self.locks.shared(lba, n);
            self.device.unmap(lba, n).map_err(dev_err(true))?;
        }
        Ok(Reply::good())
    }

    pub(super) fn get_lba_status(&self, lba: u64, alloc_len: u32) -> CmdResult {
        let num = self.device.num_blocks();
        if lba >= num {
            return Err(Sense::lba_out_of_range());
        }
        let max = (alloc_len.saturating_sub(8) / 16).clamp(1, MAX_LBA_STATUS_DESCRIPTORS);
        let mut body = Vec::new();
        let mut cur = lba;
        let mut count = 0;
        while count < max && cur < num {
            let limit = u32::try_from(num - cur).unwrap_or(u32::MAX);
            let (state, run) = self
                .device
                .provisioning(cur, u64::from(limit))
                .map_err(dev_err(false))?;
            // Whatever run the device answers, the descriptor says at most
            // `limit` (a u32).
            let run = u32::try_from(run).unwrap_or(limit).clamp(1, limit);
            body.extend_from_slice(&cur.to_be_bytes());
            body.extend_from_slice(&run.to_be_bytes());
            body.push(match state {
                Provisioning::Mapped => 0,
                Provisioning::Deallocated => 1,
            });
            body.extend_from_slice(&[0; 3]);
            cur += u64::from(run);
            count += 1;
        }
        let mut d = Vec::with_capacity(8 + body.len());
        d.extend_from_slice(&crate::sat_u32(4 + body.len()).to_be_bytes());
        d.extend_from_slice(&[0; 4]);
        d.extend_from_slice(&body);
        Ok(Reply::alloc(d, alloc_len))
    }
}
