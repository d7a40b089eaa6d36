//! The command line client: `depot vpool|vm|vdisk|snapshot ...`, a thin
//! client of the REST API (`--api URL`, env `DEPOT_API`, default the local
//! daemon).
//!
//! Parts: [`args`] (clap definitions and argument interpretation),
//! [`client`] (the HTTP calls and their errors), [`render`] (tables and
//! `--json`); this file dispatches a command to them. List, show and delete
//! are one generic path over the resource kinds ([`Resource`]).
//!
//! Output is a human-readable table by default and the API's JSON with
//! `--json`. Every failure is one line on stderr and a non-zero exit; sizes
//! are parsed here (`512M`, `20G`, `1T`) so a typo never reaches the daemon.

mod args;
mod client;
mod render;

use anyhow::{Context, bail};
use depot_engine::BackendConfig;
use reqwest::Method;
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use args::{ClientArgs, ClientCmd, RouterCmd, SnapshotCmd, VDiskCmd, VPoolCmd, VmCmd};

use args::{absolute, parse_size, snap_args};
use client::{Client, body, enc};
use render::{Output, Tabular};

use crate::model::*;

/// A kind of object the API keeps in a collection with list, show and
/// delete (`GET /PATH`, `GET /PATH/NAME`, `DELETE /PATH/NAME`).
trait Resource: Tabular + Serialize + DeserializeOwned {
    /// Name of the kind in messages.
    const LABEL: &'static str;
    /// The collection's path.
    const PATH: &'static str;

    /// The path of the object `name`.
    fn item(name: &str) -> String {
        format!("{}/{}", Self::PATH, enc(name))
    }
}

impl Resource for VPoolView {
    const LABEL: &'static str = "vPool";
    const PATH: &'static str = "/api/v1/vpools";
}

impl Resource for VmView {
    const LABEL: &'static str = "VM";
    const PATH: &'static str = "/api/v1/vms";
}

impl Resource for VDiskView {
    const LABEL: &'static str = "vDisk";
    const PATH: &'static str = "/api/v1/vdisks";
}

/// What a command runs with.
struct Ctx {
    client: Client,
    out: Output,
}

impl Ctx {
    /// `GET path`: a list.
    async fn list<T: Tabular + Serialize + DeserializeOwned>(
        &self,
        path: &str,
    ) -> anyhow::Result<String> {
        let v: Vec<T> = self.client.many(path).await?;
        self.out.many(&v)
    }

    /// `GET` one object of kind `T`.
    async fn show<T: Resource>(&self, name: &str) -> anyhow::Result<String> {
        let v: T = self.client.one(Method::GET, &T::item(name), None).await?;
        self.out.one(&v)
    }

    /// `DELETE` one object of kind `T`.
    async fn delete<T: Resource>(&self, name: &str) -> anyhow::Result<String> {
        self.client
            .done(Method::DELETE, &T::item(name), None)
            .await?;
        Ok(self.out.done(format!("{} {name} deleted", T::LABEL)))
    }

    /// `POST path` answering one object.
    async fn post<T: Tabular + Serialize + DeserializeOwned>(
        &self,
        path: &str,
        req: &impl Serialize,
    ) -> anyhow::Result<String> {
        let v: T = self.client.one(Method::POST, path, body(req)?).await?;
        self.out.one(&v)
    }

    /// `POST path` answering a list.
    async fn post_many<T: Tabular + Serialize + DeserializeOwned>(
        &self,
        path: &str,
        req: &impl Serialize,
    ) -> anyhow::Result<String> {
        let v: Vec<T> = self.client.one(Method::POST, path, body(req)?).await?;
        self.out.many(&v)
    }

    /// `method path` without an answer to show; `msg` acknowledges it.
    async fn done(&self, method: Method, path: &str, msg: String) -> anyhow::Result<String> {
        self.client.done(method, path, None).await?;
        Ok(self.out.done(msg))
    }
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
    let ctx = Ctx {
        client: Client::new(args)?,
        out: Output { json: args.json },
    };
    match cmd {
        ClientCmd::Router(RouterCmd::List) => ctx.list::<RouterView>("/api/v1/routers").await,
        ClientCmd::Router(RouterCmd::Drain { name }) => {
            let path = format!("/api/v1/routers/{}/drain", client::enc(&name));
            ctx.post_many::<MoveReport>(&path, &serde_json::json!({}))
                .await
        }
        ClientCmd::VPool(cmd) => vpool(&ctx, cmd).await,
        ClientCmd::Vm(cmd) => vm(&ctx, cmd).await,
        ClientCmd::VDisk(cmd) => vdisk(&ctx, cmd).await,
        ClientCmd::Snapshot(cmd) => snapshot(&ctx, cmd).await,
    }
}

async fn vpool(ctx: &Ctx, cmd: VPoolCmd) -> anyhow::Result<String> {
    match cmd {
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
                Some(bucket) => Some(BackendConfig::S3 {
                    endpoint: s3_endpoint,
                    bucket,
                    region: s3_region,
                    access_key_id: s3_access_key
                        .context("--s3-access-key (or DEPOT_S3_ACCESS_KEY_ID) is required")?,
                    secret_access_key: s3_secret_key
                        .context("--s3-secret-key (or DEPOT_S3_SECRET_ACCESS_KEY) is required")?,
                    allow_http: s3_allow_http,
                }),
                None => backend_dir.map(|p| BackendConfig::Local { path: absolute(p) }),
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
            ctx.post::<VPoolView>(VPoolView::PATH, &req).await
        }
        VPoolCmd::List => ctx.list::<VPoolView>(VPoolView::PATH).await,
        VPoolCmd::Show { name } => ctx.show::<VPoolView>(&name).await,
        VPoolCmd::Delete { name } => ctx.delete::<VPoolView>(&name).await,
    }
}

async fn vm(ctx: &Ctx, cmd: VmCmd) -> anyhow::Result<String> {
    match cmd {
        VmCmd::Create {
            name,
            initiators,
            chap_user,
            chap_secret,
            target_user,
            target_secret,
            multipath,
            dtl,
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
                multipath,
                dtl,
            };
            ctx.post::<VmView>(VmView::PATH, &req).await
        }
        VmCmd::List => ctx.list::<VmView>(VmView::PATH).await,
        VmCmd::Show { name } => ctx.show::<VmView>(&name).await,
        VmCmd::Delete { name } => ctx.delete::<VmView>(&name).await,
        VmCmd::Move { name, to } => {
            let path = format!("{}/move", VmView::item(&name));
            ctx.post_many::<MoveReport>(&path, &MoveRequest { to, force: false })
                .await
        }
    }
}

async fn vdisk(ctx: &Ctx, cmd: VDiskCmd) -> anyhow::Result<String> {
    let size_arg = |s: Option<String>| -> anyhow::Result<Option<SizeSpec>> {
        Ok(s.map(|s| parse_size(&s)).transpose()?.map(SizeSpec::Bytes))
    };
    match cmd {
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
                size: size_arg(size)?,
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
            ctx.post::<VDiskView>(VDiskView::PATH, &req).await
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
                size: size_arg(size)?,
                from: Some(source),
                ..Default::default()
            };
            ctx.post::<VDiskView>(VDiskView::PATH, &req).await
        }
        VDiskCmd::List { vm } => {
            let path = match vm {
                Some(vm) => format!("{}?vm={}", VDiskView::PATH, enc(&vm)),
                None => VDiskView::PATH.to_string(),
            };
            ctx.list::<VDiskView>(&path).await
        }
        VDiskCmd::Show { name } => ctx.show::<VDiskView>(&name).await,
        VDiskCmd::Resize { name, size } => {
            let req = Resize {
                size: SizeSpec::Bytes(parse_size(&size)?),
            };
            let path = format!("{}/resize", VDiskView::item(&name));
            ctx.post::<VDiskView>(&path, &req).await
        }
        VDiskCmd::Delete { name } => ctx.delete::<VDiskView>(&name).await,
        VDiskCmd::Move { name, to, force } => {
            let path = format!("{}/move", VDiskView::item(&name));
            ctx.post::<MoveReport>(&path, &MoveRequest { to, force })
                .await
        }
        VDiskCmd::Recover { name, accept_loss } => {
            let path = format!("{}/recover", VDiskView::item(&name));
            ctx.post::<RecoverReport>(&path, &RecoverRequest { accept_loss })
                .await
        }
        VDiskCmd::Template { name, off } => {
            let req = SetTemplate { template: !off };
            let path = format!("{}/template", VDiskView::item(&name));
            ctx.post::<VDiskView>(&path, &req).await
        }
    }
}

async fn snapshot(ctx: &Ctx, cmd: SnapshotCmd) -> anyhow::Result<String> {
    let snapshots = |vdisk: &str| format!("{}/snapshots", VDiskView::item(vdisk));
    match cmd {
        SnapshotCmd::Create { vdisk, snapshot } => {
            let (vdisk, snapshot) = match vdisk.split_once('@') {
                Some((d, s)) if snapshot.is_none() => (d.to_string(), Some(s.to_string())),
                _ => (vdisk, snapshot),
            };
            let req = CreateSnapshot { name: snapshot };
            ctx.post::<SnapshotView>(&snapshots(&vdisk), &req).await
        }
        SnapshotCmd::List { vdisk } => ctx.list::<SnapshotView>(&snapshots(&vdisk)).await,
        SnapshotCmd::Delete { vdisk, snapshot } => {
            let (d, s) = snap_args(&vdisk, snapshot)?;
            let path = format!("{}/{}", snapshots(&d), enc(&s));
            ctx.done(Method::DELETE, &path, format!("snapshot {d}@{s} deleted"))
                .await
        }
        SnapshotCmd::Rollback { vdisk, snapshot } => {
            let (d, s) = snap_args(&vdisk, snapshot)?;
            let path = format!("{}/{}/rollback", snapshots(&d), enc(&s));
            ctx.done(Method::POST, &path, format!("vDisk {d} rolled back to {s}"))
                .await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_paths() {
        assert_eq!(VPoolView::item("p"), "/api/v1/vpools/p");
        assert_eq!(VmView::item("a b"), "/api/v1/vms/a%20b");
        assert_eq!(VDiskView::item("d"), "/api/v1/vdisks/d");
        assert_eq!(
            format!("{} {} deleted", VmView::LABEL, "web1"),
            "VM web1 deleted"
        );
    }
}
