//! What can go wrong in the log, each case carrying the Kafka error code the
//! broker answers with, so the API layer maps errors without string matching.

use std::io;
use std::path::{Path, PathBuf};

use thiserror::Error;

/// Kafka error codes the log produces (`org.apache.kafka.common.protocol.Errors`).
pub mod kafka_code {
    /// UNKNOWN_SERVER_ERROR
    pub const UNKNOWN_SERVER_ERROR: i16 = -1;
    /// OFFSET_OUT_OF_RANGE
    pub const OFFSET_OUT_OF_RANGE: i16 = 1;
    /// CORRUPT_MESSAGE
    pub const CORRUPT_MESSAGE: i16 = 2;
    /// MESSAGE_TOO_LARGE
    pub const MESSAGE_TOO_LARGE: i16 = 10;
    /// RECORD_LIST_TOO_LARGE
    pub const RECORD_LIST_TOO_LARGE: i16 = 18;
    /// INVALID_TIMESTAMP
    pub const INVALID_TIMESTAMP: i16 = 32;
    /// INVALID_CONFIG
    pub const INVALID_CONFIG: i16 = 40;
    /// UNSUPPORTED_FOR_MESSAGE_FORMAT
    pub const UNSUPPORTED_FOR_MESSAGE_FORMAT: i16 = 43;
    /// OUT_OF_ORDER_SEQUENCE_NUMBER
    pub const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;
    /// DUPLICATE_SEQUENCE_NUMBER (kept for the API layer; see `AppendError`)
    pub const DUPLICATE_SEQUENCE_NUMBER: i16 = 46;
    /// INVALID_PRODUCER_EPOCH
    pub const INVALID_PRODUCER_EPOCH: i16 = 47;
    /// KAFKA_STORAGE_ERROR
    pub const KAFKA_STORAGE_ERROR: i16 = 56;
    /// REQUEST_TIMED_OUT
    pub const REQUEST_TIMED_OUT: i16 = 7;
    /// INVALID_RECORD
    pub const INVALID_RECORD: i16 = 87;
}

/// A failure of the log itself: the disk, the files, or a bad request offset.
#[derive(Debug, Error)]
pub enum LogError {
    /// The filesystem failed; the log may have gone offline (see `PartitionLog`).
    #[error("I/O error on {path}: {source}")]
    Io {
        /// File or directory that failed.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// Bytes on disk are not what the log wrote (found outside recovery).
    #[error("corrupt log data in {path} at position {position}: {reason}")]
    Corrupt {
        /// The damaged file.
        path: PathBuf,
        /// Byte position of the damage.
        position: u64,
        /// What was wrong.
        reason: String,
    },
    /// The requested offset is outside [log start offset, log end offset].
    #[error("offset {offset} is out of range [{log_start_offset}, {log_end_offset}]")]
    OffsetOutOfRange {
        /// The offset asked for.
        offset: i64,
        /// Current log start offset.
        log_start_offset: i64,
        /// Current log end offset.
        log_end_offset: i64,
    },
    /// The config cannot be used.
    #[error("invalid log config: {reason}")]
    InvalidConfig {
        /// What was wrong.
        reason: String,
    },
    /// An earlier write failed half-way; the log refuses writes until reopened
    /// (Kafka takes the log directory offline for the same reason).
    #[error("log in {path} is offline after an earlier I/O failure")]
    Offline {
        /// The partition directory.
        path: PathBuf,
    },
}

impl LogError {
    /// The Kafka error code for a response.
    pub fn kafka_error_code(&self) -> i16 {
        match self {
            LogError::Io { .. } | LogError::Corrupt { .. } | LogError::Offline { .. } => {
                kafka_code::KAFKA_STORAGE_ERROR
            }
            LogError::OffsetOutOfRange { .. } => kafka_code::OFFSET_OUT_OF_RANGE,
            LogError::InvalidConfig { .. } => kafka_code::INVALID_CONFIG,
        }
    }
}

/// Attaches the path to an `io::Error`, because "No such file" alone is useless.
pub(crate) trait IoContext<T> {
    fn at(self, path: &Path) -> Result<T, LogError>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn at(self, path: &Path) -> Result<T, LogError> {
        self.map_err(|source| LogError::Io {
            path: path.to_path_buf(),
            source,
        })
    }
}

/// Why a Produce (or follower) append was refused; nothing was written.
///
/// One variant per Kafka error, so the produce handler answers with
/// [`AppendError::kafka_error_code`]. Kafka ≥ 2.x never answers
/// DUPLICATE_SEQUENCE_NUMBER for a retry: a retry of one of the last five
/// batches is acknowledged with its original offsets (`AppendInfo::duplicate`),
/// anything older is OUT_OF_ORDER_SEQUENCE_NUMBER, and so here.
#[derive(Debug, Error)]
pub enum AppendError {
    /// Bad CRC, bad length, bad framing (CORRUPT_MESSAGE).
    #[error("corrupt record batch at byte {position}: {reason}")]
    CorruptMessage {
        /// Byte position in the request's records.
        position: usize,
        /// What was wrong.
        reason: String,
    },
    /// A v0/v1 message set (UNSUPPORTED_FOR_MESSAGE_FORMAT).
    #[error("record batch magic {magic} is not supported; only v2 batches are accepted")]
    UnsupportedForMessageFormat {
        /// The magic byte sent.
        magic: i8,
    },
    /// One batch exceeds max.message.bytes (MESSAGE_TOO_LARGE).
    #[error("record batch of {batch_bytes} bytes exceeds max.message.bytes {max_message_bytes}")]
    MessageTooLarge {
        /// Size of the offending batch.
        batch_bytes: usize,
        /// The limit.
        max_message_bytes: u32,
    },
    /// The request's records exceed segment.bytes (RECORD_LIST_TOO_LARGE).
    #[error("{records_bytes} bytes of records exceed segment.bytes {segment_bytes}")]
    RecordListTooLarge {
        /// Size of all batches together.
        records_bytes: usize,
        /// The limit.
        segment_bytes: u64,
    },
    /// A semantically invalid batch: count/offset mismatch, control batch from a
    /// client, missing sequence (INVALID_RECORD; produce < v8 maps it to CORRUPT_MESSAGE).
    #[error("invalid record batch at byte {position}: {reason}")]
    InvalidRecord {
        /// Byte position in the request's records.
        position: usize,
        /// What was wrong.
        reason: String,
    },
    /// A CreateTime timestamp outside message.timestamp.{before,after}.max.ms (INVALID_TIMESTAMP).
    #[error("timestamp {timestamp_ms} is out of the accepted range around now {now_ms}")]
    InvalidTimestamp {
        /// The batch's offending timestamp.
        timestamp_ms: i64,
        /// Broker time of the append.
        now_ms: i64,
    },
    /// One or more records broke a per-record rule (Kafka's
    /// `RecordValidationException`): INVALID_TIMESTAMP if any of them is a
    /// timestamp error, else INVALID_RECORD. Produce v8+ answers with the
    /// list; the message summarises its start.
    #[error("{}", summarize_record_errors(*.invalid_timestamp, .record_errors, *.record_errors_total))]
    RecordErrors {
        /// Whether any record error is a timestamp error.
        invalid_timestamp: bool,
        /// The first [`RECORD_ERRORS_MAX`] errors, in record order.
        record_errors: Vec<RecordError>,
        /// How many records were rejected (may exceed the list).
        record_errors_total: usize,
    },
    /// A sequence gap or a retry too old to be in the last five batches (OUT_OF_ORDER_SEQUENCE_NUMBER).
    #[error("out of order sequence for producer {producer_id}: got {first_sequence} after {last_sequence}")]
    OutOfOrderSequence {
        /// The producer.
        producer_id: i64,
        /// baseSequence of the rejected batch.
        first_sequence: i32,
        /// Last sequence the log holds for the producer (-1 if none in this epoch).
        last_sequence: i32,
    },
    /// The batch's producer epoch is older than the log's (INVALID_PRODUCER_EPOCH).
    #[error("producer {producer_id} epoch {epoch} is older than current epoch {current_epoch}")]
    InvalidProducerEpoch {
        /// The producer.
        producer_id: i64,
        /// Epoch in the batch.
        epoch: i16,
        /// Epoch the log holds.
        current_epoch: i16,
    },
    /// A follower append that does not continue the log (Kafka's
    /// UnexpectedAppendOffsetException; internal, never sent to a client).
    #[error("follower append starts at offset {first_offset}, log end offset is {log_end_offset}")]
    UnexpectedAppendOffset {
        /// First offset in the replicated batches.
        first_offset: i64,
        /// Where the log ends.
        log_end_offset: i64,
    },
    /// The partition's Raft group did not take or commit the batches in
    /// time (this node does not lead, a quorum is missing): REQUEST_TIMED_OUT,
    /// retriable.
    #[error("not committed: {0}")]
    NotCommitted(String),
    /// The disk failed (KAFKA_STORAGE_ERROR).
    #[error(transparent)]
    Storage(#[from] LogError),
}

impl AppendError {
    /// The Kafka error code for the produce response.
    pub fn kafka_error_code(&self) -> i16 {
        match self {
            AppendError::CorruptMessage { .. } => kafka_code::CORRUPT_MESSAGE,
            AppendError::UnsupportedForMessageFormat { .. } => {
                kafka_code::UNSUPPORTED_FOR_MESSAGE_FORMAT
            }
            AppendError::MessageTooLarge { .. } => kafka_code::MESSAGE_TOO_LARGE,
            AppendError::RecordListTooLarge { .. } => kafka_code::RECORD_LIST_TOO_LARGE,
            AppendError::InvalidRecord { .. } => kafka_code::INVALID_RECORD,
            AppendError::InvalidTimestamp { .. } => kafka_code::INVALID_TIMESTAMP,
            AppendError::RecordErrors {
                invalid_timestamp: true,
                ..
            } => kafka_code::INVALID_TIMESTAMP,
            AppendError::RecordErrors { .. } => kafka_code::INVALID_RECORD,
            AppendError::OutOfOrderSequence { .. } => kafka_code::OUT_OF_ORDER_SEQUENCE_NUMBER,
            AppendError::InvalidProducerEpoch { .. } => kafka_code::INVALID_PRODUCER_EPOCH,
            AppendError::UnexpectedAppendOffset { .. } => kafka_code::UNKNOWN_SERVER_ERROR,
            AppendError::NotCommitted(_) => kafka_code::REQUEST_TIMED_OUT,
            AppendError::Storage(error) => error.kafka_error_code(),
        }
    }
}

/// Record errors kept per rejected partition: enough to show a producer
/// what is wrong with every record of any real batch, small enough that a
/// batch of a million bad records cannot make the answer huge.
pub const RECORD_ERRORS_MAX: usize = 1_000;
/// Record errors quoted in the partition's error message.
const RECORD_ERRORS_IN_MESSAGE: usize = 3;

/// Why one record of a batch was rejected (Kafka's `ProduceResponse.RecordError`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordError {
    /// The record's index within its batch (0-based).
    pub batch_index: i32,
    /// What is wrong with it.
    pub message: String,
}

fn summarize_record_errors(
    invalid_timestamp: bool,
    errors: &[RecordError],
    total: usize,
) -> String {
    let kind = if invalid_timestamp {
        "an invalid timestamp"
    } else {
        "record errors"
    };
    let mut summary = format!("{total} record(s) rejected for {kind}");
    let shown = errors.len().min(RECORD_ERRORS_IN_MESSAGE);
    if shown > 0 {
        summary.push_str(&format!("; first {shown}:"));
        for e in &errors[..shown] {
            summary.push_str(&format!(" [record {}: {}]", e.batch_index, e.message));
        }
    }
    summary
}

/// Why a Fetch read returned no data.
#[derive(Debug, Error)]
pub enum ReadError {
    /// start_offset is outside [log start offset, log end offset] (OFFSET_OUT_OF_RANGE).
    #[error("fetch offset {offset} is out of range [{log_start_offset}, {log_end_offset}]")]
    OffsetOutOfRange {
        /// The offset asked for.
        offset: i64,
        /// Current log start offset.
        log_start_offset: i64,
        /// Current log end offset.
        log_end_offset: i64,
    },
    /// The disk failed or returned damaged data (KAFKA_STORAGE_ERROR).
    #[error(transparent)]
    Storage(#[from] LogError),
}

impl ReadError {
    /// The Kafka error code for the fetch response.
    pub fn kafka_error_code(&self) -> i16 {
        match self {
            ReadError::OffsetOutOfRange { .. } => kafka_code::OFFSET_OUT_OF_RANGE,
            ReadError::Storage(error) => error.kafka_error_code(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_map_to_kafka_storage_error() {
        let error = AppendError::from(LogError::Io {
            path: PathBuf::from("/x"),
            source: io::Error::other("disk on fire"),
        });
        assert_eq!(error.kafka_error_code(), 56);
    }

    #[test]
    fn every_append_error_has_its_kafka_code() {
        let cases: [(AppendError, i16); 8] = [
            (
                AppendError::CorruptMessage {
                    position: 0,
                    reason: String::new(),
                },
                2,
            ),
            (
                AppendError::MessageTooLarge {
                    batch_bytes: 1,
                    max_message_bytes: 0,
                },
                10,
            ),
            (
                AppendError::RecordListTooLarge {
                    records_bytes: 1,
                    segment_bytes: 0,
                },
                18,
            ),
            (AppendError::UnsupportedForMessageFormat { magic: 1 }, 43),
            (
                AppendError::OutOfOrderSequence {
                    producer_id: 1,
                    first_sequence: 5,
                    last_sequence: 2,
                },
                45,
            ),
            (
                AppendError::InvalidProducerEpoch {
                    producer_id: 1,
                    epoch: 0,
                    current_epoch: 1,
                },
                47,
            ),
            (
                AppendError::InvalidTimestamp {
                    timestamp_ms: 0,
                    now_ms: 0,
                },
                32,
            ),
            (
                AppendError::InvalidRecord {
                    position: 0,
                    reason: String::new(),
                },
                87,
            ),
        ];
        for (error, code) in cases {
            assert_eq!(error.kafka_error_code(), code, "{error}");
        }
    }
}
