//! Sense data the transport raises itself, and the one place it is encoded.
//!
//! The iSCSI layer ends some tasks without the SCSI layer: broken data
//! phases (bad DataSN, offset, transfer tag, too much data), data digest
//! errors and writes larger than accepted. Their sense is a
//! [`depot_scsi::sense::Sense`]; [`encode`] turns it into bytes for the
//! addressed logical unit.
//!
//! Invariant: every transport-raised sense goes through [`encode`], so the
//! format follows the LU's D_SENSE once `encode` asks the SCSI target for
//! it (today: fixed format, as before).

use bytes::Bytes;
use depot_scsi::sense::{Sense, asc::Code, key};
use depot_scsi::{Completion, ScsiTarget, Status};

// LOCAL ASC/ASCQ CODES: `depot_scsi::sense::asc` does not define these
// transport codes (SPC-4 Annex D); move them there when it does.

/// DATA PHASE ERROR (bad DataSN, or a sequence ended short).
pub(super) const DATA_PHASE_ERROR: Code = (0x4b, 0x00);
/// INVALID TARGET PORT TRANSFER TAG RECEIVED.
pub(super) const INVALID_TTT: Code = (0x4b, 0x01);
/// TOO MUCH WRITE DATA.
pub(super) const TOO_MUCH_WRITE_DATA: Code = (0x4b, 0x02);
/// DATA OFFSET ERROR.
pub(super) const DATA_OFFSET_ERROR: Code = (0x4b, 0x05);
/// PROTOCOL SERVICE CRC ERROR (a data digest error hit the task's data).
pub(super) const PROTOCOL_SERVICE_CRC_ERROR: Code = (0x47, 0x05);

/// ABORTED COMMAND with a transport code: how a task with a broken data
/// phase ends.
pub(super) fn aborted(code: Code) -> Sense {
    Sense::new(key::ABORTED_COMMAND, code)
}

/// Encodes transport-raised sense for `lun` of `target` (`None`: a
/// session without a target, which has no tasks in practice).
///
/// This is the one place: it is meant to become
/// `target.encode_sense(lun, sense)` (fixed or descriptor format per the
/// LU's D_SENSE) once depot-scsi offers it; until then, fixed format.
pub(super) fn encode(target: Option<&ScsiTarget>, lun: u64, sense: &Sense) -> Bytes {
    let _ = (target, lun);
    Bytes::from(sense.encode(false))
}

/// CHECK CONDITION for a task the transport ends itself, reporting the
/// whole expected transfer as not done.
pub(super) fn check_condition(
    target: Option<&ScsiTarget>,
    lun: u64,
    sense: &Sense,
    edtl: u32,
) -> Completion {
    Completion {
        status: Status::CHECK_CONDITION,
        sense: Some(encode(target, lun, sense)),
        data: Bytes::new(),
        transfer_length: edtl,
    }
}

#[cfg(test)]
mod tests {
    use depot_scsi::Registry;

    use super::*;

    #[test]
    fn fixed_sense_layout() {
        let target = ScsiTarget::new(Registry::new());
        let s = encode(Some(&target), 0, &aborted(PROTOCOL_SERVICE_CRC_ERROR));
        assert_eq!(s[0], 0x70);
        assert_eq!(s[2], 0x0b);
        assert_eq!((s[12], s[13]), (0x47, 0x05));
        assert_eq!(s.len(), 18);
    }
}
