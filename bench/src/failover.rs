//! `fjord-bench failover`: how long a kill -9 of a partition leader keeps a
//! stock librdkafka producer from getting acknowledgements, on a local
//! cluster of `fjord` processes this command starts and stops itself.
//!
//! Node `n` listens for clients on `--base-port + n - 1` and for peers on
//! `--base-port + 100 + n - 1`, with its data in `DIR/node-n`. A producer with
//! librdkafka's defaults (plus `enable.idempotence`, on by default here)
//! writes uniquely numbered records at `--rate` to a one-partition topic
//! with replication factor 3. Each round waits until all replicas are in
//! sync, kills -9 the partition's leader (found from Metadata), measures the
//! time from the kill to the first acknowledgement of a record sent after
//! it, and restarts the killed node. At the end every record is read back:
//! an acknowledged record missing, or any record read twice, is counted.
//! Loopback only; every wait is bounded.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use clap::Args;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde::Serialize;

use crate::clock::now_us;
use crate::kafka_rpc;

const TOPIC: &str = "failover";
const READY_WAIT_MAX: Duration = Duration::from_secs(60);
const CONVERGE_WAIT_MAX: Duration = Duration::from_secs(60);
const ACK_WAIT_MAX: Duration = Duration::from_secs(60);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const CONTROLLER_PORT_OFFSET: u16 = 100;

#[derive(Args, Debug, Clone)]
pub struct FailoverArgs {
    /// The fjord binary to start the nodes from.
    #[arg(long, default_value = "target/release/fjord")]
    pub fjord_bin: PathBuf,
    /// Nodes in the cluster (the topic's replication factor is min(3, nodes)).
    #[arg(long, default_value_t = 3)]
    pub nodes: u16,
    /// Leader kills to measure.
    #[arg(long, default_value_t = 10)]
    pub kills: u32,
    /// Records per second the producer sends.
    #[arg(long, default_value_t = 500)]
    pub rate: u32,
    /// Client port of node 1 (node n: BASE+n-1; peers BASE+100+n-1).
    #[arg(long, default_value_t = 19092)]
    pub base_port: u16,
    /// Data directories (DIR/node-N) and logs; default: a new temporary one.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Turn librdkafka's idempotent producer off (then duplicates may occur).
    #[arg(long)]
    pub no_idempotence: bool,
    /// Seconds to let a restarted node run before the next kill (0: kill
    /// as soon as Metadata shows every replica in sync again; a node that
    /// just came back lets the others win elections for its first 5 s).
    #[arg(long, default_value_t = 6.0)]
    pub settle_sec: f64,
    /// Broker property for every node, as key=value (repeatable).
    #[arg(long = "override", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Where to write the JSON result.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// librdkafka debug contexts for the producer (e.g. `topic,metadata,msg`),
    /// its log lines printed to stderr with the wall clock: to see what the
    /// client does during a failover.
    #[arg(long)]
    pub client_debug: Option<String>,
}

/// The producer's context: prints librdkafka's log lines to stderr, stamped
/// with the wall clock like the kill lines.
struct Logging;

impl ClientContext for Logging {
    fn log(&self, _level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        eprintln!("{} rdkafka {fac}: {log_message}", wall_clock());
    }
}

#[derive(Serialize, Debug)]
pub struct FailoverReport {
    pub kills: Vec<KillResult>,
    pub unavailable_ms_median: f64,
    pub unavailable_ms_max: f64,
    pub sent: u64,
    pub acknowledged: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub idempotent: bool,
    pub rate: u32,
    pub settle_sec: f64,
}

#[derive(Serialize, Debug, Clone)]
pub struct KillResult {
    pub node: i32,
    /// From the kill to the first acknowledgement of a record sent after it.
    pub unavailable_ms: f64,
    /// From the kill to the first Metadata answer naming another leader.
    pub new_leader_ms: Option<f64>,
}

struct Node {
    id: u16,
    port: u16,
    command: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
}

impl Node {
    fn spawn(&mut self, bin: &PathBuf) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let err = log.try_clone()?;
        let child = Command::new(bin)
            .args(&self.command)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err))
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        self.child = Some(child);
        Ok(())
    }

    fn wait_ready(&mut self) -> Result<()> {
        let started = Instant::now();
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.port));
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    bail!(
                        "node {} exited: {status}; see {}",
                        self.id,
                        self.log.display()
                    );
                }
            }
            if std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok() {
                return Ok(());
            }
            if started.elapsed() > READY_WAIT_MAX {
                bail!("node {} does not serve after {READY_WAIT_MAX:?}", self.id);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill9(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().context("kill -9")?;
            child.wait().context("reaping")?;
        }
        Ok(())
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on our own child's pid, not yet reaped.
            unsafe {
                libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
            }
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(30) {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Stops every node when dropped, so no process outlives the command.
struct Cluster {
    nodes: Vec<Node>,
    bin: PathBuf,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in self.nodes.iter_mut().rev() {
            node.stop();
        }
    }
}

fn client(bootstrap: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap);
    c
}

/// Partition 0's leader and in-sync replicas, as `bootstrap` sees them.
fn leader_and_isr(metadata: &BaseConsumer) -> Option<(i32, usize)> {
    let md = metadata.fetch_metadata(Some(TOPIC), REQUEST_TIMEOUT).ok()?;
    let topic = md.topics().iter().find(|t| t.name() == TOPIC)?;
    let p = topic.partitions().iter().find(|p| p.id() == 0)?;
    (p.leader() >= 1 && p.error().is_none()).then(|| (p.leader(), p.isr().len()))
}

/// Seconds since the Unix epoch, to match the nodes' log lines.
pub fn wall_clock() -> String {
    let ms = crate::clock::unix_us() / 1000;
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

async fn futures_join(handles: Vec<tokio::task::JoinHandle<()>>) {
    for handle in handles {
        let _ = handle.await;
    }
}

pub async fn run(args: FailoverArgs) -> Result<FailoverReport> {
    let temp;
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => {
            temp = std::env::temp_dir().join(format!("fjord-failover-{}", uuid::Uuid::new_v4()));
            temp
        }
    };
    std::fs::create_dir_all(&dir)?;
    let controller = |id: u16| args.base_port + CONTROLLER_PORT_OFFSET + id - 1;
    let voters = (1..=args.nodes)
        .map(|id| format!("{id}@127.0.0.1:{}", controller(id)))
        .collect::<Vec<_>>()
        .join(",");
    let mut cluster = Cluster {
        nodes: Vec::new(),
        bin: args.fjord_bin.clone(),
    };
    for id in 1..=args.nodes {
        let port = args.base_port + id - 1;
        let mut command = vec![
            "serve".to_string(),
            "--node-id".into(),
            id.to_string(),
            "--log-dirs".into(),
            dir.join(format!("node-{id}")).display().to_string(),
            "--listeners".into(),
            format!(
                "PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{}",
                controller(id)
            ),
            "--override".into(),
            format!("controller.quorum.voters={voters}"),
        ];
        for o in &args.overrides {
            command.push("--override".into());
            command.push(o.clone());
        }
        let mut node = Node {
            id,
            port,
            command,
            log: dir.join(format!("node-{id}.log")),
            child: None,
        };
        node.spawn(&cluster.bin)?;
        cluster.nodes.push(node);
    }
    for node in &mut cluster.nodes {
        node.wait_ready()?;
    }
    let bootstrap = cluster
        .nodes
        .iter()
        .map(|n| format!("127.0.0.1:{}", n.port))
        .collect::<Vec<_>>()
        .join(",");
    println!(
        "cluster of {} up: {bootstrap} (data in {})",
        args.nodes,
        dir.display()
    );

    let replication = i32::from(args.nodes.min(3));
    let admin: AdminClient<DefaultClientContext> = client(&bootstrap).create()?;
    let created = admin
        .create_topics(
            &[NewTopic::new(
                TOPIC,
                1,
                TopicReplication::Fixed(replication),
            )],
            &AdminOptions::new().operation_timeout(Some(REQUEST_TIMEOUT)),
        )
        .await?;
    if let Some(Err((_, code))) = created.into_iter().next() {
        bail!("CreateTopics: {code:?}");
    }
    let metadata: BaseConsumer = client(&bootstrap).create()?;

    // The producer: librdkafka's defaults, records numbered from 0.
    let mut config = client(&bootstrap);
    config.set("enable.idempotence", (!args.no_idempotence).to_string());
    if let Some(contexts) = &args.client_debug {
        config.set("debug", contexts);
        config.set_log_level(rdkafka::config::RDKafkaLogLevel::Debug);
    }
    let producer: FutureProducer<Logging> = config.create_with_context(Logging)?;
    let acks: Arc<Mutex<BTreeMap<u64, (u64, u64)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
    // The highest offset any acknowledgement named: the read-back must reach it.
    let last_acked = Arc::new(std::sync::atomic::AtomicI64::new(-1));
    let sending = {
        let (acks, stop, sent, producer, last_acked) = (
            acks.clone(),
            stop.clone(),
            sent.clone(),
            producer.clone(),
            last_acked.clone(),
        );
        let every = Duration::from_secs_f64(1.0 / f64::from(args.rate.max(1)));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut id = 0u64;
            let mut deliveries = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let value = format!("failover-{id}");
                let sent_us = now_us();
                let delivery = producer.send_result(
                    FutureRecord::<(), _>::to(TOPIC)
                        .partition(0)
                        .payload(&value),
                );
                let Ok(delivery) = delivery else {
                    // The local queue is full: skip this tick.
                    continue;
                };
                sent.fetch_add(1, Ordering::Relaxed);
                let acks = acks.clone();
                let last_acked = last_acked.clone();
                deliveries.push(tokio::spawn(async move {
                    if let Ok(Ok(delivered)) = delivery.await {
                        acks.lock().expect("acks").insert(id, (sent_us, now_us()));
                        last_acked.fetch_max(delivered.offset, Ordering::Relaxed);
                    }
                }));
                id += 1;
            }
            deliveries
        })
    };

    let mut kills = Vec::new();
    let mut kill_times = Vec::new();
    for round in 0..args.kills {
        // Healthy first: a leader, every replica in sync.
        let started = Instant::now();
        let leader = loop {
            if let Some((leader, isr)) = leader_and_isr(&metadata) {
                if isr == replication as usize {
                    break leader;
                }
            }
            if started.elapsed() > CONVERGE_WAIT_MAX {
                bail!("round {round}: partition 0 not fully in sync after {CONVERGE_WAIT_MAX:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let addresses: Vec<String> = cluster
            .nodes
            .iter()
            .filter(|n| i32::from(n.id) != leader)
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let mut epoch_before = None;
        for address in &addresses {
            if let Ok(Some((l, epoch))) = kafka_rpc::leader_and_epoch(address, TOPIC, 0).await {
                if l == leader {
                    epoch_before = Some(epoch);
                    break;
                }
            }
        }
        let epoch_before = epoch_before.context("no node names the leader's epoch")?;
        let victim = &mut cluster.nodes[leader as usize - 1];
        let killed_us = now_us();
        kill_times.push(killed_us);
        victim.kill9()?;
        let waited = Instant::now();
        // Meanwhile: when a surviving node first names another leader in a
        // later epoch (the leader elected, not a guess during the election).
        let watcher = tokio::spawn(async move {
            let started = Instant::now();
            while started.elapsed() < ACK_WAIT_MAX {
                for address in &addresses {
                    if let Ok(Some((l, epoch))) =
                        kafka_rpc::leader_and_epoch(address, TOPIC, 0).await
                    {
                        if l != leader && epoch > epoch_before {
                            return Some(now_us());
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            None
        });
        let first_ack = loop {
            let first = acks
                .lock()
                .expect("acks")
                .values()
                .filter(|(sent, _)| *sent > killed_us)
                .map(|(_, acked)| *acked)
                .min();
            if let Some(acked) = first {
                break acked;
            }
            if waited.elapsed() > ACK_WAIT_MAX {
                bail!("round {round}: no acknowledgement {ACK_WAIT_MAX:?} after killing node {leader}");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let unavailable_ms = (first_ack - killed_us) as f64 / 1000.0;
        let new_leader_ms = watcher
            .await
            .ok()
            .flatten()
            .map(|at| at.saturating_sub(killed_us) as f64 / 1000.0);
        println!(
            "kill {} at {}: node {leader}, first ack after {unavailable_ms:.0} ms (Metadata named a new leader after {})",
            round + 1,
            wall_clock(),
            new_leader_ms.map_or("-".to_string(), |ms| format!("{ms:.0} ms"))
        );
        kills.push(KillResult {
            node: leader,
            unavailable_ms,
            new_leader_ms,
        });
        let victim = &mut cluster.nodes[leader as usize - 1];
        victim.spawn(&args.fjord_bin)?;
        victim.wait_ready()?;
        tokio::time::sleep(Duration::from_secs_f64(args.settle_sec.max(0.0))).await;
    }
    stop.store(true, Ordering::Relaxed);
    let deliveries = sending.await.context("the producing task")?;
    // Every delivery report (librdkafka gives up on a record after its
    // message.timeout.ms, 300 s by default; the wait is bounded above that).
    tokio::time::timeout(Duration::from_secs(360), futures_join(deliveries))
        .await
        .context("delivery reports")?;
    let total_sent = sent.load(Ordering::Relaxed);
    let acked: HashSet<u64> = acks.lock().expect("acks").keys().copied().collect();

    // Read everything back.
    // ListOffsets goes to the leader; retry while leadership settles, and
    // until the high watermark covers every acknowledged offset (a new
    // leader's moves up once it commits an entry of its own term).
    let started = Instant::now();
    let must_reach = last_acked.load(Ordering::Relaxed) + 1;
    let end = loop {
        match metadata.fetch_watermarks(TOPIC, 0, REQUEST_TIMEOUT) {
            Ok((_, high)) if high >= must_reach => break high,
            Ok((_, high)) if started.elapsed() > CONVERGE_WAIT_MAX => {
                bail!(
                    "the high watermark is {high}, below acknowledged offset {}",
                    must_reach - 1
                )
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) if started.elapsed() > CONVERGE_WAIT_MAX => {
                bail!("ListOffsets {TOPIC}-0: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    let mut consumer_config = client(&bootstrap);
    consumer_config
        .set(
            "group.id",
            format!("failover-check-{}", uuid::Uuid::new_v4()),
        )
        .set("enable.auto.commit", "false");
    let consumer: BaseConsumer = consumer_config.create()?;
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(TOPIC, 0, Offset::Beginning)?;
    consumer.assign(&assignment)?;
    let mut seen: BTreeMap<u64, u32> = BTreeMap::new();
    let mut read = 0i64;
    let started = Instant::now();
    while read < end {
        if started.elapsed() > CONVERGE_WAIT_MAX {
            bail!("read {read} of {end} records in {CONVERGE_WAIT_MAX:?}");
        }
        let Some(message) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let message = message?;
        read = message.offset() + 1;
        if let Some(id) = message
            .payload()
            .and_then(|p| std::str::from_utf8(p).ok())
            .and_then(|s| s.strip_prefix("failover-"))
            .and_then(|s| s.parse::<u64>().ok())
        {
            *seen.entry(id).or_default() += 1;
        }
    }
    let mut lost_ids: Vec<u64> = acked
        .iter()
        .copied()
        .filter(|id| !seen.contains_key(id))
        .collect();
    lost_ids.sort_unstable();
    let lost = lost_ids.len() as u64;
    if let (Some(first), Some(last)) = (lost_ids.first(), lost_ids.last()) {
        let acks = acks.lock().expect("acks");
        let at = |id: &u64| acks.get(id).map(|(s, a)| (*s, *a)).unwrap_or((0, 0));
        eprintln!(
            "LOST {lost} acknowledged records, ids {first}..={last}; first sent at {} us, acked at {} us; last sent at {} us, acked at {} us; kills at {:?} us",
            at(first).0, at(first).1, at(last).0, at(last).1, kill_times
        );
    }
    let duplicated = seen
        .values()
        .filter(|&&n| n > 1)
        .map(|&n| u64::from(n - 1))
        .sum();

    let mut times: Vec<f64> = kills.iter().map(|k| k.unavailable_ms).collect();
    times.sort_by(f64::total_cmp);
    let median = if times.is_empty() {
        0.0
    } else if times.len() % 2 == 1 {
        times[times.len() / 2]
    } else {
        (times[times.len() / 2 - 1] + times[times.len() / 2]) / 2.0
    };
    let report = FailoverReport {
        unavailable_ms_median: median,
        unavailable_ms_max: times.last().copied().unwrap_or(0.0),
        kills,
        sent: total_sent,
        acknowledged: acked.len() as u64,
        lost,
        duplicated,
        idempotent: !args.no_idempotence,
        rate: args.rate,
        settle_sec: args.settle_sec,
    };
    drop(cluster);
    if args.dir.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(report)
}
