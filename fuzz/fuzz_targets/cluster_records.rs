//! Fuzzes what a router reads from etcd: the records of `depot_cluster`
//! (`RouterRecord`, `AliveRecord`, `OwnerRecord` and the ownership built
//! from a key-value), the cluster CA record of `depot_peer` (JSON, then its
//! PEM certificate and the name check run on peer certificates), and key
//! parsing (`depot_cluster::keys::Keys::parse`).
//!
//! Input: one byte of revision bits, then `prefix \n key \n value`. The
//! value goes through every record type.
//!
//! Invariants checked: no panic; whatever parses serialises and parses
//! back to an equal value; a parsed key rebuilds exactly; an ownership's
//! generation is the key-value's revision, and a negative revision is
//! refused.
#![no_main]

use depot_cluster::keys::{Keys, kind};
use depot_cluster::store::Versioned;
use depot_cluster::{AliveRecord, OwnerRecord, Ownership, RouterRecord};
use depot_peer::CaRecord;
use depot_peer::pki::cert_names;
use libfuzzer_sys::fuzz_target;

fn round_trip<T>(v: &T)
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let bytes = serde_json::to_vec(v).expect("a parsed record serialises");
    let back: T = serde_json::from_slice(&bytes).expect("our own JSON parses");
    assert_eq!(&back, v);
}

fn key(prefix: &str, key: &str) {
    let keys = Keys::new(prefix);
    if let Some((k, name)) = keys.parse(key) {
        assert!(!k.is_empty() && !name.is_empty() && !k.contains('/'));
        assert_eq!(keys.key(k, name), key);
        assert!(key.starts_with(&keys.kind_prefix(k)));
        assert!(key.starts_with(&keys.root()));
    }
    for k in [kind::ROUTERS, kind::ALIVE, kind::OWNERS] {
        if !key.is_empty() && !key.contains('/') {
            assert_eq!(keys.parse(&keys.key(k, key)), Some((k, key)));
        }
    }
}

fn records(v: &Versioned) {
    if let Ok(r) = v.json::<RouterRecord>() {
        round_trip(&r);
    }
    if let Ok(r) = v.json::<AliveRecord>() {
        round_trip(&r);
    }
    if let Ok(r) = v.json::<OwnerRecord>() {
        round_trip(&r);
        match Ownership::from_versioned(v) {
            Ok(o) => {
                assert_eq!(o.router, r.router);
                assert_eq!(i64::try_from(o.generation).ok(), Some(v.mod_revision));
            }
            Err(_) => assert!(v.mod_revision < 0),
        }
    } else {
        assert!(Ownership::from_versioned(v).is_err());
    }
    if let Ok(ca) = v.json::<CaRecord>() {
        round_trip(&ca);
        if let Ok(der) = ca.cert_der() {
            let _ = cert_names(&der, "r1");
            let _ = cert_names(&der, &ca.name);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&rev, rest)) = data.split_first() else {
        return;
    };
    let mut parts = rest.splitn(3, |&b| b == b'\n');
    let prefix = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let k = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let value = parts.next().unwrap_or_default().to_vec();
    key(&prefix, &k);
    let revision = match rev % 4 {
        0 => i64::from(rev),
        1 => -i64::from(rev),
        2 => i64::MAX - i64::from(rev),
        _ => i64::MIN + i64::from(rev),
    };
    records(&Versioned {
        key: k.into_owned(),
        value,
        mod_revision: revision,
        create_revision: revision,
        lease: i64::from(rev),
    });
});
