//! Functional tests of the engine through its public API: write/read paths,
//! restarts (local and from the backend), snapshots, clones, thin
//! provisioning, the read cache, integrity and backend faults, scrubbing.
#![allow(missing_docs)]

mod common;

use std::time::Duration;

use common::*;
use depot_block::{BlockDevice, BlockError, Provisioning};
use depot_engine::{EngineError, VPool, Volume};

#[test]
fn write_read_round_trip_4k_and_512() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let pool = open(&config(dir.path()), &rt);
    let v = pool.create_volume("v4k", 16 << 20, 4096).unwrap();
    assert!(v.thin_provisioned());
    let mut buf = vec![0xffu8; 8192];
    v.read(10, &mut buf).unwrap();
    assert!(
        buf.iter().all(|b| *b == 0),
        "never-written blocks read as zeros"
    );
    let d = pattern(1, 10, 3 * 4096);
    v.write(10, &d, false).unwrap();
    let mut back = vec![0u8; 3 * 4096];
    v.read(10, &mut back).unwrap();
    assert_eq!(back, d);
    assert!(matches!(
        v.read(4095, &mut vec![0u8; 8192]),
        Err(BlockError::OutOfRange { .. })
    ));

    let s = pool.create_volume("v512", 1 << 20, 512).unwrap();
    assert_eq!(s.physical_block_exponent(), 3);
    // Sub-cluster writes: read-modify-write keeps the neighbours.
    s.write(0, &pattern(2, 0, 4096), false).unwrap();
    s.write(3, &pattern(3, 3, 512), true).unwrap();
    s.write(7, &pattern(4, 7, 1024), false).unwrap(); // straddles a cluster
    let mut expect = pattern(2, 0, 4096);
    expect.extend_from_slice(&[0u8; 4096]);
    expect[3 * 512..4 * 512].copy_from_slice(&pattern(3, 3, 512));
    expect[7 * 512..9 * 512].copy_from_slice(&pattern(4, 7, 1024));
    let mut got = vec![0u8; 8192];
    s.read(0, &mut got).unwrap();
    assert_eq!(got, expect);
    let mut one = vec![0u8; 512];
    s.read(8, &mut one).unwrap();
    assert_eq!(one, expect[4096..4608]);
    pool.shutdown().unwrap();
}

#[test]
fn flushed_writes_survive_crash_and_local_restart() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    {
        let pool = open(&cfg, &rt);
        let v = pool.create_volume("d", 8 << 20, 4096).unwrap();
        for i in 0..200u64 {
            v.write(i % 150, &pattern(i, i % 150, 4096), i % 7 == 0)
                .unwrap();
        }
        v.flush().unwrap();
        pool.abandon(); // no shutdown sync: like a crash
    }
    let pool = open(&cfg, &rt);
    let v = pool.open_volume("d").unwrap();
    let mut buf = vec![0u8; 4096];
    for lba in 0..150u64 {
        let last = (0..200u64).filter(|i| i % 150 == lba).max().unwrap();
        v.read(lba, &mut buf).unwrap();
        assert_eq!(buf, pattern(last, lba, 4096), "lba {lba}");
    }
    pool.shutdown().unwrap();
}

/// Entries of a volume's flash subdirectory (`containers`, `tlogs`).
fn local_files(root: &std::path::Path, v: &depot_engine::Volume, sub: &str) -> usize {
    std::fs::read_dir(vol_dir(root, v).join(sub))
        .unwrap()
        .count()
}

/// A write that arrives in pieces (an iSCSI write's Data-Out segments) is
/// appended with one vectored write per container: pieces are cut where
/// containers fill, and the data reads back before and after a crash.
#[test]
fn pieced_appends_cross_containers_and_survive_a_crash() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.container_bytes = 40 * 4096; // 39 slots: boundaries inside pieces
    let d = pattern(7, 5, 1 << 20);
    let check = |v: &Volume| {
        let mut back = vec![0u8; 1 << 20];
        v.read(5, &mut back).unwrap();
        assert!(back == d, "pieced write reads back");
        let mut edge = vec![0xffu8; 5 * 4096];
        v.read(0, &mut edge).unwrap();
        assert!(edge.iter().all(|&b| b == 0), "blocks before it untouched");
    };
    {
        let pool = open(&cfg, &rt);
        let v = pool.create_volume("p", 8 << 20, 4096).unwrap();
        // 64 KiB pieces, then one of 128 KiB, one of 4 KiB and the rest.
        let mut pieces: Vec<&[u8]> = d[..512 << 10].chunks(64 << 10).collect();
        pieces.extend([
            &d[512 << 10..640 << 10],
            &d[640 << 10..644 << 10],
            &d[644 << 10..],
        ]);
        v.write_vectored(5, &pieces, true).unwrap();
        assert_eq!(v.stats().rewritten_clusters, 0, "fresh clusters append");
        check(&v);
        pool.abandon(); // no shutdown sync: like a crash
    }
    let pool = open(&cfg, &rt);
    let v = pool.open_volume("p").unwrap();
    check(&v);
    pool.shutdown().unwrap();
}

/// Shipping does not commit the index: a shipped segment's local tlog
/// stays the durable copy of its records until a regular commit covers
/// them. A crash after its containers were evicted must still find every
/// write (on the backend), and replay then deletes the tlog.
#[test]
fn shipped_writes_survive_eviction_and_a_crash_before_the_index_commits() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.keep_shipped_bytes = 0; // every shipped container leaves flash
    cfg.index_commit_interval = Duration::from_secs(3600);
    let last = |lba: u64| (0..300u64).filter(|i| i % 200 == lba).max().unwrap();
    {
        let pool = open(&cfg, &rt);
        let v = pool.create_volume("s", 4 << 20, 4096).unwrap();
        for i in 0..300u64 {
            v.write(i % 200, &pattern(i, i % 200, 4096), false).unwrap();
        }
        let commits = v.stats().index_commits;
        v.sync_to_backend().unwrap();
        assert_eq!(v.stats().index_commits, commits, "shipping committed");
        assert_eq!(local_files(dir.path(), &v, "containers"), 0);
        assert!(local_files(dir.path(), &v, "tlogs") > 0, "tlogs kept");
        pool.abandon(); // no shutdown sync: like a crash
    }
    let pool = open(&cfg, &rt);
    let v = pool.open_volume("s").unwrap();
    assert_eq!(
        local_files(dir.path(), &v, "tlogs"),
        0,
        "replay applied them"
    );
    let mut buf = vec![0u8; 4096];
    for lba in 0..200u64 {
        v.read(lba, &mut buf).unwrap();
        assert!(buf == pattern(last(lba), lba, 4096), "lba {lba}");
    }
    pool.shutdown().unwrap();
}

/// Once a regular commit covers a shipped segment, its local tlog goes.
#[test]
fn a_commit_deletes_the_local_tlogs_of_shipped_segments() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.index_commit_interval = Duration::from_secs(3600);
    let pool = open(&cfg, &rt);
    let v = pool.create_volume("s", 4 << 20, 4096).unwrap();
    for lba in 0..100u64 {
        v.write(lba, &pattern(1, lba, 4096), false).unwrap();
    }
    v.sync_to_backend().unwrap();
    assert!(local_files(dir.path(), &v, "tlogs") > 0);
    v.flush().unwrap(); // a hard barrier commits the index
    let t0 = std::time::Instant::now();
    while local_files(dir.path(), &v, "tlogs") > 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "tlogs never deleted"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    pool.shutdown().unwrap();
}

/// A cluster appended again while its previous mapping is in the memtable
/// leaves its old slot dead; once a sync made it clean, the ticker drops
/// it from the page cache. Reads are unaffected.
#[test]
fn superseded_clusters_are_dropped_from_the_page_cache() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.index_commit_interval = Duration::from_secs(3600);
    let pool = open(&cfg, &rt);
    let v = pool.create_volume("p", 4 << 20, 4096).unwrap();
    for lba in 0..40u64 {
        v.write(lba, &pattern(1, lba, 4096), false).unwrap();
    }
    for lba in 0..24u64 {
        v.write(lba, &pattern(2, lba, 4096), false).unwrap();
    }
    let t0 = std::time::Instant::now();
    while v.stats().dropped_clusters < 24 {
        assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", v.stats());
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(500)); // more ticks
    assert_eq!(v.stats().dropped_clusters, 24, "only the superseded slots");
    let mut buf = vec![0u8; 4096];
    for lba in 0..40u64 {
        v.read(lba, &mut buf).unwrap();
        let tag = if lba < 24 { 2 } else { 1 };
        assert!(buf == pattern(tag, lba, 4096), "lba {lba}");
    }
    pool.shutdown().unwrap();
}

/// A snapshot is durable the moment it returns, though the index commits
/// later (at the next regular commit, after the sealed segment ships): a
/// crash right after must replay the pre-snapshot writes into the
/// snapshot. Each round crashes at once after a snapshot, usually before
/// the woken shipper gets there.
#[test]
fn snapshot_survives_a_crash_before_the_index_commits() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.index_commit_interval = Duration::from_secs(3600);
    cfg.sync_interval = Duration::from_secs(3600);
    open(&cfg, &rt).create_volume("d", 4 << 20, 4096).unwrap();
    for round in 1..=4u64 {
        let pool = open(&cfg, &rt);
        let v = pool.open_volume("d").unwrap();
        for lba in 0..40u64 {
            v.write(lba, &pattern(round, lba, 4096), false).unwrap();
        }
        v.create_snapshot(&format!("s{round}")).unwrap();
        pool.abandon();
        drop((v, pool));
        let pool = open(&cfg, &rt);
        let c = pool
            .clone_volume("d", Some(&format!("s{round}")), "c")
            .unwrap();
        let mut buf = vec![0u8; 4096];
        for lba in 0..40u64 {
            c.read(lba, &mut buf).unwrap();
            assert!(
                buf == pattern(round, lba, 4096),
                "snapshot s{round} lost lba {lba}"
            );
        }
        drop(c);
        pool.delete_volume("c").unwrap();
        pool.shutdown().unwrap();
    }
}

/// With a long `index_commit_interval`, writes alone stay in the memtable;
/// once reads have walked it as many times as it has entries, the next
/// periodic sync commits it (and the data reads the same afterwards).
#[test]
fn reads_of_the_memtable_make_a_commit_due() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.index_commit_interval = Duration::from_secs(3600);
    cfg.sync_interval = Duration::from_millis(100);
    cfg.container_bytes = 1024 * 4096;
    let pool = open(&cfg, &rt);
    let v = pool.create_volume("d", 8 << 20, 4096).unwrap();
    for lba in 0..512u64 {
        v.write(lba, &pattern(1, lba, 4096), false).unwrap();
    }
    std::thread::sleep(Duration::from_millis(400));
    let before = v.stats();
    assert!(before.syncs > 0, "the periodic sync ran");
    let mut buf = vec![0u8; 4096];
    // Fewer hits than READ_COMMIT_MIN_HITS (4096): still no commit.
    for i in 0..1000u64 {
        v.read(i % 512, &mut buf).unwrap();
    }
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(
        v.stats().index_commits,
        before.index_commits,
        "writes and a few reads"
    );
    for i in 0..4096u64 {
        v.read(i % 512, &mut buf).unwrap();
        assert!(buf == pattern(1, i % 512, 4096), "lba {}", i % 512);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while v.stats().index_commits == before.index_commits {
        assert!(
            std::time::Instant::now() < deadline,
            "no commit after 5,096 memtable hits"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    for lba in 0..512u64 {
        v.read(lba, &mut buf).unwrap();
        assert!(buf == pattern(1, lba, 4096), "lba {lba} after the commit");
    }
    pool.shutdown().unwrap();
}

#[test]
fn restart_from_backend_alone() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    {
        let pool = open(&cfg, &rt);
        let v = pool.create_volume("b", 8 << 20, 512).unwrap();
        for i in 0..300u64 {
            v.write(i * 8, &pattern(i, i, 4096), false).unwrap();
        }
        v.create_snapshot("s1").unwrap();
        for i in 0..50u64 {
            v.write(i * 8, &pattern(1000 + i, i, 4096), false).unwrap();
        }
        v.unmap(100 * 8, 8).unwrap();
        v.sync_to_backend().unwrap();
        // Unshipped after the sync point: lost with the flash (the
        // documented recovery point).
        v.write(0, &pattern(9999, 0, 4096), true).unwrap();
        pool.abandon();
    }
    std::fs::remove_dir_all(flash(dir.path())).unwrap();
    let pool = open(&cfg, &rt);
    assert_eq!(pool.list_volumes().unwrap(), vec!["b".to_string()]);
    let v = pool.open_volume("b").unwrap();
    let mut buf = vec![0u8; 4096];
    for i in 0..300u64 {
        v.read(i * 8, &mut buf).unwrap();
        let want = if i == 100 {
            vec![0u8; 4096]
        } else if i < 50 {
            pattern(1000 + i, i, 4096)
        } else {
            pattern(i, i, 4096)
        };
        assert_eq!(buf, want, "cluster {i}");
    }
    assert_eq!(v.list_snapshots().len(), 1);
    v.rollback("s1").unwrap();
    v.read(0, &mut buf).unwrap();
    assert_eq!(buf, pattern(0, 0, 4096));
    v.read(800, &mut buf).unwrap();
    assert_eq!(buf, pattern(100, 100, 4096));
    pool.shutdown().unwrap();
}

#[test]
fn snapshots_rollback_clones_templates() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let pool = open(&config(dir.path()), &rt);
    let v = pool.create_volume("base", 4 << 20, 4096).unwrap();
    let mut buf = vec![0u8; 4096];
    v.write(0, &pattern(1, 0, 4096), false).unwrap();
    v.create_snapshot("one").unwrap();
    assert!(matches!(
        v.create_snapshot("one"),
        Err(EngineError::SnapshotExists(_))
    ));
    v.write(0, &pattern(2, 0, 4096), false).unwrap();
    v.write(1, &pattern(2, 1, 4096), false).unwrap();
    v.create_snapshot("two").unwrap();
    v.write(0, &pattern(3, 0, 4096), false).unwrap();

    let c1 = pool.clone_volume("base", Some("one"), "c1").unwrap();
    c1.read(0, &mut buf).unwrap();
    assert_eq!(buf, pattern(1, 0, 4096));
    c1.read(1, &mut buf).unwrap();
    assert!(buf.iter().all(|b| *b == 0));
    c1.write(1, &pattern(7, 1, 4096), false).unwrap();
    v.read(1, &mut buf).unwrap();
    assert_eq!(buf, pattern(2, 1, 4096), "clone writes stay in the clone");
    // Chains: a clone of a clone.
    c1.create_snapshot("cs").unwrap();
    let c2 = pool.clone_volume("c1", Some("cs"), "c2").unwrap();
    c2.read(0, &mut buf).unwrap();
    assert_eq!(buf, pattern(1, 0, 4096));
    c2.read(1, &mut buf).unwrap();
    assert_eq!(buf, pattern(7, 1, 4096));

    assert!(matches!(
        v.delete_snapshot("one"),
        Err(EngineError::HasClones(_))
    ));
    assert!(matches!(
        pool.delete_volume("base"),
        Err(EngineError::HasClones(_))
    ));
    v.delete_snapshot("two").unwrap();
    v.read(1, &mut buf).unwrap();
    assert_eq!(buf, pattern(2, 1, 4096));
    v.rollback("one").unwrap();
    v.read(0, &mut buf).unwrap();
    assert_eq!(buf, pattern(1, 0, 4096));
    v.read(1, &mut buf).unwrap();
    assert!(buf.iter().all(|b| *b == 0));
    assert_eq!(v.list_snapshots().len(), 1);

    // Templates.
    let t = pool.create_volume("tmpl", 1 << 20, 4096).unwrap();
    t.write(3, &pattern(5, 3, 4096), false).unwrap();
    assert!(pool.clone_volume("tmpl", None, "x").is_err());
    t.set_template(true).unwrap();
    assert!(matches!(
        t.write(3, &[0u8; 4096], false),
        Err(BlockError::ReadOnly)
    ));
    let vm = pool.clone_volume("tmpl", None, "vm1").unwrap();
    vm.read(3, &mut buf).unwrap();
    assert_eq!(buf, pattern(5, 3, 4096));

    pool.delete_volume("c2").unwrap();
    pool.delete_volume("c1").unwrap();
    v.delete_snapshot("one").unwrap();
    pool.delete_volume("base").unwrap();
    assert!(matches!(
        pool.open_volume("base"),
        Err(EngineError::VolumeNotFound(_))
    ));
    pool.shutdown().unwrap();
}

#[test]
fn thin_provisioning_unmap_and_lba_status() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let pool = open(&config(dir.path()), &rt);
    let v = pool.create_volume("thin", 64 << 20, 512).unwrap();
    assert_eq!(
        v.provisioning(0, 1 << 20).unwrap(),
        (Provisioning::Deallocated, 1 << 17)
    );
    v.write(80, &pattern(1, 80, 8 * 512), false).unwrap();
    assert_eq!(
        v.provisioning(0, 1000).unwrap(),
        (Provisioning::Deallocated, 80)
    );
    assert_eq!(v.provisioning(80, 1000).unwrap(), (Provisioning::Mapped, 8));
    assert_eq!(v.provisioning(83, 1000).unwrap(), (Provisioning::Mapped, 5));
    v.create_snapshot("s").unwrap();
    v.unmap(80, 8).unwrap();
    assert_eq!(
        v.provisioning(80, 8).unwrap(),
        (Provisioning::Deallocated, 8)
    );
    let mut buf = vec![0xaau8; 4096];
    v.read(80, &mut buf).unwrap();
    assert!(buf.iter().all(|b| *b == 0));
    // The snapshot still has it.
    let c = pool.clone_volume("thin", Some("s"), "thin-c").unwrap();
    c.read(80, &mut buf).unwrap();
    assert_eq!(buf, pattern(1, 80, 4096));
    // Unmapping part of a cluster zeroes just those blocks.
    c.unmap(81, 2).unwrap();
    c.read(80, &mut buf).unwrap();
    let mut want = pattern(1, 80, 4096);
    want[512..1536].fill(0);
    assert_eq!(buf, want);
    // Whole-device unmap is cheap (only mapped clusters are visited).
    let t0 = std::time::Instant::now();
    c.unmap(0, c.num_blocks()).unwrap();
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert_eq!(
        c.provisioning(0, u64::MAX).unwrap().0,
        Provisioning::Deallocated
    );
    pool.shutdown().unwrap();
}

#[test]
fn read_cache_dedups_template_clones_and_checks_integrity() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.keep_shipped_bytes = 0; // force reads to the backend
    cfg.local_backend_shortcuts = false; // ... through the object path
    let pool = open(&cfg, &rt);
    let a = pool.create_volume("a", 1 << 20, 4096).unwrap();
    let b = pool.create_volume("b", 1 << 20, 4096).unwrap();
    // Same contents written into two unrelated volumes.
    for i in 0..16u64 {
        a.write(i, &pattern(i, 0, 4096), false).unwrap();
        b.write(i, &pattern(i, 0, 4096), false).unwrap();
    }
    a.sync_to_backend().unwrap();
    b.sync_to_backend().unwrap();
    let mut buf = vec![0u8; 4096];
    for i in 0..16u64 {
        a.read(i, &mut buf).unwrap();
        assert_eq!(buf, pattern(i, 0, 4096));
    }
    let before = pool.stats();
    for i in 0..16u64 {
        b.read(i, &mut buf).unwrap();
        assert_eq!(buf, pattern(i, 0, 4096));
    }
    let after = pool.stats();
    assert_eq!(
        after.read_cache_hits - before.read_cache_hits,
        16,
        "{after:?}"
    );
    assert!(after.read_cache_dedup_ratio > 1.5, "{after:?}");
    assert_eq!(after.read_cache_bytes, 16 * 4096);
    // Corrupt data from the backend is an integrity error, never data.
    let c = pool.create_volume("c", 1 << 20, 4096).unwrap();
    c.write(0, &pattern(77, 0, 4096), false).unwrap();
    c.sync_to_backend().unwrap();
    pool.faults().corrupt_next_gets(1);
    assert!(matches!(
        c.read(0, &mut buf),
        Err(BlockError::Integrity { .. })
    ));
    c.read(0, &mut buf).unwrap();
    assert_eq!(buf, pattern(77, 0, 4096));
    pool.shutdown().unwrap();
}

#[test]
fn backend_outage_throttles_never_fails_and_loses_nothing() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.write_buffer_bytes = 1 << 20;
    let pool = open(&cfg, &rt);
    let v = pool.create_volume("o", 16 << 20, 4096).unwrap();
    pool.faults().set_unavailable(true);
    let v2 = v.clone();
    let writer = std::thread::spawn(move || {
        for i in 0..1024u64 {
            v2.write(i, &pattern(i, i, 4096), false).unwrap();
        }
        v2.flush().unwrap();
    });
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !writer.is_finished(),
        "writer should be throttled by the write buffer"
    );
    assert!(v.stats().unshipped_bytes <= (1 << 20) + 64 * 4096);
    // Flaky then slow, then healthy.
    pool.faults().set_unavailable(false);
    pool.faults().set_fail_rate(300);
    pool.faults().set_latency_ms(2);
    writer.join().unwrap();
    pool.faults().clear();
    v.sync_to_backend().unwrap();
    assert!(pool.stats().backend_errors > 0);
    let st = v.stats();
    assert!(st.throttled > 0);
    // The writer was held for at least the outage above.
    assert!(st.throttle_wait >= Duration::from_millis(400), "{st:?}");
    assert_eq!(pool.stats().throttle_wait, st.throttle_wait);
    assert_eq!(st.unshipped_bytes, 0);
    pool.abandon();
    drop((v, pool));
    std::fs::remove_dir_all(flash(dir.path())).unwrap();
    let pool = VPool::open(cfg.clone(), rt.handle().clone()).unwrap();
    let v = pool.open_volume("o").unwrap();
    let mut buf = vec![0u8; 4096];
    for i in 0..1024u64 {
        v.read(i, &mut buf).unwrap();
        assert_eq!(buf, pattern(i, i, 4096));
    }
    // A foreground read with the backend down is a clear, retryable error.
    let mut cfg2 = cfg.clone();
    cfg2.keep_shipped_bytes = 0;
    cfg2.local_backend_shortcuts = false; // reads go through object_store
    pool.shutdown().unwrap();
    drop((v, pool));
    std::fs::remove_dir_all(flash(dir.path())).unwrap();
    let pool = VPool::open(cfg2, rt.handle().clone()).unwrap();
    let v = pool.open_volume("o").unwrap();
    pool.faults().set_unavailable(true);
    assert!(matches!(
        v.read(5, &mut buf),
        Err(BlockError::Unavailable(_))
    ));
    pool.faults().clear();
    v.read(5, &mut buf).unwrap();
    assert_eq!(buf, pattern(5, 5, 4096));
    pool.shutdown().unwrap();
}

#[test]
fn torn_tlog_tail_is_truncated_not_fatal() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    {
        let pool = open(&cfg, &rt);
        let v = pool.create_volume("t", 1 << 20, 4096).unwrap();
        v.write(0, &pattern(1, 0, 4096), true).unwrap();
        v.write(1, &pattern(2, 1, 4096), false).unwrap();
        v.flush().unwrap();
        pool.abandon();
    }
    // Append garbage to the newest tlog, as a torn write would leave.
    let vols = flash(dir.path()).join("vols");
    let vdir = std::fs::read_dir(&vols)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let tl = std::fs::read_dir(vdir.join("tlogs"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut data = std::fs::read(&tl).unwrap();
    data.extend_from_slice(&[0x5a; 100]);
    std::fs::write(&tl, &data).unwrap();
    let pool = open(&cfg, &rt);
    let v = pool.open_volume("t").unwrap();
    let mut buf = vec![0u8; 4096];
    v.read(1, &mut buf).unwrap();
    assert_eq!(buf, pattern(2, 1, 4096));
    v.write(2, &pattern(3, 2, 4096), true).unwrap();
    pool.shutdown().unwrap();
}

#[test]
fn scrub_reclaims_space_keeps_data_and_survives_interruption() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let pool = open(&cfg, &rt);
    let v = pool.create_volume("s", 8 << 20, 4096).unwrap();
    // Write 4 containers' worth, then overwrite most of it.
    for i in 0..252u64 {
        v.write(i, &pattern(i, i, 4096), false).unwrap();
    }
    v.create_snapshot("keep").unwrap();
    for i in 0..252u64 {
        if i % 8 != 0 {
            v.write(i, &pattern(i + 5000, i, 4096), false).unwrap();
        }
    }
    v.delete_snapshot("keep").unwrap();
    v.unmap(0, 8).unwrap();
    v.sync_to_backend().unwrap();
    let backend_dir = dir.path().join("backend");
    let count = || walk(&backend_dir);
    let before = count();
    // Interrupt scrubs at several points with injected failures.
    for n in 1..6 {
        pool.faults().fail_next(0);
        pool.faults().set_unavailable(false);
        // Let n calls through, then fail everything.
        let f = pool.faults();
        let h = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(n * 3));
            f.set_unavailable(true);
        });
        let _ = pool.scrub();
        h.join().unwrap();
        pool.faults().clear();
        check(&v);
    }
    let r = pool.scrub().unwrap();
    assert!(r.errors.is_empty(), "{r:?}");
    let after = count();
    assert!(
        after.1 < before.1,
        "backend bytes {before:?} -> {after:?}; {r:?}"
    );
    check(&v);
    // A second scrub finds nothing left to reclaim or leak.
    let r2 = pool.scrub().unwrap();
    assert_eq!(r2.orphans_deleted, 0, "{r2:?}");
    // Restart from the backend after scrubbing (checkpoint + tlogs).
    pool.abandon();
    drop((v, pool));
    std::fs::remove_dir_all(flash(dir.path())).unwrap();
    let pool = open(&cfg, &rt);
    let v = pool.open_volume("s").unwrap();
    check(&v);
    pool.shutdown().unwrap();

    fn check(v: &depot_engine::Volume) {
        let mut buf = vec![0u8; 4096];
        for i in 0..252u64 {
            v.read(i, &mut buf).unwrap();
            let want = if i < 8 {
                vec![0u8; 4096]
            } else if i % 8 == 0 {
                pattern(i, i, 4096)
            } else {
                pattern(i + 5000, i, 4096)
            };
            assert_eq!(buf, want, "cluster {i}");
        }
    }
    fn walk(p: &std::path::Path) -> (usize, u64) {
        let mut n = 0;
        let mut bytes = 0;
        for e in std::fs::read_dir(p).unwrap() {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            if m.is_dir() {
                let (a, b) = walk(&e.path());
                n += a;
                bytes += b;
            } else {
                n += 1;
                bytes += m.len();
            }
        }
        (n, bytes)
    }
}

#[test]
fn concurrent_writers_share_group_commits() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let pool = open(&config(dir.path()), &rt);
    let v = pool.create_volume("g", 16 << 20, 4096).unwrap();
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let v = v.clone();
            std::thread::spawn(move || {
                for i in 0..100u64 {
                    let lba = t * 1000 + i;
                    v.write(lba, &pattern(lba, lba, 4096), true).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let st = v.stats();
    eprintln!(
        "group commit: 400 FUA writes from 4 threads took {} syncs",
        st.syncs
    );
    assert!(st.syncs <= 400, "{st:?}");
    let mut buf = vec![0u8; 4096];
    for t in 0..4u64 {
        for i in 0..100u64 {
            let lba = t * 1000 + i;
            v.read(lba, &mut buf).unwrap();
            assert_eq!(buf, pattern(lba, lba, 4096));
        }
    }
    pool.shutdown().unwrap();
}

#[test]
fn corrupt_local_container_falls_back_or_reports_integrity() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    // Copies, not hard links: the backend must hold a second copy of the
    // bytes for the fallback to exist.
    let mut cfg = config(dir.path());
    cfg.local_backend_shortcuts = false;
    let pool = open(&cfg, &rt);
    let v = pool.create_volume("rot", 1 << 20, 4096).unwrap();
    v.write(0, &pattern(1, 0, 4096), true).unwrap();
    v.sync_to_backend().unwrap(); // container 0 shipped, kept locally
    v.write(1, &pattern(2, 1, 4096), true).unwrap(); // container 1: flash only
    let cdir = vol_dir(dir.path(), &v).join("containers");
    for seq in [0u64, 1] {
        let p = cdir.join(format!("{seq:016x}.sco"));
        let mut d = std::fs::read(&p).unwrap();
        d[4096 + 100] ^= 0xff; // slot 0
        std::fs::write(&p, d).unwrap();
    }
    let mut buf = vec![0u8; 4096];
    // Shipped: the bad local copy is detected and the backend copy served.
    v.read(0, &mut buf).unwrap();
    assert_eq!(buf, pattern(1, 0, 4096));
    // Not shipped: a MEDIUM ERROR-class integrity error, never wrong data.
    match v.read(1, &mut buf) {
        Err(BlockError::Integrity { lba, .. }) => assert_eq!(lba, 1),
        other => panic!("expected an integrity error, got {other:?}"),
    }
    pool.shutdown().unwrap();
}

#[test]
fn ship_interval_bounds_the_recovery_point() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.ship_interval = Duration::from_millis(200);
    {
        let pool = open(&cfg, &rt);
        let v = pool.create_volume("rp", 1 << 20, 4096).unwrap();
        v.write(3, &pattern(3, 3, 4096), false).unwrap();
        v.write(4, &pattern(4, 4, 4096), false).unwrap();
        v.sync_to_backend().unwrap();
        v.write(5, &pattern(5, 5, 4096), false).unwrap();
        let t0 = std::time::Instant::now();
        while v.stats().unshipped_bytes > 0 || v.stats().segments_waiting > 0 {
            assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", v.stats());
            std::thread::sleep(Duration::from_millis(50));
        }
        v.unmap(4, 1).unwrap(); // a tlog with only an unmap record
        std::thread::sleep(Duration::from_millis(900));
        pool.abandon();
    }
    std::fs::remove_dir_all(flash(dir.path())).unwrap();
    let pool = open(&cfg, &rt);
    let v = pool.open_volume("rp").unwrap();
    let mut buf = vec![0u8; 4096];
    v.read(3, &mut buf).unwrap();
    assert_eq!(buf, pattern(3, 3, 4096));
    v.read(4, &mut buf).unwrap();
    assert!(buf.iter().all(|b| *b == 0), "the shipped unmap is kept");
    v.read(5, &mut buf).unwrap();
    assert_eq!(buf, pattern(5, 5, 4096));
    pool.shutdown().unwrap();
}

#[test]
fn local_backend_ships_sealed_containers_as_hard_links() {
    use std::os::unix::fs::MetadataExt;
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let pool = open(&config(dir.path()), &rt);
    let v = pool.create_volume("ln", 4 << 20, 4096).unwrap();
    let a = pattern(1, 0, 1 << 20);
    v.write(0, &a, false).unwrap();
    v.sync_to_backend().unwrap();
    let vdir = format!("{:016x}", v.id());
    let flash_c = flash(dir.path())
        .join("vols")
        .join(&vdir)
        .join("containers");
    let obj_c = dir.path().join("backend/pool/vol").join(&vdir).join("sco");
    // Shipped containers still on flash are the backend objects.
    let mut linked = 0;
    for e in std::fs::read_dir(&flash_c).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().into_string().unwrap();
        let obj = obj_c.join(name.trim_end_matches(".sco"));
        let (m1, m2) = (e.metadata().unwrap(), std::fs::metadata(&obj).unwrap());
        assert_eq!((m1.dev(), m1.ino()), (m2.dev(), m2.ino()), "{name}");
        linked += 1;
    }
    assert!(linked > 0);
    // Evicting the flash copies leaves the objects, and a restart from the
    // backend alone reads everything back through object_store.
    let id = v.id();
    drop(v);
    pool.shutdown().unwrap();
    drop(pool);
    std::fs::remove_dir_all(flash(dir.path())).unwrap();
    let pool = open(&config(dir.path()), &rt);
    let v = pool.open_volume("ln").unwrap();
    assert_eq!(v.id(), id);
    let mut got = vec![0u8; a.len()];
    v.read(0, &mut got).unwrap();
    assert_eq!(got, a);
    pool.shutdown().unwrap();
}
