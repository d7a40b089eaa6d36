//! Reading an owner's window files for its mirror: which byte ranges a
//! round copies, the files' lengths, and reads that stop short at the end
//! of a file (a file shrinks only when it was shipped and dropped).
//!
//! Invariants:
//! - A round copies containers before tlogs (the engine's
//!   `volume::mirror` docs), whole clusters of containers and whole
//!   records of tlogs.
//! - Only the files of a batch's last segment (the open tlog and its
//!   containers) can still grow. A file of an earlier segment was sealed
//!   (its tlog buffer flushed, its last append returned) under the writer
//!   lock before the grab of a batch that lists a later segment, and a
//!   round runs after its batch's grab: such a file is measured once and
//!   its length kept. Rewrites in place change no length; the batch names
//!   them.
//! - Reads never go past what the file holds; an interrupted read is
//!   retried, any other error is the caller's.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use depot_engine::format::{CLUSTER_SIZE, TLOG_HEADER_SIZE, TLOG_RECORD_SIZE};
use depot_engine::{HandoverFileKind, WindowSegment};

use crate::error::{DtlError, DtlResult};
use crate::proto::file_name;
use crate::seam::Locate;

/// The window's files on this router's flash as a mirror's rounds see
/// them: each opened once, each sealed one measured once.
pub(crate) struct Files {
    locate: Locate,
    open: HashMap<String, Arc<File>>,
    /// Lengths of files that no longer grow (module docs).
    sealed: HashMap<String, u64>,
}

impl Files {
    pub(crate) fn new(locate: Locate) -> Self {
        Files {
            locate,
            open: HashMap::new(),
            sealed: HashMap::new(),
        }
    }

    /// What a round copies of `segments` (the batch's window, oldest
    /// first), given the container ranges rewritten in place since the
    /// last round and what the holder has of each file (`sent`): the
    /// ranges, containers first, and each file's new `sent` mark.
    pub(crate) fn plan(
        &mut self,
        segments: &[WindowSegment],
        rewrites: &[(u64, u64, u64)],
        sent: &HashMap<String, u64>,
    ) -> (Vec<Range>, Vec<(String, u64)>) {
        let mut ranges = Vec::new();
        let mut marks = Vec::new();
        let last = segments.len().saturating_sub(1);
        for (i, seg) in segments.iter().enumerate() {
            for &c in &seg.containers {
                let kind = HandoverFileKind::Container;
                // Gone: shipped and dropped meanwhile (the commit of a
                // later batch will not list it).
                let Some((name, file)) = self.file(kind, c) else {
                    continue;
                };
                let done = sent.get(&name).copied().unwrap_or(0);
                for &(_, off, len) in rewrites.iter().filter(|r| r.0 == c) {
                    push(&mut ranges, &name, &file, off, (off + len).min(done));
                }
                let len = self.length(&name, &file, i == last);
                let end = len / CLUSTER_SIZE as u64 * CLUSTER_SIZE as u64;
                if push(&mut ranges, &name, &file, done, end) {
                    marks.push((name, end));
                }
            }
        }
        for (i, seg) in segments.iter().enumerate() {
            let Some((name, file)) = self.file(HandoverFileKind::Tlog, seg.tlog) else {
                continue;
            };
            let done = sent.get(&name).copied().unwrap_or(0);
            let len = self.length(&name, &file, i == last);
            let header = TLOG_HEADER_SIZE as u64;
            let end = if len < header {
                0
            } else {
                header + (len - header) / TLOG_RECORD_SIZE as u64 * TLOG_RECORD_SIZE as u64
            };
            if push(&mut ranges, &name, &file, done, end) {
                marks.push((name, end));
            }
        }
        (ranges, marks)
    }

    /// Forgets every file not named in `keep` (left the window).
    pub(crate) fn retain(&mut self, keep: &HashSet<String>) {
        self.open.retain(|n, _| keep.contains(n));
        self.sealed.retain(|n, _| keep.contains(n));
    }

    /// Window file `seq` of `kind` and its name, opened through `locate`
    /// the first time; `None` if it is gone (shipped and dropped).
    fn file(&mut self, kind: HandoverFileKind, seq: u64) -> Option<(String, Arc<File>)> {
        let name = file_name(kind, seq);
        if let Some(f) = self.open.get(&name) {
            return Some((name, f.clone()));
        }
        let f = Arc::new(File::open((self.locate)(kind, seq)).ok()?);
        self.open.insert(name.clone(), f.clone());
        Some((name, f))
    }

    /// The length of `file`, kept once it is sealed (`open`: it is in the
    /// batch's last segment and may still grow).
    fn length(&mut self, name: &str, file: &File, open: bool) -> u64 {
        if let Some(&len) = self.sealed.get(name) {
            return len;
        }
        let len = file_len(file);
        if !open {
            self.sealed.insert(name.to_string(), len);
        }
        len
    }
}

/// Adds bytes `from..to` of `file` to `ranges` if there are any.
fn push(ranges: &mut Vec<Range>, name: &str, file: &Arc<File>, from: u64, to: u64) -> bool {
    if from >= to {
        return false;
    }
    ranges.push(Range {
        name: name.to_string(),
        file: file.clone(),
        from,
        to,
    });
    true
}

/// Bytes `from..to` of a window file to copy.
pub(crate) struct Range {
    pub(crate) name: String,
    pub(crate) file: Arc<File>,
    pub(crate) from: u64,
    pub(crate) to: u64,
}

/// The file's length (0 if it cannot be read).
pub(crate) fn file_len(f: &File) -> u64 {
    f.metadata().map_or(0, |m| m.len())
}

/// Reads up to `buf.len()` bytes at `off` (short at the end of the file).
pub(crate) fn read_at_most(f: &File, buf: &mut [u8], off: u64) -> DtlResult<usize> {
    let mut got = 0;
    while got < buf.len() {
        match f.read_at(&mut buf[got..], off + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(DtlError::io("reading a window file", e)),
        }
    }
    Ok(got)
}
