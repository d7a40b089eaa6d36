//! Stable SCSI identity of a vDisk: a random 128-bit id generated once and
//! kept on disk, from which the VPD unit serial number (page 0x80) and the
//! NAA designator (page 0x83) are derived. Initiators (ESXi, multipath) key
//! disks on these, so they must never change across restarts.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;

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
pub fn load_or_create(data_dir: &Path, vm: &str, disk: &str) -> anyhow::Result<Identity> {
    let p = path(data_dir, vm, disk);
    if let Ok(text) = std::fs::read_to_string(&p) {
        let id = u128::from_str_radix(text.trim(), 16)
            .with_context(|| format!("corrupt identity file {}", p.display()))?;
        return Ok(Identity(id));
    }
    let dir = p.parent().context("identity path has no parent")?;
    std::fs::create_dir_all(dir)?;
    let id = Identity(rand::random());
    let tmp = p.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    writeln!(f, "{}", id.serial())?;
    f.sync_all()?;
    std::fs::rename(&tmp, &p)?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(id)
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
    }
}
