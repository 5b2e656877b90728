//! An idempotent producer's retries never duplicate or reorder: messages
//! sent while the broker goes down and comes back are stored exactly once, in
//! send order within each partition.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use anyhow::{ensure, Result};
use tokio::task::block_in_place;

use common::produce_stream::ProduceStream;
use common::{
    assert_exactly_acked, by_partition, consume_all, create_topic, parse_id, producer,
    unique_topic, Broker,
};

const MESSAGES: u64 = 30_000;
const PARTITIONS: i32 = 3;
const KEYS: u64 = 100;
/// The broker goes down once this many messages are acknowledged: early
/// enough that most of the stream is still to be sent.
const ACKED_BEFORE_OUTAGE: usize = 3_000;
const IN_FLIGHT_MAX: usize = 2_000;
const STREAM_WAIT_MAX: Duration = Duration::from_secs(120);
/// Long enough that nothing expires while the broker restarts: every
/// message must be delivered, exactly once.
const MESSAGE_TIMEOUT_MS: &str = "120000";
const CONSUME_WAIT_MAX: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug)]
enum Outage {
    /// SIGTERM, then start again.
    GracefulRestart,
    /// SIGKILL, then start again (broker runs with `--fsync always`).
    Kill9,
}

async fn idempotent_stream_through(outage: Outage, broker: &mut Broker) -> Result<()> {
    let bootstrap = broker.bootstrap().to_string();
    let topic = unique_topic("idempotent");
    create_topic(&bootstrap, &topic, PARTITIONS).await?;
    let producer = producer(
        &bootstrap,
        &[
            ("enable.idempotence", "true"),
            ("linger.ms", "5"),
            ("message.timeout.ms", MESSAGE_TIMEOUT_MS),
            ("queue.buffering.max.messages", "100000"),
        ],
    )?;
    let mut stream = ProduceStream::start(producer, &topic, KEYS, IN_FLIGHT_MAX, Some(MESSAGES));
    stream
        .wait_acked(ACKED_BEFORE_OUTAGE, STREAM_WAIT_MAX)
        .await?;
    match outage {
        Outage::GracefulRestart => block_in_place(|| broker.stop().map(drop))?,
        Outage::Kill9 => block_in_place(|| broker.kill9())?,
    }
    let acked_during_outage = stream.acked();
    block_in_place(|| broker.restart())?;
    eprintln!("{outage:?} with {acked_during_outage} of {MESSAGES} acknowledged");
    ensure!(
        acked_during_outage < MESSAGES as usize,
        "the stream finished before the outage; nothing was retried across it"
    );

    stream
        .wait_acked(MESSAGES as usize, STREAM_WAIT_MAX)
        .await?;
    let outcome = stream.finish(STREAM_WAIT_MAX).await?;
    ensure!(
        outcome.failed.is_empty(),
        "{} deliveries failed, first: {:?}",
        outcome.failed.len(),
        outcome.failed.first()
    );
    ensure!(
        outcome.sent == MESSAGES,
        "sent {} of {MESSAGES}",
        outcome.sent
    );

    let records = consume_all(&bootstrap, &topic, PARTITIONS, CONSUME_WAIT_MAX).await?;
    let mut seen = HashSet::new();
    for r in &records {
        let id = parse_id(r.value.as_deref().unwrap_or_default())?;
        ensure!(
            seen.insert(id),
            "message {id} stored twice (again at {}/{})",
            r.partition,
            r.offset
        );
    }
    ensure!(
        seen.len() == MESSAGES as usize,
        "{} of {MESSAGES} messages stored",
        seen.len()
    );
    // One producer, so within a partition ids are in send order.
    for (partition, rs) in by_partition(&records) {
        let ids: Vec<u64> = rs
            .iter()
            .map(|r| parse_id(r.value.as_deref().unwrap_or_default()))
            .collect::<Result<_>>()?;
        if let Some(w) = ids.windows(2).find(|w| w[0] >= w[1]) {
            anyhow::bail!(
                "partition {partition}: id {} stored after id {}",
                w[1],
                w[0]
            );
        }
    }
    assert_exactly_acked(&outcome.plain_acks(), &records, KEYS)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_producer_does_not_duplicate_across_a_graceful_restart() -> Result<()> {
    let name = "idempotent_producer_does_not_duplicate_across_a_graceful_restart";
    let Some(mut broker) = Broker::start_process(name, &[])? else {
        return Ok(());
    };
    idempotent_stream_through(Outage::GracefulRestart, &mut broker).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_producer_does_not_duplicate_across_a_kill9_with_fsync_always() -> Result<()> {
    let name = "idempotent_producer_does_not_duplicate_across_a_kill9_with_fsync_always";
    let Some(mut broker) = Broker::start_process(name, &["--fsync", "always"])? else {
        return Ok(());
    };
    idempotent_stream_through(Outage::Kill9, &mut broker).await
}
