//! Restart of a large vDisk from its backend alone (the SCALE target: a
//! 100 GiB vDisk back in under 10 s), and how that time scales with the
//! number of index entries.
//!
//! Not a criterion loop: one setup costs minutes of writing, so this is a
//! plain program (`harness = false`) that prints one table row per stage.
//! Each stage writes more data into the same vDisk through the engine,
//! scrubs (which uploads an index checkpoint and folds the tlogs into it),
//! shuts the vPool down, deletes the whole flash directory (index, read
//! cache, containers, tlogs), opens a new vPool on a fresh flash directory
//! over the same backend, and times `open_volume` up to the return of the
//! first 4 KiB read. That restored vPool is the one the next stage writes
//! through. After each restart a sample of written clusters is read back and
//! compared, so a fast but wrong restore fails loudly.
//!
//! Run: `cargo bench -p depot-benches --bench restart` (defaults below), or
//! with `DEPOT_RESTART_SIZE_GIB` (vDisk size, 100), `DEPOT_RESTART_SPREAD`
//! (4 KiB writes spread evenly over the whole vDisk in stage 1, 262144),
//! `DEPOT_RESTART_SEQ_MIB` (sequential MiB added by each later stage, 1024),
//! `DEPOT_RESTART_STAGES` (total stages, 4), `DEPOT_RESTART_FULL` (1: a last
//! row restores an index mapping every cluster, see `full_index_restart`),
//! `DEPOT_BENCH_DIR` (where the flash and backend directories go, /tmp).
#![allow(missing_docs)]
// Benchmark code: cluster counts of a benchmark vDisk.
#![allow(clippy::cast_possible_truncation)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use depot_block::BlockDevice;
use depot_engine::{BackendConfig, VPool, VPoolConfig, Volume};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Cluster contents: a function of the cluster number and the stage that
/// wrote it, so a read-back check knows what to expect.
fn pattern(cluster: u64, stage: u64, out: &mut [u8]) {
    for (i, c) in out.chunks_mut(8).enumerate() {
        let x = (cluster << 8 | stage).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ i as u64;
        c.copy_from_slice(&x.to_le_bytes()[..c.len()]);
    }
}

fn pool_config(backend: &Path, flash: PathBuf) -> VPoolConfig {
    VPoolConfig::new(
        "restart",
        BackendConfig::Local {
            path: backend.to_path_buf(),
        },
        flash,
    )
}

fn dir_bytes(p: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(p) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            _ => e.metadata().map(|m| m.len()).unwrap_or(0),
        })
        .sum()
}

/// (entries, bytes) of the newest checkpoint object under `backend`.
fn checkpoint_info(backend: &Path) -> (u64, u64) {
    fn walk(p: &Path, best: &mut Option<(std::time::SystemTime, PathBuf)>) {
        let Ok(rd) = std::fs::read_dir(p) else { return };
        for e in rd.flatten() {
            let path = e.path();
            if path.is_dir() {
                walk(&path, best);
            } else if path.parent().is_some_and(|d| d.ends_with("ckpt"))
                && let Ok(m) = e.metadata().and_then(|m| m.modified())
                && best.as_ref().is_none_or(|(t, _)| m > *t)
            {
                *best = Some((m, path));
            }
        }
    }
    let mut best = None;
    walk(backend, &mut best);
    let Some((_, path)) = best else { return (0, 0) };
    let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let mut hdr = [0u8; 64];
    if let Ok(f) = std::fs::File::open(&path) {
        use std::os::unix::fs::FileExt;
        let _ = f.read_exact_at(&mut hdr, 0);
    }
    let mut n = [0u8; 8];
    n.copy_from_slice(&hdr[32..40]);
    (u64::from_le_bytes(n), len)
}

struct Written {
    /// (cluster, stage) samples to read back.
    samples: Vec<(u64, u64)>,
    bytes: u64,
}

fn write_stage(vol: &Volume, stage: u64, spread: u64, seq_mib: u64, w: &mut Written) {
    let clusters = vol.num_blocks() * u64::from(vol.block_size()) / 4096;
    let mut buf = vec![0u8; 4096];
    if stage == 1 {
        // Evenly spaced over the whole vDisk, so the index spans all of it.
        let step = clusters / spread.max(1);
        for i in 0..spread {
            let c = i * step + (i * 7) % step.max(1);
            pattern(c, stage, &mut buf);
            vol.write(c, &buf, false).unwrap();
            if i % 4099 == 0 {
                w.samples.push((c, stage));
            }
        }
        w.bytes += spread * 4096;
    } else {
        // Sequential 1 MiB writes after what earlier stages wrote sequentially.
        let first = (stage - 2) * seq_mib * 256;
        let mut mib = vec![0u8; 1 << 20];
        for m in 0..seq_mib {
            let c0 = first + m * 256;
            for (k, chunk) in mib.chunks_mut(4096).enumerate() {
                pattern(c0 + k as u64, stage, chunk);
            }
            vol.write(c0, &mib, false).unwrap();
            if m % 97 == 0 {
                w.samples.push((c0 + m % 256, stage));
            }
        }
        // Spread clusters this stage overwrote now read as this stage's data.
        let range = first..first + seq_mib * 256;
        w.samples.retain(|(c, s)| *s == stage || !range.contains(c));
        w.bytes += seq_mib << 20;
    }
}

/// A restore from the backend alone, timed.
struct Restored {
    pool: Arc<VPool>,
    vol: Arc<Volume>,
    open_ms: f64,
    first_read_ms: f64,
    /// Bytes the process's high-water RSS grew by during the restore.
    peak: u64,
}

/// Opens a pool on the empty `flash` over `backend` and the vDisk "big"
/// (restored from the backend), timing the pool open and the volume open
/// plus its first read; then checks every sample of `written` reads back.
fn restore_and_verify(
    rt: &tokio::runtime::Runtime,
    backend: &Path,
    flash: PathBuf,
    written: &Written,
    what: &str,
) -> Restored {
    let rss0 = vm_hwm_reset();
    let t = Instant::now();
    let pool = VPool::open(pool_config(backend, flash), rt.handle().clone()).unwrap();
    let open_ms = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    let vol = pool.open_volume("big").expect("restore from the backend");
    let mut buf = vec![0u8; 4096];
    let (c, _) = written.samples[written.samples.len() / 2];
    vol.read(c, &mut buf).unwrap();
    let first_read_ms = t.elapsed().as_secs_f64() * 1e3;
    let peak = vm_hwm().saturating_sub(rss0.min(vm_hwm()));
    let mut want = vec![0u8; 4096];
    for &(c, s) in &written.samples {
        vol.read(c, &mut buf).unwrap();
        pattern(c, s, &mut want);
        assert!(
            buf == want,
            "cluster {c} (stage {s}) read back wrong after {what}"
        );
    }
    Restored {
        pool,
        vol,
        open_ms,
        first_read_ms,
        peak,
    }
}

fn main() {
    let size_gib = env_u64("DEPOT_RESTART_SIZE_GIB", 100);
    let spread = env_u64("DEPOT_RESTART_SPREAD", 262_144);
    let seq_mib = env_u64("DEPOT_RESTART_SEQ_MIB", 1024);
    let stages = env_u64("DEPOT_RESTART_STAGES", 4).max(1);
    let rt = common::runtime();
    let dir = common::scratch_dir();
    let backend = dir.path().join("backend");
    let mut flash_n = 0;
    let mut flash = dir.path().join(format!("flash{flash_n}"));
    let mut pool = VPool::open(pool_config(&backend, flash.clone()), rt.handle().clone()).unwrap();
    let mut vol = pool
        .create_volume("big", size_gib << 30, 4096)
        .expect("create the vDisk");
    let mut written = Written {
        samples: Vec::new(),
        bytes: 0,
    };
    println!(
        "vDisk {size_gib} GiB, 4 KiB blocks; stage 1 = {spread} x 4 KiB spread over the whole vDisk, \
         each later stage + {seq_mib} MiB sequential"
    );
    println!(
        "| stage | data written (GiB) | index entries | checkpoint MiB | write s | scrub s | pool open ms | open_volume + first read ms | RSS growth during restore MiB |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for stage in 1..=stages {
        let t = Instant::now();
        write_stage(&vol, stage, spread, seq_mib, &mut written);
        vol.sync_to_backend().unwrap();
        let write_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let rep = pool.scrub().unwrap();
        assert!(rep.errors.is_empty(), "scrub: {:?}", rep.errors);
        assert!(rep.checkpoints_written >= 1, "scrub wrote no checkpoint");
        let scrub_s = t.elapsed().as_secs_f64();
        let (entries, ck_bytes) = checkpoint_info(&backend);
        drop(vol);
        pool.shutdown().unwrap();
        drop(pool);
        // Lose the flash: index, read cache, containers and tlogs.
        let flash_before = dir_bytes(&flash);
        std::fs::remove_dir_all(&flash).unwrap();
        flash_n += 1;
        flash = dir.path().join(format!("flash{flash_n}"));
        let r = restore_and_verify(&rt, &backend, flash.clone(), &written, "restore");
        (pool, vol) = (r.pool, r.vol);
        println!(
            "| {stage} | {:.2} | {entries} | {:.1} | {write_s:.1} | {scrub_s:.1} | {:.0} | {:.0} | {} |",
            written.bytes as f64 / f64::from(1 << 30),
            ck_bytes as f64 / f64::from(1 << 20),
            r.open_ms,
            r.first_read_ms,
            r.peak >> 20,
        );
        eprintln!(
            "stage {stage}: flash before the wipe {} MiB, {} samples verified",
            flash_before >> 20,
            written.samples.len()
        );
    }
    if env_u64("DEPOT_RESTART_FULL", 1) == 1 {
        let id = vol.id();
        drop(vol);
        pool.shutdown().unwrap();
        drop(pool);
        full_index_restart(&rt, &backend, dir.path(), id, size_gib, &written);
    } else {
        drop(vol);
        pool.shutdown().unwrap();
    }
}

/// The fully written case without writing 100 GiB: replaces the vDisk's
/// checkpoint on the backend with one that maps *every* cluster (real
/// entries kept; every other cluster points at the location of a real entry,
/// as deduplicated data would), then restores from that. The index load
/// does not depend on what the data is, only on the number of entries.
fn full_index_restart(
    rt: &tokio::runtime::Runtime,
    backend: &Path,
    root: &Path,
    id: u64,
    size_gib: u64,
    written: &Written,
) {
    use depot_engine::backend::{checkpoint_key, manifest_key};
    use depot_engine::format::{CheckpointEntry, decode_checkpoint, encode_checkpoint};
    let obj = |key: &str| backend.join("restart").join(key);
    // The manifest is JSON; only the checkpoint reference changes.
    let manifest = std::fs::read_to_string(obj(&manifest_key(id))).unwrap();
    let field = |name: &str| -> &str {
        let at = manifest.find(name).expect("manifest field") + name.len();
        let rest = &manifest[at..];
        &rest[..rest.find(']').expect("manifest field end") + 1]
    };
    let ckpt = field("\"checkpoint\":");
    assert_eq!(field("\"tlogs\":"), "[]", "tlogs after the checkpoint");
    let (ck, cut) = ckpt
        .trim_matches(|c| c == '[' || c == ']')
        .split_once(',')
        .map(|(a, b)| (a.parse::<u64>().unwrap(), b.parse::<u64>().unwrap()))
        .expect("checkpoint reference");
    let (_, _, real) =
        decode_checkpoint(&std::fs::read(obj(&checkpoint_key(id, ck))).unwrap()).unwrap();
    let generation = real[0].generation;
    let clusters = size_gib << 18;
    let mut full = Vec::with_capacity(clusters as usize);
    let mut r = real.iter().peekable();
    for c in 0..clusters {
        match r.peek() {
            Some(e) if e.cluster == c => {
                full.push(**e);
                r.next();
            }
            _ => full.push(CheckpointEntry {
                cluster: c,
                generation,
                mapping: real[(c as usize) % real.len()].mapping,
            }),
        }
    }
    let body = encode_checkpoint(id, cut, &full);
    drop(full);
    let ck_bytes = body.len() as u64;
    std::fs::write(obj(&checkpoint_key(id, ck + 1)), &body).unwrap();
    drop(body);
    std::fs::remove_file(obj(&checkpoint_key(id, ck))).unwrap();
    let manifest = manifest.replacen(
        &format!("\"checkpoint\":{ckpt}"),
        &format!("\"checkpoint\":[{},{cut}]", ck + 1),
        1,
    );
    std::fs::write(obj(&manifest_key(id)), manifest).unwrap();

    let r = restore_and_verify(
        rt,
        backend,
        root.join("flash-full"),
        written,
        "the full restore",
    );
    // A synthesized cluster reads what its borrowed location holds.
    let mut buf = vec![0u8; 4096];
    r.vol.read(clusters - 1, &mut buf).unwrap();
    println!(
        "| full | (index of a fully written vDisk, synthesized) | {clusters} | {:.1} | - | - | {:.0} | {:.0} | {} |",
        ck_bytes as f64 / f64::from(1 << 20),
        r.open_ms,
        r.first_read_ms,
        r.peak >> 20,
    );
    drop(r.vol);
    r.pool.shutdown().unwrap();
}

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Resets the peak-RSS watermark (Linux ≥ 4.0: write 5 to clear_refs) and
/// returns the current RSS in bytes.
fn vm_hwm_reset() -> u64 {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    status_kib("VmRSS:") << 10
}

fn vm_hwm() -> u64 {
    status_kib("VmHWM:") << 10
}
