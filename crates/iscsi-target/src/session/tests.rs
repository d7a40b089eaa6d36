//! Unit tests of the session core, fed PDUs built with the initiator
//! encoder of depot-iscsi-proto, answering through a recording host.

// Test data patterns and task tags from small counters.
#![allow(clippy::cast_possible_truncation)]

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use depot_block::MemDevice;
use depot_iscsi_proto::encode::{StatSn, TargetPdu};
use depot_iscsi_proto::initiator;
use depot_iscsi_proto::params::SessionParams;
use depot_iscsi_proto::pdu::{Header, Pdu, TaskAttr, op};
use depot_iscsi_proto::serial;
use depot_iscsi_proto::text::KeyValues;
use depot_scsi::{Completion, LogicalUnit, LuConfig, Registry, ScsiTarget, Status};

use super::login::SessionType;
use super::*;
use crate::registry::Access;

const TARGET: &str = "iqn.2026-11.io.depot:vm1";
const INITIATOR: &str = "iqn.2026-01.test:initiator";
const FIRST_CMD_SN: u32 = 100;
const LUN0: [u8; 8] = [0; 8];

/// What the core asked an execution host to run.
#[derive(Debug)]
struct Executed {
    itt: u32,
    lun: u64,
    cdb: depot_scsi::ParsedCdb,
    data: Vec<Bytes>,
    expected_in: u32,
}

/// A host that records everything and stamps PDUs as the writer does.
#[derive(Default)]
struct Recorder {
    stat_sn: u32,
    window: (u32, u32),
    /// Every window published, in order.
    windows: Vec<(u32, u32)>,
    sent: Vec<TargetPdu>,
    executed: Vec<Executed>,
    /// Completions to return inline, in order; empty: "runs elsewhere".
    inline: VecDeque<Completion>,
}

impl Recorder {
    fn take(&mut self) -> Vec<TargetPdu> {
        std::mem::take(&mut self.sent)
    }
}

impl Wire for Recorder {
    fn send(&mut self, mut pdu: TargetPdu) {
        pdu.stamp(self.stat_sn, self.window.0, self.window.1);
        if pdu.stat_sn == StatSn::Advance {
            self.stat_sn = self.stat_sn.wrapping_add(1);
        }
        self.sent.push(pdu);
    }

    fn publish_window(&mut self, exp_cmd_sn: u32, max_cmd_sn: u32) {
        if let Some(&(_, prev)) = self.windows.last() {
            assert!(serial::le(prev, max_cmd_sn), "MaxCmdSN went back");
        }
        self.window = (exp_cmd_sn, max_cmd_sn);
        self.windows.push(self.window);
    }
}

impl Host for Recorder {
    fn execute(&mut self, exec: Exec<'_>) -> Option<Completion> {
        self.executed.push(Executed {
            itt: exec.itt,
            lun: exec.lun,
            cdb: exec.cdb,
            data: exec.data,
            expected_in: exec.expected_in,
        });
        self.inline.pop_front()
    }
}

// ---- reading target PDUs ----

fn word(p: &TargetPdu, at: usize) -> u32 {
    u32::from_be_bytes(p.header[at..at + 4].try_into().unwrap())
}

fn itt(p: &TargetPdu) -> u32 {
    word(p, 16)
}

fn opcodes(sent: &[TargetPdu]) -> Vec<u8> {
    sent.iter().map(TargetPdu::opcode).collect()
}

/// (sense key, ASC, ASCQ) of a SCSI Response carrying fixed-format sense.
fn sense_of(p: &TargetPdu) -> (u8, u8, u8) {
    assert_eq!(p.opcode(), op::SCSI_RESPONSE);
    assert_eq!(p.header[3], Status::CHECK_CONDITION.0);
    let s = &p.data[2..];
    assert_eq!(
        usize::from(u16::from_be_bytes([p.data[0], p.data[1]])),
        s.len()
    );
    assert_eq!(s[0] & 0x7f, 0x70);
    (s[2] & 0x0f, s[12], s[13])
}

// ---- building initiator PDUs ----

fn pdu(h: Header, data: &[u8]) -> Pdu {
    initiator::pdu(&h, data)
}

fn cdb(opcode: u8) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = opcode;
    c
}

fn read_cmd(itt: u32, cmd_sn: u32, edtl: u32) -> Header {
    Header::ScsiCommand {
        immediate: false,
        final_bit: true,
        read: true,
        write: false,
        attr: TaskAttr::Simple,
        lun: LUN0,
        itt,
        edtl,
        cmd_sn,
        exp_stat_sn: 0,
        cdb: cdb(0x28),
    }
}

fn write_cmd(itt: u32, cmd_sn: u32, edtl: u32, final_bit: bool) -> Header {
    Header::ScsiCommand {
        immediate: false,
        final_bit,
        read: false,
        write: true,
        attr: TaskAttr::Simple,
        lun: LUN0,
        itt,
        edtl,
        cmd_sn,
        exp_stat_sn: 0,
        cdb: cdb(0x2a),
    }
}

fn data_out(itt: u32, ttt: u32, data_sn: u32, offset: u32, final_bit: bool) -> Header {
    Header::DataOut {
        final_bit,
        lun: LUN0,
        itt,
        ttt,
        exp_stat_sn: 0,
        data_sn,
        buffer_offset: offset,
    }
}

fn nop_out(itt: u32, ttt: u32, cmd_sn: u32, immediate: bool) -> Header {
    Header::NopOut {
        immediate,
        lun: LUN0,
        itt,
        ttt,
        cmd_sn,
        exp_stat_sn: 0,
    }
}

fn tmf(function: u8, itt: u32, cmd_sn: u32, ref_task_tag: u32, ref_cmd_sn: u32) -> Header {
    Header::TaskMgmt {
        immediate: true,
        function,
        lun: LUN0,
        itt,
        ref_task_tag,
        cmd_sn,
        exp_stat_sn: 0,
        ref_cmd_sn,
        exp_data_sn: 0,
    }
}

fn text_req(itt: u32, ttt: u32, cmd_sn: u32) -> Header {
    Header::Text {
        immediate: true,
        final_bit: true,
        cont: false,
        lun: LUN0,
        itt,
        ttt,
        cmd_sn,
        exp_stat_sn: 0,
    }
}

fn bytes(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn good(data: Vec<u8>, transfer_length: u32) -> Completion {
    Completion {
        status: Status::GOOD,
        sense: None,
        data: Bytes::from(data),
        transfer_length,
    }
}

// ---- the rig ----

struct Rig {
    session: Session,
    host: Recorder,
    registry: Arc<TargetRegistry>,
}

fn registry_with_target() -> (Arc<TargetRegistry>, Arc<TargetEntry>) {
    let registry = TargetRegistry::new();
    let scsi = Arc::new(ScsiTarget::new(Registry::new()));
    let lu = LogicalUnit::new(
        LuConfig::new("SN0001", LuConfig::naa_from_id(7)),
        Arc::new(MemDevice::new(512, 2048)),
        scsi.registry(),
    )
    .unwrap();
    scsi.insert_lun(0, lu);
    let target = registry
        .add_target(TARGET, None, scsi, Access::default())
        .unwrap();
    (registry, target)
}

fn rig_with(config: PortalConfig, tune: impl FnOnce(&mut SessionParams)) -> Rig {
    let (registry, target) = registry_with_target();
    let mut params = SessionParams::new(&config.limits);
    tune(&mut params);
    let est = Established {
        kind: SessionType::Normal,
        initiator: INITIATOR.into(),
        isid: [0x80, 0, 0, 0, 0, 1],
        tsih: 1,
        target: Some(target),
        params,
        cmd_sn: FIRST_CMD_SN,
        cid: 0,
    };
    let mut host = Recorder::default();
    let session = Session::new(
        est,
        registry.clone(),
        Arc::new(config),
        "192.0.2.1:3260".parse().unwrap(),
        &mut host,
    );
    Rig {
        session,
        host,
        registry,
    }
}

fn rig() -> Rig {
    rig_with(PortalConfig::default(), |_| {})
}

impl Rig {
    fn feed(&mut self, h: Header, data: &[u8]) -> Vec<TargetPdu> {
        self.feed_pdu(pdu(h, data))
    }

    fn feed_pdu(&mut self, p: Pdu) -> Vec<TargetPdu> {
        self.session.receive(p, &mut self.host).unwrap();
        self.host.take()
    }

    fn complete(&mut self, itt: u32, c: Completion) -> Vec<TargetPdu> {
        self.session.complete(itt, c, &mut self.host);
        self.host.take()
    }
}

// ---- CmdSN window ----

#[test]
fn cmd_sn_window_delivers_in_order_and_drops_outside() {
    let mut r = rig_with(
        PortalConfig {
            queue_depth: 4,
            ..PortalConfig::default()
        },
        |_| {},
    );
    assert_eq!(r.host.window, (FIRST_CMD_SN, FIRST_CMD_SN + 3));
    // Ahead of ExpCmdSN: held back.
    assert!(r.feed(nop_out(2, RESERVED_TAG, 102, false), b"").is_empty());
    assert!(r.feed(nop_out(1, RESERVED_TAG, 101, false), b"").is_empty());
    // A duplicate of a waiting CmdSN and CmdSNs outside the window: dropped.
    assert!(r.feed(nop_out(9, RESERVED_TAG, 102, false), b"").is_empty());
    assert!(r.feed(nop_out(9, RESERVED_TAG, 99, false), b"").is_empty());
    assert!(r.feed(nop_out(9, RESERVED_TAG, 104, false), b"").is_empty());
    // The missing one releases all three, in CmdSN order.
    let sent = r.feed(nop_out(0, RESERVED_TAG, 100, false), b"");
    assert_eq!(opcodes(&sent), [op::NOP_IN; 3]);
    assert_eq!(sent.iter().map(itt).collect::<Vec<_>>(), [0, 1, 2]);
    assert_eq!(r.host.window, (103, 106));
    // StatSN advances once per response.
    assert_eq!(
        sent.iter().map(|p| word(p, 24)).collect::<Vec<_>>(),
        [0, 1, 2]
    );
}

#[test]
fn max_cmd_sn_closes_with_live_tasks_but_never_decreases() {
    let mut r = rig_with(
        PortalConfig {
            queue_depth: 4,
            ..PortalConfig::default()
        },
        |_| {},
    );
    for i in 0..3 {
        assert!(r.feed(read_cmd(i, FIRST_CMD_SN + i, 512), b"").is_empty());
    }
    // Three tasks run: ExpCmdSN moved, MaxCmdSN stayed.
    assert_eq!(r.host.window, (103, 103));
    let sent = r.complete(0, good(vec![0; 512], 512));
    assert_eq!(sent.len(), 1);
    assert_eq!((word(&sent[0], 28), word(&sent[0], 32)), (103, 104));
    // The recorder asserts on every publish that MaxCmdSN never went back.
    assert!(r.host.windows.len() > 4);
}

#[test]
fn immediate_commands_bypass_the_window_but_are_bounded() {
    let mut r = rig_with(
        PortalConfig {
            queue_depth: 1,
            ..PortalConfig::default()
        },
        |_| {},
    );
    let mut imm = read_cmd(1, 500, 512);
    if let Header::ScsiCommand { immediate, .. } = &mut imm {
        *immediate = true;
    }
    assert!(r.feed(imm.clone(), b"").is_empty());
    assert_eq!(r.host.executed.len(), 1);
    assert_eq!(
        r.host.window.0, FIRST_CMD_SN,
        "immediate CmdSN not consumed"
    );
    if let Header::ScsiCommand { itt, .. } = &mut imm {
        *itt = 2;
    }
    assert!(r.feed(imm.clone(), b"").is_empty());
    // Twice the queue depth of tasks: the next immediate one is rejected.
    if let Header::ScsiCommand { itt, .. } = &mut imm {
        *itt = 3;
    }
    let sent = r.feed(imm, b"");
    assert_eq!(opcodes(&sent), [op::REJECT]);
    assert_eq!(sent[0].header[2], reject::IMMEDIATE_REJECT);
}

// ---- writes ----

#[test]
fn write_collects_immediate_unsolicited_and_solicited_data_in_order() {
    let mut r = rig_with(PortalConfig::default(), |p| {
        p.immediate_data = true;
        p.initial_r2t = false;
        p.first_burst_length = 8192;
        p.max_burst_length = 4096;
        p.max_outstanding_r2t = 1;
    });
    let all = bytes(16384, 3);
    let (itt, edtl) = (0x10, 16384);
    // Immediate data, more unsolicited to follow (F clear).
    assert!(
        r.feed(write_cmd(itt, FIRST_CMD_SN, edtl, false), &all[..2048])
            .is_empty()
    );
    assert!(
        r.feed(
            data_out(itt, RESERVED_TAG, 0, 2048, false),
            &all[2048..6144]
        )
        .is_empty()
    );
    // The unsolicited burst ends: the rest is solicited, one R2T at a time
    // of at most MaxBurstLength.
    let sent = r.feed(data_out(itt, RESERVED_TAG, 1, 6144, true), &all[6144..8192]);
    assert_eq!(opcodes(&sent), [op::R2T]);
    let r2t = &sent[0];
    let ttt = word(r2t, 20);
    assert_ne!(ttt, RESERVED_TAG);
    assert_eq!(
        (word(r2t, 36), word(r2t, 40), word(r2t, 44)),
        (0, 8192, 4096)
    );
    assert_eq!(r.host.stat_sn, 0, "R2T does not advance StatSN");
    let sent = r.feed(data_out(itt, ttt, 0, 8192, true), &all[8192..12288]);
    assert_eq!(opcodes(&sent), [op::R2T]);
    let ttt2 = word(&sent[0], 20);
    assert_ne!(ttt2, ttt);
    assert_eq!(
        (word(&sent[0], 36), word(&sent[0], 40), word(&sent[0], 44)),
        (1, 12288, 4096)
    );
    assert!(r.host.executed.is_empty());
    // Two PDUs for the last R2T; DataSN restarts at 0 per R2T.
    assert!(
        r.feed(data_out(itt, ttt2, 0, 12288, false), &all[12288..14336])
            .is_empty()
    );
    assert!(
        r.feed(data_out(itt, ttt2, 1, 14336, true), &all[14336..])
            .is_empty()
    );
    let ex = r.host.executed.pop().unwrap();
    assert_eq!(
        (ex.itt, ex.lun, ex.expected_in, ex.cdb.opcode().unwrap()),
        (itt, 0, 0, 0x2a)
    );
    assert_eq!(ex.data.len(), 6);
    assert_eq!(ex.data.concat(), all);
    let sent = r.complete(itt, good(Vec::new(), edtl));
    assert_eq!(opcodes(&sent), [op::SCSI_RESPONSE]);
    assert_eq!(sent[0].header[3], Status::GOOD.0);
    // ExpDataSN counts the R2Ts; no residual.
    assert_eq!((word(&sent[0], 36), word(&sent[0], 44)), (2, 0));
    assert_eq!(sent[0].header[1], 0x80);
}

/// A rig with one write of `edtl` bytes waiting for the data of its first
/// R2T; returns the R2T's TTT.
fn r2t_write(r: &mut Rig, itt: u32, cmd_sn: u32, edtl: u32) -> u32 {
    let sent = r.feed(write_cmd(itt, cmd_sn, edtl, true), b"");
    assert_eq!(opcodes(&sent), [op::R2T]);
    word(&sent[0], 20)
}

#[test]
fn broken_data_phases_fail_the_task_with_aborted_command() {
    let mut r = rig();
    let d = bytes(4096, 1);
    let cases: [(&str, u32, u32, (u8, u8)); 3] = [
        ("DataSN", 1, 0, (0x4b, 0x00)),
        ("offset", 0, 512, (0x4b, 0x05)),
        ("too much", 0, 0, (0x4b, 0x02)),
    ];
    for (i, (what, data_sn, offset, code)) in cases.into_iter().enumerate() {
        let itt = i as u32;
        let ttt = r2t_write(&mut r, itt, FIRST_CMD_SN + itt, 2048);
        let len = if what == "too much" { 4096 } else { 512 };
        let sent = r.feed(data_out(itt, ttt, data_sn, offset, false), &d[..len]);
        assert_eq!(opcodes(&sent), [op::SCSI_RESPONSE], "{what}");
        assert_eq!(sense_of(&sent[0]), (0x0b, code.0, code.1), "{what}");
        // The whole transfer counts as not done: no residual; one R2T.
        assert_eq!((word(&sent[0], 36), word(&sent[0], 44)), (1, 0), "{what}");
        // Later data for the failed task is dropped quietly.
        assert!(
            r.feed(data_out(itt, ttt, 0, 0, true), &d[..2048])
                .is_empty()
        );
    }
    // An unknown transfer tag.
    let itt = 7;
    let ttt = r2t_write(&mut r, itt, FIRST_CMD_SN + 3, 2048);
    let sent = r.feed(data_out(itt, ttt ^ 0x55, 0, 0, true), &d[..2048]);
    assert_eq!(sense_of(&sent[0]), (0x0b, 0x4b, 0x01));
    // A sequence that ends short of its R2T.
    let itt = 8;
    let ttt = r2t_write(&mut r, itt, FIRST_CMD_SN + 4, 2048);
    let sent = r.feed(data_out(itt, ttt, 0, 0, true), &d[..1024]);
    assert_eq!(sense_of(&sent[0]), (0x0b, 0x4b, 0x00));
    assert!(r.host.executed.is_empty());
    assert_eq!(r.session.running(), 0);
}

#[test]
fn unsolicited_data_beyond_the_first_burst_is_too_much() {
    let mut r = rig_with(PortalConfig::default(), |p| {
        p.initial_r2t = false;
        p.first_burst_length = 1024;
    });
    assert!(
        r.feed(write_cmd(1, FIRST_CMD_SN, 4096, false), b"")
            .is_empty()
    );
    let sent = r.feed(data_out(1, RESERVED_TAG, 0, 0, true), &[0; 2048]);
    assert_eq!(sense_of(&sent[0]), (0x0b, 0x4b, 0x02));
}

#[test]
fn data_digest_error_rejects_the_pdu_and_fails_the_task() {
    let mut r = rig();
    let ttt = r2t_write(&mut r, 1, FIRST_CMD_SN, 1024);
    let mut p = pdu(data_out(1, ttt, 0, 0, true), &[0; 1024]);
    p.data_digest_error = true;
    let sent = r.feed_pdu(p);
    assert_eq!(opcodes(&sent), [op::REJECT, op::SCSI_RESPONSE]);
    assert_eq!(sent[0].header[2], reject::DATA_DIGEST);
    assert_eq!(sense_of(&sent[1]), (0x0b, 0x47, 0x05));
    assert!(r.host.executed.is_empty());
}

#[test]
fn a_write_larger_than_accepted_fails_without_collecting() {
    let mut r = rig_with(
        PortalConfig {
            max_write_transfer: 4096,
            ..PortalConfig::default()
        },
        |_| {},
    );
    let sent = r.feed(write_cmd(1, FIRST_CMD_SN, 8192, true), b"");
    assert_eq!(opcodes(&sent), [op::SCSI_RESPONSE]);
    assert_eq!(sense_of(&sent[0]), (0x05, 0x24, 0x00));
}

#[test]
fn data_out_for_a_running_task_closes_the_connection() {
    let mut r = rig();
    let ttt = r2t_write(&mut r, 1, FIRST_CMD_SN, 512);
    assert!(r.feed(data_out(1, ttt, 0, 0, true), &[0; 512]).is_empty());
    assert_eq!(r.host.executed.len(), 1);
    let extra = pdu(data_out(1, ttt, 1, 512, true), &[0; 512]);
    assert!(matches!(
        r.session.receive(extra, &mut r.host),
        Err(Fault::Violation(_))
    ));
}

// ---- reads ----

#[test]
fn read_data_is_cut_by_mrdsl_and_burst_with_status_and_residual_last() {
    let mut r = rig_with(PortalConfig::default(), |p| {
        p.initiator_mrdsl = 1024;
        p.max_burst_length = 2048;
    });
    let edtl = 5000;
    assert!(r.feed(read_cmd(9, FIRST_CMD_SN, edtl), b"").is_empty());
    let ex = &r.host.executed[0];
    assert_eq!((ex.itt, ex.expected_in, ex.data.len()), (9, edtl, 0));
    let data = bytes(4500, 9);
    let sent = r.complete(9, good(data.clone(), 4500));
    assert_eq!(opcodes(&sent), [op::DATA_IN; 5]);
    let offsets: Vec<u32> = sent.iter().map(|p| word(p, 40)).collect();
    assert_eq!(offsets, [0, 1024, 2048, 3072, 4096]);
    let data_sns: Vec<u32> = sent.iter().map(|p| word(p, 36)).collect();
    assert_eq!(data_sns, [0, 1, 2, 3, 4]);
    // F ends each burst; S (status) only on the last PDU.
    let flags: Vec<u8> = sent.iter().map(|p| p.header[1]).collect();
    assert_eq!(flags, [0x00, 0x80, 0x00, 0x80, 0x80 | 0x01 | 0x02]);
    let last = &sent[4];
    assert_eq!((last.header[3], word(last, 44)), (0, 500));
    let joined: Vec<u8> = sent.iter().flat_map(|p| p.data.to_vec()).collect();
    assert_eq!(joined, data);
    // Only the status-bearing PDU takes a StatSN.
    assert_eq!(r.host.stat_sn, 1);
}

#[test]
fn read_completing_inline_answers_at_once_and_overflow_is_reported() {
    let mut r = rig();
    r.host.inline.push_back(good(vec![7; 512], 1024));
    let sent = r.feed(read_cmd(1, FIRST_CMD_SN, 512), b"");
    assert_eq!(opcodes(&sent), [op::DATA_IN]);
    assert_eq!(sent[0].header[1], 0x80 | 0x01 | 0x04);
    assert_eq!(word(&sent[0], 44), 512);
    assert_eq!(r.session.running(), 0);
}

#[test]
fn read_with_sense_gets_a_separate_response() {
    let mut r = rig();
    assert!(r.feed(read_cmd(1, FIRST_CMD_SN, 1024), b"").is_empty());
    let sense = depot_scsi::sense::Sense::lba_out_of_range().encode_fixed();
    let c = Completion {
        status: Status::CHECK_CONDITION,
        sense: Some(Bytes::from(sense)),
        data: Bytes::from(vec![1; 512]),
        transfer_length: 1024,
    };
    let sent = r.complete(1, c);
    assert_eq!(opcodes(&sent), [op::DATA_IN, op::SCSI_RESPONSE]);
    assert_eq!(sent[0].header[1], 0x80, "no status on the Data-In");
    assert_eq!(sense_of(&sent[1]), (0x05, 0x21, 0x00));
    assert_eq!(word(&sent[1], 36), 1, "ExpDataSN counts the Data-In");
}

// ---- task management ----

#[test]
fn abort_task_answers_after_the_task_quiesced_and_drops_its_response() {
    let mut r = rig();
    assert!(r.feed(read_cmd(1, FIRST_CMD_SN, 512), b"").is_empty());
    assert!(
        r.feed(tmf(1, 50, FIRST_CMD_SN + 1, 1, FIRST_CMD_SN), b"")
            .is_empty()
    );
    let sent = r.complete(1, good(vec![0; 512], 512));
    assert_eq!(opcodes(&sent), [op::TASK_MGMT_RESPONSE]);
    assert_eq!((itt(&sent[0]), sent[0].header[2]), (50, 0));
}

#[test]
fn abort_task_of_a_command_not_yet_received_plugs_its_cmd_sn() {
    let mut r = rig();
    // CmdSN 100 is on its way; ABORT TASK (CmdSN 101) refers to it.
    let sent = r.feed(tmf(1, 50, FIRST_CMD_SN + 1, 1, FIRST_CMD_SN), b"");
    assert_eq!(opcodes(&sent), [op::TASK_MGMT_RESPONSE]);
    assert_eq!(sent[0].header[2], 0);
    assert_eq!(r.host.window.0, FIRST_CMD_SN + 1);
    // When it arrives it is outside the window: never executed.
    assert!(r.feed(read_cmd(1, FIRST_CMD_SN, 512), b"").is_empty());
    assert!(r.host.executed.is_empty());
    // A task already answered: "task does not exist".
    let sent = r.feed(tmf(1, 51, FIRST_CMD_SN + 1, 77, FIRST_CMD_SN - 5), b"");
    assert_eq!(sent[0].header[2], 1);
}

#[test]
fn lun_reset_aborts_the_luns_tasks_and_answers_after_quiesce() {
    let mut r = rig();
    // One running read and one write waiting for data, both on LUN 0.
    assert!(r.feed(read_cmd(1, FIRST_CMD_SN, 512), b"").is_empty());
    let ttt = r2t_write(&mut r, 2, FIRST_CMD_SN + 1, 1024);
    assert!(r.feed(tmf(5, 60, FIRST_CMD_SN + 2, 0, 0), b"").is_empty());
    // The collecting write is gone: its data is dropped quietly.
    assert!(r.feed(data_out(2, ttt, 0, 0, true), &[0; 1024]).is_empty());
    assert_eq!(r.host.executed.len(), 1);
    let sent = r.complete(1, good(vec![0; 512], 512));
    assert_eq!(opcodes(&sent), [op::TASK_MGMT_RESPONSE]);
    assert_eq!((itt(&sent[0]), sent[0].header[2]), (60, 0));
    // A LUN that does not exist.
    let mut h = tmf(5, 61, FIRST_CMD_SN + 3, 0, 0);
    if let Header::TaskMgmt { lun, .. } = &mut h {
        lun[1] = 9;
    }
    let sent = r.feed(h, b"");
    assert_eq!(sent[0].header[2], 2);
}

#[test]
fn target_cold_reset_closes_after_its_response() {
    let mut r = rig();
    let sent = r.feed(tmf(7, 70, FIRST_CMD_SN, 0, 0), b"");
    assert_eq!(opcodes(&sent), [op::TASK_MGMT_RESPONSE]);
    assert!(!r.session.reading());
    assert_eq!(r.session.end(&mut r.host), Some(End::Closed));
}

// ---- text, logout, NOP, reject ----

#[test]
fn send_targets_continues_over_several_pdus() {
    let mut r = rig_with(
        PortalConfig {
            portal_group_tag: 7,
            ..PortalConfig::default()
        },
        |p| p.initiator_mrdsl = 512,
    );
    let scsi = Arc::new(ScsiTarget::new(Registry::new()));
    let mut names = vec![TARGET.to_owned()];
    for i in 0..20 {
        let name = format!("{}vm-with-a-rather-long-name-{i:02}", crate::IQN_PREFIX);
        r.registry
            .add_target(&name, None, scsi.clone(), Access::default())
            .unwrap();
        names.push(name);
    }
    let offer = b"SendTargets=All\0";
    let mut sent = r.feed(text_req(3, RESERVED_TAG, FIRST_CMD_SN), offer);
    let mut text = Vec::new();
    let mut pieces = 0;
    loop {
        assert_eq!(opcodes(&sent), [op::TEXT_RESPONSE]);
        let p = &sent[0];
        assert!(p.data.len() <= 512);
        text.extend_from_slice(&p.data);
        pieces += 1;
        if p.header[1] & 0x80 != 0 {
            assert_eq!(word(p, 20), RESERVED_TAG);
            break;
        }
        assert_eq!(p.header[1], 0x40, "C set, F clear");
        let ttt = word(p, 20);
        sent = r.feed(text_req(3, ttt, FIRST_CMD_SN), b"");
    }
    assert!(pieces > 2);
    let kv = KeyValues::parse(&text).unwrap();
    let got: Vec<&str> =
        kv.0.iter()
            .filter(|(k, _)| k == "TargetName")
            .map(|(_, v)| v.as_str())
            .collect();
    names.sort();
    assert_eq!(got, names);
    assert!(
        kv.0.iter()
            .filter(|(k, _)| k == "TargetAddress")
            .all(|(_, v)| v == "192.0.2.1:3260,7")
    );
    // A stale continuation tag is rejected.
    let sent = r.feed(text_req(3, 12345, FIRST_CMD_SN), b"");
    assert_eq!(opcodes(&sent), [op::REJECT]);
}

#[test]
fn logout_waits_for_running_commands() {
    let mut r = rig();
    assert!(r.feed(read_cmd(1, FIRST_CMD_SN, 512), b"").is_empty());
    let logout = Header::Logout {
        immediate: true,
        reason: 0,
        itt: 40,
        cid: 0,
        cmd_sn: FIRST_CMD_SN + 1,
        exp_stat_sn: 0,
    };
    assert!(r.feed(logout, b"").is_empty());
    assert!(!r.session.reading());
    assert_eq!(r.session.end(&mut r.host), None);
    let sent = r.complete(1, good(vec![0; 512], 512));
    assert_eq!(opcodes(&sent), [op::DATA_IN]);
    assert_eq!(r.session.end(&mut r.host), Some(End::LoggedOut));
    let sent = r.host.take();
    assert_eq!(opcodes(&sent), [op::LOGOUT_RESPONSE]);
    let p = &sent[0];
    assert_eq!((itt(p), p.header[2]), (40, 0));
    assert_eq!(u16::from_be_bytes([p.header[40], p.header[41]]), 2);
    assert_eq!(u16::from_be_bytes([p.header[42], p.header[43]]), 20);
}

#[test]
fn logout_of_another_connection_is_refused_at_once() {
    let mut r = rig();
    let logout = Header::Logout {
        immediate: true,
        reason: 1,
        itt: 41,
        cid: 9,
        cmd_sn: FIRST_CMD_SN,
        exp_stat_sn: 0,
    };
    let sent = r.feed(logout, b"");
    assert_eq!(opcodes(&sent), [op::LOGOUT_RESPONSE]);
    assert_eq!(sent[0].header[2], 1);
    assert!(r.session.reading());
}

#[test]
fn nop_out_is_echoed_and_idle_pings_expect_an_answer() {
    let mut r = rig();
    let sent = r.feed(nop_out(5, RESERVED_TAG, FIRST_CMD_SN, true), b"ping");
    assert_eq!(opcodes(&sent), [op::NOP_IN]);
    assert_eq!((itt(&sent[0]), word(&sent[0], 20)), (5, RESERVED_TAG));
    assert_eq!(&sent[0].data[..], b"ping");
    // Idle: ping with a transfer tag, no StatSN taken.
    let t0 = Instant::now();
    assert_eq!(r.session.idle_deadline(t0), t0 + Duration::from_secs(10));
    r.session.tick(t0, &mut r.host).unwrap();
    let sent = r.host.take();
    assert_eq!(
        (itt(&sent[0]), sent[0].opcode()),
        (RESERVED_TAG, op::NOP_IN)
    );
    let ttt = word(&sent[0], 20);
    assert_ne!(ttt, RESERVED_TAG);
    assert_eq!(r.session.idle_deadline(t0), t0 + Duration::from_secs(30));
    // Answered: the next tick pings again; unanswered: the connection ends.
    assert!(r.feed(nop_out(RESERVED_TAG, ttt, 0, true), b"").is_empty());
    r.session.tick(t0, &mut r.host).unwrap();
    assert_eq!(r.session.tick(t0, &mut r.host), Err(Fault::PingUnanswered));
}

#[test]
fn unknown_opcodes_and_snack_are_rejected_and_login_is_a_violation() {
    let mut r = rig();
    let sent = r.feed(
        Header::Unknown {
            opcode: 0x1c,
            itt: 3,
        },
        b"",
    );
    assert_eq!(opcodes(&sent), [op::REJECT]);
    assert_eq!(sent[0].header[2], reject::COMMAND_NOT_SUPPORTED);
    assert_eq!(sent[0].data[0] & 0x3f, 0x1c, "the BHS is echoed");
    assert_eq!(itt(&sent[0]), RESERVED_TAG);
    let sent = r.feed(Header::Snack { itt: 4 }, b"");
    assert_eq!(sent[0].header[2], reject::PROTOCOL_ERROR);
    assert!(r.session.reading());
    let login = pdu(login_req(1, 3, true, 0), b"");
    assert!(matches!(
        r.session.receive(login, &mut r.host),
        Err(Fault::Violation(_))
    ));
}

#[test]
fn shutdown_ends_collecting_tasks_and_waits_for_running_ones() {
    let mut r = rig();
    assert!(r.feed(read_cmd(1, FIRST_CMD_SN, 512), b"").is_empty());
    r2t_write(&mut r, 2, FIRST_CMD_SN + 1, 512);
    r.session.shutdown(&mut r.host);
    assert!(!r.session.reading());
    assert_eq!(r.session.end(&mut r.host), None);
    r.complete(1, good(vec![0; 512], 512));
    assert_eq!(r.session.end(&mut r.host), Some(End::ShutDown));
}

// ---- login ----

fn login_req(csg: u8, nsg: u8, transit: bool, cmd_sn: u32) -> Header {
    Header::Login {
        transit,
        cont: false,
        csg,
        nsg,
        version_max: 0,
        version_min: 0,
        isid: [0x80, 0, 0, 0, 0, 2],
        tsih: 0,
        itt: 0,
        cid: 3,
        cmd_sn,
        exp_stat_sn: 0,
    }
}

fn kv(pairs: &[(&str, &str)]) -> Vec<u8> {
    let mut k = KeyValues::default();
    for (key, value) in pairs {
        k.push(key, *value);
    }
    k.encode()
}

/// Login status (class, detail) of a Login Response.
fn login_status(p: &TargetPdu) -> (u8, u8) {
    assert_eq!(p.opcode(), op::LOGIN_RESPONSE);
    (p.header[36], p.header[37])
}

fn start_login(registry: &Arc<TargetRegistry>, config: &PortalConfig, first: &Pdu) -> LoginPhase {
    let (phase, opening) = LoginPhase::start(first, registry.clone(), config).unwrap();
    assert_eq!(opening.cmd_sn, 5);
    phase
}

#[test]
fn login_in_one_step_opens_the_window_before_the_answer() {
    let (registry, _) = registry_with_target();
    let config = PortalConfig {
        queue_depth: 32,
        portal_group_tag: 4,
        ..PortalConfig::default()
    };
    let first = pdu(
        login_req(1, 3, true, 5),
        &kv(&[
            ("InitiatorName", INITIATOR),
            ("TargetName", TARGET),
            ("SessionType", "Normal"),
        ]),
    );
    let mut login = start_login(&registry, &config, &first);
    let mut host = Recorder::default();
    let LoginFlow::Done(est) = login.step(&first, &mut host) else {
        panic!("login did not complete");
    };
    assert_eq!((est.cmd_sn, est.cid, est.kind), (5, 3, SessionType::Normal));
    assert_eq!(est.target.as_ref().unwrap().name, TARGET);
    let sent = host.take();
    assert_eq!(login_status(&sent[0]), (0, 0));
    let p = &sent[0];
    assert_eq!(p.header[1], 0x80 | (1 << 2) | 3, "T, CSG 1, NSG 3");
    assert_ne!(u16::from_be_bytes([p.header[14], p.header[15]]), 0, "TSIH");
    assert_eq!((word(p, 28), word(p, 32)), (5, 36));
    let answer = KeyValues::parse(&p.data).unwrap();
    assert_eq!(answer.get("TargetPortalGroupTag"), Some("4"));
}

#[test]
fn login_failures_answer_with_their_status_and_close() {
    let (registry, target) = registry_with_target();
    let config = PortalConfig::default();
    type Case<'a> = (&'a [(&'a str, &'a str)], (u8, u8));
    let cases: [Case; 3] = [
        (
            &[("InitiatorName", INITIATOR), ("TargetName", "iqn.nope")],
            (2, 3),
        ),
        (&[("TargetName", TARGET)], (2, 7)),
        (
            &[("InitiatorName", INITIATOR), ("SessionType", "Bogus")],
            (2, 9),
        ),
    ];
    for (pairs, status) in cases {
        let first = pdu(login_req(1, 3, true, 5), &kv(pairs));
        let mut login = start_login(&registry, &config, &first);
        let mut host = Recorder::default();
        assert!(matches!(login.step(&first, &mut host), LoginFlow::Close));
        assert_eq!(login_status(&host.sent[0]), status, "{pairs:?}");
    }
    // CHAP required but only None offered: authentication failure.
    target.access.write().chap = Some(crate::registry::ChapCredentials {
        initiator: depot_iscsi_proto::chap::Secret {
            user: "alice".into(),
            secret: "0123456789abcdef".into(),
        },
        target: None,
    });
    let first = pdu(
        login_req(0, 1, true, 5),
        &kv(&[
            ("InitiatorName", INITIATOR),
            ("TargetName", TARGET),
            ("AuthMethod", "None"),
        ]),
    );
    let mut login = start_login(&registry, &config, &first);
    let mut host = Recorder::default();
    assert!(matches!(login.step(&first, &mut host), LoginFlow::Close));
    assert_eq!(login_status(&host.sent[0]), (2, 1));
}

#[test]
fn a_target_served_elsewhere_redirects_normal_logins_only() {
    let (registry, target) = registry_with_target();
    target.paths.write().redirect = Some("192.0.2.9:3260,2".into());
    let config = PortalConfig::default();
    let first = pdu(
        login_req(0, 1, true, 5),
        &kv(&[("InitiatorName", INITIATOR), ("TargetName", TARGET)]),
    );
    let mut login = start_login(&registry, &config, &first);
    let mut host = Recorder::default();
    assert!(matches!(login.step(&first, &mut host), LoginFlow::Close));
    let p = &host.sent[0];
    assert_eq!(login_status(p), (1, 1), "target moved temporarily");
    assert_eq!(p.header[1] & 0x80, 0, "T clear");
    let answer = KeyValues::parse(&p.data).unwrap();
    assert_eq!(answer.get("TargetAddress"), Some("192.0.2.9:3260,2"));
    // An initiator the ACL refuses learns nothing of the other router.
    target.access.write().allowed_initiators = vec!["iqn.someone-else".into()];
    let mut login = start_login(&registry, &config, &first);
    let mut host = Recorder::default();
    assert!(matches!(login.step(&first, &mut host), LoginFlow::Close));
    assert_eq!(login_status(&host.sent[0]), (2, 2));
    assert!(host.sent[0].data.is_empty());
    // Discovery sessions are never redirected.
    target.access.write().allowed_initiators.clear();
    let first = pdu(
        login_req(1, 3, true, 5),
        &kv(&[("InitiatorName", INITIATOR), ("SessionType", "Discovery")]),
    );
    let mut login = start_login(&registry, &config, &first);
    let mut host = Recorder::default();
    assert!(matches!(login.step(&first, &mut host), LoginFlow::Done(_)));
}

#[test]
fn send_targets_lists_every_router_serving_the_target() {
    let mut r = rig_with(
        PortalConfig {
            portal_group_tag: 1,
            ..PortalConfig::default()
        },
        |_| {},
    );
    let t = r.registry.target(TARGET).unwrap();
    t.paths.write().others = vec![("192.0.2.2:3260".into(), 2), ("192.0.2.3:3260".into(), 3)];
    let sent = r.feed(
        text_req(3, RESERVED_TAG, FIRST_CMD_SN),
        b"SendTargets=All\0",
    );
    let kv = KeyValues::parse(&sent[0].data).unwrap();
    let addrs: Vec<&str> =
        kv.0.iter()
            .filter(|(k, _)| k == "TargetAddress")
            .map(|(_, v)| v.as_str())
            .collect();
    assert_eq!(
        addrs,
        ["192.0.2.1:3260,1", "192.0.2.2:3260,2", "192.0.2.3:3260,3"]
    );
}

#[test]
fn discovery_login_in_two_stages_and_only_login_pdus_during_login() {
    let (registry, _) = registry_with_target();
    let config = PortalConfig::default();
    // Not a Login Request first: closed without an answer.
    assert!(
        LoginPhase::start(
            &pdu(nop_out(1, RESERVED_TAG, 0, true), b""),
            registry.clone(),
            &config
        )
        .is_none()
    );
    let first = pdu(
        login_req(0, 1, true, 5),
        &kv(&[
            ("InitiatorName", INITIATOR),
            ("SessionType", "Discovery"),
            ("AuthMethod", "None"),
        ]),
    );
    let mut login = start_login(&registry, &config, &first);
    let mut host = Recorder::default();
    assert!(matches!(login.step(&first, &mut host), LoginFlow::Continue));
    assert_eq!(login_status(&host.sent[0]), (0, 0));
    assert_eq!(host.sent[0].header[1], 0x80 | 1, "T, CSG 0, NSG 1");
    let second = pdu(login_req(1, 3, true, 5), &kv(&[("HeaderDigest", "None")]));
    let LoginFlow::Done(est) = login.step(&second, &mut host) else {
        panic!("login did not complete");
    };
    assert!(est.target.is_none());
    assert_eq!(est.kind, SessionType::Discovery);
    // Anything but a Login Request mid-login closes without an answer.
    let mut login = start_login(&registry, &config, &first);
    let mut host = Recorder::default();
    assert!(matches!(login.step(&first, &mut host), LoginFlow::Continue));
    host.take();
    let nop = pdu(nop_out(1, RESERVED_TAG, 5, true), b"");
    assert!(matches!(login.step(&nop, &mut host), LoginFlow::Close));
    assert!(host.sent.is_empty());
}

#[test]
fn a_discovery_session_rejects_scsi_commands() {
    let (registry, _) = registry_with_target();
    let est = Established {
        kind: SessionType::Discovery,
        initiator: INITIATOR.into(),
        isid: [0x80, 0, 0, 0, 0, 3],
        tsih: 2,
        target: None,
        params: SessionParams::new(&PortalConfig::default().limits),
        cmd_sn: 1,
        cid: 0,
    };
    let mut host = Recorder::default();
    let mut session = Session::new(
        est,
        registry,
        Arc::new(PortalConfig::default()),
        "192.0.2.1:3260".parse().unwrap(),
        &mut host,
    );
    session
        .receive(pdu(read_cmd(1, 1, 512), b""), &mut host)
        .unwrap();
    assert_eq!(opcodes(&host.sent), [op::REJECT]);
    assert_eq!(host.sent[0].header[2], reject::PROTOCOL_ERROR);
    assert!(host.executed.is_empty());
}
