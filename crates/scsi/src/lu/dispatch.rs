//! The device server's entry points: [`LogicalUnit::execute`] (any
//! command, may block) and [`LogicalUnit::try_execute_nowait`] (a hot READ
//! or cached WRITE, never blocks), and the dispatch from a decoded CDB to
//! the part of the logical unit that executes it.
//!
//! Every command runs the same pipeline: unit attention check (SAM-5
//! 5.14; INQUIRY, REPORT LUNS and REQUEST SENSE are exempt), the CDB's
//! decoding (done once by the transport: [`ParsedCdb`](crate::ParsedCdb)),
//! the access state of this router's port (ALUA: a non-active port serves
//! only some commands, `alua::refusal`), reservation checks (SPC-2 RESERVE
//! and persistent reservations), then the command itself. Errors are sense
//! data; nothing panics.
//!
//! Invariants: the inline path takes no step the blocking path would not
//! take and leaves no trace when it declines (no unit attention consumed,
//! nothing written), so the transport may always fall back to `execute`;
//! it declines whenever the local port is not active. The access state
//! costs each command one atomic load.

use super::LogicalUnit;
use super::reply::{CmdResult, Reply};
use crate::alua;
use crate::cdb::{Cdb, op};
use crate::inquiry;
use crate::lun::report_luns_data;
use crate::mode::{SenseContext, SenseRequest};
use crate::rsoc;
use crate::sense::{Sense, asc, from_block_error, key};
use crate::ua;
use crate::{Command, Completion, LaterCompletion, Nexus, Nowait, Status};
use bytes::Bytes;

impl LogicalUnit {
    /// Executes one command. Thread-safe; may block on device I/O.
    pub fn execute(&self, cmd: &Command<'_>) -> Completion {
        self.completion(self.run(cmd), cmd)
    }

    /// Executes a READ or WRITE only if it completes without waiting for
    /// storage: an active local port, no unit attention pending, no
    /// reservation conflict, a valid CDB, and a device that moves the data
    /// without blocking
    /// ([`BlockDevice::try_read_nowait`](depot_block::BlockDevice::try_read_nowait)
    /// / [`BlockDevice::try_write_vectored_nowait`](depot_block::BlockDevice::try_write_vectored_nowait)).
    /// `None` means nothing happened and the caller runs
    /// [`execute`](Self::execute) with the same command where blocking is
    /// allowed; every unusual case (errors included) takes that path, so
    /// sense data comes from one place.
    pub fn try_execute_nowait(&self, cmd: &Command<'_>) -> Option<Nowait> {
        if !matches!(
            cmd.cdb.opcode(),
            Some(
                op::READ_6 | op::READ_10 | op::READ_16 | op::WRITE_6 | op::WRITE_10 | op::WRITE_16
            )
        ) || !self.ports.local().is_active()
            || !self.ua.is_quiet(cmd.nexus)
        {
            return None;
        }
        let parsed = cmd.cdb.decoded().ok()?;
        if self.reservations.conflict(cmd.nexus, &parsed) {
            return None;
        }
        let reply = match parsed {
            Cdb::Read(io, _) => self.read_nowait(cmd, io)?,
            Cdb::Write(io, _) => match self.write_nowait(cmd, io)? {
                Ok(reply) => reply,
                Err(later) => {
                    // The answer is the write's: GOOD, or the sense of the
                    // error it settles with.
                    let good = self.completion(self.with_out_len(Reply::good(), &parsed), cmd);
                    let d_sense = self.mode.d_sense();
                    return Some(Nowait::Later(LaterCompletion::new(move |done| {
                        later.then(Box::new(move |r| {
                            done(match r {
                                Ok(()) => good,
                                Err(e) => Completion {
                                    status: Status::CHECK_CONDITION,
                                    sense: Some(Bytes::from(
                                        from_block_error(&e, true).encode(d_sense),
                                    )),
                                    ..good
                                },
                            });
                        }));
                    })));
                }
            },
            _ => return None,
        };
        Some(Nowait::Done(
            self.completion(self.with_out_len(reply, &parsed), cmd),
        ))
    }

    fn run(&self, cmd: &Command<'_>) -> Reply {
        let nexus: &Nexus = cmd.nexus;
        let exempt = ua::exempt(cmd.cdb.opcode());
        if let Some(ua) = self.ua.on_command(nexus, !exempt) {
            return Reply::check(ua);
        }
        let parsed = match cmd.cdb.decoded() {
            Ok(c) => c,
            Err(s) => return Reply::check(s),
        };
        let result = if let Some(refused) = alua::refusal(self.ports.local(), &parsed) {
            Ok(Reply::check(refused))
        } else if self.reservations.conflict(nexus, &parsed) {
            Ok(Reply::conflict())
        } else {
            self.dispatch(cmd, &parsed)
        };
        self.with_out_len(result.unwrap_or_else(Reply::check), &parsed)
    }

    fn dispatch(&self, cmd: &Command<'_>, c: &Cdb) -> CmdResult {
        let nexus: &Nexus = cmd.nexus;
        match *c {
            Cdb::TestUnitReady | Cdb::StartStopUnit { .. } => Ok(Reply::good()),
            Cdb::PreventAllow { prevent } => {
                if prevent > 1 {
                    return Err(Sense::invalid_cdb_field(4, Some(1)));
                }
                Ok(Reply::good())
            }
            Cdb::RequestSense { desc, alloc_len } => {
                // Pollable sense: a pending unit attention, else why the
                // port is not ready, else nothing.
                let s = self
                    .ua
                    .on_command(nexus, true)
                    .or_else(|| self.ports.local().not_ready())
                    .unwrap_or(Sense::new(key::NO_SENSE, asc::NO_ADDITIONAL_SENSE));
                Ok(Reply::alloc(s.encode(desc), alloc_len))
            }
            Cdb::Inquiry {
                evpd,
                page,
                alloc_len,
            } => {
                let identity = self.config.identity();
                let data = if evpd {
                    inquiry::vpd(page, &identity, &self.limits, nexus, nexus.tpgt)?
                } else {
                    inquiry::standard(&identity, true)
                };
                Ok(Reply::alloc(data, alloc_len))
            }
            Cdb::ReportLuns { select, alloc_len } => {
                self.ua.clear(nexus, asc::REPORTED_LUNS_DATA_CHANGED);
                Ok(Reply::alloc(report_luns_data(select, &[0])?, alloc_len))
            }
            Cdb::ReadCapacity10 => self.read_capacity_10(),
            Cdb::ReadCapacity16 { alloc_len } => self.read_capacity_16(alloc_len),
            Cdb::GetLbaStatus { lba, alloc_len } => self.get_lba_status(lba, alloc_len),
            Cdb::Read(io, _) => self.read(cmd, io),
            Cdb::Write(io, _) => self.write(cmd, io, false),
            Cdb::WriteAndVerify { io, bytchk } => self.write(cmd, io, bytchk),
            Cdb::Verify { io, bytchk } => self.verify(cmd, io, bytchk),
            Cdb::OrWrite(io) => self.or_write(cmd, io),
            Cdb::CompareAndWrite(io) => self.compare_and_write(cmd, io),
            Cdb::WriteSame {
                lba,
                blocks,
                unmap,
                anchor,
                ndob,
                ..
            } => self.write_same(cmd, lba, blocks, unmap, anchor, ndob),
            Cdb::Unmap { anchor, param_len } => self.unmap(cmd, anchor, param_len),
            Cdb::SynchronizeCache { lba, blocks } => self.synchronize_cache(lba, blocks),
            Cdb::PreFetch { lba, blocks } => self.pre_fetch(lba, blocks),
            Cdb::ModeSense {
                dbd,
                llbaa,
                pc,
                page,
                subpage,
                alloc_len,
                ten,
            } => {
                let req = SenseRequest {
                    dbd,
                    llbaa,
                    pc,
                    page,
                    subpage,
                    ten,
                };
                let ctx = SenseContext {
                    write_protected: self.write_protected(),
                    num_blocks: self.device.num_blocks(),
                    block_size: self.limits.block_size,
                };
                Ok(Reply::alloc(self.mode.sense(&req, &ctx)?, alloc_len))
            }
            Cdb::ModeSelect {
                sp, param_len, ten, ..
            } => {
                let p = Self::params(cmd, param_len)?;
                self.mode.select(&p, ten, sp, self.limits.block_size)?;
                Ok(Reply::good())
            }
            Cdb::Reserve => self.reservations.reserve(nexus),
            Cdb::Release => self.reservations.release(nexus),
            Cdb::PersistentReserveIn {
                service_action,
                alloc_len,
            } => self
                .reservations
                .persistent_reserve_in(service_action, alloc_len),
            Cdb::PersistentReserveOut {
                service_action,
                scope,
                pr_type,
                param_len,
            } => self.persistent_reserve_out(cmd, service_action, scope, pr_type, param_len),
            Cdb::ReportSupportedOpcodes {
                rctd,
                options,
                opcode,
                service_action,
                alloc_len,
            } => {
                let data = rsoc::report(self.limits.thin, rctd, options, opcode, service_action)?;
                Ok(Reply::alloc(data, alloc_len))
            }
            Cdb::ReportSupportedTmfs { repd, alloc_len } => {
                Ok(Reply::alloc(rsoc::report_tmfs(repd), alloc_len))
            }
            Cdb::ReportTargetPortGroups {
                extended,
                alloc_len,
            } => Ok(Reply::alloc(self.ports.report(nexus, extended), alloc_len)),
            Cdb::ExtendedCopy { param_len } => self.extended_copy(cmd, param_len),
            Cdb::ReceiveCopyResults {
                service_action,
                list_id,
                alloc_len,
            } => self.receive_copy_results(nexus, service_action, list_id, alloc_len),
            Cdb::ReadDefectData {
                flags,
                alloc_len,
                twelve,
            } => {
                // No defects; echo the requested list bits and format.
                let mut d = vec![0u8; if twelve { 8 } else { 4 }];
                d[1] = flags & 0x1f;
                Ok(Reply::alloc(d, alloc_len))
            }
        }
    }
}
