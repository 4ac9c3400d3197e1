//! Members whose logs were damaged: their operator's `--rejoin`, once it is safe, and
//! their catching up, during which they count as down.

use super::*;

impl World {
    /// A member whose log is damaged refuses to start; its operator wipes it with
    /// `--rejoin` once every other member runs and has committed everything the damaged
    /// log held, so the wipe loses nothing committed (what `--rejoin` asks of an
    /// operator). Whether it may start now; if not, it is looked at again shortly.
    pub(super) fn rejoin(&mut self, index: usize) -> bool {
        let now = self.now;
        let id = self.members[index].id;
        let held = self.members[index]
            .disk
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .durable
            .last_index();
        let commits: Vec<Option<u64>> = self
            .members
            .iter()
            .filter(|m| m.id != id)
            .map(|m| m.node.as_ref().map(|(_, handle)| handle.status().commit_index))
            .collect();
        let others_hold = commits.iter().all(|commit| commit.is_some_and(|c| c >= held));
        let member = &mut self.members[index];
        if !others_hold {
            if member.rejoin_at.is_none() {
                self.trace.event(
                    now,
                    format_args!("member {id} refuses to start: its log is damaged; it rejoins once the others have committed the {held} entries it held (committed: {commits:?})"),
                );
            }
            member.rejoin_at = Some(now + REJOIN_RETRY);
            return false;
        }
        member.rejoin_at = None;
        member.catch_up = Some(commits.iter().flatten().copied().max().unwrap_or(0));
        let hard_state = {
            let mut disk = member.disk.lock().unwrap_or_else(PoisonError::into_inner);
            disk.rejoin();
            disk.durable.hard_state.clone()
        };
        if let Err(error) = member.snapshot_file.remove() {
            self.fail(format!("member {id}'s snapshot cannot be removed: {error}"));
            return false;
        }
        self.trace.event(
            now,
            format_args!(
                "member {id} rejoins: log and snapshot wiped, term {} and vote {} kept",
                hard_state.term, hard_state.vote
            ),
        );
        true
    }

    /// Starts the damaged members whose operators were waiting, once they may.
    pub(super) fn rejoin_due(&mut self) {
        for index in 0..self.members.len() {
            let member = &self.members[index];
            if member.node.is_none() && member.rejoin_at.is_some_and(|at| at <= self.now) {
                self.start(index);
            }
        }
    }

    /// Rejoined members that have applied what the cluster had committed when they
    /// rejoined are up again.
    pub(super) fn caught_up(&mut self) {
        let now = self.now;
        let mut any = false;
        for member in &mut self.members {
            let (Some(target), Some((_, handle))) = (member.catch_up, &member.node) else {
                continue;
            };
            if handle.status().applied_index < target {
                continue;
            }
            member.catch_up = None;
            for down in self.downs.iter_mut().filter(|d| d.0 == member.id && d.2 == Nanos::MAX) {
                down.2 = now;
            }
            self.trace.event(now, format_args!("member {} caught up to {target}", member.id));
            any = true;
        }
        if any {
            self.note_trouble();
        }
    }
}
