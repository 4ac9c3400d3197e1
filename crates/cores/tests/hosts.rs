//! Discovery and audit against captured host trees (see `fixtures/generate.py`).

#![allow(clippy::unwrap_used, reason = "a test fails loudly on an unexpected value")]

use std::path::PathBuf;

use worknode_cores::{audit, CpuSet, Host, Severity, Status, SysRoot};

fn fixture(name: &str) -> (SysRoot, Host) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name);
    let sys = SysRoot::new(root);
    let host = Host::discover(&sys);
    (sys, host)
}

fn set(text: &str) -> CpuSet {
    text.parse().unwrap()
}

fn status(report: &worknode_cores::AuditReport, id: &str) -> Status {
    report.items.iter().find(|item| item.id == id).unwrap().status
}

#[test]
fn vm_has_two_plain_cpus_and_no_isolation() {
    let (sys, host) = fixture("vm-2cpu");
    assert_eq!(host.online, Some(set("0-1")));
    assert_eq!(host.physical_cores(), vec![set("0"), set("1")]);
    assert!(!host.smt_active());
    assert!(host.isolated().is_empty());
    assert_eq!(host.cgroup_cpus, Some(set("0-1")), "cgroup v1 cpuset is read");
    assert_eq!(host.allowed, Some(set("0-1")));
    assert_eq!(host.hypervisor, Some(true));
    assert!(host.nohz_full.is_none(), "no nohz_full file and nothing on the command line");
    assert!(host.notes.is_empty(), "{:?}", host.notes);

    let report = audit(&sys, &host);
    assert_eq!(status(&report, "isolated_cpus"), Status::Fail);
    assert_eq!(report.critical_failures(), 1);
    assert_eq!(status(&report, "cpufreq_governor"), Status::Unknown, "no cpufreq in this VM");
    assert_eq!(status(&report, "irq_affinity"), Status::NotApplicable);
    assert_eq!(status(&report, "virtualization"), Status::Fail);
    assert_eq!(status(&report, "clocksource"), Status::Pass);
    assert_eq!(report.items.len(), 18);
}

#[test]
fn server_topology_numa_and_isolation() {
    let (sys, host) = fixture("server-2s64t");
    assert_eq!(host.online_cpus().len(), 64);
    assert_eq!(host.physical_cores().len(), 32);
    assert!(host.smt_active());
    assert_eq!(host.siblings(5), set("5,37"));
    let cpu20 = host.topology(20).unwrap();
    assert_eq!((cpu20.package, cpu20.core_id, cpu20.numa_node), (Some(1), Some(4), Some(1)));
    assert_eq!(host.topology(40).unwrap().numa_node, Some(0));
    let isolcpus = host.isolcpus.clone().unwrap();
    assert_eq!(isolcpus.flags, ["managed_irq", "domain"]);
    assert_eq!(isolcpus.cpus, set("2-15,34-47"));
    assert_eq!(host.isolated(), set("2-15,34-47"));
    assert_eq!(host.nohz_full, Some(set("2-15,34-47")));
    assert_eq!(host.rcu_nocbs, Some(set("2-15,34-47")));
    assert_eq!(host.irqaffinity, Some(set("0-1,16-33,48-63")));
    // The inherited mask excludes isolated CPUs; the cgroup allows them, so they are usable.
    assert_eq!(host.allowed, Some(set("0-1,16-33,48-63")));
    assert_eq!(host.cgroup_cpus, Some(set("0-63")));
    assert_eq!(host.usable(), set("0-63"));

    let report = audit(&sys, &host);
    assert_eq!(report.critical_failures(), 0);
    for id in [
        "isolated_cpus",
        "nohz_full",
        "rcu_nocbs",
        "thp",
        "swap",
        "cstates",
        "sched_rt_runtime",
        "clocksource",
    ] {
        assert_eq!(status(&report, id), Status::Pass, "{id}");
    }
    let irq = report.items.iter().find(|i| i.id == "irq_affinity").unwrap();
    assert_eq!(irq.status, Status::Fail);
    assert!(irq.current.contains("57→5"), "{}", irq.current);
    assert_eq!(status(&report, "irqbalance"), Status::Fail);
    let governor = report.items.iter().find(|i| i.id == "cpufreq_governor").unwrap();
    assert!(governor.current.contains("schedutil on CPUs 0-1,16-33,48-63"), "{}", governor.current);
    let kernel = report.items.iter().find(|i| i.id == "kernel").unwrap();
    assert!(kernel.current.contains("SCHED_FIFO"), "6.12+ note: {}", kernel.current);
}

#[test]
fn container_sees_its_cpuset() {
    let (sys, host) = fixture("container-4cpu");
    assert_eq!(host.online_cpus(), set("0-7"));
    assert_eq!(host.cgroup_cpus, Some(set("2-5")), "nested cgroup v2 path");
    assert_eq!(host.usable(), set("2-5"));
    assert!(host.steal_ratio().unwrap() > 0.0);
    let report = audit(&sys, &host);
    assert_eq!(status(&report, "thp"), Status::Fail);
    assert_eq!(status(&report, "swap"), Status::Fail);
    assert_eq!(status(&report, "numa_balancing"), Status::Unknown);
    let failed_critical: Vec<&str> = report
        .items
        .iter()
        .filter(|i| i.severity == Severity::Critical && i.status == Status::Fail)
        .map(|i| i.id)
        .collect();
    assert_eq!(failed_critical, ["isolated_cpus"]);
}

#[test]
fn live_host_is_readable() {
    let (sys, host) = worknode_cores::live_host();
    assert!(!host.online_cpus().is_empty());
    assert!(host.allowed.as_ref().is_some_and(|allowed| !allowed.is_empty()));
    let report = audit(&sys, &host);
    assert_eq!(report.items.len(), 18);
}

#[test]
fn malformed_files_leave_notes_not_panics() {
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("malformed-host");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(root.join("sys/devices/system/cpu/cpu0/topology")).unwrap();
    std::fs::write(root.join("sys/devices/system/cpu/online"), "0-x\n").unwrap();
    std::fs::write(root.join("sys/devices/system/cpu/cpu0/topology/core_id"), "zero\n").unwrap();
    let sys = SysRoot::new(&root);
    let host = Host::discover(&sys);
    assert!(host.online.is_none());
    assert_eq!(host.cpus.len(), 1);
    assert!(
        host.notes.iter().any(|n| n.contains("/sys/devices/system/cpu/online")),
        "{:?}",
        host.notes
    );
    assert!(host.notes.iter().any(|n| n.contains("core_id")), "{:?}", host.notes);
    let report = audit(&sys, &host);
    assert_eq!(report.items.len(), 18);
}
