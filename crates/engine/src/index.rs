//! The RocksDB index: LBA → location per (volume, cluster, generation), plus
//! per-volume metadata, replay markers and the local name catalog.
//!
//! Invariants:
//! - The index is never ahead of what the logs can rebuild: entries are
//!   written only after the tlog records (and the container data) they
//!   describe were fdatasync'ed, together with the replay marker, in one
//!   atomic write batch. Unsynced RocksDB writes are therefore safe to lose;
//!   replay from the marker recovers them.
//! - A lookup at generation `g` returns the newest entry with generation ≤ `g`
//!   (`seek_for_prev`), which is what makes snapshots O(1).
//! - No RocksDB type leaves this module: writes go through [`IndexBatch`],
//!   point-in-time reads through [`IndexSnapshot`], errors become
//!   [`EngineError::Index`].

use std::path::{Path, PathBuf};

use rocksdb::{
    DB, IngestExternalFileOptions, Options, ReadOptions, SstFileWriter, WriteBatch, WriteOptions,
};

use crate::error::{EngineError, EngineResult};
use crate::format::{Mapping, keys};
use crate::meta::VolumeMeta;

/// The vPool's RocksDB instance.
pub struct Index {
    db: DB,
    /// Options for bulk-load table files (see [`BulkLoad`]).
    bulk_opts: Options,
}

impl std::fmt::Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Index")
    }
}

/// One index update.
pub type Entry = (u64, u32, Mapping);

/// The replay marker a commit stores with its entries: where replay of the
/// local tlogs starts, and which slots are final.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marker {
    /// (tlog seq, records of it applied); earlier tlogs are applied in full
    /// unless `sealed` says otherwise.
    pub applied: (u64, u64),
    /// Sealed, unshipped tlogs that take in-place records after they were
    /// sealed: (tlog seq, records of it applied).
    pub sealed: Vec<(u64, u64)>,
    /// The frozen watermark (container, slot) at the commit's grab: slots
    /// below it were final before a completed sync, so their bytes must
    /// match their newest record.
    pub frozen: (u64, u32),
}

impl Marker {
    /// A marker with every tlog before `applied` applied and no slot below
    /// `frozen` mutable.
    pub fn at(applied: (u64, u64), frozen: (u64, u32)) -> Self {
        Marker {
            applied,
            sealed: Vec::new(),
            frozen,
        }
    }

    /// Records of tlog `seq` already in the index.
    pub fn records_applied(&self, seq: u64) -> u64 {
        if let Some(&(_, n)) = self.sealed.iter().find(|(s, _)| *s == seq) {
            return n;
        }
        match seq.cmp(&self.applied.0) {
            std::cmp::Ordering::Less => u64::MAX,
            std::cmp::Ordering::Equal => self.applied.1,
            std::cmp::Ordering::Greater => 0,
        }
    }

    /// Bytes: applied (16), frozen (12), then 16 per sealed tlog. A
    /// 16-byte value is the format before in-place rewrites: nothing was
    /// ever mutable.
    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(28 + 16 * self.sealed.len());
        v.extend_from_slice(&self.applied.0.to_le_bytes());
        v.extend_from_slice(&self.applied.1.to_le_bytes());
        v.extend_from_slice(&self.frozen.0.to_le_bytes());
        v.extend_from_slice(&self.frozen.1.to_le_bytes());
        for (s, n) in &self.sealed {
            v.extend_from_slice(&s.to_le_bytes());
            v.extend_from_slice(&n.to_le_bytes());
        }
        v
    }

    fn decode(v: &[u8]) -> EngineResult<Self> {
        let u64_at = |i: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&v[i..i + 8]);
            u64::from_le_bytes(a)
        };
        if v.len() == 16 {
            return Ok(Marker::at((u64_at(0), u64_at(8)), (u64::MAX, u32::MAX)));
        }
        if v.len() < 28 || !(v.len() - 28).is_multiple_of(16) || v.len() > 28 + 16 * 4096 {
            return Err(EngineError::corrupt("replay marker", "bad length"));
        }
        let mut slot = [0u8; 4];
        slot.copy_from_slice(&v[24..28]);
        Ok(Marker {
            applied: (u64_at(0), u64_at(8)),
            frozen: (u64_at(16), u32::from_le_bytes(slot)),
            sealed: (28..v.len())
                .step_by(16)
                .map(|i| (u64_at(i), u64_at(i + 8)))
                .collect(),
        })
    }
}

impl Index {
    /// Opens (creating) the index at `path`.
    pub fn open(path: &Path) -> EngineResult<Self> {
        let mut o = Options::default();
        o.create_if_missing(true);
        o.set_max_open_files(256);
        o.set_keep_log_file_num(4);
        Ok(Index {
            db: DB::open(&o, path)?,
            bulk_opts: {
                // Bulk-loaded tables are not compressed: index values are
                // mostly hash bytes, and a restart is waiting on the load.
                let mut b = o.clone();
                b.set_compression_type(rocksdb::DBCompressionType::None);
                b
            },
        })
    }

    /// Starts a bulk load of `vol`'s index entries into a sorted table file
    /// at `path` (see [`BulkLoad`]).
    pub fn bulk_load(&self, vol: u64, path: PathBuf) -> EngineResult<BulkLoad<'_>> {
        let _ = std::fs::remove_file(&path);
        let writer = SstFileWriter::create(&self.bulk_opts);
        writer.open(&path)?;
        Ok(BulkLoad {
            index: self,
            vol,
            writer,
            path,
            pending: None,
            written: 0,
        })
    }

    /// Newest entry for `cluster` with generation ≤ `generation`.
    pub fn lookup(
        &self,
        vol: u64,
        cluster: u64,
        generation: u32,
    ) -> EngineResult<Option<(u32, Mapping)>> {
        let mut it = self.db.raw_iterator();
        it.seek_for_prev(keys::index(vol, cluster, generation));
        if !it.valid() {
            it.status()?;
            return Ok(None);
        }
        let (Some(k), Some(v)) = (it.key(), it.value()) else {
            return Ok(None);
        };
        match keys::parse_index(k) {
            Some((kv, kc, kg)) if kv == vol && kc == cluster => {
                Ok(Some((kg, Mapping::decode_value(v)?)))
            }
            _ => Ok(None),
        }
    }

    /// For each cluster in `[from, from + n)`, the newest entry with
    /// generation ≤ `generation` (one range scan instead of `n` seeks).
    pub fn lookup_range(
        &self,
        vol: u64,
        from: u64,
        n: usize,
        generation: u32,
    ) -> EngineResult<Vec<Option<(u32, Mapping)>>> {
        let mut out = vec![None; n];
        let to = from.saturating_add(n as u64);
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(keys::index(vol, to, 0).to_vec());
        let mut it = self.db.raw_iterator_opt(ro);
        it.seek(keys::index(vol, from, 0));
        while it.valid() {
            let (Some(k), Some(v)) = (it.key(), it.value()) else {
                break;
            };
            match keys::parse_index(k) {
                Some((kv, c, g)) if kv == vol && c >= from && c < to => {
                    if g <= generation {
                        // Keys ascend by generation: the last one wins.
                        out[crate::conv::usize_of(c - from)?] =
                            Some((g, Mapping::decode_value(v)?));
                    }
                }
                _ => break,
            }
            it.next();
        }
        it.status()?;
        Ok(out)
    }

    /// Writes entries and the replay marker atomically (not synced: the
    /// logs are the durable copy).
    pub fn commit(&self, vol: u64, entries: &[Entry], marker: &Marker) -> EngineResult<()> {
        let mut b = WriteBatch::default();
        for (c, g, m) in entries {
            b.put(keys::index(vol, *c, *g), m.encode_value());
        }
        b.put(keys::per_volume(keys::APPLIED, vol), marker.encode());
        let mut wo = WriteOptions::default();
        wo.set_sync(false);
        self.db.write_opt(b, &wo)?;
        Ok(())
    }

    /// The replay marker (see [`Marker`]).
    pub fn marker(&self, vol: u64) -> EngineResult<Marker> {
        match self.db.get(keys::per_volume(keys::APPLIED, vol))? {
            Some(v) => Marker::decode(&v),
            None => Ok(Marker::at((0, 0), (0, 0))),
        }
    }

    /// Loads a volume's metadata.
    pub fn meta(&self, vol: u64) -> EngineResult<Option<VolumeMeta>> {
        match self.db.get(keys::per_volume(keys::META, vol))? {
            Some(v) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|e| EngineError::corrupt("volume metadata", e.to_string())),
            None => Ok(None),
        }
    }

    /// Writes a batch durably (metadata changes).
    pub fn write_sync(&self, b: IndexBatch) -> EngineResult<()> {
        self.write_batch_sync(b.0)
    }

    fn write_batch_sync(&self, b: WriteBatch) -> EngineResult<()> {
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db.write_opt(b, &wo)?;
        Ok(())
    }

    /// Writes a batch without sync.
    pub fn write(&self, b: IndexBatch) -> EngineResult<()> {
        self.db.write(b.0)?;
        Ok(())
    }

    /// Local name → id.
    pub fn name_to_id(&self, name: &str) -> EngineResult<Option<u64>> {
        match self.db.get(keys::name(name))? {
            Some(v) if v.len() == 8 => {
                let mut a = [0u8; 8];
                a.copy_from_slice(&v);
                Ok(Some(u64::from_le_bytes(a)))
            }
            Some(_) => Err(EngineError::corrupt("name entry", "bad length")),
            None => Ok(None),
        }
    }

    /// All locally known volume names.
    pub fn names(&self) -> EngineResult<Vec<String>> {
        let mut out = Vec::new();
        let mut it = self.db.raw_iterator();
        it.seek([keys::NAME]);
        while it.valid() {
            let Some(k) = it.key() else { break };
            if k.first() != Some(&keys::NAME) {
                break;
            }
            out.push(String::from_utf8_lossy(&k[1..]).into_owned());
            it.next();
        }
        it.status()?;
        Ok(out)
    }

    /// Removes everything a volume has in the index.
    pub fn delete_volume(&self, vol: u64, name: &str) -> EngineResult<()> {
        let mut b = WriteBatch::default();
        let from = keys::index(vol, 0, 0).to_vec();
        let to = match vol.checked_add(1) {
            Some(next) => keys::per_volume(keys::INDEX, next).to_vec(),
            None => vec![keys::INDEX + 1],
        };
        b.delete_range(from, to);
        b.delete(keys::per_volume(keys::META, vol));
        b.delete(keys::per_volume(keys::APPLIED, vol));
        b.delete(keys::name(name));
        self.write_batch_sync(b)
    }

    /// Calls `f(cluster, generation, mapping)` for every entry of `vol` with
    /// cluster in `[from, to)`, in key order. `f` returns false to stop.
    pub fn scan(
        &self,
        vol: u64,
        from: u64,
        to: u64,
        mut f: impl FnMut(u64, u32, Mapping) -> bool,
    ) -> EngineResult<()> {
        let mut it = self.db.raw_iterator();
        scan_iter(&mut it, vol, from, to, &mut f)
    }

    /// A point-in-time view (for checkpoints).
    pub fn snapshot(&self) -> IndexSnapshot<'_> {
        IndexSnapshot(self.db.snapshot())
    }

    /// Makes the RocksDB WAL durable (before local tlogs are deleted).
    pub fn sync_wal(&self) -> EngineResult<()> {
        self.db.flush_wal(true)?;
        Ok(())
    }

    /// Raw access for batch construction helpers.
    pub fn get_raw(&self, key: &[u8]) -> EngineResult<Option<Vec<u8>>> {
        Ok(self.db.get(key)?)
    }
}

/// Index writes applied atomically by [`Index::write`] or
/// [`Index::write_sync`]: metadata, names, replay markers and entries. Wraps
/// RocksDB's write batch so that no RocksDB type leaves this module.
#[derive(Default)]
pub struct IndexBatch(WriteBatch);

impl std::fmt::Debug for IndexBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IndexBatch")
            .field("writes", &self.0.len())
            .finish()
    }
}

impl IndexBatch {
    /// Adds a metadata write.
    pub fn put_meta(&mut self, meta: &VolumeMeta) -> EngineResult<()> {
        let v = serde_json::to_vec(meta)
            .map_err(|e| EngineError::corrupt("volume metadata", e.to_string()))?;
        self.0.put(keys::per_volume(keys::META, meta.id), v);
        Ok(())
    }

    /// Adds a replay marker: every tlog before `applied` is applied,
    /// nothing is mutable.
    pub fn put_applied(&mut self, vol: u64, applied: (u64, u64)) {
        self.0.put(
            keys::per_volume(keys::APPLIED, vol),
            Marker::at(applied, (0, 0)).encode(),
        );
    }

    /// Adds a name entry.
    pub fn put_name(&mut self, name: &str, id: u64) {
        self.0.put(keys::name(name), id.to_le_bytes());
    }

    /// Adds (or replaces) the index entry of `cluster` at `generation`.
    pub fn put_entry(&mut self, vol: u64, cluster: u64, generation: u32, m: Mapping) {
        self.0
            .put(keys::index(vol, cluster, generation), m.encode_value());
    }

    /// Removes the index entry of `cluster` at `generation`.
    pub fn delete_entry(&mut self, vol: u64, cluster: u64, generation: u32) {
        self.0.delete(keys::index(vol, cluster, generation));
    }
}

/// A point-in-time view of the index ([`Index::snapshot`]): what scrub's
/// cut reads while writers go on. Wraps a RocksDB snapshot.
pub struct IndexSnapshot<'a>(rocksdb::Snapshot<'a>);

impl std::fmt::Debug for IndexSnapshot<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IndexSnapshot")
    }
}

impl IndexSnapshot<'_> {
    /// Calls `f(cluster, generation, mapping)` for every entry of `vol` in
    /// the view, in key order, like [`Index::scan`]; `f` returns false to
    /// stop.
    pub fn scan(&self, vol: u64, mut f: impl FnMut(u64, u32, Mapping) -> bool) -> EngineResult<()> {
        let mut it = self.0.raw_iterator();
        scan_iter(&mut it, vol, 0, u64::MAX, &mut f)
    }
}

impl From<rocksdb::Error> for EngineError {
    fn from(e: rocksdb::Error) -> Self {
        EngineError::Index(e.into_string())
    }
}

/// A bulk load of one volume's index entries (restart from a checkpoint):
/// entries go, in strictly increasing (cluster, generation) order, into one
/// sorted table file, which [`BulkLoad::ingest`] hands to RocksDB in one
/// step — no write-ahead log, no memtable, no compaction of the load itself.
/// Entries committed after the ingest (tlog replay) are newer and win.
/// Dropping a load without ingesting it deletes the file and changes nothing.
pub struct BulkLoad<'a> {
    index: &'a Index,
    vol: u64,
    writer: SstFileWriter<'a>,
    path: PathBuf,
    /// The last key added: held back so a later entry with the same key
    /// (two generations folded into one boundary) replaces it.
    pending: Option<([u8; keys::INDEX_KEY_LEN], Mapping)>,
    written: u64,
}

impl std::fmt::Debug for BulkLoad<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BulkLoad")
            .field("path", &self.path)
            .field("written", &self.written)
            .finish()
    }
}

impl BulkLoad<'_> {
    /// Adds an entry. Keys must not go backwards (the same key again
    /// replaces the previous entry); a checkpoint whose entries are out of
    /// order is corrupt.
    pub fn add(&mut self, cluster: u64, generation: u32, m: Mapping) -> EngineResult<()> {
        let key = keys::index(self.vol, cluster, generation);
        if let Some((pk, pm)) = self.pending {
            match key.cmp(&pk) {
                std::cmp::Ordering::Less => {
                    return Err(EngineError::corrupt(
                        "checkpoint",
                        "entries out of (cluster, generation) order",
                    ));
                }
                std::cmp::Ordering::Equal => {}
                std::cmp::Ordering::Greater => {
                    self.writer.put(pk, pm.encode_value())?;
                    self.written += 1;
                }
            }
        }
        self.pending = Some((key, m));
        Ok(())
    }

    /// Finishes the table file and ingests it; returns the entries loaded.
    pub fn ingest(mut self) -> EngineResult<u64> {
        if let Some((pk, pm)) = self.pending.take() {
            self.writer.put(pk, pm.encode_value())?;
            self.written += 1;
        }
        if self.written == 0 {
            return Ok(0);
        }
        self.writer.finish()?;
        let mut io = IngestExternalFileOptions::default();
        io.set_move_files(true);
        self.index
            .db
            .ingest_external_file_opts(&io, vec![&self.path])?;
        Ok(self.written)
    }
}

impl Drop for BulkLoad<'_> {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn scan_iter<D: rocksdb::DBAccess>(
    it: &mut rocksdb::DBRawIteratorWithThreadMode<'_, D>,
    vol: u64,
    from: u64,
    to: u64,
    f: &mut impl FnMut(u64, u32, Mapping) -> bool,
) -> EngineResult<()> {
    it.seek(keys::index(vol, from, 0));
    while it.valid() {
        let (Some(k), Some(v)) = (it.key(), it.value()) else {
            break;
        };
        match keys::parse_index(k) {
            Some((kv, c, g)) if kv == vol && c < to => {
                if !f(c, g, Mapping::decode_value(v)?) {
                    return Ok(());
                }
            }
            _ => break,
        }
        it.next();
    }
    it.status()?;
    Ok(())
}

#[cfg(test)]
mod bulk_tests {
    use super::*;
    use crate::format::Location;

    fn loc(container: u64) -> Mapping {
        Mapping::Data(Location {
            container,
            slot: 1,
            len: 4096,
            flags: 0,
            crc: 7,
            hash: 9,
        })
    }

    #[test]
    fn replay_marker_round_trips_and_reads_the_old_format() {
        let m = Marker {
            applied: (7, 3),
            sealed: vec![(5, 40), (6, 12)],
            frozen: (9, 17),
        };
        assert_eq!(Marker::decode(&m.encode()).unwrap(), m);
        assert_eq!(m.records_applied(4), u64::MAX);
        assert_eq!(m.records_applied(5), 40);
        assert_eq!(m.records_applied(7), 3);
        assert_eq!(m.records_applied(8), 0);
        // The 16-byte marker from before in-place rewrites: nothing mutable.
        let old = Marker::decode(&m.encode()[..16]).unwrap();
        assert_eq!(old, Marker::at((7, 3), (u64::MAX, u32::MAX)));
        for bad in [0usize, 15, 17, 27, 29, 43] {
            assert!(Marker::decode(&vec![0u8; bad]).is_err(), "{bad}");
        }
        let idx_dir = tempfile::tempdir().unwrap();
        let idx = Index::open(&idx_dir.path().join("index")).unwrap();
        assert_eq!(idx.marker(3).unwrap(), Marker::at((0, 0), (0, 0)));
        idx.commit(3, &[(1, 1, loc(2))], &m).unwrap();
        assert_eq!(idx.marker(3).unwrap(), m);
    }

    #[test]
    fn bulk_load_ingests_replaces_equal_keys_and_rejects_disorder() {
        let dir = tempfile::tempdir().unwrap();
        let idx = Index::open(&dir.path().join("index")).unwrap();
        let mut l = idx.bulk_load(5, dir.path().join("a.sst")).unwrap();
        l.add(1, 1, loc(1)).unwrap();
        l.add(1, 3, loc(2)).unwrap();
        l.add(1, 3, loc(3)).unwrap(); // same key: the later entry wins
        l.add(9, 1, Mapping::Unmapped).unwrap();
        assert_eq!(l.ingest().unwrap(), 3);
        assert_eq!(idx.lookup(5, 1, 2).unwrap(), Some((1, loc(1))));
        assert_eq!(idx.lookup(5, 1, 3).unwrap(), Some((3, loc(3))));
        assert_eq!(idx.lookup(5, 9, 4).unwrap(), Some((1, Mapping::Unmapped)));
        assert_eq!(idx.lookup(6, 1, 3).unwrap(), None);
        assert!(!dir.path().join("a.sst").exists());

        // Entries going backwards are corrupt; nothing is ingested.
        let mut l = idx.bulk_load(6, dir.path().join("b.sst")).unwrap();
        l.add(4, 1, loc(1)).unwrap();
        assert!(l.add(3, 1, loc(1)).is_err());
        drop(l);
        assert_eq!(idx.lookup(6, 4, 1).unwrap(), None);
        assert!(!dir.path().join("b.sst").exists());

        // An empty load is a no-op.
        let l = idx.bulk_load(7, dir.path().join("c.sst")).unwrap();
        assert_eq!(l.ingest().unwrap(), 0);
    }
}
