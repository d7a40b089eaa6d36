//! `depot serve`: opens the catalog and storage (the embedded default vPool
//! on an empty node), applies the configuration's declared VMs (turned here
//! into the manager's plain create requests, [`DeclaredVm`]), runs the
//! iSCSI portal and the management API, and shuts down cleanly on
//! SIGTERM/SIGINT (in-flight commands complete or are aborted within the
//! grace period, then every device is flushed and every vPool shut down).

use std::sync::Arc;

use anyhow::Context;
use depot_iscsi_target::{PortalConfig, TargetRegistry};
use tokio_util::sync::CancellationToken;

use crate::cluster::Node;
use crate::cluster::peer::PeerHandler;
use crate::config::Config;
use crate::manager::{ClusterStart, DeclaredDisk, DeclaredVm, Manager};
use crate::metrics::Metrics;
use crate::model::{ChapSpec, CreateVDisk, CreateVm, SizeSpec};

/// Keeps freed heap memory in the process. glibc gives a heap's free top
/// back to the kernel once 128 KiB of it is free (a threshold that adapts
/// up), and serves large allocations with their own `mmap`. The receive
/// buffers of 1 MiB writes come and go at about that size, so the daemon
/// kept faulting in fresh zeroed pages for them (`sysmalloc` and the
/// socket copy page-faulting in the profile), which on a VM can each cost
/// a host fault. With allocations up to 4 MiB from the heaps and 256 MiB
/// of free heap kept, 1 MiB writes at QD8 were faster in 7 of 8
/// alternating pairs, +2.5% on average (docs/BENCHMARKS.md); RSS after
/// them was unchanged (200–237 MiB). The heaps keep at most what the
/// busiest moment needed.
fn keep_heap_pages() {
    // SAFETY: mallopt only sets allocator parameters; it takes the
    // allocator's own lock.
    #[allow(unsafe_code)]
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
    }
}

/// Runs the daemon until a termination signal.
pub fn run(cfg: Config) -> anyhow::Result<()> {
    keep_heap_pages();
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating data dir {}", cfg.data_dir.display()))?;
    // The front runtime: portal, sessions, API, and the blocking pool SCSI
    // commands and management calls run on. Its blocking pool is bounded
    // (tokio's default lets it grow to 512 threads under a burst of
    // sessions); commands beyond the bound queue.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("depot")
        .max_blocking_threads(FRONT_BLOCKING_THREADS)
        .build()?;
    // The engine's backend I/O (object_store) has its own runtime, so what
    // a blocked SCSI command waits for (an upload, a ranged GET) never
    // queues behind other blocked commands in the front pool.
    let engine_rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .worker_threads(2)
        .thread_name("depot-engine")
        .max_blocking_threads(ENGINE_BLOCKING_THREADS)
        .build()?;
    let targets = TargetRegistry::new();
    let metrics = Metrics::new();
    // A clustered router joins before it opens anything: the catalog is the
    // cluster's, and it must know which vDisks it owns.
    let cluster = match &cfg.cluster {
        None => None,
        Some(cs) => {
            let scheme = if cfg.tls.is_some() { "https" } else { "http" };
            let joined = rt.block_on(Node::join(
                cs,
                &cfg.data_dir,
                cfg.iscsi_listen,
                format!("{scheme}://{}", cfg.api_listen),
                cs.peer_listen,
            ))?;
            Some(ClusterStart {
                node: joined.node,
                snapshot: joined.snapshot,
                revision: joined.revision,
                rt: rt.handle().clone(),
            })
        }
    };
    let node = cluster.as_ref().map(|c| c.node.clone());
    // Storage is opened outside the runtimes' threads: the engine blocks on
    // its runtime while it opens.
    let mgr = Manager::open(
        &cfg.data_dir,
        engine_rt.handle().clone(),
        targets,
        metrics.clone(),
        cluster,
    )
    .context("opening the catalog")?;
    let declared = declared_vms(&cfg);
    for vm in &declared {
        mgr.ensure_declared(vm, &declared)
            .with_context(|| format!("declared VM {}", vm.vm.name))?;
    }
    let result = rt.block_on(serve(cfg, mgr.clone(), node.clone(), metrics));
    mgr.shutdown();
    if let Some(n) = &node {
        rt.block_on(n.leave());
    }
    drop(engine_rt);
    tracing::info!("stopped");
    result
}

/// The configuration's `[[vm]]`s as create requests for the manager.
fn declared_vms(cfg: &Config) -> Vec<DeclaredVm> {
    cfg.vms
        .iter()
        .map(|vm| DeclaredVm {
            vm: CreateVm {
                name: vm.name.clone(),
                allowed_initiators: vm.allowed_initiators.clone(),
                chap: vm.chap.as_ref().map(|c| ChapSpec {
                    user: c.initiator.0.clone(),
                    secret: c.initiator.1.clone(),
                    target_user: c.target.as_ref().map(|t| t.0.clone()),
                    target_secret: c.target.as_ref().map(|t| t.1.clone()),
                }),
                multipath: false,
                dtl: vm.dtl,
            },
            disks: vm
                .disks
                .iter()
                .map(|d| DeclaredDisk {
                    create: CreateVDisk {
                        name: d.name.clone(),
                        vm: vm.name.clone(),
                        size: Some(SizeSpec::Bytes(d.size)),
                        vpool: d.vpool.clone(),
                        kind: Some(d.kind),
                        block_size: Some(d.block_size),
                        read_only: d.read_only,
                        ..Default::default()
                    },
                    raw_path: d.path.clone(),
                })
                .collect(),
        })
        .collect()
}

/// Bound of the front runtime's blocking pool (SCSI commands that do not
/// complete inline, management calls). 128 keeps 32 sessions at queue depth
/// 4 all in flight; beyond it commands queue, they do not fail.
const FRONT_BLOCKING_THREADS: usize = 128;

/// Bound of the engine runtime's blocking pool (local-directory backend
/// file I/O).
const ENGINE_BLOCKING_THREADS: usize = 64;

async fn serve(
    cfg: Config,
    mgr: Arc<Manager>,
    node: Option<Arc<Node>>,
    metrics: Arc<Metrics>,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(cfg.iscsi_listen)
        .await
        .with_context(|| format!("binding iSCSI portal {}", cfg.iscsi_listen))?;
    let api_listener = tokio::net::TcpListener::bind(cfg.api_listen)
        .await
        .with_context(|| format!("binding API {}", cfg.api_listen))?;
    let shutdown = CancellationToken::new();
    let router = crate::api::router(mgr.clone(), node.clone(), cfg.api_token.clone());
    let mut portal = PortalConfig::default();
    if let (Some(n), Some(cs)) = (&node, &cfg.cluster) {
        portal.portal_group_tag = n.record().tpgt;
        let peer_listener = tokio::net::TcpListener::bind(cs.peer_listen)
            .await
            .with_context(|| format!("binding router-to-router listener {}", cs.peer_listen))?;
        let admit_node = n.clone();
        let gate = depot_peer::Gate {
            admit: Arc::new(move |r: &str| admit_node.view().routers.contains_key(r)),
            refused: Arc::new(move |why| metrics.peer_refused(why)),
        };
        tokio::spawn(depot_peer::serve(
            peer_listener,
            n.identity().clone(),
            gate,
            PeerHandler::new(router.clone(), mgr.clone()),
            shutdown.clone(),
        ));
        crate::cluster::feed::spawn(n.clone(), mgr.clone(), shutdown.clone());
    }
    let api = match &cfg.tls {
        Some((cert, key)) => {
            let tls = crate::tls::server_config(cert, key)?;
            let l = crate::tls::TlsListener::new(api_listener, tls, shutdown.clone())?;
            let s = shutdown.clone();
            tokio::spawn(async move {
                axum::serve(l, router)
                    .with_graceful_shutdown(s.cancelled_owned())
                    .await
            })
        }
        None => {
            let s = shutdown.clone();
            tokio::spawn(async move {
                axum::serve(api_listener, router)
                    .with_graceful_shutdown(s.cancelled_owned())
                    .await
            })
        }
    };
    tracing::info!(
        portal = %cfg.iscsi_listen,
        api = %cfg.api_listen,
        tls = cfg.tls.is_some(),
        data_dir = %cfg.data_dir.display(),
        "depot serving"
    );
    let server = tokio::spawn(depot_iscsi_target::serve(
        listener,
        mgr.targets().clone(),
        portal,
        shutdown.clone(),
    ));
    wait_for_signal().await?;
    tracing::info!("shutting down");
    shutdown.cancel();
    server.await??;
    if let Err(e) = api.await? {
        tracing::warn!(error = %e, "API server ended with an error");
    }
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
