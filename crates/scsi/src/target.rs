//! The SCSI target device of one VM: its LUN table.
//!
//! Owns what is above a single logical unit: REPORT LUNS, commands to LUNs
//! that do not exist, REPORTED LUNS DATA HAS CHANGED unit attentions,
//! task-management resets and I_T nexus loss fan-out, and the encoding of
//! sense the transport builds itself (per the addressed LU's D_SENSE).
//!
//! Invariants: the LUN table is only read on the command path (a read
//! lock); a nexus is "known" to the target once it sends any command, and
//! only known nexuses receive 3F/0E when the table changes; nexus loss
//! forgets it everywhere but keeps PR registrations.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::RwLock;

use crate::cdb::{Cdb, op};
use crate::inquiry;
use crate::lu::LogicalUnit;
use crate::lun::report_luns_data;
use crate::registry::Registry;
use crate::sense::{Sense, asc, key};
use crate::ua::{self, UnitAttentions};
use crate::{Command, Completion, Nexus, Nowait, Status, TmfOutcome};

/// LUN table of one SCSI target device.
#[derive(Debug)]
pub struct ScsiTarget {
    registry: Arc<Registry>,
    luns: RwLock<BTreeMap<u64, Arc<LogicalUnit>>>,
    /// Target-level conditions (REPORTED LUNS DATA HAS CHANGED), per nexus.
    ua: UnitAttentions,
}

fn completion(
    status: Status,
    sense: Option<Bytes>,
    mut data: Vec<u8>,
    cmd: &Command<'_>,
) -> Completion {
    let transfer_length = crate::sat_u32(data.len());
    data.truncate(cmd.expected_in as usize);
    Completion {
        status,
        sense,
        data: Bytes::from(data),
        transfer_length,
    }
}

fn check(sense: &Sense, descriptor: bool) -> Completion {
    Completion {
        status: Status::CHECK_CONDITION,
        sense: Some(Bytes::from(sense.encode(descriptor))),
        data: Bytes::new(),
        transfer_length: 0,
    }
}

impl ScsiTarget {
    /// An empty target whose logical units resolve EXTENDED COPY targets
    /// through `registry`.
    pub fn new(registry: Arc<Registry>) -> Self {
        ScsiTarget {
            registry,
            luns: RwLock::new(BTreeMap::new()),
            ua: UnitAttentions::default(),
        }
    }

    /// The registry logical units of this target should be created with.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Adds or replaces a LUN; nexuses that used this target get REPORTED
    /// LUNS DATA HAS CHANGED.
    pub fn insert_lun(&self, lun: u64, lu: Arc<LogicalUnit>) {
        self.luns.write().insert(lun, lu);
        self.ua.post_all(asc::REPORTED_LUNS_DATA_CHANGED);
    }

    /// Removes a LUN; nexuses that used this target get REPORTED LUNS DATA
    /// HAS CHANGED.
    pub fn remove_lun(&self, lun: u64) -> Option<Arc<LogicalUnit>> {
        let removed = self.luns.write().remove(&lun);
        if removed.is_some() {
            self.ua.post_all(asc::REPORTED_LUNS_DATA_CHANGED);
        }
        removed
    }

    /// The logical unit at `lun`.
    pub fn lun(&self, lun: u64) -> Option<Arc<LogicalUnit>> {
        self.luns.read().get(&lun).cloned()
    }

    /// LUN numbers in ascending order.
    pub fn lun_numbers(&self) -> Vec<u64> {
        self.luns.read().keys().copied().collect()
    }

    /// Encodes `sense` for a command addressed to `lun` the way that
    /// logical unit's D_SENSE (control mode page) says: descriptor or fixed
    /// format; fixed format when the LUN does not exist. For sense the
    /// transport builds itself (data-phase errors).
    pub fn encode_sense(&self, lun: u64, sense: &Sense) -> Bytes {
        Self::encode_for(self.lun(lun).as_deref(), sense)
    }

    fn encode_for(lu: Option<&LogicalUnit>, sense: &Sense) -> Bytes {
        match lu {
            Some(lu) => lu.encode_sense(sense),
            None => Bytes::from(sense.encode_fixed()),
        }
    }

    /// Executes a command addressed to `lun`.
    pub fn execute(&self, lun: u64, cmd: &Command<'_>) -> Completion {
        let opcode = cmd.cdb.opcode();
        let exempt = ua::exempt(opcode);
        let lu = self.lun(lun);
        if opcode == Some(op::REPORT_LUNS) {
            self.ua.on_command(cmd.nexus, false);
            let data = match cmd.cdb.decoded() {
                Ok(Cdb::ReportLuns { select, alloc_len }) => {
                    report_luns_data(select, &self.lun_numbers()).map(|mut d| {
                        d.truncate(alloc_len as usize);
                        d
                    })
                }
                Ok(_) => Err(Sense::invalid_opcode()),
                Err(s) => Err(s),
            };
            return match data {
                Ok(d) => {
                    self.ua.clear(cmd.nexus, asc::REPORTED_LUNS_DATA_CHANGED);
                    completion(Status::GOOD, None, d, cmd)
                }
                Err(s) => Completion {
                    status: Status::CHECK_CONDITION,
                    sense: Some(Self::encode_for(lu.as_deref(), &s)),
                    data: Bytes::new(),
                    transfer_length: 0,
                },
            };
        }
        let Some(lu) = lu else {
            self.ua.on_command(cmd.nexus, false);
            return self.absent_lun(cmd);
        };
        if opcode == Some(op::REQUEST_SENSE) {
            if let Some(ua) = self.ua.on_command(cmd.nexus, true)
                && let Ok(Cdb::RequestSense { desc, alloc_len }) = cmd.cdb.decoded()
            {
                let mut d = ua.encode(desc);
                d.truncate(alloc_len as usize);
                return completion(Status::GOOD, None, d, cmd);
            }
        } else if let Some(ua) = self.ua.on_command(cmd.nexus, !exempt) {
            return Completion {
                status: Status::CHECK_CONDITION,
                sense: Some(lu.encode_sense(&ua)),
                data: Bytes::new(),
                transfer_length: 0,
            };
        }
        lu.execute(cmd)
    }

    /// Executes `cmd` only if it completes without waiting for storage
    /// (see [`LogicalUnit::try_execute_nowait`]): a hot READ, or a cached
    /// WRITE, on the happy path. `None` means nothing happened, not even a
    /// unit attention consumed; the caller runs [`execute`](Self::execute)
    /// on a thread that may block.
    pub fn try_execute_nowait(&self, lun: u64, cmd: &Command<'_>) -> Option<Nowait> {
        if !self.ua.is_quiet(cmd.nexus) {
            return None;
        }
        self.lun(lun)?.try_execute_nowait(cmd)
    }

    fn absent_lun(&self, cmd: &Command<'_>) -> Completion {
        let not_supported = Sense::illegal(asc::LU_NOT_SUPPORTED);
        match cmd.cdb.decoded() {
            Ok(Cdb::Inquiry {
                evpd: false,
                alloc_len,
                ..
            }) => {
                let mut d = inquiry::absent_lun();
                d.truncate(alloc_len as usize);
                completion(Status::GOOD, None, d, cmd)
            }
            Ok(Cdb::RequestSense { desc, alloc_len }) => {
                let mut d = not_supported.encode(desc);
                d.truncate(alloc_len as usize);
                completion(Status::GOOD, None, d, cmd)
            }
            Ok(_) => check(&not_supported, false),
            Err(s) if s.key == key::ILLEGAL_REQUEST => check(&not_supported, false),
            Err(s) => check(&s, false),
        }
    }

    /// LOGICAL UNIT RESET: releases the SPC-2 reservation and establishes
    /// BUS DEVICE RESET FUNCTION OCCURRED (29/03) for every nexus of the
    /// LU. Task abortion is the transport's part.
    pub fn logical_unit_reset(&self, lun: u64, _nexus: &Arc<Nexus>) -> TmfOutcome {
        match self.lun(lun) {
            Some(lu) => {
                lu.reset(asc::BUS_DEVICE_RESET);
                TmfOutcome::Complete
            }
            None => TmfOutcome::NoSuchLun,
        }
    }

    /// TARGET (warm/cold) RESET: every LU as for a LU reset, with POWER
    /// ON, RESET, OR BUS DEVICE RESET OCCURRED (29/00), the generic reset
    /// code (29/02 is specific to parallel SCSI bus resets).
    pub fn target_reset(&self, _nexus: &Arc<Nexus>) {
        for lu in self.luns.read().values() {
            lu.reset(asc::POWER_ON_RESET);
        }
    }

    /// I_T nexus loss (session closed or reinstated): SPC-2 reservations it
    /// held are released and its unit attentions forgotten; persistent
    /// reservation registrations are kept.
    pub fn nexus_lost(&self, nexus: &Nexus) {
        for lu in self.luns.read().values() {
            lu.nexus_lost(nexus);
        }
        self.ua.forget(nexus);
    }
}
