//! A seeded mutation fuzzer against a live broker: real clients' requests
//! (the frames `fuzz/capture-corpus` recorded from kcat, the Java tools,
//! kafka-python, confluent-kafka and franz-go), mutated and sent to a running
//! `fjord` over TCP.
//!
//! After every batch of mutated requests the broker must still be alive, must
//! still serve a normal produce and consume on connections opened before the
//! fuzzing (a bystander), and its resident memory and descriptor count must
//! stay flat: the connections the batch opened are closed, so whatever the
//! broker allocated for them must be gone.
//!
//! The run is deterministic for a seed: `FJORD_TEST_LIVE_FUZZ_SEED` picks it (the
//! seed is printed), `FJORD_TEST_LIVE_FUZZ_BATCHES` how many batches (default 30;
//! the long run in the README uses thousands). A failing seed replays exactly
//! as far as the broker's answers do not influence the mutations (they do not:
//! responses are read and dropped).

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};
use rdkafka::consumer::StreamConsumer;
use rdkafka::producer::FutureProducer;
use rdkafka::Offset;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::{
    assert_exactly_acked, assigned_consumer, consume_count, create_topic, produce_ids, producer,
    unique_topic, Ack, Broker, Record, BULK_PRODUCER_SETTINGS,
};

/// Batches in the default (test-suite) run.
const BATCHES_DEFAULT: u64 = 30;
/// Connections each batch opens (at most `CONNECTIONS_AT_ONCE` open together),
/// and mutated requests pipelined on each. Few per connection, because the
/// broker closes a connection at the first request it cannot parse and the
/// requests behind it would never be looked at.
const CONNECTIONS_PER_BATCH: usize = 48;
const CONNECTIONS_AT_ONCE: usize = 8;
const REQUESTS_PER_CONNECTION: usize = 4;
/// Bound for writing one batch's requests and draining answers on one connection.
const CONNECTION_WAIT_MAX: Duration = Duration::from_secs(5);
/// Largest answer frame read back (answers are dropped; this bounds the read).
const ANSWER_BYTES_MAX: usize = 64 << 20;
/// Growth of resident memory allowed between the first and the last batch:
/// far less than the bytes the fuzzer sends over a run, so a per-request leak
/// fails, and enough for allocator noise and caches that settle.
const RSS_GROWTH_MAX_KIB: u64 = 96 * 1024;
/// Descriptors (other than log files) the broker may hold above its idle
/// count once a batch's connections are closed.
const FD_GROWTH_MAX: usize = 8;
/// How long the broker may take to close the descriptors of connections the
/// fuzzer closed.
const FD_SETTLE_WAIT_MAX: Duration = Duration::from_secs(15);
const FD_POLL_INTERVAL: Duration = Duration::from_millis(50);
const BYSTANDER_MESSAGES: u64 = 50;
const BYSTANDER_KEYS: u64 = 5;
const CONSUME_WAIT_MAX: Duration = Duration::from_secs(30);

/// SplitMix64: tiny, seedable, and the same everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// The captured request frames (without their length prefix).
fn seed_frames() -> Result<Vec<Vec<u8>>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/decode_request");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    paths.sort();
    let mut frames = Vec::new();
    for path in paths {
        let bytes = std::fs::read(&path)?;
        // Whole-frame seeds start with 0x00 (see fuzz_targets/decode_request.rs).
        if bytes.first() == Some(&0) && bytes.len() > 9 {
            frames.push(bytes[1..].to_vec());
        }
    }
    ensure!(
        !frames.is_empty(),
        "no captured frames in {}",
        dir.display()
    );
    Ok(frames)
}

/// Boundary values written over integer fields.
const INTERESTING_I32: [i32; 9] = [0, 1, -1, 2, 127, 255, i32::MAX, i32::MIN, 65_536];

/// One mutated request: a captured frame with a few random changes. The api
/// key and version are kept most of the time so that the mutations reach the
/// handlers, not only the version check.
fn mutate(rng: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut frame = seeds[rng.below(seeds.len())].clone();
    let keep_header = rng.below(8) != 0;
    let protected = if keep_header { 4 } else { 0 };
    // Mostly one small change, so that most requests still decode and reach
    // a handler; sometimes several, or a structural one.
    let changes = [1, 1, 1, 1, 2, 2, 3, 4][rng.below(8)];
    for _ in 0..changes {
        let len = frame.len();
        if len <= protected {
            frame.push(rng.next() as u8);
            continue;
        }
        let at = protected + rng.below(len - protected);
        match [0, 0, 1, 1, 2, 2, 2, 3, 4, 5, 6][rng.below(11)] {
            0 => frame[at] ^= 1 << rng.below(8),
            1 => frame[at] = [0x00, 0xff, 0x7f, 0x80][rng.below(4)],
            2 => {
                let value = INTERESTING_I32[rng.below(INTERESTING_I32.len())].to_be_bytes();
                for (i, b) in value.iter().enumerate() {
                    if let Some(slot) = frame.get_mut(at + i) {
                        *slot = *b;
                    }
                }
            }
            3 => frame.truncate(at.max(protected + 1)),
            4 => {
                for _ in 0..1 + rng.below(64) {
                    frame.push(rng.next() as u8);
                }
            }
            5 => {
                let end = (at + 1 + rng.below(64)).min(len);
                let slice = frame[at..end].to_vec();
                let insert_at = protected + rng.below(frame.len() - protected + 1);
                frame.splice(insert_at..insert_at, slice);
            }
            _ => {
                // Splice in the tail of another seed (crosses API shapes).
                let other = &seeds[rng.below(seeds.len())];
                let from = rng.below(other.len());
                frame.truncate(at);
                frame.extend_from_slice(&other[from..]);
            }
        }
    }
    frame
}

/// Sends `frames` pipelined on one fresh connection, reads whatever answers
/// come within the bound, and closes. Returns how many answers came back.
async fn send_batch(bootstrap: &str, frames: Vec<Vec<u8>>) -> Result<usize> {
    let mut stream = TcpStream::connect(bootstrap).await?;
    let deadline = Instant::now() + CONNECTION_WAIT_MAX;
    let (mut reader, mut writer) = stream.split();
    let write = async {
        for frame in &frames {
            let len = frame.len() as i32;
            writer.write_all(&len.to_be_bytes()).await?;
            writer.write_all(frame).await?;
        }
        writer.flush().await?;
        anyhow::Ok(())
    };
    let mut answers = 0;
    let read = async {
        let mut len = [0u8; 4];
        while answers < frames.len() {
            if reader.read_exact(&mut len).await.is_err() {
                return;
            }
            let n = i32::from_be_bytes(len);
            if n < 0 || n as usize > ANSWER_BYTES_MAX {
                return;
            }
            let mut body = vec![0u8; n as usize];
            if reader.read_exact(&mut body).await.is_err() {
                return;
            }
            answers += 1;
        }
    };
    // A broker that closed the connection fails the write; that is fine.
    let _ = tokio::time::timeout_at(deadline.into(), async {
        let _ = write.await;
    })
    .await;
    let _ = tokio::time::timeout_at(deadline.into(), read).await;
    Ok(answers)
}

fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")
}

/// Descriptors the broker holds other than its log files: sockets, pipes and
/// anything else a connection could leak. Log files are left out because
/// fuzzed CreateTopics and Metadata requests legitimately create partitions;
/// the log's own descriptor bound is tested elsewhere.
fn fd_count(pid: u32, data_dir: &Path) -> Result<usize> {
    let mut count = 0;
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
        let Ok(entry) = entry else { continue };
        match std::fs::read_link(entry.path()) {
            Ok(target) if target.starts_with(data_dir) => {}
            _ => count += 1,
        }
    }
    Ok(count)
}

/// Waits (bounded) until the broker holds at most `limit` such descriptors.
async fn fds_settle(pid: u32, data_dir: &Path, limit: usize) -> Result<usize> {
    let deadline = Instant::now() + FD_SETTLE_WAIT_MAX;
    loop {
        let count = fd_count(pid, data_dir)?;
        if count <= limit || Instant::now() >= deadline {
            return Ok(count);
        }
        tokio::time::sleep(FD_POLL_INTERVAL).await;
    }
}

/// A producer and consumer connected before the fuzzing starts.
struct Bystander {
    topic: String,
    producer: FutureProducer,
    consumer: StreamConsumer,
    acks: Vec<Ack>,
    records: Vec<Record>,
    next_id: u64,
}

impl Bystander {
    async fn round_trip(&mut self) -> Result<()> {
        let ids = self.next_id..self.next_id + BYSTANDER_MESSAGES;
        self.next_id = ids.end;
        let acks = produce_ids(&self.producer, &self.topic, ids, BYSTANDER_KEYS).await?;
        let records = consume_count(&self.consumer, acks.len(), CONSUME_WAIT_MAX).await?;
        self.acks.extend(acks);
        self.records.extend(records);
        assert_exactly_acked(&self.acks, &self.records, BYSTANDER_KEYS)
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutated_client_requests_leave_the_broker_serving_with_flat_memory_and_descriptors(
) -> Result<()> {
    let Some(mut broker) = Broker::start_process(
        "mutated_client_requests_leave_the_broker_serving_with_flat_memory_and_descriptors",
        &[],
    )?
    else {
        return Ok(());
    };
    let seed = env_u64("FJORD_TEST_LIVE_FUZZ_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    let batches = env_u64("FJORD_TEST_LIVE_FUZZ_BATCHES").unwrap_or(BATCHES_DEFAULT);
    eprintln!(
        "live fuzz: seed {seed} ({batches} batches); replay with FJORD_TEST_LIVE_FUZZ_SEED={seed}"
    );
    let seeds = seed_frames()?;
    let mut rng = Rng(seed);
    let bootstrap = broker.bootstrap().to_string();
    let pid = broker.pid().context("broker pid")?;
    let data_dir = broker.data_dir().context("broker data dir")?;

    let topic = unique_topic("live-fuzz-bystander");
    create_topic(&bootstrap, &topic, 1).await?;
    let mut bystander = Bystander {
        producer: producer(&bootstrap, BULK_PRODUCER_SETTINGS)?,
        consumer: assigned_consumer(&bootstrap, &topic, 1, Offset::Beginning, &[])?,
        topic,
        acks: Vec::new(),
        records: Vec::new(),
        next_id: 0,
    };
    bystander.round_trip().await?;
    let idle_fds = fd_count(pid, &data_dir)?;
    let mut first_rss = None;

    let mut answered = 0usize;
    for batch in 0..batches {
        for _ in 0..CONNECTIONS_PER_BATCH / CONNECTIONS_AT_ONCE {
            let sends: Vec<_> = (0..CONNECTIONS_AT_ONCE)
                .map(|_| {
                    let frames = (0..REQUESTS_PER_CONNECTION)
                        .map(|_| mutate(&mut rng, &seeds))
                        .collect::<Vec<_>>();
                    send_batch(&bootstrap, frames)
                })
                .collect();
            for result in futures::future::join_all(sends).await {
                answered += result?;
            }
        }
        if !broker.is_alive() {
            bail!(
                "broker died in batch {batch} (seed {seed})\n{}",
                broker.log_tail()
            );
        }
        bystander
            .round_trip()
            .await
            .with_context(|| format!("bystander after batch {batch} (seed {seed})"))?;
        let fds = fds_settle(pid, &data_dir, idle_fds + FD_GROWTH_MAX).await?;
        ensure!(
            fds <= idle_fds + FD_GROWTH_MAX,
            "batch {batch} (seed {seed}): {fds} descriptors open, {idle_fds} when idle"
        );
        let rss = rss_kib(pid)?;
        let first = *first_rss.get_or_insert(rss);
        ensure!(
            rss <= first + RSS_GROWTH_MAX_KIB,
            "batch {batch} (seed {seed}): RSS {rss} KiB, {first} KiB after the first batch"
        );
    }
    eprintln!(
        "live fuzz: {} requests in {batches} batches, {answered} answered; RSS {} -> {} KiB; descriptors {idle_fds} idle, {} now",
        batches as usize * CONNECTIONS_PER_BATCH * REQUESTS_PER_CONNECTION,
        first_rss.unwrap_or(0),
        rss_kib(pid)?,
        fd_count(pid, &data_dir)?
    );
    Ok(())
}
