//! One partition that cannot be opened does not keep the broker down: the
//! broker starts, serves every other partition, answers for the broken one
//! with retriable errors (KAFKA_STORAGE_ERROR for produce, LEADER_NOT_AVAILABLE
//! in Metadata), and brings it back by itself once it can be opened.

mod common;

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};
use fjord::client::connection::Connection;
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{MetadataRequest, TopicName};
use kafka_protocol::protocol::StrBytes;
use tokio::task::block_in_place;

use common::{bulk, unique_topic, Broker};

const KAFKA_STORAGE_ERROR: i16 = 56;
const LEADER_NOT_AVAILABLE: i16 = 5;
/// Bound on the background retry bringing the partition back (its backoff
/// starts at a second and is capped well below this).
const RECOVERY_WAIT_MAX: Duration = Duration::from_secs(60);
const POLL_INTERVAL: Duration = Duration::from_millis(100);
const METADATA_VERSION: i16 = 9;

async fn partition_errors(conn: &mut Connection, topic: &str) -> Result<Vec<i16>> {
    let request = MetadataRequest::default()
        .with_topics(Some(vec![MetadataRequestTopic::default().with_name(Some(
            TopicName(StrBytes::from_string(topic.to_string())),
        ))]))
        .with_allow_auto_topic_creation(false);
    let response = conn.send(&request, METADATA_VERSION).await?;
    let t = &response.topics[0];
    ensure!(
        t.error_code == 0,
        "metadata of {topic}: error {}",
        t.error_code
    );
    let mut errors = vec![0; t.partitions.len()];
    for p in &t.partitions {
        if let Some(slot) = errors.get_mut(p.partition_index as usize) {
            *slot = p.error_code;
        }
    }
    Ok(errors)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_that_cannot_be_opened_is_offline_and_comes_back_by_itself() -> Result<()> {
    let Some(mut broker) = Broker::start_process(
        "a_partition_that_cannot_be_opened_is_offline_and_comes_back_by_itself",
        &[],
    )?
    else {
        return Ok(());
    };
    let topic = unique_topic("offline");
    {
        let mut conn = bulk::connect(broker.bootstrap()).await?;
        bulk::create_topic(&mut conn, &topic, 2, &[]).await?;
        ensure!(bulk::produce_round(&mut conn, &topic, 2, 4)
            .await?
            .is_empty());
    }
    block_in_place(|| broker.stop())?;

    // Make partition 0 unopenable: its segment becomes a directory.
    let partition_dir = broker
        .data_dir()
        .context("own process")?
        .join(format!("{topic}-0"));
    let segment = partition_dir.join("00000000000000000000.log");
    let aside = partition_dir.join("segment.aside");
    std::fs::rename(&segment, &aside)?;
    std::fs::create_dir(&segment)?;

    block_in_place(|| broker.restart())
        .context("the broker must start although one partition cannot be opened")?;
    let mut conn = bulk::connect(broker.bootstrap()).await?;
    let errors = partition_errors(&mut conn, &topic).await?;
    ensure!(
        errors == vec![LEADER_NOT_AVAILABLE, 0],
        "metadata partition errors while partition 0 is offline: {errors:?}"
    );
    let failed = bulk::produce_round(&mut conn, &topic, 2, 4).await?;
    ensure!(
        failed == vec![(0, KAFKA_STORAGE_ERROR)],
        "produce while partition 0 is offline: {failed:?}"
    );
    let answers = bulk::fetch_all(&mut conn, &topic, 2, 1 << 20).await?;
    ensure!(
        answers[1] == (0, 8, 8),
        "partition 1 while 0 is offline: {answers:?}"
    );

    // Repair it; the broker must notice on its own.
    std::fs::remove_dir(&segment)?;
    std::fs::rename(&aside, &segment)?;
    let started = Instant::now();
    loop {
        if partition_errors(&mut conn, &topic).await? == vec![0, 0] {
            break;
        }
        if started.elapsed() > RECOVERY_WAIT_MAX {
            bail!(
                "partition 0 still offline {RECOVERY_WAIT_MAX:?} after the repair\n{}",
                broker.log_tail()
            );
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    eprintln!("partition 0 back {:?} after the repair", started.elapsed());
    ensure!(bulk::produce_round(&mut conn, &topic, 2, 4)
        .await?
        .is_empty());
    let answers = bulk::fetch_all(&mut conn, &topic, 2, 1 << 20).await?;
    ensure!(
        answers == vec![(0, 8, 8), (0, 12, 12)],
        "after recovery: {answers:?}"
    );
    Ok(())
}
