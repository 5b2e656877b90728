//! Walking the records inside one batch (Kafka's v2 `DefaultRecord` layout),
//! for produce validation and for ListOffsets by timestamp.
//!
//! ```text
//! length varint | attributes i8 | timestampDelta varlong | offsetDelta varint
//! | keyLength varint (-1 = null) | key | valueLength varint (-1 = null) | value
//! | headers varint | { keyLength varint (>= 0) | key | valueLength varint | value }*
//! ```
//!
//! Design decision: the walk reads field lengths and skips over keys, values
//! and headers without copying them, from a [`RecordSource`] that is either
//! the batch's own bytes (uncompressed: no allocation at all) or a
//! decompressing stream through one fixed buffer (compressed: never the
//! whole batch in memory, and never more than
//! [`DECOMPRESSED_BYTES_MAX`](crate::log::codec::DECOMPRESSED_BYTES_MAX)
//! bytes). Every field is checked against the record's declared length, so a
//! record can never read into its neighbour, and every loop is bounded by
//! bytes consumed.

use std::fmt;
use std::io::Write;

use crate::log::batch::{BatchError, RecordBatch, TimestampType};
use crate::log::codec::{CodecError, Decoder, DECOMPRESSED_BYTES_MAX, STREAM_BUFFER_BYTES};

/// A varint is at most 5 bytes, a varlong at most 10 (Kafka's ByteUtils).
const VARINT_BYTES_MAX: usize = 5;
const VARLONG_BYTES_MAX: usize = 10;
/// The smallest possible record: length, attributes, timestamp delta, offset
/// delta, key length, value length, header count — 1 byte each.
pub(crate) const RECORD_BYTES_MIN: usize = 7;
/// The smallest possible header: key length 0 and a null value.
const HEADER_BYTES_MIN: usize = 2;

/// What one record holds, as far as the broker cares: everything but the
/// key, value and header bytes themselves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RecordInfo {
    /// Bytes after the length prefix.
    pub body_bytes: usize,
    pub timestamp_delta: i64,
    pub offset_delta: i32,
    /// Whether the key is non-null (compacted topics need one).
    pub has_key: bool,
}

/// Why the records of a batch cannot be walked.
#[derive(Debug)]
pub(crate) enum WalkError {
    /// Record `index` does not parse.
    Malformed { index: usize, reason: &'static str },
    /// Record `index` declares a body larger than the per-record limit.
    RecordTooLarge {
        index: usize,
        body_bytes: i64,
        limit_bytes: usize,
    },
    /// The compressed bytes could not be decompressed.
    Codec(CodecError),
}

impl fmt::Display for WalkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WalkError::Malformed { index, reason } => write!(f, "record {index}: {reason}"),
            WalkError::RecordTooLarge {
                index,
                body_bytes,
                limit_bytes,
            } => write!(
                f,
                "record {index} is {body_bytes} bytes, above max.decompressed.message.bytes {limit_bytes}"
            ),
            WalkError::Codec(error) => write!(f, "cannot decompress the records: {error}"),
        }
    }
}

/// Where record bytes come from. Implementations only hand out bytes; the
/// record layout lives in [`RecordReader`].
pub(crate) trait RecordSource {
    /// The next byte, or `None` at the end of the records.
    fn next_byte(&mut self) -> Result<Option<u8>, CodecError>;
    /// Consumes `n` bytes; returns how many there were (fewer at the end).
    fn skip(&mut self, n: usize) -> Result<usize, CodecError>;
}

/// An uncompressed batch's records, read in place.
pub(crate) struct SliceSource<'a> {
    bytes: &'a [u8],
}

impl<'a> SliceSource<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        SliceSource { bytes }
    }

    /// Whether every byte was consumed.
    pub(crate) fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

impl RecordSource for SliceSource<'_> {
    #[inline]
    fn next_byte(&mut self) -> Result<Option<u8>, CodecError> {
        let Some((&first, rest)) = self.bytes.split_first() else {
            return Ok(None);
        };
        self.bytes = rest;
        Ok(Some(first))
    }

    #[inline]
    fn skip(&mut self, n: usize) -> Result<usize, CodecError> {
        let n = n.min(self.bytes.len());
        self.bytes = &self.bytes[n..];
        Ok(n)
    }
}

/// A compressed batch's records, decompressed through one buffer, with every
/// decompressed byte optionally copied to `tee` (the recompressor).
pub(crate) struct StreamSource<'a, 't> {
    decoder: Decoder<'a>,
    buffer: Box<[u8]>,
    position: usize,
    filled: usize,
    total_bytes: usize,
    tee: Option<&'t mut dyn Write>,
}

impl<'a, 't> StreamSource<'a, 't> {
    pub(crate) fn new(decoder: Decoder<'a>, tee: Option<&'t mut dyn Write>) -> Self {
        StreamSource {
            decoder,
            buffer: vec![0; STREAM_BUFFER_BYTES].into_boxed_slice(),
            position: 0,
            filled: 0,
            total_bytes: 0,
            tee,
        }
    }

    /// Refills the buffer; false at the end of the stream.
    fn refill(&mut self) -> Result<bool, CodecError> {
        debug_assert_eq!(self.position, self.filled);
        let n = self.decoder.read(&mut self.buffer)?;
        self.position = 0;
        self.filled = n;
        self.total_bytes = self.total_bytes.saturating_add(n);
        if self.total_bytes > DECOMPRESSED_BYTES_MAX {
            return Err(CodecError::TooLarge {
                limit_bytes: DECOMPRESSED_BYTES_MAX,
            });
        }
        if let Some(tee) = self.tee.as_mut() {
            tee.write_all(&self.buffer[..n])
                .map_err(|e| CodecError::Corrupt(format!("recompressing: {e}")))?;
        }
        Ok(n > 0)
    }

    /// Ends the stream: true if nothing is left, and the codec agrees the
    /// compressed data ended properly.
    pub(crate) fn finish(mut self) -> Result<bool, CodecError> {
        let at_end = self.position == self.filled && !self.refill()?;
        if at_end {
            self.decoder.finish()?;
        }
        Ok(at_end)
    }
}

impl RecordSource for StreamSource<'_, '_> {
    #[inline]
    fn next_byte(&mut self) -> Result<Option<u8>, CodecError> {
        if self.position == self.filled && !self.refill()? {
            return Ok(None);
        }
        let byte = self.buffer[self.position];
        self.position += 1;
        Ok(Some(byte))
    }

    fn skip(&mut self, n: usize) -> Result<usize, CodecError> {
        let mut skipped = 0;
        // Each pass consumes a non-empty buffer or ends: bounded by the budget.
        while skipped < n {
            if self.position == self.filled && !self.refill()? {
                break;
            }
            let step = (n - skipped).min(self.filled - self.position);
            self.position += step;
            skipped += step;
        }
        Ok(skipped)
    }
}

/// Reads records one at a time from a [`RecordSource`].
pub(crate) struct RecordReader<S> {
    source: S,
    index: usize,
    body_bytes_max: usize,
}

/// Kafka's varint: zigzag over the low 32 bits (a fifth byte's extra bits
/// are dropped, as Java's `ByteUtils.readVarint` drops them).
#[inline]
fn zigzag_i32(raw: u64) -> i32 {
    let raw = raw as u32;
    ((raw >> 1) as i32) ^ -((raw & 1) as i32)
}

/// One record's remaining body: every read is checked against it.
struct Body<'s, S> {
    source: &'s mut S,
    remaining: usize,
    index: usize,
}

impl<S: RecordSource> Body<'_, S> {
    fn malformed(&self, reason: &'static str) -> WalkError {
        WalkError::Malformed {
            index: self.index,
            reason,
        }
    }

    #[inline]
    fn byte(&mut self) -> Result<u8, WalkError> {
        if self.remaining == 0 {
            return Err(self.malformed("fields run past the record's length"));
        }
        match self.source.next_byte().map_err(WalkError::Codec)? {
            Some(byte) => {
                self.remaining -= 1;
                Ok(byte)
            }
            None => Err(self.malformed("record ends past the end of the batch")),
        }
    }

    #[inline]
    fn unsigned(&mut self, bytes_max: usize) -> Result<u64, WalkError> {
        let mut value = 0u64;
        for i in 0..bytes_max {
            let byte = self.byte()?;
            value |= ((byte & 0x7f) as u64) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(self.malformed("varint too long"))
    }

    #[inline]
    fn varint(&mut self) -> Result<i32, WalkError> {
        Ok(zigzag_i32(self.unsigned(VARINT_BYTES_MAX)?))
    }

    #[inline]
    fn varlong(&mut self) -> Result<i64, WalkError> {
        let raw = self.unsigned(VARLONG_BYTES_MAX)?;
        Ok(((raw >> 1) as i64) ^ -((raw & 1) as i64))
    }

    /// Skips a length-prefixed field; `None` for a null (-1) one.
    fn field(&mut self, nullable: bool) -> Result<Option<usize>, WalkError> {
        let length = self.varint()?;
        if length == -1 && nullable {
            return Ok(None);
        }
        let length =
            usize::try_from(length).map_err(|_| self.malformed("negative field length"))?;
        if length > self.remaining {
            return Err(self.malformed("field runs past the record's length"));
        }
        let skipped = self.source.skip(length).map_err(WalkError::Codec)?;
        if skipped < length {
            return Err(self.malformed("record ends past the end of the batch"));
        }
        self.remaining -= length;
        Ok(Some(length))
    }
}

impl<S: RecordSource> RecordReader<S> {
    /// Reads from `source`, refusing any record whose body is larger than
    /// `body_bytes_max` before reading it.
    pub(crate) fn new(source: S, body_bytes_max: usize) -> Self {
        RecordReader {
            source,
            index: 0,
            body_bytes_max,
        }
    }

    /// Records read so far.
    pub(crate) fn records_read(&self) -> usize {
        self.index
    }

    /// The source, to check what is left after the last record.
    pub(crate) fn into_source(self) -> S {
        self.source
    }

    /// A record's length varint; `None` if the bytes end right before it.
    fn length_prefix(&mut self) -> Result<Option<i32>, WalkError> {
        let malformed = |reason| WalkError::Malformed {
            index: self.index,
            reason,
        };
        let mut value = 0u64;
        for i in 0..VARINT_BYTES_MAX {
            let byte = match self.source.next_byte().map_err(WalkError::Codec)? {
                Some(byte) => byte,
                None if i == 0 => return Ok(None),
                None => return Err(malformed("record ends past the end of the batch")),
            };
            value |= ((byte & 0x7f) as u64) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(Some(zigzag_i32(value)));
            }
        }
        Err(malformed("varint too long"))
    }

    /// The next record, or `None` when the bytes end cleanly between records.
    pub(crate) fn next_record(&mut self) -> Result<Option<RecordInfo>, WalkError> {
        let index = self.index;
        let Some(length) = self.length_prefix()? else {
            return Ok(None);
        };
        let body_bytes = usize::try_from(length).map_err(|_| WalkError::Malformed {
            index,
            reason: "negative record length",
        })?;
        if body_bytes > self.body_bytes_max {
            return Err(WalkError::RecordTooLarge {
                index,
                body_bytes: length as i64,
                limit_bytes: self.body_bytes_max,
            });
        }
        let mut body = Body {
            source: &mut self.source,
            remaining: body_bytes,
            index,
        };
        let _attributes = body.byte()?;
        let timestamp_delta = body.varlong()?;
        let offset_delta = body.varint()?;
        let has_key = body.field(true)?.is_some();
        let _value = body.field(true)?;
        let headers = body.varint()?;
        let headers =
            usize::try_from(headers).map_err(|_| body.malformed("negative header count"))?;
        if headers > body.remaining / HEADER_BYTES_MIN {
            return Err(body.malformed("more headers than the record has bytes for"));
        }
        for _ in 0..headers {
            // Header keys are non-null strings; values may be null.
            body.field(false)?;
            body.field(true)?;
        }
        if body.remaining != 0 {
            return Err(body.malformed("record length disagrees with its fields"));
        }
        self.index += 1;
        Ok(Some(RecordInfo {
            body_bytes,
            timestamp_delta,
            offset_delta,
            has_key,
        }))
    }
}

/// Returns the first record of `batch` (in offset order) for which
/// `matches(offset, timestamp_ms)` holds, as `(offset, timestamp_ms)`.
///
/// For LogAppendTime batches every record's timestamp is the batch's
/// maxTimestamp, as Kafka's `DefaultRecord.timestamp()` reports it. Runs off
/// the hot path (ListOffsets), on batches that passed produce validation.
pub fn find_record(
    batch: &RecordBatch<'_>,
    mut matches: impl FnMut(i64, i64) -> bool,
) -> Result<Option<(i64, i64)>, BatchError> {
    let header = batch.header();
    let codec = header.compression().ok_or(BatchError::InvalidRecord {
        reason: "unknown compression codec",
    })?;
    let log_append_time = header.timestamp_type() == TimestampType::LogAppendTime;
    let base_offset = header.base_offset();
    let base_timestamp = header.base_timestamp();
    let max_timestamp = header.max_timestamp();
    let records_count = header.records_count().max(0) as usize;
    let mut visit = |record: RecordInfo| {
        let offset = base_offset.saturating_add(record.offset_delta as i64);
        let timestamp = if log_append_time {
            max_timestamp
        } else {
            base_timestamp.saturating_add(record.timestamp_delta)
        };
        matches(offset, timestamp).then_some((offset, timestamp))
    };
    let walk_error = |error: WalkError| match error {
        WalkError::Codec(error) => BatchError::Decompression {
            reason: error.to_string(),
        },
        _ => BatchError::InvalidRecord {
            reason: "malformed record",
        },
    };
    let records = batch.records_bytes();
    match Decoder::new(codec, records, DECOMPRESSED_BYTES_MAX)
        .map_err(|e| walk_error(WalkError::Codec(e)))?
    {
        None => first_match(
            RecordReader::new(SliceSource::new(records), usize::MAX),
            records_count,
            &mut visit,
        ),
        Some(decoder) => first_match(
            RecordReader::new(StreamSource::new(decoder, None), usize::MAX),
            records_count,
            &mut visit,
        ),
    }
    .map_err(walk_error)
}

/// The first record `visit` picks, among at most `records_count` records.
fn first_match<S: RecordSource>(
    mut reader: RecordReader<S>,
    records_count: usize,
    visit: &mut impl FnMut(RecordInfo) -> Option<(i64, i64)>,
) -> Result<Option<(i64, i64)>, WalkError> {
    while reader.records_read() < records_count {
        let Some(record) = reader.next_record()? else {
            break;
        };
        if let Some(found) = visit(record) {
            return Ok(Some(found));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::batch::test_batches::TestBatch;
    use crate::log::batch::{RecordBatchMut, HEADER_BYTES};
    use bytes::{Bytes, BytesMut};
    use kafka_protocol::records::{Compression, Record, RecordBatchEncoder, RecordEncodeOptions};
    use proptest::prelude::*;

    fn record(i: i64, ts: i64, key: Option<&'static [u8]>, headers: usize) -> Record {
        Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: kafka_protocol::records::TimestampType::Creation,
            offset: 100 + i,
            sequence: 100 + i as i32,
            timestamp: ts,
            key: key.map(Bytes::from_static),
            value: Some(Bytes::from_static(b"value")),
            headers: (0..headers)
                .map(|h| {
                    (
                        kafka_protocol::protocol::StrBytes::from_string(format!("h{h}")),
                        if h % 2 == 0 {
                            Some(Bytes::from_static(b"hv"))
                        } else {
                            None
                        },
                    )
                })
                .collect(),
        }
    }

    fn encoded(timestamps: &[i64], compression: Compression) -> Vec<u8> {
        let records: Vec<Record> = timestamps
            .iter()
            .enumerate()
            .map(|(i, ts)| record(i as i64, *ts, None, 0))
            .collect();
        encode(&records, compression)
    }

    fn encode(records: &[Record], compression: Compression) -> Vec<u8> {
        let mut buf = BytesMut::new();
        RecordBatchEncoder::encode(
            &mut buf,
            records,
            &RecordEncodeOptions {
                version: 2,
                compression,
            },
        )
        .expect("encode");
        buf.to_vec()
    }

    fn walk_slice(records: &[u8]) -> Result<Vec<RecordInfo>, WalkError> {
        let mut reader = RecordReader::new(SliceSource::new(records), usize::MAX);
        let mut out = Vec::new();
        while let Some(r) = reader.next_record()? {
            out.push(r);
        }
        Ok(out)
    }

    #[test]
    fn walks_keys_values_and_headers_like_kafka_protocol_writes_them() {
        let records = [
            record(0, 10, Some(b"k0"), 0),
            record(1, 11, None, 3),
            record(2, 12, Some(b""), 1),
        ];
        let bytes = encode(&records, Compression::None);
        let walked = walk_slice(&bytes[HEADER_BYTES..]).unwrap();
        assert_eq!(walked.len(), 3);
        assert_eq!(
            walked.iter().map(|r| r.has_key).collect::<Vec<_>>(),
            [true, false, true]
        );
        assert_eq!(
            walked.iter().map(|r| r.offset_delta).collect::<Vec<_>>(),
            [0, 1, 2]
        );
        assert_eq!(
            walked.iter().map(|r| r.timestamp_delta).collect::<Vec<_>>(),
            [0, 1, 2]
        );
    }

    #[test]
    fn a_record_longer_than_its_fields_is_malformed() {
        let mut bytes = TestBatch::new(1).encode()[HEADER_BYTES..].to_vec();
        bytes[0] += 2; // length +1 (zigzag)
        bytes.push(0);
        assert!(matches!(
            walk_slice(&bytes),
            Err(WalkError::Malformed { index: 0, .. })
        ));
    }

    #[test]
    fn a_record_past_the_end_is_malformed_and_the_limit_is_checked_first() {
        let bytes = TestBatch::new(2).encode()[HEADER_BYTES..].to_vec();
        let cut = &bytes[..bytes.len() - 1];
        assert!(matches!(
            walk_slice(cut),
            Err(WalkError::Malformed { index: 1, .. })
        ));
        let mut reader = RecordReader::new(SliceSource::new(&bytes), 5);
        assert!(matches!(
            reader.next_record(),
            Err(WalkError::RecordTooLarge { index: 0, .. })
        ));
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
            let _ = walk_slice(&garbage);
        }

        #[test]
        fn walk_agrees_with_kafka_protocol_on_any_records(
            specs in proptest::collection::vec((0i64..1_000_000, any::<bool>(), 0usize..4), 1..40),
            codec in 0usize..5,
        ) {
            let records: Vec<Record> = specs
                .iter()
                .enumerate()
                .map(|(i, (ts, keyed, headers))| {
                    record(i as i64, *ts, keyed.then_some(&b"key"[..]), *headers)
                })
                .collect();
            let compression = [
                Compression::None,
                Compression::Gzip,
                Compression::Snappy,
                Compression::Lz4,
                Compression::Zstd,
            ][codec];
            let bytes = encode(&records, compression);
            let batch = RecordBatch::parse(&bytes).unwrap();
            let decoder = Decoder::new(
                batch.header().compression().unwrap(),
                batch.records_bytes(),
                DECOMPRESSED_BYTES_MAX,
            ).unwrap();
            let walked = match decoder {
                None => walk_slice(batch.records_bytes()).unwrap(),
                Some(decoder) => {
                    let mut reader = RecordReader::new(StreamSource::new(decoder, None), usize::MAX);
                    let mut out = Vec::new();
                    while let Some(r) = reader.next_record().unwrap() {
                        out.push(r);
                    }
                    prop_assert!(reader.into_source().finish().unwrap());
                    out
                }
            };
            prop_assert_eq!(walked.len(), records.len());
            let base = batch.header().base_timestamp();
            for (i, (walked, original)) in walked.iter().zip(&records).enumerate() {
                prop_assert_eq!(walked.offset_delta as usize, i);
                prop_assert_eq!(base + walked.timestamp_delta, original.timestamp);
                prop_assert_eq!(walked.has_key, original.key.is_some());
            }
        }
    }
}
