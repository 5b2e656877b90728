//! Admin APIs as Kafka answers them: all-or-nothing CreateTopics and
//! CreatePartitions, stray partition data never resurrected, creation
//! limits, topic-name collisions, DescribeTopicPartitions with pagination,
//! authorized operations, and null error messages on success.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{bail, ensure, Context as _, Result};
use kafka_protocol::messages::describe_topic_partitions_request::{Cursor, TopicRequest};
use kafka_protocol::messages::*;

use common::kafka_rpc::admin::*;
use common::kafka_rpc::KafkaConnection;
use common::{unique_topic, Broker};

const NONE: i16 = 0;
const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
const LEADER_NOT_AVAILABLE: i16 = 5;
const INVALID_TOPIC_EXCEPTION: i16 = 17;
const POLICY_VIOLATION: i16 = 44;
/// Kafka's topic operations bitfield without an authorizer:
/// READ, WRITE, CREATE, DELETE, ALTER, DESCRIBE, DESCRIBE_CONFIGS, ALTER_CONFIGS.
const TOPIC_OPERATIONS_ALL: i32 =
    (1 << 3) | (1 << 4) | (1 << 5) | (1 << 6) | (1 << 7) | (1 << 8) | (1 << 10) | (1 << 11);
/// CREATE, ALTER, DESCRIBE, CLUSTER_ACTION, DESCRIBE_CONFIGS, ALTER_CONFIGS, IDEMPOTENT_WRITE.
const CLUSTER_OPERATIONS_ALL: i32 =
    (1 << 5) | (1 << 7) | (1 << 8) | (1 << 9) | (1 << 10) | (1 << 11) | (1 << 12);
const NOT_REQUESTED: i32 = i32::MIN;

/// Partition directories of `topic` in the broker's data directory.
fn partition_dirs(broker: &Broker, topic: &str) -> Result<Vec<String>> {
    let dir = broker.data_dir().context("data dir")?;
    let prefix = format!("{topic}-");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if !entry.file_type()?.is_dir() {
            continue;
        }
        let name = entry.file_name().to_string_lossy().to_string();
        if name
            .strip_prefix(&prefix)
            .is_some_and(|rest| rest.parse::<u32>().is_ok())
        {
            out.push(name);
        }
    }
    Ok(out)
}

#[tokio::test]
async fn create_topics_that_cannot_open_every_partition_registers_nothing() -> Result<()> {
    let Some(mut broker) = Broker::start_process("create_topics_all_or_nothing", &[])? else {
        return Ok(());
    };
    let topic = unique_topic("half-created");
    // Partition 3's directory cannot be created: a file sits at its path.
    let data = broker.data_dir().context("data dir")?;
    std::fs::write(data.join(format!("{topic}-3")), b"in the way")?;
    let mut conn = KafkaConnection::connect(broker.bootstrap()).await?;
    let r = create_topic(&mut conn, &topic, 6, &[], false).await?;
    ensure!(
        r.error_code != NONE,
        "CreateTopics succeeded although partition 3 cannot exist"
    );
    ensure!(
        !topic_exists(&mut conn, &topic).await?,
        "the topic was registered (error {})",
        r.error_code
    );
    let left = partition_dirs(&broker, &topic)?;
    ensure!(left.is_empty(), "partition logs left on disk: {left:?}");
    broker.restart()?;
    let mut conn = KafkaConnection::connect(broker.bootstrap()).await?;
    ensure!(
        !topic_exists(&mut conn, &topic).await?,
        "the topic appeared after a restart"
    );

    // CreatePartitions: the same rule.
    let grown = unique_topic("half-grown");
    ensure!(
        create_topic(&mut conn, &grown, 2, &[], false)
            .await?
            .error_code
            == NONE
    );
    std::fs::write(data.join(format!("{grown}-4")), b"in the way")?;
    let (code, _) = create_partitions(&mut conn, &grown, 6).await?;
    ensure!(
        code != NONE,
        "CreatePartitions succeeded although partition 4 cannot exist"
    );
    let topics = metadata(&mut conn, &[&grown], false).await?;
    ensure!(
        topics[0].partitions.len() == 2,
        "topic now has {} partitions",
        topics[0].partitions.len()
    );
    let mut left = partition_dirs(&broker, &grown)?;
    left.sort();
    ensure!(
        left == [format!("{grown}-0"), format!("{grown}-1")],
        "partition logs on disk: {left:?}"
    );
    Ok(())
}

#[tokio::test]
async fn deleted_topic_data_is_never_resurrected_by_a_recreated_topic() -> Result<()> {
    let Some(mut broker) = Broker::start_process("stray_partitions", &[])? else {
        return Ok(());
    };
    let topic = unique_topic("resurrected");
    common::create_topic(broker.bootstrap(), &topic, 1).await?;
    let producer = common::producer(broker.bootstrap(), &[])?;
    producer
        .send(
            rdkafka::producer::FutureRecord::<str, str>::to(&topic).payload("old data"),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| anyhow::anyhow!("produce: {e}"))?;
    drop(producer);
    // A crash between "metadata removed" and "data deleted": the topic is
    // gone from the metadata, its directory is still there. Made by
    // putting back a copy of the directory after the delete.
    broker.stop()?;
    let data = broker.data_dir().context("data dir")?;
    let dir = data.join(format!("{topic}-0"));
    let copy = data.join("copy-of-deleted-partition");
    std::fs::create_dir(&copy)?;
    for entry in std::fs::read_dir(&dir)? {
        let entry = entry?;
        std::fs::copy(entry.path(), copy.join(entry.file_name()))?;
    }
    broker.restart()?;
    let mut conn = KafkaConnection::connect(broker.bootstrap()).await?;
    let deleted = conn
        .send(
            4,
            &DeleteTopicsRequest::default()
                .with_timeout_ms(30_000)
                .with_topic_names(vec![topic_name(&topic)]),
        )
        .await?;
    ensure!(deleted.responses[0].error_code == NONE, "{deleted:?}");
    broker.stop()?;
    ensure!(!dir.exists(), "the delete left {}", dir.display());
    std::fs::rename(&copy, &dir)?;
    broker.restart()?;
    common::create_topic(broker.bootstrap(), &topic, 1).await?;
    let marks = common::watermarks(broker.bootstrap(), &topic, 1).await?;
    ensure!(
        marks == [(0, 0)],
        "the re-created topic holds old data: {marks:?}"
    );
    Ok(())
}

#[tokio::test]
async fn max_broker_partitions_refuses_with_policy_violation() -> Result<()> {
    // __consumer_offsets takes 50 of the 60.
    let Some(broker) = Broker::start_process(
        "max_broker_partitions",
        &["--override", "max.broker.partitions=60"],
    )?
    else {
        return Ok(());
    };
    let mut conn = KafkaConnection::connect(broker.bootstrap()).await?;
    let first = unique_topic("budget");
    ensure!(
        create_topic(&mut conn, &first, 8, &[], false)
            .await?
            .error_code
            == NONE
    );
    let second = unique_topic("budget");
    let r = create_topic(&mut conn, &second, 3, &[], false).await?;
    let message = r
        .error_message
        .as_ref()
        .map(|m| m.to_string())
        .unwrap_or_default();
    ensure!(
        r.error_code == POLICY_VIOLATION && message.contains("max.broker.partitions"),
        "over the cap: {} {message:?}",
        r.error_code
    );
    let (code, _) = create_partitions(&mut conn, &first, 11).await?;
    ensure!(
        code == POLICY_VIOLATION,
        "CreatePartitions over the cap answered {code}"
    );
    ensure!(
        create_topic(&mut conn, &second, 2, &[], false)
            .await?
            .error_code
            == NONE
    );
    Ok(())
}

#[tokio::test]
async fn metadata_auto_creation_is_capped_per_request() -> Result<()> {
    let Some(broker) = Broker::start_process(
        "auto_create_cap",
        &["--override", "auto.create.topics.max.per.request=5"],
    )?
    else {
        return Ok(());
    };
    let mut conn = KafkaConnection::connect(broker.bootstrap()).await?;
    let names: Vec<String> = (0..8).map(|_| unique_topic("auto")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let topics = metadata(&mut conn, &refs, true).await?;
    let codes: Vec<i16> = topics.iter().map(|t| t.error_code).collect();
    ensure!(
        codes.iter().filter(|c| **c == NONE).count() == 5
            && codes.iter().filter(|c| **c == LEADER_NOT_AVAILABLE).count() == 3,
        "codes {codes:?}"
    );
    // The client retries; the next request creates the rest.
    let topics = metadata(&mut conn, &refs, true).await?;
    ensure!(
        topics.iter().all(|t| t.error_code == NONE),
        "after a retry: {:?}",
        topics.iter().map(|t| t.error_code).collect::<Vec<_>>()
    );
    Ok(())
}

#[tokio::test]
async fn colliding_topic_names_are_refused() -> Result<()> {
    let broker = Broker::start()?;
    let mut conn = KafkaConnection::connect(broker.bootstrap()).await?;
    let base = unique_topic("collide");
    let dotted = format!("{base}.a");
    let underscored = format!("{base}_a");
    ensure!(
        create_topic(&mut conn, &dotted, 1, &[], false)
            .await?
            .error_code
            == NONE
    );
    let r = create_topic(&mut conn, &underscored, 1, &[], false).await?;
    let message = r
        .error_message
        .as_ref()
        .map(|m| m.to_string())
        .unwrap_or_default();
    ensure!(
        r.error_code == INVALID_TOPIC_EXCEPTION && message.contains("collides with existing topic"),
        "CreateTopics {underscored}: {} {message:?}",
        r.error_code
    );
    // Fjord answers INVALID_TOPIC_EXCEPTION; Kafka 4.4 answers
    // UNKNOWN_TOPIC_OR_PARTITION. Either way the topic must not exist.
    let topics = metadata(&mut conn, &[&underscored], true).await?;
    ensure!(
        [INVALID_TOPIC_EXCEPTION, UNKNOWN_TOPIC_OR_PARTITION].contains(&topics[0].error_code),
        "auto-create {underscored}: {}",
        topics[0].error_code
    );
    Ok(())
}

async fn describe_partitions(
    conn: &mut KafkaConnection,
    topics: &[&str],
    limit: i32,
    cursor: Option<(&str, i32)>,
) -> Result<DescribeTopicPartitionsResponse> {
    let request = DescribeTopicPartitionsRequest::default()
        .with_topics(
            topics
                .iter()
                .map(|t| TopicRequest::default().with_name(topic_name(t)))
                .collect(),
        )
        .with_response_partition_limit(limit)
        .with_cursor(cursor.map(|(t, p)| {
            Cursor::default()
                .with_topic_name(topic_name(t))
                .with_partition_index(p)
        }));
    conn.send(0, &request).await
}

#[tokio::test]
async fn describe_topic_partitions_paginates_across_topics() -> Result<()> {
    let broker = Broker::start()?;
    let mut conn = KafkaConnection::connect(broker.bootstrap()).await?;
    let base = unique_topic("pages");
    let a = format!("{base}-a");
    let b = format!("{base}-b");
    let missing = format!("{base}-c-missing");
    ensure!(create_topic(&mut conn, &b, 3, &[], false).await?.error_code == NONE);
    ensure!(create_topic(&mut conn, &a, 4, &[], false).await?.error_code == NONE);
    let wanted = [b.as_str(), missing.as_str(), a.as_str()];
    let mut seen = Vec::new();
    let mut unknown = Vec::new();
    let mut cursor: Option<(String, i32)> = None;
    for page in 0.. {
        ensure!(page < 10, "pagination does not end");
        let r = describe_partitions(
            &mut conn,
            &wanted,
            3,
            cursor.as_ref().map(|(t, p)| (t.as_str(), *p)),
        )
        .await?;
        for t in &r.topics {
            let name = t.name.as_ref().map(|n| n.to_string()).unwrap_or_default();
            if t.error_code == UNKNOWN_TOPIC_OR_PARTITION {
                unknown.push(name);
                continue;
            }
            ensure!(t.error_code == NONE, "{name}: {}", t.error_code);
            ensure!(
                t.topic_authorized_operations == TOPIC_OPERATIONS_ALL,
                "{name}: operations {}",
                t.topic_authorized_operations
            );
            for p in &t.partitions {
                ensure!(
                    p.leader_id.0 >= 0 && !p.replica_nodes.is_empty() && !p.isr_nodes.is_empty(),
                    "{name}-{}: {p:?}",
                    p.partition_index
                );
                seen.push(format!("{name}-{}", p.partition_index));
            }
        }
        match r.next_cursor {
            Some(next) => cursor = Some((next.topic_name.to_string(), next.partition_index)),
            None => break,
        }
    }
    let expected: Vec<String> = (0..4)
        .map(|p| format!("{a}-{p}"))
        .chain((0..3).map(|p| format!("{b}-{p}")))
        .collect();
    ensure!(
        seen == expected,
        "partitions in order {seen:?}, expected {expected:?}"
    );
    ensure!(
        unknown == [missing.clone()],
        "unknown topics reported: {unknown:?}"
    );
    Ok(())
}

#[tokio::test]
async fn topic_command_describes_every_partition_of_a_3000_partition_topic() -> Result<()> {
    let Some(lib) = kafka_lib() else {
        eprintln!("SKIP: no java or no Kafka jars");
        return Ok(());
    };
    let broker = Broker::start()?;
    let mut conn = KafkaConnection::connect(broker.bootstrap()).await?;
    let topic = unique_topic("wide");
    let r = create_topic(&mut conn, &topic, 3000, &[], false).await?;
    ensure!(
        r.error_code == NONE,
        "create 3000 partitions: {} {:?}",
        r.error_code,
        r.error_message
    );
    let output = std::process::Command::new("java")
        .arg("-cp")
        .arg(format!("{lib}/*"))
        .args([
            "org.apache.kafka.tools.TopicCommand",
            "--bootstrap-server",
            broker.bootstrap(),
            "--describe",
            "--topic",
            &topic,
        ])
        .output()
        .context("running TopicCommand")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    ensure!(
        output.status.success(),
        "TopicCommand failed: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    let partitions: BTreeSet<u32> = stdout
        .lines()
        .filter_map(|l| l.split("Partition: ").nth(1))
        .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
        .collect();
    ensure!(
        partitions.len() == 3000 && partitions.last() == Some(&2999),
        "TopicCommand listed {} partitions",
        partitions.len()
    );
    Ok(())
}

/// The Kafka 4.4 jars, if they and `java` are here.
fn kafka_lib() -> Option<String> {
    let lib = format!(
        "{}/.cache/fjord/kafka-4.4.0-r2/lib",
        std::env::var("HOME").ok()?
    );
    let java = std::process::Command::new("java")
        .arg("-version")
        .output()
        .ok()?;
    (java.status.success() && std::path::Path::new(&lib).is_dir()).then_some(lib)
}

#[tokio::test]
async fn authorized_operations_are_all_when_asked_and_absent_otherwise() -> Result<()> {
    let broker = Broker::start()?;
    let mut conn = KafkaConnection::connect(broker.bootstrap()).await?;
    let topic = unique_topic("ops");
    ensure!(
        create_topic(&mut conn, &topic, 1, &[], false)
            .await?
            .error_code
            == NONE
    );
    // A group that exists: one committed offset.
    let group = unique_topic("ops-group");
    let consumer: rdkafka::consumer::BaseConsumer =
        common::consumer_config(broker.bootstrap(), &[("group.id", &group)]).create()?;
    let mut offsets = rdkafka::TopicPartitionList::new();
    offsets.add_partition_offset(&topic, 0, rdkafka::Offset::Offset(0))?;
    rdkafka::consumer::Consumer::commit(&consumer, &offsets, rdkafka::consumer::CommitMode::Sync)?;
    for asked in [true, false] {
        let request = MetadataRequest::default()
            .with_topics(Some(vec![metadata_request::MetadataRequestTopic::default(
            )
            .with_name(Some(topic_name(&topic)))]))
            .with_include_cluster_authorized_operations(asked)
            .with_include_topic_authorized_operations(asked);
        let r = conn.send(10, &request).await?;
        let (topic_ops, cluster_ops) = if asked {
            (TOPIC_OPERATIONS_ALL, CLUSTER_OPERATIONS_ALL)
        } else {
            (NOT_REQUESTED, NOT_REQUESTED)
        };
        ensure!(
            r.topics[0].topic_authorized_operations == topic_ops,
            "Metadata v10 asked={asked}: topic ops {}",
            r.topics[0].topic_authorized_operations
        );
        ensure!(
            r.cluster_authorized_operations == cluster_ops,
            "Metadata v10 asked={asked}: cluster ops {}",
            r.cluster_authorized_operations
        );
        let r = conn
            .send(
                1,
                &DescribeClusterRequest::default()
                    .with_include_cluster_authorized_operations(asked)
                    .with_endpoint_type(1),
            )
            .await?;
        ensure!(
            r.cluster_authorized_operations == cluster_ops,
            "DescribeCluster asked={asked}: {}",
            r.cluster_authorized_operations
        );
        let r = conn
            .send(
                5,
                &DescribeGroupsRequest::default()
                    .with_groups(vec![GroupId(s(&group))])
                    .with_include_authorized_operations(asked),
            )
            .await?;
        let group_ops = r.groups[0].authorized_operations;
        // Kafka 4.4: READ, DELETE, DESCRIBE, DESCRIBE_CONFIGS, ALTER_CONFIGS.
        let all = (1 << 3) | (1 << 6) | (1 << 8) | (1 << 10) | (1 << 11);
        ensure!(
            if asked {
                group_ops == all
            } else {
                group_ops == NOT_REQUESTED
            },
            "DescribeGroups asked={asked}: {group_ops} {:?}",
            r.groups[0]
        );
    }
    Ok(())
}

#[tokio::test]
async fn successful_admin_answers_carry_null_error_messages() -> Result<()> {
    let broker = Broker::start()?;
    let mut conn = KafkaConnection::connect(broker.bootstrap()).await?;
    let topic = unique_topic("null-messages");
    let r = create_topic(&mut conn, &topic, 1, &[], false).await?;
    ensure!(
        r.error_code == NONE && r.error_message.is_none(),
        "CreateTopics: {} {:?}",
        r.error_code,
        r.error_message
    );
    let (code, message) = create_partitions(&mut conn, &topic, 2).await?;
    ensure!(
        code == NONE && message.is_none(),
        "CreatePartitions: {code} {message:?}"
    );
    let (code, message) = incremental_alter(
        &mut conn,
        RESOURCE_TOPIC,
        &topic,
        &[("retention.ms", OP_SET, Some("100000"))],
        false,
    )
    .await?;
    ensure!(
        code == NONE && message.is_none(),
        "IncrementalAlterConfigs: {code} {message:?}"
    );
    let request = AlterConfigsRequest::default().with_resources(vec![
        alter_configs_request::AlterConfigsResource::default()
            .with_resource_type(RESOURCE_TOPIC)
            .with_resource_name(s(&topic))
            .with_configs(vec![alter_configs_request::AlterableConfig::default()
                .with_name(s("retention.ms"))
                .with_value(Some(s("200000")))]),
    ]);
    let r = conn.send(ALTER_CONFIGS_VERSION, &request).await?;
    ensure!(
        r.responses[0].error_code == NONE && r.responses[0].error_message.is_none(),
        "AlterConfigs: {:?}",
        r.responses[0]
    );
    let d = describe_configs(
        &mut conn,
        RESOURCE_TOPIC,
        &topic,
        Some(&["retention.ms"]),
        false,
    )
    .await?;
    ensure!(
        // DescribeConfigs is the exception: Kafka 4.4 answers "" there.
        d.error_code == NONE && d.error_message.as_deref() == Some(""),
        "DescribeConfigs: {} {:?}",
        d.error_code,
        d.error_message
    );
    let r = conn
        .send(1, &DescribeClusterRequest::default().with_endpoint_type(1))
        .await?;
    ensure!(
        r.error_code == NONE && r.error_message.is_none(),
        "DescribeCluster: {:?}",
        r.error_message
    );
    let request = DeleteTopicsRequest::default()
        .with_topics(vec![
            delete_topics_request::DeleteTopicState::default().with_name(Some(topic_name(&topic)))
        ])
        .with_timeout_ms(30_000);
    let r = conn.send(6, &request).await?;
    ensure!(
        r.responses[0].error_code == NONE && r.responses[0].error_message.is_none(),
        "DeleteTopics: {:?}",
        r.responses[0]
    );
    if r.responses.is_empty() {
        bail!("DeleteTopics answered nothing");
    }
    Ok(())
}
