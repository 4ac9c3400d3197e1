//! The simulated network: messages in flight ordered by delivery time, with the faults a
//! real one has — delay and jitter (so reordering), loss, duplication, and links cut in
//! one direction or both.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use raft::eraftpb::Message;
use worknode_raft::clock_offset::{ClockOffsets, Echo, SharedClockOffsets, Stamps};
use worknode_raft::draws::Draws;
use worknode_raft::{Clock, Transport};

use super::clock::{Nanos, SimClock};

/// A message a member sent, with when it left.
#[derive(Debug)]
pub struct Envelope {
    /// Sender.
    pub from: u64,
    /// When it left (the sender's cursor).
    pub at: Nanos,
    /// The message (its `to` is the receiver).
    pub message: Message,
    /// The sender's clock stamp, as a real transport puts on a frame every 50 ms: its
    /// wall clock at sending, echoing the receiver's last stamp
    /// ([`worknode_raft::clock_offset`]).
    pub stamp: Option<(u64, Option<Echo>)>,
}

/// What every member's transport can see of the others: who is down (their host refuses
/// connections) and which links are cut.
#[derive(Debug, Default)]
pub struct Links {
    /// Members whose process is down.
    pub down: BTreeSet<u64>,
    /// Cut links, (from, to).
    pub cut: BTreeSet<(u64, u64)>,
}

/// The network's faults in force.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Weather {
    /// Chance in a million that a message is lost.
    pub loss_ppm: u64,
    /// Chance in a million that a message arrives twice.
    pub duplicate_ppm: u64,
    /// Extra delay, up to this, drawn per message (reordering within it).
    pub jitter_ns: Nanos,
}

/// Messages in flight.
#[derive(Debug)]
pub struct Network {
    in_flight: BTreeMap<(Nanos, u64), Envelope>,
    sequence: u64,
    draws: Draws,
    /// Faults in force.
    pub weather: Weather,
    /// Who is down and which links are cut, shared with the transports.
    pub links: Arc<Mutex<Links>>,
    /// Messages lost to the loss fault.
    pub lost: u64,
    /// Messages duplicated.
    pub duplicated: u64,
    /// Messages dropped at a cut link or a down member.
    pub cut: u64,
    /// The latest arrival scheduled on each link: a healthy link delivers in order.
    last_arrival: BTreeMap<(u64, u64), Nanos>,
}

/// One-way delay on a healthy link: 50–250 µs, a LAN's.
const BASE_DELAY_NS: Nanos = 50_000;
const BASE_JITTER_NS: Nanos = 200_000;

impl Network {
    /// An empty, healthy network.
    pub fn new(seed: u64) -> Self {
        Self {
            in_flight: BTreeMap::new(),
            sequence: 0,
            draws: Draws::new(seed),
            weather: Weather::default(),
            links: Arc::default(),
            lost: 0,
            duplicated: 0,
            cut: 0,
            last_arrival: BTreeMap::new(),
        }
    }

    fn links(&self) -> std::sync::MutexGuard<'_, Links> {
        self.links.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the envelope's receiver is down or its link cut.
    fn blocked(&self, envelope: &Envelope) -> bool {
        let (from, to) = (envelope.from, envelope.message.to);
        let links = self.links();
        links.down.contains(&to) || links.cut.contains(&(from, to))
    }

    /// Puts a sent message on its way, or loses it.
    pub fn send(&mut self, envelope: Envelope) {
        if self.blocked(&envelope) {
            self.cut += 1;
            return;
        }
        if self.draws.below(1_000_000) < self.weather.loss_ppm {
            self.lost += 1;
            return;
        }
        if self.draws.below(1_000_000) < self.weather.duplicate_ppm {
            self.duplicated += 1;
            let copy = Envelope { message: envelope.message.clone(), ..envelope };
            self.enqueue(copy);
        }
        self.enqueue(envelope);
    }

    /// A healthy link is a TCP connection: messages arrive in the order sent. Under the
    /// delay fault they may overtake each other (as across a reconnection).
    fn enqueue(&mut self, envelope: Envelope) {
        let link = (envelope.from, envelope.message.to);
        let mut arrives =
            envelope.at + BASE_DELAY_NS + self.draws.below(BASE_JITTER_NS + self.weather.jitter_ns);
        if self.weather.jitter_ns == 0 {
            let last = self.last_arrival.entry(link).or_default();
            arrives = arrives.max(*last);
            *last = arrives;
        }
        self.sequence += 1;
        self.in_flight.insert((arrives, self.sequence), envelope);
    }

    /// Messages in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// The kinds of message in flight, most common first (for a storm's report).
    pub fn in_flight_kinds(&self) -> Vec<(String, usize)> {
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for envelope in self.in_flight.values() {
            let m = &envelope.message;
            let kind = format!("{:?} {}->{}", m.get_msg_type(), envelope.from, m.to);
            *counts.entry(kind).or_default() += 1;
        }
        let mut counts: Vec<(String, usize)> = counts.into_iter().collect();
        counts.sort_by_key(|(_, count)| std::cmp::Reverse(*count));
        counts
    }

    /// When the next message arrives.
    pub fn next_arrival(&self) -> Option<Nanos> {
        self.in_flight.keys().next().map(|(at, _)| *at)
    }

    /// The next message that has arrived by `now`, unless its receiver went down or its
    /// link was cut while it travelled.
    pub fn arrived(&mut self, now: Nanos) -> Option<Envelope> {
        loop {
            let (&(at, sequence), _) = self.in_flight.iter().next()?;
            if at > now {
                return None;
            }
            let envelope = self.in_flight.remove(&(at, sequence))?;
            if self.blocked(&envelope) {
                self.cut += 1;
                continue;
            }
            return Some(envelope);
        }
    }
}

/// A member's transport: what it sends waits in its outbox, stamped with its cursor, until
/// the world puts it on the network.
#[derive(Debug)]
pub struct SimTransport {
    id: u64,
    outbox: Arc<Mutex<Vec<Envelope>>>,
    cursor: Arc<AtomicU64>,
    links: Arc<Mutex<Links>>,
    /// The member's clock, for the stamps.
    clock: SimClock,
    /// Peers' clocks as measured from their stamps (the world records arrivals here).
    clocks: SharedClockOffsets,
    stamps: Stamps,
}

impl SimTransport {
    /// Member `id`'s transport.
    pub fn new(
        id: u64,
        outbox: Arc<Mutex<Vec<Envelope>>>,
        links: Arc<Mutex<Links>>,
        clock: SimClock,
        clocks: SharedClockOffsets,
    ) -> Self {
        let cursor = clock.cursor();
        Self { id, outbox, cursor, links, clock, clocks, stamps: Stamps::default() }
    }

    fn links(&self) -> std::sync::MutexGuard<'_, Links> {
        self.links.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Transport for SimTransport {
    fn send(&mut self, messages: Vec<Message>) {
        let at = self.cursor.load(Ordering::Relaxed);
        let now = self.clock.now();
        let mut outbox = self.outbox.lock().unwrap_or_else(PoisonError::into_inner);
        for message in messages {
            let stamp = self.stamps.due(message.to, now).then(|| {
                let echo = ClockOffsets::lock(&self.clocks).echo(message.to);
                (self.clock.unix_ns(), echo)
            });
            outbox.push(Envelope { from: self.id, at, message, stamp });
        }
    }

    fn clock_offsets(&self) -> Vec<(u64, worknode_raft::clock_offset::ClockOffset)> {
        ClockOffsets::lock(&self.clocks).all(self.clock.now())
    }

    /// A down member's host refuses connections, as a killed process's does; a cut link
    /// says nothing.
    fn peer_gone(&self, peer: u64) -> bool {
        let links = self.links();
        links.down.contains(&peer) && !links.cut.contains(&(self.id, peer))
    }

    fn peer_reachable(&self, peer: u64) -> bool {
        let links = self.links();
        !links.down.contains(&peer) && !links.cut.contains(&(self.id, peer))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "a test fails loudly on an unexpected value")]

    use super::*;

    fn envelope(from: u64, to: u64, at: Nanos) -> Envelope {
        Envelope { from, at, message: Message { to, ..Message::default() }, stamp: None }
    }

    #[test]
    fn messages_arrive_after_a_delay_in_time_order() {
        let mut network = Network::new(1);
        for at in [0, 10, 20] {
            network.send(envelope(1, 2, at));
        }
        assert!(network.arrived(BASE_DELAY_NS - 1).is_none());
        let mut last = 0;
        let mut count = 0;
        while let Some(next) = network.next_arrival() {
            assert!(next >= last);
            last = next;
            network.arrived(next).unwrap();
            count += 1;
        }
        assert_eq!(count, 3);
    }

    #[test]
    fn a_cut_link_drops_one_direction_only() {
        let mut network = Network::new(1);
        network.links().cut.insert((1, 2));
        network.send(envelope(1, 2, 0));
        network.send(envelope(2, 1, 0));
        let arrived = network.arrived(Nanos::MAX).unwrap();
        assert_eq!((arrived.from, arrived.message.to), (2, 1));
        assert!(network.arrived(Nanos::MAX).is_none());
        assert_eq!(network.cut, 1);
    }

    #[test]
    fn loss_and_duplication_follow_the_weather() {
        let mut network = Network::new(7);
        network.weather = Weather { loss_ppm: 500_000, duplicate_ppm: 500_000, jitter_ns: 0 };
        for at in 0..1_000 {
            network.send(envelope(1, 2, at));
        }
        assert!((400..600).contains(&network.lost), "{}", network.lost);
        assert!((150..350).contains(&network.duplicated), "{}", network.duplicated);
    }
}
