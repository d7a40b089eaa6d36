//! CRC32C digests (RFC 7143 §11.1 and Appendix B).
//!
//! The digest covers the header (BHS + AHS) or the data segment including its
//! padding; on the wire it is sent least-significant byte first. The `crc32c`
//! crate uses SSE4.2 when the CPU has it.

/// CRC32C of `parts` taken as one contiguous byte string.
pub fn crc32c(parts: &[&[u8]]) -> u32 {
    parts
        .iter()
        .fold(0u32, |crc, p| crc32c::crc32c_append(crc, p))
}

/// The 4 wire bytes of a digest value.
pub fn to_wire(crc: u32) -> [u8; 4] {
    crc.to_le_bytes()
}

/// Reads a digest from its 4 wire bytes.
pub fn from_wire(b: [u8; 4]) -> u32 {
    u32::from_le_bytes(b)
}

/// Padding needed after a data segment of `len` bytes.
pub fn pad_len(len: usize) -> usize {
    (4 - len % 4) % 4
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 7143 Appendix B test vectors.
    #[test]
    fn rfc_vectors() {
        assert_eq!(to_wire(crc32c(&[&[0u8; 32]])), [0xaa, 0x36, 0x91, 0x8a]);
        assert_eq!(to_wire(crc32c(&[&[0xffu8; 32]])), [0x43, 0xab, 0xa8, 0x62]);
        let inc: Vec<u8> = (0u8..32).collect();
        assert_eq!(to_wire(crc32c(&[&inc])), [0x4e, 0x79, 0xdd, 0x46]);
        let dec: Vec<u8> = (0u8..32).rev().collect();
        assert_eq!(to_wire(crc32c(&[&dec])), [0x5c, 0xdb, 0x3f, 0x11]);
    }

    #[test]
    fn split_equals_whole() {
        let data: Vec<u8> = (0..100u8).collect();
        assert_eq!(crc32c(&[&data]), crc32c(&[&data[..33], &data[33..]]));
    }

    #[test]
    fn padding() {
        assert_eq!(pad_len(0), 0);
        assert_eq!(pad_len(1), 3);
        assert_eq!(pad_len(4), 0);
        assert_eq!(pad_len(511), 1);
    }
}
