//! The handoff decision at each turn boundary, with TiKV's pre-transfer checks. It
//! reads raft-rs's state through [`TransferView`], so the decision is a function of
//! plain values (tested without a Raft group).

use super::*;

/// What the pre-transfer checks need of raft-rs's state, about one target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TransferView {
    /// A leadership transfer is already running.
    pub transfer_running: bool,
    /// A configuration change is pending.
    pub conf_pending: bool,
    /// The target's replication state and matched index (`None`: not a voter).
    pub target: Option<(ProgressState, u64)>,
    /// The leader's last log index.
    pub last_index: u64,
}

impl TransferView {
    /// `raft`'s state about `target`.
    pub fn of<S: raft::Storage>(raft: &Raft<S>, target: u64) -> Self {
        Self {
            transfer_running: raft.lead_transferee.is_some(),
            conf_pending: raft.has_pending_conf(),
            target: raft.prs().get(target).map(|progress| (progress.state, progress.matched)),
            last_index: raft.raft_log.last_index(),
        }
    }
}

impl Rotation {
    /// Called on leader `me` every loop turn: the member to transfer to now, if any.
    /// `view(target)` is raft-rs's state about a target, asked only when a handoff is
    /// due. `heard_recently(id)` says whether a message from that member arrived within
    /// the liveness window (raft-rs keeps a silent follower in replicate state).
    /// `checked` is false only where the simulator planted a bug ([`crate::planted`]).
    /// `paused` says why handoffs wait (a member's clock beyond the bound): the turn is
    /// kept.
    #[allow(clippy::too_many_arguments, reason = "each is one input of the decision")]
    pub fn decide(
        &mut self,
        me: u64,
        view: impl FnOnce(u64) -> TransferView,
        now_unix_ns: u64,
        now: Instant,
        heard_recently: impl Fn(u64) -> bool,
        checked: bool,
        paused: Option<String>,
    ) -> Option<u64> {
        let (next_slot, boundary) = self.due_turn(now_unix_ns)?;
        if self.decided == Some(next_slot) {
            return None;
        }
        self.decided = Some(next_slot);
        // A transfer still open from the last turn did not happen (this member leads).
        self.finish_transfer(me, now);
        // A member that took over inside this decision window (the handoff into this very
        // turn) leaves the record to the member that handed over.
        let window_start = boundary.saturating_sub(self.config.handoff_lead.as_nanos());
        if self.led_since_unix_ns.is_some_and(|since| u128::from(since) > window_start) {
            return None;
        }
        // Where rotation is off (plain Raft) there is nothing to decide.
        let scheduled = self.scheduled_leader(next_slot)?;
        let mut record = self.turn_record(next_slot, boundary, scheduled, me);
        if scheduled == me {
            self.record(record);
            return None;
        }
        let silent = (!heard_recently(scheduled))
            .then(|| ("silent", format!("member {scheduled} has not been heard from recently")));
        let refusal = silent
            .or_else(|| paused.map(|why| ("clock_skew", why)))
            .or_else(|| unfit(&view(scheduled), scheduled, self.config.max_lag_entries));
        if let Some((kind, reason)) = refusal.filter(|_| checked) {
            record.skipped = Some(reason);
            record.skip_kind = Some(kind);
            self.record(record);
            return None;
        }
        record.leader_after = 0;
        self.record(record);
        self.transfer = Some(Transfer {
            target: scheduled,
            started: now,
            first_slot: next_slot,
            timeout_now: None,
            stepped_down: None,
        });
        Some(scheduled)
    }
}

/// Why `target` should not take over now (TiKV's pre-transfer checks): a kind for
/// metrics and the reason in words.
fn unfit(view: &TransferView, target: u64, max_lag: u64) -> Option<(&'static str, String)> {
    if view.transfer_running {
        return Some(("transfer_running", "a transfer is already running".into()));
    }
    if view.conf_pending {
        return Some(("conf_change", "a configuration change is pending".into()));
    }
    let Some((state, matched)) = view.target else {
        return Some(("not_voter", format!("member {target} is not a voter")));
    };
    // Replicate state means the target acknowledges appends as they stream; probe means
    // the leader has not heard from it lately (raft-rs resets `recent_active` at every
    // quorum check, so that flag alone flickers).
    match state {
        ProgressState::Replicate => {}
        ProgressState::Snapshot => {
            return Some(("snapshot", format!("member {target} is receiving a snapshot")))
        }
        ProgressState::Probe => {
            return Some((
                "not_replicating",
                format!("member {target} is not acknowledging (unreachable or recovering)"),
            ))
        }
    }
    if matched + max_lag < view.last_index {
        return Some((
            "lagging",
            format!("member {target} is {} entries behind", view.last_index - matched),
        ));
    }
    None
}

#[cfg(test)]
mod checks {
    use super::*;

    fn view(state: ProgressState, matched: u64) -> TransferView {
        TransferView {
            transfer_running: false,
            conf_pending: false,
            target: Some((state, matched)),
            last_index: 1_000,
        }
    }

    #[test]
    fn a_replicating_target_within_the_lag_is_fit() {
        assert_eq!(unfit(&view(ProgressState::Replicate, 990), 2, 10), None);
        assert_eq!(unfit(&view(ProgressState::Replicate, 1_000), 2, 0), None);
    }

    #[test]
    fn each_pre_transfer_check_refuses_with_its_kind() {
        let kind = |view: TransferView| unfit(&view, 2, 10).map(|(kind, _)| kind);
        assert_eq!(kind(view(ProgressState::Replicate, 989)), Some("lagging"));
        assert_eq!(kind(view(ProgressState::Probe, 1_000)), Some("not_replicating"));
        assert_eq!(kind(view(ProgressState::Snapshot, 1_000)), Some("snapshot"));
        let none = TransferView { target: None, ..view(ProgressState::Replicate, 1_000) };
        assert_eq!(kind(none), Some("not_voter"));
        let running =
            TransferView { transfer_running: true, ..view(ProgressState::Replicate, 1_000) };
        assert_eq!(kind(running), Some("transfer_running"));
        let conf = TransferView { conf_pending: true, ..view(ProgressState::Replicate, 1_000) };
        assert_eq!(kind(conf), Some("conf_change"));
        let (_, reason) = unfit(&view(ProgressState::Replicate, 900), 3, 10).unwrap();
        assert_eq!(reason, "member 3 is 100 entries behind");
    }
}
