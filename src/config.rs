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

/// One voter of the metadata quorum (`controller.quorum.voters`: `id@host:port`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Voter {
    pub id: i32,
    pub host: String,
    /// Its CONTROLLER listener's port; 0 for a lone node without one (then
    /// nothing ever connects to it).
    pub port: u16,
}

impl Voter {
    fn parse(value: &str) -> Result<Voter> {
        let bad =
            || anyhow!("controller.quorum.voters entry `{value}` must look like id@host:port");
        let (id, address) = value.split_once('@').ok_or_else(bad)?;
        let (host, port) = address.rsplit_once(':').ok_or_else(bad)?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let id: i32 = id.trim().parse().map_err(|_| bad())?;
        if id < 0 || host.is_empty() {
            return Err(bad());
        }
        Ok(Voter {
            id,
            host: host.to_string(),
            port: port.trim().parse().map_err(|_| bad())?,
        })
    }
}

/// Every broker setting, parsed and checked.
#[derive(Clone, Debug)]
pub struct BrokerConfig {
    pub node_id: i32,
    /// The Kafka-client listeners (every listener not named in
    /// `controller.listener.names`).
    pub listeners: Vec<Listener>,
    /// The node-to-node listener (`CONTROLLER://host:port`), if any. A lone
    /// voter needs none; every member of a larger cluster does.
    pub controller_listener: Option<Listener>,
    /// The metadata quorum's voters, never empty: `controller.quorum.voters`,
    /// or this node alone when that is unset.
    pub voters: Vec<Voter>,
    /// `offsets.topic.replication.factor` (unset: min(3, voters)).
    pub offsets_topic_replication_factor: i16,
    /// `min.insync.replicas`, the broker default of the topic config.
    pub min_insync_replicas: i32,
    /// `replica.lag.time.max.ms`: a follower that has not caught up with the
    /// leader for this long leaves the ISR.
    pub replica_lag_time_max_ms: u64,
    /// `controlled.shutdown.enable`: on SIGTERM, hand every partition this
    /// node leads to a caught-up follower before stopping.
    pub controlled_shutdown_enable: bool,
    /// `auto.leader.rebalance.enable`: hand partitions back to their
    /// preferred leaders every `leader.imbalance.check.interval.seconds`.
    pub auto_leader_rebalance_enable: bool,
    pub leader_imbalance_check_interval_seconds: u64,
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
    /// Broker-wide cap on partitions (`max.broker.partitions`, KIP-578's name).
    pub max_broker_partitions: i64,
    /// Topics one Metadata request may auto-create (`auto.create.topics.max.per.request`).
    pub auto_create_topics_max_per_request: usize,
    /// Topics Metadata may auto-create per second (`auto.create.topics.max.per.second`).
    pub auto_create_topics_max_per_second: u32,
    /// Cap on a DescribeTopicPartitions page (`max.request.partition.size.limit`).
    pub max_request_partition_size_limit: i32,
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
    (
        "listeners",
        "PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093",
    ),
    // Kafka's KRaft names. Empty voters: this node alone.
    ("controller.listener.names", "CONTROLLER"),
    ("controller.quorum.voters", ""),
    ("advertised.listeners", ""),
    ("log.dirs", "./fjord-data"),
    ("num.partitions", "1"),
    // Empty: min(3, number of voters), as for offsets.topic.replication.factor.
    ("default.replication.factor", ""),
    ("offsets.topic.replication.factor", ""),
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
    ("replica.lag.time.max.ms", "30000"),
    ("controlled.shutdown.enable", "true"),
    ("auto.leader.rebalance.enable", "true"),
    ("leader.imbalance.check.interval.seconds", "300"),
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
    // Topic-config defaults (each is the broker synonym of a topic config).
    ("log.index.size.max.bytes", "10485760"),
    ("log.message.timestamp.before.max.ms", "9223372036854775807"),
    ("log.message.timestamp.after.max.ms", "3600000"),
    ("compression.type", "producer"),
    ("compression.gzip.level", "-1"),
    ("compression.lz4.level", "9"),
    ("compression.zstd.level", "3"),
    ("log.flush.interval.messages", "9223372036854775807"),
    ("log.flush.scheduler.interval.ms", "9223372036854775807"),
    ("log.cleaner.delete.retention.ms", "86400000"),
    ("log.cleaner.min.compaction.lag.ms", "0"),
    ("log.cleaner.max.compaction.lag.ms", "9223372036854775807"),
    ("log.cleaner.min.cleanable.ratio", "0.5"),
    ("log.segment.delete.delay.ms", "60000"),
    ("log.preallocate", "false"),
    ("log.roll.jitter.ms", ""),
    ("log.roll.jitter.hours", "0"),
    ("log.local.retention.ms", "-2"),
    ("log.local.retention.bytes", "-2"),
    ("log.remote.copy.lag.ms", "0"),
    ("log.remote.copy.lag.bytes", "-1"),
    ("min.insync.replicas", "1"),
    ("max.decompressed.message.bytes", "2147483639"),
    ("unclean.leader.election.enable", "false"),
    // Limits on topic creation (Fjord; names follow KIP-578 where it has one).
    ("max.broker.partitions", "20000"),
    ("auto.create.topics.max.per.request", "100"),
    ("auto.create.topics.max.per.second", "100"),
    ("max.request.partition.size.limit", "2000"),
];

/// Properties Kafka has that Fjord accepts and ignores because they have no
/// meaning here yet (so that an existing server.properties still loads).
const ACCEPTED_IGNORED: &[&str] = &[
    "process.roles",
    "listener.security.protocol.map",
    "inter.broker.listener.name",
    "transaction.state.log.replication.factor",
    "transaction.state.log.min.isr",
    "num.network.threads",
    "num.io.threads",
    "socket.send.buffer.bytes",
    "socket.receive.buffer.bytes",
    "num.recovery.threads.per.data.dir",
    // Fjord hands every partition back to its preferred leader at each
    // check, whatever the imbalance.
    "leader.imbalance.per.broker.percentage",
];

/// The raw `key -> value` map before parsing, in precedence order of sources.
#[derive(Default, Debug, Clone)]
pub struct ConfigSources {
    values: BTreeMap<String, String>,
    /// Keys set by a source (file, environment, flag, override) rather than
    /// left at their default: DescribeConfigs reports them as STATIC_BROKER_CONFIG.
    explicit: std::collections::BTreeSet<String>,
}

impl ConfigSources {
    /// Starts from the defaults.
    pub fn new() -> Self {
        let mut values = BTreeMap::new();
        for (k, v) in DEFAULTS {
            values.insert((*k).to_string(), (*v).to_string());
        }
        ConfigSources {
            values,
            explicit: Default::default(),
        }
    }

    /// Sets one property, rejecting names Fjord does not know.
    pub fn set(&mut self, key: &str, value: impl Into<String>) -> Result<()> {
        let key = key.trim();
        if DEFAULTS.iter().any(|(k, _)| *k == key) {
            self.values.insert(key.to_string(), value.into());
            self.explicit.insert(key.to_string());
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
        // Kafka's type and range for every property that has a definition;
        // the checks below add the rules that span properties.
        for (key, value) in &self.values {
            if value.trim().is_empty() {
                continue;
            }
            if let Some(def) = property(key) {
                check_value(key, def.config_type, def.validator, value)
                    .map_err(|reason| anyhow!("property {key}={value:?}: {reason}"))?;
            }
        }
        let controller_names: Vec<&str> = self
            .get("controller.listener.names")
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .collect();
        let (controllers, listeners): (Vec<Listener>, Vec<Listener>) =
            parse_listeners(self.get("listeners"))?
                .into_iter()
                .partition(|l| controller_names.contains(&l.name.as_str()));
        if listeners.is_empty() {
            bail!("listeners must name at least one PLAINTEXT://host:port");
        }
        if controllers.len() > 1 {
            bail!("listeners names more than one controller listener: {controllers:?}");
        }
        let controller_listener = controllers.into_iter().next();
        let advertised = match self.get("advertised.listeners").trim() {
            "" => listeners.clone(),
            text => parse_listeners(text)?
                .into_iter()
                .filter(|l| !controller_names.contains(&l.name.as_str()))
                .collect(),
        };
        if advertised.is_empty() {
            bail!("advertised.listeners must name at least one client listener");
        }
        let node_id: i32 = self.num("node.id")?;
        let voters = self.voters(node_id, controller_listener.as_ref(), &listeners)?;
        let replication_default = |key: &str| -> Result<i16> {
            if self.get(key).trim().is_empty() {
                Ok(voters.len().min(3) as i16)
            } else {
                let factor: i16 = self.num(key)?;
                if factor < 1 {
                    bail!("{key} must be at least 1");
                }
                Ok(factor)
            }
        };
        let default_replication_factor = replication_default("default.replication.factor")?;
        let offsets_topic_replication_factor =
            replication_default("offsets.topic.replication.factor")?;
        if self.boolean("unclean.leader.election.enable")? {
            bail!(
                "unclean.leader.election.enable=true is not supported: a Fjord partition leader \
                 is elected by Raft and always holds every committed record"
            );
        }
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
            node_id,
            listeners,
            controller_listener,
            voters,
            offsets_topic_replication_factor,
            min_insync_replicas: self.num("min.insync.replicas")?,
            replica_lag_time_max_ms: self.num("replica.lag.time.max.ms")?,
            controlled_shutdown_enable: self.boolean("controlled.shutdown.enable")?,
            auto_leader_rebalance_enable: self.boolean("auto.leader.rebalance.enable")?,
            leader_imbalance_check_interval_seconds: self
                .num("leader.imbalance.check.interval.seconds")?,
            advertised_listeners: advertised,
            log_dirs: PathBuf::from(
                self.get("log.dirs")
                    .split(',')
                    .next()
                    .unwrap_or("./fjord-data")
                    .trim(),
            ),
            num_partitions: self.num("num.partitions")?,
            default_replication_factor,
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
            max_broker_partitions: self.num("max.broker.partitions")?,
            auto_create_topics_max_per_request: self.num("auto.create.topics.max.per.request")?,
            auto_create_topics_max_per_second: self.num("auto.create.topics.max.per.second")?,
            max_request_partition_size_limit: self.num("max.request.partition.size.limit")?,
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

    /// `controller.quorum.voters`, checked against this node's listeners.
    fn voters(
        &self,
        node_id: i32,
        controller: Option<&Listener>,
        listeners: &[Listener],
    ) -> Result<Vec<Voter>> {
        let text = self.get("controller.quorum.voters").trim();
        if text.is_empty() {
            let (host, port) = match controller {
                Some(l) => (l.host.clone(), l.port),
                None => (listeners[0].host.clone(), 0),
            };
            return Ok(vec![Voter {
                id: node_id,
                host,
                port,
            }]);
        }
        let voters = text
            .split(',')
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(Voter::parse)
            .collect::<Result<Vec<_>>>()?;
        let mut ids: Vec<i32> = voters.iter().map(|v| v.id).collect();
        ids.sort_unstable();
        if ids.windows(2).any(|w| w[0] == w[1]) {
            bail!("controller.quorum.voters names a node id twice: {text}");
        }
        let alone = voters.len() == 1 && voters[0].id == node_id;
        if !alone && controller.is_none() {
            bail!(
                "controller.quorum.voters names other nodes, so listeners needs a \
                 CONTROLLER://host:port listener for node-to-node traffic"
            );
        }
        Ok(voters)
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

    /// The properties a source set explicitly (Kafka's STATIC_BROKER_CONFIG),
    /// with their values; empty values mean "unset".
    /// Defaults that depend on other settings, as the broker applies them:
    /// the replication factors default to min(3, voters).
    pub fn derived_defaults(&self) -> Vec<(&'static str, String)> {
        let voters = self
            .get("controller.quorum.voters")
            .split(',')
            .filter(|v| !v.trim().is_empty())
            .count()
            .max(1);
        [
            "default.replication.factor",
            "offsets.topic.replication.factor",
        ]
        .into_iter()
        .map(|key| (key, voters.min(3).to_string()))
        .collect()
    }

    pub fn explicit(&self) -> impl Iterator<Item = (&str, &str)> {
        self.explicit
            .iter()
            .filter_map(|k| Some((k.as_str(), self.values.get(k)?.as_str())))
            .filter(|(_, v)| !v.trim().is_empty())
    }

    /// A copy with `overrides` layered on top (dynamic broker configs), so
    /// that the result parses exactly as if they had been set at startup.
    pub fn with_overrides<'a>(
        &self,
        overrides: impl IntoIterator<Item = (&'a String, &'a String)>,
    ) -> Result<ConfigSources> {
        let mut layered = self.clone();
        for (k, v) in overrides {
            layered.set(k, v.clone())?;
        }
        Ok(layered)
    }
}

/// Every property Fjord knows, in the default table's order.
pub fn property_names() -> impl Iterator<Item = &'static str> {
    DEFAULTS.iter().map(|(k, _)| *k)
}

/// The built-in default of a property ("" = none, Kafka's null).
pub fn default_value(key: &str) -> Option<&'static str> {
    DEFAULTS.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
}

/// Kafka's ConfigEntry types, as DescribeConfigs v3+ reports them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigType {
    Boolean = 1,
    String = 2,
    Int = 3,
    Short = 4,
    Long = 5,
    Double = 6,
    List = 7,
    Class = 8,
    Password = 9,
}

impl ConfigType {
    pub fn id(self) -> i8 {
        self as i8
    }
}

/// The range or value set a config must fall in, beyond its type. One type
/// serves broker properties and topic configs, so a topic config and its
/// broker synonym can never disagree on what is valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Validator {
    /// Any value of the type.
    Any,
    /// A number no smaller than this (the type gives the ceiling).
    AtLeast(i64),
    /// A number in `[min, max]`.
    Between(i64, i64),
    /// A number in `[min, max]`, or -1 ("the codec's default").
    BetweenOrMinusOne(i64, i64),
    /// A double in `[0, 1]`.
    Ratio,
    /// One of these strings (case-sensitive, as Kafka's ValidString).
    OneOf(&'static [&'static str]),
    /// A comma-separated list whose items are each one of these.
    ListOf(&'static [&'static str]),
    /// `*`, or a list of `partitionId:brokerId` (the throttled-replica lists).
    ThrottledReplicas,
}

/// Checks `value` against a config's type and validator. The error is the
/// whole of Kafka's message: "Invalid value X for configuration Y: reason".
pub fn check_value(
    name: &str,
    config_type: ConfigType,
    validator: Validator,
    value: &str,
) -> std::result::Result<(), String> {
    let invalid = |reason: String| {
        Err(format!(
            "Invalid value {value} for configuration {name}: {reason}"
        ))
    };
    let v = value.trim();
    let number: Option<i64> = match config_type {
        ConfigType::Int => match v.parse::<i32>() {
            Ok(n) => Some(i64::from(n)),
            Err(_) => return invalid("Not a number of type INT".into()),
        },
        ConfigType::Short => match v.parse::<i16>() {
            Ok(n) => Some(i64::from(n)),
            Err(_) => return invalid("Not a number of type SHORT".into()),
        },
        ConfigType::Long => match v.parse::<i64>() {
            Ok(n) => Some(n),
            Err(_) => return invalid("Not a number of type LONG".into()),
        },
        ConfigType::Double => match v.parse::<f64>() {
            Ok(d) if d.is_finite() => {
                if validator == Validator::Ratio && !(0.0..=1.0).contains(&d) {
                    return invalid("Value must be between 0 and 1".into());
                }
                None
            }
            _ => return invalid("Not a number of type DOUBLE".into()),
        },
        ConfigType::Boolean => {
            if v.eq_ignore_ascii_case("true") || v.eq_ignore_ascii_case("false") {
                None
            } else {
                return invalid("Expected value to be either true or false".into());
            }
        }
        _ => None,
    };
    match (validator, number) {
        (Validator::AtLeast(min), Some(n)) if n < min => {
            invalid(format!("Value must be at least {min}"))
        }
        (Validator::Between(min, _), Some(n)) if n < min => {
            invalid(format!("Value must be at least {min}"))
        }
        (Validator::Between(_, max), Some(n)) if n > max => {
            invalid(format!("Value must be no more than {max}"))
        }
        (Validator::BetweenOrMinusOne(min, max), Some(n))
            if n != -1 && !(min..=max).contains(&n) =>
        {
            invalid(format!("Value must be -1 or between {min} and {max}"))
        }
        (Validator::OneOf(allowed), _) if !allowed.contains(&v) => {
            invalid(format!("String must be one of: {}", allowed.join(", ")))
        }
        (Validator::ListOf(allowed), _) => {
            let items: Vec<&str> = v.split(',').map(str::trim).collect();
            if v.is_empty() || items.iter().any(|i| !allowed.contains(i)) {
                invalid(format!("String must be one of: {}", allowed.join(", ")))
            } else {
                Ok(())
            }
        }
        (Validator::ThrottledReplicas, _) => {
            let ok = v == "*"
                || v.is_empty()
                || v.split(',').map(str::trim).all(|item| {
                    item.split_once(':')
                        .is_some_and(|(p, b)| p.parse::<u32>().is_ok() && b.parse::<u32>().is_ok())
                });
            if ok {
                Ok(())
            } else {
                invalid(format!("{name} must be the literal '*' or a list of replicas in the following format: [partitionId]:[brokerId],[partitionId]:[brokerId],..."))
            }
        }
        _ => Ok(()),
    }
}

/// How Kafka lets a broker property change at runtime (its "update mode").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpdateMode {
    ReadOnly,
    PerBroker,
    ClusterWide,
}

/// One broker property: Kafka's type, range and update mode (Fjord's own
/// rules for Fjord's own properties), and a line of documentation.
#[derive(Clone, Copy, Debug)]
pub struct PropertyDef {
    pub name: &'static str,
    pub config_type: ConfigType,
    pub validator: Validator,
    pub update_mode: UpdateMode,
    pub doc: &'static str,
}

/// The definition of a broker property, if it has one. A property in
/// [`DEFAULTS`] without a definition is a string parsed by `build` alone.
pub fn property(name: &str) -> Option<&'static PropertyDef> {
    PROPERTIES.iter().find(|p| p.name == name)
}

const fn def(
    name: &'static str,
    config_type: ConfigType,
    validator: Validator,
    update_mode: UpdateMode,
    doc: &'static str,
) -> PropertyDef {
    PropertyDef {
        name,
        config_type,
        validator,
        update_mode,
        doc,
    }
}

use ConfigType as T;
use UpdateMode::{ClusterWide as CW, PerBroker as PB, ReadOnly as RO};
use Validator as V;

/// Kafka's `cleanup.policy` values.
pub const CLEANUP_POLICIES: &[&str] = &["compact", "delete"];
/// Kafka's `compression.type` values.
pub const COMPRESSION_TYPES: &[&str] =
    &["uncompressed", "zstd", "lz4", "snappy", "gzip", "producer"];
/// Kafka's `message.timestamp.type` values.
pub const TIMESTAMP_TYPES: &[&str] = &["CreateTime", "LogAppendTime"];

/// Types and ranges of the broker properties (Kafka 4.4's, except where a
/// comment says why Fjord is stricter), one entry per property.
const PROPERTIES: &[PropertyDef] = &[
    def(
        "node.id",
        T::Int,
        V::AtLeast(0),
        RO,
        "This node's id in the cluster.",
    ),
    def(
        "listeners",
        T::List,
        V::Any,
        PB,
        "Addresses the broker listens on for Kafka clients.",
    ),
    def(
        "advertised.listeners",
        T::List,
        V::Any,
        RO,
        "Addresses given to clients; the listeners when empty.",
    ),
    def(
        "log.dirs",
        T::List,
        V::Any,
        RO,
        "Directory holding the partitions and the metadata (Fjord uses the first).",
    ),
    def(
        "num.partitions",
        T::Int,
        V::AtLeast(1),
        RO,
        "Partition count of topics created without one.",
    ),
    def(
        "controller.listener.names",
        T::List,
        V::Any,
        RO,
        "Names of the listeners for node-to-node (controller and replication) traffic.",
    ),
    def(
        "controller.quorum.voters",
        T::List,
        V::Any,
        RO,
        "The metadata quorum's voters as id@host:port; this node alone when empty.",
    ),
    def(
        "offsets.topic.replication.factor",
        T::Short,
        V::AtLeast(1),
        RO,
        "Replication factor of __consumer_offsets; min(3, voters) when empty.",
    ),
    def(
        "default.replication.factor",
        T::Short,
        V::Any,
        RO,
        "Replication factor of topics created without one.",
    ),
    def(
        "auto.create.topics.enable",
        T::Boolean,
        V::Any,
        RO,
        "Whether Metadata requests create unknown topics.",
    ),
    def(
        "delete.topic.enable",
        T::Boolean,
        V::Any,
        RO,
        "Whether DeleteTopics is allowed.",
    ),
    def(
        "log.retention.ms",
        T::Long,
        V::Any,
        CW,
        "Default time a record is kept; -1 keeps forever.",
    ),
    def(
        "log.retention.minutes",
        T::Int,
        V::Any,
        RO,
        "Default retention in minutes, used when log.retention.ms is unset.",
    ),
    def(
        "log.retention.hours",
        T::Int,
        V::Any,
        RO,
        "Default retention in hours, used when the ms and minutes forms are unset.",
    ),
    def(
        "log.retention.bytes",
        T::Long,
        V::Any,
        CW,
        "Default size a partition may grow to before old segments go; -1 = unlimited.",
    ),
    def(
        "log.segment.bytes",
        T::Int,
        V::AtLeast(1_048_576),
        CW,
        "Default size at which a segment is rolled.",
    ),
    def(
        "log.roll.ms",
        T::Long,
        V::Any,
        CW,
        "Default age at which a segment is rolled.",
    ),
    def(
        "log.roll.hours",
        T::Int,
        V::AtLeast(1),
        RO,
        "Default roll age in hours, used when log.roll.ms is unset.",
    ),
    def(
        "log.index.interval.bytes",
        T::Int,
        V::AtLeast(0),
        CW,
        "Default bytes between offset-index entries.",
    ),
    def(
        "message.max.bytes",
        T::Int,
        V::AtLeast(0),
        CW,
        "Default largest record batch a topic accepts.",
    ),
    def(
        "log.message.timestamp.type",
        T::String,
        V::OneOf(TIMESTAMP_TYPES),
        CW,
        "Default of who stamps records: the producer or the broker.",
    ),
    def(
        "log.cleanup.policy",
        T::List,
        V::ListOf(CLEANUP_POLICIES),
        CW,
        "Default cleanup policy: delete old segments, compact, or both.",
    ),
    def(
        "log.fsync",
        T::String,
        V::OneOf(&["interval", "always"]),
        RO,
        "Fjord: flush on an interval (Kafka-like) or before every acknowledgement.",
    ),
    // Fjord's flush task runs on this period, so it must be a real number.
    def(
        "log.flush.interval.ms",
        T::Long,
        V::AtLeast(0),
        CW,
        "How often buffered log data is flushed to disk.",
    ),
    def(
        "log.retention.check.interval.ms",
        T::Long,
        V::AtLeast(1),
        RO,
        "How often retention runs.",
    ),
    def(
        "socket.request.max.bytes",
        T::Int,
        V::AtLeast(1),
        RO,
        "Largest request frame accepted.",
    ),
    def(
        "max.connections",
        T::Int,
        V::AtLeast(0),
        CW,
        "Most client connections at once.",
    ),
    def(
        "connection.max.inflight.requests",
        T::Int,
        V::AtLeast(1),
        RO,
        "Fjord: requests read ahead per connection.",
    ),
    def(
        "connections.max.idle.ms",
        T::Long,
        V::Any,
        RO,
        "Idle connections are closed after this.",
    ),
    def(
        "fetch.max.bytes",
        T::Int,
        V::AtLeast(1024),
        RO,
        "Largest fetch response.",
    ),
    def(
        "fetch.max.wait.ms.max",
        T::Long,
        V::AtLeast(0),
        RO,
        "Fjord: cap on a fetch's long-poll wait.",
    ),
    def(
        "produce.max.timeout.ms",
        T::Long,
        V::AtLeast(0),
        RO,
        "Fjord: cap on a produce request's timeout.",
    ),
    def(
        "offsets.topic.num.partitions",
        T::Int,
        V::AtLeast(1),
        RO,
        "Partition count of __consumer_offsets (fixed once created).",
    ),
    // Stricter than Kafka's [1,...]: the value becomes the offsets topic's
    // segment.bytes, whose floor is 1048576.
    def(
        "offsets.topic.segment.bytes",
        T::Int,
        V::AtLeast(1_048_576),
        RO,
        "segment.bytes of __consumer_offsets.",
    ),
    def(
        "offsets.retention.minutes",
        T::Int,
        V::AtLeast(1),
        RO,
        "How long committed offsets of an empty group are kept.",
    ),
    def(
        "offsets.retention.check.interval.ms",
        T::Long,
        V::AtLeast(1),
        RO,
        "How often expired offsets are removed.",
    ),
    def(
        "offset.metadata.max.bytes",
        T::Int,
        V::Any,
        RO,
        "Largest metadata string of a committed offset.",
    ),
    def(
        "group.min.session.timeout.ms",
        T::Int,
        V::Any,
        RO,
        "Smallest session timeout a group member may ask for.",
    ),
    def(
        "group.max.session.timeout.ms",
        T::Int,
        V::Any,
        RO,
        "Largest session timeout a group member may ask for.",
    ),
    def(
        "replica.lag.time.max.ms",
        T::Long,
        V::AtLeast(1),
        RO,
        "A follower that has not caught up with its leader for this long leaves the ISR.",
    ),
    def(
        "controlled.shutdown.enable",
        T::Boolean,
        V::Any,
        RO,
        "On SIGTERM, move the leadership of every partition this node leads to a caught-up follower before stopping.",
    ),
    def(
        "auto.leader.rebalance.enable",
        T::Boolean,
        V::Any,
        RO,
        "Hand each partition back to its preferred leader (its first replica) once that replica is in sync again.",
    ),
    def(
        "leader.imbalance.check.interval.seconds",
        T::Long,
        V::AtLeast(1),
        RO,
        "How often each node checks the partitions it leads for a preferred leader to hand them back to.",
    ),
    def(
        "group.initial.rebalance.delay.ms",
        T::Int,
        V::Any,
        RO,
        "How long a new group waits for more members before its first rebalance.",
    ),
    def(
        "group.max.size",
        T::Int,
        V::AtLeast(1),
        RO,
        "Most members a group may have.",
    ),
    def(
        "broker.rack",
        T::String,
        V::Any,
        RO,
        "This broker's rack, for rack-aware placement.",
    ),
    def(
        "log.index.size.max.bytes",
        T::Int,
        V::AtLeast(4),
        CW,
        "Default largest offset/time index file; a full index rolls the segment.",
    ),
    def(
        "log.message.timestamp.before.max.ms",
        T::Long,
        V::AtLeast(0),
        CW,
        "Default of how far in the past a CreateTime timestamp may be.",
    ),
    def(
        "log.message.timestamp.after.max.ms",
        T::Long,
        V::AtLeast(0),
        CW,
        "Default of how far in the future a CreateTime timestamp may be.",
    ),
    def(
        "compression.type",
        T::String,
        V::OneOf(COMPRESSION_TYPES),
        CW,
        "Default codec batches are stored in; producer keeps the producer's.",
    ),
    def(
        "compression.gzip.level",
        T::Int,
        V::BetweenOrMinusOne(1, 9),
        CW,
        "Default gzip level when the broker compresses.",
    ),
    def(
        "compression.lz4.level",
        T::Int,
        V::Between(1, 17),
        CW,
        "Default lz4 level when the broker compresses.",
    ),
    def(
        "compression.zstd.level",
        T::Int,
        V::Between(-131_072, 22),
        CW,
        "Default zstd level when the broker compresses.",
    ),
    def(
        "log.flush.interval.messages",
        T::Long,
        V::AtLeast(1),
        CW,
        "Default count of messages after which a partition is flushed.",
    ),
    def(
        "log.flush.scheduler.interval.ms",
        T::Long,
        V::Any,
        RO,
        "How often the flusher checks for logs to flush (Kafka).",
    ),
    def(
        "log.cleaner.delete.retention.ms",
        T::Long,
        V::AtLeast(0),
        CW,
        "Default time tombstones are kept in compacted topics.",
    ),
    def(
        "log.cleaner.min.compaction.lag.ms",
        T::Long,
        V::AtLeast(0),
        CW,
        "Default minimum age before a record may be compacted.",
    ),
    def(
        "log.cleaner.max.compaction.lag.ms",
        T::Long,
        V::AtLeast(1),
        CW,
        "Default maximum age before a record must be compacted.",
    ),
    def(
        "log.cleaner.min.cleanable.ratio",
        T::Double,
        V::Ratio,
        CW,
        "Default share of dirty log that triggers compaction.",
    ),
    def(
        "log.segment.delete.delay.ms",
        T::Long,
        V::AtLeast(0),
        CW,
        "Default wait before a deleted segment's files are removed.",
    ),
    def(
        "log.preallocate",
        T::Boolean,
        V::Any,
        CW,
        "Default of whether segment files are preallocated.",
    ),
    def(
        "log.roll.jitter.ms",
        T::Long,
        V::Any,
        CW,
        "Default random jitter subtracted from the roll age.",
    ),
    def(
        "log.roll.jitter.hours",
        T::Int,
        V::AtLeast(0),
        RO,
        "Roll jitter in hours, used when log.roll.jitter.ms is unset.",
    ),
    def(
        "log.local.retention.ms",
        T::Long,
        V::AtLeast(-2),
        CW,
        "Default local retention with tiered storage; -2 = retention.ms.",
    ),
    def(
        "log.local.retention.bytes",
        T::Long,
        V::AtLeast(-2),
        CW,
        "Default local size limit with tiered storage; -2 = retention.bytes.",
    ),
    def(
        "log.remote.copy.lag.ms",
        T::Long,
        V::AtLeast(-1),
        CW,
        "Default delay before a segment is copied to tiered storage.",
    ),
    def(
        "log.remote.copy.lag.bytes",
        T::Long,
        V::AtLeast(-1),
        CW,
        "Default bytes held back before copying to tiered storage.",
    ),
    def(
        "min.insync.replicas",
        T::Int,
        V::AtLeast(1),
        CW,
        "Default replicas that must hold an acks=all write.",
    ),
    def(
        "max.decompressed.message.bytes",
        T::Int,
        V::Between(1, 2_147_483_639),
        CW,
        "Default largest decompressed size of a batch.",
    ),
    def(
        "unclean.leader.election.enable",
        T::Boolean,
        V::Any,
        CW,
        "Default of whether an out-of-sync replica may become leader.",
    ),
    def(
        "max.broker.partitions",
        T::Int,
        V::AtLeast(1),
        RO,
        "Fjord (KIP-578's name): most partitions this broker hosts.",
    ),
    def(
        "auto.create.topics.max.per.request",
        T::Int,
        V::AtLeast(0),
        RO,
        "Fjord: most topics one Metadata request may auto-create.",
    ),
    def(
        "auto.create.topics.max.per.second",
        T::Int,
        V::AtLeast(0),
        RO,
        "Fjord: most topics Metadata requests may auto-create per second.",
    ),
    def(
        "max.request.partition.size.limit",
        T::Int,
        V::AtLeast(1),
        RO,
        "Most partitions one DescribeTopicPartitions answer holds.",
    ),
];

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
    fn default_listeners_split_into_client_and_controller() {
        let config = ConfigSources::new().build().expect("defaults parse");
        assert_eq!(config.listeners.len(), 1);
        assert_eq!(config.listeners[0].name, "PLAINTEXT");
        let controller = config.controller_listener.expect("a CONTROLLER listener");
        assert_eq!(
            (controller.host.as_str(), controller.port),
            ("127.0.0.1", 9093)
        );
        assert_eq!(
            config.voters,
            vec![Voter {
                id: 1,
                host: "127.0.0.1".into(),
                port: 9093
            }]
        );
        assert_eq!(config.default_replication_factor, 1);
        assert_eq!(config.offsets_topic_replication_factor, 1);
    }

    fn cluster_sources(voters: &str) -> ConfigSources {
        let mut sources = ConfigSources::new();
        sources.set("node.id", "2").expect("known");
        sources
            .set("controller.quorum.voters", voters)
            .expect("known");
        sources
    }

    #[test]
    fn voters_set_the_replication_defaults() {
        let config = cluster_sources("1@127.0.0.1:9093,2@127.0.0.1:9193,3@127.0.0.1:9293")
            .build()
            .expect("parses");
        assert_eq!(config.voters.len(), 3);
        assert_eq!(config.voters[2].port, 9293);
        assert_eq!(config.default_replication_factor, 3);
        assert_eq!(config.offsets_topic_replication_factor, 3);
        let five = cluster_sources("1@a:1,2@b:2,3@c:3,4@d:4,5@e:5")
            .build()
            .expect("parses");
        assert_eq!(five.default_replication_factor, 3);
        // DescribeConfigs reports the value in effect, not an empty default.
        let empty = std::collections::BTreeMap::new();
        let layers =
            crate::cluster::BrokerLayers::new(&cluster_sources("1@a:1,2@b:2"), &empty, &empty);
        assert_eq!(
            layers.value("default.replication.factor").map(|(v, _)| v),
            Some("2")
        );
        assert_eq!(
            layers
                .value("offsets.topic.replication.factor")
                .map(|(v, _)| v),
            Some("2")
        );
        let mut explicit = cluster_sources("1@a:1,2@b:2,3@c:3");
        explicit
            .set("default.replication.factor", "2")
            .expect("known");
        explicit
            .set("offsets.topic.replication.factor", "1")
            .expect("known");
        let explicit = explicit.build().expect("parses");
        assert_eq!(explicit.default_replication_factor, 2);
        assert_eq!(explicit.offsets_topic_replication_factor, 1);
    }

    #[test]
    fn cluster_settings_are_checked() {
        for (key, value, why) in [
            ("controller.quorum.voters", "1@a:1,1@b:2", "twice"),
            ("controller.quorum.voters", "one@a:1", "id@host:port"),
            ("controller.quorum.voters", "1@a", "id@host:port"),
            ("unclean.leader.election.enable", "true", "not supported"),
            ("offsets.topic.replication.factor", "0", "at least 1"),
        ] {
            let mut sources = ConfigSources::new();
            sources.set(key, value).expect("known");
            let error = sources.build().expect_err(value).to_string();
            assert!(error.contains(why), "{key}={value}: {error}");
        }
        let mut no_controller = cluster_sources("1@a:1,2@b:2,3@c:3");
        no_controller
            .set("listeners", "PLAINTEXT://127.0.0.1:9092")
            .expect("known");
        let error = no_controller
            .build()
            .expect_err("needs CONTROLLER")
            .to_string();
        assert!(error.contains("CONTROLLER://"), "{error}");
        // A lone node needs no controller listener.
        let mut alone = ConfigSources::new();
        alone
            .set("listeners", "PLAINTEXT://127.0.0.1:9092")
            .expect("known");
        let alone = alone.build().expect("parses");
        assert!(alone.controller_listener.is_none());
        assert_eq!(alone.voters.len(), 1);
    }

    #[test]
    fn env_vars_map_to_kafka_property_names() {
        let mut sources = ConfigSources::new();
        sources
            .load_env(vec![
                ("FJORD_LOG_SEGMENT_BYTES".to_string(), "2097152".to_string()),
                ("FJORD_NUM_PARTITIONS".to_string(), "3".to_string()),
                ("FJORD_BOOTSTRAP_SERVER".to_string(), "x:1".to_string()),
                ("PATH".to_string(), "/bin".to_string()),
            ])
            .expect("env applies");
        let config = sources.build().expect("parses");
        assert_eq!(config.log.segment_bytes, 2_097_152);
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
    fn every_default_passes_its_own_rule() {
        for name in property_names() {
            let value = default_value(name).unwrap_or("");
            if let (Some(def), false) = (property(name), value.is_empty()) {
                check_value(name, def.config_type, def.validator, value)
                    .unwrap_or_else(|e| panic!("{e}"));
            }
        }
        ConfigSources::new().build().expect("defaults parse");
    }

    #[test]
    fn kafkas_types_and_ranges_give_clear_startup_errors() {
        for (k, v, why) in [
            (
                "log.segment.bytes",
                "1024",
                "Value must be at least 1048576",
            ),
            (
                "message.max.bytes",
                "2147483648",
                "Not a number of type INT",
            ),
            ("compression.type", "brotli", "String must be one of"),
            ("log.cleaner.min.cleanable.ratio", "2", "between 0 and 1"),
            ("log.preallocate", "maybe", "true or false"),
            ("max.broker.partitions", "0", "at least 1"),
        ] {
            let mut sources = ConfigSources::new();
            sources.set(k, v).expect("known key");
            let err = format!("{:#}", sources.build().expect_err(k));
            assert!(err.contains(k) && err.contains(why), "{k}={v}: {err}");
        }
    }

    #[test]
    fn explicit_values_are_told_apart_from_defaults() {
        let mut sources = ConfigSources::new();
        sources.set("log.retention.hours", "5").expect("known");
        let explicit: Vec<_> = sources.explicit().collect();
        assert_eq!(explicit, vec![("log.retention.hours", "5")]);
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
