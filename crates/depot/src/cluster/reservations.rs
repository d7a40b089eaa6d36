//! Persistent reservations of a clustered vDisk, kept in etcd
//! (`<prefix>/pr/<vdisk>`, the `PrState` JSON) so every router's logical
//! unit for the vDisk agrees: registrations made through any router's
//! port, the reservation, PRGENERATION.
//!
//! A PERSISTENT RESERVE OUT on any router loads the current state (a
//! linearizable read that remembers the key's revision), applies, and saves
//! with a compare-and-swap on that revision; a lost race is `Conflict` and
//! the logical unit applies again on the fresh state. Every router's unit
//! gets the states other routers commit through the cluster feed
//! ([`EtcdReservations::newer`] keeps an older state from rolling a unit
//! back).

use std::sync::Arc;

use depot_cluster::keys::kind;
use depot_cluster::{Committed, Guard, Op, Txn};
use depot_scsi::{PrState, ReservationStore, StoreError};
use parking_lot::Mutex;

use super::Node;

/// One vDisk's reservation state in etcd.
pub struct EtcdReservations {
    node: Arc<Node>,
    key: String,
    /// Revision of the state last loaded or saved (0: absent).
    revision: Mutex<i64>,
}

impl EtcdReservations {
    /// The store of vDisk `vdisk`.
    pub fn new(node: Arc<Node>, vdisk: &str) -> Arc<Self> {
        let key = node.store().keys().key(kind::PR, vdisk);
        Arc::new(EtcdReservations {
            node,
            key,
            revision: Mutex::new(0),
        })
    }

    /// Whether a state committed at `revision` is newer than what this
    /// store last loaded or saved (then the unit should take it). Ask it
    /// under the unit's PR serialization
    /// (`LogicalUnit::replace_reservations_if`), where loads and saves
    /// happen.
    pub fn newer(&self, revision: i64) -> bool {
        let mut r = self.revision.lock();
        if revision > *r {
            *r = revision;
            true
        } else {
            false
        }
    }
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

impl ReservationStore for EtcdReservations {
    fn load(&self) -> Result<PrState, StoreError> {
        let store = self.node.store().clone();
        let key = self.key.clone();
        let got = self
            .node
            .block_on(async move { store.get(&key).await })
            .map_err(unavailable)?;
        match got {
            None => {
                *self.revision.lock() = 0;
                Ok(PrState::default())
            }
            Some(v) => {
                let state = v
                    .json::<PrState>()
                    .map_err(|e| StoreError::Io(e.to_string()))?;
                *self.revision.lock() = v.mod_revision;
                Ok(state)
            }
        }
    }

    fn save(&self, state: &PrState) -> Result<(), StoreError> {
        let rev = *self.revision.lock();
        let guard = if rev == 0 {
            Guard::Absent(self.key.clone())
        } else {
            Guard::Revision(self.key.clone(), rev)
        };
        let body = serde_json::to_vec(state).map_err(|e| StoreError::Io(e.to_string()))?;
        let txn = Txn::new().guard(guard).op(Op::Put(self.key.clone(), body));
        let store = self.node.store().clone();
        let done = self
            .node
            .block_on(async move { store.commit(txn).await })
            .map_err(unavailable)?;
        match done {
            Committed::Applied(r) => {
                *self.revision.lock() = r;
                Ok(())
            }
            Committed::Refused => Err(StoreError::Conflict),
        }
    }
}
