//! The backend's object-key layout: the only code that builds or parses an
//! object key. Everything else asks these functions, so a change of layout
//! (router generations, say) is a change of this module.
//!
//! Layout, relative to the vPool's prefix (which [`super::Backend`] adds):
//! - `catalog/<vdisk name>`: the catalog entry of a vDisk (name → id);
//! - `vol/<id>/manifest`: a volume's manifest;
//! - `vol/<id>/sco/<seq>`: a container;
//! - `vol/<id>/tlog/<seq>`: a shipped tlog;
//! - `vol/<id>/ckpt/<seq>`: an index checkpoint;
//!
//! where `<id>` and `<seq>` are 16 lower-case hex digits.
//!
//! Invariants:
//! - These exact strings are what existing backends hold: a layout change
//!   must keep reading the old keys.
//! - A key built here parses back to what built it ([`parse_volume_object`],
//!   [`catalog_name`], [`volume_of`]).

/// Prefix of every catalog entry.
pub const CATALOG_PREFIX: &str = "catalog/";

/// Prefix of every volume's objects.
pub const VOLUMES_PREFIX: &str = "vol/";

/// Object name of a catalog entry.
pub fn catalog(name: &str) -> String {
    format!("{CATALOG_PREFIX}{name}")
}

/// The vDisk name a catalog key names (`None` for other keys).
pub fn catalog_name(key: &str) -> Option<&str> {
    key.strip_prefix(CATALOG_PREFIX)
}

/// Prefix of everything a volume owns.
pub fn volume_prefix(vol: u64) -> String {
    format!("{VOLUMES_PREFIX}{vol:016x}/")
}

/// Object name of a volume's manifest.
pub fn manifest(vol: u64) -> String {
    format!("{VOLUMES_PREFIX}{vol:016x}/manifest")
}

/// Object name of a container.
pub fn container(vol: u64, seq: u64) -> String {
    format!("{VOLUMES_PREFIX}{vol:016x}/{CONTAINER_DIR}/{seq:016x}")
}

/// Object name of a tlog.
pub fn tlog(vol: u64, seq: u64) -> String {
    format!("{VOLUMES_PREFIX}{vol:016x}/{TLOG_DIR}/{seq:016x}")
}

/// Object name of an index checkpoint.
pub fn checkpoint(vol: u64, seq: u64) -> String {
    format!("{VOLUMES_PREFIX}{vol:016x}/{CHECKPOINT_DIR}/{seq:016x}")
}

const CONTAINER_DIR: &str = "sco";
const TLOG_DIR: &str = "tlog";
const CHECKPOINT_DIR: &str = "ckpt";

/// The volume id of a key under [`VOLUMES_PREFIX`]: the 16 hex digits
/// after it, whatever follows (`None` for other keys).
pub fn volume_of(key: &str) -> Option<u64> {
    key.strip_prefix(VOLUMES_PREFIX)
        .and_then(|r| r.get(..16))
        .and_then(hex16)
}

/// One of a volume's objects, as its key names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VolumeObject {
    /// `vol/<id>/manifest`.
    Manifest,
    /// `vol/<id>/sco/<seq>`.
    Container(u64),
    /// `vol/<id>/tlog/<seq>`.
    Tlog(u64),
    /// `vol/<id>/ckpt/<seq>`.
    Checkpoint(u64),
}

/// The volume id and object a key names; `None` for any key this module
/// does not build (catalog entries, foreign objects).
pub fn parse_volume_object(key: &str) -> Option<(u64, VolumeObject)> {
    let (id, rest) = key.strip_prefix(VOLUMES_PREFIX)?.split_once('/')?;
    let vol = hex16(id)?;
    if rest == "manifest" {
        return Some((vol, VolumeObject::Manifest));
    }
    let (dir, seq) = rest.split_once('/')?;
    let seq = hex16(seq)?;
    let obj = match dir {
        CONTAINER_DIR => VolumeObject::Container(seq),
        TLOG_DIR => VolumeObject::Tlog(seq),
        CHECKPOINT_DIR => VolumeObject::Checkpoint(seq),
        _ => return None,
    };
    Some((vol, obj))
}

/// Exactly 16 hex digits.
fn hex16(s: &str) -> Option<u64> {
    if s.len() != 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(s, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const VOL: u64 = 0x0123_4567_89ab_cdef;
    const SEQ: u64 = 0x2a;

    #[test]
    fn catalog_keys_round_trip() {
        let k = catalog("web-01.disk");
        assert_eq!(k, "catalog/web-01.disk");
        assert_eq!(catalog_name(&k), Some("web-01.disk"));
        assert_eq!(catalog_name("vol/0123456789abcdef/manifest"), None);
        assert_eq!(volume_of(&k), None);
        assert_eq!(parse_volume_object(&k), None);
    }

    #[test]
    fn manifest_keys_round_trip() {
        let k = manifest(VOL);
        assert_eq!(k, "vol/0123456789abcdef/manifest");
        assert_eq!(parse_volume_object(&k), Some((VOL, VolumeObject::Manifest)));
        assert_eq!(volume_of(&k), Some(VOL));
    }

    #[test]
    fn container_keys_round_trip() {
        let k = container(VOL, SEQ);
        assert_eq!(k, "vol/0123456789abcdef/sco/000000000000002a");
        assert_eq!(
            parse_volume_object(&k),
            Some((VOL, VolumeObject::Container(SEQ)))
        );
        assert_eq!(volume_of(&k), Some(VOL));
        let max = container(u64::MAX, u64::MAX);
        assert_eq!(
            parse_volume_object(&max),
            Some((u64::MAX, VolumeObject::Container(u64::MAX)))
        );
    }

    #[test]
    fn tlog_keys_round_trip() {
        let k = tlog(VOL, SEQ);
        assert_eq!(k, "vol/0123456789abcdef/tlog/000000000000002a");
        assert_eq!(
            parse_volume_object(&k),
            Some((VOL, VolumeObject::Tlog(SEQ)))
        );
        assert_eq!(volume_of(&k), Some(VOL));
    }

    #[test]
    fn checkpoint_keys_round_trip() {
        let k = checkpoint(VOL, SEQ);
        assert_eq!(k, "vol/0123456789abcdef/ckpt/000000000000002a");
        assert_eq!(
            parse_volume_object(&k),
            Some((VOL, VolumeObject::Checkpoint(SEQ)))
        );
        assert_eq!(volume_of(&k), Some(VOL));
    }

    #[test]
    fn volume_prefix_covers_every_volume_object() {
        let p = volume_prefix(VOL);
        assert_eq!(p, "vol/0123456789abcdef/");
        assert_eq!(volume_of(&p), Some(VOL));
        for k in [
            manifest(VOL),
            container(VOL, SEQ),
            tlog(VOL, SEQ),
            checkpoint(VOL, SEQ),
        ] {
            assert!(k.starts_with(&p), "{k}");
            assert!(k.starts_with(VOLUMES_PREFIX), "{k}");
        }
    }

    #[test]
    fn foreign_keys_do_not_parse() {
        for k in [
            "vol/0123456789abcdef",
            "vol/0123456789abcdef/",
            "vol/0123456789abcdef/sco/2a",
            "vol/0123456789abcdef/sco/000000000000002a.tmp",
            "vol/0123456789abcdef/junk/000000000000002a",
            "vol/0123456789abcdeg/manifest",
            "vol/+123456789abcdef/manifest",
            "vol/0123456789abcdef/tlog/+00000000000002a",
            "other/0123456789abcdef/manifest",
        ] {
            assert_eq!(parse_volume_object(k), None, "{k}");
        }
        assert_eq!(volume_of("vol/short"), None);
        assert_eq!(volume_of("catalog/vol"), None);
    }
}
