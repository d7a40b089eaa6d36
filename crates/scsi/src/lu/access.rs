//! The logical unit's side of ALUA: the path state the daemon sets
//! ([`LogicalUnit::set_paths`]), what the command path reads of it, and
//! the unit attention a change raises.
//!
//! Invariants:
//! - Without a `set_paths` call the unit behaves as a single router's
//!   always did: one active/optimized group (the port a command came
//!   through).
//! - The command path reads the local state with one atomic load
//!   ([`LogicalUnit::access_state`]); a state change never blocks it.
//! - Every change of a group's state (or of the set of groups) establishes
//!   ASYMMETRIC ACCESS STATE CHANGED (2A/06) for every nexus the unit
//!   knows; setting the same paths again establishes nothing.
//! - A non-active unit never touches its device's data path: the command
//!   tables (`alua::refusal`) refuse media commands, and as an EXTENDED
//!   COPY source or destination it is unreachable.

use super::LogicalUnit;
use crate::alua::{AccessState, Paths, PathsError};
use crate::sense::asc;

impl LogicalUnit {
    /// Sets the target port groups this unit is reachable through and
    /// their states (the daemon calls it when ownership or membership
    /// changes). Establishes ASYMMETRIC ACCESS STATE CHANGED for every
    /// nexus of the unit when a state changed. Refuses (and changes
    /// nothing) a table that lacks the local group or repeats a group or
    /// relative port.
    pub fn set_paths(&self, paths: Paths) -> Result<(), PathsError> {
        if self.ports.set(paths)? {
            self.ua.post_all(asc::ASYMMETRIC_ACCESS_STATE_CHANGED);
        }
        Ok(())
    }

    /// The paths set last, groups sorted by id (`None`: never set, one
    /// active/optimized group).
    pub fn paths(&self) -> Option<Paths> {
        self.ports.paths()
    }

    /// The state of this router's group for this unit (one atomic load).
    pub fn access_state(&self) -> AccessState {
        self.ports.local()
    }
}
