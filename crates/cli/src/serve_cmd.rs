//! `worknode serve --config node.toml`: run one member of a cluster.

use std::path::PathBuf;

use worknode_server::config::ServerConfig;

use crate::CliError;

/// Arguments of `worknode serve`.
#[derive(Debug, clap::Args)]
pub(crate) struct ServeArgs {
    /// The member's configuration (TOML).
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// Accept a damaged log tail even where it may hold acknowledged writes (a torn tail
    /// from a crash needs no flag: it is cut at start by itself). Prefer --rejoin.
    #[arg(long)]
    recover_tail: bool,
    /// Rebuild this member from the cluster: remove its log and snapshot (keeping its term
    /// and vote when the old log still reads) and catch up by snapshot. Safe for a member
    /// the others still count as a voter (membership is fixed, so any listed member).
    #[arg(long, conflicts_with = "recover_tail")]
    rejoin: bool,
    /// Stop (as on SIGTERM) when this supervising process exits; `worknode demo` starts
    /// its members with its own pid here so none outlives it.
    #[arg(long, value_name = "PID")]
    supervisor: Option<u32>,
}

pub(crate) fn run(args: &ServeArgs) -> Result<(), CliError> {
    if let Some(pid) = args.supervisor {
        worknode_cores::process::terminate_with_parent(pid)
            .map_err(|error| CliError::runtime(format!("--supervisor {pid}: {error}")))?;
    }
    let config =
        ServerConfig::load(&args.config).map_err(|error| CliError::input(error.to_string()))?;
    let filter = tracing_subscriber::EnvFilter::try_from_env("WORKNODE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false)
        .try_init();
    let start = worknode_server::serve::StartOptions {
        recover_tail: args.recover_tail,
        rejoin: args.rejoin,
    };
    worknode_server::serve::serve(config, start)
        .map_err(|error| CliError::runtime(error.to_string()))
}
