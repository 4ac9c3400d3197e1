//! What etcd serves beside gRPC on its client port: HTTP/1.1 `/health`, `/version` and
//! `/metrics`, and `grpc.health.v1.Health`, on the same port as the etcd API.

#![allow(clippy::unwrap_used, reason = "a test fails loudly on an unexpected value")]

mod support;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use support::ProcessCluster;
use worknode_server::health::healthpb;

/// `GET path` over HTTP/1.1: the status code and the body.
fn get(address: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: worknode\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let code = response.split(' ').nth(1).unwrap().parse().unwrap();
    let body = response.split_once("\r\n\r\n").unwrap().1.to_owned();
    (code, body)
}

async fn grpc_health(cluster: &ProcessCluster, index: usize) -> i32 {
    let mut client = healthpb::health_client::HealthClient::new(cluster.channel(index).await);
    let request = healthpb::HealthCheckRequest { service: String::new() };
    client.check(request).await.unwrap().into_inner().status
}

const SERVING: i32 = healthpb::health_check_response::ServingStatus::Serving as i32;
const NOT_SERVING: i32 = healthpb::health_check_response::ServingStatus::NotServing as i32;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_port_answers_health_version_and_metrics_over_http_and_grpc() {
    let cluster = ProcessCluster::start("http-health", 3, 20);
    cluster.leader().await;
    let client = cluster.members[1].client;
    assert_eq!(get(client, "/health"), (200, r#"{"health":"true","reason":""}"#.to_owned()));
    let (code, version) = get(client, "/version");
    assert_eq!(code, 200);
    assert!(version.contains(r#""etcdserver":"3.5.0""#), "{version}");
    let (code, metrics) = get(client, "/metrics");
    assert_eq!(code, 200);
    assert!(metrics.contains("worknode_raft_term "), "the member's metrics");
    assert!(metrics.contains("worknode_watches "), "{metrics}");
    assert_eq!(get(client, "/nothing").0, 404);
    assert_eq!(grpc_health(&cluster, 1).await, SERVING);
    // gRPC goes on beside HTTP/1.1 on the one port.
    let (ok, out, err) = {
        let output = std::process::Command::new("etcdctl")
            .arg(format!("--endpoints={client}"))
            .args(["endpoint", "health"])
            .env("ETCDCTL_API", "3")
            .output()
            .unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    assert!(ok && format!("{out}{err}").contains("is healthy"), "{out}{err}");
    // What worknode does not serve says so.
    let output = std::process::Command::new("etcdctl")
        .arg(format!("--endpoints={client}"))
        .args(["user", "list"])
        .env("ETCDCTL_API", "3")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(err.contains("worknode does not serve /etcdserverpb.Auth/UserList"), "{err}");
}

/// A member cut off from the others still knows its last leader; it is unhealthy all
/// the same, because a linearizable read cannot be answered — as etcd judges it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_cut_off_from_the_majority_is_unhealthy_until_it_rejoins() {
    let cluster = ProcessCluster::start("http-health-cut", 3, 20);
    let leader = cluster.leader().await;
    let cut = (leader + 1) % 3;
    cluster.isolate(cut).await;
    let client = cluster.members[cut].client;
    let (code, body) = get(client, "/health");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains(r#""health":"false""#), "{body}");
    assert_eq!(grpc_health(&cluster, cut).await, NOT_SERVING);
    cluster.heal().await;
    let mut healthy = false;
    for _ in 0..100 {
        if get(client, "/health").0 == 200 {
            healthy = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(healthy, "healthy again once it rejoins");
    assert_eq!(grpc_health(&cluster, cut).await, SERVING);
}
