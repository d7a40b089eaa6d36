//! The one naming rule for everything an admin names: vPools, VMs, vDisks
//! and snapshots. Names appear in iSCSI qualified names
//! (`iqn.2026-11.io.depot:<vm>`), in paths on flash and in object keys on
//! the backend, so the rule is the intersection of what all three accept:
//! 1-64 characters of `[a-z0-9.-]`, starting with a letter or digit. No
//! `@` (it separates `VDISK@SNAPSHOT`) and no `/` or `..` (paths and keys).
//! The engine checks it on every name it is given, the daemon on every
//! request, with this one function.

/// Longest name, in bytes.
pub const NAME_MAX: usize = 64;

/// A name that breaks the rule; its message says what the rule is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid {kind} name {name:?}: use 1-{NAME_MAX} characters a-z, 0-9, '-', '.', starting with a letter or digit"
)]
pub struct NameError {
    /// What was being named ("VM", "vDisk", ...).
    pub kind: &'static str,
    /// The refused name.
    pub name: String,
}

/// Checks `name`, naming a `kind` of object, against the rule.
pub fn check_name(kind: &'static str, name: &str) -> Result<(), NameError> {
    let ok = !name.is_empty()
        && name.len() <= NAME_MAX
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(NameError {
            kind,
            name: name.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_iqn_safe_names() {
        for ok in ["a", "web1", "db-01.root", "0", &"x".repeat(NAME_MAX)] {
            assert!(check_name("VM", ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn refuses_everything_else() {
        let long = "x".repeat(NAME_MAX + 1);
        for bad in ["", "-a", ".a", "A", "a_b", "a@b", "a/b", "a b", "é", &long] {
            let e = check_name("vDisk", bad).unwrap_err();
            assert_eq!(e.kind, "vDisk");
            assert!(e.to_string().starts_with("invalid vDisk name"), "{e}");
        }
    }
}
