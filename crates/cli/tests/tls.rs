//! TLS on the client and peer ports of real `worknode serve` processes, with certificates
//! from `worknode certs init`: etcdctl and the `etcd-client` crate work over it, a peer
//! without a certificate of the cluster's CA cannot connect, a member's certificate cannot
//! speak as another member, certificates are re-read when their files change, and the
//! admin methods need a certificate named in `[admin] allowed`.

#![allow(clippy::unwrap_used, reason = "a test fails loudly on an unexpected value")]

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use support::{certs_init, ProcessCluster};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use worknode_raft::frame::{encode, Frame};
use worknode_raft::tls::{PeerTls, TlsFiles};
use worknode_server::adminpb::admin_client::AdminClient;
use worknode_server::adminpb::SetScheduleRequest;
use worknode_server::pb::PutRequest;

fn tables(dir: &Path) -> String {
    let d = dir.display();
    format!(
        "[tls]\ncert_file = \"{d}/{{name}}.pem\"\nkey_file = \"{d}/{{name}}-key.pem\"\ntrusted_ca_file = \"{d}/ca.pem\"\nclient_cert_auth = true\n\n\
         [peer_tls]\ncert_file = \"{d}/{{name}}-peer.pem\"\nkey_file = \"{d}/{{name}}-peer-key.pem\"\ntrusted_ca_file = \"{d}/ca.pem\"\n\n\
         [admin]\nallowed = [\"admin\"]\n"
    )
}

fn certs_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-certs"))
}

/// etcdctl over TLS against member `index`, trusting `ca` and presenting `client`.
fn etcdctl(
    cluster: &ProcessCluster,
    index: usize,
    ca: &Path,
    client: &Path,
    args: &[&str],
) -> (bool, String) {
    let output = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints=https://{}", cluster.members[index].client))
        .arg(format!("--cacert={}", ca.display()))
        .arg(format!("--cert={}", client.join("admin.pem").display()))
        .arg(format!("--key={}", client.join("admin-key.pem").display()))
        .arg("--dial-timeout=3s")
        .arg("--command-timeout=5s")
        .args(args)
        .output()
        .unwrap();
    support::outcome(output)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_and_peers_speak_tls_and_the_certificates_decide_who_is_who() {
    let name = "tls-cluster";
    let dir = certs_dir(name);
    certs_init(name, 3, &dir);
    let mut cluster = ProcessCluster::start_with(name, 3, 20, &tables(&dir));
    cluster.client_tls = Some(dir.clone());
    cluster.leader().await;

    // etcdctl, the real client, over TLS with a client certificate.
    let ca = dir.join("ca.pem");
    let (ok, out) = etcdctl(&cluster, 0, &ca, &dir, &["put", "greeting", "hello"]);
    assert!(ok && out.trim() == "OK", "{out}");
    let (ok, out) = etcdctl(&cluster, 1, &ca, &dir, &["get", "greeting", "--print-value-only"]);
    assert!(ok && out.trim() == "hello", "{out}");

    // The etcd-client crate.
    let tls = etcd_client::TlsOptions::new()
        .ca_certificate(etcd_client::Certificate::from_pem(std::fs::read(&ca).unwrap()))
        .identity(etcd_client::Identity::from_pem(
            std::fs::read(dir.join("admin.pem")).unwrap(),
            std::fs::read(dir.join("admin-key.pem")).unwrap(),
        ))
        .domain_name("localhost");
    let endpoint = format!("https://{}", cluster.members[2].client);
    let options = etcd_client::ConnectOptions::new().with_tls(tls);
    let mut client = etcd_client::Client::connect([endpoint], Some(options)).await.unwrap();
    client.put("crate", "works", None).await.unwrap();
    let got = client.get("greeting", None).await.unwrap();
    assert_eq!(got.kvs()[0].value(), b"hello");

    // Plain TCP to the peer port: no TLS, no connection.
    let peer = cluster.members[0].peer;
    let mut plain = tokio::net::TcpStream::connect(peer).await.unwrap();
    let mut hello = Vec::new();
    encode(
        &Frame::Hello { cluster_id: cluster.cluster_id(), from: 2, agreement: None },
        &mut hello,
    );
    plain.write_all(&hello).await.unwrap_or_default();
    assert!(closed(&mut plain).await, "a plain hello is refused");

    // Member 2's valid certificate, claiming to be member 3.
    let member_two = TlsFiles {
        cert_file: dir.join("n2-peer.pem"),
        key_file: dir.join("n2-peer-key.pem"),
        trusted_ca_file: Some(ca.clone()),
        client_cert_auth: true,
    };
    let tls = PeerTls::new(cluster.cluster_id(), &member_two).unwrap();
    let tcp = tokio::net::TcpStream::connect(peer).await.unwrap();
    let server = rustls::pki_types::ServerName::try_from(tls.name_of(1)).unwrap();
    let mut stream =
        tls.connector.connect(server, tcp).await.expect("member 2's certificate is valid");
    let mut claim = Vec::new();
    encode(
        &Frame::Hello { cluster_id: cluster.cluster_id(), from: 3, agreement: None },
        &mut claim,
    );
    stream.write_all(&claim).await.unwrap();
    stream.flush().await.unwrap();
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(3), stream.read(&mut byte)).await;
    assert!(matches!(read, Ok(Ok(0) | Err(_))), "the connection is closed: {read:?}");
    let log = cluster.log(0);
    assert!(
        log.contains("its hello claims member 3, but its certificate does not name member-3."),
        "{log}"
    );

    // A certificate from another CA.
    let stranger = certs_dir("tls-stranger");
    certs_init(name, 3, &stranger);
    let files = TlsFiles {
        cert_file: stranger.join("n2-peer.pem"),
        key_file: stranger.join("n2-peer-key.pem"),
        trusted_ca_file: Some(ca.clone()),
        client_cert_auth: true,
    };
    let tls = PeerTls::new(cluster.cluster_id(), &files).unwrap();
    let tcp = tokio::net::TcpStream::connect(peer).await.unwrap();
    let server = rustls::pki_types::ServerName::try_from(tls.name_of(1)).unwrap();
    let outcome = async {
        let mut stream = tls.connector.connect(server, tcp).await?;
        stream.write_all(&claim).await?;
        stream.flush().await?;
        stream.read(&mut byte).await
    };
    let refused =
        matches!(tokio::time::timeout(Duration::from_secs(3), outcome).await, Ok(Ok(0) | Err(_)));
    assert!(refused, "a certificate of another CA is refused");

    // The admin methods: `admin` is allowed, a member's certificate (CN n1) is not.
    let mut admin = AdminClient::new(cluster.channel(0).await);
    let unchanged = SetScheduleRequest::default();
    admin.set_schedule(unchanged.clone()).await.unwrap();
    let uri = format!("https://{}", cluster.members[0].client);
    let channel = tonic::transport::Channel::from_shared(uri)
        .unwrap()
        .tls_config(support::client_tls(&dir, "n1"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let denied = AdminClient::new(channel).set_schedule(unchanged).await.unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    assert!(denied.message().contains("\"n1\" is not in [admin] allowed"), "{denied:?}");

    cluster.kv(1).await.put(PutRequest { key: b"k".to_vec(), ..Default::default() }).await.unwrap();
    cluster.assert_converged().await;
}

/// Whether the other side closes the connection within 3 s (a TLS alert may come first).
async fn closed(stream: &mut tokio::net::TcpStream) -> bool {
    let mut buffer = [0u8; 256];
    let until_closed = async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(3), until_closed).await.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_replaced_on_disk_is_served_without_a_restart() {
    let name = "tls-reload";
    let dir = certs_dir(name);
    certs_init(name, 3, &dir);
    let mut cluster = ProcessCluster::start_with(name, 3, 20, &tables(&dir));
    cluster.client_tls = Some(dir.clone());
    cluster.leader().await;
    let (ok, out) = etcdctl(&cluster, 0, &dir.join("ca.pem"), &dir, &["put", "a", "1"]);
    assert!(ok, "{out}");

    // Member 1's client-listener certificate, replaced by one from another CA.
    let next = certs_dir("tls-reload-next");
    certs_init(name, 3, &next);
    for file in ["n1.pem", "n1-key.pem"] {
        std::fs::copy(next.join(file), dir.join(file)).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (ok, out) =
            etcdctl(&cluster, 0, &next.join("ca.pem"), &dir, &["get", "a", "--print-value-only"]);
        if ok && out.trim() == "1" {
            break;
        }
        assert!(Instant::now() < deadline, "the new certificate is not served: {out}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (ok, _) = etcdctl(&cluster, 0, &dir.join("ca.pem"), &dir, &["get", "a"]);
    assert!(!ok, "the old certificate is still served");
    assert!(cluster.is_alive(0));
}
