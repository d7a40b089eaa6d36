//! The DTL's messages between a vDisk's owner and the router holding its
//! mirror (carried by the peer transport as `dtl.*` operations; see
//! docs/cluster.md, *The DTL protocol*), and the checks every received
//! value passes before it touches the disk.
//!
//! Invariants: a file name is `<16 hex digits>.sco` or `.tlog` and nothing
//! else; a write's end is below [`MAX_FILE_BYTES`]; a body is at most
//! [`MAX_WRITE_BYTES`]; a commit names at most [`MAX_SEGMENTS`] segments.

use depot_engine::meta::VolumeMeta;
use depot_engine::{HandoverFileKind, WindowSegment};
use serde::{Deserialize, Serialize};

use crate::error::{DtlError, DtlResult};

/// Largest body of one `dtl.write`.
pub const MAX_WRITE_BYTES: usize = 4 << 20;
/// Largest offset + length of a mirrored file (a container is 64 MiB by
/// default; this leaves room for any configured size).
pub const MAX_FILE_BYTES: u64 = 1 << 36;
/// Most segments a commit may name (a write buffer of 64 GiB in 64 MiB
/// containers is 1,024).
pub const MAX_SEGMENTS: usize = 65_536;

/// `dtl.open`: start a new, empty mirror of a vDisk for its owner's
/// generation (dropping any copy held before).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Open {
    /// The vDisk.
    pub vdisk: String,
    /// Its vPool.
    pub vpool: String,
    /// Its volume id.
    pub id: u64,
    /// The owner generation it is mirrored for.
    pub generation: u64,
}

/// `dtl.write`: bytes (the frame's body) of one file at `offset`, not
/// durable until the next commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Write {
    /// The vDisk.
    pub vdisk: String,
    /// The owner generation.
    pub generation: u64,
    /// `<seq>.sco` or `<seq>.tlog`.
    pub file: String,
    /// Where the bytes go.
    pub offset: u64,
}

/// Most pieces one commit may carry.
pub const MAX_PIECES: usize = 4096;

/// Bytes of one file carried in a commit's body (after the bytes of the
/// pieces before it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Piece {
    /// `<seq>.sco` or `<seq>.tlog`.
    pub file: String,
    /// Where the bytes go.
    pub offset: u64,
    /// How many bytes of the body.
    pub len: u64,
}

fn yes() -> bool {
    true
}

/// `dtl.commit`: the pieces in its body are written, everything written so
/// far is made durable (when `durable`), then the window's description is
/// recorded; the answer means the holder has it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Commit {
    /// The vDisk.
    pub vdisk: String,
    /// The owner generation.
    pub generation: u64,
    /// The commit's number, increasing from 1 per generation.
    pub batch: u64,
    /// The unshipped segments, oldest first.
    pub segments: Vec<WindowSegment>,
    /// The owner's frozen watermark.
    pub frozen: (u64, u32),
    /// The owner's metadata, if it changed since the last commit (always
    /// in the first commit after `dtl.open`).
    pub meta: Option<VolumeMeta>,
    /// The owner fdatasynced what this commit covers: the holder does too
    /// before answering. `false` for a write round (the bytes are held as
    /// the owner holds an unflushed write: in the page cache).
    #[serde(default = "yes")]
    pub durable: bool,
    /// Bytes carried in the body, written before the commit (a round's
    /// small changes travel in one message).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pieces: Vec<Piece>,
}

/// `dtl.close`: drop the mirror (the vDisk moved, was deleted, or was
/// given another holder).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Close {
    /// The vDisk.
    pub vdisk: String,
}

/// The file name of a window file.
pub fn file_name(kind: HandoverFileKind, seq: u64) -> String {
    match kind {
        HandoverFileKind::Container => format!("{seq:016x}.sco"),
        HandoverFileKind::Tlog => format!("{seq:016x}.tlog"),
    }
}

/// Parses a window file name; `None` for anything else (no path
/// separators, no dots but the one, exactly 16 hex digits).
pub fn parse_file_name(name: &str) -> Option<(HandoverFileKind, u64)> {
    let (stem, kind) = if let Some(s) = name.strip_suffix(".sco") {
        (s, HandoverFileKind::Container)
    } else if let Some(s) = name.strip_suffix(".tlog") {
        (s, HandoverFileKind::Tlog)
    } else {
        return None;
    };
    if stem.len() != 16 || !stem.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(stem, 16).ok().map(|seq| (kind, seq))
}

impl Write {
    /// Checks a received write against the protocol's bounds.
    pub fn check(&self, len: usize) -> DtlResult<(HandoverFileKind, u64)> {
        let f = parse_file_name(&self.file)
            .ok_or_else(|| DtlError::Protocol(format!("bad file name {:?}", self.file)))?;
        if len > MAX_WRITE_BYTES {
            return Err(DtlError::Protocol(format!(
                "a write of {len} bytes is above the limit of {MAX_WRITE_BYTES}"
            )));
        }
        let end = self.offset.checked_add(len as u64);
        if end.is_none_or(|e| e > MAX_FILE_BYTES) {
            return Err(DtlError::Protocol(format!(
                "a write at offset {} of {len} bytes ends beyond the largest file",
                self.offset
            )));
        }
        Ok(f)
    }
}

impl Commit {
    /// Checks a received commit against the protocol's bounds.
    pub fn check(&self) -> DtlResult<()> {
        if self.segments.len() > MAX_SEGMENTS
            || self
                .segments
                .iter()
                .any(|s| s.containers.len() > MAX_SEGMENTS)
        {
            return Err(DtlError::Protocol(format!(
                "a commit naming {} segments is above the limit",
                self.segments.len()
            )));
        }
        if self.batch == 0 {
            return Err(DtlError::Protocol("commit number 0".into()));
        }
        if self.pieces.len() > MAX_PIECES {
            return Err(DtlError::Protocol(format!(
                "a commit carrying {} pieces is above the limit of {MAX_PIECES}",
                self.pieces.len()
            )));
        }
        let mut total = 0usize;
        for p in &self.pieces {
            let len = usize::try_from(p.len).unwrap_or(usize::MAX);
            total = total.saturating_add(len);
            Write {
                vdisk: self.vdisk.clone(),
                generation: self.generation,
                file: p.file.clone(),
                offset: p.offset,
            }
            .check(len)?;
        }
        if total > MAX_WRITE_BYTES {
            return Err(DtlError::Protocol(format!(
                "a commit carrying {total} bytes is above the limit of {MAX_WRITE_BYTES}"
            )));
        }
        if let Some(m) = &self.meta
            && m.name != self.vdisk
        {
            return Err(DtlError::Protocol(format!(
                "metadata of {:?} in a commit for {:?}",
                m.name, self.vdisk
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_round_trip_and_nothing_else_parses() {
        for kind in [HandoverFileKind::Container, HandoverFileKind::Tlog] {
            for seq in [0, 1, 0xdead_beef, u64::MAX] {
                assert_eq!(parse_file_name(&file_name(kind, seq)), Some((kind, seq)));
            }
        }
        for bad in [
            "",
            ".sco",
            "0000000000000001.sco.tmp",
            "../000000000001.sco",
            "000000000000001.sco",
            "00000000000000001.sco",
            "000000000000000g.tlog",
            "0000000000000001.SCO",
            "0000000000000001/.sco",
            "+000000000000001.sco",
            "state.json",
        ] {
            assert_eq!(parse_file_name(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn writes_out_of_bounds_are_refused() {
        let w = |offset| Write {
            vdisk: "d".into(),
            generation: 1,
            file: "0000000000000001.sco".into(),
            offset,
        };
        assert!(w(0).check(MAX_WRITE_BYTES).is_ok());
        assert!(w(0).check(MAX_WRITE_BYTES + 1).is_err());
        assert!(w(MAX_FILE_BYTES - 1).check(1).is_ok());
        assert!(w(MAX_FILE_BYTES).check(1).is_err());
        assert!(w(u64::MAX).check(2).is_err());
        let mut bad = w(0);
        bad.file = "x".into();
        assert!(bad.check(1).is_err());
    }
}
