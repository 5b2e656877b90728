//! The client subcommands against a real broker (Apache Kafka or Fjord).
//!
//! Each test starts its own `fjord` broker, unless `FJORD_TEST_BOOTSTRAP=host:port`
//! names one (point it at Apache Kafka to check the CLI speaks plain Kafka).
//! Topics get unique names, so the broker may be shared with other work.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

mod common;

use clap::Parser;
use fjord::cli::consume::{self, ConsumeArgs};
use fjord::cli::produce::{self, ProduceArgs};
use fjord::cli::topic::{self, CreateArgs, DeleteArgs, DescribeArgs, ListArgs};
use fjord::client::partitioner::partition_for_key;
use fjord::client::{Client, ClientConfig, KafkaError};
use tokio::io::AsyncWriteExt;

const ENV: &str = "FJORD_TEST_BOOTSTRAP";
const RECORDS: usize = 10_000;
/// How long a consumer waits for a record that should not come.
const QUIET_MS: &str = "1500";

/// A broker to test against: `FJORD_TEST_BOOTSTRAP` if set (e.g. an Apache
/// Kafka, to check that the CLI speaks plain Kafka), else a fresh `fjord`.
fn bootstrap(_test: &str) -> Option<(Option<common::Broker>, String)> {
    match std::env::var(ENV) {
        Ok(b) if !b.is_empty() => Some((None, b)),
        _ => {
            let broker = common::Broker::start().expect("start a fjord broker");
            let addr = broker.bootstrap().to_string();
            Some((Some(broker), addr))
        }
    }
}

fn unique(name: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("fjord-cli-test-{name}-{}-{nanos}", std::process::id())
}

async fn client(bootstrap: &str) -> Client {
    Client::connect(bootstrap, ClientConfig::default())
        .await
        .expect("connect to the test broker")
}

#[derive(Parser)]
struct ProduceCli {
    #[command(flatten)]
    args: ProduceArgs,
}

#[derive(Parser)]
struct ConsumeCli {
    #[command(flatten)]
    args: ConsumeArgs,
}

fn produce_args(bootstrap: &str, extra: &[&str]) -> ProduceArgs {
    let mut argv = vec!["produce", "--bootstrap-server", bootstrap];
    argv.extend_from_slice(extra);
    ProduceCli::try_parse_from(argv).unwrap().args
}

fn consume_args(bootstrap: &str, extra: &[&str]) -> ConsumeArgs {
    let mut argv = vec!["consume", "--bootstrap-server", bootstrap];
    argv.extend_from_slice(extra);
    ConsumeCli::try_parse_from(argv).unwrap().args
}

/// Creates a topic and waits (bounded) until every partition has a leader.
async fn create_topic(client: &mut Client, name: &str, partitions: i32) {
    let args = CreateArgs {
        name: name.to_owned(),
        partitions: Some(partitions),
        replication_factor: None,
        configs: vec![],
    };
    topic::create(client, &args).await.expect("create topic");
    for _ in 0..50 {
        if let Ok(meta) = client.topic_metadata(name, false).await {
            if meta.all_partitions_led() && meta.partition_count() == partitions {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("topic {name} never got leaders");
}

async fn delete_topic(client: &mut Client, name: &str) {
    let args = DeleteArgs {
        name: name.to_owned(),
    };
    topic::delete(client, &args).await.expect("delete topic");
}

/// Consumes with `--print-partition --print-key` and parses the lines.
async fn consume_lines(client: &mut Client, args: &ConsumeArgs) -> Vec<(i32, String, String)> {
    let mut out: Vec<u8> = Vec::new();
    consume::consume(client, args, &mut out)
        .await
        .expect("consume");
    String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| {
            let mut parts = l.splitn(3, '\t');
            let partition = parts.next().unwrap().trim_start_matches("Partition:");
            let key = parts.next().unwrap().to_owned();
            let value = parts.next().unwrap().to_owned();
            (partition.parse().unwrap(), key, value)
        })
        .collect()
}

#[tokio::test]
async fn topic_create_list_describe_delete() {
    let Some((_broker, bootstrap)) = bootstrap("topic_create_list_describe_delete") else {
        return;
    };
    let mut client = client(&bootstrap).await;
    let name = unique("admin");
    let create = CreateArgs {
        name: name.clone(),
        partitions: Some(3),
        replication_factor: Some(1),
        configs: vec![("retention.ms".to_owned(), "123456".to_owned())],
    };
    assert_eq!(
        topic::create(&mut client, &create).await.unwrap(),
        format!("Created topic {name}.\n")
    );

    let again = topic::create(&mut client, &create).await.unwrap_err();
    let kafka = again.downcast_ref::<KafkaError>().expect("a Kafka error");
    assert_eq!(kafka.name(), "TOPIC_ALREADY_EXISTS");

    let listed = topic::list(
        &mut client,
        &ListArgs {
            exclude_internal: true,
        },
    )
    .await
    .unwrap();
    assert!(listed.lines().any(|l| l == name), "{name} not listed");
    assert!(!listed.lines().any(|l| l == "__consumer_offsets"));

    let describe = DescribeArgs {
        name: Some(name.clone()),
        all_configs: false,
    };
    let described = topic::describe(&mut client, &describe).await.unwrap();
    assert!(described.config_errors.is_empty());
    let text = described.text;
    let header = text.lines().next().unwrap();
    assert!(
        header.starts_with(&format!("Topic: {name}\tTopicId: ")),
        "{text}"
    );
    assert!(
        header.contains("\tPartitionCount: 3\tReplicationFactor: 1\t"),
        "{text}"
    );
    assert!(header.contains("retention.ms=123456"), "{text}");
    for p in 0..3 {
        assert!(
            text.contains(&format!("\tTopic: {name}\tPartition: {p}\tLeader: ")),
            "{text}"
        );
    }

    assert_eq!(
        topic::delete(&mut client, &DeleteArgs { name: name.clone() })
            .await
            .unwrap(),
        format!("Deleted topic {name}.\n")
    );
    let gone = topic::delete(&mut client, &DeleteArgs { name: name.clone() })
        .await
        .unwrap_err();
    assert_eq!(
        gone.downcast_ref::<KafkaError>()
            .map(KafkaError::name)
            .as_deref(),
        Some("UNKNOWN_TOPIC_OR_PARTITION"),
        "{gone:#}"
    );
}

#[tokio::test]
async fn keyed_records_round_trip_exactly_once_with_every_codec() {
    let Some((_broker, bootstrap)) =
        bootstrap("keyed_records_round_trip_exactly_once_with_every_codec")
    else {
        return;
    };
    let input: String = (0..RECORDS)
        .map(|i| format!("key-{i}:value-{i}\n"))
        .collect();
    for codec in ["none", "gzip", "snappy", "lz4", "zstd"] {
        let mut client = client(&bootstrap).await;
        let name = unique(codec);
        create_topic(&mut client, &name, 3).await;

        let args = produce_args(
            &bootstrap,
            &[
                "--topic",
                &name,
                "--key-separator",
                ":",
                "--compression",
                codec,
            ],
        );
        let report = produce::produce_lines(&mut client, &args, input.as_bytes())
            .await
            .unwrap();
        assert_eq!(report.records_failed, 0, "{codec}: {:?}", report.failures);
        assert_eq!(report.records_acked, RECORDS as u64, "{codec}");

        // Ask for one more than was written: exactly RECORDS must arrive,
        // then the consumer goes quiet and stops.
        let max = (RECORDS + 1).to_string();
        let args = consume_args(
            &bootstrap,
            &[
                "--topic",
                &name,
                "--from-beginning",
                "--max-messages",
                &max,
                "--timeout-ms",
                QUIET_MS,
                "--print-partition",
                "--print-key",
            ],
        );
        let got = consume_lines(&mut client, &args).await;
        assert_eq!(got.len(), RECORDS, "{codec}: record count");

        let mut seen = BTreeSet::new();
        let mut last_per_partition: BTreeMap<i32, usize> = BTreeMap::new();
        let mut per_partition: BTreeMap<i32, usize> = BTreeMap::new();
        for (partition, key, value) in &got {
            let i: usize = key.trim_start_matches("key-").parse().unwrap();
            assert_eq!(value, &format!("value-{i}"), "{codec}");
            assert!(seen.insert(i), "{codec}: key-{i} delivered twice");
            assert_eq!(
                *partition,
                partition_for_key(key.as_bytes(), 3),
                "{codec}: key-{i} in the partition the Java client would pick"
            );
            // Within a partition, records come back in the order produced.
            if let Some(&prev) = last_per_partition.get(partition) {
                assert!(i > prev, "{codec}: order in partition {partition}");
            }
            last_per_partition.insert(*partition, i);
            *per_partition.entry(*partition).or_default() += 1;
        }
        assert_eq!(seen.len(), RECORDS);
        assert_eq!(
            per_partition.len(),
            3,
            "{codec}: keys spread: {per_partition:?}"
        );
        delete_topic(&mut client, &name).await;
    }
}

#[tokio::test]
async fn unkeyed_records_spread_and_partition_offset_reads() {
    let Some((_broker, bootstrap)) = bootstrap("unkeyed_records_spread_and_partition_offset_reads")
    else {
        return;
    };
    let mut client = client(&bootstrap).await;
    let name = unique("spread");
    create_topic(&mut client, &name, 3).await;
    let input: String = (0..300).map(|i| format!("v{i}\n")).collect();
    let args = produce_args(&bootstrap, &["--topic", &name, "--acks", "1"]);
    let report = produce::produce_lines(&mut client, &args, input.as_bytes())
        .await
        .unwrap();
    assert_eq!(report.records_acked, 300);

    let args = consume_args(
        &bootstrap,
        &[
            "--topic",
            &name,
            "--from-beginning",
            "--max-messages",
            "300",
            "--print-partition",
            "--print-key",
        ],
    );
    let got = consume_lines(&mut client, &args).await;
    let mut counts = BTreeMap::new();
    for (p, key, _) in &got {
        assert_eq!(key, "null");
        *counts.entry(*p).or_insert(0) += 1;
    }
    assert_eq!(
        counts.values().copied().collect::<Vec<i32>>(),
        vec![100, 100, 100]
    );

    // --partition P --offset O reads from O on, --max-messages stops early.
    let p0: Vec<String> = got
        .iter()
        .filter(|(p, _, _)| *p == 0)
        .map(|(_, _, v)| v.clone())
        .collect();
    let args = consume_args(
        &bootstrap,
        &[
            "--topic",
            &name,
            "--partition",
            "0",
            "--offset",
            "90",
            "--max-messages",
            "5",
            "--print-partition",
            "--print-key",
        ],
    );
    let tail = consume_lines(&mut client, &args).await;
    let values: Vec<String> = tail.into_iter().map(|(_, _, v)| v).collect();
    assert_eq!(values, p0[90..95].to_vec());

    // Without --from-beginning the consumer starts at the end.
    let args = consume_args(&bootstrap, &["--topic", &name, "--timeout-ms", "500"]);
    let mut out: Vec<u8> = Vec::new();
    let report = consume::consume(&mut client, &args, &mut out)
        .await
        .unwrap();
    assert_eq!(report.records, 0);

    // Explicit --message values with a fixed key land in one partition.
    let args = produce_args(
        &bootstrap,
        &["--topic", &name, "--key", "k", "-m", "x", "-m", "y"],
    );
    let report = produce::produce_messages(&mut client, &args).await.unwrap();
    assert_eq!(report.records_acked, 2);
    delete_topic(&mut client, &name).await;
}

/// The built binary: stdin/stdout plumbing, exit codes, error names.
#[tokio::test]
async fn binary_pipes_records_and_fails_with_kafka_error_names() {
    let Some((_broker, bootstrap)) =
        bootstrap("binary_pipes_records_and_fails_with_kafka_error_names")
    else {
        return;
    };
    let bin = env!("CARGO_BIN_EXE_fjord");
    let name = unique("bin");
    let run = |args: Vec<String>| {
        tokio::process::Command::new(bin)
            .args(args)
            .env("FJORD_BOOTSTRAP_SERVER", &bootstrap)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    };
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();

    let out = run(s(&["topic", "create", &name, "--partitions", "2"]))
        .wait_with_output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut producer = run(s(&["produce", "--topic", &name, "--compression", "gzip"]));
    let mut stdin = producer.stdin.take().unwrap();
    stdin.write_all(b"one\ntwo\r\nthree").await.unwrap();
    drop(stdin);
    let out = producer.wait_with_output().await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = run(s(&[
        "consume",
        "--topic",
        &name,
        "--from-beginning",
        "--timeout-ms",
        QUIET_MS,
    ]))
    .wait_with_output()
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut lines: Vec<&str> = std::str::from_utf8(&out.stdout).unwrap().lines().collect();
    lines.sort_unstable();
    assert_eq!(lines, vec!["one", "three", "two"]);

    let out = run(s(&["topic", "create", &name]))
        .wait_with_output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("TOPIC_ALREADY_EXISTS"));

    let out = run(s(&["topic", "delete", &name]))
        .wait_with_output()
        .await
        .unwrap();
    assert!(out.status.success());

    let out = run(s(&["topic", "describe", &unique("missing")]))
        .wait_with_output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("UNKNOWN_TOPIC_OR_PARTITION"));
}

/// Old and topic-id-less request layouts, forced with version caps, against
/// a broker that speaks newer ones: the paths a Fjord that advertises less
/// than Kafka 4 would take.
#[tokio::test]
async fn round_trip_with_older_protocol_versions() {
    let Some((_broker, bootstrap)) = bootstrap("round_trip_with_older_protocol_versions") else {
        return;
    };
    use kafka_protocol::messages::ApiKey;
    let profiles: [(&str, &[(ApiKey, i16)]); 2] = [
        (
            "oldest",
            &[
                (ApiKey::ApiVersions, 0),
                (ApiKey::Metadata, 1),
                (ApiKey::Produce, 3),
                (ApiKey::Fetch, 4),
                (ApiKey::ListOffsets, 1),
                (ApiKey::CreateTopics, 2),
                (ApiKey::DeleteTopics, 1),
                (ApiKey::DescribeConfigs, 1),
            ],
        ),
        (
            "flexible-without-topic-ids",
            &[
                (ApiKey::ApiVersions, 3),
                (ApiKey::Metadata, 9),
                (ApiKey::Produce, 9),
                (ApiKey::Fetch, 12),
                (ApiKey::ListOffsets, 6),
                (ApiKey::CreateTopics, 5),
                (ApiKey::DeleteTopics, 4),
                (ApiKey::DescribeConfigs, 4),
            ],
        ),
    ];
    let input: String = (0..1000).map(|i| format!("key-{i}:value-{i}\n")).collect();
    for (profile, caps) in profiles {
        let mut config = ClientConfig::default();
        for &(key, version) in caps {
            config.api_versions_max.insert(key as i16, version);
        }
        let mut client = Client::connect(&bootstrap, config).await.unwrap();
        let name = unique(profile);
        let create = CreateArgs {
            name: name.clone(),
            partitions: Some(3),
            replication_factor: Some(1),
            configs: vec![],
        };
        topic::create(&mut client, &create)
            .await
            .unwrap_or_else(|e| panic!("{profile}: create: {e:#}"));
        for _ in 0..50 {
            if client
                .topic_metadata(&name, false)
                .await
                .is_ok_and(|m| m.all_partitions_led())
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let describe = DescribeArgs {
            name: Some(name.clone()),
            all_configs: true,
        };
        let described = topic::describe(&mut client, &describe)
            .await
            .unwrap_or_else(|e| panic!("{profile}: describe: {e:#}"));
        assert!(described.text.contains("PartitionCount: 3"), "{profile}");

        let args = produce_args(
            &bootstrap,
            &[
                "--topic",
                &name,
                "--key-separator",
                ":",
                "--compression",
                "gzip",
            ],
        );
        let report = produce::produce_lines(&mut client, &args, input.as_bytes())
            .await
            .unwrap_or_else(|e| panic!("{profile}: produce: {e:#}"));
        assert_eq!(
            report.records_acked, 1000,
            "{profile}: {:?}",
            report.failures
        );

        let args = consume_args(
            &bootstrap,
            &[
                "--topic",
                &name,
                "--from-beginning",
                "--max-messages",
                "1001",
                "--timeout-ms",
                QUIET_MS,
                "--print-partition",
                "--print-key",
            ],
        );
        let got = consume_lines(&mut client, &args).await;
        assert_eq!(got.len(), 1000, "{profile}");
        let keys: BTreeSet<&str> = got.iter().map(|(_, k, _)| k.as_str()).collect();
        assert_eq!(keys.len(), 1000, "{profile}: no duplicates");
        for (p, k, _) in &got {
            assert_eq!(*p, partition_for_key(k.as_bytes(), 3), "{profile}");
        }
        delete_topic(&mut client, &name).await;
    }
}
