//! Worknodes and core plans: which worknode runs on which CPUs, checked against the host.
//!
//! Placement rules, in order:
//! 1. Explicit CPU sets are validated as given.
//! 2. Critical worknodes (`auto`) get whole physical cores: isolated cores first, then
//!    cores that are neither isolated nor housekeeping. The worknode runs on one thread
//!    of each core; the SMT siblings stay idle (reserved).
//! 3. High worknodes (`auto`) get whole non-isolated, non-housekeeping cores.
//! 4. Normal worknodes share what is left of the non-isolated, non-housekeeping CPUs.
//! 5. Background worknodes run on the housekeeping CPUs, with the OS.
//!
//! Critical and High placements are *exclusive*: no other worknode may use their cores.
//! With `best_effort`, a plan that cannot meet a rule on a small host degrades (sharing
//! CPUs) and says so in `warnings` instead of failing.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::cpuset::CpuSet;
use crate::host::Host;

/// How much a worknode's latency matters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorknodeClass {
    /// Latency-critical (the Raft loop): whole isolated physical cores.
    Critical,
    /// Important (network I/O): whole physical cores, not isolated ones.
    High,
    /// Ordinary work (API handlers): shared non-housekeeping CPUs.
    Normal,
    /// Housekeeping work (compaction, metrics): the OS's CPUs.
    Background,
}

impl WorknodeClass {
    /// Whether placements of this class own their cores outright.
    pub fn is_exclusive(self) -> bool {
        matches!(self, WorknodeClass::Critical | WorknodeClass::High)
    }

    /// Lower-case name, as written in plan files.
    pub fn name(self) -> &'static str {
        match self {
            WorknodeClass::Critical => "critical",
            WorknodeClass::High => "high",
            WorknodeClass::Normal => "normal",
            WorknodeClass::Background => "background",
        }
    }
}

impl fmt::Display for WorknodeClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where a worknode may run.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum CpuAffinity {
    /// Not pinned: the OS schedules it anywhere it allows.
    None,
    /// Exactly these CPUs.
    Cpus(CpuSet),
    /// Chosen by the plan from the worknode's class.
    #[default]
    Auto,
}

impl fmt::Display for CpuAffinity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CpuAffinity::None => f.write_str("none"),
            CpuAffinity::Cpus(cpus) => write!(f, "{cpus}"),
            CpuAffinity::Auto => f.write_str("auto"),
        }
    }
}

impl Serialize for CpuAffinity {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for CpuAffinity {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        match text.trim() {
            "auto" => Ok(CpuAffinity::Auto),
            "none" => Ok(CpuAffinity::None),
            list => {
                let cpus = CpuSet::parse_list(list).map_err(|error| {
                    serde::de::Error::custom(format!(
                        "cpu_affinity {text:?}: {error} (or use \"auto\" or \"none\")"
                    ))
                })?;
                if cpus.is_empty() {
                    return Err(serde::de::Error::custom(
                        "cpu_affinity is empty: give CPUs, \"auto\" or \"none\"",
                    ));
                }
                Ok(CpuAffinity::Cpus(cpus))
            }
        }
    }
}

fn one() -> u32 {
    1
}

/// A named unit of execution and what it needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorknodeSpec {
    /// Unique name (`raft`, `net`, `api`).
    pub name: String,
    /// How much its latency matters.
    pub class: WorknodeClass,
    /// Where it may run.
    #[serde(default)]
    pub cpu_affinity: CpuAffinity,
    /// Physical cores wanted by an exclusive (critical or high) `auto` worknode.
    #[serde(default = "one")]
    pub cores: u32,
    /// Preferred NUMA node for `auto` placement.
    #[serde(default)]
    pub numa_node: Option<u32>,
}

impl WorknodeSpec {
    /// A spec with `auto` affinity, one core, no NUMA preference.
    pub fn new(name: impl Into<String>, class: WorknodeClass) -> Self {
        Self {
            name: name.into(),
            class,
            cpu_affinity: CpuAffinity::Auto,
            cores: 1,
            numa_node: None,
        }
    }
}

/// A plan file: settings and the worknodes to place.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanConfig {
    /// Degrade with warnings instead of failing when the host is too small.
    #[serde(default)]
    pub best_effort: bool,
    /// CPUs kept for the OS and background work (default: the physical core of the
    /// lowest usable, non-isolated CPU).
    #[serde(default)]
    pub housekeeping: Option<CpuSet>,
    /// The worknodes, in priority order within each class.
    #[serde(default, rename = "worknode")]
    pub worknodes: Vec<WorknodeSpec>,
}

impl PlanConfig {
    /// Parses a plan file's text; errors carry the line and column TOML reports.
    pub fn from_toml(file: &Path, text: &str) -> Result<Self, PlanError> {
        toml::from_str(text).map_err(|error| {
            let line = error
                .span()
                .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1);
            let message = error.message().replace('\n', " ");
            PlanError::Config { file: file.display().to_string(), line, message }
        })
    }

    /// Reads and parses a plan file.
    pub fn load(file: &Path) -> Result<Self, PlanError> {
        let text = std::fs::read_to_string(file).map_err(|error| PlanError::Config {
            file: file.display().to_string(),
            line: None,
            message: format!("cannot read: {error}"),
        })?;
        Self::from_toml(file, &text)
    }

    /// The worknode set worknode runs by default: the Raft loop, network I/O, the API
    /// handlers and background work.
    pub fn default_server(best_effort: bool) -> Self {
        Self {
            best_effort,
            housekeeping: None,
            worknodes: vec![
                WorknodeSpec::new("raft", WorknodeClass::Critical),
                WorknodeSpec::new("net", WorknodeClass::High),
                WorknodeSpec::new("api", WorknodeClass::Normal),
                WorknodeSpec::new("background", WorknodeClass::Background),
            ],
        }
    }
}

/// Why a plan is invalid. Each names the worknode and the CPU at fault.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// The plan file does not parse.
    #[error("{file}{}: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
    Config {
        /// The plan file.
        file: String,
        /// Line of the problem, when known.
        line: Option<usize>,
        /// What is wrong.
        message: String,
    },
    /// Two worknodes share a name.
    #[error("worknode {name:?} is defined twice")]
    DuplicateName {
        /// The repeated name.
        name: String,
    },
    /// A NUMA node the host does not have.
    #[error("worknode {worknode:?}: NUMA node {node} does not exist (nodes: {known})")]
    UnknownNumaNode {
        /// The worknode.
        worknode: String,
        /// The node asked for.
        node: u32,
        /// Nodes the host has.
        known: String,
    },
    /// A CPU that is not online.
    #[error("worknode {worknode:?}: CPU {cpu} is not online (online: {online})")]
    CpuOffline {
        /// The worknode.
        worknode: String,
        /// The CPU.
        cpu: u32,
        /// Online CPUs.
        online: CpuSet,
    },
    /// A CPU outside this process's cgroup cpuset.
    #[error("worknode {worknode:?}: CPU {cpu} is outside this process's allowed cpuset {allowed}")]
    CpuNotAllowed {
        /// The worknode.
        worknode: String,
        /// The CPU.
        cpu: u32,
        /// CPUs this process may use.
        allowed: CpuSet,
    },
    /// Two exclusive worknodes on one physical core (the same CPU or SMT siblings).
    #[error("worknodes {worknode:?} and {other:?} both claim physical core {core} (CPU {cpu}): exclusive worknodes need cores of their own")]
    SharedCore {
        /// The worknode placed second.
        worknode: String,
        /// The worknode already there.
        other: String,
        /// The contested CPU.
        cpu: u32,
        /// The physical core's CPUs.
        core: CpuSet,
    },
    /// A worknode placed on a core an exclusive worknode owns.
    #[error("worknode {worknode:?}: CPU {cpu} belongs to {class} worknode {owner:?}")]
    ReservedCore {
        /// The worknode.
        worknode: String,
        /// The CPU.
        cpu: u32,
        /// The owner.
        owner: String,
        /// The owner's class.
        class: WorknodeClass,
    },
    /// An isolated CPU given to a worknode that is not critical.
    #[error("worknode {worknode:?} is {class}, but CPU {cpu} is isolated: isolated cores are for critical worknodes")]
    IsolatedForNonCritical {
        /// The worknode.
        worknode: String,
        /// Its class.
        class: WorknodeClass,
        /// The CPU.
        cpu: u32,
    },
    /// Not enough free physical cores.
    #[error("worknode {worknode:?} ({class}) needs {needed} physical core(s) but {free} are free: {missing} missing (set best_effort = true to share CPUs instead)")]
    NotEnoughCores {
        /// The worknode.
        worknode: String,
        /// Its class.
        class: WorknodeClass,
        /// Cores needed.
        needed: u32,
        /// Cores free for it.
        free: u32,
        /// How many more the host would need.
        missing: u32,
    },
    /// No CPU at all is left for the worknode.
    #[error("worknode {worknode:?} ({class}): no usable CPU is left for it")]
    NoCpus {
        /// The worknode.
        worknode: String,
        /// Its class.
        class: WorknodeClass,
    },
}

/// Where one worknode runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Placement {
    /// The worknode's name.
    pub worknode: String,
    /// Its class.
    pub class: WorknodeClass,
    /// CPUs its thread may run on; empty means not pinned.
    pub cpus: CpuSet,
    /// CPUs no other worknode may use (whole cores, idle siblings included); empty for
    /// shared placements.
    pub reserved: CpuSet,
    /// Whether every CPU it runs on is isolated.
    pub isolated: bool,
    /// The placement fell short of its class's rule (best effort only).
    pub degraded: bool,
}

impl Placement {
    /// Whether the worknode is pinned at all.
    pub fn is_pinned(&self) -> bool {
        !self.cpus.is_empty()
    }
}

/// A validated placement of every worknode. Only [`CorePlan::build`] makes one, so a
/// `CorePlan` in hand has passed every rule (parse, don't validate).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CorePlan {
    placements: Vec<Placement>,
    housekeeping: CpuSet,
    usable: CpuSet,
    isolated: CpuSet,
    best_effort: bool,
    warnings: Vec<String>,
}

impl CorePlan {
    /// One entry per worknode, in the config's order.
    pub fn placements(&self) -> &[Placement] {
        &self.placements
    }

    /// CPUs kept for the OS and background work.
    pub fn housekeeping(&self) -> &CpuSet {
        &self.housekeeping
    }

    /// CPUs the plan could use (online and in this process's cpuset).
    pub fn usable(&self) -> &CpuSet {
        &self.usable
    }

    /// CPUs isolated on the host.
    pub fn isolated(&self) -> &CpuSet {
        &self.isolated
    }

    /// Whether degrading was allowed.
    pub fn best_effort(&self) -> bool {
        self.best_effort
    }

    /// What fell short, for a best-effort plan (and advice for any plan).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The placement of a worknode.
    pub fn placement(&self, worknode: &str) -> Option<&Placement> {
        self.placements.iter().find(|placement| placement.worknode == worknode)
    }

    /// The exclusive placement that owns this CPU, if any.
    pub fn owner_of(&self, cpu: u32) -> Option<&Placement> {
        self.placements.iter().find(|placement| placement.reserved.contains(cpu))
    }

    /// CPUs reserved by critical worknodes: what the kernel should isolate.
    pub fn critical_cpus(&self) -> CpuSet {
        self.placements
            .iter()
            .filter(|placement| placement.class == WorknodeClass::Critical)
            .fold(CpuSet::new(), |all, placement| all.union(&placement.reserved))
    }

    /// Places `config`'s worknodes on `host`.
    pub fn build(host: &Host, config: &PlanConfig) -> Result<CorePlan, PlanError> {
        Planner::new(host, config)?.run(config)
    }
}

/// Working state while placing worknodes.
struct Planner<'a> {
    host: &'a Host,
    best_effort: bool,
    usable: CpuSet,
    isolated: CpuSet,
    housekeeping: CpuSet,
    /// CPU → exclusive owner (worknode name, class).
    owners: BTreeMap<u32, (String, WorknodeClass)>,
    warnings: Vec<String>,
}

impl<'a> Planner<'a> {
    fn new(host: &'a Host, config: &PlanConfig) -> Result<Self, PlanError> {
        let mut names = std::collections::BTreeSet::new();
        for spec in &config.worknodes {
            if !names.insert(spec.name.as_str()) {
                return Err(PlanError::DuplicateName { name: spec.name.clone() });
            }
            if let Some(node) = spec.numa_node {
                if !host.numa_nodes.is_empty() && !host.numa_nodes.contains_key(&node) {
                    let known: Vec<String> = host.numa_nodes.keys().map(u32::to_string).collect();
                    return Err(PlanError::UnknownNumaNode {
                        worknode: spec.name.clone(),
                        node,
                        known: known.join(","),
                    });
                }
            }
        }
        let usable = host.usable();
        let isolated = host.isolated().intersection(&usable);
        let housekeeping = match &config.housekeeping {
            Some(cpus) => cpus.intersection(&usable),
            None => {
                let first = usable.difference(&isolated).first();
                first.map(|cpu| host.siblings(cpu).intersection(&usable)).unwrap_or_default()
            }
        };
        let mut warnings = Vec::new();
        if housekeeping.is_empty() {
            warnings.push(
                "no housekeeping CPU: the OS and background work share the worknodes' CPUs".into(),
            );
        }
        Ok(Self {
            host,
            best_effort: config.best_effort,
            usable,
            isolated,
            housekeeping,
            owners: BTreeMap::new(),
            warnings,
        })
    }

    fn run(mut self, config: &PlanConfig) -> Result<CorePlan, PlanError> {
        let mut placements: Vec<Option<Placement>> = vec![None; config.worknodes.len()];
        // Explicit sets first (they are what the operator insists on), then auto
        // placements by class, exclusive ones before shared ones.
        for (index, spec) in config.worknodes.iter().enumerate() {
            if let CpuAffinity::Cpus(cpus) = &spec.cpu_affinity {
                placements[index] = Some(self.place_explicit(spec, cpus)?);
            }
        }
        for class in [
            WorknodeClass::Critical,
            WorknodeClass::High,
            WorknodeClass::Normal,
            WorknodeClass::Background,
        ] {
            for (index, spec) in config.worknodes.iter().enumerate() {
                if spec.class != class || placements[index].is_some() {
                    continue;
                }
                placements[index] = Some(match spec.cpu_affinity {
                    CpuAffinity::None => self.unpinned(spec),
                    _ if class.is_exclusive() => self.place_exclusive(spec)?,
                    _ => self.place_shared(spec, true)?,
                });
            }
        }
        let placements: Vec<Placement> = placements.into_iter().flatten().collect();
        assert_eq!(placements.len(), config.worknodes.len());
        Ok(CorePlan {
            placements,
            housekeeping: self.housekeeping,
            usable: self.usable,
            isolated: self.isolated,
            best_effort: self.best_effort,
            warnings: self.warnings,
        })
    }

    fn unpinned(&mut self, spec: &WorknodeSpec) -> Placement {
        if spec.class == WorknodeClass::Critical {
            self.warnings.push(format!(
                "critical worknode {:?} is not pinned (cpu_affinity = \"none\"): it will share CPUs with everything else",
                spec.name
            ));
        }
        Placement {
            worknode: spec.name.clone(),
            class: spec.class,
            cpus: CpuSet::new(),
            reserved: CpuSet::new(),
            isolated: false,
            degraded: false,
        }
    }

    fn place_explicit(
        &mut self,
        spec: &WorknodeSpec,
        cpus: &CpuSet,
    ) -> Result<Placement, PlanError> {
        let online = self.host.online_cpus();
        for cpu in cpus.iter() {
            if !online.contains(cpu) {
                return Err(PlanError::CpuOffline { worknode: spec.name.clone(), cpu, online });
            }
            if !self.usable.contains(cpu) {
                return Err(PlanError::CpuNotAllowed {
                    worknode: spec.name.clone(),
                    cpu,
                    allowed: self.usable.clone(),
                });
            }
            if let Some((owner, class)) = self.owners.get(&cpu) {
                return Err(if spec.class.is_exclusive() {
                    PlanError::SharedCore {
                        worknode: spec.name.clone(),
                        other: owner.clone(),
                        cpu,
                        core: self.host.siblings(cpu),
                    }
                } else {
                    PlanError::ReservedCore {
                        worknode: spec.name.clone(),
                        cpu,
                        owner: owner.clone(),
                        class: *class,
                    }
                });
            }
            if self.isolated.contains(cpu) && spec.class != WorknodeClass::Critical {
                return Err(PlanError::IsolatedForNonCritical {
                    worknode: spec.name.clone(),
                    class: spec.class,
                    cpu,
                });
            }
        }
        let reserved = if spec.class.is_exclusive() {
            let whole_cores = cpus
                .iter()
                .fold(CpuSet::new(), |all, cpu| all.union(&self.host.siblings(cpu)))
                .intersection(&self.host.online_cpus());
            // A sibling another exclusive worknode holds makes the core shared.
            for cpu in whole_cores.iter() {
                if let Some((owner, _)) = self.owners.get(&cpu) {
                    return Err(PlanError::SharedCore {
                        worknode: spec.name.clone(),
                        other: owner.clone(),
                        cpu,
                        core: self.host.siblings(cpu),
                    });
                }
            }
            self.claim(spec, &whole_cores);
            whole_cores
        } else {
            CpuSet::new()
        };
        if spec.class == WorknodeClass::Critical && !cpus.is_subset(&self.isolated) {
            self.warnings.push(format!(
                "critical worknode {:?} runs on CPUs {} that are not isolated: boot with isolcpus/nohz_full for them (worknode cores plan --emit kernel-cmdline)",
                spec.name,
                cpus.difference(&self.isolated)
            ));
        }
        Ok(Placement {
            worknode: spec.name.clone(),
            class: spec.class,
            cpus: cpus.clone(),
            reserved,
            isolated: cpus.is_subset(&self.isolated),
            degraded: false,
        })
    }

    fn claim(&mut self, spec: &WorknodeSpec, cpus: &CpuSet) {
        for cpu in cpus.iter() {
            let previous = self.owners.insert(cpu, (spec.name.clone(), spec.class));
            assert!(previous.is_none(), "CPU {cpu} claimed twice");
        }
    }

    /// Free physical cores (all of their usable threads unclaimed) within `pool`,
    /// NUMA-local ones first when the spec names a node.
    fn free_cores(&self, pool: &CpuSet, numa_node: Option<u32>) -> Vec<CpuSet> {
        let mut cores: Vec<CpuSet> = self
            .host
            .physical_cores()
            .into_iter()
            .map(|core| core.intersection(&self.usable))
            .filter(|core| !core.is_empty() && core.is_subset(pool))
            .filter(|core| core.iter().all(|cpu| !self.owners.contains_key(&cpu)))
            .collect();
        if let Some(node) = numa_node {
            let local = |core: &CpuSet| {
                core.first().and_then(|cpu| self.host.topology(cpu)?.numa_node) == Some(node)
            };
            cores.sort_by_key(|core| !local(core));
        }
        cores
    }

    fn place_exclusive(&mut self, spec: &WorknodeSpec) -> Result<Placement, PlanError> {
        let general = self.usable.difference(&self.isolated).difference(&self.housekeeping);
        let mut candidates = Vec::new();
        if spec.class == WorknodeClass::Critical {
            candidates.extend(self.free_cores(&self.isolated.clone(), spec.numa_node));
        }
        candidates.extend(self.free_cores(&general, spec.numa_node));
        let needed = spec.cores.max(1);
        if candidates.len() < needed as usize {
            let free = candidates.len() as u32;
            if !self.best_effort || free == 0 {
                if self.best_effort {
                    return self.degrade_to_shared(spec, needed, free);
                }
                return Err(PlanError::NotEnoughCores {
                    worknode: spec.name.clone(),
                    class: spec.class,
                    needed,
                    free,
                    missing: needed - free,
                });
            }
            self.warnings.push(format!(
                "worknode {:?} ({}) gets {free} of the {needed} physical cores it asks for (best effort)",
                spec.name, spec.class
            ));
        }
        let cores: Vec<CpuSet> = candidates.into_iter().take(needed as usize).collect();
        if let Some(node) = spec.numa_node {
            let remote = cores
                .iter()
                .filter(|core| {
                    core.first().and_then(|c| self.host.topology(c)?.numa_node) != Some(node)
                })
                .count();
            if remote > 0 {
                self.warnings.push(format!(
                    "worknode {:?}: {remote} core(s) are outside NUMA node {node}",
                    spec.name
                ));
            }
        }
        // One thread per core runs the worknode; its siblings stay idle.
        let cpus: CpuSet = cores.iter().filter_map(CpuSet::first).collect();
        let reserved = cores.iter().fold(CpuSet::new(), |all, core| all.union(core));
        self.claim(spec, &reserved);
        let isolated = cpus.is_subset(&self.isolated);
        if spec.class == WorknodeClass::Critical && !isolated {
            self.warnings.push(format!(
                "critical worknode {:?} runs on CPUs {} that are not isolated: boot with isolcpus/nohz_full for them (worknode cores plan --emit kernel-cmdline)",
                spec.name,
                cpus.difference(&self.isolated)
            ));
        }
        Ok(Placement {
            worknode: spec.name.clone(),
            class: spec.class,
            cpus,
            reserved,
            isolated,
            degraded: false,
        })
    }

    /// Best effort with no free core: run on shared CPUs and say so.
    fn degrade_to_shared(
        &mut self,
        spec: &WorknodeSpec,
        needed: u32,
        free: u32,
    ) -> Result<Placement, PlanError> {
        let mut placement = self.place_shared(spec, false)?;
        placement.degraded = true;
        self.warnings.push(format!(
            "worknode {:?} ({}) needs {needed} physical core(s) of its own but {free} are free: it shares CPUs {} instead (best effort)",
            spec.name, spec.class, placement.cpus
        ));
        Ok(placement)
    }

    /// Normal and Background worknodes, and degraded exclusive ones: CPUs nobody owns.
    /// `explain`: add a warning when falling back to the housekeeping CPUs (a caller that
    /// explains the degradation itself passes false).
    fn place_shared(&mut self, spec: &WorknodeSpec, explain: bool) -> Result<Placement, PlanError> {
        let owned: CpuSet = self.owners.keys().copied().collect();
        let free = self.usable.difference(&self.isolated).difference(&owned);
        let preferred = if spec.class == WorknodeClass::Background {
            self.housekeeping.difference(&owned)
        } else {
            free.difference(&self.housekeeping)
        };
        let cpus = if !preferred.is_empty() {
            preferred
        } else if self.best_effort && !free.is_empty() {
            if explain {
                self.warnings.push(format!(
                    "worknode {:?} ({}) shares the housekeeping CPUs {} (best effort: no other CPU is free)",
                    spec.name, spec.class, free
                ));
            }
            free
        } else {
            return Err(PlanError::NoCpus { worknode: spec.name.clone(), class: spec.class });
        };
        Ok(Placement {
            worknode: spec.name.clone(),
            class: spec.class,
            cpus,
            reserved: CpuSet::new(),
            isolated: false,
            degraded: false,
        })
    }
}
