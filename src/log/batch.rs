//! The record batch v2 header, read and patched in place.
//!
//! This is the broker's hot-path view of Kafka's `DefaultRecordBatch`: Produce
//! validates batches and Fetch walks them without decoding a single record and
//! without allocating per batch or per record. Every accessor reads a fixed
//! big-endian field of the 61-byte header:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | baseOffset (outside the CRC) |
//! | 8 | 4 | batchLength (whole batch = batchLength + 12) |
//! | 12 | 4 | partitionLeaderEpoch (outside the CRC) |
//! | 16 | 1 | magic |
//! | 17 | 4 | crc (CRC-32C of bytes [21, end)) |
//! | 21 | 2 | attributes |
//! | 23 | 4 | lastOffsetDelta |
//! | 27 | 8 | baseTimestamp |
//! | 35 | 8 | maxTimestamp |
//! | 43 | 8 | producerId |
//! | 51 | 2 | producerEpoch |
//! | 53 | 4 | baseSequence |
//! | 57 | 4 | recordsCount |
//!
//! Parsing is split in two on purpose: [`BatchHeader::parse`] checks only what
//! is needed to walk to the next batch (magic, a plausible length), and
//! [`RecordBatch::validate_crc`] is the separate, more expensive integrity check
//! that Produce and recovery run and Fetch does not.

use thiserror::Error;

/// Size of the fixed v2 header; the first record starts here.
pub const HEADER_BYTES: usize = 61;
/// baseOffset + batchLength: the part of a batch that `batchLength` does not count.
pub const LOG_OVERHEAD_BYTES: usize = 12;
/// The only record batch format Fjord stores (Kafka 4 dropped v0 and v1).
pub const MAGIC_V2: i8 = 2;
/// producerId of a batch written without idempotence.
pub const NO_PRODUCER_ID: i64 = -1;
/// producerEpoch of a batch written without idempotence.
pub const NO_PRODUCER_EPOCH: i16 = -1;
/// baseSequence of a batch written without idempotence.
pub const NO_SEQUENCE: i32 = -1;
/// Timestamp of a record or batch that has none; also "no entry yet".
pub const NO_TIMESTAMP: i64 = -1;
/// partitionLeaderEpoch a producer sends before the broker stamps it.
pub const NO_PARTITION_LEADER_EPOCH: i32 = -1;
/// First byte covered by the CRC: everything from the attributes onwards.
pub const CRC_COVERED_FROM: usize = 21;

const BASE_OFFSET_AT: usize = 0;
const BATCH_LENGTH_AT: usize = 8;
const PARTITION_LEADER_EPOCH_AT: usize = 12;
const MAGIC_AT: usize = 16;
const CRC_AT: usize = 17;
const ATTRIBUTES_AT: usize = 21;
const LAST_OFFSET_DELTA_AT: usize = 23;
const BASE_TIMESTAMP_AT: usize = 27;
const MAX_TIMESTAMP_AT: usize = 35;
const PRODUCER_ID_AT: usize = 43;
const PRODUCER_EPOCH_AT: usize = 51;
const BASE_SEQUENCE_AT: usize = 53;
const RECORDS_COUNT_AT: usize = 57;

/// Attribute bits 0–2: the compression codec.
pub const ATTRIBUTE_COMPRESSION_MASK: i16 = 0x07;
/// Attribute bit 3: timestamps are LogAppendTime.
pub const ATTRIBUTE_LOG_APPEND_TIME: i16 = 0x08;
/// Attribute bit 4: the batch belongs to a transaction.
pub const ATTRIBUTE_TRANSACTIONAL: i16 = 0x10;
/// Attribute bit 5: the batch holds a control record (transaction marker).
pub const ATTRIBUTE_CONTROL: i16 = 0x20;

/// Sequence numbers wrap from `i32::MAX` back to 0 (Kafka's `incrementSequence`).
pub fn increment_sequence(sequence: i32, increment: i32) -> i32 {
    debug_assert!(sequence >= 0 && increment >= 0);
    // Both operands are non-negative, so the i64 sum cannot overflow and the
    // remainder is in [0, 2^31).
    ((sequence as i64 + increment as i64) % (i32::MAX as i64 + 1)) as i32
}

/// How the timestamps of a batch were set: by the producer or by the broker.
///
/// It is both a topic config (`message.timestamp.type`) and attribute bit 3 of
/// every batch; one type serves both so the two cannot drift apart.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum TimestampType {
    /// The producer's clock (`CreateTime`, Kafka's default).
    #[default]
    CreateTime,
    /// The broker's clock at append (`LogAppendTime`).
    LogAppendTime,
}

impl TimestampType {
    /// Parses Kafka's config value (`CreateTime` or `LogAppendTime`).
    pub fn parse(value: &str) -> Option<TimestampType> {
        match value.trim() {
            "CreateTime" => Some(TimestampType::CreateTime),
            "LogAppendTime" => Some(TimestampType::LogAppendTime),
            _ => None,
        }
    }

    /// Kafka's config value for this type.
    pub fn name(&self) -> &'static str {
        match self {
            TimestampType::CreateTime => "CreateTime",
            TimestampType::LogAppendTime => "LogAppendTime",
        }
    }
}

/// Compression codec of a batch (attribute bits 0–2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CompressionCodec {
    /// Records are stored as they are.
    None,
    /// gzip.
    Gzip,
    /// Snappy (xerial framing, as the Java client writes it).
    Snappy,
    /// LZ4 frame.
    Lz4,
    /// Zstandard.
    Zstd,
}

impl CompressionCodec {
    /// Attribute bits 0–2 for this codec.
    pub fn id(self) -> u8 {
        match self {
            Self::None => 0,
            Self::Gzip => 1,
            Self::Snappy => 2,
            Self::Lz4 => 3,
            Self::Zstd => 4,
        }
    }

    /// The codec for attribute bits 0–2, or `None` for the unassigned ids 5–7.
    pub fn from_id(id: u8) -> Option<Self> {
        match id {
            0 => Some(Self::None),
            1 => Some(Self::Gzip),
            2 => Some(Self::Snappy),
            3 => Some(Self::Lz4),
            4 => Some(Self::Zstd),
            _ => None,
        }
    }
}

/// Why bytes are not a well-formed v2 record batch.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BatchError {
    /// The buffer ends before the batch does (a torn write or a short frame).
    #[error("record batch truncated: {available_bytes} bytes available, {needed_bytes} needed")]
    Truncated {
        /// Bytes left in the buffer.
        available_bytes: usize,
        /// Bytes the header says the batch needs.
        needed_bytes: usize,
    },
    /// batchLength cannot describe a v2 batch.
    #[error("invalid batch length {batch_length}")]
    InvalidLength {
        /// The batchLength field as stored.
        batch_length: i32,
    },
    /// Not a v2 batch: 0 and 1 are Kafka's retired message sets, others are garbage.
    #[error("unsupported record batch magic {magic}")]
    UnsupportedMagic {
        /// The magic byte as stored.
        magic: i8,
    },
    /// The stored CRC does not match the bytes.
    #[error("record batch CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    CrcMismatch {
        /// The crc field as stored.
        stored: u32,
        /// CRC-32C of bytes [21, end).
        computed: u32,
    },
    /// A record inside the batch is malformed (only checked off the hot path).
    #[error("invalid record in batch: {reason}")]
    InvalidRecord {
        /// What was wrong.
        reason: &'static str,
    },
    /// The batch's records could not be decompressed.
    #[error("record batch decompression failed: {reason}")]
    Decompression {
        /// The codec's complaint.
        reason: String,
    },
}

fn be_i16(bytes: &[u8; HEADER_BYTES], at: usize) -> i16 {
    i16::from_be_bytes([bytes[at], bytes[at + 1]])
}

fn be_i32(bytes: &[u8; HEADER_BYTES], at: usize) -> i32 {
    let mut field = [0u8; 4];
    field.copy_from_slice(&bytes[at..at + 4]);
    i32::from_be_bytes(field)
}

fn be_i64(bytes: &[u8; HEADER_BYTES], at: usize) -> i64 {
    let mut field = [0u8; 8];
    field.copy_from_slice(&bytes[at..at + 8]);
    i64::from_be_bytes(field)
}

/// A zero-copy view of the 61-byte v2 header at the start of a buffer.
///
/// Only the magic byte and the length are checked on parse, because that is
/// all a reader needs to step to the next batch; the CRC is checked by
/// [`RecordBatch::validate_crc`] where the caller can afford it.
#[derive(Clone, Copy, Debug)]
pub struct BatchHeader<'a> {
    bytes: &'a [u8; HEADER_BYTES],
}

impl<'a> BatchHeader<'a> {
    /// Reads the header at the start of `buf` (which may hold more batches).
    ///
    /// The magic byte sits at offset 16 in every message format, so old v0/v1
    /// message sets are reported as [`BatchError::UnsupportedMagic`] even when
    /// they are shorter than a v2 header.
    pub fn parse(buf: &'a [u8]) -> Result<Self, BatchError> {
        if buf.len() <= MAGIC_AT {
            return Err(BatchError::Truncated {
                available_bytes: buf.len(),
                needed_bytes: HEADER_BYTES,
            });
        }
        let magic = buf[MAGIC_AT] as i8;
        if magic != MAGIC_V2 {
            return Err(BatchError::UnsupportedMagic { magic });
        }
        let bytes: &[u8; HEADER_BYTES] = buf
            .get(..HEADER_BYTES)
            .and_then(|head| head.try_into().ok())
            .ok_or(BatchError::Truncated {
                available_bytes: buf.len(),
                needed_bytes: HEADER_BYTES,
            })?;
        let header = Self { bytes };
        let batch_length = header.batch_length();
        if batch_length < (HEADER_BYTES - LOG_OVERHEAD_BYTES) as i32 {
            return Err(BatchError::InvalidLength { batch_length });
        }
        Ok(header)
    }

    /// The 61 header bytes.
    pub fn as_bytes(&self) -> &'a [u8; HEADER_BYTES] {
        self.bytes
    }

    /// Offset of the first record (assigned by the broker).
    pub fn base_offset(&self) -> i64 {
        be_i64(self.bytes, BASE_OFFSET_AT)
    }

    /// The batchLength field: bytes after itself.
    pub fn batch_length(&self) -> i32 {
        be_i32(self.bytes, BATCH_LENGTH_AT)
    }

    /// Bytes the whole batch occupies, header included.
    pub fn size_bytes(&self) -> usize {
        // parse() guarantees batch_length >= 49, so the cast is lossless.
        self.batch_length() as usize + LOG_OVERHEAD_BYTES
    }

    /// Leader epoch stamped by the broker that appended the batch.
    pub fn partition_leader_epoch(&self) -> i32 {
        be_i32(self.bytes, PARTITION_LEADER_EPOCH_AT)
    }

    /// Always [`MAGIC_V2`] for a parsed header.
    pub fn magic(&self) -> i8 {
        self.bytes[MAGIC_AT] as i8
    }

    /// The stored CRC-32C of bytes [21, end).
    pub fn crc(&self) -> u32 {
        be_i32(self.bytes, CRC_AT) as u32
    }

    /// Raw attribute bits.
    pub fn attributes(&self) -> i16 {
        be_i16(self.bytes, ATTRIBUTES_AT)
    }

    /// The codec, or `None` when bits 0–2 name no known codec.
    pub fn compression(&self) -> Option<CompressionCodec> {
        CompressionCodec::from_id((self.attributes() & ATTRIBUTE_COMPRESSION_MASK) as u8)
    }

    /// CreateTime or LogAppendTime (attribute bit 3).
    pub fn timestamp_type(&self) -> TimestampType {
        timestamp_type_of(self.attributes())
    }

    /// Attribute bit 4.
    pub fn is_transactional(&self) -> bool {
        self.attributes() & ATTRIBUTE_TRANSACTIONAL != 0
    }

    /// Attribute bit 5.
    pub fn is_control(&self) -> bool {
        self.attributes() & ATTRIBUTE_CONTROL != 0
    }

    /// lastOffset - baseOffset.
    pub fn last_offset_delta(&self) -> i32 {
        be_i32(self.bytes, LAST_OFFSET_DELTA_AT)
    }

    /// Offset of the last record (saturating, so garbage cannot overflow).
    pub fn last_offset(&self) -> i64 {
        self.base_offset()
            .saturating_add(self.last_offset_delta() as i64)
    }

    /// Timestamp of the first record.
    pub fn base_timestamp(&self) -> i64 {
        be_i64(self.bytes, BASE_TIMESTAMP_AT)
    }

    /// Largest record timestamp (or the append time for LogAppendTime batches).
    pub fn max_timestamp(&self) -> i64 {
        be_i64(self.bytes, MAX_TIMESTAMP_AT)
    }

    /// Idempotent producer id, or [`NO_PRODUCER_ID`].
    pub fn producer_id(&self) -> i64 {
        be_i64(self.bytes, PRODUCER_ID_AT)
    }

    /// Idempotent producer epoch, or [`NO_PRODUCER_EPOCH`].
    pub fn producer_epoch(&self) -> i16 {
        be_i16(self.bytes, PRODUCER_EPOCH_AT)
    }

    /// Sequence of the first record, or [`NO_SEQUENCE`].
    pub fn base_sequence(&self) -> i32 {
        be_i32(self.bytes, BASE_SEQUENCE_AT)
    }

    /// Number of records the producer says the batch holds.
    pub fn records_count(&self) -> i32 {
        be_i32(self.bytes, RECORDS_COUNT_AT)
    }

    /// Whether the batch was written by an idempotent producer.
    pub fn has_producer_id(&self) -> bool {
        self.producer_id() >= 0
    }

    /// An owned copy of the fields the log keeps about a batch.
    pub fn summary(&self) -> BatchSummary {
        BatchSummary {
            base_offset: self.base_offset(),
            last_offset_delta: self.last_offset_delta(),
            size_bytes: self.size_bytes(),
            partition_leader_epoch: self.partition_leader_epoch(),
            attributes: self.attributes(),
            base_timestamp: self.base_timestamp(),
            max_timestamp: self.max_timestamp(),
            producer_id: self.producer_id(),
            producer_epoch: self.producer_epoch(),
            base_sequence: self.base_sequence(),
            records_count: self.records_count(),
        }
    }
}

fn timestamp_type_of(attributes: i16) -> TimestampType {
    if attributes & ATTRIBUTE_LOG_APPEND_TIME != 0 {
        TimestampType::LogAppendTime
    } else {
        TimestampType::CreateTime
    }
}

/// The header fields of one batch, copied out so they outlive the buffer.
///
/// The log keeps these while it scans files or stages an append; it is a
/// plain value (no borrow) so scanners can hand it across buffer refills.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchSummary {
    /// Offset of the first record.
    pub base_offset: i64,
    /// lastOffset - baseOffset.
    pub last_offset_delta: i32,
    /// Whole batch size in bytes.
    pub size_bytes: usize,
    /// Leader epoch stamped at append.
    pub partition_leader_epoch: i32,
    /// Raw attribute bits.
    pub attributes: i16,
    /// Timestamp of the first record.
    pub base_timestamp: i64,
    /// Largest timestamp in the batch.
    pub max_timestamp: i64,
    /// Idempotent producer id or [`NO_PRODUCER_ID`].
    pub producer_id: i64,
    /// Idempotent producer epoch.
    pub producer_epoch: i16,
    /// Sequence of the first record.
    pub base_sequence: i32,
    /// recordsCount as stored.
    pub records_count: i32,
}

impl BatchSummary {
    /// Offset of the last record.
    pub fn last_offset(&self) -> i64 {
        self.base_offset
            .saturating_add(self.last_offset_delta as i64)
    }

    /// Offset right after the batch.
    pub fn next_offset(&self) -> i64 {
        self.last_offset().saturating_add(1)
    }

    /// Sequence of the last record, wrapping like Kafka's producer does.
    pub fn last_sequence(&self) -> i32 {
        if self.base_sequence < 0 || self.last_offset_delta < 0 {
            return NO_SEQUENCE;
        }
        increment_sequence(self.base_sequence, self.last_offset_delta)
    }

    /// Whether the batch was written by an idempotent producer.
    pub fn has_producer_id(&self) -> bool {
        self.producer_id >= 0
    }

    /// Attribute bit 5.
    pub fn is_control(&self) -> bool {
        self.attributes & ATTRIBUTE_CONTROL != 0
    }

    /// Attribute bit 4.
    pub fn is_transactional(&self) -> bool {
        self.attributes & ATTRIBUTE_TRANSACTIONAL != 0
    }

    /// CreateTime or LogAppendTime.
    pub fn timestamp_type(&self) -> TimestampType {
        timestamp_type_of(self.attributes)
    }
}

/// CRC-32C over bytes [21, end) of one whole batch, as stored in its crc field.
pub fn compute_crc(batch: &[u8]) -> u32 {
    crc32c::crc32c(batch.get(CRC_COVERED_FROM..).unwrap_or(&[]))
}

/// Checks the CRC of the batch at the start of `buf` (a convenience for
/// callers holding raw bytes; see [`RecordBatch::validate_crc`]).
pub fn validate_crc(buf: &[u8]) -> Result<(), BatchError> {
    RecordBatch::parse(buf)?.validate_crc()
}

/// One whole v2 batch (header and records) borrowed from a larger buffer.
#[derive(Clone, Copy, Debug)]
pub struct RecordBatch<'a> {
    header: BatchHeader<'a>,
    bytes: &'a [u8],
}

impl<'a> RecordBatch<'a> {
    /// Takes the first batch of `buf`; fails if the buffer ends inside it.
    pub fn parse(buf: &'a [u8]) -> Result<Self, BatchError> {
        let header = BatchHeader::parse(buf)?;
        let size = header.size_bytes();
        let bytes = buf.get(..size).ok_or(BatchError::Truncated {
            available_bytes: buf.len(),
            needed_bytes: size,
        })?;
        Ok(Self { header, bytes })
    }

    /// The header view.
    pub fn header(&self) -> BatchHeader<'a> {
        self.header
    }

    /// The whole batch.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The (possibly compressed) records after the header.
    pub fn records_bytes(&self) -> &'a [u8] {
        &self.bytes[HEADER_BYTES..]
    }

    /// Bytes the batch occupies.
    pub fn size_bytes(&self) -> usize {
        self.bytes.len()
    }

    /// Checks the stored CRC-32C against bytes [21, end).
    pub fn validate_crc(&self) -> Result<(), BatchError> {
        let stored = self.header.crc();
        let computed = compute_crc(self.bytes);
        if stored == computed {
            Ok(())
        } else {
            Err(BatchError::CrcMismatch { stored, computed })
        }
    }
}

/// Walks the batches of a buffer (a produce request's records, a fetch
/// response, a chunk of a segment) front to back.
///
/// Yields `(position, batch)`; after the first error it yields that error once
/// and then stops, because nothing after a bad length can be trusted. The walk
/// is bounded by the buffer: every batch is at least [`HEADER_BYTES`] long.
#[derive(Clone, Debug)]
pub struct Batches<'a> {
    buf: &'a [u8],
    position: usize,
    failed: bool,
}

impl<'a> Batches<'a> {
    /// Starts at the beginning of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Self {
            buf,
            position: 0,
            failed: false,
        }
    }

    /// Position of the next batch, i.e. bytes consumed so far.
    pub fn position(&self) -> usize {
        self.position
    }
}

impl<'a> Iterator for Batches<'a> {
    type Item = Result<(usize, RecordBatch<'a>), BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.position >= self.buf.len() {
            return None;
        }
        match RecordBatch::parse(&self.buf[self.position..]) {
            Ok(batch) => {
                let position = self.position;
                self.position += batch.size_bytes();
                Some(Ok((position, batch)))
            }
            Err(error) => {
                self.failed = true;
                Some(Err(error))
            }
        }
    }
}

/// A batch being stamped by the broker before it is written.
///
/// Only the fields Kafka lets a broker change are settable: base offset and
/// leader epoch (outside the CRC, so no recompute) and the LogAppendTime
/// timestamp (inside the CRC, so it recomputes).
#[derive(Debug)]
pub struct RecordBatchMut<'a> {
    bytes: &'a mut [u8],
}

impl<'a> RecordBatchMut<'a> {
    /// Takes exactly one whole batch; `bytes.len()` must equal its size.
    pub fn new(bytes: &'a mut [u8]) -> Result<Self, BatchError> {
        let size = BatchHeader::parse(bytes)?.size_bytes();
        if size != bytes.len() {
            return Err(BatchError::Truncated {
                available_bytes: bytes.len(),
                needed_bytes: size,
            });
        }
        Ok(Self { bytes })
    }

    /// Writes baseOffset (outside the CRC).
    pub fn set_base_offset(&mut self, base_offset: i64) {
        self.bytes[BASE_OFFSET_AT..BASE_OFFSET_AT + 8].copy_from_slice(&base_offset.to_be_bytes());
    }

    /// Writes partitionLeaderEpoch (outside the CRC).
    pub fn set_partition_leader_epoch(&mut self, epoch: i32) {
        self.bytes[PARTITION_LEADER_EPOCH_AT..PARTITION_LEADER_EPOCH_AT + 4]
            .copy_from_slice(&epoch.to_be_bytes());
    }

    /// Marks the batch LogAppendTime with `max_timestamp_ms` and recomputes
    /// the CRC, as Kafka's LogValidator does for LogAppendTime topics.
    pub fn set_log_append_time(&mut self, max_timestamp_ms: i64) {
        let attributes =
            i16::from_be_bytes([self.bytes[ATTRIBUTES_AT], self.bytes[ATTRIBUTES_AT + 1]])
                | ATTRIBUTE_LOG_APPEND_TIME;
        self.bytes[ATTRIBUTES_AT..ATTRIBUTES_AT + 2].copy_from_slice(&attributes.to_be_bytes());
        self.bytes[MAX_TIMESTAMP_AT..MAX_TIMESTAMP_AT + 8]
            .copy_from_slice(&max_timestamp_ms.to_be_bytes());
        self.refresh_crc();
    }

    /// Completes a batch whose records were re-encoded with `codec` (a
    /// topic's `compression.type`): `bytes` holds [`HEADER_BYTES`] of room
    /// followed by the new records. The header is `original`'s except the
    /// codec bits, batchLength and the CRC, as Kafka's LogValidator rebuilds
    /// it. Fails if the batch is too large for a 32-bit batchLength.
    pub fn rebuild_header(
        bytes: &'a mut [u8],
        original: &[u8; HEADER_BYTES],
        codec: CompressionCodec,
    ) -> Result<Self, BatchError> {
        let batch_length = bytes
            .len()
            .checked_sub(LOG_OVERHEAD_BYTES)
            .and_then(|length| i32::try_from(length).ok())
            .filter(|&length| length >= (HEADER_BYTES - LOG_OVERHEAD_BYTES) as i32)
            .ok_or(BatchError::InvalidLength {
                batch_length: i32::try_from(bytes.len()).unwrap_or(i32::MAX),
            })?;
        bytes[..HEADER_BYTES].copy_from_slice(original);
        bytes[BATCH_LENGTH_AT..BATCH_LENGTH_AT + 4].copy_from_slice(&batch_length.to_be_bytes());
        let attributes =
            (be_i16(original, ATTRIBUTES_AT) & !ATTRIBUTE_COMPRESSION_MASK) | codec.id() as i16;
        bytes[ATTRIBUTES_AT..ATTRIBUTES_AT + 2].copy_from_slice(&attributes.to_be_bytes());
        let mut batch = Self { bytes };
        batch.refresh_crc();
        Ok(batch)
    }

    /// Recomputes and stores the CRC after a change inside the covered range.
    pub fn refresh_crc(&mut self) {
        let crc = compute_crc(self.bytes);
        self.bytes[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
    }
}

/// Test helpers shared by the log's unit tests: hand-built batches.
#[cfg(test)]
pub(crate) mod test_batches {
    use super::*;

    /// A hand-built uncompressed batch; records are minimal (no key, fixed value).
    #[derive(Clone, Debug)]
    pub(crate) struct TestBatch {
        pub base_offset: i64,
        pub records: i32,
        pub base_timestamp: i64,
        /// Timestamp delta of each record (len == records), defaults to 0..records.
        pub timestamp_deltas: Option<Vec<i64>>,
        pub producer_id: i64,
        pub producer_epoch: i16,
        pub base_sequence: i32,
        pub value_bytes: usize,
        pub attributes: i16,
    }

    impl TestBatch {
        pub(crate) fn new(records: i32) -> Self {
            Self {
                base_offset: 0,
                records,
                base_timestamp: 1_000,
                timestamp_deltas: None,
                producer_id: NO_PRODUCER_ID,
                producer_epoch: NO_PRODUCER_EPOCH,
                base_sequence: NO_SEQUENCE,
                value_bytes: 10,
                attributes: 0,
            }
        }

        pub(crate) fn idempotent(
            mut self,
            producer_id: i64,
            epoch: i16,
            base_sequence: i32,
        ) -> Self {
            self.producer_id = producer_id;
            self.producer_epoch = epoch;
            self.base_sequence = base_sequence;
            self
        }

        pub(crate) fn timestamp(mut self, base_timestamp: i64) -> Self {
            self.base_timestamp = base_timestamp;
            self
        }

        pub(crate) fn deltas(mut self, deltas: Vec<i64>) -> Self {
            self.timestamp_deltas = Some(deltas);
            self
        }

        pub(crate) fn value_bytes(mut self, value_bytes: usize) -> Self {
            self.value_bytes = value_bytes;
            self
        }

        pub(crate) fn encode(&self) -> Vec<u8> {
            let mut records = Vec::new();
            let mut max_delta = 0i64;
            for i in 0..self.records {
                let ts_delta = match &self.timestamp_deltas {
                    Some(deltas) => deltas[i as usize],
                    None => i as i64,
                };
                max_delta = max_delta.max(ts_delta);
                let mut body = Vec::new();
                body.push(0u8); // attributes
                put_varlong(&mut body, ts_delta);
                put_varlong(&mut body, i as i64);
                put_varlong(&mut body, -1); // key
                put_varlong(&mut body, self.value_bytes as i64);
                body.extend(std::iter::repeat_n(b'v', self.value_bytes));
                put_varlong(&mut body, 0); // headers
                put_varlong(&mut records, body.len() as i64);
                records.extend_from_slice(&body);
            }
            let mut out = Vec::with_capacity(HEADER_BYTES + records.len());
            out.extend_from_slice(&self.base_offset.to_be_bytes());
            let batch_length = (HEADER_BYTES - LOG_OVERHEAD_BYTES + records.len()) as i32;
            out.extend_from_slice(&batch_length.to_be_bytes());
            out.extend_from_slice(&NO_PARTITION_LEADER_EPOCH.to_be_bytes());
            out.push(MAGIC_V2 as u8);
            out.extend_from_slice(&[0u8; 4]);
            out.extend_from_slice(&self.attributes.to_be_bytes());
            out.extend_from_slice(&(self.records - 1).to_be_bytes());
            out.extend_from_slice(&self.base_timestamp.to_be_bytes());
            out.extend_from_slice(&(self.base_timestamp + max_delta).to_be_bytes());
            out.extend_from_slice(&self.producer_id.to_be_bytes());
            out.extend_from_slice(&self.producer_epoch.to_be_bytes());
            out.extend_from_slice(&self.base_sequence.to_be_bytes());
            out.extend_from_slice(&self.records.to_be_bytes());
            out.extend_from_slice(&records);
            let crc = compute_crc(&out);
            out[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
            out
        }
    }

    fn put_varlong(out: &mut Vec<u8>, value: i64) {
        let mut zigzag = ((value << 1) ^ (value >> 63)) as u64;
        loop {
            if zigzag < 0x80 {
                out.push(zigzag as u8);
                return;
            }
            out.push((zigzag as u8 & 0x7f) | 0x80);
            zigzag >>= 7;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_batches::TestBatch;
    use super::*;
    use bytes::{Bytes, BytesMut};
    use kafka_protocol::records::{
        Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions,
    };
    use proptest::prelude::*;

    fn kafka_protocol_batch(records: i64, producer_id: i64, compression: Compression) -> Vec<u8> {
        let records: Vec<Record> = (0..records)
            .map(|i| Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: NO_PARTITION_LEADER_EPOCH,
                producer_id,
                producer_epoch: if producer_id >= 0 {
                    3
                } else {
                    NO_PRODUCER_EPOCH
                },
                timestamp_type: kafka_protocol::records::TimestampType::Creation,
                offset: i,
                sequence: if producer_id >= 0 {
                    7 + i as i32
                } else {
                    i as i32
                },
                timestamp: 5_000 + i,
                key: Some(Bytes::from(format!("key-{i}"))),
                value: Some(Bytes::from(vec![b'x'; 20])),
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
        .expect("encode test batch");
        buf.to_vec()
    }

    #[test]
    fn header_fields_match_kafka_protocol_encoder() {
        let bytes = kafka_protocol_batch(4, 42, Compression::None);
        let batch = RecordBatch::parse(&bytes).expect("parse");
        let header = batch.header();
        assert_eq!(header.base_offset(), 0);
        assert_eq!(header.size_bytes(), bytes.len());
        assert_eq!(header.magic(), MAGIC_V2);
        assert_eq!(header.last_offset_delta(), 3);
        assert_eq!(header.last_offset(), 3);
        assert_eq!(header.records_count(), 4);
        assert_eq!(header.base_timestamp(), 5_000);
        assert_eq!(header.max_timestamp(), 5_003);
        assert_eq!(header.producer_id(), 42);
        assert_eq!(header.producer_epoch(), 3);
        assert_eq!(header.base_sequence(), 7);
        assert_eq!(header.summary().last_sequence(), 10);
        assert_eq!(header.compression(), Some(CompressionCodec::None));
        assert_eq!(header.timestamp_type(), TimestampType::CreateTime);
        assert!(!header.is_control() && !header.is_transactional());
        batch.validate_crc().expect("crc");
    }

    #[test]
    fn compressed_batch_reports_its_codec() {
        let bytes = kafka_protocol_batch(3, -1, Compression::Gzip);
        let header = BatchHeader::parse(&bytes).expect("parse");
        assert_eq!(header.compression(), Some(CompressionCodec::Gzip));
        RecordBatch::parse(&bytes)
            .expect("parse")
            .validate_crc()
            .expect("crc");
    }

    #[test]
    fn old_message_format_is_reported_as_unsupported_magic() {
        let mut v1 = vec![0u8; 30];
        v1[MAGIC_AT] = 1;
        assert_eq!(
            BatchHeader::parse(&v1).unwrap_err(),
            BatchError::UnsupportedMagic { magic: 1 }
        );
    }

    #[test]
    fn short_buffer_is_truncated_not_a_panic() {
        let bytes = TestBatch::new(2).encode();
        for len in 0..bytes.len() {
            assert!(RecordBatch::parse(&bytes[..len]).is_err(), "len {len}");
        }
    }

    #[test]
    fn batch_length_below_header_is_rejected() {
        let mut bytes = TestBatch::new(1).encode();
        bytes[BATCH_LENGTH_AT..BATCH_LENGTH_AT + 4].copy_from_slice(&10i32.to_be_bytes());
        assert_eq!(
            BatchHeader::parse(&bytes).unwrap_err(),
            BatchError::InvalidLength { batch_length: 10 }
        );
    }

    #[test]
    fn stamping_offset_and_epoch_keeps_the_crc_valid() {
        let mut bytes = TestBatch::new(3).encode();
        let mut batch = RecordBatchMut::new(&mut bytes).expect("batch");
        batch.set_base_offset(1234);
        batch.set_partition_leader_epoch(9);
        let view = RecordBatch::parse(&bytes).expect("parse");
        assert_eq!(view.header().base_offset(), 1234);
        assert_eq!(view.header().partition_leader_epoch(), 9);
        view.validate_crc().expect("crc still valid");
    }

    #[test]
    fn log_append_time_rewrites_max_timestamp_and_crc() {
        let mut bytes = kafka_protocol_batch(2, -1, Compression::None);
        RecordBatchMut::new(&mut bytes)
            .expect("batch")
            .set_log_append_time(99_999);
        let view = RecordBatch::parse(&bytes).expect("parse");
        assert_eq!(view.header().timestamp_type(), TimestampType::LogAppendTime);
        assert_eq!(view.header().max_timestamp(), 99_999);
        view.validate_crc().expect("crc recomputed");
        // kafka-protocol agrees the batch is intact.
        let decoded = RecordBatchDecoder::decode(&mut Bytes::from(bytes)).expect("decode");
        assert_eq!(decoded.records.len(), 2);
    }

    #[test]
    fn rebuilt_header_keeps_every_field_but_codec_length_and_crc() {
        let original = kafka_protocol_batch(3, 42, Compression::None);
        let head: [u8; HEADER_BYTES] = original[..HEADER_BYTES].try_into().unwrap();
        let mut rebuilt = vec![0u8; HEADER_BYTES];
        rebuilt.extend_from_slice(&original[HEADER_BYTES..]);
        rebuilt.extend_from_slice(&[0u8; 5]);
        RecordBatchMut::rebuild_header(&mut rebuilt, &head, CompressionCodec::Zstd).unwrap();
        let view = RecordBatch::parse(&rebuilt).unwrap();
        view.validate_crc().unwrap();
        let (a, b) = (BatchHeader::parse(&original).unwrap(), view.header());
        assert_eq!(b.compression(), Some(CompressionCodec::Zstd));
        assert_eq!(b.size_bytes(), original.len() + 5);
        assert_eq!(a.attributes() & !7, b.attributes() & !7);
        let mut left = a.summary();
        let right = b.summary();
        left.size_bytes = right.size_bytes;
        left.attributes = right.attributes;
        assert_eq!(left, right);
    }

    #[test]
    fn batches_iterates_a_buffer_and_stops_at_garbage() {
        let mut buf = Vec::new();
        for records in 1..=3 {
            buf.extend(TestBatch::new(records).encode());
        }
        let positions: Vec<usize> = Batches::new(&buf).map(|b| b.expect("batch").0).collect();
        assert_eq!(positions.len(), 3);
        buf.extend_from_slice(&[0u8; 20]);
        let results: Vec<_> = Batches::new(&buf).collect();
        assert_eq!(results.len(), 4);
        assert!(results[3].is_err());
    }

    #[test]
    fn sequence_wraps_at_i32_max() {
        assert_eq!(increment_sequence(i32::MAX, 1), 0);
        assert_eq!(increment_sequence(i32::MAX - 1, 3), 1);
        assert_eq!(increment_sequence(5, 2), 7);
    }

    proptest! {
        #[test]
        fn any_single_bit_flip_in_crc_range_is_detected(
            records in 1i32..20,
            value_bytes in 0usize..64,
            flip in any::<prop::sample::Index>(),
            bit in 0u8..8,
        ) {
            let mut bytes = TestBatch::new(records).value_bytes(value_bytes).encode();
            let at = CRC_COVERED_FROM + flip.index(bytes.len() - CRC_COVERED_FROM);
            bytes[at] ^= 1 << bit;
            let verdict = RecordBatch::parse(&bytes).and_then(|b| b.validate_crc());
            prop_assert!(verdict.is_err());
        }

        #[test]
        fn encode_parse_round_trip(
            records in 1i32..50,
            base_offset in 0i64..i64::MAX / 2,
            base_timestamp in 0i64..4_000_000_000_000,
            producer_id in -1i64..1000,
            base_sequence in 0i32..i32::MAX,
        ) {
            let mut batch = TestBatch::new(records).timestamp(base_timestamp);
            batch.base_offset = base_offset;
            if producer_id >= 0 {
                batch = batch.idempotent(producer_id, 1, base_sequence);
            }
            let bytes = batch.encode();
            let view = RecordBatch::parse(&bytes).expect("parse");
            view.validate_crc().expect("crc");
            let summary = view.header().summary();
            prop_assert_eq!(summary.base_offset, base_offset);
            prop_assert_eq!(summary.last_offset(), base_offset + records as i64 - 1);
            prop_assert_eq!(summary.records_count, records);
            prop_assert_eq!(summary.size_bytes, bytes.len());
            prop_assert_eq!(summary.max_timestamp, base_timestamp + records as i64 - 1);
            if producer_id >= 0 {
                prop_assert_eq!(summary.last_sequence(), increment_sequence(base_sequence, records - 1));
            }
        }

        #[test]
        fn parsing_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            for (_, batch) in Batches::new(&bytes).flatten() {
                let _ = batch.validate_crc();
            }
        }
    }
}
