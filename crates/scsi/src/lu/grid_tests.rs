//! Unit tests for the grid behaviour of a logical unit: ALUA path states
//! (command tables, unit attentions, the inline path, a standby unit on a
//! placeholder device) and persistent reservations shared by several
//! routers through one compare-and-swap store.

// Test CDB fields and lengths from small constants.
#![allow(clippy::cast_possible_truncation)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use depot_block::{BlockDevice, BlockError, BlockResult, MemDevice, Provisioning};
use parking_lot::Mutex;

use super::tests::{
    BS, assert_check, assert_good, cdb10, cdb16, nexus, nowait, read10, rig, run, trun,
    xcopy_params,
};
use super::*;
use crate::alua::{AccessState, Group, Paths};
use crate::pr::{PrState, ReservationStore, StoreError};
use crate::sense::key;
use crate::{Completion, ScsiTarget, Status};

const TUR: [u8; 6] = [0, 0, 0, 0, 0, 0];
const INQUIRY: [u8; 6] = [0x12, 0, 0, 0, 96, 0];
const REQUEST_SENSE: [u8; 6] = [0x03, 0, 0, 0, 18, 0];
const MODE_SENSE_6: [u8; 6] = [0x1a, 0, 0x3f, 0, 255, 0];
const RTPG: [u8; 12] = [0xa3, 0x0a, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0];
const RSOC: [u8; 12] = [0xa3, 0x0c, 0, 0, 0, 0, 0x10, 0, 0, 0, 0, 0];
const PR_IN_READ_KEYS: [u8; 10] = [0x5e, 0, 0, 0, 0, 0, 0, 0x10, 0, 0];

fn paths(local: u16, states: &[(u16, AccessState)]) -> Paths {
    Paths {
        local_tpg: local,
        groups: states
            .iter()
            .map(|&(tpg, state)| Group {
                tpg,
                relative_port: tpg,
                state,
            })
            .collect(),
    }
}

/// Router 2's view: router 1 owns the vDisk, router 2 is in `local`.
fn second_router(local: AccessState) -> Paths {
    paths(2, &[(1, AccessState::ActiveOptimized), (2, local)])
}

/// A placeholder device: the geometry of the real vDisk, every data-path
/// call fails and is counted.
struct Placeholder {
    data_calls: AtomicUsize,
}

impl Placeholder {
    fn touched(&self) -> BlockError {
        self.data_calls.fetch_add(1, Ordering::SeqCst);
        BlockError::Unavailable("placeholder".into())
    }
}

impl BlockDevice for Placeholder {
    fn block_size(&self) -> u32 {
        BS as u32
    }
    fn num_blocks(&self) -> u64 {
        1024
    }
    fn read(&self, _lba: u64, _buf: &mut [u8]) -> BlockResult<()> {
        Err(self.touched())
    }
    fn write(&self, _lba: u64, _data: &[u8], _fua: bool) -> BlockResult<()> {
        Err(self.touched())
    }
    fn flush(&self) -> BlockResult<()> {
        Err(self.touched())
    }
    fn try_read_nowait(&self, _lba: u64, _buf: &mut [u8]) -> BlockResult<bool> {
        Err(self.touched())
    }
    fn try_write_nowait(&self, _lba: u64, _data: &[u8]) -> BlockResult<bool> {
        Err(self.touched())
    }
    fn thin_provisioned(&self) -> bool {
        true
    }
    fn unmap(&self, _lba: u64, _blocks: u64) -> BlockResult<()> {
        Err(self.touched())
    }
    fn provisioning(&self, _lba: u64, _max: u64) -> BlockResult<(Provisioning, u64)> {
        Err(self.touched())
    }
}

fn placeholder_lu(registry: &Arc<Registry>) -> (Arc<LogicalUnit>, Arc<Placeholder>) {
    let dev = Arc::new(Placeholder {
        data_calls: AtomicUsize::new(0),
    });
    let cfg = LuConfig::new("SB1", LuConfig::naa_from_id(7001));
    (LogicalUnit::new(cfg, dev.clone(), registry).unwrap(), dev)
}

fn not_ready(c: &Completion, ascq: u8) {
    assert_check(c, key::NOT_READY, (0x04, ascq));
}

/// REQUEST SENSE (fixed format) data as (key, asc, ascq).
fn request_sense(lu: &LogicalUnit, n: &Arc<Nexus>) -> (u8, u8, u8) {
    let c = run(lu, n, &REQUEST_SENSE, &[], 18);
    assert_good(&c);
    (c.data[2] & 0x0f, c.data[12], c.data[13])
}

fn pr_out_cdb(sa: u8, ty: u8) -> [u8; 10] {
    [0x5f, sa, ty, 0, 0, 0, 0, 0, 24, 0]
}

fn pr_params(res: u64, sa_key: u64) -> Vec<u8> {
    let mut p = vec![0u8; 24];
    p[..8].copy_from_slice(&res.to_be_bytes());
    p[8..16].copy_from_slice(&sa_key.to_be_bytes());
    p
}

#[test]
fn standby_serves_its_table_without_touching_the_device() {
    let registry = Registry::new();
    let (lu, dev) = placeholder_lu(&registry);
    lu.set_paths(second_router(AccessState::Standby)).unwrap();
    assert_eq!(lu.access_state(), AccessState::Standby);
    let a = nexus("iqn.test:a", 1);

    // Served: identification, every VPD page, RTPG, RSOC, mode pages,
    // persistent reservations, READ CAPACITY (a host sizes the path once,
    // when it finds it), REQUEST SENSE (pollable: why not ready).
    assert_good(&run(&lu, &a, &INQUIRY, &[], 96));
    for page in crate::inquiry::SUPPORTED_VPD {
        assert_good(&run(&lu, &a, &[0x12, 1, page, 0x10, 0, 0], &[], 4096));
    }
    assert_good(&run(
        &lu,
        &a,
        &[0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0],
        &[],
        256,
    ));
    let c = run(&lu, &a, &RTPG, &[], 4096);
    assert_good(&c);
    assert_eq!(&c.data[..4], &[0, 0, 0, 24]);
    assert_eq!((c.data[4], c.data[16]), (0x00, 0x02));
    // Allocation length honoured, in both header formats.
    let mut short = RTPG;
    short[8] = 0;
    short[9] = 10;
    let c = run(&lu, &a, &short, &[], 4096);
    assert_eq!((c.data.len(), c.transfer_length), (10, 10));
    short[1] |= 0x20;
    let c = run(&lu, &a, &short, &[], 4096);
    assert_eq!(
        (c.data.len(), &c.data[..6]),
        (10, &[0, 0, 0, 28, 0x10, 0][..])
    );
    assert_good(&run(&lu, &a, &RSOC, &[], 4096));
    assert_good(&run(
        &lu,
        &a,
        &[0xa3, 0x0d, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0],
        &[],
        4,
    ));
    let ms = run(&lu, &a, &MODE_SENSE_6, &[], 255);
    assert_good(&ms);
    assert_good(&run(
        &lu,
        &a,
        &[0x5a, 0, 0x3f, 0, 0, 0, 0, 1, 0, 0],
        &[],
        256,
    ));
    let cur = run(&lu, &a, &[0x1a, 0x08, 0x0a, 0, 255, 0], &[], 255);
    let mut sel = vec![0, 0, 0, 0];
    sel.extend_from_slice(&cur.data[4..]);
    assert_good(&run(
        &lu,
        &a,
        &[0x15, 0x10, 0, 0, sel.len() as u8, 0],
        &sel,
        0,
    ));
    assert_good(&run(&lu, &a, &pr_out_cdb(6, 0), &pr_params(0, 0xa1), 0));
    assert_good(&run(&lu, &a, &pr_out_cdb(1, 5), &pr_params(0xa1, 0), 0));
    let keys = run(&lu, &a, &PR_IN_READ_KEYS, &[], 4096);
    assert_good(&keys);
    assert_eq!(&keys.data[8..16], &0xa1u64.to_be_bytes());
    let rc10 = run(&lu, &a, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[], 8);
    assert_good(&rc10);
    assert_eq!(&rc10.data[..], &[0, 0, 0x03, 0xff, 0, 0, 0x02, 0]);
    let rc16 = run(&lu, &a, &cdb16(0x9e, 0x10, 0, 32), &[], 32);
    assert_good(&rc16);
    assert_eq!(&rc16.data[..8], &1023u64.to_be_bytes());
    assert_eq!(request_sense(&lu, &a), (key::NOT_READY, 0x04, 0x0b));

    // Refused with 04/0B: media access and everything else.
    let wsame = {
        let mut c = cdb16(0x93, 0x08, 0, 1);
        c[1] = 0x08;
        c
    };
    let refused: Vec<Vec<u8>> = vec![
        TUR.to_vec(),
        cdb10(0x28, 0, 0, 1),
        cdb10(0x2a, 0, 0, 1),
        cdb16(0x88, 0, 0, 1),
        cdb10(0x35, 0, 0, 0),
        cdb16(0x9e, 0x12, 0, 64),
        vec![0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0],
        wsame,
        cdb10(0x2f, 0, 0, 1),
        cdb16(0x89, 0, 0, 0),
        vec![0x16, 0, 0, 0, 0, 0],
        vec![0x1b, 0, 0, 0, 1, 0],
        vec![0x37, 0, 0, 0, 0, 0, 0, 0, 4, 0],
    ];
    for cdb in &refused {
        let c = run(&lu, &a, cdb, &[0; 2 * BS], 4096);
        assert_check(&c, key::NOT_READY, (0x04, 0x0b));
    }
    // The inline path declines; nothing reached the device.
    assert!(nowait(&lu, &a, &cdb10(0x28, 0, 0, 1), &[], 512).is_none());
    assert!(nowait(&lu, &a, &cdb10(0x2a, 0, 0, 1), &[0; BS], 0).is_none());
    assert_eq!(dev.data_calls.load(Ordering::SeqCst), 0);

    // As an EXTENDED COPY source / destination it is unreachable.
    let active = rig_on(&registry);
    let p = xcopy_params(&lu.config().naa, 0, 8, 1, 0);
    let mut xc = vec![0u8; 16];
    xc[0] = 0x83;
    xc[10..14].copy_from_slice(&(p.len() as u32).to_be_bytes());
    assert_check(&run(&active, &a, &xc, &p, 0), 0x0a, (0x0d, 0x02));
    assert_eq!(dev.data_calls.load(Ordering::SeqCst), 0);

    // A REPORT LUNS through the target is served too.
    let t = ScsiTarget::new(registry.clone());
    t.insert_lun(0, lu.clone());
    assert_good(&trun(
        &t,
        0,
        &a,
        &[0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0],
        256,
    ));
    not_ready(&trun(&t, 0, &a, &TUR, 0), 0x0b);
}

fn rig_on(registry: &Arc<Registry>) -> Arc<LogicalUnit> {
    let dev = Arc::new(MemDevice::new(BS as u32, 1024));
    LogicalUnit::new(
        LuConfig::new("ACT1", LuConfig::naa_from_id(7002)),
        dev,
        registry,
    )
    .unwrap()
}

#[test]
fn unavailable_and_transitioning_tables() {
    let r = rig();
    r.lu.set_paths(second_router(AccessState::Unavailable))
        .unwrap();
    let a = &r.a;
    assert_good(&run(&r.lu, a, &INQUIRY, &[], 96));
    assert_good(&run(&r.lu, a, &RTPG, &[], 4096));
    assert_good(&run(&r.lu, a, &RSOC, &[], 4096));
    assert_good(&run(&r.lu, a, &MODE_SENSE_6, &[], 255));
    not_ready(&run(&r.lu, a, &PR_IN_READ_KEYS, &[], 4096), 0x0c);
    not_ready(&run(&r.lu, a, &pr_out_cdb(6, 0), &pr_params(0, 1), 0), 0x0c);
    not_ready(&run(&r.lu, a, &TUR, &[], 0), 0x0c);
    not_ready(&read10(&r, 0, 1), 0x0c);
    assert_eq!(request_sense(&r.lu, a), (key::NOT_READY, 0x04, 0x0c));

    r.lu.set_paths(second_router(AccessState::Transitioning))
        .unwrap();
    // The state change is reported first (unit attention precedence).
    assert_check(
        &run(&r.lu, a, &TUR, &[], 0),
        key::UNIT_ATTENTION,
        (0x2a, 0x06),
    );
    assert_good(&run(&r.lu, a, &INQUIRY, &[], 96));
    assert_good(&run(&r.lu, a, &RTPG, &[], 4096));
    assert_good(&run(
        &r.lu,
        a,
        &[0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0],
        &[],
        256,
    ));
    not_ready(&run(&r.lu, a, &RSOC, &[], 4096), 0x0a);
    not_ready(&run(&r.lu, a, &MODE_SENSE_6, &[], 255), 0x0a);
    not_ready(&run(&r.lu, a, &PR_IN_READ_KEYS, &[], 4096), 0x0a);
    not_ready(&run(&r.lu, a, &TUR, &[], 0), 0x0a);
    assert_eq!(request_sense(&r.lu, a), (key::NOT_READY, 0x04, 0x0a));
}

#[test]
fn state_changes_raise_unit_attention_for_every_nexus() {
    let r = rig();
    assert_good(&run(&r.lu, &r.a, &TUR, &[], 0));
    assert_good(&run(&r.lu, &r.b, &TUR, &[], 0));
    // Router 2 of three becomes standby.
    let three = |s2, s3| paths(2, &[(1, AccessState::ActiveOptimized), (2, s2), (3, s3)]);
    r.lu.set_paths(three(AccessState::Standby, AccessState::Standby))
        .unwrap();
    // INQUIRY does not consume it; the next other command reports it,
    // then the port's state applies.
    assert_good(&run(&r.lu, &r.a, &INQUIRY, &[], 96));
    assert_check(
        &run(&r.lu, &r.a, &TUR, &[], 0),
        key::UNIT_ATTENTION,
        (0x2a, 0x06),
    );
    not_ready(&run(&r.lu, &r.a, &TUR, &[], 0), 0x0b);
    assert_eq!(
        request_sense(&r.lu, &r.b),
        (key::UNIT_ATTENTION, 0x2a, 0x06)
    );
    assert_eq!(request_sense(&r.lu, &r.b), (key::NOT_READY, 0x04, 0x0b));
    // The same paths again: nothing to report.
    r.lu.set_paths(three(AccessState::Standby, AccessState::Standby))
        .unwrap();
    not_ready(&run(&r.lu, &r.a, &TUR, &[], 0), 0x0b);
    // Another group's state changes: reported too.
    r.lu.set_paths(three(AccessState::Standby, AccessState::Unavailable))
        .unwrap();
    assert_check(
        &run(&r.lu, &r.a, &TUR, &[], 0),
        key::UNIT_ATTENTION,
        (0x2a, 0x06),
    );
    let c = run(&r.lu, &r.a, &RTPG, &[], 4096);
    let states: Vec<u8> = (0..3).map(|i| c.data[4 + 12 * i]).collect();
    assert_eq!(states, vec![0x00, 0x02, 0x03]);
    // A refused set changes nothing.
    assert!(
        r.lu.set_paths(paths(9, &[(1, AccessState::Standby)]))
            .is_err()
    );
    assert_eq!(r.lu.access_state(), AccessState::Standby);
    // This router takes over: reported, then everything is served again.
    r.lu.set_paths(three(AccessState::ActiveOptimized, AccessState::Standby))
        .unwrap();
    assert_eq!(
        r.lu.paths().unwrap().local_state(),
        AccessState::ActiveOptimized
    );
    assert_check(&read10(&r, 0, 1), key::UNIT_ATTENTION, (0x2a, 0x06));
    assert_good(&read10(&r, 0, 1));
    assert_eq!(request_sense(&r.lu, &r.a), (key::NO_SENSE, 0, 0));
}

#[test]
fn inline_path_declines_through_a_non_active_port() {
    let r = rig();
    assert_good(&run(&r.lu, &r.a, &TUR, &[], 0));
    let rd = cdb10(0x28, 0, 0, 1);
    assert!(nowait(&r.lu, &r.a, &rd, &[], 512).is_some());
    for (state, ascq) in [
        (AccessState::Standby, 0x0b),
        (AccessState::Unavailable, 0x0c),
        (AccessState::Transitioning, 0x0a),
    ] {
        r.lu.set_paths(second_router(state)).unwrap();
        assert!(nowait(&r.lu, &r.a, &rd, &[], 512).is_none());
        assert!(nowait(&r.lu, &r.a, &cdb10(0x2a, 0, 0, 1), &[1; BS], 0).is_none());
        // The blocking path answers: the unit attention, then NOT READY.
        assert_check(&read10(&r, 0, 1), key::UNIT_ATTENTION, (0x2a, 0x06));
        assert!(nowait(&r.lu, &r.a, &rd, &[], 512).is_none());
        not_ready(&read10(&r, 0, 1), ascq);
    }
    // Nothing was written by the declined inline write.
    r.lu.set_paths(second_router(AccessState::ActiveNonOptimized))
        .unwrap();
    assert_check(&read10(&r, 0, 1), key::UNIT_ATTENTION, (0x2a, 0x06));
    let c = nowait(&r.lu, &r.a, &rd, &[], 512).expect("active again");
    assert_good(&c);
    assert!(c.data.iter().all(|b| *b == 0));
    assert_eq!(run(&r.lu, &r.a, &TUR, &[], 0).status, Status::GOOD);
}

/// A store several routers share, as the daemon builds on etcd: a
/// revision counter and compare-and-swap. Each router has its own handle,
/// which remembers the revision its last load saw.
#[derive(Default)]
struct SharedStore {
    state: Mutex<(u64, PrState)>,
    /// Saves still to fail as if another router committed first.
    conflicts_ahead: AtomicUsize,
    /// Fail loads with this error.
    failing: Mutex<Option<StoreError>>,
}

struct Handle {
    shared: Arc<SharedStore>,
    loaded: Mutex<u64>,
}

impl ReservationStore for Handle {
    fn load(&self) -> Result<PrState, StoreError> {
        if let Some(e) = self.shared.failing.lock().clone() {
            return Err(e);
        }
        let st = self.shared.state.lock();
        *self.loaded.lock() = st.0;
        Ok(st.1.clone())
    }

    fn save(&self, state: &PrState) -> Result<(), StoreError> {
        let mut st = self.shared.state.lock();
        if self
            .shared
            .conflicts_ahead
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            // Another router committed (the same state) in between.
            st.0 += 1;
            return Err(StoreError::Conflict);
        }
        let mut loaded = self.loaded.lock();
        if st.0 != *loaded {
            return Err(StoreError::Conflict);
        }
        st.0 += 1;
        st.1 = state.clone();
        *loaded = st.0;
        Ok(())
    }
}

impl SharedStore {
    fn latest(&self) -> PrState {
        self.state.lock().1.clone()
    }

    fn revision(&self) -> u64 {
        self.state.lock().0
    }
}

/// One vDisk served by two routers (portal group tags 1 and 2; router 1
/// owns it), sharing `store`.
fn two_routers(store: &Arc<SharedStore>) -> [Arc<LogicalUnit>; 2] {
    [1u16, 2].map(|tpg| {
        let lu = LogicalUnit::with_reservation_store(
            LuConfig::new("GRID1", LuConfig::naa_from_id(4242)),
            Arc::new(MemDevice::new(BS as u32, 1024)),
            &Registry::new(),
            Arc::new(Handle {
                shared: store.clone(),
                loaded: Mutex::new(0),
            }),
        )
        .unwrap();
        let standby = if tpg == 1 {
            AccessState::ActiveOptimized
        } else {
            AccessState::Standby
        };
        lu.set_paths(paths(
            tpg,
            &[(1, AccessState::ActiveOptimized), (2, standby)],
        ))
        .unwrap();
        lu
    })
}

/// Initiator `name`'s session `isid` through router `tpg`.
fn via(name: &str, isid: u8, tpg: u16) -> Arc<Nexus> {
    Arc::new(Nexus::new(
        name,
        [0x80, 0, 0, 0, 0, isid],
        "iqn.2026-01.test:depot",
        tpg,
    ))
}

fn pr_out(lu: &LogicalUnit, n: &Arc<Nexus>, sa: u8, ty: u8, res: u64, key: u64) -> Completion {
    run(lu, n, &pr_out_cdb(sa, ty), &pr_params(res, key), 0)
}

fn read_keys(lu: &LogicalUnit, n: &Arc<Nexus>) -> Vec<u64> {
    let c = run(lu, n, &PR_IN_READ_KEYS, &[], 4096);
    assert_good(&c);
    c.data[8..]
        .chunks_exact(8)
        .map(|k| u64::from_be_bytes(k.try_into().unwrap()))
        .collect()
}

#[test]
fn reservations_are_shared_by_two_routers() {
    let store = Arc::new(SharedStore::default());
    let [r1, r2] = two_routers(&store);
    let (a1, a2, b2) = (
        via("iqn.test:a", 1, 1),
        via("iqn.test:a", 1, 2),
        via("iqn.test:b", 2, 2),
    );
    // Register on both routers; each PR OUT starts from the store's state.
    assert_good(&pr_out(&r1, &a1, 6, 0, 0, 0xa));
    assert_good(&pr_out(&r2, &b2, 6, 0, 0, 0xb));
    assert_eq!(read_keys(&r2, &b2), vec![0xa, 0xb]);
    // Router 1 answers PR IN from memory until the daemon pushes the
    // state router 2 committed.
    assert_eq!(read_keys(&r1, &a1), vec![0xa]);
    r1.replace_reservations(store.latest());
    assert_eq!(read_keys(&r1, &a1), vec![0xa, 0xb]);
    assert_eq!(r1.reservation_state(), r2.reservation_state());
    // The same initiator port through router 2 is another I_T nexus: not
    // registered there.
    assert_eq!(
        pr_out(&r2, &a2, 1, 3, 0xa, 0).status,
        Status::RESERVATION_CONFLICT
    );

    // B reserves (exclusive access) through router 2; router 1, the owner,
    // enforces it once the state is pushed.
    assert_good(&pr_out(&r2, &b2, 1, 3, 0xb, 0));
    assert_good(&read10_on(&r1, &a1));
    r1.replace_reservations(store.latest());
    assert_eq!(read10_on(&r1, &a1).status, Status::RESERVATION_CONFLICT);
    assert!(nowait(&r1, &a1, &cdb10(0x28, 0, 0, 1), &[], 512).is_none());

    // Without a push, a PR OUT on router 1 still sees the latest state: it
    // loads it first.
    let store_b = Arc::new(SharedStore::default());
    let [r1, r2] = two_routers(&store_b);
    assert_good(&pr_out(&r1, &a1, 6, 0, 0, 0xa));
    assert_good(&pr_out(&r2, &b2, 6, 0, 0, 0xb));
    assert_good(&pr_out(&r2, &b2, 1, 3, 0xb, 0));
    assert_good(&read10_on(&r1, &a1));
    assert_eq!(
        pr_out(&r1, &a1, 1, 3, 0xa, 0).status,
        Status::RESERVATION_CONFLICT
    );
    assert_eq!(read10_on(&r1, &a1).status, Status::RESERVATION_CONFLICT);
    assert_eq!(r1.reservation_state(), store_b.latest());
}

fn read10_on(lu: &LogicalUnit, n: &Arc<Nexus>) -> Completion {
    run(lu, n, &cdb10(0x28, 0, 0, 1), &[], 512)
}

#[test]
fn store_conflicts_are_retried_and_failures_answered() {
    let store = Arc::new(SharedStore::default());
    let [r1, _r2] = two_routers(&store);
    let a1 = via("iqn.test:a", 1, 1);
    // Two conflicts, then the save goes through.
    store.conflicts_ahead.store(2, Ordering::SeqCst);
    assert_good(&pr_out(&r1, &a1, 6, 0, 0, 0xa));
    assert_eq!(store.revision(), 3);
    assert_eq!(read_keys(&r1, &a1), vec![0xa]);
    assert_eq!(store.latest(), r1.reservation_state());
    // Conflicting on every try: BUSY, nothing changed.
    store
        .conflicts_ahead
        .store(reservations::MAX_STORE_TRIES, Ordering::SeqCst);
    let c = pr_out(&r1, &a1, 1, 3, 0xa, 0);
    assert_eq!(c.status, Status::BUSY);
    assert!(c.sense.is_none());
    assert_eq!(store.latest().reservation, None);
    assert_eq!(r1.reservation_state().reservation, None);
    // Store failures.
    *store.failing.lock() = Some(StoreError::Unavailable("no quorum".into()));
    assert_check(
        &pr_out(&r1, &a1, 1, 3, 0xa, 0),
        key::NOT_READY,
        (0x04, 0x01),
    );
    *store.failing.lock() = Some(StoreError::Io("corrupt".into()));
    assert_check(
        &pr_out(&r1, &a1, 1, 3, 0xa, 0),
        key::HARDWARE_ERROR,
        (0x44, 0x00),
    );
    *store.failing.lock() = None;
    assert_good(&pr_out(&r1, &a1, 1, 3, 0xa, 0));
    assert!(store.latest().reservation.is_some());
}

#[test]
fn preempt_on_one_router_posts_unit_attentions_on_the_other() {
    let store = Arc::new(SharedStore::default());
    let [r1, r2] = two_routers(&store);
    let (a1, c1, b2) = (
        via("iqn.test:a", 1, 1),
        via("iqn.test:c", 3, 1),
        via("iqn.test:b", 2, 2),
    );
    assert_good(&pr_out(&r1, &a1, 6, 0, 0, 0xa));
    assert_good(&pr_out(&r1, &c1, 6, 0, 0, 0xc));
    assert_good(&pr_out(&r2, &b2, 6, 0, 0, 0xb));
    // A holds write exclusive, registrants only, through router 1.
    assert_good(&pr_out(&r1, &a1, 1, 5, 0xa, 0));
    r2.replace_reservations(store.latest());
    // B preempts A's key through router 2 and changes the type to
    // exclusive access. Router 2 knows no nexus of A or C.
    assert_good(&pr_out(&r2, &b2, 4, 3, 0xb, 0xa));
    assert_eq!(request_sense(&r2, &b2), (key::NOT_READY, 0x04, 0x0b));
    // The daemon pushes the state; router 1 posts what its nexuses lost.
    r1.replace_reservations(store.latest());
    assert_check(
        &run(&r1, &a1, &TUR, &[], 0),
        key::UNIT_ATTENTION,
        (0x2a, 0x05),
    );
    assert_check(
        &run(&r1, &c1, &TUR, &[], 0),
        key::UNIT_ATTENTION,
        (0x2a, 0x04),
    );
    assert_good(&run(&r1, &a1, &TUR, &[], 0));
    assert_eq!(
        run(&r1, &a1, &cdb10(0x2a, 0, 0, 1), &[0; BS], 0).status,
        Status::RESERVATION_CONFLICT
    );
    assert_eq!(read_keys(&r1, &c1), vec![0xc, 0xb]);
    // Pushing the same state again (or to the router that executed it)
    // posts nothing.
    r1.replace_reservations(store.latest());
    r2.replace_reservations(store.latest());
    assert_good(&run(&r1, &a1, &TUR, &[], 0));
    assert_eq!(request_sense(&r2, &b2), (key::NOT_READY, 0x04, 0x0b));
    // CLEAR through router 2: router 1's registrants see RESERVATIONS
    // PREEMPTED.
    assert_good(&pr_out(&r2, &b2, 3, 0, 0xb, 0));
    r1.replace_reservations(store.latest());
    assert_check(
        &run(&r1, &c1, &TUR, &[], 0),
        key::UNIT_ATTENTION,
        (0x2a, 0x03),
    );
    assert_good(&run(&r1, &a1, &TUR, &[], 0));
    assert!(read_keys(&r1, &a1).is_empty());
}
