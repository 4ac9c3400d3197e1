//! The raw system calls. The only `unsafe` in worknode lives here, one wrapper per call,
//! each block with the reason it is sound.

#![allow(unsafe_code)]

use std::io;

use crate::cpuset::CPU_MAX;

/// Words in the affinity buffers handed to the kernel: enough for CPU_MAX.
pub(crate) const MASK_WORDS: usize = (CPU_MAX as usize + 1) / 64;

/// sched_setaffinity(2) for the calling thread.
pub(crate) fn set_affinity(mask: &[u64; MASK_WORDS]) -> io::Result<()> {
    // SAFETY: the kernel reads `size_of_val(mask)` bytes from a valid, initialised
    // buffer of u64 words, the layout of cpu_set_t on every Linux target.
    let result = unsafe { libc::sched_setaffinity(0, size_of_val(mask), mask.as_ptr().cast()) };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// sched_getaffinity(2) for the calling thread.
pub(crate) fn get_affinity() -> io::Result<[u64; MASK_WORDS]> {
    let mut mask = [0u64; MASK_WORDS];
    // SAFETY: the kernel writes at most `size_of_val(&mask)` bytes into the buffer,
    // which lives for the whole call.
    let result =
        unsafe { libc::sched_getaffinity(0, size_of_val(&mask), mask.as_mut_ptr().cast()) };
    if result == 0 {
        Ok(mask)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// sched_setscheduler(2) with SCHED_FIFO for the calling thread.
pub(crate) fn set_fifo(priority: i32) -> io::Result<()> {
    let param = libc::sched_param { sched_priority: priority };
    // SAFETY: `param` is a valid sched_param that outlives the call.
    let result = unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// sched_setscheduler(2) with SCHED_OTHER (the default time-sharing policy) for the
/// calling thread.
pub(crate) fn set_other() -> io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid sched_param that outlives the call.
    let result = unsafe { libc::sched_setscheduler(0, libc::SCHED_OTHER, &param) };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// setpriority(2) for the calling thread only (Linux applies PRIO_PROCESS to a thread id).
pub(crate) fn set_thread_nice(nice: i32) -> io::Result<()> {
    let tid = thread_id();
    // SAFETY: setpriority takes no pointers.
    let result = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, nice) };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The calling thread's scheduling policy.
pub(crate) fn scheduler() -> io::Result<i32> {
    // SAFETY: sched_getscheduler takes no pointers.
    let policy = unsafe { libc::sched_getscheduler(0) };
    if policy >= 0 {
        Ok(policy)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// mlockall(2) of current and future pages.
pub(crate) fn lock_all_memory() -> io::Result<()> {
    // SAFETY: mlockall takes no pointers.
    let result = unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE) };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// gettid(2).
pub(crate) fn thread_id() -> u32 {
    // SAFETY: gettid takes no arguments and cannot fail.
    let tid = unsafe { libc::gettid() };
    tid as u32
}

/// clock_gettime(CLOCK_MONOTONIC) in nanoseconds (a vDSO call, no kernel entry).
#[inline]
pub(crate) fn monotonic_ns() -> u64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `now` is a valid timespec the call writes; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME) until `deadline_ns`, retried when a
/// signal interrupts it.
pub(crate) fn sleep_until_ns(deadline_ns: u64) -> io::Result<()> {
    let deadline = libc::timespec {
        tv_sec: (deadline_ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (deadline_ns % 1_000_000_000) as libc::c_long,
    };
    loop {
        // SAFETY: `deadline` is a valid timespec; the remainder pointer may be null with
        // TIMER_ABSTIME.
        let result = unsafe {
            libc::clock_nanosleep(
                libc::CLOCK_MONOTONIC,
                libc::TIMER_ABSTIME,
                &deadline,
                std::ptr::null_mut(),
            )
        };
        match result {
            0 => return Ok(()),
            libc::EINTR => continue,
            error => return Err(io::Error::from_raw_os_error(error)),
        }
    }
}

/// prctl(PR_SET_TIMERSLACK): how late the kernel may fire this thread's timers to batch
/// wake-ups (50 µs by default for SCHED_OTHER threads).
pub(crate) fn set_timer_slack_ns(slack_ns: u64) -> io::Result<()> {
    // SAFETY: PR_SET_TIMERSLACK takes its value by value; no pointers are passed.
    let result = unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, slack_ns as libc::c_ulong) };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// sysconf(_SC_CLK_TCK): the unit of /proc CPU times (100 on every common kernel).
pub(crate) fn clock_ticks_per_s() -> u64 {
    // SAFETY: sysconf takes no pointers.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as u64
    } else {
        100
    }
}

/// kill(2): sends `signal` to process `pid`.
pub(crate) fn send_signal(pid: u32, signal: i32) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::from_raw_os_error(libc::ESRCH))?;
    // SAFETY: kill takes its arguments by value; no pointers are passed.
    let result = unsafe { libc::kill(pid, signal) };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// prctl(PR_SET_PDEATHSIG): the kernel sends `signal` to this process when the thread
/// that started it exits. Returns the parent's pid as seen right after the call.
pub(crate) fn set_parent_death_signal(signal: i32) -> io::Result<u32> {
    // SAFETY: PR_SET_PDEATHSIG takes the signal number by value; no pointers are passed.
    let result = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_ulong) };
    if result != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: getppid takes no arguments and cannot fail.
    Ok(unsafe { libc::getppid() } as u32)
}
