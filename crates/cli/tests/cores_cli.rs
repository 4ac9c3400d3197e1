//! `worknode cores show|audit|plan` end to end on the fixture hosts and on this machine.

#![allow(clippy::unwrap_used, reason = "a test fails loudly on an unexpected value")]

use std::path::PathBuf;
use std::process::{Command, Output};

fn worknode(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_worknode")).args(args).output().expect("run worknode")
}

fn fixture(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../cores/tests/fixtures")
        .join(name)
        .to_str()
        .unwrap()
        .to_owned()
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).unwrap()
}

fn scratch(name: &str, contents: &str) -> String {
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::write(&path, contents).unwrap();
    path.to_str().unwrap().to_owned()
}

#[test]
fn show_lists_every_cpu_with_plan_worknodes() {
    let plan = scratch(
        "show-plan.toml",
        "[[worknode]]\nname = \"raft\"\nclass = \"critical\"\n\n[[worknode]]\nname = \"api\"\nclass = \"normal\"\n",
    );
    let output = worknode(&["cores", "show", "--root", &fixture("server-2s64t"), "--plan", &plan]);
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    // Two summary lines and the header, then one row per CPU.
    let rows: Vec<&str> = text.lines().skip(3).collect();
    assert_eq!(rows.len(), 64, "{text}");
    let cpu2 = rows.iter().find(|r| r.split_whitespace().next() == Some("2")).unwrap();
    assert!(cpu2.ends_with("raft"), "{cpu2}");
    let cpu34 = rows.iter().find(|r| r.split_whitespace().next() == Some("34")).unwrap();
    assert!(cpu34.ends_with("(idle sibling)"), "{cpu34}");

    let output = worknode(&["cores", "show", "--root", &fixture("container-4cpu"), "--json"]);
    let json: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(json["usable"], "2-5");
    assert_eq!(json["cpus"].as_array().unwrap().len(), 8);
    assert_eq!(json["cpus"][0]["usable"], false);
}

#[test]
fn show_and_audit_work_on_this_machine() {
    let output = worknode(&["cores", "show"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stdout(&output).contains("online CPUs"));
    let output = worknode(&["cores", "audit", "--json"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let json: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(json["items"].as_array().unwrap().len(), 18);
}

#[test]
fn audit_strict_fails_only_on_critical_findings() {
    let vm = worknode(&["cores", "audit", "--root", &fixture("vm-2cpu")]);
    assert_eq!(vm.status.code(), Some(0), "without --strict the audit succeeds");
    assert!(stdout(&vm).contains("18 checks:"));
    let vm = worknode(&["cores", "audit", "--root", &fixture("vm-2cpu"), "--strict"]);
    assert_eq!(vm.status.code(), Some(1), "no isolated CPUs is critical");
    let server = worknode(&["cores", "audit", "--root", &fixture("server-2s64t"), "--strict"]);
    assert_eq!(server.status.code(), Some(0), "{}", stdout(&server));
    assert!(stdout(&server).contains("57→5"), "the stray IRQ is named");
}

#[test]
fn plan_emits_deployment_artifacts() {
    let server = fixture("server-2s64t");
    let output = worknode(&["cores", "plan", "--root", &server, "--emit", "kernel-cmdline"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        stdout(&output).trim(),
        "isolcpus=managed_irq,domain,2,34 nohz_full=2,34 rcu_nocbs=2,34 irqaffinity=0-1,3-33,35-63"
    );
    let output = worknode(&[
        "cores",
        "plan",
        "--root",
        &server,
        "--emit",
        "systemd",
        "--fifo-priority",
        "50",
    ]);
    let units = stdout(&output);
    assert!(
        units.contains("CPUSchedulingPolicy=fifo") && units.contains("AllowedCPUs="),
        "{units}"
    );
    let output = worknode(&["cores", "plan", "--root", &server, "--emit", "cgroup"]);
    assert!(stdout(&output).contains("cpuset.cpus.partition"));
    let output = worknode(&["cores", "plan", "--root", &fixture("vm-2cpu")]);
    let text = stdout(&output);
    assert!(text.contains("(best effort)") && text.contains("degraded"), "{text}");
    let output = worknode(&["cores", "plan", "--root", &server, "--json"]);
    let plan: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(plan["placements"][0]["worknode"], "raft");
}

#[test]
fn bad_input_is_one_line_and_status_2() {
    let server = fixture("server-2s64t");
    let bad_toml = scratch(
        "bad.toml",
        "[[worknode]]\nname = \"raft\"\nclass = \"critical\"\ncores = \"two\"\n",
    );
    let vm = fixture("vm-2cpu");
    let background_only =
        scratch("bg.toml", "[[worknode]]\nname = \"bg\"\nclass = \"background\"\n");
    let offline = scratch(
        "offline.toml",
        "[[worknode]]\nname = \"raft\"\nclass = \"critical\"\ncpu_affinity = \"99\"\n",
    );
    let cases: Vec<(Vec<&str>, String)> = vec![
        (
            vec!["cores", "plan", "--root", &server, "--config", &bad_toml],
            format!("{bad_toml}:4: invalid type"),
        ),
        (
            vec!["cores", "plan", "--root", &server, "--config", &offline],
            format!("{offline}: worknode \"raft\": CPU 99 is not online"),
        ),
        (
            vec!["cores", "plan", "--root", &server, "--config", "/nonexistent/plan.toml"],
            "/nonexistent/plan.toml: cannot read".into(),
        ),
        (
            vec!["cores", "plan", "--root", &server, "--emit", "ansible"],
            "--emit: unknown artifact \"ansible\"".into(),
        ),
        (
            vec!["cores", "show", "--root", "/nonexistent/host"],
            "--root /nonexistent/host: no such directory".into(),
        ),
        (
            vec!["cores", "plan", "--root", &vm, "--emit", "cgroup", "--config", &background_only],
            "nothing to isolate".into(),
        ),
    ];
    for (args, expected) in cases {
        let output = worknode(&args);
        let message = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {message}");
        assert_eq!(message.lines().count(), 1, "{args:?}: {message}");
        assert!(message.contains(&expected), "{args:?}: {message:?} lacks {expected:?}");
    }
}
