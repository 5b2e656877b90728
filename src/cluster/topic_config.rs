//! Topic-level configs: every config Kafka 4.4 has, with its type, range,
//! default, the broker property its default comes from, and whether Fjord
//! acts on it; how a topic's configs become a [`LogConfig`]; and how they are
//! described.
//!
//! One table drives everything, so validation at the API, the defaults shown
//! by DescribeConfigs and the values the log runs with cannot drift apart.
//! Kafka accepts every name in it; so do we, and the ones Fjord does not act
//! on yet are stored, described, and listed in the README.
//!
//! The rule that matters most: whatever is stored must always load. Values
//! are validated before they are stored, and [`TopicConfigs::log_config`]
//! still treats a stored value as untrusted (an older Fjord had looser rules):
//! it falls back to the default for that key, with a warning, and clamps
//! every number into what [`LogConfig::validate`] accepts.

use std::collections::BTreeMap;

use kafka_protocol::error::ResponseError;

use crate::broker::KafkaError;
use crate::config::{
    check_value, ConfigType, Validator, CLEANUP_POLICIES, COMPRESSION_TYPES, TIMESTAMP_TYPES,
};
use crate::log::{
    BrokerCompression, LogConfig, TimestampType, MAX_DECOMPRESSED_MESSAGE_BYTES_DEFAULT,
    SEGMENT_BYTES_MAX, SEGMENT_BYTES_MIN,
};

use super::broker_config::{BrokerLayers, ConfigEntry, ConfigSource, Synonym};

/// Smallest `segment.index.bytes` the log accepts (two time-index entries);
/// Kafka's floor is 4, so smaller stored values are raised to this.
const SEGMENT_INDEX_BYTES_LOG_MIN: i64 = 24;

/// One topic config.
pub struct TopicConfigDef {
    pub name: &'static str,
    pub config_type: ConfigType,
    pub validator: Validator,
    /// Kafka's default, used when no broker synonym is set.
    pub default: &'static str,
    /// The broker properties its default comes from, most specific first,
    /// each with the factor that turns its unit into this config's
    /// (`log.retention.hours` counts hours, `retention.ms` milliseconds).
    pub synonyms: &'static [(&'static str, i64)],
    /// Whether Fjord acts on it today (README lists the ones it does not).
    pub applied: bool,
    pub doc: &'static str,
}

const MINUTE_MS: i64 = 60_000;
const HOUR_MS: i64 = 3_600_000;
const LONG_MAX: &str = "9223372036854775807";

const fn topic(
    name: &'static str,
    config_type: ConfigType,
    validator: Validator,
    default: &'static str,
    synonyms: &'static [(&'static str, i64)],
    applied: bool,
    doc: &'static str,
) -> TopicConfigDef {
    TopicConfigDef {
        name,
        config_type,
        validator,
        default,
        synonyms,
        applied,
        doc,
    }
}

use ConfigType as T;
use Validator as V;

/// Every Kafka 4.4 topic config, by name.
pub const TOPIC_CONFIGS: &[TopicConfigDef] = &[
    topic("cleanup.policy", T::List, V::ListOf(CLEANUP_POLICIES), "delete", &[("log.cleanup.policy", 1)], true,
        "delete: old segments go by time and size; compact: keep the newest record per key (records then need keys)."),
    topic("compression.gzip.level", T::Int, V::BetweenOrMinusOne(1, 9), "-1", &[("compression.gzip.level", 1)], true,
        "gzip level used when the broker compresses with gzip."),
    topic("compression.lz4.level", T::Int, V::Between(1, 17), "9", &[("compression.lz4.level", 1)], true,
        "lz4 level used when the broker compresses with lz4."),
    topic("compression.type", T::String, V::OneOf(COMPRESSION_TYPES), "producer", &[("compression.type", 1)], true,
        "Codec batches are stored in; producer keeps whatever the producer sent."),
    topic("compression.zstd.level", T::Int, V::Between(-131_072, 22), "3", &[("compression.zstd.level", 1)], true,
        "zstd level used when the broker compresses with zstd."),
    topic("delete.retention.ms", T::Long, V::AtLeast(0), "86400000", &[("log.cleaner.delete.retention.ms", 1)], false,
        "How long tombstones stay readable in a compacted topic."),
    topic("errors.deadletterqueue.group.enable", T::Boolean, V::Any, "false", &[], false,
        "Whether share groups may use this topic as a dead-letter queue."),
    topic("file.delete.delay.ms", T::Long, V::AtLeast(0), "60000", &[("log.segment.delete.delay.ms", 1)], false,
        "Wait between a segment leaving the log and its files being removed."),
    topic("flush.messages", T::Long, V::AtLeast(1), LONG_MAX, &[("log.flush.interval.messages", 1)], false,
        "Flush the partition to disk after this many messages."),
    topic("flush.ms", T::Long, V::AtLeast(0), LONG_MAX, &[("log.flush.interval.ms", 1), ("log.flush.scheduler.interval.ms", 1)], false,
        "Flush the partition to disk after this much time."),
    topic("follower.replication.throttled.replicas", T::List, V::ThrottledReplicas, "", &[], false,
        "Replicas whose follower-side replication is throttled, or * for all."),
    topic("index.interval.bytes", T::Int, V::AtLeast(0), "4096", &[("log.index.interval.bytes", 1)], true,
        "Bytes of records between two offset-index entries."),
    topic("leader.replication.throttled.replicas", T::List, V::ThrottledReplicas, "", &[], false,
        "Replicas whose leader-side replication is throttled, or * for all."),
    topic("local.retention.bytes", T::Long, V::AtLeast(-2), "-2", &[("log.local.retention.bytes", 1)], false,
        "Local size limit when tiered storage is on; -2 means retention.bytes."),
    topic("local.retention.ms", T::Long, V::AtLeast(-2), "-2", &[("log.local.retention.ms", 1)], false,
        "Local retention time when tiered storage is on; -2 means retention.ms."),
    topic("max.compaction.lag.ms", T::Long, V::AtLeast(1), LONG_MAX, &[("log.cleaner.max.compaction.lag.ms", 1)], false,
        "Longest a record may stay uncompacted."),
    topic("max.decompressed.message.bytes", T::Int, V::Between(1, 2_147_483_639), "2147483639", &[("max.decompressed.message.bytes", 1)], true,
        "Largest size a compressed batch may expand to when the broker decompresses it."),
    topic("max.message.bytes", T::Int, V::AtLeast(0), "1048588", &[("message.max.bytes", 1)], true,
        "Largest record batch the topic accepts."),
    topic("message.timestamp.after.max.ms", T::Long, V::AtLeast(0), "3600000", &[("log.message.timestamp.after.max.ms", 1)], true,
        "How far ahead of the broker's clock a CreateTime timestamp may be."),
    topic("message.timestamp.before.max.ms", T::Long, V::AtLeast(0), LONG_MAX, &[("log.message.timestamp.before.max.ms", 1)], true,
        "How far behind the broker's clock a CreateTime timestamp may be."),
    topic("message.timestamp.type", T::String, V::OneOf(TIMESTAMP_TYPES), "CreateTime", &[("log.message.timestamp.type", 1)], true,
        "CreateTime keeps the producer's timestamps; LogAppendTime stamps batches on arrival."),
    topic("min.cleanable.dirty.ratio", T::Double, V::Ratio, "0.5", &[("log.cleaner.min.cleanable.ratio", 1)], false,
        "Share of the log that must be uncompacted before compaction runs."),
    topic("min.compaction.lag.ms", T::Long, V::AtLeast(0), "0", &[("log.cleaner.min.compaction.lag.ms", 1)], false,
        "Shortest time a record stays uncompacted."),
    topic("min.insync.replicas", T::Int, V::AtLeast(1), "1", &[("min.insync.replicas", 1)], false,
        "Replicas that must hold an acks=all write before it is acknowledged."),
    topic("preallocate", T::Boolean, V::Any, "false", &[("log.preallocate", 1)], false,
        "Whether segment files are allocated at full size up front."),
    topic("remote.copy.lag.bytes", T::Long, V::AtLeast(-1), "-1", &[("log.remote.copy.lag.bytes", 1)], false,
        "Bytes held back locally before segments are copied to tiered storage."),
    topic("remote.copy.lag.ms", T::Long, V::AtLeast(-1), "0", &[("log.remote.copy.lag.ms", 1)], false,
        "Time a segment waits before it is copied to tiered storage."),
    topic("remote.log.copy.disable", T::Boolean, V::Any, "false", &[], false,
        "Stop copying segments to tiered storage."),
    topic("remote.log.delete.on.disable", T::Boolean, V::Any, "false", &[], false,
        "Delete the tiered copy when tiered storage is turned off for the topic."),
    topic("remote.storage.enable", T::Boolean, V::Any, "false", &[], false,
        "Keep old segments in tiered storage (not available in Fjord: true is refused)."),
    topic("retention.bytes", T::Long, V::Any, "-1", &[("log.retention.bytes", 1)], true,
        "Largest size of a partition before its oldest segments are deleted; -1 = unlimited."),
    topic("retention.ms", T::Long, V::AtLeast(-1), "604800000",
        &[("log.retention.ms", 1), ("log.retention.minutes", MINUTE_MS), ("log.retention.hours", HOUR_MS)], true,
        "How long records are kept before their segment is deleted; -1 = forever."),
    topic("segment.bytes", T::Int, V::AtLeast(1_048_576), "1073741824", &[("log.segment.bytes", 1)], true,
        "Size at which the active segment is rolled."),
    topic("segment.index.bytes", T::Int, V::AtLeast(4), "10485760", &[("log.index.size.max.bytes", 1)], true,
        "Largest offset or time index file of a segment."),
    topic("segment.jitter.ms", T::Long, V::AtLeast(0), "0", &[("log.roll.jitter.ms", 1), ("log.roll.jitter.hours", HOUR_MS)], false,
        "Random time taken off segment.ms so that partitions do not all roll at once."),
    topic("segment.ms", T::Long, V::AtLeast(1), "604800000", &[("log.roll.ms", 1), ("log.roll.hours", HOUR_MS)], true,
        "Age at which the active segment is rolled."),
    topic("unclean.leader.election.enable", T::Boolean, V::Any, "false", &[("unclean.leader.election.enable", 1)], false,
        "Whether a replica that is not in sync may become leader."),
];

/// The definition of a topic config.
pub fn topic_config(name: &str) -> Option<&'static TopicConfigDef> {
    TOPIC_CONFIGS.iter().find(|d| d.name == name)
}

/// Whether a broker property is the default of some topic config.
pub fn is_broker_synonym(name: &str) -> bool {
    TOPIC_CONFIGS
        .iter()
        .any(|d| d.synonyms.iter().any(|(s, _)| *s == name))
}

/// The broker synonyms Kafka lists for a broker property: the whole chain
/// when it heads one (`log.retention.ms` -> minutes, hours), else itself.
pub fn broker_chain(name: &str) -> Vec<&'static str> {
    TOPIC_CONFIGS
        .iter()
        .find(|d| d.synonyms.first().is_some_and(|(s, _)| *s == name))
        .map(|d| d.synonyms.iter().map(|(s, _)| *s).collect())
        .unwrap_or_else(|| {
            crate::config::property_names()
                .find(|p| *p == name)
                .into_iter()
                .collect()
        })
}

/// Topic-level configs set on one topic, validated.
pub struct TopicConfigs;

impl TopicConfigs {
    /// Checks one key/value pair; the error carries Kafka's message.
    pub fn validate(name: &str, value: &str) -> Result<(), KafkaError> {
        let def = topic_config(name).ok_or_else(|| {
            (
                ResponseError::InvalidConfig,
                format!("Unknown topic config name: {name}"),
            )
        })?;
        check_value(name, def.config_type, def.validator, value)
            .map_err(|why| (ResponseError::InvalidConfig, why))?;
        if name == "remote.storage.enable" && value.trim().eq_ignore_ascii_case("true") {
            // Kafka's answer when the broker has no remote log storage.
            return Err((
                ResponseError::InvalidConfig,
                "You have to enable remote log storage system at broker level first (Fjord has no tiered storage).".into(),
            ));
        }
        Ok(())
    }

    /// Checks a whole set of configs, including Kafka's cross-field rule.
    pub fn validate_all(configs: &BTreeMap<String, String>) -> Result<(), KafkaError> {
        configs.iter().try_for_each(|(k, v)| Self::validate(k, v))?;
        let lag = |k: &str, default: i64| {
            configs
                .get(k)
                .and_then(|v| v.trim().parse::<i64>().ok())
                .unwrap_or(default)
        };
        let (min, max) = (
            lag("min.compaction.lag.ms", 0),
            lag("max.compaction.lag.ms", i64::MAX),
        );
        if min > max {
            return Err((
                ResponseError::InvalidConfig,
                format!("conflict topic config setting min.compaction.lag.ms ({min}) > max.compaction.lag.ms ({max})"),
            ));
        }
        Ok(())
    }

    /// Whether a name is a topic config.
    pub fn is_known(name: &str) -> bool {
        topic_config(name).is_some()
    }

    /// Whether a config is a LIST (APPEND and SUBTRACT apply only to these).
    pub fn is_list(name: &str) -> bool {
        topic_config(name).is_some_and(|d| d.config_type == ConfigType::List)
    }

    /// The default a topic gets for `def` from the broker: the first
    /// synonym set in any layer (converted to the topic's unit), else
    /// Kafka's default.
    pub fn broker_default(layers: &BrokerLayers, def: &TopicConfigDef) -> String {
        for (synonym, factor) in def.synonyms {
            if let Some((value, _)) = layers.value(synonym) {
                if *factor == 1 {
                    return value.to_string();
                }
                if let Ok(n) = value.trim().parse::<i64>() {
                    return n.saturating_mul(*factor).to_string();
                }
            }
        }
        def.default.to_string()
    }

    /// The value in effect for one config: the topic's own if it is valid,
    /// else the broker's default; with the reason when a stored value was
    /// passed over.
    pub fn effective_value(
        layers: &BrokerLayers,
        configs: &BTreeMap<String, String>,
        def: &TopicConfigDef,
    ) -> (String, Option<String>) {
        match configs.get(def.name) {
            Some(own) => match Self::validate(def.name, own) {
                Ok(()) => (own.clone(), None),
                Err((_, why)) => (Self::broker_default(layers, def), Some(why)),
            },
            None => (Self::broker_default(layers, def), None),
        }
    }

    /// The effective log settings of a topic. Never fails: see the module doc.
    pub fn log_config(
        layers: &BrokerLayers,
        topic: &str,
        configs: &BTreeMap<String, String>,
    ) -> LogConfig {
        let value = |name: &str| {
            let Some(def) = topic_config(name) else {
                return String::new();
            };
            let (value, passed_over) = Self::effective_value(layers, configs, def);
            if let Some(why) = passed_over {
                tracing::warn!(topic, key = name, %why, "stored topic config is no longer valid; using the default");
            }
            value
        };
        let long =
            |name: &str, fallback: i64| value(name).trim().parse::<i64>().unwrap_or(fallback);
        let defaults = LogConfig::default();
        let mut log = LogConfig {
            segment_bytes: long("segment.bytes", defaults.segment_bytes as i64)
                .clamp(SEGMENT_BYTES_MIN as i64, SEGMENT_BYTES_MAX as i64)
                as u64,
            segment_ms: long("segment.ms", defaults.segment_ms).max(1),
            segment_index_bytes: long("segment.index.bytes", defaults.segment_index_bytes.into())
                .clamp(SEGMENT_INDEX_BYTES_LOG_MIN, i64::from(i32::MAX))
                as u32,
            retention_ms: long("retention.ms", defaults.retention_ms).max(-1),
            retention_bytes: long("retention.bytes", defaults.retention_bytes).max(-1),
            index_interval_bytes: long("index.interval.bytes", defaults.index_interval_bytes.into())
                .clamp(0, i64::from(i32::MAX)) as u32,
            max_message_bytes: long("max.message.bytes", defaults.max_message_bytes.into())
                .clamp(0, i64::from(i32::MAX)) as u32,
            message_timestamp_type: TimestampType::parse(&value("message.timestamp.type"))
                .unwrap_or(defaults.message_timestamp_type),
            message_timestamp_before_max_ms: long(
                "message.timestamp.before.max.ms",
                defaults.message_timestamp_before_max_ms,
            )
            .max(0),
            message_timestamp_after_max_ms: long(
                "message.timestamp.after.max.ms",
                defaults.message_timestamp_after_max_ms,
            )
            .max(0),
            compression: compression(
                &value("compression.type"),
                long("compression.gzip.level", -1),
                long("compression.lz4.level", 9),
                long("compression.zstd.level", 3),
            ),
            compact: false,
            max_decompressed_message_bytes: long(
                "max.decompressed.message.bytes",
                MAX_DECOMPRESSED_MESSAGE_BYTES_DEFAULT.into(),
            )
            .clamp(1, MAX_DECOMPRESSED_MESSAGE_BYTES_DEFAULT.into())
                as u32,
            min_insync_replicas: long("min.insync.replicas", 1).clamp(1, i64::from(i32::MAX))
                as u32,
            ..defaults
        };
        let policy = value("cleanup.policy");
        log.compact = policy.split(',').any(|p| p.trim() == "compact");
        // A compact-only topic is never trimmed by time or size (Kafka's rule).
        if !policy.split(',').any(|p| p.trim() == "delete") {
            log.retention_ms = -1;
            log.retention_bytes = -1;
        }
        debug_assert!(
            log.validate().is_ok(),
            "log_config built an invalid {log:?}"
        );
        log
    }

    /// Every topic config as DescribeConfigs reports it (Kafka's
    /// `createTopicConfigEntry`): the topic's own value is TOPIC_CONFIG;
    /// otherwise the source is that of the first broker synonym listed.
    pub fn describe(layers: &BrokerLayers, configs: &BTreeMap<String, String>) -> Vec<ConfigEntry> {
        TOPIC_CONFIGS
            .iter()
            .map(|def| {
                let chain: Vec<&str> = def.synonyms.iter().map(|(s, _)| *s).collect();
                let mut synonyms = layers.synonyms(&chain);
                let (value, passed_over) = Self::effective_value(layers, configs, def);
                if configs.contains_key(def.name) && passed_over.is_none() {
                    synonyms.insert(
                        0,
                        Synonym {
                            name: def.name.to_string(),
                            value: Some(value.clone()),
                            source: ConfigSource::Topic,
                        },
                    );
                }
                ConfigEntry {
                    name: def.name.to_string(),
                    value: Some(value),
                    source: synonyms.first().map_or(ConfigSource::Default, |s| s.source),
                    read_only: false,
                    config_type: def.config_type,
                    doc: def.doc,
                    synonyms,
                }
            })
            .collect()
    }
}

/// `compression.type` and the level for its codec as a [`BrokerCompression`].
fn compression(kind: &str, gzip: i64, lz4: i64, zstd: i64) -> BrokerCompression {
    let level = |n: i64| i32::try_from(n).unwrap_or(0);
    match kind.trim() {
        "uncompressed" => BrokerCompression::Uncompressed,
        "gzip" => BrokerCompression::Gzip { level: level(gzip) },
        "snappy" => BrokerCompression::Snappy,
        "lz4" => BrokerCompression::Lz4 { level: level(lz4) },
        "zstd" => BrokerCompression::Zstd { level: level(zstd) },
        _ => BrokerCompression::Producer,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigSources;

    fn layers() -> BrokerLayers {
        BrokerLayers::new(&ConfigSources::new(), &BTreeMap::new(), &BTreeMap::new())
    }

    fn configs(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn every_kafka_topic_config_is_known_once_with_a_valid_default() {
        let reference = include_str!("../../tests/data/kafka-4.4-topic-config-names.txt");
        let names: Vec<&str> = reference.lines().filter(|l| !l.is_empty()).collect();
        assert_eq!(names.len(), TOPIC_CONFIGS.len());
        for name in names {
            let def = topic_config(name).unwrap_or_else(|| panic!("{name} missing"));
            TopicConfigs::validate(name, def.default).expect(name);
            assert!(!def.doc.is_empty());
        }
    }

    #[test]
    fn unknown_and_malformed_configs_are_invalid_config() {
        for (k, v) in [
            ("retention.mss", "1"),
            ("retention.ms", "-2"),
            ("retention.ms", "soon"),
            ("cleanup.policy", "shred"),
            ("message.timestamp.type", "Whenever"),
            ("segment.bytes", "20"),
            ("segment.bytes", "1048575"),
            ("max.message.bytes", "2147483648"),
            ("compression.zstd.level", "23"),
            ("compression.gzip.level", "0"),
            ("min.cleanable.dirty.ratio", "1.5"),
            ("preallocate", "yes"),
            ("leader.replication.throttled.replicas", "x"),
            ("remote.storage.enable", "true"),
        ] {
            assert_eq!(
                TopicConfigs::validate(k, v).map_err(|e| e.0),
                Err(ResponseError::InvalidConfig),
                "{k}={v}"
            );
        }
        let (_, why) = TopicConfigs::validate("segment.bytes", "20").unwrap_err();
        assert_eq!(
            why,
            "Invalid value 20 for configuration segment.bytes: Value must be at least 1048576"
        );
        for (k, v) in [
            ("cleanup.policy", "compact,delete"),
            ("message.timestamp.type", "LogAppendTime"),
            ("compression.type", "zstd"),
            ("file.delete.delay.ms", "1000"),
            ("leader.replication.throttled.replicas", "0:1,1:1"),
            ("follower.replication.throttled.replicas", "*"),
            ("compression.gzip.level", "-1"),
            ("segment.bytes", "1048576"),
        ] {
            TopicConfigs::validate(k, v).unwrap_or_else(|e| panic!("{k}={v}: {e:?}"));
        }
        assert!(TopicConfigs::validate_all(&configs(&[
            ("min.compaction.lag.ms", "10"),
            ("max.compaction.lag.ms", "5")
        ]))
        .is_err());
    }

    #[test]
    fn every_accepted_value_gives_a_log_config_the_log_accepts() {
        // The root cause of a broker that could not start: the API accepted
        // values LogConfig::validate refused. Check the boundaries of every
        // numeric config.
        for def in TOPIC_CONFIGS {
            let edges: Vec<String> = match def.validator {
                V::AtLeast(min) => vec![min.to_string(), i32::MAX.to_string()],
                V::Between(a, b) | V::BetweenOrMinusOne(a, b) => vec![a.to_string(), b.to_string()],
                V::Any if def.config_type == T::Long => {
                    vec![i64::MIN.to_string(), i64::MAX.to_string()]
                }
                _ => vec![def.default.to_string()],
            };
            for v in edges {
                if TopicConfigs::validate(def.name, &v).is_err() {
                    continue;
                }
                let log = TopicConfigs::log_config(&layers(), "t", &configs(&[(def.name, &v)]));
                log.validate()
                    .unwrap_or_else(|e| panic!("{}={v}: {e}", def.name));
            }
        }
    }

    #[test]
    fn stored_values_rejected_today_fall_back_to_the_default() {
        let log = TopicConfigs::log_config(
            &layers(),
            "t",
            &configs(&[("segment.bytes", "20"), ("retention.ms", "1000")]),
        );
        assert_eq!(log.segment_bytes, 1 << 30);
        assert_eq!(log.retention_ms, 1000);
        log.validate().expect("valid");
    }

    #[test]
    fn configs_map_onto_the_log_config() {
        let log = TopicConfigs::log_config(
            &layers(),
            "t",
            &configs(&[
                ("compression.type", "zstd"),
                ("compression.zstd.level", "7"),
                ("cleanup.policy", "compact,delete"),
                ("max.decompressed.message.bytes", "1000"),
                ("message.timestamp.after.max.ms", "5"),
                ("segment.bytes", "2097152"),
            ]),
        );
        assert_eq!(log.compression, BrokerCompression::Zstd { level: 7 });
        assert!(log.compact);
        assert_eq!(log.max_decompressed_message_bytes, 1000);
        assert_eq!(log.message_timestamp_after_max_ms, 5);
        assert_eq!(log.segment_bytes, 2_097_152);
        assert_eq!(log.retention_ms, 604_800_000);
    }

    #[test]
    fn compact_only_topics_are_not_trimmed_by_retention() {
        let log = TopicConfigs::log_config(
            &layers(),
            "t",
            &configs(&[("cleanup.policy", "compact"), ("retention.ms", "1")]),
        );
        assert!(log.compact);
        assert_eq!(log.retention_ms, -1);
        assert_eq!(log.retention_bytes, -1);
    }

    #[test]
    fn describe_reports_sources_like_kafka() {
        let entries = TopicConfigs::describe(&layers(), &configs(&[("segment.ms", "5000")]));
        let get = |n: &str| entries.iter().find(|e| e.name == n).expect(n).clone();
        let seg = get("segment.ms");
        assert_eq!(seg.source, ConfigSource::Topic);
        assert_eq!(seg.value.as_deref(), Some("5000"));
        let ret = get("retention.ms");
        assert_eq!(ret.value.as_deref(), Some("604800000"));
        assert_eq!(ret.source, ConfigSource::Default);
        assert!(
            ret.synonyms.is_empty(),
            "Kafka lists none: {:?}",
            ret.synonyms
        );
        let bytes = get("segment.bytes");
        assert_eq!(bytes.synonyms.len(), 1);
        assert_eq!(bytes.synonyms[0].name, "log.segment.bytes");
        assert_eq!(get("cleanup.policy").config_type, T::List);
        assert_eq!(entries.len(), TOPIC_CONFIGS.len());
    }
}
