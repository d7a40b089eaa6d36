//! `depot`: the storage router daemon (`depot serve`) and its command line.
//!
//! This is the composition root: the only place that names concrete storage
//! (engine volumes and raw files) and wires it to SCSI logical units and
//! iSCSI targets. Layout:
//! - [`config`]: `depot serve` configuration (file, `DEPOT_*`, flags);
//! - [`model`], [`catalog`], [`error`]: the persisted objects, the API's
//!   JSON shapes, typed errors;
//! - [`manager`]: live state and every management operation;
//! - [`api`], [`tls`]: the REST API and its TLS listener;
//! - [`metrics`]: Prometheus families and the metering device;
//! - [`cli`]: the API client behind `depot vpool|vm|vdisk|snapshot`.

mod api;
mod catalog;
mod cli;
mod config;
mod error;
mod identity;
mod manager;
mod metrics;
mod model;
mod serve;
mod size;
mod tls;

use std::path::PathBuf;

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
    Serve(ServeArgs),
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
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let command = match cli.command {
        Command::Serve(args) => args,
        other => {
            let cmd = match other {
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
