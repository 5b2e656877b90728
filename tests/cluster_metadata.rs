//! Three `fjord` processes form one cluster through the metadata group: they
//! agree on the cluster id, the controller and the brokers; a topic created
//! through one node is on every node with the same replica assignment, its
//! partitions spread over the nodes, and stock clients produce to and
//! consume from each partition's leader; a consumer group is coordinated by
//! the leader of its `__consumer_offsets` partition; a node holding another
//! cluster's data refuses to start; a node restarted with its data rejoins;
//! a broker-only node joins without restarting the others and takes
//! partitions; a topic deleted through one node leaves every node's disk.
//!
//! Topics here have one replica per partition; `cluster_replication.rs`
//! covers replicated ones.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _, Result};
use kafka_protocol::messages::DescribeClusterRequest;

use common::kafka_rpc::{admin, KafkaConnection};
use common::{
    assert_exactly_acked, consume_all, produce_ids, producer, unique_topic, Broker,
    BULK_PRODUCER_SETTINGS,
};

const NODES: usize = 3;
const PARTITIONS: i32 = 6;
const MESSAGES: u64 = 600;
const KEYS: u64 = 60;
/// Bound for the cluster to converge on a change (every node applies it).
const CONVERGE_WAIT_MAX: Duration = Duration::from_secs(30);
const EXIT_WAIT_MAX: Duration = Duration::from_secs(60);

/// What one node answers about the cluster.
#[derive(Debug, PartialEq, Eq)]
struct View {
    cluster_id: String,
    controller: i32,
    brokers: BTreeSet<i32>,
    /// Each partition's replicas, of the topic asked about.
    replicas: Vec<Vec<i32>>,
}

async fn view(bootstrap: &str, topic: &str) -> Result<View> {
    let mut conn = KafkaConnection::connect(bootstrap).await?;
    let metadata = common::cluster::topic_metadata(&mut conn, topic).await?;
    let described = conn.send(0, &DescribeClusterRequest::default()).await?;
    ensure!(
        described.cluster_id.as_str() == metadata.cluster_id.as_deref().unwrap_or_default(),
        "DescribeCluster and Metadata disagree on the cluster id"
    );
    ensure!(
        described.controller_id == metadata.controller_id,
        "DescribeCluster and Metadata disagree on the controller"
    );
    let mut replicas = Vec::new();
    for t in &metadata.topics {
        if t.error_code == 0 {
            let mut partitions = t.partitions.clone();
            partitions.sort_by_key(|p| p.partition_index);
            replicas = partitions
                .iter()
                .map(|p| p.replica_nodes.iter().map(|b| b.0).collect())
                .collect();
        }
    }
    Ok(View {
        cluster_id: described.cluster_id.to_string(),
        controller: metadata.controller_id.0,
        brokers: metadata.brokers.iter().map(|b| b.node_id.0).collect(),
        replicas,
    })
}

/// Waits (bounded) until every node answers the same view and `accept`
/// takes it; that view.
async fn converged(nodes: &[&str], topic: &str, accept: impl Fn(&View) -> bool) -> Result<View> {
    let started = Instant::now();
    loop {
        let mut views = Vec::new();
        for node in nodes {
            views.push(view(node, topic).await);
        }
        let last = match views.pop() {
            Some(Ok(v)) => v,
            Some(Err(e)) => Err(e)?,
            None => anyhow::bail!("no nodes"),
        };
        let agree = views.iter().all(|v| v.as_ref().is_ok_and(|v| *v == last));
        if agree && accept(&last) {
            return Ok(last);
        }
        ensure!(
            started.elapsed() < CONVERGE_WAIT_MAX,
            "nodes did not converge within {CONVERGE_WAIT_MAX:?}: {views:?} / {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// CreateTopics (v7) of one topic with a replication factor.
async fn create_topic(
    conn: &mut KafkaConnection,
    name: &str,
    partitions: i32,
    replication_factor: i16,
) -> Result<kafka_protocol::messages::CreateTopicsResponse> {
    use kafka_protocol::messages::create_topics_request::CreatableTopic;
    let request = kafka_protocol::messages::CreateTopicsRequest::default()
        .with_timeout_ms(30_000)
        .with_topics(vec![CreatableTopic::default()
            .with_name(admin::topic_name(name))
            .with_num_partitions(partitions)
            .with_replication_factor(replication_factor)]);
    conn.send(7, &request).await
}

/// The controllers (metadata voters) a node lists in DescribeCluster.
async fn controllers(bootstrap: &str) -> Result<BTreeSet<i32>> {
    let mut conn = KafkaConnection::connect(bootstrap).await?;
    let described = conn
        .send(1, &DescribeClusterRequest::default().with_endpoint_type(2))
        .await?;
    ensure!(described.error_code == 0, "{described:?}");
    Ok(described.brokers.iter().map(|b| b.broker_id.0).collect())
}

/// Partition directories of `topic` under a node's data directory.
fn partition_dirs(data: &Path, topic: &str) -> Result<BTreeSet<String>> {
    let mut found = BTreeSet::new();
    for entry in std::fs::read_dir(data)? {
        let name = entry?.file_name().to_string_lossy().to_string();
        if name
            .strip_prefix(topic)
            .and_then(|rest| rest.strip_prefix('-'))
            .is_some_and(|p| p.parse::<i32>().is_ok())
        {
            found.insert(name);
        }
    }
    Ok(found)
}

fn set_cluster_id(data: &Path, id: &str) -> Result<String> {
    let path = data.join("meta.properties");
    let text = std::fs::read_to_string(&path)?;
    let old = text
        .lines()
        .find_map(|l| l.strip_prefix("cluster.id="))
        .context("no cluster.id")?
        .to_string();
    std::fs::write(&path, text.replace(&old, id))?;
    Ok(old)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_share_metadata_and_refuse_a_foreign_node() -> Result<()> {
    let Some(mut nodes) = Broker::start_cluster(
        "three_nodes_share_metadata_and_refuse_a_foreign_node",
        NODES,
        &[],
    )?
    else {
        return Ok(());
    };
    let bootstraps: Vec<String> = nodes.iter().map(|n| n.bootstrap().to_string()).collect();
    let all: Vec<&str> = bootstraps.iter().map(String::as_str).collect();
    let topic = unique_topic("cluster-meta");

    // One cluster id, one controller, three brokers, seen from every node.
    let formed = converged(&all, &topic, |v| v.brokers.len() == NODES).await?;
    ensure!(formed.cluster_id.len() == 22, "{formed:?}");
    ensure!(formed.brokers.contains(&formed.controller), "{formed:?}");

    // A topic created through node 2 is on every node, spread evenly.
    let mut conn = KafkaConnection::connect(all[1]).await?;
    let created = create_topic(&mut conn, &topic, PARTITIONS, 1).await?;
    ensure!(
        created.topics.iter().all(|t| t.error_code == 0),
        "CreateTopics: {:?}",
        created.topics
    );
    let placed = converged(&all, &topic, |v| v.replicas.len() == PARTITIONS as usize).await?;
    let mut leaders: BTreeMap<i32, usize> = BTreeMap::new();
    for replicas in &placed.replicas {
        ensure!(replicas.len() == 1, "{placed:?}");
        *leaders.entry(replicas[0]).or_default() += 1;
    }
    ensure!(
        leaders.values().all(|&n| n == PARTITIONS as usize / NODES) && leaders.len() == NODES,
        "partitions are not spread evenly: {leaders:?}"
    );
    // Each node holds exactly the partitions assigned to it.
    for (i, node) in nodes.iter().enumerate() {
        let id = i as i32 + 1;
        let expected: BTreeSet<String> = placed
            .replicas
            .iter()
            .enumerate()
            .filter(|(_, r)| r.contains(&id))
            .map(|(p, _)| format!("{topic}-{p}"))
            .collect();
        let data = node.data_dir().context("data dir")?;
        let started = Instant::now();
        while partition_dirs(&data, &topic)? != expected {
            ensure!(
                started.elapsed() < CONVERGE_WAIT_MAX,
                "node {id} holds {:?}, expected {expected:?}",
                partition_dirs(&data, &topic)?
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // More replicas than alive brokers is refused.
    let refused = create_topic(&mut conn, &format!("{topic}-rf4"), 1, 4).await?;
    ensure!(
        refused.topics[0].error_code
            == kafka_protocol::error::ResponseError::InvalidReplicationFactor.code(),
        "{:?}",
        refused.topics
    );

    // Stock clients find each partition's leader: every record reads back.
    let acks = {
        let producer = producer(all[0], BULK_PRODUCER_SETTINGS)?;
        produce_ids(&producer, &topic, 0..MESSAGES, KEYS).await?
    };
    let records = consume_all(all[2], &topic, PARTITIONS, CONVERGE_WAIT_MAX).await?;
    assert_exactly_acked(&acks, &records, KEYS)?;

    // A consumer group: every node names the same coordinator (the leader
    // of the group's __consumer_offsets partition), the others answer
    // NOT_COORDINATOR, and a subscribed consumer reads and commits it all.
    let group = unique_topic("cluster-group");
    let mut coordinators = BTreeSet::new();
    for node in &all {
        let mut conn = KafkaConnection::connect(node).await?;
        let found = conn
            .send(
                3,
                &kafka_protocol::messages::FindCoordinatorRequest::default()
                    .with_key(admin::s(&group)),
            )
            .await?;
        ensure!(
            found.error_code == 0,
            "FindCoordinator on {node}: {found:?}"
        );
        coordinators.insert(found.node_id.0);
    }
    ensure!(coordinators.len() == 1, "coordinators {coordinators:?}");
    let coordinator = *coordinators.first().context("a coordinator")?;
    for (i, node) in all.iter().enumerate() {
        let mut conn = KafkaConnection::connect(node).await?;
        let answer = conn
            .send(
                4,
                &kafka_protocol::messages::HeartbeatRequest::default()
                    .with_group_id(kafka_protocol::messages::GroupId(admin::s(&group)))
                    .with_member_id(admin::s("nobody"))
                    .with_generation_id(1),
            )
            .await?;
        let expected = if i as i32 + 1 == coordinator {
            kafka_protocol::error::ResponseError::UnknownMemberId.code()
        } else {
            kafka_protocol::error::ResponseError::NotCoordinator.code()
        };
        ensure!(
            answer.error_code == expected,
            "Heartbeat on node {}: {answer:?}",
            i + 1
        );
    }
    {
        use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
        let consumer: StreamConsumer =
            common::consumer_config(all[1], &[("group.id", &group)]).create()?;
        consumer.subscribe(&[&topic])?;
        let seen = common::consume_count(&consumer, MESSAGES as usize, CONVERGE_WAIT_MAX).await?;
        assert_exactly_acked(&acks, &seen, KEYS)?;
        let mut next: BTreeMap<i32, i64> = BTreeMap::new();
        for r in &seen {
            let at = next.entry(r.partition).or_default();
            *at = (*at).max(r.offset + 1);
        }
        let mut tpl = rdkafka::TopicPartitionList::new();
        for (p, o) in &next {
            tpl.add_partition_offset(&topic, *p, rdkafka::Offset::Offset(*o))?;
        }
        consumer.commit(&tpl, CommitMode::Sync)?;
        let committed = consumer.committed(Duration::from_secs(10))?;
        let total: i64 = committed
            .elements()
            .iter()
            .map(|e| match e.offset() {
                rdkafka::Offset::Offset(o) => o,
                _ => 0,
            })
            .sum();
        ensure!(total == MESSAGES as i64, "committed {total} of {MESSAGES}");
    }

    // Node 3 with another cluster's id refuses to start, and says why.
    let data3 = nodes[2].data_dir().context("data dir")?;
    nodes[2].stop()?;
    let ours = set_cluster_id(&data3, "AAAAAAAAAAAAAAAAAAAAAA")?;
    nodes[2].spawn_again()?;
    let status = nodes[2].wait_exit(EXIT_WAIT_MAX)?;
    ensure!(!status.success(), "a foreign node started: {status}");
    let log = nodes[2].log_text();
    ensure!(
        log.contains("AAAAAAAAAAAAAAAAAAAAAA") && log.contains(&ours) && log.contains("refuse"),
        "the refusal does not name both clusters:\n{}",
        nodes[2].log_tail()
    );

    // With its own data back, node 3 rejoins and serves its partitions.
    set_cluster_id(&data3, &ours)?;
    nodes[2].spawn_again()?;
    nodes[2].wait_ready()?;
    let rejoined = converged(&all, &topic, |v| v.brokers.len() == NODES).await?;
    ensure!(rejoined.cluster_id == formed.cluster_id, "{rejoined:?}");
    let again = consume_all(all[0], &topic, PARTITIONS, CONVERGE_WAIT_MAX).await?;
    assert_exactly_acked(&acks, &again, KEYS)?;

    // A broker-only node (not a voter) joins without restarting anyone:
    // every node lists it, and new topics place partitions on it.
    let learner = Broker::join_cluster(&nodes, 4, &[])?;
    let mut everyone = all.clone();
    everyone.push(learner.bootstrap());
    converged(&everyone, &topic, |v| v.brokers.len() == NODES + 1).await?;
    let wider = unique_topic("cluster-wider");
    let mut conn = KafkaConnection::connect(learner.bootstrap()).await?;
    let created = create_topic(&mut conn, &wider, 8, 1).await?;
    ensure!(
        created.topics.iter().all(|t| t.error_code == 0),
        "CreateTopics through the broker-only node: {:?}",
        created.topics
    );
    let spread = converged(&everyone, &wider, |v| v.replicas.len() == 8).await?;
    let on_learner = spread.replicas.iter().filter(|r| r.contains(&4)).count();
    ensure!(
        on_learner == 2,
        "node 4 got {on_learner} of 8 partitions: {spread:?}"
    );

    // `fjord cluster add-voter` makes it a voter, seen by every node as a
    // controller in DescribeCluster (endpoint type 2).
    ensure!(
        controllers(all[0]).await? == BTreeSet::from([1, 2, 3]),
        "voters before: {:?}",
        controllers(all[0]).await?
    );
    let added = std::process::Command::new(env!("CARGO_BIN_EXE_fjord"))
        .args([
            "cluster",
            "add-voter",
            "--node-id",
            "4",
            "--bootstrap-server",
            all[1],
        ])
        .output()?;
    ensure!(added.status.success(), "add-voter failed: {added:?}");
    let started = Instant::now();
    for node in &everyone {
        while controllers(node).await? != BTreeSet::from([1, 2, 3, 4]) {
            ensure!(
                started.elapsed() < CONVERGE_WAIT_MAX,
                "{node} lists controllers {:?}",
                controllers(node).await?
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    drop(learner);

    // A broker-only node holding another cluster's data is refused by the
    // voters and exits, naming both clusters.
    let mut foreign = Broker::prepare_join(&nodes, 5, &[])?;
    let data5 = foreign.data_dir().context("data dir")?;
    std::fs::create_dir_all(&data5)?;
    std::fs::write(
        data5.join("meta.properties"),
        "version=1\ncluster.id=BBBBBBBBBBBBBBBBBBBBBB\nnode.id=5\n",
    )?;
    foreign.spawn_again()?;
    let status = foreign.wait_exit(EXIT_WAIT_MAX)?;
    ensure!(
        !status.success(),
        "a foreign broker-only node started: {status}"
    );
    let log = foreign.log_text();
    ensure!(
        log.contains("BBBBBBBBBBBBBBBBBBBBBB")
            && log.contains(&formed.cluster_id)
            && log.contains("refuse"),
        "the refusal does not name both clusters:\n{}",
        foreign.log_tail()
    );

    // Deleted through node 1: gone from every node's metadata and disk.
    let mut conn = KafkaConnection::connect(all[0]).await?;
    let deleted = conn
        .send(
            4,
            &kafka_protocol::messages::DeleteTopicsRequest::default()
                .with_timeout_ms(30_000)
                .with_topic_names(vec![admin::topic_name(&topic)]),
        )
        .await?;
    ensure!(
        deleted.responses.iter().all(|r| r.error_code == 0),
        "{:?}",
        deleted.responses
    );
    converged(&all, &topic, |v| v.replicas.is_empty()).await?;
    for (i, node) in nodes.iter().enumerate() {
        let data = node.data_dir().context("data dir")?;
        let started = Instant::now();
        while !partition_dirs(&data, &topic)?.is_empty() {
            ensure!(
                started.elapsed() < CONVERGE_WAIT_MAX,
                "node {} still holds {:?}",
                i + 1,
                partition_dirs(&data, &topic)?
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn voters_started_one_by_one_form_the_cluster_and_keep_it_across_a_full_restart() -> Result<()>
{
    let Some(mut nodes) = Broker::prepare_cluster(
        "voters_started_one_by_one_form_the_cluster_and_keep_it_across_a_full_restart",
        NODES,
        &[],
    )?
    else {
        return Ok(());
    };
    let bootstraps: Vec<String> = nodes.iter().map(|n| n.bootstrap().to_string()).collect();
    let all: Vec<&str> = bootstraps.iter().map(String::as_str).collect();
    let topic = unique_topic("one-by-one");

    // Node 3 alone waits for a quorum; node 1 makes two of three.
    nodes[2].spawn_again()?;
    nodes[2].wait_log("waiting for the metadata quorum")?;
    nodes[0].spawn_again()?;
    nodes[0].wait_ready()?;
    nodes[2].wait_ready()?;
    let two = converged(&all[..1], &topic, |v| v.brokers.len() == 2).await?;
    converged(&[all[0], all[2]], &topic, |v| *v == two).await?;
    common::create_topic(all[2], &topic, 4).await?;
    let acks = {
        let producer = producer(all[0], BULK_PRODUCER_SETTINGS)?;
        produce_ids(&producer, &topic, 0..100, 10).await?
    };

    // Node 2 comes later and catches up with everything.
    nodes[1].spawn_again()?;
    nodes[1].wait_ready()?;
    let three = converged(&all, &topic, |v| {
        v.brokers.len() == NODES && v.replicas.len() == 4
    })
    .await?;
    ensure!(three.cluster_id == two.cluster_id, "{two:?} / {three:?}");

    // All stop; they start again in another order, on their data.
    for node in &mut nodes {
        node.stop()?;
    }
    for i in [1, 2, 0] {
        nodes[i].spawn_again()?;
    }
    for node in &mut nodes {
        node.wait_ready()?;
    }
    let again = converged(&all, &topic, |v| v.brokers.len() == NODES).await?;
    ensure!(
        again.cluster_id == three.cluster_id && again.replicas == three.replicas,
        "{three:?} / {again:?}"
    );
    let records = consume_all(all[1], &topic, 4, CONVERGE_WAIT_MAX).await?;
    assert_exactly_acked(&acks, &records, 10)?;

    // `fjord cluster status` shows the three brokers and the controller.
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_fjord"))
        .args(["cluster", "status", "--bootstrap-server", all[2]])
        .output()?;
    let text = String::from_utf8_lossy(&status.stdout).to_string();
    ensure!(status.status.success(), "cluster status failed: {status:?}");
    ensure!(
        text.contains(&format!(
            "ClusterId: {}\tController: {}\tBrokers: 3",
            again.cluster_id, again.controller
        )) && (1..=3).all(|id| text.contains(&format!("\tBroker: {id}\t"))),
        "{text}"
    );
    Ok(())
}

/// KIP-951: a produce or fetch sent to a node that does not lead the
/// partition (a follower, or a node with no replica at all) is refused
/// with NOT_LEADER_OR_FOLLOWER naming the leader and its epoch, and the
/// response carries the leader's endpoint, so a client can go there without
/// asking for metadata first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_produce_or_fetch_names_the_leader_and_its_endpoint() -> Result<()> {
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::{BrokerId, FetchRequest, ProduceRequest};
    let Some(mut nodes) = Broker::start_cluster(
        "a_refused_produce_or_fetch_names_the_leader_and_its_endpoint",
        NODES,
        &[],
    )?
    else {
        return Ok(());
    };
    let bootstraps: Vec<String> = nodes.iter().map(|n| n.bootstrap().to_string()).collect();
    // One replica: two nodes hold none. Three: two are followers.
    for rf in ["1", "3"] {
        let topic = unique_topic(&format!("hint-rf{rf}"));
        let mut conn = KafkaConnection::connect(&bootstraps[0]).await?;
        let created =
            admin::create_topic_with_replication(&mut conn, &topic, 1, rf.parse()?).await?;
        ensure!(created.error_code == 0, "CreateTopics: {created:?}");
        let all: Vec<i32> = (1..=NODES as i32).collect();
        let led = common::cluster::await_leaders(&bootstraps[0], &topic, 1, &all).await?;
        let leader = led[&0];
        // The leader has settled once it takes a write: its epoch then (a
        // new group's first leader may show the term before its own
        // election for a moment).
        let settle = producer(&bootstraps[leader as usize - 1], &[])?;
        produce_ids(&settle, &topic, 0..1, 1).await?;
        let epoch =
            common::cluster::partitions(&bootstraps[leader as usize - 1], &topic).await?[&0].epoch;
        for other in all.iter().copied().filter(|&n| n != leader) {
            let mut conn = KafkaConnection::connect(&bootstraps[other as usize - 1]).await?;
            // The others learn the leader from its heartbeat report.
            let started = Instant::now();
            let produced = loop {
                let request = ProduceRequest::default()
                    .with_acks(-1)
                    .with_timeout_ms(5_000)
                    .with_topic_data(vec![TopicProduceData::default()
                        .with_name(admin::topic_name(&topic))
                        .with_partition_data(vec![PartitionProduceData::default()
                            .with_index(0)
                            .with_records(Some(common::bulk::batch(
                                1,
                                &topic,
                                fjord::broker::now_ms(),
                            )?))])]);
                let response = conn.send(11, &request).await?;
                let p = response.responses[0].partition_responses[0].clone();
                if p.current_leader.leader_id.0 >= 0 || started.elapsed() > CONVERGE_WAIT_MAX {
                    break (p, response.node_endpoints);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            let (p, endpoints) = produced;
            ensure!(
                p.error_code == kafka_protocol::error::ResponseError::NotLeaderOrFollower.code(),
                "rf {rf}: produce to node {other} answered {}",
                p.error_code
            );
            ensure!(
                p.current_leader.leader_id.0 == leader && p.current_leader.leader_epoch == epoch,
                "rf {rf}: node {other} names leader {:?}, not {leader} in epoch {epoch}",
                p.current_leader
            );
            let port = bootstraps[leader as usize - 1]
                .rsplit(':')
                .next()
                .context("port")?;
            ensure!(
                endpoints
                    .iter()
                    .any(|e| e.node_id.0 == leader && e.port.to_string() == port),
                "rf {rf}: node {other}'s produce answer lacks the leader's endpoint: {endpoints:?}"
            );
            let fetch = FetchRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_max_wait_ms(0)
                .with_topics(vec![FetchTopic::default()
                    .with_topic_id(common::cluster::topic_id(&bootstraps[0], &topic).await?)
                    .with_partitions(vec![FetchPartition::default()
                        .with_partition(0)
                        .with_partition_max_bytes(1 << 20)])]);
            let response = conn.send(16, &fetch).await?;
            let p = &response.responses[0].partitions[0];
            ensure!(
                p.error_code == kafka_protocol::error::ResponseError::NotLeaderOrFollower.code()
                    && p.current_leader.leader_id.0 == leader,
                "rf {rf}: fetch from node {other}: error {}, leader {:?}",
                p.error_code,
                p.current_leader
            );
            ensure!(
                response
                    .node_endpoints
                    .iter()
                    .any(|e| e.node_id.0 == leader),
                "rf {rf}: node {other}'s fetch answer lacks the leader's endpoint"
            );
        }
    }
    for node in &mut nodes {
        let _ = node.stop();
    }
    Ok(())
}
