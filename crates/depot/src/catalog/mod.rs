//! The catalog: every vPool, VM and vDisk, persisted as one JSON document
//! `<data_dir>/catalog.json` on a standalone router, or as one etcd key per
//! record in a cluster ([`cluster`]: compare-and-swap writes, and a mirror
//! the cluster's watch keeps current).
//!
//! This is the one seam between the manager and the persisted records: the
//! manager reads records with the getters and listers here and changes them
//! only through the insert/update/remove methods, one per object kind and
//! change. Each change is applied to a copy of the document, the copy is
//! written, and only then does it replace the in-memory document — so a
//! failed write changes nothing, and a later store with compare-and-swap
//! (etcd) would replace only this module.
//!
//! Invariants: the file on disk is always a complete catalog — it is
//! replaced atomically (write a temporary file, fsync it, rename it over the
//! old one, fsync the directory), so a crash leaves the old or the new
//! catalog, never a mix. Storage is created before the catalog names it and
//! the catalog entry is removed before storage is destroyed (the manager's
//! order), so a crash in between leaves at worst an unreferenced volume or
//! file, never a catalog entry without storage. A vDisk's VM exists and its
//! LUN is below the VM's `next_lun`. Unknown fields are ignored on load so a
//! rolled-back binary can still read a newer catalog.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{DepotError, DepotResult};
use crate::model::{VDiskRecord, VPoolRecord, VmRecord};

/// Current catalog format version.
pub const VERSION: u32 = 1;

/// The persisted document (the file's format).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Document {
    /// Format version.
    version: u32,
    /// vPools by name.
    #[serde(default)]
    vpools: BTreeMap<String, VPoolRecord>,
    /// VMs by name.
    #[serde(default)]
    vms: BTreeMap<String, VmRecord>,
    /// vDisks by name.
    #[serde(default)]
    vdisks: BTreeMap<String, VDiskRecord>,
}

impl Default for Document {
    fn default() -> Self {
        Document {
            version: VERSION,
            vpools: BTreeMap::new(),
            vms: BTreeMap::new(),
            vdisks: BTreeMap::new(),
        }
    }
}

pub mod cluster;

/// All persisted objects of the node, and where they are kept.
#[derive(Debug)]
pub struct Catalog {
    store: Persist,
    doc: Document,
}

/// Where changes are made durable.
#[derive(Debug)]
enum Persist {
    /// `<data_dir>/catalog.json` (a standalone router).
    File(PathBuf),
    /// etcd (a router of a cluster).
    Cluster(Box<cluster::ClusterPersist>),
}

/// Path of the catalog file.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join("catalog.json")
}

fn conflict(kind: &'static str, name: &str) -> DepotError {
    DepotError::Conflict {
        kind,
        name: name.to_string(),
    }
}

fn not_found(kind: &'static str, name: &str) -> DepotError {
    DepotError::NotFound {
        kind,
        name: name.to_string(),
    }
}

impl Catalog {
    /// Loads the catalog under `data_dir` (an empty one when the file does
    /// not exist yet).
    pub fn load(data_dir: &Path) -> DepotResult<Catalog> {
        let p = path(data_dir);
        let text = match std::fs::read(&p) {
            Ok(t) => Some(t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(DepotError::io(format!("reading {}", p.display()), e)),
        };
        let doc = match text {
            None => Document::default(),
            Some(text) => serde_json::from_slice::<Document>(&text).map_err(|e| {
                DepotError::Internal(format!("corrupt catalog {}: {e}", p.display()))
            })?,
        };
        if doc.version > VERSION {
            return Err(DepotError::Internal(format!(
                "catalog {} has version {}; this depot understands up to {VERSION}",
                p.display(),
                doc.version
            )));
        }
        Ok(Catalog {
            store: Persist::File(data_dir.to_path_buf()),
            doc,
        })
    }

    /// A catalog kept in the cluster's etcd, starting from a snapshot of
    /// it at `revision`.
    pub fn clustered(
        persist: cluster::ClusterPersist,
        snapshot: &[depot_cluster::Versioned],
        revision: i64,
    ) -> Self {
        let mut c = Catalog {
            store: Persist::Cluster(Box::new(persist)),
            doc: Document::default(),
        };
        c.reset(snapshot, revision);
        c
    }

    /// Applies `change` to a copy of the document, writes the copy, and
    /// keeps it only when the write succeeded (the one place records
    /// change).
    fn commit(&mut self, change: impl FnOnce(&mut Document) -> DepotResult<()>) -> DepotResult<()> {
        let mut next = self.doc.clone();
        change(&mut next)?;
        match &mut self.store {
            Persist::File(dir) => write(dir, &next)?,
            Persist::Cluster(c) => c.write(&self.doc, &next)?,
        }
        self.doc = next;
        Ok(())
    }

    // ------------------------------------------------------------- vPools

    /// The vPool `name`.
    pub fn vpool(&self, name: &str) -> Option<&VPoolRecord> {
        self.doc.vpools.get(name)
    }

    /// Every vPool, in name order.
    pub fn vpools(&self) -> impl Iterator<Item = &VPoolRecord> {
        self.doc.vpools.values()
    }

    /// Stores a new vPool; a conflict when the name is taken.
    pub fn insert_vpool(&mut self, rec: VPoolRecord) -> DepotResult<()> {
        self.commit(|d| {
            if d.vpools.contains_key(&rec.name) {
                return Err(conflict("vPool", &rec.name));
            }
            d.vpools.insert(rec.name.clone(), rec);
            Ok(())
        })
    }

    /// Removes the vPool `name`.
    pub fn remove_vpool(&mut self, name: &str) -> DepotResult<()> {
        self.commit(|d| {
            d.vpools
                .remove(name)
                .map(drop)
                .ok_or_else(|| not_found("vPool", name))
        })
    }

    // ---------------------------------------------------------------- VMs

    /// The VM `name`.
    pub fn vm(&self, name: &str) -> Option<&VmRecord> {
        self.doc.vms.get(name)
    }

    /// Every VM, in name order.
    pub fn vms(&self) -> impl Iterator<Item = &VmRecord> {
        self.doc.vms.values()
    }

    /// Stores a new VM; a conflict when the name is taken.
    pub fn insert_vm(&mut self, rec: VmRecord) -> DepotResult<()> {
        self.commit(|d| {
            if d.vms.contains_key(&rec.info.name) {
                return Err(conflict("VM", &rec.info.name));
            }
            d.vms.insert(rec.info.name.clone(), rec);
            Ok(())
        })
    }

    /// Removes the VM `name`; refused while vDisks still name it.
    pub fn remove_vm(&mut self, name: &str) -> DepotResult<()> {
        self.commit(|d| {
            if d.vdisks.values().any(|v| v.info.vm == name) {
                return Err(DepotError::InUse(format!("VM {name:?} still has vDisks")));
            }
            d.vms
                .remove(name)
                .map(drop)
                .ok_or_else(|| not_found("VM", name))
        })
    }

    // ------------------------------------------------------------- vDisks

    /// The vDisk `name`.
    pub fn vdisk(&self, name: &str) -> Option<&VDiskRecord> {
        self.doc.vdisks.get(name)
    }

    /// Every vDisk, in name order.
    pub fn vdisks(&self) -> impl Iterator<Item = &VDiskRecord> {
        self.doc.vdisks.values()
    }

    /// The vDisks of `vm`, in LUN order.
    pub fn vm_disks(&self, vm: &str) -> Vec<&VDiskRecord> {
        let mut v: Vec<&VDiskRecord> = self.vdisks().filter(|d| d.info.vm == vm).collect();
        v.sort_by_key(|d| d.info.lun);
        v
    }

    /// Stores a new vDisk and moves its VM's next LUN past the vDisk's
    /// (together, in one write). A conflict when the name is taken; the VM
    /// must exist and the LUN must not have been handed out before.
    pub fn insert_vdisk(&mut self, rec: VDiskRecord) -> DepotResult<()> {
        self.commit(|d| {
            if d.vdisks.contains_key(&rec.info.name) {
                return Err(conflict("vDisk", &rec.info.name));
            }
            let vm = d
                .vms
                .get_mut(&rec.info.vm)
                .ok_or_else(|| not_found("VM", &rec.info.vm))?;
            if rec.info.lun < vm.next_lun {
                return Err(DepotError::Internal(format!(
                    "LUN {} of VM {} was handed out before",
                    rec.info.lun, rec.info.vm
                )));
            }
            vm.next_lun = rec.info.lun + 1;
            d.vdisks.insert(rec.info.name.clone(), rec);
            Ok(())
        })
    }

    /// Replaces the record of an existing vDisk (same name, same VM).
    pub fn update_vdisk(&mut self, rec: VDiskRecord) -> DepotResult<()> {
        self.commit(|d| {
            let cur = d
                .vdisks
                .get_mut(&rec.info.name)
                .ok_or_else(|| not_found("vDisk", &rec.info.name))?;
            if cur.info.vm != rec.info.vm {
                return Err(DepotError::Internal(format!(
                    "vDisk {} cannot move between VMs",
                    rec.info.name
                )));
            }
            *cur = rec;
            Ok(())
        })
    }

    /// Removes the vDisk `name` (its LUN stays used: LUNs are never reused).
    pub fn remove_vdisk(&mut self, name: &str) -> DepotResult<()> {
        self.commit(|d| {
            d.vdisks
                .remove(name)
                .map(drop)
                .ok_or_else(|| not_found("vDisk", name))
        })
    }

    /// Undoes [`Catalog::insert_vdisk`] of a vDisk that never came online:
    /// removes it and gives its LUN back to its VM.
    pub fn retract_vdisk(&mut self, name: &str) -> DepotResult<()> {
        self.commit(|d| {
            let rec = d
                .vdisks
                .remove(name)
                .ok_or_else(|| not_found("vDisk", name))?;
            if let Some(vm) = d.vms.get_mut(&rec.info.vm)
                && vm.next_lun == rec.info.lun + 1
            {
                vm.next_lun = rec.info.lun;
            }
            Ok(())
        })
    }
}

/// Writes `doc` atomically and durably.
fn write(data_dir: &Path, doc: &Document) -> DepotResult<()> {
    let p = path(data_dir);
    let tmp = p.with_extension("json.tmp");
    let body = serde_json::to_vec_pretty(doc)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ChapSpec, Policy, VDiskInfo, VDiskKind, VmInfo};
    use depot_engine::BackendConfig;

    fn pool(name: &str) -> VPoolRecord {
        VPoolRecord {
            name: name.into(),
            backend: BackendConfig::Local { path: "/x".into() },
            cache_dirs: vec!["/y".into()],
            policy: Policy::default(),
            router: None,
        }
    }

    fn vm(name: &str) -> VmRecord {
        VmRecord {
            info: VmInfo {
                name: name.into(),
                allowed_initiators: Vec::new(),
                multipath: false,
                dtl: depot_dtl::Mode::Sync,
            },
            chap: None,
            next_lun: 0,
        }
    }

    fn disk(name: &str, vm: &str, lun: u64) -> VDiskRecord {
        VDiskRecord {
            info: VDiskInfo {
                name: name.into(),
                vm: vm.into(),
                lun,
                kind: VDiskKind::Engine,
                vpool: Some("default".into()),
                size_bytes: 1 << 20,
                block_size: 512,
                read_only: false,
                template: false,
                origin: None,
            },
            path: None,
            identity: format!("{:032x}", 7),
            config_name: None,
        }
    }

    #[test]
    fn round_trips_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Catalog::load(dir.path()).unwrap();
        assert!(c.vpools().next().is_none());
        c.insert_vpool(pool("default")).unwrap();
        let back = Catalog::load(dir.path()).unwrap();
        assert_eq!(
            back.vpool("default").unwrap().cache_dirs,
            vec![PathBuf::from("/y")]
        );
        assert!(!dir.path().join("catalog.json.tmp").exists());
        std::fs::write(path(dir.path()), b"{not json").unwrap();
        assert!(Catalog::load(dir.path()).is_err());
    }

    #[test]
    fn each_change_is_persisted_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Catalog::load(dir.path()).unwrap();
        c.insert_vpool(pool("default")).unwrap();
        assert_eq!(c.insert_vpool(pool("default")).unwrap_err().status(), 409);
        c.insert_vm(vm("web1")).unwrap();
        assert_eq!(c.insert_vm(vm("web1")).unwrap_err().status(), 409);
        assert_eq!(
            c.insert_vdisk(disk("d0", "nope", 0)).unwrap_err().status(),
            404
        );
        c.insert_vdisk(disk("d0", "web1", 0)).unwrap();
        c.insert_vdisk(disk("d1", "web1", 1)).unwrap();
        // A LUN is never handed out twice.
        assert!(c.insert_vdisk(disk("d2", "web1", 1)).is_err());
        assert_eq!(c.remove_vm("web1").unwrap_err().status(), 409);
        let mut d0 = c.vdisk("d0").unwrap().clone();
        d0.info.size_bytes = 2 << 20;
        c.update_vdisk(d0).unwrap();
        assert_eq!(
            c.update_vdisk(disk("zz", "web1", 9)).unwrap_err().status(),
            404
        );

        // What the file holds is what memory holds.
        let back = Catalog::load(dir.path()).unwrap();
        assert_eq!(back.vm("web1").unwrap().next_lun, 2);
        assert_eq!(back.vdisk("d0").unwrap().info.size_bytes, 2 << 20);
        let names: Vec<&str> = back
            .vm_disks("web1")
            .iter()
            .map(|d| d.info.name.as_str())
            .collect();
        assert_eq!(names, ["d0", "d1"]);

        // Retracting the newest vDisk gives its LUN back; removing keeps it
        // used.
        c.retract_vdisk("d1").unwrap();
        assert_eq!(c.vm("web1").unwrap().next_lun, 1);
        c.remove_vdisk("d0").unwrap();
        assert_eq!(c.vm("web1").unwrap().next_lun, 1);
        assert_eq!(c.remove_vdisk("d0").unwrap_err().status(), 404);
        c.remove_vm("web1").unwrap();
        c.remove_vpool("default").unwrap();
        let back = Catalog::load(dir.path()).unwrap();
        assert!(back.vms().next().is_none() && back.vpools().next().is_none());
    }

    #[test]
    fn a_failed_write_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let mut c = Catalog::load(&data).unwrap();
        c.insert_vm(vm("web1")).unwrap();
        // The temporary file's name is taken by a directory: the write fails.
        std::fs::create_dir(data.join("catalog.json.tmp")).unwrap();
        assert!(c.insert_vdisk(disk("d0", "web1", 0)).is_err());
        assert!(c.vdisk("d0").is_none());
        assert_eq!(c.vm("web1").unwrap().next_lun, 0);
        assert!(c.remove_vm("web1").is_err());
        assert!(c.vm("web1").is_some());
    }

    /// A catalog exactly as the daemon wrote it before records and views
    /// shared their fields and the backend became the engine's type.
    const CATALOG_V1: &str = include_str!("../testdata/catalog-v1.json");

    #[test]
    fn reads_the_catalog_format_written_before() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(path(dir.path()), CATALOG_V1).unwrap();
        let c = Catalog::load(dir.path()).unwrap();
        let names: Vec<&str> = c.vpools().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["default", "s3pool"]);
        assert_eq!(
            c.vpool("default").unwrap().backend,
            BackendConfig::Local {
                path: "/var/lib/depot/vpools/default/backend".into()
            }
        );
        assert_eq!(
            c.vpool("s3pool").unwrap().backend,
            BackendConfig::S3 {
                endpoint: Some("http://127.0.0.1:9000".into()),
                bucket: "depot".into(),
                region: "us-east-1".into(),
                access_key_id: "AKIA".into(),
                secret_access_key: "s3cret".into(),
                allow_http: true,
            }
        );
        let s3 = c.vpool("s3pool").unwrap();
        assert_eq!(s3.policy.block_size, 4096);
        assert_eq!(s3.policy.container_bytes, 32 << 20);
        assert_eq!(s3.cache_dirs.len(), 2);
        let web1 = c.vm("web1").unwrap();
        assert_eq!(web1.next_lun, 2);
        assert_eq!(
            web1.chap,
            Some(ChapSpec {
                user: "u".into(),
                secret: "initiator-secret".into(),
                target_user: Some("t".into()),
                target_secret: Some("target-secret".into()),
            })
        );
        assert_eq!(
            web1.info.allowed_initiators,
            ["iqn.1993-08.org.debian:01:abc"]
        );
        assert!(c.vm("web2").unwrap().chap.is_none());
        let root1 = c.vdisk("root1").unwrap();
        assert!(root1.info.template);
        assert_eq!(root1.info.vpool.as_deref(), Some("default"));
        assert_eq!(root1.identity, "0123456789abcdef0123456789abcdef");
        assert_eq!(
            c.vdisk("root2").unwrap().info.origin.as_deref(),
            Some("root1@s1")
        );
        let raw = c.vdisk("web1-data").unwrap();
        assert_eq!(raw.info.kind, VDiskKind::Raw);
        assert_eq!(raw.info.lun, 1);
        assert_eq!(raw.info.size_bytes, 64 << 20);
        assert!(raw.info.read_only);
        assert_eq!(
            raw.path.as_deref(),
            Some(Path::new("/var/lib/depot/raw/web1/data.img"))
        );
        assert_eq!(raw.config_name.as_deref(), Some("data"));

        // Written back, the document keeps every field and value (only the
        // order of keys within a vDisk may differ).
        let doc: Document = serde_json::from_str(CATALOG_V1).unwrap();
        let again = serde_json::to_value(&doc).unwrap();
        let before: serde_json::Value = serde_json::from_str(CATALOG_V1).unwrap();
        assert_eq!(again, before);
    }

    #[test]
    fn records_of_older_catalogs_get_defaults() {
        // Catalogs written before templates, origins and declared names.
        let doc: Document = serde_json::from_str(
            r#"{"version":1,"vdisks":{"a":{"name":"a","vm":"v","lun":0,"kind":"raw",
                "vpool":null,"size_bytes":512,"block_size":512,"read_only":false,
                "path":"/a.img","identity":"00"}}}"#,
        )
        .unwrap();
        let a = &doc.vdisks["a"];
        assert!(!a.info.template && a.info.origin.is_none() && a.config_name.is_none());
        assert!(doc.vpools.is_empty() && doc.vms.is_empty());
    }
}
