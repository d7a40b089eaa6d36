//! The DTL's cluster side: a vDisk's mirror client talks to its holder over
//! the peer connection ([`PeerLink`]) and records the mirror's state in
//! etcd, guarded on its ownership ([`EtcdControl`]); choosing a holder
//! ([`choose_holder`]): another up router, another failure domain first,
//! then the one holding the fewest mirrors.
//!
//! Invariants: a state is recorded only while this router owns the vDisk
//! under the generation the client mirrors (the etcd transaction guards
//! it); every peer call is bounded by [`CALL_TIMEOUT`], so a holder that
//! stalls (SIGSTOP, a dead network) turns the mirror degraded instead of
//! holding the guest's I/O.

use std::sync::Arc;
use std::time::Duration;

use depot_cluster::Ownership;
use depot_dtl::proto::{Commit, Open, Write};
use depot_dtl::{Control, DtlError, DtlResult, Link, MirrorState, RecordError};
use depot_peer::PeerClient;

use super::Node;

/// Longest a DTL call may take before the mirror is declared degraded.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// The holder of a mirror, reached over mutual TLS.
pub struct PeerLink {
    node: Arc<Node>,
    peer: Arc<PeerClient>,
}

impl PeerLink {
    fn call<T: serde::Serialize>(&self, op: &str, msg: &T, body: &[u8]) -> DtlResult<()> {
        let peer = self.peer.clone();
        self.node
            .block_on(async move {
                peer.call::<T, serde_json::Value>(op, msg, body, CALL_TIMEOUT)
                    .await
            })
            .map(|_| ())
            .map_err(|e| DtlError::Peer(e.to_string()))
    }
}

impl Link for PeerLink {
    fn holder(&self) -> &str {
        self.peer.target()
    }
    fn open(&self, o: &Open) -> DtlResult<()> {
        self.call("dtl.open", o, &[])
    }
    fn write(&self, w: &Write, body: &[u8]) -> DtlResult<()> {
        self.call("dtl.write", w, body)
    }
    fn write_many(&self, pieces: Vec<(Write, Vec<u8>)>) -> DtlResult<()> {
        let peer = self.peer.clone();
        self.node.block_on(async move {
            let mut calls = tokio::task::JoinSet::new();
            for (w, body) in pieces {
                let peer = peer.clone();
                calls.spawn(async move {
                    peer.call::<Write, serde_json::Value>("dtl.write", &w, &body, CALL_TIMEOUT)
                        .await
                        .map(|_| ())
                });
            }
            while let Some(r) = calls.join_next().await {
                r.map_err(|e| DtlError::Peer(e.to_string()))?
                    .map_err(|e| DtlError::Peer(e.to_string()))?;
            }
            Ok(())
        })
    }
    fn commit(&self, c: &Commit, body: &[u8]) -> DtlResult<()> {
        self.call("dtl.commit", c, body)
    }
}

/// The router to hold a mirror of a vDisk owned by `me`: up, not `me`,
/// another failure domain than `me`'s first, then the fewest mirrors held;
/// `None` if no other router is up.
pub fn choose_holder(node: &Node) -> Option<String> {
    let v = node.view();
    let me = node.name();
    let my_domain = v.routers.get(me).and_then(|r| r.failure_domain.clone());
    let mut candidates: Vec<(bool, usize, String)> = v
        .routers
        .values()
        .filter(|r| r.name != me && v.is_up(&r.name))
        .map(|r| {
            let same = my_domain.is_some() && r.failure_domain == my_domain;
            let load = v
                .mirrors
                .values()
                .filter(|m| m.record.holder.as_deref() == Some(r.name.as_str()))
                .count();
            (same, load, r.name.clone())
        })
        .collect();
    candidates.sort();
    candidates.into_iter().next().map(|c| c.2)
}

/// A vDisk's mirror as the cluster records it.
pub struct EtcdControl {
    node: Arc<Node>,
    vdisk: String,
    owner: Ownership,
}

impl EtcdControl {
    /// The control of `vdisk`'s mirror while this router owns it under
    /// `generation`.
    pub fn new(node: Arc<Node>, vdisk: &str, generation: u64) -> Arc<Self> {
        let owner = Ownership {
            router: node.name().to_string(),
            generation,
        };
        Arc::new(EtcdControl {
            node,
            vdisk: vdisk.to_string(),
            owner,
        })
    }
}

impl Control for EtcdControl {
    fn record(&self, holder: Option<&str>, state: MirrorState) -> Result<(), RecordError> {
        let store = self.node.store().clone();
        let (vdisk, owner) = (self.vdisk.clone(), self.owner.clone());
        let holder = holder.map(str::to_string);
        self.node
            .block_on(async move {
                depot_cluster::dtl::record(
                    &store,
                    &vdisk,
                    &owner,
                    holder.as_deref(),
                    state.as_str(),
                )
                .await
            })
            .map_err(|e| match e {
                depot_cluster::ClusterError::Fenced(m) => RecordError::Deposed(m),
                other => RecordError::Unavailable(other.to_string()),
            })
    }

    fn place(&self) -> Result<Arc<dyn Link>, String> {
        let holder = choose_holder(&self.node)
            .ok_or_else(|| "no other router is up to hold the mirror".to_string())?;
        let peer = self.node.peer(&holder).map_err(|e| e.to_string())?;
        Ok(Arc::new(PeerLink {
            node: self.node.clone(),
            peer,
        }))
    }
}
