//! The peer wire format: length-prefixed, checksummed frames.
//!
//! ```text
//! version u8 | kind u8 | payload length u32 BE | crc32 of payload u32 BE | payload
//! ```
//!
//! A `Hello` frame opens every connection (cluster id, sender id, and the digests of the
//! settings members must agree on); `Messages` frames carry a batch of Raft messages, each
//! length-prefixed, at most [`PART_BYTES`] of them. A message larger than that (a
//! snapshot) travels as consecutive `Part` frames, each naming the message's total size,
//! so a frame — and what a receiver buffers before it can check anything — stays small.
//! A `Clock` frame stamps the sender's wall clock and echoes the receiver's last stamp
//! (see [`crate::clock_offset`]), at most every 50 ms.
//! Anything malformed, oversized or from another cluster is an error that closes the
//! connection; the node keeps running.

/// The only version spoken.
pub const VERSION: u8 = 1;
/// Header bytes before the payload.
pub const HEADER_BYTES: usize = 10;
/// Messages of a frame, and each part of a split message, fill at most this many bytes.
pub const PART_BYTES: usize = 4 * 1024 * 1024;
/// Largest payload accepted: a part or a full batch of messages, with room for headers.
pub const PAYLOAD_BYTES_MAX: usize = 2 * PART_BYTES;
/// Largest message accepted in parts: a snapshot of etcd's largest recommended quota.
pub const MESSAGE_BYTES_MAX: u64 = 8 * 1024 * 1024 * 1024;
/// Most messages in one frame.
pub const MESSAGES_PER_FRAME_MAX: usize = 4_096;

const KIND_HELLO: u8 = 1;
const KIND_MESSAGES: u8 = 2;
const KIND_PART: u8 = 3;
const KIND_CLOCK: u8 = 4;
/// Bytes of a clock frame's payload: the send time and the echo (zeros for none).
pub const CLOCK_PAYLOAD_BYTES: usize = 24;

/// Digests of the settings every member of a cluster must share, carried in the hello so
/// members that disagree refuse each other instead of running with different schedules.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Agreement {
    /// The member list: ids, names, addresses.
    pub members: u64,
    /// The bootstrap `[schedule]` with every member's stake.
    pub schedule: u64,
}

impl Agreement {
    /// The fields where `self` and `theirs` differ, for a one-line error.
    pub fn differences(&self, theirs: &Agreement) -> Vec<&'static str> {
        let mut fields = Vec::new();
        if self.members != theirs.members {
            fields.push("the [[member]] list");
        }
        if self.schedule != theirs.schedule {
            fields.push("the [schedule] settings or stakes");
        }
        fields
    }
}

/// A decoded frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// Opens a connection.
    Hello {
        /// The sender's cluster.
        cluster_id: u64,
        /// The sender's member id.
        from: u64,
        /// The sender's settings (`None` from a member that predates the check).
        agreement: Option<Agreement>,
    },
    /// Encoded Raft messages.
    Messages(Vec<Vec<u8>>),
    /// The next bytes of one encoded message too large for a frame; the parts of one
    /// message follow each other with nothing between them.
    Part {
        /// The whole message's size.
        total: u64,
        /// This part.
        bytes: Vec<u8>,
    },
    /// The sender's wall clock as it sent this frame, echoing the receiver's last stamp
    /// ([`crate::clock_offset`]).
    Clock {
        /// The sender's wall clock (ns since the UNIX epoch).
        sent_unix_ns: u64,
        /// The receiver's last stamp and when it arrived, if one did.
        echo: Option<crate::clock_offset::Echo>,
    },
}

/// Why bytes are not a frame.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Unknown version byte.
    #[error("frame version {0} is not {VERSION}")]
    Version(u8),
    /// Unknown kind byte.
    #[error("unknown frame kind {0}")]
    Kind(u8),
    /// Payload over the limit.
    #[error("frame payload of {0} bytes exceeds {PAYLOAD_BYTES_MAX}")]
    Oversized(usize),
    /// Checksum mismatch.
    #[error("frame checksum {found:#010x} does not match {expected:#010x}")]
    Checksum {
        /// Computed from the payload.
        expected: u32,
        /// In the header.
        found: u32,
    },
    /// The payload's structure is wrong.
    #[error("malformed frame payload: {0}")]
    Malformed(&'static str),
}

fn header(kind: u8, payload: &[u8]) -> [u8; HEADER_BYTES] {
    assert!(payload.len() <= PAYLOAD_BYTES_MAX, "frame payload over the limit");
    let mut header = [0u8; HEADER_BYTES];
    header[0] = VERSION;
    header[1] = kind;
    header[2..6].copy_from_slice(&(payload.len() as u32).to_be_bytes());
    header[6..10].copy_from_slice(&crc32fast::hash(payload).to_be_bytes());
    header
}

/// Encodes a frame, appending to `out`.
pub fn encode(frame: &Frame, out: &mut Vec<u8>) {
    let (kind, payload) = match frame {
        Frame::Hello { cluster_id, from, agreement } => {
            let mut payload = Vec::with_capacity(HELLO_PAYLOAD_BYTES);
            payload.extend_from_slice(&cluster_id.to_be_bytes());
            payload.extend_from_slice(&from.to_be_bytes());
            if let Some(agreement) = agreement {
                payload.extend_from_slice(&agreement.members.to_be_bytes());
                payload.extend_from_slice(&agreement.schedule.to_be_bytes());
            }
            (KIND_HELLO, payload)
        }
        Frame::Messages(messages) => {
            assert!(messages.len() <= MESSAGES_PER_FRAME_MAX, "too many messages for one frame");
            let mut payload =
                Vec::with_capacity(4 + messages.iter().map(|m| 4 + m.len()).sum::<usize>());
            payload.extend_from_slice(&(messages.len() as u32).to_be_bytes());
            for message in messages {
                payload.extend_from_slice(&(message.len() as u32).to_be_bytes());
                payload.extend_from_slice(message);
            }
            (KIND_MESSAGES, payload)
        }
        Frame::Part { total, bytes } => {
            let mut payload = Vec::with_capacity(8 + bytes.len());
            payload.extend_from_slice(&total.to_be_bytes());
            payload.extend_from_slice(bytes);
            (KIND_PART, payload)
        }
        Frame::Clock { sent_unix_ns, echo } => {
            let mut payload = Vec::with_capacity(CLOCK_PAYLOAD_BYTES);
            payload.extend_from_slice(&sent_unix_ns.to_be_bytes());
            // Zeros stand for no echo: no stamp is sent at the UNIX epoch.
            let (sent, received) = echo.map_or((0, 0), |e| (e.sent_unix_ns, e.received_unix_ns));
            payload.extend_from_slice(&sent.to_be_bytes());
            payload.extend_from_slice(&received.to_be_bytes());
            (KIND_CLOCK, payload)
        }
    };
    out.extend_from_slice(&header(kind, &payload));
    out.extend_from_slice(&payload);
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

/// Bytes of a hello frame's payload without the agreement (cluster id, sender id), as
/// members before the agreement check send it.
pub const HELLO_PAYLOAD_BYTES_PLAIN: usize = 16;
/// Bytes of a hello frame's payload: cluster id, sender id, agreement digests.
pub const HELLO_PAYLOAD_BYTES: usize = 32;

/// Checks that `buffer` begins like a hello frame, before its payload has arrived: a
/// connection's first frame is refused by its header alone, so a stranger cannot make
/// this member buffer a large payload. `Ok(false)` if the header is not complete yet.
pub fn begins_with_hello(buffer: &[u8]) -> Result<bool, FrameError> {
    if buffer.len() < HEADER_BYTES {
        return Ok(false);
    }
    if buffer[0] != VERSION {
        return Err(FrameError::Version(buffer[0]));
    }
    if buffer[1] != KIND_HELLO {
        return Err(FrameError::Malformed("a connection must start with a hello"));
    }
    let length = read_u32(buffer, 2).unwrap_or(0) as usize;
    if length != HELLO_PAYLOAD_BYTES && length != HELLO_PAYLOAD_BYTES_PLAIN {
        return Err(FrameError::Malformed("hello must be 16 or 32 bytes"));
    }
    Ok(true)
}

/// Decodes one frame from the front of `buffer`: `Ok(None)` if more bytes are needed,
/// else the frame and how many bytes it used.
pub fn decode(buffer: &[u8]) -> Result<Option<(Frame, usize)>, FrameError> {
    if buffer.len() < HEADER_BYTES {
        return Ok(None);
    }
    if buffer[0] != VERSION {
        return Err(FrameError::Version(buffer[0]));
    }
    let kind = buffer[1];
    if !matches!(kind, KIND_HELLO | KIND_MESSAGES | KIND_PART | KIND_CLOCK) {
        return Err(FrameError::Kind(kind));
    }
    let length = read_u32(buffer, 2).unwrap_or(0) as usize;
    if length > PAYLOAD_BYTES_MAX {
        return Err(FrameError::Oversized(length));
    }
    if buffer.len() < HEADER_BYTES + length {
        return Ok(None);
    }
    let payload = &buffer[HEADER_BYTES..HEADER_BYTES + length];
    let found = read_u32(buffer, 6).unwrap_or(0);
    let expected = crc32fast::hash(payload);
    if found != expected {
        return Err(FrameError::Checksum { expected, found });
    }
    let frame = match kind {
        KIND_HELLO => decode_hello(payload)?,
        KIND_PART => decode_part(payload)?,
        KIND_CLOCK => decode_clock(payload)?,
        _ => decode_messages(payload)?,
    };
    Ok(Some((frame, HEADER_BYTES + length)))
}

/// The big-endian word at byte `at` of a payload whose length was checked.
fn word(payload: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(payload[at..at + 8].try_into().unwrap_or([0; 8]))
}

fn decode_hello(payload: &[u8]) -> Result<Frame, FrameError> {
    if payload.len() != HELLO_PAYLOAD_BYTES && payload.len() != HELLO_PAYLOAD_BYTES_PLAIN {
        return Err(FrameError::Malformed("hello must be 16 or 32 bytes"));
    }
    let agreement = (payload.len() == HELLO_PAYLOAD_BYTES)
        .then(|| Agreement { members: word(payload, 16), schedule: word(payload, 24) });
    Ok(Frame::Hello { cluster_id: word(payload, 0), from: word(payload, 8), agreement })
}

fn decode_part(payload: &[u8]) -> Result<Frame, FrameError> {
    let total = payload
        .get(..8)
        .and_then(|bytes| bytes.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or(FrameError::Malformed("missing part total"))?;
    if total > MESSAGE_BYTES_MAX {
        return Err(FrameError::Malformed("split message over the size limit"));
    }
    if payload.len() == 8 {
        return Err(FrameError::Malformed("empty part"));
    }
    Ok(Frame::Part { total, bytes: payload[8..].to_vec() })
}

fn decode_clock(payload: &[u8]) -> Result<Frame, FrameError> {
    if payload.len() != CLOCK_PAYLOAD_BYTES {
        return Err(FrameError::Malformed("clock must be 24 bytes"));
    }
    let echo = crate::clock_offset::Echo {
        sent_unix_ns: word(payload, 8),
        received_unix_ns: word(payload, 16),
    };
    Ok(Frame::Clock {
        sent_unix_ns: word(payload, 0),
        echo: (echo.sent_unix_ns != 0 || echo.received_unix_ns != 0).then_some(echo),
    })
}

fn decode_messages(payload: &[u8]) -> Result<Frame, FrameError> {
    let count =
        read_u32(payload, 0).ok_or(FrameError::Malformed("missing message count"))? as usize;
    if count > MESSAGES_PER_FRAME_MAX {
        return Err(FrameError::Malformed("too many messages"));
    }
    let mut messages = Vec::with_capacity(count);
    let mut at = 4;
    for _ in 0..count {
        let size = read_u32(payload, at).ok_or(FrameError::Malformed("truncated message length"))?
            as usize;
        at += 4;
        let message =
            payload.get(at..at + size).ok_or(FrameError::Malformed("truncated message"))?;
        messages.push(message.to_vec());
        at += size;
    }
    if at != payload.len() {
        return Err(FrameError::Malformed("bytes after the last message"));
    }
    Ok(Frame::Messages(messages))
}

/// Encodes `messages` (encoded Raft messages, in order) for one peer: each returned byte
/// string is a unit that must be written whole and in order on one connection — a frame
/// of messages filling at most [`PART_BYTES`], or all the parts of one larger message.
pub fn encode_batch(messages: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    let mut units = Vec::new();
    let mut batch: Vec<Vec<u8>> = Vec::new();
    let mut batch_bytes = 0;
    let flush = |batch: &mut Vec<Vec<u8>>, batch_bytes: &mut usize, units: &mut Vec<Vec<u8>>| {
        if !batch.is_empty() {
            let mut bytes = Vec::new();
            encode(&Frame::Messages(std::mem::take(batch)), &mut bytes);
            units.push(bytes);
            *batch_bytes = 0;
        }
    };
    for message in messages {
        if message.len() > PART_BYTES {
            flush(&mut batch, &mut batch_bytes, &mut units);
            let mut bytes = Vec::with_capacity(message.len() + message.len() / PART_BYTES * 32);
            let total = message.len() as u64;
            for part in message.chunks(PART_BYTES) {
                encode(&Frame::Part { total, bytes: part.to_vec() }, &mut bytes);
            }
            units.push(bytes);
            continue;
        }
        if batch_bytes + 4 + message.len() > PART_BYTES || batch.len() == MESSAGES_PER_FRAME_MAX {
            flush(&mut batch, &mut batch_bytes, &mut units);
        }
        batch_bytes += 4 + message.len();
        batch.push(message);
    }
    flush(&mut batch, &mut batch_bytes, &mut units);
    units
}

/// Joins the parts of one split message as they arrive on a connection.
#[derive(Debug, Default)]
pub struct Reassembly {
    /// The message's size and the bytes so far.
    partial: Option<(u64, Vec<u8>)>,
}

impl Reassembly {
    /// Whether a message is part-way in: then only its next part may come.
    pub fn in_progress(&self) -> bool {
        self.partial.is_some()
    }

    /// Adds a part: the whole message once its last part is in. The buffer grows with
    /// the parts that arrived, never to the size a part claims.
    pub fn push(&mut self, total: u64, bytes: Vec<u8>) -> Result<Option<Vec<u8>>, FrameError> {
        let (expected, message) = self.partial.get_or_insert_with(|| (total, Vec::new()));
        if *expected != total {
            return Err(FrameError::Malformed("a part names another message's size"));
        }
        if message.len() as u64 + bytes.len() as u64 > total {
            return Err(FrameError::Malformed("parts longer than their message"));
        }
        message.extend_from_slice(&bytes);
        if message.len() as u64 == total {
            return Ok(self.partial.take().map(|(_, message)| message));
        }
        Ok(None)
    }
}
