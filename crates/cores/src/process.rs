//! Process control for supervisors (the demo runs its members as child processes):
//! signalling a child, and making a child stop when its supervisor dies.

use std::io;

use crate::sys;

/// Asks process `pid` to shut down cleanly (SIGTERM).
pub fn terminate(pid: u32) -> io::Result<()> {
    sys::send_signal(pid, libc::SIGTERM)
}

/// Stops process `pid` at once (SIGKILL), as a crash would.
pub fn kill(pid: u32) -> io::Result<()> {
    sys::send_signal(pid, libc::SIGKILL)
}

/// Whether process `pid` exists (signal 0 probes without sending anything).
pub fn is_alive(pid: u32) -> bool {
    sys::send_signal(pid, 0).is_ok()
}

/// Makes the kernel send SIGTERM to this process when its parent dies, so that members
/// started by a supervisor never outlive it. Fails when the parent has already gone
/// (the process was re-parented to init before the request took effect).
pub fn terminate_with_parent(expected_parent: u32) -> io::Result<()> {
    let parent = sys::set_parent_death_signal(libc::SIGTERM)?;
    if parent != expected_parent {
        return Err(io::Error::other(format!(
            "the supervising process {expected_parent} has already exited"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "a test fails loudly on an unexpected value")]

    use super::*;

    #[test]
    fn a_terminated_child_exits_and_is_no_longer_alive() {
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        assert!(is_alive(child.id()));
        terminate(child.id()).unwrap();
        let status = child.wait().unwrap();
        assert!(!status.success());
        assert!(!is_alive(child.id()));
    }

    #[test]
    fn a_wrong_expected_parent_is_refused() {
        assert!(terminate_with_parent(u32::MAX - 1).is_err());
        // Undo: no death signal for the test process.
        sys::set_parent_death_signal(0).unwrap();
    }
}
