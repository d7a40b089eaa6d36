//! Router membership: who is in the cluster (persistent records) and who
//! is up (records under each router's lease).
//!
//! Invariants: at most one live instance per router name. Joining puts
//! `alive/<name>` only if it is absent, in the same transaction as the
//! membership record; a second process with the same name is refused
//! while the first one's lease lives. The one exception is the router's
//! own previous incarnation (same node id, read from its data directory,
//! which the daemon holds locked): its lease is revoked at once instead of
//! waiting out its time to live after a `kill -9`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::{ClusterError, ClusterResult};
use crate::keys::kind;
use crate::store::{Committed, Guard, Op, Store, Txn, Versioned};

/// A router's membership record (`routers/<name>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouterRecord {
    /// Router name.
    pub name: String,
    /// iSCSI portal (`ip:port`) initiators reach it at.
    pub portal: String,
    /// Management API URL.
    pub api: String,
    /// Router-to-router address (`ip:port`, mutual TLS).
    #[serde(default)]
    pub peer: String,
    /// Failure domain, when declared.
    #[serde(default)]
    pub failure_domain: Option<String>,
    /// Stable identity of the node's data directory.
    pub node_id: String,
    /// Target portal group tag of its portal (distinct per router).
    pub tpgt: u16,
    /// When it first joined (Unix seconds).
    pub joined_unix: u64,
}

/// A running instance (`alive/<name>`, under the instance's lease).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AliveRecord {
    /// Node id of the data directory it runs on.
    pub node_id: String,
    /// Its lease.
    pub lease: i64,
    /// When it started (Unix seconds).
    pub started_unix: u64,
}

/// A router as `depot router list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterState {
    /// Its membership record.
    pub record: RouterRecord,
    /// Whether an instance is up (its lease lives).
    pub up: bool,
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Joins the cluster as `record.name` under `lease`: writes the membership
/// record (keeping the first join time and the portal group tag) and the
/// liveness key. Waits up to `wait` for a previous instance's lease to
/// lapse; refuses a live second instance.
pub async fn join(
    store: &Store,
    mut record: RouterRecord,
    lease: i64,
    wait: Duration,
) -> ClusterResult<RouterRecord> {
    let keys = store.keys().clone();
    let member_key = keys.key(kind::ROUTERS, &record.name);
    let alive_key = keys.key(kind::ALIVE, &record.name);
    let give_up = tokio::time::Instant::now() + wait;
    let mut warned = false;
    loop {
        let existing = store.get(&member_key).await?;
        let mut claim_tpgt = None;
        if let Some(v) = &existing {
            let old: RouterRecord = v.json()?;
            record.joined_unix = old.joined_unix;
            record.tpgt = old.tpgt;
        } else {
            record.joined_unix = now_unix();
            record.tpgt = free_tpgt(store).await?;
            claim_tpgt = Some(keys.key(kind::TPGT, &record.tpgt.to_string()));
        }
        let alive = AliveRecord {
            node_id: record.node_id.clone(),
            lease,
            started_unix: now_unix(),
        };
        let mut txn = Txn::new();
        if let Some(k) = claim_tpgt {
            // Two routers joining at once cannot take the same tag.
            txn = txn
                .guard(Guard::Absent(k.clone()))
                .op(Op::Put(k, record.name.clone().into_bytes()));
        }
        let txn = txn
            .guard(Guard::Absent(alive_key.clone()))
            .guard_unchanged(member_key.clone(), existing.as_ref())
            .put_json(member_key.clone(), &record)?
            .op(Op::PutLeased(
                alive_key.clone(),
                serde_json::to_vec(&alive).unwrap_or_default(),
                lease,
            ));
        if let Committed::Applied(_) = store.commit(txn).await? {
            return Ok(record);
        }
        // Either the membership record changed under us (retry) or an
        // instance is alive.
        let Some(live) = store.get(&alive_key).await? else {
            continue;
        };
        let other: AliveRecord = live.json()?;
        if other.node_id == record.node_id && other.lease != lease {
            tracing::info!(router = %record.name, lease = other.lease,
                "revoking the lease of this router's previous instance");
            let _ = store.revoke_lease(other.lease).await;
            continue;
        }
        if tokio::time::Instant::now() >= give_up {
            return Err(ClusterError::AlreadyRunning(format!(
                "router {:?} is already running in the cluster (node {}, up since {}); a second router with the same name cannot join",
                record.name, other.node_id, other.started_unix
            )));
        }
        if !warned {
            tracing::warn!(router = %record.name, "an instance of this router is alive; waiting for its lease to lapse");
            warned = true;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The lowest portal group tag no member has claimed (tags start at 1).
async fn free_tpgt(store: &Store) -> ClusterResult<u16> {
    let keys = store.keys();
    let (claimed, _) = store.list(&keys.kind_prefix(kind::TPGT)).await?;
    let used: Vec<u16> = claimed
        .iter()
        .filter_map(|v| keys.parse(&v.key).and_then(|(_, n)| n.parse().ok()))
        .collect();
    (1..=u16::MAX)
        .find(|t| !used.contains(t))
        .ok_or_else(|| ClusterError::Conflict("no free target portal group tag".into()))
}

/// Every member with whether it is up.
pub async fn list(store: &Store) -> ClusterResult<Vec<RouterState>> {
    let keys = store.keys();
    let (members, _) = store.list(&keys.kind_prefix(kind::ROUTERS)).await?;
    let (alive, _) = store.list(&keys.kind_prefix(kind::ALIVE)).await?;
    let up: Vec<&str> = alive
        .iter()
        .filter_map(|v| keys.parse(&v.key).map(|(_, n)| n))
        .collect();
    let mut out = Vec::with_capacity(members.len());
    for m in &members {
        let record: RouterRecord = m.json()?;
        out.push(RouterState {
            up: up.contains(&record.name.as_str()),
            record,
        });
    }
    out.sort_by(|a, b| a.record.name.cmp(&b.record.name));
    Ok(out)
}

/// Whether router `name` is up, with the liveness record's revision (for a
/// guard that it stays down).
pub async fn alive(store: &Store, name: &str) -> ClusterResult<Option<Versioned>> {
    store.get(&store.keys().key(kind::ALIVE, name)).await
}
