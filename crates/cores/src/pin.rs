//! Pinning worknode threads: sched_setaffinity, SCHED_FIFO and mlockall.
//!
//! A worknode pins itself once, as the first thing its thread does, and reads the mask
//! back to prove it took; nothing here belongs on a hot path. When the OS refuses, the
//! error says which call failed and how to fix it; with `best_effort` the worknode runs
//! unpinned and the report says so.

use std::io;
use std::sync::mpsc;
use std::thread;

use crate::cpuset::{CpuSet, CPU_MAX};
use crate::grant::{CoreAuthority, CoreGrant};
use crate::plan::WorknodeSpec;
use crate::sys::{self, MASK_WORDS};

fn to_mask(cpus: &CpuSet) -> [u64; MASK_WORDS] {
    let mut mask = [0u64; MASK_WORDS];
    for cpu in cpus.iter() {
        mask[cpu as usize / 64] |= 1 << (cpu % 64);
    }
    mask
}

fn from_mask(mask: &[u64; MASK_WORDS]) -> CpuSet {
    (0..=CPU_MAX).filter(|&cpu| mask[cpu as usize / 64] & (1 << (cpu % 64)) != 0).collect()
}

/// The calling thread's CPU affinity.
pub fn current_affinity() -> io::Result<CpuSet> {
    sys::get_affinity().map(|mask| from_mask(&mask))
}

/// Pins the calling thread to `cpus` without a grant: for the crate's own measurement
/// load only; worknodes pin through [`spawn_worknode`].
pub(crate) fn set_current_affinity(cpus: &CpuSet) -> io::Result<()> {
    sys::set_affinity(&to_mask(cpus))
}

/// Makes the calling thread background work — for threads a worknode starts, such as a
/// snapshot encoder. A new thread inherits its creator's CPU mask and scheduling policy,
/// so a helper of a pinned critical worknode would otherwise share its isolated core, at
/// its real-time priority when it has one. This moves the thread to the plan's
/// housekeeping CPUs (with an authority whose plan has any; it claims no reserved core, so
/// it needs no grant), back to SCHED_OTHER, at `nice` (0 to 19).
/// Every step is tried even if an earlier one fails (the policy first: a real-time helper
/// is the worst outcome); the first failure is returned.
pub fn make_current_background(authority: Option<&CoreAuthority>, nice: i32) -> io::Result<()> {
    let policy = match sys::scheduler() {
        Ok(libc::SCHED_OTHER) => Ok(()),
        Ok(_) => sys::set_other(),
        Err(error) => Err(error),
    };
    let affinity = match authority.map(|a| a.plan().housekeeping()) {
        Some(housekeeping) if !housekeeping.is_empty() => sys::set_affinity(&to_mask(housekeeping)),
        _ => Ok(()),
    };
    let niceness = sys::set_thread_nice(nice);
    policy.and(affinity).and(niceness)
}

/// The calling thread's kernel thread id (the `TID` of `/proc/self/task/TID`).
pub fn current_thread_id() -> u32 {
    sys::thread_id()
}

/// Whether the calling thread runs under SCHED_FIFO.
pub fn current_is_fifo() -> io::Result<bool> {
    sys::scheduler().map(|policy| policy == libc::SCHED_FIFO)
}

/// Optional steps after pinning.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PinOptions {
    /// Run the thread under SCHED_FIFO at this priority (1..=99).
    pub fifo_priority: Option<u8>,
    /// Lock all of the process's memory (mlockall) so page faults cannot stall it.
    pub mlock: bool,
    /// Continue unpinned (with a warning) when the OS refuses, instead of failing.
    pub best_effort: bool,
}

/// Which step of setting up a worknode thread failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PinStep {
    /// sched_setaffinity.
    Affinity,
    /// Reading the mask back.
    Verify,
    /// sched_setscheduler(SCHED_FIFO).
    Scheduler,
    /// mlockall.
    MemoryLock,
    /// Starting the thread.
    Spawn,
}

/// A worknode thread could not be set up as asked.
#[derive(Debug, thiserror::Error)]
#[error("worknode {worknode:?}: {what} failed: {source}; {fix}")]
pub struct PinError {
    /// The worknode.
    pub worknode: String,
    /// The step that failed.
    pub step: PinStep,
    /// What was attempted, e.g. "pinning to CPUs 2-3".
    pub what: String,
    /// The OS error.
    #[source]
    pub source: io::Error,
    /// How to fix it.
    pub fix: String,
}

/// What a worknode thread ended up with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinReport {
    /// The worknode.
    pub worknode: String,
    /// Kernel thread id.
    pub thread_id: u32,
    /// CPUs asked for (empty: not pinned).
    pub requested: CpuSet,
    /// The mask read back after pinning.
    pub effective: CpuSet,
    /// Whether the thread is pinned to exactly `requested`.
    pub pinned: bool,
    /// SCHED_FIFO priority in force, if any.
    pub fifo_priority: Option<u8>,
    /// Whether mlockall succeeded.
    pub memory_locked: bool,
    /// What fell short (best effort).
    pub warnings: Vec<String>,
}

/// A running worknode thread.
#[derive(Debug)]
pub struct Worknode<T> {
    report: PinReport,
    /// `None` only when setup failed, and then no `Worknode` is returned.
    handle: thread::JoinHandle<Option<T>>,
}

impl<T> Worknode<T> {
    /// How the thread was set up.
    pub fn report(&self) -> &PinReport {
        &self.report
    }

    /// Waits for the worknode's function to return.
    pub fn join(self) -> thread::Result<T> {
        self.handle.join().map(|value| match value {
            Some(value) => value,
            None => unreachable!("a worknode whose setup succeeded always runs its function"),
        })
    }
}

/// Starts `f` on a new OS thread named after the worknode that first pins itself to the
/// grant's CPUs, reads the mask back, and applies `options`. Returns once the thread is
/// set up (or failed to be). Without a grant the thread runs unpinned. The grant moves
/// into the thread and is released when `f` returns.
pub fn spawn_worknode<T, F>(
    spec: &WorknodeSpec,
    grant: Option<CoreGrant>,
    options: &PinOptions,
    f: F,
) -> Result<Worknode<T>, PinError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    if let Some(grant) = &grant {
        assert_eq!(grant.worknode(), spec.name, "a grant is for one worknode only");
    }
    let name = spec.name.clone();
    let options = options.clone();
    let (ready_tx, ready_rx) = mpsc::sync_channel::<Result<PinReport, PinError>>(1);
    let handle = thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            let setup = set_up(&name, grant.as_ref().map(CoreGrant::cpus), &options);
            let ok = setup.is_ok();
            // The spawner waits on this channel; it only disappears if the spawner did.
            let _ = ready_tx.send(setup);
            if !ok {
                return None;
            }
            let result = f();
            drop(grant);
            Some(result)
        })
        .map_err(|source| PinError {
            worknode: spec.name.clone(),
            step: PinStep::Spawn,
            what: "starting its thread".into(),
            source,
            fix: "check the process's thread limit (ulimit -u) and memory".into(),
        })?;
    let setup = ready_rx.recv().unwrap_or_else(|_| {
        Err(PinError {
            worknode: spec.name.clone(),
            step: PinStep::Spawn,
            what: "setting up its thread".into(),
            source: io::Error::other("the thread exited before reporting"),
            fix: "see the thread's panic message above".into(),
        })
    });
    match setup {
        Ok(report) => Ok(Worknode { report, handle }),
        Err(error) => {
            let _ = handle.join();
            Err(error)
        }
    }
}

/// Runs on the worknode's own thread, before its function.
fn set_up(
    worknode: &str,
    cpus: Option<&CpuSet>,
    options: &PinOptions,
) -> Result<PinReport, PinError> {
    let thread_id = sys::thread_id();
    let mut warnings = Vec::new();
    let requested = cpus.cloned().unwrap_or_default();
    let error = |step, what: String, source: io::Error, fix: String| PinError {
        worknode: worknode.to_owned(),
        step,
        what,
        source,
        fix,
    };
    let mut pinned = false;
    if !requested.is_empty() {
        match sys::set_affinity(&to_mask(&requested)) {
            Ok(()) => pinned = true,
            Err(source) => {
                let fix = affinity_fix(&source);
                let failure =
                    error(PinStep::Affinity, format!("pinning to CPUs {requested}"), source, fix);
                if !options.best_effort {
                    return Err(failure);
                }
                warnings.push(format!("running unpinned (best effort): {failure}"));
            }
        }
    }
    let effective = sys::get_affinity().map(|mask| from_mask(&mask)).map_err(|source| {
        error(
            PinStep::Verify,
            "reading the CPU mask back".into(),
            source,
            "report this as a bug".into(),
        )
    })?;
    if pinned && effective != requested {
        let failure = error(
            PinStep::Verify,
            format!("pinning to CPUs {requested}"),
            io::Error::other(format!("the kernel applied {effective} instead")),
            "some CPUs are offline or outside the cpuset; check `worknode cores show`".into(),
        );
        if !options.best_effort {
            return Err(failure);
        }
        pinned = false;
        warnings.push(format!("mask differs (best effort): {failure}"));
    }
    let mut fifo_priority = None;
    if let Some(priority) = options.fifo_priority {
        match sys::set_fifo(i32::from(priority.clamp(1, 99))) {
            Ok(()) => fifo_priority = Some(priority.clamp(1, 99)),
            Err(source) => {
                let failure = error(
                    PinStep::Scheduler,
                    format!("switching to SCHED_FIFO priority {priority}"),
                    source,
                    "run as root, or grant CAP_SYS_NICE (systemd: AmbientCapabilities=CAP_SYS_NICE) or raise RLIMIT_RTPRIO (systemd: LimitRTPRIO=99); under cgroup v1 the cgroup also needs cpu.rt_runtime_us".into(),
                );
                if !options.best_effort {
                    return Err(failure);
                }
                warnings.push(format!("staying SCHED_OTHER (best effort): {failure}"));
            }
        }
    }
    let mut memory_locked = false;
    if options.mlock {
        match sys::lock_all_memory() {
            Ok(()) => memory_locked = true,
            Err(source) => {
                let failure = error(
                    PinStep::MemoryLock,
                    "locking memory (mlockall)".into(),
                    source,
                    "raise RLIMIT_MEMLOCK (systemd: LimitMEMLOCK=infinity; shell: ulimit -l unlimited) or grant CAP_IPC_LOCK".into(),
                );
                if !options.best_effort {
                    return Err(failure);
                }
                warnings.push(format!("memory not locked (best effort): {failure}"));
            }
        }
    }
    Ok(PinReport {
        worknode: worknode.to_owned(),
        thread_id,
        requested,
        effective,
        pinned,
        fifo_priority,
        memory_locked,
        warnings,
    })
}

/// What to do about a refused sched_setaffinity.
fn affinity_fix(source: &io::Error) -> String {
    match source.raw_os_error() {
        Some(libc::EINVAL) => "the CPUs are offline or outside this process's cpuset: add them to the cgroup's cpuset.cpus (systemd: AllowedCPUs=) or choose CPUs from `worknode cores show`".into(),
        Some(libc::EPERM) => "changing another thread's affinity needs CAP_SYS_NICE; run as the worknode's own user or grant the capability".into(),
        _ => "see sched_setaffinity(2)".into(),
    }
}
