//! A feed of the cluster state: one full snapshot, then every change in
//! revision order, for everything under the prefix. When the watch breaks
//! (etcd restarted, the revision was compacted, the connection dropped) the
//! feed reads a fresh snapshot and goes on from there, so a consumer that
//! applies snapshots and changes idempotently always converges on etcd's
//! state. Events are delivered in the order etcd committed them.

use std::time::Duration;

use etcd_client::{EventType, WatchOptions};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::error::ClusterResult;
use crate::store::{Store, Versioned, bounded, versioned};

/// One change of a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The key was created or changed.
    Put(Versioned),
    /// The key was deleted (or its lease expired) at this revision.
    Delete {
        /// Full key.
        key: String,
        /// Revision of the deletion.
        revision: i64,
    },
}

/// What the feed delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedEvent {
    /// Everything under the prefix at `revision`; replaces what the
    /// consumer knew.
    Snapshot {
        /// Every key-value.
        kvs: Vec<Versioned>,
        /// The revision the read saw.
        revision: i64,
    },
    /// Changes committed after the last snapshot or batch, in order.
    Changes(Vec<Change>),
}

/// Starts a feed of everything under `prefix`; it runs until `stop`.
pub fn feed(store: Store, prefix: String, stop: CancellationToken) -> mpsc::Receiver<FeedEvent> {
    let (tx, rx) = mpsc::channel(256);
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(100);
        loop {
            let r = tokio::select! {
                () = stop.cancelled() => return,
                r = run(&store, &prefix, &tx) => r,
            };
            if tx.is_closed() {
                return;
            }
            if let Err(e) = r {
                tracing::warn!(error = %e, "cluster state watch broke; reading a fresh snapshot");
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    });
    rx
}

async fn run(store: &Store, prefix: &str, tx: &mpsc::Sender<FeedEvent>) -> ClusterResult<()> {
    let (kvs, revision) = store.list(prefix).await?;
    if tx
        .send(FeedEvent::Snapshot { kvs, revision })
        .await
        .is_err()
    {
        return Ok(());
    }
    let mut c = store.client();
    let watch = c.watch(
        prefix,
        Some(
            WatchOptions::new()
                .with_prefix()
                .with_start_revision(revision + 1),
        ),
    );
    let mut stream = bounded(store.timeout(), watch).await?;
    loop {
        let Some(resp) = stream.message().await? else {
            return Err(crate::ClusterError::Unavailable(
                "watch stream ended".into(),
            ));
        };
        if resp.canceled() || resp.compact_revision() > 0 {
            return Err(crate::ClusterError::Unavailable(format!(
                "watch cancelled: {} (compacted at {})",
                resp.cancel_reason(),
                resp.compact_revision()
            )));
        }
        let mut changes = Vec::with_capacity(resp.events().len());
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            match ev.event_type() {
                EventType::Put => match versioned(kv) {
                    Ok(v) => changes.push(Change::Put(v)),
                    Err(e) => tracing::warn!(error = %e, "ignoring a bad cluster record"),
                },
                EventType::Delete => changes.push(Change::Delete {
                    key: String::from_utf8_lossy(kv.key()).into_owned(),
                    revision: kv.mod_revision(),
                }),
            }
        }
        if !changes.is_empty() && tx.send(FeedEvent::Changes(changes)).await.is_err() {
            return Ok(());
        }
    }
}
