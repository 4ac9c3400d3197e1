//! mlockall through spawn_worknode, in a test binary of its own because it locks the
//! whole process's memory.

#![allow(clippy::unwrap_used, reason = "a test fails loudly on an unexpected value")]

use worknode_cores::{
    spawn_worknode, CpuAffinity, PinOptions, PinStep, WorknodeClass, WorknodeSpec,
};

fn locked_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find_map(|l| l.strip_prefix("VmLck:")).unwrap();
    line.trim().trim_end_matches("kB").trim().parse().unwrap()
}

#[test]
fn mlock_locks_memory_or_explains() {
    let spec = WorknodeSpec {
        cpu_affinity: CpuAffinity::None,
        ..WorknodeSpec::new("locked", WorknodeClass::Normal)
    };
    let options = PinOptions { mlock: true, ..PinOptions::default() };
    match spawn_worknode(&spec, None, &options, locked_kib) {
        Ok(worknode) => {
            assert!(worknode.report().memory_locked);
            assert!(worknode.join().unwrap() > 0, "VmLck counts the locked pages");
        }
        Err(error) => {
            assert_eq!(error.step, PinStep::MemoryLock);
            assert!(error.to_string().contains("RLIMIT_MEMLOCK"), "{error}");
        }
    }
}
