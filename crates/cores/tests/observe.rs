//! Telemetry and the watchdog on real threads and processes.

#![allow(clippy::unwrap_used, reason = "a test fails loudly on an unexpected value")]

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use worknode_cores::telemetry::{Alert, AlertThresholds, Telemetry, WatchedThread};
use worknode_cores::watchdog::{StallPolicy, Watchdog, WatchdogConfig};
use worknode_cores::{
    current_affinity, current_thread_id, live_host, spawn_worknode, CoreAuthority, CorePlan,
    CpuAffinity, PinOptions, PlanConfig, WorknodeClass, WorknodeSpec,
};

const STALL_MS: u64 = 200;

fn watchdog(policy: StallPolicy) -> (Watchdog, mpsc::Receiver<(String, Instant)>) {
    let (tx, rx) = mpsc::channel();
    let config = WatchdogConfig { stall_ms: STALL_MS, policy, cpus: None };
    let dog = Watchdog::start(config, move |stall| {
        let _ = tx.send((stall.worknode.clone(), Instant::now()));
    })
    .unwrap();
    (dog, rx)
}

#[test]
fn a_stalled_worknode_is_caught_within_twice_the_threshold() {
    let (dog, stalls) = watchdog(StallPolicy::Log);
    let heartbeat = dog.watch("raft").unwrap();
    let worker = thread::spawn(move || {
        for _ in 0..50 {
            heartbeat.beat();
            thread::sleep(Duration::from_millis(1));
        }
        let last_beat = Instant::now();
        // A deliberate hang: no more beats.
        thread::sleep(Duration::from_millis(STALL_MS * 4));
        last_beat
    });
    let (worknode, detected) = stalls.recv_timeout(Duration::from_secs(5)).unwrap();
    let last_beat = worker.join().unwrap();
    assert_eq!(worknode, "raft");
    let after = detected.duration_since(last_beat);
    assert!(after >= Duration::from_millis(STALL_MS - 5), "caught too early: {after:?}");
    assert!(after <= Duration::from_millis(2 * STALL_MS), "caught late: {after:?}");
    assert_eq!(dog.stalls(), 1, "one report per stall episode");
}

#[test]
fn a_busy_progressing_worknode_is_never_flagged() {
    let (dog, stalls) = watchdog(StallPolicy::Log);
    let heartbeat = dog.watch("busy").unwrap();
    let end = Instant::now() + Duration::from_millis(STALL_MS * 8);
    let worker = thread::spawn(move || {
        let mut work = 0u64;
        while Instant::now() < end {
            // Busy: real work between beats, a beat per loop.
            for i in 0..10_000u64 {
                work = std::hint::black_box(work.wrapping_mul(31).wrapping_add(i));
            }
            heartbeat.beat();
        }
        work
    });
    worker.join().unwrap();
    assert!(stalls.try_recv().is_err());
    assert_eq!(dog.stalls(), 0);
}

#[test]
fn abort_policy_fails_fast() {
    if std::env::var_os("WORKNODE_WATCHDOG_ABORT_CHILD").is_some() {
        let (dog, _stalls) = watchdog(StallPolicy::Abort);
        let _heartbeat = dog.watch("raft").unwrap();
        thread::sleep(Duration::from_secs(5));
        std::process::exit(0); // Not reached when the watchdog aborts.
    }
    let output = Command::new(std::env::current_exe().unwrap())
        .args(["abort_policy_fails_fast", "--exact", "--nocapture"])
        .env("WORKNODE_WATCHDOG_ABORT_CHILD", "1")
        .output()
        .unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(output.status.signal(), Some(6), "SIGABRT: {:?}", output.status);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("\"raft\" made no progress"), "{stderr}");
}

#[test]
fn foreign_load_on_a_critical_core_raises_alerts() {
    let (_, host) = live_host();
    let cpu = current_affinity().unwrap().iter().last().unwrap();
    let spec = WorknodeSpec {
        cpu_affinity: CpuAffinity::Cpus([cpu].into_iter().collect()),
        ..WorknodeSpec::new("raft", WorknodeClass::Critical)
    };
    let config =
        PlanConfig { best_effort: true, worknodes: vec![spec.clone()], ..PlanConfig::default() };
    let authority = CoreAuthority::new(CorePlan::build(&host, &config).unwrap());
    let running = Arc::new(AtomicBool::new(true));
    let flag = Arc::clone(&running);
    let (tid_tx, tid_rx) = mpsc::channel();
    let worknode = spawn_worknode(
        &spec,
        Some(authority.grant("raft").unwrap()),
        &PinOptions::default(),
        move || {
            tid_tx.send(current_thread_id()).unwrap();
            // A polling loop: it wants the whole CPU.
            while flag.load(Ordering::Relaxed) {
                std::hint::spin_loop();
            }
        },
    )
    .unwrap();
    let tid = tid_rx.recv().unwrap();
    // Something else on the critical core: another process, pinned there with taskset.
    let mut intruder = Command::new("taskset")
        .args(["-c", &cpu.to_string(), "sh", "-c", "while :; do :; done"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut telemetry = Telemetry::new(AlertThresholds::default());
    telemetry.watch(WatchedThread {
        worknode: "raft".into(),
        tid,
        class: WorknodeClass::Critical,
        cpus: [cpu].into_iter().collect(),
    });
    let start = Instant::now();
    telemetry.sample(0);
    thread::sleep(Duration::from_millis(1_500));
    telemetry.sample(start.elapsed().as_nanos() as u64);
    let _ = intruder.kill();
    let _ = intruder.wait();
    running.store(false, Ordering::Relaxed);
    worknode.join().unwrap();

    let alerts: Vec<&Alert> = telemetry.alerts().collect();
    assert!(
        alerts.iter().any(|a| matches!(a, Alert::ForeignLoad { worknode, cpu: c, ratio } if worknode == "raft" && *c == cpu && *ratio > 0.2)),
        "{alerts:?}"
    );
    assert!(alerts.iter().any(|a| matches!(a, Alert::Preempted { .. })), "{alerts:?}");
    let usage = telemetry.thread_usage();
    assert!(usage[0].involuntary_per_s > 1.0, "{usage:?}");

    let metrics = telemetry.prometheus();
    assert!(
        metrics.contains(&format!("worknode_cpu_seconds_total{{cpu=\"{cpu}\",mode=\"user\"}}")),
        "{metrics}"
    );
    assert!(metrics.contains(
        "worknode_worknode_context_switches_total{worknode=\"raft\",kind=\"involuntary\"}"
    ));
    assert!(metrics
        .contains(&format!("worknode_core_foreign_busy_ratio{{cpu=\"{cpu}\",worknode=\"raft\"}}")));
    for line in metrics.lines().filter(|l| !l.starts_with('#')) {
        let (_, value) = line.rsplit_once(' ').unwrap();
        assert!(value.parse::<f64>().is_ok(), "not a sample line: {line}");
    }
}
