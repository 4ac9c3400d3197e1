//! A reader of bbolt database files: the top-level buckets of a snapshot written by
//! etcd (or by [`super::bbolt`]), for `worknode snapshot restore`.
//!
//! The file comes from outside, so nothing in it is trusted: every page named is inside
//! the file and below the meta page's high-water mark, every element lies inside its
//! page, no page is reached twice (a cycle or a shared subtree is damage), and a tree
//! deeper than any bbolt builds is refused. Each problem is one message naming the page
//! or bucket.

use std::collections::HashSet;

use super::bbolt::{
    fnv1a64, BRANCH_PAGE, BUCKET_LEAF, ELEMENT, LEAF_PAGE, MAGIC, META_PAGE, PAGE_HEADER, VERSION,
};

/// Deeper than a B+tree of 4 KiB pages gets for any file that fits in memory.
const DEPTH_MAX: usize = 32;
/// The meta fields the checksum covers: magic to txid.
const META_CHECKED: usize = 56;

/// A key and its value, borrowed from the file.
pub(crate) type Pair<'a> = (&'a [u8], &'a [u8]);

/// An open database: the file's bytes and its newest valid meta page.
#[derive(Debug)]
pub(crate) struct Db<'a> {
    file: &'a [u8],
    page_size: usize,
    /// Pages below this id are in use.
    high_water: u64,
    /// The root bucket's page.
    root: u64,
}

/// A page's bytes (with its overflow) and its header.
struct Page<'a> {
    id: u64,
    flags: u16,
    count: usize,
    bytes: &'a [u8],
}

fn u16_at(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
}
fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}
fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}

/// A meta page's fields, if it is a valid one: page size, root page, high water, txid.
fn meta(file: &[u8], at: usize) -> Option<(usize, u64, u64, u64)> {
    let meta = file.get(at + PAGE_HEADER..at + PAGE_HEADER + META_CHECKED + 8)?;
    let valid = u16_at(file, at + 8)? & META_PAGE != 0
        && u32_at(meta, 0)? == MAGIC
        && u32_at(meta, 4)? == VERSION
        && u64_at(meta, META_CHECKED)? == fnv1a64(&meta[..META_CHECKED]);
    let page_size = u32_at(meta, 8)? as usize;
    let sane = page_size.is_power_of_two() && (512..=65_536).contains(&page_size);
    if !(valid && sane) {
        return None;
    }
    Some((page_size, u64_at(meta, 16)?, u64_at(meta, 40)?, u64_at(meta, 48)?))
}

impl<'a> Db<'a> {
    /// Opens `file`: the valid meta page with the higher transaction id (bbolt writes
    /// them in turn, so a torn write leaves the other).
    pub(crate) fn open(file: &'a [u8]) -> Result<Self, String> {
        let first = meta(file, 0);
        let second = first.and_then(|(page_size, ..)| meta(file, page_size)).or_else(|| {
            // The first meta page is damaged: the second sits one page on, at a size
            // bbolt could have used.
            [4096, 16_384, 65_536, 8192, 2048, 1024, 512]
                .into_iter()
                .find_map(|size| meta(file, size).filter(|(page_size, ..)| *page_size == size))
        });
        let newest = match (first, second) {
            (Some(a), Some(b)) => Some(if b.3 > a.3 { b } else { a }),
            (a, b) => a.or(b),
        };
        let Some((page_size, root, high_water, _)) = newest else {
            return Err(
                "not a bbolt database (etcd's backend): neither meta page is valid (magic, version, checksum)"
                    .into(),
            );
        };
        if (file.len() as u64) < high_water.saturating_mul(page_size as u64) {
            return Err(format!(
                "the file is {} bytes, short of the {high_water} pages of {page_size} bytes its meta page counts",
                file.len()
            ));
        }
        Ok(Self { file, page_size, high_water, root })
    }

    /// The pairs of top-level bucket `name`, in key order (`None`: no such bucket).
    pub(crate) fn bucket(&self, name: &[u8]) -> Result<Option<Vec<Pair<'a>>>, String> {
        let mut visited = HashSet::new();
        let mut buckets = Vec::new();
        self.collect(self.page(self.root)?, 0, &mut visited, &mut buckets, "the root bucket")?;
        in_order(&buckets, "the root bucket")?;
        let Some((_, flags, header)) = buckets.into_iter().find(|(key, ..)| *key == name) else {
            return Ok(None);
        };
        let label = format!("bucket {:?}", String::from_utf8_lossy(name));
        if flags & BUCKET_LEAF == 0 {
            return Err(format!("{label} is a plain value in the root bucket, not a bucket"));
        }
        let root = u64_at(header, 0).ok_or_else(|| format!("{label}: header too short"))?;
        let page = if root == 0 {
            // A small bucket is stored inline: its one leaf page follows the header.
            self.header_of(0, &header[16.min(header.len())..], &label)?
        } else {
            self.page(root)?
        };
        let mut pairs = Vec::new();
        self.collect(page, 0, &mut visited, &mut pairs, &label)?;
        in_order(&pairs, &label)?;
        if let Some((key, ..)) = pairs.iter().find(|(_, flags, _)| flags & BUCKET_LEAF != 0) {
            return Err(format!(
                "{label} holds a nested bucket {:?}, which etcd's backend never has",
                String::from_utf8_lossy(key)
            ));
        }
        Ok(Some(pairs.into_iter().map(|(key, _, value)| (key, value)).collect()))
    }

    /// Page `id` with its overflow pages.
    fn page(&self, id: u64) -> Result<Page<'a>, String> {
        let pages = (self.file.len() / self.page_size) as u64;
        if id < 2 || id >= self.high_water || id >= pages {
            return Err(format!(
                "page {id} is named, but the file's tree pages are 2 to {}",
                self.high_water.min(pages).saturating_sub(1)
            ));
        }
        let start = id as usize * self.page_size;
        let header = &self.file[start..start + PAGE_HEADER];
        let overflow = u64::from(u32_at(header, 12).unwrap_or(0));
        if id + overflow >= pages.min(self.high_water) {
            return Err(format!("page {id} runs {overflow} pages past itself, beyond the file"));
        }
        let end = start + (1 + overflow as usize) * self.page_size;
        self.header_of(id, &self.file[start..end], &format!("page {id}"))
    }

    fn header_of(&self, id: u64, bytes: &'a [u8], label: &str) -> Result<Page<'a>, String> {
        let (Some(flags), Some(count)) = (u16_at(bytes, 8), u16_at(bytes, 10)) else {
            return Err(format!("{label}: shorter than a page header"));
        };
        Ok(Page { id, flags, count: usize::from(count), bytes })
    }

    /// Appends the leaf elements under `page` (key, flags, value), in order.
    fn collect(
        &self,
        page: Page<'a>,
        depth: usize,
        visited: &mut HashSet<u64>,
        out: &mut Vec<(&'a [u8], u32, &'a [u8])>,
        label: &str,
    ) -> Result<(), String> {
        if depth > DEPTH_MAX {
            return Err(format!("{label}: the tree is deeper than {DEPTH_MAX} levels"));
        }
        if page.id != 0 && !visited.insert(page.id) {
            return Err(format!("{label}: page {} is reached twice", page.id));
        }
        let what = || format!("{label}: page {}", page.id);
        for index in 0..page.count {
            let at = PAGE_HEADER + index * ELEMENT;
            let element = page
                .bytes
                .get(at..at + ELEMENT)
                .ok_or_else(|| format!("{}: element {index} lies past the page", what()))?;
            match page.flags {
                LEAF_PAGE => {
                    let flags = u32_at(element, 0).unwrap_or(0);
                    let position = u32_at(element, 4).unwrap_or(0) as usize;
                    let key_len = u32_at(element, 8).unwrap_or(0) as usize;
                    let value_len = u32_at(element, 12).unwrap_or(0) as usize;
                    let key_at = at + position;
                    let key = page.bytes.get(key_at..key_at + key_len);
                    let value = page.bytes.get(key_at + key_len..key_at + key_len + value_len);
                    let (Some(key), Some(value)) = (key, value) else {
                        return Err(format!("{}: element {index} lies past the page", what()));
                    };
                    out.push((key, flags, value));
                }
                BRANCH_PAGE => {
                    let child = u64_at(element, 8).unwrap_or(0);
                    self.collect(self.page(child)?, depth + 1, visited, out, label)?;
                }
                flags => {
                    return Err(format!(
                        "{}: flags {flags:#x}, neither a branch nor a leaf",
                        what()
                    ))
                }
            }
        }
        Ok(())
    }
}

/// A tree's keys come in strictly increasing order, or the tree is damaged.
fn in_order(pairs: &[(&[u8], u32, &[u8])], label: &str) -> Result<(), String> {
    match pairs.windows(2).find(|pair| pair[0].0 >= pair[1].0) {
        Some(pair) => Err(format!(
            "{label}: key {:?} comes after {:?}, out of order",
            String::from_utf8_lossy(pair[1].0),
            String::from_utf8_lossy(pair[0].0)
        )),
        None => Ok(()),
    }
}
