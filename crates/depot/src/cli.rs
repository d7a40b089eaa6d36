//! The command line client: `depot vpool|vm|vdisk|snapshot ...`, a thin
//! client of the REST API (`--api URL`, env `DEPOT_API`, default the local
//! daemon).
//!
//! Output is a human-readable table by default and the API's JSON with
//! `--json`. Every failure is one line on stderr and a non-zero exit; sizes
//! are parsed here (`512M`, `20G`, `1T`) so a typo never reaches the daemon.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::model::*;
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

/// A client command.
#[derive(Debug)]
pub enum ClientCmd {
    /// vPools.
    VPool(VPoolCmd),
    /// VMs.
    Vm(VmCmd),
    /// vDisks.
    VDisk(VDiskCmd),
    /// Snapshots.
    Snapshot(SnapshotCmd),
}

struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Client {
    fn new(args: &ClientArgs) -> anyhow::Result<Client> {
        let mut b = reqwest::Client::builder().timeout(std::time::Duration::from_secs(600));
        if let Some(ca) = &args.ca {
            let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
            b = b.add_root_certificate(
                reqwest::Certificate::from_pem(&pem)
                    .with_context(|| format!("parsing {}", ca.display()))?,
            );
        }
        Ok(Client {
            http: b.build().context("building the HTTP client")?,
            base: args.api.trim_end_matches('/').to_string(),
            token: args.token.clone(),
        })
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<Option<T>> {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.request(method, &url);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.map_err(|e| {
            anyhow::anyhow!(
                "cannot reach the depot API at {}: {}",
                self.base,
                root_cause(&e)
            )
        })?;
        let status = resp.status();
        let bytes = resp.bytes().await.context("reading the answer")?;
        if !status.is_success() {
            let msg = serde_json::from_slice::<ErrorBody>(&bytes)
                .map(|e| e.message)
                .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).trim().to_string());
            bail!("{msg} (HTTP {})", status.as_u16());
        }
        if bytes.is_empty() {
            return Ok(None);
        }
        Ok(Some(
            serde_json::from_slice(&bytes).context("unexpected answer from the daemon")?,
        ))
    }
}

fn root_cause(e: &dyn std::error::Error) -> String {
    let mut cur = e;
    while let Some(s) = cur.source() {
        cur = s;
    }
    cur.to_string()
}

fn to_json<T: Serialize>(v: &T) -> anyhow::Result<serde_json::Value> {
    serde_json::to_value(v).context("encoding the request")
}

fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut w: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(x) = w.get_mut(i) {
                *x = (*x).max(c.len());
            }
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = w.get(i).copied().unwrap_or(0)))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut out = line(headers.iter().map(|h| h.to_string()).collect());
    for r in rows {
        out.push('\n');
        out.push_str(&line(r));
    }
    out
}

fn vpool_rows(v: &[VPoolView]) -> String {
    table(
        &[
            "NAME",
            "BACKEND",
            "VDISKS",
            "UNSHIPPED",
            "FLASH",
            "BACKEND-USED",
        ],
        v.iter()
            .map(|p| {
                vec![
                    p.name.clone(),
                    match &p.backend {
                        BackendSpec::Local { path } => format!(
                            "local:{}",
                            path.as_ref()
                                .map(|p| p.display().to_string())
                                .unwrap_or_default()
                        ),
                        BackendSpec::S3 { bucket, .. } => format!("s3:{bucket}"),
                    },
                    p.vdisks.len().to_string(),
                    size::format(p.bytes_waiting_to_ship),
                    size::format(p.flash_bytes),
                    size::format(p.backend_bytes),
                ]
            })
            .collect(),
    )
}

fn vm_rows(v: &[VmView]) -> String {
    table(
        &["NAME", "TARGET", "VDISKS", "SESSIONS", "CHAP"],
        v.iter()
            .map(|m| {
                vec![
                    m.name.clone(),
                    m.target.clone(),
                    m.vdisks.join(","),
                    m.sessions.to_string(),
                    if m.mutual_chap {
                        "mutual".into()
                    } else if m.chap {
                        "yes".into()
                    } else {
                        "no".into()
                    },
                ]
            })
            .collect(),
    )
}

fn vdisk_rows(v: &[VDiskView]) -> String {
    table(
        &[
            "NAME",
            "VM",
            "LUN",
            "SIZE",
            "KIND",
            "VPOOL",
            "SNAPSHOTS",
            "ORIGIN",
            "STATE",
        ],
        v.iter()
            .map(|d| {
                vec![
                    d.name.clone(),
                    d.vm.clone(),
                    d.lun.to_string(),
                    size::format(d.size_bytes),
                    d.kind.to_string(),
                    d.vpool.clone().unwrap_or_else(|| "-".into()),
                    d.snapshots.to_string(),
                    d.origin.clone().unwrap_or_else(|| "-".into()),
                    match (d.online, d.template, d.read_only) {
                        (false, _, _) => "offline".into(),
                        (true, true, _) => "template".into(),
                        (true, false, true) => "read-only".into(),
                        _ => "online".into(),
                    },
                ]
            })
            .collect(),
    )
}

fn snapshot_rows(v: &[SnapshotView]) -> String {
    table(
        &["NAME", "CREATED", "ON-BACKEND", "CLONES"],
        v.iter()
            .map(|s| {
                vec![
                    s.name.clone(),
                    s.created_unix.to_string(),
                    if s.on_backend { "yes" } else { "no" }.into(),
                    s.clones.to_string(),
                ]
            })
            .collect(),
    )
}

fn parse_size(s: &str) -> anyhow::Result<u64> {
    size::parse(s).map_err(anyhow::Error::msg)
}

fn snap_args(vdisk: &str, snapshot: Option<String>) -> anyhow::Result<(String, String)> {
    match (vdisk.split_once('@'), snapshot) {
        (Some((d, s)), None) => Ok((d.to_string(), s.to_string())),
        (None, Some(s)) => Ok((vdisk.to_string(), s)),
        (Some(_), Some(_)) => bail!("give VDISK@SNAPSHOT or VDISK SNAPSHOT, not both"),
        (None, None) => bail!("which snapshot? give VDISK SNAPSHOT or VDISK@SNAPSHOT"),
    }
}

fn enc(s: &str) -> String {
    // Names are validated to [a-z0-9.-] by the daemon; escape anything else
    // so a bad name reaches it (and is refused) instead of another route.
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'@') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Runs a client command; prints its output.
pub fn run(args: &ClientArgs, cmd: ClientCmd) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the client runtime")?;
    let out = rt.block_on(execute(args, cmd))?;
    if !out.is_empty() {
        println!("{out}");
    }
    Ok(())
}

async fn execute(args: &ClientArgs, cmd: ClientCmd) -> anyhow::Result<String> {
    use reqwest::Method;
    let c = Client::new(args)?;
    let json = args.json;
    let show = |v: serde_json::Value, human: String| -> anyhow::Result<String> {
        if json {
            serde_json::to_string_pretty(&v).context("encoding JSON")
        } else {
            Ok(human)
        }
    };
    macro_rules! one {
        ($t:ty, $m:expr, $p:expr, $b:expr, $rows:ident) => {{
            let path = String::from($p);
            let v: Option<$t> = c.call($m, &path, $b).await?;
            let v = v.context("empty answer from the daemon")?;
            show(to_json(&v)?, $rows(std::slice::from_ref(&v)))
        }};
    }
    macro_rules! many {
        ($t:ty, $p:expr, $rows:ident) => {{
            let path = String::from($p);
            let v: Option<Vec<$t>> = c.call(Method::GET, &path, None).await?;
            let v = v.unwrap_or_default();
            show(to_json(&v)?, $rows(&v))
        }};
    }
    macro_rules! done {
        ($m:expr, $p:expr, $b:expr, $msg:expr) => {{
            let path = String::from($p);
            let _: Option<serde_json::Value> = c.call($m, &path, $b).await?;
            if json { Ok(String::new()) } else { Ok($msg) }
        }};
    }
    match cmd {
        ClientCmd::VPool(cmd) => match cmd {
            VPoolCmd::Create {
                name,
                backend_dir,
                s3_endpoint,
                s3_bucket,
                s3_region,
                s3_access_key,
                s3_secret_key,
                s3_allow_http,
                cache_dirs,
                block_size,
                write_buffer,
                read_cache,
            } => {
                let backend = match s3_bucket {
                    Some(bucket) => Some(BackendSpec::S3 {
                        endpoint: s3_endpoint,
                        bucket,
                        region: s3_region,
                        access_key_id: s3_access_key
                            .context("--s3-access-key (or DEPOT_S3_ACCESS_KEY_ID) is required")?,
                        secret_access_key: s3_secret_key.context(
                            "--s3-secret-key (or DEPOT_S3_SECRET_ACCESS_KEY) is required",
                        )?,
                        allow_http: s3_allow_http,
                    }),
                    None => backend_dir.map(|p| BackendSpec::Local {
                        path: Some(absolute(p)),
                    }),
                };
                let policy = Policy {
                    block_size,
                    write_buffer_bytes: parse_size(&write_buffer)?,
                    read_cache_bytes: parse_size(&read_cache)?,
                    ..Policy::default()
                };
                let req = CreateVPool {
                    name,
                    backend,
                    cache_dirs: cache_dirs.into_iter().map(absolute).collect(),
                    policy: Some(policy),
                };
                one!(
                    VPoolView,
                    Method::POST,
                    "/api/v1/vpools",
                    Some(to_json(&req)?),
                    vpool_rows
                )
            }
            VPoolCmd::List => many!(VPoolView, "/api/v1/vpools", vpool_rows),
            VPoolCmd::Show { name } => one!(
                VPoolView,
                Method::GET,
                format!("/api/v1/vpools/{}", enc(&name)),
                None,
                vpool_rows
            ),
            VPoolCmd::Delete { name } => done!(
                Method::DELETE,
                format!("/api/v1/vpools/{}", enc(&name)),
                None,
                format!("vPool {name} deleted")
            ),
        },
        ClientCmd::Vm(cmd) => match cmd {
            VmCmd::Create {
                name,
                initiators,
                chap_user,
                chap_secret,
                target_user,
                target_secret,
            } => {
                let chap = match (chap_user, chap_secret) {
                    (Some(user), Some(secret)) => Some(ChapSpec {
                        user,
                        secret,
                        target_user,
                        target_secret,
                    }),
                    _ => None,
                };
                let req = CreateVm {
                    name,
                    allowed_initiators: initiators,
                    chap,
                };
                one!(
                    VmView,
                    Method::POST,
                    "/api/v1/vms",
                    Some(to_json(&req)?),
                    vm_rows
                )
            }
            VmCmd::List => many!(VmView, "/api/v1/vms", vm_rows),
            VmCmd::Show { name } => one!(
                VmView,
                Method::GET,
                format!("/api/v1/vms/{}", enc(&name)),
                None,
                vm_rows
            ),
            VmCmd::Delete { name } => done!(
                Method::DELETE,
                format!("/api/v1/vms/{}", enc(&name)),
                None,
                format!("VM {name} deleted")
            ),
        },
        ClientCmd::VDisk(cmd) => match cmd {
            VDiskCmd::Create {
                name,
                vm,
                size,
                vpool,
                kind,
                from,
                template,
                block_size,
                read_only,
            } => {
                let req = CreateVDisk {
                    name,
                    vm,
                    size: size
                        .map(|s| parse_size(&s))
                        .transpose()?
                        .map(SizeSpec::Bytes),
                    vpool,
                    kind: match kind.as_deref() {
                        Some("raw") => Some(VDiskKind::Raw),
                        Some("engine") => Some(VDiskKind::Engine),
                        _ => None,
                    },
                    from,
                    template,
                    block_size,
                    read_only,
                };
                one!(
                    VDiskView,
                    Method::POST,
                    "/api/v1/vdisks",
                    Some(to_json(&req)?),
                    vdisk_rows
                )
            }
            VDiskCmd::Clone {
                source,
                new,
                vm,
                size,
            } => {
                if !source.contains('@') {
                    bail!("the source must be VDISK@SNAPSHOT");
                }
                let req = CreateVDisk {
                    name: new,
                    vm,
                    size: size
                        .map(|s| parse_size(&s))
                        .transpose()?
                        .map(SizeSpec::Bytes),
                    from: Some(source),
                    ..Default::default()
                };
                one!(
                    VDiskView,
                    Method::POST,
                    "/api/v1/vdisks",
                    Some(to_json(&req)?),
                    vdisk_rows
                )
            }
            VDiskCmd::List { vm } => {
                let path = match vm {
                    Some(vm) => format!("/api/v1/vdisks?vm={}", enc(&vm)),
                    None => "/api/v1/vdisks".to_string(),
                };
                many!(VDiskView, path, vdisk_rows)
            }
            VDiskCmd::Show { name } => one!(
                VDiskView,
                Method::GET,
                format!("/api/v1/vdisks/{}", enc(&name)),
                None,
                vdisk_rows
            ),
            VDiskCmd::Resize { name, size } => {
                let req = Resize {
                    size: SizeSpec::Bytes(parse_size(&size)?),
                };
                one!(
                    VDiskView,
                    Method::POST,
                    format!("/api/v1/vdisks/{}/resize", enc(&name)),
                    Some(to_json(&req)?),
                    vdisk_rows
                )
            }
            VDiskCmd::Delete { name } => done!(
                Method::DELETE,
                format!("/api/v1/vdisks/{}", enc(&name)),
                None,
                format!("vDisk {name} deleted")
            ),
            VDiskCmd::Template { name, off } => {
                let req = SetTemplate { template: !off };
                one!(
                    VDiskView,
                    Method::POST,
                    format!("/api/v1/vdisks/{}/template", enc(&name)),
                    Some(to_json(&req)?),
                    vdisk_rows
                )
            }
        },
        ClientCmd::Snapshot(cmd) => match cmd {
            SnapshotCmd::Create { vdisk, snapshot } => {
                let (vdisk, snapshot) = match vdisk.split_once('@') {
                    Some((d, s)) if snapshot.is_none() => (d.to_string(), Some(s.to_string())),
                    _ => (vdisk, snapshot),
                };
                let req = CreateSnapshot { name: snapshot };
                one!(
                    SnapshotView,
                    Method::POST,
                    format!("/api/v1/vdisks/{}/snapshots", enc(&vdisk)),
                    Some(to_json(&req)?),
                    snapshot_rows
                )
            }
            SnapshotCmd::List { vdisk } => many!(
                SnapshotView,
                format!("/api/v1/vdisks/{}/snapshots", enc(&vdisk)),
                snapshot_rows
            ),
            SnapshotCmd::Delete { vdisk, snapshot } => {
                let (d, s) = snap_args(&vdisk, snapshot)?;
                done!(
                    Method::DELETE,
                    format!("/api/v1/vdisks/{}/snapshots/{}", enc(&d), enc(&s)),
                    None,
                    format!("snapshot {d}@{s} deleted")
                )
            }
            SnapshotCmd::Rollback { vdisk, snapshot } => {
                let (d, s) = snap_args(&vdisk, snapshot)?;
                done!(
                    Method::POST,
                    format!("/api/v1/vdisks/{}/snapshots/{}/rollback", enc(&d), enc(&s)),
                    None,
                    format!("vDisk {d} rolled back to {s}")
                )
            }
        },
    }
}

fn absolute(p: PathBuf) -> PathBuf {
    std::path::absolute(&p).unwrap_or(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align() {
        let t = table(&["A", "BB"], vec![vec!["long".into(), "x".into()]]);
        assert_eq!(t, "A     BB\nlong  x");
    }

    #[test]
    fn snapshot_arguments() {
        assert_eq!(snap_args("d@s", None).unwrap(), ("d".into(), "s".into()));
        assert_eq!(
            snap_args("d", Some("s".into())).unwrap(),
            ("d".into(), "s".into())
        );
        assert!(snap_args("d", None).is_err());
        assert_eq!(enc("a b"), "a%20b");
    }
}
