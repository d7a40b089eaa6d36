//! The grid against a real S3 server (moto_server, which enforces
//! conditional PUTs): the probe, fencing of a deposed owner by the
//! manifest's e-tag alone, and a live hand-over. Needs `DEPOT_TEST_MOTO`
//! (see `s3.rs`); SKIPPED loudly without it.
#![allow(missing_docs)]

mod common;

use std::sync::Arc;

use common::grid::Blind;
use common::*;
use depot_block::BlockDevice;
use depot_engine::{EngineError, FencingMode, Owner, VPool};

fn blind(g: u64) -> Owner {
    Owner::new(Arc::new(Blind(g)))
}

#[test]
fn s3_conditional_puts_fence_a_deposed_owner() {
    let Some(moto) = moto::start("s3_conditional_puts_fence_a_deposed_owner") else {
        return;
    };
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let cfg = |flash: &str| {
        let mut c = config(dir.path());
        c.backend = moto.backend();
        c.cache_dir = dir.path().join(flash);
        c.keep_shipped_bytes = 0;
        c
    };
    let p1 = VPool::open(cfg("flash1"), rt.handle().clone()).unwrap();
    assert_eq!(p1.fencing_mode(), FencingMode::Conditional);
    // Hooks that always pass: only the store's e-tag check stands in the
    // old owner's way.
    let v1 = p1
        .create_volume_as("two", 4 << 20, 4096, &blind(1))
        .unwrap();
    for i in 0..64u64 {
        v1.write(i * 8, &pattern(1, i, 4096), false).unwrap();
    }
    v1.sync_to_backend().unwrap();
    // A second owner on another router.
    let p2 = VPool::open(cfg("flash2"), rt.handle().clone()).unwrap();
    let v2 = p2.open_volume_as("two", &blind(2)).unwrap();
    for i in 0..32u64 {
        v2.write(i * 8, &pattern(2, i, 4096), false).unwrap();
    }
    v2.sync_to_backend().unwrap();
    // The first owner's next manifest upload is refused: fenced.
    for i in 0..64u64 {
        v1.write(i * 8, &pattern(3, i, 4096), false).unwrap();
    }
    assert!(matches!(v1.sync_to_backend(), Err(EngineError::Fenced(_))));
    assert!(v1.is_fenced());
    assert!(v1.read(0, &mut [0u8; 4096]).is_err());
    // Its scrub cannot delete anything either.
    assert_eq!(p1.scrub().unwrap().errors.len(), 1);
    // Reopened from the backend: the second owner's data.
    p2.shutdown().unwrap();
    drop((v2, p2));
    let p3 = VPool::open(cfg("flash3"), rt.handle().clone()).unwrap();
    let v3 = p3.open_volume_as("two", &blind(3)).unwrap();
    let mut buf = vec![0u8; 4096];
    for i in 0..64u64 {
        v3.read(i * 8, &mut buf).unwrap();
        let want = if i < 32 {
            pattern(2, i, 4096)
        } else {
            pattern(1, i, 4096)
        };
        assert_eq!(buf, want, "cluster {i}");
    }
    // An existing name cannot be created again.
    assert!(
        p3.create_volume_as("two", 4 << 20, 4096, &blind(1))
            .is_err()
    );
    p3.shutdown().unwrap();
    p1.abandon();
}

#[test]
fn s3_live_handover() {
    let Some(moto) = moto::start("s3_live_handover") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    common::handover::round_trip(dir.path(), &moto.backend(), false);
}
