//! Cluster range locks: writers of overlapping clusters of one vDisk take
//! turns, writers of disjoint clusters never wait for each other.
//!
//! A write holds its cluster range from before its read-modify-write edges
//! are read until its data and index entries are in place, so two partial
//! writes of one cluster cannot lose each other's bytes and an in-place
//! rewrite is never interleaved with another write of its slots. Reads that
//! keep failing their checksum while rewrites race them take the range too.
//!
//! The ranges are exact: a 1 MiB write conflicts only with writes that
//! share a cluster with it. (Hashing clusters onto a fixed set of stripe
//! locks made every write of 64 clusters or more take all of them, so large
//! sequential writes queued on 64 mutexes and each release woke a herd.)
//!
//! Invariants: held ranges never overlap. Waiting is first come, first
//! served among overlapping ranges: a lock is granted only if its range
//! overlaps no held range and no range that began waiting before it, so a
//! whole-volume lock (UNMAP of everything) is not starved by a stream of
//! small writes, and [`RangeLocks::try_lock`] never jumps the queue.

use parking_lot::{Condvar, Mutex};

/// The range locks of one vDisk.
#[derive(Debug, Default)]
pub(crate) struct RangeLocks {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct State {
    /// Held ranges, by ticket.
    held: Vec<Range>,
    /// Ranges waiting for a lock, in arrival (ticket) order.
    waiting: Vec<Range>,
    next_ticket: u64,
}

/// Inclusive cluster range with the ticket of its lock.
#[derive(Debug, Clone, Copy)]
struct Range {
    ticket: u64,
    first: u64,
    last: u64,
}

impl Range {
    fn overlaps(&self, first: u64, last: u64) -> bool {
        self.first <= last && first <= self.last
    }
}

/// A held range; released on drop.
#[derive(Debug)]
#[must_use]
pub(crate) struct RangeGuard<'a> {
    locks: &'a RangeLocks,
    ticket: u64,
}

impl State {
    fn ticket(&mut self) -> u64 {
        self.next_ticket += 1;
        self.next_ticket
    }

    /// Whether `first..=last` may be granted to the lock with `ticket`:
    /// nothing held overlaps it, nor anything that waits from before it.
    fn free(&self, ticket: u64, first: u64, last: u64) -> bool {
        !self.held.iter().any(|r| r.overlaps(first, last))
            && !self
                .waiting
                .iter()
                .take_while(|r| r.ticket < ticket)
                .any(|r| r.overlaps(first, last))
    }
}

impl RangeLocks {
    /// Locks clusters `first..=last`, waiting for overlapping holders and
    /// for overlapping waiters that came first.
    pub(crate) fn lock(&self, first: u64, last: u64) -> RangeGuard<'_> {
        let (first, last) = (first.min(last), first.max(last));
        let mut s = self.state.lock();
        let ticket = s.ticket();
        if !s.free(ticket, first, last) {
            let me = Range {
                ticket,
                first,
                last,
            };
            s.waiting.push(me);
            while !s.free(ticket, first, last) {
                self.changed.wait(&mut s);
            }
            s.waiting.retain(|r| r.ticket != ticket);
        }
        s.held.push(Range {
            ticket,
            first,
            last,
        });
        RangeGuard {
            locks: self,
            ticket,
        }
    }

    /// Locks clusters `first..=last` if that needs no waiting.
    pub(crate) fn try_lock(&self, first: u64, last: u64) -> Option<RangeGuard<'_>> {
        let (first, last) = (first.min(last), first.max(last));
        let mut s = self.state.lock();
        let ticket = s.ticket();
        if !s.free(ticket, first, last) {
            return None;
        }
        s.held.push(Range {
            ticket,
            first,
            last,
        });
        Some(RangeGuard {
            locks: self,
            ticket,
        })
    }
}

impl Drop for RangeGuard<'_> {
    fn drop(&mut self) {
        let mut s = self.locks.state.lock();
        if let Some(i) = s.held.iter().position(|r| r.ticket == self.ticket) {
            s.held.swap_remove(i);
        }
        let waiters = !s.waiting.is_empty();
        drop(s);
        if waiters {
            self.locks.changed.notify_all();
        }
    }
}

#[cfg(test)]
// Test cluster numbers below 72.
#[allow(clippy::cast_possible_truncation)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::time::Duration;

    use proptest::prelude::*;

    use super::RangeLocks;

    /// Runs `f` on a thread and reports whether it finished within 50 ms.
    fn finishes_soon(f: impl FnOnce() + Send + 'static) -> (bool, std::thread::JoinHandle<()>) {
        let done = Arc::new(AtomicBool::new(false));
        let d = done.clone();
        let t = std::thread::spawn(move || {
            f();
            d.store(true, Ordering::SeqCst);
        });
        std::thread::sleep(Duration::from_millis(50));
        (done.load(Ordering::SeqCst), t)
    }

    #[test]
    fn disjoint_ranges_do_not_wait_and_overlapping_ones_do() {
        let l = Arc::new(RangeLocks::default());
        let a = l.lock(0, 255);
        let _b = l.lock(256, 511);
        assert!(l.try_lock(512, 512).is_some());
        assert!(l.try_lock(255, 256).is_none());
        assert!(l.try_lock(100, 100).is_none());
        let l2 = l.clone();
        let (done, t) = finishes_soon(move || drop(l2.lock(200, 300)));
        assert!(!done, "an overlapping lock was granted");
        drop(a);
        // Still overlaps `_b`.
        std::thread::sleep(Duration::from_millis(20));
        assert!(!t.is_finished());
        drop(_b);
        t.join().unwrap();
        assert!(l.try_lock(0, u64::MAX).is_some());
    }

    #[test]
    fn a_waiting_range_is_not_starved_by_later_ones() {
        let l = Arc::new(RangeLocks::default());
        let small = l.lock(10, 10);
        let l2 = l.clone();
        let (done, whole) = finishes_soon(move || drop(l2.lock(0, u64::MAX)));
        assert!(!done);
        // A later small writer of other clusters queues behind the whole-
        // volume waiter instead of slipping past it.
        assert!(l.try_lock(20, 20).is_none());
        let l3 = l.clone();
        let (done, later) = finishes_soon(move || drop(l3.lock(30, 30)));
        assert!(!done);
        drop(small);
        whole.join().unwrap();
        later.join().unwrap();
        assert!(l.try_lock(20, 20).is_some());
    }

    #[test]
    fn reversed_bounds_lock_the_same_range() {
        let l = RangeLocks::default();
        let _g = l.lock(9, 3);
        assert!(l.try_lock(5, 5).is_none());
        assert!(l.try_lock(10, 12).is_some());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        /// Threads writing random ranges: no two overlapping ranges are
        /// ever held at once (checked against a shadow map of owners), and
        /// every thread finishes.
        #[test]
        fn overlapping_ranges_are_never_held_together(
            ranges in proptest::collection::vec((0u64..64, 0u64..8), 4..24),
        ) {
            let l = Arc::new(RangeLocks::default());
            let owners: Arc<Vec<AtomicU64>> = Arc::new((0..72).map(|_| AtomicU64::new(0)).collect());
            let threads: Vec<_> = ranges
                .into_iter()
                .enumerate()
                .map(|(i, (first, n))| {
                    let (l, owners) = (l.clone(), owners.clone());
                    std::thread::spawn(move || {
                        let me = i as u64 + 1;
                        for _ in 0..20 {
                            let _g = l.lock(first, first + n);
                            for c in first..=first + n {
                                let prev = owners[c as usize].swap(me, Ordering::SeqCst);
                                assert_eq!(prev, 0, "cluster {c} held twice");
                            }
                            std::thread::yield_now();
                            for c in first..=first + n {
                                owners[c as usize].store(0, Ordering::SeqCst);
                            }
                        }
                    })
                })
                .collect();
            for t in threads {
                prop_assert!(t.join().is_ok());
            }
            let s = l.state.lock();
            prop_assert!(s.held.is_empty() && s.waiting.is_empty());
        }
    }
}
