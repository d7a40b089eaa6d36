//! The manager: the live state of the node — the catalog, the open vPools,
//! each VM's iSCSI target and each vDisk's logical unit — and every
//! management operation on them (the REST API and the configuration
//! bootstrap both go through here).
//!
//! Layout (each child adds `impl Manager` blocks; a child uses only the
//! ones listed before it):
//! - this file: the shared live state ([`Manager`], `State`, `LiveDisk`)
//!   and small helpers;
//! - `vpool`: vPools (engine configuration, create/list/show/delete);
//! - `vm`: VMs and their targets;
//! - `bootstrap`: opening the node from the catalog, attaching a vDisk to
//!   its LUN, shutdown;
//! - `cluster`: a clustered router's part — applying the cluster feed,
//!   making live state match it (which vDisks this router serves, which it
//!   only shows as standby), ownership claims;
//! - `vdisk`: vDisks (create, clone, resize, template, delete);
//! - `snapshot`: snapshots and rollback;
//! - `declared`: the VMs and disks the configuration file declares;
//! - `stats`: sampling pool and session numbers into the metrics.
//!
//! Invariants:
//! - every operation runs under one lock (`state`), so operations are
//!   serialised and the catalog, the engine and the target registry change
//!   together; no `.await` happens under it (callers on the runtime use
//!   `spawn_blocking`, since engine calls block);
//! - persisted records change only through the [`Catalog`]'s methods;
//! - storage is created before the catalog names it, and the catalog entry
//!   is removed before storage is destroyed;
//! - a VM's target is `iqn.2026-11.io.depot:<vm>`, its vDisks are LUNs in
//!   creation order from 0, and a LUN number is never reused within a VM;
//! - a vDisk's identity (VPD serial, NAA) is fixed at creation and kept in
//!   the catalog.

mod bootstrap;
mod cluster;
mod declared;
mod mirror;
mod move_target;
mod moves;
mod peer_ops;
mod snapshot;
mod stats;
mod vdisk;
mod vm;
mod vpool;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use depot_block::FileDevice;
use depot_engine::{VPool, Volume};
use depot_iscsi_target::TargetRegistry;
use depot_scsi::{LogicalUnit, Registry, ScsiTarget};
use tokio::runtime::Handle;

use crate::catalog::Catalog;
use crate::cluster::Node;
use crate::cluster::device::Routed;
use crate::cluster::reservations::EtcdReservations;
use crate::error::{DepotError, DepotResult};
use crate::metered::MeteredDevice;
use crate::metrics::Metrics;
use crate::model::IQN_PREFIX;

pub use bootstrap::ClusterStart;
pub use declared::{DeclaredDisk, DeclaredVm};

/// A vDisk on its LUN.
struct LiveDisk {
    /// Its VM.
    vm: String,
    /// Its LUN in the VM's target.
    lun: u64,
    metered: Arc<MeteredDevice>,
    lu: Arc<LogicalUnit>,
    /// The engine volume, while this router serves it.
    volume: Option<Arc<Volume>>,
    /// The raw image, while this router serves it.
    raw: Option<Arc<FileDevice>>,
    /// In a cluster: the switchable device under the LUN (owner's device or
    /// standby) and this router's ownership generation while it owns it.
    routed: Option<Arc<Routed>>,
    /// The generation this router serves the vDisk under (cluster only).
    generation: Option<u64>,
    /// Its persistent reservations in etcd (cluster only).
    reservations: Option<Arc<EtcdReservations>>,
}

impl LiveDisk {
    /// Its current size in bytes.
    fn size_bytes(&self) -> u64 {
        use depot_block::BlockDevice;
        self.metered.num_blocks() * u64::from(self.metered.block_size())
    }
}

/// Everything the lock guards.
struct State {
    catalog: Catalog,
    pools: HashMap<String, Arc<VPool>>,
    scsi: HashMap<String, Arc<ScsiTarget>>,
    disks: HashMap<String, LiveDisk>,
}

/// The node's management core.
pub struct Manager {
    data_dir: PathBuf,
    /// This router's membership in a cluster (`None`: standalone).
    cluster: Option<Arc<Node>>,
    rt: Handle,
    state: Mutex<State>,
    targets: Arc<TargetRegistry>,
    scsi_registry: Arc<Registry>,
    metrics: Arc<Metrics>,
    /// vDisks with a move under way on this router.
    moves: parking_lot::Mutex<std::collections::HashSet<String>>,
    /// Imports prepared here for moves in (target side).
    imports: parking_lot::Mutex<move_target::Imports>,
    /// Mirror clients of the vDisks served here, copies held for others.
    mirrors: parking_lot::Mutex<mirror::Mirrors>,
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager")
            .field("data_dir", &self.data_dir)
            .finish()
    }
}

/// Name of the vPool `depot serve` creates on an empty node.
pub const DEFAULT_VPOOL: &str = "default";

fn target_name(vm: &str) -> String {
    format!("{IQN_PREFIX}{vm}")
}

fn not_found(kind: &'static str, name: &str) -> DepotError {
    DepotError::NotFound {
        kind,
        name: name.to_string(),
    }
}

fn bad(e: impl std::fmt::Display) -> DepotError {
    DepotError::BadRequest(e.to_string())
}

/// Splits `VDISK@SNAPSHOT`.
pub fn split_snapshot_ref(s: &str) -> DepotResult<(&str, &str)> {
    match s.split_once('@') {
        Some((d, snap)) if !d.is_empty() && !snap.is_empty() => Ok((d, snap)),
        _ => Err(bad(format!("{s:?} is not VDISK@SNAPSHOT"))),
    }
}

impl Manager {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock is a bug; keep serving with the
        // state as it is rather than poisoning every later call.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The target registry (for sessions).
    pub fn targets(&self) -> &Arc<TargetRegistry> {
        &self.targets
    }

    /// Refuses `what` while `vm`'s target has logged-in sessions.
    fn refuse_if_logged_in(&self, vm: &str, what: &str) -> DepotResult<()> {
        let sessions = self.targets.session_count(&target_name(vm));
        if sessions > 0 {
            return Err(DepotError::InUse(format!(
                "{what}: VM {vm:?} has {sessions} logged-in iSCSI session(s); log them out first"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
