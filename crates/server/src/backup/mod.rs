//! `Maintenance.Snapshot`: the member's key-value state streamed as an etcd database
//! file, followed by its SHA-256 as etcd sends it. `etcdctl snapshot save` stores it,
//! `etcdctl snapshot status` checks it, and `etcdctl snapshot restore` makes an etcd
//! member of it: a worknode backup is also a way from worknode to etcd.
//!
//! The file is built on a blocking thread from the store as of one applied entry (an
//! O(1) clone, so writes go on) into a scratch file in the data directory, unlinked at
//! once, so memory stays flat whatever the store's size and nothing is left behind
//! however the stream ends.

mod bbolt;
mod bbolt_reader;
mod etcd_db;
pub mod restore;

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use worknode_raft::LeaseReport;

use crate::pb;
use crate::service::Shared;

/// Bytes per message, as etcd sends them.
const CHUNK_BYTES: usize = 32 * 1024;
/// Messages queued before the sender waits for the client to read.
const QUEUED_MAX: usize = 4;

/// The messages of one snapshot.
pub type SnapshotStream = ReceiverStream<Result<pb::SnapshotResponse, Status>>;

impl Shared {
    /// Starts streaming a snapshot of this member's key-value state.
    pub(crate) async fn snapshot(&self) -> Result<SnapshotStream, Status> {
        let state = self.lease_report().await?;
        let header = self.header(state.store.revision(), state.term);
        let dir = self.data_dir.clone();
        let (sender, responses) = mpsc::channel(QUEUED_MAX);
        tokio::task::spawn_blocking(move || {
            if let Err(error) = send(&dir, &state, header, &sender) {
                tracing::warn!("{error}");
                let _ = sender.blocking_send(Err(Status::internal(error)));
            }
        });
        Ok(ReceiverStream::new(responses))
    }
}

/// Writes the database and sends it, then its SHA-256; a client that goes away ends it.
fn send(
    dir: &Path,
    state: &LeaseReport,
    header: pb::ResponseHeader,
    sender: &mpsc::Sender<Result<pb::SnapshotResponse, Status>>,
) -> Result<(), String> {
    let started = Instant::now();
    let (file, path) = scratch_file(dir)?;
    let failed = |error: std::io::Error| format!("snapshot: {}: {error}", path.display());
    let (file, size) = etcd_db::write(BufWriter::new(file), state).map_err(failed)?;
    let mut file = file.into_inner().map_err(|error| failed(error.into_error()))?;
    file.seek(SeekFrom::Start(0)).map_err(failed)?;
    let mut digest = Sha256::new();
    let mut header = Some(header);
    let mut sent = 0u64;
    while sent < size {
        let mut blob =
            vec![0; CHUNK_BYTES.min(usize::try_from(size - sent).unwrap_or(CHUNK_BYTES))];
        file.read_exact(&mut blob).map_err(failed)?;
        digest.update(&blob);
        sent += blob.len() as u64;
        let part = pb::SnapshotResponse {
            header: header.take(),
            remaining_bytes: size - sent,
            blob,
            version: String::new(),
        };
        if sender.blocking_send(Ok(part)).is_err() {
            return Ok(());
        }
    }
    let checksum = pb::SnapshotResponse {
        header: None,
        remaining_bytes: 0,
        blob: digest.finalize().to_vec(),
        version: String::new(),
    };
    if sender.blocking_send(Ok(checksum)).is_ok() {
        tracing::info!(
            bytes = size,
            revision = state.store.revision(),
            took_ms = started.elapsed().as_millis() as u64,
            "sent a snapshot"
        );
    }
    Ok(())
}

/// A new file in `dir` that no other snapshot uses, already unlinked.
fn scratch_file(dir: &Path) -> Result<(File, std::path::PathBuf), String> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name =
        format!(".snapshot-{}-{}.part", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
    let path = dir.join(name);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|error| format!("snapshot: creating {}: {error}", path.display()))?;
    std::fs::remove_file(&path)
        .map_err(|error| format!("snapshot: unlinking {}: {error}", path.display()))?;
    Ok((file, path))
}
