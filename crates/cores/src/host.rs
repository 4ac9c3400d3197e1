//! Host discovery: what CPUs exist, how they are grouped, which are isolated, and which
//! this process may use.
//!
//! Unlike affinity crates that list only the CPUs in the caller's current mask, this
//! reads every online CPU, so isolated cores (which a normal process's mask excludes)
//! and cores outside the cgroup are visible and reported as such.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;

use crate::cpuset::CpuSet;
use crate::sysroot::SysRoot;

/// Topology of one logical CPU.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CpuTopology {
    /// Logical CPU number.
    pub cpu: u32,
    /// Core number within the package.
    pub core_id: Option<u32>,
    /// Physical package (socket).
    pub package: Option<u32>,
    /// Logical CPUs sharing this physical core, this one included.
    pub siblings: Option<CpuSet>,
    /// NUMA node.
    pub numa_node: Option<u32>,
}

/// The `isolcpus=` kernel parameter.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Isolcpus {
    /// Flags given before the list (`domain`, `managed_irq`, `nohz`).
    pub flags: Vec<String>,
    /// The isolated CPUs.
    pub cpus: CpuSet,
}

impl Isolcpus {
    /// Parses the value of `isolcpus=`: flag words, then a CPU list.
    fn parse(value: &str, sys: &SysRoot) -> Option<Self> {
        let mut flags = Vec::new();
        let mut rest = value;
        while let Some((head, tail)) = rest.split_once(',') {
            if head.chars().all(|c| c.is_ascii_alphabetic() || c == '_') && !head.is_empty() {
                flags.push(head.to_owned());
                rest = tail;
            } else {
                break;
            }
        }
        let cpus = sys.parse_cpuset("/proc/cmdline isolcpus=", rest)?;
        Some(Self { flags, cpus })
    }

    /// Whether the scheduler keeps ordinary tasks off these CPUs (`domain`, or no flags).
    pub fn isolates_scheduling(&self) -> bool {
        self.flags.is_empty() || self.flags.iter().any(|flag| flag == "domain")
    }
}

/// Per-CPU time counters from `/proc/stat`, in clock ticks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CpuTimes {
    /// Logical CPU number.
    pub cpu: u32,
    /// Time in user mode (including nice).
    pub user: u64,
    /// Time in kernel mode.
    pub system: u64,
    /// Idle time (including I/O wait).
    pub idle: u64,
    /// Hardware interrupts.
    pub irq: u64,
    /// Soft interrupts.
    pub softirq: u64,
    /// Time the hypervisor ran something else while this virtual CPU wanted to run.
    pub steal: u64,
}

impl CpuTimes {
    /// All ticks counted.
    pub fn total(&self) -> u64 {
        self.user + self.system + self.idle + self.irq + self.softirq + self.steal
    }

    /// Parses the `cpuN` lines of `/proc/stat`.
    pub fn parse_proc_stat(text: &str) -> Vec<CpuTimes> {
        text.lines()
            .filter_map(|line| {
                let mut fields = line.split_whitespace();
                let cpu = fields.next()?.strip_prefix("cpu")?.parse().ok()?;
                let values: Vec<u64> = fields.map_while(|field| field.parse().ok()).collect();
                let value = |index: usize| values.get(index).copied().unwrap_or(0);
                Some(CpuTimes {
                    cpu,
                    user: value(0) + value(1),
                    system: value(2),
                    idle: value(3) + value(4),
                    irq: value(5),
                    softirq: value(6),
                    steal: value(7),
                })
            })
            .collect()
    }
}

/// What the host offers and what this process may use. Every field is optional:
/// `None` means the file that tells was missing (or malformed, see `notes`).
#[derive(Clone, Debug, Serialize)]
pub struct Host {
    /// The root this was read from.
    pub root: PathBuf,
    /// Online CPUs.
    pub online: Option<CpuSet>,
    /// Topology of each online CPU.
    pub cpus: Vec<CpuTopology>,
    /// NUMA nodes and their CPUs.
    pub numa_nodes: BTreeMap<u32, CpuSet>,
    /// `/sys/devices/system/cpu/isolated` (CPUs isolated from scheduling at boot).
    pub isolated_sysfs: Option<CpuSet>,
    /// `isolcpus=` from the kernel command line.
    pub isolcpus: Option<Isolcpus>,
    /// CPUs in isolated cgroup partitions (root `cpuset.cpus.isolated`).
    pub isolated_partitions: Option<CpuSet>,
    /// Tickless CPUs (`nohz_full`), from sysfs or the command line.
    pub nohz_full: Option<CpuSet>,
    /// CPUs whose RCU callbacks are offloaded (`rcu_nocbs=`).
    pub rcu_nocbs: Option<CpuSet>,
    /// Default IRQ affinity (`irqaffinity=`).
    pub irqaffinity: Option<CpuSet>,
    /// This process's cgroup's effective cpuset.
    pub cgroup_cpus: Option<CpuSet>,
    /// This process's allowed CPUs (sched_getaffinity / `Cpus_allowed_list`).
    pub allowed: Option<CpuSet>,
    /// Whether `/proc/cpuinfo` carries the `hypervisor` flag.
    pub hypervisor: Option<bool>,
    /// Per-CPU time counters since boot.
    pub cpu_times: Vec<CpuTimes>,
    /// Kernel release (`uname -r`).
    pub kernel_release: Option<String>,
    /// The kernel command line.
    pub cmdline: Option<String>,
    /// Files that existed but did not parse.
    pub notes: Vec<String>,
}

impl Host {
    /// Reads everything under `sys` (never fails; unknowns stay `None`).
    pub fn discover(sys: &SysRoot) -> Host {
        let cmdline = sys.read("proc/cmdline");
        let param = |name: &str| cmdline.as_deref().and_then(|line| kernel_param(line, name));
        let online = sys.read_cpuset("sys/devices/system/cpu/online");
        let numa_nodes: BTreeMap<u32, CpuSet> = sys
            .numbered("sys/devices/system/node", "node")
            .into_iter()
            .filter_map(|node| {
                Some((
                    node,
                    sys.read_cpuset(&format!("sys/devices/system/node/node{node}/cpulist"))?,
                ))
            })
            .collect();
        let cpu_numbers: Vec<u32> = match &online {
            Some(online) => online.iter().collect(),
            None => sys.numbered("sys/devices/system/cpu", "cpu"),
        };
        let cpus = cpu_numbers
            .into_iter()
            .map(|cpu| {
                let topology = format!("sys/devices/system/cpu/cpu{cpu}/topology");
                CpuTopology {
                    cpu,
                    core_id: sys.read_number(&format!("{topology}/core_id")),
                    package: sys.read_number(&format!("{topology}/physical_package_id")),
                    siblings: sys.read_cpuset(&format!("{topology}/thread_siblings_list")),
                    numa_node: numa_nodes
                        .iter()
                        .find(|(_, cpus)| cpus.contains(cpu))
                        .map(|(&node, _)| node),
                }
            })
            .collect();
        let nohz_full = sys.read_cpuset("sys/devices/system/cpu/nohz_full").or_else(|| {
            param("nohz_full").and_then(|v| sys.parse_cpuset("/proc/cmdline nohz_full=", &v))
        });
        let cpu_times =
            sys.read("proc/stat").map(|text| CpuTimes::parse_proc_stat(&text)).unwrap_or_default();
        let mut host = Host {
            root: sys.root().to_path_buf(),
            online,
            cpus,
            numa_nodes,
            isolated_sysfs: sys.read_cpuset("sys/devices/system/cpu/isolated"),
            isolcpus: param("isolcpus").and_then(|value| Isolcpus::parse(&value, sys)),
            isolated_partitions: sys.read_cpuset("sys/fs/cgroup/cpuset.cpus.isolated"),
            nohz_full,
            rcu_nocbs: param("rcu_nocbs")
                .and_then(|value| sys.parse_cpuset("/proc/cmdline rcu_nocbs=", &value)),
            irqaffinity: param("irqaffinity")
                .and_then(|value| sys.parse_cpuset("/proc/cmdline irqaffinity=", &value)),
            cgroup_cpus: own_cgroup_cpus(sys),
            allowed: allowed_cpus(sys),
            hypervisor: sys.read("proc/cpuinfo").map(|text| {
                text.lines()
                    .filter(|line| line.starts_with("flags"))
                    .any(|line| line.split_whitespace().any(|flag| flag == "hypervisor"))
            }),
            cpu_times,
            kernel_release: sys.read("proc/sys/kernel/osrelease"),
            cmdline,
            notes: Vec::new(),
        };
        host.notes = sys.notes();
        host
    }

    /// Online CPUs, or the CPUs whose topology was found when `online` is unknown.
    pub fn online_cpus(&self) -> CpuSet {
        self.online.clone().unwrap_or_else(|| self.cpus.iter().map(|cpu| cpu.cpu).collect())
    }

    /// CPUs kept free of ordinary scheduling: sysfs `isolated`, `isolcpus=` with the
    /// domain flag (or none), and isolated cgroup partitions.
    pub fn isolated(&self) -> CpuSet {
        let mut isolated = self.isolated_sysfs.clone().unwrap_or_default();
        if let Some(isolcpus) = self.isolcpus.as_ref().filter(|i| i.isolates_scheduling()) {
            isolated = isolated.union(&isolcpus.cpus);
        }
        if let Some(partitions) = &self.isolated_partitions {
            isolated = isolated.union(partitions);
        }
        isolated.intersection(&self.online_cpus())
    }

    /// CPUs this process may pin threads to: online and inside its cgroup's cpuset.
    /// sched_setaffinity accepts any CPU of the cpuset whatever the current mask, which
    /// is how a process reaches isolated CPUs that its inherited mask excludes. When the
    /// cgroup is unknown, the current mask plus the isolated CPUs stands in for it.
    pub fn usable(&self) -> CpuSet {
        let online = self.online_cpus();
        match (&self.cgroup_cpus, &self.allowed) {
            (Some(cgroup), _) => online.intersection(cgroup),
            (None, Some(allowed)) => online.intersection(&allowed.union(&self.isolated())),
            (None, None) => online,
        }
    }

    /// Logical CPUs sharing a physical core with `cpu` (itself included).
    pub fn siblings(&self, cpu: u32) -> CpuSet {
        self.topology(cpu)
            .and_then(|t| t.siblings.clone())
            .unwrap_or_else(|| [cpu].into_iter().collect())
    }

    /// The topology of one CPU.
    pub fn topology(&self, cpu: u32) -> Option<&CpuTopology> {
        self.cpus.iter().find(|topology| topology.cpu == cpu)
    }

    /// Physical cores as sets of sibling CPUs, ordered by their lowest CPU.
    pub fn physical_cores(&self) -> Vec<CpuSet> {
        let mut cores: Vec<CpuSet> = Vec::new();
        for topology in &self.cpus {
            let siblings = self.siblings(topology.cpu).intersection(&self.online_cpus());
            if !cores.contains(&siblings) {
                cores.push(siblings);
            }
        }
        cores.sort_by_key(|core| core.first());
        cores
    }

    /// Whether any physical core has more than one online thread.
    pub fn smt_active(&self) -> bool {
        self.physical_cores().iter().any(|core| core.len() > 1)
    }

    /// Fraction of all CPU time since boot stolen by the hypervisor.
    pub fn steal_ratio(&self) -> Option<f64> {
        let total: u64 = self.cpu_times.iter().map(CpuTimes::total).sum();
        let steal: u64 = self.cpu_times.iter().map(|times| times.steal).sum();
        (total > 0).then(|| steal as f64 / total as f64)
    }
}

/// The value of `name=` on a kernel command line (the last one wins, as in the kernel).
pub fn kernel_param(cmdline: &str, name: &str) -> Option<String> {
    cmdline
        .split_whitespace()
        .take_while(|word| *word != "--")
        .filter_map(|word| word.split_once('='))
        .filter(|(key, _)| *key == name)
        .map(|(_, value)| value.to_owned())
        .last()
}

/// The effective cpuset of this process's cgroup (v2 `cpuset.cpus.effective`, or v1
/// `cpuset.effective_cpus`), walking up to the nearest ancestor that has the file.
fn own_cgroup_cpus(sys: &SysRoot) -> Option<CpuSet> {
    let membership = sys.read("proc/self/cgroup")?;
    for line in membership.lines() {
        let mut fields = line.splitn(3, ':');
        let (id, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
        let (base, file) = if id == "0" && controllers.is_empty() {
            ("sys/fs/cgroup", "cpuset.cpus.effective")
        } else if controllers.split(',').any(|c| c == "cpuset") {
            ("sys/fs/cgroup/cpuset", "cpuset.effective_cpus")
        } else {
            continue;
        };
        let mut path = PathBuf::from(path.trim_start_matches('/'));
        loop {
            let candidate = format!("{base}/{}/{file}", path.display());
            let candidate = candidate.replace("//", "/");
            if let Some(cpus) = sys.read_cpuset(&candidate) {
                return Some(cpus);
            }
            if !path.pop() {
                break;
            }
        }
    }
    None
}

/// This process's affinity mask: the system call on the live system, the
/// `Cpus_allowed_list` of `proc/self/status` in a fixture tree.
fn allowed_cpus(sys: &SysRoot) -> Option<CpuSet> {
    if sys.is_live() {
        if let Ok(mask) = crate::pin::current_affinity() {
            return Some(mask);
        }
    }
    let status = sys.read("proc/self/status")?;
    let line = status.lines().find_map(|line| line.strip_prefix("Cpus_allowed_list:"))?;
    sys.parse_cpuset("/proc/self/status Cpus_allowed_list", line.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_params_and_isolcpus_flags() {
        let line = "ro quiet isolcpus=managed_irq,domain,2-15,34-47 nohz_full=2-15 -- isolcpus=9";
        assert_eq!(kernel_param(line, "nohz_full").as_deref(), Some("2-15"));
        let sys = SysRoot::new("/nonexistent");
        let isolcpus = Isolcpus::parse(&kernel_param(line, "isolcpus").unwrap(), &sys).unwrap();
        assert_eq!(isolcpus.flags, ["managed_irq", "domain"]);
        assert_eq!(isolcpus.cpus.to_string(), "2-15,34-47");
        assert!(isolcpus.isolates_scheduling());
        let irq_only = Isolcpus::parse("managed_irq,4-5", &sys).unwrap();
        assert!(!irq_only.isolates_scheduling());
        assert!(Isolcpus::parse("3", &sys).unwrap().isolates_scheduling());
    }

    #[test]
    fn proc_stat_lines() {
        let text = "cpu  1 2 3 4 5 6 7 8 0 0\ncpu0 10 1 5 100 3 2 1 7 0 0\nintr 5\n";
        let times = CpuTimes::parse_proc_stat(text);
        assert_eq!(times.len(), 1);
        assert_eq!(
            times[0],
            CpuTimes { cpu: 0, user: 11, system: 5, idle: 103, irq: 2, softirq: 1, steal: 7 }
        );
        assert_eq!(times[0].total(), 129);
    }

    #[test]
    fn missing_root_is_all_unknown() {
        let host = Host::discover(&SysRoot::new("/nonexistent/root"));
        assert!(host.online.is_none() && host.cpus.is_empty() && host.allowed.is_none());
        assert!(host.isolated().is_empty());
        assert!(host.notes.is_empty());
    }
}
