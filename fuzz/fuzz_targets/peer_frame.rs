//! Fuzzes the router-to-router frame decoder (`depot_peer::frame`): bytes a
//! peer sends. The first input byte picks how the rest is fed to the
//! decoder (all at once, or in pieces of 1-16 bytes, as a socket may).
//!
//! Invariants checked: no panic; a buffer is never consumed past what a
//! frame needs; the frames (and the error, if any) do not depend on how the
//! bytes were split; every decoded frame re-encodes (or is refused as too
//! large) and decodes back to itself.
#![no_main]

use bytes::BytesMut;
use depot_peer::frame::{self, Decoder, Frame, MAX_BODY, MAX_HEADER};
use libfuzzer_sys::fuzz_target;

/// Frames decoded from `pieces` in order, then whether decoding stopped on
/// an error, and the bytes left buffered.
fn run<'a>(pieces: impl Iterator<Item = &'a [u8]>) -> (Vec<Frame>, bool, usize) {
    let mut dec = Decoder;
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for piece in pieces {
        buf.extend_from_slice(piece);
        loop {
            let before = buf.len();
            match dec.decode(&mut buf) {
                Ok(Some(f)) => {
                    assert!(f.body.len() <= MAX_BODY);
                    assert!(buf.len() < before, "a frame consumes bytes");
                    frames.push(f);
                }
                Ok(None) => {
                    assert_eq!(buf.len(), before, "an incomplete frame consumes nothing");
                    break;
                }
                Err(_) => return (frames, true, buf.len()),
            }
        }
    }
    (frames, false, buf.len())
}

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let (whole, whole_err, _) = run(std::iter::once(rest));
    let step = usize::from(split % 16) + 1;
    let (pieces, pieces_err, _) = run(rest.chunks(step));
    // A bad header is only seen once the whole frame is in, and the prefix
    // is checked as soon as it is in: splitting changes neither.
    assert_eq!(whole.len(), pieces.len());
    assert_eq!(whole_err, pieces_err);
    for (a, b) in whole.iter().zip(&pieces) {
        assert_eq!(a, b);
    }
    for f in &whole {
        match frame::encode(&f.head, &f.body) {
            Ok(wire) => {
                let mut buf = BytesMut::from(&wire[..]);
                let back = Decoder
                    .decode(&mut buf)
                    .expect("our own frame decodes")
                    .expect("our own frame is whole");
                assert_eq!(&back, f);
                assert!(buf.is_empty());
            }
            // Re-serialised JSON may be longer than what was received
            // (`1e9` becomes `1000000000.0`); refusing it is clean.
            Err(_) => {
                let h = serde_json::to_vec(&f.head).expect("a decoded head serialises");
                assert!(h.len() > MAX_HEADER);
            }
        }
    }
});
