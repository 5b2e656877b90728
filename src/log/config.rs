//! Per-partition log settings, named after Kafka's topic configs.
//!
//! Values are plain numbers so the broker's config layer can fill them from
//! `segment.bytes`, `retention.ms` and friends. The log never trusts them
//! blindly: [`LogConfig::validate`] reports nonsense up front, and the
//! `*_effective` helpers clamp whatever is set to the ranges the on-disk
//! format can hold (positions and relative offsets are 32-bit, as in Kafka).

use crate::log::batch::TimestampType;
use crate::log::error::LogError;

/// A segment is at most 2 GiB - 1: index positions are 32-bit (Kafka's `segment.bytes` is an int).
pub const SEGMENT_BYTES_MAX: u64 = i32::MAX as u64;
/// Smallest segment that can hold a batch header; Kafka's floor is similar (14 bytes legacy).
pub const SEGMENT_BYTES_MIN: u64 = 64;
/// Smallest index file that holds at least two time-index entries.
pub const SEGMENT_INDEX_BYTES_MIN: u32 = 24;

/// Settings for one partition's log (Kafka topic configs in parentheses).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogConfig {
    /// Roll to a new segment before one grows past this (`segment.bytes`, 1 GiB).
    pub segment_bytes: u64,
    /// Roll when the active segment is older than this (`segment.ms`, 7 days).
    pub segment_ms: i64,
    /// Cap on each index file; a full index rolls the segment (`segment.index.bytes`, 10 MiB).
    pub segment_index_bytes: u32,
    /// Delete segments whose newest record is older than this; -1 keeps forever (`retention.ms`, 7 days).
    pub retention_ms: i64,
    /// Delete oldest segments while the log is larger than this; -1 = unlimited (`retention.bytes`).
    pub retention_bytes: i64,
    /// Bytes of batches between sparse index entries (`index.interval.bytes`, 4096).
    pub index_interval_bytes: u32,
    /// Largest batch accepted (`max.message.bytes`, 1048588).
    pub max_message_bytes: u32,
    /// Who sets record timestamps (`message.timestamp.type`, CreateTime).
    pub message_timestamp_type: TimestampType,
    /// CreateTime batches older than now minus this are rejected (`message.timestamp.before.max.ms`, unlimited).
    pub message_timestamp_before_max_ms: i64,
    /// CreateTime batches newer than now plus this are rejected (`message.timestamp.after.max.ms`, 1 hour as of Kafka 4.0).
    pub message_timestamp_after_max_ms: i64,
    /// Forget an idle idempotent producer after this (`producer.id.expiration.ms`, 1 day).
    pub producer_id_expiration_ms: i64,
    /// What the broker does to a produced batch's codec (`compression.type`, `producer`).
    pub compression: BrokerCompression,
    /// The topic's cleanup policy includes `compact`: every record needs a key.
    pub compact: bool,
    /// Largest decompressed record body accepted (`max.decompressed.message.bytes`).
    pub max_decompressed_message_bytes: u32,
    /// `min.insync.replicas`: replicas in sync for an acks=all produce.
    pub min_insync_replicas: u32,
}

/// Kafka's `compression.type` topic config: keep the producer's codec, or
/// store every batch with one codec (recompressing when they differ).
///
/// The level is part of the variant because Kafka's `compression.<codec>.level`
/// only means something for the codec it names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BrokerCompression {
    /// `producer`: store batches with the codec they arrived in (bytes in, bytes out).
    #[default]
    Producer,
    /// `uncompressed`.
    Uncompressed,
    /// `gzip` at `compression.gzip.level` (-1 = the codec's default, else 1..=9).
    Gzip { level: i32 },
    /// `snappy` (no level).
    Snappy,
    /// `lz4` at `compression.lz4.level` (1..=17, Kafka's default 9).
    Lz4 { level: i32 },
    /// `zstd` at `compression.zstd.level` (-131072..=22, Kafka's default 3).
    Zstd { level: i32 },
}

/// Kafka's default `max.decompressed.message.bytes` (`Integer.MAX_VALUE - 8`).
pub const MAX_DECOMPRESSED_MESSAGE_BYTES_DEFAULT: u32 = 2_147_483_639;

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            segment_bytes: 1024 * 1024 * 1024,
            segment_ms: 7 * 24 * 60 * 60 * 1000,
            segment_index_bytes: 10 * 1024 * 1024,
            retention_ms: 7 * 24 * 60 * 60 * 1000,
            retention_bytes: -1,
            index_interval_bytes: 4096,
            max_message_bytes: 1_048_588,
            message_timestamp_type: TimestampType::CreateTime,
            message_timestamp_before_max_ms: i64::MAX,
            message_timestamp_after_max_ms: 60 * 60 * 1000,
            producer_id_expiration_ms: 24 * 60 * 60 * 1000,
            compression: BrokerCompression::Producer,
            compact: false,
            max_decompressed_message_bytes: MAX_DECOMPRESSED_MESSAGE_BYTES_DEFAULT,
            min_insync_replicas: 1,
        }
    }
}

impl LogConfig {
    /// Rejects values Kafka would reject (and ones our format cannot hold).
    pub fn validate(&self) -> Result<(), LogError> {
        let invalid = |reason: String| Err(LogError::InvalidConfig { reason });
        if !(SEGMENT_BYTES_MIN..=SEGMENT_BYTES_MAX).contains(&self.segment_bytes) {
            return invalid(format!(
                "segment.bytes {} is outside [{SEGMENT_BYTES_MIN}, {SEGMENT_BYTES_MAX}]",
                self.segment_bytes
            ));
        }
        if self.segment_ms < 1 {
            return invalid(format!("segment.ms {} must be at least 1", self.segment_ms));
        }
        if self.segment_index_bytes < SEGMENT_INDEX_BYTES_MIN {
            return invalid(format!(
                "segment.index.bytes {} is below {SEGMENT_INDEX_BYTES_MIN}",
                self.segment_index_bytes
            ));
        }
        if self.retention_ms < -1 {
            return invalid(format!(
                "retention.ms {} must be -1 or more",
                self.retention_ms
            ));
        }
        if self.retention_bytes < -1 {
            return invalid(format!(
                "retention.bytes {} must be -1 or more",
                self.retention_bytes
            ));
        }
        if self.message_timestamp_before_max_ms < 0 || self.message_timestamp_after_max_ms < 0 {
            return invalid("message.timestamp.{before,after}.max.ms must be non-negative".into());
        }
        if self.producer_id_expiration_ms < 1 {
            return invalid(format!(
                "producer.id.expiration.ms {} must be at least 1",
                self.producer_id_expiration_ms
            ));
        }
        Ok(())
    }

    /// segment.bytes clamped to what 32-bit index positions can address.
    pub fn segment_bytes_effective(&self) -> u64 {
        self.segment_bytes
            .clamp(SEGMENT_BYTES_MIN, SEGMENT_BYTES_MAX)
    }

    /// segment.ms clamped to at least 1 ms.
    pub fn segment_ms_effective(&self) -> i64 {
        self.segment_ms.max(1)
    }

    /// segment.index.bytes clamped to hold at least two entries.
    pub fn segment_index_bytes_effective(&self) -> u64 {
        self.segment_index_bytes.max(SEGMENT_INDEX_BYTES_MIN) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_kafkas() {
        let config = LogConfig::default();
        assert_eq!(config.segment_bytes, 1 << 30);
        assert_eq!(config.segment_ms, 604_800_000);
        assert_eq!(config.retention_ms, 604_800_000);
        assert_eq!(config.retention_bytes, -1);
        assert_eq!(config.index_interval_bytes, 4096);
        assert_eq!(config.max_message_bytes, 1_048_588);
        assert_eq!(config.message_timestamp_type, TimestampType::CreateTime);
        config.validate().expect("defaults are valid");
    }

    #[test]
    fn validate_rejects_segments_larger_than_32_bit_positions() {
        let config = LogConfig {
            segment_bytes: 4 << 30,
            ..LogConfig::default()
        };
        assert!(config.validate().is_err());
        assert_eq!(config.segment_bytes_effective(), SEGMENT_BYTES_MAX);
    }
}
