//! Relocation on read (`volume/defrag.rs`) through the public API: a large
//! read of a scattered range rewrites it contiguously, concurrent writes
//! always win, and a snapshot's or a parent's clusters are never copied.
#![allow(missing_docs)]
// Test code: sizes of a small test vDisk.
#![allow(clippy::cast_possible_truncation)]

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;
use depot_block::BlockDevice;
use depot_engine::{VPoolConfig, Volume};

/// Clusters of 1 MiB.
const N: u64 = 256;

/// Containers large enough for a whole relocated MiB, and a write buffer
/// that leaves room for relocations (they stop at half of it).
fn defrag_config(root: &std::path::Path) -> VPoolConfig {
    let mut c = config(root);
    c.container_bytes = 4 << 20;
    c.write_buffer_bytes = 64 << 20;
    c
}

/// Writes clusters `base..base + N` one at a time in a scattered order, so
/// that no two neighbours sit in consecutive slots.
fn write_scattered(v: &Volume, base: u64, tag: u64) {
    for i in 0..N {
        let c = base + i * 97 % N;
        v.write(c, &pattern(tag, c, 4096), false).unwrap();
    }
}

fn expected(base: u64, tag_of: impl Fn(u64) -> u64) -> Vec<u8> {
    (base..base + N)
        .flat_map(|c| pattern(tag_of(c), c, 4096))
        .collect()
}

/// Reads 1 MiB at cluster `base`; returns the data and the pieces it took.
fn read_mib(v: &Volume, base: u64) -> (Vec<u8>, u64) {
    let before = v.stats().read_runs;
    let mut buf = vec![0u8; (N * 4096) as usize];
    v.read(base, &mut buf).unwrap();
    (buf, v.stats().read_runs - before)
}

#[test]
fn a_scattered_range_is_read_contiguously_after_one_read() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let cfg = defrag_config(dir.path());
    let pool = open(&cfg, &rt);
    let v = pool.create_volume("v", 16 << 20, 4096).unwrap();
    write_scattered(&v, 0, 1);
    let want = expected(0, |_| 1);

    let (first, pieces) = read_mib(&v, 0);
    assert_eq!(first, want);
    assert_eq!(pieces, N, "every cluster was its own piece");
    assert_eq!(v.stats().relocated_clusters, N);

    let (second, pieces) = read_mib(&v, 0);
    assert_eq!(second, want);
    assert_eq!(pieces, 1, "one positioned read after relocation");
    assert_eq!(v.stats().relocated_clusters, N, "nothing more to move");

    // Small reads never relocate.
    write_scattered(&v, N, 2);
    let mut small = vec![0u8; 64 * 1024];
    v.read(N, &mut small).unwrap();
    assert_eq!(v.stats().relocated_clusters, N);

    // The relocation records replay like any others.
    pool.shutdown().unwrap();
    drop(v);
    drop(pool);
    let pool = open(&cfg, &rt);
    let v = pool.open_volume("v").unwrap();
    let (again, pieces) = read_mib(&v, 0);
    assert_eq!(again, want);
    assert_eq!(pieces, 1);
    pool.shutdown().unwrap();
}

#[test]
fn a_crash_after_relocating_loses_nothing() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let cfg = defrag_config(dir.path());
    let pool = open(&cfg, &rt);
    let v = pool.create_volume("v", 16 << 20, 4096).unwrap();
    write_scattered(&v, 0, 1);
    v.flush().unwrap();
    let (_, pieces) = read_mib(&v, 0);
    assert_eq!(pieces, N);
    assert_eq!(v.stats().relocated_clusters, N);
    // Crash without a flush: the relocation's records may or may not be
    // on disk; either way the data reads the same.
    pool.abandon();
    drop(v);
    drop(pool);
    let pool = open(&cfg, &rt);
    let v = pool.open_volume("v").unwrap();
    assert_eq!(read_mib(&v, 0).0, expected(0, |_| 1));
    pool.shutdown().unwrap();
}

#[test]
fn writes_racing_relocations_always_win() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let cfg = defrag_config(dir.path());
    let pool = open(&cfg, &rt);
    let v = pool.create_volume("v", 16 << 20, 4096).unwrap();
    write_scattered(&v, 0, 1);
    let stop = Arc::new(AtomicBool::new(false));
    // Readers relocate the range over and over while the writer keeps
    // scattering it again.
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (v, stop) = (v.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut buf = vec![0u8; (N * 4096) as usize];
                while !stop.load(Ordering::Relaxed) {
                    v.read(0, &mut buf).unwrap();
                }
            })
        })
        .collect();
    let mut last: HashMap<u64, u64> = HashMap::new();
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for tag in 2..6000u64 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let c = x % N;
        v.write(c, &pattern(tag, c, 4096), false).unwrap();
        last.insert(c, tag);
        if tag % 1000 == 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.join().unwrap();
    }
    assert!(
        v.stats().relocated_clusters > 0,
        "the readers relocated something"
    );
    let tag_of = |c| last.get(&c).copied().unwrap_or(1);
    assert_eq!(read_mib(&v, 0).0, expected(0, tag_of));
    pool.shutdown().unwrap();
    drop(v);
    drop(pool);
    let pool = open(&cfg, &rt);
    let v = pool.open_volume("v").unwrap();
    assert_eq!(read_mib(&v, 0).0, expected(0, tag_of));
    pool.shutdown().unwrap();
}

#[test]
fn snapshot_and_parent_clusters_are_not_relocated() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let pool = open(&defrag_config(dir.path()), &rt);
    let v = pool.create_volume("v", 16 << 20, 4096).unwrap();
    write_scattered(&v, 0, 1);
    v.create_snapshot("s").unwrap();

    // Everything the head reads belongs to the snapshot's generation.
    let (got, pieces) = read_mib(&v, 0);
    assert_eq!(got, expected(0, |_| 1));
    assert_eq!(pieces, N);
    assert_eq!(v.stats().relocated_clusters, 0);
    let (_, pieces) = read_mib(&v, 0);
    assert_eq!(pieces, N, "still scattered");

    // Overwrite the first half in the head generation, scattered: only
    // those clusters move.
    for i in 0..N / 2 {
        let c = i * 37 % (N / 2);
        v.write(c, &pattern(2, c, 4096), false).unwrap();
    }
    let tag_of = |c| if c < N / 2 { 2 } else { 1 };
    let (got, _) = read_mib(&v, 0);
    assert_eq!(got, expected(0, tag_of));
    assert_eq!(v.stats().relocated_clusters, N / 2);
    let (got, pieces) = read_mib(&v, 0);
    assert_eq!(got, expected(0, tag_of));
    assert_eq!(pieces, 1 + N / 2, "one run for the head half");

    // A clone reads its parent's clusters and copies none of them.
    let c = pool.clone_volume("v", Some("s"), "c").unwrap();
    let (got, _) = read_mib(&c, 0);
    assert_eq!(got, expected(0, |_| 1));
    assert_eq!(c.stats().relocated_clusters, 0);
    // The snapshot still reads as it was.
    v.rollback("s").unwrap();
    assert_eq!(read_mib(&v, 0).0, expected(0, |_| 1));
    pool.shutdown().unwrap();
}
