//! The Raft log of a partition group, kept in the partition's own segment
//! files: each record batch is stored once (DESIGN: "the Raft log and the
//! partition log are the same files").
//!
//! - A `Normal` entry is one produce request's batches. The leader's store
//!   assigns their offsets and leader epoch (the entry's term) when it
//!   appends a [`PartitionEntry::Produce`] entry, through the same append
//!   path as a single node today (validation, producer deduplication); every
//!   other replica receives the entry as [`PartitionEntry::Records`], read
//!   back from the leader's segments with offsets in place, and appends it
//!   as a follower. So offsets are assigned once, by the leader, in log order.
//! - Raft's own entries (blank, membership) take no Kafka offsets: they live
//!   only in the entry index.
//! - `raft-index` in the partition directory: one CRC-framed record per
//!   entry (its log id and either the offset range of its batches or the
//!   blank/membership payload), 40-odd bytes per batch. A purge appends a
//!   `PurgedUpTo` record (what the purged entries leave behind), and every
//!   megabyte of purged entries or so rewrites the file starting with one. `raft-vote` (synced) and
//!   `raft-committed` (a hint) sit next to it.
//!
//! Recovery: the index and the segments are two files, written batches
//! first, and with interval flushing either may lose its tail in a crash.
//! On open the longer one is cut to the shorter: batches past the last
//! indexed entry are truncated, and indexed entries whose batches are gone
//! are dropped (with everything after them).

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Debug;
use std::ops::RangeBounds;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, LogState, Membership, RaftLogReader, StorageError,
    StorageIOError, StoredMembership, Vote,
};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::entry_log::{
    appended, decode_records, encode_record, io_error, write_atomically, VoteFiles,
};
use super::types::NodeId;
use crate::log::batch::Batches;
use crate::log::file_cache::{CachedFile, OpenMode};
use crate::log::FlushScope;
use crate::log::{AppendError, AppendInfo, PartitionLog, Validated};

/// What a partition group's entries carry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum PartitionEntry {
    /// A producer's batches as the leader received them; the leader's store
    /// assigns their offsets. `checked` is what the request path's
    /// validation made of them (the expensive record walk ran there, not
    /// in the Raft task); a `Produce` entry never leaves the leader (stores
    /// read every entry back as `Records`), so `checked` is not serialized,
    /// and one without it is validated again when appended. `token` names
    /// the producer waiting for this append's outcome.
    Produce {
        records: Bytes,
        #[serde(skip)]
        checked: Option<Validated>,
        now_ms: i64,
        token: u64,
    },
    /// Batches with offsets assigned, as every replica stores them.
    Records { records: Bytes },
    /// Moves the log start offset to `offset` on every replica once
    /// committed (DeleteRecords, retention, the group coordinator's
    /// compaction), so that all replicas keep the same records. Takes no
    /// Kafka offsets, like Raft's own entries.
    LogStart { offset: i64 },
}

impl Default for PartitionEntry {
    fn default() -> Self {
        PartitionEntry::Records {
            records: Bytes::new(),
        }
    }
}

/// A partition group's state machine answer (the produce outcome is taken
/// from the store: [`PartitionStore::take_outcome`]).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PartitionApplied;

crate::entry_group_types!(pub PartitionTypes, PartitionEntry, PartitionApplied);

/// What an index record says about one entry.
#[derive(Clone, Debug, Serialize, Deserialize)]
enum Kind {
    /// Batches at offsets `first..end`, `bytes` long, in the segments.
    Records { first: i64, end: i64, bytes: u64 },
    /// `at`: the log end offset when it was appended (where its term, if
    /// new, starts).
    Blank { at: i64 },
    /// Boxed: rare, and it would double every entry's size in memory.
    Membership {
        membership: Box<Membership<NodeId, BasicNode>>,
        at: i64,
    },
    /// A [`PartitionEntry::LogStart`] moving the log start to `start`.
    LogStart { at: i64, start: i64 },
}

impl Kind {
    /// The offset its entry starts at.
    fn start(&self) -> i64 {
        match self {
            Kind::Records { first, .. } => *first,
            Kind::Blank { at } | Kind::Membership { at, .. } | Kind::LogStart { at, .. } => *at,
        }
    }
}

/// The outcome of a leader's append, for the producer waiting on it.
pub type AppendOutcome = Result<AppendInfo, AppendError>;

#[derive(Serialize, Deserialize)]
enum IndexRecord {
    /// An index rewritten by a purge before the fields of `PurgedUpTo`
    /// (read, never written).
    Purged(LogId<NodeId>),
    Entry(LogId<NodeId>, Kind),
    /// First in an index rewritten by a purge: what the purged entries
    /// leave behind.
    PurgedUpTo {
        log_id: LogId<NodeId>,
        /// The last membership among the purged entries (or before them):
        /// the group's voters, which no remaining entry may name.
        membership: Option<(LogId<NodeId>, Membership<NodeId, BasicNode>)>,
        /// Where each epoch starts, for the epochs that start below the
        /// first entry kept (OffsetForLeaderEpoch answers for them).
        epochs: Vec<(i32, i64)>,
    },
}

struct Indexed {
    /// Where its record starts in `raft-index`.
    position: u64,
    log_id: LogId<NodeId>,
    kind: Kind,
}

struct Inner {
    dir: PathBuf,
    log: Arc<Mutex<PartitionLog>>,
    /// Through the descriptor cache, like the segment files: a broker with
    /// thousands of partitions keeps only the busy ones open.
    index: CachedFile,
    index_end: u64,
    entries: BTreeMap<u64, Indexed>,
    last_purged: Option<LogId<NodeId>>,
    /// Where the latest `PurgedUpTo` record sits in `raft-index`.
    marker_at: Option<u64>,
    /// What the purged entries left behind (see [`IndexRecord::PurgedUpTo`]).
    purged_membership: Option<(LogId<NodeId>, Membership<NodeId, BasicNode>)>,
    purged_epochs: BTreeMap<i32, i64>,
    votes: VoteFiles,
    durability: Durability,
    /// Flushed callbacks of appends written but not yet synced, and whether
    /// a sync pass is running (`Durability::Always`).
    unsynced: Vec<LogFlushed<PartitionTypes>>,
    syncing: bool,
    /// Producers waiting for their `Produce` entry's append, by token.
    waiters: BTreeMap<u64, oneshot::Sender<AppendOutcome>>,
    next_token: u64,
    /// Where each leader epoch (term) starts, like Kafka's
    /// leader-epoch-checkpoint: start offsets strictly increase.
    epochs: BTreeMap<i32, i64>,
    recent: RecentBatches,
}

/// The batches of the entries appended but not yet applied, as written: the
/// state machine and the replication streams read the entries right behind
/// the append, and serving them from here spares a segment lookup and a read
/// per entry. At most [`RECENT_BYTES_MAX`] per partition; what does not fit
/// is read from the segments, as is everything once applied. Clones share it.
#[derive(Clone, Default)]
pub struct RecentBatches(Arc<Mutex<Recent>>);

#[derive(Default)]
struct Recent {
    /// By entry index, ascending.
    entries: VecDeque<(u64, Bytes)>,
    bytes: usize,
}

/// A bound on [`RecentBatches`] per partition.
pub const RECENT_BYTES_MAX: usize = 4 << 20;

impl RecentBatches {
    fn push(&self, index: u64, batches: Bytes) {
        let mut recent = self.0.lock();
        if batches.is_empty() || recent.bytes + batches.len() > RECENT_BYTES_MAX {
            return;
        }
        if recent
            .entries
            .back()
            .is_some_and(|(last, _)| *last >= index)
        {
            // Not behind the last one: the entries were cut and replaced.
            recent.entries.clear();
            recent.bytes = 0;
        }
        recent.bytes += batches.len();
        recent.entries.push_back((index, batches));
    }

    fn get(&self, index: u64) -> Option<Bytes> {
        let recent = self.0.lock();
        let at = recent
            .entries
            .binary_search_by_key(&index, |(i, _)| *i)
            .ok()?;
        recent.entries.get(at).map(|(_, b)| b.clone())
    }

    /// Drops the entries at `index` and above (truncated).
    fn forget_from(&self, index: u64) {
        let mut recent = self.0.lock();
        while recent.entries.back().is_some_and(|(i, _)| *i >= index) {
            if let Some((_, b)) = recent.entries.pop_back() {
                recent.bytes -= b.len();
            }
        }
    }

    /// Drops the entries up to `index` (applied, or purged).
    pub fn forget_through(&self, index: u64) {
        let mut recent = self.0.lock();
        while recent.entries.front().is_some_and(|(i, _)| *i <= index) {
            if let Some((_, b)) = recent.entries.pop_front() {
                recent.bytes -= b.len();
            }
        }
    }

    /// Bytes held now.
    pub fn bytes(&self) -> usize {
        self.0.lock().bytes
    }
}

/// When an append counts as flushed (Raft counts the leader's own copy
/// towards the majority only then).
#[derive(Clone)]
pub enum Durability {
    /// At once: the broker fsyncs on `log.flush.interval.ms`, like Kafka.
    Interval,
    /// Once the segments' data and the entry index are fsynced (`--fsync
    /// always`). Appends that arrive while a sync runs share the next one
    /// (a group commit). `flush_lock`: held by whoever captures the
    /// partition's unsynced files through their fsync, so that no capture
    /// finds a file clean whose sync has not finished.
    Always { flush_lock: Arc<Mutex<()>> },
}

impl Durability {
    /// `Always`, with a lock of its own.
    pub fn always() -> Self {
        Durability::Always {
            flush_lock: Arc::default(),
        }
    }
}

/// The Raft log of one partition group over its `PartitionLog`. Clones
/// share it.
#[derive(Clone)]
pub struct PartitionStore {
    inner: Arc<Mutex<Inner>>,
}

const INDEX_FILE: &str = "raft-index";
/// A purge rewrites `raft-index` without the purged entries once they take
/// this much of it; below, it appends a record that drops them from memory
/// (and from the next open), so the memory follows the purge at once and
/// the file, synced and renamed, is rewritten rarely.
const INDEX_REWRITE_BYTES: u64 = 1 << 20;
const VOTE_FILE: &str = "raft-vote";
const COMMITTED_FILE: &str = "raft-committed";

impl PartitionStore {
    /// Opens the Raft log of the partition whose log is `log`, recovering
    /// the index and the segments to a common end.
    pub fn open(
        log: Arc<Mutex<PartitionLog>>,
        durability: Durability,
    ) -> std::io::Result<PartitionStore> {
        let dir = log.lock().dir().to_path_buf();
        let path = dir.join(INDEX_FILE);
        let mut bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        let index = CachedFile::open(&path, OpenMode::Create)?;
        let (records, good) = decode_records::<IndexRecord>(&bytes)?;
        if good < bytes.len() as u64 {
            tracing::warn!(path = %path.display(), cut = bytes.len() as u64 - good, "cutting a torn tail off a Raft entry index");
            index.get()?.set_len(good)?;
        }
        bytes.clear();
        let mut entries = BTreeMap::new();
        let mut last_purged = None;
        let mut marker_at = None;
        let mut purged_membership = None;
        let mut purged_epochs = BTreeMap::new();
        for (position, record) in records {
            match record {
                IndexRecord::Purged(id) => {
                    entries = entries.split_off(&(id.index + 1));
                    last_purged = Some(id);
                    marker_at = Some(position);
                }
                // First in a rewritten index, or appended after the entries
                // it purges (which a later rewrite drops from the file).
                IndexRecord::PurgedUpTo {
                    log_id,
                    membership,
                    epochs,
                } => {
                    entries = entries.split_off(&(log_id.index + 1));
                    last_purged = Some(log_id);
                    purged_membership = membership;
                    purged_epochs = epochs.into_iter().collect();
                    marker_at = Some(position);
                }
                IndexRecord::Entry(log_id, kind) => {
                    entries.insert(
                        log_id.index,
                        Indexed {
                            position,
                            log_id,
                            kind,
                        },
                    );
                }
            }
        }
        let mut inner = Inner {
            votes: VoteFiles::open(dir.join(VOTE_FILE), dir.join(COMMITTED_FILE))?,
            dir,
            log,
            index,
            index_end: good,
            entries,
            last_purged,
            marker_at,
            purged_membership,
            purged_epochs,
            durability,
            unsynced: Vec::new(),
            syncing: false,
            waiters: BTreeMap::new(),
            next_token: 0,
            epochs: BTreeMap::new(),
            recent: RecentBatches::default(),
        };
        inner.recover()?;
        inner.rebuild_epochs();
        Ok(PartitionStore {
            inner: Arc::new(Mutex::new(inner)),
        })
    }

    /// The id of the last entry this replica holds (what Raft's vote
    /// compares: a candidate must hold at least as much).
    pub fn last_log_id(&self) -> Option<LogId<NodeId>> {
        let inner = self.inner.lock();
        inner
            .entries
            .values()
            .next_back()
            .map(|e| e.log_id)
            .or(inner.last_purged)
    }

    /// Before the group starts on a node that has peers: a vote that made
    /// `node` the leader (its own, committed) is kept as a vote for itself
    /// that never won. openraft would otherwise restore a restarted leader
    /// as leader of its old term, and it would name itself leader (to
    /// clients, in Metadata) until a peer's later term reached it, while
    /// another leads. It still votes for no one else in that term, and
    /// leads again only through an election.
    #[allow(clippy::result_large_err)]
    pub fn forget_own_leadership(&self, node: NodeId) -> Result<(), StorageError<NodeId>> {
        let mut inner = self.inner.lock();
        let Some(vote) = inner.votes.vote() else {
            return Ok(());
        };
        if !vote.is_committed() || vote.leader_id().voted_for() != Some(node) {
            return Ok(());
        }
        inner
            .votes
            .save_vote(&Vote::new(vote.leader_id().get_term(), node))
    }

    /// The last purged entry's id and the membership in effect there: where
    /// the state machine starts after a restart (the purged entries cannot
    /// be applied again).
    pub fn purged_state(&self) -> Option<(LogId<NodeId>, StoredMembership<NodeId, BasicNode>)> {
        let inner = self.inner.lock();
        let id = inner.last_purged?;
        let membership = match &inner.purged_membership {
            Some((at, m)) => StoredMembership::new(Some(*at), m.clone()),
            None => StoredMembership::default(),
        };
        Some((id, membership))
    }

    /// Syncs the segments and the index for the appends waiting on it, pass
    /// after pass until none waits, and tells each waiter. Blocking. A
    /// failed sync takes the log offline (the data may not be on disk);
    /// the waiters get the error, which stops the group.
    fn sync_unsynced(&self, flush_lock: &Mutex<()>) {
        loop {
            let waiting = {
                let mut inner = self.inner.lock();
                if inner.unsynced.is_empty() {
                    inner.syncing = false;
                    return;
                }
                std::mem::take(&mut inner.unsynced)
            };
            let result = {
                let _flushing = flush_lock.lock();
                let captured = {
                    let inner = self.inner.lock();
                    let captured = inner.log.lock().take_unflushed(FlushScope::Data);
                    captured.map(|mut pending| {
                        pending.capture(&inner.index);
                        pending
                    })
                };
                captured.and_then(|pending| pending.sync())
            };
            if let Err(error) = &result {
                tracing::error!(%error, "syncing a partition's appends failed");
                let log = self.inner.lock().log.clone();
                log.lock().mark_offline();
            }
            for callback in waiting {
                callback.log_io_completed(
                    result
                        .as_ref()
                        .map(|_| ())
                        .map_err(|e| std::io::Error::other(e.to_string())),
                );
            }
        }
    }

    /// The batches of the entries not yet applied, for the state machine to
    /// release as it applies them.
    pub fn recent(&self) -> RecentBatches {
        self.inner.lock().recent.clone()
    }

    /// The index of the last purged entry (0 if none).
    pub fn purged_index(&self) -> u64 {
        self.inner.lock().last_purged.map_or(0, |l| l.index)
    }

    /// How many entries the index holds now.
    pub fn entry_count(&self) -> usize {
        self.inner.lock().entries.len()
    }

    /// A token for a `Produce` entry, and the outcome of its append when
    /// this node's store appends it (dropped unsent if it never does).
    /// Call [`forget`](Self::forget) if the entry is not proposed after all.
    pub fn expect(&self) -> (u64, oneshot::Receiver<AppendOutcome>) {
        let mut inner = self.inner.lock();
        let token = inner.next_token;
        inner.next_token += 1;
        let (tx, rx) = oneshot::channel();
        inner.waiters.insert(token, tx);
        (token, rx)
    }

    /// Drops the wait for `token`'s append (its producer went away, or its
    /// entry will never be appended here: this node does not lead).
    pub fn forget(&self, token: u64) {
        self.inner.lock().waiters.remove(&token);
    }

    /// Kafka's OffsetForLeaderEpoch for `requested`, given the log end
    /// offset: the largest epoch at or below it and the offset where the
    /// next epoch starts (the log end for the latest epoch); `(-1, -1)` for
    /// an epoch above the latest (Kafka's `LeaderEpochFileCache.endOffsetFor`).
    pub fn end_offset_for_epoch(&self, requested: i32) -> (i32, i64) {
        let inner = self.inner.lock();
        let log_end = inner.log.lock().log_end_offset();
        end_offset_for(&inner.epochs, requested, log_end)
    }

    /// What is known committed when the store opens: batches written
    /// before the partition had a Raft group (below its first entry), and
    /// those up to the last commit this node saved. The high watermark
    /// starts there, so a restarted node serves (and its group coordinator
    /// replays) what it served before without waiting for Raft.
    pub fn committed_end(&self) -> i64 {
        let inner = self.inner.lock();
        let log_end = inner.log.lock().log_end_offset();
        let floor = inner
            .entries
            .values()
            .next()
            .map_or(log_end, |e| e.kind.start());
        let committed = inner.votes.committed().map(|c| c.index);
        let end = committed.and_then(|c| {
            inner
                .entries
                .range(..=c)
                .rev()
                .find_map(|(_, e)| match e.kind {
                    Kind::Records { end, .. } => Some(end),
                    _ => None,
                })
        });
        end.unwrap_or(floor).max(floor).min(log_end)
    }

    /// The partition log's config now.
    pub fn log_config(&self) -> crate::log::LogConfig {
        self.inner.lock().log.lock().config().clone()
    }

    /// The start offset of every epoch, oldest first.
    pub fn epochs(&self) -> Vec<(i32, i64)> {
        self.inner
            .lock()
            .epochs
            .iter()
            .map(|(&e, &s)| (e, s))
            .collect()
    }
}

/// [`PartitionStore::end_offset_for_epoch`] over an epoch map.
fn end_offset_for(epochs: &BTreeMap<i32, i64>, requested: i32, log_end: i64) -> (i32, i64) {
    if requested < 0 {
        return (-1, -1);
    }
    if epochs.keys().next_back() == Some(&requested) {
        return (requested, log_end);
    }
    let Some((_, &next_start)) = epochs.range(requested + 1..).next() else {
        return (-1, -1);
    };
    match epochs.range(..=requested).next_back() {
        Some((&floor, _)) => (floor, next_start),
        None => (requested, next_start),
    }
}

/// Records that epoch `epoch` starts at `start`, if it is newer than every
/// epoch known; an epoch starting where a later-recorded one does replaces
/// it (Kafka's `assign`).
fn assign_epoch(epochs: &mut BTreeMap<i32, i64>, epoch: i32, start: i64) {
    if epochs.keys().next_back().is_some_and(|&last| last >= epoch) {
        return;
    }
    epochs.retain(|_, s| *s < start);
    epochs.insert(epoch, start);
}

fn epoch_of(log_id: &LogId<NodeId>) -> i32 {
    i32::try_from(log_id.leader_id.term).unwrap_or(i32::MAX)
}

impl Inner {
    /// The epoch map from the index: what a purge left, then the entries.
    /// Without a purge, batches below the first indexed entry were written
    /// before the partition had a Raft group, in epoch 0.
    fn rebuild_epochs(&mut self) {
        self.epochs = self.purged_epochs.clone();
        let (log_start, log_end) = {
            let log = self.log.lock();
            (log.log_start_offset(), log.log_end_offset())
        };
        let first_indexed = self
            .entries
            .values()
            .next()
            .map_or(log_end, |e| e.kind.start());
        if self.epochs.is_empty() && log_start < first_indexed {
            self.epochs.insert(0, log_start);
        }
        for e in self.entries.values() {
            assign_epoch(&mut self.epochs, epoch_of(&e.log_id), e.kind.start());
        }
    }

    /// Cuts the index or the segments, whichever runs longer, to the other.
    fn recover(&mut self) -> std::io::Result<()> {
        let indexed_end = self.entries.values().rev().find_map(|e| match e.kind {
            Kind::Records { end, .. } => Some(end),
            _ => None,
        });
        let Some(indexed_end) = indexed_end else {
            return Ok(());
        };
        let mut log = self.log.lock();
        let log_end = log.log_end_offset();
        if log_end > indexed_end {
            tracing::warn!(dir = %self.dir.display(), log_end, indexed_end, "truncating batches that no Raft entry indexes");
            log.truncate_to(indexed_end).map_err(io_error)?;
        } else if log_end < indexed_end {
            let lost = self
                .entries
                .values()
                .find(|e| matches!(e.kind, Kind::Records { end, .. } if end > log_end))
                .map(|e| e.log_id.index);
            if let Some(index) = lost {
                tracing::warn!(dir = %self.dir.display(), log_end, indexed_end, from_index = index, "dropping Raft entries whose batches were lost");
                drop(log);
                self.truncate_index(index)?;
            }
        }
        Ok(())
    }

    fn truncate_index(&mut self, index: u64) -> std::io::Result<()> {
        let Some(position) = self.entries.range(index..).next().map(|(_, e)| e.position) else {
            return Ok(());
        };
        let file = self.index.get()?;
        file.set_len(position)?;
        self.index_end = position;
        self.entries.split_off(&index);
        if self.marker_at.is_some_and(|at| at >= position) {
            // The purge record sat behind the entries cut: written again.
            self.append_marker()?;
        }
        file.sync_all()?;
        Ok(())
    }

    /// Appends a `PurgedUpTo` record of the purge state now.
    fn append_marker(&mut self) -> std::io::Result<()> {
        let Some(log_id) = self.last_purged else {
            return Ok(());
        };
        let record = encode_record(&IndexRecord::PurgedUpTo {
            log_id,
            membership: self.purged_membership.clone(),
            epochs: self.purged_epochs.iter().map(|(&e, &s)| (e, s)).collect(),
        })?;
        self.index.get()?.write_all_at(&record, self.index_end)?;
        if matches!(self.durability, Durability::Always { .. }) {
            self.index.mark_dirty();
        }
        self.marker_at = Some(self.index_end);
        self.index_end += record.len() as u64;
        Ok(())
    }

    fn append(&mut self, entries: Vec<Entry<PartitionTypes>>) -> std::io::Result<()> {
        let mut buf = Vec::new();
        let mut placed = Vec::with_capacity(entries.len());
        {
            let mut log = self.log.lock();
            for entry in entries {
                let epoch = epoch_of(&entry.log_id);
                let at = log.log_end_offset();
                assign_epoch(&mut self.epochs, epoch, at);
                let kind = match entry.payload {
                    EntryPayload::Blank => Kind::Blank { at },
                    EntryPayload::Membership(membership) => Kind::Membership {
                        membership: Box::new(membership),
                        at,
                    },
                    // Applied when committed (the state machine), not here.
                    EntryPayload::Normal(PartitionEntry::LogStart { offset }) => {
                        Kind::LogStart { at, start: offset }
                    }
                    EntryPayload::Normal(PartitionEntry::Produce {
                        records,
                        checked,
                        now_ms,
                        token,
                    }) => {
                        let outcome = match &checked {
                            Some(validated) => {
                                log.append_validated(validated.as_records(), epoch, now_ms)
                            }
                            None => log.append(&records, epoch, now_ms),
                        };
                        if log.is_offline() {
                            return Err(io_error(format!(
                                "the partition log went offline appending entry {}",
                                entry.log_id.index
                            )));
                        }
                        let end = log.log_end_offset();
                        let bytes = outcome.as_ref().map_or(0, |i| i.size_bytes as u64);
                        if let Ok(info) = &outcome {
                            self.recent.push(entry.log_id.index, info.written.clone());
                        }
                        if let Some(waiter) = self.waiters.remove(&token) {
                            let _ = waiter.send(outcome);
                        }
                        Kind::Records {
                            first: at,
                            end,
                            bytes,
                        }
                    }
                    EntryPayload::Normal(PartitionEntry::Records { records }) => {
                        // Batches that start past this log's end: the
                        // leader's log start moved past it (retention,
                        // DeleteRecords) and sent the entries below it
                        // empty. Log matching leaves no other way.
                        let base = Batches::new(&records)
                            .next()
                            .and_then(|b| b.ok())
                            .map(|(_, b)| b.header().base_offset());
                        if let Some(base) = base.filter(|&b| b > log.log_end_offset()) {
                            log.start_at(base).map_err(io_error)?;
                        }
                        let first = log.log_end_offset();
                        if !records.is_empty() {
                            log.append_as_follower(&records, crate::broker::now_ms())
                                .map_err(|e| {
                                    io_error(format!(
                                        "appending entry {} as a follower at offset {first}: {e}",
                                        entry.log_id.index
                                    ))
                                })?;
                            self.recent.push(entry.log_id.index, records.clone());
                        }
                        Kind::Records {
                            first,
                            end: log.log_end_offset(),
                            bytes: records.len() as u64,
                        }
                    }
                };
                let record = encode_record(&IndexRecord::Entry(entry.log_id, kind.clone()))?;
                placed.push(Indexed {
                    position: self.index_end + buf.len() as u64,
                    log_id: entry.log_id,
                    kind,
                });
                buf.extend(record);
            }
        }
        let file = self.index.get()?;
        file.write_all_at(&buf, self.index_end)?;
        if matches!(self.durability, Durability::Always { .. }) {
            // For the sync pass's capture (and for the descriptor cache,
            // which syncs a dirty file before closing it).
            self.index.mark_dirty();
        }
        self.index_end += buf.len() as u64;
        for e in placed {
            self.entries.insert(e.log_id.index, e);
        }
        Ok(())
    }

    /// Removes every entry at `index` and above, and their batches.
    fn truncate(&mut self, index: u64) -> std::io::Result<()> {
        self.recent.forget_from(index);
        let first_offset = self.entries.range(index..).find_map(|(_, e)| match e.kind {
            Kind::Records { first, .. } => Some(first),
            _ => None,
        });
        if let Some(offset) = first_offset {
            self.log.lock().truncate_to(offset).map_err(io_error)?;
        }
        self.truncate_index(index)?;
        // Epochs of the entries removed are gone with them; the ones left
        // keep their start offsets.
        match self
            .entries
            .values()
            .next_back()
            .map(|e| epoch_of(&e.log_id))
        {
            Some(last) => self.epochs.retain(|&e, _| e <= last),
            None => self.rebuild_epochs(),
        }
        Ok(())
    }

    /// Forgets every entry up to `log_id` (their batches stay: retention
    /// owns the segments), keeping what they leave behind: the membership
    /// they last set and the start of the epochs below the first entry
    /// kept. The index file gets a record of it, or is rewritten without
    /// them once they take [`INDEX_REWRITE_BYTES`] of it.
    fn purge(&mut self, log_id: LogId<NodeId>) -> std::io::Result<()> {
        self.recent.forget_through(log_id.index);
        let kept = self.entries.split_off(&(log_id.index + 1));
        let purged = std::mem::take(&mut self.entries);
        let membership = purged
            .values()
            .rev()
            .find_map(|e| match &e.kind {
                Kind::Membership { membership, .. } => Some((e.log_id, (**membership).clone())),
                _ => None,
            })
            .or_else(|| self.purged_membership.clone());
        let first_kept = kept.values().next().map(|e| e.kind.start());
        let epochs: BTreeMap<i32, i64> = self
            .epochs
            .iter()
            .filter(|(_, &start)| first_kept.is_none_or(|first| start < first))
            .map(|(&e, &s)| (e, s))
            .collect();
        self.last_purged = Some(log_id);
        self.purged_membership = membership.clone();
        self.purged_epochs = epochs.clone();
        let dead = kept.values().next().map_or(self.index_end, |e| e.position);
        if dead < INDEX_REWRITE_BYTES {
            // Cheap and frequent: a record saying so, after the entries it
            // drops. Losing it in a crash only brings them back.
            self.entries = kept;
            return self.append_marker();
        }
        let mut buf = encode_record(&IndexRecord::PurgedUpTo {
            log_id,
            membership,
            epochs: epochs.iter().map(|(&e, &s)| (e, s)).collect(),
        })?;
        let mut entries = BTreeMap::new();
        for (index, e) in kept {
            let position = buf.len() as u64;
            buf.extend(encode_record(&IndexRecord::Entry(
                e.log_id,
                e.kind.clone(),
            ))?);
            entries.insert(index, Indexed { position, ..e });
        }
        let path = self.dir.join(INDEX_FILE);
        write_atomically(&path, &buf, true)?;
        self.index = CachedFile::open(&path, OpenMode::Create)?;
        self.index_end = buf.len() as u64;
        self.entries = entries;
        self.marker_at = Some(0);
        Ok(())
    }

    /// One entry as replicas see it; an I/O error names the entry's index.
    fn read(&self, e: &Indexed) -> std::io::Result<Entry<PartitionTypes>> {
        let payload = match &e.kind {
            Kind::Blank { .. } => EntryPayload::Blank,
            Kind::Membership { membership, .. } => EntryPayload::Membership((**membership).clone()),
            Kind::LogStart { start, .. } => {
                EntryPayload::Normal(PartitionEntry::LogStart { offset: *start })
            }
            Kind::Records { first, end, bytes } => {
                let log_start = self.log.lock().log_start_offset();
                // Batches wholly below the log start are gone (retention,
                // DeleteRecords): the entry goes out empty, and a replica
                // that lacks them restarts its log at the next batch it
                // receives. An entry the log start cuts (DeleteRecords
                // inside it) goes out from the batch holding the log start,
                // which the leader still serves: the replica must hold it
                // too, or it would lose the records above the log start
                // in that batch.
                let records = if first == end || *end <= log_start {
                    Bytes::new()
                } else if *first < log_start {
                    let info = self
                        .log
                        .lock()
                        .read(log_start, *bytes as usize, *end, true)
                        .map_err(io_error)?;
                    if info.next_offset != *end {
                        return Err(io_error(format!(
                            "offsets {log_start}..{end} read back up to {}",
                            info.next_offset
                        )));
                    }
                    info.records
                } else if let Some(batches) = self.recent.get(e.log_id.index) {
                    batches
                } else {
                    let info = self
                        .log
                        .lock()
                        .read(*first, *bytes as usize, *end, true)
                        .map_err(io_error)?;
                    if info.records.len() as u64 != *bytes {
                        return Err(io_error(format!(
                            "offsets {first}..{end} read back {} bytes, not {bytes}",
                            info.records.len()
                        )));
                    }
                    info.records
                };
                EntryPayload::Normal(PartitionEntry::Records { records })
            }
        };
        Ok(Entry {
            log_id: e.log_id,
            payload,
        })
    }
}

impl RaftLogReader<PartitionTypes> for PartitionStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<PartitionTypes>>, StorageError<NodeId>> {
        let inner = self.inner.lock();
        let mut out = Vec::new();
        for (&index, e) in inner.entries.range(range) {
            match inner.read(e) {
                Ok(entry) => out.push(entry),
                Err(err) => return Err(StorageIOError::read_log_at_index(index, &err).into()),
            }
        }
        Ok(out)
    }
}

impl RaftLogStorage<PartitionTypes> for PartitionStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<PartitionTypes>, StorageError<NodeId>> {
        let last_log_id = self.last_log_id();
        Ok(LogState {
            last_purged_log_id: self.inner.lock().last_purged,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.inner.lock().votes.save_vote(vote)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        Ok(self.inner.lock().votes.vote())
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        self.inner.lock().votes.save_committed(committed)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        Ok(self.inner.lock().votes.committed())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<PartitionTypes>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<PartitionTypes>> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<_> = entries.into_iter().collect();
        let mut inner = self.inner.lock();
        let result = inner.append(entries);
        let Durability::Always { flush_lock } = &inner.durability else {
            drop(inner);
            return appended(callback, result);
        };
        if let Err(e) = result {
            drop(inner);
            return appended(callback, Err(e));
        }
        let flush_lock = flush_lock.clone();
        inner.unsynced.push(callback);
        if std::mem::replace(&mut inner.syncing, true) {
            return Ok(()); // the running pass picks it up
        }
        drop(inner);
        let store = self.clone();
        let pass = move || store.sync_unsynced(&flush_lock);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(pass)),
            Err(_) => drop(std::thread::spawn(pass)),
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.inner
            .lock()
            .truncate(log_id.index)
            .map_err(|e| StorageIOError::write_logs(&e).into())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.inner
            .lock()
            .purge(log_id)
            .map_err(|e| StorageIOError::write_logs(&e).into())
    }
}

#[cfg(test)]
mod tests;
