//! One segment: a `.log` file of raw batches plus its two sparse indexes,
//! like Kafka's `LogSegment`.
//!
//! Files are named by the segment's base offset in 20 digits, as in Kafka, so
//! `ls` sorts them and an operator recognises them. The `.log` holds batches
//! exactly as stored (producer bytes with broker-stamped offsets and epoch);
//! positions in it are 32-bit because segments are capped at 2 GiB - 1.
//! Reads use positional I/O (`read_at`) so any number of readers share the
//! file handle with the single writer's `&mut` appends serialised above.
//!
//! Descriptors: all three files are [`CachedFile`]s, opened through the
//! process-wide descriptor cache and closed by it when idle, so a segment
//! nobody reads costs no descriptor. An operation that changes more than one
//! file pins all three descriptors first ([`LogSegment::pin`]): running out
//! of descriptors can then only fail it before anything changed, and the
//! caller may retry instead of taking the log offline. A sealed segment
//! checked at load gives its descriptors back at once.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use tracing::{debug, warn};

use crate::log::batch::{BatchHeader, BatchSummary, RecordBatch, HEADER_BYTES, NO_TIMESTAMP};
use crate::log::config::LogConfig;
use crate::log::error::{IoContext, LogError};
use crate::log::file_cache::{CachedFile, OpenMode};
use crate::log::flush::{FlushScope, PendingFlush};
use crate::log::offset_index::OffsetIndex;
use crate::log::records::find_record;
use crate::log::scanner::{
    BatchScanner, ScanError, ScannedBatch, HEADER_SCAN_CHUNK_BYTES, RECOVERY_SCAN_CHUNK_BYTES,
};
use crate::log::time_index::{TimeIndex, TimestampOffset};

/// Suffix of segment data files.
pub(crate) const LOG_SUFFIX: &str = ".log";
/// Suffix of offset index files.
pub(crate) const INDEX_SUFFIX: &str = ".index";
/// Suffix of time index files.
pub(crate) const TIME_INDEX_SUFFIX: &str = ".timeindex";

/// `00000000000000000042` for base offset 42.
pub(crate) fn file_stem(base_offset: i64) -> String {
    format!("{base_offset:020}")
}

/// Parses a 20-digit Kafka file stem back into an offset.
pub(crate) fn parse_file_stem(stem: &str) -> Option<i64> {
    if stem.len() == 20 && stem.bytes().all(|b| b.is_ascii_digit()) {
        stem.parse().ok()
    } else {
        None
    }
}

/// How much a read may still take, and where it must stop.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ReadLimits {
    /// Bytes the response may still grow by.
    pub bytes_max: usize,
    /// Batches whose base offset is at or past this are not returned (the high watermark).
    pub offset_max_exclusive: i64,
    /// Return the next batch whole even if it is bigger than `bytes_max`.
    pub first_batch_whole: bool,
}

/// What a segment read appended to the output.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct SegmentRead {
    /// Batches appended.
    pub batches: usize,
    /// Offset after the last appended batch, if any.
    pub next_offset: Option<i64>,
    /// Whether the read reached the segment's end (the next segment may continue it).
    pub reached_end: bool,
}

/// Result of a failed segment append.
#[derive(Debug)]
pub(crate) struct SegmentWriteError {
    pub error: LogError,
    /// Whether the segment is exactly as before the append (partial bytes undone).
    pub consistent: bool,
}

#[derive(Debug)]
pub(crate) struct LogSegment {
    base_offset: i64,
    log_path: PathBuf,
    /// Opened on demand; a captured [`PendingFlush`] pins its descriptor (the
    /// fsync runs without the partition lock). Its dirty flag says whether
    /// it was written or truncated since the last flush was captured.
    log_file: CachedFile,
    size_bytes: u64,
    offset_index: OffsetIndex,
    time_index: TimeIndex,
    /// Offset after the last batch (the base offset while empty).
    next_offset: i64,
    /// Largest batch max timestamp so far and the last offset of its batch.
    max_timestamp: Option<TimestampOffset>,
    /// When the segment's age started counting: the wall clock of its first
    /// append, or the first batch's timestamp after a reopen.
    rolling_base_ms: Option<i64>,
    bytes_since_last_index_entry: u64,
    /// index.interval.bytes in force for this segment's next entries.
    index_interval_bytes: u64,
}

impl LogSegment {
    fn paths(dir: &Path, base_offset: i64) -> (PathBuf, PathBuf, PathBuf) {
        let stem = file_stem(base_offset);
        (
            dir.join(format!("{stem}{LOG_SUFFIX}")),
            dir.join(format!("{stem}{INDEX_SUFFIX}")),
            dir.join(format!("{stem}{TIME_INDEX_SUFFIX}")),
        )
    }

    fn open_files(
        dir: &Path,
        base_offset: i64,
        config: &LogConfig,
        truncate: bool,
    ) -> Result<Self, LogError> {
        let (log_path, index_path, time_index_path) = Self::paths(dir, base_offset);
        let mode = if truncate {
            OpenMode::CreateTruncate
        } else {
            OpenMode::Create
        };
        let log_file = CachedFile::open(&log_path, mode).at(&log_path)?;
        let size_bytes = log_file
            .get()
            .and_then(|f| f.metadata())
            .at(&log_path)?
            .len();
        let index_bytes_max = config.segment_index_bytes_effective();
        let (offset_index, time_index) = if truncate {
            (
                OffsetIndex::create(&index_path, base_offset, index_bytes_max).at(&index_path)?,
                TimeIndex::create(&time_index_path, base_offset, index_bytes_max)
                    .at(&time_index_path)?,
            )
        } else {
            (
                OffsetIndex::open(&index_path, base_offset, index_bytes_max).at(&index_path)?,
                TimeIndex::open(&time_index_path, base_offset, index_bytes_max)
                    .at(&time_index_path)?,
            )
        };
        Ok(Self {
            base_offset,
            log_path,
            log_file,
            size_bytes,
            offset_index,
            time_index,
            next_offset: base_offset,
            max_timestamp: None,
            rolling_base_ms: None,
            bytes_since_last_index_entry: 0,
            index_interval_bytes: config.index_interval_bytes as u64,
        })
    }

    /// Creates an empty segment (replacing any leftover files of that name).
    pub(crate) fn create(
        dir: &Path,
        base_offset: i64,
        config: &LogConfig,
    ) -> Result<Self, LogError> {
        Self::open_files(dir, base_offset, config, true)
    }

    /// Opens an existing segment for [`recover`](Self::recover) (the active
    /// segment, which is always validated): no index checks, no scan.
    pub(crate) fn open_for_recovery(
        dir: &Path,
        base_offset: i64,
        config: &LogConfig,
    ) -> Result<Self, LogError> {
        Self::open_files(dir, base_offset, config, false)
    }

    /// Opens an existing segment without reading its data. Returns whether it
    /// needs [`recover`](Self::recover): an index is missing or fails its
    /// sanity check, or the batches after the last index entry do not parse.
    pub(crate) fn load(
        dir: &Path,
        base_offset: i64,
        config: &LogConfig,
    ) -> Result<(Self, bool), LogError> {
        let (_, index_path, time_index_path) = Self::paths(dir, base_offset);
        let indexes_present = index_path.exists() && time_index_path.exists();
        let mut segment = Self::open_files(dir, base_offset, config, false)?;
        if !indexes_present {
            debug!(segment = %segment.log_path.display(), "index missing, segment will be recovered");
            return Ok((segment, true));
        }
        let checks = segment
            .offset_index
            .sanity_check(segment.size_bytes, HEADER_BYTES as u64)
            .and_then(|()| {
                segment
                    .time_index
                    .sanity_check(segment.size_bytes, HEADER_BYTES as u64)
            });
        if let Err(reason) = checks {
            warn!(segment = %segment.log_path.display(), %reason, "corrupt index, segment will be recovered");
            return Ok((segment, true));
        }
        // The tail after the last index entry tells the next offset; scanning it
        // also proves the index points at real batches.
        let start = segment.offset_index.last_entry().map_or(0, |e| e.position);
        let file = segment.log_file.get().at(&segment.log_path)?;
        let mut scanner = BatchScanner::new(
            &file,
            start,
            segment.size_bytes,
            HEADER_SCAN_CHUNK_BYTES,
            false,
        );
        let mut next_offset = None;
        loop {
            match scanner.next_batch() {
                Ok(Some(batch)) => {
                    if next_offset.is_some_and(|expected| expected != batch.summary.base_offset) {
                        warn!(segment = %segment.log_path.display(), position = batch.position, "non-contiguous offsets, segment will be recovered");
                        return Ok((segment, true));
                    }
                    next_offset = Some(batch.summary.next_offset());
                }
                Ok(None) => break,
                Err(ScanError::Io(error)) => return Err(error).at(&segment.log_path),
                Err(ScanError::Corrupt { position, reason }) => {
                    warn!(segment = %segment.log_path.display(), position, %reason, "unreadable tail, segment will be recovered");
                    return Ok((segment, true));
                }
            }
        }
        drop(scanner);
        drop(file);
        segment.next_offset = next_offset.unwrap_or(base_offset);
        segment.max_timestamp = segment.time_index.last_entry();
        // A sealed segment was fsynced whole when it was sealed, so nothing
        // of it waits for a flush; and it may not be read for a long time,
        // so it gives its descriptors back until then.
        segment.release_clean_descriptors();
        Ok((segment, false))
    }

    /// Validates every batch (length, magic, CRC, increasing offsets),
    /// truncates at the first bad byte and rebuilds both indexes. Returns the
    /// number of bytes cut off.
    pub(crate) fn recover(&mut self, config: &LogConfig) -> Result<u64, LogError> {
        // What the process before us wrote may still be only in the page
        // cache: the next flush covers it.
        self.log_file.mark_dirty();
        self.offset_index.reset().at(self.offset_index.path())?;
        self.time_index.reset().at(self.time_index.path())?;
        self.next_offset = self.base_offset;
        self.max_timestamp = None;
        self.rolling_base_ms = None;
        self.bytes_since_last_index_entry = 0;
        self.index_interval_bytes = config.index_interval_bytes as u64;
        let file_bytes = self.size_bytes;
        // Pinned: the scanner reads while the indexes are written.
        let (file, _index_pins) = self.pin()?;
        let mut scanner = BatchScanner::new(&file, 0, file_bytes, RECOVERY_SCAN_CHUNK_BYTES, true);
        let mut valid_bytes = 0u64;
        loop {
            match scanner.next_batch() {
                Ok(Some(batch)) => {
                    let relative_last = batch.summary.last_offset() - self.base_offset;
                    // Offsets are contiguous (no compaction yet), which also
                    // catches damage to baseOffset, a field the CRC does not cover.
                    if batch.summary.base_offset != self.next_offset
                        || relative_last > i32::MAX as i64
                    {
                        warn!(
                            segment = %self.log_path.display(),
                            position = batch.position,
                            base_offset = batch.summary.base_offset,
                            expected = self.next_offset,
                            "batch offset out of order, truncating"
                        );
                        break;
                    }
                    self.index_batch(&batch.summary, batch.position)?;
                    self.next_offset = batch.summary.next_offset();
                    valid_bytes = batch.position + batch.summary.size_bytes as u64;
                }
                Ok(None) => break,
                Err(ScanError::Io(error)) => return Err(error).at(&self.log_path),
                Err(ScanError::Corrupt { position, reason }) => {
                    warn!(segment = %self.log_path.display(), position, %reason, "torn or corrupt batch, truncating");
                    break;
                }
            }
        }
        drop(scanner);
        if valid_bytes < file_bytes {
            let cut = file.set_len(valid_bytes);
            self.log_file.mark_dirty();
            cut.at(&self.log_path)?;
            self.size_bytes = valid_bytes;
        }
        if self.size_bytes > 0 {
            self.rolling_base_ms = self.first_batch_timestamp()?;
        }
        Ok(file_bytes - valid_bytes)
    }

    /// Opens (if needed) and pins all three files: the data file, then both
    /// indexes. Holding the result keeps every descriptor open.
    fn pin(&self) -> Result<(Arc<File>, [Arc<File>; 2]), LogError> {
        let log = self.log_file.get().at(&self.log_path)?;
        let index = self.offset_index.pin().at(self.offset_index.path())?;
        let time_index = self.time_index.pin().at(self.time_index.path())?;
        Ok((log, [index, time_index]))
    }

    /// Marks a sealed, checked segment clean and closes its idle descriptors.
    fn release_clean_descriptors(&self) {
        self.log_file.take_dirty();
        self.log_file.close_if_idle();
        self.offset_index.mark_clean_and_close();
        self.time_index.mark_clean_and_close();
    }

    fn first_batch_timestamp(&self) -> Result<Option<i64>, LogError> {
        let file = self.log_file.get().at(&self.log_path)?;
        let mut scanner = BatchScanner::new(&file, 0, self.size_bytes, HEADER_BYTES, false);
        Ok(self
            .scan_next(&mut scanner)?
            .map(|b| b.summary.max_timestamp)
            .filter(|ts| *ts >= 0))
    }

    /// Records the batch at `position` in the indexes (Kafka ≥ 3.7's per-batch rule).
    fn index_batch(&mut self, batch: &BatchSummary, position: u64) -> Result<(), LogError> {
        if batch.max_timestamp > self.max_timestamp.map_or(NO_TIMESTAMP, |m| m.timestamp) {
            self.max_timestamp = Some(TimestampOffset {
                timestamp: batch.max_timestamp,
                offset: batch.last_offset(),
            });
        }
        if self.bytes_since_last_index_entry > self.index_interval_bytes {
            self.offset_index
                .append(batch.last_offset(), position)
                .at(self.offset_index.path())?;
            if let Some(max) = self.max_timestamp {
                self.time_index
                    .maybe_append(max.timestamp, max.offset)
                    .at(self.time_index.path())?;
            }
            self.bytes_since_last_index_entry = 0;
        }
        self.bytes_since_last_index_entry += batch.size_bytes as u64;
        Ok(())
    }

    pub(crate) fn base_offset(&self) -> i64 {
        self.base_offset
    }

    pub(crate) fn next_offset(&self) -> i64 {
        self.next_offset
    }

    pub(crate) fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    pub(crate) fn log_path(&self) -> &Path {
        &self.log_path
    }

    pub(crate) fn max_timestamp(&self) -> Option<TimestampOffset> {
        self.max_timestamp
    }

    pub(crate) fn rolling_base_ms(&self) -> Option<i64> {
        self.rolling_base_ms
    }

    pub(crate) fn is_index_full(&self) -> bool {
        self.offset_index.is_full() || self.time_index.is_full()
    }

    pub(crate) fn apply_config(&mut self, config: &LogConfig) {
        let index_bytes_max = config.segment_index_bytes_effective();
        self.offset_index.set_index_bytes_max(index_bytes_max);
        self.time_index.set_index_bytes_max(index_bytes_max);
        self.index_interval_bytes = config.index_interval_bytes as u64;
    }

    /// The largest timestamp for retention: the newest record's, or the file's
    /// mtime if no record has one (Kafka's `largestTimestamp`).
    pub(crate) fn largest_timestamp_ms(&self) -> Result<i64, LogError> {
        if let Some(max) = self.max_timestamp.filter(|m| m.timestamp >= 0) {
            return Ok(max.timestamp);
        }
        // By path: a stat needs no descriptor.
        let modified = fs::metadata(&self.log_path)
            .and_then(|m| m.modified())
            .at(&self.log_path)?;
        Ok(modified
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64))
    }

    /// Writes already-stamped batches at the end of the file and indexes them.
    pub(crate) fn append(
        &mut self,
        bytes: &[u8],
        batches: &[BatchSummary],
        now_ms: i64,
    ) -> Result<(), SegmentWriteError> {
        let Some(last) = batches.last() else {
            return Ok(());
        };
        debug_assert!(
            batches[0].base_offset >= self.next_offset,
            "offsets only grow"
        );
        debug_assert!(last.last_offset() - self.base_offset <= i32::MAX as i64);
        let position = self.size_bytes;
        // Every descriptor first: without one, nothing is written.
        let (file, _index_pins) = self.pin().map_err(|error| SegmentWriteError {
            error,
            consistent: true,
        })?;
        let written = file.write_all_at(bytes, position);
        self.log_file.mark_dirty();
        if let Err(source) = written {
            // Undo a partial write so the file ends on a batch boundary again.
            let consistent = file.set_len(position).is_ok();
            return Err(SegmentWriteError {
                error: LogError::Io {
                    path: self.log_path.clone(),
                    source,
                },
                consistent,
            });
        }
        self.size_bytes += bytes.len() as u64;
        if self.rolling_base_ms.is_none() {
            self.rolling_base_ms = Some(now_ms);
        }
        let mut batch_position = position;
        for batch in batches {
            if let Err(error) = self.index_batch(batch, batch_position) {
                return Err(SegmentWriteError {
                    error,
                    consistent: false,
                });
            }
            batch_position += batch.size_bytes as u64;
        }
        debug_assert_eq!(batch_position, self.size_bytes);
        self.next_offset = last.next_offset();
        Ok(())
    }

    fn scan_next(&self, scanner: &mut BatchScanner<'_>) -> Result<Option<ScannedBatch>, LogError> {
        scanner.next_batch().map_err(|error| match error {
            ScanError::Io(source) => LogError::Io {
                path: self.log_path.clone(),
                source,
            },
            ScanError::Corrupt { position, reason } => LogError::Corrupt {
                path: self.log_path.clone(),
                position,
                reason,
            },
        })
    }

    /// The batch holding `offset` (the first whose last offset is ≥ it), found
    /// through the offset index and a scan of headers bounded by the next entry.
    pub(crate) fn find_batch(&self, offset: i64) -> Result<Option<ScannedBatch>, LogError> {
        if offset >= self.next_offset || self.size_bytes == 0 {
            return Ok(None);
        }
        let lookup = self
            .offset_index
            .lookup(offset)
            .at(self.offset_index.path())?;
        let file = self.log_file.get().at(&self.log_path)?;
        let mut scanner = BatchScanner::new(
            &file,
            lookup.start_position,
            self.size_bytes,
            HEADER_SCAN_CHUNK_BYTES,
            false,
        );
        while let Some(batch) = self.scan_next(&mut scanner)? {
            if batch.summary.last_offset() >= offset {
                return Ok(Some(batch));
            }
            if lookup.end_position.is_some_and(|end| batch.position >= end) {
                break;
            }
        }
        Err(LogError::Corrupt {
            path: self.log_path.clone(),
            position: lookup.start_position,
            reason: format!("offset {offset} is below the segment end but no batch holds it"),
        })
    }

    /// Appends whole batches from `position` to `out` within `limits`.
    pub(crate) fn read_into(
        &self,
        position: u64,
        out: &mut Vec<u8>,
        limits: ReadLimits,
    ) -> Result<SegmentRead, LogError> {
        let mut result = SegmentRead::default();
        let available = self.size_bytes.saturating_sub(position);
        if available == 0 {
            result.reached_end = true;
            return Ok(result);
        }
        let mut want = (limits.bytes_max as u64).min(available);
        if limits.first_batch_whole {
            want = want.max((HEADER_BYTES as u64).min(available));
        }
        if want == 0 {
            return Ok(result);
        }
        let start = out.len();
        out.resize(start + want as usize, 0);
        let file = self.log_file.get().at(&self.log_path)?;
        file.read_exact_at(&mut out[start..], position)
            .at(&self.log_path)?;
        let mut cursor = start;
        let mut stopped = false;
        while cursor < out.len() {
            let header = match BatchHeader::parse(&out[cursor..]) {
                Ok(header) => header,
                // A header cut by the byte budget: the budget is spent.
                Err(_)
                    if out.len() - cursor < HEADER_BYTES
                        && (out.len() - start) as u64 == want
                        && want < available =>
                {
                    stopped = true;
                    break;
                }
                Err(error) => {
                    out.truncate(start);
                    return Err(LogError::Corrupt {
                        path: self.log_path.clone(),
                        position: position + (cursor - start) as u64,
                        reason: error.to_string(),
                    });
                }
            };
            if header.base_offset() >= limits.offset_max_exclusive {
                stopped = true;
                break;
            }
            let size = header.size_bytes();
            let next_offset = header.last_offset() + 1;
            if cursor + size > out.len() {
                let batch_position = position + (cursor - start) as u64;
                let batch_end = batch_position + size as u64;
                if batch_end > self.size_bytes {
                    out.truncate(start);
                    return Err(LogError::Corrupt {
                        path: self.log_path.clone(),
                        position: batch_position,
                        reason: format!("batch of {size} bytes runs past the segment end"),
                    });
                }
                if limits.first_batch_whole && result.batches == 0 {
                    // min_one_batch: fetch the rest of this one oversized batch.
                    let have = out.len();
                    out.resize(cursor + size, 0);
                    let fetched_to = position + (have - start) as u64;
                    file.read_exact_at(&mut out[have..], fetched_to)
                        .at(&self.log_path)?;
                    cursor += size;
                    result.batches += 1;
                    result.next_offset = Some(next_offset);
                }
                stopped = true;
                break;
            }
            cursor += size;
            result.batches += 1;
            result.next_offset = Some(next_offset);
        }
        out.truncate(cursor);
        result.reached_end = !stopped && (cursor - start) as u64 == available;
        Ok(result)
    }

    /// Reads one whole batch at `position` (for record-level lookups).
    fn read_batch(&self, batch: &ScannedBatch) -> Result<Vec<u8>, LogError> {
        let mut bytes = vec![0u8; batch.summary.size_bytes];
        self.log_file
            .get()
            .and_then(|f| f.read_exact_at(&mut bytes, batch.position))
            .at(&self.log_path)?;
        Ok(bytes)
    }

    /// Kafka's `findOffsetByTimestamp`: the first record at or after
    /// `min_offset` whose timestamp is ≥ `timestamp_ms`, as (offset, timestamp).
    pub(crate) fn find_offset_by_timestamp(
        &self,
        timestamp_ms: i64,
        min_offset: i64,
    ) -> Result<Option<(i64, i64)>, LogError> {
        let start_position = match self
            .time_index
            .last_entry_below(timestamp_ms)
            .at(self.time_index.path())?
        {
            Some(entry) => {
                self.offset_index
                    .lookup(entry.offset)
                    .at(self.offset_index.path())?
                    .start_position
            }
            None => 0,
        };
        let file = self.log_file.get().at(&self.log_path)?;
        let mut scanner = BatchScanner::new(
            &file,
            start_position,
            self.size_bytes,
            HEADER_SCAN_CHUNK_BYTES,
            false,
        );
        while let Some(batch) = self.scan_next(&mut scanner)? {
            if batch.summary.max_timestamp < timestamp_ms
                || batch.summary.last_offset() < min_offset
            {
                continue;
            }
            if let Some(found) = self.find_in_batch(&batch, |offset, ts| {
                offset >= min_offset && ts >= timestamp_ms
            })? {
                return Ok(Some(found));
            }
        }
        Ok(None)
    }

    /// The first record of the batch holding `offset` whose timestamp equals
    /// `timestamp_ms` (Kafka's `offsetOfMaxTimestamp` for ListOffsets -3).
    pub(crate) fn find_record_with_timestamp(
        &self,
        offset: i64,
        timestamp_ms: i64,
    ) -> Result<Option<(i64, i64)>, LogError> {
        let Some(batch) = self.find_batch(offset)? else {
            return Ok(None);
        };
        self.find_in_batch(&batch, |_, ts| ts == timestamp_ms)
    }

    fn find_in_batch(
        &self,
        batch: &ScannedBatch,
        matches: impl FnMut(i64, i64) -> bool,
    ) -> Result<Option<(i64, i64)>, LogError> {
        let bytes = self.read_batch(batch)?;
        let corrupt = |reason: String| LogError::Corrupt {
            path: self.log_path.clone(),
            position: batch.position,
            reason,
        };
        let view = RecordBatch::parse(&bytes).map_err(|e| corrupt(e.to_string()))?;
        find_record(&view, matches).map_err(|e| corrupt(e.to_string()))
    }

    /// Iterates the headers of every batch from `from_offset` on, for
    /// producer-state replay. Stops at the first error.
    pub(crate) fn for_each_batch_from(
        &self,
        from_offset: i64,
        mut visit: impl FnMut(&BatchSummary),
    ) -> Result<(), LogError> {
        let Some(first) = self.find_batch(from_offset)? else {
            return Ok(());
        };
        let file = self.log_file.get().at(&self.log_path)?;
        let mut scanner = BatchScanner::new(
            &file,
            first.position,
            self.size_bytes,
            HEADER_SCAN_CHUNK_BYTES,
            false,
        );
        while let Some(batch) = self.scan_next(&mut scanner)? {
            if batch.summary.base_offset >= from_offset {
                visit(&batch.summary);
            }
        }
        Ok(())
    }

    /// Drops every batch whose last offset is ≥ `offset` (a batch holding
    /// `offset` goes whole), fixing both indexes and the max timestamp.
    pub(crate) fn truncate_to(&mut self, offset: i64) -> Result<(), LogError> {
        let Some(cut) = self.find_batch(offset)? else {
            return Ok(());
        };
        let position = cut.position;
        let (file, _index_pins) = self.pin()?;
        let truncated = file.set_len(position);
        self.log_file.mark_dirty();
        truncated.at(&self.log_path)?;
        self.size_bytes = position;
        self.next_offset = offset.min(cut.summary.base_offset);
        self.offset_index
            .truncate_to_position(position)
            .at(self.offset_index.path())?;
        self.time_index
            .truncate_to_offset(self.next_offset)
            .at(self.time_index.path())?;
        self.bytes_since_last_index_entry = 0;
        // Recompute the max timestamp: the last time entry covers everything up
        // to its offset; batches after it are scanned.
        self.max_timestamp = self.time_index.last_entry();
        let from = match self.max_timestamp {
            Some(entry) => {
                self.offset_index
                    .lookup(entry.offset)
                    .at(self.offset_index.path())?
                    .start_position
            }
            None => 0,
        };
        let mut scanner =
            BatchScanner::new(&file, from, self.size_bytes, HEADER_SCAN_CHUNK_BYTES, false);
        let mut max = self.max_timestamp;
        while let Some(batch) = self.scan_next(&mut scanner)? {
            if batch.summary.max_timestamp > max.map_or(NO_TIMESTAMP, |m| m.timestamp) {
                max = Some(TimestampOffset {
                    timestamp: batch.summary.max_timestamp,
                    offset: batch.summary.last_offset(),
                });
            }
        }
        self.max_timestamp = max;
        if self.size_bytes == 0 {
            self.rolling_base_ms = None;
        } else if self.rolling_base_ms.is_none() {
            self.rolling_base_ms = self.first_batch_timestamp()?;
        }
        Ok(())
    }

    /// Seals the segment when a newer one takes over: the final max timestamp
    /// goes into the time index (so a reopen knows it without a scan) and
    /// everything is fsynced, so only the active segment can ever be torn.
    pub(crate) fn on_become_inactive(&mut self) -> Result<(), LogError> {
        let _pins = self.pin()?;
        if let Some(max) = self.max_timestamp {
            self.time_index
                .maybe_append(max.timestamp, max.offset)
                .at(self.time_index.path())?;
        }
        self.flush()
    }

    /// Captures the files changed since the last capture, to be fsynced
    /// without the partition lock (see [`PendingFlush`]).
    pub(crate) fn take_unflushed(&mut self, scope: FlushScope, flush: &mut PendingFlush) {
        flush.capture(&self.log_file);
        if scope == FlushScope::All {
            self.offset_index.take_unflushed(flush);
            self.time_index.take_unflushed(flush);
        }
    }

    /// Makes the data and both indexes durable, now and unconditionally.
    pub(crate) fn flush(&self) -> Result<(), LogError> {
        let _pins = self.pin()?;
        self.log_file.take_dirty();
        let synced = self.log_file.get().and_then(|f| f.sync_data());
        if synced.is_err() {
            self.log_file.mark_dirty();
        }
        synced.at(&self.log_path)?;
        self.offset_index.sync().at(self.offset_index.path())?;
        self.time_index.sync().at(self.time_index.path())
    }

    /// Removes the segment's files: the `.log` first, so a crash in between
    /// leaves only orphan indexes, which open() removes.
    pub(crate) fn delete_files(self) -> Result<(), LogError> {
        let index_path = self.offset_index.path().to_path_buf();
        let time_index_path = self.time_index.path().to_path_buf();
        let log_path = self.log_path.clone();
        drop(self);
        for path in [&log_path, &index_path, &time_index_path] {
            match fs::remove_file(path) {
                Ok(()) => {}
                Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                Err(error) => return Err(error).at(path),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::batch::test_batches::TestBatch;
    use crate::log::batch::RecordBatchMut;
    use proptest::prelude::*;

    fn config(index_interval_bytes: u32) -> LogConfig {
        LogConfig {
            index_interval_bytes,
            ..LogConfig::default()
        }
    }

    /// Appends `batches` (record counts) back to back, one append each.
    fn fill(segment: &mut LogSegment, records: &[i32], timestamps: &[i64]) -> Vec<BatchSummary> {
        let mut out = Vec::new();
        for (i, count) in records.iter().enumerate() {
            let mut bytes = TestBatch::new(*count).timestamp(timestamps[i]).encode();
            RecordBatchMut::new(&mut bytes)
                .unwrap()
                .set_base_offset(segment.next_offset());
            let summary = BatchHeader::parse(&bytes).unwrap().summary();
            segment.append(&bytes, &[summary], 0).unwrap();
            out.push(summary);
        }
        out
    }

    #[test]
    fn segment_files_use_kafka_names() {
        let dir = tempfile::tempdir().unwrap();
        LogSegment::create(dir.path(), 42, &config(4096)).unwrap();
        for suffix in [LOG_SUFFIX, INDEX_SUFFIX, TIME_INDEX_SUFFIX] {
            assert!(dir
                .path()
                .join(format!("00000000000000000042{suffix}"))
                .exists());
        }
        assert_eq!(parse_file_stem("00000000000000000042"), Some(42));
        assert_eq!(parse_file_stem("42"), None);
        assert_eq!(parse_file_stem("0000000000000000004x"), None);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        #[test]
        fn find_batch_locates_the_holder_of_any_offset(
            records in proptest::collection::vec(1i32..10, 1..60),
            interval in 0u32..600,
            probe in any::<prop::sample::Index>(),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let mut segment = LogSegment::create(dir.path(), 100, &config(interval)).unwrap();
            let timestamps: Vec<i64> = (0..records.len() as i64).collect();
            let batches = fill(&mut segment, &records, &timestamps);
            let target = 100 + probe.index((segment.next_offset() - 100) as usize) as i64;
            let found = segment.find_batch(target).unwrap().unwrap();
            prop_assert!(found.summary.base_offset <= target && target <= found.summary.last_offset());
            let expected = batches.iter().find(|b| b.base_offset <= target && target <= b.last_offset()).unwrap();
            prop_assert_eq!(&found.summary, expected);
        }

        #[test]
        fn timestamp_lookup_finds_first_record_at_or_after_target(
            batch_timestamps in proptest::collection::vec(0i64..500, 1..50),
            interval in 0u32..400,
            target in 0i64..520,
        ) {
            let dir = tempfile::tempdir().unwrap();
            let mut segment = LogSegment::create(dir.path(), 0, &config(interval)).unwrap();
            // Two records per batch with timestamps t and t+1.
            let records = vec![2; batch_timestamps.len()];
            fill(&mut segment, &records, &batch_timestamps);
            let mut expected = None;
            for (i, ts) in batch_timestamps.iter().enumerate() {
                if *ts >= target { expected = Some((2 * i as i64, *ts)); break; }
                if ts + 1 >= target { expected = Some((2 * i as i64 + 1, ts + 1)); break; }
            }
            prop_assert_eq!(segment.find_offset_by_timestamp(target, 0).unwrap(), expected);
        }
    }

    #[test]
    fn reload_after_clean_seal_needs_no_recovery() {
        let dir = tempfile::tempdir().unwrap();
        let mut segment = LogSegment::create(dir.path(), 0, &config(100)).unwrap();
        fill(
            &mut segment,
            &[3; 20],
            &(0..20).map(|t| t * 10).collect::<Vec<_>>(),
        );
        let next = segment.next_offset();
        let max = segment.max_timestamp();
        segment.on_become_inactive().unwrap();
        drop(segment);
        let (loaded, needs_recovery) = LogSegment::load(dir.path(), 0, &config(100)).unwrap();
        assert!(!needs_recovery);
        assert_eq!(loaded.next_offset(), next);
        assert_eq!(loaded.max_timestamp(), max);
    }

    #[test]
    fn missing_or_garbage_index_forces_recovery_that_rebuilds_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut segment = LogSegment::create(dir.path(), 0, &config(100)).unwrap();
        fill(&mut segment, &[3; 20], &[5; 20]);
        let entries = segment.offset_index.entries();
        segment.on_become_inactive().unwrap();
        drop(segment);
        let index = dir.path().join(format!("{}{INDEX_SUFFIX}", file_stem(0)));
        fs::write(&index, [0xffu8; 64]).unwrap();
        let (mut loaded, needs_recovery) = LogSegment::load(dir.path(), 0, &config(100)).unwrap();
        assert!(needs_recovery);
        assert_eq!(loaded.recover(&config(100)).unwrap(), 0);
        assert_eq!(loaded.offset_index.entries(), entries);
        assert_eq!(loaded.next_offset(), 60);
        fs::remove_file(&index).unwrap();
        assert!(LogSegment::load(dir.path(), 0, &config(100)).unwrap().1);
    }

    #[test]
    fn truncate_drops_the_batch_holding_the_offset_and_fixes_indexes() {
        let dir = tempfile::tempdir().unwrap();
        let mut segment = LogSegment::create(dir.path(), 0, &config(50)).unwrap();
        let batches = fill(&mut segment, &[4; 10], &(0..10).collect::<Vec<_>>());
        segment.truncate_to(22).unwrap(); // batch [20, 23] goes whole
        assert_eq!(segment.next_offset(), 20);
        let kept: u64 = batches[..5].iter().map(|b| b.size_bytes as u64).sum();
        assert_eq!(segment.size_bytes(), kept);
        assert_eq!(segment.max_timestamp().unwrap().timestamp, 4 + 3);
        assert!(segment.find_batch(20).unwrap().is_none());
        assert_eq!(
            segment.find_batch(19).unwrap().unwrap().summary.base_offset,
            16
        );
        assert!(segment
            .offset_index
            .last_entry()
            .is_none_or(|e| e.position < kept));
    }

    #[test]
    fn read_respects_budget_high_watermark_and_min_one_batch() {
        let dir = tempfile::tempdir().unwrap();
        let mut segment = LogSegment::create(dir.path(), 0, &config(4096)).unwrap();
        let batches = fill(&mut segment, &[2; 5], &[0; 5]);
        let size = batches[0].size_bytes;
        let read = |bytes_max, hw, whole| {
            let mut out = Vec::new();
            let r = segment
                .read_into(
                    0,
                    &mut out,
                    ReadLimits {
                        bytes_max,
                        offset_max_exclusive: hw,
                        first_batch_whole: whole,
                    },
                )
                .unwrap();
            (out.len(), r.batches, r.reached_end)
        };
        assert_eq!(read(size * 2 + 10, i64::MAX, false), (size * 2, 2, false));
        assert_eq!(read(10, i64::MAX, false), (0, 0, false));
        assert_eq!(read(10, i64::MAX, true), (size, 1, false));
        assert_eq!(read(usize::MAX, 4, false), (size * 2, 2, false));
        assert_eq!(read(usize::MAX, i64::MAX, false), (size * 5, 5, true));
    }
}
