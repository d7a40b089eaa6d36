//! Reading an owner's window files for its mirror: the byte ranges a
//! round copies, a file's length, and reads that stop short at the end of
//! a file (a file shrinks only when it was shipped and dropped).
//!
//! Invariants: reads never go past what the file holds; an interrupted
//! read is retried, any other error is the caller's.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use crate::error::{DtlError, DtlResult};

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
