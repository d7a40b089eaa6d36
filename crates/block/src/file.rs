//! The "raw" vDisk kind: a LUN backed by a plain file (or block device node).
//!
//! Reads and writes are positioned (`pread`/`pwrite`), so any number of
//! threads share one descriptor without a lock. FUA and flush are
//! `fdatasync`. Unmap punches holes (`fallocate(PUNCH_HOLE|KEEP_SIZE)`), and
//! provisioning status comes from `SEEK_DATA`/`SEEK_HOLE`, so a sparse file is
//! a thin-provisioned LUN. On file systems without hole punching the device
//! reports itself thick.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::{BlockDevice, BlockError, BlockResult, Provisioning, blocks_in, check_range};

/// A file-backed block device.
#[derive(Debug)]
pub struct FileDevice {
    file: File,
    block_size: u32,
    num_blocks: AtomicU64,
    thin: bool,
    /// Cleared once the file system refuses `RWF_NOWAIT` buffered writes.
    write_nowait: AtomicBool,
}

impl FileDevice {
    /// Opens (creating if needed) `path` as a device of `size_bytes`, which
    /// must be a multiple of `block_size`. An existing larger file keeps its
    /// size; a smaller one is grown (sparsely).
    pub fn open(path: &Path, block_size: u32, size_bytes: u64) -> BlockResult<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let meta = file.metadata()?;
        let is_regular = meta.file_type().is_file();
        if is_regular && meta.len() < size_bytes {
            file.set_len(size_bytes)?;
        }
        let len = if is_regular {
            file.metadata()?.len()
        } else {
            size_bytes
        };
        let dev = FileDevice {
            block_size,
            num_blocks: AtomicU64::new(len / u64::from(block_size)),
            thin: is_regular,
            write_nowait: AtomicBool::new(true),
            file,
        };
        Ok(FileDevice {
            thin: dev.thin && dev.probe_punch_hole(),
            ..dev
        })
    }

    /// Grows the device to `size_bytes` (never shrinks).
    pub fn grow(&self, size_bytes: u64) -> BlockResult<()> {
        let current = self.num_blocks() * u64::from(self.block_size);
        if size_bytes > current {
            self.file.set_len(size_bytes)?;
            self.num_blocks
                .store(size_bytes / u64::from(self.block_size), Ordering::Release);
        }
        Ok(())
    }

    /// Whether the file system supports punching holes: probed with a
    /// one-byte hole just past the end of the file, which changes nothing.
    fn probe_punch_hole(&self) -> bool {
        let len = self.num_blocks() * u64::from(self.block_size);
        len > 0 && self.punch(len, 1).is_ok()
    }

    fn punch(&self, offset: u64, len: u64) -> std::io::Result<()> {
        let (Ok(off), Ok(l)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
            return Err(std::io::Error::from_raw_os_error(libc::EOVERFLOW));
        };
        // SAFETY: fallocate only reads its integer arguments; the descriptor is
        // owned by `self.file` and open for the duration of the call.
        #[allow(unsafe_code)]
        let rc = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                off,
                l,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    /// `lseek` with SEEK_DATA / SEEK_HOLE; `None` when there is no such
    /// region before the end of the file.
    fn seek(&self, offset: u64, whence: libc::c_int) -> std::io::Result<Option<u64>> {
        let Ok(off) = libc::off_t::try_from(offset) else {
            return Err(std::io::Error::from_raw_os_error(libc::EOVERFLOW));
        };
        // SAFETY: lseek only reads its integer arguments. It moves the shared
        // file offset, which nothing here uses (all I/O is positioned).
        #[allow(unsafe_code)]
        let rc = unsafe { libc::lseek(self.file.as_raw_fd(), off, whence) };
        if let Ok(pos) = u64::try_from(rc) {
            return Ok(Some(pos));
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::ENXIO) {
            Ok(None)
        } else {
            Err(err)
        }
    }

    fn byte_range(&self, lba: u64, blocks: u64) -> BlockResult<u64> {
        check_range(self.num_blocks(), lba, blocks)?;
        Ok(lba * u64::from(self.block_size))
    }
}

impl BlockDevice for FileDevice {
    fn block_size(&self) -> u32 {
        self.block_size
    }

    fn num_blocks(&self) -> u64 {
        self.num_blocks.load(Ordering::Acquire)
    }

    fn physical_block_exponent(&self) -> u8 {
        if self.block_size < 4096 {
            // At most 32 (trailing zeros of a u32).
            u8::try_from((4096 / self.block_size).trailing_zeros()).unwrap_or(u8::MAX)
        } else {
            0
        }
    }

    fn read(&self, lba: u64, buf: &mut [u8]) -> BlockResult<()> {
        let off = self.byte_range(lba, blocks_in(buf.len(), self.block_size)?)?;
        self.file.read_exact_at(buf, off)?;
        Ok(())
    }

    fn write(&self, lba: u64, data: &[u8], fua: bool) -> BlockResult<()> {
        self.write_vectored(lba, &[data], fua)
    }

    /// One positional write per piece: no gathering copy.
    fn write_vectored(&self, lba: u64, pieces: &[&[u8]], fua: bool) -> BlockResult<()> {
        let len = pieces.iter().map(|p| p.len()).sum();
        let mut off = self.byte_range(lba, blocks_in(len, self.block_size)?)?;
        for p in pieces {
            self.file.write_all_at(p, off).map_err(map_write_err)?;
            off += p.len() as u64;
        }
        if fua {
            self.file.sync_data()?;
        }
        Ok(())
    }

    fn flush(&self) -> BlockResult<()> {
        self.file.sync_data()?;
        Ok(())
    }

    fn try_read_nowait(&self, lba: u64, buf: &mut [u8]) -> BlockResult<bool> {
        let off = self.byte_range(lba, blocks_in(buf.len(), self.block_size)?)?;
        Ok(pread_nowait(&self.file, buf, off)?)
    }

    fn try_write_nowait(&self, lba: u64, data: &[u8]) -> BlockResult<bool> {
        self.try_write_vectored_nowait(lba, &[data])
    }

    /// `pwritev2(RWF_NOWAIT)` over all pieces' iovecs (64 per call):
    /// nothing written means `Ok(false)`; once part of it went in, the rest
    /// is finished the ordinary way (rare).
    fn try_write_vectored_nowait(&self, lba: u64, pieces: &[&[u8]]) -> BlockResult<bool> {
        if !self.write_nowait.load(Ordering::Relaxed) {
            return Ok(false);
        }
        let len = pieces.iter().map(|p| p.len()).sum();
        let off = self.byte_range(lba, blocks_in(len, self.block_size)?)?;
        let first = loop {
            match pwritev_nowait(&self.file, pieces, off) {
                Ok(n) => break n,
                Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                    // This file system cannot do non-blocking buffered writes.
                    self.write_nowait.store(false, Ordering::Relaxed);
                    return Ok(false);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(map_write_err(e)),
            }
        };
        if first == 0 {
            return Ok(false);
        }
        // Part of it went in: finish the rest the ordinary way (rare).
        let mut at = off + first as u64;
        for rest in unwritten(pieces, first) {
            self.file.write_all_at(rest, at).map_err(map_write_err)?;
            at += rest.len() as u64;
        }
        Ok(true)
    }

    fn thin_provisioned(&self) -> bool {
        self.thin
    }

    fn unmap(&self, lba: u64, blocks: u64) -> BlockResult<()> {
        if !self.thin {
            return Err(BlockError::Unsupported("unmap on a thick raw device"));
        }
        let off = self.byte_range(lba, blocks)?;
        if blocks == 0 {
            return Ok(());
        }
        self.punch(off, blocks * u64::from(self.block_size))?;
        Ok(())
    }

    fn provisioning(&self, lba: u64, max_blocks: u64) -> BlockResult<(Provisioning, u64)> {
        let total = self.num_blocks();
        check_range(total, lba, 1)?;
        let bs = u64::from(self.block_size);
        let limit = max_blocks.clamp(1, total - lba);
        let start = lba * bs;
        let end = (lba + limit) * bs;
        if !self.thin {
            return Ok((Provisioning::Mapped, limit));
        }
        // The block at `lba` is mapped if the next data starts at or before it.
        let data = self.seek(start, libc::SEEK_DATA)?;
        let (state, run_end) = match data {
            Some(d) if d <= start => {
                let hole = self.seek(start, libc::SEEK_HOLE)?.unwrap_or(end);
                (Provisioning::Mapped, hole.div_ceil(bs) * bs)
            }
            Some(d) => (Provisioning::Deallocated, d / bs * bs),
            None => (Provisioning::Deallocated, end),
        };
        let run = (run_end.min(end).saturating_sub(start) / bs).max(1);
        Ok((state, run))
    }
}

/// Fills `buf` from `file` at `offset` only from the page cache
/// (`preadv2` with `RWF_NOWAIT`): `Ok(false)` as soon as a page is not
/// cached (the caller repeats the read where it may block), an
/// `UnexpectedEof` error past the end of the file.
pub fn pread_nowait(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<bool> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        let iov = libc::iovec {
            iov_base: rest.as_mut_ptr().cast(),
            iov_len: rest.len(),
        };
        let off = nowait_offset(offset, done)?;
        // SAFETY: `iov` points into `rest`, a live buffer mutably borrowed
        // for the whole call, with its exact length; the descriptor belongs
        // to `file`, borrowed (so open) for the call.
        #[allow(unsafe_code)]
        let rc = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, off, libc::RWF_NOWAIT) };
        match usize::try_from(rc) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => done += n,
            Err(_) => {
                let e = std::io::Error::last_os_error();
                match e.kind() {
                    std::io::ErrorKind::WouldBlock => return Ok(false),
                    std::io::ErrorKind::Interrupted => {}
                    _ => return Err(e),
                }
            }
        }
    }
    Ok(true)
}

/// Most iovecs handed to one `pwritev2` (an array on the stack; well
/// under the kernel's `UIO_MAXIOV` of 1024).
const IOV_BATCH: usize = 64;

/// Writes the concatenation of `pieces` at `offset` with `pwritev2` and
/// `RWF_NOWAIT` (see [`write_batches`]) and returns how many bytes went
/// in. Errors: `EAGAIN` instead of waiting on the writeback throttle,
/// `EOPNOTSUPP` where the file system cannot do it for buffered writes.
fn pwritev_nowait(file: &File, pieces: &[&[u8]], offset: u64) -> std::io::Result<usize> {
    write_batches(pieces, offset, |iov, off| {
        // At most IOV_BATCH entries, so this never fails.
        let count = libc::c_int::try_from(iov.len())
            .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: the kernel only reads through `iov`, whose entries point
        // into `pieces` (borrowed for the whole call) with their exact
        // lengths; the descriptor belongs to `file`, borrowed (so open) for
        // the call.
        #[allow(unsafe_code)]
        let rc =
            unsafe { libc::pwritev2(file.as_raw_fd(), iov.as_ptr(), count, off, libc::RWF_NOWAIT) };
        // Negative (-1) is an error, in errno.
        usize::try_from(rc).map_err(|_| std::io::Error::last_os_error())
    })
}

/// Hands the concatenation of `pieces` at `offset` to `write` (one
/// vectored positional write call: iovecs and file offset in, bytes
/// written out), [`IOV_BATCH`] pieces per call, and returns how many bytes
/// went in. Stops at the first call that writes less than it was given;
/// an error is returned only when nothing was written yet (`EINTR`
/// included: the caller retries).
fn write_batches(
    pieces: &[&[u8]],
    offset: u64,
    mut write: impl FnMut(&[libc::iovec], libc::off_t) -> std::io::Result<usize>,
) -> std::io::Result<usize> {
    let empty = libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    };
    let mut done = 0usize;
    for batch in pieces.chunks(IOV_BATCH) {
        let mut iov = [empty; IOV_BATCH];
        let mut want = 0usize;
        for (v, p) in iov.iter_mut().zip(batch) {
            *v = libc::iovec {
                iov_base: p.as_ptr().cast_mut().cast(),
                iov_len: p.len(),
            };
            want += p.len();
        }
        let n = match write(&iov[..batch.len()], nowait_offset(offset, done)?) {
            Ok(n) => n,
            Err(e) if done == 0 => return Err(e),
            Err(_) => break,
        };
        done += n;
        if n < want {
            break;
        }
    }
    Ok(done)
}

/// What is left of `pieces` once their first `written` bytes went in.
fn unwritten<'a>(pieces: &[&'a [u8]], written: usize) -> impl Iterator<Item = &'a [u8]> {
    let mut skip = written;
    pieces.iter().filter_map(move |p| {
        let k = skip.min(p.len());
        skip -= k;
        (k < p.len()).then(|| &p[k..])
    })
}

fn nowait_offset(offset: u64, done: usize) -> std::io::Result<libc::off_t> {
    offset
        .checked_add(done as u64)
        .and_then(|o| libc::off_t::try_from(o).ok())
        .ok_or_else(|| std::io::Error::from_raw_os_error(libc::EOVERFLOW))
}

fn map_write_err(e: std::io::Error) -> BlockError {
    if e.raw_os_error() == Some(libc::ENOSPC) {
        BlockError::NoSpace(e.to_string())
    } else {
        BlockError::Io(e)
    }
}

#[cfg(test)]
// Test data patterns and offsets truncate on purpose or are small.
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
mod tests {
    use super::*;

    #[test]
    fn file_device_round_trip_fua_and_holes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.raw");
        let d = FileDevice::open(&path, 512, 1 << 20).unwrap();
        assert_eq!(d.num_blocks(), 2048);
        d.write(8, &[0xabu8; 4096], true).unwrap();
        let mut back = vec![0u8; 4096];
        d.read(8, &mut back).unwrap();
        assert!(back.iter().all(|b| *b == 0xab));
        assert!(d.read(2047, &mut [0u8; 1024]).is_err());
        if d.thin_provisioned() {
            assert_eq!(d.provisioning(8, 100).unwrap().0, Provisioning::Mapped);
            assert_eq!(
                d.provisioning(2040, 100).unwrap(),
                (Provisioning::Deallocated, 8)
            );
            d.unmap(8, 8).unwrap();
            d.read(8, &mut back).unwrap();
            assert!(back.iter().all(|b| *b == 0));
            assert_eq!(
                d.provisioning(8, 8).unwrap(),
                (Provisioning::Deallocated, 8)
            );
        }
        // The page cache holds what was just written: the non-blocking
        // paths either complete with the same bytes or decline.
        d.write(16, &[0x5au8; 4096], false).unwrap();
        let mut hot = vec![0u8; 4096];
        if d.try_read_nowait(16, &mut hot).unwrap() {
            assert!(hot.iter().all(|b| *b == 0x5a));
        }
        if d.try_write_nowait(24, &[0x77u8; 1024]).unwrap() {
            d.read(24, &mut back[..1024]).unwrap();
            assert!(back[..1024].iter().all(|b| *b == 0x77));
        }
        assert!(d.try_read_nowait(2047, &mut [0u8; 1024]).is_err());
        d.grow(2 << 20).unwrap();
        assert_eq!(d.num_blocks(), 4096);
        drop(d);
        let again = FileDevice::open(&path, 512, 1 << 20).unwrap();
        assert_eq!(again.num_blocks(), 4096);
    }

    /// Pieces cut anywhere (empty ones, block boundaries crossed, more
    /// than one `pwritev2` batch) land as their concatenation, or nothing
    /// is written and the call declines.
    #[test]
    fn vectored_nowait_write_lands_as_the_concatenation() {
        let dir = tempfile::tempdir().unwrap();
        let d = FileDevice::open(&dir.path().join("disk.raw"), 512, 1 << 20).unwrap();
        // Make the pages resident, so the non-blocking write can go in.
        d.write(0, &vec![0u8; 256 << 10], false).unwrap();
        let data: Vec<u8> = (0..3 * 512).map(|i| (i % 251) as u8).collect();
        let pieces: [&[u8]; 4] = [&data[..100], &[], &data[100..1000], &data[1000..]];
        if d.try_write_vectored_nowait(4, &pieces).unwrap() {
            let mut back = vec![0u8; data.len()];
            d.read(4, &mut back).unwrap();
            assert_eq!(back, data);
        }
        // 200 pieces of 256 bytes: several batches of iovecs.
        let big: Vec<u8> = (0..200 * 256).map(|i| (i % 241) as u8).collect();
        let many: Vec<&[u8]> = big.chunks(256).collect();
        assert!(many.len() > IOV_BATCH);
        if d.try_write_vectored_nowait(16, &many).unwrap() {
            let mut back = vec![0u8; big.len()];
            d.read(16, &mut back).unwrap();
            assert_eq!(back, big);
        }
        // The single-buffer form is the one-piece case of the same path.
        if d.try_write_nowait(200, &data).unwrap() {
            let mut back = vec![0u8; data.len()];
            d.read(200, &mut back).unwrap();
            assert_eq!(back, data);
        }
        // Not whole blocks, or past the end: never completed (refused, or
        // declined where the file system cannot write without waiting).
        let short: [&[u8]; 2] = [&data[..100], &data[..100]];
        assert!(!matches!(d.try_write_vectored_nowait(0, &short), Ok(true)));
        let past: [&[u8]; 2] = [&data[..512], &data[..512]];
        assert!(!matches!(
            d.try_write_vectored_nowait(2047, &past),
            Ok(true)
        ));
    }

    /// The batching behind the non-blocking vectored write, against a
    /// scripted write call: iovecs in order and at the right offsets, a
    /// stop at the first short or failed call, an error only before any
    /// byte went in.
    #[test]
    fn write_batches_stop_at_a_short_or_failed_call() {
        let data: Vec<u8> = (0..130 * 10).map(|i| i as u8).collect();
        let pieces: Vec<&[u8]> = data.chunks(10).collect();
        let eagain = || std::io::Error::from_raw_os_error(libc::EAGAIN);
        // (iovecs, offset) of each call; the script answers call i.
        let run = |script: &[Result<usize, i32>]| {
            let mut calls = Vec::new();
            let r = write_batches(&pieces, 1000, |iov, off| {
                let seen: Vec<u8> = iov
                    .iter()
                    .flat_map(|v| {
                        // SAFETY: the iovecs point into `data`, alive here.
                        #[allow(unsafe_code)]
                        unsafe { std::slice::from_raw_parts(v.iov_base as *const u8, v.iov_len) }
                            .to_vec()
                    })
                    .collect();
                let at = (off - 1000) as usize;
                assert_eq!(&seen[..], &data[at..at + seen.len()]);
                calls.push((iov.len(), off));
                match script[calls.len() - 1] {
                    Ok(n) => Ok(n),
                    Err(code) => Err(std::io::Error::from_raw_os_error(code)),
                }
            });
            (r.map_err(|e| e.raw_os_error()), calls)
        };
        let (r, calls) = run(&[Ok(640), Ok(640), Ok(20)]);
        assert_eq!(r, Ok(1300));
        assert_eq!(calls, vec![(64, 1000), (64, 1640), (2, 2280)]);
        let (r, calls) = run(&[Ok(640), Err(libc::EAGAIN)]);
        assert_eq!(r, Ok(640));
        assert_eq!(calls.len(), 2);
        let (r, calls) = run(&[Ok(300)]);
        assert_eq!(r, Ok(300));
        assert_eq!(calls.len(), 1);
        let (r, _) = run(&[Err(libc::EOPNOTSUPP)]);
        assert_eq!(r, Err(Some(libc::EOPNOTSUPP)));
        assert_eq!(
            write_batches(&[], 0, |_, _| Err(eagain())).unwrap(),
            0,
            "nothing to write: no call"
        );
    }

    #[test]
    fn unwritten_skips_what_went_in() {
        let pieces: [&[u8]; 4] = [b"abc", b"", b"defg", b"h"];
        let rest = |n| unwritten(&pieces, n).collect::<Vec<_>>();
        assert_eq!(rest(0), vec![&b"abc"[..], b"defg", b"h"]);
        assert_eq!(rest(2), vec![&b"c"[..], b"defg", b"h"]);
        assert_eq!(rest(3), vec![&b"defg"[..], b"h"]);
        assert_eq!(rest(5), vec![&b"fg"[..], b"h"]);
        assert!(rest(8).is_empty());
    }
}
