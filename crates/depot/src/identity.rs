//! Stable SCSI identity of a vDisk: a random 128-bit id generated once and
//! kept on disk, from which the VPD unit serial number (page 0x80) and the
//! NAA designator (page 0x83) are derived. Initiators (ESXi, multipath) key
//! disks on these, so they must never change across restarts.
//!
//! Identities of configuration-declared vDisks live in
//! `<data_dir>/identity/<vm>/<disk>.id` (written atomically, created on
//! first use); API-created vDisks keep theirs in the catalog.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{DepotError, DepotResult};

/// The identity of one vDisk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity(pub u128);

impl Identity {
    /// VPD 0x80 unit serial number: 32 hex digits.
    pub fn serial(&self) -> String {
        format!("{:032x}", self.0)
    }

    /// NAA 6 designator for VPD 0x83.
    pub fn naa(&self) -> [u8; 16] {
        depot_scsi::LuConfig::naa_from_id(self.0)
    }
}

fn path(data_dir: &Path, vm: &str, disk: &str) -> PathBuf {
    data_dir
        .join("identity")
        .join(vm)
        .join(format!("{disk}.id"))
}

/// Loads the identity of `vm/disk`, creating (and durably storing) a new one
/// on first use.
pub fn load_or_create(data_dir: &Path, vm: &str, disk: &str) -> DepotResult<Identity> {
    let p = path(data_dir, vm, disk);
    if let Ok(text) = std::fs::read_to_string(&p) {
        let id = u128::from_str_radix(text.trim(), 16).map_err(|e| {
            DepotError::Internal(format!("corrupt identity file {}: {e}", p.display()))
        })?;
        return Ok(Identity(id));
    }
    let dir = p
        .parent()
        .ok_or_else(|| DepotError::Internal("identity path has no parent".into()))?;
    let id = Identity(rand::random());
    let tmp = p.with_extension("tmp");
    let store = || -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let mut f = std::fs::File::create(&tmp)?;
        writeln!(f, "{}", id.serial())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &p)?;
        std::fs::File::open(dir)?.sync_all()
    };
    store().map_err(|e| DepotError::Internal(e.to_string()))?;
    Ok(id)
}

/// The identity kept in a catalog record (32 hex digits).
pub fn parse(hex: &str) -> Option<Identity> {
    u128::from_str_radix(hex, 16).ok().map(Identity)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_is_stable() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create(dir.path(), "vm", "d0").unwrap();
        let b = load_or_create(dir.path(), "vm", "d0").unwrap();
        let c = load_or_create(dir.path(), "vm", "d1").unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.serial().len(), 32);
        assert_eq!(parse(&a.serial()), Some(a));
        assert_eq!(parse("xyz"), None);
        std::fs::write(path(dir.path(), "vm", "bad"), "nothex\n").unwrap();
        assert!(load_or_create(dir.path(), "vm", "bad").is_err());
    }
}
