//! Crash test: a child process runs a verified write workload against a
//! vDisk (two writer threads, FUA and flush-acknowledged writes, 512-byte
//! blocks so sub-cluster writes do read-modify-write, tiny containers so
//! sealing, shipping and tlog deletion happen constantly) and is killed with
//! SIGKILL at a random point. The parent then reopens the pool and checks
//! every block: it must hold the last acknowledged write to it or a later
//! issued one, whole and untorn. Crashes accumulate on one flash directory.
//!
//! A second run (`crash_kill9_in_place_rewrites`) uses 4 KiB blocks and
//! aligned 64–128 KiB writes over a small region with a large write
//! buffer, so most writes are in-place rewrites of unshipped slots.
//!
//! `DEPOT_CRASH_POINTS` sets the number of kills (default 50, and half that
//! for the in-place run).
#![allow(missing_docs)]
// Test code: block counts and offsets of a small test vDisk.
#![allow(clippy::cast_possible_truncation)]

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use depot_block::BlockDevice;
use depot_engine::{VPool, VPoolConfig};

const THREADS: u64 = 2;
const MAGIC: u32 = 0x4450_4354;

/// One workload shape.
#[derive(Clone, Copy)]
struct Mode {
    name: &'static str,
    /// Block size.
    bs: usize,
    /// Blocks per writer thread.
    region: u64,
    /// Write lengths are `unit * (1..=units)` blocks, starting on a
    /// multiple of `unit`.
    unit: u64,
    units: u64,
}

/// 512-byte blocks, 1–16 blocks anywhere: read-modify-write of partial
/// clusters, constant sealing and shipping.
const RMW: Mode = Mode {
    name: "rmw",
    bs: 512,
    region: 1024,
    unit: 1,
    units: 16,
};

/// 4 KiB blocks, 16 or 32 aligned blocks: in-place rewrites.
const IN_PLACE: Mode = Mode {
    name: "in-place",
    bs: 4096,
    region: 256,
    unit: 16,
    units: 2,
};

impl Mode {
    fn from_env() -> Mode {
        match std::env::var("DEPOT_CRASH_MODE").as_deref() {
            Ok("in-place") => IN_PLACE,
            _ => RMW,
        }
    }

    fn config(&self, dir: &Path) -> VPoolConfig {
        let mut c = config(dir);
        c.sync_interval = Duration::from_millis(50);
        if self.name == "rmw" {
            c.container_bytes = 17 * 4096;
            c.write_buffer_bytes = 1 << 20;
            c.keep_shipped_bytes = 32 * 4096;
        } else {
            // 64 slots per container; the 2 MiB working set stays below
            // half the write buffer, so nothing ships on pressure.
            c.container_bytes = 65 * 4096;
            c.write_buffer_bytes = 16 << 20;
            c.keep_shipped_bytes = 1 << 20;
        }
        c
    }
}

fn block(mode: Mode, seq: u64, lba: u64) -> Vec<u8> {
    let mut b = pattern(seq, lba, mode.bs);
    b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    b[4..12].copy_from_slice(&seq.to_le_bytes());
    b[12..20].copy_from_slice(&lba.to_le_bytes());
    b
}

/// The workload, run only in the child (when DEPOT_CRASH_CHILD_DIR is set).
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var("DEPOT_CRASH_CHILD_DIR") else {
        return;
    };
    let seed: u64 = std::env::var("DEPOT_CRASH_SEED").unwrap().parse().unwrap();
    let first_seq: u64 = std::env::var("DEPOT_CRASH_SEQ").unwrap().parse().unwrap();
    let mode = Mode::from_env();
    let (bs, region) = (mode.bs, mode.region);
    let rt = runtime();
    let pool = VPool::open(mode.config(Path::new(&dir)), rt.handle().clone()).unwrap();
    let vol = match pool.open_volume("crash") {
        Ok(v) => v,
        Err(_) => pool
            .create_volume("crash", region * THREADS * bs as u64, bs as u32)
            .unwrap(),
    };
    let out = Arc::new(Mutex::new(std::io::stdout()));
    let say = |out: &Mutex<std::io::Stdout>, s: String| {
        let mut o = out.lock().unwrap();
        o.write_all(s.as_bytes()).unwrap();
        o.flush().unwrap();
    };
    say(&out, "READY\n".into());
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let vol = vol.clone();
            let out = out.clone();
            std::thread::spawn(move || {
                let mut x = seed.wrapping_mul(31).wrapping_add(t + 1) | 1;
                let mut rnd = move || {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x
                };
                let mut seq = first_seq + t;
                let deadline = Instant::now() + Duration::from_secs(30);
                while Instant::now() < deadline {
                    let n = mode.unit * (1 + rnd() % mode.units);
                    let lba = t * region + rnd() % ((region - n) / mode.unit + 1) * mode.unit;
                    let mut data = Vec::with_capacity(n as usize * bs);
                    for b in lba..lba + n {
                        data.extend_from_slice(&block(mode, seq, b));
                    }
                    let fua = rnd() % 4 == 0;
                    say(&out, format!("I {seq} {lba} {n}\n"));
                    vol.write(lba, &data, fua).unwrap();
                    if fua {
                        say(&out, format!("A {seq}\n"));
                    }
                    if rnd() % 8 == 0 {
                        vol.flush().unwrap();
                        say(&out, format!("F {t} {seq}\n"));
                    }
                    if t == 0 && rnd() % 8 == 0 {
                        say(&out, format!("R {}\n", vol.stats().rewritten_clusters));
                    }
                    seq += THREADS;
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[derive(Default, Clone)]
struct BlockModel {
    /// Content seq known durable (0 = zeros).
    acked: u64,
    /// Writes issued since, in order.
    issued: Vec<u64>,
}

#[test]
fn crash_kill9_many_points() {
    crash_kill9(RMW, 50);
}

#[test]
fn crash_kill9_in_place_rewrites() {
    crash_kill9(IN_PLACE, 25);
}

fn crash_kill9(mode: Mode, default_points: u64) {
    let (bs, region) = (mode.bs, mode.region);
    let points: u64 = std::env::var("DEPOT_CRASH_POINTS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(default_points, |p| {
            if mode.name == "rmw" { p } else { p.div_ceil(2) }
        });
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let rt = runtime();
    let mut model: HashMap<u64, BlockModel> = HashMap::new();
    let mut next_seq = 1u64;
    let mut total_acked = 0u64;
    let mut rewritten = 0u64;
    let started = Instant::now();
    for k in 0..points {
        let mut child = Command::new(&exe)
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env("DEPOT_CRASH_CHILD_DIR", dir.path())
            .env("DEPOT_CRASH_SEED", (k + 1).to_string())
            .env("DEPOT_CRASH_SEQ", next_seq.to_string())
            .env("DEPOT_CRASH_MODE", mode.name)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::<String>::new()));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let l2 = lines.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.ends_with("READY") {
                    let _ = ready_tx.send(());
                }
                l2.lock().unwrap().push(line);
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("child did not start");
        let delay = 20 + (k * 7919) % 230;
        std::thread::sleep(Duration::from_millis(delay));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        reader.join().unwrap();
        let lines = std::mem::take(&mut *lines.lock().unwrap());

        // Apply the child's log to the model.
        let mut last_rewritten = 0u64;
        let mut issued: HashMap<u64, (u64, u64)> = HashMap::new();
        let mut thread_issued: HashMap<u64, Vec<u64>> = HashMap::new();
        for line in &lines {
            let f: Vec<&str> = line.split(' ').collect();
            match f.as_slice() {
                ["I", s, l, n] => {
                    let (s, l, n): (u64, u64, u64) =
                        (s.parse().unwrap(), l.parse().unwrap(), n.parse().unwrap());
                    issued.insert(s, (l, n));
                    thread_issued.entry(l / region).or_default().push(s);
                    for b in l..l + n {
                        model.entry(b).or_default().issued.push(s);
                    }
                    next_seq = next_seq.max(s + THREADS);
                }
                ["R", n] => {
                    last_rewritten = n.parse().unwrap();
                }
                ["A", s] => {
                    let s: u64 = s.parse().unwrap();
                    let (l, n) = issued[&s];
                    total_acked += 1;
                    for b in l..l + n {
                        let m = model.get_mut(&b).unwrap();
                        m.acked = m.acked.max(s);
                    }
                }
                ["F", t, s] => {
                    let (t, s): (u64, u64) = (t.parse().unwrap(), s.parse().unwrap());
                    for &w in thread_issued.get(&t).into_iter().flatten() {
                        if w <= s {
                            let (l, n) = issued[&w];
                            total_acked += 1;
                            for b in l..l + n {
                                let m = model.get_mut(&b).unwrap();
                                m.acked = m.acked.max(w);
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        rewritten += last_rewritten;
        // Restart and check every block the workload ever touched.
        let pool = VPool::open(mode.config(dir.path()), rt.handle().clone()).unwrap();
        let vol = match pool.open_volume("crash") {
            Ok(v) => v,
            Err(e) => {
                assert!(model.values().all(|m| m.acked == 0), "volume lost: {e}");
                pool.shutdown().unwrap();
                continue;
            }
        };
        let mut buf = vec![0u8; (region * THREADS) as usize * bs];
        vol.read(0, &mut buf).unwrap();
        for (lba, m) in model.iter_mut() {
            let got = &buf[*lba as usize * bs..(*lba as usize + 1) * bs];
            let seq = if got.iter().all(|b| *b == 0) {
                0
            } else {
                let s = u64::from_le_bytes(got[4..12].try_into().unwrap());
                assert_eq!(
                    got,
                    &block(mode, s, *lba)[..],
                    "crash {k}: block {lba} torn or misplaced"
                );
                s
            };
            let ok = seq == m.acked || (seq > m.acked && m.issued.contains(&seq));
            assert!(
                ok,
                "crash {k} (after {delay} ms): block {lba} holds write {seq}, but write {} was acknowledged",
                m.acked
            );
            m.acked = seq;
            m.issued.clear();
        }
        drop(vol);
        pool.shutdown().unwrap();
    }
    if mode.name == "in-place" {
        assert!(
            rewritten > 0,
            "the in-place workload rewrote nothing in place"
        );
    }
    eprintln!(
        "crash test ({}): {points} kill -9 points, {total_acked} acknowledged writes verified, {} blocks tracked, {rewritten} clusters rewritten in place, {:.1}s",
        mode.name,
        model.len(),
        started.elapsed().as_secs_f64()
    );
}
