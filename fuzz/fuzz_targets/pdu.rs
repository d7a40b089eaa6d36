//! Fuzzes the PDU framer and BHS parser: arbitrary bytes, with and without
//! digests, at several receive limits. Must never panic or over-allocate.
#![no_main]

use bytes::BytesMut;
use depot_iscsi_proto::pdu::Decoder;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else { return };
    let dec = Decoder {
        max_data_segment: [512, 8192, 262_144][usize::from(flags % 3)],
        header_digest: flags & 0x10 != 0,
        data_digest: flags & 0x20 != 0,
    };
    let mut buf = BytesMut::from(rest);
    while let Ok(Some(pdu)) = dec.decode(&mut buf) {
        let _ = pdu.full_cdb();
        let _ = pdu.header.cmd_sn();
    }
});
