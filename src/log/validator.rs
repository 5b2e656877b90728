//! Checking a produce request's batches before any byte is written, like
//! Kafka's `UnifiedLog.analyzeAndValidateRecords` and `LogValidator`.
//!
//! Two passes, both before the partition lock is taken (see
//! [`validate_produce`]):
//! 1. Headers and CRCs of every batch ([`validate_records`]), the only pass
//!    replicated appends get (as Kafka's `appendAsFollower`).
//! 2. For client batches, every record: decompressed as a stream within
//!    [`DECOMPRESSED_BYTES_MAX`], walked field by field (see `records`), and
//!    checked for count, offset deltas, timestamps, keys on compacted topics
//!    and `maxTimestamp`. Rule-breaking records are collected like Kafka's
//!    `processRecordErrors` (per-record errors for Produce v8+). If the topic's
//!    `compression.type` names another codec, the walk also feeds the records
//!    to that codec's compressor and the batch is rebuilt.
//!
//! A request is all-or-nothing per partition: the append happens only if
//! every batch passes. Uncompressed batches are walked in place with no
//! allocation, which is the hot path.

use std::borrow::Cow;
use std::io::Write as _;

use crate::log::batch::{
    BatchError, BatchHeader, BatchSummary, Batches, CompressionCodec, RecordBatch, RecordBatchMut,
    TimestampType, HEADER_BYTES, NO_TIMESTAMP,
};
use crate::log::codec::{target_codec, CappedVec, Decoder, Encoder, DECOMPRESSED_BYTES_MAX};
use crate::log::config::LogConfig;
use crate::log::error::{AppendError, RecordError, RECORD_ERRORS_MAX};
use crate::log::producer_state::AppendOrigin;
use crate::log::records::{
    RecordInfo, RecordReader, RecordSource, SliceSource, StreamSource, RECORD_BYTES_MIN,
};

/// A batch that passed validation, with its position in the (possibly
/// rebuilt) request buffer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct ValidatedBatch {
    pub position: usize,
    pub summary: BatchSummary,
}

/// A client's batches that passed every produce check, ready to be stamped
/// and written by [`PartitionLog::append_validated`](crate::log::PartitionLog::append_validated).
///
/// Only this module makes one, so holding one proves the checks ran; that is
/// what lets the expensive record walk run before the partition lock is
/// taken. The bytes are the request's own (borrowed) unless the topic's
/// `compression.type` made the broker rebuild a batch.
#[derive(Debug)]
pub struct ValidatedRecords<'a> {
    pub(crate) bytes: Cow<'a, [u8]>,
    pub(crate) batches: Vec<ValidatedBatch>,
}

impl ValidatedRecords<'_> {
    /// Bytes that will be written.
    pub fn size_bytes(&self) -> usize {
        self.bytes.len()
    }

    /// Whether any batch was rebuilt with the topic's codec.
    pub fn is_rebuilt(&self) -> bool {
        matches!(self.bytes, Cow::Owned(_))
    }

    /// The owned form, to hand to the partition's Raft group: `request`
    /// must be the buffer these records were validated from (shared, not
    /// copied, unless a batch was rebuilt).
    pub fn into_owned(self, request: &bytes::Bytes) -> Validated {
        let bytes = match self.bytes {
            Cow::Borrowed(_) => request.clone(),
            Cow::Owned(rebuilt) => bytes::Bytes::from(rebuilt),
        };
        Validated {
            bytes,
            batches: self.batches,
        }
    }
}

/// [`ValidatedRecords`] that own their bytes, so they can wait in a queue
/// (a Raft proposal) before the log stamps them. Only made from a
/// `ValidatedRecords`, so holding one still proves the checks ran.
#[derive(Clone, Debug, PartialEq)]
pub struct Validated {
    bytes: bytes::Bytes,
    batches: Vec<ValidatedBatch>,
}

impl Validated {
    /// The records to write (the request's, or rebuilt).
    pub fn bytes(&self) -> &bytes::Bytes {
        &self.bytes
    }

    /// Borrowed again, for [`PartitionLog::append_validated`](crate::log::PartitionLog::append_validated).
    pub fn as_records(&self) -> ValidatedRecords<'_> {
        ValidatedRecords {
            bytes: Cow::Borrowed(&self.bytes),
            batches: self.batches.clone(),
        }
    }
}

fn corrupt(position: usize, reason: impl Into<String>) -> AppendError {
    AppendError::CorruptMessage {
        position,
        reason: reason.into(),
    }
}

fn invalid(position: usize, reason: impl Into<String>) -> AppendError {
    AppendError::InvalidRecord {
        position,
        reason: reason.into(),
    }
}

/// Every produce check on a client's `records` (headers, CRCs, every
/// record), and the rebuild for the topic's `compression.type`. Needs only the
/// config and the clock, so it runs without the partition lock.
pub fn validate_produce<'a>(
    records: &'a [u8],
    config: &LogConfig,
    now_ms: i64,
) -> Result<ValidatedRecords<'a>, AppendError> {
    let batches = validate_records(records, config, AppendOrigin::Client)?;
    let mut rebuilt: Vec<(usize, Vec<u8>)> = Vec::new();
    for (i, batch) in batches.iter().enumerate() {
        let bytes = &records[batch.position..batch.position + batch.summary.size_bytes];
        let view = RecordBatch::parse(bytes).map_err(|e| corrupt(batch.position, e.to_string()))?;
        if let Some(new) = validate_batch_records(batch.position, &view, config, now_ms)? {
            rebuilt.push((i, new));
        }
    }
    if rebuilt.is_empty() {
        return Ok(ValidatedRecords {
            bytes: Cow::Borrowed(records),
            batches,
        });
    }
    reassemble(records, &batches, rebuilt)
}

/// The request's batches with the rebuilt ones swapped in, re-indexed.
fn reassemble<'a>(
    records: &[u8],
    batches: &[ValidatedBatch],
    rebuilt: Vec<(usize, Vec<u8>)>,
) -> Result<ValidatedRecords<'a>, AppendError> {
    let bytes = if batches.len() == 1 {
        // The common case (Kafka allows one batch per partition): no copy.
        rebuilt
            .into_iter()
            .next()
            .map(|(_, b)| b)
            .unwrap_or_default()
    } else {
        let mut out = Vec::new();
        let mut rebuilt = rebuilt.into_iter().peekable();
        for (i, batch) in batches.iter().enumerate() {
            match rebuilt.next_if(|(j, _)| *j == i) {
                Some((_, new)) => out.extend_from_slice(&new),
                None => out.extend_from_slice(
                    &records[batch.position..batch.position + batch.summary.size_bytes],
                ),
            }
        }
        out
    };
    let mut reindexed = Vec::with_capacity(batches.len());
    for item in Batches::new(&bytes) {
        let (position, batch) = item.map_err(|e| corrupt(0, e.to_string()))?;
        reindexed.push(ValidatedBatch {
            position,
            summary: batch.header().summary(),
        });
    }
    debug_assert_eq!(reindexed.len(), batches.len());
    Ok(ValidatedRecords {
        bytes: Cow::Owned(bytes),
        batches: reindexed,
    })
}

/// Validates every batch header of `records`. Client appends get the full set of
/// header-level produce checks; replicated appends (from our own leader) only the
/// integrity checks, as Kafka's `appendAsFollower` does.
pub(crate) fn validate_records(
    records: &[u8],
    config: &LogConfig,
    origin: AppendOrigin,
) -> Result<Vec<ValidatedBatch>, AppendError> {
    if records.is_empty() {
        return Err(invalid(0, "no record batches"));
    }
    let mut batches = Vec::new();
    let mut walk = Batches::new(records);
    for item in &mut walk {
        let position = walk_position(&batches);
        let (position, batch) = item.map_err(|error| match error {
            BatchError::UnsupportedMagic { magic } if magic == 0 || magic == 1 => {
                AppendError::UnsupportedForMessageFormat { magic }
            }
            other => corrupt(position, other.to_string()),
        })?;
        let header = batch.header();
        let summary = header.summary();
        if origin == AppendOrigin::Client && summary.size_bytes > config.max_message_bytes as usize
        {
            return Err(AppendError::MessageTooLarge {
                batch_bytes: summary.size_bytes,
                max_message_bytes: config.max_message_bytes,
            });
        }
        batch
            .validate_crc()
            .map_err(|error| corrupt(position, error.to_string()))?;
        if summary.last_offset_delta < 0 {
            return Err(invalid(position, "negative lastOffsetDelta"));
        }
        if origin == AppendOrigin::Client {
            validate_client_batch(
                position,
                &summary,
                batch.records_bytes().len(),
                header.compression(),
            )?;
        }
        batches.push(ValidatedBatch { position, summary });
    }
    Ok(batches)
}

/// Position of the batch about to be parsed (for error messages).
fn walk_position(batches: &[ValidatedBatch]) -> usize {
    batches
        .last()
        .map_or(0, |b| b.position + b.summary.size_bytes)
}

/// The header-level checks of Kafka's `LogValidator.validateBatch`, plus the
/// attributes Fjord cannot honour yet.
fn validate_client_batch(
    position: usize,
    summary: &BatchSummary,
    records_bytes: usize,
    codec: Option<CompressionCodec>,
) -> Result<(), AppendError> {
    let Some(codec) = codec else {
        return Err(corrupt(position, "unknown compression codec"));
    };
    // Kafka's LogValidator: count must match the offset range.
    if summary.records_count <= 0 {
        return Err(invalid(
            position,
            format!("invalid record count {}", summary.records_count),
        ));
    }
    if summary.records_count as i64 != summary.last_offset_delta as i64 + 1 {
        return Err(invalid(
            position,
            format!(
                "recordsCount {} does not match lastOffsetDelta {}",
                summary.records_count, summary.last_offset_delta
            ),
        ));
    }
    // Records cannot be smaller than RECORD_BYTES_MIN: an uncompressed batch
    // cannot hold more than its bytes allow, a compressed one more than the
    // decompression budget allows. Cheap, and it refuses a batch claiming
    // billions of records before anything is decompressed.
    let room_bytes = if codec == CompressionCodec::None {
        records_bytes
    } else {
        DECOMPRESSED_BYTES_MAX
    };
    if summary.records_count as usize > room_bytes / RECORD_BYTES_MIN {
        return Err(invalid(
            position,
            format!(
                "{} records cannot fit in {room_bytes} bytes",
                summary.records_count
            ),
        ));
    }
    if summary.is_control() {
        return Err(invalid(
            position,
            "control batches cannot be produced by clients",
        ));
    }
    if summary.is_transactional() {
        return Err(invalid(
            position,
            "transactional batches are not supported yet: Fjord has no transaction coordinator",
        ));
    }
    if summary.has_producer_id() && summary.base_sequence < 0 {
        return Err(invalid(
            position,
            format!(
                "invalid sequence {} for producer {}",
                summary.base_sequence, summary.producer_id
            ),
        ));
    }
    Ok(())
}

/// Walks every record of one client batch and checks it; returns the batch
/// rebuilt with the topic's codec if `compression.type` asks for one that
/// differs from the batch's (same codec: kept in place, as Kafka does).
fn validate_batch_records(
    position: usize,
    batch: &RecordBatch<'_>,
    config: &LogConfig,
    now_ms: i64,
) -> Result<Option<Vec<u8>>, AppendError> {
    let header = batch.header();
    let Some(codec) = header.compression() else {
        return Err(corrupt(position, "unknown compression codec"));
    };
    let target = target_codec(config.compression).filter(|target| *target != codec);
    let mut encoder = match target {
        None => None,
        Some(_) => {
            // Room for the header, which is filled in once the records are in.
            let out =
                CappedVec::with_prefix(&[0u8; HEADER_BYTES], config.max_message_bytes as usize);
            Encoder::new(config.compression, out)
                .map_err(|e| invalid(position, format!("cannot recompress: {e}")))?
        }
    };
    let records_count = header.records_count().max(0) as usize;
    let body_bytes_max = config.max_decompressed_message_bytes as usize;
    let mut checker = RecordChecker::new(&header, config, now_ms);
    let records = batch.records_bytes();
    let decoder = Decoder::new(codec, records, DECOMPRESSED_BYTES_MAX)
        .map_err(|e| invalid(position, format!("cannot decompress the records: {e}")))?;
    match decoder {
        None => {
            let mut reader = RecordReader::new(SliceSource::new(records), body_bytes_max);
            walk(position, &mut reader, records_count, &mut checker)?;
            if !reader.into_source().is_empty() {
                return Err(trailing(position, records_count));
            }
            if let Some(encoder) = encoder.as_mut() {
                // A CappedVec never fails; the encoders only pass its errors on.
                encoder
                    .write_all(records)
                    .map_err(|e| invalid(position, format!("cannot recompress: {e}")))?;
            }
        }
        Some(decoder) => {
            let tee = encoder.as_mut().map(|e| e as &mut dyn std::io::Write);
            let mut reader = RecordReader::new(StreamSource::new(decoder, tee), body_bytes_max);
            walk(position, &mut reader, records_count, &mut checker)?;
            let ended = reader
                .into_source()
                .finish()
                .map_err(|e| invalid(position, format!("cannot decompress the records: {e}")))?;
            if !ended {
                return Err(trailing(position, records_count));
            }
        }
    }
    checker.finish(position, &header)?;
    let (Some(encoder), Some(target)) = (encoder, target) else {
        return Ok(None);
    };
    let rebuilt = encoder
        .finish()
        .map_err(|e| invalid(position, format!("cannot recompress: {e}")))?;
    let mut rebuilt = rebuilt.map_err(|batch_bytes| AppendError::MessageTooLarge {
        batch_bytes,
        max_message_bytes: config.max_message_bytes,
    })?;
    RecordBatchMut::rebuild_header(&mut rebuilt, header.as_bytes(), target)
        .map_err(|e| invalid(position, format!("cannot rebuild the batch: {e}")))?;
    debug_assert!(RecordBatch::parse(&rebuilt).is_ok_and(|b| b.validate_crc().is_ok()));
    Ok(Some(rebuilt))
}

fn trailing(position: usize, records_count: usize) -> AppendError {
    invalid(
        position,
        format!("bytes left after the {records_count} records the header declares"),
    )
}

/// Reads exactly `records_count` records, checking each.
fn walk<S: RecordSource>(
    position: usize,
    reader: &mut RecordReader<S>,
    records_count: usize,
    checker: &mut RecordChecker,
) -> Result<(), AppendError> {
    for index in 0..records_count {
        match reader.next_record() {
            Ok(Some(record)) => checker.check(index, &record),
            Ok(None) => {
                return Err(invalid(
                    position,
                    format!("the batch holds {index} records, its header declares {records_count}"),
                ))
            }
            Err(error) => return Err(invalid(position, error.to_string())),
        }
    }
    Ok(())
}

/// Kafka's `LogValidator.validateRecord` for one batch: keeps the record
/// errors (at most [`RECORD_ERRORS_MAX`]) and the largest timestamp seen.
struct RecordChecker {
    base_timestamp: i64,
    /// The producer set attribute bit 3, which only the broker may set.
    log_append_time_bit: bool,
    /// The topic is CreateTime: record timestamps are checked and kept.
    create_time: bool,
    compact: bool,
    /// Accepted CreateTime range, saturated.
    timestamp_min_ms: i64,
    timestamp_max_ms: i64,
    max_timestamp: i64,
    errors: Vec<RecordError>,
    errors_total: usize,
    invalid_timestamp: bool,
}

impl RecordChecker {
    fn new(header: &BatchHeader<'_>, config: &LogConfig, now_ms: i64) -> Self {
        RecordChecker {
            base_timestamp: header.base_timestamp(),
            log_append_time_bit: header.timestamp_type() == TimestampType::LogAppendTime,
            create_time: config.message_timestamp_type == TimestampType::CreateTime,
            compact: config.compact,
            timestamp_min_ms: now_ms.saturating_sub(config.message_timestamp_before_max_ms),
            timestamp_max_ms: now_ms.saturating_add(config.message_timestamp_after_max_ms),
            max_timestamp: NO_TIMESTAMP,
            errors: Vec::new(),
            errors_total: 0,
            invalid_timestamp: false,
        }
    }

    #[inline]
    fn check(&mut self, index: usize, record: &RecordInfo) {
        let timestamp = self.base_timestamp.saturating_add(record.timestamp_delta);
        self.max_timestamp = self.max_timestamp.max(timestamp);
        // One error per record, in Kafka's order: offsets, key, timestamp.
        if record.offset_delta as i64 != index as i64 {
            self.reject(index, false, || {
                format!(
                    "offsetDelta {} where {index} was expected (deltas count 0, 1, 2, ...)",
                    record.offset_delta
                )
            });
        } else if self.compact && !record.has_key {
            self.reject(index, false, || {
                "a compacted topic cannot accept a record without a key".to_string()
            });
        } else if self.log_append_time_bit {
            self.reject(index, true, || {
                "producers must not set the LogAppendTime timestamp type; the broker stamps it"
                    .to_string()
            });
        } else if self.create_time && timestamp < NO_TIMESTAMP {
            self.reject(index, true, || {
                format!("timestamp {timestamp} is invalid (only -1 means no timestamp)")
            });
        } else if self.create_time
            && timestamp != NO_TIMESTAMP
            && !(self.timestamp_min_ms..=self.timestamp_max_ms).contains(&timestamp)
        {
            let (min, max) = (self.timestamp_min_ms, self.timestamp_max_ms);
            self.reject(index, true, || {
                format!(
                    "timestamp {timestamp} is outside the accepted range [{min}, {max}] \
                     (message.timestamp.before.max.ms / message.timestamp.after.max.ms)"
                )
            });
        }
    }

    #[cold]
    fn reject(&mut self, index: usize, timestamp: bool, message: impl FnOnce() -> String) {
        self.errors_total += 1;
        self.invalid_timestamp |= timestamp;
        if self.errors.len() < RECORD_ERRORS_MAX {
            self.errors.push(RecordError {
                batch_index: i32::try_from(index).unwrap_or(i32::MAX),
                message: message(),
            });
        }
    }

    /// After the walk: the record errors, then the header's maxTimestamp.
    fn finish(self, position: usize, header: &BatchHeader<'_>) -> Result<(), AppendError> {
        if self.errors_total > 0 {
            return Err(AppendError::RecordErrors {
                invalid_timestamp: self.invalid_timestamp,
                record_errors: self.errors,
                record_errors_total: self.errors_total,
            });
        }
        // LogAppendTime topics overwrite maxTimestamp; CreateTime keeps it, so
        // it must be what readers (and the time index) would compute.
        if self.create_time && header.max_timestamp() != self.max_timestamp {
            return Err(invalid(
                position,
                format!(
                    "maxTimestamp {} is not the largest record timestamp {}",
                    header.max_timestamp(),
                    self.max_timestamp
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::batch::test_batches::TestBatch;
    use crate::log::batch::{ATTRIBUTE_CONTROL, ATTRIBUTE_TRANSACTIONAL, LOG_OVERHEAD_BYTES};
    use crate::log::config::BrokerCompression;
    use crate::log::kafka_code;
    use bytes::{BufMut as _, Bytes, BytesMut};
    use kafka_protocol::compression::{Compressor as _, Gzip, Lz4, Snappy, Zstd};
    use kafka_protocol::records::{
        Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions,
    };
    use proptest::prelude::*;

    const NOW_MS: i64 = 1_000;

    fn validate(records: &[u8]) -> Result<ValidatedRecords<'_>, AppendError> {
        validate_produce(records, &LogConfig::default(), NOW_MS)
    }

    fn code(records: &[u8]) -> i16 {
        validate(records).unwrap_err().kafka_error_code()
    }

    fn with_config(config: &LogConfig, records: &[u8]) -> Result<Vec<u8>, AppendError> {
        validate_produce(records, config, NOW_MS).map(|v| v.bytes.into_owned())
    }

    fn record_error_indexes(error: &AppendError) -> Vec<i32> {
        match error {
            AppendError::RecordErrors { record_errors, .. } => {
                record_errors.iter().map(|e| e.batch_index).collect()
            }
            other => panic!("expected record errors, got {other}"),
        }
    }

    /// Rewrites a batch's header fields at `at` and refreshes the CRC.
    fn patch(mut batch: Vec<u8>, at: usize, bytes: &[u8]) -> Vec<u8> {
        batch[at..at + bytes.len()].copy_from_slice(bytes);
        RecordBatchMut::new(&mut batch).unwrap().refresh_crc();
        batch
    }

    /// Replaces the records of `batch` by `records` (codec bits unchanged).
    fn with_records(batch: &[u8], records: &[u8]) -> Vec<u8> {
        let mut out = batch[..HEADER_BYTES].to_vec();
        out.extend_from_slice(records);
        let length = (out.len() - LOG_OVERHEAD_BYTES) as i32;
        out[8..12].copy_from_slice(&length.to_be_bytes());
        RecordBatchMut::new(&mut out).unwrap().refresh_crc();
        out
    }

    fn compress(codec: CompressionCodec, plain: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        let fill = |b: &mut BytesMut| {
            b.put_slice(plain);
            Ok(())
        };
        match codec {
            CompressionCodec::None => out.put_slice(plain),
            CompressionCodec::Gzip => Gzip::compress(&mut out, fill).unwrap(),
            CompressionCodec::Snappy => Snappy::compress(&mut out, fill).unwrap(),
            CompressionCodec::Lz4 => Lz4::compress(&mut out, fill).unwrap(),
            CompressionCodec::Zstd => Zstd::compress(&mut out, fill).unwrap(),
        }
        out.to_vec()
    }

    /// A hand-built batch whose records are compressed with `codec`.
    fn compressed(spec: &TestBatch, codec: CompressionCodec) -> Vec<u8> {
        let plain = spec.encode();
        let mut batch = with_records(&plain, &compress(codec, &plain[HEADER_BYTES..]));
        let attributes = spec.attributes | codec.id() as i16;
        batch = patch(batch, 21, &attributes.to_be_bytes());
        batch
    }

    const CODECS: [CompressionCodec; 5] = [
        CompressionCodec::None,
        CompressionCodec::Gzip,
        CompressionCodec::Snappy,
        CompressionCodec::Lz4,
        CompressionCodec::Zstd,
    ];

    fn kafka_records(count: i64, keyed: bool, timestamp: i64) -> Vec<Record> {
        (0..count)
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
                timestamp: timestamp + i,
                key: keyed.then(|| Bytes::from(format!("key-{i}"))),
                value: Some(Bytes::from(format!(
                    "value-{i}-{}",
                    "v".repeat(i as usize % 50)
                ))),
                headers: Default::default(),
            })
            .collect()
    }

    fn kafka_batch(records: &[Record], compression: Compression) -> Vec<u8> {
        let mut buf = BytesMut::new();
        RecordBatchEncoder::encode(
            &mut buf,
            records,
            &RecordEncodeOptions {
                version: 2,
                compression,
            },
        )
        .unwrap();
        buf.to_vec()
    }

    #[test]
    fn accepts_several_good_batches_in_place() {
        let mut records = TestBatch::new(3).encode();
        records.extend(TestBatch::new(2).encode());
        let validated = validate(&records).unwrap();
        assert!(!validated.is_rebuilt());
        assert_eq!(validated.batches.len(), 2);
        assert_eq!(
            validated.batches[1].position,
            validated.batches[0].summary.size_bytes
        );
    }

    #[test]
    fn accepts_good_batches_in_every_codec() {
        for codec in CODECS {
            let batch = compressed(&TestBatch::new(20), codec);
            assert!(validate(&batch).is_ok(), "{codec:?}");
        }
    }

    #[test]
    fn rejects_a_bad_crc_anywhere_in_the_request() {
        let mut records = TestBatch::new(3).encode();
        let mut second = TestBatch::new(2).encode();
        let last = second.len() - 1;
        second[last] ^= 1;
        records.extend(second);
        assert_eq!(code(&records), kafka_code::CORRUPT_MESSAGE);
    }

    #[test]
    fn old_magic_is_unsupported_for_message_format() {
        let mut records = TestBatch::new(1).encode();
        records[16] = 1;
        assert_eq!(code(&records), kafka_code::UNSUPPORTED_FOR_MESSAGE_FORMAT);
        records[16] = 7;
        assert_eq!(code(&records), kafka_code::CORRUPT_MESSAGE);
    }

    #[test]
    fn batch_length_beyond_buffer_is_corrupt() {
        let records = TestBatch::new(3).encode();
        assert_eq!(
            code(&records[..records.len() - 1]),
            kafka_code::CORRUPT_MESSAGE
        );
    }

    #[test]
    fn oversized_batch_is_message_too_large() {
        let records = TestBatch::new(1).value_bytes(2_000).encode();
        let config = LogConfig {
            max_message_bytes: 1_000,
            ..LogConfig::default()
        };
        let error = with_config(&config, &records).unwrap_err();
        assert_eq!(error.kafka_error_code(), kafka_code::MESSAGE_TOO_LARGE);
    }

    #[test]
    fn count_must_match_offset_delta() {
        let records = patch(TestBatch::new(3).encode(), 57, &5i32.to_be_bytes());
        assert_eq!(code(&records), kafka_code::INVALID_RECORD);
    }

    #[test]
    fn count_above_or_below_the_records_is_invalid_in_every_codec() {
        for codec in CODECS {
            let batch = compressed(&TestBatch::new(3), codec);
            // Claims 4 records, holds 3.
            let more = patch(batch.clone(), 23, &3i32.to_be_bytes());
            let more = patch(more, 57, &4i32.to_be_bytes());
            assert_eq!(code(&more), kafka_code::INVALID_RECORD, "{codec:?} more");
            // Claims 2 records, holds 3 (max timestamp of the first two).
            let fewer = patch(batch, 23, &1i32.to_be_bytes());
            let fewer = patch(fewer, 57, &2i32.to_be_bytes());
            let fewer = patch(fewer, 35, &1_001i64.to_be_bytes());
            let error = validate(&fewer).unwrap_err();
            assert_eq!(
                error.kafka_error_code(),
                kafka_code::INVALID_RECORD,
                "{codec:?}"
            );
            assert!(
                error.to_string().contains("bytes left"),
                "{codec:?}: {error}"
            );
        }
    }

    #[test]
    fn uncompressed_batch_cannot_claim_more_records_than_bytes() {
        let claimed = 1_000_000i32;
        let records = patch(TestBatch::new(1).encode(), 23, &(claimed - 1).to_be_bytes());
        let records = patch(records, 57, &claimed.to_be_bytes());
        assert_eq!(code(&records), kafka_code::INVALID_RECORD);
    }

    #[test]
    fn compressed_batch_claiming_i32_max_records_is_invalid_before_decompressing() {
        let batch = compressed(&TestBatch::new(1), CompressionCodec::Gzip);
        let batch = patch(batch, 23, &(i32::MAX - 1).to_be_bytes());
        let batch = patch(batch, 57, &i32::MAX.to_be_bytes());
        let error = validate(&batch).unwrap_err();
        assert_eq!(error.kafka_error_code(), kafka_code::INVALID_RECORD);
        assert!(error.to_string().contains("cannot fit"), "{error}");
    }

    #[test]
    fn garbage_compressed_data_is_invalid_record_in_every_codec() {
        let garbage: Vec<u8> = (0..200u32).map(|i| (i * 37 % 256) as u8).collect();
        for codec in &CODECS[1..] {
            let batch = compressed(&TestBatch::new(3), *codec);
            let bad = with_records(&batch, &garbage);
            assert_eq!(code(&bad), kafka_code::INVALID_RECORD, "{codec:?} garbage");
            // Valid compression of garbage records.
            let bad = with_records(&batch, &compress(*codec, &garbage));
            assert_eq!(code(&bad), kafka_code::INVALID_RECORD, "{codec:?} records");
        }
    }

    #[test]
    fn a_compression_bomb_is_refused_at_the_budget() {
        // One record whose value is 65 MiB of zeros: a small zstd batch.
        let value_bytes = DECOMPRESSED_BYTES_MAX + 1024;
        let spec = TestBatch::new(1).value_bytes(value_bytes);
        let batch = compressed(&spec, CompressionCodec::Zstd);
        assert!(batch.len() < 100_000, "bomb is {} bytes", batch.len());
        let error = validate(&batch).unwrap_err();
        assert_eq!(error.kafka_error_code(), kafka_code::INVALID_RECORD);
        assert!(error.to_string().contains("decompress"), "{error}");
    }

    #[test]
    fn a_record_above_max_decompressed_message_bytes_is_invalid_before_it_is_read() {
        let batch = compressed(&TestBatch::new(2).value_bytes(5_000), CompressionCodec::Lz4);
        let config = LogConfig {
            max_decompressed_message_bytes: 4_000,
            ..LogConfig::default()
        };
        let error = with_config(&config, &batch).unwrap_err();
        assert_eq!(error.kafka_error_code(), kafka_code::INVALID_RECORD);
        assert!(
            error.to_string().contains("max.decompressed.message.bytes"),
            "{error}"
        );
        assert!(with_config(&LogConfig::default(), &batch).is_ok());
    }

    #[test]
    fn offset_deltas_must_count_from_zero() {
        // TestBatch writes offsetDelta = index; rebuild record 1 with delta 0.
        let good = TestBatch::new(3).encode();
        let mut records = good[HEADER_BYTES..].to_vec();
        let first_length = records[0] as usize / 2 + 1;
        // Record 1 starts after record 0; its offsetDelta byte is at +3
        // (length, attributes, timestampDelta).
        let at = first_length + 3;
        assert_eq!(records[at], 2, "zigzag(1)");
        records[at] = 0;
        let error = validate(&with_records(&good, &records)).unwrap_err();
        assert_eq!(error.kafka_error_code(), kafka_code::INVALID_RECORD);
        assert_eq!(record_error_indexes(&error), [1]);
    }

    #[test]
    fn control_and_transactional_batches_from_clients_are_invalid() {
        for attributes in [ATTRIBUTE_CONTROL, ATTRIBUTE_TRANSACTIONAL] {
            let mut spec = TestBatch::new(1).idempotent(5, 0, 0);
            spec.attributes = attributes;
            let error = validate(&spec.encode()).unwrap_err();
            assert_eq!(error.kafka_error_code(), kafka_code::INVALID_RECORD);
        }
        let mut spec = TestBatch::new(1).idempotent(5, 0, 0);
        spec.attributes = ATTRIBUTE_TRANSACTIONAL;
        assert!(validate(&spec.encode())
            .unwrap_err()
            .to_string()
            .contains("transactional"));
    }

    #[test]
    fn create_time_too_far_in_the_future_is_invalid_timestamp_per_record() {
        let records = TestBatch::new(3)
            .timestamp(NOW_MS)
            .deltas(vec![0, 2 * 3_600_000, 5])
            .encode();
        let error = validate(&records).unwrap_err();
        assert_eq!(error.kafka_error_code(), kafka_code::INVALID_TIMESTAMP);
        assert_eq!(record_error_indexes(&error), [1]);
        let config = LogConfig {
            message_timestamp_type: TimestampType::LogAppendTime,
            ..LogConfig::default()
        };
        assert!(with_config(&config, &records).is_ok());
    }

    #[test]
    fn create_time_too_old_is_invalid_timestamp() {
        let config = LogConfig {
            message_timestamp_before_max_ms: 100,
            ..LogConfig::default()
        };
        let records = TestBatch::new(2).timestamp(NOW_MS - 101).encode();
        let error = with_config(&config, &records).unwrap_err();
        assert_eq!(error.kafka_error_code(), kafka_code::INVALID_TIMESTAMP);
        // Only the first record (NOW - 101) is too old; the second is NOW - 100.
        assert_eq!(record_error_indexes(&error), [0]);
    }

    #[test]
    fn timestamps_below_minus_one_are_invalid_and_minus_one_is_none() {
        let records = TestBatch::new(1).timestamp(i64::MIN).encode();
        let error = validate(&records).unwrap_err();
        assert_eq!(error.kafka_error_code(), kafka_code::INVALID_TIMESTAMP);
        let records = TestBatch::new(1).timestamp(-2).encode();
        assert_eq!(code(&records), kafka_code::INVALID_TIMESTAMP);
        let config = LogConfig {
            message_timestamp_before_max_ms: 0,
            message_timestamp_after_max_ms: 0,
            ..LogConfig::default()
        };
        let none = TestBatch::new(1).timestamp(-1).encode();
        assert!(
            with_config(&config, &none).is_ok(),
            "-1 is never range-checked"
        );
    }

    #[test]
    fn producer_set_log_append_time_is_invalid_timestamp_for_every_record() {
        let mut spec = TestBatch::new(3);
        spec.attributes = crate::log::batch::ATTRIBUTE_LOG_APPEND_TIME;
        let error = validate(&spec.encode()).unwrap_err();
        assert_eq!(error.kafka_error_code(), kafka_code::INVALID_TIMESTAMP);
        assert_eq!(record_error_indexes(&error), [0, 1, 2]);
        assert!(error.to_string().contains("LogAppendTime"), "{error}");
    }

    #[test]
    fn max_timestamp_must_be_the_largest_record_timestamp() {
        let good = TestBatch::new(3).encode();
        for wrong in [NOW_MS - 1, NOW_MS + 3, 0] {
            let bad = patch(good.clone(), 35, &wrong.to_be_bytes());
            assert_eq!(code(&bad), kafka_code::INVALID_RECORD, "max {wrong}");
        }
        // LogAppendTime topics overwrite it: not checked.
        let config = LogConfig {
            message_timestamp_type: TimestampType::LogAppendTime,
            ..LogConfig::default()
        };
        let bad = patch(good, 35, &0i64.to_be_bytes());
        assert!(with_config(&config, &bad).is_ok());
    }

    #[test]
    fn keyless_records_into_a_compacted_topic_are_invalid_record() {
        let compact = LogConfig {
            compact: true,
            ..LogConfig::default()
        };
        let mut records = kafka_records(4, true, NOW_MS);
        records[2].key = None;
        let batch = kafka_batch(&records, Compression::Snappy);
        let error = with_config(&compact, &batch).unwrap_err();
        assert_eq!(error.kafka_error_code(), kafka_code::INVALID_RECORD);
        assert_eq!(record_error_indexes(&error), [2]);
        assert!(error.to_string().contains("without a key"), "{error}");
        assert!(with_config(&LogConfig::default(), &batch).is_ok());
        let keyed = kafka_batch(&kafka_records(4, true, NOW_MS), Compression::Snappy);
        assert!(with_config(&compact, &keyed).is_ok());
    }

    #[test]
    fn record_errors_are_capped_and_counted() {
        let mut spec = TestBatch::new(3_000).value_bytes(0);
        spec.attributes = crate::log::batch::ATTRIBUTE_LOG_APPEND_TIME;
        match validate(&spec.encode()).unwrap_err() {
            AppendError::RecordErrors {
                record_errors,
                record_errors_total,
                invalid_timestamp,
            } => {
                assert_eq!(record_errors.len(), RECORD_ERRORS_MAX);
                assert_eq!(record_errors_total, 3_000);
                assert!(invalid_timestamp);
            }
            other => panic!("{other}"),
        }
    }

    #[test]
    fn recompresses_to_the_topic_codec_and_kafka_protocol_reads_it() {
        let records = kafka_records(50, true, NOW_MS);
        for (compression, target) in [
            (
                BrokerCompression::Gzip { level: -1 },
                CompressionCodec::Gzip,
            ),
            (BrokerCompression::Snappy, CompressionCodec::Snappy),
            (BrokerCompression::Lz4 { level: 9 }, CompressionCodec::Lz4),
            (BrokerCompression::Zstd { level: 3 }, CompressionCodec::Zstd),
            (BrokerCompression::Uncompressed, CompressionCodec::None),
        ] {
            let config = LogConfig {
                compression,
                ..LogConfig::default()
            };
            for source in [
                Compression::None,
                Compression::Gzip,
                Compression::Snappy,
                Compression::Lz4,
                Compression::Zstd,
            ] {
                let original = kafka_batch(&records, source);
                let validated = validate_produce(&original, &config, NOW_MS).unwrap();
                let same = BatchHeader::parse(&original).unwrap().compression() == Some(target);
                assert_eq!(validated.is_rebuilt(), !same, "{source:?} -> {target:?}");
                let stored = validated.bytes.into_owned();
                let view = RecordBatch::parse(&stored).unwrap();
                view.validate_crc().unwrap();
                assert_eq!(view.header().compression(), Some(target));
                // Only codec, length and CRC may differ.
                let (a, b) = (
                    BatchHeader::parse(&original).unwrap().summary(),
                    view.header().summary(),
                );
                assert_eq!(
                    (
                        a.base_timestamp,
                        a.max_timestamp,
                        a.records_count,
                        a.producer_id
                    ),
                    (
                        b.base_timestamp,
                        b.max_timestamp,
                        b.records_count,
                        b.producer_id
                    )
                );
                // The rebuilt batch passes our own validation again.
                assert!(validate(&stored).is_ok());
                let decoded = RecordBatchDecoder::decode(&mut Bytes::from(stored)).unwrap();
                assert_eq!(decoded.records.len(), records.len());
                for (got, want) in decoded.records.iter().zip(&records) {
                    assert_eq!(got.key, want.key);
                    assert_eq!(got.value, want.value);
                    assert_eq!(got.timestamp, want.timestamp);
                    assert_eq!(got.offset, want.offset);
                }
            }
        }
    }

    #[test]
    fn only_rebuilt_batches_change_in_a_multi_batch_request() {
        let mut request = kafka_batch(&kafka_records(3, true, NOW_MS), Compression::Gzip);
        let second = kafka_batch(&kafka_records(2, true, NOW_MS), Compression::Lz4);
        request.extend_from_slice(&second);
        let config = LogConfig {
            compression: BrokerCompression::Lz4 { level: 9 },
            ..LogConfig::default()
        };
        let validated = validate_produce(&request, &config, NOW_MS).unwrap();
        assert_eq!(validated.batches.len(), 2);
        let bytes = validated.bytes.as_ref();
        let tail = &bytes[validated.batches[1].position..];
        assert_eq!(tail, &second[..], "the lz4 batch is kept byte for byte");
        for batch in &validated.batches {
            let view = RecordBatch::parse(&bytes[batch.position..]).unwrap();
            assert_eq!(view.header().compression(), Some(CompressionCodec::Lz4));
            assert_eq!(view.size_bytes(), batch.summary.size_bytes);
        }
    }

    #[test]
    fn max_message_bytes_applies_to_the_rebuilt_batch() {
        let spec = TestBatch::new(1).value_bytes(100_000);
        let batch = compressed(&spec, CompressionCodec::Gzip);
        assert!(batch.len() < 10_000);
        let config = LogConfig {
            compression: BrokerCompression::Uncompressed,
            max_message_bytes: 10_000,
            ..LogConfig::default()
        };
        let error = with_config(&config, &batch).unwrap_err();
        assert_eq!(error.kafka_error_code(), kafka_code::MESSAGE_TOO_LARGE);
    }

    #[test]
    fn empty_request_is_invalid() {
        assert_eq!(code(&[]), kafka_code::INVALID_RECORD);
    }

    #[test]
    fn replicated_appends_get_integrity_checks_only() {
        let mut spec = TestBatch::new(2);
        spec.attributes = ATTRIBUTE_TRANSACTIONAL;
        let batch = spec.encode();
        assert!(validate_records(&batch, &LogConfig::default(), AppendOrigin::Replication).is_ok());
    }

    proptest! {
        #[test]
        fn mutated_batches_never_panic(
            codec in 0usize..5,
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        ) {
            let mut batch = compressed(&TestBatch::new(5), CODECS[codec]);
            for (at, byte) in flips {
                let at = HEADER_BYTES + at.index(batch.len() - HEADER_BYTES);
                batch[at] = byte;
            }
            RecordBatchMut::new(&mut batch).unwrap().refresh_crc();
            let _ = validate(&batch);
            let config = LogConfig {
                compression: BrokerCompression::Snappy,
                compact: true,
                ..LogConfig::default()
            };
            let _ = with_config(&config, &batch);
        }
    }

    /// Validation throughput per codec, printed (not asserted): run with
    /// `cargo test --release --lib validation_throughput -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn validation_throughput() {
        let records = kafka_records(1_000, true, NOW_MS);
        for (name, compression) in [
            ("none", Compression::None),
            ("gzip", Compression::Gzip),
            ("snappy", Compression::Snappy),
            ("lz4", Compression::Lz4),
            ("zstd", Compression::Zstd),
        ] {
            let batch = kafka_batch(&records, compression);
            let plain_bytes = kafka_batch(&records, Compression::None).len();
            let rounds = 200;
            let started = std::time::Instant::now();
            for _ in 0..rounds {
                validate(std::hint::black_box(&batch)).unwrap();
            }
            let elapsed = started.elapsed().as_secs_f64();
            let mb = (plain_bytes * rounds) as f64 / 1e6;
            eprintln!(
                "{name:>6}: {:>8.1} MB/s of uncompressed records ({} B batch, {} records, {:.1} us/batch)",
                mb / elapsed,
                batch.len(),
                records.len(),
                elapsed * 1e6 / rounds as f64
            );
        }
        // Recompression to zstd from each source.
        let config = LogConfig {
            compression: BrokerCompression::Zstd { level: 3 },
            ..LogConfig::default()
        };
        for (name, compression) in [("none", Compression::None), ("lz4", Compression::Lz4)] {
            let batch = kafka_batch(&records, compression);
            let plain_bytes = kafka_batch(&records, Compression::None).len();
            let rounds = 100;
            let started = std::time::Instant::now();
            for _ in 0..rounds {
                validate_produce(std::hint::black_box(&batch), &config, NOW_MS).unwrap();
            }
            let elapsed = started.elapsed().as_secs_f64();
            eprintln!(
                "{name:>6} -> zstd: {:>8.1} MB/s",
                (plain_bytes * rounds) as f64 / 1e6 / elapsed
            );
        }
    }
}
