//! Where a logical unit's persistent reservation state lives:
//! [`ReservationStore`], the seam the daemon implements on a shared
//! compare-and-swap store (several routers serving the same logical unit),
//! and [`FileReservationStore`], the default: a JSON file per logical unit
//! (or memory only).
//!
//! Contract: the logical unit calls [`ReservationStore::load`] once when it
//! is created and, for every PERSISTENT RESERVE OUT, `load` then (if the
//! state changed) [`ReservationStore::save`], serialized per logical unit.
//! `save` commits only if the stored state is still the one the preceding
//! `load` returned (compare-and-swap on the store's own revision) and
//! answers [`StoreError::Conflict`] otherwise; the unit then loads and
//! applies again.
//!
//! Invariants of the file store: the file is written atomically
//! (temporary file, fsync, rename, fsync of the directory) before the new
//! state is returned by `load`; a missing file is an empty state; one
//! process owns the file, so `save` never conflicts and `load` answers
//! from memory.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use parking_lot::Mutex;

use super::PrState;

/// Why a [`ReservationStore`] could not load or save.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The stored state changed since it was loaded (another router
    /// committed first); load and apply again.
    #[error("persistent reservation state changed since it was loaded")]
    Conflict,
    /// The store cannot be reached now; retrying later may work (answered
    /// NOT READY, LOGICAL UNIT IS IN PROCESS OF BECOMING READY).
    #[error("persistent reservation store unavailable: {0}")]
    Unavailable(String),
    /// The store failed (answered HARDWARE ERROR, INTERNAL TARGET
    /// FAILURE).
    #[error("persistent reservation store failed: {0}")]
    Io(String),
}

/// Persistence of one logical unit's persistent reservation state.
pub trait ReservationStore: Send + Sync {
    /// The latest committed state (an empty state if none was ever saved).
    fn load(&self) -> Result<PrState, StoreError>;

    /// Commits `state` if the stored state is still the one the last
    /// [`load`](Self::load) returned; [`StoreError::Conflict`] otherwise.
    fn save(&self, state: &PrState) -> Result<(), StoreError>;

    /// Whether the state survives a restart of the router (PTPL_C; APTPL
    /// requests are refused when not).
    fn persistent(&self) -> bool {
        true
    }
}

/// The default store: the state in memory, written to a JSON file (when a
/// path is given) on every change.
#[derive(Debug)]
pub struct FileReservationStore {
    path: Option<PathBuf>,
    current: Mutex<PrState>,
}

impl FileReservationStore {
    /// A store at `path`, holding what was saved there (nothing saved:
    /// an empty state); `None`: memory only, not persistent.
    pub fn open(path: Option<PathBuf>) -> std::io::Result<FileReservationStore> {
        let current = match &path {
            Some(p) => read_state(p)?,
            None => PrState::default(),
        };
        Ok(FileReservationStore {
            path,
            current: Mutex::new(current),
        })
    }

    /// The state file, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }
}

impl ReservationStore for FileReservationStore {
    fn load(&self) -> Result<PrState, StoreError> {
        Ok(self.current.lock().clone())
    }

    fn save(&self, state: &PrState) -> Result<(), StoreError> {
        let mut current = self.current.lock();
        if let Some(path) = &self.path {
            write_state(path, state).map_err(|e| StoreError::Io(e.to_string()))?;
        }
        *current = state.clone();
        Ok(())
    }

    fn persistent(&self) -> bool {
        self.path.is_some()
    }
}

/// Reads the saved state; a missing file is an empty state.
fn read_state(path: &Path) -> std::io::Result<PrState> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(PrState::default()),
        Err(e) => Err(e),
    }
}

/// Saves `state` atomically: temporary file, fsync, rename, fsync of the
/// directory.
fn write_state(path: &Path, state: &PrState) -> std::io::Result<()> {
    let bytes = serde_json::to_vec_pretty(state)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    let tmp = tmp_path(path);
    {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|s| s.to_os_string())
        .unwrap_or_default();
    name.push(".tmp");
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::super::{OutRequest, out_sa};
    use super::*;
    use crate::ua::ItNexus;

    fn registered() -> PrState {
        let mut st = PrState::default();
        let mut p = vec![0u8; 24];
        p[8..16].copy_from_slice(&1u64.to_be_bytes());
        p[20] = 1;
        let n = ItNexus {
            initiator_name: "iqn.2007-10.test:init1".into(),
            isid: [0x80, 0, 0, 0, 0, 1],
            target_name: "iqn.t".into(),
            tpgt: 1,
        };
        st.apply_out(
            &n,
            &OutRequest {
                service_action: out_sa::REGISTER_AND_IGNORE,
                scope: 0,
                pr_type: 0,
                params: &p,
                relative_port_id: 1,
                ptpl_capable: true,
            },
        )
        .unwrap();
        st
    }

    #[test]
    fn store_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pr.json");
        let store = FileReservationStore::open(Some(path.clone())).unwrap();
        assert!(store.persistent());
        assert_eq!(store.load().unwrap(), PrState::default());
        let st = registered();
        store.save(&st).unwrap();
        assert_eq!(store.load().unwrap(), st);
        // The file holds it: a new store (a restart) loads it.
        let again = FileReservationStore::open(Some(path.clone())).unwrap();
        assert_eq!(again.load().unwrap(), st);
        assert_eq!(again.path(), Some(path.as_path()));
    }

    #[test]
    fn memory_store_keeps_state_without_a_file() {
        let store = FileReservationStore::open(None).unwrap();
        assert!(!store.persistent());
        let st = registered();
        store.save(&st).unwrap();
        assert_eq!(store.load().unwrap(), st);
    }

    #[test]
    fn unwritable_file_is_an_io_error_and_keeps_the_old_state() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing-dir").join("pr.json");
        let store = FileReservationStore::open(Some(path)).unwrap();
        assert!(matches!(store.save(&registered()), Err(StoreError::Io(_))));
        assert_eq!(store.load().unwrap(), PrState::default());
    }
}
