//! Per-core and per-worknode telemetry: who uses which core, sampled at a fixed interval
//! into bounded rings, with alerts when a critical worknode's core is busy with work that
//! is not the worknode's or when the worknode keeps being preempted.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::cpuset::CpuSet;
use crate::host::CpuTimes;
use crate::plan::WorknodeClass;
use crate::sys;

/// Samples kept per series (one hour at one per second).
pub const SAMPLES_MAX: usize = 3_600;
/// Alerts kept.
pub const ALERTS_MAX: usize = 256;

/// A ring that keeps the newest `capacity` items and counts what it dropped.
#[derive(Clone, Debug)]
pub struct Ring<T> {
    items: VecDeque<T>,
    capacity: usize,
    dropped: u64,
}

impl<T> Ring<T> {
    /// An empty ring holding at most `capacity` items.
    pub fn new(capacity: usize) -> Self {
        assert!(capacity > 0);
        Self { items: VecDeque::with_capacity(capacity), capacity, dropped: 0 }
    }

    /// Appends, dropping the oldest item at the limit.
    pub fn push(&mut self, item: T) {
        if self.items.len() == self.capacity {
            self.items.pop_front();
            self.dropped += 1;
        }
        self.items.push_back(item);
        assert!(self.items.len() <= self.capacity);
    }

    /// The newest item.
    pub fn last(&self) -> Option<&T> {
        self.items.back()
    }

    /// The two newest items, oldest first.
    pub fn last_two(&self) -> Option<(&T, &T)> {
        let len = self.items.len();
        (len >= 2).then(|| (&self.items[len - 2], &self.items[len - 1]))
    }

    /// Items oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.items.iter()
    }

    /// Items held.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Items dropped at the limit so far.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

/// One reading of one thread.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ThreadSample {
    /// CPU the thread last ran on.
    pub cpu: Option<u32>,
    /// User + system time, in clock ticks.
    pub cpu_ticks: u64,
    /// Voluntary context switches (it blocked).
    pub voluntary: u64,
    /// Involuntary context switches (it was preempted).
    pub involuntary: u64,
}

impl ThreadSample {
    /// Parses `/proc/PID/task/TID/stat` and `…/status`.
    pub fn parse(stat: &str, status: &str) -> Option<Self> {
        // The command name may contain spaces and parentheses: fields start after the last ')'.
        let rest = &stat[stat.rfind(')')? + 1..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // After the name: state is field 3 of the man page, so field N is index N − 3.
        let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<u64>().ok());
        let switches = |key: &str| {
            status.lines().find_map(|line| line.strip_prefix(key)?.trim().parse::<u64>().ok())
        };
        Some(Self {
            cpu: field(39).map(|cpu| cpu as u32),
            cpu_ticks: field(14)? + field(15)?,
            voluntary: switches("voluntary_ctxt_switches:").unwrap_or(0),
            involuntary: switches("nonvoluntary_ctxt_switches:").unwrap_or(0),
        })
    }
}

/// A worknode thread being watched.
#[derive(Clone, Debug, Serialize)]
pub struct WatchedThread {
    /// Worknode name.
    pub worknode: String,
    /// Kernel thread id.
    pub tid: u32,
    /// Class (foreign-load alerts apply to critical worknodes).
    pub class: WorknodeClass,
    /// CPUs it is pinned to (empty: unpinned).
    pub cpus: CpuSet,
}

/// Something that needs a look.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum Alert {
    /// A critical worknode's CPU was busy with other work.
    ForeignLoad {
        /// The worknode.
        worknode: String,
        /// The CPU.
        cpu: u32,
        /// Share of the CPU's time in the interval spent on something else.
        ratio: f64,
    },
    /// A critical worknode was preempted more than allowed.
    Preempted {
        /// The worknode.
        worknode: String,
        /// Involuntary switches per second in the interval.
        per_s: f64,
    },
}

impl std::fmt::Display for Alert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Alert::ForeignLoad { worknode, cpu, ratio } => write!(
                f,
                "CPU {cpu} of critical worknode {worknode:?} was {:.1}% busy with other work",
                ratio * 100.0
            ),
            Alert::Preempted { worknode, per_s } => {
                write!(f, "critical worknode {worknode:?} was preempted {per_s:.1} times/s")
            }
        }
    }
}

/// When to raise alerts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AlertThresholds {
    /// Foreign busy share of a critical worknode's CPU above which to alert.
    pub foreign_busy_ratio_max: f64,
    /// Involuntary switches per second of a critical worknode above which to alert.
    pub involuntary_per_s_max: f64,
}

impl Default for AlertThresholds {
    fn default() -> Self {
        Self { foreign_busy_ratio_max: 0.05, involuntary_per_s_max: 1.0 }
    }
}

/// Usage of one CPU over the last interval, in percent of its time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct CoreUsage {
    /// The CPU.
    pub cpu: u32,
    /// User time.
    pub user: f64,
    /// Kernel time.
    pub system: f64,
    /// Hardware interrupts.
    pub irq: f64,
    /// Soft interrupts.
    pub softirq: f64,
    /// Stolen by the hypervisor.
    pub steal: f64,
    /// Idle.
    pub idle: f64,
}

impl CoreUsage {
    /// Busy share (everything but idle), percent.
    pub fn busy(&self) -> f64 {
        self.user + self.system + self.irq + self.softirq + self.steal
    }
}

/// Usage of one worknode thread over the last interval.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ThreadUsage {
    /// Worknode name.
    pub worknode: String,
    /// Kernel thread id.
    pub tid: u32,
    /// CPU it last ran on.
    pub cpu: Option<u32>,
    /// CPU time, percent of one CPU.
    pub cpu_pct: f64,
    /// Voluntary switches per second.
    pub voluntary_per_s: f64,
    /// Involuntary switches per second.
    pub involuntary_per_s: f64,
}

/// Samples of all CPUs and watched threads.
#[derive(Debug)]
pub struct Telemetry {
    proc_root: PathBuf,
    ticks_per_s: f64,
    thresholds: AlertThresholds,
    cores: Ring<(u64, Vec<CpuTimes>)>,
    threads: BTreeMap<u32, (WatchedThread, Ring<(u64, ThreadSample)>)>,
    alerts: Ring<Alert>,
    foreign_busy: BTreeMap<(u32, String), f64>,
}

impl Telemetry {
    /// Reads `/proc` for this process's threads.
    pub fn new(thresholds: AlertThresholds) -> Self {
        Self::with_proc_root("/proc/self", thresholds)
    }

    /// Reads `PROC_ROOT/../stat` and `PROC_ROOT/task/TID/…` (`/proc/PID` for another process).
    pub fn with_proc_root(proc_root: impl Into<PathBuf>, thresholds: AlertThresholds) -> Self {
        Self {
            proc_root: proc_root.into(),
            ticks_per_s: sys::clock_ticks_per_s() as f64,
            thresholds,
            cores: Ring::new(SAMPLES_MAX),
            threads: BTreeMap::new(),
            alerts: Ring::new(ALERTS_MAX),
            foreign_busy: BTreeMap::new(),
        }
    }

    /// Starts watching a worknode thread.
    pub fn watch(&mut self, thread: WatchedThread) {
        self.threads.insert(thread.tid, (thread, Ring::new(SAMPLES_MAX)));
    }

    /// Every thread of the process, named by its `comm` (for watching another process).
    pub fn watch_all_threads(&mut self) {
        let task_dir = self.proc_root.join("task");
        let Ok(entries) = std::fs::read_dir(&task_dir) else {
            return;
        };
        for entry in entries.filter_map(Result::ok) {
            let Some(tid) = entry.file_name().to_str().and_then(|name| name.parse::<u32>().ok())
            else {
                continue;
            };
            if self.threads.contains_key(&tid) {
                continue;
            }
            let name = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
            let cpus = std::fs::read_to_string(entry.path().join("status"))
                .ok()
                .and_then(|status| {
                    status
                        .lines()
                        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                        .map(str::to_owned)
                })
                .and_then(|list| list.trim().parse().ok())
                .unwrap_or_default();
            self.watch(WatchedThread {
                worknode: name.trim().to_owned(),
                tid,
                class: WorknodeClass::Normal,
                cpus,
            });
        }
    }

    /// Takes one sample of every CPU and watched thread, then checks alerts.
    pub fn sample(&mut self, now_ns: u64) {
        let stat = self.proc_root.join("../stat");
        let stat =
            std::fs::read_to_string(&stat).or_else(|_| std::fs::read_to_string("/proc/stat"));
        if let Ok(text) = stat {
            self.cores.push((now_ns, CpuTimes::parse_proc_stat(&text)));
        }
        for (tid, (_, ring)) in self.threads.iter_mut() {
            let dir = self.proc_root.join("task").join(tid.to_string());
            let (Ok(stat), Ok(status)) = (
                std::fs::read_to_string(dir.join("stat")),
                std::fs::read_to_string(dir.join("status")),
            ) else {
                continue; // The thread has exited.
            };
            if let Some(sample) = ThreadSample::parse(&stat, &status) {
                ring.push((now_ns, sample));
            }
        }
        self.check_alerts();
    }

    /// Per-CPU usage over the last interval.
    pub fn core_usage(&self) -> Vec<CoreUsage> {
        let Some(((_, before), (_, after))) = self.cores.last_two() else {
            return Vec::new();
        };
        after
            .iter()
            .filter_map(|now| {
                let then = before.iter().find(|t| t.cpu == now.cpu)?;
                let total = now.total().saturating_sub(then.total()).max(1) as f64;
                let pct = |a: u64, b: u64| a.saturating_sub(b) as f64 * 100.0 / total;
                Some(CoreUsage {
                    cpu: now.cpu,
                    user: pct(now.user, then.user),
                    system: pct(now.system, then.system),
                    irq: pct(now.irq, then.irq),
                    softirq: pct(now.softirq, then.softirq),
                    steal: pct(now.steal, then.steal),
                    idle: pct(now.idle, then.idle),
                })
            })
            .collect()
    }

    /// Per-thread usage over the last interval.
    pub fn thread_usage(&self) -> Vec<ThreadUsage> {
        self.threads
            .values()
            .filter_map(|(watched, ring)| {
                let ((t0, s0), (t1, s1)) = ring.last_two()?;
                let seconds = (t1.saturating_sub(*t0)) as f64 / 1e9;
                if seconds <= 0.0 {
                    return None;
                }
                Some(ThreadUsage {
                    worknode: watched.worknode.clone(),
                    tid: watched.tid,
                    cpu: s1.cpu,
                    cpu_pct: s1.cpu_ticks.saturating_sub(s0.cpu_ticks) as f64
                        / self.ticks_per_s
                        / seconds
                        * 100.0,
                    voluntary_per_s: s1.voluntary.saturating_sub(s0.voluntary) as f64 / seconds,
                    involuntary_per_s: s1.involuntary.saturating_sub(s0.involuntary) as f64
                        / seconds,
                })
            })
            .collect()
    }

    fn check_alerts(&mut self) {
        let usage = self.core_usage();
        let threads = self.thread_usage();
        self.foreign_busy.clear();
        for (watched, _) in self.threads.values() {
            if watched.class != WorknodeClass::Critical || watched.cpus.is_empty() {
                continue;
            }
            let own = threads.iter().find(|t| t.tid == watched.tid);
            for cpu in watched.cpus.iter() {
                let Some(core) = usage.iter().find(|u| u.cpu == cpu) else {
                    continue;
                };
                // The worknode's own time counts against the CPU it ran on.
                let own_pct = own.filter(|t| t.cpu == Some(cpu)).map_or(0.0, |t| t.cpu_pct);
                let ratio = ((core.busy() - own_pct) / 100.0).clamp(0.0, 1.0);
                self.foreign_busy.insert((cpu, watched.worknode.clone()), ratio);
                if ratio > self.thresholds.foreign_busy_ratio_max {
                    self.alerts.push(Alert::ForeignLoad {
                        worknode: watched.worknode.clone(),
                        cpu,
                        ratio,
                    });
                }
            }
            if let Some(own) = own {
                if own.involuntary_per_s > self.thresholds.involuntary_per_s_max {
                    self.alerts.push(Alert::Preempted {
                        worknode: watched.worknode.clone(),
                        per_s: own.involuntary_per_s,
                    });
                }
            }
        }
    }

    /// The threads being watched.
    pub fn watched(&self) -> impl Iterator<Item = &WatchedThread> {
        self.threads.values().map(|(watched, _)| watched)
    }

    /// The time between the last two CPU samples (zero before the second).
    pub fn interval(&self) -> Duration {
        self.cores.last_two().map_or(Duration::ZERO, |((t0, _), (t1, _))| {
            Duration::from_nanos(t1.saturating_sub(*t0))
        })
    }

    /// Alerts raised so far (the newest [`ALERTS_MAX`]).
    pub fn alerts(&self) -> impl Iterator<Item = &Alert> {
        self.alerts.iter()
    }

    /// Foreign busy share per (CPU, critical worknode) over the last interval.
    pub fn foreign_busy(&self) -> &BTreeMap<(u32, String), f64> {
        &self.foreign_busy
    }

    /// Prometheus text exposition of the latest sample.
    pub fn prometheus(&self) -> String {
        let mut text = String::new();
        let _ = writeln!(
            text,
            "# HELP worknode_cpu_seconds_total Seconds each CPU spent in each mode."
        );
        let _ = writeln!(text, "# TYPE worknode_cpu_seconds_total counter");
        if let Some((_, times)) = self.cores.last() {
            for t in times {
                for (mode, ticks) in [
                    ("user", t.user),
                    ("system", t.system),
                    ("irq", t.irq),
                    ("softirq", t.softirq),
                    ("steal", t.steal),
                    ("idle", t.idle),
                ] {
                    let _ = writeln!(
                        text,
                        "worknode_cpu_seconds_total{{cpu=\"{}\",mode=\"{mode}\"}} {}",
                        t.cpu,
                        ticks as f64 / self.ticks_per_s
                    );
                }
            }
        }
        let _ = writeln!(text, "# HELP worknode_worknode_context_switches_total Context switches of each worknode thread.");
        let _ = writeln!(text, "# TYPE worknode_worknode_context_switches_total counter");
        for (watched, ring) in self.threads.values() {
            if let Some((_, sample)) = ring.last() {
                let name = escape_label(&watched.worknode);
                let _ = writeln!(
                    text,
                    "worknode_worknode_context_switches_total{{worknode=\"{name}\",kind=\"voluntary\"}} {}",
                    sample.voluntary
                );
                let _ = writeln!(
                    text,
                    "worknode_worknode_context_switches_total{{worknode=\"{name}\",kind=\"involuntary\"}} {}",
                    sample.involuntary
                );
            }
        }
        let _ = writeln!(text, "# HELP worknode_core_foreign_busy_ratio Share of a critical worknode's CPU spent on other work over the last interval.");
        let _ = writeln!(text, "# TYPE worknode_core_foreign_busy_ratio gauge");
        for ((cpu, worknode), ratio) in &self.foreign_busy {
            let _ = writeln!(
                text,
                "worknode_core_foreign_busy_ratio{{cpu=\"{cpu}\",worknode=\"{}\"}} {ratio}",
                escape_label(worknode)
            );
        }
        text
    }
}

fn escape_label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// A thread that samples a shared [`Telemetry`] at a fixed interval until dropped.
#[derive(Debug)]
pub struct Sampler {
    stop: Arc<AtomicBool>,
    handle: Option<thread::JoinHandle<()>>,
}

impl Sampler {
    /// Starts sampling every `interval`, pinned to `housekeeping` when given.
    pub fn start(
        telemetry: Arc<Mutex<Telemetry>>,
        interval: Duration,
        housekeeping: Option<CpuSet>,
    ) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let handle = thread::Builder::new().name("telemetry".into()).spawn(move || {
            if let Some(cpus) = housekeeping.filter(|cpus| !cpus.is_empty()) {
                // Housekeeping CPUs are nobody's reserved cores: no grant is needed.
                let _ = crate::pin::set_current_affinity(&cpus);
            }
            let start = Instant::now();
            let mut tick = 0u32;
            while !flag.load(Ordering::Relaxed) {
                let now_ns = sys::monotonic_ns();
                telemetry.lock().unwrap_or_else(PoisonError::into_inner).sample(now_ns);
                tick += 1;
                // Fixed rate: sleep to the next multiple of the interval, not for it.
                let next = start + interval * tick;
                let now = Instant::now();
                if next > now {
                    thread::sleep(next - now);
                }
            }
        })?;
        Ok(Self { stop, handle: Some(handle) })
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_keeps_the_newest() {
        let mut ring = Ring::new(3);
        for i in 0..5 {
            ring.push(i);
        }
        assert_eq!(ring.iter().copied().collect::<Vec<_>>(), [2, 3, 4]);
        assert_eq!(ring.dropped(), 2);
        assert_eq!(ring.last_two(), Some((&3, &4)));
    }

    #[test]
    fn thread_stat_with_spaces_in_the_name() {
        let mut stat = String::from("4242 (raft (loop) x) R 1 1 1 0 -1 4194560 10 0 0 0 ");
        // utime, stime = fields 14, 15; then fill to processor, field 39.
        stat.push_str("150 50 0 0 20 0 1 0 100 1000 10 ");
        for _ in 25..39 {
            stat.push_str("0 ");
        }
        stat.push_str("3 0 0 0 0 0");
        let status = "Name:\traft\nvoluntary_ctxt_switches:\t12\nnonvoluntary_ctxt_switches:\t3\n";
        let sample = ThreadSample::parse(&stat, status).unwrap();
        assert_eq!(
            sample,
            ThreadSample { cpu: Some(3), cpu_ticks: 200, voluntary: 12, involuntary: 3 }
        );
    }
}
