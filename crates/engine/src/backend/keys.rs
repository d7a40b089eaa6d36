//! The backend's object-key layout: the only code that builds or parses an
//! object key. Everything else asks these functions, so a change of layout
//! is a change of this module.
//!
//! Layout, relative to the vPool's prefix (which [`super::Backend`] adds):
//! - `catalog/<vdisk name>`: the catalog entry of a vDisk (name → id);
//! - `vol/<id>/manifest`: a volume's manifest;
//! - `vol/<id>/sco/<seq>`: a container written by owner generation 0;
//! - `vol/<id>/tlog/<seq>`: a shipped tlog of generation 0;
//! - `vol/<id>/ckpt/<seq>`: an index checkpoint of generation 0;
//! - `vol/<id>/sco/<seq>.<gen>`, `vol/<id>/tlog/<seq>.<gen>`,
//!   `vol/<id>/ckpt/<seq>.<gen>`: the same objects written by owner
//!   generation `gen` > 0 (a router of a grid);
//! - `fencing-probe/<nonce>`: the short-lived object a vPool writes to find
//!   out whether the store honours conditional PUTs;
//!
//! where `<id>`, `<seq>`, `<gen>` and `<nonce>` are 16 lower-case hex
//! digits. Which generation an object has is derived from its sequence
//! number and the manifest's epoch table (`meta::Epoch`), so a
//! reader builds exactly one key per object.
//!
//! Invariants:
//! - These exact strings are what existing backends hold: generation 0
//!   keys are the keys written before grids existed, and keep reading.
//! - Two owners never build the same data-object key: every key of a
//!   generation above 0 carries it, so a deposed owner's late uploads land
//!   beside the new owner's objects, never on them.
//! - A key built here parses back to what built it ([`parse_volume_object`],
//!   [`catalog_name`], [`volume_of`]).

/// Prefix of every catalog entry.
pub const CATALOG_PREFIX: &str = "catalog/";

/// Prefix of every volume's objects.
pub const VOLUMES_PREFIX: &str = "vol/";

/// Prefix of the conditional-PUT probe objects.
pub const PROBE_PREFIX: &str = "fencing-probe/";

/// Object name of a catalog entry.
pub fn catalog(name: &str) -> String {
    format!("{CATALOG_PREFIX}{name}")
}

/// The vDisk name a catalog key names (`None` for other keys).
pub fn catalog_name(key: &str) -> Option<&str> {
    key.strip_prefix(CATALOG_PREFIX)
}

/// Object name of a conditional-PUT probe.
pub fn probe(nonce: u64) -> String {
    format!("{PROBE_PREFIX}{nonce:016x}")
}

/// Prefix of everything a volume owns.
pub fn volume_prefix(vol: u64) -> String {
    format!("{VOLUMES_PREFIX}{vol:016x}/")
}

/// Object name of a volume's manifest.
pub fn manifest(vol: u64) -> String {
    format!("{VOLUMES_PREFIX}{vol:016x}/manifest")
}

/// `vol/<id>/<dir>/<seq>`, with `.<gen>` for generations above 0.
fn data_object(vol: u64, dir: &str, seq: u64, generation: u64) -> String {
    if generation == 0 {
        format!("{VOLUMES_PREFIX}{vol:016x}/{dir}/{seq:016x}")
    } else {
        format!("{VOLUMES_PREFIX}{vol:016x}/{dir}/{seq:016x}.{generation:016x}")
    }
}

/// Object name of a container written by owner `generation`.
pub fn container(vol: u64, seq: u64, generation: u64) -> String {
    data_object(vol, CONTAINER_DIR, seq, generation)
}

/// Object name of a tlog written by owner `generation`.
pub fn tlog(vol: u64, seq: u64, generation: u64) -> String {
    data_object(vol, TLOG_DIR, seq, generation)
}

/// Object name of an index checkpoint written by owner `generation`.
pub fn checkpoint(vol: u64, seq: u64, generation: u64) -> String {
    data_object(vol, CHECKPOINT_DIR, seq, generation)
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
    /// `vol/<id>/sco/<seq>[.<gen>]`: (seq, owner generation).
    Container(u64, u64),
    /// `vol/<id>/tlog/<seq>[.<gen>]`: (seq, owner generation).
    Tlog(u64, u64),
    /// `vol/<id>/ckpt/<seq>[.<gen>]`: (seq, owner generation).
    Checkpoint(u64, u64),
}

impl VolumeObject {
    /// The owner generation a data object's key carries (0 for the
    /// manifest).
    pub fn generation(&self) -> u64 {
        match *self {
            VolumeObject::Manifest => 0,
            VolumeObject::Container(_, g)
            | VolumeObject::Tlog(_, g)
            | VolumeObject::Checkpoint(_, g) => g,
        }
    }
}

/// The volume id and object a key names; `None` for any key this module
/// does not build (catalog entries, foreign objects).
pub fn parse_volume_object(key: &str) -> Option<(u64, VolumeObject)> {
    let (id, rest) = key.strip_prefix(VOLUMES_PREFIX)?.split_once('/')?;
    let vol = hex16(id)?;
    if rest == "manifest" {
        return Some((vol, VolumeObject::Manifest));
    }
    let (dir, name) = rest.split_once('/')?;
    let (seq, generation) = match name.split_once('.') {
        None => (hex16(name)?, 0),
        Some((s, g)) => match hex16(g)? {
            0 => return None,
            g => (hex16(s)?, g),
        },
    };
    let obj = match dir {
        CONTAINER_DIR => VolumeObject::Container(seq, generation),
        TLOG_DIR => VolumeObject::Tlog(seq, generation),
        CHECKPOINT_DIR => VolumeObject::Checkpoint(seq, generation),
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
        let k = container(VOL, SEQ, 0);
        assert_eq!(k, "vol/0123456789abcdef/sco/000000000000002a");
        assert_eq!(
            parse_volume_object(&k),
            Some((VOL, VolumeObject::Container(SEQ, 0)))
        );
        assert_eq!(volume_of(&k), Some(VOL));
        let max = container(u64::MAX, u64::MAX, 0);
        assert_eq!(
            parse_volume_object(&max),
            Some((u64::MAX, VolumeObject::Container(u64::MAX, 0)))
        );
    }

    #[test]
    fn tlog_keys_round_trip() {
        let k = tlog(VOL, SEQ, 0);
        assert_eq!(k, "vol/0123456789abcdef/tlog/000000000000002a");
        assert_eq!(
            parse_volume_object(&k),
            Some((VOL, VolumeObject::Tlog(SEQ, 0)))
        );
        assert_eq!(volume_of(&k), Some(VOL));
    }

    #[test]
    fn checkpoint_keys_round_trip() {
        let k = checkpoint(VOL, SEQ, 0);
        assert_eq!(k, "vol/0123456789abcdef/ckpt/000000000000002a");
        assert_eq!(
            parse_volume_object(&k),
            Some((VOL, VolumeObject::Checkpoint(SEQ, 0)))
        );
        assert_eq!(volume_of(&k), Some(VOL));
    }

    #[test]
    fn generation_keys_round_trip_and_differ_per_owner() {
        let gens = [1u64, 2, 0xdead_beef, u64::MAX];
        for g in gens {
            let c = container(VOL, SEQ, g);
            assert_eq!(
                c,
                format!("vol/0123456789abcdef/sco/000000000000002a.{g:016x}")
            );
            let t = tlog(VOL, SEQ, g);
            let k = checkpoint(VOL, SEQ, g);
            assert_eq!(
                parse_volume_object(&c),
                Some((VOL, VolumeObject::Container(SEQ, g)))
            );
            assert_eq!(
                parse_volume_object(&t),
                Some((VOL, VolumeObject::Tlog(SEQ, g)))
            );
            assert_eq!(
                parse_volume_object(&k),
                Some((VOL, VolumeObject::Checkpoint(SEQ, g)))
            );
            assert_eq!(parse_volume_object(&c).unwrap().1.generation(), g);
            assert_eq!(volume_of(&c), Some(VOL));
            // Never the key of another owner, nor the old layout's.
            assert_ne!(c, container(VOL, SEQ, 0));
            for h in gens.iter().filter(|&&h| h != g) {
                assert_ne!(c, container(VOL, SEQ, *h));
            }
        }
    }

    #[test]
    fn probe_keys_are_not_volume_objects() {
        let k = probe(0x2a);
        assert_eq!(k, "fencing-probe/000000000000002a");
        assert_eq!(parse_volume_object(&k), None);
        assert_eq!(volume_of(&k), None);
        assert_eq!(catalog_name(&k), None);
    }

    #[test]
    fn volume_prefix_covers_every_volume_object() {
        let p = volume_prefix(VOL);
        assert_eq!(p, "vol/0123456789abcdef/");
        assert_eq!(volume_of(&p), Some(VOL));
        for k in [
            manifest(VOL),
            container(VOL, SEQ, 0),
            tlog(VOL, SEQ, 0),
            checkpoint(VOL, SEQ, 0),
            container(VOL, SEQ, 3),
            tlog(VOL, SEQ, 3),
            checkpoint(VOL, SEQ, 3),
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
            "vol/0123456789abcdef/sco/000000000000002a.0000000000000000",
            "vol/0123456789abcdef/sco/000000000000002a.3",
            "vol/0123456789abcdef/sco/000000000000002a.000000000000003.",
            "vol/0123456789abcdef/tlog/000000000000002a.0000000000000003.tmp",
        ] {
            assert_eq!(parse_volume_object(k), None, "{k}");
        }
        assert_eq!(volume_of("vol/short"), None);
        assert_eq!(volume_of("catalog/vol"), None);
    }
}
