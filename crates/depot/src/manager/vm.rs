//! VMs: each is one iSCSI target `iqn.2026-11.io.depot:<vm>` with an ACL
//! and optional (mutual) CHAP; create/list/show/delete.
//!
//! Invariants: a VM's target exists exactly while the VM is in the catalog
//! (built when it is created or the node opens); a VM is deleted only
//! without vDisks and without logged-in sessions. CHAP secrets stay in the
//! record: the view shows only whether CHAP is set.

use std::sync::Arc;

use depot_engine::name::check_name;
use depot_iscsi_proto::chap::Secret;
use depot_iscsi_target::{Access, ChapCredentials};
use depot_scsi::ScsiTarget;

use super::{Manager, State, bad, not_found, target_name};
use crate::error::{DepotError, DepotResult};
use crate::model::{ChapSpec, CreateVm, VmInfo, VmRecord, VmView};

/// The login rules of `vm`'s target.
fn access_of(vm: &VmRecord) -> Access {
    Access {
        allowed_initiators: vm.info.allowed_initiators.clone(),
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

impl Manager {
    /// Builds `vm`'s (empty) target and registers it for logins.
    pub(super) fn add_target(&self, st: &mut State, vm: &VmRecord) -> DepotResult<()> {
        let name = &vm.info.name;
        let scsi = Arc::new(ScsiTarget::new(self.scsi_registry.clone()));
        self.targets
            .add_target(
                &target_name(name),
                Some(name.clone()),
                scsi.clone(),
                access_of(vm),
            )
            .map_err(|e| DepotError::Internal(e.to_string()))?;
        st.scsi.insert(name.clone(), scsi);
        tracing::info!(vm = %name, target_name = %target_name(name), "target ready");
        Ok(())
    }

    /// Creates a VM and its (empty) target.
    pub fn create_vm(&self, req: CreateVm) -> DepotResult<VmView> {
        check_name("VM", &req.name).map_err(bad)?;
        check_chap(&req.chap)?;
        let mut st = self.lock();
        if st.catalog.vm(&req.name).is_some() {
            return Err(DepotError::Conflict {
                kind: "VM",
                name: req.name,
            });
        }
        let rec = VmRecord {
            info: VmInfo {
                name: req.name,
                allowed_initiators: req.allowed_initiators,
                multipath: req.multipath,
                dtl: req.dtl.unwrap_or_default(),
            },
            chap: req.chap,
            next_lun: 0,
        };
        st.catalog.insert_vm(rec.clone())?;
        self.add_target(&mut st, &rec)?;
        tracing::info!(vm = %rec.info.name, "VM created");
        Ok(self.vm_view(&st, &rec))
    }

    fn vm_view(&self, st: &State, vm: &VmRecord) -> VmView {
        let name = &vm.info.name;
        VmView {
            info: vm.info.clone(),
            target: target_name(name),
            chap: vm.chap.is_some(),
            mutual_chap: vm.chap.as_ref().is_some_and(|c| c.target_user.is_some()),
            vdisks: st
                .catalog
                .vm_disks(name)
                .iter()
                .map(|d| d.info.name.clone())
                .collect(),
            sessions: self.targets.session_count(&target_name(name)),
        }
    }

    /// Lists VMs.
    pub fn list_vms(&self) -> Vec<VmView> {
        let st = self.lock();
        st.catalog.vms().map(|v| self.vm_view(&st, v)).collect()
    }

    /// Shows one VM.
    pub fn get_vm(&self, name: &str) -> DepotResult<VmView> {
        let st = self.lock();
        let v = st.catalog.vm(name).ok_or_else(|| not_found("VM", name))?;
        Ok(self.vm_view(&st, v))
    }

    /// Deletes a VM without vDisks and without logged-in sessions.
    pub fn delete_vm(&self, name: &str) -> DepotResult<()> {
        let mut st = self.lock();
        if st.catalog.vm(name).is_none() {
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
            .map(|d| d.info.name.clone())
            .collect();
        if !disks.is_empty() {
            return Err(DepotError::InUse(format!(
                "VM {name:?} still has vDisks {}; delete them first",
                disks.join(", ")
            )));
        }
        st.catalog.remove_vm(name)?;
        if let Err(e) = self.targets.remove_target(&target_name(name), true) {
            tracing::warn!(vm = name, error = %e, "removing the target");
        }
        st.scsi.remove(name);
        self.metrics.sessions.remove_label_values(&[name]).ok();
        tracing::info!(vm = name, "VM deleted");
        Ok(())
    }
}
