//! The manager: the live state of the node — the catalog, the open vPools,
//! each VM's iSCSI target and each vDisk's logical unit — and every
//! management operation on them (the REST API and the configuration
//! bootstrap both go through here).
//!
//! Invariants:
//! - every operation runs under one lock (`state`), so operations are
//!   serialised and the catalog, the engine and the target registry change
//!   together; no `.await` happens under it (callers on the runtime use
//!   `spawn_blocking`, since engine calls block);
//! - storage is created before the catalog names it, and the catalog entry
//!   is removed before storage is destroyed;
//! - a VM's target is `iqn.2026-11.io.depot:<vm>`, its vDisks are LUNs in
//!   creation order from 0, and a LUN number is never reused within a VM;
//! - a vDisk's identity (VPD serial, NAA) is fixed at creation and kept in
//!   the catalog.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use depot_block::{BlockDevice, FileDevice};
use depot_engine::{BackendConfig, VPool, VPoolConfig, Volume};
use depot_iscsi_proto::chap::Secret;
use depot_iscsi_target::{Access, ChapCredentials, TargetRegistry};
use depot_scsi::{LogicalUnit, LuConfig, Registry, ScsiTarget};
use tokio::runtime::Handle;

use crate::catalog::Catalog;
use crate::error::{DepotError, DepotResult};
use crate::identity::Identity;
use crate::metrics::{MeteredDevice, Metrics};
use crate::model::*;
use depot_engine::name::check_name;

/// A vDisk being served.
struct LiveDisk {
    metered: Arc<MeteredDevice>,
    lu: Arc<LogicalUnit>,
    volume: Option<Arc<Volume>>,
    raw: Option<Arc<FileDevice>>,
}

struct State {
    catalog: Catalog,
    pools: HashMap<String, Arc<VPool>>,
    scsi: HashMap<String, Arc<ScsiTarget>>,
    disks: HashMap<String, LiveDisk>,
}

/// The node's management core.
pub struct Manager {
    data_dir: PathBuf,
    rt: Handle,
    state: Mutex<State>,
    targets: Arc<TargetRegistry>,
    scsi_registry: Arc<Registry>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager")
            .field("data_dir", &self.data_dir)
            .finish()
    }
}

/// Name of the vPool `depot serve` creates on an empty node.
pub const DEFAULT_VPOOL: &str = "default";

fn target_name(vm: &str) -> String {
    format!("{IQN_PREFIX}{vm}")
}

fn not_found(kind: &'static str, name: &str) -> DepotError {
    DepotError::NotFound {
        kind,
        name: name.to_string(),
    }
}

fn bad(e: impl std::fmt::Display) -> DepotError {
    DepotError::BadRequest(e.to_string())
}

fn access_of(vm: &VmRecord) -> Access {
    Access {
        allowed_initiators: vm.allowed_initiators.clone(),
        chap: vm.chap.as_ref().map(|c| ChapCredentials {
            initiator: Secret {
                user: c.user.clone(),
                secret: c.secret.clone(),
            },
            target: match (&c.target_user, &c.target_secret) {
                (Some(u), Some(s)) => Some(Secret {
                    user: u.clone(),
                    secret: s.clone(),
                }),
                _ => None,
            },
        }),
    }
}

fn check_chap(c: &Option<ChapSpec>) -> DepotResult<()> {
    let Some(c) = c else { return Ok(()) };
    if c.user.is_empty() || c.secret.is_empty() {
        return Err(bad("CHAP needs a user and a secret"));
    }
    match (&c.target_user, &c.target_secret) {
        (Some(_), Some(s)) if *s == c.secret => {
            Err(bad("the target and initiator CHAP secrets must differ"))
        }
        (Some(_), Some(_)) | (None, None) => Ok(()),
        _ => Err(bad("mutual CHAP needs both target_user and target_secret")),
    }
}

fn redact(b: &BackendSpec) -> BackendSpec {
    match b {
        BackendSpec::S3 {
            endpoint,
            bucket,
            region,
            access_key_id,
            allow_http,
            ..
        } => BackendSpec::S3 {
            endpoint: endpoint.clone(),
            bucket: bucket.clone(),
            region: region.clone(),
            access_key_id: access_key_id.clone(),
            secret_access_key: String::new(),
            allow_http: *allow_http,
        },
        other => other.clone(),
    }
}

fn identity_of(rec: &VDiskRecord) -> DepotResult<Identity> {
    u128::from_str_radix(&rec.identity, 16)
        .map(Identity)
        .map_err(|_| DepotError::Internal(format!("vDisk {}: corrupt identity", rec.name)))
}

/// Splits `VDISK@SNAPSHOT`.
pub fn split_snapshot_ref(s: &str) -> DepotResult<(&str, &str)> {
    match s.split_once('@') {
        Some((d, snap)) if !d.is_empty() && !snap.is_empty() => Ok((d, snap)),
        _ => Err(bad(format!("{s:?} is not VDISK@SNAPSHOT"))),
    }
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
        let m = Arc::new(Manager {
            data_dir: data_dir.to_path_buf(),
            rt,
            state: Mutex::new(State {
                catalog: catalog.clone(),
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
            for p in catalog.vpools.values() {
                match m.open_pool(p) {
                    Ok(pool) => {
                        st.pools.insert(p.name.clone(), pool);
                    }
                    Err(e) => {
                        tracing::error!(vpool = %p.name, error = %e, "cannot open vPool; its vDisks stay offline")
                    }
                }
            }
            for vm in catalog.vms.values() {
                m.add_target(&mut st, vm)?;
            }
            let mut disks: Vec<&VDiskRecord> = catalog.vdisks.values().collect();
            // Parents before clones is the engine's business; LUN order here.
            disks.sort_by(|a, b| (&a.vm, a.lun).cmp(&(&b.vm, b.lun)));
            for d in disks {
                if let Err(e) = m.attach(&mut st, d, false) {
                    tracing::error!(vm = %d.vm, vdisk = %d.name, error = %e, "cannot open vDisk; it stays offline");
                }
            }
        }
        if m.lock().catalog.vpools.is_empty() {
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

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock is a bug; keep serving with the
        // state as it is rather than poisoning every later call.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The target registry (for sessions).
    pub fn targets(&self) -> &Arc<TargetRegistry> {
        &self.targets
    }

    fn save(&self, st: &State) -> DepotResult<()> {
        st.catalog.save(&self.data_dir)
    }

    fn pool_config(&self, p: &VPoolRecord) -> DepotResult<VPoolConfig> {
        let backend = match &p.backend {
            BackendSpec::Local { path } => BackendConfig::Local {
                path: path
                    .clone()
                    .ok_or_else(|| bad("local backend without a path"))?,
            },
            BackendSpec::S3 {
                endpoint,
                bucket,
                region,
                access_key_id,
                secret_access_key,
                allow_http,
            } => BackendConfig::S3 {
                endpoint: endpoint.clone(),
                bucket: bucket.clone(),
                region: region.clone(),
                access_key_id: access_key_id.clone(),
                secret_access_key: secret_access_key.clone(),
                allow_http: *allow_http,
            },
        };
        let cache_dir = p
            .cache_dirs
            .first()
            .cloned()
            .ok_or_else(|| bad("a vPool needs a flash cache directory"))?;
        let mut cfg = VPoolConfig::new(p.name.clone(), backend, cache_dir);
        cfg.read_cache_bytes = p.policy.read_cache_bytes;
        cfg.write_buffer_bytes = p.policy.write_buffer_bytes;
        cfg.keep_shipped_bytes = p.policy.write_buffer_bytes;
        cfg.container_bytes = p.policy.container_bytes;
        cfg.ship_interval = Duration::from_secs(p.policy.ship_interval_secs.max(1));
        cfg.validate()?;
        Ok(cfg)
    }

    fn open_pool(&self, p: &VPoolRecord) -> DepotResult<Arc<VPool>> {
        let cfg = self.pool_config(p)?;
        Ok(VPool::open(cfg, self.rt.clone())?)
    }

    fn add_target(&self, st: &mut State, vm: &VmRecord) -> DepotResult<()> {
        let scsi = Arc::new(ScsiTarget::new(self.scsi_registry.clone()));
        self.targets
            .add_target(
                &target_name(&vm.name),
                Some(vm.name.clone()),
                scsi.clone(),
                access_of(vm),
            )
            .map_err(|e| DepotError::Internal(e.to_string()))?;
        st.scsi.insert(vm.name.clone(), scsi);
        tracing::info!(vm = %vm.name, target_name = %target_name(&vm.name), "target ready");
        Ok(())
    }

    fn pr_path(&self, d: &VDiskRecord) -> PathBuf {
        let file = d.config_name.as_deref().unwrap_or(&d.name);
        self.data_dir
            .join("reservations")
            .join(&d.vm)
            .join(format!("{file}.json"))
    }

    /// Opens `d`'s storage and puts it on its LUN.
    fn attach(&self, st: &mut State, d: &VDiskRecord, create_raw: bool) -> DepotResult<()> {
        let (dev, volume, raw): (Arc<dyn BlockDevice>, _, _) = match d.kind {
            VDiskKind::Engine => {
                let pool_name = d.vpool.as_deref().unwrap_or(DEFAULT_VPOOL);
                let pool = st
                    .pools
                    .get(pool_name)
                    .ok_or_else(|| not_found("vPool", pool_name))?;
                let v = pool.open_volume(&d.name)?;
                (v.clone(), Some(v), None)
            }
            VDiskKind::Raw => {
                let path = d.path.clone().ok_or_else(|| {
                    DepotError::Internal(format!("raw vDisk {} has no path", d.name))
                })?;
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)
                        .map_err(|e| DepotError::io(format!("creating {}", dir.display()), e))?;
                }
                if !create_raw && !path.exists() {
                    tracing::warn!(vm = %d.vm, vdisk = %d.name, path = %path.display(), "raw image missing; creating an empty one");
                }
                let f = Arc::new(
                    FileDevice::open(&path, d.block_size, d.size_bytes)
                        .map_err(|e| DepotError::io(format!("opening {}", path.display()), e))?,
                );
                (f.clone(), None, Some(f))
            }
        };
        let metered = Arc::new(self.metrics.meter(&d.vm, &d.name, dev));
        let id = identity_of(d)?;
        let mut lu_cfg = LuConfig::new(&id.serial(), id.naa());
        lu_cfg.read_only = d.read_only;
        let pr = self.pr_path(d);
        if let Some(dir) = pr.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| DepotError::io(format!("creating {}", dir.display()), e))?;
        }
        lu_cfg.pr_state_path = Some(pr);
        let lu = LogicalUnit::new(lu_cfg, metered.clone(), &self.scsi_registry)
            .map_err(|e| DepotError::Internal(format!("vDisk {}: {e}", d.name)))?;
        let scsi = st.scsi.get(&d.vm).ok_or_else(|| not_found("VM", &d.vm))?;
        scsi.insert_lun(d.lun, lu.clone());
        st.disks.insert(
            d.name.clone(),
            LiveDisk {
                metered,
                lu,
                volume,
                raw,
            },
        );
        tracing::info!(vm = %d.vm, vdisk = %d.name, lun = d.lun, kind = %d.kind, "vDisk online");
        Ok(())
    }

    // ------------------------------------------------------------- vPools

    /// Creates a vPool (and opens it).
    pub fn create_vpool(&self, req: CreateVPool) -> DepotResult<VPoolView> {
        check_name("vPool", &req.name).map_err(bad)?;
        let mut st = self.lock();
        if st.catalog.vpools.contains_key(&req.name) {
            return Err(DepotError::Conflict {
                kind: "vPool",
                name: req.name,
            });
        }
        let base = self.data_dir.join("vpools").join(&req.name);
        let backend = match req.backend {
            None | Some(BackendSpec::Local { path: None }) => BackendSpec::Local {
                path: Some(base.join("backend")),
            },
            Some(b) => b,
        };
        let cache_dirs = if req.cache_dirs.is_empty() {
            vec![base.join("flash")]
        } else {
            req.cache_dirs
        };
        let rec = VPoolRecord {
            name: req.name.clone(),
            backend,
            cache_dirs,
            policy: req.policy.unwrap_or_default(),
        };
        if rec.policy.block_size != 512 && rec.policy.block_size != 4096 {
            return Err(bad("policy block_size must be 512 or 4096"));
        }
        let pool = self.open_pool(&rec)?;
        st.catalog.vpools.insert(rec.name.clone(), rec.clone());
        if let Err(e) = self.save(&st) {
            st.catalog.vpools.remove(&rec.name);
            let _ = pool.shutdown();
            return Err(e);
        }
        st.pools.insert(rec.name.clone(), pool);
        tracing::info!(vpool = %rec.name, "vPool created");
        Ok(self.vpool_view(&st, &rec))
    }

    fn vpool_view(&self, st: &State, p: &VPoolRecord) -> VPoolView {
        let stats = st.pools.get(&p.name).map(|pool| pool.stats());
        VPoolView {
            name: p.name.clone(),
            backend: redact(&p.backend),
            cache_dirs: p.cache_dirs.clone(),
            policy: p.policy.clone(),
            vdisks: st
                .catalog
                .vdisks
                .values()
                .filter(|d| d.kind == VDiskKind::Engine && d.vpool.as_deref() == Some(&p.name))
                .map(|d| d.name.clone())
                .collect(),
            online: stats.is_some(),
            bytes_waiting_to_ship: stats.as_ref().map_or(0, |s| s.bytes_waiting_to_ship),
            flash_bytes: stats.as_ref().map_or(0, |s| s.flash_bytes),
            backend_bytes: stats.as_ref().map_or(0, |s| s.backend_bytes_estimate),
        }
    }

    /// Lists vPools.
    pub fn list_vpools(&self) -> Vec<VPoolView> {
        let st = self.lock();
        st.catalog
            .vpools
            .values()
            .map(|p| self.vpool_view(&st, p))
            .collect()
    }

    /// Shows one vPool.
    pub fn get_vpool(&self, name: &str) -> DepotResult<VPoolView> {
        let st = self.lock();
        let p = st
            .catalog
            .vpools
            .get(name)
            .ok_or_else(|| not_found("vPool", name))?;
        Ok(self.vpool_view(&st, p))
    }

    /// Deletes an empty vPool from the catalog and closes it (its backend
    /// data is left in place).
    pub fn delete_vpool(&self, name: &str) -> DepotResult<()> {
        let mut st = self.lock();
        if !st.catalog.vpools.contains_key(name) {
            return Err(not_found("vPool", name));
        }
        let users: Vec<String> = st
            .catalog
            .vdisks
            .values()
            .filter(|d| d.kind == VDiskKind::Engine && d.vpool.as_deref() == Some(name))
            .map(|d| d.name.clone())
            .collect();
        if !users.is_empty() {
            return Err(DepotError::InUse(format!(
                "vPool {name:?} still holds vDisks {}; delete them first",
                users.join(", ")
            )));
        }
        let rec = st.catalog.vpools.remove(name);
        if let Err(e) = self.save(&st) {
            if let Some(r) = rec {
                st.catalog.vpools.insert(name.to_string(), r);
            }
            return Err(e);
        }
        if let Some(pool) = st.pools.remove(name)
            && let Err(e) = pool.shutdown()
        {
            tracing::warn!(vpool = name, error = %e, "vPool shutdown reported an error");
        }
        self.metrics.forget_vpool(name);
        tracing::info!(vpool = name, "vPool deleted");
        Ok(())
    }

    // ---------------------------------------------------------------- VMs

    /// Creates a VM and its (empty) target.
    pub fn create_vm(&self, req: CreateVm) -> DepotResult<VmView> {
        check_name("VM", &req.name).map_err(bad)?;
        check_chap(&req.chap)?;
        let mut st = self.lock();
        if st.catalog.vms.contains_key(&req.name) {
            return Err(DepotError::Conflict {
                kind: "VM",
                name: req.name,
            });
        }
        let rec = VmRecord {
            name: req.name.clone(),
            allowed_initiators: req.allowed_initiators,
            chap: req.chap,
            next_lun: 0,
        };
        st.catalog.vms.insert(rec.name.clone(), rec.clone());
        if let Err(e) = self.save(&st) {
            st.catalog.vms.remove(&rec.name);
            return Err(e);
        }
        self.add_target(&mut st, &rec)?;
        tracing::info!(vm = %rec.name, "VM created");
        Ok(self.vm_view(&st, &rec))
    }

    fn vm_view(&self, st: &State, vm: &VmRecord) -> VmView {
        VmView {
            name: vm.name.clone(),
            target: target_name(&vm.name),
            allowed_initiators: vm.allowed_initiators.clone(),
            chap: vm.chap.is_some(),
            mutual_chap: vm.chap.as_ref().is_some_and(|c| c.target_user.is_some()),
            vdisks: st
                .catalog
                .vm_disks(&vm.name)
                .iter()
                .map(|d| d.name.clone())
                .collect(),
            sessions: self.targets.session_count(&target_name(&vm.name)),
        }
    }

    /// Lists VMs.
    pub fn list_vms(&self) -> Vec<VmView> {
        let st = self.lock();
        st.catalog
            .vms
            .values()
            .map(|v| self.vm_view(&st, v))
            .collect()
    }

    /// Shows one VM.
    pub fn get_vm(&self, name: &str) -> DepotResult<VmView> {
        let st = self.lock();
        let v = st
            .catalog
            .vms
            .get(name)
            .ok_or_else(|| not_found("VM", name))?;
        Ok(self.vm_view(&st, v))
    }

    /// Deletes a VM without vDisks and without logged-in sessions.
    pub fn delete_vm(&self, name: &str) -> DepotResult<()> {
        let mut st = self.lock();
        if !st.catalog.vms.contains_key(name) {
            return Err(not_found("VM", name));
        }
        let sessions = self.targets.session_count(&target_name(name));
        if sessions > 0 {
            return Err(DepotError::InUse(format!(
                "VM {name:?} has {sessions} logged-in iSCSI session(s); log them out first"
            )));
        }
        let disks: Vec<String> = st
            .catalog
            .vm_disks(name)
            .iter()
            .map(|d| d.name.clone())
            .collect();
        if !disks.is_empty() {
            return Err(DepotError::InUse(format!(
                "VM {name:?} still has vDisks {}; delete them first",
                disks.join(", ")
            )));
        }
        let rec = st.catalog.vms.remove(name);
        if let Err(e) = self.save(&st) {
            if let Some(r) = rec {
                st.catalog.vms.insert(name.to_string(), r);
            }
            return Err(e);
        }
        if let Err(e) = self.targets.remove_target(&target_name(name), true) {
            tracing::warn!(vm = name, error = %e, "removing the target");
        }
        st.scsi.remove(name);
        self.metrics.sessions.remove_label_values(&[name]).ok();
        tracing::info!(vm = name, "VM deleted");
        Ok(())
    }

    // ------------------------------------------------------------- vDisks

    fn vdisk_view(&self, st: &State, d: &VDiskRecord) -> VDiskView {
        let live = st.disks.get(&d.name);
        let (size, snapshots) = match live {
            Some(l) => (
                l.metered.num_blocks() * u64::from(l.metered.block_size()),
                l.volume.as_ref().map_or(0, |v| {
                    v.list_snapshots()
                        .iter()
                        .filter(|s| !s.name.starts_with('@'))
                        .count()
                }),
            ),
            None => (d.size_bytes, 0),
        };
        VDiskView {
            name: d.name.clone(),
            vm: d.vm.clone(),
            lun: d.lun,
            kind: d.kind,
            vpool: d.vpool.clone(),
            size_bytes: size,
            block_size: d.block_size,
            read_only: d.read_only,
            template: d.template,
            origin: d.origin.clone(),
            serial: d.identity.clone(),
            target: target_name(&d.vm),
            snapshots,
            online: live.is_some(),
        }
    }

    /// Lists vDisks (of one VM when `vm` is given).
    pub fn list_vdisks(&self, vm: Option<&str>) -> DepotResult<Vec<VDiskView>> {
        let st = self.lock();
        if let Some(vm) = vm
            && !st.catalog.vms.contains_key(vm)
        {
            return Err(not_found("VM", vm));
        }
        let mut v: Vec<&VDiskRecord> = st
            .catalog
            .vdisks
            .values()
            .filter(|d| vm.is_none_or(|vm| d.vm == vm))
            .collect();
        v.sort_by(|a, b| (&a.vm, a.lun).cmp(&(&b.vm, b.lun)));
        Ok(v.into_iter().map(|d| self.vdisk_view(&st, d)).collect())
    }

    /// Shows one vDisk.
    pub fn get_vdisk(&self, name: &str) -> DepotResult<VDiskView> {
        let st = self.lock();
        let d = st
            .catalog
            .vdisks
            .get(name)
            .ok_or_else(|| not_found("vDisk", name))?;
        Ok(self.vdisk_view(&st, d))
    }

    /// Creates a vDisk — empty, a clone of a snapshot, or a clone of a
    /// template — and puts it on the next LUN of its VM (logged-in
    /// initiators get REPORTED LUNS DATA HAS CHANGED).
    pub fn create_vdisk(&self, req: CreateVDisk) -> DepotResult<VDiskView> {
        self.create_vdisk_inner(req, None, None, None)
    }

    /// `create_vdisk` with a configuration-declared name, raw path and
    /// identity (the bootstrap of `[[vm.disk]]`).
    fn create_vdisk_inner(
        &self,
        req: CreateVDisk,
        config_name: Option<String>,
        raw_path: Option<PathBuf>,
        identity: Option<Identity>,
    ) -> DepotResult<VDiskView> {
        check_name("vDisk", &req.name).map_err(bad)?;
        let mut st = self.lock();
        if st.catalog.vdisks.contains_key(&req.name) {
            return Err(DepotError::Conflict {
                kind: "vDisk",
                name: req.name,
            });
        }
        let next_lun = st
            .catalog
            .vms
            .get(&req.vm)
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
                .vdisks
                .get(src)
                .ok_or_else(|| not_found("vDisk", src))?;
            if s.kind != VDiskKind::Engine {
                return Err(bad(format!(
                    "{src:?} is a raw vDisk; only engine vDisks have snapshots"
                )));
            }
            if req.template.is_some() && !s.template {
                return Err(bad(format!(
                    "{src:?} is not a template; mark it with `depot vdisk template {src}`"
                )));
            }
            let p = s.vpool.clone().unwrap_or_else(|| DEFAULT_VPOOL.into());
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
            .and_then(|p| st.catalog.vpools.get(p))
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
        let identity = identity.unwrap_or_else(|| Identity(rand::random()));
        let path = match kind {
            VDiskKind::Raw => Some(raw_path.unwrap_or_else(|| {
                self.data_dir
                    .join("vdisks")
                    .join(format!("{}.img", req.name))
            })),
            VDiskKind::Engine => None,
        };
        // Storage first.
        let (size_bytes, block_size) = match kind {
            VDiskKind::Engine => {
                let pname = vpool.clone().unwrap_or_else(|| DEFAULT_VPOOL.into());
                let pool = st
                    .pools
                    .get(&pname)
                    .ok_or_else(|| {
                        if st.catalog.vpools.contains_key(&pname) {
                            DepotError::Unavailable(format!("vPool {pname:?} is offline"))
                        } else {
                            not_found("vPool", &pname)
                        }
                    })?
                    .clone();
                let v = match &source {
                    None => pool.create_volume(&req.name, size.unwrap_or(0), block_size)?,
                    Some((src, snap)) => {
                        let v = pool.clone_volume(src, snap.as_deref(), &req.name)?;
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
        };
        let rec = VDiskRecord {
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
            path,
            identity: format!("{:032x}", identity.0),
            template: false,
            origin: req
                .from
                .clone()
                .or_else(|| req.template.as_ref().map(|t| format!("template:{t}"))),
            config_name,
        };
        st.catalog.vdisks.insert(rec.name.clone(), rec.clone());
        if let Some(vm) = st.catalog.vms.get_mut(&req.vm) {
            vm.next_lun = next_lun + 1;
        }
        let undo = |st: &mut State| {
            st.catalog.vdisks.remove(&rec.name);
            if let Some(vm) = st.catalog.vms.get_mut(&rec.vm) {
                vm.next_lun = next_lun;
            }
            if let Some(p) = rec.vpool.as_ref().and_then(|p| st.pools.get(p)) {
                let _ = p.delete_volume(&rec.name);
            }
        };
        if let Err(e) = self.save(&st) {
            undo(&mut st);
            return Err(e);
        }
        if let Err(e) = self.attach(&mut st, &rec, true) {
            undo(&mut st);
            let _ = self.save(&st);
            return Err(e);
        }
        tracing::info!(vm = %rec.vm, vdisk = %rec.name, lun = rec.lun, kind = %rec.kind, size = rec.size_bytes, origin = ?rec.origin, "vDisk created");
        Ok(self.vdisk_view(&st, &rec))
    }

    fn refuse_if_logged_in(&self, vm: &str, what: &str) -> DepotResult<()> {
        let sessions = self.targets.session_count(&target_name(vm));
        if sessions > 0 {
            return Err(DepotError::InUse(format!(
                "{what}: VM {vm:?} has {sessions} logged-in iSCSI session(s); log them out first"
            )));
        }
        Ok(())
    }

    /// Deletes a vDisk. Refused while its VM has logged-in sessions or
    /// while clones depend on its snapshots.
    pub fn delete_vdisk(&self, name: &str) -> DepotResult<()> {
        let mut st = self.lock();
        let rec = st
            .catalog
            .vdisks
            .get(name)
            .cloned()
            .ok_or_else(|| not_found("vDisk", name))?;
        self.refuse_if_logged_in(&rec.vm, &format!("vDisk {name:?} is in use"))?;
        if let Some(v) = st.disks.get(name).and_then(|l| l.volume.as_ref()) {
            let clones: usize = v.list_snapshots().iter().map(|s| s.clones).sum();
            if clones > 0 {
                return Err(DepotError::InUse(format!(
                    "vDisk {name:?} has {clones} clone(s) made from its snapshots; delete them first"
                )));
            }
        }
        st.catalog.vdisks.remove(name);
        if let Err(e) = self.save(&st) {
            st.catalog.vdisks.insert(name.to_string(), rec);
            return Err(e);
        }
        if let Some(scsi) = st.scsi.get(&rec.vm) {
            scsi.remove_lun(rec.lun);
        }
        let live = st.disks.remove(name);
        if let Some(l) = &live
            && let Err(e) = l.metered.flush()
        {
            tracing::warn!(vm = %rec.vm, vdisk = name, error = %e, "flush before delete");
        }
        drop(live);
        match rec.kind {
            VDiskKind::Engine => {
                let pool = rec.vpool.as_deref().and_then(|p| st.pools.get(p));
                if let Some(pool) = pool
                    && let Err(e) = pool.delete_volume(name)
                {
                    tracing::error!(vm = %rec.vm, vdisk = name, error = %e, "engine delete failed after the catalog entry was removed; scrub will reclaim it");
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
        self.metrics.forget_vdisk(&rec.vm, name);
        tracing::info!(vm = %rec.vm, vdisk = name, "vDisk deleted");
        Ok(())
    }

    /// Grows a vDisk; logged-in initiators get CAPACITY DATA HAS CHANGED.
    pub fn resize_vdisk(&self, name: &str, size: u64) -> DepotResult<VDiskView> {
        let mut st = self.lock();
        let rec = st
            .catalog
            .vdisks
            .get(name)
            .cloned()
            .ok_or_else(|| not_found("vDisk", name))?;
        let live = st
            .disks
            .get(name)
            .ok_or_else(|| DepotError::Unavailable(format!("vDisk {name:?} is offline")))?;
        let cur = live.metered.num_blocks() * u64::from(live.metered.block_size());
        if size < cur {
            return Err(bad(format!(
                "vDisks only grow: {size} bytes is less than the current {cur}"
            )));
        }
        if !size.is_multiple_of(u64::from(rec.block_size)) {
            return Err(bad(format!(
                "size must be a multiple of {} bytes",
                rec.block_size
            )));
        }
        if size == cur {
            return Ok(self.vdisk_view(&st, &rec));
        }
        if let Some(v) = &live.volume {
            v.resize(size)?;
        } else if let Some(f) = &live.raw {
            f.grow(size)
                .map_err(|e| DepotError::io(format!("growing {name}"), e))?;
        }
        live.metered.resized();
        live.lu.capacity_changed();
        if let Some(r) = st.catalog.vdisks.get_mut(name) {
            r.size_bytes = size;
        }
        self.save(&st)?;
        tracing::info!(vm = %rec.vm, vdisk = name, from = cur, to = size, "vDisk grown");
        let rec = st.catalog.vdisks.get(name).cloned().unwrap_or(rec);
        Ok(self.vdisk_view(&st, &rec))
    }

    fn engine_volume(&self, st: &State, name: &str) -> DepotResult<Arc<Volume>> {
        let rec = st
            .catalog
            .vdisks
            .get(name)
            .ok_or_else(|| not_found("vDisk", name))?;
        if rec.kind != VDiskKind::Engine {
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
        if let Some(r) = st.catalog.vdisks.get_mut(name) {
            r.template = on;
        }
        self.save(&st)?;
        tracing::info!(vdisk = name, template = on, "template flag set");
        let rec = st
            .catalog
            .vdisks
            .get(name)
            .cloned()
            .ok_or_else(|| not_found("vDisk", name))?;
        Ok(self.vdisk_view(&st, &rec))
    }

    // ---------------------------------------------------------- snapshots

    /// Creates a snapshot.
    pub fn create_snapshot(&self, vdisk: &str, name: Option<String>) -> DepotResult<SnapshotView> {
        let st = self.lock();
        let v = self.engine_volume(&st, vdisk)?;
        let name = name.unwrap_or_else(|| {
            format!(
                "snap-{}",
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs())
            )
        });
        check_name("snapshot", &name).map_err(bad)?;
        let s = v.create_snapshot(&name)?;
        tracing::info!(vdisk, snapshot = %name, "snapshot created");
        Ok(SnapshotView {
            name: s.name,
            created_unix: s.created_unix,
            on_backend: s.on_backend,
            clones: s.clones,
        })
    }

    /// Lists a vDisk's snapshots, oldest first (internal ones hidden).
    pub fn list_snapshots(&self, vdisk: &str) -> DepotResult<Vec<SnapshotView>> {
        let st = self.lock();
        let v = self.engine_volume(&st, vdisk)?;
        Ok(v.list_snapshots()
            .into_iter()
            .filter(|s| !s.name.starts_with('@'))
            .map(|s| SnapshotView {
                name: s.name,
                created_unix: s.created_unix,
                on_backend: s.on_backend,
                clones: s.clones,
            })
            .collect())
    }

    /// Deletes a snapshot; refused while clones depend on it.
    pub fn delete_snapshot(&self, vdisk: &str, snap: &str) -> DepotResult<()> {
        let st = self.lock();
        let v = self.engine_volume(&st, vdisk)?;
        if let Some(s) = v.list_snapshots().iter().find(|s| s.name == snap)
            && s.clones > 0
        {
            return Err(DepotError::InUse(format!(
                "snapshot {vdisk}@{snap} has {} clone(s); delete them first",
                s.clones
            )));
        }
        v.delete_snapshot(snap)?;
        tracing::info!(vdisk, snapshot = snap, "snapshot deleted");
        Ok(())
    }

    /// Rolls a vDisk back to a snapshot; refused while its VM is logged in
    /// (the data would change under the initiator's cache).
    pub fn rollback(&self, vdisk: &str, snap: &str) -> DepotResult<()> {
        let st = self.lock();
        let v = self.engine_volume(&st, vdisk)?;
        let vm = st
            .catalog
            .vdisks
            .get(vdisk)
            .map(|d| d.vm.clone())
            .unwrap_or_default();
        self.refuse_if_logged_in(&vm, &format!("rolling back {vdisk:?}"))?;
        v.rollback(snap)?;
        tracing::info!(vm = %vm, vdisk, snapshot = snap, "rolled back");
        Ok(())
    }

    // ---------------------------------------------------------- bootstrap

    /// Ensures a configuration-declared VM and its disks exist (created when
    /// missing, never deleted or changed). A declared disk keeps its name
    /// when no other vDisk has (or another declared VM declares) that name,
    /// else it is named `<vm>-<disk>`; it is found again on later starts by
    /// (VM, declared name). Raw ones keep their image path and identity file.
    pub fn ensure_declared(
        &self,
        cfg: &crate::config::Config,
        vm: &crate::config::Vm,
    ) -> DepotResult<()> {
        let exists = self.lock().catalog.vms.contains_key(&vm.name);
        if !exists {
            self.create_vm(CreateVm {
                name: vm.name.clone(),
                allowed_initiators: vm.allowed_initiators.clone(),
                chap: vm.chap.as_ref().map(|c| ChapSpec {
                    user: c.initiator.0.clone(),
                    secret: c.initiator.1.clone(),
                    target_user: c.target.as_ref().map(|t| t.0.clone()),
                    target_secret: c.target.as_ref().map(|t| t.1.clone()),
                }),
            })?;
        }
        for d in &vm.disks {
            let name = {
                let st = self.lock();
                let known =
                    st.catalog.vdisks.values().any(|r| {
                        r.vm == vm.name && r.config_name.as_deref() == Some(d.name.as_str())
                    });
                if known {
                    continue;
                }
                let shared = cfg
                    .vms
                    .iter()
                    .any(|o| o.name != vm.name && o.disks.iter().any(|x| x.name == d.name));
                if shared || st.catalog.vdisks.contains_key(&d.name) {
                    declared_name(&vm.name, &d.name)
                } else {
                    d.name.clone()
                }
            };
            let id = crate::identity::load_or_create(&cfg.data_dir, &vm.name, &d.name)
                .map_err(|e| DepotError::Internal(format!("{e:#}")))?;
            let req = CreateVDisk {
                name: name.clone(),
                vm: vm.name.clone(),
                size: Some(SizeSpec::Bytes(d.size)),
                vpool: d.vpool.clone(),
                kind: Some(d.kind),
                block_size: Some(d.block_size),
                read_only: d.read_only,
                ..Default::default()
            };
            let raw = (d.kind == VDiskKind::Raw).then(|| d.path.clone());
            self.create_vdisk_inner(req, Some(d.name.clone()), raw, Some(id))?;
        }
        Ok(())
    }

    // ------------------------------------------------------------ metrics

    /// Samples pool and session numbers into the metrics and renders them.
    pub fn render_metrics(&self) -> String {
        let m = &self.metrics;
        {
            let st = self.lock();
            let mut logical: BTreeMap<&str, u64> = BTreeMap::new();
            for d in st.catalog.vdisks.values() {
                if let Some(p) = &d.vpool {
                    *logical.entry(p.as_str()).or_default() +=
                        st.disks.get(&d.name).map_or(d.size_bytes, |l| {
                            l.metered.num_blocks() * u64::from(l.metered.block_size())
                        });
                }
            }
            for (name, pool) in &st.pools {
                let s = pool.stats();
                let l = [name.as_str()];
                let buffers = st
                    .catalog
                    .vpools
                    .get(name)
                    .map_or(1, |p| p.policy.write_buffer_bytes)
                    .saturating_mul(s.volumes_open.max(1) as u64);
                m.vpool_write_buffer_fill
                    .with_label_values(&l)
                    .set(s.bytes_waiting_to_ship as f64 / buffers.max(1) as f64);
                m.vpool_waiting
                    .with_label_values(&l)
                    .set(i64::try_from(s.bytes_waiting_to_ship).unwrap_or(i64::MAX));
                Metrics::set_counter(
                    &m.vpool_upload_errors.with_label_values(&l),
                    s.backend_errors,
                );
                Metrics::set_counter(&m.vpool_uploaded.with_label_values(&l), s.bytes_uploaded);
                Metrics::set_counter(
                    &m.vpool_relocated.with_label_values(&l),
                    s.relocated_clusters,
                );
                Metrics::set_counter(
                    &m.vpool_rewritten.with_label_values(&l),
                    s.rewritten_clusters,
                );
                Metrics::set_counter(&m.vpool_dropped.with_label_values(&l), s.dropped_clusters);
                Metrics::set_counter(
                    &m.vpool_throttle_seconds.with_label_values(&l),
                    s.throttle_wait.as_secs_f64(),
                );
                m.vpool_hit_ratio
                    .with_label_values(&l)
                    .set(s.read_cache_hit_ratio);
                m.vpool_dedup_ratio
                    .with_label_values(&l)
                    .set(s.read_cache_dedup_ratio);
                m.vpool_logical.with_label_values(&l).set(
                    i64::try_from(logical.get(name.as_str()).copied().unwrap_or(0))
                        .unwrap_or(i64::MAX),
                );
                m.vpool_flash
                    .with_label_values(&l)
                    .set(i64::try_from(s.flash_bytes).unwrap_or(i64::MAX));
                m.vpool_backend
                    .with_label_values(&l)
                    .set(i64::try_from(s.backend_bytes_estimate).unwrap_or(i64::MAX));
            }
            let mut per: BTreeMap<String, i64> =
                st.catalog.vms.keys().map(|k| (k.clone(), 0)).collect();
            for s in self.targets.sessions() {
                if let Some(vm) = s.target.strip_prefix(IQN_PREFIX)
                    && let Some(c) = per.get_mut(vm)
                {
                    *c += 1;
                }
            }
            for (vm, n) in per {
                m.sessions.with_label_values(&[vm.as_str()]).set(n);
            }
        }
        m.render()
    }

    // ----------------------------------------------------------- shutdown

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

/// The catalog name of disk `disk` declared under VM `vm` in the
/// configuration file.
pub fn declared_name(vm: &str, disk: &str) -> String {
    format!("{vm}-{disk}")
}
