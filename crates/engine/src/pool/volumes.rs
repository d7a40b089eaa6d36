//! The vDisk API of a vPool: create, open, clone, delete and list volumes.
//!
//! Opening is a local restart (`Volume::load` replays the flash logs) when
//! this node's RocksDB knows the name, otherwise a restore from the backend:
//! catalog entry → manifest → index (`crate::volume::restore_index`).
//!
//! Invariants:
//! - Creation writes the manifest, then the catalog entry, then the local
//!   state; deletion removes the catalog entry first. A half-done create or
//!   delete leaves only unreferenced objects, which scrub collects.
//! - A clone's parent is opened before the clone and stays open with it;
//!   a parent chain is at most 1024 deep.
//! - Volumes with clones are never deleted.

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;

use crate::backend::keys;
use crate::error::{EngineError, EngineResult};
use crate::index::IndexBatch;
use crate::meta::{CatalogEntry, ChildRef, META_VERSION, ParentRef, Shipped, VolumeMeta};
use crate::name::check_name;
use crate::volume::{Volume, restore_index};

use super::VPool;

fn rand_id() -> u64 {
    loop {
        let id: u64 = rand::random();
        if id != 0 && id != u64::MAX {
            return id;
        }
    }
}

impl VPool {
    /// Creates a thin vDisk.
    pub fn create_volume(
        &self,
        name: &str,
        size_bytes: u64,
        block_size: u32,
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
        let meta = self.new_meta(name, size_bytes, block_size, None)?;
        self.register(meta, None)
    }

    fn new_meta(
        &self,
        name: &str,
        size_bytes: u64,
        block_size: u32,
        parent: Option<ParentRef>,
    ) -> EngineResult<VolumeMeta> {
        if self.shared.index.name_to_id(name)?.is_some() {
            return Err(EngineError::VolumeExists(name.to_string()));
        }
        match self.shared.backend.get(&keys::catalog(name)) {
            Ok(_) => return Err(EngineError::VolumeExists(name.to_string())),
            Err(EngineError::ObjectNotFound(_)) => {}
            Err(e) => return Err(e),
        }
        Ok(VolumeMeta {
            version: META_VERSION,
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
        })
    }

    /// Writes a new volume's manifest, catalog entry and local state.
    fn register(
        &self,
        meta: VolumeMeta,
        parent: Option<(Arc<Volume>, u32)>,
    ) -> EngineResult<Arc<Volume>> {
        let be = &self.shared.backend;
        let body = serde_json::to_vec(&meta)
            .map_err(|e| EngineError::corrupt("manifest", e.to_string()))?;
        be.put(&keys::manifest(meta.id), Bytes::from(body), false)?;
        let cat = serde_json::to_vec(&CatalogEntry {
            name: meta.name.clone(),
            id: meta.id,
        })
        .map_err(|e| EngineError::corrupt("catalog entry", e.to_string()))?;
        be.put(&keys::catalog(&meta.name), Bytes::from(cat), false)?;
        let mut b = IndexBatch::default();
        b.put_meta(&meta)?;
        b.put_name(&meta.name, meta.id);
        b.put_applied(meta.id, (0, 0));
        self.shared.index.write_sync(b)?;
        let vol = Volume::load(self.shared.clone(), meta, parent)?;
        let mut vols = self.state.volumes.lock();
        vols.insert(vol.id, vol.clone());
        self.shared.set_open_volumes(vols.len());
        drop(vols);
        Ok(vol)
    }

    /// Opens a vDisk: a local restart (replaying its logs) when this node's
    /// flash knows it, otherwise a restart from the backend (everything that
    /// had been shipped; see docs/engine-formats.md "Recovery point").
    pub fn open_volume(&self, name: &str) -> EngineResult<Arc<Volume>> {
        self.check_open()?;
        check_name("vDisk", name)?;
        self.open_inner(name, 0)
    }

    fn open_inner(&self, name: &str, depth: u32) -> EngineResult<Arc<Volume>> {
        if depth > 1024 {
            return Err(EngineError::corrupt("clone chain", "too deep or cyclic"));
        }
        if let Some(v) = self
            .state
            .volumes
            .lock()
            .values()
            .find(|v| v.name() == name)
        {
            return Ok(v.clone());
        }
        let idx = &self.shared.index;
        let local = match idx.name_to_id(name)? {
            Some(id) => idx.meta(id)?,
            None => None,
        };
        let meta = match local {
            Some(m) => m,
            None => self.restore_from_backend(name, depth)?,
        };
        let parent = match &meta.parent {
            Some(p) => {
                let pv = self.open_inner(&p.name, depth + 1)?;
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
        let mut vols = self.state.volumes.lock();
        if let Some(v) = vols.values().find(|v| v.name() == name) {
            return Ok(v.clone());
        }
        let vol = Volume::load(self.shared.clone(), meta, parent)?;
        vols.insert(vol.id, vol.clone());
        self.shared.set_open_volumes(vols.len());
        Ok(vol)
    }

    fn restore_from_backend(&self, name: &str, depth: u32) -> EngineResult<VolumeMeta> {
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
        let m = be.get(&keys::manifest(cat.id))?;
        let meta: VolumeMeta = serde_json::from_slice(&m)
            .map_err(|e| EngineError::corrupt("manifest", e.to_string()))?;
        if meta.id != cat.id || meta.name != name {
            return Err(EngineError::corrupt(
                "manifest",
                "does not match the catalog",
            ));
        }
        if let Some(p) = &meta.parent {
            self.open_inner(&p.name, depth + 1)?;
        }
        tracing::info!(volume = name, "restoring from the backend");
        restore_index(&self.shared, &meta)?;
        let mut b = IndexBatch::default();
        b.put_meta(&meta)?;
        b.put_name(name, meta.id);
        self.shared.index.write_sync(b)?;
        Ok(meta)
    }

    /// Deletes a vDisk and everything it stored. Refused while clones depend
    /// on any of its snapshots.
    pub fn delete_volume(&self, name: &str) -> EngineResult<()> {
        self.check_open()?;
        let _a = self.state.admin.lock();
        let vol = self.open_inner(name, 0)?;
        if !vol.meta.lock().children.is_empty() {
            return Err(EngineError::HasClones(format!("vDisk {name:?}")));
        }
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
    /// `None`) from a template's current state.
    pub fn clone_volume(
        &self,
        parent: &str,
        snapshot: Option<&str>,
        new_name: &str,
    ) -> EngineResult<Arc<Volume>> {
        self.check_open()?;
        check_name("vDisk", new_name)?;
        let _a = self.state.admin.lock();
        let p = self.open_inner(parent, 0)?;
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
        self.register(meta, Some((p, generation)))
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
