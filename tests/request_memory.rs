//! The memory a client can make the broker hold is bounded, and a client
//! that leaves releases it at once.
//!
//! - Requests read but not yet handled count against a per-connection bound
//!   (`connection.max.inflight.bytes`) and a broker-wide budget
//!   (`queued.max.request.bytes`); a client pipelining large requests behind
//!   a slow one is slowed down by TCP, not buffered.
//! - When a client disconnects, its connection ends at once: a long-polling
//!   fetch is abandoned and its queued requests are dropped.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};
use bytes::Bytes;
use fjord::client::connection::{ClientConfig, Connection};
use fjord::client::framing::encode_request;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{BrokerId, FetchRequest, ProduceRequest, TopicName};
use kafka_protocol::protocol::StrBytes;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use common::{bulk, raw, unique_topic, Broker};

/// Connections that each pipeline large requests behind a long poll.
const PIPELINING_CONNECTIONS: usize = 6;
/// Requests each of them pipelines (Kafka clients pipeline up to 5; the
/// broker's in-flight request limit is 64).
const FRAMES_PER_CONNECTION: usize = 64;
/// Size of each pipelined produce's records.
const FRAME_RECORDS_BYTES: usize = 4 << 20;
/// Peak memory the broker may add while those requests are pending: the
/// per-connection bound (16 MiB by default) times the connections, plus
/// slack, far below what is sent (1.5 GiB).
const RSS_GROWTH_MAX_KIB: u64 = 256 * 1024;
/// A connection whose writes made no progress for this long is held back by
/// the broker (it stopped reading).
const STALL_DETECT: Duration = Duration::from_secs(1);
/// Bound on waiting for the pipelining clients to stall.
const STALL_WAIT_MAX: Duration = Duration::from_secs(60);
/// Long poll held open by the pipelining clients and by the disconnecting one.
const LONG_POLL_MS: i32 = 60_000;
/// Bound on a request that must succeed once budget or a connection slot is free.
const RELEASE_WAIT_MAX: Duration = Duration::from_secs(10);
const RETRY_INTERVAL: Duration = Duration::from_millis(50);
const CLIENT_ID: &str = "fjord-it";

fn topic_name(topic: &str) -> TopicName {
    TopicName(StrBytes::from_string(topic.to_string()))
}

/// A Fetch of an empty partition that waits `LONG_POLL_MS` for one byte.
fn long_poll(topic: &str, correlation_id: i32) -> Result<Bytes> {
    let request = FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(LONG_POLL_MS)
        .with_min_bytes(1)
        .with_max_bytes(1 << 20)
        .with_topics(vec![FetchTopic::default()
            .with_topic(topic_name(topic))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(0)
                .with_partition_max_bytes(1 << 20)])]);
    encode_request(
        &request,
        bulk::FETCH_VERSION,
        correlation_id,
        &StrBytes::from_static_str(CLIENT_ID),
    )
}

/// A Produce frame carrying `records` (not a valid batch: it is never
/// handled before the test ends, and would be refused if it were).
fn produce_frame(topic: &str, records: Bytes, correlation_id: i32) -> Result<Bytes> {
    let request = ProduceRequest::default()
        .with_acks(1)
        .with_timeout_ms(30_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(topic_name(topic))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(records))])]);
    encode_request(
        &request,
        bulk::PRODUCE_VERSION,
        correlation_id,
        &StrBytes::from_static_str(CLIENT_ID),
    )
}

/// Produces and reads back a few records on fresh connections: other
/// clients are still served.
async fn bystander_round_trip(bootstrap: &str, topic: &str, round: i64) -> Result<()> {
    let mut conn = bulk::connect(bootstrap).await?;
    let failed = bulk::produce_round(&mut conn, topic, 1, 3).await?;
    ensure!(failed.is_empty(), "bystander produce failed: {failed:?}");
    let answers = bulk::fetch_all(&mut conn, topic, 1, 1 << 20).await?;
    ensure!(
        answers[0] == (0, 3 * round, 3 * round),
        "bystander fetch: {answers:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_large_requests_are_held_within_the_request_budget() -> Result<()> {
    let Some(broker) = Broker::start_process(
        "pipelined_large_requests_are_held_within_the_request_budget",
        &[],
    )?
    else {
        return Ok(());
    };
    let bootstrap = broker.bootstrap().to_string();
    let idle = unique_topic("idle");
    let bystander = unique_topic("bystander");
    {
        let mut conn = bulk::connect(&bootstrap).await?;
        bulk::create_topic(&mut conn, &idle, 1, &[]).await?;
        bulk::create_topic(&mut conn, &bystander, 1, &[]).await?;
    }
    bystander_round_trip(&bootstrap, &bystander, 1).await?;
    let rss_before_kib = broker.peak_rss_kib().context("broker RSS")?;

    let records = Bytes::from(vec![0u8; FRAME_RECORDS_BYTES]);
    let progress: Vec<Arc<AtomicU64>> = (0..PIPELINING_CONNECTIONS)
        .map(|_| Arc::new(AtomicU64::new(0)))
        .collect();
    let mut writers = Vec::new();
    for written in &progress {
        let mut stream = raw::connect(&bootstrap).await?;
        let (idle, records, written) = (idle.clone(), records.clone(), written.clone());
        writers.push(tokio::spawn(async move {
            stream.write_all(&long_poll(&idle, 0)?).await?;
            for i in 0..FRAMES_PER_CONNECTION {
                let frame = produce_frame(&idle, records.clone(), i as i32 + 1)?;
                stream.write_all(&frame).await?;
                written.fetch_add(frame.len() as u64, Ordering::Relaxed);
            }
            // Keep the connection open: the test ends it by aborting.
            std::future::pending::<()>().await;
            Ok::<TcpStream, anyhow::Error>(stream)
        }));
    }

    // Wait until every writer is either done or held back by the broker.
    let started = Instant::now();
    let mut last: Vec<u64> = vec![u64::MAX; PIPELINING_CONNECTIONS];
    let mut still_since = Instant::now();
    loop {
        tokio::time::sleep(RETRY_INTERVAL).await;
        let now: Vec<u64> = progress.iter().map(|p| p.load(Ordering::Relaxed)).collect();
        if now != last {
            last = now;
            still_since = Instant::now();
        } else if still_since.elapsed() > STALL_DETECT {
            break;
        }
        if started.elapsed() > STALL_WAIT_MAX {
            bail!("pipelining clients never settled: {last:?}");
        }
    }
    let sent_bytes: u64 = last.iter().sum();

    // Other clients are still served while those requests are pending.
    bystander_round_trip(&bootstrap, &bystander, 2).await?;
    let rss_after_kib = broker.peak_rss_kib().context("broker RSS")?;
    eprintln!(
        "clients wrote {} MiB of requests the broker has not answered; broker peak RSS \
         {rss_before_kib} KiB before, {rss_after_kib} KiB after",
        sent_bytes >> 20
    );
    ensure!(
        rss_after_kib.saturating_sub(rss_before_kib) < RSS_GROWTH_MAX_KIB,
        "broker peak RSS grew by {} KiB while {} MiB of requests were pending \
         (bound {RSS_GROWTH_MAX_KIB} KiB)",
        rss_after_kib.saturating_sub(rss_before_kib),
        sent_bytes >> 20
    );

    for writer in writers {
        writer.abort();
    }
    bystander_round_trip(&bootstrap, &bystander, 3).await?;
    Ok(())
}

/// Connects and completes an ApiVersions exchange, retrying while the
/// broker turns the connection away, within `RELEASE_WAIT_MAX`.
async fn connect_when_admitted(bootstrap: &str) -> Result<Connection> {
    let started = Instant::now();
    let config = ClientConfig {
        connect_timeout: Duration::from_secs(2),
        ..ClientConfig::default()
    };
    loop {
        match Connection::connect(bootstrap, &config).await {
            Ok(conn) => return Ok(conn),
            Err(e) if started.elapsed() > RELEASE_WAIT_MAX => {
                return Err(e.context(format!(
                    "no connection admitted within {RELEASE_WAIT_MAX:?}"
                )))
            }
            Err(_) => tokio::time::sleep(RETRY_INTERVAL).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_during_a_long_poll_releases_its_connection_at_once() -> Result<()>
{
    // One connection at a time: the second client is admitted only once the
    // first one's connection task has ended.
    let Some(broker) = Broker::start_process(
        "a_client_that_disconnects_during_a_long_poll_releases_its_connection_at_once",
        &["--override", "max.connections=1"],
    )?
    else {
        return Ok(());
    };
    let bootstrap = broker.bootstrap().to_string();
    let idle = unique_topic("idle");
    {
        let mut conn = connect_when_admitted(&bootstrap).await?;
        bulk::create_topic(&mut conn, &idle, 1, &[]).await?;
    }

    // The first client is served (its ApiVersions is answered), starts a
    // long poll and goes away without waiting for the answer.
    let mut first = connect_when_admitted(&bootstrap).await?;
    let mut stream = raw::connect(&bootstrap).await;
    // While `first` holds the only slot, a second connection is refused.
    if let Ok(s) = stream.as_mut() {
        raw::expect_closed(s).await?;
    }
    drop(stream);
    let request = FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(LONG_POLL_MS)
        .with_min_bytes(1)
        .with_max_bytes(1 << 20)
        .with_topics(vec![FetchTopic::default()
            .with_topic(topic_name(&idle))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(0)
                .with_partition_max_bytes(1 << 20)])]);
    // The fetch cannot complete before the connection is dropped.
    let pending = first.send_within(&request, bulk::FETCH_VERSION, Duration::from_millis(500));
    ensure!(
        pending.await.is_err(),
        "the long poll on an empty partition answered early"
    );
    drop(first);

    let started = Instant::now();
    let mut second = connect_when_admitted(&bootstrap).await?;
    eprintln!(
        "second client admitted {:?} after the first left",
        started.elapsed()
    );
    let failed = bulk::produce_round(&mut second, &idle, 1, 1).await?;
    ensure!(
        failed.is_empty(),
        "second client's produce failed: {failed:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_releases_its_share_of_the_request_budget() -> Result<()> {
    // Budget for about two of the large requests below, broker-wide.
    let Some(broker) = Broker::start_process(
        "a_client_that_disconnects_releases_its_share_of_the_request_budget",
        &[
            "--override",
            "socket.request.max.bytes=1048576",
            "--override",
            "queued.max.request.bytes=2097152",
            "--override",
            "connection.max.inflight.bytes=2097152",
        ],
    )?
    else {
        return Ok(());
    };
    let bootstrap = broker.bootstrap().to_string();
    let idle = unique_topic("idle");
    let other = unique_topic("other");
    {
        let mut conn = bulk::connect(&bootstrap).await?;
        bulk::create_topic(&mut conn, &idle, 1, &[]).await?;
        bulk::create_topic(&mut conn, &other, 1, &[]).await?;
    }
    const LARGE_RECORDS_BYTES: usize = 900 * 1024;

    // The first client holds a long poll and, queued behind it, two large
    // requests: together they take nearly the whole budget.
    let mut first = raw::connect(&bootstrap).await?;
    first.write_all(&long_poll(&idle, 0)?).await?;
    let records = Bytes::from(vec![0u8; LARGE_RECORDS_BYTES]);
    for i in 1..=2 {
        first
            .write_all(&produce_frame(&idle, records.clone(), i)?)
            .await?;
    }
    first.flush().await?;
    // Once the broker holds all three, the budget has room for none more.
    raw::await_read_by_broker(&first).await?;

    // A second client's large request cannot be read until budget frees up.
    let batch = bulk::batch(
        1,
        &"x".repeat(LARGE_RECORDS_BYTES - 1024),
        fjord::broker::now_ms(),
    )?;
    let mut second = raw::connect(&bootstrap).await?;
    second.write_all(&produce_frame(&other, batch, 7)?).await?;
    second.flush().await?;
    ensure!(
        tokio::time::timeout(Duration::from_secs(1), raw::read_frame(&mut second))
            .await
            .is_err(),
        "the second client was answered while the first held the budget"
    );

    drop(first);
    let started = Instant::now();
    let frame = tokio::time::timeout(RELEASE_WAIT_MAX, raw::read_frame(&mut second))
        .await
        .context("the second client was not answered after the first left")??;
    eprintln!(
        "second client answered {:?} after the first left ({} bytes)",
        started.elapsed(),
        frame.len()
    );
    let mut conn = bulk::connect(&bootstrap).await?;
    let answers = bulk::fetch_all(&mut conn, &other, 1, 2 << 20).await?;
    ensure!(
        answers[0] == (0, 1, 1),
        "second client's record: {answers:?}"
    );
    Ok(())
}
