//! The management model: the persisted records of vPools, VMs and vDisks
//! and the JSON shapes of the REST API (requests and views), shared by the
//! daemon and the CLI so both sides agree on one definition.
//!
//! Records and views share one definition of what they have in common: a
//! view embeds the public part of its record (`#[serde(flatten)]`) and adds
//! live fields, so the JSON of both keeps one field list. The backend is the
//! engine's own [`BackendConfig`] (no copy of its fields here).
//!
//! Invariants: records hold secrets (S3 keys, CHAP secrets); views never do
//! (a view's backend is a [`PublicBackend`], which drops the S3 secret when
//! it is made, and a VM view shows only whether CHAP is set). Names are the
//! identity of every object (validated with
//! [`depot_engine::name::check_name`]); vDisk names are unique across the
//! node so `VDISK@SNAPSHOT` needs no VM to resolve.

use std::path::PathBuf;

use depot_engine::BackendConfig;
use serde::{Deserialize, Deserializer, Serialize};

/// Prefix of every target name; a VM's target is `<prefix><vm>`.
pub use depot_iscsi_target::IQN_PREFIX;

/// A backend as views show it: the engine's [`BackendConfig`] with the S3
/// secret access key removed when the value is made (from a record or from
/// JSON), so no view can carry it. Serialises exactly like a
/// [`BackendConfig`] without its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "BackendConfig", into = "BackendConfig")]
pub struct PublicBackend(BackendConfig);

impl From<BackendConfig> for PublicBackend {
    fn from(mut b: BackendConfig) -> Self {
        if let BackendConfig::S3 {
            secret_access_key, ..
        } = &mut b
        {
            secret_access_key.clear();
        }
        PublicBackend(b)
    }
}

impl From<PublicBackend> for BackendConfig {
    fn from(b: PublicBackend) -> Self {
        b.0
    }
}

impl PublicBackend {
    /// The backend, without its secret.
    pub fn get(&self) -> &BackendConfig {
        &self.0
    }
}

/// Reads the optional backend of a create request. Absent, `null` and a
/// local backend without a path (or with `"path": null`) all mean "a local
/// directory at the default place" and give `None`; anything else must be
/// a complete [`BackendConfig`].
fn backend_request<'de, D: Deserializer<'de>>(d: D) -> Result<Option<BackendConfig>, D::Error> {
    let Some(v) = Option::<serde_json::Value>::deserialize(d)? else {
        return Ok(None);
    };
    let default_local = v.get("type").and_then(serde_json::Value::as_str) == Some("local")
        && v.get("path").is_none_or(serde_json::Value::is_null);
    if default_local {
        return Ok(None);
    }
    BackendConfig::deserialize(v)
        .map(Some)
        .map_err(serde::de::Error::custom)
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

/// A persisted vPool. Views show it with `B` = [`PublicBackend`] (the same
/// fields, the secret left out).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VPoolRecord<B = BackendConfig> {
    /// Name.
    pub name: String,
    /// Backend (paths resolved).
    pub backend: B,
    /// Flash cache directories (the engine uses the first today).
    pub cache_dirs: Vec<PathBuf>,
    /// Defaults for its vDisks.
    pub policy: Policy,
    /// In a cluster, the router that holds a local-directory vPool (only it
    /// serves its vDisks); absent for S3 vPools and standalone routers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub router: Option<String>,
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

/// What the catalog and the API both show of a VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmInfo {
    /// Name.
    pub name: String,
    /// Initiator names allowed to log in (empty: any).
    pub allowed_initiators: Vec<String>,
    /// Its hosts run multipath (dm-multipath, ESXi's SATP ALUA): every
    /// router of a cluster offers a path and logins anywhere succeed.
    /// Without it (QEMU's built-in iSCSI, single-path hosts) a login at a
    /// router that does not serve the VM is redirected to the one that does.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub multipath: bool,
    /// How its vDisks' unshipped writes are mirrored to another router of
    /// a cluster (DTL): `sync` (the default, not written), `async` or
    /// `none`.
    #[serde(default, skip_serializing_if = "depot_dtl::Mode::is_default")]
    pub dtl: depot_dtl::Mode,
}

/// A persisted VM.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmRecord {
    /// Name and ACL.
    #[serde(flatten)]
    pub info: VmInfo,
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

/// What the catalog and the API both show of a vDisk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VDiskInfo {
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
    /// Size in bytes (a view shows the live size of an online vDisk).
    pub size_bytes: u64,
    /// Logical block size.
    pub block_size: u32,
    /// Exposed write-protected.
    pub read_only: bool,
    /// Marked as a template.
    #[serde(default)]
    pub template: bool,
    /// Where it came from: `VDISK@SNAPSHOT` or `template:T`.
    #[serde(default)]
    pub origin: Option<String>,
}

/// A persisted vDisk.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VDiskRecord {
    /// What the API shows of it too.
    #[serde(flatten)]
    pub info: VDiskInfo,
    /// Image file (raw vDisks).
    pub path: Option<PathBuf>,
    /// Stable 128-bit identity (hex): VPD serial and NAA derive from it.
    pub identity: String,
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
    /// Backend; absent (or a local one without a path) means a local
    /// directory under the data dir, `<data_dir>/vpools/<name>/backend`.
    #[serde(default, deserialize_with = "backend_request")]
    pub backend: Option<BackendConfig>,
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
    /// Its hosts run multipath (see [`VmInfo::multipath`]).
    #[serde(default)]
    pub multipath: bool,
    /// DTL mode (see [`VmInfo::dtl`]); default `sync`.
    #[serde(default)]
    pub dtl: Option<depot_dtl::Mode>,
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
    /// The record, secret left out.
    #[serde(flatten)]
    pub info: VPoolRecord<PublicBackend>,
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
    /// How an S3 backend fences a deposed owner: `conditional` (the store
    /// enforces If-Match / If-None-Match) or `external` (it ignores them:
    /// fencing by generation-named keys and an etcd check before every
    /// manifest update and delete).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fencing: Option<depot_engine::FencingMode>,
}

impl VPoolRecord {
    /// The record as views show it: the backend without its secret.
    pub fn public(&self) -> VPoolRecord<PublicBackend> {
        VPoolRecord {
            name: self.name.clone(),
            backend: PublicBackend::from(self.backend.clone()),
            cache_dirs: self.cache_dirs.clone(),
            policy: self.policy.clone(),
            router: self.router.clone(),
        }
    }
}

/// A VM as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmView {
    /// Name and ACL.
    #[serde(flatten)]
    pub info: VmInfo,
    /// iSCSI target name.
    pub target: String,
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
    /// What the catalog holds of it (live size when online).
    #[serde(flatten)]
    pub info: VDiskInfo,
    /// VPD unit serial number.
    pub serial: String,
    /// Target name.
    pub target: String,
    /// Snapshots (engine).
    pub snapshots: usize,
    /// Serving on its LUN.
    pub online: bool,
    /// In a cluster: the router that owns it (serves its I/O).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// In a cluster: the ownership's generation (only grows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    /// In a cluster: its mirror (DTL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dtl: Option<DtlView>,
}

/// A vDisk's mirror (DTL) as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DtlView {
    /// Its VM's mode: `sync`, `async` or `none`.
    pub mode: depot_dtl::Mode,
    /// `in_sync`, `catching_up` or `degraded` (absent with mode `none`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// The router holding the mirror.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<String>,
    /// Why it is degraded, as the owner last saw it (when asked on the
    /// owner).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Bytes the owner copied to the mirror since it began serving the
    /// vDisk (when asked on the owner).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_sent: Option<u64>,
}

/// `POST /api/v1/vdisks/{name}/recover`: take over a vDisk whose owner is
/// down without an in-sync mirror, from the backend.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecoverRequest {
    /// Go ahead although writes the owner acknowledged after its last
    /// upload are lost (without it the answer only states the recovery
    /// point).
    #[serde(default)]
    pub accept_loss: bool,
}

/// What `depot vdisk recover` did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecoverReport {
    /// The vDisk.
    pub vdisk: String,
    /// The router that owned it (down).
    pub from: String,
    /// The router that serves it now.
    pub to: String,
    /// The new ownership generation.
    pub generation: u64,
    /// What the vDisk holds now, and what was lost.
    pub recovery_point: String,
}

/// `POST /api/v1/vdisks/{name}/move`, `/vms/{name}/move`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MoveRequest {
    /// The router to move to.
    pub to: String,
    /// When the owner is down: take the vDisk over from the backend on
    /// `to`, accepting that writes the owner acknowledged but had not
    /// shipped are lost.
    #[serde(default)]
    pub force: bool,
}

/// What a live move did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MoveReport {
    /// The vDisk.
    pub vdisk: String,
    /// The router it left.
    pub from: String,
    /// The router that serves it now.
    pub to: String,
    /// Its new ownership generation.
    pub generation: u64,
    /// Un-shipped bytes copied while the guest ran.
    pub precopied_bytes: u64,
    /// Bytes copied while the guest's I/O was held.
    pub paused_bytes: u64,
    /// How long the guest's I/O was held, in milliseconds.
    pub pause_ms: u64,
    /// The whole move, in milliseconds.
    pub total_ms: u64,
}

/// A router of the cluster as `depot router list` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RouterView {
    /// Name.
    pub name: String,
    /// iSCSI portal.
    pub portal: String,
    /// Management API.
    pub api: String,
    /// `up` while its lease lives, else `down`.
    pub state: String,
    /// vDisks it owns.
    pub vdisks: usize,
    /// Its target portal group tag (ALUA group id).
    pub tpgt: u16,
    /// Failure domain, when declared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_domain: Option<String>,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn s3(secret: &str) -> BackendConfig {
        BackendConfig::S3 {
            endpoint: None,
            bucket: "depot".into(),
            region: "eu-west-1".into(),
            access_key_id: "AKIA".into(),
            secret_access_key: secret.into(),
            allow_http: false,
        }
    }

    fn json<T: Serialize>(v: &T) -> String {
        serde_json::to_string(v).unwrap()
    }

    // The JSON the API answered before records and views shared their
    // fields (byte for byte for vPools and vDisks; a VM's `target` now
    // follows its `allowed_initiators`).
    const S3_POOL: &str = r#"{"name":"s3pool","backend":{"type":"s3","endpoint":null,"bucket":"depot","region":"eu-west-1","access_key_id":"AKIA","allow_http":false},"cache_dirs":["/flash/a"],"policy":{"block_size":512,"write_buffer_bytes":2147483648,"read_cache_bytes":1073741824,"container_bytes":67108864,"ship_interval_secs":30},"vdisks":["root2"],"online":true,"bytes_waiting_to_ship":7,"flash_bytes":8,"backend_bytes":9}"#;
    const VM: &str = r#"{"name":"web1","target":"iqn.2026-11.io.depot:web1","allowed_initiators":["iqn.x"],"chap":true,"mutual_chap":true,"vdisks":["root1","web1-data"],"sessions":1}"#;
    const RAW_DISK: &str = r#"{"name":"web1-data","vm":"web1","lun":1,"kind":"raw","vpool":null,"size_bytes":67108864,"block_size":4096,"read_only":true,"template":false,"origin":null,"serial":"fedcba9876543210fedcba9876543210","target":"iqn.2026-11.io.depot:web1","snapshots":0,"online":false}"#;

    #[test]
    fn views_keep_their_json() {
        let rec = VPoolRecord {
            name: "s3pool".into(),
            backend: s3("s3cret"),
            cache_dirs: vec!["/flash/a".into()],
            policy: Policy::default(),
            router: None,
        };
        let pool = VPoolView {
            info: rec.public(),
            vdisks: vec!["root2".into()],
            online: true,
            bytes_waiting_to_ship: 7,
            flash_bytes: 8,
            backend_bytes: 9,
            fencing: None,
        };
        assert_eq!(json(&pool), S3_POOL);
        let vm = VmView {
            info: VmInfo {
                name: "web1".into(),
                allowed_initiators: vec!["iqn.x".into()],
                multipath: false,
                dtl: depot_dtl::Mode::Sync,
            },
            target: "iqn.2026-11.io.depot:web1".into(),
            chap: true,
            mutual_chap: true,
            vdisks: vec!["root1".into(), "web1-data".into()],
            sessions: 1,
        };
        let same: serde_json::Value = serde_json::from_str(VM).unwrap();
        assert_eq!(serde_json::to_value(&vm).unwrap(), same);
        let disk = VDiskView {
            info: VDiskInfo {
                name: "web1-data".into(),
                vm: "web1".into(),
                lun: 1,
                kind: VDiskKind::Raw,
                vpool: None,
                size_bytes: 64 << 20,
                block_size: 4096,
                read_only: true,
                template: false,
                origin: None,
            },
            serial: "fedcba9876543210fedcba9876543210".into(),
            target: "iqn.2026-11.io.depot:web1".into(),
            snapshots: 0,
            online: false,
            owner: None,
            generation: None,
            dtl: None,
        };
        assert_eq!(json(&disk), RAW_DISK);
        // And they read back (the CLI's side).
        let back: VDiskView = serde_json::from_str(RAW_DISK).unwrap();
        assert_eq!(back.info, disk.info);
        let back: VPoolView = serde_json::from_str(S3_POOL).unwrap();
        assert_eq!(back.info.backend.get(), &s3(""));
    }

    #[test]
    fn views_never_carry_the_secret() {
        let rec = VPoolRecord {
            name: "p".into(),
            backend: s3("s3cret"),
            cache_dirs: Vec::new(),
            policy: Policy::default(),
            router: None,
        };
        // The record keeps it (the catalog needs it) ...
        assert!(json(&rec).contains("\"secret_access_key\":\"s3cret\""));
        // ... the view's backend has none, however it was made.
        let view = rec.public();
        assert!(!json(&view).contains("secret"), "{}", json(&view));
        assert_eq!(view.backend.get(), &s3(""));
        let with_secret = r#"{"type":"s3","bucket":"depot","region":"eu-west-1","access_key_id":"AKIA","secret_access_key":"leak"}"#;
        let parsed: PublicBackend = serde_json::from_str(with_secret).unwrap();
        assert_eq!(parsed.get(), &s3(""));
        assert!(!json(&parsed).contains("leak"));
        let local = BackendConfig::Local { path: "/b".into() };
        assert_eq!(PublicBackend::from(local.clone()).get(), &local);
    }

    #[test]
    fn create_vpool_backend_requests() {
        let backend = |b: &str| -> Result<Option<BackendConfig>, String> {
            serde_json::from_str::<CreateVPool>(&format!(r#"{{"name":"p"{b}}}"#))
                .map(|r| r.backend)
                .map_err(|e| e.to_string())
        };
        // Absent, null and a local backend without a path: the default.
        assert_eq!(backend(""), Ok(None));
        assert_eq!(backend(r#","backend":null"#), Ok(None));
        assert_eq!(backend(r#","backend":{"type":"local"}"#), Ok(None));
        assert_eq!(
            backend(r#","backend":{"type":"local","path":null}"#),
            Ok(None)
        );
        assert_eq!(
            backend(r#","backend":{"type":"local","path":"/x"}"#),
            Ok(Some(BackendConfig::Local { path: "/x".into() }))
        );
        // S3 with the same defaults as before: region, no endpoint, HTTPS.
        assert_eq!(
            backend(
                r#","backend":{"type":"s3","bucket":"b","access_key_id":"k","secret_access_key":"s"}"#
            ),
            Ok(Some(BackendConfig::S3 {
                endpoint: None,
                bucket: "b".into(),
                region: "us-east-1".into(),
                access_key_id: "k".into(),
                secret_access_key: "s".into(),
                allow_http: false,
            }))
        );
        let missing = backend(r#","backend":{"type":"s3","access_key_id":"k"}"#).unwrap_err();
        assert!(missing.contains("missing field `bucket`"), "{missing}");
        assert!(backend(r#","backend":{"type":"tape"}"#).is_err());
        assert!(backend(r#","backend":{"type":"local","path":5}"#).is_err());
        assert!(backend(r#","backend":"local""#).is_err());

        // Requests as the CLI sends them, unchanged.
        let req = CreateVPool {
            name: "p".into(),
            backend: Some(BackendConfig::Local {
                path: "/abs".into(),
            }),
            cache_dirs: Vec::new(),
            policy: Some(Policy::default()),
        };
        assert_eq!(
            json(&req),
            r#"{"name":"p","backend":{"type":"local","path":"/abs"},"cache_dirs":[],"policy":{"block_size":512,"write_buffer_bytes":2147483648,"read_cache_bytes":1073741824,"container_bytes":67108864,"ship_interval_secs":30}}"#
        );
        let req = CreateVPool {
            name: "p".into(),
            backend: None,
            cache_dirs: Vec::new(),
            policy: None,
        };
        assert_eq!(
            json(&req),
            r#"{"name":"p","backend":null,"cache_dirs":[],"policy":null}"#
        );
    }
}
