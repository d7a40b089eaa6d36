//! The catalog: every vPool, VM and vDisk of this node, persisted as one
//! JSON document `<data_dir>/catalog.json`.
//!
//! Invariants: the file on disk is always a complete catalog — it is
//! replaced atomically (write a temporary file, fsync it, rename it over the
//! old one, fsync the directory), so a crash leaves the old or the new
//! catalog, never a mix. Storage is created before the catalog names it and
//! the catalog entry is removed before storage is destroyed, so a crash in
//! between leaves at worst an unreferenced volume or file, never a catalog
//! entry without storage. Unknown fields are ignored on load so a rolled-back
//! binary can still read a newer catalog.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{DepotError, DepotResult};
use crate::model::{VDiskRecord, VPoolRecord, VmRecord};

/// Current catalog format version.
pub const VERSION: u32 = 1;

/// All persisted objects.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Catalog {
    /// Format version.
    pub version: u32,
    /// vPools by name.
    #[serde(default)]
    pub vpools: BTreeMap<String, VPoolRecord>,
    /// VMs by name.
    #[serde(default)]
    pub vms: BTreeMap<String, VmRecord>,
    /// vDisks by name.
    #[serde(default)]
    pub vdisks: BTreeMap<String, VDiskRecord>,
}

impl Default for Catalog {
    fn default() -> Self {
        Catalog {
            version: VERSION,
            vpools: BTreeMap::new(),
            vms: BTreeMap::new(),
            vdisks: BTreeMap::new(),
        }
    }
}

/// Path of the catalog file.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join("catalog.json")
}

impl Catalog {
    /// Loads the catalog (an empty one when the file does not exist yet).
    pub fn load(data_dir: &Path) -> DepotResult<Catalog> {
        let p = path(data_dir);
        let text = match std::fs::read(&p) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Catalog::default()),
            Err(e) => return Err(DepotError::io(format!("reading {}", p.display()), e)),
        };
        let c: Catalog = serde_json::from_slice(&text)
            .map_err(|e| DepotError::Internal(format!("corrupt catalog {}: {e}", p.display())))?;
        if c.version > VERSION {
            return Err(DepotError::Internal(format!(
                "catalog {} has version {}; this depot understands up to {VERSION}",
                p.display(),
                c.version
            )));
        }
        Ok(c)
    }

    /// Writes the catalog atomically and durably.
    pub fn save(&self, data_dir: &Path) -> DepotResult<()> {
        let p = path(data_dir);
        let tmp = p.with_extension("json.tmp");
        let body = serde_json::to_vec_pretty(self)
            .map_err(|e| DepotError::Internal(format!("encoding the catalog: {e}")))?;
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&body)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &p)?;
            std::fs::File::open(data_dir)?.sync_all()
        };
        write().map_err(|e| DepotError::io(format!("writing {}", p.display()), e))
    }

    /// The vDisks of `vm`, in LUN order.
    pub fn vm_disks(&self, vm: &str) -> Vec<&VDiskRecord> {
        let mut v: Vec<&VDiskRecord> = self.vdisks.values().filter(|d| d.vm == vm).collect();
        v.sort_by_key(|d| d.lun);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{BackendSpec, Policy};

    #[test]
    fn round_trips_atomically() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Catalog::load(dir.path()).unwrap().vpools.is_empty());
        let mut c = Catalog::default();
        c.vpools.insert(
            "default".into(),
            VPoolRecord {
                name: "default".into(),
                backend: BackendSpec::Local {
                    path: Some("/x".into()),
                },
                cache_dirs: vec!["/y".into()],
                policy: Policy::default(),
            },
        );
        c.save(dir.path()).unwrap();
        let back = Catalog::load(dir.path()).unwrap();
        assert_eq!(back.vpools["default"].cache_dirs, vec![PathBuf::from("/y")]);
        assert!(!dir.path().join("catalog.json.tmp").exists());
        std::fs::write(path(dir.path()), b"{not json").unwrap();
        assert!(Catalog::load(dir.path()).is_err());
    }
}
