//! Process-wide registry of logical units by NAA designator.
//!
//! EXTENDED COPY names its source and destination by the designators the
//! initiator read from VPD page 0x83; the copy manager resolves them here.
//! Invariant: the registry holds only `Weak` references, so it never keeps
//! a logical unit (and its device) alive; dead entries are pruned on
//! registration.

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use parking_lot::Mutex;

use crate::lu::LogicalUnit;

/// Resolves NAA designators to live logical units.
#[derive(Debug, Default)]
pub struct Registry {
    units: Mutex<HashMap<[u8; 16], Weak<LogicalUnit>>>,
}

impl Registry {
    /// An empty registry, shared by every target of the process.
    pub fn new() -> Arc<Registry> {
        Arc::new(Registry::default())
    }

    /// Registers `lu` under its NAA designator (replacing a dead or older
    /// entry).
    pub(crate) fn register(&self, naa: [u8; 16], lu: &Arc<LogicalUnit>) {
        let mut units = self.units.lock();
        units.retain(|_, w| w.strong_count() > 0);
        units.insert(naa, Arc::downgrade(lu));
    }

    /// The live logical unit whose 16-byte NAA designator is `naa`.
    pub fn lookup(&self, naa: &[u8]) -> Option<Arc<LogicalUnit>> {
        let key: [u8; 16] = naa.try_into().ok()?;
        self.units.lock().get(&key).and_then(Weak::upgrade)
    }
}
