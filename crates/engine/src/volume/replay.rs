//! Building a volume ([`Volume::load`]) and its local restart: replay of the
//! local tlogs from the replay marker, slot by slot
//! ([`Volume::check_slots`]), which also rebuilds the ship queue.
//!
//! Invariants:
//! - Replay trusts a record only as far as the bytes of its slot match it:
//!   the newest matching record of a slot holds, later ones are dropped,
//!   and a tlog that lost records is rewritten without them (committed
//!   prefix unchanged) before anything ships it.
//! - A shipped tlog's records hold as they are (their slots were final and
//!   durable before shipping; the containers may be evicted since).
//! - Every slot replay kept is made durable before the marker that calls
//!   it final is committed, and RocksDB's WAL is synced before a shipped
//!   tlog is deleted.
//! - Tlogs imported from a hand-over are checked strictly: every slot must
//!   hold the bytes of its last record (the previous owner froze and
//!   synced them), or the import fails instead of dropping records.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::time::Instant;

use parking_lot::{Condvar, Mutex, RwLock};

use crate::checksum;
use crate::error::{EngineError, EngineResult};
use crate::format::{
    CLUSTER_SIZE, Mapping, TLOG_HEADER_SIZE, TLOG_RECORD_SIZE, TlogHeader, TlogRecord,
    content_hash, slot_offset,
};
use crate::icache::IndexCache;
use crate::index::{Entry, Marker};
use crate::meta::VolumeMeta;
use crate::owner::Owner;
use crate::ranges::RangeLocks;
use crate::shared::Shared;

use super::fence::FENCE_NONE;
use super::lookup::Memtables;
use super::segments::{Segment, list_seqs, sync_dir};
use super::sync::CommitState;
use super::{Counters, Volume, Writer};

/// How a volume is loaded.
pub(crate) struct Opening {
    /// The owner it is opened under.
    pub(crate) owner: Owner,
    /// Only as a grid clone's parent: reads only.
    pub(crate) reader: bool,
    /// Its unshipped tlogs were just imported from a hand-over: replay
    /// checks them strictly (module docs).
    pub(crate) import: bool,
    /// Imported tlogs already checked (and applied, as the replay marker
    /// says): their records hold as they are, like a shipped tlog's.
    pub(crate) verified: Vec<u64>,
}

impl Opening {
    /// Opened by (or for) `owner`.
    pub(crate) fn owner(owner: Owner) -> Self {
        Opening {
            owner,
            reader: false,
            import: false,
            verified: Vec::new(),
        }
    }

    /// Opened as a grid clone's parent.
    pub(crate) fn reader() -> Self {
        Opening {
            owner: Owner::standalone(),
            reader: true,
            import: false,
            verified: Vec::new(),
        }
    }
}

impl Volume {
    /// Builds the in-memory volume and replays local tlogs. `meta` comes
    /// from the local index (or was just restored from the backend).
    pub(crate) fn load(
        shared: Arc<Shared>,
        meta: VolumeMeta,
        parent: Option<(Arc<Volume>, u32)>,
        opening: Opening,
    ) -> EngineResult<Arc<Volume>> {
        let dir = super::local_dir_of(&shared.dir, meta.id);
        for sub in ["containers", "tlogs"] {
            std::fs::create_dir_all(dir.join(sub))
                .map_err(|e| EngineError::io(format!("creating {}", dir.display()), e))?;
        }
        let vol = Volume {
            id: meta.id,
            name: meta.name.clone(),
            block_size: meta.block_size,
            num_blocks: AtomicU64::new(meta.size_bytes / u64::from(meta.block_size)),
            head_gen: AtomicU32::new(meta.head_gen),
            template: AtomicBool::new(meta.template),
            parent,
            writer: Mutex::new(Writer {
                generation: meta.head_gen,
                container: None,
                tlog: None,
                next_container: meta.next_container,
                next_tlog: meta.next_tlog,
                unsynced: Vec::new(),
                dir_dirty: false,
                last_commit: Instant::now(),
                write_seq: 0,
                segments: VecDeque::new(),
                shipped_local: VecDeque::new(),
                shipped_local_bytes: 0,
                // Replay leaves every existing slot final.
                frozen: (u64::MAX, u32::MAX),
                mutable: HashMap::default(),
                touched: Vec::new(),
                dead: Vec::new(),
                stopped: false,
                mirroring: false,
                mirror_rewrites: Vec::new(),
                mirror_window: None,
                hard_pending: false,
            }),
            epochs: RwLock::new(meta.epochs.clone()),
            meta: Mutex::new(meta),
            // The previous incarnation may have died between a metadata
            // change and its upload: always re-upload once after opening
            // (a reader never uploads).
            meta_dirty: AtomicBool::new(!opening.reader),
            memtable: RwLock::new(Memtables::default()),
            commit: Mutex::new(CommitState::default()),
            commit_cv: Condvar::new(),
            index_lock: Mutex::new(()),
            icache: Mutex::new(IndexCache::default()),
            ranges: RangeLocks::default(),
            files: Mutex::new(HashMap::default()),
            ship_lock: Mutex::new(()),
            admin: Mutex::new(()),
            throttle_lock: Mutex::new(()),
            throttle_cv: Condvar::new(),
            unshipped: AtomicU64::new(0),
            failed: Mutex::new(None),
            closed: AtomicBool::new(false),
            last_sync: Mutex::new(Instant::now()),
            dead_clean: Mutex::new(Vec::new()),
            shipped_tlogs: Mutex::new(Vec::new()),
            counters: Counters::default(),
            rewrites: AtomicU64::new(0),
            memtable_hits: AtomicU64::new(0),
            owner: Mutex::new(opening.owner),
            reader: AtomicBool::new(opening.reader),
            fence: AtomicU8::new(FENCE_NONE),
            fence_reason: Mutex::new(None),
            manifest: Mutex::new(None),
            moving: AtomicBool::new(false),
            mirror: Mutex::default(),
            rounds: Mutex::default(),
            rounds_cv: Condvar::new(),
            shared,
            dir,
        };
        vol.replay_local(opening.import, &opening.verified)?;
        Ok(Arc::new(vol))
    }

    /// Local restart: replays the local tlogs from the replay marker and
    /// rebuilds the ship queue.
    ///
    /// A tlog's torn tail (a record that fails its own checksum) is cut
    /// off; later tlogs still count. Every data record is checked against
    /// its slot, slot by slot ([`Volume::check_slots`]): the newest record
    /// whose crc matches the slot's bytes holds, later records of the slot
    /// were never written and are dropped. A tlog that loses records this
    /// way is rewritten without them (its committed prefix unchanged), so
    /// a restore from the backend never sees them either.
    pub(super) fn replay_local(&self, strict: bool, verified: &[u64]) -> EngineResult<()> {
        let index = &self.shared.index;
        let marker = index.marker(self.id)?;
        let meta = self.meta.lock().clone();
        // A replay that died while rewriting a tlog left its temporary copy.
        for seq in list_seqs(&self.dir.join("tlogs"), ".tlog.tmp")? {
            let _ = std::fs::remove_file(self.tlog_path(seq).with_extension("tlog.tmp"));
        }
        let tlogs = list_seqs(&self.dir.join("tlogs"), ".tlog")?;
        let containers = list_seqs(&self.dir.join("containers"), ".sco")?;
        let mut open_files: HashMap<u64, File> = HashMap::new();
        let mut segments = VecDeque::new();
        let mut max_tlog = None;
        let mut batch: Vec<Entry> = Vec::new();
        let mut replayed: Vec<u64> = Vec::new();
        let last_tlog = tlogs.last().copied();
        for &seq in &tlogs {
            let path = self.tlog_path(seq);
            max_tlog = Some(seq);
            let data = std::fs::read(&path).map_err(|e| EngineError::io("reading a tlog", e))?;
            let hdr = match TlogHeader::decode(&data) {
                Ok(h) if h.volume_id == self.id && h.seq == seq => h,
                _ if Some(seq) == last_tlog => {
                    // Created but its header never reached the disk.
                    std::fs::remove_file(&path)
                        .map_err(|e| EngineError::io("removing a torn tlog", e))?;
                    continue;
                }
                _ => {
                    return Err(EngineError::corrupt(
                        format!("tlog {seq:016x} of {}", self.name),
                        "bad header",
                    ));
                }
            };
            if meta.is_discarded(hdr.generation) {
                std::fs::remove_file(&path)
                    .map_err(|e| EngineError::io("removing a rolled-back tlog", e))?;
                continue;
            }
            let mut recs: Vec<TlogRecord> = Vec::new();
            let mut torn = false;
            for rec in data[TLOG_HEADER_SIZE..].chunks(TLOG_RECORD_SIZE) {
                match TlogRecord::decode(rec) {
                    Some(r) => recs.push(r),
                    None => {
                        torn = true;
                        break;
                    }
                }
            }
            if torn {
                tracing::warn!(volume = %self.name, tlog = seq, records = recs.len(), "torn tlog tail truncated on replay");
                let f = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(|e| EngineError::io("opening a torn tlog", e))?;
                f.set_len((TLOG_HEADER_SIZE + recs.len() * TLOG_RECORD_SIZE) as u64)
                    .and_then(|()| f.sync_all())
                    .map_err(|e| EngineError::io("truncating a torn tlog", e))?;
            }
            let skip = usize::try_from(marker.records_applied(seq))
                .unwrap_or(usize::MAX)
                .min(recs.len());
            let tail = if seq < meta.shipped.next_tlog || verified.contains(&seq) {
                // Shipped: `ship_one` made every record durable and its
                // slot final first, and the containers may be evicted
                // since; the records hold as they are. So do those of an
                // imported tlog checked when it was received.
                recs[skip..].to_vec()
            } else {
                self.check_slots(seq, &recs, skip, marker.frozen, &mut open_files, strict)?
            };
            let rewritten = tail.len() != recs.len() - skip
                || tail.iter().zip(&recs[skip..]).any(|(a, b)| a != b);
            if rewritten {
                let mut out =
                    Vec::with_capacity(TLOG_HEADER_SIZE + (skip + tail.len()) * TLOG_RECORD_SIZE);
                out.extend_from_slice(&data[..TLOG_HEADER_SIZE + skip * TLOG_RECORD_SIZE]);
                let mut rec = [0u8; TLOG_RECORD_SIZE];
                for r in &tail {
                    r.encode(&mut rec);
                    out.extend_from_slice(&rec);
                }
                self.replace_tlog(seq, &out)?;
            }
            let mut seg_containers: Vec<u64> = Vec::new();
            for r in recs[..skip].iter().chain(&tail) {
                if let Mapping::Data(l) = r.mapping
                    && !seg_containers.contains(&l.container)
                {
                    seg_containers.push(l.container);
                }
            }
            batch.extend(tail.iter().map(|r| (r.cluster, hdr.generation, r.mapping)));
            replayed.push(seq);
            if batch.len() > 65536 {
                // Tlogs up to `seq` are applied; later ones keep their
                // marker positions.
                let mut m = marker.clone();
                m.applied = m.applied.max((seq + 1, 0));
                m.sealed.retain(|(s, _)| *s > seq);
                index.commit(self.id, &batch, &m)?;
                batch.clear();
            }
            if seq >= meta.shipped.next_tlog {
                let bytes = seg_containers
                    .iter()
                    .map(|c| {
                        std::fs::metadata(self.container_path(*c))
                            .map(|m| m.len())
                            .unwrap_or(0)
                    })
                    .sum();
                segments.push_back(Segment {
                    tlog: seq,
                    generation: hdr.generation,
                    containers: seg_containers,
                    bytes,
                    opened: Instant::now(),
                    tlog_file: None,
                    records: (skip + tail.len()) as u64,
                });
            }
        }
        let next_tlog = max_tlog
            .map_or(0, |m| m + 1)
            .max(meta.next_tlog)
            .max(meta.shipped.next_tlog)
            .max(marker.applied.0);
        let next_container = containers
            .last()
            .map_or(0, |m| m + 1)
            .max(meta.next_container);
        // Every slot replay kept is final from now on: make the bytes it
        // checked durable (after a kill they may be only in the page cache)
        // before the marker says so.
        for f in open_files.values() {
            f.sync_data()
                .map_err(|e| EngineError::io("fdatasync of a replayed container", e))?;
        }
        for &seq in &replayed {
            if let Ok(f) = File::open(self.tlog_path(seq)) {
                f.sync_data()
                    .map_err(|e| EngineError::io("fdatasync of a replayed tlog", e))?;
            }
        }
        index.commit(
            self.id,
            &batch,
            &Marker::at((next_tlog, 0), (next_container, 0)),
        )?;
        // Everything replayed is in RocksDB; make it durable before
        // deleting shipped tlogs.
        index.sync_wal()?;
        for &seq in &tlogs {
            if seq < meta.shipped.next_tlog && self.tlog_path(seq).exists() {
                let _ = std::fs::remove_file(self.tlog_path(seq));
            }
        }
        let in_segments: BTreeSet<u64> = segments
            .iter()
            .flat_map(|s: &Segment| s.containers.iter().copied())
            .collect();
        let mut w = self.writer.lock();
        w.next_tlog = next_tlog;
        w.next_container = next_container;
        w.frozen = (next_container, 0);
        let mut unshipped = 0;
        for s in &segments {
            unshipped += s.bytes;
        }
        w.segments = segments;
        for &c in &containers {
            if !in_segments.contains(&c) {
                let len = std::fs::metadata(self.container_path(c))
                    .map(|m| m.len())
                    .unwrap_or(0);
                w.shipped_local.push_back((c, len));
                w.shipped_local_bytes += len;
            }
        }
        self.unshipped.store(unshipped, Ordering::Relaxed);
        let (nc, nt) = (w.next_container, w.next_tlog);
        drop(w);
        let mut m = self.meta.lock();
        if m.next_container != nc || m.next_tlog != nt {
            m.next_container = nc;
            m.next_tlog = nt;
            self.persist_meta(&m)?;
        }
        Ok(())
    }

    /// Replay's per-slot check of tlog `seq`'s records (`recs`, of which
    /// the first `skip` are in the index already); returns the records to
    /// apply after those `skip`.
    ///
    /// For each slot the records name, the newest record whose crc matches
    /// the slot's bytes holds, and the slot's later records are dropped:
    /// their data never reached the slot (a kill between an in-place
    /// record and its data, or a power cut before a sync). Nothing dropped
    /// was promised: a completed sync after a record makes its data
    /// durable, and a hard barrier stops later rewrites of the slot.
    ///
    /// A slot that matches none of its records, although one is committed,
    /// was rewritten in place after a soft (periodic) sync and the power
    /// was cut mid-way. If it was mutable at the last commit (at or above
    /// `frozen`) and still is its cluster's current slot, its bytes are one
    /// version of that cluster and are **adopted**: a record with their crc
    /// and hash is inserted after the slot's last record. Below `frozen`
    /// the slot was final and synced, so a mismatch is corruption: it is
    /// left for reads to report, never adopted.
    ///
    /// With `strict` (imported tlogs) a slot whose bytes are not those of
    /// its last record is an error.
    pub(super) fn check_slots(
        &self,
        seq: u64,
        recs: &[TlogRecord],
        skip: usize,
        frozen: (u64, u32),
        open_files: &mut HashMap<u64, File>,
        strict: bool,
    ) -> EngineResult<Vec<TlogRecord>> {
        let mut slots: HashMap<(u64, u32), Vec<usize>> = HashMap::new();
        for (i, r) in recs.iter().enumerate() {
            if let Mapping::Data(l) = r.mapping {
                slots.entry((l.container, l.slot)).or_default().push(i);
            }
        }
        let mut keep = vec![true; recs.len()];
        let mut inserts: Vec<(usize, TlogRecord)> = Vec::new();
        let mut buf = vec![0u8; CLUSTER_SIZE];
        for (&(container, slot), idxs) in &slots {
            let f = match open_files.entry(container) {
                std::collections::hash_map::Entry::Occupied(o) => Some(o.into_mut()),
                std::collections::hash_map::Entry::Vacant(v) => {
                    File::open(self.container_path(container))
                        .ok()
                        .map(|f| v.insert(f))
                }
            };
            let bytes_crc = f
                .and_then(|f| f.read_exact_at(&mut buf, slot_offset(slot)).ok())
                .map(|()| checksum::crc32c(&buf));
            let matches = |i: &usize| match recs[*i].mapping {
                Mapping::Data(l) => l.len as usize == CLUSTER_SIZE && Some(l.crc) == bytes_crc,
                Mapping::Unmapped => false,
            };
            let last = idxs[idxs.len() - 1];
            let newest_match = idxs.iter().rev().find(|i| matches(i)).copied();
            if strict && newest_match != Some(last) {
                return Err(EngineError::Integrity {
                    what: format!("imported container {container:016x} slot {slot}"),
                    detail: format!(
                        "does not hold what tlog {seq:016x} says: the copy is incomplete or damaged"
                    ),
                    lba: None,
                });
            }
            let drop_from = match newest_match {
                Some(k) => k + 1,
                None => 0,
            };
            for &i in idxs {
                if i >= skip && i >= drop_from {
                    keep[i] = false;
                }
            }
            if newest_match.is_some() || bytes_crc.is_none() || idxs[0] >= skip {
                continue;
            }
            let cluster = recs[last].cluster;
            let current = !recs[last + 1..skip.max(last + 1)]
                .iter()
                .any(|r| r.cluster == cluster);
            if (container, slot) >= frozen && current {
                let Mapping::Data(mut loc) = recs[last].mapping else {
                    continue;
                };
                loc.crc = bytes_crc.unwrap_or_default();
                loc.hash = content_hash(&buf);
                tracing::warn!(volume = %self.name, tlog = seq, cluster, container, slot,
                    "slot matches none of its records after an unclean stop; adopting its bytes");
                self.counters.adopted.fetch_add(1, Ordering::Relaxed);
                inserts.push((
                    (last + 1).max(skip),
                    TlogRecord {
                        cluster,
                        mapping: Mapping::Data(loc),
                    },
                ));
            } else {
                tracing::error!(volume = %self.name, tlog = seq, cluster, container, slot,
                    "cluster data does not match its committed record");
            }
        }
        inserts.sort_by_key(|(at, _)| *at);
        let mut out = Vec::with_capacity(recs.len() - skip + inserts.len());
        let mut ins = inserts.into_iter().peekable();
        for (i, r) in recs.iter().enumerate().skip(skip) {
            while let Some((_, a)) = ins.next_if(|(at, _)| *at <= i) {
                out.push(a);
            }
            if keep[i] {
                out.push(*r);
            }
        }
        out.extend(ins.map(|(_, a)| a));
        Ok(out)
    }

    /// Replaces tlog `seq` with `bytes` (write, sync, rename).
    pub(super) fn replace_tlog(&self, seq: u64, bytes: &[u8]) -> EngineResult<()> {
        let path = self.tlog_path(seq);
        let tmp = path.with_extension("tlog.tmp");
        std::fs::write(&tmp, bytes)
            .and_then(|()| File::open(&tmp)?.sync_all())
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| EngineError::io("rewriting a replayed tlog", e))?;
        sync_dir(&self.dir.join("tlogs"))
    }
}
