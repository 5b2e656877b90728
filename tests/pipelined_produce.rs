//! Pipelined produces under `--fsync always`: the broker appends the next
//! produce while the previous one's fsync runs (group commit), yet answers
//! strictly in request order, and a request of another kind waits until every
//! earlier produce is committed, as if requests were handled one at a time.
//!
//! The test writes all requests on one connection before reading anything,
//! the way librdkafka and the Java client pipeline, so the broker really has
//! several produces in flight at once.

mod common;

use anyhow::{ensure, Context as _, Result};
use bytes::{Bytes, BytesMut};
use fjord::client::framing::{decode_response, encode_request, read_frame};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{BrokerId, ListOffsetsRequest, ProduceRequest, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use tokio::io::AsyncWriteExt;

use common::{create_topic, raw, unique_topic, Broker};

const PRODUCE_VERSION: i16 = 9;
const LIST_OFFSETS_VERSION: i16 = 7;
const REQUESTS: i32 = 40;
const RECORDS_PER_REQUEST: i64 = 25;
const RESPONSE_BYTES_MAX: usize = 1 << 20;

fn batch(first: i64) -> Result<Bytes> {
    let records: Vec<Record> = (0..RECORDS_PER_REQUEST)
        .map(|i| Record {
            transactional: false,
            control: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            // One batch per request: offset - sequence must stay constant.
            offset: i,
            sequence: i as i32,
            timestamp: 1_700_000_000_000,
            key: None,
            value: Some(Bytes::from(format!("record {}", first + i))),
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

fn produce(topic: &str, records: Bytes) -> ProduceRequest {
    ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(30_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_string(topic.to_string())))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(records))])])
}

fn latest_offset(topic: &str) -> ListOffsetsRequest {
    ListOffsetsRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_topics(vec![ListOffsetsTopic::default()
            .with_name(TopicName(StrBytes::from_string(topic.to_string())))
            .with_partitions(vec![ListOffsetsPartition::default()
                .with_partition_index(0)
                .with_timestamp(-1)])])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_produces_are_answered_in_order_and_committed_before_the_next_request(
) -> Result<()> {
    let Some(broker) = Broker::start_process(
        "pipelined_produces_are_answered_in_order",
        &["--fsync", "always"],
    )?
    else {
        return Ok(());
    };
    let topic = unique_topic("pipelined");
    create_topic(broker.bootstrap(), &topic, 1).await?;

    let client_id = StrBytes::from_static_str("fjord-it");
    let mut frames = BytesMut::new();
    for i in 0..REQUESTS {
        let request = produce(&topic, batch(i as i64 * RECORDS_PER_REQUEST)?);
        frames.extend_from_slice(&encode_request(&request, PRODUCE_VERSION, i, &client_id)?);
    }
    frames.extend_from_slice(&encode_request(
        &latest_offset(&topic),
        LIST_OFFSETS_VERSION,
        REQUESTS,
        &client_id,
    )?);

    let mut stream = raw::connect(broker.bootstrap()).await?;
    // Everything at once: the broker reads ahead and has many produces in flight.
    stream.write_all(&frames).await?;
    stream.flush().await?;

    for i in 0..REQUESTS {
        let frame = tokio::time::timeout(
            raw::RAW_RESPONSE_WAIT_MAX,
            read_frame(&mut stream, RESPONSE_BYTES_MAX),
        )
        .await
        .context("waiting for a produce response")??;
        // decode_response checks the correlation id: answers in request order.
        let response = decode_response::<ProduceRequest>(frame, PRODUCE_VERSION, i)
            .with_context(|| format!("produce response {i}"))?;
        let partition = &response.responses[0].partition_responses[0];
        ensure!(
            partition.error_code == 0,
            "produce {i} failed with error {}",
            partition.error_code
        );
        ensure!(
            partition.base_offset == i as i64 * RECORDS_PER_REQUEST,
            "produce {i} got base offset {}, expected {}",
            partition.base_offset,
            i as i64 * RECORDS_PER_REQUEST
        );
    }
    let frame = tokio::time::timeout(
        raw::RAW_RESPONSE_WAIT_MAX,
        read_frame(&mut stream, RESPONSE_BYTES_MAX),
    )
    .await
    .context("waiting for the ListOffsets response")??;
    let response = decode_response::<ListOffsetsRequest>(frame, LIST_OFFSETS_VERSION, REQUESTS)?;
    let latest = response.topics[0].partitions[0].offset;
    // LATEST is the high watermark: every produce before it is committed.
    ensure!(
        latest == REQUESTS as i64 * RECORDS_PER_REQUEST,
        "ListOffsets after {REQUESTS} acknowledged produces says latest = {latest}, expected {}",
        REQUESTS as i64 * RECORDS_PER_REQUEST
    );
    Ok(())
}
