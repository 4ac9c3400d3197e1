//! Raft's `Ready`, handled in the order raft-rs requires (see the module above): messages
//! out, a snapshot installed, committed entries applied, entries and hard state persisted
//! (synced when they must be), persisted messages out, read states matched to their reads.

use super::*;

impl<C: Clock, T: Transport, S: LogStore + raft::Storage> Node<C, T, S> {
    pub(super) fn handle_ready(&mut self) -> Result<(), crate::storage::StoreError> {
        if !self.raw.has_ready() {
            return Ok(());
        }
        let mut ready = self.raw.ready();
        if !ready.messages().is_empty() {
            self.send(ready.take_messages());
        }
        if !ready.snapshot().is_empty() {
            let snapshot = ready.snapshot().clone();
            self.install_snapshot(&snapshot)?;
        }
        let committed = ready.take_committed_entries();
        self.apply(committed);
        let hard_state = ready.hs().cloned();
        // Entries, a term and a vote must be on disk before the messages that rest on them
        // go out; a commit index alone need not be (it is learned again from the leader
        // after a restart). Syncing a commit-only change cost the leader a second
        // fdatasync per write, on the loop's path to the next proposal.
        let stored = self.raw.store().hard_state();
        let sync = !ready.entries().is_empty()
            || hard_state
                .as_ref()
                .is_some_and(|hs| hs.term != stored.term || hs.vote != stored.vote);
        if ready.entries().is_empty() && ready.snapshot().is_empty() {
            // A candidate's vote requests go out while its own term and vote are synced
            // (Raft thesis §10.2.1): they rest on its log, which is on disk already, and
            // it counts the answers only after this sync, so it never leads on a vote
            // it could forget. A handoff's election waits on one sync less.
            let (early, later): (Vec<Message>, Vec<Message>) =
                ready.take_persisted_messages().into_iter().partition(|m| {
                    matches!(
                        m.get_msg_type(),
                        MessageType::MsgRequestVote | MessageType::MsgRequestPreVote
                    )
                });
            if !early.is_empty() {
                self.send(early);
            }
            self.raw.mut_store().persist(&[], hard_state.as_ref(), sync)?;
            if !later.is_empty() {
                self.send(later);
            }
        } else {
            self.raw.mut_store().persist(ready.entries(), hard_state.as_ref(), sync)?;
        }
        if !ready.persisted_messages().is_empty() {
            self.send(ready.take_persisted_messages());
        }
        for state in ready.take_read_states() {
            self.pending.read_index_confirmed(&state.request_ctx, state.index);
        }
        let mut light = self.raw.advance(ready);
        if let Some(commit) = light.commit_index() {
            let mut hard_state = self.raw.store().hard_state();
            hard_state.commit = commit;
            // The commit index may lag on disk: a restarted member learns it again from the
            // leader (snapshots sync it first, so it always covers the applied state).
            self.raw.mut_store().persist(&[], Some(&hard_state), false)?;
        }
        if !light.messages().is_empty() {
            self.send(light.take_messages());
        }
        self.apply(light.take_committed_entries());
        self.raw.advance_apply();
        // A snapshot handed to the transport is reported sent: raft-rs then waits for the
        // follower's answer to go on. Unreported, a snapshot the follower asked for
        // (`ask_for_snapshot`) stays asked for after it is installed, so the leader sends
        // it again and waits, paused, for an answer newer than the one it already had:
        // the follower got no entries until the next leader.
        for to in std::mem::take(&mut self.snapshots_sent) {
            self.raw.report_snapshot(to, raft::SnapshotStatus::Finish);
        }
        self.serve_reads();
        Ok(())
    }

    pub(super) fn apply(&mut self, entries: Vec<Entry>) {
        let watched = self.handle.changes.watched();
        let mut revisions = Vec::new();
        let mut replies = Vec::new();
        for entry in entries {
            self.snapshots.applied(entry.data.len() as u64);
            if entry.get_entry_type() != EntryType::EntryNormal || entry.data.is_empty() {
                if entry.get_entry_type() != EntryType::EntryNormal {
                    // Membership is fixed at bootstrap; a conf change entry still advances
                    // raft's view so it never waits on it.
                    let mut change = raft::eraftpb::ConfChange::default();
                    if protobuf::Message::merge_from_bytes(&mut change, &entry.data).is_ok() {
                        let _ = self.raw.apply_conf_change(&change);
                    }
                }
                self.machine.skip(entry.index);
                continue;
            }
            let Some(proposal) = Proposal::decode(&entry.data) else {
                // Not ours to interpret; applying nothing keeps every member equal.
                self.machine.skip(entry.index);
                continue;
            };
            let before = self.machine.store().revision();
            let spans = watched.then(|| self.machine.watch_spans(&proposal.command));
            let applied = if self.planted(crate::PlantedBug::SkipDedup) {
                // A request id no one used: the deduplication window never matches.
                let id = RequestId { session: u64::MAX, sequence: entry.index };
                self.machine.apply(entry.index, &Proposal { id, ..proposal.clone() })
            } else {
                self.machine.apply(entry.index, &proposal)
            };
            if applied.revision > before {
                let events = spans.map(|spans| self.machine.events_in(&spans));
                revisions.push((applied.revision, events));
            }
            self.leases_applied(&applied.outcome, &proposal.command);
            if matches!(proposal.command, Command::SetSchedule(_)) {
                self.schedule_changed();
            }
            if let Some(reply) = self.pending.applied(&proposal.id) {
                replies.push((reply, applied));
            }
        }
        // Watchers learn of a revision before its writer does: a client that writes,
        // then watches from "now", starts after its own write.
        self.handle.changes.applied(revisions);
        let term = self.term();
        for (reply, applied) in replies {
            let _ = reply.send(Ok(WriteReply { applied, term }));
        }
    }
}
