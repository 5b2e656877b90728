//! Three voters of an entry group over real loopback transports: started
//! in any order they form the group, replicate, fail over when the leader
//! stops, and a stopped voter catches up when it comes back.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::BasicNode;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::*;
use crate::raft::entry_log::tests::{Map, Put, Test};
use crate::raft::transport::TransportConfig;

const WAIT: Duration = Duration::from_secs(20);

struct Voter {
    group: EntryGroup<Test, Map>,
    stop: watch::Sender<bool>,
}

impl Voter {
    async fn stop(self) {
        self.group.stop().await;
        let _ = self.stop.send(true);
    }
}

async fn start(
    node: NodeId,
    listener: TcpListener,
    voters: &BTreeMap<NodeId, BasicNode>,
    dir: &std::path::Path,
) -> Voter {
    let (stop, stopped) = watch::channel(false);
    let transport = Transport::new(
        TransportConfig::new(node, Some("c".into())),
        stopped.clone(),
    );
    for (&peer, address) in voters {
        transport.add_peer(peer, address.addr.clone());
    }
    let registry = Arc::new(Registry::default());
    tokio::spawn(transport.clone().serve(listener, registry.clone()));
    let group = EntryGroup::<Test, Map>::start(
        node,
        GroupId::Metadata,
        voters.clone(),
        dir,
        // Wider than the default: the test suite runs in parallel on two
        // cores and every vote is synced to disk; this test is about safety
        // and progress, not how fast an election is.
        &GroupTimers {
            heartbeat_ms: 100,
            election_timeout_min_ms: 1000,
            election_timeout_max_ms: 2000,
            ..GroupTimers::default()
        },
        transport,
        registry,
        stopped,
    )
    .await
    .expect("group starts");
    Voter { group, stop }
}

/// Waits until `voter` sees a leader that is not `not`; that leader.
async fn leader_seen_by(voter: &Voter, not: Option<NodeId>) -> NodeId {
    let metrics = voter
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

async fn applied_at_least(voter: &Voter, index: u64) {
    voter
        .group
        .raft
        .wait(Some(WAIT))
        .applied_index_at_least(Some(index), "applied")
        .await
        .expect("entries applied");
}

async fn write(voter: &Voter, key: &str, value: &str) -> u64 {
    let put = Put {
        key: key.into(),
        value: value.into(),
    };
    voter
        .group
        .raft
        .client_write(put)
        .await
        .expect("the leader commits the write")
        .log_id
        .index
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_voters_form_a_group_replicate_fail_over_and_catch_up() {
    let dirs: Vec<tempfile::TempDir> = (0..3)
        .map(|_| tempfile::tempdir().expect("tempdir"))
        .collect();
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
    let dir = |node: NodeId| dirs[node as usize - 1].path().to_path_buf();
    // Started out of order: the bootstrapping voter (1) is not first.
    let mut running: BTreeMap<NodeId, Voter> = BTreeMap::new();
    for node in [3, 1, 2] {
        let listener = listeners.remove(&node).expect("listener");
        running.insert(node, start(node, listener, &voters, &dir(node)).await);
    }
    let leader = leader_seen_by(&running[&3], None).await;
    for voter in running.values() {
        assert_eq!(leader_seen_by(voter, None).await, leader);
    }
    for i in 0..10 {
        write(&running[&leader], &format!("k{i}"), "first").await;
    }
    // A follower's proposal is forwarded to the leader and committed.
    let follower = *running.keys().find(|&&n| n != leader).expect("a follower");
    let (_, replaced) = running[&follower]
        .group
        .propose(Put {
            key: "k0".into(),
            value: "via follower".into(),
        })
        .await
        .expect("forwarded and committed");
    assert_eq!(replaced, Some("first".to_string()));
    let mut last = running[&leader]
        .group
        .raft
        .metrics()
        .borrow()
        .last_log_index
        .expect("log");
    for voter in running.values() {
        applied_at_least(voter, last).await;
        assert_eq!(
            voter.group.machine.with_state(|m| m.0.get("k0").cloned()),
            Some("via follower".to_string())
        );
    }

    // The leader stops; the other two elect a new one and go on.
    let old = running.remove(&leader).expect("leader");
    old.stop().await;
    let survivor = *running.keys().next().expect("a survivor");
    let new_leader = leader_seen_by(&running[&survivor], Some(leader)).await;
    assert_ne!(new_leader, leader);
    for i in 0..10 {
        last = write(&running[&new_leader], &format!("k{i}"), "second").await;
    }
    for voter in running.values() {
        applied_at_least(voter, last).await;
    }

    // The old leader comes back on its data and catches up.
    let port = voters[&leader]
        .addr
        .rsplit_once(':')
        .expect("port")
        .1
        .to_string();
    let listener = TcpListener::bind(format!("127.0.0.1:{port}"))
        .await
        .expect("rebind");
    let back = start(leader, listener, &voters, &dir(leader)).await;
    applied_at_least(&back, last).await;
    running.insert(leader, back);
    let expected: BTreeMap<String, String> = (0..10)
        .map(|i| (format!("k{i}"), "second".to_string()))
        .collect();
    for voter in running.values() {
        let state = voter.group.machine.with_state(|m| m.0.clone());
        assert_eq!(state, expected);
    }
    for (_, voter) in running {
        voter.stop().await;
    }
}
