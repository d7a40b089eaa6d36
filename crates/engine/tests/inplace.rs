//! In-place rewrites (volume.rs module docs): a whole-cluster rewrite of
//! data written since the last hard barrier overwrites its own slot; FUA,
//! flush, snapshots and shipping freeze slots; replay drops records whose
//! data never reached the slot and adopts slots whose bytes lost their
//! record after a soft sync. Torn states are built by hand on the files.
#![allow(missing_docs)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use depot_block::BlockDevice;
use depot_engine::{VPoolConfig, Volume};

/// 16 clusters: the smallest run rewritten in place.
const RUN: usize = 16 * 4096;

fn cfg(dir: &Path) -> VPoolConfig {
    let mut c = config(dir);
    // 255 slots per container, a buffer that never ships on pressure here.
    c.container_bytes = 256 * 4096;
    c.write_buffer_bytes = 64 << 20;
    c.keep_shipped_bytes = 64 << 20;
    c
}

fn files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    v.sort();
    v
}

fn run(tag: u64) -> Vec<u8> {
    pattern(tag, 0, RUN)
}

fn read_run(v: &Volume, lba: u64) -> Vec<u8> {
    let mut b = vec![0u8; RUN];
    v.read(lba, &mut b).unwrap();
    b
}

#[test]
fn recent_rewrites_go_in_place_barriers_freeze() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let pool = open(&cfg(dir.path()), &rt);
    let v = pool.create_volume("v", 4 << 20, 4096).unwrap();
    v.write(0, &run(1), false).unwrap();
    let s0 = v.stats();
    // A rewrite of the same 16 clusters: in place, nothing new unshipped.
    v.write(0, &run(2), false).unwrap();
    let s1 = v.stats();
    assert_eq!(s1.rewritten_clusters, 16);
    assert_eq!(s1.unshipped_bytes, s0.unshipped_bytes);
    assert_eq!(read_run(&v, 0), run(2));

    // A flush freezes: the next rewrite appends, the one after goes in
    // place again (over the appended slots).
    v.flush().unwrap();
    v.write(0, &run(3), false).unwrap();
    let s2 = v.stats();
    assert_eq!(s2.rewritten_clusters, 16);
    assert_eq!(s2.unshipped_bytes, s1.unshipped_bytes + RUN as u64);
    v.write(0, &run(4), false).unwrap();
    assert_eq!(v.stats().rewritten_clusters, 32);

    // A FUA write may itself go in place, and freezes what it wrote.
    v.write(0, &run(5), true).unwrap();
    assert_eq!(v.stats().rewritten_clusters, 48);
    let before = v.stats().unshipped_bytes;
    v.write(0, &run(6), false).unwrap();
    assert_eq!(v.stats().rewritten_clusters, 48);
    assert_eq!(v.stats().unshipped_bytes, before + RUN as u64);

    // A snapshot freezes: the snapshot keeps its data.
    v.create_snapshot("s").unwrap();
    v.write(0, &run(7), false).unwrap();
    assert_eq!(v.stats().rewritten_clusters, 48);
    v.write(0, &run(8), false).unwrap();
    assert_eq!(v.stats().rewritten_clusters, 64);

    // Small, partial or misaligned rewrites append.
    let n = v.stats().rewritten_clusters;
    v.write(0, &pattern(9, 0, 4096), false).unwrap();
    v.write(0, &pattern(10, 0, 8 * 4096), false).unwrap();
    v.write(1, &pattern(11, 1, RUN), false).unwrap();
    assert_eq!(v.stats().rewritten_clusters, n);
    // Now clusters 0..17 are in pieces: a 16-cluster rewrite appends and
    // lays them out contiguously again; the next one is in place.
    v.write(0, &run(12), false).unwrap();
    assert_eq!(v.stats().rewritten_clusters, n);
    v.write(0, &run(13), false).unwrap();
    assert_eq!(v.stats().rewritten_clusters, n + 16);
    assert_eq!(read_run(&v, 0), run(13));
    let mut b = vec![0u8; 4096];
    v.read(16, &mut b).unwrap();
    assert_eq!(b, pattern(11, 1, RUN)[15 * 4096..]);

    v.rollback("s").unwrap();
    assert_eq!(read_run(&v, 0), run(6));
    pool.shutdown().unwrap();
}

#[test]
fn in_place_rewrites_survive_kill_restart_and_backend_restore() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path());
    {
        let pool = open(&c, &rt);
        let v = pool.create_volume("v", 4 << 20, 4096).unwrap();
        for round in 0..5u64 {
            for r in 0..8u64 {
                v.write(r * 16, &pattern(round * 100 + r, r, RUN), false)
                    .unwrap();
            }
        }
        assert!(v.stats().rewritten_clusters >= 4 * 8 * 16);
        pool.abandon(); // no sync: like kill -9
    }
    {
        let pool = open(&c, &rt);
        let v = pool.open_volume("v").unwrap();
        for r in 0..8u64 {
            assert_eq!(read_run(&v, r * 16), pattern(400 + r, r, RUN), "run {r}");
        }
        // Everything is final after a restart: the first rewrite appends.
        v.write(0, &pattern(500, 0, RUN), false).unwrap();
        assert_eq!(v.stats().rewritten_clusters, 0);
        v.write(0, &pattern(501, 0, RUN), false).unwrap();
        assert_eq!(v.stats().rewritten_clusters, 16);
        v.sync_to_backend().unwrap();
        pool.abandon();
    }
    std::fs::remove_dir_all(flash(dir.path())).unwrap();
    let pool = open(&c, &rt);
    let v = pool.open_volume("v").unwrap();
    assert_eq!(read_run(&v, 0), pattern(501, 0, RUN));
    for r in 1..8u64 {
        assert_eq!(read_run(&v, r * 16), pattern(400 + r, r, RUN), "run {r}");
    }
    pool.shutdown().unwrap();
}

/// The tlog and container of a volume with one segment.
fn only_files(dir: &Path, v: &Volume) -> (PathBuf, PathBuf) {
    let vd = vol_dir(dir, v);
    let t = files(&vd.join("tlogs"), "tlog");
    let c = files(&vd.join("containers"), "sco");
    assert_eq!((t.len(), c.len()), (1, 1), "{t:?} {c:?}");
    (t[0].clone(), c[0].clone())
}

#[test]
fn replay_drops_records_whose_data_never_reached_the_slot() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(dir.path());
    // No background sync: the rewrite's data is not durable (were it
    // synced, losing it would be corruption, not a torn write).
    c.sync_interval = Duration::from_secs(3600);
    let (tlog, sco) = {
        let pool = open(&c, &rt);
        let v = pool.create_volume("v", 4 << 20, 4096).unwrap();
        v.write(0, &run(1), false).unwrap();
        v.write(0, &run(2), false).unwrap();
        assert_eq!(v.stats().rewritten_clusters, 16);
        let f = only_files(dir.path(), &v);
        pool.abandon();
        f
    };
    // A kill between the records of the rewrite and its data: the slots
    // still hold the first write.
    let first = run(1);
    let f = std::fs::OpenOptions::new().write(true).open(&sco).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &first, 4096).unwrap();
    let records_before = std::fs::metadata(&tlog).unwrap().len();
    {
        let pool = open(&c, &rt);
        let v = pool.open_volume("v").unwrap();
        assert_eq!(read_run(&v, 0), first);
        // The dropped records are gone from the tlog, so a restore from
        // the backend (which checks no data) cannot apply them either.
        assert_eq!(
            std::fs::metadata(&tlog).unwrap().len(),
            records_before - 16 * 64
        );
        v.sync_to_backend().unwrap();
        pool.abandon();
    }
    std::fs::remove_dir_all(flash(dir.path())).unwrap();
    let pool = open(&c, &rt);
    let v = pool.open_volume("v").unwrap();
    assert_eq!(read_run(&v, 0), first);
    pool.shutdown().unwrap();
}

/// Waits until a background (soft) sync has committed everything written:
/// one sync after the call, then time for a second one in case the first
/// had grabbed before the last write (`sync_interval` is 200 ms).
fn wait_soft_sync(v: &Volume) {
    let s = v.stats().syncs;
    let t = Instant::now();
    while v.stats().syncs < s + 1 {
        assert!(t.elapsed() < Duration::from_secs(10), "no background sync");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(600));
}

#[test]
fn replay_adopts_a_rewrite_whose_record_was_lost_after_a_soft_sync() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(dir.path());
    // Every background sync commits the index, so the first write's
    // records are committed before the rewrite.
    c.index_commit_interval = Duration::ZERO;
    let tlog = {
        let pool = open(&c, &rt);
        let v = pool.create_volume("v", 4 << 20, 4096).unwrap();
        v.write(0, &run(1), false).unwrap();
        wait_soft_sync(&v);
        v.write(0, &run(2), false).unwrap();
        assert_eq!(v.stats().rewritten_clusters, 16);
        let (t, _) = only_files(dir.path(), &v);
        pool.abandon();
        t
    };
    // A power cut that kept the rewrite's data but not its records.
    let len = std::fs::metadata(&tlog).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&tlog).unwrap();
    f.set_len(len - 16 * 64).unwrap();
    drop(f);
    let pool = open(&c, &rt);
    let v = pool.open_volume("v").unwrap();
    assert_eq!(v.stats().adopted_clusters, 16);
    assert_eq!(read_run(&v, 0), run(2));
    pool.shutdown().unwrap();
}

#[test]
fn replay_never_adopts_a_slot_frozen_before_a_completed_sync() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path());
    let sco = {
        let pool = open(&c, &rt);
        let v = pool.create_volume("v", 4 << 20, 4096).unwrap();
        v.write(0, &run(1), false).unwrap();
        v.flush().unwrap();
        let (_, s) = only_files(dir.path(), &v);
        pool.abandon();
        s
    };
    // Bit rot in durable, final data is an integrity error, never adopted.
    let f = std::fs::OpenOptions::new().write(true).open(&sco).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &[0xee; 4096], 4096).unwrap();
    let pool = open(&c, &rt);
    let v = pool.open_volume("v").unwrap();
    assert_eq!(v.stats().adopted_clusters, 0);
    let mut b = vec![0u8; 4096];
    assert!(v.read(0, &mut b).is_err());
    v.read(1, &mut b).unwrap();
    assert_eq!(b, run(1)[4096..8192]);
    pool.shutdown().unwrap();
}

#[test]
fn reads_racing_in_place_rewrites_see_whole_clusters_never_errors() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let pool = open(&cfg(dir.path()), &rt);
    let v = pool.create_volume("v", 4 << 20, 4096).unwrap();
    let version = |k: u64| -> Vec<u8> {
        // Every cluster of version k starts with k.
        let mut b = run(k);
        for c in b.chunks_mut(4096) {
            c[..8].copy_from_slice(&k.to_le_bytes());
        }
        b
    };
    v.write(0, &version(0), false).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (v, stop, version) = (v.clone(), stop.clone(), version);
        std::thread::spawn(move || {
            let mut k = 1;
            while !stop.load(Ordering::Relaxed) {
                v.write(0, &version(k), false).unwrap();
                k += 1;
            }
            k
        })
    };
    let t = Instant::now();
    let mut reads = 0;
    while t.elapsed() < Duration::from_secs(2) {
        let b = read_run(&v, 0);
        for (i, c) in b.chunks(4096).enumerate() {
            let k = u64::from_le_bytes(c[..8].try_into().unwrap());
            assert_eq!(c, &version(k)[i * 4096..(i + 1) * 4096], "a torn cluster");
        }
        reads += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let writes = writer.join().unwrap();
    assert!(v.stats().rewritten_clusters > 0);
    eprintln!("{reads} reads raced {writes} in-place rewrites");
    pool.shutdown().unwrap();
}

#[test]
fn shipping_freezes_only_the_segments_it_ships() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(dir.path());
    // 64 slots per container (4 runs), shipping above 1.5 MiB unshipped.
    c.container_bytes = 65 * 4096;
    c.write_buffer_bytes = 2 << 20;
    c.keep_shipped_bytes = 2 << 20;
    let buffer = c.write_buffer_bytes;
    let pool = open(&c, &rt);
    let v = pool.create_volume("v", 8 << 20, 4096).unwrap();
    // Six full containers: six sealed segments, 1.5 MiB unshipped.
    for r in 0..24u64 {
        v.write(r * 16, &pattern(r, r, RUN), false).unwrap();
    }
    // Pressure ships the oldest segments until a quarter of the buffer is
    // free again.
    let t = Instant::now();
    while v.stats().unshipped_bytes > buffer / 4 * 3 {
        assert!(t.elapsed() < Duration::from_secs(10), "did not ship");
        std::thread::sleep(Duration::from_millis(20));
    }
    let s = v.stats();
    assert!((1..6).contains(&s.segments_waiting), "{s:?}");
    // The first segment shipped: final, a rewrite appends.
    v.write(0, &pattern(100, 0, RUN), false).unwrap();
    assert_eq!(v.stats().rewritten_clusters, 0);
    // The newest sealed segment did not: rewritten in place (its records
    // go to its own, sealed tlog).
    v.write(20 * 16, &pattern(101, 20, RUN), false).unwrap();
    assert_eq!(v.stats().rewritten_clusters, 16);
    assert_eq!(read_run(&v, 0), pattern(100, 0, RUN));
    assert_eq!(read_run(&v, 16), pattern(1, 1, RUN));
    assert_eq!(read_run(&v, 20 * 16), pattern(101, 20, RUN));
    // It all reaches the backend intact.
    v.sync_to_backend().unwrap();
    pool.abandon();
    drop((v, pool));
    std::fs::remove_dir_all(flash(dir.path())).unwrap();
    let pool = open(&c, &rt);
    let v = pool.open_volume("v").unwrap();
    for r in 0..24u64 {
        let want = match r {
            0 => pattern(100, 0, RUN),
            20 => pattern(101, 20, RUN),
            _ => pattern(r, r, RUN),
        };
        assert_eq!(read_run(&v, r * 16), want, "run {r}");
    }
    pool.shutdown().unwrap();
}

/// A write handed over in pieces (as PDUs deliver it) stores their
/// concatenation; large cluster-aligned pieces are written as they are and
/// still go in place, small or unaligned ones are gathered with their
/// neighbours first.
#[test]
fn vectored_writes_store_the_concatenation_and_go_in_place() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let pool = open(&cfg(dir.path()), &rt);
    let v = pool.create_volume("v", 4 << 20, 512).unwrap();
    let len = 512 << 10;
    let back = |v: &Volume| {
        let mut b = vec![0u8; len];
        v.read(0, &mut b).unwrap();
        b
    };
    let d1 = pattern(1, 0, len);
    v.write(0, &d1, false).unwrap();
    assert_eq!(v.stats().rewritten_clusters, 0);

    // Two 256 KiB pieces: each a run of its own, each in place.
    let d2 = pattern(2, 0, len);
    let (a, b) = d2.split_at(256 << 10);
    v.write_vectored(0, &[a, b], false).unwrap();
    assert_eq!(v.stats().rewritten_clusters, 128);
    assert_eq!(back(&v), d2);

    // A 4 KiB piece is too small to stand alone: gathered with the rest.
    let d3 = pattern(3, 0, len);
    let (a, rest) = d3.split_at(256 << 10);
    let (b, c) = rest.split_at(4096);
    v.write_vectored(0, &[a, b, c], false).unwrap();
    assert_eq!(v.stats().rewritten_clusters, 256);
    assert_eq!(back(&v), d3);

    // Cuts inside clusters and sectors, an empty piece, a FUA write.
    let d4 = pattern(4, 0, len);
    let cuts = [0, 1, 700, 4096 * 3 + 5, 4096 * 3 + 5, 200_000, len];
    let pieces: Vec<&[u8]> = cuts.windows(2).map(|w| &d4[w[0]..w[1]]).collect();
    v.write_vectored(0, &pieces, true).unwrap();
    assert_eq!(back(&v), d4);

    // Unaligned start and end (sector 3 to 8 sectors short of the end).
    let d5 = pattern(5, 3, len - 11 * 512);
    let (a, b) = d5.split_at(300);
    v.write_vectored(3, &[a, b], false).unwrap();
    let mut want = d4.clone();
    want[3 * 512..3 * 512 + d5.len()].copy_from_slice(&d5);
    assert_eq!(back(&v), want);

    // Nothing at all: a no-op; past the end: refused, nothing written.
    v.write_vectored(0, &[], true).unwrap();
    assert!(v.write_vectored(8190, &[&d5[..4096]], false).is_err());
    assert_eq!(back(&v), want);

    // All of it survives a restart.
    v.flush().unwrap();
    drop(v);
    pool.shutdown().unwrap();
    drop(pool);
    let pool = open(&cfg(dir.path()), &rt);
    let v = pool.open_volume("v").unwrap();
    assert_eq!(back(&v), want);
    pool.shutdown().unwrap();
}
