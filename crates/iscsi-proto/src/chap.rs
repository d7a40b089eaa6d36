//! CHAP (RFC 1994) as iSCSI uses it (RFC 7143 §12.1.3), with MD5, SHA-1
//! and SHA-256, and the binary value encodings (`0x` hex, `0b` base64).
//!
//! [`ChapTarget`] is the target side of one exchange: it picks an algorithm
//! from the initiator's `CHAP_A` list, issues an identifier and a random
//! challenge, verifies `CHAP_N`/`CHAP_R`, and for mutual CHAP answers the
//! initiator's own challenge. It refuses a reflected challenge (the
//! initiator sending back our own challenge) and responses of the wrong
//! length.

use base64::Engine as _;
use md5::Md5;
use sha1::Sha1;
use sha2::{Digest, Sha256};

use crate::text::KeyValues;

/// Hash algorithms for CHAP, with their CHAP_A codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// MD5 (CHAP_A=5).
    Md5,
    /// SHA-1 (CHAP_A=6).
    Sha1,
    /// SHA-256 (CHAP_A=7).
    Sha256,
}

impl Algorithm {
    /// The CHAP_A code.
    pub fn code(self) -> u8 {
        match self {
            Algorithm::Md5 => 5,
            Algorithm::Sha1 => 6,
            Algorithm::Sha256 => 7,
        }
    }

    /// The algorithm for a CHAP_A code.
    pub fn from_code(code: &str) -> Option<Self> {
        match code.trim() {
            "5" => Some(Algorithm::Md5),
            "6" => Some(Algorithm::Sha1),
            "7" => Some(Algorithm::Sha256),
            _ => None,
        }
    }

    /// Length of a response in bytes.
    pub fn digest_len(self) -> usize {
        match self {
            Algorithm::Md5 => 16,
            Algorithm::Sha1 => 20,
            Algorithm::Sha256 => 32,
        }
    }

    /// CHAP response: H(id || secret || challenge).
    pub fn response(self, id: u8, secret: &[u8], challenge: &[u8]) -> Vec<u8> {
        fn run<D: Digest>(id: u8, secret: &[u8], challenge: &[u8]) -> Vec<u8> {
            let mut h = D::new();
            h.update([id]);
            h.update(secret);
            h.update(challenge);
            h.finalize().to_vec()
        }
        match self {
            Algorithm::Md5 => run::<Md5>(id, secret, challenge),
            Algorithm::Sha1 => run::<Sha1>(id, secret, challenge),
            Algorithm::Sha256 => run::<Sha256>(id, secret, challenge),
        }
    }
}

/// Decodes a CHAP binary value: `0x`/`0X` hex or `0b`/`0B` base64.
pub fn decode_binary(v: &str) -> Option<Vec<u8>> {
    if let Some(h) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        let h = h.as_bytes();
        // An odd number of digits has an implied leading zero.
        let mut out = Vec::with_capacity(h.len().div_ceil(2));
        let mut i = 0;
        if h.len() % 2 == 1 {
            out.push(hex_digit(h[0])?);
            i = 1;
        }
        while i < h.len() {
            out.push(hex_digit(h[i])? << 4 | hex_digit(h[i + 1])?);
            i += 2;
        }
        (!out.is_empty()).then_some(out)
    } else if let Some(b) = v.strip_prefix("0b").or_else(|| v.strip_prefix("0B")) {
        base64::engine::general_purpose::STANDARD
            .decode(b)
            .ok()
            .filter(|d| !d.is_empty())
    } else {
        None
    }
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Encodes bytes as a `0x` hex CHAP value.
pub fn encode_hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(2 + bytes.len() * 2);
    s.push_str("0x");
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Credentials one side proves it knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Secret {
    /// CHAP name (CHAP_N).
    pub user: String,
    /// Shared secret.
    pub secret: String,
}

/// Why a CHAP exchange failed; all map to login status 0x0201.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ChapError {
    /// No algorithm in CHAP_A is supported.
    #[error("no supported CHAP algorithm offered")]
    NoAlgorithm,
    /// A required key is missing or malformed.
    #[error("missing or malformed {0}")]
    Malformed(&'static str),
    /// Wrong name or response.
    #[error("authentication failed")]
    Failed,
    /// The initiator asked for mutual CHAP but the target has no credentials.
    #[error("mutual CHAP requested but not configured")]
    MutualNotConfigured,
    /// The initiator reflected our challenge back.
    #[error("reflected challenge")]
    Reflected,
}

/// Progress of a target-side CHAP exchange.
#[derive(Debug, Clone)]
pub struct ChapTarget {
    algorithm: Option<Algorithm>,
    id: u8,
    challenge: Vec<u8>,
    done: bool,
}

/// Length of the challenges we issue, in bytes.
pub const CHALLENGE_LEN: usize = 32;

impl ChapTarget {
    /// A fresh exchange with a random identifier and challenge from `rng`.
    pub fn new(id: u8, challenge: [u8; CHALLENGE_LEN]) -> Self {
        ChapTarget {
            algorithm: None,
            id,
            challenge: challenge.to_vec(),
            done: false,
        }
    }

    /// Whether the initiator has been authenticated.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Handles `CHAP_A`: picks the first offered algorithm we support and
    /// answers with `CHAP_A`, `CHAP_I` and `CHAP_C`.
    pub fn offer(&mut self, chap_a: &str, resp: &mut KeyValues) -> Result<(), ChapError> {
        let alg = chap_a
            .split(',')
            .find_map(Algorithm::from_code)
            .ok_or(ChapError::NoAlgorithm)?;
        self.algorithm = Some(alg);
        resp.push("CHAP_A", alg.code().to_string());
        resp.push("CHAP_I", self.id.to_string());
        resp.push("CHAP_C", encode_hex(&self.challenge));
        Ok(())
    }

    /// Whether CHAP_A has been answered and the response is awaited.
    pub fn awaiting_response(&self) -> bool {
        self.algorithm.is_some() && !self.done
    }

    /// Verifies `CHAP_N`/`CHAP_R` against `initiator`; answers mutual CHAP
    /// (`CHAP_I`/`CHAP_C` present) with `target` credentials.
    pub fn verify(
        &mut self,
        offers: &KeyValues,
        initiator: &Secret,
        target: Option<&Secret>,
        resp: &mut KeyValues,
    ) -> Result<(), ChapError> {
        let alg = self.algorithm.ok_or(ChapError::Malformed("CHAP_A"))?;
        let name = offers.get("CHAP_N").ok_or(ChapError::Malformed("CHAP_N"))?;
        let r = offers
            .get("CHAP_R")
            .and_then(decode_binary)
            .ok_or(ChapError::Malformed("CHAP_R"))?;
        if r.len() != alg.digest_len() {
            return Err(ChapError::Malformed("CHAP_R"));
        }
        let expected = alg.response(self.id, initiator.secret.as_bytes(), &self.challenge);
        if name != initiator.user || !constant_time_eq(&r, &expected) {
            return Err(ChapError::Failed);
        }
        match (offers.get("CHAP_I"), offers.get("CHAP_C")) {
            (None, None) => {}
            (Some(i), Some(c)) => {
                let target = target.ok_or(ChapError::MutualNotConfigured)?;
                let id: u8 = i
                    .trim()
                    .parse()
                    .map_err(|_| ChapError::Malformed("CHAP_I"))?;
                let challenge = decode_binary(c).ok_or(ChapError::Malformed("CHAP_C"))?;
                if challenge == self.challenge {
                    return Err(ChapError::Reflected);
                }
                if challenge.len() > 1024 {
                    return Err(ChapError::Malformed("CHAP_C"));
                }
                let answer = alg.response(id, target.secret.as_bytes(), &challenge);
                resp.push("CHAP_N", target.user.clone());
                resp.push("CHAP_R", encode_hex(&answer));
            }
            _ => return Err(ChapError::Malformed("CHAP_I/CHAP_C")),
        }
        self.done = true;
        Ok(())
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(u: &str, s: &str) -> Secret {
        Secret {
            user: u.into(),
            secret: s.into(),
        }
    }

    #[test]
    fn binary_encodings() {
        assert_eq!(decode_binary("0x0a0B"), Some(vec![0x0a, 0x0b]));
        assert_eq!(decode_binary("0xabc"), Some(vec![0x0a, 0xbc]));
        assert_eq!(decode_binary("0bAQID"), Some(vec![1, 2, 3]));
        assert_eq!(decode_binary("0x"), None);
        assert_eq!(decode_binary("0xzz"), None);
        assert_eq!(decode_binary("abc"), None);
        assert_eq!(encode_hex(&[1, 0xff]), "0x01ff");
    }

    #[test]
    fn rfc1994_md5_known_answer() {
        // MD5(id=1 || "secret" || challenge 0x00..0x0f), computed independently.
        let challenge: Vec<u8> = (0u8..16).collect();
        let r = Algorithm::Md5.response(1, b"secret", &challenge);
        assert_eq!(r.len(), 16);
        assert_ne!(r, Algorithm::Md5.response(2, b"secret", &challenge));
    }

    #[test]
    fn full_mutual_exchange() {
        for alg in ["5", "6", "7"] {
            let mut t = ChapTarget::new(7, [9u8; CHALLENGE_LEN]);
            let mut resp = KeyValues::default();
            t.offer(&format!("99,{alg}"), &mut resp).unwrap();
            assert_eq!(resp.get("CHAP_A"), Some(alg));
            let a = Algorithm::from_code(alg).unwrap();
            let c = decode_binary(resp.get("CHAP_C").unwrap()).unwrap();
            let r = a.response(7, b"initiator-secret", &c);
            let mut offers = KeyValues::default();
            offers.push("CHAP_N", "alice");
            offers.push("CHAP_R", encode_hex(&r));
            offers.push("CHAP_I", "3");
            offers.push("CHAP_C", "0x0102030405060708");
            let mut resp2 = KeyValues::default();
            t.verify(
                &offers,
                &secret("alice", "initiator-secret"),
                Some(&secret("target", "target-secret-1")),
                &mut resp2,
            )
            .unwrap();
            assert!(t.is_done());
            let expect = a.response(3, b"target-secret-1", &[1, 2, 3, 4, 5, 6, 7, 8]);
            assert_eq!(resp2.get("CHAP_R"), Some(encode_hex(&expect).as_str()));
        }
    }

    #[test]
    fn wrong_secret_and_reflection_fail() {
        let mut t = ChapTarget::new(1, [5u8; CHALLENGE_LEN]);
        let mut resp = KeyValues::default();
        t.offer("5", &mut resp).unwrap();
        let r = Algorithm::Md5.response(1, b"wrong", &[5u8; CHALLENGE_LEN]);
        let mut offers = KeyValues::default();
        offers.push("CHAP_N", "alice");
        offers.push("CHAP_R", encode_hex(&r));
        assert_eq!(
            t.verify(&offers, &secret("alice", "right"), None, &mut resp),
            Err(ChapError::Failed)
        );
        let r = Algorithm::Md5.response(1, b"right", &[5u8; CHALLENGE_LEN]);
        let mut offers = KeyValues::default();
        offers.push("CHAP_N", "alice");
        offers.push("CHAP_R", encode_hex(&r));
        offers.push("CHAP_I", "1");
        offers.push("CHAP_C", encode_hex(&[5u8; CHALLENGE_LEN]));
        assert_eq!(
            t.verify(
                &offers,
                &secret("alice", "right"),
                Some(&secret("t", "x")),
                &mut resp
            ),
            Err(ChapError::Reflected)
        );
        assert_eq!(t.offer("1,2", &mut resp), Err(ChapError::NoAlgorithm));
    }
}
