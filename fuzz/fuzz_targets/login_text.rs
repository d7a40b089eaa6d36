//! Fuzzes the login text path: key=value parsing, operational key
//! negotiation and CHAP response verification on arbitrary text.
//!
//! Invariants checked: no panic; parsed text re-encodes to text that parses
//! to the same keys and values; negotiation keeps FirstBurstLength within
//! MaxBurstLength; what the target answers parses.
#![no_main]

use depot_iscsi_proto::chap::{ChapTarget, Secret};
use depot_iscsi_proto::params::{Negotiator, TargetLimits};
use depot_iscsi_proto::text::KeyValues;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(offers) = KeyValues::parse(data) else {
        return;
    };
    assert_eq!(KeyValues::parse(&offers.encode()).as_ref(), Ok(&offers));
    let _ = offers.duplicate_key();
    let mut n = Negotiator::new(TargetLimits::default());
    let mut resp = KeyValues::default();
    n.negotiate(&offers, &mut resp, true);
    assert!(n.params.first_burst_length <= n.params.max_burst_length);
    let mut chap = ChapTarget::new(1, [7u8; 32]);
    if let Some(a) = offers.get("CHAP_A") {
        let _ = chap.offer(a, &mut resp);
    } else {
        let _ = chap.offer("5", &mut resp);
    }
    let secret = Secret {
        user: "u".into(),
        secret: "s".into(),
    };
    let _ = chap.verify(&offers, &secret, Some(&secret), &mut resp);
    let _ = KeyValues::parse(&resp.encode()).expect("our own encoding parses");
});
