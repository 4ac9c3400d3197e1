//! `worknode snapshot restore FILE --config node.toml`: a new member's data directory from
//! a snapshot (see [`worknode_server::backup::restore`]).

use std::io::Write;
use std::path::PathBuf;

use worknode_server::config::ServerConfig;

use crate::CliError;

/// `worknode snapshot`.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum SnapshotCommand {
    /// Write a new member's data directory from a snapshot: from `etcdctl snapshot save`
    /// (against worknode or etcd) or an etcd member's `member/snap/db`. Restore every
    /// member of the new cluster from the same file, each with its own config.
    Restore(RestoreArgs),
}

/// Arguments of `worknode snapshot restore`.
#[derive(Debug, clap::Args)]
pub(crate) struct RestoreArgs {
    /// The snapshot file.
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// The member's configuration (TOML): its `data_dir` (new or empty) is written, its
    /// `[[member]]` list becomes the cluster's.
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// Restore a database without the SHA-256 `etcdctl snapshot save` appends (one copied
    /// from a member's data directory).
    #[arg(long)]
    skip_hash_check: bool,
}

pub(crate) fn run(command: &SnapshotCommand, out: &mut impl Write) -> Result<(), CliError> {
    let SnapshotCommand::Restore(args) = command;
    let config =
        ServerConfig::load(&args.config).map_err(|error| CliError::input(error.to_string()))?;
    let restored = worknode_server::backup::restore::read(&args.file, args.skip_hash_check)
        .map_err(CliError::input)?;
    let voters: Vec<u64> = config.members.iter().map(|member| member.id).collect();
    worknode_raft::member::bootstrap_restored(
        &config.data_dir,
        config.cluster_id(),
        config.member_id,
        &voters,
        &restored.machine,
    )
    .map_err(|error| CliError::runtime(error.to_string()))?;
    let store = restored.machine.store();
    let keys = store.history().filter(|(_, _, kv)| kv.is_some()).count();
    writeln!(
        out,
        "restored {} into {} for member {} of cluster {:?}: revision {}, compacted at {}, {} key versions, {} leases{}",
        args.file.display(),
        config.data_dir.display(),
        config.member_id,
        config.cluster,
        store.revision(),
        store.compact_revision(),
        keys,
        restored.machine.leases().len(),
        if restored.hash_checked { ", SHA-256 checked" } else { "" },
    )?;
    Ok(())
}
