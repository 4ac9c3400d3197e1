//! The peer transport delivers every message whole and in order when the peer reads
//! slowly: the Raft loop's own writes fill the socket part-way through a frame, and the
//! writer task carries on from the exact byte where the loop stopped. What is sent while
//! a peer cannot be reached is dropped, never delivered late.

#![allow(clippy::unwrap_used, reason = "a test fails loudly on an unexpected value")]

use std::sync::atomic::Ordering;
use std::time::Duration;

use raft::eraftpb::Message;
use tokio::io::AsyncReadExt;
use worknode_raft::frame::{decode, Agreement, Frame};
use worknode_raft::storage::decode_message;
use worknode_raft::transport::{connect_peers, Blocked, PeerIdentity};

/// Member 1 of cluster 7, without TLS.
fn identity() -> PeerIdentity {
    PeerIdentity { cluster_id: 7, my_id: 1, agreement: Agreement::default(), tls: None }
}
use worknode_raft::Transport;

const MESSAGES: u64 = 300;
const PAYLOAD: usize = 100_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_gets_every_message_whole_and_in_order() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let peer = listener.local_addr().unwrap();
    let me = "127.0.0.1:1".parse().unwrap();
    let (mut transport, stats) =
        connect_peers(identity(), &[(1, me), (2, peer)], Blocked::default());
    let (mut socket, _) = listener.accept().await.unwrap();
    // Let the writer send its hello and lend the socket to the sending side.
    tokio::time::sleep(Duration::from_millis(200)).await;
    // 30 MB, far more than the socket buffers hold, while nobody reads.
    for index in 0..MESSAGES {
        let message = Message {
            to: 2,
            index,
            context: vec![index as u8; PAYLOAD].into(),
            ..Message::default()
        };
        transport.send(vec![message]);
    }
    let mut frames = FrameReader::new(Duration::from_secs(30));
    let mut next = 0u64;
    let mut hello = false;
    while next < MESSAGES {
        match frames.next(&mut socket).await {
            Frame::Hello { cluster_id, from, .. } => {
                assert!(!hello && cluster_id == 7 && from == 1);
                hello = true;
            }
            Frame::Messages(messages) => {
                assert!(hello, "messages before the hello");
                for bytes in messages {
                    let message = decode_message(&bytes).unwrap();
                    assert_eq!(message.index, next, "out of order");
                    assert!(message.context.len() == PAYLOAD);
                    assert!(message.context.iter().all(|&b| b == next as u8));
                    next += 1;
                }
            }
            Frame::Part { .. } => unreachable!("no message here is larger than a part"),
            Frame::Clock { .. } => assert!(hello, "a clock stamp before the hello"),
        }
    }
    assert_eq!(stats.dropped_full.load(Ordering::Relaxed), 0);
    assert!(frames.buffer.is_empty());
}

/// Frames as they arrive on a socket, each whole, within one deadline for all.
struct FrameReader {
    buffer: Vec<u8>,
    chunk: Vec<u8>,
    deadline: tokio::time::Instant,
}

impl FrameReader {
    fn new(within: Duration) -> Self {
        let deadline = tokio::time::Instant::now() + within;
        Self { buffer: Vec::new(), chunk: vec![0u8; 1 << 16], deadline }
    }

    async fn next(&mut self, socket: &mut tokio::net::TcpStream) -> Frame {
        loop {
            if let Some((frame, used)) = decode(&self.buffer).expect("every frame is whole") {
                self.buffer.drain(..used);
                return frame;
            }
            let read = tokio::time::timeout_at(self.deadline, socket.read(&mut self.chunk))
                .await
                .expect("the frames arrive in time")
                .unwrap();
            assert!(read > 0, "the connection closed early");
            self.buffer.extend_from_slice(&self.chunk[..read]);
        }
    }
}

/// The index of the first message that arrives on `socket`.
async fn first_index_received(socket: &mut tokio::net::TcpStream) -> u64 {
    let mut frames = FrameReader::new(Duration::from_secs(10));
    loop {
        if let Frame::Messages(messages) = frames.next(socket).await {
            return decode_message(&messages[0]).unwrap().index;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_is_sent_while_a_peer_is_down_never_arrives_late() {
    // A port nobody listens on: connection attempts are refused, as when a member's
    // process is gone.
    let peer = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let me = "127.0.0.1:1".parse().unwrap();
    let (mut transport, stats) =
        connect_peers(identity(), &[(1, me), (2, peer)], Blocked::default());
    let message = |index| Message { to: 2, index, ..Message::default() };
    // Past the longest reconnect backoff (500 ms), a heartbeat's worth every 10 ms.
    let mut index = 0;
    while index < 120 {
        transport.send(vec![message(index)]);
        index += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(stats.gone.get(&2).unwrap().load(Ordering::Relaxed), "the refusals were not seen");
    // The peer comes back; everything sent before this moment is stale.
    let listener = tokio::net::TcpListener::bind(peer).await.unwrap();
    let back_at = index;
    let sender = tokio::spawn(async move {
        for index in back_at..back_at + 200 {
            transport.send(vec![message(index)]);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        transport
    });
    let (mut socket, _) = listener.accept().await.unwrap();
    let first = first_index_received(&mut socket).await;
    let _transport = sender.await.unwrap();
    assert!(first >= back_at, "message {first}, sent while the peer was down, arrived late");
    let dropped = stats.dropped_unreachable.load(Ordering::Relaxed);
    assert!(dropped >= 100, "only {dropped} frames were dropped as unreachable");
}
