//! Persistent reservations (SPC-4 5.13): registrations, the reservation,
//! PERSISTENT RESERVE IN data and the PERSISTENT RESERVE OUT state machine.
//!
//! [`PrState`] is plain data (serde) so the logical unit can persist it
//! atomically after every change. Registrations are keyed on the whole I_T
//! nexus ([`ItNexus`]: initiator name + ISID + target name + TPGT), so an
//! initiator that logs in again with a new ISID is a new registrant.
//!
//! Invariants: at most [`MAX_REGISTRATIONS`] registrations, one per nexus;
//! a non-all-registrants reservation's holder is always registered; an
//! all-registrants reservation exists only while somebody is registered;
//! PRGENERATION changes only when registrations change (not on RESERVE or
//! RELEASE). Operations either fully apply or return an error leaving the
//! state untouched (the caller clones, mutates, persists, then commits).

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::sense::{Sense, asc};
use crate::ua::ItNexus;

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

fn be64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(x)
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
    pub fn conflicts(&self, n: &ItNexus, access: Access) -> bool {
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

    /// Removes `n`'s registration and applies its effect on the
    /// reservation.
    fn unregister(&mut self, n: &ItNexus, ua: &mut UaPosts) {
        self.registrations.retain(|r| &r.nexus != n);
        let Some(r) = self.reservation.clone() else {
            return;
        };
        if r.pr_type.all_registrants() {
            if self.registrations.is_empty() {
                self.reservation = None;
            }
        } else if &r.holder == n {
            self.reservation = None;
            if r.pr_type.registrants_access() {
                for other in self.others_registered(n) {
                    ua.push((other, asc::RESERVATIONS_RELEASED));
                }
            }
        }
    }

    /// Removes every registration with `key` (except `keep`), posting
    /// REGISTRATIONS PREEMPTED; returns how many went.
    fn preempt_key(&mut self, key: u64, keep: Option<&ItNexus>, ua: &mut UaPosts) -> usize {
        let victims: Vec<ItNexus> = self
            .registrations
            .iter()
            .filter(|r| r.key == key && Some(&r.nexus) != keep)
            .map(|r| r.nexus.clone())
            .collect();
        for v in &victims {
            ua.push((v.clone(), asc::REGISTRATIONS_PREEMPTED));
            self.unregister_quiet(v);
        }
        victims.len()
    }

    /// Removes a registration without reservation side effects other than
    /// dropping an all-registrants reservation nobody holds any more.
    fn unregister_quiet(&mut self, n: &ItNexus) {
        self.registrations.retain(|r| &r.nexus != n);
        if let Some(r) = &self.reservation {
            let orphan = if r.pr_type.all_registrants() {
                self.registrations.is_empty()
            } else {
                &r.holder == n
            };
            if orphan {
                self.reservation = None;
            }
        }
    }

    fn bump(&mut self) {
        self.generation = self.generation.wrapping_add(1);
    }

    /// Applies one PERSISTENT RESERVE OUT from `n`. On success returns the
    /// unit attentions to establish.
    pub fn apply_out(&mut self, n: &ItNexus, req: &OutRequest<'_>) -> Result<UaPosts, PrError> {
        let p = req.params;
        let sa = req.service_action;
        if sa == out_sa::REGISTER_AND_MOVE {
            return self.register_and_move(n, req);
        }
        if p.len() != 24 {
            return Err(Sense::param_list_length().into());
        }
        let res_key = be64(p, 0);
        let sa_key = be64(p, 8);
        let flags = p[20];
        let mut ua = UaPosts::new();
        match sa {
            out_sa::REGISTER | out_sa::REGISTER_AND_IGNORE => {
                if flags & 0x08 != 0 {
                    // SPEC_I_PT: not supported (SIP_C = 0).
                    return Err(Sense::invalid_param_field(20).into());
                }
                if flags & 0x04 != 0 {
                    // ALL_TG_PT: not supported (ATP_C = 0).
                    return Err(Sense::invalid_param_field(20).into());
                }
                let aptpl = flags & 0x01 != 0;
                if aptpl && !req.ptpl_capable {
                    return Err(Sense::invalid_param_field(20).into());
                }
                let current = self.key_of(n);
                if sa == out_sa::REGISTER && res_key != current.unwrap_or(0) {
                    return Err(PrError::Conflict);
                }
                match (current, sa_key) {
                    (None, 0) => {}
                    (None, key) => {
                        if self.registrations.len() >= MAX_REGISTRATIONS {
                            return Err(
                                Sense::illegal(asc::INSUFFICIENT_REGISTRATION_RESOURCES).into()
                            );
                        }
                        self.registrations.push(Registration {
                            nexus: n.clone(),
                            key,
                            relative_port_id: req.relative_port_id,
                        });
                        self.aptpl = aptpl;
                        self.bump();
                    }
                    (Some(_), 0) => {
                        self.unregister(n, &mut ua);
                        self.bump();
                    }
                    (Some(_), key) => {
                        for r in self.registrations.iter_mut().filter(|r| &r.nexus == n) {
                            r.key = key;
                        }
                        self.aptpl = aptpl;
                        self.bump();
                    }
                }
                Ok(ua)
            }
            out_sa::RESERVE => {
                self.check_key(n, res_key)?;
                let ty = check_scope_type(req.scope, req.pr_type)?;
                match &self.reservation {
                    None => {
                        self.reservation = Some(Reservation {
                            holder: n.clone(),
                            pr_type: ty,
                        });
                        Ok(ua)
                    }
                    Some(r) if self.is_holder(n) && r.pr_type == ty => Ok(ua),
                    Some(_) => Err(PrError::Conflict),
                }
            }
            out_sa::RELEASE => {
                self.check_key(n, res_key)?;
                let Some(r) = self.reservation.clone() else {
                    return Ok(ua);
                };
                if !self.is_holder(n) {
                    return Ok(ua);
                }
                if req.scope != 0 || PrType::from_code(req.pr_type) != Some(r.pr_type) {
                    return Err(Sense::illegal(asc::INVALID_RELEASE_OF_PR).into());
                }
                self.reservation = None;
                if r.pr_type.registrants_access() {
                    for other in self.others_registered(n) {
                        ua.push((other, asc::RESERVATIONS_RELEASED));
                    }
                }
                Ok(ua)
            }
            out_sa::CLEAR => {
                self.check_key(n, res_key)?;
                for other in self.others_registered(n) {
                    ua.push((other, asc::RESERVATIONS_PREEMPTED));
                }
                self.registrations.clear();
                self.reservation = None;
                self.bump();
                Ok(ua)
            }
            out_sa::PREEMPT | out_sa::PREEMPT_AND_ABORT => {
                self.check_key(n, res_key)?;
                self.preempt(n, sa_key, req, &mut ua)?;
                self.bump();
                Ok(ua)
            }
            _ => Err(Sense::invalid_cdb_field(1, Some(4)).into()),
        }
    }

    fn check_key(&self, n: &ItNexus, res_key: u64) -> Result<(), PrError> {
        match self.key_of(n) {
            Some(k) if k == res_key => Ok(()),
            _ => Err(PrError::Conflict),
        }
    }

    fn preempt(
        &mut self,
        n: &ItNexus,
        sa_key: u64,
        req: &OutRequest<'_>,
        ua: &mut UaPosts,
    ) -> Result<(), PrError> {
        let Some(r) = self.reservation.clone() else {
            if sa_key == 0 {
                return Err(Sense::invalid_param_field(8).into());
            }
            if self.preempt_key(sa_key, None, ua) == 0 {
                return Err(PrError::Conflict);
            }
            // The preempting nexus gets no unit attention for itself.
            ua.retain(|(v, _)| v != n);
            return Ok(());
        };
        let holder_key = if r.pr_type.all_registrants() {
            None
        } else {
            self.key_of(&r.holder)
        };
        let takes_over = if r.pr_type.all_registrants() {
            sa_key == 0
        } else {
            Some(sa_key) == holder_key
        };
        if takes_over {
            let ty = check_scope_type(req.scope, req.pr_type)?;
            let victims: Vec<ItNexus> = if r.pr_type.all_registrants() {
                self.others_registered(n)
            } else {
                self.registrations
                    .iter()
                    .filter(|x| x.key == sa_key && &x.nexus != n)
                    .map(|x| x.nexus.clone())
                    .collect()
            };
            for v in &victims {
                ua.push((v.clone(), asc::REGISTRATIONS_PREEMPTED));
            }
            self.registrations.retain(|x| !victims.contains(&x.nexus));
            if ty != r.pr_type {
                for other in self.others_registered(n) {
                    ua.push((other, asc::RESERVATIONS_RELEASED));
                }
            }
            self.reservation = Some(Reservation {
                holder: n.clone(),
                pr_type: ty,
            });
            return Ok(());
        }
        if sa_key == 0 {
            return Err(Sense::invalid_param_field(8).into());
        }
        if self.preempt_key(sa_key, None, ua) == 0 {
            return Err(PrError::Conflict);
        }
        ua.retain(|(v, _)| v != n);
        Ok(())
    }

    fn register_and_move(&mut self, n: &ItNexus, req: &OutRequest<'_>) -> Result<UaPosts, PrError> {
        let p = req.params;
        if p.len() < 24 {
            return Err(Sense::param_list_length().into());
        }
        let res_key = be64(p, 0);
        let sa_key = be64(p, 8);
        let unreg = p[17] & 0x02 != 0;
        let aptpl = p[17] & 0x01 != 0;
        let rel_port = u16::from_be_bytes([p[18], p[19]]);
        let tid_len = u32::from_be_bytes([p[20], p[21], p[22], p[23]]) as usize;
        if p.len() - 24 < tid_len {
            return Err(Sense::param_list_length().into());
        }
        self.check_key(n, res_key)?;
        let Some(r) = self.reservation.clone() else {
            return Err(PrError::Conflict);
        };
        if r.pr_type.all_registrants() || r.holder != *n {
            return Err(PrError::Conflict);
        }
        if sa_key == 0 {
            return Err(Sense::invalid_param_field(8).into());
        }
        if aptpl && !req.ptpl_capable {
            return Err(Sense::invalid_param_field(17).into());
        }
        if rel_port != req.relative_port_id {
            // Only the target port the command came through is known here.
            return Err(Sense::invalid_param_field(18).into());
        }
        let (name, isid) = parse_iscsi_transport_id(&p[24..24 + tid_len])
            .ok_or_else(|| PrError::from(Sense::invalid_param_field(24)))?;
        let dest = ItNexus {
            initiator_name: name,
            isid,
            target_name: n.target_name.clone(),
            tpgt: n.tpgt,
        };
        if &dest == n {
            return Err(Sense::invalid_param_field(24).into());
        }
        match self.registrations.iter_mut().find(|x| x.nexus == dest) {
            Some(x) => x.key = sa_key,
            None => {
                if self.registrations.len() >= MAX_REGISTRATIONS {
                    return Err(Sense::illegal(asc::INSUFFICIENT_REGISTRATION_RESOURCES).into());
                }
                self.registrations.push(Registration {
                    nexus: dest.clone(),
                    key: sa_key,
                    relative_port_id: rel_port,
                });
            }
        }
        self.reservation = Some(Reservation {
            holder: dest,
            pr_type: r.pr_type,
        });
        if unreg {
            self.registrations.retain(|x| &x.nexus != n);
        }
        self.aptpl = aptpl;
        self.bump();
        Ok(UaPosts::new())
    }

    /// READ KEYS parameter data (full length; the caller truncates).
    pub fn read_keys(&self) -> Vec<u8> {
        let mut d = Vec::with_capacity(8 + 8 * self.registrations.len());
        d.extend_from_slice(&self.generation.to_be_bytes());
        d.extend_from_slice(&((8 * self.registrations.len()) as u32).to_be_bytes());
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
            body.extend_from_slice(&(tid.len() as u32).to_be_bytes());
            body.extend_from_slice(&tid);
        }
        let mut d = Vec::with_capacity(8 + body.len());
        d.extend_from_slice(&self.generation.to_be_bytes());
        d.extend_from_slice(&(body.len() as u32).to_be_bytes());
        d.extend_from_slice(&body);
        d
    }
}

fn check_scope_type(scope: u8, ty: u8) -> Result<PrType, PrError> {
    if scope != 0 {
        return Err(Sense::invalid_cdb_field(2, Some(7)).into());
    }
    PrType::from_code(ty).ok_or_else(|| Sense::invalid_cdb_field(2, Some(3)).into())
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
    d.extend_from_slice(&(name.len() as u16).to_be_bytes());
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

/// Where a logical unit keeps its PR state across restarts.
#[derive(Debug)]
pub struct PrStore {
    path: Option<PathBuf>,
}

impl PrStore {
    /// A store at `path` (or none: state lives in memory only).
    pub fn new(path: Option<PathBuf>) -> PrStore {
        PrStore { path }
    }

    /// Whether state survives restarts (PTPL_C).
    pub fn persistent(&self) -> bool {
        self.path.is_some()
    }

    /// Loads the saved state; a missing file is an empty state.
    pub fn load(&self) -> std::io::Result<PrState> {
        let Some(path) = &self.path else {
            return Ok(PrState::default());
        };
        match fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(PrState::default()),
            Err(e) => Err(e),
        }
    }

    /// Saves `state` atomically: temporary file, fsync, rename, fsync of
    /// the directory.
    pub fn save(&self, state: &PrState) -> std::io::Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let bytes = serde_json::to_vec_pretty(state)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        let tmp = tmp_path(path);
        {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
        }
        fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|s| s.to_os_string())
        .unwrap_or_default();
    name.push(".tmp");
    path.with_file_name(name)
}

#[cfg(test)]
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

    #[test]
    fn store_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = PrStore::new(Some(dir.path().join("pr.json")));
        assert_eq!(store.load().unwrap(), PrState::default());
        let mut st = PrState::default();
        out(
            &mut st,
            &nx(1),
            out_sa::REGISTER_AND_IGNORE,
            0,
            &params(0, 1, 1),
        )
        .unwrap();
        store.save(&st).unwrap();
        assert_eq!(store.load().unwrap(), st);
    }
}
