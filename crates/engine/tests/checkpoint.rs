//! Background index checkpoints (`VPoolConfig::checkpoint_tlogs`): once
//! enough tlogs are shipped after the last checkpoint, a checkpoint folds
//! them, and a restart from the backend alone reads the same data.

mod common;

use common::*;
use depot_block::BlockDevice;

fn tlogs_on_backend(root: &std::path::Path) -> usize {
    fn walk(p: &std::path::Path, n: &mut usize) {
        let Ok(rd) = std::fs::read_dir(p) else { return };
        for e in rd.flatten() {
            let path = e.path();
            if path.is_dir() {
                walk(&path, n);
            } else if path.parent().is_some_and(|d| d.ends_with("tlog")) {
                *n += 1;
            }
        }
    }
    let mut n = 0;
    walk(&root.join("backend"), &mut n);
    n
}

#[test]
fn checkpoint_when_due_folds_tlogs_and_restores() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.checkpoint_tlogs = 4;
    let pool = open(&cfg, &rt);
    let v = pool.create_volume("c", 8 << 20, 4096).unwrap();
    // Below the threshold: nothing to do.
    for i in 0..63u64 {
        v.write(i, &pattern(i, 1, 4096), false).unwrap();
    }
    v.sync_to_backend().unwrap();
    assert_eq!(pool.checkpoint_if_due().unwrap(), 0);
    // Six full containers, each sealing a tlog.
    for i in 0..6 * 63u64 {
        v.write(i, &pattern(i, 2, 4096), false).unwrap();
    }
    v.unmap(20, 1).unwrap();
    v.sync_to_backend().unwrap();
    let before = tlogs_on_backend(dir.path());
    assert!(before >= 4, "{before} tlogs shipped");
    // (The background checkpointer may have got there first on a slow run.)
    assert!(pool.checkpoint_if_due().unwrap() <= 1);
    assert!(tlogs_on_backend(dir.path()) < before);
    assert_eq!(pool.checkpoint_if_due().unwrap(), 0);
    // Writes after the checkpoint ride on tlogs after it.
    for i in 0..10u64 {
        v.write(i, &pattern(i, 3, 4096), false).unwrap();
    }
    v.sync_to_backend().unwrap();
    pool.abandon();
    drop((v, pool));
    std::fs::remove_dir_all(flash(dir.path())).unwrap();
    let pool = open(&cfg, &rt);
    let v = pool.open_volume("c").unwrap();
    let mut buf = vec![0u8; 4096];
    for i in 0..6 * 63u64 {
        v.read(i, &mut buf).unwrap();
        let want = match i {
            20 => vec![0u8; 4096],
            0..10 => pattern(i, 3, 4096),
            _ => pattern(i, 2, 4096),
        };
        assert_eq!(buf, want, "cluster {i}");
    }
    pool.shutdown().unwrap();
}
