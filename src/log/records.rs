//! Finding one record inside one batch: the only place the log looks at records.
//!
//! ListOffsets by timestamp and MAX_TIMESTAMP need the exact offset of a record,
//! which the batch header does not carry. This walk runs off the hot path, on
//! one batch at a time: it decompresses the batch if needed (via
//! kafka-protocol's codecs) and reads only each record's length, timestamp
//! delta and offset delta, with no allocation per record.

use bytes::Bytes;
use kafka_protocol::compression::{Decompressor, Gzip, Lz4, Snappy, Zstd};

use crate::log::batch::{BatchError, CompressionCodec, RecordBatch, TimestampType};

/// A varint is at most 5 bytes, a varlong at most 10 (Kafka's ByteUtils).
const VARINT_BYTES_MAX: usize = 5;
const VARLONG_BYTES_MAX: usize = 10;

/// Decompressed records larger than this are refused. kafka-protocol's codecs
/// cannot stop early, so this bounds what is kept and walked, not the peak
/// allocation of a hostile batch (see the module's limitations).
pub const DECOMPRESSED_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Returns the first record of `batch` (in offset order) for which
/// `matches(offset, timestamp_ms)` holds, as `(offset, timestamp_ms)`.
///
/// For LogAppendTime batches every record's timestamp is the batch's
/// maxTimestamp, as Kafka's `DefaultRecord.timestamp()` reports it.
pub fn find_record(
    batch: &RecordBatch<'_>,
    mut matches: impl FnMut(i64, i64) -> bool,
) -> Result<Option<(i64, i64)>, BatchError> {
    let header = batch.header();
    let codec = header.compression().ok_or(BatchError::InvalidRecord {
        reason: "unknown compression codec",
    })?;
    let decompressed;
    let records: &[u8] = match codec {
        CompressionCodec::None => batch.records_bytes(),
        codec => {
            decompressed = decompress(codec, batch.records_bytes())?;
            &decompressed
        }
    };
    let log_append_time = header.timestamp_type() == TimestampType::LogAppendTime;
    let base_offset = header.base_offset();
    let base_timestamp = header.base_timestamp();
    let max_timestamp = header.max_timestamp();
    let mut rest = records;
    // recordsCount bounds the loop; the buffer bounds it too (every record is
    // at least one byte), so a lying count cannot spin.
    for _ in 0..header.records_count().max(0) {
        if rest.is_empty() {
            break;
        }
        let (length, used) = read_varint(rest)?;
        rest = &rest[used..];
        let length = usize::try_from(length).map_err(|_| BatchError::InvalidRecord {
            reason: "negative record length",
        })?;
        let body = rest.get(..length).ok_or(BatchError::InvalidRecord {
            reason: "record length past the end of the batch",
        })?;
        rest = &rest[length..];
        // attributes (1 byte), timestampDelta (varlong), offsetDelta (varint)
        let after_attributes = body.get(1..).ok_or(BatchError::InvalidRecord {
            reason: "empty record",
        })?;
        let (timestamp_delta, used) = read_varlong(after_attributes)?;
        let (offset_delta, _) = read_varint(&after_attributes[used..])?;
        let offset = base_offset.saturating_add(offset_delta as i64);
        let timestamp = if log_append_time {
            max_timestamp
        } else {
            base_timestamp.saturating_add(timestamp_delta)
        };
        if matches(offset, timestamp) {
            return Ok(Some((offset, timestamp)));
        }
    }
    Ok(None)
}

fn decompress(codec: CompressionCodec, mut compressed: &[u8]) -> Result<Bytes, BatchError> {
    let take = |buf: &mut Bytes| Ok(std::mem::take(buf));
    let result = match codec {
        CompressionCodec::None => return Ok(Bytes::copy_from_slice(compressed)),
        CompressionCodec::Gzip => Gzip::decompress(&mut compressed, take),
        CompressionCodec::Snappy => Snappy::decompress(&mut compressed, take),
        CompressionCodec::Lz4 => Lz4::decompress(&mut compressed, take),
        CompressionCodec::Zstd => Zstd::decompress(&mut compressed, take),
    };
    let bytes = result.map_err(|error| BatchError::Decompression {
        reason: error.to_string(),
    })?;
    if bytes.len() > DECOMPRESSED_BYTES_MAX {
        return Err(BatchError::Decompression {
            reason: format!(
                "{} decompressed bytes exceed the {DECOMPRESSED_BYTES_MAX}-byte limit",
                bytes.len()
            ),
        });
    }
    Ok(bytes)
}

fn read_unsigned_varint(buf: &[u8], bytes_max: usize) -> Result<(u64, usize), BatchError> {
    let mut value = 0u64;
    for (i, byte) in buf.iter().take(bytes_max).enumerate() {
        value |= ((byte & 0x7f) as u64) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok((value, i + 1));
        }
    }
    Err(BatchError::InvalidRecord {
        reason: "malformed varint",
    })
}

fn read_varint(buf: &[u8]) -> Result<(i32, usize), BatchError> {
    let (raw, used) = read_unsigned_varint(buf, VARINT_BYTES_MAX)?;
    let raw = raw as u32;
    Ok((((raw >> 1) as i32) ^ -((raw & 1) as i32), used))
}

fn read_varlong(buf: &[u8]) -> Result<(i64, usize), BatchError> {
    let (raw, used) = read_unsigned_varint(buf, VARLONG_BYTES_MAX)?;
    Ok((((raw >> 1) as i64) ^ -((raw & 1) as i64), used))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::batch::test_batches::TestBatch;
    use crate::log::batch::{RecordBatchMut, HEADER_BYTES};
    use bytes::BytesMut;
    use kafka_protocol::records::{Compression, Record, RecordBatchEncoder, RecordEncodeOptions};
    use proptest::prelude::*;

    fn encoded(timestamps: &[i64], compression: Compression) -> Vec<u8> {
        let records: Vec<Record> = timestamps
            .iter()
            .enumerate()
            .map(|(i, ts)| Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: -1,
                producer_id: -1,
                producer_epoch: -1,
                timestamp_type: kafka_protocol::records::TimestampType::Creation,
                offset: 100 + i as i64,
                sequence: 100 + i as i32,
                timestamp: *ts,
                key: None,
                value: Some(Bytes::from_static(b"value")),
                headers: Default::default(),
            })
            .collect();
        let mut buf = BytesMut::new();
        RecordBatchEncoder::encode(
            &mut buf,
            &records,
            &RecordEncodeOptions {
                version: 2,
                compression,
            },
        )
        .expect("encode");
        buf.to_vec()
    }

    #[test]
    fn finds_first_record_at_or_after_timestamp_uncompressed() {
        let bytes = encoded(&[10, 30, 20, 40], Compression::None);
        let batch = RecordBatch::parse(&bytes).expect("parse");
        assert_eq!(
            find_record(&batch, |_, ts| ts >= 25).unwrap(),
            Some((101, 30))
        );
        assert_eq!(find_record(&batch, |_, ts| ts >= 41).unwrap(), None);
        assert_eq!(
            find_record(&batch, |_, ts| ts == 40).unwrap(),
            Some((103, 40))
        );
    }

    #[test]
    fn finds_records_in_every_compressed_codec() {
        for compression in [
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let bytes = encoded(&[10, 30, 20, 40], compression);
            let batch = RecordBatch::parse(&bytes).expect("parse");
            assert_eq!(
                find_record(&batch, |_, ts| ts >= 15).unwrap(),
                Some((101, 30)),
                "{compression:?}"
            );
        }
    }

    #[test]
    fn log_append_time_batches_report_the_batch_timestamp_for_every_record() {
        let mut bytes = encoded(&[10, 30], Compression::None);
        RecordBatchMut::new(&mut bytes)
            .unwrap()
            .set_log_append_time(777);
        let batch = RecordBatch::parse(&bytes).expect("parse");
        assert_eq!(
            find_record(&batch, |_, ts| ts >= 500).unwrap(),
            Some((100, 777))
        );
    }

    #[test]
    fn hand_built_batch_walks_by_offset_delta() {
        let mut spec = TestBatch::new(5).deltas(vec![0, 5, 1, 9, 2]);
        spec.base_offset = 50;
        let bytes = spec.encode();
        let batch = RecordBatch::parse(&bytes).expect("parse");
        assert_eq!(
            find_record(&batch, |_, ts| ts >= 1_004).unwrap(),
            Some((51, 1_005))
        );
    }

    proptest! {
        #[test]
        fn garbage_records_never_panic(garbage in proptest::collection::vec(any::<u8>(), 0..100)) {
            let mut bytes = TestBatch::new(3).encode();
            bytes.truncate(HEADER_BYTES);
            bytes.extend_from_slice(&garbage);
            let length = (bytes.len() - 12) as i32;
            bytes[8..12].copy_from_slice(&length.to_be_bytes());
            let batch = RecordBatch::parse(&bytes).expect("header is fine");
            let _ = find_record(&batch, |_, _| false);
        }
    }
}
