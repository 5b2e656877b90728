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

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use tokio::sync::watch;
use uuid::Uuid;

use crate::config::{BrokerConfig, FsyncPolicy};
use crate::log::{AppendError, AppendInfo, LogConfig, LogError, PartitionLog, ReadError, ReadInfo};

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
    high_watermark: watch::Sender<i64>,
    leader_epoch: i32,
    fsync: FsyncPolicy,
}

impl Partition {
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

    /// Appends a producer's batches. Blocking: call from a blocking thread.
    pub fn append_blocking(&self, records: &[u8], now_ms: i64) -> Result<AppendInfo, AppendError> {
        let mut log = self.log.lock();
        let info = log.append(records, self.leader_epoch, now_ms)?;
        if self.fsync == FsyncPolicy::Always && !info.duplicate {
            log.flush().map_err(AppendError::Storage)?;
        }
        let end = log.log_end_offset();
        drop(log);
        self.high_watermark.send_if_modified(|hw| {
            let changed = *hw != end;
            debug_assert!(end >= *hw, "the high watermark never goes back");
            *hw = end;
            changed
        });
        Ok(info)
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
        f(&mut self.log.lock())
    }

    /// The log start offset (Kafka's low watermark).
    pub fn log_start_offset(&self) -> i64 {
        self.log.lock().log_start_offset()
    }

    pub fn log_end_offset(&self) -> i64 {
        self.log.lock().log_end_offset()
    }

    pub fn set_config(&self, config: LogConfig) {
        self.log.lock().set_config(config);
    }
}

/// Every partition hosted here, by name.
pub struct ReplicaManager {
    dir: PathBuf,
    fsync: FsyncPolicy,
    partitions: RwLock<HashMap<TopicPartition, Arc<Partition>>>,
}

impl ReplicaManager {
    pub fn new(config: &BrokerConfig) -> ReplicaManager {
        ReplicaManager {
            dir: config.log_dirs.clone(),
            fsync: config.fsync,
            partitions: RwLock::new(HashMap::new()),
        }
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
        let log = PartitionLog::open(&self.dir.join(tp.dir_name()), config)?;
        let end = log.log_end_offset();
        let partition = Arc::new(Partition {
            tp: tp.clone(),
            topic_id,
            log: Mutex::new(log),
            high_watermark: watch::Sender::new(end),
            leader_epoch: 0,
            fsync: self.fsync,
        });
        Ok(self
            .partitions
            .write()
            .entry(tp)
            .or_insert(partition)
            .clone())
    }

    /// Removes a partition and deletes its data. Blocking.
    pub fn delete_partition(&self, tp: &TopicPartition) -> Result<(), LogError> {
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
            if let Err(e) = partition.log.lock().flush() {
                tracing::error!(partition = %partition.tp.dir_name(), error = %e, "flush failed");
            }
        }
    }

    /// Applies retention to every partition. Blocking.
    pub fn enforce_retention_all(&self, now_ms: i64) {
        for partition in self.all() {
            // Never delete data a consumer could not yet have read (Kafka's rule).
            let hw = partition.high_watermark();
            match partition.log.lock().enforce_retention_up_to(now_ms, hw) {
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

    /// Flushes and closes every log (clean shutdown). Blocking.
    pub fn shutdown(&self) {
        let partitions: Vec<_> = self.partitions.write().drain().map(|(_, p)| p).collect();
        for partition in partitions {
            if let Err(e) = partition.log.lock().flush() {
                tracing::error!(partition = %partition.tp.dir_name(), error = %e, "flush at shutdown failed");
            }
        }
    }
}
