//! Tests of the manager on a real node in a temporary data directory: the
//! embedded default vPool, raw and engine vDisks, the configuration's
//! declared VMs, and what the catalog holds after each operation.

use std::path::Path;
use std::sync::Arc;

use depot_iscsi_target::TargetRegistry;
use tokio::runtime::Runtime;

use super::*;
use crate::catalog::Catalog;
use crate::metrics::Metrics;
use crate::model::{CreateVDisk, CreateVm, SizeSpec, VDiskKind};

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

fn open(data: &Path, rt: &Runtime) -> Arc<Manager> {
    Manager::open(
        data,
        rt.handle().clone(),
        TargetRegistry::new(),
        Metrics::new(),
        None,
    )
    .unwrap()
}

fn vm(name: &str) -> CreateVm {
    CreateVm {
        name: name.into(),
        allowed_initiators: Vec::new(),
        chap: None,
        multipath: false,
        dtl: None,
    }
}

fn disk(name: &str, vm: &str, kind: VDiskKind) -> CreateVDisk {
    CreateVDisk {
        name: name.into(),
        vm: vm.into(),
        size: Some(SizeSpec::Text("1M".into())),
        kind: Some(kind),
        ..Default::default()
    }
}

fn declared(vm_name: &str, disks: &[&str], data: &Path) -> DeclaredVm {
    DeclaredVm {
        vm: vm(vm_name),
        disks: disks
            .iter()
            .map(|d| DeclaredDisk {
                create: CreateVDisk {
                    block_size: Some(512),
                    ..disk(d, vm_name, VDiskKind::Raw)
                },
                raw_path: data.join("images").join(format!("{vm_name}-{d}.img")),
            })
            .collect(),
    }
}

#[test]
fn vdisks_change_the_catalog_and_the_luns() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let m = open(dir.path(), &rt);
    assert_eq!(m.list_vpools()[0].info.name, DEFAULT_VPOOL);
    m.create_vm(vm("web1")).unwrap();
    assert_eq!(m.create_vm(vm("web1")).unwrap_err().status(), 409);
    let a = m
        .create_vdisk(disk("a", "web1", VDiskKind::Engine))
        .unwrap();
    assert_eq!(
        (a.info.lun, a.info.vpool.as_deref()),
        (0, Some(DEFAULT_VPOOL))
    );
    let b = m.create_vdisk(disk("b", "web1", VDiskKind::Raw)).unwrap();
    assert_eq!(b.info.lun, 1);
    assert!(dir.path().join("vdisks/b.img").exists());
    assert_eq!(m.get_vm("web1").unwrap().vdisks, ["a", "b"]);
    assert_eq!(m.delete_vm("web1").unwrap_err().status(), 409);

    let grown = m.resize_vdisk("b", 2 << 20).unwrap();
    assert_eq!(grown.info.size_bytes, 2 << 20);
    assert_eq!(m.resize_vdisk("b", 1 << 20).unwrap_err().status(), 400);
    m.create_snapshot("a", Some("s1".into())).unwrap();
    let clone = m
        .create_vdisk(CreateVDisk {
            name: "c".into(),
            vm: "web1".into(),
            from: Some("a@s1".into()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(clone.info.origin.as_deref(), Some("a@s1"));
    assert_eq!(m.delete_vdisk("a").unwrap_err().status(), 409);
    m.set_template("a", true).unwrap();

    // The catalog on disk holds what the API shows.
    let c = Catalog::load(dir.path()).unwrap();
    assert_eq!(c.vdisk("b").unwrap().info.size_bytes, 2 << 20);
    assert!(c.vdisk("a").unwrap().info.template);
    assert_eq!(c.vm("web1").unwrap().next_lun, 3);

    m.delete_vdisk("c").unwrap();
    m.delete_vdisk("b").unwrap();
    assert!(!dir.path().join("vdisks/b.img").exists());
    // LUNs are not reused.
    let d = m.create_vdisk(disk("d", "web1", VDiskKind::Raw)).unwrap();
    assert_eq!(d.info.lun, 3);
    assert_eq!(m.delete_vpool(DEFAULT_VPOOL).unwrap_err().status(), 409);
    m.shutdown();
    drop(m);

    // A restart serves the same vDisks on the same LUNs.
    let m = open(dir.path(), &rt);
    let luns: Vec<(String, u64, bool)> = m
        .list_vdisks(Some("web1"))
        .unwrap()
        .into_iter()
        .map(|v| (v.info.name, v.info.lun, v.online))
        .collect();
    assert_eq!(
        luns,
        [("a".to_string(), 0, true), ("d".to_string(), 3, true)]
    );
    assert_eq!(m.list_vdisks(Some("nope")).unwrap_err().status(), 404);
    m.shutdown();
}

#[test]
fn declared_vms_are_created_once_with_their_names_and_identities() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let rt = runtime();
    let m = open(data, &rt);
    // An API-made vDisk already holds the name "data".
    m.create_vm(vm("other")).unwrap();
    m.create_vdisk(disk("data", "other", VDiskKind::Raw))
        .unwrap();

    let all = vec![
        declared("a", &["root", "data"], data),
        declared("b", &["root", "logs"], data),
    ];
    for vm in &all {
        m.ensure_declared(vm, &all).unwrap();
    }
    let names = |m: &Manager, vm: &str| -> Vec<String> {
        m.list_vdisks(Some(vm))
            .unwrap()
            .into_iter()
            .map(|v| v.info.name)
            .collect()
    };
    // "root" is declared twice and "data" is taken: `<vm>-<disk>`; "logs"
    // keeps its name.
    assert_eq!(names(&m, "a"), ["a-root", "a-data"]);
    assert_eq!(names(&m, "b"), ["b-root", "logs"]);
    let c = Catalog::load(data).unwrap();
    let root = c.vdisk("a-root").unwrap();
    assert_eq!(root.config_name.as_deref(), Some("root"));
    assert_eq!(root.path.as_deref(), Some(&*data.join("images/a-root.img")));
    assert!(data.join("images/a-root.img").exists());
    // The identity is the one in the identity file.
    let id = std::fs::read_to_string(data.join("identity/a/root.id")).unwrap();
    assert_eq!(root.identity, id.trim());
    assert_eq!(m.get_vdisk("a-root").unwrap().serial, id.trim());

    // Later starts find them again and change nothing.
    m.shutdown();
    drop(m);
    let m = open(data, &rt);
    for vm in &all {
        m.ensure_declared(vm, &all).unwrap();
    }
    assert_eq!(names(&m, "a"), ["a-root", "a-data"]);
    assert_eq!(names(&m, "b"), ["b-root", "logs"]);
    assert_eq!(Catalog::load(data).unwrap().vm("a").unwrap().next_lun, 2);
    m.shutdown();
}
