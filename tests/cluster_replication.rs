//! Partitions replicated over three `fjord` processes, each partition a
//! Raft group: stock idempotent producers (acks=all) keep writing through
//! the kill -9 of a partition's leader, a killed node that comes back
//! catches up and can be part of the next majority, and every acknowledged
//! record reads back exactly once, in order. With `min.insync.replicas`
//! above the replicas alive, acks=all is refused with NOT_ENOUGH_REPLICAS.
//! A consumer group's committed offsets survive the kill of its
//! coordinator: the new leader of its offsets partition replays them.
//!
//! Safety only: how long a failover takes is measured in the benchmark.

mod common;

use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _, Result};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::ProduceRequest;

use common::cluster::{await_leaders, coordinator, leaders, CONVERGE_WAIT_MAX};
use common::kafka_rpc::{admin, KafkaConnection};
use common::{
    assert_exactly_acked, consume_all, produce_ids, producer, unique_topic, Broker,
    BULK_PRODUCER_SETTINGS,
};

const NODES: usize = 3;
const PARTITIONS: i32 = 3;
const ROUND: u64 = 300;
const KEYS: u64 = 30;
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_records_survive_leader_kills_and_a_returning_node_catches_up() -> Result<()> {
    let Some(mut nodes) = Broker::start_cluster(
        "acknowledged_records_survive_leader_kills_and_a_returning_node_catches_up",
        NODES,
        &[],
    )?
    else {
        return Ok(());
    };
    let bootstraps: Vec<String> = nodes.iter().map(|n| n.bootstrap().to_string()).collect();
    let everyone = bootstraps.join(",");
    let topic = unique_topic("replicated");
    let mut conn = KafkaConnection::connect(&bootstraps[0]).await?;
    // The default replication factor: min(3, voters).
    let created = admin::create_topic(&mut conn, &topic, PARTITIONS, &[], false).await?;
    ensure!(created.error_code == 0, "CreateTopics: {created:?}");
    let all_ids: Vec<i32> = (1..=NODES as i32).collect();
    await_leaders(&bootstraps[0], &topic, PARTITIONS, &all_ids).await?;
    for (p, (_, replicas)) in leaders(&bootstraps[1], &topic).await? {
        ensure!(
            replicas.len() == 3,
            "partition {p} has replicas {replicas:?}"
        );
    }

    let idempotent: Vec<(&str, &str)> = BULK_PRODUCER_SETTINGS
        .iter()
        .copied()
        .chain([
            ("enable.idempotence", "true"),
            ("message.timeout.ms", "60000"),
        ])
        .collect();
    let producer = producer(&everyone, &idempotent)?;
    let mut acks = produce_ids(&producer, &topic, 0..ROUND, KEYS).await?;

    // kill -9 the leader of partition 0: its partitions elect new leaders
    // among the other two, and the producer carries on.
    let led = leaders(&bootstraps[1], &topic).await?;
    let victim = led.get(&0).context("partition 0")?.0;
    ensure!(victim >= 1, "partition 0 has no leader: {led:?}");
    nodes[victim as usize - 1].kill9()?;
    let survivors: Vec<i32> = all_ids.iter().copied().filter(|&n| n != victim).collect();
    let witness = &bootstraps[survivors[0] as usize - 1];
    await_leaders(witness, &topic, PARTITIONS, &survivors).await?;
    acks.extend(produce_ids(&producer, &topic, ROUND..2 * ROUND, KEYS).await?);
    let records = consume_all(witness, &topic, PARTITIONS, CONVERGE_WAIT_MAX).await?;
    assert_exactly_acked(&acks, &records, KEYS)?;

    // The killed node comes back with its data, catches up, and is then
    // needed: another node is killed, so it is part of every majority.
    nodes[victim as usize - 1].spawn_again()?;
    nodes[victim as usize - 1].wait_ready()?;
    acks.extend(produce_ids(&producer, &topic, 2 * ROUND..3 * ROUND, KEYS).await?);
    let second = survivors[1];
    nodes[second as usize - 1].kill9()?;
    let remaining: Vec<i32> = all_ids.iter().copied().filter(|&n| n != second).collect();
    let returned = &bootstraps[victim as usize - 1];
    await_leaders(returned, &topic, PARTITIONS, &remaining).await?;
    acks.extend(produce_ids(&producer, &topic, 3 * ROUND..4 * ROUND, KEYS).await?);
    let records = consume_all(returned, &topic, PARTITIONS, CONVERGE_WAIT_MAX).await?;
    assert_exactly_acked(&acks, &records, KEYS)?;
    drop(producer);

    // min.insync.replicas=3 with a node down: acks=all is refused.
    let strict = unique_topic("strict");
    let mut conn = KafkaConnection::connect(returned).await?;
    nodes[second as usize - 1].spawn_again()?;
    nodes[second as usize - 1].wait_ready()?;
    let everyone_up: Vec<&str> = bootstraps.iter().map(String::as_str).collect();
    common::cluster::await_brokers(&everyone_up, &all_ids).await?;
    let created = admin::create_topic(
        &mut conn,
        &strict,
        1,
        &[("min.insync.replicas", "3")],
        false,
    )
    .await?;
    ensure!(created.error_code == 0, "CreateTopics: {created:?}");
    let led = await_leaders(returned, &strict, 1, &all_ids).await?;
    let leader = led[&0];
    let follower = all_ids
        .iter()
        .copied()
        .find(|&n| n != leader)
        .context("a follower")?;
    nodes[follower as usize - 1].kill9()?;
    let mut leader_conn = KafkaConnection::connect(&bootstraps[leader as usize - 1]).await?;
    let started = Instant::now();
    loop {
        let code = produce_one(&mut leader_conn, &strict).await?;
        if code == ResponseError::NotEnoughReplicas.code() {
            break;
        }
        ensure!(
            code == 0 && started.elapsed() < CONVERGE_WAIT_MAX,
            "acks=all with a replica of 3 down answered {code}, not NOT_ENOUGH_REPLICAS"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for node in &mut nodes {
        let _ = node.stop();
    }
    Ok(())
}

/// Waits until every partition of `topic` is led by its first replica, as
/// `bootstrap` reports it.
async fn await_preferred_leaders(bootstrap: &str, topic: &str) -> Result<()> {
    let started = Instant::now();
    loop {
        let seen = leaders(bootstrap, topic).await.unwrap_or_default();
        if !seen.is_empty() && seen.values().all(|(l, r)| r.first() == Some(l)) {
            return Ok(());
        }
        ensure!(
            started.elapsed() < CONVERGE_WAIT_MAX,
            "partitions of {topic} not led by their preferred replicas: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A rolling restart with SIGTERM: each node in turn hands the partitions
/// it leads to another replica before it exits (controlled shutdown), so
/// the moment it is gone the survivors already name a new leader for each
/// of them (an election after a crash would take at least the election
/// timeout); the idempotent producer writing meanwhile loses nothing. Each
/// partition's preferred leader leads first, and leads again once the
/// restarts are over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_hands_leaderships_over_before_each_node_stops() -> Result<()> {
    let Some(mut nodes) = Broker::start_cluster(
        "a_rolling_restart_hands_leaderships_over_before_each_node_stops",
        NODES,
        &["--override", "leader.imbalance.check.interval.seconds=1"],
    )?
    else {
        return Ok(());
    };
    let bootstraps: Vec<String> = nodes.iter().map(|n| n.bootstrap().to_string()).collect();
    let everyone = bootstraps.join(",");
    let topic = unique_topic("rolling");
    let mut conn = KafkaConnection::connect(&bootstraps[0]).await?;
    let created = admin::create_topic(&mut conn, &topic, PARTITIONS, &[], false).await?;
    ensure!(created.error_code == 0, "CreateTopics: {created:?}");
    let all_ids: Vec<i32> = (1..=NODES as i32).collect();
    await_leaders(&bootstraps[0], &topic, PARTITIONS, &all_ids).await?;
    // Each partition's first replica (its preferred leader) leads first.
    await_preferred_leaders(&bootstraps[0], &topic).await?;
    let idempotent: Vec<(&str, &str)> = BULK_PRODUCER_SETTINGS
        .iter()
        .copied()
        .chain([("enable.idempotence", "true")])
        .collect();
    let producer = producer(&everyone, &idempotent)?;
    let mut acks = produce_ids(&producer, &topic, 0..ROUND, KEYS).await?;
    let mut next = ROUND;

    for victim in all_ids.iter().copied() {
        // Settled first: the node that returned last leads its partitions
        // again (no hand-over is still under way).
        await_preferred_leaders(&bootstraps[0], &topic).await?;
        let led = await_leaders(&bootstraps[0], &topic, PARTITIONS, &all_ids).await?;
        let survivors: Vec<i32> = all_ids.iter().copied().filter(|&n| n != victim).collect();
        nodes[victim as usize - 1].stop()?;
        // The node has exited: a partition it led shows a new leader on a
        // survivor at once (the new leader knows first, so ask both).
        let mut views = Vec::new();
        for &s in &survivors {
            views.push(leaders(&bootstraps[s as usize - 1], &topic).await?);
        }
        for (&p, &old) in led.iter().filter(|(_, &l)| l == victim) {
            let moved = views.iter().any(|view| {
                view.get(&p)
                    .is_some_and(|(l, _)| survivors.contains(l) && *l != old)
            });
            ensure!(
                moved,
                "partition {p} was led by node {victim}, which exited, and no survivor names a \
                 new leader: {views:?}; its output:\n{}",
                nodes[victim as usize - 1].log_tail()
            );
        }
        acks.extend(produce_ids(&producer, &topic, next..next + ROUND, KEYS).await?);
        next += ROUND;
        nodes[victim as usize - 1].spawn_again()?;
        nodes[victim as usize - 1].wait_ready()?;
    }
    // The node that returned leads nothing until the leaders hand its
    // partitions back (auto.leader.rebalance.enable, checked every second).
    await_preferred_leaders(&bootstraps[0], &topic).await?;
    acks.extend(produce_ids(&producer, &topic, next..next + ROUND, KEYS).await?);
    drop(producer);
    let records = consume_all(&bootstraps[2], &topic, PARTITIONS, CONVERGE_WAIT_MAX).await?;
    assert_exactly_acked(&acks, &records, KEYS)?;
    for node in &mut nodes {
        let _ = node.stop();
    }
    Ok(())
}

/// One acks=all produce of one record to partition 0; its error code.
async fn produce_one(conn: &mut KafkaConnection, topic: &str) -> Result<i16> {
    let batch = common::bulk::batch(1, topic, fjord::broker::now_ms())?;
    let request = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(10_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(admin::topic_name(topic))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(batch))])]);
    let response = conn.send(9, &request).await?;
    response
        .responses
        .first()
        .and_then(|t| t.partition_responses.first())
        .map(|p| p.error_code)
        .context("produce response without a partition")
}

/// A simple consumer's commit (no generation) of `offset` for partition 0.
async fn commit(conn: &mut KafkaConnection, group: &str, topic: &str, offset: i64) -> Result<i16> {
    use kafka_protocol::messages::offset_commit_request::{
        OffsetCommitRequestPartition, OffsetCommitRequestTopic,
    };
    let request = kafka_protocol::messages::OffsetCommitRequest::default()
        .with_group_id(kafka_protocol::messages::GroupId(admin::s(group)))
        .with_generation_id_or_member_epoch(-1)
        .with_topics(vec![OffsetCommitRequestTopic::default()
            .with_name(admin::topic_name(topic))
            .with_partitions(vec![OffsetCommitRequestPartition::default()
                .with_partition_index(0)
                .with_committed_offset(offset)])]);
    let response = conn.send(8, &request).await?;
    response
        .topics
        .first()
        .and_then(|t| t.partitions.first())
        .map(|p| p.error_code)
        .context("commit response without a partition")
}

/// The committed offset of partition 0 (or an error code).
async fn fetch(conn: &mut KafkaConnection, group: &str, topic: &str) -> Result<Result<i64, i16>> {
    use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
    let request = kafka_protocol::messages::OffsetFetchRequest::default()
        .with_group_id(kafka_protocol::messages::GroupId(admin::s(group)))
        .with_topics(Some(vec![OffsetFetchRequestTopic::default()
            .with_name(admin::topic_name(topic))
            .with_partition_indexes(vec![0])]));
    let response = conn.send(7, &request).await?;
    if response.error_code != 0 {
        return Ok(Err(response.error_code));
    }
    let p = response
        .topics
        .first()
        .and_then(|t| t.partitions.first())
        .context("fetch response without a partition")?;
    Ok(if p.error_code == 0 {
        Ok(p.committed_offset)
    } else {
        Err(p.error_code)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_offsets_survive_the_kill_of_the_coordinator() -> Result<()> {
    let Some(mut nodes) = Broker::start_cluster(
        "committed_offsets_survive_the_kill_of_the_coordinator",
        NODES,
        &[],
    )?
    else {
        return Ok(());
    };
    let bootstraps: Vec<String> = nodes.iter().map(|n| n.bootstrap().to_string()).collect();
    let topic = unique_topic("coordinated");
    let group = unique_topic("group");
    let mut conn = KafkaConnection::connect(&bootstraps[0]).await?;
    let created = admin::create_topic(&mut conn, &topic, 1, &[], false).await?;
    ensure!(created.error_code == 0, "CreateTopics: {created:?}");

    // Commits through the coordinator, each one a new offset, after the
    // other nodes loaded what they hold.
    let first = coordinator(&bootstraps[0], &group).await?;
    let mut conn = KafkaConnection::connect(&bootstraps[first as usize - 1]).await?;
    let started = Instant::now();
    for offset in 1..=20 {
        loop {
            let code = commit(&mut conn, &group, &topic, offset).await?;
            if code == 0 {
                break;
            }
            // Retriable while the coordinator finishes loading.
            ensure!(
                code == ResponseError::CoordinatorLoadInProgress.code()
                    && started.elapsed() < CONVERGE_WAIT_MAX,
                "commit {offset}: error {code}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // kill -9 the coordinator: the new leader of the group's offsets
    // partition takes over with every committed offset.
    nodes[first as usize - 1].kill9()?;
    let witness = &bootstraps[if first == 1 { 1 } else { 0 }];
    let started = Instant::now();
    let next = loop {
        let next = coordinator(witness, &group).await?;
        if next != first {
            break next;
        }
        ensure!(
            started.elapsed() < CONVERGE_WAIT_MAX,
            "the dead node {first} is still named the coordinator"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut conn = KafkaConnection::connect(&bootstraps[next as usize - 1]).await?;
    let started = Instant::now();
    loop {
        match fetch(&mut conn, &group, &topic).await? {
            Ok(offset) => {
                ensure!(
                    offset == 20,
                    "the new coordinator {next} has offset {offset}, not 20"
                );
                break;
            }
            Err(code) => ensure!(
                code == ResponseError::CoordinatorLoadInProgress.code()
                    && started.elapsed() < CONVERGE_WAIT_MAX,
                "OffsetFetch on the new coordinator {next}: error {code}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for node in &mut nodes {
        let _ = node.stop();
    }
    Ok(())
}
