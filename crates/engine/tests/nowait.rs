//! `Volume::try_read_nowait`: completes with the right bytes when the index
//! and the data are in memory / the page cache, and declines (`Ok(false)`,
//! never an error or wrong bytes) when a read would wait: data only on the
//! backend, a cold index chunk, a closed volume. Also checks coalesced
//! multi-cluster reads across containers, holes and a clone's parent.
//! `Volume::try_write_nowait`: completes only plain appends into the open
//! container, and what it wrote is read back and survives a crash after a
//! flush. `Volume::try_write_vectored_nowait`: several pieces (clusters cut
//! between them) go in place or into the open container the same way.
#![allow(missing_docs)]
// Test code: block offsets of a small test vDisk.
#![allow(clippy::cast_possible_truncation)]

mod common;

use common::*;
use depot_block::BlockDevice;

#[test]
fn hot_reads_complete_with_the_right_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let mut cfg = config(dir.path());
    cfg.keep_shipped_bytes = 64 << 20;
    let pool = open(&cfg, &rt);
    let vol = pool.create_volume("v", 8 << 20, 512).unwrap();
    // 1 MiB of data spanning several 63-slot containers, a hole, then more.
    let a = pattern(1, 0, 1 << 20);
    vol.write(0, &a, false).unwrap();
    let b = pattern(2, 4096, 64 << 10);
    vol.write(4096, &b, true).unwrap();
    vol.sync_to_backend().unwrap();

    // Warm the index cache with one blocking read of the whole range.
    let mut whole = vec![0u8; (4096 + 128) * 512];
    vol.read(0, &mut whole).unwrap();
    assert_eq!(&whole[..1 << 20], &a[..]);
    assert!(whole[1 << 20..2 << 20].iter().all(|&x| x == 0));
    assert_eq!(&whole[2 << 20..], &b[..]);

    let mut got = vec![0xA5u8; whole.len()];
    assert!(vol.try_read_nowait(0, &mut got).unwrap());
    assert_eq!(got, whole);
    // Unaligned 512-byte pieces (partial clusters at both ends).
    for (lba, n) in [(1u64, 1usize), (7, 3), (4095, 5), (2047, 2), (4100, 9)] {
        let mut got = vec![0xA5u8; n * 512];
        assert!(vol.try_read_nowait(lba, &mut got).unwrap(), "lba {lba}");
        let off = lba as usize * 512;
        assert_eq!(got, &whole[off..off + n * 512], "lba {lba}");
    }

    // A clone reads its parent's clusters (and its own) without waiting.
    vol.create_snapshot("s").unwrap();
    let c = pool.clone_volume("v", Some("s"), "c").unwrap();
    let own = pattern(3, 8, 8192);
    c.write(8, &own, false).unwrap();
    let mut want = vec![0u8; 64 * 512];
    c.read(0, &mut want).unwrap();
    assert_eq!(&want[..4096], &a[..4096]);
    assert_eq!(&want[4096..12288], &own[..]);
    let mut got = vec![0xA5u8; want.len()];
    assert!(c.try_read_nowait(0, &mut got).unwrap());
    assert_eq!(got, want);
    pool.shutdown().unwrap();
}

#[test]
fn declines_when_the_data_is_only_on_the_backend() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let mut cfg = config(dir.path());
    cfg.keep_shipped_bytes = 0;
    // The local-directory backend stands in for a remote one here.
    cfg.local_backend_shortcuts = false;
    let pool = open(&cfg, &rt);
    let vol = pool.create_volume("v", 4 << 20, 4096).unwrap();
    let a = pattern(5, 0, 512 << 10);
    vol.write(0, &a, false).unwrap();
    vol.sync_to_backend().unwrap();
    let st = vol.stats();
    assert_eq!(st.local_shipped_bytes, 0, "containers must be evicted");

    let mut got = vec![0u8; a.len()];
    // Cold index: declines without touching RocksDB or the backend.
    let downloads = pool.stats().downloads;
    assert!(!vol.try_read_nowait(0, &mut got).unwrap());
    assert_eq!(pool.stats().downloads, downloads);
    // The blocking read fetches it (and fills the read cache); the data
    // still is not in a local container, so the non-blocking read declines.
    vol.read(0, &mut got).unwrap();
    assert_eq!(got, a);
    // 128 clusters in consecutive slots of 3 containers (63 slots each):
    // one ranged GET per run, not one per cluster.
    let gets = pool.stats().downloads - downloads;
    assert!(gets <= 4, "{gets} GETs for 3 coalesced runs");
    let downloads = pool.stats().downloads;
    assert!(!vol.try_read_nowait(0, &mut got).unwrap());
    assert!(!vol.try_read_nowait(3, &mut got[..4096]).unwrap());
    assert_eq!(pool.stats().downloads, downloads, "no GET without waiting");

    // New writes are local again and complete.
    let b = pattern(6, 64, 8192);
    vol.write(64, &b, false).unwrap();
    let mut got = vec![0u8; 8192];
    vol.read(64, &mut got).unwrap();
    got.fill(0);
    assert!(vol.try_read_nowait(64, &mut got).unwrap());
    assert_eq!(got, b);

    // A closed volume declines (the blocking read reports the error).
    pool.shutdown().unwrap();
    assert!(!vol.try_read_nowait(64, &mut got).unwrap());
    assert!(vol.read(64, &mut got).is_err());
}

#[test]
fn out_of_range_is_an_error_not_a_decline() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let pool = open(&config(dir.path()), &rt);
    let vol = pool.create_volume("v", 1 << 20, 4096).unwrap();
    let mut buf = vec![0u8; 8192];
    assert!(vol.try_read_nowait(255, &mut buf).is_err());
    pool.shutdown().unwrap();
}

#[test]
fn nowait_writes_are_plain_appends_and_durable_after_flush() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let cfg = config(dir.path());
    let pool = open(&cfg, &rt);
    let vol = pool.create_volume("w", 4 << 20, 512).unwrap();
    let a = pattern(7, 0, 8192);
    // No open container yet: creating one is file-system work, declined.
    assert!(!vol.try_write_nowait(0, &a).unwrap());
    vol.write(0, &a, false).unwrap();
    // Now a whole-cluster append completes.
    let b = pattern(8, 16, 8192);
    assert!(vol.try_write_nowait(16, &b).unwrap());
    // Partial clusters need a read-modify-write: declined, nothing written.
    assert!(!vol.try_write_nowait(33, &b[..4096]).unwrap());
    assert!(!vol.try_write_nowait(40, &b[..512]).unwrap());
    let mut got = vec![0u8; 8192];
    vol.read(16, &mut got).unwrap();
    assert_eq!(got, b);
    vol.read(32, &mut got).unwrap();
    assert!(
        got.iter().all(|&x| x == 0),
        "a declined write wrote nothing"
    );
    // Appends never fill (and so never seal) the container inline: keep
    // going until one declines, then the blocking path takes over.
    let mut lba = 64u64;
    let mut inline = 0;
    while vol.try_write_nowait(lba, &pattern(9, lba, 4096)).unwrap() {
        inline += 1;
        lba += 8;
        assert!(inline < 1000, "never declined");
    }
    assert!(inline > 0);
    vol.write(lba, &pattern(9, lba, 4096), false).unwrap();
    vol.flush().unwrap();
    // Crash (no shutdown), reopen: everything flushed is there.
    pool.abandon();
    drop((vol, pool));
    let pool = open(&cfg, &rt);
    let vol = pool.open_volume("w").unwrap();
    let mut got = vec![0u8; 8192];
    vol.read(0, &mut got).unwrap();
    assert_eq!(got, a);
    vol.read(16, &mut got).unwrap();
    assert_eq!(got, b);
    let mut one = vec![0u8; 4096];
    let mut l = 64u64;
    while l <= lba {
        vol.read(l, &mut one).unwrap();
        assert_eq!(one, pattern(9, l, 4096), "lba {l}");
        l += 8;
    }
    // A template is read-only: declined (the blocking write reports it).
    vol.set_template(true).unwrap();
    assert!(!vol.try_write_nowait(0, &a).unwrap());
    assert!(vol.write(0, &a, false).is_err());
    pool.shutdown().unwrap();
}

/// Cuts `data` into pieces of the given lengths (the rest is the last piece).
fn cut<'a>(data: &'a [u8], lens: &[usize]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut rest = data;
    for &n in lens {
        let (a, b) = rest.split_at(n);
        out.push(a);
        rest = b;
    }
    out.push(rest);
    out
}

#[test]
fn vectored_nowait_writes_take_the_pieces_as_they_are() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let cfg = config(dir.path());
    let pool = open(&cfg, &rt);
    let vol = pool.create_volume("p", 4 << 20, 512).unwrap();
    // Opens the container; its 16 clusters are mutable (no barrier yet).
    vol.write(0, &pattern(1, 0, 64 << 10), false).unwrap();

    // 16 whole clusters over them in four uneven pieces (clusters cut
    // between pieces): rewritten in place, without waiting.
    let a = pattern(2, 0, 64 << 10);
    let pieces = cut(&a, &[1000, 30_000, 25_536]);
    assert_eq!(pieces.len(), 4);
    let rewritten = vol.stats().rewritten_clusters;
    assert!(vol.try_write_vectored_nowait(0, &pieces).unwrap());
    assert_eq!(vol.stats().rewritten_clusters, rewritten + 16);

    // 4 clusters elsewhere (from cluster 40) in three pieces: appended into
    // the open container, the middle piece a whole cluster and two halves.
    let b = pattern(3, 320, 16 << 10);
    let pieces = cut(&b, &[2048, 8192]);
    assert!(vol.try_write_vectored_nowait(320, &pieces).unwrap());
    // One piece goes through the same path.
    let c = pattern(4, 400, 8192);
    assert!(vol.try_write_nowait(400, &c).unwrap());
    // Pieces that end inside a cluster need a read-modify-write: declined,
    // nothing written.
    let d = pattern(5, 480, 8192);
    assert!(
        !vol.try_write_vectored_nowait(480, &cut(&d[..6144], &[4096]))
            .unwrap()
    );

    let check = |vol: &depot_engine::Volume| {
        let mut got = vec![0u8; 64 << 10];
        vol.read(0, &mut got).unwrap();
        assert!(got == a, "rewritten in place");
        let mut got = vec![0u8; 16 << 10];
        vol.read(320, &mut got).unwrap();
        assert!(got == b, "appended");
        let mut got = vec![0u8; 8192];
        vol.read(400, &mut got).unwrap();
        assert!(got == c, "one piece");
        vol.read(480, &mut got).unwrap();
        assert!(
            got.iter().all(|&x| x == 0),
            "a declined write wrote nothing"
        );
    };
    check(&vol);
    // Durable after a flush: crash (no shutdown) and replay.
    vol.flush().unwrap();
    pool.abandon();
    drop((vol, pool));
    let pool = open(&cfg, &rt);
    let vol = pool.open_volume("p").unwrap();
    check(&vol);
    pool.shutdown().unwrap();
}
