//! Jitter probes: proof that a worknode's core is quiet.
//!
//! Two probes, each on a worknode thread per CPU (pinned, or deliberately unpinned):
//!
//! * **spin** (gap detection, as hiccups / sysjitter / oslat): a busy loop reading the
//!   monotonic clock. Its smallest loop delta is the floor; every gap above the threshold
//!   (8× the floor by default) is time something else took the CPU, recorded in an HDR
//!   histogram. Suits polling loops.
//! * **timer** (wake-up latency, as cyclictest): sleep to an absolute deadline with
//!   `clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME)` every interval and record how late
//!   the thread woke. Suits blocking loops.
//!
//! Optional load threads spin on the same CPUs to show contention.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::cpuset::CpuSet;
use crate::grant::CoreAuthority;
use crate::host::{CpuTimes, Host};
use crate::pin::{self, PinOptions};
use crate::plan::{CorePlan, CpuAffinity, PlanConfig, PlanError, WorknodeClass, WorknodeSpec};
use crate::sys;

/// Iterations the spin probe runs to find its loop floor before measuring.
const CALIBRATION_LOOPS: u32 = 200_000;
/// Default threshold as a multiple of the loop floor.
const THRESHOLD_FLOOR_MULTIPLE: u64 = 8;
/// Largest latency the histograms hold (longer values are clamped and counted as max).
const LATENCY_NS_MAX: u64 = 60_000_000_000;
/// Points per series kept for plotting.
const CURVE_POINTS_MAX: usize = 400;

/// Which probe to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Probe {
    /// Busy-loop gap detection.
    Spin,
    /// Absolute-deadline timer wake-up latency.
    Timer,
}

impl std::str::FromStr for Probe {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "spin" => Ok(Probe::Spin),
            "timer" => Ok(Probe::Timer),
            other => Err(format!("unknown probe {other:?}: expected spin or timer")),
        }
    }
}

/// Whether probe threads are pinned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// One probe thread pinned to each CPU.
    Pinned,
    /// The same number of probe threads, left to the scheduler.
    Unpinned,
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Pinned => "pinned",
            Mode::Unpinned => "unpinned",
        })
    }
}

/// What to measure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JitterConfig {
    /// The probe.
    pub probe: Probe,
    /// CPUs to probe, one thread each.
    pub cpus: CpuSet,
    /// How long each probe runs.
    pub duration: Duration,
    /// Spin probe: gaps above this count as interruptions (default 8× the loop floor).
    pub threshold_ns: Option<u64>,
    /// Timer probe: wake-up interval.
    pub interval_us: u64,
    /// Run probe threads SCHED_FIFO at this priority.
    pub fifo_priority: Option<u8>,
    /// mlockall before measuring.
    pub mlock: bool,
    /// Background spinning threads per probed CPU.
    pub load_threads: u32,
}

/// Why a jitter run could not start.
#[derive(Debug, thiserror::Error)]
pub enum JitterError {
    /// No CPUs given.
    #[error("no CPUs to probe")]
    NoCpus,
    /// The probe CPUs do not form a valid plan (offline, outside the cpuset, siblings).
    #[error("{0}")]
    Plan(#[from] PlanError),
    /// The plan refused a probe its CPU.
    #[error("{0}")]
    Grant(#[from] crate::grant::GrantError),
    /// A probe thread could not be set up.
    #[error("{0}")]
    Pin(#[from] pin::PinError),
    /// Interval of zero.
    #[error("the timer interval must be at least 1 µs")]
    ZeroInterval,
}

/// Results for one probe thread.
#[derive(Clone, Debug, Serialize)]
pub struct CpuJitter {
    /// The CPU probed (in unpinned mode, the CPU this thread stands in for).
    pub cpu: u32,
    /// Pinned or unpinned.
    pub mode: Mode,
    /// Loop iterations (spin) or wake-ups (timer).
    pub samples: u64,
    /// Spin: smallest loop delta.
    pub loop_floor_ns: Option<u64>,
    /// Spin: gaps above this were counted.
    pub threshold_ns: Option<u64>,
    /// Spin: gaps above the threshold.
    pub interruptions: u64,
    /// Spin: interruptions per second of probing.
    pub interruptions_per_s: f64,
    /// Spin: share of the probe's time lost to interruptions, in percent.
    pub cpu_lost_pct: f64,
    /// Smallest recorded value (timer: wake-up latency; spin: gap).
    pub min_ns: u64,
    /// Mean recorded value.
    pub avg_ns: f64,
    /// Percentiles of the recorded values.
    pub p50_ns: u64,
    /// 99th percentile.
    pub p99_ns: u64,
    /// 99.9th percentile.
    pub p999_ns: u64,
    /// 99.99th percentile.
    pub p9999_ns: u64,
    /// Largest recorded value.
    pub max_ns: u64,
    /// (value in ns, fraction of recorded values above it), for plotting.
    pub tail: Vec<(u64, f64)>,
    /// Set-up warnings (best effort pinning).
    pub warnings: Vec<String>,
}

/// A whole run: host facts recorded with every result.
#[derive(Clone, Debug, Serialize)]
pub struct JitterRun {
    /// The probe.
    pub probe: Probe,
    /// Kernel release.
    pub kernel: Option<String>,
    /// Whether the host is virtualized.
    pub virtualized: Option<bool>,
    /// Share of CPU time stolen by the hypervisor on the probed CPUs during the run (%).
    pub steal_pct: Option<f64>,
    /// Seconds each probe ran.
    pub duration_s: f64,
    /// Background threads per CPU.
    pub load_threads: u32,
    /// SCHED_FIFO priority, if any.
    pub fifo_priority: Option<u8>,
    /// Bare `clock_gettime` loop floor on this machine (the spin probe's reference).
    pub bare_clock_floor_ns: u64,
    /// Whether `/dev/cpu_dma_latency` was held at 0 during the run (as cyclictest does),
    /// keeping CPUs out of deep idle states.
    pub dma_latency_held: bool,
    /// One entry per probe thread.
    pub results: Vec<CpuJitter>,
}

/// The smallest delta of a loop that does nothing but read the clock: the floor any
/// gap detector is measured against.
pub fn bare_clock_floor_ns() -> u64 {
    let mut last = sys::monotonic_ns();
    let mut floor = u64::MAX;
    for _ in 0..CALIBRATION_LOOPS {
        let now = sys::monotonic_ns();
        floor = floor.min(now - last);
        last = now;
    }
    floor.max(1)
}

fn histogram() -> Histogram<u64> {
    // Three significant digits from 1 ns to a minute: a few hundred KiB at most.
    Histogram::new_with_bounds(1, LATENCY_NS_MAX, 3)
        .unwrap_or_else(|_| unreachable!("valid bounds"))
}

/// What a probe thread measured, before summarising.
struct Measurement {
    histogram: Histogram<u64>,
    samples: u64,
    loop_floor_ns: Option<u64>,
    threshold_ns: Option<u64>,
    lost_ns: u64,
    elapsed_ns: u64,
}

fn spin(duration: Duration, threshold_ns: Option<u64>) -> Measurement {
    let mut histogram = histogram();
    let mut last = sys::monotonic_ns();
    let mut floor = u64::MAX;
    for _ in 0..CALIBRATION_LOOPS {
        let now = sys::monotonic_ns();
        floor = floor.min(now - last);
        last = now;
    }
    let floor = floor.max(1);
    let threshold = threshold_ns.unwrap_or(floor * THRESHOLD_FLOOR_MULTIPLE);
    let start = sys::monotonic_ns();
    let end = start + duration.as_nanos() as u64;
    let mut last = start;
    let (mut samples, mut lost) = (0u64, 0u64);
    loop {
        let now = sys::monotonic_ns();
        let delta = now - last;
        last = now;
        samples += 1;
        if delta > threshold {
            histogram.saturating_record(delta.min(LATENCY_NS_MAX));
            lost += delta;
        }
        if now >= end {
            break;
        }
    }
    Measurement {
        histogram,
        samples,
        loop_floor_ns: Some(floor),
        threshold_ns: Some(threshold),
        lost_ns: lost,
        elapsed_ns: last - start,
    }
}

fn timer(duration: Duration, interval_ns: u64) -> Measurement {
    // The thread's own timers fire on time: no slack for batching (cyclictest does the
    // same). Failure only means the default slack stays.
    let _ = sys::set_timer_slack_ns(1);
    let mut histogram = histogram();
    let start = sys::monotonic_ns();
    let end = start + duration.as_nanos() as u64;
    let mut next = start + interval_ns;
    let mut samples = 0u64;
    while next <= end {
        // A failing clock_nanosleep would fail on every call; record nothing further.
        if sys::sleep_until_ns(next).is_err() {
            break;
        }
        let now = sys::monotonic_ns();
        histogram.saturating_record((now - next).clamp(1, LATENCY_NS_MAX));
        samples += 1;
        next += interval_ns;
        // An overrun skips the missed periods instead of firing them back to back.
        if now >= next {
            next = now + interval_ns;
        }
    }
    Measurement {
        histogram,
        samples,
        loop_floor_ns: None,
        threshold_ns: None,
        lost_ns: 0,
        elapsed_ns: sys::monotonic_ns() - start,
    }
}

fn summarise(
    cpu: u32,
    mode: Mode,
    probe: Probe,
    m: Measurement,
    warnings: Vec<String>,
) -> CpuJitter {
    let h = &m.histogram;
    let recorded = h.len();
    let quantile = |q: f64| if recorded == 0 { 0 } else { h.value_at_quantile(q) };
    let elapsed_s = m.elapsed_ns as f64 / 1e9;
    let tail = tail_curve(h);
    CpuJitter {
        cpu,
        mode,
        samples: m.samples,
        loop_floor_ns: m.loop_floor_ns,
        threshold_ns: m.threshold_ns,
        interruptions: if probe == Probe::Spin { recorded } else { 0 },
        interruptions_per_s: if probe == Probe::Spin && elapsed_s > 0.0 {
            recorded as f64 / elapsed_s
        } else {
            0.0
        },
        cpu_lost_pct: if m.elapsed_ns > 0 {
            m.lost_ns as f64 * 100.0 / m.elapsed_ns as f64
        } else {
            0.0
        },
        min_ns: if recorded == 0 { 0 } else { h.min() },
        avg_ns: if recorded == 0 { 0.0 } else { h.mean() },
        p50_ns: quantile(0.5),
        p99_ns: quantile(0.99),
        p999_ns: quantile(0.999),
        p9999_ns: quantile(0.9999),
        max_ns: if recorded == 0 { 0 } else { h.max() },
        tail,
        warnings,
    }
}

/// (value, fraction of values above it) at logarithmically spaced values.
fn tail_curve(h: &Histogram<u64>) -> Vec<(u64, f64)> {
    let total = h.len();
    if total == 0 {
        return Vec::new();
    }
    let mut points = Vec::new();
    let mut above = total;
    for bucket in h.iter_log(h.min().max(1), 1.1) {
        above = above.saturating_sub(bucket.count_since_last_iteration());
        points.push((bucket.value_iterated_to(), above as f64 / total as f64));
    }
    let stride = points.len().div_ceil(CURVE_POINTS_MAX).max(1);
    points.into_iter().step_by(stride).collect()
}

/// Per-CPU counters of the live host, for steal during the run.
fn cpu_times() -> Vec<CpuTimes> {
    std::fs::read_to_string("/proc/stat")
        .map(|text| CpuTimes::parse_proc_stat(&text))
        .unwrap_or_default()
}

/// Runs the probe on every CPU of `config` at once, pinned or not.
pub fn run(host: &Host, config: &JitterConfig, mode: Mode) -> Result<JitterRun, JitterError> {
    if config.cpus.is_empty() {
        return Err(JitterError::NoCpus);
    }
    if config.probe == Probe::Timer && config.interval_us == 0 {
        return Err(JitterError::ZeroInterval);
    }
    let isolated = host.isolated();
    // A plan for the probes: one worknode per CPU, critical on isolated CPUs.
    let specs: Vec<WorknodeSpec> = config
        .cpus
        .iter()
        .map(|cpu| WorknodeSpec {
            cpu_affinity: CpuAffinity::Cpus([cpu].into_iter().collect()),
            ..WorknodeSpec::new(
                format!("jitter-{cpu}"),
                if isolated.contains(cpu) {
                    WorknodeClass::Critical
                } else {
                    WorknodeClass::Normal
                },
            )
        })
        .collect();
    let plan = CorePlan::build(
        host,
        &PlanConfig {
            best_effort: true,
            housekeeping: Some(CpuSet::new()),
            worknodes: specs.clone(),
        },
    )?;
    let authority = CoreAuthority::new(plan);
    let options =
        PinOptions { fifo_priority: config.fifo_priority, mlock: config.mlock, best_effort: false };

    // Like cyclictest: hold the PM QoS CPU latency at 0 µs while measuring, so idle
    // states deeper than polling do not add their exit latency. Released on drop.
    let dma_latency = hold_zero_dma_latency();
    let stop_load = Arc::new(AtomicBool::new(false));
    let load = start_load(config, mode, &stop_load);
    let before = cpu_times();
    let mut probes = Vec::new();
    for spec in &specs {
        let grant = match mode {
            Mode::Pinned => Some(authority.grant(&spec.name)?),
            Mode::Unpinned => None,
        };
        let probe = config.probe;
        let duration = config.duration;
        let threshold = config.threshold_ns;
        let interval_ns = config.interval_us * 1_000;
        let worknode = pin::spawn_worknode(spec, grant, &options, move || match probe {
            Probe::Spin => spin(duration, threshold),
            Probe::Timer => timer(duration, interval_ns),
        });
        match worknode {
            Ok(worknode) => probes.push(worknode),
            Err(error) => {
                stop_load.store(true, Ordering::Relaxed);
                return Err(error.into());
            }
        }
    }
    let mut results = Vec::new();
    for (worknode, cpu) in probes.into_iter().zip(config.cpus.iter()) {
        let warnings = worknode.report().warnings.clone();
        let measurement = worknode.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        results.push(summarise(cpu, mode, config.probe, measurement, warnings));
    }
    let after = cpu_times();
    stop_load.store(true, Ordering::Relaxed);
    for handle in load {
        let _ = handle.join();
    }
    Ok(JitterRun {
        probe: config.probe,
        kernel: host.kernel_release.clone(),
        virtualized: host.hypervisor,
        steal_pct: steal_pct(&before, &after, &config.cpus),
        duration_s: config.duration.as_secs_f64(),
        load_threads: config.load_threads,
        fifo_priority: config.fifo_priority,
        bare_clock_floor_ns: bare_clock_floor_ns(),
        dma_latency_held: dma_latency.is_some(),
        results,
    })
}

/// Writes 0 to `/dev/cpu_dma_latency`; the request lasts while the file stays open.
fn hold_zero_dma_latency() -> Option<std::fs::File> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new().write(true).open("/dev/cpu_dma_latency").ok()?;
    file.write_all(&0i32.to_ne_bytes()).ok()?;
    Some(file)
}

/// Background spinners: `load_threads` per probed CPU, pinned to it in pinned mode.
fn start_load(
    config: &JitterConfig,
    mode: Mode,
    stop: &Arc<AtomicBool>,
) -> Vec<thread::JoinHandle<()>> {
    let mut handles = Vec::new();
    for cpu in config.cpus.iter() {
        for index in 0..config.load_threads {
            let stop = Arc::clone(stop);
            let builder = thread::Builder::new().name(format!("load-{cpu}-{index}"));
            let spawned = builder.spawn(move || {
                if mode == Mode::Pinned {
                    // Load is deliberate interference: it pins without a grant, which only
                    // this crate can do.
                    let _ = pin::set_current_affinity(&[cpu].into_iter().collect());
                }
                let mut spins = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    spins = std::hint::black_box(spins.wrapping_add(1));
                }
            });
            if let Ok(handle) = spawned {
                handles.push(handle);
            }
        }
    }
    handles
}

fn steal_pct(before: &[CpuTimes], after: &[CpuTimes], cpus: &CpuSet) -> Option<f64> {
    let pick = |times: &[CpuTimes]| {
        times
            .iter()
            .filter(|t| cpus.contains(t.cpu))
            .fold((0u64, 0u64), |(steal, total), t| (steal + t.steal, total + t.total()))
    };
    let ((steal0, total0), (steal1, total1)) = (pick(before), pick(after));
    let total = total1.checked_sub(total0)?;
    (total > 0).then(|| steal1.saturating_sub(steal0) as f64 * 100.0 / total as f64)
}
