//! The vPool's flash read cache: content-addressed, bounded, CLOCK eviction.
//!
//! A cluster is cached under the xxh3-128 hash of its contents (which the
//! index stores with every mapping), so identical clusters — a template's
//! blocks read through a hundred clones, or the same OS image written into
//! many vDisks — occupy one slot. The cache is a single preallocated slab file
//! of 4 KiB slots plus an in-memory map; it is not persisted across restarts
//! (a restart starts cold, which is always correct).
//!
//! Invariants:
//! - A slot is published in the map only after its bytes are written.
//! - Every read from the cache is checked against the crc32c the index holds;
//!   a mismatch (bit rot, or a slot recycled under a concurrent reader) is a
//!   miss, never data returned. A per-slot version detects recycling.
//! - The map lock is never held across file I/O.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use crate::error::{EngineError, EngineResult};
use crate::format::{CLUSTER_SIZE, CLUSTER_SIZE_U64};

#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    hash: u128,
    /// 0 free, 1 being filled, 2 valid.
    state: u8,
    referenced: bool,
    version: u32,
    /// Distinct referencing locations seen (approximate, capped).
    sharers: u8,
    last_loc: u64,
}

#[derive(Debug, Default)]
struct Inner {
    map: HashMap<u128, u32>,
    slots: Vec<Slot>,
    hand: usize,
    valid: u64,
    logical: u64,
}

/// Cache counters (monotonic).
#[derive(Debug, Default)]
pub struct CacheCounters {
    /// Lookups that returned data.
    pub hits: AtomicU64,
    /// Lookups that did not.
    pub misses: AtomicU64,
    /// New clusters stored.
    pub inserts: AtomicU64,
    /// Clusters evicted to make room.
    pub evictions: AtomicU64,
    /// Cached clusters that failed their checksum (treated as misses).
    pub integrity_errors: AtomicU64,
}

/// Most slots a cache has: the map keeps slot numbers as u32.
const MAX_SLOTS: u64 = 1 << 32;

/// The shared read cache.
#[derive(Debug)]
pub struct ReadCache {
    file: Option<File>,
    inner: Mutex<Inner>,
    /// Counters.
    pub counters: CacheCounters,
}

impl ReadCache {
    /// Creates (or recreates, empty) the cache under `dir` with room for
    /// `bytes / 4096` clusters. Zero bytes disables the cache; more than
    /// 2^32 clusters (16 TiB) is refused.
    pub fn open(dir: &Path, bytes: u64) -> EngineResult<Self> {
        let nslots = bytes / CLUSTER_SIZE_U64;
        if nslots > MAX_SLOTS {
            return Err(EngineError::InvalidArgument(format!(
                "a read cache of {bytes} bytes: at most {} bytes",
                MAX_SLOTS * CLUSTER_SIZE_U64
            )));
        }
        let nslots = usize::try_from(nslots).unwrap_or(0);
        if nslots == 0 {
            return Ok(ReadCache {
                file: None,
                inner: Mutex::new(Inner::default()),
                counters: CacheCounters::default(),
            });
        }
        std::fs::create_dir_all(dir)
            .map_err(|e| EngineError::io(format!("creating {}", dir.display()), e))?;
        let path = dir.join("cache.dat");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(|e| EngineError::io(format!("opening {}", path.display()), e))?;
        file.set_len(nslots as u64 * CLUSTER_SIZE_U64)
            .map_err(|e| EngineError::io("sizing the read cache", e))?;
        Ok(ReadCache {
            file: Some(file),
            inner: Mutex::new(Inner {
                slots: vec![Slot::default(); nslots],
                ..Inner::default()
            }),
            counters: CacheCounters::default(),
        })
    }

    fn note_sharer(slot: &mut Slot, logical: &mut u64, loc: u64) {
        slot.referenced = true;
        if slot.last_loc != loc && slot.sharers < u8::MAX {
            slot.sharers += 1;
            *logical += 1;
        }
        slot.last_loc = loc;
    }

    /// Looks `hash` up; on a hit fills `out` and returns true. `loc` is an
    /// opaque id of the requesting location (for the dedup ratio), `crc` the
    /// checksum the contents must have.
    pub fn lookup(&self, hash: u128, loc: u64, crc: u32, out: &mut [u8]) -> bool {
        let Some(file) = &self.file else {
            return false;
        };
        let (slot, version) = {
            let mut g = self.inner.lock();
            let inner = &mut *g;
            let Some(&slot) = inner.map.get(&hash) else {
                drop(g);
                self.counters.misses.fetch_add(1, Ordering::Relaxed);
                return false;
            };
            let s = &mut inner.slots[slot as usize];
            Self::note_sharer(s, &mut inner.logical, loc);
            (slot, s.version)
        };
        let ok = file
            .read_exact_at(&mut out[..CLUSTER_SIZE], u64::from(slot) * CLUSTER_SIZE_U64)
            .is_ok();
        let still = {
            let g = self.inner.lock();
            let s = &g.slots[slot as usize];
            s.version == version && s.state == 2 && s.hash == hash
        };
        if ok && still && crate::checksum::crc32c(&out[..CLUSTER_SIZE]) == crc {
            self.counters.hits.fetch_add(1, Ordering::Relaxed);
            return true;
        }
        if ok && still {
            // Bad bytes on flash: drop the slot so it is refetched.
            self.counters
                .integrity_errors
                .fetch_add(1, Ordering::Relaxed);
            let mut g = self.inner.lock();
            let inner = &mut *g;
            if inner.slots[slot as usize].version == version {
                Self::free_slot(inner, slot as usize);
            }
        }
        self.counters.misses.fetch_add(1, Ordering::Relaxed);
        false
    }

    fn free_slot(inner: &mut Inner, i: usize) {
        let s = &mut inner.slots[i];
        if s.state == 2 {
            inner.map.remove(&s.hash);
            inner.valid -= 1;
            inner.logical -= u64::from(s.sharers);
        }
        s.state = 0;
        s.sharers = 0;
        s.version = s.version.wrapping_add(1);
    }

    /// Stores a verified cluster under its content hash.
    pub fn insert(&self, hash: u128, loc: u64, data: &[u8]) {
        let Some(file) = &self.file else {
            return;
        };
        if data.len() < CLUSTER_SIZE {
            return;
        }
        let (slot, version) = {
            let mut g = self.inner.lock();
            let inner = &mut *g;
            if let Some(&s) = inner.map.get(&hash) {
                Self::note_sharer(&mut inner.slots[s as usize], &mut inner.logical, loc);
                return;
            }
            let n = inner.slots.len();
            let mut chosen = None;
            for _ in 0..2 * n {
                let i = inner.hand;
                inner.hand = (inner.hand + 1) % n;
                let s = &mut inner.slots[i];
                match s.state {
                    0 => {
                        chosen = Some(i);
                        break;
                    }
                    2 if s.referenced => s.referenced = false,
                    2 => {
                        Self::free_slot(inner, i);
                        self.counters.evictions.fetch_add(1, Ordering::Relaxed);
                        chosen = Some(i);
                        break;
                    }
                    _ => {}
                }
            }
            let Some(i) = chosen else { return };
            let s = &mut inner.slots[i];
            s.state = 1;
            s.hash = hash;
            s.version = s.version.wrapping_add(1);
            (i, s.version)
        };
        let ok = file
            .write_all_at(&data[..CLUSTER_SIZE], slot as u64 * CLUSTER_SIZE_U64)
            .is_ok();
        let mut g = self.inner.lock();
        let inner = &mut *g;
        if inner.slots[slot].version != version {
            return;
        }
        // Below MAX_SLOTS (checked at open): a slot number is a u32.
        if ok
            && !inner.map.contains_key(&hash)
            && let Ok(n) = u32::try_from(slot)
        {
            let s = &mut inner.slots[slot];
            s.state = 2;
            s.referenced = true;
            s.sharers = 1;
            s.last_loc = loc;
            inner.valid += 1;
            inner.logical += 1;
            inner.map.insert(hash, n);
            self.counters.inserts.fetch_add(1, Ordering::Relaxed);
        } else {
            inner.slots[slot].state = 0;
        }
    }

    /// Drops the clusters with these content hashes (a vDisk forgotten by
    /// this router); returns how many were cached. Entries are never
    /// wrong for anyone (they are checked against the index's crc32c on
    /// every hit), so this only gives their room back early; a shared
    /// cluster is fetched again by whoever reads it next.
    pub fn forget(&self, hashes: &[u128]) -> usize {
        if self.file.is_none() {
            return 0;
        }
        let mut g = self.inner.lock();
        let inner = &mut *g;
        let mut n = 0;
        for h in hashes {
            if let Some(&slot) = inner.map.get(h) {
                Self::free_slot(inner, slot as usize);
                n += 1;
            }
        }
        n
    }

    /// Bytes of cached data.
    pub fn used_bytes(&self) -> u64 {
        self.inner.lock().valid * CLUSTER_SIZE_U64
    }

    /// Capacity in bytes.
    pub fn capacity_bytes(&self) -> u64 {
        self.inner.lock().slots.len() as u64 * CLUSTER_SIZE_U64
    }

    /// Logical clusters served per physical cluster stored (≥ 1 when
    /// anything is cached; 1.0 when nothing is shared). Approximate: each
    /// slot counts changes of referencing location, capped at 255.
    pub fn dedup_ratio(&self) -> f64 {
        let g = self.inner.lock();
        if g.valid == 0 {
            1.0
        } else {
            g.logical as f64 / g.valid as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(b: u8) -> Vec<u8> {
        vec![b; CLUSTER_SIZE]
    }

    #[test]
    fn dedups_by_content_and_evicts_within_bound() {
        let dir = tempfile::tempdir().unwrap();
        let c = ReadCache::open(dir.path(), 4 * CLUSTER_SIZE_U64).unwrap();
        let a = block(1);
        let ha = crate::format::content_hash(&a);
        c.insert(ha, 1, &a);
        c.insert(ha, 2, &a); // same content, other location: one slot
        assert_eq!(c.used_bytes(), CLUSTER_SIZE_U64);
        assert!(c.dedup_ratio() > 1.9);
        let mut out = vec![0u8; CLUSTER_SIZE];
        assert!(c.lookup(ha, 3, crc32c::crc32c(&a), &mut out));
        assert_eq!(out, a);
        // Wrong expected checksum: a miss, never wrong data.
        assert!(!c.lookup(ha, 3, 0xdead_beef, &mut out));
        for i in 10..30u8 {
            let b = block(i);
            c.insert(crate::format::content_hash(&b), u64::from(i), &b);
        }
        assert!(c.used_bytes() <= 4 * CLUSTER_SIZE_U64);
        assert!(c.counters.evictions.load(Ordering::Relaxed) > 0);
    }

    #[test]
    fn forgotten_clusters_miss_and_free_their_room() {
        let dir = tempfile::tempdir().unwrap();
        let c = ReadCache::open(dir.path(), 4 * CLUSTER_SIZE_U64).unwrap();
        let (a, b) = (block(1), block(2));
        let (ha, hb) = (
            crate::format::content_hash(&a),
            crate::format::content_hash(&b),
        );
        c.insert(ha, 1, &a);
        c.insert(hb, 2, &b);
        assert_eq!(c.forget(&[ha, 12345]), 1);
        assert_eq!(c.used_bytes(), CLUSTER_SIZE_U64);
        let mut out = vec![0u8; CLUSTER_SIZE];
        assert!(!c.lookup(ha, 1, crc32c::crc32c(&a), &mut out));
        assert!(c.lookup(hb, 2, crc32c::crc32c(&b), &mut out));
        assert_eq!(out, b);
    }

    #[test]
    fn disabled_cache_never_hits() {
        let dir = tempfile::tempdir().unwrap();
        let c = ReadCache::open(dir.path(), 0).unwrap();
        let a = block(1);
        c.insert(1, 1, &a);
        assert!(!c.lookup(1, 1, crc32c::crc32c(&a), &mut block(0)));
    }
}
