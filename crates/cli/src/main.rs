//! `worknode`: the command-line front end.
//!
//! Every failure caused by input (arguments, files, stake tables) prints one line naming
//! the problem and exits with status 2; failures to write output exit with status 1.

use std::fmt;
use std::io::{self, BufWriter, Write};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench_cmd;
mod certs_cmd;
mod cluster_top_cmd;
mod cores_cmd;
mod demo;
mod jitter_cmd;
mod schedule_cmd;
mod serve_cmd;
mod sim_cmd;
mod snapshot_cmd;
mod stakes_input;
mod status_cmd;
mod svg;
mod top_cmd;

/// mimalloc instead of glibc's malloc: every request allocates (gRPC frames, proposals,
/// Raft messages) on several threads, and glibc's arenas trim and re-protect memory on
/// the Raft loop's path as they shrink and grow.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit status for bad input.
const EXIT_INPUT: u8 = 2;
/// Exit status for failures writing output.
const EXIT_OUTPUT: u8 = 1;
/// Exit status after Ctrl-C.
const EXIT_INTERRUPTED: u8 = 130;
/// Exit status of `cores audit --strict` when a critical check fails.
const EXIT_CRITICAL: u8 = 1;

/// worknode: predictable replicated services on isolated cores, with scheduled Raft leadership.
#[derive(Debug, Parser)]
#[command(name = "worknode", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start a local 3-member cluster, rotate leadership under load, kill a member, and
    /// report what clients saw.
    Demo(demo::DemoArgs),
    /// Compute an epoch's leader schedule from a stake table, show a running cluster's
    /// (`--cluster`), or change it (`schedule set`).
    #[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
    Schedule(schedule_cmd::ScheduleArgs),
    /// Load-test an etcd-API cluster (worknode or etcd): closed-loop puts or gets.
    Bench(bench_cmd::BenchArgs),
    /// A running cluster: members, roles, slot, upcoming leaders, recent handoffs.
    Status(status_cmd::StatusArgs),
    /// A running cluster, live: slot clock, members and their cores, recent turns.
    Top(cluster_top_cmd::ClusterTopArgs),
    /// Run one member of a cluster (etcd v3 API on its client address).
    Serve(serve_cmd::ServeArgs),
    /// Simulate a whole cluster in one thread from a seed, with faults, and check what
    /// its clients saw (linearizability, no lost writes, one leader per term, liveness).
    Sim(sim_cmd::SimArgs),
    /// CPU isolation: show the topology, audit the host, plan worknode placement.
    #[command(subcommand)]
    Cores(cores_cmd::CoresCommand),
    /// TLS: make a CA and member, peer and client certificates (`certs init`).
    #[command(subcommand)]
    Certs(certs_cmd::CertsCommand),
    /// Snapshots: make a new cluster's data directories from one (`snapshot restore`).
    #[command(subcommand)]
    Snapshot(snapshot_cmd::SnapshotCommand),
}

/// A failure reported to the user as one line.
#[derive(Debug)]
pub(crate) struct CliError {
    pub(crate) message: String,
    exit: u8,
}

impl CliError {
    /// Bad input: the message names the file, line, field or value at fault.
    pub(crate) fn input(message: impl Into<String>) -> Self {
        Self { message: message.into(), exit: EXIT_INPUT }
    }

    /// The command ran and failed (a server that could not start or stopped on an error).
    pub(crate) fn runtime(message: impl Into<String>) -> Self {
        Self { message: message.into(), exit: EXIT_OUTPUT }
    }

    /// The user pressed Ctrl-C; everything was stopped (exit status 130, as a shell reports
    /// SIGINT).
    pub(crate) fn interrupted(message: impl Into<String>) -> Self {
        Self { message: message.into(), exit: EXIT_INTERRUPTED }
    }

    /// Output could not be written.
    pub(crate) fn output(error: impl fmt::Display) -> Self {
        Self { message: format!("cannot write output: {error}"), exit: EXIT_OUTPUT }
    }
}

impl From<io::Error> for CliError {
    fn from(error: io::Error) -> Self {
        Self::output(error)
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            use clap::error::ErrorKind;
            match error.kind() {
                // --help and --version go to stdout and succeed.
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
                    let _ = error.print();
                    return ExitCode::SUCCESS;
                }
                // No subcommand: the help is the most useful answer.
                ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
                    let _ = error.print();
                    return ExitCode::from(EXIT_INPUT);
                }
                _ => {}
            }
            // clap's message spans several lines (usage, hints); keep the problem only.
            let text = error.to_string();
            let mut lines = text.lines().map(str::trim).filter(|line| !line.is_empty());
            let first = lines.next().unwrap_or("invalid arguments").trim_start_matches("error: ");
            if error.kind() == ErrorKind::MissingRequiredArgument {
                eprintln!("error: {first} {}", lines.next().unwrap_or(""));
            } else {
                eprintln!("error: {first}");
            }
            return ExitCode::from(EXIT_INPUT);
        }
    };
    let stdout = io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let result = match &cli.command {
        Command::Demo(args) => demo::run(args, &mut out).map(|()| ExitCode::SUCCESS),
        Command::Schedule(args) => schedule_cmd::run(args, &mut out).map(|()| ExitCode::SUCCESS),
        Command::Bench(args) => bench_cmd::run(args, &mut out).map(|()| ExitCode::SUCCESS),
        Command::Status(args) => status_cmd::run(args, &mut out).map(|()| ExitCode::SUCCESS),
        Command::Top(args) => cluster_top_cmd::run(args, &mut out).map(|()| ExitCode::SUCCESS),
        Command::Serve(args) => serve_cmd::run(args).map(|()| ExitCode::SUCCESS),
        Command::Sim(args) => sim_cmd::run(args, &mut out),
        Command::Certs(command) => certs_cmd::run(command, &mut out).map(|()| ExitCode::SUCCESS),
        Command::Snapshot(command) => {
            snapshot_cmd::run(command, &mut out).map(|()| ExitCode::SUCCESS)
        }
        Command::Cores(command) => cores_cmd::run(command, &mut out).map(|outcome| match outcome {
            cores_cmd::CoresOutcome::Done => ExitCode::SUCCESS,
            cores_cmd::CoresOutcome::CriticalFailures(_) => ExitCode::from(EXIT_CRITICAL),
        }),
    };
    let result = result.and_then(|code| out.flush().map(|()| code).map_err(CliError::from));
    match result {
        Ok(code) => code,
        // A reader that went away (`| head`) is not an error worth a message.
        Err(error) if error.exit == EXIT_OUTPUT && error.message.contains("Broken pipe") => {
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {}", error.message);
            ExitCode::from(error.exit)
        }
    }
}
