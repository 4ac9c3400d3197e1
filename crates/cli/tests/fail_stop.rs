//! A member whose Raft loop cannot go on stops: the process says why and exits non-zero at
//! once, so a supervisor restarts it, while the other members serve on. Real
//! `worknode serve` processes; ENOSPC on a small tmpfs (mounted when the test runs as root).

#![allow(clippy::unwrap_used, reason = "a test fails loudly on an unexpected value")]

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use support::ProcessCluster;
use worknode_server::adminpb::admin_client::AdminClient;
use worknode_server::adminpb::InjectFaultRequest;
use worknode_server::pb::PutRequest;

/// `worknode serve`'s exit status when its Raft loop ended on its own.
const FAIL_STOP: i32 = 70;

async fn put(cluster: &ProcessCluster, index: usize, key: &str, value: Vec<u8>) -> bool {
    let mut client = cluster.kv(index).await;
    let put = PutRequest { key: key.into(), value, ..Default::default() };
    matches!(tokio::time::timeout(Duration::from_secs(5), client.put(put)).await, Ok(Ok(_)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_the_raft_loop_ends_the_process_with_the_reason() {
    let mut cluster = ProcessCluster::start("fail-stop-panic", 3, 20);
    cluster.leader().await;
    assert!(put(&cluster, 0, "before", b"v".to_vec()).await);
    let mut admin = AdminClient::new(cluster.channel(0).await);
    admin.inject_fault(InjectFaultRequest { fault: "raft-panic".into() }).await.unwrap();
    let injected = Instant::now();
    let status = cluster.wait_exit(0, Duration::from_secs(5)).expect("the member exits");
    let took = injected.elapsed();
    assert_eq!(status.code(), Some(FAIL_STOP), "{status}");
    assert!(took < Duration::from_secs(1), "exited {took:?} after the panic");
    let log = cluster.log(0);
    assert!(
        log.contains("the Raft loop ended (panicked: fault injection: the Raft loop panics)"),
        "{log}"
    );
    // The others serve on, and the restarted member catches up.
    assert!(put(&cluster, 1, "without-0", b"v".to_vec()).await);
    cluster.spawn(0);
    cluster.leader().await;
    assert!(put(&cluster, 0, "restarted", b"v".to_vec()).await);
    cluster.assert_converged().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_space_for_the_log_ends_the_process_and_a_restart_works_once_space_is_freed() {
    let mut cluster = ProcessCluster::start("fail-stop-enospc", 3, 20);
    cluster.leader().await;
    assert!(put(&cluster, 0, "before", b"v".to_vec()).await);
    // Move member 0's data onto a small tmpfs.
    assert!(cluster.terminate(0).success());
    let data = cluster.root.join("data-1");
    let on_disk = cluster.root.join("data-1.disk");
    std::fs::rename(&data, &on_disk).unwrap();
    std::fs::create_dir(&data).unwrap();
    let mount = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=48m", "tmpfs"])
        .arg(&data)
        .output()
        .unwrap();
    if !mount.status.success() {
        eprintln!(
            "skipped: cannot mount a tmpfs (needs root): {}",
            String::from_utf8_lossy(&mount.stderr).trim()
        );
        return;
    }
    let _unmount = Unmount(data.clone());
    let copied = Command::new("cp").arg("-a").arg(on_disk.join(".")).arg(&data).status();
    assert!(copied.unwrap().success());
    // Leave a few MiB: the log fills them within a few dozen large writes.
    let filler = data.join("filler");
    let free = free_bytes(&data);
    std::fs::write(&filler, vec![0u8; (free - 6 * 1024 * 1024) as usize]).unwrap();
    cluster.spawn(0);
    cluster.leader().await;

    let mut exit = None;
    for round in 0..400 {
        put(&cluster, 1, &format!("big-{round}"), vec![b'x'; 200 * 1024]).await;
        if let Some(status) = cluster.wait_exit(0, Duration::from_millis(1)) {
            exit = Some(status);
            break;
        }
    }
    let status = exit.expect("member 0 exits when its disk is full");
    assert_eq!(status.code(), Some(FAIL_STOP), "{status}");
    let log = cluster.log(0);
    let no_space = log.contains("nospace") || log.contains("No space left");
    assert!(log.contains("the Raft loop ended (") && no_space, "{log}");
    assert!(put(&cluster, 1, "while-full", b"v".to_vec()).await, "the others serve on");

    std::fs::remove_file(&filler).unwrap();
    cluster.spawn(0);
    cluster.leader().await;
    assert!(put(&cluster, 0, "space-freed", b"v".to_vec()).await);
    cluster.assert_converged().await;
}

/// Unmounts the tmpfs when the test ends, whichever way.
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn free_bytes(path: &Path) -> u64 {
    let output = Command::new("df").args(["--output=avail", "-B1"]).arg(path).output().unwrap();
    String::from_utf8_lossy(&output.stdout).lines().nth(1).unwrap().trim().parse().unwrap()
}
