//! Crash test: a child process runs a verified write workload against a
//! vDisk (two writer threads, FUA and flush-acknowledged writes, 512-byte
//! blocks so sub-cluster writes do read-modify-write, tiny containers so
//! sealing, shipping and tlog deletion happen constantly) and is killed with
//! SIGKILL at a random point. The parent then reopens the pool and checks
//! every block: it must hold the last acknowledged write to it or a later
//! issued one, whole and untorn. Crashes accumulate on one flash directory.
//!
//! `DEPOT_CRASH_POINTS` sets the number of kills (default 50).
#![allow(missing_docs)]

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

const BS: usize = 512;
const REGION: u64 = 1024; // blocks per writer thread
const THREADS: u64 = 2;
const MAGIC: u32 = 0x4450_4354;

fn crash_config(dir: &Path) -> VPoolConfig {
    let mut c = config(dir);
    c.container_bytes = 17 * 4096;
    c.write_buffer_bytes = 1 << 20;
    c.keep_shipped_bytes = 32 * 4096;
    c.sync_interval = Duration::from_millis(50);
    c
}

fn block(seq: u64, lba: u64) -> Vec<u8> {
    let mut b = pattern(seq, lba, BS);
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
    let rt = runtime();
    let pool = VPool::open(crash_config(Path::new(&dir)), rt.handle().clone()).unwrap();
    let vol = match pool.open_volume("crash") {
        Ok(v) => v,
        Err(_) => pool
            .create_volume("crash", REGION * THREADS * BS as u64, BS as u32)
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
                    let n = 1 + rnd() % 16;
                    let lba = t * REGION + rnd() % (REGION - n);
                    let mut data = Vec::with_capacity(n as usize * BS);
                    for b in lba..lba + n {
                        data.extend_from_slice(&block(seq, b));
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
    let points: u64 = std::env::var("DEPOT_CRASH_POINTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let rt = runtime();
    let mut model: HashMap<u64, BlockModel> = HashMap::new();
    let mut next_seq = 1u64;
    let mut total_acked = 0u64;
    let started = Instant::now();
    for k in 0..points {
        let mut child = Command::new(&exe)
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env("DEPOT_CRASH_CHILD_DIR", dir.path())
            .env("DEPOT_CRASH_SEED", (k + 1).to_string())
            .env("DEPOT_CRASH_SEQ", next_seq.to_string())
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
        let mut issued: HashMap<u64, (u64, u64)> = HashMap::new();
        let mut thread_issued: HashMap<u64, Vec<u64>> = HashMap::new();
        for line in &lines {
            let f: Vec<&str> = line.split(' ').collect();
            match f.as_slice() {
                ["I", s, l, n] => {
                    let (s, l, n): (u64, u64, u64) =
                        (s.parse().unwrap(), l.parse().unwrap(), n.parse().unwrap());
                    issued.insert(s, (l, n));
                    thread_issued.entry(l / REGION).or_default().push(s);
                    for b in l..l + n {
                        model.entry(b).or_default().issued.push(s);
                    }
                    next_seq = next_seq.max(s + THREADS);
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
        // Restart and check every block the workload ever touched.
        let pool = VPool::open(crash_config(dir.path()), rt.handle().clone()).unwrap();
        let vol = match pool.open_volume("crash") {
            Ok(v) => v,
            Err(e) => {
                assert!(model.values().all(|m| m.acked == 0), "volume lost: {e}");
                pool.shutdown().unwrap();
                continue;
            }
        };
        let mut buf = vec![0u8; (REGION * THREADS) as usize * BS];
        vol.read(0, &mut buf).unwrap();
        for (lba, m) in model.iter_mut() {
            let got = &buf[*lba as usize * BS..(*lba as usize + 1) * BS];
            let seq = if got.iter().all(|b| *b == 0) {
                0
            } else {
                let s = u64::from_le_bytes(got[4..12].try_into().unwrap());
                assert_eq!(
                    got,
                    &block(s, *lba)[..],
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
    eprintln!(
        "crash test: {points} kill -9 points, {total_acked} acknowledged writes verified, {} blocks tracked, {:.1}s",
        model.len(),
        started.elapsed().as_secs_f64()
    );
}
