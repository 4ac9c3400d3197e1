//! Catch-up reads off the Raft loop.
//!
//! A leader sends a lagging follower entries the entry cache no longer holds: raft-engine
//! reads, decodes and checksums them from the log files, milliseconds per 256 KiB
//! message. Done on the loop, that is a stall for every client: a follower in probe
//! state is sent a fresh probe on each heartbeat answer (and linearizable reads make a
//! heartbeat round each), so a restarted member costs the leader dozens of such reads in
//! a row.
//!
//! raft-rs lets storage answer a read for an append with `LogTemporarilyUnavailable` and
//! be called back (`RawNode::on_entries_fetched`) once the entries are in memory, as TiKV
//! does. Here a background thread does the read; the loop learns of it through a channel
//! carrying the read's first index, hands raft-rs back the context of the call that asked,
//! and raft-rs asks again, now answered from memory. A read for the same first index while
//! one is in flight is not started twice, so a burst of heartbeat answers costs one read,
//! and each finished read answers one request: probes go out as fast as reads finish, not
//! once per heartbeat answer. A log overwritten or compacted meanwhile discards every read
//! begun before it (a new generation).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use crossbeam_channel::Sender;
use raft::eraftpb::Entry;
use raft::GetEntriesContext;
use raft_engine::Engine;

use crate::doorbell::LoopSender;
use crate::storage::{EntryExt, GROUP};

/// Most reads held at once (in flight or finished and not yet asked for again); beyond
/// it the loop reads for itself.
const READS_MAX: usize = 8;

/// What a read raft-rs may wait for gets.
pub(crate) enum Lookup {
    /// A finished read covers it.
    Ready(Vec<Entry>),
    /// A read is under way; raft-rs is called back when it ends.
    Pending,
    /// Read it here: the background read failed (the error comes back as the loop's
    /// read would give it), or too many reads are held.
    Inline,
}

/// One read, from the request to its answer.
struct Read {
    low: u64,
    max_size: Option<usize>,
    generation: u64,
    /// The raft-rs call that asked, handed back when the read ends.
    context: Option<GetEntriesContext>,
    /// `None` while in flight; `Some(None)` when it failed.
    result: Option<Option<Vec<Entry>>>,
}

impl Read {
    fn is(&self, low: u64, max_size: Option<usize>, generation: u64) -> bool {
        self.low == low && self.max_size == max_size && self.generation == generation
    }
}

#[derive(Default)]
struct Shared {
    reads: Vec<Read>,
    /// Bumped when the log is overwritten or compacted: older reads are void.
    generation: u64,
}

struct Job {
    low: u64,
    high: u64,
    max_size: Option<usize>,
    generation: u64,
}

/// The background reader and what it shares with the loop.
pub(crate) struct Fetcher {
    shared: Arc<Mutex<Shared>>,
    jobs: Option<Sender<Job>>,
    thread: Option<JoinHandle<()>>,
    /// Reads started, ever (read for the status every loop turn: no lock).
    started: AtomicU64,
}

impl Fetcher {
    /// Starts the reader thread; `ready` gets the first index of each finished read.
    /// `setup` runs first on the new thread (off the loop's core, at a lower priority).
    pub(crate) fn start(
        engine: Arc<Engine>,
        ready: LoopSender<u64>,
        setup: impl FnOnce() + Send + 'static,
    ) -> std::io::Result<Self> {
        let shared = Arc::new(Mutex::new(Shared::default()));
        let (jobs, queue) = crossbeam_channel::unbounded::<Job>();
        let reader_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new().name("log-fetch".into()).spawn(move || {
            setup();
            for job in queue {
                let mut entries = Vec::new();
                let read = engine
                    .fetch_entries_to::<EntryExt>(
                        GROUP,
                        job.low,
                        job.high,
                        job.max_size,
                        &mut entries,
                    )
                    .ok()
                    .map(|_| entries);
                let mut shared = reader_shared.lock().unwrap_or_else(PoisonError::into_inner);
                let Some(slot) =
                    shared.reads.iter_mut().find(|r| r.is(job.low, job.max_size, job.generation))
                else {
                    continue; // Void: the log changed under it.
                };
                slot.result = Some(read);
                drop(shared);
                if ready.try_send(job.low).is_err() {
                    return; // The loop is gone.
                }
            }
        })?;
        Ok(Self { shared, jobs: Some(jobs), thread: Some(thread), started: AtomicU64::new(0) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Entries `[low, high)` within `max_size` for an append raft-rs can wait for.
    pub(crate) fn get(
        &self,
        low: u64,
        high: u64,
        max_size: Option<usize>,
        context: GetEntriesContext,
    ) -> Lookup {
        let mut shared = self.lock();
        let generation = shared.generation;
        if let Some(at) = shared.reads.iter().position(|r| r.is(low, max_size, generation)) {
            return match shared.reads[at].result {
                None => Lookup::Pending,
                Some(_) => match shared.reads.swap_remove(at).result {
                    Some(Some(mut entries)) => {
                        // The log may have grown since; never past what was asked.
                        entries.retain(|e| e.index < high);
                        Lookup::Ready(entries)
                    }
                    _ => Lookup::Inline,
                },
            };
        }
        if shared.reads.len() >= READS_MAX {
            // Make room by dropping the oldest finished read nobody asked for again.
            let Some(at) = shared.reads.iter().position(|r| r.result.is_some()) else {
                return Lookup::Inline;
            };
            shared.reads.remove(at);
        }
        let Some(jobs) = &self.jobs else {
            return Lookup::Inline;
        };
        if jobs.send(Job { low, high, max_size, generation }).is_err() {
            return Lookup::Inline;
        }
        self.started.fetch_add(1, Ordering::Relaxed);
        shared.reads.push(Read { low, max_size, generation, context: Some(context), result: None });
        Lookup::Pending
    }

    /// The context of the finished read that begins at `low`, to hand back to raft-rs
    /// (`None` if it was voided or already handed back).
    pub(crate) fn finished(&self, low: u64) -> Option<GetEntriesContext> {
        let mut shared = self.lock();
        let generation = shared.generation;
        shared
            .reads
            .iter_mut()
            .find(|r| r.low == low && r.generation == generation && r.result.is_some())
            .and_then(|r| r.context.take())
    }

    /// The log was overwritten or compacted: every read begun before now is void.
    pub(crate) fn invalidate(&self) {
        let mut shared = self.lock();
        shared.generation += 1;
        shared.reads.clear();
    }

    /// Reads started, ever.
    pub(crate) fn started(&self) -> u64 {
        self.started.load(Ordering::Relaxed)
    }
}

impl Drop for Fetcher {
    fn drop(&mut self) {
        // Closing the queue ends the thread after its current read; joining it releases
        // its hold on the engine before the data dir is opened again.
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use raft_engine::{Config, LogBatch};

    use super::*;

    fn engine(name: &str) -> Arc<Engine> {
        let dir =
            std::env::temp_dir().join(format!("worknode-fetch-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let config = Config { dir: dir.to_string_lossy().into_owned(), ..Config::default() };
        let engine = Engine::open(config).unwrap();
        let entries: Vec<Entry> = (1..=100)
            .map(|index| Entry { index, term: 1, data: vec![9; 100].into(), ..Entry::default() })
            .collect();
        let mut batch = LogBatch::default();
        batch.add_entries::<EntryExt>(GROUP, &entries).unwrap();
        engine.write(&mut batch, false).unwrap();
        Arc::new(engine)
    }

    /// A reader over a fresh log of entries 1..=100, and its finished-read channel.
    fn fetcher(name: &str) -> (Fetcher, crossbeam_channel::Receiver<u64>) {
        let (tx, ready) = crossbeam_channel::unbounded();
        let tx = LoopSender::new(tx, Arc::default());
        (Fetcher::start(engine(name), tx, || {}).unwrap(), ready)
    }

    fn context() -> GetEntriesContext {
        GetEntriesContext::empty(true)
    }

    fn wait(ready: &crossbeam_channel::Receiver<u64>) -> u64 {
        ready.recv_timeout(Duration::from_secs(10)).expect("the read finishes")
    }

    #[test]
    fn a_read_is_started_once_and_answers_once() {
        let (fetcher, ready) = fetcher("once");
        assert!(matches!(fetcher.get(10, 101, None, context()), Lookup::Pending));
        // Asked again while in flight (a burst of heartbeat answers): no second read.
        assert!(matches!(fetcher.get(10, 101, None, context()), Lookup::Pending));
        assert_eq!(wait(&ready), 10);
        assert_eq!(fetcher.started(), 1);
        assert!(fetcher.finished(10).is_some(), "the asking call's context comes back");
        assert!(fetcher.finished(10).is_none(), "and only once");
        // The log grew meanwhile: the answer stops where the new request does.
        let Lookup::Ready(entries) = fetcher.get(10, 50, None, context()) else {
            panic!("the finished read answers");
        };
        assert_eq!(entries.first().map(|e| e.index), Some(10));
        assert_eq!(entries.last().map(|e| e.index), Some(49));
        // Taken: the next request for it is a new read.
        assert!(matches!(fetcher.get(10, 101, None, context()), Lookup::Pending));
        assert_eq!(fetcher.started(), 2);
    }

    #[test]
    fn a_size_limit_is_part_of_the_request() {
        let (fetcher, ready) = fetcher("size");
        assert!(matches!(fetcher.get(1, 101, Some(1_000), context()), Lookup::Pending));
        wait(&ready);
        assert!(matches!(fetcher.get(1, 101, None, context()), Lookup::Pending));
        let Lookup::Ready(limited) = fetcher.get(1, 101, Some(1_000), context()) else {
            panic!("the size-limited read answers its own request");
        };
        assert!(!limited.is_empty() && limited.len() < 100, "{} entries", limited.len());
    }

    #[test]
    fn a_changed_log_voids_the_reads_begun_before() {
        let (fetcher, ready) = fetcher("void");
        assert!(matches!(fetcher.get(5, 101, None, context()), Lookup::Pending));
        wait(&ready);
        fetcher.invalidate();
        assert!(fetcher.finished(5).is_none());
        assert!(matches!(fetcher.get(5, 101, None, context()), Lookup::Pending));
        assert_eq!(fetcher.started(), 2);
    }

    #[test]
    fn a_failed_read_is_left_to_the_loop() {
        let (fetcher, ready) = fetcher("fail");
        // Entries the log never had: raft-engine refuses, and the loop's own read will
        // report the error as raft-rs expects it.
        assert!(matches!(fetcher.get(500, 600, None, context()), Lookup::Pending));
        wait(&ready);
        assert!(matches!(fetcher.get(500, 600, None, context()), Lookup::Inline));
    }
}
