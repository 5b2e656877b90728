//! Topic-level configs: which keys exist, how they are validated, what their
//! defaults are (the broker's `log.*` settings), and how they become a
//! [`LogConfig`].
//!
//! Kafka answers an unknown or malformed topic config with `INVALID_CONFIG`;
//! so do we, rather than storing a value that would silently do nothing.

use std::collections::BTreeMap;

use kafka_protocol::error::ResponseError;

use crate::config::BrokerConfig;
use crate::log::{
    BrokerCompression, LogConfig, TimestampType, GZIP_LEVEL_DEFAULT, LZ4_LEVEL_DEFAULT,
    ZSTD_LEVEL_DEFAULT,
};

/// A topic config key and the broker property its default comes from.
struct Key {
    name: &'static str,
    broker_property: &'static str,
    kind: Kind,
}

#[derive(Clone, Copy)]
enum Kind {
    /// A number no smaller than the bound.
    Long(i64),
    CleanupPolicy,
    TimestampType,
    /// Accepted values listed.
    OneOf(&'static [&'static str]),
}

const KEYS: &[Key] = &[
    Key {
        name: "cleanup.policy",
        broker_property: "log.cleanup.policy",
        kind: Kind::CleanupPolicy,
    },
    Key {
        name: "retention.ms",
        broker_property: "log.retention.ms",
        kind: Kind::Long(-1),
    },
    Key {
        name: "retention.bytes",
        broker_property: "log.retention.bytes",
        kind: Kind::Long(-1),
    },
    Key {
        name: "segment.bytes",
        broker_property: "log.segment.bytes",
        kind: Kind::Long(14),
    },
    Key {
        name: "segment.ms",
        broker_property: "log.roll.ms",
        kind: Kind::Long(1),
    },
    Key {
        name: "max.message.bytes",
        broker_property: "message.max.bytes",
        kind: Kind::Long(0),
    },
    Key {
        name: "message.timestamp.type",
        broker_property: "log.message.timestamp.type",
        kind: Kind::TimestampType,
    },
    Key {
        name: "index.interval.bytes",
        broker_property: "log.index.interval.bytes",
        kind: Kind::Long(0),
    },
    // Only one replica exists per partition today; any value up to 1 is honest.
    Key {
        name: "min.insync.replicas",
        broker_property: "min.insync.replicas",
        kind: Kind::OneOf(&["1"]),
    },
    // `producer` keeps the producer's bytes; any other codec makes the
    // broker rebuild batches that arrive with another one (Kafka's values).
    Key {
        name: "compression.type",
        broker_property: "compression.type",
        kind: Kind::OneOf(&["uncompressed", "zstd", "lz4", "snappy", "gzip", "producer"]),
    },
];

/// Topic-level configs set on one topic, validated.
pub struct TopicConfigs;

impl TopicConfigs {
    /// Checks one key/value pair; the error carries Kafka's message.
    pub fn validate(name: &str, value: &str) -> Result<(), (ResponseError, String)> {
        let key = KEYS.iter().find(|k| k.name == name).ok_or_else(|| {
            (
                ResponseError::InvalidConfig,
                format!("Unknown topic config name: {name}"),
            )
        })?;
        let invalid = || {
            Err((
                ResponseError::InvalidConfig,
                format!("Invalid value {value} for configuration {name}"),
            ))
        };
        match key.kind {
            Kind::Long(min) => match value.trim().parse::<i64>() {
                Ok(v) if v >= min => {
                    if name == "segment.bytes" && v > i64::from(i32::MAX) {
                        return invalid();
                    }
                    Ok(())
                }
                _ => invalid(),
            },
            Kind::CleanupPolicy => {
                let ok = value
                    .split(',')
                    .map(str::trim)
                    .all(|p| p == "delete" || p == "compact");
                if ok && !value.trim().is_empty() {
                    Ok(())
                } else {
                    invalid()
                }
            }
            Kind::TimestampType => match TimestampType::parse(value) {
                Some(_) => Ok(()),
                None => invalid(),
            },
            Kind::OneOf(values) => {
                if values.contains(&value.trim()) {
                    Ok(())
                } else {
                    invalid()
                }
            }
        }
    }

    /// Checks a whole set of configs.
    pub fn validate_all(configs: &BTreeMap<String, String>) -> Result<(), (ResponseError, String)> {
        configs.iter().try_for_each(|(k, v)| Self::validate(k, v))
    }

    /// The effective log settings of a topic: its own configs over the broker's.
    pub fn log_config(broker: &BrokerConfig, configs: &BTreeMap<String, String>) -> LogConfig {
        let mut log = broker.log.clone();
        let long = |k: &str| configs.get(k).and_then(|v| v.trim().parse::<i64>().ok());
        if let Some(v) = long("retention.ms") {
            log.retention_ms = v;
        }
        if let Some(v) = long("retention.bytes") {
            log.retention_bytes = v;
        }
        if let Some(v) = long("segment.bytes") {
            log.segment_bytes = v.max(14) as u64;
        }
        if let Some(v) = long("segment.ms") {
            log.segment_ms = v;
        }
        if let Some(v) = long("max.message.bytes") {
            log.max_message_bytes = v.clamp(0, i64::from(u32::MAX)) as u32;
        }
        if let Some(v) = long("index.interval.bytes") {
            log.index_interval_bytes = v.clamp(0, i64::from(u32::MAX)) as u32;
        }
        if let Some(t) = configs
            .get("message.timestamp.type")
            .and_then(|v| TimestampType::parse(v))
        {
            log.message_timestamp_type = t;
        }
        if let Some(compression) = configs
            .get("compression.type")
            .and_then(|v| broker_compression(v))
        {
            log.compression = compression;
        }
        // A compact-only topic is never trimmed by time or size (Kafka's rule).
        let policy = configs
            .get("cleanup.policy")
            .unwrap_or(&broker.cleanup_policy);
        // Compacted topics need a key on every record (checked at produce).
        log.compact = policy.split(',').any(|p| p.trim() == "compact");
        if !policy.split(',').any(|p| p.trim() == "delete") {
            log.retention_ms = -1;
            log.retention_bytes = -1;
        }
        log
    }

    /// Every topic config with its effective value and whether the topic set
    /// it (`true`) or it is the broker's default (`false`).
    pub fn describe(
        broker: &BrokerConfig,
        configs: &BTreeMap<String, String>,
    ) -> Vec<(&'static str, String, bool)> {
        KEYS.iter()
            .map(|key| match configs.get(key.name) {
                Some(v) => (key.name, v.clone(), true),
                None => (key.name, broker_default(broker, key.broker_property), false),
            })
            .collect()
    }

    /// Whether a key is read-only after creation (none are, today).
    pub fn is_known(name: &str) -> bool {
        KEYS.iter().any(|k| k.name == name)
    }
}

/// Kafka's `compression.type` value as the log's setting, at the codecs'
/// default `compression.<codec>.level`.
fn broker_compression(value: &str) -> Option<BrokerCompression> {
    Some(match value.trim() {
        "producer" => BrokerCompression::Producer,
        "uncompressed" => BrokerCompression::Uncompressed,
        "gzip" => BrokerCompression::Gzip {
            level: GZIP_LEVEL_DEFAULT,
        },
        "snappy" => BrokerCompression::Snappy,
        "lz4" => BrokerCompression::Lz4 {
            level: LZ4_LEVEL_DEFAULT,
        },
        "zstd" => BrokerCompression::Zstd {
            level: ZSTD_LEVEL_DEFAULT,
        },
        _ => return None,
    })
}

fn broker_default(broker: &BrokerConfig, property: &str) -> String {
    match property {
        "log.cleanup.policy" => broker.cleanup_policy.clone(),
        "log.retention.ms" => broker.log.retention_ms.to_string(),
        "log.retention.bytes" => broker.log.retention_bytes.to_string(),
        "log.segment.bytes" => broker.log.segment_bytes.to_string(),
        "log.roll.ms" => broker.log.segment_ms.to_string(),
        "message.max.bytes" => broker.log.max_message_bytes.to_string(),
        "log.message.timestamp.type" => broker.log.message_timestamp_type.name().to_string(),
        "log.index.interval.bytes" => broker.log.index_interval_bytes.to_string(),
        "min.insync.replicas" => "1".to_string(),
        "compression.type" => "producer".to_string(),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigSources;

    #[test]
    fn unknown_and_malformed_configs_are_invalid_config() {
        for (k, v) in [
            ("retention.mss", "1"),
            ("retention.ms", "-2"),
            ("retention.ms", "soon"),
            ("cleanup.policy", "shred"),
            ("message.timestamp.type", "Whenever"),
            ("segment.bytes", "1"),
        ] {
            assert_eq!(
                TopicConfigs::validate(k, v).map_err(|e| e.0),
                Err(ResponseError::InvalidConfig),
                "{k}={v}"
            );
        }
        assert!(TopicConfigs::validate("cleanup.policy", "compact,delete").is_ok());
        assert!(TopicConfigs::validate("message.timestamp.type", "LogAppendTime").is_ok());
    }

    #[test]
    fn topic_configs_override_broker_defaults() {
        let broker = ConfigSources::new().build().expect("defaults");
        let mut configs = BTreeMap::new();
        configs.insert("retention.ms".to_string(), "1000".to_string());
        configs.insert("segment.bytes".to_string(), "65536".to_string());
        let log = TopicConfigs::log_config(&broker, &configs);
        assert_eq!(log.retention_ms, 1000);
        assert_eq!(log.segment_bytes, 65536);
        assert_eq!(log.retention_bytes, broker.log.retention_bytes);
        let described = TopicConfigs::describe(&broker, &configs);
        assert!(described.contains(&("retention.ms", "1000".to_string(), true)));
        assert!(described.contains(&("cleanup.policy", "delete".to_string(), false)));
    }

    #[test]
    fn compact_only_topics_are_not_trimmed_by_retention() {
        let broker = ConfigSources::new().build().expect("defaults");
        let mut configs = BTreeMap::new();
        configs.insert("cleanup.policy".to_string(), "compact".to_string());
        configs.insert("retention.ms".to_string(), "1".to_string());
        let log = TopicConfigs::log_config(&broker, &configs);
        assert_eq!(log.retention_ms, -1);
        assert_eq!(log.retention_bytes, -1);
        assert!(log.compact);
    }

    #[test]
    fn compression_type_maps_onto_the_log_codec() {
        let broker = ConfigSources::new().build().expect("defaults");
        for (value, expected) in [
            ("producer", BrokerCompression::Producer),
            ("uncompressed", BrokerCompression::Uncompressed),
            ("gzip", BrokerCompression::Gzip { level: -1 }),
            ("snappy", BrokerCompression::Snappy),
            ("lz4", BrokerCompression::Lz4 { level: 9 }),
            ("zstd", BrokerCompression::Zstd { level: 3 }),
        ] {
            assert!(TopicConfigs::validate("compression.type", value).is_ok());
            let configs = BTreeMap::from([("compression.type".to_string(), value.to_string())]);
            assert_eq!(
                TopicConfigs::log_config(&broker, &configs).compression,
                expected
            );
        }
        assert!(TopicConfigs::validate("compression.type", "brotli").is_err());
        assert!(!TopicConfigs::log_config(&broker, &BTreeMap::new()).compact);
    }
}
