//! State-machine snapshots in the loop: taken off the loop when the policy
//! ([`crate::engine::snapshots`]) says so, installed when the leader sends one, and asked
//! for when the log lacks what the leader counted.

use super::*;

/// A snapshot of a clone of the state machine, encoded, written and synced by a thread of
/// its own, so the loop waits neither on the encoder nor on the disk.
pub(super) struct SnapshotJob {
    pub(super) index: u64,
    pub(super) compact_to: u64,
    pub(super) started: Instant,
    /// Time the loop spent (cloning the state, syncing the hard state).
    pub(super) encoded: Duration,
    pub(super) writer: Writer,
}

type Written = Result<Snapshot, String>;

/// Who writes a snapshot: a thread, or (for a snapshot kept in memory, the simulator's)
/// the loop itself, already done.
pub(super) enum Writer {
    Thread(std::thread::JoinHandle<Written>),
    Done(Written),
}

impl Writer {
    fn is_finished(&self) -> bool {
        match self {
            Self::Thread(thread) => thread.is_finished(),
            Self::Done(_) => true,
        }
    }

    /// Waits for the write; `Err` if the thread panicked.
    pub(super) fn join(self) -> Result<Written, ()> {
        match self {
            Self::Thread(thread) => thread.join().map_err(|_| ()),
            Self::Done(written) => Ok(written),
        }
    }
}

impl<C: Clock, T: Transport, S: LogStore + raft::Storage> Node<C, T, S> {
    /// Asks `leader`, which believes this member holds entries up to `commit`, for a
    /// snapshot: raft-rs's own request needs a log whose last term is the current one,
    /// which an emptied log lacks, and the leader ignores plain rejections below what it
    /// believes matched. At most once per election timeout.
    pub(super) fn ask_for_snapshot(&mut self, leader: u64, commit: u64) {
        if !self.snapshots.ask(self.clock.now()) {
            return;
        }
        self.handle.counters.snapshot_requests.fetch_add(1, Ordering::Relaxed);
        let raft_log = &self.raw.raft.raft_log;
        let last = raft_log.last_index();
        tracing::info!(
            "the leader (member {leader}) counts entries up to {commit} here, but this member's log ends at {last}: asking it for a snapshot"
        );
        let mut request = Message::default();
        request.set_msg_type(MessageType::MsgAppendResponse);
        request.from = self.config.id;
        request.to = leader;
        request.term = self.raw.raft.term;
        // At least what the leader believes matched, or it takes this for a stale answer.
        request.index = commit;
        request.reject = true;
        request.reject_hint = last;
        request.log_term = raft_log.term(last).unwrap_or(0);
        request.commit = raft_log.committed;
        request.request_snapshot = commit;
        self.transport.send(vec![request]);
    }

    /// The replicated schedule settings changed (a change applied, or a snapshot installed).
    pub(super) fn schedule_changed(&mut self) {
        let changes = self.machine.schedule_changes();
        if let Some(rotation) = &mut self.rotation {
            rotation.set_changes(changes);
        }
        *self.handle.schedule.lock().unwrap_or_else(PoisonError::into_inner) = changes.to_vec();
    }

    pub(super) fn install_snapshot(
        &mut self,
        snapshot: &Snapshot,
    ) -> Result<(), crate::storage::StoreError> {
        match StateMachine::restore(snapshot.get_data()) {
            Ok(machine) => {
                // A local snapshot still being written is older than this one: let it finish
                // (one writer of the file at a time) and drop it.
                if let Some(job) = self.snapshot_job.take() {
                    let _ = job.writer.join();
                }
                // Durable first: a restart must find this state even if the log was cleaned.
                // raft-rs has taken the snapshot as this member's state: not keeping it
                // would leave the state machine behind the log, so the member stops.
                if let Err(error) = self.snapshot_file.save(snapshot) {
                    return Err(crate::storage::StoreError::ReceivedSnapshot(format!(
                        "saving it failed: {error}"
                    )));
                }
                self.raw.mut_store().install_snapshot(snapshot)?;
                self.machine = machine;
                self.handle.changes.reset(self.machine.store().revision());
                self.restore_leases(self.clock.now());
                let (index, bytes) = (snapshot.get_metadata().index, snapshot.get_data().len());
                self.snapshots.installed(index, bytes as u64);
                self.handle.counters.snapshots.fetch_add(1, Ordering::Relaxed);
                self.schedule_changed();
            }
            Err(error) => {
                return Err(crate::storage::StoreError::ReceivedSnapshot(format!(
                    "it does not decode: {error}"
                )))
            }
        }
        Ok(())
    }

    pub(super) fn maybe_snapshot(&mut self) -> Result<(), crate::storage::StoreError> {
        if let Some(job) = &self.snapshot_job {
            if !job.writer.is_finished() {
                return Ok(());
            }
            self.finish_snapshot()?;
        }
        let applied = self.machine.applied_index();
        let wanted = self.slot.lock().unwrap_or_else(PoisonError::into_inner).wanted_index.take();
        if !self.snapshots.due(applied, wanted) {
            return Ok(());
        }
        let term = self.raw.raft.raft_log.term(applied).unwrap_or(0);
        let started = Instant::now();
        // The state machine's collections are persistent: this clone is O(1), and the
        // writes applied while the thread encodes it copy only what they touch. Encoding
        // grows with the state, and in the loop it would stall every client.
        let machine = self.machine.clone();
        let mut snapshot = Snapshot::default();
        let metadata = snapshot.mut_metadata();
        metadata.index = applied;
        metadata.term = term;
        metadata.set_conf_state(self.conf_state());
        // The commit index on disk must cover the snapshot before the snapshot exists.
        let mut hard_state = self.raw.store().hard_state();
        hard_state.commit = hard_state.commit.max(self.raw.raft.raft_log.committed);
        self.raw.mut_store().persist(&[], Some(&hard_state), true)?;
        let encoded = started.elapsed();
        self.snapshots.started();
        let file = self.snapshot_file.clone();
        let write = move || {
            snapshot.set_data(machine.snapshot().into());
            drop(machine);
            file.save(&snapshot).map(|()| snapshot).map_err(|error| error.to_string())
        };
        let writer = if self.snapshot_file.is_in_memory() {
            Ok(Writer::Done(write()))
        } else {
            let cores = self.config.cores.clone();
            std::thread::Builder::new()
                .name("snapshot".into())
                .spawn(move || {
                    // Born with the loop's mask and policy: off its core, below its priority.
                    if let Err(error) =
                        worknode_cores::make_current_background(cores.as_deref(), 10)
                    {
                        tracing::warn!(
                            "the snapshot thread stays where the Raft loop runs: {error}"
                        );
                    }
                    write()
                })
                .map(Writer::Thread)
        };
        match writer {
            Ok(writer) => {
                self.snapshot_job = Some(SnapshotJob {
                    index: applied,
                    compact_to: applied.saturating_sub(self.config.log_keep_entries).max(1),
                    started,
                    encoded,
                    writer,
                });
            }
            Err(error) => tracing_error(&format!("cannot start the snapshot writer: {error}")),
        }
        Ok(())
    }

    /// Waits for the snapshot being written and, once it is durable, compacts the log.
    pub(super) fn finish_snapshot(&mut self) -> Result<(), crate::storage::StoreError> {
        let Some(job) = self.snapshot_job.take() else {
            return Ok(());
        };
        let snapshot = match job.writer.join() {
            Ok(Ok(snapshot)) => snapshot,
            Ok(Err(error)) => {
                tracing_error(&format!("writing the snapshot failed, keeping the log: {error}"));
                return Ok(());
            }
            Err(_) => {
                tracing_error("the snapshot writer panicked; keeping the log");
                return Ok(());
            }
        };
        let bytes = snapshot.get_data().len();
        self.raw.mut_store().snapshot_taken(snapshot, job.compact_to)?;
        self.snapshots.taken(job.index, bytes as u64);
        self.handle.counters.snapshots.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            index = job.index,
            bytes,
            in_loop_ms = job.encoded.as_secs_f64() * 1e3,
            total_ms = job.started.elapsed().as_secs_f64() * 1e3,
            "snapshot taken"
        );
        Ok(())
    }
}
