//! Framing and parsing of initiator PDUs.
//!
//! A PDU is a 48-byte Basic Header Segment, `TotalAHSLength * 4` bytes of
//! additional header segments, an optional 4-byte header digest, the data
//! segment padded to a multiple of 4, and an optional 4-byte data digest.
//!
//! [`Decoder::decode`] is the only entry point the connection loop needs: it
//! looks at the front of the receive buffer, returns `Ok(None)` while the PDU
//! is incomplete, and otherwise splits the PDU off the buffer without copying
//! the data segment. Lengths are checked against the negotiated
//! MaxRecvDataSegmentLength *before* any byte of the data segment is awaited,
//! so a peer cannot make us buffer more than one maximal PDU.
//!
//! Header fields are parsed with nom into [`Header`], one variant per
//! initiator opcode. Unknown opcodes parse to [`Header::Unknown`] so the
//! session can answer with a Reject PDU.

use bytes::{Bytes, BytesMut};
use nom::IResult;
use nom::Parser;
use nom::bytes::complete::take;
use nom::number::complete::{be_u8, be_u16, be_u24, be_u32};

use crate::BHS_LEN;
use crate::digest;

/// Initiator opcodes (RFC 7143 §11.2.1.2).
pub mod op {
    /// NOP-Out.
    pub const NOP_OUT: u8 = 0x00;
    /// SCSI Command.
    pub const SCSI_COMMAND: u8 = 0x01;
    /// SCSI Task Management Function Request.
    pub const TASK_MGMT: u8 = 0x02;
    /// Login Request.
    pub const LOGIN: u8 = 0x03;
    /// Text Request.
    pub const TEXT: u8 = 0x04;
    /// SCSI Data-Out.
    pub const DATA_OUT: u8 = 0x05;
    /// Logout Request.
    pub const LOGOUT: u8 = 0x06;
    /// SNACK Request.
    pub const SNACK: u8 = 0x10;

    /// NOP-In.
    pub const NOP_IN: u8 = 0x20;
    /// SCSI Response.
    pub const SCSI_RESPONSE: u8 = 0x21;
    /// Task Management Function Response.
    pub const TASK_MGMT_RESPONSE: u8 = 0x22;
    /// Login Response.
    pub const LOGIN_RESPONSE: u8 = 0x23;
    /// Text Response.
    pub const TEXT_RESPONSE: u8 = 0x24;
    /// SCSI Data-In.
    pub const DATA_IN: u8 = 0x25;
    /// Logout Response.
    pub const LOGOUT_RESPONSE: u8 = 0x26;
    /// Ready To Transfer.
    pub const R2T: u8 = 0x31;
    /// Asynchronous Message.
    pub const ASYNC: u8 = 0x32;
    /// Reject.
    pub const REJECT: u8 = 0x3f;
}

/// Task attributes of a SCSI command (byte 1 bits 0-2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskAttr {
    /// Untagged (treated as Simple).
    Untagged,
    /// Simple.
    Simple,
    /// Ordered.
    Ordered,
    /// Head of queue.
    HeadOfQueue,
    /// ACA.
    Aca,
    /// A reserved value.
    Reserved(u8),
}

impl From<u8> for TaskAttr {
    fn from(v: u8) -> Self {
        match v & 7 {
            0 => TaskAttr::Untagged,
            1 => TaskAttr::Simple,
            2 => TaskAttr::Ordered,
            3 => TaskAttr::HeadOfQueue,
            4 => TaskAttr::Aca,
            other => TaskAttr::Reserved(other),
        }
    }
}

/// Typed header of an initiator PDU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Header {
    /// NOP-Out (ping, or answer to a NOP-In).
    NopOut {
        /// Immediate delivery bit.
        immediate: bool,
        /// LUN field.
        lun: [u8; 8],
        /// Initiator task tag (0xffffffff: answer to a target ping).
        itt: u32,
        /// Target transfer tag (echoes a NOP-In's TTT, or 0xffffffff).
        ttt: u32,
        /// CmdSN.
        cmd_sn: u32,
        /// ExpStatSN.
        exp_stat_sn: u32,
    },
    /// SCSI Command.
    ScsiCommand {
        /// Immediate delivery bit.
        immediate: bool,
        /// F bit: no unsolicited Data-Out follows.
        final_bit: bool,
        /// R bit: data-in expected.
        read: bool,
        /// W bit: data-out expected.
        write: bool,
        /// Task attribute.
        attr: TaskAttr,
        /// LUN field.
        lun: [u8; 8],
        /// Initiator task tag.
        itt: u32,
        /// Expected data transfer length.
        edtl: u32,
        /// CmdSN.
        cmd_sn: u32,
        /// ExpStatSN.
        exp_stat_sn: u32,
        /// First 16 bytes of the CDB (longer CDBs continue in an AHS).
        cdb: [u8; 16],
    },
    /// Task Management Function Request.
    TaskMgmt {
        /// Immediate delivery bit.
        immediate: bool,
        /// Function code (1 ABORT TASK ... 8 TASK REASSIGN).
        function: u8,
        /// LUN field.
        lun: [u8; 8],
        /// Initiator task tag of this request.
        itt: u32,
        /// Referenced task tag (ABORT TASK).
        ref_task_tag: u32,
        /// CmdSN.
        cmd_sn: u32,
        /// ExpStatSN.
        exp_stat_sn: u32,
        /// RefCmdSN (ABORT TASK).
        ref_cmd_sn: u32,
        /// ExpDataSN.
        exp_data_sn: u32,
    },
    /// Login Request.
    Login {
        /// T bit: the initiator wants to move to `nsg`.
        transit: bool,
        /// C bit: the text continues in the next PDU.
        cont: bool,
        /// Current stage.
        csg: u8,
        /// Next stage.
        nsg: u8,
        /// Highest protocol version supported.
        version_max: u8,
        /// Lowest protocol version supported.
        version_min: u8,
        /// Initiator session id.
        isid: [u8; 6],
        /// Target session identifying handle (0 for a new session).
        tsih: u16,
        /// Initiator task tag.
        itt: u32,
        /// Connection id.
        cid: u16,
        /// CmdSN.
        cmd_sn: u32,
        /// ExpStatSN.
        exp_stat_sn: u32,
    },
    /// Text Request.
    Text {
        /// Immediate delivery bit.
        immediate: bool,
        /// F bit.
        final_bit: bool,
        /// C bit.
        cont: bool,
        /// LUN field.
        lun: [u8; 8],
        /// Initiator task tag.
        itt: u32,
        /// Target transfer tag (continuation of a long response).
        ttt: u32,
        /// CmdSN.
        cmd_sn: u32,
        /// ExpStatSN.
        exp_stat_sn: u32,
    },
    /// SCSI Data-Out.
    DataOut {
        /// F bit: last PDU of the sequence.
        final_bit: bool,
        /// LUN field.
        lun: [u8; 8],
        /// Task the data belongs to.
        itt: u32,
        /// Target transfer tag from the R2T (0xffffffff for unsolicited).
        ttt: u32,
        /// ExpStatSN.
        exp_stat_sn: u32,
        /// DataSN within the sequence.
        data_sn: u32,
        /// Offset of this data in the task's buffer.
        buffer_offset: u32,
    },
    /// Logout Request.
    Logout {
        /// Immediate delivery bit.
        immediate: bool,
        /// Reason (0 close session, 1 close connection, 2 recovery).
        reason: u8,
        /// Initiator task tag.
        itt: u32,
        /// Connection id to close.
        cid: u16,
        /// CmdSN.
        cmd_sn: u32,
        /// ExpStatSN.
        exp_stat_sn: u32,
    },
    /// SNACK Request (needs ErrorRecoveryLevel > 0; rejected).
    Snack {
        /// Initiator task tag.
        itt: u32,
    },
    /// An opcode this target does not know.
    Unknown {
        /// The opcode.
        opcode: u8,
        /// Initiator task tag.
        itt: u32,
    },
}

impl Header {
    /// The immediate (I) bit, for opcodes that carry a CmdSN.
    pub fn is_immediate(&self) -> bool {
        match self {
            Header::NopOut { immediate, .. }
            | Header::ScsiCommand { immediate, .. }
            | Header::TaskMgmt { immediate, .. }
            | Header::Text { immediate, .. }
            | Header::Logout { immediate, .. } => *immediate,
            _ => false,
        }
    }

    /// CmdSN for the opcodes that carry one.
    pub fn cmd_sn(&self) -> Option<u32> {
        match self {
            Header::NopOut { cmd_sn, .. }
            | Header::ScsiCommand { cmd_sn, .. }
            | Header::TaskMgmt { cmd_sn, .. }
            | Header::Login { cmd_sn, .. }
            | Header::Text { cmd_sn, .. }
            | Header::Logout { cmd_sn, .. } => Some(*cmd_sn),
            _ => None,
        }
    }

    /// ExpStatSN for the opcodes that carry one.
    pub fn exp_stat_sn(&self) -> Option<u32> {
        match self {
            Header::NopOut { exp_stat_sn, .. }
            | Header::ScsiCommand { exp_stat_sn, .. }
            | Header::TaskMgmt { exp_stat_sn, .. }
            | Header::Login { exp_stat_sn, .. }
            | Header::Text { exp_stat_sn, .. }
            | Header::DataOut { exp_stat_sn, .. }
            | Header::Logout { exp_stat_sn, .. } => Some(*exp_stat_sn),
            _ => None,
        }
    }

    /// Initiator task tag.
    pub fn itt(&self) -> u32 {
        match self {
            Header::NopOut { itt, .. }
            | Header::ScsiCommand { itt, .. }
            | Header::TaskMgmt { itt, .. }
            | Header::Login { itt, .. }
            | Header::Text { itt, .. }
            | Header::DataOut { itt, .. }
            | Header::Logout { itt, .. }
            | Header::Snack { itt }
            | Header::Unknown { itt, .. } => *itt,
        }
    }
}

/// One received PDU.
#[derive(Debug, Clone)]
pub struct Pdu {
    /// The raw BHS, kept for Reject PDUs (which echo it).
    pub bhs: [u8; BHS_LEN],
    /// Parsed header.
    pub header: Header,
    /// Additional header segments (extended CDB etc.), unparsed.
    pub ahs: Bytes,
    /// The data segment, without padding.
    pub data: Bytes,
    /// The data digest did not match: the session must reject the PDU and
    /// fail the task it belongs to (ERL 0).
    pub data_digest_error: bool,
}

impl Pdu {
    /// The full CDB: the 16 header bytes followed by an extended-CDB AHS
    /// (type 1) when present, or `None` if the AHS is malformed.
    pub fn full_cdb(&self) -> Option<Vec<u8>> {
        let Header::ScsiCommand { cdb, .. } = &self.header else {
            return None;
        };
        let mut out = cdb.to_vec();
        let mut ahs = &self.ahs[..];
        while ahs.len() >= 4 {
            let len = usize::from(u16::from_be_bytes([ahs[0], ahs[1]]));
            let kind = ahs[2];
            // AHSLength counts bytes after the 3-byte header minus the
            // reserved byte; the segment is padded to a multiple of 4.
            let body = ahs.get(4..3 + len.max(1))?;
            if kind == 1 {
                out.extend_from_slice(body);
            }
            let seg = (3 + len).div_ceil(4) * 4;
            ahs = ahs.get(seg..)?;
        }
        Some(out)
    }
}

/// Why a PDU could not be framed: the connection must be closed (ERL 0).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// The data segment is longer than we declared we can receive.
    #[error("data segment of {len} bytes exceeds MaxRecvDataSegmentLength {max}")]
    DataSegmentTooLong {
        /// Announced length.
        len: u32,
        /// Our limit.
        max: u32,
    },
    /// The header digest did not match.
    #[error("header digest mismatch")]
    HeaderDigest,
}

/// Splits and parses PDUs from a receive buffer.
#[derive(Debug, Clone)]
pub struct Decoder {
    /// Largest data segment accepted (our MaxRecvDataSegmentLength).
    pub max_data_segment: u32,
    /// Header digest (CRC32C) negotiated.
    pub header_digest: bool,
    /// Data digest (CRC32C) negotiated.
    pub data_digest: bool,
}

impl Default for Decoder {
    /// Login-phase decoder: no digests, 8 KiB data segments (RFC default).
    fn default() -> Self {
        Decoder {
            max_data_segment: 8192,
            header_digest: false,
            data_digest: false,
        }
    }
}

impl Decoder {
    /// Takes one PDU off the front of `buf` if it is complete.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Pdu>, FrameError> {
        if buf.len() < BHS_LEN {
            return Ok(None);
        }
        let ahs_len = usize::from(buf[4]) * 4;
        let dsl = u32::from_be_bytes([0, buf[5], buf[6], buf[7]]);
        if dsl > self.max_data_segment {
            return Err(FrameError::DataSegmentTooLong {
                len: dsl,
                max: self.max_data_segment,
            });
        }
        let dsl = dsl as usize;
        let hd = if self.header_digest { 4 } else { 0 };
        let padded = dsl + digest::pad_len(dsl);
        let dd = if self.data_digest && dsl > 0 { 4 } else { 0 };
        let total = BHS_LEN + ahs_len + hd + padded + dd;
        if buf.len() < total {
            buf.reserve(total - buf.len());
            return Ok(None);
        }
        let mut frame = buf.split_to(total);
        let header_part = frame.split_to(BHS_LEN + ahs_len);
        if hd == 4 {
            let got = digest::from_wire([frame[0], frame[1], frame[2], frame[3]]);
            if got != digest::crc32c(&[&header_part]) {
                return Err(FrameError::HeaderDigest);
            }
            let _ = frame.split_to(4);
        }
        let mut data_digest_error = false;
        if dd == 4 {
            let d = &frame[padded..padded + 4];
            let got = digest::from_wire([d[0], d[1], d[2], d[3]]);
            data_digest_error = got != digest::crc32c(&[&frame[..padded]]);
        }
        frame.truncate(dsl);
        let header_part = header_part.freeze();
        let mut bhs = [0u8; BHS_LEN];
        bhs.copy_from_slice(&header_part[..BHS_LEN]);
        let header = parse_bhs(&bhs);
        Ok(Some(Pdu {
            bhs,
            header,
            ahs: header_part.slice(BHS_LEN..),
            data: frame.freeze(),
            data_digest_error,
        }))
    }
}

/// Parses a 48-byte BHS. Never fails: unknown opcodes become
/// [`Header::Unknown`].
pub fn parse_bhs(bhs: &[u8; BHS_LEN]) -> Header {
    match bhs_parser(bhs) {
        Ok((_, h)) => h,
        // Unreachable for 48 input bytes, but never panic on wire data.
        Err(_) => Header::Unknown {
            opcode: bhs[0] & 0x3f,
            itt: u32::from_be_bytes([bhs[16], bhs[17], bhs[18], bhs[19]]),
        },
    }
}

fn array<const N: usize>(i: &[u8]) -> IResult<&[u8], [u8; N]> {
    let (i, b) = take(N)(i)?;
    let mut a = [0u8; N];
    a.copy_from_slice(b);
    Ok((i, a))
}

/// Fields common to every BHS: byte 0, byte 1, bytes 2-3, lengths, bytes 8-15
/// and the ITT, followed by the 28 opcode-specific bytes.
struct Common<'a> {
    immediate: bool,
    opcode: u8,
    b1: u8,
    b2: u8,
    b3: u8,
    lun: [u8; 8],
    itt: u32,
    rest: &'a [u8],
}

fn common(i: &[u8]) -> IResult<&[u8], Common<'_>> {
    let (i, (b0, b1, b2, b3, _ahs, _dsl, lun, itt)) = (
        be_u8, be_u8, be_u8, be_u8, be_u8, be_u24, array::<8>, be_u32,
    )
        .parse(i)?;
    Ok((
        &[],
        Common {
            immediate: b0 & 0x40 != 0,
            opcode: b0 & 0x3f,
            b1,
            b2,
            b3,
            lun,
            itt,
            rest: i,
        },
    ))
}

/// Five consecutive big-endian words starting at byte 20.
fn words5(i: &[u8]) -> IResult<&[u8], (u32, u32, u32, u32, u32)> {
    (be_u32, be_u32, be_u32, be_u32, be_u32).parse(i)
}

fn bhs_parser(input: &[u8]) -> IResult<&[u8], Header> {
    let (_, c) = common(input)?;
    let r = c.rest;
    let h = match c.opcode {
        op::NOP_OUT => {
            let (_, (ttt, cmd_sn, exp_stat_sn, _, _)) = words5(r)?;
            Header::NopOut {
                immediate: c.immediate,
                lun: c.lun,
                itt: c.itt,
                ttt,
                cmd_sn,
                exp_stat_sn,
            }
        }
        op::SCSI_COMMAND => {
            let (r, (edtl, cmd_sn, exp_stat_sn)) = (be_u32, be_u32, be_u32).parse(r)?;
            let (_, cdb) = array::<16>(r)?;
            Header::ScsiCommand {
                immediate: c.immediate,
                final_bit: c.b1 & 0x80 != 0,
                read: c.b1 & 0x40 != 0,
                write: c.b1 & 0x20 != 0,
                attr: TaskAttr::from(c.b1),
                lun: c.lun,
                itt: c.itt,
                edtl,
                cmd_sn,
                exp_stat_sn,
                cdb,
            }
        }
        op::TASK_MGMT => {
            let (_, (ref_task_tag, cmd_sn, exp_stat_sn, ref_cmd_sn, exp_data_sn)) = words5(r)?;
            Header::TaskMgmt {
                immediate: c.immediate,
                function: c.b1 & 0x7f,
                lun: c.lun,
                itt: c.itt,
                ref_task_tag,
                cmd_sn,
                exp_stat_sn,
                ref_cmd_sn,
                exp_data_sn,
            }
        }
        op::LOGIN => {
            let mut isid = [0u8; 6];
            isid.copy_from_slice(&c.lun[..6]);
            let tsih = u16::from_be_bytes([c.lun[6], c.lun[7]]);
            let (r, (cid, _, cmd_sn, exp_stat_sn)) = (be_u16, be_u16, be_u32, be_u32).parse(r)?;
            let _ = r;
            Header::Login {
                transit: c.b1 & 0x80 != 0,
                cont: c.b1 & 0x40 != 0,
                csg: (c.b1 >> 2) & 3,
                nsg: c.b1 & 3,
                version_max: c.b2,
                version_min: c.b3,
                isid,
                tsih,
                itt: c.itt,
                cid,
                cmd_sn,
                exp_stat_sn,
            }
        }
        op::TEXT => {
            let (_, (ttt, cmd_sn, exp_stat_sn, _, _)) = words5(r)?;
            Header::Text {
                immediate: c.immediate,
                final_bit: c.b1 & 0x80 != 0,
                cont: c.b1 & 0x40 != 0,
                lun: c.lun,
                itt: c.itt,
                ttt,
                cmd_sn,
                exp_stat_sn,
            }
        }
        op::DATA_OUT => {
            let (_, (ttt, _, exp_stat_sn, _, data_sn)) = words5(r)?;
            let (_, buffer_offset) = be_u32(&r[20..])?;
            Header::DataOut {
                final_bit: c.b1 & 0x80 != 0,
                lun: c.lun,
                itt: c.itt,
                ttt,
                exp_stat_sn,
                data_sn,
                buffer_offset,
            }
        }
        op::LOGOUT => {
            let (_, (cid, _, cmd_sn, exp_stat_sn)) = (be_u16, be_u16, be_u32, be_u32).parse(r)?;
            Header::Logout {
                immediate: c.immediate,
                reason: c.b1 & 0x7f,
                itt: c.itt,
                cid,
                cmd_sn,
                exp_stat_sn,
            }
        }
        op::SNACK => Header::Snack { itt: c.itt },
        opcode => Header::Unknown { opcode, itt: c.itt },
    };
    Ok((&[], h))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn scsi_cmd_bhs() -> [u8; 48] {
        let mut b = [0u8; 48];
        b[0] = op::SCSI_COMMAND;
        b[1] = 0x80 | 0x40 | 1;
        b[9] = 2; // LUN 2 (peripheral addressing)
        b[16..20].copy_from_slice(&7u32.to_be_bytes());
        b[20..24].copy_from_slice(&4096u32.to_be_bytes());
        b[24..28].copy_from_slice(&11u32.to_be_bytes());
        b[28..32].copy_from_slice(&5u32.to_be_bytes());
        b[32] = 0x28;
        b
    }

    #[test]
    fn parses_scsi_command() {
        let h = parse_bhs(&scsi_cmd_bhs());
        match h {
            Header::ScsiCommand {
                final_bit,
                read,
                write,
                attr,
                itt,
                edtl,
                cmd_sn,
                exp_stat_sn,
                cdb,
                lun,
                immediate,
            } => {
                assert!(final_bit && read && !write && !immediate);
                assert_eq!(attr, TaskAttr::Simple);
                assert_eq!((itt, edtl, cmd_sn, exp_stat_sn), (7, 4096, 11, 5));
                assert_eq!(cdb[0], 0x28);
                assert_eq!(lun[1], 2);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn decoder_waits_for_whole_pdu_and_checks_digests() {
        let dec = Decoder {
            max_data_segment: 8192,
            header_digest: true,
            data_digest: true,
        };
        let mut bhs = scsi_cmd_bhs();
        bhs[7] = 5; // 5 bytes of data
        let mut wire = bhs.to_vec();
        wire.extend_from_slice(&digest::to_wire(digest::crc32c(&[&bhs])));
        let data = b"hello\0\0\0";
        wire.extend_from_slice(data);
        wire.extend_from_slice(&digest::to_wire(digest::crc32c(&[data])));
        for cut in 0..wire.len() {
            let mut buf = BytesMut::from(&wire[..cut]);
            assert!(dec.decode(&mut buf).unwrap().is_none(), "cut at {cut}");
        }
        let mut buf = BytesMut::from(&wire[..]);
        let pdu = dec.decode(&mut buf).unwrap().unwrap();
        assert_eq!(&pdu.data[..], b"hello");
        assert!(!pdu.data_digest_error);
        assert!(buf.is_empty());

        let mut bad = wire.clone();
        let n = bad.len();
        bad[n - 1] ^= 1;
        let pdu = dec.decode(&mut BytesMut::from(&bad[..])).unwrap().unwrap();
        assert!(pdu.data_digest_error);

        let mut bad = wire.clone();
        bad[48] ^= 1;
        assert_eq!(
            dec.decode(&mut BytesMut::from(&bad[..])).unwrap_err(),
            FrameError::HeaderDigest
        );
    }

    #[test]
    fn oversized_segment_is_refused_before_buffering() {
        let mut bhs = scsi_cmd_bhs();
        bhs[5] = 0xff;
        let mut buf = BytesMut::from(&bhs[..]);
        assert!(matches!(
            Decoder::default().decode(&mut buf),
            Err(FrameError::DataSegmentTooLong { .. })
        ));
    }

    #[test]
    fn extended_cdb_from_ahs() {
        let mut bhs = scsi_cmd_bhs();
        bhs[4] = 2; // 8 bytes of AHS
        let mut wire = bhs.to_vec();
        // AHSLength = 5 (4 CDB bytes + reserved byte), type 1.
        wire.extend_from_slice(&[0, 5, 1, 0, 0xaa, 0xbb, 0xcc, 0xdd]);
        let pdu = Decoder::default()
            .decode(&mut BytesMut::from(&wire[..]))
            .unwrap()
            .unwrap();
        let cdb = pdu.full_cdb().unwrap();
        assert_eq!(cdb.len(), 20);
        assert_eq!(&cdb[16..], &[0xaa, 0xbb, 0xcc, 0xdd]);
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600),
                               hd: bool, dd: bool) {
            let dec = Decoder { max_data_segment: 512, header_digest: hd, data_digest: dd };
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(pdu)) = dec.decode(&mut buf) {
                let _ = pdu.full_cdb();
            }
        }
    }
}
