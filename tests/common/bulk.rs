//! Raw admin, produce and fetch requests over many partitions at once, for
//! the tests that need thousands of partitions (a stock client would open a
//! connection and a request per partition leader and take minutes).
//!
//! Design decision: one request covers every partition of a topic, the way a
//! broker-side replica fetcher would, so the broker sees few, wide requests
//! and the test measures the broker, not the client.

use std::time::Duration;

use anyhow::{bail, ensure, Context as _, Result};
use bytes::{Bytes, BytesMut};
use fjord::client::connection::{ClientConfig, Connection};
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    BrokerId, CreateTopicsRequest, FetchRequest, ProduceRequest, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

pub const PRODUCE_VERSION: i16 = 9;
pub const FETCH_VERSION: i16 = 12;
pub const CREATE_TOPICS_VERSION: i16 = 5;
/// Bound on one wide request (creating a thousand partitions fsyncs a
/// thousand directories; a debug build on a loaded machine is slow).
pub const WIDE_REQUEST_TIMEOUT: Duration = Duration::from_secs(300);
/// Largest fetch response the tests accept.
const FETCH_RESPONSE_BYTES_MAX: usize = 256 << 20;

fn name(topic: &str) -> TopicName {
    TopicName(StrBytes::from_string(topic.to_string()))
}

/// A connection whose requests may take long (wide creates, fetches).
pub async fn connect(bootstrap: &str) -> Result<Connection> {
    let config = ClientConfig {
        request_timeout: WIDE_REQUEST_TIMEOUT,
        response_bytes_max: FETCH_RESPONSE_BYTES_MAX,
        ..ClientConfig::default()
    };
    Connection::connect(bootstrap, &config).await
}

/// Creates `topic` with `partitions` partitions and `configs`; fails on any error.
pub async fn create_topic(
    conn: &mut Connection,
    topic: &str,
    partitions: i32,
    configs: &[(&str, &str)],
) -> Result<()> {
    let configs = configs
        .iter()
        .map(|(k, v)| {
            CreatableTopicConfig::default()
                .with_name(StrBytes::from_string(k.to_string()))
                .with_value(Some(StrBytes::from_string(v.to_string())))
        })
        .collect();
    let request = CreateTopicsRequest::default()
        .with_timeout_ms(WIDE_REQUEST_TIMEOUT.as_millis() as i32)
        .with_topics(vec![CreatableTopic::default()
            .with_name(name(topic))
            .with_num_partitions(partitions)
            .with_replication_factor(1)
            .with_configs(configs)]);
    let response = conn.send(&request, CREATE_TOPICS_VERSION).await?;
    let result = &response.topics[0];
    ensure!(
        result.error_code == 0,
        "creating {topic} ({partitions} partitions): error {} {:?}",
        result.error_code,
        result.error_message.as_ref().map(|m| m.to_string())
    );
    Ok(())
}

/// An uncompressed batch of `records` records whose values name `tag`.
pub fn batch(records: i64, tag: &str, timestamp_ms: i64) -> Result<Bytes> {
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
            timestamp: timestamp_ms,
            key: None,
            value: Some(Bytes::from(format!("{tag} record {i}"))),
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

/// Produces one batch of `records` records to every partition of `topic` in
/// one request; returns the partitions that answered with an error, as
/// (partition, error code).
pub async fn produce_round(
    conn: &mut Connection,
    topic: &str,
    partitions: i32,
    records: i64,
) -> Result<Vec<(i32, i16)>> {
    let batch = batch(records, topic, fjord::broker::now_ms())?;
    let request = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(WIDE_REQUEST_TIMEOUT.as_millis() as i32)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(name(topic))
            .with_partition_data(
                (0..partitions)
                    .map(|p| {
                        PartitionProduceData::default()
                            .with_index(p)
                            .with_records(Some(batch.clone()))
                    })
                    .collect(),
            )]);
    let response = conn.send(&request, PRODUCE_VERSION).await?;
    let mut failed = Vec::new();
    let mut answered = 0;
    for topic in &response.responses {
        for p in &topic.partition_responses {
            answered += 1;
            if p.error_code != 0 {
                failed.push((p.index, p.error_code));
            }
        }
    }
    ensure!(
        answered == partitions,
        "{answered} of {partitions} partitions answered"
    );
    Ok(failed)
}

/// What a fetch of every partition from offset 0 found, per partition:
/// (error code, high watermark, records decoded).
pub async fn fetch_all(
    conn: &mut Connection,
    topic: &str,
    partitions: i32,
    partition_max_bytes: i32,
) -> Result<Vec<(i16, i64, i64)>> {
    let request = FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(0)
        .with_min_bytes(0)
        .with_max_bytes(FETCH_RESPONSE_BYTES_MAX as i32 / 2)
        .with_topics(vec![FetchTopic::default()
            .with_topic(name(topic))
            .with_partitions(
                (0..partitions)
                    .map(|p| {
                        FetchPartition::default()
                            .with_partition(p)
                            .with_fetch_offset(0)
                            .with_partition_max_bytes(partition_max_bytes)
                    })
                    .collect(),
            )]);
    let response = conn.send(&request, FETCH_VERSION).await?;
    let mut out = vec![(0i16, -1i64, 0i64); partitions as usize];
    for t in &response.responses {
        for p in &t.partitions {
            let Some(slot) = out.get_mut(p.partition_index as usize) else {
                bail!("fetch answered unknown partition {}", p.partition_index);
            };
            let mut records = 0;
            if let Some(bytes) = &p.records {
                let mut buf = bytes.clone();
                for set in RecordBatchDecoder::decode_all(&mut buf)
                    .with_context(|| format!("decoding {topic}/{}", p.partition_index))?
                {
                    records += set.records.len() as i64;
                }
            }
            *slot = (p.error_code, p.high_watermark, records);
        }
    }
    Ok(out)
}
