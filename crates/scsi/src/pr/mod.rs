//! Persistent reservations (SPC-4 5.13): registrations, the reservation,
//! PERSISTENT RESERVE IN data and the PERSISTENT RESERVE OUT state machine.
//!
//! [`PrState`] is plain data (serde) so the logical unit can persist it
//! atomically after every change, in a file or in a store several routers
//! share. Registrations are keyed on the whole I_T nexus ([`ItNexus`]:
//! initiator name + ISID + target name + TPGT), so an initiator that logs
//! in again with a new ISID is a new registrant, and the same initiator
//! port through another router (another TPGT) is another I_T nexus.
//!
//! Invariants: at most [`MAX_REGISTRATIONS`] registrations, one per nexus;
//! a non-all-registrants reservation's holder is always registered; an
//! all-registrants reservation exists only while somebody is registered;
//! PRGENERATION changes only when registrations change (not on RESERVE or
//! RELEASE). Operations either fully apply or return an error leaving the
//! state untouched (the caller clones, mutates, persists, then commits).
//!
//! Layout: this module owns the state ([`PrState`]) and what PERSISTENT
//! RESERVE IN reports of it; `out` owns the PERSISTENT RESERVE OUT state
//! machine; `store` owns persistence ([`ReservationStore`], with the file
//! store as the default implementation). The children use only this
//! module, not each other.

mod out;
mod store;

use serde::{Deserialize, Serialize};

use crate::sense::{Sense, asc};
use crate::ua::ItNexus;

pub use store::{FileReservationStore, ReservationStore, StoreError};

/// Registrations beyond this fail with INSUFFICIENT REGISTRATION RESOURCES.
pub const MAX_REGISTRATIONS: usize = 256;

/// PERSISTENT RESERVE OUT service actions.
pub mod out_sa {
    /// REGISTER.
    pub const REGISTER: u8 = 0;
    /// RESERVE.
    pub const RESERVE: u8 = 1;
    /// RELEASE.
    pub const RELEASE: u8 = 2;
    /// CLEAR.
    pub const CLEAR: u8 = 3;
    /// PREEMPT.
    pub const PREEMPT: u8 = 4;
    /// PREEMPT AND ABORT.
    pub const PREEMPT_AND_ABORT: u8 = 5;
    /// REGISTER AND IGNORE EXISTING KEY.
    pub const REGISTER_AND_IGNORE: u8 = 6;
    /// REGISTER AND MOVE.
    pub const REGISTER_AND_MOVE: u8 = 7;
}

/// Persistent reservation types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PrType {
    /// Write Exclusive (1).
    WriteExclusive,
    /// Exclusive Access (3).
    ExclusiveAccess,
    /// Write Exclusive – Registrants Only (5).
    WriteExclusiveRegistrantsOnly,
    /// Exclusive Access – Registrants Only (6).
    ExclusiveAccessRegistrantsOnly,
    /// Write Exclusive – All Registrants (7).
    WriteExclusiveAllRegistrants,
    /// Exclusive Access – All Registrants (8).
    ExclusiveAccessAllRegistrants,
}

impl PrType {
    /// Decodes the TYPE field.
    pub fn from_code(code: u8) -> Option<PrType> {
        Some(match code {
            1 => PrType::WriteExclusive,
            3 => PrType::ExclusiveAccess,
            5 => PrType::WriteExclusiveRegistrantsOnly,
            6 => PrType::ExclusiveAccessRegistrantsOnly,
            7 => PrType::WriteExclusiveAllRegistrants,
            8 => PrType::ExclusiveAccessAllRegistrants,
            _ => return None,
        })
    }

    /// The TYPE field value.
    pub fn code(self) -> u8 {
        match self {
            PrType::WriteExclusive => 1,
            PrType::ExclusiveAccess => 3,
            PrType::WriteExclusiveRegistrantsOnly => 5,
            PrType::ExclusiveAccessRegistrantsOnly => 6,
            PrType::WriteExclusiveAllRegistrants => 7,
            PrType::ExclusiveAccessAllRegistrants => 8,
        }
    }

    /// All registrants are reservation holders.
    pub fn all_registrants(self) -> bool {
        matches!(
            self,
            PrType::WriteExclusiveAllRegistrants | PrType::ExclusiveAccessAllRegistrants
        )
    }

    /// Registrants (not only the holder) get access.
    pub fn registrants_access(self) -> bool {
        !matches!(self, PrType::WriteExclusive | PrType::ExclusiveAccess)
    }

    /// Non-registrants may still read.
    pub fn write_exclusive(self) -> bool {
        matches!(
            self,
            PrType::WriteExclusive
                | PrType::WriteExclusiveRegistrantsOnly
                | PrType::WriteExclusiveAllRegistrants
        )
    }
}

/// How a command interacts with reservations (SPC-4 table 66, SBC-3
/// table 13).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Allowed in the presence of any reservation (INQUIRY, PR IN, ...).
    Any,
    /// Reads the medium: allowed under Write Exclusive types.
    Read,
    /// Everything else: only holders (and registrants of RO/AR types).
    Write,
}

/// One registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    /// The registered I_T nexus.
    pub nexus: ItNexus,
    /// Its reservation key (never 0).
    pub key: u64,
    /// Relative target port identifier of the nexus (READ FULL STATUS).
    pub relative_port_id: u16,
}

/// The persistent reservation, if any.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    /// The holder (for all-registrants types: the nexus that reserved).
    pub holder: ItNexus,
    /// Reservation type.
    pub pr_type: PrType,
}

/// Everything PR keeps for one logical unit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrState {
    /// PRGENERATION.
    pub generation: u32,
    /// Registrations in registration order.
    pub registrations: Vec<Registration>,
    /// The reservation.
    pub reservation: Option<Reservation>,
    /// Activate persist through power loss was requested.
    pub aptpl: bool,
}

/// Why a PERSISTENT RESERVE OUT did not apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrError {
    /// RESERVATION CONFLICT status.
    Conflict,
    /// CHECK CONDITION with this sense.
    Check(Sense),
}

impl From<Sense> for PrError {
    fn from(s: Sense) -> Self {
        PrError::Check(s)
    }
}

/// Unit attentions a PR OUT produced, for the caller to post.
pub type UaPosts = Vec<(ItNexus, asc::Code)>;

/// The decoded PR OUT request the state machine consumes.
#[derive(Debug, Clone, Copy)]
pub struct OutRequest<'a> {
    /// Service action.
    pub service_action: u8,
    /// SCOPE field.
    pub scope: u8,
    /// TYPE field.
    pub pr_type: u8,
    /// Parameter list (exactly the parameter list length).
    pub params: &'a [u8],
    /// Relative target port the command came through.
    pub relative_port_id: u16,
    /// Whether persist-through-power-loss is possible (a state path).
    pub ptpl_capable: bool,
}

impl PrState {
    /// Registered key of `n`.
    pub fn key_of(&self, n: &ItNexus) -> Option<u64> {
        self.registrations
            .iter()
            .find(|r| &r.nexus == n)
            .map(|r| r.key)
    }

    /// Whether `n` is a reservation holder.
    pub fn is_holder(&self, n: &ItNexus) -> bool {
        match &self.reservation {
            None => false,
            Some(r) if r.pr_type.all_registrants() => self.key_of(n).is_some(),
            Some(r) => &r.holder == n,
        }
    }

    /// Whether a command of class `access` from `n` conflicts with the
    /// reservation.
    pub(crate) fn conflicts(&self, n: &ItNexus, access: Access) -> bool {
        let Some(r) = &self.reservation else {
            return false;
        };
        if access == Access::Any || self.is_holder(n) {
            return false;
        }
        let registered = self.key_of(n).is_some();
        match access {
            Access::Any => false,
            Access::Read => {
                if r.pr_type.write_exclusive() {
                    false
                } else {
                    !(r.pr_type.registrants_access() && registered)
                }
            }
            Access::Write => !(r.pr_type.registrants_access() && registered),
        }
    }

    fn others_registered(&self, except: &ItNexus) -> Vec<ItNexus> {
        self.registrations
            .iter()
            .filter(|r| &r.nexus != except)
            .map(|r| r.nexus.clone())
            .collect()
    }

    /// READ KEYS parameter data (full length; the caller truncates).
    pub fn read_keys(&self) -> Vec<u8> {
        let mut d = Vec::with_capacity(8 + 8 * self.registrations.len());
        d.extend_from_slice(&self.generation.to_be_bytes());
        d.extend_from_slice(&crate::sat_u32(8 * self.registrations.len()).to_be_bytes());
        for r in &self.registrations {
            d.extend_from_slice(&r.key.to_be_bytes());
        }
        d
    }

    /// READ RESERVATION parameter data.
    pub fn read_reservation(&self) -> Vec<u8> {
        let mut d = Vec::with_capacity(24);
        d.extend_from_slice(&self.generation.to_be_bytes());
        match &self.reservation {
            None => d.extend_from_slice(&0u32.to_be_bytes()),
            Some(r) => {
                d.extend_from_slice(&16u32.to_be_bytes());
                let key = if r.pr_type.all_registrants() {
                    0
                } else {
                    self.key_of(&r.holder).unwrap_or(0)
                };
                d.extend_from_slice(&key.to_be_bytes());
                d.extend_from_slice(&[0, 0, 0, 0, 0, r.pr_type.code(), 0, 0]);
            }
        }
        d
    }

    /// REPORT CAPABILITIES parameter data.
    pub fn report_capabilities(&self, ptpl_capable: bool) -> Vec<u8> {
        let mut d = vec![0u8; 8];
        d[1] = 8;
        // CRH: RESERVE/RELEASE follow SPC-4 5.13.3 in the presence of PR.
        d[2] = 0x10 | u8::from(ptpl_capable);
        // TMV, ALLOW COMMANDS = 0, PTPL_A.
        d[3] = 0x80 | u8::from(self.aptpl && ptpl_capable);
        // WR_EX_AR, EX_AC_RO, WR_EX_RO, EX_AC, WR_EX / EX_AC_AR.
        d[4] = 0x80 | 0x40 | 0x20 | 0x08 | 0x02;
        d[5] = 0x01;
        d
    }

    /// READ FULL STATUS parameter data.
    pub fn read_full_status(&self) -> Vec<u8> {
        let mut body = Vec::new();
        for r in &self.registrations {
            let tid = iscsi_transport_id(&r.nexus);
            body.extend_from_slice(&r.key.to_be_bytes());
            body.extend_from_slice(&[0; 4]);
            let holder = self.is_holder(&r.nexus);
            body.push(u8::from(holder));
            body.push(match (&self.reservation, holder) {
                (Some(res), true) => res.pr_type.code(),
                _ => 0,
            });
            body.extend_from_slice(&[0; 4]);
            body.extend_from_slice(&r.relative_port_id.to_be_bytes());
            body.extend_from_slice(&crate::sat_u32(tid.len()).to_be_bytes());
            body.extend_from_slice(&tid);
        }
        let mut d = Vec::with_capacity(8 + body.len());
        d.extend_from_slice(&self.generation.to_be_bytes());
        d.extend_from_slice(&crate::sat_u32(body.len()).to_be_bytes());
        d.extend_from_slice(&body);
        d
    }
}

impl PrState {
    /// The unit attentions a router that did not execute a PERSISTENT
    /// RESERVE OUT owes when its state moves from `self` to `new`, which
    /// another router committed (one or several PR OUTs later):
    /// - a nexus registered before and not after lost its registration:
    ///   RESERVATIONS PREEMPTED (2A/03) if nobody is registered any more
    ///   (a CLEAR), REGISTRATIONS PREEMPTED (2A/05) otherwise;
    /// - a nexus registered before and after gets RESERVATIONS RELEASED
    ///   (2A/04) when a registrants-only or all-registrants reservation went
    ///   away (not the holder of a registrants-only one), or when the
    ///   reservation changed type (not the new holder).
    ///
    /// These are the conditions the executing router posts to the nexuses
    /// it knows; the nexus that acted is on the other router, so the
    /// caller (who posts only to its own nexuses) never posts to it.
    pub fn replacement_posts(&self, new: &PrState) -> UaPosts {
        let lost = if new.registrations.is_empty() {
            asc::RESERVATIONS_PREEMPTED
        } else {
            asc::REGISTRATIONS_PREEMPTED
        };
        // Some(except): RESERVATIONS RELEASED for all but `except`.
        let released: Option<Option<&ItNexus>> = match (&self.reservation, &new.reservation) {
            (Some(old), None) if old.pr_type.registrants_access() => {
                Some((!old.pr_type.all_registrants()).then_some(&old.holder))
            }
            (Some(old), Some(now)) if old.pr_type != now.pr_type => Some(Some(&now.holder)),
            _ => None,
        };
        let mut ua = UaPosts::new();
        for r in &self.registrations {
            if new.key_of(&r.nexus).is_none() {
                ua.push((r.nexus.clone(), lost));
            } else if let Some(except) = released
                && except != Some(&r.nexus)
            {
                ua.push((r.nexus.clone(), asc::RESERVATIONS_RELEASED));
            }
        }
        ua
    }
}

/// iSCSI TransportID, format 01b (initiator port: name + ISID), padded to a
/// multiple of four bytes (SPC-4 7.6.4.6).
pub fn iscsi_transport_id(n: &ItNexus) -> Vec<u8> {
    let port = n.initiator_port();
    let mut name = port.into_bytes();
    name.push(0);
    while !name.len().is_multiple_of(4) {
        name.push(0);
    }
    let mut d = Vec::with_capacity(4 + name.len());
    d.push(0x40 | 0x05);
    d.push(0);
    d.extend_from_slice(&crate::sat_u16(name.len()).to_be_bytes());
    d.extend_from_slice(&name);
    d
}

/// Parses an iSCSI TransportID of format 01b into (name, ISID).
fn parse_iscsi_transport_id(tid: &[u8]) -> Option<(String, [u8; 6])> {
    if tid.len() < 4 || tid[0] != 0x45 {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([tid[2], tid[3]]));
    let body = tid.get(4..4 + len)?;
    let end = body.iter().position(|b| *b == 0).unwrap_or(body.len());
    let s = std::str::from_utf8(&body[..end]).ok()?;
    let (name, isid_hex) = s.rsplit_once(",i,0x").or_else(|| s.rsplit_once(",I,0X"))?;
    if isid_hex.len() != 12 || name.is_empty() {
        return None;
    }
    let mut isid = [0u8; 6];
    for (i, b) in isid.iter_mut().enumerate() {
        *b = u8::from_str_radix(isid_hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some((name.to_ascii_lowercase(), isid))
}

#[cfg(test)]
// Test parameter lists with small lengths.
#[allow(clippy::cast_possible_truncation)]
mod tests {
    use super::*;

    fn nx(n: u8) -> ItNexus {
        ItNexus {
            initiator_name: format!("iqn.2007-10.test:init{n}"),
            isid: [0x80, 0, 0, 0, 0, n],
            target_name: "iqn.t".into(),
            tpgt: 1,
        }
    }

    fn params(res: u64, sa: u64, flags: u8) -> Vec<u8> {
        let mut p = vec![0u8; 24];
        p[..8].copy_from_slice(&res.to_be_bytes());
        p[8..16].copy_from_slice(&sa.to_be_bytes());
        p[20] = flags;
        p
    }

    fn out(st: &mut PrState, n: &ItNexus, sa: u8, ty: u8, p: &[u8]) -> Result<UaPosts, PrError> {
        st.apply_out(
            n,
            &OutRequest {
                service_action: sa,
                scope: 0,
                pr_type: ty,
                params: p,
                relative_port_id: 1,
                ptpl_capable: true,
            },
        )
    }

    #[test]
    fn register_reserve_release() {
        let mut st = PrState::default();
        let a = nx(1);
        out(
            &mut st,
            &a,
            out_sa::REGISTER_AND_IGNORE,
            0,
            &params(0, 7, 0),
        )
        .unwrap();
        assert_eq!(st.key_of(&a), Some(7));
        assert_eq!(st.generation, 1);
        // Re-register without the right key conflicts.
        assert_eq!(
            out(&mut st, &a, out_sa::REGISTER, 0, &params(0, 8, 0)),
            Err(PrError::Conflict)
        );
        out(&mut st, &a, out_sa::RESERVE, 3, &params(7, 0, 0)).unwrap();
        assert_eq!(st.generation, 1);
        assert!(st.is_holder(&a));
        let b = nx(2);
        assert!(st.conflicts(&b, Access::Read));
        assert!(!st.conflicts(&b, Access::Any));
        // Wrong type on release.
        let e = out(&mut st, &a, out_sa::RELEASE, 1, &params(7, 0, 0)).unwrap_err();
        assert_eq!(
            e,
            PrError::Check(Sense::illegal(asc::INVALID_RELEASE_OF_PR))
        );
        out(&mut st, &a, out_sa::RELEASE, 3, &params(7, 0, 0)).unwrap();
        assert!(st.reservation.is_none());
    }

    #[test]
    fn holder_unregister_releases_unless_all_registrants() {
        for (ty, shared) in [(1u8, false), (6, false), (7, true), (8, true)] {
            let mut st = PrState::default();
            let (a, b) = (nx(1), nx(2));
            out(
                &mut st,
                &a,
                out_sa::REGISTER_AND_IGNORE,
                0,
                &params(0, 1, 0),
            )
            .unwrap();
            out(
                &mut st,
                &b,
                out_sa::REGISTER_AND_IGNORE,
                0,
                &params(0, 2, 0),
            )
            .unwrap();
            out(&mut st, &a, out_sa::RESERVE, ty, &params(1, 0, 0)).unwrap();
            out(&mut st, &a, out_sa::REGISTER, 0, &params(1, 0, 0)).unwrap();
            assert_eq!(st.reservation.is_some(), shared, "type {ty}");
        }
    }

    #[test]
    fn preempt_removes_registrations() {
        let mut st = PrState::default();
        let (a, b) = (nx(1), nx(2));
        out(
            &mut st,
            &a,
            out_sa::REGISTER_AND_IGNORE,
            0,
            &params(0, 1, 0),
        )
        .unwrap();
        out(
            &mut st,
            &b,
            out_sa::REGISTER_AND_IGNORE,
            0,
            &params(0, 2, 0),
        )
        .unwrap();
        let g = st.generation;
        let ua = out(&mut st, &b, out_sa::PREEMPT, 3, &params(2, 1, 0)).unwrap();
        assert_eq!(ua, vec![(a.clone(), asc::REGISTRATIONS_PREEMPTED)]);
        assert_eq!(st.generation, g + 1);
        assert_eq!(st.key_of(&a), None);
        assert_eq!(
            out(&mut st, &b, out_sa::PREEMPT, 3, &params(2, 99, 0)),
            Err(PrError::Conflict)
        );
        // Preempting the holder moves the reservation.
        out(
            &mut st,
            &a,
            out_sa::REGISTER_AND_IGNORE,
            0,
            &params(0, 1, 0),
        )
        .unwrap();
        out(&mut st, &a, out_sa::RESERVE, 1, &params(1, 0, 0)).unwrap();
        out(&mut st, &b, out_sa::PREEMPT, 3, &params(2, 1, 0)).unwrap();
        assert!(st.is_holder(&b));
        assert_eq!(
            st.reservation.as_ref().unwrap().pr_type,
            PrType::ExclusiveAccess
        );
    }

    #[test]
    fn register_and_move() {
        let mut st = PrState::default();
        let (a, b) = (nx(1), nx(2));
        out(
            &mut st,
            &a,
            out_sa::REGISTER_AND_IGNORE,
            0,
            &params(0, 1, 0),
        )
        .unwrap();
        out(&mut st, &a, out_sa::RESERVE, 1, &params(1, 0, 0)).unwrap();
        let tid = iscsi_transport_id(&b);
        let mut p = vec![0u8; 24];
        p[..8].copy_from_slice(&1u64.to_be_bytes());
        p[8..16].copy_from_slice(&5u64.to_be_bytes());
        p[17] = 0x02;
        p[18..20].copy_from_slice(&1u16.to_be_bytes());
        p[20..24].copy_from_slice(&(tid.len() as u32).to_be_bytes());
        p.extend_from_slice(&tid);
        out(&mut st, &a, out_sa::REGISTER_AND_MOVE, 0, &p).unwrap();
        assert!(st.is_holder(&b));
        assert_eq!(st.key_of(&b), Some(5));
        assert_eq!(st.key_of(&a), None);
    }

    #[test]
    fn transport_id_round_trip() {
        let n = nx(3);
        let tid = iscsi_transport_id(&n);
        assert_eq!(tid.len() % 4, 0);
        let (name, isid) = parse_iscsi_transport_id(&tid).unwrap();
        assert_eq!(name, n.initiator_name);
        assert_eq!(isid, n.isid);
    }

    /// What another router derives from the state change equals what the
    /// executing router posts, for every service action that posts.
    #[test]
    fn replacement_posts_match_what_the_executing_router_posts() {
        let (a, b, c) = (nx(1), nx(2), nx(3));
        let base = |ty: Option<u8>| {
            let mut st = PrState::default();
            for (n, k) in [(&a, 1), (&b, 2), (&c, 3)] {
                out(&mut st, n, out_sa::REGISTER_AND_IGNORE, 0, &params(0, k, 0)).unwrap();
            }
            if let Some(ty) = ty {
                out(&mut st, &a, out_sa::RESERVE, ty, &params(1, 0, 0)).unwrap();
            }
            st
        };
        let sorted = |mut v: UaPosts| {
            v.sort_by_key(|x| x.0.isid);
            v
        };
        // (reservation type, actor, service action, type, params).
        type Case<'a> = (Option<u8>, &'a ItNexus, u8, u8, Vec<u8>);
        let cases: Vec<Case<'_>> = vec![
            (None, &b, out_sa::PREEMPT, 0, params(2, 1, 0)),
            (Some(1), &b, out_sa::PREEMPT, 1, params(2, 1, 0)),
            (Some(5), &b, out_sa::PREEMPT, 3, params(2, 1, 0)),
            (Some(7), &b, out_sa::PREEMPT, 5, params(2, 0, 0)),
            (Some(5), &a, out_sa::RELEASE, 5, params(1, 0, 0)),
            (Some(1), &a, out_sa::RELEASE, 1, params(1, 0, 0)),
            (Some(6), &a, out_sa::REGISTER, 0, params(1, 0, 0)),
            (Some(3), &b, out_sa::CLEAR, 0, params(2, 0, 0)),
        ];
        for (ty, actor, sa, pr_type, p) in cases {
            let old = base(ty);
            let mut new = old.clone();
            let posted = out(&mut new, actor, sa, pr_type, &p).unwrap();
            let derived: UaPosts = old
                .replacement_posts(&new)
                .into_iter()
                .filter(|(n, _)| n != actor)
                .collect();
            assert_eq!(sorted(derived), sorted(posted), "{ty:?} sa {sa}");
        }
        // No change, nothing owed.
        let st = base(Some(5));
        assert!(st.replacement_posts(&st).is_empty());
    }
}
