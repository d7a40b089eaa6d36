//! Sans-IO iSCSI (RFC 7143, ErrorRecoveryLevel 0).
//!
//! This crate turns bytes into typed PDUs and typed PDUs into bytes, and holds
//! the pure parts of the protocol: text key=value segments, login parameter
//! negotiation, CHAP, CRC32C digests and serial-number arithmetic. It does no
//! I/O and owns no sockets: the target crate feeds it buffers.
//!
//! - [`pdu`]: framing (is a whole PDU in the buffer?) and nom parsers for
//!   every initiator opcode, including unknown ones (so the session can answer
//!   with a Reject instead of dropping the connection).
//! - [`encode`]: builders for every target PDU, header and data kept apart so
//!   the data segment can be written without a copy.
//! - [`initiator`]: the inverse of the parsers, for initiator PDUs (tests and
//!   tools that play the initiator).
//! - [`text`]: bounded parsing and encoding of `key=value\0` data segments.
//! - [`params`]: the operational keys, their defaults, ranges and result
//!   functions, and the negotiation itself.
//! - [`chap`]: CHAP and mutual CHAP with MD5, SHA-1 and SHA-256.
//! - [`digest`]: CRC32C header and data digests.
//! - [`serial`]: RFC 1982 serial arithmetic for CmdSN / StatSN.
//!
//! Invariants: no parser panics or allocates more than the bytes it was given
//! on any input; every length taken from the wire is checked against a limit
//! before it is used.

pub mod chap;
pub mod digest;
pub mod encode;
pub mod initiator;
pub mod params;
pub mod pdu;
pub mod serial;
pub mod text;

/// Length of the Basic Header Segment.
pub const BHS_LEN: usize = 48;

/// Reserved initiator task tag / target transfer tag value.
pub const RESERVED_TAG: u32 = 0xffff_ffff;

/// Largest value of the BHS's 24-bit DataSegmentLength field.
const MAX_DATA_SEGMENT_LENGTH: u32 = 0x00ff_ffff;

/// The BHS's DataSegmentLength field (bytes 5..8) for a data segment of
/// `len` bytes, clamped to what 24 bits can say.
pub(crate) fn data_segment_length_field(len: usize) -> [u8; 3] {
    let n = u32::try_from(len).map_or(MAX_DATA_SEGMENT_LENGTH, |n| n.min(MAX_DATA_SEGMENT_LENGTH));
    let [_, a, b, c] = n.to_be_bytes();
    [a, b, c]
}
