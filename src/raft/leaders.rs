//! Who leads which partition group, cluster-wide: every node tells each
//! peer, in the transport's node-level heartbeat, which groups it leads
//! (with the term and the in-sync replicas). This is Fjord's coalesced
//! heartbeat: one message per peer per interval, whatever the number of
//! partitions.
//!
//! Design decisions:
//! - Partition groups run with openraft's own heartbeats off, so a
//!   follower learns that its leader is still there from this report, not
//!   from per-group messages: the idle cost grows with the peers, not with
//!   the partitions. Commits still reach followers with the next append
//!   (openraft sends the commit index after it moves).
//! - A report travels whole only when it changed since the last one on
//!   that connection, and at least every [`FULL_REPORT_INTERVAL`]; other
//!   heartbeats carry its version alone. One TCP connection delivers in
//!   order, so a receiver whose stored version matches holds the sender's
//!   current report.
//! - The same reports let a node without a replica of a partition name its
//!   leader and ISR in Metadata, and let a stale leader (one that was paused
//!   or cut off while the others elected another) notice that a peer claims
//!   its group in a higher term and stop taking writes at once.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};

use super::types::{GroupId, NodeId};

/// A node sends its whole report at least this often, so a receiver that
/// somehow holds an old one (it cannot on one connection, but a bug must
/// not last) is corrected.
pub const FULL_REPORT_INTERVAL: Duration = Duration::from_secs(2);

/// One group a node leads.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Led {
    pub group: GroupId,
    /// The Raft term it leads in: Kafka's leader epoch.
    pub term: u64,
    /// Kafka's ISR as the leader computes it.
    pub in_sync: Vec<NodeId>,
    /// Up to which Raft index the replicas may purge their entry index:
    /// every voter holds the log past it (see `PartitionGroup::maybe_purge`).
    pub purge_to: Option<u64>,
}

/// What a heartbeat carries: the sender's report version and, when it
/// changed (or every [`FULL_REPORT_INTERVAL`]), the whole report.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LeaderReport {
    pub version: u64,
    pub groups: Option<Arc<Vec<Led>>>,
    /// How long the sender had been up when it sent this (ms): elections
    /// prefer nodes that have been up a while (see
    /// `PartitionGroup::check_election`). An uptime, not a start time, so
    /// that no two nodes' clocks are compared.
    pub uptime_ms: u64,
}

/// A connection's memory of what it last sent.
#[derive(Default)]
pub struct Sent {
    version: Option<u64>,
    at: Option<Instant>,
}

struct Own {
    version: u64,
    groups: Arc<Vec<Led>>,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A peer's last report.
struct PeerReport {
    version: u64,
    /// When a heartbeat confirming `version` last arrived.
    heard: Instant,
    /// Whether `groups` is the report of `version`.
    current: bool,
    groups: BTreeMap<GroupId, Led>,
    /// Its uptime when its last heartbeat arrived, and when that was.
    uptime: (Duration, Instant),
}

/// This node's report and the latest report of each peer.
pub struct Leaders {
    own: Mutex<Own>,
    peers: RwLock<BTreeMap<NodeId, PeerReport>>,
    started: Instant,
}

impl Default for Leaders {
    fn default() -> Self {
        Leaders {
            own: Mutex::new(Own {
                version: 0,
                groups: Arc::new(Vec::new()),
            }),
            peers: RwLock::new(BTreeMap::new()),
            started: Instant::now(),
        }
    }
}

/// A peer's claim to lead a group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    pub node: NodeId,
    pub term: u64,
    pub in_sync: Vec<NodeId>,
}

impl Leaders {
    /// Replaces this node's report with `groups` (sorted by group, so an
    /// unchanged set compares equal); a change gets a new version.
    pub fn set_own(&self, mut groups: Vec<Led>) {
        groups.sort_by_key(|l| l.group);
        let mut own = self.own.lock();
        if *own.groups != groups {
            own.version += 1;
            own.groups = Arc::new(groups);
        }
    }

    /// The report for the next heartbeat on a connection that last sent
    /// `sent`: whole if it changed or is due, else just its version.
    pub fn outgoing(&self, sent: &mut Sent) -> LeaderReport {
        let own = self.own.lock();
        let now = Instant::now();
        let due = sent.version != Some(own.version)
            || sent
                .at
                .is_none_or(|at| now.duration_since(at) >= FULL_REPORT_INTERVAL);
        if due {
            sent.version = Some(own.version);
            sent.at = Some(now);
        }
        LeaderReport {
            version: own.version,
            groups: due.then(|| own.groups.clone()),
            uptime_ms: millis(now.duration_since(self.started)),
        }
    }

    /// Takes a report `peer` sent.
    pub fn incoming(&self, peer: NodeId, report: LeaderReport) {
        let now = Instant::now();
        let mut peers = self.peers.write();
        match report.groups {
            Some(groups) => {
                let groups = groups.iter().map(|l| (l.group, l.clone())).collect();
                peers.insert(
                    peer,
                    PeerReport {
                        version: report.version,
                        heard: now,
                        current: true,
                        groups,
                        uptime: (Duration::from_millis(report.uptime_ms), now),
                    },
                );
            }
            None => {
                if let Some(p) = peers.get_mut(&peer) {
                    p.uptime = (Duration::from_millis(report.uptime_ms), now);
                    p.current = p.version == report.version;
                    if p.current {
                        p.heard = now;
                    }
                }
            }
        }
    }

    /// How long `node` (this one, or a peer by its last report) has been up;
    /// `None` for a peer never heard.
    pub fn uptime(&self, node: Option<NodeId>) -> Option<Duration> {
        match node {
            None => Some(self.started.elapsed()),
            Some(peer) => {
                let (uptime, at) = self.peers.read().get(&peer)?.uptime;
                Some(uptime + at.elapsed())
            }
        }
    }

    /// Whether a current report from `peer` was heard within `fresh`, so
    /// that its claims (or their absence) are known.
    pub fn reported(&self, peer: NodeId, fresh: Duration) -> bool {
        self.peers
            .read()
            .get(&peer)
            .is_some_and(|p| p.current && p.heard.elapsed() < fresh)
    }

    /// The term in which `peer` claims to lead `group`, from a report
    /// confirmed within `fresh`.
    pub fn claimed_term(&self, peer: NodeId, group: &GroupId, fresh: Duration) -> Option<u64> {
        let peers = self.peers.read();
        let p = peers.get(&peer)?;
        if !p.current || p.heard.elapsed() >= fresh {
            return None;
        }
        p.groups.get(group).map(|l| l.term)
    }

    /// Up to which index `peer`, leading `group`, says its replicas may
    /// purge (from a report confirmed within `fresh`).
    pub fn purge_to(&self, peer: NodeId, group: &GroupId, fresh: Duration) -> Option<u64> {
        let peers = self.peers.read();
        let p = peers.get(&peer)?;
        if !p.current || p.heard.elapsed() >= fresh {
            return None;
        }
        p.groups.get(group).and_then(|l| l.purge_to)
    }

    /// The peer claiming `group` in the highest term, among reports
    /// confirmed within `fresh` from peers `usable` accepts.
    pub fn leader_of(
        &self,
        group: &GroupId,
        fresh: Duration,
        usable: impl Fn(NodeId) -> bool,
    ) -> Option<Claim> {
        let peers = self.peers.read();
        peers
            .iter()
            .filter(|(&node, p)| p.current && p.heard.elapsed() < fresh && usable(node))
            .filter_map(|(&node, p)| {
                p.groups.get(group).map(|l| Claim {
                    node,
                    term: l.term,
                    in_sync: l.in_sync.clone(),
                })
            })
            .max_by_key(|c| (c.term, c.node))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn group(p: i32) -> GroupId {
        GroupId::Partition {
            topic_id: Uuid::from_u128(7),
            partition: p,
        }
    }

    fn led(p: i32, term: u64) -> Led {
        Led {
            group: group(p),
            term,
            in_sync: vec![1, 2],
            purge_to: None,
        }
    }

    #[test]
    fn a_report_travels_whole_only_when_it_changed() {
        let board = Leaders::default();
        board.set_own(vec![led(0, 3)]);
        let mut sent = Sent::default();
        assert!(board.outgoing(&mut sent).groups.is_some(), "first: whole");
        assert!(board.outgoing(&mut sent).groups.is_none(), "unchanged");
        board.set_own(vec![led(0, 3)]);
        assert!(board.outgoing(&mut sent).groups.is_none(), "same set again");
        board.set_own(vec![led(0, 4)]);
        let report = board.outgoing(&mut sent);
        assert_eq!(report.groups.map(|g| g[0].term), Some(4));
    }

    #[test]
    fn a_receiver_knows_the_claims_of_the_current_report_only() {
        let sender = Leaders::default();
        let receiver = Leaders::default();
        let fresh = Duration::from_secs(60);
        let mut sent = Sent::default();
        sender.set_own(vec![led(0, 3), led(1, 5)]);
        receiver.incoming(2, sender.outgoing(&mut sent));
        assert!(receiver.reported(2, fresh));
        assert_eq!(receiver.claimed_term(2, &group(0), fresh), Some(3));
        assert_eq!(receiver.claimed_term(2, &group(2), fresh), None);
        receiver.incoming(2, sender.outgoing(&mut sent));
        assert_eq!(receiver.claimed_term(2, &group(1), fresh), Some(5));
        // A version the receiver never saw whole: it knows nothing of it.
        receiver.incoming(
            2,
            LeaderReport {
                version: 99,
                groups: None,
                uptime_ms: 0,
            },
        );
        assert_eq!(receiver.claimed_term(2, &group(0), fresh), None);
        assert!(!receiver.reported(2, fresh), "a version never seen whole");
        assert!(!receiver.reported(3, fresh), "a peer never heard");
        // A stale report is no claim at all.
        receiver.incoming(2, sender.outgoing(&mut Sent::default()));
        assert_eq!(receiver.claimed_term(2, &group(0), Duration::ZERO), None);
    }

    #[test]
    fn the_highest_term_names_the_leader() {
        let board = Leaders::default();
        let fresh = Duration::from_secs(60);
        for (node, term) in [(1, 4), (2, 6), (3, 5)] {
            let peer = Leaders::default();
            peer.set_own(vec![led(0, term)]);
            board.incoming(node, peer.outgoing(&mut Sent::default()));
        }
        assert_eq!(
            board.leader_of(&group(0), fresh, |_| true).map(|c| c.node),
            Some(2)
        );
        assert_eq!(
            board
                .leader_of(&group(0), fresh, |n| n != 2)
                .map(|c| c.node),
            Some(3)
        );
        assert_eq!(board.leader_of(&group(1), fresh, |_| true), None);
    }
}
