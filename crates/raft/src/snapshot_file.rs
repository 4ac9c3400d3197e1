//! The state-machine snapshot on disk: one file, replaced atomically, checksummed.
//!
//! ```text
//! magic "WNSNAP01" | metadata length u32 BE | metadata (raft SnapshotMetadata protobuf)
//! | data length u64 BE | data | crc32 of everything before u32 BE
//! ```

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use protobuf::Message as _;
use raft::eraftpb::{Snapshot, SnapshotMetadata};

const MAGIC: &[u8; 8] = b"WNSNAP01";
/// Bytes written between flushes while saving a snapshot.
pub const SYNC_CHUNK: usize = 1 << 20;

/// A snapshot file that cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotFileError {
    /// An I/O error.
    #[error("snapshot {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The contents are damaged.
    #[error("snapshot {path} is damaged at byte offset {offset}: {reason}")]
    Damaged {
        /// The file.
        path: String,
        /// Where the problem was found.
        offset: usize,
        /// What is wrong.
        reason: String,
    },
}

/// The snapshot file of one data directory (or, in the simulator, its bytes in memory).
#[derive(Clone, Debug)]
pub struct SnapshotFile {
    path: PathBuf,
    memory: Option<Arc<Mutex<Option<Vec<u8>>>>>,
}

impl SnapshotFile {
    /// The snapshot file in `dir`.
    pub fn in_dir(dir: &Path) -> Self {
        Self { path: dir.join("snapshot.bin"), memory: None }
    }

    /// A snapshot kept in memory, in the same format: the simulator's members, whose
    /// disk outlives their process but is not a file. The driver writes such a snapshot
    /// on its loop (no thread may decide when a simulated snapshot is done).
    pub fn in_memory() -> Self {
        Self { path: PathBuf::from("<memory>"), memory: Some(Arc::default()) }
    }

    /// Whether this is [`SnapshotFile::in_memory`].
    pub fn is_in_memory(&self) -> bool {
        self.memory.is_some()
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self, source: std::io::Error) -> SnapshotFileError {
        SnapshotFileError::Io { path: self.path.display().to_string(), source }
    }

    /// Writes `snapshot` durably: a temporary file flushed every [`SYNC_CHUNK`], fsync,
    /// rename, fsync of the directory.
    pub fn save(&self, snapshot: &Snapshot) -> Result<(), SnapshotFileError> {
        let bytes = encode(snapshot);
        if let Some(memory) = &self.memory {
            *memory.lock().unwrap_or_else(PoisonError::into_inner) = Some(bytes);
            return Ok(());
        }
        let temporary = self.path.with_extension("bin.tmp");
        let mut file = File::create(&temporary).map_err(|e| self.io(e))?;
        // Flushed a chunk at a time: one flush of the whole file (megabytes) holds the disk
        // long enough to stall every Raft log fdatasync queued behind it, on every member
        // sharing the disk.
        for chunk in bytes.chunks(SYNC_CHUNK) {
            file.write_all(chunk).map_err(|e| self.io(e))?;
            file.sync_data().map_err(|e| self.io(e))?;
        }
        file.sync_all().map_err(|e| self.io(e))?;
        fs::rename(&temporary, &self.path).map_err(|e| self.io(e))?;
        if let Some(dir) = self.path.parent() {
            File::open(dir).and_then(|d| d.sync_all()).map_err(|e| self.io(e))?;
        }
        Ok(())
    }

    /// Removes the snapshot (`--rejoin`); none is no error.
    pub fn remove(&self) -> Result<(), SnapshotFileError> {
        if let Some(memory) = &self.memory {
            *memory.lock().unwrap_or_else(PoisonError::into_inner) = None;
            return Ok(());
        }
        match fs::remove_file(&self.path) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(self.io(error)),
            _ => Ok(()),
        }
    }

    /// Reads the snapshot; `Ok(None)` when there is none yet.
    pub fn load(&self) -> Result<Option<Snapshot>, SnapshotFileError> {
        let stored = self
            .memory
            .as_ref()
            .map(|memory| memory.lock().unwrap_or_else(PoisonError::into_inner).clone());
        let bytes = match stored {
            Some(Some(bytes)) => bytes,
            Some(None) => return Ok(None),
            None => match fs::read(&self.path) {
                Ok(bytes) => bytes,
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(error) => return Err(self.io(error)),
            },
        };
        decode(&bytes).map(Some).map_err(|(offset, reason)| SnapshotFileError::Damaged {
            path: self.path.display().to_string(),
            offset,
            reason,
        })
    }
}

/// The file's bytes: magic, metadata length and metadata, data length and data, CRC32.
fn encode(snapshot: &Snapshot) -> Vec<u8> {
    let metadata = snapshot
        .get_metadata()
        .write_to_bytes()
        .unwrap_or_else(|error| unreachable!("encoding cannot fail: {error}"));
    let data = snapshot.get_data();
    let mut bytes = Vec::with_capacity(MAGIC.len() + 4 + metadata.len() + 8 + data.len() + 4);
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&(metadata.len() as u32).to_be_bytes());
    bytes.extend_from_slice(&metadata);
    bytes.extend_from_slice(&(data.len() as u64).to_be_bytes());
    bytes.extend_from_slice(data);
    let checksum = crc32fast::hash(&bytes);
    bytes.extend_from_slice(&checksum.to_be_bytes());
    bytes
}

fn decode(bytes: &[u8]) -> Result<Snapshot, (usize, String)> {
    if bytes.len() < MAGIC.len() + 4 + 8 + 4 || &bytes[..MAGIC.len()] != MAGIC {
        return Err((0, "not a worknode snapshot (bad magic or too short)".into()));
    }
    let body = bytes.len() - 4;
    let stored = u32::from_be_bytes(bytes[body..].try_into().unwrap_or_default());
    let computed = crc32fast::hash(&bytes[..body]);
    if stored != computed {
        return Err((
            body,
            format!("checksum {stored:#010x} does not match the contents ({computed:#010x})"),
        ));
    }
    let mut at = MAGIC.len();
    let metadata_len =
        u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap_or_default()) as usize;
    at += 4;
    let metadata_bytes =
        bytes.get(at..at + metadata_len).ok_or((at, "metadata runs past the end".to_string()))?;
    let metadata = SnapshotMetadata::parse_from_bytes(metadata_bytes)
        .map_err(|e| (at, format!("metadata: {e}")))?;
    at += metadata_len;
    let data_len = bytes
        .get(at..at + 8)
        .map(|b| u64::from_be_bytes(b.try_into().unwrap_or_default()) as usize)
        .ok_or((at, "data length missing".to_string()))?;
    at += 8;
    let data = bytes.get(at..at + data_len).ok_or((at, "data runs past the end".to_string()))?;
    if at + data_len != body {
        return Err((at + data_len, "bytes after the data".into()));
    }
    let mut snapshot = Snapshot::default();
    snapshot.set_metadata(metadata);
    snapshot.set_data(data.to_vec().into());
    Ok(snapshot)
}
