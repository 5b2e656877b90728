//! `__consumer_offsets` is protected as Kafka protects its internal topics:
//! DeleteRecords and CreatePartitions are refused (deleting records would
//! drop every group's committed offsets; more partitions would move every
//! group to another coordinator partition), and config changes that would
//! break it are refused while harmless ones are allowed.
//!
//! Against Apache Kafka 4.4 only the DeleteRecords test passes: Kafka itself
//! accepts CreatePartitions and `cleanup.policy=delete` on the offsets topic.
//! Fjord is deliberately stricter there.

mod common;

use anyhow::{ensure, Result};
use kafka_protocol::messages::delete_records_request::{
    DeleteRecordsPartition, DeleteRecordsTopic,
};
use kafka_protocol::messages::DeleteRecordsRequest;

use common::kafka_rpc::admin::*;
use common::kafka_rpc::KafkaConnection;
use common::Broker;

const OFFSETS_TOPIC: &str = "__consumer_offsets";
const NONE: i16 = 0;
const INVALID_TOPIC_EXCEPTION: i16 = 17;
const INVALID_CONFIG: i16 = 40;

#[tokio::test]
async fn delete_records_on_the_offsets_topic_is_refused() -> Result<()> {
    let broker = Broker::start()?;
    let mut conn = KafkaConnection::connect(broker.bootstrap()).await?;
    let request = DeleteRecordsRequest::default()
        .with_topics(vec![DeleteRecordsTopic::default()
            .with_name(topic_name(OFFSETS_TOPIC))
            .with_partitions(vec![DeleteRecordsPartition::default()
                .with_partition_index(0)
                .with_offset(-1)])])
        .with_timeout_ms(30_000);
    let r = conn.send(2, &request).await?;
    let code = r.topics[0].partitions[0].error_code;
    ensure!(
        code == INVALID_TOPIC_EXCEPTION,
        "DeleteRecords on {OFFSETS_TOPIC} answered {code}"
    );
    Ok(())
}

#[tokio::test]
async fn create_partitions_on_the_offsets_topic_is_refused() -> Result<()> {
    let broker = Broker::start()?;
    let mut conn = KafkaConnection::connect(broker.bootstrap()).await?;
    let before = metadata(&mut conn, &[OFFSETS_TOPIC], false).await?[0]
        .partitions
        .len();
    let (code, message) = create_partitions(&mut conn, OFFSETS_TOPIC, before as i32 + 1).await?;
    ensure!(
        code == INVALID_TOPIC_EXCEPTION,
        "CreatePartitions answered {code} {message:?}"
    );
    let after = metadata(&mut conn, &[OFFSETS_TOPIC], false).await?[0]
        .partitions
        .len();
    ensure!(after == before, "partitions went from {before} to {after}");
    Ok(())
}

#[tokio::test]
async fn offsets_topic_config_changes_that_would_break_it_are_refused() -> Result<()> {
    let broker = Broker::start()?;
    let mut conn = KafkaConnection::connect(broker.bootstrap()).await?;
    for (key, value) in [("cleanup.policy", "delete"), ("max.message.bytes", "100")] {
        let (code, message) = incremental_alter(
            &mut conn,
            RESOURCE_TOPIC,
            OFFSETS_TOPIC,
            &[(key, OP_SET, Some(value))],
            false,
        )
        .await?;
        ensure!(
            code == INVALID_CONFIG,
            "{key}={value} answered {code} {message:?}"
        );
    }
    let d = describe_configs(
        &mut conn,
        RESOURCE_TOPIC,
        OFFSETS_TOPIC,
        Some(&["cleanup.policy"]),
        false,
    )
    .await?;
    ensure!(
        config_value(&d, "cleanup.policy").as_deref() == Some("compact"),
        "cleanup.policy is {:?}",
        config_value(&d, "cleanup.policy")
    );
    let (code, message) = incremental_alter(
        &mut conn,
        RESOURCE_TOPIC,
        OFFSETS_TOPIC,
        &[("min.cleanable.dirty.ratio", OP_SET, Some("0.4"))],
        false,
    )
    .await?;
    ensure!(
        code == NONE,
        "a harmless change answered {code} {message:?}"
    );
    Ok(())
}
