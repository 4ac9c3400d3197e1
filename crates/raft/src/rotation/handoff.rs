//! The handoff decision at each turn boundary, with TiKV's pre-transfer checks.

use super::*;

impl Rotation {
    /// Called on the leader every loop turn: the member to transfer to now, if any.
    /// `heard_recently(id)` says whether a message from that member arrived within the
    /// liveness window (raft-rs keeps a silent follower in replicate state). `checked`
    /// is false only where the simulator planted a bug ([`crate::planted`]). `paused`
    /// says why handoffs wait (a member's clock beyond the bound): the turn is kept.
    pub fn decide<S: raft::Storage>(
        &mut self,
        raft: &Raft<S>,
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
        self.finish_transfer(raft.id, now);
        // A member that took over inside this decision window (the handoff into this very
        // turn) leaves the record to the member that handed over.
        let window_start = boundary.saturating_sub(self.config.handoff_lead.as_nanos());
        if self.led_since_unix_ns.is_some_and(|since| u128::from(since) > window_start) {
            return None;
        }
        // Where rotation is off (plain Raft) there is nothing to decide.
        let scheduled = self.scheduled_leader(next_slot)?;
        let me = raft.id;
        let mut record = self.turn_record(next_slot, boundary, scheduled, me);
        if scheduled == me {
            self.record(record);
            return None;
        }
        let silent = (!heard_recently(scheduled))
            .then(|| ("silent", format!("member {scheduled} has not been heard from recently")));
        let refusal = silent
            .or_else(|| paused.map(|why| ("clock_skew", why)))
            .or_else(|| unfit(raft, scheduled, self.config.max_lag_entries));
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
fn unfit<S: raft::Storage>(
    raft: &Raft<S>,
    target: u64,
    max_lag: u64,
) -> Option<(&'static str, String)> {
    if raft.lead_transferee.is_some() {
        return Some(("transfer_running", "a transfer is already running".into()));
    }
    if raft.has_pending_conf() {
        return Some(("conf_change", "a configuration change is pending".into()));
    }
    let Some(progress) = raft.prs().get(target) else {
        return Some(("not_voter", format!("member {target} is not a voter")));
    };
    // Replicate state means the target acknowledges appends as they stream; probe means
    // the leader has not heard from it lately (raft-rs resets `recent_active` at every
    // quorum check, so that flag alone flickers).
    match progress.state {
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
    let last = raft.raft_log.last_index();
    if progress.matched + max_lag < last {
        return Some((
            "lagging",
            format!("member {target} is {} entries behind", last - progress.matched),
        ));
    }
    None
}
