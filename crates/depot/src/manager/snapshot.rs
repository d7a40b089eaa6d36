//! Snapshots of engine vDisks: create, list, delete, rollback.
//!
//! Invariants: only engine vDisks that are online have snapshots here;
//! names starting with `@` are the engine's own and never listed; a
//! snapshot with clones is not deleted, and a vDisk is not rolled back
//! while its VM is logged in.

use depot_engine::SnapshotInfo;
use depot_engine::name::check_name;

use super::{Manager, bad};
use crate::error::{DepotError, DepotResult};
use crate::model::SnapshotView;

fn snapshot_view(s: SnapshotInfo) -> SnapshotView {
    SnapshotView {
        name: s.name,
        created_unix: s.created_unix,
        on_backend: s.on_backend,
        clones: s.clones,
    }
}

impl Manager {
    /// Creates a snapshot.
    pub fn create_snapshot(&self, vdisk: &str, name: Option<String>) -> DepotResult<SnapshotView> {
        let st = self.lock();
        let v = self.engine_volume(&st, vdisk)?;
        let name = name.unwrap_or_else(|| {
            format!(
                "snap-{}",
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs())
            )
        });
        check_name("snapshot", &name).map_err(bad)?;
        let s = v.create_snapshot(&name)?;
        tracing::info!(vdisk, snapshot = %name, "snapshot created");
        Ok(snapshot_view(s))
    }

    /// Lists a vDisk's snapshots, oldest first (internal ones hidden).
    pub fn list_snapshots(&self, vdisk: &str) -> DepotResult<Vec<SnapshotView>> {
        let st = self.lock();
        let v = self.engine_volume(&st, vdisk)?;
        Ok(v.list_snapshots()
            .into_iter()
            .filter(|s| !s.name.starts_with('@'))
            .map(snapshot_view)
            .collect())
    }

    /// Deletes a snapshot; refused while clones depend on it.
    pub fn delete_snapshot(&self, vdisk: &str, snap: &str) -> DepotResult<()> {
        let st = self.lock();
        let v = self.engine_volume(&st, vdisk)?;
        if let Some(s) = v.list_snapshots().iter().find(|s| s.name == snap)
            && s.clones > 0
        {
            return Err(DepotError::InUse(format!(
                "snapshot {vdisk}@{snap} has {} clone(s); delete them first",
                s.clones
            )));
        }
        v.delete_snapshot(snap)?;
        tracing::info!(vdisk, snapshot = snap, "snapshot deleted");
        Ok(())
    }

    /// Rolls a vDisk back to a snapshot; refused while its VM is logged in
    /// (the data would change under the initiator's cache).
    pub fn rollback(&self, vdisk: &str, snap: &str) -> DepotResult<()> {
        let st = self.lock();
        let v = self.engine_volume(&st, vdisk)?;
        let vm = st
            .catalog
            .vdisk(vdisk)
            .map(|d| d.info.vm.clone())
            .unwrap_or_default();
        self.refuse_if_logged_in(&vm, &format!("rolling back {vdisk:?}"))?;
        v.rollback(snap)?;
        tracing::info!(vm = %vm, vdisk, snapshot = snap, "rolled back");
        Ok(())
    }
}
