//! The owner's side: a [`MirrorClient`] is a volume's
//! [`Mirror`]. One worker thread per vDisk copies
//! what each sync's batch names from this router's flash to the holder
//! (`dtl.write` chunks, then a `dtl.commit`), in order, and runs the
//! mirror's state machine:
//!
//! ```text
//!            place + open                 caught up, drained,
//!  Degraded ───────────────► CatchingUp ──────────────────────► InSync
//!     ▲   (no holder, or a        │        recorded in the cluster   │
//!     │    failure, recorded)     │                                  │
//!     └───────────────────────────┴──────────────────────────────────┘
//! ```
//!
//! Invariants:
//! - While in sync, a sync's wait returns only once the holder committed
//!   its batch (mode `sync`; mode `async` waits for hard barriers and for
//!   a full queue only).
//! - Leaving "in sync" is recorded through [`Control::record`] *before*
//!   any waiting sync is released: until then syncs stay blocked, so no
//!   write is acknowledged that the holder lacks while the cluster state
//!   still calls the holder in sync (a takeover looks there).
//! - Entering "in sync" first makes every new sync wait, then drains what
//!   was queued, then records the state: every write acknowledged before
//!   the record is held by then.
//! - Containers are read before tlogs (module docs of the engine's
//!   `volume::mirror`), in whole clusters and whole records; catching up is
//!   paced to a byte rate so the guest's I/O keeps its share, and goes on
//!   in rounds until one copies at most `CAUGHT_UP` (16 MiB): only then do writes
//!   wait for the (unpaced) drain that ends in "in sync".

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::sync::Arc;
use std::time::{Duration, Instant};

use depot_engine::meta::VolumeMeta;
use depot_engine::{
    HandoverFileKind, Held, HeldNow, Mirror, MirrorBatch, MirrorWait, WindowSegment,
};
use parking_lot::{Condvar, Mutex};

use crate::error::DtlResult;
use crate::proto::{Commit, MAX_WRITE_BYTES, Open, Piece, Write, file_name};
use crate::seam::{
    ClientConfig, Control, Link, Locate, MirrorState, MirrorStatus, Mode, RecordError, Subject,
};
use crate::window::{Files, read_at_most};

/// Bytes of a window file per `dtl.write`.
const PIECE: usize = 1 << 20;
/// A round that copies at most this much carries the bytes in its commit
/// (one message) instead of separate writes.
const INLINE: u64 = 1 << 20;
/// A catch-up turns "in sync" only after a round that copied at most this
/// much: entering it makes every write wait for the drain of what is left.
const CAUGHT_UP: u64 = 16 << 20;
/// `dtl.write`s of one file sent at once (they never overlap).
const PIPELINE: usize = 8;
const _: () = assert!(PIECE <= MAX_WRITE_BYTES);

enum Item {
    Batch(MirrorBatch),
    Publish(VolumeMeta),
}

struct Queue {
    items: VecDeque<(u64, Item)>,
    /// Tickets handed out so far.
    issued: u64,
    /// Every ticket up to this is settled (held, or released degraded).
    settled: u64,
    /// Who waits for a ticket without a thread (inline writes): called
    /// once it is settled.
    callbacks: Vec<(u64, Box<dyn FnOnce() + Send>)>,
    /// New syncs wait for their ticket.
    waiting: bool,
    stop: bool,
}

struct Inner {
    subject: Subject,
    cfg: ClientConfig,
    locate: Locate,
    control: Arc<dyn Control>,
    queue: Mutex<Queue>,
    /// Wakes the worker (work queued, stop).
    work_cv: Condvar,
    /// Wakes waiting syncs (tickets settled).
    done_cv: Condvar,
    status: Mutex<MirrorStatus>,
}

/// A volume's mirror client (module docs).
pub struct MirrorClient {
    inner: Arc<Inner>,
    worker: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for MirrorClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MirrorClient")
            .field("vdisk", &self.inner.subject.vdisk)
            .finish_non_exhaustive()
    }
}

impl MirrorClient {
    /// Starts mirroring `subject` (degraded until a holder is placed and
    /// caught up). `locate` finds its files on this router's flash.
    pub fn start(
        subject: Subject,
        cfg: ClientConfig,
        locate: Locate,
        control: Arc<dyn Control>,
    ) -> Arc<Self> {
        let inner = Arc::new(Inner {
            status: Mutex::new(MirrorStatus {
                mode: cfg.mode,
                state: MirrorState::Degraded,
                holder: None,
                bytes_sent: 0,
                queued: 0,
                error: Some("no holder placed yet".into()),
                degradations: 0,
            }),
            subject,
            cfg,
            locate,
            control,
            queue: Mutex::new(Queue {
                items: VecDeque::new(),
                issued: 0,
                settled: 0,
                callbacks: Vec::new(),
                waiting: false,
                stop: false,
            }),
            work_cv: Condvar::new(),
            done_cv: Condvar::new(),
        });
        let w = inner.clone();
        let name = format!("dtl-{}", inner.subject.vdisk);
        let handle = std::thread::Builder::new()
            .name(name.chars().take(15).collect())
            .spawn(move || Worker::new(w).run())
            .ok();
        Arc::new(MirrorClient {
            inner,
            worker: Mutex::new(handle),
        })
    }

    /// The mirror's state, holder and counters.
    pub fn status(&self) -> MirrorStatus {
        let mut s = self.inner.status.lock().clone();
        s.queued = self.inner.queue.lock().items.len();
        s
    }

    /// Stops the worker (the vDisk closes or moves): waiting syncs are
    /// released, nothing more is sent.
    pub fn stop(&self) {
        self.inner.release(None, |q| q.stop = true);
        self.inner.work_cv.notify_all();
        if let Some(h) = self.worker.lock().take() {
            let _ = h.join();
        }
    }

    fn enqueue(&self, item: Item, barrier: bool) -> MirrorWait {
        let inner = self.inner.clone();
        let ticket = {
            let mut q = inner.queue.lock();
            if q.stop {
                return Box::new(HeldNow);
            }
            q.issued += 1;
            let t = q.issued;
            q.items.push_back((t, item));
            let wait = q.waiting
                && match inner.cfg.mode {
                    Mode::Sync | Mode::None => true,
                    Mode::Async => barrier || q.items.len() > inner.cfg.async_queue,
                };
            drop(q);
            inner.work_cv.notify_all();
            wait.then_some(t)
        };
        match ticket {
            None => Box::new(HeldNow),
            Some(t) => Box::new(Ticket { inner, t }),
        }
    }
}

/// A sync or round the worker has not settled yet.
struct Ticket {
    inner: Arc<Inner>,
    t: u64,
}

impl Held for Ticket {
    fn wait(self: Box<Self>) {
        let mut q = self.inner.queue.lock();
        while q.settled < self.t {
            self.inner.done_cv.wait(&mut q);
        }
    }

    fn then(self: Box<Self>, done: Box<dyn FnOnce() + Send>) {
        let mut q = self.inner.queue.lock();
        if q.settled >= self.t {
            drop(q);
            done();
        } else {
            q.callbacks.push((self.t, done));
        }
    }
}

impl Inner {
    /// Settles every ticket up to `upto` (all issued if `None`) after
    /// `change`, then wakes the waiting syncs and calls those registered.
    fn release(&self, upto: Option<u64>, change: impl FnOnce(&mut Queue)) {
        let due = {
            let mut q = self.queue.lock();
            change(&mut q);
            q.settled = q.settled.max(upto.unwrap_or(q.issued));
            let settled = q.settled;
            let (due, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut q.callbacks)
                .into_iter()
                .partition(|(t, _)| *t <= settled);
            q.callbacks = rest;
            due
        };
        self.done_cv.notify_all();
        for (_, done) in due {
            done();
        }
    }
}

impl Drop for MirrorClient {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Mirror for MirrorClient {
    fn sync(&self, batch: MirrorBatch) -> MirrorWait {
        let barrier = batch.barrier;
        self.enqueue(Item::Batch(batch), barrier)
    }

    fn publish(&self, meta: &VolumeMeta) {
        self.enqueue(Item::Publish(meta.clone()), true).wait();
    }

    fn each_write(&self) -> bool {
        self.inner.cfg.mode == Mode::Sync && {
            let q = self.inner.queue.lock();
            q.waiting && !q.stop
        }
    }
}

/// What the worker has merged from the queue and not yet committed.
#[derive(Default)]
struct Pending {
    ticket: u64,
    segments: Option<Arc<Vec<WindowSegment>>>,
    rewrites: Vec<(u64, u64, u64)>,
    frozen: Option<(u64, u32)>,
    meta: Option<VolumeMeta>,
    /// Some item needs the holder to sync (a sync's batch, a publish, a
    /// catch-up): the commit is durable.
    durable: bool,
}

struct Worker {
    inner: Arc<Inner>,
    link: Option<Arc<dyn Link>>,
    state: MirrorState,
    /// Bytes of each file the holder has (whole clusters or records).
    sent: HashMap<String, u64>,
    /// The window's files on this router's flash.
    files: Files,
    /// The window as last seen, and the newest metadata.
    segments: Arc<Vec<WindowSegment>>,
    /// The window whose files `sent` and `files` were last trimmed to.
    trimmed: Arc<Vec<WindowSegment>>,
    frozen: (u64, u32),
    meta: Option<VolumeMeta>,
    /// The holder lacks the metadata (new copy).
    meta_needed: bool,
    batch: u64,
    last_place: Option<Instant>,
    /// Pacing of a catch-up: (start, bytes since).
    pace: (Instant, u64),
    /// A round is due even with nothing queued (a holder was just placed,
    /// or a catch-up goes on).
    round_due: bool,
    /// Bytes the last round copied.
    last_copied: u64,
}

impl Worker {
    fn new(inner: Arc<Inner>) -> Self {
        Worker {
            files: Files::new(inner.locate.clone()),
            inner,
            link: None,
            state: MirrorState::Degraded,
            sent: HashMap::new(),
            segments: Arc::default(),
            trimmed: Arc::default(),
            frozen: (0, 0),
            meta: None,
            meta_needed: true,
            batch: 0,
            last_place: None,
            pace: (Instant::now(), 0),
            round_due: false,
            last_copied: u64::MAX,
        }
    }

    fn run(mut self) {
        loop {
            if self.inner.queue.lock().stop {
                return;
            }
            if self.link.is_none() {
                self.try_place();
            }
            let mut pending = self.take(Duration::from_millis(500));
            if self.inner.queue.lock().stop {
                return;
            }
            if pending.is_none() && self.round_due && self.link.is_some() {
                pending = Some(Pending {
                    durable: true,
                    ..Pending::default()
                });
            }
            self.round_due = false;
            let Some(p) = pending else {
                self.maybe_in_sync();
                continue;
            };
            if self.link.is_none() {
                // Degraded: nothing to send to; keep the newest view for
                // the next holder.
                self.absorb(&p);
                self.settle(p.ticket);
                continue;
            }
            let pace = self.state == MirrorState::CatchingUp;
            match self.send(p, pace) {
                Ok(t) => self.settle(t),
                Err(e) => self.degrade(e.to_string()),
            }
            self.maybe_in_sync();
        }
    }

    /// Waits up to `wait` for queued work and merges all of it.
    fn take(&self, wait: Duration) -> Option<Pending> {
        let mut q = self.inner.queue.lock();
        if q.items.is_empty() && !q.stop {
            self.inner.work_cv.wait_for(&mut q, wait);
        }
        if q.items.is_empty() {
            return None;
        }
        let mut p = Pending::default();
        for (t, item) in q.items.drain(..) {
            p.ticket = t;
            match item {
                Item::Batch(b) => {
                    p.durable |= b.durable;
                    p.segments = Some(b.segments);
                    p.rewrites.extend(b.rewrites);
                    p.frozen = Some(b.frozen);
                    if b.meta.is_some() {
                        p.meta = b.meta;
                    }
                }
                Item::Publish(m) => {
                    p.durable = true;
                    p.meta = Some(m);
                }
            }
        }
        Some(p)
    }

    fn absorb(&mut self, p: &Pending) {
        if let Some(s) = &p.segments {
            self.segments.clone_from(s);
        }
        if let Some(f) = p.frozen {
            self.frozen = f;
        }
        if let Some(m) = &p.meta {
            self.meta = Some(m.clone());
        }
    }

    fn settle(&self, ticket: u64) {
        self.inner.release(Some(ticket), |_| {});
    }

    fn set_status(&self, f: impl FnOnce(&mut MirrorStatus)) {
        f(&mut self.inner.status.lock());
    }

    /// Places a holder (at most every `retry`) and opens a new copy there.
    fn try_place(&mut self) {
        if self
            .last_place
            .is_some_and(|t| t.elapsed() < self.inner.cfg.retry)
        {
            return;
        }
        self.last_place = Some(Instant::now());
        let s = &self.inner.subject;
        let link = match self.inner.control.place() {
            Ok(l) => l,
            Err(e) => {
                self.set_status(|st| st.error = Some(e));
                return;
            }
        };
        let holder = link.holder().to_string();
        if let Err(e) = self
            .inner
            .control
            .record(Some(&holder), MirrorState::CatchingUp)
        {
            if matches!(e, RecordError::Deposed(_)) {
                self.give_up();
            }
            self.set_status(|st| st.error = Some(format!("recording the holder: {e}")));
            return;
        }
        let open = Open {
            vdisk: s.vdisk.clone(),
            vpool: s.vpool.clone(),
            id: s.id,
            generation: s.generation,
        };
        if let Err(e) = link.open(&open) {
            self.set_status(|st| st.error = Some(format!("{holder}: {e}")));
            return;
        }
        tracing::info!(vdisk = %s.vdisk, %holder, "DTL placed; catching up");
        self.link = Some(link);
        self.state = MirrorState::CatchingUp;
        self.sent.clear();
        self.meta_needed = true;
        self.batch = 0;
        self.pace = (Instant::now(), 0);
        self.set_status(|st| {
            st.state = MirrorState::CatchingUp;
            st.holder = Some(holder);
            st.error = None;
        });
        // The whole window goes with the next round, even with no sync
        // queued (an idle vDisk catches up too).
        self.round_due = true;
        self.last_copied = u64::MAX;
    }

    /// Leaves the mirror: records "degraded" (retrying until it is
    /// recorded or the client stops), then releases every waiting sync.
    fn degrade(&mut self, why: String) {
        let vdisk = self.inner.subject.vdisk.clone();
        tracing::warn!(%vdisk, error = %why, "DTL lost; the vDisk runs without a mirror");
        self.link = None;
        self.state = MirrorState::Degraded;
        loop {
            match self.inner.control.record(None, MirrorState::Degraded) {
                Ok(()) => break,
                Err(RecordError::Deposed(e)) => {
                    // No longer the owner: nothing this router acknowledges
                    // counts any more (module docs), so the waiting syncs
                    // are released and the mirror stops for good.
                    tracing::info!(%vdisk, error = %e, "no longer the owner; the mirror stops");
                    self.set_status(|st| {
                        st.state = MirrorState::Degraded;
                        st.holder = None;
                        st.error = Some(e);
                    });
                    self.give_up();
                    return;
                }
                Err(RecordError::Unavailable(e)) => {
                    tracing::warn!(%vdisk, error = %e, "cannot record the DTL as degraded; syncs wait");
                    if self.inner.queue.lock().stop {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
        }
        self.inner.release(None, |q| q.waiting = false);
        self.last_place = Some(Instant::now());
        self.set_status(|st| {
            st.state = MirrorState::Degraded;
            st.holder = None;
            st.error = Some(why);
            st.degradations += 1;
        });
    }

    /// Stops the worker for good and releases every waiting sync.
    fn give_up(&self) {
        self.inner.release(None, |q| {
            q.stop = true;
            q.waiting = false;
            q.items.clear();
        });
    }

    /// After a round: a catching-up mirror with nothing left to send
    /// becomes in sync (module docs: wait, drain, record).
    fn maybe_in_sync(&mut self) {
        if self.state != MirrorState::CatchingUp || self.link.is_none() || self.meta_needed {
            return;
        }
        if self.last_copied > CAUGHT_UP {
            // Still far behind: another paced round, the guest not waiting.
            self.round_due = true;
            return;
        }
        self.inner.queue.lock().waiting = true;
        // Durable rounds: "in sync" means the holder has the whole window
        // on its flash (the catch-up's rounds were durable too).
        // Not paced: syncs (and writes) wait for these rounds, and what is
        // left is what arrived during the last catch-up round.
        while let Some(mut p) = self.take(Duration::ZERO) {
            p.durable = true;
            match self.send(p, false) {
                Ok(t) => self.settle(t),
                Err(e) => return self.degrade(e.to_string()),
            }
        }
        let holder = self.link.as_ref().map(|l| l.holder().to_string());
        match self
            .inner
            .control
            .record(holder.as_deref(), MirrorState::InSync)
        {
            Ok(()) => {
                self.state = MirrorState::InSync;
                tracing::info!(vdisk = %self.inner.subject.vdisk, holder = holder.as_deref().unwrap_or(""), "DTL in sync");
                self.set_status(|st| st.state = MirrorState::InSync);
            }
            Err(e) => {
                // Never in sync unrecorded: a takeover must not count on it.
                if matches!(e, RecordError::Deposed(_)) {
                    self.give_up();
                } else {
                    self.inner.queue.lock().waiting = false;
                }
                self.set_status(|st| st.error = Some(format!("recording in sync: {e}")));
            }
        }
    }

    /// Copies what `p` names (at most `catch_up_rate` if `pace`) and
    /// commits it; the ticket it settles.
    fn send(&mut self, p: Pending, pace: bool) -> DtlResult<u64> {
        self.absorb(&p);
        let link = self
            .link
            .clone()
            .ok_or_else(|| crate::error::DtlError::Peer("no holder".into()))?;
        // Containers first, then tlogs (module docs).
        let segments = self.segments.clone();
        let (ranges, now_sent) = self.files.plan(&segments, &p.rewrites, &self.sent);
        let meta = if self.meta_needed || p.meta.is_some() {
            self.meta.clone()
        } else {
            None
        };
        if meta.is_none() && self.meta_needed {
            // Nothing to describe the copy with yet: wait for a batch.
            return Ok(p.ticket);
        }
        // A small round travels in its commit; a large one (a catch-up, a
        // big write) as pipelined writes first.
        let total: u64 = ranges.iter().map(|r| r.to - r.from).sum();
        self.last_copied = total;
        let (mut pieces, mut body) = (Vec::new(), Vec::new());
        if total <= INLINE && !pace {
            for r in &ranges {
                let at = body.len();
                body.resize(at + usize::try_from(r.to - r.from).unwrap_or(0), 0);
                let got = read_at_most(&r.file, &mut body[at..], r.from)?;
                body.truncate(at + got);
                if got > 0 {
                    pieces.push(Piece {
                        file: r.name.clone(),
                        offset: r.from,
                        len: got as u64,
                    });
                }
            }
        } else {
            for r in &ranges {
                self.copy(&*link, &r.name, &r.file, r.from, r.to, pace)?;
            }
        }
        self.sent.extend(now_sent);
        if !Arc::ptr_eq(&segments, &self.trimmed) {
            // The window changed: forget the files that left it.
            let keep: std::collections::HashSet<String> = segments
                .iter()
                .flat_map(|s| {
                    s.containers
                        .iter()
                        .map(|&c| file_name(HandoverFileKind::Container, c))
                        .chain([file_name(HandoverFileKind::Tlog, s.tlog)])
                })
                .collect();
            self.sent.retain(|n, _| keep.contains(n));
            self.files.retain(&keep);
            self.trimmed = segments.clone();
        }
        self.batch += 1;
        link.commit(
            &Commit {
                vdisk: self.inner.subject.vdisk.clone(),
                generation: self.inner.subject.generation,
                batch: self.batch,
                segments: segments.to_vec(),
                frozen: self.frozen,
                meta,
                durable: p.durable,
                pieces,
            },
            &body,
        )?;
        let carried = body.len() as u64;
        if carried > 0 {
            self.set_status(|st| st.bytes_sent += carried);
        }
        self.meta_needed = false;
        Ok(p.ticket)
    }

    /// Sends bytes `from..to` of a file in chunks; a file that is gone was
    /// shipped and dropped meanwhile (the commit will not list it).
    fn copy(
        &mut self,
        link: &dyn Link,
        name: &str,
        f: &File,
        from: u64,
        to: u64,
        pace: bool,
    ) -> DtlResult<()> {
        let mut off = from;
        let mut eof = false;
        while off < to && !eof {
            let mut pieces: Vec<(Write, Vec<u8>)> = Vec::with_capacity(PIPELINE);
            while pieces.len() < PIPELINE && off < to && !eof {
                let n = usize::try_from((to - off).min(PIECE as u64)).unwrap_or(PIECE);
                let mut buf = vec![0u8; n];
                let got = read_at_most(f, &mut buf, off)?;
                // A short read: the file shrank (shipped and gone).
                eof = got < n;
                if got == 0 {
                    break;
                }
                buf.truncate(got);
                pieces.push((
                    Write {
                        vdisk: self.inner.subject.vdisk.clone(),
                        generation: self.inner.subject.generation,
                        file: name.to_string(),
                        offset: off,
                    },
                    buf,
                ));
                off += got as u64;
            }
            if pieces.is_empty() {
                break;
            }
            let sent: u64 = pieces.iter().map(|(_, b)| b.len() as u64).sum();
            link.write_many(pieces)?;
            self.set_status(|st| st.bytes_sent += sent);
            if pace {
                self.pace_to(sent);
            }
        }
        Ok(())
    }

    /// Sleeps so that a catch-up stays under `catch_up_rate`.
    fn pace_to(&mut self, bytes: u64) {
        let rate = self.inner.cfg.catch_up_rate.max(1);
        self.pace.1 += bytes;
        let due = Duration::from_secs_f64(self.pace.1 as f64 / rate as f64);
        let spent = self.pace.0.elapsed();
        if due > spent {
            std::thread::sleep(due - spent);
        }
        if self.pace.0.elapsed() > Duration::from_secs(10) {
            self.pace = (Instant::now(), 0);
        }
    }
}
