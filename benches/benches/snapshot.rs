//! Snapshot and clone creation time against the amount of data a vDisk holds
//! (the SCALE target: under 10 ms regardless of vDisk size).
//!
//! Two engine vDisks in one vPool (local-directory backend):
//! - `small`: 1 GiB, 4 MiB written;
//! - `large`: 64 GiB, 512 MiB written sequentially plus 65,536 4 KiB writes
//!   spread over the whole 64 GiB (≈ 196,000 index entries), all shipped.
//!
//! Each timed iteration is preceded (untimed) by one 4 KiB write, so every
//! snapshot has something to seal and sync, as it would in use. Groups:
//! `snapshot_create/{small,large}` times `Volume::create_snapshot`;
//! `snapshot_create/after_writes` times it on `large` right after a burst
//! of 256 MiB of 1 MiB writes that the periodic sync made durable but the
//! index has not committed yet (it must not wait for that commit);
//! `clone_create/{small,large}` times `VPool::clone_volume` from a snapshot.
//! Snapshots are deleted (untimed) every 32 and clones after each iteration,
//! so the metadata stays at a realistic size.
//! Run: `cargo bench -p depot-benches --bench snapshot`
//! (`DEPOT_BENCH_QUICK=1` shrinks the large vDisk for smoke runs).
#![allow(missing_docs)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use depot_block::BlockDevice;
use depot_engine::{BackendConfig, VPool, VPoolConfig, Volume};

struct Env {
    _rt: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
    pool: Arc<VPool>,
}

fn env() -> Env {
    let rt = common::runtime();
    let dir = common::scratch_dir();
    let cfg = VPoolConfig::new(
        "bench",
        BackendConfig::Local {
            path: dir.path().join("backend"),
        },
        dir.path().join("flash"),
    );
    let pool = VPool::open(cfg, rt.handle().clone()).unwrap();
    Env {
        _rt: rt,
        _dir: dir,
        pool,
    }
}

/// Longer than the default `sync_interval` (1 s): the burst before an
/// `after_writes` snapshot is durable by then, its index not committed
/// (`index_commit_interval`, 10 s).
const SYNC_SETTLE: Duration = Duration::from_millis(1200);

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    for (i, c) in v.chunks_mut(8).enumerate() {
        let x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ i as u64;
        c.copy_from_slice(&x.to_le_bytes()[..c.len()]);
    }
    v
}

/// Writes `seq_bytes` sequentially from block 0, then `spread` 4 KiB writes
/// evenly spaced over the whole vDisk, and ships everything.
fn fill(vol: &Volume, seq_bytes: u64, spread: u64) {
    let bs = u64::from(vol.block_size());
    let mib = pattern(1, 1 << 20);
    for i in 0..seq_bytes >> 20 {
        vol.write(i * (1 << 20) / bs, &mib, false).unwrap();
    }
    let clusters = vol.num_blocks() * bs / 4096;
    for i in 0..spread {
        let c = i * (clusters / spread.max(1));
        vol.write(c * 4096 / bs, &pattern(c, 4096), false).unwrap();
    }
    vol.sync_to_backend().unwrap();
}

fn bench(c: &mut Criterion) {
    let quick = std::env::var_os("DEPOT_BENCH_QUICK").is_some();
    let e = env();
    let small = e.pool.create_volume("small", 1 << 30, 4096).unwrap();
    fill(&small, 4 << 20, 0);
    let (large_seq, large_spread) = if quick {
        (16u64 << 20, 4096)
    } else {
        (512 << 20, 65536)
    };
    let large = e.pool.create_volume("large", 64 << 30, 4096).unwrap();
    let t = Instant::now();
    fill(&large, large_seq, large_spread);
    eprintln!(
        "large vDisk: {} MiB sequential + {large_spread} spread 4 KiB writes in {:.1?}",
        large_seq >> 20,
        t.elapsed()
    );
    let vols = [("small", small), ("large", large)];
    let buf = pattern(7, 4096);

    let (samples, measure, warm) = if quick {
        (10, Duration::from_millis(300), Duration::from_millis(100))
    } else {
        (20, Duration::from_secs(3), Duration::from_secs(1))
    };
    let mut g = c.benchmark_group("snapshot_create");
    g.sample_size(samples)
        .measurement_time(measure)
        .warm_up_time(warm);
    for (name, vol) in &vols {
        let mut n = 0u64;
        g.bench_function(*name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    vol.write((n % 1024) * 8, &buf, false).unwrap();
                    let t = Instant::now();
                    vol.create_snapshot(&format!("s{n}")).unwrap();
                    total += t.elapsed();
                    n += 1;
                    if n.is_multiple_of(32) {
                        for s in vol.list_snapshots() {
                            vol.delete_snapshot(&s.name).unwrap();
                        }
                    }
                }
                total
            })
        });
    }
    // Right after a burst of writes the periodic sync has made durable but
    // not committed to the index: a snapshot must not wait for that commit.
    let burst: u64 = if quick { 16 << 20 } else { 256 << 20 };
    let mib = pattern(9, 1 << 20);
    let (_, hot) = &vols[1];
    let mut n = 0u64;
    g.sample_size(10);
    g.bench_function("after_writes", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                for i in 0..burst >> 20 {
                    hot.write(i * 256, &mib, false).unwrap();
                }
                std::thread::sleep(SYNC_SETTLE);
                let t = Instant::now();
                hot.create_snapshot(&format!("w{n}")).unwrap();
                total += t.elapsed();
                hot.delete_snapshot(&format!("w{n}")).unwrap();
                n += 1;
            }
            total
        })
    });
    g.finish();

    let mut g = c.benchmark_group("clone_create");
    g.sample_size(samples)
        .measurement_time(measure)
        .warm_up_time(warm);
    for (name, vol) in &vols {
        vol.create_snapshot("base").unwrap();
        let mut n = 0u64;
        g.bench_function(*name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let clone = format!("{name}-clone{n}");
                    n += 1;
                    let t = Instant::now();
                    e.pool.clone_volume(name, Some("base"), &clone).unwrap();
                    total += t.elapsed();
                    e.pool.delete_volume(&clone).unwrap();
                }
                total
            })
        });
    }
    g.finish();
    e.pool.shutdown().unwrap();
}

criterion_group!(benches, bench);
criterion_main!(benches);
