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
use uuid::Uuid;

use crate::api::KafkaApis;
use crate::cluster::auto_create::AutoCreateRate;
use crate::cluster::broker_config::{self, CLUSTER_DEFAULT};
use crate::cluster::partition_dirs::{self, STRAY_SUFFIX};
use crate::cluster::placement::{self, Candidate};
use crate::cluster::{
    stored_cluster_id, BrokerLayers, ClusterMetadata, TopicConfigs, TopicMeta, TOPIC_PARTITIONS_MAX,
};
use crate::config::{BrokerConfig, ConfigSources};
use crate::coordinator::group_coordinator::{GroupCoordinator, OFFSETS_TOPIC};
use crate::coordinator::producer_id::ProducerIdManager;
use crate::log::dir_lock::LogDirLock;
use crate::log::{file_cache, LogConfig};
use crate::raft::group::GroupTimers;
use crate::replica::{
    GroupContext, Opened, ReplicaManager, TopicPartition, Voters, REOPEN_CHECK_INTERVAL,
};

/// Threads that create a new topic's partitions.
const CREATE_THREADS: usize = 8;

/// How long CreateTopics and CreatePartitions wait for the new partitions
/// to elect leaders before they answer.
const NEW_PARTITION_LEADER_WAIT: Duration = Duration::from_secs(5);

/// How long the first node waits for `offsets.topic.replication.factor`
/// brokers before it creates `__consumer_offsets` with fewer replicas.
const OFFSETS_TOPIC_BROKERS_WAIT: Duration = Duration::from_secs(5);

/// Everything the API handlers share.
pub struct Broker {
    pub config: Arc<BrokerConfig>,
    pub config_sources: ConfigSources,
    pub metadata: ClusterMetadata,
    pub replicas: ReplicaManager,
    pub producer_ids: ProducerIdManager,
    pub groups: Arc<GroupCoordinator>,
    /// The shared budget for topics auto-created by Metadata.
    pub auto_create_rate: AutoCreateRate,
    /// This process's hold on `log.dirs` (released at exit).
    _dir_lock: LogDirLock,
}

/// One partition's leadership as Metadata and DescribeTopicPartitions
/// report it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionView {
    /// `None` while the partition has no leader (its replica is offline,
    /// or an election is under way).
    pub leader: Option<i32>,
    pub leader_epoch: i32,
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
    pub offline: Vec<i32>,
}

/// A Kafka error with its message, as handlers pass them around.
pub type KafkaError = (ResponseError, String);

/// A started broker and the node-to-node server it runs.
pub struct Started {
    pub broker: Arc<Broker>,
    /// The CONTROLLER listener's server, if the node has one.
    pub peer_server: Option<tokio::task::JoinHandle<()>>,
}

impl Broker {
    /// Starts a node: takes `log.dirs`, starts the node-to-node transport
    /// (serving the CONTROLLER listener) and this node's member of the
    /// metadata group, waits until it has joined the cluster, then opens and
    /// recovers every partition this node hosts. Client listeners are the
    /// caller's.
    pub async fn start(
        config_sources: ConfigSources,
        shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<Started> {
        let config = Arc::new(config_sources.build()?);
        std::fs::create_dir_all(&config.log_dirs).map_err(|e| {
            anyhow::anyhow!("cannot create log.dirs {}: {e}", config.log_dirs.display())
        })?;
        // Before anything is read: a second broker on these files would
        // interleave its writes with ours.
        let dir_lock = LogDirLock::acquire(&config.log_dirs)?;
        size_descriptor_cache(&config);
        let transport = crate::raft::transport::Transport::new(
            crate::raft::transport::TransportConfig::new(
                config.node_id as crate::raft::NodeId,
                stored_cluster_id(&config.log_dirs, config.node_id)?,
            ),
            shutdown.clone(),
        );
        let registry = Arc::new(crate::raft::network::Registry::default());
        let mut peer_server = None;
        if let Some(listener) = &config.controller_listener {
            let addr = listener.bind_addr()?;
            let socket = TcpListener::bind(addr)
                .await
                .map_err(|e| anyhow::anyhow!("cannot listen on {addr} (CONTROLLER): {e}"))?;
            tracing::info!(%addr, "listening for peers");
            peer_server = Some(tokio::spawn(
                transport.clone().serve(socket, registry.clone()),
            ));
        }
        for voter in config.voters.iter().filter(|v| v.id != config.node_id) {
            transport.add_peer(
                voter.id as crate::raft::NodeId,
                format!("{}:{}", voter.host, voter.port),
            );
        }
        let context = GroupContext {
            node: config.node_id as crate::raft::NodeId,
            transport: transport.clone(),
            registry: registry.clone(),
            timers: GroupTimers::partitions(),
            runtime: tokio::runtime::Handle::current(),
            shutdown: shutdown.clone(),
        };
        let following = shutdown.clone();
        let metadata = ClusterMetadata::start(&config, transport, registry, shutdown).await?;
        let opened = tokio::task::spawn_blocking(move || {
            Broker::open(config, config_sources, dir_lock, metadata, context)
        })
        .await??;
        let broker = Arc::new(opened);
        broker
            .groups
            .clone()
            .follow_leadership(broker.clone(), following)
            .await;
        Ok(Started {
            broker,
            peer_server,
        })
    }

    /// Opens and recovers every partition this node hosts. Blocking.
    fn open(
        config: Arc<BrokerConfig>,
        config_sources: ConfigSources,
        dir_lock: LogDirLock,
        metadata: ClusterMetadata,
        context: GroupContext,
    ) -> anyhow::Result<Broker> {
        let replicas = ReplicaManager::new(&config, context);
        let producer_ids = ProducerIdManager::new();
        let groups = Arc::new(GroupCoordinator::new(&config));
        let broker = Broker {
            auto_create_rate: AutoCreateRate::new(config.auto_create_topics_max_per_second),
            config,
            config_sources,
            metadata,
            replicas,
            producer_ids,
            groups,
            _dir_lock: dir_lock,
        };
        broker.check_stored_state()?;
        let mut deferred = 0usize;
        for topic in broker.metadata.topics() {
            let log_config = broker.log_config(&topic);
            for partition in broker.hosted_partitions(&topic, 0) {
                // A partition that cannot be opened (descriptors, a bad
                // disk) is offline, not fatal: it is retried in the
                // background and the others serve meanwhile.
                let opened = broker.replicas.open_partition_or_defer(
                    TopicPartition::new(&topic.name, partition),
                    topic.id,
                    log_config.clone(),
                    broker.voters(&topic, partition),
                );
                if matches!(opened, Opened::Deferred(_)) {
                    deferred += 1;
                }
            }
        }
        broker
            .replicas
            .loading_done()
            .map_err(|e| anyhow::anyhow!("removing the clean-shutdown marker: {e}"))?;
        if deferred > 0 {
            tracing::warn!(
                deferred,
                "some partitions could not be opened at startup; they are offline and retried"
            );
        }
        broker.ensure_offsets_topic()?;
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
        // offsets.topic.replication.factor over the brokers alive now: the
        // first node up waits a moment for the others, then takes what it
        // has (Kafka instead creates the topic on the first FindCoordinator).
        let wanted = self.config.offsets_topic_replication_factor.max(1);
        let deadline = std::time::Instant::now() + OFFSETS_TOPIC_BROKERS_WAIT;
        let mut alive = self.metadata.alive_brokers().len();
        while alive < wanted as usize && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
            self.metadata.connect_registered();
            alive = self.metadata.alive_brokers().len();
        }
        let replication_factor = wanted.min(alive.max(1) as i16);
        if replication_factor < wanted {
            tracing::warn!(
                wanted,
                replication_factor,
                "creating {OFFSETS_TOPIC} with fewer replicas than offsets.topic.replication.factor: not enough brokers are up"
            );
        }
        match self.create_topic_as(
            OFFSETS_TOPIC,
            self.config.offsets_topic_num_partitions,
            replication_factor,
            configs,
            true,
        ) {
            // Another node created it first.
            Ok(_) | Err((ResponseError::TopicAlreadyExists, _)) => Ok(()),
            Err((code, message)) => Err(anyhow::anyhow!(
                "creating {OFFSETS_TOPIC}: {code:?} {message}"
            )),
        }
    }

    /// Startup checks of what is stored, before any partition is opened:
    /// stray partition directories are moved aside, and stored dynamic
    /// broker configs that today's rules reject are reported (and ignored).
    fn check_stored_state(&self) -> anyhow::Result<()> {
        partition_dirs::move_stray_partition_dirs(&self.config.log_dirs, &self.metadata.topics())
            .map_err(|e| {
            anyhow::anyhow!(
                "scanning {} for stray partitions: {e}",
                self.config.log_dirs.display()
            )
        })?;
        for resource in [CLUSTER_DEFAULT.to_string(), self.config.node_id.to_string()] {
            for (key, value, why) in
                broker_config::rejected(&self.metadata.broker_configs(&resource))
            {
                tracing::warn!(
                    resource,
                    key,
                    value,
                    why,
                    "ignoring stored dynamic broker config"
                );
            }
        }
        Ok(())
    }

    /// This node's broker properties, static and dynamic.
    pub fn layers(&self) -> BrokerLayers {
        BrokerLayers::new(
            &self.config_sources,
            &self.metadata.broker_configs(CLUSTER_DEFAULT),
            &self
                .metadata
                .broker_configs(&self.config.node_id.to_string()),
        )
    }

    /// A topic's effective log settings.
    pub fn log_config(&self, topic: &TopicMeta) -> LogConfig {
        TopicConfigs::log_config(&self.layers(), &topic.name, &topic.configs)
    }

    /// Creates a topic and its partitions' logs, all or nothing: the topic is
    /// registered only after every partition's log exists; on any failure
    /// the logs just created are deleted and nothing is registered. Blocking.
    pub fn create_topic(
        &self,
        name: &str,
        partitions: i32,
        replication_factor: i16,
        configs: BTreeMap<String, String>,
    ) -> Result<TopicMeta, KafkaError> {
        self.create_topic_as(name, partitions, replication_factor, configs, false)
    }

    fn create_topic_as(
        &self,
        name: &str,
        partitions: i32,
        replication_factor: i16,
        configs: BTreeMap<String, String>,
        internal: bool,
    ) -> Result<TopicMeta, KafkaError> {
        let _changes = self.metadata.lock_changes();
        self.check_new_topic(name, partitions, &configs)?;
        let topic = TopicMeta {
            name: name.to_string(),
            id: uuid::Uuid::new_v4(),
            partitions,
            configs,
            internal,
            replicas: self.place(0, partitions, replication_factor, random_start())?,
        };
        self.create_logs(&topic, 0)?;
        if let Err(e) = self.metadata.register_topic(topic.clone()) {
            self.remove_logs(&topic, 0);
            return Err(e);
        }
        self.await_leaders(&topic, 0);
        tracing::info!(
            topic = name,
            partitions,
            replication_factor,
            "created topic"
        );
        Ok(topic)
    }

    /// Waits (at most [`NEW_PARTITION_LEADER_WAIT`] in all) until the new
    /// partitions `from..` hosted here know a leader, so that a client's
    /// first produce after CreateTopics finds one, as it does on Kafka.
    /// Partitions still without one get LEADER_NOT_AVAILABLE in Metadata
    /// and the client retries. Blocking.
    fn await_leaders(&self, topic: &TopicMeta, from: i32) {
        let groups: Vec<_> = self
            .hosted_partitions(topic, from)
            .into_iter()
            .filter_map(|p| self.replicas.get(&topic.name, p)?.group())
            .collect();
        let waits = futures::future::join_all(
            groups
                .iter()
                .map(|g| g.wait_leader(NEW_PARTITION_LEADER_WAIT)),
        );
        let _ = self
            .metadata
            .runtime()
            .block_on(tokio::time::timeout(NEW_PARTITION_LEADER_WAIT, waits));
    }

    /// Replica lists for partitions `first..first + count` over the alive
    /// brokers (rack-aware), from ring position `start`.
    pub fn place(
        &self,
        first: i32,
        count: i32,
        replication_factor: i16,
        start: usize,
    ) -> Result<Vec<Vec<i32>>, KafkaError> {
        let candidates: Vec<Candidate> = self
            .metadata
            .alive_brokers()
            .into_iter()
            .map(|b| Candidate {
                id: b.id,
                rack: b.rack,
            })
            .collect();
        placement::assign(&candidates, first, count, replication_factor, start)
    }

    /// Why a request for a partition this node has not open fails: its log
    /// is not open yet (KAFKA_STORAGE_ERROR, retried in the background),
    /// another node holds it (NOT_LEADER_OR_FOLLOWER), or it does not exist.
    pub fn missing_partition_error(&self, topic: &str, partition: i32) -> ResponseError {
        if self.replicas.is_offline(topic, partition) {
            ResponseError::KafkaStorageError
        } else if self
            .metadata
            .replicas(topic, partition)
            .is_some_and(|(_, r)| !r.is_empty())
        {
            ResponseError::NotLeaderOrFollower
        } else {
            ResponseError::UnknownTopicOrPartition
        }
    }

    /// The voters of one partition's Raft group: its replicas.
    fn voters(&self, topic: &TopicMeta, partition: i32) -> Voters {
        let replicas = topic.replicas_of(partition);
        Voters::new(replicas, self.metadata.group_voters(replicas))
    }

    /// The partitions of `topic` from `from` on that have a replica here.
    fn hosted_partitions(&self, topic: &TopicMeta, from: i32) -> Vec<i32> {
        let me = self.config.node_id;
        (from.max(0)..topic.partitions)
            .filter(|&p| topic.replicas_of(p).contains(&me))
            .collect()
    }

    /// Everything CreateTopics checks before it touches the disk.
    pub fn check_new_topic(
        &self,
        name: &str,
        partitions: i32,
        configs: &BTreeMap<String, String>,
    ) -> Result<(), KafkaError> {
        self.metadata.validate_new_topic(name, partitions)?;
        TopicConfigs::validate_all(configs)?;
        self.check_partition_budget(i64::from(partitions))
    }

    /// `max.broker.partitions`: refuses `adding` more partitions when the
    /// broker would then host more than the limit.
    pub fn check_partition_budget(&self, adding: i64) -> Result<(), KafkaError> {
        let hosted = self.metadata.replicas_hosted();
        let limit = self.config.max_broker_partitions;
        if hosted + adding > limit {
            return Err((
                ResponseError::PolicyViolation,
                format!("Cannot add {adding} partitions: this broker hosts {hosted} and max.broker.partitions is {limit}."),
            ));
        }
        Ok(())
    }

    /// Creates the logs of partitions `from..` of `topic`, each with its
    /// `partition.metadata`. On failure removes the ones it created.
    fn create_logs(&self, topic: &TopicMeta, from: i32) -> Result<(), KafkaError> {
        let log_config = self.log_config(topic);
        let hosted = self.hosted_partitions(topic, from);
        let create = |partition: i32| -> Result<(), String> {
            let tp = TopicPartition::new(&topic.name, partition);
            let dir = self.replicas.log_dir().join(tp.dir_name());
            move_aside_leftover(&dir)?;
            self.replicas
                .open_partition(
                    tp,
                    topic.id,
                    log_config.clone(),
                    self.voters(topic, partition),
                )
                .map_err(|e| e.to_string())?;
            partition_dirs::write_partition_metadata(&dir, topic.id).map_err(|e| e.to_string())
        };
        // Each new partition costs a few fsyncs (its files, its Raft vote):
        // several threads overlap them, so a wide topic is created in
        // seconds, not one fsync after another.
        let chunk = hosted.len().div_ceil(CREATE_THREADS).max(1);
        let failed: Option<(i32, String)> = std::thread::scope(|scope| {
            let workers: Vec<_> = hosted
                .chunks(chunk)
                .map(|partitions| {
                    scope.spawn(|| {
                        partitions
                            .iter()
                            .find_map(|&p| create(p).err().map(|e| (p, e)))
                    })
                })
                .collect();
            workers
                .into_iter()
                .filter_map(|w| {
                    w.join()
                        .unwrap_or_else(|_| Some((-1, "a creating thread panicked".to_string())))
                })
                .next()
        });
        if let Some((partition, e)) = failed {
            tracing::error!(topic = %topic.name, partition, error = %e, "creating a partition failed; undoing the creation");
            self.remove_logs(topic, from);
            return Err((
                ResponseError::KafkaStorageError,
                format!(
                    "Cannot create partition {}-{partition}: {e}. Nothing was created.",
                    topic.name
                ),
            ));
        }
        Ok(())
    }

    /// Deletes the logs of partitions `from..` of `topic` (undo of [`create_logs`]).
    fn remove_logs(&self, topic: &TopicMeta, from: i32) {
        for partition in self.hosted_partitions(topic, from) {
            if let Err(e) = self
                .replicas
                .delete_partition(&TopicPartition::new(&topic.name, partition))
            {
                tracing::error!(topic = %topic.name, partition, error = %e, "removing a partition's log failed");
            }
        }
    }

    /// Deletes a topic and its data. The metadata goes first: a crash before
    /// the data is gone leaves stray directories, which the next start moves
    /// aside. Blocking.
    pub fn delete_topic(&self, name: &str) -> Result<TopicMeta, KafkaError> {
        let _changes = self.metadata.lock_changes();
        let topic = self.metadata.delete_topic(name)?;
        for partition in self.hosted_partitions(&topic, 0) {
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

    /// Everything CreatePartitions checks before it touches the disk;
    /// returns the topic as it is now.
    pub fn check_add_partitions(&self, name: &str, count: i32) -> Result<TopicMeta, KafkaError> {
        let before = self.metadata.topic(name).ok_or((
            ResponseError::UnknownTopicOrPartition,
            format!("The topic '{name}' does not exist."),
        ))?;
        if before.internal {
            // Groups are placed by hash % partition count: growing the
            // offsets topic would move every group's coordinator partition.
            return Err((
                ResponseError::InvalidTopicException,
                format!("Cannot add partitions to internal topic {name}: its partition count is offsets.topic.num.partitions."),
            ));
        }
        if count <= before.partitions {
            return Err((
                ResponseError::InvalidPartitions,
                format!(
                    "Topic currently has {} partitions, which is higher than the requested {count}.",
                    before.partitions
                ),
            ));
        }
        if count > TOPIC_PARTITIONS_MAX {
            return Err((
                ResponseError::InvalidPartitions,
                format!("Number of partitions must be at most {TOPIC_PARTITIONS_MAX}."),
            ));
        }
        self.check_partition_budget(i64::from(count - before.partitions))?;
        Ok(before)
    }

    /// Grows a topic to `count` partitions, all or nothing (like
    /// [`Broker::create_topic`]). Blocking.
    pub fn add_partitions(&self, name: &str, count: i32) -> Result<TopicMeta, KafkaError> {
        let _changes = self.metadata.lock_changes();
        let before = self.check_add_partitions(name, count)?;
        // New partitions keep going round the ring where the topic's
        // first partitions started.
        let start = before
            .replicas
            .first()
            .and_then(|r| r.first())
            .map_or(0, |&id| id as usize);
        let added = self.place(
            before.partitions,
            count - before.partitions,
            before.replicas.first().map_or(1, |r| r.len() as i16),
            start,
        )?;
        let mut grown = TopicMeta {
            partitions: count,
            ..before.clone()
        };
        grown.replicas.extend(added.iter().cloned());
        self.create_logs(&grown, before.partitions)?;
        match self.metadata.add_partitions(name, before.partitions, added) {
            Ok(topic) => {
                self.await_leaders(&topic, before.partitions);
                Ok(topic)
            }
            Err(e) => {
                self.remove_logs(&grown, before.partitions);
                Err(e)
            }
        }
    }

    /// Whether `next` may replace `topic`'s configs: valid, and for an
    /// internal topic nothing that would break it.
    pub fn check_topic_configs(
        &self,
        topic: &TopicMeta,
        next: &BTreeMap<String, String>,
    ) -> Result<(), KafkaError> {
        TopicConfigs::validate_all(next)?;
        if topic.internal {
            // The coordinator relies on compaction semantics and on writing
            // its records whole; refuse what could break either.
            for (key, why) in [
                ("cleanup.policy", "it must stay compact"),
                (
                    "max.message.bytes",
                    "the group coordinator's records must always fit",
                ),
            ] {
                if topic.configs.get(key) != next.get(key) {
                    return Err((
                        ResponseError::InvalidConfig,
                        format!(
                            "Cannot change {key} of internal topic {}: {why}.",
                            topic.name
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Replaces a topic's configs and applies them to its open logs. Blocking.
    pub fn set_topic_configs(
        &self,
        name: &str,
        configs: BTreeMap<String, String>,
    ) -> Result<TopicMeta, KafkaError> {
        let _changes = self.metadata.lock_changes();
        let before = self.metadata.topic(name).ok_or((
            ResponseError::UnknownTopicOrPartition,
            format!("Topic '{name}' does not exist."),
        ))?;
        self.check_topic_configs(&before, &configs)?;
        let topic = self.metadata.set_topic_configs(name, configs)?;
        self.apply_log_config(&topic);
        Ok(topic)
    }

    /// Replaces the dynamic broker configs of one AlterConfigs resource name
    /// (`""` or this node's id; validated by the caller), persists them and
    /// applies them live to every open partition. Blocking.
    pub fn set_broker_configs(
        &self,
        resource_name: &str,
        configs: BTreeMap<String, String>,
    ) -> Result<(), KafkaError> {
        let _changes = self.metadata.lock_changes();
        self.metadata.set_broker_configs(resource_name, configs)?;
        for topic in self.metadata.topics() {
            self.apply_log_config(&topic);
        }
        Ok(())
    }

    fn apply_log_config(&self, topic: &TopicMeta) {
        let log_config = self.log_config(topic);
        for partition in self.hosted_partitions(topic, 0) {
            if let Some(p) = self.replicas.get(&topic.name, partition) {
                p.set_config(log_config.clone());
            }
        }
    }

    /// Brings this node's logs in line with the applied metadata, after
    /// changes another node made: opens the partitions assigned here that
    /// are not open, deletes those whose topic is gone (or was created
    /// again under the same name), and applies every topic's configs.
    /// Blocking.
    pub fn reconcile(&self) {
        self.metadata.connect_registered();
        let _changes = self.metadata.lock_changes();
        let topics = self.metadata.topics();
        // Deletions first: a topic deleted and created again under the same
        // name gets its new partition opened below, in the same pass.
        let by_name: BTreeMap<&str, &TopicMeta> =
            topics.iter().map(|t| (t.name.as_str(), t)).collect();
        let me = self.config.node_id;
        for open in self.replicas.all() {
            let keep = by_name.get(open.tp.topic.as_str()).is_some_and(|t| {
                t.id == open.topic_id && t.replicas_of(open.tp.partition).contains(&me)
            });
            if !keep {
                match self.replicas.delete_partition(&open.tp) {
                    Ok(()) => {
                        tracing::info!(partition = %open.tp.dir_name(), "deleted a partition no longer assigned here")
                    }
                    Err(e) => {
                        tracing::error!(partition = %open.tp.dir_name(), error = %e, "deleting a partition failed")
                    }
                }
            }
        }
        for topic in &topics {
            let log_config = self.log_config(topic);
            for partition in self.hosted_partitions(topic, 0) {
                match self.replicas.get(&topic.name, partition) {
                    Some(open) => open.set_config(log_config.clone()),
                    None if self.replicas.is_offline(&topic.name, partition) => {}
                    None => {
                        let tp = TopicPartition::new(&topic.name, partition);
                        let dir = self.replicas.log_dir().join(tp.dir_name());
                        // Never adopt the data of an earlier topic of this name.
                        if matches!(partition_dirs::read_partition_metadata(&dir), Ok(Some(id)) if id != topic.id)
                        {
                            if let Err(e) = move_aside_leftover(&dir) {
                                tracing::error!(dir = %dir.display(), error = %e, "cannot move an old partition directory aside");
                                continue;
                            }
                        }
                        if let Opened::Online(_) = self.replicas.open_partition_or_defer(
                            tp,
                            topic.id,
                            log_config.clone(),
                            self.voters(topic, partition),
                        ) {
                            if let Err(e) = partition_dirs::write_partition_metadata(&dir, topic.id)
                            {
                                tracing::error!(dir = %dir.display(), error = %e, "writing partition.metadata failed");
                            }
                            tracing::info!(topic = %topic.name, partition, "opened a partition assigned here");
                        }
                    }
                }
            }
        }
    }

    /// Who leads one partition of `topic`, as this node knows it.
    pub fn partition_view(&self, topic: &TopicMeta, partition: i32) -> PartitionView {
        self.view_of(
            &topic.name,
            topic.id,
            partition,
            topic.replicas_of(partition).to_vec(),
        )
    }

    /// A partition's leader, epoch and ISR from what this node knows: its
    /// own replica's Raft group, and the peers' heartbeat reports of the
    /// groups they lead (`raft::leaders`); the later term wins, so a node
    /// without a replica names the leader too, and a replica that was cut
    /// off and still thinks it leads names the one elected meanwhile. Only
    /// a reachable node is named leader: while a leader's node is gone and
    /// no other has taken over, there is none (LEADER_NOT_AVAILABLE), and
    /// clients ask again.
    fn view_of(
        &self,
        topic: &str,
        topic_id: Uuid,
        partition: i32,
        replicas: Vec<i32>,
    ) -> PartitionView {
        let alive = |id: i32| self.metadata.is_alive(id);
        let reachable = |id: i32| self.metadata.is_reachable(id);
        let offline: Vec<i32> = replicas.iter().copied().filter(|&r| !alive(r)).collect();
        let group = crate::raft::GroupId::Partition {
            topic_id,
            partition,
        };
        let claim = self.metadata.claimed_leader(&group);
        let local = self
            .replicas
            .get(topic, partition)
            .filter(|_| replicas.contains(&self.config.node_id));
        let from_claim = |claim: crate::raft::leaders::Claim| {
            (
                Some(claim.node as i32),
                i32::try_from(claim.term).unwrap_or(i32::MAX),
                claim.in_sync.into_iter().map(|n| n as i32).collect(),
            )
        };
        let (leader, leader_epoch, isr) = match &local {
            Some(p) if p.is_offline() => (None, -1, Vec::new()),
            Some(p) => {
                let l = p.leadership();
                match claim {
                    Some(c) if c.term > l.term || (c.term == l.term && !l.is_me) => from_claim(c),
                    _ => {
                        let epoch = i32::try_from(l.term).unwrap_or(i32::MAX);
                        // A leader cut off from its followers names no one.
                        let leader = l.leader.map(|n| n as i32).filter(|&n| {
                            reachable(n)
                                && (!l.is_me || p.group().is_some_and(|g| g.reaches_majority()))
                        });
                        let isr = p
                            .group()
                            .and_then(|g| {
                                g.in_sync(
                                    Duration::from_millis(self.config.replica_lag_time_max_ms),
                                    |n| reachable(n as i32),
                                )
                            })
                            .map(|isr| isr.into_iter().map(|n| n as i32).collect())
                            .unwrap_or_else(|| {
                                replicas.iter().copied().filter(|&r| alive(r)).collect()
                            });
                        (leader, epoch, isr)
                    }
                }
            }
            None => match claim {
                Some(c) => from_claim(c),
                // No report names a leader (yet).
                None => {
                    let isr = replicas.iter().copied().filter(|&r| alive(r)).collect();
                    (None, 0, isr)
                }
            },
        };
        PartitionView {
            leader,
            leader_epoch,
            replicas,
            isr,
            offline,
        }
    }

    /// The node that coordinates `group_id`: the leader of its
    /// `__consumer_offsets` partition, if it has one now.
    pub fn coordinator_of(&self, group_id: &str) -> Option<i32> {
        // On every group request: read one replica list, not the topic.
        let partition = self.groups.partition_of(group_id);
        let (topic_id, replicas) = self.metadata.replicas(OFFSETS_TOPIC, partition)?;
        self.view_of(OFFSETS_TOPIC, topic_id, partition, replicas)
            .leader
    }

    /// The advertised address of this node (first advertised listener).
    pub fn advertised(&self) -> (&str, i32) {
        let l = &self.config.advertised_listeners[0];
        (l.host.as_str(), i32::from(l.port))
    }
}

/// Raises the soft descriptor limit to the hard one and sizes the segment
/// descriptor cache from it (or from `log.open.files.max`).
fn size_descriptor_cache(config: &BrokerConfig) {
    let limit = match file_cache::raise_descriptor_limit() {
        Ok((before, now, hard)) => {
            if now > before {
                tracing::info!(before, now, hard, "raised the soft RLIMIT_NOFILE");
            }
            now
        }
        Err(error) => {
            tracing::warn!(%error, "cannot read or raise RLIMIT_NOFILE; assuming 1024");
            1024
        }
    };
    let capacity = file_cache::capacity_for_limit(
        limit,
        config.max_connections,
        config.resources.log_open_files_max,
    );
    file_cache::set_capacity(capacity);
    tracing::info!(
        rlimit_nofile = limit,
        max_connections = config.max_connections,
        segment_files_open_max = capacity,
        "segment file descriptor cache sized"
    );
}

/// A random ring position for a new topic's first replica.
fn random_start() -> usize {
    (uuid::Uuid::new_v4().as_u128() % (usize::MAX as u128)) as usize
}

/// A directory already at a new partition's path holds nobody's data (its
/// topic is not registered): move it aside rather than adopt its records.
/// Anything else at that path is refused: it is not ours to move.
fn move_aside_leftover(dir: &std::path::Path) -> Result<(), String> {
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("cannot inspect {}: {e}", dir.display())),
        Ok(m) if !m.is_dir() => {
            return Err(format!("{} exists and is not a directory", dir.display()))
        }
        Ok(_) => {}
    }
    let aside = dir.with_file_name(format!(
        "{}.{}{STRAY_SUFFIX}",
        dir.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("partition"),
        uuid::Uuid::new_v4().simple()
    ));
    tracing::warn!(dir = %dir.display(), moved_to = %aside.display(), "leftover directory at a new partition's path moved aside");
    std::fs::rename(dir, &aside).map_err(|e| format!("cannot move {} aside: {e}", dir.display()))
}

/// Runs a broker until `stop` fires, then (`controlled.shutdown.enable`)
/// hands its leaderships to other replicas while still serving clients,
/// and closes every log cleanly.
pub async fn run(
    config_sources: ConfigSources,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    // Everything below stops on `shutdown`, which fires only once the
    // leaderships moved: clients keep getting answers (NOT_LEADER_OR_FOLLOWER,
    // then Metadata naming the new leaders) meanwhile.
    let (stopping, shutdown) = watch::channel(false);
    // A stop while starting (waiting for the quorum, say) ends the start.
    let started = tokio::select! {
        started = Broker::start(config_sources, shutdown.clone()) => started?,
        _ = stop.wait_for(|stop| *stop) => {
            let _ = stopping.send(true);
            tracing::info!("stopped while starting");
            return Ok(());
        }
    };
    let Started {
        broker,
        peer_server,
    } = started;
    let config = broker.config.clone();
    tracing::info!(
        node_id = config.node_id,
        cluster_id = broker.metadata.cluster_id(),
        log_dirs = %config.log_dirs.display(),
        partitions = broker.replicas.all().len(),
        "broker recovered"
    );

    let apis = Arc::new(KafkaApis::new(broker.clone()));
    let budget = crate::network::RequestBudget::new(config.resources.queued_max_request_bytes);
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
            budget.clone(),
            shutdown.clone(),
        )));
    }

    let background = tokio::spawn(background_tasks(broker.clone(), shutdown.clone()));
    let reconciling = tokio::spawn(reconcile_on_change(broker.clone(), shutdown.clone()));
    let electing = {
        let b = broker.clone();
        let stop = shutdown.clone();
        let lag_max = Duration::from_millis(config.replica_lag_time_max_ms);
        tokio::spawn(async move { b.replicas.drive_elections(lag_max, stop).await })
    };
    let rebalancing = config
        .auto_leader_rebalance_enable
        .then(|| tokio::spawn(rebalance_leaders(broker.clone(), shutdown.clone())));
    let group_timers = tokio::spawn(
        broker
            .groups
            .clone()
            .run_timers(broker.clone(), shutdown.clone()),
    );
    let _ = stop.wait_for(|stop| *stop).await;
    if config.controlled_shutdown_enable {
        controlled_shutdown(&broker).await;
    }
    let _ = stopping.send(true);
    tracing::info!("shutting down");
    for server in servers {
        let _ = server.await;
    }
    background.abort();
    group_timers.abort();
    reconciling.abort();
    electing.abort();
    if let Some(task) = rebalancing {
        task.abort();
    }
    if let Some(server) = peer_server {
        let _ = server.await;
    }
    broker.metadata.stop().await;
    let closing = broker.clone();
    tokio::task::spawn_blocking(move || closing.replicas.shutdown()).await?;
    tracing::info!("shutdown complete");
    Ok(())
}

/// How long handing one partition back to its preferred leader may pause
/// its writes before the hand-over is given up (tried again at the next
/// check).
const PREFERRED_HAND_OVER_WAIT: Duration = Duration::from_secs(2);

/// How long a controlled shutdown waits for the leaderships to move before
/// the node stops anyway (the partitions left then elect by timeout).
const CONTROLLED_SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

/// Kafka's controlled shutdown: every partition this node leads, and the
/// metadata group if it leads that, moves to a caught-up replica.
async fn controlled_shutdown(broker: &Broker) {
    let started = std::time::Instant::now();
    broker.replicas.set_leaving();
    let (partitions, metadata) = tokio::join!(
        broker.replicas.resign_all(CONTROLLED_SHUTDOWN_WAIT),
        broker.metadata.resign(CONTROLLED_SHUTDOWN_WAIT),
    );
    let (moved, failed) = partitions;
    tracing::info!(
        partitions_moved = moved,
        partitions_not_moved = failed,
        metadata = ?metadata,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "controlled shutdown: leaderships handed over"
    );
}

/// Reconciles this node's logs with the metadata each time it applies a
/// change ([`Broker::reconcile`]).
async fn reconcile_on_change(broker: Arc<Broker>, mut shutdown: watch::Receiver<bool>) {
    let mut applied = broker.metadata.applied();
    let mut seen = None;
    loop {
        tokio::select! {
            changed = applied.changed_from(seen) => match changed {
                Some(now) => seen = now,
                None => return,
            },
            _ = shutdown.changed() => return,
        }
        let b = broker.clone();
        let _ = tokio::task::spawn_blocking(move || b.reconcile()).await;
    }
}

/// Periodic flush (`log.flush.interval.ms`), retention
/// (`log.retention.check.interval.ms`) and reopening of offline partitions,
/// each on a blocking thread.
async fn background_tasks(broker: Arc<Broker>, mut shutdown: watch::Receiver<bool>) {
    let config = broker.config.clone();
    let mut flush =
        tokio::time::interval(Duration::from_millis(config.log_flush_interval_ms.max(1)));
    let mut retention = tokio::time::interval(Duration::from_millis(
        config.log_retention_check_interval_ms.max(1),
    ));
    let mut reopen = tokio::time::interval(REOPEN_CHECK_INTERVAL);
    reopen.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
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
            _ = reopen.tick() => {
                let b = broker.clone();
                let _ = tokio::task::spawn_blocking(move || b.replicas.retry_offline()).await;
            }
            _ = retention.tick() => {
                let b = broker.clone();
                let _ = tokio::task::spawn_blocking(move || b.replicas.enforce_retention_all(now_ms())).await;
            }
            _ = shutdown.changed() => return,
        }
    }
}

/// Kafka's auto leader rebalance (`auto.leader.rebalance.enable`): every
/// `leader.imbalance.check.interval.seconds`, the partitions this node leads
/// go back to their preferred leaders where those are in sync.
async fn rebalance_leaders(broker: Arc<Broker>, mut shutdown: watch::Receiver<bool>) {
    let config = broker.config.clone();
    let every = Duration::from_secs(config.leader_imbalance_check_interval_seconds.max(1));
    let mut check = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = check.tick() => {}
            _ = shutdown.changed() => return,
        }
        let moved = broker
            .replicas
            .restore_preferred_leaders(
                Duration::from_millis(config.replica_lag_time_max_ms),
                PREFERRED_HAND_OVER_WAIT,
            )
            .await;
        if moved > 0 {
            tracing::info!(
                partitions = moved,
                "handed partitions back to their preferred leaders"
            );
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
