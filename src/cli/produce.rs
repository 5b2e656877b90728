//! `fjord produce --topic T`: lines from stdin (or `--message`s) become
//! records, batched per partition and sent to each partition's leader.
//!
//! Batching: records accumulate per partition; a flush sends one v2 batch per
//! partition (Produce v3+ allows exactly one per partition per request) and
//! one Produce request per leader, all leaders concurrently. A flush happens
//! when a partition's batch is full, when the buffer is full, when stdin
//! pauses for [`LINGER`] (so interactive typing is sent promptly), and at the
//! end. Every buffer is bounded by a named constant.
//!
//! Errors are per partition. A partition whose leader moved (or whose topic
//! is still being created) is retried with fresh metadata, since those errors
//! mean nothing was written; a request that failed in flight is not retried,
//! since it may have been written and this producer is not idempotent. Any
//! failed record makes the command exit non-zero.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, ensure, Result};
use bytes::Bytes;
use futures::future::join_all;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::Compression;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt};

use crate::cli::ConnectArgs;
use crate::client::cluster::RETRY_BACKOFF;
use crate::client::partitioner::{partition_for_key, RoundRobin};
use crate::client::records::{encode_batch, ProducerRecord};
use crate::client::{Client, KafkaError, TopicMetadata};

/// Largest batch (uncompressed estimate) per partition per request. Well
/// under Kafka's default `max.message.bytes` (1 MiB), which applies to the
/// batch after compression.
pub const BATCH_BYTES_MAX: usize = 512 * 1024;
/// Most record bytes buffered across all partitions before a flush.
pub const BUFFER_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Longest input line (one record) we accept: Kafka's default
/// `max.message.bytes` is 1 MiB, so longer would be refused anyway.
pub const LINE_BYTES_MAX: usize = 1024 * 1024;
/// How long buffered records wait for more input before they are sent.
pub const LINGER: Duration = Duration::from_millis(50);
/// Produce attempts after the first for partitions whose leader moved.
pub const PRODUCE_RETRIES_MAX: u32 = 5;

/// `--compression` values: the record batch codecs Kafka knows.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompressionArg {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl From<CompressionArg> for Compression {
    fn from(c: CompressionArg) -> Self {
        match c {
            CompressionArg::None => Compression::None,
            CompressionArg::Gzip => Compression::Gzip,
            CompressionArg::Snappy => Compression::Snappy,
            CompressionArg::Lz4 => Compression::Lz4,
            CompressionArg::Zstd => Compression::Zstd,
        }
    }
}

/// `fjord produce`: where to write and how records are keyed, partitioned,
/// acknowledged and compressed.
#[derive(clap::Args, Debug, Clone)]
pub struct ProduceArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Topic to write to.
    #[arg(long)]
    pub topic: String,
    /// Send this value instead of reading stdin (repeatable).
    #[arg(long = "message", short = 'm', value_name = "VALUE")]
    pub messages: Vec<String>,
    /// Key for every record.
    #[arg(long, conflicts_with = "key_separator")]
    pub key: Option<String>,
    /// Split each line at the first SEP into key and value.
    #[arg(long, value_name = "SEP")]
    pub key_separator: Option<String>,
    /// Send every record to this partition.
    #[arg(long)]
    pub partition: Option<i32>,
    /// Acknowledgement: -1 or all (in-sync replicas), 1 (leader), 0 (none).
    #[arg(long, default_value = "-1", allow_negative_numbers = true, value_parser = parse_acks)]
    pub acks: i16,
    /// Compression codec for the record batches.
    #[arg(long, value_enum, default_value_t = CompressionArg::None)]
    pub compression: CompressionArg,
}

fn parse_acks(s: &str) -> Result<i16, String> {
    match s {
        "-1" | "all" => Ok(-1),
        "1" => Ok(1),
        "0" => Ok(0),
        _ => Err(format!("acks must be -1, all, 1 or 0, not '{s}'")),
    }
}

/// Records that did not make it to one partition, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionFailure {
    pub partition: i32,
    pub records: u64,
    pub error: String,
}

/// What a produce run achieved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProduceReport {
    /// Records the broker acknowledged (with acks=0: records sent).
    pub records_acked: u64,
    pub records_failed: u64,
    pub failures: Vec<PartitionFailure>,
}

/// Produces stdin lines (or `--message`s); fails if any record failed.
pub async fn run(args: ProduceArgs) -> Result<()> {
    let mut client = args.connect.connect().await?;
    let result = if args.messages.is_empty() {
        let stdin = tokio::io::BufReader::new(tokio::io::stdin());
        produce_lines(&mut client, &args, stdin).await
    } else {
        produce_messages(&mut client, &args).await
    };
    let report = result?;
    for f in &report.failures {
        eprintln!(
            "failed to produce {} record(s) to {}-{}: {}",
            f.records, args.topic, f.partition, f.error
        );
    }
    if report.records_failed > 0 {
        bail!(
            "{} of {} records were not produced",
            report.records_failed,
            report.records_failed + report.records_acked
        );
    }
    Ok(())
}

/// Produces the `--message` values of `args`.
pub async fn produce_messages(client: &mut Client, args: &ProduceArgs) -> Result<ProduceReport> {
    let mut producer = Producer::new(client, args).await?;
    for (i, m) in args.messages.iter().enumerate() {
        let record = to_record(m.as_bytes(), args, i as u64 + 1)?;
        producer.send(record).await;
    }
    Ok(producer.finish().await)
}

/// Produces one record per line of `input` (`\n` or `\r\n` terminated).
pub async fn produce_lines<R: AsyncBufRead + Unpin>(
    client: &mut Client,
    args: &ProduceArgs,
    mut input: R,
) -> Result<ProduceReport> {
    let mut producer = Producer::new(client, args).await?;
    let mut line = Vec::new();
    let mut line_number = 0u64;
    loop {
        let read = if producer.has_pending() {
            match tokio::time::timeout(LINGER, read_line_part(&mut input, &mut line)).await {
                Ok(read) => read?,
                Err(_) => {
                    producer.flush().await;
                    continue;
                }
            }
        } else {
            read_line_part(&mut input, &mut line).await?
        };
        let at_eof = read == 0;
        if at_eof && line.is_empty() {
            break;
        }
        if !at_eof && line.last() != Some(&b'\n') {
            ensure!(
                line.len() <= LINE_BYTES_MAX,
                "line {} is longer than {LINE_BYTES_MAX} bytes",
                line_number + 1
            );
            continue;
        }
        if line.last() == Some(&b'\n') {
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
        }
        line_number += 1;
        ensure!(
            line.len() <= LINE_BYTES_MAX,
            "line {line_number} is longer than {LINE_BYTES_MAX} bytes"
        );
        let record = match to_record(&line, args, line_number) {
            Ok(r) => r,
            Err(e) => {
                // Lines before the bad one are sent, as with the Java
                // console producer; their failures are reported too.
                let report = producer.finish().await;
                return Err(e.context(format!(
                    "stopped after {} records produced, {} failed",
                    report.records_acked, report.records_failed
                )));
            }
        };
        producer.send(record).await;
        line.clear();
    }
    Ok(producer.finish().await)
}

/// Appends input up to and including the next `\n` to `line`, reading at most
/// a little past [`LINE_BYTES_MAX`]. Cancel safe: bytes read before a
/// cancellation stay in `line`.
async fn read_line_part<R: AsyncBufRead + Unpin>(
    input: &mut R,
    line: &mut Vec<u8>,
) -> Result<usize> {
    let room = (LINE_BYTES_MAX + 2).saturating_sub(line.len()).max(1) as u64;
    Ok(input.take(room).read_until(b'\n', line).await?)
}

fn to_record(line: &[u8], args: &ProduceArgs, line_number: u64) -> Result<ProducerRecord> {
    let (key, value) = match (&args.key, &args.key_separator) {
        (_, Some(sep)) => {
            let sep = sep.as_bytes();
            ensure!(!sep.is_empty(), "--key-separator must not be empty");
            let at = find(line, sep).ok_or_else(|| {
                anyhow!(
                    "line {line_number}: no key separator '{}' found",
                    String::from_utf8_lossy(sep)
                )
            })?;
            (Some(&line[..at]), &line[at + sep.len()..])
        }
        (Some(key), None) => (Some(key.as_bytes()), line),
        (None, None) => (None, line),
    };
    Ok(ProducerRecord {
        key: key.map(Bytes::copy_from_slice),
        value: Some(Bytes::copy_from_slice(value)),
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[derive(Debug, Default)]
struct PendingBatch {
    records: Vec<ProducerRecord>,
    bytes: usize,
}

/// Buffers records per partition and sends them to partition leaders.
pub struct Producer<'c> {
    client: &'c mut Client,
    topic: TopicMetadata,
    acks: i16,
    compression: Compression,
    fixed_partition: Option<i32>,
    round_robin: RoundRobin,
    pending: BTreeMap<i32, PendingBatch>,
    pending_bytes: usize,
    report: ProduceReport,
}

impl<'c> Producer<'c> {
    /// Looks the topic up (creating it if the brokers auto-create topics, as
    /// the Java producer does) and checks `--partition`.
    pub async fn new(client: &'c mut Client, args: &ProduceArgs) -> Result<Producer<'c>> {
        let topic = client.topic_metadata(&args.topic, true).await?;
        ensure!(
            topic.partition_count() > 0,
            "topic '{}' has no partitions",
            args.topic
        );
        if let Some(p) = args.partition {
            ensure!(
                topic.partition(p).is_some(),
                "topic '{}' has no partition {p} (it has {})",
                args.topic,
                topic.partition_count()
            );
        }
        Ok(Producer {
            client,
            topic,
            acks: args.acks,
            compression: args.compression.into(),
            fixed_partition: args.partition,
            round_robin: RoundRobin::new(),
            pending: BTreeMap::new(),
            pending_bytes: 0,
            report: ProduceReport::default(),
        })
    }

    pub fn has_pending(&self) -> bool {
        self.pending_bytes > 0 || !self.pending.is_empty()
    }

    fn choose_partition(&mut self, record: &ProducerRecord) -> i32 {
        let count = self.topic.partition_count();
        match (self.fixed_partition, &record.key) {
            (Some(p), _) => p,
            (None, Some(key)) => partition_for_key(key, count),
            (None, None) => self.round_robin.next_partition(count),
        }
    }

    /// Buffers `record`, flushing first if its partition's batch is full and
    /// afterwards if the whole buffer is.
    pub async fn send(&mut self, record: ProducerRecord) {
        let partition = self.choose_partition(&record);
        let size = record.encoded_bytes_max();
        let batch_bytes = self.pending.get(&partition).map_or(0, |b| b.bytes);
        if batch_bytes > 0 && batch_bytes + size > BATCH_BYTES_MAX {
            self.flush().await;
        }
        let batch = self.pending.entry(partition).or_default();
        batch.records.push(record);
        batch.bytes += size;
        self.pending_bytes += size;
        if self.pending_bytes >= BUFFER_BYTES_MAX {
            self.flush().await;
        }
    }

    /// Sends everything buffered and returns what happened overall.
    pub async fn finish(mut self) -> ProduceReport {
        self.flush().await;
        self.report
    }

    fn fail(&mut self, partition: i32, records: u64, error: String) {
        self.report.records_failed += records;
        self.report.failures.push(PartitionFailure {
            partition,
            records,
            error,
        });
    }

    /// Sends one batch per buffered partition. Never fails as a whole:
    /// outcomes are recorded per partition in the report.
    pub async fn flush(&mut self) {
        let pending = std::mem::take(&mut self.pending);
        self.pending_bytes = 0;
        let timestamp_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let mut todo: BTreeMap<i32, (Bytes, u64)> = BTreeMap::new();
        for (partition, batch) in pending {
            let count = batch.records.len() as u64;
            match encode_batch(&batch.records, self.compression, timestamp_ms) {
                Ok(bytes) => {
                    todo.insert(partition, (bytes, count));
                }
                Err(e) => self.fail(partition, count, format!("{e:#}")),
            }
        }
        let mut last_errors: BTreeMap<i32, String> = BTreeMap::new();
        for attempt in 0..=PRODUCE_RETRIES_MAX {
            if todo.is_empty() {
                break;
            }
            if attempt > 0 {
                tokio::time::sleep(RETRY_BACKOFF).await;
                match self.client.topic_metadata(&self.topic.name, false).await {
                    Ok(meta) => self.topic = meta,
                    Err(e) => {
                        for &p in todo.keys() {
                            last_errors.insert(p, format!("refreshing metadata: {e:#}"));
                        }
                        continue;
                    }
                }
            }
            self.send_attempt(&mut todo, &mut last_errors).await;
        }
        for (partition, (_, count)) in std::mem::take(&mut todo) {
            let error = last_errors
                .remove(&partition)
                .unwrap_or_else(|| "not sent".to_owned());
            self.fail(partition, count, error);
        }
    }

    /// One round: a Produce request per leader, concurrently. Partitions
    /// that succeed or fail for good leave `todo`; those worth retrying stay,
    /// with their error in `last_errors`.
    async fn send_attempt(
        &mut self,
        todo: &mut BTreeMap<i32, (Bytes, u64)>,
        last_errors: &mut BTreeMap<i32, String>,
    ) {
        let mut by_leader: BTreeMap<i32, Vec<i32>> = BTreeMap::new();
        for &p in todo.keys() {
            match self.topic.partition(p) {
                Some(pm) if pm.leader_id >= 0 => by_leader.entry(pm.leader_id).or_default().push(p),
                _ => {
                    last_errors.insert(
                        p,
                        "LEADER_NOT_AVAILABLE: partition has no leader".to_owned(),
                    );
                }
            }
        }
        let topic_name = self.topic.name.clone();
        let topic_id = self.topic.topic_id;
        let acks = self.acks;
        let request_timeout = self.client.config().request_timeout;
        let broker_timeout_ms =
            i32::try_from(request_timeout.as_millis() * 3 / 4).unwrap_or(i32::MAX);
        let (connections, unreachable) = self.client.brokers(by_leader.keys().copied()).await;
        for (leader, error) in unreachable {
            for p in by_leader.get(&leader).into_iter().flatten() {
                last_errors.insert(*p, format!("{error:#}"));
            }
        }
        let todo_ref = &*todo;
        let by_leader_ref = &by_leader;
        let requests = connections.into_iter().map(|(leader, conn)| {
            let topic_name = topic_name.clone();
            async move {
                let partitions = by_leader_ref.get(&leader).cloned().unwrap_or_default();
                // Produce v13 names topics by id only; without an id (old
                // Metadata) stay at v12.
                let version_max = if topic_id.is_nil() { 12 } else { 13 };
                let result = async {
                    let version = conn.version_at_most::<ProduceRequest>(version_max)?;
                    let data = partitions
                        .iter()
                        .filter_map(|p| {
                            todo_ref.get(p).map(|(batch, _)| {
                                PartitionProduceData::default()
                                    .with_index(*p)
                                    .with_records(Some(batch.clone()))
                            })
                        })
                        .collect();
                    let request = ProduceRequest::default()
                        .with_acks(acks)
                        .with_timeout_ms(broker_timeout_ms)
                        .with_topic_data(vec![TopicProduceData::default()
                            .with_name(TopicName(StrBytes::from_string(topic_name)))
                            .with_topic_id(topic_id)
                            .with_partition_data(data)]);
                    if acks == 0 {
                        conn.send_without_response(&request, version).await?;
                        Ok(None)
                    } else {
                        conn.send_within(&request, version, request_timeout)
                            .await
                            .map(Some)
                    }
                }
                .await;
                (partitions, result)
            }
        });
        let results: Vec<(Vec<i32>, Result<Option<ProduceResponse>>)> = join_all(requests).await;
        for (partitions, result) in results {
            match result {
                Ok(None) => {
                    for p in partitions {
                        if let Some((_, count)) = todo.remove(&p) {
                            self.report.records_acked += count;
                        }
                    }
                }
                Ok(Some(response)) => {
                    self.handle_response(&partitions, &response, todo, last_errors)
                }
                Err(e) => {
                    // In flight: the batch may or may not have been written.
                    for p in partitions {
                        if let Some((_, count)) = todo.remove(&p) {
                            self.fail(p, count, format!("{e:#}"));
                        }
                    }
                }
            }
        }
    }

    fn handle_response(
        &mut self,
        partitions: &[i32],
        response: &ProduceResponse,
        todo: &mut BTreeMap<i32, (Bytes, u64)>,
        last_errors: &mut BTreeMap<i32, String>,
    ) {
        let sent: BTreeSet<i32> = partitions.iter().copied().collect();
        let mut answered = BTreeSet::new();
        let (name, id) = (self.topic.name.clone(), self.topic.topic_id);
        let ours = response
            .responses
            .iter()
            .filter(|t| t.name.0.as_str() == name || (!id.is_nil() && t.topic_id == id));
        for pr in ours.flat_map(|t| &t.partition_responses) {
            if !sent.contains(&pr.index) || !answered.insert(pr.index) {
                continue;
            }
            let Some(&(_, count)) = todo.get(&pr.index) else {
                continue;
            };
            let message = pr.error_message.as_ref().map(StrBytes::as_str);
            match KafkaError::check(pr.error_code, message) {
                Ok(()) => {
                    todo.remove(&pr.index);
                    self.report.records_acked += count;
                }
                Err(e) if e.is_stale_metadata() => {
                    last_errors.insert(pr.index, e.to_string());
                }
                Err(e) => {
                    todo.remove(&pr.index);
                    let mut error = e.to_string();
                    for re in pr.record_errors.iter().take(3) {
                        let detail = re
                            .batch_index_error_message
                            .as_ref()
                            .map_or("", StrBytes::as_str);
                        error.push_str(&format!(" (record {}: {detail})", re.batch_index));
                    }
                    self.fail(pr.index, count, error);
                }
            }
        }
        for p in sent.difference(&answered) {
            if let Some((_, count)) = todo.remove(p) {
                self.fail(
                    *p,
                    count,
                    "no answer for this partition in the Produce response".to_owned(),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ProduceArgs,
    }

    fn args(argv: &[&str]) -> ProduceArgs {
        let mut full = vec!["produce"];
        full.extend_from_slice(argv);
        Cli::try_parse_from(full).unwrap().args
    }

    #[test]
    fn acks_accepts_minus_one_all_one_and_zero() {
        assert_eq!(args(&["--topic", "t"]).acks, -1);
        assert_eq!(args(&["--topic", "t", "--acks", "-1"]).acks, -1);
        assert_eq!(args(&["--topic", "t", "--acks", "all"]).acks, -1);
        assert_eq!(args(&["--topic", "t", "--acks", "0"]).acks, 0);
        assert!(Cli::try_parse_from(["p", "--topic", "t", "--acks", "2"]).is_err());
    }

    #[test]
    fn key_and_key_separator_conflict() {
        assert!(
            Cli::try_parse_from(["p", "--topic", "t", "--key", "k", "--key-separator", ":"])
                .is_err()
        );
    }

    #[test]
    fn lines_split_into_key_and_value_at_the_first_separator() {
        let a = args(&["--topic", "t", "--key-separator", "::"]);
        let r = to_record(b"k1::v::1", &a, 1).unwrap();
        assert_eq!(r.key.as_deref(), Some(&b"k1"[..]));
        assert_eq!(r.value.as_deref(), Some(&b"v::1"[..]));
        let err = to_record(b"no separator", &a, 7).unwrap_err();
        assert!(err.to_string().contains("line 7"), "{err}");
        let fixed = args(&["--topic", "t", "--key", "K"]);
        let r = to_record(b"value", &fixed, 1).unwrap();
        assert_eq!(r.key.as_deref(), Some(&b"K"[..]));
        let none = args(&["--topic", "t"]);
        assert_eq!(to_record(b"", &none, 1).unwrap().key, None);
    }

    #[tokio::test]
    async fn line_reader_strips_crlf_and_bounds_line_length() {
        let mut input: &[u8] = b"a\r\nb\nlast";
        let mut line = Vec::new();
        assert_eq!(read_line_part(&mut input, &mut line).await.unwrap(), 3);
        assert_eq!(line, b"a\r\n");
        line.clear();
        read_line_part(&mut input, &mut line).await.unwrap();
        line.clear();
        read_line_part(&mut input, &mut line).await.unwrap();
        assert_eq!(line, b"last");
        let long = vec![b'x'; LINE_BYTES_MAX * 2];
        let mut input: &[u8] = &long;
        let mut line = Vec::new();
        read_line_part(&mut input, &mut line).await.unwrap();
        assert_eq!(
            line.len(),
            LINE_BYTES_MAX + 2,
            "stops reading past the limit"
        );
    }
}
