//! Reading stake tables from files (`id,stake[,key]` lines) or inline (`a=3,b=1`), and
//! keys and seeds from hex or base58.

use std::collections::HashMap;
use std::path::Path;

use worknode_schedule::{Key, Member, Stakes};

use crate::CliError;

/// A stake table with the names people gave its members.
#[derive(Debug)]
pub(crate) struct NamedStakes {
    pub(crate) stakes: Stakes,
    /// Name of each member, indexed like `stakes.members()`.
    pub(crate) names: Vec<String>,
    /// Where each member was given (`file:line` or `--stakes entry N`), for messages.
    pub(crate) origins: Vec<String>,
}

impl NamedStakes {
    /// The name of the member at this canonical index.
    pub(crate) fn name(&self, index: u32) -> &str {
        &self.names[index as usize]
    }

    /// Fails, naming the first member without a key and where it was given.
    pub(crate) fn require_keys(&self, why: &str) -> Result<(), CliError> {
        match self.stakes.members().iter().position(|member| member.key.is_none()) {
            None => Ok(()),
            Some(index) => Err(CliError::input(format!(
                "{}: member {:?} has no key; {why}",
                self.origins[index], self.names[index]
            ))),
        }
    }
}

/// One member as written by the user, before ids are assigned.
#[derive(Debug)]
struct Entry {
    name: String,
    stake: u64,
    key: Option<Key>,
    /// Where the entry came from, for error messages (`file:line` or `--stakes entry 2`).
    origin: String,
}

/// Reads `--stakes`: a file path if such a file exists, otherwise an inline list.
pub(crate) fn read(argument: &str) -> Result<NamedStakes, CliError> {
    let path = Path::new(argument);
    let entries = if path.is_file() {
        let text = std::fs::read_to_string(path)
            .map_err(|error| CliError::input(format!("cannot read {argument}: {error}")))?;
        parse_file(argument, &text)?
    } else if argument.contains('=') {
        parse_inline(argument)?
    } else {
        return Err(CliError::input(format!(
            "--stakes {argument}: no such file, and not an inline list like a=3,b=1"
        )));
    };
    let source = if path.is_file() { argument.to_owned() } else { "--stakes".to_owned() };
    build(&source, entries)
}

fn parse_file(file: &str, text: &str) -> Result<Vec<Entry>, CliError> {
    let mut entries = Vec::new();
    for (number, raw) in text.lines().enumerate() {
        let origin = format!("{file}:{}", number + 1);
        // Everything after '#' is a comment; blank lines are skipped.
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        if fields.len() < 2 || fields.len() > 3 {
            return Err(CliError::input(format!(
                "{origin}: expected `id,stake[,key]`, found {} field(s) in {line:?}",
                fields.len()
            )));
        }
        let key = match fields.get(2) {
            Some(text) if !text.is_empty() => Some(parse_key(text, &origin)?),
            _ => None,
        };
        entries.push(entry(fields[0], fields[1], key, origin)?);
    }
    if entries.is_empty() {
        return Err(CliError::input(format!(
            "{file}: no members (every line is blank or a comment)"
        )));
    }
    Ok(entries)
}

fn parse_inline(list: &str) -> Result<Vec<Entry>, CliError> {
    list.split(',')
        .enumerate()
        .map(|(position, item)| {
            let origin = format!("--stakes entry {} ({item:?})", position + 1);
            let Some((name, rest)) = item.split_once('=') else {
                return Err(CliError::input(format!("{origin}: expected `id=stake[:key]`")));
            };
            let (stake, key) = match rest.split_once(':') {
                Some((stake, key)) => (stake, Some(parse_key(key.trim(), &origin)?)),
                None => (rest, None),
            };
            entry(name.trim(), stake.trim(), key, origin)
        })
        .collect()
}

fn entry(name: &str, stake: &str, key: Option<Key>, origin: String) -> Result<Entry, CliError> {
    if name.is_empty() {
        return Err(CliError::input(format!("{origin}: the member id is empty")));
    }
    let stake = stake.parse::<u64>().map_err(|_| {
        CliError::input(format!(
            "{origin}: stake {stake:?} of member {name:?} is not a whole number from 0 to {}",
            u64::MAX
        ))
    })?;
    Ok(Entry { name: name.to_owned(), stake, key, origin })
}

/// Assigns ids by the sorted order of names, so the listing order never matters.
fn build(source: &str, mut entries: Vec<Entry>) -> Result<NamedStakes, CliError> {
    let mut seen: HashMap<&str, &str> = HashMap::new();
    for entry in &entries {
        if let Some(first) = seen.insert(&entry.name, &entry.origin) {
            return Err(CliError::input(format!(
                "{}: member {:?} is listed again (first at {first})",
                entry.origin, entry.name
            )));
        }
    }
    entries.sort_by(|left, right| left.name.cmp(&right.name));
    let members = entries
        .iter()
        .enumerate()
        .map(|(rank, entry)| Member { id: rank as u64, key: entry.key, stake: entry.stake })
        .collect();
    let stakes =
        Stakes::new(members).map_err(|error| CliError::input(format!("{source}: {error}")))?;
    let (names, origins) = entries.into_iter().map(|entry| (entry.name, entry.origin)).unzip();
    Ok(NamedStakes { stakes, names, origins })
}

/// A 32-byte key given as 64 hex digits or in base58.
pub(crate) fn parse_key(text: &str, origin: &str) -> Result<Key, CliError> {
    if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(parse_hex32(text));
    }
    let bytes = bs58::decode(text).into_vec().map_err(|_| {
        CliError::input(format!("{origin}: key {text:?} is neither 64 hex digits nor base58"))
    })?;
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| {
        CliError::input(format!(
            "{origin}: key {text:?} is {} bytes in base58; a key must be 32 bytes",
            bytes.len()
        ))
    })
}

fn parse_hex32(text: &str) -> Key {
    let mut key = [0u8; 32];
    for (byte, pair) in key.iter_mut().zip(text.as_bytes().chunks_exact(2)) {
        let digit = |b: u8| (b as char).to_digit(16).map(|d| d as u8).unwrap_or(0);
        *byte = digit(pair[0]) << 4 | digit(pair[1]);
    }
    key
}

/// `--seed`: 64 hex digits, or a whole number placed little-endian in bytes 0..8.
pub(crate) fn parse_seed(text: &str) -> Result<[u8; 32], CliError> {
    if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(parse_hex32(text));
    }
    let number = text.parse::<u64>().map_err(|_| {
        CliError::input(format!(
            "--seed {text:?}: expected 64 hex digits or a whole number up to {}",
            u64::MAX
        ))
    })?;
    let mut seed = [0u8; 32];
    seed[..8].copy_from_slice(&number.to_le_bytes());
    Ok(seed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_take_comments_blank_lines_and_keys() {
        let text = "# validators\n\nb, 20 # heavy\na,10,11111111111111111111111111111111\n";
        let named = build("f", parse_file("f", text).unwrap()).unwrap();
        assert_eq!(named.names, ["a", "b"]);
        assert_eq!(named.stakes.members()[0].key, Some([0; 32]));
        assert_eq!(named.stakes.members()[1].stake, 20);
    }

    #[test]
    fn hex_and_base58_keys_agree() {
        let hex = "0000000000000000000000000000000000000000000000000000000000000001";
        let from_hex = parse_key(hex, "t").unwrap();
        let from_base58 = parse_key("11111111111111111111111111111112", "t").unwrap();
        assert_eq!(from_hex, from_base58);
        assert_eq!(from_hex[31], 1);
    }

    #[test]
    fn errors_name_the_place() {
        let error = parse_file("s.csv", "a,1\nb,x\n").unwrap_err();
        assert!(error.message.starts_with("s.csv:2: stake \"x\""), "{}", error.message);
        let error = parse_file("s.csv", "a,1,2,3\n").unwrap_err();
        assert!(error.message.starts_with("s.csv:1: expected"), "{}", error.message);
        let error = parse_inline("a=1,b").unwrap_err();
        assert!(error.message.starts_with("--stakes entry 2"), "{}", error.message);
        let error = build("f", parse_inline("a=1,a=2").unwrap()).unwrap_err();
        assert!(error.message.contains("listed again"), "{}", error.message);
    }

    #[test]
    fn seeds_accept_hex_and_numbers() {
        assert_eq!(parse_seed("7").unwrap()[0], 7);
        assert_eq!(parse_seed(&"ff".repeat(32)).unwrap(), [0xff; 32]);
        assert!(parse_seed("seven").is_err());
    }
}
