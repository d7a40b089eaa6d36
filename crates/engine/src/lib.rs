//! Depot's tiered volume engine: each vDisk is a log-structured
//! [`depot_block::BlockDevice`] whose writes land on flash (containers + a
//! transaction log), whose index lives in RocksDB, and whose data ships to an
//! object backend (local directory or S3) for capacity and durability.
//!
//! Layout, in the order the modules depend on each other (each uses only
//! modules above it; no import circle):
//! - [`name`]: the one naming rule for vPools, VMs, vDisks and snapshots.
//! - [`error`]: typed engine errors and their mapping onto block errors.
//! - `conv`: checked u64 <-> usize conversions of offsets and counts.
//! - [`owner`]: the owner context of a grid (generation, the daemon's
//!   fencing hook) and the backend's fencing mode.
//! - [`format`](mod@format): every byte format on flash and on the backend (spec:
//!   docs/engine-formats.md).
//! - [`config`]: vPool configuration and validation.
//! - [`meta`]: volume metadata (the manifest) and catalog entries.
//! - `checksum`: the fast crc32c of cluster data on the read path.
//! - [`index`]: the RocksDB index and metadata keys; no RocksDB type leaves
//!   it.
//! - [`backend`]: blocking, retrying object-store facade + fault injection;
//!   [`backend::keys`] is the object-key layout.
//! - [`cache`]: the content-addressed flash read cache.
//! - `icache`: a volume's chunked in-memory cache of index lookups.
//! - `ranges`: cluster range locks of one vDisk's writers.
//! - `shared`: the state a vPool shares with its volumes and workers.
//! - [`volume`]: one vDisk — write/read paths, group commit, snapshots,
//!   rollback, shipping, replay and restore.
//! - [`scrub`]: garbage collection of backend space, checkpoints.
//! - [`pool`]: the vPool — catalog, clones, workers, stats.
//!
//! Durability contract: a write with FUA, or any write followed by a
//! successful flush, survives `kill -9` and power loss of the flash node; a
//! restart from the backend alone recovers everything that was shipped (the
//! recovery point is the last manifest upload, bounded by `ship_interval`).
//!
//! Grid: a volume opened under an [`Owner`] of generation > 0 writes its
//! objects under generation-named keys, publishes its manifest only while
//! the daemon's [`Fencing`] check passes (and, where the store enforces it,
//! conditionally on the manifest's e-tag), and is fenced for good
//! ([`EngineError::Fenced`]) once another owner took over. A live move
//! hands the unshipped segments to the new owner as files
//! ([`Volume::handover_precopy`], [`Volume::handover_freeze`],
//! [`VPool::prepare_import`], [`VPool::finish_import`]). Specification:
//! docs/engine-formats.md, *Grid* and *Live hand-over*.

pub mod backend;
pub mod cache;
mod checksum;
pub mod config;
mod conv;
pub mod error;
pub mod format;
mod icache;
pub mod index;
pub mod meta;
pub mod name;
pub mod owner;
pub mod pool;
pub(crate) mod ranges;
pub mod scrub;
mod shared;
pub mod volume;

pub use backend::FaultInjector;
pub use config::{BackendConfig, RetryPolicy, VPoolConfig};
pub use error::{EngineError, EngineResult};
pub use owner::{FenceError, Fencing, FencingMode, Owner, Standalone};
pub use pool::{ImportPrep, MirrorCopy, VPool, VPoolStats};
pub use scrub::ScrubReport;
pub use volume::{
    HandoverFile, HandoverFileKind, HandoverState, Held, HeldNow, Mirror, MirrorBatch, MirrorWait,
    SnapshotInfo, Volume, VolumeStats, WindowSegment,
};
