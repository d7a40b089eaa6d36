//! Unit tests for the device server: raw CDBs through `LogicalUnit::execute`
//! and `ScsiTarget::execute` over `MemDevice`, asserting status, sense and
//! data; plus a proptest model test of the data path.

use std::sync::Arc;

use depot_block::{BlockDevice, MemDevice};

use super::*;
use crate::ScsiTarget;

const BS: usize = 512;
const BLOCKS: u64 = 1024;

struct Rig {
    lu: Arc<LogicalUnit>,
    dev: Arc<MemDevice>,
    a: Arc<Nexus>,
    b: Arc<Nexus>,
}

fn nexus(name: &str, isid: u8) -> Arc<Nexus> {
    Arc::new(Nexus {
        initiator_name: name.into(),
        isid: [0x80, 0, 0, 0, 0, isid],
        target_name: "iqn.2026-01.test:depot".into(),
        tpgt: 1,
        relative_port_id: 1,
    })
}

fn rig_with(config: LuConfig) -> Rig {
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

fn rig() -> Rig {
    rig_with(LuConfig::new("SN0001", LuConfig::naa_from_id(42)))
}

fn run(lu: &LogicalUnit, n: &Arc<Nexus>, cdb: &[u8], out: &[u8], expected_in: u32) -> Completion {
    lu.execute(&Command {
        nexus: n,
        cdb,
        data_out: out,
        expected_in,
    })
}

/// (key, asc, ascq) of a fixed-format sense in `c`.
fn sense_of(c: &Completion) -> (u8, u8, u8) {
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

fn assert_good(c: &Completion) {
    assert_eq!(c.status, Status::GOOD, "sense {:?}", c.sense.as_ref().map(|s| s.to_vec()));
}

fn assert_check(c: &Completion, key: u8, code: (u8, u8)) {
    assert_eq!(c.status, Status::CHECK_CONDITION);
    assert_eq!(sense_of(c), (key, code.0, code.1));
}

fn cdb10(op: u8, flags: u8, lba: u32, blocks: u16) -> Vec<u8> {
    let mut c = vec![0u8; 10];
    c[0] = op;
    c[1] = flags;
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[7..9].copy_from_slice(&blocks.to_be_bytes());
    c
}

fn cdb16(op: u8, flags: u8, lba: u64, blocks: u32) -> Vec<u8> {
    let mut c = vec![0u8; 16];
    c[0] = op;
    c[1] = flags;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&blocks.to_be_bytes());
    c
}

fn write10(r: &Rig, lba: u32, data: &[u8]) -> Completion {
    let n = (data.len() / BS) as u16;
    run(&r.lu, &r.a, &cdb10(0x2a, 0, lba, n), data, 0)
}

fn read10(r: &Rig, lba: u32, blocks: u16) -> Completion {
    run(&r.lu, &r.a, &cdb10(0x28, 0, lba, blocks), &[], blocks as u32 * BS as u32)
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
    let c = run(&r.lu, &r.a, &cdb10(0x28, 0, BLOCKS as u32 - 1, 2), &[], 1024);
    assert_check(&c, 5, (0x21, 0));
    // Zero blocks: fine inside, out of range past the end.
    assert_good(&run(&r.lu, &r.a, &cdb10(0x28, 0, 0, 0), &[], 0));
    let c = run(&r.lu, &r.a, &cdb10(0x2a, 0, BLOCKS as u32 + 1, 0), &[], 0);
    assert_check(&c, 5, (0x21, 0));
    let c = run(&r.lu, &r.a, &[0xc5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[], 0);
    assert_check(&c, 5, (0x20, 0));
    // RDPROTECT without protection information.
    let c = run(&r.lu, &r.a, &cdb10(0x28, 0x20, 0, 1), &[], 512);
    assert_check(&c, 5, (0x24, 0));
}
