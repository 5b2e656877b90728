//! openraft's network over the node-to-node transport, and the registry
//! that routes peers' requests to the right group on this node.
//!
//! A group's RPCs (append entries, vote, a whole snapshot, and Fjord's
//! bootstrap probe) travel as bincode `RaftRequest`s in transport calls
//! addressed to the group. A snapshot goes in one call, so it must fit in a
//! frame (`TransportConfig::max_frame_bytes`): fine for the metadata group;
//! partition groups will stream segments instead.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bincode::Options;
use futures::future::BoxFuture;
use openraft::error::{
    Fatal, NetworkError, RPCError, RaftError, ReplicationClosed, StreamingError, Unreachable,
};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{
    BasicNode, LogId, Raft, RaftNetwork, RaftNetworkFactory, Snapshot, SnapshotMeta, Vote,
};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

use super::entry_log::EntryTypes;
use super::transport::{CallError, Handler, Transport};
use super::types::{GroupId, NodeId};

/// Largest request or reply decoded (the transport's frames are smaller).
const MESSAGE_BYTES_MAX: u64 = 1 << 30;

#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
pub enum RaftRequest<C: EntryTypes> {
    Append(AppendEntriesRequest<C>),
    Vote(VoteRequest<NodeId>),
    Snapshot {
        vote: Vote<NodeId>,
        meta: SnapshotMeta<NodeId, BasicNode>,
        data: Vec<u8>,
    },
    /// Whether the group has any state on the peer (bootstrap asks this).
    Probe,
    /// A command for the group's leader to commit (sent by a follower).
    Propose(C::D),
    /// A node that is not a voter asks the leader to replicate the group to
    /// it as a learner; `addr` is where it listens for peers.
    Join {
        node: NodeId,
        addr: String,
    },
    /// Makes a learner a voter (Kafka's AddRaftVoter), on the leader.
    AddVoter {
        node: NodeId,
    },
    /// Start an election now: the leader, resigning, found this follower
    /// holding its whole log (Raft's TimeoutNow; see `transfer`).
    Elect,
    /// Raft's pre-vote (partition groups): would this voter vote for
    /// `candidate`, whose log ends at `last_log_id`? Asked before a real
    /// election, so that a candidate that cannot win (a shorter log, or a
    /// leader the voter still hears) bumps no term and disturbs no one.
    PreVote {
        candidate: NodeId,
        last_log_id: Option<LogId<NodeId>>,
    },
}

#[derive(Serialize, Deserialize)]
pub enum RaftReply {
    Append(AppendEntriesResponse<NodeId>),
    Vote(VoteResponse<NodeId>),
    Snapshot(SnapshotResponse<NodeId>),
    Probe {
        initialized: bool,
    },
    /// The committed command's log index and response (bincode), or why it
    /// was not committed, with the leader this node knows of.
    Proposed(Result<(u64, Vec<u8>), (String, Option<NodeId>)>),
    /// The learner was added (or already was a member), or why not, with
    /// the leader this node knows of.
    Joined(Result<(), (String, Option<NodeId>)>),
    /// The learner is a voter now, or why not, with the leader this node
    /// knows of.
    VoterAdded(Result<(), (String, Option<NodeId>)>),
    /// The election was started, or why not.
    Electing(Result<(), String>),
    /// Whether this voter would vote for the candidate.
    PreVoted(bool),
}

/// How a voter answers a pre-vote: the group's own judgement (its log, and
/// whether it still hears its leader).
pub trait PreVoteJudge: Send + Sync + 'static {
    fn grants(&self, candidate: NodeId, last_log_id: Option<LogId<NodeId>>) -> bool;
}

fn codec() -> impl Options {
    bincode::DefaultOptions::new()
        .with_limit(MESSAGE_BYTES_MAX)
        .reject_trailing_bytes()
}

pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, String> {
    codec().serialize(value).map_err(|e| e.to_string())
}

pub fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    codec().deserialize(bytes).map_err(|e| e.to_string())
}

/// One group's side of the registry: answers a peer's request.
pub trait GroupService: Send + Sync + 'static {
    fn handle(&self, body: Vec<u8>) -> BoxFuture<'static, Result<Vec<u8>, String>>;
}

/// Serves a Raft group's RPCs by handing them to its `Raft`.
pub struct RaftService<C: EntryTypes> {
    raft: Raft<C>,
    leaving: Arc<AtomicBool>,
    /// Answers pre-votes; a group without one refuses them.
    judge: Option<Arc<dyn PreVoteJudge>>,
}

impl<C: EntryTypes> GroupService for RaftService<C> {
    fn handle(&self, body: Vec<u8>) -> BoxFuture<'static, Result<Vec<u8>, String>> {
        let raft = self.raft.clone();
        let leaving = self.leaving.load(Ordering::Acquire);
        let judge = self.judge.clone();
        Box::pin(async move {
            let request: RaftRequest<C> = decode(&body)?;
            let reply = match request {
                RaftRequest::Append(rpc) => {
                    RaftReply::Append(raft.append_entries(rpc).await.map_err(|e| e.to_string())?)
                }
                RaftRequest::Vote(rpc) => {
                    RaftReply::Vote(raft.vote(rpc).await.map_err(|e| e.to_string())?)
                }
                RaftRequest::Snapshot { vote, meta, data } => {
                    let snapshot = Snapshot {
                        meta,
                        snapshot: Box::new(data),
                    };
                    RaftReply::Snapshot(
                        raft.install_full_snapshot(vote, snapshot)
                            .await
                            .map_err(|e| e.to_string())?,
                    )
                }
                RaftRequest::Probe => RaftReply::Probe {
                    initialized: raft.is_initialized().await.map_err(|e| e.to_string())?,
                },
                RaftRequest::Join { node, addr } => RaftReply::Joined(
                    match raft.add_learner(node, BasicNode::new(addr), false).await {
                        Ok(_) => Ok(()),
                        Err(e) => {
                            let leader = e.forward_to_leader().and_then(|f| f.leader_id);
                            Err((e.to_string(), leader))
                        }
                    },
                ),
                RaftRequest::AddVoter { node } => {
                    RaftReply::VoterAdded(add_voter(&raft, node).await)
                }
                RaftRequest::Elect if leaving => {
                    RaftReply::Electing(Err("this node is shutting down".to_string()))
                }
                RaftRequest::Elect => {
                    RaftReply::Electing(raft.trigger().elect().await.map_err(|e| e.to_string()))
                }
                RaftRequest::PreVote {
                    candidate,
                    last_log_id,
                } => RaftReply::PreVoted(
                    !leaving && judge.is_some_and(|j| j.grants(candidate, last_log_id)),
                ),
                RaftRequest::Propose(command) => {
                    RaftReply::Proposed(match raft.client_write(command).await {
                        Ok(written) => Ok((written.log_id.index, encode(&written.data)?)),
                        Err(e) => {
                            let leader = e.forward_to_leader().and_then(|f| f.leader_id);
                            Err((e.to_string(), leader))
                        }
                    })
                }
            };
            encode(&reply)
        })
    }
}

/// The groups this node hosts, by id: what the transport's server calls.
#[derive(Default)]
pub struct Registry {
    groups: RwLock<BTreeMap<GroupId, Arc<dyn GroupService>>>,
    /// Set when this node starts its controlled shutdown: it then refuses
    /// to start elections for peers (`RaftRequest::Elect`), so a leader
    /// handing a partition back does not pick a node about to stop.
    leaving: Arc<AtomicBool>,
}

impl Registry {
    /// This node is stopping: refuse peers' requests to lead from now on.
    pub fn set_leaving(&self) {
        self.leaving.store(true, Ordering::Release);
    }

    /// Whether this node started its controlled shutdown.
    pub fn is_leaving(&self) -> bool {
        self.leaving.load(Ordering::Acquire)
    }

    /// A service for `raft`, refusing to lead once the node is leaving.
    pub fn service<C: EntryTypes>(&self, raft: Raft<C>) -> Arc<dyn GroupService> {
        Arc::new(RaftService {
            raft,
            leaving: self.leaving.clone(),
            judge: None,
        })
    }

    /// [`service`](Self::service) for a group that answers pre-votes with
    /// `judge` (a node that is leaving refuses them).
    pub fn service_with_pre_vote<C: EntryTypes>(
        &self,
        raft: Raft<C>,
        judge: Arc<dyn PreVoteJudge>,
    ) -> Arc<dyn GroupService> {
        Arc::new(RaftService {
            raft,
            leaving: self.leaving.clone(),
            judge: Some(judge),
        })
    }

    pub fn insert(&self, group: GroupId, service: Arc<dyn GroupService>) {
        self.groups.write().insert(group, service);
    }

    pub fn remove(&self, group: &GroupId) {
        self.groups.write().remove(group);
    }
}

impl Handler for Registry {
    fn handle(
        &self,
        _from: NodeId,
        group: GroupId,
        body: Vec<u8>,
    ) -> BoxFuture<'static, Result<Vec<u8>, String>> {
        match self.groups.read().get(&group) {
            Some(service) => service.handle(body),
            None => Box::pin(async move { Err(format!("no Raft group {group} on this node")) }),
        }
    }
}

/// Creates a `PeerClient` per target for one group.
pub struct GroupNetwork {
    pub transport: Arc<Transport>,
    pub group: GroupId,
}

/// Sends one group's RPCs to one peer.
pub struct PeerClient {
    transport: Arc<Transport>,
    group: GroupId,
    target: NodeId,
}

impl PeerClient {
    async fn call<C: EntryTypes>(&self, request: &RaftRequest<C>) -> Result<RaftReply, CallError> {
        let body = encode(request).map_err(|e| CallError::Remote(self.target, e))?;
        let answer = self.transport.call(self.target, self.group, body).await?;
        decode(&answer).map_err(|e| CallError::Remote(self.target, e))
    }
}

fn rpc_error<E: std::error::Error>(error: CallError) -> RPCError<NodeId, BasicNode, E> {
    match error {
        CallError::UnknownPeer(_) | CallError::Unreachable(_) => {
            RPCError::Unreachable(Unreachable::new(&error))
        }
        _ => RPCError::Network(NetworkError::new(&error)),
    }
}

fn unexpected(target: NodeId) -> CallError {
    CallError::Remote(target, "unexpected reply type".into())
}

impl<C: EntryTypes> RaftNetworkFactory<C> for GroupNetwork {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerClient {
        // A member this node has not heard of at startup (a learner that
        // joined later) is reached at the address its membership records.
        self.transport.add_peer(target, node.addr.clone());
        PeerClient {
            transport: self.transport.clone(),
            group: self.group,
            target,
        }
    }
}

impl<C: EntryTypes> RaftNetwork<C> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<C>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        match self.call(&RaftRequest::<C>::Append(rpc)).await {
            Ok(RaftReply::Append(reply)) => Ok(reply),
            Ok(_) => Err(rpc_error(unexpected(self.target))),
            Err(e) => Err(rpc_error(e)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        match self.call(&RaftRequest::<C>::Vote(rpc)).await {
            Ok(RaftReply::Vote(reply)) => Ok(reply),
            Ok(_) => Err(rpc_error(unexpected(self.target))),
            Err(e) => Err(rpc_error(e)),
        }
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote<NodeId>,
        snapshot: Snapshot<C>,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<NodeId>, StreamingError<C, Fatal<NodeId>>> {
        let request = RaftRequest::<C>::Snapshot {
            vote,
            meta: snapshot.meta,
            data: *snapshot.snapshot,
        };
        let reply = tokio::select! {
            biased;
            reply = self.call(&request) => reply,
            closed = cancel => return Err(StreamingError::Closed(closed)),
        };
        match reply {
            Ok(RaftReply::Snapshot(reply)) => Ok(reply),
            Ok(_) => Err(StreamingError::Network(NetworkError::new(&unexpected(
                self.target,
            )))),
            Err(e @ (CallError::UnknownPeer(_) | CallError::Unreachable(_))) => {
                Err(StreamingError::Unreachable(Unreachable::new(&e)))
            }
            Err(e) => Err(StreamingError::Network(NetworkError::new(&e))),
        }
    }
}

/// Makes learner `node` a voter of the group `raft` leads (an error with
/// the leader it knows of when it does not lead).
pub async fn add_voter<C: EntryTypes>(
    raft: &Raft<C>,
    node: NodeId,
) -> Result<(), (String, Option<NodeId>)> {
    let change = openraft::ChangeMembers::AddVoterIds(std::collections::BTreeSet::from([node]));
    match raft.change_membership(change, false).await {
        Ok(_) => Ok(()),
        Err(e) => {
            let leader = e.forward_to_leader().and_then(|f| f.leader_id);
            Err((e.to_string(), leader))
        }
    }
}

/// Asks `peer` to add this node to `group` as a learner reachable at
/// `addr`: `Ok(())` once added, else why not and the leader `peer` knows.
pub async fn request_join<C: EntryTypes>(
    transport: &Transport,
    group: GroupId,
    peer: NodeId,
    addr: &str,
) -> Result<(), (String, Option<NodeId>)> {
    let request = RaftRequest::<C>::Join {
        node: transport.config().node_id,
        addr: addr.to_string(),
    };
    let body = encode(&request).map_err(|e| (e, None))?;
    let answer = transport
        .call(peer, group, body)
        .await
        .map_err(|e| (e.to_string(), None))?;
    match decode(&answer).map_err(|e| (e, None))? {
        RaftReply::Joined(result) => result,
        _ => Err((unexpected(peer).to_string(), None)),
    }
}

/// Asks `peer` whether it would vote for this node in `group`, whose log
/// ends at `last_log_id` (Raft's pre-vote).
pub async fn pre_vote<C: EntryTypes>(
    transport: &Transport,
    group: GroupId,
    peer: NodeId,
    last_log_id: Option<LogId<NodeId>>,
) -> Result<bool, CallError> {
    let request = RaftRequest::<C>::PreVote {
        candidate: transport.config().node_id,
        last_log_id,
    };
    let body = encode(&request).map_err(|e| CallError::Remote(peer, e))?;
    let answer = transport.call(peer, group, body).await?;
    match decode(&answer).map_err(|e| CallError::Remote(peer, e))? {
        RaftReply::PreVoted(granted) => Ok(granted),
        _ => Err(unexpected(peer)),
    }
}

/// Asks `peer` whether it holds any state of `group`.
pub async fn probe<C: EntryTypes>(
    transport: &Transport,
    group: GroupId,
    peer: NodeId,
) -> Result<bool, CallError> {
    let body = encode(&RaftRequest::<C>::Probe).map_err(|e| CallError::Remote(peer, e))?;
    let answer = transport.call(peer, group, body).await?;
    match decode(&answer).map_err(|e| CallError::Remote(peer, e))? {
        RaftReply::Probe { initialized } => Ok(initialized),
        _ => Err(unexpected(peer)),
    }
}
