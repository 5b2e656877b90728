//! `fjord consume --topic T`: read a topic's partitions from their leaders
//! and print record values, one per line. No consumer group: positions live
//! in this process only (a later `--group` adds committed offsets).
//!
//! Flow: Metadata → ListOffsets (earliest or latest, unless `--offset`) →
//! a Fetch loop, one request per leader per round, all leaders concurrently.
//! Each round's output is flushed before the next so a reader sees records
//! promptly. Leadership changes refresh metadata and carry on (bounded);
//! other partition errors stop the command with the error's Kafka name.

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use futures::future::join_all;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{BrokerId, FetchRequest, FetchResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::TimestampType;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::cli::ConnectArgs;
use crate::client::cluster::RETRY_BACKOFF;
use crate::client::records::{decode_fetched, ConsumerRecord};
use crate::client::{Client, KafkaError, OffsetSpec, TopicMetadata};

/// Longest a Fetch waits on the broker for new data; also how often we
/// re-check `--timeout-ms`.
pub const FETCH_WAIT_MS_MAX: u64 = 500;
/// Response size we ask for per Fetch (all partitions of one leader); below
/// the client's response frame limit.
pub const FETCH_BYTES_MAX: i32 = 16 * 1024 * 1024;
/// Starting per-partition fetch size (Kafka's `max.partition.fetch.bytes`).
pub const PARTITION_FETCH_BYTES: i32 = 1024 * 1024;
/// Largest per-partition fetch size we grow to when a batch does not fit.
pub const PARTITION_FETCH_BYTES_MAX: i32 = FETCH_BYTES_MAX;
/// Consecutive fetch rounds that may fail (broker unreachable, leader
/// moving) before we give up.
pub const FETCH_FAILURES_MAX: u32 = 20;
/// Pause after a round that returned nothing suspiciously fast, so a broker
/// that ignores `max_wait_ms` cannot spin us.
const EMPTY_ROUND_PAUSE: Duration = Duration::from_millis(50);
/// Output buffered per round before writing.
const OUTPUT_BUFFER_BYTES: usize = 64 * 1024;

/// Where to start reading a partition given with `--partition`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartOffset {
    Earliest,
    Latest,
    At(i64),
}

impl FromStr for StartOffset {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "earliest" => Ok(StartOffset::Earliest),
            "latest" => Ok(StartOffset::Latest),
            _ => match s.parse::<i64>() {
                Ok(n) if n >= 0 => Ok(StartOffset::At(n)),
                _ => Err(format!(
                    "offset must be a non-negative number, 'earliest' or 'latest', not '{s}'"
                )),
            },
        }
    }
}

/// `fjord consume`: which partitions, from where, until when, and what to
/// print per record.
#[derive(clap::Args, Debug, Clone)]
pub struct ConsumeArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Topic to read.
    #[arg(long)]
    pub topic: String,
    /// Start at the earliest offset instead of the end of each partition.
    #[arg(long)]
    pub from_beginning: bool,
    /// Read only this partition.
    #[arg(long)]
    pub partition: Option<i32>,
    /// Start offset in --partition: a number, 'earliest' or 'latest'.
    #[arg(long, requires = "partition", conflicts_with = "from_beginning")]
    pub offset: Option<StartOffset>,
    /// Exit after printing this many records.
    #[arg(long)]
    pub max_messages: Option<u64>,
    /// Exit after this long without a new record.
    #[arg(long)]
    pub timeout_ms: Option<u64>,
    /// Print the key before the value, separated by a tab.
    #[arg(long)]
    pub print_key: bool,
    /// Print "Offset:N" before each record.
    #[arg(long)]
    pub print_offset: bool,
    /// Print "Partition:N" before each record.
    #[arg(long)]
    pub print_partition: bool,
    /// Print "CreateTime:MS" (or "LogAppendTime:MS") before each record.
    #[arg(long)]
    pub print_timestamp: bool,
}

/// What a consume run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConsumeReport {
    pub records: u64,
}

/// Prints records to stdout and the total to stderr, like the console
/// consumer.
pub async fn run(args: ConsumeArgs) -> Result<()> {
    let mut client = args.connect.connect().await?;
    let mut stdout = tokio::io::stdout();
    let report = consume(&mut client, &args, &mut stdout).await?;
    eprintln!("Processed a total of {} messages", report.records);
    Ok(())
}

/// A partition's read position.
#[derive(Debug, Clone, Copy)]
struct Position {
    offset: i64,
    fetch_bytes: i32,
}

/// Reads `args.topic` and writes records to `out` until `--max-messages`,
/// `--timeout-ms` or a closed output ends it.
pub async fn consume<W: AsyncWrite + Unpin>(
    client: &mut Client,
    args: &ConsumeArgs,
    out: &mut W,
) -> Result<ConsumeReport> {
    let mut topic = client.topic_metadata(&args.topic, false).await?;
    let partitions: Vec<i32> = match args.partition {
        Some(p) => {
            ensure!(
                topic.partition(p).is_some(),
                "topic '{}' has no partition {p} (it has {})",
                topic.name,
                topic.partition_count()
            );
            vec![p]
        }
        None => topic.partitions.iter().map(|p| p.partition).collect(),
    };
    let start = match (args.offset, args.from_beginning) {
        (Some(s), _) => s,
        (None, true) => StartOffset::Earliest,
        (None, false) => StartOffset::Latest,
    };
    let offsets = match start {
        StartOffset::At(o) => partitions.iter().map(|&p| (p, o)).collect(),
        StartOffset::Earliest => {
            client
                .list_offsets(&topic, &partitions, OffsetSpec::Earliest)
                .await?
        }
        StartOffset::Latest => {
            client
                .list_offsets(&topic, &partitions, OffsetSpec::Latest)
                .await?
        }
    };
    let mut positions: BTreeMap<i32, Position> = offsets
        .into_iter()
        .map(|(p, offset)| {
            let pos = Position {
                offset,
                fetch_bytes: PARTITION_FETCH_BYTES,
            };
            (p, pos)
        })
        .collect();

    let idle_limit = args.timeout_ms.map(Duration::from_millis);
    let mut idle_deadline = idle_limit.map(|d| Instant::now() + d);
    let mut report = ConsumeReport::default();
    let mut failures_in_a_row = 0u32;
    let mut output = Vec::with_capacity(OUTPUT_BUFFER_BYTES);
    let request_timeout = client.config().request_timeout;

    loop {
        let remaining = args.max_messages.map(|m| m.saturating_sub(report.records));
        if remaining == Some(0) {
            break;
        }
        let mut wait = Duration::from_millis(FETCH_WAIT_MS_MAX);
        if let Some(deadline) = idle_deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            wait = wait.min(left);
        }
        let round_started = Instant::now();
        let mut round = Round::default();

        let mut by_leader: BTreeMap<i32, Vec<(i32, i32, Position)>> = BTreeMap::new();
        for (&p, &pos) in &positions {
            match topic.partition(p) {
                Some(pm) if pm.leader_id >= 0 => {
                    by_leader
                        .entry(pm.leader_id)
                        .or_default()
                        .push((p, pm.leader_epoch, pos))
                }
                _ => round.retry(anyhow!(
                    "partition {p} has no leader (LEADER_NOT_AVAILABLE)"
                )),
            }
        }
        let (connections, unreachable) = client.brokers(by_leader.keys().copied()).await;
        for (_, error) in unreachable {
            round.retry(error);
        }
        let wait_ms = i32::try_from(wait.as_millis()).unwrap_or(i32::MAX);
        let topic_ref = &topic;
        let by_leader_ref = &by_leader;
        let fetches = connections.into_iter().map(|(leader, conn)| async move {
            let parts = by_leader_ref.get(&leader).map_or(&[][..], Vec::as_slice);
            let version_max = if topic_ref.topic_id.is_nil() {
                12
            } else {
                i16::MAX
            };
            let version = conn.version_at_most::<FetchRequest>(version_max)?;
            let request = fetch_request(topic_ref, parts, wait_ms);
            conn.send_within(&request, version, wait + request_timeout)
                .await
        });
        let responses: Vec<Result<FetchResponse>> = join_all(fetches).await;

        for response in responses {
            let response = match response {
                Ok(r) => r,
                Err(e) => {
                    round.retry(e);
                    continue;
                }
            };
            if let Err(e) = KafkaError::check(response.error_code, None) {
                if e.is_stale_metadata() {
                    round.retry(e.into());
                    continue;
                }
                return Err(anyhow::Error::new(e).context("Fetch"));
            }
            let ours = response.responses.iter().filter(|t| {
                t.topic.0.as_str() == topic.name
                    || (!topic.topic_id.is_nil() && t.topic_id == topic.topic_id)
            });
            for data in ours.flat_map(|t| &t.partitions) {
                let p = data.partition_index;
                let Some(pos) = positions.get_mut(&p) else {
                    continue;
                };
                match KafkaError::check(data.error_code, None) {
                    Ok(()) => {}
                    Err(e) if e.is_stale_metadata() => {
                        round.retry(anyhow::Error::new(e).context(format!("partition {p}")));
                        continue;
                    }
                    Err(e) if e.code == KafkaError::OFFSET_OUT_OF_RANGE => {
                        bail!(
                            "{e}: offset {} is out of range for {}-{p}",
                            pos.offset,
                            topic.name
                        );
                    }
                    Err(e) => {
                        return Err(
                            anyhow::Error::new(e).context(format!("fetching {}-{p}", topic.name))
                        );
                    }
                }
                let Some(records) = data.records.clone() else {
                    continue;
                };
                let fetched = decode_fetched(records, pos.offset).with_context(|| {
                    format!("reading {}-{p} at offset {}", topic.name, pos.offset)
                })?;
                if fetched.next_offset.is_none() && fetched.partial_batch_bytes > 0 {
                    // Not even one whole batch fit: ask for more next time.
                    ensure!(
                        pos.fetch_bytes < PARTITION_FETCH_BYTES_MAX,
                        "record batch at {}-{p} offset {} is larger than {PARTITION_FETCH_BYTES_MAX} bytes",
                        topic.name,
                        pos.offset
                    );
                    pos.fetch_bytes = pos
                        .fetch_bytes
                        .saturating_mul(2)
                        .min(PARTITION_FETCH_BYTES_MAX);
                    continue;
                }
                for record in &fetched.records {
                    if args.max_messages.is_some_and(|m| report.records >= m) {
                        break;
                    }
                    write_record(&mut output, args, p, record);
                    report.records += 1;
                    round.records += 1;
                    pos.offset = record.offset + 1;
                }
                if let Some(next) = fetched.next_offset {
                    pos.offset = pos.offset.max(next);
                }
            }
        }

        if !output.is_empty() {
            let written = async {
                out.write_all(&output).await?;
                out.flush().await
            }
            .await;
            output.clear();
            match written {
                Ok(()) => {}
                // The reader went away (`| head`): a normal end.
                Err(e) if e.kind() == ErrorKind::BrokenPipe => break,
                Err(e) => return Err(anyhow::Error::new(e).context("writing records")),
            }
        }
        if round.records > 0 {
            idle_deadline = idle_limit.map(|d| Instant::now() + d);
        }
        if let Some(error) = round.error {
            failures_in_a_row += 1;
            if failures_in_a_row > FETCH_FAILURES_MAX {
                return Err(error.context(format!(
                    "giving up after {FETCH_FAILURES_MAX} failed fetch rounds"
                )));
            }
            tracing::debug!(error = %format!("{error:#}"), "fetch round failed; refreshing metadata");
            tokio::time::sleep(RETRY_BACKOFF).await;
            match client.topic_metadata(&args.topic, false).await {
                Ok(meta) => topic = meta,
                Err(e) => tracing::debug!(error = %format!("{e:#}"), "metadata refresh failed"),
            }
        } else {
            failures_in_a_row = 0;
            let elapsed = round_started.elapsed();
            if round.records == 0 && elapsed < EMPTY_ROUND_PAUSE {
                tokio::time::sleep(EMPTY_ROUND_PAUSE - elapsed).await;
            }
        }
    }
    out.flush().await.ok();
    Ok(report)
}

/// What one fetch round produced.
#[derive(Default)]
struct Round {
    records: u64,
    /// Set when some partition needs fresh metadata or a retry.
    error: Option<anyhow::Error>,
}

impl Round {
    fn retry(&mut self, error: anyhow::Error) {
        self.error = Some(error);
    }
}

fn fetch_request(
    topic: &TopicMetadata,
    parts: &[(i32, i32, Position)],
    wait_ms: i32,
) -> FetchRequest {
    let partitions = parts
        .iter()
        .map(|&(p, leader_epoch, pos)| {
            FetchPartition::default()
                .with_partition(p)
                .with_current_leader_epoch(leader_epoch)
                .with_fetch_offset(pos.offset)
                .with_partition_max_bytes(pos.fetch_bytes)
        })
        .collect();
    FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(wait_ms)
        .with_min_bytes(1)
        .with_max_bytes(FETCH_BYTES_MAX)
        .with_isolation_level(0)
        .with_session_id(0)
        .with_session_epoch(-1)
        .with_topics(vec![FetchTopic::default()
            .with_topic(TopicName(StrBytes::from_string(topic.name.clone())))
            .with_topic_id(topic.topic_id)
            .with_partitions(partitions)])
}

/// One record in the console consumer's layout: optional
/// `CreateTime:…\tPartition:…\tOffset:…\tkey\t` prefixes, then the value.
fn write_record(out: &mut Vec<u8>, args: &ConsumeArgs, partition: i32, record: &ConsumerRecord) {
    if args.print_timestamp {
        let kind = match record.timestamp_type {
            TimestampType::Creation => "CreateTime",
            TimestampType::LogAppend => "LogAppendTime",
        };
        out.extend_from_slice(format!("{kind}:{}\t", record.timestamp).as_bytes());
    }
    if args.print_partition {
        out.extend_from_slice(format!("Partition:{partition}\t").as_bytes());
    }
    if args.print_offset {
        out.extend_from_slice(format!("Offset:{}\t", record.offset).as_bytes());
    }
    if args.print_key {
        out.extend_from_slice(record.key.as_deref().unwrap_or(b"null"));
        out.push(b'\t');
    }
    out.extend_from_slice(record.value.as_deref().unwrap_or(b"null"));
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ConsumeArgs,
    }

    fn args(argv: &[&str]) -> Result<ConsumeArgs, clap::Error> {
        let mut full = vec!["consume"];
        full.extend_from_slice(argv);
        Cli::try_parse_from(full).map(|c| c.args)
    }

    #[test]
    fn offset_needs_a_partition_and_excludes_from_beginning() {
        assert!(args(&["--topic", "t", "--offset", "5"]).is_err());
        assert!(args(&[
            "--topic",
            "t",
            "--partition",
            "0",
            "--offset",
            "5",
            "--from-beginning"
        ])
        .is_err());
        let a = args(&["--topic", "t", "--partition", "0", "--offset", "5"]).unwrap();
        assert_eq!(a.offset, Some(StartOffset::At(5)));
        let a = args(&["--topic", "t", "--partition", "0", "--offset", "earliest"]).unwrap();
        assert_eq!(a.offset, Some(StartOffset::Earliest));
        assert!(args(&["--topic", "t", "--partition", "0", "--offset", "-3"]).is_err());
    }

    #[test]
    fn records_print_like_the_console_consumer() {
        let record = ConsumerRecord {
            offset: 42,
            timestamp: 1000,
            timestamp_type: TimestampType::Creation,
            key: None,
            value: Some(Bytes::from_static(b"hello")),
        };
        let plain = args(&["--topic", "t"]).unwrap();
        let mut out = Vec::new();
        write_record(&mut out, &plain, 1, &record);
        assert_eq!(out, b"hello\n");
        let all = args(&[
            "--topic",
            "t",
            "--print-key",
            "--print-offset",
            "--print-partition",
            "--print-timestamp",
        ])
        .unwrap();
        let mut out = Vec::new();
        write_record(&mut out, &all, 1, &record);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "CreateTime:1000\tPartition:1\tOffset:42\tnull\thello\n"
        );
    }
}
