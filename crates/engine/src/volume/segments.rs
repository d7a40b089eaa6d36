//! A volume's flash files: containers (`containers/<seq>.sco`) and tlogs
//! (`tlogs/<seq>.tlog`) in the volume's directory, named by 16 hex digits.
//! Owns the open container and tlog, sealed [`Segment`]s waiting to ship,
//! the file helpers (create with header, list, directory sync), the
//! vectored positioned write every append goes through
//! ([`write_all_parts_at`]), page-cache hints, the cache of open container
//! handles and the local containers scrub writes and drops.
//!
//! Invariants:
//! - A container or tlog name is never reused (sequence numbers only grow;
//!   containers are created with `create_new`).
//! - A file is created with its header before any record or slot is
//!   written to it.
//! - `write_all_parts_at` writes the concatenation of its parts with one
//!   `pwritev` per `IOV_MAX` parts, allocating nothing for up to
//!   [`INLINE_PARTS`] parts.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use smallvec::SmallVec;

use crate::error::{EngineError, EngineResult};
use crate::format::{TLOG_HEADER_SIZE, TLOG_RECORD_SIZE};

use super::Volume;

/// The container appends go to (one per volume at a time).
pub(super) struct OpenContainer {
    pub(super) seq: u64,
    pub(super) file: Arc<File>,
    pub(super) next_slot: u32,
    pub(super) opened: Instant,
}

/// The tlog records go to: `buf` holds records not yet written to `file`,
/// which has `on_file` records after its header.
pub(super) struct OpenTlog {
    pub(super) opened: Instant,
    pub(super) seq: u64,
    pub(super) generation: u32,
    pub(super) file: Arc<File>,
    pub(super) on_file: u64,
    pub(super) buf: Vec<u8>,
    pub(super) containers: Vec<u64>,
}

impl OpenTlog {
    /// Writes the buffered records to the file (not synced).
    pub(super) fn flush_buf(&mut self) -> EngineResult<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let off = TLOG_HEADER_SIZE as u64 + self.on_file * TLOG_RECORD_SIZE as u64;
        self.file
            .write_all_at(&self.buf, off)
            .map_err(|e| EngineError::io("appending to the tlog", e))?;
        self.on_file += (self.buf.len() / TLOG_RECORD_SIZE) as u64;
        self.buf.clear();
        Ok(())
    }
}

/// A sealed tlog and the containers it references, waiting to ship.
#[derive(Debug, Clone)]
pub(super) struct Segment {
    pub(super) tlog: u64,
    pub(super) generation: u32,
    pub(super) containers: Vec<u64>,
    pub(super) bytes: u64,
    /// When its tlog was opened: shipping waits for this age (or for
    /// write-buffer pressure) so recent data can still be rewritten in place.
    pub(super) opened: Instant,
    /// The sealed tlog's writable handle while its containers may still be
    /// rewritten in place (sealed by this incarnation, not yet frozen by a
    /// ship); in-place records of those containers are appended to it.
    pub(super) tlog_file: Option<Arc<File>>,
    /// Records in the tlog file.
    pub(super) records: u64,
}

/// Makes `dir`'s entries durable (`fsync` of the directory).
pub(super) fn sync_dir(dir: &Path) -> EngineResult<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| EngineError::io(format!("syncing directory {}", dir.display()), e))
}

/// Parses `0123abcd...` file names (16 hex digits + extension).
fn parse_seq(name: &str, ext: &str) -> Option<u64> {
    let stem = name.strip_suffix(ext)?;
    if stem.len() != 16 {
        return None;
    }
    u64::from_str_radix(stem, 16).ok()
}

/// Sequence numbers of the files in `dir` named `<16 hex digits><ext>`,
/// ascending; none if `dir` does not exist.
pub(super) fn list_seqs(dir: &Path, ext: &str) -> EngineResult<Vec<u64>> {
    let mut out = Vec::new();
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(EngineError::io(format!("listing {}", dir.display()), e)),
    };
    for ent in rd {
        let ent = ent.map_err(|e| EngineError::io("listing the volume directory", e))?;
        if let Some(s) = ent.file_name().to_str().and_then(|n| parse_seq(n, ext)) {
            out.push(s);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// Bytes of an open container handed to writeback at a time.
pub(super) const WRITEBACK_STEP: u64 = 4 << 20;

/// A page-cache hint for a byte range of a container file.
#[derive(Clone, Copy)]
pub(super) enum RangeHint {
    /// Start writing the range back (`sync_file_range(SYNC_FILE_RANGE_WRITE)`):
    /// asynchronous, durability unchanged.
    StartWriteback,
    /// Drop the range from the page cache (`posix_fadvise(POSIX_FADV_DONTNEED)`):
    /// clean pages are freed, dirty ones stay.
    DropCached,
}

/// Gives the kernel `hint` for `len` bytes at `offset` of `file`. Errors
/// are ignored: these are hints, and the next fdatasync reports real ones.
pub(super) fn range_hint(file: &File, offset: u64, len: u64, hint: RangeHint) {
    use std::os::fd::AsRawFd;
    let (Ok(off), Ok(n)) = (
        libc::off64_t::try_from(offset),
        libc::off64_t::try_from(len),
    ) else {
        return;
    };
    let fd = file.as_raw_fd();
    // SAFETY: both calls only read their integer arguments; the descriptor
    // belongs to `file`, borrowed (so open) for the call.
    #[allow(unsafe_code)]
    unsafe {
        match hint {
            RangeHint::StartWriteback => {
                libc::sync_file_range(fd, off, n, libc::SYNC_FILE_RANGE_WRITE);
            }
            RangeHint::DropCached => {
                libc::posix_fadvise(fd, off, n, libc::POSIX_FADV_DONTNEED);
            }
        }
    }
}

/// Writes the concatenation of `parts` at `offset` of `file`, with one
/// `pwritev` unless the kernel writes short. One write per append matters
/// beyond the syscall: the page cache sizes a new folio by the write that
/// creates it, so a 1 MiB append written as four 256 KiB pieces left four
/// times as many small folios, and every later cache-hot read of them
/// walked a deeper page-cache tree (docs/BENCHMARKS.md).
/// No heap allocation for up to [`INLINE_PARTS`] parts (a 4 KiB append is
/// one).
pub(super) fn write_all_parts_at(
    file: &File,
    parts: &[&[u8]],
    mut offset: u64,
) -> std::io::Result<()> {
    use std::io::{Error, ErrorKind, IoSlice};
    use std::os::fd::AsRawFd;
    let mut slices: SmallVec<[IoSlice<'_>; INLINE_PARTS]> = parts
        .iter()
        .filter(|p| !p.is_empty())
        .map(|p| IoSlice::new(p))
        .collect();
    let mut bufs = &mut slices[..];
    while !bufs.is_empty() {
        let count = bufs.len().min(IOV_MAX);
        let iovcnt = libc::c_int::try_from(count)
            .map_err(|_| Error::new(ErrorKind::InvalidInput, "too many buffers"))?;
        let off = libc::off64_t::try_from(offset)
            .map_err(|_| Error::new(ErrorKind::InvalidInput, "file offset out of range"))?;
        // SAFETY: `IoSlice` is ABI-compatible with `iovec` on Unix, and the
        // `count` slices it points at are borrowed for the call; the kernel
        // only reads them. The descriptor belongs to `file`, borrowed (so
        // open) for the call.
        #[allow(unsafe_code)]
        let n = unsafe {
            libc::pwritev64(
                file.as_raw_fd(),
                bufs.as_ptr().cast::<libc::iovec>(),
                iovcnt,
                off,
            )
        };
        match usize::try_from(n) {
            Ok(0) => return Err(Error::from(ErrorKind::WriteZero)),
            Ok(n) => {
                offset += n as u64;
                IoSlice::advance_slices(&mut bufs, n);
            }
            Err(_) => {
                let e = Error::last_os_error();
                if e.kind() != ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    Ok(())
}

/// Most iovecs one `pwritev` takes (Linux's `UIO_MAXIOV`).
const IOV_MAX: usize = 1024;

/// Parts of one append kept on the stack (a 1 MiB command arrives in four
/// Data-Out segments from libiscsi and open-iscsi).
pub(super) const INLINE_PARTS: usize = 8;

/// Takes the first `n` bytes (fewer if fewer are left) off the front of
/// `head` followed by `parts`, as slices in order. `head` is the
/// unconsumed rest of a part already taken from `parts`; both are advanced
/// past what is returned.
pub(super) fn take_front<'a>(
    parts: &mut &[&'a [u8]],
    head: &mut &'a [u8],
    mut n: usize,
) -> SmallVec<[&'a [u8]; INLINE_PARTS]> {
    let mut out = SmallVec::new();
    while n > 0 {
        if head.is_empty() {
            let Some((first, rest)) = parts.split_first() else {
                break;
            };
            *head = first;
            *parts = rest;
            continue;
        }
        let k = n.min(head.len());
        let (now, later) = head.split_at(k);
        out.push(now);
        *head = later;
        n -= k;
    }
    out
}

/// Creates a tlog or container file with `opts` (which say how an existing
/// name is treated) and writes its header.
pub(super) fn create_segment_file(
    opts: &OpenOptions,
    path: &Path,
    header: &[u8],
    what: &str,
) -> EngineResult<File> {
    let file = opts
        .clone()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| EngineError::io(format!("creating a {what}"), e))?;
    file.write_all_at(header, 0)
        .map_err(|e| EngineError::io(format!("writing a {what} header"), e))?;
    Ok(file)
}

impl Volume {
    pub(super) fn container_path(&self, seq: u64) -> PathBuf {
        self.dir.join("containers").join(format!("{seq:016x}.sco"))
    }
    pub(super) fn tlog_path(&self, seq: u64) -> PathBuf {
        self.dir.join("tlogs").join(format!("{seq:016x}.tlog"))
    }

    /// An open handle on container `seq`: the flash file, or, once that was
    /// evicted, the object's file in a local-directory backend (the same
    /// immutable bytes, often the same inode). Cached in `files`.
    pub(super) fn container_file(&self, seq: u64) -> Option<Arc<File>> {
        if let Some(f) = self.files.lock().get(&seq) {
            return Some(f.clone());
        }
        let f = match File::open(self.container_path(seq)) {
            Ok(f) => f,
            Err(_) if self.shared.cfg.local_backend_shortcuts => {
                let key = self.container_key(seq);
                File::open(self.shared.backend.local_path(&key)?).ok()?
            }
            Err(_) => return None,
        };
        let f = Arc::new(f);
        let mut files = self.files.lock();
        if files.len() >= 256 {
            files.clear();
        }
        files.insert(seq, f.clone());
        Some(f)
    }

    /// Allocates a container sequence number (scrub output).
    pub(crate) fn alloc_container(&self) -> u64 {
        let mut w = self.writer.lock();
        let s = w.next_container;
        w.next_container += 1;
        s
    }

    /// Registers a scrub-written container as a shipped local container.
    pub(crate) fn adopt_local_container(&self, seq: u64, data: &[u8]) -> EngineResult<()> {
        let path = self.container_path(seq);
        // A fresh sequence number: never overwrite an existing file.
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .and_then(|mut f| std::io::Write::write_all(&mut f, data))
            .map_err(|e| EngineError::io("writing a scrubbed container", e))?;
        let mut w = self.writer.lock();
        w.shipped_local.push_back((seq, data.len() as u64));
        w.shipped_local_bytes += data.len() as u64;
        Ok(())
    }

    /// Removes a local container file (after scrub released it).
    pub(crate) fn drop_local_container(&self, seq: u64) {
        self.files.lock().remove(&seq);
        let mut w = self.writer.lock();
        if let Some(pos) = w.shipped_local.iter().position(|(c, _)| *c == seq)
            && let Some((_, len)) = w.shipped_local.remove(pos)
        {
            w.shipped_local_bytes -= len;
        }
        drop(w);
        let _ = std::fs::remove_file(self.container_path(seq));
    }

    /// Reads a whole container (local file, else backend).
    pub(crate) fn fetch_container(&self, seq: u64) -> EngineResult<Bytes> {
        match std::fs::read(self.container_path(seq)) {
            Ok(d) => Ok(Bytes::from(d)),
            Err(_) => self.shared.backend.get(&self.container_key(seq)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn take_front_cuts_parts_at_any_byte() {
        let (a, b, c) = (&[1u8, 2, 3][..], &[][..], &[4u8, 5, 6, 7, 8][..]);
        let all = [a, b, c];
        let (mut rest, mut head): (&[&[u8]], &[u8]) = (&all, &[]);
        let mut take = |n| take_front(&mut rest, &mut head, n).to_vec();
        assert_eq!(take(4), vec![a, &c[..1]]);
        assert_eq!(take(0), Vec::<&[u8]>::new());
        assert_eq!(take(2), vec![&c[1..3]]);
        // Asking for more than is left takes what is left.
        assert_eq!(take(9), vec![&c[3..]]);
        assert!(rest.is_empty() && head.is_empty());
    }

    #[test]
    fn parts_are_written_as_their_concatenation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = File::create(&path).unwrap();
        let data: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
        // More parts than one pwritev takes, some empty.
        let parts: Vec<&[u8]> = data.chunks(2).flat_map(|c| [c, &[][..]]).collect();
        assert!(parts.len() > IOV_MAX);
        write_all_parts_at(&file, &parts, 100).unwrap();
        let back = std::fs::read(&path).unwrap();
        assert_eq!(back.len(), 3100);
        assert!(back[..100].iter().all(|&b| b == 0));
        assert_eq!(&back[100..], &data[..]);
    }

    #[test]
    fn sequence_file_names_parse_back() {
        assert_eq!(parse_seq("000000000000002a.sco", ".sco"), Some(0x2a));
        assert_eq!(parse_seq("000000000000002a.tlog", ".sco"), None);
        assert_eq!(parse_seq("2a.sco", ".sco"), None);
        assert_eq!(parse_seq("000000000000002a.tlog.tmp", ".tlog"), None);
        assert_eq!(
            parse_seq("000000000000002a.tlog.tmp", ".tlog.tmp"),
            Some(0x2a)
        );
    }
}
