//! The logical unit's side of EXTENDED COPY: the unit as a copy source or
//! destination ([`CopyTarget`], which the registry holds), and the two copy
//! commands handed to the copy manager ([`crate::xcopy`]) with what it
//! needs.
//!
//! Invariants: a copy writes to this unit exactly as a WRITE does (stripe
//! locks shared, FUA when WCE is 0), so copies stay atomic with respect to
//! COMPARE AND WRITE and ORWRITE; a unit whose local port is not active is
//! not accessible as a copy source or destination, and its device is not
//! read or written for a copy.

use depot_block::{BlockError, BlockResult};

use super::LogicalUnit;
use super::reply::{CmdResult, Reply};
use crate::cdb::sa;
use crate::registry::CopyTarget;
use crate::xcopy;
use crate::{Command, Nexus};

impl CopyTarget for LogicalUnit {
    fn block_size(&self) -> u32 {
        self.device.block_size()
    }

    fn num_blocks(&self) -> u64 {
        self.device.num_blocks()
    }

    fn write_protected(&self) -> bool {
        LogicalUnit::write_protected(self)
    }

    fn accessible(&self) -> bool {
        self.ports.local().is_active()
    }

    fn read_blocks(&self, lba: u64, buf: &mut [u8]) -> BlockResult<()> {
        self.check_accessible()?;
        self.device.read(lba, buf)
    }

    fn write_blocks(&self, lba: u64, data: &[u8]) -> BlockResult<()> {
        self.check_accessible()?;
        let blocks = (data.len() / self.device.block_size() as usize) as u64;
        let _guard = self.locks.shared(lba, blocks);
        self.device.write(lba, data, self.fua(false))
    }
}

impl LogicalUnit {
    /// Refuses copy I/O while the local port is not active (the state may
    /// change after the copy resolved this unit).
    fn check_accessible(&self) -> BlockResult<()> {
        if self.accessible() {
            Ok(())
        } else {
            Err(BlockError::Unavailable(
                "logical unit not accessible through this target port".into(),
            ))
        }
    }

    /// EXTENDED COPY(LID1).
    pub(super) fn extended_copy(&self, cmd: &Command<'_>, param_len: u32) -> CmdResult {
        let p = Self::params(cmd, param_len)?;
        xcopy::extended_copy(&self.registry, &self.copies, cmd.nexus, &p)?;
        Ok(Reply::good())
    }

    /// RECEIVE COPY RESULTS: COPY STATUS or OPERATING PARAMETERS.
    pub(super) fn receive_copy_results(
        &self,
        nexus: &Nexus,
        service_action: u8,
        list_id: u8,
        alloc_len: u32,
    ) -> CmdResult {
        let data = if service_action == sa::COPY_STATUS {
            xcopy::copy_status(&self.copies, nexus, list_id)?
        } else {
            xcopy::operating_parameters(self.limits.block_size)
        };
        Ok(Reply::alloc(data, alloc_len))
    }
}
