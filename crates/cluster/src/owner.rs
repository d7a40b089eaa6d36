//! vDisk ownership and generations.
//!
//! `owners/<vdisk>` names the one router that serves the vDisk's I/O. Its
//! etcd mod revision is the ownership's *generation*: every change of the
//! record (a new owner, or the same owner opening the vDisk again) is a new
//! write, so generations only grow, cluster-wide, and no two ownerships
//! ever share one. Every change is a compare-and-swap on the generation
//! the changer read, so two routers racing for one vDisk cannot both win.
//!
//! A takeover from a router that is down additionally guards that the old
//! owner's liveness key is absent, in the same transaction: a router whose
//! lease lives cannot lose a vDisk behind its back (docs/cluster.md, "the
//! fencing argument").

use serde::{Deserialize, Serialize};

use crate::error::{ClusterError, ClusterResult};
use crate::keys::kind;
use crate::store::{Committed, Guard, Store, Txn, Versioned};

/// The value of `owners/<vdisk>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnerRecord {
    /// The owning router.
    pub router: String,
}

/// An ownership as read: who, and under which generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ownership {
    /// The owning router.
    pub router: String,
    /// The generation (the record's mod revision).
    pub generation: u64,
}

impl Ownership {
    /// Reads the ownership out of an `owners/` key-value.
    pub fn from_versioned(v: &Versioned) -> ClusterResult<Ownership> {
        let r: OwnerRecord = v.json()?;
        Ok(Ownership {
            router: r.router,
            generation: u64::try_from(v.mod_revision).map_err(|_| ClusterError::Corrupt {
                key: v.key.clone(),
                reason: "negative revision".into(),
            })?,
        })
    }
}

/// The key of a vDisk's ownership.
pub fn key(store: &Store, vdisk: &str) -> String {
    store.keys().key(kind::OWNERS, vdisk)
}

/// Reads a vDisk's ownership.
pub async fn get(store: &Store, vdisk: &str) -> ClusterResult<Option<Ownership>> {
    store
        .get(&key(store, vdisk))
        .await?
        .map(|v| Ownership::from_versioned(&v))
        .transpose()
}

/// Adds to `txn` the change of `vdisk`'s owner to `router`, guarded on the
/// generation `from` (or on there being no owner).
pub fn change(
    store: &Store,
    txn: Txn,
    vdisk: &str,
    from: Option<&Ownership>,
    router: &str,
) -> ClusterResult<Txn> {
    let k = key(store, vdisk);
    let txn = match from {
        Some(o) => txn.guard(Guard::Revision(
            k.clone(),
            i64::try_from(o.generation).unwrap_or(i64::MAX),
        )),
        None => txn.guard(Guard::Absent(k.clone())),
    };
    txn.put_json(
        k,
        &OwnerRecord {
            router: router.to_string(),
        },
    )
}

/// Moves `vdisk` from generation `from` to `router` (or gives it its first
/// owner); the new generation, or `Conflict` if it changed meanwhile.
pub async fn transfer(
    store: &Store,
    vdisk: &str,
    from: Option<&Ownership>,
    router: &str,
) -> ClusterResult<Ownership> {
    let txn = change(store, Txn::new(), vdisk, from, router)?;
    commit_ownership(store, txn, vdisk, router).await
}

/// Takes `vdisk` over from its owner `from`, which must be down: guarded on
/// `from`'s generation and on its liveness key being absent.
pub async fn take_over(
    store: &Store,
    vdisk: &str,
    from: &Ownership,
    router: &str,
) -> ClusterResult<Ownership> {
    let alive = store.keys().key(kind::ALIVE, &from.router);
    let txn = change(
        store,
        Txn::new().guard(Guard::Absent(alive)),
        vdisk,
        Some(from),
        router,
    )?;
    commit_ownership(store, txn, vdisk, router).await
}

async fn commit_ownership(
    store: &Store,
    txn: Txn,
    vdisk: &str,
    router: &str,
) -> ClusterResult<Ownership> {
    match store.commit(txn).await? {
        Committed::Applied(rev) => Ok(Ownership {
            router: router.to_string(),
            generation: u64::try_from(rev).unwrap_or(0),
        }),
        Committed::Refused => Err(ClusterError::Conflict(format!(
            "the ownership of vDisk {vdisk:?} changed meanwhile (or its owner is up)"
        ))),
    }
}

/// Checks that `router` still owns `vdisk` under `generation`: `Fenced`
/// otherwise. Run before anything a deposed owner must not do (a manifest
/// update or a delete on a backend that ignores conditional requests).
pub async fn validate(
    store: &Store,
    vdisk: &str,
    router: &str,
    generation: u64,
) -> ClusterResult<()> {
    match get(store, vdisk).await? {
        Some(o) if o.router == router && o.generation == generation => Ok(()),
        Some(o) => Err(ClusterError::Fenced(format!(
            "vDisk {vdisk:?} is owned by {} under generation {} (this router had {generation})",
            o.router, o.generation
        ))),
        None => Err(ClusterError::Fenced(format!(
            "vDisk {vdisk:?} has no owner"
        ))),
    }
}
