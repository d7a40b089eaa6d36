//! Fuzzes the target side of a CHAP exchange (`depot_iscsi_proto::chap`)
//! on what an initiator sends: `CHAP_A`, then `CHAP_N`, `CHAP_R` and, for
//! mutual CHAP, `CHAP_I` and `CHAP_C`, plus the binary value decoder
//! (`0x` hex, `0b` base64).
//!
//! Input: one control byte, then a login text segment (`key=value\0...`).
//! Control bit 0 makes the harness answer the challenge correctly (so the
//! fuzzer reaches the mutual-CHAP path), bit 1 configures target
//! credentials for mutual CHAP, bits 2-3 pick the hex or base64 encoding
//! of that answer.
//!
//! Invariants checked: no panic; every binary value that decodes is
//! non-empty and survives a hex round trip; an exchange succeeds only with
//! the right name and response, and then answers mutual CHAP with a
//! response of the algorithm's length.
#![no_main]

use base64::Engine as _;
use depot_iscsi_proto::chap::{Algorithm, ChapTarget, Secret, decode_binary, encode_hex};
use depot_iscsi_proto::text::KeyValues;
use libfuzzer_sys::fuzz_target;

const ID: u8 = 7;
const CHALLENGE: [u8; 32] = [0x5a; 32];

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, rest)) = data.split_first() else {
        return;
    };
    let Ok(mut offers) = KeyValues::parse(rest) else {
        return;
    };
    for (_, v) in &offers.0 {
        if let Some(b) = decode_binary(v) {
            assert!(!b.is_empty());
            assert_eq!(decode_binary(&encode_hex(&b)).as_deref(), Some(&b[..]));
        }
    }
    let initiator = Secret {
        user: "alice".into(),
        secret: "initiator-secret".into(),
    };
    let target = Secret {
        user: "tgt".into(),
        secret: "target-secret-1".into(),
    };
    let mut chap = ChapTarget::new(ID, CHALLENGE);
    let mut resp = KeyValues::default();
    let chap_a = offers.get("CHAP_A").unwrap_or("5").to_string();
    let alg = chap_a.split(',').find_map(Algorithm::from_code);
    match chap.offer(&chap_a, &mut resp) {
        Ok(()) => {
            let alg = alg.expect("an accepted offer names an algorithm");
            assert_eq!(resp.get("CHAP_A"), Some(alg.code().to_string().as_str()));
            let c = decode_binary(resp.get("CHAP_C").expect("a challenge is sent"));
            assert_eq!(c.as_deref(), Some(&CHALLENGE[..]));
        }
        Err(_) => {
            assert!(alg.is_none());
            return;
        }
    }
    let alg = alg.expect("checked above");
    let right = alg.response(ID, initiator.secret.as_bytes(), &CHALLENGE);
    if ctl & 1 != 0 {
        let answer = match (ctl >> 2) & 3 {
            0 | 1 => encode_hex(&right),
            2 => format!(
                "0b{}",
                base64::engine::general_purpose::STANDARD.encode(&right)
            ),
            _ => encode_hex(&right).to_uppercase().replacen("0X", "0x", 1),
        };
        offers.0.retain(|(k, _)| k != "CHAP_R");
        offers.push("CHAP_R", answer);
    }
    let mut out = KeyValues::default();
    let with_target = (ctl & 2 != 0).then_some(&target);
    let result = chap.verify(&offers, &initiator, with_target, &mut out);
    if result.is_ok() {
        assert!(chap.is_done());
        assert_eq!(offers.get("CHAP_N"), Some("alice"));
        let r = offers.get("CHAP_R").and_then(decode_binary);
        assert_eq!(r.as_deref(), Some(&right[..]));
        if let Some(mutual) = out.get("CHAP_R") {
            let m = decode_binary(mutual).expect("our answer decodes");
            assert_eq!(m.len(), alg.digest_len());
            assert_eq!(out.get("CHAP_N"), Some("tgt"));
        }
    } else {
        assert!(!chap.is_done());
    }
});
