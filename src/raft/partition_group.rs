//! One partition's Raft group on this node: the [`PartitionStore`] over the
//! partition's log, a state machine that moves the high watermark to the
//! end of what is committed, its `Raft`, its place in the registry, and
//! produce through the leader.
//!
//! The high watermark is the commit point: every replica's segments may hold
//! batches above it (appended, not yet committed), and only the state
//! machine moves it, once a majority holds them.
//!
//! openraft's own timers are off (no per-group heartbeats, ticks or
//! election timeouts): the node's heartbeat to each peer says which groups
//! it leads (`leaders`), and the node-level election driver
//! ([`PartitionGroup::check_election`]) starts an election only where a
//! group's leader is gone.
//!
//! A replica that missed entries gets them from the leader's entry index,
//! which is purged only as far as every voter holds the log
//! ([`PartitionGroup::maybe_purge`]): so no snapshot ever has to carry
//! records. Entries whose batches the log start has passed (retention,
//! DeleteRecords) go out empty, and the replica restarts its log at the
//! leader's next batch: it is rebuilt from the leader's segments. The cost:
//! while a voter is down, the index keeps every entry since (tens of bytes
//! each, on disk and in memory). The applied state is not saved, so a restart re-applies the
//! committed entries (reading their batches once).

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
use tokio::time::Instant;

use super::entry_log::io_error;
use super::group::{bootstrap, GroupTimers};
use super::leaders::Led;
use super::network::{pre_vote, GroupNetwork, PreVoteJudge, Registry};
use super::partition_store::{
    AppendOutcome, Durability, PartitionApplied, PartitionEntry, PartitionStore, PartitionTypes,
    RecentBatches,
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
    /// The term of `last_applied` once its apply finished, log start moves
    /// included: what [`PartitionGroup::leads_settled`] asks.
    applied_term: Option<u64>,
}

/// A partition group's state machine: the high watermark, and the log
/// start offset. Clones share it.
#[derive(Clone)]
pub struct PartitionMachine {
    inner: Arc<Mutex<MachineInner>>,
    high_watermark: Arc<watch::Sender<i64>>,
    log: Arc<Mutex<PartitionLog>>,
    recent: RecentBatches,
}

impl PartitionMachine {
    /// Moves `high_watermark` (which the partition's readers watch) as
    /// entries are applied; it only ever grows. Committed
    /// [`PartitionEntry::LogStart`] entries move `log`'s start. `purged`:
    /// the store's last purged entry and the membership there, where
    /// applying starts (the purged entries are gone). `recent`: the store's
    /// batches of unapplied entries, released as they are applied.
    pub fn new(
        high_watermark: Arc<watch::Sender<i64>>,
        log: Arc<Mutex<PartitionLog>>,
        purged: Option<(LogId<NodeId>, StoredMembership<NodeId, BasicNode>)>,
        recent: RecentBatches,
    ) -> Self {
        let (last_applied, membership) = match purged {
            Some((id, membership)) => (Some(id), membership),
            None => (None, StoredMembership::default()),
        };
        PartitionMachine {
            inner: Arc::new(Mutex::new(MachineInner {
                last_applied,
                membership,
                snapshot: None,
                snapshots_built: 0,
                applied_term: last_applied.map(|l: LogId<NodeId>| l.leader_id.term),
            })),
            high_watermark,
            log,
            recent,
        }
    }

    pub fn high_watermark(&self) -> watch::Receiver<i64> {
        self.high_watermark.subscribe()
    }

    /// The term of the last entry whose apply finished (a log start it
    /// moved is in place).
    fn applied_term(&self) -> Option<u64> {
        self.inner.lock().applied_term
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

impl PartitionMachine {
    /// Applies `entries` but for moving the log start: the answers, and the
    /// highest log start offset they ask for.
    fn apply_entries(
        &self,
        entries: impl IntoIterator<Item = Entry<PartitionTypes>>,
    ) -> (Vec<PartitionApplied>, Option<i64>) {
        let mut log_start = None;
        let mut answers = Vec::new();
        let mut inner = self.inner.lock();
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
                EntryPayload::Normal(PartitionEntry::LogStart { offset }) => {
                    log_start = log_start.max(Some(*offset));
                }
                // Stored entries are always read back as `Records`.
                EntryPayload::Normal(PartitionEntry::Produce { .. }) | EntryPayload::Blank => {}
                EntryPayload::Membership(m) => {
                    inner.membership = StoredMembership::new(Some(entry.log_id), m.clone());
                }
            }
            answers.push(PartitionApplied);
        }
        (answers, log_start)
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
        let (answers, log_start) = self.apply_entries(entries);
        if let Some(applied) = self.inner.lock().last_applied {
            self.recent.forget_through(applied.index);
        }
        if let Some(offset) = log_start {
            // Deletes segment files: off the async workers. Re-applied
            // after a restart, where it finds the start already there.
            let log = self.log.clone();
            let moved = tokio::task::spawn_blocking(move || {
                let mut log = log.lock();
                // A replica that never received the records below (the
                // leader sent them empty: already gone there) starts there.
                if offset > log.log_end_offset() {
                    log.start_at(offset)
                } else {
                    log.delete_records_before(offset).map(|_| ())
                }
            })
            .await;
            match moved {
                Ok(Ok(_)) => {}
                Ok(Err(error)) => {
                    tracing::warn!(%error, offset, "moving the log start offset failed")
                }
                Err(error) => tracing::warn!(%error, "moving the log start offset failed"),
            }
        }
        let new_term = {
            let mut inner = self.inner.lock();
            let term = inner.last_applied.map(|l| l.leader_id.term);
            std::mem::replace(&mut inner.applied_term, term) != term
        };
        if new_term {
            // Entries of a new term (a new leader's blank entry first):
            // reads waiting for the leader to settle
            // ([`PartitionGroup::leads_settled`]) look again.
            self.high_watermark.send_modify(|_| {});
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

/// How often an acks=all produce waiting for its commit checks that its
/// leader can still commit ([`PartitionGroup::lost_standing`]).
const STANDING_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

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
            biased;
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
    caught_up: Mutex<BTreeMap<NodeId, (Instant, Option<u64>)>>,
    transport: Arc<Transport>,
    /// Set once the node hands the leadership away ([`resign`](Self::resign)):
    /// the group takes no more writes here.
    resigning: std::sync::atomic::AtomicBool,
    handing_over: tokio::sync::Mutex<()>,
    election: Mutex<ElectionCheck>,
    watch: Arc<LeaderWatch>,
    /// Set while an election attempt (pre-vote, then vote) runs.
    electing: Arc<std::sync::atomic::AtomicBool>,
    observed: Mutex<Observed>,
    /// openraft's leader lease (`election_timeout_max`): a follower that
    /// heard its leader within it refuses to vote for anyone else.
    lease: std::time::Duration,
    /// See `GroupTimers::purge_keep_entries` and `purge_step_entries`.
    purge_keep_entries: u64,
    purge_step_entries: u64,
    /// When [`maybe_purge`](Self::maybe_purge) last looked.
    purge_checked: Mutex<Instant>,
    /// What the followers were last told: the commit point, and how many
    /// connections to them had been made then (see `maybe_tell_commit`).
    told: Mutex<(Option<LogId<NodeId>>, u64)>,
}

/// How often a group looks whether its entry index can be purged.
const PURGE_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// What the node-level election driver remembers of one group.
#[derive(Default)]
struct ElectionCheck {
    /// Since when the group has had no reachable leader, as this node saw.
    leaderless_since: Option<Instant>,
    /// Whether it lost a leader it knew (rather than never knowing one, as
    /// after a restart, before the leader's first heartbeat).
    lost_a_leader: bool,
    /// When this node may start its next election of the group.
    next_try: Option<Instant>,
}

/// The driver's reading of the group's Raft metrics, refreshed only when
/// openraft published new ones (a version check on the watch channel), so
/// that the node-level driver looks at an idle group for next to nothing.
struct Observed {
    metrics: watch::Receiver<openraft::RaftMetrics<NodeId, BasicNode>>,
    leadership: Leadership,
    vote: openraft::Vote<NodeId>,
    /// The voters, read again only when the membership changes.
    voters: Vec<NodeId>,
    membership: Option<LogId<NodeId>>,
    /// The ISR last put in the heartbeat report: the term, when, and who.
    reported: Option<(u64, Instant, Vec<NodeId>)>,
}

impl Observed {
    fn new(
        mut metrics: watch::Receiver<openraft::RaftMetrics<NodeId, BasicNode>>,
        node: NodeId,
    ) -> Self {
        let (leadership, vote, voters, membership) = {
            let m = metrics.borrow_and_update();
            (
                leadership_of(&m, node),
                m.vote,
                m.membership_config.membership().voter_ids().collect(),
                *m.membership_config.log_id(),
            )
        };
        Observed {
            metrics,
            leadership,
            vote,
            voters,
            membership,
            reported: None,
        }
    }

    fn refresh(&mut self, node: NodeId, group: GroupId) {
        if !self.metrics.has_changed().unwrap_or(false) {
            return;
        }
        let m = self.metrics.borrow_and_update();
        let was = self.leadership;
        self.leadership = leadership_of(&m, node);
        self.vote = m.vote;
        let now = self.leadership;
        if now.is_me && (!was.is_me || was.term != now.term) {
            tracing::info!(%group, epoch = now.term, "leading the partition");
        } else if was.is_me && !now.is_me {
            tracing::info!(%group, epoch = now.term, leader = ?now.leader, "no longer leading the partition");
        }
        if *m.membership_config.log_id() != self.membership {
            self.membership = *m.membership_config.log_id();
            self.voters = m.membership_config.membership().voter_ids().collect();
        }
    }
}

fn leadership_of(m: &openraft::RaftMetrics<NodeId, BasicNode>, node: NodeId) -> Leadership {
    Leadership {
        leader: m.current_leader,
        term: m.current_term,
        is_me: m.current_leader == Some(node) && m.state == openraft::ServerState::Leader,
    }
}

/// How often a leader recomputes the ISR it reports while its term lasts
/// (Metadata on nodes without a replica shows it; Kafka's ISR moves on
/// the scale of `replica.lag.time.max.ms`).
const ISR_REPORT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// The leader a follower knows, and since when it knows it: a new leader
/// is trusted for the transport's `dead_after` before its heartbeat report
/// must name the group.
#[derive(Clone, Copy)]
struct KnownLeader {
    node: NodeId,
    term: u64,
    since: Instant,
}

/// Whether a follower's leader is still there; shared by the group's
/// election check and its answers to peers' pre-votes.
struct LeaderWatch {
    group: GroupId,
    transport: Arc<Transport>,
    known: Mutex<Option<KnownLeader>>,
    /// The last uncommitted vote seen here (a candidacy: this node's own,
    /// or one it granted), and since when.
    candidacy: Mutex<Option<(u64, NodeId, Instant)>>,
}

impl LeaderWatch {
    /// The candidate whose election is under way, as this replica's vote
    /// says (it voted for it, or it is the candidate itself, in the current
    /// term, and no leader came of it yet), if that started less than
    /// [`CANDIDACY_WAIT`] ago. Meanwhile no one else should run: a second
    /// election would only take the term from a candidate about to win.
    fn candidate_running(&self, vote: &openraft::Vote<NodeId>, now: Instant) -> Option<NodeId> {
        let voted_for = vote
            .leader_id()
            .voted_for()
            .filter(|_| !vote.is_committed());
        let mut candidacy = self.candidacy.lock();
        let Some(candidate) = voted_for else {
            *candidacy = None;
            return None;
        };
        let term = vote.leader_id().term;
        let since = match *candidacy {
            Some((t, c, since)) if t == term && c == candidate => since,
            _ => {
                *candidacy = Some((term, candidate, now));
                now
            }
        };
        (now.duration_since(since) < CANDIDACY_WAIT).then_some(candidate)
    }

    /// Whether `leader`, which this follower knows leads the group in
    /// `term`, is still there: its node is reachable, and its heartbeat
    /// report names this group in `term` or later (a leader this node
    /// learned of lately is trusted for the transport's `dead_after` before
    /// its report must say so). A leader that restarted, or stepped down
    /// without this node hearing of it, drops out of its report.
    fn is_there(
        &self,
        leader: NodeId,
        term: u64,
        reachable: &(dyn Fn(NodeId) -> bool + Sync),
        now: Instant,
    ) -> bool {
        if !reachable(leader) {
            return false;
        }
        let dead_after = self.transport.config().dead_after;
        let since = {
            let mut known = self.known.lock();
            match *known {
                Some(k) if k.node == leader && k.term == term => k.since,
                _ => {
                    *known = Some(KnownLeader {
                        node: leader,
                        term,
                        since: now,
                    });
                    now
                }
            }
        };
        now.duration_since(since) < dead_after
            || self
                .transport
                .leaders()
                .claimed_term(leader, &self.group, dead_after)
                .is_some_and(|t| t >= term)
    }
}

/// A partition group's answer to a peer's pre-vote: yes if the candidate's
/// log is at least as long as this replica's, and this replica has no
/// leader that is still there (it is not the leader itself, and its leader
/// is gone). Raft's own vote checks the log again; this keeps a candidate
/// that would lose from bumping the term.
struct Voter {
    node: NodeId,
    raft: Raft<PartitionTypes>,
    store: PartitionStore,
    watch: Arc<LeaderWatch>,
}

impl PreVoteJudge for Voter {
    fn grants(&self, candidate: NodeId, last_log_id: Option<LogId<NodeId>>) -> bool {
        if last_log_id < self.store.last_log_id() {
            return false;
        }
        let now = Instant::now();
        let (l, running) = {
            let metrics = self.raft.metrics();
            let m = metrics.borrow();
            (
                leadership_of(&m, self.node),
                self.watch.candidate_running(&m.vote, now),
            )
        };
        if running.is_some_and(|c| c != candidate) {
            return false;
        }
        let transport = self.watch.transport.clone();
        let reachable = move |peer: NodeId| transport.is_reachable(peer);
        match l.leader {
            None => true,
            Some(leader) if leader == self.node => !l.is_me,
            Some(leader) if leader == candidate => true,
            Some(leader) => !self.watch.is_there(leader, l.term, &reachable, now),
        }
    }
}

thread_local! {
    /// The retry jitter's state, per thread (xorshift64; never zero).
    static JITTER: std::cell::Cell<u64> = std::cell::Cell::new(jitter_seed());
}

fn jitter_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish() | 1
}

/// A pseudo-random number in `0..bound` (the retry jitter; not for keys).
fn jitter(bound: u64) -> u64 {
    JITTER.with(|state| {
        let mut x = state.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        state.set(x);
        x % bound.max(1)
    })
}

/// Makes this thread's jitter replay from `seed` (the Raft simulation).
#[cfg(test)]
pub(crate) fn seed_jitter(seed: u64) {
    JITTER.with(|state| state.set(seed | 1));
}

/// How long a group with no leader known (a restarted replica, say) waits
/// for the leader's heartbeat before its replicas start electing.
const LEADERLESS_GRACE: std::time::Duration = std::time::Duration::from_millis(1000);
/// Each replica after the first in line waits this much longer before it
/// runs, so that two whose logs are equally long (both pass the pre-vote)
/// rarely split the vote.
const ELECTION_RANK_DELAY: std::time::Duration = std::time::Duration::from_millis(100);
/// How long an election under way (a vote granted, or this node's own
/// candidacy) holds off other candidates: it is won or lost well within.
const CANDIDACY_WAIT: std::time::Duration = std::time::Duration::from_millis(300);
/// How long a candidate waits for the pre-vote answers.
const PRE_VOTE_WAIT: std::time::Duration = std::time::Duration::from_millis(200);
/// A replica whose election did not give the group a leader tries again
/// after the leader lease (a follower that heard the old leader lately
/// refuses its vote for that long) and this margin, plus a random part of
/// up to the lease (at least `ELECTION_RETRY_JITTER_MIN_MS`): two
/// candidates retrying in step would stay in the same term and split every
/// vote, Raft's randomized timeout keeps them apart.
const LEASE_MARGIN: std::time::Duration = std::time::Duration::from_millis(20);
const ELECTION_RETRY_JITTER_MIN_MS: u64 = 100;
/// A node that started less than this long ago (it just came back) goes
/// after the others in an election's line. Clients may not reach it yet:
/// librdkafka waits up to `reconnect.backoff.max.ms` (10 s) before it
/// reconnects to a broker it lost, so a leader there would keep them
/// waiting. With pre-vote, its turn costs nothing if it cannot win.
pub(super) const FRESH_NODE: std::time::Duration = std::time::Duration::from_secs(10);

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
        durability: Durability,
        timers: &GroupTimers,
        transport: Arc<Transport>,
        registry: Arc<Registry>,
        shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<Self> {
        let store = PartitionStore::open(log.clone(), durability)
            .with_context(|| format!("opening the Raft log of partition group {id}"))?;
        if voters.keys().any(|&v| v != node) {
            store
                .forget_own_leadership(node)
                .with_context(|| format!("restarting partition group {id}"))?;
        }
        let committed = store.committed_end();
        high_watermark.send_if_modified(|hw| {
            let moved = committed > *hw;
            *hw = (*hw).max(committed);
            moved
        });
        let machine = PartitionMachine::new(
            high_watermark,
            log.clone(),
            store.purged_state(),
            store.recent(),
        );
        let config = timers.config(
            id,
            Config {
                snapshot_policy: SnapshotPolicy::Never,
                // No per-group timers at all. A lone voter elects itself
                // when initialized and when it restarts (`bootstrap`).
                // With followers, the node's heartbeat per peer carries
                // which groups it leads (`leaders`), the node starts
                // elections where a leader is gone
                // ([`check_election`](Self::check_election)), and a
                // follower that missed entries is retried by its
                // replication stream until it has them; commits reach
                // followers with openraft's commit notice. So an idle
                // group costs nothing, whatever the partition count.
                enable_tick: false,
                enable_heartbeat: false,
                enable_elect: false,
                // Entries are purged only as far as every voter holds the
                // log ([`maybe_purge`](Self::maybe_purge)), never after a
                // snapshot by openraft's own count: a replica too far
                // behind would need a snapshot carrying the leader's
                // segments, which Fjord does not build yet.
                max_in_snapshot_log_to_keep: u64::MAX,
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
        let watch = Arc::new(LeaderWatch {
            group: id,
            transport: transport.clone(),
            known: Mutex::new(None),
            candidacy: Mutex::new(None),
        });
        let voter = Voter {
            node,
            raft: raft.clone(),
            store: store.clone(),
            watch: watch.clone(),
        };
        registry.insert(
            id,
            registry.service_with_pre_vote(raft.clone(), Arc::new(voter)),
        );
        let lease = std::time::Duration::from_millis(
            timers.lease_ms.unwrap_or(timers.election_timeout_max_ms),
        );
        let observed = Mutex::new(Observed::new(raft.metrics(), node));
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
            watch,
            electing: Arc::default(),
            observed,
            lease,
            purge_keep_entries: timers.purge_keep_entries,
            purge_step_entries: timers.purge_step_entries,
            purge_checked: Mutex::new(Instant::now()),
            told: Mutex::new((None, 0)),
        })
    }

    /// `NotLeader` (naming the leader if another node leads) unless this
    /// node leads, is not handing the group over, and may write in its term.
    fn writable(&self) -> Result<(), ProduceError> {
        let leadership = self.leadership();
        if !leadership.is_me || self.resigning.load(std::sync::atomic::Ordering::Acquire) {
            return Err(ProduceError::NotLeader(
                leadership.leader.filter(|_| !leadership.is_me),
            ));
        }
        self.may_write(leadership.term)
            .map_err(ProduceError::NotLeader)
    }

    /// Whether this node leads the group and may still commit in its term
    /// (see [`may_write`](Self::may_write)): a leader cut off from its
    /// followers, or superseded, has lost its standing.
    pub fn has_standing(&self) -> bool {
        let leadership = self.leadership();
        leadership.is_me && self.may_write(leadership.term).is_ok()
    }

    /// Resolves once this node can no longer commit as the group's leader:
    /// another node leads, a peer claims a later term, or it no longer
    /// reaches a majority (paused peers, a network partition; see
    /// [`may_write`](Self::may_write)). An acks=all produce waiting for its
    /// commit is then answered NOT_LEADER_OR_FOLLOWER, as Kafka answers a
    /// delayed produce whose leader lost its standing, so that the client
    /// looks for the new leader instead of waiting out its request timeout.
    /// The batch may still be committed by a later leader that holds it
    /// (an idempotent producer's retry is then answered from its
    /// sequence). Checked every [`STANDING_CHECK_INTERVAL`].
    pub async fn lost_standing(&self) -> ProduceError {
        // The first check after one interval, not at once: most commits
        // come within milliseconds, and the wait then costs nothing.
        let mut tick = tokio::time::interval_at(
            Instant::now() + STANDING_CHECK_INTERVAL,
            STANDING_CHECK_INTERVAL,
        );
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let leadership = self.leadership();
            if !leadership.is_me {
                return ProduceError::NotLeader(leadership.leader);
            }
            if let Err(leader) = self.may_write(leadership.term) {
                return ProduceError::NotLeader(leader);
            }
        }
    }

    /// Hands a producer's validated batches to the group's Raft; this node
    /// must lead. Entries handed over in order are appended in that order.
    /// Waits while the group holds [`UNCOMMITTED_PRODUCES_MAX`] uncommitted
    /// produces (the caller bounds the wait).
    pub async fn submit(&self, validated: Validated, now_ms: i64) -> Result<Pending, ProduceError> {
        self.writable()?;
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

    /// Moves the log start offset to `offset` on every replica (Kafka's
    /// DeleteRecords, retention, the group coordinator's compaction): the
    /// leader proposes it, and each replica applies it once committed.
    /// Returns once it is committed and applied here. This node must lead;
    /// `offset` must not pass the high watermark (the caller checks).
    pub async fn advance_log_start(&self, offset: i64) -> Result<(), ProduceError> {
        self.writable()?;
        match self
            .raft
            .client_write(PartitionEntry::LogStart { offset })
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => Err(match e.forward_to_leader() {
                Some(f) => ProduceError::NotLeader(f.leader_id),
                None => ProduceError::Raft(e.to_string()),
            }),
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
        leadership_of(&m, self.node)
    }

    /// Whether this node leads and has applied an entry of its own term
    /// (the blank entry a Raft leader appends when elected). Until then it
    /// does not know how far the group committed: entries its predecessor
    /// committed may still be unapplied here, a log start offset moved by
    /// DeleteRecords or retention among them. Kafka's new leader likewise
    /// answers ListOffsets with OFFSET_NOT_AVAILABLE until its high
    /// watermark reaches its epoch (KIP-207).
    pub fn leads_settled(&self) -> bool {
        let leadership = self.leadership();
        // The machine's own record, not openraft's metrics: those follow
        // only after `apply` returns, and a read woken by the blank
        // entry's apply would still find them behind.
        leadership.is_me && self.machine.applied_term() == Some(leadership.term)
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
        let now = Instant::now();
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

    /// A peer that claims this group in a later term than `term`, from its
    /// heartbeat report: this node's leadership is stale.
    fn later_leader(&self, term: u64) -> Option<NodeId> {
        let dead_after = self.transport.config().dead_after;
        self.transport
            .leaders()
            .leader_of(&self.id, dead_after, |n| n != self.node)
            .filter(|c| c.term > term)
            .map(|c| c.node)
    }

    /// Whether this leader may take a write: it reaches a majority of the
    /// voters, itself included, and no peer claims the group in a later
    /// term. A paused, cut-off or superseded leader thus refuses at once
    /// (NOT_LEADER_OR_FOLLOWER, with the later leader if it knows one)
    /// instead of appending what it can never commit, which acks=1 would
    /// otherwise acknowledge. `Err` carries the leader to name.
    fn may_write(&self, term: u64) -> Result<(), Option<NodeId>> {
        if let Some(later) = self.later_leader(term) {
            return Err(Some(later));
        }
        if self.reaches_majority() {
            Ok(())
        } else {
            Err(None)
        }
    }

    /// Whether this node reaches a majority of the group's voters, itself
    /// included (a lone voter always does).
    pub fn reaches_majority(&self) -> bool {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let mut reached = 0;
        let mut voters = 0;
        for v in m.membership_config.membership().voter_ids() {
            voters += 1;
            if v == self.node || self.transport.is_reachable(v) {
                reached += 1;
            }
        }
        reached * 2 > voters
    }

    /// This group's line in the node's heartbeat report (see `leaders`),
    /// if this node leads it: the term and the ISR (`lag_max` and `alive`
    /// as for [`in_sync`](Self::in_sync)).
    pub fn led(&self, lag_max: std::time::Duration, alive: impl Fn(NodeId) -> bool) -> Option<Led> {
        let mut o = self.observed.lock();
        o.refresh(self.node, self.id);
        if !o.leadership.is_me {
            o.reported = None;
            return None;
        }
        let term = o.leadership.term;
        let now = Instant::now();
        let fresh = o
            .reported
            .as_ref()
            .is_some_and(|(t, at, _)| *t == term && now.duration_since(*at) < ISR_REPORT_INTERVAL);
        if !fresh {
            let in_sync = self.in_sync(lag_max, alive)?;
            o.reported = Some((term, now, in_sync));
        }
        let in_sync = o.reported.as_ref().map(|(_, _, isr)| isr.clone())?;
        Some(Led {
            group: self.id,
            term,
            in_sync,
            purge_to: self.purge_point_as_leader(),
        })
    }

    /// On the leader: up to which index every replica may purge its entry
    /// index, [`purge_keep_entries`](GroupTimers::purge_keep_entries) (none
    /// for a lone voter) below the last entry that every voter holds and
    /// this node applied, rounded
    /// down to a multiple of `purge_step_entries`; `None`
    /// while a voter's progress is unknown (it was never reached: it may
    /// need anything).
    fn purge_point_as_leader(&self) -> Option<u64> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        if m.state != openraft::ServerState::Leader {
            return None;
        }
        let replication = m.replication.as_ref()?;
        let mut held = m.last_applied.map(|l| l.index)?;
        let mut alone = true;
        for voter in m.membership_config.membership().voter_ids() {
            if voter == self.node {
                continue;
            }
            alone = false;
            held = held.min(replication.get(&voter).copied().flatten()?.index);
        }
        // A lone voter keeps nothing: no replica will ever ask it for an
        // entry it applied.
        let keep = if alone { 0 } else { self.purge_keep_entries };
        // In whole steps, so that the heartbeat report (which carries it)
        // does not change with every entry.
        let step = self.purge_step_entries.max(1);
        held.checked_sub(keep).map(|to| to - to % step)
    }

    /// Purges the entry index so that it does not grow with every produce
    /// request a partition ever took: at most every
    /// [`PURGE_CHECK_INTERVAL`], once
    /// [`purge_step_entries`](GroupTimers::purge_step_entries) entries can
    /// go. The leader decides how far (every voter holds the log past that
    /// point: none will ever need the purged entries sent, so no snapshot
    /// has to carry segments), and its followers follow its heartbeat
    /// report, never past what they applied themselves. openraft purges
    /// only below a snapshot: one is built first (it holds the high
    /// watermark and the membership, not data).
    pub fn maybe_purge(&self) {
        let now = Instant::now();
        {
            let mut checked = self.purge_checked.lock();
            if now.duration_since(*checked) < PURGE_CHECK_INTERVAL {
                return;
            }
            *checked = now;
        }
        let (to, snapshot_last) = {
            let leadership = self.leadership();
            let to = if leadership.is_me {
                self.purge_point_as_leader()
            } else {
                let dead_after = self.transport.config().dead_after;
                let metrics = self.raft.metrics();
                let m = metrics.borrow();
                let applied = m.last_applied.map(|l| l.index);
                leadership
                    .leader
                    .and_then(|l| self.transport.leaders().purge_to(l, &self.id, dead_after))
                    .zip(applied)
                    .map(|(to, applied)| to.min(applied))
            };
            let metrics = self.raft.metrics();
            let snapshot_last = metrics.borrow().snapshot.map(|l| l.index);
            (to, snapshot_last)
        };
        let Some(to) = to else {
            return;
        };
        if to < self.store.purged_index() + self.purge_step_entries {
            return;
        }
        let raft = self.raft.clone();
        tokio::spawn(async move {
            if snapshot_last.is_none_or(|s| s < to) {
                let _ = raft.trigger().snapshot().await;
            } else {
                let _ = raft.trigger().purge_log(to).await;
            }
        });
    }

    /// On a leader, sends the followers an empty append carrying the commit
    /// point when they may not know it: openraft sends the commit point
    /// only with appends (Fjord turns its heartbeats off), so a follower
    /// that missed the last one (the connection broke, or it restarted)
    /// would keep an old high watermark until the next write. Due when the
    /// group went idle with a commit point not yet sent this way, or when a
    /// connection to a follower was made since the last time. Found by the
    /// Raft simulation (`sim`): a follower's high watermark stayed behind
    /// after the faults healed.
    pub fn maybe_tell_commit(&self) {
        if !self.leadership().is_me {
            return;
        }
        let (committed, idle) = {
            let metrics = self.raft.metrics();
            let m = metrics.borrow();
            let committed = m.last_applied;
            (committed, m.last_log_index == committed.map(|l| l.index))
        };
        let connections: u64 = self
            .voters()
            .into_iter()
            .filter(|&v| v != self.node)
            .map(|v| self.transport.connections_made(v))
            .sum();
        {
            let mut told = self.told.lock();
            let due = (idle && told.0 != committed) || told.1 != connections;
            if !due {
                return;
            }
            *told = (committed, connections);
        }
        let raft = self.raft.clone();
        tokio::spawn(async move {
            let _ = raft.trigger().heartbeat().await;
        });
    }

    /// One check of the node-level election driver (`ReplicaManager::
    /// drive_elections`; openraft's own elections are off). Starts an
    /// election on this node when the group has no leader that is still
    /// there ([`leader_is_there`](Self::leader_is_there)) and it is this
    /// node's turn: the reachable voters other than the old leader, by id,
    /// each wait [`ELECTION_RANK_DELAY`] times their place in line, a group
    /// that never had a leader here waits [`LEADERLESS_GRACE`] first, and
    /// the first try waits until the other followers' leader lease has
    /// passed since the leader was last heard (they would refuse the vote
    /// before). Raft's vote decides the rest: a candidate with a shorter log
    /// loses, and the next in line runs. A leader that sees a peer claim
    /// the group in a later term sends its followers an empty append, whose
    /// answer makes it step down. Returns whether it started an election.
    pub fn check_election(self: &Arc<Self>, reachable: &(dyn Fn(NodeId) -> bool + Sync)) -> bool {
        use std::time::Duration;
        let now = Instant::now();
        enum Act {
            Nothing,
            Elect,
            StepDown,
        }
        let act = {
            let mut o = self.observed.lock();
            o.refresh(self.node, self.id);
            let Leadership {
                leader: current_leader,
                term: current_term,
                is_me,
            } = o.leadership;
            let running = self.watch.candidate_running(&o.vote, now);
            let voters = &o.voters;
            let mut check = self.election.lock();
            if !voters.contains(&self.node) || voters.len() < 2 {
                *check = ElectionCheck::default();
                return false;
            }
            let led = match current_leader {
                Some(l) if l == self.node => is_me,
                Some(l) => self.watch.is_there(l, current_term, reachable, now),
                None => false,
            };
            if led {
                let stale = is_me
                    && self.later_leader(current_term).is_some()
                    && check.next_try.is_none_or(|at| now >= at);
                if stale {
                    check.next_try = Some(now + self.lease);
                    Act::StepDown
                } else {
                    if check.leaderless_since.is_some() {
                        *check = ElectionCheck::default();
                    }
                    Act::Nothing
                }
            } else if running.is_some_and(|c| c != self.node) {
                // Another's election is under way and this node voted for
                // it: let it finish.
                Act::Nothing
            } else {
                if current_leader.is_some() {
                    check.lost_a_leader = true;
                }
                let since = *check.leaderless_since.get_or_insert(now);
                // The line: the reachable voters but the old leader, those
                // up for a while first, then by id.
                let leaders = self.transport.leaders();
                let fresh = |v: NodeId| {
                    let uptime = leaders.uptime((v != self.node).then_some(v));
                    uptime.is_some_and(|u| u < FRESH_NODE)
                };
                let mut line: Vec<(bool, NodeId)> = voters
                    .iter()
                    .copied()
                    .filter(|&v| Some(v) != current_leader && (v == self.node || reachable(v)))
                    .map(|v| (fresh(v), v))
                    .collect();
                line.sort_unstable();
                let rank = line.iter().position(|&(_, v)| v == self.node).unwrap_or(0) as u32;
                let mut wait = ELECTION_RANK_DELAY * rank;
                if !check.lost_a_leader {
                    wait += LEADERLESS_GRACE;
                }
                // A leader whose node went away: the others heard it until
                // then and refuse votes for the lease after that, so the
                // line starts when the lease ends, each in turn after it.
                let lease_end = current_leader
                    .filter(|&l| !reachable(l))
                    .and_then(|l| self.transport.liveness().last_heard(l))
                    .map(|heard| heard + self.lease + LEASE_MARGIN);
                let start = lease_end.map_or(since, |end| end.max(since));
                let due = now >= start + wait && check.next_try.is_none_or(|at| now >= at);
                if due {
                    let lease_ms = u64::try_from(self.lease.as_millis()).unwrap_or(u64::MAX);
                    check.next_try = Some(
                        now + self.lease
                            + LEASE_MARGIN
                            + Duration::from_millis(jitter(
                                lease_ms.max(ELECTION_RETRY_JITTER_MIN_MS),
                            )),
                    );
                    Act::Elect
                } else {
                    Act::Nothing
                }
            }
        };
        use std::sync::atomic::Ordering;
        match act {
            Act::Nothing => false,
            // One attempt at a time per group, each on its own task: the
            // driver goes on with the other groups meanwhile.
            Act::Elect if self.electing.swap(true, Ordering::AcqRel) => false,
            Act::Elect => {
                let group = self.clone();
                tokio::spawn(async move {
                    group.try_to_lead().await;
                    group.electing.store(false, Ordering::Release);
                });
                true
            }
            Act::StepDown => {
                tracing::debug!(group = %self.id, "a peer leads in a later term: stepping down");
                let raft = self.raft.clone();
                tokio::spawn(async move {
                    let _ = raft.trigger().heartbeat().await;
                });
                false
            }
        }
    }

    /// One election attempt: Raft's pre-vote first (the reachable voters
    /// say whether they would vote for this node, within
    /// [`PRE_VOTE_WAIT`]), then, with a majority, the real election.
    async fn try_to_lead(&self) {
        let voters = self.observed.lock().voters.clone();
        let last_log_id = self.store.last_log_id();
        let asks = voters
            .iter()
            .copied()
            .filter(|&v| v != self.node && self.transport.is_reachable(v))
            .map(|v| {
                tokio::time::timeout(
                    PRE_VOTE_WAIT,
                    pre_vote::<PartitionTypes>(&self.transport, self.id, v, last_log_id),
                )
            });
        let granted = 1 + futures::future::join_all(asks)
            .await
            .into_iter()
            .filter(|answer| matches!(answer, Ok(Ok(true))))
            .count();
        if granted * 2 <= voters.len() {
            tracing::debug!(group = %self.id, granted, "pre-vote lost: not starting an election");
            return;
        }
        tracing::debug!(group = %self.id, granted, "starting an election: no leader is there");
        let _ = self.raft.trigger().elect().await;
    }

    /// The index of the last entry purged from the entry index (0: none).
    pub fn purged_index(&self) -> u64 {
        self.store.purged_index()
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
mod sim;
#[cfg(test)]
mod tests;
