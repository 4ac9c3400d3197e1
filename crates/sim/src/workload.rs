//! The clients: each runs one operation at a time against a member it picks, on a small
//! key space — puts, deletes, compare-and-puts (a one-compare txn), linearizable and
//! serializable reads — and records what it called, when, and what it got back.

use std::time::Instant;

use tokio::sync::oneshot;
use worknode_kv::{
    Command, Compare, CompareResult, CompareTarget, DeleteRangeRequest, Outcome, Proposal,
    PutRequest, RangeRequest, RequestId, RequestOp, TxnRequest,
};
use worknode_raft::draws::Draws;
use worknode_raft::{ClientRequest, NodeError, ReadView, WriteReply};

use crate::world::clock::{Nanos, MS, SECOND};

/// Keys the clients share: few, so that operations on one key overlap often.
pub const KEYS: u8 = 4;
/// How long a client waits for an answer.
pub const REQUEST_TIMEOUT: Nanos = 3 * SECOND;

/// What a client asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    /// Put value number `value`.
    Put(u32),
    /// Delete the key.
    Delete,
    /// Read, linearizable or serializable.
    Get {
        /// Through a read index (etcd's default) or from local state.
        linearizable: bool,
    },
    /// Put `value` if the key holds `expect` (`None`: absent).
    CompareAndPut {
        /// The value expected.
        expect: Option<u32>,
        /// The value to put.
        value: u32,
    },
}

/// What a client got back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// A write was applied; for a delete whether a key went, for a compare-and-put whether
    /// it held.
    Written(Option<bool>),
    /// A read's value id and version (`None`: absent).
    Read(Option<(u32, u32)>),
    /// Refused before it reached the log (a full queue): it did not happen.
    Refused,
    /// Unknown: timed out, or the member went down; a write may or may not have happened.
    Unknown,
}

/// One operation in the history.
#[derive(Clone, Debug)]
pub struct Operation {
    /// The client.
    pub client: u32,
    /// The member it went to.
    pub member: u64,
    /// Key number.
    pub key: u8,
    /// The call.
    pub call: Call,
    /// When it was called.
    pub called: Nanos,
    /// When the answer came (`None` while waiting, or never).
    pub answered: Option<Nanos>,
    /// The answer.
    pub answer: Answer,
}

/// The key's name in the store.
pub fn key_name(key: u8) -> Vec<u8> {
    format!("k{key}").into_bytes()
}

/// A value's bytes: its id, so a read tells which put wrote it.
pub fn value_bytes(value: u32) -> Vec<u8> {
    format!("v{value}").into_bytes()
}

fn value_id(bytes: &[u8]) -> Option<u32> {
    std::str::from_utf8(bytes).ok()?.strip_prefix('v')?.parse().ok()
}

/// A reply channel the client polls.
#[derive(Debug)]
pub enum Waiting {
    /// A write's.
    Write(oneshot::Receiver<Result<WriteReply, NodeError>>),
    /// A read's.
    Read(oneshot::Receiver<Result<ReadView, NodeError>>),
}

/// A client.
#[derive(Debug)]
pub struct Client {
    /// Its number.
    pub id: u32,
    draws: Draws,
    /// When it calls next (while idle).
    pub next_call: Nanos,
    /// The operation waiting for an answer: its index in the history and the channel.
    pub waiting: Option<(usize, Waiting)>,
    /// The last value this client saw per key (what its compare-and-puts expect).
    seen: [Option<u32>; KEYS as usize],
    sequence: u64,
}

impl Client {
    /// Client `id`, drawing from `seed`.
    pub fn new(id: u32, seed: u64) -> Self {
        let mut draws = Draws::new(seed);
        let next_call = draws.below(20 * MS);
        Self { id, draws, next_call, waiting: None, seen: [None; KEYS as usize], sequence: 0 }
    }

    /// Picks the next call and its member; `next_value` numbers puts cluster-wide.
    pub fn pick(&mut self, members: &[u64], next_value: &mut u32) -> (u64, u8, Call) {
        let member = members[self.draws.below(members.len() as u64) as usize];
        let key = self.draws.below(u64::from(KEYS)) as u8;
        let roll = self.draws.below(100);
        let mut value = || {
            *next_value += 1;
            *next_value
        };
        let call = match roll {
            0..35 => Call::Put(value()),
            35..45 => Call::Delete,
            45..65 => Call::CompareAndPut { expect: self.seen[key as usize], value: value() },
            65..90 => Call::Get { linearizable: true },
            _ => Call::Get { linearizable: false },
        };
        (member, key, call)
    }

    /// The request for `call`, with a fresh request id, and the channel its answer comes on.
    pub fn request(&mut self, key: u8, call: &Call, deadline: Instant) -> (ClientRequest, Waiting) {
        self.sequence += 1;
        let id = RequestId { session: u64::from(self.id) + 1, sequence: self.sequence };
        let key = key_name(key);
        let command = match *call {
            Call::Put(value) => {
                Command::Put(PutRequest { key, value: value_bytes(value), ..PutRequest::default() })
            }
            Call::Delete => Command::DeleteRange(DeleteRangeRequest { key, ..Default::default() }),
            Call::CompareAndPut { expect, value } => {
                let target = match expect {
                    Some(expect) => CompareTarget::Value(value_bytes(expect)),
                    None => CompareTarget::Version(0),
                };
                let compare = Compare {
                    result: CompareResult::Equal,
                    target,
                    key: key.clone(),
                    range_end: Vec::new(),
                };
                let put = PutRequest { key, value: value_bytes(value), ..PutRequest::default() };
                Command::Txn(TxnRequest {
                    compare: vec![compare],
                    success: vec![RequestOp::Put(put)],
                    failure: Vec::new(),
                })
            }
            Call::Get { linearizable } => {
                let (reply, answer) = oneshot::channel();
                return (
                    ClientRequest::Read { linearizable, deadline, reply },
                    Waiting::Read(answer),
                );
            }
        };
        let (reply, answer) = oneshot::channel();
        let proposal = Proposal { id, command };
        (ClientRequest::Write { proposal, deadline, reply }, Waiting::Write(answer))
    }

    /// The answer, once it has come (`None`: still waiting).
    pub fn poll_answer(&mut self, operation: &Operation) -> Option<Answer> {
        let (_, waiting) = self.waiting.as_mut()?;
        let answer = match waiting {
            Waiting::Write(receiver) => match receiver.try_recv() {
                Err(oneshot::error::TryRecvError::Empty) => return None,
                Ok(Ok(reply)) => written(&reply, &operation.call),
                Ok(Err(NodeError::TooManyRequests)) => Answer::Refused,
                Ok(Err(_)) | Err(oneshot::error::TryRecvError::Closed) => Answer::Unknown,
            },
            Waiting::Read(receiver) => match receiver.try_recv() {
                Err(oneshot::error::TryRecvError::Empty) => return None,
                Ok(Ok(view)) => read_answer(&view, operation.key),
                Ok(Err(NodeError::TooManyRequests)) => Answer::Refused,
                Ok(Err(_)) | Err(oneshot::error::TryRecvError::Closed) => Answer::Unknown,
            },
        };
        self.waiting = None;
        self.remember(operation, &answer);
        Some(answer)
    }

    fn remember(&mut self, operation: &Operation, answer: &Answer) {
        let seen = &mut self.seen[operation.key as usize];
        match (&operation.call, answer) {
            (_, Answer::Read(value)) => *seen = value.map(|(id, _)| id),
            (Call::Put(value), Answer::Written(_)) => *seen = Some(*value),
            (Call::Delete, Answer::Written(_)) => *seen = None,
            (Call::CompareAndPut { value, .. }, Answer::Written(Some(true))) => {
                *seen = Some(*value)
            }
            _ => {}
        }
    }

    /// Schedules the next call after a think time.
    pub fn rest(&mut self, now: Nanos) {
        self.next_call = now + self.draws.below(10 * MS);
    }
}

fn written(reply: &WriteReply, call: &Call) -> Answer {
    match (&reply.applied.outcome, call) {
        (Outcome::DeleteRange(response), _) => Answer::Written(Some(response.deleted > 0)),
        (Outcome::Txn(response), _) => Answer::Written(Some(response.succeeded)),
        (Outcome::Put(_), _) => Answer::Written(None),
        // Refused by the state machine (no space): it changed nothing.
        (Outcome::Error(_), _) => Answer::Refused,
        _ => Answer::Unknown,
    }
}

/// What a read of `key` from `view` answers.
pub fn read_answer(view: &ReadView, key: u8) -> Answer {
    let request = RangeRequest { key: key_name(key), ..RangeRequest::default() };
    match view.serve(&request) {
        Ok(reply) => Answer::Read(reply.response.kvs.first().map(|kv| {
            // A value this workload did not write reads as id 0, which no put uses.
            (value_id(&kv.value).unwrap_or(0), kv.version as u32)
        })),
        Err(_) => Answer::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_ids_round_trip() {
        assert_eq!(value_id(&value_bytes(42)), Some(42));
        assert_eq!(value_id(b"other"), None);
    }

    #[test]
    fn a_seed_decides_the_calls() {
        let calls = |seed| {
            let mut client = Client::new(1, seed);
            let mut value = 0;
            (0..20).map(|_| client.pick(&[1, 2, 3], &mut value)).collect::<Vec<_>>()
        };
        assert_eq!(calls(5), calls(5));
        assert_ne!(calls(5), calls(6));
    }
}
