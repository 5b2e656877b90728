//! Leadership transfer: moving a group's leadership off this node before it
//! stops (Kafka's controlled shutdown), so that a SIGTERM costs clients one
//! metadata refresh instead of an election timeout.
//!
//! openraft 0.9 has no transfer call, so the transfer is Raft's "TimeoutNow":
//! the leader stops taking writes, waits until a follower holds its whole log,
//! and asks that follower to start an election at once (`RaftRequest::Elect`).
//! The candidate's log is as long as the leader's, so the old leader grants
//! the vote; with the candidate's own vote that is a majority of three (or of
//! two). The third replica may refuse while it still hears the old leader
//! (openraft's leader lease); it is not needed. The old leader's own lease
//! refuses votes for `election_timeout_max` after it was elected, so a
//! refused attempt is repeated until the deadline. The resigning node's own
//! elections are switched off first, so it does not take the leadership back.
//! Tested with three partition replicas in `partition_group`'s tests.

use std::time::Duration;
use tokio::time::Instant;

use openraft::{Raft, ServerState};

use super::entry_log::EntryTypes;
use super::network::{decode, encode, RaftReply, RaftRequest};
use super::partition_group::FRESH_NODE;
use super::transport::Transport;
use super::types::{GroupId, NodeId};

/// How long one attempt waits for the candidate to win before the leader
/// asks again.
const ATTEMPT_WAIT: Duration = Duration::from_millis(200);

/// What a resignation came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resignation {
    /// This node did not lead the group (or led it alone): nothing to move.
    NotLeader,
    /// Another voter leads now.
    Moved { to: NodeId },
    /// The deadline passed with this node still leading, or no follower
    /// caught up: the group elects by timeout once this node stops.
    Failed(String),
}

/// Where the leadership should go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandOver {
    /// This node stops: any caught-up voter, and this node's elections stay
    /// off afterwards, whatever the outcome.
    Leaving,
    /// To this voter (the preferred leader), once it is caught up; this
    /// node stays an ordinary voter.
    To(NodeId),
}

/// Moves the leadership of `group` from this node (`node`) to a caught-up
/// follower, within `wait`. The caller must stop handing the group new
/// writes first: a follower can only catch up with a log that stops growing.
pub async fn resign<C: EntryTypes>(
    raft: &Raft<C>,
    node: NodeId,
    group: GroupId,
    transport: &Transport,
    how: HandOver,
    wait: Duration,
) -> Resignation {
    let deadline = Instant::now() + wait;
    {
        let metrics = raft.metrics();
        let m = metrics.borrow();
        let voters = m.membership_config.membership().voter_ids().count();
        if m.state != ServerState::Leader || voters < 2 {
            return Resignation::NotLeader;
        }
    }
    if how == HandOver::Leaving {
        raft.runtime_config().elect(false);
    }
    let mut metrics = raft.metrics();
    let mut last_error = String::from("no follower caught up");
    let mut candidate = None;
    loop {
        let (target, moved, others_alive) = {
            let m = metrics.borrow_and_update();
            let voters: Vec<NodeId> = m.membership_config.membership().voter_ids().collect();
            let others_alive = voters
                .iter()
                .any(|&v| v != node && transport.is_reachable(v));
            let moved = match m.current_leader {
                Some(leader) if leader != node => Some(leader),
                _ => None,
            };
            // While leading: a live voter holding the whole log. Once a
            // refused attempt made this node step down (it saw the
            // candidate's higher term) and no one leads yet: the same
            // candidate again, which this node's vote now lets win.
            let target = if m.state == ServerState::Leader {
                m.replication.as_ref().and_then(|replication| {
                    replication
                        .iter()
                        .filter(|(&peer, _)| peer != node && voters.contains(&peer))
                        .filter(|(&peer, _)| match how {
                            HandOver::Leaving => true,
                            HandOver::To(to) => peer == to,
                        })
                        .filter(|(_, matched)| {
                            matched.is_some() && matched.map(|l| l.index) >= m.last_log_index
                        })
                        .map(|(&peer, _)| peer)
                        .filter(|&peer| transport.is_reachable(peer))
                        // A node that just came back last: clients may not
                        // have reconnected to it yet (in a rolling restart,
                        // the node restarted before this one).
                        .min_by_key(|&peer| (is_fresh(transport, peer), peer))
                })
            } else if m.current_leader.is_none() {
                candidate
            } else {
                None
            };
            (target, moved, others_alive)
        };
        if let Some(to) = moved {
            return Resignation::Moved { to };
        }
        if !others_alive {
            return Resignation::Failed("no other voter is reachable".to_string());
        }
        let now = Instant::now();
        if now >= deadline {
            return Resignation::Failed(last_error);
        }
        let attempt_end = deadline.min(now + ATTEMPT_WAIT);
        let asked = match target {
            Some(target) => {
                candidate = Some(target);
                if let Err(e) = ask_to_elect::<C>(transport, target, group).await {
                    last_error = format!("node {target}: {e}");
                    // The one node it may go to refused: writes need not
                    // wait for it any longer.
                    if let HandOver::To(_) = how {
                        return Resignation::Failed(last_error);
                    }
                }
                true
            }
            None => false,
        };
        // Once a candidate was asked, give it the attempt's time to win;
        // otherwise look again as soon as the followers' progress changes.
        let waited = tokio::time::timeout_at(attempt_end, async {
            loop {
                metrics.changed().await?;
                let m = metrics.borrow();
                if !asked || m.current_leader.is_some_and(|l| l != node) {
                    return Ok::<(), tokio::sync::watch::error::RecvError>(());
                }
            }
        })
        .await;
        if let Ok(Err(_)) = waited {
            return Resignation::Failed("the group stopped".to_string());
        }
    }
}

/// Whether `peer` started less than [`FRESH_NODE`] ago, by its last report.
fn is_fresh(transport: &Transport, peer: NodeId) -> bool {
    transport
        .leaders()
        .uptime(Some(peer))
        .is_none_or(|up| up < FRESH_NODE)
}

async fn ask_to_elect<C: EntryTypes>(
    transport: &Transport,
    target: NodeId,
    group: GroupId,
) -> Result<(), String> {
    let body = encode(&RaftRequest::<C>::Elect)?;
    let answer = transport
        .call(target, group, body)
        .await
        .map_err(|e| e.to_string())?;
    match decode::<RaftReply>(&answer)? {
        RaftReply::Electing(result) => result,
        _ => Err("unexpected reply to an election request".to_string()),
    }
}
