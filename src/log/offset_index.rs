//! The sparse offset index (`.index`): offset → file position, like Kafka's `OffsetIndex`.
//!
//! Entry = relative offset (i32) + position (i32), big-endian, 8 bytes, the
//! same layout Kafka writes. An entry is added after every
//! `index.interval.bytes` of batches and names the *last* offset of the batch
//! at that position (Kafka ≥ 3.7), so "largest entry ≤ target" always points
//! at or before the batch that contains the target.

use std::io;
use std::path::Path;

use crate::log::index_file::IndexFile;

/// Bytes per offset index entry.
pub(crate) const OFFSET_INDEX_ENTRY_BYTES: usize = 8;

/// One index entry, in absolute terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct OffsetPosition {
    /// Last offset of the batch at `position`.
    pub offset: i64,
    /// Byte position of that batch in the segment file.
    pub position: u64,
}

/// Result of a lookup: where to start scanning and, if known, where to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct OffsetLookup {
    /// Position of a batch at or before the one holding the target (0 if no entry).
    pub start_position: u64,
    /// Position of the first indexed batch past the target: the holder
    /// starts no later than this. `None` = scan to the end of the segment.
    pub end_position: Option<u64>,
}

#[derive(Debug)]
pub(crate) struct OffsetIndex {
    base_offset: i64,
    file: IndexFile<OFFSET_INDEX_ENTRY_BYTES>,
}

impl OffsetIndex {
    pub(crate) fn open(path: &Path, base_offset: i64, index_bytes_max: u64) -> io::Result<Self> {
        Ok(Self {
            base_offset,
            file: IndexFile::open(path, index_bytes_max / OFFSET_INDEX_ENTRY_BYTES as u64)?,
        })
    }

    /// Creates the index empty (or empties an existing file).
    pub(crate) fn create(path: &Path, base_offset: i64, index_bytes_max: u64) -> io::Result<Self> {
        Ok(Self {
            base_offset,
            file: IndexFile::create(path, index_bytes_max / OFFSET_INDEX_ENTRY_BYTES as u64)?,
        })
    }

    fn decode(&self, entry: &[u8; OFFSET_INDEX_ENTRY_BYTES]) -> OffsetPosition {
        let relative = i32::from_be_bytes([entry[0], entry[1], entry[2], entry[3]]);
        let position = u32::from_be_bytes([entry[4], entry[5], entry[6], entry[7]]);
        OffsetPosition {
            offset: self.base_offset + relative as i64,
            position: position as u64,
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
            .set_entries_max(index_bytes_max / OFFSET_INDEX_ENTRY_BYTES as u64);
    }

    pub(crate) fn last_entry(&self) -> Option<OffsetPosition> {
        self.file.last_entry().map(|entry| self.decode(&entry))
    }

    pub(crate) fn entry(&self, i: u64) -> io::Result<OffsetPosition> {
        Ok(self.decode(&self.file.read_entry(i)?))
    }

    /// Appends (offset, position). The segment guarantees both grow and that
    /// the relative offset and position fit in 32 bits (it rolls otherwise).
    pub(crate) fn append(&mut self, offset: i64, position: u64) -> io::Result<()> {
        let relative = offset - self.base_offset;
        debug_assert!((0..=i32::MAX as i64).contains(&relative));
        debug_assert!(position <= u32::MAX as u64);
        if let Some(last) = self.last_entry() {
            debug_assert!(offset > last.offset && position > last.position);
        }
        let mut entry = [0u8; OFFSET_INDEX_ENTRY_BYTES];
        entry[..4].copy_from_slice(&(relative as i32).to_be_bytes());
        entry[4..].copy_from_slice(&(position as u32).to_be_bytes());
        self.file.append(entry)
    }

    /// Where to scan for the batch holding `target`.
    pub(crate) fn lookup(&self, target: i64) -> io::Result<OffsetLookup> {
        let relative = target.saturating_sub(self.base_offset);
        let key = |entry: &[u8; OFFSET_INDEX_ENTRY_BYTES]| {
            i32::from_be_bytes([entry[0], entry[1], entry[2], entry[3]]) as i64
        };
        let floor = self.file.search_last_at_or_below(relative, key)?;
        let start_position = match floor {
            Some(i) => self.entry(i)?.position,
            None => 0,
        };
        let next = floor.map_or(0, |i| i + 1);
        let end_position = if next < self.entries() {
            Some(self.entry(next)?.position)
        } else {
            None
        };
        Ok(OffsetLookup {
            start_position,
            end_position,
        })
    }

    /// Drops entries for positions at or past `position` (segment truncation).
    pub(crate) fn truncate_to_position(&mut self, position: u64) -> io::Result<()> {
        let key = |entry: &[u8; OFFSET_INDEX_ENTRY_BYTES]| {
            u32::from_be_bytes([entry[4], entry[5], entry[6], entry[7]]) as i64
        };
        let keep = match self
            .file
            .search_last_at_or_below(position as i64 - 1, key)?
        {
            Some(i) => i + 1,
            None => 0,
        };
        self.file.truncate_entries(keep)
    }

    pub(crate) fn reset(&mut self) -> io::Result<()> {
        self.file.truncate_entries(0)
    }

    /// Kafka's `sanityCheck` plus bounds: entries must lie inside the segment
    /// (`log_bytes`) and there can be no more entries than batches could fit.
    pub(crate) fn sanity_check(&self, log_bytes: u64, batch_bytes_min: u64) -> Result<(), String> {
        if self.entries() > log_bytes / batch_bytes_min.max(1) + 1 {
            return Err(format!(
                "{} entries cannot index a {log_bytes}-byte segment",
                self.entries()
            ));
        }
        if let Some(last) = self.last_entry() {
            let first = self.entry(0).map_err(|e| e.to_string())?;
            if first.offset < self.base_offset
                || last.offset < first.offset
                || last.position < first.position
                || last.position >= log_bytes.max(1)
            {
                return Err(format!(
                    "entries out of range: first {first:?}, last {last:?}, segment {log_bytes} bytes"
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
        fn lookup_brackets_the_batch_holding_any_offset(
            batch_records in proptest::collection::vec(1i64..20, 1..80),
            every in 1usize..5,
            probe in any::<prop::sample::Index>(),
        ) {
            // Batches of `batch_records[i]` records, 100 bytes each; index every `every` batches.
            let dir = tempfile::tempdir().unwrap();
            let base = 1000;
            let mut index = OffsetIndex::open(&dir.path().join("0.index"), base, 1 << 20).unwrap();
            let mut batches = Vec::new(); // (base, last, position)
            let mut next = base;
            for (i, records) in batch_records.iter().enumerate() {
                let position = i as u64 * 100;
                batches.push((next, next + records - 1, position));
                if i > 0 && i % every == 0 {
                    index.append(next + records - 1, position).unwrap();
                }
                next += records;
            }
            let target = base + probe.index((next - base) as usize) as i64;
            let holder = batches.iter().find(|b| b.0 <= target && target <= b.1).unwrap();
            let lookup = index.lookup(target).unwrap();
            prop_assert!(lookup.start_position <= holder.2);
            if let Some(end) = lookup.end_position {
                prop_assert!(holder.2 <= end);
            }
        }
    }

    #[test]
    fn truncate_to_position_drops_entries_at_or_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut index = OffsetIndex::open(&dir.path().join("0.index"), 0, 1 << 20).unwrap();
        for i in 1..=5u64 {
            index.append(i as i64 * 10, i * 100).unwrap();
        }
        index.truncate_to_position(300).unwrap();
        assert_eq!(index.entries(), 2);
        assert_eq!(index.last_entry().unwrap().position, 200);
        index.truncate_to_position(0).unwrap();
        assert_eq!(index.entries(), 0);
    }
}
