//! Depot's tiered volume engine: each vDisk is a log-structured
//! [`depot_block::BlockDevice`] whose writes land on flash (containers + a
//! transaction log), whose index lives in RocksDB, and whose data ships to an
//! object backend (local directory or S3) for capacity and durability.
//!
//! Layout:
//! - [`config`]: vPool configuration and validation.
//! - [`name`]: the one naming rule for vPools, VMs, vDisks and snapshots.
//! - [`format`]: every byte format on flash and on the backend (spec:
//!   docs/engine-formats.md).
//! - [`index`]: the RocksDB index and metadata keys.
//! - [`backend`]: blocking, retrying object-store facade + fault injection.
//! - [`cache`]: the content-addressed flash read cache.
//! - `checksum`: the fast crc32c of cluster data on the read path.
//! - `icache`: a volume's chunked in-memory cache of index lookups.
//! - `ranges`: cluster range locks of one vDisk's writers.
//! - [`volume`]: one vDisk — write/read paths, group commit, snapshots,
//!   rollback, shipping, replay.
//! - [`pool`]: the vPool — catalog, clones, workers, stats.
//! - [`scrub`]: garbage collection of backend space.
//!
//! Durability contract: a write with FUA, or any write followed by a
//! successful flush, survives `kill -9` and power loss of the flash node; a
//! restart from the backend alone recovers everything that was shipped (the
//! recovery point is the last manifest upload, bounded by `ship_interval`).

pub mod backend;
pub mod cache;
mod checksum;
pub mod config;
pub mod error;
pub mod format;
mod icache;
pub mod index;
pub mod meta;
pub mod name;
pub mod pool;
pub(crate) mod ranges;
pub mod scrub;
pub mod volume;

pub use backend::FaultInjector;
pub use config::{BackendConfig, RetryPolicy, VPoolConfig};
pub use error::{EngineError, EngineResult};
pub use pool::{ScrubReport, VPool, VPoolStats};
pub use volume::{SnapshotInfo, Volume, VolumeStats};
