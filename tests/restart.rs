//! A graceful restart (SIGTERM, start again on the same data directory)
//! loses nothing and changes nothing: every record reads back at the same
//! partition and offset with the same key and value, and new records continue
//! at the old log end.

mod common;

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use tokio::task::block_in_place;

use common::{
    assert_exactly_acked, consume_all, create_topic, produce_ids, producer, unique_topic,
    watermarks, Broker, Record, BULK_PRODUCER_SETTINGS,
};

const MESSAGES: u64 = 30_000;
const PARTITIONS: i32 = 3;
const KEYS: u64 = 100;
const CONSUME_WAIT_MAX: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_read_back_identically_after_a_graceful_restart() -> Result<()> {
    let Some(mut broker) = Broker::start_process(
        "records_read_back_identically_after_a_graceful_restart",
        &[],
    )?
    else {
        return Ok(());
    };
    let bootstrap = broker.bootstrap().to_string();
    let topic = unique_topic("restart");
    create_topic(&bootstrap, &topic, PARTITIONS).await?;
    let acks = {
        let producer = producer(&bootstrap, BULK_PRODUCER_SETTINGS)?;
        produce_ids(&producer, &topic, 0..MESSAGES, KEYS).await?
    };
    let before = consume_all(&bootstrap, &topic, PARTITIONS, CONSUME_WAIT_MAX).await?;
    assert_exactly_acked(&acks, &before, KEYS)?;
    let marks_before = watermarks(&bootstrap, &topic, PARTITIONS).await?;

    let started = Instant::now();
    let status = block_in_place(|| broker.stop())?;
    let stopped = started.elapsed();
    block_in_place(|| broker.restart())?;
    eprintln!(
        "stop took {stopped:?} ({status}), restart until listening {:?}",
        started.elapsed() - stopped
    );

    let marks_after = watermarks(&bootstrap, &topic, PARTITIONS).await?;
    ensure!(
        marks_after == marks_before,
        "watermarks changed across the restart: {marks_before:?} -> {marks_after:?}"
    );
    let after = consume_all(&bootstrap, &topic, PARTITIONS, CONSUME_WAIT_MAX).await?;
    assert_exactly_acked(&acks, &after, KEYS)?;
    // Partitions interleave differently from one read to the next; within a
    // partition the order is checked above.
    let sorted = |records: &[Record]| {
        let mut records = records.to_vec();
        records.sort_by_key(|r| (r.partition, r.offset));
        records
    };
    ensure!(
        sorted(&after) == sorted(&before),
        "records differ after the restart ({} before, {} after)",
        before.len(),
        after.len()
    );

    // New records continue at the old log end of their partition.
    let producer = producer(&bootstrap, BULK_PRODUCER_SETTINGS)?;
    let more = produce_ids(&producer, &topic, MESSAGES..MESSAGES + 1_000, KEYS).await?;
    for partition in 0..PARTITIONS {
        let first = more.iter().find(|a| a.partition == partition);
        if let Some(first) = first {
            let log_end = marks_before[partition as usize].1;
            ensure!(
                first.offset == log_end,
                "partition {partition}: first record after restart at offset {}, log end was {log_end}",
                first.offset
            );
        }
    }
    let all_acks: Vec<_> = acks.iter().chain(&more).copied().collect();
    let all = consume_all(&bootstrap, &topic, PARTITIONS, CONSUME_WAIT_MAX).await?;
    assert_exactly_acked(&all_acks, &all, KEYS)
}
