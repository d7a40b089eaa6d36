//! Snapshots, rollback, resize and templates: O(1) snapshots that start a
//! new generation, index compaction after a snapshot is deleted, rollback
//! to a snapshot (discarding later generations), growing the volume,
//! marking it a template, and scrub's cut of the index.
//!
//! Invariants:
//! - Metadata changes are persisted (RocksDB, synced) before they take
//!   effect in memory, and restored in memory if persisting fails.
//! - A snapshot or rollback is a hard barrier: every slot written before it
//!   is final.
//! - A rollback removes the discarded generations' index entries in the
//!   same atomic batch as the metadata that discards them.
//! - Snapshots and later snapshots with clones are never deleted or rolled
//!   over.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;

use crate::error::{EngineError, EngineResult};
use crate::format::Mapping;
use crate::index::{IndexBatch, IndexSnapshot};
use crate::meta::SnapshotMeta;

use super::sync::Commit;
use super::{SnapshotInfo, Volume};

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Volume {
    /// Creates a snapshot in O(1): seals, syncs and starts a new generation.
    pub fn create_snapshot(&self, name: &str) -> EngineResult<SnapshotInfo> {
        crate::name::check_name("snapshot", name)?;
        if name.starts_with('@') {
            return Err(EngineError::InvalidArgument(
                "snapshot names starting with '@' are reserved".into(),
            ));
        }
        self.snapshot_inner(name)
    }

    pub(crate) fn snapshot_inner(&self, name: &str) -> EngineResult<SnapshotInfo> {
        self.check_admin()?;
        let _a = self.admin.lock();
        // A hand-over may have frozen the volume while this waited.
        self.check_fence()?;
        if self.meta.lock().snapshot(name).is_some() {
            return Err(EngineError::SnapshotExists(name.to_string()));
        }
        let mut w = self.writer.lock();
        self.seal(&mut w)?;
        // Durable, not committed: the sealed segment's tlog carries the old
        // generation, so replay files its records under it, and lookups of
        // the snapshot see the memtable. Committing here would make the
        // snapshot wait for up to `index_commit_interval` of writes (179 ms
        // after a GiB of them); the next regular commit puts the records
        // in RocksDB.
        self.sync_locked(&mut w, Commit::Skip)?;
        let mut m = self.meta.lock();
        let old = m.clone();
        let snap = SnapshotMeta {
            name: name.to_string(),
            generation: w.generation,
            created_unix: now_unix(),
        };
        let new_gen = m.next_gen;
        m.next_gen += 1;
        m.head_gen = new_gen;
        m.snapshots.push(snap.clone());
        m.next_container = w.next_container;
        m.next_tlog = w.next_tlog;
        if let Err(e) = self.persist_meta(&m) {
            *m = old;
            return Err(e);
        }
        w.generation = new_gen;
        self.head_gen.store(new_gen, Ordering::Release);
        drop(m);
        drop(w);
        self.shared.wake_shipper();
        Ok(SnapshotInfo {
            name: snap.name,
            created_unix: snap.created_unix,
            generation: snap.generation,
            on_backend: false,
            clones: 0,
        })
    }

    /// Lists snapshots, oldest first.
    pub fn list_snapshots(&self) -> Vec<SnapshotInfo> {
        let first_unshipped = {
            let w = self.writer.lock();
            w.segments.front().map_or(w.generation, |s| s.generation)
        };
        let m = self.meta.lock();
        m.snapshots
            .iter()
            .map(|s| SnapshotInfo {
                name: s.name.clone(),
                created_unix: s.created_unix,
                generation: s.generation,
                on_backend: s.generation < first_unshipped,
                clones: m.children.iter().filter(|c| c.snapshot == s.name).count(),
            })
            .collect()
    }

    /// Deletes a snapshot (metadata only; scrub reclaims its data). Refused
    /// while clones depend on it.
    pub fn delete_snapshot(&self, name: &str) -> EngineResult<()> {
        self.check_admin()?;
        let _a = self.admin.lock();
        // A hand-over may have frozen the volume while this waited.
        self.check_fence()?;
        {
            let mut m = self.meta.lock();
            if m.snapshot(name).is_none() {
                return Err(EngineError::SnapshotNotFound(name.to_string()));
            }
            if m.children.iter().any(|c| c.snapshot == name) {
                return Err(EngineError::HasClones(format!("snapshot {name:?}")));
            }
            let old = m.clone();
            m.snapshots.retain(|s| s.name != name);
            if let Err(e) = self.persist_meta(&m) {
                *m = old;
                return Err(e);
            }
        }
        self.compact_index()?;
        self.shared.wake_shipper();
        Ok(())
    }

    /// Removes index entries no snapshot or the head can see any more
    /// (superseded within a generation range, or rolled back).
    pub(super) fn compact_index(&self) -> EngineResult<()> {
        let meta = self.meta.lock().clone();
        let has_parent = self.parent.is_some();
        let mut b = IndexBatch::default();
        let mut n = 0usize;
        let mut group: Vec<(u32, Mapping)> = Vec::new();
        let mut cur: Option<u64> = None;
        let id = self.id;
        let flush_group =
            |c: u64, group: &mut Vec<(u32, Mapping)>, b: &mut IndexBatch, n: &mut usize| {
                // group is in ascending generation order.
                let mut keep: Vec<bool> = vec![true; group.len()];
                for i in 0..group.len() {
                    let g = group[i].0;
                    if meta.is_discarded(g) {
                        keep[i] = false;
                        continue;
                    }
                    let bnd = meta.boundary(g);
                    if group[i + 1..]
                        .iter()
                        .any(|(g2, _)| !meta.is_discarded(*g2) && meta.boundary(*g2) == bnd)
                    {
                        keep[i] = false;
                    }
                }
                if !has_parent
                    && let Some(first) = (0..group.len()).find(|&i| keep[i])
                    && group[first].1 == Mapping::Unmapped
                {
                    keep[first] = false;
                }
                for (i, (g, _)) in group.iter().enumerate() {
                    if !keep[i] {
                        b.delete_entry(id, c, *g);
                        *n += 1;
                    }
                }
                group.clear();
            };
        self.shared.index.scan(self.id, 0, u64::MAX, |c, g, m| {
            if cur != Some(c) {
                if let Some(pc) = cur {
                    flush_group(pc, &mut group, &mut b, &mut n);
                }
                cur = Some(c);
            }
            group.push((g, m));
            true
        })?;
        if let Some(pc) = cur {
            flush_group(pc, &mut group, &mut b, &mut n);
        }
        if n > 0 {
            let _g = self.index_lock.lock();
            self.shared.index.write(b)?;
            drop(_g);
            self.clear_index_cache();
        }
        Ok(())
    }

    /// Rolls the volume back to a snapshot: later writes and later
    /// snapshots are discarded. Refused while a later snapshot has clones.
    pub fn rollback(&self, name: &str) -> EngineResult<()> {
        self.check_writable()?;
        let _a = self.admin.lock();
        // A hand-over may have frozen the volume while this waited.
        self.check_fence()?;
        let target = self
            .meta
            .lock()
            .snapshot(name)
            .cloned()
            .ok_or_else(|| EngineError::SnapshotNotFound(name.to_string()))?;
        {
            let m = self.meta.lock();
            for s in m
                .snapshots
                .iter()
                .filter(|s| s.generation > target.generation)
            {
                if m.children.iter().any(|c| c.snapshot == s.name) {
                    return Err(EngineError::HasClones(format!("snapshot {:?}", s.name)));
                }
            }
        }
        let _s = self.ship_lock.lock();
        let mut w = self.writer.lock();
        self.seal(&mut w)?;
        self.sync_locked(&mut w, Commit::Force)?;
        let mut m = self.meta.lock();
        let old_meta = m.clone();
        let old_head = w.generation;
        let new_gen = m.next_gen;
        m.next_gen += 1;
        m.discarded_gens.push((target.generation + 1, old_head));
        m.head_gen = new_gen;
        m.snapshots.retain(|s| s.generation <= target.generation);
        m.shipped
            .tlogs
            .retain(|t| t.generation <= target.generation);
        m.next_container = w.next_container;
        m.next_tlog = w.next_tlog;
        // One atomic batch: metadata + removal of every discarded mapping.
        let mut b = IndexBatch::default();
        b.put_meta(&m)?;
        let mut dels = Vec::new();
        self.shared.index.scan(self.id, 0, u64::MAX, |c, g, _| {
            if g > target.generation {
                dels.push((c, g));
            }
            true
        })?;
        for (c, g) in &dels {
            b.delete_entry(self.id, *c, *g);
        }
        if let Err(e) = self.shared.index.write_sync(b) {
            *m = old_meta;
            return Err(e);
        }
        self.clear_index_cache();
        self.meta_dirty.store(true, Ordering::SeqCst);
        w.generation = new_gen;
        self.head_gen.store(new_gen, Ordering::Release);
        self.memtable.write().active.clear();
        drop(m);
        let mut dropped_bytes = 0;
        let mut keep = VecDeque::new();
        let segments = std::mem::take(&mut w.segments);
        for s in segments {
            if s.generation > target.generation {
                dropped_bytes += s.bytes;
                let _ = std::fs::remove_file(self.tlog_path(s.tlog));
                for c in &s.containers {
                    self.files.lock().remove(c);
                    w.mutable.remove(c);
                    let _ = std::fs::remove_file(self.container_path(*c));
                }
            } else {
                keep.push_back(s);
            }
        }
        if keep.is_empty() {
            // Nothing before the discarded segments waits to ship.
            let mut m = self.meta.lock();
            m.shipped.next_tlog = m.shipped.next_tlog.max(w.next_tlog);
        }
        w.segments = keep;
        self.unshipped.fetch_sub(
            dropped_bytes.min(self.unshipped.load(Ordering::Relaxed)),
            Ordering::Relaxed,
        );
        drop(w);
        self.throttle_cv.notify_all();
        self.shared.wake_shipper();
        Ok(())
    }

    /// Grows the volume (shrinking is refused).
    pub fn resize(&self, new_size_bytes: u64) -> EngineResult<()> {
        self.check_admin()?;
        let _a = self.admin.lock();
        // A hand-over may have frozen the volume while this waited.
        self.check_fence()?;
        let bs = u64::from(self.block_size);
        let cur = self.num_blocks.load(Ordering::Acquire) * bs;
        if !new_size_bytes.is_multiple_of(bs) || new_size_bytes < cur {
            return Err(EngineError::InvalidArgument(format!(
                "new size {new_size_bytes} must be a multiple of {bs} and at least {cur}"
            )));
        }
        let mut m = self.meta.lock();
        m.size_bytes = new_size_bytes;
        self.persist_meta(&m)?;
        self.num_blocks
            .store(new_size_bytes / bs, Ordering::Release);
        drop(m);
        self.shared.wake_shipper();
        Ok(())
    }

    /// Marks or unmarks the volume as a template. A template is read-only
    /// and can be cloned from its current state; marking takes an internal
    /// snapshot (`@template-N`) that clones of the current state use.
    pub fn set_template(&self, on: bool) -> EngineResult<()> {
        self.check_admin()?;
        if on == self.template.load(Ordering::Acquire) {
            return Ok(());
        }
        if on {
            let generation = self.head_gen.load(Ordering::Acquire);
            self.snapshot_inner(&format!("@template-{generation}"))?;
        }
        let _a = self.admin.lock();
        // A hand-over may have frozen the volume while this waited.
        self.check_fence()?;
        let mut m = self.meta.lock();
        m.template = on;
        self.persist_meta(&m)?;
        self.template.store(on, Ordering::Release);
        drop(m);
        self.shared.wake_shipper();
        Ok(())
    }

    /// Whether the volume is a template.
    pub fn is_template(&self) -> bool {
        self.template.load(Ordering::Acquire)
    }

    /// The snapshot a clone of the template's current state uses.
    pub(crate) fn template_snapshot(&self) -> Option<String> {
        if !self.is_template() {
            return None;
        }
        let m = self.meta.lock();
        m.snapshots
            .iter()
            .rev()
            .find(|s| s.name.starts_with("@template-"))
            .map(|s| s.name.clone())
    }

    /// Seals, syncs, and returns (cut tlog seq, next container seq) with the
    /// index at exactly that cut; used by scrub.
    pub(crate) fn cut(&self) -> EngineResult<(u64, u64, IndexSnapshot<'_>)> {
        let mut w = self.writer.lock();
        self.seal(&mut w)?;
        self.sync_locked(&mut w, Commit::Force)?;
        let snap = self.shared.index.snapshot();
        Ok((w.next_tlog, w.next_container, snap))
    }
}
