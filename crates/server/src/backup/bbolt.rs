//! A writer of bbolt database files, the format of etcd's backend: a snapshot written in
//! it is what `etcdctl snapshot status` checks and `etcdctl snapshot restore` turns into
//! an etcd member.
//!
//! bbolt keeps each bucket as a B+tree of 4 KiB pages. The file is written front to
//! back, so a snapshot of any size costs a page of memory per tree level: each bucket's
//! pairs, in key order, fill leaf pages; branch pages are built level by level above
//! them; the root bucket (a tree whose values name the buckets' root pages) comes last,
//! and the two meta pages at the front, which point at it, are written once its page is
//! known. Pages are filled whole; bbolt splits them when it next writes to them.

use std::io::{self, Seek, SeekFrom, Write};

/// bbolt's page size on x86-64 Linux (the OS page size), which etcd keeps.
pub(crate) const PAGE_SIZE: usize = 4096;
pub(crate) const MAGIC: u32 = 0xED0C_DAED;
pub(crate) const VERSION: u32 = 2;
pub(crate) const PAGE_HEADER: usize = 16;
/// A leaf element (flags, position, key size, value size) and a branch element
/// (position, key size, child page) are both 16 bytes.
pub(crate) const ELEMENT: usize = 16;
pub(crate) const BRANCH_PAGE: u16 = 0x01;
pub(crate) const LEAF_PAGE: u16 = 0x02;
pub(crate) const META_PAGE: u16 = 0x04;
const FREELIST_PAGE: u16 = 0x10;
/// A leaf element whose value is a bucket header, not data.
pub(crate) const BUCKET_LEAF: u32 = 0x01;
/// bbolt refuses longer keys and values.
const KEY_SIZE_MAX: usize = 32_768;
const VALUE_SIZE_MAX: usize = (1 << 31) - 2;
/// Pages 0 and 1 are the meta pages, 2 the freelist (empty: every page is in use).
const FREELIST_PAGE_ID: u64 = 2;
const FIRST_TREE_PAGE: u64 = 3;

/// One page being filled.
struct Page {
    flags: u16,
    elements: Vec<Element>,
    data: Vec<u8>,
}

struct Element {
    /// Where the key starts in `data`; the value follows it.
    offset: usize,
    key_len: usize,
    value_len: usize,
    /// A leaf element's flags.
    flags: u32,
    /// A branch element's child page.
    child: u64,
}

impl Page {
    fn new(flags: u16) -> Self {
        Self { flags, elements: Vec::new(), data: Vec::new() }
    }

    fn size(&self) -> usize {
        PAGE_HEADER + self.elements.len() * ELEMENT + self.data.len()
    }

    /// Whether an element of this size still fits (an empty page takes any element and
    /// overflows into the pages after it).
    fn fits(&self, key_len: usize, value_len: usize) -> bool {
        self.elements.is_empty()
            || (self.size() + ELEMENT + key_len + value_len <= PAGE_SIZE
                && self.elements.len() < usize::from(u16::MAX))
    }

    fn push(&mut self, flags: u32, key: &[u8], value: &[u8], child: u64) {
        self.elements.push(Element {
            offset: self.data.len(),
            key_len: key.len(),
            value_len: value.len(),
            flags,
            child,
        });
        self.data.extend_from_slice(key);
        self.data.extend_from_slice(value);
    }

    fn first_key(&self) -> Vec<u8> {
        self.elements.first().map_or_else(Vec::new, |first| {
            self.data[first.offset..first.offset + first.key_len].to_vec()
        })
    }

    /// The page as bbolt lays it out at page `id`: header, elements (each pointing at
    /// its key by an offset from itself), keys and values, zeros to the page's end.
    fn encode(&self, id: u64) -> io::Result<Vec<u8>> {
        let pages = self.size().div_ceil(PAGE_SIZE);
        let overflow =
            u32::try_from(pages - 1).map_err(|_| invalid("page overflows 2^32 pages"))?;
        let count = u16::try_from(self.elements.len()).map_err(|_| invalid("page count"))?;
        let mut out = Vec::with_capacity(pages * PAGE_SIZE);
        out.extend_from_slice(&id.to_le_bytes());
        out.extend_from_slice(&self.flags.to_le_bytes());
        out.extend_from_slice(&count.to_le_bytes());
        out.extend_from_slice(&overflow.to_le_bytes());
        let elements_len = self.elements.len() * ELEMENT;
        for (index, element) in self.elements.iter().enumerate() {
            let position = u32::try_from(elements_len - index * ELEMENT + element.offset)
                .map_err(|_| invalid("element position"))?;
            let key_len = element.key_len as u32;
            if self.flags == LEAF_PAGE {
                out.extend_from_slice(&element.flags.to_le_bytes());
                out.extend_from_slice(&position.to_le_bytes());
                out.extend_from_slice(&key_len.to_le_bytes());
                out.extend_from_slice(&(element.value_len as u32).to_le_bytes());
            } else {
                out.extend_from_slice(&position.to_le_bytes());
                out.extend_from_slice(&key_len.to_le_bytes());
                out.extend_from_slice(&element.child.to_le_bytes());
            }
        }
        out.extend_from_slice(&self.data);
        out.resize(pages * PAGE_SIZE, 0);
        Ok(out)
    }
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, format!("bbolt: {what}"))
}

/// Writes a bbolt file: [`DbWriter::bucket`] per bucket, then [`DbWriter::finish`].
pub(crate) struct DbWriter<W> {
    out: W,
    /// The next page to write (the file is written in page order, metas aside).
    next_page: u64,
    /// Each bucket written and its root page.
    buckets: Vec<(Vec<u8>, u64)>,
}

impl<W: Write + Seek> DbWriter<W> {
    pub(crate) fn new(mut out: W) -> io::Result<Self> {
        out.seek(SeekFrom::Start(FIRST_TREE_PAGE * PAGE_SIZE as u64))?;
        Ok(Self { out, next_page: FIRST_TREE_PAGE, buckets: Vec::new() })
    }

    /// Writes a top-level bucket holding `pairs`, which come in strictly increasing key
    /// order (bbolt's byte order).
    pub(crate) fn bucket<K, V>(
        &mut self,
        name: &[u8],
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> io::Result<()>
    where
        K: AsRef<[u8]>,
        V: AsRef<[u8]>,
    {
        if name.is_empty() || self.buckets.iter().any(|(written, _)| written == name) {
            return Err(invalid("bucket name empty or written twice"));
        }
        let root = self.tree(pairs.into_iter().map(|(key, value)| (0, key, value)))?;
        self.buckets.push((name.to_vec(), root));
        Ok(())
    }

    /// Writes the root bucket and the meta pages; the writer and the file's size.
    pub(crate) fn finish(mut self) -> io::Result<(W, u64)> {
        let mut buckets = std::mem::take(&mut self.buckets);
        buckets.sort();
        let root = self.tree(buckets.iter().map(|(name, root)| {
            // A bucket header: its root page and its sequence (unused by etcd).
            let mut header = [0u8; 16];
            header[..8].copy_from_slice(&root.to_le_bytes());
            (BUCKET_LEAF, name, header)
        }))?;
        let mut front = Vec::with_capacity(3 * PAGE_SIZE);
        for txid in 0..2u64 {
            front.extend_from_slice(&self.meta_page(txid, root));
        }
        let freelist = Page::new(FREELIST_PAGE).encode(FREELIST_PAGE_ID)?;
        front.extend_from_slice(&freelist);
        self.out.seek(SeekFrom::Start(0))?;
        self.out.write_all(&front)?;
        let size = self.next_page * PAGE_SIZE as u64;
        self.out.seek(SeekFrom::Start(size))?;
        self.out.flush()?;
        Ok((self.out, size))
    }

    /// Meta page `txid` (0 or 1; bbolt reads the valid one with the higher txid).
    fn meta_page(&self, txid: u64, root: u64) -> Vec<u8> {
        let mut meta = Vec::with_capacity(64);
        meta.extend_from_slice(&MAGIC.to_le_bytes());
        meta.extend_from_slice(&VERSION.to_le_bytes());
        meta.extend_from_slice(&(PAGE_SIZE as u32).to_le_bytes());
        meta.extend_from_slice(&0u32.to_le_bytes());
        meta.extend_from_slice(&root.to_le_bytes());
        meta.extend_from_slice(&0u64.to_le_bytes());
        meta.extend_from_slice(&FREELIST_PAGE_ID.to_le_bytes());
        meta.extend_from_slice(&self.next_page.to_le_bytes());
        meta.extend_from_slice(&txid.to_le_bytes());
        let checksum = fnv1a64(&meta);
        meta.extend_from_slice(&checksum.to_le_bytes());
        let mut page = vec![0u8; PAGE_SIZE];
        page[..8].copy_from_slice(&txid.to_le_bytes());
        page[8..10].copy_from_slice(&META_PAGE.to_le_bytes());
        page[PAGE_HEADER..PAGE_HEADER + meta.len()].copy_from_slice(&meta);
        page
    }

    /// Writes one B+tree of `elements` (flags, key, value); its root page.
    fn tree<K, V>(&mut self, elements: impl Iterator<Item = (u32, K, V)>) -> io::Result<u64>
    where
        K: AsRef<[u8]>,
        V: AsRef<[u8]>,
    {
        let mut level = Vec::new();
        let mut page = Page::new(LEAF_PAGE);
        let mut previous: Option<Vec<u8>> = None;
        for (flags, key, value) in elements {
            let (key, value) = (key.as_ref(), value.as_ref());
            if key.is_empty() || key.len() > KEY_SIZE_MAX || value.len() > VALUE_SIZE_MAX {
                return Err(invalid("key empty or longer than 32 KiB, or value over 2 GiB"));
            }
            if previous.as_deref().is_some_and(|previous| previous >= key) {
                return Err(invalid("keys out of order"));
            }
            if !page.fits(key.len(), value.len()) {
                level.push(self.write_page(&mut page)?);
            }
            page.push(flags, key, value, 0);
            previous = Some(key.to_vec());
        }
        if !page.elements.is_empty() || level.is_empty() {
            level.push(self.write_page(&mut page)?);
        }
        // Each branch element names a child by the child's first key.
        while level.len() > 1 {
            let mut parents = Vec::new();
            let mut page = Page::new(BRANCH_PAGE);
            for (key, child) in level {
                if !page.fits(key.len(), 0) {
                    parents.push(self.write_page(&mut page)?);
                }
                page.push(0, &key, &[], child);
            }
            parents.push(self.write_page(&mut page)?);
            level = parents;
        }
        Ok(level[0].1)
    }

    /// Writes `page` at the next page id and empties it; its first key and id.
    fn write_page(&mut self, page: &mut Page) -> io::Result<(Vec<u8>, u64)> {
        let id = self.next_page;
        let bytes = page.encode(id)?;
        self.out.write_all(&bytes)?;
        self.next_page += (bytes.len() / PAGE_SIZE) as u64;
        let first = page.first_key();
        page.elements.clear();
        page.data.clear();
        Ok((first, id))
    }
}

/// FNV-1a, 64 bits: bbolt's meta page checksum.
pub(crate) fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::io::Cursor;

    type Buckets = BTreeMap<Vec<u8>, Vec<(Vec<u8>, Vec<u8>)>>;

    fn u16_at(file: &[u8], at: usize) -> u16 {
        u16::from_le_bytes(file[at..at + 2].try_into().unwrap())
    }
    fn u32_at(file: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(file[at..at + 4].try_into().unwrap())
    }
    fn u64_at(file: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(file[at..at + 8].try_into().unwrap())
    }

    /// Reads a file back as bbolt does, and checks what `bbolt check` checks: every
    /// page below the high-water mark used exactly once, keys in order.
    struct Reader<'a> {
        file: &'a [u8],
        seen: Vec<u32>,
    }

    impl Reader<'_> {
        fn walk(&mut self, id: u64, out: &mut Vec<(u32, Vec<u8>, Vec<u8>)>) {
            let at = id as usize * PAGE_SIZE;
            assert_eq!(u64_at(self.file, at), id, "page {id} names itself");
            let flags = u16_at(self.file, at + 8);
            let count = usize::from(u16_at(self.file, at + 10));
            let overflow = u32_at(self.file, at + 12) as u64;
            for page in id..=id + overflow {
                self.seen[page as usize] += 1;
            }
            for index in 0..count {
                let element = at + PAGE_HEADER + index * ELEMENT;
                if flags == LEAF_PAGE {
                    let position = element + u32_at(self.file, element + 4) as usize;
                    let key_len = u32_at(self.file, element + 8) as usize;
                    let value_len = u32_at(self.file, element + 12) as usize;
                    out.push((
                        u32_at(self.file, element),
                        self.file[position..position + key_len].to_vec(),
                        self.file[position + key_len..position + key_len + value_len].to_vec(),
                    ));
                } else {
                    assert_eq!(flags, BRANCH_PAGE);
                    let position = element + u32_at(self.file, element) as usize;
                    let key_len = u32_at(self.file, element + 4) as usize;
                    let key = self.file[position..position + key_len].to_vec();
                    let before = out.len();
                    self.walk(u64_at(self.file, element + 8), out);
                    assert_eq!(out[before].1, key, "a branch key is its child's first key");
                }
            }
        }

        fn read(file: &[u8]) -> Buckets {
            assert_eq!(file.len() % PAGE_SIZE, 0);
            let meta = PAGE_SIZE + PAGE_HEADER;
            assert_eq!(u32_at(file, meta), MAGIC);
            assert_eq!(u64_at(file, meta + 56), fnv1a64(&file[meta..meta + 56]));
            let high_water = u64_at(file, meta + 40);
            assert_eq!(high_water as usize * PAGE_SIZE, file.len());
            assert_eq!(u16_at(file, 2 * PAGE_SIZE + 8), FREELIST_PAGE);
            let mut reader = Reader { file, seen: vec![0; high_water as usize] };
            reader.seen[..3].fill(1);
            let mut root = Vec::new();
            reader.walk(u64_at(file, meta + 16), &mut root);
            let mut buckets = Buckets::new();
            for (flags, name, header) in root {
                assert_eq!(flags, BUCKET_LEAF);
                let mut pairs = Vec::new();
                reader.walk(u64_at(&header, 0), &mut pairs);
                assert!(pairs.windows(2).all(|w| w[0].1 < w[1].1), "keys in order");
                buckets.insert(name, pairs.into_iter().map(|(_, k, v)| (k, v)).collect());
            }
            assert!(
                reader.seen.iter().all(|&uses| uses == 1),
                "pages used once: {:?}",
                reader.seen
            );
            buckets
        }
    }

    fn write(buckets: &Buckets) -> Vec<u8> {
        let mut writer = DbWriter::new(Cursor::new(Vec::new())).unwrap();
        // Written out of name order: the root bucket sorts them.
        for (name, pairs) in buckets.iter().rev() {
            writer.bucket(name, pairs.iter().map(|(k, v)| (k, v))).unwrap();
        }
        let (out, size) = writer.finish().unwrap();
        let file = out.into_inner();
        assert_eq!(size as usize, file.len());
        file
    }

    fn pairs(count: usize, value_len: impl Fn(usize) -> usize) -> Vec<(Vec<u8>, Vec<u8>)> {
        (0..count)
            .map(|i| (format!("key-{i:08}").into_bytes(), vec![(i % 251) as u8; value_len(i)]))
            .collect()
    }

    #[test]
    fn an_empty_file_and_empty_buckets_read_back() {
        assert!(Reader::read(&write(&Buckets::new())).is_empty());
        let buckets = Buckets::from([(b"key".to_vec(), vec![]), (b"meta".to_vec(), vec![])]);
        assert_eq!(Reader::read(&write(&buckets)), buckets);
    }

    #[test]
    fn three_levels_of_branches_read_back() {
        // ~3,000 leaves of ~100 keys, ~25 branch pages above them and a root above those.
        let buckets = Buckets::from([
            (b"key".to_vec(), pairs(300_000, |_| 8)),
            (b"lease".to_vec(), pairs(3, |_| 20)),
        ]);
        let file = write(&buckets);
        assert_eq!(Reader::read(&file), buckets);
    }

    #[test]
    fn values_larger_than_a_page_overflow_into_the_pages_after() {
        let buckets =
            Buckets::from([(b"key".to_vec(), pairs(50, |i| [10, 5000, 70_000, 4070][i % 4]))]);
        assert_eq!(Reader::read(&write(&buckets)), buckets);
    }

    #[test]
    fn keys_out_of_order_and_oversized_keys_are_refused() {
        let mut writer = DbWriter::new(Cursor::new(Vec::new())).unwrap();
        let error = writer.bucket(b"key", [(b"b", b"1"), (b"a", b"2")]).unwrap_err();
        assert!(error.to_string().contains("out of order"), "{error}");
        let long = vec![b'k'; KEY_SIZE_MAX + 1];
        assert!(writer.bucket(b"other", [(long, b"1")]).is_err());
        assert!(writer.bucket(b"", [(b"a", b"1")]).is_err());
    }
}
