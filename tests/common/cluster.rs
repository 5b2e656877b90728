//! Leaders as a cluster's nodes report them (Metadata over a raw
//! connection, with leader epochs), and waiting for them to converge.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{MetadataRequest, MetadataResponse};

use super::kafka_rpc::{admin, KafkaConnection};

/// Bound for a cluster to converge (leaders elected, a node caught up).
pub const CONVERGE_WAIT_MAX: Duration = Duration::from_secs(60);

/// One partition as a node reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Led {
    pub leader: i32,
    pub epoch: i32,
    pub replicas: Vec<i32>,
}

/// Metadata (v12) for `topic` alone; asking never creates it (brokers run
/// with `auto.create.topics.enable` on).
pub async fn topic_metadata(conn: &mut KafkaConnection, topic: &str) -> Result<MetadataResponse> {
    conn.send(
        12,
        &MetadataRequest::default()
            .with_allow_auto_topic_creation(false)
            .with_topics(Some(vec![
                MetadataRequestTopic::default().with_name(Some(admin::topic_name(topic)))
            ])),
    )
    .await
}

/// Each partition of `topic` as `bootstrap` reports it.
pub async fn partitions(bootstrap: &str, topic: &str) -> Result<BTreeMap<i32, Led>> {
    let mut conn = KafkaConnection::connect(bootstrap).await?;
    let metadata = topic_metadata(&mut conn, topic).await?;
    let mut out = BTreeMap::new();
    for t in &metadata.topics {
        for p in &t.partitions {
            out.insert(
                p.partition_index,
                Led {
                    leader: p.leader_id.0,
                    epoch: p.leader_epoch,
                    replicas: p.replica_nodes.iter().map(|b| b.0).collect(),
                },
            );
        }
    }
    Ok(out)
}

/// The id of `topic`, as `bootstrap` reports it.
pub async fn topic_id(bootstrap: &str, topic: &str) -> Result<uuid::Uuid> {
    let mut conn = KafkaConnection::connect(bootstrap).await?;
    topic_metadata(&mut conn, topic)
        .await?
        .topics
        .first()
        .map(|t| t.topic_id)
        .ok_or_else(|| anyhow::anyhow!("no metadata for {topic}"))
}

/// Each partition's (leader, replicas) as `bootstrap` reports them.
pub async fn leaders(bootstrap: &str, topic: &str) -> Result<BTreeMap<i32, (i32, Vec<i32>)>> {
    Ok(partitions(bootstrap, topic)
        .await?
        .into_iter()
        .map(|(p, led)| (p, (led.leader, led.replicas)))
        .collect())
}

/// Waits until each of the `partitions` partitions of `topic` has a leader
/// among `alive`, as `bootstrap` reports it; returns the leaders.
pub async fn await_leaders(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    alive: &[i32],
) -> Result<BTreeMap<i32, i32>> {
    let started = Instant::now();
    loop {
        let seen = leaders(bootstrap, topic).await.unwrap_or_default();
        let led: BTreeMap<i32, i32> = seen.iter().map(|(&p, (l, _))| (p, *l)).collect();
        if led.len() == partitions as usize && led.values().all(|l| alive.contains(l)) {
            return Ok(led);
        }
        ensure!(
            started.elapsed() < CONVERGE_WAIT_MAX,
            "partitions of {topic} have no leader among {alive:?}: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until each of `bootstraps` lists every broker of `ids` in its
/// Metadata: a restarted node counts for placement (a replication factor
/// of every node) only once the others reach it again.
/// The broker ids `bootstrap`'s Metadata lists.
pub async fn listed_brokers(bootstrap: &str) -> Result<Vec<i32>> {
    let mut conn = KafkaConnection::connect(bootstrap).await?;
    let metadata = conn
        .send(12, &MetadataRequest::default().with_topics(Some(vec![])))
        .await?;
    Ok(metadata.brokers.iter().map(|b| b.node_id.0).collect())
}

pub async fn await_brokers(bootstraps: &[&str], ids: &[i32]) -> Result<()> {
    let started = Instant::now();
    for bootstrap in bootstraps {
        loop {
            let listed: Vec<i32> = listed_brokers(bootstrap).await.unwrap_or_default();
            if ids.iter().all(|id| listed.contains(id)) {
                break;
            }
            ensure!(
                started.elapsed() < CONVERGE_WAIT_MAX,
                "{bootstrap} lists brokers {listed:?}, not all of {ids:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

/// The group coordinator named by `bootstrap` for `group`, once one is.
pub async fn coordinator(bootstrap: &str, group: &str) -> Result<i32> {
    let started = Instant::now();
    loop {
        let mut conn = KafkaConnection::connect(bootstrap).await?;
        let found = conn
            .send(
                3,
                &kafka_protocol::messages::FindCoordinatorRequest::default()
                    .with_key(admin::s(group)),
            )
            .await?;
        if found.error_code == 0 {
            return Ok(found.node_id.0);
        }
        ensure!(
            started.elapsed() < CONVERGE_WAIT_MAX,
            "no coordinator for {group}: {found:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Passes `outcome` through; when it is an error, first copies each node's
/// whole output to `target/test-logs/<test>/node-<n>.log` and says where,
/// so that a failed safety check can be read next to what the nodes did.
pub fn keep_logs_on_error(test: &str, nodes: &[super::Broker], outcome: Result<()>) -> Result<()> {
    if outcome.is_err() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("target/test-logs")
            .join(test);
        if std::fs::create_dir_all(&dir).is_ok() {
            for (i, node) in nodes.iter().enumerate() {
                let path = dir.join(format!("node-{}.log", i + 1));
                if std::fs::write(&path, node.log_text()).is_ok() {
                    eprintln!("node {} output: {}", i + 1, path.display());
                }
            }
        }
    }
    outcome
}
