//! The sans-IO session core: one connection's protocol state machine
//! (RFC 7143, ErrorRecoveryLevel 0), without sockets, tasks or timers.
//!
//! Inputs are received PDUs ([`Session::receive`]), command completions
//! ([`Session::complete`]), the idle timer ([`Session::tick`]) and shutdown
//! ([`Session::shutdown`]); after each batch of inputs the shell asks
//! [`Session::end`] whether the connection is over. The core answers
//! through its host ([`Wire`], [`Host`]): send this PDU, publish this
//! command window, execute this command. The calls are synchronous and
//! monomorphized, so the core costs the hot path nothing the shell would
//! not do itself: no queue between them, no allocation, no copy.
//!
//! Parts, in dependency order (each uses only those above it and this
//! hub):
//! - `sense`: transport-raised sense and the one function that encodes it;
//! - `window`: the CmdSN window: ordering, duplicates, MaxCmdSN;
//! - `task`: tasks by ITT: Data-Out collection, R2Ts, the write budget;
//! - `respond`: Data-In cutting and SCSI Responses with residuals;
//! - `tmf`: task management with quiesce;
//! - `control`: Text/SendTargets, Logout, NOP-Out echo, the NOP-In ping;
//! - `login`: the login phase, which hands an [`Established`] login to
//!   [`Session::new`].
//!
//! Invariants (beyond the parts'): non-immediate PDUs take effect in CmdSN
//! order; a task is executed once its turn has come and all its data is in;
//! the window is published before any response that should carry it is
//! sent; protocol violations (bad framing is the shell's) end in a
//! [`Fault`] and the connection closes, while unknown opcodes, SNACK and
//! data digest errors are answered with a Reject.

mod control;
mod login;
mod respond;
mod sense;
mod task;
mod tmf;
mod window;

#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use depot_iscsi_proto::RESERVED_TAG;
use depot_iscsi_proto::encode::{self, TargetPdu, reject};
use depot_iscsi_proto::params::SessionParams;
use depot_iscsi_proto::pdu::{Header, Pdu};
use depot_scsi::sense::Sense;
use depot_scsi::{Completion, Nexus, ScsiTarget};

use crate::config::PortalConfig;
use crate::registry::{TargetEntry, TargetRegistry};

use control::TextState;
use task::{DataOutcome, HandOff, Task, TaskState, Tasks};
use tmf::PendingTmf;
use window::{CmdWindow, Pending};

pub use login::{Established, LoginFlow, LoginPhase};

/// Where the core's PDUs go.
pub trait Wire {
    /// Queues a PDU for the initiator. The shell stamps StatSN in queue
    /// order and the last published window on it.
    fn send(&mut self, pdu: TargetPdu);
    /// Publishes ExpCmdSN and MaxCmdSN for the PDUs sent from now on.
    fn publish_window(&mut self, exp_cmd_sn: u32, max_cmd_sn: u32);
}

/// The core's host in the full feature phase: a [`Wire`] that can also
/// execute SCSI commands.
pub trait Host: Wire {
    /// Executes a command: returns its completion when it finished right
    /// away (the inline fast path), or `None` when it runs elsewhere and
    /// its completion will come through [`Session::complete`].
    fn execute(&mut self, exec: Exec<'_>) -> Option<Completion>;
}

/// A SCSI command ready for execution: ordered, with all its data.
#[derive(Debug)]
pub struct Exec<'a> {
    /// The target device.
    pub scsi: &'a Arc<ScsiTarget>,
    /// The session's I_T nexus.
    pub nexus: &'a Arc<Nexus>,
    /// Initiator task tag: the key of the completion.
    pub itt: u32,
    /// Addressed LUN.
    pub lun: u64,
    /// The CDB, decoded once on arrival.
    pub cdb: depot_scsi::ParsedCdb,
    /// Write data, in order, as the PDUs brought it.
    pub data: Vec<Bytes>,
    /// Data-in the initiator expects (0 for writes).
    pub expected_in: u32,
    /// The initiator's expected data transfer length.
    pub edtl: u32,
}

/// Why the connection must close now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The initiator broke the protocol.
    Violation(&'static str),
    /// The initiator did not answer a NOP-In ping in time.
    PingUnanswered,
}

/// How a connection ended normally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// A TMF (TARGET COLD RESET) closed it after its response.
    Closed,
    /// Logged out; the Logout Response was sent.
    LoggedOut,
    /// Shutdown with nothing left running.
    ShutDown,
}

/// Target transfer tags: R2Ts, text continuations and pings share one
/// sequence that never yields the reserved tag.
pub(super) struct Tags {
    next: u32,
}

impl Tags {
    fn new() -> Self {
        Tags { next: 1 }
    }

    pub(super) fn next(&mut self) -> u32 {
        let t = self.next;
        self.next = self.next.wrapping_add(1);
        if self.next == RESERVED_TAG {
            self.next = 1;
        }
        t
    }
}

/// One connection in full feature phase.
pub struct Session {
    config: Arc<PortalConfig>,
    registry: Arc<TargetRegistry>,
    params: SessionParams,
    initiator: String,
    cid: u16,
    /// The portal the connection came in on (SendTargets addresses).
    portal: SocketAddr,
    target: Option<Arc<TargetEntry>>,
    nexus: Option<Arc<Nexus>>,
    window: CmdWindow,
    tasks: Tasks,
    tags: Tags,
    pending_tmfs: Vec<PendingTmf>,
    text: TextState,
    /// Outstanding ping: its TTT and when it was sent.
    ping: Option<(u32, Instant)>,
    /// ITT of an accepted logout, answered once nothing runs.
    logout: Option<u32>,
    closing: bool,
    shutting_down: bool,
}

impl Session {
    /// The full feature phase after login `est` on a connection to
    /// `portal`; publishes the initial window.
    pub fn new(
        est: Established,
        registry: Arc<TargetRegistry>,
        config: Arc<PortalConfig>,
        portal: SocketAddr,
        out: &mut impl Wire,
    ) -> Session {
        let nexus = est.target.as_ref().map(|t| {
            // One port per portal group: the relative target port id is
            // the group's tag (distinct per router of a cluster).
            Arc::new(Nexus::new(
                &est.initiator,
                est.isid,
                &t.name,
                config.portal_group_tag,
            ))
        });
        let mut session = Session {
            window: CmdWindow::new(est.cmd_sn, config.queue_depth),
            config,
            registry,
            params: est.params,
            initiator: est.initiator,
            cid: est.cid,
            portal,
            target: est.target,
            nexus,
            tasks: Tasks::default(),
            tags: Tags::new(),
            pending_tmfs: Vec::new(),
            text: TextState::default(),
            ping: None,
            logout: None,
            closing: false,
            shutting_down: false,
        };
        session.update_window(out);
        session
    }

    /// Initiator name (for logs).
    pub fn initiator(&self) -> &str {
        &self.initiator
    }

    /// Commands handed off and not completed yet.
    pub fn running(&self) -> usize {
        self.tasks.running()
    }

    /// Whether the core takes more PDUs: not after a logout, a closing TMF
    /// or shutdown.
    pub fn reading(&self) -> bool {
        !self.shutting_down && !self.closing && self.logout.is_none()
    }

    /// Whether [`shutdown`](Self::shutdown) was called.
    pub fn shutting_down(&self) -> bool {
        self.shutting_down
    }

    /// Whether the connection is over, after a batch of inputs; sends the
    /// Logout Response when a logout waited for running commands.
    pub fn end(&mut self, out: &mut impl Wire) -> Option<End> {
        if self.closing {
            return Some(End::Closed);
        }
        if self.tasks.running() == 0 {
            if let Some(itt) = self.logout.take() {
                out.send(self.logout_response(itt));
                return Some(End::LoggedOut);
            }
            if self.shutting_down {
                return Some(End::ShutDown);
            }
        }
        None
    }

    /// The portal is shutting down: stop reading, end the collecting
    /// tasks; running ones may still complete.
    pub fn shutdown(&mut self, out: &mut impl Wire) {
        self.shutting_down = true;
        self.abort_collecting(out);
    }

    /// The connection is gone: the SCSI target forgets the I_T nexus
    /// (reservations, unit attentions).
    pub fn nexus_lost(&self) {
        if let (Some(t), Some(n)) = (&self.target, &self.nexus) {
            t.scsi.nexus_lost(n);
        }
    }

    /// Handles one received PDU.
    pub fn receive(&mut self, pdu: Pdu, host: &mut impl Host) -> Result<(), Fault> {
        match pdu.header {
            Header::DataOut { .. } => self.data_out(pdu, host),
            Header::Snack { .. } => {
                // SNACK needs ErrorRecoveryLevel > 0.
                host.send(encode::reject(reject::PROTOCOL_ERROR, &pdu.bhs));
                Ok(())
            }
            Header::Login { .. } => Err(Fault::Violation("login request in full feature phase")),
            Header::Unknown { .. } => {
                host.send(encode::reject(reject::COMMAND_NOT_SUPPORTED, &pdu.bhs));
                Ok(())
            }
            Header::NopOut { itt, ttt, .. } if itt == RESERVED_TAG => {
                // An answer to our ping; it must be immediate and carries no
                // CmdSN to consume.
                self.ping_answered(ttt);
                Ok(())
            }
            _ => self.sequence(pdu, host),
        }
    }

    /// A command handed off through [`Host::execute`] completed.
    pub fn complete(&mut self, itt: u32, completion: Completion, out: &mut impl Wire) {
        let Some(task) = self.tasks.finish(itt) else {
            return;
        };
        // The response carries the window, so open it first.
        self.update_window(out);
        if task.state == TaskState::Aborted {
            self.task_quiesced(itt, out);
        } else {
            respond::respond(out, &self.params, itt, &task, completion);
        }
        for waiter in self.tasks.take_budget_waiters() {
            self.tasks
                .issue_r2ts(waiter, &self.params, &mut self.tags, out);
        }
    }

    /// Publishes ExpCmdSN and a MaxCmdSN that never decreases and closes as
    /// live tasks approach the queue depth.
    fn update_window(&mut self, out: &mut impl Wire) {
        let (exp, max) = self.window.update(self.tasks.len());
        out.publish_window(exp, max);
    }

    /// Orders PDUs that carry a CmdSN.
    fn sequence(&mut self, pdu: Pdu, host: &mut impl Host) -> Result<(), Fault> {
        let Some(sn) = pdu.header.cmd_sn() else {
            return Ok(());
        };
        let immediate = pdu.header.is_immediate();
        let is_scsi = matches!(pdu.header, Header::ScsiCommand { .. });
        if !immediate && !self.window.contains(sn) {
            tracing::debug!(
                sn,
                exp = self.window.exp(),
                max = self.window.max(),
                "CmdSN outside window: dropped"
            );
            return Ok(());
        }
        if !immediate && self.window.is_duplicate(sn) {
            tracing::debug!(sn, "duplicate CmdSN: dropped");
            return Ok(());
        }
        if immediate && is_scsi && self.tasks.len() >= 2 * self.window.queue_depth() as usize {
            // Immediate commands bypass the CmdSN window; bound them here.
            host.send(encode::reject(reject::IMMEDIATE_REJECT, &pdu.bhs));
            return Ok(());
        }
        let entry = if is_scsi {
            match self.accept_command(&pdu, host) {
                Ok(itt) => Pending::Scsi(itt),
                Err(reason) => {
                    host.send(encode::reject(reason, &pdu.bhs));
                    Pending::Consumed
                }
            }
        } else {
            Pending::Other(Box::new(pdu))
        };
        if immediate {
            self.deliver(entry, host)?;
        } else if let Some(entry) = self.window.arrive(sn, entry) {
            self.deliver(entry, host)?;
            while let Some(next) = self.window.next_ready() {
                self.deliver(next, host)?;
            }
        }
        self.update_window(host);
        Ok(())
    }

    /// Acts on a PDU whose CmdSN turn has come.
    fn deliver(&mut self, entry: Pending, host: &mut impl Host) -> Result<(), Fault> {
        match entry {
            Pending::Consumed => Ok(()),
            Pending::Scsi(itt) => {
                if let Some(t) = self.tasks.get_mut(itt) {
                    t.ordered = true;
                    self.advance(itt, host);
                }
                Ok(())
            }
            Pending::Other(pdu) => match pdu.header {
                Header::NopOut { .. } => {
                    self.nop_out(*pdu, host);
                    Ok(())
                }
                Header::TaskMgmt { .. } => {
                    self.task_mgmt(&pdu, host);
                    Ok(())
                }
                Header::Text { .. } => self.text(&pdu, host),
                Header::Logout {
                    reason, itt, cid, ..
                } => {
                    self.logout_request(reason, itt, cid, host);
                    Ok(())
                }
                _ => Ok(()),
            },
        }
    }

    /// Creates the task for a SCSI Command PDU (before CmdSN ordering, so
    /// unsolicited data can be collected). Returns the Reject reason when
    /// the PDU cannot be accepted.
    fn accept_command(&mut self, pdu: &Pdu, out: &mut impl Wire) -> Result<u32, u8> {
        if self.target.is_none() {
            // Discovery sessions carry no SCSI commands.
            return Err(reject::PROTOCOL_ERROR);
        }
        let itt = self
            .tasks
            .accept(pdu, &self.params, self.config.max_write_transfer)?;
        if pdu.data_digest_error {
            out.send(encode::reject(reject::DATA_DIGEST, &pdu.bhs));
        }
        Ok(itt)
    }

    fn data_out(&mut self, pdu: Pdu, host: &mut impl Host) -> Result<(), Fault> {
        let itt = pdu.header.itt();
        match self.tasks.data_out(&pdu) {
            DataOutcome::Discarded => Ok(()),
            DataOutcome::Violation(why) => Err(Fault::Violation(why)),
            DataOutcome::Failed(code) => {
                self.fail_task(itt, sense::aborted(code), host);
                Ok(())
            }
            DataOutcome::Accepted => {
                if pdu.data_digest_error {
                    host.send(encode::reject(reject::DATA_DIGEST, &pdu.bhs));
                }
                self.advance(itt, host);
                Ok(())
            }
        }
    }

    /// Moves a task forward: execute it when ordered and complete, else
    /// solicit the rest of its data.
    fn advance(&mut self, itt: u32, host: &mut impl Host) {
        let Some(task) = self.tasks.get(itt) else {
            return;
        };
        if !task.ordered || task.state != TaskState::Collecting {
            return;
        }
        if task.oversize {
            let c = self.transport_check(task, &Sense::invalid_cdb());
            self.finish_now(itt, c, host);
            return;
        }
        // At most the u32 EDTL (Data-Out beyond it is refused).
        let received = u32::try_from(task.data.len()).unwrap_or(u32::MAX);
        let need = if task.write { task.edtl } else { 0 };
        if received >= need {
            self.execute(itt, host);
            return;
        }
        if received < task.unsolicited_end {
            // Unsolicited data still to come.
            return;
        }
        self.tasks
            .issue_r2ts(itt, &self.params, &mut self.tags, host);
    }

    /// Hands a ready task to the host for execution.
    fn execute(&mut self, itt: u32, host: &mut impl Host) {
        let (Some(target), Some(nexus)) = (&self.target, &self.nexus) else {
            return;
        };
        let exec = match self.tasks.hand_off(itt) {
            HandOff::Unknown => return,
            HandOff::CrcFailed { lun, edtl } => {
                let sense = sense::aborted(sense::PROTOCOL_SERVICE_CRC_ERROR);
                let c = sense::check_condition(Some(&target.scsi), lun, &sense, edtl);
                self.finish_now(itt, c, host);
                return;
            }
            HandOff::Ready {
                lun,
                cdb,
                data,
                expected_in,
                edtl,
            } => Exec {
                scsi: &target.scsi,
                nexus,
                itt,
                lun,
                cdb,
                data,
                expected_in,
                edtl,
            },
        };
        if let Some(c) = host.execute(exec) {
            self.complete(itt, c, host);
        }
    }

    /// Completes a task on the spot: one the transport ends itself.
    fn finish_now(&mut self, itt: u32, completion: Completion, out: &mut impl Wire) {
        if self.tasks.start(itt) {
            self.complete(itt, completion, out);
        }
    }

    /// Ends a task whose data transfer broke the rules (wrong DataSN, offset,
    /// length or transfer tag) with CHECK CONDITION, ABORTED COMMAND. The
    /// session stays up; later Data-Out for the task is discarded.
    fn fail_task(&mut self, itt: u32, sense: Sense, out: &mut impl Wire) {
        tracing::info!(initiator = %self.initiator, itt, asc = sense.asc, ascq = sense.ascq,
            "Data-Out protocol error, task failed");
        let Some(task) = self.tasks.get(itt) else {
            return;
        };
        let c = self.transport_check(task, &sense);
        self.finish_now(itt, c, out);
    }

    /// CHECK CONDITION with transport-raised `sense` for `task`.
    fn transport_check(&self, task: &Task, sense: &Sense) -> Completion {
        let scsi = self.target.as_deref().map(|t| &*t.scsi);
        sense::check_condition(scsi, task.lun, sense, task.edtl)
    }

    /// Aborts the tasks matching `pred` (see [`Tasks::abort_where`]) and
    /// republishes the window.
    fn abort_where(
        &mut self,
        out: &mut impl Wire,
        pred: impl Fn(u32, &Task) -> bool,
    ) -> HashSet<u32> {
        let running = self.tasks.abort_where(pred);
        self.update_window(out);
        running
    }

    fn abort_collecting(&mut self, out: &mut impl Wire) {
        self.abort_where(out, |_, t| t.state == TaskState::Collecting);
    }
}
