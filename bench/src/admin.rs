//! The bench topic's life: create (or find), wait until every partition has
//! a leader, read the end offsets after producing, delete.
//!
//! Everything goes through the Kafka protocol (CreateTopics, Metadata,
//! ListOffsets, DeleteTopics) so the same code runs against any broker.

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaErrorCode;

/// Bound on each admin and metadata request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on waiting for a created topic to have leaders for every partition.
const TOPIC_READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The topic the run writes to.
#[derive(Debug, Clone)]
pub struct TopicSetup {
    pub name: String,
    pub partitions: i32,
    /// The bench created it (and so deletes it unless --keep-topic).
    pub created: bool,
}

fn config(bootstrap: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap);
    c
}

/// How the bench creates its topic.
#[derive(Debug, Clone)]
pub struct TopicSpec<'a> {
    pub name: &'a str,
    pub partitions: i32,
    pub replication_factor: i32,
    /// Topic configs, `(key, value)` (e.g. `min.insync.replicas`).
    pub configs: Vec<(&'a str, &'a str)>,
}

/// Creates the topic unless it exists, then waits until every partition
/// has a leader.
pub async fn ensure_topic(bootstrap: &str, spec: &TopicSpec<'_>) -> Result<TopicSetup> {
    let name = spec.name;
    let admin: AdminClient<DefaultClientContext> = config(bootstrap)
        .create()
        .context("creating the admin client")?;
    let opts = AdminOptions::new().operation_timeout(Some(REQUEST_TIMEOUT));
    let mut topic = NewTopic::new(
        name,
        spec.partitions,
        TopicReplication::Fixed(spec.replication_factor),
    );
    for (k, v) in &spec.configs {
        topic = topic.set(k, v);
    }
    let results = admin
        .create_topics(&[topic], &opts)
        .await
        .with_context(|| format!("CreateTopics {name} on {bootstrap}"))?;
    let created = match results.into_iter().next() {
        Some(Ok(_)) => true,
        Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) => false,
        Some(Err((_, code))) => bail!("CreateTopics {name}: {}", crate::error_name::of_code(code)),
        None => bail!("CreateTopics {name}: empty response"),
    };
    let bootstrap = bootstrap.to_string();
    let topic = name.to_string();
    let partitions = tokio::task::spawn_blocking(move || wait_for_leaders(&bootstrap, &topic))
        .await
        .context("metadata task")??;
    Ok(TopicSetup {
        name: name.to_string(),
        partitions,
        created,
    })
}

/// Polls Metadata until the topic exists and every partition has a leader;
/// returns its partition count.
fn wait_for_leaders(bootstrap: &str, topic: &str) -> Result<i32> {
    let client: BaseConsumer = config(bootstrap).create().context("metadata client")?;
    let deadline = Instant::now() + TOPIC_READY_TIMEOUT;
    loop {
        let md = client
            .fetch_metadata(Some(topic), REQUEST_TIMEOUT)
            .with_context(|| format!("Metadata for {topic}"))?;
        if let Some(t) = md.topics().iter().find(|t| t.name() == topic) {
            let ready = t.error().is_none()
                && !t.partitions().is_empty()
                && t.partitions()
                    .iter()
                    .all(|p| p.leader() >= 0 && p.error().is_none());
            if ready {
                return Ok(t.partitions().len() as i32);
            }
        }
        if Instant::now() >= deadline {
            bail!("topic {topic} has no leader for every partition after {TOPIC_READY_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The high watermark of every partition (blocking: ListOffsets).
pub fn end_offsets(bootstrap: &str, topic: &str, partitions: i32) -> Result<Vec<i64>> {
    let client: BaseConsumer = config(bootstrap).create().context("offsets client")?;
    (0..partitions)
        .map(|p| {
            client
                .fetch_watermarks(topic, p, REQUEST_TIMEOUT)
                .map(|(_, high)| high)
                .with_context(|| format!("ListOffsets {topic}-{p}"))
        })
        .collect()
}

pub async fn delete_topic(bootstrap: &str, name: &str) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = config(bootstrap)
        .create()
        .context("creating the admin client")?;
    let opts = AdminOptions::new().operation_timeout(Some(REQUEST_TIMEOUT));
    let results = admin
        .delete_topics(&[name], &opts)
        .await
        .with_context(|| format!("DeleteTopics {name}"))?;
    match results.into_iter().next() {
        Some(Err((_, code))) => bail!("DeleteTopics {name}: {}", crate::error_name::of_code(code)),
        _ => Ok(()),
    }
}

/// A partition's leader and replicas by Metadata, waiting (bounded by
/// `wait`) until it has a leader.
pub fn partition_leader(
    bootstrap: &str,
    topic: &str,
    partition: i32,
    wait: Duration,
) -> Result<(i32, Vec<i32>)> {
    let client: BaseConsumer = config(bootstrap).create().context("metadata client")?;
    let deadline = Instant::now() + wait;
    loop {
        let md = client.fetch_metadata(Some(topic), REQUEST_TIMEOUT.min(wait));
        if let Ok(md) = md {
            let found = md
                .topics()
                .iter()
                .find(|t| t.name() == topic)
                .and_then(|t| t.partitions().iter().find(|p| p.id() == partition));
            if let Some(p) = found.filter(|p| p.leader() >= 0 && p.error().is_none()) {
                return Ok((p.leader(), p.replicas().to_vec()));
            }
        }
        if Instant::now() >= deadline {
            bail!("{topic}-{partition} has no leader after {wait:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits (bounded by `wait`) until Metadata lists `count` brokers.
pub fn await_brokers(bootstrap: &str, count: usize, wait: Duration) -> Result<usize> {
    let client: BaseConsumer = config(bootstrap).create().context("metadata client")?;
    let deadline = Instant::now() + wait;
    loop {
        let listed = client
            .fetch_metadata(None, REQUEST_TIMEOUT.min(wait))
            .map(|md| md.brokers().len())
            .unwrap_or(0);
        if listed >= count {
            return Ok(listed);
        }
        if Instant::now() >= deadline {
            bail!("{listed} of {count} brokers listed by {bootstrap} after {wait:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
