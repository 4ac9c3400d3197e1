//! `worknode cores jitter` and `worknode cores top` end to end on this machine.

#![allow(clippy::unwrap_used, reason = "a test fails loudly on an unexpected value")]

use std::path::PathBuf;
use std::process::{Command, Output};

fn worknode(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_worknode")).args(args).output().expect("run worknode")
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn first_cpu() -> String {
    worknode_cores::current_affinity().unwrap().first().unwrap().to_string()
}

#[test]
fn timer_probe_json_reports_latency_and_host_facts() {
    let cpu = first_cpu();
    let output = worknode(&[
        "cores",
        "jitter",
        "--cpus",
        &cpu,
        "--duration",
        "500ms",
        "--interval-us",
        "500",
        "--json",
    ]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let json: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    let run = &json["runs"][0];
    assert!(run["kernel"].is_string());
    assert!(run["virtualized"].is_boolean());
    let result = &run["results"][0];
    assert_eq!(result["mode"], "pinned");
    let samples = result["samples"].as_u64().unwrap();
    assert!((800..=1_001).contains(&samples), "about 1000 wake-ups in 500 ms: {samples}");
    let (min, avg, max) = (
        result["min_ns"].as_u64().unwrap(),
        result["avg_ns"].as_f64().unwrap(),
        result["max_ns"].as_u64().unwrap(),
    );
    assert!(min > 0 && min as f64 <= avg && avg <= max as f64, "{result}");
}

#[test]
fn spin_compare_prints_both_modes_ratios_and_a_plot() {
    let cpu = first_cpu();
    let svg = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("jitter.svg");
    let output = worknode(&[
        "cores",
        "jitter",
        "--probe",
        "spin",
        "--cpus",
        &cpu,
        "--duration",
        "300ms",
        "--compare",
        "--svg",
        svg.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let text = stdout(&output);
    assert!(text.contains("kernel ") && text.contains("steal"), "{text}");
    assert!(text.contains(" pinned ") && text.contains(" unpinned "), "{text}");
    assert!(text.contains("unpinned ÷ pinned"), "{text}");
    assert!(text.contains("bare clock read"), "{text}");
    let plot = std::fs::read_to_string(&svg).unwrap();
    assert!(plot.starts_with("<svg") && plot.contains("<polyline"), "a curve per series");
}

#[test]
fn top_renders_one_frame_without_a_terminal() {
    let output = worknode(&["cores", "top", "--once", "--interval-ms", "200"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let text = stdout(&output);
    assert!(
        text.contains("cpu0") && text.contains("worknode") && text.contains("invol/s"),
        "{text}"
    );
    assert!(text.lines().count() <= 24, "fits 80x24");
    assert!(text.lines().all(|l| l.chars().count() <= 80), "fits 80 columns:\n{text}");
}

#[test]
fn bad_input_is_one_line_and_status_2() {
    let cases: &[(&[&str], &str)] = &[
        (&["cores", "jitter", "--probe", "loud"], "--probe: unknown probe \"loud\""),
        (&["cores", "jitter", "--duration", "soon"], "--duration: \"soon\" is not a duration"),
        (&["cores", "jitter", "--cpus", "9-2"], "--cpus \"9-2\": range \"9-2\" runs backwards"),
        (&["cores", "jitter", "--cpus", "4000", "--duration", "100ms"], "CPU 4000 is not online"),
        (
            &["cores", "jitter", "--probe", "timer", "--interval-us", "0", "--duration", "100ms"],
            "interval must be at least 1 µs",
        ),
        (&["cores", "top", "--pid", "999999999"], "--pid 999999999: no such process"),
    ];
    for (args, expected) in cases {
        let output = worknode(args);
        let message = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {message}");
        assert_eq!(message.lines().count(), 1, "{args:?}: {message}");
        assert!(message.contains(expected), "{args:?}: {message:?} lacks {expected:?}");
    }
}
