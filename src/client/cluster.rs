//! The cluster as a client sees it: bootstrap, the broker list from Metadata,
//! and one [`Connection`] per broker, opened on first use.
//!
//! Requests that any broker can answer (Metadata, DescribeConfigs) go to
//! [`Client::any_broker`]; partition requests go to the partition leader via
//! [`Client::broker`]; admin requests go to [`Client::controller`] (in KRaft
//! mode Kafka names a random broker there and forwards to the real
//! controller). [`Client::brokers`] hands out several connections at once so
//! a caller can talk to all leaders concurrently without locks: each future
//! owns a disjoint `&mut Connection`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context, Result};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{MetadataRequest, MetadataResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use tracing::debug;

use crate::client::connection::{ClientConfig, Connection};
use crate::client::error::KafkaError;
use crate::client::metadata::TopicMetadata;

/// How often [`Client::topic_metadata`] asks again while a topic is still
/// being created or has a partition without a leader.
pub const METADATA_RETRIES_MAX: u32 = 15;
/// Pause between such retries (and between other retries of stale-metadata
/// errors): long enough for a KRaft metadata update to reach brokers.
pub const RETRY_BACKOFF: Duration = Duration::from_millis(200);

/// A Kafka cluster client: metadata plus a connection pool keyed by node id.
#[derive(Debug)]
pub struct Client {
    config: ClientConfig,
    bootstrap: Vec<String>,
    /// node id → "host:port" from the latest Metadata response.
    brokers: BTreeMap<i32, String>,
    connections: HashMap<i32, Connection>,
    /// The connection we bootstrapped over, until Metadata tells us which
    /// node it reaches (then it moves into `connections`).
    bootstrap_connection: Option<Connection>,
    controller_id: i32,
    cluster_id: Option<String>,
}

impl Client {
    /// Connects to the first reachable server of a comma-separated
    /// `host:port` list and loads the broker list.
    pub async fn connect(bootstrap_servers: &str, config: ClientConfig) -> Result<Self> {
        let bootstrap: Vec<String> = bootstrap_servers
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        ensure!(!bootstrap.is_empty(), "no bootstrap server given");
        let mut client = Client {
            config,
            bootstrap,
            brokers: BTreeMap::new(),
            connections: HashMap::new(),
            bootstrap_connection: None,
            controller_id: -1,
            cluster_id: None,
        };
        client.bootstrap_connection = Some(client.connect_bootstrap().await?);
        client.metadata(Some(&[]), false).await?;
        Ok(client)
    }

    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    pub fn cluster_id(&self) -> Option<&str> {
        self.cluster_id.as_deref()
    }

    /// Known brokers: node id → address.
    pub fn brokers_known(&self) -> &BTreeMap<i32, String> {
        &self.brokers
    }

    async fn connect_bootstrap(&self) -> Result<Connection> {
        let mut errors = Vec::new();
        for addr in &self.bootstrap {
            match Connection::connect(addr, &self.config).await {
                Ok(conn) => return Ok(conn),
                Err(e) => errors.push(format!("{e:#}")),
            }
        }
        bail!(
            "could not connect to any bootstrap server: {}",
            errors.join("; ")
        )
    }

    /// A usable connection to some broker, reconnecting if needed.
    pub async fn any_broker(&mut self) -> Result<&mut Connection> {
        if self
            .bootstrap_connection
            .as_ref()
            .is_some_and(Connection::is_usable)
        {
            return self
                .bootstrap_connection
                .as_mut()
                .ok_or_else(|| anyhow!("bootstrap connection vanished"));
        }
        let open = self
            .connections
            .iter()
            .find(|(_, c)| c.is_usable())
            .map(|(id, _)| *id);
        if let Some(id) = open {
            return self.broker(id).await;
        }
        let known: Vec<i32> = self.brokers.keys().copied().collect();
        for id in known {
            let reached = self.broker(id).await.map(|_| ());
            match reached {
                Ok(()) => return self.broker(id).await,
                Err(e) => debug!(node_id = id, error = %format!("{e:#}"), "broker unreachable"),
            }
        }
        let conn = self.connect_bootstrap().await?;
        Ok(self.bootstrap_connection.insert(conn))
    }

    /// The connection to broker `node_id`, opened (or reopened) on demand.
    pub async fn broker(&mut self, node_id: i32) -> Result<&mut Connection> {
        let usable = self
            .connections
            .get(&node_id)
            .is_some_and(Connection::is_usable);
        if !usable {
            let addr = self
                .brokers
                .get(&node_id)
                .ok_or_else(|| anyhow!("broker {node_id} is not in the cluster metadata"))?
                .clone();
            let conn = Connection::connect(&addr, &self.config)
                .await
                .with_context(|| format!("broker {node_id}"))?;
            self.connections.insert(node_id, conn);
        }
        self.connections
            .get_mut(&node_id)
            .ok_or_else(|| anyhow!("connection to broker {node_id} vanished"))
    }

    /// Connections to several brokers at once (for concurrent requests), and
    /// the brokers that could not be reached.
    pub async fn brokers(
        &mut self,
        node_ids: impl IntoIterator<Item = i32>,
    ) -> (Vec<(i32, &mut Connection)>, Vec<(i32, anyhow::Error)>) {
        let wanted: BTreeSet<i32> = node_ids.into_iter().collect();
        let mut failed = Vec::new();
        for &id in &wanted {
            if let Err(e) = self.broker(id).await {
                failed.push((id, e));
            }
        }
        let open = self
            .connections
            .iter_mut()
            .filter(|(id, c)| wanted.contains(id) && c.is_usable())
            .map(|(id, c)| (*id, c))
            .collect();
        (open, failed)
    }

    /// The broker Metadata names as controller: where admin requests go.
    pub async fn controller(&mut self) -> Result<&mut Connection> {
        if self.controller_id < 0 {
            self.metadata(Some(&[]), false).await?;
        }
        let id = self.controller_id;
        ensure!(id >= 0, "the cluster metadata names no controller");
        self.broker(id).await
    }

    /// Sends a Metadata request for `topics` (`None`: all topics) and
    /// refreshes the broker list from the answer.
    pub async fn metadata(
        &mut self,
        topics: Option<&[String]>,
        allow_auto_topic_creation: bool,
    ) -> Result<MetadataResponse> {
        let conn = self.any_broker().await?;
        // v0 cannot ask for "all topics" (null), and nothing we talk to is
        // that old: Kafka 4 and Fjord both start at v0 but speak up to v12+.
        let version = conn.version::<MetadataRequest>()?;
        ensure!(
            version >= 1,
            "broker {} only speaks Metadata v0",
            conn.addr()
        );
        let topics = topics.map(|names| {
            names
                .iter()
                .map(|n| {
                    MetadataRequestTopic::default()
                        .with_name(Some(TopicName(StrBytes::from_string(n.clone()))))
                })
                .collect()
        });
        let mut request = MetadataRequest::default().with_topics(topics);
        if version >= 4 {
            request.allow_auto_topic_creation = allow_auto_topic_creation;
        }
        let response = conn.send(&request, version).await?;
        self.update_brokers(&response);
        Ok(response)
    }

    fn update_brokers(&mut self, response: &MetadataResponse) {
        if response.brokers.is_empty() {
            return;
        }
        let brokers: BTreeMap<i32, String> = response
            .brokers
            .iter()
            .map(|b| (b.node_id.0, host_port(b.host.as_str(), b.port)))
            .collect();
        // A broker that left or moved: its old connection is useless.
        self.connections
            .retain(|id, c| brokers.get(id).is_some_and(|addr| addr == c.addr()));
        let adopt = self.bootstrap_connection.as_ref().and_then(|c| {
            brokers
                .iter()
                .find(|(id, addr)| *addr == c.addr() && !self.connections.contains_key(id))
                .map(|(id, _)| *id)
        });
        if let (Some(id), Some(conn)) = (adopt, self.bootstrap_connection.take()) {
            self.connections.insert(id, conn);
        }
        self.brokers = brokers;
        self.controller_id = response.controller_id.0;
        if let Some(id) = &response.cluster_id {
            self.cluster_id = Some(id.as_str().to_owned());
        }
    }

    /// Metadata for one topic, waiting (bounded) while it is being created or
    /// a partition has no leader. With `allow_auto_topic_creation` a missing
    /// topic is created by brokers that allow it, as the Java producer does.
    ///
    /// Returns the last answer even if some partition is still leaderless, so
    /// the caller can report those partitions and carry on with the others.
    pub async fn topic_metadata(
        &mut self,
        topic: &str,
        allow_auto_topic_creation: bool,
    ) -> Result<TopicMetadata> {
        let mut last: Option<Result<TopicMetadata, KafkaError>> = None;
        for attempt in 0..=METADATA_RETRIES_MAX {
            if attempt > 0 {
                tokio::time::sleep(RETRY_BACKOFF).await;
            }
            let response = self
                .metadata(Some(&[topic.to_owned()]), allow_auto_topic_creation)
                .await?;
            let found = response
                .topics
                .iter()
                .find(|t| t.name.as_ref().is_some_and(|n| n.0.as_str() == topic))
                .ok_or_else(|| anyhow!("Metadata response does not mention topic '{topic}'"))?;
            match TopicMetadata::from_response(found) {
                Ok(meta) if meta.all_partitions_led() => return Ok(meta),
                Ok(meta) => last = Some(Ok(meta)),
                Err(e)
                    if e.code == KafkaError::LEADER_NOT_AVAILABLE
                        || (allow_auto_topic_creation
                            && e.code == KafkaError::UNKNOWN_TOPIC_OR_PARTITION) =>
                {
                    last = Some(Err(e))
                }
                Err(e) => return Err(e.into()),
            }
        }
        match last {
            Some(Ok(meta)) => Ok(meta),
            Some(Err(e)) => Err(e.into()),
            None => bail!("no metadata for topic '{topic}'"),
        }
    }
}

/// "host:port", bracketing IPv6 literals.
fn host_port(host: &str, port: i32) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_hosts_are_bracketed() {
        assert_eq!(host_port("127.0.0.1", 9092), "127.0.0.1:9092");
        assert_eq!(host_port("::1", 9092), "[::1]:9092");
    }

    #[tokio::test]
    async fn empty_bootstrap_list_is_an_error() {
        let err = Client::connect(" , ", ClientConfig::default())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("no bootstrap"), "{err}");
    }
}
