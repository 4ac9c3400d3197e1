//! The shim on hand-built HPACK blocks and frames.

use super::*;
use tokio::io::AsyncReadExt;

fn literal(
    out: &mut Vec<u8>,
    flags: u8,
    prefix: u32,
    name_index: usize,
    value: &str,
    huffman: bool,
) {
    encode_integer(out, flags, prefix, name_index);
    if huffman {
        let mut encoded = Vec::new();
        httlib_huffman::encode(value.as_bytes(), &mut encoded).unwrap();
        encode_integer(out, 0x80, 7, encoded.len());
        out.extend_from_slice(&encoded);
    } else {
        encode_integer(out, 0x00, 7, value.len());
        out.extend_from_slice(value.as_bytes());
    }
}

/// Every field of a block, as (name, value), resolved against `table`.
fn fields(table: &mut Vec<(Vec<u8>, Vec<u8>)>, block: &[u8]) -> Vec<(String, String)> {
    let mut at = 0;
    let mut out = Vec::new();
    let name_of = |table: &Vec<(Vec<u8>, Vec<u8>)>, index: usize| {
        if index <= 61 {
            STATIC_NAMES[index - 1].as_bytes().to_vec()
        } else {
            table[index - 62].0.clone()
        }
    };
    while at < block.len() {
        let first = block[at];
        if first & 0x80 != 0 {
            let index = integer(block, &mut at, 7).unwrap();
            let (name, value) = if index <= 61 {
                (STATIC_NAMES[index - 1].as_bytes().to_vec(), b"(static)".to_vec())
            } else {
                table[index - 62].clone()
            };
            out.push((String::from_utf8(name).unwrap(), String::from_utf8(value).unwrap()));
            continue;
        }
        let indexing = first & 0x40 != 0;
        let index = integer(block, &mut at, if indexing { 6 } else { 4 }).unwrap();
        let name = if index == 0 { string(block, &mut at).unwrap() } else { name_of(table, index) };
        let value = string(block, &mut at).unwrap();
        if indexing {
            table.insert(0, (name.clone(), value.clone()));
        }
        out.push((String::from_utf8(name).unwrap(), String::from_utf8(value).unwrap()));
    }
    out
}

fn request(block: &[u8], stream: u32, split_at: Option<usize>) -> Vec<u8> {
    let mut out = Vec::new();
    match split_at {
        None => push_frame(&mut out, HEADERS, END_HEADERS | END_STREAM, stream, block),
        Some(at) => {
            push_frame(&mut out, HEADERS, END_STREAM, stream, &block[..at]);
            push_frame(&mut out, CONTINUATION, END_HEADERS, stream, &block[at..]);
        }
    }
    push_frame(&mut out, 0x0, 0x1, stream, b"body");
    out
}

/// What the server reads from a shim over `client`, fed in pieces of `piece` bytes.
async fn through(client: Vec<u8>, piece: usize) -> Vec<u8> {
    let (mut writer, reader) = tokio::io::duplex(1 << 20);
    let feed = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        for chunk in client.chunks(piece) {
            writer.write_all(chunk).await.unwrap();
            tokio::task::yield_now().await;
        }
    });
    let mut shim = AuthorityShim::new(reader);
    let mut out = Vec::new();
    shim.read_to_end(&mut out).await.unwrap();
    feed.await.unwrap();
    out
}

/// The header blocks of the frames in `bytes` (after the preface), joined per request.
fn blocks(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut at = PREFACE.len();
    let mut blocks = Vec::new();
    let mut current: Option<Vec<u8>> = None;
    while at < bytes.len() {
        let length = usize::from(bytes[at]) << 16
            | usize::from(bytes[at + 1]) << 8
            | usize::from(bytes[at + 2]);
        let (kind, flags) = (bytes[at + 3], bytes[at + 4]);
        let payload = &bytes[at + FRAME_HEADER..at + FRAME_HEADER + length];
        if kind == HEADERS {
            current = Some(headers_fragment(flags, payload).unwrap().0.to_vec());
        } else if kind == CONTINUATION {
            current.as_mut().unwrap().extend_from_slice(payload);
        }
        if (kind == HEADERS || kind == CONTINUATION) && flags & END_HEADERS != 0 {
            blocks.push(current.take().unwrap());
        }
        at += FRAME_HEADER + length;
    }
    blocks
}

#[tokio::test]
async fn a_scheme_in_the_authority_is_taken_off_and_later_references_follow() {
    let mut first = Vec::new();
    encode_integer(&mut first, 0x80, 7, 3); // :method POST
    literal(&mut first, 0x40, 6, 1, "http://127.0.0.1:2379", true); // :authority, indexed
    literal(&mut first, 0x40, 6, 0, "te", false); // a literal name: "te"
    first.extend_from_slice(b"\x08trailers");
    literal(&mut first, 0x00, 4, 4, "/etcdserverpb.KV/Put", true); // :path, not indexed
    let mut second = Vec::new();
    encode_integer(&mut second, 0x80, 7, 63); // the authority, now second newest
    literal(&mut second, 0x10, 4, 1, "https://10.0.0.1:2379/x", false); // never indexed
    let mut client = PREFACE.to_vec();
    client.extend(request(&first, 1, None));
    client.extend(request(&second, 3, Some(2)));
    for piece in [1, 7, 4096] {
        let server = through(client.clone(), piece).await;
        let blocks = blocks(&server);
        assert_eq!(blocks.len(), 2);
        let mut table = Vec::new();
        let first = fields(&mut table, &blocks[0]);
        assert_eq!(first[1], (":authority".into(), "127.0.0.1:2379".into()));
        assert_eq!(first[2], ("te".into(), "trailers".into()));
        assert_eq!(first[3], (":path".into(), "/etcdserverpb.KV/Put".into()));
        let second = fields(&mut table, &blocks[1]);
        assert_eq!(second[0], (":authority".into(), "127.0.0.1:2379".into()));
        assert_eq!(second[1], (":authority".into(), "10.0.0.1:2379".into()));
        assert!(server.ends_with(b"body"), "other frames pass as they came");
    }
}

#[tokio::test]
async fn blocks_without_a_scheme_and_http1_pass_byte_for_byte() {
    let mut block = Vec::new();
    literal(&mut block, 0x40, 6, 1, "127.0.0.1:2379", true);
    let mut client = PREFACE.to_vec();
    client.extend(request(&block, 1, Some(3)));
    // After a first request without a scheme the connection passes untouched (one
    // authority per connection), even a later literal with one.
    let mut later = Vec::new();
    literal(&mut later, 0x00, 4, 1, "http://127.0.0.1:2379", false);
    client.extend(request(&later, 3, None));
    assert_eq!(through(client.clone(), 5).await, client);
    let http1 = b"GET /health HTTP/1.1\r\nHost: http://x\r\n\r\n".to_vec();
    assert_eq!(through(http1.clone(), 3).await, http1);
}

#[test]
fn the_table_evicts_as_the_client_does() {
    let mut table = Table::new();
    table.max = 100;
    table.insert(b":authority".to_vec(), 40); // 82 bytes
    table.insert(b"a".to_vec(), 10); // 43: the first goes
    assert_eq!(table.entries.len(), 1);
    assert_eq!(table.name(62).unwrap(), b"a");
    table.insert(b"b".to_vec(), 200); // larger than the table: empties it
    assert!(table.entries.is_empty() && table.size == 0);
    assert!(table.name(62).is_err());
    assert_eq!(without_scheme(b"unix://host:1/path"), Some(b"host:1".to_vec()));
    assert_eq!(without_scheme(b"host:1"), None);
}
