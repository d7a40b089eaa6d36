//! The management model: the persisted records of vPools, VMs and vDisks
//! and the JSON shapes of the REST API (requests and views), shared by the
//! daemon and the CLI so both sides agree on one definition.
//!
//! Invariants: records hold secrets (S3 keys, CHAP secrets); views never do.
//! Names are the identity of every object (validated with
//! [`depot_engine::name::check_name`]); vDisk names are unique across the node so
//! `VDISK@SNAPSHOT` needs no VM to resolve.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Prefix of every target name; a VM's target is `<prefix><vm>`.
pub use depot_iscsi_target::IQN_PREFIX;

/// Where a vPool keeps its objects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum BackendSpec {
    /// A local directory (default: `<data_dir>/vpools/<name>/backend`).
    Local {
        /// Root directory.
        #[serde(default)]
        path: Option<PathBuf>,
    },
    /// An S3-compatible object store.
    S3 {
        /// Endpoint URL; absent means AWS for `region`.
        #[serde(default)]
        endpoint: Option<String>,
        /// Bucket (must exist).
        bucket: String,
        /// Region.
        #[serde(default = "default_region")]
        region: String,
        /// Access key id.
        access_key_id: String,
        /// Secret access key (never shown in views).
        #[serde(default, skip_serializing_if = "String::is_empty")]
        secret_access_key: String,
        /// Permit plain-HTTP endpoints.
        #[serde(default)]
        allow_http: bool,
    },
}

fn default_region() -> String {
    "us-east-1".into()
}

/// Default policies a vPool applies to its vDisks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Policy {
    /// Logical block size of new vDisks: 512 or 4096.
    pub block_size: u32,
    /// Per-vDisk cap on data written but not yet on the backend.
    pub write_buffer_bytes: u64,
    /// Flash read-cache capacity of the pool.
    pub read_cache_bytes: u64,
    /// Container (SCO) size.
    pub container_bytes: u64,
    /// Longest time written data waits before it is shipped.
    pub ship_interval_secs: u64,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            block_size: 512,
            write_buffer_bytes: 2 << 30,
            read_cache_bytes: 1 << 30,
            container_bytes: 64 << 20,
            ship_interval_secs: 30,
        }
    }
}

/// A persisted vPool.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VPoolRecord {
    /// Name.
    pub name: String,
    /// Backend (paths resolved).
    pub backend: BackendSpec,
    /// Flash cache directories (the engine uses the first today).
    pub cache_dirs: Vec<PathBuf>,
    /// Defaults for its vDisks.
    pub policy: Policy,
}

/// CHAP credentials of a VM's target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChapSpec {
    /// Initiator's CHAP name.
    pub user: String,
    /// Initiator's secret.
    pub secret: String,
    /// Target's CHAP name (mutual CHAP).
    #[serde(default)]
    pub target_user: Option<String>,
    /// Target's secret (mutual CHAP).
    #[serde(default)]
    pub target_secret: Option<String>,
}

/// A persisted VM.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmRecord {
    /// Name.
    pub name: String,
    /// Initiator names allowed to log in (empty: any).
    pub allowed_initiators: Vec<String>,
    /// CHAP, when required.
    pub chap: Option<ChapSpec>,
    /// The LUN the next vDisk gets (LUNs are never reused).
    pub next_lun: u64,
}

/// What stores a vDisk's blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VDiskKind {
    /// A volume of the tiered engine (snapshots, clones, templates).
    Engine,
    /// A raw sparse file.
    Raw,
}

impl std::fmt::Display for VDiskKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            VDiskKind::Engine => "engine",
            VDiskKind::Raw => "raw",
        })
    }
}

/// A persisted vDisk.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VDiskRecord {
    /// Name (unique on the node).
    pub name: String,
    /// The VM it belongs to.
    pub vm: String,
    /// Its LUN in the VM's target.
    pub lun: u64,
    /// Engine or raw.
    pub kind: VDiskKind,
    /// vPool (engine vDisks).
    pub vpool: Option<String>,
    /// Size in bytes.
    pub size_bytes: u64,
    /// Logical block size.
    pub block_size: u32,
    /// Exposed write-protected.
    pub read_only: bool,
    /// Image file (raw vDisks).
    pub path: Option<PathBuf>,
    /// Stable 128-bit identity (hex): VPD serial and NAA derive from it.
    pub identity: String,
    /// Marked as a template.
    #[serde(default)]
    pub template: bool,
    /// Where it came from: `VDISK@SNAPSHOT` or `template:T`.
    #[serde(default)]
    pub origin: Option<String>,
    /// The `[[vm.disk]]` name when declared in the configuration file.
    #[serde(default)]
    pub config_name: Option<String>,
}

/// A size given as bytes or as text (`20G`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SizeSpec {
    /// Bytes.
    Bytes(u64),
    /// Human size: `512M`, `20G`, `1T`.
    Text(String),
}

impl SizeSpec {
    /// The size in bytes.
    pub fn bytes(&self) -> Result<u64, String> {
        match self {
            SizeSpec::Bytes(b) => Ok(*b),
            SizeSpec::Text(t) => crate::size::parse(t),
        }
    }
}

/// `POST /api/v1/vpools`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateVPool {
    /// Name.
    pub name: String,
    /// Backend; default a local directory under the data dir.
    #[serde(default)]
    pub backend: Option<BackendSpec>,
    /// Flash cache directories; default under the data dir.
    #[serde(default)]
    pub cache_dirs: Vec<PathBuf>,
    /// Policies; defaults when absent.
    #[serde(default)]
    pub policy: Option<Policy>,
}

/// `POST /api/v1/vms`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateVm {
    /// Name.
    pub name: String,
    /// Initiator names allowed to log in (empty: any).
    #[serde(default)]
    pub allowed_initiators: Vec<String>,
    /// CHAP credentials.
    #[serde(default)]
    pub chap: Option<ChapSpec>,
}

/// `POST /api/v1/vdisks`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateVDisk {
    /// Name.
    pub name: String,
    /// VM it is attached to.
    pub vm: String,
    /// Size (required unless cloning; a clone may be grown by giving more).
    #[serde(default)]
    pub size: Option<SizeSpec>,
    /// vPool (engine vDisks); default `default`, or the source's for clones.
    #[serde(default)]
    pub vpool: Option<String>,
    /// Kind; default engine.
    #[serde(default)]
    pub kind: Option<VDiskKind>,
    /// Clone source `VDISK@SNAPSHOT`.
    #[serde(default)]
    pub from: Option<String>,
    /// Clone the current state of this template vDisk.
    #[serde(default)]
    pub template: Option<String>,
    /// Block size; default the vPool's policy (512 for raw).
    #[serde(default)]
    pub block_size: Option<u32>,
    /// Expose write-protected.
    #[serde(default)]
    pub read_only: bool,
}

/// `POST /api/v1/vdisks/{name}/resize`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resize {
    /// New size (grow only).
    pub size: SizeSpec,
}

/// `POST /api/v1/vdisks/{name}/template`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetTemplate {
    /// Mark (true) or unmark (false).
    pub template: bool,
}

/// `POST /api/v1/vdisks/{name}/snapshots`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateSnapshot {
    /// Name; default `snap-<unix time>`.
    #[serde(default)]
    pub name: Option<String>,
}

/// A vPool as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VPoolView {
    /// Name.
    pub name: String,
    /// Backend (secret redacted).
    pub backend: BackendSpec,
    /// Flash cache directories.
    pub cache_dirs: Vec<PathBuf>,
    /// Policies.
    pub policy: Policy,
    /// vDisks in it.
    pub vdisks: Vec<String>,
    /// Whether the pool is open on this node.
    pub online: bool,
    /// Data written but not yet on the backend.
    pub bytes_waiting_to_ship: u64,
    /// Flash bytes used by containers and logs.
    pub flash_bytes: u64,
    /// Estimated bytes on the backend.
    pub backend_bytes: u64,
}

/// A VM as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmView {
    /// Name.
    pub name: String,
    /// iSCSI target name.
    pub target: String,
    /// ACL.
    pub allowed_initiators: Vec<String>,
    /// CHAP required.
    pub chap: bool,
    /// Mutual CHAP configured.
    pub mutual_chap: bool,
    /// vDisks in LUN order.
    pub vdisks: Vec<String>,
    /// Logged-in sessions.
    pub sessions: usize,
}

/// A vDisk as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VDiskView {
    /// Name.
    pub name: String,
    /// VM.
    pub vm: String,
    /// LUN.
    pub lun: u64,
    /// Kind.
    pub kind: VDiskKind,
    /// vPool (engine).
    pub vpool: Option<String>,
    /// Size in bytes.
    pub size_bytes: u64,
    /// Block size.
    pub block_size: u32,
    /// Write-protected.
    pub read_only: bool,
    /// Template.
    pub template: bool,
    /// Clone source.
    pub origin: Option<String>,
    /// VPD unit serial number.
    pub serial: String,
    /// Target name.
    pub target: String,
    /// Snapshots (engine).
    pub snapshots: usize,
    /// Serving on its LUN.
    pub online: bool,
}

/// A snapshot as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotView {
    /// Name.
    pub name: String,
    /// Creation time (Unix seconds).
    pub created_unix: u64,
    /// Already shipped to the backend.
    pub on_backend: bool,
    /// Clones depending on it.
    pub clones: usize,
}

/// `GET /api/v1/health`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Health {
    /// `ok`.
    pub status: String,
    /// Daemon version.
    pub version: String,
}

/// Error body of every non-2xx answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Machine-readable class: `not_found`, `conflict`, `in_use`, ...
    pub error: String,
    /// One-line message for humans.
    pub message: String,
}
