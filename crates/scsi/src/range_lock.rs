//! Striped LBA range locks: COMPARE AND WRITE / ORWRITE atomicity.
//!
//! The LBA space is cut into stripes of [`STRIPE_BLOCKS`] blocks, hashed
//! onto [`STRIPES`] reader-writer locks. Every command that writes the
//! medium holds the locks of the stripes it touches *shared*; read-modify-
//! write commands (COMPARE AND WRITE, ORWRITE) hold theirs *exclusive*, so
//! no other write to those blocks can land between their read and their
//! write. Plain writes never wait for each other.
//!
//! Invariants: a command takes each lock at most once and always in
//! ascending index order (no deadlock between commands); guards are held
//! only across the device calls of one command.

use parking_lot::{RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Number of lock stripes (one bit each in a `u64` mask).
pub const STRIPES: usize = 64;
/// Logical blocks per stripe.
pub const STRIPE_BLOCKS: u64 = 256;

/// The lock table of one logical unit.
#[derive(Debug)]
pub struct RangeLocks {
    stripes: [RwLock<()>; STRIPES],
}

/// Held shared locks; released on drop.
#[must_use]
pub struct SharedGuard<'a> {
    _guards: Vec<RwLockReadGuard<'a, ()>>,
}

/// Held exclusive locks; released on drop.
#[must_use]
pub struct ExclusiveGuard<'a> {
    _guards: Vec<RwLockWriteGuard<'a, ()>>,
}

impl Default for RangeLocks {
    fn default() -> Self {
        RangeLocks {
            stripes: std::array::from_fn(|_| RwLock::new(())),
        }
    }
}

impl RangeLocks {
    /// Bit mask of the stripes `blocks` blocks at `lba` touch.
    fn mask(lba: u64, blocks: u64) -> u64 {
        if blocks == 0 {
            return 0;
        }
        let first = lba / STRIPE_BLOCKS;
        let last = lba.saturating_add(blocks - 1) / STRIPE_BLOCKS;
        if last - first >= STRIPES as u64 {
            return u64::MAX;
        }
        let mut mask = 0u64;
        let mut s = first;
        loop {
            mask |= 1 << (s % STRIPES as u64);
            if s == last {
                break;
            }
            s += 1;
        }
        mask
    }

    /// Locks the range shared (ordinary writes).
    pub fn shared(&self, lba: u64, blocks: u64) -> SharedGuard<'_> {
        let mask = Self::mask(lba, blocks);
        let mut guards = Vec::with_capacity(mask.count_ones() as usize);
        for (i, stripe) in self.stripes.iter().enumerate() {
            if mask & (1 << i) != 0 {
                guards.push(stripe.read());
            }
        }
        SharedGuard { _guards: guards }
    }

    /// Locks the range shared if no stripe is held exclusive right now;
    /// `None` instead of waiting.
    pub fn try_shared(&self, lba: u64, blocks: u64) -> Option<SharedGuard<'_>> {
        let mask = Self::mask(lba, blocks);
        let mut guards = Vec::with_capacity(mask.count_ones() as usize);
        for (i, stripe) in self.stripes.iter().enumerate() {
            if mask & (1 << i) != 0 {
                guards.push(stripe.try_read()?);
            }
        }
        Some(SharedGuard { _guards: guards })
    }

    /// Locks the range exclusive (read-modify-write commands).
    pub fn exclusive(&self, lba: u64, blocks: u64) -> ExclusiveGuard<'_> {
        let mask = Self::mask(lba, blocks);
        let mut guards = Vec::with_capacity(mask.count_ones() as usize);
        for (i, stripe) in self.stripes.iter().enumerate() {
            if mask & (1 << i) != 0 {
                guards.push(stripe.write());
            }
        }
        ExclusiveGuard { _guards: guards }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks() {
        assert_eq!(RangeLocks::mask(0, 0), 0);
        assert_eq!(RangeLocks::mask(0, 1), 1);
        assert_eq!(RangeLocks::mask(255, 2), 0b11);
        assert_eq!(RangeLocks::mask(STRIPE_BLOCKS * 63, 1), 1 << 63);
        assert_eq!(RangeLocks::mask(STRIPE_BLOCKS * 64, 1), 1);
        assert_eq!(RangeLocks::mask(0, STRIPE_BLOCKS * 100), u64::MAX);
        assert_eq!(
            RangeLocks::mask(u64::MAX - 1, 2),
            1 << ((u64::MAX / STRIPE_BLOCKS) % 64)
        );
    }

    #[test]
    fn exclusive_excludes_shared() {
        let locks = RangeLocks::default();
        let g = locks.exclusive(10, 1);
        assert!(locks.stripes[0].try_read().is_none());
        assert!(locks.stripes[1].try_read().is_some());
        drop(g);
        let _a = locks.shared(0, 10);
        let _b = locks.shared(5, 10);
        assert!(locks.stripes[0].try_write().is_none());
    }
}
