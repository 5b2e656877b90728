//! Produce validates every record like Kafka's LogValidator: a batch whose
//! CRC is fine but whose records are damaged, lying or forbidden is refused
//! with Kafka's error code (and, from Produce v8, the per-record errors),
//! nothing of it is stored, and a consumer then reads every good record after
//! it. Topic `compression.type` other than `producer` stores batches with the
//! topic's codec, and stock consumers read them back.
//!
//! Batches are built by hand (header, varint records, kafka-protocol's codecs
//! for the compressed bytes) so that each case carries exactly one defect and
//! a valid CRC: only the inner damage remains to be found.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, ensure, Context as _, Result};
use bytes::{BufMut as _, Bytes, BytesMut};
use fjord::client::framing::{decode_response, encode_request, read_frame};
use kafka_protocol::compression::{Compressor as _, Gzip, Lz4, Snappy, Zstd};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::produce_response::PartitionProduceResponse;
use kafka_protocol::messages::{
    BrokerId, FetchRequest, ListOffsetsRequest, ProduceRequest, TopicName,
};
use kafka_protocol::protocol::{Request, StrBytes};
use kafka_protocol::records::RecordBatchDecoder;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::FutureRecord;
use rdkafka::Offset;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use common::{
    assigned_consumer, client_config, consume_count, create_topic, producer, raw, unique_topic,
    Broker, Record, TOPIC_READY_WAIT_MAX,
};

/// Produce v9: carries `record_errors` and `error_message` (v8+).
const PRODUCE_VERSION: i16 = 9;
/// Produce v7: before INVALID_RECORD existed (answers CORRUPT_MESSAGE instead).
const PRODUCE_VERSION_OLD: i16 = 7;
const LIST_OFFSETS_VERSION: i16 = 7;
/// Fetch v11: topics by name, isolation level, no topic ids yet.
const FETCH_VERSION: i16 = 11;
const RESPONSE_BYTES_MAX: usize = 16 << 20;
const CONSUME_WAIT_MAX: Duration = Duration::from_secs(30);

const ERROR_NONE: i16 = 0;
const ERROR_CORRUPT_MESSAGE: i16 = 2;
const ERROR_MESSAGE_TOO_LARGE: i16 = 10;
const ERROR_INVALID_TIMESTAMP: i16 = 32;
const ERROR_INVALID_RECORD: i16 = 87;

const CODEC_NONE: i16 = 0;
const CODEC_GZIP: i16 = 1;
const CODEC_SNAPPY: i16 = 2;
const CODEC_LZ4: i16 = 3;
const CODEC_ZSTD: i16 = 4;
const ATTRIBUTE_LOG_APPEND_TIME: i16 = 0x08;
const ATTRIBUTE_TRANSACTIONAL: i16 = 0x10;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

// ---------------------------------------------------------------- batches

fn put_varint(out: &mut Vec<u8>, value: i64) {
    let mut zigzag = ((value << 1) ^ (value >> 63)) as u64;
    loop {
        if zigzag < 0x80 {
            out.push(zigzag as u8);
            return;
        }
        out.push((zigzag as u8 & 0x7f) | 0x80);
        zigzag >>= 7;
    }
}

/// One v2 record as it sits in a batch (length prefix included).
#[derive(Clone, Debug)]
struct Rec {
    offset_delta: i64,
    timestamp_delta: i64,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    /// Header key length as written (normally the key's length).
    header_key_length: Option<i64>,
    /// Extra bytes inside the record's length that no field accounts for.
    slack_bytes: usize,
}

impl Rec {
    fn new(offset_delta: i64, key: Option<&str>, value: &str) -> Rec {
        Rec {
            offset_delta,
            timestamp_delta: offset_delta,
            key: key.map(|k| k.as_bytes().to_vec()),
            value: Some(value.as_bytes().to_vec()),
            header_key_length: None,
            slack_bytes: 0,
        }
    }

    fn encode(&self, out: &mut Vec<u8>) {
        let mut body = vec![0u8]; // attributes
        put_varint(&mut body, self.timestamp_delta);
        put_varint(&mut body, self.offset_delta);
        for field in [&self.key, &self.value] {
            match field {
                Some(bytes) => {
                    put_varint(&mut body, bytes.len() as i64);
                    body.extend_from_slice(bytes);
                }
                None => put_varint(&mut body, -1),
            }
        }
        match self.header_key_length {
            None => put_varint(&mut body, 0),
            Some(length) => {
                put_varint(&mut body, 1);
                put_varint(&mut body, length);
                body.extend(std::iter::repeat_n(b'h', length.max(0) as usize));
                put_varint(&mut body, -1);
            }
        }
        body.extend(std::iter::repeat_n(0u8, self.slack_bytes));
        put_varint(out, body.len() as i64);
        out.extend_from_slice(&body);
    }
}

/// A batch header's fields; `build` writes the header, the records bytes and
/// a valid CRC.
#[derive(Clone, Debug)]
struct Batch {
    attributes: i16,
    last_offset_delta: i32,
    base_timestamp: i64,
    max_timestamp: i64,
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
    records_count: i32,
}

impl Batch {
    /// Header for `records` as a correct producer would write it.
    fn for_records(records: &[Rec], base_timestamp: i64) -> Batch {
        let count = records.len() as i32;
        let max_delta = records.iter().map(|r| r.timestamp_delta).max().unwrap_or(0);
        Batch {
            attributes: 0,
            last_offset_delta: count - 1,
            base_timestamp,
            max_timestamp: base_timestamp.saturating_add(max_delta),
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
            records_count: count,
        }
    }

    fn codec(mut self, codec: i16) -> Batch {
        self.attributes = (self.attributes & !7) | codec;
        self
    }

    fn build(&self, records_bytes: &[u8]) -> Bytes {
        let mut out = Vec::with_capacity(61 + records_bytes.len());
        out.extend_from_slice(&0i64.to_be_bytes());
        out.extend_from_slice(&((49 + records_bytes.len()) as i32).to_be_bytes());
        out.extend_from_slice(&(-1i32).to_be_bytes());
        out.push(2);
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&self.attributes.to_be_bytes());
        out.extend_from_slice(&self.last_offset_delta.to_be_bytes());
        out.extend_from_slice(&self.base_timestamp.to_be_bytes());
        out.extend_from_slice(&self.max_timestamp.to_be_bytes());
        out.extend_from_slice(&self.producer_id.to_be_bytes());
        out.extend_from_slice(&self.producer_epoch.to_be_bytes());
        out.extend_from_slice(&self.base_sequence.to_be_bytes());
        out.extend_from_slice(&self.records_count.to_be_bytes());
        out.extend_from_slice(records_bytes);
        let crc = crc32c::crc32c(&out[21..]);
        out[17..21].copy_from_slice(&crc.to_be_bytes());
        Bytes::from(out)
    }
}

fn encode_records(records: &[Rec]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in records {
        r.encode(&mut out);
    }
    out
}

/// Compresses `plain` with kafka-protocol's codec for `codec` (what the
/// Rust client stack writes; Java-compatible framing).
fn compress(codec: i16, plain: &[u8]) -> Result<Vec<u8>> {
    let mut out = BytesMut::new();
    let fill = |buf: &mut BytesMut| {
        buf.put_slice(plain);
        Ok(())
    };
    match codec {
        CODEC_NONE => out.put_slice(plain),
        CODEC_GZIP => Gzip::compress(&mut out, fill)?,
        CODEC_SNAPPY => Snappy::compress(&mut out, fill)?,
        CODEC_LZ4 => Lz4::compress(&mut out, fill)?,
        CODEC_ZSTD => Zstd::compress(&mut out, fill)?,
        other => bail!("no codec {other}"),
    }
    Ok(out.to_vec())
}

/// A well-formed batch of `records` with `codec`.
fn good_batch(records: &[Rec], codec: i16) -> Result<Bytes> {
    let bytes = compress(codec, &encode_records(records))?;
    Ok(Batch::for_records(records, now_ms())
        .codec(codec)
        .build(&bytes))
}

fn values(prefix: &str, count: usize) -> Vec<Rec> {
    (0..count)
        .map(|i| Rec::new(i as i64, Some(&format!("k{i}")), &format!("{prefix}-{i}")))
        .collect()
}

// ---------------------------------------------------------------- raw client

/// One connection speaking raw Kafka requests, bounded by `RAW_RESPONSE_WAIT_MAX`.
struct Raw {
    stream: TcpStream,
    correlation_id: i32,
}

impl Raw {
    async fn connect(bootstrap: &str) -> Result<Raw> {
        Ok(Raw {
            stream: raw::connect(bootstrap).await?,
            correlation_id: 0,
        })
    }

    async fn call<R: Request>(&mut self, request: &R, version: i16) -> Result<R::Response> {
        self.correlation_id += 1;
        let client_id = StrBytes::from_static_str("fjord-it");
        let frame = encode_request(request, version, self.correlation_id, &client_id)?;
        self.stream.write_all(&frame).await?;
        let body = tokio::time::timeout(
            raw::RAW_RESPONSE_WAIT_MAX,
            read_frame(&mut self.stream, RESPONSE_BYTES_MAX),
        )
        .await
        .map_err(|_| anyhow!("no response within {:?}", raw::RAW_RESPONSE_WAIT_MAX))??;
        decode_response::<R>(body, version, self.correlation_id)
    }

    async fn produce(
        &mut self,
        topic: &str,
        records: Bytes,
        version: i16,
    ) -> Result<PartitionProduceResponse> {
        let request = ProduceRequest::default()
            .with_acks(-1)
            .with_timeout_ms(30_000)
            .with_topic_data(vec![TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_string(topic.to_string())))
                .with_partition_data(vec![PartitionProduceData::default()
                    .with_index(0)
                    .with_records(Some(records))])]);
        let response = self.call(&request, version).await?;
        response
            .responses
            .into_iter()
            .next()
            .and_then(|t| t.partition_responses.into_iter().next())
            .context("produce response without a partition")
    }

    /// The partition's log end offset (ListOffsets LATEST).
    async fn log_end_offset(&mut self, topic: &str) -> Result<i64> {
        let request = ListOffsetsRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_topics(vec![ListOffsetsTopic::default()
                .with_name(TopicName(StrBytes::from_string(topic.to_string())))
                .with_partitions(vec![ListOffsetsPartition::default()
                    .with_partition_index(0)
                    .with_timestamp(-1)])]);
        let response = self.call(&request, LIST_OFFSETS_VERSION).await?;
        let partition = &response.topics[0].partitions[0];
        ensure!(
            partition.error_code == 0,
            "ListOffsets error {}",
            partition.error_code
        );
        Ok(partition.offset)
    }

    /// The stored batches of partition 0 from offset 0 (one Fetch).
    async fn fetch_all(&mut self, topic: &str) -> Result<Bytes> {
        let request = FetchRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_max_wait_ms(0)
            .with_min_bytes(0)
            .with_max_bytes(RESPONSE_BYTES_MAX as i32 / 2)
            .with_isolation_level(0)
            .with_session_id(0)
            .with_session_epoch(-1)
            .with_topics(vec![FetchTopic::default()
                .with_topic(TopicName(StrBytes::from_string(topic.to_string())))
                .with_partitions(vec![FetchPartition::default()
                    .with_partition(0)
                    .with_fetch_offset(0)
                    .with_partition_max_bytes(RESPONSE_BYTES_MAX as i32 / 2)])]);
        let response = self.call(&request, FETCH_VERSION).await?;
        let partition = &response.responses[0].partitions[0];
        ensure!(
            partition.error_code == 0,
            "Fetch error {}",
            partition.error_code
        );
        Ok(partition.records.clone().unwrap_or_default())
    }
}

/// Codec ids (attribute bits 0-2) of every batch in `records`.
fn batch_codecs(records: &[u8]) -> Result<Vec<i16>> {
    let mut codecs = Vec::new();
    let mut at = 0;
    while at < records.len() {
        ensure!(records.len() >= at + 61, "truncated batch at {at}");
        let length = i32::from_be_bytes(records[at + 8..at + 12].try_into()?) as usize;
        let attributes = i16::from_be_bytes(records[at + 21..at + 23].try_into()?);
        codecs.push(attributes & 7);
        at += 12 + length;
    }
    Ok(codecs)
}

async fn create_topic_with(bootstrap: &str, topic: &str, configs: &[(&str, &str)]) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = client_config(bootstrap).create()?;
    let options = AdminOptions::new().operation_timeout(Some(TOPIC_READY_WAIT_MAX));
    let mut new_topic = NewTopic::new(topic, 1, TopicReplication::Fixed(1));
    for (k, v) in configs {
        new_topic = new_topic.set(k, v);
    }
    let results = tokio::time::timeout(
        TOPIC_READY_WAIT_MAX,
        admin.create_topics([&new_topic], &options),
    )
    .await
    .context("CreateTopics timed out")??;
    for result in results {
        result
            .map_err(|(name, code)| anyhow!("creating topic {name} with {configs:?}: {code:?}"))?;
    }
    // Wait for a leader the same way create_topic does.
    common::watermarks(bootstrap, topic, 1).await.map(drop)
}

fn values_of(records: &[Record]) -> Vec<String> {
    records
        .iter()
        .map(|r| String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into_owned())
        .collect()
}

// ---------------------------------------------------------------- cases

/// A defective batch and what the broker must answer.
struct Case {
    name: &'static str,
    batch: Bytes,
    version: i16,
    error_code: i16,
    /// For per-record defects: the batch indexes the v8+ answer must name.
    record_errors: Option<Vec<i32>>,
}

fn case(name: &'static str, batch: Bytes, error_code: i16) -> Case {
    Case {
        name,
        batch,
        version: PRODUCE_VERSION,
        error_code,
        record_errors: None,
    }
}

fn defective_batches() -> Result<Vec<Case>> {
    let now = now_ms();
    let three = values("x", 3);
    let plain = encode_records(&three);
    let mut cases = Vec::new();

    // Garbage where compressed records should be, for every codec.
    let garbage = raw::pseudo_random_bytes(11, 300);
    for (name, codec) in [
        ("garbage gzip data", CODEC_GZIP),
        ("garbage snappy data", CODEC_SNAPPY),
        ("garbage lz4 data", CODEC_LZ4),
        ("garbage zstd data", CODEC_ZSTD),
    ] {
        let batch = Batch::for_records(&three, now).codec(codec).build(&garbage);
        cases.push(case(name, batch, ERROR_INVALID_RECORD));
    }
    // Well-compressed garbage: the codec is happy, the records are not.
    for (name, codec) in [
        ("gzip of garbage records", CODEC_GZIP),
        ("zstd of garbage records", CODEC_ZSTD),
    ] {
        let batch = Batch::for_records(&three, now)
            .codec(codec)
            .build(&compress(codec, &garbage)?);
        cases.push(case(name, batch, ERROR_INVALID_RECORD));
    }
    cases.push(case(
        "garbage uncompressed records",
        Batch::for_records(&three, now).build(&garbage[..60]),
        ERROR_INVALID_RECORD,
    ));
    let mut old = case(
        "garbage records, produce v7",
        Batch::for_records(&three, now).build(&garbage[..60]),
        ERROR_CORRUPT_MESSAGE,
    );
    old.version = PRODUCE_VERSION_OLD;
    cases.push(old);

    // Counts that disagree with the records, both ways, plain and compressed.
    for (name, codec) in [
        ("count above the records (uncompressed)", CODEC_NONE),
        ("count above the records (lz4)", CODEC_LZ4),
    ] {
        let mut header = Batch::for_records(&three, now).codec(codec);
        header.records_count = 5;
        header.last_offset_delta = 4;
        let batch = header.build(&compress(codec, &plain)?);
        cases.push(case(name, batch, ERROR_INVALID_RECORD));
    }
    for (name, codec) in [
        ("count below the records (uncompressed)", CODEC_NONE),
        ("count below the records (snappy)", CODEC_SNAPPY),
    ] {
        let mut header = Batch::for_records(&three, now).codec(codec);
        header.records_count = 2;
        header.last_offset_delta = 1;
        header.max_timestamp = now + 1;
        let batch = header.build(&compress(codec, &plain)?);
        cases.push(case(name, batch, ERROR_INVALID_RECORD));
    }
    let one = values("one", 1);
    let mut header = Batch::for_records(&one, now).codec(CODEC_GZIP);
    header.records_count = i32::MAX;
    header.last_offset_delta = i32::MAX - 1;
    cases.push(case(
        "gzip batch claiming i32::MAX records",
        header.build(&compress(CODEC_GZIP, &encode_records(&one))?),
        ERROR_INVALID_RECORD,
    ));

    // Offset deltas that are not 0, 1, 2, ...
    let mut skewed = values("skew", 3);
    skewed[1].offset_delta = 0;
    skewed[1].timestamp_delta = 1;
    let mut c = case(
        "offsetDelta not the record's index",
        Batch::for_records(&skewed, now).build(&encode_records(&skewed)),
        ERROR_INVALID_RECORD,
    );
    c.record_errors = Some(vec![1]);
    cases.push(c);

    // A record whose length covers a byte none of its fields use.
    let mut slack = values("slack", 2);
    slack[1].slack_bytes = 1;
    cases.push(case(
        "record length disagrees with its fields",
        Batch::for_records(&slack, now).build(&encode_records(&slack)),
        ERROR_INVALID_RECORD,
    ));
    let mut bad_header = values("hdr", 1);
    bad_header[0].header_key_length = Some(-1);
    cases.push(case(
        "header with a null key",
        Batch::for_records(&bad_header, now).build(&encode_records(&bad_header)),
        ERROR_INVALID_RECORD,
    ));
    let mut trailing = plain.clone();
    trailing.extend_from_slice(&[0, 0, 0]);
    cases.push(case(
        "trailing bytes after the records",
        Batch::for_records(&three, now).build(&trailing),
        ERROR_INVALID_RECORD,
    ));

    // Timestamps.
    let mut oldest = Batch::for_records(&one, i64::MIN);
    oldest.max_timestamp = i64::MIN;
    let mut c = case(
        "timestamp -2^63",
        oldest.build(&encode_records(&one)),
        ERROR_INVALID_TIMESTAMP,
    );
    c.record_errors = Some(vec![0]);
    cases.push(c);
    let mut below = Batch::for_records(&three, now);
    below.max_timestamp = now - 1_000;
    cases.push(case(
        "maxTimestamp below baseTimestamp",
        below.build(&plain),
        ERROR_INVALID_RECORD,
    ));
    let mut wrong_max = Batch::for_records(&three, now).codec(CODEC_ZSTD);
    wrong_max.max_timestamp = now + 1;
    cases.push(case(
        "maxTimestamp not the largest record timestamp (zstd)",
        wrong_max.build(&compress(CODEC_ZSTD, &plain)?),
        ERROR_INVALID_RECORD,
    ));
    let mut future = values("future", 3);
    future[1].timestamp_delta = 2 * 3_600_000;
    let mut c = case(
        "one record two hours in the future",
        Batch::for_records(&future, now).build(&encode_records(&future)),
        ERROR_INVALID_TIMESTAMP,
    );
    c.record_errors = Some(vec![1]);
    cases.push(c);
    let mut log_append = Batch::for_records(&three, now);
    log_append.attributes |= ATTRIBUTE_LOG_APPEND_TIME;
    let mut c = case(
        "producer set LogAppendTime",
        log_append.build(&plain),
        ERROR_INVALID_TIMESTAMP,
    );
    c.record_errors = Some(vec![0, 1, 2]);
    cases.push(c);
    Ok(cases)
}

/// Checks one answer against its case; returns what was wrong.
fn check_answer(case: &Case, answer: &PartitionProduceResponse) -> Option<String> {
    if answer.error_code != case.error_code {
        return Some(format!(
            "{}: error code {} (expected {}), base offset {}",
            case.name, answer.error_code, case.error_code, answer.base_offset
        ));
    }
    if case.version >= 8 {
        let message = answer.error_message.as_deref().unwrap_or_default();
        if message.is_empty() {
            return Some(format!("{}: no error_message", case.name));
        }
    }
    if let Some(expected) = &case.record_errors {
        let got: Vec<i32> = answer.record_errors.iter().map(|e| e.batch_index).collect();
        if &got != expected {
            return Some(format!(
                "{}: record_errors at {got:?}, expected {expected:?}",
                case.name
            ));
        }
        if answer.record_errors.iter().any(|e| {
            e.batch_index_error_message
                .as_deref()
                .unwrap_or_default()
                .is_empty()
        }) {
            return Some(format!("{}: a record error without a message", case.name));
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defective_batches_are_refused_and_change_nothing() -> Result<()> {
    let broker = Broker::start()?;
    let bootstrap = broker.bootstrap();
    let topic = unique_topic("defects");
    create_topic(bootstrap, &topic, 1).await?;
    let mut conn = Raw::connect(bootstrap).await?;

    let mut failures = Vec::new();
    let mut expected_values = Vec::new();
    for (i, case) in defective_batches()?.into_iter().enumerate() {
        let before = conn.log_end_offset(&topic).await?;
        let answer = conn
            .produce(&topic, case.batch.clone(), case.version)
            .await?;
        failures.extend(check_answer(&case, &answer));
        let after = conn.log_end_offset(&topic).await?;
        if after != before {
            failures.push(format!(
                "{}: log end offset moved from {before} to {after}",
                case.name
            ));
        }
        // A good batch right after: stored where the log ended, readable.
        let good = values(&format!("good{i}"), 2);
        let answer = conn
            .produce(&topic, good_batch(&good, CODEC_NONE)?, PRODUCE_VERSION)
            .await?;
        if answer.error_code != ERROR_NONE || answer.base_offset != after {
            failures.push(format!(
                "good batch after {}: error {} at base offset {} (log end was {after})",
                case.name, answer.error_code, answer.base_offset
            ));
        }
        expected_values.extend((0..2).map(|j| format!("good{i}-{j}")));
    }
    ensure!(
        failures.is_empty(),
        "{} problems:\n{}",
        failures.len(),
        failures.join("\n")
    );

    let end = conn.log_end_offset(&topic).await?;
    ensure!(
        end == expected_values.len() as i64,
        "log holds {end} offsets, {} good records were produced",
        expected_values.len()
    );
    let consumer = assigned_consumer(bootstrap, &topic, 1, Offset::Beginning, &[])?;
    let records = consume_count(&consumer, expected_values.len(), CONSUME_WAIT_MAX).await?;
    ensure!(
        values_of(&records) == expected_values,
        "consumed {records:?}"
    );
    common::assert_offsets_contiguous(&records, 0)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactional_batch_is_refused_and_read_committed_sees_nothing_of_it() -> Result<()> {
    let broker = Broker::start()?;
    let bootstrap = broker.bootstrap();
    let topic = unique_topic("txn");
    create_topic(bootstrap, &topic, 1).await?;
    let mut conn = Raw::connect(bootstrap).await?;

    let records = values("txn", 2);
    let mut header = Batch::for_records(&records, now_ms());
    header.attributes |= ATTRIBUTE_TRANSACTIONAL;
    header.producer_id = 4_000;
    header.producer_epoch = 0;
    header.base_sequence = 0;
    let answer = conn
        .produce(
            &topic,
            header.build(&encode_records(&records)),
            PRODUCE_VERSION,
        )
        .await?;
    let message = answer
        .error_message
        .as_deref()
        .unwrap_or_default()
        .to_string();
    ensure!(
        answer.error_code == ERROR_INVALID_RECORD && message.contains("transaction"),
        "transactional batch answered {} {message:?}",
        answer.error_code
    );
    ensure!(
        conn.log_end_offset(&topic).await? == 0,
        "log end offset moved"
    );

    let good = values("plain", 1);
    let answer = conn
        .produce(&topic, good_batch(&good, CODEC_NONE)?, PRODUCE_VERSION)
        .await?;
    ensure!(answer.error_code == ERROR_NONE, "good batch: {answer:?}");
    let consumer = assigned_consumer(
        bootstrap,
        &topic,
        1,
        Offset::Beginning,
        &[("isolation.level", "read_committed")],
    )?;
    let got = consume_count(&consumer, 1, CONSUME_WAIT_MAX).await?;
    ensure!(
        values_of(&got) == ["plain-0"],
        "read_committed consumer got {got:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyless_record_into_compacted_topic_is_invalid_record() -> Result<()> {
    let broker = Broker::start()?;
    let bootstrap = broker.bootstrap();
    let topic = unique_topic("compacted");
    create_topic_with(bootstrap, &topic, &[("cleanup.policy", "compact")]).await?;
    let mut conn = Raw::connect(bootstrap).await?;

    let mut records = values("c", 3);
    records[1].key = None;
    let answer = conn
        .produce(&topic, good_batch(&records, CODEC_LZ4)?, PRODUCE_VERSION)
        .await?;
    let indexes: Vec<i32> = answer.record_errors.iter().map(|e| e.batch_index).collect();
    let message = answer
        .record_errors
        .first()
        .and_then(|e| e.batch_index_error_message.as_deref())
        .unwrap_or_default()
        .to_string();
    ensure!(
        answer.error_code == ERROR_INVALID_RECORD && indexes == [1] && message.contains("key"),
        "keyless record answered {} with record errors {indexes:?} {message:?}",
        answer.error_code
    );
    ensure!(
        conn.log_end_offset(&topic).await? == 0,
        "log end offset moved"
    );

    let keyed = values("keyed", 2);
    let answer = conn
        .produce(&topic, good_batch(&keyed, CODEC_NONE)?, PRODUCE_VERSION)
        .await?;
    ensure!(answer.error_code == ERROR_NONE, "keyed batch: {answer:?}");
    let consumer = assigned_consumer(bootstrap, &topic, 1, Offset::Beginning, &[])?;
    let got = consume_count(&consumer, 2, CONSUME_WAIT_MAX).await?;
    ensure!(
        values_of(&got) == ["keyed-0", "keyed-1"],
        "consumed {got:?}"
    );
    Ok(())
}

/// Every target codec: batches of every producer codec (raw, and from
/// librdkafka) are stored with the topic's codec, Fetch shows it, and
/// librdkafka and kafka-protocol read the values back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_compression_type_recompresses_what_producers_send() -> Result<()> {
    let broker = Broker::start()?;
    let bootstrap = broker.bootstrap();
    let mut conn = Raw::connect(bootstrap).await?;
    let sources = [CODEC_NONE, CODEC_GZIP, CODEC_SNAPPY, CODEC_LZ4, CODEC_ZSTD];
    for (target_name, target) in [
        ("gzip", CODEC_GZIP),
        ("snappy", CODEC_SNAPPY),
        ("lz4", CODEC_LZ4),
        ("zstd", CODEC_ZSTD),
        ("uncompressed", CODEC_NONE),
    ] {
        let topic = unique_topic(&format!("recompress-{target_name}"));
        create_topic_with(bootstrap, &topic, &[("compression.type", target_name)]).await?;
        let mut expected = Vec::new();
        for source in sources {
            let records = values(&format!("{target_name}-from-{source}"), 20);
            let answer = conn
                .produce(&topic, good_batch(&records, source)?, PRODUCE_VERSION)
                .await?;
            ensure!(
                answer.error_code == ERROR_NONE,
                "{target_name} topic, codec {source}: {answer:?}"
            );
            expected.extend((0..20).map(|i| format!("{target_name}-from-{source}-{i}")));
        }
        let librdkafka_codec = if target == CODEC_LZ4 { "snappy" } else { "lz4" };
        let rd_producer = producer(
            bootstrap,
            &[("compression.type", librdkafka_codec), ("linger.ms", "5")],
        )?;
        for i in 0..50 {
            let value = format!("{target_name}-rdkafka-{i}");
            let key = format!("k{i}");
            rd_producer
                .send(
                    FutureRecord::to(&topic).key(&key).payload(&value),
                    Duration::from_secs(10),
                )
                .await
                .map_err(|(e, _)| anyhow!("rdkafka produce to the {target_name} topic: {e}"))?;
            expected.push(value);
        }

        let stored = conn.fetch_all(&topic).await?;
        let codecs = batch_codecs(&stored)?;
        ensure!(
            !codecs.is_empty() && codecs.iter().all(|&c| c == target),
            "{target_name} topic stores batches with codecs {codecs:?}"
        );
        let mut buf = stored.clone();
        let decoded = RecordBatchDecoder::decode_all(&mut buf)
            .with_context(|| format!("kafka-protocol decoding the {target_name} topic"))?;
        let decoded_values: Vec<String> = decoded
            .iter()
            .flat_map(|set| &set.records)
            .map(|r| String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into_owned())
            .collect();
        ensure!(
            decoded_values == expected,
            "{target_name}: kafka-protocol read {decoded_values:?}"
        );

        let consumer = assigned_consumer(bootstrap, &topic, 1, Offset::Beginning, &[])?;
        let got = consume_count(&consumer, expected.len(), CONSUME_WAIT_MAX)
            .await
            .with_context(|| format!("librdkafka reading the {target_name} topic"))?;
        ensure!(
            values_of(&got) == expected,
            "{target_name}: librdkafka read {got:?}"
        );
        common::assert_offsets_contiguous(&got, 0)?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_message_bytes_applies_to_the_recompressed_batch() -> Result<()> {
    let broker = Broker::start()?;
    let bootstrap = broker.bootstrap();
    let topic = unique_topic("rebuilt-too-large");
    create_topic_with(
        bootstrap,
        &topic,
        &[
            ("compression.type", "uncompressed"),
            ("max.message.bytes", "10000"),
        ],
    )
    .await?;
    let mut conn = Raw::connect(bootstrap).await?;
    // 100 kB of one byte: a few hundred bytes as gzip, 100 kB uncompressed.
    let big = "a".repeat(100_000);
    let records = vec![Rec::new(0, Some("k"), &big)];
    let batch = good_batch(&records, CODEC_GZIP)?;
    ensure!(batch.len() < 10_000, "test batch is {} bytes", batch.len());
    let answer = conn.produce(&topic, batch, PRODUCE_VERSION).await?;
    ensure!(
        answer.error_code == ERROR_MESSAGE_TOO_LARGE,
        "answered {answer:?}"
    );
    ensure!(
        conn.log_end_offset(&topic).await? == 0,
        "log end offset moved"
    );
    let small = values("small", 3);
    let answer = conn
        .produce(&topic, good_batch(&small, CODEC_GZIP)?, PRODUCE_VERSION)
        .await?;
    ensure!(answer.error_code == ERROR_NONE, "small batch: {answer:?}");
    ensure!(
        batch_codecs(&conn.fetch_all(&topic).await?)? == [CODEC_NONE],
        "small batch not stored uncompressed"
    );
    Ok(())
}
