//! `StakeLottery`: shares converge to stake shares (chi-square at p = 0.001).

#![allow(clippy::unwrap_used, reason = "a test fails loudly on an unexpected value")]

use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use worknode_schedule::{Algorithm, LeaderSchedule, Member, ScheduleParams, Stakes};

const TURNS: u64 = 1_000_000;

/// Upper 0.001 quantile of the chi-square distribution with `df` degrees of freedom
/// (Wilson–Hilferty; within a fraction of a percent for df ≥ 1).
fn chi_square_critical_p001(df: f64) -> f64 {
    const Z: f64 = 3.090_232_306;
    let a = 2.0 / (9.0 * df);
    df * (1.0 - a + Z * a.sqrt()).powi(3)
}

fn lottery(stakes: &Stakes, epoch: u64, seed: [u8; 32]) -> LeaderSchedule {
    let params = ScheduleParams {
        algorithm: Algorithm::StakeLottery,
        epoch,
        cluster_seed: seed,
        slots_per_epoch: TURNS,
        slots_per_turn: 1,
    };
    LeaderSchedule::compute(stakes, &params).unwrap()
}

#[test]
fn critical_values_match_tables() {
    // Published upper 0.001 points: df 1 → 10.828, 10 → 29.588, 63 → 103.44 (approx).
    assert!((chi_square_critical_p001(10.0) - 29.588).abs() < 0.2);
    assert!((chi_square_critical_p001(63.0) - 103.4).abs() < 0.5);
}

#[test]
fn shares_converge_to_stake_shares() {
    // A fixed generator: the test is deterministic, so it cannot flake.
    let mut runner = TestRunner::new_with_rng(
        Config { cases: 12, ..Config::default() },
        TestRng::deterministic_rng(RngAlgorithm::ChaCha),
    );
    let strategy = (prop::collection::vec(1u64..1_000, 2..64), 0u64..1 << 40, any::<[u8; 32]>());
    runner
        .run(&strategy, |(weights, epoch, seed)| {
            let members = weights
                .iter()
                .enumerate()
                .map(|(i, &stake)| Member { id: i as u64, key: None, stake })
                .collect();
            let stakes = Stakes::new(members).unwrap();
            let schedule = lottery(&stakes, epoch, seed);
            let mut counts = vec![0u64; weights.len()];
            for turn in schedule.upcoming(0) {
                counts[turn.leader_index as usize] += 1;
            }
            let total = stakes.total() as f64;
            let chi_square: f64 = weights
                .iter()
                .zip(&counts)
                .map(|(&w, &observed)| {
                    let expected = TURNS as f64 * w as f64 / total;
                    (observed as f64 - expected).powi(2) / expected
                })
                .sum();
            let critical = chi_square_critical_p001((weights.len() - 1) as f64);
            prop_assert!(
                chi_square < critical,
                "chi-square {chi_square:.1} ≥ {critical:.1} for {} members",
                weights.len()
            );
            Ok(())
        })
        .unwrap();
}

#[test]
fn seed_and_epoch_both_change_the_draws() {
    let stakes =
        Stakes::new((0..10).map(|i| Member { id: i, key: None, stake: 1 + i }).collect()).unwrap();
    let params = |epoch, seed| ScheduleParams {
        algorithm: Algorithm::StakeLottery,
        epoch,
        cluster_seed: seed,
        slots_per_epoch: 4_000,
        slots_per_turn: 4,
    };
    let leaders = |p: ScheduleParams| {
        let schedule = LeaderSchedule::compute(&stakes, &p).unwrap();
        schedule.upcoming(0).map(|t| t.leader).collect::<Vec<_>>()
    };
    let base = leaders(params(5, [1; 32]));
    assert_eq!(base, leaders(params(5, [1; 32])));
    assert_ne!(base, leaders(params(6, [1; 32])));
    assert_ne!(base, leaders(params(5, [2; 32])));
}
