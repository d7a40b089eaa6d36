//! Pure CDB decoding: bytes -> a typed [`Cdb`].
//!
//! This module owns opcode numbers, CDB lengths and what a decoded command
//! means ([`Cdb`], [`BlockIo`]); the decoder itself ([`parse`]) lives in
//! `parse`. It is side-effect free, never panics and never allocates
//! (fuzzed by `fuzz/fuzz_targets/cdb.rs`). It rejects what is wrong in the
//! CDB alone: unknown opcodes / service actions (ILLEGAL REQUEST 20/00 or
//! 24/00), short CDBs, non-zero protection fields (this target has no
//! protection information), bad page-control / reporting options. Checks
//! that need the logical unit (capacity, limits, state) happen in `lu`.
//!
//! [`ParsedCdb`] is the decoding a transport keeps with a task: built once
//! per command, used by both the inline try and the blocking execution.

mod parse;

pub use parse::parse;

use crate::sense::Sense;

/// Operation codes.
pub mod op {
    /// TEST UNIT READY.
    pub const TEST_UNIT_READY: u8 = 0x00;
    /// REQUEST SENSE.
    pub const REQUEST_SENSE: u8 = 0x03;
    /// READ(6).
    pub const READ_6: u8 = 0x08;
    /// WRITE(6).
    pub const WRITE_6: u8 = 0x0a;
    /// INQUIRY.
    pub const INQUIRY: u8 = 0x12;
    /// MODE SELECT(6).
    pub const MODE_SELECT_6: u8 = 0x15;
    /// RESERVE(6).
    pub const RESERVE_6: u8 = 0x16;
    /// RELEASE(6).
    pub const RELEASE_6: u8 = 0x17;
    /// MODE SENSE(6).
    pub const MODE_SENSE_6: u8 = 0x1a;
    /// START STOP UNIT.
    pub const START_STOP_UNIT: u8 = 0x1b;
    /// PREVENT ALLOW MEDIUM REMOVAL.
    pub const PREVENT_ALLOW: u8 = 0x1e;
    /// READ CAPACITY(10).
    pub const READ_CAPACITY_10: u8 = 0x25;
    /// READ(10).
    pub const READ_10: u8 = 0x28;
    /// WRITE(10).
    pub const WRITE_10: u8 = 0x2a;
    /// WRITE AND VERIFY(10).
    pub const WRITE_VERIFY_10: u8 = 0x2e;
    /// VERIFY(10).
    pub const VERIFY_10: u8 = 0x2f;
    /// PRE-FETCH(10).
    pub const PRE_FETCH_10: u8 = 0x34;
    /// SYNCHRONIZE CACHE(10).
    pub const SYNC_CACHE_10: u8 = 0x35;
    /// READ DEFECT DATA(10).
    pub const READ_DEFECT_DATA_10: u8 = 0x37;
    /// WRITE SAME(10).
    pub const WRITE_SAME_10: u8 = 0x41;
    /// UNMAP.
    pub const UNMAP: u8 = 0x42;
    /// MODE SELECT(10).
    pub const MODE_SELECT_10: u8 = 0x55;
    /// RESERVE(10).
    pub const RESERVE_10: u8 = 0x56;
    /// RELEASE(10).
    pub const RELEASE_10: u8 = 0x57;
    /// MODE SENSE(10).
    pub const MODE_SENSE_10: u8 = 0x5a;
    /// PERSISTENT RESERVE IN.
    pub const PERSISTENT_RESERVE_IN: u8 = 0x5e;
    /// PERSISTENT RESERVE OUT.
    pub const PERSISTENT_RESERVE_OUT: u8 = 0x5f;
    /// EXTENDED COPY (service action 0x00 = LID1).
    pub const EXTENDED_COPY: u8 = 0x83;
    /// RECEIVE COPY RESULTS.
    pub const RECEIVE_COPY_RESULTS: u8 = 0x84;
    /// READ(16).
    pub const READ_16: u8 = 0x88;
    /// COMPARE AND WRITE.
    pub const COMPARE_AND_WRITE: u8 = 0x89;
    /// WRITE(16).
    pub const WRITE_16: u8 = 0x8a;
    /// ORWRITE(16).
    pub const ORWRITE_16: u8 = 0x8b;
    /// WRITE AND VERIFY(16).
    pub const WRITE_VERIFY_16: u8 = 0x8e;
    /// VERIFY(16).
    pub const VERIFY_16: u8 = 0x8f;
    /// PRE-FETCH(16).
    pub const PRE_FETCH_16: u8 = 0x90;
    /// SYNCHRONIZE CACHE(16).
    pub const SYNC_CACHE_16: u8 = 0x91;
    /// WRITE SAME(16).
    pub const WRITE_SAME_16: u8 = 0x93;
    /// SERVICE ACTION IN(16): READ CAPACITY(16), GET LBA STATUS.
    pub const SERVICE_ACTION_IN_16: u8 = 0x9e;
    /// REPORT LUNS.
    pub const REPORT_LUNS: u8 = 0xa0;
    /// MAINTENANCE IN: REPORT TARGET PORT GROUPS, REPORT SUPPORTED
    /// OPERATION CODES, REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS.
    pub const MAINTENANCE_IN: u8 = 0xa3;
    /// READ(12).
    pub const READ_12: u8 = 0xa8;
    /// WRITE(12).
    pub const WRITE_12: u8 = 0xaa;
    /// WRITE AND VERIFY(12).
    pub const WRITE_VERIFY_12: u8 = 0xae;
    /// VERIFY(12).
    pub const VERIFY_12: u8 = 0xaf;
    /// READ DEFECT DATA(12).
    pub const READ_DEFECT_DATA_12: u8 = 0xb7;
}

/// Service actions.
pub mod sa {
    /// SERVICE ACTION IN(16): READ CAPACITY(16).
    pub const READ_CAPACITY_16: u8 = 0x10;
    /// SERVICE ACTION IN(16): GET LBA STATUS.
    pub const GET_LBA_STATUS: u8 = 0x12;
    /// MAINTENANCE IN: REPORT TARGET PORT GROUPS.
    pub const REPORT_TARGET_PORT_GROUPS: u8 = 0x0a;
    /// MAINTENANCE IN: REPORT SUPPORTED OPERATION CODES.
    pub const REPORT_SUPPORTED_OPCODES: u8 = 0x0c;
    /// MAINTENANCE IN: REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS.
    pub const REPORT_SUPPORTED_TMFS: u8 = 0x0d;
    /// EXTENDED COPY: LID1.
    pub const EXTENDED_COPY_LID1: u8 = 0x00;
    /// RECEIVE COPY RESULTS: COPY STATUS.
    pub const COPY_STATUS: u8 = 0x00;
    /// RECEIVE COPY RESULTS: OPERATING PARAMETERS.
    pub const OPERATING_PARAMETERS: u8 = 0x03;
}

/// A decoded READ / WRITE / VERIFY / WRITE AND VERIFY / ORWRITE CDB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockIo {
    /// First logical block.
    pub lba: u64,
    /// Number of logical blocks (READ(6)/WRITE(6) 0 already mapped to 256).
    pub blocks: u32,
    /// Disable page out (accepted, no effect).
    pub dpo: bool,
    /// Force unit access.
    pub fua: bool,
}

/// Which READ/WRITE variant a [`BlockIo`] came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Width {
    /// 6-byte CDB.
    W6,
    /// 10-byte CDB.
    W10,
    /// 12-byte CDB.
    W12,
    /// 16-byte CDB.
    W16,
}

/// A decoded command the device server knows how to execute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cdb {
    /// TEST UNIT READY.
    TestUnitReady,
    /// REQUEST SENSE.
    RequestSense {
        /// Descriptor-format sense requested.
        desc: bool,
        /// Allocation length.
        alloc_len: u32,
    },
    /// INQUIRY.
    Inquiry {
        /// Vital product data requested.
        evpd: bool,
        /// VPD page code.
        page: u8,
        /// Allocation length.
        alloc_len: u32,
    },
    /// REPORT LUNS.
    ReportLuns {
        /// SELECT REPORT.
        select: u8,
        /// Allocation length.
        alloc_len: u32,
    },
    /// READ CAPACITY(10).
    ReadCapacity10,
    /// READ CAPACITY(16).
    ReadCapacity16 {
        /// Allocation length.
        alloc_len: u32,
    },
    /// GET LBA STATUS.
    GetLbaStatus {
        /// Starting LBA.
        lba: u64,
        /// Allocation length.
        alloc_len: u32,
    },
    /// READ(6/10/12/16).
    Read(BlockIo, Width),
    /// WRITE(6/10/12/16).
    Write(BlockIo, Width),
    /// WRITE AND VERIFY(10/12/16).
    WriteAndVerify {
        /// Addressing.
        io: BlockIo,
        /// BYTCHK: read back and compare after writing.
        bytchk: bool,
    },
    /// VERIFY(10/12/16).
    Verify {
        /// Addressing (`fua` always false).
        io: BlockIo,
        /// BYTCHK field: 0 medium only, 1 compare all, 3 compare one block
        /// against each (2 is rejected during parsing).
        bytchk: u8,
    },
    /// ORWRITE(16).
    OrWrite(BlockIo),
    /// COMPARE AND WRITE.
    CompareAndWrite(BlockIo),
    /// WRITE SAME(10/16).
    WriteSame {
        /// First logical block.
        lba: u64,
        /// Number of blocks.
        blocks: u32,
        /// UNMAP bit.
        unmap: bool,
        /// ANCHOR bit.
        anchor: bool,
        /// NDOB (no data-out buffer, 16 only).
        ndob: bool,
        /// Came as WRITE SAME(16).
        sixteen: bool,
    },
    /// UNMAP.
    Unmap {
        /// ANCHOR bit.
        anchor: bool,
        /// Parameter list length.
        param_len: u32,
    },
    /// SYNCHRONIZE CACHE(10/16).
    SynchronizeCache {
        /// First block (range is advisory; the whole cache is flushed).
        lba: u64,
        /// Number of blocks; 0 = to the end.
        blocks: u32,
    },
    /// PRE-FETCH(10/16).
    PreFetch {
        /// First block.
        lba: u64,
        /// Number of blocks.
        blocks: u32,
    },
    /// MODE SENSE(6/10).
    ModeSense {
        /// Disable block descriptors.
        dbd: bool,
        /// Long LBA block descriptor accepted (10 only).
        llbaa: bool,
        /// Page control (0 current, 1 changeable, 2 default, 3 saved).
        pc: u8,
        /// Page code.
        page: u8,
        /// Subpage code.
        subpage: u8,
        /// Allocation length.
        alloc_len: u32,
        /// MODE SENSE(10) (8-byte header).
        ten: bool,
    },
    /// MODE SELECT(6/10).
    ModeSelect {
        /// Page format.
        pf: bool,
        /// Save pages.
        sp: bool,
        /// Parameter list length.
        param_len: u32,
        /// MODE SELECT(10).
        ten: bool,
    },
    /// START STOP UNIT (accepted; no power states).
    StartStopUnit {
        /// START bit.
        start: bool,
        /// LOEJ bit.
        loej: bool,
        /// POWER CONDITION field.
        power_condition: u8,
    },
    /// PREVENT ALLOW MEDIUM REMOVAL.
    PreventAllow {
        /// PREVENT field.
        prevent: u8,
    },
    /// RESERVE(6/10) (SPC-2).
    Reserve,
    /// RELEASE(6/10) (SPC-2).
    Release,
    /// PERSISTENT RESERVE IN.
    PersistentReserveIn {
        /// Service action (0..=3).
        service_action: u8,
        /// Allocation length.
        alloc_len: u32,
    },
    /// PERSISTENT RESERVE OUT.
    PersistentReserveOut {
        /// Service action (0..=7).
        service_action: u8,
        /// SCOPE field.
        scope: u8,
        /// TYPE field.
        pr_type: u8,
        /// Parameter list length.
        param_len: u32,
    },
    /// REPORT SUPPORTED OPERATION CODES.
    ReportSupportedOpcodes {
        /// Return command timeouts descriptor.
        rctd: bool,
        /// REPORTING OPTIONS.
        options: u8,
        /// REQUESTED OPERATION CODE.
        opcode: u8,
        /// REQUESTED SERVICE ACTION.
        service_action: u16,
        /// Allocation length.
        alloc_len: u32,
    },
    /// REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS.
    ReportSupportedTmfs {
        /// Return extended parameter data.
        repd: bool,
        /// Allocation length.
        alloc_len: u32,
    },
    /// REPORT TARGET PORT GROUPS.
    ReportTargetPortGroups {
        /// Extended header format requested.
        extended: bool,
        /// Allocation length.
        alloc_len: u32,
    },
    /// EXTENDED COPY (LID1).
    ExtendedCopy {
        /// Parameter list length.
        param_len: u32,
    },
    /// RECEIVE COPY RESULTS.
    ReceiveCopyResults {
        /// Service action (COPY STATUS or OPERATING PARAMETERS).
        service_action: u8,
        /// LIST IDENTIFIER.
        list_id: u8,
        /// Allocation length.
        alloc_len: u32,
    },
    /// READ DEFECT DATA(10/12).
    ReadDefectData {
        /// REQ_PLIST | REQ_GLIST | format, echoed back.
        flags: u8,
        /// Allocation length.
        alloc_len: u32,
        /// READ DEFECT DATA(12).
        twelve: bool,
    },
}

impl Cdb {
    /// Whether the command modifies the medium (write-protect and
    /// reservation classification).
    pub fn writes_medium(&self) -> bool {
        matches!(
            self,
            Cdb::Write(..)
                | Cdb::WriteAndVerify { .. }
                | Cdb::OrWrite(_)
                | Cdb::CompareAndWrite(_)
                | Cdb::WriteSame { .. }
                | Cdb::Unmap { .. }
                | Cdb::ExtendedCopy { .. }
        )
    }
}

/// A command's CDB decoded once: what the transport builds when the
/// command arrives ([`ParsedCdb::parse`]) and keeps with its task, so the
/// inline try and the blocking execution both use the same decoding
/// instead of parsing the bytes twice.
///
/// It keeps the operation code next to the outcome, because a CDB that
/// does not decode is still subject to the rules that go by operation code
/// alone (unit attention exemptions, REPORT LUNS and REQUEST SENSE at the
/// target level): the sense of a decoding error is reported only where
/// [`parse`]'s error would have been. Owned, `Copy`, no heap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParsedCdb {
    opcode: Option<u8>,
    decoded: Result<Cdb, Sense>,
}

impl ParsedCdb {
    /// Decodes `cdb` ([`parse`]); never fails: a CDB that does not decode
    /// carries the sense its CHECK CONDITION will report.
    pub fn parse(cdb: &[u8]) -> ParsedCdb {
        ParsedCdb {
            opcode: cdb.first().copied(),
            decoded: parse(cdb),
        }
    }

    /// The operation code (`None` for an empty CDB).
    pub fn opcode(&self) -> Option<u8> {
        self.opcode
    }

    /// The decoded command, or the sense (ILLEGAL REQUEST) that refuses it.
    pub fn decoded(&self) -> Result<Cdb, Sense> {
        self.decoded
    }
}

/// Length of the CDB for `opcode` from its group code (SAM-5), or `None`
/// for the vendor-specific / reserved groups.
pub fn cdb_len(opcode: u8) -> Option<usize> {
    match opcode >> 5 {
        0 => Some(6),
        1 | 2 => Some(10),
        4 => Some(16),
        5 => Some(12),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsed_cdb_keeps_the_opcode_next_to_the_decoding() {
        let read = ParsedCdb::parse(&[0x28, 0, 0, 0, 0, 7, 0, 0, 2, 0]);
        assert_eq!(read.opcode(), Some(op::READ_10));
        assert_eq!(read.decoded(), parse(&[0x28, 0, 0, 0, 0, 7, 0, 0, 2, 0]));
        assert!(
            matches!(read.decoded(), Ok(Cdb::Read(io, Width::W10)) if io.lba == 7 && io.blocks == 2)
        );
        // Refused CDBs still know their opcode (unit attention exemptions
        // and REQUEST SENSE go by it) and carry the sense parse gives.
        let short = ParsedCdb::parse(&[op::REQUEST_SENSE, 0]);
        assert_eq!(short.opcode(), Some(op::REQUEST_SENSE));
        assert_eq!(short.decoded(), Err(Sense::invalid_opcode()));
        let empty = ParsedCdb::parse(&[]);
        assert_eq!(empty.opcode(), None);
        assert_eq!(empty.decoded(), Err(Sense::invalid_opcode()));
    }
}
