//! Encoders for initiator PDUs: the inverse of [`pdu::parse_bhs`].
//!
//! A target never sends these; tests, fuzz seeds and tools use them to speak
//! to a target in typed headers instead of hand-filled byte offsets.
//! Invariant: for every [`Header`] (AHS-free, so CDBs of at most 16 bytes),
//! `parse_bhs(&bhs(h, n)) == *h`, and [`write()`] produces exactly what
//! [`Decoder`](crate::pdu::Decoder) frames back into the same header and
//! data.

use bytes::{BufMut, BytesMut};

use crate::pdu::{self, Header, TaskAttr, op};
use crate::{BHS_LEN, digest};

/// The 48-byte BHS of `header` with a data segment of `data_len` bytes
/// (no AHS).
pub fn bhs(header: &Header, data_len: usize) -> [u8; BHS_LEN] {
    let mut b = [0u8; BHS_LEN];
    b[5..8].copy_from_slice(&crate::data_segment_length_field(data_len));
    b[16..20].copy_from_slice(&header.itt().to_be_bytes());
    let put = |b: &mut [u8; BHS_LEN], at: usize, v: u32| {
        b[at..at + 4].copy_from_slice(&v.to_be_bytes());
    };
    let (opcode, immediate) = match *header {
        Header::NopOut {
            immediate,
            lun,
            ttt,
            cmd_sn,
            exp_stat_sn,
            ..
        } => {
            b[1] = 0x80;
            b[8..16].copy_from_slice(&lun);
            put(&mut b, 20, ttt);
            put(&mut b, 24, cmd_sn);
            put(&mut b, 28, exp_stat_sn);
            (op::NOP_OUT, immediate)
        }
        Header::ScsiCommand {
            immediate,
            final_bit,
            read,
            write,
            attr,
            lun,
            edtl,
            cmd_sn,
            exp_stat_sn,
            cdb,
            ..
        } => {
            b[1] = flag(final_bit, 0x80) | flag(read, 0x40) | flag(write, 0x20) | attr_bits(attr);
            b[8..16].copy_from_slice(&lun);
            put(&mut b, 20, edtl);
            put(&mut b, 24, cmd_sn);
            put(&mut b, 28, exp_stat_sn);
            b[32..48].copy_from_slice(&cdb);
            (op::SCSI_COMMAND, immediate)
        }
        Header::TaskMgmt {
            immediate,
            function,
            lun,
            ref_task_tag,
            cmd_sn,
            exp_stat_sn,
            ref_cmd_sn,
            exp_data_sn,
            ..
        } => {
            b[1] = 0x80 | (function & 0x7f);
            b[8..16].copy_from_slice(&lun);
            put(&mut b, 20, ref_task_tag);
            put(&mut b, 24, cmd_sn);
            put(&mut b, 28, exp_stat_sn);
            put(&mut b, 32, ref_cmd_sn);
            put(&mut b, 36, exp_data_sn);
            (op::TASK_MGMT, immediate)
        }
        Header::Login {
            transit,
            cont,
            csg,
            nsg,
            version_max,
            version_min,
            isid,
            tsih,
            cid,
            cmd_sn,
            exp_stat_sn,
            ..
        } => {
            b[1] = flag(transit, 0x80) | flag(cont, 0x40) | ((csg & 3) << 2) | (nsg & 3);
            b[2] = version_max;
            b[3] = version_min;
            b[8..14].copy_from_slice(&isid);
            b[14..16].copy_from_slice(&tsih.to_be_bytes());
            b[20..22].copy_from_slice(&cid.to_be_bytes());
            put(&mut b, 24, cmd_sn);
            put(&mut b, 28, exp_stat_sn);
            // Login requests are always immediate.
            (op::LOGIN, true)
        }
        Header::Text {
            immediate,
            final_bit,
            cont,
            lun,
            ttt,
            cmd_sn,
            exp_stat_sn,
            ..
        } => {
            b[1] = flag(final_bit, 0x80) | flag(cont, 0x40);
            b[8..16].copy_from_slice(&lun);
            put(&mut b, 20, ttt);
            put(&mut b, 24, cmd_sn);
            put(&mut b, 28, exp_stat_sn);
            (op::TEXT, immediate)
        }
        Header::DataOut {
            final_bit,
            lun,
            ttt,
            exp_stat_sn,
            data_sn,
            buffer_offset,
            ..
        } => {
            b[1] = flag(final_bit, 0x80);
            b[8..16].copy_from_slice(&lun);
            put(&mut b, 20, ttt);
            put(&mut b, 28, exp_stat_sn);
            put(&mut b, 36, data_sn);
            put(&mut b, 40, buffer_offset);
            (op::DATA_OUT, false)
        }
        Header::Logout {
            immediate,
            reason,
            cid,
            cmd_sn,
            exp_stat_sn,
            ..
        } => {
            b[1] = 0x80 | (reason & 0x7f);
            b[20..22].copy_from_slice(&cid.to_be_bytes());
            put(&mut b, 24, cmd_sn);
            put(&mut b, 28, exp_stat_sn);
            (op::LOGOUT, immediate)
        }
        Header::Snack { .. } => (op::SNACK, false),
        Header::Unknown { opcode, .. } => (opcode & 0x3f, false),
    };
    b[0] = opcode | flag(immediate, 0x40);
    b
}

/// Appends the wire form of a PDU (BHS, data, padding; no AHS, no digests)
/// to `out`.
pub fn write(header: &Header, data: &[u8], out: &mut BytesMut) {
    out.put_slice(&bhs(header, data.len()));
    out.put_slice(data);
    out.put_bytes(0, digest::pad_len(data.len()));
}

/// The received form of a PDU, as [`Decoder`](pdu::Decoder) would hand it
/// to a target (no digests, so no digest error).
pub fn pdu(header: &Header, data: &[u8]) -> pdu::Pdu {
    let mut wire = BytesMut::new();
    write(header, data, &mut wire);
    let dec = pdu::Decoder {
        max_data_segment: 0x00ff_ffff,
        header_digest: false,
        data_digest: false,
    };
    match dec.decode(&mut wire) {
        Ok(Some(p)) => p,
        // A whole, digest-free PDU under the largest segment length
        // always frames.
        _ => unreachable!("encoded PDU did not frame"),
    }
}

fn flag(set: bool, bit: u8) -> u8 {
    if set { bit } else { 0 }
}

fn attr_bits(attr: TaskAttr) -> u8 {
    match attr {
        TaskAttr::Untagged => 0,
        TaskAttr::Simple => 1,
        TaskAttr::Ordered => 2,
        TaskAttr::HeadOfQueue => 3,
        TaskAttr::Aca => 4,
        TaskAttr::Reserved(v) => v & 7,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pdu::parse_bhs;

    fn samples() -> Vec<Header> {
        let lun = [0, 3, 0, 0, 0, 0, 0, 0];
        let mut cdb = [0u8; 16];
        cdb[0] = 0x2a;
        cdb[15] = 0x77;
        vec![
            Header::NopOut {
                immediate: true,
                lun,
                itt: 1,
                ttt: 0xffff_ffff,
                cmd_sn: 2,
                exp_stat_sn: 3,
            },
            Header::ScsiCommand {
                immediate: false,
                final_bit: false,
                read: false,
                write: true,
                attr: TaskAttr::Ordered,
                lun,
                itt: 4,
                edtl: 65536,
                cmd_sn: 5,
                exp_stat_sn: 6,
                cdb,
            },
            Header::TaskMgmt {
                immediate: true,
                function: 5,
                lun,
                itt: 7,
                ref_task_tag: 8,
                cmd_sn: 9,
                exp_stat_sn: 10,
                ref_cmd_sn: 11,
                exp_data_sn: 12,
            },
            Header::Login {
                transit: true,
                cont: false,
                csg: 1,
                nsg: 3,
                version_max: 0,
                version_min: 0,
                isid: [0x80, 1, 2, 3, 4, 5],
                tsih: 0,
                itt: 13,
                cid: 14,
                cmd_sn: 15,
                exp_stat_sn: 16,
            },
            Header::Text {
                immediate: true,
                final_bit: true,
                cont: false,
                lun,
                itt: 17,
                ttt: 18,
                cmd_sn: 19,
                exp_stat_sn: 20,
            },
            Header::DataOut {
                final_bit: true,
                lun,
                itt: 21,
                ttt: 22,
                exp_stat_sn: 23,
                data_sn: 24,
                buffer_offset: 25,
            },
            Header::Logout {
                immediate: true,
                reason: 1,
                itt: 26,
                cid: 27,
                cmd_sn: 28,
                exp_stat_sn: 29,
            },
            Header::Snack { itt: 30 },
            Header::Unknown {
                opcode: 0x1c,
                itt: 31,
            },
        ]
    }

    #[test]
    fn every_header_round_trips_through_the_parser() {
        for h in samples() {
            assert_eq!(parse_bhs(&bhs(&h, 0)), h);
        }
    }

    #[test]
    fn written_pdus_frame_back_with_their_data() {
        for h in samples() {
            let p = pdu(&h, b"abcde");
            assert_eq!(p.header, h);
            assert_eq!(&p.data[..], b"abcde");
            assert!(!p.data_digest_error);
        }
    }
}
