//! How long the pause of a live move takes on the receiving side: a
//! `finish_import` of 1 GiB of unshipped segments, written as 4 KiB random
//! writes and as 1 MiB sequential writes. Prints numbers, asserts no
//! timing. Ignored by default (it writes 2 GiB per case, under
//! `DEPOT_TIMING_DIR` or the temporary directory):
//! `cargo test -p depot-engine --test import_timing -- --ignored --nocapture`.
#![allow(missing_docs)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::grid::Registry;
use common::*;
use depot_block::BlockDevice;
use depot_engine::{HandoverFile, VPool, VPoolConfig};

const GIB: u64 = 1 << 30;

fn cfg(root: &Path, flash: &str) -> VPoolConfig {
    let mut c = VPoolConfig::new(
        "pool",
        depot_engine::BackendConfig::Local {
            path: root.join("backend"),
        },
        root.join(flash),
    );
    // Nothing ships on its own: the whole GiB is handed over.
    c.write_buffer_bytes = 4 * GIB;
    c.keep_shipped_bytes = 0;
    c.read_cache_bytes = 64 << 20;
    c.ship_interval = Duration::from_secs(3600);
    c
}

/// The daemon's receive: copy, and make durable while A still serves.
fn receive(files: &[HandoverFile], dir: &Path) -> u64 {
    let mut n = 0;
    for f in files {
        let to = dir.join(f.file_name());
        if std::fs::metadata(&to).is_ok_and(|m| m.len() == f.len) {
            continue;
        }
        std::fs::copy(&f.path, &to).unwrap();
        std::fs::File::open(&to).unwrap().sync_all().unwrap();
        n += f.len;
    }
    n
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Writes `bytes` to `v`: 4 KiB writes at random clusters, or 1 MiB
/// writes in order from MiB `from`.
fn fill(v: &depot_engine::Volume, random: bool, bytes: u64, seed: u64, from: u64) {
    if random {
        let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ seed;
        let clusters = 4 * GIB / 4096;
        let buf = pattern(seed, 1, 4096);
        for _ in 0..bytes / 4096 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            v.write(x % clusters, &buf, false).unwrap();
        }
    } else {
        let buf = pattern(seed, 2, 1 << 20);
        for i in 0..bytes >> 20 {
            v.write((from + i) << 8, &buf, false).unwrap();
        }
    }
}

fn run(random: bool, apply_early: bool) {
    let rt = runtime();
    let dir =
        tempfile::tempdir_in(std::env::var("DEPOT_TIMING_DIR").unwrap_or(".".into())).unwrap();
    let root = dir.path();
    let reg = Registry::default();
    let pa = VPool::open(cfg(root, "flash-a"), rt.handle().clone()).unwrap();
    let a = pa
        .create_volume_as("big", 4 * GIB, 4096, &reg.grant(1))
        .unwrap();
    let t = Instant::now();
    fill(&a, random, GIB - (64 << 20), 1, 0);
    a.flush().unwrap();
    let written = t.elapsed();
    let pb = VPool::open(cfg(root, "flash-b"), rt.handle().clone()).unwrap();
    let staged = pb.import_dir("big").unwrap();
    let t = Instant::now();
    let pre = a.handover_precopy().unwrap();
    let pre_bytes = receive(&pre, &staged);
    let precopy = t.elapsed();
    let t = Instant::now();
    let mut prep = pb.prepare_import("big", &reg.owner(2)).unwrap();
    let prepare = t.elapsed();
    let t = Instant::now();
    let applied = if apply_early {
        pb.import_precopied(&mut prep, &pre, &staged).unwrap()
    } else {
        0
    };
    let precheck = t.elapsed();
    // A serves on: 64 MiB more before the pause.
    fill(&a, random, 64 << 20, 2, 2048);
    // The pause.
    let t0 = Instant::now();
    let state = a.handover_freeze().unwrap();
    let freeze = t0.elapsed();
    let t = Instant::now();
    let rest = receive(&state.files, &staged);
    let copy = t.elapsed();
    reg.set(2);
    let t = Instant::now();
    let b = pb.finish_import(prep, &state, &staged).unwrap();
    let finish = t.elapsed();
    let pause = t0.elapsed();
    let mut buf = vec![0u8; 4096];
    b.read(0, &mut buf).unwrap();
    println!(
        "{}: {} MiB unshipped in {} files ({} records); written in {:.1} s; \
         precopy of the first 960 MiB {:.0} ms ({} MiB); prepare_import {:.0} ms; import_precopied {:.0} ms ({} tlogs); \
         then 64 MiB more written; freeze {:.1} ms; copy of the rest {:.1} ms ({} KiB); \
         finish_import {:.0} ms; pause (freeze + copy + finish) {:.0} ms",
        match (random, apply_early) {
            (true, true) => "4 KiB random writes, precopied segments applied before the pause",
            (true, false) => "4 KiB random writes, everything applied in the pause",
            (false, true) => "1 MiB sequential writes, precopied segments applied before the pause",
            (false, false) => "1 MiB sequential writes, everything applied in the pause",
        },
        state.bytes() >> 20,
        state.files.len(),
        state
            .files
            .iter()
            .filter(|f| f.kind == depot_engine::HandoverFileKind::Tlog)
            .map(|f| (f.len - 64) / 64)
            .sum::<u64>(),
        written.as_secs_f64(),
        ms(precopy),
        pre_bytes >> 20,
        ms(prepare),
        ms(precheck),
        applied,
        ms(freeze),
        ms(copy),
        rest >> 10,
        ms(finish),
        ms(pause),
    );
    pb.abandon();
    pa.abandon();
}

#[test]
#[ignore = "writes 2 GiB; run by hand with --ignored --nocapture"]
fn finish_import_of_1gib_of_4k_random_writes() {
    run(true, true);
    run(true, false);
}

#[test]
#[ignore = "writes 2 GiB; run by hand with --ignored --nocapture"]
fn finish_import_of_1gib_of_1mib_sequential_writes() {
    run(false, true);
    run(false, false);
}
