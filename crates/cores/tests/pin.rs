//! Pinning real threads on this machine: every allowed CPU, checked two ways, and the
//! errors the OS gives when it refuses.

#![allow(clippy::unwrap_used, reason = "a test fails loudly on an unexpected value")]

use std::path::PathBuf;

use worknode_cores::{
    current_affinity, current_is_fifo, current_thread_id, live_host, make_current_background,
    spawn_worknode, CoreAuthority, CorePlan, CpuAffinity, CpuSet, Host, PinOptions, PinStep,
    PlanConfig, SysRoot, WorknodeClass, WorknodeSpec,
};

/// `Cpus_allowed_list` of one of this process's threads, as the kernel reports it.
fn task_cpus(tid: u32) -> CpuSet {
    let status = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).unwrap();
    let line = status.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:")).unwrap();
    line.trim().parse().unwrap()
}

fn authority_for(host: &Host, worknodes: Vec<WorknodeSpec>) -> CoreAuthority {
    let config = PlanConfig { best_effort: true, housekeeping: Some(CpuSet::new()), worknodes };
    CoreAuthority::new(CorePlan::build(host, &config).unwrap())
}

#[test]
fn pins_to_each_allowed_cpu() {
    let (_, host) = live_host();
    let allowed = current_affinity().unwrap();
    assert!(!allowed.is_empty());
    for cpu in allowed.iter() {
        let spec = WorknodeSpec {
            cpu_affinity: CpuAffinity::Cpus([cpu].into_iter().collect()),
            ..WorknodeSpec::new(format!("probe-{cpu}"), WorknodeClass::Normal)
        };
        let authority = authority_for(&host, vec![spec.clone()]);
        let grant = authority.grant(&spec.name).unwrap();
        let worknode = spawn_worknode(&spec, Some(grant), &PinOptions::default(), || {
            let tid = current_thread_id();
            (current_affinity().unwrap(), task_cpus(tid), tid)
        })
        .unwrap();
        let report = worknode.report().clone();
        let (mask, status_cpus, tid) = worknode.join().unwrap();
        let expected: CpuSet = [cpu].into_iter().collect();
        assert!(report.pinned, "{report:?}");
        assert_eq!(report.effective, expected);
        assert_eq!(mask, expected, "sched_getaffinity on CPU {cpu}");
        assert_eq!(status_cpus, expected, "/proc/self/task/{tid}/status on CPU {cpu}");
        assert_eq!(report.thread_id, tid);
    }
    // The test thread itself was never touched.
    assert_eq!(current_affinity().unwrap(), allowed);
}

#[test]
fn grant_is_released_when_the_worknode_ends() {
    let (_, host) = live_host();
    let cpu = current_affinity().unwrap().iter().last().unwrap();
    let spec = WorknodeSpec {
        cpu_affinity: CpuAffinity::Cpus([cpu].into_iter().collect()),
        ..WorknodeSpec::new("raft", WorknodeClass::Critical)
    };
    let authority = authority_for(&host, vec![spec.clone()]);
    let worknode =
        spawn_worknode(&spec, Some(authority.grant("raft").unwrap()), &PinOptions::default(), || 7)
            .unwrap();
    assert_eq!(worknode.join().unwrap(), 7);
    assert!(authority.grant("raft").is_ok(), "the grant died with its thread");
}

/// A plan made for the container fixture (CPUs 2-5) asks this 2-CPU machine for CPU 5.
fn foreign_grant() -> (WorknodeSpec, CoreAuthority) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/container-4cpu");
    let host = Host::discover(&SysRoot::new(root));
    let spec = WorknodeSpec {
        cpu_affinity: CpuAffinity::Cpus("5".parse().unwrap()),
        ..WorknodeSpec::new("raft", WorknodeClass::Critical)
    };
    let authority = authority_for(&host, vec![spec.clone()]);
    (spec, authority)
}

#[test]
fn refused_pin_says_why_and_how_to_fix() {
    let live = current_affinity().unwrap();
    if live.contains(5) {
        return; // This machine has CPU 5: the refusal cannot be provoked this way.
    }
    let (spec, authority) = foreign_grant();
    let error = spawn_worknode(
        &spec,
        Some(authority.grant("raft").unwrap()),
        &PinOptions::default(),
        || (),
    )
    .unwrap_err();
    assert_eq!(error.step, PinStep::Affinity);
    let message = error.to_string();
    assert!(message.contains("worknode \"raft\": pinning to CPUs 5 failed"), "{message}");
    assert!(message.contains("cpuset"), "{message}");
    assert_eq!(message.lines().count(), 1);
}

#[test]
fn best_effort_runs_unpinned_and_says_so() {
    let live = current_affinity().unwrap();
    if live.contains(5) {
        return;
    }
    let (spec, authority) = foreign_grant();
    let options = PinOptions { best_effort: true, ..PinOptions::default() };
    let worknode =
        spawn_worknode(&spec, Some(authority.grant("raft").unwrap()), &options, current_affinity)
            .unwrap();
    let report = worknode.report().clone();
    assert!(!report.pinned);
    assert!(report.warnings.iter().any(|w| w.contains("running unpinned")), "{report:?}");
    assert_eq!(worknode.join().unwrap().unwrap(), live);
}

#[test]
fn fifo_priority_is_applied_or_explained() {
    let (_, host) = live_host();
    let cpu = current_affinity().unwrap().first().unwrap();
    let spec = WorknodeSpec {
        cpu_affinity: CpuAffinity::Cpus([cpu].into_iter().collect()),
        ..WorknodeSpec::new("rt", WorknodeClass::Normal)
    };
    let authority = authority_for(&host, vec![spec.clone()]);
    let options = PinOptions { fifo_priority: Some(10), ..PinOptions::default() };
    match spawn_worknode(&spec, Some(authority.grant("rt").unwrap()), &options, current_is_fifo) {
        Ok(worknode) => {
            assert_eq!(worknode.report().fifo_priority, Some(10));
            assert!(worknode.join().unwrap().unwrap(), "the thread runs SCHED_FIFO");
            assert!(!current_is_fifo().unwrap(), "only the worknode thread changed policy");
        }
        Err(error) => {
            assert_eq!(error.step, PinStep::Scheduler);
            assert!(error.to_string().contains("CAP_SYS_NICE"), "{error}");
        }
    }
}

#[test]
fn unpinned_worknode_keeps_the_process_mask() {
    let spec = WorknodeSpec {
        cpu_affinity: CpuAffinity::None,
        ..WorknodeSpec::new("bg", WorknodeClass::Background)
    };
    let worknode = spawn_worknode(&spec, None, &PinOptions::default(), current_affinity).unwrap();
    assert!(!worknode.report().pinned);
    assert_eq!(worknode.join().unwrap().unwrap(), current_affinity().unwrap());
}

/// A thread's nice value, from `/proc/self/task/TID/stat` (field 19).
fn task_nice(tid: u32) -> i32 {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    after_name.split(' ').nth(16).unwrap().parse().unwrap()
}

#[test]
fn a_helper_of_a_pinned_realtime_worknode_moves_to_housekeeping() {
    // The Raft loop's snapshot thread is born with the loop's isolated CPU and SCHED_FIFO.
    let (_, host) = live_host();
    let allowed = current_affinity().unwrap();
    let (first, last) = (allowed.first().unwrap(), allowed.iter().last().unwrap());
    let spec = WorknodeSpec {
        cpu_affinity: CpuAffinity::Cpus([last].into_iter().collect()),
        ..WorknodeSpec::new("loop", WorknodeClass::Normal)
    };
    let housekeeping: CpuSet =
        if first != last { [first].into_iter().collect() } else { CpuSet::new() };
    let config = PlanConfig {
        best_effort: true,
        housekeeping: Some(housekeeping.clone()),
        worknodes: vec![spec.clone()],
    };
    let authority =
        std::sync::Arc::new(CoreAuthority::new(CorePlan::build(&host, &config).unwrap()));
    let options =
        PinOptions { fifo_priority: Some(10), best_effort: true, ..PinOptions::default() };
    let grant = authority.grant("loop").unwrap();
    let for_helper = std::sync::Arc::clone(&authority);
    let worknode = spawn_worknode(&spec, Some(grant), &options, move || {
        let loop_fifo = current_is_fifo().unwrap();
        let helper = std::thread::spawn(move || {
            let born = (current_affinity().unwrap(), current_is_fifo().unwrap());
            make_current_background(Some(&for_helper), 10).unwrap();
            let tid = current_thread_id();
            (born, current_affinity().unwrap(), current_is_fifo().unwrap(), task_nice(tid))
        });
        (loop_fifo, helper.join().unwrap())
    })
    .unwrap();
    let (loop_fifo, (born, mask, fifo, nice)) = worknode.join().unwrap();
    let loop_cpu: CpuSet = [last].into_iter().collect();
    assert_eq!(born, (loop_cpu.clone(), loop_fifo), "a new thread inherits mask and policy");
    let expected = if housekeeping.is_empty() { loop_cpu } else { housekeeping };
    assert_eq!(mask, expected);
    assert!(!fifo, "the helper left SCHED_FIFO");
    assert_eq!(nice, 10);
}
