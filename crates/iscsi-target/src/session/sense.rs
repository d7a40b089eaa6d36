//! Sense data the transport raises itself, and the one place it is encoded.
//!
//! The iSCSI layer ends some tasks without the SCSI layer: broken data
//! phases (bad DataSN, offset, transfer tag, too much data), data digest
//! errors and writes larger than accepted. Their sense is a
//! [`depot_scsi::sense::Sense`]; [`encode`] turns it into bytes for the
//! addressed logical unit.
//!
//! Invariant: every transport-raised sense goes through [`encode`], so the
//! format follows the LU's D_SENSE.

use bytes::Bytes;
use depot_scsi::sense::{Sense, asc::Code, key};
use depot_scsi::{Completion, ScsiTarget, Status};

pub(super) use depot_scsi::sense::asc::{
    DATA_OFFSET_ERROR, DATA_PHASE_ERROR, INVALID_TARGET_PORT_TRANSFER_TAG as INVALID_TTT,
    PROTOCOL_SERVICE_CRC_ERROR, TOO_MUCH_WRITE_DATA,
};

/// ABORTED COMMAND with a transport code: how a task with a broken data
/// phase ends.
pub(super) fn aborted(code: Code) -> Sense {
    Sense::new(key::ABORTED_COMMAND, code)
}

/// Encodes transport-raised sense for `lun` of `target`: fixed or
/// descriptor format as the LU's D_SENSE says (fixed for a LUN that does
/// not exist, or a session without a target, which has no tasks in
/// practice).
pub(super) fn encode(target: Option<&ScsiTarget>, lun: u64, sense: &Sense) -> Bytes {
    match target {
        Some(t) => t.encode_sense(lun, sense),
        None => Bytes::from(sense.encode(false)),
    }
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
