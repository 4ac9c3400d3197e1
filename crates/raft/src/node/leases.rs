//! Leases in the loop: what applying a lease command means for its deadline
//! ([`crate::engine::leases`]), and the leader's revokes of those past it.

use super::*;

/// Revokes a leader proposes per tick at most: a mass expiry is spread over ticks rather
/// than one burst of writes in front of the clients'.
const REVOKES_PER_TICK: usize = 64;

/// Marks the request ids of a leader's revokes (clients' sessions are random 64-bit
/// numbers; this bit and the member and term below it keep the two apart).
const REVOKE_SESSION: u64 = 1 << 63;

impl<C: Clock, T: Transport, S: LogStore + raft::Storage> Node<C, T, S> {
    /// Every lease of the state machine counts its whole TTL from `now` (a start, a
    /// snapshot installed).
    pub(super) fn restore_leases(&mut self, now: Instant) {
        let leases = self.machine.leases().iter().map(|(id, lease)| (id, lease_ttl(lease.ttl)));
        self.leases.restored(leases.collect::<Vec<_>>(), now);
    }

    /// A command applied here: a grant or keep-alive starts its lease's TTL again, a
    /// revoke ends it.
    pub(super) fn leases_applied(&mut self, outcome: &Outcome, command: &Command) {
        match (outcome, command) {
            (Outcome::LeaseGranted { id, ttl }, _) => {
                self.leases.renewed(*id, lease_ttl(*ttl), self.clock.now());
            }
            (Outcome::LeaseRefreshed { ttl }, Command::LeaseRefresh { id }) => {
                self.leases.renewed(*id, lease_ttl(*ttl), self.clock.now());
            }
            (Outcome::LeaseRevoked { .. }, Command::LeaseRevoke { id }) => self.leases.revoked(*id),
            _ => {}
        }
    }

    /// The leader proposes the revoke of every lease past its deadline (each again after
    /// a retry interval while it still exists: raft-rs drops proposals during a handoff).
    pub(super) fn expire_leases(&mut self, now: Instant) {
        if self.raw.raft.state != StateRole::Leader {
            return;
        }
        let due = self.leases.due(now, self.config.retry_interval, REVOKES_PER_TICK);
        for id in due {
            let term = self.term();
            if self.revokes.0 != term {
                self.revokes = (term, 0);
            }
            self.revokes.1 += 1;
            // Unique per leadership: a member leads a term at most once.
            let member = (self.config.id & ((1 << 23) - 1)) << 40;
            let session = REVOKE_SESSION | member | (term & ((1 << 40) - 1));
            let proposal = Proposal {
                id: RequestId { session, sequence: self.revokes.1 },
                command: Command::LeaseRevoke { id },
            };
            let _ = self.raw.propose(Vec::new(), proposal.encode());
        }
    }
}

/// A TTL of the state machine (seconds) as a duration.
fn lease_ttl(seconds: i64) -> Duration {
    Duration::from_secs(u64::try_from(seconds).unwrap_or(0))
}
