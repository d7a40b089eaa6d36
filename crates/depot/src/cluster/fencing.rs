//! The engine's fencing hook for a clustered vDisk: what stands between a
//! deposed owner and the backend.
//!
//! The engine calls [`VdiskFencing::check`] before it publishes a manifest
//! and before it deletes objects (never per write). It passes only while
//! this router's fence is open (its lease could not have lapsed) and, on a
//! backend that ignores conditional PUTs, while etcd still names this
//! router as the owner under the generation the volume was opened with.
//! On a backend that honours conditions the manifest PUT is conditional on
//! the e-tag this owner last saw, so the store itself refuses a deposed
//! owner and the etcd round trip is not needed.

use std::sync::Arc;

use depot_cluster::{ClusterError, owner};
use depot_engine::{FenceError, Fencing, FencingMode};

use super::Node;

/// One vDisk's ownership as the engine sees it.
pub struct VdiskFencing {
    node: Arc<Node>,
    vdisk: String,
    generation: u64,
    mode: FencingMode,
}

impl VdiskFencing {
    /// The hook of `vdisk`, owned by this router under `generation`, on a
    /// vPool fencing in `mode`.
    pub fn new(node: Arc<Node>, vdisk: &str, generation: u64, mode: FencingMode) -> Arc<Self> {
        Arc::new(VdiskFencing {
            node,
            vdisk: vdisk.to_string(),
            generation,
            mode,
        })
    }
}

impl Fencing for VdiskFencing {
    fn generation(&self) -> u64 {
        self.generation
    }

    fn check(&self) -> Result<(), FenceError> {
        let lapsed = || FenceError::Lost("this router's cluster lease lapsed".into());
        if !self.node.fence().is_open() {
            return Err(lapsed());
        }
        if self.mode == FencingMode::Conditional {
            return Ok(());
        }
        let store = self.node.store().clone();
        let (vdisk, me, g) = (
            self.vdisk.clone(),
            self.node.name().to_string(),
            self.generation,
        );
        self.node
            .block_on(async move { owner::validate(&store, &vdisk, &me, g).await })
            .map_err(|e| match e {
                // etcd names another owner, or none.
                ClusterError::Fenced(why) => FenceError::Lost(why),
                // etcd cannot be asked: nothing is known to have changed
                // (the fence below still closes when the lease lapses).
                other => FenceError::Unknown(other.to_string()),
            })?;
        // The answer may have taken a while: the lease must still hold.
        if self.node.fence().is_open() {
            Ok(())
        } else {
            Err(lapsed())
        }
    }
}
