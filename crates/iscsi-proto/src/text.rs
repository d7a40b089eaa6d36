//! Text data segments: `key=value` pairs, each terminated by a NUL byte
//! (RFC 7143 §6). Used by Login and Text PDUs.
//!
//! Parsing is bounded: key names are at most [`MAX_KEY_LEN`] bytes and values
//! at most [`MAX_VALUE_LEN`]; a segment that breaks these rules, lacks an `=`,
//! or is not UTF-8 is an error the login answers with an initiator-error
//! status. Order is preserved, since responses follow the order of offers.

use nom::IResult;
use nom::Parser;
use nom::bytes::complete::{tag, take_till, take_while1};
use nom::combinator::all_consuming;
use nom::multi::many0;

/// Longest key name accepted (RFC 7143 §6.1: 63 bytes).
pub const MAX_KEY_LEN: usize = 63;
/// Longest value accepted (CHAP challenges and responses are the longest:
/// 1024 binary bytes as hex).
pub const MAX_VALUE_LEN: usize = 8192;

/// Ordered `key=value` pairs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyValues(pub Vec<(String, String)>);

/// A malformed text segment.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum TextError {
    /// Not a sequence of NUL-terminated `key=value` entries.
    #[error("malformed text segment")]
    Malformed,
    /// A key or value is longer than allowed.
    #[error("key or value too long")]
    TooLong,
    /// Not valid UTF-8.
    #[error("text is not UTF-8")]
    NotUtf8,
}

fn is_key_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'+' | b'@' | b'_' | b'#')
}

fn pair(i: &[u8]) -> IResult<&[u8], (&[u8], &[u8])> {
    let (i, (k, _, v, _)) = (
        take_while1(is_key_char),
        tag(&b"="[..]),
        take_till(|c| c == 0),
        tag(&b"\0"[..]),
    )
        .parse(i)?;
    Ok((i, (k, v)))
}

impl KeyValues {
    /// Parses a text data segment. Trailing NUL padding is tolerated, as is a
    /// final entry without its NUL (some initiators omit it).
    pub fn parse(data: &[u8]) -> Result<Self, TextError> {
        let mut end = data.len();
        while end > 0 && data[end - 1] == 0 {
            end -= 1;
        }
        if end == 0 {
            return Ok(KeyValues::default());
        }
        let terminated;
        let body = if end < data.len() {
            &data[..=end]
        } else {
            terminated = [data, &[0]].concat();
            &terminated[..]
        };
        let (_, pairs) = all_consuming(many0(pair))
            .parse(body)
            .map_err(|_| TextError::Malformed)?;
        let mut out = Vec::with_capacity(pairs.len());
        for (k, v) in pairs {
            if k.len() > MAX_KEY_LEN || v.len() > MAX_VALUE_LEN {
                return Err(TextError::TooLong);
            }
            let k = std::str::from_utf8(k).map_err(|_| TextError::NotUtf8)?;
            let v = std::str::from_utf8(v).map_err(|_| TextError::NotUtf8)?;
            out.push((k.to_owned(), v.to_owned()));
        }
        Ok(KeyValues(out))
    }

    /// Value of the first entry named `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Appends an entry.
    pub fn push(&mut self, key: &str, value: impl Into<String>) {
        self.0.push((key.to_owned(), value.into()));
    }

    /// Whether no entries are present.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// First key that appears more than once, if any.
    pub fn duplicate_key(&self) -> Option<&str> {
        for (i, (k, _)) in self.0.iter().enumerate() {
            if self.0[..i].iter().any(|(k2, _)| k2 == k) {
                return Some(k);
            }
        }
        None
    }

    /// Encodes as a text data segment.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (k, v) in &self.0 {
            out.extend_from_slice(k.as_bytes());
            out.push(b'=');
            out.extend_from_slice(v.as_bytes());
            out.push(0);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_login_keys() {
        let kv = KeyValues::parse(
            b"InitiatorName=iqn.2007-10.com.github:sahlberg\0SessionType=Normal\0\0\0",
        )
        .unwrap();
        assert_eq!(kv.get("SessionType"), Some("Normal"));
        assert_eq!(kv.0.len(), 2);
        let kv = KeyValues::parse(b"A=1\0B=").unwrap();
        assert_eq!(kv.get("B"), Some(""));
        assert_eq!(KeyValues::parse(b"").unwrap(), KeyValues::default());
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(KeyValues::parse(b"novalue\0"), Err(TextError::Malformed));
        assert_eq!(KeyValues::parse(b"=x\0"), Err(TextError::Malformed));
        assert_eq!(KeyValues::parse(b"a b=x\0"), Err(TextError::Malformed));
        let long = format!("{}=1\0", "k".repeat(64));
        assert_eq!(KeyValues::parse(long.as_bytes()), Err(TextError::TooLong));
        assert_eq!(KeyValues::parse(b"a=\xff\0"), Err(TextError::NotUtf8));
    }

    #[test]
    fn duplicates_are_found() {
        let kv = KeyValues::parse(b"A=1\0B=2\0A=3\0").unwrap();
        assert_eq!(kv.duplicate_key(), Some("A"));
    }

    proptest! {
        #[test]
        fn round_trip(pairs in proptest::collection::vec(("[A-Za-z][A-Za-z0-9.]{0,20}", "[ -~]{0,40}"), 0..10)) {
            let kv = KeyValues(pairs);
            prop_assert_eq!(KeyValues::parse(&kv.encode()).unwrap(), kv);
        }

        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = KeyValues::parse(&bytes);
        }
    }
}
