//! The partitions this broker hosts, like Kafka's ReplicaManager: each
//! partition's log, its leader epoch, and its high watermark.
//!
//! Design decisions:
//! - A partition's log sits behind a plain mutex and is only touched from
//!   blocking threads (`spawn_blocking`): appends and reads are file I/O, and
//!   file I/O must not stall the async workers that serve sockets.
//! - The high watermark is a `watch` channel per partition. A fetch that is
//!   waiting for data subscribes to the partitions it reads, so one append
//!   wakes exactly the fetches that care, once, with no polling.
//! - Every partition is a Raft group ([`PartitionGroup`]) over its replicas,
//!   a single node's too (one voter, the same path). Its Raft log is the
//!   partition's segment files; the leader assigns offsets. The high
//!   watermark is the Raft commit point: only the group's state machine
//!   moves it, once a majority holds the batches (with `--fsync always`,
//!   once they are synced there).
//! - Produce validation (the record walk, decompression, recompression)
//!   never runs under the log mutex either: it needs only the partition's
//!   config, kept as a snapshot beside the log, and the lock is taken for the
//!   stamping and the write alone.
//! - The interval flush never runs an fsync under the log mutex: it is
//!   captured under it ([`PendingFlush`]) and synced under a second,
//!   flush-only mutex. With `--fsync always` the group's store syncs each
//!   batch of entries Raft appends together (its group commit).
//! - A partition whose log went offline (a failed write or fsync), or that
//!   could not be opened at startup, heals by itself: a background task
//!   ([`ReplicaManager::retry_offline`]) reopens it, which runs recovery
//!   again, with a per-partition backoff from [`REOPEN_BACKOFF_MIN`] doubling
//!   to [`REOPEN_BACKOFF_MAX`]. Meanwhile Metadata shows it without a leader
//!   (LEADER_NOT_AVAILABLE) and produce and fetch get KAFKA_STORAGE_ERROR,
//!   both retriable. Running out of file descriptors never takes a log
//!   offline (see `log::file_cache`).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use tokio::sync::watch;
use uuid::Uuid;

use crate::config::{BrokerConfig, FsyncPolicy};
use crate::log::file_cache::is_descriptor_exhaustion;
use crate::log::{
    sync_dir, validate_produce, AppendError, AppendInfo, FlushScope, LogConfig, LogError,
    PartitionLog, PendingFlush, ReadError, ReadInfo, CLEAN_SHUTDOWN_FILE,
};
use crate::raft::group::GroupTimers;
use crate::raft::network::Registry;
use crate::raft::partition_group::{Leadership, PartitionGroup, ProduceError};
use crate::raft::partition_store::Durability;
use crate::raft::transfer::{HandOver, Resignation};
use crate::raft::transport::Transport;
use crate::raft::types::BasicNode;
use crate::raft::{GroupId, NodeId};

/// Longest a produce through [`Partition::append_blocking`] (the group
/// coordinator's writes) waits for its commit.
pub const APPEND_COMMIT_WAIT: Duration = Duration::from_secs(30);

/// What partitions need to run their Raft groups on this node.
pub struct GroupContext {
    pub node: NodeId,
    pub transport: Arc<Transport>,
    pub registry: Arc<Registry>,
    pub timers: GroupTimers,
    /// Blocking threads start and stop groups through it.
    pub runtime: tokio::runtime::Handle,
    pub shutdown: watch::Receiver<bool>,
}

/// A partition's voters: each replica and its CONTROLLER address, and the
/// preferred leader (the assignment's first replica).
#[derive(Clone, Debug, Default)]
pub struct Voters {
    pub nodes: BTreeMap<NodeId, BasicNode>,
    pub preferred: Option<NodeId>,
}

impl Voters {
    /// `replicas` in assignment order (the first is the preferred leader),
    /// with their addresses.
    pub fn new(replicas: &[i32], nodes: BTreeMap<NodeId, BasicNode>) -> Voters {
        Voters {
            preferred: replicas.first().map(|&r| r as NodeId),
            nodes,
        }
    }
}

/// How often the election driver looks at every partition group.
pub const ELECTION_CHECK_INTERVAL: Duration = Duration::from_millis(100);

/// A preferred leader gets its partition back only when it is at most this
/// many entries behind: the hand-over pauses writes until it holds them all.
const REBALANCE_LAG_ENTRIES_MAX: u64 = 1000;

/// First wait before reopening an offline partition.
pub const REOPEN_BACKOFF_MIN: Duration = Duration::from_secs(1);
/// Longest wait between two attempts to reopen an offline partition.
pub const REOPEN_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How often the background task looks for offline partitions to retry.
pub const REOPEN_CHECK_INTERVAL: Duration = Duration::from_millis(500);

/// When to try reopening an offline partition next, and how long to wait
/// after that if it fails again.
#[derive(Clone, Copy, Debug)]
struct Backoff {
    next_attempt: Instant,
    wait: Duration,
}

impl Backoff {
    fn start(now: Instant) -> Backoff {
        Backoff {
            next_attempt: now + REOPEN_BACKOFF_MIN,
            wait: REOPEN_BACKOFF_MIN,
        }
    }

    fn failed(&mut self, now: Instant) {
        self.wait = (self.wait * 2).min(REOPEN_BACKOFF_MAX);
        self.next_attempt = now + self.wait;
    }
}

/// A partition whose log could not be opened: everything needed to retry.
struct Unopened {
    topic_id: Uuid,
    config: LogConfig,
    voters: Voters,
    backoff: Backoff,
}

/// Names one partition.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    pub topic: String,
    pub partition: i32,
}

impl TopicPartition {
    pub fn new(topic: impl Into<String>, partition: i32) -> Self {
        TopicPartition {
            topic: topic.into(),
            partition,
        }
    }

    /// Kafka's directory name for a partition: `<topic>-<partition>`.
    pub fn dir_name(&self) -> String {
        format!("{}-{}", self.topic, self.partition)
    }
}

/// One partition replica, and its Raft group.
pub struct Partition {
    pub tp: TopicPartition,
    pub topic_id: Uuid,
    log: Arc<Mutex<PartitionLog>>,
    /// The log's config, readable without the log mutex (produce validation
    /// runs outside it); replaced together with the log's by `set_config`.
    config: RwLock<Arc<LogConfig>>,
    /// Held while a captured flush is synced; never taken inside `log`.
    /// Shared with the Raft store, which syncs appends under `--fsync always`.
    flush: Arc<Mutex<()>>,
    /// Moved by the group's state machine (the commit point).
    high_watermark: Arc<watch::Sender<i64>>,
    /// The running group (replaced when an offline log is reopened).
    group: RwLock<Option<Arc<PartitionGroup>>>,
    voters: Voters,
    context: Arc<GroupContext>,
    sync: bool,
    /// Mirrors the log's offline state, so Metadata need not take `log`.
    offline: AtomicBool,
    /// Set while offline: when to try reopening.
    reopen: Mutex<Option<Backoff>>,
}

impl Partition {
    /// Opens the partition's Raft group over `log`. Blocking.
    fn open(
        tp: TopicPartition,
        topic_id: Uuid,
        log: PartitionLog,
        voters: Voters,
        context: Arc<GroupContext>,
        sync: bool,
    ) -> Result<Self, LogError> {
        let start = log.log_start_offset();
        let config = RwLock::new(Arc::new(log.config().clone()));
        let partition = Partition {
            tp,
            topic_id,
            log: Arc::new(Mutex::new(log)),
            config,
            flush: Arc::default(),
            high_watermark: Arc::new(watch::Sender::new(start)),
            group: RwLock::new(None),
            voters,
            context,
            sync,
            offline: AtomicBool::new(false),
            reopen: Mutex::new(None),
        };
        partition.start_group()?;
        Ok(partition)
    }

    fn group_id(&self) -> GroupId {
        GroupId::Partition {
            topic_id: self.topic_id,
            partition: self.tp.partition,
        }
    }

    /// Starts (or restarts) the group over the log as it is now. Blocking.
    fn start_group(&self) -> Result<(), LogError> {
        let c = &self.context;
        if let Some(old) = self.group.write().take() {
            c.runtime.block_on(old.stop());
        }
        let started = c.runtime.block_on(PartitionGroup::start(
            c.node,
            self.group_id(),
            self.voters.nodes.clone(),
            self.voters.preferred,
            self.log.clone(),
            self.high_watermark.clone(),
            if self.sync {
                Durability::Always {
                    flush_lock: self.flush.clone(),
                }
            } else {
                Durability::Interval
            },
            &c.timers,
            c.transport.clone(),
            c.registry.clone(),
            c.shutdown.clone(),
        ));
        let group = started.map_err(|e| LogError::Io {
            path: self.log.lock().dir().to_path_buf(),
            source: std::io::Error::other(format!("{e:#}")),
        })?;
        *self.group.write() = Some(Arc::new(group));
        Ok(())
    }

    /// The partition's running group.
    pub fn group(&self) -> Option<Arc<PartitionGroup>> {
        self.group.read().clone()
    }

    /// Who leads the partition, as this node knows it.
    pub fn leadership(&self) -> Leadership {
        self.group().map_or(
            Leadership {
                leader: None,
                term: 0,
                is_me: false,
            },
            |g| g.leadership(),
        )
    }

    /// The leader epoch this node leads in, or NOT_LEADER_OR_FOLLOWER with
    /// the leader it knows of.
    pub fn led_epoch(&self) -> Result<i32, Option<i32>> {
        let l = self.leadership();
        if l.is_me {
            Ok(i32::try_from(l.term).unwrap_or(i32::MAX))
        } else {
            Err(l.leader.map(|n| n as i32))
        }
    }

    /// Whether this replica leads and has applied an entry of its own
    /// epoch (see `PartitionGroup::leads_settled`): before that, reads of
    /// the log start, the high watermark or records wait.
    pub fn leads_settled(&self) -> bool {
        self.group().is_some_and(|g| g.leads_settled())
    }

    /// Whether this replica leads and may still commit (not cut off from
    /// its followers, not superseded); see `PartitionGroup::has_standing`.
    pub fn has_standing(&self) -> bool {
        self.group().is_some_and(|g| g.has_standing())
    }

    /// Kafka's OffsetForLeaderEpoch answer for `epoch` from this replica.
    pub fn end_offset_for_epoch(&self, epoch: i32) -> (i32, i64) {
        self.group()
            .map_or((-1, -1), |g| g.end_offset_for_epoch(epoch))
    }

    /// The replicas, by node id.
    pub fn replica_ids(&self) -> Vec<i32> {
        self.voters.nodes.keys().map(|&n| n as i32).collect()
    }

    /// Stops the group (before the partition is deleted or closed). Blocking.
    fn stop_group(&self) {
        if let Some(group) = self.group.write().take() {
            self.context.runtime.block_on(group.stop());
        }
    }

    /// Whether the log is offline after an I/O failure (until reopened).
    pub fn is_offline(&self) -> bool {
        self.offline.load(Ordering::Relaxed)
    }

    /// Copies the log's offline state after an operation that may have changed it.
    fn note_offline(&self, log: &PartitionLog) {
        if log.is_offline() && !self.offline.swap(true, Ordering::Relaxed) {
            *self.reopen.lock() = Some(Backoff::start(Instant::now()));
        }
    }

    /// Reopens an offline log if its backoff has passed (recovery runs
    /// again). Returns whether it is online now. Blocking.
    fn retry_reopen(&self, now: Instant) -> bool {
        if !self.is_offline() {
            return true;
        }
        if self.reopen.lock().is_some_and(|b| b.next_attempt > now) {
            return false;
        }
        // Nothing may append to the log while it is replaced.
        self.stop_group();
        // Flush lock first, as every fsync path takes it: no captured flush
        // of the old log is in progress while it is replaced.
        let _flushing = self.flush.lock();
        let mut log = self.log.lock();
        let (dir, config) = (log.dir().to_path_buf(), log.config().clone());
        match PartitionLog::open(&dir, config) {
            Ok(reopened) => {
                let end = reopened.log_end_offset();
                *log = reopened;
                drop(log);
                drop(_flushing);
                // The group stopped when its store failed: a new one
                // recovers the index against what the log holds now.
                if let Err(error) = self.start_group() {
                    tracing::warn!(partition = %self.tp.dir_name(), %error, "restarting the partition's Raft group failed");
                    let mut reopen = self.reopen.lock();
                    reopen
                        .get_or_insert_with(|| Backoff::start(now))
                        .failed(now);
                    return false;
                }
                self.offline.store(false, Ordering::Relaxed);
                *self.reopen.lock() = None;
                tracing::info!(partition = %self.tp.dir_name(), log_end_offset = end, "offline partition reopened");
                true
            }
            Err(error) => {
                let mut reopen = self.reopen.lock();
                let backoff = reopen.get_or_insert_with(|| Backoff::start(now));
                backoff.failed(now);
                tracing::warn!(partition = %self.tp.dir_name(), %error, retry_in_ms = backoff.wait.as_millis() as u64, "reopening offline partition failed");
                false
            }
        }
    }
    /// The current term as this node knows it (the leader epoch, where it leads).
    pub fn leader_epoch(&self) -> i32 {
        i32::try_from(self.leadership().term).unwrap_or(i32::MAX)
    }

    pub fn high_watermark(&self) -> i64 {
        *self.high_watermark.borrow()
    }

    /// Subscribes to high-watermark changes (used by waiting fetches).
    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.high_watermark.subscribe()
    }

    /// The config produce validation runs against.
    pub fn log_config(&self) -> Arc<LogConfig> {
        self.config.read().clone()
    }

    /// Appends batches through the group (this node must lead) and returns
    /// once they are committed: the group coordinator's writes. Blocking.
    pub fn append_blocking(&self, records: &[u8], now_ms: i64) -> Result<AppendInfo, AppendError> {
        let config = self.log_config();
        let request = bytes::Bytes::copy_from_slice(records);
        let validated = validate_produce(&request, &config, now_ms)?.into_owned(&request);
        let group = self
            .group()
            .ok_or_else(|| not_appended("the partition has no Raft group"))?;
        let committed = self.context.runtime.block_on(async {
            let pending = tokio::time::timeout(APPEND_COMMIT_WAIT, group.submit(validated, now_ms));
            match pending.await {
                Ok(Ok(pending)) => tokio::time::timeout(APPEND_COMMIT_WAIT, pending.committed())
                    .await
                    .unwrap_or_else(|_| {
                        Err(ProduceError::Raft("not committed in time".to_string()))
                    }),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(ProduceError::Raft("not handed to Raft in time".to_string())),
            }
        });
        committed.map_err(|e| not_appended(&e.to_string()))?
    }

    /// Moves the log start offset to `offset` on every replica, through the
    /// partition's group (this node must lead; `offset` at most the high
    /// watermark), within `wait`; the log start here once applied.
    pub async fn advance_log_start(
        &self,
        offset: i64,
        wait: Duration,
    ) -> Result<i64, ProduceError> {
        let group = self
            .group()
            .ok_or_else(|| ProduceError::Raft("the partition has no Raft group".to_string()))?;
        tokio::time::timeout(wait, group.advance_log_start(offset))
            .await
            .map_err(|_| ProduceError::Raft("not committed in time".to_string()))??;
        Ok(self.log_start_offset())
    }

    /// [`advance_log_start`](Self::advance_log_start) from a blocking thread.
    pub fn advance_log_start_blocking(&self, offset: i64) -> Result<i64, ProduceError> {
        self.context
            .runtime
            .block_on(self.advance_log_start(offset, APPEND_COMMIT_WAIT))
    }

    /// fsyncs a captured flush (holding `flush`), taking the log offline if
    /// it fails (not if a file only lacked a descriptor: it stays dirty and
    /// the next flush covers it).
    fn sync_captured(&self, pending: PendingFlush) -> Result<(), LogError> {
        if pending.is_empty() {
            return Ok(());
        }
        pending.sync().inspect_err(|e| {
            if is_descriptor_exhaustion(e) {
                tracing::warn!(partition = %self.tp.dir_name(), error = %e, "flush postponed: out of file descriptors");
                return;
            }
            tracing::error!(partition = %self.tp.dir_name(), error = %e, "flush failed");
            let mut log = self.log.lock();
            log.mark_offline();
            self.note_offline(&log);
        })
    }

    /// Flushes without holding the log lock through the fsync (the
    /// `log.flush.interval.ms` task). Blocking.
    pub fn flush_blocking(&self) -> Result<(), LogError> {
        let _flushing = self.flush.lock();
        let pending = self.log.lock().take_unflushed(FlushScope::All)?;
        self.sync_captured(pending)
    }

    /// Reads committed batches from `offset`. Blocking.
    pub fn read_blocking(
        &self,
        offset: i64,
        max_bytes: usize,
        min_one_batch: bool,
    ) -> Result<ReadInfo, ReadError> {
        let log = self.log.lock();
        let hw = self.high_watermark();
        log.read(offset, max_bytes, hw, min_one_batch)
    }

    /// Runs `f` with the log locked. Blocking.
    pub fn with_log<T>(&self, f: impl FnOnce(&mut PartitionLog) -> T) -> T {
        let mut log = self.log.lock();
        let result = f(&mut log);
        self.note_offline(&log);
        result
    }

    /// The log start offset (Kafka's low watermark).
    pub fn log_start_offset(&self) -> i64 {
        self.log.lock().log_start_offset()
    }

    pub fn log_end_offset(&self) -> i64 {
        self.log.lock().log_end_offset()
    }

    /// Bytes the partition's segments take on disk.
    pub fn size_bytes(&self) -> u64 {
        self.log.lock().size_bytes()
    }

    pub fn set_config(&self, config: LogConfig) {
        let mut log = self.log.lock();
        *self.config.write() = Arc::new(config.clone());
        log.set_config(config);
    }
}

fn not_appended(why: &str) -> AppendError {
    AppendError::NotCommitted(why.to_string())
}

/// What [`ReplicaManager::open_partition_or_defer`] did.
pub enum Opened {
    /// The partition is open and serving.
    Online(Arc<Partition>),
    /// Its log could not be opened; it is retried in the background.
    Deferred(LogError),
}

/// Every partition hosted here, by name.
pub struct ReplicaManager {
    dir: PathBuf,
    fsync: FsyncPolicy,
    context: Arc<GroupContext>,
    /// Partitions being opened: each open starts a Raft group, which must
    /// happen once.
    opening: Mutex<std::collections::HashSet<TopicPartition>>,
    partitions: RwLock<HashMap<TopicPartition, Arc<Partition>>>,
    /// Partitions whose logs could not be opened yet (retried in the background).
    unopened: Mutex<HashMap<TopicPartition, Unopened>>,
    /// The last process shut down cleanly and this one has not finished
    /// loading yet: logs load without recovering their active segment.
    loading_after_clean_shutdown: AtomicBool,
}

impl ReplicaManager {
    pub fn new(config: &BrokerConfig, context: GroupContext) -> ReplicaManager {
        ReplicaManager {
            dir: config.log_dirs.clone(),
            fsync: config.fsync,
            context: Arc::new(context),
            opening: Mutex::new(std::collections::HashSet::new()),
            partitions: RwLock::new(HashMap::new()),
            unopened: Mutex::new(HashMap::new()),
            loading_after_clean_shutdown: AtomicBool::new(
                config.log_dirs.join(CLEAN_SHUTDOWN_FILE).exists(),
            ),
        }
    }

    /// Ends startup loading: removes the clean-shutdown marker (durably,
    /// before anything is written), so that a crash from now on recovers.
    pub fn loading_done(&self) -> Result<(), LogError> {
        if self
            .loading_after_clean_shutdown
            .swap(false, Ordering::SeqCst)
        {
            let marker = self.dir.join(CLEAN_SHUTDOWN_FILE);
            match std::fs::remove_file(&marker) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(LogError::Io {
                        path: marker,
                        source,
                    })
                }
            }
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    pub fn log_dir(&self) -> &Path {
        &self.dir
    }

    pub fn get(&self, topic: &str, partition: i32) -> Option<Arc<Partition>> {
        // Building a key allocates; partitions per request are few and this is
        // a map lookup, so the clarity is worth it.
        self.partitions
            .read()
            .get(&TopicPartition::new(topic, partition))
            .cloned()
    }

    pub fn all(&self) -> Vec<Arc<Partition>> {
        self.partitions.read().values().cloned().collect()
    }

    /// Opens (creating if needed) a partition's log and starts its Raft
    /// group over `voters`. Blocking: recovery reads files.
    pub fn open_partition(
        &self,
        tp: TopicPartition,
        topic_id: Uuid,
        config: LogConfig,
        voters: Voters,
    ) -> Result<Arc<Partition>, LogError> {
        {
            let mut opening = self.opening.lock();
            if let Some(existing) = self.partitions.read().get(&tp) {
                return Ok(existing.clone());
            }
            if !opening.insert(tp.clone()) {
                return Err(LogError::Io {
                    path: self.dir.join(tp.dir_name()),
                    source: std::io::Error::other(
                        "the partition is being opened by another request",
                    ),
                });
            }
        }
        let opened = self.open_new(tp.clone(), topic_id, config, voters);
        self.opening.lock().remove(&tp);
        opened
    }

    fn open_new(
        &self,
        tp: TopicPartition,
        topic_id: Uuid,
        config: LogConfig,
        voters: Voters,
    ) -> Result<Arc<Partition>, LogError> {
        let dir = self.dir.join(tp.dir_name());
        let log = if self.loading_after_clean_shutdown.load(Ordering::SeqCst) {
            PartitionLog::open_after_clean_shutdown(&dir, config)?
        } else {
            PartitionLog::open(&dir, config)?
        };
        let partition = Arc::new(Partition::open(
            tp.clone(),
            topic_id,
            log,
            voters,
            self.context.clone(),
            self.fsync == FsyncPolicy::Always,
        )?);
        self.unopened.lock().remove(&tp);
        Ok(self
            .partitions
            .write()
            .entry(tp)
            .or_insert(partition)
            .clone())
    }

    /// [`open_partition`](Self::open_partition) for startup: a log that
    /// cannot be opened does not stop the broker; the partition is offline
    /// and retried in the background. Blocking.
    pub fn open_partition_or_defer(
        &self,
        tp: TopicPartition,
        topic_id: Uuid,
        config: LogConfig,
        voters: Voters,
    ) -> Opened {
        match self.open_partition(tp.clone(), topic_id, config.clone(), voters.clone()) {
            Ok(partition) => Opened::Online(partition),
            Err(error) => {
                tracing::error!(partition = %tp.dir_name(), %error, "cannot open partition; it is offline and retried in the background");
                self.unopened.lock().insert(
                    tp,
                    Unopened {
                        topic_id,
                        config,
                        voters,
                        backoff: Backoff::start(Instant::now()),
                    },
                );
                Opened::Deferred(error)
            }
        }
    }

    /// Whether a partition exists but its log is not available (offline, or
    /// not opened yet): requests for it get KAFKA_STORAGE_ERROR.
    pub fn is_offline(&self, topic: &str, partition: i32) -> bool {
        let tp = TopicPartition::new(topic, partition);
        if self.unopened.lock().contains_key(&tp) {
            return true;
        }
        self.partitions
            .read()
            .get(&tp)
            .is_some_and(|p| p.is_offline())
    }

    /// Retries every offline partition whose backoff has passed: reopens
    /// logs that went offline and opens those that failed at startup. The
    /// background task calls it every [`REOPEN_CHECK_INTERVAL`]. Blocking.
    pub fn retry_offline(&self) {
        let now = Instant::now();
        for partition in self.all() {
            if partition.is_offline() {
                partition.retry_reopen(now);
            }
        }
        let due: Vec<(TopicPartition, Uuid, LogConfig, Voters)> = self
            .unopened
            .lock()
            .iter()
            .filter(|(_, u)| u.backoff.next_attempt <= now)
            .map(|(tp, u)| (tp.clone(), u.topic_id, u.config.clone(), u.voters.clone()))
            .collect();
        for (tp, topic_id, config, voters) in due {
            match self.open_partition(tp.clone(), topic_id, config, voters) {
                Ok(_) => tracing::info!(partition = %tp.dir_name(), "offline partition opened"),
                Err(error) => {
                    if let Some(u) = self.unopened.lock().get_mut(&tp) {
                        u.backoff.failed(now);
                        tracing::warn!(partition = %tp.dir_name(), %error, retry_in_ms = u.backoff.wait.as_millis() as u64, "opening offline partition failed");
                    }
                }
            }
        }
    }

    /// Removes a partition and deletes its data. Blocking.
    pub fn delete_partition(&self, tp: &TopicPartition) -> Result<(), LogError> {
        self.unopened.lock().remove(tp);
        let removed = self.partitions.write().remove(tp);
        if let Some(partition) = removed {
            partition.stop_group();
            // Wake any fetch waiting on it so that it re-checks and sees the
            // partition is gone.
            partition.high_watermark.send_modify(|_| {});
            // An in-flight request may still hold the partition; on Unix its
            // open files stay valid (unlinked) until it lets go.
            let log = partition.log.lock();
            let dir = log.dir().to_path_buf();
            std::fs::remove_dir_all(&dir).map_err(|source| LogError::Io { path: dir, source })?;
        } else {
            let dir = self.dir.join(tp.dir_name());
            if dir.exists() {
                std::fs::remove_dir_all(&dir)
                    .map_err(|source| LogError::Io { path: dir, source })?;
            }
        }
        Ok(())
    }

    /// Flushes every partition (the `log.flush.interval.ms` task). Blocking.
    pub fn flush_all(&self) {
        for partition in self.all() {
            // A failed fsync was logged and took that log offline; an offline
            // log refuses the capture, which needs no second log line.
            let _ = partition.flush_blocking();
        }
    }

    /// Applies retention to the partitions this node leads. Blocking.
    ///
    /// Retention moves the log start offset, so that every replica keeps the
    /// same records: the leader finds where retention would start the log
    /// (whole expired segments, never at or above the high watermark) and
    /// moves the start there through the group, and each replica deletes
    /// the segments below it when the move is committed. Followers only
    /// expire idle producers.
    pub fn enforce_retention_all(&self, now_ms: i64) {
        for partition in self.all() {
            if partition.is_offline() {
                continue;
            }
            let hw = partition.high_watermark();
            let leads = partition.leadership().is_me;
            let cut = partition.with_log(|log| {
                log.expire_producers(now_ms);
                if leads {
                    log.retention_start(now_ms, hw)
                } else {
                    Ok(None)
                }
            });
            match cut {
                Ok(None) => {}
                Ok(Some(start)) => match partition.advance_log_start_blocking(start) {
                    Ok(low) => {
                        tracing::info!(partition = %partition.tp.dir_name(), log_start_offset = low, "retention moved the log start")
                    }
                    Err(e) => {
                        tracing::warn!(partition = %partition.tp.dir_name(), error = %e, "retention could not move the log start")
                    }
                },
                Err(e) => {
                    tracing::error!(partition = %partition.tp.dir_name(), error = %e, "retention failed")
                }
            }
        }
    }

    /// The node-level driver of the partition groups (openraft's own
    /// timers are off in them): every [`ELECTION_CHECK_INTERVAL`], it
    /// writes this node's heartbeat report (which groups it leads, in which
    /// term, with which ISR; `raft::leaders`), and each group on this node
    /// whose leader is gone gets an election here when it is this node's
    /// turn ([`PartitionGroup::check_election`]). A leader is gone as soon
    /// as the connection to its node breaks (a killed node's kernel resets
    /// it), when its node has not been heard from for the transport's
    /// `dead_after` (a paused or cut-off node), or when its node's report
    /// stops naming the group (it restarted or stepped down). Stops when
    /// `shutdown` fires; elects nothing once the node is leaving.
    pub async fn drive_elections(&self, lag_max: Duration, mut shutdown: watch::Receiver<bool>) {
        let transport = self.context.transport.clone();
        let reporting = transport.clone();
        let reachable = move |peer: NodeId| transport.is_reachable(peer);
        let mut tick = tokio::time::interval(ELECTION_CHECK_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            let groups: Vec<Arc<PartitionGroup>> =
                self.all().iter().filter_map(|p| p.group()).collect();
            let led = groups
                .iter()
                .filter_map(|g| g.led(lag_max, &reachable))
                .collect();
            reporting.leaders().set_own(led);
            if self.context.registry.is_leaving() {
                continue;
            }
            for group in &groups {
                group.check_election(&reachable);
                group.maybe_purge();
                group.maybe_tell_commit();
            }
        }
    }

    /// This node is stopping: peers' requests that it lead a group are
    /// refused from now on.
    pub fn set_leaving(&self) {
        self.context.registry.set_leaving();
    }

    /// Kafka's controlled shutdown: hands every partition this node leads
    /// (with other replicas) to a caught-up follower, all at once, within
    /// `wait`. Returns how many moved and how many could not; those elect a
    /// leader by timeout once this node stops.
    pub async fn resign_all(&self, wait: Duration) -> (usize, usize) {
        let groups: Vec<_> = self.all().iter().filter_map(|p| p.group()).collect();
        let outcomes =
            futures::future::join_all(groups.iter().map(|g| g.resign(HandOver::Leaving, wait)))
                .await;
        let mut moved = 0;
        let mut failed = 0;
        for (group, outcome) in groups.iter().zip(outcomes) {
            match outcome {
                Resignation::NotLeader => {}
                Resignation::Moved { .. } => moved += 1,
                Resignation::Failed(why) => {
                    failed += 1;
                    tracing::warn!(group = %group.id, reason = %why, "leadership not handed over before shutdown");
                }
            }
        }
        (moved, failed)
    }

    /// Kafka's auto leader rebalance for the partitions this node leads:
    /// each whose preferred leader (first replica) is another node, alive,
    /// in sync and about caught up, is handed to it, all at once, within
    /// `wait` (writes to a partition pause while it moves). Returns how many
    /// moved.
    pub async fn restore_preferred_leaders(&self, lag_max: Duration, wait: Duration) -> usize {
        let transport = self.context.transport.clone();
        let me = self.context.node;
        let moves: Vec<(Arc<PartitionGroup>, NodeId)> = self
            .all()
            .iter()
            .filter_map(|p| {
                let preferred = p.voters.preferred.filter(|&n| n != me)?;
                let group = p.group()?;
                let in_sync = group.in_sync(lag_max, |n| transport.is_alive(n))?;
                (in_sync.contains(&preferred)
                    && group.nearly_caught_up(preferred, REBALANCE_LAG_ENTRIES_MAX))
                .then_some((group, preferred))
            })
            .collect();
        let outcomes = futures::future::join_all(
            moves
                .iter()
                .map(|(g, to)| g.resign(HandOver::To(*to), wait)),
        )
        .await;
        outcomes
            .iter()
            .filter(|o| matches!(o, Resignation::Moved { .. }))
            .count()
    }

    /// Flushes and closes every log (clean shutdown). If every log was
    /// online and flushed, writes the clean-shutdown marker so that the next
    /// start need not recover. Blocking.
    pub fn shutdown(&self) {
        let partitions: Vec<_> = self.partitions.write().drain().map(|(_, p)| p).collect();
        let groups: Vec<_> = partitions
            .iter()
            .filter_map(|p| p.group.write().take())
            .collect();
        self.context
            .runtime
            .block_on(futures::future::join_all(groups.iter().map(|g| g.stop())));
        let mut clean = self.unopened.lock().is_empty();
        for partition in partitions {
            let _flushing = partition.flush.lock();
            let log = partition.log.lock();
            if log.is_offline() {
                clean = false;
                continue;
            }
            if let Err(e) = log.flush() {
                clean = false;
                tracing::error!(partition = %partition.tp.dir_name(), error = %e, "flush at shutdown failed");
            }
        }
        if clean {
            let marker = self.dir.join(CLEAN_SHUTDOWN_FILE);
            let written = std::fs::File::create(&marker)
                .and_then(|f| f.sync_all())
                .map_err(|source| LogError::Io {
                    path: marker.clone(),
                    source,
                })
                .and_then(|()| sync_dir(&self.dir));
            if let Err(e) = written {
                tracing::warn!(error = %e, "cannot write the clean-shutdown marker; the next start recovers every log");
            }
        }
    }
}
