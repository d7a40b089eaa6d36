//! The mirror seam end to end with the DTL's real client and replica store
//! (in one process, the transport a direct call): an owner whose pool dies
//! without syncing or shipping is taken over from its mirror on another
//! flash with every flushed write; a mirror that fails goes degraded
//! (recorded before any sync is released) and comes back in sync; a copy
//! older than the backend's manifest is refused.
#![allow(missing_docs)]
// Test code: small sizes.
#![allow(clippy::cast_possible_truncation)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::grid::Registry;
use common::handover::{Model, verify};
use common::*;
use depot_block::{BlockDevice, Stored};
use depot_dtl::proto::{Commit, Open, Write};
use depot_dtl::{
    ClientConfig, Control, DtlError, DtlResult, Link, MirrorClient, MirrorState, Mode, RecordError,
    ReplicaStore, Subject,
};
use depot_engine::{HandoverFileKind, VPool, Volume};
use parking_lot::Mutex;

/// The holder, called directly; `down` makes every call fail.
struct Direct {
    store: Arc<ReplicaStore>,
    down: AtomicBool,
}

impl Direct {
    fn check(&self) -> DtlResult<()> {
        if self.down.load(Ordering::SeqCst) {
            return Err(DtlError::Peer("holder down".into()));
        }
        Ok(())
    }
}

impl Link for Direct {
    fn holder(&self) -> &str {
        "r2"
    }
    fn open(&self, o: &Open) -> DtlResult<()> {
        self.check()?;
        self.store.begin(o)
    }
    fn write(&self, w: &Write, body: &[u8]) -> DtlResult<()> {
        self.check()?;
        self.store.write(w, body)
    }
    fn commit(&self, c: &Commit, body: &[u8]) -> DtlResult<()> {
        self.check()?;
        self.store.commit(c, body)
    }
}

/// The cluster state of the mirror: what was recorded, in order.
struct Recorder {
    link: Arc<Direct>,
    states: Mutex<Vec<MirrorState>>,
    /// The owner lost the vDisk (deleted, taken over): records fail.
    deposed: AtomicBool,
}

impl Control for Recorder {
    fn record(&self, _holder: Option<&str>, state: MirrorState) -> Result<(), RecordError> {
        if self.deposed.load(Ordering::SeqCst) {
            return Err(RecordError::Deposed("the vDisk was deleted".into()));
        }
        self.states.lock().push(state);
        Ok(())
    }
    fn place(&self) -> Result<Arc<dyn Link>, String> {
        self.link.check().map_err(|e| e.to_string())?;
        Ok(self.link.clone())
    }
}

struct Rig {
    root: tempfile::TempDir,
    rt: tokio::runtime::Runtime,
    reg: Registry,
    store: Arc<ReplicaStore>,
    link: Arc<Direct>,
    ctl: Arc<Recorder>,
}

impl Rig {
    fn new() -> Self {
        let root = tempfile::tempdir().unwrap();
        let store = Arc::new(ReplicaStore::open(&root.path().join("dtl")).unwrap());
        let link = Arc::new(Direct {
            store: store.clone(),
            down: AtomicBool::new(false),
        });
        let ctl = Arc::new(Recorder {
            link: link.clone(),
            states: Mutex::new(Vec::new()),
            deposed: AtomicBool::new(false),
        });
        Rig {
            root,
            rt: runtime(),
            reg: Registry::default(),
            store,
            link,
            ctl,
        }
    }

    fn pool(&self, flash: &str) -> Arc<VPool> {
        let mut c = config(self.root.path());
        c.cache_dir = self.root.path().join(flash);
        c.write_buffer_bytes = 64 << 20;
        VPool::open(c, self.rt.handle().clone()).unwrap()
    }

    fn mirror(&self, v: &Arc<Volume>, generation: u64) -> Arc<MirrorClient> {
        self.mirror_as(v, generation, Mode::Sync)
    }

    fn mirror_as(&self, v: &Arc<Volume>, generation: u64, mode: Mode) -> Arc<MirrorClient> {
        let weak = Arc::downgrade(v);
        let client = MirrorClient::start(
            Subject {
                vdisk: v.name().to_string(),
                vpool: "pool".into(),
                id: v.id(),
                generation,
            },
            ClientConfig {
                mode,
                retry: Duration::from_millis(50),
                ..ClientConfig::default()
            },
            Arc::new(move |kind: HandoverFileKind, seq: u64| {
                weak.upgrade()
                    .map(|v| v.window_file(kind, seq))
                    .unwrap_or_default()
            }),
            self.ctl.clone(),
        );
        v.attach_mirror(client.clone()).unwrap();
        client
    }
}

fn wait_state(c: &MirrorClient, want: MirrorState) {
    let t0 = Instant::now();
    while c.status().state != want {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "mirror stuck in {:?}, not {want:?}: {:?}",
            c.status().state,
            c.status()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_takeover_from_the_mirror_has_every_flushed_write() {
    let rig = Rig::new();
    let p1 = rig.pool("flash1");
    let v = p1
        .create_volume_as("v", 16 << 20, 4096, &rig.reg.grant(1))
        .unwrap();
    let mut m = Model::new(16 << 20);
    m.random_4k(&v, 50, 1);
    let client = rig.mirror(&v, 1);
    wait_state(&client, MirrorState::InSync);
    // Everything the engine does to its window: appends, in-place
    // rewrites, a snapshot, shipping (the mirror drops shipped segments),
    // then more of it that stays on flash only.
    m.seq_1m(&v, 0, 3, 2);
    m.rewrites(&v, 8 << 20, 5, 3);
    m.snapshot(&v, "s1");
    m.random_4k(&v, 300, 4);
    v.sync_to_backend().unwrap();
    m.rewrites(&v, 4 << 20, 4, 5);
    m.random_4k(&v, 200, 6);
    m.seq_1m(&v, 10, 2, 7);
    v.flush().unwrap();
    assert_eq!(client.status().state, MirrorState::InSync);
    assert!(client.status().bytes_sent > 4 << 20);
    // The owner dies: nothing more is synced or shipped.
    p1.abandon();
    drop(v);

    let (vpool, copy) = rig.store.copy("v").expect("the holder has a copy");
    assert_eq!(vpool, "pool");
    let p2 = rig.pool("flash2");
    let v2 = p2.recover_mirror(&copy, &rig.reg.grant(2)).unwrap();
    verify(&v2, &m.data, "after the takeover from the mirror");
    let snaps: Vec<String> = v2.list_snapshots().into_iter().map(|s| s.name).collect();
    assert_eq!(snaps, ["s1"]);
    // The new owner writes, ships and restarts like any other.
    m.random_4k(&v2, 100, 8);
    v2.sync_to_backend().unwrap();
    verify(&v2, &m.data, "new owner after shipping");
    drop(client);
}

#[test]
fn a_sync_mirror_in_sync_holds_every_completed_write_without_a_flush() {
    // A guest that keeps running across a takeover must not read back
    // older data than it wrote: with no flush and no periodic sync,
    // every completed write (appends, in-place rewrites of mutable slots,
    // unmaps) is on the holder.
    let rig = Rig::new();
    let mut c = config(rig.root.path());
    c.cache_dir = rig.root.path().join("flash1");
    c.sync_interval = Duration::from_secs(3600);
    let p1 = VPool::open(c, rig.rt.handle().clone()).unwrap();
    let v = p1
        .create_volume_as("v", 16 << 20, 4096, &rig.reg.grant(1))
        .unwrap();
    let client = rig.mirror(&v, 1);
    wait_state(&client, MirrorState::InSync);
    let mut m = Model::new(16 << 20);
    m.random_4k(&v, 200, 1);
    m.rewrites(&v, 4 << 20, 6, 2);
    m.seq_1m(&v, 8, 3, 3);
    v.unmap(256, 16).unwrap();
    m.data[256 * 4096..272 * 4096].fill(0);
    m.random_4k(&v, 50, 4);
    // The inline path that cannot defer declines; the one that can stores
    // the write at once and completes it once the round is held.
    let block = [7u8; 4096];
    assert!(!v.try_write_nowait(1000, &block).unwrap());
    let Stored::Later(later) = v.try_write_deferred(1000, &[&block[..]]).unwrap() else {
        panic!("an inline write under a sync mirror completed without its round");
    };
    let (tx, rx) = std::sync::mpsc::channel();
    later.then(Box::new(move |r| tx.send(r).unwrap()));
    rx.recv_timeout(Duration::from_secs(10))
        .expect("the round was held")
        .unwrap();
    m.data[1000 * 4096..1001 * 4096].copy_from_slice(&block);
    assert_eq!(client.status().state, MirrorState::InSync);
    p1.abandon();
    drop(v);
    let (_, copy) = rig.store.copy("v").unwrap();
    let p2 = rig.pool("flash2");
    let v2 = p2.recover_mirror(&copy, &rig.reg.grant(2)).unwrap();
    verify(&v2, &m.data, "after a takeover with no flush");
    drop(client);
}

#[test]
fn a_failed_holder_is_recorded_degraded_and_the_mirror_comes_back() {
    let rig = Rig::new();
    let p1 = rig.pool("flash1");
    let v = p1
        .create_volume_as("v", 8 << 20, 4096, &rig.reg.grant(1))
        .unwrap();
    let client = rig.mirror(&v, 1);
    wait_state(&client, MirrorState::InSync);
    let mut m = Model::new(8 << 20);
    m.random_4k(&v, 20, 1);
    v.flush().unwrap();
    rig.link.down.store(true, Ordering::SeqCst);
    // The flush after the failure completes, on this router alone, and
    // only after "degraded" was recorded.
    m.random_4k(&v, 20, 2);
    v.flush().unwrap();
    assert_eq!(client.status().state, MirrorState::Degraded);
    assert_eq!(
        rig.ctl.states.lock().last(),
        Some(&MirrorState::Degraded),
        "recorded before the flush returned"
    );
    m.random_4k(&v, 20, 3);
    v.flush().unwrap();
    rig.link.down.store(false, Ordering::SeqCst);
    wait_state(&client, MirrorState::InSync);
    let states = rig.ctl.states.lock().clone();
    assert_eq!(
        &states[states.len() - 3..],
        [
            MirrorState::Degraded,
            MirrorState::CatchingUp,
            MirrorState::InSync
        ]
    );
    m.random_4k(&v, 20, 4);
    v.flush().unwrap();
    p1.abandon();
    drop(v);
    let (_, copy) = rig.store.copy("v").unwrap();
    let p2 = rig.pool("flash2");
    let v2 = p2.recover_mirror(&copy, &rig.reg.grant(2)).unwrap();
    verify(&v2, &m.data, "after a degraded spell and a catch-up");
    drop(client);
}

#[test]
fn a_copy_older_than_the_backend_is_refused() {
    let rig = Rig::new();
    let p1 = rig.pool("flash1");
    let v = p1
        .create_volume_as("v", 8 << 20, 4096, &rig.reg.grant(1))
        .unwrap();
    let client = rig.mirror(&v, 1);
    wait_state(&client, MirrorState::InSync);
    let mut m = Model::new(8 << 20);
    m.random_4k(&v, 50, 1);
    v.flush().unwrap();
    // The mirror stops; the owner ships on.
    v.detach_mirror();
    client.stop();
    m.random_4k(&v, 50, 2);
    v.sync_to_backend().unwrap();
    p1.abandon();
    drop(v);
    let (_, copy) = rig.store.copy("v").unwrap();
    let p2 = rig.pool("flash2");
    let e = p2.recover_mirror(&copy, &rig.reg.grant(2)).unwrap_err();
    assert!(e.to_string().contains("older than the backend"), "{e}");
}

#[test]
fn a_deposed_owner_is_not_held_by_its_mirror() {
    // The vDisk is deleted (or taken over) while in sync: the holder drops
    // its copy, the owner cannot record "degraded" any more, and its
    // pending syncs are released instead of waiting forever.
    let rig = Rig::new();
    let p1 = rig.pool("flash1");
    let v = p1
        .create_volume_as("v", 8 << 20, 4096, &rig.reg.grant(1))
        .unwrap();
    let client = rig.mirror(&v, 1);
    wait_state(&client, MirrorState::InSync);
    rig.ctl.deposed.store(true, Ordering::SeqCst);
    rig.link.down.store(true, Ordering::SeqCst);
    let (tx, rx) = std::sync::mpsc::channel();
    let v2 = v.clone();
    std::thread::spawn(move || {
        let mut m = Model::new(8 << 20);
        m.random_4k(&v2, 10, 1);
        tx.send(v2.flush()).unwrap();
    });
    let done = rx.recv_timeout(Duration::from_secs(20));
    assert!(
        matches!(done, Ok(Ok(()))),
        "the flush hung or failed: {done:?}"
    );
    // Later syncs do not wait either.
    v.flush().unwrap();
    drop(client);
}

#[test]
fn an_async_mirror_holds_what_a_flush_promised() {
    // Mode async: the periodic group commit does not wait for the holder,
    // a flush does; a takeover right after a flush has everything.
    let rig = Rig::new();
    let p1 = rig.pool("flash1");
    let v = p1
        .create_volume_as("v", 16 << 20, 4096, &rig.reg.grant(1))
        .unwrap();
    let client = rig.mirror_as(&v, 1, Mode::Async);
    wait_state(&client, MirrorState::InSync);
    let mut m = Model::new(16 << 20);
    m.random_4k(&v, 300, 1);
    m.seq_1m(&v, 2, 3, 2);
    m.rewrites(&v, 12 << 20, 3, 3);
    v.flush().unwrap();
    p1.abandon();
    drop(v);
    let (_, copy) = rig.store.copy("v").unwrap();
    let p2 = rig.pool("flash2");
    let v2 = p2.recover_mirror(&copy, &rig.reg.grant(2)).unwrap();
    verify(&v2, &m.data, "async mirror after a flush");
    drop(client);
}
