//! Every compression codec a Kafka client may use survives a produce/consume
//! round trip through the broker at volume: 100,000 keyed messages over three
//! partitions come back with the same keys, values, partitions and offsets,
//! in produce order.

mod common;

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use rdkafka::Offset;

use common::{
    assert_exactly_acked, assigned_consumer, consume_count, create_topic, produce_ids, producer,
    watermarks, Broker, BULK_PRODUCER_SETTINGS,
};

const MESSAGES: u64 = 100_000;
const PARTITIONS: i32 = 3;
/// Enough keys that all partitions get a share, few enough that every key has
/// a long history whose order can be checked.
const KEYS: u64 = 1_000;
const CONSUME_WAIT_MAX: Duration = Duration::from_secs(60);

async fn round_trip_with_codec(codec: &str) -> Result<()> {
    let broker = Broker::start()?;
    let bootstrap = broker.bootstrap();
    let topic = common::unique_topic(&format!("codec-{codec}"));
    create_topic(bootstrap, &topic, PARTITIONS).await?;

    let started = Instant::now();
    let mut settings = BULK_PRODUCER_SETTINGS.to_vec();
    settings.push(("compression.type", codec));
    let producer = producer(bootstrap, &settings)?;
    let acks = produce_ids(&producer, &topic, 0..MESSAGES, KEYS).await?;
    let produced = started.elapsed();

    let consumer = assigned_consumer(bootstrap, &topic, PARTITIONS, Offset::Beginning, &[])?;
    let records = consume_count(&consumer, MESSAGES as usize, CONSUME_WAIT_MAX).await?;
    let consumed = started.elapsed() - produced;

    assert_exactly_acked(&acks, &records, KEYS)?;
    let marks = watermarks(bootstrap, &topic, PARTITIONS).await?;
    ensure!(
        marks.iter().all(|&(low, high)| low == 0 && high > 0),
        "every partition should hold records from offset 0: {marks:?}"
    );
    let stored: i64 = marks.iter().map(|(_, high)| high).sum();
    ensure!(
        stored == MESSAGES as i64,
        "partitions hold {stored} records, {MESSAGES} were produced"
    );
    eprintln!("{codec}: produced {MESSAGES} in {produced:?}, consumed in {consumed:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uncompressed_messages_round_trip_in_order() -> Result<()> {
    round_trip_with_codec("none").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_messages_round_trip_in_order() -> Result<()> {
    round_trip_with_codec("gzip").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snappy_messages_round_trip_in_order() -> Result<()> {
    round_trip_with_codec("snappy").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lz4_messages_round_trip_in_order() -> Result<()> {
    round_trip_with_codec("lz4").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zstd_messages_round_trip_in_order() -> Result<()> {
    round_trip_with_codec("zstd").await
}
