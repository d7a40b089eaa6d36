//! The PERSISTENT RESERVE OUT state machine (SPC-4 5.13.5 - 5.13.11):
//! REGISTER (and IGNORE EXISTING KEY), RESERVE, RELEASE, CLEAR, PREEMPT
//! (and ABORT) and REGISTER AND MOVE, applied to a [`PrState`].
//!
//! Invariants: an operation either fully applies and returns the unit
//! attentions it establishes, or returns an error leaving the state
//! untouched; PRGENERATION changes only when registrations change.

use super::{
    MAX_REGISTRATIONS, OutRequest, PrError, PrState, PrType, Registration, Reservation, UaPosts,
    out_sa, parse_iscsi_transport_id,
};
use crate::sense::{Sense, asc};
use crate::ua::ItNexus;

fn be64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(x)
}

impl PrState {
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
    pub(crate) fn apply_out(
        &mut self,
        n: &ItNexus,
        req: &OutRequest<'_>,
    ) -> Result<UaPosts, PrError> {
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
}

fn check_scope_type(scope: u8, ty: u8) -> Result<PrType, PrError> {
    if scope != 0 {
        return Err(Sense::invalid_cdb_field(2, Some(7)).into());
    }
    PrType::from_code(ty).ok_or_else(|| Sense::invalid_cdb_field(2, Some(3)).into())
}
