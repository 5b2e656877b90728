//! A deterministic simulation of a partition group's replication: three
//! replicas, each the real [`PartitionGroup`] (openraft, the
//! [`PartitionStore`] over segment files in a temp dir, the node-level
//! election driver as `ReplicaManager` runs it), talking through the real
//! node-to-node [`Transport`] (frames, handshakes, heartbeats, liveness),
//! whose connections run over a simulated network instead of TCP. One
//! thread and tokio's paused clock: time moves only when every task waits,
//! and every random choice comes from the seed, so a seed replays exactly.
//!
//! The network, per seed ([`Net`]): each frame is delayed (in order, per
//! direction) and now and then dropped, a partition holds the frames of
//! the directions it cuts until it heals (as TCP would retransmit them),
//! connecting across a partition times out, and every connection of a node
//! that crashes breaks. A crash stops the node as kill -9 does: what it
//! wrote stays in its files (a process crash, not a power cut), nothing is
//! flushed or handed over, and it restarts on those files later. Faults
//! come from a schedule drawn from the seed ([`schedule`]); they all heal
//! at [`FAULTS_UNTIL`], and the group must then converge.
//!
//! Checked on every seed ([`Checker`]), sampled every [`SAMPLE_EVERY`] and
//! once more after the group converged:
//! - no two replicas ever hold different committed batches at one offset
//!   (nor one replica at two moments), and no two replicas applied
//!   different Raft entries at one index;
//! - every acknowledged produce is, at the end, on every replica (so it
//!   survived on a majority throughout: it was acknowledged once a majority
//!   held it, and a replica's committed prefix never changes), exactly
//!   once, at the offsets its acknowledgement named;
//! - each node's term only grows, across restarts too; a term has one
//!   leader; leader epochs never go down along the log.
//!
//! What keeps a run exact, and must stay so in `src/raft`: time is tokio's
//! `Instant` (the paused clock here), never std's or the wall clock (a
//! commit hint written by real elapsed time once made runs differ); every
//! `select!` is `biased` (tokio picks among ready branches at random, and
//! so does openraft's patched copy no longer); maps are `BTreeMap`s (a
//! `HashMap`'s order differs per process); the retry jitter comes from a
//! per-thread generator the seed sets. This module waits on `Notify`, not
//! on `watch`, whose waiters tokio wakes in a random order.
//!
//! `cargo test --lib raft::partition_group::sim` runs [`SEEDS`] fixed seeds
//! and checks that a seed replays; the sweep and the replay of one seed are
//! ignored tests, see [`sweep`] and [`replay`] (and the README).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::*;
use crate::log::batch::test_batches::TestBatch;
use crate::log::LogConfig;
use crate::raft::transport::{Dialer, LinkReader, LinkWriter, TransportConfig};

const NODES: [NodeId; 3] = [1, 2, 3];
/// Fixed seeds of the default suite: `0..SEEDS`.
const SEEDS: u64 = 100;
/// Faults strike (and the producers write) until then; then all heal.
const FAULTS_UNTIL: Duration = Duration::from_secs(20);
/// How long after the faults the group may take to converge.
const SETTLE: Duration = Duration::from_secs(60);
const SAMPLE_EVERY: Duration = Duration::from_millis(50);
/// Producers write one batch per this, each, while the faults strike.
const PRODUCE_GAP: Duration = Duration::from_millis(20);
const PRODUCERS: usize = 2;
/// An acks=all produce not committed by then counts as not acknowledged.
const PRODUCE_WAIT: Duration = Duration::from_secs(2);
/// Connecting across a partition fails after this.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Bytes each simulated pipe buffers.
const PIPE_BYTES: usize = 256 * 1024;
/// Frames in flight per direction of a connection.
const FLIGHT_FRAMES: usize = 4096;
/// Real time one seed may take (a few seconds on a loaded machine).
const WALL_LIMIT: Duration = Duration::from_secs(120);
/// Largest frame the network carries (the transport's own limit is lower).
const FRAME_BYTES_MAX: usize = 64 * 1024 * 1024;
/// A batch's base timestamp is this plus its unique id.
const TIMESTAMP_BASE: i64 = 1_700_000_000_000;

thread_local! {
    /// `FJORD_SIM_FRAMES=1`: print every frame delivered (a replay's detail).
    static PRINT_FRAMES: bool = std::env::var_os("FJORD_SIM_FRAMES").is_some();
}
/// The ISR lag allowed (Kafka's `replica.lag.time.max.ms` default).
const LAG_MAX: Duration = Duration::from_secs(30);

/// xorshift64* seeded through splitmix64.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Rng((z ^ (z >> 31)) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound.max(1)
    }

    fn between(&mut self, low: Duration, high: Duration) -> Duration {
        let span = high.saturating_sub(low).as_micros() as u64;
        low + Duration::from_micros(self.below(span + 1))
    }

    fn chance(&mut self, per_million: u64) -> bool {
        self.below(1_000_000) < per_million
    }

    fn node(&mut self) -> NodeId {
        NODES[self.below(NODES.len() as u64) as usize]
    }
}

/// The network's mood: how many frames in a million it drops, and the
/// longest it delays one.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Weather {
    loss_per_million: u64,
    delay_max: Duration,
}

const CALM: Weather = Weather {
    loss_per_million: 0,
    delay_max: Duration::from_millis(2),
};

/// What was delivered, in order: a hash over (time, from, to, length) of
/// every frame, which two runs of a seed must agree on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Trace {
    hash: u64,
    frames: u64,
    dropped: u64,
}

impl Trace {
    fn add(&mut self, values: [u64; 4]) {
        self.frames += 1;
        for value in values {
            for byte in value.to_le_bytes() {
                self.hash = (self.hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01B3);
            }
        }
    }
}

struct NetState {
    rng: Rng,
    weather: Weather,
    /// The running nodes, as their peers' connections reach them.
    up: BTreeMap<NodeId, (Arc<Transport>, Arc<Registry>)>,
    /// Directions cut (from, to), counted: partitions may overlap.
    cut: BTreeMap<(NodeId, NodeId), u32>,
    /// Every connection's ends and its switch to break it.
    links: Vec<(NodeId, NodeId, Arc<Switch>)>,
    trace: Trace,
}

/// A one-way switch tasks can wait on. Not a `watch`: tokio spreads a
/// watch's waiters over several lists picked at random, so the order in
/// which they wake would differ from run to run; `Notify` wakes its waiters
/// in the order they came.
#[derive(Default)]
struct Switch {
    off: std::sync::atomic::AtomicBool,
    turned: tokio::sync::Notify,
}

impl Switch {
    fn turn_off(&self) {
        self.off.store(true, Ordering::SeqCst);
        self.turned.notify_waiters();
    }

    fn is_off(&self) -> bool {
        self.off.load(Ordering::SeqCst)
    }

    async fn turned_off(&self) {
        loop {
            let turned = self.turned.notified();
            tokio::pin!(turned);
            turned.as_mut().enable();
            if self.is_off() {
                return;
            }
            turned.await;
        }
    }
}

/// The simulated network between the nodes' transports.
struct Net {
    state: Mutex<NetState>,
    /// Woken whenever a cut heals, for the frames held by it.
    healed: tokio::sync::Notify,
    start: Instant,
}

fn address(node: NodeId) -> String {
    format!("node-{node}")
}

impl Net {
    fn new(seed: u64) -> Arc<Net> {
        Arc::new(Net {
            state: Mutex::new(NetState {
                rng: Rng::new(seed ^ 0x6E65_7477_6F72_6B00),
                weather: CALM,
                up: BTreeMap::new(),
                cut: BTreeMap::new(),
                links: Vec::new(),
                trace: Trace::default(),
            }),
            healed: tokio::sync::Notify::new(),
            start: Instant::now(),
        })
    }

    fn is_cut(&self, from: NodeId, to: NodeId) -> bool {
        self.state.lock().cut.contains_key(&(from, to))
    }

    fn cut(&self, from: NodeId, to: NodeId) {
        *self.state.lock().cut.entry((from, to)).or_default() += 1;
    }

    fn heal(&self, from: NodeId, to: NodeId) {
        let mut state = self.state.lock();
        if let Some(count) = state.cut.get_mut(&(from, to)) {
            *count -= 1;
            if *count == 0 {
                state.cut.remove(&(from, to));
            }
        }
        drop(state);
        self.healed.notify_waiters();
    }

    /// The node's process is gone: its connections break at once (its
    /// kernel resets them) and connecting to it is refused.
    fn crash(&self, node: NodeId) {
        let mut state = self.state.lock();
        state.up.remove(&node);
        for (a, b, switch) in &state.links {
            if *a == node || *b == node {
                switch.turn_off();
            }
        }
    }

    fn trace(&self) -> Trace {
        self.state.lock().trace
    }

    /// Connects `from` to `to`, whose transport serves the far end.
    fn connect(
        self: &Arc<Self>,
        from: NodeId,
        to: NodeId,
        server: Arc<Transport>,
        registry: Arc<Registry>,
    ) -> (LinkReader, LinkWriter) {
        let (client, client_far) = tokio::io::duplex(PIPE_BYTES);
        let (server_end, server_far) = tokio::io::duplex(PIPE_BYTES);
        let switch = Arc::new(Switch::default());
        {
            let mut state = self.state.lock();
            // A link whose carriers ended is only held here.
            state.links.retain(|(_, _, s)| Arc::strong_count(s) > 1);
            state.links.push((from, to, switch.clone()));
        }
        let (client_in, client_out) = tokio::io::split(client_far);
        let (server_in, server_out) = tokio::io::split(server_far);
        tokio::spawn(
            self.clone()
                .carry(from, to, client_in, server_out, switch.clone()),
        );
        tokio::spawn(self.clone().carry(to, from, server_in, client_out, switch));
        let (reader, writer) = tokio::io::split(server_end);
        tokio::spawn(server.serve_link(
            Box::new(reader),
            Box::new(writer),
            address(from),
            registry,
        ));
        let (reader, writer) = tokio::io::split(client);
        (Box::new(reader), Box::new(writer))
    }

    /// Carries one direction of a connection, frame by frame, until either
    /// end closes or the connection breaks.
    async fn carry(
        self: Arc<Self>,
        from: NodeId,
        to: NodeId,
        mut input: ReadHalf<DuplexStream>,
        mut output: WriteHalf<DuplexStream>,
        link: Arc<Switch>,
    ) {
        let (flight, mut landing) = mpsc::channel::<(Instant, Vec<u8>)>(FLIGHT_FRAMES);
        let net = self.clone();
        let send = async move {
            let mut last = Instant::now();
            while let Some(frame) = read_raw_frame(&mut input).await {
                let delay = {
                    let mut state = net.state.lock();
                    let weather = state.weather;
                    if state.rng.chance(weather.loss_per_million) {
                        state.trace.dropped += 1;
                        None
                    } else {
                        Some(state.rng.between(Duration::ZERO, weather.delay_max))
                    }
                };
                let Some(delay) = delay else { continue };
                last = last.max(Instant::now() + delay);
                if flight.send((last, frame)).await.is_err() {
                    return;
                }
            }
        };
        let deliver = async move {
            while let Some((at, frame)) = landing.recv().await {
                tokio::time::sleep_until(at).await;
                loop {
                    let healed = self.healed.notified();
                    tokio::pin!(healed);
                    healed.as_mut().enable();
                    if !self.is_cut(from, to) {
                        break;
                    }
                    healed.await;
                }
                let now = self.start.elapsed().as_micros() as u64;
                if PRINT_FRAMES.with(|p| *p) {
                    println!(
                        "{:>10.6} s  {from} -> {to}  {} bytes",
                        now as f64 / 1e6,
                        frame.len()
                    );
                }
                self.state
                    .lock()
                    .trace
                    .add([now, from, to, frame.len() as u64]);
                if output.write_all(&frame).await.is_err() {
                    return;
                }
            }
        };
        tokio::select! {
            biased;
            _ = link.turned_off() => {}
            _ = async { tokio::join!(send, deliver) } => {}
        }
    }
}

/// One whole frame of the transport (length prefix included), or `None`
/// once the stream ends or carries something too big.
async fn read_raw_frame(input: &mut ReadHalf<DuplexStream>) -> Option<Vec<u8>> {
    let mut len = [0u8; 4];
    input.read_exact(&mut len).await.ok()?;
    let body = u32::from_be_bytes(len) as usize;
    if body > FRAME_BYTES_MAX {
        return None;
    }
    let mut frame = vec![0u8; 4 + body];
    frame[..4].copy_from_slice(&len);
    input.read_exact(&mut frame[4..]).await.ok()?;
    Some(frame)
}

/// A node's way into the simulated network.
struct SimDialer {
    net: Arc<Net>,
    from: NodeId,
}

impl Dialer for SimDialer {
    fn dial(&self, addr: &str) -> BoxFuture<'static, std::io::Result<(LinkReader, LinkWriter)>> {
        let net = self.net.clone();
        let from = self.from;
        let to = addr
            .strip_prefix("node-")
            .and_then(|n| n.parse::<NodeId>().ok());
        Box::pin(async move {
            let to = to.ok_or_else(|| std::io::Error::other("not a simulated node"))?;
            let reach = {
                let state = net.state.lock();
                if state.cut.contains_key(&(from, to)) || state.cut.contains_key(&(to, from)) {
                    None
                } else {
                    Some(state.up.get(&to).cloned())
                }
            };
            match reach {
                None => {
                    tokio::time::sleep(CONNECT_TIMEOUT).await;
                    Err(std::io::ErrorKind::TimedOut.into())
                }
                Some(None) => Err(std::io::ErrorKind::ConnectionRefused.into()),
                Some(Some((server, registry))) => Ok(net.connect(from, to, server, registry)),
            }
        })
    }
}

fn group_id() -> GroupId {
    GroupId::Partition {
        topic_id: uuid::Uuid::nil(),
        partition: 0,
    }
}

fn voters() -> BTreeMap<NodeId, BasicNode> {
    NODES
        .iter()
        .map(|&n| (n, BasicNode::new(address(n))))
        .collect()
}

/// Partition timers as a broker runs them, with purging kept short so that
/// the runs purge the Raft log too.
fn timers() -> GroupTimers {
    GroupTimers {
        purge_keep_entries: 200,
        purge_step_entries: 50,
        ..GroupTimers::partitions()
    }
}

struct Node {
    group: Arc<PartitionGroup>,
    log: Arc<Mutex<PartitionLog>>,
    stop: watch::Sender<bool>,
    driver: tokio::task::JoinHandle<()>,
}

/// The running nodes' groups and logs, for the producers and the checker.
type Running = Arc<Mutex<BTreeMap<NodeId, (Arc<PartitionGroup>, Arc<Mutex<PartitionLog>>)>>>;

struct Cluster {
    net: Arc<Net>,
    dir: tempfile::TempDir,
    nodes: BTreeMap<NodeId, Node>,
    running: Running,
}

impl Cluster {
    fn dir(&self, node: NodeId) -> PathBuf {
        self.dir.path().join(format!("node-{node}"))
    }

    async fn start(&mut self, node: NodeId) -> Result<(), String> {
        if self.nodes.contains_key(&node) {
            return Ok(());
        }
        let started = start_node(&self.net, node, &self.dir(node)).await?;
        // Raft's metrics start blank (term 0) until its core has loaded the
        // stored state: the checker looks at the node after that.
        let mut metrics = started.group.raft.metrics();
        let _ = tokio::time::timeout(Duration::from_secs(1), metrics.changed()).await;
        self.running
            .lock()
            .insert(node, (started.group.clone(), started.log.clone()));
        self.nodes.insert(node, started);
        Ok(())
    }

    /// kill -9: the network forgets the node first, so nothing it does
    /// while its Raft stops reaches anyone.
    async fn crash(&mut self, node: NodeId) {
        self.net.crash(node);
        self.running.lock().remove(&node);
        if let Some(stopped) = self.nodes.remove(&node) {
            stopped.stop.send_replace(true);
            stopped.group.stop().await;
            let _ = stopped.driver.await;
        }
    }
}

async fn start_node(net: &Arc<Net>, node: NodeId, dir: &Path) -> Result<Node, String> {
    let (stop, stopped) = watch::channel(false);
    let transport = Transport::with_dialer(
        TransportConfig::new(node, Some("sim".into())),
        stopped.clone(),
        Arc::new(SimDialer {
            net: net.clone(),
            from: node,
        }),
    );
    let registry = Arc::new(Registry::default());
    net.state
        .lock()
        .up
        .insert(node, (transport.clone(), registry.clone()));
    for peer in NODES {
        transport.add_peer(peer, address(peer));
    }
    let log = PartitionLog::open(&dir.join("t-0"), LogConfig::default())
        .map_err(|e| format!("node {node}: opening the log: {e}"))?;
    let log = Arc::new(Mutex::new(log));
    let group = PartitionGroup::start(
        node,
        group_id(),
        voters(),
        None,
        log.clone(),
        Arc::new(watch::Sender::new(0)),
        Durability::Interval,
        &timers(),
        transport.clone(),
        registry,
        stopped,
    )
    .await
    .map_err(|e| format!("node {node}: starting the group: {e:#}"))?;
    let group = Arc::new(group);
    let driver = tokio::spawn(drive(group.clone(), transport, stop.subscribe()));
    Ok(Node {
        group,
        log,
        stop,
        driver,
    })
}

/// The node-level election driver and heartbeat report, as
/// `ReplicaManager::drive_elections` runs them.
async fn drive(
    group: Arc<PartitionGroup>,
    transport: Arc<Transport>,
    mut stop: watch::Receiver<bool>,
) {
    let reporting = transport.clone();
    let reachable = move |peer: NodeId| transport.is_reachable(peer);
    let mut tick = tokio::time::interval(crate::replica::ELECTION_CHECK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => return,
            _ = tick.tick() => {}
        }
        let led = group.led(LAG_MAX, &reachable);
        reporting.leaders().set_own(led.into_iter().collect());
        group.check_election(&reachable);
        group.maybe_purge();
        group.maybe_tell_commit();
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    Crash(NodeId),
    Restart(NodeId),
    /// Cut one direction.
    Cut(NodeId, NodeId),
    Heal(NodeId, NodeId),
    Weather(u64, Duration),
}

/// The faults of a seed, in time order: crashes (one node, now and then
/// two), partitions (a node isolated both ways, or one direction cut),
/// and spells of loss and delay, each healing within a few seconds; all
/// heal by [`FAULTS_UNTIL`].
fn schedule(seed: u64) -> Vec<(Duration, Fault)> {
    let mut rng = Rng::new(seed);
    let mut faults = Vec::new();
    let mut at = rng.between(Duration::from_millis(300), Duration::from_secs(2));
    let last = FAULTS_UNTIL - Duration::from_millis(500);
    while at < last {
        let lasting = rng.between(Duration::from_millis(100), Duration::from_secs(5));
        let end = (at + lasting).min(last);
        match rng.below(10) {
            0..=2 => {
                let node = rng.node();
                faults.push((at, Fault::Crash(node)));
                faults.push((end, Fault::Restart(node)));
            }
            3 => {
                // Two at once: the group has no majority for a while.
                let spared = rng.node();
                for node in NODES.into_iter().filter(|&n| n != spared) {
                    faults.push((at, Fault::Crash(node)));
                    faults.push((end, Fault::Restart(node)));
                }
            }
            4..=6 => {
                let node = rng.node();
                for other in NODES.into_iter().filter(|&n| n != node) {
                    for (a, b) in [(node, other), (other, node)] {
                        faults.push((at, Fault::Cut(a, b)));
                        faults.push((end, Fault::Heal(a, b)));
                    }
                }
            }
            7 => {
                let a = rng.node();
                let b = NODES[(NODES.iter().position(|&n| n == a).unwrap_or(0)
                    + 1
                    + rng.below(2) as usize)
                    % NODES.len()];
                faults.push((at, Fault::Cut(a, b)));
                faults.push((end, Fault::Heal(a, b)));
            }
            _ => {
                let loss = rng.below(50_000);
                let delay = rng.between(Duration::from_millis(1), Duration::from_millis(300));
                faults.push((at, Fault::Weather(loss, delay)));
                faults.push((end, Fault::Weather(CALM.loss_per_million, CALM.delay_max)));
            }
        }
        at += rng.between(Duration::from_millis(100), Duration::from_secs(2));
    }
    // A stable sort: what happens at one instant keeps its drawn order.
    faults.sort_by_key(|(at, _)| *at);
    faults
}

/// A batch read back from a replica's committed prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Held {
    last_offset: i64,
    id: i64,
    epoch: i32,
}

#[derive(Clone, Copy, Debug)]
struct Acked {
    id: i64,
    base_offset: i64,
    last_offset: i64,
}

/// What the invariants saw; violations are what failed.
#[derive(Default)]
struct Checker {
    terms: BTreeMap<NodeId, u64>,
    leaders: BTreeMap<u64, NodeId>,
    /// Raft index -> the term of the entry applied there.
    applied: BTreeMap<u64, u64>,
    /// Base offset -> the committed batch there, as first read anywhere.
    committed: BTreeMap<i64, Held>,
    /// Per node, the offset below which its committed prefix was read.
    read_to: BTreeMap<NodeId, i64>,
    /// The highest high watermark any replica showed at an earlier sample.
    committed_end: i64,

    violations: Vec<String>,
}

impl Checker {
    fn violation(&mut self, at: Duration, what: String) {
        self.note(format!("at {:.3} s: {what}", at.as_secs_f64()));
    }

    /// A violation found in the whole history, after the run.
    fn violation_after(&mut self, what: String) {
        self.note(format!("after the run: {what}"));
    }

    fn note(&mut self, violation: String) {
        if self.violations.len() < 20 {
            self.violations.push(violation);
        }
    }

    fn raft(
        &mut self,
        at: Duration,
        node: NodeId,
        metrics: &openraft::RaftMetrics<NodeId, BasicNode>,
    ) {
        let term = metrics.current_term;
        let before = self.terms.insert(node, term).unwrap_or(0);
        if term < before {
            self.violation(
                at,
                format!("node {node}'s term went from {before} down to {term}"),
            );
        }
        if metrics.state == openraft::ServerState::Leader {
            let leader = *self.leaders.entry(term).or_insert(node);
            if leader != node {
                self.violation(
                    at,
                    format!("nodes {leader} and {node} both led term {term}"),
                );
            }
        }
        if let Some(applied) = metrics.last_applied {
            let term_there = *self
                .applied
                .entry(applied.index)
                .or_insert(applied.leader_id.term);
            if term_there != applied.leader_id.term {
                self.violation(
                    at,
                    format!(
                        "node {node} applied an entry of term {} at index {}, another node one of term {term_there}",
                        applied.leader_id.term, applied.index
                    ),
                );
            }
        }
    }

    /// Records `batches` (base offset, held) read from `node`'s committed
    /// prefix, each against what any replica held there before.
    fn committed(&mut self, at: Duration, node: NodeId, batches: &[(i64, Held)]) {
        for &(base, held) in batches {
            let first = *self.committed.entry(base).or_insert(held);
            if first != held {
                self.violation(
                    at,
                    format!("node {node} holds {held:?} at committed offset {base}, before it was {first:?}"),
                );
            }
        }
    }

    /// The committed prefix as a whole: contiguous, epochs never down.
    fn history(&mut self) {
        let mut previous: Option<(i64, Held)> = None;
        let mut found = Vec::new();
        for (&base, &held) in &self.committed {
            if let Some((p_base, p)) = previous {
                if base != p.last_offset + 1 {
                    found.push(format!(
                        "a gap or overlap: batch at {p_base} ends at {}, the next starts at {base}",
                        p.last_offset
                    ));
                }
                if held.epoch < p.epoch {
                    found.push(format!(
                        "leader epoch {} at offset {base} after epoch {} at {p_base}",
                        held.epoch, p.epoch
                    ));
                }
            }
            previous = Some((base, held));
        }
        for f in found {
            self.violation_after(f);
        }
    }

    /// Every acknowledged produce at its offsets, and no id twice.
    fn acknowledged(&mut self, acked: &[Acked]) -> (usize, usize) {
        let mut ids: BTreeMap<i64, usize> = BTreeMap::new();
        for held in self.committed.values() {
            *ids.entry(held.id).or_default() += 1;
        }
        let duplicated = ids.values().filter(|&&n| n > 1).count();
        let mut lost = 0;
        let mut found = Vec::new();
        for a in acked {
            match self.committed.get(&a.base_offset) {
                Some(h) if h.id == a.id && h.last_offset == a.last_offset => {}
                other => {
                    lost += 1;
                    found.push(format!(
                        "acknowledged {a:?}, the committed log holds {other:?} there"
                    ));
                }
            }
        }
        if duplicated > 0 {
            found.push(format!("{duplicated} batch ids committed more than once"));
        }
        for f in found {
            self.violation_after(f);
        }
        (lost, duplicated)
    }
}

/// `log`'s committed batches from `from` to its high watermark.
fn read_committed(
    log: &Mutex<PartitionLog>,
    from: i64,
    high_watermark: i64,
) -> Result<Vec<(i64, Held)>, String> {
    let mut out = Vec::new();
    let mut next = from;
    while next < high_watermark {
        let read = log
            .lock()
            .read(next, 1 << 20, high_watermark, true)
            .map_err(|e| format!("reading at {next}: {e}"))?;
        if read.records.is_empty() {
            return Err(format!(
                "nothing readable at {next} below the high watermark {high_watermark}"
            ));
        }
        for batch in Batches::new(&read.records) {
            let (_, batch) = batch.map_err(|e| format!("a bad batch near {next}: {e}"))?;
            let h = batch.header();
            out.push((
                h.base_offset(),
                Held {
                    last_offset: h.last_offset(),
                    id: h.base_timestamp() - TIMESTAMP_BASE,
                    epoch: h.partition_leader_epoch(),
                },
            ));
            next = h.last_offset() + 1;
        }
    }
    Ok(out)
}

fn sample(checker: &mut Checker, running: &Running, start: Instant) {
    let at = start.elapsed();
    let nodes: Vec<_> = running
        .lock()
        .iter()
        .map(|(&n, (g, l))| (n, g.clone(), l.clone()))
        .collect();
    // A leader in the latest term that settled in it (what Fetch and
    // ListOffsets wait for) knows how far the group committed: its high
    // watermark is never below one a replica showed before. (A leader of
    // an older term cut off from the others may lag: it has no lease.)
    let seen = checker.committed_end;
    let latest = checker.terms.values().copied().max().unwrap_or(0);
    for (node, group, _) in &nodes {
        let high_watermark = *group.high_watermark().borrow();
        let term = group.raft.metrics().borrow().current_term;
        if term >= latest && group.leads_settled() && high_watermark < seen {
            checker.violation(
                at,
                format!("node {node} leads, settled, with high watermark {high_watermark} below {seen}, committed before"),
            );
        }
        checker.committed_end = checker.committed_end.max(high_watermark);
    }
    for (node, group, log) in nodes {
        let metrics = group.raft.metrics().borrow().clone();
        checker.raft(at, node, &metrics);
        let high_watermark = *group.high_watermark().borrow();
        let from = checker.read_to.get(&node).copied().unwrap_or(0);
        match read_committed(&log, from, high_watermark) {
            Ok(batches) => {
                checker.committed(at, node, &batches);
                checker.read_to.insert(node, high_watermark.max(from));
            }
            Err(e) => checker.violation(at, format!("node {node}: {e}")),
        }
    }
}

/// Writes batches through whichever node leads until `until`.
async fn produce(
    running: Running,
    ids: Arc<AtomicI64>,
    acked: Arc<Mutex<Vec<Acked>>>,
    first: NodeId,
    until: Instant,
) {
    let mut target = first;
    let next_node = |n: NodeId| {
        NODES[NODES
            .iter()
            .position(|&x| x == n)
            .map_or(0, |i| (i + 1) % NODES.len())]
    };
    while Instant::now() < until {
        let group = running.lock().get(&target).map(|(g, _)| g.clone());
        if let Some(group) = group {
            let id = ids.fetch_add(1, Ordering::Relaxed);
            let timestamp = TIMESTAMP_BASE + id;
            let batch = TestBatch::new((id % 3 + 1) as i32)
                .timestamp(timestamp)
                .encode();
            match tokio::time::timeout(PRODUCE_WAIT, group.produce(Bytes::from(batch), timestamp))
                .await
            {
                Ok(Ok(Ok(outcome))) => acked.lock().push(Acked {
                    id,
                    base_offset: outcome.base_offset,
                    last_offset: outcome.last_offset,
                }),
                Ok(Err(ProduceError::NotLeader(Some(leader)))) if leader != target => {
                    target = leader
                }
                _ => target = next_node(target),
            }
        } else {
            target = next_node(target);
        }
        tokio::time::sleep(PRODUCE_GAP).await;
    }
}

/// What one seed's run did.
#[derive(Debug)]
struct Outcome {
    trace: Trace,
    faults: usize,
    acked: usize,
    committed_batches: usize,
    lost: usize,
    duplicated: usize,
    highest_term: u64,
    violations: Vec<String>,
}

/// Runs `seed` on a fresh current-thread runtime with a paused clock, on a
/// thread of its own: a run that spins (simulated time stands still while
/// a task never waits) fails after [`WALL_LIMIT`] of real time.
fn run(seed: u64) -> Outcome {
    let failed = |why: String| Outcome {
        trace: Trace::default(),
        faults: 0,
        acked: 0,
        committed_batches: 0,
        lost: 0,
        duplicated: 0,
        highest_term: 0,
        violations: vec![why],
    };
    let (done, outcome) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name(format!("sim-seed-{seed}"))
        .spawn(move || {
            seed_jitter(seed);
            let outcome = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .start_paused(true)
                .build()
            {
                Ok(runtime) => runtime.block_on(simulate(seed)),
                Err(e) => Err(format!("no runtime: {e}")),
            };
            let _ = done.send(outcome);
        });
    if let Err(e) = spawned {
        return failed(format!("no thread: {e}"));
    }
    match outcome.recv_timeout(WALL_LIMIT) {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(e)) => failed(e),
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => failed(format!(
            "the run spun for {WALL_LIMIT:?} of real time without finishing (a task that never waits)"
        )),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            failed("the run panicked (see its message above)".into())
        }
    }
}

async fn simulate(seed: u64) -> Result<Outcome, String> {
    let net = Net::new(seed);
    let start = net.start;
    let mut cluster = Cluster {
        net: net.clone(),
        dir: tempfile::tempdir().map_err(|e| e.to_string())?,
        nodes: BTreeMap::new(),
        running: Arc::default(),
    };
    for node in NODES {
        cluster.start(node).await?;
    }
    let checker = Arc::new(Mutex::new(Checker::default()));
    let (sampling_stop, mut sampling_stopped) = watch::channel(false);
    let sampler = {
        let checker = checker.clone();
        let running = cluster.running.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SAMPLE_EVERY);
            loop {
                tokio::select! {
                    biased;
                    _ = sampling_stopped.wait_for(|s| *s) => return,
                    _ = tick.tick() => sample(&mut checker.lock(), &running, start),
                }
            }
        })
    };
    let acked = Arc::new(Mutex::new(Vec::new()));
    let ids = Arc::new(AtomicI64::new(0));
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|i| {
            tokio::spawn(produce(
                cluster.running.clone(),
                ids.clone(),
                acked.clone(),
                NODES[i % NODES.len()],
                start + FAULTS_UNTIL,
            ))
        })
        .collect();
    let faults = schedule(seed);
    for &(at, fault) in &faults {
        tokio::time::sleep_until(start + at).await;
        match fault {
            Fault::Crash(node) => cluster.crash(node).await,
            Fault::Restart(node) => cluster.start(node).await?,
            Fault::Cut(a, b) => net.cut(a, b),
            Fault::Heal(a, b) => net.heal(a, b),
            Fault::Weather(loss, delay) => {
                net.state.lock().weather = Weather {
                    loss_per_million: loss,
                    delay_max: delay,
                }
            }
        }
    }
    tokio::time::sleep_until(start + FAULTS_UNTIL).await;
    for node in NODES {
        cluster.start(node).await?;
    }
    for producer in producers {
        let _ = producer.await;
    }
    let converged = converge(&cluster.running, start + FAULTS_UNTIL + SETTLE).await;
    sampling_stop.send_replace(true);
    let _ = sampler.await;
    sample(&mut checker.lock(), &cluster.running, start);
    let mut checker = std::mem::take(&mut *checker.lock());
    if let Err(e) = converged {
        checker.violation(start.elapsed(), e);
    }
    // Every replica's whole committed prefix, read again from offset 0.
    let ends: Vec<_> = cluster
        .running
        .lock()
        .iter()
        .map(|(&n, (g, l))| (n, *g.high_watermark().borrow(), l.clone()))
        .collect();
    for (node, high_watermark, log) in ends {
        match read_committed(&log, 0, high_watermark) {
            Ok(batches) => {
                let whole: BTreeMap<i64, Held> = batches.into_iter().collect();
                if whole != checker.committed {
                    let at = start.elapsed();
                    checker.violation(at, format!("node {node}'s committed log ({} batches) differs from the history ({} batches)", whole.len(), checker.committed.len()));
                }
            }
            Err(e) => checker.violation(start.elapsed(), format!("node {node}: {e}")),
        }
    }
    checker.history();
    let acked = acked.lock().clone();
    let (lost, duplicated) = checker.acknowledged(&acked);
    for node in NODES {
        cluster.crash(node).await;
    }
    Ok(Outcome {
        trace: net.trace(),
        faults: faults.len(),
        acked: acked.len(),
        committed_batches: checker.committed.len(),
        lost,
        duplicated,
        highest_term: checker.terms.values().copied().max().unwrap_or(0),
        violations: checker.violations,
    })
}

/// Waits until every node has the same committed end, equal to its log end,
/// with a leader known to all.
async fn converge(running: &Running, deadline: Instant) -> Result<(), String> {
    loop {
        let state: Vec<_> = running
            .lock()
            .iter()
            .map(|(&n, (g, l))| {
                (
                    n,
                    *g.high_watermark().borrow(),
                    l.lock().log_end_offset(),
                    g.leader().0,
                )
            })
            .collect();
        let settled = state.len() == NODES.len()
            && state.iter().all(|&(_, hw, end, leader)| {
                hw == state[0].1 && hw == end && leader.is_some() && leader == state[0].3
            });
        if settled {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("the group did not converge within {SETTLE:?} of the faults' end: (node, high watermark, log end, leader) {state:?}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn replay_hint(seed: u64) -> String {
    format!("replay: FJORD_SIM_SEED={seed} cargo test --lib raft::partition_group::sim::replay -- --ignored --nocapture")
}

/// Runs `seed`, panicking with its violations and how to replay it.
fn check(seed: u64) -> Outcome {
    let outcome = run(seed);
    assert!(
        outcome.violations.is_empty() && outcome.lost == 0 && outcome.duplicated == 0,
        "seed {seed} failed ({} faults, {} acknowledged):\n  {}\n{}",
        outcome.faults,
        outcome.acked,
        outcome.violations.join("\n  "),
        replay_hint(seed)
    );
    outcome
}

#[test]
fn fixed_seeds_keep_every_invariant() {
    let mut acked = 0;
    let mut elections = 0;
    for seed in 0..SEEDS {
        let outcome = check(seed);
        // The faults did something: the group wrote and re-elected.
        assert!(outcome.acked > 50, "seed {seed}: {outcome:?}");
        acked += outcome.acked;
        elections += outcome.highest_term;
    }
    println!("{SEEDS} seeds: {acked} batches acknowledged, terms up to {elections} summed");
}

/// Seeds of the 1,000-seed sweep that never converged before a leader told
/// a follower the commit index as soon as their link came up
/// (`maybe_tell_commit`): a follower's high watermark stayed behind the
/// leader's for good. They pass with it and fail without it today; a change
/// to the replication code reshuffles every seed's run, so this guards the
/// fix only as long as they still meet that case (the sweep finds others).
const ONCE_NEVER_CONVERGED: [u64; 4] = [740, 840, 842, 992];

#[test]
fn seeds_that_once_never_converged_converge() {
    for seed in ONCE_NEVER_CONVERGED {
        let outcome = check(seed);
        assert!(outcome.acked > 50, "seed {seed}: {outcome:?}");
    }
}

#[test]
fn a_seed_replays_exactly() {
    let first = run(7);
    let second = run(7);
    assert!(first.trace.frames > 1000, "{first:?}");
    assert_eq!(first.trace, second.trace);
    assert_eq!(first.acked, second.acked);
}

/// `FJORD_SIM_SEEDS=FROM..TO` (default `0..1000`): every seed, then the
/// failing ones listed.
#[test]
#[ignore = "the long sweep: FJORD_SIM_SEEDS=0..1000 cargo test --release --lib raft::partition_group::sim::sweep -- --ignored --nocapture"]
fn sweep() {
    let range = std::env::var("FJORD_SIM_SEEDS").unwrap_or_else(|_| "0..1000".into());
    let (from, to) = range
        .split_once("..")
        .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)))
        .expect("FJORD_SIM_SEEDS is FROM..TO");
    let mut failed = Vec::new();
    for seed in from..to {
        let outcome = run(seed);
        let ok = outcome.violations.is_empty() && outcome.lost == 0 && outcome.duplicated == 0;
        println!(
            "seed {seed}: {} faults, {} acknowledged, {} committed batches, highest term {}, {} frames ({} dropped), trace {:016x}{}",
            outcome.faults,
            outcome.acked,
            outcome.committed_batches,
            outcome.highest_term,
            outcome.trace.frames,
            outcome.trace.dropped,
            outcome.trace.hash,
            if ok { String::new() } else { format!(" FAILED:\n  {}", outcome.violations.join("\n  ")) }
        );
        if !ok {
            failed.push(seed);
        }
    }
    assert!(
        failed.is_empty(),
        "failing seeds: {failed:?}\n{}",
        replay_hint(failed[0])
    );
}

/// `FJORD_SIM_SEED=N`: runs one seed, printing its faults.
#[test]
#[ignore = "replays one seed: FJORD_SIM_SEED=N cargo test --lib raft::partition_group::sim::replay -- --ignored --nocapture"]
fn replay() {
    let seed: u64 = std::env::var("FJORD_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .expect("FJORD_SIM_SEED=N");
    for (at, fault) in schedule(seed) {
        println!("{:>8.3} s  {fault:?}", at.as_secs_f64());
    }
    println!("{:?}", check(seed));
}

#[test]
fn the_checker_catches_what_it_looks_for() {
    let held = |last_offset, id, epoch| Held {
        last_offset,
        id,
        epoch,
    };
    let at = Duration::ZERO;
    let mut c = Checker::default();
    c.committed(at, 1, &[(0, held(1, 10, 1)), (2, held(2, 11, 1))]);
    assert!(c.violations.is_empty());
    // Another replica holds another batch at a committed offset.
    c.committed(at, 2, &[(2, held(2, 12, 1))]);
    assert_eq!(c.violations.len(), 1, "{:?}", c.violations);
    // An epoch going down, and an id twice.
    let mut c = Checker::default();
    c.committed(at, 1, &[(0, held(0, 10, 2)), (1, held(1, 10, 1))]);
    c.history();
    assert_eq!(c.violations.len(), 1, "{:?}", c.violations);
    let (lost, duplicated) = c.acknowledged(&[Acked {
        id: 11,
        base_offset: 2,
        last_offset: 2,
    }]);
    assert_eq!((lost, duplicated), (1, 1));
    // Terms going down, two leaders in a term.
    let mut c = Checker::default();
    let mut m = openraft::RaftMetrics::new_initial(1);
    m.current_term = 3;
    m.state = openraft::ServerState::Leader;
    c.raft(at, 1, &m);
    m.current_term = 2;
    c.raft(at, 1, &m);
    m.id = 2;
    m.current_term = 3;
    c.raft(at, 2, &m);
    assert_eq!(c.violations.len(), 2, "{:?}", c.violations);
}
