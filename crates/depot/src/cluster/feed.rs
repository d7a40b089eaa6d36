//! The cluster feed loop: every change committed in etcd, by any router,
//! reaches this router's manager in commit order, which applies it to the
//! catalog mirror and the view and then makes the live state (targets,
//! LUNs, which vDisks this router serves) match.
//!
//! Invariant: events are applied one batch at a time, in order; after each
//! batch the router's applied revision moves to the batch's revision, which
//! is what [`super::Node::sync`] waits for.

use std::sync::Arc;

use depot_cluster::{FeedEvent, LeaseStatus, watch};
use tokio_util::sync::CancellationToken;

use super::Node;
use crate::manager::Manager;

/// Runs the feed until `stop`.
pub fn spawn(node: Arc<Node>, mgr: Arc<Manager>, stop: CancellationToken) {
    let mut rx = watch::feed(
        node.store().clone(),
        node.store().keys().root(),
        stop.clone(),
    );
    let applier = mgr.clone();
    tokio::spawn(async move {
        while let Some(ev) = rx.recv().await {
            let mgr = applier.clone();
            let r = tokio::task::spawn_blocking(move || mgr.apply_feed(ev)).await;
            if let Err(e) = r {
                tracing::error!(error = %e, "applying a cluster change failed");
            }
        }
    });
    tokio::spawn(watch_lease(node, mgr, stop));
}

/// Rejoins when etcd says the lease is gone, then re-checks which vDisks
/// this router still owns.
async fn watch_lease(node: Arc<Node>, mgr: Arc<Manager>, stop: CancellationToken) {
    loop {
        let Some(mut status) = node.lease_status() else {
            return;
        };
        let expired = async {
            loop {
                if *status.borrow_and_update() == LeaseStatus::Expired {
                    return;
                }
                if status.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::select! {
            () = stop.cancelled() => return,
            () = expired => {}
        }
        tracing::error!(router = %node.name(), "the router's lease expired; I/O is fenced until it rejoins");
        loop {
            match node.rejoin().await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot rejoin the cluster yet");
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                    }
                }
            }
        }
        tracing::info!(router = %node.name(), "rejoined the cluster");
        let mgr = mgr.clone();
        let _ = tokio::task::spawn_blocking(move || mgr.revalidate()).await;
    }
}

/// Whether an event batch moves the applied revision (its highest).
pub fn revision_of(ev: &FeedEvent) -> i64 {
    match ev {
        FeedEvent::Snapshot { revision, .. } => *revision,
        FeedEvent::Changes(c) => c
            .iter()
            .map(|c| match c {
                depot_cluster::Change::Put(v) => v.mod_revision,
                depot_cluster::Change::Delete { revision, .. } => *revision,
            })
            .max()
            .unwrap_or(0),
    }
}
