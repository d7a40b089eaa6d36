//! Volume metadata (the per-vDisk manifest) and the pool catalog entry.
//!
//! The same [`VolumeMeta`] is stored locally in RocksDB (key `M vol`) and on
//! the backend as `vol/<id>/manifest`. The backend copy is the root of a
//! restart from the backend: checkpoint + the tlogs it lists rebuild the
//! index. It only ever names objects that were completely uploaded before it
//! was written, and snapshots whose data is all shipped.

use serde::{Deserialize, Serialize};

/// Manifest format version.
pub const META_VERSION: u32 = 1;

/// A snapshot: a named, frozen generation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SnapshotMeta {
    /// Name, unique within the volume.
    pub name: String,
    /// Generation it freezes: the snapshot is every mapping with generation ≤ this.
    pub generation: u32,
    /// Creation time, seconds since the Unix epoch.
    pub created_unix: u64,
}

/// The parent a clone reads through.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ParentRef {
    /// Parent volume id.
    pub id: u64,
    /// Parent volume name (informational).
    pub name: String,
    /// Snapshot of the parent the clone was made from.
    pub snapshot: String,
    /// That snapshot's generation.
    pub generation: u32,
}

/// A clone made from one of this volume's snapshots.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChildRef {
    /// Clone volume id.
    pub id: u64,
    /// Clone name.
    pub name: String,
    /// Snapshot it depends on.
    pub snapshot: String,
}

/// A tlog on the backend.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct TlogRef {
    /// Sequence number.
    pub seq: u64,
    /// Generation of its records.
    pub generation: u32,
}

/// What is on the backend for this volume.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Shipped {
    /// Latest index checkpoint: (object seq, first tlog seq NOT covered).
    pub checkpoint: Option<(u64, u64)>,
    /// Shipped tlogs after the checkpoint, in order.
    pub tlogs: Vec<TlogRef>,
    /// Every tlog with seq below this is shipped (or discarded).
    pub next_tlog: u64,
}

/// Per-volume manifest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VolumeMeta {
    /// Format version ([`META_VERSION`]).
    pub version: u32,
    /// Volume id (unique per pool; names can be reused after delete).
    pub id: u64,
    /// Name.
    pub name: String,
    /// Size in bytes.
    pub size_bytes: u64,
    /// Logical block size (512 or 4096).
    pub block_size: u32,
    /// Creation time (Unix seconds).
    pub created_unix: u64,
    /// Template: read-only, may be cloned from its current state.
    pub template: bool,
    /// Parent, for clones.
    pub parent: Option<ParentRef>,
    /// Clones of this volume's snapshots.
    pub children: Vec<ChildRef>,
    /// Generation new writes go to.
    pub head_gen: u32,
    /// Next never-used generation.
    pub next_gen: u32,
    /// Snapshots, oldest first (ascending generation).
    pub snapshots: Vec<SnapshotMeta>,
    /// Generations discarded by rollbacks (inclusive ranges); their records
    /// are skipped on any replay.
    pub discarded_gens: Vec<(u32, u32)>,
    /// Next container sequence number to allocate.
    pub next_container: u64,
    /// Next tlog sequence number to allocate.
    pub next_tlog: u64,
    /// Backend state.
    pub shipped: Shipped,
}

impl VolumeMeta {
    /// Whether records of `generation` were discarded by a rollback.
    pub fn is_discarded(&self, generation: u32) -> bool {
        self.discarded_gens
            .iter()
            .any(|&(lo, hi)| generation >= lo && generation <= hi)
    }

    /// The generation boundary `generation` folds into: the smallest live snapshot
    /// generation ≥ `generation`, or the head. Used to collapse deleted snapshots.
    pub fn boundary(&self, generation: u32) -> u32 {
        self.snapshots
            .iter()
            .map(|s| s.generation)
            .filter(|&g| g >= generation)
            .min()
            .unwrap_or(self.head_gen)
    }

    /// Finds a snapshot by name.
    pub fn snapshot(&self, name: &str) -> Option<&SnapshotMeta> {
        self.snapshots.iter().find(|s| s.name == name)
    }
}

/// Backend catalog entry `catalog/<name>`: name → id.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CatalogEntry {
    /// Volume name.
    pub name: String,
    /// Volume id.
    pub id: u64,
}
