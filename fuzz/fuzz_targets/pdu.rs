//! Fuzzes the PDU framer and BHS parser: arbitrary bytes, with and without
//! digests, at several receive limits. Must never panic or over-allocate.
//!
//! Invariants checked: a framed PDU never carries more data than the limit;
//! it consumes at least its header, AHS and data; its header is what
//! `parse_bhs` makes of its BHS; an incomplete PDU consumes nothing; the
//! initiator-side encoder (`initiator::bhs`, `initiator::write`) turns the
//! parsed header (and data) back into a PDU that parses to the same.
#![no_main]

use bytes::BytesMut;
use depot_iscsi_proto::BHS_LEN;
use depot_iscsi_proto::initiator;
use depot_iscsi_proto::pdu::{Decoder, parse_bhs};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let dec = Decoder {
        max_data_segment: [512, 8192, 262_144][usize::from(flags % 3)],
        header_digest: flags & 0x10 != 0,
        data_digest: flags & 0x20 != 0,
    };
    let mut buf = BytesMut::from(rest);
    loop {
        let before = buf.len();
        match dec.decode(&mut buf) {
            Ok(Some(pdu)) => {
                assert!(pdu.data.len() <= dec.max_data_segment as usize);
                assert_eq!(pdu.ahs.len(), usize::from(pdu.bhs[4]) * 4);
                assert!(before - buf.len() >= BHS_LEN + pdu.ahs.len() + pdu.data.len());
                assert_eq!(parse_bhs(&pdu.bhs), pdu.header);
                let bhs = initiator::bhs(&pdu.header, pdu.data.len());
                assert_eq!(parse_bhs(&bhs), pdu.header);
                if pdu.ahs.is_empty() {
                    let mut wire = BytesMut::new();
                    initiator::write(&pdu.header, &pdu.data, &mut wire);
                    let plain = Decoder {
                        header_digest: false,
                        data_digest: false,
                        ..dec.clone()
                    };
                    let back = plain
                        .decode(&mut wire)
                        .expect("an encoded PDU frames")
                        .expect("an encoded PDU is whole");
                    assert_eq!(back.header, pdu.header);
                    assert_eq!(back.data, pdu.data);
                    assert!(wire.is_empty());
                }
                let _ = pdu.full_cdb();
                let _ = pdu.header.cmd_sn();
                let _ = pdu.header.exp_stat_sn();
                let _ = pdu.header.itt();
                let _ = pdu.header.is_immediate();
            }
            Ok(None) => {
                assert_eq!(buf.len(), before);
                break;
            }
            Err(_) => break,
        }
    }
});
