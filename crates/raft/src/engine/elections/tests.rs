use super::*;

const MS: Duration = Duration::from_millis(1);

fn settings() -> Settings {
    Settings { tick: 100 * MS, silence: 300 * MS, grace: 50 * MS }
}

/// Member 2 following leader 1 in term 5, E = 10 ticks, its timeout at 13.
fn follower() -> RaftView {
    RaftView {
        id: 2,
        term: 5,
        role: StateRole::Follower,
        leader: 1,
        vote: 0,
        election_ticks: 10,
        timeout_ticks: 13,
        in_lease: true,
    }
}

fn nobody_gone(_: u64) -> bool {
    false
}

fn leader_gone(id: u64) -> bool {
    id == 1
}

/// Rotation on; the successor of leader 1 is `member`, heard from `heard_ago` before `now`.
fn world<'a>(
    gone: &'a dyn Fn(u64) -> bool,
    now: Instant,
    heard_ago: Duration,
    succession: Succession,
) -> World<'a> {
    World {
        gone,
        voters: &[1, 2, 3],
        favoured: Some(succession.member),
        successor: Some(succession),
        leader_heard: Some(now - heard_ago),
    }
}

/// The leader's own turn runs (`into_turn` in); `member` comes next.
fn mid_turn(member: u64, into_turn: Duration) -> Succession {
    Succession { member, turn_began: false, into_turn }
}

/// `member`'s turn began `into_turn` ago and the leader did not hand over.
fn turn_began(member: u64, into_turn: Duration) -> Succession {
    Succession { member, turn_began: true, into_turn }
}

/// Applies the actions to the view as the loop does to raft-rs (a campaign: pre-vote).
fn apply(raft: &mut RaftView, actions: &[Action]) {
    for action in actions {
        match action {
            Action::SetTimeout(ticks) => raft.timeout_ticks = *ticks,
            Action::ExpireLease => raft.in_lease = false,
            Action::Campaign => raft.role = StateRole::PreCandidate,
        }
    }
}

#[test]
fn raft_rs_draws_are_replaced_on_each_reset_and_a_seed_repeats_them() {
    let mut elections = Elections::new(settings(), 7);
    let mut raft = follower();
    let Some(Action::SetTimeout(first)) = elections.redraw(&raft) else {
        panic!("the first look sets the timeout");
    };
    assert!((10..20).contains(&first));
    raft.timeout_ticks = first;
    assert_eq!(elections.redraw(&raft), None, "nothing changed: raft-rs keeps ours");
    // raft-rs reset its timer (a new term) and drew from thread_rng.
    raft.term = 6;
    raft.timeout_ticks = 17;
    assert!(matches!(elections.redraw(&raft), Some(Action::SetTimeout(_))));
    // The same seed, the same inputs: the same draws.
    let mut again = Elections::new(settings(), 7);
    assert_eq!(again.redraw(&follower()), Some(Action::SetTimeout(first)));
}

#[test]
fn the_favoured_follower_waits_e_plus_two_and_draws_again_once_not_favoured() {
    let mut elections = Elections::new(settings(), 1);
    let mut raft = follower();
    assert_eq!(elections.favour(&raft, Some(2)), Some(Action::SetTimeout(12)));
    raft.timeout_ticks = 12;
    assert_eq!(elections.favour(&raft, Some(2)), None, "already set");
    let Some(Action::SetTimeout(drawn)) = elections.favour(&raft, Some(3)) else {
        panic!("no longer favoured: a fresh draw");
    };
    assert!((10..20).contains(&drawn));
    raft.timeout_ticks = drawn;
    assert_eq!(elections.favour(&raft, Some(3)), None, "drawn once, not on every turn");
    let leader = RaftView { role: StateRole::Leader, leader: 2, ..raft };
    assert_eq!(elections.favour(&leader, Some(2)), None, "a leader has no election timer");
}

#[test]
fn a_message_the_gone_leader_sent_before_it_died_does_not_bring_its_lease_back() {
    let now = Instant::now();
    let mut elections = Elections::new(settings(), 3);
    let mut raft = RaftView { id: 3, ..follower() };
    let world = world(&leader_gone, now, 10 * MS, mid_turn(2, 100 * MS));
    let (actions, _) = elections.watch(now, &raft, &world);
    apply(&mut raft, &actions);
    assert!(!raft.in_lease);
    let (actions, _) = elections.watch(now + MS, &raft, &world);
    assert!(actions.is_empty(), "nothing more to do: {actions:?}");
    // The leader's last append arrives after it was found gone: raft-rs renews its lease.
    raft.in_lease = true;
    let (actions, _) = elections.watch(now + 2 * MS, &raft, &world);
    assert_eq!(actions, [Action::ExpireLease], "the successor's votes are granted still");
}

#[test]
fn a_gone_leader_expires_the_lease_and_its_successor_campaigns_a_moment_later() {
    let now = Instant::now();
    let mut elections = Elections::new(settings(), 3);
    let mut raft = follower();
    let world = world(&leader_gone, now, 10 * MS, mid_turn(2, 100 * MS));
    let (actions, early) = elections.watch(now, &raft, &world);
    assert_eq!(early, Some(Early::LeaderGone { leader: 1 }));
    assert_eq!(actions[0], Action::ExpireLease);
    let Action::SetTimeout(spread) = actions[1] else {
        panic!("the others' timeouts are spread: {actions:?}");
    };
    assert!((12..20).contains(&spread), "{spread}");
    assert!(!actions.contains(&Action::Campaign), "not before the others can see it");
    apply(&mut raft, &actions);
    assert_eq!(elections.due(now, &raft, &world), Some(now + ASK_AGAIN));
    let (actions, early) = elections.watch(now + ASK_AGAIN, &raft, &world);
    assert_eq!((actions.as_slice(), early), ([Action::Campaign].as_slice(), None));
    apply(&mut raft, &actions);
    // Unanswered pre-votes are asked again every ASK_AGAIN, for an election timeout.
    let (actions, _) = elections.watch(now + 2 * ASK_AGAIN, &raft, &world);
    assert_eq!(actions, [Action::Campaign]);
    assert!(!elections.taking_over(raft.term), "a failover's votes carry no takeover mark");
    let (actions, _) = elections.watch(now + 2 * Duration::from_secs(1), &raft, &world);
    assert!(actions.is_empty(), "given up after an election timeout: {actions:?}");
}

#[test]
fn a_member_that_does_not_succeed_a_gone_leader_only_spreads_its_timeout() {
    let now = Instant::now();
    let mut elections = Elections::new(settings(), 3);
    let mut raft = RaftView { id: 3, ..follower() };
    let world = world(&leader_gone, now, 10 * MS, mid_turn(2, 100 * MS));
    let (actions, _) = elections.watch(now, &raft, &world);
    assert_eq!(actions.len(), 2);
    apply(&mut raft, &actions);
    let (actions, _) = elections.watch(now + 10 * ASK_AGAIN, &raft, &world);
    assert!(actions.is_empty(), "{actions:?}");
    // The favoured member is gone as well: the lowest-id live voter goes instead.
    let both_gone = |id: u64| id == 1 || id == 2;
    let mut elections = Elections::new(settings(), 3);
    let world = self::world(&both_gone, now, 10 * MS, mid_turn(2, 100 * MS));
    let _ = elections.watch(now, &raft, &world);
    let (actions, _) = elections.watch(now + ASK_AGAIN, &raft, &world);
    assert_eq!(actions, [Action::Campaign]);
}

#[test]
fn a_silent_leader_is_taken_over_by_its_successor_mid_turn() {
    let now = Instant::now();
    let mut elections = Elections::new(settings(), 3);
    let mut raft = follower();
    let quiet = world(&nobody_gone, now, 299 * MS, mid_turn(2, 120 * MS));
    assert_eq!(elections.watch(now, &raft, &quiet), (vec![], None), "below the threshold");
    assert_eq!(elections.due(now, &raft, &quiet), Some(now + MS), "wakes when it is reached");
    let silent = world(&nobody_gone, now, 300 * MS, mid_turn(2, 120 * MS));
    let (actions, early) = elections.watch(now, &raft, &silent);
    assert_eq!(actions, [Action::Campaign]);
    assert_eq!(
        early,
        Some(Early::Takeover {
            leader: 1,
            silence: 300 * MS,
            turn_began: false,
            into_turn: 120 * MS
        })
    );
    apply(&mut raft, &actions);
    assert!(elections.taking_over(5) && elections.taking_over(6), "pre-vote and vote");
    assert!(!elections.taking_over(7));
    let (actions, _) = elections.watch(now + ASK_AGAIN, &raft, &silent);
    assert_eq!(actions, [Action::Campaign], "asked again while unanswered");
    // Elected: the campaign ends, and a later silence of another term starts anew.
    raft.role = StateRole::Leader;
    raft.term = 6;
    raft.leader = 2;
    let _ = elections.watch(now + 2 * ASK_AGAIN, &raft, &silent);
    assert!(!elections.taking_over(6));
}

#[test]
fn only_the_successor_takes_over_and_only_once_per_term() {
    let now = Instant::now();
    let mut elections = Elections::new(settings(), 3);
    let raft = RaftView { id: 3, ..follower() };
    let silent = world(&nobody_gone, now, 900 * MS, mid_turn(2, 120 * MS));
    assert_eq!(elections.watch(now, &raft, &silent), (vec![], None));
    assert_eq!(elections.due(now, &raft, &silent), None, "not ours to wake for");
    let mut elections = Elections::new(settings(), 3);
    let raft = follower();
    let (actions, _) = elections.watch(now, &raft, &silent);
    assert_eq!(actions, [Action::Campaign]);
    // The pre-vote failed and the old leader's heartbeat made it a follower again in
    // the same term: it does not take over from the same leader twice.
    let (actions, early) = elections.watch(now + Duration::from_secs(2), &raft, &silent);
    assert_eq!((actions, early), (vec![], None));
    assert_eq!(elections.due(now, &raft, &silent), None, "no wake-up it would not act on");
}

#[test]
fn at_a_boundary_the_incoming_member_waits_out_the_grace() {
    let now = Instant::now();
    let mut elections = Elections::new(settings(), 3);
    let raft = follower();
    let early = world(&nobody_gone, now, 400 * MS, turn_began(2, 20 * MS));
    assert_eq!(elections.watch(now, &raft, &early), (vec![], None));
    assert_eq!(elections.due(now, &raft, &early), Some(now + 30 * MS));
    let after = world(&nobody_gone, now, 400 * MS, turn_began(2, 50 * MS));
    let (actions, early) = elections.watch(now, &raft, &after);
    assert_eq!(actions, [Action::Campaign]);
    assert!(matches!(early, Some(Early::Takeover { turn_began: true, .. })));
}

#[test]
fn takeovers_are_off_without_rotation_or_with_a_zero_threshold() {
    let now = Instant::now();
    let raft = follower();
    let mut elections = Elections::new(settings(), 3);
    let plain = World {
        gone: &nobody_gone,
        voters: &[1, 2, 3],
        favoured: None,
        successor: None,
        leader_heard: None,
    };
    assert_eq!(elections.watch(now, &raft, &plain), (vec![], None));
    let off = Settings { silence: Duration::ZERO, ..settings() };
    let mut elections = Elections::new(off, 3);
    let silent = world(&nobody_gone, now, 900 * MS, mid_turn(2, 120 * MS));
    assert_eq!(elections.watch(now, &raft, &silent), (vec![], None));
    assert!(!elections.grants_takeover(now, &raft, 3, Some(now - 900 * MS), |_| true));
}

#[test]
fn a_voter_grants_a_takeover_only_when_it_too_hears_nothing_and_names_the_candidate() {
    let now = Instant::now();
    let elections = Elections::new(settings(), 3);
    let raft = RaftView { id: 3, ..follower() };
    let long_ago = Some(now - 300 * MS);
    assert!(elections.grants_takeover(now, &raft, 2, long_ago, |c| c == 2));
    assert!(!elections.grants_takeover(now, &raft, 2, Some(now - 100 * MS), |_| true));
    assert!(!elections.grants_takeover(now, &raft, 2, long_ago, |c| c == 3), "not its turn");
    assert!(!elections.grants_takeover(now, &raft, 1, long_ago, |_| true), "the leader");
    assert!(!elections.grants_takeover(now, &raft, 2, None, |_| true), "never heard");
    let leader = RaftView { role: StateRole::Leader, leader: 3, ..raft };
    assert!(!elections.grants_takeover(now, &leader, 2, long_ago, |_| true));
}

#[test]
fn a_candidate_that_fell_silent_mid_handoff_is_taken_over_by_its_successor() {
    // Member 2 voted for member 1 (the transfer target) in term 6; no leader is known.
    let now = Instant::now();
    let mut elections = Elections::new(settings(), 3);
    let raft = RaftView { id: 3, term: 6, leader: 0, vote: 1, ..follower() };
    let silent = world(&nobody_gone, now, 300 * MS, mid_turn(3, 200 * MS));
    let (actions, early) = elections.watch(now, &raft, &silent);
    assert_eq!(actions, [Action::Campaign]);
    assert!(matches!(early, Some(Early::Takeover { leader: 1, .. })), "{early:?}");
    // A follower that voted for itself, or for nobody, expects no one.
    let mut elections = Elections::new(settings(), 3);
    let raft = RaftView { id: 3, term: 6, leader: 0, vote: 0, ..follower() };
    assert_eq!(elections.watch(now, &raft, &silent), (vec![], None));
}

#[test]
fn a_voter_with_the_longer_log_takes_over_in_place_of_a_successor_that_cannot_win() {
    // Member 3 (follower of 1) grants member 2's takeover, but holds entries member 2 lacks.
    let now = Instant::now();
    let mut elections = Elections::new(settings(), 3);
    let raft = RaftView { id: 3, ..follower() };
    let heard = Some(now - 310 * MS);
    let (action, early) = elections.stand_in(now, &raft, 2, heard).unwrap();
    assert_eq!(action, Action::Campaign);
    assert_eq!(early, Early::StandIn { leader: 1, candidate: 2, silence: 310 * MS });
    // Its vote requests are a takeover's, asked again while a pre-candidate.
    assert!(elections.taking_over(5));
    let mut pre = RaftView { role: StateRole::PreCandidate, leader: 0, ..raft };
    let quiet = world(&nobody_gone, now, 310 * MS, mid_turn(2, 100 * MS));
    assert_eq!(elections.watch(now + ASK_AGAIN, &pre, &quiet).0, [Action::Campaign]);
    // Once per term and leader: a second request from the successor starts nothing.
    assert_eq!(elections.stand_in(now + 2 * ASK_AGAIN, &raft, 2, heard), None);
    // Only a follower of a known leader stands in.
    pre.term = 7;
    let mut elections = Elections::new(settings(), 3);
    assert_eq!(elections.stand_in(now, &pre, 2, heard), None);
}
