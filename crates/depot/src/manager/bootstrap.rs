//! The node's life cycle: opening it from the catalog (every vPool, every
//! VM's target, every vDisk on its LUN; the embedded default vPool on an
//! empty node), attaching one vDisk's storage to its LUN, and shutting down.
//!
//! Invariants: a vPool or vDisk that cannot be opened is logged and left
//! offline while the rest of the node serves; an attached vDisk is metered,
//! has its persistent-reservation file under
//! `<data_dir>/reservations/<vm>/`, and its VPD identity from the catalog.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use depot_block::{BlockDevice, FileDevice};
use depot_iscsi_target::TargetRegistry;
use depot_scsi::{LogicalUnit, LuConfig, Registry};
use tokio::runtime::Handle;

use super::{DEFAULT_VPOOL, LiveDisk, Manager, State, not_found};
use crate::catalog::Catalog;
use crate::error::{DepotError, DepotResult};
use crate::identity::{self, Identity};
use crate::metrics::Metrics;
use crate::model::{CreateVPool, VDiskKind, VDiskRecord};

fn identity_of(rec: &VDiskRecord) -> DepotResult<Identity> {
    identity::parse(&rec.identity)
        .ok_or_else(|| DepotError::Internal(format!("vDisk {}: corrupt identity", rec.info.name)))
}

impl Manager {
    /// Loads the catalog under `data_dir`, opens every vPool, builds every
    /// VM's target and attaches every vDisk. A vDisk that cannot be opened
    /// is logged and left offline; the rest of the node still serves.
    pub fn open(
        data_dir: &Path,
        rt: Handle,
        targets: Arc<TargetRegistry>,
        metrics: Arc<Metrics>,
    ) -> DepotResult<Arc<Manager>> {
        std::fs::create_dir_all(data_dir)
            .map_err(|e| DepotError::io(format!("creating {}", data_dir.display()), e))?;
        let catalog = Catalog::load(data_dir)?;
        let pools: Vec<_> = catalog.vpools().cloned().collect();
        let vms: Vec<_> = catalog.vms().cloned().collect();
        let mut disks: Vec<VDiskRecord> = catalog.vdisks().cloned().collect();
        let m = Arc::new(Manager {
            data_dir: data_dir.to_path_buf(),
            rt,
            state: Mutex::new(State {
                catalog,
                pools: HashMap::new(),
                scsi: HashMap::new(),
                disks: HashMap::new(),
            }),
            targets,
            scsi_registry: Registry::new(),
            metrics,
        });
        {
            let mut st = m.lock();
            for p in &pools {
                match m.open_pool(p) {
                    Ok(pool) => {
                        st.pools.insert(p.name.clone(), pool);
                    }
                    Err(e) => {
                        tracing::error!(vpool = %p.name, error = %e, "cannot open vPool; its vDisks stay offline")
                    }
                }
            }
            for vm in &vms {
                m.add_target(&mut st, vm)?;
            }
            // Parents before clones is the engine's business; LUN order here.
            disks.sort_by(|a, b| (&a.info.vm, a.info.lun).cmp(&(&b.info.vm, b.info.lun)));
            for d in &disks {
                if let Err(e) = m.attach(&mut st, d, false) {
                    tracing::error!(vm = %d.info.vm, vdisk = %d.info.name, error = %e, "cannot open vDisk; it stays offline");
                }
            }
        }
        if pools.is_empty() {
            m.create_vpool(CreateVPool {
                name: DEFAULT_VPOOL.into(),
                backend: None,
                cache_dirs: Vec::new(),
                policy: None,
            })?;
            tracing::info!(vpool = DEFAULT_VPOOL, "created the embedded default vPool");
        }
        Ok(m)
    }

    /// The persistent-reservation state file of `d`.
    pub(super) fn pr_path(&self, d: &VDiskRecord) -> PathBuf {
        let file = d.config_name.as_deref().unwrap_or(&d.info.name);
        self.data_dir
            .join("reservations")
            .join(&d.info.vm)
            .join(format!("{file}.json"))
    }

    /// Opens `d`'s storage and puts it on its LUN.
    pub(super) fn attach(
        &self,
        st: &mut State,
        d: &VDiskRecord,
        create_raw: bool,
    ) -> DepotResult<()> {
        let info = &d.info;
        let (dev, volume, raw): (Arc<dyn BlockDevice>, _, _) = match info.kind {
            VDiskKind::Engine => {
                let pool_name = info.vpool.as_deref().unwrap_or(DEFAULT_VPOOL);
                let pool = st
                    .pools
                    .get(pool_name)
                    .ok_or_else(|| not_found("vPool", pool_name))?;
                let v = pool.open_volume(&info.name)?;
                (v.clone(), Some(v), None)
            }
            VDiskKind::Raw => {
                let path = d.path.clone().ok_or_else(|| {
                    DepotError::Internal(format!("raw vDisk {} has no path", info.name))
                })?;
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)
                        .map_err(|e| DepotError::io(format!("creating {}", dir.display()), e))?;
                }
                if !create_raw && !path.exists() {
                    tracing::warn!(vm = %info.vm, vdisk = %info.name, path = %path.display(), "raw image missing; creating an empty one");
                }
                let f = Arc::new(
                    FileDevice::open(&path, info.block_size, info.size_bytes)
                        .map_err(|e| DepotError::io(format!("opening {}", path.display()), e))?,
                );
                (f.clone(), None, Some(f))
            }
        };
        let metered = Arc::new(self.metrics.meter(&info.vm, &info.name, dev));
        let id = identity_of(d)?;
        let mut lu_cfg = LuConfig::new(&id.serial(), id.naa());
        lu_cfg.read_only = info.read_only;
        let pr = self.pr_path(d);
        if let Some(dir) = pr.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| DepotError::io(format!("creating {}", dir.display()), e))?;
        }
        lu_cfg.pr_state_path = Some(pr);
        let lu = LogicalUnit::new(lu_cfg, metered.clone(), &self.scsi_registry)
            .map_err(|e| DepotError::Internal(format!("vDisk {}: {e}", info.name)))?;
        let scsi = st
            .scsi
            .get(&info.vm)
            .ok_or_else(|| not_found("VM", &info.vm))?;
        scsi.insert_lun(info.lun, lu.clone());
        st.disks.insert(
            info.name.clone(),
            LiveDisk {
                metered,
                lu,
                volume,
                raw,
            },
        );
        tracing::info!(vm = %info.vm, vdisk = %info.name, lun = info.lun, kind = %info.kind, "vDisk online");
        Ok(())
    }

    /// Flushes every device and shuts every vPool down.
    pub fn shutdown(&self) {
        let mut st = self.lock();
        for (name, d) in st.disks.drain() {
            if let Err(e) = d.metered.flush() {
                tracing::error!(vdisk = %name, error = %e, "flush on shutdown failed");
            }
        }
        for (name, p) in st.pools.drain() {
            if let Err(e) = p.shutdown() {
                tracing::error!(vpool = %name, error = %e, "vPool shutdown failed");
            }
        }
    }
}
