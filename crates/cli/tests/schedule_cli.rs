//! `worknode schedule` end to end: the real binary, real files, every bad input.

#![allow(clippy::unwrap_used, reason = "a test fails loudly on an unexpected value")]

use std::path::PathBuf;
use std::process::{Command, Output};

fn worknode(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_worknode")).args(args).output().expect("run worknode")
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).expect("utf-8 stdout")
}

fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).expect("utf-8 stderr")
}

/// A file under this test binary's scratch directory.
fn scratch(name: &str, contents: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::write(&path, contents).expect("write scratch file");
    path
}

/// Agave's `pubkey_from_u16` as 64 hex digits.
fn key_hex(n: u16) -> String {
    let mut key = [0u8; 32];
    key[..2].copy_from_slice(&n.to_le_bytes());
    key.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs with bad input and checks the contract: status 2, one line naming the problem,
/// nothing on stdout, no panic.
fn assert_bad_input(args: &[&str], expected: &str) {
    let output = worknode(args);
    let message = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{args:?}: {message}");
    assert!(output.stdout.is_empty(), "{args:?} printed to stdout");
    assert_eq!(message.lines().count(), 1, "{args:?}: not one line: {message}");
    assert!(message.contains(expected), "{args:?}: {message:?} lacks {expected:?}");
    assert!(!message.contains("panicked"), "{args:?} panicked: {message}");
}

#[test]
fn table_lists_turns_from_a_slot() {
    let output = worknode(&["schedule", "--stakes", "a=3,b=1", "--from-slot", "8", "--count", "3"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    let rows: Vec<&str> = text.lines().skip(2).collect();
    assert_eq!(rows.len(), 3, "{text}");
    assert!(rows[0].trim_start().starts_with("2 "), "first listed turn is turn 2: {text}");
    assert!(rows[0].contains(" 8 ") && rows[0].contains(" 11 "), "{text}");
}

#[test]
fn json_turns_and_summary() {
    let output = worknode(&["schedule", "--stakes", "a=3,b=1", "--json", "--count", "4"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let turns: serde_json::Value = serde_json::from_str(&stdout(&output)).expect("json");
    let turns = turns.as_array().expect("array of turns");
    assert_eq!(turns.len(), 4);
    assert_eq!(turns[1]["first_slot"], 4);
    assert_eq!(turns[1]["last_slot"], 7);
    let leaders: Vec<&str> = turns.iter().map(|t| t["leader"].as_str().unwrap()).collect();
    assert_eq!(leaders.iter().filter(|&&l| l == "a").count(), 3, "{leaders:?}");

    let output = worknode(&["schedule", "--stakes", "a=3,b=1", "--summary", "--json"]);
    let summary: serde_json::Value = serde_json::from_str(&stdout(&output)).expect("json");
    assert_eq!(summary["turns"], 108_000);
    assert_eq!(summary["members"][0]["id"], "a");
    assert_eq!(summary["members"][0]["turns"], 81_000);
    assert!(summary["generation_ms"].as_f64().unwrap() >= 0.0);
}

#[test]
fn solana_from_a_file_matches_agave() {
    let file = scratch(
        "agave.csv",
        &format!(
            "# Agave's test: stakes 10, 20, 30 with keys 0, 1, 2\nm0,10,{}\nm1,20,{}\nm2,30,{} # comment\n",
            key_hex(0),
            key_hex(1),
            key_hex(2)
        ),
    );
    let output = worknode(&[
        "schedule",
        "--stakes",
        file.to_str().unwrap(),
        "--algorithm",
        "solana",
        "--epoch",
        "1",
        "--slots-per-epoch",
        "12",
        "--slots-per-turn",
        "1",
        "--from-slot",
        "12",
        "--count",
        "12",
        "--json",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let turns: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    let leaders: Vec<String> = turns
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["leader"].as_str().unwrap().to_owned())
        .collect();
    let expected: Vec<String> =
        [1, 1, 2, 1, 1, 0, 0, 1, 2, 1, 0, 1].iter().map(|i| format!("m{i}")).collect();
    assert_eq!(leaders, expected);
}

#[test]
fn listing_order_does_not_change_the_schedule() {
    let forward = scratch("forward.csv", "x,5\ny,3\nz,2\nw,7\n");
    let backward = scratch("backward.csv", "w,7\nz,2\ny,3\nx,5\n");
    for algorithm in ["fair", "lottery"] {
        let run = |file: &PathBuf| {
            stdout(&worknode(&[
                "schedule",
                "--stakes",
                file.to_str().unwrap(),
                "--algorithm",
                algorithm,
                "--count",
                "200",
                "--seed",
                "99",
            ]))
        };
        assert_eq!(run(&forward), run(&backward), "{algorithm}");
    }
}

#[test]
fn svg_draws_a_strip_per_member() {
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("rotation.svg");
    let output = worknode(&[
        "schedule",
        "--stakes",
        "alpha=5,beta=3,gamma=2",
        "--svg",
        path.to_str().unwrap(),
        "--summary",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let svg = std::fs::read_to_string(&path).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    for name in ["alpha", "beta", "gamma"] {
        assert!(svg.contains(&format!(">{name}</text>")), "no row for {name}");
    }
    assert!(svg.contains("50.00% of turns"), "alpha's share is shown");
}

#[test]
fn bad_input_is_one_line_and_status_2() {
    let malformed = scratch("malformed.csv", "a,1\n# fine\nb;2\n");
    let not_number = scratch("not_number.csv", "a,1\nb,-4\n");
    let short_key = scratch("short_key.csv", "a,1,3yZe7d\n");
    let no_keys = scratch("no_keys.csv", "a,1,11111111111111111111111111111111\nb,2\n");
    let zero = scratch("zero.csv", "a,0\nb,0\n");
    let duplicate = scratch("duplicate.csv", "a,1\nb,1\na,2\n");
    let empty = scratch("empty.csv", "# nothing here\n\n");
    let path = |p: &PathBuf| p.to_str().unwrap().to_owned();
    let cases: Vec<(Vec<String>, String)> = vec![
        (vec!["--stakes".into(), "missing.csv".into()], "missing.csv: no such file".into()),
        (
            vec!["--stakes".into(), path(&malformed)],
            format!("{}:3: expected `id,stake[,key]`", path(&malformed)),
        ),
        (
            vec!["--stakes".into(), path(&not_number)],
            format!("{}:2: stake \"-4\"", path(&not_number)),
        ),
        (
            vec!["--stakes".into(), path(&short_key)],
            format!("{}:1: key \"3yZe7d\" is 4 bytes", path(&short_key)),
        ),
        (
            vec!["--stakes".into(), path(&no_keys), "--algorithm".into(), "solana".into()],
            format!("{}:2: member \"b\" has no key", path(&no_keys)),
        ),
        (vec!["--stakes".into(), path(&zero)], "every member has stake 0".into()),
        (
            vec!["--stakes".into(), path(&duplicate)],
            format!("{}:3: member \"a\" is listed again", path(&duplicate)),
        ),
        (vec!["--stakes".into(), path(&empty)], "no members".into()),
        (
            vec!["--stakes".into(), "a=1".into(), "--algorithm".into(), "raft".into()],
            "unknown algorithm \"raft\"".into(),
        ),
        (vec!["--stakes".into(), "a=1,b".into()], "--stakes entry 2".into()),
        (
            vec!["--stakes".into(), "a=1:0x12".into()],
            "key \"0x12\" is neither 64 hex digits nor base58".into(),
        ),
        (
            vec!["--stakes".into(), "a=1".into(), "--seed".into(), "salt".into()],
            "--seed \"salt\"".into(),
        ),
        (
            vec!["--stakes".into(), "a=1".into(), "--from-slot".into(), "432000".into()],
            "--from-slot 432000 is not in epoch 0".into(),
        ),
        (
            vec!["--stakes".into(), "a=1".into(), "--slots-per-turn".into(), "0".into()],
            "--slots-per-turn".into(),
        ),
        (
            vec!["--stakes".into(), "a=1".into(), "--epoch".into(), "x".into()],
            "invalid value 'x' for '--epoch".into(),
        ),
        (vec![], "required arguments were not provided: --stakes".into()),
    ];
    for (args, expected) in cases {
        let mut full = vec!["schedule"];
        full.extend(args.iter().map(String::as_str));
        assert_bad_input(&full, &expected);
    }
}
