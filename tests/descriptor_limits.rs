//! A broker with many more segment files than it may open descriptors keeps
//! serving: segment files are opened on demand through a bounded cache and
//! closed when idle, so creating, writing, reading and restarting thousands
//! of partitions of several segments each works under a descriptor limit far
//! below three files per segment.
//!
//! The default test is scaled down to run in well under a minute. The heavy
//! one (10,000 partitions of 5 segments under 20,000 descriptors) is ignored
//! by default; run it with
//! `cargo test --release --test descriptor_limits -- --ignored --nocapture`.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use tokio::task::block_in_place;

use common::{bulk, unique_topic, Broker};

/// One test's shape: topics × partitions, produce rounds (each rolls a
/// segment), and the descriptor limit the broker runs under.
struct Shape {
    topics: usize,
    partitions: i32,
    rounds: i64,
    records_per_batch: i64,
    nofile: u64,
}

/// Interval between samples of the broker's open descriptors.
const FD_SAMPLE_INTERVAL: Duration = Duration::from_millis(20);
/// Wall-clock gap between produce rounds, longer than `segment.ms=1`, so
/// that every round after the first rolls a new segment.
const ROUND_GAP: Duration = Duration::from_millis(5);

/// Samples `/proc/<pid>/fd` in a thread until dropped; keeps the maximum.
struct FdSampler {
    max: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FdSampler {
    fn start(pid: u32) -> FdSampler {
        let max = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (max, stop) = (max.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
                        max.fetch_max(entries.count(), Ordering::Relaxed);
                    }
                    std::thread::sleep(FD_SAMPLE_INTERVAL);
                }
            })
        };
        FdSampler {
            max,
            stop,
            thread: Some(thread),
        }
    }

    fn max(&self) -> usize {
        self.max.load(Ordering::Relaxed)
    }
}

impl Drop for FdSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn count_files(dir: &Path, suffix: &str) -> usize {
    let mut count = 0;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                count += count_files(&path, suffix);
            } else if path.to_string_lossy().ends_with(suffix) {
                count += 1;
            }
        }
    }
    count
}

async fn check_everything_reads_back(
    broker: &Broker,
    topics: &[String],
    shape: &Shape,
    rounds_done: i64,
) -> Result<()> {
    let mut conn = bulk::connect(broker.bootstrap()).await?;
    let expected = rounds_done * shape.records_per_batch;
    for topic in topics {
        let answers = bulk::fetch_all(&mut conn, topic, shape.partitions, 1 << 20).await?;
        for (partition, (error, high_watermark, records)) in answers.iter().enumerate() {
            ensure!(
                (*error, *high_watermark, *records) == (0, expected, expected),
                "{topic}/{partition}: fetch error {error}, high watermark {high_watermark}, \
                 {records} records; expected {expected}\n{}",
                broker.log_tail()
            );
        }
    }
    Ok(())
}

async fn produce_rounds(
    broker: &Broker,
    topics: &[String],
    shape: &Shape,
    rounds: std::ops::Range<i64>,
) -> Result<()> {
    let mut conn = bulk::connect(broker.bootstrap()).await?;
    for round in rounds {
        for topic in topics {
            let failed =
                bulk::produce_round(&mut conn, topic, shape.partitions, shape.records_per_batch)
                    .await?;
            ensure!(
                failed.is_empty(),
                "round {round}: {} partitions of {topic} failed, first {:?}\n{}",
                failed.len(),
                failed.first(),
                broker.log_tail()
            );
        }
        tokio::time::sleep(ROUND_GAP).await;
    }
    Ok(())
}

async fn run(test_name: &str, shape: Shape) -> Result<()> {
    let Some(mut broker) = Broker::start_process_with_nofile(test_name, &[], shape.nofile)? else {
        return Ok(());
    };
    let pid = broker.pid().unwrap_or_default();
    let sampler = FdSampler::start(pid);
    let topics: Vec<String> = (0..shape.topics).map(|_| unique_topic("fds")).collect();
    let started = Instant::now();
    {
        let mut conn = bulk::connect(broker.bootstrap()).await?;
        for topic in &topics {
            bulk::create_topic(&mut conn, topic, shape.partitions, &[("segment.ms", "1")]).await?;
        }
    }
    eprintln!(
        "created {} partitions in {:?}",
        topics.len() * shape.partitions as usize,
        started.elapsed()
    );
    produce_rounds(&broker, &topics, &shape, 0..shape.rounds).await?;
    let data_dir = broker.data_dir().unwrap_or_default();
    let segments = topics.len() * shape.partitions as usize * shape.rounds as usize;
    ensure!(
        count_files(&data_dir, ".log") >= segments,
        "expected at least {segments} segments on disk, found {}",
        count_files(&data_dir, ".log")
    );
    check_everything_reads_back(&broker, &topics, &shape, shape.rounds).await?;
    let max_before_restart = sampler.max();
    drop(sampler);

    let restart_started = Instant::now();
    block_in_place(|| broker.restart())?;
    let restart_time = restart_started.elapsed();
    let sampler = FdSampler::start(broker.pid().unwrap_or_default());
    check_everything_reads_back(&broker, &topics, &shape, shape.rounds).await?;
    produce_rounds(&broker, &topics, &shape, shape.rounds..shape.rounds + 1).await?;
    check_everything_reads_back(&broker, &topics, &shape, shape.rounds + 1).await?;
    eprintln!(
        "{} partitions, {segments} segments under RLIMIT_NOFILE {}: max open descriptors \
         {max_before_restart} before the restart, {} after; restart until listening {restart_time:?}; \
         total {:?}",
        topics.len() * shape.partitions as usize,
        shape.nofile,
        sampler.max(),
        started.elapsed()
    );
    ensure!(broker.is_alive(), "broker died:\n{}", broker.log_tail());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_segments_are_served_and_restarted_under_512_descriptors() -> Result<()> {
    run(
        "thousands_of_segments_are_served_and_restarted_under_512_descriptors",
        Shape {
            topics: 2,
            partitions: 500,
            rounds: 3,
            records_per_batch: 2,
            nofile: 512,
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "heavy: 10,000 partitions x 5 segments; see the module doc for the command"]
async fn ten_thousand_partitions_of_five_segments_under_20000_descriptors() -> Result<()> {
    run(
        "ten_thousand_partitions_of_five_segments_under_20000_descriptors",
        Shape {
            topics: 10,
            partitions: 1_000,
            rounds: 5,
            records_per_batch: 2,
            nofile: 20_000,
        },
    )
    .await
}
