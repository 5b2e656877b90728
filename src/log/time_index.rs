//! The sparse time index (`.timeindex`): timestamp → offset, like Kafka's `TimeIndex`.
//!
//! Entry = timestamp (i64) + relative offset (i32), big-endian, 12 bytes, as
//! in Kafka. An entry (T, O) means "every record up to offset O has a
//! timestamp ≤ T"; entries are only added when the segment's max timestamp
//! grows, so timestamps are strictly increasing and a binary search works even
//! though record timestamps are not ordered.

use std::io;
use std::path::Path;

use crate::log::index_file::IndexFile;

/// Bytes per time index entry.
pub(crate) const TIME_INDEX_ENTRY_BYTES: usize = 12;

/// A (timestamp, offset) pair: an index entry, or a segment's max timestamp and where it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TimestampOffset {
    pub timestamp: i64,
    pub offset: i64,
}

#[derive(Debug)]
pub(crate) struct TimeIndex {
    base_offset: i64,
    file: IndexFile<TIME_INDEX_ENTRY_BYTES>,
}

impl TimeIndex {
    pub(crate) fn open(path: &Path, base_offset: i64, index_bytes_max: u64) -> io::Result<Self> {
        Ok(Self {
            base_offset,
            file: IndexFile::open(path, index_bytes_max / TIME_INDEX_ENTRY_BYTES as u64)?,
        })
    }

    /// Creates the index empty (or empties an existing file).
    pub(crate) fn create(path: &Path, base_offset: i64, index_bytes_max: u64) -> io::Result<Self> {
        Ok(Self {
            base_offset,
            file: IndexFile::create(path, index_bytes_max / TIME_INDEX_ENTRY_BYTES as u64)?,
        })
    }

    fn decode(&self, entry: &[u8; TIME_INDEX_ENTRY_BYTES]) -> TimestampOffset {
        let mut timestamp = [0u8; 8];
        timestamp.copy_from_slice(&entry[..8]);
        let relative = i32::from_be_bytes([entry[8], entry[9], entry[10], entry[11]]);
        TimestampOffset {
            timestamp: i64::from_be_bytes(timestamp),
            offset: self.base_offset + relative as i64,
        }
    }

    pub(crate) fn path(&self) -> &Path {
        self.file.path()
    }

    pub(crate) fn entries(&self) -> u64 {
        self.file.entries()
    }

    pub(crate) fn is_full(&self) -> bool {
        self.file.is_full()
    }

    pub(crate) fn set_index_bytes_max(&mut self, index_bytes_max: u64) {
        self.file
            .set_entries_max(index_bytes_max / TIME_INDEX_ENTRY_BYTES as u64);
    }

    pub(crate) fn last_entry(&self) -> Option<TimestampOffset> {
        self.file.last_entry().map(|entry| self.decode(&entry))
    }

    fn entry(&self, i: u64) -> io::Result<TimestampOffset> {
        Ok(self.decode(&self.file.read_entry(i)?))
    }

    /// Kafka's `maybeAppend`: adds (timestamp, offset) only if the timestamp
    /// is larger than the last entry's.
    pub(crate) fn maybe_append(&mut self, timestamp: i64, offset: i64) -> io::Result<()> {
        if let Some(last) = self.last_entry() {
            if timestamp <= last.timestamp {
                return Ok(());
            }
            debug_assert!(offset >= last.offset);
        }
        let relative = offset - self.base_offset;
        debug_assert!((0..=i32::MAX as i64).contains(&relative));
        let mut entry = [0u8; TIME_INDEX_ENTRY_BYTES];
        entry[..8].copy_from_slice(&timestamp.to_be_bytes());
        entry[8..].copy_from_slice(&(relative as i32).to_be_bytes());
        self.file.append(entry)
    }

    /// The last entry whose timestamp is strictly below `target`: every record
    /// up to its offset is older than `target`, so a search may skip them.
    pub(crate) fn last_entry_below(&self, target: i64) -> io::Result<Option<TimestampOffset>> {
        let key = |entry: &[u8; TIME_INDEX_ENTRY_BYTES]| {
            let mut timestamp = [0u8; 8];
            timestamp.copy_from_slice(&entry[..8]);
            i64::from_be_bytes(timestamp)
        };
        match self
            .file
            .search_last_at_or_below(target.saturating_sub(1), key)?
        {
            Some(i) => Ok(Some(self.entry(i)?)),
            None => Ok(None),
        }
    }

    /// Drops entries whose offset is `offset` or more (segment truncation).
    pub(crate) fn truncate_to_offset(&mut self, offset: i64) -> io::Result<()> {
        // Offsets grow with timestamps, so the cut is a suffix: walk back from the end.
        let mut keep = self.entries();
        while keep > 0 && self.entry(keep - 1)?.offset >= offset {
            keep -= 1;
        }
        self.file.truncate_entries(keep)
    }

    pub(crate) fn reset(&mut self) -> io::Result<()> {
        self.file.truncate_entries(0)
    }

    /// Bounds check like Kafka's `sanityCheck`: offsets inside the segment,
    /// no more entries than batches could fit in `log_bytes`.
    pub(crate) fn sanity_check(&self, log_bytes: u64, batch_bytes_min: u64) -> Result<(), String> {
        if self.entries() > log_bytes / batch_bytes_min.max(1) + 2 {
            return Err(format!(
                "{} entries cannot index a {log_bytes}-byte segment",
                self.entries()
            ));
        }
        if let Some(last) = self.last_entry() {
            let first = self.entry(0).map_err(|e| e.to_string())?;
            if first.offset < self.base_offset
                || last.offset < first.offset
                || last.timestamp < first.timestamp
            {
                return Err(format!(
                    "entries out of order: first {first:?}, last {last:?}"
                ));
            }
        }
        Ok(())
    }

    pub(crate) fn sync(&self) -> io::Result<()> {
        self.file.sync()
    }

    pub(crate) fn take_unflushed(&mut self, flush: &mut crate::log::flush::PendingFlush) {
        self.file.take_unflushed(flush);
    }

    /// See [`IndexFile::pin`].
    pub(crate) fn pin(&self) -> io::Result<std::sync::Arc<std::fs::File>> {
        self.file.pin()
    }

    /// See [`IndexFile::mark_clean_and_close`].
    pub(crate) fn mark_clean_and_close(&self) {
        self.file.mark_clean_and_close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn entry_below_target_never_hides_a_matching_record(
            timestamps in proptest::collection::vec(0i64..1000, 1..100),
            target in 0i64..1100,
        ) {
            // One record per offset, offsets 0..n; index after each record like an interval of 1.
            let dir = tempfile::tempdir().unwrap();
            let mut index = TimeIndex::open(&dir.path().join("0.timeindex"), 0, 1 << 20).unwrap();
            let mut max = -1;
            for (offset, ts) in timestamps.iter().enumerate() {
                max = max.max(*ts);
                index.maybe_append(max, offset as i64).unwrap();
            }
            let first_match = timestamps.iter().position(|ts| *ts >= target);
            if let Some(entry) = index.last_entry_below(target).unwrap() {
                prop_assert!(entry.timestamp < target);
                if let Some(first) = first_match {
                    prop_assert!(entry.offset < first as i64);
                }
            }
        }
    }

    #[test]
    fn maybe_append_skips_non_increasing_timestamps() {
        let dir = tempfile::tempdir().unwrap();
        let mut index = TimeIndex::open(&dir.path().join("0.timeindex"), 100, 1 << 20).unwrap();
        index.maybe_append(10, 100).unwrap();
        index.maybe_append(10, 105).unwrap();
        index.maybe_append(5, 106).unwrap();
        index.maybe_append(20, 110).unwrap();
        assert_eq!(index.entries(), 2);
        index.truncate_to_offset(110).unwrap();
        assert_eq!(
            index.last_entry(),
            Some(TimestampOffset {
                timestamp: 10,
                offset: 100
            })
        );
    }
}
