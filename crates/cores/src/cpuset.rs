//! Sets of CPU numbers, in the kernel's list format (`0-3,8,10-11`).

use std::fmt;
use std::str::FromStr;

/// Highest CPU number accepted (the kernel's NR_CPUS ceiling is 8192).
pub const CPU_MAX: u32 = 8_191;

/// A set of logical CPU numbers.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct CpuSet {
    words: Vec<u64>,
}

/// A CPU list that does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CpuListError {
    /// A piece that is not a number or range.
    #[error("{piece:?} is not a CPU number or range (expected e.g. 0-3,8)")]
    Malformed {
        /// The offending piece.
        piece: String,
    },
    /// A range written backwards.
    #[error("range {piece:?} runs backwards")]
    Backwards {
        /// The offending piece.
        piece: String,
    },
    /// A CPU number above [`CPU_MAX`].
    #[error("CPU {cpu} is above the supported maximum {CPU_MAX}")]
    TooLarge {
        /// The offending number.
        cpu: u64,
    },
}

impl CpuSet {
    /// The empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// The CPUs `first..=last`.
    pub fn range(first: u32, last: u32) -> Self {
        (first..=last).collect()
    }

    /// Adds a CPU.
    pub fn insert(&mut self, cpu: u32) {
        assert!(cpu <= CPU_MAX, "CPU {cpu} above {CPU_MAX}");
        let word = cpu as usize / 64;
        if self.words.len() <= word {
            self.words.resize(word + 1, 0);
        }
        self.words[word] |= 1 << (cpu % 64);
    }

    /// Removes a CPU.
    pub fn remove(&mut self, cpu: u32) {
        if let Some(word) = self.words.get_mut(cpu as usize / 64) {
            *word &= !(1 << (cpu % 64));
        }
        self.trim();
    }

    /// Whether the CPU is in the set.
    pub fn contains(&self, cpu: u32) -> bool {
        self.words.get(cpu as usize / 64).is_some_and(|word| word & (1 << (cpu % 64)) != 0)
    }

    /// Number of CPUs in the set.
    pub fn len(&self) -> usize {
        self.words.iter().map(|word| word.count_ones() as usize).sum()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|&word| word == 0)
    }

    /// The CPUs in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.words.iter().enumerate().flat_map(|(index, &word)| {
            let mut bits = word;
            std::iter::from_fn(move || {
                if bits == 0 {
                    return None;
                }
                let bit = bits.trailing_zeros();
                bits &= bits - 1;
                Some(index as u32 * 64 + bit)
            })
        })
    }

    /// The lowest CPU, if any.
    pub fn first(&self) -> Option<u32> {
        self.iter().next()
    }

    /// CPUs in either set.
    pub fn union(&self, other: &CpuSet) -> CpuSet {
        let len = self.words.len().max(other.words.len());
        let words = (0..len).map(|i| self.word(i) | other.word(i)).collect();
        CpuSet { words }.trimmed()
    }

    /// CPUs in both sets.
    pub fn intersection(&self, other: &CpuSet) -> CpuSet {
        let len = self.words.len().min(other.words.len());
        let words = (0..len).map(|i| self.word(i) & other.word(i)).collect();
        CpuSet { words }.trimmed()
    }

    /// CPUs in `self` but not in `other`.
    pub fn difference(&self, other: &CpuSet) -> CpuSet {
        let words = (0..self.words.len()).map(|i| self.word(i) & !other.word(i)).collect();
        CpuSet { words }.trimmed()
    }

    /// Whether every CPU of `self` is in `other`.
    pub fn is_subset(&self, other: &CpuSet) -> bool {
        self.difference(other).is_empty()
    }

    /// Whether the sets share a CPU.
    pub fn intersects(&self, other: &CpuSet) -> bool {
        !self.intersection(other).is_empty()
    }

    fn word(&self, index: usize) -> u64 {
        self.words.get(index).copied().unwrap_or(0)
    }

    fn trim(&mut self) {
        while self.words.last() == Some(&0) {
            self.words.pop();
        }
    }

    fn trimmed(mut self) -> Self {
        self.trim();
        self
    }

    /// Parses the kernel's list format; an empty or all-blank string is the empty set.
    pub fn parse_list(text: &str) -> Result<Self, CpuListError> {
        let mut set = CpuSet::new();
        for piece in text.trim().split(',').map(str::trim).filter(|piece| !piece.is_empty()) {
            let number = |text: &str| -> Result<u32, CpuListError> {
                let value: u64 = text
                    .trim()
                    .parse()
                    .map_err(|_| CpuListError::Malformed { piece: piece.to_owned() })?;
                if value > u64::from(CPU_MAX) {
                    return Err(CpuListError::TooLarge { cpu: value });
                }
                Ok(value as u32)
            };
            match piece.split_once('-') {
                None => set.insert(number(piece)?),
                Some((first, last)) => {
                    // The kernel also writes strided ranges (`0-7:2`); accept the stride.
                    let (last, stride) = match last.split_once(':') {
                        Some((last, stride)) => (last, number(stride)?.max(1)),
                        None => (last, 1),
                    };
                    let (first, last) = (number(first)?, number(last)?);
                    if first > last {
                        return Err(CpuListError::Backwards { piece: piece.to_owned() });
                    }
                    for cpu in (first..=last).step_by(stride as usize) {
                        set.insert(cpu);
                    }
                }
            }
        }
        Ok(set)
    }
}

impl FromIterator<u32> for CpuSet {
    fn from_iter<T: IntoIterator<Item = u32>>(iter: T) -> Self {
        let mut set = CpuSet::new();
        for cpu in iter {
            set.insert(cpu);
        }
        set
    }
}

impl FromStr for CpuSet {
    type Err = CpuListError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        CpuSet::parse_list(text)
    }
}

/// The kernel's list format, `0-3,8`; the empty set prints as an empty string.
impl fmt::Display for CpuSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut cpus = self.iter().peekable();
        let mut first_piece = true;
        while let Some(start) = cpus.next() {
            let mut end = start;
            while cpus.peek() == Some(&(end + 1)) {
                end += 1;
                cpus.next();
            }
            if !first_piece {
                f.write_str(",")?;
            }
            first_piece = false;
            if start == end {
                write!(f, "{start}")?;
            } else {
                write!(f, "{start}-{end}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for CpuSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CpuSet({self})")
    }
}

impl serde::Serialize for CpuSet {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for CpuSet {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        CpuSet::parse_list(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_round_trip() {
        for text in ["", "0", "0-3", "0-3,8,10-11", "2-15,34-47", "62,64,127-129"] {
            let set: CpuSet = text.parse().unwrap();
            assert_eq!(set.to_string(), text);
        }
        assert_eq!(CpuSet::parse_list(" 1 , 3-4 \n").unwrap().to_string(), "1,3-4");
        assert_eq!(CpuSet::parse_list("0-7:2").unwrap().to_string(), "0,2,4,6");
    }

    #[test]
    fn set_algebra() {
        let a = CpuSet::range(0, 7);
        let b: CpuSet = "4-11".parse().unwrap();
        assert_eq!(a.intersection(&b).to_string(), "4-7");
        assert_eq!(a.union(&b).to_string(), "0-11");
        assert_eq!(a.difference(&b).to_string(), "0-3");
        assert!(CpuSet::range(1, 2).is_subset(&a));
        assert!(!b.is_subset(&a));
        assert_eq!(a.len(), 8);
        assert_eq!(b.first(), Some(4));
        assert_eq!(CpuSet::range(0, 200).difference(&CpuSet::range(0, 200)), CpuSet::new());
    }

    #[test]
    fn bad_lists_are_errors() {
        assert!(matches!(CpuSet::parse_list("a-3"), Err(CpuListError::Malformed { .. })));
        assert!(matches!(CpuSet::parse_list("5-2"), Err(CpuListError::Backwards { .. })));
        assert!(matches!(CpuSet::parse_list("9000"), Err(CpuListError::TooLarge { cpu: 9000 })));
    }
}
