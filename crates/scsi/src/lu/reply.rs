//! What a command produces inside the logical unit ([`Reply`]) and how it
//! becomes what the transport sends ([`Completion`]).
//!
//! Invariants: data-in is cut to the initiator's expected length only
//! here, at the very end; sense is encoded only here, in the format the
//! control mode page's D_SENSE selects; the transfer length reported for
//! the residual is the data-in length before truncation, or the data-out
//! length the CDB describes for commands that carry data-out.

use bytes::Bytes;
use depot_block::BlockError;

use super::LogicalUnit;
use crate::cdb::Cdb;
use crate::sense::{self, Sense};
use crate::{Command, Completion, Status};

/// What a command produced, before truncation to the expected length.
pub(super) struct Reply {
    pub(super) status: Status,
    pub(super) sense: Option<Sense>,
    pub(super) data: Vec<u8>,
    pub(super) transfer_length: u32,
}

impl Reply {
    pub(super) fn good() -> Reply {
        Reply {
            status: Status::GOOD,
            sense: None,
            data: Vec::new(),
            transfer_length: 0,
        }
    }

    /// Data-in for an allocation-length command.
    pub(super) fn alloc(mut data: Vec<u8>, alloc_len: u32) -> Reply {
        data.truncate(alloc_len as usize);
        // At most `alloc_len` now.
        let transfer_length = crate::sat_u32(data.len());
        Reply {
            status: Status::GOOD,
            sense: None,
            data,
            transfer_length,
        }
    }

    pub(super) fn check(sense: Sense) -> Reply {
        Reply {
            status: Status::CHECK_CONDITION,
            sense: Some(sense),
            data: Vec::new(),
            transfer_length: 0,
        }
    }

    /// BUSY: the unit cannot do it now, the initiator retries later.
    pub(super) fn busy() -> Reply {
        Reply {
            status: Status::BUSY,
            sense: None,
            data: Vec::new(),
            transfer_length: 0,
        }
    }

    pub(super) fn conflict() -> Reply {
        Reply {
            status: Status::RESERVATION_CONFLICT,
            sense: None,
            data: Vec::new(),
            transfer_length: 0,
        }
    }
}

/// A command's outcome: a reply, or the sense of its CHECK CONDITION.
pub(super) type CmdResult = Result<Reply, Sense>;

/// Maps a device error to sense (the one mapping lives in
/// [`sense::from_block_error`]), logging it.
pub(super) fn dev_err(write: bool) -> impl Fn(BlockError) -> Sense {
    move |e| {
        tracing::debug!(error = %e, write, "block device error");
        sense::from_block_error(&e, write)
    }
}

/// Offset of the first byte where `a` and `b` differ.
pub(super) fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter().zip(b).position(|(x, y)| x != y)
}

impl LogicalUnit {
    /// What the transport sends for `reply`: data cut to what the initiator
    /// expects, sense encoded per D_SENSE.
    pub(super) fn completion(&self, reply: Reply, cmd: &Command<'_>) -> Completion {
        let mut data = reply.data;
        data.truncate(cmd.expected_in as usize);
        Completion {
            status: reply.status,
            sense: reply.sense.map(|s| self.encode_sense(&s)),
            data: Bytes::from(data),
            transfer_length: reply.transfer_length,
        }
    }

    /// Reports the data-out length the CDB describes as the transfer
    /// length (for the residual), where it has one.
    pub(super) fn with_out_len(&self, mut reply: Reply, parsed: &Cdb) -> Reply {
        let out_len = self.data_out_len(parsed);
        if out_len > 0 {
            reply.transfer_length = out_len;
        }
        reply
    }

    /// Bytes of data-out the CDB describes.
    fn data_out_len(&self, c: &Cdb) -> u32 {
        let bs = u64::from(self.limits.block_size);
        let blocks = |n: u32| u32::try_from(u64::from(n) * bs).unwrap_or(u32::MAX);
        match *c {
            Cdb::Write(io, _) | Cdb::OrWrite(io) => blocks(io.blocks),
            Cdb::WriteAndVerify { io, .. } => blocks(io.blocks),
            Cdb::CompareAndWrite(io) => blocks(io.blocks.saturating_mul(2)),
            Cdb::Verify { io, bytchk: 1 } => blocks(io.blocks),
            Cdb::Verify { bytchk: 3, .. } => blocks(1),
            Cdb::WriteSame { ndob: false, .. } => blocks(1),
            Cdb::Unmap { param_len, .. }
            | Cdb::ModeSelect { param_len, .. }
            | Cdb::PersistentReserveOut { param_len, .. }
            | Cdb::ExtendedCopy { param_len } => param_len,
            _ => 0,
        }
    }
}
