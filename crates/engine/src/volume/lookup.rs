//! Lookups: where a cluster's data is. The memtables (mappings not yet in
//! RocksDB), then the volume's index cache (`crate::icache`, filled by one
//! RocksDB range scan per chunk), then the parent chain of a clone; one
//! cluster at a time ([`Volume::resolve_one`]) or up to a chunk at a time
//! ([`Volume::resolve_run`]), the latter without allocating.
//!
//! Invariants:
//! - A lookup at generation `g` answers with the newest entry with
//!   generation ≤ `g`: `active`, then `committing`, then the index cache,
//!   which is never older than RocksDB (module docs of `crate::volume`).
//! - With `nowait`, a lookup that would wait (a contended memtable lock, a
//!   RocksDB read) declines instead of blocking.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::conv::usize_of;
use crate::error::{EngineError, EngineResult};
use crate::format::{Location, Mapping};
use crate::icache::{CHUNK_CLUSTERS, CHUNK_LEN, Chunk, Slot};

use super::Volume;

/// One memtable: (cluster, generation) → mapping.
pub(super) type MemTable = BTreeMap<(u64, u32), Mapping>;

/// Mappings not yet in RocksDB. Writes go to `active`; a committing sync
/// moves it to `committing` (shared with the sync, read-only) and drops that
/// once RocksDB and the index cache hold it. Lookups read `active`, then
/// `committing`, then the index cache. Each holds one entry per key, so a
/// commit writes every key once however often it was rewritten.
#[derive(Default)]
pub(super) struct Memtables {
    pub(super) active: MemTable,
    pub(super) committing: Option<Arc<MemTable>>,
}

impl Memtables {
    /// Newest entry of `cluster` with generation ≤ `generation`.
    pub(super) fn newest(&self, cluster: u64, generation: u32) -> Option<Mapping> {
        let find = |m: &MemTable| {
            m.range((cluster, 0)..=(cluster, generation))
                .next_back()
                .map(|(_, m)| *m)
        };
        find(&self.active).or_else(|| self.committing.as_deref().and_then(find))
    }

    /// Keys of clusters `from..to`, any generation.
    pub(super) fn keys(&self, from: u64, to: u64) -> impl Iterator<Item = (u64, u32)> + '_ {
        let c = self.committing.as_deref().into_iter();
        c.chain(std::iter::once(&self.active))
            .flat_map(move |m| m.range((from, 0)..(to, 0)).map(|(k, _)| *k))
    }
}

/// The memtable entries of clusters `first..end` visible at `generation`,
/// as (cluster, entry generation, mapping), oldest table first and in
/// ascending (cluster, generation) order within each: for each cluster the
/// last one yielded is the newest with generation ≤ `generation`, which is
/// the one that counts.
pub(super) fn memtable_run(
    m: &Memtables,
    first: u64,
    end: u64,
    generation: u32,
) -> impl Iterator<Item = (u64, u32, Mapping)> + '_ {
    let c = m.committing.as_deref().into_iter();
    c.chain(std::iter::once(&m.active)).flat_map(move |t| {
        t.range((first, 0)..(end, 0))
            .filter(move |((_, g), _)| *g <= generation)
            .map(|(&(c, g), &mapping)| (c, g, mapping))
    })
}

/// Where a cluster's data comes from.
#[derive(Clone, Copy)]
pub(super) struct Resolved<'a> {
    pub(super) owner: &'a Volume,
    pub(super) loc: Location,
}

impl Volume {
    /// The memtable, read-locked; `None` only with `nowait` when a writer
    /// holds it.
    pub(super) fn memtable_read(
        &self,
        nowait: bool,
    ) -> Option<parking_lot::RwLockReadGuard<'_, Memtables>> {
        if nowait {
            self.memtable.try_read()
        } else {
            Some(self.memtable.read())
        }
    }

    /// Own mapping of one cluster (memtable, index cache, RocksDB); `None`
    /// inside means no entry. The outer `None` only with `nowait`:
    /// answering would have waited.
    pub(super) fn lookup_own(
        &self,
        cluster: u64,
        generation: u32,
        nowait: bool,
    ) -> EngineResult<Option<Option<Mapping>>> {
        {
            let Some(m) = self.memtable_read(nowait) else {
                return Ok(None);
            };
            if let Some(mapping) = m.newest(cluster, generation) {
                self.memtable_hits.fetch_add(1, Ordering::Relaxed);
                return Ok(Some(Some(mapping)));
            }
        }
        if let Some(hit) = self.icache.lock().get(cluster, generation) {
            return Ok(Some(hit.map(|(_, m)| m)));
        }
        let chunk = cluster / CHUNK_CLUSTERS;
        let Some(slots) = self.fill_chunk(chunk, generation, nowait)? else {
            return Ok(None);
        };
        let idx = (cluster % CHUNK_CLUSTERS) as usize;
        Ok(Some(slots.get(idx).copied().flatten().map(|(_, m)| m)))
    }

    /// Loads one chunk of committed lookups from RocksDB into the index
    /// cache and returns it. Holds `index_lock` across the scan so a
    /// concurrent commit either is in the scan or updates the inserted
    /// chunk afterwards (see `crate::icache`). With `nowait` it returns
    /// `Ok(None)` instead: a RocksDB read may touch the disk, and the
    /// pinned RocksDB binding (0.21) does not export `ReadTier`, so a
    /// block-cache-only read cannot be asked for.
    pub(super) fn fill_chunk(
        &self,
        chunk: u64,
        generation: u32,
        nowait: bool,
    ) -> EngineResult<Option<Vec<Slot>>> {
        if nowait {
            return Ok(None);
        }
        let _g = self.index_lock.lock();
        let epoch = self.icache.lock().epoch();
        let slots = self.shared.index.lookup_range(
            self.id,
            chunk * CHUNK_CLUSTERS,
            CHUNK_LEN,
            generation,
        )?;
        let limit = self.shared.icache_chunks_per_volume();
        self.icache
            .lock()
            .insert_within(chunk, Chunk::new(generation, &slots), epoch, limit);
        Ok(Some(slots))
    }

    /// Own mappings (memtable, then index cache, then RocksDB) of the
    /// `out.len()` clusters from `first` at `generation`, written into the
    /// entries of `out` that are `None` (unanswered): `Some(None)` means no
    /// entry (look at the parent). `Ok(false)` only with `nowait`:
    /// answering would have waited. Allocates nothing on an index-cache
    /// hit.
    pub(super) fn lookup_run(
        &self,
        first: u64,
        out: &mut [Option<Option<Mapping>>],
        generation: u32,
        nowait: bool,
    ) -> EngineResult<bool> {
        let end = first + out.len() as u64;
        {
            let Some(m) = self.memtable_read(nowait) else {
                return Ok(false);
            };
            let mut hit = false;
            for (c, _, mapping) in memtable_run(&m, first, end, generation) {
                out[usize_of(c - first)?] = Some(Some(mapping));
                hit = true;
            }
            if hit {
                self.memtable_hits.fetch_add(1, Ordering::Relaxed);
            }
        }
        let mut c = first;
        while c < end {
            let chunk = c / CHUNK_CLUSTERS;
            let chunk_end = ((chunk + 1) * CHUNK_CLUSTERS).min(end);
            let part = &mut out[usize_of(c - first)?..usize_of(chunk_end - first)?];
            if part.iter().any(Option::is_none) && !self.icache.lock().fill_run(c, generation, part)
            {
                let Some(slots) = self.fill_chunk(chunk, generation, nowait)? else {
                    return Ok(false);
                };
                let base = usize_of(c - chunk * CHUNK_CLUSTERS)?;
                for (i, o) in part.iter_mut().enumerate() {
                    if o.is_none() {
                        *o = Some(slots.get(base + i).copied().flatten().map(|s| s.1));
                    }
                }
            }
            c = chunk_end;
        }
        Ok(true)
    }

    /// Empties the index-lookup cache (after bulk index rewrites).
    pub(crate) fn clear_index_cache(&self) {
        self.icache.lock().clear();
    }

    pub(super) fn resolve(&self, cluster: u64) -> EngineResult<Option<Resolved<'_>>> {
        self.resolve_one(cluster, false)?
            .ok_or_else(|| EngineError::Failed("a blocking index lookup declined".into()))
    }

    /// Where `cluster`'s data is (walking the parent chain), `Some(None)`
    /// if it reads as zeros; `None` only with `nowait`.
    pub(super) fn resolve_one(
        &self,
        cluster: u64,
        nowait: bool,
    ) -> EngineResult<Option<Option<Resolved<'_>>>> {
        let mut vol: &Volume = self;
        let mut generation = self.head_gen.load(Ordering::Acquire);
        loop {
            let Some(m) = vol.lookup_own(cluster, generation, nowait)? else {
                return Ok(None);
            };
            match m {
                Some(Mapping::Data(loc)) => return Ok(Some(Some(Resolved { owner: vol, loc }))),
                Some(Mapping::Unmapped) => return Ok(Some(None)),
                None => match &vol.parent {
                    Some((p, pg)) => {
                        vol = p;
                        generation = *pg;
                    }
                    None => return Ok(Some(None)),
                },
            }
        }
    }

    /// [`Volume::resolve`] for the `out.len()` (at most [`CHUNK_CLUSTERS`])
    /// clusters from `first`, walking the parent chain only for clusters
    /// this volume has no entry for. `Ok(false)` only with `nowait`.
    /// Allocates nothing (its scratch space is on the stack).
    pub(super) fn resolve_run<'a>(
        &'a self,
        first: u64,
        out: &mut [Option<Resolved<'a>>],
        nowait: bool,
    ) -> EngineResult<bool> {
        const MAX: usize = CHUNK_LEN;
        let n = out.len();
        if n > MAX {
            return Err(EngineError::Failed(format!(
                "resolving {n} clusters at once"
            )));
        }
        out.fill(None);
        let mut maps: [Option<Option<Mapping>>; MAX] = [None; MAX];
        let mut pending = [false; MAX];
        pending[..n].fill(true);
        // Indexes still unanswered are all within `lo..hi`.
        let (mut lo, mut hi) = (0usize, n);
        let mut vol: &Volume = self;
        let mut generation = self.head_gen.load(Ordering::Acquire);
        while lo < hi {
            let part = &mut maps[lo..hi];
            part.fill(None);
            if !vol.lookup_run(first + lo as u64, part, generation, nowait)? {
                return Ok(false);
            }
            let (mut next_lo, mut next_hi) = (usize::MAX, 0);
            for i in lo..hi {
                if !pending[i] {
                    continue;
                }
                match maps[i].flatten() {
                    Some(Mapping::Data(loc)) => out[i] = Some(Resolved { owner: vol, loc }),
                    Some(Mapping::Unmapped) => {}
                    None => {
                        next_lo = next_lo.min(i);
                        next_hi = i + 1;
                        continue;
                    }
                }
                pending[i] = false;
            }
            match &vol.parent {
                Some((p, pg)) if next_hi > 0 => {
                    vol = p;
                    generation = *pg;
                    (lo, hi) = (next_lo, next_hi);
                }
                _ => break,
            }
        }
        Ok(true)
    }
}

#[cfg(test)]
// Test slot numbers from small cluster numbers.
#[allow(clippy::cast_possible_truncation)]
mod tests {
    use super::*;
    use crate::format::CLUSTER_SIZE_U32;
    use proptest::prelude::*;

    fn mapping(tag: u32) -> Mapping {
        Mapping::Data(Location {
            container: u64::from(tag),
            slot: tag,
            len: CLUSTER_SIZE_U32,
            flags: 0,
            crc: tag,
            hash: u128::from(tag),
        })
    }

    proptest! {
        /// `Memtables::newest` against the definition: in `active`, else
        /// in `committing`, the entry with the greatest generation ≤ the
        /// one asked for.
        #[test]
        fn newest_is_the_latest_generation_at_or_below(
            active in prop::collection::vec((0u64..6, 0u32..6), 0..24),
            committing in prop::option::of(prop::collection::vec((0u64..6, 0u32..6), 0..24)),
            cluster in 0u64..6,
            generation in 0u32..7,
        ) {
            let table = |keys: &[(u64, u32)], base: u32| -> MemTable {
                keys.iter().map(|&(c, g)| ((c, g), mapping(base + g * 8 + c as u32))).collect()
            };
            let m = Memtables {
                active: table(&active, 0),
                committing: committing.as_deref().map(|k| Arc::new(table(k, 100))),
            };
            let naive = |t: &MemTable| {
                t.iter()
                    .filter(|((c, g), _)| *c == cluster && *g <= generation)
                    .max_by_key(|((_, g), _)| *g)
                    .map(|(_, m)| *m)
            };
            let want = naive(&m.active).or_else(|| m.committing.as_deref().and_then(naive));
            prop_assert_eq!(m.newest(cluster, generation), want);
        }
    }
}
