//! The holder's side: copies of other routers' vDisk windows on this
//! router's flash, one directory per vDisk (`<root>/<vdisk>/`), each with
//! the window's files under their own names and `state.json` (which owner
//! generation, the segments, the frozen watermark, the metadata).
//!
//! Invariants:
//! - A write or commit for a generation other than the one opened is
//!   refused; commits are numbered and only ever move forward.
//! - A commit answers only after every file written since the previous
//!   commit is fdatasynced and the state it describes is durable
//!   (written to a temporary file, synced, renamed, directory synced).
//! - After a commit the directory holds exactly the files of the segments
//!   it names: those the owner shipped or dropped are deleted.
//! - A copy is recoverable ([`ReplicaStore::copy`]) only once a commit with
//!   metadata has been recorded.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use depot_engine::meta::VolumeMeta;
use depot_engine::name::check_name;
use depot_engine::{HandoverFileKind, MirrorCopy, WindowSegment};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::error::{DtlError, DtlResult};
use crate::proto::{Commit, Open, Write, file_name, parse_file_name};

/// What `state.json` records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplicaState {
    /// The vDisk.
    pub vdisk: String,
    /// Its vPool.
    pub vpool: String,
    /// Its volume id.
    pub id: u64,
    /// The owner generation mirrored.
    pub generation: u64,
    /// The last commit recorded.
    pub batch: u64,
    /// The owner's metadata as last committed.
    pub meta: Option<VolumeMeta>,
    /// The owner's frozen watermark as last recorded.
    pub frozen: (u64, u32),
    /// The unshipped segments as last committed.
    pub segments: Vec<WindowSegment>,
}

/// One held copy.
struct Replica {
    dir: PathBuf,
    state: ReplicaState,
    files: HashMap<String, Arc<File>>,
    dirty: HashSet<String>,
    /// Handed to a takeover ([`ReplicaStore::copy`]).
    taken: bool,
}

impl Replica {
    /// The open handle of a window file of this copy (created empty), to
    /// be written; it counts as dirty until the next durable commit.
    fn file(&mut self, name: &str) -> DtlResult<Arc<File>> {
        let f = match self.files.entry(name.to_string()) {
            std::collections::hash_map::Entry::Occupied(o) => o.get().clone(),
            std::collections::hash_map::Entry::Vacant(v) => {
                let f = OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .read(true)
                    .write(true)
                    .open(self.dir.join(name))
                    .map_err(|e| DtlError::io("opening a mirrored file", e))?;
                v.insert(Arc::new(f)).clone()
            }
        };
        self.dirty.insert(name.to_string());
        Ok(f)
    }

    /// The rest of a commit, its pieces written: durability, the state,
    /// the sweep of files no segment names.
    fn record(&mut self, c: &Commit) -> DtlResult<()> {
        if c.durable {
            for name in std::mem::take(&mut self.dirty) {
                if let Some(f) = self.files.get(&name) {
                    f.sync_data()
                        .map_err(|e| DtlError::io("syncing a mirrored file", e))?;
                }
            }
        }
        // The frozen watermark alone changes with every hard barrier; it is
        // recorded with the next change that is written anyway (an older
        // watermark only lets replay adopt more slots, never trust more).
        let changed = c.meta.is_some() || c.segments != self.state.segments;
        self.state.batch = c.batch;
        self.state.frozen = c.frozen;
        if changed {
            if let Some(m) = &c.meta {
                self.state.meta = Some(m.clone());
            }
            self.state.segments.clone_from(&c.segments);
            write_state(&self.dir, &self.state)?;
        } else {
            return Ok(());
        }
        // The files no segment names any more: shipped or dropped.
        let mut keep: HashSet<String> = HashSet::new();
        for s in &c.segments {
            keep.insert(file_name(HandoverFileKind::Tlog, s.tlog));
            for &k in &s.containers {
                keep.insert(file_name(HandoverFileKind::Container, k));
            }
        }
        let stale: Vec<String> = self
            .files
            .keys()
            .filter(|n| !keep.contains(*n))
            .cloned()
            .collect();
        for n in stale {
            self.files.remove(&n);
            self.dirty.remove(&n);
        }
        if let Ok(rd) = std::fs::read_dir(&self.dir) {
            for e in rd.flatten() {
                let name = e.file_name();
                let Some(name) = name.to_str() else { continue };
                if parse_file_name(name).is_some() && !keep.contains(name) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        Ok(())
    }
}

/// What a holder knows of one copy, for listings and takeovers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldCopy {
    /// The vDisk.
    pub vdisk: String,
    /// Its vPool.
    pub vpool: String,
    /// The owner generation mirrored.
    pub generation: u64,
    /// The last commit recorded.
    pub batch: u64,
    /// Bytes of the window held.
    pub bytes: u64,
}

/// Every copy this router holds.
pub struct ReplicaStore {
    root: PathBuf,
    held: Mutex<HashMap<String, Arc<Mutex<Replica>>>>,
}

impl std::fmt::Debug for ReplicaStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicaStore")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

const STATE: &str = "state.json";
/// Where a dropped copy's directory goes to be deleted in the background
/// (its name is not a valid vDisk name, so it is never taken for a copy).
const TRASH: &str = ".trash";

fn sync_dir(dir: &Path) -> DtlResult<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| DtlError::io(format!("syncing {}", dir.display()), e))
}

fn write_state(dir: &Path, state: &ReplicaState) -> DtlResult<()> {
    let body = serde_json::to_vec(state).map_err(|e| DtlError::Protocol(e.to_string()))?;
    let tmp = dir.join("state.json.tmp");
    std::fs::write(&tmp, &body)
        .and_then(|()| File::open(&tmp)?.sync_all())
        .and_then(|()| std::fs::rename(&tmp, dir.join(STATE)))
        .map_err(|e| DtlError::io("recording a mirror's state", e))?;
    sync_dir(dir)
}

impl ReplicaStore {
    /// The copies under `root` (created), as a restart finds them: each
    /// directory with a readable state is held again; anything else there
    /// is removed.
    pub fn open(root: &Path) -> DtlResult<Self> {
        std::fs::create_dir_all(root)
            .map_err(|e| DtlError::io(format!("creating {}", root.display()), e))?;
        let mut held = HashMap::new();
        let rd = std::fs::read_dir(root)
            .map_err(|e| DtlError::io(format!("listing {}", root.display()), e))?;
        for entry in rd.flatten() {
            let dir = entry.path();
            if entry.file_name() == TRASH {
                // Copies dropped before a restart.
                let _ = std::fs::remove_dir_all(&dir);
                continue;
            }
            let state = std::fs::read(dir.join(STATE))
                .ok()
                .and_then(|b| serde_json::from_slice::<ReplicaState>(&b).ok())
                .filter(|s| {
                    check_name("vDisk", &s.vdisk).is_ok()
                        && entry.file_name().to_str() == Some(s.vdisk.as_str())
                });
            match state {
                Some(state) => {
                    let name = state.vdisk.clone();
                    let r = Replica {
                        dir,
                        state,
                        files: HashMap::new(),
                        dirty: HashSet::new(),
                        taken: false,
                    };
                    held.insert(name, Arc::new(Mutex::new(r)));
                }
                None => {
                    tracing::warn!(dir = %dir.display(), "dropping an unreadable DTL copy");
                    let _ = std::fs::remove_dir_all(&dir);
                }
            }
        }
        Ok(ReplicaStore {
            root: root.to_path_buf(),
            held: Mutex::new(held),
        })
    }

    fn get(&self, vdisk: &str, generation: u64) -> DtlResult<Arc<Mutex<Replica>>> {
        let r = self.held.lock().get(vdisk).cloned();
        let usable = |r: &Replica| r.state.generation == generation && !r.taken;
        match r {
            Some(r) if usable(&r.lock()) => Ok(r),
            _ => Err(DtlError::NotHeld {
                vdisk: vdisk.to_string(),
                generation,
            }),
        }
    }

    /// `dtl.open`: a new, empty copy (any earlier one is dropped).
    pub fn begin(&self, o: &Open) -> DtlResult<()> {
        check_name("vDisk", &o.vdisk).map_err(|e| DtlError::Protocol(e.to_string()))?;
        check_name("vPool", &o.vpool).map_err(|e| DtlError::Protocol(e.to_string()))?;
        let dir = self.root.join(&o.vdisk);
        let mut held = self.held.lock();
        held.remove(&o.vdisk);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(DtlError::io(format!("removing {}", dir.display()), e)),
        }
        std::fs::create_dir_all(&dir)
            .map_err(|e| DtlError::io(format!("creating {}", dir.display()), e))?;
        let state = ReplicaState {
            vdisk: o.vdisk.clone(),
            vpool: o.vpool.clone(),
            id: o.id,
            generation: o.generation,
            batch: 0,
            meta: None,
            frozen: (0, 0),
            segments: Vec::new(),
        };
        write_state(&dir, &state)?;
        sync_dir(&self.root)?;
        held.insert(
            o.vdisk.clone(),
            Arc::new(Mutex::new(Replica {
                dir,
                state,
                files: HashMap::new(),
                dirty: HashSet::new(),
                taken: false,
            })),
        );
        Ok(())
    }

    /// `dtl.write`: `body` into a file of the copy (not durable before the
    /// next commit).
    pub fn write(&self, w: &Write, body: &[u8]) -> DtlResult<()> {
        w.check(body.len())?;
        let r = self.get(&w.vdisk, w.generation)?;
        // The file is written outside the copy's lock: the pieces of one
        // round (never overlapping) land side by side.
        let f = r.lock().file(&w.file)?;
        f.write_all_at(body, w.offset)
            .map_err(|e| DtlError::io("writing a mirrored file", e))
    }

    /// `dtl.commit`: writes the pieces its body carries, makes the writes
    /// so far durable (if the commit is), records the state, drops the
    /// files of segments no longer listed.
    pub fn commit(&self, c: &Commit, body: &[u8]) -> DtlResult<()> {
        c.check()?;
        let carried: u64 = c.pieces.iter().map(|p| p.len).sum();
        if carried != body.len() as u64 {
            return Err(DtlError::Protocol(format!(
                "a commit's pieces name {carried} bytes but it carries {}",
                body.len()
            )));
        }
        let r = self.get(&c.vdisk, c.generation)?;
        let mut r = r.lock();
        if c.batch <= r.state.batch {
            return Err(DtlError::Protocol(format!(
                "commit {} after commit {}",
                c.batch, r.state.batch
            )));
        }
        if c.meta.is_none() && r.state.meta.is_none() {
            return Err(DtlError::Protocol(
                "the first commit of a mirror carries no metadata".into(),
            ));
        }
        let mut at = 0usize;
        for p in &c.pieces {
            // Bounded by the check above: the lengths sum to the body's.
            let n = usize::try_from(p.len).unwrap_or(usize::MAX);
            let bytes = body
                .get(at..at.saturating_add(n))
                .ok_or_else(|| DtlError::Protocol("a piece beyond the commit's body".into()))?;
            at += n;
            r.file(&p.file)?
                .write_all_at(bytes, p.offset)
                .map_err(|e| DtlError::io("writing a mirrored file", e))?;
        }
        r.record(c)
    }

    /// `dtl.close`: drops the copy of `vdisk`, if held.
    pub fn close(&self, vdisk: &str) -> DtlResult<()> {
        check_name("vDisk", vdisk).map_err(|e| DtlError::Protocol(e.to_string()))?;
        let had = self.held.lock().remove(vdisk);
        if had.is_some() {
            // Out of the way at once (a copy of gigabytes takes long to
            // delete, and the caller may hold up a move meanwhile); deleted
            // in the background, or at the next start.
            let dir = self.root.join(vdisk);
            let trash = self.root.join(TRASH);
            static DROPPED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let n = DROPPED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let to = trash.join(format!("{vdisk}.{n}"));
            let moved = std::fs::create_dir_all(&trash)
                .and_then(|()| std::fs::rename(&dir, &to))
                .is_ok();
            let doomed = if moved { to } else { dir };
            let removed = if moved {
                std::thread::Builder::new()
                    .name("dtl-trash".into())
                    .spawn(move || {
                        if let Err(e) = std::fs::remove_dir_all(&doomed) {
                            tracing::warn!(dir = %doomed.display(), error = %e, "cannot delete a dropped DTL copy");
                        }
                    })
                    .map(|_| ())
                    .map_err(|e| DtlError::io("starting the deletion of a DTL copy", e))
            } else {
                match std::fs::remove_dir_all(&doomed) {
                    Ok(()) => Ok(()),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                    Err(e) => Err(DtlError::io(format!("removing {}", doomed.display()), e)),
                }
            };
            removed?;
        }
        Ok(())
    }

    /// The copies held.
    pub fn list(&self) -> Vec<HeldCopy> {
        let held: Vec<Arc<Mutex<Replica>>> = self.held.lock().values().cloned().collect();
        let mut out: Vec<HeldCopy> = held
            .iter()
            .map(|r| {
                let r = r.lock();
                let bytes = std::fs::read_dir(&r.dir)
                    .map(|rd| {
                        rd.flatten()
                            .filter_map(|e| e.metadata().ok())
                            .map(|m| m.len())
                            .sum()
                    })
                    .unwrap_or(0);
                HeldCopy {
                    vdisk: r.state.vdisk.clone(),
                    vpool: r.state.vpool.clone(),
                    generation: r.state.generation,
                    batch: r.state.batch,
                    bytes,
                }
            })
            .collect();
        out.sort_by(|a, b| a.vdisk.cmp(&b.vdisk));
        out
    }

    /// The copy of `vdisk` for a takeover, if one with metadata is held:
    /// the engine imports it from its directory
    /// (`VPool::recover_mirror`). Writes to it are refused from here on.
    pub fn copy(&self, vdisk: &str) -> Option<(String, MirrorCopy)> {
        let r = self.held.lock().get(vdisk).cloned()?;
        let mut r = r.lock();
        let meta = r.state.meta.clone()?;
        r.files.clear();
        let generation = r.state.generation;
        // Taken over: later writes and commits (a deposed owner's) are
        // refused.
        r.taken = true;
        Some((
            r.state.vpool.clone(),
            MirrorCopy {
                name: r.state.vdisk.clone(),
                id: r.state.id,
                generation,
                meta,
                frozen: r.state.frozen,
                segments: r.state.segments.clone(),
                dir: r.dir.clone(),
            },
        ))
    }

    /// Whether the copy of `vdisk` was handed to a takeover
    /// ([`ReplicaStore::copy`]) and not dropped since.
    pub fn is_taken(&self, vdisk: &str) -> bool {
        self.held.lock().get(vdisk).is_some_and(|r| r.lock().taken)
    }

    /// The generation of the owner whose copy of `vdisk` is held.
    pub fn generation(&self, vdisk: &str) -> Option<u64> {
        self.held
            .lock()
            .get(vdisk)
            .map(|r| r.lock().state.generation)
    }
}

#[cfg(test)]
mod tests {
    use depot_engine::meta::VolumeMeta;

    use super::*;
    use crate::proto::Piece;

    fn open(store: &ReplicaStore, generation: u64) {
        store
            .begin(&Open {
                vdisk: "d".into(),
                vpool: "p".into(),
                id: 7,
                generation,
            })
            .unwrap();
    }

    fn meta() -> VolumeMeta {
        serde_json::from_value(serde_json::json!({
            "version": 1, "id": 7, "name": "d", "size_bytes": 4096, "block_size": 4096,
            "created_unix": 0, "template": false, "parent": null, "children": [],
            "head_gen": 0, "next_gen": 1, "snapshots": [], "discarded_gens": [],
            "next_container": 0, "next_tlog": 0,
            "shipped": {"checkpoint": null, "tlogs": [], "next_tlog": 0}
        }))
        .unwrap()
    }

    fn write(
        store: &ReplicaStore,
        generation: u64,
        file: &str,
        off: u64,
        b: &[u8],
    ) -> DtlResult<()> {
        store.write(
            &Write {
                vdisk: "d".into(),
                generation,
                file: file.into(),
                offset: off,
            },
            b,
        )
    }

    fn commit(store: &ReplicaStore, batch: u64, segs: &[(u64, &[u64])], m: bool) -> DtlResult<()> {
        store.commit(
            &Commit {
                vdisk: "d".into(),
                generation: 1,
                batch,
                segments: segs
                    .iter()
                    .map(|(t, c)| WindowSegment {
                        tlog: *t,
                        containers: c.to_vec(),
                    })
                    .collect(),
                frozen: (1, 2),
                meta: m.then(meta),
                durable: true,
                pieces: Vec::new(),
            },
            &[],
        )
    }

    #[test]
    fn commits_keep_exactly_the_listed_segments_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let store = ReplicaStore::open(dir.path()).unwrap();
        open(&store, 1);
        write(&store, 1, "0000000000000001.sco", 0, b"c1").unwrap();
        write(&store, 1, "0000000000000001.tlog", 0, b"t1").unwrap();
        write(&store, 1, "0000000000000002.sco", 4, b"c2").unwrap();
        write(&store, 1, "0000000000000002.tlog", 0, b"t2").unwrap();
        // The first commit must describe the copy.
        assert!(commit(&store, 1, &[(1, &[1]), (2, &[2])], false).is_err());
        commit(&store, 1, &[(1, &[1]), (2, &[2])], true).unwrap();
        // Out of order and replays are refused.
        assert!(commit(&store, 1, &[(2, &[2])], false).is_err());
        // Segment 1 shipped: its files go.
        commit(&store, 2, &[(2, &[2])], false).unwrap();
        let d = dir.path().join("d");
        assert!(!d.join("0000000000000001.sco").exists());
        assert!(!d.join("0000000000000001.tlog").exists());
        assert_eq!(
            std::fs::read(d.join("0000000000000002.sco")).unwrap(),
            b"\0\0\0\0c2"
        );
        drop(store);
        let store = ReplicaStore::open(dir.path()).unwrap();
        let (vpool, copy) = store.copy("d").unwrap();
        assert_eq!(vpool, "p");
        assert_eq!((copy.id, copy.generation), (7, 1));
        assert_eq!(copy.segments.len(), 1);
        assert_eq!(copy.frozen, (1, 2));
        // Taken over: the old owner's writes are refused now.
        assert!(matches!(
            write(&store, 1, "0000000000000002.sco", 0, b"x"),
            Err(DtlError::NotHeld { .. })
        ));
    }

    #[test]
    fn a_commit_carries_its_pieces_and_a_round_is_not_synced() {
        let dir = tempfile::tempdir().unwrap();
        let store = ReplicaStore::open(dir.path()).unwrap();
        open(&store, 1);
        let c = |batch, durable, pieces: Vec<Piece>| Commit {
            vdisk: "d".into(),
            generation: 1,
            batch,
            segments: vec![WindowSegment {
                tlog: 1,
                containers: vec![2],
            }],
            frozen: (0, 0),
            meta: Some(meta()),
            durable,
            pieces,
        };
        let pieces = vec![
            Piece {
                file: "0000000000000002.sco".into(),
                offset: 4096,
                len: 3,
            },
            Piece {
                file: "0000000000000001.tlog".into(),
                offset: 0,
                len: 2,
            },
        ];
        store.commit(&c(1, false, pieces), b"abcde").unwrap();
        let held = |name: &str| std::fs::read(dir.path().join("d").join(name)).unwrap();
        assert_eq!(&held("0000000000000002.sco")[4096..], b"abc");
        assert_eq!(held("0000000000000001.tlog"), b"de");
        // Not synced by the round: still dirty for the next durable commit.
        let r = store.get("d", 1).unwrap();
        assert_eq!(r.lock().dirty.len(), 2);
        store.commit(&c(2, true, Vec::new()), &[]).unwrap();
        assert!(r.lock().dirty.is_empty());
    }

    #[test]
    fn a_dropped_copy_leaves_at_once_and_is_deleted_in_the_background() {
        let dir = tempfile::tempdir().unwrap();
        let store = ReplicaStore::open(dir.path()).unwrap();
        open(&store, 1);
        write(&store, 1, "0000000000000001.sco", 0, &[7; 8192]).unwrap();
        store.close("d").unwrap();
        assert!(!dir.path().join("d").exists(), "the copy's name is free");
        assert!(store.list().is_empty());
        // A copy of the same vDisk can be opened again at once.
        open(&store, 2);
        store.close("d").unwrap();
        let trash = dir.path().join(TRASH);
        for _ in 0..200 {
            if std::fs::read_dir(&trash).unwrap().next().is_none() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(std::fs::read_dir(&trash).unwrap().next().is_none());
        // Left over from a crash: deleted at the next start, not a copy.
        std::fs::create_dir_all(trash.join("d.9")).unwrap();
        std::fs::write(trash.join("d.9").join(STATE), b"{}").unwrap();
        let store = ReplicaStore::open(dir.path()).unwrap();
        assert!(store.list().is_empty());
        assert!(!trash.exists());
    }

    #[test]
    fn hostile_messages_are_refused_without_touching_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let store = ReplicaStore::open(dir.path()).unwrap();
        open(&store, 3);
        for bad in ["../x.sco", "state.json", "0000000000000001.sco/"] {
            assert!(write(&store, 3, bad, 0, b"x").is_err(), "{bad}");
        }
        // Another generation (a deposed or future owner).
        assert!(write(&store, 2, "0000000000000001.sco", 0, b"x").is_err());
        assert!(write(&store, 3, "0000000000000001.sco", u64::MAX - 1, b"xx").is_err());
        // Pieces that do not add up to the body, or name a bad file.
        let carrying = |pieces: Vec<Piece>, body: &[u8]| {
            store.commit(
                &Commit {
                    vdisk: "d".into(),
                    generation: 3,
                    batch: 1,
                    segments: Vec::new(),
                    frozen: (0, 0),
                    meta: Some(meta()),
                    durable: false,
                    pieces,
                },
                body,
            )
        };
        let piece = |file: &str, len| Piece {
            file: file.into(),
            offset: 0,
            len,
        };
        assert!(carrying(vec![piece("0000000000000001.sco", 4)], b"xx").is_err());
        assert!(carrying(vec![piece("0000000000000001.sco", 1)], b"xx").is_err());
        assert!(carrying(vec![piece("../x.sco", 2)], b"xx").is_err());
        assert!(carrying(vec![piece("0000000000000001.sco", u64::MAX)], b"xx").is_err());
        assert!(
            store
                .begin(&Open {
                    vdisk: "../etc".into(),
                    vpool: "p".into(),
                    id: 1,
                    generation: 1
                })
                .is_err()
        );
        let names: Vec<_> = std::fs::read_dir(dir.path().join("d"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, ["state.json"]);
        // A directory with an unreadable state is dropped at restart.
        std::fs::create_dir(dir.path().join("junk")).unwrap();
        std::fs::write(dir.path().join("junk/state.json"), b"{").unwrap();
        drop(store);
        let store = ReplicaStore::open(dir.path()).unwrap();
        assert!(!dir.path().join("junk").exists());
        assert_eq!(store.list().len(), 1);
    }
}
