//! Fuzzes the engine's byte formats (`depot_engine::format`) and the
//! backend's object keys: what replay reads from flash and what a restore
//! reads from the backend. The first input byte picks the parser:
//!
//! 0. container header; 1. tlog header; 2. one tlog record; 3. an index
//!    value; 4. a checkpoint object, whole (`decode_checkpoint`) and
//!    streamed in ranged reads (`stream_checkpoint`); 5. a whole tlog as
//!    replay and restore walk it (header, then records until the first
//!    torn one); 6. an index key; 7. a backend object key.
//!
//! Invariants checked: no panic; whatever decodes re-encodes and decodes
//! back to itself (byte for byte where the format has no reserved bytes);
//! the streamed and the whole checkpoint reader agree.
#![no_main]

use std::ops::Range;

use depot_engine::backend::keys as obj;
use depot_engine::format::{
    CHECKPOINT_ENTRY_SIZE, CHECKPOINT_HEADER_SIZE, CheckpointHeader, ContainerHeader,
    INDEX_VALUE_SIZE, Mapping, TLOG_HEADER_SIZE, TLOG_RECORD_SIZE, TlogHeader, TlogRecord,
    decode_checkpoint, encode_checkpoint, keys, stream_checkpoint,
};
use depot_engine::{EngineError, EngineResult};
use libfuzzer_sys::fuzz_target;

fn container_header(b: &[u8]) {
    if let Ok(h) = ContainerHeader::decode(b) {
        let enc = h.encode();
        // Magic, version, flags, cluster size, ids and crc: nothing in the
        // checked 36 bytes is free.
        assert_eq!(&enc[..36], &b[..36]);
        assert_eq!(ContainerHeader::decode(&enc).expect("re-decodes"), h);
    }
}

fn tlog_header(b: &[u8]) {
    if let Ok(h) = TlogHeader::decode(b) {
        assert_eq!(TlogHeader::decode(&h.encode()).expect("re-decodes"), h);
    }
}

fn tlog_record(b: &[u8]) -> Option<TlogRecord> {
    let r = TlogRecord::decode(b)?;
    let mut enc = [0u8; TLOG_RECORD_SIZE];
    r.encode(&mut enc);
    assert_eq!(TlogRecord::decode(&enc), Some(r));
    Some(r)
}

fn index_value(b: &[u8]) {
    if let Ok(m) = Mapping::decode_value(b) {
        let enc = m.encode_value();
        if let Mapping::Data(_) = m {
            assert_eq!(&enc[..], &b[..INDEX_VALUE_SIZE]);
        }
        assert_eq!(Mapping::decode_value(&enc).expect("re-decodes"), m);
    }
}

fn checkpoint(step: u8, b: &[u8]) {
    let get = |r: Range<u64>| -> EngineResult<bytes::Bytes> {
        let (Ok(s), Ok(e)) = (usize::try_from(r.start), usize::try_from(r.end)) else {
            return Err(EngineError::ObjectNotFound("range".into()));
        };
        b.get(s..e)
            .map(bytes::Bytes::copy_from_slice)
            .ok_or_else(|| EngineError::ObjectNotFound("short".into()))
    };
    let step = u64::from(step) * 7;
    let mut streamed = Vec::new();
    let st = stream_checkpoint(get, step, |e| {
        streamed.push(e);
        Ok(())
    });
    match decode_checkpoint(b) {
        Ok((vol, cut, entries)) => {
            let h = st.expect("a whole checkpoint also streams");
            assert_eq!(
                (h.volume_id, h.cut_tlog, h.entries),
                (vol, cut, entries.len() as u64)
            );
            assert_eq!(streamed, entries);
            let enc = encode_checkpoint(vol, cut, &entries);
            assert_eq!(enc.len(), b.len());
            assert_eq!(
                decode_checkpoint(&enc).expect("re-decodes"),
                (vol, cut, entries)
            );
        }
        Err(_) => {
            if let Ok(h) = st {
                // The streaming reader reads only what the header says, so
                // it may accept an object with bytes after its end.
                let len = h.object_len().expect("streamed length") as usize;
                assert!(len < b.len());
                let (vol, cut, entries) =
                    decode_checkpoint(&b[..len]).expect("the object itself decodes");
                assert_eq!((vol, cut), (h.volume_id, h.cut_tlog));
                assert_eq!(streamed, entries);
            }
        }
    }
    if let Ok(h) = CheckpointHeader::decode(b)
        && let Some(len) = h.object_len()
    {
        assert!(len >= (CHECKPOINT_HEADER_SIZE + 4) as u64);
        assert_eq!(
            (len - CHECKPOINT_HEADER_SIZE as u64 - 4) % CHECKPOINT_ENTRY_SIZE as u64,
            0
        );
    }
}

/// A tlog as replay (flash) and restore (backend) read it.
fn tlog_file(b: &[u8]) {
    let Ok(h) = TlogHeader::decode(b) else { return };
    let mut recs = Vec::new();
    for rec in b
        .get(TLOG_HEADER_SIZE..)
        .unwrap_or_default()
        .chunks(TLOG_RECORD_SIZE)
    {
        match tlog_record(rec) {
            Some(r) => recs.push(r),
            None => break,
        }
    }
    // What replay writes back after cutting a torn tail reads the same.
    let mut out = h.encode().to_vec();
    let mut enc = [0u8; TLOG_RECORD_SIZE];
    for r in &recs {
        r.encode(&mut enc);
        out.extend_from_slice(&enc);
    }
    assert_eq!(TlogHeader::decode(&out).expect("re-decodes"), h);
    let again: Vec<TlogRecord> = out[TLOG_HEADER_SIZE..]
        .chunks(TLOG_RECORD_SIZE)
        .map(|c| TlogRecord::decode(c).expect("re-decodes"))
        .collect();
    assert_eq!(again, recs);
}

fn index_key(b: &[u8]) {
    if let Some((vol, cluster, generation)) = keys::parse_index(b) {
        assert_eq!(&keys::index(vol, cluster, generation)[..], b);
    }
}

fn object_key(b: &[u8]) {
    let Ok(key) = std::str::from_utf8(b) else {
        return;
    };
    if let Some(name) = obj::catalog_name(key) {
        assert_eq!(obj::catalog(name), key);
    }
    if let Some((vol, o)) = obj::parse_volume_object(key) {
        assert_eq!(obj::volume_of(key), Some(vol));
        let built = match o {
            obj::VolumeObject::Manifest => obj::manifest(vol),
            obj::VolumeObject::Container(s, g) => obj::container(vol, s, g),
            obj::VolumeObject::Tlog(s, g) => obj::tlog(vol, s, g),
            obj::VolumeObject::Checkpoint(s, g) => obj::checkpoint(vol, s, g),
        };
        // Hex digits may come in either case; the built key is lower case.
        assert_eq!(built, key.to_ascii_lowercase());
        assert_eq!(obj::parse_volume_object(&built), Some((vol, o)));
        assert!(built.starts_with(&obj::volume_prefix(vol)));
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 8 {
        0 => container_header(rest),
        1 => tlog_header(rest),
        2 => {
            tlog_record(rest);
        }
        3 => index_value(rest),
        4 => {
            let Some((&step, rest)) = rest.split_first() else {
                return;
            };
            checkpoint(step, rest)
        }
        5 => tlog_file(rest),
        6 => index_key(rest),
        _ => object_key(rest),
    }
});
