//! Relocation on read: a large blocking read that found its clusters
//! scattered in small runs rewrites them contiguously, from the data it just
//! read and checked, so the next read of the range is one positioned read.
//! (Random 4 KiB writes leave a 1 MiB range in up to 256 one-slot runs.)
//!
//! What is relocated, and when (each rule is checked in [`Volume::relocate`]):
//! - only reads of at least [`MIN_READ_BYTES`] whose runs average fewer than
//!   [`MAX_AVG_RUN`] clusters are logged ([`ReadLog`]), and only groups of at
//!   least [`MIN_GROUP`] consecutive clusters are rewritten;
//! - only this volume's own data of the *head* generation, stored plain:
//!   never a parent's (clone chain) cluster, never one an older (snapshot)
//!   generation maps — copying those would duplicate data a snapshot keeps;
//! - never against a guest write: the range lock of the clusters is taken
//!   with `try_lock` (any contention skips), then the writer lock, and every
//!   cluster's current own mapping must still be exactly the location that
//!   was read (same generation = the writer's, container, slot, crc, hash);
//!   a changed cluster splits the range and only unchanged groups move;
//! - never at the cost of writers or readers: skipped when the volume is
//!   closed, failed or a template, when `unshipped + bytes` would pass the
//!   point where sealed segments ship on pressure (¾ of the write buffer,
//!   `Volume::ship_threshold`; so relocation never causes throttling or
//!   freezes data by itself), or when the
//!   writer lock is not free within [`WRITER_WAIT`];
//! - the data's crc32c is checked again against the logged location before
//!   it is appended (a cluster that reached the buffer by a fallback path is
//!   dropped, not relocated with a record whose crc would not match).
//!
//! Relocation records are ordinary map records appended by `append` under
//! the writer lock, after their data: the tlog format and replay rules
//! (docs/engine-formats.md) apply unchanged. Such a record maps a cluster
//! of the head generation to a new location holding the same bytes, so
//! replaying it, or losing it with a torn tail, yields the same contents;
//! no sync is requested (nothing was acknowledged), and a later guest write
//! to the cluster is a later record that wins as usual. Scrub treats the
//! new location as any write after its cut; its index update only replaces
//! entries still pointing at the old location.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::format::{CLUSTER_SIZE, CLUSTER_SIZE_U64, Location, Mapping};

use super::lookup::{Resolved, memtable_run};
use super::{Volume, plain};

/// Smallest read (bytes) that may trigger a relocation.
pub(super) const MIN_READ_BYTES: usize = 128 * 1024;
/// A read is fragmented when its runs average fewer clusters than this.
pub(super) const MAX_AVG_RUN: usize = 16;
/// Smallest group of consecutive clusters worth rewriting.
const MIN_GROUP: usize = 16;
/// Longest a reader waits for the writer lock before giving up.
const WRITER_WAIT: Duration = Duration::from_millis(1);

/// Locations a fragmented read used, in cluster order: the candidates for
/// relocation. Allocates only once something is logged.
#[derive(Default)]
pub(super) struct ReadLog {
    entries: Vec<(u64, Location)>,
}

impl ReadLog {
    /// A log for a blocking read of `len` bytes, if it is large enough.
    pub(super) fn for_read(len: usize) -> Option<ReadLog> {
        (len >= MIN_READ_BYTES).then(ReadLog::default)
    }

    /// Called by `read_span` with one resolved batch (`res[i]` is cluster
    /// `first + i`) after it was read, and the number of positioned reads
    /// it took. Logs this volume's whole, plain clusters if the batch was
    /// fragmented; `whole(c)` says whether cluster `c` lies entirely in the
    /// read.
    pub(super) fn note(
        &mut self,
        vol: &Volume,
        first: u64,
        res: &[Option<Resolved<'_>>],
        runs: usize,
        whole: impl Fn(u64) -> bool,
    ) {
        if res.len() * CLUSTER_SIZE < MIN_READ_BYTES || res.len() >= MAX_AVG_RUN * runs {
            return;
        }
        for (i, r) in res.iter().enumerate() {
            let c = first + i as u64;
            if let Some(r) = r
                && std::ptr::eq(r.owner, vol)
                && plain(&r.loc)
                && whole(c)
            {
                self.entries.push((c, r.loc));
            }
        }
    }
}

impl Volume {
    /// The own index entries of the `n` clusters from `first` at
    /// `generation`, each as (entry generation, mapping), from the memtable
    /// and the index cache only (under the writer lock, RocksDB is not
    /// read): `None` when that cannot be answered from memory; an inner
    /// `None` when a cluster has no entry.
    fn own_entries_in_memory(
        &self,
        first: u64,
        n: usize,
        generation: u32,
    ) -> Option<Vec<Option<(u32, Mapping)>>> {
        let mut out: Vec<Option<Option<(u32, Mapping)>>> = vec![None; n];
        let end = first + n as u64;
        for (c, g, mapping) in memtable_run(&self.memtable.read(), first, end, generation) {
            out[usize::try_from(c - first).ok()?] = Some(Some((g, mapping)));
        }
        let ic = self.icache.lock();
        for (i, o) in out.iter_mut().enumerate() {
            if o.is_none() {
                *o = Some(ic.get(first + i as u64, generation)?);
            }
        }
        drop(ic);
        Some(out.into_iter().map(Option::flatten).collect())
    }

    /// Keeps the logged clusters whose own entry is still exactly the
    /// logged location in generation `generation`.
    fn still_mapped(&self, log: &mut Vec<(u64, Location)>, generation: u32) {
        let (Some(&(first, _)), Some(&(last, _))) = (log.first(), log.last()) else {
            return;
        };
        let Some(cur) = usize::try_from(last - first + 1)
            .ok()
            .and_then(|n| self.own_entries_in_memory(first, n, generation))
        else {
            log.clear();
            return;
        };
        log.retain(|(c, loc)| {
            matches!(
                usize::try_from(c - first).ok().and_then(|i| cur.get(i)),
                Some(Some((g, Mapping::Data(l)))) if *g == generation && l == loc
            )
        });
    }

    /// Rewrites the logged clusters of a read of `buf` at byte offset `off`
    /// contiguously, if every rule of the module docs allows it. Never fails
    /// the read: problems only skip the relocation (an I/O error is logged).
    pub(super) fn relocate(&self, off: u64, buf: &[u8], log: ReadLog) {
        let mut todo = log.entries;
        if todo.len() < MIN_GROUP || !self.may_relocate(todo.len()) {
            return;
        }
        // Without locks first: drop what is not head-generation data any
        // more (snapshot data stays where it is, every time it is read).
        let head = self.head_gen.load(Ordering::Acquire);
        self.still_mapped(&mut todo, head);
        // The data must be what the logged location holds.
        todo.retain(|&(c, loc)| {
            usize::try_from(c * CLUSTER_SIZE_U64 - off)
                .ok()
                .and_then(|at| buf.get(at..at + CLUSTER_SIZE))
                .is_some_and(|d| crate::checksum::crc32c(d) == loc.crc)
        });
        todo = grouped(todo);
        let (Some(&(first, _)), Some(&(last, _))) = (todo.first(), todo.last()) else {
            return;
        };
        let Some(range) = self.ranges.try_lock(first, last) else {
            return;
        };
        let Some(mut w) = self.writer.try_lock_for(WRITER_WAIT) else {
            return;
        };
        if !self.may_relocate(todo.len()) {
            return;
        }
        let generation = w.generation;
        self.still_mapped(&mut todo, generation);
        let mut moved = 0u64;
        for (lo, hi) in groups_of(&todo) {
            let (c0, _) = todo[lo];
            // Within `buf`: every kept cluster passed the check above.
            let Ok(at) = usize::try_from(c0 * CLUSTER_SIZE_U64 - off) else {
                break;
            };
            let data = &buf[at..at + (hi - lo) * CLUSTER_SIZE];
            let sums: Vec<(u32, u128)> =
                todo[lo..hi].iter().map(|(_, l)| (l.crc, l.hash)).collect();
            if let Err(e) = self.append(&mut w, c0, data, &sums) {
                tracing::warn!(volume = %self.name, error = %e, "relocation on read failed");
                break;
            }
            moved += (hi - lo) as u64;
        }
        drop(w);
        drop(range);
        if moved > 0 {
            self.counters.relocated.fetch_add(moved, Ordering::Relaxed);
        }
    }

    /// Whether relocating `clusters` clusters now is allowed: open, healthy,
    /// writable, and the write buffer stays below the shipping threshold.
    fn may_relocate(&self, clusters: usize) -> bool {
        let bytes = (clusters * CLUSTER_SIZE) as u64;
        !self.inactive()
            && !self.template.load(Ordering::Relaxed)
            && !self.is_reader()
            && self.failed.try_lock().is_some_and(|f| f.is_none())
            && self.unshipped.load(Ordering::Relaxed) + bytes <= self.ship_threshold()
    }
}

/// `todo` without the clusters that are not in a group of at least
/// [`MIN_GROUP`] consecutive ones.
fn grouped(todo: Vec<(u64, Location)>) -> Vec<(u64, Location)> {
    if groups_of(&todo).map(|(lo, hi)| hi - lo).sum::<usize>() == todo.len() {
        return todo;
    }
    groups_of(&todo)
        .flat_map(|(lo, hi)| todo[lo..hi].iter().copied())
        .collect()
}

/// Index ranges `[lo, hi)` of `todo` whose clusters are consecutive, at
/// least [`MIN_GROUP`] long.
fn groups_of(todo: &[(u64, Location)]) -> impl Iterator<Item = (usize, usize)> + '_ {
    let mut lo = 0;
    std::iter::from_fn(move || {
        while lo < todo.len() {
            let mut hi = lo + 1;
            while hi < todo.len() && todo[hi].0 == todo[hi - 1].0 + 1 {
                hi += 1;
            }
            let g = (lo, hi);
            lo = hi;
            if g.1 - g.0 >= MIN_GROUP {
                return Some(g);
            }
        }
        None
    })
}

#[cfg(test)]
// Test data patterns and small cluster counts.
#[allow(clippy::cast_possible_truncation)]
mod tests {
    use std::sync::Arc;

    use depot_block::BlockDevice;

    use super::*;
    use crate::format::CLUSTER_SIZE_U32;
    use crate::{BackendConfig, VPool, VPoolConfig};

    const N: u64 = 256;

    fn data(tag: u64, c: u64) -> Vec<u8> {
        let mut v = vec![0u8; CLUSTER_SIZE];
        for (i, b) in v.iter_mut().enumerate() {
            *b = (tag.wrapping_mul(31) ^ c.wrapping_mul(131) ^ (i as u64 / 7)) as u8;
        }
        v
    }

    /// A pool with one 8 MiB volume whose first 1 MiB is written one
    /// cluster at a time in a scattered order (256 one-slot runs).
    fn scattered(dir: &std::path::Path, rt: &tokio::runtime::Runtime) -> (Arc<VPool>, Arc<Volume>) {
        let mut cfg = VPoolConfig::new(
            "pool",
            BackendConfig::Local {
                path: dir.join("backend"),
            },
            dir.join("flash"),
        );
        cfg.container_bytes = 4 << 20;
        cfg.write_buffer_bytes = 64 << 20;
        cfg.ship_interval = Duration::from_secs(3600);
        let pool = VPool::open(cfg, rt.handle().clone()).expect("pool");
        let v = pool.create_volume("v", 8 << 20, 4096).expect("volume");
        for i in 0..N {
            let c = i * 97 % N;
            v.write(c, &data(1, c), false).expect("write");
        }
        (pool, v)
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime")
    }

    /// Reads the first 1 MiB through `read_span` with a log, as
    /// `read_bytes` does, but leaves the relocation to the test.
    fn logged_read(v: &Volume) -> (Vec<u8>, ReadLog) {
        let mut buf = vec![0u8; (N as usize) * CLUSTER_SIZE];
        let mut log = ReadLog::for_read(buf.len()).expect("large read");
        assert!(
            v.read_span(0, &mut buf, false, Some(&mut log))
                .expect("read")
        );
        assert_eq!(log.entries.len(), N as usize);
        (buf, log)
    }

    fn check(v: &Volume, tag_of: impl Fn(u64) -> u64) {
        let mut buf = vec![0u8; (N as usize) * CLUSTER_SIZE];
        v.read(0, &mut buf).expect("read");
        for (c, got) in buf.chunks_exact(CLUSTER_SIZE).enumerate() {
            assert!(got == data(tag_of(c as u64), c as u64), "cluster {c}");
        }
    }

    #[test]
    fn a_write_between_read_and_relocation_wins() {
        let rt = runtime();
        let dir = tempfile::tempdir().expect("tempdir");
        let (pool, v) = scattered(dir.path(), &rt);
        let (buf, log) = logged_read(&v);
        // A guest write lands after the read and before the relocation:
        // `buf` holds the old data of cluster 100.
        v.write(100, &data(2, 100), false).expect("write");
        v.relocate(0, &buf, log);
        // Both groups around it (100 and 155 clusters) moved, 100 did not.
        assert_eq!(v.stats().relocated_clusters, N - 1);
        let tag = |c| if c == 100 { 2 } else { 1 };
        check(&v, tag);
        // And so after a restart (replay of the relocation records).
        pool.shutdown().expect("shutdown");
        drop(v);
        drop(pool);
        let mut cfg = VPoolConfig::new(
            "pool",
            BackendConfig::Local {
                path: dir.path().join("backend"),
            },
            dir.path().join("flash"),
        );
        cfg.container_bytes = 4 << 20;
        let pool = VPool::open(cfg, rt.handle().clone()).expect("reopen");
        let v = pool.open_volume("v").expect("volume");
        check(&v, tag);
        pool.shutdown().expect("shutdown");
    }

    #[test]
    fn contention_or_a_full_write_buffer_skips() {
        let rt = runtime();
        let dir = tempfile::tempdir().expect("tempdir");
        let (pool, v) = scattered(dir.path(), &rt);
        let (buf, log) = logged_read(&v);
        {
            // A writer holds one cluster of the range.
            let _held = v.ranges.lock(7, 7);
            v.relocate(0, &buf, log);
        }
        assert_eq!(v.stats().relocated_clusters, 0);
        let (buf, log) = logged_read(&v);
        v.unshipped.fetch_add(48 << 20, Ordering::Relaxed);
        v.relocate(0, &buf, log);
        v.unshipped.fetch_sub(48 << 20, Ordering::Relaxed);
        assert_eq!(v.stats().relocated_clusters, 0);
        // A buffer whose bytes do not match the logged crcs is not written.
        let (mut buf, log) = logged_read(&v);
        buf[5 * CLUSTER_SIZE] ^= 1;
        v.relocate(0, &buf, log);
        assert_eq!(v.stats().relocated_clusters, N - 6);
        check(&v, |_| 1);
        pool.shutdown().expect("shutdown");
    }

    fn loc(slot: u32) -> Location {
        Location {
            container: 1,
            slot,
            len: CLUSTER_SIZE_U32,
            flags: 0,
            crc: 0,
            hash: 0,
        }
    }

    #[test]
    fn groups_skip_short_runs() {
        let mut v: Vec<(u64, Location)> = (0..20).map(|c| (c, loc(c as u32))).collect();
        v.extend((21..30).map(|c| (c, loc(c as u32))));
        v.extend((40..56).map(|c| (c, loc(c as u32))));
        assert_eq!(groups_of(&v).collect::<Vec<_>>(), vec![(0, 20), (29, 45)]);
        assert_eq!(groups_of(&v[..15]).count(), 0);
        let kept: Vec<u64> = grouped(v).iter().map(|e| e.0).collect();
        assert_eq!(kept, (0..20).chain(40..56).collect::<Vec<_>>());
    }
}
