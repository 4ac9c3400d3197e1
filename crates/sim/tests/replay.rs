//! A run is a function of its seed: the same seed gives the same trace, another seed
//! another one, and a planted bug is reported with the command that replays it.

use worknode_raft::PlantedBug;
use worknode_sim::faults::FaultKind;
use worknode_sim::world::clock::SECOND;
use worknode_sim::{run, RunConfig};

fn config(seed: u64) -> RunConfig {
    RunConfig {
        seed,
        members: 3,
        duration: 8 * SECOND,
        faults: FaultKind::ALL.to_vec(),
        bug: None,
        rotation: true,
        trace: false,
        trace_messages: false,
    }
}

#[test]
fn the_same_seed_gives_the_same_trace_and_another_seed_another() {
    let first = run(&config(11));
    let again = run(&config(11));
    assert_eq!(first.trace_digest, again.trace_digest);
    assert_eq!(first.operations, again.operations);
    assert!(first.failure().is_none(), "{}", first.line());
    assert!(first.operations > 100, "{}", first.line());
    let other = run(&config(12));
    assert_ne!(first.trace_digest, other.trace_digest);
}

#[test]
fn a_planted_bug_fails_a_check_and_says_how_to_replay_it() {
    let caught = (1..=20).map(|seed| {
        run(&RunConfig { bug: Some(PlantedBug::ReadWithoutReadIndex), ..config(seed) })
    });
    let report = caught
        .into_iter()
        .find(|report| report.failure().is_some())
        .unwrap_or_else(|| panic!("a linearizable read without a read index went unnoticed"));
    let details = report.failure_details();
    let replay = format!("worknode sim --seed {} ", report.config.seed);
    assert!(details.contains(&replay), "{details}");
    assert!(details.contains("--inject-bug read-without-read-index"), "{details}");
}
