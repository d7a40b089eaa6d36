//! The tokio iSCSI target: portals, logins, sessions and connections.
//!
//! The protocol lives in a sans-IO core (`session`) that takes PDUs,
//! command completions and timer ticks and answers through a small host
//! interface (send this PDU, publish this command window, execute this
//! command); the connection (`conn`) is the tokio shell around it: socket,
//! select loop, execution hand-off. Modules, in dependency order (each uses
//! only those above it):
//!
//! - `config`: [`PortalConfig`] and the crate's constants.
//! - `registry`: [`TargetRegistry`]: the targets this node serves (one per
//!   VM), their ACLs and CHAP credentials, and the live sessions (for
//!   reinstatement, in-use checks and metrics).
//! - `writer`: the send side of a connection: stamps StatSN/ExpCmdSN/MaxCmdSN
//!   in send order and batches PDUs into vectored writes.
//! - `session`: the sans-IO core: login (security and operational stages,
//!   CHAP, negotiation) and the full feature phase (CmdSN window, tasks,
//!   immediate/unsolicited/R2T data, Data-In and responses, task
//!   management, text and SendTargets, logout, NOP).
//! - `conn`: one connection's tokio task: reader, select loop, timers,
//!   shutdown, inline or blocking-pool execution, feeding the writer.
//! - [`serve`] (here): the accept loop of one portal. Every connection is a
//!   task; shutdown (the cancellation token) stops accepting, lets each
//!   connection finish or abort its in-flight commands, and waits for them.
//!
//! Invariants: nothing a peer sends can panic the process or make a
//! connection buffer more than its negotiated limits; a misbehaving
//! connection is closed without affecting any other; SCSI commands that
//! could wait for storage execute on the blocking pool, so the connection
//! keeps answering NOP-Outs and task management while storage is slow.

mod config;
mod conn;
mod registry;
mod session;
mod writer;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::{IQN_PREFIX, PORTAL_GROUP_TAG, PortalConfig};
pub use registry::{
    Access, ChapCredentials, RegistryError, SessionInfo, TargetEntry, TargetPaths, TargetRegistry,
};

/// Accepts connections on `listener` until `shutdown` is cancelled, then
/// waits for every connection to finish.
pub async fn serve(
    listener: TcpListener,
    registry: Arc<TargetRegistry>,
    config: PortalConfig,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let config = Arc::new(config);
    let tracker = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let registry = registry.clone();
        let config = config.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            if let Err(e) = conn::run(stream, peer, registry, config, shutdown).await {
                tracing::debug!(%peer, error = %e, "connection ended");
            }
        });
    }
    tracker.close();
    tracker.wait().await;
    Ok(())
}
