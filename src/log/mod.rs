//! Partition storage: Kafka's `UnifiedLog` / `LogSegment` for Fjord.
//!
//! A partition is a directory of segments named by base offset (20 digits,
//! as in Kafka): `.log` holds record batches exactly as producers sent them
//! (plus the broker-stamped base offset and leader epoch), `.index` maps
//! offsets to positions and `.timeindex` timestamps to offsets, both sparse.
//! Produce validates every client batch down to its records (as Kafka's
//! LogValidator does: decompressed as a stream, walked without copying keys
//! or values) before the partition lock is taken; Fetch serves stored batches
//! as byte ranges and never decodes a record.
//!
//! Files, one idea each:
//! - [`batch`] — the v2 batch header view, CRC, in-place stamping (public: the hot path uses it)
//! - `codec` — bounded streaming decompression and the recompressors (gzip, snappy, lz4, zstd)
//! - `records` — walking the records of one batch (validation, ListOffsets)
//! - `config` — [`LogConfig`], Kafka's topic configs for the log
//! - `error` — [`LogError`], [`AppendError`], [`ReadError`] with Kafka error codes
//! - `validator` — produce-time checks (headers, CRCs, every record) and
//!   the rebuild for a topic's `compression.type`, before anything is written
//! - `index_file`, `offset_index`, `time_index` — the sparse indexes
//! - [`file_cache`] — the process-wide cache of segment file descriptors
//! - `scanner` — bounded sequential walks over a segment's batches
//! - `segment` — one segment: append, read, lookups, recovery, truncation
//! - `producer_state` — idempotent producers: epochs, sequences, snapshots
//! - `checkpoint` — atomically written metadata (log start offset)
//! - `flush` — [`PendingFlush`]: a flush captured under the lock, synced without it
//! - `partition_log` — [`PartitionLog`]: the whole partition
//!
//! Known limits: transactions are not tracked (no LSO/aborted-txn index, so
//! transactional batches are refused), compaction is not implemented
//! (compacted topics only require keys), and batches that decompress past
//! [`DECOMPRESSED_BYTES_MAX`] are refused.

pub mod batch;
mod checkpoint;
mod codec;
mod config;
pub mod dir_lock;
mod error;
pub mod file_cache;
mod flush;
mod index_file;
mod offset_index;
mod partition_log;
mod producer_state;
mod records;
mod scanner;
mod segment;
mod time_index;
mod validator;

pub use batch::TimestampType;
pub use checkpoint::sync_dir;
pub use codec::{
    DECOMPRESSED_BYTES_MAX, GZIP_LEVEL_DEFAULT, LZ4_LEVEL_DEFAULT, ZSTD_LEVEL_DEFAULT,
    ZSTD_WINDOW_LOG_MAX,
};
pub use config::{
    BrokerCompression, LogConfig, MAX_DECOMPRESSED_MESSAGE_BYTES_DEFAULT, SEGMENT_BYTES_MAX,
    SEGMENT_BYTES_MIN,
};
pub use error::{kafka_code, AppendError, LogError, ReadError, RecordError, RECORD_ERRORS_MAX};
pub use flush::{FlushScope, PendingFlush};
pub use partition_log::{
    AppendInfo, PartitionLog, ReadInfo, CLEAN_SHUTDOWN_FILE, LOG_DIR_ENTRIES_MAX,
};
pub use records::find_record;
pub use validator::{validate_produce, Validated, ValidatedRecords};

#[cfg(test)]
mod tests;
