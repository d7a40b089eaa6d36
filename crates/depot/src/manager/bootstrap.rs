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
use crate::catalog::cluster::ClusterPersist;
use crate::cluster::Node;
use crate::cluster::device::{Routed, Standby};
use crate::cluster::reservations::EtcdReservations;
use crate::error::{DepotError, DepotResult};
use crate::identity::{self, Identity};
use crate::metrics::Metrics;
use crate::model::{CreateVPool, VDiskKind, VDiskRecord};

/// An opened vDisk's storage: the device, and the engine volume or raw file
/// behind it.
pub(super) type Storage = (
    Arc<dyn BlockDevice>,
    Option<Arc<depot_engine::Volume>>,
    Option<Arc<FileDevice>>,
);

/// The standby device of a vDisk another router owns.
pub(super) fn standby_of(d: &VDiskRecord) -> Arc<dyn BlockDevice> {
    Arc::new(Standby::new(
        d.info.size_bytes,
        d.info.block_size,
        d.info.kind == VDiskKind::Engine,
    ))
}

fn identity_of(rec: &VDiskRecord) -> DepotResult<Identity> {
    identity::parse(&rec.identity)
        .ok_or_else(|| DepotError::Internal(format!("vDisk {}: corrupt identity", rec.info.name)))
}

/// What a clustered router starts from: its membership and the cluster's
/// state when it joined.
pub struct ClusterStart {
    /// The router.
    pub node: Arc<Node>,
    /// Every key of the cluster.
    pub snapshot: Vec<depot_cluster::Versioned>,
    /// The snapshot's revision.
    pub revision: i64,
    /// Where the catalog's etcd calls run.
    pub rt: Handle,
}

impl Manager {
    /// Loads the catalog (under `data_dir`, or the cluster's), opens every
    /// vPool, builds every VM's target and attaches every vDisk. A vDisk
    /// that cannot be opened is logged and left offline; the rest of the
    /// node still serves.
    pub fn open(
        data_dir: &Path,
        rt: Handle,
        targets: Arc<TargetRegistry>,
        metrics: Arc<Metrics>,
        cluster: Option<ClusterStart>,
    ) -> DepotResult<Arc<Manager>> {
        std::fs::create_dir_all(data_dir)
            .map_err(|e| DepotError::io(format!("creating {}", data_dir.display()), e))?;
        let (catalog, node) = match cluster {
            None => (Catalog::load(data_dir)?, None),
            Some(c) => {
                let persist = ClusterPersist::new(c.node.store().clone(), c.rt);
                (
                    Catalog::clustered(persist, &c.snapshot, c.revision),
                    Some(c.node),
                )
            }
        };
        let pools: Vec<_> = catalog.vpools().cloned().collect();
        let vms: Vec<_> = catalog.vms().cloned().collect();
        let mut disks: Vec<VDiskRecord> = catalog.vdisks().cloned().collect();
        let clustered = node.is_some();
        let m = Arc::new(Manager {
            data_dir: data_dir.to_path_buf(),
            cluster: node,
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
            moves: parking_lot::Mutex::new(Default::default()),
            imports: parking_lot::Mutex::new(Default::default()),
            mirrors: parking_lot::Mutex::new(super::mirror::Mirrors::open(data_dir, clustered)?),
        });
        {
            let mut st = m.lock();
            for p in pools.iter().filter(|p| m.opens_here(p)) {
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
                if let Err(e) = m.attach(&mut st, d, false, None) {
                    tracing::error!(vm = %d.info.vm, vdisk = %d.info.name, error = %e, "cannot open vDisk; it stays offline");
                }
            }
        }
        if pools.is_empty() && !clustered {
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

    /// Puts `d` on its LUN: its storage opened when this router serves it
    /// (always on a standalone router; in a cluster when it owns it, under
    /// `generation` if the caller has just claimed one, else a fresh claim),
    /// a standby device otherwise.
    pub(super) fn attach(
        &self,
        st: &mut State,
        d: &VDiskRecord,
        create_raw: bool,
        generation: Option<u64>,
    ) -> DepotResult<()> {
        let info = &d.info;
        let (dev, volume, raw, routed, generation) = match &self.cluster {
            None => {
                let (dev, volume, raw) = self.open_storage(st, d, create_raw, 0)?;
                (dev, volume, raw, None, None)
            }
            Some(node) => {
                let served = match self.serving_generation(d, generation)? {
                    Some(g) => Some((self.open_storage(st, d, create_raw, g)?, g)),
                    None => None,
                };
                let (inner, volume, raw, g) = match served {
                    Some(((dev, v, r), g)) => (dev, v, r, Some(g)),
                    None => (standby_of(d), None, None, None),
                };
                let routed = Arc::new(Routed::new(inner, node.fence().clone()));
                (
                    routed.clone() as Arc<dyn BlockDevice>,
                    volume,
                    raw,
                    Some(routed),
                    g,
                )
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
        // In a cluster the reservations are the cluster's (every router's
        // port registers there); standalone, a file per vDisk.
        let reservations = self
            .cluster
            .as_ref()
            .map(|n| EtcdReservations::new(n.clone(), &info.name));
        let lu = match &reservations {
            None => LogicalUnit::new(lu_cfg, metered.clone(), &self.scsi_registry),
            Some(r) => LogicalUnit::with_reservation_store(
                lu_cfg,
                metered.clone(),
                &self.scsi_registry,
                r.clone(),
            ),
        }
        .map_err(|e| DepotError::Internal(format!("vDisk {}: {e}", info.name)))?;
        let scsi = st
            .scsi
            .get(&info.vm)
            .ok_or_else(|| not_found("VM", &info.vm))?;
        scsi.insert_lun(info.lun, lu.clone());
        let serving = volume.is_some() || raw.is_some();
        st.disks.insert(
            info.name.clone(),
            LiveDisk {
                vm: info.vm.clone(),
                lun: info.lun,
                metered,
                lu,
                volume,
                raw,
                routed,
                generation,
                reservations,
            },
        );
        if self.cluster.is_some() && !serving {
            tracing::info!(vm = %info.vm, vdisk = %info.name, lun = info.lun, "vDisk standby (another router owns it)");
        } else {
            tracing::info!(vm = %info.vm, vdisk = %info.name, lun = info.lun, kind = %info.kind, generation = ?generation, "vDisk online");
        }
        Ok(())
    }

    /// Opens `d`'s storage: its engine volume (in a cluster as the owner
    /// under `generation`) or its raw image.
    pub(super) fn open_storage(
        &self,
        st: &State,
        d: &VDiskRecord,
        create_raw: bool,
        generation: u64,
    ) -> DepotResult<Storage> {
        let info = &d.info;
        let (dev, volume, raw): Storage = match info.kind {
            VDiskKind::Engine => {
                let pool_name = info.vpool.as_deref().unwrap_or(DEFAULT_VPOOL);
                let pool = st
                    .pools
                    .get(pool_name)
                    .ok_or_else(|| not_found("vPool", pool_name))?;
                let v =
                    pool.open_volume_as(&info.name, &self.owner(&info.name, generation, pool))?;
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
        Ok((dev, volume, raw))
    }

    /// Flushes every device and shuts every vPool down.
    pub fn shutdown(&self) {
        let mut st = self.lock();
        // The vPools ship with the mirrors still attached (each manifest
        // reaches the mirror first); then the mirrors stop.
        for (name, d) in st.disks.drain() {
            let serving = d.volume.is_some() || d.raw.is_some();
            if serving && let Err(e) = d.metered.flush() {
                tracing::error!(vdisk = %name, error = %e, "flush on shutdown failed");
            }
        }
        for (name, p) in st.pools.drain() {
            if let Err(e) = p.shutdown() {
                tracing::error!(vpool = %name, error = %e, "vPool shutdown failed");
            }
        }
        self.stop_mirrors();
    }
}
