//! Slot arithmetic: from a caller-supplied timestamp to epoch, slot and turn.
//!
//! Pure by design: the caller reads the clock (the system clock on a node, a simulated
//! one in tests) and passes nanoseconds since the UNIX epoch.

/// Why a slot clock cannot be built or cannot place a timestamp.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClockError {
    /// A slot of zero length.
    #[error("slot duration must be positive")]
    ZeroSlotDuration,
    /// An epoch of zero slots.
    #[error("slots per epoch must be positive")]
    ZeroSlotsPerEpoch,
    /// A turn of zero slots or longer than the epoch.
    #[error("slots per turn is {slots_per_turn}: it must be between 1 and the epoch's {slots_per_epoch} slots")]
    SlotsPerTurn {
        /// The rejected value.
        slots_per_turn: u64,
        /// The epoch length it was checked against.
        slots_per_epoch: u64,
    },
    /// The timestamp is earlier than genesis.
    #[error("timestamp {now_ns} ns is {early_ns} ns before genesis")]
    BeforeGenesis {
        /// The timestamp given.
        now_ns: u64,
        /// How far before genesis it is.
        early_ns: u64,
    },
}

/// Maps wall-clock time to slots, given genesis time and slot length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotClock {
    genesis_unix_ns: u64,
    slot_duration_ns: u64,
    slots_per_epoch: u64,
    slots_per_turn: u64,
}

/// Where a timestamp falls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotPosition {
    /// Epoch number.
    pub epoch: u64,
    /// Absolute slot number since genesis.
    pub slot: u64,
    /// Slot number inside the epoch, from 0.
    pub slot_in_epoch: u64,
    /// Turn number inside the epoch, from 0.
    pub turn: u64,
    /// Time elapsed since the slot began.
    pub offset_in_slot_ns: u64,
    /// Time until the next slot begins.
    pub until_next_slot_ns: u64,
    /// Absolute slot where the next turn begins (the next epoch's first slot if this is the
    /// epoch's last turn).
    pub next_turn_slot: u64,
    /// Time until the next turn begins.
    pub until_next_turn_ns: u128,
}

impl SlotClock {
    /// A clock whose slot 0 begins at `genesis_unix_ns`.
    pub fn new(
        genesis_unix_ns: u64,
        slot_duration_ns: u64,
        slots_per_epoch: u64,
        slots_per_turn: u64,
    ) -> Result<Self, ClockError> {
        if slot_duration_ns == 0 {
            return Err(ClockError::ZeroSlotDuration);
        }
        if slots_per_epoch == 0 {
            return Err(ClockError::ZeroSlotsPerEpoch);
        }
        if slots_per_turn == 0 || slots_per_turn > slots_per_epoch {
            return Err(ClockError::SlotsPerTurn { slots_per_turn, slots_per_epoch });
        }
        Ok(Self { genesis_unix_ns, slot_duration_ns, slots_per_epoch, slots_per_turn })
    }

    /// Length of one slot.
    pub fn slot_duration_ns(&self) -> u64 {
        self.slot_duration_ns
    }

    /// Where `now_unix_ns` falls.
    pub fn position(&self, now_unix_ns: u64) -> Result<SlotPosition, ClockError> {
        let since_genesis_ns = now_unix_ns.checked_sub(self.genesis_unix_ns).ok_or_else(|| {
            ClockError::BeforeGenesis {
                now_ns: now_unix_ns,
                early_ns: self.genesis_unix_ns - now_unix_ns,
            }
        })?;
        let slot = since_genesis_ns / self.slot_duration_ns;
        let offset_in_slot_ns = since_genesis_ns % self.slot_duration_ns;
        let epoch = slot / self.slots_per_epoch;
        let slot_in_epoch = slot % self.slots_per_epoch;
        let turn = slot_in_epoch / self.slots_per_turn;
        // The epoch's last turn may be short; the next turn then opens the next epoch.
        let next_turn_in_epoch = ((turn + 1) * self.slots_per_turn).min(self.slots_per_epoch);
        let next_turn_slot = slot - slot_in_epoch + next_turn_in_epoch;
        let until_next_slot_ns = self.slot_duration_ns - offset_in_slot_ns;
        let slots_to_next_turn = next_turn_slot - slot;
        assert!(slots_to_next_turn >= 1 && slots_to_next_turn <= self.slots_per_turn);
        let until_next_turn_ns = u128::from(slots_to_next_turn) * u128::from(self.slot_duration_ns)
            - u128::from(offset_in_slot_ns);
        Ok(SlotPosition {
            epoch,
            slot,
            slot_in_epoch,
            turn,
            offset_in_slot_ns,
            until_next_slot_ns,
            next_turn_slot,
            until_next_turn_ns,
        })
    }

    /// When `slot` begins, in nanoseconds since the UNIX epoch; `None` past the year 2554.
    pub fn slot_start_ns(&self, slot: u64) -> Option<u64> {
        slot.checked_mul(self.slot_duration_ns)?.checked_add(self.genesis_unix_ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn positions_inside_a_turn() {
        let clock = SlotClock::new(1_000 * MS, 100 * MS, 10, 4).unwrap();
        let at = clock.position(1_000 * MS + 250 * MS + 7).unwrap();
        assert_eq!((at.epoch, at.slot, at.slot_in_epoch, at.turn), (0, 2, 2, 0));
        assert_eq!(at.offset_in_slot_ns, 50 * MS + 7);
        assert_eq!(at.until_next_slot_ns, 50 * MS - 7);
        assert_eq!(at.next_turn_slot, 4);
        assert_eq!(at.until_next_turn_ns, u128::from(150 * MS - 7));
    }

    #[test]
    fn short_last_turn_hands_over_to_next_epoch() {
        // 10 slots of 4: turns are slots 0-3, 4-7, 8-9.
        let clock = SlotClock::new(0, 100 * MS, 10, 4).unwrap();
        let at = clock.position(18 * 100 * MS + 1).unwrap();
        assert_eq!((at.epoch, at.slot, at.slot_in_epoch, at.turn), (1, 18, 8, 2));
        assert_eq!(at.next_turn_slot, 20);
        assert_eq!(at.until_next_turn_ns, u128::from(200 * MS - 1));
    }

    #[test]
    fn slot_boundaries_are_exact() {
        let clock = SlotClock::new(5, 400 * MS, 432_000, 4).unwrap();
        let at = clock.position(5 + 400 * MS).unwrap();
        assert_eq!((at.slot, at.offset_in_slot_ns, at.until_next_slot_ns), (1, 0, 400 * MS));
        assert_eq!(clock.slot_start_ns(1), Some(5 + 400 * MS));
        assert_eq!(clock.slot_start_ns(u64::MAX), None);
    }

    #[test]
    fn rejects_bad_settings_and_early_timestamps() {
        assert_eq!(SlotClock::new(0, 0, 10, 1), Err(ClockError::ZeroSlotDuration));
        assert_eq!(SlotClock::new(0, 1, 0, 1), Err(ClockError::ZeroSlotsPerEpoch));
        assert_eq!(
            SlotClock::new(0, 1, 10, 11),
            Err(ClockError::SlotsPerTurn { slots_per_turn: 11, slots_per_epoch: 10 })
        );
        let clock = SlotClock::new(100, 10, 10, 2).unwrap();
        assert_eq!(clock.position(40), Err(ClockError::BeforeGenesis { now_ns: 40, early_ns: 60 }));
    }
}
