//! `worknode demo`: the main job for a newcomer. Audits the host and plans cores for three
//! local members, starts them as real `worknode serve` processes on loopback, runs a mixed
//! read/write load through the etcd API while leadership rotates on schedule, kills and
//! restarts one member halfway, and reports per turn and in summary what clients saw.

mod cluster;
mod load;
mod plot;

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tonic::transport::{Channel, Endpoint};
use worknode_cores::{audit, live_host, CorePlan, PlanConfig, Status, WorknodeClass, WorknodeSpec};
use worknode_server::adminpb::admin_client::AdminClient;
use worknode_server::adminpb::{ScheduleRequest, TurnRecord, TurnsRequest};
use worknode_server::pb::maintenance_client::MaintenanceClient;
use worknode_server::pb::StatusRequest;

use self::cluster::{ClusterSettings, LocalCluster, MemberCpus};
use self::load::{read_back, unix_ns, Completion, Load};
use crate::CliError;

/// How long the members may take to elect a first leader.
const START_DEADLINE: Duration = Duration::from_secs(30);
/// How often the demo looks at the clock, the clients and the members.
const MONITOR_INTERVAL: Duration = Duration::from_millis(100);
/// How often it collects the members' turn logs.
const TURNS_POLL_EVERY: u32 = 4;
/// A turn's row is printed this long after it ends (its record has settled by then).
const ROW_DELAY_NS: u64 = 300_000_000;
/// Turns listed in the opening schedule.
const SCHEDULE_PREVIEW: usize = 6;

/// Arguments of `worknode demo`.
#[derive(Debug, clap::Args)]
pub(crate) struct DemoArgs {
    /// Seconds of load.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(2..=3_600))]
    duration: u64,
    /// Keep data and logs here (a new or empty directory) instead of a temporary one.
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// Do not kill and restart a member halfway.
    #[arg(long)]
    no_faults: bool,
    /// Leave the cluster running at the end and print how to reach it.
    #[arg(long)]
    keep_running: bool,
    /// Write a timeline plot (scheduled vs actual leader, handoffs, write latency) here.
    #[arg(long, value_name = "FILE")]
    svg: Option<PathBuf>,
    /// Clients writing (closed loop, 64-byte values).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=256))]
    writers: u64,
    /// Clients reading (linearizable).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(0..=256))]
    readers: u64,
    /// Slot length in milliseconds.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(10..=10_000))]
    slot_ms: u64,
    /// Slots per leader turn.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=1_000))]
    slots_per_turn: u64,
}

/// What clients saw during one turn.
#[derive(Default)]
struct TurnStats {
    writes: u64,
    reads: u64,
    /// Failed attempts (retried) and failed operations.
    errors: u64,
    write_latency: Option<Histogram<u64>>,
}

/// One turn of the run, as printed and plotted.
#[derive(Clone, Debug)]
pub(crate) struct TurnRow {
    pub(crate) number: usize,
    pub(crate) first_slot: u64,
    /// Seconds since the load started.
    pub(crate) start_s: f64,
    pub(crate) end_s: f64,
    pub(crate) scheduled: u64,
    /// Who led once the boundary settled; `None` without a record.
    pub(crate) actual: Option<u64>,
    pub(crate) handoff_ms: Option<f64>,
    pub(crate) skipped: String,
    pub(crate) writes: u64,
    pub(crate) errors: u64,
    pub(crate) p99_ms: Option<f64>,
}

/// Something the demo did to the cluster, at seconds since the load started.
#[derive(Clone, Debug)]
pub(crate) struct Fault {
    pub(crate) at_s: f64,
    pub(crate) what: String,
}

/// Write latency over one slice of the run, for the plot.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LatencyPoint {
    pub(crate) at_s: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
}

fn histogram() -> Histogram<u64> {
    // 1 µs to 100 s at 3 significant digits; these bounds are valid by construction.
    Histogram::new_with_bounds(1, 100_000_000, 3).unwrap_or_else(|_| unreachable!("valid bounds"))
}

fn percentile_ms(histogram: &Histogram<u64>, quantile: f64) -> f64 {
    histogram.value_at_quantile(quantile) as f64 / 1e3
}

pub(crate) fn run(args: &DemoArgs, out: &mut impl Write) -> Result<(), CliError> {
    if let Some(parent) =
        args.svg.as_ref().and_then(|p| p.parent()).filter(|p| !p.as_os_str().is_empty())
    {
        if !parent.is_dir() {
            return Err(CliError::input(format!(
                "--svg: directory {} does not exist",
                parent.display()
            )));
        }
    }
    let turn_ms = args.slot_ms * args.slots_per_turn;
    writeln!(
        out,
        "worknode demo: 3 members on loopback, leadership rotating every {turn_ms} ms ({} ms slots × {}), {} s of load ({} writers, {} readers){}",
        args.slot_ms,
        args.slots_per_turn,
        args.duration,
        args.writers,
        args.readers,
        if args.no_faults { "" } else { ", one member killed halfway" }
    )?;
    writeln!(out)?;
    let cpus = host_and_plan(out)?;
    let settings = ClusterSettings {
        slot_ms: args.slot_ms,
        slots_per_turn: args.slots_per_turn,
        cpus,
        detached: args.keep_running,
    };
    let mut cluster = LocalCluster::create(args.data.as_deref(), &settings)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::runtime(format!("tokio runtime: {e}")))?;
    let result = runtime.block_on(async {
        tokio::select! {
            result = demo(args, out, &mut cluster) => result,
            signal = stop_signal() => Err(CliError::interrupted(signal)),
        }
    });
    if std::io::stderr().is_terminal() {
        eprint!("\r\x1b[K");
    }
    match result {
        Ok(()) if args.keep_running => {
            cluster.keep();
            let endpoints = cluster.endpoints();
            let pids: Vec<String> = cluster.pids().iter().map(u32::to_string).collect();
            writeln!(out)?;
            writeln!(
                out,
                "the cluster keeps running (pids {}); data and logs in {}",
                pids.join(" "),
                cluster.dir.display()
            )?;
            writeln!(out, "  etcdctl --endpoints={endpoints} endpoint status -w table")?;
            writeln!(out, "  etcdctl --endpoints={endpoints} put greeting hello")?;
            writeln!(out, "  etcdctl --endpoints={endpoints} get demo/w0/1")?;
            writeln!(out, "  worknode status --endpoints {endpoints}")?;
            writeln!(out, "  worknode top --endpoints {endpoints}")?;
            writeln!(
                out,
                "  curl -s http://{}/metrics | grep worknode_rotation",
                cluster.members[0].metrics
            )?;
            writeln!(out, "stop it with: kill {}", pids.join(" "))?;
            Ok(())
        }
        Ok(()) => {
            cluster.stop();
            writeln!(out)?;
            writeln!(
                out,
                "members stopped{}",
                if args.data.is_some() {
                    format!("; data and logs kept in {}", cluster.dir.display())
                } else {
                    String::new()
                }
            )?;
            Ok(())
        }
        Err(error) => {
            let _ = out.flush();
            cluster.stop();
            let dir = cluster.dir.display().to_string();
            let kept = args.data.is_some();
            drop(cluster);
            Err(CliError {
                message: format!(
                    "{}; every member was stopped{}",
                    error.message,
                    if kept { format!(" (data and logs kept in {dir})") } else { String::new() }
                ),
                ..error
            })
        }
    }
}

/// Waits for Ctrl-C (SIGINT), SIGTERM or SIGHUP (the terminal went away).
async fn stop_signal() -> String {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut interrupt), Ok(mut terminate), Ok(mut hangup)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) else {
        // Without handlers a signal ends the process; the members' --supervisor stops them.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = interrupt.recv() => "interrupted".into(),
        _ = terminate.recv() => "terminated (SIGTERM)".into(),
        _ = hangup.recv() => "hung up (SIGHUP)".into(),
    }
}

/// Audits the host, prints the core plan for three members, and says how each is pinned.
fn host_and_plan(out: &mut impl Write) -> Result<Vec<Option<MemberCpus>>, CliError> {
    let (sys, host) = live_host();
    let report = audit(&sys, &host);
    let count = |status: Status| report.items.iter().filter(|i| i.status == status).count();
    writeln!(
        out,
        "host: Linux {}, {}, {} CPUs online in {} physical cores, isolated CPUs: {}",
        report.kernel.as_deref().unwrap_or("(unknown kernel)"),
        match report.virtualized {
            Some(true) => "virtualized",
            Some(false) => "bare metal",
            None => "virtualization unknown",
        },
        host.online_cpus().len(),
        host.physical_cores().len(),
        if host.isolated().is_empty() { "none".to_owned() } else { host.isolated().to_string() }
    )?;
    writeln!(
        out,
        "audit: {} checks pass, {} fail ({} critical), {} unknown; `worknode cores audit` explains each",
        count(Status::Pass),
        count(Status::Fail),
        report.critical_failures(),
        count(Status::Unknown)
    )?;
    let mut worknodes = Vec::new();
    for id in 1..=3 {
        worknodes.push(WorknodeSpec::new(format!("n{id}.raft"), WorknodeClass::Critical));
    }
    for id in 1..=3 {
        worknodes.push(WorknodeSpec::new(format!("n{id}.net"), WorknodeClass::Normal));
    }
    let config = PlanConfig { best_effort: true, housekeeping: None, worknodes };
    let plan = CorePlan::build(&host, &config)
        .map_err(|e| CliError::runtime(format!("core plan: {e}")))?;
    writeln!(out)?;
    crate::cores_cmd::write_plan(&plan, out)?;
    let raft: Vec<_> = (1..=3).filter_map(|id| plan.placement(&format!("n{id}.raft"))).collect();
    let own_cores = raft.iter().all(|p| p.is_pinned() && !p.degraded) && raft.len() == 3;
    if !own_cores {
        writeln!(
            out,
            "this host has fewer free physical cores than the 3 Raft loops need: the members run unpinned (best effort); with 4 or more cores each Raft loop gets one of its own"
        )?;
        writeln!(out)?;
        return Ok(vec![None, None, None]);
    }
    writeln!(out, "each member pins its Raft loop to its own core as planned")?;
    writeln!(out)?;
    Ok((1..=3)
        .map(|id| {
            Some(MemberCpus {
                raft: plan
                    .placement(&format!("n{id}.raft"))
                    .map(|p| p.cpus.clone())
                    .unwrap_or_default(),
                net: plan
                    .placement(&format!("n{id}.net"))
                    .map(|p| p.cpus.clone())
                    .unwrap_or_default(),
            })
        })
        .collect())
}

fn lazy_channel(address: std::net::SocketAddr) -> Result<Channel, CliError> {
    Ok(Endpoint::from_shared(format!("http://{address}"))
        .map_err(|e| CliError::runtime(format!("{address}: {e}")))?
        .connect_timeout(Duration::from_millis(500))
        .timeout(Duration::from_secs(2))
        .connect_lazy())
}

/// The leader as one member sees it (0: none known or no member answered).
async fn leader(channels: &[Channel], cluster: &mut LocalCluster) -> u64 {
    for (index, channel) in channels.iter().enumerate() {
        if !cluster.check(index).unwrap_or(false) {
            continue;
        }
        if let Ok(reply) = MaintenanceClient::new(channel.clone()).status(StatusRequest {}).await {
            let leader = reply.into_inner().leader;
            if leader != 0 {
                return leader;
            }
        }
    }
    0
}

async fn demo(
    args: &DemoArgs,
    out: &mut impl Write,
    cluster: &mut LocalCluster,
) -> Result<(), CliError> {
    writeln!(
        out,
        "starting 3 members (`worknode serve`), data and logs in {}",
        cluster.dir.display()
    )?;
    out.flush()?;
    for index in 0..3 {
        cluster.spawn(index)?;
    }
    if args.keep_running {
        let pids: Vec<String> = cluster.pids().iter().map(u32::to_string).collect();
        writeln!(out, "member pids {} (they keep running after the demo)", pids.join(" "))?;
    }
    let channels =
        cluster.members.iter().map(|m| lazy_channel(m.client)).collect::<Result<Vec<_>, _>>()?;
    let started = Instant::now();
    let mut leader_id = 0;
    while leader_id == 0 {
        for index in 0..3 {
            cluster.check(index)?;
        }
        if started.elapsed() > START_DEADLINE {
            return Err(CliError::runtime(format!(
                "no leader after {} s; see the logs in {}",
                START_DEADLINE.as_secs(),
                cluster.dir.display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        leader_id = leader(&channels, cluster).await;
    }
    writeln!(
        out,
        "cluster up in {} ms, endpoints {}; n{leader_id} leads",
        started.elapsed().as_millis(),
        cluster.endpoints()
    )?;
    // The schedule for the whole run and a bit more, from one member.
    let turn_ns = args.slot_ms * args.slots_per_turn * 1_000_000;
    let wanted = (args.duration * 1_000_000_000 / turn_ns + 8).min(1_000) as u32;
    let schedule = AdminClient::new(channels[0].clone())
        .schedule(ScheduleRequest { turns: wanted })
        .await
        .map_err(|e| CliError::runtime(format!("Schedule: {}", e.message())))?
        .into_inner();
    let scheduled: BTreeMap<u64, u64> =
        schedule.upcoming.iter().map(|t| (t.first_slot, t.member_id)).collect();
    writeln!(out)?;
    writeln!(
        out,
        "leader schedule ({} algorithm, epoch {}): the next turns",
        schedule.algorithm, schedule.epoch
    )?;
    for (index, turn) in schedule.upcoming.iter().take(SCHEDULE_PREVIEW).enumerate() {
        writeln!(
            out,
            "  {:>12}  slots {}–{}  {} ({})",
            match index {
                0 => "now".to_owned(),
                _ => format!(
                    "in {} ms",
                    schedule.next_turn_in_ms + (index as u64 - 1) * turn_ns / 1_000_000
                ),
            },
            turn.first_slot,
            turn.last_slot,
            turn.name,
            turn.client
        )?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "{:>4} {:>7} {:>9} {:>7} {:>10} {:>7} {:>8} {:>6}  note",
        "turn", "at s", "scheduled", "leader", "handoff ms", "writes", "p99 ms", "errors"
    )?;
    out.flush()?;

    let addresses: Vec<_> = cluster.members.iter().map(|m| m.client).collect();
    let load_start_unix = unix_ns();
    let load_start = Instant::now();
    let load = Load::start(&addresses, args.writers as usize, args.readers as usize);
    // Every write the cluster acknowledged, to read back at the end.
    let mut acknowledged = Vec::new();
    let duration = Duration::from_secs(args.duration);
    let fault_at = (!args.no_faults).then(|| duration / 2);
    let restart_after = (duration / 4).clamp(Duration::from_millis(1_500), Duration::from_secs(4));
    let mut victim: Option<(usize, Duration)> = None;
    let mut restarted = false;
    let mut faults = Vec::new();

    let mut book = TurnBook { scheduled, ..TurnBook::default() };
    let mut totals = Totals::new(load_start_unix);
    let slot_ns = args.slot_ms * 1_000_000;
    let turn_of =
        |at_unix_ns: u64| (at_unix_ns / slot_ns) / args.slots_per_turn * args.slots_per_turn;
    let first_turn = turn_of(load_start_unix);
    let mut next_row = first_turn;
    let progress = std::io::stderr().is_terminal();
    let mut interval = tokio::time::interval(MONITOR_INTERVAL);
    let mut ticks = 0u32;
    loop {
        interval.tick().await;
        ticks += 1;
        let elapsed = load_start.elapsed();
        let finished = elapsed >= duration;
        // Faults: kill the leader halfway, restart it a little later.
        if let (Some(at), None) = (fault_at, victim) {
            if elapsed >= at {
                let leader_id = leader(&channels, cluster).await;
                let index = usize::try_from(leader_id)
                    .ok()
                    .filter(|&i| (1..=3).contains(&i))
                    .map_or(0, |i| i - 1);
                cluster.crash(index);
                let what = format!(
                    "{} killed with SIGKILL{}",
                    cluster.members[index].name,
                    if leader_id != 0 { " (the leader)" } else { "" }
                );
                event_line(
                    out,
                    progress,
                    elapsed,
                    &format!(
                        "{what}: the others elect a leader; its turns are skipped while it is down"
                    ),
                )?;
                faults.push(Fault { at_s: elapsed.as_secs_f64(), what });
                victim = Some((index, elapsed));
            }
        }
        if let (Some((index, killed)), false) = (victim, restarted) {
            if elapsed >= killed + restart_after && !finished {
                cluster.spawn(index)?;
                restarted = true;
                let what = format!("{} restarted", cluster.members[index].name);
                event_line(
                    out,
                    progress,
                    elapsed,
                    &format!("{what}: it catches up and leads its turns again"),
                )?;
                faults.push(Fault { at_s: elapsed.as_secs_f64(), what });
            }
        }
        // Members that exit on their own are an error worth stopping for.
        for index in 0..3 {
            if victim.is_some_and(|(v, _)| v == index) && !restarted {
                continue;
            }
            cluster.check(index)?;
        }
        for completion in load.take() {
            totals.add(&completion);
            add_to_turn(&mut book.stats, turn_of(completion.at_unix_ns), &completion);
            if completion.write && completion.ok {
                acknowledged.push(completion);
            }
        }
        if ticks.is_multiple_of(TURNS_POLL_EVERY) || finished {
            collect_turns(&channels, cluster, &mut book.records).await;
        }
        let now_unix = unix_ns();
        let horizon = if finished {
            load_start_unix + duration.as_nanos() as u64
        } else {
            now_unix.saturating_sub(ROW_DELAY_NS)
        };
        while (next_row + args.slots_per_turn) * slot_ns <= horizon {
            book.emit(next_row, args, load_start_unix, out, progress)?;
            next_row += args.slots_per_turn;
        }
        if progress {
            let done = (elapsed.as_secs_f64() / duration.as_secs_f64()).min(1.0);
            let filled = (done * 30.0) as usize;
            eprint!(
                "\r\x1b[K[{}{}] {:>5.1}/{} s  {} writes  {} errors",
                "#".repeat(filled),
                ".".repeat(30 - filled),
                elapsed.as_secs_f64().min(duration.as_secs_f64()),
                args.duration,
                totals.writes_ok,
                totals.errors
            );
        }
        if finished {
            break;
        }
    }
    for completion in load.stop().await {
        totals.add(&completion);
        add_to_turn(&mut book.stats, turn_of(completion.at_unix_ns), &completion);
        if completion.write && completion.ok {
            acknowledged.push(completion);
        }
    }
    // The last turn that overlapped the load.
    let load_end = load_start_unix + duration.as_nanos() as u64;
    if next_row * slot_ns < load_end {
        collect_turns(&channels, cluster, &mut book.records).await;
        book.emit(next_row, args, load_start_unix, out, progress)?;
    }
    let rows = book.rows;
    // Everyone up again?
    let mut up = 0;
    for (index, channel) in channels.iter().enumerate() {
        if cluster.check(index).unwrap_or(false)
            && MaintenanceClient::new(channel.clone()).status(StatusRequest {}).await.is_ok()
        {
            up += 1;
        }
    }
    let summary = Summary::new(&rows, &totals, up, duration);
    summary.print(out)?;
    // Every write the cluster acknowledged, read back: the proof that nothing acknowledged
    // was lost (through the kill too) or applied twice.
    let checked = read_back(&addresses, &acknowledged).await;
    let lost = match &checked {
        Ok(found) if found.wrong_total == 0 => {
            writeln!(
                out,
                "  {:<14} {} acknowledged writes read back with their values; none lost",
                "verified", found.checked
            )?;
            None
        }
        Ok(found) => {
            let text = format!(
                "{} of {} acknowledged writes missing or wrong (e.g. {})",
                found.wrong_total,
                found.checked,
                found.wrong.join(", ")
            );
            writeln!(out, "  {:<14} {text}", "verified")?;
            Some(text)
        }
        Err(error) => Some(format!("acknowledged writes could not be read back: {error}")),
    };
    if let Some(path) = &args.svg {
        let names: Vec<String> = cluster.members.iter().map(|m| m.name.clone()).collect();
        let svg = plot::timeline(
            &rows,
            &totals.latency_points(),
            &faults,
            &names,
            duration.as_secs_f64(),
        );
        std::fs::write(path, svg)
            .map_err(|e| CliError::output(format!("{}: {e}", path.display())))?;
        writeln!(out, "timeline written to {}", path.display())?;
    }
    out.flush()?;
    match lost {
        None => Ok(()),
        Some(text) => Err(CliError::runtime(text)),
    }
}

fn event_line(
    out: &mut impl Write,
    progress: bool,
    at: Duration,
    text: &str,
) -> Result<(), CliError> {
    if progress {
        eprint!("\r\x1b[K");
    }
    writeln!(out, "  >> +{:.1} s  {text}", at.as_secs_f64())?;
    out.flush()?;
    Ok(())
}

fn add_to_turn(stats: &mut BTreeMap<u64, TurnStats>, turn: u64, completion: &Completion) {
    let entry = stats.entry(turn).or_default();
    entry.errors += u64::from(completion.retried) + u64::from(!completion.ok);
    if !completion.ok {
        return;
    }
    if completion.write {
        entry.writes += 1;
        let histogram = entry.write_latency.get_or_insert_with(histogram);
        let _ = histogram.record((completion.latency.as_micros() as u64).max(1));
    } else {
        entry.reads += 1;
    }
}

/// Merges every running member's turn log (the member that decided a turn records it).
async fn collect_turns(
    channels: &[Channel],
    cluster: &mut LocalCluster,
    records: &mut BTreeMap<u64, TurnRecord>,
) {
    for (index, channel) in channels.iter().enumerate() {
        if !cluster.check(index).unwrap_or(false) {
            continue;
        }
        let Ok(reply) = AdminClient::new(channel.clone()).turns(TurnsRequest { limit: 64 }).await
        else {
            continue;
        };
        for turn in reply.into_inner().turns {
            let settled = turn.leader_after != 0;
            match records.get(&turn.first_slot) {
                Some(known) if known.leader_after != 0 && !settled => {}
                _ => {
                    records.insert(turn.first_slot, turn);
                }
            }
        }
    }
}

/// The run's turns: the schedule, the members' turn records, what clients saw per turn,
/// and the rows printed so far.
#[derive(Default)]
struct TurnBook {
    scheduled: BTreeMap<u64, u64>,
    records: BTreeMap<u64, TurnRecord>,
    stats: BTreeMap<u64, TurnStats>,
    rows: Vec<TurnRow>,
}

impl TurnBook {
    /// Prints and keeps the row of the turn that starts at `first_slot`.
    fn emit(
        &mut self,
        first_slot: u64,
        args: &DemoArgs,
        load_start_unix: u64,
        out: &mut impl Write,
        progress: bool,
    ) -> Result<(), CliError> {
        let slot_ns = args.slot_ms * 1_000_000;
        let seconds = |slot: u64| (slot * slot_ns) as f64 / 1e9 - load_start_unix as f64 / 1e9;
        let record = self.records.get(&first_slot);
        let stat = self.stats.remove(&first_slot).unwrap_or_default();
        let row = TurnRow {
            number: self.rows.len() + 1,
            first_slot,
            start_s: seconds(first_slot).max(0.0),
            end_s: seconds(first_slot + args.slots_per_turn),
            scheduled: record
                .map(|r| r.scheduled)
                .or_else(|| self.scheduled.get(&first_slot).copied())
                .unwrap_or(0),
            actual: record.map(|r| r.leader_after).filter(|&l| l != 0),
            handoff_ms: record.map(|r| r.handoff_ms).filter(|&ms| ms > 0.0),
            skipped: record
                .map(|r| r.skipped.clone())
                .unwrap_or_else(|| "no decision recorded: leadership changed by election".into()),
            writes: stat.writes,
            errors: stat.errors,
            p99_ms: stat.write_latency.as_ref().map(|h| percentile_ms(h, 0.99)),
        };
        print_row(out, progress, &row)?;
        self.rows.push(row);
        Ok(())
    }
}

fn print_row(out: &mut impl Write, progress: bool, row: &TurnRow) -> Result<(), CliError> {
    if progress {
        eprint!("\r\x1b[K");
    }
    let member = |id: u64| if id == 0 { "?".to_owned() } else { format!("n{id}") };
    writeln!(
        out,
        "{:>4} {:>7.1} {:>9} {:>7} {:>10} {:>7} {:>8} {:>6}  {}",
        row.number,
        row.start_s,
        member(row.scheduled),
        row.actual.map_or("?".to_owned(), member),
        row.handoff_ms.map_or("-".to_owned(), |ms| format!("{ms:.1}")),
        row.writes,
        row.p99_ms.map_or("-".to_owned(), |ms| format!("{ms:.1}")),
        row.errors,
        if row.actual.is_some_and(|a| a != row.scheduled) && row.skipped.is_empty() {
            "off schedule"
        } else {
            &row.skipped
        }
    )?;
    out.flush()?;
    Ok(())
}

/// Everything clients saw over the run.
struct Totals {
    start_unix_ns: u64,
    writes_ok: u64,
    writes_failed: u64,
    reads_ok: u64,
    reads_failed: u64,
    /// Failed attempts retried on another member, plus failed operations.
    errors: u64,
    retried: u64,
    writes: Histogram<u64>,
    reads: Histogram<u64>,
    last_write_ok_ns: Option<u64>,
    longest_stall: (Duration, f64),
    /// Write latencies per 250 ms slice since the start.
    slices: BTreeMap<u64, Histogram<u64>>,
}

const SLICE_NS: u64 = 250_000_000;

impl Totals {
    fn new(start_unix_ns: u64) -> Self {
        Self {
            start_unix_ns,
            writes_ok: 0,
            writes_failed: 0,
            reads_ok: 0,
            reads_failed: 0,
            errors: 0,
            retried: 0,
            writes: histogram(),
            reads: histogram(),
            last_write_ok_ns: None,
            longest_stall: (Duration::ZERO, 0.0),
            slices: BTreeMap::new(),
        }
    }

    fn add(&mut self, completion: &Completion) {
        self.retried += u64::from(completion.retried);
        self.errors += u64::from(completion.retried) + u64::from(!completion.ok);
        let micros = (completion.latency.as_micros() as u64).max(1);
        match (completion.write, completion.ok) {
            (true, true) => {
                self.writes_ok += 1;
                let _ = self.writes.record(micros);
                let at = completion.at_unix_ns;
                if let Some(last) = self.last_write_ok_ns {
                    let gap = Duration::from_nanos(at.saturating_sub(last));
                    if gap > self.longest_stall.0 {
                        self.longest_stall =
                            (gap, last.saturating_sub(self.start_unix_ns) as f64 / 1e9);
                    }
                }
                self.last_write_ok_ns = Some(self.last_write_ok_ns.map_or(at, |last| last.max(at)));
                let slice = at.saturating_sub(self.start_unix_ns) / SLICE_NS;
                let _ = self.slices.entry(slice).or_insert_with(histogram).record(micros);
            }
            (true, false) => self.writes_failed += 1,
            (false, true) => {
                self.reads_ok += 1;
                let _ = self.reads.record(micros);
            }
            (false, false) => self.reads_failed += 1,
        }
    }

    fn latency_points(&self) -> Vec<LatencyPoint> {
        self.slices
            .iter()
            .map(|(slice, h)| LatencyPoint {
                at_s: (*slice as f64 + 0.5) * SLICE_NS as f64 / 1e9,
                p50_ms: percentile_ms(h, 0.5),
                p99_ms: percentile_ms(h, 0.99),
            })
            .collect()
    }
}

/// The closing report.
struct Summary {
    up: usize,
    turns: usize,
    on_schedule: usize,
    handoffs: Vec<f64>,
    skipped: BTreeMap<String, usize>,
    lines: Vec<(String, String)>,
}

impl Summary {
    fn new(rows: &[TurnRow], totals: &Totals, up: usize, duration: Duration) -> Self {
        let decided: Vec<&TurnRow> = rows.iter().filter(|r| r.actual.is_some()).collect();
        let on_schedule = decided.iter().filter(|r| r.actual == Some(r.scheduled)).count();
        let mut handoffs: Vec<f64> = rows.iter().filter_map(|r| r.handoff_ms).collect();
        handoffs.sort_by(f64::total_cmp);
        let mut skipped = BTreeMap::new();
        for row in rows.iter().filter(|r| !r.skipped.is_empty()) {
            *skipped.entry(row.skipped.clone()).or_insert(0) += 1;
        }
        let seconds = duration.as_secs_f64();
        let lines = vec![
            (
                "writes".to_owned(),
                format!(
                    "{} ok, {} failed, {} attempts retried on another member; p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms",
                    totals.writes_ok,
                    totals.writes_failed,
                    totals.retried,
                    percentile_ms(&totals.writes, 0.5),
                    percentile_ms(&totals.writes, 0.99),
                    totals.writes.max() as f64 / 1e3
                ),
            ),
            (
                "reads".to_owned(),
                format!(
                    "{} ok, {} failed (linearizable); p50 {:.2} ms, p99 {:.2} ms",
                    totals.reads_ok,
                    totals.reads_failed,
                    percentile_ms(&totals.reads, 0.5),
                    percentile_ms(&totals.reads, 0.99)
                ),
            ),
            (
                "throughput".to_owned(),
                format!(
                    "{:.0} writes/s, {:.0} reads/s",
                    totals.writes_ok as f64 / seconds,
                    totals.reads_ok as f64 / seconds
                ),
            ),
            (
                "longest stall".to_owned(),
                format!(
                    "{:.1} ms without a completed write (from +{:.1} s)",
                    totals.longest_stall.0.as_secs_f64() * 1e3,
                    totals.longest_stall.1
                ),
            ),
        ];
        Self { up, turns: decided.len(), on_schedule, handoffs, skipped, lines }
    }

    fn print(&self, out: &mut impl Write) -> Result<(), CliError> {
        let quantile = |q: f64| {
            self.handoffs
                .get(((self.handoffs.len() as f64 * q).ceil() as usize).saturating_sub(1))
                .copied()
                .unwrap_or(0.0)
        };
        writeln!(out)?;
        writeln!(out, "summary")?;
        writeln!(out, "  {:<14} {} of 3", "members up", self.up)?;
        writeln!(
            out,
            "  {:<14} {} decided, {} led by the scheduled member ({:.1}%); {} handoffs, p50 {:.1} ms, p99 {:.1} ms",
            "turns",
            self.turns,
            self.on_schedule,
            self.on_schedule as f64 * 100.0 / self.turns.max(1) as f64,
            self.handoffs.len(),
            quantile(0.5),
            quantile(0.99)
        )?;
        for (reason, count) in &self.skipped {
            writeln!(out, "  {:<14} {count} × {reason}", "skipped")?;
        }
        for (label, text) in &self.lines {
            writeln!(out, "  {label:<14} {text}")?;
        }
        Ok(())
    }
}
