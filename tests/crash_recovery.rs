//! `kill -9` in the middle of a produce stream: after a restart the log is
//! readable with contiguous offsets, and with `--fsync always` every message
//! whose delivery was acknowledged is there (recovery promise).

mod common;

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use tokio::task::block_in_place;

use common::produce_stream::{ProduceStream, StreamOutcome};
use common::{
    assert_offsets_contiguous, check_acks_present, consume_all, create_topic, message_key,
    parse_id, producer, unique_topic, Broker, Record,
};

const PARTITIONS: i32 = 3;
const KEYS: u64 = 100;
/// Messages acknowledged before the kill: enough for several segments'
/// worth of batches to be in flight and on disk.
const ACKED_BEFORE_KILL: usize = 5_000;
/// Messages acknowledged after the restart: the recovered broker takes writes.
const ACKED_AFTER_RESTART: usize = 1_000;
const IN_FLIGHT_MAX: usize = 2_000;
const STREAM_WAIT_MAX: Duration = Duration::from_secs(60);
/// Long enough that messages in flight at the kill are retried after the
/// restart instead of expiring.
const MESSAGE_TIMEOUT_MS: &str = "120000";
const FINISH_WAIT_MAX: Duration = Duration::from_secs(150);
const CONSUME_WAIT_MAX: Duration = Duration::from_secs(60);

/// What happened around the crash.
struct CrashRun {
    outcome: StreamOutcome,
    killed_at: Instant,
    records: Vec<Record>,
}

/// Streams messages, kills the broker with SIGKILL once `ACKED_BEFORE_KILL`
/// are acknowledged, restarts it, keeps streaming until `ACKED_AFTER_RESTART`
/// more are acknowledged, then reads the whole topic back.
async fn produce_through_a_kill9(broker: &mut Broker) -> Result<CrashRun> {
    let bootstrap = broker.bootstrap().to_string();
    let topic = unique_topic("kill9");
    create_topic(&bootstrap, &topic, PARTITIONS).await?;
    let producer = producer(
        &bootstrap,
        &[
            ("linger.ms", "5"),
            ("message.timeout.ms", MESSAGE_TIMEOUT_MS),
            ("queue.buffering.max.messages", "100000"),
        ],
    )?;
    let mut stream = ProduceStream::start(producer, &topic, KEYS, IN_FLIGHT_MAX, None);
    stream
        .wait_acked(ACKED_BEFORE_KILL, STREAM_WAIT_MAX)
        .await?;

    block_in_place(|| broker.kill9())?;
    let killed_at = Instant::now();
    let acked_at_kill = stream.acked();
    block_in_place(|| broker.restart())?;
    eprintln!(
        "killed with {acked_at_kill} acknowledged; listening again after {:?}",
        killed_at.elapsed()
    );
    stream
        .wait_acked(acked_at_kill + ACKED_AFTER_RESTART, STREAM_WAIT_MAX)
        .await?;
    let outcome = stream.finish(FINISH_WAIT_MAX).await?;
    eprintln!(
        "sent {}, acknowledged {}, failed {} (first failure: {:?})",
        outcome.sent,
        outcome.acks.len(),
        outcome.failed.len(),
        outcome.failed.first()
    );

    let records = consume_all(&bootstrap, &topic, PARTITIONS, CONSUME_WAIT_MAX).await?;
    Ok(CrashRun {
        outcome,
        killed_at,
        records,
    })
}

/// Every stored record is one the test sent, with the matching key.
fn assert_records_well_formed(records: &[Record], sent: u64) -> Result<()> {
    for r in records {
        let id = parse_id(r.value.as_deref().unwrap_or_default())?;
        ensure!(
            id < sent,
            "{}/{} holds id {id}, never sent",
            r.partition,
            r.offset
        );
        ensure!(
            r.key.as_deref() == Some(message_key(id, KEYS).as_bytes()),
            "{}/{}: wrong key for id {id}",
            r.partition,
            r.offset
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_with_fsync_always_loses_no_acknowledged_message() -> Result<()> {
    let name = "kill9_with_fsync_always_loses_no_acknowledged_message";
    let Some(mut broker) = Broker::start_process(name, &["--fsync", "always"])? else {
        return Ok(());
    };
    let run = produce_through_a_kill9(&mut broker).await?;

    let acks = run.outcome.plain_acks();
    let lost = check_acks_present(&acks, &run.records, KEYS)?;
    eprintln!(
        "{} records stored, {} acknowledged, lost {lost}",
        run.records.len(),
        acks.len()
    );
    ensure!(
        lost == 0,
        "{lost} of {} acknowledged messages lost",
        acks.len()
    );
    assert_offsets_contiguous(&run.records, 0)?;
    assert_records_well_formed(&run.records, run.outcome.sent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_with_default_flush_leaves_a_readable_contiguous_log() -> Result<()> {
    let name = "kill9_with_default_flush_leaves_a_readable_contiguous_log";
    let Some(mut broker) = Broker::start_process(name, &[])? else {
        return Ok(());
    };
    let run = produce_through_a_kill9(&mut broker).await?;

    assert_offsets_contiguous(&run.records, 0)?;
    assert_records_well_formed(&run.records, run.outcome.sent)?;
    // Without fsync the crash may take back unflushed acknowledged writes,
    // but what the restarted broker acknowledged must all be there.
    let acked_after_restart: Vec<_> = run
        .outcome
        .acks
        .iter()
        .filter(|a| a.at > run.killed_at)
        .map(|a| a.ack)
        .collect();
    ensure!(
        !acked_after_restart.is_empty(),
        "no message was acknowledged after the restart"
    );
    let lost_after_restart = check_acks_present(&acked_after_restart, &run.records, KEYS)?;
    let lost_total = check_acks_present(&run.outcome.plain_acks(), &run.records, KEYS)?;
    eprintln!(
        "{} records stored; lost {lost_total} acknowledged in total (allowed without fsync), \
         {lost_after_restart} of {} acknowledged after the restart",
        run.records.len(),
        acked_after_restart.len()
    );
    ensure!(
        lost_after_restart == 0,
        "{lost_after_restart} messages acknowledged after the restart are missing"
    );
    Ok(())
}
