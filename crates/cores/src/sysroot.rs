//! Reading sysfs and procfs under a root directory, so tests can point at a fixture tree.
//!
//! A file that is missing or unreadable is "unknown" (`None`), never an error: kernels,
//! containers and VMs each lack different files. Contents that do not parse are also
//! unknown, and leave a note saying which file and why.

use std::cell::RefCell;
use std::path::{Path, PathBuf};

use crate::cpuset::CpuSet;

/// A filesystem root holding `sys/` and `proc/`.
#[derive(Debug)]
pub struct SysRoot {
    root: PathBuf,
    notes: RefCell<Vec<String>>,
}

impl SysRoot {
    /// Reads under `root` (`/` for the live system).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into(), notes: RefCell::new(Vec::new()) }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether this is the live system rather than a fixture tree.
    pub fn is_live(&self) -> bool {
        self.root == Path::new("/")
    }

    /// Absolute path of `relative` (written without a leading slash).
    pub fn path(&self, relative: &str) -> PathBuf {
        self.root.join(relative.trim_start_matches('/'))
    }

    /// The file's contents, trimmed; `None` if missing or unreadable.
    pub fn read(&self, relative: &str) -> Option<String> {
        std::fs::read_to_string(self.path(relative)).ok().map(|text| text.trim().to_owned())
    }

    /// A number file; `None` if missing, a note if malformed.
    pub fn read_number<T: std::str::FromStr>(&self, relative: &str) -> Option<T> {
        let text = self.read(relative)?;
        match text.parse() {
            Ok(value) => Some(value),
            Err(_) => {
                self.note(format!("/{relative}: {text:?} is not a number"));
                None
            }
        }
    }

    /// A CPU list file; `(null)` (written by some kernels for an empty mask) is empty.
    pub fn read_cpuset(&self, relative: &str) -> Option<CpuSet> {
        let text = self.read(relative)?;
        self.parse_cpuset(&format!("/{relative}"), &text)
    }

    /// Parses a CPU list taken from `origin`, leaving a note if it is malformed.
    pub fn parse_cpuset(&self, origin: &str, text: &str) -> Option<CpuSet> {
        if text == "(null)" {
            return Some(CpuSet::new());
        }
        match CpuSet::parse_list(text) {
            Ok(set) => Some(set),
            Err(error) => {
                self.note(format!("{origin}: {error}"));
                None
            }
        }
    }

    /// Names of the entries of a directory, sorted; empty if it is missing.
    pub fn list(&self, relative: &str) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.path(relative)) else {
            return Vec::new();
        };
        let mut names: Vec<String> = entries
            .filter_map(Result::ok)
            .filter_map(|entry| entry.file_name().into_string().ok())
            .collect();
        names.sort();
        names
    }

    /// Numbered entries such as `cpu12` or `node1` (`prefix` then digits), in numeric order.
    pub fn numbered(&self, relative: &str, prefix: &str) -> Vec<u32> {
        let mut numbers: Vec<u32> = self
            .list(relative)
            .iter()
            .filter_map(|name| name.strip_prefix(prefix)?.parse().ok())
            .collect();
        numbers.sort_unstable();
        numbers
    }

    /// Records a problem found while reading.
    pub fn note(&self, note: String) {
        self.notes.borrow_mut().push(note);
    }

    /// Problems found so far.
    pub fn notes(&self) -> Vec<String> {
        self.notes.borrow().clone()
    }
}
