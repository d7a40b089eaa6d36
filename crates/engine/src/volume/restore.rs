//! Restore from the backend: rebuilding a volume's index when this node's
//! flash does not know it ([`restore_index`]) — the replay of what was
//! shipped, as `replay` is the replay of what is on flash. The pool calls
//! it on open, after reading the catalog entry and the manifest.
//!
//! Invariants:
//! - Only what the manifest names is read: its checkpoint, then its tlogs,
//!   skipping generations a rollback discarded, each under the key its
//!   epoch table derives (the owner generation that wrote it).
//! - Generations are folded into their live boundary only when `meta` is
//!   the volume's whole truth: a hand-over's early restore (from a
//!   manifest that lists only shipped snapshots) keeps them as written,
//!   which reads the same and stays right whatever snapshots the final
//!   metadata has.
//! - Memory stays bounded by one checkpoint chunk whatever the index size,
//!   and the checkpoint's crc32c is checked before anything is ingested.
//! - Tlog entries are committed after the checkpoint's are ingested, so the
//!   newer entries win.

use crate::backend::keys;
use crate::error::{EngineError, EngineResult};
use crate::format::{
    TLOG_HEADER_SIZE, TLOG_RECORD_SIZE, TlogHeader, TlogRecord, stream_checkpoint,
};
use crate::index::{Entry, Marker};
use crate::meta::{TlogRef, VolumeMeta};
use crate::shared::Shared;

/// Checkpoint bytes fetched per ranged GET while restoring (whole entries).
const RESTORE_CHUNK: u64 = 16 << 20;

/// Rebuilds a volume's index from the backend (flash was lost): the
/// checkpoint, then the shipped tlogs after it.
///
/// The checkpoint is streamed in `RESTORE_CHUNK` ranged GETs straight into a
/// sorted table file that RocksDB ingests in one step (no WAL, no memtable),
/// so memory stays bounded by one chunk whatever the index size, and the
/// crc32c of the whole object is checked before anything is ingested. Tlogs
/// are then committed normally; they are newer than the ingested entries.
/// With `fold`, generations are folded into their live boundary (module
/// docs).
pub(crate) fn restore_index(shared: &Shared, meta: &VolumeMeta, fold: bool) -> EngineResult<()> {
    let be = &shared.backend;
    let gen_of = |g: u32| if fold { meta.boundary(g) } else { g };
    if let Some((ck, _cut)) = meta.shipped.checkpoint {
        let key = keys::checkpoint(meta.id, ck, meta.checkpoint_owner(ck));
        let sst = shared.dir.join(format!("restore-{:016x}.sst", meta.id));
        let mut load = shared.index.bulk_load(meta.id, sst)?;
        let h = stream_checkpoint(
            |r| be.get_range(&key, r),
            RESTORE_CHUNK,
            |e| {
                if meta.is_discarded(e.generation) {
                    Ok(())
                } else {
                    load.add(e.cluster, gen_of(e.generation), e.mapping)
                }
            },
        )?;
        if h.volume_id != meta.id {
            return Err(EngineError::corrupt(
                "checkpoint",
                "belongs to another volume",
            ));
        }
        load.ingest()?;
    }
    restore_tlogs(shared, meta, &meta.shipped.tlogs, fold)
}

/// Commits the records of shipped `tlogs` (of `meta`, in order) to the
/// index, then a replay marker past them and `meta.shipped.next_tlog`.
pub(crate) fn restore_tlogs(
    shared: &Shared,
    meta: &VolumeMeta,
    tlogs: &[TlogRef],
    fold: bool,
) -> EngineResult<()> {
    let be = &shared.backend;
    let mut batch: Vec<Entry> = Vec::new();
    let mut last = meta.shipped.next_tlog;
    for t in tlogs {
        if meta.is_discarded(t.generation) {
            continue;
        }
        let data = be.get(&keys::tlog(meta.id, t.seq, meta.tlog_owner(t.seq)))?;
        let hdr = TlogHeader::decode(&data)?;
        if hdr.volume_id != meta.id || hdr.seq != t.seq {
            return Err(EngineError::corrupt(
                format!("tlog {:016x}", t.seq),
                "header names another log",
            ));
        }
        let gen_ = if fold {
            meta.boundary(hdr.generation)
        } else {
            hdr.generation
        };
        for rec in data
            .get(TLOG_HEADER_SIZE..)
            .unwrap_or_default()
            .chunks(TLOG_RECORD_SIZE)
        {
            let Some(r) = TlogRecord::decode(rec) else {
                return Err(EngineError::corrupt(
                    format!("tlog {:016x} on the backend", t.seq),
                    "bad record checksum",
                ));
            };
            batch.push((r.cluster, gen_, r.mapping));
        }
        last = last.max(t.seq + 1);
        if batch.len() > 65536 {
            shared
                .index
                .commit(meta.id, &batch, &Marker::at((0, 0), (0, 0)))?;
            batch.clear();
        }
    }
    shared
        .index
        .commit(meta.id, &batch, &Marker::at((last, 0), (0, 0)))?;
    Ok(())
}
