//! `depot`: the storage router daemon (`depot serve`) and its command line.
//!
//! This is the composition root: it parses the command line and hands it to
//! the client ([`cli`]) or to the daemon ([`config`] then [`serve`]). Only
//! the manager names concrete storage (engine volumes and raw files) and
//! wires it to SCSI logical units and iSCSI targets. Layout, each module
//! using only modules listed before it:
//! - [`size`], [`error`], [`tls`], [`metrics`]: sizes as text, typed errors
//!   and their HTTP mapping, the API's TLS listener, Prometheus families and
//!   the metering device;
//! - [`model`]: the persisted records and the API's JSON shapes;
//! - [`identity`], [`catalog`]: vDisk identities; the persisted records
//!   behind one seam;
//! - [`manager`]: live state and every management operation;
//! - [`api`]: the REST API;
//! - [`config`], [`serve`]: `depot serve` configuration (file, `DEPOT_*`,
//!   flags) and the daemon's run;
//! - [`cli`]: the API client behind `depot vpool|vm|vdisk|snapshot`.

mod api;
mod catalog;
mod cli;
mod cluster;
mod config;
mod error;
mod identity;
mod manager;
mod metered;
mod metrics;
mod model;
mod serve;
mod size;
mod tls;

use clap::{Parser, Subcommand};

/// Depot: a VM-centric iSCSI storage router.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    client: cli::ClientArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the storage router.
    Serve(config::ServeArgs),
    /// The cluster's routers.
    #[command(subcommand)]
    Router(cli::RouterCmd),
    /// Manage vPools.
    #[command(subcommand)]
    Vpool(cli::VPoolCmd),
    /// Manage VMs.
    #[command(subcommand)]
    Vm(cli::VmCmd),
    /// Manage vDisks.
    #[command(subcommand)]
    Vdisk(cli::VDiskCmd),
    /// Manage snapshots.
    #[command(subcommand)]
    Snapshot(cli::SnapshotCmd),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let command = match cli.command {
        Command::Serve(args) => args,
        other => {
            let cmd = match other {
                Command::Router(c) => cli::ClientCmd::Router(c),
                Command::Vpool(c) => cli::ClientCmd::VPool(c),
                Command::Vm(c) => cli::ClientCmd::Vm(c),
                Command::Vdisk(c) => cli::ClientCmd::VDisk(c),
                Command::Snapshot(c) => cli::ClientCmd::Snapshot(c),
                Command::Serve(_) => return std::process::ExitCode::FAILURE,
            };
            return match cli::run(&cli.client, cmd) {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("depot: {e:#}");
                    std::process::ExitCode::FAILURE
                }
            };
        }
    };
    // The configuration is read (it logs nothing) before logging starts, so
    // a clustered router's name is on every line from the first one.
    let result = config::load(&command).and_then(|cfg| {
        init_logging(cfg.cluster.as_ref().map(|c| c.etcd.router.clone()));
        serve::run(cfg)
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("depot: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Logs of `depot serve` on stderr, filtered by `DEPOT_LOG` (default
/// `info`); a clustered router's lines carry its name ([`RouterLines`]).
fn init_logging(router: Option<String>) {
    let b = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("DEPOT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr);
    match router {
        None => b.init(),
        Some(router) => b.event_format(RouterLines::new(router)).init(),
    }
}

/// The default log line with `router=NAME` after the timestamp:
/// `2026-05-01T10:00:00.000000Z router=r1  INFO depot::serve: ...`. Every
/// line of every thread carries it (a span would only cover the threads
/// that entered it). It stands apart from an event's own fields, where
/// `router=` names the other router of a move or a forwarded call.
struct RouterLines {
    router: String,
    inner: tracing_subscriber::fmt::format::Format<tracing_subscriber::fmt::format::Full, ()>,
}

impl RouterLines {
    fn new(router: String) -> Self {
        RouterLines {
            router,
            inner: tracing_subscriber::fmt::format().without_time(),
        }
    }
}

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for RouterLines
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut w: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        use tracing_subscriber::fmt::time::FormatTime;
        // The timestamp as the default format writes it (dimmed in colour).
        let ansi = w.has_ansi_escapes();
        if ansi {
            w.write_str("\x1b[2m")?;
        }
        if tracing_subscriber::fmt::time::SystemTime
            .format_time(&mut w)
            .is_err()
        {
            w.write_str("<unknown time>")?;
        }
        if ansi {
            w.write_str("\x1b[0m")?;
        }
        write!(w, " router={} ", self.router)?;
        self.inner.format_event(ctx, w, event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn log_line(router: Option<&str>) -> String {
        let buf = Buf::default();
        let out = buf.clone();
        let b = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || out.clone());
        let emit = || tracing::warn!(router = "r2", vdisk = "d1", "moving");
        match router {
            None => tracing::subscriber::with_default(b.finish(), emit),
            Some(r) => tracing::subscriber::with_default(
                b.event_format(RouterLines::new(r.to_string())).finish(),
                emit,
            ),
        }
        String::from_utf8(buf.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn clustered_log_lines_carry_the_router_name_after_the_timestamp() {
        let plain = log_line(None);
        let named = log_line(Some("r1"));
        let (ts, rest) = plain.split_once(' ').unwrap();
        assert!(ts.ends_with('Z'), "{plain}");
        let (ts2, rest2) = named.split_once(' ').unwrap();
        assert!(ts2.ends_with('Z'), "{named}");
        // Exactly the standalone line with the name after the timestamp.
        assert_eq!(rest2, format!("router=r1 {rest}"), "{plain}{named}");
        assert!(
            rest.ends_with("moving router=\"r2\" vdisk=\"d1\"\n"),
            "{rest}"
        );
    }
}
