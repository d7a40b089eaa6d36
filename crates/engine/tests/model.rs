//! Model-based property test: random sequences of writes, reads, unmaps,
//! flushes, snapshots, snapshot deletes, rollbacks, clones, restarts (clean,
//! crash-after-flush, and from the backend alone) and scrubs, checked against
//! a simple in-memory model of every vDisk. A third property runs a mix
//! heavy in whole-volume writes with containers large enough for them to
//! be rewritten in place. `DEPOT_MODEL_CASES` raises the number of cases
//! (default 12 in CI).
#![allow(missing_docs)]
// Test code: block offsets of a small model vDisk.
#![allow(clippy::cast_possible_truncation)]

mod common;

use std::sync::Arc;

use common::*;
use depot_block::{BlockDevice, Provisioning};
use depot_engine::{EngineError, VPool, VPoolConfig};
use proptest::prelude::*;

const BS: usize = 512;
const BLOCKS: u64 = 128; // 64 KiB, 16 clusters
const CLUSTERS: usize = 16;

#[derive(Debug, Clone)]
enum Op {
    Write {
        vol: u8,
        lba: u64,
        n: u64,
        seed: u32,
        fua: bool,
    },
    Read {
        vol: u8,
        lba: u64,
        n: u64,
    },
    Unmap {
        vol: u8,
        lba: u64,
        n: u64,
    },
    Status {
        vol: u8,
        lba: u64,
    },
    Flush {
        vol: u8,
    },
    Snapshot {
        vol: u8,
    },
    DeleteSnapshot {
        vol: u8,
        snap: u8,
    },
    Rollback {
        vol: u8,
        snap: u8,
    },
    Clone {
        vol: u8,
        snap: u8,
    },
    Restart,
    CrashAfterFlush,
    /// Snapshot every vDisk, then crash: a snapshot is a hard barrier but
    /// leaves the index commit to later, so replay must file the records
    /// under the generations their tlogs carry.
    CrashAfterSnapshots,
    RestartFromBackend,
    Scrub,
}

fn op() -> impl Strategy<Value = Op> {
    let lba_n = (0..BLOCKS).prop_flat_map(|lba| (Just(lba), 1..=(BLOCKS - lba).min(24)));
    // Long runs: multi-cluster writes land in consecutive container slots
    // and long reads coalesce them (and cross containers, holes, clones).
    let long = (0..BLOCKS).prop_flat_map(|lba| (Just(lba), 1..=BLOCKS - lba));
    prop_oneof![
        12 => (any::<u8>(), lba_n.clone(), any::<u32>(), any::<bool>())
            .prop_map(|(vol, (lba, n), seed, fua)| Op::Write { vol, lba, n, seed, fua }),
        3 => (any::<u8>(), long.clone(), any::<u32>())
            .prop_map(|(vol, (lba, n), seed)| Op::Write { vol, lba, n, seed, fua: false }),
        6 => (any::<u8>(), lba_n.clone()).prop_map(|(vol, (lba, n))| Op::Read { vol, lba, n }),
        3 => (any::<u8>(), long).prop_map(|(vol, (lba, n))| Op::Read { vol, lba, n }),
        3 => (any::<u8>(), lba_n).prop_map(|(vol, (lba, n))| Op::Unmap { vol, lba, n }),
        2 => (any::<u8>(), 0..BLOCKS).prop_map(|(vol, lba)| Op::Status { vol, lba }),
        1 => any::<u8>().prop_map(|vol| Op::Flush { vol }),
        3 => any::<u8>().prop_map(|vol| Op::Snapshot { vol }),
        1 => (any::<u8>(), any::<u8>()).prop_map(|(vol, snap)| Op::DeleteSnapshot { vol, snap }),
        2 => (any::<u8>(), any::<u8>()).prop_map(|(vol, snap)| Op::Rollback { vol, snap }),
        2 => (any::<u8>(), any::<u8>()).prop_map(|(vol, snap)| Op::Clone { vol, snap }),
        1 => Just(Op::Restart),
        1 => Just(Op::CrashAfterFlush),
        1 => Just(Op::CrashAfterSnapshots),
        1 => Just(Op::RestartFromBackend),
        1 => Just(Op::Scrub),
    ]
}

/// Rewrite-heavy mix: whole-volume (16-cluster, aligned) writes, which go
/// in place while their slots are mutable, among everything else.
fn rewrite_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (any::<u8>(), any::<u32>(), 0..8u8)
            .prop_map(|(vol, seed, f)| Op::Write { vol, lba: 0, n: BLOCKS, seed, fua: f == 0 }),
        4 => op(),
    ]
}

/// Admin-heavy mix: few I/Os, many snapshots, clones, rollbacks, deletes,
/// restarts and scrubs.
fn admin_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (any::<u8>(), 0..BLOCKS - 8, any::<u32>())
            .prop_map(|(vol, lba, seed)| Op::Write { vol, lba, n: 8, seed, fua: false }),
        1 => (any::<u8>(), 0..BLOCKS - 8).prop_map(|(vol, lba)| Op::Unmap { vol, lba, n: 8 }),
        3 => any::<u8>().prop_map(|vol| Op::Snapshot { vol }),
        2 => (any::<u8>(), any::<u8>()).prop_map(|(vol, snap)| Op::DeleteSnapshot { vol, snap }),
        2 => (any::<u8>(), any::<u8>()).prop_map(|(vol, snap)| Op::Rollback { vol, snap }),
        3 => (any::<u8>(), any::<u8>()).prop_map(|(vol, snap)| Op::Clone { vol, snap }),
        1 => Just(Op::Restart),
        1 => Just(Op::CrashAfterFlush),
        1 => Just(Op::CrashAfterSnapshots),
        2 => Just(Op::RestartFromBackend),
        2 => Just(Op::Scrub),
    ]
}

#[derive(Clone)]
struct Image {
    data: Vec<u8>,
    mapped: [bool; CLUSTERS],
}

struct ModelVol {
    name: String,
    img: Image,
    snaps: Vec<(String, Image)>,
}

struct Model {
    vols: Vec<ModelVol>,
    /// (parent index, snapshot name) of every clone.
    deps: Vec<(usize, String)>,
    next: u32,
}

fn bytes(seed: u32, lba: u64, n: u64) -> Vec<u8> {
    pattern(u64::from(seed), lba, (n as usize) * BS)
}

struct Harness {
    rt: tokio::runtime::Runtime,
    cfg: VPoolConfig,
    pool: Option<Arc<VPool>>,
    dir: tempfile::TempDir,
}

impl Harness {
    fn pool(&self) -> &Arc<VPool> {
        self.pool.as_ref().unwrap()
    }
    fn vol(&self, name: &str) -> Arc<depot_engine::Volume> {
        self.pool().open_volume(name).unwrap()
    }
    fn reopen(&mut self, wipe: bool) {
        if let Some(p) = self.pool.take() {
            p.abandon();
        }
        if wipe {
            std::fs::remove_dir_all(flash(self.dir.path())).unwrap();
        }
        self.pool = Some(VPool::open(self.cfg.clone(), self.rt.handle().clone()).unwrap());
    }
}

/// Clusters rewritten in place by the open vDisks (counts restart at
/// every reopen).
fn rewritten(h: &Harness, m: &Model) -> u64 {
    m.vols
        .iter()
        .map(|v| h.vol(&v.name).stats().rewritten_clusters)
        .sum()
}

/// Runs `ops` with containers of `slots` slots; returns how many clusters
/// were rewritten in place.
fn run(ops: Vec<Op>, slots: u64) -> Result<u64, TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.container_bytes = (slots + 1) * 4096;
    cfg.write_buffer_bytes = 1 << 20;
    cfg.keep_shipped_bytes = 16 * 4096;
    let rt = runtime();
    let pool = VPool::open(cfg.clone(), rt.handle().clone()).unwrap();
    let mut h = Harness {
        rt,
        cfg,
        pool: Some(pool),
        dir,
    };
    h.pool()
        .create_volume("v0", BLOCKS * BS as u64, BS as u32)
        .unwrap();
    let mut total_rewritten = 0;
    let mut m = Model {
        vols: vec![ModelVol {
            name: "v0".into(),
            img: Image {
                data: vec![0; BLOCKS as usize * BS],
                mapped: [false; CLUSTERS],
            },
            snaps: vec![],
        }],
        deps: vec![],
        next: 0,
    };
    for op in ops {
        match op {
            Op::Write {
                vol,
                lba,
                n,
                seed,
                fua,
            } => {
                let i = vol as usize % m.vols.len();
                let d = bytes(seed, lba, n);
                let v = h.vol(&m.vols[i].name);
                // The seed picks the path: `write`; the non-blocking append
                // (non-FUA), falling back to `write` when it declines; or
                // `write_vectored` with the data cut at two byte offsets.
                match seed % 4 {
                    1 | 3 if !fua && v.try_write_nowait(lba, &d).unwrap() => {}
                    2 => {
                        let a = (seed as usize >> 2) % (d.len() + 1);
                        let b = a + (seed as usize >> 12) % (d.len() - a + 1);
                        v.write_vectored(lba, &[&d[..a], &d[a..b], &d[b..]], fua)
                            .unwrap();
                    }
                    _ => v.write(lba, &d, fua).unwrap(),
                }
                let img = &mut m.vols[i].img;
                img.data[lba as usize * BS..(lba + n) as usize * BS].copy_from_slice(&d);
                for b in lba..lba + n {
                    img.mapped[(b as usize * BS) / 4096] = true;
                }
            }
            Op::Read { vol, lba, n } => {
                let i = vol as usize % m.vols.len();
                let mut buf = vec![0u8; n as usize * BS];
                let v = h.vol(&m.vols[i].name);
                v.read(lba, &mut buf).unwrap();
                let want = &m.vols[i].img.data[lba as usize * BS..(lba + n) as usize * BS];
                prop_assert_eq!(&buf[..], want);
                // The same read without waiting: it may decline, but if it
                // completes it must return the same bytes.
                buf.fill(0xA5);
                if v.try_read_nowait(lba, &mut buf).unwrap() {
                    prop_assert_eq!(&buf[..], want, "try_read_nowait at {} +{}", lba, n);
                }
            }
            Op::Unmap { vol, lba, n } => {
                let i = vol as usize % m.vols.len();
                h.vol(&m.vols[i].name).unmap(lba, n).unwrap();
                let img = &mut m.vols[i].img;
                img.data[lba as usize * BS..(lba + n) as usize * BS].fill(0);
                for c in 0..CLUSTERS {
                    let (cs, ce) = (c as u64 * 8, c as u64 * 8 + 8);
                    if lba <= cs && lba + n >= ce {
                        img.mapped[c] = false;
                    }
                }
            }
            Op::Status { vol, lba } => {
                let i = vol as usize % m.vols.len();
                let (st, run) = h.vol(&m.vols[i].name).provisioning(lba, BLOCKS).unwrap();
                let c = (lba / 8) as usize;
                let want = if m.vols[i].img.mapped[c] {
                    Provisioning::Mapped
                } else {
                    Provisioning::Deallocated
                };
                prop_assert_eq!(st, want, "cluster {}", c);
                prop_assert!(run >= 1 && lba + run <= BLOCKS);
                let end_c = ((lba + run - 1) / 8) as usize;
                for cc in c..=end_c {
                    prop_assert_eq!(m.vols[i].img.mapped[cc], m.vols[i].img.mapped[c]);
                }
            }
            Op::Flush { vol } => {
                let i = vol as usize % m.vols.len();
                h.vol(&m.vols[i].name).flush().unwrap();
            }
            Op::Snapshot { vol } => {
                let i = vol as usize % m.vols.len();
                m.next += 1;
                let name = format!("s{}", m.next);
                h.vol(&m.vols[i].name).create_snapshot(&name).unwrap();
                let img = m.vols[i].img.clone();
                m.vols[i].snaps.push((name, img));
            }
            Op::DeleteSnapshot { vol, snap } => {
                let i = vol as usize % m.vols.len();
                if m.vols[i].snaps.is_empty() {
                    continue;
                }
                let s = snap as usize % m.vols[i].snaps.len();
                let name = m.vols[i].snaps[s].0.clone();
                let r = h.vol(&m.vols[i].name).delete_snapshot(&name);
                if m.deps.iter().any(|(p, n)| *p == i && *n == name) {
                    prop_assert!(matches!(r, Err(EngineError::HasClones(_))));
                } else {
                    r.unwrap();
                    m.vols[i].snaps.remove(s);
                }
            }
            Op::Rollback { vol, snap } => {
                let i = vol as usize % m.vols.len();
                if m.vols[i].snaps.is_empty() {
                    continue;
                }
                let s = snap as usize % m.vols[i].snaps.len();
                let name = m.vols[i].snaps[s].0.clone();
                let r = h.vol(&m.vols[i].name).rollback(&name);
                let later_has_clone = m.vols[i].snaps[s + 1..]
                    .iter()
                    .any(|(n, _)| m.deps.iter().any(|(p, dn)| *p == i && dn == n));
                if later_has_clone {
                    prop_assert!(matches!(r, Err(EngineError::HasClones(_))));
                } else {
                    r.unwrap();
                    m.vols[i].img = m.vols[i].snaps[s].1.clone();
                    m.vols[i].snaps.truncate(s + 1);
                }
            }
            Op::Clone { vol, snap } => {
                let i = vol as usize % m.vols.len();
                if m.vols[i].snaps.is_empty() || m.vols.len() >= 5 {
                    continue;
                }
                let s = snap as usize % m.vols[i].snaps.len();
                let (sname, img) = m.vols[i].snaps[s].clone();
                m.next += 1;
                let name = format!("c{}", m.next);
                h.pool()
                    .clone_volume(&m.vols[i].name, Some(&sname), &name)
                    .unwrap();
                m.deps.push((i, sname));
                m.vols.push(ModelVol {
                    name,
                    img,
                    snaps: vec![],
                });
            }
            Op::Restart => {
                total_rewritten += rewritten(&h, &m);
                if let Some(p) = h.pool.take() {
                    p.shutdown().unwrap();
                }
                h.reopen(false);
            }
            Op::CrashAfterFlush => {
                total_rewritten += rewritten(&h, &m);
                for v in &m.vols {
                    h.vol(&v.name).flush().unwrap();
                }
                h.reopen(false);
            }
            Op::CrashAfterSnapshots => {
                total_rewritten += rewritten(&h, &m);
                for v in &mut m.vols {
                    m.next += 1;
                    let name = format!("s{}", m.next);
                    h.vol(&v.name).create_snapshot(&name).unwrap();
                    v.snaps.push((name, v.img.clone()));
                }
                h.reopen(false);
                // Each new snapshot reads back through a throwaway clone.
                for v in &m.vols {
                    let Some((sname, img)) = v.snaps.last() else {
                        continue;
                    };
                    let c = h
                        .pool()
                        .clone_volume(&v.name, Some(sname), "check")
                        .unwrap();
                    let mut buf = vec![0u8; BLOCKS as usize * BS];
                    c.read(0, &mut buf).unwrap();
                    drop(c);
                    h.pool().delete_volume("check").unwrap();
                    prop_assert!(buf == img.data, "snapshot {} of {}", sname, v.name);
                }
            }
            Op::RestartFromBackend => {
                total_rewritten += rewritten(&h, &m);
                for v in &m.vols {
                    h.vol(&v.name).sync_to_backend().unwrap();
                }
                h.reopen(true);
            }
            Op::Scrub => {
                let r = h.pool().scrub().unwrap();
                prop_assert!(r.errors.is_empty(), "{:?}", r);
            }
        }
    }
    total_rewritten += rewritten(&h, &m);
    // Final full comparison, then once more after a restart from the backend.
    for round in 0..2 {
        for v in &m.vols {
            let vol = h.vol(&v.name);
            let mut buf = vec![0u8; BLOCKS as usize * BS];
            vol.read(0, &mut buf).unwrap();
            prop_assert!(buf == v.img.data, "round {} volume {}", round, v.name);
            let names: Vec<String> = vol.list_snapshots().into_iter().map(|s| s.name).collect();
            let want: Vec<String> = v.snaps.iter().map(|(n, _)| n.clone()).collect();
            prop_assert_eq!(names, want);
            if round == 0 {
                vol.sync_to_backend().unwrap();
            }
        }
        h.reopen(true);
    }
    if let Some(p) = h.pool.take() {
        p.shutdown().unwrap();
    }
    Ok(total_rewritten)
}

fn cases() -> u32 {
    std::env::var("DEPOT_MODEL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12)
}

/// The properties' settings: `n` cases, bounded shrinking, no files.
fn settings(n: u32) -> ProptestConfig {
    ProptestConfig {
        cases: n,
        max_shrink_iters: 200,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(settings(cases()))]

    #[test]
    fn engine_matches_model(ops in proptest::collection::vec(op(), 1..60)) {
        run(ops, 8)?; // 8 slots: lots of sealing and shipping
    }
}

proptest! {
    #![proptest_config(settings(cases() / 2))]

    #[test]
    fn admin_heavy_sequences_match_model(ops in proptest::collection::vec(admin_op(), 1..40)) {
        run(ops, 8)?;
    }
}

proptest! {
    #![proptest_config(settings(cases() / 2))]

    #[test]
    fn rewrite_heavy_sequences_match_model(ops in proptest::collection::vec(rewrite_op(), 1..60)) {
        run(ops, 40)?;
    }
}

/// The rewrite-heavy configuration really rewrites in place (so the
/// property above tests that path).
#[test]
fn whole_volume_rewrites_go_in_place_in_the_model_config() {
    let w = |seed| Op::Write {
        vol: 0,
        lba: 0,
        n: BLOCKS,
        seed,
        fua: false,
    };
    let ops = vec![w(1), w(2), w(3), Op::Flush { vol: 0 }, w(4), w(5)];
    assert_eq!(run(ops, 40).unwrap(), 3 * 16);
}
