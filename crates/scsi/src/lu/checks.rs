//! The checks every command family shares, and how commands borrow their
//! data-out: LBA range, transfer length, write protection, the parameter
//! list, a write's whole blocks ([`Payload`]), and the FUA rule.
//!
//! Invariants: data-out is only borrowed here (parameter lists are
//! gathered into one buffer only when they arrived in several pieces,
//! write data never); a write's payload is whole blocks, at most what the
//! CDB describes, and a partial trailing block refuses the command before
//! anything is written.

use std::borrow::Cow;

use super::LogicalUnit;
use crate::Command;
use crate::sense::{Sense, asc, key};

/// The whole blocks of a write's data-out, as the transport's pieces.
pub(super) struct Payload<'a> {
    pub(super) pieces: Vec<&'a [u8]>,
    pub(super) len: usize,
}

impl<'a> Payload<'a> {
    /// The data in one slice; a copy only when it came in several pieces.
    pub(super) fn gather(&self) -> Cow<'a, [u8]> {
        match self.pieces.as_slice() {
            [] => Cow::Borrowed(&[]),
            [one] => Cow::Borrowed(*one),
            many => Cow::Owned(many.concat()),
        }
    }
}

impl LogicalUnit {
    /// `blocks` blocks at `lba` lie on the medium (with 0 blocks: `lba`
    /// does).
    pub(super) fn check_range(&self, lba: u64, blocks: u64) -> Result<(), Sense> {
        let num = self.device.num_blocks();
        let ok = if blocks == 0 {
            lba < num
        } else {
            lba.checked_add(blocks).is_some_and(|end| end <= num)
        };
        if ok {
            Ok(())
        } else {
            Err(Sense::lba_out_of_range())
        }
    }

    /// `blocks` is within the advertised MAXIMUM TRANSFER LENGTH.
    pub(super) fn check_transfer(&self, blocks: u32) -> Result<(), Sense> {
        if blocks > self.limits.max_transfer_blocks {
            return Err(Sense::invalid_cdb());
        }
        Ok(())
    }

    /// Neither the configuration nor the control mode page's SWP forbids
    /// writes.
    pub(super) fn check_writable(&self) -> Result<(), Sense> {
        if self.config.read_only {
            return Err(Sense::new(key::DATA_PROTECT, asc::WRITE_PROTECTED));
        }
        if self.mode.swp() {
            return Err(Sense::new(key::DATA_PROTECT, asc::SOFTWARE_WRITE_PROTECTED));
        }
        Ok(())
    }

    /// The first `len` bytes of data-out as a parameter list.
    pub(super) fn params<'a>(cmd: &Command<'a>, len: u32) -> Result<Cow<'a, [u8]>, Sense> {
        cmd.data_out
            .head(len as usize)
            .ok_or_else(Sense::param_list_length)
    }

    /// The whole blocks of data-out a write may use, as the transport's
    /// pieces: at most what the CDB describes; a partial trailing block is
    /// refused (nothing written).
    pub(super) fn write_data<'a>(
        &self,
        cmd: &Command<'a>,
        blocks: u32,
    ) -> Result<Payload<'a>, Sense> {
        let needed = blocks as usize * self.limits.block_size as usize;
        let len = cmd.data_out.len().min(needed);
        if !len.is_multiple_of(self.limits.block_size as usize) {
            return Err(Sense::illegal(asc::INVALID_FIELD_IN_IU));
        }
        Ok(Payload {
            pieces: cmd.data_out.slices(len),
            len,
        })
    }

    /// Whether a write goes to stable storage: when the CDB asks for it or
    /// the write cache is disabled (WCE = 0).
    pub(super) fn fua(&self, requested: bool) -> bool {
        requested || !self.mode.wce()
    }
}
