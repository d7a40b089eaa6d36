//! Scrubbing: reclaiming backend space held by overwritten, unmapped,
//! rolled-back or deleted-snapshot data.
//!
//! Per volume, under its admin lock:
//! 1. *Cut*: seal and sync, take a RocksDB snapshot, ship everything before
//!    the cut. The snapshot's entries are exactly "checkpoint + tlogs before
//!    the cut".
//! 2. *Measure*: every index entry is live (snapshot deletion and rollback
//!    already removed unreachable ones), so live clusters per container come
//!    from one scan. Containers created after the cut are never touched.
//! 3. *Rewrite*: containers below `scrub_live_ratio` have their live
//!    clusters (crc-checked) copied into new containers, which are uploaded.
//! 4. *Checkpoint*: the cut entries with relocations applied are uploaded as
//!    a new checkpoint object; then the live index is updated (only where an
//!    entry still points at the old location), then the manifest is switched
//!    to the checkpoint and the tlogs after the cut.
//! 5. *Delete*: only now are old containers, folded tlogs, old checkpoints
//!    and any other unreferenced object of the volume deleted.
//!
//! In a grid, the deletes of step 5 follow the fenced manifest PUT of step
//! 4 (which a deposed owner cannot make) and one more ownership check
//! (`Fencing::check`), and never touch an object whose key carries an
//! owner generation newer than every epoch the volume knows. An object
//! whose key is not the one the epoch table derives for its sequence
//! number (a deposed owner's late upload, an interrupted attempt) is
//! unreferenced. Readers (a grid clone's parent) and moving volumes are
//! not scrubbed.
//!
//! Interrupting at any point is safe: before step 4's manifest switch the
//! old manifest still names only old objects (new ones are unreferenced);
//! after it, old objects are unreferenced. Either way the next scrub's
//! step 5 deletes whatever is unreferenced, so nothing leaks and no live data
//! is lost.
//!
//! [`ScrubReport`] counts what a scrub or a background checkpoint did; the
//! pool sums it over its volumes and its own orphan sweep.

use std::collections::{HashMap, HashSet};

use bytes::Bytes;

use crate::backend::keys::{self, VolumeObject};
use crate::checksum;
use crate::error::{EngineError, EngineResult};
use crate::format::{
    CLUSTER_SIZE, CLUSTER_SIZE_U64, CONTAINER_VERSION, CheckpointEntry, CheckpointWriter,
    ContainerHeader, Location, Mapping, slot_offset,
};
use crate::index::IndexBatch;
use crate::volume::Volume;

/// What a scrub did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScrubReport {
    /// Volumes scrubbed.
    pub volumes: usize,
    /// Containers whose live clusters were copied into new containers.
    pub containers_rewritten: usize,
    /// Container objects deleted from the backend.
    pub containers_deleted: usize,
    /// Live clusters copied.
    pub clusters_moved: u64,
    /// Backend bytes released.
    pub bytes_reclaimed: u64,
    /// Tlog objects deleted (folded into a checkpoint).
    pub tlogs_deleted: usize,
    /// Checkpoints written.
    pub checkpoints_written: usize,
    /// Unreferenced objects (from interrupted scrubs, deletes, uploads)
    /// deleted.
    pub orphans_deleted: usize,
    /// Volumes that could not be scrubbed, with the reason.
    pub errors: Vec<String>,
}

struct Builder {
    seq: u64,
    data: Vec<u8>,
    slots: u32,
}

pub(crate) fn scrub_volume(vol: &Volume, report: &mut ScrubReport) -> EngineResult<()> {
    scrub_inner(vol, report, true)
}

/// Steps 1, 4 and 5 only: a fresh checkpoint that folds the shipped tlogs,
/// without rewriting any container (the vPool's background checkpointer;
/// see `VPoolConfig::checkpoint_tlogs`).
pub(crate) fn checkpoint_volume(vol: &Volume, report: &mut ScrubReport) -> EngineResult<()> {
    scrub_inner(vol, report, false)
}

fn scrub_inner(vol: &Volume, report: &mut ScrubReport, rewrite_sparse: bool) -> EngineResult<()> {
    if vol.is_reader() {
        return Ok(());
    }
    let _a = vol.admin_lock();
    if vol.is_moving() {
        return Err(EngineError::InvalidArgument(format!(
            "vDisk {:?} is being moved to another router",
            vol.name()
        )));
    }
    let shared = &vol.shared;
    let be = &shared.backend;
    let id = vol.id;
    // 1. Cut.
    let (cut_tlog, cut_container, snap) = vol.cut()?;
    while vol.ship_one(false)? {}
    if !vol.shipped_before(cut_tlog) {
        return Err(EngineError::BackendUnavailable(
            "could not ship everything before the scrub cut".into(),
        ));
    }
    // 2. Measure. Without rewrites nothing is relocated, so the checkpoint
    // is encoded during the scan and the entries are never held as a list
    // (50 bytes per entry in memory instead of ~180).
    let mut entries: Vec<(u64, u32, Mapping)> = Vec::new();
    let mut live: HashMap<u64, u32> = HashMap::new();
    let mut streamed = None;
    if rewrite_sparse {
        snap.scan(id, |c, g, m| {
            entries.push((c, g, m));
            true
        })?;
        for (_, _, m) in &entries {
            if let Mapping::Data(l) = m {
                *live.entry(l.container).or_default() += 1;
            }
        }
    } else {
        let mut w = CheckpointWriter::new(id, cut_tlog);
        snap.scan(id, |cluster, generation, mapping| {
            if let Mapping::Data(l) = mapping {
                *live.entry(l.container).or_default() += 1;
            }
            w.push(&CheckpointEntry {
                cluster,
                generation,
                mapping,
            });
            true
        })?;
        streamed = Some(w);
    }
    drop(snap);
    let prefix = keys::volume_prefix(id);
    let objects = be.list(&prefix)?;
    let ratio = shared.cfg.scrub_live_ratio;
    let mut rewrite: HashSet<u64> = HashSet::new();
    let mut sizes: HashMap<u64, u64> = HashMap::new();
    for (k, size) in &objects {
        let Some((_, VolumeObject::Container(seq, _))) = keys::parse_volume_object(k) else {
            continue;
        };
        if *k != vol.container_key(seq) {
            continue;
        }
        sizes.insert(seq, *size);
        if seq >= cut_container {
            continue;
        }
        let slots = (size / CLUSTER_SIZE_U64).saturating_sub(1).max(1);
        if rewrite_sparse
            && let Some(&n) = live.get(&seq)
            && (f64::from(n) / slots as f64) < ratio
        {
            rewrite.insert(seq);
        }
    }
    // 3. Rewrite.
    let cap = shared.cfg.container_slots();
    let mut reloc: HashMap<(u64, u32), (u64, u32)> = HashMap::new();
    let mut by_container: HashMap<u64, Vec<Location>> = HashMap::new();
    for (_, _, m) in &entries {
        if let Mapping::Data(l) = m
            && rewrite.contains(&l.container)
        {
            by_container.entry(l.container).or_default().push(*l);
        }
    }
    let mut builder: Option<Builder> = None;
    let finish = |b: Builder, report: &mut ScrubReport| -> EngineResult<()> {
        be.put(
            &vol.container_key(b.seq),
            Bytes::from(b.data.clone()),
            false,
        )?;
        vol.adopt_local_container(b.seq, &b.data)?;
        report.clusters_moved += u64::from(b.slots);
        Ok(())
    };
    let mut order: Vec<u64> = by_container.keys().copied().collect();
    order.sort_unstable();
    for cseq in order {
        let data = vol.fetch_container(cseq)?;
        let mut locs = by_container.remove(&cseq).unwrap_or_default();
        locs.sort_by_key(|l| l.slot);
        locs.dedup_by_key(|l| l.slot);
        for l in locs {
            let chunk = usize::try_from(slot_offset(l.slot))
                .ok()
                .and_then(|off| data.get(off..off + CLUSTER_SIZE));
            let Some(chunk) = chunk else {
                return Err(EngineError::corrupt(
                    format!("container {cseq:016x}"),
                    "shorter than its index says",
                ));
            };
            if checksum::crc32c(chunk) != l.crc {
                return Err(EngineError::Integrity {
                    what: format!("container {cseq:016x} slot {}", l.slot),
                    detail: "crc32c mismatch while scrubbing; container left untouched".into(),
                    lba: None,
                });
            }
            if builder.as_ref().is_some_and(|b| b.slots >= cap)
                && let Some(b) = builder.take()
            {
                finish(b, report)?;
            }
            let b = builder.get_or_insert_with(|| {
                let seq = vol.alloc_container();
                let hdr = ContainerHeader {
                    version: CONTAINER_VERSION,
                    flags: 0,
                    volume_id: id,
                    seq,
                };
                Builder {
                    seq,
                    data: hdr.encode().to_vec(),
                    slots: 0,
                }
            });
            b.data.extend_from_slice(chunk);
            reloc.insert((cseq, l.slot), (b.seq, b.slots));
            b.slots += 1;
        }
    }
    if let Some(b) = builder.take() {
        finish(b, report)?;
    }
    report.containers_rewritten += rewrite.len();
    // 4. Checkpoint, live index, manifest.
    let relocate = |m: Mapping| -> Mapping {
        match m {
            Mapping::Data(l) => match reloc.get(&(l.container, l.slot)) {
                Some(&(c, s)) => Mapping::Data(Location {
                    container: c,
                    slot: s,
                    ..l
                }),
                None => m,
            },
            Mapping::Unmapped => m,
        }
    };
    let body = match streamed {
        Some(w) => w.finish(),
        None => {
            let mut w = CheckpointWriter::new(id, cut_tlog);
            for &(cluster, generation, m) in &entries {
                w.push(&CheckpointEntry {
                    cluster,
                    generation,
                    mapping: relocate(m),
                });
            }
            w.finish()
        }
    };
    // Containers the checkpoint points into: the live ones, except those
    // rewritten (their clusters moved into new containers).
    let referenced: HashSet<u64> = live
        .keys()
        .copied()
        .filter(|c| !rewrite.contains(c))
        .chain(reloc.values().map(|&(c, _)| c))
        .collect();
    let ck_seq = vol.meta.lock().shipped.checkpoint.map_or(0, |(s, _)| s + 1);
    be.put(&vol.checkpoint_key(ck_seq), Bytes::from(body), false)?;
    report.checkpoints_written += 1;
    if !reloc.is_empty() {
        let _ig = vol.index_guard();
        let mut b = IndexBatch::default();
        for &(c, g, m) in &entries {
            let new = relocate(m);
            if new == m {
                continue;
            }
            if let Some((cg, cur)) = shared.index.lookup(id, c, g)?
                && cg == g
                && cur == m
            {
                b.put_entry(id, c, g, new);
            }
        }
        shared.index.write_sync(b)?;
        vol.clear_index_cache();
    }
    {
        let _s = vol.ship_guard();
        {
            let mut m = vol.meta.lock();
            m.shipped.checkpoint = Some((ck_seq, cut_tlog));
            m.shipped.tlogs.retain(|t| t.seq >= cut_tlog);
            vol.persist_meta(&m)?;
        }
        vol.upload_manifest(false)?;
    }
    // 5. Delete what nothing references any more, now that the manifest
    // (fenced) no longer names it and the owner still holds the vDisk.
    vol.check_owner()?;
    for (k, size) in &objects {
        let Some((_, obj)) = keys::parse_volume_object(k) else {
            continue;
        };
        if !vol.may_delete_generation(obj.generation()) {
            continue;
        }
        // The object the epoch table names for this sequence number, or a
        // stray under another owner's key.
        let (current, del) = match obj {
            VolumeObject::Container(seq, _) => {
                let cur = *k == vol.container_key(seq);
                (
                    cur,
                    !cur || (seq < cut_container && !referenced.contains(&seq)),
                )
            }
            VolumeObject::Tlog(seq, _) => {
                let cur = *k == vol.tlog_key(seq);
                (cur, !cur || seq < cut_tlog)
            }
            VolumeObject::Checkpoint(seq, _) => {
                let cur = *k == vol.checkpoint_key(seq);
                (cur, !cur || seq != ck_seq)
            }
            VolumeObject::Manifest => (true, false),
        };
        if !del {
            continue;
        }
        be.delete(k, false)?;
        report.bytes_reclaimed += size;
        if !current {
            report.orphans_deleted += 1;
            continue;
        }
        if let VolumeObject::Container(seq, _) = obj {
            vol.drop_local_container(seq);
            if rewrite.contains(&seq) || live.get(&seq).is_none_or(|n| *n == 0) {
                report.containers_deleted += 1;
            }
            if !rewrite.contains(&seq) && live.contains_key(&seq) {
                report.orphans_deleted += 1;
            }
        } else if let VolumeObject::Tlog(..) = obj {
            report.tlogs_deleted += 1;
        }
    }
    let _ = sizes;
    Ok(())
}
