//! `worknode cores audit`: what on this host stands between a pinned worknode and a
//! quiet core, each finding with its current value, the recommended one and why.

use std::fmt;

use serde::Serialize;

use crate::cpuset::CpuSet;
use crate::host::Host;
use crate::sysroot::SysRoot;

/// How much a failed check matters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Critical worknodes cannot be quiet while this fails (`--strict` exits 1).
    Critical,
    /// Adds measurable jitter.
    Warning,
    /// Worth knowing.
    Info,
}

/// Outcome of one check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// As recommended.
    Pass,
    /// Not as recommended.
    Fail,
    /// The host does not say (file missing).
    Unknown,
    /// Does not apply here (e.g. no isolated CPUs to protect).
    NotApplicable,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Pass => "pass",
            Status::Fail => "FAIL",
            Status::Unknown => "unknown",
            Status::NotApplicable => "n/a",
        })
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Critical => "critical",
            Severity::Warning => "warning",
            Severity::Info => "info",
        })
    }
}

/// One finding.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AuditItem {
    /// Stable identifier (`isolated_cpus`, `thp`, …).
    pub id: &'static str,
    /// What is checked.
    pub title: &'static str,
    /// How much a failure matters.
    pub severity: Severity,
    /// The outcome.
    pub status: Status,
    /// What the host has now.
    pub current: String,
    /// What worknode recommends.
    pub recommended: String,
    /// Why, in one line.
    pub reason: String,
}

/// All findings for one host.
#[derive(Clone, Debug, Serialize)]
pub struct AuditReport {
    /// Kernel release, if known.
    pub kernel: Option<String>,
    /// Whether the host is a virtual machine, if known.
    pub virtualized: Option<bool>,
    /// Share of CPU time stolen by the hypervisor since boot, if known.
    pub steal_ratio: Option<f64>,
    /// The findings, in a fixed order.
    pub items: Vec<AuditItem>,
    /// Files that existed but did not parse.
    pub notes: Vec<String>,
}

impl AuditReport {
    /// Whether any critical check failed (what `--strict` turns into exit status 1).
    pub fn critical_failures(&self) -> usize {
        self.items
            .iter()
            .filter(|item| item.severity == Severity::Critical && item.status == Status::Fail)
            .count()
    }
}

/// A builder for one item.
fn item(
    id: &'static str,
    title: &'static str,
    severity: Severity,
    status: Status,
    current: impl Into<String>,
    recommended: impl Into<String>,
    reason: impl Into<String>,
) -> AuditItem {
    AuditItem {
        id,
        title,
        severity,
        status,
        current: current.into(),
        recommended: recommended.into(),
        reason: reason.into(),
    }
}

fn list_or(set: &Option<CpuSet>, empty: &str) -> String {
    match set {
        None => "unknown".into(),
        Some(set) if set.is_empty() => empty.into(),
        Some(set) => set.to_string(),
    }
}

/// Runs every check against `host` (read from `sys`).
pub fn audit(sys: &SysRoot, host: &Host) -> AuditReport {
    let isolated = host.isolated();
    let mut items = vec![isolation(host, &isolated)];
    items.push(covers(
        "nohz_full",
        "nohz_full covers the isolated CPUs",
        &host.nohz_full,
        &isolated,
        "without it the scheduler tick interrupts an isolated CPU up to 1000 times a second",
    ));
    items.push(covers(
        "rcu_nocbs",
        "rcu_nocbs covers the isolated CPUs",
        &host.rcu_nocbs,
        &isolated,
        "RCU callbacks otherwise run on the isolated CPU in softirq context",
    ));
    items.push(irq_affinity(sys, &isolated));
    items.push(irqbalance(sys, &isolated));
    items.push(transparent_hugepages(sys));
    items.push(governor(sys, host));
    items.push(cstates(sys, host, &isolated));
    items.push(swap(sys));
    items.push(number_check(
        sys,
        "sched_rt_runtime",
        "real-time throttling (kernel.sched_rt_runtime_us)",
        "proc/sys/kernel/sched_rt_runtime_us",
        |value: i64| value == -1,
        "-1",
        "throttling takes SCHED_FIFO worknodes off their CPU for 50 ms of every second",
    ));
    items.push(number_check(
        sys,
        "timer_migration",
        "timer migration (kernel.timer_migration)",
        "proc/sys/kernel/timer_migration",
        |value: i64| value == 0,
        "0",
        "migrated timers can land on isolated CPUs and fire there",
    ));
    items.push(number_check(
        sys,
        "stat_interval",
        "vmstat update interval (vm.stat_interval)",
        "proc/sys/vm/stat_interval",
        |value: i64| value >= 10,
        "10 or more",
        "the default 1 s runs vmstat work on every CPU each second",
    ));
    items.push(number_check(
        sys,
        "numa_balancing",
        "automatic NUMA balancing (kernel.numa_balancing)",
        "proc/sys/kernel/numa_balancing",
        |value: i64| value == 0,
        "0",
        "page scanning and migration stall the threads whose pages move",
    ));
    items.push(number_check(
        sys,
        "ksm",
        "kernel samepage merging (/sys/kernel/mm/ksm/run)",
        "sys/kernel/mm/ksm/run",
        |value: i64| value == 0,
        "0",
        "ksmd scans memory and write-faults on merged pages cost a copy",
    ));
    items.push(smt(host));
    items.push(clocksource(sys));
    items.push(virtualization(host));
    items.push(kernel_version(host));
    AuditReport {
        kernel: host.kernel_release.clone(),
        virtualized: host.hypervisor,
        steal_ratio: host.steal_ratio(),
        items,
        notes: sys.notes(),
    }
}

fn isolation(host: &Host, isolated: &CpuSet) -> AuditItem {
    let status = if host.online.is_none() && host.cpus.is_empty() {
        Status::Unknown
    } else if isolated.is_empty() {
        Status::Fail
    } else {
        Status::Pass
    };
    let mut sources = Vec::new();
    if let Some(isolcpus) = &host.isolcpus {
        sources.push(format!(
            "isolcpus={}{}",
            isolcpus.flags.iter().map(|f| format!("{f},")).collect::<String>(),
            isolcpus.cpus
        ));
    }
    if let Some(partitions) = host.isolated_partitions.as_ref().filter(|p| !p.is_empty()) {
        sources.push(format!("cgroup partitions {partitions}"));
    }
    let current = if isolated.is_empty() {
        "none".to_string()
    } else if sources.is_empty() {
        isolated.to_string()
    } else {
        format!("{isolated} ({})", sources.join("; "))
    };
    item(
        "isolated_cpus",
        "isolated CPUs for critical worknodes",
        Severity::Critical,
        status,
        current,
        "whole physical cores via isolcpus=managed_irq,domain,… or a cgroup isolated partition",
        "without isolation the scheduler, kworkers and other tasks share the critical worknode's core",
    )
}

fn covers(
    id: &'static str,
    title: &'static str,
    set: &Option<CpuSet>,
    isolated: &CpuSet,
    reason: &str,
) -> AuditItem {
    let status = match set {
        _ if isolated.is_empty() => Status::NotApplicable,
        None => Status::Fail,
        Some(set) if isolated.is_subset(set) => Status::Pass,
        Some(_) => Status::Fail,
    };
    let recommended = if isolated.is_empty() {
        "the isolated CPUs".to_string()
    } else {
        format!("{id}={isolated}")
    };
    item(id, title, Severity::Warning, status, list_or(set, "none"), recommended, reason)
}

fn irq_affinity(sys: &SysRoot, isolated: &CpuSet) -> AuditItem {
    let irqs = sys.numbered("proc/irq", "");
    let mut offending = Vec::new();
    let mut readable = 0;
    for irq in &irqs {
        if let Some(cpus) = sys.read_cpuset(&format!("proc/irq/{irq}/smp_affinity_list")) {
            readable += 1;
            if cpus.intersects(isolated) {
                offending.push(format!("{irq}→{cpus}"));
            }
        }
    }
    let status = if isolated.is_empty() {
        Status::NotApplicable
    } else if readable == 0 {
        Status::Unknown
    } else if offending.is_empty() {
        Status::Pass
    } else {
        Status::Fail
    };
    let current = if readable == 0 {
        "unknown".to_string()
    } else if offending.is_empty() {
        format!("{readable} IRQs, none on isolated CPUs")
    } else {
        let shown: Vec<&str> = offending.iter().take(8).map(String::as_str).collect();
        let more = offending.len().saturating_sub(shown.len());
        let tail = if more > 0 { format!(" and {more} more") } else { String::new() };
        format!(
            "{} of {readable} IRQs reach isolated CPUs: {}{tail}",
            offending.len(),
            shown.join(", ")
        )
    };
    item(
        "irq_affinity",
        "IRQ affinity avoids isolated CPUs",
        Severity::Warning,
        status,
        current,
        "every /proc/irq/*/smp_affinity_list on housekeeping CPUs (irqaffinity=, isolcpus=managed_irq)",
        "an interrupt on an isolated CPU preempts the critical worknode",
    )
}

fn irqbalance(sys: &SysRoot, isolated: &CpuSet) -> AuditItem {
    let running = sys
        .list("proc")
        .iter()
        .filter(|name| name.bytes().all(|b| b.is_ascii_digit()))
        .any(|pid| sys.read(&format!("proc/{pid}/comm")).as_deref() == Some("irqbalance"));
    let status = match (running, isolated.is_empty()) {
        (false, _) => Status::Pass,
        (true, true) => Status::NotApplicable,
        (true, false) => Status::Fail,
    };
    item(
        "irqbalance",
        "irqbalance keeps off isolated CPUs",
        Severity::Warning,
        status,
        if running { "running" } else { "not running" },
        if isolated.is_empty() {
            "not running, or IRQBALANCE_BANNED_CPULIST set to the isolated CPUs".to_string()
        } else {
            format!("not running, or IRQBALANCE_BANNED_CPULIST={isolated}")
        },
        "irqbalance moves interrupts every 10 s and may move them onto isolated CPUs",
    )
}

fn transparent_hugepages(sys: &SysRoot) -> AuditItem {
    let current = sys.read("sys/kernel/mm/transparent_hugepage/enabled");
    // The active choice is the bracketed word: "always [madvise] never".
    let active = current.as_deref().and_then(|text| {
        let start = text.find('[')?;
        let end = text[start..].find(']')? + start;
        Some(text[start + 1..end].to_owned())
    });
    let status = match active.as_deref() {
        None => Status::Unknown,
        Some("always") => Status::Fail,
        Some(_) => Status::Pass,
    };
    item(
        "thp",
        "transparent huge pages",
        Severity::Warning,
        status,
        active.unwrap_or_else(|| "unknown".into()),
        "madvise or never",
        "with `always`, khugepaged compaction and huge-page faults cause millisecond stalls",
    )
}

fn governor(sys: &SysRoot, host: &Host) -> AuditItem {
    let mut governors: Vec<(u32, String)> = Vec::new();
    for cpu in host.online_cpus().iter() {
        if let Some(governor) =
            sys.read(&format!("sys/devices/system/cpu/cpu{cpu}/cpufreq/scaling_governor"))
        {
            governors.push((cpu, governor));
        }
    }
    let not_performance: CpuSet =
        governors.iter().filter(|(_, g)| g != "performance").map(|(cpu, _)| *cpu).collect();
    let (status, current) = if governors.is_empty() {
        (Status::Unknown, "no cpufreq (frequency is set by firmware or the hypervisor)".to_string())
    } else if not_performance.is_empty() {
        (Status::Pass, "performance on every CPU".to_string())
    } else {
        let example = governors
            .iter()
            .find(|(_, g)| g != "performance")
            .map(|(_, g)| g.clone())
            .unwrap_or_default();
        (Status::Fail, format!("{example} on CPUs {not_performance}"))
    };
    item(
        "cpufreq_governor",
        "CPU frequency governor",
        Severity::Warning,
        status,
        current,
        "performance",
        "frequency ramps after idle add tens of microseconds to the first work after a wake-up",
    )
}

fn cstates(sys: &SysRoot, host: &Host, isolated: &CpuSet) -> AuditItem {
    const LATENCY_US_MAX: u64 = 10;
    let cpus = if isolated.is_empty() { host.online_cpus() } else { isolated.clone() };
    let mut deep: Vec<String> = Vec::new();
    let mut seen_any = false;
    for cpu in cpus.iter() {
        let base = format!("sys/devices/system/cpu/cpu{cpu}/cpuidle");
        for state in sys.numbered(&base, "state") {
            let dir = format!("{base}/state{state}");
            let Some(latency) = sys.read_number::<u64>(&format!("{dir}/latency")) else {
                continue;
            };
            seen_any = true;
            let disabled = sys.read_number::<u64>(&format!("{dir}/disable")).unwrap_or(0) != 0;
            if latency > LATENCY_US_MAX && !disabled {
                let name =
                    sys.read(&format!("{dir}/name")).unwrap_or_else(|| format!("state{state}"));
                let entry = format!("{name} ({latency} µs)");
                if !deep.contains(&entry) {
                    deep.push(entry);
                }
            }
        }
    }
    let scope = if isolated.is_empty() { "all CPUs" } else { "isolated CPUs" };
    let (status, current) = if !seen_any {
        (Status::Unknown, "no cpuidle states exposed".to_string())
    } else if deep.is_empty() {
        (Status::Pass, format!("no enabled idle state deeper than {LATENCY_US_MAX} µs on {scope}"))
    } else {
        (Status::Fail, format!("enabled on {scope}: {}", deep.join(", ")))
    };
    item(
        "cstates",
        "deep C-states (cpuidle)",
        Severity::Warning,
        status,
        current,
        format!("no idle state with exit latency above {LATENCY_US_MAX} µs on critical cores (processor.max_cstate=1, or disable in cpuidle/stateN/disable, or hold /dev/cpu_dma_latency at 0)"),
        "waking from a deep C-state costs its exit latency on every wake-up",
    )
}

fn swap(sys: &SysRoot) -> AuditItem {
    let swaps = sys.read("proc/swaps");
    let devices: Vec<String> = swaps
        .as_deref()
        .map(|text| {
            text.lines()
                .skip(1)
                .filter_map(|line| line.split_whitespace().next().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let (status, current) = match swaps {
        None => (Status::Unknown, "unknown".to_string()),
        Some(_) if devices.is_empty() => (Status::Pass, "off".to_string()),
        Some(_) => (Status::Fail, format!("on: {}", devices.join(", "))),
    };
    item(
        "swap",
        "swap",
        Severity::Warning,
        status,
        current,
        "off, or mlockall in every latency-critical process",
        "a page swapped out is a disk read on the critical path when touched",
    )
}

fn number_check(
    sys: &SysRoot,
    id: &'static str,
    title: &'static str,
    path: &str,
    good: impl Fn(i64) -> bool,
    recommended: &str,
    reason: &str,
) -> AuditItem {
    let value = sys.read_number::<i64>(path);
    let status = match value {
        None => Status::Unknown,
        Some(value) if good(value) => Status::Pass,
        Some(_) => Status::Fail,
    };
    let current = value.map(|v| v.to_string()).unwrap_or_else(|| "unknown".into());
    item(id, title, Severity::Warning, status, current, recommended, reason)
}

fn smt(host: &Host) -> AuditItem {
    let (status, current) = if host.cpus.iter().all(|cpu| cpu.siblings.is_none()) {
        (Status::Unknown, "unknown".to_string())
    } else if host.smt_active() {
        (Status::Fail, "active: physical cores run two or more threads".to_string())
    } else {
        (Status::Pass, "inactive: one thread per physical core".to_string())
    };
    item(
        "smt",
        "simultaneous multithreading (SMT)",
        Severity::Info,
        status,
        current,
        "off, or keep critical cores' siblings idle (the core plan does)",
        "an SMT sibling shares the core's execution units and caches with the critical worknode",
    )
}

fn clocksource(sys: &SysRoot) -> AuditItem {
    let current = sys.read("sys/devices/system/clocksource/clocksource0/current_clocksource");
    let status = match current.as_deref() {
        None => Status::Unknown,
        Some("tsc" | "kvm-clock" | "arch_sys_counter") => Status::Pass,
        Some(_) => Status::Fail,
    };
    item(
        "clocksource",
        "clocksource",
        Severity::Critical,
        status,
        current.unwrap_or_else(|| "unknown".into()),
        "tsc (kvm-clock in a KVM guest, arch_sys_counter on arm64)",
        "hpet or acpi_pm make every clock read a microsecond-scale I/O access instead of a vDSO read",
    )
}

fn virtualization(host: &Host) -> AuditItem {
    let steal = host.steal_ratio();
    let steal_text = steal
        .map(|s| format!(", steal {:.3}% of CPU time since boot", s * 100.0))
        .unwrap_or_default();
    let (status, current) = match host.hypervisor {
        None => (Status::Unknown, "unknown".to_string()),
        Some(true) => (Status::Fail, format!("virtual machine (hypervisor flag){steal_text}")),
        Some(false) => (Status::Pass, format!("bare metal{steal_text}")),
    };
    item(
        "virtualization",
        "running under a hypervisor",
        Severity::Warning,
        status,
        current,
        "bare metal, or dedicated (pinned, isolated) vCPUs from the host",
        "the host can deschedule a vCPU at any time: jitter no setting inside the guest removes",
    )
}

fn kernel_version(host: &Host) -> AuditItem {
    let release = host.kernel_release.clone();
    let version = release.as_deref().and_then(|text| {
        let mut numbers = text.split(|c: char| !c.is_ascii_digit()).filter(|part| !part.is_empty());
        Some((numbers.next()?.parse::<u32>().ok()?, numbers.next()?.parse::<u32>().ok()?))
    });
    let note = match version {
        Some(version) if version >= (6, 12) => {
            " (6.12+: a nohz_full CPU running one SCHED_OTHER task still gets deadline-server ticks; run critical worknodes SCHED_FIFO)"
        }
        _ => "",
    };
    let status = if version.is_some() { Status::Pass } else { Status::Unknown };
    item(
        "kernel",
        "kernel version",
        Severity::Info,
        status,
        format!("{}{note}", release.unwrap_or_else(|| "unknown".into())),
        "any; SCHED_FIFO for critical worknodes on 6.12+",
        "jitter depends on the kernel: record its version with every jitter result",
    )
}
