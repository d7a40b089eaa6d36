//! A logical unit's reservations: the SPC-2 RESERVE / RELEASE holder and
//! the glue around the persistent reservation state machine
//! ([`crate::pr`]): which commands conflict, PERSISTENT RESERVE IN / OUT,
//! persisting the state, and what resets and nexus loss do to them.
//!
//! Invariants:
//! - Persistent reservation changes are persisted (when a state path is
//!   configured) before they take effect; PERSISTENT RESERVE OUT is
//!   serialized (clone, apply, persist, commit) so no change is lost.
//! - `spc2_active` mirrors "an SPC-2 reservation is held" and
//!   `pr_reserved` mirrors "a persistent reservation exists", so the
//!   command path checks conflicts without taking a lock when there are
//!   none.
//! - SPC-2 reservations and persistent registrations exclude each other:
//!   RESERVE / RELEASE conflict while anybody is registered, PR commands
//!   conflict while an SPC-2 reservation is held.
//! - Resets and nexus loss drop SPC-2 reservations, never persistent
//!   ones.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::{Mutex, RwLock};

use super::LogicalUnit;
use super::config::ScsiError;
use super::reply::{CmdResult, Reply};
use crate::cdb::Cdb;
use crate::pr::{Access, OutRequest, PrError, PrState, PrStore};
use crate::sense::{Sense, asc, key};
use crate::ua::ItNexus;
use crate::{Command, Nexus};

/// Largest accepted PERSISTENT RESERVE OUT parameter list.
const MAX_PR_OUT_PARAMS: u32 = 8192;

/// SPC-2 and persistent reservation state of one logical unit.
pub(super) struct Reservations {
    /// SPC-2 RESERVE holder.
    spc2: Mutex<Option<Nexus>>,
    spc2_active: AtomicBool,
    pr: RwLock<PrState>,
    /// Mirrors `pr.reservation.is_some()` for the hot path.
    pr_reserved: AtomicBool,
    store: PrStore,
    /// Serializes PERSISTENT RESERVE OUT (clone, persist, commit).
    out: Mutex<()>,
}

impl Reservations {
    /// No SPC-2 reservation; persistent reservation state as saved at
    /// `path` (none saved, or no path: empty).
    pub(super) fn load(path: Option<PathBuf>) -> Result<Reservations, ScsiError> {
        let store = PrStore::new(path.clone());
        let pr = store.load().map_err(|source| ScsiError::PrState {
            path: path.unwrap_or_default(),
            source,
        })?;
        Ok(Reservations {
            spc2: Mutex::new(None),
            spc2_active: AtomicBool::new(false),
            pr_reserved: AtomicBool::new(pr.reservation.is_some()),
            pr: RwLock::new(pr),
            store,
            out: Mutex::new(()),
        })
    }

    /// Whether `c` from `nexus` conflicts with a reservation somebody else
    /// holds (answered with RESERVATION CONFLICT).
    pub(super) fn conflict(&self, nexus: &Nexus, c: &Cdb) -> bool {
        if self.spc2_active.load(Ordering::Acquire) {
            if matches!(
                c,
                Cdb::PersistentReserveIn { .. } | Cdb::PersistentReserveOut { .. }
            ) {
                // SPC-4 5.13.3: PR commands conflict with an SPC-2
                // reservation held by anybody.
                return true;
            }
            let spc2_exempt = matches!(
                c,
                Cdb::Inquiry { .. }
                    | Cdb::RequestSense { .. }
                    | Cdb::ReportLuns { .. }
                    | Cdb::Release
                    | Cdb::ReportSupportedOpcodes { .. }
                    | Cdb::ReportSupportedTmfs { .. }
                    | Cdb::ReportTargetPortGroups { .. }
            );
            if !spc2_exempt
                && let Some(holder) = self.spc2.lock().as_ref()
                && holder != nexus
            {
                return true;
            }
        }
        if self.pr_reserved.load(Ordering::Acquire) {
            let access = access_class(c);
            if access != Access::Any {
                return self.pr.read().conflicts(&ItNexus::of(nexus), access);
            }
        }
        false
    }

    /// RESERVE(6/10).
    pub(super) fn reserve(&self, nexus: &Nexus) -> CmdResult {
        if !self.pr.read().registrations.is_empty() {
            return Ok(Reply::conflict());
        }
        let mut holder = self.spc2.lock();
        match holder.as_ref() {
            Some(h) if h != nexus => Ok(Reply::conflict()),
            _ => {
                *holder = Some(nexus.clone());
                self.spc2_active.store(true, Ordering::Release);
                Ok(Reply::good())
            }
        }
    }

    /// RELEASE(6/10).
    pub(super) fn release(&self, nexus: &Nexus) -> CmdResult {
        if !self.pr.read().registrations.is_empty() {
            return Ok(Reply::conflict());
        }
        let mut holder = self.spc2.lock();
        if holder.as_ref() == Some(nexus) {
            *holder = None;
            self.spc2_active.store(false, Ordering::Release);
        }
        // Releasing a reservation held by someone else is a no-op.
        Ok(Reply::good())
    }

    /// PERSISTENT RESERVE IN.
    pub(super) fn persistent_reserve_in(&self, service_action: u8, alloc_len: u32) -> CmdResult {
        let st = self.pr.read();
        let data = match service_action {
            0 => st.read_keys(),
            1 => st.read_reservation(),
            2 => st.report_capabilities(self.store.persistent()),
            _ => st.read_full_status(),
        };
        Ok(Reply::alloc(data, alloc_len))
    }

    /// Logical unit / target reset: drops the SPC-2 reservation.
    pub(super) fn reset(&self) {
        *self.spc2.lock() = None;
        self.spc2_active.store(false, Ordering::Release);
    }

    /// I_T nexus loss: releases the SPC-2 reservation `nexus` holds.
    pub(super) fn nexus_lost(&self, nexus: &Nexus) {
        let mut holder = self.spc2.lock();
        if holder.as_ref() == Some(nexus) {
            *holder = None;
            self.spc2_active.store(false, Ordering::Release);
        }
    }
}

impl LogicalUnit {
    /// PERSISTENT RESERVE OUT: applies the service action to a copy of the
    /// state, persists the copy if it changed, commits it, then posts the
    /// unit attentions it caused.
    pub(super) fn persistent_reserve_out(
        &self,
        cmd: &Command<'_>,
        service_action: u8,
        scope: u8,
        pr_type: u8,
        param_len: u32,
    ) -> CmdResult {
        if param_len > MAX_PR_OUT_PARAMS {
            return Err(Sense::param_list_length());
        }
        let params = Self::params(cmd, param_len)?;
        let res = &self.reservations;
        let _serial = res.out.lock();
        let mut next = res.pr.read().clone();
        let it = ItNexus::of(cmd.nexus);
        let req = OutRequest {
            service_action,
            scope,
            pr_type,
            params: &params,
            relative_port_id: cmd.nexus.relative_port_id,
            ptpl_capable: res.store.persistent(),
        };
        let posts = match next.apply_out(&it, &req) {
            Ok(posts) => posts,
            Err(PrError::Conflict) => return Ok(Reply::conflict()),
            Err(PrError::Check(s)) => return Err(s),
        };
        if next != *res.pr.read() {
            if let Err(e) = res.store.save(&next) {
                tracing::error!(error = %e, serial = %self.config.serial,
                    "cannot persist persistent reservation state");
                return Err(Sense::new(
                    key::HARDWARE_ERROR,
                    asc::INTERNAL_TARGET_FAILURE,
                ));
            }
            let reserved = next.reservation.is_some();
            *res.pr.write() = next;
            res.pr_reserved.store(reserved, Ordering::Release);
        }
        for (n, code) in posts {
            self.ua.post_it(&n, code);
        }
        Ok(Reply::good())
    }
}

/// How `c` is treated in the presence of a persistent reservation held by
/// somebody else (SPC-4 table 66 / SBC-3 table 13).
fn access_class(c: &Cdb) -> Access {
    match *c {
        Cdb::Inquiry { .. }
        | Cdb::RequestSense { .. }
        | Cdb::ReportLuns { .. }
        | Cdb::TestUnitReady
        | Cdb::ReadCapacity10
        | Cdb::ReadCapacity16 { .. }
        | Cdb::PersistentReserveIn { .. }
        | Cdb::PersistentReserveOut { .. }
        | Cdb::ReportSupportedOpcodes { .. }
        | Cdb::ReportSupportedTmfs { .. }
        | Cdb::ReportTargetPortGroups { .. }
        | Cdb::Reserve
        | Cdb::Release
        | Cdb::PreventAllow { prevent: 0 } => Access::Any,
        Cdb::StartStopUnit {
            start: true,
            power_condition: 0,
            ..
        } => Access::Any,
        Cdb::Read(..)
        | Cdb::Verify { .. }
        | Cdb::PreFetch { .. }
        | Cdb::GetLbaStatus { .. }
        | Cdb::ReadDefectData { .. } => Access::Read,
        _ => Access::Write,
    }
}
