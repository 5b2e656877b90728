//! Starting a Raft group of serialized commands (the metadata group) on
//! this node: its log and state machine, its `Raft`, its place in the
//! registry, the one-time bootstrap of a fresh cluster, and proposals from
//! any member (a follower forwards its command to the leader).
//!
//! Bootstrap: voters may start in any order. The voter with the lowest id
//! initializes the group, once, when a majority of the voters (itself
//! included) answer that they hold no state of it; if any voter already
//! has state, the group exists and nobody initializes it again (a voter
//! that lost its data is brought back by the leader instead).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use openraft::{BasicNode, Config, Raft};
use tokio::sync::watch;

use super::entry_log::{Applier, EntryLog, EntryMachine, EntryTypes};
use super::network::{decode, encode, probe, GroupNetwork, RaftReply, RaftRequest, Registry};
use super::transfer::{self, HandOver, Resignation};
use super::transport::Transport;
use super::types::{GroupId, NodeId};

/// How often bootstrap asks the other voters whether they hold state.
const BOOTSTRAP_PROBE_INTERVAL: Duration = Duration::from_millis(200);

/// Raft timers of an entry group.
#[derive(Clone, Debug)]
pub struct GroupTimers {
    pub heartbeat_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// The leader lease; `None`: `election_timeout_max_ms` (openraft's).
    pub lease_ms: Option<u64>,
    /// Partition groups: how many entries below what every voter holds a
    /// replica keeps in its entry index (a replica that lost its last
    /// unsynced writes in a crash still finds its place: 5,000 entries are
    /// more than a second of produce requests at full rate on one
    /// partition, and `log.flush.interval.ms` is a second), and how many
    /// more must have accumulated before a purge (the index's memory is
    /// about 100 bytes an entry, per partition).
    pub purge_keep_entries: u64,
    pub purge_step_entries: u64,
}

impl Default for GroupTimers {
    fn default() -> Self {
        GroupTimers {
            heartbeat_ms: 100,
            election_timeout_min_ms: 500,
            election_timeout_max_ms: 1000,
            lease_ms: None,
            purge_keep_entries: 10_000,
            purge_step_entries: 10_000,
        }
    }
}

impl GroupTimers {
    /// Partition groups: openraft's heartbeats and elections are off (the
    /// node's heartbeat report and election driver stand in, and a pre-vote
    /// keeps a node that lost sight of a live leader from disturbing it), so
    /// the leader lease is 0 (`lease_ms`: a follower whose leader is gone
    /// votes at once) and the other timers only bound openraft's RPCs: an
    /// AppendEntries waits at most `heartbeat_ms` (a follower's append, with
    /// `--fsync always` its fsync, on a loaded machine), a vote
    /// `election_timeout_min_ms`.
    pub fn partitions() -> GroupTimers {
        GroupTimers {
            heartbeat_ms: 2000,
            election_timeout_min_ms: 2500,
            election_timeout_max_ms: 3000,
            lease_ms: Some(0),
            purge_keep_entries: 5_000,
            purge_step_entries: 1_000,
        }
    }

    /// `base` with these timers, named after the group, checked.
    pub fn config(&self, id: GroupId, base: Config) -> anyhow::Result<Config> {
        Config {
            cluster_name: id.to_string(),
            heartbeat_interval: self.heartbeat_ms,
            election_timeout_min: self.election_timeout_min_ms,
            election_timeout_max: self.election_timeout_max_ms,
            leader_lease: self.lease_ms,
            ..base
        }
        .validate()
        .context("Raft timers")
    }
}

/// A running entry group on this node.
pub struct EntryGroup<C: EntryTypes, A> {
    pub id: GroupId,
    pub raft: Raft<C>,
    pub machine: EntryMachine<C, A>,
    registry: Arc<Registry>,
    transport: Arc<Transport>,
}

/// How many times `propose` looks for the leader before giving up, and how
/// long it waits between looks.
const PROPOSE_ATTEMPTS: usize = 20;
const PROPOSE_RETRY: Duration = Duration::from_millis(100);

impl<C, A> EntryGroup<C, A>
where
    C: EntryTypes,
    A: Applier<Command = C::D, Response = C::R>,
{
    /// Opens the group's files in `dir`, starts its Raft and registers it
    /// for peers' requests; the lowest voter also starts the bootstrap.
    #[allow(clippy::too_many_arguments)]
    pub async fn start(
        node: NodeId,
        id: GroupId,
        voters: BTreeMap<NodeId, BasicNode>,
        dir: &Path,
        timers: &GroupTimers,
        transport: Arc<Transport>,
        registry: Arc<Registry>,
        shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<Self> {
        let log = EntryLog::<C>::open(&dir.join("log"))
            .with_context(|| format!("opening the Raft log of group {id} in {}", dir.display()))?;
        let machine = EntryMachine::<C, A>::open(&dir.join("state")).with_context(|| {
            format!(
                "opening the state machine of group {id} in {}",
                dir.display()
            )
        })?;
        let config = timers.config(id, Config::default())?;
        let network = GroupNetwork {
            transport: transport.clone(),
            group: id,
        };
        let raft = Raft::new(node, Arc::new(config), network, log, machine.clone())
            .await
            .with_context(|| format!("starting Raft group {id}"))?;
        registry.insert(id, registry.service(raft.clone()));
        if voters.keys().next() == Some(&node) {
            // The lowest voter bootstraps; a node that is not a voter never
            // does (it joins as a learner: `join_as_learner`).
            tokio::spawn(bootstrap::<C>(
                raft.clone(),
                id,
                voters,
                transport.clone(),
                shutdown,
            ));
        }
        Ok(EntryGroup {
            id,
            raft,
            machine,
            registry,
            transport,
        })
    }

    /// Commits `command` through the group's leader, wherever it is (here,
    /// or forwarded to it, as Kafka forwards admin requests to the
    /// controller); its log index and response once committed and applied
    /// on the leader.
    pub async fn propose(&self, command: C::D) -> anyhow::Result<(u64, C::R)> {
        let mut last_error = String::from("no leader");
        for _ in 0..PROPOSE_ATTEMPTS {
            let leader = match self.raft.client_write(command.clone()).await {
                Ok(written) => return Ok((written.log_id.index, written.data)),
                Err(e) => match e.forward_to_leader() {
                    Some(forward) => {
                        last_error = e.to_string();
                        forward.leader_id
                    }
                    None => anyhow::bail!("group {}: {e}", self.id),
                },
            };
            if let Some(leader) = leader.filter(|&l| l != self.transport.config().node_id) {
                let body = encode(&RaftRequest::<C>::Propose(command.clone()))
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                match self.transport.call(leader, self.id, body).await {
                    Ok(answer) => match decode::<RaftReply>(&answer) {
                        Ok(RaftReply::Proposed(Ok((index, response)))) => {
                            return decode(&response)
                                .map(|r| (index, r))
                                .map_err(|e| anyhow::anyhow!("{e}"));
                        }
                        Ok(RaftReply::Proposed(Err((reason, _)))) => last_error = reason,
                        Ok(_) => last_error = "unexpected reply".into(),
                        Err(e) => last_error = e,
                    },
                    Err(e) => last_error = e.to_string(),
                }
            }
            tokio::time::sleep(PROPOSE_RETRY).await;
        }
        anyhow::bail!(
            "group {}: no leader committed the command: {last_error}",
            self.id
        )
    }

    /// Asks the voters, until the leader accepts, to replicate the group to
    /// this node (not a voter) as a learner that peers reach at `addr`.
    /// Returns once added (at once if it already is a member).
    pub async fn join_as_learner(&self, voters: &[NodeId], addr: &str) {
        let mut ask: Option<NodeId> = None;
        loop {
            let targets: Vec<NodeId> = match ask.take() {
                Some(leader) => vec![leader],
                None => voters.to_vec(),
            };
            for peer in targets {
                match super::network::request_join::<C>(&self.transport, self.id, peer, addr).await
                {
                    Ok(()) => {
                        tracing::info!(group = %self.id, via = peer, "joined as a learner");
                        return;
                    }
                    Err((why, leader)) => {
                        tracing::debug!(group = %self.id, peer, %why, "join not accepted yet");
                        if let Some(leader) = leader {
                            ask = Some(leader);
                            break;
                        }
                    }
                }
            }
            tokio::time::sleep(BOOTSTRAP_PROBE_INTERVAL).await;
        }
    }

    /// Makes `node`, already a learner, a voter of the group, through the
    /// leader wherever it is.
    pub async fn add_voter(&self, node: NodeId) -> anyhow::Result<()> {
        let mut last_error = String::from("no leader");
        for _ in 0..PROPOSE_ATTEMPTS {
            let leader = match super::network::add_voter(&self.raft, node).await {
                Ok(()) => return Ok(()),
                Err((why, leader)) => {
                    last_error = why;
                    leader
                }
            };
            if let Some(leader) = leader.filter(|&l| l != self.transport.config().node_id) {
                let body = encode(&RaftRequest::<C>::AddVoter { node })
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                match self.transport.call(leader, self.id, body).await {
                    Ok(answer) => match decode::<RaftReply>(&answer) {
                        Ok(RaftReply::VoterAdded(Ok(()))) => return Ok(()),
                        Ok(RaftReply::VoterAdded(Err((why, _)))) => last_error = why,
                        Ok(_) => last_error = "unexpected reply".into(),
                        Err(e) => last_error = e,
                    },
                    Err(e) => last_error = e.to_string(),
                }
            } else if self.leader() == Some(self.transport.config().node_id) {
                // This node leads and refused: retrying will not help.
                anyhow::bail!("{last_error}");
            }
            tokio::time::sleep(PROPOSE_RETRY).await;
        }
        anyhow::bail!(
            "group {}: node {node} was not made a voter: {last_error}",
            self.id
        )
    }

    /// The voters of the group as this node knows them.
    pub fn voters(&self) -> Vec<NodeId> {
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .collect()
    }

    /// Waits until this node has applied the entry at `index`, for at most
    /// `wait`.
    pub async fn wait_applied(&self, index: u64, wait: Duration) -> anyhow::Result<()> {
        self.raft
            .wait(Some(wait))
            .applied_index_at_least(Some(index), "applied")
            .await
            .map(|_| ())
            .map_err(|e| anyhow::anyhow!("group {}: entry {index} not applied here: {e}", self.id))
    }

    /// The leader this node knows of.
    pub fn leader(&self) -> Option<NodeId> {
        self.raft.metrics().borrow().current_leader
    }

    /// Waits until this node knows a leader, for at most `wait`.
    pub async fn wait_leader(&self, wait: Duration) -> anyhow::Result<NodeId> {
        let mut metrics = self.raft.metrics();
        let found = tokio::time::timeout(wait, async {
            loop {
                if let Some(leader) = metrics.borrow_and_update().current_leader {
                    return Some(leader);
                }
                if metrics.changed().await.is_err() {
                    return None;
                }
            }
        })
        .await;
        match found {
            Ok(Some(leader)) => Ok(leader),
            Ok(None) => anyhow::bail!("group {} stopped", self.id),
            Err(_) => anyhow::bail!("group {}: no leader within {wait:?}", self.id),
        }
    }

    /// Watches the index of the last entry this node applied.
    pub fn applied(&self) -> AppliedWatch {
        AppliedWatch {
            metrics: self.raft.metrics(),
        }
    }

    /// Hands the leadership to a caught-up voter before this node stops,
    /// within `wait` (see [`transfer`](super::transfer)).
    pub async fn resign(&self, wait: Duration) -> Resignation {
        let node = self.transport.config().node_id;
        transfer::resign(
            &self.raft,
            node,
            self.id,
            &self.transport,
            HandOver::Leaving,
            wait,
        )
        .await
    }

    /// Leaves the registry and stops the group's Raft.
    pub async fn stop(&self) {
        self.registry.remove(&self.id);
        let _ = self.raft.shutdown().await;
    }
}

/// Follows the index of the last entry a group applied on this node.
pub struct AppliedWatch {
    metrics: watch::Receiver<openraft::RaftMetrics<NodeId, BasicNode>>,
}

impl AppliedWatch {
    /// Returns once the applied index differs from `seen` (the new one), or
    /// `None` when the group has stopped.
    pub async fn changed_from(&mut self, seen: Option<u64>) -> Option<Option<u64>> {
        loop {
            let now = self
                .metrics
                .borrow_and_update()
                .last_applied
                .map(|l| l.index);
            if now != seen {
                return Some(now);
            }
            self.metrics.changed().await.ok()?;
        }
    }
}

/// Initializes `group` over `voters` once a majority of them is known to
/// hold no state of it; returns when the group exists or on shutdown.
pub(super) async fn bootstrap<C: EntryTypes>(
    raft: Raft<C>,
    group: GroupId,
    voters: BTreeMap<NodeId, BasicNode>,
    transport: Arc<Transport>,
    mut shutdown: watch::Receiver<bool>,
) {
    let majority = voters.len() / 2 + 1;
    loop {
        match raft.is_initialized().await {
            Ok(false) => {}
            Ok(true) => {
                // A lone voter restarting need not wait out an election
                // timeout: nobody else could lead.
                if voters.len() == 1 {
                    let _ = raft.trigger().elect().await;
                }
                return;
            }
            Err(_) => return,
        }
        let mut fresh = BTreeSet::from([transport.config().node_id]);
        let mut exists = false;
        for &peer in voters.keys().filter(|&&p| p != transport.config().node_id) {
            match probe::<C>(&transport, group, peer).await {
                Ok(false) => {
                    fresh.insert(peer);
                }
                Ok(true) => exists = true,
                Err(_) => {}
            }
        }
        if exists {
            tracing::info!(%group, "group exists on another voter; not initializing it");
            return;
        }
        if fresh.len() >= majority {
            match raft.initialize(voters.clone()).await {
                Ok(()) if matches!(group, GroupId::Metadata) => {
                    tracing::info!(%group, voters = ?voters.keys().collect::<Vec<_>>(), "initialized a new Raft group")
                }
                // One per partition: not worth a line each.
                Ok(()) => {
                    tracing::debug!(%group, voters = ?voters.keys().collect::<Vec<_>>(), "initialized a new Raft group")
                }
                Err(e) => tracing::info!(%group, error = %e, "group already initialized"),
            }
            return;
        }
        tokio::select! {
            biased;
            _ = shutdown.wait_for(|stop| *stop) => return,
            _ = tokio::time::sleep(BOOTSTRAP_PROBE_INTERVAL) => {}
        }
    }
}

#[cfg(test)]
mod tests;
