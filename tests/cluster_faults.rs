//! Faults under load on a three-node cluster, checked with stock clients:
//! - an idempotent librdkafka producer (acks=all) streams into six
//!   partitions while the leader of one partition after another is killed
//!   -9 five times and restarted: every acknowledged record reads back
//!   exactly once, in order, and no offset holds two records;
//! - a leader paused with SIGSTOP (holding a batch it appended but never
//!   committed: its followers were frozen, then killed; an acks=all batch
//!   sent meanwhile is refused with NOT_LEADER_OR_FOLLOWER, not left to
//!   time out, and to clients it names another leader, lists every broker
//!   and refuses fetches) while the others
//!   come back and elect a new leader: after SIGCONT it serves nothing
//!   uncommitted, follows the new leader, and nothing committed is lost;
//! - a consumer group of two librdkafka consumers keeps consuming and
//!   committing while the node that coordinates it is killed -9: no
//!   committed offset goes back, and no record is skipped;
//! - records deleted with DeleteRecords stay deleted when the leader that
//!   deleted them is killed: every replica moved its log start;
//! - a replica that was down while the log start moved past its log end
//!   (DeleteRecords inside a batch) is rebuilt from the leader's log: led
//!   by it again, it serves exactly what the old leader served.
//!
//! Safety only: how long a failover takes is measured in the benchmark.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context as _, Result};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{BrokerId, FetchRequest, ProduceRequest};
use kafka_protocol::records::RecordBatchDecoder;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use common::cluster::{
    await_brokers, await_leaders, coordinator, keep_logs_on_error, leaders, listed_brokers,
    CONVERGE_WAIT_MAX,
};
use common::kafka_rpc::{admin, KafkaConnection};
use common::produce_stream::ProduceStream;
use common::{
    assert_exactly_acked, client_config, consume_all, parse_id, produce_ids, producer,
    unique_topic, Broker, BULK_PRODUCER_SETTINGS,
};

const NODES: usize = 3;
const KEYS: u64 = 60;
/// Kafka's ELECTION_NOT_NEEDED: the preferred replica already leads.
const ELECTION_NOT_NEEDED: i16 = 84;

/// The idempotent producer every test here streams with, with `extra`
/// settings.
fn idempotent_producer(
    bootstrap: &str,
    extra: &[(&str, &str)],
) -> Result<rdkafka::producer::FutureProducer> {
    let settings: Vec<(&str, &str)> = BULK_PRODUCER_SETTINGS
        .iter()
        .copied()
        .chain([
            ("enable.idempotence", "true"),
            ("message.timeout.ms", "120000"),
        ])
        .chain(extra.iter().copied())
        .collect();
    producer(bootstrap, &settings)
}

/// Creates `topic` with the default replication factor (3) and waits for
/// a leader of every partition on every node's view.
async fn create_replicated(bootstraps: &[String], topic: &str, count: i32) -> Result<()> {
    let mut conn = KafkaConnection::connect(&bootstraps[0]).await?;
    let created = admin::create_topic(&mut conn, topic, count, &[], false).await?;
    ensure!(created.error_code == 0, "CreateTopics: {created:?}");
    let all: Vec<i32> = (1..=bootstraps.len() as i32).collect();
    for b in bootstraps {
        await_leaders(b, topic, count, &all).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_stream_loses_and_duplicates_nothing_through_five_leader_kills() -> Result<()>
{
    const PARTITIONS: i32 = 6;
    const KILLS: i32 = 5;
    /// Records acknowledged after each kill before the node comes back: the
    /// stream went on through the failover.
    const PROGRESS: usize = 300;
    let Some(mut nodes) = Broker::start_cluster(
        "an_idempotent_stream_loses_and_duplicates_nothing_through_five_leader_kills",
        NODES,
        &[],
    )?
    else {
        return Ok(());
    };
    let outcome = async {
        let bootstraps: Vec<String> = nodes.iter().map(|n| n.bootstrap().to_string()).collect();
        let all: Vec<i32> = (1..=NODES as i32).collect();
        let topic = unique_topic("stream-kills");
        create_replicated(&bootstraps, &topic, PARTITIONS).await?;
        let mut stream = ProduceStream::start(
            idempotent_producer(&bootstraps.join(","), &[])?,
            &topic,
            KEYS,
            200,
            None,
        );
        stream.wait_acked(PROGRESS, CONVERGE_WAIT_MAX).await?;

        for round in 0..KILLS {
            // The leader of one partition after another, as a node reports it.
            let partition = round % PARTITIONS;
            let led = leaders(&bootstraps[0], &topic).await?;
            let victim = led.get(&partition).context("partition")?.0;
            ensure!(victim >= 1, "partition {partition} has no leader: {led:?}");
            nodes[victim as usize - 1].kill9()?;
            let killed_at = Instant::now();
            // The stream goes on: other nodes take over its partitions.
            let acked = stream.acked();
            stream
                .wait_acked(acked + PROGRESS, CONVERGE_WAIT_MAX)
                .await?;
            // As Kafka does until a broker's session times out, the
            // survivors still list the killed broker (librdkafka would
            // otherwise decommission it while moving its partitions, and
            // park them until its next metadata scan).
            let survivor = if victim == 1 { 2 } else { 1 };
            let listed = listed_brokers(&bootstraps[survivor - 1]).await?;
            ensure!(
                killed_at.elapsed() >= Duration::from_secs(8) || listed.contains(&victim),
                "node {survivor} stopped listing killed node {victim} after {:?}: {listed:?}",
                killed_at.elapsed()
            );
            nodes[victim as usize - 1].spawn_again()?;
            nodes[victim as usize - 1].wait_ready()?;
            await_leaders(&bootstraps[victim as usize - 1], &topic, PARTITIONS, &all).await?;
        }
        let outcome = stream.finish(CONVERGE_WAIT_MAX).await?;
        ensure!(
            outcome.failed.is_empty(),
            "{} deliveries failed, first: {:?}",
            outcome.failed.len(),
            outcome.failed.first()
        );
        let records = consume_all(&bootstraps[0], &topic, PARTITIONS, CONVERGE_WAIT_MAX).await?;
        // Every acknowledged record once at the offset its ack named, nothing
        // else, offsets contiguous from 0, each key in send order.
        assert_exactly_acked(&outcome.plain_acks(), &records, KEYS)?;
        anyhow::Ok(())
    }
    .await;
    let outcome = keep_logs_on_error(
        "an_idempotent_stream_loses_and_duplicates_nothing_through_five_leader_kills",
        &nodes,
        outcome,
    );
    for node in &mut nodes {
        let _ = node.stop();
    }
    outcome
}

/// Sends one batch of `count` records tagged `tag` to partition 0 with
/// `acks`; the error code and base offset.
async fn produce_tagged(
    conn: &mut KafkaConnection,
    topic: &str,
    tag: &str,
    count: i64,
    acks: i16,
) -> Result<(i16, i64)> {
    let batch = common::bulk::batch(count, tag, fjord::broker::now_ms())?;
    let request = ProduceRequest::default()
        .with_acks(acks)
        .with_timeout_ms(5_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(admin::topic_name(topic))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(batch))])]);
    let response = conn.send(9, &request).await?;
    let p = response
        .responses
        .first()
        .and_then(|t| t.partition_responses.first())
        .context("produce response without a partition")?;
    Ok((p.error_code, p.base_offset))
}

/// Fetches partition 0 from offset 0 on one node: (error code, high
/// watermark, the values it served).
async fn fetch_values(conn: &mut KafkaConnection, topic: &str) -> Result<(i16, i64, Vec<String>)> {
    let (error, high_watermark, records) = fetch_from(conn, topic, 0).await?;
    Ok((
        error,
        high_watermark,
        records.into_iter().map(|(_, v)| v).collect(),
    ))
}

/// Fetches partition 0 from offset `from` on one node: (error code, high
/// watermark, the (offset, value) of every record it served, including
/// those below `from` in the first batch).
async fn fetch_from(
    conn: &mut KafkaConnection,
    topic: &str,
    from: i64,
) -> Result<(i16, i64, Vec<(i64, String)>)> {
    let request = FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(0)
        .with_min_bytes(0)
        .with_max_bytes(8 * 1024 * 1024)
        .with_topics(vec![FetchTopic::default()
            .with_topic(admin::topic_name(topic))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(from)
                .with_partition_max_bytes(8 * 1024 * 1024)])]);
    let response = conn.send(12, &request).await?;
    let p = response
        .responses
        .first()
        .and_then(|t| t.partitions.first())
        .context("fetch response without a partition")?;
    let mut records = Vec::new();
    if let Some(bytes) = &p.records {
        let mut buf = bytes.clone();
        for set in RecordBatchDecoder::decode_all(&mut buf)? {
            for r in set.records {
                let value = String::from_utf8_lossy(r.value.as_deref().unwrap_or_default());
                records.push((r.offset, value.into()));
            }
        }
    }
    Ok((p.error_code, p.high_watermark, records))
}

/// DeleteRecords below `offset` in partition 0, sent to `conn`'s node:
/// (error code, low watermark).
async fn delete_records(
    conn: &mut KafkaConnection,
    topic: &str,
    offset: i64,
) -> Result<(i16, i64)> {
    use kafka_protocol::messages::delete_records_request::{
        DeleteRecordsPartition, DeleteRecordsTopic,
    };
    let request = kafka_protocol::messages::DeleteRecordsRequest::default()
        .with_timeout_ms(30_000)
        .with_topics(vec![DeleteRecordsTopic::default()
            .with_name(admin::topic_name(topic))
            .with_partitions(vec![DeleteRecordsPartition::default()
                .with_partition_index(0)
                .with_offset(offset)])]);
    let response = conn.send(2, &request).await?;
    let p = response
        .topics
        .first()
        .and_then(|t| t.partitions.first())
        .context("DeleteRecords answered no partition")?;
    Ok((p.error_code, p.low_watermark))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_leader_serves_nothing_uncommitted_and_loses_nothing_committed() -> Result<()> {
    let Some(mut nodes) = Broker::start_cluster(
        "a_paused_leader_serves_nothing_uncommitted_and_loses_nothing_committed",
        NODES,
        &[],
    )?
    else {
        return Ok(());
    };
    let outcome = async {
        let bootstraps: Vec<String> = nodes.iter().map(|n| n.bootstrap().to_string()).collect();
        let topic = unique_topic("paused");
        create_replicated(&bootstraps, &topic, 1).await?;
        let mut stream = ProduceStream::start(
            idempotent_producer(
                &bootstraps.join(","),
                // A frozen broker answers nothing: librdkafka gives up on
                // requests in flight to it after socket.timeout.ms (60 s by
                // default), and only then produces to the new leader.
                &[("socket.timeout.ms", "5000")],
            )?,
            &topic,
            KEYS,
            100,
            None,
        );
        stream.wait_acked(200, CONVERGE_WAIT_MAX).await?;

        // The followers freeze first: the leader still counts them for a
        // moment (a paused node is only missed after the transport's
        // dead_after), so it appends a batch it can never commit (acks=1 is
        // answered at the leader's append). The followers are then killed,
        // so that what the leader sent them, waiting in their sockets, is
        // gone: no one but the leader ever holds the batch.
        let old = leaders(&bootstraps[0], &topic).await?[&0].0;
        let followers: Vec<i32> = (1..=NODES as i32).filter(|&n| n != old).collect();
        let mut to_old = KafkaConnection::connect(&bootstraps[old as usize - 1]).await?;
        for &f in &followers {
            nodes[f as usize - 1].pause()?;
        }
        let (code, doomed_at) = produce_tagged(&mut to_old, &topic, "doomed", 5, 1).await?;
        ensure!(
            code == 0,
            "acks=1 to the leader while its followers were frozen: error {code}"
        );

        let (_, hw, _) = fetch_values(&mut to_old, &topic).await?;
        ensure!(
            hw <= doomed_at,
            "high watermark {hw} covers the uncommitted batch at {doomed_at}"
        );        // An acks=all batch it takes now waits for a commit that cannot
        // come: once the leader misses its followers, it answers
        // NOT_LEADER_OR_FOLLOWER (as Kafka answers a produce whose leader
        // lost its standing) well within the request's timeout, so the
        // client looks for the new leader instead of waiting it out.
        let (code, _) = produce_tagged(&mut to_old, &topic, "doomed-all", 5, -1).await?;
        ensure!(
            code == kafka_protocol::error::ResponseError::NotLeaderOrFollower.code(),
            "acks=all to a leader cut off from its followers: error {code}, not NOT_LEADER_OR_FOLLOWER"
        );
        // To clients that still reach it, the cut-off leader lists every
        // broker, names no leader (not itself: as in Kafka, no leader is
        // named before one is elected) and refuses fetches: a client goes
        // looking for the new leader among the brokers listed instead of
        // waiting here.
        let not_leader = kafka_protocol::error::ResponseError::NotLeaderOrFollower.code();
        let md = common::cluster::topic_metadata(&mut to_old, &topic).await?;
        let listed: BTreeSet<i32> = md.brokers.iter().map(|b| b.node_id.0).collect();
        ensure!(
            listed.len() == NODES,
            "the cut-off leader lists brokers {listed:?}"
        );
        let named = md
            .topics
            .first()
            .and_then(|t| t.partitions.first())
            .map(|p| p.leader_id.0);
        ensure!(
            named.is_some_and(|l| l != old),
            "the cut-off leader names {named:?} as the leader"
        );
        let (code, _, _) = fetch_values(&mut to_old, &topic).await?;
        ensure!(
            code == not_leader,
            "the cut-off leader answered a fetch with error {code}"
        );
        for &f in &followers {
            nodes[f as usize - 1].kill9()?;
        }

        // Now the leader freezes, longer than any election takes, and the
        // followers come back: they elect a new leader between them, and
        // the stream goes on there.
        nodes[old as usize - 1].pause()?;
        for &f in &followers {
            nodes[f as usize - 1].spawn_again()?;
        }
        for &f in &followers {
            nodes[f as usize - 1].wait_ready()?;
        }
        await_leaders(
            &bootstraps[followers[0] as usize - 1],
            &topic,
            1,
            &followers,
        )
        .await?;
        let acked = stream.acked();
        stream.wait_acked(acked + 200, CONVERGE_WAIT_MAX).await?;

        // The old leader wakes still thinking it leads. Whatever it serves
        // from now on is committed: never the batch it alone held.
        nodes[old as usize - 1].resume()?;
        let started = Instant::now();
        let mut served = 0;
        while started.elapsed() < Duration::from_secs(2) {
            let (code, _, values) = fetch_values(&mut to_old, &topic).await?;
            ensure!(
                !values.iter().any(|v| v.starts_with("doomed")),
                "the resumed old leader served a record it never committed (error {code})"
            );
            served += values.len();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // And it follows the new leader: it refuses writes, naming another.
        let deadline = Instant::now() + CONVERGE_WAIT_MAX;
        loop {
            let (code, _) = produce_tagged(&mut to_old, &topic, "late", 1, -1).await?;
            if code == kafka_protocol::error::ResponseError::NotLeaderOrFollower.code() {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "the resumed old leader still answers produce with {code}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        let outcome = stream.finish(CONVERGE_WAIT_MAX).await?;
        ensure!(
            outcome.failed.is_empty(),
            "deliveries failed: {:?}",
            outcome.failed.first()
        );
        let records = consume_all(
            &bootstraps[followers[0] as usize - 1],
            &topic,
            1,
            CONVERGE_WAIT_MAX,
        )
        .await?;
        // The stream's records only: committed ones all there, once; the
        // uncommitted batch nowhere (its offsets hold the new leader's records).
        assert_exactly_acked(&outcome.plain_acks(), &records, KEYS)?;
        eprintln!("the resumed old leader served {served} committed records and nothing else");
        anyhow::Ok(())
    }
    .await;
    let outcome = keep_logs_on_error(
        "a_paused_leader_serves_nothing_uncommitted_and_loses_nothing_committed",
        &nodes,
        outcome,
    );
    for node in &mut nodes {
        let _ = node.stop();
    }
    outcome
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_group_keeps_its_commits_and_skips_nothing_when_its_coordinator_dies(
) -> Result<()> {
    const PARTITIONS: i32 = 4;
    const RECORDS: u64 = 2000;
    let Some(mut nodes) = Broker::start_cluster(
        "a_consumer_group_keeps_its_commits_and_skips_nothing_when_its_coordinator_dies",
        NODES,
        &[],
    )?
    else {
        return Ok(());
    };
    let outcome = async {
        let bootstraps: Vec<String> = nodes.iter().map(|n| n.bootstrap().to_string()).collect();
        let everyone = bootstraps.join(",");
        let topic = unique_topic("group-kill");
        let group = unique_topic("group");
        create_replicated(&bootstraps, &topic, PARTITIONS).await?;
        let producer = idempotent_producer(&everyone, &[])?;
        let acks = produce_ids(&producer, &topic, 0..RECORDS, KEYS).await?;
        drop(producer);
        let ends: BTreeMap<i32, i64> = acks.iter().fold(BTreeMap::new(), |mut ends, a| {
            let end = ends.entry(a.partition).or_insert(0);
            *end = (*end).max(a.offset + 1);
            ends
        });

        // Two members; each commits what it processed, synchronously, every
        // few records. What was consumed and the last successful commit per
        // partition are shared.
        #[derive(Default)]
        struct Seen {
            ids: BTreeSet<u64>,
            committed: BTreeMap<i32, i64>,
            commit_errors: usize,
        }
        let seen = Arc::new(Mutex::new(Seen::default()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut members = Vec::new();
        for member in 0..2 {
            let consumer: StreamConsumer = client_config(&everyone)
                .set("group.id", &group)
                .set("enable.auto.commit", "false")
                .set("auto.offset.reset", "earliest")
                .set("session.timeout.ms", "10000")
                .set("heartbeat.interval.ms", "500")
                .set("client.id", format!("member-{member}"))
                .create()?;
            consumer.subscribe(&[&topic])?;
            let (seen, stop) = (seen.clone(), stop.clone());
            members.push(tokio::spawn(async move {
                let mut since_commit = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let message =
                        match tokio::time::timeout(Duration::from_millis(200), consumer.recv())
                            .await
                        {
                            Ok(Ok(m)) => m,
                            // Errors while the coordinator or a leader moves are
                            // the client's to retry.
                            Ok(Err(_)) => {
                                tokio::time::sleep(Duration::from_millis(50)).await;
                                continue;
                            }
                            Err(_) => continue,
                        };
                    let id = parse_id(message.payload().unwrap_or_default())?;
                    let (partition, offset) = (message.partition(), message.offset());
                    seen.lock().map_err(|_| anyhow!("poisoned"))?.ids.insert(id);
                    since_commit += 1;
                    if since_commit >= 20 {
                        since_commit = 0;
                        let mut tpl = TopicPartitionList::new();
                        tpl.add_partition_offset(
                            message.topic(),
                            partition,
                            Offset::Offset(offset + 1),
                        )?;
                        let committed = consumer.commit(&tpl, CommitMode::Sync);
                        let mut seen = seen.lock().map_err(|_| anyhow!("poisoned"))?;
                        match committed {
                            Ok(()) => {
                                let last = seen.committed.entry(partition).or_insert(0);
                                *last = (*last).max(offset + 1);
                            }
                            Err(_) => seen.commit_errors += 1,
                        }
                    }
                    // Slow enough that the kill lands mid-stream.
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                // Commit the final positions (retried: the group may still be
                // settling after the failover).
                let deadline = Instant::now() + CONVERGE_WAIT_MAX;
                loop {
                    let position = consumer.position()?;
                    let mut tpl = TopicPartitionList::new();
                    let mut mine = Vec::new();
                    for e in position.elements() {
                        if let Offset::Offset(o) = e.offset() {
                            tpl.add_partition_offset(e.topic(), e.partition(), Offset::Offset(o))?;
                            mine.push((e.partition(), o));
                        }
                    }
                    if mine.is_empty() || consumer.commit(&tpl, CommitMode::Sync).is_ok() {
                        let mut seen = seen.lock().map_err(|_| anyhow!("poisoned"))?;
                        for (p, o) in mine {
                            let last = seen.committed.entry(p).or_insert(0);
                            *last = (*last).max(o);
                        }
                        break;
                    }
                    ensure!(
                        Instant::now() < deadline,
                        "the final commit never succeeded"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                anyhow::Ok(())
            }));
        }

        // Once about a third is consumed and something committed, the
        // coordinator's node dies.
        let deadline = Instant::now() + CONVERGE_WAIT_MAX;
        loop {
            let (count, commits) = {
                let seen = seen.lock().map_err(|_| anyhow!("poisoned"))?;
                (seen.ids.len() as u64, seen.committed.len())
            };
            if count >= RECORDS / 3 && commits > 0 {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "the group consumed {count} records"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let victim = coordinator(&bootstraps[0], &group).await?;
        let committed_before: BTreeMap<i32, i64> = seen
            .lock()
            .map_err(|_| anyhow!("poisoned"))?
            .committed
            .clone();
        nodes[victim as usize - 1].kill9()?;

        // The group consumes everything: nothing skipped.
        let deadline = Instant::now() + CONVERGE_WAIT_MAX * 2;
        loop {
            let count = seen.lock().map_err(|_| anyhow!("poisoned"))?.ids.len() as u64;
            if count == RECORDS {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "the group consumed {count} of {RECORDS} records after its coordinator died"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for member in members {
            member.await??;
        }

        // The new coordinator holds every partition's final commit: the end of
        // the partition, never below what was committed before the kill.
        let survivor = &bootstraps[if victim == 1 { 1 } else { 0 }];
        let checker: StreamConsumer = client_config(survivor)
            .set("group.id", &group)
            .set("enable.auto.commit", "false")
            .create()?;
        let mut tpl = TopicPartitionList::new();
        for p in 0..PARTITIONS {
            tpl.add_partition(&topic, p);
        }
        let committed = tokio::task::spawn_blocking(move || {
            checker.committed_offsets(tpl, Duration::from_secs(30))
        })
        .await??;
        let errors = seen.lock().map_err(|_| anyhow!("poisoned"))?.commit_errors;
        for e in committed.elements() {
            let Offset::Offset(offset) = e.offset() else {
                return Err(anyhow!(
                    "partition {} has no committed offset",
                    e.partition()
                ));
            };
            let before = committed_before.get(&e.partition()).copied().unwrap_or(0);
            ensure!(
                offset >= before,
                "partition {}: committed {offset} after the failover, {before} before it",
                e.partition()
            );
            ensure!(
                offset == ends[&e.partition()],
                "partition {}: committed {offset}, the end is {}",
                e.partition(),
                ends[&e.partition()]
            );
        }
        eprintln!(
            "coordinator {victim} killed; {errors} commits failed meanwhile and were retried"
        );
        anyhow::Ok(())
    }
    .await;
    let outcome = keep_logs_on_error(
        "a_consumer_group_keeps_its_commits_and_skips_nothing_when_its_coordinator_dies",
        &nodes,
        outcome,
    );
    for node in &mut nodes {
        let _ = node.stop();
    }
    outcome
}

/// The earliest offset of partition 0, as `bootstrap` answers ListOffsets
/// (Ok) or its error code (Err).
async fn earliest(bootstrap: &str, topic: &str) -> Result<Result<i64, i16>> {
    use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
    let mut conn = KafkaConnection::connect(bootstrap).await?;
    let request = kafka_protocol::messages::ListOffsetsRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_topics(vec![ListOffsetsTopic::default()
            .with_name(admin::topic_name(topic))
            .with_partitions(vec![ListOffsetsPartition::default()
                .with_partition_index(0)
                .with_timestamp(-2)])]);
    let response = conn.send(7, &request).await?;
    let p = response
        .topics
        .first()
        .and_then(|t| t.partitions.first())
        .context("ListOffsets answered no partition")?;
    Ok(if p.error_code == 0 {
        Ok(p.offset)
    } else {
        Err(p.error_code)
    })
}

/// The log start offset of partition 0 from its leader among `alive`, as
/// `witness` names it at each attempt (a new leader may first refuse, and
/// during an election Metadata may name the replica likely to win, which
/// may not: retried, bounded).
async fn await_earliest(
    bootstraps: &[String],
    witness: &str,
    topic: &str,
    alive: &[i32],
) -> Result<i64> {
    let deadline = Instant::now() + CONVERGE_WAIT_MAX;
    loop {
        let led = await_leaders(witness, topic, 1, alive).await?;
        let leader = &bootstraps[led[&0] as usize - 1];
        match earliest(leader, topic).await? {
            Ok(offset) => return Ok(offset),
            Err(code) => ensure!(Instant::now() < deadline, "ListOffsets: error {code}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_records_stay_deleted_when_the_leader_is_killed() -> Result<()> {
    let Some(mut nodes) = Broker::start_cluster(
        "deleted_records_stay_deleted_when_the_leader_is_killed",
        NODES,
        &[],
    )?
    else {
        return Ok(());
    };
    let outcome = async {
        let bootstraps: Vec<String> = nodes.iter().map(|n| n.bootstrap().to_string()).collect();
        let topic = unique_topic("delete-records");
        create_replicated(&bootstraps, &topic, 1).await?;
        let producer = idempotent_producer(&bootstraps.join(","), &[])?;
        produce_ids(&producer, &topic, 0..200, KEYS).await?;
        drop(producer);

        // DeleteRecords on the leader: the log start moves on every replica.
        let leader = leaders(&bootstraps[0], &topic).await?[&0].0;
        let mut conn = KafkaConnection::connect(&bootstraps[leader as usize - 1]).await?;
        let (error, low_watermark) = delete_records(&mut conn, &topic, 120).await?;
        ensure!(
            error == 0 && low_watermark == 120,
            "DeleteRecords: error {error}, low watermark {low_watermark}"
        );

        // The leader dies: the new one starts its log at the same offset.
        nodes[leader as usize - 1].kill9()?;
        let survivors: Vec<i32> = (1..=NODES as i32).filter(|&n| n != leader).collect();
        let witness = &bootstraps[survivors[0] as usize - 1];
        let start = await_earliest(&bootstraps, witness, &topic, &survivors).await?;
        ensure!(
            start == 120,
            "the new leader's log starts at {start}, not 120"
        );
        anyhow::Ok(())
    }
    .await;
    let outcome = keep_logs_on_error(
        "deleted_records_stay_deleted_when_the_leader_is_killed",
        &nodes,
        outcome,
    );
    for node in &mut nodes {
        let _ = node.stop();
    }
    outcome
}

/// ElectLeaders (preferred) for partition 0 of `topic`, sent to `bootstrap`:
/// the partition's error code (0: elected).
async fn elect_preferred(bootstrap: &str, topic: &str) -> Result<i16> {
    use kafka_protocol::messages::elect_leaders_request::TopicPartitions;
    let mut conn = KafkaConnection::connect(bootstrap).await?;
    let request = kafka_protocol::messages::ElectLeadersRequest::default()
        .with_election_type(0)
        .with_timeout_ms(10_000)
        .with_topic_partitions(Some(vec![TopicPartitions::default()
            .with_topic(admin::topic_name(topic))
            .with_partitions(vec![0])]));
    let response = conn.send(2, &request).await?;
    response
        .replica_election_results
        .first()
        .and_then(|t| t.partition_result.first())
        .map(|p| p.error_code)
        .context("ElectLeaders answered no partition")
}

/// ElectLeaders (preferred) for partition 0 through `bootstrap` until it is
/// done or not needed (the preferred replica may still be catching up:
/// retried, bounded).
async fn await_preferred_elected(bootstrap: &str, topic: &str) -> Result<()> {
    let deadline = Instant::now() + CONVERGE_WAIT_MAX;
    loop {
        match elect_preferred(bootstrap, topic).await? {
            0 | ELECTION_NOT_NEEDED => return Ok(()),
            code => ensure!(Instant::now() < deadline, "ElectLeaders: error {code}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Produces `batches` batches of 10 records tagged `tag` to partition 0
/// of `topic` (acks=all), each to the leader `witness` names; each must be
/// acknowledged at the next offset from `next`. A refusal before the append
/// (NOT_LEADER_OR_FOLLOWER while a new leader settles, NOT_ENOUGH_REPLICAS)
/// is retried. Returns the offset after the last.
async fn produce_batches(
    witness: &str,
    bootstraps: &[String],
    topic: &str,
    tag: &str,
    batches: usize,
    mut next: i64,
) -> Result<i64> {
    const NOT_LEADER_OR_FOLLOWER: i16 = 6;
    const NOT_ENOUGH_REPLICAS: i16 = 19;
    let deadline = Instant::now() + CONVERGE_WAIT_MAX;
    let mut sent = 0;
    while sent < batches {
        let leader = leaders(witness, topic).await?[&0].0;
        if leader < 1 {
            // No leader named during an election: ask again.
            ensure!(Instant::now() < deadline, "produce {tag}: no leader");
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        let mut conn = KafkaConnection::connect(&bootstraps[leader as usize - 1]).await?;
        while sent < batches {
            let (error, base) = produce_tagged(&mut conn, topic, tag, 10, -1).await?;
            if matches!(error, NOT_LEADER_OR_FOLLOWER | NOT_ENOUGH_REPLICAS) {
                ensure!(Instant::now() < deadline, "produce {tag}: error {error}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                break;
            }
            ensure!(
                error == 0 && base == next,
                "produce {tag}: error {error}, base offset {base}, expected {next}"
            );
            next += 10;
            sent += 1;
        }
    }
    Ok(next)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_the_log_start_moved_past_is_rebuilt_from_the_leaders_log() -> Result<()> {
    const TEST: &str = "a_replica_the_log_start_moved_past_is_rebuilt_from_the_leaders_log";
    let Some(mut nodes) = Broker::start_cluster(TEST, NODES, &[])? else {
        return Ok(());
    };
    let outcome = async {
        let bootstraps: Vec<String> = nodes.iter().map(|n| n.bootstrap().to_string()).collect();
        let all: Vec<i32> = (1..=NODES as i32).collect();
        let topic = unique_topic("rebuilt");
        create_replicated(&bootstraps, &topic, 1).await?;
        let (_, replicas) = leaders(&bootstraps[0], &topic).await?[&0].clone();
        let preferred = *replicas.first().context("no replicas")?;
        let at = |id: i32| bootstraps[id as usize - 1].clone();
        await_preferred_elected(&bootstraps[0], &topic).await?;
        await_leaders(&bootstraps[0], &topic, 1, &[preferred]).await?;

        // The preferred replica holds 0..100, then dies; 100..300 go to
        // the others, DeleteRecords moves the log start to 255 (inside the
        // batch 250..260), and 300..400 follow.
        let mut next = produce_batches(&at(preferred), &bootstraps, &topic, "a", 10, 0).await?;
        nodes[preferred as usize - 1].kill9()?;
        let survivors: Vec<i32> = all.iter().copied().filter(|&n| n != preferred).collect();
        await_leaders(&at(survivors[0]), &topic, 1, &survivors).await?;
        next = produce_batches(&at(survivors[0]), &bootstraps, &topic, "b", 20, next).await?;
        let leader = await_leaders(&at(survivors[0]), &topic, 1, &survivors).await?[&0];
        let mut conn = KafkaConnection::connect(&at(leader)).await?;
        let (error, low_watermark) = delete_records(&mut conn, &topic, 255).await?;
        ensure!(
            error == 0 && low_watermark == 255,
            "DeleteRecords: error {error}, low watermark {low_watermark}"
        );
        next = produce_batches(&at(survivors[0]), &bootstraps, &topic, "c", 10, next).await?;

        // Back, it catches up from the leader's log, and leads again.
        nodes[preferred as usize - 1].restart()?;
        await_brokers(
            &bootstraps.iter().map(String::as_str).collect::<Vec<_>>(),
            &all,
        )
        .await?;
        await_preferred_elected(&at(survivors[0]), &topic).await?;
        await_leaders(&at(preferred), &topic, 1, &[preferred]).await?;

        // It serves what the old leader served: from 255 to 400, every
        // record once, in order.
        let start = await_earliest(&bootstraps, &at(preferred), &topic, &[preferred]).await?;
        ensure!(
            start == 255,
            "the rebuilt replica's log starts at {start}, not 255"
        );
        let mut conn = KafkaConnection::connect(&at(preferred)).await?;
        let mut served = Vec::new();
        let mut from = 255;
        while from < next {
            let (error, high_watermark, records) = fetch_from(&mut conn, &topic, from).await?;
            ensure!(error == 0, "Fetch at {from}: error {error}");
            ensure!(
                high_watermark == next,
                "high watermark {high_watermark}, not {next}"
            );
            let got: Vec<(i64, String)> = records.into_iter().filter(|(o, _)| *o >= from).collect();
            ensure!(!got.is_empty(), "Fetch at {from} served nothing");
            from = got.last().map_or(from, |(o, _)| o + 1);
            served.extend(got);
        }
        let expected: Vec<(i64, String)> = (255..next)
            .map(|o| {
                let (tag, base) = if o < 300 { ("b", 100) } else { ("c", 300) };
                (o, format!("{tag} record {}", (o - base) % 10))
            })
            .collect();
        ensure!(
            served == expected,
            "served {} records ({:?}..), expected {} ({:?}..)",
            served.len(),
            served.first(),
            expected.len(),
            expected.first()
        );
        anyhow::Ok(())
    }
    .await;
    let outcome = keep_logs_on_error(TEST, &nodes, outcome);
    for node in &mut nodes {
        let _ = node.stop();
    }
    outcome
}
