//! One typed broker configuration, keyed by Apache Kafka's property names.
//!
//! Sources, lowest precedence first: built-in defaults (Kafka's where Kafka has
//! the property), an optional TOML file (`--config`), `FJORD_*` environment
//! variables (`FJORD_LOG_RETENTION_MS` sets `log.retention.ms`), the dedicated
//! command-line flags, and finally `--override key=value`. Everything is first
//! gathered as `key -> string` so that every source speaks the same names a
//! Kafka operator already knows, then parsed once into [`BrokerConfig`]; an
//! unknown key is an error rather than a silently ignored typo.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};

use crate::coordinator::group::GroupConfig;
use crate::coordinator::group_coordinator::OffsetsConfig;
use crate::log::{LogConfig, TimestampType};

/// When an appended batch is made durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Acknowledge once the batch is in the page cache; flush every
    /// `log.flush.interval.ms` (Apache Kafka's model: durability comes from
    /// replication, not from fsync).
    Interval,
    /// fsync every append before acknowledging it (Redpanda-like).
    Always,
}

/// A `PLAINTEXT://host:port` listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listener {
    pub name: String,
    pub host: String,
    pub port: u16,
}

impl Listener {
    fn parse(value: &str) -> Result<Listener> {
        let (name, rest) = value
            .split_once("://")
            .ok_or_else(|| anyhow!("listener `{value}` must look like PLAINTEXT://host:port"))?;
        let (host, port) = rest
            .rsplit_once(':')
            .ok_or_else(|| anyhow!("listener `{value}` has no port"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        Ok(Listener {
            name: name.to_string(),
            host: if host.is_empty() {
                "0.0.0.0".into()
            } else {
                host.to_string()
            },
            port: port
                .parse()
                .with_context(|| format!("listener `{value}`: bad port"))?,
        })
    }

    /// The socket address to bind.
    pub fn bind_addr(&self) -> Result<SocketAddr> {
        let text = if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        };
        use std::net::ToSocketAddrs;
        text.to_socket_addrs()?
            .next()
            .ok_or_else(|| anyhow!("listener host `{}` does not resolve", self.host))
    }
}

/// Every broker setting, parsed and checked.
#[derive(Clone, Debug)]
pub struct BrokerConfig {
    pub node_id: i32,
    pub listeners: Vec<Listener>,
    pub advertised_listeners: Vec<Listener>,
    pub log_dirs: PathBuf,
    pub num_partitions: i32,
    pub default_replication_factor: i16,
    pub auto_create_topics_enable: bool,
    pub delete_topic_enable: bool,
    /// Defaults for every topic's log; per-topic configs override them.
    pub log: LogConfig,
    pub cleanup_policy: String,
    pub fsync: FsyncPolicy,
    pub log_flush_interval_ms: u64,
    pub log_retention_check_interval_ms: u64,
    pub socket_request_max_bytes: usize,
    pub max_connections: usize,
    pub connection_max_inflight_requests: usize,
    pub connections_max_idle_ms: u64,
    pub fetch_max_bytes: usize,
    pub fetch_max_wait_ms_max: u64,
    pub produce_max_timeout_ms: u64,
    pub offsets_topic_num_partitions: i32,
    pub offsets_topic_segment_bytes: u64,
    pub group: GroupConfig,
    pub offsets: OffsetsConfig,
    pub rack: Option<String>,
    /// Resource limits: request memory and segment file descriptors.
    pub resources: ResourceLimits,
}

/// Bounds on the memory requests may hold and on the descriptors segment
/// files may keep open (see the README's "Limits").
#[derive(Clone, Debug)]
pub struct ResourceLimits {
    /// `queued.max.request.bytes`: bytes of requests read but not yet
    /// handled, broker-wide (Kafka: -1, unlimited; here finite and at least
    /// `socket.request.max.bytes`, so that any admitted size can be read).
    pub queued_max_request_bytes: usize,
    /// `connection.max.inflight.bytes`: read-ahead bytes per connection; a
    /// single larger request is still read once nothing else of its
    /// connection is in flight.
    pub connection_max_inflight_bytes: usize,
    /// `log.open.files.max`: segment file descriptors kept open; 0 derives
    /// it from RLIMIT_NOFILE (`log::file_cache::capacity_for_limit`).
    pub log_open_files_max: usize,
}

/// Built-in defaults: Kafka's values where Kafka has the property.
const DEFAULTS: &[(&str, &str)] = &[
    ("node.id", "1"),
    ("listeners", "PLAINTEXT://127.0.0.1:9092"),
    ("advertised.listeners", ""),
    ("log.dirs", "./fjord-data"),
    ("num.partitions", "1"),
    ("default.replication.factor", "1"),
    ("auto.create.topics.enable", "true"),
    ("delete.topic.enable", "true"),
    ("log.retention.ms", ""),
    ("log.retention.minutes", ""),
    ("log.retention.hours", "168"),
    ("log.retention.bytes", "-1"),
    ("log.segment.bytes", "1073741824"),
    ("log.roll.ms", ""),
    ("log.roll.hours", "168"),
    ("log.index.interval.bytes", "4096"),
    ("message.max.bytes", "1048588"),
    ("log.message.timestamp.type", "CreateTime"),
    ("log.cleanup.policy", "delete"),
    // Fjord: `interval` (Kafka-like) or `always` (fsync before acknowledging).
    ("log.fsync", "interval"),
    ("log.flush.interval.ms", "1000"),
    ("log.retention.check.interval.ms", "300000"),
    ("socket.request.max.bytes", "104857600"),
    // Kafka's default is unlimited; every limit here has a finite value.
    ("max.connections", "10000"),
    // Requests read ahead of the one being answered, per connection.
    ("connection.max.inflight.requests", "64"),
    ("connections.max.idle.ms", "600000"),
    ("fetch.max.bytes", "57671680"),
    // Upper bound on a client's fetch max_wait_ms (a long poll cannot park forever).
    ("fetch.max.wait.ms.max", "60000"),
    ("produce.max.timeout.ms", "300000"),
    ("offsets.topic.num.partitions", "50"),
    ("offsets.topic.segment.bytes", "104857600"),
    ("offsets.retention.minutes", "10080"),
    ("offsets.retention.check.interval.ms", "600000"),
    ("offset.metadata.max.bytes", "4096"),
    ("group.min.session.timeout.ms", "6000"),
    ("group.max.session.timeout.ms", "1800000"),
    ("group.initial.rebalance.delay.ms", "3000"),
    // Kafka's default is unlimited; every limit here has a finite value.
    ("group.max.size", "10000"),
    ("broker.rack", ""),
    // ---- Resource limits (request memory, descriptors) ----
    // Kafka's name; Kafka's default is -1 (unlimited). 256 MiB: room for two
    // requests of the largest size (socket.request.max.bytes, 100 MiB) plus
    // many ordinary ones, and a known ceiling on what clients can make the
    // broker buffer.
    ("queued.max.request.bytes", "268435456"),
    // Fjord: read-ahead bytes per connection (16 MiB: a few full produce
    // requests of a pipelining client).
    ("connection.max.inflight.bytes", "16777216"),
    // Fjord: segment file descriptors kept open; 0 = derived from RLIMIT_NOFILE.
    ("log.open.files.max", "0"),
];

/// Properties Kafka has that Fjord accepts and ignores because they have no
/// meaning here yet (so that an existing server.properties still loads).
const ACCEPTED_IGNORED: &[&str] = &[
    "process.roles",
    "controller.quorum.voters",
    "controller.listener.names",
    "listener.security.protocol.map",
    "inter.broker.listener.name",
    "offsets.topic.replication.factor",
    "transaction.state.log.replication.factor",
    "transaction.state.log.min.isr",
    "num.network.threads",
    "num.io.threads",
    "socket.send.buffer.bytes",
    "socket.receive.buffer.bytes",
    "num.recovery.threads.per.data.dir",
];

/// The raw `key -> value` map before parsing, in precedence order of sources.
#[derive(Default, Debug, Clone)]
pub struct ConfigSources {
    values: BTreeMap<String, String>,
}

impl ConfigSources {
    /// Starts from the defaults.
    pub fn new() -> Self {
        let mut values = BTreeMap::new();
        for (k, v) in DEFAULTS {
            values.insert((*k).to_string(), (*v).to_string());
        }
        ConfigSources { values }
    }

    /// Sets one property, rejecting names Fjord does not know.
    pub fn set(&mut self, key: &str, value: impl Into<String>) -> Result<()> {
        let key = key.trim();
        if DEFAULTS.iter().any(|(k, _)| *k == key) {
            self.values.insert(key.to_string(), value.into());
            Ok(())
        } else if ACCEPTED_IGNORED.contains(&key) {
            Ok(())
        } else {
            bail!("unknown broker property `{key}`")
        }
    }

    /// Reads a TOML file of `"log.retention.ms" = 1000`-style keys (dotted keys
    /// nested as tables are flattened back to Kafka's names).
    pub fn load_toml(&mut self, path: &Path) -> Result<()> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config file {}", path.display()))?;
        let table: toml::Table = text
            .parse()
            .with_context(|| format!("parsing config file {}", path.display()))?;
        let mut flat = Vec::new();
        flatten("", &toml::Value::Table(table), &mut flat);
        for (k, v) in flat {
            self.set(&k, v)?;
        }
        Ok(())
    }

    /// Applies `FJORD_*` variables: `FJORD_LOG_SEGMENT_BYTES` -> `log.segment.bytes`.
    pub fn load_env<I: IntoIterator<Item = (String, String)>>(&mut self, vars: I) -> Result<()> {
        for (name, value) in vars {
            let Some(rest) = name.strip_prefix("FJORD_") else {
                continue;
            };
            // Variables that belong to the CLI clients, not to the broker.
            if rest == "BOOTSTRAP_SERVER" || rest.starts_with("TEST_") || rest == "BIN" {
                continue;
            }
            let key = rest.to_ascii_lowercase().replace('_', ".");
            self.set(&key, value)
                .with_context(|| format!("environment variable {name}"))?;
        }
        Ok(())
    }

    fn get(&self, key: &str) -> &str {
        self.values.get(key).map(String::as_str).unwrap_or("")
    }

    fn num<T: std::str::FromStr>(&self, key: &str) -> Result<T>
    where
        T::Err: std::fmt::Display,
    {
        let raw = self.get(key).trim();
        raw.parse::<T>()
            .map_err(|e| anyhow!("property {key}={raw:?}: {e}"))
    }

    fn boolean(&self, key: &str) -> Result<bool> {
        match self.get(key).trim() {
            "true" => Ok(true),
            "false" => Ok(false),
            other => bail!("property {key}={other:?}: expected true or false"),
        }
    }

    /// Parses and checks every property.
    pub fn build(&self) -> Result<BrokerConfig> {
        let listeners = parse_listeners(self.get("listeners"))?;
        if listeners.is_empty() {
            bail!("listeners must name at least one PLAINTEXT://host:port");
        }
        let advertised = match self.get("advertised.listeners").trim() {
            "" => listeners.clone(),
            text => parse_listeners(text)?,
        };
        let retention_ms: i64 = if !self.get("log.retention.ms").is_empty() {
            self.num("log.retention.ms")?
        } else if !self.get("log.retention.minutes").is_empty() {
            self.num::<i64>("log.retention.minutes")?
                .saturating_mul(60_000)
        } else {
            self.num::<i64>("log.retention.hours")?
                .saturating_mul(3_600_000)
        };
        let segment_ms: i64 = if !self.get("log.roll.ms").is_empty() {
            self.num("log.roll.ms")?
        } else {
            self.num::<i64>("log.roll.hours")?.saturating_mul(3_600_000)
        };
        let timestamp_type = TimestampType::parse(self.get("log.message.timestamp.type"))
            .ok_or_else(|| {
                anyhow!("log.message.timestamp.type must be CreateTime or LogAppendTime")
            })?;
        let log = LogConfig {
            segment_bytes: self.num("log.segment.bytes")?,
            segment_ms,
            retention_ms,
            retention_bytes: self.num("log.retention.bytes")?,
            index_interval_bytes: self.num("log.index.interval.bytes")?,
            max_message_bytes: self.num("message.max.bytes")?,
            message_timestamp_type: timestamp_type,
            ..LogConfig::default()
        };
        if log.segment_bytes < 14 {
            bail!("log.segment.bytes must be at least 14");
        }
        let fsync = match self.get("log.fsync") {
            "interval" => FsyncPolicy::Interval,
            "always" => FsyncPolicy::Always,
            other => bail!("log.fsync={other:?}: expected interval or always"),
        };
        let cleanup_policy = self.get("log.cleanup.policy").to_string();
        if !matches!(
            cleanup_policy.as_str(),
            "delete" | "compact" | "compact,delete" | "delete,compact"
        ) {
            bail!("log.cleanup.policy={cleanup_policy:?}: expected delete, compact or both");
        }
        let config = BrokerConfig {
            node_id: self.num("node.id")?,
            listeners,
            advertised_listeners: advertised,
            log_dirs: PathBuf::from(
                self.get("log.dirs")
                    .split(',')
                    .next()
                    .unwrap_or("./fjord-data")
                    .trim(),
            ),
            num_partitions: self.num("num.partitions")?,
            default_replication_factor: self.num("default.replication.factor")?,
            auto_create_topics_enable: self.boolean("auto.create.topics.enable")?,
            delete_topic_enable: self.boolean("delete.topic.enable")?,
            log,
            cleanup_policy,
            fsync,
            log_flush_interval_ms: self.num("log.flush.interval.ms")?,
            log_retention_check_interval_ms: self.num("log.retention.check.interval.ms")?,
            socket_request_max_bytes: self.num("socket.request.max.bytes")?,
            max_connections: self.num("max.connections")?,
            connection_max_inflight_requests: self.num("connection.max.inflight.requests")?,
            connections_max_idle_ms: self.num("connections.max.idle.ms")?,
            fetch_max_bytes: self.num("fetch.max.bytes")?,
            fetch_max_wait_ms_max: self.num("fetch.max.wait.ms.max")?,
            produce_max_timeout_ms: self.num("produce.max.timeout.ms")?,
            offsets_topic_num_partitions: self.num("offsets.topic.num.partitions")?,
            offsets_topic_segment_bytes: self.num("offsets.topic.segment.bytes")?,
            group: GroupConfig {
                min_session_timeout_ms: self.num("group.min.session.timeout.ms")?,
                max_session_timeout_ms: self.num("group.max.session.timeout.ms")?,
                initial_rebalance_delay_ms: self.num("group.initial.rebalance.delay.ms")?,
                max_size: self.num("group.max.size")?,
            },
            offsets: OffsetsConfig {
                partitions: self.num("offsets.topic.num.partitions")?,
                retention_ms: self
                    .num::<i64>("offsets.retention.minutes")?
                    .saturating_mul(60_000),
                retention_check_interval_ms: self.num("offsets.retention.check.interval.ms")?,
                metadata_max_bytes: self.num("offset.metadata.max.bytes")?,
            },
            rack: Some(self.get("broker.rack").to_string()).filter(|r| !r.is_empty()),
            resources: self.resource_limits()?,
        };
        if !(1..=crate::cluster::TOPIC_PARTITIONS_MAX)
            .contains(&config.offsets_topic_num_partitions)
        {
            bail!(
                "offsets.topic.num.partitions must be between 1 and {}",
                crate::cluster::TOPIC_PARTITIONS_MAX
            );
        }
        if config.group.min_session_timeout_ms > config.group.max_session_timeout_ms
            || config.group.max_size == 0
        {
            bail!("group.min.session.timeout.ms must not exceed group.max.session.timeout.ms, and group.max.size must be at least 1");
        }
        if config.num_partitions < 1 {
            bail!("num.partitions must be at least 1");
        }
        if config.connection_max_inflight_requests == 0 || config.max_connections == 0 {
            bail!("connection limits must be at least 1");
        }
        if config.socket_request_max_bytes < 1024 {
            bail!("socket.request.max.bytes must be at least 1024");
        }
        Ok(config)
    }

    /// The resource-limit block: parsed and checked on its own.
    fn resource_limits(&self) -> Result<ResourceLimits> {
        let queued: i64 = self.num("queued.max.request.bytes")?;
        let socket_request_max_bytes: i64 = self.num("socket.request.max.bytes")?;
        if queued < socket_request_max_bytes {
            bail!(
                "queued.max.request.bytes={queued} must be at least socket.request.max.bytes={socket_request_max_bytes} \
                 (Fjord needs a finite budget; -1 is not accepted)"
            );
        }
        let limits = ResourceLimits {
            queued_max_request_bytes: usize::try_from(queued)?,
            connection_max_inflight_bytes: self.num("connection.max.inflight.bytes")?,
            log_open_files_max: self.num("log.open.files.max")?,
        };
        if limits.connection_max_inflight_bytes == 0 {
            bail!("connection.max.inflight.bytes must be at least 1");
        }
        // Semaphore permits are counted in u32 per request and usize overall.
        if limits.queued_max_request_bytes > (usize::MAX >> 4) {
            bail!("queued.max.request.bytes is too large");
        }
        Ok(limits)
    }

    /// The effective properties, for DescribeConfigs on the broker resource.
    pub fn effective(&self) -> impl Iterator<Item = (&str, &str)> {
        self.values.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

fn parse_listeners(text: &str) -> Result<Vec<Listener>> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(Listener::parse)
        .collect()
}

fn flatten(prefix: &str, value: &toml::Value, out: &mut Vec<(String, String)>) {
    match value {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        toml::Value::String(s) => out.push((prefix.to_string(), s.clone())),
        toml::Value::Array(items) => {
            let joined: Vec<String> = items
                .iter()
                .map(|i| match i {
                    toml::Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect();
            out.push((prefix.to_string(), joined.join(",")));
        }
        other => out.push((prefix.to_string(), other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_give_a_single_node_on_loopback_9092() {
        let config = ConfigSources::new().build().expect("defaults parse");
        assert_eq!(config.node_id, 1);
        assert_eq!(config.listeners[0].port, 9092);
        assert_eq!(config.listeners[0].host, "127.0.0.1");
        assert_eq!(config.advertised_listeners, config.listeners);
        assert_eq!(config.log.retention_ms, 168 * 3_600_000);
        assert_eq!(config.socket_request_max_bytes, 100 * 1024 * 1024);
        assert_eq!(config.fsync, FsyncPolicy::Interval);
    }

    #[test]
    fn env_vars_map_to_kafka_property_names() {
        let mut sources = ConfigSources::new();
        sources
            .load_env(vec![
                ("FJORD_LOG_SEGMENT_BYTES".to_string(), "4096".to_string()),
                ("FJORD_NUM_PARTITIONS".to_string(), "3".to_string()),
                ("FJORD_BOOTSTRAP_SERVER".to_string(), "x:1".to_string()),
                ("PATH".to_string(), "/bin".to_string()),
            ])
            .expect("env applies");
        let config = sources.build().expect("parses");
        assert_eq!(config.log.segment_bytes, 4096);
        assert_eq!(config.num_partitions, 3);
    }

    #[test]
    fn unknown_property_is_rejected() {
        let mut sources = ConfigSources::new();
        assert!(sources.set("log.segmnet.bytes", "1").is_err());
    }

    #[test]
    fn toml_file_accepts_quoted_and_nested_keys() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("fjord.toml");
        std::fs::write(
            &path,
            "\"log.retention.ms\" = 5000\n[num]\npartitions = 4\n",
        )
        .expect("write");
        let mut sources = ConfigSources::new();
        sources.load_toml(&path).expect("loads");
        let config = sources.build().expect("parses");
        assert_eq!(config.log.retention_ms, 5000);
        assert_eq!(config.num_partitions, 4);
    }

    #[test]
    fn retention_ms_wins_over_hours() {
        let mut sources = ConfigSources::new();
        sources.set("log.retention.ms", "1234").expect("known");
        assert_eq!(sources.build().expect("parses").log.retention_ms, 1234);
    }

    #[test]
    fn bad_values_are_errors_not_panics() {
        for (k, v) in [
            ("num.partitions", "zero"),
            ("listeners", "nonsense"),
            ("log.fsync", "sometimes"),
            ("auto.create.topics.enable", "yes"),
            ("queued.max.request.bytes", "-1"),
            ("queued.max.request.bytes", "1000"),
            ("connection.max.inflight.bytes", "0"),
            ("log.open.files.max", "-5"),
        ] {
            let mut sources = ConfigSources::new();
            sources.set(k, v).expect("known key");
            assert!(sources.build().is_err(), "{k}={v} should not parse");
        }
    }
}
