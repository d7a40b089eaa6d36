//! EXTENDED COPY (LID1) and RECEIVE COPY RESULTS: the copy manager.
//!
//! Supports identification CSCD descriptors (0xE4) naming block devices by
//! their NAA designator, resolved through the [`Registry`](crate::Registry),
//! and block-to-block segment descriptors (0x02). Copies run synchronously,
//! chunk by chunk, through each unit's [`CopyTarget`] view (which holds the
//! destination's write range locks shared for each chunk only). The copy
//! manager is handed what it needs (the registry, the receiving unit's
//! held results) and never names the logical unit type.
//!
//! Invariants: the whole parameter list is validated (lengths, counts,
//! descriptor types, CSCD resolution) before any data moves; every
//! allocation is bounded by [`MAX_DESC_LIST_LEN`] and [`CHUNK_BYTES`];
//! results are kept per (I_T nexus, list id) for at most [`MAX_HELD`] copies.

use std::collections::VecDeque;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::registry::{CopyTarget, Registry};
use crate::sense::{Sense, asc, key};
use crate::{Nexus, sense};

/// MAXIMUM CSCD DESCRIPTOR COUNT.
pub const MAX_CSCD_DESCRIPTORS: u16 = 2;
/// MAXIMUM SEGMENT DESCRIPTOR COUNT.
pub const MAX_SEGMENT_DESCRIPTORS: u16 = 16;
/// MAXIMUM DESCRIPTOR LIST LENGTH (CSCD + segment descriptors, bytes).
pub const MAX_DESC_LIST_LEN: u32 = 1024;
/// MAXIMUM SEGMENT LENGTH in bytes.
pub const MAX_SEGMENT_BYTES: u32 = 32 << 20;
/// Data moved per device call.
pub const CHUNK_BYTES: usize = 1 << 20;
/// Copy results held for RECEIVE COPY RESULTS.
pub const MAX_HELD: usize = 32;

const CSCD_IDENT: u8 = 0xe4;
const SEG_BLOCK_TO_BLOCK: u8 = 0x02;
const PARAM_HEADER: usize = 16;

/// Outcome of one finished copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CopyOutcome {
    ok: bool,
    segments: u16,
    bytes: u64,
}

/// Held results of copies whose LIST ID USAGE asked for them.
#[derive(Debug, Default)]
pub struct CopyResults {
    held: Mutex<VecDeque<(Nexus, u8, CopyOutcome)>>,
}

impl CopyResults {
    fn hold(&self, nexus: &Nexus, list_id: u8, outcome: CopyOutcome) {
        let mut held = self.held.lock();
        held.retain(|(n, id, _)| !(n == nexus && *id == list_id));
        if held.len() >= MAX_HELD {
            held.pop_front();
        }
        held.push_back((nexus.clone(), list_id, outcome));
    }

    fn get(&self, nexus: &Nexus, list_id: u8) -> Option<CopyOutcome> {
        self.held
            .lock()
            .iter()
            .find(|(n, id, _)| n == nexus && *id == list_id)
            .map(|(_, _, o)| *o)
    }

    /// Drops everything held for `nexus` (I_T nexus loss).
    pub fn forget(&self, nexus: &Nexus) {
        self.held.lock().retain(|(n, _, _)| n != nexus);
    }
}

fn copy_aborted(code: asc::Code, segment: usize) -> Sense {
    Sense::new(key::COPY_ABORTED, code).with_command_specific(crate::sat_u32(segment))
}

struct Segment {
    src: usize,
    dst: usize,
    blocks: u64,
    src_lba: u64,
    dst_lba: u64,
}

/// Executes EXTENDED COPY(LID1) from `nexus` with parameter list `p`
/// (exactly the parameter list length), resolving copy targets through
/// `registry` and holding the outcome in `results` (the receiving unit's)
/// when LIST ID USAGE asks for it.
pub fn extended_copy(
    registry: &Registry,
    results: &CopyResults,
    nexus: &Nexus,
    p: &[u8],
) -> Result<(), Sense> {
    if p.is_empty() {
        return Ok(());
    }
    if p.len() < PARAM_HEADER {
        return Err(Sense::param_list_length());
    }
    let list_id = p[0];
    let list_id_usage = (p[1] >> 3) & 0x03;
    let cscd_len = usize::from(u16::from_be_bytes([p[2], p[3]]));
    let seg_len = u32::from_be_bytes([p[8], p[9], p[10], p[11]]) as usize;
    let inline_len = u32::from_be_bytes([p[12], p[13], p[14], p[15]]) as usize;
    if cscd_len.saturating_add(seg_len) > MAX_DESC_LIST_LEN as usize {
        return Err(Sense::param_list_length());
    }
    if PARAM_HEADER + cscd_len + seg_len + inline_len > p.len() {
        return Err(Sense::param_list_length());
    }
    if inline_len != 0 {
        return Err(Sense::invalid_param_field(12));
    }
    if list_id_usage == 0x01 {
        return Err(Sense::invalid_param_field(1));
    }

    // CSCD descriptors.
    let mut targets: Vec<Arc<dyn CopyTarget>> = Vec::new();
    let cscds = &p[PARAM_HEADER..PARAM_HEADER + cscd_len];
    let mut at = 0;
    while at < cscds.len() {
        let d = &cscds[at..];
        if d[0] != CSCD_IDENT {
            return Err(Sense::illegal(asc::UNSUPPORTED_TARGET_DESCRIPTOR));
        }
        if targets.len() >= usize::from(MAX_CSCD_DESCRIPTORS) {
            return Err(Sense::illegal(asc::TOO_MANY_TARGET_DESCRIPTORS));
        }
        if d.len() < 32 {
            return Err(Sense::param_list_length());
        }
        // LU ID TYPE is ignored (SPC-4); peripheral device type must be
        // block (0).
        if d[1] & 0x1f != 0 {
            return Err(Sense::invalid_param_field(crate::sat_u16(
                PARAM_HEADER + at + 1,
            )));
        }
        let designator_len = usize::from(d[7]).min(20);
        let designator = &d[8..8 + designator_len];
        let code_type = d[5] & 0x0f;
        let resolved = if code_type == 0x03 && designator_len == 16 {
            registry.lookup(designator).filter(|t| t.accessible())
        } else {
            None
        };
        let Some(target) = resolved else {
            return Err(copy_aborted(asc::COPY_TARGET_NOT_REACHABLE, 0));
        };
        let disk_block_len = u32::from_be_bytes([0, d[29], d[30], d[31]]);
        if disk_block_len != target.block_size() {
            return Err(Sense::invalid_param_field(crate::sat_u16(
                PARAM_HEADER + at + 29,
            )));
        }
        targets.push(target);
        at += 32;
    }

    // Segment descriptors.
    let segs = &p[PARAM_HEADER + cscd_len..PARAM_HEADER + cscd_len + seg_len];
    let mut segments = Vec::new();
    let mut at = 0;
    while at < segs.len() {
        let d = &segs[at..];
        if d[0] != SEG_BLOCK_TO_BLOCK {
            return Err(Sense::illegal(asc::UNSUPPORTED_SEGMENT_DESCRIPTOR));
        }
        if segments.len() >= usize::from(MAX_SEGMENT_DESCRIPTORS) {
            return Err(Sense::illegal(asc::TOO_MANY_SEGMENT_DESCRIPTORS));
        }
        if d.len() < 28 {
            return Err(Sense::param_list_length());
        }
        if u16::from_be_bytes([d[2], d[3]]) != 0x18 {
            return Err(Sense::invalid_param_field(crate::sat_u16(
                PARAM_HEADER + cscd_len + at + 2,
            )));
        }
        let be64 = |i: usize| {
            let mut x = [0u8; 8];
            x.copy_from_slice(&d[i..i + 8]);
            u64::from_be_bytes(x)
        };
        segments.push(Segment {
            src: usize::from(u16::from_be_bytes([d[4], d[5]])),
            dst: usize::from(u16::from_be_bytes([d[6], d[7]])),
            blocks: u64::from(u16::from_be_bytes([d[10], d[11]])),
            src_lba: be64(12),
            dst_lba: be64(20),
        });
        at += 28;
    }

    // Validate every segment before moving data.
    for (i, s) in segments.iter().enumerate() {
        let (Some(src), Some(dst)) = (targets.get(s.src), targets.get(s.dst)) else {
            return Err(copy_aborted(asc::COPY_TARGET_NOT_REACHABLE, i));
        };
        if src.block_size() != dst.block_size() {
            return Err(copy_aborted(asc::NO_ADDITIONAL_SENSE, i));
        }
        let bytes = s.blocks * u64::from(src.block_size());
        if bytes > u64::from(MAX_SEGMENT_BYTES) {
            return Err(copy_aborted(asc::NO_ADDITIONAL_SENSE, i));
        }
        let in_range = |unit: &dyn CopyTarget, lba: u64| {
            lba.checked_add(s.blocks)
                .is_some_and(|end| end <= unit.num_blocks())
        };
        if !in_range(src.as_ref(), s.src_lba) || !in_range(dst.as_ref(), s.dst_lba) {
            return Err(copy_aborted(asc::NO_ADDITIONAL_SENSE, i));
        }
        if dst.write_protected() {
            return Err(copy_aborted(asc::WRITE_PROTECTED, i));
        }
    }

    let mut outcome = CopyOutcome {
        ok: true,
        segments: 0,
        bytes: 0,
    };
    let mut result = Ok(());
    for (i, s) in segments.iter().enumerate() {
        match copy_segment(&targets[s.src], &targets[s.dst], s) {
            Ok(bytes) => {
                outcome.segments += 1;
                outcome.bytes += bytes;
            }
            Err(e) => {
                outcome.ok = false;
                result = Err(copy_aborted(e.code(), i));
                break;
            }
        }
    }
    if list_id_usage == 0x00 {
        results.hold(nexus, list_id, outcome);
    }
    result
}

fn copy_segment(
    src: &Arc<dyn CopyTarget>,
    dst: &Arc<dyn CopyTarget>,
    s: &Segment,
) -> Result<u64, Sense> {
    let bs = src.block_size() as usize;
    let chunk = (CHUNK_BYTES / bs).max(1);
    let chunk_blocks = chunk as u64;
    let mut buf = vec![0u8; crate::min_usize(chunk, s.blocks) * bs];
    // Within one LU, a destination overlapping the source from above is
    // copied back to front so no source block is overwritten before read.
    let backwards =
        Arc::ptr_eq(src, dst) && s.dst_lba > s.src_lba && s.dst_lba < s.src_lba + s.blocks;
    let chunks = s.blocks.div_ceil(chunk_blocks);
    for k in 0..chunks {
        let idx = if backwards { chunks - 1 - k } else { k };
        let off = idx * chunk_blocks;
        let len = crate::min_usize(chunk, s.blocks - off) * bs;
        src.read_blocks(s.src_lba + off, &mut buf[..len])
            .map_err(|e| sense::from_block_error(&e, false))?;
        dst.write_blocks(s.dst_lba + off, &buf[..len])
            .map_err(|e| sense::from_block_error(&e, true))?;
    }
    Ok(s.blocks * bs as u64)
}

/// RECEIVE COPY RESULTS / COPY STATUS data for `list_id`, from the
/// results the receiving unit holds for `nexus`.
pub fn copy_status(results: &CopyResults, nexus: &Nexus, list_id: u8) -> Result<Vec<u8>, Sense> {
    let Some(o) = results.get(nexus, list_id) else {
        return Err(Sense::invalid_cdb_field(2, None));
    };
    let mut d = vec![0u8; 12];
    d[0..4].copy_from_slice(&8u32.to_be_bytes());
    // COPY MANAGER STATUS: 01h completed without errors, 02h with errors.
    d[4] = if o.ok { 0x01 } else { 0x02 };
    d[5..7].copy_from_slice(&o.segments.to_be_bytes());
    // TRANSFER COUNT in kibibytes (units F1h).
    d[7] = 0xf1;
    let kib = u32::try_from(o.bytes.div_ceil(1024)).unwrap_or(u32::MAX);
    d[8..12].copy_from_slice(&kib.to_be_bytes());
    Ok(d)
}

/// RECEIVE COPY RESULTS / OPERATING PARAMETERS data.
pub fn operating_parameters(block_size: u32) -> Vec<u8> {
    let mut d = vec![0u8; 46];
    let avail = crate::sat_u32(d.len() - 4);
    d[0..4].copy_from_slice(&avail.to_be_bytes());
    // SNLID: list ID usage 11b (no list identifier) is supported.
    d[4] = 0x01;
    d[8..10].copy_from_slice(&MAX_CSCD_DESCRIPTORS.to_be_bytes());
    d[10..12].copy_from_slice(&MAX_SEGMENT_DESCRIPTORS.to_be_bytes());
    d[12..16].copy_from_slice(&MAX_DESC_LIST_LEN.to_be_bytes());
    d[16..20].copy_from_slice(&MAX_SEGMENT_BYTES.to_be_bytes());
    // Inline data, held data, stream transfer size: none.
    d[34..36].copy_from_slice(&1u16.to_be_bytes()); // total concurrent copies
    d[36] = 1; // maximum concurrent copies
    d[37] = crate::sat_u8(block_size.trailing_zeros() as usize); // data segment granularity (log2)
    d[43] = 2; // implemented descriptor list length
    d[44] = SEG_BLOCK_TO_BLOCK;
    d[45] = CSCD_IDENT;
    d
}
