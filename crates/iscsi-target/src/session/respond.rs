//! Answering a completed SCSI task: Data-In and SCSI Response.
//!
//! Read data is cut into Data-In PDUs of at most the initiator's
//! MaxRecvDataSegmentLength, grouped into sequences of at most
//! MaxBurstLength (F bit on the last PDU of each), DataSN counting from 0
//! and each PDU's buffer offset where its bytes sit. The data segments are
//! slices of the completion's buffer, never copies.
//!
//! Invariants: status rides on the last Data-In (S bit) only for GOOD
//! without sense; otherwise a separate SCSI Response follows, carrying the
//! sense and ExpDataSN = R2Ts plus Data-In PDUs sent for the task; the
//! residual (over/underflow) is always computed from the transfer length
//! the command describes against the expected transfer length; never more
//! than the expected transfer length goes out as data.

use depot_iscsi_proto::encode::{self, Residual};
use depot_iscsi_proto::params::SessionParams;
use depot_scsi::{Completion, Status};

use super::Wire;
use super::task::Task;

/// Sends the answer to task `itt` for completion `c`.
pub(super) fn respond(
    out: &mut impl Wire,
    params: &SessionParams,
    itt: u32,
    task: &Task,
    c: Completion,
) {
    let residual = Residual::of(c.transfer_length, task.edtl);
    let good = c.status == Status::GOOD && c.sense.is_none();
    let mut data_pdus = task.data_pdus;
    let len = c.data.len().min(task.edtl as usize);
    if task.read && len > 0 {
        let mrdsl = params.initiator_mrdsl.max(512) as usize;
        let burst = params.max_burst_length.max(512) as usize;
        let mut off = 0usize;
        let mut data_sn = 0u32;
        while off < len {
            let seq_end = ((off / burst + 1) * burst).min(len);
            let chunk = mrdsl.min(seq_end - off);
            let end = off + chunk;
            let status = (end == len && good).then_some((c.status.0, residual));
            out.send(encode::data_in(
                itt,
                task.lun_field,
                c.data.slice(off..end),
                data_sn,
                // Below `len`, at most the u32 EDTL.
                u32::try_from(off).unwrap_or(u32::MAX),
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
    out.send(encode::scsi_response(
        itt,
        c.status.0,
        c.sense.as_deref(),
        residual,
        data_pdus,
    ));
}
