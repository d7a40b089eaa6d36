//! Sense data: keys, additional sense codes and their two encodings.
//!
//! Owns the one place where a [`BlockError`] becomes sense data
//! ([`from_block_error`]) and the fixed (0x70) / descriptor (0x72) encoders.
//! Invariants: every `Sense` encodes to at most [`MAX_SENSE_LEN`] bytes;
//! fixed format carries INFORMATION only when it fits in 32 bits (VALID
//! is cleared otherwise), descriptor format always carries it in full.

use depot_block::BlockError;

/// Longest encoding this module produces (descriptor format with an
/// information and a sense-key-specific descriptor).
pub const MAX_SENSE_LEN: usize = 8 + 12 + 8;

/// Sense keys (SPC-4 table 28).
pub mod key {
    /// NO SENSE.
    pub const NO_SENSE: u8 = 0x0;
    /// RECOVERED ERROR.
    pub const RECOVERED_ERROR: u8 = 0x1;
    /// NOT READY.
    pub const NOT_READY: u8 = 0x2;
    /// MEDIUM ERROR.
    pub const MEDIUM_ERROR: u8 = 0x3;
    /// HARDWARE ERROR.
    pub const HARDWARE_ERROR: u8 = 0x4;
    /// ILLEGAL REQUEST.
    pub const ILLEGAL_REQUEST: u8 = 0x5;
    /// UNIT ATTENTION.
    pub const UNIT_ATTENTION: u8 = 0x6;
    /// DATA PROTECT.
    pub const DATA_PROTECT: u8 = 0x7;
    /// COPY ABORTED.
    pub const COPY_ABORTED: u8 = 0xA;
    /// ABORTED COMMAND.
    pub const ABORTED_COMMAND: u8 = 0xB;
    /// MISCOMPARE.
    pub const MISCOMPARE: u8 = 0xE;
}

/// Additional sense code / qualifier pairs used by this crate.
pub mod asc {
    /// An (ASC, ASCQ) pair.
    pub type Code = (u8, u8);
    /// NO ADDITIONAL SENSE INFORMATION.
    pub const NO_ADDITIONAL_SENSE: Code = (0x00, 0x00);
    /// LOGICAL UNIT IS IN PROCESS OF BECOMING READY.
    pub const LU_BECOMING_READY: Code = (0x04, 0x01);
    /// LOGICAL UNIT NOT ACCESSIBLE, ASYMMETRIC ACCESS STATE TRANSITION.
    pub const LU_NOT_ACCESSIBLE_TRANSITIONING: Code = (0x04, 0x0A);
    /// LOGICAL UNIT NOT ACCESSIBLE, TARGET PORT IN STANDBY STATE.
    pub const LU_NOT_ACCESSIBLE_STANDBY: Code = (0x04, 0x0B);
    /// LOGICAL UNIT NOT ACCESSIBLE, TARGET PORT IN UNAVAILABLE STATE.
    pub const LU_NOT_ACCESSIBLE_UNAVAILABLE: Code = (0x04, 0x0C);
    /// WRITE ERROR.
    pub const WRITE_ERROR: Code = (0x0C, 0x00);
    /// COPY TARGET DEVICE NOT REACHABLE.
    pub const COPY_TARGET_NOT_REACHABLE: Code = (0x0D, 0x02);
    /// INVALID FIELD IN INFORMATION UNIT.
    pub const INVALID_FIELD_IN_IU: Code = (0x0E, 0x03);
    /// UNRECOVERED READ ERROR.
    pub const UNRECOVERED_READ_ERROR: Code = (0x11, 0x00);
    /// PARAMETER LIST LENGTH ERROR.
    pub const PARAMETER_LIST_LENGTH_ERROR: Code = (0x1A, 0x00);
    /// MISCOMPARE DURING VERIFY OPERATION.
    pub const MISCOMPARE_DURING_VERIFY: Code = (0x1D, 0x00);
    /// INVALID COMMAND OPERATION CODE.
    pub const INVALID_OPCODE: Code = (0x20, 0x00);
    /// LOGICAL BLOCK ADDRESS OUT OF RANGE.
    pub const LBA_OUT_OF_RANGE: Code = (0x21, 0x00);
    /// INVALID FIELD IN CDB.
    pub const INVALID_FIELD_IN_CDB: Code = (0x24, 0x00);
    /// LOGICAL UNIT NOT SUPPORTED.
    pub const LU_NOT_SUPPORTED: Code = (0x25, 0x00);
    /// INVALID FIELD IN PARAMETER LIST.
    pub const INVALID_FIELD_IN_PARAMETER_LIST: Code = (0x26, 0x00);
    /// INVALID RELEASE OF PERSISTENT RESERVATION.
    pub const INVALID_RELEASE_OF_PR: Code = (0x26, 0x04);
    /// TOO MANY TARGET DESCRIPTORS.
    pub const TOO_MANY_TARGET_DESCRIPTORS: Code = (0x26, 0x06);
    /// UNSUPPORTED TARGET DESCRIPTOR TYPE CODE.
    pub const UNSUPPORTED_TARGET_DESCRIPTOR: Code = (0x26, 0x07);
    /// TOO MANY SEGMENT DESCRIPTORS.
    pub const TOO_MANY_SEGMENT_DESCRIPTORS: Code = (0x26, 0x08);
    /// UNSUPPORTED SEGMENT DESCRIPTOR TYPE CODE.
    pub const UNSUPPORTED_SEGMENT_DESCRIPTOR: Code = (0x26, 0x09);
    /// WRITE PROTECTED.
    pub const WRITE_PROTECTED: Code = (0x27, 0x00);
    /// SOFTWARE WRITE PROTECTED (control mode page SWP).
    pub const SOFTWARE_WRITE_PROTECTED: Code = (0x27, 0x02);
    /// SPACE ALLOCATION FAILED WRITE PROTECT.
    pub const SPACE_ALLOCATION_FAILED: Code = (0x27, 0x07);
    /// POWER ON, RESET, OR BUS DEVICE RESET OCCURRED.
    pub const POWER_ON_RESET: Code = (0x29, 0x00);
    /// SCSI BUS RESET OCCURRED (used for target reset).
    pub const BUS_RESET: Code = (0x29, 0x02);
    /// BUS DEVICE RESET FUNCTION OCCURRED (logical unit reset).
    pub const BUS_DEVICE_RESET: Code = (0x29, 0x03);
    /// I_T NEXUS LOSS OCCURRED.
    pub const NEXUS_LOSS: Code = (0x29, 0x07);
    /// MODE PARAMETERS CHANGED.
    pub const MODE_PARAMETERS_CHANGED: Code = (0x2A, 0x01);
    /// RESERVATIONS PREEMPTED.
    pub const RESERVATIONS_PREEMPTED: Code = (0x2A, 0x03);
    /// RESERVATIONS RELEASED.
    pub const RESERVATIONS_RELEASED: Code = (0x2A, 0x04);
    /// REGISTRATIONS PREEMPTED.
    pub const REGISTRATIONS_PREEMPTED: Code = (0x2A, 0x05);
    /// ASYMMETRIC ACCESS STATE CHANGED.
    pub const ASYMMETRIC_ACCESS_STATE_CHANGED: Code = (0x2A, 0x06);
    /// CAPACITY DATA HAS CHANGED.
    pub const CAPACITY_DATA_CHANGED: Code = (0x2A, 0x09);
    /// SAVING PARAMETERS NOT SUPPORTED.
    pub const SAVING_PARAMETERS_NOT_SUPPORTED: Code = (0x39, 0x00);
    /// REPORTED LUNS DATA HAS CHANGED.
    pub const REPORTED_LUNS_DATA_CHANGED: Code = (0x3F, 0x0E);
    /// INTERNAL TARGET FAILURE.
    pub const INTERNAL_TARGET_FAILURE: Code = (0x44, 0x00);
    /// PROTOCOL SERVICE CRC ERROR (iSCSI data digest failure).
    pub const PROTOCOL_SERVICE_CRC_ERROR: Code = (0x47, 0x05);
    /// DATA PHASE ERROR (transport: data-out broke the rules).
    pub const DATA_PHASE_ERROR: Code = (0x4B, 0x00);
    /// INVALID TARGET PORT TRANSFER TAG RECEIVED (transport: Data-Out with
    /// an unknown target transfer tag).
    pub const INVALID_TARGET_PORT_TRANSFER_TAG: Code = (0x4B, 0x01);
    /// TOO MUCH WRITE DATA (transport: more data-out than expected).
    pub const TOO_MUCH_WRITE_DATA: Code = (0x4B, 0x02);
    /// DATA OFFSET ERROR (transport: data-out at the wrong buffer offset).
    pub const DATA_OFFSET_ERROR: Code = (0x4B, 0x05);
    /// INSUFFICIENT REGISTRATION RESOURCES.
    pub const INSUFFICIENT_REGISTRATION_RESOURCES: Code = (0x55, 0x04);
}

/// Sense data for one CHECK CONDITION (or the data REQUEST SENSE returns).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sense {
    /// Sense key.
    pub key: u8,
    /// Additional sense code.
    pub asc: u8,
    /// Additional sense code qualifier.
    pub ascq: u8,
    /// INFORMATION field (e.g. miscompare offset, failing LBA).
    pub information: Option<u64>,
    /// COMMAND-SPECIFIC INFORMATION field (e.g. EXTENDED COPY segment).
    pub command_specific: Option<u32>,
    /// Sense-key-specific bytes (SKSV is set when present), e.g. a field
    /// pointer for INVALID FIELD IN CDB.
    pub sense_key_specific: Option<[u8; 3]>,
}

impl Sense {
    /// Sense with a key and an (ASC, ASCQ) pair, nothing else.
    pub const fn new(key: u8, code: asc::Code) -> Sense {
        Sense {
            key,
            asc: code.0,
            ascq: code.1,
            information: None,
            command_specific: None,
            sense_key_specific: None,
        }
    }

    /// ILLEGAL REQUEST with the given code.
    pub const fn illegal(code: asc::Code) -> Sense {
        Sense::new(key::ILLEGAL_REQUEST, code)
    }

    /// ILLEGAL REQUEST, INVALID COMMAND OPERATION CODE.
    pub const fn invalid_opcode() -> Sense {
        Sense::illegal(asc::INVALID_OPCODE)
    }

    /// ILLEGAL REQUEST, INVALID FIELD IN CDB, pointing at `byte` (and
    /// `bit`, if known) of the CDB.
    pub const fn invalid_cdb_field(byte: u16, bit: Option<u8>) -> Sense {
        let mut s = Sense::illegal(asc::INVALID_FIELD_IN_CDB);
        s.sense_key_specific = Some(field_pointer(true, byte, bit));
        s
    }

    /// ILLEGAL REQUEST, INVALID FIELD IN CDB without a field pointer.
    pub const fn invalid_cdb() -> Sense {
        Sense::illegal(asc::INVALID_FIELD_IN_CDB)
    }

    /// ILLEGAL REQUEST, INVALID FIELD IN PARAMETER LIST, pointing at `byte`
    /// of the parameter list.
    pub const fn invalid_param_field(byte: u16) -> Sense {
        let mut s = Sense::illegal(asc::INVALID_FIELD_IN_PARAMETER_LIST);
        s.sense_key_specific = Some(field_pointer(false, byte, None));
        s
    }

    /// ILLEGAL REQUEST, PARAMETER LIST LENGTH ERROR.
    pub const fn param_list_length() -> Sense {
        Sense::illegal(asc::PARAMETER_LIST_LENGTH_ERROR)
    }

    /// ILLEGAL REQUEST, LOGICAL BLOCK ADDRESS OUT OF RANGE.
    pub const fn lba_out_of_range() -> Sense {
        Sense::illegal(asc::LBA_OUT_OF_RANGE)
    }

    /// MISCOMPARE DURING VERIFY with INFORMATION = `offset` (bytes into the
    /// compared data-out buffer).
    pub const fn miscompare(offset: u64) -> Sense {
        let mut s = Sense::new(key::MISCOMPARE, asc::MISCOMPARE_DURING_VERIFY);
        s.information = Some(offset);
        s
    }

    /// UNIT ATTENTION with the given code.
    pub const fn unit_attention(code: asc::Code) -> Sense {
        Sense::new(key::UNIT_ATTENTION, code)
    }

    /// Sets INFORMATION.
    pub const fn with_information(mut self, info: u64) -> Sense {
        self.information = Some(info);
        self
    }

    /// Sets COMMAND-SPECIFIC INFORMATION.
    pub const fn with_command_specific(mut self, info: u32) -> Sense {
        self.command_specific = Some(info);
        self
    }

    /// The (ASC, ASCQ) pair.
    pub const fn code(&self) -> asc::Code {
        (self.asc, self.ascq)
    }

    /// Encodes in fixed format (response code 0x70, 18 bytes).
    pub fn encode_fixed(&self) -> Vec<u8> {
        let mut b = vec![0u8; 18];
        b[0] = 0x70;
        if let Some(info) = self.information
            && let Ok(info) = u32::try_from(info)
        {
            b[0] |= 0x80;
            b[3..7].copy_from_slice(&info.to_be_bytes());
        }
        b[2] = self.key & 0x0f;
        b[7] = 10;
        if let Some(cs) = self.command_specific {
            b[8..12].copy_from_slice(&cs.to_be_bytes());
        }
        b[12] = self.asc;
        b[13] = self.ascq;
        if let Some(sks) = self.sense_key_specific {
            b[15] = sks[0] | 0x80;
            b[16] = sks[1];
            b[17] = sks[2];
        }
        b
    }

    /// Encodes in descriptor format (response code 0x72).
    pub fn encode_descriptor(&self) -> Vec<u8> {
        let mut b = vec![0u8; 8];
        b[0] = 0x72;
        b[1] = self.key & 0x0f;
        b[2] = self.asc;
        b[3] = self.ascq;
        if let Some(info) = self.information {
            b.extend_from_slice(&[0x00, 0x0a, 0x80, 0x00]);
            b.extend_from_slice(&info.to_be_bytes());
        }
        if let Some(cs) = self.command_specific {
            b.extend_from_slice(&[0x01, 0x0a, 0x00, 0x00]);
            b.extend_from_slice(&u64::from(cs).to_be_bytes());
        }
        if let Some(sks) = self.sense_key_specific {
            b.extend_from_slice(&[0x02, 0x06, 0x00, 0x00, sks[0] | 0x80, sks[1], sks[2], 0]);
        }
        // Additional sense length: bytes after byte 7 (at most 32 here).
        b[7] = crate::sat_u8(b.len() - 8);
        b
    }

    /// Encodes in the format the control mode page's D_SENSE selects.
    pub fn encode(&self, descriptor: bool) -> Vec<u8> {
        if descriptor {
            self.encode_descriptor()
        } else {
            self.encode_fixed()
        }
    }
}

/// Builds sense-key-specific field-pointer bytes (SKSV added on encoding).
const fn field_pointer(in_cdb: bool, byte: u16, bit: Option<u8>) -> [u8; 3] {
    let mut b0 = if in_cdb { 0x40 } else { 0x00 };
    if let Some(bit) = bit {
        b0 |= 0x08 | (bit & 0x07);
    }
    let be = byte.to_be_bytes();
    [b0, be[0], be[1]]
}

/// Maps a storage error to sense data. This is the only place the mapping
/// lives; `is_write` selects the write flavour of medium errors.
///
/// `Unavailable` becomes NOT READY / LOGICAL UNIT IS IN PROCESS OF BECOMING
/// READY: Linux sd, ESXi and Windows all retry that with a delay, which is
/// what a briefly unreachable backend needs (ABORTED COMMAND is retried
/// immediately and only a few times).
pub fn from_block_error(err: &BlockError, is_write: bool) -> Sense {
    match err {
        BlockError::OutOfRange { lba, .. } => Sense::lba_out_of_range().with_information(*lba),
        BlockError::Integrity { lba, .. } => {
            let code = if is_write {
                asc::WRITE_ERROR
            } else {
                asc::UNRECOVERED_READ_ERROR
            };
            Sense::new(key::MEDIUM_ERROR, code).with_information(*lba)
        }
        BlockError::ReadOnly => Sense::new(key::DATA_PROTECT, asc::WRITE_PROTECTED),
        BlockError::NoSpace(_) => Sense::new(key::DATA_PROTECT, asc::SPACE_ALLOCATION_FAILED),
        BlockError::Unavailable(_) => Sense::new(key::NOT_READY, asc::LU_BECOMING_READY),
        BlockError::Unsupported(_) => Sense::illegal(asc::INVALID_FIELD_IN_CDB),
        BlockError::Io(_) => {
            let code = if is_write {
                asc::WRITE_ERROR
            } else {
                asc::UNRECOVERED_READ_ERROR
            };
            Sense::new(key::MEDIUM_ERROR, code)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_format_layout() {
        let s = Sense::miscompare(0x1234);
        let b = s.encode_fixed();
        assert_eq!(b.len(), 18);
        assert_eq!(b[0], 0xf0);
        assert_eq!(b[2], key::MISCOMPARE);
        assert_eq!(&b[3..7], &[0, 0, 0x12, 0x34]);
        assert_eq!(b[7], 10);
        assert_eq!((b[12], b[13]), (0x1d, 0x00));
    }

    #[test]
    fn fixed_format_drops_wide_information() {
        let b = Sense::lba_out_of_range()
            .with_information(u64::MAX)
            .encode_fixed();
        assert_eq!(b[0], 0x70);
        assert_eq!(&b[3..7], &[0, 0, 0, 0]);
    }

    #[test]
    fn descriptor_format_layout() {
        let s = Sense::invalid_cdb_field(2, Some(3)).with_information(7);
        let b = s.encode_descriptor();
        assert_eq!(b[0], 0x72);
        assert_eq!((b[1], b[2], b[3]), (5, 0x24, 0));
        assert_eq!(b[7] as usize, b.len() - 8);
        assert_eq!(&b[8..12], &[0, 0x0a, 0x80, 0]);
        assert_eq!(b[19], 7);
        assert_eq!(&b[20..24], &[0x02, 0x06, 0, 0]);
        assert_eq!(b[24], 0x80 | 0x40 | 0x08 | 3);
        assert!(b.len() <= MAX_SENSE_LEN);
    }

    #[test]
    fn block_errors_map_once() {
        let s = from_block_error(&BlockError::NoSpace("x".into()), true);
        assert_eq!((s.key, s.code()), (key::DATA_PROTECT, (0x27, 0x07)));
        let s = from_block_error(
            &BlockError::Integrity {
                lba: 5,
                detail: "crc".into(),
            },
            false,
        );
        assert_eq!(
            (s.key, s.code(), s.information),
            (key::MEDIUM_ERROR, (0x11, 0), Some(5))
        );
        let s = from_block_error(&BlockError::Unavailable("s3".into()), false);
        assert_eq!((s.key, s.code()), (key::NOT_READY, (0x04, 0x01)));
    }
}
