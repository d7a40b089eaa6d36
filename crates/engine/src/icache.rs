//! A volume's in-memory cache of committed index lookups, in chunks.
//!
//! A chunk holds the answer of "newest mapping with generation ≤ `q`" for
//! [`CHUNK_CLUSTERS`] consecutive clusters (1 MiB of data) at one query
//! generation `q`, filled by one RocksDB range scan. Hot reads (random or
//! sequential) then resolve a cluster with a hash probe and an array index
//! instead of one `seek_for_prev` each, and a 1 MiB read resolves its 256
//! clusters with one probe.
//!
//! It sits between the volume's memtable (consulted first: mappings not yet
//! committed) and RocksDB. It is bounded ([`MAX_CHUNKS`] per volume,
//! oldest-inserted evicted first).
//!
//! Invariants (the caller, `volume.rs`, keeps them):
//! - A chunk is filled while holding the volume's `index_lock`, and commits
//!   write RocksDB and then [`IndexCache::apply`] their entries under the
//!   same lock, so a fill never misses a commit it raced with: either the
//!   scan saw the commit, or the commit updates the inserted chunk after.
//! - Bulk index rewrites that are not commits (rollback, snapshot
//!   compaction, scrub relocation) call [`IndexCache::clear`] afterwards,
//!   which bumps the epoch; a fill inserts only if the epoch did not move
//!   since before its scan.

use std::collections::{HashMap, VecDeque};

use crate::format::{Location, Mapping};

/// Clusters per chunk (1 MiB of data).
pub(crate) const CHUNK_CLUSTERS: u64 = CHUNK_LEN as u64;
/// [`CHUNK_CLUSTERS`] as a length (of a chunk's slots, a batch on the
/// stack).
pub(crate) const CHUNK_LEN: usize = 256;

/// Most chunks one volume keeps: 4096 chunks cover 4 GiB of hot data in
/// about 48 MiB (a slot is 48 bytes); the pool's budget usually sets less.
pub(crate) const MAX_CHUNKS: usize = 4096;

/// Memory of one cached chunk (its slots; bookkeeping not counted).
pub(crate) const CHUNK_BYTES: usize = CHUNK_LEN * std::mem::size_of::<Packed>();

/// One cluster's committed answer: `None` when no entry with generation ≤
/// the query generation exists (look at the parent), else the entry's
/// generation and mapping.
pub(crate) type Slot = Option<(u32, Mapping)>;

/// A [`Slot`] as the cache stores it: 48 bytes instead of 80, so the
/// pool's budget covers more hot data.
#[derive(Clone, Copy, Default)]
struct Packed {
    hash_lo: u64,
    hash_hi: u64,
    container: u64,
    slot: u32,
    crc: u32,
    len: u32,
    generation: u32,
    flags: u8,
    /// 0: no entry; 1: data; 2: unmapped.
    kind: u8,
}

impl Packed {
    fn pack(s: Slot) -> Packed {
        match s {
            None => Packed::default(),
            Some((generation, Mapping::Unmapped)) => Packed {
                generation,
                kind: 2,
                ..Packed::default()
            },
            Some((generation, Mapping::Data(l))) => Packed {
                // The low half (the high half beside it).
                hash_lo: (l.hash & 0xffff_ffff_ffff_ffff) as u64,
                hash_hi: (l.hash >> 64) as u64,
                container: l.container,
                slot: l.slot,
                crc: l.crc,
                len: l.len,
                generation,
                flags: l.flags,
                kind: 1,
            },
        }
    }

    fn unpack(self) -> Slot {
        match self.kind {
            1 => Some((
                self.generation,
                Mapping::Data(Location {
                    container: self.container,
                    slot: self.slot,
                    len: self.len,
                    flags: self.flags,
                    crc: self.crc,
                    hash: u128::from(self.hash_hi) << 64 | u128::from(self.hash_lo),
                }),
            )),
            2 => Some((self.generation, Mapping::Unmapped)),
            _ => None,
        }
    }
}

/// Answers for one chunk at one query generation.
pub(crate) struct Chunk {
    query_gen: u32,
    slots: Box<[Packed]>,
}

impl Chunk {
    /// A chunk from a range scan: `slots.len()` must be [`CHUNK_CLUSTERS`].
    pub(crate) fn new(query_gen: u32, slots: &[Slot]) -> Chunk {
        Chunk {
            query_gen,
            slots: slots.iter().map(|s| Packed::pack(*s)).collect(),
        }
    }
}

/// A multiplicative hasher for the (chunk, generation) keys: SipHash's
/// flood resistance buys nothing for keys the engine chooses, and a hot
/// read pays for the hash on every lookup.
#[derive(Default, Clone, Copy)]
pub(crate) struct KeyHasher(u64);

impl std::hash::Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(26) ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }
}

/// `BuildHasher` for maps keyed by engine-chosen integers.
pub(crate) type Build = std::hash::BuildHasherDefault<KeyHasher>;

/// The cache. See the module docs.
#[derive(Default)]
pub(crate) struct IndexCache {
    /// (chunk number, query generation) → slots: a hot lookup is one map
    /// probe and one slot load.
    chunks: HashMap<(u64, u32), Box<[Packed]>, Build>,
    /// Query generations with at least one cached chunk (commits visit
    /// each; there are rarely more than a few).
    gens: Vec<u32>,
    order: VecDeque<(u64, u32)>,
    epoch: u64,
}

impl IndexCache {
    /// Current epoch (read before a fill's scan).
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The cached answer for `cluster` at `generation`: `None` if its chunk
    /// is not cached.
    pub(crate) fn get(&self, cluster: u64, generation: u32) -> Option<Slot> {
        let idx = (cluster % CHUNK_CLUSTERS) as usize;
        self.chunks
            .get(&(cluster / CHUNK_CLUSTERS, generation))?
            .get(idx)
            .map(|p| p.unpack())
    }

    /// Answers the `None` entries of `out` (clusters `first..`, all in
    /// `first`'s chunk) from the cached chunk with one probe: `Some(None)`
    /// for no entry. False, with `out` untouched, if the chunk is not
    /// cached at `generation`.
    pub(crate) fn fill_run(
        &self,
        first: u64,
        generation: u32,
        out: &mut [Option<Option<Mapping>>],
    ) -> bool {
        let Some(slots) = self.chunks.get(&(first / CHUNK_CLUSTERS, generation)) else {
            return false;
        };
        let base = (first % CHUNK_CLUSTERS) as usize;
        let slots = slots.get(base..).unwrap_or(&[]);
        for (o, p) in out.iter_mut().zip(slots) {
            if o.is_none() {
                *o = Some(p.unpack().map(|s| s.1));
            }
        }
        true
    }

    /// Whether chunk number `chunk` is cached at `generation`.
    #[cfg(test)]
    pub(crate) fn has_chunk(&self, chunk: u64, generation: u32) -> bool {
        self.chunks.contains_key(&(chunk, generation))
    }

    /// Inserts a filled chunk unless the epoch moved since `epoch`.
    #[cfg(test)]
    pub(crate) fn insert(&mut self, chunk_no: u64, chunk: Chunk, epoch: u64) {
        self.insert_within(chunk_no, chunk, epoch, MAX_CHUNKS);
    }

    /// Inserts a filled chunk unless the epoch moved since `epoch`, then
    /// evicts the oldest chunks beyond `limit` (never more than
    /// [`MAX_CHUNKS`]; the vPool shares one memory budget among its volumes,
    /// see `VPoolConfig::index_cache_bytes`).
    pub(crate) fn insert_within(&mut self, chunk_no: u64, chunk: Chunk, epoch: u64, limit: usize) {
        let limit = limit.clamp(1, MAX_CHUNKS);
        if self.epoch != epoch || chunk.slots.len() != CHUNK_LEN {
            return;
        }
        let key = (chunk_no, chunk.query_gen);
        if self.chunks.insert(key, chunk.slots).is_some() {
            return;
        }
        if !self.gens.contains(&key.1) {
            self.gens.push(key.1);
        }
        self.order.push_back(key);
        while self.chunks.len() > limit {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            self.chunks.remove(&old);
        }
    }

    /// Applies committed entries to the cached chunks they fall in: an
    /// entry at generation `g` is the answer for query generations ≥ `g`
    /// unless a newer generation's entry is already there.
    pub(crate) fn apply(&mut self, entries: &[(u64, u32, Mapping)]) {
        if self.chunks.is_empty() {
            return;
        }
        for &(cluster, g, m) in entries {
            let idx = (cluster % CHUNK_CLUSTERS) as usize;
            for &q in self.gens.iter().filter(|&&q| q >= g) {
                if let Some(slot) = self
                    .chunks
                    .get_mut(&(cluster / CHUNK_CLUSTERS, q))
                    .and_then(|c| c.get_mut(idx))
                    && (slot.kind == 0 || slot.generation <= g)
                {
                    *slot = Packed::pack(Some((g, m)));
                }
            }
        }
    }

    /// Empties the cache and bumps the epoch.
    pub(crate) fn clear(&mut self) {
        self.chunks.clear();
        self.gens.clear();
        self.order.clear();
        self.epoch += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::Location;

    fn loc(container: u64) -> Mapping {
        Mapping::Data(Location {
            container,
            slot: 0,
            len: 4096,
            flags: 0,
            crc: 0,
            hash: 0,
        })
    }

    #[test]
    fn apply_respects_generations() {
        let mut c = IndexCache::default();
        let mut slots = vec![None; CHUNK_LEN];
        slots[1] = Some((3, loc(1)));
        let e = c.epoch();
        c.insert(0, Chunk::new(5, &slots), e);
        c.insert(0, Chunk::new(2, &[None; CHUNK_LEN]), e);
        // A head-generation (5) commit is invisible at query generation 2.
        c.apply(&[(1, 5, loc(2)), (2, 4, Mapping::Unmapped)]);
        assert_eq!(c.get(1, 5), Some(Some((5, loc(2)))));
        assert_eq!(c.get(2, 5), Some(Some((4, Mapping::Unmapped))));
        assert_eq!(c.get(1, 2), Some(None));
        // An older generation's entry does not replace a newer one.
        c.apply(&[(1, 4, loc(9))]);
        assert_eq!(c.get(1, 5), Some(Some((5, loc(2)))));
        assert_eq!(c.get(300, 5), None);
    }

    #[test]
    fn packed_slots_round_trip() {
        let data = Mapping::Data(Location {
            container: u64::MAX - 3,
            slot: 77,
            len: 4096,
            flags: 0,
            crc: 0xdead_beef,
            hash: u128::MAX - 12345,
        });
        for s in [None, Some((0, Mapping::Unmapped)), Some((u32::MAX, data))] {
            assert_eq!(Packed::pack(s).unpack(), s);
        }
        assert!(std::mem::size_of::<Packed>() <= 48);
    }

    #[test]
    fn stale_fills_are_dropped_and_size_is_bounded() {
        let mut c = IndexCache::default();
        let e = c.epoch();
        c.clear();
        c.insert(0, Chunk::new(1, &[None; CHUNK_LEN]), e);
        assert!(!c.has_chunk(0, 1));
        let e = c.epoch();
        for n in 0..(MAX_CHUNKS as u64 + 10) {
            c.insert(n, Chunk::new(1, &[None; CHUNK_LEN]), e);
        }
        assert_eq!(c.chunks.len(), MAX_CHUNKS);
        assert!(!c.has_chunk(0, 1));
        assert!(c.has_chunk(MAX_CHUNKS as u64 + 9, 1));
        // A smaller (pool-shared) limit evicts down to it.
        c.insert_within(1 << 20, Chunk::new(1, &[None; CHUNK_LEN]), e, 8);
        assert_eq!(c.chunks.len(), 8);
        assert!(c.has_chunk(1 << 20, 1));
    }
}
