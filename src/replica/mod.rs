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
//! - On a single node the high watermark is the log end offset once the append
//!   is durable by the configured policy. When partitions become Raft groups
//!   it becomes the Raft commit point, and nothing above this module changes.
//! - Produce validation (the record walk, decompression, recompression)
//!   never runs under the log mutex either: it needs only the partition's
//!   config, kept as a snapshot beside the log, and the lock is taken for the
//!   stamping and the write alone.
//! - An fsync never runs under the log mutex: it is captured under it
//!   ([`PendingFlush`]) and synced under a second, flush-only mutex. With
//!   `--fsync always` that mutex is the group commit: appends that arrive
//!   while one fsync runs are all covered by the next one, and an append
//!   already covered by a finished fsync returns without its own. The high
//!   watermark then advances to what the fsync covered.
//! - A partition whose log went offline (a failed write or fsync), or that
//!   could not be opened at startup, heals by itself: a background task
//!   ([`ReplicaManager::retry_offline`]) reopens it, which runs recovery
//!   again, with a per-partition backoff from [`REOPEN_BACKOFF_MIN`] doubling
//!   to [`REOPEN_BACKOFF_MAX`]. Meanwhile Metadata shows it without a leader
//!   (LEADER_NOT_AVAILABLE) and produce and fetch get KAFKA_STORAGE_ERROR,
//!   both retriable. Running out of file descriptors never takes a log
//!   offline (see `log::file_cache`).

use std::collections::HashMap;
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

/// One partition replica (today: always the leader).
pub struct Partition {
    pub tp: TopicPartition,
    pub topic_id: Uuid,
    log: Mutex<PartitionLog>,
    /// The log's config, readable without the log mutex (produce validation
    /// runs outside it); replaced together with the log's by `set_config`.
    config: RwLock<Arc<LogConfig>>,
    /// Held while a captured flush is synced; never taken inside `log`.
    flush: Mutex<()>,
    high_watermark: watch::Sender<i64>,
    leader_epoch: i32,
    fsync: FsyncPolicy,
    /// Mirrors the log's offline state, so Metadata need not take `log`.
    offline: AtomicBool,
    /// Set while offline: when to try reopening.
    reopen: Mutex<Option<Backoff>>,
}

impl Partition {
    fn new(tp: TopicPartition, topic_id: Uuid, log: PartitionLog, fsync: FsyncPolicy) -> Self {
        let end = log.log_end_offset();
        let config = RwLock::new(Arc::new(log.config().clone()));
        Partition {
            tp,
            topic_id,
            log: Mutex::new(log),
            config,
            flush: Mutex::new(()),
            high_watermark: watch::Sender::new(end),
            leader_epoch: 0,
            fsync,
            offline: AtomicBool::new(false),
            reopen: Mutex::new(None),
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
                self.offline.store(false, Ordering::Relaxed);
                *self.reopen.lock() = None;
                // What recovery kept is what the log holds now (as after a restart).
                self.high_watermark.send_replace(end);
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
    pub fn leader_epoch(&self) -> i32 {
        self.leader_epoch
    }

    pub fn high_watermark(&self) -> i64 {
        *self.high_watermark.borrow()
    }

    /// Subscribes to high-watermark changes (used by waiting fetches).
    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.high_watermark.subscribe()
    }

    /// Whether an acknowledgement must wait for [`sync_to_blocking`](Self::sync_to_blocking).
    pub fn sync_before_ack(&self) -> bool {
        self.fsync == FsyncPolicy::Always
    }

    /// Appends a producer's batches and makes them durable by the configured
    /// policy before returning. Blocking: call from a blocking thread.
    pub fn append_blocking(&self, records: &[u8], now_ms: i64) -> Result<AppendInfo, AppendError> {
        let info = self.append_unsynced_blocking(records, now_ms)?;
        if self.sync_before_ack() {
            self.sync_to_blocking(info.last_offset + 1)?;
        }
        Ok(info)
    }

    /// Appends a producer's batches. With `--fsync interval` they are
    /// committed (below the high watermark) on return; with `--fsync always`
    /// only once [`sync_to_blocking`](Self::sync_to_blocking) has covered
    /// them, which the caller arranges, so that the next append need not wait
    /// for this one's fsync. Blocking.
    pub fn append_unsynced_blocking(
        &self,
        records: &[u8],
        now_ms: i64,
    ) -> Result<AppendInfo, AppendError> {
        let config = self.config.read().clone();
        let validated = validate_produce(records, &config, now_ms)?;
        let mut log = self.log.lock();
        let appended = log.append_validated(validated, self.leader_epoch, now_ms);
        self.note_offline(&log);
        let info = appended?;
        let end = log.log_end_offset();
        drop(log);
        if !self.sync_before_ack() {
            self.advance_high_watermark(end);
        }
        Ok(info)
    }

    /// Returns once everything below `end_offset` is durable (and committed).
    /// Group commit: one fsync covers every append made before it started,
    /// and a caller whose data a finished fsync covered returns without one.
    /// Blocking.
    pub fn sync_to_blocking(&self, end_offset: i64) -> Result<(), AppendError> {
        if self.high_watermark() >= end_offset {
            return Ok(());
        }
        let _flushing = self.flush.lock();
        if self.high_watermark() >= end_offset {
            return Ok(());
        }
        let (pending, end) = {
            let mut log = self.log.lock();
            (log.take_unflushed(FlushScope::Data)?, log.log_end_offset())
        };
        self.sync_captured(pending)?;
        self.advance_high_watermark(end);
        Ok(())
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
    ///
    /// With `--fsync always` it also commits what it synced: an append whose
    /// own group commit never ran (its request was abandoned when the client
    /// left) becomes readable here at the latest.
    pub fn flush_blocking(&self) -> Result<(), LogError> {
        let _flushing = self.flush.lock();
        let (pending, end) = {
            let mut log = self.log.lock();
            (log.take_unflushed(FlushScope::All)?, log.log_end_offset())
        };
        self.sync_captured(pending)?;
        if self.sync_before_ack() {
            self.advance_high_watermark(end);
        }
        Ok(())
    }

    fn advance_high_watermark(&self, end: i64) {
        self.high_watermark.send_if_modified(|hw| {
            // Concurrent group commits may finish out of order: keep the max.
            let changed = end > *hw;
            if changed {
                *hw = end;
            }
            changed
        });
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

    pub fn set_config(&self, config: LogConfig) {
        let mut log = self.log.lock();
        *self.config.write() = Arc::new(config.clone());
        log.set_config(config);
    }
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
    partitions: RwLock<HashMap<TopicPartition, Arc<Partition>>>,
    /// Partitions whose logs could not be opened yet (retried in the background).
    unopened: Mutex<HashMap<TopicPartition, Unopened>>,
    /// The last process shut down cleanly and this one has not finished
    /// loading yet: logs load without recovering their active segment.
    loading_after_clean_shutdown: AtomicBool,
}

impl ReplicaManager {
    pub fn new(config: &BrokerConfig) -> ReplicaManager {
        ReplicaManager {
            dir: config.log_dirs.clone(),
            fsync: config.fsync,
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

    /// Opens (creating if needed) a partition's log. Blocking: recovery reads files.
    pub fn open_partition(
        &self,
        tp: TopicPartition,
        topic_id: Uuid,
        config: LogConfig,
    ) -> Result<Arc<Partition>, LogError> {
        if let Some(existing) = self.partitions.read().get(&tp) {
            return Ok(existing.clone());
        }
        let dir = self.dir.join(tp.dir_name());
        let log = if self.loading_after_clean_shutdown.load(Ordering::SeqCst) {
            PartitionLog::open_after_clean_shutdown(&dir, config)?
        } else {
            PartitionLog::open(&dir, config)?
        };
        let partition = Arc::new(Partition::new(tp.clone(), topic_id, log, self.fsync));
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
    ) -> Opened {
        match self.open_partition(tp.clone(), topic_id, config.clone()) {
            Ok(partition) => Opened::Online(partition),
            Err(error) => {
                tracing::error!(partition = %tp.dir_name(), %error, "cannot open partition; it is offline and retried in the background");
                self.unopened.lock().insert(
                    tp,
                    Unopened {
                        topic_id,
                        config,
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
        let due: Vec<(TopicPartition, Uuid, LogConfig)> = self
            .unopened
            .lock()
            .iter()
            .filter(|(_, u)| u.backoff.next_attempt <= now)
            .map(|(tp, u)| (tp.clone(), u.topic_id, u.config.clone()))
            .collect();
        for (tp, topic_id, config) in due {
            match self.open_partition(tp.clone(), topic_id, config) {
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

    /// Applies retention to every partition. Blocking.
    pub fn enforce_retention_all(&self, now_ms: i64) {
        for partition in self.all() {
            // Never delete data a consumer could not yet have read (Kafka's rule).
            let hw = partition.high_watermark();
            if partition.is_offline() {
                continue;
            }
            let mut log = partition.log.lock();
            let enforced = log.enforce_retention_up_to(now_ms, hw);
            partition.note_offline(&log);
            drop(log);
            match enforced {
                Ok(0) => {}
                Ok(deleted) => {
                    tracing::info!(partition = %partition.tp.dir_name(), deleted, "retention deleted segments")
                }
                Err(e) => {
                    tracing::error!(partition = %partition.tp.dir_name(), error = %e, "retention failed")
                }
            }
        }
    }

    /// Flushes and closes every log (clean shutdown). If every log was
    /// online and flushed, writes the clean-shutdown marker so that the next
    /// start need not recover. Blocking.
    pub fn shutdown(&self) {
        let partitions: Vec<_> = self.partitions.write().drain().map(|(_, p)| p).collect();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::batch::test_batches::TestBatch;

    fn manager(fsync: FsyncPolicy, dir: &Path) -> ReplicaManager {
        ReplicaManager {
            dir: dir.to_path_buf(),
            fsync,
            partitions: RwLock::new(HashMap::new()),
            unopened: Mutex::new(HashMap::new()),
            loading_after_clean_shutdown: AtomicBool::new(false),
        }
    }

    fn open(manager: &ReplicaManager) -> Arc<Partition> {
        manager
            .open_partition(
                TopicPartition::new("t", 0),
                Uuid::new_v4(),
                LogConfig::default(),
            )
            .unwrap()
    }

    #[test]
    fn with_fsync_always_the_high_watermark_waits_for_the_sync() {
        let dir = tempfile::tempdir().unwrap();
        let replicas = manager(FsyncPolicy::Always, dir.path());
        let partition = open(&replicas);
        let first = partition
            .append_unsynced_blocking(&TestBatch::new(3).encode(), 0)
            .unwrap();
        let second = partition
            .append_unsynced_blocking(&TestBatch::new(2).encode(), 0)
            .unwrap();
        assert_eq!(
            partition.high_watermark(),
            0,
            "nothing is committed before its fsync"
        );
        assert_eq!(partition.log_end_offset(), 5);
        // One sync for the first append covers the second too (group commit).
        partition.sync_to_blocking(first.last_offset + 1).unwrap();
        assert_eq!(partition.high_watermark(), second.last_offset + 1);
        partition.sync_to_blocking(second.last_offset + 1).unwrap();
        assert_eq!(partition.high_watermark(), 5);
    }

    #[test]
    fn with_fsync_interval_an_append_is_committed_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let replicas = manager(FsyncPolicy::Interval, dir.path());
        let partition = open(&replicas);
        partition
            .append_unsynced_blocking(&TestBatch::new(4).encode(), 0)
            .unwrap();
        assert_eq!(partition.high_watermark(), 4);
        partition.flush_blocking().unwrap();
        assert_eq!(partition.high_watermark(), 4);
    }
}
