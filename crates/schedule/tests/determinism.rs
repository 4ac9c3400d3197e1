//! The same inputs give the same schedule whatever order members are listed in, and the
//! same schedule on every platform (pinned digests of fixed inputs).

#![allow(clippy::unwrap_used, reason = "a test fails loudly on an unexpected value")]

use sha2::{Digest, Sha256};
use worknode_schedule::{Algorithm, LeaderSchedule, Member, ScheduleParams, Stakes};

fn members() -> Vec<Member> {
    (0..40u64)
        .map(|i| {
            let mut key = [0u8; 32];
            key[0] = (i * 37 % 256) as u8;
            key[31] = i as u8;
            // Repeated stakes exercise every algorithm's tie handling.
            Member { id: 1_000 + i * 13 % 40, key: Some(key), stake: 1 + (i * i) % 7 * 100 }
        })
        .collect()
}

fn digest(schedule: &LeaderSchedule) -> String {
    let mut hasher = Sha256::new();
    for turn in schedule.upcoming(0) {
        hasher.update(turn.leader.to_le_bytes());
    }
    hasher.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect()
}

fn schedule(algorithm: Algorithm, members: Vec<Member>) -> LeaderSchedule {
    let params = ScheduleParams {
        algorithm,
        epoch: 17,
        cluster_seed: *b"worknode determinism test seed!!",
        ..ScheduleParams::default()
    };
    LeaderSchedule::compute(&Stakes::new(members).unwrap(), &params).unwrap()
}

#[test]
fn member_order_does_not_matter() {
    for algorithm in Algorithm::ALL {
        let forward = schedule(algorithm, members());
        let mut reversed = members();
        reversed.reverse();
        let mut rotated = members();
        rotated.rotate_left(17);
        assert_eq!(forward, schedule(algorithm, reversed), "{algorithm}");
        assert_eq!(forward, schedule(algorithm, rotated), "{algorithm}");
    }
}

/// Pinned outputs: a change here changes what every node of a cluster computes, so it
/// must be deliberate (and is a breaking change for mixed-version clusters).
#[test]
fn schedules_are_pinned() {
    let digests: Vec<(Algorithm, String)> =
        Algorithm::ALL.into_iter().map(|a| (a, digest(&schedule(a, members())))).collect();
    for (algorithm, digest) in &digests {
        println!("{algorithm}: {digest}");
    }
    let expected = [
        (Algorithm::FairRotation, "37a638866094ed98"),
        (Algorithm::StakeLottery, "f03c9ba3fe70ebe7"),
        (Algorithm::SolanaCompatible, "965b01719d24efe5"),
    ];
    for ((algorithm, digest), (expected_algorithm, expected_digest)) in digests.iter().zip(expected)
    {
        assert_eq!(*algorithm, expected_algorithm);
        assert_eq!(digest, expected_digest, "{algorithm} schedule changed");
    }
}
