//! The CDB decoder: bytes -> [`Cdb`] or the ILLEGAL REQUEST sense that
//! refuses them.
//!
//! Invariants: total and pure (any byte string yields `Ok` or sense data;
//! no panic, no allocation, no state); only the first `cdb_len(opcode)`
//! bytes are looked at, and a CDB shorter than that is refused as an
//! unknown opcode.

use super::{BlockIo, Cdb, Width, cdb_len, op, sa};
use crate::sense::Sense;

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be24(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([0, b[at], b[at + 1], b[at + 2]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(x)
}

/// Rejects a non-zero RDPROTECT/WRPROTECT/VRPROTECT/ORPROTECT field
/// (byte 1 bits 7..5): this target formats no protection information.
fn no_protect(cdb: &[u8]) -> Result<(), Sense> {
    if cdb[1] & 0xe0 != 0 {
        return Err(Sense::invalid_cdb_field(1, Some(7)));
    }
    Ok(())
}

fn rw10(cdb: &[u8]) -> BlockIo {
    BlockIo {
        lba: u64::from(be32(cdb, 2)),
        blocks: u32::from(be16(cdb, 7)),
        dpo: cdb[1] & 0x10 != 0,
        fua: cdb[1] & 0x08 != 0,
    }
}

fn rw12(cdb: &[u8]) -> BlockIo {
    BlockIo {
        lba: u64::from(be32(cdb, 2)),
        blocks: be32(cdb, 6),
        dpo: cdb[1] & 0x10 != 0,
        fua: cdb[1] & 0x08 != 0,
    }
}

fn rw16(cdb: &[u8]) -> BlockIo {
    BlockIo {
        lba: be64(cdb, 2),
        blocks: be32(cdb, 10),
        dpo: cdb[1] & 0x10 != 0,
        fua: cdb[1] & 0x08 != 0,
    }
}

fn rw6(cdb: &[u8]) -> BlockIo {
    let lba = be24(cdb, 1) & 0x1f_ffff;
    let blocks = if cdb[4] == 0 { 256 } else { u32::from(cdb[4]) };
    BlockIo {
        lba: u64::from(lba),
        blocks,
        dpo: false,
        fua: false,
    }
}

/// Decodes a CDB. Pure and total: any byte string yields `Ok` or the sense
/// data to report (20/00 unknown opcode, 24/00 invalid field).
pub fn parse(cdb: &[u8]) -> Result<Cdb, Sense> {
    let Some(&opcode) = cdb.first() else {
        return Err(Sense::invalid_opcode());
    };
    let Some(len) = cdb_len(opcode) else {
        return Err(Sense::invalid_opcode());
    };
    if cdb.len() < len {
        // A CDB shorter than its group code says cannot be decoded.
        return Err(Sense::invalid_opcode());
    }
    let c = &cdb[..len];
    use op::*;
    let parsed = match opcode {
        TEST_UNIT_READY => Cdb::TestUnitReady,
        REQUEST_SENSE => Cdb::RequestSense {
            desc: c[1] & 0x01 != 0,
            alloc_len: u32::from(c[4]),
        },
        INQUIRY => {
            if c[1] & 0x02 != 0 {
                // CMDDT is obsolete.
                return Err(Sense::invalid_cdb_field(1, Some(1)));
            }
            let evpd = c[1] & 0x01 != 0;
            if !evpd && c[2] != 0 {
                return Err(Sense::invalid_cdb_field(2, None));
            }
            Cdb::Inquiry {
                evpd,
                page: c[2],
                alloc_len: u32::from(be16(c, 3)),
            }
        }
        REPORT_LUNS => Cdb::ReportLuns {
            select: c[2],
            alloc_len: be32(c, 6),
        },
        READ_CAPACITY_10 => Cdb::ReadCapacity10,
        SERVICE_ACTION_IN_16 => match c[1] & 0x1f {
            sa::READ_CAPACITY_16 => Cdb::ReadCapacity16 {
                alloc_len: be32(c, 10),
            },
            sa::GET_LBA_STATUS => Cdb::GetLbaStatus {
                lba: be64(c, 2),
                alloc_len: be32(c, 10),
            },
            _ => return Err(Sense::invalid_cdb_field(1, Some(4))),
        },
        READ_6 => Cdb::Read(rw6(c), Width::W6),
        WRITE_6 => Cdb::Write(rw6(c), Width::W6),
        READ_10 => {
            no_protect(c)?;
            Cdb::Read(rw10(c), Width::W10)
        }
        READ_12 => {
            no_protect(c)?;
            Cdb::Read(rw12(c), Width::W12)
        }
        READ_16 => {
            no_protect(c)?;
            Cdb::Read(rw16(c), Width::W16)
        }
        WRITE_10 => {
            no_protect(c)?;
            Cdb::Write(rw10(c), Width::W10)
        }
        WRITE_12 => {
            no_protect(c)?;
            Cdb::Write(rw12(c), Width::W12)
        }
        WRITE_16 => {
            no_protect(c)?;
            Cdb::Write(rw16(c), Width::W16)
        }
        WRITE_VERIFY_10 | WRITE_VERIFY_12 | WRITE_VERIFY_16 => {
            no_protect(c)?;
            let mut io = match opcode {
                WRITE_VERIFY_10 => rw10(c),
                WRITE_VERIFY_12 => rw12(c),
                _ => rw16(c),
            };
            // WRITE AND VERIFY has no FUA bit: data is verified on the medium.
            io.fua = false;
            Cdb::WriteAndVerify {
                io,
                bytchk: c[1] & 0x06 != 0,
            }
        }
        VERIFY_10 | VERIFY_12 | VERIFY_16 => {
            no_protect(c)?;
            let mut io = match opcode {
                VERIFY_10 => rw10(c),
                VERIFY_12 => rw12(c),
                _ => rw16(c),
            };
            io.fua = false;
            let bytchk = (c[1] >> 1) & 0x03;
            if bytchk == 2 {
                return Err(Sense::invalid_cdb_field(1, Some(2)));
            }
            Cdb::Verify { io, bytchk }
        }
        ORWRITE_16 => {
            no_protect(c)?;
            Cdb::OrWrite(rw16(c))
        }
        COMPARE_AND_WRITE => {
            no_protect(c)?;
            Cdb::CompareAndWrite(BlockIo {
                lba: be64(c, 2),
                blocks: u32::from(c[13]),
                dpo: c[1] & 0x10 != 0,
                fua: c[1] & 0x08 != 0,
            })
        }
        WRITE_SAME_10 | WRITE_SAME_16 => {
            no_protect(c)?;
            let sixteen = opcode == WRITE_SAME_16;
            let (lba, blocks) = if sixteen {
                (be64(c, 2), be32(c, 10))
            } else {
                (u64::from(be32(c, 2)), u32::from(be16(c, 7)))
            };
            Cdb::WriteSame {
                lba,
                blocks,
                unmap: c[1] & 0x08 != 0,
                anchor: c[1] & 0x10 != 0,
                ndob: sixteen && c[1] & 0x01 != 0,
                sixteen,
            }
        }
        UNMAP => Cdb::Unmap {
            anchor: c[1] & 0x01 != 0,
            param_len: u32::from(be16(c, 7)),
        },
        SYNC_CACHE_10 => Cdb::SynchronizeCache {
            lba: u64::from(be32(c, 2)),
            blocks: u32::from(be16(c, 7)),
        },
        SYNC_CACHE_16 => Cdb::SynchronizeCache {
            lba: be64(c, 2),
            blocks: be32(c, 10),
        },
        PRE_FETCH_10 => Cdb::PreFetch {
            lba: u64::from(be32(c, 2)),
            blocks: u32::from(be16(c, 7)),
        },
        PRE_FETCH_16 => Cdb::PreFetch {
            lba: be64(c, 2),
            blocks: be32(c, 10),
        },
        MODE_SENSE_6 | MODE_SENSE_10 => {
            let ten = opcode == MODE_SENSE_10;
            Cdb::ModeSense {
                dbd: c[1] & 0x08 != 0,
                llbaa: ten && c[1] & 0x10 != 0,
                pc: c[2] >> 6,
                page: c[2] & 0x3f,
                subpage: c[3],
                alloc_len: if ten {
                    u32::from(be16(c, 7))
                } else {
                    u32::from(c[4])
                },
                ten,
            }
        }
        MODE_SELECT_6 | MODE_SELECT_10 => {
            let ten = opcode == MODE_SELECT_10;
            Cdb::ModeSelect {
                pf: c[1] & 0x10 != 0,
                sp: c[1] & 0x01 != 0,
                param_len: if ten {
                    u32::from(be16(c, 7))
                } else {
                    u32::from(c[4])
                },
                ten,
            }
        }
        START_STOP_UNIT => Cdb::StartStopUnit {
            start: c[4] & 0x01 != 0,
            loej: c[4] & 0x02 != 0,
            power_condition: c[4] >> 4,
        },
        PREVENT_ALLOW => Cdb::PreventAllow {
            prevent: c[4] & 0x03,
        },
        RESERVE_6 => {
            // Third-party and extent reservations are obsolete.
            if c[1] & 0x01 != 0 {
                return Err(Sense::invalid_cdb_field(1, Some(0)));
            }
            Cdb::Reserve
        }
        RELEASE_6 => {
            if c[1] & 0x01 != 0 {
                return Err(Sense::invalid_cdb_field(1, Some(0)));
            }
            Cdb::Release
        }
        RESERVE_10 | RELEASE_10 => {
            // 3RDPTY (bit 4) and LONGID (bit 1): third-party reservations
            // are not supported.
            if c[1] & 0x12 != 0 {
                return Err(Sense::invalid_cdb_field(1, Some(4)));
            }
            if opcode == RESERVE_10 {
                Cdb::Reserve
            } else {
                Cdb::Release
            }
        }
        PERSISTENT_RESERVE_IN => {
            let service_action = c[1] & 0x1f;
            if service_action > 3 {
                return Err(Sense::invalid_cdb_field(1, Some(4)));
            }
            Cdb::PersistentReserveIn {
                service_action,
                alloc_len: u32::from(be16(c, 7)),
            }
        }
        PERSISTENT_RESERVE_OUT => {
            let service_action = c[1] & 0x1f;
            if service_action > 7 {
                return Err(Sense::invalid_cdb_field(1, Some(4)));
            }
            Cdb::PersistentReserveOut {
                service_action,
                scope: c[2] >> 4,
                pr_type: c[2] & 0x0f,
                param_len: be32(c, 5),
            }
        }
        MAINTENANCE_IN => match c[1] & 0x1f {
            sa::REPORT_SUPPORTED_OPCODES => {
                let options = c[2] & 0x07;
                if options > 3 {
                    return Err(Sense::invalid_cdb_field(2, Some(2)));
                }
                Cdb::ReportSupportedOpcodes {
                    rctd: c[2] & 0x80 != 0,
                    options,
                    opcode: c[3],
                    service_action: be16(c, 4),
                    alloc_len: be32(c, 6),
                }
            }
            sa::REPORT_SUPPORTED_TMFS => Cdb::ReportSupportedTmfs {
                repd: c[2] & 0x80 != 0,
                alloc_len: be32(c, 6),
            },
            sa::REPORT_TARGET_PORT_GROUPS => {
                let format = c[1] >> 5;
                if format > 1 {
                    return Err(Sense::invalid_cdb_field(1, Some(7)));
                }
                Cdb::ReportTargetPortGroups {
                    extended: format == 1,
                    alloc_len: be32(c, 6),
                }
            }
            _ => return Err(Sense::invalid_cdb_field(1, Some(4))),
        },
        EXTENDED_COPY => match c[1] & 0x1f {
            sa::EXTENDED_COPY_LID1 => Cdb::ExtendedCopy {
                param_len: be32(c, 10),
            },
            _ => return Err(Sense::invalid_cdb_field(1, Some(4))),
        },
        RECEIVE_COPY_RESULTS => match c[1] & 0x1f {
            s @ (sa::COPY_STATUS | sa::OPERATING_PARAMETERS) => Cdb::ReceiveCopyResults {
                service_action: s,
                list_id: c[2],
                alloc_len: be32(c, 10),
            },
            _ => return Err(Sense::invalid_cdb_field(1, Some(4))),
        },
        READ_DEFECT_DATA_10 => Cdb::ReadDefectData {
            flags: c[2] & 0x1f,
            alloc_len: u32::from(be16(c, 7)),
            twelve: false,
        },
        READ_DEFECT_DATA_12 => Cdb::ReadDefectData {
            flags: c[1] & 0x1f,
            alloc_len: be32(c, 6),
            twelve: true,
        },
        _ => return Err(Sense::invalid_opcode()),
    };
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sense::asc;

    #[test]
    fn decodes_rw_variants() {
        let r6 = parse(&[0x08, 0x1f, 0xff, 0xff, 0, 0]).unwrap();
        assert_eq!(
            r6,
            Cdb::Read(
                BlockIo {
                    lba: 0x1f_ffff,
                    blocks: 256,
                    dpo: false,
                    fua: false
                },
                Width::W6
            )
        );
        let w16 = parse(&[0x8a, 0x18, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 2, 0, 0]).unwrap();
        assert_eq!(
            w16,
            Cdb::Write(
                BlockIo {
                    lba: 9,
                    blocks: 2,
                    dpo: true,
                    fua: true
                },
                Width::W16
            )
        );
    }

    #[test]
    fn rejects_protection_and_bad_fields() {
        let e = parse(&[0x28, 0x20, 0, 0, 0, 0, 0, 0, 1, 0]).unwrap_err();
        assert_eq!(e.code(), asc::INVALID_FIELD_IN_CDB);
        let e = parse(&[0x12, 0, 1, 0, 255, 0]).unwrap_err();
        assert_eq!(e.code(), asc::INVALID_FIELD_IN_CDB);
        let e = parse(&[0x2f, 0x04, 0, 0, 0, 0, 0, 0, 1, 0]).unwrap_err();
        assert_eq!(e.code(), asc::INVALID_FIELD_IN_CDB);
        for s in 4..0x20u8 {
            let e = parse(&[0x5e, s, 0, 0, 0, 0, 0, 0, 8, 0]).unwrap_err();
            assert_eq!(e.code(), asc::INVALID_FIELD_IN_CDB);
        }
    }

    #[test]
    fn unknown_and_short_cdbs() {
        assert_eq!(parse(&[]).unwrap_err().code(), asc::INVALID_OPCODE);
        assert_eq!(parse(&[0xff; 16]).unwrap_err().code(), asc::INVALID_OPCODE);
        assert_eq!(
            parse(&[0x28, 0, 0]).unwrap_err().code(),
            asc::INVALID_OPCODE
        );
        assert_eq!(
            parse(&[0x04, 0, 0, 0, 0, 0]).unwrap_err().code(),
            asc::INVALID_OPCODE
        );
    }

    #[test]
    fn never_panics_on_prefixes() {
        let mut buf = [0u8; 32];
        for opcode in 0..=255u8 {
            buf[0] = opcode;
            for fill in [0x00u8, 0xff, 0x5a] {
                for b in buf.iter_mut().skip(1) {
                    *b = fill;
                }
                for len in 0..buf.len() {
                    let _ = parse(&buf[..len]);
                }
            }
        }
    }
}
