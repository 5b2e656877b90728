//! openraft's storage suite on the partition store, and what the suite does
//! not cover: produce entries get their offsets from the leader's store, a
//! follower fed the leader's entries stores the same bytes at the same
//! offsets, a producer retry is stored once, truncation cuts the segments,
//! recovery brings the index and the segments to a common end, and appends
//! made during a sync (`--fsync always`) share it.

use std::fs::OpenOptions;
use std::sync::Arc;
use std::time::Duration;

use openraft::storage::{RaftLogStorage, RaftLogStorageExt};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{CommittedLeaderId, EntryPayload, LogId, RaftLogReader};
use parking_lot::Mutex;

use super::*;
use crate::log::batch::test_batches::TestBatch;
use crate::log::batch::Batches;
use crate::log::LogConfig;
use crate::raft::entry_log::{Applier, EntryMachine};

const NOW_MS: i64 = 1_000_000;

/// Counts applied commands.
#[derive(Default)]
struct Count(u64);

impl Applier for Count {
    type Command = PartitionEntry;
    type Response = PartitionApplied;

    fn apply(&mut self, _: &PartitionEntry) -> PartitionApplied {
        self.0 += 1;
        PartitionApplied
    }

    fn save(&self) -> Result<Vec<u8>, String> {
        Ok(self.0.to_be_bytes().to_vec())
    }

    fn load(bytes: &[u8]) -> Result<Self, String> {
        let array: [u8; 8] = bytes.try_into().map_err(|_| "not 8 bytes".to_string())?;
        Ok(Count(u64::from_be_bytes(array)))
    }
}

fn open_log(dir: &std::path::Path) -> Arc<Mutex<PartitionLog>> {
    Arc::new(Mutex::new(
        PartitionLog::open(&dir.join("t-0"), LogConfig::default()).expect("partition log"),
    ))
}

struct Builder;

impl
    StoreBuilder<
        PartitionTypes,
        PartitionStore,
        EntryMachine<PartitionTypes, Count>,
        tempfile::TempDir,
    > for Builder
{
    async fn build(
        &self,
    ) -> Result<
        (
            tempfile::TempDir,
            PartitionStore,
            EntryMachine<PartitionTypes, Count>,
        ),
        StorageError<u64>,
    > {
        let dir = tempfile::tempdir().map_err(|e| StorageIOError::write(&e))?;
        let store = PartitionStore::open(open_log(dir.path()), Durability::always())
            .map_err(|e| StorageIOError::write(&e))?;
        let machine =
            EntryMachine::open(&dir.path().join("sm")).map_err(|e| StorageIOError::write(&e))?;
        Ok((dir, store, machine))
    }
}

#[test]
fn openraft_storage_suite_passes() {
    if let Err(e) = Suite::test_all(Builder) {
        panic!("openraft's storage suite failed: {e}");
    }
}

fn log_id(term: u64, index: u64) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(term, 0), index)
}

/// A produce entry nobody waits for (validated again by the store).
fn produce(term: u64, index: u64, records: Vec<u8>) -> Entry<PartitionTypes> {
    produce_token(term, index, records, u64::MAX)
}

fn produce_token(term: u64, index: u64, records: Vec<u8>, token: u64) -> Entry<PartitionTypes> {
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Normal(PartitionEntry::Produce {
            records: Bytes::from(records),
            checked: None,
            now_ms: NOW_MS,
            token,
        }),
    }
}

/// A produce entry whose outcome the returned receiver gets.
fn produce_waited(
    store: &PartitionStore,
    term: u64,
    index: u64,
    records: Vec<u8>,
) -> (Entry<PartitionTypes>, oneshot::Receiver<AppendOutcome>) {
    let (token, outcome) = store.expect();
    (produce_token(term, index, records, token), outcome)
}

fn blank(term: u64, index: u64) -> Entry<PartitionTypes> {
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Blank,
    }
}

fn batch(records: i32) -> Vec<u8> {
    TestBatch::new(records).timestamp(NOW_MS).encode()
}

/// (base offset, last offset, partition leader epoch) of every batch.
fn batches(records: &[u8]) -> Vec<(i64, i64, i32)> {
    Batches::new(records)
        .map(|b| {
            let (_, b) = b.expect("batches parse");
            b.validate_crc().expect("a valid CRC");
            let h = b.header();
            (h.base_offset(), h.last_offset(), h.partition_leader_epoch())
        })
        .collect()
}

fn segment_bytes(log: &Arc<Mutex<PartitionLog>>) -> Vec<u8> {
    log.lock()
        .read(0, usize::MAX, i64::MAX, true)
        .expect("read")
        .records
        .to_vec()
}

#[tokio::test]
async fn the_leader_assigns_offsets_and_a_follower_stores_the_same_bytes() {
    let dirs = [
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    ];
    let (leader_log, follower_log) = (open_log(dirs[0].path()), open_log(dirs[1].path()));
    let mut leader = PartitionStore::open(leader_log.clone(), Durability::always()).expect("open");
    let mut follower =
        PartitionStore::open(follower_log.clone(), Durability::always()).expect("open");
    // Raft's own entries take no offsets.
    let (fourth, outcome) = produce_waited(&leader, 2, 4, batch(2));
    leader
        .blocking_append(vec![
            blank(1, 1),
            produce(1, 2, batch(3)),
            blank(2, 3),
            fourth,
            produce(2, 5, [batch(1), batch(4)].concat()),
        ])
        .await
        .expect("append");
    assert_eq!(
        batches(&segment_bytes(&leader_log)),
        vec![(0, 2, 1), (3, 4, 2), (5, 5, 2), (6, 9, 2)]
    );
    let outcome = outcome.await.expect("an outcome").expect("appended");
    assert_eq!((outcome.base_offset, outcome.last_offset), (3, 4));
    assert_eq!(leader.epochs(), vec![(1, 0), (2, 3)]);

    // What the leader replicates: its entries read back, offsets in place.
    let shipped = leader.try_get_log_entries(1..=5).await.expect("read");
    assert_eq!(shipped.len(), 5);
    assert!(matches!(shipped[0].payload, EntryPayload::Blank));
    match &shipped[4].payload {
        EntryPayload::Normal(PartitionEntry::Records { records }) => {
            assert_eq!(batches(records), vec![(5, 5, 2), (6, 9, 2)]);
        }
        other => panic!("entry 5 is {other:?}"),
    }
    follower.blocking_append(shipped).await.expect("append");
    assert_eq!(segment_bytes(&follower_log), segment_bytes(&leader_log));
    assert_eq!(
        follower.try_get_log_entries(..).await.expect("read"),
        leader.try_get_log_entries(..).await.expect("read")
    );
}

#[tokio::test]
async fn a_producer_retry_is_stored_once_and_answered_with_its_original_offsets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open_log(dir.path());
    let mut store = PartitionStore::open(log.clone(), Durability::always()).expect("open");
    let first = TestBatch::new(2)
        .timestamp(NOW_MS)
        .idempotent(7, 0, 0)
        .encode();
    let (second, original) = produce_waited(&store, 1, 2, first.clone());
    // The same batch again, as a producer retrying after a timeout.
    let (third, retry) = produce_waited(&store, 1, 3, first);
    store
        .blocking_append(vec![produce(1, 1, batch(1)), second, third])
        .await
        .expect("append");
    let original = original.await.expect("outcome").expect("appended");
    let retry = retry.await.expect("outcome").expect("answered");
    assert!(retry.duplicate && !original.duplicate);
    assert_eq!((retry.base_offset, retry.last_offset), (1, 2));
    assert_eq!(log.lock().log_end_offset(), 3);
    // The retry's entry holds no records: a follower stores nothing for it.
    let entries = store.try_get_log_entries(3..=3).await.expect("read");
    assert_eq!(
        entries[0].payload,
        EntryPayload::Normal(PartitionEntry::Records {
            records: Bytes::new()
        })
    );
}

#[tokio::test]
async fn truncation_cuts_the_segments_and_the_next_entries_reuse_no_offset_below() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open_log(dir.path());
    let mut store = PartitionStore::open(log.clone(), Durability::always()).expect("open");
    store
        .blocking_append(vec![
            produce(1, 1, batch(2)),
            blank(1, 2),
            produce(1, 3, batch(3)),
            produce(1, 4, batch(1)),
        ])
        .await
        .expect("append");
    // A new leader disagrees from index 3 on: offsets 2.. were never committed.
    store.truncate(log_id(1, 3)).await.expect("truncate");
    assert_eq!(log.lock().log_end_offset(), 2);
    store
        .blocking_append(vec![produce(2, 3, batch(4))])
        .await
        .expect("append");
    assert_eq!(batches(&segment_bytes(&log)), vec![(0, 1, 1), (2, 5, 2)]);
    let state = store.get_log_state().await.expect("state");
    assert_eq!(state.last_log_id, Some(log_id(2, 3)));
    // Read back (from the unapplied batches kept in memory): the new
    // entry's batch, not the one truncated away.
    let read = store.try_get_log_entries(3..=3).await.expect("read");
    match &read[0].payload {
        EntryPayload::Normal(PartitionEntry::Records { records }) => {
            assert_eq!(batches(records), vec![(2, 5, 2)]);
        }
        other => panic!("entry 3 is {other:?}"),
    }
}

#[tokio::test]
async fn appends_during_a_sync_all_complete_and_read_back_what_the_segments_hold() {
    const APPENDS: u64 = 40;
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open_log(dir.path());
    let store = PartitionStore::open(log.clone(), Durability::always()).expect("open");
    // Each append returns once written; its flush waits for a sync pass,
    // which the appends behind it join. Every one must hear back.
    let appends = (1..=APPENDS).map(|i| {
        let mut store = store.clone();
        async move { store.blocking_append(vec![produce(1, i, batch(2))]).await }
    });
    let done = tokio::time::timeout(Duration::from_secs(60), futures::future::join_all(appends))
        .await
        .expect("every append's flush is reported");
    assert!(done.iter().all(|r| r.is_ok()), "{done:?}");
    assert_eq!(log.lock().log_end_offset(), 2 * APPENDS as i64);

    // Nothing applied yet: the entries are read from memory, and they are
    // the bytes the segments hold.
    let mut reader = store.clone();
    let recent = store.recent();
    assert!(recent.bytes() > 0);
    let from_memory = reader.try_get_log_entries(..).await.expect("read");
    recent.forget_through(APPENDS);
    assert_eq!(recent.bytes(), 0);
    let from_segments = reader.try_get_log_entries(..).await.expect("read");
    assert_eq!(from_memory.len(), APPENDS as usize);
    assert_eq!(from_memory, from_segments);
}

#[tokio::test]
async fn epochs_start_where_their_first_entry_does_and_truncation_forgets_removed_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open_log(dir.path());
    let mut store = PartitionStore::open(log.clone(), Durability::always()).expect("open");
    store
        .blocking_append(vec![
            blank(1, 1),
            produce(1, 2, batch(2)),
            blank(3, 3),
            produce(3, 4, batch(3)),
            // A leader of term 4 that appended only its blank entry.
            blank(4, 5),
        ])
        .await
        .expect("append");
    assert_eq!(store.epochs(), vec![(1, 0), (3, 2), (4, 5)]);
    // Kafka's answers: the latest epoch ends at the log end; an epoch with
    // no entries answers for the largest one below it, ending where the
    // next one starts; one below every epoch ends where the first starts.
    assert_eq!(store.end_offset_for_epoch(4), (4, 5));
    assert_eq!(store.end_offset_for_epoch(3), (3, 5));
    assert_eq!(store.end_offset_for_epoch(2), (1, 2));
    assert_eq!(store.end_offset_for_epoch(0), (0, 0));
    assert_eq!(store.end_offset_for_epoch(5), (-1, -1));
    // Term 5 disagrees from index 5 on: epoch 4 never existed.
    store.truncate(log_id(4, 5)).await.expect("truncate");
    assert_eq!(store.epochs(), vec![(1, 0), (3, 2)]);
    store
        .blocking_append(vec![blank(5, 5), produce(5, 6, batch(1))])
        .await
        .expect("append");
    assert_eq!(store.epochs(), vec![(1, 0), (3, 2), (5, 5)]);
    drop(store);
    // The map is rebuilt from the index on open.
    let store = PartitionStore::open(log.clone(), Durability::always()).expect("reopen");
    assert_eq!(store.epochs(), vec![(1, 0), (3, 2), (5, 5)]);
    assert_eq!(store.end_offset_for_epoch(5), (5, 6));
}

#[tokio::test]
async fn recovery_cuts_the_longer_of_index_and_segments() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open_log(dir.path());
    let mut store = PartitionStore::open(log.clone(), Durability::always()).expect("open");
    store
        .blocking_append((1..=4).map(|i| produce(1, i, batch(2))).collect::<Vec<_>>())
        .await
        .expect("append");
    let index_path = log.lock().dir().join(INDEX_FILE);
    drop(store);

    // Batches without an index record (the index write was lost).
    let bytes = std::fs::read(&index_path).expect("read the index");
    let (records, _) = decode_records::<IndexRecord>(&bytes).expect("decode");
    let last = records.last().expect("records").0;
    let file = OpenOptions::new()
        .write(true)
        .open(&index_path)
        .expect("open");
    file.set_len(last).expect("cut the index");
    drop(file);
    let mut store = PartitionStore::open(log.clone(), Durability::always()).expect("reopen");
    assert_eq!(
        log.lock().log_end_offset(),
        6,
        "unindexed batches are truncated"
    );
    assert_eq!(
        store.get_log_state().await.expect("state").last_log_id,
        Some(log_id(1, 3))
    );
    drop(store);

    // Index records whose batches are gone (the segment write was lost).
    log.lock().truncate_to(2).expect("lose batches");
    let mut store = PartitionStore::open(log.clone(), Durability::always()).expect("reopen");
    assert_eq!(
        store.get_log_state().await.expect("state").last_log_id,
        Some(log_id(1, 1))
    );
    let entries = store.try_get_log_entries(..).await.expect("read");
    assert_eq!(entries.len(), 1);
    // And it goes on from there.
    store
        .blocking_append(vec![produce(2, 2, batch(1))])
        .await
        .expect("append");
    assert_eq!(batches(&segment_bytes(&log)), vec![(0, 1, 1), (2, 2, 2)]);
}

#[tokio::test]
async fn entries_below_the_log_start_go_out_empty_and_a_follower_restarts_at_the_batch_holding_it()
{
    let dirs = [
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    ];
    let (leader_log, follower_log) = (open_log(dirs[0].path()), open_log(dirs[1].path()));
    let mut leader = PartitionStore::open(leader_log.clone(), Durability::always()).expect("open");
    let mut follower =
        PartitionStore::open(follower_log.clone(), Durability::always()).expect("open");
    leader
        .blocking_append(vec![
            produce(1, 1, batch(2)),
            produce(1, 2, batch(3)),
            produce(1, 3, batch(1)),
        ])
        .await
        .expect("append");
    // DeleteRecords (or retention) moves the leader's log start into entry 2.
    leader_log
        .lock()
        .delete_records_before(3)
        .expect("delete records");
    let shipped = leader.try_get_log_entries(..).await.expect("read");
    let sizes: Vec<usize> = shipped
        .iter()
        .map(|e| match &e.payload {
            EntryPayload::Normal(PartitionEntry::Records { records }) => records.len(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(sizes[0], 0, "an entry below the log start goes out empty");
    assert!(
        sizes[1] > 0 && sizes[2] > 0,
        "the entry holding the log start goes out whole: {sizes:?}"
    );
    // A follower that had none of it starts its log at the first batch it
    // gets: the one holding the log start, whose records above it the
    // leader still serves.
    follower.blocking_append(shipped).await.expect("append");
    let log = follower_log.lock();
    assert_eq!((log.log_start_offset(), log.log_end_offset()), (2, 6));
}

#[tokio::test]
async fn a_purge_is_recorded_after_the_entries_and_rewrites_the_index_once_they_fill_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open_log(dir.path());
    let index = dir.path().join("t-0").join(INDEX_FILE);
    let size = || std::fs::metadata(&index).expect("index").len();
    let mut store = PartitionStore::open(log.clone(), Durability::Interval).expect("open");
    store
        .blocking_append((1..=10).map(|i| produce(1, i, batch(1))))
        .await
        .expect("append");
    let before = size();
    store.purge(log_id(1, 5)).await.expect("purge");
    assert!(size() > before, "a record appended, not a rewrite");
    // The purge record sits behind entries 8..=10: cutting them keeps it.
    store.truncate(log_id(1, 8)).await.expect("truncate");
    drop(store);
    let mut store = PartitionStore::open(log.clone(), Durability::Interval).expect("reopen");
    let state = store.get_log_state().await.expect("state");
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 5)));
    assert_eq!(state.last_log_id, Some(log_id(1, 7)));
    let left: Vec<u64> = store
        .try_get_log_entries(..)
        .await
        .expect("read")
        .iter()
        .map(|e| e.log_id.index)
        .collect();
    assert_eq!(left, vec![6, 7]);

    // Once purged entries fill a megabyte, the purge rewrites the file.
    const LAST: u64 = 100_000;
    store
        .blocking_append((8..=LAST).map(|i| blank(1, i)))
        .await
        .expect("append");
    assert!(size() > INDEX_REWRITE_BYTES, "{} bytes", size());
    store.purge(log_id(1, LAST - 10)).await.expect("purge");
    assert!(size() < 4096, "rewritten: {} bytes", size());
    drop(store);
    let mut store = PartitionStore::open(log, Durability::Interval).expect("reopen");
    let state = store.get_log_state().await.expect("state");
    assert_eq!(state.last_purged_log_id, Some(log_id(1, LAST - 10)));
    assert_eq!(store.try_get_log_entries(..).await.expect("read").len(), 10);
}

#[tokio::test]
async fn a_restarted_leader_keeps_its_vote_but_not_its_leadership() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open_log(dir.path());
    let mut store = PartitionStore::open(log.clone(), Durability::Interval).expect("open");
    let mut led = Vote::new(3, 1);
    led.commit();
    store.save_vote(&led).await.expect("save");
    drop(store);

    // Another node's leadership is left alone.
    let mut store = PartitionStore::open(log.clone(), Durability::Interval).expect("reopen");
    store.forget_own_leadership(2).expect("forget");
    assert_eq!(store.read_vote().await.expect("read"), Some(led));
    // Its own is kept as a vote for itself in that term that never won, on
    // disk too.
    store.forget_own_leadership(1).expect("forget");
    drop(store);
    let mut store = PartitionStore::open(log, Durability::Interval).expect("reopen");
    let vote = store.read_vote().await.expect("read").expect("a vote");
    assert_eq!(vote, Vote::new(3, 1));
    assert!(!vote.is_committed());
}
