//! Node-to-node RPC on the CONTROLLER listener.
//!
//! Every Raft group's traffic between two nodes shares one TCP connection per
//! direction: node A's requests to B (and B's answers) travel on the
//! connection A opened, B's requests to A on the one B opened. A frame is a
//! 4-byte big-endian length and a bincode body (`Frame`), at most
//! `max_frame_bytes` long.
//!
//! A connection starts with `Hello` (protocol version, cluster id, who is
//! calling whom) and gets `Welcome` or `Refused`. After that the caller sends
//! `Request`s, each with an id that its `Response` repeats, and a `Heartbeat`
//! every `heartbeat_interval`. Heartbeats are per peer, not per group, so an
//! idle node's cost grows with the number of peers only; `Liveness` records
//! when each peer was last heard and is what the election driver asks.
//!
//! Limits: frames above `max_frame_bytes` and anything that does not decode
//! close the connection; at most `max_inflight` calls wait per peer (more
//! fail at once with `CallError::Busy`), every call has a timeout, a server
//! handles at most `max_inflight` requests per connection at once and stops
//! reading while it is full, and lost connections reconnect with backoff.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bincode::Options;
use futures::future::BoxFuture;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
// tokio's clock, not std's: the same in production, and the simulated one
// when the Raft simulation test pauses time (`partition_group::sim`).
use tokio::time::Instant;

use super::leaders::{LeaderReport, Leaders, Sent};
use super::types::{GroupId, NodeId};

/// Bumped when `Frame` changes incompatibly; a peer on another version is refused.
pub const PROTOCOL_VERSION: u16 = 3;

/// Limits and timers of the transport.
#[derive(Clone, Debug)]
pub struct TransportConfig {
    pub node_id: NodeId,
    /// The cluster this node belongs to; `None` until it knows (a node that
    /// has never joined). Two nodes that both know and disagree never talk.
    pub cluster_id: Option<String>,
    pub max_frame_bytes: usize,
    pub max_inflight: usize,
    /// Request bytes one peer connection may have in its handlers at once;
    /// beyond it the server stops reading that connection.
    pub max_inflight_bytes: usize,
    pub call_timeout: Duration,
    pub heartbeat_interval: Duration,
    /// A peer not heard from for this long counts as dead.
    pub dead_after: Duration,
    pub handshake_timeout: Duration,
    pub reconnect_backoff_max: Duration,
}

impl TransportConfig {
    pub fn new(node_id: NodeId, cluster_id: Option<String>) -> Self {
        TransportConfig {
            node_id,
            cluster_id,
            max_frame_bytes: 16 * 1024 * 1024,
            max_inflight: 1024,
            max_inflight_bytes: 64 * 1024 * 1024,
            call_timeout: Duration::from_secs(5),
            heartbeat_interval: Duration::from_millis(100),
            dead_after: Duration::from_millis(600),
            handshake_timeout: Duration::from_secs(5),
            reconnect_backoff_max: Duration::from_secs(1),
        }
    }
}

/// What goes over the wire.
#[derive(Debug, Serialize, Deserialize)]
enum Frame {
    Hello {
        version: u16,
        cluster_id: Option<String>,
        from: NodeId,
        to: NodeId,
    },
    Welcome {
        from: NodeId,
    },
    Refused {
        reason: String,
    },
    /// Sent every `heartbeat_interval` both ways; the caller's carries its
    /// report of the groups it leads (see `leaders`).
    Heartbeat {
        leaders: Option<LeaderReport>,
    },
    Request {
        id: u64,
        group: GroupId,
        body: Vec<u8>,
    },
    Response {
        id: u64,
        result: Result<Vec<u8>, String>,
    },
}

/// Why a call got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    #[error("node {0} is not a known peer")]
    UnknownPeer(NodeId),
    #[error("too many calls waiting for node {0}")]
    Busy(NodeId),
    #[error("no connection to node {0}")]
    Unreachable(NodeId),
    #[error("node {0} did not answer in time")]
    Timeout(NodeId),
    #[error("node {0} answered with an error: {1}")]
    Remote(NodeId, String),
}

/// Serves the requests peers send: the node's group registry.
pub trait Handler: Send + Sync + 'static {
    fn handle(
        &self,
        from: NodeId,
        group: GroupId,
        body: Vec<u8>,
    ) -> BoxFuture<'static, Result<Vec<u8>, String>>;
}

/// The reading half of a node-to-node connection.
pub type LinkReader = Box<dyn AsyncRead + Send + Unpin>;
/// The writing half of a node-to-node connection.
pub type LinkWriter = Box<dyn AsyncWrite + Send + Unpin>;

/// Opens connections to peers: TCP in a broker, a simulated network in the
/// Raft simulation test (which hands the other ends to
/// [`Transport::serve_link`]).
pub trait Dialer: Send + Sync + 'static {
    fn dial(&self, addr: &str) -> BoxFuture<'static, std::io::Result<(LinkReader, LinkWriter)>>;
}

/// Connects over TCP, Nagle off.
struct TcpDialer;

impl Dialer for TcpDialer {
    fn dial(&self, addr: &str) -> BoxFuture<'static, std::io::Result<(LinkReader, LinkWriter)>> {
        let addr = addr.to_string();
        Box::pin(async move {
            let stream = TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            Ok(tcp_link(stream))
        })
    }
}

fn tcp_link(stream: TcpStream) -> (LinkReader, LinkWriter) {
    let (reader, writer) = stream.into_split();
    (Box::new(reader), Box::new(writer))
}

/// When each peer was last heard from.
#[derive(Default)]
pub struct Liveness {
    last_heard: Mutex<BTreeMap<NodeId, Instant>>,
}

impl Liveness {
    fn heard(&self, peer: NodeId) {
        self.last_heard.lock().insert(peer, Instant::now());
    }

    /// When `peer` was last heard from.
    pub fn last_heard(&self, peer: NodeId) -> Option<Instant> {
        self.last_heard.lock().get(&peer).copied()
    }

    /// Whether `peer` was heard from within `dead_after`.
    pub fn is_alive(&self, peer: NodeId, dead_after: Duration) -> bool {
        self.last_heard
            .lock()
            .get(&peer)
            .is_some_and(|at| at.elapsed() < dead_after)
    }
}

/// Ticks every `heartbeat_interval`; late ticks are not made up.
fn heartbeat_timer(config: &TransportConfig) -> tokio::time::Interval {
    let mut timer = tokio::time::interval(config.heartbeat_interval);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    timer
}

/// Resolves once `shutdown` says stop (or its sender is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

fn codec(limit: usize) -> impl Options {
    bincode::DefaultOptions::new()
        .with_limit(limit as u64)
        .reject_trailing_bytes()
}

async fn write_frame(
    stream: &mut (impl AsyncWriteExt + Unpin),
    frame: &Frame,
    limit: usize,
) -> std::io::Result<()> {
    let body = codec(limit)
        .serialize(frame)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    stream.write_all(&out).await
}

/// Reads one frame; `Ok(None)` on a clean end of stream. Oversized or
/// undecodable frames are errors (the caller closes the connection).
async fn read_frame(
    stream: &mut (impl AsyncReadExt + Unpin),
    limit: usize,
) -> std::io::Result<Option<Frame>> {
    let mut len = [0u8; 4];
    match stream.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > limit {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("frame of {len} bytes exceeds the limit of {limit}"),
        ));
    }
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).await?;
    codec(limit)
        .deserialize(&body)
        .map(Some)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

type Pending = Mutex<BTreeMap<u64, oneshot::Sender<Result<Vec<u8>, String>>>>;

/// Removes a call from `pending` when dropped.
struct Forget<'a> {
    pending: &'a Pending,
    id: u64,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.pending.lock().remove(&self.id);
    }
}

/// The outbound side of one peer: a queue into its connection task and the
/// calls waiting for answers.
struct Peer {
    id: NodeId,
    queue: mpsc::Sender<Frame>,
    pending: Arc<Pending>,
    state: watch::Sender<PeerState>,
    /// Outbound connections made to it so far.
    connections: AtomicU64,
}

/// Where the outbound connection to a peer stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerState {
    Connecting,
    Connected,
    /// The peer refused the handshake, and why (another cluster, another
    /// node id, another protocol version).
    Refused(String),
}

/// The node's end of node-to-node RPC.
pub struct Transport {
    config: TransportConfig,
    peers: Mutex<BTreeMap<NodeId, Arc<Peer>>>,
    next_id: AtomicU64,
    liveness: Arc<Liveness>,
    /// Which groups each node leads, from the heartbeats.
    leaders: Arc<Leaders>,
    /// When this node's transport started (the node's start, near enough).
    started: Instant,
    shutdown: watch::Receiver<bool>,
    /// Peer connections that passed the handshake, since start.
    accepted: AtomicU64,
    /// The cluster this node belongs to, once it knows (starts as
    /// `config.cluster_id`; see [`Transport::adopt_cluster_id`]).
    cluster_id: parking_lot::RwLock<Option<String>>,
    dialer: Arc<dyn Dialer>,
}

impl Transport {
    pub fn new(config: TransportConfig, shutdown: watch::Receiver<bool>) -> Arc<Transport> {
        Self::with_dialer(config, shutdown, Arc::new(TcpDialer))
    }

    /// A transport that reaches its peers through `dialer`.
    pub fn with_dialer(
        config: TransportConfig,
        shutdown: watch::Receiver<bool>,
        dialer: Arc<dyn Dialer>,
    ) -> Arc<Transport> {
        Arc::new(Transport {
            dialer,
            peers: Mutex::new(BTreeMap::new()),
            next_id: AtomicU64::new(1),
            liveness: Arc::new(Liveness::default()),
            leaders: Arc::new(Leaders::default()),
            started: Instant::now(),
            shutdown,
            accepted: AtomicU64::new(0),
            cluster_id: parking_lot::RwLock::new(config.cluster_id.clone()),
            config,
        })
    }

    /// The cluster id this node presents and checks in handshakes.
    pub fn cluster_id(&self) -> Option<String> {
        self.cluster_id.read().clone()
    }

    /// Records the cluster id a node learned when it joined: from now on
    /// peers of another cluster are refused. Connections already made stay.
    pub fn adopt_cluster_id(&self, id: &str) {
        *self.cluster_id.write() = Some(id.to_string());
    }

    pub fn config(&self) -> &TransportConfig {
        &self.config
    }

    /// Peer connections that passed the handshake since this node started.
    pub fn connections_accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    pub fn liveness(&self) -> &Liveness {
        &self.liveness
    }

    /// When this node's transport started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// This node's leader report and its peers'.
    pub fn leaders(&self) -> &Leaders {
        &self.leaders
    }

    /// Whether `peer` was heard from recently (see `TransportConfig::dead_after`).
    pub fn is_alive(&self, peer: NodeId) -> bool {
        self.liveness.is_alive(peer, self.config.dead_after)
    }

    /// Heard from lately and connected now: a peer whose connection broke (a
    /// killed node's kernel resets it at once) is unreachable at once, one
    /// that went quiet (paused, cut off) after `dead_after`.
    pub fn is_reachable(&self, peer: NodeId) -> bool {
        self.is_alive(peer) && self.peer_state(peer) == Some(PeerState::Connected)
    }

    /// How many times this node connected to `peer` (it changes when a
    /// connection broke and was made again).
    pub fn connections_made(&self, peer: NodeId) -> u64 {
        self.peers
            .lock()
            .get(&peer)
            .map_or(0, |p| p.connections.load(Ordering::Relaxed))
    }

    /// Where the outbound connection to `peer` stands (`None`: not a peer).
    pub fn peer_state(&self, peer: NodeId) -> Option<PeerState> {
        Some(self.peers.lock().get(&peer)?.state.borrow().clone())
    }

    /// Waits at most `timeout` for the connection to `peer` to reach a state
    /// `accept` takes; the state it ended in.
    pub async fn wait_for_peer(
        &self,
        peer: NodeId,
        timeout: Duration,
        accept: impl Fn(&PeerState) -> bool,
    ) -> Option<PeerState> {
        let mut states = self.peers.lock().get(&peer)?.state.subscribe();
        let _ = tokio::time::timeout(timeout, states.wait_for(|s| accept(s))).await;
        let state = states.borrow().clone();
        Some(state)
    }

    /// Starts connecting to `peer` at `addr` (and keeps reconnecting until
    /// shutdown). Adding a known peer again changes nothing.
    pub fn add_peer(self: &Arc<Self>, peer: NodeId, addr: String) {
        let mut peers = self.peers.lock();
        if peers.contains_key(&peer) || peer == self.config.node_id {
            return;
        }
        let (queue, rx) = mpsc::channel(self.config.max_inflight);
        let state = Arc::new(Peer {
            id: peer,
            queue,
            pending: Arc::new(Mutex::new(BTreeMap::new())),
            state: watch::Sender::new(PeerState::Connecting),
            connections: AtomicU64::new(0),
        });
        peers.insert(peer, state.clone());
        tokio::spawn(connect_loop(self.clone(), state, addr, rx));
    }

    /// Sends `body` to `group` on `peer` and waits for its answer, at most
    /// `call_timeout`.
    pub async fn call(
        &self,
        peer: NodeId,
        group: GroupId,
        body: Vec<u8>,
    ) -> Result<Vec<u8>, CallError> {
        let state = self
            .peers
            .lock()
            .get(&peer)
            .cloned()
            .ok_or(CallError::UnknownPeer(peer))?;
        if *state.state.borrow() != PeerState::Connected {
            return Err(CallError::Unreachable(peer));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = state.pending.lock();
            if pending.len() >= self.config.max_inflight {
                return Err(CallError::Busy(peer));
            }
            pending.insert(id, tx);
        }
        // Forgets the call however it ends, also when the caller drops it
        // (openraft gives up on RPCs by dropping them).
        let _forget = Forget {
            pending: &state.pending,
            id,
        };
        if state
            .queue
            .try_send(Frame::Request { id, group, body })
            .is_err()
        {
            return Err(CallError::Busy(peer));
        }
        match tokio::time::timeout(self.config.call_timeout, rx).await {
            Ok(Ok(Ok(answer))) => Ok(answer),
            Ok(Ok(Err(reason))) => Err(CallError::Remote(peer, reason)),
            // The connection dropped and failed every pending call.
            Ok(Err(_)) => Err(CallError::Unreachable(peer)),
            Err(_) => Err(CallError::Timeout(peer)),
        }
    }

    /// Accepts peers' connections on `listener` until shutdown.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, handler: Arc<dyn Handler>) {
        let mut shutdown = self.shutdown.clone();
        loop {
            tokio::select! {
                biased;
                _ = stopped(&mut shutdown) => return,
                accepted = listener.accept() => match accepted {
                    Ok((stream, addr)) => {
                        let _ = stream.set_nodelay(true);
                        let (reader, writer) = tcp_link(stream);
                        let work = self.clone().serve_link(reader, writer, addr.to_string(), handler.clone());
                        tokio::spawn(work);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "accepting a peer connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }
    }

    /// Serves one peer's connection (from `addr`) until it ends or this
    /// node shuts down.
    pub async fn serve_link(
        self: Arc<Self>,
        mut reader: LinkReader,
        mut writer: LinkWriter,
        addr: String,
        handler: Arc<dyn Handler>,
    ) {
        let limit = self.config.max_frame_bytes;
        let hello = tokio::time::timeout(
            self.config.handshake_timeout,
            read_frame(&mut reader, limit),
        )
        .await;
        let peer = match hello {
            Ok(Ok(Some(Frame::Hello {
                version,
                cluster_id,
                from,
                to,
            }))) => {
                let refusal = if version != PROTOCOL_VERSION {
                    Some(format!(
                        "protocol version {version} is not {PROTOCOL_VERSION}"
                    ))
                } else if to != self.config.node_id {
                    Some(format!(
                        "this is node {}, not node {to}",
                        self.config.node_id
                    ))
                } else {
                    match (&cluster_id, &self.cluster_id()) {
                        (Some(theirs), Some(ours)) if theirs != ours => Some(format!(
                            "node {} belongs to cluster {ours}, node {from} to cluster {theirs}",
                            self.config.node_id
                        )),
                        _ => None,
                    }
                };
                if let Some(reason) = refusal {
                    tracing::warn!(%addr, from, %reason, "refused a peer");
                    let _ = write_frame(&mut writer, &Frame::Refused { reason }, limit).await;
                    return;
                }
                from
            }
            _ => {
                tracing::debug!(%addr, "peer connection closed: no valid hello");
                return;
            }
        };
        if write_frame(
            &mut writer,
            &Frame::Welcome {
                from: self.config.node_id,
            },
            limit,
        )
        .await
        .is_err()
        {
            return;
        }
        self.liveness.heard(peer);
        self.accepted.fetch_add(1, Ordering::Relaxed);
        let (answers, mut outgoing) = mpsc::channel::<Frame>(self.config.max_inflight);
        // Heartbeats go both ways, so the caller hears an idle server too.
        let mut heartbeat = heartbeat_timer(&self.config);
        let write_task = tokio::spawn(async move {
            loop {
                let frame = tokio::select! {
                    biased;
                    _ = heartbeat.tick() => Frame::Heartbeat { leaders: None },
                    frame = outgoing.recv() => match frame {
                        Some(frame) => frame,
                        None => return,
                    },
                };
                if write_frame(&mut writer, &frame, limit).await.is_err() {
                    return;
                }
            }
        });
        let slots = Arc::new(Semaphore::new(self.config.max_inflight));
        let bytes = Arc::new(Semaphore::new(self.config.max_inflight_bytes));
        let mut shutdown = self.shutdown.clone();
        loop {
            let frame = tokio::select! {
                biased;
                _ = stopped(&mut shutdown) => break,
                frame = read_frame(&mut reader, limit) => frame,
            };
            match frame {
                Ok(Some(Frame::Heartbeat { leaders })) => {
                    self.liveness.heard(peer);
                    if let Some(report) = leaders {
                        self.leaders.incoming(peer, report);
                    }
                }
                Ok(Some(Frame::Request { id, group, body })) => {
                    self.liveness.heard(peer);
                    // Full: stop reading until a request finishes (backpressure).
                    let Ok(slot) = slots.clone().acquire_owned().await else {
                        break;
                    };
                    let cost = body.len().clamp(1, self.config.max_inflight_bytes);
                    let Ok(held) = bytes
                        .clone()
                        .acquire_many_owned(u32::try_from(cost).unwrap_or(u32::MAX))
                        .await
                    else {
                        break;
                    };
                    let answers = answers.clone();
                    let work = handler.handle(peer, group, body);
                    tokio::spawn(async move {
                        let result = work.await;
                        let _ = answers.send(Frame::Response { id, result }).await;
                        drop((slot, held));
                    });
                }
                Ok(None) => break,
                Ok(Some(other)) => {
                    tracing::debug!(%addr, peer, frame = ?other, "unexpected frame from a peer; closing");
                    break;
                }
                Err(e) => {
                    tracing::debug!(%addr, peer, error = %e, "bad frame from a peer; closing");
                    break;
                }
            }
        }
        write_task.abort();
    }
}

/// Keeps one outbound connection to `peer` up: connect, handshake, then
/// write requests and heartbeats and read answers until it breaks; then
/// fail the waiting calls, back off and start again.
async fn connect_loop(
    transport: Arc<Transport>,
    peer: Arc<Peer>,
    addr: String,
    mut queue: mpsc::Receiver<Frame>,
) {
    let config = transport.config.clone();
    let limit = config.max_frame_bytes;
    let mut shutdown = transport.shutdown.clone();
    let mut backoff = Duration::from_millis(20);
    loop {
        if *shutdown.borrow() {
            return;
        }
        let dialer = transport.dialer.as_ref();
        match open(dialer, &config, transport.cluster_id(), peer.id, &addr).await {
            Ok(Ok(stream)) => {
                backoff = Duration::from_millis(20);
                transport.liveness.heard(peer.id);
                peer.connections.fetch_add(1, Ordering::Relaxed);
                peer.state.send_replace(PeerState::Connected);
                tracing::info!(peer = peer.id, %addr, "connected to peer");
                run_connection(&transport, &peer, stream, &mut queue, &mut shutdown, limit).await;
                peer.state.send_replace(PeerState::Connecting);
                // Dropping the waiters fails their calls with Unreachable.
                peer.pending.lock().clear();
                // Requests queued for the broken connection are stale now.
                while queue.try_recv().is_ok() {}
                tracing::info!(peer = peer.id, %addr, "lost the connection to peer");
            }
            Ok(Err(reason)) => {
                let state = PeerState::Refused(reason.clone());
                if *peer.state.borrow() != state {
                    tracing::error!(peer = peer.id, %addr, %reason, "peer refused this node");
                }
                peer.state.send_replace(state);
            }
            Err(e) => tracing::debug!(peer = peer.id, %addr, error = %e, "cannot reach peer"),
        }
        tokio::select! {
            biased;
            _ = stopped(&mut shutdown) => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(config.reconnect_backoff_max);
    }
}

/// Connects and shakes hands: the stream, or the peer's reason for refusing.
async fn open(
    dialer: &dyn Dialer,
    config: &TransportConfig,
    cluster_id: Option<String>,
    peer: NodeId,
    addr: &str,
) -> std::io::Result<Result<(LinkReader, LinkWriter), String>> {
    let limit = config.max_frame_bytes;
    let attempt = async {
        let (mut reader, mut writer) = dialer.dial(addr).await?;
        let hello = Frame::Hello {
            version: PROTOCOL_VERSION,
            cluster_id,
            from: config.node_id,
            to: peer,
        };
        write_frame(&mut writer, &hello, limit).await?;
        match read_frame(&mut reader, limit).await? {
            Some(Frame::Welcome { from }) if from == peer => Ok(Ok((reader, writer))),
            Some(Frame::Refused { reason }) => Ok(Err(reason)),
            other => Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("unexpected handshake answer {other:?}"),
            )),
        }
    };
    tokio::time::timeout(config.handshake_timeout, attempt)
        .await
        .unwrap_or_else(|_| {
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "handshake timed out",
            ))
        })
}

async fn run_connection(
    transport: &Transport,
    peer: &Peer,
    (mut reader, mut writer): (LinkReader, LinkWriter),
    queue: &mut mpsc::Receiver<Frame>,
    shutdown: &mut watch::Receiver<bool>,
    limit: usize,
) {
    let pending = peer.pending.clone();
    let liveness = transport.liveness.clone();
    let peer_id = peer.id;
    let mut read_task = tokio::spawn(async move {
        loop {
            match read_frame(&mut reader, limit).await {
                Ok(Some(Frame::Response { id, result })) => {
                    liveness.heard(peer_id);
                    if let Some(waiter) = pending.lock().remove(&id) {
                        let _ = waiter.send(result);
                    }
                }
                Ok(Some(Frame::Heartbeat { .. })) => liveness.heard(peer_id),
                _ => return,
            }
        }
    });
    let mut heartbeat = heartbeat_timer(&transport.config);
    let mut sent = Sent::default();
    loop {
        // Biased (here and in every select of the Raft layer), so that one
        // seed's run of the simulation (`partition_group::sim`) replays
        // exactly; the rare branches come first, so none starves.
        let frame = tokio::select! {
            biased;
            _ = stopped(shutdown) => break,
            _ = &mut read_task => break,
            _ = heartbeat.tick() => Frame::Heartbeat {
                leaders: Some(transport.leaders.outgoing(&mut sent)),
            },
            frame = queue.recv() => match frame {
                Some(frame) => frame,
                None => break,
            },
        };
        if write_frame(&mut writer, &frame, limit).await.is_err() {
            break;
        }
    }
    read_task.abort();
}

#[cfg(test)]
mod tests;
