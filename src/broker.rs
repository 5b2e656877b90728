//! The broker process: opens the data directory, recovers every partition,
//! starts the listeners and the background tasks (flush, retention), and shuts
//! them down cleanly. Like Kafka's BrokerServer, it owns the shared state that
//! the API handlers use.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::error::ResponseError;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::api::KafkaApis;
use crate::cluster::{ClusterMetadata, TopicConfigs, TopicMeta};
use crate::config::{BrokerConfig, ConfigSources};
use crate::coordinator::group_coordinator::{GroupCoordinator, OFFSETS_TOPIC};
use crate::coordinator::producer_id::ProducerIdManager;
use crate::log::LogConfig;
use crate::replica::{ReplicaManager, TopicPartition};

/// Everything the API handlers share.
pub struct Broker {
    pub config: Arc<BrokerConfig>,
    pub config_sources: ConfigSources,
    pub metadata: ClusterMetadata,
    pub replicas: ReplicaManager,
    pub producer_ids: ProducerIdManager,
    pub groups: Arc<GroupCoordinator>,
}

/// A Kafka error with its message, as handlers pass them around.
pub type KafkaError = (ResponseError, String);

impl Broker {
    /// Opens the data directory and recovers every partition. Blocking.
    pub fn open(config_sources: ConfigSources) -> anyhow::Result<Broker> {
        let config = Arc::new(config_sources.build()?);
        std::fs::create_dir_all(&config.log_dirs)?;
        let metadata = ClusterMetadata::open(&config.log_dirs, config.node_id)?;
        let replicas = ReplicaManager::new(&config);
        let producer_ids = ProducerIdManager::open(&config.log_dirs)?;
        let groups = Arc::new(GroupCoordinator::new(&config));
        let broker = Broker {
            config,
            config_sources,
            metadata,
            replicas,
            producer_ids,
            groups,
        };
        for topic in broker.metadata.topics() {
            let log_config = broker.log_config(&topic);
            for partition in 0..topic.partitions {
                broker
                    .replicas
                    .open_partition(
                        TopicPartition::new(&topic.name, partition),
                        topic.id,
                        log_config.clone(),
                    )
                    .map_err(|e| anyhow::anyhow!("recovering {}-{partition}: {e}", topic.name))?;
            }
        }
        broker.ensure_offsets_topic()?;
        broker.groups.load(&broker)?;
        Ok(broker)
    }

    /// Creates `__consumer_offsets` (internal, compacted) on first start.
    fn ensure_offsets_topic(&self) -> anyhow::Result<()> {
        if self.metadata.topic(OFFSETS_TOPIC).is_some() {
            return Ok(());
        }
        let mut configs = BTreeMap::new();
        configs.insert("cleanup.policy".to_string(), "compact".to_string());
        configs.insert(
            "segment.bytes".to_string(),
            self.config.offsets_topic_segment_bytes.to_string(),
        );
        let topic = self
            .metadata
            .create_topic(
                OFFSETS_TOPIC,
                self.config.offsets_topic_num_partitions,
                configs,
                true,
            )
            .map_err(|(code, message)| {
                anyhow::anyhow!("creating {OFFSETS_TOPIC}: {code:?} {message}")
            })?;
        self.open_partitions(&topic, 0).map_err(|(code, message)| {
            anyhow::anyhow!("creating {OFFSETS_TOPIC}: {code:?} {message}")
        })?;
        Ok(())
    }

    /// A topic's effective log settings.
    pub fn log_config(&self, topic: &TopicMeta) -> LogConfig {
        TopicConfigs::log_config(&self.config, &topic.configs)
    }

    /// Creates a topic and its partitions' logs. Blocking.
    pub fn create_topic(
        &self,
        name: &str,
        partitions: i32,
        configs: BTreeMap<String, String>,
    ) -> Result<TopicMeta, KafkaError> {
        self.metadata.validate_new_topic(name, partitions)?;
        TopicConfigs::validate_all(&configs)?;
        let topic = self
            .metadata
            .create_topic(name, partitions, configs, false)?;
        self.open_partitions(&topic, 0)?;
        tracing::info!(topic = name, partitions, "created topic");
        Ok(topic)
    }

    /// Deletes a topic and its data. Blocking.
    pub fn delete_topic(&self, name: &str) -> Result<TopicMeta, KafkaError> {
        let topic = self.metadata.delete_topic(name)?;
        for partition in 0..topic.partitions {
            if let Err(e) = self
                .replicas
                .delete_partition(&TopicPartition::new(name, partition))
            {
                tracing::error!(topic = name, partition, error = %e, "deleting partition data failed");
            }
        }
        tracing::info!(topic = name, "deleted topic");
        Ok(topic)
    }

    /// Grows a topic to `count` partitions. Blocking.
    pub fn add_partitions(&self, name: &str, count: i32) -> Result<TopicMeta, KafkaError> {
        let before = self.metadata.topic(name).ok_or((
            ResponseError::UnknownTopicOrPartition,
            format!("Topic '{name}' does not exist."),
        ))?;
        let topic = self.metadata.set_partition_count(name, count)?;
        self.open_partitions(&topic, before.partitions)?;
        Ok(topic)
    }

    /// Replaces a topic's configs and applies them to its open logs. Blocking.
    pub fn set_topic_configs(
        &self,
        name: &str,
        configs: BTreeMap<String, String>,
    ) -> Result<TopicMeta, KafkaError> {
        TopicConfigs::validate_all(&configs)?;
        let topic = self.metadata.set_topic_configs(name, configs)?;
        let log_config = self.log_config(&topic);
        for partition in 0..topic.partitions {
            if let Some(p) = self.replicas.get(name, partition) {
                p.set_config(log_config.clone());
            }
        }
        Ok(topic)
    }

    fn open_partitions(&self, topic: &TopicMeta, from: i32) -> Result<(), KafkaError> {
        let log_config = self.log_config(topic);
        for partition in from..topic.partitions {
            self.replicas
                .open_partition(
                    TopicPartition::new(&topic.name, partition),
                    topic.id,
                    log_config.clone(),
                )
                .map_err(|e| (ResponseError::KafkaStorageError, e.to_string()))?;
        }
        Ok(())
    }

    /// The advertised address of this node (first advertised listener).
    pub fn advertised(&self) -> (&str, i32) {
        let l = &self.config.advertised_listeners[0];
        (l.host.as_str(), i32::from(l.port))
    }
}

/// Runs a broker until `shutdown` fires, then closes every log cleanly.
pub async fn run(
    config_sources: ConfigSources,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let broker = tokio::task::spawn_blocking(move || Broker::open(config_sources)).await??;
    let broker = Arc::new(broker);
    let config = broker.config.clone();
    tracing::info!(
        node_id = config.node_id,
        cluster_id = broker.metadata.cluster_id(),
        log_dirs = %config.log_dirs.display(),
        partitions = broker.replicas.all().len(),
        "broker recovered"
    );

    let apis = Arc::new(KafkaApis::new(broker.clone()));
    let mut servers = Vec::new();
    for listener in &config.listeners {
        let addr = listener.bind_addr()?;
        let socket = TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
        tracing::info!(%addr, "listening for Kafka clients");
        servers.push(tokio::spawn(crate::network::serve(
            socket,
            apis.clone(),
            shutdown.clone(),
        )));
    }

    let background = tokio::spawn(background_tasks(broker.clone(), shutdown.clone()));
    let group_timers = tokio::spawn(
        broker
            .groups
            .clone()
            .run_timers(broker.clone(), shutdown.clone()),
    );
    let _ = shutdown.wait_for(|stop| *stop).await;
    tracing::info!("shutting down");
    for server in servers {
        let _ = server.await;
    }
    background.abort();
    group_timers.abort();
    let closing = broker.clone();
    tokio::task::spawn_blocking(move || closing.replicas.shutdown()).await?;
    tracing::info!("shutdown complete");
    Ok(())
}

/// Periodic flush (`log.flush.interval.ms`) and retention
/// (`log.retention.check.interval.ms`), each on a blocking thread.
async fn background_tasks(broker: Arc<Broker>, mut shutdown: watch::Receiver<bool>) {
    let config = broker.config.clone();
    let mut flush =
        tokio::time::interval(Duration::from_millis(config.log_flush_interval_ms.max(1)));
    let mut retention = tokio::time::interval(Duration::from_millis(
        config.log_retention_check_interval_ms.max(1),
    ));
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    retention.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            // With --fsync always every acknowledgement syncs the data; this
            // then only brings the indexes up to date.
            _ = flush.tick() => {
                let b = broker.clone();
                let _ = tokio::task::spawn_blocking(move || b.replicas.flush_all()).await;
            }
            _ = retention.tick() => {
                let b = broker.clone();
                let _ = tokio::task::spawn_blocking(move || b.replicas.enforce_retention_all(now_ms())).await;
            }
            _ = shutdown.changed() => return,
        }
    }
}

/// Milliseconds since the Unix epoch (Kafka's timestamp unit).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
