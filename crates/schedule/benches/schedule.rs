//! One epoch of 432,000 slots at 4 slots per turn (108,000 turns) for 10, 1,000 and 65,536
//! members, every algorithm side by side with the straightforward baseline in the same
//! run: Agave's sort, rand 0.8 `WeightedIndex<u64>` + `ChaCha20Rng`, one draw per turn,
//! a `u32` per turn. Ends with a table of ratios read back from criterion's estimates.
//!
//! Run: `cargo bench -p worknode-schedule` (or `bench/schedule.sh`).

#![allow(clippy::unwrap_used, reason = "a test fails loudly on an unexpected value")]

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput};
use rand::distributions::{Distribution, WeightedIndex};
use rand::SeedableRng;
use worknode_schedule::{Algorithm, LeaderSchedule, Member, ScheduleParams, Stakes};

const SLOTS_PER_EPOCH: u64 = 432_000;
const SLOTS_PER_TURN: u64 = 4;
const MEMBER_COUNTS: [usize; 3] = [10, 1_000, 65_536];
const EPOCH: u64 = 612;
const LOOKUPS_PER_ITERATION: u64 = 1_024;
const GROUP: &str = "epoch";

/// Deterministic stakes spread over six orders of magnitude, with distinct keys.
fn stakes(count: usize) -> Stakes {
    let mut state = 0x2545_F491_4F6C_DD1Du64 ^ count as u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let members = (0..count as u64)
        .map(|id| {
            let mut key = [0u8; 32];
            for chunk in key.chunks_mut(8) {
                chunk.copy_from_slice(&next().to_le_bytes());
            }
            let stake = 1 + next() % 10u64.pow(1 + (next() % 6) as u32);
            Member { id, key: Some(key), stake }
        })
        .collect();
    Stakes::new(members).expect("bench stakes are valid")
}

fn params(algorithm: Algorithm) -> ScheduleParams {
    ScheduleParams {
        algorithm,
        epoch: EPOCH,
        cluster_seed: [42; 32],
        slots_per_epoch: SLOTS_PER_EPOCH,
        slots_per_turn: SLOTS_PER_TURN,
    }
}

/// The straightforward approach, as Agave computes it.
fn baseline(stakes: &Stakes) -> Vec<u32> {
    let mut order: Vec<(u64, [u8; 32], u32)> = stakes
        .members()
        .iter()
        .enumerate()
        .map(|(index, m)| (m.stake, m.key.expect("bench members have keys"), index as u32))
        .collect();
    order.sort_unstable_by(|l, r| r.0.cmp(&l.0).then_with(|| r.1.cmp(&l.1)));
    order.dedup_by(|later, kept| later.0 == kept.0 && later.1 == kept.1);
    let index = WeightedIndex::new(order.iter().map(|entry| entry.0)).expect("positive total");
    let mut seed = [0u8; 32];
    seed[..8].copy_from_slice(&EPOCH.to_le_bytes());
    let mut rng = rand_chacha::ChaCha20Rng::from_seed(seed);
    let turns = SLOTS_PER_EPOCH.div_ceil(SLOTS_PER_TURN);
    (0..turns).map(|_| order[index.sample(&mut rng)].2).collect()
}

fn bench_epochs(c: &mut Criterion) {
    let mut group = c.benchmark_group(GROUP);
    group.sample_size(30).measurement_time(Duration::from_secs(3));
    for count in MEMBER_COUNTS {
        let stakes = stakes(count);
        // The Solana-compatible schedule must equal the baseline before it is timed.
        let solana = LeaderSchedule::compute(&stakes, &params(Algorithm::SolanaCompatible))
            .expect("schedule");
        let reference = baseline(&stakes);
        let ours: Vec<u32> = solana.upcoming(0).map(|turn| turn.leader_index).collect();
        assert_eq!(ours, reference, "solana schedule differs from the baseline at {count} members");

        group.bench_with_input(BenchmarkId::new("baseline", count), &stakes, |b, stakes| {
            b.iter(|| baseline(black_box(stakes)))
        });
        for algorithm in Algorithm::ALL {
            let params = params(algorithm);
            group.bench_with_input(
                BenchmarkId::new(algorithm.name(), count),
                &stakes,
                |b, stakes| b.iter(|| LeaderSchedule::compute(black_box(stakes), &params)),
            );
        }
    }
    group.finish();

    let mut lookup = c.benchmark_group("leader_lookup");
    lookup.throughput(Throughput::Elements(LOOKUPS_PER_ITERATION));
    let schedule = LeaderSchedule::compute(&stakes(1_000), &params(Algorithm::FairRotation))
        .expect("schedule");
    let first = schedule.first_slot();
    // Scattered slots, so each lookup touches a different part of the table.
    let slots: Vec<u64> =
        (0..LOOKUPS_PER_ITERATION).map(|i| first + (i * 2_654_435_761) % SLOTS_PER_EPOCH).collect();
    lookup.bench_function("leader", |b| {
        b.iter(|| {
            let mut sum = 0u64;
            for &slot in &slots {
                sum = sum.wrapping_add(schedule.leader(black_box(slot)).unwrap_or(0));
            }
            sum
        })
    });
    lookup.finish();
}

fn criterion_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/criterion")
}

/// Median time in nanoseconds of one benchmark, from criterion's saved estimates.
fn median_ns(path: &Path) -> Option<f64> {
    let text = std::fs::read_to_string(path.join("new/estimates.json")).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    json["median"]["point_estimate"].as_f64()
}

fn print_table() {
    let dir = criterion_dir().join(GROUP);
    let mut rows = Vec::new();
    for count in MEMBER_COUNTS {
        let Some(base) = median_ns(&dir.join("baseline").join(count.to_string())) else {
            return;
        };
        let mut row = format!("| {count:>6} | {:>9.2} ms |", base / 1e6);
        for algorithm in Algorithm::ALL {
            let Some(ns) = median_ns(&dir.join(algorithm.name()).join(count.to_string())) else {
                return;
            };
            row.push_str(&format!(" {:>6.2} ms ({:.2}×) |", ns / 1e6, base / ns));
        }
        rows.push(row);
    }
    let lookup = median_ns(&criterion_dir().join("leader_lookup/leader"))
        .map(|ns| ns / LOOKUPS_PER_ITERATION as f64);
    println!();
    println!(
        "One epoch: {SLOTS_PER_EPOCH} slots, {SLOTS_PER_TURN} slots per turn; median of criterion \
         samples; (N×) = baseline time / this time, above 1 is faster than the baseline"
    );
    println!();
    println!("| members | baseline (rand WeightedIndex + ChaCha20) | fair | lottery | solana |");
    println!("|---:|---:|---:|---:|---:|");
    for row in rows {
        println!("{row}");
    }
    if let Some(ns) = lookup {
        println!();
        println!("leader(slot): {ns:.2} ns per lookup (1,000 members, scattered slots)");
    }
}

fn main() {
    let mut criterion =
        Criterion::default().output_directory(&criterion_dir()).configure_from_args();
    bench_epochs(&mut criterion);
    criterion.final_summary();
    print_table();
}
