//! A live move's receiving side, and forgetting a vDisk this router no
//! longer owns.
//!
//! The new owner imports a vDisk in steps, so that the slow part runs while
//! the old owner still serves I/O:
//! 1. [`VPool::prepare_import`] restores the backend part — checkpoint and
//!    shipped tlogs of the manifest as it is now, like a restart from the
//!    backend, but without folding snapshot generations (the final
//!    metadata may list snapshots this manifest does not) — into the local
//!    index, and opens a clone's parents as readers.
//! 2. The daemon copies the old owner's files into [`VPool::import_dir`]
//!    (or any directory on this flash's file system), each under
//!    [`HandoverFile::file_name`](crate::volume::HandoverFile::file_name).
//!    [`VPool::import_shipped`] applies what the old owner shipped since
//!    step 1 (fetched from the backend), then [`VPool::import_precopied`]
//!    checks and applies the precopied segments (immutable since the
//!    precopy) to the index, oldest first, still before the freeze: the
//!    pause is left with only what was written, or shipped, after that.
//! 3. [`VPool::finish_import`] takes the old owner's
//!    [`HandoverState`]: applies the tlogs shipped since step 1 and not
//!    applied in step 2 (fetched from the backend; a full restore instead
//!    if a scrub, checkpoint or rollback moved the manifest on), links the
//!    files into the volume's flash directory, persists the final
//!    metadata, replays the imported tlogs not applied yet strictly (every
//!    slot must hold its last record's bytes), and claims the vDisk: a new
//!    epoch at the shipped frontier, so the imported segments ship under
//!    this owner's generation, published (conditional on the manifest
//!    e-tag the old owner saw) before the volume is returned.
//!
//! Order is what keeps the index right: tlogs are applied oldest first —
//! the prepared manifest's, then those shipped since and the precopied
//! ones in ascending order, then those shipped meanwhile after those, then
//! the rest of the received ones.
//! Applying a tlog again after itself and older ones is harmless (same
//! records, same order); an older one after a newer one never happens.
//!
//! Invariants:
//! - Nothing is written to the backend before the claim's manifest PUT.
//! - A crash or failure anywhere leaves a retry possible: the received
//!   files stay in their directory until the import succeeded, and a
//!   retried `prepare_import` drops whatever an earlier attempt left in
//!   the index and the volume's flash directory — unless that attempt got
//!   as far as persisting the new epoch, which only happens after the
//!   strict replay passed; then `finish_import` just opens it.
//! - [`VPool::forget_volume`] never touches the backend, and refuses while
//!   an open clone reads through the vDisk.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::error::{EngineError, EngineResult};
use crate::format::Mapping;
use crate::index::{Entry, IndexBatch, Marker};
use crate::meta::{TlogRef, VolumeMeta};
use crate::name::check_name;
use crate::owner::Owner;
use crate::volume::{
    HandoverFile, HandoverFileKind, HandoverState, Opening, Volume, WindowSegment, restore_index,
    restore_tlogs,
};

use super::VPool;
use super::received::{check_received, place_file};
use super::volumes::OpenAs;

/// What [`VPool::prepare_import`] restored, for [`VPool::finish_import`].
/// While it lives, the vDisk is opened by nothing but its import.
pub struct ImportPrep {
    /// The pool's set of names being imported; this one leaves it on drop.
    importing: Arc<Mutex<HashSet<String>>>,
    name: String,
    id: u64,
    owner: Owner,
    /// The manifest restored; `None`: an earlier attempt imported the
    /// volume completely (only opening it is left).
    base: Option<VolumeMeta>,
    /// Precopied tlogs checked and applied to the index, ascending.
    applied: Vec<u64>,
    /// The newest tlog shipped since `base` that [`VPool::import_shipped`]
    /// fetched and applied.
    fetched: Option<u64>,
    /// Received files made durable already (checked precopied ones).
    synced: HashSet<(HandoverFileKind, u64)>,
}

impl std::fmt::Debug for ImportPrep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImportPrep")
            .field("name", &self.name)
            .field("id", &format_args!("{:016x}", self.id))
            .field("applied", &self.applied)
            .finish()
    }
}

impl Drop for ImportPrep {
    fn drop(&mut self) {
        self.importing.lock().remove(&self.name);
    }
}

impl ImportPrep {
    /// The same preparation under `owner` instead: the daemon prepares
    /// with a provisional owner (the real generation comes from the
    /// ownership change, after the freeze) and finishes with the real one,
    /// which must still be above the old owner's ([`VPool::finish_import`]
    /// checks).
    pub fn with_owner(mut self, owner: Owner) -> Self {
        self.owner = owner;
        self
    }

    /// The vDisk being imported.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its volume id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The precopied tlogs applied so far ([`VPool::import_precopied`]).
    pub fn applied_tlogs(&self) -> &[u64] {
        &self.applied
    }

    /// The newest tlog applied after the prepared manifest's, precopied
    /// or fetched: what is applied next must be newer.
    fn last_applied(&self) -> Option<u64> {
        self.applied.last().copied().max(self.fetched)
    }
}

/// How the files of an import were received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Received {
    /// From a frozen owner: every slot must hold its last record's bytes.
    Handover,
    /// From the owner's mirror (it may have died mid-write): replayed like
    /// a restart after a kill, with the mirror's frozen watermark.
    Mirror { frozen: (u64, u32) },
}

/// A mirror's copy of a vDisk's unshipped window, as the router that takes
/// the vDisk over holds it ([`VPool::recover_mirror`]).
#[derive(Debug, Clone)]
pub struct MirrorCopy {
    /// The vDisk.
    pub name: String,
    /// Its volume id.
    pub id: u64,
    /// The generation of the owner it mirrored.
    pub generation: u64,
    /// The owner's metadata as last mirrored (never older than the
    /// backend's manifest while the mirror was in sync).
    pub meta: VolumeMeta,
    /// The owner's frozen watermark as last mirrored.
    pub frozen: (u64, u32),
    /// The unshipped segments as last mirrored.
    pub segments: Vec<WindowSegment>,
    /// Where the copies are, each under its `HandoverFile::file_name`.
    pub dir: PathBuf,
}

impl VPool {
    /// The directory (created) on this pool's flash where the daemon may
    /// put the files of a hand-over of `name`, each under its
    /// `HandoverFile::file_name`: on the flash file system, so finishing the
    /// import links them into place instead of copying.
    pub fn import_dir(&self, name: &str) -> EngineResult<PathBuf> {
        check_name("vDisk", name)?;
        let dir = self.shared.dir.join("import").join(name);
        std::fs::create_dir_all(&dir)
            .map_err(|e| EngineError::io(format!("creating {}", dir.display()), e))?;
        Ok(dir)
    }

    /// Step 1 of an import (module docs): restores `name`'s backend part
    /// for `owner` (a grid owner, newer than the backend's). Call it while
    /// the old owner still serves I/O, after its `handover_precopy` (which
    /// keeps scrubs and checkpoints off the manifest meanwhile).
    pub fn prepare_import(&self, name: &str, owner: &Owner) -> EngineResult<ImportPrep> {
        self.check_open()?;
        check_name("vDisk", name)?;
        if !owner.is_grid() {
            return Err(EngineError::InvalidArgument(
                "an import needs a grid owner (generation above 0)".into(),
            ));
        }
        let _o = self.state.open.lock();
        if self.open_instance(name).is_some() {
            return Err(EngineError::InvalidArgument(format!(
                "vDisk {name:?} is open on this router"
            )));
        }
        if !self.state.importing.lock().insert(name.to_string()) {
            return Err(EngineError::InvalidArgument(format!(
                "vDisk {name:?} is being imported already"
            )));
        }
        let mut prep = ImportPrep {
            importing: self.state.importing.clone(),
            name: name.to_string(),
            id: 0,
            owner: owner.clone(),
            base: None,
            applied: Vec::new(),
            fetched: None,
            synced: HashSet::new(),
        };
        self.shared.probe_fencing()?;
        let (remote, _) = self.read_remote(name)?;
        let g = owner.generation();
        if remote.owner_generation() > g {
            return Err(EngineError::Fenced(format!(
                "owner generation {} holds vDisk {name:?}; this router has {g}",
                remote.owner_generation()
            )));
        }
        let idx = &self.shared.index;
        let local = match idx.name_to_id(name)? {
            Some(id) => idx.meta(id)?,
            None => None,
        };
        prep.id = remote.id;
        if let Some(l) = &local {
            if l.id == remote.id && l.owner_generation() == g {
                return Ok(prep);
            }
            self.forget_local(l.id, name)?;
        }
        self.forget_local(remote.id, name)?;
        if let Some(p) = &remote.parent {
            self.open_inner(&p.name, 1, &OpenAs::Parent { grid: true })?;
        }
        restore_index(&self.shared, &remote, false)?;
        prep.base = Some(remote);
        Ok(prep)
    }

    /// Step 2 of an import (module docs), optional: checks the precopied
    /// segments received in `files_dir` (`files`: the old owner's
    /// `handover_precopy` list) strictly and applies them to the index,
    /// oldest first, stopping at the first one not wholly received (call
    /// again as more arrive). Segments the prepared manifest already has
    /// are skipped. Returns the tlogs applied by this call. A damaged file
    /// is an error: copy it again.
    pub fn import_precopied(
        &self,
        prep: &mut ImportPrep,
        files: &[HandoverFile],
        files_dir: &Path,
    ) -> EngineResult<usize> {
        self.check_open()?;
        let Some(base) = &prep.base else {
            return Ok(0);
        };
        let lens: HashMap<(HandoverFileKind, u64), u64> =
            files.iter().map(|f| ((f.kind, f.seq), f.len)).collect();
        let floor = prep
            .last_applied()
            .map_or(base.shipped.next_tlog, |s| s + 1)
            .max(base.shipped.next_tlog);
        let mut tlogs: Vec<u64> = files
            .iter()
            .filter(|f| f.kind == HandoverFileKind::Tlog && f.seq >= floor)
            .map(|f| f.seq)
            .collect();
        tlogs.sort_unstable();
        let mut n = 0;
        for seq in tlogs {
            let Some((hdr, recs, containers)) = check_received(files_dir, prep.id, seq, &lens)?
            else {
                break;
            };
            // Durable now, so that the pause only links them.
            let names = containers
                .iter()
                .map(|&c| (HandoverFileKind::Container, c))
                .chain([(HandoverFileKind::Tlog, seq)]);
            for (kind, s) in names {
                if prep.synced.contains(&(kind, s)) {
                    continue;
                }
                let name = match kind {
                    HandoverFileKind::Container => format!("{s:016x}.sco"),
                    HandoverFileKind::Tlog => format!("{s:016x}.tlog"),
                };
                std::fs::File::open(files_dir.join(name))
                    .and_then(|f| f.sync_data())
                    .map_err(|e| EngineError::io("syncing a received file", e))?;
                prep.synced.insert((kind, s));
            }
            let entries: Vec<Entry> = if base.is_discarded(hdr.generation) {
                Vec::new()
            } else {
                recs.iter()
                    .map(|r| (r.cluster, hdr.generation, r.mapping))
                    .collect()
            };
            self.shared
                .index
                .commit(prep.id, &entries, &Marker::at((seq + 1, 0), (0, 0)))?;
            prep.applied.push(seq);
            n += 1;
        }
        Ok(n)
    }

    /// Step 2 of an import, optional, before [`VPool::import_precopied`]:
    /// applies the tlogs the old owner shipped since the import was
    /// prepared (fetched from the backend), so that the pause does not
    /// fetch them. Shipping goes in order, so everything shipped is older
    /// than everything still unshipped that a precopy lists: applied
    /// first, the order of the module docs holds. Does nothing if a
    /// scrub, checkpoint or rollback moved the manifest on (the finish
    /// restores again then). Returns the tlogs applied.
    pub fn import_shipped(&self, prep: &mut ImportPrep) -> EngineResult<usize> {
        self.check_open()?;
        let Some(base) = &prep.base else {
            return Ok(0);
        };
        let (remote, _) = self.read_remote(&prep.name)?;
        let extends = remote.id == base.id
            && remote.shipped.checkpoint == base.shipped.checkpoint
            && remote.discarded_gens == base.discarded_gens
            && remote.shipped.tlogs.starts_with(&base.shipped.tlogs);
        if !extends {
            return Ok(0);
        }
        let after = prep.last_applied();
        let delta: Vec<TlogRef> = remote.shipped.tlogs[base.shipped.tlogs.len()..]
            .iter()
            .filter(|t| after.is_none_or(|a| t.seq > a))
            .copied()
            .collect();
        let Some(last) = delta.last().map(|t| t.seq) else {
            return Ok(0);
        };
        restore_tlogs(&self.shared, &remote, &delta, false)?;
        prep.fetched = Some(last);
        Ok(delta.len())
    }

    /// Step 3 of an import (module docs): builds the volume from the
    /// prepared backend part and the old owner's `state` and files (in
    /// `files_dir`), claims it and opens it. On success the files are
    /// removed from `files_dir` (and `files_dir` itself if it is this
    /// pool's `import_dir`). A missing or short file fails before anything
    /// changes: copy it again and retry.
    pub fn finish_import(
        &self,
        prep: ImportPrep,
        state: &HandoverState,
        files_dir: &Path,
    ) -> EngineResult<Arc<Volume>> {
        self.finish_import_as(prep, state, files_dir, Received::Handover)
    }

    /// [`VPool::finish_import`] for files received as `how`.
    fn finish_import_as(
        &self,
        prep: ImportPrep,
        state: &HandoverState,
        files_dir: &Path,
        how: Received,
    ) -> EngineResult<Arc<Volume>> {
        self.check_open()?;
        if state.id != prep.id || state.name != prep.name || state.meta.id != state.id {
            return Err(EngineError::InvalidArgument(format!(
                "hand-over state of {:?} ({:016x}) does not match the import of {:?} ({:016x})",
                state.name, state.id, prep.name, prep.id
            )));
        }
        let owner = prep.owner.clone();
        if state.generation >= owner.generation() {
            return Err(EngineError::InvalidArgument(format!(
                "importing under owner generation {} needs one above the old owner's {}",
                owner.generation(),
                state.generation
            )));
        }
        for f in &state.files {
            let p = files_dir.join(f.file_name());
            match std::fs::metadata(&p) {
                Ok(m) if m.len() == f.len => {}
                _ => {
                    return Err(EngineError::InvalidArgument(format!(
                        "{} is missing or not {} bytes long: copy it again",
                        p.display(),
                        f.len
                    )));
                }
            }
        }
        let _o = self.state.open.lock();
        if self.open_instance(&prep.name).is_some() {
            return Err(EngineError::InvalidArgument(format!(
                "vDisk {:?} is open on this router",
                prep.name
            )));
        }
        // The import opens it itself.
        self.state.importing.lock().remove(&prep.name);
        let vol = match &prep.base {
            None => self.open_inner(&prep.name, 0, &OpenAs::Owner(owner))?,
            Some(base) => match self.build_import(&prep, base, state, files_dir, &owner, how) {
                Ok(v) => v,
                Err(e) => {
                    // Nothing half-built stays: a retry starts over from
                    // prepare_import, with the received files.
                    let _ = self.forget_local(state.id, &state.name);
                    return Err(e);
                }
            },
        };
        for f in &state.files {
            let _ = std::fs::remove_file(files_dir.join(f.file_name()));
        }
        if self.shared.dir.join("import").join(&state.name) == files_dir {
            let _ = std::fs::remove_dir_all(files_dir);
        }
        Ok(vol)
    }

    /// Steps 1 and 3 in one call (the old owner is already frozen).
    pub fn import_volume(
        &self,
        name: &str,
        state: &HandoverState,
        files_dir: &Path,
        owner: &Owner,
    ) -> EngineResult<Arc<Volume>> {
        let prep = self.prepare_import(name, owner)?;
        self.finish_import(prep, state, files_dir)
    }

    /// `finish_import`'s work once the files are checked.
    fn build_import(
        &self,
        prep: &ImportPrep,
        base: &VolumeMeta,
        state: &HandoverState,
        files_dir: &Path,
        owner: &Owner,
        how: Received,
    ) -> EngineResult<Arc<Volume>> {
        let t0 = std::time::Instant::now();
        let fin = &state.meta;
        let extends = base.shipped.checkpoint == fin.shipped.checkpoint
            && base.discarded_gens == fin.discarded_gens
            && fin.shipped.tlogs.starts_with(&base.shipped.tlogs);
        let applied = &prep.applied;
        let verified = if extends {
            // Shipped since the prepare, and not among the precopied or
            // fetched ones applied already (the same bytes, and older).
            let after = prep.last_applied();
            let delta: Vec<TlogRef> = fin.shipped.tlogs[base.shipped.tlogs.len()..]
                .iter()
                .filter(|t| after.is_none_or(|a| t.seq > a))
                .copied()
                .collect();
            restore_tlogs(&self.shared, fin, &delta, false)?;
            if let Some(a) = after {
                let next = (a + 1)
                    .max(fin.shipped.next_tlog)
                    .max(delta.last().map_or(0, |t| t.seq + 1));
                self.shared
                    .index
                    .commit(fin.id, &[], &Marker::at((next, 0), (0, 0)))?;
            }
            applied.to_vec()
        } else {
            tracing::info!(volume = %state.name,
                "the manifest moved on since the import was prepared; restoring again");
            self.forget_local(fin.id, &fin.name)?;
            restore_index(&self.shared, fin, false)?;
            Vec::new()
        };
        let indexed = t0.elapsed();
        let dir = crate::volume::local_dir_of(&self.shared.dir, fin.id);
        for f in &state.files {
            let sub = match f.kind {
                HandoverFileKind::Container => "containers",
                HandoverFileKind::Tlog => "tlogs",
            };
            let to_dir = dir.join(sub);
            std::fs::create_dir_all(&to_dir)
                .map_err(|e| EngineError::io(format!("creating {}", to_dir.display()), e))?;
            let synced = prep.synced.contains(&(f.kind, f.seq));
            place_file(
                &files_dir.join(f.file_name()),
                &to_dir.join(f.file_name()),
                !synced,
            )?;
        }
        for sub in ["containers", "tlogs"] {
            let d = dir.join(sub);
            if d.exists() {
                std::fs::File::open(&d)
                    .and_then(|f| f.sync_all())
                    .map_err(|e| EngineError::io("syncing an imported directory", e))?;
            }
        }
        // The old owner's metadata, its epochs unchanged: the new epoch is
        // persisted by the claim, once the strict replay passed.
        let mut b = IndexBatch::default();
        b.put_meta(fin)?;
        b.put_name(&fin.name, fin.id);
        self.shared.index.write_sync(b)?;
        let parent = match &fin.parent {
            Some(p) => {
                let pv = self.open_inner(&p.name, 1, &OpenAs::Parent { grid: true })?;
                Some((pv, p.generation))
            }
            None => None,
        };
        if let Received::Mirror { frozen } = how {
            // Replayed like this router's own flash after a kill: slots
            // at or above the mirror's frozen watermark were written since
            // the last hard barrier and may hold a newer version than
            // their records say (module docs of `crate::volume::mirror`).
            let mut marker = self.shared.index.marker(fin.id)?;
            marker.frozen = frozen;
            self.shared.index.commit(fin.id, &[], &marker)?;
        }
        let opening = Opening {
            owner: owner.clone(),
            reader: false,
            import: how == Received::Handover,
            verified,
        };
        let placed = t0.elapsed();
        let vol = Volume::load(self.shared.clone(), fin.clone(), parent, opening)?;
        let loaded = t0.elapsed();
        let etag = match &state.manifest_etag {
            Some(t) => Some(t.clone()),
            None => self.read_remote(&fin.name)?.1,
        };
        if let Err(e) = vol.claim(owner, Some(fin), etag) {
            vol.close();
            return Err(e);
        }
        self.insert_open(&vol);
        tracing::info!(volume = %fin.name, extends, files = state.files.len(),
            indexed_ms = indexed.as_millis(), placed_ms = placed.as_millis(),
            loaded_ms = loaded.as_millis(), claimed_ms = t0.elapsed().as_millis(),
            "import built");
        Ok(vol)
    }

    /// Takes vDisk `copy.name` over from its mirror: restores the backend
    /// part like [`VPool::prepare_import`], then imports the mirror's
    /// copy of the segments the backend does not have, replayed with the
    /// rules of a restart after a kill (slots written since the last hard
    /// barrier may be torn and are checked slot by slot), and claims it
    /// under `owner` (newer than the old owner's generation). The copy's
    /// files are left in `copy.dir` for the caller to remove.
    ///
    /// Refused if the backend's manifest names segments shipped that the
    /// copy's metadata does not (the mirror is older than the backend:
    /// it was not in sync).
    pub fn recover_mirror(&self, copy: &MirrorCopy, owner: &Owner) -> EngineResult<Arc<Volume>> {
        let prep = self.prepare_import(&copy.name, owner)?;
        if prep.id != copy.id {
            return Err(EngineError::InvalidArgument(format!(
                "the mirror of {:?} holds volume {:016x}, the backend {:016x}",
                copy.name, copy.id, prep.id
            )));
        }
        if let Some(base) = &prep.base
            && base.shipped.next_tlog > copy.meta.shipped.next_tlog
        {
            return Err(EngineError::InvalidArgument(format!(
                "the mirror of {:?} is older than the backend's manifest (shipped up to tlog \
                 {:016x}, the mirror up to {:016x}): it was not in sync",
                copy.name, base.shipped.next_tlog, copy.meta.shipped.next_tlog
            )));
        }
        let len = |kind, seq| {
            let f = HandoverFile {
                kind,
                seq,
                path: PathBuf::new(),
                len: 0,
            };
            let path = copy.dir.join(f.file_name());
            std::fs::metadata(&path).ok().map(|m| HandoverFile {
                len: m.len(),
                path,
                ..f
            })
        };
        let mut files = Vec::new();
        for seg in copy
            .segments
            .iter()
            .filter(|s| s.tlog >= copy.meta.shipped.next_tlog)
        {
            for &c in &seg.containers {
                files.extend(len(HandoverFileKind::Container, c));
            }
            files.extend(len(HandoverFileKind::Tlog, seg.tlog));
        }
        let state = HandoverState {
            name: copy.name.clone(),
            id: copy.id,
            generation: copy.generation,
            meta: copy.meta.clone(),
            manifest_etag: None,
            files,
        };
        self.finish_import_as(
            prep,
            &state,
            &copy.dir,
            Received::Mirror {
                frozen: copy.frozen,
            },
        )
    }

    /// Drops a vDisk's local state on a router that no longer owns it —
    /// flash files, index entries, read-cache entries, received hand-over
    /// files — without touching the backend. Closes it first if it is open
    /// ([`Volume::close_for_handover`]). Refused while an open clone reads
    /// through it. Forgetting a vDisk this router does not know is not an
    /// error.
    pub fn forget_volume(&self, name: &str) -> EngineResult<()> {
        self.check_open()?;
        check_name("vDisk", name)?;
        let _o = self.state.open.lock();
        let open = self
            .state
            .volumes
            .lock()
            .values()
            .find(|v| v.name() == name)
            .cloned();
        if let Some(v) = open {
            let reads_through = self.state.volumes.lock().values().any(|c| {
                c.id != v.id
                    && !c.is_closed()
                    && c.parent.as_ref().is_some_and(|(p, _)| p.id == v.id)
            });
            if reads_through {
                return Err(EngineError::HasClones(format!(
                    "vDisk {name:?} (open clones read through it)"
                )));
            }
            v.close_for_handover();
            let mut vols = self.state.volumes.lock();
            vols.remove(&v.id);
            self.shared.set_open_volumes(vols.len());
        }
        if let Some(id) = self.shared.index.name_to_id(name)? {
            self.forget_local(id, name)?;
        }
        let _ = std::fs::remove_dir_all(self.shared.dir.join("import").join(name));
        Ok(())
    }

    /// Drops volume `id`'s (named `name`) index entries, metadata, name,
    /// replay marker, flash directory and read-cache entries.
    pub(super) fn forget_local(&self, id: u64, name: &str) -> EngineResult<()> {
        let cache = &self.shared.cache;
        let mut hashes: Vec<u128> = Vec::new();
        self.shared.index.scan(id, 0, u64::MAX, |_, _, m| {
            if let Mapping::Data(l) = m {
                hashes.push(l.hash);
                if hashes.len() >= 1 << 16 {
                    cache.forget(&hashes);
                    hashes.clear();
                }
            }
            true
        })?;
        cache.forget(&hashes);
        self.shared.index.delete_volume(id, name)?;
        let dir = crate::volume::local_dir_of(&self.shared.dir, id);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(EngineError::io(format!("removing {}", dir.display()), e)),
        }
    }
}
