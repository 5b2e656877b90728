//! Partition storage: Kafka's `UnifiedLog` / `LogSegment` for Fjord.
//!
//! A partition is a directory of segments named by base offset (20 digits,
//! as in Kafka): `.log` holds record batches exactly as producers sent them
//! (plus the broker-stamped base offset and leader epoch), `.index` maps
//! offsets to positions and `.timeindex` timestamps to offsets, both sparse.
//! Nothing here decodes records on the produce or fetch path: batches are
//! validated by header and CRC ([`batch`]) and served as byte ranges.
//!
//! Files, one idea each:
//! - [`batch`] — the v2 batch header view, CRC, in-place stamping (public: the hot path uses it)
//! - `records` — finding one record inside one batch (ListOffsets only)
//! - `config` — [`LogConfig`], Kafka's topic configs for the log
//! - `error` — [`LogError`], [`AppendError`], [`ReadError`] with Kafka error codes
//! - `validator` — produce-time checks before anything is written
//! - `index_file`, `offset_index`, `time_index` — the sparse indexes
//! - [`file_cache`] — the process-wide cache of segment file descriptors
//! - `scanner` — bounded sequential walks over a segment's batches
//! - `segment` — one segment: append, read, lookups, recovery, truncation
//! - `producer_state` — idempotent producers: epochs, sequences, snapshots
//! - `checkpoint` — atomically written metadata (log start offset)
//! - `flush` — [`PendingFlush`]: a flush captured under the lock, synced without it
//! - `partition_log` — [`PartitionLog`]: the whole partition
//!
//! Known limits: transactions are not tracked (no LSO/aborted-txn index),
//! compaction is not implemented, record-level timestamp checks are
//! approximated by the batch's first and max timestamps, and decompression in
//! `records` is bounded after the fact (kafka-protocol cannot stop early).

pub mod batch;
mod checkpoint;
mod config;
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
pub use config::{
    BrokerCompression, LogConfig, MAX_DECOMPRESSED_MESSAGE_BYTES_DEFAULT, SEGMENT_BYTES_MAX,
    SEGMENT_BYTES_MIN,
};
pub use error::{kafka_code, AppendError, LogError, ReadError};
pub use flush::{FlushScope, PendingFlush};
pub use partition_log::{AppendInfo, PartitionLog, ReadInfo, LOG_DIR_ENTRIES_MAX};
pub use records::{find_record, DECOMPRESSED_BYTES_MAX};

#[cfg(test)]
mod tests;
