//! Grid helpers: a stand-in for the cluster store's ownership record, and
//! copying a hand-over's files the way the daemon would.
#![allow(dead_code)]
// Test code: file lengths of small test hand-overs.
#![allow(clippy::cast_possible_truncation)]

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use depot_engine::{FenceError, Fencing, HandoverFile, Owner};

/// The current owner generation of one vDisk, as etcd would hold it.
#[derive(Clone, Default)]
pub struct Registry(pub Arc<AtomicU64>);

/// The record's value while the store "cannot be reached".
const UNREACHABLE: u64 = u64::MAX;

impl Registry {
    /// Hands the vDisk to generation `g` and returns that owner's context.
    pub fn grant(&self, g: u64) -> Owner {
        self.0.store(g, Ordering::SeqCst);
        self.owner(g)
    }

    /// An owner context for generation `g`, whatever the record says.
    pub fn owner(&self, g: u64) -> Owner {
        Owner::new(Arc::new(Lease {
            current: self.0.clone(),
            mine: g,
        }))
    }

    /// Makes the store unreachable: checks can tell nothing until the
    /// next [`Registry::set`].
    pub fn cut_off(&self) {
        self.0.store(UNREACHABLE, Ordering::SeqCst);
    }

    /// Moves the record to generation `g` without an owner context.
    pub fn set(&self, g: u64) {
        self.0.store(g, Ordering::SeqCst);
    }
}

/// One router's lease on the vDisk: valid while the record names its
/// generation.
struct Lease {
    current: Arc<AtomicU64>,
    mine: u64,
}

impl Fencing for Lease {
    fn generation(&self) -> u64 {
        self.mine
    }
    fn check(&self) -> Result<(), FenceError> {
        match self.current.load(Ordering::SeqCst) {
            UNREACHABLE => Err(FenceError::Unknown("the store cannot be reached".into())),
            g if g == self.mine => Ok(()),
            g => Err(FenceError::Lost(format!(
                "generation {g} owns the vDisk now"
            ))),
        }
    }
}

/// An owner whose check always passes (a daemon that cannot tell).
pub struct Blind(pub u64);

impl Fencing for Blind {
    fn generation(&self) -> u64 {
        self.0
    }
    fn check(&self) -> Result<(), FenceError> {
        Ok(())
    }
}

/// Copies hand-over files into `dir`, skipping those already there with
/// the same length (a precopy's, which never change) and those that
/// vanished (shipped and evicted meanwhile). Returns the bytes copied.
pub fn copy_files(files: &[HandoverFile], dir: &Path) -> u64 {
    let mut copied = 0;
    for f in files {
        let to = dir.join(f.file_name());
        if std::fs::metadata(&to).is_ok_and(|m| m.len() == f.len) {
            continue;
        }
        match std::fs::read(&f.path) {
            Ok(mut data) => {
                data.truncate(f.len as usize);
                std::fs::write(&to, &data).unwrap();
                copied += data.len() as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => panic!("copying {}: {e}", f.path.display()),
        }
    }
    copied
}

/// Every backend object file under `root` (a local-directory backend).
pub fn backend_keys(root: &Path) -> Vec<String> {
    fn walk(base: &Path, p: &Path, out: &mut Vec<String>) {
        let Ok(rd) = std::fs::read_dir(p) else {
            return;
        };
        for e in rd.flatten() {
            let path = e.path();
            if path.is_dir() {
                walk(base, &path, out);
            } else if let Ok(rel) = path.strip_prefix(base) {
                out.push(rel.to_string_lossy().into_owned());
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}
