//! Mode parameters: MODE SENSE(6/10) data and MODE SELECT(6/10) parsing
//! for the caching (0x08), control (0x0A) and informational exceptions
//! control (0x1C) pages.
//!
//! Owns the mutable mode state of a logical unit: WCE (honoured: with
//! WCE=0 every write is issued with FUA), D_SENSE (descriptor sense) and
//! SWP (software write protect). Invariants: only the bits reported as
//! changeable ever change; MODE SELECT validates the whole parameter list
//! before applying anything; saved values are not implemented (PC=3 and
//! SP=1 are refused with SAVING PARAMETERS NOT SUPPORTED / INVALID FIELD).

use std::sync::atomic::{AtomicBool, Ordering};

use crate::sense::{Sense, asc};

/// Page codes.
pub mod page {
    /// Caching mode page.
    pub const CACHING: u8 = 0x08;
    /// Control mode page.
    pub const CONTROL: u8 = 0x0a;
    /// Informational exceptions control mode page.
    pub const INFO_EXCEPTIONS: u8 = 0x1c;
    /// Return all pages.
    pub const ALL: u8 = 0x3f;
}

/// The changeable mode state of one logical unit.
#[derive(Debug)]
pub struct ModeState {
    wce: AtomicBool,
    d_sense: AtomicBool,
    swp: AtomicBool,
}

impl Default for ModeState {
    fn default() -> Self {
        ModeState {
            wce: AtomicBool::new(true),
            d_sense: AtomicBool::new(false),
            swp: AtomicBool::new(false),
        }
    }
}

/// Which values MODE SENSE reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pc {
    Current,
    Changeable,
    Default,
}

/// What a MODE SENSE needs to know about the LU besides mode state.
#[derive(Debug, Clone, Copy)]
pub struct SenseContext {
    /// Header WP bit.
    pub write_protected: bool,
    /// Capacity in blocks (block descriptor).
    pub num_blocks: u64,
    /// Block size (block descriptor).
    pub block_size: u32,
}

/// A parsed MODE SENSE request.
#[derive(Debug, Clone, Copy)]
pub struct SenseRequest {
    /// Disable block descriptors.
    pub dbd: bool,
    /// Long LBA block descriptor allowed.
    pub llbaa: bool,
    /// Page control.
    pub pc: u8,
    /// Page code.
    pub page: u8,
    /// Subpage code.
    pub subpage: u8,
    /// MODE SENSE(10).
    pub ten: bool,
}

impl ModeState {
    /// Write cache enabled.
    pub fn wce(&self) -> bool {
        self.wce.load(Ordering::Relaxed)
    }

    /// Descriptor-format sense selected.
    pub fn d_sense(&self) -> bool {
        self.d_sense.load(Ordering::Relaxed)
    }

    /// Software write protect set.
    pub fn swp(&self) -> bool {
        self.swp.load(Ordering::Relaxed)
    }

    fn caching(&self, pc: Pc) -> [u8; 20] {
        let mut p = [0u8; 20];
        p[0] = page::CACHING;
        p[1] = 0x12;
        p[2] = match pc {
            Pc::Current => {
                if self.wce() {
                    0x04
                } else {
                    0
                }
            }
            Pc::Changeable => 0x04,
            Pc::Default => 0x04,
        };
        p
    }

    fn control(&self, pc: Pc) -> [u8; 12] {
        let mut p = [0u8; 12];
        p[0] = page::CONTROL;
        p[1] = 0x0a;
        match pc {
            Pc::Current | Pc::Default => {
                let current = pc == Pc::Current;
                if current && self.d_sense() {
                    p[2] |= 0x04;
                }
                // QUEUE ALGORITHM MODIFIER 1: unrestricted reordering.
                p[3] = 0x10;
                if current && self.swp() {
                    p[4] |= 0x08;
                }
                // BUSY TIMEOUT PERIOD: unlimited.
                p[8] = 0xff;
                p[9] = 0xff;
            }
            Pc::Changeable => {
                p[2] = 0x04; // D_SENSE
                p[4] = 0x08; // SWP
            }
        }
        p
    }

    fn info_exceptions(&self, pc: Pc) -> [u8; 12] {
        let mut p = [0u8; 12];
        p[0] = page::INFO_EXCEPTIONS;
        p[1] = 0x0a;
        if pc != Pc::Changeable {
            // DEXCPT: informational exception reporting disabled.
            p[2] = 0x08;
        }
        p
    }

    /// MODE SENSE parameter data (full length; the caller truncates).
    pub fn sense(&self, req: &SenseRequest, ctx: &SenseContext) -> Result<Vec<u8>, Sense> {
        let pc = match req.pc {
            0 => Pc::Current,
            1 => Pc::Changeable,
            2 => Pc::Default,
            _ => return Err(Sense::illegal(asc::SAVING_PARAMETERS_NOT_SUPPORTED)),
        };
        // Subpage 0 of a page, or 0xFF ("all subpages") with any page: we
        // have no subpages, so both mean the page itself.
        if req.subpage != 0 && req.subpage != 0xff {
            return Err(Sense::invalid_cdb_field(3, None));
        }
        let mut pages = Vec::new();
        match req.page {
            page::CACHING => pages.extend_from_slice(&self.caching(pc)),
            page::CONTROL => pages.extend_from_slice(&self.control(pc)),
            page::INFO_EXCEPTIONS => pages.extend_from_slice(&self.info_exceptions(pc)),
            page::ALL => {
                pages.extend_from_slice(&self.caching(pc));
                pages.extend_from_slice(&self.control(pc));
                pages.extend_from_slice(&self.info_exceptions(pc));
            }
            _ => return Err(Sense::invalid_cdb_field(2, Some(5))),
        }
        let long = req.ten && req.llbaa;
        let mut bd = Vec::new();
        if !req.dbd {
            if long {
                bd.extend_from_slice(&ctx.num_blocks.to_be_bytes());
                bd.extend_from_slice(&[0; 4]);
                bd.extend_from_slice(&ctx.block_size.to_be_bytes());
            } else {
                let n = u32::try_from(ctx.num_blocks).unwrap_or(u32::MAX);
                bd.extend_from_slice(&n.to_be_bytes());
                bd.push(0);
                bd.extend_from_slice(&ctx.block_size.to_be_bytes()[1..]);
            }
        }
        // Device-specific parameter: WP, DPOFUA.
        let dsp = if ctx.write_protected { 0x80 } else { 0 } | 0x10;
        let mut d = Vec::with_capacity(8 + bd.len() + pages.len());
        if req.ten {
            let len = crate::sat_u16(6 + bd.len() + pages.len());
            d.extend_from_slice(&len.to_be_bytes());
            d.push(0);
            d.push(dsp);
            d.push(if long { 0x01 } else { 0 });
            d.push(0);
            d.extend_from_slice(&crate::sat_u16(bd.len()).to_be_bytes());
        } else {
            let len = crate::sat_u8(3 + bd.len() + pages.len());
            d.push(len);
            d.push(0);
            d.push(dsp);
            d.push(crate::sat_u8(bd.len()));
        }
        d.extend_from_slice(&bd);
        d.extend_from_slice(&pages);
        Ok(d)
    }

    /// Applies a MODE SELECT parameter list (exactly the parameter list
    /// length the CDB gave). Validates everything first.
    pub fn select(&self, params: &[u8], ten: bool, sp: bool, block_size: u32) -> Result<(), Sense> {
        if sp {
            return Err(Sense::invalid_cdb_field(1, Some(0)));
        }
        if params.is_empty() {
            return Ok(());
        }
        let hdr = if ten { 8 } else { 4 };
        if params.len() < hdr {
            return Err(Sense::param_list_length());
        }
        let bd_len = if ten {
            usize::from(u16::from_be_bytes([params[6], params[7]]))
        } else {
            usize::from(params[3])
        };
        let Some(bd) = params.get(hdr..hdr + bd_len) else {
            return Err(Sense::param_list_length());
        };
        let long = ten && params[4] & 0x01 != 0;
        let bd_size = if long { 16 } else { 8 };
        if bd_len % bd_size != 0 {
            return Err(Sense::invalid_param_field(if ten { 6 } else { 3 }));
        }
        for (i, desc) in bd.chunks_exact(bd_size).enumerate() {
            let len = if long {
                u32::from_be_bytes([desc[12], desc[13], desc[14], desc[15]])
            } else {
                u32::from_be_bytes([0, desc[5], desc[6], desc[7]])
            };
            if len != 0 && len != block_size {
                return Err(Sense::invalid_param_field(crate::sat_u16(
                    hdr + i * bd_size + 5,
                )));
            }
        }
        // Validate every page, collecting the changes.
        let mut wce = None;
        let mut d_sense = None;
        let mut swp = None;
        let mut at = hdr + bd_len;
        while at < params.len() {
            let rest = &params[at..];
            if rest.len() < 2 {
                return Err(Sense::param_list_length());
            }
            if rest[0] & 0x40 != 0 {
                // Subpage format: we have no subpages.
                return Err(Sense::invalid_param_field(crate::sat_u16(at)));
            }
            let code = rest[0] & 0x3f;
            let len = usize::from(rest[1]) + 2;
            let Some(p) = rest.get(..len) else {
                return Err(Sense::param_list_length());
            };
            match (code, len) {
                (page::CACHING, 20) => wce = Some(p[2] & 0x04 != 0),
                (page::CONTROL, 12) => {
                    d_sense = Some(p[2] & 0x04 != 0);
                    swp = Some(p[4] & 0x08 != 0);
                }
                (page::INFO_EXCEPTIONS, 12) => {}
                (page::CACHING | page::CONTROL | page::INFO_EXCEPTIONS, _) => {
                    return Err(Sense::invalid_param_field(crate::sat_u16(at + 1)));
                }
                _ => return Err(Sense::invalid_param_field(crate::sat_u16(at))),
            }
            at += len;
        }
        if let Some(v) = wce {
            self.wce.store(v, Ordering::Relaxed);
        }
        if let Some(v) = d_sense {
            self.d_sense.store(v, Ordering::Relaxed);
        }
        if let Some(v) = swp {
            self.swp.store(v, Ordering::Relaxed);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> SenseContext {
        SenseContext {
            write_protected: false,
            num_blocks: 1000,
            block_size: 512,
        }
    }

    fn req(page: u8, pc: u8, ten: bool, dbd: bool) -> SenseRequest {
        SenseRequest {
            dbd,
            llbaa: false,
            pc,
            page,
            subpage: 0,
            ten,
        }
    }

    #[test]
    fn sense_six_all_pages() {
        let m = ModeState::default();
        let d = m.sense(&req(page::ALL, 0, false, false), &ctx()).unwrap();
        assert_eq!(d[0] as usize, d.len() - 1);
        assert_eq!(d[2], 0x10);
        assert_eq!(d[3], 8);
        assert_eq!(&d[4..8], &1000u32.to_be_bytes());
        assert_eq!(d[12], page::CACHING);
        assert_eq!(d[14], 0x04);
        assert_eq!(d[32], page::CONTROL);
        assert_eq!(d[44], page::INFO_EXCEPTIONS);
        assert_eq!(d.len(), 12 + 20 + 12 + 12);
    }

    #[test]
    fn saved_values_refused() {
        let m = ModeState::default();
        let e = m
            .sense(&req(page::ALL, 3, false, true), &ctx())
            .unwrap_err();
        assert_eq!(e.code(), asc::SAVING_PARAMETERS_NOT_SUPPORTED);
        let e = m.sense(&req(0x19, 0, false, true), &ctx()).unwrap_err();
        assert_eq!(e.code(), asc::INVALID_FIELD_IN_CDB);
    }

    #[test]
    fn select_round_trip_swp_and_dsense() {
        let m = ModeState::default();
        let cur = m
            .sense(&req(page::CONTROL, 0, false, true), &ctx())
            .unwrap();
        let mut params = vec![0u8, 0, 0, 0];
        let mut pg = cur[4..].to_vec();
        pg[4] |= 0x08;
        pg[2] |= 0x04;
        params.extend_from_slice(&pg);
        m.select(&params, false, false, 512).unwrap();
        assert!(m.swp() && m.d_sense());
        let d = m.sense(&req(page::CONTROL, 0, true, true), &ctx()).unwrap();
        assert_eq!(usize::from(u16::from_be_bytes([d[0], d[1]])), d.len() - 2);
        assert_eq!(d[8 + 4] & 0x08, 0x08);
        // A truncated page is a parameter list length error and changes nothing.
        let e = m.select(&params[..10], false, false, 512).unwrap_err();
        assert_eq!(e.code(), asc::PARAMETER_LIST_LENGTH_ERROR);
        // Unknown page.
        let e = m
            .select(&[0, 0, 0, 0, 0x19, 0x02, 0, 0], false, false, 512)
            .unwrap_err();
        assert_eq!(e.code(), asc::INVALID_FIELD_IN_PARAMETER_LIST);
    }
}
