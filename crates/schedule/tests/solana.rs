//! `SolanaCompatible` against the expected outputs published in Agave's own tests
//! (anza-xyz/agave: leader-schedule/src/lib.rs and ledger/src/leader_schedule.rs), and
//! against rand 0.8's `WeightedIndex` + `ChaChaRng`, the code Agave runs.

#![allow(clippy::unwrap_used, reason = "a test fails loudly on an unexpected value")]

use proptest::prelude::*;
use rand::distributions::{Distribution, WeightedIndex};
use rand::SeedableRng;
use sha2::{Digest, Sha256};
use worknode_schedule::{Algorithm, LeaderSchedule, Member, ScheduleParams, Stakes};

/// Agave's `pubkey_from_u16`: the number little-endian in bytes 0..2, the rest zero.
fn key_from_u16(n: u16) -> [u8; 32] {
    let mut key = [0u8; 32];
    key[..2].copy_from_slice(&n.to_le_bytes());
    key
}

fn solana_schedule(stakes: &Stakes, epoch: u64, slots: u64, repeat: u64) -> LeaderSchedule {
    let params = ScheduleParams {
        algorithm: Algorithm::SolanaCompatible,
        epoch,
        cluster_seed: [0xAB; 32],
        slots_per_epoch: slots,
        slots_per_turn: repeat,
    };
    LeaderSchedule::compute(stakes, &params).unwrap()
}

/// Leader index (into the input list) for every slot of the epoch.
fn slot_leader_order(epoch: u64, stakes: &[u64], slots: u64, repeat: u64) -> Vec<usize> {
    // Ids in input order make canonical order equal input order; keys are distinct so
    // that ties (none here) would be broken the way Agave breaks them.
    let members = stakes
        .iter()
        .enumerate()
        .map(|(i, &stake)| Member { id: i as u64, key: Some(key_from_u16(i as u16)), stake })
        .collect();
    let schedule = solana_schedule(&Stakes::new(members).unwrap(), epoch, slots, repeat);
    let first = schedule.first_slot();
    (first..first + slots).map(|slot| schedule.leader(slot).unwrap() as usize).collect()
}

/// (epoch, stakes in input order, slots, slots per draw, expected leader per slot).
type ExactCase = (u64, &'static [u64], u64, u64, &'static [usize]);

#[test]
fn exact_order_matches_agave() {
    #[rustfmt::skip]
    let cases: &[ExactCase] = &[
        (1, &[10, 20, 30], 12, 1, &[1, 1, 2, 1, 1, 0, 0, 1, 2, 1, 0, 1]),
        (1, &[10, 20, 30], 12, 2, &[1, 1, 1, 1, 2, 2, 1, 1, 1, 1, 0, 0]),
        (1, &[30, 10, 20], 12, 1, &[2, 2, 0, 2, 2, 1, 1, 2, 0, 2, 1, 2]),
        (1, &[30, 10, 20], 12, 2, &[2, 2, 2, 2, 0, 0, 2, 2, 2, 2, 1, 1]),
        (1, &[10, 20, 25, 30], 12, 1, &[2, 2, 3, 1, 2, 0, 1, 1, 3, 2, 1, 2]),
        (1, &[10, 20, 25, 30, 35, 40, 100], 15, 1,
            &[4, 5, 6, 3, 4, 1, 2, 3, 6, 4, 2, 4, 5, 6, 6]),
        (1, &[10, 20, 25, 30, 35, 40, 100, 1000], 15, 1,
            &[7, 7, 7, 7, 7, 4, 6, 7, 7, 7, 6, 7, 7, 7, 7]),
        (1, &[10, 20, 25, 30, 35, 40, 100, 1000, 10_000], 20, 1,
            &[8, 8, 8, 8, 8, 7, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 7]),
        (1, &[10, 20, 25, 30, 35, 40, 100, 1000, 10_000], 25, 1,
            &[8, 8, 8, 8, 8, 7, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 7, 8, 8, 8, 8, 8]),
        (457468, &[10, 20, 30], 12, 1, &[2, 2, 0, 1, 0, 2, 1, 2, 1, 2, 2, 2]),
        (457468, &[10, 20, 30], 12, 2, &[2, 2, 2, 2, 0, 0, 1, 1, 0, 0, 2, 2]),
        (457469, &[10, 20, 30], 12, 1, &[1, 2, 2, 2, 2, 2, 2, 1, 0, 2, 2, 0]),
        (457470, &[10, 20, 30], 12, 1, &[2, 1, 1, 1, 1, 1, 1, 1, 1, 2, 0, 2]),
        (3466545, &[10, 20, 30], 12, 1, &[2, 2, 0, 0, 2, 1, 1, 1, 0, 0, 2, 2]),
        (3466545, &[10, 20, 30], 13, 1, &[2, 2, 0, 0, 2, 1, 1, 1, 0, 0, 2, 2, 1]),
        (3466545, &[10, 20, 30], 14, 1, &[2, 2, 0, 0, 2, 1, 1, 1, 0, 0, 2, 2, 1, 2]),
        (3466545, &[10, 20, 30], 14, 2, &[2, 2, 2, 2, 0, 0, 0, 0, 2, 2, 1, 1, 1, 1]),
    ];
    for &(epoch, stakes, slots, repeat, expected) in cases {
        assert_eq!(
            slot_leader_order(epoch, stakes, slots, repeat),
            expected,
            "epoch {epoch}, stakes {stakes:?}, {slots} slots, {repeat} per draw"
        );
    }
}

/// Agave's hashed long schedules: 65,536 members keyed by `key_from_u16(i)` with stake
/// `i^pow` (so member 0 has stake 0 unless pow = 0, and pow = 0 is all ties broken by
/// key), one draw per slot; the SHA-256 of the leaders' keys, base58.
#[test]
fn long_hashed_schedules_match_agave() {
    let cases: &[(u64, u64, u32, &str)] = &[
        (42, 1_000, 0, "4XU6LEarBUmBkAvXRsjeyLu3N8CcgrvbRFrNiJi2jECk"),
        (42, 10_000, 0, "G2MGFXgdLATXWr1336i8PTcaUMc4GbJRMJdbxiarCttr"),
        (42, 10_000, 1, "9xLLKyyqF5YrdwPSDbqh5oVamSF7cqPqQLxEyHTexEiP"),
        (42, 10_000, 2, "AJ6NQi2p5SnRz9mqESqkW2PwVoT2vYy1fmKdaHxNFUAf"),
        (42, 10_000, 3, "2oLjZggMwDTQhzdB4KN5VQisyeRw6MZbBBdjosNZK5xR"),
        (346436, 1_000, 0, "59SnXMS4NzTSib8TNykiJgFQBeAVxUqsAvQm7JtkodPQ"),
        (346436, 1_000, 1, "BEB2nC9MBALPbgwGKGfHu6V88QG7doScx65cAd6VjnRk"),
        (346436, 1_000, 2, "3aLE5S6xLEU9yg5EZQH27qrC86aC2dG8KLh4NbcapXpy"),
        (346436, 1_000, 3, "H2bw3Y2AjxJyK7smy1ZBB4LJ7MY3i9bPQM3YdAChAww2"),
        (454357, 10_000, 0, "4BLanrC5t7vzNXx62javKtjCmCkd8yZfZpVrjT4eUpNQ"),
        (454357, 10_000, 1, "FyvbdxpVchendERMnzH2KDceqydpXtJarrfFXoLQEXgQ"),
        (454357, 10_000, 2, "7KwK44Y7V3GzJLN8aGZtM8EEfAYmRvaiDyKYV6jg4MQn"),
        (454357, 10_000, 3, "E9XL5BLhCJ4Emyfs8jTUsQetfA8QZj78LcnN63dPp7jJ"),
    ];
    for &(epoch, slots, pow, expected) in cases {
        let members = (0..=u16::MAX)
            .map(|i| Member {
                id: u64::from(i),
                key: Some(key_from_u16(i)),
                stake: u64::from(i).pow(pow),
            })
            .collect();
        let stakes = Stakes::new(members).unwrap();
        let schedule = solana_schedule(&stakes, epoch, slots, 1);
        let mut hasher = Sha256::new();
        for slot in schedule.first_slot()..=schedule.last_slot() {
            let leader = schedule.leader_index(slot).unwrap() as usize;
            hasher.update(schedule.members()[leader].key.unwrap());
        }
        let hash = bs58::encode(hasher.finalize()).into_string();
        assert_eq!(hash, expected, "epoch {epoch}, {slots} slots, stake i^{pow}");
    }
}

#[test]
fn exact_duplicates_are_dropped_like_agave() {
    // Agave removes adjacent equal (key, stake) entries after sorting: listing a vote
    // account twice must not double its weight.
    let key = key_from_u16(7);
    let with_duplicate = Stakes::new(vec![
        Member { id: 1, key: Some(key_from_u16(1)), stake: 10 },
        Member { id: 2, key: Some(key), stake: 20 },
        Member { id: 3, key: Some(key), stake: 20 },
    ])
    .unwrap();
    let without = Stakes::new(vec![
        Member { id: 1, key: Some(key_from_u16(1)), stake: 10 },
        Member { id: 2, key: Some(key), stake: 20 },
    ])
    .unwrap();
    let a = solana_schedule(&with_duplicate, 9, 400, 4);
    let b = solana_schedule(&without, 9, 400, 4);
    let leaders = |s: &LeaderSchedule| s.upcoming(0).map(|t| t.leader).collect::<Vec<_>>();
    assert_eq!(leaders(&a), leaders(&b));
    assert!(!leaders(&a).contains(&3), "the duplicate with the larger id never leads");
}

/// Agave's own code path: sort, rand 0.8 `WeightedIndex<u64>`, rand_chacha `ChaChaRng`.
fn reference_turns(stakes: &Stakes, epoch: u64, turns: usize) -> Vec<u64> {
    let mut order: Vec<&Member> = stakes.members().iter().collect();
    order.sort_by(|l, r| r.stake.cmp(&l.stake).then_with(|| r.key.cmp(&l.key)));
    order.dedup_by(|later, kept| later.stake == kept.stake && later.key == kept.key);
    let index = WeightedIndex::new(order.iter().map(|m| m.stake)).unwrap();
    let mut seed = [0u8; 32];
    seed[..8].copy_from_slice(&epoch.to_le_bytes());
    let mut rng = rand_chacha::ChaChaRng::from_seed(seed);
    (0..turns).map(|_| order[index.sample(&mut rng)].id).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn matches_rand_weighted_index(
        stakes in prop::collection::vec(
            prop_oneof![0u64..4, 1u64..1_000, 1u64..(u64::MAX >> 8)], 1..200),
        epoch in any::<u64>(),
    ) {
        prop_assume!(stakes.iter().any(|&s| s > 0));
        let members = stakes.iter().enumerate().map(|(i, &stake)| Member {
            id: i as u64,
            // Few distinct keys, so equal stakes often tie and exercise the key order.
            key: Some(key_from_u16((i % 5) as u16)),
            stake,
        }).collect();
        let stakes = Stakes::new(members).unwrap();
        let schedule = solana_schedule(&stakes, epoch % 1_000_000, 2_000, 4);
        let ours: Vec<u64> = schedule.upcoming(0).map(|turn| turn.leader).collect();
        let reference = reference_turns(&stakes, epoch % 1_000_000, ours.len());
        // Among exact duplicates Agave keeps an arbitrary one; compare keys, not ids.
        let key_of = |id: u64| stakes.members()[stakes.index_of(id).unwrap()].key;
        let ours: Vec<_> = ours.into_iter().map(key_of).collect();
        let reference: Vec<_> = reference.into_iter().map(key_of).collect();
        prop_assert_eq!(ours, reference);
    }
}
