//! `SolanaCompatible`: Solana's (Agave's) leader schedule, bit for bit.
//!
//! Agave's rule for an epoch: sort the (vote key, stake) list by stake descending, ties by
//! key descending (bytewise), drop adjacent duplicates of the same (key, stake); seed
//! ChaCha20 with the epoch as little-endian u64 in bytes 0..8 (the rest zero); then, once
//! per `slots_per_turn` slots (Agave's `repeat`), draw with rand 0.8's `WeightedIndex<u64>`
//! semantics: a uniform value in `[0, total)` by widening multiply with rejection above a
//! fixed zone, then the index of the first prefix sum greater than the value.
//!
//! The search for that index uses a guide table (one starting point per 1/`buckets` of the
//! total) instead of a plain binary search, so a draw costs the random value plus a short
//! scan; the result is the same index by construction.

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};

use crate::schedule::TurnIndex;
use crate::stakes::Stakes;

/// Why a stake table cannot be used with Solana's rule.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SolanaError {
    /// Solana orders members by key, so every member needs one.
    #[error("member {id} has no key: the solana algorithm needs a 32-byte key for every member")]
    MissingKey {
        /// The member without a key.
        id: u64,
    },
}

/// Agave's ordering of the stake table: canonical member indexes, deduplicated.
pub(crate) fn agave_order(stakes: &Stakes) -> Result<Vec<u32>, SolanaError> {
    let members = stakes.members();
    let mut keyed = Vec::with_capacity(members.len());
    for (index, member) in members.iter().enumerate() {
        let key = member.key.ok_or(SolanaError::MissingKey { id: member.id })?;
        keyed.push((member.stake, key, index as u32));
    }
    // Stake descending, key descending; the canonical index (ascending id) breaks the
    // remaining tie so that the surviving duplicate is always the same member.
    keyed.sort_unstable_by(|left, right| {
        right.0.cmp(&left.0).then_with(|| right.1.cmp(&left.1)).then_with(|| left.2.cmp(&right.2))
    });
    keyed.dedup_by(|later, kept| later.0 == kept.0 && later.1 == kept.1);
    Ok(keyed.into_iter().map(|(_, _, index)| index).collect())
}

/// rand 0.8's `WeightedIndex<u64>` over a fixed weight list, with a guide table.
#[derive(Debug)]
pub(crate) struct WeightedIndexCompat {
    /// Prefix sums without the last (the total), as rand 0.8 keeps them.
    prefix: Vec<u64>,
    total: u64,
    /// Largest low word accepted by the widening-multiply sampler.
    zone: u64,
    /// `guide[b]` = the answer for the smallest value in bucket `b`; the scan starts there.
    guide: Vec<u32>,
    /// Bucket of a value `v` is `(v · bucket_scale) >> 64`.
    bucket_scale: u128,
}

impl WeightedIndexCompat {
    pub(crate) fn new(weights: impl IntoIterator<Item = u64>) -> Self {
        let mut prefix = Vec::new();
        let mut total: u64 = 0;
        for weight in weights {
            total = total.checked_add(weight).expect("Stakes guarantees the total fits in u64");
            prefix.push(total);
        }
        // rand 0.8 keeps every running total but the last one (the total itself).
        prefix.pop();
        assert!(total > 0);
        let rejected = (u64::MAX - total).wrapping_add(1) % total;
        let zone = u64::MAX - rejected;
        let bucket_count = (prefix.len() + 1).next_power_of_two();
        // bucket(v) = (v · scale) >> 64 with scale = ⌊bucket_count · 2^64 / total⌋ ≥ 1, which
        // is monotonic in v and below bucket_count for every v < total.
        let bucket_scale = ((bucket_count as u128) << 64) / u128::from(total);
        assert!(bucket_scale >= 1);
        let mut guide = Vec::with_capacity(bucket_count);
        let mut answer = 0usize;
        for bucket in 0..bucket_count as u128 {
            // Every v in this bucket is at least `lower`, so answer(lower) ≤ answer(v):
            // scanning forward from it finds the right index.
            let lower = (bucket << 64) / bucket_scale;
            while answer < prefix.len() && u128::from(prefix[answer]) <= lower {
                answer += 1;
            }
            guide.push(answer as u32);
        }
        Self { prefix, total, zone, guide, bucket_scale }
    }

    /// rand 0.8's `UniformInt::<u64>::sample` for `[0, total)`.
    #[inline]
    fn uniform(&self, rng: &mut impl RngCore) -> u64 {
        loop {
            let wide = u128::from(rng.next_u64()) * u128::from(self.total);
            if (wide as u64) <= self.zone {
                return (wide >> 64) as u64;
            }
        }
    }

    /// The index of the first prefix sum greater than `value`.
    #[inline]
    fn index_of(&self, value: u64) -> u32 {
        let bucket = ((u128::from(value) * self.bucket_scale) >> 64) as usize;
        let mut index = self.guide[bucket] as usize;
        while index < self.prefix.len() && self.prefix[index] <= value {
            index += 1;
        }
        index as u32
    }

    /// One draw, as `WeightedIndex::sample` would make it.
    #[inline]
    pub(crate) fn sample(&self, rng: &mut impl RngCore) -> u32 {
        self.index_of(self.uniform(rng))
    }
}

/// Agave's seed for an epoch.
pub(crate) fn epoch_seed(epoch: u64) -> [u8; 32] {
    let mut seed = [0u8; 32];
    seed[..8].copy_from_slice(&epoch.to_le_bytes());
    seed
}

/// Computes `turns` leaders, one Agave draw per turn.
pub(crate) fn fill<I: TurnIndex>(
    stakes: &Stakes,
    epoch: u64,
    turns: u32,
    out: &mut Vec<I>,
) -> Result<(), SolanaError> {
    assert!(out.is_empty());
    let order = agave_order(stakes)?;
    let members = stakes.members();
    let index = WeightedIndexCompat::new(order.iter().map(|&m| members[m as usize].stake));
    let mut rng = ChaCha20Rng::from_seed(epoch_seed(epoch));
    out.reserve_exact(turns as usize);
    out.extend((0..turns).map(|_| I::from_index(order[index.sample(&mut rng) as usize])));
    assert_eq!(out.len(), turns as usize);
    Ok(())
}
