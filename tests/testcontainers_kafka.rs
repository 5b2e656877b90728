//! Fjord and Apache Kafka side by side: one client scenario run against both,
//! and everything a client can observe of it must be the same.
//!
//! The scenario: create a 3-partition topic; produce 1,000 keyed messages
//! with librdkafka's `murmur2_random` partitioner (Java's default, so both
//! brokers receive the same partition for each key — librdkafka's own default,
//! `consistent_random`, hashes differently); consume them all as one member
//! of a consumer group and commit; let a second member of the same group
//! start from those commits (it must re-read nothing); read the group's
//! committed offsets back (OffsetFetch) and describe the group once both
//! members have left (DescribeGroups).
//!
//! Run it with `cargo test --test testcontainers_kafka -- --ignored`. Apache
//! Kafka comes from testcontainers (`apache/kafka`, KRaft, tag
//! [`KAFKA_TAG_DEFAULT`] or `FJORD_TEST_KAFKA_TAG`), or from an already
//! running broker named by `FJORD_TEST_KAFKA_BOOTSTRAP=host:port` (for example
//! `scripts/kafka-server start DIR 19092`, no Docker needed). Fjord is the
//! local binary run by the `tests/common` harness (or the broker named by
//! `FJORD_TEST_EXTERNAL_BOOTSTRAP`).
//!
//! Design decisions:
//! - Without a Docker engine the test prints `SKIPPED: no Docker engine (...)`
//!   (past the output capture, so it shows in a plain run) and returns. It is `#[ignore]`d, so a default `cargo test` run never
//!   counts that as a pass; only an explicit `--ignored` run reaches it.
//! - Apache Kafka is started first: with no engine the test stops before
//!   spending time on Fjord.
//! - Waits are bounded and event-driven. In particular "the second member
//!   re-reads nothing" is not a timed silence: after it has joined, one marker
//!   record is written to each partition, and the first record the member
//!   receives on each partition must be that marker, at exactly the committed
//!   offset. A member that ignored the commits would receive old records first.
//! - The scenario checks each broker against the client's own expectations
//!   (every acknowledged record consumed exactly once, keys placed by
//!   murmur2, commits read back as written) before the two are compared, so a
//!   failure names the broker that misbehaved.

mod common;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context as _, Result};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::FutureRecord;
use rdkafka::{Offset, TopicPartitionList};
use testcontainers_modules::kafka::apache;
use testcontainers_modules::testcontainers::core::error::ClientError;
use testcontainers_modules::testcontainers::runners::AsyncRunner;
use testcontainers_modules::testcontainers::{ContainerAsync, ImageExt, TestcontainersError};
use tokio::task::block_in_place;

use common::{
    assert_exactly_acked, consume_count, consumer_config, create_topic, message_key, message_value,
    parse_id, produce_ids, producer, unique_topic, Ack, Broker, BULK_PRODUCER_SETTINGS,
    METADATA_REQUEST_TIMEOUT,
};

/// Partitions of the scenario's topic.
const PARTITIONS: i32 = 3;
/// Keyed messages produced.
const MESSAGES: u64 = 1_000;
/// Distinct keys among the messages (each key's messages share a partition).
const KEYS: u64 = 100;

/// The `apache/kafka` tag started by default: the one docker-compose.yml runs.
const KAFKA_TAG_DEFAULT: &str = "4.1.0";
/// Environment variable choosing another `apache/kafka` tag.
const KAFKA_TAG_ENV: &str = "FJORD_TEST_KAFKA_TAG";
/// Environment variable naming an already running Apache Kafka to compare
/// with, instead of starting one in Docker.
const KAFKA_BOOTSTRAP_ENV: &str = "FJORD_TEST_KAFKA_BOOTSTRAP";
/// Bound for pulling the image and starting Kafka's JVM.
const KAFKA_START_WAIT_MAX: Duration = Duration::from_secs(300);

/// Broker settings for `fjord`: no initial rebalance delay, as for the Kafka
/// container (Kafka's default of 3 s only slows the test down).
const FJORD_ARGS: &[&str] = &["--override", "group.initial.rebalance.delay.ms=0"];
/// `session.timeout.ms` of the group members (Kafka's smallest allowed).
const SESSION_TIMEOUT_MS: &str = "6000";
/// Bound for consuming every produced message.
const CONSUME_WAIT_MAX: Duration = Duration::from_secs(120);
/// Bound for the second member to join and receive the marker records.
const GROUP_WAIT_MAX: Duration = Duration::from_secs(60);
/// How long one receive of the second member waits before the member checks
/// its assignment again.
const MEMBER_POLL_INTERVAL: Duration = Duration::from_millis(200);

/// What a client observes of the scenario on one broker. Topic and group
/// names differ between runs and are left out; everything else must be equal
/// on Fjord and on Apache Kafka.
#[derive(Debug, PartialEq, Eq)]
struct Observed {
    /// `(partition, offset)` acknowledged for message `id`, at index `id`.
    placement: Vec<(i32, i64)>,
    /// Records the first group member received, per partition.
    consumed: BTreeMap<i32, usize>,
    /// Committed offsets read back from the group coordinator (OffsetFetch).
    committed: BTreeMap<i32, i64>,
    /// Records of the first 1,000 that the second member received (none).
    second_member_old_records: usize,
    /// Offset at which the second member received each partition's marker.
    second_member_marker_offsets: BTreeMap<i32, i64>,
    /// The group once both members have left: (state, protocol type, members).
    group_after: (String, String, usize),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "starts Apache Kafka in Docker (or set FJORD_TEST_KAFKA_BOOTSTRAP); run with --ignored"]
async fn fjord_and_apache_kafka_agree_on_keys_groups_and_commits() -> Result<()> {
    let kafka = match start_kafka().await? {
        Some(kafka) => kafka,
        None => return Ok(()),
    };
    let fjord = Broker::start_with(FJORD_ARGS)?;

    eprintln!("Apache Kafka at {}", kafka.bootstrap);
    let on_kafka = run_scenario(&kafka.bootstrap)
        .await
        .context("the scenario against Apache Kafka")?;
    eprintln!("fjord at {}", fjord.bootstrap());
    let on_fjord = run_scenario(fjord.bootstrap())
        .await
        .context("the scenario against fjord")?;

    ensure!(
        on_fjord.placement == on_kafka.placement,
        "messages landed at different partitions/offsets; first difference: {:?}",
        on_fjord
            .placement
            .iter()
            .zip(&on_kafka.placement)
            .enumerate()
            .find(|(_, (f, k))| f != k)
            .map(|(id, (f, k))| format!("message {id}: fjord {f:?}, kafka {k:?}"))
    );
    eprintln!(
        "both: per partition {:?} consumed, {:?} committed, markers at {:?}; group after: {:?}",
        on_kafka.consumed,
        on_kafka.committed,
        on_kafka.second_member_marker_offsets,
        on_kafka.group_after
    );
    assert_eq!(
        on_fjord, on_kafka,
        "fjord (left) and Apache Kafka (right) differ"
    );

    if let Some(container) = kafka.container {
        container.rm().await?;
    }
    Ok(())
}

/// Apache Kafka for the comparison, and the container to remove afterwards.
struct Kafka {
    bootstrap: String,
    container: Option<ContainerAsync<apache::Kafka>>,
}

/// Starts Apache Kafka, or returns `None` after printing why the test is
/// skipped (no Docker engine).
async fn start_kafka() -> Result<Option<Kafka>> {
    if let Some(bootstrap) = std::env::var(KAFKA_BOOTSTRAP_ENV)
        .ok()
        .filter(|s| !s.trim().is_empty())
    {
        return Ok(Some(Kafka {
            bootstrap,
            container: None,
        }));
    }
    let tag = std::env::var(KAFKA_TAG_ENV).unwrap_or_else(|_| KAFKA_TAG_DEFAULT.to_string());
    let request = apache::Kafka::default()
        .with_jvm_image()
        .with_tag(tag.as_str())
        // The module sets broker.id; Kafka 4 wants node.id (equal) in KRaft.
        .with_env_var("KAFKA_NODE_ID", apache::DEFAULT_BROKER_ID.to_string())
        .with_env_var("KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS", "0")
        .with_env_var("KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", "1")
        .with_env_var("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "1")
        .with_startup_timeout(KAFKA_START_WAIT_MAX);
    let container = match request.start().await {
        Ok(container) => container,
        Err(e) if is_no_docker_engine(&e) => {
            // Straight to stderr, past the test harness's output capture, so
            // the skip shows without --nocapture.
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED: no Docker engine ({e}); to compare with Apache Kafka anyway, \
                 start one and set {KAFKA_BOOTSTRAP_ENV}=host:port"
            );
            return Ok(None);
        }
        Err(e) => return Err(e).with_context(|| format!("starting apache/kafka:{tag}")),
    };
    let port = container.get_host_port_ipv4(apache::KAFKA_PORT).await?;
    Ok(Some(Kafka {
        bootstrap: format!("127.0.0.1:{port}"),
        container: Some(container),
    }))
}

/// Whether `start()` failed because no Docker engine answers (no socket,
/// nothing listening, no client configuration) rather than in an engine.
fn is_no_docker_engine(error: &TestcontainersError) -> bool {
    let TestcontainersError::Client(client) = error else {
        return false;
    };
    if matches!(
        client,
        ClientError::Init(_) | ClientError::Configuration(_) | ClientError::InvalidDockerHost(_)
    ) {
        return true;
    }
    // A request that could not reach an engine (the first one is the image
    // pull or the container creation) carries bollard's connection error.
    let text = format!("{client:?}");
    [
        "SocketNotFound",
        "No such file or directory",
        "Connection refused",
        "ConnectionRefused",
    ]
    .iter()
    .any(|needle| text.contains(needle))
}

/// The scenario on the broker at `bootstrap`, checked against what the
/// client expects, and what it observed.
async fn run_scenario(bootstrap: &str) -> Result<Observed> {
    let topic = unique_topic("tc-compare");
    let group = unique_topic("tc-compare-group");
    create_topic(bootstrap, &topic, PARTITIONS).await?;

    // Produce: keys are placed by murmur2, exactly as the Java client would.
    let mut settings = BULK_PRODUCER_SETTINGS.to_vec();
    settings.push(("partitioner", "murmur2_random"));
    let producer = producer(bootstrap, &settings)?;
    let acks = produce_ids(&producer, &topic, 0..MESSAGES, KEYS).await?;
    for ack in &acks {
        let key = message_key(ack.id, KEYS);
        let expected = murmur2_partition(key.as_bytes(), PARTITIONS);
        ensure!(
            ack.partition == expected,
            "message {} (key {key}) went to partition {}, murmur2 says {expected}",
            ack.id,
            ack.partition
        );
    }
    let mut placement = vec![(-1, -1); MESSAGES as usize];
    for ack in &acks {
        placement[ack.id as usize] = (ack.partition, ack.offset);
    }
    let ends = partition_ends(&acks);

    // First member: consume everything, then commit what it consumed.
    let member_settings = [
        ("group.id", group.as_str()),
        ("session.timeout.ms", SESSION_TIMEOUT_MS),
    ];
    let first: StreamConsumer = consumer_config(bootstrap, &member_settings).create()?;
    first.subscribe(&[topic.as_str()])?;
    let records = consume_count(&first, MESSAGES as usize, CONSUME_WAIT_MAX)
        .await
        .context("the first group member")?;
    assert_exactly_acked(&acks, &records, KEYS)?;
    let mut consumed: BTreeMap<i32, usize> = (0..PARTITIONS).map(|p| (p, 0)).collect();
    for r in &records {
        *consumed.entry(r.partition).or_default() += 1;
    }
    let mut commit = TopicPartitionList::new();
    for (&partition, &end) in &ends {
        commit.add_partition_offset(&topic, partition, Offset::Offset(end))?;
    }
    block_in_place(|| first.commit(&commit, CommitMode::Sync)).context("committing")?;
    // Closing the consumer leaves the group (LeaveGroup), so the second
    // member does not wait for the first one's session to expire.
    block_in_place(move || drop(first));

    // Second member: starts from the commits, so it re-reads nothing.
    let second: StreamConsumer = consumer_config(bootstrap, &member_settings).create()?;
    second.subscribe(&[topic.as_str()])?;
    let (old_records, marker_offsets) = second_member_receives(&second, &topic, bootstrap, &ends)
        .await
        .context("the second group member")?;
    ensure!(
        old_records == 0,
        "the second member re-read {old_records} records the group had committed"
    );
    block_in_place(move || drop(second));

    // The group's committed offsets, as an admin would read them.
    let admin: BaseConsumer =
        consumer_config(bootstrap, &[("group.id", group.as_str())]).create()?;
    let mut partitions = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        partitions.add_partition(&topic, p);
    }
    let committed_list =
        block_in_place(|| admin.committed_offsets(partitions.clone(), METADATA_REQUEST_TIMEOUT))
            .context("OffsetFetch")?;
    let mut committed = BTreeMap::new();
    for element in committed_list.elements() {
        let Offset::Offset(offset) = element.offset() else {
            bail!(
                "partition {} has no committed offset ({:?})",
                element.partition(),
                element.offset()
            );
        };
        committed.insert(element.partition(), offset);
    }
    ensure!(
        committed == ends,
        "committed offsets read back {committed:?}, committed {ends:?}"
    );
    let group_after = describe_group(&admin, &group)?;

    Ok(Observed {
        placement,
        consumed,
        committed,
        second_member_old_records: old_records,
        second_member_marker_offsets: marker_offsets,
        group_after,
    })
}

/// For each partition, the offset after the last acknowledged message (0 for
/// a partition that received none).
fn partition_ends(acks: &[Ack]) -> BTreeMap<i32, i64> {
    let mut ends: BTreeMap<i32, i64> = (0..PARTITIONS).map(|p| (p, 0)).collect();
    for ack in acks {
        let end = ends.entry(ack.partition).or_default();
        *end = (*end).max(ack.offset + 1);
    }
    ends
}

/// Waits (bounded) until `member` owns every partition, then writes one
/// marker record to each partition and receives until it has every marker.
/// Returns how many records from before the markers it received, and the
/// offset of each marker.
async fn second_member_receives(
    member: &StreamConsumer,
    topic: &str,
    bootstrap: &str,
    committed: &BTreeMap<i32, i64>,
) -> Result<(usize, BTreeMap<i32, i64>)> {
    let deadline = tokio::time::Instant::now() + GROUP_WAIT_MAX;
    let mut old_records = 0;
    // Join: receiving drives the rebalance; count anything that arrives.
    loop {
        if let Ok(message) = tokio::time::timeout(MEMBER_POLL_INTERVAL, member.recv()).await {
            let message = message?;
            eprintln!(
                "second member received {}/{} before the markers",
                message.partition(),
                message.offset()
            );
            old_records += 1;
        }
        if member.assignment()?.count() == PARTITIONS as usize {
            break;
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "no assignment of all {PARTITIONS} partitions within {GROUP_WAIT_MAX:?}"
        );
    }

    let producer = producer(bootstrap, &[])?;
    let mut marker_ids = BTreeMap::new();
    for p in 0..PARTITIONS {
        let id = MESSAGES + p as u64;
        let value = message_value(id);
        let (partition, offset) = producer
            .send(
                FutureRecord::<(), _>::to(topic)
                    .partition(p)
                    .payload(&value),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| anyhow!("marker for partition {p}: {e}"))
            .map(|d| (d.partition, d.offset))?;
        ensure!(
            offset == committed[&partition],
            "the marker for partition {p} is at offset {offset}, the partition ended at {}",
            committed[&partition]
        );
        marker_ids.insert(id, partition);
    }

    let mut marker_offsets = BTreeMap::new();
    while marker_offsets.len() < PARTITIONS as usize {
        let message = tokio::time::timeout_at(deadline, member.recv())
            .await
            .map_err(|_| {
                anyhow!(
                    "received markers of {} of {PARTITIONS} partitions within {GROUP_WAIT_MAX:?}",
                    marker_offsets.len()
                )
            })??;
        let id = parse_id(message.payload().unwrap_or_default())?;
        if marker_ids.get(&id) == Some(&message.partition()) {
            marker_offsets.insert(message.partition(), message.offset());
        } else {
            eprintln!(
                "second member re-read message {id} at {}/{}",
                message.partition(),
                message.offset()
            );
            old_records += 1;
        }
    }
    Ok((old_records, marker_offsets))
}

/// DescribeGroups of `group`: (state, protocol type, number of members).
fn describe_group(client: &BaseConsumer, group: &str) -> Result<(String, String, usize)> {
    let list = block_in_place(|| client.fetch_group_list(Some(group), METADATA_REQUEST_TIMEOUT))
        .context("DescribeGroups")?;
    let info = list
        .groups()
        .iter()
        .find(|g| g.name() == group)
        .ok_or_else(|| anyhow!("group {group} is not described"))?;
    Ok((
        info.state().to_string(),
        info.protocol_type().to_string(),
        info.members().len(),
    ))
}

/// The partition Kafka's default partitioner (and librdkafka's
/// `murmur2_random`) picks for a non-null key.
fn murmur2_partition(key: &[u8], partitions: i32) -> i32 {
    (murmur2(key) & 0x7fff_ffff) % partitions
}

/// Kafka's `Utils.murmur2` (MurmurHash2, seed 0x9747b28c).
fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h = SEED ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if !tail.is_empty() {
        for (i, byte) in tail.iter().enumerate().rev() {
            h ^= u32::from(*byte) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The values of Kafka's own `UtilsTest.testMurmur2`.
#[test]
fn murmur2_matches_kafka() {
    let cases: &[(&str, i32)] = &[
        ("21", -973_932_308),
        ("foobar", -790_332_482),
        ("a-little-bit-long-string", -985_981_536),
        ("a-little-bit-longer-string", -1_486_304_829),
        (
            "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
            -58_897_971,
        ),
        ("abc", 479_470_107),
    ];
    for (input, expected) in cases {
        assert_eq!(murmur2(input.as_bytes()), *expected, "murmur2({input:?})");
    }
}
