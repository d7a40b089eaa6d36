//! A logical unit's reservations: the SPC-2 RESERVE / RELEASE holder and
//! the glue around the persistent reservation state machine
//! ([`crate::pr`]): which commands conflict, PERSISTENT RESERVE IN / OUT,
//! the store the state lives in, states other routers committed, and what
//! resets and nexus loss do to them.
//!
//! Invariants:
//! - PERSISTENT RESERVE OUT is serialized per unit and works on the
//!   store's latest state: load, apply, save with compare-and-swap; a
//!   conflict (another router committed first) loads and applies again, at
//!   most [`MAX_STORE_TRIES`] times. A change takes effect here only after
//!   the store committed it.
//! - The in-memory state (what PERSISTENT RESERVE IN reports and the
//!   command path checks against) changes only under the same lock, by a
//!   committed PR OUT or by a state the store holds (pushed by the daemon
//!   through [`LogicalUnit::replace_reservations`], or loaded by a PR
//!   OUT); a state this unit did not produce itself posts the unit
//!   attentions its changes owe this router's nexuses
//!   ([`PrState::replacement_posts`]).
//! - `spc2_active` mirrors "an SPC-2 reservation is held" and
//!   `pr_reserved` mirrors "a persistent reservation exists", so the
//!   command path checks conflicts without taking a lock when there are
//!   none.
//! - SPC-2 reservations and persistent registrations exclude each other:
//!   RESERVE / RELEASE conflict while anybody is registered, PR commands
//!   conflict while an SPC-2 reservation is held.
//! - Resets and nexus loss drop SPC-2 reservations, never persistent
//!   ones.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::{Mutex, RwLock};

use super::LogicalUnit;
use super::reply::{CmdResult, Reply};
use crate::cdb::Cdb;
use crate::pr::{Access, OutRequest, PrError, PrState, ReservationStore, StoreError, UaPosts};
use crate::sense::{Sense, asc, key};
use crate::ua::ItNexus;
use crate::{Command, Nexus};

/// How often PERSISTENT RESERVE OUT loads and applies again after the
/// store reported a conflict, before it answers BUSY.
pub const MAX_STORE_TRIES: usize = 8;

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
    store: Arc<dyn ReservationStore>,
    /// Serializes PERSISTENT RESERVE OUT and state replacement (load,
    /// apply, save, commit).
    out: Mutex<()>,
}

impl Reservations {
    /// No SPC-2 reservation; persistent reservation state as `store` holds
    /// it.
    pub(super) fn new(store: Arc<dyn ReservationStore>) -> Result<Reservations, StoreError> {
        let pr = store.load()?;
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

impl Reservations {
    /// Makes `next` the state PR IN and the conflict checks see. Call with
    /// `out` held.
    fn commit(&self, next: PrState) {
        let reserved = next.reservation.is_some();
        *self.pr.write() = next;
        self.pr_reserved.store(reserved, Ordering::Release);
    }
}

impl LogicalUnit {
    /// PERSISTENT RESERVE OUT: loads the store's latest state, applies the
    /// service action to it, saves it if it changed (retrying from the load
    /// when another router committed first), commits it here, then posts
    /// the unit attentions it caused to this router's nexuses.
    ///
    /// Store failures: unavailable → NOT READY, LOGICAL UNIT IS IN PROCESS
    /// OF BECOMING READY (04/01); I/O → HARDWARE ERROR, INTERNAL TARGET
    /// FAILURE (44/00); still conflicting after [`MAX_STORE_TRIES`] → BUSY.
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
        let it = ItNexus::of(cmd.nexus);
        let req = OutRequest {
            service_action,
            scope,
            pr_type,
            params: &params,
            relative_port_id: cmd.nexus.relative_port_id,
            ptpl_capable: res.store.persistent(),
        };
        for _ in 0..MAX_STORE_TRIES {
            let base = match res.store.load() {
                Ok(base) => base,
                Err(StoreError::Conflict) => continue,
                Err(e) => return Err(self.store_failure(&e)),
            };
            // What other routers committed since this unit last looked.
            self.adopt(&base);
            let mut next = base.clone();
            let posts = match next.apply_out(&it, &req) {
                Ok(posts) => posts,
                Err(PrError::Conflict) => return Ok(Reply::conflict()),
                Err(PrError::Check(s)) => return Err(s),
            };
            if next != base {
                match res.store.save(&next) {
                    Ok(()) => res.commit(next),
                    Err(StoreError::Conflict) => continue,
                    Err(e) => return Err(self.store_failure(&e)),
                }
            }
            self.post_pr(posts);
            return Ok(Reply::good());
        }
        tracing::warn!(serial = %self.config.serial, tries = MAX_STORE_TRIES,
            "persistent reserve out kept conflicting in the reservation store");
        Ok(Reply::busy())
    }

    /// Installs a persistent reservation state another router committed
    /// (the daemon pushes what the shared store holds, in the store's
    /// order). PERSISTENT RESERVE IN and the reservation conflict checks
    /// use it from now on; this router's nexuses that lost their
    /// registration get REGISTRATIONS PREEMPTED (RESERVATIONS PREEMPTED
    /// after a CLEAR), and those whose registrants-only / all-registrants
    /// reservation went away or changed type get RESERVATIONS RELEASED
    /// ([`PrState::replacement_posts`]). Installing the state this unit
    /// already has changes nothing.
    pub fn replace_reservations(&self, state: PrState) {
        self.replace_reservations_if(|| Some(state));
    }

    /// [`replace_reservations`](Self::replace_reservations) with the
    /// state `offer` gives, decided while PERSISTENT RESERVE OUT is held
    /// off: a daemon that pushes what its store committed checks there that
    /// the state is still newer than what this unit last saved or loaded
    /// (a check made before would race with a PR OUT committing a newer
    /// state, and the push would roll the unit back).
    pub fn replace_reservations_if(&self, offer: impl FnOnce() -> Option<PrState>) {
        let _serial = self.reservations.out.lock();
        if let Some(state) = offer() {
            self.adopt(&state);
        }
    }

    /// A copy of the persistent reservation state PERSISTENT RESERVE IN
    /// reports.
    pub fn reservation_state(&self) -> PrState {
        self.reservations.pr.read().clone()
    }

    /// Makes `state` (one this unit did not produce) current, posting what
    /// its changes owe this router's nexuses. Call with `out` held.
    fn adopt(&self, state: &PrState) {
        let res = &self.reservations;
        let posts = {
            let current = res.pr.read();
            if *current == *state {
                return;
            }
            current.replacement_posts(state)
        };
        res.commit(state.clone());
        self.post_pr(posts);
    }

    /// Posts PR unit attentions to the nexuses of this router they name.
    fn post_pr(&self, posts: UaPosts) {
        for (n, code) in posts {
            self.ua.post_it(&n, code);
        }
    }

    /// The sense a store failure is answered with.
    fn store_failure(&self, e: &StoreError) -> Sense {
        tracing::error!(error = %e, serial = %self.config.serial,
            "cannot persist persistent reservation state");
        match e {
            StoreError::Unavailable(_) => Sense::new(key::NOT_READY, asc::LU_BECOMING_READY),
            StoreError::Conflict | StoreError::Io(_) => {
                Sense::new(key::HARDWARE_ERROR, asc::INTERNAL_TARGET_FAILURE)
            }
        }
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
