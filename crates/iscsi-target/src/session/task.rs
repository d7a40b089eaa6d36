//! SCSI tasks by ITT: their write data, R2Ts and the connection's write
//! budget.
//!
//! A task is created when its SCSI Command arrives (before CmdSN ordering,
//! so unsolicited data can be collected while it waits) and lives until its
//! completion is answered or it is aborted. A write collects immediate,
//! unsolicited and R2T-solicited data strictly in order (DataPDUInOrder and
//! DataSequenceInOrder are Yes): every Data-Out must continue exactly where
//! the data so far ends, with the next DataSN of its sequence, inside what
//! was offered (FirstBurstLength) or solicited (the R2T). The data stays in
//! the PDUs' own buffers ([`DataOut`]), never copied here.
//!
//! Invariants: a task is `Collecting` until it is handed off, then
//! `Running` (or `Aborted`, whose completion is dropped) until it is
//! removed; `running` counts the tasks not `Collecting`; bytes charged to
//! the write budget (received plus solicited) are released when the task
//! goes; no new R2T is sent while other tasks hold the budget and it would
//! overflow ([`WRITE_BUDGET`]), and such tasks are woken when a task ends;
//! at most MaxOutstandingR2T R2Ts of at most MaxBurstLength each are
//! outstanding per task, and never beyond the expected transfer length.

use std::collections::{HashMap, HashSet};

use bytes::Bytes;
use depot_iscsi_proto::RESERVED_TAG;
use depot_iscsi_proto::encode::{self, reject};
use depot_iscsi_proto::params::SessionParams;
use depot_iscsi_proto::pdu::{Header, Pdu};
use depot_scsi::ParsedCdb;
use depot_scsi::sense::asc::Code;

use super::sense::{DATA_OFFSET_ERROR, DATA_PHASE_ERROR, INVALID_TTT, TOO_MUCH_WRITE_DATA};
use super::{Tags, Wire};

/// Bytes of write data a connection may hold (received plus solicited by
/// outstanding R2Ts) before it stops sending new R2Ts.
pub(super) const WRITE_BUDGET: u64 = 256 << 20;

/// Where a task is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TaskState {
    /// Waiting for CmdSN order and/or data.
    Collecting,
    /// Handed off for execution.
    Running,
    /// Executing, but aborted: its completion is dropped.
    Aborted,
}

/// One outstanding R2T.
struct R2t {
    ttt: u32,
    offset: u32,
    len: u32,
    received: u32,
    next_data_sn: u32,
}

/// One SCSI command from arrival to response.
pub(super) struct Task {
    pub(super) lun_field: [u8; 8],
    pub(super) lun: u64,
    pub(super) cdb: ParsedCdb,
    pub(super) edtl: u32,
    pub(super) read: bool,
    pub(super) write: bool,
    pub(super) state: TaskState,
    /// Its CmdSN turn has come (or it is immediate).
    pub(super) ordered: bool,
    pub(super) data: DataOut,
    /// Unsolicited data may arrive up to this offset.
    pub(super) unsolicited_end: u32,
    unsolicited_data_sn: u32,
    r2ts: Vec<R2t>,
    next_r2t_offset: u32,
    r2t_sn: u32,
    /// R2T and Data-In PDUs sent, for the response's ExpDataSN.
    pub(super) data_pdus: u32,
    /// A data digest error hit this task's data: it fails with 47/05.
    pub(super) crc_failed: bool,
    /// The write is larger than we accept: fail without collecting.
    pub(super) oversize: bool,
    /// Bytes charged against the connection's write budget.
    charged: u64,
}

/// A write's data as it arrives: the data segments of its PDUs, shared
/// with the receive buffer, never copied here. The SCSI layer hands them to
/// the device as they are ([`depot_scsi::DataOut`]); memory held is what
/// arrived, which the connection's write budget bounds.
#[derive(Default)]
pub(super) struct DataOut {
    pieces: Vec<Bytes>,
    len: usize,
}

impl DataOut {
    pub(super) fn len(&self) -> usize {
        self.len
    }

    fn push(&mut self, piece: &Bytes) {
        if !piece.is_empty() {
            self.len += piece.len();
            self.pieces.push(piece.clone());
        }
    }

    pub(super) fn take(&mut self) -> Vec<Bytes> {
        self.len = 0;
        std::mem::take(&mut self.pieces)
    }
}

/// What a Data-Out PDU did to its task.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum DataOutcome {
    /// Taken into the task's data; the task may be ready to move on.
    Accepted,
    /// For no task we know, or one that collects nothing: dropped.
    Discarded,
    /// Broke the data-phase rules: the task fails with ABORTED COMMAND and
    /// this code.
    Failed(Code),
    /// For a task that already has all its data: close the connection.
    Violation(&'static str),
}

/// What [`Tasks::hand_off`] found.
pub(super) enum HandOff {
    /// No such task.
    Unknown,
    /// The task's data failed its digest: it must end with 47/05.
    CrcFailed {
        /// Addressed LUN.
        lun: u64,
        /// Expected data transfer length.
        edtl: u32,
    },
    /// Now running: what to execute.
    Ready {
        /// Addressed LUN.
        lun: u64,
        /// The CDB, decoded once on arrival.
        cdb: ParsedCdb,
        /// Write data in order.
        data: Vec<Bytes>,
        /// Data-in expected (0 for writes).
        expected_in: u32,
        /// Expected data transfer length.
        edtl: u32,
    },
}

/// The tasks of one connection.
#[derive(Default)]
pub(super) struct Tasks {
    map: HashMap<u32, Task>,
    running: usize,
    budget_used: u64,
    budget_waiters: Vec<u32>,
}

impl Tasks {
    /// Live tasks.
    pub(super) fn len(&self) -> usize {
        self.map.len()
    }

    /// Tasks handed off and not yet completed.
    pub(super) fn running(&self) -> usize {
        self.running
    }

    pub(super) fn contains(&self, itt: u32) -> bool {
        self.map.contains_key(&itt)
    }

    pub(super) fn get(&self, itt: u32) -> Option<&Task> {
        self.map.get(&itt)
    }

    pub(super) fn get_mut(&mut self, itt: u32) -> Option<&mut Task> {
        self.map.get_mut(&itt)
    }

    /// Creates the task for a SCSI Command PDU with its immediate data.
    /// Returns the Reject reason when the PDU cannot be accepted.
    pub(super) fn accept(
        &mut self,
        pdu: &Pdu,
        params: &SessionParams,
        max_write_transfer: u32,
    ) -> Result<u32, u8> {
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
        if self.map.contains_key(&itt) {
            return Err(reject::TASK_IN_PROGRESS);
        }
        let cdb = ParsedCdb::parse(&pdu.full_cdb().ok_or(reject::INVALID_PDU_FIELD)?);
        let imm = u32::try_from(pdu.data.len()).unwrap_or(u32::MAX);
        if imm > 0
            && (!write || imm > edtl || !params.immediate_data || imm > params.first_burst_length)
        {
            return Err(reject::PROTOCOL_ERROR);
        }
        let oversize = write && edtl > max_write_transfer;
        let mut unsolicited_end = imm;
        if write && !params.initial_r2t && !final_bit {
            unsolicited_end = params.first_burst_length.min(edtl).max(imm);
        }
        let mut data = DataOut::default();
        if !oversize {
            data.push(&pdu.data);
        }
        let charged = u64::from(unsolicited_end);
        self.budget_used += charged;
        self.map.insert(
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

    /// Checks a Data-Out PDU against its task's data phase and, when it
    /// fits, adds its data (a data digest error marks the task failed but
    /// the data still counts, so the sequence can end normally).
    pub(super) fn data_out(&mut self, pdu: &Pdu) -> DataOutcome {
        let Header::DataOut {
            final_bit,
            itt,
            ttt,
            data_sn,
            buffer_offset,
            ..
        } = pdu.header
        else {
            return DataOutcome::Discarded;
        };
        let Some(task) = self.map.get_mut(&itt) else {
            // Data for an aborted or rejected task: discard.
            return DataOutcome::Discarded;
        };
        if task.state != TaskState::Collecting {
            // All data already arrived: this is too much.
            return DataOutcome::Violation("Data-Out for a task that has all its data");
        }
        let len = u32::try_from(pdu.data.len()).unwrap_or(u32::MAX);
        // At most the u32 EDTL (Data-Out beyond it is refused).
        let received = u32::try_from(task.data.len()).unwrap_or(u32::MAX);
        if task.oversize {
            return DataOutcome::Discarded;
        }
        if ttt == RESERVED_TAG {
            if data_sn != task.unsolicited_data_sn {
                return DataOutcome::Failed(DATA_PHASE_ERROR);
            }
            if buffer_offset != received {
                return DataOutcome::Failed(DATA_OFFSET_ERROR);
            }
            if received.saturating_add(len) > task.unsolicited_end {
                return DataOutcome::Failed(TOO_MUCH_WRITE_DATA);
            }
            task.unsolicited_data_sn += 1;
            if final_bit {
                // The unsolicited sequence ends here.
                task.unsolicited_end = received + len;
                task.next_r2t_offset = task.unsolicited_end;
            }
        } else {
            let Some(pos) = task.r2ts.iter().position(|r| r.ttt == ttt) else {
                return DataOutcome::Failed(INVALID_TTT);
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
                return DataOutcome::Failed(code);
            }
            r.next_data_sn += 1;
            r.received += len;
            if r.received == r.len {
                task.r2ts.remove(pos);
            }
        }
        if pdu.data_digest_error {
            task.crc_failed = true;
        }
        task.data.push(&pdu.data);
        DataOutcome::Accepted
    }

    /// Solicits the rest of a write's data: R2Ts up to MaxOutstandingR2T,
    /// each at most MaxBurstLength, while the write budget allows (else the
    /// task waits for another task to end).
    pub(super) fn issue_r2ts(
        &mut self,
        itt: u32,
        params: &SessionParams,
        tags: &mut Tags,
        out: &mut impl Wire,
    ) {
        let max_outstanding = params.max_outstanding_r2t.max(1) as usize;
        let max_burst = params.max_burst_length.max(512);
        loop {
            let Some(task) = self.map.get_mut(&itt) else {
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
            let ttt = tags.next();
            let offset = task.next_r2t_offset;
            out.send(encode::r2t(
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

    /// Marks a collecting task as handed off. Returns false for an unknown
    /// task.
    pub(super) fn start(&mut self, itt: u32) -> bool {
        match self.map.get_mut(&itt) {
            Some(task) => {
                task.state = TaskState::Running;
                self.running += 1;
                true
            }
            None => false,
        }
    }

    /// Hands a ready task off for execution (one lookup): its CDB and data
    /// move out and it becomes `Running`. A task whose data was hit by a
    /// digest error is left as it is, for the caller to fail.
    pub(super) fn hand_off(&mut self, itt: u32) -> HandOff {
        let Some(task) = self.map.get_mut(&itt) else {
            return HandOff::Unknown;
        };
        if task.crc_failed {
            return HandOff::CrcFailed {
                lun: task.lun,
                edtl: task.edtl,
            };
        }
        task.state = TaskState::Running;
        self.running += 1;
        HandOff::Ready {
            lun: task.lun,
            cdb: task.cdb,
            data: task.data.take(),
            expected_in: if task.read { task.edtl } else { 0 },
            edtl: task.edtl,
        }
    }

    /// Removes a handed-off task whose completion arrived, releasing its
    /// budget.
    pub(super) fn finish(&mut self, itt: u32) -> Option<Task> {
        let task = self.map.remove(&itt)?;
        self.running = self.running.saturating_sub(1);
        self.budget_used = self.budget_used.saturating_sub(task.charged);
        Some(task)
    }

    /// Tasks that wait for write budget (the list is emptied; those still
    /// short re-register when retried).
    pub(super) fn take_budget_waiters(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.budget_waiters)
    }

    /// Aborts the tasks matching `pred`: collecting ones are dropped at
    /// once, handed-off ones become `Aborted`. Returns the latter: their
    /// completions are still to come (and will be dropped).
    pub(super) fn abort_where(&mut self, pred: impl Fn(u32, &Task) -> bool) -> HashSet<u32> {
        let mut running = HashSet::new();
        let doomed: Vec<u32> = self
            .map
            .iter()
            .filter(|(itt, t)| pred(**itt, t))
            .map(|(itt, _)| *itt)
            .collect();
        for itt in doomed {
            let Some(task) = self.map.get_mut(&itt) else {
                continue;
            };
            match task.state {
                TaskState::Collecting => {
                    let charged = task.charged;
                    self.map.remove(&itt);
                    self.budget_used = self.budget_used.saturating_sub(charged);
                }
                TaskState::Running | TaskState::Aborted => {
                    task.state = TaskState::Aborted;
                    running.insert(itt);
                }
            }
        }
        running
    }
}
