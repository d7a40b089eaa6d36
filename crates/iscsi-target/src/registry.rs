//! The targets this node serves and their live sessions.
//!
//! Owns [`TargetRegistry`]: targets by name (one per VM) with their ACLs and
//! CHAP credentials, TSIH allocation, and the live sessions by I_T nexus
//! (for reinstatement, in-use checks and metrics). The daemon adds and
//! removes targets at run time; a LUN added to a target's `ScsiTarget`
//! shows up to logged-in initiators as REPORTED LUNS DATA HAS CHANGED.
//!
//! Invariants: at most one live session per (initiator, ISID, target); a
//! new session with the same nexus first cancels the old one and waits
//! (bounded) for it to unregister; TSIH 0 is never handed out; a session's
//! entry disappears when its [`SessionRegistration`] is dropped, and only
//! its own (a reinstating session's entry survives the old one's drop).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::time::Duration;

use depot_iscsi_proto::chap::Secret;
use depot_scsi::ScsiTarget;
use parking_lot::{Mutex, RwLock};
use tokio_util::sync::CancellationToken;

/// CHAP credentials a target demands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChapCredentials {
    /// What the initiator must prove.
    pub initiator: Secret,
    /// What the target proves back (mutual CHAP), if configured.
    pub target: Option<Secret>,
}

/// Who may log in to a target.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Access {
    /// Initiator names allowed; empty allows every initiator.
    pub allowed_initiators: Vec<String>,
    /// CHAP required when set.
    pub chap: Option<ChapCredentials>,
}

impl Access {
    /// Whether `initiator` may see and log in to the target.
    pub fn allows(&self, initiator: &str) -> bool {
        self.allowed_initiators.is_empty() || self.allowed_initiators.iter().any(|a| a == initiator)
    }
}

/// Where else a target is served, in a cluster of routers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TargetPaths {
    /// The other portals serving the target, as SendTargets lists them
    /// after this portal: `(ip:port, target portal group tag)`.
    pub others: Vec<(String, u16)>,
    /// Where a Normal session's login goes instead of here (a login
    /// redirect, status 0x0101 with this `TargetAddress`, `ip:port,tpgt`):
    /// for initiators without multipath, sent to the router that serves
    /// the target's I/O.
    pub redirect: Option<String>,
}

/// One target this node serves.
pub struct TargetEntry {
    /// Full iSCSI name.
    pub name: String,
    /// TargetAlias sent at login (the VM name).
    pub alias: Option<String>,
    /// The SCSI target device (LUN table).
    pub scsi: Arc<ScsiTarget>,
    /// ACL and CHAP.
    pub access: RwLock<Access>,
    /// Other routers' portals and the login redirect (a cluster's).
    pub paths: RwLock<TargetPaths>,
}

impl std::fmt::Debug for TargetEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TargetEntry")
            .field("name", &self.name)
            .field("alias", &self.alias)
            .finish()
    }
}

/// A live session, as the registry sees it.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    /// Target name.
    pub target: String,
    /// Initiator name.
    pub initiator: String,
    /// ISID.
    pub isid: [u8; 6],
    /// TSIH.
    pub tsih: u16,
    /// Initiator's address.
    pub peer: SocketAddr,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct SessionKey {
    initiator: String,
    isid: [u8; 6],
    target: String,
}

struct SessionSlot {
    id: u64,
    info: SessionInfo,
    /// Ends the session gracefully (commands in flight complete).
    cancel: CancellationToken,
    /// Drops the connection at once: nothing more is answered.
    kill: CancellationToken,
    closed: Arc<tokio::sync::Notify>,
}

/// Errors of registry operations.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RegistryError {
    /// A target of that name exists.
    #[error("target {0} already exists")]
    Exists(String),
    /// No target of that name.
    #[error("target {0} does not exist")]
    NotFound(String),
    /// The target has logged-in sessions.
    #[error("target {target} has {sessions} logged-in session(s)")]
    InUse {
        /// Target name.
        target: String,
        /// Number of sessions.
        sessions: usize,
    },
}

/// The targets served by this node and their live sessions.
#[derive(Default)]
pub struct TargetRegistry {
    targets: RwLock<BTreeMap<String, Arc<TargetEntry>>>,
    sessions: Mutex<HashMap<SessionKey, SessionSlot>>,
    next_tsih: AtomicU16,
    next_session_id: AtomicU64,
}

impl std::fmt::Debug for TargetRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TargetRegistry")
            .field("targets", &self.targets.read().keys().collect::<Vec<_>>())
            .finish()
    }
}

impl TargetRegistry {
    /// An empty registry.
    pub fn new() -> Arc<Self> {
        Arc::new(TargetRegistry {
            next_tsih: AtomicU16::new(1),
            ..Default::default()
        })
    }

    /// Adds a target.
    pub fn add_target(
        &self,
        name: &str,
        alias: Option<String>,
        scsi: Arc<ScsiTarget>,
        access: Access,
    ) -> Result<Arc<TargetEntry>, RegistryError> {
        let mut targets = self.targets.write();
        if targets.contains_key(name) {
            return Err(RegistryError::Exists(name.to_owned()));
        }
        let entry = Arc::new(TargetEntry {
            name: name.to_owned(),
            alias,
            scsi,
            access: RwLock::new(access),
            paths: RwLock::new(TargetPaths::default()),
        });
        targets.insert(name.to_owned(), entry.clone());
        Ok(entry)
    }

    /// Drops every logged-in session to `target` at once, answering
    /// nothing more on them (commands still running are not answered:
    /// initiators reconnect, log in again — where a redirect may send them
    /// — and resend). Returns how many were dropped; they leave
    /// [`session_count`](Self::session_count) as their connections close.
    pub fn drop_sessions(&self, target: &str) -> usize {
        let mut n = 0;
        for slot in self.sessions.lock().values() {
            if slot.info.target == target {
                slot.kill.cancel();
                n += 1;
            }
        }
        n
    }

    /// Removes a target; refused while sessions are logged in unless
    /// `force`, which also closes them.
    pub fn remove_target(&self, name: &str, force: bool) -> Result<(), RegistryError> {
        let sessions = self.session_count(name);
        if sessions > 0 && !force {
            return Err(RegistryError::InUse {
                target: name.to_owned(),
                sessions,
            });
        }
        self.targets
            .write()
            .remove(name)
            .ok_or_else(|| RegistryError::NotFound(name.to_owned()))?;
        for slot in self.sessions.lock().values() {
            if slot.info.target == name {
                slot.cancel.cancel();
            }
        }
        Ok(())
    }

    /// Looks a target up.
    pub fn target(&self, name: &str) -> Option<Arc<TargetEntry>> {
        self.targets.read().get(name).cloned()
    }

    /// All targets, by name.
    pub fn targets(&self) -> Vec<Arc<TargetEntry>> {
        self.targets.read().values().cloned().collect()
    }

    /// Number of logged-in sessions to `target`.
    pub fn session_count(&self, target: &str) -> usize {
        self.sessions
            .lock()
            .values()
            .filter(|s| s.info.target == target)
            .count()
    }

    /// Every logged-in session.
    pub fn sessions(&self) -> Vec<SessionInfo> {
        self.sessions
            .lock()
            .values()
            .map(|s| s.info.clone())
            .collect()
    }

    pub(crate) fn alloc_tsih(&self) -> u16 {
        loop {
            let t = self.next_tsih.fetch_add(1, Ordering::Relaxed);
            if t != 0 {
                return t;
            }
        }
    }

    /// Registers a new session, first closing any session with the same
    /// I_T nexus (session reinstatement, RFC 7143 §6.3.5). Returns the
    /// registration, which unregisters itself when dropped.
    pub(crate) async fn register(
        self: &Arc<Self>,
        info: SessionInfo,
        cancel: CancellationToken,
        kill: CancellationToken,
    ) -> SessionRegistration {
        let key = SessionKey {
            initiator: info.initiator.clone(),
            isid: info.isid,
            target: info.target.clone(),
        };
        let old = self
            .sessions
            .lock()
            .get(&key)
            .map(|s| (s.cancel.clone(), s.closed.clone()));
        if let Some((old_cancel, old_closed)) = old {
            tracing::info!(target_name = %info.target, initiator = %info.initiator, "reinstating session");
            let notified = old_closed.notified();
            old_cancel.cancel();
            // The old connection aborts its tasks and unregisters; don't
            // wait forever on it.
            let _ = tokio::time::timeout(Duration::from_secs(10), notified).await;
        }
        let id = self.next_session_id.fetch_add(1, Ordering::Relaxed);
        let closed = Arc::new(tokio::sync::Notify::new());
        self.sessions.lock().insert(
            key.clone(),
            SessionSlot {
                id,
                info,
                cancel,
                kill,
                closed: closed.clone(),
            },
        );
        SessionRegistration {
            registry: self.clone(),
            key,
            id,
            closed,
        }
    }
}

/// A live session's entry in the registry; removed on drop.
pub(crate) struct SessionRegistration {
    registry: Arc<TargetRegistry>,
    key: SessionKey,
    id: u64,
    closed: Arc<tokio::sync::Notify>,
}

impl Drop for SessionRegistration {
    fn drop(&mut self) {
        let mut sessions = self.registry.sessions.lock();
        if sessions.get(&self.key).is_some_and(|s| s.id == self.id) {
            sessions.remove(&self.key);
        }
        drop(sessions);
        self.closed.notify_waiters();
    }
}
