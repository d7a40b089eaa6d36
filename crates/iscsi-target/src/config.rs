//! Portal settings and the names every portal shares.
//!
//! Owns [`PortalConfig`] (negotiation limits, queue depth, timers, the
//! portal group tag) and the crate-wide constants. Invariant: everything a
//! connection needs to know about its portal flows from one
//! `PortalConfig`, so two routers can run portals with different settings
//! (e.g. their own target portal group tags) in one process.

use std::time::Duration;

use depot_iscsi_proto::params::TargetLimits;

/// Prefix of every Depot target name; the VM name follows it.
pub const IQN_PREFIX: &str = "iqn.2026-11.io.depot:";

/// Default target portal group tag of a portal (one portal group per node);
/// see [`PortalConfig::portal_group_tag`].
pub const PORTAL_GROUP_TAG: u16 = 1;

/// Portal settings.
#[derive(Debug, Clone)]
pub struct PortalConfig {
    /// Negotiation limits.
    pub limits: TargetLimits,
    /// Commands the initiator may have queued (MaxCmdSN - ExpCmdSN + 1).
    pub queue_depth: u32,
    /// Largest expected data transfer length accepted for a write.
    pub max_write_transfer: u32,
    /// Idle time before the target pings the initiator with a NOP-In.
    pub nop_interval: Duration,
    /// How long a NOP-In ping may go unanswered before the connection is
    /// dropped.
    pub nop_timeout: Duration,
    /// How long a login may take.
    pub login_timeout: Duration,
    /// On shutdown, how long in-flight commands get to complete.
    pub shutdown_grace: Duration,
    /// Target portal group tag of this portal: sent at login
    /// (TargetPortalGroupTag), in SendTargets addresses and in the SCSI
    /// target port name of every nexus.
    pub portal_group_tag: u16,
}

impl Default for PortalConfig {
    fn default() -> Self {
        PortalConfig {
            limits: TargetLimits::default(),
            queue_depth: 128,
            max_write_transfer: 32 << 20,
            nop_interval: Duration::from_secs(10),
            nop_timeout: Duration::from_secs(30),
            login_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(10),
            portal_group_tag: PORTAL_GROUP_TAG,
        }
    }
}
