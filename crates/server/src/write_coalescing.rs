//! One socket write per turn of an HTTP/2 client connection, however many responses the
//! turn sends.
//!
//! The HTTP/2 layer copies a DATA frame of under 256 bytes into its write buffer, but a
//! larger one it hands to the socket on its own: the frame after it waits until a flush
//! has written it. A watch response carrying an event with a few hundred bytes of value is
//! such a frame, so a connection whose streams each had a response ready made one system
//! call per response, and on loopback a write also runs the receiver's TCP path. This
//! layer sits between the socket and the HTTP/2 server: it takes every write into a
//! buffer, and a flush of an HTTP/2 connection leaves the bytes there for the
//! connection's next turn, which it asks for at once (the task is woken) and which always
//! begins with a read: that read writes everything first. Between the two turns the api
//! worknode runs the other tasks that were ready, so a connection's responses to every
//! stream woken by one applied revision leave in one write, a few microseconds later.
//!
//! The buffer holds at most [`BUFFER_MAX`]: a write beyond it waits for the socket (the
//! client's reading paces the server, as without this layer), and a write of that size
//! or more goes straight to the socket once the buffer is empty. A connection that is not
//! HTTP/2 (HTTP/1.1: `/health`, `/metrics`, the JSON gateway) is written through at every
//! flush: its server does not promise to read between turns.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What a connection opens with when it speaks HTTP/2.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Bytes held for the socket before a write waits for it.
const BUFFER_MAX: usize = 64 * 1024;

/// Capacity an empty buffer keeps between turns: an idle connection holds no more.
const KEPT_CAPACITY: usize = 16 * 1024;

/// A client connection whose writes are gathered (see the module above).
#[derive(Debug)]
pub struct Coalesced<T> {
    inner: T,
    /// Written by the server, not yet by the socket, from `out_from` on.
    out: Vec<u8>,
    out_from: usize,
    protocol: Protocol,
    /// Bytes wait for the connection's next read.
    deferred: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    /// This many bytes of HTTP/2's preface have arrived, and nothing else.
    Sniffing(usize),
    Http2,
    Other,
}

impl<T> Coalesced<T> {
    /// Wraps an accepted connection.
    pub fn new(inner: T) -> Self {
        Self {
            inner,
            out: Vec::new(),
            out_from: 0,
            protocol: Protocol::Sniffing(0),
            deferred: false,
        }
    }

    /// The connection.
    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    fn buffered(&self) -> usize {
        self.out.len() - self.out_from
    }

    fn sniff(&mut self, arrived: &[u8]) {
        let Protocol::Sniffing(seen) = self.protocol else { return };
        let n = arrived.len().min(PREFACE.len() - seen);
        self.protocol = if arrived[..n] != PREFACE[seen..seen + n] {
            Protocol::Other
        } else if seen + n == PREFACE.len() {
            Protocol::Http2
        } else {
            Protocol::Sniffing(seen + n)
        };
    }
}

impl<T: AsyncWrite + Unpin> Coalesced<T> {
    /// Writes the buffer to the socket and flushes it (a TLS stream holds records too).
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.out_from < self.out.len() {
            let n = ready(Pin::new(&mut self.inner).poll_write(cx, &self.out[self.out_from..]))?;
            let Some(n) = n else { return Poll::Pending };
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out_from += n;
        }
        self.out.clear();
        self.out_from = 0;
        if self.out.capacity() > KEPT_CAPACITY {
            self.out.shrink_to(KEPT_CAPACITY);
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    /// Room for `len` more bytes: the buffer drained first if they would not fit.
    fn poll_room(&mut self, cx: &mut Context<'_>, len: usize) -> Poll<io::Result<()>> {
        if self.buffered() > 0 && self.buffered() + len > BUFFER_MAX {
            return self.poll_drain(cx);
        }
        Poll::Ready(Ok(()))
    }
}

/// `Ready(Ok(Some(n)))`, `Ready(Err(..))` or `Ok(None)` for pending: lets a loop write
/// `?` on a poll.
fn ready<V>(poll: Poll<io::Result<V>>) -> io::Result<Option<V>> {
    match poll {
        Poll::Ready(Ok(value)) => Ok(Some(value)),
        Poll::Ready(Err(error)) => Err(error),
        Poll::Pending => Ok(None),
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for Coalesced<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.deferred {
            match this.poll_drain(cx) {
                Poll::Ready(Ok(())) => this.deferred = false,
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                // The socket is full: its becoming writable wakes this task, whose next
                // read tries again.
                Poll::Pending => {}
            }
        }
        let before = buf.filled().len();
        let read = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(read, Poll::Ready(Ok(()))) {
            this.sniff(&buf.filled()[before..]);
        }
        read
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Coalesced<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if ready(this.poll_room(cx, buf.len()))?.is_none() {
            return Poll::Pending;
        }
        if this.buffered() == 0 && buf.len() >= BUFFER_MAX {
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        }
        this.out.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let len: usize = bufs.iter().map(|buf| buf.len()).sum();
        if ready(this.poll_room(cx, len))?.is_none() {
            return Poll::Pending;
        }
        if this.buffered() == 0 && len >= BUFFER_MAX {
            return Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        }
        for buf in bufs {
            this.out.extend_from_slice(buf);
        }
        Poll::Ready(Ok(len))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.protocol == Protocol::Http2 && this.buffered() > 0 {
            if !this.deferred {
                this.deferred = true;
                cx.waker().wake_by_ref();
            }
            return Poll::Ready(Ok(()));
        }
        this.poll_drain(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if ready(self.poll_drain(cx))?.is_none() {
            return Poll::Pending;
        }
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<T: tonic::transport::server::Connected> tonic::transport::server::Connected for Coalesced<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::{Wake, Waker};

    use tokio::io::DuplexStream;

    use super::*;

    /// Counts the wakes of the task it belongs to.
    #[derive(Default)]
    struct Wakes(AtomicUsize);

    impl Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    struct Harness {
        wakes: Arc<Wakes>,
        waker: Waker,
        server: Coalesced<DuplexStream>,
        client: DuplexStream,
    }

    impl Harness {
        /// A connection whose socket holds `capacity` bytes the client has not read.
        fn new(capacity: usize) -> Self {
            let (server, client) = tokio::io::duplex(capacity);
            let wakes = Arc::new(Wakes::default());
            Self {
                waker: Waker::from(Arc::clone(&wakes)),
                wakes,
                server: Coalesced::new(server),
                client,
            }
        }

        fn wakes(&self) -> usize {
            self.wakes.0.load(Ordering::SeqCst)
        }

        /// The client sends `bytes` and the server reads them.
        fn arrive(&mut self, bytes: &[u8]) {
            let mut cx = Context::from_waker(&self.waker);
            let sent = Pin::new(&mut self.client).poll_write(&mut cx, bytes);
            assert!(matches!(sent, Poll::Ready(Ok(n)) if n == bytes.len()));
            let mut space = vec![0; bytes.len()];
            let mut buf = ReadBuf::new(&mut space);
            assert!(matches!(self.read(&mut buf), Poll::Ready(Ok(()))));
            assert_eq!(buf.filled(), bytes);
        }

        fn read(&mut self, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
            let mut cx = Context::from_waker(&self.waker);
            Pin::new(&mut self.server).poll_read(&mut cx, buf)
        }

        /// The server's next turn: a read that finds nothing from the client.
        fn next_turn(&mut self) {
            let mut space = [0; 16];
            let mut buf = ReadBuf::new(&mut space);
            assert!(self.read(&mut buf).is_pending());
        }

        fn write(&mut self, bytes: &[u8]) -> Poll<io::Result<usize>> {
            let mut cx = Context::from_waker(&self.waker);
            Pin::new(&mut self.server).poll_write(&mut cx, bytes)
        }

        fn flush(&mut self) -> Poll<io::Result<()>> {
            let mut cx = Context::from_waker(&self.waker);
            Pin::new(&mut self.server).poll_flush(&mut cx)
        }

        /// What the client can read now.
        fn received(&mut self) -> Vec<u8> {
            let mut cx = Context::from_waker(&self.waker);
            let mut received = Vec::new();
            loop {
                let mut space = vec![0; 4096];
                let mut buf = ReadBuf::new(&mut space);
                match Pin::new(&mut self.client).poll_read(&mut cx, &mut buf) {
                    Poll::Ready(Ok(())) if !buf.filled().is_empty() => {
                        received.extend_from_slice(buf.filled())
                    }
                    _ => return received,
                }
            }
        }
    }

    #[test]
    fn an_http2_flush_leaves_the_bytes_for_the_next_turn_and_asks_for_it() {
        let mut harness = Harness::new(1 << 20);
        harness.arrive(PREFACE);
        assert!(matches!(harness.write(b"first "), Poll::Ready(Ok(6))));
        assert!(harness.flush().is_ready());
        assert!(matches!(harness.write(b"second"), Poll::Ready(Ok(6))));
        assert!(harness.flush().is_ready());
        assert_eq!(harness.wakes(), 1, "one wake per turn");
        assert!(harness.received().is_empty());
        harness.next_turn();
        assert_eq!(harness.received(), b"first second");
        let wakes = harness.wakes();
        assert!(harness.flush().is_ready());
        assert_eq!(harness.wakes(), wakes, "nothing left to write: no wake");
    }

    #[test]
    fn a_connection_that_is_not_http2_is_written_at_every_flush() {
        let mut harness = Harness::new(1 << 20);
        harness.arrive(b"GET /health HTTP/1.1\r\n");
        assert!(matches!(harness.write(b"HTTP/1.1 200 OK\r\n"), Poll::Ready(Ok(17))));
        assert!(harness.flush().is_ready());
        assert_eq!(harness.received(), b"HTTP/1.1 200 OK\r\n");
        assert_eq!(harness.wakes(), 0);
    }

    #[test]
    fn before_the_preface_is_whole_a_flush_writes() {
        let mut harness = Harness::new(1 << 20);
        harness.arrive(&PREFACE[..10]);
        assert!(harness.write(b"settings").is_ready());
        assert!(harness.flush().is_ready());
        assert_eq!(harness.received(), b"settings");
        harness.arrive(&PREFACE[10..]);
        assert!(harness.write(b"data").is_ready());
        assert!(harness.flush().is_ready());
        assert!(harness.received().is_empty(), "HTTP/2 now: deferred");
    }

    #[test]
    fn a_full_buffer_waits_for_the_client_to_read_and_nothing_is_lost() {
        let socket = 4096;
        let mut harness = Harness::new(socket);
        harness.arrive(PREFACE);
        let first: Vec<u8> = (0..BUFFER_MAX - 100).map(|i| i as u8).collect();
        assert!(matches!(harness.write(&first), Poll::Ready(Ok(n)) if n == first.len()));
        // Past the limit: the buffer goes to the socket, which takes 4 KiB, and the write
        // waits.
        assert!(harness.write(&[0xAB; 200]).is_pending());
        let mut received = harness.received();
        assert_eq!(received.len(), socket);
        // The next turn writes on while the client reads; the write then fits.
        while received.len() < first.len() {
            harness.next_turn();
            let _ = harness.write(&[0xAB; 200]);
            received.extend(harness.received());
        }
        assert_eq!(&received[..first.len()], &first[..]);
        assert!(received[first.len()..].iter().all(|&byte| byte == 0xAB));
    }

    #[test]
    fn shutdown_writes_what_is_buffered_first() {
        let mut harness = Harness::new(1 << 20);
        harness.arrive(PREFACE);
        assert!(harness.write(b"goaway").is_ready());
        assert!(harness.flush().is_ready());
        let mut cx = Context::from_waker(&harness.waker);
        assert!(Pin::new(&mut harness.server).poll_shutdown(&mut cx).is_ready());
        assert_eq!(harness.received(), b"goaway");
    }

    #[test]
    fn a_write_of_the_buffer_size_goes_straight_to_an_empty_buffer_s_socket() {
        let mut harness = Harness::new(1 << 20);
        harness.arrive(PREFACE);
        let large = vec![7u8; BUFFER_MAX];
        assert!(matches!(harness.write(&large), Poll::Ready(Ok(n)) if n == BUFFER_MAX));
        assert_eq!(harness.received(), large);
    }
}
