//! Volume metadata (the per-vDisk manifest), its epoch table and the pool
//! catalog entry.
//!
//! The same [`VolumeMeta`] is stored locally in RocksDB (key `M vol`) and on
//! the backend as `vol/<id>/manifest`. The backend copy is the root of a
//! restart from the backend: checkpoint + the tlogs it lists rebuild the
//! index. It only ever names objects that were completely uploaded before it
//! was written, and snapshots whose data is all shipped.
//!
//! The epoch table ([`Epoch`]) says which owner generation wrote each
//! container, tlog and checkpoint, and so under which backend key it is
//! stored: an object's generation is derived from its sequence number and
//! the newest epoch that covers it ([`VolumeMeta::container_owner`] and
//! its siblings), never stored per object.
//!
//! Invariants:
//! - Epochs are in strictly increasing generation order and their first
//!   sequence numbers never go down; an empty table (every manifest written
//!   before grids existed) means every object is generation 0.
//! - An epoch begins at the shipped frontier ([`VolumeMeta::start_epoch`]):
//!   every object already on the backend keeps the generation it was
//!   written under, everything not yet shipped is written under the new one.

use serde::{Deserialize, Serialize};

/// Manifest format version written for volumes without epochs; old code
/// reads it unchanged.
pub const META_VERSION: u32 = 1;

/// Manifest format version written once the epoch table is not empty: code
/// that predates epochs would read the wrong (generation 0) keys.
pub const META_VERSION_EPOCHS: u32 = 2;

/// One owner's stretch of a volume's history: the objects it writes and
/// the sequence numbers they start at.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Epoch {
    /// The owner generation (above 0).
    pub generation: u64,
    /// First container written under this generation.
    pub first_container: u64,
    /// First tlog written under this generation.
    pub first_tlog: u64,
    /// First checkpoint written under this generation.
    pub first_checkpoint: u64,
    /// Containers at or above `first_container` that were already on the
    /// backend when this epoch began (written by scrub while older
    /// segments still waited to ship): they keep the generation of the
    /// epochs before this one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub earlier_containers: Vec<u64>,
}

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
    /// Owner epochs, oldest first (empty: every object is generation 0).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub epochs: Vec<Epoch>,
}

/// Which of a volume's objects a sequence number names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectKind {
    /// A container (`sco`).
    Container,
    /// A tlog.
    Tlog,
    /// An index checkpoint.
    Checkpoint,
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

    /// The generation of the newest epoch (0 without epochs).
    pub fn owner_generation(&self) -> u64 {
        self.epochs.last().map_or(0, |e| e.generation)
    }

    /// The owner generation object `seq` of `kind` is stored under.
    pub fn owner_of(&self, kind: ObjectKind, seq: u64) -> u64 {
        owner_of(&self.epochs, kind, seq)
    }

    /// The owner generation container `seq` is stored under.
    pub fn container_owner(&self, seq: u64) -> u64 {
        self.owner_of(ObjectKind::Container, seq)
    }

    /// The owner generation tlog `seq` is stored under.
    pub fn tlog_owner(&self, seq: u64) -> u64 {
        self.owner_of(ObjectKind::Tlog, seq)
    }

    /// The owner generation checkpoint `seq` is stored under.
    pub fn checkpoint_owner(&self, seq: u64) -> u64 {
        self.owner_of(ObjectKind::Checkpoint, seq)
    }

    /// Begins an epoch of owner `generation` (above the newest epoch's) at
    /// the shipped frontier: tlogs from `shipped.next_tlog`, checkpoints
    /// after the current one, containers from the lowest one not yet on the
    /// backend (`unshipped`, the containers of segments waiting to ship),
    /// or from `next_container` when none waits. Containers in between that
    /// are not in `unshipped` (scrub output already shipped) stay with the
    /// earlier epochs. Also sets the format version.
    pub fn start_epoch(&mut self, generation: u64, unshipped: &[u64]) {
        debug_assert!(generation > self.owner_generation());
        let first_container = unshipped
            .iter()
            .copied()
            .min()
            .unwrap_or(self.next_container)
            .min(self.next_container);
        let earlier_containers = (first_container..self.next_container)
            .filter(|c| !unshipped.contains(c))
            .collect();
        let first_checkpoint = self.shipped.checkpoint.map_or(0, |(s, _)| s + 1);
        self.epochs.push(Epoch {
            generation,
            first_container,
            first_tlog: self.shipped.next_tlog,
            first_checkpoint,
            earlier_containers,
        });
        self.version = META_VERSION_EPOCHS;
    }
}

/// The owner generation object `seq` of `kind` is stored under: that of
/// the newest epoch covering it, 0 if none does.
pub fn owner_of(epochs: &[Epoch], kind: ObjectKind, seq: u64) -> u64 {
    epochs
        .iter()
        .rev()
        .find(|e| match kind {
            ObjectKind::Container => {
                seq >= e.first_container && !e.earlier_containers.contains(&seq)
            }
            ObjectKind::Tlog => seq >= e.first_tlog,
            ObjectKind::Checkpoint => seq >= e.first_checkpoint,
        })
        .map_or(0, |e| e.generation)
}

/// Backend catalog entry `catalog/<name>`: name → id.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CatalogEntry {
    /// Volume name.
    pub name: String,
    /// Volume id.
    pub id: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> VolumeMeta {
        VolumeMeta {
            version: META_VERSION,
            id: 1,
            name: "v".into(),
            size_bytes: 1 << 20,
            block_size: 512,
            created_unix: 0,
            template: false,
            parent: None,
            children: Vec::new(),
            head_gen: 1,
            next_gen: 2,
            snapshots: Vec::new(),
            discarded_gens: Vec::new(),
            next_container: 0,
            next_tlog: 0,
            shipped: Shipped::default(),
            epochs: Vec::new(),
        }
    }

    #[test]
    fn manifests_without_epochs_read_and_write_as_before() {
        let m = meta();
        let json = serde_json::to_string(&m).unwrap();
        assert!(!json.contains("epochs"), "{json}");
        let back: VolumeMeta = serde_json::from_str(&json).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.container_owner(5), 0);
        assert_eq!(back.tlog_owner(5), 0);
        assert_eq!(back.checkpoint_owner(5), 0);
    }

    #[test]
    fn objects_belong_to_the_newest_epoch_covering_them() {
        let mut m = meta();
        // Generation 3 takes over a volume written standalone.
        m.next_container = 10;
        m.next_tlog = 6;
        m.shipped.next_tlog = 4;
        m.shipped.checkpoint = Some((2, 3));
        // Containers 7 and 9 wait to ship; 8 is scrub output, shipped.
        m.start_epoch(3, &[7, 9]);
        assert_eq!(m.version, META_VERSION_EPOCHS);
        let e = &m.epochs[0];
        assert_eq!(
            (e.first_container, e.first_tlog, e.first_checkpoint),
            (7, 4, 3)
        );
        assert_eq!(e.earlier_containers, vec![8]);
        assert_eq!(m.container_owner(6), 0);
        assert_eq!(m.container_owner(7), 3);
        assert_eq!(m.container_owner(8), 0);
        assert_eq!(m.container_owner(9), 3);
        assert_eq!(m.container_owner(100), 3);
        assert_eq!(m.tlog_owner(3), 0);
        assert_eq!(m.tlog_owner(4), 3);
        assert_eq!(m.checkpoint_owner(2), 0);
        assert_eq!(m.checkpoint_owner(3), 3);
        // Generation 5 takes over with nothing unshipped.
        m.next_container = 20;
        m.shipped.next_tlog = 12;
        m.start_epoch(5, &[]);
        assert_eq!(m.owner_generation(), 5);
        assert_eq!(m.container_owner(19), 3);
        assert_eq!(m.container_owner(20), 5);
        assert_eq!(m.container_owner(8), 0);
        assert_eq!(m.tlog_owner(11), 3);
        assert_eq!(m.tlog_owner(12), 5);
        let json = serde_json::to_string(&m).unwrap();
        let back: VolumeMeta = serde_json::from_str(&json).unwrap();
        assert_eq!(back, m);
    }
}
