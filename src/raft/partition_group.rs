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
use super::network::{GroupNetwork, RaftService, Registry};
use super::partition_store::{PartitionApplied, PartitionEntry, PartitionStore, PartitionTypes};
use super::transport::Transport;
use super::types::{GroupId, NodeId};
use crate::log::batch::Batches;
use crate::log::{AppendError, AppendInfo, PartitionLog};

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
    /// Starts at `high_watermark` (the log start offset: nothing above it is
    /// known to be committed until entries are applied).
    pub fn new(high_watermark: i64) -> Self {
        PartitionMachine {
            inner: Arc::new(Mutex::new(MachineInner {
                last_applied: None,
                membership: StoredMembership::default(),
                snapshot: None,
                snapshots_built: 0,
            })),
            high_watermark: Arc::new(watch::Sender::new(high_watermark)),
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
    #[error("{0}")]
    Raft(String),
}

/// A running partition group on this node.
pub struct PartitionGroup {
    pub id: GroupId,
    pub raft: Raft<PartitionTypes>,
    store: PartitionStore,
    machine: PartitionMachine,
    registry: Arc<Registry>,
}

impl PartitionGroup {
    /// Starts the group over `log`, registers it for peers' requests, and
    /// (on the lowest voter) bootstraps it once a majority is fresh.
    #[allow(clippy::too_many_arguments)]
    pub async fn start(
        node: NodeId,
        id: GroupId,
        voters: BTreeMap<NodeId, BasicNode>,
        log: Arc<Mutex<PartitionLog>>,
        sync: bool,
        timers: &GroupTimers,
        transport: Arc<Transport>,
        registry: Arc<Registry>,
        shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<Self> {
        let log_start = log.lock().log_start_offset();
        let store = PartitionStore::open(log, sync)
            .with_context(|| format!("opening the Raft log of partition group {id}"))?;
        let machine = PartitionMachine::new(log_start);
        let config = timers.config(
            id,
            Config {
                snapshot_policy: SnapshotPolicy::Never,
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
        registry.insert(id, Arc::new(RaftService { raft: raft.clone() }));
        if voters.keys().next() == Some(&node) {
            tokio::spawn(bootstrap::<PartitionTypes>(
                raft.clone(),
                id,
                voters,
                transport,
                shutdown,
            ));
        }
        Ok(PartitionGroup {
            id,
            raft,
            store,
            machine,
            registry,
        })
    }

    /// Appends a producer's batches through this node, which must lead the
    /// group; returns once a majority holds them (committed, below the high
    /// watermark), with what the append did (its offsets, or the producer's
    /// error).
    pub async fn produce(
        &self,
        records: Bytes,
        now_ms: i64,
    ) -> Result<Result<AppendInfo, AppendError>, ProduceError> {
        match self
            .raft
            .client_write(PartitionEntry::Produce { records, now_ms })
            .await
        {
            Ok(written) => self
                .store
                .take_outcome(written.log_id.index)
                .ok_or_else(|| {
                    ProduceError::Raft(format!(
                        "entry {} committed without an append outcome",
                        written.log_id.index
                    ))
                }),
            Err(e) => match e.forward_to_leader() {
                Some(forward) => Err(ProduceError::NotLeader(forward.leader_id)),
                None => Err(ProduceError::Raft(e.to_string())),
            },
        }
    }

    /// The commit point: no consumer reads at or above it.
    pub fn high_watermark(&self) -> watch::Receiver<i64> {
        self.machine.high_watermark()
    }

    /// The leader this node knows of, and its term (Kafka's leader epoch).
    pub fn leader(&self) -> (Option<NodeId>, u64) {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        (m.current_leader, m.current_term)
    }

    /// Leaves the registry and stops the group's Raft.
    pub async fn stop(&self) {
        self.registry.remove(&self.id);
        let _ = self.raft.shutdown().await;
    }
}

#[cfg(test)]
mod tests;
