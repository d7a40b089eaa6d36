//! vPools: turning a record into the engine's configuration, opening the
//! pool, and create/list/show/delete.
//!
//! Invariants: a vPool is opened before the catalog names it; a vPool is
//! deleted only when no engine vDisk lives in it, and its backend data is
//! left in place.

use std::sync::Arc;
use std::time::Duration;

use depot_engine::name::check_name;
use depot_engine::{BackendConfig, VPool, VPoolConfig};

use super::{Manager, State, bad, not_found};
use crate::error::{DepotError, DepotResult};
use crate::model::{CreateVPool, VDiskKind, VPoolRecord, VPoolView};

/// The engine configuration of vPool record `p`; `flash` overrides the
/// record's cache directory (a clustered router's own).
fn pool_config(p: &VPoolRecord, flash: Option<std::path::PathBuf>) -> DepotResult<VPoolConfig> {
    let cache_dir = flash
        .or_else(|| p.cache_dirs.first().cloned())
        .ok_or_else(|| bad("a vPool needs a flash cache directory"))?;
    let mut cfg = VPoolConfig::new(p.name.clone(), p.backend.clone(), cache_dir);
    cfg.read_cache_bytes = p.policy.read_cache_bytes;
    cfg.write_buffer_bytes = p.policy.write_buffer_bytes;
    cfg.keep_shipped_bytes = p.policy.write_buffer_bytes;
    cfg.container_bytes = p.policy.container_bytes;
    cfg.ship_interval = Duration::from_secs(p.policy.ship_interval_secs.max(1));
    cfg.validate()?;
    Ok(cfg)
}

/// The engine vDisks of vPool `pool`, in name order.
fn pool_vdisks(st: &State, pool: &str) -> Vec<String> {
    st.catalog
        .vdisks()
        .filter(|d| d.info.kind == VDiskKind::Engine && d.info.vpool.as_deref() == Some(pool))
        .map(|d| d.info.name.clone())
        .collect()
}

impl Manager {
    /// Opens the engine pool of record `p`.
    pub(super) fn open_pool(&self, p: &VPoolRecord) -> DepotResult<Arc<VPool>> {
        // A clustered router keeps every vPool's flash under its own data
        // directory (the record is shared by all routers).
        let flash = self
            .cluster
            .as_ref()
            .map(|_| self.data_dir.join("vpools").join(&p.name).join("flash"));
        let cfg = pool_config(p, flash)?;
        Ok(VPool::open(cfg, self.rt.clone())?)
    }

    /// Creates a vPool (and opens it).
    pub fn create_vpool(&self, req: CreateVPool) -> DepotResult<VPoolView> {
        check_name("vPool", &req.name).map_err(bad)?;
        let mut st = self.lock();
        if st.catalog.vpool(&req.name).is_some() {
            return Err(DepotError::Conflict {
                kind: "vPool",
                name: req.name,
            });
        }
        let base = self.data_dir.join("vpools").join(&req.name);
        let backend = req.backend.unwrap_or_else(|| BackendConfig::Local {
            path: base.join("backend"),
        });
        if self.cluster.is_some() && !req.cache_dirs.is_empty() {
            return Err(bad(
                "in a cluster every router keeps a vPool's flash cache under its own data directory; leave cache_dirs out",
            ));
        }
        let cache_dirs = if req.cache_dirs.is_empty() {
            vec![base.join("flash")]
        } else {
            req.cache_dirs
        };
        // In a cluster a local directory is one router's: only it serves the
        // vPool. An S3 vPool is every router's.
        let router = match (&self.cluster, &backend) {
            (Some(node), BackendConfig::Local { .. }) => Some(node.name().to_string()),
            _ => None,
        };
        let rec = VPoolRecord {
            name: req.name.clone(),
            backend,
            cache_dirs,
            policy: req.policy.unwrap_or_default(),
            router,
        };
        if rec.policy.block_size != 512 && rec.policy.block_size != 4096 {
            return Err(bad("policy block_size must be 512 or 4096"));
        }
        let pool = self.open_pool(&rec)?;
        // An S3 vPool must work now: a missing bucket or wrong credentials
        // are an answer to this request, not a failure of the first vDisk.
        // The probe also finds out how the store fences a deposed owner.
        if let BackendConfig::S3 {
            endpoint, bucket, ..
        } = &rec.backend
            && let Err(e) = pool.probe_fencing()
        {
            let _ = pool.shutdown();
            return Err(bad(format!(
                "cannot use S3 bucket {bucket:?} at {}: {e}",
                endpoint.as_deref().unwrap_or("AWS")
            )));
        }
        if let Err(e) = st.catalog.insert_vpool(rec.clone()) {
            let _ = pool.shutdown();
            return Err(e);
        }
        st.pools.insert(rec.name.clone(), pool);
        tracing::info!(vpool = %rec.name, "vPool created");
        Ok(vpool_view(&st, &rec))
    }

    /// Lists vPools.
    pub fn list_vpools(&self) -> Vec<VPoolView> {
        let st = self.lock();
        st.catalog.vpools().map(|p| vpool_view(&st, p)).collect()
    }

    /// Shows one vPool.
    pub fn get_vpool(&self, name: &str) -> DepotResult<VPoolView> {
        let st = self.lock();
        let p = st
            .catalog
            .vpool(name)
            .ok_or_else(|| not_found("vPool", name))?;
        Ok(vpool_view(&st, p))
    }

    /// Deletes an empty vPool from the catalog and closes it (its backend
    /// data is left in place).
    pub fn delete_vpool(&self, name: &str) -> DepotResult<()> {
        let mut st = self.lock();
        if st.catalog.vpool(name).is_none() {
            return Err(not_found("vPool", name));
        }
        let users = pool_vdisks(&st, name);
        if !users.is_empty() {
            return Err(DepotError::InUse(format!(
                "vPool {name:?} still holds vDisks {}; delete them first",
                users.join(", ")
            )));
        }
        st.catalog.remove_vpool(name)?;
        if let Some(pool) = st.pools.remove(name)
            && let Err(e) = pool.shutdown()
        {
            tracing::warn!(vpool = name, error = %e, "vPool shutdown reported an error");
        }
        self.metrics.forget_vpool(name);
        tracing::info!(vpool = name, "vPool deleted");
        Ok(())
    }
}

/// The view of vPool `p`: its record without the secret, its vDisks and
/// the open pool's numbers (zero when offline).
fn vpool_view(st: &State, p: &VPoolRecord) -> VPoolView {
    let stats = st.pools.get(&p.name).map(|pool| pool.stats());
    VPoolView {
        info: p.public(),
        vdisks: pool_vdisks(st, &p.name),
        online: stats.is_some(),
        bytes_waiting_to_ship: stats.as_ref().map_or(0, |s| s.bytes_waiting_to_ship),
        flash_bytes: stats.as_ref().map_or(0, |s| s.flash_bytes),
        backend_bytes: stats.as_ref().map_or(0, |s| s.backend_bytes_estimate),
        fencing: match &p.backend {
            BackendConfig::S3 { .. } => st.pools.get(&p.name).map(|pool| pool.fencing_mode()),
            BackendConfig::Local { .. } => None,
        },
    }
}
