//! The data directory: one process at a time, one cluster forever.

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};

/// A data directory that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    /// An I/O error.
    #[error("data dir {path}: {what}: {source}")]
    Io {
        /// The path involved.
        path: String,
        /// What was being done.
        what: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The path exists and is not a directory.
    #[error("data dir {path} is not a directory (it is a file or another kind of entry): choose another data_dir or move it away")]
    NotADirectory {
        /// The path.
        path: String,
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
        let io = |what| {
            move |source| DataDirError::Io { path: path.display().to_string(), what, source }
        };
        if fs::metadata(path).is_ok_and(|metadata| !metadata.is_dir()) {
            return Err(DataDirError::NotADirectory { path: path.display().to_string() });
        }
        fs::create_dir_all(path).map_err(io("cannot create it"))?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path.join("LOCK"))
            .map_err(io(
                "cannot open its LOCK file for writing (is it read-only or owned by another user?)",
            ))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(DataDirError::Locked { path: path.display().to_string() })
            }
            Err(fs::TryLockError::Error(error)) => return Err(io("cannot lock LOCK")(error)),
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
                fs::write(&identity_file, format!("{identity}\n"))
                    .map_err(io("cannot write IDENTITY"))?;
            }
            Err(error) => return Err(io("cannot read IDENTITY")(error)),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let path =
            std::env::temp_dir().join(format!("worknode-datadir-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        let _ = fs::remove_file(&path);
        path
    }

    #[test]
    fn a_data_dir_that_is_a_file_says_so() {
        let path = scratch("file");
        fs::write(&path, b"not a directory").unwrap_or_else(|e| panic!("{e}"));
        let error = DataDir::open(&path, 1, 1).map(|_| ()).unwrap_err().to_string();
        assert!(error.ends_with("is not a directory (it is a file or another kind of entry): choose another data_dir or move it away"), "{error}");
        let under = DataDir::open(&path.join("sub"), 1, 1).map(|_| ()).unwrap_err().to_string();
        assert!(under.contains("sub: cannot create it: Not a directory"), "{under}");
        let _ = fs::remove_file(&path);
    }

    #[test]
    fn a_data_dir_of_another_member_is_refused() {
        let path = scratch("foreign");
        drop(DataDir::open(&path, 7, 1).unwrap_or_else(|e| panic!("{e}")));
        let error = DataDir::open(&path, 7, 2).map(|_| ()).unwrap_err().to_string();
        assert!(
            error.contains("belongs to cluster 0x7 member 1, not cluster 0x7 member 2"),
            "{error}"
        );
        let _ = fs::remove_dir_all(&path);
    }
}
