//! SCSI block semantics (SPC-4 / SBC-3) over [`depot_block::BlockDevice`].
//!
//! This crate knows nothing of iSCSI framing or sockets. The transport hands
//! it a CDB, the LUN it was addressed to, the I_T nexus it came from and the
//! data-out bytes it collected; it answers with a [`Completion`]: SCSI status,
//! encoded sense data and data-in bytes.
//!
//! Layout:
//! - [`ScsiTarget`]: the LUN table of one SCSI target device (one per VM):
//!   REPORT LUNS, commands to absent LUNs, unit attentions for LUN changes,
//!   resets, I_T nexus loss.
//! - [`LogicalUnit`]: one LU over a `BlockDevice`: the command set, mode
//!   pages, SPC-2 and persistent reservations, COMPARE AND WRITE atomicity,
//!   EXTENDED COPY, unit attentions.
//! - [`sense`]: sense keys / ASC / ASCQ and the one place `BlockError` is
//!   mapped to sense data.
//! - [`cdb`]: pure CDB decoding (fuzzed).
//! - [`lun`]: SAM LUN encoding (8-byte LUN field <-> LUN number).
//!
//! Invariants: nothing here panics on any CDB or parameter list; every error
//! is a CHECK CONDITION with the right sense; `execute` may be called from
//! many threads at once for the same LU.

pub mod cdb;
pub mod lun;
pub mod sense;

mod inquiry;
mod lu;
mod mode;
mod pr;
mod range_lock;
mod registry;
mod rsoc;
mod target;
mod ua;
mod xcopy;

use std::sync::Arc;

use bytes::Bytes;

pub use lu::{DEFAULT_MAX_TRANSFER_BYTES, DEPOT_OUI, LogicalUnit, LuConfig, ScsiError};
pub use registry::Registry;
pub use target::ScsiTarget;

/// SCSI status codes (SAM-5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Status(pub u8);

impl Status {
    /// GOOD.
    pub const GOOD: Status = Status(0x00);
    /// CHECK CONDITION: sense data describes the error.
    pub const CHECK_CONDITION: Status = Status(0x02);
    /// CONDITION MET (PRE-FETCH when the cache could hold the range).
    pub const CONDITION_MET: Status = Status(0x04);
    /// BUSY.
    pub const BUSY: Status = Status(0x08);
    /// RESERVATION CONFLICT.
    pub const RESERVATION_CONFLICT: Status = Status(0x18);
    /// TASK SET FULL.
    pub const TASK_SET_FULL: Status = Status(0x28);
    /// TASK ABORTED.
    pub const TASK_ABORTED: Status = Status(0x40);
}

/// The I_T nexus a command arrived on: who is asking, through which port.
///
/// Persistent reservations key registrations on the whole nexus, including
/// the ISID, and unit attentions are queued per nexus.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Nexus {
    /// iSCSI initiator name (the PR TransportID name).
    pub initiator_name: String,
    /// Initiator session id (6 bytes).
    pub isid: [u8; 6],
    /// iSCSI target name.
    pub target_name: String,
    /// Target portal group tag.
    pub tpgt: u16,
    /// Relative target port identifier (VPD 0x83 type 4), 1-based.
    pub relative_port_id: u16,
}

impl Nexus {
    /// SCSI initiator port name: `<InitiatorName>,i,0x<ISID in hex>`.
    pub fn initiator_port(&self) -> String {
        let mut s = format!("{},i,0x", self.initiator_name);
        for b in self.isid {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }

    /// SCSI target port name: `<TargetName>,t,0x<TPGT in hex>`.
    pub fn target_port(&self) -> String {
        format!("{},t,0x{:04x}", self.target_name, self.tpgt)
    }
}

/// One SCSI command as the transport delivers it.
#[derive(Debug)]
pub struct Command<'a> {
    /// The nexus it came from.
    pub nexus: &'a Arc<Nexus>,
    /// The CDB, 6 to 260 bytes (extended CDBs arrive whole).
    pub cdb: &'a [u8],
    /// Data-out the transport collected (at most the expected transfer
    /// length; possibly less or more than the CDB describes).
    pub data_out: &'a [u8],
    /// The initiator's expected data transfer length for data-in: at most this
    /// many bytes are returned.
    pub expected_in: u32,
}

/// What the transport sends back for a command.
#[derive(Debug, Clone)]
pub struct Completion {
    /// SCSI status.
    pub status: Status,
    /// Encoded sense data (fixed or descriptor format per the LU's D_SENSE),
    /// present with CHECK CONDITION.
    pub sense: Option<Bytes>,
    /// Data-in, never longer than `Command::expected_in`.
    pub data: Bytes,
    /// Bytes the CDB itself describes moving (data-in length before truncation
    /// to `expected_in`, or data-out length the CDB asked for). The transport
    /// computes residuals from it against its expected transfer length.
    pub transfer_length: u32,
}

impl Completion {
    /// GOOD status, no data.
    pub fn good() -> Self {
        Completion {
            status: Status::GOOD,
            sense: None,
            data: Bytes::new(),
            transfer_length: 0,
        }
    }
}

/// Outcome of a task management function, as iSCSI reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TmfOutcome {
    /// Function complete.
    Complete,
    /// The LUN does not exist.
    NoSuchLun,
}
