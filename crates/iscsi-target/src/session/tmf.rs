//! Task management (RFC 7143 §11.5): ABORT TASK, ABORT/CLEAR TASK SET,
//! LOGICAL UNIT RESET, TARGET WARM/COLD RESET.
//!
//! Aborting drops collecting tasks at once and marks handed-off ones
//! aborted; their completions are swallowed. ABORT TASK for a command not
//! received yet (RefCmdSN inside the window, before the TMF's CmdSN)
//! plugs its CmdSN so it is never executed; for a command already answered
//! it reports "task does not exist". Resets also tell the SCSI target
//! (unit attentions, reservations).
//!
//! Invariants: an aborted task never gets a response; a TMF response goes
//! out only once every task it aborted has quiesced (its completion
//! arrived), in the order the last ones quiesce; TARGET COLD RESET closes
//! the connection right after its response.

use std::collections::HashSet;

use depot_iscsi_proto::encode;
use depot_iscsi_proto::pdu::{Header, Pdu};
use depot_iscsi_proto::serial;
use depot_scsi::TmfOutcome;

use super::{Host, Session, Wire};

/// TMF responses (RFC 7143 §11.6.1).
const COMPLETE: u8 = 0;
const NO_TASK: u8 = 1;
const NO_LUN: u8 = 2;
const REASSIGN_UNSUPPORTED: u8 = 4;
const UNSUPPORTED: u8 = 5;

/// A TMF response waiting for aborted tasks to quiesce.
pub(super) struct PendingTmf {
    itt: u32,
    response: u8,
    waiting: HashSet<u32>,
    close_after: bool,
}

impl Session {
    /// Performs a Task Management Function Request (in CmdSN order).
    pub(super) fn task_mgmt(&mut self, pdu: &Pdu, host: &mut impl Host) {
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
        let (Some(target), Some(nexus)) = (self.target.clone(), self.nexus.clone()) else {
            host.send(encode::tmf_response(itt, UNSUPPORTED));
            return;
        };
        let lun_no = depot_scsi::lun::decode(lun).unwrap_or(u64::MAX);
        let lun_exists = target.scsi.lun(lun_no).is_some();
        let mut close_after = false;
        let (response, waiting) = match function {
            1 => {
                if self.tasks.contains(ref_task_tag) {
                    (COMPLETE, self.abort_where(host, |t, _| t == ref_task_tag))
                } else if self.window.contains(ref_cmd_sn) && serial::lt(ref_cmd_sn, cmd_sn) {
                    // Not received yet: consider it received (plug the hole).
                    if self.window.plug(ref_cmd_sn) {
                        while let Some(next) = self.window.next_ready() {
                            let _ = self.deliver(next, host);
                        }
                    }
                    self.update_window(host);
                    (COMPLETE, HashSet::new())
                } else {
                    // Received and already completed (its response is on
                    // the wire, so there is nothing to abort), or unknown.
                    (NO_TASK, HashSet::new())
                }
            }
            2 | 4 => {
                if !lun_exists {
                    (NO_LUN, HashSet::new())
                } else {
                    (COMPLETE, self.abort_where(host, |_, t| t.lun == lun_no))
                }
            }
            5 => {
                if !lun_exists {
                    (NO_LUN, HashSet::new())
                } else {
                    let waiting = self.abort_where(host, |_, t| t.lun == lun_no);
                    match target.scsi.logical_unit_reset(lun_no, &nexus) {
                        TmfOutcome::Complete => (COMPLETE, waiting),
                        TmfOutcome::NoSuchLun => (NO_LUN, waiting),
                    }
                }
            }
            6 | 7 => {
                let waiting = self.abort_where(host, |_, _| true);
                target.scsi.target_reset(&nexus);
                close_after = function == 7;
                (COMPLETE, waiting)
            }
            8 => (REASSIGN_UNSUPPORTED, HashSet::new()),
            _ => (UNSUPPORTED, HashSet::new()),
        };
        if waiting.is_empty() {
            host.send(encode::tmf_response(itt, response));
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

    /// An aborted task's completion arrived: answers the TMFs that waited
    /// only for it.
    pub(super) fn task_quiesced(&mut self, itt: u32, out: &mut impl Wire) {
        let mut ready = Vec::new();
        for (i, tmf) in self.pending_tmfs.iter_mut().enumerate() {
            tmf.waiting.remove(&itt);
            if tmf.waiting.is_empty() {
                ready.push(i);
            }
        }
        for i in ready.into_iter().rev() {
            let tmf = self.pending_tmfs.remove(i);
            out.send(encode::tmf_response(tmf.itt, tmf.response));
            if tmf.close_after {
                self.closing = true;
            }
        }
    }
}
