//! A bad frame ends only its own connection: the broker refuses a frame
//! larger than `socket.request.max.bytes` before reading or allocating it,
//! closes a connection that sends garbage, and keeps serving everyone else.

mod common;

use std::time::Duration;

use anyhow::{ensure, Result};
use rdkafka::consumer::StreamConsumer;
use rdkafka::producer::FutureProducer;
use rdkafka::Offset;
use tokio::io::AsyncWriteExt;

use common::raw::{self, API_KEY_METADATA, API_KEY_PRODUCE};
use common::{
    assert_exactly_acked, assigned_consumer, consume_count, create_topic, produce_ids, producer,
    unique_topic, Ack, Broker, Record, BULK_PRODUCER_SETTINGS,
};

/// The frame-size limit the local broker runs with.
const SOCKET_REQUEST_BYTES_MAX: usize = 1 << 20;
/// Larger than the limit above and than Kafka's default (100 MiB), so the test
/// also makes sense against an external Kafka.
const OVERSIZED_FRAME_BYTES: i32 = 200_000_000;
/// How much more peak memory the broker may use while refusing the oversized
/// frame: far less than the frame, so a broker that allocated it fails.
const OVERSIZED_FRAME_RSS_GROWTH_MAX_KIB: u64 = 64 * 1024;
const MESSAGES_PER_ROUND: u64 = 200;
const KEYS: u64 = 10;
const CONSUME_WAIT_MAX: Duration = Duration::from_secs(30);

fn socket_request_max_bytes_override() -> String {
    format!("socket.request.max.bytes={SOCKET_REQUEST_BYTES_MAX}")
}

/// An rdkafka producer and consumer that are connected before a bad frame is
/// sent elsewhere, and must keep working after it.
struct Bystander {
    topic: String,
    producer: FutureProducer,
    consumer: StreamConsumer,
    acks: Vec<Ack>,
    records: Vec<Record>,
    next_id: u64,
}

impl Bystander {
    async fn connect(broker: &Broker) -> Result<Bystander> {
        let topic = unique_topic("bystander");
        create_topic(broker.bootstrap(), &topic, 1).await?;
        let mut bystander = Bystander {
            producer: producer(broker.bootstrap(), BULK_PRODUCER_SETTINGS)?,
            consumer: assigned_consumer(broker.bootstrap(), &topic, 1, Offset::Beginning, &[])?,
            topic,
            acks: Vec::new(),
            records: Vec::new(),
            next_id: 0,
        };
        bystander.round_trip().await?;
        Ok(bystander)
    }

    /// Produces a round of messages and consumes them on the existing
    /// connections; checks that everything produced so far is stored once,
    /// in order, where it was acknowledged.
    async fn round_trip(&mut self) -> Result<()> {
        let ids = self.next_id..self.next_id + MESSAGES_PER_ROUND;
        self.next_id = ids.end;
        let acks = produce_ids(&self.producer, &self.topic, ids, KEYS).await?;
        let records = consume_count(&self.consumer, acks.len(), CONSUME_WAIT_MAX).await?;
        self.acks.extend(acks);
        self.records.extend(records);
        assert_exactly_acked(&self.acks, &self.records, KEYS)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frame_is_refused_without_reading_it() -> Result<()> {
    let mut broker = Broker::start_with(&["--override", &socket_request_max_bytes_override()])?;
    let mut bystander = Bystander::connect(&broker).await?;
    let rss_before_kib = broker.peak_rss_kib();

    let mut lengths = vec![OVERSIZED_FRAME_BYTES];
    if !broker.is_external() {
        // Over our configured limit but under Kafka's default: shows that the
        // configured limit, not a built-in one, is enforced.
        lengths.push(2 * SOCKET_REQUEST_BYTES_MAX as i32);
    }
    for length in lengths {
        let mut stream = raw::connect(broker.bootstrap()).await?;
        stream.write_all(&length.to_be_bytes()).await?;
        // The start of a plausible request follows; the broker may already
        // have closed the socket, so write errors are expected and ignored.
        let mut start = raw::request_header_v1(API_KEY_PRODUCE, 9, 1);
        start.extend(raw::pseudo_random_bytes(7, 4096));
        let _ = stream.write_all(&start).await;
        raw::expect_closed(&mut stream)
            .await
            .map_err(|e| e.context(format!("frame length {length}")))?;
    }

    if let (Some(before), Some(after)) = (rss_before_kib, broker.peak_rss_kib()) {
        eprintln!("broker peak RSS {before} KiB before, {after} KiB after");
        ensure!(
            after - before < OVERSIZED_FRAME_RSS_GROWTH_MAX_KIB,
            "broker peak RSS grew by {} KiB while refusing a {OVERSIZED_FRAME_BYTES}-byte frame",
            after - before
        );
    }
    bystander.round_trip().await?;
    ensure!(broker.is_alive(), "broker died:\n{}", broker.log_tail());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_frame_closes_only_its_own_connection() -> Result<()> {
    let mut broker = Broker::start()?;
    let mut bystander = Bystander::connect(&broker).await?;

    // Pure noise behind a valid length; the api key is forced to one that
    // does not exist so that no seed can turn the noise into a request.
    let mut noise = raw::pseudo_random_bytes(0x5eed, 64);
    noise[..2].copy_from_slice(&(-16657i16).to_be_bytes());
    // A valid Metadata v12 header whose body is noise.
    let mut bad_body = raw::request_header_v2(API_KEY_METADATA, 12, 3);
    bad_body.extend(raw::pseudo_random_bytes(0xbad, 64));
    // A frame too short to hold even a request header.
    let truncated = vec![0u8, 3];

    for (name, frame) in [
        ("noise", noise),
        ("bad body", bad_body),
        ("truncated", truncated),
    ] {
        let mut stream = raw::connect(broker.bootstrap()).await?;
        raw::write_frame(&mut stream, &frame).await?;
        raw::expect_closed(&mut stream)
            .await
            .map_err(|e| e.context(format!("garbage frame: {name}")))?;
    }

    bystander.round_trip().await?;
    ensure!(broker.is_alive(), "broker died:\n{}", broker.log_tail());
    Ok(())
}
