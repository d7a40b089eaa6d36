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
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("DEPOT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = config::load(&command).and_then(serve::run);
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("depot: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
