//! Unit tests for the grid behaviour of a logical unit: ALUA path states
//! (command tables, unit attentions, the inline path, a standby unit on a
//! placeholder device) and persistent reservations shared by several
//! routers through one compare-and-swap store.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use depot_block::{BlockDevice, BlockError, BlockResult, MemDevice, Provisioning};

use super::tests::{
    BS, assert_check, assert_good, cdb10, cdb16, nexus, nowait, read10, rig, run, trun,
    xcopy_params,
};
use super::*;
use crate::alua::{AccessState, Group, Paths};
use crate::sense::key;
use crate::{ScsiTarget, Status};

const TUR: [u8; 6] = [0, 0, 0, 0, 0, 0];
const INQUIRY: [u8; 6] = [0x12, 0, 0, 0, 96, 0];
const REQUEST_SENSE: [u8; 6] = [0x03, 0, 0, 0, 18, 0];
const MODE_SENSE_6: [u8; 6] = [0x1a, 0, 0x3f, 0, 255, 0];
const RTPG: [u8; 12] = [0xa3, 0x0a, 0, 0, 0, 0, 0x10, 0, 0, 0, 0, 0];
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

fn not_ready(c: &crate::Completion, ascq: u8) {
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
    // persistent reservations, REQUEST SENSE (pollable: why not ready).
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
        vec![0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        cdb16(0x9e, 0x10, 0, 32),
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
