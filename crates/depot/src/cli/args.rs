//! The command line's arguments (clap): the global client flags and the
//! `vpool|vm|vdisk|snapshot` subcommands, plus the small interpretations of
//! argument text (sizes, `VDISK@SNAPSHOT`, relative paths) done before
//! anything reaches the daemon.
//!
//! Invariants: flag names, defaults, environment variables and help texts
//! are the CLI's contract (scripts and docs/api.md use them); sizes are
//! parsed here so a typo never reaches the daemon.

use std::path::PathBuf;

use anyhow::bail;
use clap::{Args, Subcommand};

use crate::size;

/// Where and how to reach the API.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// Management API URL.
    #[arg(
        long,
        global = true,
        env = "DEPOT_API",
        default_value = "http://127.0.0.1:8080"
    )]
    pub api: String,
    /// Bearer token.
    #[arg(long, global = true, env = "DEPOT_API_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// PEM CA certificate to trust for an https API (self-signed daemons).
    #[arg(long, global = true, env = "DEPOT_API_CA")]
    pub ca: Option<PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
}

/// `depot vpool ...`
// Parsed once per process; boxing the big variant buys nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum VPoolCmd {
    /// Create a vPool (default backend: a local directory under the data dir).
    Create {
        /// Name.
        name: String,
        /// Local directory backend.
        #[arg(long, conflicts_with = "s3_bucket")]
        backend_dir: Option<PathBuf>,
        /// S3 endpoint URL (omit for AWS).
        #[arg(long)]
        s3_endpoint: Option<String>,
        /// S3 bucket: selects the S3 backend.
        #[arg(long)]
        s3_bucket: Option<String>,
        /// S3 region.
        #[arg(long, default_value = "us-east-1")]
        s3_region: String,
        /// S3 access key id.
        #[arg(long, env = "DEPOT_S3_ACCESS_KEY_ID")]
        s3_access_key: Option<String>,
        /// S3 secret access key.
        #[arg(long, env = "DEPOT_S3_SECRET_ACCESS_KEY", hide_env_values = true)]
        s3_secret_key: Option<String>,
        /// Allow a plain-HTTP S3 endpoint.
        #[arg(long)]
        s3_allow_http: bool,
        /// Flash cache directory (repeatable).
        #[arg(long = "cache-dir")]
        cache_dirs: Vec<PathBuf>,
        /// Block size of new vDisks (512 or 4096).
        #[arg(long, default_value_t = 512)]
        block_size: u32,
        /// Per-vDisk write buffer (unshipped data cap; recent data below
        /// three quarters of it is rewritten in place until it ships).
        #[arg(long, default_value = "2G")]
        write_buffer: String,
        /// Read-cache capacity.
        #[arg(long, default_value = "1G")]
        read_cache: String,
    },
    /// List vPools.
    List,
    /// Show a vPool.
    Show {
        /// Name.
        name: String,
    },
    /// Delete an empty vPool.
    Delete {
        /// Name.
        name: String,
    },
}

/// `depot vm ...`
#[derive(Debug, Subcommand)]
pub enum VmCmd {
    /// Create a VM (its iSCSI target is iqn.2026-11.io.depot:NAME).
    Create {
        /// Name.
        name: String,
        /// Initiator name allowed to log in (repeatable; none: any).
        #[arg(long = "initiator")]
        initiators: Vec<String>,
        /// CHAP user the initiator must present.
        #[arg(long, requires = "chap_secret")]
        chap_user: Option<String>,
        /// CHAP secret.
        #[arg(long, requires = "chap_user")]
        chap_secret: Option<String>,
        /// Mutual CHAP: the target's user.
        #[arg(long, requires_all = ["chap_user", "target_secret"])]
        target_user: Option<String>,
        /// Mutual CHAP: the target's secret.
        #[arg(long, requires = "target_user")]
        target_secret: Option<String>,
        /// Its hosts run multipath (dm-multipath, ESXi): every router of a
        /// cluster offers an ALUA path. Without it, logins at a router that
        /// does not serve the VM are redirected to the one that does.
        #[arg(long)]
        multipath: bool,
        /// How the VM's unshipped writes are mirrored to another router of
        /// a cluster: sync (acknowledged once the mirror has them), async
        /// (flushes wait for the mirror, the rest is queued) or none.
        #[arg(long, value_name = "MODE")]
        dtl: Option<depot_dtl::Mode>,
    },
    /// List VMs.
    List,
    /// Show a VM.
    Show {
        /// Name.
        name: String,
    },
    /// Delete a VM (it must have no vDisks and no sessions).
    Delete {
        /// Name.
        name: String,
    },
    /// Move all of a VM's vDisks to another router of the cluster, live.
    Move {
        /// Name.
        name: String,
        /// The router to move it to.
        #[arg(long)]
        to: String,
    },
}

/// `depot vdisk ...`
#[derive(Debug, Subcommand)]
pub enum VDiskCmd {
    /// Create a vDisk on the next LUN of a VM.
    Create {
        /// Name (unique on the node).
        name: String,
        /// VM.
        #[arg(long)]
        vm: String,
        /// Size: 512M, 20G, 1T (optional for clones).
        #[arg(long)]
        size: Option<String>,
        /// vPool (default: `default`).
        #[arg(long)]
        vpool: Option<String>,
        /// Storage kind.
        #[arg(long, value_parser = ["engine", "raw"])]
        kind: Option<String>,
        /// Clone from VDISK@SNAPSHOT.
        #[arg(long, conflicts_with = "template")]
        from: Option<String>,
        /// Clone from a template vDisk.
        #[arg(long)]
        template: Option<String>,
        /// Block size (512 or 4096).
        #[arg(long)]
        block_size: Option<u32>,
        /// Expose write-protected.
        #[arg(long)]
        read_only: bool,
    },
    /// List vDisks.
    List {
        /// Only this VM's.
        #[arg(long)]
        vm: Option<String>,
    },
    /// Show a vDisk.
    Show {
        /// Name.
        name: String,
    },
    /// Grow a vDisk.
    Resize {
        /// Name.
        name: String,
        /// New size.
        size: String,
    },
    /// Delete a vDisk.
    Delete {
        /// Name.
        name: String,
    },
    /// Clone a snapshot into a new vDisk.
    Clone {
        /// Source, VDISK@SNAPSHOT.
        source: String,
        /// New vDisk name.
        new: String,
        /// VM of the new vDisk.
        #[arg(long)]
        vm: String,
        /// Grow the clone to this size.
        #[arg(long)]
        size: Option<String>,
    },
    /// Move a vDisk to another router of the cluster, live.
    Move {
        /// Name.
        name: String,
        /// The router to move it to.
        #[arg(long)]
        to: String,
        /// The owner is down: take the vDisk over from the backend (writes
        /// the owner acknowledged but had not shipped are lost).
        #[arg(long)]
        force: bool,
    },
    /// The owner is down and no router held an in-sync mirror: state the
    /// recovery point (the backend's copy) and, with --accept-loss, serve
    /// the vDisk from it on this router.
    Recover {
        /// Name.
        name: String,
        /// Take it over although writes the owner acknowledged after its
        /// last upload are lost.
        #[arg(long)]
        accept_loss: bool,
    },
    /// Mark a vDisk as a template (read-only; clone VMs from it).
    Template {
        /// Name.
        name: String,
        /// Unmark instead.
        #[arg(long)]
        off: bool,
    },
}

/// `depot snapshot ...`
#[derive(Debug, Subcommand)]
pub enum SnapshotCmd {
    /// Snapshot a vDisk (name optional).
    Create {
        /// vDisk (or VDISK@SNAPSHOT).
        vdisk: String,
        /// Snapshot name.
        snapshot: Option<String>,
    },
    /// List a vDisk's snapshots.
    List {
        /// vDisk.
        vdisk: String,
    },
    /// Delete a snapshot.
    Delete {
        /// vDisk (or VDISK@SNAPSHOT).
        vdisk: String,
        /// Snapshot.
        snapshot: Option<String>,
    },
    /// Roll a vDisk back to a snapshot.
    Rollback {
        /// vDisk (or VDISK@SNAPSHOT).
        vdisk: String,
        /// Snapshot.
        snapshot: Option<String>,
    },
}

/// `depot router ...`
#[derive(Debug, Subcommand)]
pub enum RouterCmd {
    /// List the cluster's routers with their state and the vDisks each owns.
    List,
    /// Move every vDisk off a router (for maintenance), VM by VM.
    Drain {
        /// The router to empty.
        name: String,
    },
}

/// A client command.
#[derive(Debug)]
pub enum ClientCmd {
    /// Routers of the cluster.
    Router(RouterCmd),
    /// vPools.
    VPool(VPoolCmd),
    /// VMs.
    Vm(VmCmd),
    /// vDisks.
    VDisk(VDiskCmd),
    /// Snapshots.
    Snapshot(SnapshotCmd),
}

/// A size argument (`512M`, `20G`, `1T`) in bytes.
pub fn parse_size(s: &str) -> anyhow::Result<u64> {
    size::parse(s).map_err(anyhow::Error::msg)
}

/// The (vDisk, snapshot) of `VDISK@SNAPSHOT` or of `VDISK SNAPSHOT`.
pub fn snap_args(vdisk: &str, snapshot: Option<String>) -> anyhow::Result<(String, String)> {
    match (vdisk.split_once('@'), snapshot) {
        (Some((d, s)), None) => Ok((d.to_string(), s.to_string())),
        (None, Some(s)) => Ok((vdisk.to_string(), s)),
        (Some(_), Some(_)) => bail!("give VDISK@SNAPSHOT or VDISK SNAPSHOT, not both"),
        (None, None) => bail!("which snapshot? give VDISK SNAPSHOT or VDISK@SNAPSHOT"),
    }
}

/// `p` made absolute against the current directory (the daemon may run
/// elsewhere).
pub fn absolute(p: PathBuf) -> PathBuf {
    std::path::absolute(&p).unwrap_or(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_arguments() {
        assert_eq!(snap_args("d@s", None).unwrap(), ("d".into(), "s".into()));
        assert_eq!(
            snap_args("d", Some("s".into())).unwrap(),
            ("d".into(), "s".into())
        );
        assert!(snap_args("d", None).is_err());
        assert!(snap_args("d@s", Some("t".into())).is_err());
    }

    #[test]
    fn sizes_and_paths() {
        assert_eq!(parse_size("2G").unwrap(), 2 << 30);
        assert!(parse_size("2Q").is_err());
        assert!(absolute("rel".into()).is_absolute());
    }
}
