//! Shipping: sealed segments (containers, then their tlog) and the
//! manifest (`fence`) go to the backend, oldest first
//! ([`Volume::ship_one`]), under the keys of the epoch that covers them;
//! shipped
//! local tlogs are deleted once an index commit covers them
//! ([`Volume::drop_applied_tlogs`]), shipped local containers beyond
//! `keep_shipped_bytes` are evicted.
//!
//! Invariants:
//! - Segments ship in order; a segment's slots are frozen and durable
//!   before any of its objects is uploaded, and the manifest is written
//!   after the objects it names.
//! - A sealed segment waits for `ship_interval` or write-buffer pressure
//!   ([`Volume::wants_ship`]) so its slots can still be rewritten in place.
//! - A shipped local tlog is deleted only after RocksDB's WAL holds an
//!   index commit that covers it.
//! - A segment is marked shipped (metadata updated, popped from the queue)
//!   under the writer lock, and never once a hand-over's freeze stopped
//!   the writer; fenced volumes and readers ship nothing.

use std::sync::atomic::Ordering;

use bytes::Bytes;

use crate::error::{EngineError, EngineResult};
use crate::meta::{TlogRef, VolumeMeta};

use super::Volume;

impl Volume {
    /// Whether this volume has work for the shipper.
    ///
    /// A sealed segment waits until its tlog is `ship_interval` old, the
    /// write buffer is three quarters full, a snapshot follows it, or it is already
    /// frozen (an earlier incarnation's): until then its slots can still be
    /// rewritten in place, and shipping freezes them. The backend's
    /// recovery point stays bounded by `ship_interval`, as for the open
    /// container.
    pub(crate) fn wants_ship(&self) -> bool {
        if self.inactive() || self.is_reader() {
            return false;
        }
        if self.meta_dirty.load(Ordering::SeqCst) {
            return true;
        }
        let cfg = &self.shared.cfg;
        let w = self.writer.lock();
        w.segments.front().is_some_and(|s| {
            s.tlog_file.is_none()
                || s.generation != w.generation
                || s.opened.elapsed() >= cfg.ship_interval
                || self.unshipped.load(Ordering::Relaxed) > self.ship_threshold()
        })
    }

    /// Unshipped bytes above which sealed segments ship without waiting
    /// for `ship_interval`: ¾ of the write buffer, leaving a quarter for
    /// bursts before writers throttle.
    pub(crate) fn ship_threshold(&self) -> u64 {
        self.shared.cfg.write_buffer_bytes / 4 * 3
    }

    pub(super) fn manifest_for_backend(&self) -> VolumeMeta {
        let w = self.writer.lock();
        let first_unshipped_gen = w.segments.front().map_or(w.generation, |s| s.generation);
        let (nc, nt) = (w.next_container, w.next_tlog);
        drop(w);
        let mut m = self.meta.lock().clone();
        m.snapshots.retain(|s| s.generation < first_unshipped_gen);
        m.next_container = m.next_container.max(nc);
        m.next_tlog = m.next_tlog.max(nt);
        m
    }

    /// Ships the oldest sealed segment; returns whether there was one.
    pub(crate) fn ship_one(&self, forever: bool) -> EngineResult<bool> {
        let _g = self.ship_lock.lock();
        if self.closed.load(Ordering::Relaxed) || self.is_reader() {
            return Ok(false);
        }
        self.check_fence()?;
        let seg = self.writer.lock().segments.front().cloned();
        let Some(seg) = seg else {
            if self.meta_dirty.load(Ordering::SeqCst) {
                self.upload_manifest(forever)?;
            }
            return Ok(false);
        };
        // The segment's containers and tlog are final from here on (its
        // in-place records went to that tlog), then durable. Other
        // segments stay mutable. The index is not committed for it: the
        // local tlog stays until a regular commit covers it (replay
        // applies a shipped tlog's records as they are).
        let target = {
            let mut w = self.writer.lock();
            for &c in &seg.containers {
                w.mutable.remove(&c);
            }
            if let Some(s) = w.segments.iter_mut().find(|s| s.tlog == seg.tlog) {
                s.tlog_file = None;
            }
            w.write_seq
        };
        self.sync_to(target, false)?;
        let be = &self.shared.backend;
        for &c in &seg.containers {
            // A sealed container is never written again (module docs), so a
            // local-directory backend can take it as a hard link.
            let key = self.container_key(c);
            if self.shared.cfg.local_backend_shortcuts
                && be.put_link(&key, &self.container_path(c), forever)?
            {
                continue;
            }
            let data = std::fs::read(self.container_path(c))
                .map_err(|e| EngineError::io("reading a container to ship", e))?;
            be.put(&key, Bytes::from(data), forever)?;
        }
        let tlog = std::fs::read(self.tlog_path(seg.tlog))
            .map_err(|e| EngineError::io("reading a tlog to ship", e))?;
        be.put(&self.tlog_key(seg.tlog), Bytes::from(tlog), forever)?;
        let lens: Vec<(u64, u64)> = seg
            .containers
            .iter()
            .map(|&c| {
                let len = std::fs::metadata(self.container_path(c)).map_or(0, |m| m.len());
                (c, len)
            })
            .collect();
        {
            // One step under the writer lock: a hand-over's freeze sees the
            // segment either shipped or queued.
            let mut w = self.writer.lock();
            if w.stopped {
                return Err(self.fenced_error());
            }
            let (nc, nt) = (w.next_container, w.next_tlog);
            let mut m = self.meta.lock();
            // Sequence numbers are never reused: a reused name would
            // overwrite a shipped object.
            m.next_container = m.next_container.max(nc);
            m.next_tlog = m.next_tlog.max(nt);
            m.shipped.tlogs.push(TlogRef {
                seq: seg.tlog,
                generation: seg.generation,
            });
            m.shipped.next_tlog = seg.tlog + 1;
            drop(m);
            if w.segments.front().is_some_and(|s| s.tlog == seg.tlog) {
                w.segments.pop_front();
            }
            for (c, len) in lens {
                w.shipped_local.push_back((c, len));
                w.shipped_local_bytes += len;
            }
        }
        {
            let m = self.meta.lock();
            self.persist_meta_quiet(&m)?;
        }
        // Clears the dirty flag before it snapshots the metadata, so a
        // concurrent change (a new snapshot) re-marks it and is uploaded
        // by the next round.
        self.upload_manifest(forever)?;
        self.unshipped.fetch_sub(
            seg.bytes.min(self.unshipped.load(Ordering::Relaxed)),
            Ordering::Relaxed,
        );
        self.throttle_cv.notify_all();
        // The metadata that calls the segment shipped is durable
        // (`persist_meta_quiet` syncs), so replay will trust the tlog's
        // records without the containers evicted here.
        self.shipped_tlogs.lock().push((seg.tlog, target));
        self.drop_applied_tlogs()?;
        self.evict_local(self.shared.cfg.keep_shipped_bytes);
        Ok(true)
    }

    /// Deletes the local tlogs of shipped segments that an index commit
    /// covers, after syncing RocksDB's WAL (the commit itself is not
    /// synced: until then the tlog is the durable copy).
    pub(super) fn drop_applied_tlogs(&self) -> EngineResult<()> {
        let committed = self.commit.lock().committed;
        let mut pending = self.shipped_tlogs.lock();
        if !pending.iter().any(|&(_, upto)| upto <= committed) {
            return Ok(());
        }
        self.shared.index.sync_wal()?;
        pending.retain(|&(seq, upto)| {
            if upto > committed {
                return true;
            }
            let _ = std::fs::remove_file(self.tlog_path(seq));
            false
        });
        Ok(())
    }

    /// Deletes the oldest shipped local containers beyond `keep` bytes.
    pub(crate) fn evict_local(&self, keep: u64) {
        let mut w = self.writer.lock();
        while w.shipped_local_bytes > keep {
            let Some((c, len)) = w.shipped_local.pop_front() else {
                break;
            };
            w.shipped_local_bytes -= len;
            self.files.lock().remove(&c);
            let _ = std::fs::remove_file(self.container_path(c));
        }
    }

    /// Closes the open container and ships everything to the backend;
    /// returns once the backend holds every write made before the call.
    pub fn sync_to_backend(&self) -> EngineResult<()> {
        self.check_ok()?;
        if self.is_reader() {
            return Ok(());
        }
        {
            let mut w = self.writer.lock();
            self.seal(&mut w)?;
        }
        while self.ship_one(false)? {}
        if self.meta_dirty.load(Ordering::SeqCst) {
            let _g = self.ship_lock.lock();
            self.upload_manifest(false)?;
        }
        Ok(())
    }

    /// Whether every segment with a tlog below `cut` has shipped.
    pub(crate) fn shipped_before(&self, cut: u64) -> bool {
        self.writer
            .lock()
            .segments
            .front()
            .is_none_or(|s| s.tlog >= cut)
    }
}
