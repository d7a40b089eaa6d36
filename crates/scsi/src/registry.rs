//! Process-wide registry of logical units by NAA designator.
//!
//! EXTENDED COPY names its source and destination by the designators the
//! initiator read from VPD page 0x83; the copy manager resolves them here.
//! The registry sees a logical unit only through [`CopyTarget`], the
//! narrow view the copy manager needs (geometry, write protection, reads
//! and writes under the unit's rules), so neither it nor the copy manager
//! depends on the logical unit's type.
//!
//! Invariant: the registry holds only `Weak` references, so it never keeps
//! a logical unit (and its device) alive; dead entries are pruned on
//! registration.

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use depot_block::BlockResult;
use parking_lot::Mutex;

/// What EXTENDED COPY needs of a logical unit it copies from or to.
pub(crate) trait CopyTarget: Send + Sync {
    /// Logical block size in bytes.
    fn block_size(&self) -> u32;
    /// Capacity in logical blocks.
    fn num_blocks(&self) -> u64;
    /// Whether writes are refused (configuration or software write
    /// protect).
    fn write_protected(&self) -> bool;
    /// Whether the unit's data is reachable through this router (its
    /// local port is active); a copy naming an inaccessible unit is
    /// refused as if the unit were not there.
    fn accessible(&self) -> bool {
        true
    }
    /// Reads whole blocks at `lba` into `buf`.
    fn read_blocks(&self, lba: u64, buf: &mut [u8]) -> BlockResult<()>;
    /// Writes whole blocks at `lba` as a WRITE command would: holding the
    /// range's stripe locks shared, with FUA when the write cache is
    /// disabled.
    fn write_blocks(&self, lba: u64, data: &[u8]) -> BlockResult<()>;
}

/// Resolves NAA designators to live logical units.
#[derive(Debug, Default)]
pub struct Registry {
    units: Mutex<HashMap<[u8; 16], Weak<dyn CopyTarget>>>,
}

impl Registry {
    /// An empty registry, shared by every target of the process.
    pub fn new() -> Arc<Registry> {
        Arc::new(Registry::default())
    }

    /// Registers `unit` under its NAA designator (replacing a dead or
    /// older entry).
    pub(crate) fn register<T: CopyTarget + 'static>(&self, naa: [u8; 16], unit: &Arc<T>) {
        let weak: Weak<T> = Arc::downgrade(unit);
        let mut units = self.units.lock();
        units.retain(|_, w| w.strong_count() > 0);
        units.insert(naa, weak as Weak<dyn CopyTarget>);
    }

    /// The live logical unit whose 16-byte NAA designator is `naa`.
    pub(crate) fn lookup(&self, naa: &[u8]) -> Option<Arc<dyn CopyTarget>> {
        let key: [u8; 16] = naa.try_into().ok()?;
        self.units.lock().get(&key).and_then(Weak::upgrade)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Unit;

    impl CopyTarget for Unit {
        fn block_size(&self) -> u32 {
            512
        }
        fn num_blocks(&self) -> u64 {
            8
        }
        fn write_protected(&self) -> bool {
            false
        }
        fn read_blocks(&self, _lba: u64, _buf: &mut [u8]) -> BlockResult<()> {
            Ok(())
        }
        fn write_blocks(&self, _lba: u64, _data: &[u8]) -> BlockResult<()> {
            Ok(())
        }
    }

    #[test]
    fn lookup_finds_live_units_only_and_registration_prunes_the_dead() {
        let r = Registry::new();
        let a = Arc::new(Unit);
        r.register([1; 16], &a);
        assert!(r.lookup(&[1; 16]).is_some_and(|u| u.num_blocks() == 8));
        assert!(r.lookup(&[2; 16]).is_none());
        // Not a 16-byte designator.
        assert!(r.lookup(&[1; 8]).is_none());
        drop(a);
        assert!(r.lookup(&[1; 16]).is_none());
        let b = Arc::new(Unit);
        r.register([2; 16], &b);
        assert_eq!(r.units.lock().len(), 1);
    }
}
