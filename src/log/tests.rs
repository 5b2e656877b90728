//! Behaviour of the whole partition log: appends, reads, recovery, retention,
//! idempotence, truncation — each test names the promise it checks.

use std::fs;
use std::path::Path;

use bytes::{Bytes, BytesMut};
use kafka_protocol::records::{Compression, Record, RecordBatchEncoder, RecordEncodeOptions};
use proptest::prelude::*;

use crate::log::batch::test_batches::TestBatch;
use crate::log::batch::{BatchHeader, Batches, RecordBatch, TimestampType};
use crate::log::{AppendError, FlushScope, LogConfig, LogError, PartitionLog, ReadError};

const NOW_MS: i64 = 1_000_000;

fn small_config() -> LogConfig {
    LogConfig {
        segment_bytes: 2_000,
        index_interval_bytes: 200,
        ..LogConfig::default()
    }
}

fn batch(records: i32) -> Vec<u8> {
    TestBatch::new(records).timestamp(NOW_MS).encode()
}

fn idempotent(producer_id: i64, epoch: i16, base_sequence: i32, records: i32) -> Vec<u8> {
    TestBatch::new(records)
        .timestamp(NOW_MS)
        .idempotent(producer_id, epoch, base_sequence)
        .encode()
}

/// Offsets (base, last) of every batch in a read.
fn batch_offsets(records: &[u8]) -> Vec<(i64, i64)> {
    Batches::new(records)
        .map(|b| {
            let (_, b) = b.expect("stored batches parse");
            b.validate_crc().expect("stored batches keep a valid CRC");
            (b.header().base_offset(), b.header().last_offset())
        })
        .collect()
}

fn read_all(log: &PartitionLog, from: i64) -> Vec<(i64, i64)> {
    let info = log.read(from, usize::MAX, i64::MAX, true).expect("read");
    batch_offsets(&info.records)
}

fn segment_files(dir: &Path, suffix: &str) -> usize {
    fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(suffix)
        })
        .count()
}

#[test]
fn open_creates_the_directory_with_an_empty_segment() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("topic-0");
    let log = PartitionLog::open(&dir, LogConfig::default()).unwrap();
    assert_eq!(log.log_start_offset(), 0);
    assert_eq!(log.log_end_offset(), 0);
    assert_eq!(log.size_bytes(), 0);
    assert!(dir.join("00000000000000000000.log").exists());
    log.delete().unwrap();
    assert!(!dir.exists());
}

#[test]
fn append_assigns_consecutive_offsets_and_stamps_epoch_without_touching_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), LogConfig::default()).unwrap();
    let first = batch(3);
    let info = log.append(&first, 7, NOW_MS).unwrap();
    assert_eq!((info.base_offset, info.last_offset), (0, 2));
    assert_eq!(info.log_append_time_ms, -1);
    let info = log.append(&batch(2), 7, NOW_MS).unwrap();
    assert_eq!((info.base_offset, info.last_offset), (3, 4));
    assert_eq!(log.log_end_offset(), 5);
    let read = log.read(0, usize::MAX, i64::MAX, false).unwrap();
    let stored = RecordBatch::parse(&read.records).unwrap();
    assert_eq!(stored.header().partition_leader_epoch(), 7);
    // Bytes in, bytes out: only base offset and leader epoch differ.
    assert_eq!(&stored.as_bytes()[17..], &first[17..]);
    assert_eq!(batch_offsets(&read.records), vec![(0, 2), (3, 4)]);
}

#[test]
fn several_batches_in_one_append_get_consecutive_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), LogConfig::default()).unwrap();
    let mut records = batch(2);
    records.extend(batch(3));
    let info = log.append(&records, 0, NOW_MS).unwrap();
    assert_eq!(
        (info.base_offset, info.last_offset, info.batch_count),
        (0, 4, 2)
    );
    assert_eq!(read_all(&log, 0), vec![(0, 1), (2, 4)]);
}

#[test]
fn a_bad_batch_anywhere_rejects_the_whole_append() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), LogConfig::default()).unwrap();
    let mut records = batch(2);
    let mut bad = batch(1);
    let last = bad.len() - 1;
    bad[last] ^= 0x55;
    records.extend(bad);
    let error = log.append(&records, 0, NOW_MS).unwrap_err();
    assert_eq!(error.kafka_error_code(), 2);
    assert_eq!(log.log_end_offset(), 0);
    assert_eq!(log.size_bytes(), 0);
}

#[test]
fn records_larger_than_a_segment_are_record_list_too_large() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), small_config()).unwrap();
    let big = TestBatch::new(1)
        .timestamp(NOW_MS)
        .value_bytes(3_000)
        .encode();
    let error = log.append(&big, 0, NOW_MS).unwrap_err();
    assert!(matches!(error, AppendError::RecordListTooLarge { .. }));
    assert_eq!(error.kafka_error_code(), 18);
}

#[test]
fn log_append_time_topics_get_broker_time_and_a_valid_crc() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        message_timestamp_type: TimestampType::LogAppendTime,
        ..LogConfig::default()
    };
    let mut log = PartitionLog::open(dir.path(), config).unwrap();
    let info = log.append(&batch(2), 0, 5_555_555).unwrap();
    assert_eq!(info.log_append_time_ms, 5_555_555);
    let read = log.read(0, usize::MAX, i64::MAX, false).unwrap();
    let stored = RecordBatch::parse(&read.records).unwrap();
    stored.validate_crc().unwrap();
    assert_eq!(
        stored.header().timestamp_type(),
        TimestampType::LogAppendTime
    );
    assert_eq!(stored.header().max_timestamp(), 5_555_555);
    assert_eq!(log.max_timestamp().unwrap(), Some((0, 5_555_555)));
}

#[test]
fn segment_rolls_when_the_next_append_would_exceed_segment_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), small_config()).unwrap();
    let one = batch(5);
    let per_segment = 2_000 / one.len();
    for _ in 0..per_segment * 3 {
        log.append(&one, 0, NOW_MS).unwrap();
    }
    assert_eq!(log.segment_count(), 3);
    let bases = log.segment_base_offsets();
    assert_eq!(
        bases,
        vec![0, per_segment as i64 * 5, per_segment as i64 * 10]
    );
    assert_eq!(segment_files(dir.path(), ".log"), 3);
    assert!(dir.path().join(format!("{:020}.log", bases[1])).exists());
}

#[test]
fn segment_rolls_when_older_than_segment_ms() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        segment_ms: 60_000,
        ..LogConfig::default()
    };
    let mut log = PartitionLog::open(dir.path(), config).unwrap();
    log.append(&batch(1), 0, NOW_MS).unwrap();
    log.append(&batch(1), 0, NOW_MS + 60_000).unwrap();
    assert_eq!(log.segment_count(), 1);
    log.append(&batch(1), 0, NOW_MS + 60_001).unwrap();
    assert_eq!(log.segment_base_offsets(), vec![0, 2]);
}

#[test]
fn read_honours_max_bytes_min_one_batch_and_high_watermark() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), LogConfig::default()).unwrap();
    for _ in 0..10 {
        log.append(&batch(2), 0, NOW_MS).unwrap();
    }
    let size = batch(2).len();
    // Budget for 3.5 batches returns 3 whole ones.
    let read = log.read(0, size * 7 / 2, i64::MAX, false).unwrap();
    assert_eq!(read.records.len(), size * 3);
    assert_eq!(read.next_offset, 6);
    // A budget smaller than one batch returns nothing, unless min_one_batch.
    assert!(log.read(0, 10, i64::MAX, false).unwrap().records.is_empty());
    assert_eq!(log.read(0, 10, i64::MAX, true).unwrap().records.len(), size);
    assert_eq!(log.read(0, 0, i64::MAX, true).unwrap().batch_count, 1);
    // The high watermark stops before the batch that starts at it.
    assert_eq!(read_hw(&log, 0, 7), vec![(0, 1), (2, 3), (4, 5), (6, 7)]);
    assert_eq!(read_hw(&log, 0, 6), vec![(0, 1), (2, 3), (4, 5)]);
    assert!(read_hw(&log, 6, 6).is_empty());
    // Starting mid-batch returns the batch that holds the offset.
    assert_eq!(read_hw(&log, 5, 8), vec![(4, 5), (6, 7)]);
    // At the log end: empty, not an error; past it or below the start: out of range.
    assert!(log
        .read(20, 1000, i64::MAX, true)
        .unwrap()
        .records
        .is_empty());
    assert!(matches!(
        log.read(21, 1000, i64::MAX, true),
        Err(ReadError::OffsetOutOfRange { .. })
    ));
}

fn read_hw(log: &PartitionLog, from: i64, high_watermark: i64) -> Vec<(i64, i64)> {
    batch_offsets(
        &log.read(from, usize::MAX, high_watermark, false)
            .unwrap()
            .records,
    )
}

#[test]
fn read_crosses_segment_boundaries_while_budget_remains() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), small_config()).unwrap();
    for _ in 0..60 {
        log.append(&batch(1), 0, NOW_MS).unwrap();
    }
    assert!(log.segment_count() >= 3);
    let offsets = read_all(&log, 0);
    assert_eq!(offsets.len(), 60);
    assert!(offsets
        .iter()
        .enumerate()
        .all(|(i, o)| *o == (i as i64, i as i64)));
    // From inside the second segment, with a budget spanning into the third.
    let second = log.segment_base_offsets()[1];
    let size = batch(1).len();
    let read = log.read(second + 1, size * 30, i64::MAX, false).unwrap();
    assert_eq!(read.batch_count, 30);
    assert_eq!(batch_offsets(&read.records)[0].0, second + 1);
}

#[test]
fn oversized_first_batch_comes_whole_with_min_one_batch() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), LogConfig::default()).unwrap();
    let big = TestBatch::new(2)
        .timestamp(NOW_MS)
        .value_bytes(100_000)
        .encode();
    log.append(&big, 0, NOW_MS).unwrap();
    log.append(&batch(1), 0, NOW_MS).unwrap();
    let read = log.read(0, 1_000, i64::MAX, true).unwrap();
    assert_eq!(read.records.len(), big.len());
    assert_eq!(read.next_offset, 2);
    assert!(log
        .read(0, 1_000, i64::MAX, false)
        .unwrap()
        .records
        .is_empty());
}

#[test]
fn retried_batch_is_acknowledged_with_its_original_offsets_and_not_written_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), LogConfig::default()).unwrap();
    log.append(&batch(4), 0, NOW_MS).unwrap();
    let first = idempotent(11, 0, 0, 3);
    let original = log.append(&first, 0, NOW_MS).unwrap();
    assert_eq!((original.base_offset, original.last_offset), (4, 6));
    log.append(&idempotent(11, 0, 3, 2), 0, NOW_MS).unwrap();
    let size = log.size_bytes();
    let retry = log.append(&first, 0, NOW_MS).unwrap();
    assert!(retry.duplicate);
    assert_eq!((retry.base_offset, retry.last_offset), (4, 6));
    assert_eq!(log.size_bytes(), size);
    assert_eq!(log.log_end_offset(), 9);
    assert_eq!(log.producer_state(11), Some((0, 4)));
}

#[test]
fn sequence_gap_is_out_of_order_and_stale_epoch_is_fenced() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), LogConfig::default()).unwrap();
    log.append(&idempotent(5, 2, 0, 2), 0, NOW_MS).unwrap();
    let gap = log.append(&idempotent(5, 2, 5, 1), 0, NOW_MS).unwrap_err();
    assert_eq!(gap.kafka_error_code(), 45);
    let stale = log.append(&idempotent(5, 1, 2, 1), 0, NOW_MS).unwrap_err();
    assert_eq!(stale.kafka_error_code(), 47);
    assert_eq!(log.log_end_offset(), 2);
    assert_eq!(log.producer_state(5), Some((2, 1)));
}

#[test]
fn producer_state_survives_a_crash_and_a_clean_close() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut log = PartitionLog::open(dir.path(), small_config()).unwrap();
        for i in 0..30 {
            log.append(&idempotent(9, 3, i * 2, 2), 0, NOW_MS).unwrap();
            log.append(&idempotent(10, 0, i, 1), 0, NOW_MS).unwrap();
        }
        assert!(log.segment_count() > 1);
        // Dropped without close(): like kill -9 after the writes hit the page cache.
    }
    let mut log = PartitionLog::open(dir.path(), small_config()).unwrap();
    assert_eq!(log.producer_state(9), Some((3, 59)));
    assert_eq!(log.producer_state(10), Some((0, 29)));
    // The latest batch is still recognised as a duplicate after the reopen.
    let last = idempotent(9, 3, 58, 2);
    assert!(log.append(&last, 0, NOW_MS).unwrap().duplicate);
    assert_eq!(
        log.append(&idempotent(9, 3, 70, 1), 0, NOW_MS)
            .unwrap_err()
            .kafka_error_code(),
        45
    );
    log.append(&idempotent(9, 3, 60, 1), 0, NOW_MS).unwrap();
    log.close().unwrap();
    let log = PartitionLog::open(dir.path(), small_config()).unwrap();
    assert_eq!(log.producer_state(9), Some((3, 60)));
    // The first batch has long left the five-batch window: a late retry of it is out of order.
    let mut log = log;
    assert_eq!(
        log.append(&idempotent(9, 3, 0, 2), 0, NOW_MS)
            .unwrap_err()
            .kafka_error_code(),
        45
    );
}

#[test]
fn corrupt_producer_snapshot_is_ignored_and_state_replayed_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut log = PartitionLog::open(dir.path(), LogConfig::default()).unwrap();
        log.append(&idempotent(1, 0, 0, 1), 0, NOW_MS).unwrap();
        log.append(&idempotent(1, 0, 1, 1), 0, NOW_MS).unwrap();
        log.close().unwrap();
    }
    let snapshot = dir.path().join(format!("{:020}.snapshot", 2));
    assert!(snapshot.exists());
    fs::write(&snapshot, b"garbage").unwrap();
    let log = PartitionLog::open(dir.path(), LogConfig::default()).unwrap();
    assert_eq!(log.producer_state(1), Some((0, 1)));
    assert!(!snapshot.exists());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn recovery_keeps_every_batch_before_a_torn_or_corrupt_tail(
        batch_records in proptest::collection::vec(1i32..6, 1..25),
        cut_at in any::<prop::sample::Index>(),
        corrupt in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig { index_interval_bytes: 100, ..LogConfig::default() };
        let mut ends = Vec::new(); // (end position, next offset) after each batch
        {
            let mut log = PartitionLog::open(dir.path(), config.clone()).unwrap();
            for records in &batch_records {
                log.append(&batch(*records), 0, NOW_MS).unwrap();
                ends.push((log.size_bytes(), log.log_end_offset()));
            }
        }
        let path = dir.path().join(format!("{:020}.log", 0));
        let mut bytes = fs::read(&path).unwrap();
        let total = bytes.len();
        let cut = cut_at.index(total);
        if corrupt {
            bytes[cut] ^= 0xa5; // damage one byte, keep the length
        } else {
            bytes.truncate(cut); // torn write
        }
        fs::write(&path, &bytes).unwrap();
        // Every batch that ends at or before the damage must survive. The
        // partitionLeaderEpoch field (bytes 12..16) is covered by no checksum in
        // Kafka's format, so damage there is invisible and nothing is lost.
        let damaged_batch_start = ends
            .iter()
            .map(|(end, _)| *end as usize)
            .take_while(|end| *end <= cut)
            .last()
            .unwrap_or(0);
        let epoch_only = corrupt && (12..16).contains(&(cut - damaged_batch_start));
        let survive_below = if epoch_only { total } else { cut };
        let (survivor_bytes, survivor_end) = ends
            .iter()
            .copied()
            .take_while(|(end, _)| *end as usize <= survive_below)
            .last()
            .unwrap_or((0, 0));
        let mut log = PartitionLog::open(dir.path(), config).unwrap();
        prop_assert_eq!(log.log_end_offset(), survivor_end);
        prop_assert_eq!(log.size_bytes(), survivor_bytes);
        let read = read_all(&log, 0);
        prop_assert_eq!(read.len(), ends.iter().filter(|(end, _)| *end as usize <= survive_below).count());
        let info = log.append(&batch(2), 0, NOW_MS).unwrap();
        prop_assert_eq!(info.base_offset, survivor_end);
        prop_assert_eq!(read_all(&log, 0).last().copied(), Some((survivor_end, survivor_end + 1)));
    }

    #[test]
    fn any_offset_reads_back_the_batch_that_holds_it(
        batch_records in proptest::collection::vec(1i32..8, 1..80),
        probe in any::<prop::sample::Index>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut log = PartitionLog::open(dir.path(), small_config()).unwrap();
        let mut batches = Vec::new();
        for records in &batch_records {
            let info = log.append(&batch(*records), 0, NOW_MS).unwrap();
            batches.push((info.base_offset, info.last_offset));
        }
        let target = probe.index(log.log_end_offset() as usize) as i64;
        let holder = batches.iter().copied().find(|(b, l)| *b <= target && target <= *l).unwrap();
        let read = log.read(target, 1, i64::MAX, true).unwrap();
        prop_assert_eq!(batch_offsets(&read.records), vec![holder]);
    }

    #[test]
    fn offset_for_timestamp_finds_the_first_record_at_or_after_target(
        timestamps in proptest::collection::vec(0i64..1_000, 1..60),
        target in 0i64..1_100,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut log = PartitionLog::open(dir.path(), small_config()).unwrap();
        for ts in &timestamps {
            let records = TestBatch::new(1).timestamp(NOW_MS + ts).encode();
            log.append(&records, 0, NOW_MS).unwrap();
        }
        let expected = timestamps
            .iter()
            .position(|ts| *ts >= target)
            .map(|i| (i as i64, NOW_MS + timestamps[i]));
        prop_assert_eq!(log.offset_for_timestamp(NOW_MS + target).unwrap(), expected);
        let max = timestamps.iter().max().unwrap();
        let max_at = timestamps.iter().position(|ts| ts == max).unwrap() as i64;
        prop_assert_eq!(log.max_timestamp().unwrap(), Some((max_at, NOW_MS + max)));
    }
}

#[test]
fn offset_for_timestamp_decodes_compressed_batches_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), small_config()).unwrap();
    for round in 0..20i64 {
        let records: Vec<Record> = (0..5)
            .map(|i| Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: -1,
                producer_id: -1,
                producer_epoch: -1,
                timestamp_type: kafka_protocol::records::TimestampType::Creation,
                offset: i,
                sequence: i as i32,
                timestamp: NOW_MS + round * 100 + i * 10,
                key: None,
                value: Some(Bytes::from_static(b"payload payload payload")),
                headers: Default::default(),
            })
            .collect();
        let mut buf = BytesMut::new();
        RecordBatchEncoder::encode(
            &mut buf,
            &records,
            &RecordEncodeOptions {
                version: 2,
                compression: Compression::Lz4,
            },
        )
        .unwrap();
        log.append(&buf, 0, NOW_MS).unwrap();
    }
    assert!(log.segment_count() > 1);
    // Round 13, record 3 has timestamp NOW + 1330; 1325 falls just before it.
    assert_eq!(
        log.offset_for_timestamp(NOW_MS + 1_325).unwrap(),
        Some((13 * 5 + 3, NOW_MS + 1_330))
    );
    assert_eq!(log.offset_for_timestamp(NOW_MS + 5_000).unwrap(), None);
    assert_eq!(log.max_timestamp().unwrap(), Some((99, NOW_MS + 1_940)));
    drop(log);
    let log = PartitionLog::open(dir.path(), small_config()).unwrap();
    assert_eq!(
        log.offset_for_timestamp(NOW_MS + 1_325).unwrap(),
        Some((13 * 5 + 3, NOW_MS + 1_330))
    );
    assert_eq!(log.offset_for_timestamp(0).unwrap(), Some((0, NOW_MS)));
    assert_eq!(log.max_timestamp().unwrap(), Some((99, NOW_MS + 1_940)));
}

#[test]
fn time_retention_deletes_old_segments_but_keeps_an_active_one() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        retention_ms: 10_000,
        ..small_config()
    };
    let mut log = PartitionLog::open(dir.path(), config).unwrap();
    for i in 0..40 {
        let records = TestBatch::new(1)
            .timestamp(NOW_MS + i * 1_000)
            .value_bytes(100)
            .encode();
        log.append(&records, 0, NOW_MS + i * 1_000).unwrap();
    }
    let segments = log.segment_count();
    assert!(segments >= 3);
    // Nothing is older than 10 s yet.
    assert_eq!(log.enforce_retention(NOW_MS + 20_000).unwrap(), 0);
    // Segments whose newest record is older than 10 s before "now" go.
    let deleted = log.enforce_retention(NOW_MS + 45_000).unwrap();
    assert!(deleted > 0 && deleted < segments);
    assert_eq!(log.log_start_offset(), log.segment_base_offsets()[0]);
    assert!(log.log_start_offset() > 0);
    // Everything expired: the log keeps one empty active segment at the end.
    let end = log.log_end_offset();
    log.enforce_retention(NOW_MS + 1_000_000).unwrap();
    assert_eq!(log.segment_count(), 1);
    assert_eq!((log.log_start_offset(), log.log_end_offset()), (end, end));
    assert_eq!(log.append(&batch(1), 0, NOW_MS).unwrap().base_offset, end);
    drop(log);
    let log = PartitionLog::open(dir.path(), small_config()).unwrap();
    assert_eq!(log.log_start_offset(), end);
    assert_eq!(log.log_end_offset(), end + 1);
}

#[test]
fn size_retention_deletes_oldest_segments_until_under_retention_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        retention_bytes: 4_500,
        ..small_config()
    };
    let mut log = PartitionLog::open(dir.path(), config).unwrap();
    for _ in 0..100 {
        log.append(&batch(2), 0, NOW_MS).unwrap();
    }
    let before = log.size_bytes();
    assert!(before > 9_000);
    let deleted = log.enforce_retention(NOW_MS).unwrap();
    assert!(deleted > 0);
    assert!(log.size_bytes() <= 4_500 + 2_000, "{}", log.size_bytes());
    assert!(log.size_bytes() > 4_500 - 2_000);
    let start = log.log_start_offset();
    assert_eq!(read_all(&log, start)[0].0, start);
    assert!(matches!(
        log.read(start - 1, 100, i64::MAX, true),
        Err(ReadError::OffsetOutOfRange { .. })
    ));
}

#[test]
fn retention_never_deletes_above_the_high_watermark() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        retention_bytes: 0,
        ..small_config()
    };
    let mut log = PartitionLog::open(dir.path(), config).unwrap();
    for _ in 0..100 {
        log.append(&batch(1), 0, NOW_MS).unwrap();
    }
    let bases = log.segment_base_offsets();
    log.enforce_retention_up_to(NOW_MS, bases[1]).unwrap();
    assert_eq!(log.segment_base_offsets()[0], bases[1]);
}

#[test]
fn delete_records_before_advances_the_start_and_persists_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), small_config()).unwrap();
    for _ in 0..60 {
        log.append(&batch(1), 0, NOW_MS).unwrap();
    }
    let bases = log.segment_base_offsets();
    let target = bases[2] + 1;
    assert_eq!(log.delete_records_before(target).unwrap(), target);
    assert_eq!(log.segment_base_offsets()[0], bases[2]);
    assert_eq!(
        log.delete_records_before(3).unwrap(),
        target,
        "never moves back"
    );
    assert!(matches!(
        log.delete_records_before(61),
        Err(LogError::OffsetOutOfRange { .. })
    ));
    assert!(log.read(target - 1, 100, i64::MAX, true).is_err());
    assert_eq!(read_all(&log, target)[0], (target, target));
    drop(log);
    let mut log = PartitionLog::open(dir.path(), small_config()).unwrap();
    assert_eq!(log.log_start_offset(), target);
    assert_eq!(log.delete_records_before(60).unwrap(), 60);
    assert_eq!(log.log_end_offset(), 60);
    assert!(log
        .read(60, 100, i64::MAX, true)
        .unwrap()
        .records
        .is_empty());
}

#[test]
fn truncate_to_drops_later_records_across_segments_and_appends_continue() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), small_config()).unwrap();
    for i in 0..50 {
        log.append(&idempotent(1, 0, i * 2, 2), 0, NOW_MS).unwrap();
    }
    assert!(log.segment_count() > 2);
    let bases = log.segment_base_offsets();
    let target = bases[1] + 4;
    log.truncate_to(target).unwrap();
    assert_eq!(log.log_end_offset(), target);
    assert_eq!(log.segment_count(), 2);
    assert_eq!(
        read_all(&log, 0).last().copied(),
        Some((target - 2, target - 1))
    );
    // Producer state follows the truncation: the next sequence continues from it.
    assert_eq!(log.producer_state(1), Some((0, target as i32 - 1)));
    let info = log
        .append(&idempotent(1, 0, target as i32, 2), 0, NOW_MS)
        .unwrap();
    assert_eq!(info.base_offset, target);
    drop(log);
    let log = PartitionLog::open(dir.path(), small_config()).unwrap();
    assert_eq!(log.log_end_offset(), target + 2);
    assert_eq!(log.producer_state(1), Some((0, target as i32 + 1)));
}

#[test]
fn truncate_inside_a_batch_drops_the_whole_batch() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), LogConfig::default()).unwrap();
    log.append(&batch(5), 0, NOW_MS).unwrap();
    log.append(&batch(5), 0, NOW_MS).unwrap();
    log.truncate_to(7).unwrap();
    assert_eq!(log.log_end_offset(), 5);
    log.truncate_to(0).unwrap();
    assert_eq!((log.log_end_offset(), log.size_bytes()), (0, 0));
    assert_eq!(log.append(&batch(1), 0, NOW_MS).unwrap().base_offset, 0);
}

#[test]
fn truncate_below_the_first_segment_restarts_the_log_there() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), small_config()).unwrap();
    for _ in 0..60 {
        log.append(&batch(1), 0, NOW_MS).unwrap();
    }
    let bases = log.segment_base_offsets();
    log.delete_records_before(bases[1]).unwrap();
    log.truncate_to(bases[1] - 3).unwrap();
    assert_eq!(log.segment_count(), 1);
    assert_eq!(log.log_start_offset(), bases[1] - 3);
    assert_eq!(log.log_end_offset(), bases[1] - 3);
    assert_eq!(segment_files(dir.path(), ".log"), 1);
}

#[test]
fn follower_append_keeps_leader_offsets_and_rejects_going_backwards() {
    let dir = tempfile::tempdir().unwrap();
    let mut leader = PartitionLog::open(&dir.path().join("leader"), LogConfig::default()).unwrap();
    let mut follower =
        PartitionLog::open(&dir.path().join("follower"), LogConfig::default()).unwrap();
    leader.append(&idempotent(4, 0, 0, 3), 2, NOW_MS).unwrap();
    leader.append(&batch(2), 2, NOW_MS).unwrap();
    let fetched = leader.read(0, usize::MAX, i64::MAX, true).unwrap().records;
    let info = follower.append_as_follower(&fetched, NOW_MS).unwrap();
    assert_eq!((info.base_offset, info.last_offset), (0, 4));
    assert_eq!(
        follower
            .read(0, usize::MAX, i64::MAX, true)
            .unwrap()
            .records,
        fetched
    );
    assert_eq!(follower.producer_state(4), Some((0, 2)));
    assert!(matches!(
        follower.append_as_follower(&fetched, NOW_MS),
        Err(AppendError::UnexpectedAppendOffset { .. })
    ));
}

#[test]
fn damaged_index_of_a_sealed_segment_is_rebuilt_on_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut log = PartitionLog::open(dir.path(), small_config()).unwrap();
        for _ in 0..60 {
            log.append(&batch(1), 0, NOW_MS).unwrap();
        }
        log.close().unwrap();
    }
    let index = dir.path().join(format!("{:020}.index", 0));
    fs::write(&index, [0xee; 40]).unwrap();
    fs::remove_file(dir.path().join(format!("{:020}.timeindex", 0))).unwrap();
    let log = PartitionLog::open(dir.path(), small_config()).unwrap();
    assert_eq!(read_all(&log, 0).len(), 60);
    for offset in [0, 5, 17, 59] {
        let read = log.read(offset, 1, i64::MAX, true).unwrap();
        assert_eq!(batch_offsets(&read.records), vec![(offset, offset)]);
    }
}

#[test]
fn corruption_inside_a_sealed_segment_drops_it_from_there_on() {
    let dir = tempfile::tempdir().unwrap();
    let bases;
    {
        let mut log = PartitionLog::open(dir.path(), small_config()).unwrap();
        for _ in 0..60 {
            log.append(&batch(1), 0, NOW_MS).unwrap();
        }
        bases = log.segment_base_offsets();
    }
    // Damage the middle of the first segment and remove its index so open checks it.
    let first = dir.path().join(format!("{:020}.log", 0));
    let mut bytes = fs::read(&first).unwrap();
    let size = batch(1).len();
    bytes[size * 3 + 30] ^= 0xff;
    fs::write(&first, &bytes).unwrap();
    fs::remove_file(dir.path().join(format!("{:020}.index", 0))).unwrap();
    let mut log = PartitionLog::open(dir.path(), small_config()).unwrap();
    assert_eq!(log.log_end_offset(), 3);
    assert_eq!(log.segment_count(), 1);
    assert!(!dir.path().join(format!("{:020}.log", bases[1])).exists());
    assert_eq!(log.append(&batch(1), 0, NOW_MS).unwrap().base_offset, 3);
}

#[test]
fn stray_tmp_and_orphan_index_files_are_cleaned_on_open() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("log-start-offset.checkpoint.tmp"), b"junk").unwrap();
    fs::write(dir.path().join(format!("{:020}.index", 500)), [0u8; 8]).unwrap();
    let log = PartitionLog::open(dir.path(), LogConfig::default()).unwrap();
    assert!(!dir.path().join("log-start-offset.checkpoint.tmp").exists());
    assert!(!dir.path().join(format!("{:020}.index", 500)).exists());
    assert_eq!(log.log_end_offset(), 0);
}

#[test]
fn checkpointed_start_beyond_recovered_end_restarts_empty_at_the_start() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut log = PartitionLog::open(dir.path(), LogConfig::default()).unwrap();
        for _ in 0..10 {
            log.append(&batch(1), 0, NOW_MS).unwrap();
        }
        log.delete_records_before(8).unwrap();
    }
    // Simulate losing unflushed data: the segment ends before the start offset.
    let path = dir.path().join(format!("{:020}.log", 0));
    let bytes = fs::read(&path).unwrap();
    fs::write(&path, &bytes[..batch(1).len() * 5]).unwrap();
    let mut log = PartitionLog::open(dir.path(), LogConfig::default()).unwrap();
    assert_eq!((log.log_start_offset(), log.log_end_offset()), (8, 8));
    assert_eq!(log.append(&batch(1), 0, NOW_MS).unwrap().base_offset, 8);
}

#[test]
fn flush_and_config_changes_apply_to_the_next_append() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), LogConfig::default()).unwrap();
    log.append(&batch(1), 0, NOW_MS).unwrap();
    log.flush().unwrap();
    log.set_config(LogConfig {
        max_message_bytes: 50,
        ..LogConfig::default()
    });
    assert_eq!(
        log.append(&batch(1), 0, NOW_MS)
            .unwrap_err()
            .kafka_error_code(),
        10
    );
    let one = batch(1);
    assert!(BatchHeader::parse(&one).unwrap().size_bytes() > 50);
}

#[test]
fn segment_rolls_when_its_index_is_full() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        segment_index_bytes: 24, // three offset entries, two time entries
        index_interval_bytes: 0,
        ..LogConfig::default()
    };
    let mut log = PartitionLog::open(dir.path(), config).unwrap();
    for i in 0..12 {
        let records = TestBatch::new(1).timestamp(NOW_MS + i).encode();
        log.append(&records, 0, NOW_MS).unwrap();
    }
    assert!(log.segment_count() >= 3, "{:?}", log.segment_base_offsets());
    assert_eq!(read_all(&log, 0).len(), 12);
}

#[test]
fn partition_log_can_be_shared_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<PartitionLog>();
}

#[test]
fn a_captured_flush_holds_only_files_changed_since_the_last_capture() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), small_config()).unwrap();
    assert!(
        log.take_unflushed(FlushScope::All).unwrap().is_empty(),
        "a new log has written nothing"
    );
    log.append(&batch(20), 0, NOW_MS).unwrap();
    drop(log);
    // A recovered log may hold an earlier process's unsynced writes.
    let mut log = PartitionLog::open(dir.path(), small_config()).unwrap();
    assert!(!log.take_unflushed(FlushScope::All).unwrap().is_empty());
    assert!(
        log.take_unflushed(FlushScope::All).unwrap().is_empty(),
        "nothing changed since the last capture"
    );
    // Past small_config's index.interval.bytes, so index entries are written.
    for _ in 0..5 {
        log.append(&batch(20), 0, NOW_MS).unwrap();
    }
    assert!(
        !log.take_unflushed(FlushScope::Data).unwrap().is_empty(),
        "an append makes the segment data dirty"
    );
    assert!(
        log.take_unflushed(FlushScope::Data).unwrap().is_empty(),
        "the data was captured"
    );
    // The indexes are still waiting for the periodic (All) flush.
    let flush = log.take_unflushed(FlushScope::All).unwrap();
    assert!(!flush.is_empty(), "the append wrote index entries");
    // The sync works on the shared handles, without the log.
    flush.sync().unwrap();
    assert!(log.take_unflushed(FlushScope::All).unwrap().is_empty());
    log.truncate_to(1).unwrap();
    assert!(
        !log.take_unflushed(FlushScope::All).unwrap().is_empty(),
        "a truncation changes the files too"
    );
    log.mark_offline();
    assert!(
        log.take_unflushed(FlushScope::All).is_err(),
        "an offline log refuses to flush"
    );
}

#[test]
fn after_a_clean_shutdown_the_active_segment_loads_unrecovered_with_the_same_state() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), small_config()).unwrap();
    for i in 0..25 {
        log.append(&idempotent(7, 1, i * 3, 3), 0, NOW_MS + i64::from(i))
            .unwrap();
    }
    assert!(log.segment_count() > 1);
    let (end, segments, records) = (
        log.log_end_offset(),
        log.segment_base_offsets(),
        read_all(&log, 0),
    );
    log.close().unwrap();

    let mut log = PartitionLog::open_after_clean_shutdown(dir.path(), small_config()).unwrap();
    assert_eq!(log.log_end_offset(), end);
    assert_eq!(log.segment_base_offsets(), segments);
    assert_eq!(read_all(&log, 0), records);
    assert_eq!(log.producer_state(7), Some((1, 74)));
    assert!(
        log.append(&idempotent(7, 1, 72, 3), 0, NOW_MS)
            .unwrap()
            .duplicate
    );
    let next = log.append(&batch(2), 0, NOW_MS).unwrap();
    assert_eq!(next.base_offset, end);
    log.close().unwrap();
}

#[test]
fn a_clean_shutdown_marker_does_not_hide_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), LogConfig::default()).unwrap();
    for _ in 0..10 {
        log.append(&batch(2), 0, NOW_MS).unwrap();
    }
    log.close().unwrap();
    let active = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "log"))
        .unwrap();
    let len = fs::metadata(&active).unwrap().len();
    // Half a batch after the last complete one, beyond the last index entry.
    let file = fs::OpenOptions::new().write(true).open(&active).unwrap();
    file.set_len(len - 20).unwrap();
    let log = PartitionLog::open_after_clean_shutdown(dir.path(), LogConfig::default()).unwrap();
    assert_eq!(log.log_end_offset(), 18);
    assert_eq!(read_all(&log, 0).last(), Some(&(16, 17)));
}
