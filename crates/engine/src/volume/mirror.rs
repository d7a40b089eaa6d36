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
//! A mirror that holds every completed write ([`Mirror::each_write`]: mode
//! `sync`, in sync) also gets a *write round* after each write that asked
//! for no durability: a batch like a sync's (not durable: neither side
//! fdatasyncs for it), grabbed and awaited before the write completes, one
//! round for every write that arrived while the previous one ran (group
//! commit again, without the fdatasync). So a guest that keeps running
//! across a takeover never reads back older data than it wrote.
//!
//! Invariants:
//! - A sync's batch names every byte written before its grab; the sync
//!   completes (and the writes it covers are acknowledged) only after the
//!   mirror's [`MirrorWait`] returns, which it does once the mirror holds
//!   the batch as its mode requires, or has recorded that it no longer
//!   mirrors (the daemon records that in the cluster state first).
//! - While [`Mirror::each_write`] holds, a write completes only after a
//!   round (or sync) grabbed after it was written has been waited for.
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

use crate::error::EngineResult;
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
    /// The volume's unshipped segments at the grab, oldest first (shared
    /// by the batches of an unchanged window).
    pub segments: Arc<Vec<WindowSegment>>,
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
    /// A sync (this router fdatasyncs what the batch names): the mirror
    /// holds it durably too. `false`: a write round (module docs), held
    /// as this router holds an unflushed write.
    pub durable: bool,
}

/// Until the mirror holds a batch (see [`Mirror::sync`]).
pub trait Held: Send {
    /// Blocks until then.
    fn wait(self: Box<Self>);
    /// Calls `done` then (at once if it is so already), on whichever
    /// thread finds out.
    fn then(self: Box<Self>, done: Box<dyn FnOnce() + Send>);
}

/// What [`Mirror::sync`] returns.
pub type MirrorWait = Box<dyn Held>;

/// A batch held already (or one nobody waits for).
#[derive(Debug, Clone, Copy)]
pub struct HeldNow;

impl Held for HeldNow {
    fn wait(self: Box<Self>) {}
    fn then(self: Box<Self>, done: Box<dyn FnOnce() + Send>) {
        done();
    }
}

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
    /// Whether every completed write must be held by the mirror (write
    /// rounds, module docs): a synchronous mirror that is in sync.
    fn each_write(&self) -> bool;
}

/// What identifies a volume's segment list: how many sealed segments,
/// the first's and the last's tlog, and the open tlog with how many
/// containers it has. Sealed segments never change and tlog numbers are
/// never reused; the list only gains segments at its end (a seal), loses
/// them at its start (shipping) or its end (a rollback discards the newest
/// segments), and the open tlog only gains containers. So two lists with
/// the same key are the same list.
pub(super) type WindowKey = (usize, u64, u64, u64, usize);

fn window_key(w: &Writer) -> WindowKey {
    let (first, last) = match (w.segments.front(), w.segments.back()) {
        (Some(f), Some(l)) => (f.tlog, l.tlog),
        _ => (0, 0),
    };
    let (open, containers) = w
        .tlog
        .as_ref()
        .map_or((u64::MAX, 0), |t| (t.seq, t.containers.len()));
    (w.segments.len(), first, last, open, containers)
}

/// Where write rounds stand (the volume's `rounds` mutex, with
/// `rounds_cv`).
#[derive(Default)]
pub(super) struct Rounds {
    /// Every write with a sequence number up to this is held by the mirror.
    pub(super) held: u64,
    /// A round is under way (one at a time).
    pub(super) running: bool,
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

    /// Under the writer lock, in a sync's grab (`durable`) or a write
    /// round's: the batch for the mirror, if there is one. A round leaves
    /// the hard-barrier flag to the sync that follows it.
    pub(super) fn mirror_batch(
        &self,
        w: &mut Writer,
        durable: bool,
    ) -> Option<(Arc<dyn Mirror>, MirrorBatch)> {
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
        let batch = MirrorBatch {
            segments: Self::mirror_window(w),
            rewrites: std::mem::take(&mut w.mirror_rewrites),
            frozen: w.frozen,
            meta,
            barrier: durable && std::mem::take(&mut w.hard_pending),
            durable,
        };
        Some((mirror, batch))
    }

    /// The window's segment list for a batch: the one last handed over
    /// while its [`WindowKey`] is unchanged (every write of a round grabs
    /// one, so it is not rebuilt per write), else a new one.
    fn mirror_window(w: &mut Writer) -> Arc<Vec<WindowSegment>> {
        let key = window_key(w);
        if let Some((k, list)) = &w.mirror_window
            && *k == key
        {
            return list.clone();
        }
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
        let list = Arc::new(segments);
        w.mirror_window = Some((key, list.clone()));
        list
    }

    /// The mirror, if every completed write must reach it (module docs).
    fn round_mirror(&self) -> Option<Arc<dyn Mirror>> {
        let slot = self.mirror.lock();
        slot.mirror.as_ref().filter(|m| m.each_write()).cloned()
    }

    /// Whether a write would need a round: the inline no-wait write path
    /// declines then (or defers its completion).
    pub(super) fn needs_rounds(&self) -> bool {
        self.round_mirror().is_some()
    }

    /// Under the writer lock, right after an inline write: its round, if
    /// it needs one — a batch of its own, handed to the mirror at once
    /// (the mirror merges the batches queued while it copies, so
    /// concurrent writes still share a copy and a commit). The write
    /// completes when the returned wait says so.
    pub(super) fn inline_round(&self, w: &mut Writer) -> EngineResult<Option<MirrorWait>> {
        if self.round_mirror().is_none() {
            return Ok(None);
        }
        if let Some(t) = w.tlog.as_mut() {
            t.flush_buf()?;
        }
        Ok(self.mirror_batch(w, false).map(|(m, batch)| m.sync(batch)))
    }

    /// After a write that asked for no durability: returns once the mirror
    /// holds every write made before the call, when it must
    /// ([`Mirror::each_write`]). Writes arriving while a round runs share
    /// the next one.
    pub(super) fn mirror_writes(&self) -> EngineResult<()> {
        if self.round_mirror().is_none() {
            return Ok(());
        }
        let target = self.writer.lock().write_seq;
        loop {
            {
                let mut r = self.rounds.lock();
                while r.running && r.held < target {
                    self.rounds_cv.wait(&mut r);
                }
                if r.held >= target {
                    return Ok(());
                }
                r.running = true;
            }
            let grabbed = (|| {
                let mut w = self.writer.lock();
                if let Some(t) = w.tlog.as_mut() {
                    t.flush_buf()?;
                }
                let upto = w.write_seq;
                EngineResult::Ok((upto, self.mirror_batch(&mut w, false)))
            })();
            let (upto, wait) = match grabbed {
                // A grabbed batch always goes (it carries the rewrites).
                Ok((upto, Some((m, batch)))) => (upto, Some(m.sync(batch))),
                Ok((upto, _)) => (upto, None),
                Err(e) => {
                    self.round_done(0);
                    return Err(e);
                }
            };
            if let Some(wait) = wait {
                wait.wait();
            }
            self.round_done(upto);
        }
    }

    /// A round is done: the mirror holds every write up to `upto`.
    fn round_done(&self, upto: u64) {
        let mut r = self.rounds.lock();
        r.running = false;
        r.held = r.held.max(upto);
        self.rounds_cv.notify_all();
    }

    /// A mirrored sync is done: the mirror holds every write up to `upto`.
    pub(super) fn mirror_held(&self, upto: u64) {
        let mut r = self.rounds.lock();
        if upto > r.held {
            r.held = upto;
            self.rounds_cv.notify_all();
        }
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
