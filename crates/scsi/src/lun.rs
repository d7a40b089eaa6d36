//! SAM-5 LUN encoding: the 8-byte LUN field <-> a LUN number, and the
//! REPORT LUNS parameter data built from it.
//!
//! Supported addressing methods: peripheral device (bus 0, LUN < 256), flat
//! space (LUN < 16384) and extended flat space (LUN < 2^24). `encode`
//! always picks the shortest method, so `decode(encode(n)) == Some(n)` for
//! every `n < 2^24`; `decode` rejects multi-level LUNs and bus numbers.

use crate::sense::Sense;

/// Largest LUN number [`encode`] represents exactly.
pub const MAX_LUN: u64 = (1 << 24) - 1;

/// Decodes a single-level LUN field. `None` for addressing methods or
/// levels this target does not use.
pub fn decode(field: [u8; 8]) -> Option<u64> {
    let rest_zero = |from: usize| field[from..].iter().all(|b| *b == 0);
    match field[0] >> 6 {
        // Peripheral device addressing; bus identifier must be 0.
        0b00 if field[0] == 0 && rest_zero(2) => Some(u64::from(field[1])),
        // Flat space addressing.
        0b01 if rest_zero(2) => Some((u64::from(field[0] & 0x3f) << 8) | u64::from(field[1])),
        // Extended flat space (extended addressing, length 1, method 2).
        0b11 if field[0] == 0xd2 && rest_zero(4) => {
            Some((u64::from(field[1]) << 16) | (u64::from(field[2]) << 8) | u64::from(field[3]))
        }
        _ => None,
    }
}

/// Encodes `lun` with the shortest addressing method. Numbers above
/// [`MAX_LUN`] are reduced modulo 2^24 (callers never allocate them).
pub fn encode(lun: u64) -> [u8; 8] {
    let mut f = [0u8; 8];
    let [.., b2, b1, b0] = lun.to_be_bytes();
    if lun < 256 {
        f[1] = b0;
    } else if lun < 16384 {
        f[0] = 0x40 | b1;
        f[1] = b0;
    } else {
        f[0] = 0xd2;
        f[1] = b2;
        f[2] = b1;
        f[3] = b0;
    }
    f
}

/// REPORT LUNS parameter data for `luns` (SELECT REPORT `select`).
pub(crate) fn report_luns_data(select: u8, luns: &[u64]) -> Result<Vec<u8>, Sense> {
    let listed: &[u64] = match select {
        0x00 | 0x02 => luns,
        // Well-known logical units only: we have none.
        0x01 => &[],
        _ => return Err(Sense::invalid_cdb_field(2, None)),
    };
    let mut d = Vec::with_capacity(8 + 8 * listed.len());
    d.extend_from_slice(&crate::sat_u32(8 * listed.len()).to_be_bytes());
    d.extend_from_slice(&[0; 4]);
    for lun in listed {
        d.extend_from_slice(&encode(*lun));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for lun in [0, 1, 255, 256, 16383, 16384, MAX_LUN] {
            assert_eq!(decode(encode(lun)), Some(lun), "lun {lun}");
        }
        assert_eq!(encode(1), [0, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(encode(300), [0x41, 0x2c, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn rejects_other_forms() {
        assert_eq!(decode([0x01, 0, 0, 0, 0, 0, 0, 0]), None); // bus 1
        assert_eq!(decode([0, 1, 0, 1, 0, 0, 0, 0]), None); // second level
        assert_eq!(decode([0x80, 0, 0, 0, 0, 0, 0, 0]), None); // logical unit addressing
        assert_eq!(decode([0x40, 5, 0, 0, 0, 0, 0, 0]), Some(5));
    }
}
