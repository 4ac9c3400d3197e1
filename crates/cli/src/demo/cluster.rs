//! The demo's three members: real `worknode serve` processes on loopback, each with its
//! configuration, data directory and log file under one directory.
//!
//! Members run in their own process group, so a terminal's Ctrl-C reaches only the demo,
//! which stops them in order; each is started with `--supervisor` so that the kernel stops
//! it if the demo dies without cleaning up. Dropping the cluster stops every member
//! (SIGTERM, then SIGKILL after a grace period) and removes a temporary directory.

use std::fs::OpenOptions;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use worknode_cores::CpuSet;

use crate::CliError;

/// How long a member may take to stop after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// CPUs a member's worknodes are pinned to.
#[derive(Clone, Debug)]
pub(crate) struct MemberCpus {
    pub(crate) raft: CpuSet,
    pub(crate) net: CpuSet,
}

/// The settings every member shares.
#[derive(Clone, Debug)]
pub(crate) struct ClusterSettings {
    pub(crate) slot_ms: u64,
    pub(crate) slots_per_turn: u64,
    /// Per member (index = member id − 1): pinned CPUs, or `None` to run unpinned.
    pub(crate) cpus: Vec<Option<MemberCpus>>,
    /// Members outlive the demo (`--keep-running`): started without `--supervisor`.
    pub(crate) detached: bool,
}

/// One member process.
#[derive(Debug)]
pub(crate) struct LocalMember {
    pub(crate) id: u64,
    pub(crate) name: String,
    pub(crate) client: SocketAddr,
    /// Prometheus metrics (`GET /metrics`).
    pub(crate) metrics: SocketAddr,
    config: PathBuf,
    pub(crate) log: PathBuf,
    child: Option<Child>,
}

/// The three members.
#[derive(Debug)]
pub(crate) struct LocalCluster {
    pub(crate) dir: PathBuf,
    remove_dir: bool,
    detached: bool,
    kept: bool,
    binary: PathBuf,
    pub(crate) members: Vec<LocalMember>,
}

impl LocalCluster {
    /// Writes three member configurations under `dir` (a new temporary directory when
    /// `None`; an existing one must be empty).
    pub(crate) fn create(dir: Option<&Path>, settings: &ClusterSettings) -> Result<Self, CliError> {
        let (dir, remove_dir) = match dir {
            Some(dir) => {
                if std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_some()) {
                    return Err(CliError::input(format!(
                        "--data {}: the directory is not empty (give a new or empty one)",
                        dir.display()
                    )));
                }
                (dir.to_path_buf(), false)
            }
            None => {
                (std::env::temp_dir().join(format!("worknode-demo-{}", std::process::id())), true)
            }
        };
        std::fs::create_dir_all(&dir)
            .map_err(|e| CliError::input(format!("--data {}: {e}", dir.display())))?;
        let binary = std::env::current_exe()
            .map_err(|e| CliError::runtime(format!("cannot find the worknode binary: {e}")))?;
        let addresses = worknode_server::local_cluster::loopback_members(3)
            .map_err(|e| CliError::runtime(format!("cannot find free ports on 127.0.0.1: {e}")))?;
        let mut cluster = Self {
            dir,
            remove_dir,
            detached: settings.detached,
            kept: false,
            binary,
            members: Vec::new(),
        };
        let member_tables = worknode_server::local_cluster::member_tables(&addresses);
        for member in &addresses {
            cluster.members.push(LocalMember {
                id: member.id,
                name: member.name.clone(),
                client: member.client,
                metrics: member.metrics,
                config: cluster.dir.join(format!("{}.toml", member.name)),
                log: cluster.dir.join(format!("{}.log", member.name)),
                child: None,
            });
        }
        for (index, member) in cluster.members.iter().enumerate() {
            let cores = match settings.cpus.get(index).cloned().flatten() {
                Some(cpus) => format!(
                    "[cores]\npin = \"auto\"\n\n[[cores.worknode]]\nname = \"raft\"\nclass = \"critical\"\ncpu_affinity = \"{}\"\n\n[[cores.worknode]]\nname = \"net\"\nclass = \"normal\"\ncpu_affinity = \"{}\"\n",
                    cpus.raft,
                    if cpus.net.is_empty() { "none".to_owned() } else { cpus.net.to_string() }
                ),
                None => "[cores]\npin = \"off\"\n".to_owned(),
            };
            let text = format!(
                "# Written by `worknode demo`.\ncluster = \"demo\"\nmember_id = {id}\ndata_dir = \"{data}\"\n\
                 tick_ms = 20\nelection_ticks = 10\nheartbeat_ticks = 1\nrequest_timeout_ms = 3000\n\n\
                 {cores}\n[schedule]\nrotation = \"on\"\nslot_ms = {slot_ms}\nslots_per_turn = {spt}\n\
                 slots_per_epoch = {spe}\nhandoff_lead_ms = {lead}\n{member_tables}",
                id = member.id,
                data = cluster.dir.join(&member.name).display(),
                slot_ms = settings.slot_ms,
                spt = settings.slots_per_turn,
                spe = settings.slots_per_turn * 1_000,
                lead = (settings.slot_ms / 5).clamp(5, 20),
            );
            std::fs::write(&member.config, text).map_err(|e| {
                CliError::runtime(format!("cannot write {}: {e}", member.config.display()))
            })?;
        }
        Ok(cluster)
    }

    /// Comma-separated client addresses.
    pub(crate) fn endpoints(&self) -> String {
        self.members.iter().map(|m| m.client.to_string()).collect::<Vec<_>>().join(",")
    }

    /// Starts member `index` (after a crash too: a torn log tail is cut at start).
    pub(crate) fn spawn(&mut self, index: usize) -> Result<(), CliError> {
        let detached = self.detached;
        let member = &mut self.members[index];
        let log =
            OpenOptions::new().create(true).append(true).open(&member.log).map_err(|e| {
                CliError::runtime(format!("cannot open {}: {e}", member.log.display()))
            })?;
        let log_err = log
            .try_clone()
            .map_err(|e| CliError::runtime(format!("cannot open {}: {e}", member.log.display())))?;
        let mut command = Command::new(&self.binary);
        command
            .arg("serve")
            .arg("--config")
            .arg(&member.config)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .process_group(0);
        if !detached {
            command.arg("--supervisor").arg(std::process::id().to_string());
        }
        let child = command.spawn().map_err(|e| {
            CliError::runtime(format!("cannot start {}: {e}", self.binary.display()))
        })?;
        member.child = Some(child);
        Ok(())
    }

    /// Whether member `index` is running; a member that exited is reported with the last
    /// line of its log.
    pub(crate) fn check(&mut self, index: usize) -> Result<bool, CliError> {
        let member = &mut self.members[index];
        let Some(child) = &mut member.child else {
            return Ok(false);
        };
        match child.try_wait() {
            Ok(None) => Ok(true),
            Ok(Some(status)) => {
                member.child = None;
                let text = std::fs::read_to_string(&member.log).unwrap_or_default();
                let last = text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("(empty)");
                Err(CliError::runtime(format!(
                    "member {} exited ({status}); last line of {}: {}",
                    member.name,
                    member.log.display(),
                    last.trim()
                )))
            }
            Err(e) => Err(CliError::runtime(format!("member {}: {e}", member.name))),
        }
    }

    /// Kills member `index` with SIGKILL, as a crash would.
    pub(crate) fn crash(&mut self, index: usize) {
        if let Some(mut child) = self.members[index].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Process ids of the running members.
    pub(crate) fn pids(&self) -> Vec<u32> {
        self.members.iter().filter_map(|m| m.child.as_ref().map(Child::id)).collect()
    }

    /// Leaves the members running when the cluster is dropped (`--keep-running`).
    pub(crate) fn keep(&mut self) {
        self.kept = true;
    }

    /// Stops every member: SIGTERM, then SIGKILL for any still running after the grace.
    pub(crate) fn stop(&mut self) {
        for member in &mut self.members {
            if let Some(child) = &member.child {
                let _ = worknode_cores::process::terminate(child.id());
            }
        }
        let deadline = Instant::now() + STOP_GRACE;
        for member in &mut self.members {
            let Some(mut child) = member.child.take() else {
                continue;
            };
            loop {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() >= deadline => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        self.stop();
        if self.remove_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
