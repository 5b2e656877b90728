//! A file-backed Raft log and state machine for small groups (the metadata
//! group), whose entries are serialized commands.
//!
//! Files in the group's directory:
//! - `raft.log`: records of `[length u32][crc32c u32][bincode Record]`, in
//!   index order. A rewrite (after a purge) starts with a `Purged` record.
//!   Recovery keeps every whole record whose checksum holds and cuts the
//!   file after the last one (a torn tail after a crash); a record whose
//!   checksum holds but does not decode is corruption and fails the open.
//! - `vote`: the last saved vote (written to a temporary file, synced,
//!   renamed, and the directory synced).
//! - `committed`: the last committed log id, a hint (not synced).
//! - `snapshot`: the last snapshot: its metadata and the applier's state.
//!
//! Every append is synced before openraft hears it is flushed: this log
//! carries cluster metadata, which is small and rare, and whose loss would
//! cost more than the sync. The file I/O is blocking and short.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::ops::RangeBounds;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bincode::Options;
use openraft::storage::{LogFlushed, RaftLogStorage, RaftStateMachine};
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, LogState, RaftLogReader, RaftSnapshotBuilder,
    RaftTypeConfig, Snapshot, SnapshotMeta, StorageError, StorageIOError, StoredMembership, Vote,
};
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::types::NodeId;
use crate::log::file_cache::{CachedFile, OpenMode};

/// Largest record the log accepts or reads back (a metadata command).
const RECORD_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Largest snapshot file read back.
const SNAPSHOT_BYTES_MAX: usize = 1024 * 1024 * 1024;

/// The type configurations this log stores: entries are openraft's, nodes
/// are `BasicNode`s, snapshots are bytes.
pub trait EntryTypes:
    RaftTypeConfig<
    NodeId = NodeId,
    Node = BasicNode,
    Entry = Entry<Self>,
    SnapshotData = Vec<u8>,
    Responder = openraft::impls::OneshotResponder<Self>,
    D: Clone,
>
{
}

impl<C> EntryTypes for C where
    C: RaftTypeConfig<
        NodeId = NodeId,
        Node = BasicNode,
        Entry = Entry<C>,
        SnapshotData = Vec<u8>,
        Responder = openraft::impls::OneshotResponder<C>,
        D: Clone,
    >
{
}

/// What a group's state machine does with its commands.
pub trait Applier: Default + Send + Sync + 'static {
    type Command;
    type Response: Default;

    fn apply(&mut self, command: &Self::Command) -> Self::Response;
    /// The answer to an entry that carries no command (blank, membership).
    fn no_response() -> Self::Response {
        Self::Response::default()
    }
    /// The whole state, for a snapshot.
    fn save(&self) -> Result<Vec<u8>, String>;
    /// The state a snapshot holds.
    fn load(bytes: &[u8]) -> Result<Self, String>;
}

#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
enum Record<C: EntryTypes> {
    Purged(LogId<NodeId>),
    Entry(C::Entry),
}

pub(super) fn codec() -> impl Options {
    bincode::DefaultOptions::new()
        .with_limit(RECORD_BYTES_MAX as u64)
        .reject_trailing_bytes()
}

pub(super) fn encode_record<T: Serialize>(value: &T) -> std::io::Result<Vec<u8>> {
    let body = codec()
        .serialize(value)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    let mut out = Vec::with_capacity(8 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&crc32c::crc32c(&body).to_be_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Splits `bytes` into whole records with good checksums; the decoded
/// records with their file positions, and where the good part ends.
pub(super) fn decode_records<T: DeserializeOwned>(
    bytes: &[u8],
) -> std::io::Result<(Vec<(u64, T)>, u64)> {
    let mut out = Vec::new();
    let mut pos = 0usize;
    while bytes.len() - pos >= 8 {
        let len = u32::from_be_bytes([bytes[pos], bytes[pos + 1], bytes[pos + 2], bytes[pos + 3]])
            as usize;
        let crc = u32::from_be_bytes([
            bytes[pos + 4],
            bytes[pos + 5],
            bytes[pos + 6],
            bytes[pos + 7],
        ]);
        if len > RECORD_BYTES_MAX || bytes.len() - pos - 8 < len {
            break;
        }
        let body = &bytes[pos + 8..pos + 8 + len];
        if crc32c::crc32c(body) != crc {
            break;
        }
        let value = codec().deserialize(body).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("record at byte {pos} has a good checksum but does not decode: {e}"),
            )
        })?;
        out.push((pos as u64, value));
        pos += 8 + len;
    }
    Ok((out, pos as u64))
}

/// Writes `bytes` to `path` so that a crash leaves the old or the new file.
pub(super) fn write_atomically(path: &Path, bytes: &[u8], sync: bool) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut file = File::create(&tmp)?;
        file.write_all(bytes)?;
        if sync {
            file.sync_all()?;
        }
    }
    std::fs::rename(&tmp, path)?;
    if sync {
        if let Some(dir) = path.parent() {
            File::open(dir)?.sync_all()?;
        }
    }
    Ok(())
}

/// Reads a single-record file; `None` if it is missing or torn.
pub(super) fn read_single<T: DeserializeOwned>(path: &Path) -> std::io::Result<Option<T>> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let (mut records, _) = decode_records::<T>(&bytes)?;
    Ok(records.pop().map(|(_, value)| value))
}

/// A group's vote (saved atomically and synced: Raft's safety rests on it)
/// and its committed log id (a hint, not synced: a lost or stale value only
/// means re-learning it from the leader), each in its own file.
///
/// The hint is written at most every [`COMMITTED_HINT_INTERVAL`]: openraft
/// saves it at every commit, and a file rewrite per commit (create, write,
/// rename) cost a partition's produce path a fifth of its time. It is
/// written in place, one [`COMMITTED_HINT_BYTES`] record at the start of
/// the file: a rename over the old file made ext4 start writing the new one
/// back at once, and stalled the group's Raft task for up to 50 ms. A torn
/// write fails its checksum and reads as no hint.
pub(super) struct VoteFiles {
    vote_path: PathBuf,
    committed_file: CachedFile,
    vote: Option<Vote<NodeId>>,
    committed: Option<LogId<NodeId>>,
    // tokio's clock: the simulated one in the Raft simulation.
    committed_written: Option<tokio::time::Instant>,
}

/// The commit hint's record, padded with bytes that cannot start a record.
const COMMITTED_HINT_BYTES: usize = 64;

/// Longest a saved commit hint lags the commit (a stale hint is safe).
pub(super) const COMMITTED_HINT_INTERVAL: std::time::Duration =
    std::time::Duration::from_millis(200);

// The save methods and `appended` return exactly what openraft's storage
// trait methods return, so the callers pass them straight on.
#[allow(clippy::result_large_err)]
impl VoteFiles {
    pub(super) fn open(vote_path: PathBuf, committed_path: PathBuf) -> std::io::Result<Self> {
        Ok(VoteFiles {
            vote: read_single(&vote_path)?,
            committed: read_single::<Option<LogId<NodeId>>>(&committed_path)?.flatten(),
            vote_path,
            committed_file: CachedFile::open(&committed_path, OpenMode::Create)?,
            committed_written: None,
        })
    }

    pub(super) fn vote(&self) -> Option<Vote<NodeId>> {
        self.vote
    }

    pub(super) fn committed(&self) -> Option<LogId<NodeId>> {
        self.committed
    }

    pub(super) fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        let bytes = encode_record(vote).map_err(|e| StorageIOError::write_vote(&e))?;
        write_atomically(&self.vote_path, &bytes, true)
            .map_err(|e| StorageIOError::write_vote(&e))?;
        self.vote = Some(*vote);
        Ok(())
    }

    pub(super) fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        self.committed = committed;
        let due = self
            .committed_written
            .is_none_or(|at| at.elapsed() >= COMMITTED_HINT_INTERVAL);
        if due {
            let mut bytes = encode_record(&committed).map_err(|e| StorageIOError::write(&e))?;
            // A record length of 0xFFFFFFFF is over any bound: reading stops.
            bytes.resize(bytes.len().max(COMMITTED_HINT_BYTES), 0xFF);
            self.committed_file
                .get()
                .and_then(|file| file.write_all_at(&bytes, 0))
                .map_err(|e| StorageIOError::write(&e))?;
            self.committed_written = Some(tokio::time::Instant::now());
        }
        Ok(())
    }
}

/// Tells openraft how an append went, and returns it as a storage result.
#[allow(clippy::result_large_err)]
pub(super) fn appended<C: RaftTypeConfig<NodeId = NodeId>>(
    callback: LogFlushed<C>,
    result: std::io::Result<()>,
) -> Result<(), StorageError<NodeId>> {
    match result {
        Ok(()) => {
            callback.log_io_completed(Ok(()));
            Ok(())
        }
        Err(e) => {
            let error = StorageIOError::write_logs(&e);
            callback.log_io_completed(Err(e));
            Err(error.into())
        }
    }
}

struct LogInner<C: EntryTypes> {
    dir: PathBuf,
    file: File,
    /// Index → (file position of its record, entry).
    entries: BTreeMap<u64, (u64, C::Entry)>,
    end: u64,
    votes: VoteFiles,
    last_purged: Option<LogId<NodeId>>,
}

/// The Raft log of one group, in `dir`. Clones share it.
pub struct EntryLog<C: EntryTypes> {
    inner: Arc<Mutex<LogInner<C>>>,
}

impl<C: EntryTypes> Clone for EntryLog<C> {
    fn clone(&self) -> Self {
        EntryLog {
            inner: self.inner.clone(),
        }
    }
}

pub(super) fn io_error(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

impl<C: EntryTypes> EntryLog<C> {
    /// Opens (or creates) the log in `dir`, cutting a torn tail.
    pub fn open(dir: &Path) -> std::io::Result<EntryLog<C>> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("raft.log");
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let (records, good) = decode_records::<Record<C>>(&bytes)?;
        if good < bytes.len() as u64 {
            tracing::warn!(
                path = %path.display(),
                kept = good,
                cut = bytes.len() as u64 - good,
                "cutting a torn tail off a Raft log"
            );
            file.set_len(good)?;
            file.sync_all()?;
        }
        let mut entries = BTreeMap::new();
        let mut last_purged = None;
        for (pos, record) in records {
            match record {
                Record::Purged(id) => last_purged = Some(id),
                Record::Entry(entry) => {
                    entries.insert(entry.log_id.index, (pos, entry));
                }
            }
        }
        Ok(EntryLog {
            inner: Arc::new(Mutex::new(LogInner {
                dir: dir.to_path_buf(),
                file,
                entries,
                end: good,
                votes: VoteFiles::open(dir.join("vote"), dir.join("committed"))?,
                last_purged,
            })),
        })
    }
}

impl<C: EntryTypes> LogInner<C> {
    fn append(&mut self, entries: Vec<C::Entry>) -> std::io::Result<()> {
        let mut buf = Vec::new();
        let mut placed = Vec::with_capacity(entries.len());
        for entry in entries {
            let record = encode_record(&Record::<C>::Entry(entry.clone()))?;
            placed.push((self.end + buf.len() as u64, entry));
            buf.extend(record);
        }
        self.file.write_all(&buf)?;
        self.file.sync_data()?;
        self.end += buf.len() as u64;
        for (pos, entry) in placed {
            self.entries.insert(entry.log_id.index, (pos, entry));
        }
        Ok(())
    }

    /// Removes every entry at `index` and above.
    fn truncate(&mut self, index: u64) -> std::io::Result<()> {
        let Some((&first, &(pos, _))) = self.entries.range(index..).next() else {
            return Ok(());
        };
        self.file.set_len(pos)?;
        self.file.sync_all()?;
        self.end = pos;
        self.entries.split_off(&first);
        Ok(())
    }

    /// Forgets every entry up to `log_id` and rewrites the file without them.
    fn purge(&mut self, log_id: LogId<NodeId>) -> std::io::Result<()> {
        let kept = self.entries.split_off(&(log_id.index + 1));
        let mut buf = encode_record(&Record::<C>::Purged(log_id))?;
        let mut entries = BTreeMap::new();
        for (index, (_, entry)) in kept {
            entries.insert(index, (buf.len() as u64, entry.clone()));
            buf.extend(encode_record(&Record::<C>::Entry(entry))?);
        }
        let path = self.dir.join("raft.log");
        write_atomically(&path, &buf, true)?;
        self.file = OpenOptions::new().read(true).append(true).open(&path)?;
        self.end = buf.len() as u64;
        self.entries = entries;
        self.last_purged = Some(log_id);
        Ok(())
    }
}

impl<C: EntryTypes> RaftLogReader<C> for EntryLog<C> {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<C::Entry>, StorageError<NodeId>> {
        let inner = self.inner.lock();
        Ok(inner
            .entries
            .range(range)
            .map(|(_, (_, entry))| entry.clone())
            .collect())
    }
}

impl<C: EntryTypes> RaftLogStorage<C> for EntryLog<C> {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<C>, StorageError<NodeId>> {
        let inner = self.inner.lock();
        let last = inner
            .entries
            .values()
            .next_back()
            .map(|(_, e)| e.log_id)
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
        callback: LogFlushed<C>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = C::Entry> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<C::Entry> = entries.into_iter().collect();
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

#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, BasicNode>,
    data: Vec<u8>,
}

struct MachineInner<A> {
    dir: PathBuf,
    applier: A,
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, BasicNode>,
    snapshot: Option<StoredSnapshot>,
    snapshots_built: u64,
}

/// The state machine of one group: an `Applier` and the snapshot of it in
/// `dir`. Clones share it.
pub struct EntryMachine<C: EntryTypes, A> {
    inner: Arc<Mutex<MachineInner<A>>>,
    _types: std::marker::PhantomData<C>,
}

impl<C: EntryTypes, A> Clone for EntryMachine<C, A> {
    fn clone(&self) -> Self {
        EntryMachine {
            inner: self.inner.clone(),
            _types: std::marker::PhantomData,
        }
    }
}

impl<C, A> EntryMachine<C, A>
where
    C: EntryTypes,
    A: Applier<Command = C::D, Response = C::R>,
{
    /// Opens the state machine in `dir`: the last snapshot if there is one.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("snapshot");
        let stored = match std::fs::read(&path) {
            Ok(bytes) if bytes.len() <= SNAPSHOT_BYTES_MAX => {
                let body = bytes
                    .get(4..)
                    .ok_or_else(|| io_error("snapshot file too short"))?;
                let crc = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
                if crc32c::crc32c(body) != crc {
                    return Err(io_error(format!("{} fails its checksum", path.display())));
                }
                Some(
                    bincode::DefaultOptions::new()
                        .with_limit(SNAPSHOT_BYTES_MAX as u64)
                        .deserialize::<StoredSnapshot>(body)
                        .map_err(io_error)?,
                )
            }
            Ok(_) => return Err(io_error(format!("{} is too large", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        let mut inner = MachineInner {
            dir: dir.to_path_buf(),
            applier: A::default(),
            last_applied: None,
            membership: StoredMembership::default(),
            snapshot: None,
            snapshots_built: 0,
        };
        if let Some(stored) = stored {
            inner.applier = A::load(&stored.data).map_err(io_error)?;
            inner.last_applied = stored.meta.last_log_id;
            inner.membership = stored.meta.last_membership.clone();
            inner.snapshot = Some(stored);
        }
        Ok(EntryMachine {
            inner: Arc::new(Mutex::new(inner)),
            _types: std::marker::PhantomData,
        })
    }

    /// Reads the applied state.
    pub fn with_state<T>(&self, read: impl FnOnce(&A) -> T) -> T {
        read(&self.inner.lock().applier)
    }
}

impl<A> MachineInner<A> {
    fn save_snapshot(&mut self, stored: StoredSnapshot) -> std::io::Result<()> {
        let body = bincode::DefaultOptions::new()
            .serialize(&stored)
            .map_err(io_error)?;
        let mut bytes = crc32c::crc32c(&body).to_be_bytes().to_vec();
        bytes.extend(body);
        write_atomically(&self.dir.join("snapshot"), &bytes, true)?;
        self.snapshot = Some(stored);
        Ok(())
    }
}

fn as_snapshot<C: EntryTypes>(stored: &StoredSnapshot) -> Snapshot<C> {
    Snapshot {
        meta: stored.meta.clone(),
        snapshot: Box::new(stored.data.clone()),
    }
}

impl<C, A> RaftSnapshotBuilder<C> for EntryMachine<C, A>
where
    C: EntryTypes,
    A: Applier<Command = C::D, Response = C::R>,
{
    async fn build_snapshot(&mut self) -> Result<Snapshot<C>, StorageError<NodeId>> {
        let mut inner = self.inner.lock();
        let data = inner
            .applier
            .save()
            .map_err(|e| StorageIOError::write_snapshot(None, &io_error(e)))?;
        inner.snapshots_built += 1;
        let id = match inner.last_applied {
            Some(id) => format!("{}-{}-{}", id.leader_id, id.index, inner.snapshots_built),
            None => format!("none-{}", inner.snapshots_built),
        };
        let stored = StoredSnapshot {
            meta: SnapshotMeta {
                last_log_id: inner.last_applied,
                last_membership: inner.membership.clone(),
                snapshot_id: id,
            },
            data,
        };
        let snapshot = as_snapshot(&stored);
        inner
            .save_snapshot(stored)
            .map_err(|e| StorageIOError::write_snapshot(Some(snapshot.meta.signature()), &e))?;
        Ok(snapshot)
    }
}

impl<C, A> RaftStateMachine<C> for EntryMachine<C, A>
where
    C: EntryTypes,
    A: Applier<Command = C::D, Response = C::R>,
{
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>), StorageError<NodeId>>
    {
        let inner = self.inner.lock();
        Ok((inner.last_applied, inner.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<C::R>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = C::Entry> + Send,
        I::IntoIter: Send,
    {
        let mut inner = self.inner.lock();
        let mut responses = Vec::new();
        for entry in entries {
            inner.last_applied = Some(entry.log_id);
            let response = match &entry.payload {
                EntryPayload::Blank => A::no_response(),
                EntryPayload::Normal(command) => inner.applier.apply(command),
                EntryPayload::Membership(membership) => {
                    inner.membership =
                        StoredMembership::new(Some(entry.log_id), membership.clone());
                    A::no_response()
                }
            };
            responses.push(response);
        }
        Ok(responses)
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
        snapshot: Box<Vec<u8>>,
    ) -> Result<(), StorageError<NodeId>> {
        let applier = A::load(&snapshot)
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &io_error(e)))?;
        let mut inner = self.inner.lock();
        inner
            .save_snapshot(StoredSnapshot {
                meta: meta.clone(),
                data: *snapshot,
            })
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        inner.applier = applier;
        inner.last_applied = meta.last_log_id;
        inner.membership = meta.last_membership.clone();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<C>>, StorageError<NodeId>> {
        Ok(self.inner.lock().snapshot.as_ref().map(as_snapshot))
    }
}

#[cfg(test)]
pub(crate) mod tests;
