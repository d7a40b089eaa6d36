//! One logical unit over a [`BlockDevice`]: the SBC-3 / SPC-4 device
//! server.
//!
//! [`LogicalUnit`] owns the unit's state (configuration and limits, mode
//! pages, unit attentions, stripe locks, reservations, held copy results)
//! and is split along its parts, each adding `impl LogicalUnit` blocks or
//! owning a piece of the state:
//! - `config`: [`LuConfig`], identity (serial, NAA), [`ScsiError`];
//! - `reply`: what a command produces and how it becomes a
//!   [`Completion`](crate::Completion);
//! - `checks`: the checks shared by command families, data-out borrowing;
//! - `access`: the path state (ALUA) the daemon sets, and its unit
//!   attention;
//! - `io`: the data path (READ, WRITE, VERIFY, COMPARE AND WRITE, WRITE
//!   SAME, SYNCHRONIZE CACHE, ...) and its inline (non-blocking) variants;
//! - `provisioning`: READ CAPACITY, GET LBA STATUS, UNMAP, capacity
//!   changes;
//! - `reservations`: SPC-2 and persistent reservation state and glue;
//! - `copy`: the unit as an EXTENDED COPY source / destination, and the
//!   copy commands;
//! - `dispatch`: the entry points (`execute`, `try_execute_nowait`) and the
//!   dispatch from a decoded CDB to the parts above.
//!
//! The children stand in one order (each uses only those before it):
//! `config`, `reply`, `checks`, `access`, `io`, `provisioning`,
//! `reservations`, `copy`, `dispatch`.
//!
//! Invariants (the parts state their own in detail):
//! - Every data-in buffer is bounded by the allocation length, the
//!   initiator's expected length and, for READ, the advertised maximum
//!   transfer length; parameter lists are only borrowed from data-out.
//! - Every write to the medium holds the stripe locks of its LBA range
//!   shared; COMPARE AND WRITE and ORWRITE hold them exclusive across their
//!   read-compare/modify-write, so they are atomic against all writes.
//! - Writes use FUA when the CDB asks for it or when the caching mode
//!   page's WCE is 0; SYNCHRONIZE CACHE flushes the device.
//! - Persistent reservation changes are committed to the unit's
//!   reservation store (a file when a state path is configured, or the
//!   store the daemon gave it) before they take effect.
//! - Through a port that is not active (standby, unavailable,
//!   transitioning) only the commands SPC-4 5.16.2.4 allows are served, and
//!   none of them touches the device's data path: a standby unit may sit
//!   on a placeholder device whose I/O fails.

mod access;
mod checks;
mod config;
mod copy;
mod dispatch;
mod io;
mod provisioning;
mod reply;
mod reservations;

use std::sync::Arc;

use bytes::Bytes;
use depot_block::BlockDevice;

use crate::Nexus;
use crate::alua::PortState;
use crate::inquiry::Limits;
use crate::mode::ModeState;
use crate::pr::{FileReservationStore, ReservationStore};
use crate::range_lock::RangeLocks;
use crate::registry::Registry;
use crate::sense::{Sense, asc};
use crate::ua::UnitAttentions;
use crate::xcopy::CopyResults;

pub use config::{DEFAULT_MAX_TRANSFER_BYTES, DEPOT_OUI, LuConfig, ScsiError};
use reservations::Reservations;

/// A logical unit: device server state over one block device.
pub struct LogicalUnit {
    config: LuConfig,
    device: Arc<dyn BlockDevice>,
    registry: Arc<Registry>,
    limits: Limits,
    mode: ModeState,
    ua: UnitAttentions,
    locks: RangeLocks,
    reservations: Reservations,
    copies: CopyResults,
    ports: PortState,
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
    /// Creates a logical unit, loads its saved PR state (from
    /// `config.pr_state_path`, the file store) and registers it (by NAA)
    /// for EXTENDED COPY.
    pub fn new(
        config: LuConfig,
        device: Arc<dyn BlockDevice>,
        registry: &Arc<Registry>,
    ) -> Result<Arc<Self>, ScsiError> {
        Self::build(config, device, registry, None)
    }

    /// Like [`new`](Self::new), with persistent reservation state kept in
    /// `store` (e.g. one several routers share) instead of
    /// `config.pr_state_path`; the state `store` holds now is loaded.
    pub fn with_reservation_store(
        config: LuConfig,
        device: Arc<dyn BlockDevice>,
        registry: &Arc<Registry>,
        store: Arc<dyn ReservationStore>,
    ) -> Result<Arc<Self>, ScsiError> {
        Self::build(config, device, registry, Some(store))
    }

    fn build(
        config: LuConfig,
        device: Arc<dyn BlockDevice>,
        registry: &Arc<Registry>,
        store: Option<Arc<dyn ReservationStore>>,
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
        let store = match store {
            Some(store) => store,
            None => {
                let path = config.pr_state_path.clone();
                let file = FileReservationStore::open(path.clone()).map_err(|source| {
                    ScsiError::PrState {
                        path: path.unwrap_or_default(),
                        source,
                    }
                })?;
                Arc::new(file)
            }
        };
        let reservations = Reservations::new(store).map_err(ScsiError::ReservationStore)?;
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
        let naa = config.naa;
        let lu = Arc::new(LogicalUnit {
            config,
            device,
            registry: registry.clone(),
            limits,
            mode: ModeState::default(),
            ua: UnitAttentions::default(),
            locks: RangeLocks::default(),
            reservations,
            copies: CopyResults::default(),
            ports: PortState::default(),
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

    /// Whether writes are refused: by configuration or by the control
    /// mode page's SWP.
    pub(crate) fn write_protected(&self) -> bool {
        self.config.read_only || self.mode.swp()
    }

    /// Encodes sense in the format the control mode page selects.
    pub(crate) fn encode_sense(&self, s: &Sense) -> Bytes {
        Bytes::from(s.encode(self.mode.d_sense()))
    }

    /// Logical unit / target reset: drops the SPC-2 reservation and
    /// establishes `code` for every nexus. PR state is untouched.
    pub(crate) fn reset(&self, code: asc::Code) {
        self.reservations.reset();
        self.ua.post_all(code);
    }

    /// I_T nexus loss: releases its SPC-2 reservation and forgets its unit
    /// attentions and held copy results; PR registrations are kept.
    pub(crate) fn nexus_lost(&self, nexus: &Nexus) {
        self.reservations.nexus_lost(nexus);
        self.ua.forget(nexus);
        self.copies.forget(nexus);
    }
}

#[cfg(test)]
mod deferred_tests;
#[cfg(test)]
mod grid_tests;
#[cfg(test)]
mod tests;
