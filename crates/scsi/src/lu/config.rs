//! A logical unit's static configuration and identity: [`LuConfig`]
//! (vendor / product / revision strings, unit serial number, NAA
//! designator, limits), the deterministic NAA derivation
//! ([`LuConfig::naa_from_id`]) and the errors of creating a logical unit
//! ([`ScsiError`]).
//!
//! Invariants: the configuration never changes after the logical unit is
//! created; the serial and the NAA designator are what the initiator sees
//! in VPD pages 0x80 / 0x83 and must be stable across restarts (and equal
//! on HA peers), so `naa_from_id` is a pure function of its id.

use std::path::PathBuf;

use crate::inquiry::Identity;
use crate::pr::StoreError;

/// Default MAXIMUM TRANSFER LENGTH in bytes.
pub const DEFAULT_MAX_TRANSFER_BYTES: u32 = 32 << 20;
/// Company ID used by [`LuConfig::naa_from_id`]. A CID-format placeholder
/// (second hex digit `A`); replace with an IEEE assignment before shipping.
pub const DEPOT_OUI: u32 = 0xda_de_70;

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
    /// APTPL requests are refused. Ignored when the unit is created with
    /// its own store ([`LogicalUnit::with_reservation_store`](crate::LogicalUnit::with_reservation_store)).
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
        // NAA 6 (4 bits), the OUI (24), the vendor specific identifier
        // (36: the id's high half folded) and its extension (64: the id's
        // low half), big-endian.
        let vsid = ((id >> 64) ^ (id >> 100)) & 0xf_ffff_ffff;
        let ext = id & u128::from(u64::MAX);
        let naa = (0x6 << 124) | (u128::from(DEPOT_OUI & 0xff_ffff) << 100) | (vsid << 64) | ext;
        naa.to_be_bytes()
    }

    /// What INQUIRY and the VPD pages report about this logical unit.
    pub(super) fn identity(&self) -> Identity<'_> {
        Identity {
            vendor: &self.vendor,
            product: &self.product,
            revision: &self.revision,
            serial: &self.serial,
            naa: &self.naa,
        }
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
    /// The reservation store given to the unit could not load its state.
    #[error("cannot load persistent reservation state: {0}")]
    ReservationStore(#[source] StoreError),
}
