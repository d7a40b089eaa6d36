//! `depot serve`: builds the targets and LUNs, runs the iSCSI portal, and
//! shuts down cleanly on SIGTERM/SIGINT (in-flight commands complete or are
//! aborted within the grace period, then every device is flushed).

use std::sync::Arc;

use anyhow::Context;
use depot_block::{BlockDevice, FileDevice};
use depot_iscsi_proto::chap::Secret;
use depot_iscsi_target::{Access, ChapCredentials, IQN_PREFIX, PortalConfig, TargetRegistry};
use depot_scsi::{LogicalUnit, LuConfig, Registry, ScsiTarget};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Vm};
use crate::identity;

/// Runs the daemon until a termination signal.
pub fn run(cfg: Config) -> anyhow::Result<()> {
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating data dir {}", cfg.data_dir.display()))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("depot")
        .build()?;
    rt.block_on(serve(cfg))
}

async fn serve(cfg: Config) -> anyhow::Result<()> {
    let scsi_registry = Registry::new();
    let targets = TargetRegistry::new();
    let mut devices: Vec<Arc<dyn BlockDevice>> = Vec::new();
    for vm in &cfg.vms {
        devices.extend(add_vm(&cfg, vm, &scsi_registry, &targets)?);
    }
    let listener = tokio::net::TcpListener::bind(cfg.iscsi_listen)
        .await
        .with_context(|| format!("binding iSCSI portal {}", cfg.iscsi_listen))?;
    tracing::info!(portal = %cfg.iscsi_listen, vms = cfg.vms.len(), data_dir = %cfg.data_dir.display(), "depot serving");
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(depot_iscsi_target::serve(
        listener,
        targets.clone(),
        PortalConfig::default(),
        shutdown.clone(),
    ));
    wait_for_signal().await?;
    tracing::info!("shutting down");
    shutdown.cancel();
    server.await??;
    for d in devices {
        if let Err(e) = d.flush() {
            tracing::error!(error = %e, "flush on shutdown failed");
        }
    }
    tracing::info!("stopped");
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

fn add_vm(
    cfg: &Config,
    vm: &Vm,
    scsi_registry: &Arc<Registry>,
    targets: &Arc<TargetRegistry>,
) -> anyhow::Result<Vec<Arc<dyn BlockDevice>>> {
    let scsi = Arc::new(ScsiTarget::new(scsi_registry.clone()));
    let mut devices = Vec::new();
    for (lun, disk) in vm.disks.iter().enumerate() {
        if let Some(dir) = disk.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let dev: Arc<dyn BlockDevice> = Arc::new(
            FileDevice::open(&disk.path, disk.block_size, disk.size)
                .with_context(|| format!("opening {}", disk.path.display()))?,
        );
        let id = identity::load_or_create(&cfg.data_dir, &vm.name, &disk.name)?;
        let mut lu_cfg = LuConfig::new(&id.serial(), id.naa());
        lu_cfg.read_only = disk.read_only;
        lu_cfg.pr_state_path = Some(
            cfg.data_dir
                .join("reservations")
                .join(&vm.name)
                .join(format!("{}.json", disk.name)),
        );
        if let Some(dir) = lu_cfg.pr_state_path.as_ref().and_then(|p| p.parent()) {
            std::fs::create_dir_all(dir)?;
        }
        let lu = LogicalUnit::new(lu_cfg, dev.clone(), scsi_registry)
            .with_context(|| format!("vDisk {}/{}", vm.name, disk.name))?;
        scsi.insert_lun(lun as u64, lu);
        devices.push(dev);
    }
    let access = Access {
        allowed_initiators: vm.allowed_initiators.clone(),
        chap: vm.chap.as_ref().map(|c| ChapCredentials {
            initiator: Secret {
                user: c.initiator.0.clone(),
                secret: c.initiator.1.clone(),
            },
            target: c.target.as_ref().map(|(u, s)| Secret {
                user: u.clone(),
                secret: s.clone(),
            }),
        }),
    };
    let name = format!("{IQN_PREFIX}{}", vm.name);
    targets.add_target(&name, Some(vm.name.clone()), scsi, access)?;
    tracing::info!(vm = %vm.name, target_name = %name, luns = vm.disks.len(), "target ready");
    Ok(devices)
}
