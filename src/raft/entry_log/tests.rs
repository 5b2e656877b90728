//! openraft's storage suite on the entry log, and what the suite does not
//! cover: reopening, a torn tail, a corrupt record, snapshots across a restart.

use std::collections::BTreeMap;
use std::io::Write;

use openraft::testing::{StoreBuilder, Suite};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, RaftLogReader, Vote};
use serde::{Deserialize, Serialize};

use super::*;

/// `key = value`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Put {
    pub key: String,
    pub value: String,
}

/// A map of keys; `apply` answers the value a put replaced.
#[derive(Default, Serialize, Deserialize)]
pub struct Map(pub BTreeMap<String, String>);

impl Applier for Map {
    type Command = Put;
    type Response = Option<String>;

    fn apply(&mut self, put: &Put) -> Option<String> {
        self.0.insert(put.key.clone(), put.value.clone())
    }

    fn save(&self) -> Result<Vec<u8>, String> {
        serde_json::to_vec(&self.0).map_err(|e| e.to_string())
    }

    fn load(bytes: &[u8]) -> Result<Self, String> {
        serde_json::from_slice(bytes)
            .map(Map)
            .map_err(|e| e.to_string())
    }
}

openraft::declare_raft_types!(
    pub Test:
        D = Put,
        R = Option<String>,
        NodeId = u64,
        Node = BasicNode,
        Entry = Entry<Test>,
        SnapshotData = Vec<u8>,
        AsyncRuntime = openraft::TokioRuntime,
);

struct Builder;

impl StoreBuilder<Test, EntryLog<Test>, EntryMachine<Test, Map>, tempfile::TempDir> for Builder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, EntryLog<Test>, EntryMachine<Test, Map>), StorageError<u64>>
    {
        let dir = tempfile::tempdir().map_err(|e| StorageIOError::write(&e))?;
        let log = EntryLog::open(&dir.path().join("log")).map_err(|e| StorageIOError::write(&e))?;
        let machine =
            EntryMachine::open(&dir.path().join("sm")).map_err(|e| StorageIOError::write(&e))?;
        Ok((dir, log, machine))
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

fn put(term: u64, index: u64, key: &str) -> Entry<Test> {
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Normal(Put {
            key: key.into(),
            value: format!("{key}@{index}"),
        }),
    }
}

/// Appends through the storage API, waiting for the flush callback.
async fn append(log: &mut EntryLog<Test>, entries: Vec<Entry<Test>>) {
    use openraft::storage::RaftLogStorageExt;
    log.blocking_append(entries).await.expect("append");
}

async fn indexes(log: &mut EntryLog<Test>) -> Vec<u64> {
    log.try_get_log_entries(..)
        .await
        .expect("read")
        .iter()
        .map(|e| e.log_id.index)
        .collect()
}

#[tokio::test]
async fn entries_vote_truncation_and_purge_survive_reopening() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = EntryLog::<Test>::open(dir.path()).expect("open");
    append(&mut log, (1..=10).map(|i| put(1, i, "k")).collect()).await;
    log.save_vote(&Vote::new(2, 3)).await.expect("vote");
    log.save_committed(Some(log_id(1, 6)))
        .await
        .expect("committed");
    log.truncate(log_id(1, 8)).await.expect("truncate");
    log.purge(log_id(1, 3)).await.expect("purge");
    append(&mut log, vec![put(2, 8, "after")]).await;
    drop(log);

    let mut log = EntryLog::<Test>::open(dir.path()).expect("reopen");
    assert_eq!(indexes(&mut log).await, vec![4, 5, 6, 7, 8]);
    let state = log.get_log_state().await.expect("state");
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 3)));
    assert_eq!(state.last_log_id, Some(log_id(2, 8)));
    assert_eq!(log.read_vote().await.expect("vote"), Some(Vote::new(2, 3)));
    assert_eq!(
        log.read_committed().await.expect("committed"),
        Some(log_id(1, 6))
    );
}

#[tokio::test]
async fn a_torn_tail_is_cut_and_a_corrupt_record_refuses_to_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = EntryLog::<Test>::open(dir.path()).expect("open");
    append(&mut log, (1..=5).map(|i| put(1, i, "k")).collect()).await;
    drop(log);
    let path = dir.path().join("raft.log");
    let whole = std::fs::metadata(&path).expect("stat").len();
    // Half a record, as a crash mid-append leaves it.
    let record = encode_record(&Record::<Test>::Entry(put(1, 6, "torn"))).expect("encode");
    let mut file = OpenOptions::new()
        .append(true)
        .open(&path)
        .expect("open file");
    file.write_all(&record[..record.len() / 2]).expect("write");
    drop(file);

    let mut log = EntryLog::<Test>::open(dir.path()).expect("reopen with a torn tail");
    assert_eq!(indexes(&mut log).await, vec![1, 2, 3, 4, 5]);
    assert_eq!(std::fs::metadata(&path).expect("stat").len(), whole);
    append(&mut log, vec![put(1, 6, "again")]).await;
    drop(log);
    let mut log = EntryLog::<Test>::open(dir.path()).expect("reopen");
    assert_eq!(indexes(&mut log).await, vec![1, 2, 3, 4, 5, 6]);
    drop(log);

    // A record whose checksum holds but whose body is not an entry.
    let mut body = vec![0xff; 16];
    body[0] = 7;
    let mut bad = (body.len() as u32).to_be_bytes().to_vec();
    bad.extend(crc32c::crc32c(&body).to_be_bytes());
    bad.extend(body);
    let mut file = OpenOptions::new()
        .append(true)
        .open(&path)
        .expect("open file");
    file.write_all(&bad).expect("write");
    drop(file);
    let error = EntryLog::<Test>::open(dir.path())
        .err()
        .expect("corruption refused");
    assert!(error.to_string().contains("does not decode"), "{error}");
}

#[tokio::test]
async fn a_snapshot_restores_the_state_machine_after_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut machine = EntryMachine::<Test, Map>::open(dir.path()).expect("open");
    let answers = machine
        .apply(vec![put(1, 1, "a"), put(1, 2, "b"), put(1, 3, "a")])
        .await
        .expect("apply");
    assert_eq!(answers, vec![None, None, Some("a@1".to_string())]);
    let built = machine
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .expect("snapshot");
    assert_eq!(built.meta.last_log_id, Some(log_id(1, 3)));
    drop(machine);

    let mut machine = EntryMachine::<Test, Map>::open(dir.path()).expect("reopen");
    let (applied, _) = machine.applied_state().await.expect("applied");
    assert_eq!(applied, Some(log_id(1, 3)));
    let state = machine.with_state(|m| m.0.clone());
    assert_eq!(
        state,
        BTreeMap::from([("a".into(), "a@3".into()), ("b".into(), "b@2".into())])
    );
    // A flipped byte in the snapshot file is refused, not loaded.
    let path = dir.path().join("snapshot");
    let mut bytes = std::fs::read(&path).expect("read");
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&path, bytes).expect("write");
    assert!(EntryMachine::<Test, Map>::open(dir.path()).is_err());
}

#[test]
fn the_commit_hint_is_rewritten_in_place_and_a_torn_one_reads_as_none() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (vote, committed) = (dir.path().join("vote"), dir.path().join("committed"));
    let reopen = || VoteFiles::open(vote.clone(), committed.clone()).expect("open");
    // Each save on a freshly opened set, past the write throttle.
    for hint in [Some(log_id(7, 123_456_789)), None, Some(log_id(2, 5))] {
        reopen().save_committed(hint).expect("save");
        assert_eq!(reopen().committed(), hint);
        let len = std::fs::metadata(&committed).expect("metadata").len();
        assert_eq!(len, COMMITTED_HINT_BYTES as u64, "rewritten in place");
    }
    let mut bytes = std::fs::read(&committed).expect("read");
    bytes[10] ^= 0xFF;
    std::fs::write(&committed, &bytes).expect("write");
    assert_eq!(reopen().committed(), None, "a torn hint is no hint");
}
