//! Ownership: object keys from the epoch table, the fence state, the
//! fenced manifest upload ([`Volume::upload_manifest`]) and claiming a new
//! epoch when a grid owner opens the volume ([`Volume::claim`]).
//!
//! A grid owner (generation > 0) publishes its manifest only after the
//! daemon's hook ([`Owner::check`]) passed, and then
//! - with [`FencingMode::Conditional`] as a PUT conditional on the e-tag of
//!   the manifest it last read or wrote (`If-Match`; `If-None-Match: *`
//!   when there was none), so the store itself refuses a deposed owner;
//! - otherwise after reading the manifest: one whose newest epoch is newer
//!   than this owner's fences it.
//!
//! A refused PUT, a failed hook or a newer epoch fences the volume for
//! good. Standalone volumes (generation 0) upload unconditionally, as
//! before grids existed.
//!
//! Invariants:
//! - Every manifest upload holds the `manifest` lock from its fence check
//!   to the stored e-tag, so uploads are ordered and a hand-over's freeze
//!   can wait for the one in flight.
//! - A volume whose fence state is set never uploads a manifest again
//!   (until a hand-over is aborted), and a reader never does.
//! - A new epoch is persisted locally before the manifest naming it is
//!   published, and published before the volume serves I/O: a crash in
//!   between leaves a local epoch newer than the backend's, which the next
//!   open publishes.

use std::sync::atomic::Ordering;

use bytes::Bytes;

use crate::backend::{ETag, PutMode, PutOutcome, keys};
use crate::error::{EngineError, EngineResult};
use crate::meta::{ObjectKind, VolumeMeta, owner_of};
use crate::owner::{FenceError, FencingMode, Owner};

use super::Volume;

/// Not fenced.
pub(super) const FENCE_NONE: u8 = 0;
/// Frozen for a hand-over: fenced until the hand-over is aborted.
pub(super) const FENCE_HANDOVER: u8 = 1;
/// Fenced for good.
pub(super) const FENCE_LOST: u8 = 2;

impl Volume {
    fn object_owner(&self, kind: ObjectKind, seq: u64) -> u64 {
        owner_of(&self.epochs.read(), kind, seq)
    }

    /// Backend key of container `seq` (generation from the epoch table).
    pub(crate) fn container_key(&self, seq: u64) -> String {
        keys::container(self.id, seq, self.object_owner(ObjectKind::Container, seq))
    }

    /// Backend key of tlog `seq`.
    pub(crate) fn tlog_key(&self, seq: u64) -> String {
        keys::tlog(self.id, seq, self.object_owner(ObjectKind::Tlog, seq))
    }

    /// Backend key of checkpoint `seq`.
    pub(crate) fn checkpoint_key(&self, seq: u64) -> String {
        keys::checkpoint(self.id, seq, self.object_owner(ObjectKind::Checkpoint, seq))
    }

    /// The owner generation this volume was opened under (0: standalone).
    pub fn owner_generation(&self) -> u64 {
        self.owner.lock().generation()
    }

    /// The generation of the manifest's newest epoch as this volume knows
    /// it (0 without epochs).
    pub fn epoch_generation(&self) -> u64 {
        self.epochs.read().last().map_or(0, |e| e.generation)
    }

    /// Whether the volume is fenced (another owner took over, the fencing
    /// hook failed, or it was frozen or closed for a hand-over).
    pub fn is_fenced(&self) -> bool {
        self.fence.load(Ordering::Relaxed) != FENCE_NONE
    }

    /// Whether the volume is open only as a grid clone's parent.
    pub fn is_reader(&self) -> bool {
        self.reader.load(Ordering::Relaxed)
    }

    pub(super) fn fenced_error(&self) -> EngineError {
        let why = self.fence_reason.lock().clone();
        EngineError::Fenced(why.unwrap_or_else(|| "no longer owned here".into()))
    }

    /// Sets the fence state to `state` with `reason` (a lost fence is never
    /// lowered to a hand-over).
    pub(super) fn set_fence(&self, state: u8, reason: String) {
        let mut r = self.fence_reason.lock();
        if self.fence.load(Ordering::SeqCst) == FENCE_LOST {
            return;
        }
        *r = Some(reason);
        self.fence.store(state, Ordering::SeqCst);
        drop(r);
        self.throttle_cv.notify_all();
    }

    /// Fences the volume for good; returns the error every later call
    /// gets.
    pub(crate) fn fence(&self, reason: String) -> EngineError {
        tracing::warn!(volume = %self.name, %reason, "vDisk fenced");
        self.set_fence(FENCE_LOST, reason);
        self.fenced_error()
    }

    /// Fails with [`EngineError::Fenced`] if the volume is fenced.
    pub(crate) fn check_fence(&self) -> EngineResult<()> {
        if self.is_fenced() {
            return Err(self.fenced_error());
        }
        Ok(())
    }

    /// Asks the daemon's hook whether this router still owns the volume
    /// (before deleting objects); a failure fences the volume.
    pub(crate) fn check_owner(&self) -> EngineResult<()> {
        self.check_fence()?;
        let owner = self.owner.lock().clone();
        owner.check().map_err(|e| self.check_failed(e))
    }

    /// An ownership check that did not pass: a lost ownership fences the
    /// volume; one that cannot be checked now is a transient failure of
    /// what asked (retried later; I/O goes on).
    fn check_failed(&self, e: FenceError) -> EngineError {
        match e {
            FenceError::Lost(why) => self.fence(format!("ownership check failed: {why}")),
            FenceError::Unknown(why) => {
                EngineError::BackendUnavailable(format!("ownership cannot be checked: {why}"))
            }
        }
    }

    /// Whether this volume may delete an object whose key carries owner
    /// generation `generation`: never one newer than every epoch it knows
    /// (a later owner's, whatever this one believes).
    pub(crate) fn may_delete_generation(&self, generation: u64) -> bool {
        generation <= self.epoch_generation()
    }

    /// Uploads the manifest (call with `ship_lock` held). Clears the dirty
    /// flag before it snapshots the metadata, so a concurrent change is
    /// uploaded by the next round. Grid owners are fenced (module docs);
    /// readers publish nothing.
    pub(crate) fn upload_manifest(&self, forever: bool) -> EngineResult<()> {
        if self.is_reader() {
            return Ok(());
        }
        let mut etag = self.manifest.lock();
        self.check_fence()?;
        self.meta_dirty.store(false, Ordering::SeqCst);
        let m = self.manifest_for_backend();
        // The mirror holds the metadata (taken after `m`, so at least as
        // new) before the backend does (`mirror`).
        self.mirror_publish();
        let r = serde_json::to_vec(&m)
            .map_err(|e| EngineError::corrupt("manifest", e.to_string()))
            .and_then(|body| {
                let owner = self.owner.lock().clone();
                if owner.is_grid() {
                    self.publish_fenced(&owner, &mut etag, body, forever)
                } else {
                    self.shared
                        .backend
                        .put(&keys::manifest(self.id), Bytes::from(body), forever)
                }
            });
        if r.is_err() {
            self.meta_dirty.store(true, Ordering::SeqCst);
        }
        r
    }

    /// A grid owner's manifest PUT (module docs).
    fn publish_fenced(
        &self,
        owner: &Owner,
        etag: &mut Option<ETag>,
        body: Vec<u8>,
        forever: bool,
    ) -> EngineResult<()> {
        owner.check().map_err(|e| self.check_failed(e))?;
        let be = &self.shared.backend;
        let key = keys::manifest(self.id);
        let body = Bytes::from(body);
        if self.shared.fencing_mode() != FencingMode::Conditional {
            match be.get(&key) {
                Ok(cur) => {
                    let cur: VolumeMeta = serde_json::from_slice(&cur)
                        .map_err(|e| EngineError::corrupt("manifest", e.to_string()))?;
                    let newest = cur.owner_generation();
                    if newest > owner.generation() {
                        return Err(self.fence(format!(
                            "the manifest names owner generation {newest}, newer than {}",
                            owner.generation()
                        )));
                    }
                }
                Err(EngineError::ObjectNotFound(_)) => {}
                Err(e) => return Err(e),
            }
            return be.put(&key, body, forever);
        }
        let mode = match etag.clone() {
            Some(t) => PutMode::Update(t),
            None => PutMode::Create,
        };
        match be.put_mode(&key, body.clone(), &mode, forever)? {
            PutOutcome::Stored(Some(t)) => {
                *etag = Some(t);
                Ok(())
            }
            PutOutcome::Stored(None) => {
                // No e-tag in the reply: learn it, or the next PUT would
                // be refused as if another owner had written.
                *etag = match be.get_with_etag(&key) {
                    Ok((cur, t)) if cur == body => t,
                    _ => None,
                };
                Ok(())
            }
            PutOutcome::Refused(why) => {
                // An earlier attempt of this same PUT may have been stored
                // with its reply lost: then the manifest is this one.
                match be.get_with_etag(&key) {
                    Ok((cur, t)) if cur == body => {
                        *etag = t;
                        Ok(())
                    }
                    Ok(_) | Err(EngineError::ObjectNotFound(_)) => Err(self.fence(format!(
                        "the manifest changed under owner generation {} ({why}): \
                         another router took the vDisk over",
                        owner.generation()
                    ))),
                    Err(e) => Err(e),
                }
            }
        }
    }

    /// Makes this volume the owner's (a grid open, before it serves I/O):
    /// `remote` is the backend manifest as just read, with its e-tag.
    /// Fails with [`EngineError::Fenced`] (fencing the volume) if the
    /// backend names a newer owner than `owner`, or an owner newer than
    /// this volume's own view (its local state is stale). Otherwise begins
    /// an epoch for `owner` if it is newer than the newest one (at the
    /// shipped frontier; everything waiting to ship is written under the
    /// new generation), persists it, and publishes the manifest if it is
    /// newer than the backend's.
    pub(crate) fn claim(
        &self,
        owner: &Owner,
        remote: Option<&VolumeMeta>,
        etag: Option<ETag>,
    ) -> EngineResult<()> {
        let g = owner.generation();
        let remote_gen = remote.map_or(0, VolumeMeta::owner_generation);
        if remote_gen > g {
            return Err(self.fence(format!(
                "owner generation {remote_gen} holds the vDisk; this router has {g}"
            )));
        }
        let _a = self.admin.lock();
        let _s = self.ship_lock.lock();
        let local_gen = self.meta.lock().owner_generation();
        if remote_gen > local_gen {
            return Err(self.fence(format!(
                "owner generation {remote_gen} wrote the vDisk after this router's view \
                 (generation {local_gen}); reopen it from the backend"
            )));
        }
        *self.owner.lock() = owner.clone();
        self.reader.store(false, Ordering::SeqCst);
        *self.manifest.lock() = etag;
        let publish = {
            let w = self.writer.lock();
            let mut m = self.meta.lock();
            if m.owner_generation() < g {
                let mut unshipped: Vec<u64> = w
                    .segments
                    .iter()
                    .flat_map(|s| s.containers.iter().copied())
                    .collect();
                unshipped.extend(w.container.as_ref().map(|c| c.seq));
                let old = m.clone();
                m.next_container = m.next_container.max(w.next_container);
                m.next_tlog = m.next_tlog.max(w.next_tlog);
                m.start_epoch(g, &unshipped);
                if let Err(e) = self.persist_meta(&m) {
                    *m = old;
                    return Err(e);
                }
                tracing::info!(volume = %self.name, generation = g, epoch = ?m.epochs.last(),
                    "new owner epoch");
                *self.epochs.write() = m.epochs.clone();
            }
            m.owner_generation() > remote_gen
        };
        if publish {
            self.upload_manifest(false)?;
        }
        Ok(())
    }

    /// Turns an open volume (standalone, a reader, or an owner of an older
    /// generation) into `owner`'s, as [`Volume::claim`]. A reader's view
    /// must still be the backend's (no owner shipped since it was loaded);
    /// `remote` is the backend manifest with its e-tag.
    pub(crate) fn become_owner(
        &self,
        owner: &Owner,
        remote: Option<&VolumeMeta>,
        etag: Option<ETag>,
    ) -> EngineResult<()> {
        self.check_ok()?;
        let cur = self.owner_generation();
        if !self.is_reader() {
            if owner.generation() == cur {
                return Ok(());
            }
            if owner.generation() < cur {
                return Err(EngineError::Fenced(format!(
                    "open here under owner generation {cur}, newer than {}",
                    owner.generation()
                )));
            }
        } else if let Some(r) = remote {
            let m = self.meta.lock();
            if r.shipped != m.shipped || r.owner_generation() != m.owner_generation() {
                return Err(EngineError::InvalidArgument(format!(
                    "vDisk {:?} is open here as a clone's parent with a view its owner has \
                     moved past; open it as owner before its clones",
                    self.name
                )));
            }
        }
        self.claim(owner, remote, etag)
    }
}
