//! The DTL's messages from another router and the holder's own state file:
//! `Open`, `Write`, `Commit` and `ReplicaState` parsed from untrusted JSON
//! never panic, their checks accept only what the protocol allows (a file
//! name that round-trips, a write that ends below the largest file, a
//! commit with a number and bounded segments), and what passes round-trips.
#![no_main]

use depot_dtl::ReplicaState;
use depot_dtl::proto::{
    Commit, MAX_FILE_BYTES, MAX_PIECES, MAX_WRITE_BYTES, Open, Write, file_name, parse_file_name,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data)
        && let Some((kind, seq)) = parse_file_name(s)
    {
        assert_eq!(file_name(kind, seq), s.to_ascii_lowercase());
    }
    if let Ok(o) = serde_json::from_slice::<Open>(data) {
        let back: Open = serde_json::from_slice(&serde_json::to_vec(&o).unwrap()).unwrap();
        assert_eq!(back, o);
    }
    if let Ok(w) = serde_json::from_slice::<Write>(data) {
        let len = data.len() * 1024;
        if let Ok((kind, seq)) = w.check(len) {
            assert_eq!(parse_file_name(&w.file), Some((kind, seq)));
            assert!(len <= MAX_WRITE_BYTES);
            assert!(w.offset + len as u64 <= MAX_FILE_BYTES);
        }
    }
    if let Ok(c) = serde_json::from_slice::<Commit>(data)
        && c.check().is_ok()
    {
        assert!(c.batch > 0);
        assert!(c.pieces.len() <= MAX_PIECES);
        assert!(c.pieces.iter().map(|p| p.len).sum::<u64>() <= MAX_WRITE_BYTES as u64);
        for p in &c.pieces {
            assert!(parse_file_name(&p.file).is_some());
            assert!(p.offset + p.len <= MAX_FILE_BYTES);
        }
        let back: Commit = serde_json::from_slice(&serde_json::to_vec(&c).unwrap()).unwrap();
        assert_eq!(back, c);
    }
    if let Ok(st) = serde_json::from_slice::<ReplicaState>(data) {
        let back: ReplicaState = serde_json::from_slice(&serde_json::to_vec(&st).unwrap()).unwrap();
        assert_eq!(back, st);
    }
});
