//! `StakeLottery`: one stake-weighted random draw per turn, O(1) per draw.
//!
//! The randomness is ChaCha20 keyed by the cluster seed, on the stream numbered by the
//! epoch, so every epoch gets an independent sequence that any node can recompute. Draws
//! use Vose's alias method built with exact integer arithmetic, so the table (and with it
//! the schedule) is identical on every platform.
//!
//! A draw takes one random word: its widening product with the column count gives the
//! column (high half) and a uniform fraction (low half) for the keep-or-alias coin. With
//! `m` columns and a `b`-bit word every column and every coin is exact to within
//! `2^-b`, so the draw's distribution is within total variation `m · 2^-b` of the stake
//! shares. Tables of up to 2^16 columns draw 32-bit words (within 2^-16, and half the
//! ChaCha20 output per turn, which is most of the cost); larger ones draw 64-bit words.

use rand_chacha::{ChaCha20Core, ChaCha20Rng};
use rand_core::block::BlockRngCore;
use rand_core::{RngCore, SeedableRng};

use crate::schedule::TurnIndex;
use crate::stakes::Stakes;

/// One column of the alias table.
#[derive(Clone, Copy, Debug)]
struct Column {
    /// Keep `member` when the low word of the draw is below this; otherwise take `alias`.
    keep_below: u64,
    member: u32,
    alias: u32,
}

/// Vose's alias table over the members with positive stake.
#[derive(Debug)]
pub(crate) struct AliasTable {
    columns: Vec<Column>,
}

impl AliasTable {
    /// Builds the table exactly: column `j` keeps its own member with probability
    /// `w_j·m / W` (m columns, total W) and hands the rest of its mass to one alias.
    pub(crate) fn new(stakes: &Stakes) -> Self {
        let members: Vec<u32> = (0..stakes.len() as u32)
            .filter(|&index| stakes.members()[index as usize].stake > 0)
            .collect();
        let column_count = members.len() as u128;
        let total = u128::from(stakes.total());
        // Mass of each column in units where a full column holds `total`.
        let mut mass: Vec<u128> = members
            .iter()
            .map(|&index| u128::from(stakes.members()[index as usize].stake) * column_count)
            .collect();
        let mut columns: Vec<Column> = members
            .iter()
            .map(|&member| Column { keep_below: u64::MAX, member, alias: member })
            .collect();
        let (mut small, mut large): (Vec<usize>, Vec<usize>) =
            (0..members.len()).partition(|&column| mass[column] < total);
        // Stacks popped from the back: the order is fixed by the canonical member order.
        while let (Some(&light), Some(&heavy)) = (small.last(), large.last()) {
            small.pop();
            assert!(mass[light] < total && mass[heavy] >= total);
            // mass < total ≤ u64::MAX, so the shift stays within u128.
            columns[light].keep_below = ((mass[light] << 64) / total) as u64;
            columns[light].alias = members[heavy];
            mass[heavy] -= total - mass[light];
            mass[light] = total;
            if mass[heavy] < total {
                large.pop();
                small.push(heavy);
            }
        }
        // Exact arithmetic leaves every unpaired column holding exactly one full column.
        for column in small.into_iter().chain(large) {
            assert_eq!(mass[column], total, "alias table column {column} lost mass");
        }
        Self { columns }
    }

    /// Most columns drawn with 32-bit words.
    pub(crate) const NARROW_COLUMNS_MAX: usize = 1 << 16;

    /// Draws one member index from one 32-bit random value.
    #[inline]
    pub(crate) fn draw_narrow(&self, random: u32) -> u32 {
        debug_assert!(self.columns.len() <= Self::NARROW_COLUMNS_MAX);
        let wide = u64::from(random) * self.columns.len() as u64;
        let column = &self.columns[(wide >> 32) as usize];
        // The low half, placed in the top of a u64, against the 64-bit threshold.
        if (wide << 32) < column.keep_below {
            column.member
        } else {
            column.alias
        }
    }

    /// Draws one member index from one 64-bit random value.
    #[inline]
    pub(crate) fn draw(&self, random: u64) -> u32 {
        let wide = u128::from(random) * self.columns.len() as u128;
        let column = &self.columns[(wide >> 64) as usize];
        if (wide as u64) < column.keep_below {
            column.member
        } else {
            column.alias
        }
    }
}

/// The ChaCha20 generator for one epoch of a cluster: key = cluster seed, stream = epoch.
pub(crate) fn epoch_rng(cluster_seed: [u8; 32], epoch: u64) -> ChaCha20Rng {
    let mut rng = ChaCha20Rng::from_seed(cluster_seed);
    rng.set_stream(epoch);
    rng
}

/// The epoch's draw generator: a ChaCha20 block core keyed by the first 32 bytes of the
/// epoch's stream. Working on whole 64-word blocks keeps per-draw bookkeeping out of the
/// loop (the stream/word-position API lives only on the buffered wrapper).
fn epoch_core(cluster_seed: [u8; 32], epoch: u64) -> ChaCha20Core {
    let mut key = [0u8; 32];
    epoch_rng(cluster_seed, epoch).fill_bytes(&mut key);
    ChaCha20Core::from_seed(key)
}

/// Computes `turns` leaders by independent stake-weighted draws.
pub(crate) fn fill<I: TurnIndex>(
    stakes: &Stakes,
    epoch: u64,
    cluster_seed: [u8; 32],
    turns: u32,
    out: &mut Vec<I>,
) {
    assert!(out.is_empty());
    let table = AliasTable::new(stakes);
    let mut core = epoch_core(cluster_seed, epoch);
    let mut block = <ChaCha20Core as BlockRngCore>::Results::default();
    out.reserve_exact(turns as usize);
    let narrow = table.columns.len() <= AliasTable::NARROW_COLUMNS_MAX;
    while out.len() < turns as usize {
        core.generate(&mut block);
        let words: &[u32] = block.as_ref();
        let remaining = turns as usize - out.len();
        if narrow {
            let words = &words[..remaining.min(words.len())];
            out.extend(words.iter().map(|&word| I::from_index(table.draw_narrow(word))));
        } else {
            let pairs = words.chunks_exact(2).take(remaining);
            out.extend(pairs.map(|pair| {
                let word = u64::from(pair[0]) | u64::from(pair[1]) << 32;
                I::from_index(table.draw(word))
            }));
        }
    }
    assert_eq!(out.len(), turns as usize);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stakes::Member;

    fn stakes(weights: &[u64]) -> Stakes {
        let members = weights
            .iter()
            .enumerate()
            .map(|(id, &stake)| Member { id: id as u64, key: None, stake })
            .collect();
        Stakes::new(members).unwrap()
    }

    /// The probability the table gives each member, summed over columns, in units of 2^-64.
    fn table_probabilities(table: &AliasTable, member_count: usize) -> Vec<f64> {
        let mut probability = vec![0.0; member_count];
        let column_share = 1.0 / table.columns.len() as f64;
        for column in &table.columns {
            let keep = column.keep_below as f64 / 2f64.powi(64);
            probability[column.member as usize] += column_share * keep;
            probability[column.alias as usize] += column_share * (1.0 - keep);
        }
        probability
    }

    #[test]
    fn table_reproduces_stake_shares() {
        let weights = [1, 0, 7, 3, 3, 10_000, 42];
        let stakes = stakes(&weights);
        let probability = table_probabilities(&AliasTable::new(&stakes), weights.len());
        for (index, &weight) in weights.iter().enumerate() {
            let expected = weight as f64 / stakes.total() as f64;
            assert!(
                (probability[index] - expected).abs() < 1e-12,
                "member {index}: {} vs {expected}",
                probability[index]
            );
        }
    }

    #[test]
    fn zero_stake_member_is_never_drawn() {
        let table = AliasTable::new(&stakes(&[0, 5, 0, 1]));
        for random in [0, 1, u64::MAX / 3, u64::MAX / 2, u64::MAX - 1, u64::MAX] {
            let member = table.draw(random);
            assert!(member == 1 || member == 3, "drew {member}");
            let member = table.draw_narrow((random >> 32) as u32);
            assert!(member == 1 || member == 3, "drew {member}");
        }
    }

    /// Every 32-bit word, bucketed coarsely: the narrow draw's frequencies match the
    /// table's exact probabilities to within the documented 2^-32 per column.
    #[test]
    fn narrow_draws_follow_the_table() {
        let weights = [3, 1, 4, 1, 5, 9, 2, 6];
        let stakes = stakes(&weights);
        let table = AliasTable::new(&stakes);
        let mut counts = [0u64; 8];
        // Every 4096th word: 2^20 draws spread evenly over the whole 32-bit range.
        for word in (0..=u32::MAX).step_by(4096) {
            counts[table.draw_narrow(word) as usize] += 1;
        }
        let draws: u64 = counts.iter().sum();
        for (index, &weight) in weights.iter().enumerate() {
            let expected = weight as f64 / stakes.total() as f64;
            let observed = counts[index] as f64 / draws as f64;
            assert!((observed - expected).abs() < 1e-4, "member {index}: {observed} vs {expected}");
        }
    }

    #[test]
    fn epochs_get_distinct_streams() {
        let seed = [7; 32];
        let first: Vec<u64> = (0..4).map(|_| epoch_rng(seed, 1).next_u64()).collect();
        let mut other = epoch_rng(seed, 2);
        assert_ne!(first[0], other.next_u64());
        assert_eq!(first[0], first[1], "same epoch, same stream");
    }
}
