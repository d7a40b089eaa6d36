//! `depot`: the storage router daemon (`depot serve`) and its command line.
//!
//! This is the composition root: the only place that names concrete storage
//! (raw files today) and wires it to SCSI logical units and iSCSI targets.

mod config;
mod identity;
mod serve;
mod size;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Depot: a VM-centric iSCSI storage router.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the storage router.
    Serve(ServeArgs),
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
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("DEPOT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Serve(args) => config::load(&args).and_then(serve::run),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("depot: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
