//! vPool configuration: where flash and backend are, and the knobs that
//! bound memory, flash and unshipped data. Defaults are chosen so a vPool is
//! usable without tuning; [`VPoolConfig::validate`] rejects combinations that
//! would make it unusable (the classic OVS write-buffer mis-sizing).

use std::path::PathBuf;
use std::time::Duration;

use crate::error::{EngineError, EngineResult};
use crate::format::CLUSTER_SIZE_U64;

/// Where a vPool keeps its objects.
///
/// Also the daemon's persisted and API form of a backend (its catalog and
/// REST API use this type directly): JSON `{"type": "local", "path": ...}`
/// or `{"type": "s3", "bucket": ..., ...}`, with `region` defaulting to
/// `us-east-1`, `endpoint`, `secret_access_key` and `allow_http` optional,
/// and an empty `secret_access_key` left out when serialised (which is how
/// the daemon's views hide it).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum BackendConfig {
    /// A local directory (embedded default; also what tests use).
    Local {
        /// Root directory; created if missing.
        path: PathBuf,
    },
    /// Any S3-compatible store (TLS via rustls).
    S3 {
        /// Endpoint URL (`https://host:port`); `None` means AWS for `region`.
        #[serde(default)]
        endpoint: Option<String>,
        /// Bucket (must exist).
        bucket: String,
        /// Region name (any string for most non-AWS servers).
        #[serde(default = "default_region")]
        region: String,
        /// Access key id.
        access_key_id: String,
        /// Secret access key.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        secret_access_key: String,
        /// Permit plain-HTTP endpoints (tests, loopback).
        #[serde(default)]
        allow_http: bool,
    },
}

/// The S3 region a backend without one uses.
fn default_region() -> String {
    "us-east-1".into()
}

/// Retry policy for backend calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts for foreground calls (reads on a cache miss, admin calls)
    /// before reporting [`EngineError::BackendUnavailable`]. Background
    /// uploads retry forever.
    pub max_attempts: u32,
    /// First backoff delay; doubles per attempt.
    pub base_delay: Duration,
    /// Backoff ceiling.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            base_delay: Duration::from_millis(50),
            max_delay: Duration::from_secs(5),
        }
    }
}

/// Configuration of one vPool (a backend plus a flash directory, shared by
/// its vDisks).
#[derive(Debug, Clone)]
pub struct VPoolConfig {
    /// vPool name; also the key prefix of everything it stores on the backend.
    pub name: String,
    /// Object backend.
    pub backend: BackendConfig,
    /// Flash directory: containers, logs, read cache, RocksDB index.
    pub cache_dir: PathBuf,
    /// Read-cache capacity in bytes (rounded down to clusters; 0 disables).
    pub read_cache_bytes: u64,
    /// Memory for the per-volume caches of committed index lookups, shared
    /// by all open vDisks of the pool: each volume may keep
    /// `index_cache_bytes / open volumes` (at least 64 chunks, each chunk
    /// covering 1 MiB of data in 12 KiB, and at most the per-volume cap of
    /// 4096 chunks). Default 64 MiB: one busy vDisk gets the full 4 GiB of
    /// hot data covered, and 100 open vDisks cannot hold more than ~80 MiB
    /// together.
    pub index_cache_bytes: u64,
    /// Per-vDisk cap on data written but not yet on the backend; writes are
    /// throttled (never failed) above it.
    pub write_buffer_bytes: u64,
    /// Container (SCO) size in bytes, header included. Default 64 MiB.
    pub container_bytes: u64,
    /// Shipped containers kept on flash per vDisk (as a local read tier)
    /// before the oldest are deleted. Default: `write_buffer_bytes`.
    pub keep_shipped_bytes: u64,
    /// An open container older than this is closed and shipped even if not
    /// full: this bounds the recovery point of a restart from the backend.
    pub ship_interval: Duration,
    /// How often uncommitted index updates are made durable in the
    /// background (bounds replay work and memory; writes asking for FUA or
    /// flush never wait for this).
    pub sync_interval: Duration,
    /// How often a background sync also commits the index to RocksDB.
    /// Data is durable at every sync either way (the tlogs are the durable
    /// copy); between commits replay has more records to apply, and a
    /// commit writes each rewritten cluster once. FUA, SYNCHRONIZE CACHE,
    /// rollback and scrub always commit (a snapshot and shipping leave it
    /// to the next regular commit), and so does the periodic sync once
    /// reads have hit the memtable as many times as it has entries.
    /// Default 10 s.
    pub index_commit_interval: Duration,
    /// Scrub rewrites containers whose live fraction is below this.
    pub scrub_live_ratio: f64,
    /// A volume whose backend manifest lists this many tlogs after its
    /// index checkpoint gets a new checkpoint in the background (scrub's
    /// cut, checkpoint and delete steps, without rewriting containers), so
    /// a restart from the backend loads one checkpoint plus fewer than this
    /// many tlogs instead of replaying every tlog ever shipped. Default 64
    /// (up to 4 GiB of writes with 64 MiB containers); 0 disables.
    pub checkpoint_tlogs: usize,
    /// Backend retry policy.
    pub retry: RetryPolicy,
    /// Shortcuts for a local-directory backend: sealed containers ship as
    /// hard links into the backend directory (a copy when linking fails,
    /// e.g. across file systems), and containers evicted from flash are
    /// read with positioned reads of the object's file instead of ranged
    /// GETs through `object_store` and the read cache. The flash copy and
    /// the object are then one file: cheap, but not a second copy of the
    /// bytes. Default true; tests of the object path turn it off.
    pub local_backend_shortcuts: bool,
}

impl VPoolConfig {
    /// A config with defaults for everything but the essentials.
    pub fn new(name: impl Into<String>, backend: BackendConfig, cache_dir: PathBuf) -> Self {
        VPoolConfig {
            name: name.into(),
            backend,
            cache_dir,
            read_cache_bytes: 1 << 30,
            index_cache_bytes: 64 << 20,
            write_buffer_bytes: 1 << 30,
            container_bytes: 64 << 20,
            keep_shipped_bytes: 1 << 30,
            ship_interval: Duration::from_secs(30),
            sync_interval: Duration::from_secs(1),
            index_commit_interval: Duration::from_secs(10),
            scrub_live_ratio: 0.5,
            checkpoint_tlogs: 64,
            retry: RetryPolicy::default(),
            local_backend_shortcuts: true,
        }
    }

    /// Checks the configuration is usable.
    pub fn validate(&self) -> EngineResult<()> {
        crate::name::check_name("vPool", &self.name)?;
        if self.container_bytes < 2 * CLUSTER_SIZE_U64
            || !self.container_bytes.is_multiple_of(CLUSTER_SIZE_U64)
            || self.container_bytes > (1 << 36)
        {
            return Err(EngineError::InvalidArgument(format!(
                "container_bytes {} must be a multiple of 4096 between 8 KiB and 64 GiB",
                self.container_bytes
            )));
        }
        if self.write_buffer_bytes < self.container_bytes {
            return Err(EngineError::InvalidArgument(format!(
                "write_buffer_bytes {} must hold at least one container ({} bytes)",
                self.write_buffer_bytes, self.container_bytes
            )));
        }
        if !(0.0..=1.0).contains(&self.scrub_live_ratio) {
            return Err(EngineError::InvalidArgument(
                "scrub_live_ratio must be within 0..=1".into(),
            ));
        }
        if let BackendConfig::S3 { bucket, .. } = &self.backend
            && bucket.is_empty()
        {
            return Err(EngineError::InvalidArgument("S3 bucket is empty".into()));
        }
        Ok(())
    }

    /// Clusters per container (header excluded).
    pub fn container_slots(&self) -> u32 {
        u32::try_from(self.container_bytes / CLUSTER_SIZE_U64 - 1).unwrap_or(u32::MAX)
    }
}
