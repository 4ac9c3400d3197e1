//! The log store's entry cache.

use super::*;

fn entry(index: u64, term: u64, size: usize) -> Entry {
    Entry { index, term, data: vec![7; size].into(), ..Entry::default() }
}

fn indexes(entries: &[Entry]) -> Vec<(u64, u64)> {
    entries.iter().map(|e| (e.index, e.term)).collect()
}

#[test]
fn an_overwritten_suffix_is_replaced_and_a_gap_starts_over() {
    let mut cache = EntryCache::default();
    cache.append(&[entry(5, 1, 10), entry(6, 1, 10), entry(7, 1, 10)]);
    // A new leader's entries replace 6 and 7.
    cache.append(&[entry(6, 2, 10)]);
    assert_eq!(indexes(&cache.slice(5, 7, None).unwrap()), [(5, 1), (6, 2)]);
    assert_eq!(cache.term(7), None);
    // Entries that do not follow on (after a snapshot) replace the cache.
    cache.append(&[entry(20, 3, 10)]);
    assert_eq!(cache.term(5), None);
    assert_eq!(cache.term(20), Some(3));
    assert_eq!(cache.bytes, u64::from(entry(20, 3, 10).compute_size()));
}

#[test]
fn a_read_it_does_not_cover_is_not_answered() {
    let mut cache = EntryCache::default();
    cache.append(&[entry(5, 1, 10), entry(6, 1, 10)]);
    assert!(cache.slice(4, 6, None).is_none());
    assert!(cache.slice(5, 8, None).is_none());
    assert_eq!(cache.slice(6, 6, None).unwrap().len(), 0);
    cache.compact_to(6);
    assert!(cache.slice(5, 6, None).is_none());
    assert_eq!(indexes(&cache.slice(6, 7, None).unwrap()), [(6, 1)]);
}

#[test]
fn a_size_limit_keeps_at_least_one_entry() {
    let mut cache = EntryCache::default();
    cache.append(&[entry(1, 1, 100), entry(2, 1, 100), entry(3, 1, 100)]);
    let one = u64::from(entry(1, 1, 100).compute_size());
    assert_eq!(cache.slice(1, 4, Some(1)).unwrap().len(), 1);
    assert_eq!(cache.slice(1, 4, Some(2 * one)).unwrap().len(), 2);
    assert_eq!(cache.slice(1, 4, Some(3 * one)).unwrap().len(), 3);
}

#[test]
fn the_cache_keeps_its_bounds() {
    let mut cache = EntryCache::default();
    let many: Vec<Entry> =
        (1..=ENTRY_CACHE_MAX_ENTRIES as u64 + 10).map(|i| entry(i, 1, 1)).collect();
    cache.append(&many);
    assert_eq!(cache.entries.len(), ENTRY_CACHE_MAX_ENTRIES);
    assert_eq!(cache.term(10), None);
    assert_eq!(cache.term(11), Some(1));
    let big = ENTRY_CACHE_MAX_BYTES / 4;
    let next = ENTRY_CACHE_MAX_ENTRIES as u64 + 11;
    cache.append(&(next..next + 5).map(|i| entry(i, 1, big)).collect::<Vec<_>>());
    assert!(cache.bytes <= ENTRY_CACHE_MAX_BYTES as u64);
    assert_eq!(cache.entries.back().map(|(e, _)| e.index), Some(next + 4));
}
