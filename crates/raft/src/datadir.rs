//! The data directory: one process at a time, one cluster forever.

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};

/// A data directory that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    /// An I/O error.
    #[error("data dir {path}: {source}")]
    Io {
        /// The path involved.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Another process holds the lock.
    #[error(
        "data dir {path} is in use by another worknode process (lock file {path}/LOCK is held)"
    )]
    Locked {
        /// The directory.
        path: String,
    },
    /// The directory belongs to another cluster or member.
    #[error("data dir {path} belongs to {found}, not {expected}: refusing to mix clusters")]
    Foreign {
        /// The directory.
        path: String,
        /// What the directory records.
        found: String,
        /// What this process is.
        expected: String,
    },
}

/// A locked data directory; the lock is released when this is dropped.
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    _lock: File,
}

impl DataDir {
    /// Creates (if needed) and locks `path` for `cluster_id`/`member_id`.
    pub fn open(path: &Path, cluster_id: u64, member_id: u64) -> Result<Self, DataDirError> {
        let io = |source| DataDirError::Io { path: path.display().to_string(), source };
        fs::create_dir_all(path).map_err(io)?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path.join("LOCK"))
            .map_err(io)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(DataDirError::Locked { path: path.display().to_string() })
            }
            Err(fs::TryLockError::Error(error)) => return Err(io(error)),
        }
        let identity = format!("cluster {cluster_id:#x} member {member_id}");
        let identity_file = path.join("IDENTITY");
        match fs::read_to_string(&identity_file) {
            Ok(found) if found.trim() == identity => {}
            Ok(found) => {
                return Err(DataDirError::Foreign {
                    path: path.display().to_string(),
                    found: found.trim().to_owned(),
                    expected: identity,
                })
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                fs::write(&identity_file, format!("{identity}\n")).map_err(io)?;
            }
            Err(error) => return Err(io(error)),
        }
        Ok(Self { path: path.to_path_buf(), _lock: lock })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where raft-engine keeps the log.
    pub fn log_dir(&self) -> PathBuf {
        self.path.join("raft-log")
    }
}
