//! Peer messages checked before raft-rs sees them.
//!
//! raft-rs trusts its inputs: a term of `u64::MAX` wraps at `term + 1` and panics every
//! member's loop (again after every restart), a heartbeat whose commit lies past the log's
//! end panics in `commit_to`, and an append that conflicts below the commit index is
//! fatal. It also steps local-only message types (`MsgHup`, `MsgBeat`, …) as if they were
//! its own. So every message from a peer passes two checks:
//!
//! - [`PeerRules::check`], on the connection, with no Raft state: the sender is the member
//!   the connection belongs to and a voter, the message is for this member, its type is
//!   one a peer sends, every term and index is in range, entries are contiguous, nothing
//!   carries a configuration change (membership is fixed at bootstrap), and a snapshot's
//!   configuration is this cluster's.
//! - [`check_against_log`], on the Raft loop, against the log: what raft-rs would treat
//!   as fatal (a commit past the log's end, an append that rewrites committed entries) and
//!   a `MsgTimeoutNow` from anyone but the current leader.
//!
//! A rejected message is dropped and counted by [`Rejection::reason`]; the connection
//! that carried it closes (a correct peer never sends one), and the member runs on.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use raft::eraftpb::{EntryType, Message, MessageType};

use crate::frame::Agreement;

/// Highest term or index a peer may name: far beyond any real log (2^62 entries), and
/// far enough below `u64::MAX` that raft-rs's `+ 1` and `+ 2` never wrap.
pub const TERM_OR_INDEX_MAX: u64 = u64::MAX >> 2;

/// Why a peer message was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// `from` is not the member the connection was opened by.
    #[error("message claims to be from member {claimed} on member {connection}'s connection")]
    ForgedSender {
        /// The `from` field.
        claimed: u64,
        /// The connection's member.
        connection: u64,
    },
    /// `to` is another member.
    #[error("message for member {to} reached member {me}")]
    NotForMe {
        /// The `to` field.
        to: u64,
        /// This member.
        me: u64,
    },
    /// The sender is not a voter of this cluster.
    #[error("member {0} is not in this cluster's configuration")]
    NotAMember(u64),
    /// A type only raft-rs itself creates, never a peer.
    #[error("message type {0:?} is local to a member and never sent by a peer")]
    LocalType(MessageType),
    /// A term or index out of range.
    #[error("{field} {value} is out of range (at most {TERM_OR_INDEX_MAX})")]
    OutOfRange {
        /// Which field.
        field: &'static str,
        /// Its value.
        value: u64,
    },
    /// Entries that do not follow each other, or whose terms go back.
    #[error("entries are not contiguous: {0}")]
    Entries(&'static str),
    /// A configuration change, which this cluster never makes.
    #[error(
        "configuration changes are not accepted from peers (membership is fixed at bootstrap)"
    )]
    ConfChange,
    /// A snapshot whose configuration is not this cluster's.
    #[error("snapshot configuration {0:?} is not this cluster's voters")]
    SnapshotConf(Vec<u64>),
    /// A commit index past the end of this member's log.
    #[error("commit index {commit} is past the log's last index {last}")]
    CommitPastLog {
        /// The message's commit.
        commit: u64,
        /// This member's last index.
        last: u64,
    },
    /// An append that would overwrite a committed entry.
    #[error("append rewrites committed entry {index} (term {term}, ours {ours})")]
    RewritesCommitted {
        /// The entry's index.
        index: u64,
        /// Its term in the message.
        term: u64,
        /// Its term here.
        ours: u64,
    },
    /// A message of a kind that always carries a term came with none.
    #[error("{0:?} without a term (only forwarded proposals, reads and transfers have none)")]
    MissingTerm(MessageType),
    /// A snapshot whose state does not decode, is not one this member could have built, or
    /// is not at the snapshot's own index.
    #[error("snapshot data refused: {0}")]
    SnapshotData(String),
    /// A forwarded proposal, read or transfer came with a term.
    #[error("{0:?} with a term (forwarded requests carry none)")]
    UnexpectedTerm(MessageType),
    /// `MsgTimeoutNow` from a member that does not lead this term.
    #[error("MsgTimeoutNow from member {from}, which does not lead term {term}")]
    TimeoutNowNotFromLeader {
        /// The sender.
        from: u64,
        /// The message's term.
        term: u64,
    },
}

/// The metric label of every reason, in [`Rejection::index`] order.
pub const REASONS: [&str; 14] = [
    "forged_sender",
    "not_for_me",
    "not_a_member",
    "local_type",
    "out_of_range",
    "entries",
    "conf_change",
    "snapshot_conf",
    "commit_past_log",
    "rewrites_committed",
    "timeout_now_not_from_leader",
    "missing_term",
    "unexpected_term",
    "snapshot_data",
];

impl Rejection {
    /// Position in [`REASONS`].
    pub fn index(&self) -> usize {
        match self {
            Self::ForgedSender { .. } => 0,
            Self::NotForMe { .. } => 1,
            Self::NotAMember(_) => 2,
            Self::LocalType(_) => 3,
            Self::OutOfRange { .. } => 4,
            Self::Entries(_) => 5,
            Self::ConfChange => 6,
            Self::SnapshotConf(_) => 7,
            Self::CommitPastLog { .. } => 8,
            Self::RewritesCommitted { .. } => 9,
            Self::TimeoutNowNotFromLeader { .. } => 10,
            Self::MissingTerm(_) => 11,
            Self::UnexpectedTerm(_) => 12,
            Self::SnapshotData(_) => 13,
        }
    }

    /// The metric label.
    pub fn reason(&self) -> &'static str {
        REASONS[self.index()]
    }
}

/// Rejected messages by reason, shared by the peer readers and the Raft loop; also says
/// why in the log, at most once a second (an attacker must not be able to flood it).
#[derive(Debug, Default)]
pub struct Rejections {
    counts: [AtomicU64; REASONS.len()],
    /// When the last rejection was logged, and how many went unlogged since.
    log: Mutex<(Option<Instant>, u64)>,
    /// Peers whose hello showed settings that differ from ours, and how.
    disagreements: Mutex<BTreeMap<u64, String>>,
}

/// Shortest time between two logged rejections.
const LOG_INTERVAL: Duration = Duration::from_secs(1);

impl Rejections {
    /// Counts a rejection and logs it (rate-limited) with where it came from.
    pub fn record(&self, rejection: &Rejection, source: &dyn std::fmt::Display) {
        self.counts[rejection.index()].fetch_add(1, Ordering::Relaxed);
        let mut log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if log.0.is_some_and(|last| now.duration_since(last) < LOG_INTERVAL) {
            log.1 += 1;
            return;
        }
        let unlogged = std::mem::take(&mut log.1);
        log.0 = Some(now);
        drop(log);
        tracing::warn!(
            reason = rejection.reason(),
            unlogged,
            "peer message from {source} rejected: {rejection}"
        );
    }

    /// Rejections so far, by reason, in [`REASONS`] order.
    pub fn counts(&self) -> [u64; REASONS.len()] {
        std::array::from_fn(|index| self.counts[index].load(Ordering::Relaxed))
    }

    /// Rejections so far, all reasons.
    pub fn total(&self) -> u64 {
        self.counts().iter().sum()
    }

    /// Records whether `peer`'s settings differ from ours (`None`: they agree); whether
    /// that changed what was recorded, so the caller logs each change once.
    pub fn set_disagreement(&self, peer: u64, difference: Option<String>) -> bool {
        let mut disagreements = self.disagreements.lock().unwrap_or_else(PoisonError::into_inner);
        match difference {
            Some(text) => disagreements.insert(peer, text.clone()).as_ref() != Some(&text),
            None => disagreements.remove(&peer).is_some(),
        }
    }

    /// One line per peer whose settings differ from ours.
    pub fn disagreements(&self) -> Vec<String> {
        let disagreements = self.disagreements.lock().unwrap_or_else(PoisonError::into_inner);
        disagreements
            .iter()
            .map(|(peer, difference)| format!("member {peer} disagrees: {difference}"))
            .collect()
    }
}

/// What a connection's messages are checked against: this member, the voters, and the
/// settings every member must share.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerRules {
    me: u64,
    /// Ascending.
    voters: Vec<u64>,
    agreement: Agreement,
}

impl PeerRules {
    /// Rules for member `me` of a cluster of `voters` (`me` among them).
    pub fn new(me: u64, voters: &[u64]) -> Self {
        let mut voters = voters.to_vec();
        voters.sort_unstable();
        voters.dedup();
        assert!(voters.binary_search(&me).is_ok(), "member {me} is not among the voters");
        Self { me, voters, agreement: Agreement::default() }
    }

    /// The same rules, expecting peers' hellos to carry `agreement`.
    pub fn with_agreement(self, agreement: Agreement) -> Self {
        Self { agreement, ..self }
    }

    /// The settings digests peers must share with this member.
    pub fn agreement(&self) -> Agreement {
        self.agreement
    }

    /// Whether `id` may open a peer connection here: a voter other than this member.
    pub fn is_peer(&self, id: u64) -> bool {
        id != self.me && self.voters.binary_search(&id).is_ok()
    }

    /// Checks a message that arrived on `connection`'s connection (see the module docs).
    pub fn check(&self, message: &Message, connection: u64) -> Result<(), Rejection> {
        let kind = message.get_msg_type();
        if matches!(kind, MessageType::MsgTransferLeader | MessageType::MsgReadIndex) {
            // raft-rs names a transfer's target in `from`, and the member a read index is
            // answered to; a follower passes either on to its leader as it is. Any voter.
            if self.voters.binary_search(&message.from).is_err() {
                return Err(Rejection::NotAMember(message.from));
            }
        } else if message.from != connection {
            return Err(Rejection::ForgedSender { claimed: message.from, connection });
        } else if !self.is_peer(message.from) {
            return Err(Rejection::NotAMember(message.from));
        }
        if message.to != self.me {
            return Err(Rejection::NotForMe { to: message.to, me: self.me });
        }
        if is_local(kind) {
            return Err(Rejection::LocalType(kind));
        }
        // raft-rs takes a message without a term for one of its own, and answers a vote
        // request without one with a termless answer, which it then refuses to send
        // (a panic).
        let forwarded = matches!(
            kind,
            MessageType::MsgPropose | MessageType::MsgReadIndex | MessageType::MsgTransferLeader
        );
        if message.term == 0 && !forwarded {
            return Err(Rejection::MissingTerm(kind));
        }
        // ...and one with a term, passed on to the leader, panics raft-rs's send.
        if message.term != 0 && forwarded {
            return Err(Rejection::UnexpectedTerm(kind));
        }
        in_range("term", message.term)?;
        in_range("log_term", message.log_term)?;
        in_range("index", message.index)?;
        in_range("commit", message.commit)?;
        in_range("commit_term", message.commit_term)?;
        in_range("reject_hint", message.reject_hint)?;
        in_range("request_snapshot", message.request_snapshot)?;
        self.check_entries(message)?;
        if message.has_snapshot() {
            self.check_snapshot(message)?;
        }
        Ok(())
    }

    fn check_entries(&self, message: &Message) -> Result<(), Rejection> {
        let entries = message.get_entries();
        for entry in entries {
            in_range("entry term", entry.term)?;
            in_range("entry index", entry.index)?;
            if entry.get_entry_type() != EntryType::EntryNormal {
                return Err(Rejection::ConfChange);
            }
        }
        if message.get_msg_type() != MessageType::MsgAppend {
            return Ok(());
        }
        // raft-rs appends these after `index` as one run: a gap or a term that goes back
        // would leave a log raft-rs itself never builds.
        let mut previous_term = message.log_term;
        for (offset, entry) in entries.iter().enumerate() {
            if entry.index != message.index + 1 + offset as u64 {
                return Err(Rejection::Entries("an index does not follow the one before"));
            }
            if entry.term < previous_term || entry.term > message.term {
                return Err(Rejection::Entries("a term goes back or is past the message's"));
            }
            previous_term = entry.term;
        }
        Ok(())
    }

    fn check_snapshot(&self, message: &Message) -> Result<(), Rejection> {
        let metadata = message.get_snapshot().get_metadata();
        in_range("snapshot index", metadata.index)?;
        in_range("snapshot term", metadata.term)?;
        let conf = metadata.get_conf_state();
        let mut voters = conf.voters.clone();
        voters.sort_unstable();
        let plain = conf.learners.is_empty()
            && conf.voters_outgoing.is_empty()
            && conf.learners_next.is_empty();
        if voters != self.voters || !plain {
            return Err(Rejection::SnapshotConf(conf.voters.clone()));
        }
        // raft-rs takes the snapshot as this member's state before the state machine sees
        // it, and a member that cannot install what raft-rs took must stop: so the state
        // is decoded and checked here, where refusing costs only the connection.
        let machine = worknode_kv::StateMachine::restore(message.get_snapshot().get_data())
            .map_err(|error| Rejection::SnapshotData(error.0))?;
        if machine.applied_index() != metadata.index {
            return Err(Rejection::SnapshotData(format!(
                "its state is at index {}, its metadata says {}",
                machine.applied_index(),
                metadata.index
            )));
        }
        Ok(())
    }
}

fn in_range(field: &'static str, value: u64) -> Result<(), Rejection> {
    if value > TERM_OR_INDEX_MAX {
        return Err(Rejection::OutOfRange { field, value });
    }
    Ok(())
}

/// Types raft-rs makes for itself and never puts on the wire.
fn is_local(kind: MessageType) -> bool {
    matches!(
        kind,
        MessageType::MsgHup
            | MessageType::MsgBeat
            | MessageType::MsgUnreachable
            | MessageType::MsgSnapStatus
            | MessageType::MsgCheckQuorum
    )
}

/// This member's log, as [`check_against_log`] needs it.
#[derive(Clone, Copy)]
pub struct LogView<'a> {
    /// The current term.
    pub term: u64,
    /// The member this one follows in `term` (0: none).
    pub leader: u64,
    /// The last index of the log.
    pub last_index: u64,
    /// The commit index.
    pub committed: u64,
    /// The term of the entry at an index, when the log still holds it.
    pub term_at: &'a dyn Fn(u64) -> Option<u64>,
}

impl std::fmt::Debug for LogView<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogView")
            .field("term", &self.term)
            .field("leader", &self.leader)
            .field("last_index", &self.last_index)
            .field("committed", &self.committed)
            .finish_non_exhaustive()
    }
}

/// Checks what raft-rs would treat as fatal or as a command against this member's log
/// (see the module docs). A `MsgTimeoutNow` comes only from the leader of this member's
/// term (the transfer target has the leader's whole log, so the same term); other messages
/// from another term are left to raft-rs, which handles them without touching the log.
pub fn check_against_log(message: &Message, log: &LogView<'_>) -> Result<(), Rejection> {
    if message.get_msg_type() == MessageType::MsgTimeoutNow
        && (message.term != log.term || message.from != log.leader)
    {
        return Err(Rejection::TimeoutNowNotFromLeader { from: message.from, term: message.term });
    }
    // raft-rs steps a heartbeat of a later term too (following its sender first), and
    // commits what it says either way.
    if message.get_msg_type() == MessageType::MsgHeartbeat
        && message.term >= log.term
        && message.commit > log.last_index
    {
        return Err(Rejection::CommitPastLog { commit: message.commit, last: log.last_index });
    }
    if message.term != log.term {
        return Ok(());
    }
    match message.get_msg_type() {
        MessageType::MsgAppend => {
            for entry in message.get_entries().iter().take_while(|e| e.index <= log.committed) {
                match (log.term_at)(entry.index) {
                    Some(ours) if ours != entry.term => {
                        return Err(Rejection::RewritesCommitted {
                            index: entry.index,
                            term: entry.term,
                            ours,
                        });
                    }
                    _ => {}
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests;
