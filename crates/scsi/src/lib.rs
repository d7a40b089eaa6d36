//! SCSI block semantics (SPC-4 / SBC-3) over [`depot_block::BlockDevice`].
//!
//! This crate knows nothing of iSCSI framing or sockets. The transport hands
//! it a CDB (decoded once, [`ParsedCdb`]), the LUN it was addressed to, the
//! I_T nexus it came from and the data-out bytes it collected; it answers
//! with a [`Completion`]: SCSI status, encoded sense data and data-in bytes.
//!
//! Layout (modules in dependency order: each uses only those above it and
//! the plain types defined here, [`Command`], [`Nexus`], [`Status`], ...):
//! - [`sense`]: sense keys / ASC / ASCQ, the fixed and descriptor encodings,
//!   and the one place `BlockError` is mapped to sense data.
//! - [`cdb`]: pure CDB decoding (fuzzed) and [`ParsedCdb`], the decoding a
//!   transport keeps with a task.
//! - [`lun`]: SAM LUN encoding (8-byte LUN field <-> LUN number), REPORT
//!   LUNS data.
//! - `ua`: unit attention queues per I_T nexus.
//! - `range_lock`: striped LBA range locks (COMPARE AND WRITE atomicity).
//! - `mode`: mode pages (caching, control: WCE, D_SENSE, SWP).
//! - `alua`: asymmetric access states of the target port groups
//!   ([`Paths`]), which commands a non-active port serves, REPORT TARGET
//!   PORT GROUPS.
//! - `inquiry`: standard INQUIRY, VPD pages.
//! - `rsoc`: REPORT SUPPORTED OPERATION CODES / TASK MANAGEMENT FUNCTIONS.
//! - `pr`: the persistent reservation state machine ([`PrState`]) and its
//!   persistence ([`ReservationStore`], [`FileReservationStore`]).
//! - [`Registry`]: logical units by NAA designator, seen only through the
//!   narrow view EXTENDED COPY needs (`CopyTarget`).
//! - `xcopy`: the EXTENDED COPY copy manager, over the registry.
//! - [`LogicalUnit`] (`lu/`): one LU over a `BlockDevice`: the command set,
//!   split into config/identity, the data path (with the inline
//!   non-blocking READ / WRITE), provisioning, reservations, the copy
//!   glue and the dispatcher.
//! - [`ScsiTarget`]: the LUN table of one SCSI target device (one per VM):
//!   REPORT LUNS, commands to absent LUNs, unit attentions for LUN changes,
//!   resets, I_T nexus loss, sense encoding for the transport's own errors.
//!
//! Invariants: nothing here panics on any CDB or parameter list; every error
//! is a CHECK CONDITION with the right sense; `execute` may be called from
//! many threads at once for the same LU.

pub mod cdb;
pub mod lun;
pub mod sense;

mod alua;
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

pub use alua::{AccessState, Group, Paths, PathsError};
pub use cdb::ParsedCdb;
pub use lu::{DEFAULT_MAX_TRANSFER_BYTES, DEPOT_OUI, LogicalUnit, LuConfig, ScsiError};
pub use pr::{
    FileReservationStore, PrState, PrType, Registration, Reservation, ReservationStore, StoreError,
};
pub use registry::Registry;
pub use target::ScsiTarget;
pub use ua::ItNexus;

// Length, count and pointer fields of the data this crate builds (parameter
// data, VPD pages, sense). Every variable part of that data is bounded when
// it is built (names and serials cut, lists bounded by configuration, the
// CDB or a protocol limit) well below its field's width; should a bound ever
// be missed, the field says the most it can rather than a truncated value.

/// `n` in a one-byte field, saturated.
pub(crate) fn sat_u8(n: usize) -> u8 {
    u8::try_from(n).unwrap_or(u8::MAX)
}

/// `n` in a two-byte field, saturated.
pub(crate) fn sat_u16(n: usize) -> u16 {
    u16::try_from(n).unwrap_or(u16::MAX)
}

/// `n` in a four-byte field, saturated.
pub(crate) fn sat_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// The smaller of a buffer size `a` and a count `b` from a wider field
/// (a number of blocks, bytes): how much of `b` fits in `a`.
pub(crate) fn min_usize(a: usize, b: u64) -> usize {
    usize::try_from(b).map_or(a, |b| a.min(b))
}

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
    /// Target portal group tag: in Depot also the target port group id
    /// (one router = one port group with one port).
    pub tpgt: u16,
    /// Relative target port identifier (VPD 0x83 type 4), 1-based: in
    /// Depot the same number as `tpgt` ([`Nexus::new`]).
    pub relative_port_id: u16,
}

impl Nexus {
    /// The nexus of an initiator port (`initiator_name` + `isid`) with the
    /// target port of portal group `tpgt`. The portal group tag is the one
    /// source of the port's identity: the relative target port identifier
    /// and the target port group id (ALUA) are the same number.
    pub fn new(initiator_name: &str, isid: [u8; 6], target_name: &str, tpgt: u16) -> Nexus {
        Nexus {
            initiator_name: initiator_name.into(),
            isid,
            target_name: target_name.into(),
            tpgt,
            relative_port_id: tpgt,
        }
    }

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
    /// The CDB (6 to 260 bytes; extended CDBs arrive whole), decoded once
    /// by the transport when the command arrived ([`ParsedCdb::parse`])
    /// and kept with its task: the inline try
    /// ([`ScsiTarget::try_execute_nowait`]) and the blocking
    /// [`ScsiTarget::execute`] both use this decoding.
    pub cdb: ParsedCdb,
    /// Data-out the transport collected (at most the expected transfer
    /// length; possibly less or more than the CDB describes).
    pub data_out: DataOut<'a>,
    /// The initiator's expected data transfer length for data-in: at most this
    /// many bytes are returned.
    pub expected_in: u32,
}

/// A command's data-out as the transport received it: the data segments of
/// its PDUs, in order, never gathered into one buffer on the way in. A
/// 1 MiB WRITE arrives as several PDUs; writes hand the pieces to
/// [`BlockDevice::write_vectored`](depot_block::BlockDevice::write_vectored)
/// as they are, and only commands that parse a parameter list or compare
/// data see it in one piece ([`DataOut::head`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct DataOut<'a> {
    pieces: &'a [Bytes],
}

impl<'a> DataOut<'a> {
    /// Data-out made of `pieces`, in order (empty pieces are allowed).
    pub fn new(pieces: &'a [Bytes]) -> Self {
        DataOut { pieces }
    }

    /// Total length in bytes.
    pub fn len(&self) -> usize {
        self.pieces.iter().map(Bytes::len).sum()
    }

    /// Whether there is no data-out at all.
    pub fn is_empty(&self) -> bool {
        self.pieces.iter().all(Bytes::is_empty)
    }

    /// The first `n` bytes in one slice: borrowed when one piece holds them,
    /// gathered otherwise; `None` when there are fewer than `n` bytes.
    pub fn head(&self, n: usize) -> Option<std::borrow::Cow<'a, [u8]>> {
        let mut nonempty = self.pieces.iter().filter(|p| !p.is_empty());
        match nonempty.next() {
            None => (n == 0).then_some(std::borrow::Cow::Borrowed(&[][..])),
            Some(p) if p.len() >= n => Some(std::borrow::Cow::Borrowed(&p[..n])),
            Some(_) => {
                if self.len() < n {
                    return None;
                }
                let mut out = Vec::with_capacity(n);
                for p in self.pieces {
                    let k = (n - out.len()).min(p.len());
                    out.extend_from_slice(&p[..k]);
                }
                Some(std::borrow::Cow::Owned(out))
            }
        }
    }

    /// The first `n` bytes (at most [`len`](Self::len)) as slices of the
    /// pieces, without copying; no empty slices.
    pub fn slices(&self, n: usize) -> Vec<&'a [u8]> {
        let mut left = n;
        let mut out = Vec::with_capacity(self.pieces.len());
        for p in self.pieces {
            if left == 0 {
                break;
            }
            let k = left.min(p.len());
            if k > 0 {
                out.push(&p[..k]);
                left -= k;
            }
        }
        out
    }
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

/// What a command executed without waiting produced
/// ([`ScsiTarget::try_execute_nowait`]).
#[derive(Debug)]
pub enum Nowait {
    /// Its completion.
    Done(Completion),
    /// Its completion comes later, on another thread (a write stored but
    /// not yet held by the vDisk's mirror).
    Later(LaterCompletion),
}

/// Who receives a [`LaterCompletion`].
pub type Deliver = Box<dyn FnOnce(Completion) + Send>;

/// A completion that comes later: [`then`](LaterCompletion::then) names who
/// gets it.
pub struct LaterCompletion(Box<dyn FnOnce(Deliver) + Send>);

impl LaterCompletion {
    pub(crate) fn new(register: impl FnOnce(Deliver) + Send + 'static) -> Self {
        LaterCompletion(Box::new(register))
    }

    /// Hands the completion to `done` once it is known (at once if it is).
    pub fn then(self, done: Deliver) {
        (self.0)(done);
    }
}

impl std::fmt::Debug for LaterCompletion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LaterCompletion")
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

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces(parts: &[&[u8]]) -> Vec<Bytes> {
        parts.iter().map(|p| Bytes::copy_from_slice(p)).collect()
    }

    #[test]
    fn data_out_head_borrows_from_one_piece_and_gathers_across() {
        let p = pieces(&[b"", b"abc", b"", b"defg", b"h"]);
        let d = DataOut::new(&p);
        assert_eq!(d.len(), 8);
        assert!(!d.is_empty());
        assert!(matches!(d.head(2), Some(std::borrow::Cow::Borrowed(b"ab"))));
        assert!(matches!(
            d.head(3),
            Some(std::borrow::Cow::Borrowed(b"abc"))
        ));
        assert_eq!(d.head(5).as_deref(), Some(&b"abcde"[..]));
        assert_eq!(d.head(8).as_deref(), Some(&b"abcdefgh"[..]));
        assert_eq!(d.head(9), None);
        assert_eq!(d.head(0).as_deref(), Some(&b""[..]));
    }

    #[test]
    fn data_out_slices_cut_at_n_without_empty_pieces() {
        let p = pieces(&[b"abc", b"", b"defg", b"h"]);
        let d = DataOut::new(&p);
        assert_eq!(d.slices(0), Vec::<&[u8]>::new());
        assert_eq!(d.slices(3), vec![&b"abc"[..]]);
        assert_eq!(d.slices(5), vec![&b"abc"[..], &b"de"[..]]);
        assert_eq!(d.slices(100), vec![&b"abc"[..], &b"defg"[..], &b"h"[..]]);
        let empty = DataOut::default();
        assert!(empty.is_empty());
        assert_eq!(empty.len(), 0);
        assert_eq!(empty.head(0).as_deref(), Some(&b""[..]));
        assert_eq!(empty.head(1), None);
    }
}
