//! A live move's source side: handing a vDisk's unshipped segments to the
//! router that takes it over, so that the guest pauses for the copy of
//! what changed last instead of an upload of the whole write buffer.
//!
//! 1. [`Volume::handover_precopy`] (the guest still runs) makes every
//!    sealed segment final — a hard barrier: no slot written so far is
//!    rewritten in place again — and lists the sealed, unshipped
//!    segments' files. The daemon copies them meanwhile. A listed file
//!    never changes again; it may vanish if the shipper uploads its segment
//!    and evicts it (then the freeze no longer lists it).
//! 2. [`Volume::handover_freeze`] stops writes (those under way finish
//!    first), seals the open container, makes everything durable on this
//!    flash, stops shipping (a ship under way never marks its segment
//!    shipped) and manifest uploads (waiting for one in flight), and
//!    returns the [`HandoverState`]: the metadata (with unshipped
//!    snapshots), the manifest's e-tag and every file still to copy.
//!    Files also listed by the precopy have the same bytes and length.
//!    From here on reads, writes and ships fail with
//!    [`EngineError::Fenced`], and the listed files are neither changed
//!    nor deleted until the volume is forgotten.
//! 3. The new owner imports them (`VPool::finish_import`) under its
//!    generation; this router then closes the volume
//!    ([`Volume::close_for_handover`]) and forgets it (`VPool::forget_volume`).
//!    [`Volume::handover_abort`] instead resumes it here.
//!
//! Invariants:
//! - Precopy and freeze take the admin lock, so no snapshot, rollback or
//!   scrub runs across them; background checkpoints skip a moving volume.
//! - The state is taken under the writer and metadata locks after the
//!   freeze: a segment is either shipped in it (and its objects are on the
//!   backend) or listed, never both and never neither.

use std::path::PathBuf;
use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};

use crate::error::{EngineError, EngineResult};
use crate::meta::VolumeMeta;

use super::fence::{FENCE_HANDOVER, FENCE_LOST, FENCE_NONE};
use super::sync::Commit;
use super::{Volume, Writer};

/// What a hand-over file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HandoverFileKind {
    /// A container (`<seq>.sco`).
    Container,
    /// A tlog (`<seq>.tlog`).
    Tlog,
}

/// One flash file of an unshipped segment, for the daemon to copy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandoverFile {
    /// Container or tlog.
    pub kind: HandoverFileKind,
    /// Its sequence number.
    pub seq: u64,
    /// Where it is on this router's flash.
    pub path: PathBuf,
    /// Its length: copy bytes `0..len`.
    pub len: u64,
}

impl HandoverFile {
    /// The name the receiving router expects it under in its import
    /// directory (`VPool::import_dir`): `<seq>.sco` or `<seq>.tlog`, 16
    /// hex digits.
    pub fn file_name(&self) -> String {
        match self.kind {
            HandoverFileKind::Container => format!("{:016x}.sco", self.seq),
            HandoverFileKind::Tlog => format!("{:016x}.tlog", self.seq),
        }
    }
}

/// Everything the new owner needs besides the backend: what
/// [`Volume::handover_freeze`] returns. Serialisable, for the daemon to
/// send.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HandoverState {
    /// The vDisk name.
    pub name: String,
    /// Its volume id.
    pub id: u64,
    /// The owner generation this router held it under.
    pub generation: u64,
    /// Its metadata at the freeze, unshipped snapshots included.
    pub meta: VolumeMeta,
    /// The e-tag of the manifest on the backend (conditional fencing).
    pub manifest_etag: Option<String>,
    /// The unshipped segments' files, oldest segment first.
    pub files: Vec<HandoverFile>,
}

impl HandoverState {
    /// Bytes to copy.
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.len).sum()
    }
}

impl Volume {
    /// The files of the sealed, unshipped segments, oldest first.
    fn sealed_files(&self, w: &Writer) -> Vec<HandoverFile> {
        let len = |p: &PathBuf| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        let mut out = Vec::new();
        for s in &w.segments {
            for &c in &s.containers {
                let path = self.container_path(c);
                out.push(HandoverFile {
                    kind: HandoverFileKind::Container,
                    seq: c,
                    len: len(&path),
                    path,
                });
            }
            let path = self.tlog_path(s.tlog);
            out.push(HandoverFile {
                kind: HandoverFileKind::Tlog,
                seq: s.tlog,
                len: len(&path),
                path,
            });
        }
        out
    }

    /// Step 1 of a hand-over (module docs): makes the sealed segments final
    /// and lists their files, while the volume keeps serving I/O.
    pub fn handover_precopy(&self) -> EngineResult<Vec<HandoverFile>> {
        self.check_admin()?;
        let _a = self.admin.lock();
        self.moving.store(true, Ordering::SeqCst);
        let mut w = self.writer.lock();
        // A hard barrier without a sync: no slot written so far is
        // rewritten in place again (the next commit's sync covers the
        // marker that says so).
        w.freeze();
        Ok(self.sealed_files(&w))
    }

    /// Step 2 of a hand-over (module docs): stops the volume here and
    /// returns what the new owner imports. Repeating it returns the same
    /// state.
    pub fn handover_freeze(&self) -> EngineResult<HandoverState> {
        if self.fence.load(Ordering::SeqCst) != FENCE_HANDOVER {
            self.check_admin()?;
        }
        let _a = self.admin.lock();
        self.moving.store(true, Ordering::SeqCst);
        if self.fence.load(Ordering::SeqCst) == FENCE_NONE {
            let mut w = self.writer.lock();
            w.stopped = true;
            self.seal(&mut w)?;
            self.sync_locked(&mut w, Commit::Skip)?;
            drop(w);
            self.set_fence(
                FENCE_HANDOVER,
                "frozen: handed over to another router".into(),
            );
        }
        self.check_handover()?;
        // Waits for a manifest upload in flight; none starts after this.
        let manifest_etag = self.manifest.lock().clone();
        let w = self.writer.lock();
        let mut meta = self.meta.lock().clone();
        meta.next_container = meta.next_container.max(w.next_container);
        meta.next_tlog = meta.next_tlog.max(w.next_tlog);
        let files = self.sealed_files(&w);
        drop(w);
        Ok(HandoverState {
            name: self.name.clone(),
            id: self.id,
            generation: self.owner_generation(),
            meta,
            manifest_etag,
            files,
        })
    }

    /// Fails unless the volume is frozen for a hand-over.
    fn check_handover(&self) -> EngineResult<()> {
        match self.fence.load(Ordering::SeqCst) {
            FENCE_HANDOVER => Ok(()),
            FENCE_LOST => Err(self.fenced_error()),
            _ => Err(EngineError::InvalidArgument(format!(
                "vDisk {:?} is not frozen for a hand-over",
                self.name
            ))),
        }
    }

    /// Resumes a volume frozen (or precopied) for a hand-over that will not
    /// happen: writes, reads and shipping start again. Fails if the volume
    /// was fenced for good meanwhile. If the other router published its
    /// epoch after all, the next manifest upload fences this volume.
    pub fn handover_abort(&self) -> EngineResult<()> {
        let _a = self.admin.lock();
        {
            let mut r = self.fence_reason.lock();
            match self.fence.load(Ordering::SeqCst) {
                FENCE_LOST => {
                    drop(r);
                    return Err(self.fenced_error());
                }
                FENCE_HANDOVER => {
                    *r = None;
                    self.fence.store(FENCE_NONE, Ordering::SeqCst);
                }
                _ => {}
            }
        }
        self.writer.lock().stopped = false;
        self.moving.store(false, Ordering::SeqCst);
        self.shared.wake_shipper();
        Ok(())
    }

    /// Stops the volume for good on a router that no longer owns it: every
    /// later call fails with [`EngineError::Fenced`], no background work
    /// touches it, and nothing is sent to the backend. Its local state
    /// stays until `VPool::forget_volume` drops it.
    pub fn close_for_handover(&self) {
        self.set_fence(FENCE_LOST, "handed over to another router".into());
        self.writer.lock().stopped = true;
        self.close();
    }

    /// Where this volume keeps a flash file of its window.
    pub fn window_file(&self, kind: HandoverFileKind, seq: u64) -> PathBuf {
        match kind {
            HandoverFileKind::Container => self.container_path(seq),
            HandoverFileKind::Tlog => self.tlog_path(seq),
        }
    }

    /// Whether a live move of this volume is under way (background
    /// checkpoints skip it).
    pub(crate) fn is_moving(&self) -> bool {
        self.moving.load(Ordering::Relaxed)
    }
}
