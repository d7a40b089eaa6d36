//! A whole live move, written as a function so that the local-directory
//! and the S3 tests run the same steps: write a pattern on router A, hand
//! the vDisk over to router B while A still writes, check B and the
//! backend, and open it on a third router from the backend alone.
#![allow(dead_code)]
// Test code: offsets into a small in-memory image.
#![allow(clippy::cast_possible_truncation)]

use std::path::Path;
use std::sync::Arc;

use depot_block::BlockDevice;
use depot_engine::{BackendConfig, EngineError, Owner, VPool, VPoolConfig, Volume};

use super::grid::{Registry, copy_files};
use super::{config, runtime};

/// Bytes of the moved vDisk.
pub const SIZE: u64 = 32 << 20;

/// What the vDisk and each snapshot should read as.
pub struct Model {
    pub data: Vec<u8>,
    pub snaps: Vec<(String, Vec<u8>)>,
    rng: u64,
}

impl Model {
    pub fn new(size: u64) -> Self {
        Model {
            data: vec![0; size as usize],
            snaps: Vec::new(),
            rng: 0x2545_f491_4f6c_dd1d,
        }
    }

    fn next(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    /// Writes `data` at byte `off` of `v` and of the model.
    pub fn write(&mut self, v: &Volume, off: u64, data: &[u8]) {
        v.write(off / 4096, data, false).unwrap();
        self.data[off as usize..off as usize + data.len()].copy_from_slice(data);
    }

    /// `n` random 4 KiB writes.
    pub fn random_4k(&mut self, v: &Volume, n: usize, tag: u64) {
        let clusters = self.data.len() as u64 / 4096;
        for i in 0..n {
            let c = self.next() % clusters;
            let d = super::pattern(tag, c ^ (i as u64) << 32, 4096);
            self.write(v, c * 4096, &d);
        }
    }

    /// `n` sequential 1 MiB writes from MiB `first`.
    pub fn seq_1m(&mut self, v: &Volume, first: u64, n: u64, tag: u64) {
        for i in 0..n {
            let off = ((first + i) << 20) % self.data.len() as u64;
            self.write(v, off, &super::pattern(tag, first + i, 1 << 20));
        }
    }

    /// The same 64 KiB written `n` times: rewritten in place while its
    /// slots are mutable.
    pub fn rewrites(&mut self, v: &Volume, off: u64, n: u64, tag: u64) {
        for i in 0..n {
            self.write(v, off, &super::pattern(tag, i, 64 << 10));
        }
    }

    pub fn snapshot(&mut self, v: &Volume, name: &str) {
        v.create_snapshot(name).unwrap();
        self.snaps.push((name.to_string(), self.data.clone()));
    }
}

/// Reads all of `v` and compares it with `want`, 1 MiB at a time.
pub fn verify(v: &Volume, want: &[u8], what: &str) {
    let mut buf = vec![0u8; 1 << 20];
    for (i, chunk) in want.chunks(1 << 20).enumerate() {
        let buf = &mut buf[..chunk.len()];
        v.read((i as u64) << 8, buf).unwrap();
        if buf != chunk {
            let at = buf.iter().zip(chunk).position(|(a, b)| a != b).unwrap();
            panic!("{what}: MiB {i} differs at byte {at}");
        }
    }
}

/// Checks every snapshot of the model through a clone of it on `pool`.
pub fn verify_snapshots(pool: &VPool, name: &str, m: &Model, owner: &Owner, tag: &str) {
    let listed: Vec<String> = pool
        .open_volume(name)
        .unwrap()
        .list_snapshots()
        .into_iter()
        .map(|s| s.name)
        .collect();
    let want: Vec<String> = m.snaps.iter().map(|(n, _)| n.clone()).collect();
    assert_eq!(listed, want, "{tag}: snapshots");
    for (snap, data) in &m.snaps {
        let c = pool
            .clone_volume_as(name, Some(snap), &format!("{name}-{snap}-{tag}"), owner)
            .unwrap();
        verify(&c, data, &format!("{tag}: snapshot {snap}"));
    }
}

fn pool_config(root: &Path, backend: &BackendConfig, flash: &str) -> VPoolConfig {
    let mut c = config(root);
    c.backend = backend.clone();
    c.cache_dir = root.join(flash);
    c.write_buffer_bytes = 16 << 20;
    c.keep_shipped_bytes = 2 << 20;
    c
}

/// The whole move (module docs). With `ship_midway`, A ships everything
/// between B's early restore and the freeze (B then applies those tlogs
/// from the backend, and none of the precopied files is needed);
/// otherwise the precopied files are imported as they were copied.
pub fn round_trip(root: &Path, backend: &BackendConfig, ship_midway: bool) {
    let rt = runtime();
    let open = |flash: &str| -> Arc<VPool> {
        VPool::open(pool_config(root, backend, flash), rt.handle().clone()).unwrap()
    };
    let reg = Registry::default();
    let clones = Registry::default();
    let pa = open("flash-a");
    let a = pa
        .create_volume_as("mv", SIZE, 4096, &reg.grant(1))
        .unwrap();
    let mut m = Model::new(SIZE);
    m.random_4k(&a, 300, 1);
    m.seq_1m(&a, 0, 4, 2);
    m.snapshot(&a, "s1");
    m.random_4k(&a, 300, 3);
    // Shipped: everything so far.
    a.sync_to_backend().unwrap();
    m.seq_1m(&a, 8, 6, 4);
    m.snapshot(&a, "s2");
    m.random_4k(&a, 500, 5);
    m.rewrites(&a, 20 << 20, 3, 6);
    // Seals the container of those slots without freezing them.
    m.seq_1m(&a, 12, 1, 16);

    // Precopy while A keeps serving.
    let pre = a.handover_precopy().unwrap();
    assert!(!pre.is_empty(), "sealed segments wait to ship");
    let pb = open("flash-b");
    let dir = pb.import_dir("mv").unwrap();
    let precopied = copy_files(&pre, &dir);
    let mut prep = pb.prepare_import("mv", &reg.owner(2)).unwrap();
    // The precopied segments are checked and applied before the pause.
    let applied = pb.import_precopied(&mut prep, &pre, &dir).unwrap();
    assert_eq!(applied, prep.applied_tlogs().len());
    // More writes on A: new segments, in-place rewrites of new slots (the
    // slots written before the precopy are final: these append), an
    // unshipped snapshot.
    let before = a.stats().rewritten_clusters;
    m.rewrites(&a, 20 << 20, 2, 15);
    assert!(
        a.stats().rewritten_clusters - before <= 16,
        "the first rewrite appends, only the second goes in place"
    );
    m.random_4k(&a, 400, 7);
    if ship_midway {
        a.sync_to_backend().unwrap();
    }
    m.rewrites(&a, 24 << 20, 4, 8);
    m.seq_1m(&a, 16, 3, 9);
    m.snapshot(&a, "s3");
    m.random_4k(&a, 200, 10);
    m.rewrites(&a, 28 << 20, 3, 11);

    // The pause: freeze, copy what is left, import.
    let state = a.handover_freeze().unwrap();
    assert_eq!(state.generation, 1);
    assert_eq!(state.meta.snapshots.len(), 3, "unshipped snapshots travel");
    let rest = copy_files(&state.files, &dir);
    eprintln!(
        "hand-over: {} files, {} KiB precopied, {} KiB in the pause",
        state.files.len(),
        precopied >> 10,
        rest >> 10
    );
    // Frozen: nothing more goes in or out on A.
    assert!(matches!(
        a.write(0, &[1u8; 4096], false),
        Err(depot_block::BlockError::Unavailable(_))
    ));
    assert_eq!(a.handover_freeze().unwrap().files, state.files);
    reg.set(2);
    let b = pb.finish_import(prep, &state, &dir).unwrap();
    assert!(!dir.exists(), "received files are consumed");
    assert_eq!(b.owner_generation(), 2);
    assert_eq!(b.epoch_generation(), 2);
    verify(&b, &m.data, "router B after the import");

    // A after the hand-over: cannot ship, and forgets it.
    assert!(matches!(a.sync_to_backend(), Err(EngineError::Fenced(_))));
    assert!(a.is_fenced());
    let a_dir = root
        .join("flash-a")
        .join("vols")
        .join(format!("{:016x}", a.id()));
    assert!(a_dir.exists());
    pa.forget_volume("mv").unwrap();
    assert!(!a_dir.exists(), "A's flash state is gone");
    assert!(matches!(a.sync_to_backend(), Err(EngineError::Fenced(_))));

    // B writes on and ships (the imported segments under generation 2).
    m.random_4k(&b, 300, 12);
    m.seq_1m(&b, 30, 2, 13);
    m.snapshot(&b, "s4");
    m.random_4k(&b, 100, 14);
    b.sync_to_backend().unwrap();
    verify(&b, &m.data, "router B after its own writes");
    verify_snapshots(&pb, "mv", &m, &clones.grant(1), "b");
    pb.shutdown().unwrap();
    drop((a, pa));

    // A third router, from the backend alone.
    let pc = open("flash-c");
    let c = pc.open_volume_as("mv", &reg.grant(3)).unwrap();
    assert_eq!(c.epoch_generation(), 3);
    verify(&c, &m.data, "router C from the backend");
    verify_snapshots(&pc, "mv", &m, &clones.grant(2), "c");
    pc.shutdown().unwrap();
}
