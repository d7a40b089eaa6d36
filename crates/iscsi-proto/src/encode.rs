//! Builders for target PDUs.
//!
//! A [`TargetPdu`] is a 48-byte header plus a data segment kept as [`Bytes`],
//! so read data reaches the socket without being copied into a PDU buffer.
//! StatSN, ExpCmdSN and MaxCmdSN sit at bytes 24, 28 and 32 of every target
//! PDU that carries them; the connection's writer stamps them just before the
//! PDU is sent (see [`TargetPdu::stamp`]), so they are always current and
//! StatSN is assigned in send order.
//!
//! [`TargetPdu::write_to`] appends the wire form (header digest, padding,
//! data digest) for the negotiated digests.

use bytes::{BufMut, Bytes, BytesMut};

use crate::pdu::op;
use crate::{BHS_LEN, RESERVED_TAG, digest};

/// How a PDU uses the StatSN field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatSn {
    /// Carries a new StatSN and advances the counter (responses).
    Advance,
    /// Carries the current StatSN without advancing (R2T, NOP-In pings).
    Current,
    /// The field is reserved (Data-In without status).
    None,
}

/// A target PDU ready to be stamped and sent.
#[derive(Debug, Clone)]
pub struct TargetPdu {
    /// The BHS.
    pub header: [u8; BHS_LEN],
    /// The data segment (unpadded).
    pub data: Bytes,
    /// StatSN handling.
    pub stat_sn: StatSn,
}

impl TargetPdu {
    fn new(opcode: u8, flags: u8, itt: u32, data: Bytes, stat_sn: StatSn) -> Self {
        let mut header = [0u8; BHS_LEN];
        header[0] = opcode;
        header[1] = flags;
        header[5..8].copy_from_slice(&crate::data_segment_length_field(data.len()));
        header[16..20].copy_from_slice(&itt.to_be_bytes());
        TargetPdu {
            header,
            data,
            stat_sn,
        }
    }

    fn put_u32(&mut self, at: usize, v: u32) {
        self.header[at..at + 4].copy_from_slice(&v.to_be_bytes());
    }

    fn put_u16(&mut self, at: usize, v: u16) {
        self.header[at..at + 2].copy_from_slice(&v.to_be_bytes());
    }

    /// The opcode.
    pub fn opcode(&self) -> u8 {
        self.header[0] & 0x3f
    }

    /// Fills StatSN (unless reserved), ExpCmdSN and MaxCmdSN.
    pub fn stamp(&mut self, stat_sn: u32, exp_cmd_sn: u32, max_cmd_sn: u32) {
        if self.stat_sn != StatSn::None {
            self.put_u32(24, stat_sn);
        }
        self.put_u32(28, exp_cmd_sn);
        self.put_u32(32, max_cmd_sn);
    }

    /// Appends the header (and its digest) to `out`; the caller sends
    /// [`TargetPdu::data`] and [`TargetPdu::trailer`] after it, which lets
    /// large payloads go out by vectored write without a copy.
    pub fn write_header(&self, out: &mut BytesMut, header_digest: bool) {
        out.put_slice(&self.header);
        if header_digest {
            out.put_slice(&digest::to_wire(digest::crc32c(&[&self.header])));
        }
    }

    /// The padding and data digest that follow the data segment.
    pub fn trailer(&self, data_digest: bool) -> ([u8; 8], usize) {
        let mut t = [0u8; 8];
        let pad = digest::pad_len(self.data.len());
        let mut n = pad;
        if data_digest && !self.data.is_empty() {
            let crc = digest::crc32c(&[&self.data, &[0u8; 3][..pad]]);
            t[pad..pad + 4].copy_from_slice(&digest::to_wire(crc));
            n += 4;
        }
        (t, n)
    }

    /// Appends the whole wire form (header, data, padding, digests) to `out`.
    pub fn write_to(&self, out: &mut BytesMut, header_digest: bool, data_digest: bool) {
        self.write_header(out, header_digest);
        out.put_slice(&self.data);
        let (t, n) = self.trailer(data_digest);
        out.put_slice(&t[..n]);
    }
}

/// SCSI Response flags and residuals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Residual {
    /// Overflow: the command wanted more than the expected transfer length.
    pub overflow: u32,
    /// Underflow: less than the expected transfer length moved.
    pub underflow: u32,
}

impl Residual {
    /// Residual of a transfer of `wanted` bytes against an expected `edtl`.
    pub fn of(wanted: u32, edtl: u32) -> Self {
        if wanted > edtl {
            Residual {
                overflow: wanted - edtl,
                underflow: 0,
            }
        } else {
            Residual {
                overflow: 0,
                underflow: edtl - wanted,
            }
        }
    }

    fn flags(&self) -> u8 {
        if self.overflow > 0 {
            0x04
        } else if self.underflow > 0 {
            0x02
        } else {
            0
        }
    }

    fn count(&self) -> u32 {
        self.overflow.max(self.underflow)
    }
}

/// SCSI Response (0x21).
pub fn scsi_response(
    itt: u32,
    status: u8,
    sense: Option<&[u8]>,
    residual: Residual,
    exp_data_sn: u32,
) -> TargetPdu {
    let data = match sense {
        Some(s) if !s.is_empty() => {
            let mut d = BytesMut::with_capacity(2 + s.len());
            d.put_u16(u16::try_from(s.len()).unwrap_or(u16::MAX));
            d.put_slice(s);
            d.freeze()
        }
        _ => Bytes::new(),
    };
    let mut p = TargetPdu::new(
        op::SCSI_RESPONSE,
        0x80 | residual.flags(),
        itt,
        data,
        StatSn::Advance,
    );
    p.header[2] = 0; // command completed at target
    p.header[3] = status;
    p.put_u32(20, 0); // SNACK tag
    p.put_u32(36, exp_data_sn);
    p.put_u32(44, residual.count());
    p
}

/// SCSI Response with the iSCSI response code "target failure" (0x01), for
/// commands the target could not execute at all.
pub fn scsi_target_failure(itt: u32) -> TargetPdu {
    let mut p = scsi_response(itt, 0, None, Residual::default(), 0);
    p.header[2] = 0x01;
    p
}

/// SCSI Data-In (0x25). With `status = Some(..)` the PDU carries the final
/// status (S bit) and residual.
#[allow(clippy::too_many_arguments)]
pub fn data_in(
    itt: u32,
    lun: [u8; 8],
    data: Bytes,
    data_sn: u32,
    offset: u32,
    final_bit: bool,
    status: Option<(u8, Residual)>,
) -> TargetPdu {
    let mut flags = if final_bit { 0x80 } else { 0 };
    let mut stat = StatSn::None;
    if let Some((_, r)) = status {
        flags |= 0x80 | 0x01 | r.flags();
        stat = StatSn::Advance;
    }
    let mut p = TargetPdu::new(op::DATA_IN, flags, itt, data, stat);
    p.header[8..16].copy_from_slice(&lun);
    p.put_u32(20, RESERVED_TAG);
    p.put_u32(36, data_sn);
    p.put_u32(40, offset);
    if let Some((s, r)) = status {
        p.header[3] = s;
        p.put_u32(44, r.count());
    }
    p
}

/// Ready To Transfer (0x31).
pub fn r2t(itt: u32, lun: [u8; 8], ttt: u32, r2t_sn: u32, offset: u32, len: u32) -> TargetPdu {
    let mut p = TargetPdu::new(op::R2T, 0x80, itt, Bytes::new(), StatSn::Current);
    p.header[8..16].copy_from_slice(&lun);
    p.put_u32(20, ttt);
    p.put_u32(36, r2t_sn);
    p.put_u32(40, offset);
    p.put_u32(44, len);
    p
}

/// NOP-In (0x20): an answer to a NOP-Out (`itt` set, `ttt` reserved) or a
/// target ping (`itt` reserved, `ttt` set when a reply is wanted).
pub fn nop_in(itt: u32, ttt: u32, lun: [u8; 8], data: Bytes) -> TargetPdu {
    let stat = if itt == RESERVED_TAG {
        StatSn::Current
    } else {
        StatSn::Advance
    };
    let mut p = TargetPdu::new(op::NOP_IN, 0x80, itt, data, stat);
    p.header[8..16].copy_from_slice(&lun);
    p.put_u32(20, ttt);
    p
}

/// Task Management Function Response (0x22).
pub fn tmf_response(itt: u32, response: u8) -> TargetPdu {
    let mut p = TargetPdu::new(
        op::TASK_MGMT_RESPONSE,
        0x80,
        itt,
        Bytes::new(),
        StatSn::Advance,
    );
    p.header[2] = response;
    p
}

/// Login Response (0x23).
#[allow(clippy::too_many_arguments)]
pub fn login_response(
    transit: bool,
    cont: bool,
    csg: u8,
    nsg: u8,
    isid: [u8; 6],
    tsih: u16,
    itt: u32,
    status_class: u8,
    status_detail: u8,
    data: Bytes,
) -> TargetPdu {
    let mut flags = ((csg & 3) << 2) | (nsg & 3);
    if transit {
        flags |= 0x80;
    }
    if cont {
        flags |= 0x40;
    }
    let mut p = TargetPdu::new(op::LOGIN_RESPONSE, flags, itt, data, StatSn::Advance);
    p.header[2] = 0; // version-max
    p.header[3] = 0; // version-active
    p.header[8..14].copy_from_slice(&isid);
    p.put_u16(14, tsih);
    p.header[36] = status_class;
    p.header[37] = status_detail;
    p
}

/// Text Response (0x24).
pub fn text_response(
    itt: u32,
    ttt: u32,
    lun: [u8; 8],
    final_bit: bool,
    cont: bool,
    data: Bytes,
) -> TargetPdu {
    let mut flags = 0;
    if final_bit {
        flags |= 0x80;
    }
    if cont {
        flags |= 0x40;
    }
    let mut p = TargetPdu::new(op::TEXT_RESPONSE, flags, itt, data, StatSn::Advance);
    p.header[8..16].copy_from_slice(&lun);
    p.put_u32(20, ttt);
    p
}

/// Logout Response (0x26).
pub fn logout_response(itt: u32, response: u8, time2wait: u16, time2retain: u16) -> TargetPdu {
    let mut p = TargetPdu::new(
        op::LOGOUT_RESPONSE,
        0x80,
        itt,
        Bytes::new(),
        StatSn::Advance,
    );
    p.header[2] = response;
    p.put_u16(40, time2wait);
    p.put_u16(42, time2retain);
    p
}

/// Asynchronous Message (0x32).
pub fn async_message(lun: [u8; 8], event: u8, params: [u16; 3], data: Bytes) -> TargetPdu {
    let mut p = TargetPdu::new(op::ASYNC, 0x80, RESERVED_TAG, data, StatSn::Advance);
    p.header[8..16].copy_from_slice(&lun);
    p.put_u32(20, RESERVED_TAG);
    p.header[36] = event;
    p.header[37] = 0;
    p.put_u16(38, params[0]);
    p.put_u16(40, params[1]);
    p.put_u16(42, params[2]);
    p
}

/// Reject reasons (RFC 7143 §11.17.1).
pub mod reject {
    /// Data (payload) digest error.
    pub const DATA_DIGEST: u8 = 0x02;
    /// SNACK reject.
    pub const SNACK_REJECT: u8 = 0x03;
    /// Protocol error.
    pub const PROTOCOL_ERROR: u8 = 0x04;
    /// Command not supported.
    pub const COMMAND_NOT_SUPPORTED: u8 = 0x05;
    /// Immediate command reject: too many immediate commands.
    pub const IMMEDIATE_REJECT: u8 = 0x06;
    /// Task in progress.
    pub const TASK_IN_PROGRESS: u8 = 0x07;
    /// Invalid data ack.
    pub const INVALID_DATA_ACK: u8 = 0x08;
    /// Invalid PDU field.
    pub const INVALID_PDU_FIELD: u8 = 0x09;
    /// Out of resources: long operation reject.
    pub const LONG_OPERATION_REJECT: u8 = 0x0a;
    /// Waiting for logout.
    pub const WAITING_FOR_LOGOUT: u8 = 0x0c;
}

/// Reject (0x3f): echoes the offending BHS in the data segment.
pub fn reject(reason: u8, rejected_bhs: &[u8; BHS_LEN]) -> TargetPdu {
    let mut p = TargetPdu::new(
        op::REJECT,
        0x80,
        RESERVED_TAG,
        Bytes::copy_from_slice(rejected_bhs),
        StatSn::Advance,
    );
    p.header[2] = reason;
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pdu::{Decoder, Header};

    #[test]
    fn residual_math() {
        assert_eq!(Residual::of(512, 1024).underflow, 512);
        assert_eq!(Residual::of(1024, 512).overflow, 512);
        assert_eq!(Residual::of(512, 512), Residual::default());
    }

    #[test]
    fn data_in_with_status_sets_flags_and_fields() {
        let mut p = data_in(
            9,
            [0; 8],
            Bytes::from_static(&[1, 2, 3]),
            4,
            8192,
            true,
            Some((0, Residual::of(3, 10))),
        );
        p.stamp(100, 200, 231);
        assert_eq!(p.header[0], op::DATA_IN);
        assert_eq!(p.header[1], 0x80 | 0x01 | 0x02);
        assert_eq!(&p.header[5..8], &[0, 0, 3]);
        assert_eq!(
            u32::from_be_bytes(p.header[24..28].try_into().unwrap()),
            100
        );
        assert_eq!(u32::from_be_bytes(p.header[36..40].try_into().unwrap()), 4);
        assert_eq!(
            u32::from_be_bytes(p.header[40..44].try_into().unwrap()),
            8192
        );
        assert_eq!(u32::from_be_bytes(p.header[44..48].try_into().unwrap()), 7);
        let mut wire = BytesMut::new();
        p.write_to(&mut wire, true, true);
        assert_eq!(wire.len(), 48 + 4 + 4 + 4);
    }

    #[test]
    fn data_in_without_status_leaves_stat_sn_reserved() {
        let mut p = data_in(1, [0; 8], Bytes::new(), 0, 0, false, None);
        p.stamp(77, 1, 2);
        assert_eq!(&p.header[24..28], &[0, 0, 0, 0]);
    }

    #[test]
    fn our_encoding_frames_with_our_decoder() {
        // The decoder is for initiator PDUs but framing is opcode-agnostic.
        let p = text_response(
            5,
            RESERVED_TAG,
            [0; 8],
            true,
            false,
            Bytes::from_static(b"a=b\0"),
        );
        for (hd, dd) in [(false, false), (true, true)] {
            let mut wire = BytesMut::new();
            p.write_to(&mut wire, hd, dd);
            let dec = Decoder {
                max_data_segment: 8192,
                header_digest: hd,
                data_digest: dd,
            };
            let got = dec.decode(&mut wire).unwrap().unwrap();
            assert_eq!(&got.data[..], b"a=b\0");
            assert!(!got.data_digest_error);
            assert!(matches!(
                got.header,
                Header::Unknown {
                    opcode: 0x24,
                    itt: 5
                }
            ));
        }
    }
}
