//! One partition's Raft group on this node: the [`PartitionStore`] over the
//! partition's log, a state machine that moves the high watermark to the
//! end of what is committed, its `Raft`, its place in the registry, and
//! produce through the leader.
//!
//! The high watermark is the commit point: every replica's segments may hold
//! batches above it (appended, not yet committed), and only the state
//! machine moves it, once a majority holds them.
//!
//! Not yet: the group keeps openraft's own timers (the node-level election
//! driver comes with wiring it into the broker); snapshots are never taken,
//! so the entry index is never purged and a replica is never rebuilt from a
//! snapshot (a replica too far behind needs the leader's segments: later);
//! the applied state is not saved, so a restart re-applies the committed
//! entries (reading their batches once).

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;
use openraft::storage::RaftStateMachine;
use openraft::{
    BasicNode, Config, Entry, EntryPayload, LogId, Raft, RaftSnapshotBuilder, SnapshotMeta,
    SnapshotPolicy, StorageError, StorageIOError, StoredMembership,
};
use parking_lot::Mutex;
use tokio::sync::watch;

use super::entry_log::io_error;
use super::group::{bootstrap, GroupTimers};
use super::network::{GroupNetwork, Registry};
use super::partition_store::{
    AppendOutcome, PartitionApplied, PartitionEntry, PartitionStore, PartitionTypes,
};
use super::transfer::{self, HandOver, Resignation};
use super::transport::Transport;
use super::types::{GroupId, NodeId};
use crate::log::batch::Batches;
use crate::log::{PartitionLog, Validated};

type Snapshot = openraft::Snapshot<PartitionTypes>;

struct MachineInner {
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, BasicNode>,
    snapshot: Option<(SnapshotMeta<NodeId, BasicNode>, Vec<u8>)>,
    snapshots_built: u64,
}

/// A partition group's state machine: the high watermark. Clones share it.
#[derive(Clone)]
pub struct PartitionMachine {
    inner: Arc<Mutex<MachineInner>>,
    high_watermark: Arc<watch::Sender<i64>>,
}

impl PartitionMachine {
    /// Moves `high_watermark` (which the partition's readers watch) as
    /// entries are applied; it only ever grows.
    pub fn new(high_watermark: Arc<watch::Sender<i64>>) -> Self {
        PartitionMachine {
            inner: Arc::new(Mutex::new(MachineInner {
                last_applied: None,
                membership: StoredMembership::default(),
                snapshot: None,
                snapshots_built: 0,
            })),
            high_watermark,
        }
    }

    pub fn high_watermark(&self) -> watch::Receiver<i64> {
        self.high_watermark.subscribe()
    }
}

/// The offset after the last record of `records` (`None` if it holds none).
fn end_offset(records: &[u8]) -> Option<i64> {
    Batches::new(records)
        .filter_map(|b| b.ok())
        .last()
        .map(|(_, b)| b.header().last_offset() + 1)
}

impl RaftSnapshotBuilder<PartitionTypes> for PartitionMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError<NodeId>> {
        let mut inner = self.inner.lock();
        inner.snapshots_built += 1;
        let meta = SnapshotMeta {
            last_log_id: inner.last_applied,
            last_membership: inner.membership.clone(),
            snapshot_id: format!("hw-{}", inner.snapshots_built),
        };
        let data = self.high_watermark.borrow().to_be_bytes().to_vec();
        inner.snapshot = Some((meta.clone(), data.clone()));
        Ok(Snapshot {
            meta,
            snapshot: Box::new(data),
        })
    }
}

impl RaftStateMachine<PartitionTypes> for PartitionMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>), StorageError<NodeId>>
    {
        let inner = self.inner.lock();
        Ok((inner.last_applied, inner.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<PartitionApplied>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<PartitionTypes>> + Send,
        I::IntoIter: Send,
    {
        let mut inner = self.inner.lock();
        let mut answers = Vec::new();
        for entry in entries {
            inner.last_applied = Some(entry.log_id);
            match &entry.payload {
                EntryPayload::Normal(PartitionEntry::Records { records }) => {
                    if let Some(end) = end_offset(records) {
                        self.high_watermark.send_if_modified(|hw| {
                            let moved = end > *hw;
                            *hw = (*hw).max(end);
                            moved
                        });
                    }
                }
                // Stored entries are always read back as `Records`.
                EntryPayload::Normal(PartitionEntry::Produce { .. }) | EntryPayload::Blank => {}
                EntryPayload::Membership(m) => {
                    inner.membership = StoredMembership::new(Some(entry.log_id), m.clone());
                }
            }
            answers.push(PartitionApplied);
        }
        Ok(answers)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Vec<u8>>, StorageError<NodeId>> {
        Ok(Box::default())
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        _snapshot: Box<Vec<u8>>,
    ) -> Result<(), StorageError<NodeId>> {
        Err(StorageIOError::read_snapshot(
            Some(meta.signature()),
            &io_error("rebuilding a partition replica from a snapshot is not supported yet"),
        )
        .into())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError<NodeId>> {
        Ok(self
            .inner
            .lock()
            .snapshot
            .as_ref()
            .map(|(meta, data)| Snapshot {
                meta: meta.clone(),
                snapshot: Box::new(data.clone()),
            }))
    }
}

/// Why a produce was not appended by this node.
#[derive(Debug, thiserror::Error)]
pub enum ProduceError {
    /// Another node leads the group (the one this node knows of, if any):
    /// Kafka's NOT_LEADER_OR_FOLLOWER.
    #[error("not the leader (leader: {0:?})")]
    NotLeader(Option<NodeId>),
    /// Fewer replicas are in sync than `min.insync.replicas` asks
    /// (NOT_ENOUGH_REPLICAS).
    #[error("{in_sync} replicas in sync, min.insync.replicas is {required}")]
    NotEnoughReplicas { in_sync: usize, required: usize },
    #[error("{0}")]
    Raft(String),
}

/// Most produce entries one group holds proposed but not yet committed
/// (acks=1 answers before the commit; this bounds what they leave behind).
pub const UNCOMMITTED_PRODUCES_MAX: usize = 4096;

type CommitReceiver =
    tokio::sync::oneshot::Receiver<openraft::raft::ClientWriteResult<PartitionTypes>>;

/// A produce entry handed to the group's Raft, in log order with the ones
/// handed before it; await what the producer asked for.
pub struct Pending {
    _waiting: Waiting,
    appended: tokio::sync::oneshot::Receiver<AppendOutcome>,
    committed: CommitReceiver,
    permit: tokio::sync::OwnedSemaphorePermit,
}

impl Pending {
    /// acks=all: the append's outcome once a majority holds it.
    pub async fn committed(mut self) -> Result<AppendOutcome, ProduceError> {
        let result = (&mut self.committed).await;
        commit_result(result)?;
        (&mut self.appended)
            .await
            .map_err(|_| ProduceError::Raft("committed without an append outcome".to_string()))
    }

    /// acks=1: the outcome once this leader has appended it (it may still
    /// be lost in a failover, as in Kafka). The commit is awaited in the
    /// background, holding the group's uncommitted budget.
    pub async fn appended(mut self) -> Result<AppendOutcome, ProduceError> {
        tokio::select! {
            outcome = &mut self.appended => {
                let Pending { committed, permit, .. } = self;
                tokio::spawn(async move {
                    let _ = committed.await;
                    drop(permit);
                });
                outcome.map_err(|_| ProduceError::Raft("the append was dropped".to_string()))
            }
            result = &mut self.committed => {
                commit_result(result)?;
                (&mut self.appended)
                    .await
                    .map_err(|_| ProduceError::Raft("committed without an append outcome".to_string()))
            }
        }
    }
}

/// Drops a producer's wait in the store when the producer goes away.
struct Waiting {
    store: PartitionStore,
    token: u64,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.store.forget(self.token);
    }
}

fn commit_result(
    result: Result<
        openraft::raft::ClientWriteResult<PartitionTypes>,
        tokio::sync::oneshot::error::RecvError,
    >,
) -> Result<(), ProduceError> {
    match result {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => match e {
            openraft::error::ClientWriteError::ForwardToLeader(f) => {
                Err(ProduceError::NotLeader(f.leader_id))
            }
            other => Err(ProduceError::Raft(other.to_string())),
        },
        Err(_) => Err(ProduceError::Raft(
            "the partition's Raft stopped before committing".to_string(),
        )),
    }
}

/// Who leads a group, as this node knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Leadership {
    pub leader: Option<NodeId>,
    /// The Raft term: Kafka's leader epoch.
    pub term: u64,
    /// Whether this node leads, in `term`.
    pub is_me: bool,
}

/// A running partition group on this node.
pub struct PartitionGroup {
    pub id: GroupId,
    pub raft: Raft<PartitionTypes>,
    node: NodeId,
    store: PartitionStore,
    machine: PartitionMachine,
    registry: Arc<Registry>,
    uncommitted: Arc<tokio::sync::Semaphore>,
    /// For each follower: when it was last seen holding everything the
    /// leader had at the check before, and what the leader had at the last
    /// check (Kafka's lastCaughtUpTime and lastFetchLeaderLogEndOffset).
    caught_up: Mutex<BTreeMap<NodeId, (std::time::Instant, Option<u64>)>>,
    transport: Arc<Transport>,
    /// Set once the node hands the leadership away ([`resign`](Self::resign)):
    /// the group takes no more writes here.
    resigning: std::sync::atomic::AtomicBool,
    handing_over: tokio::sync::Mutex<()>,
    election: Mutex<ElectionCheck>,
    /// When the group started on this node.
    started: std::time::Instant,
}

/// What the node-level election driver remembers of one group.
#[derive(Default)]
struct ElectionCheck {
    /// Since when the group has had no reachable leader, as this node saw.
    leaderless_since: Option<std::time::Instant>,
    /// Whether it lost a leader it knew (rather than never knowing one, as
    /// after a restart, before the leader's first heartbeat).
    lost_a_leader: bool,
    /// When this node may start its next election of the group.
    next_try: Option<std::time::Instant>,
}

/// A pseudo-random number in `0..bound` (the retry jitter; not for keys).
fn jitter(bound: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish() % bound.max(1)
}

/// How long a group with no leader known (a restarted replica, say) waits
/// for the leader's heartbeat before its replicas start electing.
const LEADERLESS_GRACE: std::time::Duration = std::time::Duration::from_millis(1000);
/// Each replica after the first in line waits this much longer before it
/// runs, so that two rarely split the vote.
const ELECTION_RANK_DELAY: std::time::Duration = std::time::Duration::from_millis(150);
/// A replica whose election did not give the group a leader tries again
/// after this long (a follower that heard the old leader lately refuses
/// its vote for the leader lease, `election_timeout_max`), plus a random
/// part up to `ELECTION_RETRY_JITTER_MS`: two candidates retrying in step
/// would stay in the same term and split every vote, Raft's randomized
/// timeout keeps them apart.
const ELECTION_RETRY: std::time::Duration = std::time::Duration::from_millis(300);
const ELECTION_RETRY_JITTER_MS: u64 = 300;
/// A replica that started less than this long ago (a node that just came
/// back, likely still catching up) lets the others run first: it waits
/// [`LEADERLESS_GRACE`] more before each election. Its log is likely the
/// shorter one, so its elections would only delay the one that can win.
const FRESH_REPLICA: std::time::Duration = std::time::Duration::from_secs(5);

impl PartitionGroup {
    /// Starts the group over `log`, registers it for peers' requests, and
    /// (on the `preferred` voter, which then leads first; on the lowest one
    /// if `preferred` is not a voter) bootstraps it once a majority is fresh.
    #[allow(clippy::too_many_arguments)]
    pub async fn start(
        node: NodeId,
        id: GroupId,
        voters: BTreeMap<NodeId, BasicNode>,
        preferred: Option<NodeId>,
        log: Arc<Mutex<PartitionLog>>,
        high_watermark: Arc<watch::Sender<i64>>,
        sync: bool,
        timers: &GroupTimers,
        transport: Arc<Transport>,
        registry: Arc<Registry>,
        shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<Self> {
        let store = PartitionStore::open(log, sync)
            .with_context(|| format!("opening the Raft log of partition group {id}"))?;
        let committed = store.committed_end();
        high_watermark.send_if_modified(|hw| {
            let moved = committed > *hw;
            *hw = (*hw).max(committed);
            moved
        });
        let machine = PartitionMachine::new(high_watermark);
        let config = timers.config(
            id,
            Config {
                snapshot_policy: SnapshotPolicy::Never,
                // A lone voter needs no election timeout or heartbeat: it
                // elects itself when initialized and when it restarts
                // (`bootstrap`). Idle, it then costs nothing. Groups with
                // followers keep openraft's heartbeats; their elections are
                // started by the node ([`check_election`](Self::check_election)),
                // which knows at once when a peer's connection breaks.
                enable_tick: voters.len() > 1,
                enable_elect: false,
                ..Config::default()
            },
        )?;
        let network = GroupNetwork {
            transport: transport.clone(),
            group: id,
        };
        let raft = Raft::new(
            node,
            Arc::new(config),
            network,
            store.clone(),
            machine.clone(),
        )
        .await
        .with_context(|| format!("starting partition group {id}"))?;
        registry.insert(id, registry.service(raft.clone()));
        let initializer = preferred
            .filter(|p| voters.contains_key(p))
            .or_else(|| voters.keys().next().copied());
        if initializer == Some(node) {
            tokio::spawn(bootstrap::<PartitionTypes>(
                raft.clone(),
                id,
                voters,
                transport.clone(),
                shutdown,
            ));
        }
        Ok(PartitionGroup {
            id,
            raft,
            node,
            store,
            machine,
            registry,
            uncommitted: Arc::new(tokio::sync::Semaphore::new(UNCOMMITTED_PRODUCES_MAX)),
            caught_up: Mutex::new(BTreeMap::new()),
            transport,
            resigning: std::sync::atomic::AtomicBool::new(false),
            handing_over: tokio::sync::Mutex::new(()),
            election: Mutex::new(ElectionCheck::default()),
            started: std::time::Instant::now(),
        })
    }

    /// Hands a producer's validated batches to the group's Raft; this node
    /// must lead. Entries handed over in order are appended in that order.
    /// Waits while the group holds [`UNCOMMITTED_PRODUCES_MAX`] uncommitted
    /// produces (the caller bounds the wait).
    pub async fn submit(&self, validated: Validated, now_ms: i64) -> Result<Pending, ProduceError> {
        let leadership = self.leadership();
        if !leadership.is_me || self.resigning.load(std::sync::atomic::Ordering::Acquire) {
            return Err(ProduceError::NotLeader(
                leadership.leader.filter(|_| !leadership.is_me),
            ));
        }
        let permit = self
            .uncommitted
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ProduceError::Raft("the group is stopping".to_string()))?;
        let (token, appended) = self.store.expect();
        let entry = PartitionEntry::Produce {
            records: validated.bytes().clone(),
            checked: Some(validated),
            now_ms,
            token,
        };
        match self.raft.client_write_ff(entry).await {
            Ok(committed) => Ok(Pending {
                _waiting: Waiting {
                    store: self.store.clone(),
                    token,
                },
                appended,
                committed,
                permit,
            }),
            Err(fatal) => {
                self.store.forget(token);
                Err(ProduceError::Raft(fatal.to_string()))
            }
        }
    }

    /// [`submit`](Self::submit) for batches nobody validated yet (tests),
    /// awaiting the commit.
    pub async fn produce(
        &self,
        records: Bytes,
        now_ms: i64,
    ) -> Result<AppendOutcome, ProduceError> {
        let config = self.store.log_config();
        let validated =
            crate::log::validate_produce(&records, &config, now_ms).map(|v| v.into_owned(&records));
        match validated {
            Ok(v) => self.submit(v, now_ms).await?.committed().await,
            Err(e) => Ok(Err(e)),
        }
    }

    /// The commit point: no consumer reads at or above it.
    pub fn high_watermark(&self) -> watch::Receiver<i64> {
        self.machine.high_watermark()
    }

    /// The leader this node knows of, and its term (Kafka's leader epoch).
    pub fn leader(&self) -> (Option<NodeId>, u64) {
        let l = self.leadership();
        (l.leader, l.term)
    }

    /// Returns once the group knows a leader, or after `wait`.
    pub async fn wait_leader(&self, wait: std::time::Duration) -> Option<NodeId> {
        let mut metrics = self.raft.metrics();
        tokio::time::timeout(wait, async {
            loop {
                if let Some(leader) = metrics.borrow_and_update().current_leader {
                    return Some(leader);
                }
                metrics.changed().await.ok()?;
            }
        })
        .await
        .ok()
        .flatten()
    }

    /// Who leads, as this node knows it.
    pub fn leadership(&self) -> Leadership {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        Leadership {
            leader: m.current_leader,
            term: m.current_term,
            is_me: m.current_leader == Some(self.node) && m.state == openraft::ServerState::Leader,
        }
    }

    /// The voters of the group, as its membership says.
    pub fn voters(&self) -> Vec<NodeId> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let voters = m.membership_config.membership().voter_ids().collect();
        voters
    }

    /// Kafka's ISR, as the leader sees it: itself, and every voter that
    /// `alive` says is reachable and that, within the last `lag_max`
    /// (`replica.lag.time.max.ms`), held everything the leader had at the
    /// check before. `None` on a node that does not lead.
    pub fn in_sync(
        &self,
        lag_max: std::time::Duration,
        alive: impl Fn(NodeId) -> bool,
    ) -> Option<Vec<NodeId>> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        if m.current_leader != Some(self.node) || m.state != openraft::ServerState::Leader {
            return None;
        }
        let last = m.last_log_index;
        let now = std::time::Instant::now();
        let mut caught_up = self.caught_up.lock();
        let mut in_sync = vec![self.node];
        for voter in m.membership_config.membership().voter_ids() {
            if voter == self.node {
                continue;
            }
            let matched = m
                .replication
                .as_ref()
                .and_then(|r| r.get(&voter).copied().flatten())
                .map(|l| l.index);
            // A follower first seen now gets the benefit of the doubt, as a
            // new Kafka leader starts from the ISR it was given.
            let (seen, target) = caught_up.entry(voter).or_insert((now, last));
            if matched.is_some() && matched >= *target {
                *seen = now;
            }
            *target = last;
            if alive(voter) && now.duration_since(*seen) <= lag_max {
                in_sync.push(voter);
            }
        }
        in_sync.sort_unstable();
        Some(in_sync)
    }

    /// Whether `peer`, as this leader last heard, holds all but at most
    /// `behind` of the leader's entries (`false` on a node that does not
    /// lead).
    pub fn nearly_caught_up(&self, peer: NodeId, behind: u64) -> bool {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        if m.state != openraft::ServerState::Leader {
            return false;
        }
        let matched = m
            .replication
            .as_ref()
            .and_then(|r| r.get(&peer).copied().flatten())
            .map(|l| l.index);
        match (matched, m.last_log_index) {
            (Some(matched), Some(last)) => matched + behind >= last,
            _ => false,
        }
    }

    /// One check of the node-level election driver (`ReplicaManager::
    /// drive_elections`; openraft's own elections are off in groups with
    /// followers). Starts an election on this node when the group has no
    /// leader that `reachable` says is reachable and it is this node's turn:
    /// the reachable voters other than the old leader, by id, each wait
    /// [`ELECTION_RANK_DELAY`] times their place in line, and a group that
    /// never had a leader here waits [`LEADERLESS_GRACE`] first. Raft's vote
    /// decides the rest: a candidate with a shorter log loses, and the next
    /// in line runs. Returns whether it started an election.
    pub async fn check_election(&self, reachable: &(dyn Fn(NodeId) -> bool + Sync)) -> bool {
        use std::time::Instant;
        let now = Instant::now();
        let due = {
            let metrics = self.raft.metrics();
            let m = metrics.borrow();
            let voters: Vec<NodeId> = m.membership_config.membership().voter_ids().collect();
            let mut check = self.election.lock();
            let led = match m.current_leader {
                Some(l) if l == self.node => m.state == openraft::ServerState::Leader,
                Some(l) => reachable(l),
                None => false,
            };
            if led || voters.len() < 2 || !voters.contains(&self.node) {
                *check = ElectionCheck::default();
                return false;
            }
            if m.current_leader.is_some() {
                check.lost_a_leader = true;
            }
            let since = *check.leaderless_since.get_or_insert(now);
            let mut line: Vec<NodeId> = voters
                .iter()
                .copied()
                .filter(|&v| Some(v) != m.current_leader && (v == self.node || reachable(v)))
                .collect();
            line.sort_unstable();
            let rank = line.iter().position(|&v| v == self.node).unwrap_or(0) as u32;
            let fresh = now.duration_since(self.started) < FRESH_REPLICA;
            let mut wait = ELECTION_RANK_DELAY * rank;
            if !check.lost_a_leader || fresh {
                wait += LEADERLESS_GRACE;
            }
            let due =
                now.duration_since(since) >= wait && check.next_try.is_none_or(|at| now >= at);
            if due {
                let backoff = if fresh {
                    LEADERLESS_GRACE
                } else {
                    std::time::Duration::ZERO
                };
                check.next_try = Some(
                    now + ELECTION_RETRY
                        + backoff
                        + std::time::Duration::from_millis(jitter(ELECTION_RETRY_JITTER_MS)),
                );
            }
            due
        };
        if due {
            tracing::debug!(group = %self.id, "starting an election: no reachable leader");
            let _ = self.raft.trigger().elect().await;
        }
        due
    }

    /// Kafka's OffsetForLeaderEpoch from this replica's epoch map.
    pub fn end_offset_for_epoch(&self, epoch: i32) -> (i32, i64) {
        self.store.end_offset_for_epoch(epoch)
    }

    /// Hands the leadership to a caught-up follower (see
    /// [`transfer`](super::transfer)), within `wait`, taking no writes
    /// meanwhile. [`HandOver::Leaving`]: this node stops (Kafka's controlled
    /// shutdown), and takes no writes from now on. [`HandOver::To`]: to the
    /// preferred leader; writes resume here if it does not take over.
    pub async fn resign(&self, how: HandOver, wait: std::time::Duration) -> Resignation {
        use std::sync::atomic::Ordering;
        // One hand-over at a time: a shutdown waits for a rebalance's.
        let _one = self.handing_over.lock().await;
        self.resigning.store(true, Ordering::Release);
        let outcome =
            transfer::resign(&self.raft, self.node, self.id, &self.transport, how, wait).await;
        if how != HandOver::Leaving {
            self.resigning.store(false, Ordering::Release);
        }
        outcome
    }

    /// Leaves the registry and stops the group's Raft.
    pub async fn stop(&self) {
        self.registry.remove(&self.id);
        let _ = self.raft.shutdown().await;
    }
}

#[cfg(test)]
mod tests;
