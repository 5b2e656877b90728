//! A fetch parked on an empty partition (long poll, `fetch.wait.max.ms`)
//! is answered as soon as data arrives, not when its wait expires.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context as _, Result};
use rdkafka::client::ClientContext;
use rdkafka::consumer::{ConsumerContext, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::FutureRecord;
use rdkafka::statistics::Statistics;
use rdkafka::Offset;
use tokio::sync::watch;

use common::{assign_all, consumer_config, create_topic, producer, unique_topic, Broker};

/// The consumer's long-poll wait. The test would take at least this long if
/// the broker only answered parked fetches when they expire.
const FETCH_WAIT_MAX_MS: u64 = 10_000;
/// Upper bound on produce-to-receive latency for a parked fetch. Far above
/// what a working broker needs, far below `FETCH_WAIT_MAX_MS`: this bounds a
/// broken implementation, it is not a latency benchmark.
const WAKE_LATENCY_MAX: Duration = Duration::from_secs(5);
/// How long the consumer may take to get its first fetch in flight.
const FETCH_IN_FLIGHT_WAIT_MAX: Duration = Duration::from_secs(20);

/// What librdkafka's statistics say about the consumer's fetching, used to
/// wait for the event "a Fetch is in flight to the partition leader" instead
/// of sleeping and hoping.
#[derive(Clone, Copy, Debug, Default)]
struct FetchProbe {
    /// The partition's fetcher is in state `active` (offset known, fetching).
    partition_active: bool,
    /// Fetch requests sent to the partition's leader so far.
    fetches_sent: i64,
    /// Requests sent to the leader that await a response.
    leader_requests_in_flight: i64,
}

struct ProbeContext {
    topic: String,
    probe: watch::Sender<FetchProbe>,
}

impl ClientContext for ProbeContext {
    fn stats(&self, statistics: Statistics) {
        let Some(partition) = statistics
            .topics
            .get(&self.topic)
            .and_then(|t| t.partitions.get(&0))
        else {
            return;
        };
        let leader = statistics
            .brokers
            .values()
            .find(|b| b.nodeid == partition.leader);
        self.probe.send_replace(FetchProbe {
            partition_active: partition.fetch_state == "active",
            fetches_sent: leader
                .and_then(|b| b.req.get("Fetch").copied())
                .unwrap_or(0),
            leader_requests_in_flight: leader.map_or(0, |b| b.waitresp_cnt),
        });
    }
}

impl ConsumerContext for ProbeContext {}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_fetch_returns_promptly_when_a_record_arrives() -> Result<()> {
    let broker = Broker::start()?;
    let bootstrap = broker.bootstrap();
    let topic = unique_topic("long-poll");
    create_topic(bootstrap, &topic, 1).await?;
    let producer = producer(bootstrap, &[])?;

    let (probe_tx, mut probe_rx) = watch::channel(FetchProbe::default());
    let fetch_wait_max_ms = FETCH_WAIT_MAX_MS.to_string();
    let consumer: StreamConsumer<ProbeContext> = consumer_config(
        bootstrap,
        &[
            ("fetch.wait.max.ms", &fetch_wait_max_ms),
            ("fetch.min.bytes", "1"),
            ("statistics.interval.ms", "100"),
        ],
    )
    .create_with_context(ProbeContext {
        topic: topic.clone(),
        probe: probe_tx,
    })?;
    // An explicit offset on the empty partition: the first request for it is
    // the Fetch itself, not an offset lookup.
    assign_all(&consumer, &topic, 1, Offset::Offset(0))?;
    let consumer = Arc::new(consumer);

    let receiver = tokio::spawn({
        let consumer = Arc::clone(&consumer);
        async move {
            let wait = Duration::from_millis(FETCH_WAIT_MAX_MS) + FETCH_IN_FLIGHT_WAIT_MAX;
            let message = tokio::time::timeout(wait, consumer.recv())
                .await
                .map_err(|_| anyhow!("no record within {wait:?}"))?
                .context("consumer error")?;
            let received_at = Instant::now();
            anyhow::Ok((
                received_at,
                message.offset(),
                message.payload().map(<[u8]>::to_vec),
            ))
        }
    });

    let in_flight = tokio::time::timeout(
        FETCH_IN_FLIGHT_WAIT_MAX,
        probe_rx.wait_for(|p| {
            p.partition_active && p.fetches_sent >= 1 && p.leader_requests_in_flight >= 1
        }),
    )
    .await
    .map(|probe| probe.map(|p| *p));
    let probe = in_flight.map_err(|_| {
        anyhow!(
            "no Fetch in flight within {FETCH_IN_FLIGHT_WAIT_MAX:?}: {:?}",
            *probe_rx.borrow()
        )
    })??;
    eprintln!("fetch in flight: {probe:?}");

    let sent_at = Instant::now();
    producer
        .send(
            FutureRecord::to(&topic).key("k").payload("wake-up"),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| anyhow!("produce failed: {e}"))?;
    let (received_at, offset, payload) = receiver.await??;
    let latency = received_at.saturating_duration_since(sent_at);
    eprintln!("parked fetch answered {latency:?} after the produce started");

    ensure!(offset == 0, "expected the record at offset 0, got {offset}");
    ensure!(
        payload.as_deref() == Some(&b"wake-up"[..]),
        "wrong payload {payload:?}"
    );
    ensure!(
        latency < WAKE_LATENCY_MAX,
        "record arrived {latency:?} after it was produced; the parked fetch \
         (fetch.wait.max.ms={FETCH_WAIT_MAX_MS}) was not woken by the new data"
    );
    Ok(())
}
