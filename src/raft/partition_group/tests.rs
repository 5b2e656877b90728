//! Three replicas of one partition group over real loopback transports:
//! the leader assigns offsets, a majority commits, every replica ends with
//! the same bytes at the same offsets; a follower refuses produce naming
//! the leader; after the leader stops another takes over with a higher
//! epoch, and the old leader comes back and catches up.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::BasicNode;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::*;
use crate::log::batch::test_batches::TestBatch;
use crate::log::LogConfig;
use crate::raft::transport::TransportConfig;

const WAIT: Duration = Duration::from_secs(20);
const NOW_MS: i64 = 1_000_000;

struct Replica {
    group: Arc<PartitionGroup>,
    log: Arc<Mutex<PartitionLog>>,
    stop: watch::Sender<bool>,
    /// The transport's listener task: its port is free once it ends.
    server: tokio::task::JoinHandle<()>,
}

impl Replica {
    async fn stop(self) {
        self.group.stop().await;
        let _ = self.stop.send(true);
        let _ = self.server.await;
    }

    fn segments(&self) -> Vec<u8> {
        self.log
            .lock()
            .read(0, usize::MAX, i64::MAX, true)
            .expect("read")
            .records
            .to_vec()
    }

    async fn high_watermark_at_least(&self, offset: i64) {
        let mut hw = self.group.high_watermark();
        tokio::time::timeout(WAIT, hw.wait_for(|&h| h >= offset))
            .await
            .expect("the high watermark moves in time")
            .expect("the group runs");
    }
}

async fn start(
    node: NodeId,
    listener: TcpListener,
    voters: &BTreeMap<NodeId, BasicNode>,
    dir: &std::path::Path,
) -> Replica {
    start_with(node, listener, voters, dir, GroupTimers::partitions()).await
}

async fn start_with(
    node: NodeId,
    listener: TcpListener,
    voters: &BTreeMap<NodeId, BasicNode>,
    dir: &std::path::Path,
    timers: GroupTimers,
) -> Replica {
    let (stop, stopped) = watch::channel(false);
    let transport = Transport::new(
        TransportConfig::new(node, Some("c".into())),
        stopped.clone(),
    );
    for (&peer, address) in voters {
        transport.add_peer(peer, address.addr.clone());
    }
    let peers = transport.clone();
    let registry = Arc::new(Registry::default());
    let server = tokio::spawn(transport.clone().serve(listener, registry.clone()));
    let log = Arc::new(Mutex::new(
        PartitionLog::open(&dir.join("t-0"), LogConfig::default()).expect("partition log"),
    ));
    let group = PartitionGroup::start(
        node,
        GroupId::Partition {
            topic_id: uuid::Uuid::nil(),
            partition: 0,
        },
        voters.clone(),
        None,
        log.clone(),
        Arc::new(watch::Sender::new(0)),
        Durability::always(),
        &timers,
        transport,
        registry,
        stopped,
    )
    .await
    .expect("group starts");
    let group = Arc::new(group);
    // The node-level election driver, as `ReplicaManager` runs it.
    let driven = group.clone();
    let mut stopping = stop.subscribe();
    tokio::spawn(async move {
        let reachable = {
            let peers = peers.clone();
            move |p: NodeId| peers.is_reachable(p)
        };
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                _ = stopping.changed() => return,
            }
            // The node's heartbeat report, as `ReplicaManager` writes it.
            let led = driven.led(Duration::from_secs(30), &reachable);
            peers.leaders().set_own(led.into_iter().collect());
            driven.check_election(&reachable);
            driven.maybe_purge();
            driven.maybe_tell_commit();
        }
    });
    Replica {
        group,
        log,
        stop,
        server,
    }
}

/// Loopback listeners for nodes 1..=3, and the voters they make.
async fn three_listeners() -> (BTreeMap<NodeId, TcpListener>, BTreeMap<NodeId, BasicNode>) {
    let mut listeners = BTreeMap::new();
    let mut voters = BTreeMap::new();
    for node in 1..=3u64 {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        voters.insert(
            node,
            BasicNode::new(listener.local_addr().expect("addr").to_string()),
        );
        listeners.insert(node, listener);
    }
    (listeners, voters)
}

async fn leader_seen_by(replica: &Replica, not: Option<NodeId>) -> NodeId {
    let metrics = replica
        .group
        .raft
        .wait(Some(WAIT))
        .metrics(
            |m| m.current_leader.is_some() && m.current_leader != not,
            "a leader",
        )
        .await
        .expect("a leader is elected");
    metrics.current_leader.expect("leader")
}

/// Produces one batch of `records` records through `replica`; its offsets.
async fn produce(replica: &Replica, records: i32) -> (i64, i64) {
    let batch = TestBatch::new(records).timestamp(NOW_MS).encode();
    let info = replica
        .group
        .produce(Bytes::from(batch), NOW_MS)
        .await
        .expect("the leader commits it")
        .expect("the append succeeds");
    (info.base_offset, info.last_offset)
}

/// Produces one batch of `records` records through whichever replica
/// leads (retrying while the group settles after a restart); its offsets.
async fn produce_to_leader(running: &BTreeMap<NodeId, Replica>, records: i32) -> (i64, i64) {
    let started = std::time::Instant::now();
    loop {
        for replica in running.values() {
            let batch = TestBatch::new(records).timestamp(NOW_MS).encode();
            if let Ok(Ok(info)) = replica.group.produce(Bytes::from(batch), NOW_MS).await {
                return (info.base_offset, info.last_offset);
            }
        }
        assert!(started.elapsed() < WAIT, "no replica took the produce");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// (base offset, last offset, leader epoch) of every stored batch.
fn batches(records: &[u8]) -> Vec<(i64, i64, i32)> {
    Batches::new(records)
        .map(|b| {
            let (_, b) = b.expect("batches parse");
            let h = b.header();
            (h.base_offset(), h.last_offset(), h.partition_leader_epoch())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_commit_the_same_offsets_fail_over_and_catch_up() {
    let dirs: Vec<tempfile::TempDir> = (0..3)
        .map(|_| tempfile::tempdir().expect("tempdir"))
        .collect();
    let (mut listeners, voters) = three_listeners().await;
    let dir = |node: NodeId| dirs[node as usize - 1].path().to_path_buf();
    let mut running: BTreeMap<NodeId, Replica> = BTreeMap::new();
    for node in [3, 1, 2] {
        let listener = listeners.remove(&node).expect("listener");
        running.insert(node, start(node, listener, &voters, &dir(node)).await);
    }
    let leader = leader_seen_by(&running[&3], None).await;
    let mut next = 0;
    for _ in 0..10 {
        assert_eq!(produce(&running[&leader], 2).await, (next, next + 1));
        next += 2;
    }
    // A follower refuses, naming the leader.
    let follower = *running.keys().find(|&&n| n != leader).expect("a follower");
    leader_seen_by(&running[&follower], None).await;
    let refused = running[&follower]
        .group
        .produce(Bytes::from(TestBatch::new(1).encode()), NOW_MS)
        .await;
    assert!(
        matches!(refused, Err(ProduceError::NotLeader(Some(l))) if l == leader),
        "{refused:?}"
    );
    for replica in running.values() {
        replica.high_watermark_at_least(next).await;
        assert_eq!(replica.segments(), running[&leader].segments());
    }
    let first_epoch = batches(&running[&leader].segments())[0].2;

    // The leader stops; the other two elect a new one, which goes on at the
    // next offset with a higher epoch.
    let old = running.remove(&leader).expect("leader");
    old.stop().await;
    let survivor = *running.keys().next().expect("a survivor");
    let new_leader = leader_seen_by(&running[&survivor], Some(leader)).await;
    for _ in 0..5 {
        assert_eq!(produce(&running[&new_leader], 3).await, (next, next + 2));
        next += 3;
    }
    for replica in running.values() {
        replica.high_watermark_at_least(next).await;
    }
    let stored = batches(&running[&new_leader].segments());
    assert_eq!(stored.len(), 15);
    assert!(
        stored.windows(2).all(|w| w[1].0 == w[0].1 + 1),
        "{stored:?}"
    );
    assert!(stored[14].2 > first_epoch, "{stored:?}");

    // The old leader restarts on its data and catches up byte for byte.
    let listener = TcpListener::bind(voters[&leader].addr.as_str())
        .await
        .expect("rebind");
    running.insert(leader, start(leader, listener, &voters, &dir(leader)).await);
    running[&leader].high_watermark_at_least(next).await;
    for replica in running.values() {
        assert_eq!(replica.segments(), running[&new_leader].segments());
    }
    for (_, replica) in std::mem::take(&mut running) {
        replica.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_leader_truncates_what_it_appended_but_never_committed() {
    let dirs: Vec<tempfile::TempDir> = (0..3)
        .map(|_| tempfile::tempdir().expect("tempdir"))
        .collect();
    let (mut listeners, voters) = three_listeners().await;
    let dir = |node: NodeId| dirs[node as usize - 1].path().to_path_buf();
    let mut running: BTreeMap<NodeId, Replica> = BTreeMap::new();
    for node in 1..=3 {
        let listener = listeners.remove(&node).expect("listener");
        running.insert(node, start(node, listener, &voters, &dir(node)).await);
    }
    let leader = leader_seen_by(&running[&1], None).await;
    for _ in 0..4 {
        produce(&running[&leader], 2).await;
    }
    for replica in running.values() {
        replica.high_watermark_at_least(8).await;
    }

    // Both followers' groups stop while their nodes stay up: the leader
    // still reaches a majority of nodes, so it appends a batch, which it
    // cannot commit.
    let followers: Vec<NodeId> = running.keys().copied().filter(|&n| n != leader).collect();
    let mut silent = Vec::new();
    for f in &followers {
        let replica = running.remove(f).expect("follower");
        replica.group.stop().await;
        silent.push(replica);
    }
    let lonely = running.remove(&leader).expect("leader");
    let pending = tokio::time::timeout(
        Duration::from_secs(2),
        lonely.group.produce(
            Bytes::from(TestBatch::new(5).timestamp(NOW_MS).encode()),
            NOW_MS,
        ),
    )
    .await;
    assert!(
        pending.is_err(),
        "an entry without a majority was acknowledged"
    );
    assert_eq!(
        lonely.log.lock().log_end_offset(),
        13,
        "the leader holds it"
    );
    assert_eq!(
        *lonely.group.high_watermark().borrow(),
        8,
        "above the high watermark"
    );
    // Once their nodes are gone too, it refuses writes outright: a leader
    // that reaches no majority appends nothing (acks=1 would acknowledge it).
    for replica in silent {
        replica.stop().await;
    }
    let started = std::time::Instant::now();
    while lonely.group.reaches_majority() {
        assert!(started.elapsed() < WAIT, "the followers' nodes still count");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let refused = lonely.group.produce(
        Bytes::from(TestBatch::new(1).timestamp(NOW_MS).encode()),
        NOW_MS,
    );
    let refused = tokio::time::timeout(WAIT, refused).await.expect("answered");
    assert!(
        matches!(refused, Err(ProduceError::NotLeader(None))),
        "a leader without a majority takes writes: {:?}",
        refused.map(|r| r.is_ok())
    );
    assert_eq!(lonely.log.lock().log_end_offset(), 13, "nothing appended");
    lonely.stop().await;

    // The followers come back without it and commit other records there.
    for &f in &followers {
        let listener = TcpListener::bind(voters[&f].addr.as_str())
            .await
            .expect("rebind");
        running.insert(f, start(f, listener, &voters, &dir(f)).await);
    }
    let new_leader = leader_seen_by(&running[&followers[0]], Some(leader)).await;
    assert_eq!(produce(&running[&new_leader], 1).await, (8, 8));
    for replica in running.values() {
        replica.high_watermark_at_least(9).await;
    }

    // The old leader returns: its uncommitted batch is gone, offset 8 is
    // the new leader's record, and every replica holds the same bytes.
    let listener = TcpListener::bind(voters[&leader].addr.as_str())
        .await
        .expect("rebind");
    running.insert(leader, start(leader, listener, &voters, &dir(leader)).await);
    running[&leader].high_watermark_at_least(9).await;
    // Its high watermark covers the new record only once it truncated its
    // own batch and appended the leader's.
    let expected = running[&new_leader].segments();
    assert_eq!(running[&leader].segments(), expected);
    assert_eq!(batches(&expected).last().map(|b| (b.0, b.1)), Some((8, 8)));
    for (_, replica) in std::mem::take(&mut running) {
        replica.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resigning_leader_hands_over_to_a_caught_up_follower_while_running() {
    let dirs: Vec<tempfile::TempDir> = (0..3)
        .map(|_| tempfile::tempdir().expect("tempdir"))
        .collect();
    let (mut listeners, voters) = three_listeners().await;
    let mut running: BTreeMap<NodeId, Replica> = BTreeMap::new();
    for node in 1..=3 {
        let listener = listeners.remove(&node).expect("listener");
        running.insert(
            node,
            start(node, listener, &voters, dirs[node as usize - 1].path()).await,
        );
    }
    let leader = leader_seen_by(&running[&2], None).await;
    let mut next = 0;
    for _ in 0..5 {
        assert_eq!(produce(&running[&leader], 2).await, (next, next + 1));
        next += 2;
    }
    let (_, epoch_before) = running[&leader].group.leader();

    // Every node keeps running: only the hand-over can move the leadership.
    let resigned = running[&leader]
        .group
        .resign(crate::raft::transfer::HandOver::Leaving, WAIT)
        .await;
    let crate::raft::transfer::Resignation::Moved { to } = resigned else {
        panic!("the leadership did not move: {resigned:?}");
    };
    assert_ne!(to, leader);
    let refused = running[&leader]
        .group
        .produce(Bytes::from(TestBatch::new(1).encode()), NOW_MS)
        .await;
    assert!(
        matches!(refused, Err(ProduceError::NotLeader(_))),
        "{refused:?}"
    );
    let other = *running
        .keys()
        .find(|&&n| n != leader && n != to)
        .expect("a third replica");
    assert_eq!(leader_seen_by(&running[&other], Some(leader)).await, to);
    let (_, epoch_after) = running[&to].group.leader();
    assert!(
        epoch_after > epoch_before,
        "{epoch_before} -> {epoch_after}"
    );

    // The new leader goes on at the next offset; the old one follows.
    assert_eq!(produce(&running[&to], 3).await, (next, next + 2));
    next += 3;
    for replica in running.values() {
        replica.high_watermark_at_least(next).await;
        assert_eq!(replica.segments(), running[&to].segments());
    }
    for (_, replica) in std::mem::take(&mut running) {
        replica.stop().await;
    }
}

/// Waits until `replica`'s log starts at `offset`.
async fn log_start_reaches(replica: &Replica, offset: i64) {
    let started = std::time::Instant::now();
    while replica.log.lock().log_start_offset() != offset {
        assert!(
            started.elapsed() < WAIT,
            "the log start is {}, not {offset}",
            replica.log.lock().log_start_offset()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_start_moved_by_the_leader_reaches_every_replica() {
    let dirs: Vec<tempfile::TempDir> = (0..3)
        .map(|_| tempfile::tempdir().expect("tempdir"))
        .collect();
    let (mut listeners, voters) = three_listeners().await;
    let dir = |node: NodeId| dirs[node as usize - 1].path().to_path_buf();
    let mut running: BTreeMap<NodeId, Replica> = BTreeMap::new();
    for node in 1..=3 {
        let listener = listeners.remove(&node).expect("listener");
        running.insert(node, start(node, listener, &voters, &dir(node)).await);
    }
    let leader = leader_seen_by(&running[&1], None).await;
    for _ in 0..10 {
        produce(&running[&leader], 2).await;
    }
    for replica in running.values() {
        replica.high_watermark_at_least(20).await;
    }
    // A follower cannot move it.
    let followers: Vec<NodeId> = running.keys().copied().filter(|&n| n != leader).collect();
    let refused = running[&followers[0]].group.advance_log_start(4).await;
    assert!(
        matches!(refused, Err(ProduceError::NotLeader(_))),
        "{refused:?}"
    );

    // One follower is away when the leader moves the start.
    let away = followers[1];
    running.remove(&away).expect("follower").stop().await;
    running[&leader]
        .group
        .advance_log_start(12)
        .await
        .expect("committed");
    assert_eq!(running[&leader].log.lock().log_start_offset(), 12);
    log_start_reaches(&running[&followers[0]], 12).await;

    // It comes back, catches up, and applies the move too.
    let listener = TcpListener::bind(voters[&away].addr.as_str())
        .await
        .expect("rebind");
    running.insert(away, start(away, listener, &voters, &dir(away)).await);
    produce(&running[&leader], 1).await;
    running[&away].high_watermark_at_least(21).await;
    log_start_reaches(&running[&away], 12).await;
    for (_, replica) in std::mem::take(&mut running) {
        replica.stop().await;
    }
}

/// Waits until every replica in `running` purged past `index`.
async fn purged_past(running: &BTreeMap<NodeId, Replica>, index: u64) {
    let started = std::time::Instant::now();
    for (node, replica) in running {
        while replica.group.purged_index() <= index {
            assert!(
                started.elapsed() < WAIT,
                "node {node} purged only up to {}",
                replica.group.purged_index()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_entry_index_is_purged_where_every_replica_holds_the_log_and_the_group_lives_on() {
    let timers = GroupTimers {
        purge_keep_entries: 4,
        purge_step_entries: 8,
        ..GroupTimers::partitions()
    };
    let dirs: Vec<tempfile::TempDir> = (0..3)
        .map(|_| tempfile::tempdir().expect("tempdir"))
        .collect();
    let (mut listeners, voters) = three_listeners().await;
    let dir = |node: NodeId| dirs[node as usize - 1].path().to_path_buf();
    let mut running: BTreeMap<NodeId, Replica> = BTreeMap::new();
    for node in 1..=3 {
        let listener = listeners.remove(&node).expect("listener");
        running.insert(
            node,
            start_with(node, listener, &voters, &dir(node), timers.clone()).await,
        );
    }
    let leader = leader_seen_by(&running[&1], None).await;
    let mut next = 0;
    for _ in 0..30 {
        assert_eq!(produce(&running[&leader], 2).await, (next, next + 1));
        next += 2;
    }
    for replica in running.values() {
        replica.high_watermark_at_least(next).await;
    }
    purged_past(&running, 8).await;
    let epochs_before: Vec<(i32, i64)> = (0..4)
        .map(|e| running[&leader].group.end_offset_for_epoch(e))
        .collect();

    // A follower is away: nothing it has not got is purged meanwhile, so
    // it catches up with entries when it comes back.
    let away = *running.keys().find(|&&n| n != leader).expect("a follower");
    running.remove(&away).expect("follower").stop().await;
    let purged_when_it_left = running[&leader].group.purged_index();
    for _ in 0..30 {
        assert_eq!(produce(&running[&leader], 2).await, (next, next + 2 - 1));
        next += 2;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        running[&leader].group.purged_index(),
        purged_when_it_left,
        "the leader purged entries a replica that is away has not got"
    );
    let listener = TcpListener::bind(voters[&away].addr.as_str())
        .await
        .expect("rebind");
    running.insert(
        away,
        start_with(away, listener, &voters, &dir(away), timers.clone()).await,
    );
    running[&away].high_watermark_at_least(next).await;
    purged_past(&running, purged_when_it_left).await;

    // Every replica restarts on its purged index: the group elects, goes
    // on at the next offset, and answers for old epochs as before.
    for (_, replica) in std::mem::take(&mut running) {
        replica.stop().await;
    }
    for node in 1..=3 {
        let listener = TcpListener::bind(voters[&node].addr.as_str())
            .await
            .expect("rebind");
        running.insert(
            node,
            start_with(node, listener, &voters, &dir(node), timers.clone()).await,
        );
    }
    assert_eq!(produce_to_leader(&running, 1).await, (next, next));
    next += 1;
    let leader = leader_seen_by(&running[&1], None).await;
    for replica in running.values() {
        replica.high_watermark_at_least(next).await;
        assert_eq!(replica.segments(), running[&leader].segments());
    }
    // Epochs that had ended answer exactly as before the purges; the one
    // that was the latest then has ended since (at or after the log end
    // of then).
    let latest = epochs_before
        .iter()
        .filter(|(epoch, _)| *epoch >= 0)
        .map(|(epoch, _)| *epoch)
        .max()
        .expect("an epoch");
    for (e, before) in epochs_before.iter().enumerate() {
        let after = running[&leader].group.end_offset_for_epoch(e as i32);
        if before.0 < 0 {
            continue;
        }
        if before.0 < latest {
            assert_eq!(after, *before, "epoch {e}");
        } else {
            assert!(
                after.0 == before.0 && after.1 >= before.1,
                "epoch {e}: {before:?} then {after:?}"
            );
        }
    }
    for (_, replica) in std::mem::take(&mut running) {
        replica.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_voter_purges_every_entry_it_applied() {
    // A margin larger than everything produced: a group with followers
    // would purge nothing; a lone voter keeps no margin.
    let timers = GroupTimers {
        purge_keep_entries: 1_000,
        purge_step_entries: 8,
        ..GroupTimers::partitions()
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let voters = BTreeMap::from([(
        1,
        BasicNode::new(listener.local_addr().expect("addr").to_string()),
    )]);
    let replica = start_with(1, listener, &voters, dir.path(), timers).await;
    leader_seen_by(&replica, None).await;
    for i in 0..30 {
        assert_eq!(produce(&replica, 1).await, (i, i));
    }
    let running = BTreeMap::from([(1, replica)]);
    purged_past(&running, 23).await;
    for (_, replica) in running {
        replica.stop().await;
    }
}
