//! Write and read paths of the tiered engine against the raw-file device
//! (`depot_block::FileDevice`) on the same flash directory.
//!
//! Groups: `write_4k` (buffered, no FUA), `write_4k_fua` (every write
//! durable), `write_64k`, `read_4k_random` (data in local containers),
//! `read_4k_backend` (containers evicted: read cache / ranged GET path).
//! Large-volume groups (1 GiB vDisk, filled once with 1 MiB writes, the
//! working set of `benches/compare-tgt.sh`): `read_4k_hot_1g` (random 4 KiB
//! reads over the whole GiB, data in local containers; `engine_nowait` is
//! `try_read_nowait`), `read_1m_seq` (sequential 1 MiB reads) and
//! `write_1m_seq` (sequential 1 MiB writes with a 256 MiB write buffer, so
//! after warm-up the rate is what shipping sustains).
//! Run: `cargo bench -p depot-benches --bench engine`.
#![allow(missing_docs)]
// Benchmark code: test data patterns.
#![allow(clippy::cast_possible_truncation)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use depot_block::{BlockDevice, FileDevice};
use depot_engine::{BackendConfig, VPool, VPoolConfig};

const SIZE: u64 = 256 << 20;

struct Env {
    _rt: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
    pool: Arc<VPool>,
    vol: Arc<depot_engine::Volume>,
    raw: FileDevice,
}

fn env(keep_local: bool) -> Env {
    env_sized(keep_local, SIZE, 16 << 20, 512 << 20)
}

fn env_sized(keep_local: bool, size: u64, container: u64, write_buffer: u64) -> Env {
    let rt = common::runtime();
    let dir = common::scratch_dir();
    let mut cfg = VPoolConfig::new(
        "bench",
        BackendConfig::Local {
            path: dir.path().join("backend"),
        },
        dir.path().join("flash"),
    );
    cfg.container_bytes = container;
    cfg.write_buffer_bytes = write_buffer;
    cfg.read_cache_bytes = 128 << 20;
    if !keep_local {
        // Evicted containers are read like a remote backend's: read cache,
        // then ranged GETs.
        cfg.keep_shipped_bytes = 0;
        cfg.local_backend_shortcuts = false;
    }
    let pool = VPool::open(cfg, rt.handle().clone()).unwrap();
    let vol = pool.create_volume("bench", size, 4096).unwrap();
    let raw = FileDevice::open(&dir.path().join("raw.img"), 4096, size).unwrap();
    Env {
        _rt: rt,
        _dir: dir,
        pool,
        vol,
        raw,
    }
}

fn data(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

fn lcg(x: &mut u64) -> u64 {
    *x = x
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    *x >> 33
}

fn bench_writes(c: &mut Criterion) {
    let e = env(true);
    let blocks = SIZE / 4096;
    for (name, len, fua) in [
        ("write_4k", 4096usize, false),
        ("write_4k_fua", 4096, true),
        ("write_64k", 65536, false),
    ] {
        let mut g = c.benchmark_group(name);
        g.throughput(Throughput::Bytes(len as u64));
        g.sample_size(20).measurement_time(Duration::from_secs(3));
        let buf = data(len);
        let step = (len / 4096) as u64;
        let mut lba = 0u64;
        g.bench_function("engine", |b| {
            b.iter(|| {
                e.vol.write(lba, &buf, fua).unwrap();
                lba = (lba + step) % (blocks - step);
            })
        });
        let mut lba = 0u64;
        g.bench_function("raw_file", |b| {
            b.iter(|| {
                e.raw.write(lba, &buf, fua).unwrap();
                lba = (lba + step) % (blocks - step);
            })
        });
        g.finish();
    }
    e.pool.shutdown().unwrap();
}

fn bench_reads(c: &mut Criterion) {
    for (name, keep_local) in [("read_4k_random", true), ("read_4k_backend", false)] {
        let e = env(keep_local);
        let span = 8192u64; // 32 MiB of written data
        let chunk = data(1 << 20);
        for i in 0..span / 256 {
            e.vol.write(i * 256, &chunk, false).unwrap();
            e.raw.write(i * 256, &chunk, false).unwrap();
        }
        e.vol.sync_to_backend().unwrap();
        let mut g = c.benchmark_group(name);
        g.throughput(Throughput::Bytes(4096));
        g.sample_size(20).measurement_time(Duration::from_secs(3));
        let mut buf = vec![0u8; 4096];
        let mut x = 1u64;
        g.bench_function("engine", |b| {
            b.iter(|| e.vol.read(lcg(&mut x) % span, &mut buf).unwrap())
        });
        g.bench_function("raw_file", |b| {
            b.iter(|| e.raw.read(lcg(&mut x) % span, &mut buf).unwrap())
        });
        g.finish();
        let st = e.pool.stats();
        eprintln!(
            "{name}: cache hit ratio {:.3}, dedup ratio {:.2}, downloads {}",
            st.read_cache_hit_ratio, st.read_cache_dedup_ratio, st.downloads
        );
        e.pool.shutdown().unwrap();
    }
}

const BIG: u64 = 1 << 30;

/// 1 GiB vDisk and raw file, both filled with sequential 1 MiB writes and
/// the engine's data shipped (kept on flash as the local read tier).
fn filled_big() -> Env {
    let e = env_sized(true, BIG, 64 << 20, 1 << 30);
    let chunk = data(1 << 20);
    for i in 0..BIG / (1 << 20) {
        e.vol.write(i * 256, &chunk, false).unwrap();
        e.raw.write(i * 256, &chunk, false).unwrap();
    }
    e.vol.sync_to_backend().unwrap();
    e
}

fn bench_big_reads(c: &mut Criterion) {
    let e = filled_big();
    let blocks = BIG / 4096;
    let mut g = c.benchmark_group("read_4k_hot_1g");
    g.throughput(Throughput::Bytes(4096));
    g.sample_size(20).measurement_time(Duration::from_secs(3));
    let mut buf = vec![0u8; 4096];
    let mut x = 1u64;
    // Warm the index cache once over the whole volume, as fio's fill and
    // first seconds would.
    let mut big = vec![0u8; 1 << 20];
    for i in 0..blocks / 256 {
        e.vol.read(i * 256, &mut big).unwrap();
    }
    g.bench_function("engine", |b| {
        b.iter(|| e.vol.read(lcg(&mut x) % blocks, &mut buf).unwrap())
    });
    g.bench_function("engine_nowait", |b| {
        b.iter(|| {
            let lba = lcg(&mut x) % blocks;
            if !e.vol.try_read_nowait(lba, &mut buf).unwrap() {
                e.vol.read(lba, &mut buf).unwrap();
            }
        })
    });
    g.bench_function("raw_file", |b| {
        b.iter(|| e.raw.read(lcg(&mut x) % blocks, &mut buf).unwrap())
    });
    g.finish();

    let mut g = c.benchmark_group("read_1m_seq");
    g.throughput(Throughput::Bytes(1 << 20));
    g.sample_size(20).measurement_time(Duration::from_secs(3));
    let mut lba = 0u64;
    g.bench_function("engine", |b| {
        b.iter(|| {
            e.vol.read(lba, &mut big).unwrap();
            lba = (lba + 256) % blocks;
        })
    });
    let mut lba = 0u64;
    g.bench_function("raw_file", |b| {
        b.iter(|| {
            e.raw.read(lba, &mut big).unwrap();
            lba = (lba + 256) % blocks;
        })
    });
    g.finish();
    e.pool.shutdown().unwrap();
}

fn bench_seq_write(c: &mut Criterion) {
    let e = env_sized(true, BIG, 64 << 20, 256 << 20);
    let blocks = BIG / 4096;
    let chunk = data(1 << 20);
    let mut g = c.benchmark_group("write_1m_seq");
    g.throughput(Throughput::Bytes(1 << 20));
    g.sample_size(10).measurement_time(Duration::from_secs(8));
    let mut lba = 0u64;
    g.bench_function("engine", |b| {
        b.iter(|| {
            e.vol.write(lba, &chunk, false).unwrap();
            lba = (lba + 256) % blocks;
        })
    });
    let mut lba = 0u64;
    g.bench_function("raw_file", |b| {
        b.iter(|| {
            e.raw.write(lba, &chunk, false).unwrap();
            lba = (lba + 256) % blocks;
        })
    });
    g.finish();
    let st = e.vol.stats();
    eprintln!(
        "write_1m_seq: throttled {} times, {} segments waiting",
        st.throttled, st.segments_waiting
    );
    e.pool.shutdown().unwrap();
}

criterion_group!(
    benches,
    bench_writes,
    bench_reads,
    bench_big_reads,
    bench_seq_write
);
criterion_main!(benches);
