//! Fuzzes the engine's JSON records: the volume manifest
//! (`depot_engine::meta::VolumeMeta`, stored in the local index and as
//! `vol/<id>/manifest` on the backend) and the backend catalog entry
//! (`catalog/<name>`), followed by what a restore from the backend and a
//! replay do with them: skip discarded generations, fold generations into snapshot boundaries, find
//! snapshots by name, build the object keys the manifest names.
//!
//! Invariants checked: no panic; whatever parses serialises and parses
//! back to an equal value; the generation helpers agree with the lists
//! they read.
#![no_main]

use depot_engine::backend::keys;
use depot_engine::meta::{CatalogEntry, VolumeMeta};
use depot_engine::name::check_name;
use libfuzzer_sys::fuzz_target;

fn round_trip<T>(v: &T) -> T
where
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    let bytes = serde_json::to_vec(v).expect("a parsed record serialises");
    serde_json::from_slice(&bytes).expect("our own JSON parses")
}

fn manifest(meta: &VolumeMeta) {
    assert_eq!(&round_trip(meta), meta);
    let mut gens: Vec<u32> = vec![0, 1, meta.head_gen, meta.next_gen, u32::MAX];
    gens.extend(meta.snapshots.iter().map(|s| s.generation));
    gens.extend(meta.shipped.tlogs.iter().map(|t| t.generation));
    gens.extend(meta.discarded_gens.iter().flat_map(|&(lo, hi)| [lo, hi]));
    if let Some(p) = &meta.parent {
        gens.push(p.generation);
    }
    for &g in &gens {
        let discarded = meta
            .discarded_gens
            .iter()
            .any(|&(lo, hi)| lo <= g && g <= hi);
        assert_eq!(meta.is_discarded(g), discarded);
        let b = meta.boundary(g);
        assert!(b == meta.head_gen || (b >= g && meta.snapshots.iter().any(|s| s.generation == b)));
    }
    for s in &meta.snapshots {
        let found = meta.snapshot(&s.name).expect("a listed snapshot is found");
        assert_eq!(found.name, s.name);
    }
    // The objects a restore fetches.
    let _ = keys::manifest(meta.id);
    if let Some((ck, _cut)) = meta.shipped.checkpoint {
        let k = keys::checkpoint(meta.id, ck, meta.checkpoint_owner(ck));
        assert_eq!(keys::volume_of(&k), Some(meta.id));
    }
    for t in &meta.shipped.tlogs {
        let owner = meta.tlog_owner(t.seq);
        let k = keys::tlog(meta.id, t.seq, owner);
        assert_eq!(
            keys::parse_volume_object(&k),
            Some((meta.id, keys::VolumeObject::Tlog(t.seq, owner)))
        );
    }
}

fn catalog(entry: &CatalogEntry) {
    assert_eq!(&round_trip(entry), entry);
    let k = keys::catalog(&entry.name);
    assert_eq!(keys::catalog_name(&k), Some(entry.name.as_str()));
    if check_name("vDisk", &entry.name).is_ok() {
        assert_eq!(keys::parse_volume_object(&k), None);
        assert_eq!(keys::volume_of(&k), None);
    }
}

fuzz_target!(|data: &[u8]| {
    let meta = serde_json::from_slice::<VolumeMeta>(data).ok();
    let entry = serde_json::from_slice::<CatalogEntry>(data).ok();
    if let Some(m) = &meta {
        manifest(m);
    }
    if let Some(c) = &entry {
        catalog(c);
    }
});
