//! Core plans on three host shapes: placement properties and every validation error.

#![allow(clippy::unwrap_used, reason = "a test fails loudly on an unexpected value")]

use std::path::{Path, PathBuf};

use proptest::prelude::*;
use worknode_cores::artifacts::{self, SystemdOptions};
use worknode_cores::{
    CorePlan, CpuAffinity, CpuSet, Host, PlanConfig, PlanError, SysRoot, WorknodeClass,
    WorknodeSpec,
};

fn host(name: &str) -> Host {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name);
    Host::discover(&SysRoot::new(root))
}

fn set(text: &str) -> CpuSet {
    text.parse().unwrap()
}

fn spec(name: &str, class: WorknodeClass, affinity: CpuAffinity) -> WorknodeSpec {
    WorknodeSpec { cpu_affinity: affinity, ..WorknodeSpec::new(name, class) }
}

fn config(best_effort: bool, worknodes: Vec<WorknodeSpec>) -> PlanConfig {
    PlanConfig { best_effort, housekeeping: None, worknodes }
}

#[test]
fn server_plan_uses_isolated_whole_cores_for_critical() {
    let host = host("server-2s64t");
    let plan = CorePlan::build(
        &host,
        &config(
            false,
            vec![
                WorknodeSpec::new("raft", WorknodeClass::Critical),
                WorknodeSpec {
                    numa_node: Some(1),
                    ..WorknodeSpec::new("replica-io", WorknodeClass::Critical)
                },
                WorknodeSpec { cores: 2, ..WorknodeSpec::new("net", WorknodeClass::High) },
                WorknodeSpec::new("api", WorknodeClass::Normal),
                WorknodeSpec::new("compaction", WorknodeClass::Background),
            ],
        ),
    )
    .unwrap();
    let raft = plan.placement("raft").unwrap();
    assert_eq!(
        (raft.cpus.clone(), raft.reserved.clone(), raft.isolated),
        (set("2"), set("2,34"), true)
    );
    // NUMA node 1 has no isolated cores: the NUMA-local general core wins, with a warning
    // that it is not isolated.
    let replica = plan.placement("replica-io").unwrap();
    assert_eq!(replica.cpus, set("3"), "isolated cores come first even across NUMA nodes");
    let net = plan.placement("net").unwrap();
    assert_eq!(net.cpus, set("1,16"));
    assert_eq!(net.reserved, set("1,16,33,48"));
    let api = plan.placement("api").unwrap();
    assert!(api.reserved.is_empty() && !api.cpus.intersects(&set("0-16,32-48")));
    assert_eq!(plan.placement("compaction").unwrap().cpus, set("0,32"));
    assert_eq!(plan.critical_cpus(), set("2-3,34-35"));
    assert!(
        plan.warnings().iter().any(|w| w.contains("outside NUMA node 1")),
        "{:?}",
        plan.warnings()
    );

    let cmdline = artifacts::kernel_cmdline(&plan, &host).unwrap();
    assert_eq!(
        cmdline,
        "isolcpus=managed_irq,domain,2-3,34-35 nohz_full=2-3,34-35 rcu_nocbs=2-3,34-35 irqaffinity=0-1,4-33,36-63"
    );
    let units = artifacts::systemd(
        &plan,
        &SystemdOptions { service: "worknode.service".into(), fifo_priority: Some(80) },
    );
    assert!(units.contains("CPUAffinity=0 32"), "{units}");
    assert!(units.contains("LimitMEMLOCK=infinity") && units.contains("CPUSchedulingPriority=80"));
    assert!(
        units.contains("[Slice]\nAllowedCPUs=0,32"),
        "other slices stay on housekeeping: {units}"
    );
    let recipe = artifacts::cgroup_recipe(&plan).unwrap();
    assert!(recipe.contains("echo isolated > worknode/critical/cpuset.cpus.partition"));
    assert!(recipe.contains("echo 2-3,34-35 > worknode/critical/cpuset.cpus\n"), "{recipe}");
}

#[test]
fn numa_preference_picks_local_cores() {
    let host = host("server-2s64t");
    let plan = CorePlan::build(
        &host,
        &config(
            false,
            vec![WorknodeSpec {
                numa_node: Some(1),
                ..WorknodeSpec::new("net", WorknodeClass::High)
            }],
        ),
    )
    .unwrap();
    let net = plan.placement("net").unwrap();
    assert_eq!(net.cpus, set("16"));
    assert_eq!(host.topology(16).unwrap().numa_node, Some(1));
    assert!(plan.warnings().is_empty(), "{:?}", plan.warnings());
}

#[test]
fn vm_plan_degrades_with_best_effort_and_fails_without() {
    let host = host("vm-2cpu");
    let plan = CorePlan::build(&host, &PlanConfig::default_server(true)).unwrap();
    assert_eq!(plan.housekeeping(), &set("0"));
    let raft = plan.placement("raft").unwrap();
    assert_eq!((raft.cpus.clone(), raft.isolated), (set("1"), false));
    let net = plan.placement("net").unwrap();
    assert!(net.degraded && net.cpus == set("0"));
    assert!(plan.warnings().iter().any(|w| w.contains("not isolated")));
    assert!(plan.warnings().iter().any(|w| w.contains("\"net\" (high) needs 1 physical core(s)")));

    let error = CorePlan::build(&host, &PlanConfig::default_server(false)).unwrap_err();
    assert_eq!(
        error,
        PlanError::NotEnoughCores {
            worknode: "net".into(),
            class: WorknodeClass::High,
            needed: 1,
            free: 0,
            missing: 1
        }
    );
    assert!(error.to_string().contains("1 missing"));
}

#[test]
fn every_validation_error_names_worknode_and_cpu() {
    let server = host("server-2s64t");
    let container = host("container-4cpu");
    let explicit = |name: &str, class, cpus: &str| spec(name, class, CpuAffinity::Cpus(set(cpus)));
    let cases: Vec<(&Host, Vec<WorknodeSpec>, &str)> = vec![
        (
            &server,
            vec![explicit("raft", WorknodeClass::Critical, "70")],
            "worknode \"raft\": CPU 70 is not online",
        ),
        (
            &container,
            vec![explicit("raft", WorknodeClass::Critical, "7")],
            "worknode \"raft\": CPU 7 is outside this process's allowed cpuset 2-5",
        ),
        (
            &server,
            vec![
                explicit("raft", WorknodeClass::Critical, "4"),
                explicit("log", WorknodeClass::Critical, "36"),
            ],
            "worknodes \"log\" and \"raft\" both claim physical core 4,36 (CPU 36)",
        ),
        (
            &server,
            vec![
                explicit("raft", WorknodeClass::Critical, "1"),
                explicit("net", WorknodeClass::High, "33"),
            ],
            "worknodes \"net\" and \"raft\" both claim physical core 1,33 (CPU 33)",
        ),
        (
            &server,
            vec![
                explicit("raft", WorknodeClass::Critical, "4"),
                explicit("api", WorknodeClass::Normal, "36"),
            ],
            "worknode \"api\": CPU 36 belongs to critical worknode \"raft\"",
        ),
        (
            &server,
            vec![explicit("api", WorknodeClass::Normal, "5")],
            "worknode \"api\" is normal, but CPU 5 is isolated",
        ),
        (
            &server,
            vec![WorknodeSpec { cores: 40, ..WorknodeSpec::new("raft", WorknodeClass::Critical) }],
            "worknode \"raft\" (critical) needs 40 physical core(s) but 31 are free: 9 missing",
        ),
        (
            &server,
            vec![WorknodeSpec {
                numa_node: Some(3),
                ..WorknodeSpec::new("raft", WorknodeClass::Critical)
            }],
            "worknode \"raft\": NUMA node 3 does not exist (nodes: 0,1)",
        ),
        (
            &server,
            vec![
                WorknodeSpec::new("raft", WorknodeClass::Critical),
                WorknodeSpec::new("raft", WorknodeClass::High),
            ],
            "worknode \"raft\" is defined twice",
        ),
    ];
    for (host, worknodes, expected) in cases {
        let error = CorePlan::build(host, &config(false, worknodes.clone())).unwrap_err();
        assert!(error.to_string().contains(expected), "{worknodes:?}: {error} lacks {expected:?}");
    }
}

#[test]
fn plan_files_parse_and_report_lines() {
    let file = Path::new("plan.toml");
    let text = "best_effort = true\nhousekeeping = \"0\"\n\n[[worknode]]\nname = \"raft\"\nclass = \"critical\"\ncpu_affinity = \"auto\"\n\n[[worknode]]\nname = \"api\"\nclass = \"normal\"\ncpu_affinity = \"none\"\n";
    let config = PlanConfig::from_toml(file, text).unwrap();
    assert!(config.best_effort);
    assert_eq!(config.housekeeping, Some(set("0")));
    assert_eq!(config.worknodes[1].cpu_affinity, CpuAffinity::None);

    let bad_class = "[[worknode]]\nname = \"raft\"\nclass = \"urgent\"\n";
    let error = PlanConfig::from_toml(file, bad_class).unwrap_err().to_string();
    assert!(error.starts_with("plan.toml:3: unknown variant `urgent`"), "{error}");
    let bad_cpus = "[[worknode]]\nname = \"raft\"\nclass = \"critical\"\ncpu_affinity = \"2-x\"\n";
    let error = PlanConfig::from_toml(file, bad_cpus).unwrap_err().to_string();
    assert!(error.starts_with("plan.toml:4: cpu_affinity \"2-x\""), "{error}");
    let unknown_field = "[[worknode]]\nname = \"raft\"\nclass = \"critical\"\npriority = 3\n";
    let error = PlanConfig::from_toml(file, unknown_field).unwrap_err().to_string();
    assert!(error.starts_with("plan.toml:4: unknown field `priority`"), "{error}");
}

fn class_strategy() -> impl Strategy<Value = WorknodeClass> {
    prop_oneof![
        Just(WorknodeClass::Critical),
        Just(WorknodeClass::High),
        Just(WorknodeClass::Normal),
        Just(WorknodeClass::Background),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// Whatever is asked, an accepted plan never shares a physical core between exclusive
    /// worknodes, never leaves the usable CPUs, and gives isolated CPUs only to critical
    /// worknodes.
    #[test]
    fn accepted_plans_keep_the_rules(
        shape in prop_oneof![Just("server-2s64t"), Just("container-4cpu"), Just("vm-2cpu")],
        best_effort in any::<bool>(),
        worknodes in prop::collection::vec((class_strategy(), 1u32..4, prop::option::of(0u32..2)), 1..12),
    ) {
        let host = host(shape);
        let specs: Vec<WorknodeSpec> = worknodes
            .iter()
            .enumerate()
            .map(|(i, &(class, cores, numa_node))| WorknodeSpec {
                cores,
                numa_node: if shape == "server-2s64t" { numa_node } else { None },
                ..WorknodeSpec::new(format!("w{i}"), class)
            })
            .collect();
        let Ok(plan) = CorePlan::build(&host, &config(best_effort, specs)) else {
            return Ok(());
        };
        let usable = host.usable();
        let isolated = host.isolated();
        let exclusive: Vec<_> = plan.placements().iter().filter(|p| !p.reserved.is_empty()).collect();
        for (i, a) in exclusive.iter().enumerate() {
            // Reserved sets are whole cores (intersected with what is usable).
            for cpu in a.reserved.iter() {
                prop_assert!(host.siblings(cpu).intersection(&usable).is_subset(&a.reserved));
            }
            for b in &exclusive[i + 1..] {
                prop_assert!(!a.reserved.intersects(&b.reserved), "{} and {} share", a.worknode, b.worknode);
            }
        }
        for placement in plan.placements() {
            prop_assert!(placement.cpus.is_subset(&usable), "{} outside usable", placement.worknode);
            if placement.class != WorknodeClass::Critical {
                prop_assert!(!placement.cpus.intersects(&isolated), "{} on isolated", placement.worknode);
            }
            for other in &exclusive {
                if other.worknode != placement.worknode {
                    prop_assert!(!placement.cpus.intersects(&other.reserved));
                }
            }
            prop_assert!(best_effort || !placement.degraded);
        }
    }
}
