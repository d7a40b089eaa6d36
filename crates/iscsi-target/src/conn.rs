//! One connection: login, then the full feature phase (RFC 7143, ERL 0).
//!
//! The connection task owns all per-connection state without locks:
//! - the CmdSN window: non-immediate PDUs are delivered in CmdSN order,
//!   those ahead of ExpCmdSN wait in `pending`, those outside
//!   [ExpCmdSN, MaxCmdSN] are dropped silently. MaxCmdSN never decreases and
//!   closes as tasks pile up, which bounds the number of live tasks;
//! - tasks by ITT: a SCSI command collects immediate, unsolicited and
//!   R2T-solicited data strictly in order (DataPDUInOrder and
//!   DataSequenceInOrder are Yes), is executed on the blocking pool once it
//!   is in order and complete, and answers with Data-In PDUs cut to the
//!   initiator's MaxRecvDataSegmentLength and MaxBurstLength (status riding
//!   on the last one when GOOD) or a SCSI Response, with exact residuals;
//! - task management: aborted tasks get no response, and the TMF response
//!   is sent only once every affected task has quiesced;
//! - NOP-Out is answered at once, and an idle initiator is pinged.
//!
//! Protocol violations (bad DataSN or offset, data beyond what was asked,
//! framing errors, header digest errors) close the connection; unknown
//! opcodes and data digest errors are answered with a Reject.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::{Bytes, BytesMut};
use depot_iscsi_proto::encode::{self, Residual, reject};
use depot_iscsi_proto::params::SessionParams;
use depot_iscsi_proto::pdu::{Decoder, Header, Pdu};
use depot_iscsi_proto::serial;
use depot_iscsi_proto::text::KeyValues;
use depot_iscsi_proto::{BHS_LEN, RESERVED_TAG};
use depot_scsi::sense::Sense;
use depot_scsi::{Command, Completion, Nexus, Status, TmfOutcome};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::login::{Established, Login, Step};
use crate::writer::{Window, Writer};
use crate::{PORTAL_GROUP_TAG, PortalConfig, SessionInfo, TargetEntry, TargetRegistry};

/// Bytes of write data a connection may hold (received plus solicited by
/// outstanding R2Ts) before it stops sending new R2Ts.
const WRITE_BUDGET: u64 = 256 << 20;
/// Most text accumulated across continued Text Requests.
const MAX_TEXT: usize = 64 * 1024;
/// Most long text responses kept waiting for the initiator to fetch the rest.
const MAX_TEXT_CONTINUATIONS: usize = 16;

/// Sense key ABORTED COMMAND.
const ABORTED_COMMAND: u8 = 0x0b;
/// DATA PHASE ERROR (bad DataSN).
const DATA_PHASE_ERROR: (u8, u8) = (0x4b, 0x00);
/// INVALID TARGET PORT TRANSFER TAG RECEIVED.
const INVALID_TTT: (u8, u8) = (0x4b, 0x01);
/// TOO MUCH WRITE DATA.
const TOO_MUCH_WRITE_DATA: (u8, u8) = (0x4b, 0x02);
/// DATA OFFSET ERROR.
const DATA_OFFSET_ERROR: (u8, u8) = (0x4b, 0x05);

/// Largest transfer a command may have to be tried inline on the
/// connection task. Above it the copy dominates the hop: measured on the
/// engine vDisk, 1 MiB sequential reads at QD8 went from 1.15 GB/s inline
/// to 1.73 GB/s through the blocking pool.
const INLINE_MAX_TRANSFER: u32 = 256 * 1024;

/// Runs a connection to completion.
pub async fn run(
    stream: TcpStream,
    peer: SocketAddr,
    registry: Arc<TargetRegistry>,
    config: Arc<PortalConfig>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let local = stream.local_addr()?;
    let (rd, wr) = stream.into_split();
    let mut reader = Reader {
        rd,
        buf: BytesMut::with_capacity(64 * 1024),
        decoder: Decoder::default(),
    };
    let deadline = Instant::now() + config.login_timeout;
    let Some(first) = reader.next_by(deadline).await? else {
        return Ok(());
    };
    let Header::Login {
        cmd_sn,
        exp_stat_sn,
        cid,
        ..
    } = first.header
    else {
        // The first PDU on a connection must be a Login Request.
        return Ok(());
    };
    let window = Arc::new(Window::default());
    window.exp_cmd_sn.store(cmd_sn, Ordering::Release);
    window.max_cmd_sn.store(cmd_sn, Ordering::Release);
    let writer = Writer::spawn(wr, window.clone(), exp_stat_sn);
    let mut login = Login::new(registry.clone(), config.limits.clone());
    let mut pdu = first;
    let est = loop {
        match login.step(&pdu) {
            Step::Continue(resp) => {
                writer.send(resp);
                writer.flush();
            }
            Step::Done(resp, est) => {
                // Open the command window before the final response goes out.
                let max = est.cmd_sn.wrapping_add(config.queue_depth.max(1) - 1);
                window.max_cmd_sn.store(max, Ordering::Release);
                writer.send(resp);
                writer.flush();
                break est;
            }
            Step::Fail(resp) => {
                writer.send(resp);
                writer.close().await;
                return Ok(());
            }
        }
        pdu = match reader.next_by(deadline).await? {
            Some(p) if matches!(p.header, Header::Login { .. }) => p,
            _ => {
                writer.close().await;
                return Ok(());
            }
        };
    };
    writer.set_digests(est.params.header_digest, est.params.data_digest);
    reader.decoder = Decoder {
        max_data_segment: est.params.target_mrdsl,
        header_digest: est.params.header_digest,
        data_digest: est.params.data_digest,
    };
    let cancel = shutdown.child_token();
    let target = est.target.clone();
    let nexus = target.as_ref().map(|t| {
        Arc::new(Nexus {
            initiator_name: est.initiator.clone(),
            isid: est.isid,
            target_name: t.name.clone(),
            tpgt: PORTAL_GROUP_TAG,
            relative_port_id: 1,
        })
    });
    let _registration = match &target {
        Some(t) => Some(
            registry
                .register(
                    SessionInfo {
                        target: t.name.clone(),
                        initiator: est.initiator.clone(),
                        isid: est.isid,
                        tsih: est.tsih,
                        peer,
                    },
                    cancel.clone(),
                )
                .await,
        ),
        None => None,
    };
    tracing::info!(%peer, initiator = %est.initiator, target_name = ?target.as_ref().map(|t| &t.name),
        kind = ?est.kind, "login complete");
    let (done_tx, done_rx) = mpsc::unbounded_channel();
    let max_cmd_sn = window.max_cmd_sn.load(Ordering::Acquire);
    let mut session = Session {
        writer: writer.clone(),
        window,
        params: est.params.clone(),
        config: config.clone(),
        registry,
        target,
        nexus: nexus.clone(),
        est: *est,
        cid,
        local,
        exp_cmd_sn: cmd_sn,
        max_cmd_sn,
        pending: BTreeMap::new(),
        tasks: HashMap::new(),
        running: 0,
        next_ttt: 1,
        done_tx,
        pending_tmfs: Vec::new(),
        text_cont: HashMap::new(),
        text_acc: Vec::new(),
        ping: None,
        logout: None,
        closing: false,
        budget_used: 0,
        budget_waiters: Vec::new(),
    };
    session.update_window();
    let result = session.run(&mut reader, done_rx, cancel).await;
    if let (Some(t), Some(n)) = (&session.target, &nexus) {
        t.scsi.nexus_lost(n);
    }
    writer.close().await;
    result
}

struct Reader {
    rd: OwnedReadHalf,
    buf: BytesMut,
    decoder: Decoder,
}

impl Reader {
    /// Reads until a whole PDU is buffered or `deadline` passes. `None` on
    /// EOF or timeout.
    async fn next_by(&mut self, deadline: Instant) -> std::io::Result<Option<Pdu>> {
        loop {
            if let Some(p) = self.decode()? {
                return Ok(Some(p));
            }
            match tokio::time::timeout_at(deadline, self.fill()).await {
                Ok(Ok(0)) | Err(_) => return Ok(None),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e),
            }
        }
    }

    fn decode(&mut self) -> std::io::Result<Option<Pdu>> {
        self.decoder
            .decode(&mut self.buf)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }

    /// One read from the socket; cancel-safe.
    async fn fill(&mut self) -> std::io::Result<usize> {
        if self.buf.capacity() - self.buf.len() < 16 * 1024 {
            self.buf.reserve(64 * 1024);
        }
        self.rd.read_buf(&mut self.buf).await
    }
}

/// Why the session loop must stop early.
enum Stop {
    /// The initiator broke the protocol.
    Violation(&'static str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TaskState {
    /// Waiting for CmdSN order and/or data.
    Collecting,
    /// Executing on the blocking pool.
    Running,
    /// Executing, but aborted: its completion is dropped.
    Aborted,
}

struct R2t {
    ttt: u32,
    offset: u32,
    len: u32,
    received: u32,
    next_data_sn: u32,
}

struct Task {
    lun_field: [u8; 8],
    lun: u64,
    cdb: Vec<u8>,
    edtl: u32,
    read: bool,
    write: bool,
    state: TaskState,
    ordered: bool,
    data: DataOut,
    /// Unsolicited data may arrive up to this offset.
    unsolicited_end: u32,
    unsolicited_data_sn: u32,
    r2ts: Vec<R2t>,
    next_r2t_offset: u32,
    r2t_sn: u32,
    /// R2T and Data-In PDUs sent, for the response's ExpDataSN.
    data_pdus: u32,
    /// A data digest error hit this task's data: it fails with 47/05.
    crc_failed: bool,
    /// The write is larger than we accept: fail without collecting.
    oversize: bool,
    /// Bytes charged against the connection's write budget.
    charged: u64,
}

/// A write's data as it arrives: the data segments of its PDUs, shared
/// with the receive buffer, never copied here. The SCSI layer hands them to
/// the device as they are ([`depot_scsi::DataOut`]); memory held is what
/// arrived, which the connection's write budget bounds.
#[derive(Default)]
struct DataOut {
    pieces: Vec<Bytes>,
    len: usize,
}

impl DataOut {
    fn len(&self) -> usize {
        self.len
    }

    fn push(&mut self, piece: &Bytes) {
        if !piece.is_empty() {
            self.len += piece.len();
            self.pieces.push(piece.clone());
        }
    }

    fn take(&mut self) -> Vec<Bytes> {
        self.len = 0;
        std::mem::take(&mut self.pieces)
    }
}

enum Pending {
    /// A SCSI command whose task already exists (collecting data).
    Scsi(u32),
    /// Any other PDU.
    Other(Box<Pdu>),
    /// A CmdSN consumed by a rejected PDU or plugged by ABORT TASK.
    Consumed,
}

struct PendingTmf {
    itt: u32,
    response: u8,
    waiting: HashSet<u32>,
    close_after: bool,
}

struct Done {
    itt: u32,
    completion: Completion,
}

struct Session {
    writer: Writer,
    window: Arc<Window>,
    params: SessionParams,
    config: Arc<PortalConfig>,
    registry: Arc<TargetRegistry>,
    target: Option<Arc<TargetEntry>>,
    nexus: Option<Arc<Nexus>>,
    est: Established,
    cid: u16,
    local: SocketAddr,
    exp_cmd_sn: u32,
    max_cmd_sn: u32,
    pending: BTreeMap<u32, Pending>,
    tasks: HashMap<u32, Task>,
    running: usize,
    next_ttt: u32,
    done_tx: mpsc::UnboundedSender<Done>,
    pending_tmfs: Vec<PendingTmf>,
    text_cont: HashMap<u32, (u32, Bytes)>,
    text_acc: Vec<u8>,
    ping: Option<(u32, Instant)>,
    logout: Option<u32>,
    closing: bool,
    budget_used: u64,
    budget_waiters: Vec<u32>,
}

impl Session {
    async fn run(
        &mut self,
        reader: &mut Reader,
        mut done_rx: mpsc::UnboundedReceiver<Done>,
        cancel: CancellationToken,
    ) -> std::io::Result<()> {
        let mut last_rx = Instant::now();
        let mut shutting_down = false;
        let mut grace_deadline = Instant::now();
        loop {
            let ping_at = match self.ping {
                Some((_, sent)) => sent + self.config.nop_timeout,
                None => last_rx + self.config.nop_interval,
            };
            let reading = !shutting_down && !self.closing && self.logout.is_none();
            tokio::select! {
                biased;
                _ = cancel.cancelled(), if !shutting_down => {
                    shutting_down = true;
                    grace_deadline = Instant::now() + self.config.shutdown_grace;
                    self.abort_collecting();
                }
                Some(done) = done_rx.recv() => {
                    self.complete(done);
                }
                r = reader.fill(), if reading => {
                    match r {
                        Ok(0) => return Ok(()),
                        Ok(_) => {}
                        Err(e) => return Err(e),
                    }
                    last_rx = Instant::now();
                    loop {
                        let pdu = match reader.decode() {
                            Ok(Some(p)) => p,
                            Ok(None) => break,
                            Err(e) => {
                                tracing::warn!(peer = ?self.est.initiator, error = %e, "closing connection");
                                return Ok(());
                            }
                        };
                        match self.handle(pdu) {
                            Ok(()) => {}
                            Err(Stop::Violation(why)) => {
                                tracing::warn!(initiator = %self.est.initiator, why, "protocol violation, closing connection");
                                return Ok(());
                            }
                        }
                        if self.closing || self.logout.is_some() {
                            break;
                        }
                    }
                }
                _ = tokio::time::sleep_until(ping_at), if reading => {
                    if self.ping.is_some() {
                        tracing::warn!(initiator = %self.est.initiator, "NOP-In ping unanswered, closing connection");
                        return Ok(());
                    }
                    let ttt = self.alloc_ttt();
                    self.ping = Some((ttt, Instant::now()));
                    self.writer.send(encode::nop_in(RESERVED_TAG, ttt, [0; 8], Bytes::new()));
                }
                _ = tokio::time::sleep_until(grace_deadline), if shutting_down => {
                    tracing::warn!(initiator = %self.est.initiator, running = self.running, "shutdown grace expired with commands in flight");
                    return Ok(());
                }
            }
            self.writer.flush();
            if self.closing {
                return Ok(());
            }
            if self.running == 0 {
                if let Some(itt) = self.logout.take() {
                    self.writer.send(encode::logout_response(
                        itt,
                        0,
                        self.params.default_time2wait.min(3600) as u16,
                        self.params.default_time2retain.min(3600) as u16,
                    ));
                    return Ok(());
                }
                if shutting_down {
                    return Ok(());
                }
            }
        }
    }

    fn alloc_ttt(&mut self) -> u32 {
        let t = self.next_ttt;
        self.next_ttt = self.next_ttt.wrapping_add(1);
        if self.next_ttt == RESERVED_TAG {
            self.next_ttt = 1;
        }
        t
    }

    /// Publishes ExpCmdSN and a MaxCmdSN that never decreases and closes as
    /// live tasks approach the queue depth.
    fn update_window(&mut self) {
        let live = u32::try_from(self.tasks.len() + self.pending.len()).unwrap_or(u32::MAX);
        let room = self.config.queue_depth.saturating_sub(live).max(1);
        let candidate = self.exp_cmd_sn.wrapping_add(room - 1);
        if serial::lt(self.max_cmd_sn, candidate) {
            self.max_cmd_sn = candidate;
        }
        self.window
            .exp_cmd_sn
            .store(self.exp_cmd_sn, Ordering::Release);
        self.window
            .max_cmd_sn
            .store(self.max_cmd_sn, Ordering::Release);
    }

    fn send_reject(&self, reason: u8, bhs: &[u8; BHS_LEN]) {
        self.writer.send(encode::reject(reason, bhs));
    }

    fn handle(&mut self, pdu: Pdu) -> Result<(), Stop> {
        match pdu.header {
            Header::DataOut { .. } => self.data_out(pdu),
            Header::Snack { .. } => {
                // SNACK needs ErrorRecoveryLevel > 0.
                self.send_reject(reject::PROTOCOL_ERROR, &pdu.bhs);
                Ok(())
            }
            Header::Login { .. } => Err(Stop::Violation("login request in full feature phase")),
            Header::Unknown { .. } => {
                self.send_reject(reject::COMMAND_NOT_SUPPORTED, &pdu.bhs);
                Ok(())
            }
            Header::NopOut { itt, ttt, .. } if itt == RESERVED_TAG => {
                // An answer to our ping; it must be immediate and carries no
                // CmdSN to consume.
                if self.ping.is_some_and(|(t, _)| t == ttt) {
                    self.ping = None;
                }
                Ok(())
            }
            _ => self.sequence(pdu),
        }
    }

    /// Orders PDUs that carry a CmdSN.
    fn sequence(&mut self, pdu: Pdu) -> Result<(), Stop> {
        let Some(sn) = pdu.header.cmd_sn() else {
            return Ok(());
        };
        let immediate = pdu.header.is_immediate();
        let is_scsi = matches!(pdu.header, Header::ScsiCommand { .. });
        if !immediate && !serial::in_window(sn, self.exp_cmd_sn, self.max_cmd_sn) {
            tracing::debug!(
                sn,
                exp = self.exp_cmd_sn,
                max = self.max_cmd_sn,
                "CmdSN outside window: dropped"
            );
            return Ok(());
        }
        if !immediate && sn != self.exp_cmd_sn && self.pending.contains_key(&sn) {
            tracing::debug!(sn, "duplicate CmdSN: dropped");
            return Ok(());
        }
        if immediate && is_scsi && self.tasks.len() >= 2 * self.config.queue_depth as usize {
            // Immediate commands bypass the CmdSN window; bound them here.
            self.send_reject(reject::IMMEDIATE_REJECT, &pdu.bhs);
            return Ok(());
        }
        let entry = if is_scsi {
            match self.accept_command(&pdu) {
                Ok(itt) => Pending::Scsi(itt),
                Err(reason) => {
                    self.send_reject(reason, &pdu.bhs);
                    Pending::Consumed
                }
            }
        } else {
            Pending::Other(Box::new(pdu))
        };
        if immediate {
            self.deliver(entry)?;
        } else if sn == self.exp_cmd_sn {
            self.exp_cmd_sn = self.exp_cmd_sn.wrapping_add(1);
            self.deliver(entry)?;
            while let Some(next) = self.pending.remove(&self.exp_cmd_sn) {
                self.exp_cmd_sn = self.exp_cmd_sn.wrapping_add(1);
                self.deliver(next)?;
            }
        } else {
            self.pending.insert(sn, entry);
        }
        self.update_window();
        Ok(())
    }

    fn deliver(&mut self, entry: Pending) -> Result<(), Stop> {
        match entry {
            Pending::Consumed => Ok(()),
            Pending::Scsi(itt) => {
                if let Some(t) = self.tasks.get_mut(&itt) {
                    t.ordered = true;
                    self.advance(itt);
                }
                Ok(())
            }
            Pending::Other(pdu) => match pdu.header {
                Header::NopOut { itt, lun, .. } => {
                    if pdu.data_digest_error {
                        self.send_reject(reject::DATA_DIGEST, &pdu.bhs);
                    } else {
                        self.writer
                            .send(encode::nop_in(itt, RESERVED_TAG, lun, pdu.data.clone()));
                    }
                    Ok(())
                }
                Header::TaskMgmt { .. } => {
                    self.task_mgmt(&pdu);
                    Ok(())
                }
                Header::Text { .. } => self.text(&pdu),
                Header::Logout {
                    reason, itt, cid, ..
                } => {
                    self.logout_request(reason, itt, cid);
                    Ok(())
                }
                _ => Ok(()),
            },
        }
    }

    /// Creates the task for a SCSI Command PDU (before CmdSN ordering, so
    /// unsolicited data can be collected). Returns the Reject reason when
    /// the PDU cannot be accepted.
    fn accept_command(&mut self, pdu: &Pdu) -> Result<u32, u8> {
        let Header::ScsiCommand {
            final_bit,
            read,
            write,
            lun,
            itt,
            edtl,
            ..
        } = pdu.header
        else {
            return Err(reject::PROTOCOL_ERROR);
        };
        if self.target.is_none() {
            // Discovery sessions carry no SCSI commands.
            return Err(reject::PROTOCOL_ERROR);
        }
        if self.tasks.contains_key(&itt) {
            return Err(reject::TASK_IN_PROGRESS);
        }
        let cdb = pdu.full_cdb().ok_or(reject::INVALID_PDU_FIELD)?;
        let imm = u32::try_from(pdu.data.len()).unwrap_or(u32::MAX);
        if imm > 0
            && (!write
                || imm > edtl
                || !self.params.immediate_data
                || imm > self.params.first_burst_length)
        {
            return Err(reject::PROTOCOL_ERROR);
        }
        let oversize = write && edtl > self.config.max_write_transfer;
        let mut unsolicited_end = imm;
        if write && !self.params.initial_r2t && !final_bit {
            unsolicited_end = self.params.first_burst_length.min(edtl).max(imm);
        }
        if pdu.data_digest_error {
            self.send_reject(reject::DATA_DIGEST, &pdu.bhs);
        }
        let mut data = DataOut::default();
        if !oversize {
            data.push(&pdu.data);
        }
        let charged = u64::from(unsolicited_end);
        self.budget_used += charged;
        self.tasks.insert(
            itt,
            Task {
                lun_field: lun,
                lun: depot_scsi::lun::decode(lun).unwrap_or(u64::MAX),
                cdb,
                edtl,
                read,
                write,
                state: TaskState::Collecting,
                ordered: false,
                data,
                unsolicited_end,
                unsolicited_data_sn: 0,
                r2ts: Vec::new(),
                next_r2t_offset: unsolicited_end,
                r2t_sn: 0,
                data_pdus: 0,
                crc_failed: pdu.data_digest_error,
                oversize,
                charged,
            },
        );
        Ok(itt)
    }

    /// Moves a task forward: execute it when ordered and complete, else
    /// solicit the rest of its data.
    fn advance(&mut self, itt: u32) {
        let Some(task) = self.tasks.get_mut(&itt) else {
            return;
        };
        if !task.ordered || task.state != TaskState::Collecting {
            return;
        }
        let received = task.data.len() as u32;
        let need = if task.write { task.edtl } else { 0 };
        if task.oversize {
            let sense = fixed_sense(0x05, 0x24, 0x00);
            let c = Completion {
                status: Status::CHECK_CONDITION,
                sense: Some(sense),
                data: Bytes::new(),
                transfer_length: task.edtl,
            };
            self.finish_inline(itt, c);
            return;
        }
        if received >= need {
            self.execute(itt);
            return;
        }
        if received < task.unsolicited_end {
            // Unsolicited data still to come.
            return;
        }
        self.issue_r2ts(itt);
    }

    fn issue_r2ts(&mut self, itt: u32) {
        let max_outstanding = self.params.max_outstanding_r2t.max(1) as usize;
        let max_burst = self.params.max_burst_length.max(512);
        loop {
            let Some(task) = self.tasks.get(&itt) else {
                return;
            };
            if task.r2ts.len() >= max_outstanding || task.next_r2t_offset >= task.edtl {
                return;
            }
            let len = max_burst.min(task.edtl - task.next_r2t_offset);
            let others_hold = self.budget_used > task.charged;
            if others_hold && self.budget_used + u64::from(len) > WRITE_BUDGET {
                if !self.budget_waiters.contains(&itt) {
                    self.budget_waiters.push(itt);
                }
                return;
            }
            let ttt = self.alloc_ttt();
            let Some(task) = self.tasks.get_mut(&itt) else {
                return;
            };
            let offset = task.next_r2t_offset;
            self.writer.send(encode::r2t(
                itt,
                task.lun_field,
                ttt,
                task.r2t_sn,
                offset,
                len,
            ));
            task.r2ts.push(R2t {
                ttt,
                offset,
                len,
                received: 0,
                next_data_sn: 0,
            });
            task.r2t_sn += 1;
            task.data_pdus += 1;
            task.next_r2t_offset += len;
            task.charged += u64::from(len);
            self.budget_used += u64::from(len);
        }
    }

    fn data_out(&mut self, pdu: Pdu) -> Result<(), Stop> {
        let Header::DataOut {
            final_bit,
            itt,
            ttt,
            data_sn,
            buffer_offset,
            ..
        } = pdu.header
        else {
            return Ok(());
        };
        let Some(task) = self.tasks.get_mut(&itt) else {
            // Data for an aborted or rejected task: discard.
            return Ok(());
        };
        if task.state != TaskState::Collecting {
            // All data already arrived: this is too much.
            return Err(Stop::Violation("Data-Out for a task that has all its data"));
        }
        let len = u32::try_from(pdu.data.len()).unwrap_or(u32::MAX);
        let received = task.data.len() as u32;
        if task.oversize {
            return Ok(());
        }
        if ttt == RESERVED_TAG {
            if data_sn != task.unsolicited_data_sn {
                self.fail_task(itt, DATA_PHASE_ERROR);
                return Ok(());
            }
            if buffer_offset != received {
                self.fail_task(itt, DATA_OFFSET_ERROR);
                return Ok(());
            }
            if received.saturating_add(len) > task.unsolicited_end {
                self.fail_task(itt, TOO_MUCH_WRITE_DATA);
                return Ok(());
            }
            task.unsolicited_data_sn += 1;
            if final_bit {
                // The unsolicited sequence ends here.
                task.unsolicited_end = received + len;
                task.next_r2t_offset = task.unsolicited_end;
            }
        } else {
            let Some(pos) = task.r2ts.iter().position(|r| r.ttt == ttt) else {
                self.fail_task(itt, INVALID_TTT);
                return Ok(());
            };
            let r = &mut task.r2ts[pos];
            let problem = if data_sn != r.next_data_sn {
                Some(DATA_PHASE_ERROR)
            } else if buffer_offset != received || buffer_offset < r.offset {
                Some(DATA_OFFSET_ERROR)
            } else if buffer_offset.saturating_add(len) > r.offset + r.len {
                Some(TOO_MUCH_WRITE_DATA)
            } else if final_bit && r.received + len != r.len {
                Some(DATA_PHASE_ERROR)
            } else {
                None
            };
            if let Some(code) = problem {
                self.fail_task(itt, code);
                return Ok(());
            }
            r.next_data_sn += 1;
            r.received += len;
            if r.received == r.len {
                task.r2ts.remove(pos);
            }
        }
        if pdu.data_digest_error {
            task.crc_failed = true;
            self.send_reject(reject::DATA_DIGEST, &pdu.bhs);
        }
        let Some(task) = self.tasks.get_mut(&itt) else {
            return Ok(());
        };
        task.data.push(&pdu.data);
        self.advance(itt);
        Ok(())
    }

    fn execute(&mut self, itt: u32) {
        let (Some(target), Some(nexus)) = (self.target.clone(), self.nexus.clone()) else {
            return;
        };
        let Some(task) = self.tasks.get_mut(&itt) else {
            return;
        };
        if task.crc_failed {
            let c = Completion {
                status: Status::CHECK_CONDITION,
                sense: Some(fixed_sense(ABORTED_COMMAND, 0x47, 0x05)),
                data: Bytes::new(),
                transfer_length: task.edtl,
            };
            self.finish_inline(itt, c);
            return;
        }
        let lun = task.lun;
        let expected_in = if task.read { task.edtl } else { 0 };
        let data = task.data.take();
        // Decoded once: the inline try and the blocking run share it.
        let cdb = depot_scsi::ParsedCdb::parse(&task.cdb);
        // Hot reads and cached writes finish here, on the connection's
        // thread; anything that would wait for storage goes to the
        // blocking pool. So do large transfers: several of them then
        // proceed in parallel on other cores, where inline they would
        // queue behind each other on this one.
        let inline = if task.edtl > INLINE_MAX_TRANSFER {
            None
        } else {
            target.scsi.try_execute_nowait(
                lun,
                &Command {
                    nexus: &nexus,
                    cdb,
                    data_out: depot_scsi::DataOut::new(&data),
                    expected_in,
                },
            )
        };
        if let Some(c) = inline {
            self.finish_inline(itt, c);
            return;
        }
        task.state = TaskState::Running;
        self.running += 1;
        let tx = self.done_tx.clone();
        let scsi = target.scsi.clone();
        tokio::task::spawn_blocking(move || {
            let completion = scsi.execute(
                lun,
                &Command {
                    nexus: &nexus,
                    cdb,
                    data_out: depot_scsi::DataOut::new(&data),
                    expected_in,
                },
            );
            let _ = tx.send(Done { itt, completion });
        });
    }

    /// Completes a task on the connection task: one that never went to the
    /// SCSI layer, or one the SCSI layer finished inline.
    fn finish_inline(&mut self, itt: u32, completion: Completion) {
        if let Some(task) = self.tasks.get_mut(&itt) {
            task.state = TaskState::Running;
            self.running += 1;
            self.complete(Done { itt, completion });
        }
    }

    /// Ends a task whose data transfer broke the rules (wrong DataSN, offset,
    /// length or transfer tag) with CHECK CONDITION, ABORTED COMMAND. The
    /// session stays up; later Data-Out for the task is discarded.
    fn fail_task(&mut self, itt: u32, (asc, ascq): (u8, u8)) {
        tracing::info!(initiator = %self.est.initiator, itt, asc, ascq, "Data-Out protocol error, task failed");
        let Some(task) = self.tasks.get(&itt) else {
            return;
        };
        let c = Completion {
            status: Status::CHECK_CONDITION,
            sense: Some(fixed_sense(ABORTED_COMMAND, asc, ascq)),
            data: Bytes::new(),
            transfer_length: task.edtl,
        };
        self.finish_inline(itt, c);
    }

    fn complete(&mut self, done: Done) {
        let Some(task) = self.tasks.remove(&done.itt) else {
            return;
        };
        self.running = self.running.saturating_sub(1);
        self.budget_used = self.budget_used.saturating_sub(task.charged);
        // The response carries the window, so open it first.
        self.update_window();
        if task.state == TaskState::Aborted {
            self.task_quiesced(done.itt);
        } else {
            self.respond(done.itt, &task, done.completion);
        }
        for itt in std::mem::take(&mut self.budget_waiters) {
            self.issue_r2ts(itt);
        }
    }

    fn respond(&mut self, itt: u32, task: &Task, c: Completion) {
        let residual = Residual::of(c.transfer_length, task.edtl);
        let good = c.status == Status::GOOD && c.sense.is_none();
        let mut data_pdus = task.data_pdus;
        let len = c.data.len().min(task.edtl as usize);
        if task.read && len > 0 {
            let mrdsl = self.params.initiator_mrdsl.max(512) as usize;
            let burst = self.params.max_burst_length.max(512) as usize;
            let mut off = 0usize;
            let mut data_sn = 0u32;
            while off < len {
                let seq_end = ((off / burst + 1) * burst).min(len);
                let chunk = mrdsl.min(seq_end - off);
                let end = off + chunk;
                let status = (end == len && good).then_some((c.status.0, residual));
                self.writer.send(encode::data_in(
                    itt,
                    task.lun_field,
                    c.data.slice(off..end),
                    data_sn,
                    off as u32,
                    end == seq_end,
                    status,
                ));
                data_sn += 1;
                off = end;
            }
            data_pdus += data_sn;
            if good {
                return;
            }
        }
        self.writer.send(encode::scsi_response(
            itt,
            c.status.0,
            c.sense.as_deref(),
            residual,
            data_pdus,
        ));
    }

    /// Aborts tasks matching `pred`; returns the ones still running (their
    /// completions will be dropped).
    fn abort_where(&mut self, pred: impl Fn(u32, &Task) -> bool) -> HashSet<u32> {
        let mut running = HashSet::new();
        let doomed: Vec<u32> = self
            .tasks
            .iter()
            .filter(|(itt, t)| pred(**itt, t))
            .map(|(itt, _)| *itt)
            .collect();
        for itt in doomed {
            let Some(task) = self.tasks.get_mut(&itt) else {
                continue;
            };
            match task.state {
                TaskState::Collecting => {
                    let charged = task.charged;
                    self.tasks.remove(&itt);
                    self.budget_used = self.budget_used.saturating_sub(charged);
                }
                TaskState::Running | TaskState::Aborted => {
                    task.state = TaskState::Aborted;
                    running.insert(itt);
                }
            }
        }
        self.update_window();
        running
    }

    fn abort_collecting(&mut self) {
        self.abort_where(|_, t| t.state == TaskState::Collecting);
    }

    fn task_quiesced(&mut self, itt: u32) {
        let mut ready = Vec::new();
        for (i, tmf) in self.pending_tmfs.iter_mut().enumerate() {
            tmf.waiting.remove(&itt);
            if tmf.waiting.is_empty() {
                ready.push(i);
            }
        }
        for i in ready.into_iter().rev() {
            let tmf = self.pending_tmfs.remove(i);
            self.writer
                .send(encode::tmf_response(tmf.itt, tmf.response));
            if tmf.close_after {
                self.closing = true;
            }
        }
    }

    fn task_mgmt(&mut self, pdu: &Pdu) {
        let Header::TaskMgmt {
            function,
            lun,
            itt,
            ref_task_tag,
            cmd_sn,
            ref_cmd_sn,
            ..
        } = pdu.header
        else {
            return;
        };
        const COMPLETE: u8 = 0;
        const NO_TASK: u8 = 1;
        const NO_LUN: u8 = 2;
        const REASSIGN_UNSUPPORTED: u8 = 4;
        const UNSUPPORTED: u8 = 5;
        let (Some(target), Some(nexus)) = (self.target.clone(), self.nexus.clone()) else {
            self.writer.send(encode::tmf_response(itt, UNSUPPORTED));
            return;
        };
        let lun_no = depot_scsi::lun::decode(lun).unwrap_or(u64::MAX);
        let lun_exists = target.scsi.lun(lun_no).is_some();
        let mut close_after = false;
        let (response, waiting) = match function {
            1 => {
                if self.tasks.contains_key(&ref_task_tag) {
                    (COMPLETE, self.abort_where(|t, _| t == ref_task_tag))
                } else if serial::in_window(ref_cmd_sn, self.exp_cmd_sn, self.max_cmd_sn)
                    && serial::lt(ref_cmd_sn, cmd_sn)
                {
                    // Not received yet: consider it received (plug the hole).
                    if ref_cmd_sn == self.exp_cmd_sn {
                        self.pending.insert(ref_cmd_sn, Pending::Consumed);
                        while let Some(next) = self.pending.remove(&self.exp_cmd_sn) {
                            self.exp_cmd_sn = self.exp_cmd_sn.wrapping_add(1);
                            let _ = self.deliver(next);
                        }
                    } else {
                        self.pending.entry(ref_cmd_sn).or_insert(Pending::Consumed);
                    }
                    self.update_window();
                    (COMPLETE, HashSet::new())
                } else if serial::lt(ref_cmd_sn, self.exp_cmd_sn) {
                    // Received and already completed: its response is on
                    // the wire, so there is nothing to abort.
                    (NO_TASK, HashSet::new())
                } else {
                    (NO_TASK, HashSet::new())
                }
            }
            2 | 4 => {
                if !lun_exists {
                    (NO_LUN, HashSet::new())
                } else {
                    (COMPLETE, self.abort_where(|_, t| t.lun == lun_no))
                }
            }
            5 => {
                if !lun_exists {
                    (NO_LUN, HashSet::new())
                } else {
                    let waiting = self.abort_where(|_, t| t.lun == lun_no);
                    match target.scsi.logical_unit_reset(lun_no, &nexus) {
                        TmfOutcome::Complete => (COMPLETE, waiting),
                        TmfOutcome::NoSuchLun => (NO_LUN, waiting),
                    }
                }
            }
            6 | 7 => {
                let waiting = self.abort_where(|_, _| true);
                target.scsi.target_reset(&nexus);
                close_after = function == 7;
                (COMPLETE, waiting)
            }
            8 => (REASSIGN_UNSUPPORTED, HashSet::new()),
            _ => (UNSUPPORTED, HashSet::new()),
        };
        if waiting.is_empty() {
            self.writer.send(encode::tmf_response(itt, response));
            if close_after {
                self.closing = true;
            }
        } else {
            self.pending_tmfs.push(PendingTmf {
                itt,
                response,
                waiting,
                close_after,
            });
        }
    }

    fn text(&mut self, pdu: &Pdu) -> Result<(), Stop> {
        let Header::Text {
            itt,
            ttt,
            cont,
            lun,
            ..
        } = pdu.header
        else {
            return Ok(());
        };
        if pdu.data_digest_error {
            self.send_reject(reject::DATA_DIGEST, &pdu.bhs);
            return Ok(());
        }
        if ttt != RESERVED_TAG {
            // The initiator asks for the rest of a long response.
            let Some((_, rest)) = self.text_cont.remove(&ttt) else {
                self.send_reject(reject::INVALID_PDU_FIELD, &pdu.bhs);
                return Ok(());
            };
            self.send_text(itt, lun, rest);
            return Ok(());
        }
        if self.text_acc.len() + pdu.data.len() > MAX_TEXT {
            return Err(Stop::Violation("text request too long"));
        }
        self.text_acc.extend_from_slice(&pdu.data);
        if cont {
            let t = self.alloc_ttt();
            self.writer.send(encode::text_response(
                itt,
                t,
                lun,
                false,
                false,
                Bytes::new(),
            ));
            return Ok(());
        }
        let text = std::mem::take(&mut self.text_acc);
        let Ok(offers) = KeyValues::parse(&text) else {
            self.send_reject(reject::PROTOCOL_ERROR, &pdu.bhs);
            return Ok(());
        };
        let mut resp = KeyValues::default();
        for (key, value) in &offers.0 {
            match key.as_str() {
                "SendTargets" => self.send_targets(value, &mut resp),
                "MaxRecvDataSegmentLength" => {
                    // Declarative; may be renegotiated in full feature phase.
                    if let Ok(v) = value.parse::<u32>()
                        && (512..=0x00ff_ffff).contains(&v)
                    {
                        self.params.initiator_mrdsl = v;
                    }
                }
                _ => resp.push(key, "NotUnderstood"),
            }
        }
        self.send_text(itt, lun, Bytes::from(resp.encode()));
        Ok(())
    }

    /// Sends a text response, continuing it over several PDUs when longer
    /// than the initiator can receive.
    fn send_text(&mut self, itt: u32, lun: [u8; 8], data: Bytes) {
        let max = self.params.initiator_mrdsl.max(512) as usize;
        if data.len() <= max {
            self.writer.send(encode::text_response(
                itt,
                RESERVED_TAG,
                lun,
                true,
                false,
                data,
            ));
        } else {
            let ttt = self.alloc_ttt();
            let head = data.slice(..max);
            let rest = data.slice(max..);
            if self.text_cont.len() >= MAX_TEXT_CONTINUATIONS {
                // Abandoned continuations: forget them rather than grow.
                self.text_cont.clear();
            }
            self.text_cont.insert(ttt, (itt, rest));
            self.writer
                .send(encode::text_response(itt, ttt, lun, false, true, head));
        }
    }

    fn send_targets(&self, value: &str, resp: &mut KeyValues) {
        let addr = match self.local {
            SocketAddr::V4(a) => format!("{}:{},{}", a.ip(), a.port(), PORTAL_GROUP_TAG),
            SocketAddr::V6(a) => format!("[{}]:{},{}", a.ip(), a.port(), PORTAL_GROUP_TAG),
        };
        for t in self.registry.targets() {
            let wanted = match value {
                "All" => true,
                "" => self.target.as_ref().is_some_and(|cur| cur.name == t.name),
                name => name == t.name,
            };
            if wanted && t.access.read().allows(&self.est.initiator) {
                resp.push("TargetName", t.name.clone());
                resp.push("TargetAddress", addr.clone());
            }
        }
    }

    fn logout_request(&mut self, reason: u8, itt: u32, cid: u16) {
        let response = match reason {
            0 => 0,
            1 if cid == self.cid => 0,
            1 => 1,
            _ => 2,
        };
        if response != 0 {
            self.writer
                .send(encode::logout_response(itt, response, 0, 0));
            return;
        }
        // Tasks not yet running are ended; running ones finish first.
        self.abort_collecting();
        self.logout = Some(itt);
    }
}

/// Fixed-format sense data for errors the transport raises itself.
fn fixed_sense(key: u8, asc: u8, ascq: u8) -> Bytes {
    Bytes::from(Sense::new(key, (asc, ascq)).encode_fixed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_sense_layout() {
        let s = fixed_sense(0x0b, 0x47, 0x05);
        assert_eq!(s[0], 0x70);
        assert_eq!(s[2], 0x0b);
        assert_eq!((s[12], s[13]), (0x47, 0x05));
        assert_eq!(s.len(), 18);
    }
}
