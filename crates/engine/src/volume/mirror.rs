//! The mirror seam: a volume's unshipped window, handed batch by batch to a
//! [`Mirror`] (the daemon's DTL client, which copies it to another router)
//! by group commit, so another router can take the vDisk over with every
//! write whose durability was promised.
//!
//! What a mirror sees is the volume's flash files, not its writes: each
//! sync's grab hands it a [`MirrorBatch`] — the unshipped segments (a tlog
//! and its containers), the container ranges rewritten in place since the
//! previous batch, the frozen watermark, and the full metadata when it
//! changed. The mirror copies what each file gained since it last looked
//! (files only grow, except for in-place rewrites, which the batch names)
//! from this router's flash. A copy of those files is what a restart of
//! this router would replay, so the router that takes over imports it the
//! way a live move's target does
//! ([`VPool::recover_mirror`](crate::VPool::recover_mirror)), with local
//! replay's rules for slots
//! written since the last hard barrier.
//!
//! Invariants:
//! - A sync's batch names every byte written before its grab; the sync
//!   completes (and the writes it covers are acknowledged) only after the
//!   mirror's [`MirrorWait`] returns, which it does once the mirror holds
//!   the batch as its mode requires, or has recorded that it no longer
//!   mirrors (the daemon records that in the cluster state first).
//! - A mirror reads containers before tlogs: an in-place rewrite writes its
//!   records before its data, so any rewritten bytes it copies come with
//!   their records.
//! - Before a manifest PUT the mirror receives the metadata it publishes
//!   ([`Mirror::publish`]): the mirror's metadata is never older than the
//!   backend's manifest. A segment leaves the mirror once a batch no
//!   longer lists it; by then the metadata the batch carries names it
//!   shipped, and its objects are on the backend (they are uploaded
//!   before the segment is marked shipped).

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::meta::VolumeMeta;

use super::{Volume, Writer};

/// One unshipped segment: a tlog and the containers its records point
/// into, oldest container first. The last segment of a batch may be the
/// open one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowSegment {
    /// The tlog's sequence number.
    pub tlog: u64,
    /// Its containers' sequence numbers.
    pub containers: Vec<u64>,
}

/// What one sync hands the mirror (module docs).
#[derive(Debug, Clone)]
pub struct MirrorBatch {
    /// The volume's unshipped segments at the grab, oldest first.
    pub segments: Vec<WindowSegment>,
    /// Container byte ranges rewritten in place since the previous batch:
    /// (container, offset, length).
    pub rewrites: Vec<(u64, u64, u64)>,
    /// The frozen watermark at the grab: slots below it were final.
    pub frozen: (u64, u32),
    /// The volume's metadata (unshipped snapshots included), if it changed
    /// since the previous batch.
    pub meta: Option<VolumeMeta>,
    /// A hard barrier (FUA, SYNCHRONIZE CACHE, snapshot, hand-over) asked
    /// for this sync: even an asynchronous mirror must hold it before the
    /// sync completes.
    pub barrier: bool,
}

/// Waits until the mirror holds a batch (see [`Mirror::sync`]).
pub type MirrorWait = Box<dyn FnOnce() + Send>;

/// Where a volume's unshipped window is mirrored. Implementations never
/// fail a sync: a mirror that cannot hold a batch stops mirroring (and
/// records that where a takeover would look) before its wait returns.
pub trait Mirror: Send + Sync + 'static {
    /// Starts mirroring a sync's batch; the sync calls the returned wait
    /// after its own fdatasyncs and completes once it returns.
    fn sync(&self, batch: MirrorBatch) -> MirrorWait;
    /// The metadata a manifest PUT is about to publish; returns once the
    /// mirror holds it (or no longer mirrors).
    fn publish(&self, meta: &VolumeMeta);
}

/// The mirror of a volume and what it was last sent (the volume's `mirror`
/// mutex).
#[derive(Default)]
pub(super) struct MirrorSlot {
    pub(super) mirror: Option<Arc<dyn Mirror>>,
    /// The metadata last handed over, to send only changes.
    pub(super) sent_meta: Option<VolumeMeta>,
}

impl Volume {
    /// The metadata a new owner needs: the volume's own, with the sequence
    /// numbers the writer has handed out (never reused).
    pub(super) fn full_meta(&self, w: &Writer) -> VolumeMeta {
        let mut meta = self.meta.lock().clone();
        meta.next_container = meta.next_container.max(w.next_container);
        meta.next_tlog = meta.next_tlog.max(w.next_tlog);
        meta
    }

    /// Under the writer lock, in a sync's grab: the batch for the mirror,
    /// if there is one.
    pub(super) fn mirror_batch(&self, w: &mut Writer) -> Option<(Arc<dyn Mirror>, MirrorBatch)> {
        if !w.mirroring {
            return None;
        }
        let meta = self.full_meta(w);
        let mut slot = self.mirror.lock();
        let mirror = slot.mirror.clone()?;
        let meta = (slot.sent_meta.as_ref() != Some(&meta)).then(|| {
            slot.sent_meta = Some(meta.clone());
            meta
        });
        drop(slot);
        let mut segments: Vec<WindowSegment> = w
            .segments
            .iter()
            .map(|s| WindowSegment {
                tlog: s.tlog,
                containers: s.containers.clone(),
            })
            .collect();
        if let Some(t) = &w.tlog {
            // Its containers include the open one.
            segments.push(WindowSegment {
                tlog: t.seq,
                containers: t.containers.clone(),
            });
        }
        let batch = MirrorBatch {
            segments,
            rewrites: std::mem::take(&mut w.mirror_rewrites),
            frozen: w.frozen,
            meta,
            barrier: std::mem::take(&mut w.hard_pending),
        };
        Some((mirror, batch))
    }

    /// Before a manifest PUT: the mirror receives the metadata first.
    pub(super) fn mirror_publish(&self) {
        let (mirror, meta) = {
            let w = self.writer.lock();
            if !w.mirroring {
                return;
            }
            let meta = self.full_meta(&w);
            let mut slot = self.mirror.lock();
            let Some(m) = slot.mirror.clone() else {
                return;
            };
            slot.sent_meta = Some(meta.clone());
            (m, meta)
        };
        mirror.publish(&meta);
    }
}
