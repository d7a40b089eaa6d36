//! The target side of a live move (the steps are in the docs of
//! `manager::moves`): checks flash space and prepares the import, receives
//! the files, applies what the source shipped or precopied while the guest
//! runs, keeps the frozen state on flash, and finishes the import under the
//! generation the ownership change gave it.
//!
//! Invariants: the vDisk is served here only after `move.commit` (or after
//! this router sees it owns a vDisk whose staged state it holds), under a
//! generation newer than the source's; a staged state stays on flash until
//! the import finished, so a restart finishes it alone.

use std::collections::HashMap;
use std::io::{Seek, SeekFrom, Write};
use std::sync::Arc;

use depot_engine::{HandoverState, Owner};

use super::moves::{Abort, Commit, FileChunk, Precopied, PrecopyApplied, Prepare, Stage};
use super::{Manager, State, bad, not_found};
use crate::cluster::fencing::VdiskFencing;
use crate::error::{DepotError, DepotResult};

/// Flash a target keeps free beyond what a move brings.
const FLASH_MARGIN: u64 = 1 << 30;

/// The name of the staged state in an import directory.
const STAGED: &str = "handover.json";

/// Imports under way on this router (target side).
#[derive(Default)]
pub(super) struct Imports {
    prepared: HashMap<String, depot_engine::ImportPrep>,
}

impl Manager {
    /// `move.prepare` on the target.
    pub fn move_prepare(&self, p: Prepare) -> DepotResult<()> {
        let node = self.cluster.clone().ok_or_else(|| bad("not clustered"))?;
        let st = self.lock();
        let rec = st
            .catalog
            .vdisk(&p.vdisk)
            .ok_or_else(|| not_found("vDisk", &p.vdisk))?;
        let pool_name = rec.info.vpool.clone().unwrap_or_default();
        let pool = st.pools.get(&pool_name).cloned().ok_or_else(|| {
            DepotError::Unavailable(format!(
                "vPool {pool_name:?} is not open on router {}",
                node.name()
            ))
        })?;
        drop(st);
        let dir = pool.import_dir(&p.vdisk)?;
        let free = free_bytes(&dir)?;
        if free < p.bytes + FLASH_MARGIN {
            return Err(DepotError::InUse(format!(
                "router {} lacks flash space for vDisk {:?}: {} free, {} needed",
                node.name(),
                p.vdisk,
                crate::size::format(free),
                crate::size::format(p.bytes + FLASH_MARGIN)
            )));
        }
        self.moves.lock().insert(p.vdisk.clone());
        // A provisional owner newer than any generation so far; the
        // commit gives the real one.
        let cur = node.view().owners.get(&p.vdisk).map_or(0, |o| o.generation);
        let fencing = VdiskFencing::new(node.clone(), &p.vdisk, cur + 1, pool.fencing_mode());
        let prep = pool.prepare_import(&p.vdisk, &Owner::new(fencing));
        let prep = match prep {
            Ok(p) => p,
            Err(e) => {
                self.moves.lock().remove(&p.vdisk);
                return Err(e.into());
            }
        };
        self.imports.lock().prepared.insert(p.vdisk, prep);
        Ok(())
    }

    /// `move.file` on the target.
    pub fn move_file(&self, c: FileChunk, body: &[u8]) -> DepotResult<()> {
        if !self.moves.lock().contains(&c.vdisk) {
            return Err(bad(format!(
                "no move of vDisk {:?} is being prepared here",
                c.vdisk
            )));
        }
        if c.file.contains('/') || c.file.starts_with('.') {
            return Err(bad(format!("bad hand-over file name {:?}", c.file)));
        }
        let dir = self.import_dir_of(&c.vdisk)?;
        let path = dir.join(&c.file);
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| DepotError::io(format!("opening {}", path.display()), e))?;
        f.seek(SeekFrom::Start(c.offset))
            .and_then(|_| f.write_all(body))
            .map_err(|e| DepotError::io(format!("writing {}", path.display()), e))?;
        Ok(())
    }

    /// `move.precopied` on the target: applies what the precopy brought
    /// (the slow part of an import, before the pause).
    pub fn move_precopied(&self, p: Precopied) -> DepotResult<PrecopyApplied> {
        let (pool, dir) = {
            let st = self.lock();
            (pool_of(&st, &p.vdisk)?, import_dir_in(&st, &p.vdisk)?)
        };
        let mut imports = self.imports.lock();
        let prep = imports.prepared.get_mut(&p.vdisk).ok_or_else(|| {
            bad(format!(
                "no move of vDisk {:?} is being prepared here",
                p.vdisk
            ))
        })?;
        // What the source shipped meanwhile is older than what it
        // precopied: applied first (module docs of the engine's import).
        let fetched = pool.import_shipped(prep)?;
        pool.import_precopied(prep, &p.files, &dir)?;
        Ok(PrecopyApplied { fetched })
    }

    /// `move.stage` on the target: keeps the frozen state on flash.
    pub fn move_stage(&self, s: Stage) -> DepotResult<()> {
        let dir = self.import_dir_of(&s.state.name)?;
        let body = serde_json::to_vec(&s.state).map_err(|e| DepotError::Internal(e.to_string()))?;
        let tmp = dir.join(format!("{STAGED}.tmp"));
        let dst = dir.join(STAGED);
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&body)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &dst)?;
            std::fs::File::open(&dir)?.sync_all()
        };
        write().map_err(|e| DepotError::io(format!("staging {}", dst.display()), e))
    }

    /// `move.commit` on the target: finish the import and serve.
    ///
    /// The source committed the ownership in etcd before it sent this, but
    /// this router's feed may not have delivered the change yet. It is
    /// recorded in the view first (only if newer than what the view has),
    /// so that neither the paths (ALUA) nor reconcile act on the old owner:
    /// reconcile, once the move no longer shields the vDisk, would stand
    /// the just-imported volume by and drop the un-shipped data it brought.
    pub fn move_commit(&self, c: Commit) -> DepotResult<()> {
        if let Some(node) = &self.cluster {
            node.apply_owner(
                &c.vdisk,
                Some(depot_cluster::Ownership {
                    router: node.name().to_string(),
                    generation: c.generation,
                }),
            );
        }
        let r = self.finish_staged(&c.vdisk, c.generation);
        self.moves.lock().remove(&c.vdisk);
        let mut st = self.lock();
        self.reconcile(&mut st);
        r
    }

    /// `move.abort` on the target.
    pub fn move_abort(&self, a: Abort) {
        self.imports.lock().prepared.remove(&a.vdisk);
        self.moves.lock().remove(&a.vdisk);
        if let Ok(dir) = self.import_dir_of(&a.vdisk) {
            let _ = std::fs::remove_dir_all(dir);
        }
    }

    /// The import directory of `vdisk` on its vPool's flash.
    fn import_dir_of(&self, vdisk: &str) -> DepotResult<std::path::PathBuf> {
        import_dir_in(&self.lock(), vdisk)
    }

    /// Whether a staged import of `vdisk` waits on this router.
    pub(super) fn staged_in(&self, st: &State, vdisk: &str) -> bool {
        import_dir_in(st, vdisk).is_ok_and(|d| d.join(STAGED).is_file())
    }

    /// Finishes the staged import of `vdisk` under generation
    /// `generation` (the commit's) and serves it.
    fn finish_staged(&self, vdisk: &str, generation: u64) -> DepotResult<()> {
        let mut st = self.lock();
        self.finish_staged_with(&mut st, vdisk, generation)
    }

    /// Finishes a staged import whose commit never came, under this
    /// router's ownership as the view has it (reconcile).
    pub(super) fn finish_staged_locked(&self, st: &mut State, vdisk: &str) -> DepotResult<()> {
        let node = self.cluster.clone().ok_or_else(|| bad("not clustered"))?;
        let g = match node.view().owners.get(vdisk) {
            Some(o) if o.router == node.name() => o.generation,
            _ => {
                return Err(bad(format!(
                    "router {} does not own vDisk {vdisk:?}",
                    node.name()
                )));
            }
        };
        self.finish_staged_with(st, vdisk, g)
    }

    fn finish_staged_with(&self, st: &mut State, vdisk: &str, g: u64) -> DepotResult<()> {
        let dir = import_dir_in(st, vdisk)?;
        let body = std::fs::read(dir.join(STAGED))
            .map_err(|e| DepotError::io(format!("reading the staged move of {vdisk}"), e))?;
        let state: HandoverState = serde_json::from_slice(&body)
            .map_err(|e| DepotError::Internal(format!("staged move of {vdisk}: {e}")))?;
        let pool = pool_of(st, vdisk)?;
        let owner = self.owner(vdisk, g, &pool);
        let prep = match self.imports.lock().prepared.remove(vdisk) {
            Some(p) => p,
            None => pool.prepare_import(vdisk, &owner)?,
        };
        let volume = pool.finish_import(prep.with_owner(owner), &state, &dir)?;
        let _ = std::fs::remove_file(dir.join(STAGED));
        self.go_online(st, vdisk, volume, g)?;
        self.update_paths(st);
        tracing::info!(vdisk, generation = g, "vDisk moved here and online");
        Ok(())
    }
}

/// The open vPool of vDisk `vdisk`.
fn pool_of(st: &State, vdisk: &str) -> DepotResult<Arc<depot_engine::VPool>> {
    let rec = st
        .catalog
        .vdisk(vdisk)
        .ok_or_else(|| not_found("vDisk", vdisk))?;
    let pool_name = rec.info.vpool.clone().unwrap_or_default();
    st.pools
        .get(&pool_name)
        .cloned()
        .ok_or_else(|| DepotError::Unavailable(format!("vPool {pool_name:?} is not open")))
}

/// The import directory of `vdisk` on its vPool's flash.
fn import_dir_in(st: &State, vdisk: &str) -> DepotResult<std::path::PathBuf> {
    Ok(pool_of(st, vdisk)?.import_dir(vdisk)?)
}

/// Free bytes on the file system holding `dir`.
fn free_bytes(dir: &std::path::Path) -> DepotResult<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| DepotError::Internal(e.to_string()))?;
    let mut s: libc::statvfs = unsafe_zeroed();
    // SAFETY: `c` is a NUL-terminated path and `s` a statvfs the call
    // fills; both live across the call.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut s) };
    if rc != 0 {
        return Err(DepotError::io(
            format!("statvfs {}", dir.display()),
            std::io::Error::last_os_error(),
        ));
    }
    Ok(s.f_bavail.saturating_mul(s.f_frsize))
}

fn unsafe_zeroed() -> libc::statvfs {
    // SAFETY: statvfs is a plain C struct of integers; all-zero is valid.
    #[allow(unsafe_code)]
    unsafe {
        std::mem::zeroed()
    }
}
