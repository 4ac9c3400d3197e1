//! A member of a three-member cluster run alone in a test, spoken to as its peers over
//! real TCP: shared by the inbound fuzz test and the hard-state test.

#![allow(dead_code, reason = "each test file uses part of the kit")]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use raft::eraftpb::Message;
use tokio::sync::oneshot;
use worknode_raft::frame::{decode, encode, Frame};
use worknode_raft::member::{open_member, MemberSpec};
use worknode_raft::storage::{decode_message, encode_message};
use worknode_raft::transport::serve_peers;
use worknode_raft::validate::PeerRules;
use worknode_raft::{ClientRequest, NodeConfig, NodeHandle};

pub(crate) const CLUSTER: u64 = 0xF022;

/// Sends one frame of `messages` as member 2 (see [`send_as`]).
pub(crate) fn send(peer: SocketAddr, messages: &[Message]) {
    send_as(peer, 2, messages);
}

/// Sends one frame of `messages` as member `from` and waits until the member is done with
/// the connection (it closes it on a refused message; otherwise our end of stream does).
pub(crate) fn send_as(peer: SocketAddr, from: u64, messages: &[Message]) {
    let Ok(mut stream) = TcpStream::connect(peer) else { return };
    let mut bytes = Vec::new();
    encode(&Frame::Hello { cluster_id: CLUSTER, from, agreement: None }, &mut bytes);
    encode(&Frame::Messages(messages.iter().map(encode_message).collect()), &mut bytes);
    if stream.write_all(&bytes).is_err() {
        return;
    }
    let _ = stream.shutdown(std::net::Shutdown::Write);
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut sink = [0u8; 64];
    while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
}

/// Addresses for members 1, 2 and 3 on loopback (free when chosen).
pub(crate) fn addresses() -> Vec<(u64, SocketAddr)> {
    (1..=3)
        .map(|id| (id, std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()))
        .collect()
}

/// Reads frames that member 1 sends to `listener` (a peer's address) until a message
/// `wanted` picks, or `timeout` passes.
pub(crate) fn receive(
    listener: &std::net::TcpListener,
    timeout: Duration,
    wanted: impl Fn(&Message) -> bool,
) -> Option<Message> {
    let deadline = std::time::Instant::now() + timeout;
    listener.set_nonblocking(true).unwrap();
    let mut connections: Vec<(TcpStream, Vec<u8>)> = Vec::new();
    while std::time::Instant::now() < deadline {
        while let Ok((stream, _)) = listener.accept() {
            stream.set_nonblocking(true).unwrap();
            connections.push((stream, Vec::new()));
        }
        for (stream, buffer) in &mut connections {
            let mut chunk = [0u8; 4096];
            while let Ok(read) = stream.read(&mut chunk) {
                if read == 0 {
                    break;
                }
                buffer.extend_from_slice(&chunk[..read]);
            }
            while let Ok(Some((frame, used))) = decode(buffer) {
                buffer.drain(..used);
                if let Frame::Messages(messages) = frame {
                    for bytes in messages {
                        let message = decode_message(&bytes).unwrap();
                        if wanted(&message) {
                            return Some(message);
                        }
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    None
}

/// Member 1 of a three-member cluster (2 and 3 never run), serving peers on `runtime`.
pub(crate) struct Running {
    pub(crate) handle: NodeHandle,
    pub(crate) loop_thread: std::thread::JoinHandle<Result<(), worknode_raft::StoreError>>,
    server: tokio::task::JoinHandle<()>,
    pub(crate) stats: std::sync::Arc<worknode_raft::transport::TransportStats>,
    pub(crate) peer: SocketAddr,
    data_dir: worknode_raft::datadir::DataDir,
}

impl Running {
    /// Member 1 on a fresh address, with 10 ms ticks and etcd's 10-tick election timeout.
    pub(crate) fn start(runtime: &tokio::runtime::Runtime, data_dir: &std::path::Path) -> Self {
        Self::start_at(runtime, data_dir, addresses(), 10)
    }

    /// Member 1 at `addresses[0]`, its peers at the others.
    pub(crate) fn start_at(
        runtime: &tokio::runtime::Runtime,
        data_dir: &std::path::Path,
        addresses: Vec<(u64, SocketAddr)>,
        election_ticks: usize,
    ) -> Self {
        let mut node = NodeConfig::new(1, vec![1, 2, 3]);
        node.tick = Duration::from_millis(10);
        node.election_ticks = election_ticks;
        let spec = MemberSpec {
            cluster_id: CLUSTER,
            peers: addresses.clone(),
            data_dir: data_dir.to_path_buf(),
            recover_tail: false,
            rejoin: false,
            node,
            agreement: Default::default(),
            peer_tls: None,
        };
        let _guard = runtime.enter();
        let member = open_member(&spec).unwrap();
        let listener = std::net::TcpListener::bind(addresses[0].1).unwrap();
        listener.set_nonblocking(true).unwrap();
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        let server = runtime.spawn(serve_peers(
            listener,
            CLUSTER,
            PeerRules::new(1, &[1, 2, 3]),
            None,
            member.handle.clone(),
            member.stats.clone(),
            member.blocked.clone(),
        ));
        let node = member.node;
        Self {
            handle: member.handle,
            loop_thread: std::thread::spawn(move || node.run()),
            server,
            stats: member.stats,
            peer: addresses[0].1,
            data_dir: member.data_dir,
        }
    }

    /// Checks that the loop still answers, and stops it.
    pub(crate) fn finish(self) {
        let (reply, answer) = oneshot::channel();
        self.handle.submit(ClientRequest::Digest { reply }).unwrap();
        answer.blocking_recv().expect("the Raft loop answers");
        assert!(!self.loop_thread.is_finished(), "the Raft loop ended");
        self.handle.stop();
        self.loop_thread.join().unwrap().unwrap();
        self.server.abort();
        drop(self.data_dir);
    }
}
