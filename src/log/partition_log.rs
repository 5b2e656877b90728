//! One partition's log on disk, like Kafka's `UnifiedLog` (+ `LocalLog`, `LogLoader`).
//!
//! A directory of segments, oldest first; the last one is active and the only
//! one written. Offsets are assigned here, once, by the append that stores a
//! batch; they never change. The log start offset moves forward only through
//! retention or DeleteRecords (and back only through `truncate_to`, which the
//! replication layer owns) and is persisted in a checkpoint.
//!
//! Durability model: appends land in the page cache; [`PartitionLog::flush`]
//! fsyncs the active segment. Rolling fsyncs the outgoing segment before the
//! new one exists, so after a crash only the active segment can be torn, and
//! open() validates every batch of it (and of any segment with a damaged
//! index). Any I/O failure that leaves memory and disk out of step takes the
//! log offline until it is reopened, as Kafka takes a log directory offline;
//! the replica layer reopens it in the background (recovery runs again).
//! Running out of file descriptors is not such a failure: every step that
//! changes files pins its descriptors before changing anything, so an
//! EMFILE/ENFILE fails the request (KAFKA_STORAGE_ERROR, retriable) and
//! leaves the log online.

use std::borrow::Cow;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use tracing::{info, warn};

use crate::log::batch::{BatchHeader, BatchSummary, RecordBatchMut, TimestampType, NO_TIMESTAMP};
use crate::log::checkpoint::{read_log_start_offset, sync_dir, write_log_start_offset, TMP_SUFFIX};
use crate::log::config::LogConfig;
use crate::log::error::{AppendError, IoContext, LogError, ReadError};
use crate::log::file_cache::is_descriptor_exhaustion;
use crate::log::flush::{FlushScope, PendingFlush};
use crate::log::producer_state::{
    snapshot_path, AppendOrigin, ProducerAppendInfo, ProducerStateManager, SnapshotError,
    SNAPSHOT_SUFFIX,
};
use crate::log::segment::{
    file_stem, parse_file_stem, LogSegment, ReadLimits, INDEX_SUFFIX, LOG_SUFFIX, TIME_INDEX_SUFFIX,
};
use crate::log::validator::{validate_produce, validate_records, ValidatedBatch, ValidatedRecords};

/// Written in a log dir once every log in it was flushed at shutdown, and
/// removed once the next start has loaded them (Kafka's name and rule).
pub const CLEAN_SHUTDOWN_FILE: &str = ".kafka_cleanshutdown";

/// A partition directory with more entries than this is refused rather than
/// listed into memory: it is not something Fjord wrote.
pub const LOG_DIR_ENTRIES_MAX: usize = 1_000_000;

/// Where an append landed, for the produce response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppendInfo {
    /// Offset of the first record written (or of the original, for a duplicate).
    pub base_offset: i64,
    /// Offset of the last record written.
    pub last_offset: i64,
    /// The broker time stamped into LogAppendTime batches; -1 for CreateTime.
    pub log_append_time_ms: i64,
    /// The log start offset after the append.
    pub log_start_offset: i64,
    /// True when the batch was a producer retry already in the log: nothing was
    /// written and the offsets are the original ones.
    pub duplicate: bool,
    /// Largest batch max timestamp in the append.
    pub max_timestamp_ms: i64,
    /// Batches written (0 for a duplicate).
    pub batch_count: usize,
    /// Bytes written (0 for a duplicate).
    pub size_bytes: usize,
    /// The batches as written, offsets and leader epoch stamped (empty for a
    /// duplicate): what a reader of these offsets would get back.
    pub written: Bytes,
}

/// Batches read for a fetch.
#[derive(Clone, Debug)]
pub struct ReadInfo {
    /// Whole batches, exactly as stored.
    pub records: Bytes,
    /// Number of batches in `records`.
    pub batch_count: usize,
    /// Offset after the last batch returned; the start offset if none.
    pub next_offset: i64,
    /// Log start offset at the time of the read.
    pub log_start_offset: i64,
    /// Log end offset at the time of the read.
    pub log_end_offset: i64,
}

/// One partition's log: segments, indexes, producer state, log start offset.
#[derive(Debug)]
pub struct PartitionLog {
    dir: PathBuf,
    config: LogConfig,
    /// Sorted by base offset, never empty; the last is the active segment.
    segments: Vec<LogSegment>,
    log_start_offset: i64,
    producer_state: ProducerStateManager,
    /// Set when a failed write may have left files and memory apart.
    offline: bool,
}

/// What a directory listing found.
#[derive(Debug, Default)]
struct DirListing {
    log_bases: Vec<i64>,
    index_bases: Vec<(i64, PathBuf)>,
    snapshot_offsets: Vec<i64>,
    tmp_files: Vec<PathBuf>,
}

impl DirListing {
    fn read(dir: &Path) -> Result<Self, LogError> {
        let mut listing = DirListing::default();
        for (count, entry) in fs::read_dir(dir).at(dir)?.enumerate() {
            if count >= LOG_DIR_ENTRIES_MAX {
                return Err(LogError::Corrupt {
                    path: dir.to_path_buf(),
                    position: 0,
                    reason: format!("more than {LOG_DIR_ENTRIES_MAX} entries"),
                });
            }
            let entry = entry.at(dir)?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.ends_with(TMP_SUFFIX) {
                listing.tmp_files.push(entry.path());
                continue;
            }
            let Some((stem, suffix)) = name.split_once('.') else {
                continue;
            };
            let Some(offset) = parse_file_stem(stem) else {
                continue;
            };
            match format!(".{suffix}").as_str() {
                LOG_SUFFIX => listing.log_bases.push(offset),
                INDEX_SUFFIX | TIME_INDEX_SUFFIX => {
                    listing.index_bases.push((offset, entry.path()))
                }
                SNAPSHOT_SUFFIX => listing.snapshot_offsets.push(offset),
                _ => {}
            }
        }
        listing.log_bases.sort_unstable();
        listing.snapshot_offsets.sort_unstable();
        Ok(listing)
    }
}

fn remove_file_if_present(path: &Path) -> Result<(), LogError> {
    match fs::remove_file(path) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => Err(error).at(path),
        _ => Ok(()),
    }
}

impl PartitionLog {
    /// Opens (or creates) the log in `dir`, recovering from a crash: the
    /// active segment, and any segment whose index is missing or damaged, is
    /// validated batch by batch and cut at the first torn or corrupt byte;
    /// indexes are rebuilt; producer state is reloaded from the latest
    /// snapshot plus the batches after it; the log start offset comes from its
    /// checkpoint.
    pub fn open(dir: &Path, config: LogConfig) -> Result<Self, LogError> {
        Self::open_inner(dir, config, false)
    }

    /// [`open`](Self::open) after a clean shutdown (every log flushed and
    /// the log dir's [`CLEAN_SHUTDOWN_FILE`] written): the active segment is
    /// loaded like a sealed one (index sanity check and a scan of the tail
    /// after the last index entry) instead of recovered batch by batch, as
    /// Kafka skips recovery after a clean shutdown. A segment that fails
    /// those checks is still recovered.
    pub fn open_after_clean_shutdown(dir: &Path, config: LogConfig) -> Result<Self, LogError> {
        Self::open_inner(dir, config, true)
    }

    fn open_inner(dir: &Path, config: LogConfig, clean: bool) -> Result<Self, LogError> {
        config.validate()?;
        fs::create_dir_all(dir).at(dir)?;
        let listing = DirListing::read(dir)?;
        for tmp in &listing.tmp_files {
            remove_file_if_present(tmp)?;
        }
        for (base, path) in &listing.index_bases {
            if listing.log_bases.binary_search(base).is_err() {
                // Left behind by a deletion that crashed after removing the .log.
                remove_file_if_present(path)?;
            }
        }
        let checkpoint = read_log_start_offset(dir)?;
        let mut segments: Vec<LogSegment> = Vec::with_capacity(listing.log_bases.len());
        for (i, &base) in listing.log_bases.iter().enumerate() {
            let is_last = i + 1 == listing.log_bases.len();
            let (mut segment, needs_recovery) = if is_last && !clean {
                (LogSegment::open_for_recovery(dir, base, &config)?, true)
            } else {
                LogSegment::load(dir, base, &config)?
            };
            if needs_recovery {
                let truncated_bytes = segment.recover(&config)?;
                if truncated_bytes > 0 {
                    warn!(
                        segment = %segment.log_path().display(),
                        truncated_bytes,
                        next_offset = segment.next_offset(),
                        "recovery truncated a torn or corrupt tail"
                    );
                    if !is_last {
                        // Kafka's rule: what follows a corrupt segment is unreachable.
                        for &later in &listing.log_bases[i + 1..] {
                            warn!(base_offset = later, "deleting segment after a corrupt one");
                            for suffix in [LOG_SUFFIX, INDEX_SUFFIX, TIME_INDEX_SUFFIX] {
                                remove_file_if_present(
                                    &dir.join(format!("{}{suffix}", file_stem(later))),
                                )?;
                            }
                        }
                        segments.push(segment);
                        break;
                    }
                }
            }
            if let Some(previous) = segments.last() {
                if previous.next_offset() > segment.base_offset() {
                    return Err(LogError::Corrupt {
                        path: segment.log_path().to_path_buf(),
                        position: 0,
                        reason: format!(
                            "segment starts at {} but the previous one ends at {}",
                            segment.base_offset(),
                            previous.next_offset()
                        ),
                    });
                }
            }
            segments.push(segment);
        }
        if segments.is_empty() {
            segments.push(LogSegment::create(dir, checkpoint.unwrap_or(0), &config)?);
            sync_dir(dir)?;
        }
        let first_base = segments[0].base_offset();
        let mut log = Self {
            dir: dir.to_path_buf(),
            config,
            segments,
            log_start_offset: checkpoint.unwrap_or(first_base).max(first_base),
            producer_state: ProducerStateManager::default(),
            offline: false,
        };
        if log.log_start_offset > log.log_end_offset() {
            // Records below the checkpointed start were lost (unflushed data on
            // a power cut): start empty there rather than reuse offsets.
            warn!(
                log_start_offset = log.log_start_offset,
                log_end_offset = log.log_end_offset(),
                "log end is below the log start offset; starting empty at the log start offset"
            );
            let start = log.log_start_offset;
            log.truncate_fully_and_start_at(start)?;
        }
        log.rebuild_producer_state()?;
        info!(
            dir = %log.dir.display(),
            segments = log.segments.len(),
            log_start_offset = log.log_start_offset,
            log_end_offset = log.log_end_offset(),
            producers = log.producer_state.len(),
            "log loaded"
        );
        Ok(log)
    }

    /// The partition directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The config in force.
    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    /// First offset a consumer may read.
    pub fn log_start_offset(&self) -> i64 {
        self.log_start_offset
    }

    /// Offset the next appended record will get.
    pub fn log_end_offset(&self) -> i64 {
        self.active().next_offset()
    }

    /// Bytes in all segments.
    pub fn size_bytes(&self) -> u64 {
        self.segments.iter().map(LogSegment::size_bytes).sum()
    }

    /// Number of segments (≥ 1).
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// Base offsets of all segments, oldest first.
    pub fn segment_base_offsets(&self) -> Vec<i64> {
        self.segments.iter().map(LogSegment::base_offset).collect()
    }

    /// Whether an I/O failure has taken the log offline.
    pub fn is_offline(&self) -> bool {
        self.offline
    }

    fn active(&self) -> &LogSegment {
        // `segments` is never empty: open() and every deletion keep one.
        &self.segments[self.segments.len() - 1]
    }

    fn active_mut(&mut self) -> &mut LogSegment {
        let last = self.segments.len() - 1;
        &mut self.segments[last]
    }

    fn ensure_online(&self) -> Result<(), LogError> {
        if self.offline {
            Err(LogError::Offline {
                path: self.dir.clone(),
            })
        } else {
            Ok(())
        }
    }

    /// Runs a step whose failure may leave disk and memory apart; on failure
    /// the log goes offline, unless the step only failed to get a file
    /// descriptor (then it changed nothing: see the module doc).
    fn or_offline<T>(&mut self, result: Result<T, LogError>) -> Result<T, LogError> {
        if let Err(error) = &result {
            if is_descriptor_exhaustion(error) {
                warn!(dir = %self.dir.display(), %error, "out of file descriptors; the request fails, the log stays online");
            } else {
                warn!(dir = %self.dir.display(), %error, "log going offline");
                self.offline = true;
            }
        }
        result
    }

    /// Appends a producer's batches (Produce). Validates every batch and
    /// every record first ([`validate_produce`], see [`AppendError`]), checks
    /// idempotent producers' epochs and sequences, assigns offsets from the
    /// log end offset, stamps the leader epoch (and LogAppendTime if
    /// configured), rolls the segment if needed and writes. A retry of one of
    /// a producer's last five batches is not written again: it is
    /// acknowledged with its original offsets (`duplicate`).
    ///
    /// Callers holding this log behind a lock should validate first and call
    /// [`append_validated`](Self::append_validated), so the record walk runs
    /// outside the lock.
    pub fn append(
        &mut self,
        records: &[u8],
        leader_epoch: i32,
        now_ms: i64,
    ) -> Result<AppendInfo, AppendError> {
        self.ensure_online()?;
        let validated = validate_produce(records, &self.config, now_ms)?;
        self.append_validated(validated, leader_epoch, now_ms)
    }

    /// [`append`](Self::append) for batches [`validate_produce`] already
    /// passed (against this log's config, possibly a moment older).
    pub fn append_validated(
        &mut self,
        validated: ValidatedRecords<'_>,
        leader_epoch: i32,
        now_ms: i64,
    ) -> Result<AppendInfo, AppendError> {
        self.ensure_online()?;
        let ValidatedRecords { bytes, batches } = validated;
        self.write_batches(bytes, &batches, leader_epoch, now_ms, AppendOrigin::Client)
    }

    /// Appends batches that already carry offsets and leader epochs assigned by
    /// the leader (Kafka's `appendAsFollower`; the future Raft log store's
    /// path). Checks integrity only; the first batch must start at the log end
    /// offset and offsets must be contiguous.
    pub fn append_as_follower(
        &mut self,
        records: &[u8],
        now_ms: i64,
    ) -> Result<AppendInfo, AppendError> {
        self.ensure_online()?;
        let validated = validate_records(records, &self.config, AppendOrigin::Replication)?;
        self.write_batches(
            Cow::Borrowed(records),
            &validated,
            0,
            now_ms,
            AppendOrigin::Replication,
        )
    }

    fn write_batches(
        &mut self,
        records: Cow<'_, [u8]>,
        validated: &[ValidatedBatch],
        leader_epoch: i32,
        now_ms: i64,
        origin: AppendOrigin,
    ) -> Result<AppendInfo, AppendError> {
        let segment_bytes = self.config.segment_bytes_effective();
        if records.len() as u64 > segment_bytes {
            return Err(AppendError::RecordListTooLarge {
                records_bytes: records.len(),
                segment_bytes,
            });
        }
        let log_end_offset = self.log_end_offset();
        let log_append_time = origin == AppendOrigin::Client
            && self.config.message_timestamp_type == TimestampType::LogAppendTime;
        let mut stored = records.into_owned();
        let mut batches: Vec<BatchSummary> = Vec::with_capacity(validated.len());
        let mut next_offset = log_end_offset;
        for batch in validated {
            let bytes = &mut stored[batch.position..batch.position + batch.summary.size_bytes];
            let corrupt = |error: crate::log::batch::BatchError| AppendError::CorruptMessage {
                position: batch.position,
                reason: error.to_string(),
            };
            match origin {
                AppendOrigin::Client => {
                    let mut stamp = RecordBatchMut::new(bytes).map_err(corrupt)?;
                    stamp.set_base_offset(next_offset);
                    stamp.set_partition_leader_epoch(leader_epoch);
                    if log_append_time {
                        stamp.set_log_append_time(now_ms);
                    }
                }
                AppendOrigin::Replication => {
                    // Contiguous, like the leader's log: there is no compaction
                    // to leave gaps, and recovery relies on it.
                    if batch.summary.base_offset != next_offset {
                        return Err(AppendError::UnexpectedAppendOffset {
                            first_offset: batch.summary.base_offset,
                            log_end_offset: next_offset,
                        });
                    }
                }
            }
            let summary = BatchHeader::parse(bytes).map_err(corrupt)?.summary();
            next_offset = summary.next_offset();
            batches.push(summary);
        }
        // validate_records returns at least one batch or an error.
        let Some(first_offset) = batches.first().map(|b| b.base_offset) else {
            return Err(AppendError::InvalidRecord {
                position: 0,
                reason: "no record batches".into(),
            });
        };
        let last_offset = next_offset - 1;
        let max_timestamp_ms = batches
            .iter()
            .map(|b| b.max_timestamp)
            .max()
            .unwrap_or(NO_TIMESTAMP);

        let mut producer_updates = ProducerAppendInfo::default();
        for batch in batches.iter().filter(|b| b.has_producer_id()) {
            if origin == AppendOrigin::Client {
                if let Some(original) = self.producer_state.find_duplicate(batch) {
                    return Ok(AppendInfo {
                        base_offset: original.first_offset,
                        last_offset: original.last_offset,
                        log_append_time_ms: if log_append_time {
                            original.timestamp_ms
                        } else {
                            NO_TIMESTAMP
                        },
                        log_start_offset: self.log_start_offset,
                        duplicate: true,
                        max_timestamp_ms: original.timestamp_ms,
                        batch_count: 0,
                        size_bytes: 0,
                        written: Bytes::new(),
                    });
                }
            }
            producer_updates.append(&self.producer_state, batch, origin)?;
        }

        self.maybe_roll(stored.len() as u64, first_offset, last_offset, now_ms)?;
        if let Err(failure) = self.active_mut().append(&stored, &batches, now_ms) {
            if !failure.consistent {
                self.offline = true;
            }
            return Err(failure.error.into());
        }
        self.producer_state.commit(producer_updates);
        Ok(AppendInfo {
            base_offset: first_offset,
            last_offset,
            log_append_time_ms: if log_append_time {
                now_ms
            } else {
                NO_TIMESTAMP
            },
            log_start_offset: self.log_start_offset,
            duplicate: false,
            max_timestamp_ms,
            batch_count: batches.len(),
            size_bytes: stored.len(),
            written: Bytes::from(stored),
        })
    }

    /// Kafka's `shouldRoll`: the append would overflow segment.bytes, the
    /// segment is older than segment.ms, an index is full, or the append's
    /// offsets would not fit the 32-bit relative offsets. Empty segments never roll.
    fn maybe_roll(
        &mut self,
        append_bytes: u64,
        first_offset: i64,
        last_offset: i64,
        now_ms: i64,
    ) -> Result<(), LogError> {
        let active = self.active();
        if active.size_bytes() == 0 {
            return Ok(());
        }
        let full = active.size_bytes() + append_bytes > self.config.segment_bytes_effective();
        let old = active
            .rolling_base_ms()
            .is_some_and(|base| now_ms.saturating_sub(base) > self.config.segment_ms_effective());
        let index_full = active.is_index_full();
        let offsets_overflow = last_offset - active.base_offset() > i32::MAX as i64;
        if full || old || index_full || offsets_overflow {
            self.roll(first_offset)?;
        }
        Ok(())
    }

    /// Seals the active segment (fsynced) and starts a new one at
    /// `base_offset` (≥ the log end offset), with a producer snapshot there.
    fn roll(&mut self, base_offset: i64) -> Result<(), LogError> {
        let base_offset = base_offset.max(self.log_end_offset());
        let sealed = self.active_mut().on_become_inactive();
        self.or_offline(sealed)?;
        let created = LogSegment::create(&self.dir, base_offset, &self.config)
            .and_then(|segment| sync_dir(&self.dir).map(|()| segment));
        let segment = self.or_offline(created)?;
        self.segments.push(segment);
        info!(dir = %self.dir.display(), base_offset, "rolled new segment");
        self.take_producer_snapshot()
    }

    /// Snapshot producer state at the log end offset and drop snapshots that
    /// are no longer useful.
    fn take_producer_snapshot(&mut self) -> Result<(), LogError> {
        self.producer_state
            .write_snapshot(&self.dir, self.log_end_offset())?;
        self.clean_snapshots()
    }

    /// Keeps one snapshot per segment boundary plus the newest one in the
    /// active segment; deletes those below the first segment or past the end.
    fn clean_snapshots(&self) -> Result<(), LogError> {
        let listing = DirListing::read(&self.dir)?;
        let first_base = self.segments[0].base_offset();
        let active_base = self.active().base_offset();
        let log_end_offset = self.log_end_offset();
        let newest_in_active = listing
            .snapshot_offsets
            .iter()
            .copied()
            .filter(|o| *o >= active_base && *o <= log_end_offset)
            .max();
        for offset in listing.snapshot_offsets {
            let stale = offset < first_base
                || offset > log_end_offset
                || (offset >= active_base && Some(offset) != newest_in_active);
            if stale {
                remove_file_if_present(&snapshot_path(&self.dir, offset))?;
            }
        }
        Ok(())
    }

    /// Rebuilds producer state from the newest usable snapshot and the batches after it.
    fn rebuild_producer_state(&mut self) -> Result<(), LogError> {
        self.producer_state.clear();
        let listing = DirListing::read(&self.dir)?;
        let first_base = self.segments[0].base_offset();
        let log_end_offset = self.log_end_offset();
        let mut replay_from = first_base;
        for &offset in listing.snapshot_offsets.iter().rev() {
            let path = snapshot_path(&self.dir, offset);
            if offset > log_end_offset || offset < first_base {
                remove_file_if_present(&path)?;
                continue;
            }
            match ProducerStateManager::read_snapshot(&path) {
                Ok(state) => {
                    self.producer_state = state;
                    replay_from = offset;
                    break;
                }
                Err(SnapshotError::Corrupt(reason)) => {
                    warn!(snapshot = %path.display(), %reason, "deleting corrupt producer snapshot");
                    remove_file_if_present(&path)?;
                }
                Err(SnapshotError::Io(error)) => return Err(error).at(&path),
            }
        }
        let state = &mut self.producer_state;
        for segment in self
            .segments
            .iter()
            .filter(|s| s.next_offset() > replay_from)
        {
            segment.for_each_batch_from(replay_from.max(segment.base_offset()), |batch| {
                if batch.has_producer_id() {
                    state.replay(batch);
                }
            })?;
        }
        Ok(())
    }

    /// Reads whole batches for a fetch, starting with the batch that holds
    /// `start_offset`, stopping before any batch whose base offset is at or
    /// past `max_offset_exclusive` (the high watermark), within `max_bytes` —
    /// except that with `min_one_batch` the first batch comes whole even if it
    /// is larger. Crosses segment boundaries while budget remains.
    pub fn read(
        &self,
        start_offset: i64,
        max_bytes: usize,
        max_offset_exclusive: i64,
        min_one_batch: bool,
    ) -> Result<ReadInfo, ReadError> {
        self.ensure_online()?;
        let log_end_offset = self.log_end_offset();
        if start_offset < self.log_start_offset || start_offset > log_end_offset {
            return Err(ReadError::OffsetOutOfRange {
                offset: start_offset,
                log_start_offset: self.log_start_offset,
                log_end_offset,
            });
        }
        let mut info = ReadInfo {
            records: Bytes::new(),
            batch_count: 0,
            next_offset: start_offset,
            log_start_offset: self.log_start_offset,
            log_end_offset,
        };
        if start_offset == log_end_offset || start_offset >= max_offset_exclusive {
            return Ok(info);
        }
        let mut out = Vec::new();
        let first = self
            .segments
            .partition_point(|s| s.base_offset() <= start_offset)
            .saturating_sub(1);
        for (i, segment) in self.segments.iter().enumerate().skip(first) {
            let position = if i == first {
                match segment.find_batch(start_offset)? {
                    Some(batch) => batch.position,
                    None => segment.size_bytes(),
                }
            } else {
                0
            };
            let limits = ReadLimits {
                bytes_max: max_bytes.saturating_sub(out.len()),
                offset_max_exclusive: max_offset_exclusive,
                first_batch_whole: min_one_batch && info.batch_count == 0,
            };
            let read = segment.read_into(position, &mut out, limits)?;
            info.batch_count += read.batches;
            if let Some(next) = read.next_offset {
                info.next_offset = next;
            }
            if !read.reached_end {
                break;
            }
        }
        info.records = Bytes::from(out);
        Ok(info)
    }

    /// ListOffsets by timestamp: the first record (at or after the log start
    /// offset) whose timestamp is ≥ `timestamp_ms`, as (offset, timestamp).
    /// The time index narrows the search to a few batches; only the batch that
    /// holds the answer is decoded. Special targets (-1, -2, -3) are the
    /// caller's to translate.
    pub fn offset_for_timestamp(&self, timestamp_ms: i64) -> Result<Option<(i64, i64)>, LogError> {
        self.ensure_online()?;
        for segment in &self.segments {
            if segment
                .max_timestamp()
                .is_none_or(|max| max.timestamp < timestamp_ms)
            {
                continue;
            }
            if let Some(found) =
                segment.find_offset_by_timestamp(timestamp_ms, self.log_start_offset)?
            {
                return Ok(Some(found));
            }
        }
        Ok(None)
    }

    /// ListOffsets MAX_TIMESTAMP (-3): the record with the largest timestamp
    /// (the first such record if several), as (offset, timestamp).
    pub fn max_timestamp(&self) -> Result<Option<(i64, i64)>, LogError> {
        self.ensure_online()?;
        let mut best: Option<(&LogSegment, i64, i64)> = None;
        for segment in &self.segments {
            if let Some(max) = segment.max_timestamp().filter(|m| m.timestamp >= 0) {
                if best.is_none_or(|(_, _, ts)| max.timestamp > ts) {
                    best = Some((segment, max.offset, max.timestamp));
                }
            }
        }
        let Some((segment, offset, timestamp)) = best else {
            return Ok(None);
        };
        Ok(Some(
            segment
                .find_record_with_timestamp(offset, timestamp)?
                .unwrap_or((offset, timestamp)),
        ))
    }

    /// DeleteRecords: moves the log start offset up to `offset` (at most the
    /// log end offset), persists it and deletes segments wholly below it.
    /// Returns the new log start offset (the low watermark).
    pub fn delete_records_before(&mut self, offset: i64) -> Result<i64, LogError> {
        self.ensure_online()?;
        let log_end_offset = self.log_end_offset();
        if offset > log_end_offset || offset < 0 {
            return Err(LogError::OffsetOutOfRange {
                offset,
                log_start_offset: self.log_start_offset,
                log_end_offset,
            });
        }
        if offset <= self.log_start_offset {
            return Ok(self.log_start_offset);
        }
        write_log_start_offset(&self.dir, offset)?;
        self.log_start_offset = offset;
        self.delete_old_segments(log_end_offset, |_, next| {
            Ok(next.is_some_and(|n| n.base_offset() <= offset))
        })?;
        Ok(self.log_start_offset)
    }

    /// Time and size retention (whole segments, oldest first) and deletion of
    /// segments below the log start offset; also expires idle producers.
    /// Returns the number of segments deleted.
    pub fn enforce_retention(&mut self, now_ms: i64) -> Result<usize, LogError> {
        let log_end_offset = self.log_end_offset();
        self.enforce_retention_up_to(now_ms, log_end_offset)
    }

    /// [`enforce_retention`](Self::enforce_retention) that never deletes a
    /// segment holding offsets at or above `offset_max_exclusive` (pass the
    /// high watermark: Kafka never deletes uncommitted data).
    pub fn enforce_retention_up_to(
        &mut self,
        now_ms: i64,
        offset_max_exclusive: i64,
    ) -> Result<usize, LogError> {
        self.ensure_online()?;
        let mut deleted = 0;
        let retention_ms = self.config.retention_ms;
        if retention_ms >= 0 {
            deleted += self.delete_old_segments(offset_max_exclusive, |segment, _| {
                Ok(now_ms.saturating_sub(segment.largest_timestamp_ms()?) > retention_ms)
            })?;
        }
        let retention_bytes = self.config.retention_bytes;
        if retention_bytes >= 0 {
            let mut excess_bytes = self.size_bytes() as i64 - retention_bytes;
            if excess_bytes > 0 {
                deleted += self.delete_old_segments(offset_max_exclusive, |segment, _| {
                    let size = segment.size_bytes() as i64;
                    if excess_bytes - size >= 0 {
                        excess_bytes -= size;
                        Ok(true)
                    } else {
                        Ok(false)
                    }
                })?;
            }
        }
        let log_start_offset = self.log_start_offset;
        deleted += self.delete_old_segments(offset_max_exclusive, |_, next| {
            Ok(next.is_some_and(|n| n.base_offset() <= log_start_offset))
        })?;
        self.producer_state
            .remove_expired(now_ms, self.config.producer_id_expiration_ms);
        Ok(deleted)
    }

    /// Where time and size retention would start the log now: the base
    /// offset of the first segment they keep (the log end if they delete
    /// them all), never deleting a segment holding offsets at or above
    /// `offset_max_exclusive`; `None` if nothing is due. Deletes nothing:
    /// the partition's leader moves the log start there on every replica.
    pub fn retention_start(
        &self,
        now_ms: i64,
        offset_max_exclusive: i64,
    ) -> Result<Option<i64>, LogError> {
        self.ensure_online()?;
        let log_end_offset = self.log_end_offset();
        let deletable = |i: usize| {
            let next = self.segments.get(i + 1);
            let last_and_empty = next.is_none() && self.segments[i].size_bytes() == 0;
            let end_offset = next.map_or(log_end_offset, LogSegment::base_offset);
            !last_and_empty && end_offset <= offset_max_exclusive
        };
        let mut count = 0;
        let retention_ms = self.config.retention_ms;
        if retention_ms >= 0 {
            while count < self.segments.len() && deletable(count) {
                let newest = self.segments[count].largest_timestamp_ms()?;
                if now_ms.saturating_sub(newest) <= retention_ms {
                    break;
                }
                count += 1;
            }
        }
        let retention_bytes = self.config.retention_bytes;
        if retention_bytes >= 0 {
            let kept: i64 = self.segments[count..]
                .iter()
                .map(|s| s.size_bytes() as i64)
                .sum();
            let mut excess_bytes = kept - retention_bytes;
            while count < self.segments.len() && deletable(count) {
                let size = self.segments[count].size_bytes() as i64;
                if excess_bytes - size < 0 {
                    break;
                }
                excess_bytes -= size;
                count += 1;
            }
        }
        let start = match count {
            0 => return Ok(None),
            n if n == self.segments.len() => log_end_offset,
            n => self.segments[n].base_offset(),
        };
        Ok((start > self.log_start_offset).then_some(start))
    }

    /// Forgets producers idle for longer than `producer.id.expiration.ms`.
    pub fn expire_producers(&mut self, now_ms: i64) {
        self.producer_state
            .remove_expired(now_ms, self.config.producer_id_expiration_ms);
    }

    /// Kafka's `deleteOldSegments`: deletes the longest prefix of segments
    /// matching `should_delete(segment, next)` that lies wholly below
    /// `offset_max_exclusive`. Deleting every segment first rolls an empty
    /// one, so the log always has an active segment.
    fn delete_old_segments(
        &mut self,
        offset_max_exclusive: i64,
        mut should_delete: impl FnMut(&LogSegment, Option<&LogSegment>) -> Result<bool, LogError>,
    ) -> Result<usize, LogError> {
        let log_end_offset = self.log_end_offset();
        let mut count = 0;
        while count < self.segments.len() {
            let segment = &self.segments[count];
            let next = self.segments.get(count + 1);
            let last_and_empty = next.is_none() && segment.size_bytes() == 0;
            let end_offset = next.map_or(log_end_offset, LogSegment::base_offset);
            if last_and_empty || end_offset > offset_max_exclusive || !should_delete(segment, next)?
            {
                break;
            }
            count += 1;
        }
        if count == 0 {
            return Ok(0);
        }
        if count == self.segments.len() {
            self.roll(log_end_offset)?;
        }
        let new_start = self.segments[count].base_offset();
        if new_start > self.log_start_offset {
            write_log_start_offset(&self.dir, new_start)?;
            self.log_start_offset = new_start;
        }
        let removed: Vec<LogSegment> = self.segments.drain(..count).collect();
        for segment in removed {
            info!(segment = %segment.log_path().display(), "deleting segment");
            let deleted = segment.delete_files();
            self.or_offline(deleted)?;
        }
        sync_dir(&self.dir)?;
        self.clean_snapshots()?;
        Ok(count)
    }

    /// Applies a new config; it governs the next append, roll and retention run.
    pub fn set_config(&mut self, config: LogConfig) {
        if let Err(error) = config.validate() {
            warn!(%error, "applying a log config that does not validate; values are clamped");
        }
        for segment in &mut self.segments {
            segment.apply_config(&config);
        }
        self.config = config;
    }

    /// Makes everything appended so far durable (fsync of the active
    /// segment's data and indexes; older segments were fsynced when sealed).
    pub fn flush(&self) -> Result<(), LogError> {
        self.ensure_online()?;
        self.active().flush()
    }

    /// Captures what a flush must fsync (the files changed since the last
    /// capture) so that the caller can sync it after releasing the lock this
    /// log sits behind. Whoever takes it must sync it, and call
    /// [`mark_offline`](Self::mark_offline) if that fails.
    pub fn take_unflushed(&mut self, scope: FlushScope) -> Result<PendingFlush, LogError> {
        self.ensure_online()?;
        let mut flush = PendingFlush::default();
        // Only the active segment is appended to, but truncation can touch the
        // one before it; checking a flag per segment is cheap.
        for segment in &mut self.segments {
            segment.take_unflushed(scope, &mut flush);
        }
        Ok(flush)
    }

    /// Takes the log offline after a failed fsync: memory says the data is
    /// there, the disk may not have it (Kafka marks the log dir offline).
    pub fn mark_offline(&mut self) {
        warn!(dir = %self.dir.display(), "log taken offline after a failed flush");
        self.offline = true;
    }

    /// Drops every record at or above `offset` (a batch holding `offset` goes
    /// whole), fixing indexes and producer state. Below the first segment the
    /// log restarts empty at `offset`.
    pub fn truncate_to(&mut self, offset: i64) -> Result<(), LogError> {
        self.ensure_online()?;
        let log_end_offset = self.log_end_offset();
        if offset >= log_end_offset {
            return Ok(());
        }
        if offset < 0 {
            return Err(LogError::OffsetOutOfRange {
                offset,
                log_start_offset: self.log_start_offset,
                log_end_offset,
            });
        }
        if offset < self.segments[0].base_offset() {
            return self.truncate_fully_and_start_at(offset);
        }
        while self.segments.len() > 1 && self.active().base_offset() > offset {
            if let Some(segment) = self.segments.pop() {
                let deleted = segment.delete_files();
                self.or_offline(deleted)?;
            }
        }
        let truncated = self.active_mut().truncate_to(offset);
        self.or_offline(truncated)?;
        let synced = sync_dir(&self.dir);
        self.or_offline(synced)?;
        let new_end = self.log_end_offset();
        if self.log_start_offset > new_end {
            write_log_start_offset(&self.dir, new_end)?;
            self.log_start_offset = new_end;
        }
        info!(dir = %self.dir.display(), offset, log_end_offset = new_end, "truncated log");
        self.rebuild_producer_state()?;
        self.clean_snapshots()
    }

    /// A follower whose log ends below the leader's log start offset: drops
    /// everything and restarts the log empty at `offset` (Kafka's
    /// `truncateFullyAndStartAt`). Nothing happens if the log already
    /// reaches `offset`.
    pub fn start_at(&mut self, offset: i64) -> Result<(), LogError> {
        self.ensure_online()?;
        if offset <= self.log_end_offset() {
            return Ok(());
        }
        warn!(dir = %self.dir.display(), log_end_offset = self.log_end_offset(), offset, "restarting a replica's log at the leader's log start");
        self.truncate_fully_and_start_at(offset)
    }

    /// Deletes every segment and snapshot and restarts the log empty at `offset`.
    fn truncate_fully_and_start_at(&mut self, offset: i64) -> Result<(), LogError> {
        let fresh = LogSegment::create(&self.dir, offset, &self.config);
        let fresh = self.or_offline(fresh)?;
        let old = std::mem::replace(&mut self.segments, vec![fresh]);
        for segment in old {
            if segment.base_offset() == offset {
                continue; // its files were just recreated empty
            }
            let deleted = segment.delete_files();
            self.or_offline(deleted)?;
        }
        let synced = sync_dir(&self.dir);
        self.or_offline(synced)?;
        write_log_start_offset(&self.dir, offset)?;
        self.log_start_offset = offset;
        self.producer_state.clear();
        self.clean_snapshots()
    }

    /// The producer's epoch and last sequence, if the log knows it.
    pub fn producer_state(&self, producer_id: i64) -> Option<(i16, i32)> {
        self.producer_state
            .get(producer_id)
            .map(|entry| (entry.producer_epoch, entry.last_sequence()))
    }

    /// Flushes and snapshots producer state so the next open replays nothing.
    pub fn close(mut self) -> Result<(), LogError> {
        self.ensure_online()?;
        self.flush()?;
        self.take_producer_snapshot()
    }

    /// Deletes the partition directory and everything in it.
    pub fn delete(self) -> Result<(), LogError> {
        let dir = self.dir.clone();
        drop(self);
        fs::remove_dir_all(&dir).at(&dir)
    }
}
