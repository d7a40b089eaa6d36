//! VMs and disks the configuration file declares (`[[vm]]`, `[[vm.disk]]`),
//! as plain create requests: `depot serve` turns its configuration into
//! [`DeclaredVm`]s and the manager makes sure each exists.
//!
//! Invariants: a declared VM or disk is created when missing and never
//! deleted or changed. A declared disk keeps its name when no other vDisk
//! has it and no other declared VM declares it, else it is named
//! `<vm>-<disk>`; it is found again on later starts by (VM, declared name).
//! Its identity comes from `<data_dir>/identity/<vm>/<disk>.id`, and a raw
//! one keeps the image path given to it.

use std::path::PathBuf;

use super::Manager;
use super::vdisk::Declared;
use crate::error::DepotResult;
use crate::identity;
use crate::model::{CreateVDisk, CreateVm, VDiskKind};

/// A VM declared in the configuration file.
#[derive(Debug, Clone)]
pub struct DeclaredVm {
    /// The VM, as it is created when missing.
    pub vm: CreateVm,
    /// Its disks, LUN order.
    pub disks: Vec<DeclaredDisk>,
}

/// A disk declared under a VM.
#[derive(Debug, Clone)]
pub struct DeclaredDisk {
    /// The vDisk as it is created when missing; `name` is the declared name
    /// (unique within the VM) and `vm` is the declaring VM.
    pub create: CreateVDisk,
    /// The image file of a raw disk.
    pub raw_path: PathBuf,
}

/// The catalog name of disk `disk` declared under VM `vm` when `disk`
/// alone is taken.
pub fn declared_name(vm: &str, disk: &str) -> String {
    format!("{vm}-{disk}")
}

impl Manager {
    /// Ensures declared VM `vm` and its disks exist (created when missing,
    /// never deleted or changed). `all` is every declared VM (`vm` among
    /// them): a disk name another declared VM declares too is taken.
    pub fn ensure_declared(&self, vm: &DeclaredVm, all: &[DeclaredVm]) -> DepotResult<()> {
        let vm_name = &vm.vm.name;
        let exists = self.lock().catalog.vm(vm_name).is_some();
        if !exists {
            self.create_vm(vm.vm.clone())?;
        }
        for d in &vm.disks {
            let declared = &d.create.name;
            let name = {
                let st = self.lock();
                let known = st.catalog.vdisks().any(|r| {
                    r.info.vm == *vm_name && r.config_name.as_deref() == Some(declared.as_str())
                });
                if known {
                    continue;
                }
                let shared = all.iter().any(|o| {
                    o.vm.name != *vm_name && o.disks.iter().any(|x| x.create.name == *declared)
                });
                if shared || st.catalog.vdisk(declared).is_some() {
                    declared_name(vm_name, declared)
                } else {
                    declared.clone()
                }
            };
            let id = identity::load_or_create(&self.data_dir, vm_name, declared)?;
            let req = CreateVDisk {
                name,
                vm: vm_name.clone(),
                ..d.create.clone()
            };
            let raw_path = (req.kind == Some(VDiskKind::Raw)).then(|| d.raw_path.clone());
            self.create_vdisk_as(
                req,
                Declared {
                    config_name: Some(declared.clone()),
                    raw_path,
                    identity: Some(id),
                },
            )?;
        }
        Ok(())
    }
}
