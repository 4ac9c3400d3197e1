//! The watchdog: catches a pinned worknode that stops making progress.
//!
//! Each worknode bumps a [`Heartbeat`] in its loop (one relaxed atomic add). A watchdog
//! thread on a housekeeping CPU checks every heartbeat four times per `stall_ms`; a
//! heartbeat unchanged for `stall_ms` is a stall, reported once per episode and acted on
//! per [`StallPolicy`]: log and count, or abort the process (fail fast, so a supervisor
//! restarts it and Raft elects another leader). Detection takes at most 1.25 × `stall_ms`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use crate::cpuset::CpuSet;

/// Most worknodes one watchdog watches.
pub const WATCHED_MAX: usize = 256;
/// Checks per stall period.
const CHECKS_PER_PERIOD: u32 = 4;

/// Progress counter of one worknode. Cloning shares the counter.
#[derive(Clone, Debug, Default)]
pub struct Heartbeat {
    beats: Arc<AtomicU64>,
}

impl Heartbeat {
    /// Records progress. Cheap enough for every loop iteration.
    #[inline]
    pub fn beat(&self) {
        self.beats.fetch_add(1, Ordering::Relaxed);
    }

    /// Beats so far.
    pub fn count(&self) -> u64 {
        self.beats.load(Ordering::Relaxed)
    }
}

/// What to do about a stall.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StallPolicy {
    /// Report it (callback, counter) and keep running.
    Log,
    /// Report it, then abort the process.
    Abort,
}

/// A detected stall.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stall {
    /// The worknode.
    pub worknode: String,
    /// How long it had made no progress when detected.
    pub stalled_ms: u64,
}

/// Watchdog settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchdogConfig {
    /// No progress for this long is a stall.
    pub stall_ms: u64,
    /// What to do about it.
    pub policy: StallPolicy,
    /// CPUs the watchdog thread runs on (housekeeping); `None` leaves it unpinned.
    pub cpus: Option<CpuSet>,
}

/// Why a worknode could not be watched.
#[derive(Debug, thiserror::Error)]
pub enum WatchdogError {
    /// The stall threshold is zero.
    #[error("stall_ms must be at least 1")]
    ZeroThreshold,
    /// Too many worknodes.
    #[error("the watchdog already watches {WATCHED_MAX} worknodes")]
    Full,
    /// The thread could not start.
    #[error("starting the watchdog thread: {0}")]
    Spawn(#[from] std::io::Error),
}

struct Watched {
    worknode: String,
    heartbeat: Heartbeat,
    last_count: u64,
    last_progress: Instant,
    reported: bool,
}

/// A running watchdog; stops when dropped.
pub struct Watchdog {
    watched: Arc<Mutex<Vec<Watched>>>,
    stalls_total: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    handle: Option<thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Watchdog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watchdog").field("stalls_total", &self.stalls()).finish_non_exhaustive()
    }
}

impl Watchdog {
    /// Starts the watchdog thread; `on_stall` runs on it for each stall (log it, count
    /// it in a metric) before the policy acts.
    pub fn start(
        config: WatchdogConfig,
        on_stall: impl Fn(&Stall) + Send + 'static,
    ) -> Result<Self, WatchdogError> {
        if config.stall_ms == 0 {
            return Err(WatchdogError::ZeroThreshold);
        }
        let watched: Arc<Mutex<Vec<Watched>>> = Arc::new(Mutex::new(Vec::new()));
        let stalls_total = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (list, total, flag) =
            (Arc::clone(&watched), Arc::clone(&stalls_total), Arc::clone(&stop));
        let stall = Duration::from_millis(config.stall_ms);
        let period = (stall / CHECKS_PER_PERIOD).max(Duration::from_millis(1));
        let handle = thread::Builder::new().name("watchdog".into()).spawn(move || {
            if let Some(cpus) = config.cpus.filter(|cpus| !cpus.is_empty()) {
                let _ = crate::pin::set_current_affinity(&cpus);
            }
            while !flag.load(Ordering::Relaxed) {
                thread::sleep(period);
                let now = Instant::now();
                let mut stalls = Vec::new();
                for entry in list.lock().unwrap_or_else(PoisonError::into_inner).iter_mut() {
                    let count = entry.heartbeat.count();
                    if count != entry.last_count {
                        entry.last_count = count;
                        entry.last_progress = now;
                        entry.reported = false;
                    } else if !entry.reported && now - entry.last_progress >= stall {
                        entry.reported = true;
                        stalls.push(Stall {
                            worknode: entry.worknode.clone(),
                            stalled_ms: (now - entry.last_progress).as_millis() as u64,
                        });
                    }
                }
                for stall in &stalls {
                    total.fetch_add(1, Ordering::Relaxed);
                    on_stall(stall);
                    if config.policy == StallPolicy::Abort {
                        eprintln!(
                            "worknode watchdog: {:?} made no progress for {} ms; aborting (fail fast)",
                            stall.worknode, stall.stalled_ms
                        );
                        std::process::abort();
                    }
                }
            }
        })?;
        Ok(Self { watched, stalls_total, stop, handle: Some(handle) })
    }

    /// Watches a worknode; it must beat the returned heartbeat at least every `stall_ms`.
    pub fn watch(&self, worknode: impl Into<String>) -> Result<Heartbeat, WatchdogError> {
        let mut list = self.watched.lock().unwrap_or_else(PoisonError::into_inner);
        if list.len() >= WATCHED_MAX {
            return Err(WatchdogError::Full);
        }
        let heartbeat = Heartbeat::default();
        list.push(Watched {
            worknode: worknode.into(),
            heartbeat: heartbeat.clone(),
            last_count: 0,
            last_progress: Instant::now(),
            reported: false,
        });
        Ok(heartbeat)
    }

    /// Stops watching a worknode (it finished on purpose).
    pub fn unwatch(&self, worknode: &str) {
        self.watched
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|w| w.worknode != worknode);
    }

    /// Stalls detected so far (the `worknode_watchdog_stalls_total` metric).
    pub fn stalls(&self) -> u64 {
        self.stalls_total.load(Ordering::Relaxed)
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}
