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
//!   blank/membership payload), 40-odd bytes per batch. A rewrite after a
//!   purge starts with a `Purged` record. `raft-vote` (synced) and
//!   `raft-committed` (a hint) sit next to it.
//!
//! Recovery: the index and the segments are two files, written batches
//! first, and with interval flushing either may lose its tail in a crash.
//! On open the longer one is cut to the shorter: batches past the last
//! indexed entry are truncated, and indexed entries whose batches are gone
//! are dropped (with everything after them).

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::ops::RangeBounds;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, LogState, Membership, RaftLogReader, StorageError,
    StorageIOError, Vote,
};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::entry_log::{
    appended, decode_records, encode_record, io_error, write_atomically, VoteFiles,
};
use super::types::NodeId;
use crate::log::{AppendError, AppendInfo, PartitionLog};

/// Most append outcomes kept for their producers' answers (the oldest are
/// dropped: an answer nobody collected is not waited for any more).
const OUTCOMES_MAX: usize = 4096;

/// What a partition group's entries carry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum PartitionEntry {
    /// A producer's batches as the leader received them (already validated
    /// on the request path); the leader's store assigns their offsets.
    Produce { records: Bytes, now_ms: i64 },
    /// Batches with offsets assigned, as every replica stores them.
    Records { records: Bytes },
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
    Records {
        first: i64,
        end: i64,
        bytes: u64,
    },
    Blank,
    Membership(Membership<NodeId, BasicNode>),
}

#[derive(Serialize, Deserialize)]
enum IndexRecord {
    Purged(LogId<NodeId>),
    Entry(LogId<NodeId>, Kind),
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
    index: File,
    index_end: u64,
    entries: BTreeMap<u64, Indexed>,
    last_purged: Option<LogId<NodeId>>,
    votes: VoteFiles,
    /// Sync the segments and the index before an append counts as flushed
    /// (`--fsync always`); otherwise they are flushed on the interval.
    sync: bool,
    /// What appending each of this node's `Produce` entries did, by index.
    outcomes: BTreeMap<u64, Result<AppendInfo, AppendError>>,
}

/// The Raft log of one partition group over its `PartitionLog`. Clones
/// share it.
#[derive(Clone)]
pub struct PartitionStore {
    inner: Arc<Mutex<Inner>>,
}

const INDEX_FILE: &str = "raft-index";
const VOTE_FILE: &str = "raft-vote";
const COMMITTED_FILE: &str = "raft-committed";

impl PartitionStore {
    /// Opens the Raft log of the partition whose log is `log`, recovering
    /// the index and the segments to a common end.
    pub fn open(log: Arc<Mutex<PartitionLog>>, sync: bool) -> std::io::Result<PartitionStore> {
        let dir = log.lock().dir().to_path_buf();
        let path = dir.join(INDEX_FILE);
        let mut index = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)?;
        let mut bytes = Vec::new();
        index.read_to_end(&mut bytes)?;
        let (records, good) = decode_records::<IndexRecord>(&bytes)?;
        if good < bytes.len() as u64 {
            tracing::warn!(path = %path.display(), cut = bytes.len() as u64 - good, "cutting a torn tail off a Raft entry index");
            index.set_len(good)?;
        }
        let mut entries = BTreeMap::new();
        let mut last_purged = None;
        for (position, record) in records {
            match record {
                IndexRecord::Purged(id) => last_purged = Some(id),
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
            sync,
            outcomes: BTreeMap::new(),
        };
        inner.recover()?;
        Ok(PartitionStore {
            inner: Arc::new(Mutex::new(inner)),
        })
    }

    /// What appending this node's `Produce` entry at `index` did (once).
    pub fn take_outcome(&self, index: u64) -> Option<Result<AppendInfo, AppendError>> {
        self.inner.lock().outcomes.remove(&index)
    }
}

impl Inner {
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
        self.index.set_len(position)?;
        self.index.sync_all()?;
        self.index_end = position;
        self.entries.split_off(&index);
        Ok(())
    }

    fn append(&mut self, entries: Vec<Entry<PartitionTypes>>) -> std::io::Result<()> {
        let mut buf = Vec::new();
        let mut placed = Vec::with_capacity(entries.len());
        {
            let mut log = self.log.lock();
            for entry in entries {
                let kind = match entry.payload {
                    EntryPayload::Blank => Kind::Blank,
                    EntryPayload::Membership(m) => Kind::Membership(m),
                    EntryPayload::Normal(PartitionEntry::Produce { records, now_ms }) => {
                        let first = log.log_end_offset();
                        let epoch = i32::try_from(entry.log_id.leader_id.term).unwrap_or(i32::MAX);
                        let outcome = log.append(&records, epoch, now_ms);
                        if log.is_offline() {
                            return Err(io_error(format!(
                                "the partition log went offline appending entry {}",
                                entry.log_id.index
                            )));
                        }
                        let end = log.log_end_offset();
                        let bytes = outcome.as_ref().map_or(0, |i| i.size_bytes as u64);
                        self.outcomes.insert(entry.log_id.index, outcome);
                        while self.outcomes.len() > OUTCOMES_MAX {
                            self.outcomes.pop_first();
                        }
                        Kind::Records { first, end, bytes }
                    }
                    EntryPayload::Normal(PartitionEntry::Records { records }) => {
                        let first = log.log_end_offset();
                        if !records.is_empty() {
                            log.append_as_follower(&records, crate::broker::now_ms())
                                .map_err(|e| {
                                    io_error(format!(
                                        "appending entry {} as a follower at offset {first}: {e}",
                                        entry.log_id.index
                                    ))
                                })?;
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
            if self.sync {
                log.flush().map_err(io_error)?;
            }
        }
        self.index.write_all(&buf)?;
        if self.sync {
            self.index.sync_data()?;
        }
        self.index_end += buf.len() as u64;
        for e in placed {
            self.entries.insert(e.log_id.index, e);
        }
        Ok(())
    }

    /// Removes every entry at `index` and above, and their batches.
    fn truncate(&mut self, index: u64) -> std::io::Result<()> {
        let first_offset = self.entries.range(index..).find_map(|(_, e)| match e.kind {
            Kind::Records { first, .. } => Some(first),
            _ => None,
        });
        if let Some(offset) = first_offset {
            self.log.lock().truncate_to(offset).map_err(io_error)?;
        }
        self.truncate_index(index)
    }

    /// Forgets every entry up to `log_id` (their batches stay: retention
    /// owns the segments) and rewrites the index without them.
    fn purge(&mut self, log_id: LogId<NodeId>) -> std::io::Result<()> {
        let kept = self.entries.split_off(&(log_id.index + 1));
        let mut buf = encode_record(&IndexRecord::Purged(log_id))?;
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
        self.index = OpenOptions::new().read(true).append(true).open(&path)?;
        self.index_end = buf.len() as u64;
        self.entries = entries;
        self.last_purged = Some(log_id);
        Ok(())
    }

    /// One entry as replicas see it; an I/O error names the entry's index.
    fn read(&self, e: &Indexed) -> std::io::Result<Entry<PartitionTypes>> {
        let payload = match &e.kind {
            Kind::Blank => EntryPayload::Blank,
            Kind::Membership(m) => EntryPayload::Membership(m.clone()),
            Kind::Records { first, end, bytes } => {
                let records = if first == end {
                    Bytes::new()
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
        let inner = self.inner.lock();
        let last = inner
            .entries
            .values()
            .next_back()
            .map(|e| e.log_id)
            .or(inner.last_purged);
        Ok(LogState {
            last_purged_log_id: inner.last_purged,
            last_log_id: last,
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
        let result = self.inner.lock().append(entries);
        appended(callback, result)
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
