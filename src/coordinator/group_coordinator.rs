//! The group coordinator: every consumer group's state machine, their
//! committed offsets, the one timer scheduler that drives them all, and the
//! durable record of both in `__consumer_offsets`.
//!
//! Design decisions:
//! - Group metadata and offsets are records of the internal topic
//!   `__consumer_offsets` (Kafka's layout, see `offsets_topic`), written
//!   through the ordinary partition log, and replayed on startup. A group lives
//!   on partition `hash(group) % offsets.topic.num.partitions`, so when
//!   partitions become Raft groups the coordinator fails over with its
//!   partition's leadership.
//! - One lock over the group map, never held across an `.await` or a disk
//!   write: a request mutates the group in memory, takes a snapshot of what
//!   must be persisted, releases the lock, and only then writes and answers.
//! - One scheduler task for every group's timers (session expiry, rebalance
//!   and sync deadlines): a min-heap of `(deadline, group)` with at most one
//!   live entry per group, woken early when a sooner deadline is scheduled.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use kafka_protocol::error::ResponseError;
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use parking_lot::Mutex;
use tokio::sync::{oneshot, watch, Notify};

use super::group::{
    CommittedOffset, Effects, Group, GroupConfig, GroupState, JoinRequest, JoinResult, SyncResult,
};
use super::offsets_topic::{partition_for_group, GroupValue, OffsetValue, OffsetsRecord};
use crate::broker::{now_ms as wall_now_ms, Broker};
use crate::config::BrokerConfig;

/// The internal topic's name.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";
/// Most groups the coordinator keeps (bounds memory; Kafka has no limit).
pub const GROUPS_MAX: usize = 100_000;
/// Slack added to a JoinGroup/SyncGroup wait beyond the group's own deadline.
const WAIT_SLACK: Duration = Duration::from_secs(5);
/// Records appended to an offsets partition before it is compacted by a snapshot.
const SNAPSHOT_AFTER_RECORDS: usize = 20_000;
/// Largest batch written to `__consumer_offsets` (below max.message.bytes).
const SNAPSHOT_BATCH_BYTES_MAX: usize = 512 * 1024;
/// Bytes read per step when replaying `__consumer_offsets`.
const REPLAY_READ_BYTES: usize = 1 << 20;

/// Offset-related settings (Kafka's names).
#[derive(Clone, Debug)]
pub struct OffsetsConfig {
    /// `offsets.topic.num.partitions`
    pub partitions: i32,
    /// `offsets.retention.minutes`, in ms.
    pub retention_ms: i64,
    /// `offsets.retention.check.interval.ms`
    pub retention_check_interval_ms: u64,
    /// `offset.metadata.max.bytes`
    pub metadata_max_bytes: usize,
}

/// A topic's partitions with their committed offset, if any.
pub type TopicOffsets = (String, Vec<(i32, Option<CommittedOffset>)>);

/// What DescribeGroups reports about one group.
pub struct GroupDescription {
    pub state: &'static str,
    pub protocol_type: String,
    pub protocol_name: String,
    /// (member id, instance id, client id, client host, metadata, assignment)
    pub members: Vec<(
        String,
        Option<String>,
        String,
        String,
        bytes::Bytes,
        bytes::Bytes,
    )>,
}

/// Work that must happen after the group lock is released.
#[derive(Default)]
struct Pending {
    partition: i32,
    records: Vec<OffsetsRecord>,
    syncs: Vec<(oneshot::Sender<SyncResult>, SyncResult)>,
}

pub struct GroupCoordinator {
    config: GroupConfig,
    offsets: OffsetsConfig,
    groups: Mutex<HashMap<String, Group>>,
    timers: Mutex<Timers>,
    wake: Notify,
    start: Instant,
    /// One per offsets partition: serialises its appends with snapshots.
    append_locks: Vec<Mutex<()>>,
    appended_since_snapshot: Mutex<HashMap<i32, usize>>,
    /// Records appended to a partition before it is compacted (a field so
    /// tests can lower it).
    pub(crate) snapshot_after_records: std::sync::atomic::AtomicUsize,
    /// Offsets partitions this node leads and has replayed, with the term
    /// (leader epoch) it replayed them in: it coordinates their groups only
    /// in that term.
    loaded_terms: Mutex<HashMap<i32, u64>>,
}

/// How long `Broker::start` waits for the offsets partitions a lone voter
/// leads to be replayed (they are elected and applied at once).
pub const LONE_LOAD_WAIT: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Timers {
    heap: BinaryHeap<Reverse<(i64, String)>>,
    /// The deadline of each group's live heap entry.
    scheduled: HashMap<String, i64>,
}

impl GroupCoordinator {
    pub fn new(broker: &BrokerConfig) -> GroupCoordinator {
        GroupCoordinator {
            config: broker.group.clone(),
            offsets: broker.offsets.clone(),
            groups: Mutex::new(HashMap::new()),
            timers: Mutex::new(Timers::default()),
            wake: Notify::new(),
            start: Instant::now(),
            append_locks: (0..broker.offsets.partitions.max(1))
                .map(|_| Mutex::new(()))
                .collect(),
            appended_since_snapshot: Mutex::new(HashMap::new()),
            snapshot_after_records: std::sync::atomic::AtomicUsize::new(SNAPSHOT_AFTER_RECORDS),
            loaded_terms: Mutex::new(HashMap::new()),
        }
    }

    /// Monotonic milliseconds: group timers must not jump with the wall clock.
    pub fn now_ms(&self) -> i64 {
        self.start.elapsed().as_millis() as i64
    }

    pub fn offsets_config(&self) -> &OffsetsConfig {
        &self.offsets
    }

    pub fn partition_of(&self, group_id: &str) -> i32 {
        partition_for_group(group_id, self.offsets.partitions)
    }

    /// Whether this node coordinates `group_id`: it leads the group's
    /// `__consumer_offsets` partition and has replayed it in its current
    /// term. Otherwise NOT_COORDINATOR (another node leads it; clients ask
    /// FindCoordinator again), COORDINATOR_LOAD_IN_PROGRESS (this node has
    /// just been elected and is replaying it) or COORDINATOR_NOT_AVAILABLE
    /// (nobody leads it now). All three are retriable.
    pub fn coordinates(&self, broker: &Broker, group_id: &str) -> Result<(), ResponseError> {
        match broker.coordinator_of(group_id) {
            Some(node) if node == broker.config.node_id => {
                let partition = self.partition_of(group_id);
                let term = broker
                    .replicas
                    .get(OFFSETS_TOPIC, partition)
                    .map(|p| p.leadership())
                    .filter(|l| l.is_me)
                    .map(|l| l.term);
                match term {
                    Some(t) if self.loaded_terms.lock().get(&partition) == Some(&t) => Ok(()),
                    Some(_) => Err(ResponseError::CoordinatorLoadInProgress),
                    None => Err(ResponseError::NotCoordinator),
                }
            }
            Some(_) => Err(ResponseError::NotCoordinator),
            None => Err(ResponseError::CoordinatorNotAvailable),
        }
    }

    /// Follows the leadership of every `__consumer_offsets` partition
    /// hosted here: when this node leads one and has applied the first
    /// entry of its term (so everything committed before is applied), it
    /// replays that partition, replacing the groups it held of it; when it
    /// stops leading, it drops them. Then waits (at most
    /// [`LONE_LOAD_WAIT`]) for the partitions of lone-voter groups, which
    /// elect themselves at once, so that a single node coordinates from its
    /// first request.
    pub async fn follow_leadership(
        self: Arc<Self>,
        broker: Arc<Broker>,
        shutdown: watch::Receiver<bool>,
    ) {
        let mut lone = Vec::new();
        for partition in 0..self.offsets.partitions {
            if broker
                .replicas
                .get(OFFSETS_TOPIC, partition)
                .is_some_and(|p| p.replica_ids().len() == 1)
            {
                lone.push(partition);
            }
            // Every partition, hosted yet or not: a node that joins a
            // cluster opens its offsets partitions when it applies them.
            tokio::spawn(self.clone().follow_partition(
                Arc::downgrade(&broker),
                partition,
                shutdown.clone(),
            ));
        }
        let all_loaded = async {
            loop {
                if lone
                    .iter()
                    .all(|p| self.loaded_terms.lock().contains_key(p))
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        if tokio::time::timeout(LONE_LOAD_WAIT, all_loaded)
            .await
            .is_err()
        {
            tracing::warn!("offsets partitions not replayed within {LONE_LOAD_WAIT:?}; their groups answer COORDINATOR_LOAD_IN_PROGRESS until they are");
        }
    }

    /// One offsets partition's watcher. It holds the broker weakly (never
    /// across a wait), so a broker that is dropped is not kept alive.
    async fn follow_partition(
        self: Arc<Self>,
        broker: std::sync::Weak<Broker>,
        partition: i32,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let hosted = |broker: &std::sync::Weak<Broker>| {
            let b = broker.upgrade()?;
            let node = b.config.node_id as u64;
            let group = b.replicas.get(OFFSETS_TOPIC, partition)?.group()?;
            Some((node, group))
        };
        loop {
            if broker.strong_count() == 0 {
                return;
            }
            let Some((node, group)) = hosted(&broker) else {
                // Not hosted (yet): look again in a moment.
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
                    _ = shutdown.changed() => return,
                }
            };
            let mut metrics = group.raft.metrics();
            loop {
                let (leading, term) = {
                    let m = metrics.borrow_and_update();
                    let leading = m.state == openraft::ServerState::Leader
                        && m.current_leader == Some(node)
                        && m.last_applied
                            .is_some_and(|l| l.leader_id.term == m.current_term);
                    (leading, m.current_term)
                };
                let loaded = self.loaded_terms.lock().get(&partition).copied();
                if leading && loaded != Some(term) {
                    let Some(b) = broker.upgrade() else { return };
                    let c = self.clone();
                    let replayed =
                        tokio::task::spawn_blocking(move || c.load_partitions(&b, &[partition]))
                            .await;
                    match replayed {
                        Ok(Ok(())) => {
                            self.loaded_terms.lock().insert(partition, term);
                            tracing::info!(
                                partition,
                                term,
                                "coordinating the groups of an offsets partition"
                            );
                            continue;
                        }
                        Ok(Err(e)) => {
                            tracing::warn!(partition, error = %e, "replaying an offsets partition failed; retrying")
                        }
                        Err(e) => {
                            tracing::warn!(partition, error = %e, "replaying an offsets partition failed; retrying")
                        }
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
                        _ = shutdown.changed() => return,
                    }
                }
                if !leading && loaded.is_some() && !group.leadership().is_me {
                    self.loaded_terms.lock().remove(&partition);
                    self.groups
                        .lock()
                        .retain(|id, _| self.partition_of(id) != partition);
                    tracing::info!(
                        partition,
                        "no longer coordinating the groups of an offsets partition"
                    );
                }
                tokio::select! {
                    changed = metrics.changed() => if changed.is_err() { break },
                    _ = shutdown.changed() => return,
                }
            }
            // The group stopped (deleted, or restarted after its log was
            // reopened): follow its successor, if any.
            self.loaded_terms.lock().remove(&partition);
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    fn schedule(&self, group: &Group) {
        let Some(deadline) = group.next_deadline_ms() else {
            return;
        };
        let mut timers = self.timers.lock();
        let earlier = match timers.scheduled.get(&group.group_id) {
            Some(current) => deadline < *current,
            None => true,
        };
        if earlier {
            timers.scheduled.insert(group.group_id.clone(), deadline);
            let is_head = timers
                .heap
                .peek()
                .is_none_or(|Reverse((d, _))| deadline < *d);
            timers
                .heap
                .push(Reverse((deadline, group.group_id.clone())));
            drop(timers);
            if is_head {
                self.wake.notify_one();
            }
        }
    }

    /// Runs `f` on a group (created if `create`), then schedules its timers
    /// and snapshots what must be persisted.
    fn with_group<R>(
        &self,
        group_id: &str,
        create: bool,
        f: impl FnOnce(&mut Group, i64) -> (R, Effects),
    ) -> Result<(R, Pending), ResponseError> {
        let now = self.now_ms();
        let mut groups = self.groups.lock();
        if !groups.contains_key(group_id) {
            if !create {
                return Err(ResponseError::GroupIdNotFound);
            }
            if groups.len() >= GROUPS_MAX {
                return Err(ResponseError::CoordinatorNotAvailable);
            }
            groups.insert(
                group_id.to_string(),
                Group::new(group_id, self.config.clone(), wall_now_ms()),
            );
        }
        let group = groups
            .get_mut(group_id)
            .ok_or(ResponseError::CoordinatorNotAvailable)?;
        let state_before = group.state;
        let (result, effects) = f(group, now);
        if group.state != state_before {
            group.state_timestamp_ms = wall_now_ms();
        }
        self.schedule(group);
        let mut pending = Pending {
            partition: self.partition_of(group_id),
            ..Pending::default()
        };
        if effects.persist_group {
            pending.records.push(group_record(group));
        }
        pending.syncs = effects.syncs_after_persist;
        Ok((result, pending))
    }

    /// Persists, then releases the answers that waited for it.
    async fn finish(&self, broker: &Arc<Broker>, pending: Pending) {
        let Pending {
            partition,
            records,
            syncs,
        } = pending;
        let persisted = if records.is_empty() {
            Ok(())
        } else {
            self.append(broker, partition, records, None).await
        };
        for (waiter, mut result) in syncs {
            if let Err(e) = persisted {
                result = SyncResult {
                    error: Some(e),
                    protocol_type: None,
                    protocol_name: None,
                    assignment: bytes::Bytes::new(),
                };
            }
            let _ = waiter.send(result);
        }
    }

    pub async fn join(
        &self,
        broker: &Arc<Broker>,
        group_id: &str,
        request: JoinRequest,
    ) -> JoinResult {
        let member_id = request.member_id.clone();
        let error = |e| JoinResult {
            error: Some(e),
            generation_id: -1,
            protocol_type: None,
            protocol_name: None,
            leader: String::new(),
            member_id: member_id.clone(),
            members: Vec::new(),
        };
        if group_id.is_empty() {
            return error(ResponseError::InvalidGroupId);
        }
        if let Err(e) = self.coordinates(broker, group_id) {
            return error(e);
        }
        let wait = Duration::from_millis(
            request
                .rebalance_timeout_ms
                .max(request.session_timeout_ms)
                .max(0) as u64,
        ) + Duration::from_millis(self.config.initial_rebalance_delay_ms.max(0) as u64)
            + WAIT_SLACK;
        let create = request.member_id.is_empty();
        let (tx, rx) = oneshot::channel();
        match self.with_group(group_id, create, |g, now| ((), g.join(now, request, tx))) {
            Ok(((), pending)) => self.finish(broker, pending).await,
            Err(ResponseError::GroupIdNotFound) => return error(ResponseError::UnknownMemberId),
            Err(e) => return error(e),
        }
        match tokio::time::timeout(wait, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => error(ResponseError::CoordinatorNotAvailable),
            Err(_) => error(ResponseError::RebalanceInProgress),
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn sync(
        &self,
        broker: &Arc<Broker>,
        group_id: &str,
        member_id: &str,
        instance: Option<&str>,
        generation_id: i32,
        protocol: (Option<&str>, Option<&str>),
        assignments: Vec<(String, bytes::Bytes)>,
    ) -> SyncResult {
        let error = |e| SyncResult {
            error: Some(e),
            protocol_type: None,
            protocol_name: None,
            assignment: bytes::Bytes::new(),
        };
        if let Err(e) = self.coordinates(broker, group_id) {
            return error(e);
        }
        let (tx, rx) = oneshot::channel();
        let outcome = self.with_group(group_id, false, |g, now| {
            let wait = g
                .members
                .get(member_id)
                .map(|m| i64::from(m.rebalance_timeout_ms))
                .unwrap_or(0);
            (
                wait,
                g.sync(
                    now,
                    member_id,
                    instance,
                    generation_id,
                    protocol,
                    assignments,
                    tx,
                ),
            )
        });
        let wait_ms = match outcome {
            Ok((wait, pending)) => {
                self.finish(broker, pending).await;
                wait
            }
            Err(ResponseError::GroupIdNotFound) => return error(ResponseError::UnknownMemberId),
            Err(e) => return error(e),
        };
        match tokio::time::timeout(
            Duration::from_millis(wait_ms.max(0) as u64) + WAIT_SLACK,
            rx,
        )
        .await
        {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => error(ResponseError::CoordinatorNotAvailable),
            Err(_) => error(ResponseError::RebalanceInProgress),
        }
    }

    pub async fn heartbeat(
        &self,
        broker: &Arc<Broker>,
        group_id: &str,
        member_id: &str,
        instance: Option<&str>,
        generation_id: i32,
    ) -> Option<ResponseError> {
        if let Err(e) = self.coordinates(broker, group_id) {
            return Some(e);
        }
        match self.with_group(group_id, false, |g, now| {
            (
                g.heartbeat(now, member_id, instance, generation_id),
                Effects::default(),
            )
        }) {
            Ok((error, pending)) => {
                self.finish(broker, pending).await;
                error
            }
            Err(ResponseError::GroupIdNotFound) => Some(ResponseError::UnknownMemberId),
            Err(e) => Some(e),
        }
    }

    pub async fn leave(
        &self,
        broker: &Arc<Broker>,
        group_id: &str,
        members: &[(String, Option<String>)],
    ) -> Result<Vec<Option<ResponseError>>, ResponseError> {
        self.coordinates(broker, group_id)?;
        match self.with_group(group_id, false, |g, now| g.leave(now, members)) {
            Ok((errors, pending)) => {
                self.finish(broker, pending).await;
                Ok(errors)
            }
            Err(ResponseError::GroupIdNotFound) => Err(ResponseError::UnknownMemberId),
            Err(e) => Err(e),
        }
    }

    pub fn describe(&self, group_id: &str) -> GroupDescription {
        let groups = self.groups.lock();
        let Some(g) = groups.get(group_id) else {
            return GroupDescription {
                state: GroupState::Dead.name(),
                protocol_type: String::new(),
                protocol_name: String::new(),
                members: Vec::new(),
            };
        };
        let protocol = g.protocol_name.clone().unwrap_or_default();
        let stable = g.state == GroupState::Stable;
        GroupDescription {
            state: g.state.name(),
            protocol_type: g.protocol_type.clone().unwrap_or_default(),
            // Kafka reports the protocol only once the group is Stable.
            protocol_name: if stable {
                protocol.clone()
            } else {
                String::new()
            },
            members: g
                .members
                .values()
                .map(|m| {
                    (
                        m.member_id.clone(),
                        m.group_instance_id.clone(),
                        m.client_id.clone(),
                        m.client_host.clone(),
                        if stable {
                            m.metadata(&protocol)
                        } else {
                            bytes::Bytes::new()
                        },
                        if stable {
                            m.assignment.clone()
                        } else {
                            bytes::Bytes::new()
                        },
                    )
                })
                .collect(),
        }
    }

    /// `(group id, protocol type, state)` of every group.
    pub fn list(&self) -> Vec<(String, String, &'static str)> {
        let groups = self.groups.lock();
        let mut out: Vec<_> = groups
            .values()
            .map(|g| {
                (
                    g.group_id.clone(),
                    g.protocol_type.clone().unwrap_or_default(),
                    g.state.name(),
                )
            })
            .collect();
        out.sort();
        out
    }

    /// DeleteGroups: only empty groups may be deleted; their offsets go too.
    pub async fn delete_group(
        &self,
        broker: &Arc<Broker>,
        group_id: &str,
    ) -> Option<ResponseError> {
        if let Err(e) = self.coordinates(broker, group_id) {
            return Some(e);
        }
        let pending = {
            let mut groups = self.groups.lock();
            let Some(g) = groups.get_mut(group_id) else {
                return Some(ResponseError::GroupIdNotFound);
            };
            if !matches!(g.state, GroupState::Empty | GroupState::Dead) || !g.is_empty() {
                return Some(ResponseError::NonEmptyGroup);
            }
            let mut records: Vec<OffsetsRecord> = g
                .offsets
                .keys()
                .map(|(topic, partition)| OffsetsRecord::Offset {
                    group: group_id.to_string(),
                    topic: topic.clone(),
                    partition: *partition,
                    value: None,
                })
                .collect();
            records.push(OffsetsRecord::Group {
                group: group_id.to_string(),
                value: None,
            });
            g.mark_dead();
            groups.remove(group_id);
            Pending {
                partition: self.partition_of(group_id),
                records,
                syncs: Vec::new(),
            }
        };
        self.timers.lock().scheduled.remove(group_id);
        let partition = pending.partition;
        self.append(broker, partition, pending.records, None)
            .await
            .err()
    }

    /// OffsetCommit: checks the member and generation, persists, then records.
    #[allow(clippy::too_many_arguments)]
    pub async fn commit_offsets(
        &self,
        broker: &Arc<Broker>,
        group_id: &str,
        member_id: &str,
        instance: Option<&str>,
        generation_id: i32,
        offsets: Vec<(String, i32, CommittedOffset)>,
    ) -> Result<(), ResponseError> {
        if group_id.is_empty() {
            return Err(ResponseError::InvalidGroupId);
        }
        self.coordinates(broker, group_id)?;
        // Commits without a generation (admin tools, assign()-only consumers)
        // may create the group; member commits need an existing group.
        let create = generation_id < 0;
        let ((), pending) = match self.with_group(group_id, create, |g, _| {
            (
                g.check_commit(member_id, instance, generation_id),
                Effects::default(),
            )
        }) {
            Ok((Ok(()), pending)) => ((), pending),
            Ok((Err(e), _)) => return Err(e),
            Err(ResponseError::GroupIdNotFound) => {
                return Err(if generation_id < 0 {
                    ResponseError::GroupIdNotFound
                } else {
                    ResponseError::IllegalGeneration
                })
            }
            Err(e) => return Err(e),
        };
        let records: Vec<OffsetsRecord> = offsets
            .iter()
            .map(|(topic, partition, o)| OffsetsRecord::Offset {
                group: group_id.to_string(),
                topic: topic.clone(),
                partition: *partition,
                value: Some(OffsetValue {
                    offset: o.offset,
                    leader_epoch: o.leader_epoch,
                    metadata: o.metadata.clone(),
                    commit_timestamp_ms: o.commit_timestamp_ms,
                }),
            })
            .collect();
        // Offsets become visible only once durable, and are applied under the
        // partition's append lock so a concurrent snapshot cannot miss them.
        let group = group_id.to_string();
        let apply: AfterAppend = Box::new(move |groups: &mut HashMap<String, Group>| {
            if let Some(g) = groups.get_mut(&group) {
                for (topic, partition, o) in offsets {
                    g.offsets.insert((topic, partition), o);
                }
            }
        });
        self.append(broker, pending.partition, records, Some(apply))
            .await
    }

    /// OffsetFetch: the committed offsets of `topics` (all if `None`).
    pub fn fetch_offsets(
        &self,
        group_id: &str,
        topics: Option<Vec<(String, Vec<i32>)>>,
    ) -> Vec<TopicOffsets> {
        let groups = self.groups.lock();
        let offsets = groups.get(group_id).map(|g| &g.offsets);
        match topics {
            Some(topics) => topics
                .into_iter()
                .map(|(topic, partitions)| {
                    let found = partitions
                        .into_iter()
                        .map(|p| (p, offsets.and_then(|o| o.get(&(topic.clone(), p)).cloned())))
                        .collect();
                    (topic, found)
                })
                .collect(),
            None => {
                let mut by_topic: BTreeMap<String, Vec<(i32, Option<CommittedOffset>)>> =
                    BTreeMap::new();
                if let Some(offsets) = offsets {
                    for ((topic, p), o) in offsets {
                        by_topic
                            .entry(topic.clone())
                            .or_default()
                            .push((*p, Some(o.clone())));
                    }
                }
                by_topic.into_iter().collect()
            }
        }
    }

    /// OffsetDelete: per partition error (a topic the group still consumes
    /// keeps its offsets: GROUP_SUBSCRIBED_TO_TOPIC).
    pub async fn delete_offsets(
        &self,
        broker: &Arc<Broker>,
        group_id: &str,
        topics: Vec<(String, Vec<i32>)>,
    ) -> Result<Vec<(String, Vec<(i32, Option<ResponseError>)>)>, ResponseError> {
        self.coordinates(broker, group_id)?;
        let (results, records) = {
            let mut groups = self.groups.lock();
            let g = groups
                .get_mut(group_id)
                .ok_or(ResponseError::GroupIdNotFound)?;
            let subscribed = if g.state == GroupState::Empty {
                None
            } else {
                g.subscribed_topics()
            };
            if g.state != GroupState::Empty && subscribed.is_none() {
                return Err(ResponseError::NonEmptyGroup);
            }
            let mut records = Vec::new();
            let results = topics
                .into_iter()
                .map(|(topic, partitions)| {
                    let busy = subscribed.as_ref().is_some_and(|s| s.contains(&topic));
                    let per = partitions
                        .into_iter()
                        .map(|p| {
                            if busy {
                                return (p, Some(ResponseError::GroupSubscribedToTopic));
                            }
                            if g.offsets.remove(&(topic.clone(), p)).is_some() {
                                records.push(OffsetsRecord::Offset {
                                    group: group_id.to_string(),
                                    topic: topic.clone(),
                                    partition: p,
                                    value: None,
                                });
                            }
                            (p, None)
                        })
                        .collect();
                    (topic, per)
                })
                .collect();
            (results, records)
        };
        if !records.is_empty() {
            self.append(broker, self.partition_of(group_id), records, None)
                .await?;
        }
        Ok(results)
    }

    /// Expires offsets of empty groups after `offsets.retention.minutes`
    /// (counted from the later of the commit and the group becoming empty),
    /// and forgets empty groups with no offsets left.
    pub async fn expire_offsets(&self, broker: &Arc<Broker>) {
        let now = wall_now_ms();
        let retention = self.offsets.retention_ms;
        let mut by_partition: HashMap<i32, Vec<OffsetsRecord>> = HashMap::new();
        {
            let mut groups = self.groups.lock();
            let mut dead = Vec::new();
            for g in groups.values_mut() {
                if g.state != GroupState::Empty || !g.is_empty() {
                    continue;
                }
                let since = g.state_timestamp_ms;
                let expired: Vec<(String, i32)> = g
                    .offsets
                    .iter()
                    .filter(|(_, o)| now - o.commit_timestamp_ms.max(since) >= retention)
                    .map(|(k, _)| k.clone())
                    .collect();
                let records = by_partition
                    .entry(partition_for_group(&g.group_id, self.offsets.partitions))
                    .or_default();
                for key in expired {
                    g.offsets.remove(&key);
                    records.push(OffsetsRecord::Offset {
                        group: g.group_id.clone(),
                        topic: key.0,
                        partition: key.1,
                        value: None,
                    });
                }
                if g.offsets.is_empty() && now - since >= retention {
                    records.push(OffsetsRecord::Group {
                        group: g.group_id.clone(),
                        value: None,
                    });
                    dead.push(g.group_id.clone());
                }
            }
            for id in dead {
                if let Some(mut g) = groups.remove(&id) {
                    g.mark_dead();
                }
            }
        }
        for (partition, records) in by_partition {
            if !records.is_empty() {
                tracing::info!(partition, records = records.len(), "expiring offsets");
                if let Err(e) = self.append(broker, partition, records, None).await {
                    tracing::warn!(?e, "offset expiry could not be persisted");
                }
            }
        }
    }

    /// The scheduler: runs due group timers and the offset expiry, until shutdown.
    pub async fn run_timers(
        self: Arc<Self>,
        broker: Arc<Broker>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut expiry = tokio::time::interval(Duration::from_millis(
            self.offsets.retention_check_interval_ms.max(1),
        ));
        expiry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let head = self.timers.lock().heap.peek().map(|Reverse((d, _))| *d);
            let sleep_ms = head
                .map(|d| (d - self.now_ms()).max(0) as u64)
                .unwrap_or(3_600_000);
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(sleep_ms)) => {}
                _ = self.wake.notified() => continue,
                _ = expiry.tick() => { self.expire_offsets(&broker).await; continue; }
                _ = shutdown.changed() => return,
            }
            let now = self.now_ms();
            let mut due = Vec::new();
            {
                let mut timers = self.timers.lock();
                while let Some(Reverse((d, _))) = timers.heap.peek() {
                    if *d > now {
                        break;
                    }
                    let Some(Reverse((d, id))) = timers.heap.pop() else {
                        break;
                    };
                    if timers.scheduled.get(&id) == Some(&d) {
                        timers.scheduled.remove(&id);
                        due.push(id);
                    }
                }
            }
            for id in due {
                if let Ok(((), pending)) =
                    self.with_group(&id, false, |g, now| ((), g.on_timer(now)))
                {
                    self.finish(&broker, pending).await;
                }
            }
        }
    }

    /// Rebuilds the groups and offsets of `partitions` of
    /// `__consumer_offsets` from what they hold up to the high watermark,
    /// replacing the groups of those partitions held before. Blocking.
    pub fn load_partitions(&self, broker: &Broker, partitions: &[i32]) -> anyhow::Result<()> {
        let mut loaded: Loaded = HashMap::new();
        let mut replayed: HashMap<i32, usize> = HashMap::new();
        let mut count = 0usize;
        for &partition in partitions {
            let Some(p) = broker.replicas.get(OFFSETS_TOPIC, partition) else {
                continue;
            };
            let end = p.high_watermark();
            let mut offset = p.log_start_offset();
            while offset < end {
                let read = p
                    .read_blocking(offset, REPLAY_READ_BYTES, true)
                    .map_err(|e| anyhow::anyhow!("replaying {OFFSETS_TOPIC}-{partition}: {e}"))?;
                if read.records.is_empty() || read.next_offset <= offset {
                    break;
                }
                let mut buf = read.records.clone();
                let sets = RecordBatchDecoder::decode_all(&mut buf)
                    .map_err(|e| anyhow::anyhow!("decoding {OFFSETS_TOPIC}-{partition}: {e}"))?;
                for set in sets {
                    for record in set.records {
                        if record.control || record.offset < offset {
                            continue;
                        }
                        let Some(key) = record.key.as_deref() else {
                            continue;
                        };
                        match OffsetsRecord::decode(key, record.value.as_deref()) {
                            Ok(r) => {
                                count += 1;
                                *replayed.entry(partition).or_default() += 1;
                                apply_loaded(&mut loaded, r);
                            }
                            Err(e) => {
                                tracing::warn!(partition, offset = record.offset, error = %e, "skipping bad record")
                            }
                        }
                    }
                }
                offset = read.next_offset;
            }
        }
        let now = self.now_ms();
        let mut groups = self.groups.lock();
        groups.retain(|id, _| !partitions.contains(&self.partition_of(id)));
        for (id, (meta, offsets)) in loaded {
            let mut group = match meta {
                Some(v) => Group::restore(
                    &id,
                    self.config.clone(),
                    v.generation_id,
                    Some(v.protocol_type).filter(|t| !t.is_empty()),
                    v.protocol_name,
                    v.leader_id,
                    v.state_timestamp_ms,
                    v.members,
                    now,
                ),
                None => Group::new(&id, self.config.clone(), wall_now_ms()),
            };
            group.offsets = offsets;
            self.schedule(&group);
            groups.insert(id, group);
        }
        tracing::debug!(
            ?partitions,
            groups = groups.len(),
            records = count,
            "offsets partitions replayed"
        );
        drop(groups);
        // Compact partitions whose replay was long, before clients arrive.
        for (partition, n) in replayed {
            self.appended_since_snapshot.lock().insert(partition, n);
            if n >= self
                .snapshot_after_records
                .load(std::sync::atomic::Ordering::Relaxed)
            {
                self.snapshot_blocking(broker, partition);
            }
        }
        Ok(())
    }
}

type Loaded = HashMap<String, (Option<GroupValue>, BTreeMap<(String, i32), CommittedOffset>)>;

fn apply_loaded(loaded: &mut Loaded, record: OffsetsRecord) {
    match record {
        OffsetsRecord::Offset {
            group,
            topic,
            partition,
            value,
        } => {
            let entry = loaded.entry(group).or_default();
            match value {
                Some(v) => {
                    entry.1.insert(
                        (topic, partition),
                        CommittedOffset {
                            offset: v.offset,
                            leader_epoch: v.leader_epoch,
                            metadata: v.metadata,
                            commit_timestamp_ms: v.commit_timestamp_ms,
                        },
                    );
                }
                None => {
                    entry.1.remove(&(topic, partition));
                }
            }
        }
        OffsetsRecord::Group {
            group,
            value: Some(v),
        } => {
            loaded.entry(group).or_default().0 = Some(v);
        }
        OffsetsRecord::Group { group, value: None } => {
            loaded.remove(&group);
        }
    }
}

/// The group's metadata as a `__consumer_offsets` record.
fn group_record(g: &Group) -> OffsetsRecord {
    let protocol = g.protocol_name.clone().unwrap_or_default();
    OffsetsRecord::Group {
        group: g.group_id.clone(),
        value: Some(GroupValue {
            protocol_type: g.protocol_type.clone().unwrap_or_default(),
            generation_id: g.generation_id,
            protocol_name: g.protocol_name.clone(),
            leader_id: g.leader_id.clone(),
            state_timestamp_ms: g.state_timestamp_ms,
            members: g
                .members
                .values()
                .map(|m| super::group::RestoredMember {
                    member_id: m.member_id.clone(),
                    group_instance_id: m.group_instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    rebalance_timeout_ms: m.rebalance_timeout_ms,
                    session_timeout_ms: m.session_timeout_ms,
                    subscription: m.metadata(&protocol),
                    assignment: m.assignment.clone(),
                })
                .collect(),
        }),
    }
}

/// Work applied to the group map right after a successful append, under the
/// partition's append lock.
type AfterAppend = Box<dyn FnOnce(&mut HashMap<String, Group>) + Send>;

/// Encodes records as one or more uncompressed v2 batches, each well under
/// the topic's `max.message.bytes`.
fn encode_batches(records: &[OffsetsRecord], now: i64) -> Result<BytesMut, ResponseError> {
    let mut out = BytesMut::new();
    let mut chunk: Vec<Record> = Vec::new();
    let mut chunk_bytes = 0usize;
    let flush = |chunk: &mut Vec<Record>, out: &mut BytesMut| -> Result<(), ResponseError> {
        if chunk.is_empty() {
            return Ok(());
        }
        RecordBatchEncoder::encode(
            out,
            chunk.iter(),
            &RecordEncodeOptions {
                version: 2,
                compression: Compression::None,
            },
        )
        .map_err(|e| {
            tracing::error!(error = %e, "cannot encode group records");
            ResponseError::UnknownServerError
        })?;
        chunk.clear();
        Ok(())
    };
    for r in records {
        let (key, value) = r.encode();
        let size = key.len() + value.as_ref().map_or(0, |v| v.len()) + 32;
        if chunk_bytes + size > SNAPSHOT_BATCH_BYTES_MAX {
            flush(&mut chunk, &mut out)?;
            chunk_bytes = 0;
        }
        chunk_bytes += size;
        let i = chunk.len();
        chunk.push(Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            // The encoder starts a new batch when offset - sequence changes;
            // keep it constant so a chunk stays one batch.
            sequence: i as i32,
            timestamp: now,
            key: Some(key),
            value,
            headers: Default::default(),
        });
    }
    flush(&mut chunk, &mut out)?;
    Ok(out)
}

impl GroupCoordinator {
    /// Appends records to a `__consumer_offsets` partition and returns once
    /// they are as durable as any acknowledged produce; `after` then runs under
    /// the partition's append lock. Every so many records, the partition is
    /// rewritten as a snapshot of the live state (see [`Self::snapshot_blocking`]).
    async fn append(
        &self,
        broker: &Arc<Broker>,
        partition: i32,
        records: Vec<OffsetsRecord>,
        after: Option<AfterAppend>,
    ) -> Result<(), ResponseError> {
        let b = broker.clone();
        let result = crate::api::blocking(move || {
            let coordinator = b.groups.clone();
            let lock = coordinator
                .append_locks
                .get(partition as usize)
                .ok_or(ResponseError::CoordinatorNotAvailable)?;
            let _guard = lock.lock();
            let target = b
                .replicas
                .get(OFFSETS_TOPIC, partition)
                .ok_or(ResponseError::CoordinatorNotAvailable)?;
            let now = wall_now_ms();
            let buf = encode_batches(&records, now)?;
            target.append_blocking(&buf, now).map_err(|e| {
                tracing::error!(partition, error = %e, "cannot persist group records");
                ResponseError::CoordinatorNotAvailable
            })?;
            if let Some(after) = after {
                after(&mut coordinator.groups.lock());
            }
            let since = coordinator.note_appended(partition, records.len());
            if since
                >= coordinator
                    .snapshot_after_records
                    .load(std::sync::atomic::Ordering::Relaxed)
            {
                coordinator.snapshot_blocking(&b, partition);
            }
            Ok(())
        })
        .await;
        match result {
            Ok(inner) => inner,
            Err(_) => Err(ResponseError::CoordinatorNotAvailable),
        }
    }

    /// Counts records appended to a partition since its last snapshot.
    fn note_appended(&self, partition: i32, count: usize) -> usize {
        let mut counts = self.appended_since_snapshot.lock();
        let slot = counts.entry(partition).or_default();
        *slot += count;
        *slot
    }

    /// Compacts one `__consumer_offsets` partition without a log cleaner:
    /// appends the live state (every group and offset of the partition) and
    /// moves the log start offset to the first snapshot record, so whole old
    /// segments are deleted. Callers hold the partition's append lock (or run
    /// before the broker serves), so no record can land between the state
    /// read and the new log start. Blocking.
    fn snapshot_blocking(&self, broker: &Broker, partition: i32) {
        let Some(target) = broker.replicas.get(OFFSETS_TOPIC, partition) else {
            return;
        };
        let records: Vec<OffsetsRecord> = {
            let groups = self.groups.lock();
            let mut out = Vec::new();
            for g in groups.values() {
                if self.partition_of(&g.group_id) != partition {
                    continue;
                }
                if g.generation_id > 0 || !g.members.is_empty() {
                    out.push(group_record(g));
                }
                for ((topic, p), o) in &g.offsets {
                    out.push(OffsetsRecord::Offset {
                        group: g.group_id.clone(),
                        topic: topic.clone(),
                        partition: *p,
                        value: Some(OffsetValue {
                            offset: o.offset,
                            leader_epoch: o.leader_epoch,
                            metadata: o.metadata.clone(),
                            commit_timestamp_ms: o.commit_timestamp_ms,
                        }),
                    });
                }
            }
            out
        };
        let now = wall_now_ms();
        let new_start = if records.is_empty() {
            target.log_end_offset()
        } else {
            let appended = encode_batches(&records, now).and_then(|buf| {
                target
                    .append_blocking(&buf, now)
                    .map_err(|_| ResponseError::CoordinatorNotAvailable)
            });
            match appended {
                Ok(info) => info.base_offset,
                Err(e) => {
                    tracing::warn!(partition, ?e, "offsets snapshot not written");
                    return;
                }
            }
        };
        // Through the partition's group: every replica drops the old records.
        match target.advance_log_start_blocking(new_start) {
            Ok(low) => tracing::info!(
                partition,
                live_records = records.len(),
                log_start_offset = low,
                "compacted __consumer_offsets partition"
            ),
            Err(e) => {
                tracing::warn!(partition, error = %e, "offsets snapshot: cannot move the log start")
            }
        }
        self.appended_since_snapshot.lock().insert(partition, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigSources;

    /// A broker on `dir` without client listeners; [`close_broker`] stops it.
    async fn open_broker(dir: &std::path::Path, snapshot_after: usize) -> Arc<Broker> {
        let mut sources = ConfigSources::new();
        sources
            .set("log.dirs", dir.display().to_string())
            .expect("known key");
        sources
            .set("offsets.topic.num.partitions", "2")
            .expect("known key");
        // A lone node needs no CONTROLLER listener (none is bound).
        sources
            .set("listeners", "PLAINTEXT://127.0.0.1:0")
            .expect("known key");
        // The broker runs until the process ends: its shutdown never fires.
        let (stop, stop_rx) = watch::channel(false);
        std::mem::forget(stop);
        let broker = Broker::start(sources, stop_rx)
            .await
            .expect("broker starts")
            .broker;
        broker
            .groups
            .snapshot_after_records
            .store(snapshot_after, std::sync::atomic::Ordering::Relaxed);
        broker
    }

    /// Stops what [`open_broker`] started, so the directory can be reopened.
    async fn close_broker(broker: Arc<Broker>) {
        broker.metadata.stop().await;
        let b = broker.clone();
        tokio::task::spawn_blocking(move || b.replicas.shutdown())
            .await
            .expect("shutdown");
        drop(broker);
    }

    fn offset(o: i64) -> CommittedOffset {
        CommittedOffset {
            offset: o,
            leader_epoch: -1,
            metadata: String::new(),
            commit_timestamp_ms: wall_now_ms(),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn committed_offsets_survive_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let broker = open_broker(dir.path(), SNAPSHOT_AFTER_RECORDS).await;
        broker
            .groups
            .commit_offsets(
                &broker,
                "g",
                "",
                None,
                -1,
                vec![("t".into(), 0, offset(41)), ("t".into(), 1, offset(7))],
            )
            .await
            .expect("commit");
        close_broker(broker).await;
        let broker = open_broker(dir.path(), SNAPSHOT_AFTER_RECORDS).await;
        let found = broker.groups.fetch_offsets("g", None);
        assert_eq!(found.len(), 1);
        let offsets: Vec<(i32, i64)> = found[0]
            .1
            .iter()
            .map(|(p, o)| (*p, o.as_ref().map_or(-1, |o| o.offset)))
            .collect();
        assert_eq!(offsets, vec![(0, 41), (1, 7)]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn offsets_partitions_are_compacted_by_snapshots_without_losing_state() {
        let dir = tempfile::tempdir().expect("tempdir");
        let broker = open_broker(dir.path(), 50).await;
        for i in 0..400 {
            broker
                .groups
                .commit_offsets(&broker, "g", "", None, -1, vec![("t".into(), 0, offset(i))])
                .await
                .expect("commit");
        }
        let partition = broker.groups.partition_of("g");
        let log = broker
            .replicas
            .get(OFFSETS_TOPIC, partition)
            .expect("partition");
        assert!(
            log.log_start_offset() >= 350,
            "old commits were not trimmed: log start {}",
            log.log_start_offset()
        );
        close_broker(broker).await;
        let broker = open_broker(dir.path(), 50).await;
        // The start waits for the replay only so long (LONE_LOAD_WAIT): on
        // a loaded machine, wait here until the group is coordinated.
        tokio::time::timeout(Duration::from_secs(30), async {
            while broker.groups.coordinates(&broker, "g").is_err() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the offsets partition is replayed");
        let found = broker
            .groups
            .fetch_offsets("g", Some(vec![("t".into(), vec![0])]));
        assert_eq!(found[0].1[0].1.as_ref().map(|o| o.offset), Some(399));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_group_with_members_is_restored_stable_after_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let broker = open_broker(dir.path(), SNAPSHOT_AFTER_RECORDS).await;
        let join = |member_id: &str| JoinRequest {
            member_id: member_id.to_string(),
            group_instance_id: None,
            client_id: "c".into(),
            client_host: "/127.0.0.1".into(),
            session_timeout_ms: 30_000,
            rebalance_timeout_ms: 30_000,
            protocol_type: "consumer".into(),
            protocols: vec![("range".into(), bytes::Bytes::from_static(b"meta"))],
            require_known_member_id: false,
        };
        let (stop, stop_rx) = watch::channel(false);
        let timers = tokio::spawn(broker.groups.clone().run_timers(broker.clone(), stop_rx));
        // Default group.initial.rebalance.delay.ms: the scheduler ends the join.
        let joined = tokio::time::timeout(
            Duration::from_secs(10),
            broker.groups.join(&broker, "g", join("")),
        )
        .await
        .expect("join completes");
        assert_eq!(joined.error, None);
        let synced = broker
            .groups
            .sync(
                &broker,
                "g",
                &joined.member_id,
                None,
                joined.generation_id,
                (None, None),
                vec![(joined.member_id.clone(), bytes::Bytes::from_static(b"asg"))],
            )
            .await;
        assert_eq!(synced.error, None);
        assert_eq!(synced.assignment, bytes::Bytes::from_static(b"asg"));
        // The timers hold the broker (and its log-dir lock): stop them first.
        stop.send(true).expect("timers listen");
        timers.await.expect("timers stop");
        close_broker(broker).await;
        let broker = open_broker(dir.path(), SNAPSHOT_AFTER_RECORDS).await;
        let described = broker.groups.describe("g");
        assert_eq!(described.state, "Stable");
        assert_eq!(described.members.len(), 1);
        assert_eq!(described.members[0].5, bytes::Bytes::from_static(b"asg"));
        // The restored member keeps its generation: a heartbeat is accepted.
        let error = broker
            .groups
            .heartbeat(&broker, "g", &joined.member_id, None, joined.generation_id)
            .await;
        assert_eq!(error, None);
    }
}
