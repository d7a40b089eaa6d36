//! The frame format between routers (sans-IO; spec in
//! docs/peer-protocol.md):
//!
//! ```text
//! u32 BE header length | u32 BE body length | header (JSON) | body (bytes)
//! ```
//!
//! Headers are at most [`MAX_HEADER`] bytes and bodies at most
//! [`MAX_BODY`]; a length beyond either is a protocol violation detected
//! before any of it is buffered, so a hostile peer cannot make a router
//! allocate more than one frame's bound.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use crate::error::PeerError;

/// Largest header, bytes.
pub const MAX_HEADER: usize = 64 * 1024;
/// Largest body, bytes.
pub const MAX_BODY: usize = 16 << 20;
/// Bytes before the header.
const PREFIX: usize = 8;

/// What a frame's header says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "lowercase")]
pub enum Head {
    /// First frame of a connection, from the client: who it is.
    Hello {
        /// The connecting router's name (its certificate must name it).
        router: String,
    },
    /// The server's answer to `Hello`.
    Welcome {
        /// The server router's name.
        router: String,
    },
    /// A request.
    Request {
        /// Id the response carries back.
        id: u64,
        /// Operation name.
        op: String,
        /// Operation arguments.
        #[serde(default)]
        msg: serde_json::Value,
    },
    /// A successful response.
    Response {
        /// The request's id.
        id: u64,
        /// Result.
        #[serde(default)]
        msg: serde_json::Value,
    },
    /// A refused request.
    Error {
        /// The request's id.
        id: u64,
        /// Why.
        message: String,
    },
}

/// One frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    /// Header.
    pub head: Head,
    /// Body (may be empty).
    pub body: Bytes,
}

/// Encodes a frame.
pub fn encode(head: &Head, body: &[u8]) -> Result<Bytes, PeerError> {
    let h = serde_json::to_vec(head).map_err(|e| PeerError::Protocol(e.to_string()))?;
    let (head_len, body_len) = match (u32::try_from(h.len()), u32::try_from(body.len())) {
        (Ok(hl), Ok(bl)) if h.len() <= MAX_HEADER && body.len() <= MAX_BODY => (hl, bl),
        _ => {
            return Err(PeerError::Protocol(format!(
                "frame too large: header {} body {}",
                h.len(),
                body.len()
            )));
        }
    };
    let mut out = BytesMut::with_capacity(PREFIX + h.len() + body.len());
    out.put_u32(head_len);
    out.put_u32(body_len);
    out.put_slice(&h);
    out.put_slice(body);
    Ok(out.freeze())
}

/// Splits whole frames off a receive buffer.
#[derive(Debug, Default)]
pub struct Decoder;

impl Decoder {
    /// The next whole frame in `buf`, or `None` if more bytes are needed.
    /// Lengths are checked as soon as the prefix is in.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, PeerError> {
        if buf.len() < PREFIX {
            return Ok(None);
        }
        let hlen = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        let blen = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]) as usize;
        if hlen > MAX_HEADER || blen > MAX_BODY {
            return Err(PeerError::Protocol(format!(
                "frame lengths out of bounds: header {hlen}, body {blen}"
            )));
        }
        if buf.len() < PREFIX + hlen + blen {
            buf.reserve(PREFIX + hlen + blen - buf.len());
            return Ok(None);
        }
        buf.advance(PREFIX);
        let h = buf.split_to(hlen);
        let body = buf.split_to(blen).freeze();
        let head = serde_json::from_slice(&h)
            .map_err(|e| PeerError::Protocol(format!("bad header: {e}")))?;
        Ok(Some(Frame { head, body }))
    }
}

#[cfg(test)]
// Test lengths just above the (small) limits.
#[allow(clippy::cast_possible_truncation)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn oversized_lengths_are_refused_before_buffering() {
        let mut b = BytesMut::new();
        b.put_u32(u32::MAX);
        b.put_u32(0);
        assert!(Decoder.decode(&mut b).is_err());
        let mut b = BytesMut::new();
        b.put_u32(2);
        b.put_u32((MAX_BODY + 1) as u32);
        assert!(Decoder.decode(&mut b).is_err());
    }

    #[test]
    fn garbage_headers_are_protocol_errors() {
        let mut b = BytesMut::new();
        b.put_u32(3);
        b.put_u32(0);
        b.put_slice(b"{x}");
        assert!(matches!(
            Decoder.decode(&mut b),
            Err(PeerError::Protocol(_))
        ));
    }

    proptest! {
        #[test]
        fn frames_round_trip_in_any_split(id in any::<u64>(), op in "[a-z.]{1,20}",
                                          body in proptest::collection::vec(any::<u8>(), 0..4096),
                                          cut in 0usize..5000) {
            let head = Head::Request { id, op, msg: serde_json::json!({"n": 1}) };
            let wire = encode(&head, &body).unwrap();
            let cut = cut.min(wire.len());
            let mut buf = BytesMut::from(&wire[..cut]);
            let mut d = Decoder;
            let first = d.decode(&mut buf).unwrap();
            if cut < wire.len() {
                prop_assert!(first.is_none());
                buf.extend_from_slice(&wire[cut..]);
                let f = d.decode(&mut buf).unwrap().unwrap();
                prop_assert_eq!(f.head, head);
                prop_assert_eq!(&f.body[..], &body[..]);
            } else {
                let f = first.unwrap();
                prop_assert_eq!(f.head, head);
                prop_assert_eq!(&f.body[..], &body[..]);
            }
            prop_assert!(buf.is_empty());
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut buf = BytesMut::from(&data[..]);
            let _ = Decoder.decode(&mut buf);
        }
    }
}
