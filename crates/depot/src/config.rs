//! Daemon configuration: built-in defaults, then the TOML file (`--config`),
//! then `DEPOT_*` environment variables (`DEPOT_DATA_DIR`,
//! `DEPOT_ISCSI_LISTEN`, ...), then command-line flags ([`ServeArgs`]) —
//! later sources win.
//!
//! [`load`] parses into [`FileConfig`] (serde, unknown fields refused so a
//! typo is an error rather than a silently ignored setting) and validates it
//! into [`Config`]: addresses parsed, sizes parsed, VM and vDisk names
//! checked, paths resolved against the data directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::Deserialize;

use depot_engine::name::check_name;

use crate::model::VDiskKind;
use crate::size;

/// Flags of `depot serve`; each overrides the config file and `DEPOT_*`
/// environment variables.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Configuration file (TOML).
    #[arg(long, env = "DEPOT_CONFIG")]
    pub config: Option<PathBuf>,
    /// Directory for all local state (vDisk images, identities, reservations).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// iSCSI portal address.
    #[arg(long)]
    pub iscsi_listen: Option<String>,
    /// Management API address.
    #[arg(long)]
    pub api_listen: Option<String>,
    /// Join a cluster as the router NAME (needs `--etcd`).
    #[arg(long, env = "DEPOT_ROUTER")]
    pub router: Option<String>,
    /// etcd endpoints of the cluster, `URL[,URL...]`.
    #[arg(long, env = "DEPOT_ETCD", value_delimiter = ',')]
    pub etcd: Vec<String>,
    /// Router-to-router address (mutual TLS) of a clustered router.
    #[arg(long, env = "DEPOT_PEER_LISTEN")]
    pub peer_listen: Option<String>,
}

/// The file format.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Local state directory.
    pub data_dir: PathBuf,
    /// iSCSI portal, `ADDR:PORT`.
    pub iscsi_listen: String,
    /// Management API, `ADDR:PORT`.
    pub api_listen: String,
    /// Bearer token the API requires (mandatory on a non-loopback address).
    #[serde(default)]
    pub api_token: Option<String>,
    /// PEM certificate chain: serve the API over TLS.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for `tls_cert`.
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// VMs declared in the file.
    #[serde(default)]
    pub vm: Vec<VmFile>,
    /// Membership in a cluster of routers (absent: a standalone router).
    #[serde(default)]
    pub cluster: Option<ClusterFile>,
}

/// The `[cluster]` section.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    /// This router's name.
    #[serde(default)]
    pub router: Option<String>,
    /// etcd client URLs.
    #[serde(default)]
    pub etcd: Vec<String>,
    /// Key prefix in etcd (default `/depot`).
    #[serde(default)]
    pub prefix: Option<String>,
    /// Router-to-router address, `ADDR:PORT` (default: the iSCSI port + 2).
    #[serde(default)]
    pub peer_listen: Option<String>,
    /// Lease time to live in seconds (default 5: a dead router's vDisks are
    /// taken over about this long after it died).
    #[serde(default)]
    pub lease_ttl_secs: Option<u64>,
    /// Failure domain (rack, room) of this router.
    #[serde(default)]
    pub failure_domain: Option<String>,
    /// CA bundle (PEM) that signed etcd's server certificates.
    #[serde(default)]
    pub etcd_ca: Option<PathBuf>,
    /// Client certificate (PEM) for etcd.
    #[serde(default)]
    pub etcd_cert: Option<PathBuf>,
    /// Client key (PEM) for etcd.
    #[serde(default)]
    pub etcd_key: Option<PathBuf>,
    /// etcd user (etcd's own authentication).
    #[serde(default)]
    pub etcd_user: Option<String>,
    /// File holding the etcd user's password.
    #[serde(default)]
    pub etcd_password_file: Option<PathBuf>,
}

/// A VM in the file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmFile {
    /// VM name; its target is `iqn.2026-11.io.depot:<name>`.
    pub name: String,
    /// Initiator names allowed to log in (empty: any).
    #[serde(default)]
    pub allowed_initiators: Vec<String>,
    /// CHAP credentials the initiator must present.
    #[serde(default)]
    pub chap: Option<ChapFile>,
    /// How its writes are mirrored in a cluster: "sync" (default), "async"
    /// or "none".
    #[serde(default)]
    pub dtl: Option<depot_dtl::Mode>,
    /// The VM's disks, LUN 0 first.
    #[serde(default)]
    pub disk: Vec<DiskFile>,
}

/// CHAP settings in the file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChapFile {
    /// Initiator's CHAP name.
    pub user: String,
    /// Initiator's secret.
    pub secret: String,
    /// Target's CHAP name for mutual CHAP.
    #[serde(default)]
    pub target_user: Option<String>,
    /// Target's secret for mutual CHAP.
    #[serde(default)]
    pub target_secret: Option<String>,
}

/// A vDisk in the file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskFile {
    /// vDisk name, unique within the VM.
    pub name: String,
    /// Size, e.g. `20G`.
    pub size: String,
    /// Backing image (raw kind); default `<data_dir>/raw/<vm>/<disk>.img`.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Logical block size: 512 or 4096.
    #[serde(default = "default_block_size")]
    pub block_size: u32,
    /// Expose write-protected.
    #[serde(default)]
    pub read_only: bool,
    /// `raw` (default for declared disks) or `engine`.
    #[serde(default = "default_kind")]
    pub kind: VDiskKind,
    /// vPool of an engine disk (default `default`).
    #[serde(default)]
    pub vpool: Option<String>,
}

fn default_kind() -> VDiskKind {
    VDiskKind::Raw
}

fn default_block_size() -> u32 {
    512
}

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Local state directory.
    pub data_dir: PathBuf,
    /// iSCSI portal.
    pub iscsi_listen: SocketAddr,
    /// Management API address.
    pub api_listen: SocketAddr,
    /// Bearer token for the API.
    pub api_token: Option<String>,
    /// TLS certificate and key for the API.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Statically declared VMs.
    pub vms: Vec<Vm>,
    /// Cluster membership (`None`: a standalone router, the embedded
    /// default).
    pub cluster: Option<ClusterSettings>,
}

/// Validated cluster settings.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// What the cluster crate needs (name, endpoints, prefix, TLS, auth,
    /// lease timing).
    pub etcd: depot_cluster::ClusterConfig,
    /// Router-to-router listener.
    pub peer_listen: SocketAddr,
}

/// A validated VM.
#[derive(Debug, Clone)]
pub struct Vm {
    /// Name.
    pub name: String,
    /// ACL.
    pub allowed_initiators: Vec<String>,
    /// CHAP: (user, secret, optional (target user, target secret)).
    pub chap: Option<Chap>,
    /// DTL mode (default sync).
    pub dtl: Option<depot_dtl::Mode>,
    /// Disks in LUN order.
    pub disks: Vec<Disk>,
}

/// Validated CHAP settings.
#[derive(Debug, Clone)]
pub struct Chap {
    /// Initiator name and secret.
    pub initiator: (String, String),
    /// Target name and secret (mutual CHAP).
    pub target: Option<(String, String)>,
}

/// A validated vDisk.
#[derive(Debug, Clone)]
pub struct Disk {
    /// Name.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Backing image.
    pub path: PathBuf,
    /// Logical block size.
    pub block_size: u32,
    /// Write-protected.
    pub read_only: bool,
    /// Storage kind.
    pub kind: VDiskKind,
    /// vPool (engine).
    pub vpool: Option<String>,
}

const DEFAULTS: &str = r#"
data_dir = "depot-data"
iscsi_listen = "127.0.0.1:3260"
api_listen = "127.0.0.1:8080"
"#;

/// Settings that `DEPOT_<NAME>` environment variables may override.
const ENV_KEYS: &[&str] = &[
    "data_dir",
    "iscsi_listen",
    "api_listen",
    "api_token",
    "tls_cert",
    "tls_key",
];

/// Loads and validates the configuration for `depot serve`.
pub fn load(args: &ServeArgs) -> anyhow::Result<Config> {
    let mut b = config::Config::builder()
        .add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml));
    if let Some(path) = &args.config {
        b = b.add_source(config::File::from(path.as_path()).format(config::FileFormat::Toml));
    }
    // Only the settings this file knows are taken from the environment, so
    // unrelated DEPOT_* variables (DEPOT_LOG, DEPOT_API, ...) are not errors.
    let env: config::Map<String, String> = std::env::vars()
        .filter_map(|(k, v)| {
            let key = k.strip_prefix("DEPOT_")?.to_ascii_lowercase();
            ENV_KEYS
                .contains(&key.as_str())
                .then_some((format!("DEPOT_{}", key.to_ascii_uppercase()), v))
        })
        .collect();
    b = b.add_source(
        config::Environment::with_prefix("DEPOT")
            .prefix_separator("_")
            .source(Some(env)),
    );
    if let Some(d) = &args.data_dir {
        b = b.set_override("data_dir", d.to_string_lossy().to_string())?;
    }
    if let Some(a) = &args.iscsi_listen {
        b = b.set_override("iscsi_listen", a.clone())?;
    }
    if let Some(a) = &args.api_listen {
        b = b.set_override("api_listen", a.clone())?;
    }
    if let Some(r) = &args.router {
        b = b.set_override("cluster.router", r.clone())?;
    }
    if !args.etcd.is_empty() {
        b = b.set_override("cluster.etcd", args.etcd.clone())?;
    }
    if let Some(p) = &args.peer_listen {
        b = b.set_override("cluster.peer_listen", p.clone())?;
    }
    let raw: FileConfig = b
        .build()
        .context("reading configuration")?
        .try_deserialize()
        .context("invalid configuration")?;
    validate(raw)
}

fn validate(raw: FileConfig) -> anyhow::Result<Config> {
    let iscsi_listen: SocketAddr = raw
        .iscsi_listen
        .parse()
        .with_context(|| format!("iscsi_listen {:?} is not ADDR:PORT", raw.iscsi_listen))?;
    let api_listen: SocketAddr = raw
        .api_listen
        .parse()
        .with_context(|| format!("api_listen {:?} is not ADDR:PORT", raw.api_listen))?;
    let mut vms = Vec::new();
    for vm in raw.vm {
        check_name("VM", &vm.name)?;
        if vms.iter().any(|v: &Vm| v.name == vm.name) {
            bail!("VM {:?} is declared twice", vm.name);
        }
        let chap = match vm.chap {
            None => None,
            Some(c) => {
                let target = match (c.target_user, c.target_secret) {
                    (Some(u), Some(s)) => Some((u, s)),
                    (None, None) => None,
                    _ => bail!(
                        "VM {}: mutual CHAP needs both target_user and target_secret",
                        vm.name
                    ),
                };
                if target.as_ref().is_some_and(|(_, s)| *s == c.secret) {
                    bail!(
                        "VM {}: the target and initiator CHAP secrets must differ",
                        vm.name
                    );
                }
                Some(Chap {
                    initiator: (c.user, c.secret),
                    target,
                })
            }
        };
        let mut disks = Vec::new();
        for d in vm.disk {
            check_name("vDisk", &d.name)?;
            if disks.iter().any(|x: &Disk| x.name == d.name) {
                bail!("VM {}: vDisk {:?} is declared twice", vm.name, d.name);
            }
            if d.block_size != 512 && d.block_size != 4096 {
                bail!("vDisk {}: block_size must be 512 or 4096", d.name);
            }
            let size = size::parse(&d.size).map_err(anyhow::Error::msg)?;
            if size == 0 || size % u64::from(d.block_size) != 0 {
                bail!(
                    "vDisk {}: size must be a non-zero multiple of {}",
                    d.name,
                    d.block_size
                );
            }
            let path = d
                .path
                .unwrap_or_else(|| raw_image_path(&raw.data_dir, &vm.name, &d.name));
            if d.kind == VDiskKind::Raw && d.vpool.is_some() {
                bail!("vDisk {}: a raw disk has no vpool", d.name);
            }
            disks.push(Disk {
                name: d.name,
                size,
                path,
                block_size: d.block_size,
                read_only: d.read_only,
                kind: d.kind,
                vpool: d.vpool,
            });
        }
        vms.push(Vm {
            name: vm.name,
            allowed_initiators: vm.allowed_initiators,
            chap,
            dtl: vm.dtl,
            disks,
        });
    }
    let tls = match (raw.tls_cert, raw.tls_key) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        _ => bail!("TLS needs both tls_cert and tls_key"),
    };
    let api_token = raw.api_token.filter(|t| !t.is_empty());
    if !api_listen.ip().is_loopback() && api_token.is_none() {
        bail!(
            "api_listen {api_listen} is not a loopback address: set api_token (or DEPOT_API_TOKEN) so the API is not open to anyone"
        );
    }
    let cluster = raw
        .cluster
        .map(|c| cluster_settings(c, iscsi_listen))
        .transpose()?;
    Ok(Config {
        data_dir: raw.data_dir,
        iscsi_listen,
        api_listen,
        api_token,
        tls,
        vms,
        cluster,
    })
}

fn cluster_settings(c: ClusterFile, iscsi_listen: SocketAddr) -> anyhow::Result<ClusterSettings> {
    let Some(router) = c.router else {
        bail!("[cluster] needs this router's name (router = \"NAME\", --router or DEPOT_ROUTER)");
    };
    check_name("router", &router)?;
    let etcd: Vec<String> = c
        .etcd
        .iter()
        .flat_map(|e| e.split(','))
        .map(|e| e.trim().to_string())
        .filter(|e| !e.is_empty())
        .collect();
    if etcd.is_empty() {
        bail!(
            "router {router}: no etcd endpoints (etcd = [\"http://HOST:2379\"], --etcd or DEPOT_ETCD)"
        );
    }
    for e in &etcd {
        if !(e.starts_with("http://") || e.starts_with("https://")) {
            bail!("etcd endpoint {e:?} must be an http:// or https:// URL");
        }
    }
    let peer_listen: SocketAddr = match c.peer_listen {
        Some(p) => p
            .parse()
            .with_context(|| format!("peer_listen {p:?} is not ADDR:PORT"))?,
        None => SocketAddr::new(iscsi_listen.ip(), iscsi_listen.port().wrapping_add(2)),
    };
    let mut cfg = depot_cluster::ClusterConfig::new(router, etcd);
    if let Some(p) = c.prefix {
        if !p.starts_with('/') || p.len() < 2 {
            bail!("cluster prefix {p:?} must start with '/'");
        }
        cfg.prefix = p;
    }
    if let Some(t) = c.lease_ttl_secs {
        if !(2..=300).contains(&t) {
            bail!("lease_ttl_secs {t} must be between 2 and 300");
        }
        cfg.lease_ttl = std::time::Duration::from_secs(t);
    }
    cfg.failure_domain = c.failure_domain;
    cfg.tls = match (c.etcd_ca, c.etcd_cert, c.etcd_key) {
        (None, None, None) => None,
        (Some(ca), None, None) => Some(depot_cluster::EtcdTls { ca, identity: None }),
        (Some(ca), Some(cert), Some(key)) => Some(depot_cluster::EtcdTls {
            ca,
            identity: Some((cert, key)),
        }),
        _ => bail!("etcd TLS needs etcd_ca, and etcd_cert with etcd_key for client certificates"),
    };
    if cfg.tls.is_some() && cfg.endpoints.iter().any(|e| e.starts_with("http://")) {
        bail!("etcd TLS is configured: the endpoints must be https:// URLs");
    }
    cfg.user = match (c.etcd_user, c.etcd_password_file) {
        (None, None) => None,
        (Some(u), Some(f)) => {
            let pw = std::fs::read_to_string(&f)
                .with_context(|| format!("reading etcd password file {}", f.display()))?;
            Some((u, pw.trim_end_matches(['\r', '\n']).to_string()))
        }
        _ => bail!("etcd authentication needs both etcd_user and etcd_password_file"),
    };
    Ok(ClusterSettings {
        etcd: cfg,
        peer_listen,
    })
}

/// Where a raw vDisk's image lives by default.
pub fn raw_image_path(data_dir: &Path, vm: &str, disk: &str) -> PathBuf {
    data_dir.join("raw").join(vm).join(format!("{disk}.img"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(config: Option<PathBuf>) -> ServeArgs {
        ServeArgs {
            config,
            data_dir: None,
            iscsi_listen: None,
            api_listen: None,
            router: None,
            etcd: Vec::new(),
            peer_listen: None,
        }
    }

    #[test]
    fn cluster_settings_from_file_and_flags() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("depot.toml");
        std::fs::write(
            &f,
            "[cluster]\nrouter = \"r1\"\netcd = [\"http://127.0.0.1:2379\"]\nlease_ttl_secs = 5\n",
        )
        .unwrap();
        let c = load(&args(Some(f.clone()))).unwrap();
        let cl = c.cluster.unwrap();
        assert_eq!(cl.etcd.router, "r1");
        assert_eq!(cl.etcd.lease_ttl.as_secs(), 5);
        assert_eq!(cl.peer_listen.port(), 3262);
        let mut a = args(None);
        a.router = Some("r2".into());
        a.etcd = vec!["http://a:1".into(), "http://b:2".into()];
        let cl = load(&a).unwrap().cluster.unwrap();
        assert_eq!(cl.etcd.router, "r2");
        assert_eq!(cl.etcd.endpoints.len(), 2);
        assert!(load(&args(None)).unwrap().cluster.is_none());
        for bad in [
            "[cluster]\netcd = [\"http://x:1\"]",
            "[cluster]\nrouter = \"r1\"",
            "[cluster]\nrouter = \"R 1\"\netcd = [\"http://x:1\"]",
            "[cluster]\nrouter = \"r1\"\netcd = [\"x:1\"]",
            "[cluster]\nrouter = \"r1\"\netcd = [\"http://x:1\"]\nlease_ttl_secs = 1",
            "[cluster]\nrouter = \"r1\"\netcd = [\"http://x:1\"]\netcd_user = \"u\"",
        ] {
            std::fs::write(&f, bad).unwrap();
            assert!(load(&args(Some(f.clone()))).is_err(), "{bad}");
        }
    }

    #[test]
    fn defaults_file_and_flags() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("depot.toml");
        std::fs::write(
            &f,
            r#"
data_dir = "/srv/depot"
[[vm]]
name = "web1"
allowed_initiators = ["iqn.1993-08.org.debian:01:abc"]
[[vm.disk]]
name = "root"
size = "1G"
[[vm.disk]]
name = "logs"
size = "64M"
read_only = true
"#,
        )
        .unwrap();
        let mut a = args(Some(f));
        a.iscsi_listen = Some("127.0.0.1:3261".into());
        let c = load(&a).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/srv/depot"));
        assert_eq!(c.iscsi_listen.port(), 3261);
        assert_eq!(c.vms[0].disks[1].size, 64 << 20);
        assert!(c.vms[0].disks[1].read_only);
        assert_eq!(
            c.vms[0].disks[0].path,
            PathBuf::from("/srv/depot/raw/web1/root.img")
        );
        let c = load(&args(None)).unwrap();
        assert_eq!(c.iscsi_listen.port(), 3260);
    }

    #[test]
    fn refuses_bad_input() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("depot.toml");
        for bad in [
            "bogus_key = 1",
            "[[vm]]\nname = \"Bad Name\"",
            "[[vm]]\nname = \"a\"\n[[vm.disk]]\nname = \"d\"\nsize = \"1000\"",
            "iscsi_listen = \"nowhere\"",
            "api_listen = \"0.0.0.0:8080\"",
            "tls_cert = \"/x.pem\"",
            "[[vm]]\nname = \"a\"\n[[vm.disk]]\nname = \"d\"\nsize = \"1M\"\nkind = \"tape\"",
        ] {
            std::fs::write(&f, bad).unwrap();
            assert!(load(&args(Some(f.clone()))).is_err(), "{bad}");
        }
    }
}
