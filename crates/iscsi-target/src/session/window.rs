//! The CmdSN window and command ordering (RFC 7143 §4.2.2.1, §3.2.2.1).
//!
//! Owns ExpCmdSN, MaxCmdSN and the PDUs that arrived ahead of ExpCmdSN.
//! The session asks [`CmdWindow::contains`] / [`CmdWindow::is_duplicate`]
//! before accepting a non-immediate PDU, hands it to [`CmdWindow::arrive`],
//! and delivers what `arrive` and then [`CmdWindow::next_ready`] return, in
//! that order.
//!
//! Invariants: entries come out strictly in CmdSN order, each CmdSN at most
//! once; ExpCmdSN advances by one per entry delivered; MaxCmdSN never
//! decreases (serial order) and only opens as far as the queue depth minus
//! the live tasks and waiting entries allows (at least one slot); the
//! window holds no more than MaxCmdSN − ExpCmdSN + 1 entries.

use std::collections::BTreeMap;

use depot_iscsi_proto::pdu::Pdu;
use depot_iscsi_proto::serial;

/// A PDU with a CmdSN, waiting for its turn or delivered.
pub(super) enum Pending {
    /// A SCSI command whose task already exists (collecting data).
    Scsi(u32),
    /// Any other PDU.
    Other(Box<Pdu>),
    /// A CmdSN consumed by a rejected PDU or plugged by ABORT TASK.
    Consumed,
}

/// ExpCmdSN, MaxCmdSN and the out-of-order arrivals between them.
pub(super) struct CmdWindow {
    exp: u32,
    max: u32,
    pending: BTreeMap<u32, Pending>,
    queue_depth: u32,
}

impl CmdWindow {
    /// The window a login opens: ExpCmdSN is the login's CmdSN and the
    /// whole queue depth is available.
    pub(super) fn new(cmd_sn: u32, queue_depth: u32) -> Self {
        CmdWindow {
            exp: cmd_sn,
            max: cmd_sn.wrapping_add(queue_depth.max(1) - 1),
            pending: BTreeMap::new(),
            queue_depth,
        }
    }

    /// ExpCmdSN.
    pub(super) fn exp(&self) -> u32 {
        self.exp
    }

    /// MaxCmdSN.
    pub(super) fn max(&self) -> u32 {
        self.max
    }

    /// The queue depth the window is sized by.
    pub(super) fn queue_depth(&self) -> u32 {
        self.queue_depth
    }

    /// Whether `sn` lies in [ExpCmdSN, MaxCmdSN].
    pub(super) fn contains(&self, sn: u32) -> bool {
        serial::in_window(sn, self.exp, self.max)
    }

    /// Whether `sn` already waits in the window.
    pub(super) fn is_duplicate(&self, sn: u32) -> bool {
        sn != self.exp && self.pending.contains_key(&sn)
    }

    /// Places the entry for `sn` (inside the window, not a duplicate):
    /// returns it, with ExpCmdSN advanced past it, when it is next; keeps it
    /// otherwise.
    pub(super) fn arrive(&mut self, sn: u32, entry: Pending) -> Option<Pending> {
        if sn == self.exp {
            self.exp = self.exp.wrapping_add(1);
            Some(entry)
        } else {
            self.pending.insert(sn, entry);
            None
        }
    }

    /// The waiting entry for ExpCmdSN, if it has arrived, with ExpCmdSN
    /// advanced past it.
    pub(super) fn next_ready(&mut self) -> Option<Pending> {
        let next = self.pending.remove(&self.exp)?;
        self.exp = self.exp.wrapping_add(1);
        Some(next)
    }

    /// Marks `sn` (inside the window, not yet received) as received with
    /// nothing to do, as ABORT TASK does for a command still on its way.
    /// Returns whether it is ExpCmdSN, i.e. whether the caller should now
    /// drain [`next_ready`](Self::next_ready).
    pub(super) fn plug(&mut self, sn: u32) -> bool {
        if sn == self.exp {
            self.pending.insert(sn, Pending::Consumed);
            true
        } else {
            self.pending.entry(sn).or_insert(Pending::Consumed);
            false
        }
    }

    /// Recomputes MaxCmdSN for `live_tasks` tasks plus the waiting entries:
    /// it opens as room frees up and never closes below what was granted.
    /// Returns (ExpCmdSN, MaxCmdSN) to publish.
    pub(super) fn update(&mut self, live_tasks: usize) -> (u32, u32) {
        let live = u32::try_from(live_tasks + self.pending.len()).unwrap_or(u32::MAX);
        let room = self.queue_depth.saturating_sub(live).max(1);
        let candidate = self.exp.wrapping_add(room - 1);
        if serial::lt(self.max, candidate) {
            self.max = candidate;
        }
        (self.exp, self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(w: &mut CmdWindow, first: Option<Pending>) -> usize {
        let mut n = usize::from(first.is_some());
        while w.next_ready().is_some() {
            n += 1;
        }
        n
    }

    #[test]
    fn delivers_in_order_and_never_closes() {
        let mut w = CmdWindow::new(10, 4);
        assert_eq!((w.exp(), w.max()), (10, 13));
        assert!(w.arrive(12, Pending::Consumed).is_none());
        assert!(w.arrive(11, Pending::Consumed).is_none());
        assert!(w.is_duplicate(12));
        assert!(!w.contains(14));
        // Two waiting entries and three live tasks: no room, but MaxCmdSN
        // stays where it was.
        assert_eq!(w.update(3), (10, 13));
        let first = w.arrive(10, Pending::Consumed);
        assert_eq!(drain(&mut w, first), 3);
        assert_eq!(w.update(0), (13, 16));
    }

    #[test]
    fn wraps_around_zero() {
        let mut w = CmdWindow::new(u32::MAX, 2);
        assert_eq!(w.max(), 0);
        assert!(w.contains(0) && !w.contains(1));
        let first = w.arrive(u32::MAX, Pending::Consumed);
        assert_eq!(drain(&mut w, first), 1);
        assert_eq!(w.update(0), (0, 1));
    }

    #[test]
    fn plugging_the_next_slot_releases_what_waits_behind_it() {
        let mut w = CmdWindow::new(0, 8);
        assert!(w.arrive(1, Pending::Consumed).is_none());
        assert!(!w.plug(3));
        assert!(w.plug(0));
        assert_eq!(drain(&mut w, None), 2);
        assert_eq!(w.exp(), 2);
    }
}
