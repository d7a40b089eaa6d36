//! vDisks: create (empty, a clone of a snapshot, a clone of a template),
//! list/show, grow, mark as template, delete.
//!
//! Invariants: a vDisk's storage exists before its record; if recording or
//! attaching fails, the storage just created is removed again and the LUN
//! given back. A clone is an engine vDisk in its source's vPool. Deleting
//! removes the record before the storage, and is refused while the VM is
//! logged in or while clones depend on the vDisk's snapshots. Only raw
//! images the daemon made itself (under `<data_dir>/vdisks/`) are deleted
//! with their vDisk.

use std::path::PathBuf;
use std::sync::Arc;

use depot_block::BlockDevice;
use depot_engine::Volume;
use depot_engine::name::check_name;

use super::{DEFAULT_VPOOL, Manager, State, bad, not_found, split_snapshot_ref, target_name};
use crate::error::{DepotError, DepotResult};
use crate::identity::Identity;
use crate::model::{CreateVDisk, VDiskInfo, VDiskKind, VDiskRecord, VDiskView};

/// What a configuration-declared vDisk brings beyond its create request.
#[derive(Debug, Default)]
pub(super) struct Declared {
    /// Its `[[vm.disk]]` name.
    pub config_name: Option<String>,
    /// The raw image path (raw vDisks).
    pub raw_path: Option<PathBuf>,
    /// Its identity from the identity file.
    pub identity: Option<Identity>,
}

/// The view of `d`: its record's public part (live size when online) and
/// the live numbers.
fn vdisk_view(st: &State, d: &VDiskRecord, owner: super::cluster::Owned) -> VDiskView {
    let live = st.disks.get(&d.info.name);
    let (size, snapshots) = match live {
        Some(l) => (
            l.size_bytes(),
            l.volume.as_ref().map_or(0, |v| {
                v.list_snapshots()
                    .iter()
                    .filter(|s| !s.name.starts_with('@'))
                    .count()
            }),
        ),
        None => (d.info.size_bytes, 0),
    };
    VDiskView {
        info: VDiskInfo {
            size_bytes: size,
            ..d.info.clone()
        },
        serial: d.identity.clone(),
        target: target_name(&d.info.vm),
        snapshots,
        online: live.is_some(),
        owner: owner.router,
        generation: owner.generation,
        dtl: owner.dtl,
    }
}

impl Manager {
    /// Lists vDisks (of one VM when `vm` is given).
    pub fn list_vdisks(&self, vm: Option<&str>) -> DepotResult<Vec<VDiskView>> {
        let st = self.lock();
        if let Some(vm) = vm
            && st.catalog.vm(vm).is_none()
        {
            return Err(not_found("VM", vm));
        }
        let mut v: Vec<&VDiskRecord> = st
            .catalog
            .vdisks()
            .filter(|d| vm.is_none_or(|vm| d.info.vm == vm))
            .collect();
        v.sort_by(|a, b| (&a.info.vm, a.info.lun).cmp(&(&b.info.vm, b.info.lun)));
        Ok(v.into_iter()
            .map(|d| vdisk_view(&st, d, self.ownership_of(&st, &d.info.name)))
            .collect())
    }

    /// Shows one vDisk.
    pub fn get_vdisk(&self, name: &str) -> DepotResult<VDiskView> {
        let st = self.lock();
        let d = st
            .catalog
            .vdisk(name)
            .ok_or_else(|| not_found("vDisk", name))?;
        Ok(vdisk_view(&st, d, self.ownership_of(&st, &d.info.name)))
    }

    /// Creates a vDisk — empty, a clone of a snapshot, or a clone of a
    /// template — and puts it on the next LUN of its VM (logged-in
    /// initiators get REPORTED LUNS DATA HAS CHANGED).
    pub fn create_vdisk(&self, req: CreateVDisk) -> DepotResult<VDiskView> {
        self.create_vdisk_as(req, Declared::default())
    }

    /// `create_vdisk` with a configuration-declared name, raw path and
    /// identity (the bootstrap of `[[vm.disk]]`).
    pub(super) fn create_vdisk_as(
        &self,
        req: CreateVDisk,
        declared: Declared,
    ) -> DepotResult<VDiskView> {
        check_name("vDisk", &req.name).map_err(bad)?;
        let mut st = self.lock();
        if st.catalog.vdisk(&req.name).is_some() {
            return Err(DepotError::Conflict {
                kind: "vDisk",
                name: req.name,
            });
        }
        let next_lun = st
            .catalog
            .vm(&req.vm)
            .ok_or_else(|| not_found("VM", &req.vm))?
            .next_lun;
        if req.from.is_some() && req.template.is_some() {
            return Err(bad(
                "give either a snapshot to clone (from) or a template, not both",
            ));
        }
        let size = req
            .size
            .as_ref()
            .map(|s| s.bytes().map_err(bad))
            .transpose()?;
        // The source of a clone decides kind and vPool.
        let source = match (&req.from, &req.template) {
            (Some(f), None) => {
                let (d, s) = split_snapshot_ref(f)?;
                Some((d.to_string(), Some(s.to_string())))
            }
            (None, Some(t)) => Some((t.clone(), None)),
            _ => None,
        };
        let kind = match (&source, req.kind) {
            (Some(_), Some(VDiskKind::Raw)) => {
                return Err(bad(
                    "clones are engine vDisks; raw vDisks have no snapshots",
                ));
            }
            (Some(_), _) => VDiskKind::Engine,
            (None, k) => k.unwrap_or(VDiskKind::Engine),
        };
        let mut vpool = None;
        if let Some((src, _)) = &source {
            let s = st
                .catalog
                .vdisk(src)
                .ok_or_else(|| not_found("vDisk", src))?;
            if s.info.kind != VDiskKind::Engine {
                return Err(bad(format!(
                    "{src:?} is a raw vDisk; only engine vDisks have snapshots"
                )));
            }
            if req.template.is_some() && !s.info.template {
                return Err(bad(format!(
                    "{src:?} is not a template; mark it with `depot vdisk template {src}`"
                )));
            }
            let p = s.info.vpool.clone().unwrap_or_else(|| DEFAULT_VPOOL.into());
            if let Some(want) = &req.vpool
                && *want != p
            {
                return Err(bad(format!(
                    "a clone lives in its source's vPool {p:?}, not {want:?}"
                )));
            }
            vpool = Some(p);
        } else if kind == VDiskKind::Engine {
            vpool = Some(req.vpool.clone().unwrap_or_else(|| DEFAULT_VPOOL.into()));
        }
        let policy_bs = vpool
            .as_ref()
            .and_then(|p| st.catalog.vpool(p))
            .map_or(512, |p| p.policy.block_size);
        let block_size = req.block_size.unwrap_or(policy_bs);
        if block_size != 512 && block_size != 4096 {
            return Err(bad("block size must be 512 or 4096"));
        }
        if source.is_none() {
            match size {
                None => return Err(bad("a new vDisk needs a size (e.g. 20G)")),
                Some(s) if s == 0 || !s.is_multiple_of(u64::from(block_size)) => {
                    return Err(bad(format!(
                        "size must be a non-zero multiple of {block_size} bytes"
                    )));
                }
                _ => {}
            }
        }
        let identity = declared
            .identity
            .unwrap_or_else(|| Identity(rand::random()));
        let path = match kind {
            VDiskKind::Raw => Some(declared.raw_path.unwrap_or_else(|| {
                self.data_dir
                    .join("vdisks")
                    .join(format!("{}.img", req.name))
            })),
            VDiskKind::Engine => None,
        };
        // In a cluster a clone is made by its source's owner (the source's
        // metadata records its clones); any other vDisk by the router of its
        // VM's other vDisks.
        match &source {
            Some((src, _)) => self.owner_here(src)?,
            None => {
                let pool = req.vpool.as_deref().unwrap_or(DEFAULT_VPOOL);
                let pool = (kind == VDiskKind::Engine).then_some(pool);
                if let Some(r) = self.placement(&st, &req.vm, pool)
                    && Some(r.as_str()) != self.cluster.as_ref().map(|n| n.name())
                {
                    return Err(DepotError::Elsewhere { router: r });
                }
            }
        }
        // Ownership (a cluster's generation), then storage, then the record.
        let generation = self.claim_new(&req.name)?;
        let (size_bytes, block_size) = match self.create_storage(
            &st,
            &req,
            &source,
            (kind, vpool.clone(), size, block_size),
            generation,
        ) {
            Ok(x) => x,
            Err(e) => {
                self.release_claim(&req.name, generation);
                return Err(e);
            }
        };
        let rec = VDiskRecord {
            info: VDiskInfo {
                name: req.name.clone(),
                vm: req.vm.clone(),
                lun: next_lun,
                kind,
                vpool: if kind == VDiskKind::Engine {
                    vpool
                } else {
                    None
                },
                size_bytes,
                block_size,
                read_only: req.read_only,
                template: false,
                origin: req
                    .from
                    .clone()
                    .or_else(|| req.template.as_ref().map(|t| format!("template:{t}"))),
            },
            path,
            identity: format!("{:032x}", identity.0),
            config_name: declared.config_name,
        };
        // Removes the storage just created when the vDisk cannot be kept.
        let drop_storage = |st: &State| {
            if let Some(p) = rec.info.vpool.as_ref().and_then(|p| st.pools.get(p)) {
                let _ = p.delete_volume(&rec.info.name);
            }
        };
        if let Err(e) = st.catalog.insert_vdisk(rec.clone()) {
            drop_storage(&st);
            self.release_claim(&rec.info.name, generation);
            return Err(e);
        }
        if let Err(e) = self.attach(&mut st, &rec, true, Some(generation)) {
            if let Err(e) = st.catalog.retract_vdisk(&rec.info.name) {
                tracing::error!(vm = %rec.info.vm, vdisk = %rec.info.name, error = %e, "cannot take back the record of a vDisk that failed to attach");
            }
            drop_storage(&st);
            self.release_claim(&rec.info.name, generation);
            return Err(e);
        }
        tracing::info!(vm = %rec.info.vm, vdisk = %rec.info.name, lun = rec.info.lun, kind = %rec.info.kind, size = rec.info.size_bytes, origin = ?rec.info.origin, "vDisk created");
        Ok(vdisk_view(
            &st,
            &rec,
            self.ownership_of(&st, &rec.info.name),
        ))
    }

    /// Deletes a vDisk. Refused while its VM has logged-in sessions or
    /// while clones depend on its snapshots.
    pub fn delete_vdisk(&self, name: &str) -> DepotResult<()> {
        self.owner_here(name)?;
        if self.moving(name) {
            return Err(DepotError::InUse(format!(
                "vDisk {name:?} is moving to another router; delete it once the move is done"
            )));
        }
        let mut st = self.lock();
        let rec = st
            .catalog
            .vdisk(name)
            .cloned()
            .ok_or_else(|| not_found("vDisk", name))?;
        let vm = rec.info.vm.as_str();
        self.refuse_if_logged_in(vm, &format!("vDisk {name:?} is in use"))?;
        if let Some(v) = st.disks.get(name).and_then(|l| l.volume.as_ref()) {
            let clones: usize = v.list_snapshots().iter().map(|s| s.clones).sum();
            if clones > 0 {
                return Err(DepotError::InUse(format!(
                    "vDisk {name:?} has {clones} clone(s) made from its snapshots; delete them first"
                )));
            }
        }
        st.catalog.remove_vdisk(name)?;
        if let Some(scsi) = st.scsi.get(vm) {
            scsi.remove_lun(rec.info.lun);
        }
        let live = st.disks.remove(name);
        if let Some(l) = &live
            && let Err(e) = l.metered.flush()
        {
            tracing::warn!(vm = %vm, vdisk = name, error = %e, "flush before delete");
        }
        drop(live);
        match rec.info.kind {
            VDiskKind::Engine => {
                let pool = rec.info.vpool.as_deref().and_then(|p| st.pools.get(p));
                if let Some(pool) = pool
                    && let Err(e) = pool.delete_volume(name)
                {
                    tracing::error!(vm = %vm, vdisk = name, error = %e, "engine delete failed after the catalog entry was removed; scrub will reclaim it");
                }
            }
            VDiskKind::Raw => {
                // Only images the daemon created itself are removed; a
                // configuration-declared image may be the admin's file.
                if let Some(p) = &rec.path
                    && p.starts_with(self.data_dir.join("vdisks"))
                {
                    let _ = std::fs::remove_file(p);
                }
            }
        }
        let _ = std::fs::remove_file(self.pr_path(&rec));
        self.metrics.forget_vdisk(vm, name);
        tracing::info!(vm = %vm, vdisk = name, "vDisk deleted");
        Ok(())
    }

    /// Grows a vDisk; logged-in initiators get CAPACITY DATA HAS CHANGED.
    pub fn resize_vdisk(&self, name: &str, size: u64) -> DepotResult<VDiskView> {
        self.owner_here(name)?;
        let mut st = self.lock();
        let mut rec = st
            .catalog
            .vdisk(name)
            .cloned()
            .ok_or_else(|| not_found("vDisk", name))?;
        let live = st
            .disks
            .get(name)
            .ok_or_else(|| DepotError::Unavailable(format!("vDisk {name:?} is offline")))?;
        let cur = live.size_bytes();
        if size < cur {
            return Err(bad(format!(
                "vDisks only grow: {size} bytes is less than the current {cur}"
            )));
        }
        if !size.is_multiple_of(u64::from(rec.info.block_size)) {
            return Err(bad(format!(
                "size must be a multiple of {} bytes",
                rec.info.block_size
            )));
        }
        if size == cur {
            return Ok(vdisk_view(
                &st,
                &rec,
                self.ownership_of(&st, &rec.info.name),
            ));
        }
        if let Some(v) = &live.volume {
            v.resize(size)?;
        } else if let Some(f) = &live.raw {
            f.grow(size)
                .map_err(|e| DepotError::io(format!("growing {name}"), e))?;
        }
        live.metered.resized();
        live.lu.capacity_changed();
        rec.info.size_bytes = size;
        st.catalog.update_vdisk(rec.clone())?;
        tracing::info!(vm = %rec.info.vm, vdisk = name, from = cur, to = size, "vDisk grown");
        Ok(vdisk_view(
            &st,
            &rec,
            self.ownership_of(&st, &rec.info.name),
        ))
    }

    /// Creates a new vDisk's storage (engine volume, clone, or nothing for
    /// a raw image, which `attach` creates); its size and block size.
    fn create_storage(
        &self,
        st: &State,
        req: &CreateVDisk,
        source: &Option<(String, Option<String>)>,
        (kind, vpool, size, block_size): (VDiskKind, Option<String>, Option<u64>, u32),
        generation: u64,
    ) -> DepotResult<(u64, u32)> {
        Ok(match kind {
            VDiskKind::Engine => {
                let pname = vpool.clone().unwrap_or_else(|| DEFAULT_VPOOL.into());
                let pool = st
                    .pools
                    .get(&pname)
                    .ok_or_else(|| {
                        if st.catalog.vpool(&pname).is_some() {
                            DepotError::Unavailable(format!("vPool {pname:?} is offline"))
                        } else {
                            not_found("vPool", &pname)
                        }
                    })?
                    .clone();
                let owner = self.owner(&req.name, generation, &pool);
                let v = match &source {
                    None => {
                        pool.create_volume_as(&req.name, size.unwrap_or(0), block_size, &owner)?
                    }
                    Some((src, snap)) => {
                        let v = pool.clone_volume_as(src, snap.as_deref(), &req.name, &owner)?;
                        let cur = v.num_blocks() * u64::from(v.block_size());
                        if let Some(s) = size {
                            if s < cur {
                                let _ = pool.delete_volume(&req.name);
                                return Err(bad(format!(
                                    "a clone cannot be smaller than its source ({cur} bytes)"
                                )));
                            }
                            if s > cur
                                && let Err(e) = v.resize(s)
                            {
                                let _ = pool.delete_volume(&req.name);
                                return Err(e.into());
                            }
                        }
                        v
                    }
                };
                (v.num_blocks() * u64::from(v.block_size()), v.block_size())
            }
            VDiskKind::Raw => (size.unwrap_or(0), block_size),
        })
    }

    /// The open engine volume of vDisk `name` (snapshots, clones and
    /// templates need one).
    pub(super) fn engine_volume(&self, st: &State, name: &str) -> DepotResult<Arc<Volume>> {
        self.owner_here(name)?;
        let rec = st
            .catalog
            .vdisk(name)
            .ok_or_else(|| not_found("vDisk", name))?;
        if rec.info.kind != VDiskKind::Engine {
            return Err(bad(format!(
                "{name:?} is a raw vDisk; snapshots, clones and templates need an engine vDisk"
            )));
        }
        st.disks
            .get(name)
            .and_then(|l| l.volume.clone())
            .ok_or_else(|| DepotError::Unavailable(format!("vDisk {name:?} is offline")))
    }

    /// Marks or unmarks a vDisk as a template (read-only, clonable).
    pub fn set_template(&self, name: &str, on: bool) -> DepotResult<VDiskView> {
        let mut st = self.lock();
        let v = self.engine_volume(&st, name)?;
        v.set_template(on)?;
        let mut rec = st
            .catalog
            .vdisk(name)
            .cloned()
            .ok_or_else(|| not_found("vDisk", name))?;
        rec.info.template = on;
        st.catalog.update_vdisk(rec.clone())?;
        tracing::info!(vdisk = name, template = on, "template flag set");
        Ok(vdisk_view(
            &st,
            &rec,
            self.ownership_of(&st, &rec.info.name),
        ))
    }
}
