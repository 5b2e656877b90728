//! A file of fixed-size, sorted entries searched with positional reads.
//!
//! Both of Kafka's segment indexes (`.index`, `.timeindex`) are arrays of
//! fixed-size big-endian entries sorted by their first field. Kafka mmaps them;
//! we keep nothing but the entry count and the last entry in memory and binary
//! search with `pread`, so memory per segment is constant however large the
//! log grows, and the page cache does the caching. The file is never
//! preallocated: its length is always `entries × N`, so a crash leaves at most
//! one torn entry, which open() drops.
//!
//! Descriptors: the file is a [`CachedFile`], so an index that is not being
//! used holds no descriptor. Memory-mapping would free the descriptor too,
//! but an append-grown file would have to be remapped on every growth or
//! preallocated (Kafka preallocates and trims on close, so a crash leaves a
//! file of zeros to repair); positional reads through the page cache cost a
//! syscall per probe, which the tail fast path and the sparse entries keep
//! rare, and need no unsafe code.

use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::log::file_cache::{CachedFile, OpenMode};
use crate::log::flush::PendingFlush;

/// An index file of `N`-byte entries whose first field (the key) never decreases.
#[derive(Debug)]
pub(crate) struct IndexFile<const N: usize> {
    /// Opened on demand; its dirty flag says whether it changed since the
    /// last flush was taken (a clean index is not fsynced: on ext4 even a
    /// clean fsync costs a disk cache flush).
    file: CachedFile,
    entries: u64,
    entries_max: u64,
    last_entry: Option<[u8; N]>,
}

impl<const N: usize> IndexFile<N> {
    /// Opens or creates the file. A torn trailing partial entry is cut off.
    /// `entries_max` is where the index reports full (the segment then rolls).
    pub(crate) fn open(path: &Path, entries_max: u64) -> io::Result<Self> {
        Self::open_with(path, entries_max, OpenMode::Create)
    }

    /// Creates the file empty (or empties an existing one).
    pub(crate) fn create(path: &Path, entries_max: u64) -> io::Result<Self> {
        Self::open_with(path, entries_max, OpenMode::CreateTruncate)
    }

    fn open_with(path: &Path, entries_max: u64, mode: OpenMode) -> io::Result<Self> {
        let file = CachedFile::open(path, mode)?;
        let handle = file.get()?;
        let len_bytes = handle.metadata()?.len();
        let entries = len_bytes / N as u64;
        if len_bytes % N as u64 != 0 {
            handle.set_len(entries * N as u64)?;
        }
        drop(handle);
        let mut index = Self {
            file,
            entries,
            entries_max: entries_max.max(1),
            last_entry: None,
        };
        if entries > 0 {
            index.last_entry = Some(index.read_entry(entries - 1)?);
        }
        Ok(index)
    }

    pub(crate) fn path(&self) -> &Path {
        self.file.path()
    }

    /// Opens the descriptor (if closed) and returns it; holding it keeps it
    /// open, so a multi-file change cannot fail half-way for want of one.
    pub(crate) fn pin(&self) -> io::Result<std::sync::Arc<std::fs::File>> {
        self.file.get()
    }

    /// Declares the file durable as it is (a sealed, checked segment's
    /// index) and closes its descriptor if nobody uses it.
    pub(crate) fn mark_clean_and_close(&self) {
        self.file.take_dirty();
        self.file.close_if_idle();
    }

    pub(crate) fn entries(&self) -> u64 {
        self.entries
    }

    pub(crate) fn is_full(&self) -> bool {
        self.entries >= self.entries_max
    }

    pub(crate) fn set_entries_max(&mut self, entries_max: u64) {
        self.entries_max = entries_max.max(1);
    }

    pub(crate) fn last_entry(&self) -> Option<[u8; N]> {
        self.last_entry
    }

    /// Reads entry `i` (< entries) with one positional read.
    pub(crate) fn read_entry(&self, i: u64) -> io::Result<[u8; N]> {
        debug_assert!(i < self.entries);
        let mut entry = [0u8; N];
        self.file.get()?.read_exact_at(&mut entry, i * N as u64)?;
        Ok(entry)
    }

    /// Appends an entry. Callers keep keys non-decreasing.
    pub(crate) fn append(&mut self, entry: [u8; N]) -> io::Result<()> {
        let written = self
            .file
            .get()?
            .write_all_at(&entry, self.entries * N as u64);
        self.file.mark_dirty();
        written?;
        self.entries += 1;
        self.last_entry = Some(entry);
        Ok(())
    }

    /// Index of the last entry whose key is <= `target`, or `None` if every
    /// key is larger. At most ⌈log2(entries)⌉ + 1 reads.
    pub(crate) fn search_last_at_or_below(
        &self,
        target: i64,
        key_of: impl Fn(&[u8; N]) -> i64,
    ) -> io::Result<Option<u64>> {
        if self.entries == 0 {
            return Ok(None);
        }
        // Tail fast path: readers mostly chase the end of the log.
        if let Some(last) = &self.last_entry {
            if key_of(last) <= target {
                return Ok(Some(self.entries - 1));
            }
        }
        // Invariant: key(lo) <= target < key(hi), with lo = -1 / hi = entries as sentinels.
        let (mut lo, mut hi) = (-1i64, self.entries as i64 - 1);
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if key_of(&self.read_entry(mid as u64)?) <= target {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        Ok(if lo < 0 { None } else { Some(lo as u64) })
    }

    /// Keeps the first `entries` entries.
    pub(crate) fn truncate_entries(&mut self, entries: u64) -> io::Result<()> {
        if entries >= self.entries {
            return Ok(());
        }
        let cut = self.file.get()?.set_len(entries * N as u64);
        self.file.mark_dirty();
        cut?;
        self.entries = entries;
        self.last_entry = if entries > 0 {
            Some(self.read_entry(entries - 1)?)
        } else {
            None
        };
        Ok(())
    }

    pub(crate) fn sync(&self) -> io::Result<()> {
        self.file.take_dirty();
        let synced = self.file.get().and_then(|f| f.sync_data());
        if synced.is_err() {
            self.file.mark_dirty();
        }
        synced
    }

    /// Adds this file to `flush` if it changed since the last time.
    pub(crate) fn take_unflushed(&mut self, flush: &mut PendingFlush) {
        flush.capture(&self.file);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(entry: &[u8; 8]) -> i64 {
        i64::from_be_bytes(*entry)
    }

    #[test]
    fn torn_trailing_entry_is_dropped_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.index");
        let mut index = IndexFile::<8>::open(&path, 100).unwrap();
        index.append(5i64.to_be_bytes()).unwrap();
        index.append(9i64.to_be_bytes()).unwrap();
        drop(index);
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        file.write_all_at(&[1, 2, 3], 16).unwrap();
        let index = IndexFile::<8>::open(&path, 100).unwrap();
        assert_eq!(index.entries(), 2);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 16);
        assert_eq!(index.last_entry().map(|e| key(&e)), Some(9));
    }

    proptest! {
        #[test]
        fn search_finds_last_key_at_or_below(
            mut keys in proptest::collection::vec(0i64..1000, 0..60),
            target in -5i64..1100,
        ) {
            keys.sort();
            let dir = tempfile::tempdir().unwrap();
            let mut index = IndexFile::<8>::open(&dir.path().join("i"), 1000).unwrap();
            for k in &keys {
                index.append(k.to_be_bytes()).unwrap();
            }
            let found = index.search_last_at_or_below(target, key).unwrap();
            let expected = keys.iter().rposition(|k| *k <= target).map(|i| i as u64);
            prop_assert_eq!(found, expected);
        }
    }
}
