//! The vDisk API of a vPool: create, open, clone, delete and list volumes,
//! standalone or as a grid owner.
//!
//! Opening is a local restart (`Volume::load` replays the flash logs) when
//! this node's RocksDB knows the name, otherwise a restore from the backend:
//! catalog entry → manifest → index (`crate::volume::restore_index`).
//!
//! A grid owner (an [`Owner`] of generation > 0) always reads the backend
//! manifest first: a newer owner there refuses the open
//! ([`EngineError::Fenced`]); local state older than the backend's newest
//! epoch (this router owned the vDisk before someone else did) is dropped
//! and the volume restored from the backend. After loading, the volume
//! claims the vDisk (`Volume::claim`: a new epoch, published) before it is
//! put in the open-volume map, so it serves no I/O unclaimed. A clone's
//! parent opened on behalf of a grid owner is a *reader*: it reads, and
//! never writes, ships or publishes the parent's manifest (its own owner
//! may be another router).
//!
//! Invariants:
//! - Creation writes the manifest, then the catalog entry, then the local
//!   state; deletion removes the catalog entry first. A half-done create or
//!   delete leaves only unreferenced objects, which scrub collects. A grid
//!   owner creates both conditionally where the store allows it, so two
//!   routers cannot create one name.
//! - A clone's parent is opened before the clone and stays open with it;
//!   a parent chain is at most 1024 deep.
//! - Volumes with clones are never deleted.
//! - Opens, creates, clones, deletes, imports and forgets run one at a time
//!   (the pool's `open` lock), so a volume is loaded at most once.

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;

use crate::backend::{ETag, PutMode, PutOutcome, keys};
use crate::error::{EngineError, EngineResult};
use crate::index::IndexBatch;
use crate::meta::{
    CatalogEntry, ChildRef, Epoch, META_VERSION, META_VERSION_EPOCHS, ParentRef, Shipped,
    VolumeMeta,
};
use crate::name::check_name;
use crate::owner::{FencingMode, Owner};
use crate::volume::{Opening, Volume, restore_index};

use super::VPool;

/// How the pool opens a volume.
#[derive(Clone)]
pub(super) enum OpenAs {
    /// `open_volume`: whatever is open; otherwise standalone.
    Plain,
    /// By this owner.
    Owner(Owner),
    /// As a clone's parent: a reader if the clone is a grid owner's.
    Parent {
        /// The clone is opened by a grid owner.
        grid: bool,
    },
}

impl OpenAs {
    /// Whether the backend manifest decides (ownership, staleness).
    fn grid(&self) -> bool {
        match self {
            OpenAs::Plain => false,
            OpenAs::Owner(o) => o.is_grid(),
            OpenAs::Parent { grid } => *grid,
        }
    }
}

fn rand_id() -> u64 {
    loop {
        let id: u64 = rand::random();
        if id != 0 && id != u64::MAX {
            return id;
        }
    }
}

impl VPool {
    /// Creates a thin vDisk (standalone: owner generation 0).
    pub fn create_volume(
        &self,
        name: &str,
        size_bytes: u64,
        block_size: u32,
    ) -> EngineResult<Arc<Volume>> {
        self.create_volume_as(name, size_bytes, block_size, &Owner::standalone())
    }

    /// Creates a thin vDisk owned by `owner`: every object it writes
    /// carries the owner's generation, and its manifest is fenced.
    pub fn create_volume_as(
        &self,
        name: &str,
        size_bytes: u64,
        block_size: u32,
        owner: &Owner,
    ) -> EngineResult<Arc<Volume>> {
        self.check_open()?;
        check_name("vDisk", name)?;
        if block_size != 512 && block_size != 4096 {
            return Err(EngineError::InvalidArgument(format!(
                "block size {block_size} must be 512 or 4096"
            )));
        }
        if size_bytes == 0 || !size_bytes.is_multiple_of(u64::from(block_size)) {
            return Err(EngineError::InvalidArgument(format!(
                "size {size_bytes} must be a positive multiple of {block_size}"
            )));
        }
        let _a = self.state.admin.lock();
        let _o = self.state.open.lock();
        let meta = self.new_meta(name, size_bytes, block_size, None, owner)?;
        self.register(meta, None, owner)
    }

    fn new_meta(
        &self,
        name: &str,
        size_bytes: u64,
        block_size: u32,
        parent: Option<ParentRef>,
        owner: &Owner,
    ) -> EngineResult<VolumeMeta> {
        if self.shared.index.name_to_id(name)?.is_some() {
            return Err(EngineError::VolumeExists(name.to_string()));
        }
        match self.shared.backend.get(&keys::catalog(name)) {
            Ok(_) => return Err(EngineError::VolumeExists(name.to_string())),
            Err(EngineError::ObjectNotFound(_)) => {}
            Err(e) => return Err(e),
        }
        let epochs = if owner.is_grid() {
            vec![Epoch {
                generation: owner.generation(),
                first_container: 0,
                first_tlog: 0,
                first_checkpoint: 0,
                earlier_containers: Vec::new(),
            }]
        } else {
            Vec::new()
        };
        Ok(VolumeMeta {
            version: if epochs.is_empty() {
                META_VERSION
            } else {
                META_VERSION_EPOCHS
            },
            id: rand_id(),
            name: name.to_string(),
            size_bytes,
            block_size,
            created_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            template: false,
            parent,
            children: Vec::new(),
            head_gen: 1,
            next_gen: 2,
            snapshots: Vec::new(),
            discarded_gens: Vec::new(),
            next_container: 0,
            next_tlog: 0,
            shipped: Shipped::default(),
            epochs,
        })
    }

    /// Stores a new volume's manifest or catalog entry: unconditionally
    /// when standalone, only if absent for a grid owner on a store that
    /// enforces it (refused: the name or id exists).
    fn put_new(
        &self,
        key: &str,
        body: Vec<u8>,
        owner: &Owner,
        name: &str,
    ) -> EngineResult<Option<ETag>> {
        let be = &self.shared.backend;
        if !owner.is_grid() || self.shared.probe_fencing()? != FencingMode::Conditional {
            be.put(key, Bytes::from(body), false)?;
            return Ok(None);
        }
        match be.put_mode(key, Bytes::from(body), &PutMode::Create, false)? {
            PutOutcome::Stored(t) => Ok(t),
            PutOutcome::Refused(_) => Err(EngineError::VolumeExists(name.to_string())),
        }
    }

    /// Writes a new volume's manifest, catalog entry and local state.
    fn register(
        &self,
        meta: VolumeMeta,
        parent: Option<(Arc<Volume>, u32)>,
        owner: &Owner,
    ) -> EngineResult<Arc<Volume>> {
        if owner.is_grid() {
            owner
                .check()
                .map_err(|why| EngineError::Fenced(format!("ownership check failed: {why}")))?;
        }
        let body = serde_json::to_vec(&meta)
            .map_err(|e| EngineError::corrupt("manifest", e.to_string()))?;
        let etag = self.put_new(&keys::manifest(meta.id), body, owner, &meta.name)?;
        let cat = serde_json::to_vec(&CatalogEntry {
            name: meta.name.clone(),
            id: meta.id,
        })
        .map_err(|e| EngineError::corrupt("catalog entry", e.to_string()))?;
        self.put_new(&keys::catalog(&meta.name), cat, owner, &meta.name)?;
        let mut b = IndexBatch::default();
        b.put_meta(&meta)?;
        b.put_name(&meta.name, meta.id);
        b.put_applied(meta.id, (0, 0));
        self.shared.index.write_sync(b)?;
        let vol = Volume::load(
            self.shared.clone(),
            meta,
            parent,
            Opening::owner(owner.clone()),
        )?;
        vol.set_manifest_etag(etag);
        self.insert_open(&vol);
        Ok(vol)
    }

    /// Puts a loaded volume in the open-volume map.
    pub(super) fn insert_open(&self, vol: &Arc<Volume>) {
        let mut vols = self.state.volumes.lock();
        vols.insert(vol.id, vol.clone());
        self.shared.set_open_volumes(vols.len());
    }

    /// The open instance named `name`, if any; a closed one (handed over)
    /// is dropped from the map instead.
    pub(super) fn open_instance(&self, name: &str) -> Option<Arc<Volume>> {
        let mut vols = self.state.volumes.lock();
        let v = vols.values().find(|v| v.name() == name).cloned()?;
        if v.is_closed() {
            vols.remove(&v.id);
            self.shared.set_open_volumes(vols.len());
            return None;
        }
        Some(v)
    }

    /// Opens a vDisk: a local restart (replaying its logs) when this node's
    /// flash knows it, otherwise a restart from the backend (everything that
    /// had been shipped; see docs/engine-formats.md "Recovery point"). An
    /// instance already open is returned as it is; one not open yet is
    /// opened standalone (owner generation 0).
    pub fn open_volume(&self, name: &str) -> EngineResult<Arc<Volume>> {
        self.check_open()?;
        check_name("vDisk", name)?;
        let _o = self.state.open.lock();
        self.open_inner(name, 0, &OpenAs::Plain)
    }

    /// Opens a vDisk as `owner` (module docs): refused with
    /// [`EngineError::Fenced`] if the backend names a newer owner; stale
    /// local state is dropped; a new epoch is begun and published before
    /// the volume is returned. An instance already open is made the
    /// owner's (a new epoch if `owner` is newer; refused if it is older).
    pub fn open_volume_as(&self, name: &str, owner: &Owner) -> EngineResult<Arc<Volume>> {
        self.check_open()?;
        check_name("vDisk", name)?;
        let _o = self.state.open.lock();
        self.open_inner(name, 0, &OpenAs::Owner(owner.clone()))
    }

    /// What a restart from the backend alone would have of `name`: the
    /// manifest as the backend holds it now.
    pub fn backend_manifest(&self, name: &str) -> EngineResult<VolumeMeta> {
        self.check_open()?;
        check_name("vDisk", name)?;
        Ok(self.read_remote(name)?.0)
    }

    /// The backend's catalog entry and manifest (with its e-tag) of `name`.
    pub(super) fn read_remote(&self, name: &str) -> EngineResult<(VolumeMeta, Option<ETag>)> {
        let be = &self.shared.backend;
        let cat = match be.get(&keys::catalog(name)) {
            Ok(c) => c,
            Err(EngineError::ObjectNotFound(_)) => {
                return Err(EngineError::VolumeNotFound(name.to_string()));
            }
            Err(e) => return Err(e),
        };
        let cat: CatalogEntry = serde_json::from_slice(&cat)
            .map_err(|e| EngineError::corrupt("catalog entry", e.to_string()))?;
        let (m, etag) = be.get_with_etag(&keys::manifest(cat.id))?;
        let meta: VolumeMeta = serde_json::from_slice(&m)
            .map_err(|e| EngineError::corrupt("manifest", e.to_string()))?;
        if meta.id != cat.id || meta.name != name {
            return Err(EngineError::corrupt(
                "manifest",
                "does not match the catalog",
            ));
        }
        Ok((meta, etag))
    }

    pub(super) fn open_inner(
        &self,
        name: &str,
        depth: u32,
        how: &OpenAs,
    ) -> EngineResult<Arc<Volume>> {
        if depth > 1024 {
            return Err(EngineError::corrupt("clone chain", "too deep or cyclic"));
        }
        if self.state.importing.lock().contains(name) {
            return Err(EngineError::InvalidArgument(format!(
                "vDisk {name:?} is being imported on this router"
            )));
        }
        if let Some(v) = self.open_instance(name) {
            if let OpenAs::Owner(o) = how {
                if o.is_grid() {
                    self.shared.probe_fencing()?;
                    let (remote, etag) = self.read_remote(name)?;
                    v.become_owner(o, Some(&remote), etag)?;
                } else if v.is_reader() {
                    v.become_owner(o, None, None)?;
                }
            }
            return Ok(v);
        }
        let idx = &self.shared.index;
        let mut local = match idx.name_to_id(name)? {
            Some(id) => idx.meta(id)?,
            None => None,
        };
        let remote = if how.grid() {
            self.shared.probe_fencing()?;
            Some(self.read_remote(name)?)
        } else {
            None
        };
        if let Some((r, _)) = &remote {
            if let OpenAs::Owner(o) = how
                && r.owner_generation() > o.generation()
            {
                return Err(EngineError::Fenced(format!(
                    "owner generation {} holds vDisk {name:?}; this router has {}",
                    r.owner_generation(),
                    o.generation()
                )));
            }
            if let Some(l) = &local
                && (l.id != r.id || r.owner_generation() > l.owner_generation())
            {
                tracing::info!(
                    volume = name,
                    local = l.owner_generation(),
                    backend = r.owner_generation(),
                    "local state is older than the backend's owner; restoring"
                );
                self.forget_local(l.id, name)?;
                local = None;
            }
        }
        let meta = match local {
            Some(m) => m,
            None => self.restore_from_backend(name, depth, how, remote.as_ref().map(|r| &r.0))?,
        };
        let parent = match &meta.parent {
            Some(p) => {
                let pv =
                    self.open_inner(&p.name, depth + 1, &OpenAs::Parent { grid: how.grid() })?;
                if pv.id != p.id {
                    return Err(EngineError::corrupt(
                        format!("parent of {name}"),
                        format!("{} now names another volume", p.name),
                    ));
                }
                Some((pv, p.generation))
            }
            None => None,
        };
        let opening = match how {
            OpenAs::Owner(o) => Opening::owner(o.clone()),
            OpenAs::Parent { grid: true } => Opening::reader(),
            OpenAs::Plain | OpenAs::Parent { grid: false } => Opening::owner(Owner::standalone()),
        };
        let vol = Volume::load(self.shared.clone(), meta, parent, opening)?;
        if let (OpenAs::Owner(o), Some((r, etag))) = (how, remote)
            && let Err(e) = vol.claim(o, Some(&r), etag)
        {
            vol.close();
            return Err(e);
        }
        self.insert_open(&vol);
        Ok(vol)
    }

    /// Restores `name`'s index from the backend into this node's index;
    /// returns its metadata. `remote` is the manifest if it was just read.
    fn restore_from_backend(
        &self,
        name: &str,
        depth: u32,
        how: &OpenAs,
        remote: Option<&VolumeMeta>,
    ) -> EngineResult<VolumeMeta> {
        let meta = match remote {
            Some(m) => m.clone(),
            None => self.read_remote(name)?.0,
        };
        if let Some(p) = &meta.parent {
            self.open_inner(&p.name, depth + 1, &OpenAs::Parent { grid: how.grid() })?;
        }
        tracing::info!(volume = name, "restoring from the backend");
        // Leftovers of an earlier, interrupted restore would outlive it.
        self.shared.index.delete_volume(meta.id, name)?;
        restore_index(&self.shared, &meta, true)?;
        let mut b = IndexBatch::default();
        b.put_meta(&meta)?;
        b.put_name(name, meta.id);
        self.shared.index.write_sync(b)?;
        Ok(meta)
    }

    /// Deletes a vDisk and everything it stored. Refused while clones depend
    /// on any of its snapshots. A grid owner's volume asks the fencing hook
    /// first; a reader (a grid clone's parent) cannot be deleted here.
    pub fn delete_volume(&self, name: &str) -> EngineResult<()> {
        self.check_open()?;
        let _a = self.state.admin.lock();
        let _o = self.state.open.lock();
        let vol = self.open_inner(name, 0, &OpenAs::Plain)?;
        if !vol.meta.lock().children.is_empty() {
            return Err(EngineError::HasClones(format!("vDisk {name:?}")));
        }
        if vol.is_reader() {
            return Err(EngineError::ReadOnly);
        }
        vol.check_owner()?;
        let be = &self.shared.backend;
        be.delete(&keys::catalog(name), false)?;
        vol.close();
        {
            let mut vols = self.state.volumes.lock();
            vols.remove(&vol.id);
            self.shared.set_open_volumes(vols.len());
        }
        self.shared.index.delete_volume(vol.id, name)?;
        let _ = std::fs::remove_dir_all(vol.local_dir());
        if let Ok(objs) = be.list(&keys::volume_prefix(vol.id)) {
            for (k, _) in objs {
                let _ = be.delete(&k, false);
            }
        }
        if let Some((p, _)) = &vol.parent {
            let mut m = p.meta.lock();
            m.children.retain(|c| c.id != vol.id);
            p.persist_meta(&m)?;
            drop(m);
            self.shared.wake_shipper();
        }
        Ok(())
    }

    /// Creates a clone sharing its parent's data: from a snapshot, or (with
    /// `None`) from a template's current state. Standalone (generation 0).
    pub fn clone_volume(
        &self,
        parent: &str,
        snapshot: Option<&str>,
        new_name: &str,
    ) -> EngineResult<Arc<Volume>> {
        self.clone_volume_as(parent, snapshot, new_name, &Owner::standalone())
    }

    /// [`VPool::clone_volume`], the clone owned by `owner`. The parent's
    /// manifest gains the clone, so the parent must be owned here: open it
    /// with [`VPool::open_volume_as`] first (a parent open only as another
    /// clone's reader is refused).
    pub fn clone_volume_as(
        &self,
        parent: &str,
        snapshot: Option<&str>,
        new_name: &str,
        owner: &Owner,
    ) -> EngineResult<Arc<Volume>> {
        self.check_open()?;
        check_name("vDisk", new_name)?;
        let _a = self.state.admin.lock();
        let _o = self.state.open.lock();
        let p = self.open_inner(
            parent,
            0,
            &OpenAs::Parent {
                grid: owner.is_grid(),
            },
        )?;
        if p.is_reader() {
            return Err(EngineError::InvalidArgument(format!(
                "vDisk {parent:?} is not owned on this router; open it as its owner before cloning it"
            )));
        }
        p.check_fence()?;
        let snap = match snapshot {
            Some(s) => s.to_string(),
            None => p.template_snapshot().ok_or_else(|| {
                EngineError::InvalidArgument(format!(
                    "{parent:?} is not a template; name a snapshot to clone from"
                ))
            })?,
        };
        let (generation, size, bs) = {
            let m = p.meta.lock();
            let s = m
                .snapshot(&snap)
                .ok_or_else(|| EngineError::SnapshotNotFound(snap.clone()))?;
            (s.generation, m.size_bytes, m.block_size)
        };
        let meta = self.new_meta(
            new_name,
            size,
            bs,
            Some(ParentRef {
                id: p.id,
                name: parent.to_string(),
                snapshot: snap.clone(),
                generation,
            }),
            owner,
        )?;
        {
            let mut m = p.meta.lock();
            m.children.push(ChildRef {
                id: meta.id,
                name: new_name.to_string(),
                snapshot: snap,
            });
            p.persist_meta(&m)?;
        }
        self.shared.wake_shipper();
        self.register(meta, Some((p, generation)), owner)
    }

    /// Names of all vDisks in the pool (backend catalog plus local).
    pub fn list_volumes(&self) -> EngineResult<Vec<String>> {
        self.check_open()?;
        let mut names: HashSet<String> = self.shared.index.names()?.into_iter().collect();
        for (k, _) in self.shared.backend.list(keys::CATALOG_PREFIX)? {
            if let Some(n) = keys::catalog_name(&k) {
                names.insert(n.to_string());
            }
        }
        let mut v: Vec<String> = names.into_iter().collect();
        v.sort();
        Ok(v)
    }
}
