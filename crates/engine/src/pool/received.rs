//! The files a live move or a takeover from a mirror receives, before
//! they become part of a volume: a received segment checked strictly
//! against what its tlog says, and a received file put in its place.
//!
//! Invariants: a segment is accepted only if its tlog is whole and names
//! the volume, each container's header is its own, and every slot holds
//! the bytes of its last record; a placed file is durable before the
//! import relies on it.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::checksum;
use crate::error::{EngineError, EngineResult};
use crate::format::{
    CLUSTER_SIZE, CLUSTER_SIZE_U64, ContainerHeader, Mapping, TLOG_HEADER_SIZE, TLOG_RECORD_SIZE,
    TlogHeader, TlogRecord,
};
use crate::volume::HandoverFileKind;

/// Bytes of a received container read at a time while checking it.
const CHECK_CHUNK: usize = 8 << 20;

/// What [`check_received`] found: the tlog's header and records, and the
/// containers it points into.
type Checked = (TlogHeader, Vec<TlogRecord>, Vec<u64>);

/// A received segment's tlog and its containers, checked strictly: the
/// tlog is whole and names this volume, each container's header is its
/// own, and every slot holds the bytes of its last record. `Ok(None)` if a
/// file is missing or not of its listed length (not received yet).
pub(super) fn check_received(
    dir: &Path,
    id: u64,
    seq: u64,
    lens: &HashMap<(HandoverFileKind, u64), u64>,
) -> EngineResult<Option<Checked>> {
    let received = |kind, seq: u64, name: String| {
        let p = dir.join(name);
        let ok = lens
            .get(&(kind, seq))
            .is_some_and(|&len| std::fs::metadata(&p).is_ok_and(|m| m.len() == len));
        ok.then_some(p)
    };
    let Some(path) = received(HandoverFileKind::Tlog, seq, format!("{seq:016x}.tlog")) else {
        return Ok(None);
    };
    let data = std::fs::read(&path).map_err(|e| EngineError::io("reading a received tlog", e))?;
    let bad = |detail: String| EngineError::Integrity {
        what: format!("received tlog {seq:016x}"),
        detail,
        lba: None,
    };
    let hdr = TlogHeader::decode(&data)?;
    if hdr.volume_id != id || hdr.seq != seq {
        return Err(bad("its header names another log".into()));
    }
    let body = data.get(TLOG_HEADER_SIZE..).unwrap_or_default();
    if !body.len().is_multiple_of(TLOG_RECORD_SIZE) {
        return Err(bad("ends inside a record".into()));
    }
    let mut recs = Vec::with_capacity(body.len() / TLOG_RECORD_SIZE);
    for rec in body.chunks(TLOG_RECORD_SIZE) {
        recs.push(TlogRecord::decode(rec).ok_or_else(|| bad("a record fails its crc".into()))?);
    }
    // The last record of each slot, by container.
    let mut last: BTreeMap<u64, HashMap<u32, u32>> = BTreeMap::new();
    for r in &recs {
        if let Mapping::Data(l) = r.mapping {
            last.entry(l.container).or_default().insert(l.slot, l.crc);
        }
    }
    let containers: Vec<u64> = last.keys().copied().collect();
    let mut buf = vec![0u8; CHECK_CHUNK];
    for (c, slots) in last {
        let Some(path) = received(HandoverFileKind::Container, c, format!("{c:016x}.sco")) else {
            return Ok(None);
        };
        let f = std::fs::File::open(&path)
            .map_err(|e| EngineError::io("opening a received container", e))?;
        let len = f
            .metadata()
            .map_err(|e| EngineError::io("a received container", e))?
            .len();
        let mut crcs = Vec::with_capacity(usize::try_from(len / CLUSTER_SIZE_U64).unwrap_or(0));
        let mut off = 0u64;
        while off < len {
            let n = crate::conv::min_usize(CHECK_CHUNK, len - off);
            f.read_exact_at(&mut buf[..n], off)
                .map_err(|e| EngineError::io("reading a received container", e))?;
            if off == 0 {
                let h = ContainerHeader::decode(&buf[..CLUSTER_SIZE])?;
                if h.volume_id != id || h.seq != c {
                    return Err(bad(format!("container {c:016x} has another's header")));
                }
            }
            crcs.extend(buf[..n].chunks(CLUSTER_SIZE).map(checksum::crc32c));
            off += n as u64;
        }
        for (slot, crc) in slots {
            if crcs.get(slot as usize + 1) != Some(&crc) {
                return Err(bad(format!(
                    "container {c:016x} slot {slot} does not hold what the tlog says: \
                     the copy is incomplete or damaged"
                )));
            }
        }
    }
    Ok(Some((hdr, recs, containers)))
}

/// Puts a received file at `to`: a hard link (the received copy stays
/// until the import succeeded), or a copy across file systems; then
/// fdatasyncs it unless `sync` is false (its data was synced already; a
/// copy is synced anyway). The caller syncs the directory.
pub(super) fn place_file(from: &Path, to: &Path, sync: bool) -> EngineResult<()> {
    let _ = std::fs::remove_file(to);
    let copied = std::fs::hard_link(from, to).is_err();
    if copied {
        std::fs::copy(from, to)
            .map_err(|e| EngineError::io(format!("copying {}", from.display()), e))?;
    }
    if sync || copied {
        std::fs::File::open(to)
            .and_then(|f| f.sync_data())
            .map_err(|e| EngineError::io(format!("syncing {}", to.display()), e))?;
    }
    Ok(())
}
