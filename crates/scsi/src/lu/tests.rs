//! Unit tests for the device server: raw CDBs through `LogicalUnit::execute`
//! and `ScsiTarget::execute` over `MemDevice`, asserting status, sense and
//! data; plus a proptest model test of the data path.

// Test CDB fields, lengths and data patterns from small constants.
#![allow(clippy::cast_possible_truncation)]

use std::sync::Arc;

use depot_block::{BlockDevice, MemDevice, Provisioning};
use proptest::prelude::*;

use super::*;
use crate::sense::key;
use crate::{Command, Completion, DataOut, ParsedCdb, ScsiTarget, Status, TmfOutcome};

pub(super) const BS: usize = 512;
pub(super) const BLOCKS: u64 = 1024;

pub(super) struct Rig {
    pub(super) lu: Arc<LogicalUnit>,
    pub(super) dev: Arc<MemDevice>,
    pub(super) a: Arc<Nexus>,
    pub(super) b: Arc<Nexus>,
}

pub(super) fn nexus(name: &str, isid: u8) -> Arc<Nexus> {
    Arc::new(Nexus {
        initiator_name: name.into(),
        isid: [0x80, 0, 0, 0, 0, isid],
        target_name: "iqn.2026-01.test:depot".into(),
        tpgt: 1,
        relative_port_id: 1,
    })
}

pub(super) fn rig_with(config: LuConfig) -> Rig {
    let dev = Arc::new(MemDevice::new(BS as u32, BLOCKS));
    let registry = Registry::new();
    let lu = LogicalUnit::new(config, dev.clone(), &registry).unwrap();
    Rig {
        lu,
        dev,
        a: nexus("iqn.test:a", 1),
        b: nexus("iqn.test:b", 2),
    }
}

pub(super) fn rig() -> Rig {
    rig_with(LuConfig::new("SN0001", LuConfig::naa_from_id(42)))
}

/// Runs a command whose data-out arrives in three pieces cut at unaligned
/// offsets, as a transport may deliver it: every command must see the
/// same bytes as if they came in one piece.
pub(super) fn run(
    lu: &LogicalUnit,
    n: &Arc<Nexus>,
    cdb: &[u8],
    out: &[u8],
    expected_in: u32,
) -> Completion {
    let (a, b) = (out.len() / 3, out.len() * 2 / 3);
    let pieces = [
        Bytes::copy_from_slice(&out[..a]),
        Bytes::copy_from_slice(&out[a..b]),
        Bytes::copy_from_slice(&out[b..]),
    ];
    lu.execute(&Command {
        nexus: n,
        cdb: ParsedCdb::parse(cdb),
        data_out: DataOut::new(&pieces),
        expected_in,
    })
}

/// (key, asc, ascq) of a fixed-format sense in `c`.
pub(super) fn sense_of(c: &Completion) -> (u8, u8, u8) {
    let s = c.sense.as_ref().expect("sense");
    if s[0] & 0x7f == 0x72 {
        (s[1] & 0x0f, s[2], s[3])
    } else {
        (s[2] & 0x0f, s[12], s[13])
    }
}

fn info_of(c: &Completion) -> Option<u64> {
    let s = c.sense.as_ref()?;
    (s[0] & 0x80 != 0).then(|| u64::from(u32::from_be_bytes([s[3], s[4], s[5], s[6]])))
}

pub(super) fn assert_good(c: &Completion) {
    assert_eq!(
        c.status,
        Status::GOOD,
        "sense {:?}",
        c.sense.as_ref().map(|s| s.to_vec())
    );
}

pub(super) fn assert_check(c: &Completion, key: u8, code: (u8, u8)) {
    assert_eq!(c.status, Status::CHECK_CONDITION);
    assert_eq!(sense_of(c), (key, code.0, code.1));
}

pub(super) fn cdb10(op: u8, flags: u8, lba: u32, blocks: u16) -> Vec<u8> {
    let mut c = vec![0u8; 10];
    c[0] = op;
    c[1] = flags;
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[7..9].copy_from_slice(&blocks.to_be_bytes());
    c
}

pub(super) fn cdb16(op: u8, flags: u8, lba: u64, blocks: u32) -> Vec<u8> {
    let mut c = vec![0u8; 16];
    c[0] = op;
    c[1] = flags;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&blocks.to_be_bytes());
    c
}

pub(super) fn write10(r: &Rig, lba: u32, data: &[u8]) -> Completion {
    let n = (data.len() / BS) as u16;
    run(&r.lu, &r.a, &cdb10(0x2a, 0, lba, n), data, 0)
}

pub(super) fn read10(r: &Rig, lba: u32, blocks: u16) -> Completion {
    run(
        &r.lu,
        &r.a,
        &cdb10(0x28, 0, lba, blocks),
        &[],
        blocks as u32 * BS as u32,
    )
}

#[test]
fn read_write_round_trip_and_residual_lengths() {
    let r = rig();
    let data: Vec<u8> = (0..2 * BS).map(|i| i as u8).collect();
    let c = write10(&r, 5, &data);
    assert_good(&c);
    assert_eq!(c.transfer_length, 2 * BS as u32);
    let c = read10(&r, 5, 2);
    assert_good(&c);
    assert_eq!(&c.data[..], &data[..]);
    // Expected length shorter than the CDB: data truncated, length kept.
    let c = run(&r.lu, &r.a, &cdb10(0x28, 0, 5, 2), &[], 200);
    assert_good(&c);
    assert_eq!(c.data.len(), 200);
    assert_eq!(c.transfer_length, 2 * BS as u32);
}

#[test]
fn short_data_out_writes_whole_blocks_only() {
    let r = rig();
    assert_good(&write10(&r, 0, &[b'a'; 2 * BS]));
    // Two blocks described, one sent: only the first is written.
    let c = run(&r.lu, &r.a, &cdb10(0x2a, 0, 0, 2), &[b'b'; BS], 0);
    assert_good(&c);
    assert_eq!(c.transfer_length, 2 * BS as u32);
    let c = read10(&r, 0, 2);
    assert!(c.data[..BS].iter().all(|b| *b == b'b'));
    assert!(c.data[BS..].iter().all(|b| *b == b'a'));
    // A partial block is refused and nothing is written.
    let c = run(&r.lu, &r.a, &cdb10(0x2a, 0, 0, 1), &[b'c'; 200], 0);
    assert_check(&c, 5, (0x0e, 0x03));
    assert_eq!(c.transfer_length, BS as u32);
    assert!(read10(&r, 0, 1).data.iter().all(|b| *b == b'b'));
    // More data than described: only what the CDB describes is written.
    let c = run(&r.lu, &r.a, &cdb10(0x2a, 0, 0, 1), &[b'd'; 2 * BS], 0);
    assert_good(&c);
    assert!(read10(&r, 1, 1).data.iter().all(|b| *b == b'a'));
}

#[test]
fn out_of_range_and_bad_opcode() {
    let r = rig();
    let c = run(&r.lu, &r.a, &cdb10(0x28, 0, BLOCKS as u32, 1), &[], 512);
    assert_check(&c, 5, (0x21, 0));
    let c = run(&r.lu, &r.a, &cdb16(0x88, 0, u64::MAX, 1), &[], 512);
    assert_check(&c, 5, (0x21, 0));
    let c = run(
        &r.lu,
        &r.a,
        &cdb10(0x28, 0, BLOCKS as u32 - 1, 2),
        &[],
        1024,
    );
    assert_check(&c, 5, (0x21, 0));
    // Zero blocks: fine inside, out of range past the end.
    assert_good(&run(&r.lu, &r.a, &cdb10(0x28, 0, 0, 0), &[], 0));
    let c = run(&r.lu, &r.a, &cdb10(0x2a, 0, BLOCKS as u32 + 1, 0), &[], 0);
    assert_check(&c, 5, (0x21, 0));
    let c = run(
        &r.lu,
        &r.a,
        &[0xc5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        &[],
        0,
    );
    assert_check(&c, 5, (0x20, 0));
    // RDPROTECT without protection information.
    let c = run(&r.lu, &r.a, &cdb10(0x28, 0x20, 0, 1), &[], 512);
    assert_check(&c, 5, (0x24, 0));
}

fn caw(r: &Rig, n: &Arc<Nexus>, lba: u64, blocks: u8, data: &[u8]) -> Completion {
    let mut c = cdb16(0x89, 0, lba, 0);
    c[10..14].fill(0);
    c[13] = blocks;
    run(&r.lu, n, &c, data, 0)
}

#[test]
fn compare_and_write_semantics() {
    let r = rig();
    assert_good(&write10(&r, 3, &[b'A'; BS]));
    let mut buf = vec![b'A'; BS];
    buf.extend_from_slice(&[b'B'; BS]);
    assert_good(&caw(&r, &r.a, 3, 1, &buf));
    assert!(read10(&r, 3, 1).data.iter().all(|b| *b == b'B'));
    // Miscompare: INFORMATION is the offset of the first differing byte and
    // nothing is written.
    let mut buf = vec![b'B'; BS];
    buf[100] = b'X';
    buf.extend_from_slice(&[b'C'; BS]);
    let c = caw(&r, &r.a, 3, 1, &buf);
    assert_check(&c, 0x0e, (0x1d, 0));
    assert_eq!(info_of(&c), Some(100));
    assert!(read10(&r, 3, 1).data.iter().all(|b| *b == b'B'));
    // Wrong data-out size, beyond the limit, beyond the end.
    let c = caw(&r, &r.a, 3, 1, &[b'B'; 4 * BS]);
    assert_check(&c, 5, (0x24, 0));
    let c = caw(&r, &r.a, 3, 33, &vec![0; 66 * BS]);
    assert_check(&c, 5, (0x24, 0));
    // NUMBER OF BLOCKS 0 with data-out (256 blocks wrapped) is refused;
    // without data-out it is a no-op.
    assert_check(&caw(&r, &r.a, 3, 0, &[0; 4 * BS]), 5, (0x24, 0));
    assert_good(&caw(&r, &r.a, 3, 0, &[]));
    let c = caw(&r, &r.a, BLOCKS, 1, &[0; 2 * BS]);
    assert_check(&c, 5, (0x21, 0));
    assert_eq!(c.transfer_length, 2 * BS as u32);
}

#[test]
fn compare_and_write_is_atomic_against_writes() {
    // Writers flip a block between two patterns; CAW swaps them. Every
    // read must show a whole pattern and CAW must never lose an update.
    let r = Arc::new(rig());
    assert_good(&write10(&r, 7, &[0u8; BS]));
    let writer = {
        let r = r.clone();
        std::thread::spawn(move || {
            for i in 0..300u32 {
                let fill = if i % 2 == 0 { 1u8 } else { 0u8 };
                assert_good(&write10(&r, 7, &[fill; BS]));
            }
        })
    };
    let mut swaps = 0;
    for _ in 0..300 {
        let mut buf = vec![1u8; BS];
        buf.extend_from_slice(&[2u8; BS]);
        let c = caw(&r, &r.b, 7, 1, &buf);
        if c.status == Status::GOOD {
            swaps += 1;
        } else {
            assert_check(&c, 0x0e, (0x1d, 0));
        }
        let d = read10(&r, 7, 1).data;
        assert!(d.iter().all(|b| *b == d[0]), "torn block");
    }
    writer.join().unwrap();
    let _ = swaps;
}

#[test]
fn verify_and_write_verify() {
    let r = rig();
    let data: Vec<u8> = (0..3 * BS).map(|i| (i * 7) as u8).collect();
    assert_good(&write10(&r, 10, &data));
    // BYTCHK=1 match / mismatch.
    assert_good(&run(&r.lu, &r.a, &cdb10(0x2f, 0x02, 10, 3), &data, 0));
    let mut bad = data.clone();
    bad[BS + 9] ^= 0xff;
    let c = run(&r.lu, &r.a, &cdb10(0x2f, 0x02, 10, 3), &bad, 0);
    assert_check(&c, 0x0e, (0x1d, 0));
    assert_eq!(info_of(&c), Some(BS as u64 + 9));
    // BYTCHK=0: medium verification only.
    assert_good(&run(&r.lu, &r.a, &cdb10(0x2f, 0x10, 10, 3), &[], 0));
    // BYTCHK=3: one block against each.
    assert_good(&write10(&r, 20, &[9u8; 2 * BS]));
    assert_good(&run(&r.lu, &r.a, &cdb10(0x2f, 0x06, 20, 2), &[9u8; BS], 0));
    // VRPROTECT.
    let c = run(&r.lu, &r.a, &cdb10(0x2f, 0x22, 10, 1), &data[..BS], 0);
    assert_check(&c, 5, (0x24, 0));
    // WRITE AND VERIFY writes.
    assert_good(&run(&r.lu, &r.a, &cdb10(0x2e, 0x02, 30, 1), &[5u8; BS], 0));
    assert!(read10(&r, 30, 1).data.iter().all(|b| *b == 5));
}

#[test]
fn orwrite_ors() {
    let r = rig();
    assert_good(&write10(&r, 0, &[0xa0; BS]));
    assert_good(&run(&r.lu, &r.a, &cdb16(0x8b, 0x18, 0, 1), &[0x05; BS], 0));
    assert!(read10(&r, 0, 1).data.iter().all(|b| *b == 0xa5));
}

#[test]
fn write_same_and_unmap() {
    let r = rig();
    assert_good(&write10(&r, 0, &[0xff; 8 * BS]));
    // WRITE SAME(10) with data.
    let mut pat = vec![0u8; BS];
    pat[0] = 0x11;
    assert_good(&run(&r.lu, &r.a, &cdb10(0x41, 0, 0, 4), &pat, 0));
    let d = read10(&r, 0, 4).data;
    for b in d.chunks(BS) {
        assert_eq!(b, &pat[..]);
    }
    // UNMAP bit with zeros deallocates.
    assert_good(&run(&r.lu, &r.a, &cdb10(0x41, 0x08, 4, 4), &[0; BS], 0));
    assert_eq!(
        r.dev.provisioning(4, 2000).unwrap(),
        (Provisioning::Deallocated, 1020)
    );
    // NDOB (16) + UNMAP.
    assert_good(&run(&r.lu, &r.a, &cdb16(0x93, 0x09, 0, 2), &[], 0));
    assert_eq!(
        r.dev.provisioning(0, 2).unwrap().0,
        Provisioning::Deallocated
    );
    // ANCHOR, 0 blocks (WSNZ), wrong data-out size, out of range.
    assert_check(
        &run(&r.lu, &r.a, &cdb10(0x41, 0x18, 0, 1), &[0; BS], 0),
        5,
        (0x24, 0),
    );
    assert_check(
        &run(&r.lu, &r.a, &cdb10(0x41, 0, 0, 0), &[0; BS], 0),
        5,
        (0x24, 0),
    );
    assert_check(
        &run(&r.lu, &r.a, &cdb10(0x41, 0x08, 0, 1), &[0; 2 * BS], 0),
        5,
        (0x0e, 0x03),
    );
    let c = run(
        &r.lu,
        &r.a,
        &cdb10(0x41, 0, BLOCKS as u32 - 1, 2),
        &[0; BS],
        0,
    );
    assert_check(&c, 5, (0x21, 0));
    // UNMAP command: descriptors, zero-length ones, limits.
    assert_good(&write10(&r, 100, &[1; 4 * BS]));
    let mut p = vec![0u8; 8];
    for (lba, n) in [(100u64, 2u32), (BLOCKS, 0), (103, 1)] {
        p.extend_from_slice(&lba.to_be_bytes());
        p.extend_from_slice(&n.to_be_bytes());
        p.extend_from_slice(&[0; 4]);
    }
    let total = p.len();
    p[0..2].copy_from_slice(&((total - 2) as u16).to_be_bytes());
    p[2..4].copy_from_slice(&((total - 8) as u16).to_be_bytes());
    let unmap = |p: &[u8]| cdb10(0x42, 0, 0, p.len() as u16);
    assert_good(&run(&r.lu, &r.a, &unmap(&p), &p, 0));
    assert_eq!(
        r.dev.provisioning(100, 4).unwrap(),
        (Provisioning::Deallocated, 2)
    );
    assert_eq!(
        r.dev.provisioning(102, 4).unwrap(),
        (Provisioning::Mapped, 1)
    );
    assert_eq!(
        r.dev.provisioning(103, 1).unwrap().0,
        Provisioning::Deallocated
    );
    // Out of range descriptor: nothing unmapped.
    let mut q = p.clone();
    q[8..16].copy_from_slice(&(BLOCKS - 1).to_be_bytes());
    assert_check(&run(&r.lu, &r.a, &unmap(&q), &q, 0), 5, (0x21, 0));
    // Parameter list shorter than the header; longer than the data-out.
    assert_check(
        &run(&r.lu, &r.a, &cdb10(0x42, 0, 0, 4), &p, 0),
        5,
        (0x1a, 0),
    );
    assert_check(&run(&r.lu, &r.a, &unmap(&p), &p[..20], 0), 5, (0x1a, 0));
    // Zero-length parameter list is a no-op.
    assert_good(&run(&r.lu, &r.a, &cdb10(0x42, 0, 0, 0), &[], 0));
}

#[test]
fn get_lba_status_reports_runs() {
    let r = rig();
    assert_good(&write10(&r, 10, &[1; 5 * BS]));
    let mut c = cdb16(0x9e, 0x12, 8, 0);
    c[10..14].copy_from_slice(&64u32.to_be_bytes());
    let out = run(&r.lu, &r.a, &c, &[], 64);
    assert_good(&out);
    let d = &out.data;
    assert_eq!(d.len(), 56);
    assert_eq!(u32::from_be_bytes([d[0], d[1], d[2], d[3]]), 4 + 48);
    let desc = |i: usize| {
        let b = &d[8 + 16 * i..];
        (
            u64::from_be_bytes(b[..8].try_into().unwrap()),
            u32::from_be_bytes(b[8..12].try_into().unwrap()),
            b[12],
        )
    };
    assert_eq!(desc(0), (8, 2, 1));
    assert_eq!(desc(1), (10, 5, 0));
    assert_eq!(desc(2), (15, (BLOCKS - 15) as u32, 1));
    // Beyond the end.
    let mut c = cdb16(0x9e, 0x12, BLOCKS, 0);
    c[10..14].copy_from_slice(&24u32.to_be_bytes());
    assert_check(&run(&r.lu, &r.a, &c, &[], 24), 5, (0x21, 0));
}

#[test]
fn capacity_and_inquiry() {
    let r = rig();
    let c = run(&r.lu, &r.a, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[], 8);
    assert_good(&c);
    assert_eq!(&c.data[..], &[0, 0, 3, 0xff, 0, 0, 2, 0]);
    let mut rc16 = cdb16(0x9e, 0x10, 0, 0);
    rc16[10..14].copy_from_slice(&32u32.to_be_bytes());
    let c = run(&r.lu, &r.a, &rc16, &[], 32);
    assert_eq!(c.data[14], 0xc0);
    assert_eq!(
        u64::from_be_bytes(c.data[..8].try_into().unwrap()),
        BLOCKS - 1
    );
    // Allocation length smaller than the data.
    rc16[13] = 5;
    let c = run(&r.lu, &r.a, &rc16, &[], 32);
    assert_eq!((c.data.len(), c.transfer_length), (5, 5));
    // INQUIRY honours allocation length; EVPD=0 with a page code fails.
    let c = run(&r.lu, &r.a, &[0x12, 0, 0, 0, 5, 0], &[], 255);
    assert_eq!(c.data.len(), 5);
    assert_check(
        &run(&r.lu, &r.a, &[0x12, 0, 0x80, 0, 255, 0], &[], 255),
        5,
        (0x24, 0),
    );
    let c = run(&r.lu, &r.a, &[0x12, 1, 0x80, 0, 255, 0], &[], 255);
    assert_eq!(&c.data[4..], b"SN0001");
    let c = run(&r.lu, &r.a, &[0x12, 1, 0xb2, 0, 255, 0], &[], 255);
    assert_eq!(c.data[5], 0xe4);
    assert_check(
        &run(&r.lu, &r.a, &[0x12, 1, 0x99, 0, 255, 0], &[], 255),
        5,
        (0x24, 0),
    );
}

#[test]
fn mode_pages_dsense_and_swp() {
    let r = rig();
    let c = run(&r.lu, &r.a, &[0x1a, 0, 0x3f, 0, 255, 0], &[], 255);
    assert_good(&c);
    assert_eq!(c.data[0] as usize, c.data.len() - 1);
    assert_eq!(c.data[2], 0x10);
    // Switch to descriptor sense and software write protect.
    let cur = run(&r.lu, &r.a, &[0x1a, 0x08, 0x0a, 0, 255, 0], &[], 255);
    let mut params = vec![0, 0, 0, 0];
    params.extend_from_slice(&cur.data[4..]);
    params[4 + 2] |= 0x04;
    params[4 + 4] |= 0x08;
    let sel = [0x15, 0x10, 0, 0, params.len() as u8, 0];
    assert_good(&run(&r.lu, &r.a, &sel, &params, 0));
    let c = write10(&r, 0, &[0; BS]);
    assert_eq!(c.sense.as_ref().unwrap()[0], 0x72);
    assert_check(&c, 7, (0x27, 0x02));
    let c = run(&r.lu, &r.a, &[0x1a, 0x08, 0x3f, 0, 255, 0], &[], 255);
    assert_eq!(c.data[2], 0x90);
    // Saved values are not supported.
    assert_check(
        &run(&r.lu, &r.a, &[0x1a, 0, 0xff, 0, 255, 0], &[], 255),
        5,
        (0x39, 0),
    );
    // MODE SENSE(10) header.
    let c = run(
        &r.lu,
        &r.a,
        &[0x5a, 0, 0x08, 0, 0, 0, 0, 0, 255, 0],
        &[],
        255,
    );
    assert_eq!(
        u16::from_be_bytes([c.data[0], c.data[1]]) as usize,
        c.data.len() - 2
    );
    assert_eq!(c.data[7], 8);
}

#[test]
fn read_only_lu() {
    let mut cfg = LuConfig::new("RO", LuConfig::naa_from_id(7));
    cfg.read_only = true;
    let r = rig_with(cfg);
    assert_check(&write10(&r, 0, &[0; BS]), 7, (0x27, 0));
    assert_check(
        &run(&r.lu, &r.a, &cdb10(0x41, 0x08, 0, 1), &[], 0),
        7,
        (0x27, 0),
    );
    let mut p = vec![0u8; 24];
    p[3] = 16;
    p[19] = 1;
    assert_check(
        &run(&r.lu, &r.a, &cdb10(0x42, 0, 0, 24), &p, 0),
        7,
        (0x27, 0),
    );
    let c = run(&r.lu, &r.a, &[0x1a, 0, 0x3f, 0, 255, 0], &[], 255);
    assert_eq!(c.data[2] & 0x80, 0x80);
    assert_good(&read10(&r, 0, 1));
}

#[test]
fn report_supported_opcodes_and_tmfs() {
    let r = rig();
    let c = run(
        &r.lu,
        &r.a,
        &[0xa3, 0x0c, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0],
        &[],
        65535,
    );
    assert_good(&c);
    let len = u32::from_be_bytes(c.data[..4].try_into().unwrap()) as usize;
    assert_eq!(len + 4, c.data.len());
    let c = run(
        &r.lu,
        &r.a,
        &[0xa3, 0x0c, 0x01, 0x89, 0, 0, 0, 0, 0xff, 0xff, 0, 0],
        &[],
        65535,
    );
    assert_eq!(c.data[1] & 7, 3);
    assert_eq!(c.data[5] & 0x18, 0x18);
    let c = run(
        &r.lu,
        &r.a,
        &[0xa3, 0x0d, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0],
        &[],
        4,
    );
    assert_eq!(c.data[0], 0xca);
}

pub(super) fn pr_out(
    r: &Rig,
    n: &Arc<Nexus>,
    sa: u8,
    ty: u8,
    res: u64,
    sa_key: u64,
    flags: u8,
) -> Completion {
    let mut p = vec![0u8; 24];
    p[..8].copy_from_slice(&res.to_be_bytes());
    p[8..16].copy_from_slice(&sa_key.to_be_bytes());
    p[20] = flags;
    let c = [0x5f, sa, ty, 0, 0, 0, 0, 0, 24, 0];
    run(&r.lu, n, &c, &p, 0)
}

pub(super) fn pr_in(r: &Rig, n: &Arc<Nexus>, sa: u8) -> Completion {
    run(
        &r.lu,
        n,
        &[0x5e, sa, 0, 0, 0, 0, 0, 0x40, 0, 0],
        &[],
        0x4000,
    )
}

#[test]
fn persistent_reservations_over_cdbs() {
    let r = rig();
    assert_good(&pr_out(&r, &r.a, 6, 0, 0, 0xaa, 0));
    assert_good(&pr_out(&r, &r.b, 6, 0, 0, 0xbb, 0));
    let keys = pr_in(&r, &r.a, 0);
    assert_eq!(u32::from_be_bytes(keys.data[4..8].try_into().unwrap()), 16);
    // Exclusive access by A: B can neither read nor write.
    assert_good(&pr_out(&r, &r.a, 1, 3, 0xaa, 0, 0));
    assert_eq!(
        run(&r.lu, &r.b, &cdb10(0x28, 0, 0, 1), &[], 512).status,
        Status::RESERVATION_CONFLICT
    );
    assert_good(&read10(&r, 0, 1));
    // TUR and INQUIRY are allowed; MODE SENSE is not.
    assert_good(&run(&r.lu, &r.b, &[0, 0, 0, 0, 0, 0], &[], 0));
    assert_eq!(
        run(&r.lu, &r.b, &[0x1a, 0, 0x3f, 0, 255, 0], &[], 255).status,
        Status::RESERVATION_CONFLICT
    );
    // READ RESERVATION.
    let rr = pr_in(&r, &r.b, 1);
    assert_eq!(u32::from_be_bytes(rr.data[4..8].try_into().unwrap()), 16);
    assert_eq!(u64::from_be_bytes(rr.data[8..16].try_into().unwrap()), 0xaa);
    assert_eq!(rr.data[21], 3);
    // B preempts A: A's registration goes, A gets REGISTRATIONS PREEMPTED.
    assert_good(&pr_out(&r, &r.b, 4, 1, 0xbb, 0xaa, 0));
    let c = run(&r.lu, &r.a, &[0, 0, 0, 0, 0, 0], &[], 0);
    assert_check(&c, 6, (0x2a, 0x05));
    assert_eq!(
        run(&r.lu, &r.a, &cdb10(0x2a, 0, 0, 1), &[0; BS], 0).status,
        Status::RESERVATION_CONFLICT
    );
    assert_good(&read10(&r, 0, 1)); // Write Exclusive: reads allowed
    // RESERVE(6) conflicts while registrations exist.
    assert_eq!(
        run(&r.lu, &r.a, &[0x16, 0, 0, 0, 0, 0], &[], 0).status,
        Status::RESERVATION_CONFLICT
    );
    // REPORT CAPABILITIES and READ FULL STATUS shapes.
    let caps = pr_in(&r, &r.a, 2);
    assert_eq!(caps.data.len(), 8);
    assert_eq!(caps.data[2] & 0x01, 0);
    let fs = pr_in(&r, &r.a, 3);
    assert_eq!(fs.data[8 + 12], 1); // R_HOLDER
    // Invalid service action.
    assert_check(
        &run(
            &r.lu,
            &r.a,
            &[0x5e, 4, 0, 0, 0, 0, 0, 0x40, 0, 0],
            &[],
            0x4000,
        ),
        5,
        (0x24, 0),
    );
    // Wrong parameter list length.
    let c = run(
        &r.lu,
        &r.b,
        &[0x5f, 0, 0, 0, 0, 0, 0, 0, 20, 0],
        &[0; 24],
        0,
    );
    assert_check(&c, 5, (0x1a, 0));
    // CLEAR.
    assert_good(&pr_out(&r, &r.b, 3, 0, 0xbb, 0, 0));
    let keys = pr_in(&r, &r.a, 0);
    assert_eq!(u32::from_be_bytes(keys.data[4..8].try_into().unwrap()), 0);
}

#[test]
fn persistent_reservations_survive_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lu.pr");
    let mut cfg = LuConfig::new("P1", LuConfig::naa_from_id(9));
    cfg.pr_state_path = Some(path.clone());
    let r = rig_with(cfg.clone());
    assert_good(&pr_out(&r, &r.a, 6, 0, 0, 0x77, 1));
    assert_good(&pr_out(&r, &r.a, 1, 5, 0x77, 0, 0));
    assert!(path.exists());
    drop(r);
    let r = rig_with(cfg);
    let rr = pr_in(&r, &r.b, 1);
    assert_eq!(u64::from_be_bytes(rr.data[8..16].try_into().unwrap()), 0x77);
    assert_eq!(rr.data[21], 5);
    assert_eq!(pr_in(&r, &r.a, 2).data[3] & 0x01, 1); // PTPL_A
    assert_eq!(
        run(&r.lu, &r.b, &cdb10(0x2a, 0, 0, 1), &[0; BS], 0).status,
        Status::RESERVATION_CONFLICT
    );
    // APTPL without a state path is refused.
    let r2 = rig();
    assert_check(&pr_out(&r2, &r2.a, 6, 0, 0, 1, 1), 5, (0x26, 0));
}

#[test]
fn spc2_reserve_release() {
    let r = rig();
    let reserve = [0x16, 0, 0, 0, 0, 0];
    let release = [0x17, 0, 0, 0, 0, 0];
    assert_good(&run(&r.lu, &r.a, &reserve, &[], 0));
    assert_good(&run(&r.lu, &r.a, &reserve, &[], 0));
    assert_eq!(
        run(&r.lu, &r.b, &reserve, &[], 0).status,
        Status::RESERVATION_CONFLICT
    );
    assert_good(&run(&r.lu, &r.b, &release, &[], 0)); // no-op for non-holder
    assert_eq!(
        run(&r.lu, &r.b, &[0x1a, 0, 0x3f, 0, 255, 0], &[], 255).status,
        Status::RESERVATION_CONFLICT
    );
    assert_good(&run(&r.lu, &r.b, &[0x12, 0, 0, 0, 36, 0], &[], 36));
    assert_good(&run(&r.lu, &r.a, &[0x1a, 0, 0x3f, 0, 255, 0], &[], 255));
    // PR commands conflict with an SPC-2 reservation, even for the holder.
    assert_eq!(pr_in(&r, &r.a, 0).status, Status::RESERVATION_CONFLICT);
    // Nexus loss releases it.
    r.lu.nexus_lost(&r.a);
    assert_good(&run(&r.lu, &r.b, &reserve, &[], 0));
    // LU reset releases it too, with a unit attention for everyone.
    r.lu.reset(asc::BUS_DEVICE_RESET);
    assert_check(&run(&r.lu, &r.b, &reserve, &[], 0), 6, (0x29, 0x03));
    assert_good(&run(&r.lu, &r.a, &reserve, &[], 0));
}

#[test]
fn unit_attentions_and_request_sense() {
    let r = rig();
    assert_good(&read10(&r, 0, 1));
    r.lu.capacity_changed();
    // INQUIRY does not report it; REQUEST SENSE returns and clears it.
    assert_good(&run(&r.lu, &r.a, &[0x12, 0, 0, 0, 36, 0], &[], 36));
    let c = run(&r.lu, &r.a, &[0x03, 0, 0, 0, 252, 0], &[], 252);
    assert_good(&c);
    assert_eq!((c.data[2], c.data[12], c.data[13]), (6, 0x2a, 0x09));
    let c = run(&r.lu, &r.a, &[0x03, 1, 0, 0, 252, 0], &[], 252);
    assert_eq!((c.data[0], c.data[1]), (0x72, 0));
    assert_good(&read10(&r, 0, 1));
}

pub(super) fn target_rig() -> (ScsiTarget, Rig) {
    let r = rig();
    let t = ScsiTarget::new(Registry::new());
    t.insert_lun(0, r.lu.clone());
    (t, r)
}

pub(super) fn trun(
    t: &ScsiTarget,
    lun: u64,
    n: &Arc<Nexus>,
    cdb: &[u8],
    expected_in: u32,
) -> Completion {
    t.execute(
        lun,
        &Command {
            nexus: n,
            cdb: ParsedCdb::parse(cdb),
            data_out: DataOut::default(),
            expected_in,
        },
    )
}

#[test]
fn target_luns_and_unit_attentions() {
    let (t, r) = target_rig();
    let rl = [0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0];
    let c = trun(&t, 5, &r.a, &rl, 256);
    assert_good(&c);
    assert_eq!(&c.data[..8], &[0, 0, 0, 8, 0, 0, 0, 0]);
    // Absent LUN: INQUIRY PQ=3, others 25/00, REQUEST SENSE data 25/00.
    let c = trun(&t, 5, &r.a, &[0x12, 0, 0, 0, 36, 0], 36);
    assert_eq!(c.data[0], 0x7f);
    assert_check(&trun(&t, 5, &r.a, &[0, 0, 0, 0, 0, 0], 0), 5, (0x25, 0));
    let c = trun(&t, 5, &r.a, &[0x03, 0, 0, 0, 18, 0], 18);
    assert_eq!((c.data[2], c.data[12]), (5, 0x25));
    // Adding a LUN: REPORTED LUNS DATA HAS CHANGED once, for known nexuses.
    assert_good(&trun(&t, 0, &r.a, &[0, 0, 0, 0, 0, 0], 0));
    t.insert_lun(1, r.lu.clone());
    assert_check(&trun(&t, 0, &r.a, &[0, 0, 0, 0, 0, 0], 0), 6, (0x3f, 0x0e));
    assert_good(&trun(&t, 0, &r.a, &[0, 0, 0, 0, 0, 0], 0));
    assert_good(&trun(&t, 0, &r.b, &[0, 0, 0, 0, 0, 0], 0));
    // REPORT LUNS clears it.
    t.remove_lun(1);
    let c = trun(&t, 0, &r.a, &rl, 256);
    assert_eq!(c.data[3], 8);
    assert_good(&trun(&t, 0, &r.a, &[0, 0, 0, 0, 0, 0], 0));
    assert_check(&trun(&t, 0, &r.b, &[0, 0, 0, 0, 0, 0], 0), 6, (0x3f, 0x0e));
    // LU reset: 29/03 for every nexus; target reset: 29/00.
    assert_eq!(t.logical_unit_reset(0, &r.a), TmfOutcome::Complete);
    assert_eq!(t.logical_unit_reset(9, &r.a), TmfOutcome::NoSuchLun);
    assert_check(&trun(&t, 0, &r.a, &[0, 0, 0, 0, 0, 0], 0), 6, (0x29, 0x03));
    assert_check(&trun(&t, 0, &r.b, &[0, 0, 0, 0, 0, 0], 0), 6, (0x29, 0x03));
    t.target_reset(&r.a);
    assert_check(&trun(&t, 0, &r.b, &[0, 0, 0, 0, 0, 0], 0), 6, (0x29, 0x00));
    t.nexus_lost(&r.a);
    assert_eq!(t.lun_numbers(), vec![0]);
}

#[test]
fn target_encodes_transport_sense_per_the_lus_d_sense() {
    let (t, r) = target_rig();
    let s = Sense::new(key::ABORTED_COMMAND, asc::DATA_OFFSET_ERROR);
    // Fixed format while D_SENSE is 0, and for a LUN that does not exist.
    let fixed = t.encode_sense(0, &s);
    assert_eq!(&fixed[..], &s.encode_fixed()[..]);
    assert_eq!(
        (fixed[0], fixed[2], fixed[12], fixed[13]),
        (0x70, 0x0b, 0x4b, 0x05)
    );
    // D_SENSE = 1 on LUN 0 (control mode page): descriptor format there.
    let cur = run(&r.lu, &r.a, &[0x1a, 0x08, 0x0a, 0, 255, 0], &[], 255);
    let mut params = vec![0, 0, 0, 0];
    params.extend_from_slice(&cur.data[4..]);
    params[4 + 2] |= 0x04;
    let sel = [0x15, 0x10, 0, 0, params.len() as u8, 0];
    assert_good(&run(&r.lu, &r.a, &sel, &params, 0));
    let desc = t.encode_sense(0, &s);
    assert_eq!(&desc[..], &s.encode_descriptor()[..]);
    assert_eq!(
        (desc[0], desc[1], desc[2], desc[3]),
        (0x72, 0x0b, 0x4b, 0x05)
    );
    assert_eq!(&t.encode_sense(7, &s)[..], &s.encode_fixed()[..]);
    // The transport's other data-phase errors are named in `sense`.
    assert_eq!(asc::DATA_PHASE_ERROR, (0x4b, 0x00));
    assert_eq!(asc::INVALID_TARGET_PORT_TRANSFER_TAG, (0x4b, 0x01));
    assert_eq!(asc::TOO_MUCH_WRITE_DATA, (0x4b, 0x02));
}

pub(super) fn xcopy_params(
    naa: &[u8; 16],
    src: u64,
    dst: u64,
    blocks: u16,
    dst_idx: u16,
) -> Vec<u8> {
    let mut p = vec![0u8; 16];
    p[0] = 1;
    p[3] = 32;
    p[11] = 28;
    let mut cscd = vec![0u8; 32];
    cscd[0] = 0xe4;
    cscd[4] = 0x01;
    cscd[5] = 0x03;
    cscd[7] = 16;
    cscd[8..24].copy_from_slice(naa);
    cscd[29..32].copy_from_slice(&(BS as u32).to_be_bytes()[1..]);
    p.extend_from_slice(&cscd);
    let mut seg = vec![0u8; 28];
    seg[0] = 0x02;
    seg[3] = 0x18;
    seg[6..8].copy_from_slice(&dst_idx.to_be_bytes());
    seg[10..12].copy_from_slice(&blocks.to_be_bytes());
    seg[12..20].copy_from_slice(&src.to_be_bytes());
    seg[20..28].copy_from_slice(&dst.to_be_bytes());
    p.extend_from_slice(&seg);
    p
}

#[test]
fn extended_copy_and_results() {
    let r = rig();
    let naa = r.lu.config().naa;
    let data: Vec<u8> = (0..4 * BS).map(|i| (i % 251) as u8).collect();
    assert_good(&write10(&r, 0, &data));
    let xcopy = |p: &[u8]| {
        let mut c = vec![0u8; 16];
        c[0] = 0x83;
        c[10..14].copy_from_slice(&(p.len() as u32).to_be_bytes());
        c
    };
    let p = xcopy_params(&naa, 0, 500, 4, 0);
    assert_good(&run(&r.lu, &r.a, &xcopy(&p), &p, 0));
    assert_eq!(&read10(&r, 500, 4).data[..], &data[..]);
    // COPY STATUS for list id 1 (held), unknown list id 2.
    let rcr = |sa: u8, id: u8| [0x84, sa, id, 0, 0, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0];
    let c = run(&r.lu, &r.a, &rcr(0, 1), &[], 1024);
    assert_good(&c);
    assert_eq!((c.data[4], c.data[6]), (1, 1));
    assert_check(&run(&r.lu, &r.a, &rcr(0, 2), &[], 1024), 5, (0x24, 0));
    assert_check(&run(&r.lu, &r.b, &rcr(0, 1), &[], 1024), 5, (0x24, 0));
    let c = run(&r.lu, &r.a, &rcr(3, 0), &[], 1024);
    assert_eq!(u16::from_be_bytes([c.data[8], c.data[9]]), 2);
    // Errors: bad destination index, beyond the end, unknown NAA, short list.
    let p = xcopy_params(&naa, 0, 0, 1, 1);
    assert_check(&run(&r.lu, &r.a, &xcopy(&p), &p, 0), 0x0a, (0x0d, 0x02));
    let p = xcopy_params(&naa, 0, BLOCKS - 1, 4, 0);
    assert_check(&run(&r.lu, &r.a, &xcopy(&p), &p, 0), 0x0a, (0, 0));
    let p = xcopy_params(&[0x60; 16], 0, 0, 1, 0);
    assert_check(&run(&r.lu, &r.a, &xcopy(&p), &p, 0), 0x0a, (0x0d, 0x02));
    let p = xcopy_params(&naa, 0, 0, 1, 0);
    assert_check(
        &run(&r.lu, &r.a, &xcopy(&p[..47]), &p[..47], 0),
        5,
        (0x1a, 0),
    );
    let mut q = p.clone();
    q[16] = 0xe0;
    assert_check(&run(&r.lu, &r.a, &xcopy(&q), &q, 0), 5, (0x26, 0x07));
    let mut q = p.clone();
    q[48] = 0x03;
    assert_check(&run(&r.lu, &r.a, &xcopy(&q), &q, 0), 5, (0x26, 0x09));
    assert_good(&run(&r.lu, &r.a, &xcopy(&[]), &[], 0));
    // Overlapping copy within the LU (destination above the source, more
    // than one chunk) preserves the source data.
    let dev = Arc::new(MemDevice::new(BS as u32, 8192));
    let registry = Registry::new();
    let cfg = LuConfig::new("BIG", LuConfig::naa_from_id(77));
    let r = Rig {
        lu: LogicalUnit::new(cfg, dev.clone(), &registry).unwrap(),
        dev,
        a: r.a.clone(),
        b: r.b.clone(),
    };
    let naa = r.lu.config().naa;
    let blocks = 3000u16;
    let big: Vec<u8> = (0..blocks as usize * BS)
        .map(|i| (i / BS % 253) as u8)
        .collect();
    for (k, chunk) in big.chunks(64 * BS).enumerate() {
        assert_good(&write10(&r, 10 + 64 * k as u32, chunk));
    }
    let p = xcopy_params(&naa, 10, 100, blocks, 0);
    let c = run(&r.lu, &r.a, &xcopy(&p), &p, 0);
    assert_good(&c);
    for (k, chunk) in big.chunks(64 * BS).enumerate() {
        let n = (chunk.len() / BS) as u16;
        assert_eq!(
            &read10(&r, 100 + 64 * k as u32, n).data[..],
            chunk,
            "chunk {k}"
        );
    }
}

#[test]
fn naa_from_id_is_stable_nnaa6() {
    let a = LuConfig::naa_from_id(0x1234_5678_9abc_def0_1122_3344_5566_7788);
    assert_eq!(a[0] >> 4, 6);
    assert_eq!(
        a,
        LuConfig::naa_from_id(0x1234_5678_9abc_def0_1122_3344_5566_7788)
    );
    assert_ne!(a, LuConfig::naa_from_id(1));
    assert_ne!(LuConfig::naa_from_id(1 << 120), LuConfig::naa_from_id(0));
}

/// One operation of the model test.
#[derive(Debug, Clone)]
enum Op {
    Write {
        lba: u64,
        blocks: u8,
        fill: u8,
    },
    Unmap {
        lba: u64,
        blocks: u8,
    },
    WriteSame {
        lba: u64,
        blocks: u8,
        fill: u8,
        unmap: bool,
    },
    Caw {
        lba: u64,
        fill: u8,
        matching: bool,
    },
    Read {
        lba: u64,
        blocks: u8,
    },
}

const MODEL_BLOCKS: u64 = 64;

fn op_strategy() -> impl Strategy<Value = Op> {
    let lba = 0..MODEL_BLOCKS + 2;
    prop_oneof![
        (lba.clone(), 0..6u8, any::<u8>()).prop_map(|(lba, blocks, fill)| Op::Write {
            lba,
            blocks,
            fill
        }),
        (lba.clone(), 0..6u8).prop_map(|(lba, blocks)| Op::Unmap { lba, blocks }),
        (lba.clone(), 0..6u8, any::<u8>(), any::<bool>()).prop_map(|(lba, blocks, fill, unmap)| {
            Op::WriteSame {
                lba,
                blocks,
                fill,
                unmap,
            }
        }),
        (lba.clone(), any::<u8>(), any::<bool>()).prop_map(|(lba, fill, matching)| Op::Caw {
            lba,
            fill,
            matching
        }),
        (lba, 0..6u8).prop_map(|(lba, blocks)| Op::Read { lba, blocks }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn data_path_matches_model(ops in proptest::collection::vec(op_strategy(), 1..40)) {
        let dev = Arc::new(MemDevice::new(BS as u32, MODEL_BLOCKS));
        let lu = LogicalUnit::new(LuConfig::new("M", LuConfig::naa_from_id(3)), dev, &Registry::new()).unwrap();
        let n = nexus("iqn.model", 1);
        let mut model = vec![0u8; MODEL_BLOCKS as usize * BS];
        let in_range = |lba: u64, blocks: u64| {
            if blocks == 0 { lba < MODEL_BLOCKS } else { lba + blocks <= MODEL_BLOCKS }
        };
        for op in ops {
            match op {
                Op::Write { lba, blocks, fill } => {
                    let data = vec![fill; blocks as usize * BS];
                    let c = run(&lu, &n, &cdb16(0x8a, 0, lba, blocks.into()), &data, 0);
                    if in_range(lba, blocks.into()) {
                        prop_assert_eq!(c.status, Status::GOOD);
                        let at = lba as usize * BS;
                        model[at..at + data.len()].copy_from_slice(&data);
                    } else {
                        prop_assert_eq!(sense_of(&c), (5, 0x21, 0));
                    }
                }
                Op::Unmap { lba, blocks } => {
                    let mut p = vec![0u8; 24];
                    p[1] = 22;
                    p[3] = 16;
                    p[8..16].copy_from_slice(&lba.to_be_bytes());
                    p[16..20].copy_from_slice(&u32::from(blocks).to_be_bytes());
                    let c = run(&lu, &n, &cdb10(0x42, 0, 0, 24), &p, 0);
                    if blocks == 0 || lba + u64::from(blocks) <= MODEL_BLOCKS {
                        prop_assert_eq!(c.status, Status::GOOD);
                        let at = lba as usize * BS;
                        if blocks > 0 {
                            model[at..at + blocks as usize * BS].fill(0);
                        }
                    } else {
                        prop_assert_eq!(sense_of(&c), (5, 0x21, 0));
                    }
                }
                Op::WriteSame { lba, blocks, fill, unmap } => {
                    let fill = if unmap { 0 } else { fill };
                    let flags = if unmap { 0x08 } else { 0 };
                    let c = run(&lu, &n, &cdb16(0x93, flags, lba, blocks.into()), &vec![fill; BS], 0);
                    if blocks == 0 {
                        prop_assert_eq!(c.status, Status::CHECK_CONDITION);
                    } else if in_range(lba, blocks.into()) {
                        prop_assert_eq!(c.status, Status::GOOD);
                        let at = lba as usize * BS;
                        model[at..at + blocks as usize * BS].fill(fill);
                    } else {
                        prop_assert_eq!(sense_of(&c), (5, 0x21, 0));
                    }
                }
                Op::Caw { lba, fill, matching } => {
                    let at = lba as usize * BS;
                    let mut data = if in_range(lba, 1) {
                        model[at..at + BS].to_vec()
                    } else {
                        vec![0; BS]
                    };
                    if !matching {
                        data[17] ^= 0x5a;
                    }
                    data.extend_from_slice(&[fill; BS]);
                    let mut cdb = cdb16(0x89, 0, lba, 0);
                    cdb[13] = 1;
                    let c = run(&lu, &n, &cdb, &data, 0);
                    if !in_range(lba, 1) {
                        prop_assert_eq!(sense_of(&c), (5, 0x21, 0));
                    } else if matching {
                        prop_assert_eq!(c.status, Status::GOOD);
                        model[at..at + BS].fill(fill);
                    } else {
                        prop_assert_eq!(sense_of(&c), (0x0e, 0x1d, 0));
                        prop_assert_eq!(info_of(&c), Some(17));
                    }
                }
                Op::Read { lba, blocks } => {
                    let len = blocks as u32 * BS as u32;
                    let c = run(&lu, &n, &cdb16(0x88, 0, lba, blocks.into()), &[], len);
                    if in_range(lba, blocks.into()) {
                        prop_assert_eq!(c.status, Status::GOOD);
                        let at = lba as usize * BS;
                        prop_assert_eq!(&c.data[..], &model[at..at + len as usize]);
                    } else {
                        prop_assert_eq!(sense_of(&c), (5, 0x21, 0));
                    }
                }
            }
        }
    }
}

pub(super) fn nowait(
    lu: &LogicalUnit,
    n: &Arc<Nexus>,
    cdb: &[u8],
    out: &[u8],
    expected_in: u32,
) -> Option<Completion> {
    let pieces = [Bytes::copy_from_slice(out)];
    lu.try_execute_nowait(&Command {
        nexus: n,
        cdb: ParsedCdb::parse(cdb),
        data_out: DataOut::new(&pieces),
        expected_in,
    })
    .map(done)
}

/// The completion of an inline command that completed inline.
pub(super) fn done(n: crate::Nowait) -> Completion {
    match n {
        crate::Nowait::Done(c) => c,
        crate::Nowait::Later(_) => panic!("a device that never defers deferred"),
    }
}

/// A device that can never complete without blocking (the trait default).
struct Slow(MemDevice);

impl BlockDevice for Slow {
    fn block_size(&self) -> u32 {
        self.0.block_size()
    }
    fn num_blocks(&self) -> u64 {
        self.0.num_blocks()
    }
    fn read(&self, lba: u64, buf: &mut [u8]) -> depot_block::BlockResult<()> {
        self.0.read(lba, buf)
    }
    fn write(&self, lba: u64, data: &[u8], fua: bool) -> depot_block::BlockResult<()> {
        self.0.write(lba, data, fua)
    }
    fn flush(&self) -> depot_block::BlockResult<()> {
        self.0.flush()
    }
}

#[test]
fn nowait_path_matches_execute_and_declines_what_it_cannot_finish() {
    let r = rig();
    // First contact goes through execute (it registers the nexus for unit
    // attentions); until then the fast path declines.
    assert!(nowait(&r.lu, &r.a, &cdb10(0x28, 0, 0, 1), &[], 512).is_none());
    assert_good(&run(&r.lu, &r.a, &[0, 0, 0, 0, 0, 0], &[], 0));

    // Cached write and read complete inline, with the same data and
    // residuals as the blocking path.
    let data: Vec<u8> = (0..2 * BS).map(|i| (i % 251) as u8).collect();
    let w = nowait(&r.lu, &r.a, &cdb10(0x2a, 0, 10, 2), &data, 0).expect("inline write");
    assert_good(&w);
    assert_eq!(w.transfer_length, 2 * BS as u32);
    let fast =
        nowait(&r.lu, &r.a, &cdb16(0x88, 0, 10, 2), &[], 2 * BS as u32).expect("inline read");
    let slow = read10(&r, 10, 2);
    assert_good(&fast);
    assert_eq!(fast.data, slow.data);
    assert_eq!(&fast.data[..], &data[..]);
    assert_eq!(fast.transfer_length, slow.transfer_length);
    // A short allocation: data cut to what the initiator expects.
    let short = nowait(&r.lu, &r.a, &cdb10(0x28, 0, 10, 2), &[], BS as u32).unwrap();
    assert_eq!(short.data.len(), BS);
    assert_eq!(short.transfer_length, 2 * BS as u32);

    // FUA, out of range, other opcodes: declined, nothing written.
    assert!(nowait(&r.lu, &r.a, &cdb10(0x2a, 0x08, 20, 1), &[7; BS], 0).is_none());
    assert!(nowait(&r.lu, &r.a, &cdb10(0x28, 0, BLOCKS as u32, 1), &[], 512).is_none());
    assert!(nowait(&r.lu, &r.a, &[0, 0, 0, 0, 0, 0], &[], 0).is_none());
    let mut back = vec![0u8; BS];
    r.dev.read(20, &mut back).unwrap();
    assert!(back.iter().all(|b| *b == 0));

    // A pending unit attention is left for the blocking path to report.
    r.lu.reset(asc::BUS_DEVICE_RESET);
    assert!(nowait(&r.lu, &r.a, &cdb10(0x28, 0, 0, 1), &[], 512).is_none());
    assert_check(&read10(&r, 0, 1), 6, (0x29, 0x03));
    assert!(nowait(&r.lu, &r.a, &cdb10(0x28, 0, 0, 1), &[], 512).is_some());

    // A reservation conflict is also the blocking path's to report.
    assert_good(&run(&r.lu, &r.b, &[0, 0, 0, 0, 0, 0], &[], 0));
    assert_good(&pr_out(&r, &r.a, 6, 0, 0, 0xaa, 0));
    assert_good(&pr_out(&r, &r.a, 1, 3, 0xaa, 0, 0));
    assert!(nowait(&r.lu, &r.b, &cdb10(0x28, 0, 0, 1), &[], 512).is_none());
    assert!(nowait(&r.lu, &r.a, &cdb10(0x28, 0, 0, 1), &[], 512).is_some());
}

#[test]
fn nowait_declines_on_a_device_that_would_block() {
    let dev = Arc::new(Slow(MemDevice::new(BS as u32, BLOCKS)));
    let lu = LogicalUnit::new(
        LuConfig::new("SN0002", LuConfig::naa_from_id(43)),
        dev.clone(),
        &Registry::new(),
    )
    .unwrap();
    let a = nexus("iqn.test:a", 1);
    assert_good(&run(&lu, &a, &[0, 0, 0, 0, 0, 0], &[], 0));
    assert!(nowait(&lu, &a, &cdb10(0x2a, 0, 0, 1), &[9; BS], 0).is_none());
    assert!(nowait(&lu, &a, &cdb10(0x28, 0, 0, 1), &[], 512).is_none());
    let mut back = vec![0u8; BS];
    dev.read(0, &mut back).unwrap();
    assert!(back.iter().all(|b| *b == 0));
}

/// A device that completes single-buffer writes inline but keeps the
/// trait's default for pieces (passes one through, declines several).
struct OnePiece(MemDevice);

impl BlockDevice for OnePiece {
    fn block_size(&self) -> u32 {
        self.0.block_size()
    }
    fn num_blocks(&self) -> u64 {
        self.0.num_blocks()
    }
    fn read(&self, lba: u64, buf: &mut [u8]) -> depot_block::BlockResult<()> {
        self.0.read(lba, buf)
    }
    fn write(&self, lba: u64, data: &[u8], fua: bool) -> depot_block::BlockResult<()> {
        self.0.write(lba, data, fua)
    }
    fn try_write_nowait(&self, lba: u64, data: &[u8]) -> depot_block::BlockResult<bool> {
        self.0.try_write_nowait(lba, data)
    }
    fn flush(&self) -> depot_block::BlockResult<()> {
        self.0.flush()
    }
}

/// The inline try of a command whose data-out arrives in `cuts.len() + 1`
/// pieces, cut at the given offsets.
fn nowait_in_pieces(
    lu: &LogicalUnit,
    n: &Arc<Nexus>,
    cdb: &[u8],
    out: &[u8],
    cuts: &[usize],
) -> Option<Completion> {
    let mut pieces = Vec::new();
    let mut at = 0;
    for &cut in cuts.iter().chain([out.len()].iter()) {
        pieces.push(Bytes::copy_from_slice(&out[at..cut]));
        at = cut;
    }
    lu.try_execute_nowait(&Command {
        nexus: n,
        cdb: ParsedCdb::parse(cdb),
        data_out: DataOut::new(&pieces),
        expected_in: 0,
    })
    .map(done)
}

#[test]
fn inline_write_in_several_pieces_completes_inline_without_gathering() {
    let r = rig();
    assert_good(&run(&r.lu, &r.a, &[0, 0, 0, 0, 0, 0], &[], 0));
    let data: Vec<u8> = (0..3 * BS).map(|i| (i % 249) as u8).collect();
    // Pieces cut off block boundaries, one of them empty: MemDevice stores
    // them as they are, inline.
    let w = nowait_in_pieces(
        &r.lu,
        &r.a,
        &cdb10(0x2a, 0, 30, 3),
        &data,
        &[100, 100, 700, 1300],
    )
    .expect("inline write in pieces");
    assert_good(&w);
    assert_eq!(w.transfer_length, 3 * BS as u32);
    let back = read10(&r, 30, 3);
    assert_eq!(&back.data[..], &data[..]);

    // A device that only completes single buffers inline: several pieces
    // are declined (nothing written) and go the blocking way; one piece
    // still completes inline.
    let dev = Arc::new(OnePiece(MemDevice::new(BS as u32, BLOCKS)));
    let lu = LogicalUnit::new(
        LuConfig::new("SN0003", LuConfig::naa_from_id(44)),
        dev.clone(),
        &Registry::new(),
    )
    .unwrap();
    assert_good(&run(&lu, &r.a, &[0, 0, 0, 0, 0, 0], &[], 0));
    assert!(nowait_in_pieces(&lu, &r.a, &cdb10(0x2a, 0, 0, 3), &data, &[700]).is_none());
    let mut back = vec![0u8; 3 * BS];
    dev.read(0, &mut back).unwrap();
    assert!(back.iter().all(|b| *b == 0));
    let one = nowait_in_pieces(&lu, &r.a, &cdb10(0x2a, 0, 0, 3), &data, &[]);
    assert_good(&one.expect("inline write in one piece"));
    dev.read(0, &mut back).unwrap();
    assert_eq!(back, data);
}
