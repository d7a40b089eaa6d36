//! Asymmetric logical unit access (SPC-4 5.16, implicit ALUA): the access
//! states of the target port groups a logical unit is reachable through,
//! which commands a port in a non-active state still serves, and REPORT
//! TARGET PORT GROUPS.
//!
//! In a Depot grid every storage router exposes every VM's target with the
//! same identity; each router is one target port group with one target
//! port, and its portal group tag is both the group's id and the port's
//! relative target port identifier ([`Nexus::new`](crate::Nexus::new)).
//! Exactly one router owns a vDisk (its group is active/optimized); the
//! others are standby, or unavailable / transitioning while ownership
//! moves. The daemon tells each logical unit its [`Paths`]; without that a
//! logical unit is reachable through one active/optimized group, the port
//! the command came through (a single router).
//!
//! Invariants:
//! - [`PortState`] keeps the local group's state in one atomic byte: the
//!   command path (blocking and inline) reads it with one load, no lock.
//!   The group table behind it changes only under its write lock, and the
//!   byte is stored while that lock is held, so the two never disagree for
//!   a reader holding the read lock.
//! - A validated [`Paths`] has at least one group, exactly one group whose
//!   id is `local_tpg`, unique group ids, unique non-zero relative port
//!   ids, and is sorted by group id (every router reports the same list).
//! - [`refusal`] is the only place that decides which commands a
//!   non-active port serves; active states serve everything.

use std::sync::atomic::{AtomicU8, Ordering};

use parking_lot::RwLock;

use crate::Nexus;
use crate::cdb::Cdb;
use crate::sense::{Sense, asc, key};

/// Asymmetric access state of a target port group (SPC-4 table 179).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AccessState {
    /// Active/optimized (0): every command is served.
    ActiveOptimized,
    /// Active/non-optimized (1): every command is served, slower.
    ActiveNonOptimized,
    /// Standby (2): only identification, mode, reservation and sense
    /// commands are served.
    Standby,
    /// Unavailable (3): like standby, without persistent reservations.
    Unavailable,
    /// Transitioning (0xF): only INQUIRY, REPORT LUNS, REPORT TARGET PORT
    /// GROUPS and REQUEST SENSE are served.
    Transitioning,
}

impl AccessState {
    /// The ASYMMETRIC ACCESS STATE field value.
    pub const fn code(self) -> u8 {
        match self {
            AccessState::ActiveOptimized => 0x0,
            AccessState::ActiveNonOptimized => 0x1,
            AccessState::Standby => 0x2,
            AccessState::Unavailable => 0x3,
            AccessState::Transitioning => 0xf,
        }
    }

    /// Decodes the ASYMMETRIC ACCESS STATE field (`None` for states this
    /// target never uses: offline, LBA dependent, reserved codes).
    pub const fn from_code(code: u8) -> Option<AccessState> {
        Some(match code {
            0x0 => AccessState::ActiveOptimized,
            0x1 => AccessState::ActiveNonOptimized,
            0x2 => AccessState::Standby,
            0x3 => AccessState::Unavailable,
            0xf => AccessState::Transitioning,
            _ => return None,
        })
    }

    /// Whether every command is served through a port in this state.
    pub const fn is_active(self) -> bool {
        matches!(
            self,
            AccessState::ActiveOptimized | AccessState::ActiveNonOptimized
        )
    }

    /// NOT READY / LOGICAL UNIT NOT ACCESSIBLE with this state's qualifier
    /// (04/0B standby, 04/0C unavailable, 04/0A transitioning); `None` for
    /// the active states.
    pub const fn not_ready(self) -> Option<Sense> {
        let code = match self {
            AccessState::ActiveOptimized | AccessState::ActiveNonOptimized => return None,
            AccessState::Standby => asc::LU_NOT_ACCESSIBLE_STANDBY,
            AccessState::Unavailable => asc::LU_NOT_ACCESSIBLE_UNAVAILABLE,
            AccessState::Transitioning => asc::LU_NOT_ACCESSIBLE_TRANSITIONING,
        };
        Some(Sense::new(key::NOT_READY, code))
    }
}

/// One target port group: one storage router, with its one target port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Group {
    /// Target port group id (the router's portal group tag).
    pub tpg: u16,
    /// Relative target port identifier of its port (the same number in
    /// Depot; never 0).
    pub relative_port: u16,
    /// The group's asymmetric access state for this logical unit.
    pub state: AccessState,
}

/// Every target port group a logical unit is reachable through, and which
/// of them is this router's.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Paths {
    /// The group id of this router (its portal group tag, the `tpgt` the
    /// transport puts in every [`Nexus`] it builds).
    pub local_tpg: u16,
    /// All groups, this router's included.
    pub groups: Vec<Group>,
}

/// Why a [`Paths`] was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathsError {
    /// No group at all.
    #[error("no target port group")]
    Empty,
    /// No group has the local group id.
    #[error("no target port group {0} (the local one)")]
    NoLocalGroup(u16),
    /// Two groups share an id.
    #[error("target port group {0} listed twice")]
    DuplicateGroup(u16),
    /// Two groups share a relative port id.
    #[error("relative target port {0} listed twice")]
    DuplicateRelativePort(u16),
    /// Relative target port 0 is reserved (SPC-4).
    #[error("relative target port 0 of group {0} is reserved")]
    ZeroRelativePort(u16),
}

impl Paths {
    /// The local group's state (active/optimized if it is missing, which a
    /// validated `Paths` never is).
    pub fn local_state(&self) -> AccessState {
        self.groups
            .iter()
            .find(|g| g.tpg == self.local_tpg)
            .map_or(AccessState::ActiveOptimized, |g| g.state)
    }

    /// Checks the invariants and sorts the groups by id.
    fn validated(mut self) -> Result<Paths, PathsError> {
        if self.groups.is_empty() {
            return Err(PathsError::Empty);
        }
        self.groups.sort_by_key(|g| g.tpg);
        for w in self.groups.windows(2) {
            if w[0].tpg == w[1].tpg {
                return Err(PathsError::DuplicateGroup(w[0].tpg));
            }
        }
        let mut ports: Vec<u16> = Vec::with_capacity(self.groups.len());
        for g in &self.groups {
            if g.relative_port == 0 {
                return Err(PathsError::ZeroRelativePort(g.tpg));
            }
            if ports.contains(&g.relative_port) {
                return Err(PathsError::DuplicateRelativePort(g.relative_port));
            }
            ports.push(g.relative_port);
        }
        if !self.groups.iter().any(|g| g.tpg == self.local_tpg) {
            return Err(PathsError::NoLocalGroup(self.local_tpg));
        }
        Ok(self)
    }
}

/// The path state of one logical unit on this router: the local state for
/// the command path, the group table for REPORT TARGET PORT GROUPS.
#[derive(Debug, Default)]
pub struct PortState {
    /// [`AccessState::code`] of the local group (0: active/optimized).
    local: AtomicU8,
    /// `None` until the daemon sets paths: one active/optimized group, the
    /// port a command came through.
    table: RwLock<Option<Paths>>,
}

impl PortState {
    /// The local group's state: one atomic load.
    pub fn local(&self) -> AccessState {
        AccessState::from_code(self.local.load(Ordering::Acquire))
            .unwrap_or(AccessState::ActiveOptimized)
    }

    /// Installs `paths` (validated and sorted). Returns whether any group's
    /// state (or the set of groups) changed, i.e. whether ASYMMETRIC ACCESS
    /// STATE CHANGED is due.
    pub fn set(&self, paths: Paths) -> Result<bool, PathsError> {
        let paths = paths.validated()?;
        let mut table = self.table.write();
        let changed = match table.as_ref() {
            // The default: one active/optimized group.
            None => paths.groups.len() != 1 || paths.local_state() != AccessState::ActiveOptimized,
            Some(old) => old.groups != paths.groups || old.local_state() != paths.local_state(),
        };
        self.local
            .store(paths.local_state().code(), Ordering::Release);
        *table = Some(paths);
        Ok(changed)
    }

    /// The paths set last (`None`: the single-router default).
    pub fn paths(&self) -> Option<Paths> {
        self.table.read().clone()
    }

    /// REPORT TARGET PORT GROUPS data as seen through `nexus`'s port.
    pub fn report(&self, nexus: &Nexus, extended: bool) -> Vec<u8> {
        match self.table.read().as_ref() {
            Some(p) => report_target_port_groups(&p.groups, false, extended),
            None => report_target_port_groups(
                &[Group {
                    tpg: nexus.tpgt,
                    relative_port: nexus.relative_port_id,
                    state: AccessState::ActiveOptimized,
                }],
                true,
                extended,
            ),
        }
    }
}

/// The sense that refuses `c` through a port in `state` (SPC-4 5.16.2.4),
/// or `None` when the command is served.
///
/// Standby serves INQUIRY, REPORT LUNS, REPORT TARGET PORT GROUPS, REPORT
/// SUPPORTED OPERATION CODES / TASK MANAGEMENT FUNCTIONS, MODE SENSE /
/// SELECT, PERSISTENT RESERVE IN / OUT, REQUEST SENSE and READ CAPACITY
/// (10) / (16); unavailable the same without persistent reservations and
/// READ CAPACITY; transitioning only INQUIRY, REPORT LUNS, REPORT TARGET
/// PORT GROUPS and REQUEST SENSE. (LOG SENSE / SELECT and the diagnostic
/// commands are not implemented.)
///
/// READ CAPACITY in standby is one of the "other commands" SPC-4 lets a
/// standby port serve, and hosts need it: Linux reads a path's capacity
/// once, when it finds the path, and keeps 0 for a path that refused it,
/// so a path found standby would fail every I/O ("access beyond end of
/// device") once its router becomes the owner.
pub fn refusal(state: AccessState, c: &Cdb) -> Option<Sense> {
    let refused = state.not_ready()?;
    let always = matches!(
        c,
        Cdb::Inquiry { .. }
            | Cdb::ReportLuns { .. }
            | Cdb::ReportTargetPortGroups { .. }
            | Cdb::RequestSense { .. }
    );
    let standby_or_unavailable = matches!(
        c,
        Cdb::ReportSupportedOpcodes { .. }
            | Cdb::ReportSupportedTmfs { .. }
            | Cdb::ModeSense { .. }
            | Cdb::ModeSelect { .. }
    );
    let standby = matches!(
        c,
        Cdb::PersistentReserveIn { .. }
            | Cdb::PersistentReserveOut { .. }
            | Cdb::ReadCapacity10
            | Cdb::ReadCapacity16 { .. }
    );
    let served = always
        || match state {
            AccessState::Standby => standby_or_unavailable || standby,
            AccessState::Unavailable => standby_or_unavailable,
            _ => false,
        };
    (!served).then_some(refused)
}

/// REPORT TARGET PORT GROUPS parameter data: one descriptor per group, in
/// the order given, each with its state, the supported states (T_SUP,
/// U_SUP, S_SUP, AN_SUP, AO_SUP), PREF as `pref` says, and its one port;
/// length header (and, if `extended`, format type 1 with implicit
/// transition time 0).
pub fn report_target_port_groups(groups: &[Group], pref: bool, extended: bool) -> Vec<u8> {
    let header = if extended { 8 } else { 4 };
    let mut d = Vec::with_capacity(header + 12 * groups.len());
    d.extend_from_slice(&[0; 4]);
    if extended {
        d.extend_from_slice(&[0x10, 0, 0, 0]);
    }
    for g in groups {
        d.push(if pref { 0x80 } else { 0 } | g.state.code());
        // T_SUP, U_SUP, S_SUP, AN_SUP, AO_SUP.
        d.push(0x80 | 0x08 | 0x04 | 0x02 | 0x01);
        d.extend_from_slice(&g.tpg.to_be_bytes());
        d.push(0);
        d.push(0); // status code: no status available
        d.push(0);
        d.push(1); // target port count
        d.extend_from_slice(&[0, 0]);
        d.extend_from_slice(&g.relative_port.to_be_bytes());
    }
    let len = crate::sat_u32(d.len() - 4);
    d[..4].copy_from_slice(&len.to_be_bytes());
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cdb::{BlockIo, Width};

    fn group(tpg: u16, state: AccessState) -> Group {
        Group {
            tpg,
            relative_port: tpg,
            state,
        }
    }

    fn nexus() -> Nexus {
        Nexus::new("iqn.i", [1, 2, 3, 4, 5, 6], "iqn.2026-01.depot:vm1", 1)
    }

    #[test]
    fn rtpg_lengths() {
        let st = PortState::default();
        let d = st.report(&nexus(), false);
        assert_eq!(
            u32::from_be_bytes([d[0], d[1], d[2], d[3]]) as usize,
            d.len() - 4
        );
        let d = st.report(&nexus(), true);
        assert_eq!(d[4], 0x10);
        assert_eq!(
            u32::from_be_bytes([d[0], d[1], d[2], d[3]]) as usize,
            d.len() - 4
        );
    }

    #[test]
    fn default_rtpg_is_one_preferred_active_group_of_the_asking_port() {
        let d = PortState::default().report(&nexus(), false);
        assert_eq!(
            d,
            vec![0, 0, 0, 12, 0x80, 0x8f, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1]
        );
    }

    #[test]
    fn rtpg_reports_every_group_with_its_state() {
        let st = PortState::default();
        let changed = st
            .set(Paths {
                local_tpg: 2,
                groups: vec![
                    group(3, AccessState::Transitioning),
                    group(1, AccessState::ActiveOptimized),
                    Group {
                        tpg: 2,
                        relative_port: 7,
                        state: AccessState::Standby,
                    },
                ],
            })
            .unwrap();
        assert!(changed);
        assert_eq!(st.local(), AccessState::Standby);
        for extended in [false, true] {
            let d = st.report(&nexus(), extended);
            let h = if extended { 8 } else { 4 };
            assert_eq!(d.len(), h + 3 * 12);
            assert_eq!(
                u32::from_be_bytes([d[0], d[1], d[2], d[3]]) as usize,
                d.len() - 4
            );
            if extended {
                assert_eq!(&d[4..8], &[0x10, 0, 0, 0]);
            }
            // Sorted by group id; PREF off; supported states as before;
            // one port each.
            let expect: [(u8, u16, u16); 3] = [(0x0, 1, 1), (0x2, 2, 7), (0xf, 3, 3)];
            for (i, (state, tpg, port)) in expect.into_iter().enumerate() {
                let g = &d[h + 12 * i..h + 12 * (i + 1)];
                assert_eq!(g[0], state, "group {i}");
                assert_eq!(g[1], 0x8f);
                assert_eq!(u16::from_be_bytes([g[2], g[3]]), tpg);
                assert_eq!(g[7], 1);
                assert_eq!(u16::from_be_bytes([g[10], g[11]]), port);
            }
        }
    }

    #[test]
    fn paths_are_validated() {
        let st = PortState::default();
        let ao = AccessState::ActiveOptimized;
        let bad = [
            (
                Paths {
                    local_tpg: 1,
                    groups: vec![],
                },
                PathsError::Empty,
            ),
            (
                Paths {
                    local_tpg: 9,
                    groups: vec![group(1, ao)],
                },
                PathsError::NoLocalGroup(9),
            ),
            (
                Paths {
                    local_tpg: 1,
                    groups: vec![group(1, ao), group(1, ao)],
                },
                PathsError::DuplicateGroup(1),
            ),
            (
                Paths {
                    local_tpg: 1,
                    groups: vec![
                        group(1, ao),
                        Group {
                            tpg: 2,
                            relative_port: 1,
                            state: ao,
                        },
                    ],
                },
                PathsError::DuplicateRelativePort(1),
            ),
            (
                Paths {
                    local_tpg: 1,
                    groups: vec![Group {
                        tpg: 1,
                        relative_port: 0,
                        state: ao,
                    }],
                },
                PathsError::ZeroRelativePort(1),
            ),
        ];
        for (p, e) in bad {
            assert_eq!(st.set(p), Err(e));
        }
        assert_eq!(st.paths(), None);
        // The default, made explicit, is no change.
        let single = Paths {
            local_tpg: 1,
            groups: vec![group(1, ao)],
        };
        assert_eq!(st.set(single.clone()), Ok(false));
        assert_eq!(st.set(single.clone()), Ok(false));
        let mut two = single.clone();
        two.groups.push(group(2, AccessState::Standby));
        assert_eq!(st.set(two.clone()), Ok(true));
        assert_eq!(st.set(two), Ok(false));
        assert_eq!(st.set(single), Ok(true));
    }

    #[test]
    fn command_tables_per_state() {
        let io = BlockIo {
            lba: 0,
            blocks: 1,
            dpo: false,
            fua: false,
        };
        let inquiry = Cdb::Inquiry {
            evpd: false,
            page: 0,
            alloc_len: 36,
        };
        let report_luns = Cdb::ReportLuns {
            select: 0,
            alloc_len: 16,
        };
        let rtpg = Cdb::ReportTargetPortGroups {
            extended: false,
            alloc_len: 64,
        };
        let request_sense = Cdb::RequestSense {
            desc: false,
            alloc_len: 18,
        };
        let rsoc = Cdb::ReportSupportedOpcodes {
            rctd: false,
            options: 0,
            opcode: 0,
            service_action: 0,
            alloc_len: 512,
        };
        let mode_sense = Cdb::ModeSense {
            dbd: false,
            llbaa: false,
            pc: 0,
            page: 0x3f,
            subpage: 0,
            alloc_len: 255,
            ten: false,
        };
        let mode_select = Cdb::ModeSelect {
            pf: true,
            sp: false,
            param_len: 0,
            ten: false,
        };
        let pr_in = Cdb::PersistentReserveIn {
            service_action: 0,
            alloc_len: 64,
        };
        let pr_out = Cdb::PersistentReserveOut {
            service_action: 0,
            scope: 0,
            pr_type: 0,
            param_len: 24,
        };
        let refused_everywhere = [
            Cdb::Read(io, Width::W10),
            Cdb::Write(io, Width::W10),
            Cdb::TestUnitReady,
            Cdb::SynchronizeCache { lba: 0, blocks: 0 },
            Cdb::CompareAndWrite(io),
            Cdb::Reserve,
            Cdb::Release,
            Cdb::StartStopUnit {
                start: true,
                loej: false,
                power_condition: 0,
            },
            Cdb::ExtendedCopy { param_len: 0 },
        ];
        let always = [inquiry, report_luns, rtpg, request_sense];
        let sb_un = [rsoc, mode_sense, mode_select];
        let standby_only = [
            pr_in,
            pr_out,
            Cdb::ReadCapacity10,
            Cdb::ReadCapacity16 { alloc_len: 32 },
        ];
        let refused = |s: AccessState, c: &Cdb| refusal(s, c).map(|x| (x.key, x.code()));
        for s in [
            AccessState::ActiveOptimized,
            AccessState::ActiveNonOptimized,
        ] {
            for c in always
                .iter()
                .chain(&sb_un)
                .chain(&standby_only)
                .chain(&refused_everywhere)
            {
                assert_eq!(refused(s, c), None, "{s:?} {c:?}");
            }
        }
        let table = [
            (AccessState::Standby, (0x04, 0x0b), true, true),
            (AccessState::Unavailable, (0x04, 0x0c), true, false),
            (AccessState::Transitioning, (0x04, 0x0a), false, false),
        ];
        for (s, code, serves_sb_un, serves_standby_only) in table {
            let no = Some((key::NOT_READY, code));
            for c in &always {
                assert_eq!(refused(s, c), None, "{s:?} {c:?}");
            }
            for c in &sb_un {
                assert_eq!(
                    refused(s, c),
                    if serves_sb_un { None } else { no },
                    "{s:?} {c:?}"
                );
            }
            for c in &standby_only {
                assert_eq!(
                    refused(s, c),
                    if serves_standby_only { None } else { no },
                    "{s:?} {c:?}"
                );
            }
            for c in &refused_everywhere {
                assert_eq!(refused(s, c), no, "{s:?} {c:?}");
            }
        }
    }

    #[test]
    fn state_codes_round_trip() {
        for s in [
            AccessState::ActiveOptimized,
            AccessState::ActiveNonOptimized,
            AccessState::Standby,
            AccessState::Unavailable,
            AccessState::Transitioning,
        ] {
            assert_eq!(AccessState::from_code(s.code()), Some(s));
            assert_eq!(s.is_active(), s.not_ready().is_none());
        }
        assert_eq!(AccessState::from_code(0xe), None);
    }
}
