//! Checking a produce request's batches before any byte is written, like
//! Kafka's `UnifiedLog.analyzeAndValidateRecords` plus the header-level parts
//! of `LogValidator`.
//!
//! Every batch is checked first and the append happens only if all pass, so a
//! request is all-or-nothing. Checks read the header and the CRC only; Kafka
//! also decodes every record (to check timestamps and offsets per record),
//! which Fjord's hot path does not do — see the per-check notes for what the
//! header-level version still catches.

use crate::log::batch::{BatchError, BatchSummary, Batches, CompressionCodec, TimestampType};
use crate::log::config::LogConfig;
use crate::log::error::AppendError;
use crate::log::producer_state::AppendOrigin;

/// The smallest possible uncompressed record: length, attributes, timestamp
/// delta, offset delta, key length, value length, header count — 1 byte each.
const RECORD_BYTES_MIN: usize = 7;

/// A batch that passed validation, with its position in the request buffer.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ValidatedBatch {
    pub position: usize,
    pub summary: BatchSummary,
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

/// Validates every batch of `records`. Client appends get the full set of
/// produce checks; replicated appends (from our own leader) only the
/// integrity checks, as Kafka's `appendAsFollower` does.
pub(crate) fn validate_records(
    records: &[u8],
    config: &LogConfig,
    now_ms: i64,
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
                config,
                now_ms,
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

fn validate_client_batch(
    position: usize,
    summary: &BatchSummary,
    records_bytes: usize,
    codec: Option<CompressionCodec>,
    config: &LogConfig,
    now_ms: i64,
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
    // Without decoding, an uncompressed batch still cannot hold more records
    // than fit in its bytes; this stops a tiny batch from claiming (and burning)
    // billions of offsets.
    if codec == CompressionCodec::None
        && summary.records_count as usize > records_bytes / RECORD_BYTES_MIN
    {
        return Err(invalid(
            position,
            format!(
                "{} records cannot fit in {records_bytes} bytes",
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
    if summary.has_producer_id() && summary.base_sequence < 0 {
        return Err(invalid(
            position,
            format!(
                "invalid sequence {} for producer {}",
                summary.base_sequence, summary.producer_id
            ),
        ));
    }
    // message.timestamp.{before,after}.max.ms on the batch's bounds (Kafka
    // checks every record; the batch's first and max timestamps bracket the
    // producer's records in practice).
    if config.message_timestamp_type == TimestampType::CreateTime {
        for timestamp_ms in [summary.base_timestamp, summary.max_timestamp] {
            if timestamp_ms < 0 {
                continue;
            }
            let too_old =
                now_ms.saturating_sub(timestamp_ms) > config.message_timestamp_before_max_ms;
            let too_new =
                timestamp_ms.saturating_sub(now_ms) > config.message_timestamp_after_max_ms;
            if too_old || too_new {
                return Err(AppendError::InvalidTimestamp {
                    timestamp_ms,
                    now_ms,
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::batch::test_batches::TestBatch;
    use crate::log::batch::ATTRIBUTE_CONTROL;

    fn validate(records: &[u8]) -> Result<Vec<ValidatedBatch>, AppendError> {
        validate_records(records, &LogConfig::default(), 1_000, AppendOrigin::Client)
    }

    #[test]
    fn accepts_several_good_batches() {
        let mut records = TestBatch::new(3).encode();
        records.extend(TestBatch::new(2).encode());
        let batches = validate(&records).unwrap();
        assert_eq!(batches.len(), 2);
        assert_eq!(batches[1].position, batches[0].summary.size_bytes);
    }

    #[test]
    fn rejects_a_bad_crc_anywhere_in_the_request() {
        let mut records = TestBatch::new(3).encode();
        let mut second = TestBatch::new(2).encode();
        let last = second.len() - 1;
        second[last] ^= 1;
        records.extend(second);
        assert_eq!(validate(&records).unwrap_err().kafka_error_code(), 2);
    }

    #[test]
    fn old_magic_is_unsupported_for_message_format() {
        let mut records = TestBatch::new(1).encode();
        records[16] = 1;
        assert_eq!(validate(&records).unwrap_err().kafka_error_code(), 43);
        records[16] = 7;
        assert_eq!(validate(&records).unwrap_err().kafka_error_code(), 2);
    }

    #[test]
    fn batch_length_beyond_buffer_is_corrupt() {
        let records = TestBatch::new(3).encode();
        assert_eq!(
            validate(&records[..records.len() - 1])
                .unwrap_err()
                .kafka_error_code(),
            2
        );
    }

    #[test]
    fn oversized_batch_is_message_too_large() {
        let records = TestBatch::new(1).value_bytes(2_000).encode();
        let config = LogConfig {
            max_message_bytes: 1_000,
            ..LogConfig::default()
        };
        let error = validate_records(&records, &config, 1_000, AppendOrigin::Client).unwrap_err();
        assert_eq!(error.kafka_error_code(), 10);
    }

    #[test]
    fn count_must_match_offset_delta() {
        let mut records = TestBatch::new(3).encode();
        records[57..61].copy_from_slice(&5i32.to_be_bytes());
        crate::log::batch::RecordBatchMut::new(&mut records)
            .unwrap()
            .refresh_crc();
        assert_eq!(validate(&records).unwrap_err().kafka_error_code(), 87);
    }

    #[test]
    fn uncompressed_batch_cannot_claim_more_records_than_bytes() {
        let mut records = TestBatch::new(1).encode();
        let claimed = 1_000_000i32;
        records[23..27].copy_from_slice(&(claimed - 1).to_be_bytes());
        records[57..61].copy_from_slice(&claimed.to_be_bytes());
        crate::log::batch::RecordBatchMut::new(&mut records)
            .unwrap()
            .refresh_crc();
        assert_eq!(validate(&records).unwrap_err().kafka_error_code(), 87);
    }

    #[test]
    fn control_batches_from_clients_are_invalid() {
        let mut spec = TestBatch::new(1);
        spec.attributes = ATTRIBUTE_CONTROL;
        assert_eq!(validate(&spec.encode()).unwrap_err().kafka_error_code(), 87);
    }

    #[test]
    fn create_time_too_far_in_the_future_is_invalid_timestamp() {
        let records = TestBatch::new(1).timestamp(1_000 + 2 * 3_600_000).encode();
        assert_eq!(validate(&records).unwrap_err().kafka_error_code(), 32);
        let config = LogConfig {
            message_timestamp_type: TimestampType::LogAppendTime,
            ..LogConfig::default()
        };
        assert!(validate_records(&records, &config, 1_000, AppendOrigin::Client).is_ok());
    }

    #[test]
    fn empty_request_is_invalid() {
        assert_eq!(validate(&[]).unwrap_err().kafka_error_code(), 87);
    }
}
