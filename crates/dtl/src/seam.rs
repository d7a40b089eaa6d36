//! What the daemon plugs into a mirror client and what it sees of one: the
//! VM's mode, the mirror's states, the transport to the holder ([`Link`]),
//! the cluster's side ([`Control`]: the recorded state a takeover reads,
//! and placement), the settings and the status shown in the API and
//! metrics.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use depot_engine::HandoverFileKind;
use serde::{Deserialize, Serialize};

use crate::error::DtlResult;
use crate::proto::{Commit, Open, Write};

/// How a vDisk's writes are mirrored (a VM's policy).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Every sync (FUA, SYNCHRONIZE CACHE, the periodic group commit)
    /// completes only once the holder has it.
    #[default]
    Sync,
    /// Hard barriers (FUA, SYNCHRONIZE CACHE) wait for the holder; the
    /// periodic group commit does not (a bounded queue).
    Async,
    /// Not mirrored.
    None,
}

impl Mode {
    /// Whether this is the default mode (`sync`).
    pub fn is_default(&self) -> bool {
        *self == Mode::Sync
    }

    /// The name used in the API, CLI and configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Sync => "sync",
            Mode::Async => "async",
            Mode::None => "none",
        }
    }
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "sync" => Ok(Mode::Sync),
            "async" => Ok(Mode::Async),
            "none" => Ok(Mode::None),
            _ => Err(format!("DTL mode {s:?}: use sync, async or none")),
        }
    }
}

/// Where a vDisk's mirror stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MirrorState {
    /// The holder has every write whose durability was promised.
    InSync,
    /// A holder is being filled with the window; not yet a copy to fail
    /// over to.
    CatchingUp,
    /// No holder: I/O goes on on this router alone.
    Degraded,
}

impl MirrorState {
    /// The name used in the API, CLI and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            MirrorState::InSync => "in_sync",
            MirrorState::CatchingUp => "catching_up",
            MirrorState::Degraded => "degraded",
        }
    }
}

/// A connection to the router holding the mirror (blocking calls; the
/// daemon's peer transport).
pub trait Link: Send + Sync {
    /// The holder's router name.
    fn holder(&self) -> &str;
    /// `dtl.open`.
    fn open(&self, o: &Open) -> DtlResult<()>;
    /// `dtl.write`.
    fn write(&self, w: &Write, body: &[u8]) -> DtlResult<()>;
    /// Several `dtl.write`s of ranges that do not overlap, which may travel
    /// and be applied in any order; returns once all are answered.
    fn write_many(&self, pieces: Vec<(Write, Vec<u8>)>) -> DtlResult<()> {
        for (w, body) in &pieces {
            self.write(w, body)?;
        }
        Ok(())
    }
    /// `dtl.commit`, carrying the bytes of `c.pieces` in `body`.
    fn commit(&self, c: &Commit, body: &[u8]) -> DtlResult<()>;
}

/// Why [`Control::record`] failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordError {
    /// This router no longer owns the vDisk under the mirrored generation
    /// (it was deleted, moved, or taken over: a router taken over has
    /// stopped acknowledging I/O already). Nothing more is mirrored.
    Deposed(String),
    /// The cluster state cannot be changed now (etcd unreachable); retry.
    Unavailable(String),
}

impl std::fmt::Display for RecordError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecordError::Deposed(m) | RecordError::Unavailable(m) => f.write_str(m),
        }
    }
}

/// The cluster's side of a mirror (the daemon: placement and the state in
/// etcd that a takeover reads).
pub trait Control: Send + Sync {
    /// Records the mirror's holder and state; returns once it is durable
    /// in the cluster state. A failure leaves the previous record.
    fn record(&self, holder: Option<&str>, state: MirrorState) -> Result<(), RecordError>;
    /// Chooses a holder for the mirror and connects to it.
    fn place(&self) -> Result<Arc<dyn Link>, String>;
}

/// Settings of a mirror.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// sync or async (a `none` vDisk gets no client).
    pub mode: Mode,
    /// Bytes per second a catch-up copies at most.
    pub catch_up_rate: u64,
    /// Batches an async mirror queues before syncs wait.
    pub async_queue: usize,
    /// How long a degraded mirror waits between placements.
    pub retry: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            mode: Mode::Sync,
            catch_up_rate: 200 << 20,
            async_queue: 64,
            retry: Duration::from_secs(2),
        }
    }
}

/// The vDisk a client mirrors.
#[derive(Debug, Clone)]
pub struct Subject {
    /// The vDisk.
    pub vdisk: String,
    /// Its vPool.
    pub vpool: String,
    /// Its volume id.
    pub id: u64,
    /// The owner generation it is served under.
    pub generation: u64,
}

/// What the API, CLI and metrics show of a mirror.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MirrorStatus {
    /// sync or async.
    pub mode: Mode,
    /// The state.
    pub state: MirrorState,
    /// The router holding the mirror, if any.
    pub holder: Option<String>,
    /// Bytes copied to holders since this router opened the vDisk.
    pub bytes_sent: u64,
    /// Syncs waiting for the holder or queued.
    pub queued: usize,
    /// Why the mirror is degraded, if it is.
    pub error: Option<String>,
    /// Times the mirror went degraded.
    pub degradations: u64,
}

/// Finds a window file on this router's flash.
pub type Locate = Arc<dyn Fn(HandoverFileKind, u64) -> PathBuf + Send + Sync>;
