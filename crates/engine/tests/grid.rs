//! The engine's side of a grid (several routers sharing a vPool's backend,
//! one owning each vDisk): generation-named keys and epochs, fencing of a
//! deposed owner, opening as an owner, and the live hand-over of a vDisk's
//! unshipped segments. Local-directory backend; the S3 variants are in
//! `grid_s3.rs`.
#![allow(missing_docs)]

mod common;

use std::sync::Arc;

use common::grid::{Blind, Registry, backend_keys, copy_files};
use common::handover::{Model, verify};
use common::*;
use depot_block::{BlockDevice, BlockError};
use depot_engine::{EngineError, FencingMode, Owner, VPool, VPoolConfig};

fn cfg_at(root: &std::path::Path, flash: &str) -> VPoolConfig {
    let mut c = config(root);
    c.cache_dir = root.join(flash);
    c
}

fn pool_at(root: &std::path::Path, flash: &str, rt: &tokio::runtime::Runtime) -> Arc<VPool> {
    VPool::open(cfg_at(root, flash), rt.handle().clone()).unwrap()
}

fn read4k(v: &depot_engine::Volume, cluster: u64) -> Vec<u8> {
    let mut b = vec![0u8; 4096];
    v.read(cluster * 8, &mut b).unwrap();
    b
}

/// Keys of the objects a local backend holds for volume `id`, by owner
/// generation suffix ("" for generation 0).
fn keys_of(root: &std::path::Path, id: u64, dir: &str) -> Vec<String> {
    let prefix = format!("pool/vol/{id:016x}/{dir}/");
    backend_keys(&root.join("backend"))
        .into_iter()
        .filter_map(|k| k.strip_prefix(&prefix).map(str::to_string))
        .collect()
}

#[test]
fn a_standalone_volume_taken_over_by_generations_keeps_its_old_objects() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let reg = Registry::default();
    let p1 = pool_at(root, "flash1", &rt);
    assert_eq!(p1.fencing_mode(), FencingMode::Local);
    // Written by today's code path: generation 0, old keys.
    let v = p1.create_volume("v", 8 << 20, 4096).unwrap();
    let mut m = Model::new(8 << 20);
    m.random_4k(&v, 200, 1);
    m.snapshot(&v, "s1");
    m.seq_1m(&v, 0, 2, 2);
    v.sync_to_backend().unwrap();
    let id = v.id();
    let old = keys_of(root, id, "tlog");
    assert!(
        !old.is_empty() && old.iter().all(|k| k.len() == 16),
        "{old:?}"
    );
    // More writes that stay on flash, then a crash.
    m.random_4k(&v, 100, 3);
    v.flush().unwrap();
    p1.abandon();
    drop((v, p1));

    // The same router restarts as generation 1 of a grid: the unshipped
    // segments ship under generation 1, the shipped objects keep their
    // keys.
    let p1 = pool_at(root, "flash1", &rt);
    let v = p1.open_volume_as("v", &reg.grant(1)).unwrap();
    assert_eq!((v.owner_generation(), v.epoch_generation()), (1, 1));
    verify(&v, &m.data, "generation 1 after a local restart");
    m.random_4k(&v, 100, 4);
    v.sync_to_backend().unwrap();
    let tlogs = keys_of(root, id, "tlog");
    assert!(
        tlogs.iter().any(|k| k.ends_with(".0000000000000001")),
        "{tlogs:?}"
    );
    assert!(old.iter().all(|k| tlogs.contains(k)), "old keys stay");
    p1.shutdown().unwrap();
    drop((v, p1));

    // Generation 2 elsewhere, from the backend alone: every generation's
    // objects read, snapshots included; a scrub keeps them readable.
    let p2 = pool_at(root, "flash2", &rt);
    let v = p2.open_volume_as("v", &reg.grant(2)).unwrap();
    verify(&v, &m.data, "generation 2 from the backend");
    let c = p2
        .clone_volume_as("v", Some("s1"), "v-s1", &Registry::default().grant(1))
        .unwrap();
    verify(&c, &m.snaps[0].1, "snapshot s1");
    m.seq_1m(&v, 4, 2, 5);
    v.sync_to_backend().unwrap();
    let r = p2.scrub().unwrap();
    assert!(r.errors.is_empty(), "{r:?}");
    verify(&v, &m.data, "after a scrub");
    p2.shutdown().unwrap();
    drop((v, c, p2));
    let p3 = pool_at(root, "flash3", &rt);
    let v = p3.open_volume_as("v", &reg.grant(3)).unwrap();
    verify(&v, &m.data, "generation 3 after the scrub");
    // Standalone opens of a grid volume keep working (generation 0 derives
    // the same keys).
    p3.shutdown().unwrap();
    drop((v, p3));
    let p4 = pool_at(root, "flash4", &rt);
    let v = p4.open_volume("v").unwrap();
    verify(&v, &m.data, "standalone open of a grid volume");
    p4.shutdown().unwrap();
}

#[test]
fn clones_read_parents_written_under_older_generations() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (rb, rc) = (Registry::default(), Registry::default());
    let p1 = pool_at(root, "flash1", &rt);
    let base = p1
        .create_volume_as("base", 8 << 20, 4096, &rb.grant(1))
        .unwrap();
    let mut mb = Model::new(8 << 20);
    mb.random_4k(&base, 300, 1);
    mb.snapshot(&base, "gold");
    mb.random_4k(&base, 100, 2);
    let c = p1
        .clone_volume_as("base", Some("gold"), "c", &rc.grant(1))
        .unwrap();
    let mut mc = Model::new(8 << 20);
    mc.data.copy_from_slice(&mb.snaps[0].1);
    mc.random_4k(&c, 100, 3);
    p1.shutdown().unwrap();
    drop((base, c, p1));

    // Generation 2 of both on another router.
    let p2 = pool_at(root, "flash2", &rt);
    let base = p2.open_volume_as("base", &rb.grant(2)).unwrap();
    let c = p2.open_volume_as("c", &rc.grant(2)).unwrap();
    verify(&c, &mc.data, "clone, generation 2");
    mc.random_4k(&c, 100, 4);
    mb.random_4k(&base, 100, 5);
    p2.shutdown().unwrap();
    drop((base, c, p2));

    // Generation 3 of the clone alone: its parent opens as a reader.
    let p3 = pool_at(root, "flash3", &rt);
    let c = p3.open_volume_as("c", &rc.grant(3)).unwrap();
    verify(&c, &mc.data, "clone, generation 3");
    let base = p3.open_volume("base").unwrap();
    assert!(base.is_reader());
    verify(&base, &mb.data, "parent as a reader");
    assert!(matches!(
        base.write(0, &[1u8; 4096], false),
        Err(BlockError::ReadOnly)
    ));
    assert!(base.create_snapshot("x").is_err());
    assert!(
        p3.clone_volume_as("base", Some("gold"), "c2", &Owner::new(Arc::new(Blind(1))))
            .is_err(),
        "cloning needs the parent owned here"
    );
    // Its owner opens it here after all: the reader becomes the owner.
    let base2 = p3.open_volume_as("base", &rb.grant(3)).unwrap();
    assert!(Arc::ptr_eq(&base, &base2));
    assert!(!base.is_reader());
    mb.random_4k(&base, 50, 6);
    verify(&base, &mb.data, "parent, generation 3");
    verify(&c, &mc.data, "clone after its parent's takeover");
    p3.shutdown().unwrap();
}

#[test]
fn a_failed_ownership_check_fences_the_volume() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let reg = Registry::default();
    let p = pool_at(root, "flash1", &rt);
    let v = p
        .create_volume_as("x", 4 << 20, 4096, &reg.grant(1))
        .unwrap();
    v.write(0, &pattern(1, 0, 8192), false).unwrap();
    v.sync_to_backend().unwrap();
    // The cluster store moved the vDisk on; this router has not noticed.
    reg.set(2);
    // The write path asks nobody...
    v.write(4, &pattern(2, 4, 4096), false).unwrap();
    // ...but the next manifest upload does, and fences the volume.
    assert!(matches!(v.sync_to_backend(), Err(EngineError::Fenced(_))));
    assert!(v.is_fenced());
    assert!(matches!(
        v.read(0, &mut [0u8; 4096]),
        Err(BlockError::Unavailable(_))
    ));
    assert!(matches!(
        v.write(0, &[0u8; 4096], false),
        Err(BlockError::Unavailable(_))
    ));
    assert!(v.create_snapshot("s").is_err());
    assert!(p.scrub().unwrap().errors.len() == 1);
    // Shutdown leaves it alone.
    p.shutdown().unwrap();
}

#[test]
fn an_ownership_check_that_cannot_reach_the_store_fences_nothing() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let reg = Registry::default();
    let p = pool_at(dir.path(), "flash1", &rt);
    let v = p
        .create_volume_as("x", 4 << 20, 4096, &reg.grant(1))
        .unwrap();
    v.write(0, &pattern(1, 0, 8192), false).unwrap();
    v.sync_to_backend().unwrap();
    // etcd is down: nothing can be published, I/O goes on.
    reg.cut_off();
    v.write(4, &pattern(2, 4, 4096), true).unwrap();
    assert!(matches!(
        v.sync_to_backend(),
        Err(EngineError::BackendUnavailable(_))
    ));
    assert!(!v.is_fenced());
    assert_eq!(read4k(&v, 0), pattern(1, 0, 4096));
    v.write(16, &pattern(3, 16, 4096), false).unwrap();
    // Back: the next upload publishes everything.
    reg.set(1);
    v.sync_to_backend().unwrap();
    assert!(!v.is_fenced());
    assert_eq!(read4k(&v, 2), pattern(3, 16, 4096));
    p.shutdown().unwrap();
}

#[test]
fn a_deposed_owner_cannot_publish_over_a_newer_epoch() {
    // A daemon whose check cannot tell (always passes): the manifest's
    // newest epoch still stops the old owner.
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let p1 = pool_at(root, "flash1", &rt);
    let v1 = p1
        .create_volume_as("y", 4 << 20, 4096, &Owner::new(Arc::new(Blind(1))))
        .unwrap();
    v1.write(0, &pattern(1, 0, 4096), false).unwrap();
    v1.sync_to_backend().unwrap();
    let p2 = pool_at(root, "flash2", &rt);
    let v2 = p2
        .open_volume_as("y", &Owner::new(Arc::new(Blind(2))))
        .unwrap();
    assert_eq!(read4k(&v2, 0), pattern(1, 0, 4096));
    v2.write(8, &pattern(2, 8, 4096), false).unwrap();
    v2.sync_to_backend().unwrap();
    // The old owner writes on and tries to ship.
    v1.write(8, &pattern(3, 8, 4096), false).unwrap();
    v1.write(16, &pattern(3, 16, 4096), false).unwrap();
    assert!(matches!(v1.sync_to_backend(), Err(EngineError::Fenced(_))));
    // An owner older than the backend's is refused outright.
    let p3 = pool_at(root, "flash3", &rt);
    assert!(matches!(
        p3.open_volume_as("y", &Owner::new(Arc::new(Blind(1)))),
        Err(EngineError::Fenced(_))
    ));
    // Generation 3 reads generation 2's data, none of the old owner's.
    let v3 = p3
        .open_volume_as("y", &Owner::new(Arc::new(Blind(3))))
        .unwrap();
    assert_eq!(read4k(&v3, 1), pattern(2, 8, 4096));
    assert_eq!(read4k(&v3, 2), vec![0u8; 4096]);
    p1.abandon();
    p2.shutdown().unwrap();
    p3.shutdown().unwrap();
}

#[test]
fn stale_local_state_is_dropped_for_the_backend() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let reg = Registry::default();
    let p1 = pool_at(root, "flash1", &rt);
    let v = p1
        .create_volume_as("z", 4 << 20, 4096, &reg.grant(1))
        .unwrap();
    v.write(0, &pattern(1, 0, 4096), false).unwrap();
    v.sync_to_backend().unwrap();
    // Unshipped on router 1 when it dies.
    v.write(8, &pattern(2, 8, 4096), true).unwrap();
    p1.abandon();
    drop((v, p1));
    // Failover to router 2 (loses the unshipped write, as a restart from
    // the backend does), which writes on.
    let p2 = pool_at(root, "flash2", &rt);
    let v = p2.open_volume_as("z", &reg.grant(2)).unwrap();
    assert_eq!(read4k(&v, 1), vec![0u8; 4096]);
    v.write(16, &pattern(3, 16, 4096), false).unwrap();
    p2.shutdown().unwrap();
    drop((v, p2));
    // Router 1 comes back and is given the vDisk again: its flash is older
    // than the backend's owner, so it restores instead of replaying.
    let p1 = pool_at(root, "flash1", &rt);
    let v = p1.open_volume_as("z", &reg.grant(3)).unwrap();
    assert_eq!(read4k(&v, 0), pattern(1, 0, 4096));
    assert_eq!(read4k(&v, 1), vec![0u8; 4096]);
    assert_eq!(read4k(&v, 2), pattern(3, 16, 4096));
    p1.shutdown().unwrap();
}

#[test]
fn live_handover_shipping_midway_over_a_local_backend() {
    let dir = tempfile::tempdir().unwrap();
    common::handover::round_trip(
        dir.path(),
        &depot_engine::BackendConfig::Local {
            path: dir.path().join("backend"),
        },
        true,
    );
}

#[test]
fn live_handover_over_a_local_backend() {
    let dir = tempfile::tempdir().unwrap();
    common::handover::round_trip(
        dir.path(),
        &depot_engine::BackendConfig::Local {
            path: dir.path().join("backend"),
        },
        false,
    );
    // Objects of every owner generation, side by side.
    let keys = backend_keys(&dir.path().join("backend"));
    for g in 1..=2 {
        let suffix = format!(".{g:016x}");
        assert!(
            keys.iter()
                .any(|k| k.contains("/tlog/") && k.ends_with(&suffix)),
            "no tlog of generation {g}"
        );
        assert!(
            keys.iter()
                .any(|k| k.contains("/sco/") && k.ends_with(&suffix)),
            "no container of generation {g}"
        );
    }
}

#[test]
fn an_import_applies_what_was_shipped_after_it_was_prepared_before_the_pause() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let reg = Registry::default();
    let pa = pool_at(root, "flash-a", &rt);
    let a = pa
        .create_volume_as("mv", 16 << 20, 4096, &reg.grant(1))
        .unwrap();
    let mut m = Model::new(16 << 20);
    // The same MiBs written over and over: applied out of order, older
    // data would show.
    m.seq_1m(&a, 0, 8, 1);
    m.random_4k(&a, 200, 2);
    // The move starts: its first precopy, then the target prepares.
    let _ = a.handover_precopy().unwrap();
    let pb = pool_at(root, "flash-b", &rt);
    let staged = pb.import_dir("mv").unwrap();
    let mut prep = pb.prepare_import("mv", &reg.owner(2)).unwrap();
    // The source ships all of it and more meanwhile (what the target has
    // not received), then writes on.
    m.seq_1m(&a, 0, 8, 3);
    a.sync_to_backend().unwrap();
    m.seq_1m(&a, 0, 4, 4);
    m.random_4k(&a, 200, 5);
    m.seq_1m(&a, 8, 2, 6);
    let pre = a.handover_precopy().unwrap();
    assert!(!pre.is_empty());
    copy_files(&pre, &staged);
    // Shipped first (older), then the precopied segments.
    // (The shipper may ship more at any time: a second call applies only
    // what is newer than what the first applied.)
    assert!(pb.import_shipped(&mut prep).unwrap() > 0);
    pb.import_shipped(&mut prep).unwrap();
    pb.import_precopied(&mut prep, &pre, &staged).unwrap();
    m.seq_1m(&a, 1, 2, 7);
    m.random_4k(&a, 100, 8);
    let state = a.handover_freeze().unwrap();
    copy_files(&state.files, &staged);
    reg.set(2);
    let b = pb.finish_import(prep, &state, &staged).unwrap();
    verify(&b, &m.data, "after the import");
    m.random_4k(&b, 50, 9);
    b.sync_to_backend().unwrap();
    verify(&b, &m.data, "the new owner after shipping");
}

#[test]
fn an_interrupted_import_can_be_retried() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let reg = Registry::default();
    let pa = pool_at(root, "flash-a", &rt);
    let a = pa
        .create_volume_as("mv", 8 << 20, 4096, &reg.grant(1))
        .unwrap();
    let mut m = Model::new(8 << 20);
    m.random_4k(&a, 200, 1);
    a.sync_to_backend().unwrap();
    m.seq_1m(&a, 2, 2, 2);
    m.snapshot(&a, "s");
    m.random_4k(&a, 200, 3);
    let state = a.handover_freeze().unwrap();
    assert!(!state.files.is_empty());

    // A crash right after the early restore.
    let pb = pool_at(root, "flash-b", &rt);
    let staged = pb.import_dir("mv").unwrap();
    copy_files(&state.files, &staged);
    let prep = pb.prepare_import("mv", &reg.owner(2)).unwrap();
    // Nothing else opens it meanwhile.
    assert!(matches!(
        pb.open_volume("mv"),
        Err(EngineError::InvalidArgument(_))
    ));
    assert!(pb.prepare_import("mv", &reg.owner(2)).is_err());
    drop(prep);
    pb.abandon();
    drop(pb);

    // A file cut short is refused before anything changes.
    let pb = pool_at(root, "flash-b", &rt);
    let prep = pb.prepare_import("mv", &reg.owner(2)).unwrap();
    let f = &state.files[0];
    let path = staged.join(f.file_name());
    let full = std::fs::read(&path).unwrap();
    std::fs::write(&path, &full[..full.len() - 4096]).unwrap();
    assert!(matches!(
        pb.finish_import(prep, &state, &staged),
        Err(EngineError::InvalidArgument(_))
    ));
    // Damaged bytes fail the strict replay; nothing half-built stays.
    let mut bad = full.clone();
    let n = bad.len();
    bad[n - 100] ^= 0x55;
    if f.kind == depot_engine::HandoverFileKind::Container {
        std::fs::write(&path, &bad).unwrap();
        let mut prep = pb.prepare_import("mv", &reg.owner(2)).unwrap();
        assert!(matches!(
            pb.import_precopied(&mut prep, &state.files, &staged),
            Err(EngineError::Integrity { .. })
        ));
        assert!(prep.applied_tlogs().is_empty());
        reg.set(2);
        assert!(matches!(
            pb.finish_import(prep, &state, &staged),
            Err(EngineError::Integrity { .. })
        ));
    }
    std::fs::write(&path, &full).unwrap();
    // The backend fails at the claim: the volume is not opened.
    let prep = pb.prepare_import("mv", &reg.owner(2)).unwrap();
    reg.set(2);
    pb.faults().set_unavailable(true);
    assert!(pb.finish_import(prep, &state, &staged).is_err());
    pb.faults().clear();
    // And a crash.
    pb.abandon();
    drop(pb);

    // The retry works, from the files still staged.
    let pb = pool_at(root, "flash-b", &rt);
    let prep = pb.prepare_import("mv", &reg.owner(2)).unwrap();
    let b = pb.finish_import(prep, &state, &staged).unwrap();
    verify(&b, &m.data, "after the retried import");
    m.random_4k(&b, 100, 4);
    b.sync_to_backend().unwrap();
    pb.shutdown().unwrap();
    drop((b, pb));
    let pc = pool_at(root, "flash-c", &rt);
    let c = pc.open_volume_as("mv", &reg.grant(3)).unwrap();
    verify(&c, &m.data, "from the backend after the import");
    pc.shutdown().unwrap();
    pa.abandon();
}

#[test]
fn an_import_prepared_before_a_scrub_restores_again() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let reg = Registry::default();
    let pa = pool_at(root, "flash-a", &rt);
    let a = pa
        .create_volume_as("sc", 8 << 20, 4096, &reg.grant(1))
        .unwrap();
    let mut m = Model::new(8 << 20);
    m.random_4k(&a, 400, 1);
    a.sync_to_backend().unwrap();
    // B prepares early, from this manifest...
    let pb = pool_at(root, "flash-b", &rt);
    let prep = pb.prepare_import("sc", &reg.owner(2)).unwrap();
    // ...which a scrub then replaces (containers rewritten and deleted).
    m.random_4k(&a, 400, 2);
    m.seq_1m(&a, 0, 4, 3);
    a.sync_to_backend().unwrap();
    let r = pa.scrub().unwrap();
    assert!(r.errors.is_empty() && r.containers_rewritten > 0, "{r:?}");
    m.random_4k(&a, 100, 4);
    let state = a.handover_freeze().unwrap();
    let staged = pb.import_dir("sc").unwrap();
    copy_files(&state.files, &staged);
    reg.set(2);
    let b = pb.finish_import(prep, &state, &staged).unwrap();
    verify(&b, &m.data, "imported after a scrub");
    b.sync_to_backend().unwrap();
    pb.shutdown().unwrap();
    let pc = pool_at(root, "flash-c", &rt);
    let c = pc.open_volume_as("sc", &reg.grant(3)).unwrap();
    verify(&c, &m.data, "from the backend");
    pc.shutdown().unwrap();
    pa.abandon();
}

#[test]
fn an_aborted_handover_resumes_and_a_later_takeover_still_fences() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let reg = Registry::default();
    let pa = pool_at(root, "flash-a", &rt);
    let a = pa
        .create_volume_as("r", 4 << 20, 4096, &reg.grant(1))
        .unwrap();
    a.write(0, &pattern(1, 0, 4096), false).unwrap();
    a.handover_precopy().unwrap();
    a.handover_freeze().unwrap();
    assert!(a.is_fenced());
    assert!(a.sync_to_backend().is_err());
    // The move is called off: A serves and ships again.
    a.handover_abort().unwrap();
    assert!(!a.is_fenced());
    a.write(8, &pattern(2, 8, 4096), false).unwrap();
    a.sync_to_backend().unwrap();
    // A failover later: generation 2 elsewhere sees what A shipped, and
    // A's next upload is fenced.
    let pb = pool_at(root, "flash-b", &rt);
    let b = pb.open_volume_as("r", &reg.grant(2)).unwrap();
    assert_eq!(read4k(&b, 1), pattern(2, 8, 4096));
    a.write(16, &pattern(3, 16, 4096), false).unwrap();
    assert!(matches!(a.sync_to_backend(), Err(EngineError::Fenced(_))));
    assert!(a.handover_abort().is_err(), "a real fence is not undone");
    pa.forget_volume("r").unwrap();
    assert_eq!(read4k(&b, 2), vec![0u8; 4096]);
    pb.shutdown().unwrap();
}
