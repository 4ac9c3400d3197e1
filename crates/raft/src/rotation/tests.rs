//! The schedule's rotation: segments, turns, handoff decisions.

#![allow(clippy::unwrap_used, reason = "a test fails loudly on an unexpected value")]

use super::*;

const MS: u64 = 1_000_000;

fn settings(stakes: &[(u64, u64)]) -> ScheduleSettings {
    ScheduleSettings {
        rotation: true,
        algorithm: "fair".into(),
        stakes: stakes.to_vec(),
        slot_ms: 50,
        slots_per_turn: 4,
        slots_per_epoch: 96,
        seed: 0,
    }
}

/// 50 ms slots, 4 per turn (200 ms turns), a 10 ms handoff window, genesis at 1 s.
fn rotation() -> Rotation {
    Rotation::new(RotationConfig {
        base: settings(&[(1, 1), (2, 1), (3, 1)]),
        genesis_unix_ns: 1_000 * MS,
        handoff_lead: Duration::from_millis(10),
        max_lag_entries: 100,
        forward_ahead: Duration::from_millis(20),
        silence_heartbeats: 3,
        takeover_grace: Duration::from_millis(50),
        clock_skew_max: Duration::from_millis(500),
    })
    .unwrap()
}

#[test]
fn handoff_durations_land_in_their_buckets_and_skips_count_by_kind() {
    let mut metrics = RotationMetrics::default();
    metrics.handoff(Duration::from_micros(1_500));
    metrics.handoff(Duration::from_millis(2));
    metrics.handoff(Duration::from_secs(3));
    metrics.skip("silent");
    metrics.skip("silent");
    assert_eq!(metrics.handoffs_total, 3);
    assert_eq!(metrics.handoff_buckets[1], 2, "1.5 ms and 2 ms are ≤ 2 ms");
    assert_eq!(metrics.handoff_buckets[HANDOFF_BUCKETS_S.len()], 1, "3 s is above 1 s");
    assert_eq!(metrics.skipped_total["silent"], 2);
}

#[test]
fn the_loop_wakes_when_the_handoff_window_opens_and_at_the_boundary() {
    let rotation = rotation();
    // 30 ms into turn 0: the window before turn 1 (at 200 ms) opens at 190 ms.
    assert_eq!(rotation.next_wakeup(1_030 * MS), Duration::from_millis(160));
    // Inside the window: wake at the boundary.
    assert_eq!(rotation.next_wakeup(1_195 * MS), Duration::from_millis(5));
    // Before genesis: look again soon.
    assert_eq!(rotation.next_wakeup(10 * MS), Duration::from_millis(10));
}

#[test]
fn elections_favour_the_turns_member_or_the_next_while_it_leads() {
    let mut rotation = rotation();
    let now = 1_030 * MS;
    let current = rotation.scheduled_leader(0).unwrap();
    let next = rotation.scheduled_leader(4).unwrap();
    assert_ne!(current, next);
    assert_eq!(rotation.favoured(now, 0), Some(current));
    assert_eq!(rotation.favoured(now, next), Some(current));
    assert_eq!(rotation.favoured(now, current), Some(next));
    assert_eq!(rotation.favoured(10 * MS, 0), None, "before genesis");
}

#[test]
fn a_change_holds_from_its_epoch_with_its_own_slot_clock() {
    let mut rotation = rotation();
    // Epoch 1 begins at slot 96, 1 s + 96 · 50 ms = 5.8 s.
    let anchor = rotation.anchor(1_030 * MS, Duration::from_millis(100)).unwrap();
    assert_eq!(anchor, Anchor { epoch: 1, first_slot: 96, start_unix_ns: 5_800 * MS });
    // Too close to the boundary: the one after.
    let late = rotation.anchor(5_750 * MS, Duration::from_millis(100)).unwrap();
    assert_eq!(late.epoch, 2);
    let mut only_one = settings(&[(1, 0), (2, 5), (3, 0)]);
    only_one.slot_ms = 100;
    only_one.slots_per_epoch = 40;
    rotation.set_changes(&[ScheduleChange {
        epoch: anchor.epoch,
        first_slot: anchor.first_slot,
        start_unix_ns: anchor.start_unix_ns,
        based_on: 0,
        settings: only_one,
    }]);
    // Before the change: the bootstrap rotation of three.
    let before: Vec<_> = (0..3).map(|t| rotation.scheduled_leader(t * 4)).collect();
    assert_eq!(before.iter().flatten().count(), 3);
    assert!(before.contains(&Some(1)) && before.contains(&Some(3)));
    // From epoch 1 only member 2 leads, on 100 ms slots.
    for slot in 96..96 + 80 {
        assert_eq!(rotation.scheduled_leader(slot), Some(2), "slot {slot}");
    }
    let position = rotation.position(5_800 * MS + 250 * MS).unwrap();
    assert_eq!((position.epoch, position.slot, position.slot_ns), (1, 98, 100 * MS));
    assert_eq!(rotation.position(5_800 * MS + 4_000 * MS).unwrap().epoch, 2);
    assert_eq!(rotation.turn_last_slot(96), 99);
    let (in_force, pending) = rotation.settings_at(1_030 * MS);
    assert_eq!((in_force.slot_ms, pending), (50, Some(1)));
}

#[test]
fn writes_flow_to_the_incoming_leader_only_at_the_end_of_a_turn() {
    let mut rotation = rotation();
    let next = rotation.scheduled_leader(4).unwrap();
    assert_eq!(rotation.incoming(1_170 * MS), None, "30 ms before the boundary");
    assert_eq!(rotation.incoming(1_185 * MS), Some((next, Duration::from_millis(15))));
}

#[test]
fn a_second_change_anchors_on_the_pending_changes_grid_and_off_grid_ones_are_ignored() {
    let mut rotation = rotation();
    let mut fast = settings(&[(1, 1), (2, 1), (3, 1)]);
    fast.slot_ms = 10;
    let first = ScheduleChange {
        epoch: 1,
        first_slot: 96,
        start_unix_ns: 5_800 * MS,
        based_on: 0,
        settings: fast,
    };
    rotation.set_changes(std::slice::from_ref(&first));
    // Proposed while the change is pending but too close: the epoch after, on the
    // pending change's 10 ms grid (96 slots = 960 ms an epoch).
    let anchor = rotation.anchor(5_000 * MS, Duration::from_secs(1)).unwrap();
    assert_eq!(anchor, Anchor { epoch: 2, first_slot: 192, start_unix_ns: 6_760 * MS });
    // Far enough ahead: it replaces the pending change at its own epoch.
    assert_eq!(rotation.anchor(1_030 * MS, Duration::from_secs(1)).unwrap().epoch, 1);
    let off_grid =
        ScheduleChange { epoch: 2, first_slot: 192, start_unix_ns: 10_600 * MS, ..first.clone() };
    rotation.set_changes(&[first.clone(), off_grid]);
    assert_eq!(rotation.position(20_000 * MS).unwrap().slot_ns, 10 * MS, "only the first holds");
}

#[test]
fn an_epoch_of_too_many_turns_is_refused() {
    let mut huge = settings(&[(1, 1)]);
    huge.slots_per_epoch = 4_000_000_000;
    huge.slots_per_turn = 1;
    let error = Rotation::validate(&huge).unwrap_err().to_string();
    assert!(error.contains("at most"), "{error}");
}

#[test]
fn rotation_off_names_no_leader() {
    let mut rotation = rotation();
    let mut off = settings(&[(1, 1), (2, 1), (3, 1)]);
    off.rotation = false;
    rotation.set_changes(&[ScheduleChange {
        epoch: 1,
        first_slot: 96,
        start_unix_ns: 5_800 * MS,
        based_on: 0,
        settings: off,
    }]);
    assert!(rotation.scheduled_leader(95).is_some());
    assert_eq!(rotation.scheduled_leader(96), None);
    assert!(!rotation.position(6_000 * MS).unwrap().rotating);
}

#[test]
fn a_decision_is_due_in_the_window_and_late_within_the_first_slot() {
    let rotation = rotation();
    assert_eq!(rotation.due_turn(1_195 * MS), Some((4, u128::from(1_200 * MS))));
    // Woke 30 ms after the boundary: the current turn is still due.
    assert_eq!(rotation.due_turn(1_230 * MS), Some((4, u128::from(1_200 * MS))));
    // Past the turn's first slot, and before the window: nothing is due.
    assert_eq!(rotation.due_turn(1_260 * MS), None);
    assert_eq!(rotation.due_turn(1_100 * MS), None);
}

#[test]
fn a_silent_leader_is_succeeded_by_the_turns_member_or_the_next_other_member() {
    let mut rotation = rotation();
    // Inside the second turn (200 ms turns from 1 s): its member and the next turn's.
    let now = 1_000 * MS + 200 * MS + 30 * MS;
    let position = rotation.position(now).unwrap();
    let current = rotation.scheduled_leader(position.slot).unwrap();
    let next = rotation.scheduled_leader(position.next_turn_slot).unwrap();
    let other = [1, 2, 3].into_iter().find(|&m| m != current).unwrap();
    // The leader is not the turn's member: the handoff never came, the member takes over.
    let succession = rotation.successor(now, other).unwrap();
    assert_eq!(succession.member, current);
    assert!(succession.turn_began);
    assert_eq!(succession.into_turn, Duration::from_millis(30));
    // The turn's own member leads: the rest of its turn goes to the next member early.
    let succession = rotation.successor(now, current).unwrap();
    assert!(!succession.turn_began);
    assert_ne!(succession.member, current);
    if next != current {
        assert_eq!(succession.member, next);
    }
}

#[test]
fn a_transfer_is_overdue_past_its_boundary_and_the_grace_and_abandoning_it_counts_a_failure() {
    let mut rotation = rotation();
    let started = Instant::now();
    assert_eq!(rotation.overdue_transfer(started + Duration::from_secs(9)), None, "none runs");
    rotation.transfer =
        Some(Transfer { target: 3, started, first_slot: 4, timeout_now: None, stepped_down: None });
    // The handoff lead (10 ms) plus the grace (50 ms).
    assert_eq!(rotation.overdue_transfer(started + Duration::from_millis(60)), None);
    let late = started + Duration::from_millis(61);
    assert_eq!(rotation.overdue_transfer(late), Some(3));
    rotation.abandon_transfer(1, late);
    assert_eq!(rotation.overdue_transfer(late), None);
    let log = rotation.log();
    let log = log.lock().unwrap();
    assert_eq!(log.metrics.skipped_total.get("transfer_failed"), Some(&1));
    assert_eq!(log.metrics.handoffs_total, 0);
}
