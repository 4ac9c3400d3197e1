//! Where the Raft log's newest file really ends, read from raft-engine's file format.
//!
//! raft-engine grows its active file with `fallocate` ahead of the data and trims the
//! spare space only on a clean close, and reuses purged files without clearing them. So
//! after a kill -9 or a power loss the newest file ends, past its last batch, in zeros, in
//! a batch the crash tore (never synced, so never acknowledged), or in stale batches of the
//! file it was recycled from (signed for another file). raft-engine's strict recovery
//! refuses all three; its tolerant one also truncates a complete batch that fails its
//! checksum, which is corruption of data that was acknowledged. This module tells them
//! apart, as etcd's WAL repair does: a tail past the last valid batch with no valid batch
//! after it is torn and may be cut; a bad batch with a valid one after it was overwritten
//! by a later sync, so it is corruption, and the member must not start on it.
//!
//! The format (raft-engine 0.4, `file_pipe_log/format.rs` and `log_batch.rs`): a header
//! of the 53-byte magic, a big-endian version (1, or 2 with a big-endian alignment after
//! it); then batches, each `len << 8 | compression` and `footer_offset` (big-endian u64s,
//! `len` counting the whole batch), the entries block `[16, footer_offset)` ending in its
//! little-endian CRC32, and the footer `[footer_offset, len)` ending in its little-endian
//! CRC32, XORed in version 2 with the low 32 bits of the file's sequence number.

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};

const MAGIC: &[u8] = b"RAFT-LOG-FILE-HEADER-9986AB3E47F320B394C8E84916EB0ED5";
const BATCH_HEADER_BYTES: usize = 16;
const CHECKSUM_BYTES: usize = 4;
/// Smallest footer: a one-byte item count and the checksum.
const FOOTER_BYTES_MIN: usize = 1 + CHECKSUM_BYTES;

/// How a log file ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tail {
    /// Every byte up to `end` is valid batches; what follows (if anything) is zeros, a
    /// torn batch or stale data, none of it ever acknowledged.
    Valid {
        /// Where the last valid batch ends.
        end: u64,
        /// The file's size.
        size: u64,
        /// What lies between `end` and `size`.
        rest: &'static str,
    },
    /// A complete batch fails its checksum and a valid batch follows it.
    Corrupt {
        /// Where the damaged batch begins.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// A layout this reader does not know (alignment padding): left to raft-engine.
    Unknown(String),
}

/// Every file of raft-engine's queues in `dir`, with its sequence number.
pub fn all_files(dir: &Path) -> std::io::Result<Vec<(PathBuf, u64)>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let stem = name.strip_suffix(".raftlog").or_else(|| name.strip_suffix(".rewrite"));
        if let Some(seq) = stem.and_then(|stem| stem.parse::<u64>().ok()) {
            files.push((path, seq));
        }
    }
    files.sort();
    Ok(files)
}

/// The newest of `files` in each of raft-engine's queues (`.raftlog`, `.rewrite`): the
/// files a crash can leave with an unsynced tail.
pub fn newest_of(files: &[(PathBuf, u64)]) -> Vec<(PathBuf, u64)> {
    let mut newest: Vec<(PathBuf, u64)> = Vec::new();
    for (path, seq) in files {
        let queue = path.extension();
        match newest.iter_mut().find(|(other, _)| other.extension() == queue) {
            Some(best) if best.1 < *seq => *best = (path.clone(), *seq),
            Some(_) => {}
            None => newest.push((path.clone(), *seq)),
        }
    }
    newest
}

/// Reads how `bytes`, the contents of the file with sequence number `seq`, ends.
pub fn inspect(bytes: &[u8], seq: u64) -> Tail {
    let size = bytes.len() as u64;
    let valid = |end: usize, rest| Tail::Valid { end: end as u64, size, rest };
    if bytes.len() < MAGIC.len() + 8 {
        let expected_prefix = MAGIC.iter().zip(bytes).all(|(a, b)| a == b);
        return if expected_prefix || bytes.iter().all(|&b| b == 0) {
            valid(0, "a torn file header")
        } else {
            Tail::Corrupt { offset: 0, reason: "not a raft-engine log file header".into() }
        };
    }
    if &bytes[..MAGIC.len()] != MAGIC {
        return Tail::Corrupt { offset: 0, reason: "not a raft-engine log file header".into() };
    }
    let version = u64_be(bytes, MAGIC.len());
    let (mut offset, signature) = match version {
        1 => (MAGIC.len() + 8, None),
        2 if bytes.len() < MAGIC.len() + 16 => return valid(0, "a torn file header"),
        2 if u64_be(bytes, MAGIC.len() + 8) != 0 => {
            return Tail::Unknown("an aligned (padded) log file layout".into())
        }
        2 => (MAGIC.len() + 16, Some(seq as u32)),
        other => return Tail::Unknown(format!("log file format version {other}")),
    };
    while offset < bytes.len() {
        let rest = &bytes[offset..];
        if rest.iter().all(|&b| b == 0) {
            return valid(offset, "zeros (space allocated ahead of the data)");
        }
        match check_batch(rest, signature) {
            Batch::Valid(len) => offset += len,
            Batch::Torn => return valid(offset, "a batch cut short (a write the crash tore)"),
            Batch::Stale => {
                return valid(offset, "batches of the file this one was recycled from");
            }
            Batch::Bad(reason) => {
                if (offset + 1..bytes.len())
                    .any(|later| matches!(check_batch(&bytes[later..], signature), Batch::Valid(_)))
                {
                    return Tail::Corrupt { offset: offset as u64, reason };
                }
                return valid(offset, "a damaged batch with nothing valid after it (a torn write)");
            }
        }
    }
    valid(offset, "nothing")
}

/// What the bytes at a batch boundary hold.
enum Batch {
    /// A whole batch of this many bytes whose checksums hold.
    Valid(usize),
    /// A header whose batch runs past the end of the file.
    Torn,
    /// A whole batch signed for an older file (recycled space).
    Stale,
    /// Anything else.
    Bad(String),
}

fn check_batch(bytes: &[u8], signature: Option<u32>) -> Batch {
    if bytes.len() < BATCH_HEADER_BYTES {
        return Batch::Torn;
    }
    let len_and_compression = u64_be(bytes, 0);
    let (len, compression) = ((len_and_compression >> 8) as usize, len_and_compression & 0xff);
    let footer = u64_be(bytes, 8) as usize;
    let plausible = compression <= 1
        && footer >= BATCH_HEADER_BYTES
        && len >= footer.saturating_add(FOOTER_BYTES_MIN)
        && (footer == BATCH_HEADER_BYTES || footer > BATCH_HEADER_BYTES + CHECKSUM_BYTES);
    if !plausible {
        return Batch::Bad("the batch header is not one raft-engine writes".into());
    }
    if len > bytes.len() {
        return Batch::Torn;
    }
    let (stored, actual) = checksums(&bytes[footer..len]);
    match signature {
        Some(signature) if stored ^ signature != actual => {
            // Signed for another file: an older file's batch left in recycled space.
            let other = stored ^ actual;
            if other < signature {
                return Batch::Stale;
            }
            return Batch::Bad(format!("the footer checksum fails ({stored:#010x})"));
        }
        None if stored != actual => {
            return Batch::Bad(format!("the footer checksum fails ({stored:#010x})"));
        }
        _ => {}
    }
    if footer > BATCH_HEADER_BYTES {
        let (stored, actual) = checksums(&bytes[BATCH_HEADER_BYTES..footer]);
        if stored != actual {
            return Batch::Bad(format!("the entries checksum fails ({stored:#010x})"));
        }
    }
    Batch::Valid(len)
}

/// The little-endian CRC32 at the end of `block` and the one computed over the rest.
fn checksums(block: &[u8]) -> (u32, u32) {
    let body = block.len() - CHECKSUM_BYTES;
    let mut stored = [0u8; 4];
    stored.copy_from_slice(&block[body..]);
    (u32::from_le_bytes(stored), crc32fast::hash(&block[..body]))
}

fn u64_be(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_be_bytes(word)
}

/// Cuts `path` to `end` bytes and syncs it.
pub fn truncate(path: &Path, end: u64) -> std::io::Result<()> {
    let file = OpenOptions::new().write(true).open(path)?;
    file.set_len(end)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A batch as raft-engine lays it out: entries block, footer, signed in version 2.
    fn batch(entries: &[u8], items: &[u8], signature: Option<u32>) -> Vec<u8> {
        let mut bytes = vec![0u8; BATCH_HEADER_BYTES];
        if !entries.is_empty() {
            bytes.extend_from_slice(entries);
            let crc = crc32fast::hash(entries);
            bytes.extend_from_slice(&crc.to_le_bytes());
        }
        let footer = bytes.len();
        bytes.push(1); // one item
        bytes.extend_from_slice(items);
        let crc = crc32fast::hash(&bytes[footer..]) ^ signature.unwrap_or(0);
        bytes.extend_from_slice(&crc.to_le_bytes());
        let len = bytes.len() as u64;
        bytes[..8].copy_from_slice(&(len << 8).to_be_bytes());
        bytes[8..16].copy_from_slice(&(footer as u64).to_be_bytes());
        bytes
    }

    fn file(version: u64, batches: &[Vec<u8>]) -> Vec<u8> {
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&version.to_be_bytes());
        if version == 2 {
            bytes.extend_from_slice(&0u64.to_be_bytes());
        }
        for batch in batches {
            bytes.extend_from_slice(batch);
        }
        bytes
    }

    const SEQ: u64 = 7;

    fn three_batches() -> Vec<Vec<u8>> {
        let sign = Some(SEQ as u32);
        vec![batch(b"first", b"items", sign), batch(b"", b"kv", sign), batch(b"third", b"x", sign)]
    }

    #[test]
    fn a_file_of_whole_batches_ends_at_its_end() {
        let bytes = file(2, &three_batches());
        let end = bytes.len() as u64;
        assert_eq!(inspect(&bytes, SEQ), Tail::Valid { end, size: end, rest: "nothing" });
    }

    #[test]
    fn zeros_allocated_ahead_end_the_valid_part() {
        let mut bytes = file(2, &three_batches());
        let end = bytes.len() as u64;
        bytes.resize(bytes.len() + 4096, 0);
        let tail = inspect(&bytes, SEQ);
        assert!(matches!(tail, Tail::Valid { end: e, size, .. } if e == end && size == end + 4096));
    }

    #[test]
    fn a_batch_cut_short_is_a_torn_tail_at_its_start() {
        let batches = three_batches();
        let whole = file(2, &batches);
        let torn_at = whole.len() - batches[2].len();
        for cut in torn_at + 1..whole.len() {
            let mut bytes = whole[..cut].to_vec();
            bytes.resize(cut + 100, 0);
            let tail = inspect(&bytes, SEQ);
            assert!(
                matches!(tail, Tail::Valid { end, .. } if end == torn_at as u64),
                "cut at {cut}: {tail:?}"
            );
        }
    }

    #[test]
    fn a_flipped_bit_in_a_batch_with_one_after_it_is_corruption() {
        let batches = three_batches();
        let mut bytes = file(2, &batches);
        let second = MAGIC.len() + 16 + batches[0].len();
        bytes[second - 3] ^= 0x10; // inside the first batch's footer
        let tail = inspect(&bytes, SEQ);
        assert!(
            matches!(&tail, Tail::Corrupt { offset, reason } if *offset == (MAGIC.len() + 16) as u64 && reason.contains("footer checksum")),
            "{tail:?}"
        );
        let mut entries = file(2, &batches);
        entries[MAGIC.len() + 16 + BATCH_HEADER_BYTES + 1] ^= 1;
        assert!(matches!(inspect(&entries, SEQ), Tail::Corrupt { .. }));
    }

    #[test]
    fn a_damaged_last_batch_is_a_torn_write() {
        let batches = three_batches();
        let mut bytes = file(2, &batches);
        let last = bytes.len() - 2;
        bytes[last] ^= 1;
        let end = (bytes.len() - batches[2].len()) as u64;
        assert!(matches!(inspect(&bytes, SEQ), Tail::Valid { end: e, .. } if e == end));
    }

    #[test]
    fn batches_of_a_recycled_older_file_end_the_valid_part() {
        let mut batches = three_batches();
        let end = (file(2, &batches).len()) as u64;
        batches.push(batch(b"stale", b"old", Some(3)));
        let bytes = file(2, &batches);
        assert!(
            matches!(inspect(&bytes, SEQ), Tail::Valid { end: e, rest, .. } if e == end && rest.contains("recycled"))
        );
    }

    #[test]
    fn the_newest_file_of_each_queue_is_the_one_a_crash_can_tear() {
        let file = |name: &str, seq| (PathBuf::from(format!("/log/{name}")), seq);
        let files = [
            file("0000000000000001.raftlog", 1),
            file("0000000000000003.raftlog", 3),
            file("0000000000000002.rewrite", 2),
            file("0000000000000001.rewrite", 1),
        ];
        let newest = newest_of(&files);
        assert_eq!(
            newest,
            [file("0000000000000003.raftlog", 3), file("0000000000000002.rewrite", 2)]
        );
    }

    #[test]
    fn version_one_files_are_unsigned() {
        let batches = vec![batch(b"a", b"b", None), batch(b"c", b"d", None)];
        let bytes = file(1, &batches);
        let end = bytes.len() as u64;
        assert!(matches!(inspect(&bytes, SEQ), Tail::Valid { end: e, .. } if e == end));
    }

    #[test]
    fn a_foreign_file_is_corrupt_and_a_short_header_torn() {
        assert!(matches!(
            inspect(b"definitely not a log file at all, no, not at all......", 1),
            Tail::Corrupt { offset: 0, .. }
        ));
        assert!(matches!(inspect(&MAGIC[..20], 1), Tail::Valid { end: 0, .. }));
    }
}
