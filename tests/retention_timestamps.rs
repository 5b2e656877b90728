//! Time retention judges a segment by its newest record timestamp, and by the
//! file's modification time when its records carry none (timestamp -1), as
//! Kafka's `LogSegment.largestTimestamp` does — also after a restart, when
//! the segments are reloaded from disk.
//!
//! A retention run leaves no trace when it deletes nothing, so the test
//! proves that runs happened with a second topic whose old records expire at
//! once: two of its deletions observed one after the other bracket at least
//! one complete pass over every partition.

mod common;

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};
use bytes::{Bytes, BytesMut};
use fjord::client::connection::{ClientConfig, Connection};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::ProduceRequest;
use kafka_protocol::messages::TopicName;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use tokio::task::block_in_place;

use common::{client_config, unique_topic, watermarks, Broker, TOPIC_READY_WAIT_MAX};

const PRODUCE_VERSION: i16 = 9;
/// Retention of the topic whose records carry no timestamp: far longer than
/// the test, so nothing of it may be deleted.
const NO_TIMESTAMP_RETENTION_MS: &str = "600000";
/// Produce rounds to the no-timestamp topic; with `segment.ms=1` each round
/// after the first rolls a segment, so sealed segments exist.
const ROUNDS: i64 = 4;
const RECORDS_PER_ROUND: i64 = 5;
/// Bound on waiting for the expiring topic's retention to run.
const RETENTION_WAIT_MAX: Duration = Duration::from_secs(60);
const POLL_INTERVAL: Duration = Duration::from_millis(100);

fn batch(records: i64, timestamp: i64) -> Result<Bytes> {
    let records: Vec<Record> = (0..records)
        .map(|i| Record {
            transactional: false,
            control: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i,
            sequence: -1,
            timestamp,
            key: None,
            value: Some(Bytes::from(format!("record {i}"))),
            headers: Default::default(),
            delete_horizon: false,
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )?;
    Ok(buf.freeze())
}

async fn produce(conn: &mut Connection, topic: &str, records: Bytes) -> Result<i64> {
    let request = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(30_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_string(topic.to_string())))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(records))])]);
    let response = conn.send(&request, PRODUCE_VERSION).await?;
    let partition = &response.responses[0].partition_responses[0];
    ensure!(
        partition.error_code == 0,
        "produce to {topic} failed with error {}",
        partition.error_code
    );
    Ok(partition.base_offset)
}

async fn create_topic_with(bootstrap: &str, topic: &str, configs: &[(&str, &str)]) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = client_config(bootstrap).create()?;
    let options = AdminOptions::new().operation_timeout(Some(TOPIC_READY_WAIT_MAX));
    let mut new_topic = NewTopic::new(topic, 1, TopicReplication::Fixed(1));
    for (k, v) in configs {
        new_topic = new_topic.set(k, v);
    }
    for result in admin.create_topics([&new_topic], &options).await? {
        result.map_err(|(name, code)| anyhow::anyhow!("creating topic {name}: {code:?}"))?;
    }
    Ok(())
}

async fn log_start_offset(bootstrap: &str, topic: &str) -> Result<i64> {
    Ok(watermarks(bootstrap, topic, 1).await?[0].0)
}

/// Produces one record stamped an hour ago to the expiring topic and waits
/// until retention has deleted it (its log start offset passes it).
async fn expire_one(conn: &mut Connection, bootstrap: &str, topic: &str) -> Result<()> {
    let hour_ago = fjord::broker::now_ms() - 3_600_000;
    let offset = produce(conn, topic, batch(1, hour_ago)?).await?;
    let started = Instant::now();
    while log_start_offset(bootstrap, topic).await? <= offset {
        if started.elapsed() > RETENTION_WAIT_MAX {
            bail!("retention did not delete {topic} offset {offset} within {RETENTION_WAIT_MAX:?}");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_without_timestamps_are_kept_by_file_time_across_a_restart() -> Result<()> {
    let Some(mut broker) = Broker::start_process(
        "records_without_timestamps_are_kept_by_file_time_across_a_restart",
        &["--override", "log.retention.check.interval.ms=200"],
    )?
    else {
        return Ok(());
    };
    let bootstrap = broker.bootstrap().to_string();
    let kept = unique_topic("no-timestamp");
    let expiring = unique_topic("expiring");
    create_topic_with(
        &bootstrap,
        &kept,
        &[
            ("retention.ms", NO_TIMESTAMP_RETENTION_MS),
            ("segment.ms", "1"),
        ],
    )
    .await?;
    create_topic_with(&bootstrap, &expiring, &[("retention.ms", "1")]).await?;

    let mut conn = Connection::connect(&bootstrap, &ClientConfig::default()).await?;
    for round in 0..ROUNDS {
        let base = produce(&mut conn, &kept, batch(RECORDS_PER_ROUND, -1)?).await?;
        ensure!(base == round * RECORDS_PER_ROUND, "round {round} at {base}");
        // segment.ms=1: the next round's append finds this segment too old.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    expire_one(&mut conn, &bootstrap, &expiring).await?;
    expire_one(&mut conn, &bootstrap, &expiring).await?;
    ensure!(
        log_start_offset(&bootstrap, &kept).await? == 0,
        "records without timestamps were deleted before the restart"
    );

    drop(conn);
    block_in_place(|| -> Result<()> {
        broker.kill9()?;
        broker.restart()
    })?;
    let mut conn = Connection::connect(&bootstrap, &ClientConfig::default())
        .await
        .context("reconnecting after the restart")?;
    expire_one(&mut conn, &bootstrap, &expiring).await?;
    expire_one(&mut conn, &bootstrap, &expiring).await?;
    let marks = watermarks(&bootstrap, &kept, 1).await?[0];
    ensure!(
        marks == (0, ROUNDS * RECORDS_PER_ROUND),
        "after the restart, retention.ms={NO_TIMESTAMP_RETENTION_MS} deleted records that \
         carry no timestamp and were written seconds ago: watermarks {marks:?}\n{}",
        broker.log_tail()
    );
    Ok(())
}
