//! etcd 3.4's clients send `:authority` as the endpoint they were given, scheme and all
//! (`http://127.0.0.1:2379` from `--endpoints=http://…`, and from `--cluster`, which
//! takes the members' client URLs), and the HTTP/2 layer refuses such a request as
//! malformed before any service sees it. This shim sits between a client connection and
//! the HTTP/2 server: it reads the client's frames, and a header block whose
//! `:authority` is a literal carrying a scheme goes on with the bare authority; every
//! other byte passes as it came. A connection that does not open with HTTP/2's preface
//! (HTTP/1.1: `/health`, the JSON gateway) passes untouched, and so does the rest of a
//! connection whose first request names its authority without a scheme: a gRPC client
//! sends one authority per connection, so only clients that need the rewrite pay for it.
//!
//! Header blocks are HPACK-compressed against a table both ends keep, so the shim keeps
//! the client's table as the client does. Its rewrite only shortens a value, so the
//! server's copy of the table holds the same entries at the same positions, never fewer
//! (entries count toward the size limit by length: the server evicts no sooner than the
//! client), and a later reference to that entry by index finds the bare authority.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// HTTP/2's default largest frame, which the server keeps: rebuilt blocks are split to it.
const FRAME_MAX: usize = 16_384;
/// A header block larger than this ends the connection (the server refuses far less).
const BLOCK_MAX: usize = 1 << 20;
/// HPACK's table size before any update (HTTP/2's default).
const TABLE_SIZE_DEFAULT: usize = 4096;

/// The names of HPACK's static table (RFC 7541, Appendix A), index 1 first: a literal
/// may name its field by one, and an entry's size counts its name.
const STATIC_NAMES: [&str; 61] = [
    ":authority",
    ":method",
    ":method",
    ":path",
    ":path",
    ":scheme",
    ":scheme",
    ":status",
    ":status",
    ":status",
    ":status",
    ":status",
    ":status",
    ":status",
    "accept-charset",
    "accept-encoding",
    "accept-language",
    "accept-ranges",
    "accept",
    "access-control-allow-origin",
    "age",
    "allow",
    "authorization",
    "cache-control",
    "content-disposition",
    "content-encoding",
    "content-language",
    "content-length",
    "content-location",
    "content-range",
    "content-type",
    "cookie",
    "date",
    "etag",
    "expect",
    "expires",
    "from",
    "host",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "last-modified",
    "link",
    "location",
    "max-forwards",
    "proxy-authenticate",
    "proxy-authorization",
    "range",
    "referer",
    "refresh",
    "retry-after",
    "server",
    "set-cookie",
    "strict-transport-security",
    "transfer-encoding",
    "user-agent",
    "vary",
    "via",
    "www-authenticate",
];
/// A client connection with `:authority` schemes taken off (see the module above).
#[derive(Debug)]
pub struct AuthorityShim<T> {
    inner: T,
    /// Bytes read from the client, not yet judged.
    raw: Vec<u8>,
    /// Bytes judged, for the server to read.
    ready: Vec<u8>,
    ready_from: usize,
    mode: Mode,
    table: Table,
    /// A header block arriving in more than one frame: its frames as they came and
    /// its fragments joined.
    block: Option<Block>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Preface,
    Frames,
    Passthrough,
}

#[derive(Debug, Default)]
struct Block {
    frames: Vec<u8>,
    fragment: Vec<u8>,
    /// The HEADERS frame's stream, flags and priority fields.
    stream: u32,
    flags: u8,
    priority: Option<[u8; 5]>,
}

/// An accepted connection, shimmed.
pub fn wrap<T>(accepted: io::Result<T>) -> io::Result<AuthorityShim<T>> {
    accepted.map(AuthorityShim::new)
}

impl<T> AuthorityShim<T> {
    /// Wraps a client connection.
    pub fn new(inner: T) -> Self {
        Self {
            inner,
            raw: Vec::new(),
            ready: Vec::new(),
            ready_from: 0,
            mode: Mode::Preface,
            table: Table::new(),
            block: None,
        }
    }

    /// The connection.
    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    /// Judges what has arrived: moves whole frames (or, before the preface is known, the
    /// preface) from `raw` to `ready`.
    fn judge(&mut self) -> io::Result<()> {
        if self.mode == Mode::Preface {
            let seen = self.raw.len().min(PREFACE.len());
            if self.raw[..seen] != PREFACE[..seen] {
                self.mode = Mode::Passthrough;
            } else if seen == PREFACE.len() {
                self.ready.extend_from_slice(PREFACE);
                self.raw.drain(..PREFACE.len());
                self.mode = Mode::Frames;
            } else {
                return Ok(());
            }
        }
        if self.mode == Mode::Passthrough {
            self.ready.append(&mut self.raw);
            return Ok(());
        }
        let mut at = 0;
        while self.raw.len() - at >= FRAME_HEADER {
            let header = &self.raw[at..at + FRAME_HEADER];
            let length =
                usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
            if self.raw.len() - at < FRAME_HEADER + length {
                break;
            }
            let frame = self.raw[at..at + FRAME_HEADER + length].to_vec();
            at += FRAME_HEADER + length;
            self.frame(&frame)?;
            if self.mode == Mode::Passthrough {
                self.ready.extend_from_slice(&self.raw[at..]);
                self.raw.clear();
                return Ok(());
            }
        }
        self.raw.drain(..at);
        Ok(())
    }

    fn frame(&mut self, frame: &[u8]) -> io::Result<()> {
        let (kind, flags) = (frame[3], frame[4]);
        let stream = u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]) & 0x7fff_ffff;
        let payload = &frame[FRAME_HEADER..];
        match (kind, self.block.as_mut()) {
            (HEADERS, None) => {
                let (fragment, priority) = headers_fragment(flags, payload)?;
                let block = Block {
                    frames: frame.to_vec(),
                    fragment: fragment.to_vec(),
                    stream,
                    flags,
                    priority,
                };
                if flags & END_HEADERS != 0 {
                    self.finish(block)
                } else {
                    self.block = Some(block);
                    Ok(())
                }
            }
            (CONTINUATION, Some(block)) if block.stream == stream => {
                block.frames.extend_from_slice(frame);
                block.fragment.extend_from_slice(payload);
                if block.fragment.len() > BLOCK_MAX {
                    return Err(malformed("a header block over 1 MiB"));
                }
                if flags & END_HEADERS != 0 {
                    let block = self.block.take().unwrap_or_default();
                    self.finish(block)
                } else {
                    Ok(())
                }
            }
            // Anything else inside a header block is the server's to refuse.
            _ => {
                if let Some(block) = self.block.take() {
                    self.ready.extend_from_slice(&block.frames);
                }
                self.ready.extend_from_slice(frame);
                Ok(())
            }
        }
    }

    /// A whole header block: on as it came, or rebuilt without an authority's scheme.
    fn finish(&mut self, block: Block) -> io::Result<()> {
        match self.table.read(&block.fragment)? {
            None => {
                self.ready.extend_from_slice(&block.frames);
                if !self.table.schemes_seen {
                    self.mode = Mode::Passthrough;
                }
            }
            Some(rebuilt) => {
                let mut first = Vec::new();
                if let Some(priority) = block.priority {
                    first.extend_from_slice(&priority);
                }
                let flags = block.flags & (END_STREAM | PRIORITY);
                let room = FRAME_MAX - first.len();
                let (head, mut rest) = rebuilt.split_at(rebuilt.len().min(room));
                first.extend_from_slice(head);
                let last = rest.is_empty();
                push_frame(
                    &mut self.ready,
                    HEADERS,
                    flags | if last { END_HEADERS } else { 0 },
                    block.stream,
                    &first,
                );
                while !rest.is_empty() {
                    let (part, after) = rest.split_at(rest.len().min(FRAME_MAX));
                    let flags = if after.is_empty() { END_HEADERS } else { 0 };
                    push_frame(&mut self.ready, CONTINUATION, flags, block.stream, part);
                    rest = after;
                }
            }
        }
        Ok(())
    }
}

fn push_frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let length = payload.len();
    out.extend_from_slice(&[(length >> 16) as u8, (length >> 8) as u8, length as u8, kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

/// A HEADERS frame's block fragment and priority fields, padding taken off.
fn headers_fragment(flags: u8, payload: &[u8]) -> io::Result<(&[u8], Option<[u8; 5]>)> {
    let mut body = payload;
    let mut pad = 0;
    if flags & PADDED != 0 {
        let (&length, after) = body.split_first().ok_or_else(|| malformed("HEADERS padding"))?;
        pad = usize::from(length);
        body = after;
    }
    let mut priority = None;
    if flags & PRIORITY != 0 {
        if body.len() < 5 {
            return Err(malformed("HEADERS priority"));
        }
        let mut fields = [0; 5];
        fields.copy_from_slice(&body[..5]);
        priority = Some(fields);
        body = &body[5..];
    }
    let end = body.len().checked_sub(pad).ok_or_else(|| malformed("HEADERS padding"))?;
    Ok((&body[..end], priority))
}

fn malformed(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("HTTP/2 from a client: malformed {what}"))
}

/// The client's HPACK table, as the client keeps it.
#[derive(Debug)]
struct Table {
    /// Each entry's name and size, newest first.
    entries: VecDeque<(Vec<u8>, usize)>,
    size: usize,
    max: usize,
    /// A literal authority with a scheme came (later blocks may refer to it by index).
    schemes_seen: bool,
}

/// A literal `:authority` with a scheme: where its value's string begins (its length
/// prefix) and ends, and the bare authority to put there.
struct Rewrite {
    value_at: usize,
    end: usize,
    bare: Vec<u8>,
}

impl Table {
    fn new() -> Self {
        Self { entries: VecDeque::new(), size: 0, max: TABLE_SIZE_DEFAULT, schemes_seen: false }
    }

    /// Reads a header block, keeping the table; the block rebuilt when a literal
    /// `:authority` carries a scheme.
    fn read(&mut self, block: &[u8]) -> io::Result<Option<Vec<u8>>> {
        let mut at = 0;
        let mut rewrites = Vec::new();
        while at < block.len() {
            let first = block[at];
            // An indexed field refers to an entry whose value the server's table already
            // holds rewritten.
            if first & 0x80 != 0 {
                integer(block, &mut at, 7)?;
                continue;
            }
            if first & 0xe0 == 0x20 {
                self.max = integer(block, &mut at, 5)?;
                self.evict(0);
                continue;
            }
            let (prefix, indexing) = if first & 0x40 != 0 { (6, true) } else { (4, false) };
            let index = integer(block, &mut at, prefix)?;
            let name = if index == 0 { string(block, &mut at)? } else { self.name(index)? };
            let value_at = at;
            let value = string(block, &mut at)?;
            if name == b":authority" {
                if let Some(bare) = without_scheme(&value) {
                    self.schemes_seen = true;
                    rewrites.push(Rewrite { value_at, end: at, bare });
                }
            }
            if indexing {
                self.insert(name, value.len());
            }
        }
        if rewrites.is_empty() {
            return Ok(None);
        }
        let mut rebuilt = Vec::with_capacity(block.len());
        let mut copied = 0;
        for rewrite in rewrites {
            rebuilt.extend_from_slice(&block[copied..rewrite.value_at]);
            encode_integer(&mut rebuilt, 0x00, 7, rewrite.bare.len());
            rebuilt.extend_from_slice(&rewrite.bare);
            copied = rewrite.end;
        }
        rebuilt.extend_from_slice(&block[copied..]);
        Ok(Some(rebuilt))
    }

    /// The name of entry `index` (static from 1, then the table, newest first).
    fn name(&self, index: usize) -> io::Result<Vec<u8>> {
        match index {
            1..=61 => Ok(STATIC_NAMES[index - 1].as_bytes().to_vec()),
            _ => self
                .entries
                .get(index - 62)
                .map(|(name, _)| name.clone())
                .ok_or_else(|| malformed("HPACK index")),
        }
    }

    /// Adds an entry (RFC 7541 §4.4: one larger than the table empties it and is not
    /// kept).
    fn insert(&mut self, name: Vec<u8>, value_len: usize) {
        let size = name.len() + value_len + 32;
        self.evict(size);
        if size <= self.max {
            self.entries.push_front((name, size));
            self.size += size;
        }
    }

    fn evict(&mut self, incoming: usize) {
        while self.size + incoming > self.max {
            let Some((_, size)) = self.entries.pop_back() else { break };
            self.size -= size;
        }
    }
}

/// The authority in `value` when it carries a scheme (`http://host:port/…` → `host:port`).
fn without_scheme(value: &[u8]) -> Option<Vec<u8>> {
    let at = value.windows(3).position(|w| w == b"://")?;
    let rest = &value[at + 3..];
    let end = rest.iter().position(|&b| b == b'/').unwrap_or(rest.len());
    Some(rest[..end].to_vec())
}

/// An HPACK integer with an `n`-bit prefix at `at`.
fn integer(block: &[u8], at: &mut usize, n: u32) -> io::Result<usize> {
    let mask = (1usize << n) - 1;
    let first = usize::from(*block.get(*at).ok_or_else(|| malformed("HPACK integer"))?) & mask;
    *at += 1;
    if first < mask {
        return Ok(first);
    }
    let mut value = mask;
    let mut shift = 0;
    loop {
        let byte = *block.get(*at).ok_or_else(|| malformed("HPACK integer"))?;
        *at += 1;
        value = value
            .checked_add(usize::from(byte & 0x7f) << shift)
            .filter(|_| shift <= 28)
            .ok_or_else(|| malformed("HPACK integer"))?;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
        shift += 7;
    }
}

fn encode_integer(out: &mut Vec<u8>, flags: u8, n: u32, value: usize) {
    let mask = (1usize << n) - 1;
    if value < mask {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | mask as u8);
    let mut rest = value - mask;
    while rest >= 0x80 {
        out.push((rest & 0x7f) as u8 | 0x80);
        rest >>= 7;
    }
    out.push(rest as u8);
}

/// An HPACK string at `at`, Huffman-decoded when it is.
fn string(block: &[u8], at: &mut usize) -> io::Result<Vec<u8>> {
    let huffman = block.get(*at).ok_or_else(|| malformed("HPACK string"))? & 0x80 != 0;
    let length = integer(block, at, 7)?;
    let end = at
        .checked_add(length)
        .filter(|&end| end <= block.len())
        .ok_or_else(|| malformed("HPACK string"))?;
    let bytes = &block[*at..end];
    *at = end;
    if !huffman {
        return Ok(bytes.to_vec());
    }
    let mut decoded = Vec::with_capacity(bytes.len() * 8 / 5);
    httlib_huffman::decode(bytes, &mut decoded, httlib_huffman::DecoderSpeed::FourBits)
        .map_err(|_| malformed("HPACK Huffman string"))?;
    Ok(decoded)
}

impl<T: AsyncRead + Unpin> AsyncRead for AuthorityShim<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.ready_from < this.ready.len() {
                let n = buf.remaining().min(this.ready.len() - this.ready_from);
                buf.put_slice(&this.ready[this.ready_from..this.ready_from + n]);
                this.ready_from += n;
                if this.ready_from == this.ready.len() {
                    this.ready.clear();
                    this.ready_from = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.mode == Mode::Passthrough && this.raw.is_empty() {
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            let mut chunk = [0u8; 16 * 1024];
            let mut read = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.inner).poll_read(cx, &mut read) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                Poll::Ready(Ok(())) if read.filled().is_empty() => {
                    // The client is done: what is left goes as it is, for the server to judge.
                    if let Some(block) = this.block.take() {
                        this.ready.extend_from_slice(&block.frames);
                    }
                    this.ready.append(&mut this.raw);
                    if this.ready.is_empty() {
                        return Poll::Ready(Ok(()));
                    }
                }
                Poll::Ready(Ok(())) => {
                    this.raw.extend_from_slice(read.filled());
                    this.judge()?;
                }
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for AuthorityShim<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl<T: tonic::transport::server::Connected> tonic::transport::server::Connected
    for AuthorityShim<T>
{
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests;
