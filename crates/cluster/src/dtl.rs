//! Where each vDisk's mirror (DTL) stands, as a takeover must read it.
//!
//! `dtl/<vdisk>` holds the router that keeps the mirror and its state for
//! one ownership generation. Only the owner writes it, and only while
//! etcd still names it owner under that generation (the write is guarded
//! on the ownership's revision). The holder may take the vDisk over only
//! from an in-sync record of the current generation, with the owner down,
//! in one transaction guarded on all three (ownership, liveness, this
//! record): an owner that recorded "degraded" first (it acknowledges
//! nothing without its mirror before that record commits) makes the
//! takeover fail, and a takeover that commits first makes the owner's
//! record fail — it is then deposed and acknowledges nothing more.

use serde::{Deserialize, Serialize};

use crate::error::{ClusterError, ClusterResult};
use crate::keys::kind;
use crate::owner::{self, Ownership};
use crate::store::{Committed, Guard, Op, Store, Txn, Versioned};

/// The value of `dtl/<vdisk>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DtlRecord {
    /// The router holding the mirror, if any.
    pub holder: Option<String>,
    /// `in_sync`, `catching_up` or `degraded`.
    pub state: String,
    /// The ownership generation the mirror is of.
    pub generation: u64,
}

/// A mirror record as read, with its revision (a takeover's guard).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirrored {
    /// The record.
    pub record: DtlRecord,
    /// Its mod revision.
    pub revision: i64,
}

impl Mirrored {
    /// Reads a `dtl/` key-value.
    pub fn from_versioned(v: &Versioned) -> ClusterResult<Mirrored> {
        Ok(Mirrored {
            record: v.json()?,
            revision: v.mod_revision,
        })
    }

    /// Whether router `me` may take the vDisk over from this mirror, owned
    /// as `owner`: it holds it, in sync, for the current generation.
    pub fn lets_take_over(&self, me: &str, owner: &Ownership) -> bool {
        self.record.holder.as_deref() == Some(me)
            && self.record.state == "in_sync"
            && self.record.generation == owner.generation
    }
}

/// The key of a vDisk's mirror record.
pub fn key(store: &Store, vdisk: &str) -> String {
    store.keys().key(kind::DTL, vdisk)
}

/// Records `vdisk`'s mirror as its owner `owner` sees it; `Fenced` if
/// `owner` no longer owns it under that generation.
pub async fn record(
    store: &Store,
    vdisk: &str,
    owner: &Ownership,
    holder: Option<&str>,
    state: &str,
) -> ClusterResult<()> {
    let txn = Txn::new()
        .guard(Guard::Revision(
            owner::key(store, vdisk),
            i64::try_from(owner.generation).unwrap_or(i64::MAX),
        ))
        .put_json(
            key(store, vdisk),
            &DtlRecord {
                holder: holder.map(str::to_string),
                state: state.to_string(),
                generation: owner.generation,
            },
        )?;
    match store.commit(txn).await? {
        Committed::Applied(_) => Ok(()),
        Committed::Refused => Err(ClusterError::Fenced(format!(
            "vDisk {vdisk:?} is no longer owned under generation {}",
            owner.generation
        ))),
    }
}

/// Router `router`, holding `vdisk`'s in-sync mirror `mirror`, takes it
/// over from `from`, which must be down (module docs). The mirror record
/// is removed: the new owner places a new mirror.
pub async fn take_over(
    store: &Store,
    vdisk: &str,
    from: &Ownership,
    mirror: &Mirrored,
    router: &str,
) -> ClusterResult<Ownership> {
    if !mirror.lets_take_over(router, from) {
        return Err(ClusterError::Conflict(format!(
            "router {router} does not hold an in-sync mirror of vDisk {vdisk:?} for generation {}",
            from.generation
        )));
    }
    let alive = store.keys().key(kind::ALIVE, &from.router);
    let dtl = key(store, vdisk);
    let txn = Txn::new()
        .guard(Guard::Absent(alive))
        .guard(Guard::Revision(dtl.clone(), mirror.revision))
        .op(Op::Delete(dtl));
    let txn = owner::change(store, txn, vdisk, Some(from), router)?;
    match store.commit(txn).await? {
        Committed::Applied(rev) => Ok(Ownership {
            router: router.to_string(),
            generation: u64::try_from(rev).unwrap_or(0),
        }),
        Committed::Refused => Err(ClusterError::Conflict(format!(
            "vDisk {vdisk:?}: its owner is up, its ownership or its mirror changed meanwhile"
        ))),
    }
}
