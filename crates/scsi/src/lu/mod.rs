//! One logical unit over a [`BlockDevice`]: the SBC-3 / SPC-4 device
//! server.
//!
//! `execute` runs every command through the same pipeline: unit attention
//! check (SAM-5 5.14; INQUIRY, REPORT LUNS and REQUEST SENSE are exempt),
//! CDB decoding ([`cdb::parse`]), reservation checks (SPC-2 RESERVE and
//! persistent reservations), then the command itself. Errors are sense
//! data; nothing panics.
//!
//! Invariants:
//! - Every data-in buffer is bounded by the allocation length, the
//!   initiator's expected length and, for READ, the advertised maximum
//!   transfer length; parameter lists are only borrowed from data-out.
//! - Every write to the medium holds the stripe locks of its LBA range
//!   shared; COMPARE AND WRITE and ORWRITE hold them exclusive across their
//!   read-compare/modify-write, so they are atomic against all writes.
//! - Writes use FUA when the CDB asks for it or when the caching mode
//!   page's WCE is 0; SYNCHRONIZE CACHE flushes the device.
//! - Persistent reservation changes are persisted (when a state path is
//!   configured) before they take effect.

use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use depot_block::{BlockDevice, BlockError, Provisioning};
use parking_lot::{Mutex, RwLock};

use crate::cdb::{self, BlockIo, Cdb, op};
use crate::inquiry::{self, Identity, Limits};
use crate::mode::{ModeState, SenseContext, SenseRequest};
use crate::pr::{Access, OutRequest, PrError, PrState, PrStore};
use crate::range_lock::RangeLocks;
use crate::registry::Registry;
use crate::rsoc;
use crate::sense::{self, Sense, asc, key};
use crate::ua::{ItNexus, UnitAttentions};
use crate::xcopy::{self, CopyResults};
use crate::{Command, Completion, Nexus, Status};

/// Default MAXIMUM TRANSFER LENGTH in bytes.
pub const DEFAULT_MAX_TRANSFER_BYTES: u32 = 32 << 20;
/// Company ID used by [`LuConfig::naa_from_id`]. A CID-format placeholder
/// (second hex digit `A`); replace with an IEEE assignment before shipping.
pub const DEPOT_OUI: u32 = 0xda_de_70;
/// Largest accepted PERSISTENT RESERVE OUT parameter list.
const MAX_PR_OUT_PARAMS: u32 = 8192;
/// Bytes written per device call by WRITE SAME.
const WRITE_SAME_CHUNK: usize = 1 << 20;
/// Bytes read per device call by VERIFY.
const VERIFY_CHUNK: usize = 1 << 20;
/// Most GET LBA STATUS descriptors returned.
const MAX_LBA_STATUS_DESCRIPTORS: u32 = 512;

/// Static configuration of a logical unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LuConfig {
    /// T10 vendor identification (8 ASCII characters used).
    pub vendor: String,
    /// Product identification (16 ASCII characters used).
    pub product: String,
    /// Product revision level (4 ASCII characters used).
    pub revision: String,
    /// Unit serial number (VPD 0x80); must be stable across restarts and
    /// identical on HA peers.
    pub serial: String,
    /// NAA IEEE Registered Extended designator (VPD 0x83); stable like the
    /// serial.
    pub naa: [u8; 16],
    /// Refuse writes (DATA PROTECT / WRITE PROTECTED, WP bit in MODE
    /// SENSE).
    pub read_only: bool,
    /// Where persistent reservation state is kept across restarts (written
    /// atomically: temporary file, fsync, rename). `None`: memory only, and
    /// APTPL requests are refused.
    pub pr_state_path: Option<PathBuf>,
    /// MAXIMUM TRANSFER LENGTH advertised and enforced, in bytes.
    pub max_transfer_bytes: u32,
    /// OPTIMAL UNMAP GRANULARITY in bytes (≤ 1 MiB and dividing 1 MiB, for
    /// VMFS6 automatic unmap).
    pub unmap_granularity_bytes: u32,
    /// MAXIMUM COMPARE AND WRITE LENGTH in blocks (≥ 1 for VAAI ATS).
    pub max_compare_and_write_blocks: u8,
    /// Overrides the device's logical-blocks-per-physical-block exponent
    /// in READ CAPACITY(16) (`None`: the device's). libiscsi 1.19's
    /// `GetLBAStatus.UnmapSingle` only passes with exponent 0: for
    /// exponent > 0 it expects GET LBA STATUS at LBA i+1 to report a first
    /// descriptor starting at i+2^exponent, which SBC-3 does not allow.
    pub physical_block_exponent: Option<u8>,
}

impl LuConfig {
    /// Defaults: vendor "DEPOT", product "vDisk", revision "0001",
    /// read-write, no PR state path, 32 MiB maximum transfer, 4 KiB unmap
    /// granularity, 32-block COMPARE AND WRITE.
    pub fn new(serial: &str, naa: [u8; 16]) -> Self {
        LuConfig {
            vendor: "DEPOT".into(),
            product: "vDisk".into(),
            revision: "0001".into(),
            serial: serial.into(),
            naa,
            read_only: false,
            pr_state_path: None,
            max_transfer_bytes: DEFAULT_MAX_TRANSFER_BYTES,
            unmap_granularity_bytes: 4096,
            max_compare_and_write_blocks: 32,
            physical_block_exponent: None,
        }
    }

    /// An NAA 6 (IEEE Registered Extended) designator with [`DEPOT_OUI`],
    /// derived deterministically from a stable 128-bit id (all 128 bits
    /// contribute to the 100 vendor-specific bits).
    pub fn naa_from_id(id: u128) -> [u8; 16] {
        let ext = id as u64;
        let vsid = (((id >> 64) as u64) ^ ((id >> 100) as u64)) & 0xf_ffff_ffff;
        let mut naa = [0u8; 16];
        naa[0] = 0x60 | ((DEPOT_OUI >> 20) & 0x0f) as u8;
        naa[1] = (DEPOT_OUI >> 12) as u8;
        naa[2] = (DEPOT_OUI >> 4) as u8;
        naa[3] = (((DEPOT_OUI & 0x0f) << 4) as u8) | ((vsid >> 32) as u8 & 0x0f);
        naa[4..8].copy_from_slice(&(vsid as u32).to_be_bytes());
        naa[8..16].copy_from_slice(&ext.to_be_bytes());
        naa
    }
}

/// Errors creating a logical unit.
#[derive(Debug, thiserror::Error)]
pub enum ScsiError {
    /// The configuration or device geometry is unusable.
    #[error("invalid logical unit configuration: {0}")]
    InvalidConfig(String),
    /// Saved persistent reservation state could not be read.
    #[error("cannot load persistent reservation state from {path}: {source}")]
    PrState {
        /// The state file.
        path: PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
}

/// What a command produced, before truncation to the expected length.
struct Reply {
    status: Status,
    sense: Option<Sense>,
    data: Vec<u8>,
    transfer_length: u32,
}

impl Reply {
    fn good() -> Reply {
        Reply {
            status: Status::GOOD,
            sense: None,
            data: Vec::new(),
            transfer_length: 0,
        }
    }

    /// Data-in for an allocation-length command.
    fn alloc(mut data: Vec<u8>, alloc_len: u32) -> Reply {
        data.truncate(alloc_len as usize);
        let transfer_length = data.len() as u32;
        Reply {
            status: Status::GOOD,
            sense: None,
            data,
            transfer_length,
        }
    }

    fn check(sense: Sense) -> Reply {
        Reply {
            status: Status::CHECK_CONDITION,
            sense: Some(sense),
            data: Vec::new(),
            transfer_length: 0,
        }
    }

    fn conflict() -> Reply {
        Reply {
            status: Status::RESERVATION_CONFLICT,
            sense: None,
            data: Vec::new(),
            transfer_length: 0,
        }
    }
}

type CmdResult = Result<Reply, Sense>;

fn dev_err(write: bool) -> impl Fn(BlockError) -> Sense {
    move |e| {
        tracing::debug!(error = %e, write, "block device error");
        sense::from_block_error(&e, write)
    }
}

fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter().zip(b).position(|(x, y)| x != y)
}

/// The whole blocks of a write's data-out, as the transport's pieces.
struct Payload<'a> {
    pieces: Vec<&'a [u8]>,
    len: usize,
}

impl<'a> Payload<'a> {
    /// The data in one slice; a copy only when it came in several pieces.
    fn gather(&self) -> Cow<'a, [u8]> {
        match self.pieces.as_slice() {
            [] => Cow::Borrowed(&[]),
            [one] => Cow::Borrowed(*one),
            many => Cow::Owned(many.concat()),
        }
    }
}

/// A logical unit: device server state over one block device.
pub struct LogicalUnit {
    config: LuConfig,
    device: Arc<dyn BlockDevice>,
    registry: Arc<Registry>,
    limits: Limits,
    mode: ModeState,
    ua: UnitAttentions,
    locks: RangeLocks,
    /// SPC-2 RESERVE holder.
    spc2: Mutex<Option<Nexus>>,
    spc2_active: AtomicBool,
    pr: RwLock<PrState>,
    /// Mirrors `pr.reservation.is_some()` for the hot path.
    pr_reserved: AtomicBool,
    pr_store: PrStore,
    /// Serializes PERSISTENT RESERVE OUT (clone, persist, commit).
    pr_out: Mutex<()>,
    copies: CopyResults,
}

impl std::fmt::Debug for LogicalUnit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogicalUnit")
            .field("serial", &self.config.serial)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl LogicalUnit {
    /// Creates a logical unit, loads its saved PR state and registers it
    /// (by NAA) for EXTENDED COPY.
    pub fn new(
        config: LuConfig,
        device: Arc<dyn BlockDevice>,
        registry: &Arc<Registry>,
    ) -> Result<Arc<Self>, ScsiError> {
        let bs = device.block_size();
        if !(512..=65536).contains(&bs) || !bs.is_power_of_two() {
            return Err(ScsiError::InvalidConfig(format!(
                "block size {bs} is not a power of two in 512..=65536"
            )));
        }
        if config.max_transfer_bytes < bs {
            return Err(ScsiError::InvalidConfig(format!(
                "maximum transfer of {} bytes is less than one block",
                config.max_transfer_bytes
            )));
        }
        let g = config.unmap_granularity_bytes;
        if g == 0 || g > (1 << 20) || (1 << 20) % g != 0 {
            return Err(ScsiError::InvalidConfig(format!(
                "unmap granularity of {g} bytes must divide 1 MiB"
            )));
        }
        let store = PrStore::new(config.pr_state_path.clone());
        let pr = store.load().map_err(|source| ScsiError::PrState {
            path: config.pr_state_path.clone().unwrap_or_default(),
            source,
        })?;
        let thin = device.thin_provisioned();
        let max_transfer_blocks = config.max_transfer_bytes / bs;
        let limits = Limits {
            block_size: bs,
            lbppbe: config
                .physical_block_exponent
                .unwrap_or_else(|| device.physical_block_exponent())
                .min(15),
            max_transfer_blocks,
            optimal_transfer_blocks: ((1u32 << 20) / bs).min(max_transfer_blocks),
            max_caw_blocks: config.max_compare_and_write_blocks,
            max_write_same_blocks: u64::from((1u32 << 29) / bs),
            thin,
            max_unmap_blocks: if thin { 1 << 20 } else { 0 },
            max_unmap_descriptors: if thin { 256 } else { 0 },
            unmap_granularity_blocks: (g / bs).max(1),
        };
        let pr_reserved = AtomicBool::new(pr.reservation.is_some());
        let naa = config.naa;
        let lu = Arc::new(LogicalUnit {
            config,
            device,
            registry: registry.clone(),
            limits,
            mode: ModeState::default(),
            ua: UnitAttentions::default(),
            locks: RangeLocks::default(),
            spc2: Mutex::new(None),
            spc2_active: AtomicBool::new(false),
            pr: RwLock::new(pr),
            pr_reserved,
            pr_store: store,
            pr_out: Mutex::new(()),
            copies: CopyResults::default(),
        });
        registry.register(naa, &lu);
        Ok(lu)
    }

    /// The block device behind this logical unit.
    pub fn device(&self) -> &Arc<dyn BlockDevice> {
        &self.device
    }

    /// The configuration it was created with.
    pub fn config(&self) -> &LuConfig {
        &self.config
    }

    /// Establishes CAPACITY DATA HAS CHANGED for every nexus (call after
    /// the device grew or shrank).
    pub fn capacity_changed(&self) {
        self.ua.post_all(asc::CAPACITY_DATA_CHANGED);
    }

    pub(crate) fn registry(&self) -> &Registry {
        &self.registry
    }

    pub(crate) fn locks(&self) -> &RangeLocks {
        &self.locks
    }

    pub(crate) fn copy_results(&self) -> &CopyResults {
        &self.copies
    }

    pub(crate) fn write_protected(&self) -> bool {
        self.config.read_only || self.mode.swp()
    }

    pub(crate) fn write_cache_enabled(&self) -> bool {
        self.mode.wce()
    }

    /// Encodes sense in the format the control mode page selects.
    pub(crate) fn encode_sense(&self, s: &Sense) -> Bytes {
        Bytes::from(s.encode(self.mode.d_sense()))
    }

    /// Logical unit / target reset: drops the SPC-2 reservation and
    /// establishes `code` for every nexus. PR state is untouched.
    pub(crate) fn reset(&self, code: asc::Code) {
        *self.spc2.lock() = None;
        self.spc2_active.store(false, Ordering::Release);
        self.ua.post_all(code);
    }

    /// I_T nexus loss: releases its SPC-2 reservation and forgets its unit
    /// attentions and held copy results; PR registrations are kept.
    pub(crate) fn nexus_lost(&self, nexus: &Nexus) {
        let mut holder = self.spc2.lock();
        if holder.as_ref() == Some(nexus) {
            *holder = None;
            self.spc2_active.store(false, Ordering::Release);
        }
        drop(holder);
        self.ua.forget(nexus);
        self.copies.forget(nexus);
    }

    /// Executes one command. Thread-safe; may block on device I/O.
    pub fn execute(&self, cmd: &Command<'_>) -> Completion {
        self.completion(self.run(cmd), cmd)
    }

    /// What the transport sends for `reply`: data cut to what the initiator
    /// expects, sense encoded per D_SENSE.
    fn completion(&self, reply: Reply, cmd: &Command<'_>) -> Completion {
        let mut data = reply.data;
        data.truncate(cmd.expected_in as usize);
        Completion {
            status: reply.status,
            sense: reply.sense.map(|s| self.encode_sense(&s)),
            data: Bytes::from(data),
            transfer_length: reply.transfer_length,
        }
    }

    /// Reports the data-out length the CDB describes as the transfer
    /// length (for the residual), where it has one.
    fn with_out_len(&self, mut reply: Reply, parsed: &Cdb) -> Reply {
        let out_len = self.data_out_len(parsed);
        if out_len > 0 {
            reply.transfer_length = out_len;
        }
        reply
    }

    /// Executes a READ or WRITE only if it completes without waiting for
    /// storage: no unit attention pending, no reservation conflict, a valid
    /// CDB, and a device that moves the data without blocking
    /// ([`BlockDevice::try_read_nowait`] / [`BlockDevice::try_write_nowait`]).
    /// `None` means nothing happened and the caller runs
    /// [`execute`](Self::execute) where blocking is allowed; every unusual
    /// case (errors included) takes that path, so sense data comes from one
    /// place.
    pub fn try_execute_nowait(&self, cmd: &Command<'_>) -> Option<Completion> {
        let opcode = *cmd.cdb.first()?;
        if !matches!(
            opcode,
            op::READ_6 | op::READ_10 | op::READ_16 | op::WRITE_6 | op::WRITE_10 | op::WRITE_16
        ) || !self.ua.is_quiet(cmd.nexus)
        {
            return None;
        }
        let parsed = cdb::parse(cmd.cdb).ok()?;
        if self.reservation_conflict(cmd.nexus, &parsed) {
            return None;
        }
        let reply = match parsed {
            Cdb::Read(io, _) => self.read_nowait(cmd, io)?,
            Cdb::Write(io, _) => self.write_nowait(cmd, io)?,
            _ => return None,
        };
        Some(self.completion(self.with_out_len(reply, &parsed), cmd))
    }

    fn read_nowait(&self, cmd: &Command<'_>, io: BlockIo) -> Option<Reply> {
        let (mut buf, want) = self.read_buffer(cmd, io).ok()?;
        if !buf.is_empty() && !self.device.try_read_nowait(io.lba, &mut buf).ok()? {
            return None;
        }
        Some(self.read_reply(buf, want, io))
    }

    fn write_nowait(&self, cmd: &Command<'_>, io: BlockIo) -> Option<Reply> {
        if io.fua || !self.mode.wce() {
            return None;
        }
        let data = self.write_payload(cmd, io).ok()?;
        if data.len == 0 {
            return None;
        }
        let n = (data.len / self.limits.block_size as usize) as u64;
        let _guard = self.locks.try_shared(io.lba, n)?;
        if !self.device.try_write_nowait(io.lba, &data.gather()).ok()? {
            return None;
        }
        Some(Reply::good())
    }

    fn run(&self, cmd: &Command<'_>) -> Reply {
        let nexus: &Nexus = cmd.nexus;
        let opcode = cmd.cdb.first().copied();
        let exempt = matches!(
            opcode,
            Some(op::INQUIRY | op::REPORT_LUNS | op::REQUEST_SENSE)
        );
        if let Some(ua) = self.ua.on_command(nexus, !exempt) {
            return Reply::check(ua);
        }
        let parsed = match cdb::parse(cmd.cdb) {
            Ok(c) => c,
            Err(s) => return Reply::check(s),
        };
        let result = if self.reservation_conflict(nexus, &parsed) {
            Ok(Reply::conflict())
        } else {
            self.dispatch(cmd, &parsed)
        };
        self.with_out_len(result.unwrap_or_else(Reply::check), &parsed)
    }

    /// Bytes of data-out the CDB describes.
    fn data_out_len(&self, c: &Cdb) -> u32 {
        let bs = u64::from(self.limits.block_size);
        let blocks = |n: u32| u32::try_from(u64::from(n) * bs).unwrap_or(u32::MAX);
        match *c {
            Cdb::Write(io, _) | Cdb::OrWrite(io) => blocks(io.blocks),
            Cdb::WriteAndVerify { io, .. } => blocks(io.blocks),
            Cdb::CompareAndWrite(io) => blocks(io.blocks.saturating_mul(2)),
            Cdb::Verify { io, bytchk: 1 } => blocks(io.blocks),
            Cdb::Verify { bytchk: 3, .. } => blocks(1),
            Cdb::WriteSame { ndob: false, .. } => blocks(1),
            Cdb::Unmap { param_len, .. }
            | Cdb::ModeSelect { param_len, .. }
            | Cdb::PersistentReserveOut { param_len, .. }
            | Cdb::ExtendedCopy { param_len } => param_len,
            _ => 0,
        }
    }

    fn reservation_conflict(&self, nexus: &Nexus, c: &Cdb) -> bool {
        if self.spc2_active.load(Ordering::Acquire) {
            if matches!(
                c,
                Cdb::PersistentReserveIn { .. } | Cdb::PersistentReserveOut { .. }
            ) {
                // SPC-4 5.13.3: PR commands conflict with an SPC-2
                // reservation held by anybody.
                return true;
            }
            let spc2_exempt = matches!(
                c,
                Cdb::Inquiry { .. }
                    | Cdb::RequestSense { .. }
                    | Cdb::ReportLuns { .. }
                    | Cdb::Release
                    | Cdb::ReportSupportedOpcodes { .. }
                    | Cdb::ReportSupportedTmfs { .. }
                    | Cdb::ReportTargetPortGroups { .. }
            );
            if !spc2_exempt
                && let Some(holder) = self.spc2.lock().as_ref()
                && holder != nexus
            {
                return true;
            }
        }
        if self.pr_reserved.load(Ordering::Acquire) {
            let access = access_class(c);
            if access != Access::Any {
                return self.pr.read().conflicts(&ItNexus::of(nexus), access);
            }
        }
        false
    }

    fn identity(&self) -> Identity<'_> {
        Identity {
            vendor: &self.config.vendor,
            product: &self.config.product,
            revision: &self.config.revision,
            serial: &self.config.serial,
            naa: &self.config.naa,
        }
    }

    fn check_range(&self, lba: u64, blocks: u64) -> Result<(), Sense> {
        let num = self.device.num_blocks();
        let ok = if blocks == 0 {
            lba < num
        } else {
            lba.checked_add(blocks).is_some_and(|end| end <= num)
        };
        if ok {
            Ok(())
        } else {
            Err(Sense::lba_out_of_range())
        }
    }

    fn check_transfer(&self, blocks: u32) -> Result<(), Sense> {
        if blocks > self.limits.max_transfer_blocks {
            return Err(Sense::invalid_cdb());
        }
        Ok(())
    }

    fn check_writable(&self) -> Result<(), Sense> {
        if self.config.read_only {
            return Err(Sense::new(key::DATA_PROTECT, asc::WRITE_PROTECTED));
        }
        if self.mode.swp() {
            return Err(Sense::new(key::DATA_PROTECT, asc::SOFTWARE_WRITE_PROTECTED));
        }
        Ok(())
    }

    /// The first `len` bytes of data-out as a parameter list.
    fn params<'a>(cmd: &Command<'a>, len: u32) -> Result<Cow<'a, [u8]>, Sense> {
        cmd.data_out
            .head(len as usize)
            .ok_or_else(Sense::param_list_length)
    }

    /// The whole blocks of data-out a write may use, as the transport's
    /// pieces: at most what the CDB describes; a partial trailing block is
    /// refused (nothing written).
    fn write_data<'a>(&self, cmd: &Command<'a>, blocks: u32) -> Result<Payload<'a>, Sense> {
        let needed = blocks as usize * self.limits.block_size as usize;
        let len = cmd.data_out.len().min(needed);
        if !len.is_multiple_of(self.limits.block_size as usize) {
            return Err(Sense::illegal(asc::INVALID_FIELD_IN_IU));
        }
        Ok(Payload {
            pieces: cmd.data_out.slices(len),
            len,
        })
    }

    fn fua(&self, requested: bool) -> bool {
        requested || !self.mode.wce()
    }

    fn dispatch(&self, cmd: &Command<'_>, c: &Cdb) -> CmdResult {
        let nexus: &Nexus = cmd.nexus;
        match *c {
            Cdb::TestUnitReady | Cdb::StartStopUnit { .. } => Ok(Reply::good()),
            Cdb::PreventAllow { prevent } => {
                if prevent > 1 {
                    return Err(Sense::invalid_cdb_field(4, Some(1)));
                }
                Ok(Reply::good())
            }
            Cdb::RequestSense { desc, alloc_len } => {
                let s = self
                    .ua
                    .on_command(nexus, true)
                    .unwrap_or(Sense::new(key::NO_SENSE, asc::NO_ADDITIONAL_SENSE));
                Ok(Reply::alloc(s.encode(desc), alloc_len))
            }
            Cdb::Inquiry {
                evpd,
                page,
                alloc_len,
            } => {
                let data = if evpd {
                    inquiry::vpd(page, &self.identity(), &self.limits, nexus, nexus.tpgt)?
                } else {
                    inquiry::standard(&self.identity(), true)
                };
                Ok(Reply::alloc(data, alloc_len))
            }
            Cdb::ReportLuns { select, alloc_len } => {
                self.ua.clear(nexus, asc::REPORTED_LUNS_DATA_CHANGED);
                Ok(Reply::alloc(report_luns_data(select, &[0])?, alloc_len))
            }
            Cdb::ReadCapacity10 => {
                let last = self.device.num_blocks().saturating_sub(1);
                let mut d = Vec::with_capacity(8);
                d.extend_from_slice(&u32::try_from(last).unwrap_or(u32::MAX).to_be_bytes());
                d.extend_from_slice(&self.limits.block_size.to_be_bytes());
                Ok(Reply::alloc(d, 8))
            }
            Cdb::ReadCapacity16 { alloc_len } => {
                let mut d = vec![0u8; 32];
                d[0..8].copy_from_slice(&self.device.num_blocks().saturating_sub(1).to_be_bytes());
                d[8..12].copy_from_slice(&self.limits.block_size.to_be_bytes());
                d[13] = self.limits.lbppbe & 0x0f;
                if self.limits.thin {
                    d[14] = 0x80 | 0x40; // LBPME, LBPRZ
                }
                Ok(Reply::alloc(d, alloc_len))
            }
            Cdb::GetLbaStatus { lba, alloc_len } => self.get_lba_status(lba, alloc_len),
            Cdb::Read(io, _) => self.read(cmd, io),
            Cdb::Write(io, _) => self.write(cmd, io, false),
            Cdb::WriteAndVerify { io, bytchk } => self.write(cmd, io, bytchk),
            Cdb::Verify { io, bytchk } => self.verify(cmd, io, bytchk),
            Cdb::OrWrite(io) => self.or_write(cmd, io),
            Cdb::CompareAndWrite(io) => self.compare_and_write(cmd, io),
            Cdb::WriteSame {
                lba,
                blocks,
                unmap,
                anchor,
                ndob,
                ..
            } => self.write_same(cmd, lba, blocks, unmap, anchor, ndob),
            Cdb::Unmap { anchor, param_len } => self.unmap(cmd, anchor, param_len),
            Cdb::SynchronizeCache { lba, blocks } => {
                self.check_range(lba, u64::from(blocks))?;
                self.device.flush().map_err(dev_err(true))?;
                Ok(Reply::good())
            }
            Cdb::PreFetch { lba, blocks } => {
                self.check_range(lba, u64::from(blocks))?;
                Ok(Reply::good())
            }
            Cdb::ModeSense {
                dbd,
                llbaa,
                pc,
                page,
                subpage,
                alloc_len,
                ten,
            } => {
                let req = SenseRequest {
                    dbd,
                    llbaa,
                    pc,
                    page,
                    subpage,
                    ten,
                };
                let ctx = SenseContext {
                    write_protected: self.write_protected(),
                    num_blocks: self.device.num_blocks(),
                    block_size: self.limits.block_size,
                };
                Ok(Reply::alloc(self.mode.sense(&req, &ctx)?, alloc_len))
            }
            Cdb::ModeSelect {
                sp, param_len, ten, ..
            } => {
                let p = Self::params(cmd, param_len)?;
                self.mode.select(&p, ten, sp, self.limits.block_size)?;
                Ok(Reply::good())
            }
            Cdb::Reserve => self.reserve(nexus),
            Cdb::Release => self.release(nexus),
            Cdb::PersistentReserveIn {
                service_action,
                alloc_len,
            } => {
                let st = self.pr.read();
                let data = match service_action {
                    0 => st.read_keys(),
                    1 => st.read_reservation(),
                    2 => st.report_capabilities(self.pr_store.persistent()),
                    _ => st.read_full_status(),
                };
                Ok(Reply::alloc(data, alloc_len))
            }
            Cdb::PersistentReserveOut {
                service_action,
                scope,
                pr_type,
                param_len,
            } => self.pr_out(cmd, service_action, scope, pr_type, param_len),
            Cdb::ReportSupportedOpcodes {
                rctd,
                options,
                opcode,
                service_action,
                alloc_len,
            } => {
                let data = rsoc::report(self.limits.thin, rctd, options, opcode, service_action)?;
                Ok(Reply::alloc(data, alloc_len))
            }
            Cdb::ReportSupportedTmfs { repd, alloc_len } => {
                Ok(Reply::alloc(rsoc::report_tmfs(repd), alloc_len))
            }
            Cdb::ReportTargetPortGroups {
                extended,
                alloc_len,
            } => Ok(Reply::alloc(
                inquiry::report_target_port_groups(nexus, nexus.tpgt, extended),
                alloc_len,
            )),
            Cdb::ExtendedCopy { param_len } => {
                let p = Self::params(cmd, param_len)?;
                xcopy::extended_copy(self, nexus, &p)?;
                Ok(Reply::good())
            }
            Cdb::ReceiveCopyResults {
                service_action,
                list_id,
                alloc_len,
            } => {
                let data = if service_action == cdb::sa::COPY_STATUS {
                    xcopy::copy_status(self, nexus, list_id)?
                } else {
                    xcopy::operating_parameters(self.limits.block_size)
                };
                Ok(Reply::alloc(data, alloc_len))
            }
            Cdb::ReadDefectData {
                flags,
                alloc_len,
                twelve,
            } => {
                // No defects; echo the requested list bits and format.
                let mut d = vec![0u8; if twelve { 8 } else { 4 }];
                d[1] = flags & 0x1f;
                Ok(Reply::alloc(d, alloc_len))
            }
        }
    }

    fn read(&self, cmd: &Command<'_>, io: BlockIo) -> CmdResult {
        let (mut buf, want) = self.read_buffer(cmd, io)?;
        if !buf.is_empty() {
            self.device.read(io.lba, &mut buf).map_err(dev_err(false))?;
        }
        Ok(self.read_reply(buf, want, io))
    }

    /// A READ's checks and its buffer: only the blocks the initiator will
    /// receive, whole; plus how many bytes of it the initiator wants.
    fn read_buffer(&self, cmd: &Command<'_>, io: BlockIo) -> Result<(Vec<u8>, usize), Sense> {
        self.check_range(io.lba, u64::from(io.blocks))?;
        self.check_transfer(io.blocks)?;
        let bs = self.limits.block_size as usize;
        let want = (io.blocks as usize * bs).min(cmd.expected_in as usize);
        Ok((vec![0u8; want.div_ceil(bs) * bs], want))
    }

    /// The GOOD reply of a READ whose buffer was filled.
    fn read_reply(&self, mut buf: Vec<u8>, want: usize, io: BlockIo) -> Reply {
        buf.truncate(want);
        Reply {
            status: Status::GOOD,
            sense: None,
            data: buf,
            transfer_length: io.blocks.saturating_mul(self.limits.block_size),
        }
    }

    /// A WRITE's checks and the whole blocks of data it carries.
    fn write_payload<'a>(&self, cmd: &Command<'a>, io: BlockIo) -> Result<Payload<'a>, Sense> {
        self.check_range(io.lba, u64::from(io.blocks))?;
        self.check_transfer(io.blocks)?;
        self.check_writable()?;
        self.write_data(cmd, io.blocks)
    }

    fn write(&self, cmd: &Command<'_>, io: BlockIo, verify: bool) -> CmdResult {
        let data = self.write_payload(cmd, io)?;
        if data.len == 0 {
            return Ok(Reply::good());
        }
        let n = (data.len / self.limits.block_size as usize) as u64;
        {
            let _guard = self.locks.shared(io.lba, n);
            self.device
                .write_vectored(io.lba, &data.pieces, self.fua(io.fua || verify))
                .map_err(dev_err(true))?;
        }
        if verify {
            let mut back = vec![0u8; data.len];
            self.device
                .read(io.lba, &mut back)
                .map_err(dev_err(false))?;
            if let Some(off) = first_difference(&back, &data.gather()) {
                return Err(Sense::miscompare(off as u64));
            }
        }
        Ok(Reply::good())
    }

    fn verify(&self, cmd: &Command<'_>, io: BlockIo, bytchk: u8) -> CmdResult {
        self.check_range(io.lba, u64::from(io.blocks))?;
        self.check_transfer(io.blocks)?;
        let bs = self.limits.block_size as usize;
        let (expected, blocks): (Cow<'_, [u8]>, u64) = match bytchk {
            0 => (Cow::Borrowed(&[]), u64::from(io.blocks)),
            1 => {
                let d = self.write_data(cmd, io.blocks)?;
                let blocks = (d.len / bs) as u64;
                (d.gather(), blocks)
            }
            _ => {
                if io.blocks == 0 {
                    return Ok(Reply::good());
                }
                let d = cmd
                    .data_out
                    .head(bs)
                    .ok_or_else(|| Sense::illegal(asc::INVALID_FIELD_IN_IU))?;
                (d, u64::from(io.blocks))
            }
        };
        let chunk_blocks = (VERIFY_CHUNK / bs).max(1) as u64;
        let mut buf = vec![0u8; (chunk_blocks.min(blocks) as usize) * bs];
        let mut done = 0u64;
        while done < blocks {
            let n = chunk_blocks.min(blocks - done);
            let len = n as usize * bs;
            self.device
                .read(io.lba + done, &mut buf[..len])
                .map_err(dev_err(false))?;
            let base = done as usize * bs;
            match bytchk {
                1 => {
                    if let Some(off) = first_difference(&buf[..len], &expected[base..base + len]) {
                        return Err(Sense::miscompare((base + off) as u64));
                    }
                }
                3 => {
                    for block in buf[..len].chunks_exact(bs) {
                        if let Some(off) = first_difference(block, &expected) {
                            return Err(Sense::miscompare(off as u64));
                        }
                    }
                }
                _ => {}
            }
            done += n;
        }
        Ok(Reply::good())
    }

    fn or_write(&self, cmd: &Command<'_>, io: BlockIo) -> CmdResult {
        self.check_range(io.lba, u64::from(io.blocks))?;
        self.check_transfer(io.blocks)?;
        self.check_writable()?;
        let data = self.write_data(cmd, io.blocks)?;
        if data.len == 0 {
            return Ok(Reply::good());
        }
        let n = (data.len / self.limits.block_size as usize) as u64;
        let _guard = self.locks.exclusive(io.lba, n);
        let mut cur = vec![0u8; data.len];
        self.device.read(io.lba, &mut cur).map_err(dev_err(false))?;
        for (c, d) in cur.iter_mut().zip(data.pieces.iter().copied().flatten()) {
            *c |= *d;
        }
        self.device
            .write(io.lba, &cur, self.fua(io.fua))
            .map_err(dev_err(true))?;
        Ok(Reply::good())
    }

    fn compare_and_write(&self, cmd: &Command<'_>, io: BlockIo) -> CmdResult {
        if io.blocks > u32::from(self.limits.max_caw_blocks) {
            return Err(Sense::invalid_cdb_field(13, None));
        }
        self.check_range(io.lba, u64::from(io.blocks))?;
        self.check_writable()?;
        let len = io.blocks as usize * self.limits.block_size as usize;
        if cmd.data_out.len() != 2 * len {
            // The data-out must hold exactly the verify and write halves
            // (this also catches 256 blocks wrapping to 0 in the CDB).
            return Err(Sense::invalid_cdb_field(13, None));
        }
        if io.blocks == 0 {
            return Ok(Reply::good());
        }
        let both = cmd
            .data_out
            .head(2 * len)
            .ok_or_else(|| Sense::invalid_cdb_field(13, None))?;
        let (verify, write) = both.split_at(len);
        let _guard = self.locks.exclusive(io.lba, u64::from(io.blocks));
        let mut cur = vec![0u8; len];
        self.device.read(io.lba, &mut cur).map_err(dev_err(false))?;
        if let Some(off) = first_difference(&cur, verify) {
            return Err(Sense::miscompare(off as u64));
        }
        self.device
            .write(io.lba, write, self.fua(io.fua))
            .map_err(dev_err(true))?;
        Ok(Reply::good())
    }

    fn write_same(
        &self,
        cmd: &Command<'_>,
        lba: u64,
        blocks: u32,
        unmap: bool,
        anchor: bool,
        ndob: bool,
    ) -> CmdResult {
        if anchor {
            return Err(Sense::invalid_cdb_field(1, Some(4)));
        }
        if blocks == 0 {
            // WSNZ=1: "to the end of the medium" is not supported.
            self.check_range(lba, 0)?;
            return Err(Sense::invalid_cdb_field(10, None));
        }
        if u64::from(blocks) > self.limits.max_write_same_blocks {
            return Err(Sense::invalid_cdb_field(10, None));
        }
        self.check_range(lba, u64::from(blocks))?;
        self.check_writable()?;
        if unmap && !self.limits.thin {
            return Err(Sense::invalid_cdb_field(1, Some(3)));
        }
        let bs = self.limits.block_size as usize;
        let pattern: Cow<'_, [u8]> = if ndob {
            Cow::Owned(vec![0u8; bs])
        } else {
            match cmd.data_out.head(bs) {
                Some(p) if cmd.data_out.len() == bs => p,
                _ => return Err(Sense::illegal(asc::INVALID_FIELD_IN_IU)),
            }
        };
        let blocks = u64::from(blocks);
        let _guard = self.locks.shared(lba, blocks);
        if unmap && pattern.iter().all(|b| *b == 0) {
            // LBPRZ: unmapped blocks read as zeros, exactly what was asked.
            self.device.unmap(lba, blocks).map_err(dev_err(true))?;
            return Ok(Reply::good());
        }
        let chunk_blocks = (WRITE_SAME_CHUNK / bs).max(1) as u64;
        let n = chunk_blocks.min(blocks);
        let buf = pattern.repeat(n as usize);
        let fua = self.fua(false);
        let mut done = 0u64;
        while done < blocks {
            let n = chunk_blocks.min(blocks - done);
            self.device
                .write(lba + done, &buf[..n as usize * bs], fua)
                .map_err(dev_err(true))?;
            done += n;
        }
        Ok(Reply::good())
    }

    fn unmap(&self, cmd: &Command<'_>, anchor: bool, param_len: u32) -> CmdResult {
        if !self.limits.thin {
            return Err(Sense::invalid_opcode());
        }
        if anchor {
            return Err(Sense::invalid_cdb_field(1, Some(0)));
        }
        self.check_writable()?;
        if param_len == 0 {
            return Ok(Reply::good());
        }
        if param_len < 8 {
            return Err(Sense::param_list_length());
        }
        let p = Self::params(cmd, param_len)?;
        let bd_len = usize::from(u16::from_be_bytes([p[2], p[3]]));
        let descriptors = bd_len.min(p.len() - 8) / 16;
        if descriptors > self.limits.max_unmap_descriptors as usize {
            return Err(Sense::invalid_param_field(2));
        }
        let mut ranges = Vec::with_capacity(descriptors);
        for (i, d) in p[8..8 + descriptors * 16].chunks_exact(16).enumerate() {
            let mut lba = [0u8; 8];
            lba.copy_from_slice(&d[..8]);
            let lba = u64::from_be_bytes(lba);
            let n = u32::from_be_bytes([d[8], d[9], d[10], d[11]]);
            if n == 0 {
                continue;
            }
            if n > self.limits.max_unmap_blocks {
                return Err(Sense::invalid_param_field((8 + i * 16 + 8) as u16));
            }
            self.check_range(lba, u64::from(n))?;
            ranges.push((lba, u64::from(n)));
        }
        for (lba, n) in ranges {
            let _guard = self.locks.shared(lba, n);
            self.device.unmap(lba, n).map_err(dev_err(true))?;
        }
        Ok(Reply::good())
    }

    fn get_lba_status(&self, lba: u64, alloc_len: u32) -> CmdResult {
        let num = self.device.num_blocks();
        if lba >= num {
            return Err(Sense::lba_out_of_range());
        }
        let max = (alloc_len.saturating_sub(8) / 16).clamp(1, MAX_LBA_STATUS_DESCRIPTORS);
        let mut body = Vec::new();
        let mut cur = lba;
        let mut count = 0;
        while count < max && cur < num {
            let limit = (num - cur).min(u64::from(u32::MAX));
            let (state, run) = self
                .device
                .provisioning(cur, limit)
                .map_err(dev_err(false))?;
            let run = run.clamp(1, limit);
            body.extend_from_slice(&cur.to_be_bytes());
            body.extend_from_slice(&(run as u32).to_be_bytes());
            body.push(match state {
                Provisioning::Mapped => 0,
                Provisioning::Deallocated => 1,
            });
            body.extend_from_slice(&[0; 3]);
            cur += run;
            count += 1;
        }
        let mut d = Vec::with_capacity(8 + body.len());
        d.extend_from_slice(&((4 + body.len()) as u32).to_be_bytes());
        d.extend_from_slice(&[0; 4]);
        d.extend_from_slice(&body);
        Ok(Reply::alloc(d, alloc_len))
    }

    fn reserve(&self, nexus: &Nexus) -> CmdResult {
        if !self.pr.read().registrations.is_empty() {
            return Ok(Reply::conflict());
        }
        let mut holder = self.spc2.lock();
        match holder.as_ref() {
            Some(h) if h != nexus => Ok(Reply::conflict()),
            _ => {
                *holder = Some(nexus.clone());
                self.spc2_active.store(true, Ordering::Release);
                Ok(Reply::good())
            }
        }
    }

    fn release(&self, nexus: &Nexus) -> CmdResult {
        if !self.pr.read().registrations.is_empty() {
            return Ok(Reply::conflict());
        }
        let mut holder = self.spc2.lock();
        if holder.as_ref() == Some(nexus) {
            *holder = None;
            self.spc2_active.store(false, Ordering::Release);
        }
        // Releasing a reservation held by someone else is a no-op.
        Ok(Reply::good())
    }

    fn pr_out(
        &self,
        cmd: &Command<'_>,
        service_action: u8,
        scope: u8,
        pr_type: u8,
        param_len: u32,
    ) -> CmdResult {
        if param_len > MAX_PR_OUT_PARAMS {
            return Err(Sense::param_list_length());
        }
        let params = Self::params(cmd, param_len)?;
        let _serial = self.pr_out.lock();
        let mut next = self.pr.read().clone();
        let it = ItNexus::of(cmd.nexus);
        let req = OutRequest {
            service_action,
            scope,
            pr_type,
            params: &params,
            relative_port_id: cmd.nexus.relative_port_id,
            ptpl_capable: self.pr_store.persistent(),
        };
        let posts = match next.apply_out(&it, &req) {
            Ok(posts) => posts,
            Err(PrError::Conflict) => return Ok(Reply::conflict()),
            Err(PrError::Check(s)) => return Err(s),
        };
        if next != *self.pr.read() {
            if let Err(e) = self.pr_store.save(&next) {
                tracing::error!(error = %e, serial = %self.config.serial,
                    "cannot persist persistent reservation state");
                return Err(Sense::new(
                    key::HARDWARE_ERROR,
                    asc::INTERNAL_TARGET_FAILURE,
                ));
            }
            let reserved = next.reservation.is_some();
            *self.pr.write() = next;
            self.pr_reserved.store(reserved, Ordering::Release);
        }
        for (n, code) in posts {
            self.ua.post_it(&n, code);
        }
        Ok(Reply::good())
    }
}

/// How `c` is treated in the presence of a persistent reservation held by
/// somebody else (SPC-4 table 66 / SBC-3 table 13).
fn access_class(c: &Cdb) -> Access {
    match *c {
        Cdb::Inquiry { .. }
        | Cdb::RequestSense { .. }
        | Cdb::ReportLuns { .. }
        | Cdb::TestUnitReady
        | Cdb::ReadCapacity10
        | Cdb::ReadCapacity16 { .. }
        | Cdb::PersistentReserveIn { .. }
        | Cdb::PersistentReserveOut { .. }
        | Cdb::ReportSupportedOpcodes { .. }
        | Cdb::ReportSupportedTmfs { .. }
        | Cdb::ReportTargetPortGroups { .. }
        | Cdb::Reserve
        | Cdb::Release
        | Cdb::PreventAllow { prevent: 0 } => Access::Any,
        Cdb::StartStopUnit {
            start: true,
            power_condition: 0,
            ..
        } => Access::Any,
        Cdb::Read(..)
        | Cdb::Verify { .. }
        | Cdb::PreFetch { .. }
        | Cdb::GetLbaStatus { .. }
        | Cdb::ReadDefectData { .. } => Access::Read,
        _ => Access::Write,
    }
}

/// REPORT LUNS parameter data for `luns`.
pub(crate) fn report_luns_data(select: u8, luns: &[u64]) -> Result<Vec<u8>, Sense> {
    let listed: &[u64] = match select {
        0x00 | 0x02 => luns,
        // Well-known logical units only: we have none.
        0x01 => &[],
        _ => return Err(Sense::invalid_cdb_field(2, None)),
    };
    let mut d = Vec::with_capacity(8 + 8 * listed.len());
    d.extend_from_slice(&((8 * listed.len()) as u32).to_be_bytes());
    d.extend_from_slice(&[0; 4]);
    for lun in listed {
        d.extend_from_slice(&crate::lun::encode(*lun));
    }
    Ok(d)
}

#[cfg(test)]
#[path = "lu_tests.rs"]
mod tests;
