//! INQUIRY data: the standard page and the vital product data pages
//! (0x00, 0x80, 0x83, 0x86, 0xB0, 0xB1, 0xB2). The target port designators
//! of page 0x83 (relative port, type 4; port group, type 5) describe the
//! port a command came through; REPORT TARGET PORT GROUPS, which lists
//! every group, lives in `alua`.
//!
//! Everything here is a pure function of the logical unit's identity, the
//! limits it advertises and the nexus asking. Invariants: the supported
//! page list is sorted and every listed page is served; identity (serial,
//! NAA) comes only from `LuConfig`, so it is stable across restarts and HA
//! nodes; ASCII fields are space padded printable ASCII.

use crate::Nexus;
use crate::sense::Sense;

/// The limits a logical unit advertises (Block Limits VPD and friends);
/// every check in `lu` uses the same numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Logical block size in bytes.
    pub block_size: u32,
    /// Logical blocks per physical block exponent.
    pub lbppbe: u8,
    /// MAXIMUM TRANSFER LENGTH in blocks.
    pub max_transfer_blocks: u32,
    /// OPTIMAL TRANSFER LENGTH in blocks.
    pub optimal_transfer_blocks: u32,
    /// MAXIMUM COMPARE AND WRITE LENGTH in blocks.
    pub max_caw_blocks: u8,
    /// MAXIMUM WRITE SAME LENGTH in blocks.
    pub max_write_same_blocks: u64,
    /// Thin provisioned (LBPME, UNMAP, WRITE SAME UNMAP).
    pub thin: bool,
    /// MAXIMUM UNMAP LBA COUNT (0 when not thin).
    pub max_unmap_blocks: u32,
    /// MAXIMUM UNMAP BLOCK DESCRIPTOR COUNT (0 when not thin).
    pub max_unmap_descriptors: u32,
    /// OPTIMAL UNMAP GRANULARITY in blocks.
    pub unmap_granularity_blocks: u32,
}

/// Identity strings of one logical unit.
#[derive(Debug, Clone, Copy)]
pub struct Identity<'a> {
    /// T10 vendor identification (8 chars).
    pub vendor: &'a str,
    /// Product identification (16 chars).
    pub product: &'a str,
    /// Product revision level (4 chars).
    pub revision: &'a str,
    /// Unit serial number.
    pub serial: &'a str,
    /// NAA IEEE Registered Extended designator.
    pub naa: &'a [u8; 16],
}

/// VPD pages served, in ascending order.
pub const SUPPORTED_VPD: [u8; 7] = [0x00, 0x80, 0x83, 0x86, 0xb0, 0xb1, 0xb2];

/// Version descriptors: SAM-5, iSCSI, SPC-4, SBC-3.
const VERSION_DESCRIPTORS: [u16; 4] = [0x00a0, 0x0960, 0x0460, 0x04c0];

/// Copies `s` into `out` as printable ASCII, space padded / truncated.
fn ascii_field(out: &mut [u8], s: &str) {
    out.fill(b' ');
    for (o, c) in out.iter_mut().zip(s.bytes()) {
        *o = if (0x20..0x7f).contains(&c) { c } else { b' ' };
    }
}

/// Standard INQUIRY data (96 bytes).
pub fn standard(id: &Identity<'_>, three_pc: bool) -> Vec<u8> {
    let mut d = vec![0u8; 96];
    d[0] = 0x00; // connected, direct access block device
    d[2] = 0x06; // SPC-4
    d[3] = 0x10 | 0x02; // HISUP, response data format 2
    d[4] = crate::sat_u8(d.len() - 5);
    // TPGS = 01b (implicit ALUA), 3PC when EXTENDED COPY is served.
    d[5] = 0x10 | if three_pc { 0x08 } else { 0 };
    d[6] = 0x00;
    d[7] = 0x02; // CMDQUE
    ascii_field(&mut d[8..16], id.vendor);
    ascii_field(&mut d[16..32], id.product);
    ascii_field(&mut d[32..36], id.revision);
    for (i, v) in VERSION_DESCRIPTORS.iter().enumerate() {
        d[58 + 2 * i..60 + 2 * i].copy_from_slice(&v.to_be_bytes());
    }
    d
}

/// Standard INQUIRY data for a LUN that does not exist (PQ=3, type 0x1F).
pub fn absent_lun() -> Vec<u8> {
    let mut d = vec![0u8; 36];
    d[0] = 0x7f;
    d[2] = 0x06;
    d[3] = 0x12;
    d[4] = 31;
    d
}

fn page(code: u8, body: &[u8]) -> Vec<u8> {
    let mut d = Vec::with_capacity(4 + body.len());
    d.push(0x00);
    d.push(code);
    d.extend_from_slice(&crate::sat_u16(body.len()).to_be_bytes());
    d.extend_from_slice(body);
    d
}

/// Builds one designation descriptor.
fn designator(proto_codeset: u8, piv_assoc_type: u8, value: &[u8]) -> Vec<u8> {
    let mut d = Vec::with_capacity(4 + value.len());
    d.push(proto_codeset);
    d.push(piv_assoc_type);
    d.push(0);
    d.push(crate::sat_u8(value.len()));
    d.extend_from_slice(value);
    d
}

/// A VPD page, or ILLEGAL REQUEST / INVALID FIELD IN CDB for pages this
/// logical unit does not serve.
pub fn vpd(
    code: u8,
    id: &Identity<'_>,
    limits: &Limits,
    nexus: &Nexus,
    tpg_id: u16,
) -> Result<Vec<u8>, Sense> {
    Ok(match code {
        0x00 => page(0x00, &SUPPORTED_VPD),
        0x80 => {
            let serial: Vec<u8> = id
                .serial
                .bytes()
                .map(|c| if (0x20..0x7f).contains(&c) { c } else { b' ' })
                .take(250)
                .collect();
            page(0x80, &serial)
        }
        0x83 => page(0x83, &device_identification(id, nexus, tpg_id)),
        0x86 => {
            let mut b = vec![0u8; 0x3c];
            // HEADSUP, ORDSUP, SIMPSUP.
            b[1] = 0x07;
            page(0x86, &b)
        }
        0xb0 => page(0xb0, &block_limits(limits)),
        0xb1 => {
            let mut b = vec![0u8; 0x3c];
            // MEDIUM ROTATION RATE 1: non-rotating (solid state).
            b[0..2].copy_from_slice(&1u16.to_be_bytes());
            page(0xb1, &b)
        }
        0xb2 => {
            let mut b = vec![0u8; 4];
            if limits.thin {
                // LBPU, LBPWS, LBPWS10, LBPRZ (unmapped blocks read zero).
                b[1] = 0x80 | 0x40 | 0x20 | 0x04;
                b[2] = 0x02; // provisioning type: thin
            }
            page(0xb2, &b)
        }
        _ => return Err(Sense::invalid_cdb_field(2, None)),
    })
}

fn device_identification(id: &Identity<'_>, nexus: &Nexus, tpg_id: u16) -> Vec<u8> {
    let mut b = Vec::new();
    // Logical unit: NAA (binary, association 0, type 3).
    b.extend(designator(0x01, 0x03, id.naa));
    // Logical unit: T10 vendor ID (ASCII, type 1): vendor + serial.
    let mut t10 = [b' '; 8].to_vec();
    ascii_field(&mut t10, id.vendor);
    t10.extend(
        id.serial
            .bytes()
            .map(|c| if (0x20..0x7f).contains(&c) { c } else { b' ' })
            .take(200),
    );
    b.extend(designator(0x02, 0x01, &t10));
    // Target port: SCSI name string (iSCSI, UTF-8, PIV, association 1,
    // type 8), NUL terminated and padded to a multiple of 4.
    let mut name = nexus.target_port().into_bytes();
    name.truncate(251);
    name.push(0);
    while !name.len().is_multiple_of(4) {
        name.push(0);
    }
    b.extend(designator(0x53, 0x80 | 0x10 | 0x08, &name));
    // Target port: relative target port identifier (type 4).
    let rel = nexus.relative_port_id.to_be_bytes();
    b.extend(designator(
        0x51,
        0x80 | 0x10 | 0x04,
        &[0, 0, rel[0], rel[1]],
    ));
    // Target port group (type 5).
    let tpg = tpg_id.to_be_bytes();
    b.extend(designator(
        0x51,
        0x80 | 0x10 | 0x05,
        &[0, 0, tpg[0], tpg[1]],
    ));
    b
}

fn block_limits(l: &Limits) -> Vec<u8> {
    let mut b = vec![0u8; 0x3c];
    // WSNZ: a WRITE SAME of 0 blocks ("to the end") is refused.
    b[0] = 0x01;
    b[1] = l.max_caw_blocks;
    let granularity = 1u16.checked_shl(u32::from(l.lbppbe)).unwrap_or(1);
    b[2..4].copy_from_slice(&granularity.to_be_bytes());
    b[4..8].copy_from_slice(&l.max_transfer_blocks.to_be_bytes());
    b[8..12].copy_from_slice(&l.optimal_transfer_blocks.to_be_bytes());
    b[12..16].copy_from_slice(&l.max_transfer_blocks.to_be_bytes());
    if l.thin {
        b[16..20].copy_from_slice(&l.max_unmap_blocks.to_be_bytes());
        b[20..24].copy_from_slice(&l.max_unmap_descriptors.to_be_bytes());
        b[24..28].copy_from_slice(&l.unmap_granularity_blocks.to_be_bytes());
        // UGAVALID, alignment 0.
        b[28] = 0x80;
    }
    b[32..40].copy_from_slice(&l.max_write_same_blocks.to_be_bytes());
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            block_size: 512,
            lbppbe: 3,
            max_transfer_blocks: 65536,
            optimal_transfer_blocks: 2048,
            max_caw_blocks: 32,
            max_write_same_blocks: 1 << 20,
            thin: true,
            max_unmap_blocks: 1 << 20,
            max_unmap_descriptors: 256,
            unmap_granularity_blocks: 8,
        }
    }

    fn nexus() -> Nexus {
        Nexus {
            initiator_name: "iqn.i".into(),
            isid: [1, 2, 3, 4, 5, 6],
            target_name: "iqn.2026-01.depot:vm1".into(),
            tpgt: 1,
            relative_port_id: 1,
        }
    }

    const NAA: [u8; 16] = [0x60, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15];

    fn id() -> Identity<'static> {
        Identity {
            vendor: "DEPOT",
            product: "vDisk",
            revision: "0001",
            serial: "SN1",
            naa: &NAA,
        }
    }

    #[test]
    fn standard_page_shape() {
        let d = standard(&id(), true);
        assert_eq!(d.len(), 96);
        assert_eq!(d[4] as usize, d.len() - 5);
        assert_eq!(&d[8..16], b"DEPOT   ");
        assert_eq!(d[5] & 0x08, 0x08);
        assert_eq!(&d[64..66], &[0x04, 0xc0]);
    }

    #[test]
    fn every_listed_page_is_served() {
        for p in SUPPORTED_VPD {
            let d = vpd(p, &id(), &limits(), &nexus(), 1).unwrap();
            assert_eq!(d[1], p);
            assert_eq!(usize::from(u16::from_be_bytes([d[2], d[3]])) + 4, d.len());
        }
        assert!(vpd(0x8f, &id(), &limits(), &nexus(), 1).is_err());
        let bl = vpd(0xb0, &id(), &limits(), &nexus(), 1).unwrap();
        assert_eq!(bl.len(), 64);
        assert_eq!(bl[3], 0x3c);
    }

    #[test]
    fn device_identification_designators() {
        let d = vpd(0x83, &id(), &limits(), &nexus(), 7).unwrap();
        // First designator: NAA, 16 bytes.
        assert_eq!(&d[4..8], &[0x01, 0x03, 0, 16]);
        assert_eq!(&d[8..24], &NAA);
        // Walk all designators; each length stays inside the page.
        let mut at = 4;
        let mut types = Vec::new();
        while at < d.len() {
            types.push(d[at + 1] & 0x0f);
            at += 4 + usize::from(d[at + 3]);
        }
        assert_eq!(at, d.len());
        assert_eq!(types, vec![3, 1, 8, 4, 5]);
    }
}
