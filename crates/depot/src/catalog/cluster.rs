//! The catalog of a clustered router: one etcd key per record
//! (`<prefix>/vpools/<name>`, `vms/<name>`, `vdisks/<name>`, JSON), and an
//! in-memory mirror of them.
//!
//! Writes are compare-and-swap transactions: a change is computed against
//! the mirror, then committed only if every record it changes still has the
//! revision the mirror knows (or is still absent), every record it depends
//! on is unchanged (a vDisk's VM and vPool), and — when it removes a VM or
//! a vPool — no vDisk was created or changed since the mirror's revision.
//! A lost race is [`DepotError::Changed`] (HTTP 409) and writes nothing, so
//! no router's update is ever lost.
//!
//! The mirror follows etcd through the cluster feed ([`Catalog::apply_put`],
//! [`Catalog::apply_delete`], [`Catalog::reset`]); a router's own commits
//! are applied at once and their echo from the feed is recognised by its
//! revision. Records read from etcd are untrusted: one that does not parse
//! is logged and left out of the mirror.

use std::collections::{BTreeMap, HashMap};

use depot_cluster::keys::{Keys, kind};
use depot_cluster::{Committed, Guard, Op, Store, Txn, Versioned};
use serde::Serialize;
use tokio::runtime::Handle;

use super::{Catalog, Document, Persist};
use crate::error::{DepotError, DepotResult};

/// The etcd side of a clustered catalog.
#[derive(Debug)]
pub struct ClusterPersist {
    store: Store,
    rt: Handle,
    /// Revision of each record the mirror holds (full key → mod revision).
    revs: HashMap<String, i64>,
    /// The mirror reflects every change up to this revision.
    applied: i64,
}

impl ClusterPersist {
    /// A persister over `store`; etcd calls run on `rt`.
    pub fn new(store: Store, rt: Handle) -> Self {
        ClusterPersist {
            store,
            rt,
            revs: HashMap::new(),
            applied: 0,
        }
    }

    fn keys(&self) -> &Keys {
        self.store.keys()
    }

    /// Makes `next` the cluster's state, given that the mirror holds `prev`.
    pub(super) fn write(&mut self, prev: &Document, next: &Document) -> DepotResult<()> {
        let mut changes: Vec<(String, Option<Vec<u8>>)> = Vec::new();
        diff(
            self.keys(),
            kind::VPOOLS,
            &prev.vpools,
            &next.vpools,
            &mut changes,
        )?;
        diff(self.keys(), kind::VMS, &prev.vms, &next.vms, &mut changes)?;
        diff(
            self.keys(),
            kind::VDISKS,
            &prev.vdisks,
            &next.vdisks,
            &mut changes,
        )?;
        if changes.is_empty() {
            return Ok(());
        }
        let mut txn = Txn::new();
        let mut guarded: Vec<String> = Vec::new();
        for (key, value) in &changes {
            txn = self.guard(txn, key, &mut guarded);
            txn = txn.op(match value {
                Some(v) => Op::Put(key.clone(), v.clone()),
                None => Op::Delete(key.clone()),
            });
        }
        // What a vDisk change depends on: its VM and its vPool.
        for d in next.vdisks.values() {
            let changed = changes
                .iter()
                .any(|(k, _)| *k == self.keys().key(kind::VDISKS, &d.info.name));
            if !changed {
                continue;
            }
            let vm = self.keys().key(kind::VMS, &d.info.vm);
            txn = self.guard(txn, &vm, &mut guarded);
            if let Some(p) = &d.info.vpool {
                let pool = self.keys().key(kind::VPOOLS, p);
                if self.revs.contains_key(&pool) {
                    txn = self.guard(txn, &pool, &mut guarded);
                }
            }
        }
        // A deleted vDisk's ownership, reservations and mirror record go
        // with it.
        for (key, value) in &changes {
            if value.is_none()
                && let Some((kind::VDISKS, name)) = self.keys().parse(key)
            {
                txn = txn
                    .op(Op::Delete(self.keys().key(kind::OWNERS, name)))
                    .op(Op::Delete(self.keys().key(kind::PR, name)))
                    .op(Op::Delete(self.keys().key(kind::DTL, name)));
            }
        }
        // Removing a VM or a vPool was decided on "no vDisk uses it".
        let removes_parent = changes.iter().any(|(k, v)| {
            v.is_none() && matches!(self.keys().parse(k), Some((kind::VMS | kind::VPOOLS, _)))
        });
        if removes_parent {
            txn = txn.guard(Guard::PrefixUnchangedSince(
                self.keys().kind_prefix(kind::VDISKS),
                self.applied,
            ));
        }
        let store = self.store.clone();
        let outcome = self.rt.block_on(async move { store.commit(txn).await })?;
        match outcome {
            Committed::Applied(rev) => {
                for (key, value) in changes {
                    if value.is_some() {
                        self.revs.insert(key, rev);
                    } else {
                        self.revs.remove(&key);
                    }
                }
                Ok(())
            }
            Committed::Refused => Err(DepotError::Changed(
                "another router changed these objects at the same time".into(),
            )),
        }
    }

    /// Guards `key` on the revision the mirror knows (absent if none),
    /// once per transaction.
    fn guard(&self, txn: Txn, key: &str, guarded: &mut Vec<String>) -> Txn {
        if guarded.iter().any(|g| g == key) {
            return txn;
        }
        guarded.push(key.to_string());
        match self.revs.get(key) {
            Some(&rev) => txn.guard(Guard::Revision(key.to_string(), rev)),
            None => txn.guard(Guard::Absent(key.to_string())),
        }
    }
}

/// The keys whose records differ between `prev` and `next`, with the new
/// value (`None`: removed).
fn diff<T: Serialize>(
    keys: &Keys,
    kind: &str,
    prev: &BTreeMap<String, T>,
    next: &BTreeMap<String, T>,
    out: &mut Vec<(String, Option<Vec<u8>>)>,
) -> DepotResult<()> {
    let enc = |v: &T| {
        serde_json::to_vec(v).map_err(|e| DepotError::Internal(format!("encoding a record: {e}")))
    };
    for (name, v) in next {
        let new = enc(v)?;
        let same = match prev.get(name) {
            Some(old) => enc(old)? == new,
            None => false,
        };
        if !same {
            out.push((keys.key(kind, name), Some(new)));
        }
    }
    for name in prev.keys() {
        if !next.contains_key(name) {
            out.push((keys.key(kind, name), None));
        }
    }
    Ok(())
}

impl Catalog {
    fn cluster_keys(&self) -> Option<Keys> {
        match &self.store {
            Persist::Cluster(c) => Some(c.keys().clone()),
            Persist::File(_) => None,
        }
    }

    /// Puts one record read from etcd into the document; whether it is one
    /// of the catalog's kinds and parsed.
    pub(super) fn put_record(&mut self, key: &str, value: &[u8]) -> bool {
        let Some(keys) = self.cluster_keys() else {
            return false;
        };
        let Some((k, name)) = keys.parse(key) else {
            return false;
        };
        let parsed = match k {
            kind::VPOOLS => serde_json::from_slice(value).map(|r| {
                self.doc.vpools.insert(name.to_string(), r);
            }),
            kind::VMS => serde_json::from_slice(value).map(|r| {
                self.doc.vms.insert(name.to_string(), r);
            }),
            kind::VDISKS => serde_json::from_slice(value).map(|r| {
                self.doc.vdisks.insert(name.to_string(), r);
            }),
            _ => return false,
        };
        match parsed {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(%key, error = %e, "ignoring a cluster record that does not parse");
                false
            }
        }
    }

    /// Applies a record created or changed in etcd; whether the mirror
    /// changed (false for the echo of this router's own commit).
    pub fn apply_put(&mut self, v: &Versioned) -> bool {
        let known = match &self.store {
            Persist::Cluster(c) => c.revs.get(&v.key).copied(),
            Persist::File(_) => return false,
        };
        if known.is_some_and(|r| r >= v.mod_revision) {
            self.advance(v.mod_revision);
            return false;
        }
        let changed = self.put_record(&v.key, &v.value);
        if let Persist::Cluster(c) = &mut self.store
            && changed
        {
            c.revs.insert(v.key.clone(), v.mod_revision);
        }
        self.advance(v.mod_revision);
        changed
    }

    /// Applies a record deleted in etcd at `revision`; whether the mirror
    /// changed.
    pub fn apply_delete(&mut self, key: &str, revision: i64) -> bool {
        let Some(keys) = self.cluster_keys() else {
            return false;
        };
        self.advance(revision);
        let Some((k, name)) = keys.parse(key) else {
            return false;
        };
        if let Persist::Cluster(c) = &mut self.store {
            if c.revs.get(key).is_some_and(|&r| r > revision) {
                return false;
            }
            c.revs.remove(key);
        }
        match k {
            kind::VPOOLS => self.doc.vpools.remove(name).is_some(),
            kind::VMS => self.doc.vms.remove(name).is_some(),
            kind::VDISKS => self.doc.vdisks.remove(name).is_some(),
            _ => false,
        }
    }

    /// Replaces the mirror with a snapshot of etcd at `revision`.
    pub fn reset(&mut self, kvs: &[Versioned], revision: i64) {
        self.doc = Document::default();
        if let Persist::Cluster(c) = &mut self.store {
            c.revs.clear();
            c.applied = 0;
        }
        for v in kvs {
            if self.put_record(&v.key, &v.value)
                && let Persist::Cluster(c) = &mut self.store
            {
                c.revs.insert(v.key.clone(), v.mod_revision);
            }
        }
        self.advance(revision);
    }

    /// Notes that the mirror reflects etcd up to `revision`.
    pub fn advance(&mut self, revision: i64) {
        if let Persist::Cluster(c) = &mut self.store {
            c.applied = c.applied.max(revision);
        }
    }
}
