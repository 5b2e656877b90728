//! Idempotent producer state, like Kafka's `ProducerStateManager`.
//!
//! Per producer id the log remembers the epoch and the last five batches'
//! sequence and offset ranges — five because a Kafka producer keeps at most
//! five requests in flight per partition, so any retry it can send is among
//! them. That is enough to acknowledge a retried batch with its original
//! offsets instead of writing it twice, and to refuse a gap.
//!
//! An append first stages its changes in a [`ProducerAppendInfo`] (a copy of
//! the entries it touches) and commits them only after the bytes are written,
//! so a refused or failed append leaves no trace. The state is rebuilt on open
//! from the latest snapshot (`<offset>.snapshot`, taken when a segment rolls
//! and on close) plus a replay of the batches after it.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};

use tracing::warn;

use crate::log::batch::{BatchSummary, NO_PRODUCER_EPOCH, NO_SEQUENCE};
use crate::log::checkpoint::{read_bounded, write_atomically};
use crate::log::error::{AppendError, LogError};

/// Batches remembered per producer (Kafka's `NUM_BATCHES_TO_RETAIN`).
pub(crate) const PRODUCER_BATCHES_RETAINED: usize = 5;
/// Suffix of producer state snapshot files, as in Kafka.
pub(crate) const SNAPSHOT_SUFFIX: &str = ".snapshot";
/// A snapshot larger than this is refused on load (≈ 1.5 M producers).
const SNAPSHOT_BYTES_MAX: u64 = 256 * 1024 * 1024;
const SNAPSHOT_MAGIC: &[u8; 4] = b"FJPS";
const SNAPSHOT_VERSION: u16 = 1;
/// magic + version + crc + producer count.
const SNAPSHOT_HEADER_BYTES: usize = 4 + 2 + 4 + 4;
/// producer id + epoch + last timestamp + batch count.
const SNAPSHOT_ENTRY_HEADER_BYTES: usize = 8 + 2 + 8 + 1;
/// first seq + last seq + first offset + last offset + timestamp.
const SNAPSHOT_BATCH_BYTES: usize = 4 + 4 + 8 + 8 + 8;

/// Where one of a producer's recent batches landed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BatchMetadata {
    pub first_sequence: i32,
    pub last_sequence: i32,
    pub first_offset: i64,
    pub last_offset: i64,
    /// The batch's max timestamp as stored (append time for LogAppendTime).
    pub timestamp_ms: i64,
}

/// What the log knows about one producer id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ProducerStateEntry {
    pub producer_epoch: i16,
    /// Oldest first; at most [`PRODUCER_BATCHES_RETAINED`].
    pub batches: VecDeque<BatchMetadata>,
    /// Timestamp of the producer's latest batch, for expiration.
    pub last_timestamp_ms: i64,
}

impl ProducerStateEntry {
    fn empty() -> Self {
        Self {
            producer_epoch: NO_PRODUCER_EPOCH,
            batches: VecDeque::with_capacity(PRODUCER_BATCHES_RETAINED),
            last_timestamp_ms: -1,
        }
    }

    pub(crate) fn last_sequence(&self) -> i32 {
        self.batches.back().map_or(NO_SEQUENCE, |b| b.last_sequence)
    }

    /// A cached batch with exactly this epoch and sequence range.
    fn find_duplicate(&self, batch: &BatchSummary) -> Option<BatchMetadata> {
        if batch.producer_epoch != self.producer_epoch {
            return None;
        }
        let last_sequence = batch.last_sequence();
        self.batches
            .iter()
            .find(|b| b.first_sequence == batch.base_sequence && b.last_sequence == last_sequence)
            .copied()
    }

    /// A new epoch forgets the old epoch's batches (Kafka's `maybeUpdateProducerEpoch`).
    fn set_epoch(&mut self, epoch: i16) {
        if epoch != self.producer_epoch {
            self.batches.clear();
            self.producer_epoch = epoch;
        }
    }

    fn add_batch(&mut self, epoch: i16, metadata: BatchMetadata) {
        self.set_epoch(epoch);
        if self.batches.len() == PRODUCER_BATCHES_RETAINED {
            self.batches.pop_front();
        }
        self.batches.push_back(metadata);
        self.last_timestamp_ms = metadata.timestamp_ms;
    }
}

/// Kafka's `inSequence`: the next batch must start right after the last one,
/// or at 0 after `i32::MAX`.
fn in_sequence(last_sequence: i32, next_sequence: i32) -> bool {
    next_sequence as i64 == last_sequence as i64 + 1
        || (next_sequence == 0 && last_sequence == i32::MAX)
}

/// All producers of one partition.
#[derive(Debug, Default)]
pub(crate) struct ProducerStateManager {
    producers: HashMap<i64, ProducerStateEntry>,
}

/// Who is appending: a producer (checked) or the leader's log (trusted).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AppendOrigin {
    /// A Produce request: epochs and sequences are enforced.
    Client,
    /// Replication or replay of our own log: the leader already checked.
    Replication,
}

impl ProducerStateManager {
    pub(crate) fn get(&self, producer_id: i64) -> Option<&ProducerStateEntry> {
        self.producers.get(&producer_id)
    }

    pub(crate) fn len(&self) -> usize {
        self.producers.len()
    }

    /// A retry of one of the producer's last five batches, from stored state
    /// only (Kafka checks the log, not the request being appended).
    pub(crate) fn find_duplicate(&self, batch: &BatchSummary) -> Option<BatchMetadata> {
        self.producers
            .get(&batch.producer_id)?
            .find_duplicate(batch)
    }

    /// Applies a batch read back from the log (replay after open or truncation).
    pub(crate) fn replay(&mut self, batch: &BatchSummary) {
        let mut info = ProducerAppendInfo::default();
        // Replication origin never fails.
        let _ = info.append(self, batch, AppendOrigin::Replication);
        self.commit(info);
    }

    /// Makes a staged append's changes permanent.
    pub(crate) fn commit(&mut self, info: ProducerAppendInfo) {
        for (producer_id, entry) in info.updated {
            self.producers.insert(producer_id, entry);
        }
    }

    /// Forgets producers idle for `expiration_ms` (Kafka's `removeExpiredProducers`).
    pub(crate) fn remove_expired(&mut self, now_ms: i64, expiration_ms: i64) -> usize {
        let before = self.producers.len();
        self.producers
            .retain(|_, entry| now_ms.saturating_sub(entry.last_timestamp_ms) < expiration_ms);
        before - self.producers.len()
    }

    pub(crate) fn clear(&mut self) {
        self.producers.clear();
    }

    /// Writes `<offset>.snapshot` atomically: the state after every batch below `offset`.
    pub(crate) fn write_snapshot(&self, dir: &Path, offset: i64) -> Result<(), LogError> {
        let mut body = Vec::with_capacity(
            self.producers.len() * (SNAPSHOT_ENTRY_HEADER_BYTES + 2 * SNAPSHOT_BATCH_BYTES),
        );
        body.extend_from_slice(&(self.producers.len() as u32).to_be_bytes());
        let mut ids: Vec<_> = self.producers.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            let entry = &self.producers[&id];
            body.extend_from_slice(&id.to_be_bytes());
            body.extend_from_slice(&entry.producer_epoch.to_be_bytes());
            body.extend_from_slice(&entry.last_timestamp_ms.to_be_bytes());
            body.push(entry.batches.len() as u8);
            for b in &entry.batches {
                body.extend_from_slice(&b.first_sequence.to_be_bytes());
                body.extend_from_slice(&b.last_sequence.to_be_bytes());
                body.extend_from_slice(&b.first_offset.to_be_bytes());
                body.extend_from_slice(&b.last_offset.to_be_bytes());
                body.extend_from_slice(&b.timestamp_ms.to_be_bytes());
            }
        }
        let mut file = Vec::with_capacity(SNAPSHOT_HEADER_BYTES + body.len());
        file.extend_from_slice(SNAPSHOT_MAGIC);
        file.extend_from_slice(&SNAPSHOT_VERSION.to_be_bytes());
        file.extend_from_slice(&crc32c::crc32c(&body).to_be_bytes());
        file.extend_from_slice(&body);
        write_atomically(dir, &snapshot_file_name(offset), &file)
    }

    /// Loads a snapshot; `Err(reason)` if it is damaged (the caller deletes it).
    pub(crate) fn read_snapshot(path: &Path) -> Result<Self, SnapshotError> {
        let bytes = read_bounded(path, SNAPSHOT_BYTES_MAX).map_err(SnapshotError::Io)?;
        let corrupt = |reason: &str| SnapshotError::Corrupt(reason.to_string());
        if bytes.len() < SNAPSHOT_HEADER_BYTES || &bytes[..4] != SNAPSHOT_MAGIC {
            return Err(corrupt("not a producer state snapshot"));
        }
        if u16::from_be_bytes([bytes[4], bytes[5]]) != SNAPSHOT_VERSION {
            return Err(corrupt("unknown snapshot version"));
        }
        let stored_crc = u32::from_be_bytes([bytes[6], bytes[7], bytes[8], bytes[9]]);
        let body = &bytes[10..];
        if crc32c::crc32c(body) != stored_crc {
            return Err(corrupt("snapshot CRC mismatch"));
        }
        let mut reader = SnapshotReader { rest: body };
        let count = reader.u32()? as usize;
        // Each entry needs at least its header: a lying count cannot over-allocate.
        if count > body.len() / SNAPSHOT_ENTRY_HEADER_BYTES {
            return Err(corrupt("producer count exceeds snapshot size"));
        }
        let mut producers = HashMap::with_capacity(count);
        for _ in 0..count {
            let id = reader.i64()?;
            let producer_epoch = reader.i16()?;
            let last_timestamp_ms = reader.i64()?;
            let batch_count = reader.u8()? as usize;
            if batch_count > PRODUCER_BATCHES_RETAINED {
                return Err(corrupt("too many batches for one producer"));
            }
            let mut batches = VecDeque::with_capacity(PRODUCER_BATCHES_RETAINED);
            for _ in 0..batch_count {
                batches.push_back(BatchMetadata {
                    first_sequence: reader.i32()?,
                    last_sequence: reader.i32()?,
                    first_offset: reader.i64()?,
                    last_offset: reader.i64()?,
                    timestamp_ms: reader.i64()?,
                });
            }
            producers.insert(
                id,
                ProducerStateEntry {
                    producer_epoch,
                    batches,
                    last_timestamp_ms,
                },
            );
        }
        if !reader.rest.is_empty() {
            return Err(corrupt("trailing bytes after the last producer"));
        }
        Ok(Self { producers })
    }
}

/// Why a snapshot could not be loaded.
#[derive(Debug)]
pub(crate) enum SnapshotError {
    Io(std::io::Error),
    Corrupt(String),
}

struct SnapshotReader<'a> {
    rest: &'a [u8],
}

impl SnapshotReader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], SnapshotError> {
        let (head, rest) = self
            .rest
            .split_first_chunk::<N>()
            .ok_or_else(|| SnapshotError::Corrupt("snapshot ends early".into()))?;
        self.rest = rest;
        Ok(*head)
    }
    fn u8(&mut self) -> Result<u8, SnapshotError> {
        Ok(self.take::<1>()?[0])
    }
    fn i16(&mut self) -> Result<i16, SnapshotError> {
        Ok(i16::from_be_bytes(self.take()?))
    }
    fn i32(&mut self) -> Result<i32, SnapshotError> {
        Ok(i32::from_be_bytes(self.take()?))
    }
    fn u32(&mut self) -> Result<u32, SnapshotError> {
        Ok(u32::from_be_bytes(self.take()?))
    }
    fn i64(&mut self) -> Result<i64, SnapshotError> {
        Ok(i64::from_be_bytes(self.take()?))
    }
}

/// `00000000000000000123.snapshot`.
pub(crate) fn snapshot_file_name(offset: i64) -> String {
    format!("{offset:020}{SNAPSHOT_SUFFIX}")
}

/// Path of the snapshot for `offset` in `dir`.
pub(crate) fn snapshot_path(dir: &Path, offset: i64) -> PathBuf {
    dir.join(snapshot_file_name(offset))
}

/// Staged producer changes of one append (Kafka's `ProducerAppendInfo`),
/// holding copies of the entries it touched.
#[derive(Debug, Default)]
pub(crate) struct ProducerAppendInfo {
    /// Few entries per request (usually one): a Vec beats a map here.
    updated: Vec<(i64, ProducerStateEntry)>,
}

impl ProducerAppendInfo {
    /// Checks `batch` (already stamped with its offsets) against the
    /// producer's state as updated by earlier batches of the same append, and
    /// stages it.
    pub(crate) fn append(
        &mut self,
        manager: &ProducerStateManager,
        batch: &BatchSummary,
        origin: AppendOrigin,
    ) -> Result<(), AppendError> {
        let producer_id = batch.producer_id;
        debug_assert!(producer_id >= 0);
        let slot = match self.updated.iter().position(|(id, _)| *id == producer_id) {
            Some(slot) => slot,
            None => {
                let entry = manager
                    .get(producer_id)
                    .cloned()
                    .unwrap_or_else(ProducerStateEntry::empty);
                self.updated.push((producer_id, entry));
                self.updated.len() - 1
            }
        };
        let entry = &mut self.updated[slot].1;
        let epoch = batch.producer_epoch;
        if origin == AppendOrigin::Client {
            if epoch < entry.producer_epoch {
                return Err(AppendError::InvalidProducerEpoch {
                    producer_id,
                    epoch,
                    current_epoch: entry.producer_epoch,
                });
            }
            check_sequence(producer_id, entry, batch)?;
        } else if epoch < entry.producer_epoch {
            warn!(
                producer_id,
                epoch,
                current_epoch = entry.producer_epoch,
                "replicated batch carries an older producer epoch"
            );
        }
        if batch.is_control() {
            // Transaction markers bump the epoch but carry no sequence.
            entry.set_epoch(epoch);
            entry.last_timestamp_ms = batch.max_timestamp;
            return Ok(());
        }
        entry.add_batch(
            epoch,
            BatchMetadata {
                first_sequence: batch.base_sequence,
                last_sequence: batch.last_sequence(),
                first_offset: batch.base_offset,
                last_offset: batch.last_offset(),
                timestamp_ms: batch.max_timestamp,
            },
        );
        Ok(())
    }
}

/// Kafka's `ProducerAppendInfo.checkSequence`.
fn check_sequence(
    producer_id: i64,
    entry: &ProducerStateEntry,
    batch: &BatchSummary,
) -> Result<(), AppendError> {
    let first_sequence = batch.base_sequence;
    if batch.producer_epoch != entry.producer_epoch {
        // A new epoch restarts at 0, unless the log knows no epoch at all
        // (its batches were deleted by retention or DeleteRecords).
        if first_sequence != 0 && entry.producer_epoch != NO_PRODUCER_EPOCH {
            return Err(AppendError::OutOfOrderSequence {
                producer_id,
                first_sequence,
                last_sequence: NO_SEQUENCE,
            });
        }
        return Ok(());
    }
    let last_sequence = entry.last_sequence();
    // An epoch with no batches left (only a marker) starts at 0.
    if !in_sequence(last_sequence, first_sequence) {
        return Err(AppendError::OutOfOrderSequence {
            producer_id,
            first_sequence,
            last_sequence,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::batch::test_batches::TestBatch;
    use crate::log::batch::BatchHeader;

    fn summary(
        producer_id: i64,
        epoch: i16,
        base_sequence: i32,
        records: i32,
        base_offset: i64,
    ) -> BatchSummary {
        let mut spec = TestBatch::new(records).idempotent(producer_id, epoch, base_sequence);
        spec.base_offset = base_offset;
        BatchHeader::parse(&spec.encode()).unwrap().summary()
    }

    fn stage(manager: &mut ProducerStateManager, batch: &BatchSummary) -> Result<(), AppendError> {
        let mut info = ProducerAppendInfo::default();
        info.append(manager, batch, AppendOrigin::Client)?;
        manager.commit(info);
        Ok(())
    }

    #[test]
    fn in_order_batches_are_accepted_and_gaps_rejected() {
        let mut manager = ProducerStateManager::default();
        stage(&mut manager, &summary(7, 0, 0, 3, 0)).unwrap();
        stage(&mut manager, &summary(7, 0, 3, 2, 3)).unwrap();
        let gap = stage(&mut manager, &summary(7, 0, 9, 1, 5)).unwrap_err();
        assert!(matches!(
            gap,
            AppendError::OutOfOrderSequence {
                last_sequence: 4,
                ..
            }
        ));
        assert_eq!(manager.get(7).unwrap().last_sequence(), 4);
    }

    #[test]
    fn only_the_last_five_batches_are_recognised_as_duplicates() {
        let mut manager = ProducerStateManager::default();
        for i in 0..7 {
            stage(&mut manager, &summary(1, 0, i, 1, i as i64)).unwrap();
        }
        assert!(manager.find_duplicate(&summary(1, 0, 1, 1, 0)).is_none());
        let dup = manager.find_duplicate(&summary(1, 0, 2, 1, 0)).unwrap();
        assert_eq!(dup.first_offset, 2);
    }

    #[test]
    fn stale_epoch_is_fenced_and_new_epoch_must_start_at_zero() {
        let mut manager = ProducerStateManager::default();
        stage(&mut manager, &summary(1, 5, 0, 1, 0)).unwrap();
        assert!(matches!(
            stage(&mut manager, &summary(1, 4, 1, 1, 1)),
            Err(AppendError::InvalidProducerEpoch {
                current_epoch: 5,
                ..
            })
        ));
        assert!(matches!(
            stage(&mut manager, &summary(1, 6, 3, 1, 1)),
            Err(AppendError::OutOfOrderSequence { .. })
        ));
        stage(&mut manager, &summary(1, 6, 0, 1, 1)).unwrap();
        assert_eq!(manager.get(1).unwrap().producer_epoch, 6);
    }

    #[test]
    fn unknown_producer_may_start_at_any_sequence() {
        let mut manager = ProducerStateManager::default();
        stage(&mut manager, &summary(3, 0, 500, 1, 0)).unwrap();
        assert_eq!(manager.get(3).unwrap().last_sequence(), 500);
    }

    #[test]
    fn sequence_wraps_from_i32_max_to_zero() {
        let mut manager = ProducerStateManager::default();
        stage(&mut manager, &summary(3, 0, i32::MAX - 1, 2, 0)).unwrap();
        assert_eq!(manager.get(3).unwrap().last_sequence(), i32::MAX);
        stage(&mut manager, &summary(3, 0, 0, 1, 2)).unwrap();
        // A batch that itself wraps: last sequence is computed modulo 2^31.
        let mut manager = ProducerStateManager::default();
        stage(&mut manager, &summary(4, 0, i32::MAX, 3, 0)).unwrap();
        assert_eq!(manager.get(4).unwrap().last_sequence(), 1);
        stage(&mut manager, &summary(4, 0, 2, 1, 3)).unwrap();
    }

    #[test]
    fn failed_staging_leaves_state_untouched() {
        let mut manager = ProducerStateManager::default();
        stage(&mut manager, &summary(1, 0, 0, 1, 0)).unwrap();
        let mut info = ProducerAppendInfo::default();
        info.append(&manager, &summary(1, 0, 1, 1, 1), AppendOrigin::Client)
            .unwrap();
        assert!(info
            .append(&manager, &summary(1, 0, 5, 1, 2), AppendOrigin::Client)
            .is_err());
        drop(info);
        assert_eq!(manager.get(1).unwrap().last_sequence(), 0);
    }

    #[test]
    fn snapshot_round_trips_and_detects_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let mut manager = ProducerStateManager::default();
        for i in 0..7 {
            stage(&mut manager, &summary(1, 2, i, 1, i as i64)).unwrap();
        }
        stage(&mut manager, &summary(99, 0, 10, 4, 7)).unwrap();
        manager.write_snapshot(dir.path(), 11).unwrap();
        let path = snapshot_path(dir.path(), 11);
        let loaded = ProducerStateManager::read_snapshot(&path).unwrap();
        assert_eq!(loaded.producers, manager.producers);
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            ProducerStateManager::read_snapshot(&path),
            Err(SnapshotError::Corrupt(_))
        ));
    }

    #[test]
    fn idle_producers_expire() {
        let mut manager = ProducerStateManager::default();
        stage(&mut manager, &summary(1, 0, 0, 1, 0)).unwrap(); // timestamp 1000
        assert_eq!(manager.remove_expired(1_500, 1_000), 0);
        assert_eq!(manager.remove_expired(2_000, 1_000), 1);
        assert!(manager.get(1).is_none());
    }
}
