//! Unit attention conditions, queued per I_T nexus (SAM-5 5.14).
//!
//! Also owns [`ItNexus`], the identity of an I_T nexus as reservations and
//! unit attentions see it: initiator port (name + ISID) and target port
//! (name + TPGT). iSCSI names compare case-insensitively (they are
//! normalized to lower case).
//!
//! Invariants: each nexus queue holds at most [`MAX_QUEUED`] conditions and
//! no duplicates; a condition is reported once and then cleared; the set of
//! known nexuses grows only through commands and shrinks
//! on I_T nexus loss, so memory is bounded by the live nexuses.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::Nexus;
use crate::cdb::op;
use crate::sense::{Sense, asc};

/// Most unit attention conditions kept per nexus; the oldest are dropped
/// beyond it (SAM allows reporting only the highest-priority one).
pub const MAX_QUEUED: usize = 8;

/// Identity of an I_T nexus for reservations and unit attentions.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ItNexus {
    /// iSCSI initiator name, lower case.
    pub initiator_name: String,
    /// Initiator session id.
    pub isid: [u8; 6],
    /// iSCSI target name, lower case.
    pub target_name: String,
    /// Target portal group tag.
    pub tpgt: u16,
}

impl ItNexus {
    /// The identity of `nexus`.
    pub fn of(nexus: &Nexus) -> ItNexus {
        ItNexus {
            initiator_name: nexus.initiator_name.to_ascii_lowercase(),
            isid: nexus.isid,
            target_name: nexus.target_name.to_ascii_lowercase(),
            tpgt: nexus.tpgt,
        }
    }

    /// SCSI initiator port name as used in TransportIDs:
    /// `<name>,i,0x<isid>`.
    pub fn initiator_port(&self) -> String {
        let mut s = format!("{},i,0x", self.initiator_name);
        for b in self.isid {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }
}

/// Whether a command with operation code `opcode` is exempt from being
/// answered with a pending unit attention (SAM-5 5.14: INQUIRY, REPORT
/// LUNS and REQUEST SENSE), whether or not its CDB decodes.
pub fn exempt(opcode: Option<u8>) -> bool {
    matches!(
        opcode,
        Some(op::INQUIRY | op::REPORT_LUNS | op::REQUEST_SENSE)
    )
}

/// Per-nexus unit attention queues of one logical unit (or target).
///
/// Keyed by the transport's [`Nexus`] value, so the per-command check
/// neither allocates nor hashes more than once.
#[derive(Debug, Default)]
pub struct UnitAttentions {
    queues: Mutex<HashMap<Nexus, VecDeque<asc::Code>>>,
    /// Number of queued conditions over all nexuses: lets the hot path skip
    /// popping when nothing is pending.
    pending: AtomicUsize,
}

impl UnitAttentions {
    /// Per-command entry point: records that `nexus` talks to us (so
    /// broadcast conditions reach it) and, if `report`, takes its oldest
    /// pending condition.
    pub fn on_command(&self, nexus: &Nexus, report: bool) -> Option<Sense> {
        let mut q = self.queues.lock();
        let queue = match q.get_mut(nexus) {
            Some(queue) => queue,
            None => q.entry(nexus.clone()).or_default(),
        };
        if !report || self.pending.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let code = queue.pop_front()?;
        self.pending.fetch_sub(1, Ordering::Relaxed);
        Some(Sense::unit_attention(code))
    }

    /// True when `nexus` is already known and has nothing pending: a
    /// command from it may skip [`on_command`](Self::on_command) without
    /// changing what it or anybody else would see.
    pub fn is_quiet(&self, nexus: &Nexus) -> bool {
        let q = self.queues.lock();
        match q.get(nexus) {
            Some(queue) => queue.is_empty(),
            None => false,
        }
    }

    /// Queues `code` for every known nexus `select` accepts.
    pub fn post_where(&self, code: asc::Code, mut select: impl FnMut(&Nexus) -> bool) {
        let mut q = self.queues.lock();
        for (nexus, queue) in q.iter_mut() {
            if select(nexus) {
                push_counted(&self.pending, queue, code);
            }
        }
    }

    /// Queues `code` for every known nexus.
    pub fn post_all(&self, code: asc::Code) {
        self.post_where(code, |_| true);
    }

    /// Queues `code` for the known nexuses with I_T identity `it`.
    pub fn post_it(&self, it: &ItNexus, code: asc::Code) {
        self.post_where(code, |n| ItNexus::of(n) == *it);
    }

    /// Removes a specific pending condition (REPORT LUNS clears 3F/0E).
    pub fn clear(&self, nexus: &Nexus, code: asc::Code) {
        if self.pending.load(Ordering::Relaxed) == 0 {
            return;
        }
        let mut q = self.queues.lock();
        if let Some(queue) = q.get_mut(nexus) {
            let before = queue.len();
            queue.retain(|c| *c != code);
            self.pending
                .fetch_sub(before - queue.len(), Ordering::Relaxed);
        }
    }

    /// Forgets a nexus (I_T nexus loss): its queue goes away.
    pub fn forget(&self, nexus: &Nexus) {
        let mut q = self.queues.lock();
        if let Some(queue) = q.remove(nexus) {
            self.pending.fetch_sub(queue.len(), Ordering::Relaxed);
        }
    }
}

fn push_counted(pending: &AtomicUsize, queue: &mut VecDeque<asc::Code>, code: asc::Code) {
    if queue.contains(&code) {
        return;
    }
    if queue.len() >= MAX_QUEUED {
        queue.pop_front();
    } else {
        pending.fetch_add(1, Ordering::Relaxed);
    }
    queue.push_back(code);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nx(n: u8) -> Nexus {
        Nexus {
            initiator_name: format!("iqn.x:{n}"),
            isid: [n; 6],
            target_name: "iqn.t".into(),
            tpgt: 1,
            relative_port_id: 1,
        }
    }

    #[test]
    fn queue_report_and_clear() {
        let ua = UnitAttentions::default();
        assert!(ua.on_command(&nx(1), true).is_none());
        assert!(ua.on_command(&nx(2), true).is_none());
        ua.post_where(asc::BUS_DEVICE_RESET, |n| *n != nx(2));
        ua.post_all(asc::BUS_DEVICE_RESET);
        // Not reported to exempt commands, but still pending.
        assert!(ua.on_command(&nx(1), false).is_none());
        assert_eq!(
            ua.on_command(&nx(1), true).unwrap().code(),
            asc::BUS_DEVICE_RESET
        );
        assert!(ua.on_command(&nx(1), true).is_none());
        ua.post_it(&ItNexus::of(&nx(2)), asc::CAPACITY_DATA_CHANGED);
        ua.clear(&nx(2), asc::BUS_DEVICE_RESET);
        assert_eq!(
            ua.on_command(&nx(2), true).unwrap().code(),
            asc::CAPACITY_DATA_CHANGED
        );
        assert_eq!(ua.pending.load(Ordering::Relaxed), 0);
        ua.on_command(&nx(3), false);
        for i in 0..20 {
            ua.post_all((0x2a, i));
        }
        assert_eq!(ua.pending.load(Ordering::Relaxed), 3 * MAX_QUEUED);
        ua.forget(&nx(3));
        assert_eq!(ua.pending.load(Ordering::Relaxed), 2 * MAX_QUEUED);
        assert!(!ua.queues.lock().contains_key(&nx(3)));
    }
}
