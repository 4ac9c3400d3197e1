//! The node's random draws, from a seed: election timeouts and failover spreads. raft-rs
//! draws its own from `thread_rng` whenever it resets its election timer; the node
//! replaces each such draw with one of these, so a seed decides every draw of a run (the
//! simulator replays runs by seed).

/// SplitMix64: small, fast, and every seed (zero too) gives a full-period sequence.
#[derive(Clone, Debug)]
pub struct Draws(u64);

impl Draws {
    /// The sequence of `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// A seed from the operating system's entropy, for a member outside simulation.
    pub fn entropy_seed() -> u64 {
        use std::hash::{BuildHasher, RandomState};
        RandomState::new().hash_one(std::time::SystemTime::now())
    }

    /// The next draw.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A draw in `0..bound` (`bound` > 0).
    pub fn below(&mut self, bound: u64) -> u64 {
        // The multiply-shift maps the draw onto the range without a division; its bias
        // is below 2^-32 for any bound that fits in u32.
        ((u128::from(self.next_u64()) * u128::from(bound.max(1))) >> 64) as u64
    }

    /// An election timeout in ticks, in raft-rs's range [E, 2E).
    pub fn election_timeout(&mut self, election_ticks: usize) -> usize {
        election_ticks + self.below(election_ticks.max(1) as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_gives_the_same_draws_every_time() {
        let first: Vec<u64> = (0..8)
            .map({
                let mut draws = Draws::new(42);
                move |_| draws.next_u64()
            })
            .collect();
        let mut again = Draws::new(42);
        assert!(first.iter().all(|draw| *draw == again.next_u64()));
        assert_ne!(Draws::new(43).next_u64(), first[0]);
    }

    #[test]
    fn election_timeouts_cover_raft_rs_range_and_nothing_else() {
        let mut draws = Draws::new(7);
        let mut seen = [false; 10];
        for _ in 0..10_000 {
            let timeout = draws.election_timeout(10);
            assert!((10..20).contains(&timeout), "{timeout}");
            seen[timeout - 10] = true;
        }
        assert!(seen.iter().all(|seen| *seen), "some timeouts never drawn: {seen:?}");
    }
}
