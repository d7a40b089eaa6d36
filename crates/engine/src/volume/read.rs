//! The read path: one cluster ([`Volume::read_location`], every tier with
//! its checksum), runs of whole clusters in consecutive slots of one
//! container with one positioned read or one ranged GET
//! ([`Volume::read_run`]), whole requests ([`Volume::read_span`], also the
//! non-blocking read) and the blocking read with its retries
//! ([`Volume::read_bytes`]).
//!
//! Invariants:
//! - Every byte handed out passed its crc32c: local container, read cache
//!   and backend alike.
//! - `read_span` allocates nothing: resolutions are on the stack, runs are
//!   read straight into the caller's buffer.
//! - With `nowait` only memory and page-cache-resident local containers are
//!   read (`preadv2(RWF_NOWAIT)`); anything else declines.
//! - A checksum failure that raced an in-place rewrite (the `rewrites`
//!   seqlock moved) is read again, at last under the clusters' range lock.

use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;

use crate::checksum;
use crate::conv::usize_of;
use crate::error::{EngineError, EngineResult};
use crate::format::{CLUSTER_SIZE, CLUSTER_SIZE_U64, Location, slot_offset};
use crate::icache::{CHUNK_CLUSTERS, CHUNK_LEN};

use super::defrag;
use super::lookup::Resolved;
use super::{Volume, plain};

impl Volume {
    /// Reads one cluster at `loc` (owned by `self`) into `out`, checking its
    /// checksum on every path.
    pub(super) fn read_location(
        &self,
        loc: &Location,
        lba: u64,
        out: &mut [u8],
    ) -> EngineResult<()> {
        let out = &mut out[..CLUSTER_SIZE];
        if !plain(loc) {
            return Err(EngineError::Integrity {
                what: format!("cluster in container {:016x}", loc.container),
                detail: format!(
                    "unsupported stored length {} / flags {}",
                    loc.len, loc.flags
                ),
                lba: Some(lba),
            });
        }
        let mut local_bad = false;
        if let Some(f) = self.container_file(loc.container)
            && f.read_exact_at(out, slot_offset(loc.slot)).is_ok()
        {
            if checksum::crc32c(out) == loc.crc {
                self.counters.local_reads.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
            local_bad = true;
        }
        let loc_id = self.cache_loc_id(loc);
        if self.shared.cache.lookup(loc.hash, loc_id, loc.crc, out) {
            return Ok(());
        }
        let key = self.container_key(loc.container);
        let off = slot_offset(loc.slot);
        let data = match self
            .shared
            .backend
            .get_range(&key, off..off + CLUSTER_SIZE_U64)
        {
            Ok(d) => d,
            Err(EngineError::ObjectNotFound(k)) if local_bad => {
                return Err(EngineError::Integrity {
                    what: format!("cluster in local container {:016x}", loc.container),
                    detail: format!("checksum mismatch and {k} is not on the backend"),
                    lba: Some(lba),
                });
            }
            Err(e) => return Err(e),
        };
        self.counters.backend_reads.fetch_add(1, Ordering::Relaxed);
        if checksum::crc32c(&data) != loc.crc {
            return Err(EngineError::Integrity {
                what: format!("cluster {key} slot {}", loc.slot),
                detail: "crc32c mismatch on data from the backend".into(),
                lba: Some(lba),
            });
        }
        out.copy_from_slice(&data);
        self.shared.cache.insert(loc.hash, loc_id, out);
        Ok(())
    }

    /// Reads the current contents of `cluster` into `out` (zeros if
    /// unmapped). Retries once if the location moved under it (scrub).
    pub(super) fn read_cluster(&self, cluster: u64, out: &mut [u8]) -> EngineResult<()> {
        let lba = self.cluster_lba(cluster);
        for attempt in 0..2 {
            match self.resolve(cluster)? {
                None => {
                    out[..CLUSTER_SIZE].fill(0);
                    return Ok(());
                }
                Some(r) => match r.owner.read_location(&r.loc, lba, out) {
                    Err(EngineError::ObjectNotFound(_)) if attempt == 0 => continue,
                    other => return other,
                },
            }
        }
        Err(EngineError::Integrity {
            what: format!("cluster {cluster} of {}", self.name),
            detail: "its container is missing locally and on the backend".into(),
            lba: Some(lba),
        })
    }

    pub(super) fn cluster_lba(&self, cluster: u64) -> u64 {
        cluster * CLUSTER_SIZE_U64 / u64::from(self.block_size)
    }

    /// Reads one resolved cluster. Blocking: every tier, re-resolving once
    /// if the location vanished (scrub). `nowait`: only from a local
    /// container whose pages are cached; `Ok(false)` otherwise.
    pub(super) fn read_resolved(
        &self,
        cluster: u64,
        r: Resolved<'_>,
        out: &mut [u8],
        nowait: bool,
    ) -> EngineResult<bool> {
        let out = &mut out[..CLUSTER_SIZE];
        if nowait {
            return Ok(plain(&r.loc)
                && r.owner
                    .read_local_nowait(r.loc.container, slot_offset(r.loc.slot), out)
                && checksum::crc32c(out) == r.loc.crc);
        }
        match r
            .owner
            .read_location(&r.loc, self.cluster_lba(cluster), out)
        {
            Err(EngineError::ObjectNotFound(_)) => self.read_cluster(cluster, out)?,
            other => other?,
        }
        Ok(true)
    }

    /// `preadv2(RWF_NOWAIT)` of a whole span from a local container that is
    /// already open: false if the file is not open here, any page is not
    /// in the page cache, or anything else goes wrong (the blocking path
    /// then handles it).
    pub(super) fn read_local_nowait(&self, container: u64, offset: u64, out: &mut [u8]) -> bool {
        let Some(f) = self.files.lock().get(&container).cloned() else {
            return false;
        };
        // A miss, a short file or an error: the blocking path sorts it out.
        depot_block::pread_nowait(&f, out, offset).unwrap_or(false)
    }

    /// Reads `k` clusters that sit in consecutive slots of one container of
    /// `owner` with one positioned read straight into `span`, then checks
    /// each checksum; a cluster that fails (or a failed read) goes through
    /// [`Volume::read_resolved`] (blocking) or declines (`nowait`).
    pub(super) fn read_run(
        &self,
        first: u64,
        run: &[Option<Resolved<'_>>],
        span: &mut [u8],
        nowait: bool,
    ) -> EngineResult<bool> {
        let Some(Some(r0)) = run.first().copied() else {
            return Ok(false);
        };
        let off = slot_offset(r0.loc.slot);
        let ok = if nowait {
            r0.owner.read_local_nowait(r0.loc.container, off, span)
        } else {
            r0.owner
                .container_file(r0.loc.container)
                .is_some_and(|f| f.read_exact_at(span, off).is_ok())
        };
        if !ok && nowait {
            return Ok(false);
        }
        // Not on flash: one ranged GET for the whole run (unless its first
        // cluster is in the read cache) instead of one per cluster.
        let fetched = !ok && run.len() > 1 && r0.owner.fetch_run(&r0.loc, span);
        let mut good = 0u64;
        for (i, (r, chunk)) in run
            .iter()
            .zip(span.chunks_exact_mut(CLUSTER_SIZE))
            .enumerate()
        {
            let Some(r) = *r else {
                return Ok(false);
            };
            if (ok || fetched) && checksum::crc32c(chunk) == r.loc.crc {
                good += 1;
                if fetched {
                    r0.owner
                        .shared
                        .cache
                        .insert(r.loc.hash, r0.owner.cache_loc_id(&r.loc), chunk);
                }
            } else if nowait || !self.read_resolved(first + i as u64, r, chunk, false)? {
                return Ok(false);
            }
        }
        let counter = if ok {
            &r0.owner.counters.local_reads
        } else {
            &r0.owner.counters.backend_reads
        };
        counter.fetch_add(good, Ordering::Relaxed);
        Ok(true)
    }

    /// Read-cache location id of a cluster of this volume (dedup stats).
    pub(super) fn cache_loc_id(&self, loc: &Location) -> u64 {
        self.id ^ loc.container.rotate_left(20) ^ u64::from(loc.slot)
    }

    /// Fills `span` (whole clusters from `first`'s slot on) with one ranged
    /// GET of this volume's container. False, with nothing to trust in
    /// `span`, if the first cluster is in the read cache (the per-cluster
    /// path serves it cheaply) or the GET fails; checksums are the
    /// caller's.
    pub(super) fn fetch_run(&self, first: &Location, span: &mut [u8]) -> bool {
        let head = &mut span[..CLUSTER_SIZE];
        if self
            .shared
            .cache
            .lookup(first.hash, self.cache_loc_id(first), first.crc, head)
        {
            return false;
        }
        let key = self.container_key(first.container);
        let off = slot_offset(first.slot);
        match self
            .shared
            .backend
            .get_range(&key, off..off + span.len() as u64)
        {
            Ok(d) if d.len() == span.len() => {
                span.copy_from_slice(&d);
                true
            }
            _ => false,
        }
    }

    /// Reads `buf.len()` bytes at byte offset `off`. Clusters are resolved
    /// up to a chunk (256) at a time; runs of whole clusters in consecutive
    /// slots of one container are read with one positioned read into `buf`.
    /// With `nowait`, returns `Ok(false)` as soon as anything would wait
    /// (`buf` then holds garbage). `log`, if given, receives the locations
    /// of fragmented batches (relocation on read, `defrag`).
    pub(super) fn read_span(
        &self,
        off: u64,
        buf: &mut [u8],
        nowait: bool,
        mut log: Option<&mut defrag::ReadLog>,
    ) -> EngineResult<bool> {
        let len = buf.len() as u64;
        if len == 0 {
            return Ok(true);
        }
        let end = off + len;
        let first = off / CLUSTER_SIZE_U64;
        let last = (end - 1) / CLUSTER_SIZE_U64;
        let mut c = first;
        let mut total_runs = 0usize;
        while c <= last {
            let n = (last - c + 1).min(CHUNK_CLUSTERS) as usize;
            let mut runs = 0usize;
            // Resolutions of this batch, on the stack: no read allocates,
            // and a one-cluster read (the common small read) initialises
            // no batch array and skips the run machinery.
            let one: [Option<Resolved<'_>>; 1];
            let mut batch: [Option<Resolved<'_>>; CHUNK_LEN];
            let res: &[Option<Resolved<'_>>] = if n == 1 {
                let Some(r) = self.resolve_one(c, nowait)? else {
                    return Ok(false);
                };
                one = [r];
                &one
            } else {
                batch = [None; CHUNK_LEN];
                if !self.resolve_run(c, &mut batch[..n], nowait)? {
                    return Ok(false);
                }
                &batch[..n]
            };
            let mut i = 0;
            while i < n {
                let cl = c + i as u64;
                let cs = cl * CLUSTER_SIZE_U64;
                let lo = cs.max(off);
                let hi = (cs + CLUSTER_SIZE_U64).min(end);
                // Within `buf` (`end` is `off` + its length).
                let (dlo, dhi) = (usize_of(lo - off)?, usize_of(hi - off)?);
                let whole = lo == cs && hi == cs + CLUSTER_SIZE_U64;
                match res[i] {
                    None => {
                        buf[dlo..dhi].fill(0);
                        i += 1;
                    }
                    Some(r) if !whole => {
                        let mut tmp = [0u8; CLUSTER_SIZE];
                        if !self.read_resolved(cl, r, &mut tmp, nowait)? {
                            return Ok(false);
                        }
                        let from = usize_of(lo - cs)?;
                        buf[dlo..dhi].copy_from_slice(&tmp[from..from + (dhi - dlo)]);
                        runs += 1;
                        i += 1;
                    }
                    Some(r) => {
                        let mut k = 1usize;
                        while i + k < n && (cl + k as u64 + 1) * CLUSTER_SIZE_U64 <= end {
                            match res[i + k] {
                                Some(n2)
                                    if std::ptr::eq(n2.owner, r.owner)
                                        && plain(&n2.loc)
                                        && n2.loc.container == r.loc.container
                                        && u64::from(n2.loc.slot)
                                            == u64::from(r.loc.slot) + k as u64 =>
                                {
                                    k += 1;
                                }
                                _ => break,
                            }
                        }
                        let span = &mut buf[dlo..dlo + k * CLUSTER_SIZE];
                        let done = if plain(&r.loc) {
                            self.read_run(cl, &res[i..i + k], span, nowait)?
                        } else {
                            self.read_resolved(cl, r, span, nowait)?
                        };
                        if !done {
                            return Ok(false);
                        }
                        runs += 1;
                        i += k;
                    }
                }
            }
            if let Some(log) = log.as_deref_mut() {
                log.note(self, c, res, runs, |cl| {
                    cl * CLUSTER_SIZE_U64 >= off && (cl + 1) * CLUSTER_SIZE_U64 <= end
                });
            }
            total_runs += runs;
            c += n as u64;
        }
        self.counters
            .read_runs
            .fetch_add(total_runs as u64, Ordering::Relaxed);
        Ok(true)
    }

    pub(super) fn read_bytes(&self, off: u64, buf: &mut [u8]) -> EngineResult<()> {
        self.counters.reads.fetch_add(1, Ordering::Relaxed);
        let mut attempt = 0;
        loop {
            // A checksum failure while an in-place rewrite ran may be this
            // read seeing new bytes under an old mapping (or half of them):
            // read again. Without a rewrite in between it is real. After a
            // few tries the read excludes writers of its clusters.
            let seen = self.rewrites.load(Ordering::SeqCst);
            let mut log = defrag::ReadLog::for_read(buf.len());
            let _range = (attempt >= 4 && !buf.is_empty()).then(|| {
                let end = off + buf.len() as u64;
                self.ranges
                    .lock(off / CLUSTER_SIZE_U64, (end - 1) / CLUSTER_SIZE_U64)
            });
            match self.read_span(off, buf, false, log.as_mut()) {
                Ok(true) => {
                    drop(_range);
                    if let Some(log) = log {
                        self.relocate(off, buf, log);
                    }
                    return Ok(());
                }
                Ok(false) => return Err(EngineError::Failed("blocking read declined".into())),
                Err(EngineError::Integrity { .. })
                    if attempt < 5
                        && (seen % 2 == 1 || self.rewrites.load(Ordering::SeqCst) != seen) =>
                {
                    attempt += 1;
                    std::thread::yield_now();
                }
                Err(e) => return Err(e),
            }
        }
    }
}
