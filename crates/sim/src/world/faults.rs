//! The fault plan carried out on the world: crashes and restarts, cut links, the
//! network's weather, skewed clocks, slow and full disks, frozen members, and the
//! troubled stretches the checks leave aside.

use super::*;

impl World {
    pub(super) fn apply_faults(&mut self) {
        while self.plan.front().is_some_and(|(at, _)| *at <= self.now) {
            let Some((_, event)) = self.plan.pop_front() else {
                break;
            };
            self.trace.event(self.now, format_args!("fault: {event:?}"));
            self.apply_fault(event);
            self.note_trouble();
        }
    }

    /// Opens or closes a troubled stretch after a fault event.
    pub(super) fn note_trouble(&mut self) {
        let troubled = {
            let links = self.network.links.lock().unwrap_or_else(PoisonError::into_inner);
            let down =
                self.members.iter().filter(|m| m.node.is_none() || m.catch_up.is_some()).count();
            let disks_slow = self.members.iter().any(|m| {
                m.wall_offset.load(Ordering::Relaxed) != 0
                    || m.disk.lock().unwrap_or_else(PoisonError::into_inner).slow_ns != 0
            });
            // A silent leader is the schedule's to replace within a turn; plain Raft waits
            // out an election timeout.
            let frozen = self.members.iter().any(|m| m.frozen) && !self.config.rotation;
            !links.cut.is_empty()
                || frozen
                || self.network.weather != net::Weather::default()
                || disks_slow
                || down > self.members.len() / 2
        };
        let open = self.troubled.last().is_some_and(|(_, to)| *to == Nanos::MAX);
        match (troubled, open) {
            (true, false) => self.troubled.push((self.now, Nanos::MAX)),
            (false, true) => {
                if let Some(last) = self.troubled.last_mut() {
                    last.1 = self.now;
                }
            }
            _ => {}
        }
    }

    fn apply_fault(&mut self, event: FaultEvent) {
        match event {
            FaultEvent::Crash(ids) => {
                let indexes: Vec<usize> = ids.iter().filter_map(|id| self.index_of(*id)).collect();
                for index in indexes {
                    self.crash(index);
                }
            }
            FaultEvent::Restart(ids) => {
                let indexes: Vec<usize> = ids.iter().filter_map(|id| self.index_of(*id)).collect();
                for index in indexes {
                    if self.members[index].node.is_none() {
                        self.start(index);
                    }
                }
            }
            FaultEvent::Cut(links) => {
                let mut shared = self.network.links.lock().unwrap_or_else(PoisonError::into_inner);
                shared.cut.extend(links);
            }
            FaultEvent::Mend(links) => {
                let mut shared = self.network.links.lock().unwrap_or_else(PoisonError::into_inner);
                for link in links {
                    shared.cut.remove(&link);
                }
            }
            FaultEvent::Weather(weather) => self.network.weather = weather,
            FaultEvent::Skew(id, offset) => {
                if let Some(index) = self.index_of(id) {
                    self.members[index].wall_offset.store(offset, Ordering::Relaxed);
                    self.members[index].clock_moved_at = self.now;
                }
            }
            FaultEvent::SlowDisk(id, slow) => {
                if let Some(index) = self.index_of(id) {
                    self.members[index]
                        .disk
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .slow_ns = slow;
                }
            }
            FaultEvent::DiskFull(id, full) => {
                if let Some(index) = self.index_of(id) {
                    self.members[index].disk.lock().unwrap_or_else(PoisonError::into_inner).full =
                        full;
                    // A member that stopped on the full disk starts again (its supervisor).
                    if !full && self.members[index].node.is_none() {
                        self.start(index);
                    }
                }
            }
            FaultEvent::Freeze { member, incoming } => self.freeze(member, incoming),
            FaultEvent::Damage(id) => {
                if let Some(index) = self.index_of(id) {
                    self.crash(index);
                    // One damaged log at a time, as faults come one at a time: a member
                    // still waiting to rejoin keeps this one's damage from happening.
                    let waiting = self.members.iter().any(|m| m.rejoin_at.is_some());
                    if waiting {
                        self.trace.event(
                            self.now,
                            format_args!(
                                "another member waits to rejoin: member {id}'s log stays whole"
                            ),
                        );
                    } else {
                        let member = &mut self.members[index];
                        member.disk.lock().unwrap_or_else(PoisonError::into_inner).damaged = true;
                    }
                }
            }
            FaultEvent::Thaw => self.thaw(),
            FaultEvent::HealAll => self.heal_all(),
        }
    }

    /// Stops the member that leads now (the newest term's), else `fallback`; with
    /// `incoming`, the next turn's member if it is another (the leader has not yet seen it
    /// silent when it hands over: the turn is shorter than its liveness window).
    fn freeze(&mut self, fallback: u64, incoming: bool) {
        let leader = self
            .members
            .iter()
            .filter_map(|m| m.node.as_ref().map(|(_, handle)| handle.status()))
            .filter(|status| status.is_leader)
            .max_by_key(|status| status.term)
            .map_or(fallback, |status| status.id);
        let next = incoming.then(|| self.next_turns_member()).flatten();
        let next = next.filter(|&next| next != leader);
        let leader = next.unwrap_or(leader);
        let Some(index) = self.index_of(leader) else {
            return;
        };
        let member = &mut self.members[index];
        if member.node.is_none() || member.frozen {
            return;
        }
        member.frozen = true;
        self.freezes.push((leader, self.now, Nanos::MAX));
        let whose = if next.is_some() { " (the next turn's member)" } else { "" };
        self.trace.event(self.now, format_args!("member {leader} freezes{whose}"));
    }

    /// The member whose turn begins next, by the true time (none without rotation).
    fn next_turns_member(&self) -> Option<u64> {
        let first = self.members.first()?;
        let mut rotation =
            worknode_raft::rotation::Rotation::new(self.node_config(first).rotation?).ok()?;
        rotation.scheduled_at(WALL_START_UNIX_NS + self.now + TURN)
    }

    /// The frozen member resumes: its loop takes what queued up.
    fn thaw(&mut self) {
        let now = self.now;
        for member in self.members.iter_mut().filter(|m| m.frozen) {
            member.frozen = false;
            member.wake_at = now;
            for freeze in self.freezes.iter_mut().filter(|f| f.0 == member.id && f.2 == Nanos::MAX)
            {
                freeze.2 = now;
            }
            self.trace.event(now, format_args!("member {} thaws", member.id));
        }
    }

    fn heal_all(&mut self) {
        self.thaw();
        *self.network.links.lock().unwrap_or_else(PoisonError::into_inner) = Links {
            down: self.members.iter().filter(|m| m.node.is_none()).map(|m| m.id).collect(),
            cut: Default::default(),
        };
        self.network.weather = net::Weather::default();
        for index in 0..self.members.len() {
            let member = &mut self.members[index];
            if member.wall_offset.swap(0, Ordering::Relaxed) != 0 {
                member.clock_moved_at = self.now;
            }
            {
                let mut disk = member.disk.lock().unwrap_or_else(PoisonError::into_inner);
                disk.slow_ns = 0;
                disk.full = false;
            }
            if member.node.is_none() {
                self.start(index);
            }
        }
    }
}
