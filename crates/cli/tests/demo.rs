//! `worknode demo` end to end: the summary of a short run, a run with the halfway kill,
//! Ctrl-C and a killed demo leaving no member process behind, and `status` / `top`
//! against the cluster a demo left running.

#![allow(clippy::unwrap_used, reason = "a test fails loudly on an unexpected value")]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Demos run one at a time: each starts three members and a load on a 2-CPU machine.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn demo(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_worknode")).arg("demo").args(args).output().unwrap()
}

fn scratch(name: &str) -> std::path::PathBuf {
    let dir =
        std::env::temp_dir().join(format!("worknode-demo-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Processes whose command line mentions `needle` (the demo's data directory).
fn processes_mentioning(needle: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().filter_map(Result::ok) {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(needle) {
            found.push(pid);
        }
    }
    found
}

fn wait_until_gone(needle: &str, within: Duration) -> Vec<u32> {
    let deadline = Instant::now() + within;
    loop {
        let left = processes_mentioning(needle);
        if left.is_empty() || Instant::now() >= deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The number after `prefix` on the summary line that starts with `label`.
fn summary_number(text: &str, label: &str, prefix: &str) -> u64 {
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with(label))
        .unwrap_or_else(|| panic!("no {label:?} line in:\n{text}"));
    let after = line.split(prefix).next().unwrap();
    after
        .split_whitespace()
        .last()
        .unwrap()
        .trim_end_matches(',')
        .parse()
        .unwrap_or_else(|_| panic!("no number before {prefix:?} in {line:?}"))
}

#[test]
fn a_short_demo_without_faults_rotates_with_no_failed_writes() {
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = scratch("nofault");
    let svg = dir.with_extension("svg");
    let output = demo(&[
        "--duration",
        "5",
        "--no-faults",
        "--data",
        dir.to_str().unwrap(),
        "--svg",
        svg.to_str().unwrap(),
    ]);
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{text}\n{}", String::from_utf8_lossy(&output.stderr));
    println!("{text}");
    assert!(text.contains("members up     3 of 3"), "{text}");
    assert!(text.contains("leader schedule ("), "{text}");
    assert!(summary_number(&text, "writes", " ok") > 0);
    assert_eq!(summary_number(&text, "writes", " failed"), 0, "{text}");
    assert_eq!(summary_number(&text, "reads", " failed"), 0, "{text}");
    assert!(text.contains("read back with their values; none lost"), "{text}");
    assert!(summary_number(&text, "turns", " handoffs") >= 3, "leadership did not rotate:\n{text}");
    let plot = std::fs::read_to_string(&svg).unwrap();
    assert!(plot.starts_with("<svg") && plot.contains("write latency"), "not a timeline plot");
    // Members only ever send what their peers accept: writes passed on at handoffs too.
    for member in 1..=3 {
        let log = std::fs::read_to_string(dir.join(format!("n{member}.log"))).unwrap();
        assert!(!log.contains("rejected"), "member {member} refused a peer's message:\n{log}");
    }
    assert!(wait_until_gone(dir.to_str().unwrap(), Duration::from_secs(5)).is_empty());
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(&svg);
}

#[test]
fn a_killed_member_costs_no_failed_writes_and_comes_back() {
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let output = demo(&["--duration", "8"]);
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{text}\n{}", String::from_utf8_lossy(&output.stderr));
    println!("{text}");
    assert!(text.contains("killed with SIGKILL") && text.contains("restarted"), "{text}");
    assert!(text.contains("members up     3 of 3"), "{text}");
    assert_eq!(summary_number(&text, "writes", " failed"), 0, "{text}");
    // Through the kill -9 and the restart, every acknowledged write is still there.
    assert!(text.contains("read back with their values; none lost"), "{text}");
}

/// Starts a long demo on `dir` and waits for its turn table to begin.
fn start_long_demo(dir: &Path) -> (Child, mpsc::Receiver<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_worknode"))
        .args(["demo", "--duration", "120", "--data", dir.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (lines_tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let line = lines.recv_timeout(deadline.saturating_duration_since(Instant::now())).unwrap();
        if line.starts_with("turn ") {
            break;
        }
    }
    // The demo itself (its --data argument) and its three members (their --config).
    assert_eq!(processes_mentioning(dir.to_str().unwrap()).len(), 4, "three members run");
    (child, lines)
}

#[test]
fn ctrl_c_stops_every_member() {
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = scratch("ctrlc");
    let (mut child, _lines) = start_long_demo(&dir);
    std::thread::sleep(Duration::from_millis(800));
    Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "Ctrl-C exits with 130");
    let left = processes_mentioning(dir.to_str().unwrap());
    assert!(left.is_empty(), "processes left behind after Ctrl-C: {left:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn members_stop_when_the_demo_is_killed() {
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = scratch("killed");
    let (mut child, _lines) = start_long_demo(&dir);
    child.kill().unwrap();
    child.wait().unwrap();
    let left = wait_until_gone(dir.to_str().unwrap(), Duration::from_secs(10));
    assert!(left.is_empty(), "members outlived a killed demo: {left:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_kept_cluster_answers_status_top_and_etcdctl() {
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = scratch("kept");
    let output = demo(&[
        "--duration",
        "2",
        "--no-faults",
        "--keep-running",
        "--data",
        dir.to_str().unwrap(),
    ]);
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(output.status.success(), "{text}");
    let endpoints = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("worknode status --endpoints "))
        .unwrap()
        .to_owned();
    let pids: Vec<String> = text
        .lines()
        .find_map(|l| l.strip_prefix("stop it with: kill "))
        .unwrap()
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    let worknode = |args: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_worknode")).args(args).output().unwrap();
        assert!(output.status.success(), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).to_string()
    };
    let status = worknode(&["status", "--endpoints", &endpoints]);
    let top = worknode(&["top", "--endpoints", &endpoints, "--once"]);
    // The commands the demo prints work as printed.
    let etcdctl = |args: &[&str]| {
        let output = Command::new("etcdctl")
            .arg(format!("--endpoints={endpoints}"))
            .args(args)
            .output()
            .expect("etcdctl is installed (scripts/deps.sh installs Debian's etcd-client)");
        String::from_utf8_lossy(&output.stdout).to_string()
    };
    let put = etcdctl(&["put", "greeting", "hello"]);
    let get = etcdctl(&["get", "demo/w0/1"]);
    for pid in &pids {
        Command::new("kill").args(["-TERM", pid]).status().unwrap();
    }
    let left = wait_until_gone(dir.to_str().unwrap(), Duration::from_secs(10));
    let _ = std::fs::remove_dir_all(&dir);
    println!("{status}\n{top}");
    assert_eq!(put.trim(), "OK");
    assert_eq!(get.lines().next(), Some("demo/w0/1"), "{get}");
    assert!(status.contains("leader"), "{status}");
    assert!(status.contains("unpinned") || status.contains("pinned to CPU"), "{status}");
    assert!(status.contains("first slot"), "{status}");
    assert!(top.starts_with("worknode top — 3 members"), "{top}");
    assert!(top.contains("cpu0"), "{top}");
    assert!(top.lines().count() <= 24, "top fits 80×24:\n{top}");
    assert!(left.is_empty(), "members did not stop on SIGTERM: {left:?}");
}
