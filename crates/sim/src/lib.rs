//! worknode's whole-cluster simulator: the real Raft driver (`worknode-raft`'s `Node`)
//! and state machine run as members of one cluster in one thread, on a simulated disk,
//! network and clocks, with clients and faults drawn from one seed. Checks run as it
//! goes and on the history at the end; a failing seed replays exactly.
//!
//! `worknode sim` is the command; [`run`] is one seed.

pub mod check;
pub mod faults;
pub mod report;
pub mod trace;
pub mod workload;
pub mod world;

use std::time::Instant;

use tokio::sync::oneshot;
use worknode_raft::{ClientRequest, PlantedBug};

use faults::FaultKind;
use workload::{Answer, Call, Operation, KEYS};
use world::clock::{Nanos, SECOND};
use world::World;

/// One run's settings.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// The seed: everything random in the run comes from it.
    pub seed: u64,
    /// Members (3 or 5).
    pub members: usize,
    /// Simulated length of the workload.
    pub duration: Nanos,
    /// Kinds of fault injected.
    pub faults: Vec<FaultKind>,
    /// A bug planted on purpose (the checks must catch it).
    pub bug: Option<PlantedBug>,
    /// Scheduled leadership on.
    pub rotation: bool,
    /// Print every worded event as it happens.
    pub trace: bool,
    /// Print every message delivered too.
    pub trace_messages: bool,
}

/// One check's result.
#[derive(Clone, Debug)]
pub struct CheckResult {
    /// Its name.
    pub name: &'static str,
    /// What it found, or why it failed.
    pub result: Result<String, String>,
}

/// What one run did and found.
#[derive(Clone, Debug)]
pub struct Report {
    /// The settings.
    pub config: RunConfig,
    /// Simulated seconds, the quiet end included.
    pub simulated_s: f64,
    /// Wall seconds the run took.
    pub wall_s: f64,
    /// Client operations called.
    pub operations: usize,
    /// Operations answered (not unknown, not refused).
    pub answered: usize,
    /// Faults begun, by kind.
    pub faults: Vec<(FaultKind, u32)>,
    /// Messages lost, duplicated and cut by faults.
    pub messages: (u64, u64, u64),
    /// Writes crashes dropped (never synced).
    pub lost_writes: u64,
    /// Writes never synced that crashes kept (written back before the crash).
    pub kept_writes: u64,
    /// Damaged members started again with `--rejoin`.
    pub rejoins: u64,
    /// New (term, leader) pairs seen.
    pub leader_changes: u64,
    /// Completed handoffs.
    pub handoffs: u64,
    /// Snapshots taken or installed, and those sent to lagging members.
    pub snapshots: (u64, u64),
    /// Takeovers from a silent leader.
    pub takeovers: u64,
    /// The checks.
    pub checks: Vec<CheckResult>,
    /// The trace digest: equal for equal runs.
    pub trace_digest: u64,
    /// Events in the trace.
    pub trace_events: u64,
    /// The latest worded events before the end (or the failure).
    pub recent: Vec<String>,
}

impl Report {
    /// The first failed check.
    pub fn failure(&self) -> Option<(&'static str, &str)> {
        self.checks.iter().find_map(|check| match &check.result {
            Err(why) => Some((check.name, why.as_str())),
            Ok(_) => None,
        })
    }
}

/// How long the cluster runs without clients and faults before the final checks, so
/// every write in flight is answered or times out and every member catches up.
const QUIET: Nanos = 4 * SECOND;

/// Runs one seed.
pub fn run(config: &RunConfig) -> Report {
    let started = Instant::now();
    let ids: Vec<u64> = (1..=config.members as u64).collect();
    let heal_at = if config.faults.is_empty() { config.duration } else { config.duration * 3 / 4 };
    let plan = faults::plan(world::mix(config.seed, 0xFA17, 0), &ids, &config.faults, heal_at);
    let injected = plan.injected.clone();
    let mut world = World::new(config.clone(), plan);
    world.run_until(config.duration);
    world.calling = false;
    world.run_until(config.duration + QUIET);
    world.settle_orphans();
    let mut checks = vec![CheckResult {
        name: "as it ran",
        result: match &world.observer.failure {
            Some(why) => Err(why.clone()),
            None => Ok(format!(
                "one leader per term over {} leader changes; {} equal digest samples; {} clock estimates within half their round trip",
                world.observer.leader_changes, world.observer.digests_compared, world.clock_estimates_checked
            )),
        },
    }];
    if world.observer.failure.is_none() {
        checks.extend(final_checks(&mut world, config, heal_at));
    }
    let handoffs = world.handles().iter().map(|(_, h)| h.rotation_metrics().handoffs_total).sum();
    let (_, lost_writes, kept_writes, rejoins) = world.disk_totals();
    let answered = world
        .history
        .iter()
        .filter(|op| !matches!(op.answer, Answer::Unknown | Answer::Refused))
        .count();
    Report {
        config: config.clone(),
        simulated_s: world.now as f64 / 1e9,
        wall_s: started.elapsed().as_secs_f64(),
        operations: world.history.len(),
        answered,
        faults: injected,
        messages: (world.network.lost, world.network.duplicated, world.network.cut),
        lost_writes,
        kept_writes,
        rejoins,
        leader_changes: world.observer.leader_changes,
        handoffs,
        snapshots: (world.snapshots_taken(), world.snapshots_sent),
        takeovers: world.takeovers(),
        checks,
        trace_digest: world.trace.digest(),
        trace_events: world.trace.events,
        recent: world.trace.recent(),
    }
}

fn final_checks(world: &mut World, config: &RunConfig, heal_at: Nanos) -> Vec<CheckResult> {
    let mut checks = Vec::new();
    checks.push(CheckResult { name: "converged", result: converged(world) });
    final_reads(world);
    checks.push(CheckResult {
        name: "linearizable",
        result: check::linearizability(&world.history).map(|undecided| {
            let mut line = format!("{} operations on {KEYS} keys", world.history.len());
            if undecided > 0 {
                line.push_str(&format!(" ({undecided} keys undecided within the search budget)"));
            }
            line
        }),
    });
    checks.push(CheckResult {
        name: "serializable reads",
        result: check::serializable_reads(&world.history).map(|()| "only written values".into()),
    });
    checks.push(CheckResult {
        name: "availability",
        result: check::availability(&world.history, &world.troubled, &world.freezes, &world.downs)
            .map(|longest| format!("longest write {:.1} ms outside trouble", longest as f64 / 1e6)),
    });
    if !config.faults.is_empty() {
        checks.push(CheckResult {
            name: "liveness",
            result: check::liveness(&world.history, heal_at)
                .map(|took| format!("first write {:.1} ms after the heal", took as f64 / 1e6)),
        });
    }
    if config.rotation {
        let turns = world.all_turns();
        checks.push(CheckResult {
            name: "down members skipped",
            result: check::down_members_skipped(
                &turns,
                &world.downs,
                &world.troubled,
                10 * world::clock::MS,
            )
            .map(|judged| format!("{judged} handoff decisions")),
        });
    }
    if config.faults.is_empty() {
        // A takeover means a leader was judged silent: never so without a fault.
        let takeovers = world.takeovers();
        checks.push(CheckResult {
            name: "no takeover without faults",
            result: if takeovers == 0 {
                Ok("no member took over from a live leader".into())
            } else {
                Err(format!("{takeovers} takeovers in a run without faults"))
            },
        });
    }
    if config.rotation && config.faults.is_empty() {
        // The turns that begin after the one in which the first leader was elected, until
        // the workload ends: 400 ms turns of four 100 ms slots from slot 0 at the start.
        let turn_slots = 4;
        let elected = world.observer.first_leader_at.unwrap_or(config.duration);
        let first = (elected / world::TURN + 2) * turn_slots;
        let last = config.duration / world::TURN * turn_slots;
        let expected: Vec<u64> = (first..last).step_by(turn_slots as usize).collect();
        checks.push(CheckResult {
            name: "turns on schedule",
            result: check::turns_on_schedule(&world.all_turns(), &expected)
                .map(|share| format!("{:.1}% of {} turns", share * 100.0, expected.len())),
        });
    }
    checks
}

/// After the quiet end every member has applied the same entries to the same state.
fn converged(world: &mut World) -> Result<String, String> {
    let mut receivers = Vec::new();
    for (id, _) in world.handles() {
        let (reply, receiver) = oneshot::channel();
        if world.submit(id, ClientRequest::Digest { reply }) {
            receivers.push((id, receiver));
        }
    }
    world.run_until(world.now + 100 * world::clock::MS);
    let mut states = Vec::new();
    for (id, mut receiver) in receivers {
        match receiver.try_recv() {
            Ok(machine) => states.push((id, machine.applied_index(), machine.digest())),
            Err(_) => return Err(format!("member {id} did not answer for its state")),
        }
    }
    let Some(&(first, applied, digest)) = states.first() else {
        return Err("no member is up at the end".into());
    };
    for &(id, other_applied, other_digest) in &states[1..] {
        if (other_applied, other_digest) != (applied, digest) {
            return Err(format!(
                "after {} s of quiet, member {first} applied {applied} (digest {digest:016x}) and member {id} {other_applied} ({other_digest:016x})",
                QUIET / SECOND
            ));
        }
    }
    Ok(format!("{} members at applied index {applied}", states.len()))
}

/// Reads every key linearizably at every member, into the history: a write acknowledged
/// and then lost shows here if nowhere else.
fn final_reads(world: &mut World) {
    let mut waiting = Vec::new();
    for (id, _) in world.handles() {
        for key in 0..KEYS {
            let deadline = world.instant(world.now + workload::REQUEST_TIMEOUT);
            let (reply, receiver) = oneshot::channel();
            let request = ClientRequest::Read { linearizable: true, deadline, reply };
            if world.submit(id, request) {
                waiting.push((id, key, world.now, receiver));
            }
        }
    }
    world.run_until(world.now + SECOND);
    for (member, key, called, mut receiver) in waiting {
        let answer = match receiver.try_recv() {
            Ok(Ok(view)) => workload::read_answer(&view, key),
            _ => Answer::Unknown,
        };
        world.history.push(Operation {
            client: u32::MAX,
            member,
            key,
            call: Call::Get { linearizable: true },
            called,
            answered: Some(world.now),
            answer,
        });
    }
}
