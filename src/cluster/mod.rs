//! Cluster metadata: the cluster id, the brokers, and every topic's id,
//! partitions, replica assignment and configs.
//!
//! The metadata lives in one Raft group over the voters (Kafka's controller
//! quorum, `log.dirs/__cluster_metadata-0/`). Every node applies it and
//! answers reads from its applied copy; a change is proposed to the group
//! (forwarded to its leader, as Kafka forwards admin requests to the active
//! controller) and returns once committed and applied on this node, so the
//! node that made a change reads it back at once. A single node is a group
//! of one voter on the same path.

pub mod auto_create;
pub mod broker_config;
pub mod partition_dirs;
pub mod placement;
pub mod state;
pub mod topic_config;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use kafka_protocol::error::ResponseError;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use uuid::Uuid;

pub use broker_config::BrokerLayers;
pub use state::{BrokerRegistration, MetadataCommand, MetadataResponse, MetadataState};
pub use topic_config::TopicConfigs;

use crate::config::BrokerConfig;
use crate::raft::group::{AppliedWatch, EntryGroup, GroupTimers};
use crate::raft::network::Registry;
use crate::raft::transfer::Resignation;
use crate::raft::transport::Transport;
use crate::raft::types::BasicNode;
use crate::raft::{GroupId, NodeId};

crate::entry_group_types!(pub MetadataTypes, MetadataCommand, MetadataResponse);

/// Most partitions a topic may have (Kafka's own practical limit is far
/// lower per broker; this bounds memory spent on one bad request).
pub const TOPIC_PARTITIONS_MAX: i32 = 10_000;
/// Kafka's limit on a topic name's length.
pub const TOPIC_NAME_BYTES_MAX: usize = 249;
/// The metadata group's directory under `log.dirs` (Kafka's name for its
/// metadata log).
pub const METADATA_DIR: &str = "__cluster_metadata-0";
/// Where a single-node data directory from before the metadata group kept
/// its metadata; imported once, then renamed with `.migrated`.
const LEGACY_METADATA_FILE: &str = "fjord-metadata.json";
/// Where the producer-id block end was kept before the metadata group.
const LEGACY_PRODUCER_ID_FILE: &str = "producer-id-block";
/// How long one metadata change may take to commit and apply here before
/// the request fails with REQUEST_TIMED_OUT.
const CHANGE_WAIT_MAX: Duration = Duration::from_secs(15);
/// How long Metadata keeps listing a broker after it was last heard:
/// Kafka's `broker.session.timeout.ms` default (see
/// [`ClusterMetadata::listed_brokers`]).
const LISTED_AFTER_LAST_HEARD: Duration = Duration::from_secs(9);
/// While a node waits for the metadata quorum at startup, it tries (and
/// says it is waiting) this often.
const JOIN_ATTEMPT_WAIT: Duration = Duration::from_secs(2);

/// One topic as the cluster knows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TopicMeta {
    pub name: String,
    pub id: Uuid,
    pub partitions: i32,
    /// Only the configs set on this topic; defaults come from the broker.
    pub configs: BTreeMap<String, String>,
    #[serde(default)]
    pub internal: bool,
    /// Each partition's replicas, its preferred leader first.
    #[serde(default)]
    pub replicas: Vec<Vec<i32>>,
}

impl TopicMeta {
    /// The replicas of one partition (empty for a partition it does not have).
    pub fn replicas_of(&self, partition: i32) -> &[i32] {
        usize::try_from(partition)
            .ok()
            .and_then(|p| self.replicas.get(p))
            .map_or(&[], Vec::as_slice)
    }
}

/// The single-node metadata document of earlier versions.
#[derive(Default, Deserialize)]
struct LegacyDocument {
    topics: BTreeMap<String, TopicMeta>,
    #[serde(default)]
    broker_configs: BTreeMap<String, BTreeMap<String, String>>,
}

/// This node's view of the cluster's metadata, and its way to change it.
pub struct ClusterMetadata {
    cluster_id: String,
    node_id: i32,
    group: EntryGroup<MetadataTypes, MetadataState>,
    transport: Arc<Transport>,
    runtime: tokio::runtime::Handle,
    /// Serialises admin changes made through this node (create, delete,
    /// grow, reconfigure), which do file I/O between their check and their
    /// commit; they are rare, and this keeps "check, create the logs,
    /// register" free of races with each other and with reconciliation.
    changes: parking_lot::Mutex<()>,
}

/// The cluster id in `log_dir/meta.properties`, if the node has joined a
/// cluster before; an error if the directory belongs to another node.
pub fn stored_cluster_id(log_dir: &Path, node_id: i32) -> anyhow::Result<Option<String>> {
    let meta_path = log_dir.join("meta.properties");
    let text = match std::fs::read_to_string(&meta_path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", meta_path.display())),
    };
    let mut id = None;
    for line in text.lines() {
        if let Some((k, v)) = line.split_once('=') {
            if k.trim() == "cluster.id" {
                id = Some(v.trim().to_string());
            }
            if k.trim() == "node.id" && v.trim() != node_id.to_string() {
                anyhow::bail!(
                    "{} belongs to node {}, but this is node {node_id}",
                    log_dir.display(),
                    v.trim()
                );
            }
        }
    }
    id.map(Some)
        .ok_or_else(|| anyhow::anyhow!("{} has no cluster.id", meta_path.display()))
}

impl ClusterMetadata {
    /// Starts this node's member of the metadata group and waits until it
    /// has joined the cluster: the group has a leader, the cluster has an
    /// id, and this node has applied the log up to its own bootstrap
    /// command. A fresh node adopts the cluster's id into
    /// `meta.properties`; a node whose stored id differs refuses to start.
    /// Also registers this broker. Waits for a quorum as long as it takes
    /// (voters may start at any time), unless `shutdown` fires.
    pub async fn start(
        config: &BrokerConfig,
        transport: Arc<Transport>,
        registry: Arc<Registry>,
        mut shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<ClusterMetadata> {
        let log_dir = &config.log_dirs;
        let stored = stored_cluster_id(log_dir, config.node_id)?;
        let voters: BTreeMap<NodeId, BasicNode> = config
            .voters
            .iter()
            .map(|v| {
                (
                    v.id as NodeId,
                    BasicNode::new(format!("{}:{}", v.host, v.port)),
                )
            })
            .collect();
        let group = EntryGroup::start(
            config.node_id as NodeId,
            GroupId::Metadata,
            voters,
            &log_dir.join(METADATA_DIR),
            &GroupTimers::default(),
            transport.clone(),
            registry,
            shutdown.clone(),
        )
        .await?;
        let (topics, broker_configs) = read_legacy_document(log_dir, config.node_id)?;
        let bootstrap = MetadataCommand::Bootstrap {
            cluster_id: stored.clone().unwrap_or_else(new_cluster_id),
            topics,
            broker_configs,
            next_producer_id: read_legacy_producer_id_end(log_dir)?,
        };
        let peers: Vec<NodeId> = config
            .voters
            .iter()
            .filter(|v| v.id != config.node_id)
            .map(|v| v.id as NodeId)
            .collect();
        // A broker that is not a voter asks the voters to replicate the
        // metadata to it (Kafka's broker-only node).
        let learner = if config.voters.iter().any(|v| v.id == config.node_id) {
            None
        } else {
            Some(controller_address(config)?)
        };
        let joined = tokio::select! {
            joined = async {
                if let Some(addr) = &learner {
                    let joining = group.join_as_learner(&peers, addr);
                    tokio::pin!(joining);
                    loop {
                        tokio::select! {
                            () = &mut joining => break,
                            _ = tokio::time::sleep(JOIN_ATTEMPT_WAIT) => {
                                if let Some(why) = refusal(&transport, &peers, config.voters.len()) {
                                    return Err(anyhow::anyhow!(why));
                                }
                            }
                        }
                    }
                }
                join(&group, &transport, &peers, config.voters.len(), bootstrap).await
            } => joined,
            _ = shutdown.wait_for(|stop| *stop) => Err(anyhow::anyhow!("shut down while waiting for the metadata quorum")),
        };
        let cluster_id = match joined {
            Ok(id) => id,
            Err(e) => {
                group.stop().await;
                return Err(e);
            }
        };
        match &stored {
            Some(ours) if *ours != cluster_id => {
                group.stop().await;
                anyhow::bail!(
                    "{} holds the data of cluster {ours}, but the voters in controller.quorum.voters form cluster {cluster_id}; \
                     refusing to start (point log.dirs at this cluster's data, or at an empty directory to join it afresh)",
                    log_dir.display()
                );
            }
            Some(_) => {}
            None => write_atomically(
                &log_dir.join("meta.properties"),
                format!(
                    "version=1\ncluster.id={cluster_id}\nnode.id={}\n",
                    config.node_id
                )
                .as_bytes(),
            )
            .with_context(|| format!("writing {}/meta.properties", log_dir.display()))?,
        }
        transport.adopt_cluster_id(&cluster_id);
        let legacy = log_dir.join(LEGACY_METADATA_FILE);
        if legacy.exists() {
            let migrated = log_dir.join(format!("{LEGACY_METADATA_FILE}.migrated"));
            std::fs::rename(&legacy, &migrated)
                .with_context(|| format!("renaming {}", legacy.display()))?;
            tracing::info!(from = %legacy.display(), "single-node metadata moved into the metadata group");
        }
        let metadata = ClusterMetadata {
            cluster_id,
            node_id: config.node_id,
            group,
            transport,
            runtime: tokio::runtime::Handle::current(),
            changes: parking_lot::Mutex::new(()),
        };
        let (host, port) = config
            .advertised_listeners
            .first()
            .map(|l| (l.host.clone(), i32::from(l.port)))
            .ok_or_else(|| anyhow::anyhow!("no advertised listener"))?;
        let registration = BrokerRegistration {
            id: config.node_id,
            host,
            port,
            rack: config.rack.clone(),
            controller: config
                .controller_listener
                .as_ref()
                .map(|_| controller_address(config))
                .transpose()?,
        };
        if metadata.read(|s| s.brokers.get(&config.node_id).cloned()) != Some(registration.clone())
        {
            metadata
                .propose_async(MetadataCommand::RegisterBroker(registration))
                .await
                .map_err(|(code, why)| {
                    anyhow::anyhow!("registering this broker: {code:?} {why}")
                })?;
        }
        Ok(metadata)
    }

    /// Hands the metadata leadership (Kafka's active controller) to another
    /// voter if this node holds it, within `wait`.
    pub async fn resign(&self, wait: Duration) -> Resignation {
        self.group.resign(wait).await
    }

    /// Stops this node's member of the metadata group.
    pub async fn stop(&self) {
        self.group.stop().await;
    }

    fn read<T>(&self, f: impl FnOnce(&MetadataState) -> T) -> T {
        self.group.machine.with_state(f)
    }

    /// Commits `command` and waits until this node has applied it.
    async fn propose_async(
        &self,
        command: MetadataCommand,
    ) -> Result<MetadataResponse, KafkaError> {
        let timed_out = |e: anyhow::Error| {
            (
                ResponseError::RequestTimedOut,
                format!("The metadata change was not committed: {e:#}"),
            )
        };
        let (index, response) = tokio::time::timeout(CHANGE_WAIT_MAX, self.group.propose(command))
            .await
            .map_err(|_| timed_out(anyhow::anyhow!("no answer within {CHANGE_WAIT_MAX:?}")))?
            .map_err(timed_out)?;
        self.group
            .wait_applied(index, CHANGE_WAIT_MAX)
            .await
            .map_err(timed_out)?;
        match response {
            MetadataResponse::Refused(code, message) => Err((
                ResponseError::try_from_code(code).unwrap_or(ResponseError::UnknownServerError),
                message,
            )),
            other => Ok(other),
        }
    }

    /// [`Self::propose_async`] for blocking callers (never on an async worker).
    fn propose(&self, command: MetadataCommand) -> Result<MetadataResponse, KafkaError> {
        self.runtime.block_on(self.propose_async(command))
    }

    fn propose_topic(&self, command: MetadataCommand) -> Result<TopicMeta, KafkaError> {
        match self.propose(command)? {
            MetadataResponse::Topic(meta) => Ok(meta),
            other => Err((
                ResponseError::UnknownServerError,
                format!("unexpected metadata answer {other:?}"),
            )),
        }
    }

    /// Holds off other admin changes while the guard lives (see `changes`).
    pub fn lock_changes(&self) -> parking_lot::MutexGuard<'_, ()> {
        self.changes.lock()
    }

    /// Watches the metadata this node has applied, for reconciliation.
    pub fn applied(&self) -> AppliedWatch {
        self.group.applied()
    }

    /// The dynamic broker configs stored under an AlterConfigs resource name.
    pub fn broker_configs(&self, resource_name: &str) -> BTreeMap<String, String> {
        self.read(|s| s.broker_configs.get(resource_name).cloned())
            .unwrap_or_default()
    }

    /// Replaces the dynamic broker configs of one resource name (validated
    /// by the caller) and commits the change. Blocking.
    pub fn set_broker_configs(
        &self,
        resource_name: &str,
        configs: BTreeMap<String, String>,
    ) -> Result<(), KafkaError> {
        self.propose(MetadataCommand::SetBrokerConfigs {
            resource: resource_name.to_string(),
            configs,
        })
        .map(|_| ())
    }

    /// Partitions of every topic, the figure `max.broker.partitions` caps.
    pub fn partition_count_total(&self) -> i64 {
        self.read(|s| s.topics.values().map(|t| i64::from(t.partitions)).sum())
    }

    /// Replicas this node hosts, over every topic.
    pub fn replicas_hosted(&self) -> i64 {
        let me = self.node_id;
        self.read(|s| {
            s.topics
                .values()
                .flat_map(|t| t.replicas.iter())
                .filter(|r| r.contains(&me))
                .count() as i64
        })
    }

    /// Kafka's collision rule: `.` and `_` are the same in metric names, so
    /// `a.b` and `a_b` cannot both exist.
    pub fn colliding_topic(&self, name: &str) -> Option<String> {
        self.read(|s| state::colliding_topic(&s.topics, name).map(str::to_string))
    }

    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    /// The controller: the metadata group's leader, -1 while there is none.
    pub fn controller_id(&self) -> i32 {
        self.group.leader().map_or(-1, |l| l as i32)
    }

    /// Keeps a connection to every registered broker, so that every node
    /// knows which brokers are alive (voters are connected from the start;
    /// brokers that joined later are added here).
    pub fn connect_registered(&self) {
        let brokers: Vec<BrokerRegistration> = self.read(|s| s.brokers.values().cloned().collect());
        for b in brokers {
            if let Some(addr) = b.controller.filter(|_| b.id != self.node_id) {
                self.transport.add_peer(b.id as NodeId, addr);
            }
        }
    }

    /// Makes a broker that joined as a learner a voter of the metadata
    /// group (Kafka's AddRaftVoter), without restarting anyone.
    pub async fn add_voter(&self, broker: i32) -> Result<(), KafkaError> {
        if !self.read(|s| s.brokers.contains_key(&broker)) {
            return Err((
                ResponseError::InvalidRequest,
                format!(
                    "Broker {broker} is not registered: start it (as a broker-only node) first."
                ),
            ));
        }
        tokio::time::timeout(CHANGE_WAIT_MAX, self.group.add_voter(broker as NodeId))
            .await
            .map_err(|_| {
                (
                    ResponseError::RequestTimedOut,
                    format!("Adding voter {broker} did not finish within {CHANGE_WAIT_MAX:?}."),
                )
            })?
            .map_err(|e| (ResponseError::InvalidRequest, format!("{e:#}")))
    }

    /// The metadata group's voters (Kafka's controllers), by id.
    pub fn voters(&self) -> Vec<i32> {
        self.group.voters().into_iter().map(|v| v as i32).collect()
    }

    /// Registered brokers that are alive now (this one, and the peers the
    /// transport heard from lately), by id.
    pub fn alive_brokers(&self) -> Vec<BrokerRegistration> {
        let me = self.node_id;
        self.read(|s| {
            s.brokers
                .values()
                .filter(|b| b.id == me || self.transport.is_alive(b.id as NodeId))
                .cloned()
                .collect()
        })
    }

    /// The brokers Metadata lists: the ones heard within
    /// [`LISTED_AFTER_LAST_HEARD`], or every registered one when this node
    /// hears none of its peers.
    ///
    /// Kafka lists a killed broker until its session times out (9 s by
    /// default), and clients rely on it: librdkafka, seeing a broker vanish
    /// from the same Metadata response that moves a partition off it,
    /// decommissions the broker and, racing its own migration, parks the
    /// partition on its internal broker until its next one-second metadata
    /// scan (a consumer's first record after a leader kill came ~1.9 s
    /// late that way). A node cut off from the others by a network
    /// partition, while clients still reach it, would otherwise list
    /// itself alone, and librdkafka would forget the leader the others
    /// elected until the partition heals. (If the peers are down instead,
    /// a client that tries one meets a refused connection and asks again.)
    pub fn listed_brokers(&self) -> Vec<BrokerRegistration> {
        let me = self.node_id;
        let liveness = self.transport.liveness();
        let alive = self.alive_brokers();
        if !alive.iter().any(|b| b.id != me) {
            return self.read(|s| s.brokers.values().cloned().collect());
        }
        self.read(|s| {
            s.brokers
                .values()
                .filter(|b| {
                    b.id == me
                        || liveness
                            .last_heard(b.id as NodeId)
                            .is_some_and(|at| at.elapsed() < LISTED_AFTER_LAST_HEARD)
                })
                .cloned()
                .collect()
        })
    }

    /// Whether a broker is registered and alive.
    pub fn is_alive(&self, broker: i32) -> bool {
        broker == self.node_id
            || (self.read(|s| s.brokers.contains_key(&broker))
                && self.transport.is_alive(broker as NodeId))
    }

    /// Whether this node reaches `broker` now: heard lately and connected
    /// (a killed node is unreachable the moment its connection breaks).
    /// Only a reachable node is named a partition's leader.
    pub fn is_reachable(&self, broker: i32) -> bool {
        broker == self.node_id || self.transport.is_reachable(broker as NodeId)
    }

    /// The peer that, by its latest heartbeat report, leads `group` in the
    /// highest term, among the reachable ones.
    pub fn claimed_leader(
        &self,
        group: &crate::raft::GroupId,
    ) -> Option<crate::raft::leaders::Claim> {
        let fresh = self.transport.config().dead_after;
        self.transport
            .leaders()
            .leader_of(group, fresh, |n| self.transport.is_reachable(n))
    }

    /// The runtime blocking threads reach async work through.
    pub fn runtime(&self) -> &tokio::runtime::Handle {
        &self.runtime
    }

    /// A partition group's voters: each replica with its CONTROLLER address
    /// (empty for a broker that has not registered one).
    pub fn group_voters(&self, replicas: &[i32]) -> BTreeMap<NodeId, BasicNode> {
        self.read(|s| {
            replicas
                .iter()
                .map(|&id| {
                    let addr = s
                        .brokers
                        .get(&id)
                        .and_then(|b| b.controller.clone())
                        .unwrap_or_default();
                    (id as NodeId, BasicNode::new(addr))
                })
                .collect()
        })
    }

    /// One partition's topic id and replicas, without copying the whole
    /// topic.
    pub fn replicas(&self, topic: &str, partition: i32) -> Option<(Uuid, Vec<i32>)> {
        self.read(|s| {
            let t = s.topics.get(topic)?;
            Some((t.id, t.replicas_of(partition).to_vec()))
        })
    }

    pub fn topic(&self, name: &str) -> Option<TopicMeta> {
        self.read(|s| s.topics.get(name).cloned())
    }

    pub fn topic_by_id(&self, id: Uuid) -> Option<TopicMeta> {
        self.read(|s| s.topics.values().find(|t| t.id == id).cloned())
    }

    /// Every topic, sorted by name.
    pub fn topics(&self) -> Vec<TopicMeta> {
        self.read(|s| s.topics.values().cloned().collect())
    }

    /// Every topic name, sorted.
    pub fn topic_names(&self) -> Vec<String> {
        self.read(|s| s.topics.keys().cloned().collect())
    }

    /// Checks a new topic's name and partition count without creating it.
    pub fn validate_new_topic(&self, name: &str, partitions: i32) -> Result<(), KafkaError> {
        validate_topic_name(name)?;
        if self.read(|s| s.topics.contains_key(name)) {
            return Err((
                ResponseError::TopicAlreadyExists,
                format!("Topic '{name}' already exists."),
            ));
        }
        if let Some(existing) = self.colliding_topic(name) {
            return Err((
                ResponseError::InvalidTopicException,
                format!("Topic '{name}' collides with existing topic: {existing}"),
            ));
        }
        if !(1..=TOPIC_PARTITIONS_MAX).contains(&partitions) {
            return Err((
                ResponseError::InvalidPartitions,
                format!("Number of partitions must be between 1 and {TOPIC_PARTITIONS_MAX}."),
            ));
        }
        Ok(())
    }

    /// Registers a topic (its replica lists filled in) and returns once this
    /// node has applied it. On error nothing is registered. Blocking.
    pub fn register_topic(&self, meta: TopicMeta) -> Result<TopicMeta, KafkaError> {
        self.propose_topic(MetadataCommand::CreateTopic(meta))
    }

    /// Removes a topic from the metadata; each replica removes its data.
    /// Blocking.
    pub fn delete_topic(&self, name: &str) -> Result<TopicMeta, KafkaError> {
        let id = self.topic(name).ok_or_else(unknown_topic)?.id;
        self.propose_topic(MetadataCommand::DeleteTopic {
            name: name.to_string(),
            id,
        })
    }

    /// Grows a topic from `from` partitions by one per replica list (Kafka
    /// never shrinks a topic). Blocking.
    pub fn add_partitions(
        &self,
        name: &str,
        from: i32,
        replicas: Vec<Vec<i32>>,
    ) -> Result<TopicMeta, KafkaError> {
        self.propose_topic(MetadataCommand::AddPartitions {
            name: name.to_string(),
            from,
            replicas,
        })
    }

    /// Replaces a topic's own configs (validated by the caller). Blocking.
    pub fn set_topic_configs(
        &self,
        name: &str,
        configs: BTreeMap<String, String>,
    ) -> Result<TopicMeta, KafkaError> {
        self.propose_topic(MetadataCommand::SetTopicConfigs {
            name: name.to_string(),
            configs,
        })
    }

    /// A block of `count` producer ids no other broker gets. Blocking.
    pub fn allocate_producer_ids(&self, count: i64) -> Result<i64, KafkaError> {
        match self.propose(MetadataCommand::AllocateProducerIds {
            broker: self.node_id,
            count,
        })? {
            MetadataResponse::ProducerIds(start) => Ok(start),
            other => Err((
                ResponseError::UnknownServerError,
                format!("unexpected metadata answer {other:?}"),
            )),
        }
    }
}

/// A Kafka error with its message.
type KafkaError = (ResponseError, String);

/// Where peers reach this node: a voter's own entry in
/// `controller.quorum.voters` (so a CONTROLLER listener bound to 0.0.0.0
/// is still registered under a name the peers can reach), otherwise its
/// CONTROLLER listener as `host:port`. A node that is not a voter must
/// have one.
fn controller_address(config: &BrokerConfig) -> anyhow::Result<String> {
    if let Some(me) = config.voters.iter().find(|v| v.id == config.node_id) {
        if me.port != 0 {
            return Ok(format!("{}:{}", me.host, me.port));
        }
    }
    let listener = config.controller_listener.as_ref().ok_or_else(|| {
        anyhow::anyhow!(
            "node {} is not in controller.quorum.voters, so it must have a CONTROLLER listener for the voters to reach it",
            config.node_id
        )
    })?;
    Ok(format!("{}:{}", listener.host, listener.port))
}

/// Proposes this node's bootstrap command until it is committed (so the
/// group has a leader and a cluster id) and applied here; the cluster id.
/// Gives up when most voters refuse this node (another cluster's data, or
/// a misconfigured node id): waiting would never end.
async fn join(
    group: &EntryGroup<MetadataTypes, MetadataState>,
    transport: &Transport,
    peers: &[NodeId],
    voters: usize,
    bootstrap: MetadataCommand,
) -> anyhow::Result<String> {
    let started = std::time::Instant::now();
    loop {
        if let Some(why) = refusal(transport, peers, voters) {
            anyhow::bail!(why);
        }
        let attempt = async {
            group.wait_leader(JOIN_ATTEMPT_WAIT).await?;
            let (index, response) = group.propose(bootstrap.clone()).await?;
            group.wait_applied(index, JOIN_ATTEMPT_WAIT).await?;
            match response {
                MetadataResponse::ClusterId(id) => Ok(id),
                other => Err(anyhow::anyhow!("unexpected bootstrap answer {other:?}")),
            }
        };
        match attempt.await {
            Ok(id) => return Ok(id),
            Err(e) => tracing::warn!(
                waited_s = started.elapsed().as_secs(),
                error = %format!("{e:#}"),
                "waiting for the metadata quorum (controller.quorum.voters)"
            ),
        }
    }
}

/// Why this node must give up joining, if a majority of the `voters`
/// refuse it (another cluster's data, or a misconfigured node id).
fn refusal(transport: &Transport, peers: &[NodeId], voters: usize) -> Option<String> {
    let refusals: Vec<String> = peers
        .iter()
        .filter_map(|&p| match transport.peer_state(p) {
            Some(crate::raft::transport::PeerState::Refused(why)) => Some(why),
            _ => None,
        })
        .collect();
    (refusals.len() > voters / 2).then(|| {
        format!(
            "{} of the {voters} voters refuse this node: {}",
            refusals.len(),
            refusals.join("; ")
        )
    })
}

/// Topics and dynamic broker configs of a single-node data directory from
/// before the metadata group, with each partition's replica set to this
/// node; empty when there is none.
#[allow(clippy::type_complexity)]
fn read_legacy_document(
    log_dir: &Path,
    node_id: i32,
) -> anyhow::Result<(
    BTreeMap<String, TopicMeta>,
    BTreeMap<String, BTreeMap<String, String>>,
)> {
    let path = log_dir.join(LEGACY_METADATA_FILE);
    let mut doc = match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice::<LegacyDocument>(&bytes)
            .map_err(|e| anyhow::anyhow!("{} is not valid metadata: {e}", path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => LegacyDocument::default(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    for topic in doc.topics.values_mut() {
        if topic.replicas.len() != topic.partitions as usize {
            topic.replicas = (0..topic.partitions).map(|_| vec![node_id]).collect();
        }
    }
    Ok((doc.topics, doc.broker_configs))
}

/// The producer-id block end a single-node data directory kept, so that
/// ids handed out before the upgrade are never handed out again.
fn read_legacy_producer_id_end(log_dir: &Path) -> anyhow::Result<i64> {
    let path = log_dir.join(LEGACY_PRODUCER_ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => text.trim().parse::<i64>().map_err(|e| {
            anyhow::anyhow!(
                "{} is corrupt ({e}); refusing to reuse producer ids",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn unknown_topic() -> (ResponseError, String) {
    (
        ResponseError::UnknownTopicOrPartition,
        "This server does not host this topic-partition.".to_string(),
    )
}

/// Kafka's topic-name rules: 1..=249 chars of `[a-zA-Z0-9._-]`, not `.`/`..`.
pub fn validate_topic_name(name: &str) -> Result<(), (ResponseError, String)> {
    let bad = |why: &str| {
        Err((
            ResponseError::InvalidTopicException,
            format!("Topic name \"{name}\" is illegal, {why}"),
        ))
    };
    if name.is_empty() {
        return bad("it can't be empty");
    }
    if name == "." || name == ".." {
        return bad("it cannot be \".\" or \"..\"");
    }
    if name.len() > TOPIC_NAME_BYTES_MAX {
        return bad("it can't be longer than 249 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
    {
        return bad("it contains a character other than ASCII alphanumerics, '.', '_' and '-'");
    }
    Ok(())
}

/// A Kafka-style cluster id: 16 random bytes, URL-safe base64 without padding.
fn new_cluster_id() -> String {
    kafka_uuid_string(&Uuid::new_v4())
}

/// Kafka's string form of a Uuid (`Uuid.toString`): its 16 bytes in
/// URL-safe base64 without padding, 22 characters.
pub fn kafka_uuid_string(id: &Uuid) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let bytes = id.into_bytes();
    let mut out = String::with_capacity(22);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for b in bytes {
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 6 {
            bits -= 6;
            out.push(ALPHABET[((acc >> bits) & 63) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((acc << (6 - bits)) & 63) as usize] as char);
    }
    out
}

/// Writes `bytes` to `path` so that a crash leaves either the old or the new
/// file, never a torn one.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_follow_kafka_rules() {
        assert!(validate_topic_name("a-b_c.9").is_ok());
        for bad in ["", ".", "..", "has space", "slash/", &"x".repeat(250)] {
            assert_eq!(
                validate_topic_name(bad).map_err(|e| e.0),
                Err(ResponseError::InvalidTopicException),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn another_nodes_data_dir_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_atomically(
            &dir.path().join("meta.properties"),
            b"version=1\ncluster.id=abc\nnode.id=1\n",
        )
        .expect("write");
        assert_eq!(
            stored_cluster_id(dir.path(), 1).expect("node 1's"),
            Some("abc".to_string())
        );
        assert!(stored_cluster_id(dir.path(), 2).is_err());
    }
}
