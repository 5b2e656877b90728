//! `fjord group list|describe|delete|reset-offsets` against a real broker.
//!
//! Each test starts its own `fjord` broker, unless `FJORD_TEST_BOOTSTRAP=host:port`
//! names one: point it at Apache Kafka to check that the commands speak plain
//! Kafka (consumer groups in Fjord are being built; until they land these
//! tests only pass against Kafka). Topics and groups get unique names, so the
//! broker may be shared with other work.
//!
//! Groups with real members come from librdkafka consumers (subscribe, poll,
//! commit), so describe sees the assignment bytes a stock client writes.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

mod common;

use clap::Parser;
use fjord::cli::group::{self, GroupArgs, GroupCommand, ResetOffsetsArgs, ResetTo};
use fjord::cli::produce::{self, ProduceArgs};
use fjord::cli::topic::{self, CreateArgs};
use fjord::client::consumer_protocol::Assignment;
use fjord::client::groups::GroupDescription;
use fjord::client::{Client, ClientConfig, KafkaError};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::{Offset, TopicPartitionList};

const ENV: &str = "FJORD_TEST_BOOTSTRAP";
/// How long a group may take to reach a state (a join, a rebalance, a
/// leave): Kafka's defaults finish in seconds; this bounds a broken broker.
const GROUP_STATE_WAIT_MAX: Duration = Duration::from_secs(60);
/// Bound on a consumer receiving the records a test produced.
const CONSUME_WAIT_MAX: Duration = Duration::from_secs(60);
const CLIENT_ID: &str = "fjord-group-test";

/// A broker to test against: `FJORD_TEST_BOOTSTRAP` if set, else a fresh `fjord`.
fn bootstrap() -> (Option<common::Broker>, String) {
    match std::env::var(ENV) {
        Ok(b) if !b.is_empty() => (None, b),
        _ => {
            let broker = common::Broker::start().expect("start a fjord broker");
            let addr = broker.bootstrap().to_string();
            (Some(broker), addr)
        }
    }
}

fn unique(name: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("fjord-group-test-{name}-{}-{nanos}", std::process::id())
}

async fn client(bootstrap: &str) -> Client {
    Client::connect(bootstrap, ClientConfig::default())
        .await
        .expect("connect to the test broker")
}

#[derive(Parser)]
struct GroupCli {
    #[command(flatten)]
    args: GroupArgs,
}

#[derive(Parser)]
struct ProduceCli {
    #[command(flatten)]
    args: ProduceArgs,
}

/// A `fjord group ...` command line, parsed the way the binary parses it.
fn group_command(bootstrap: &str, argv: &[&str]) -> GroupCommand {
    let mut full = vec!["group", "--bootstrap-server", bootstrap];
    full.extend_from_slice(argv);
    GroupCli::try_parse_from(full)
        .unwrap_or_else(|e| panic!("{argv:?}: {e}"))
        .args
        .command
}

fn reset_args(bootstrap: &str, argv: &[&str]) -> ResetOffsetsArgs {
    let mut full = vec!["reset-offsets"];
    full.extend_from_slice(argv);
    match group_command(bootstrap, &full) {
        GroupCommand::ResetOffsets(a) => a,
        other => panic!("parsed as {other:?}"),
    }
}

async fn create_topic(client: &mut Client, name: &str, partitions: i32) {
    let args = CreateArgs {
        name: name.to_owned(),
        partitions: Some(partitions),
        replication_factor: None,
        configs: vec![],
    };
    topic::create(client, &args).await.expect("create topic");
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(meta) = client.topic_metadata(name, false).await {
            if meta.all_partitions_led() && meta.partition_count() == partitions {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("topic {name} never got leaders");
}

/// Writes `count` records to one partition.
async fn produce_to(
    client: &mut Client,
    bootstrap: &str,
    topic: &str,
    partition: i32,
    count: usize,
) {
    let partition = partition.to_string();
    let values: Vec<String> = (0..count).map(|i| format!("v{i}")).collect();
    let mut argv = vec![
        "produce",
        "--bootstrap-server",
        bootstrap,
        "--topic",
        topic,
        "--partition",
        &partition,
    ];
    for v in &values {
        argv.extend_from_slice(&["-m", v]);
    }
    let args = ProduceCli::try_parse_from(argv).unwrap().args;
    let report = produce::produce_messages(client, &args).await.unwrap();
    assert_eq!(report.records_acked, count as u64);
}

/// A subscribed librdkafka consumer in `group`: a real member with a real
/// (range-assigned) consumer protocol assignment.
fn member(bootstrap: &str, group: &str, topic: &str) -> StreamConsumer {
    let consumer: StreamConsumer = common::client_config(bootstrap)
        .set("group.id", group)
        .set("client.id", CLIENT_ID)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "10000")
        .set("partition.assignment.strategy", "range")
        .create()
        .expect("create consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    consumer
}

/// Describes one group.
async fn describe_one(client: &mut Client, group: &str) -> Result<GroupDescription, KafkaError> {
    let mut all = client
        .describe_groups(&[group.to_owned()])
        .await
        .expect("DescribeGroups");
    all.remove(group).expect("an answer for the group")
}

/// Waits (bounded) until `ready` holds for the group's description.
async fn wait_for_group(
    client: &mut Client,
    group: &str,
    what: &str,
    ready: impl Fn(&GroupDescription) -> bool,
) -> GroupDescription {
    let deadline = Instant::now() + GROUP_STATE_WAIT_MAX;
    let mut last = None;
    while Instant::now() < deadline {
        match describe_one(client, group).await {
            Ok(d) if ready(&d) => return d,
            other => last = Some(other),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("group {group} never became {what}; last: {last:?}");
}

/// Commits `plan` with `reset-offsets --execute` (a group with no members).
async fn reset(client: &mut Client, args: &ResetOffsetsArgs) -> BTreeMap<(String, i32), i64> {
    let planned = group::plan_reset(client, args).await.expect("plan");
    if args.execute {
        group::execute_reset(client, &args.group, &planned)
            .await
            .expect("execute");
    }
    planned.plan
}

/// Committed offsets as describe shows them: partition → (current, log end, lag).
async fn offsets_table(
    client: &mut Client,
    group: &str,
) -> BTreeMap<i32, (Option<i64>, Option<i64>, Option<i64>)> {
    let described = group::describe(
        client,
        &group::DescribeArgs {
            groups: vec![group.to_owned()],
        },
    )
    .await
    .expect("describe");
    assert!(described.errors.is_empty(), "{:?}", described.errors);
    described.reports[0]
        .partitions
        .iter()
        .map(|p| (p.partition, (p.committed_offset, p.log_end_offset, p.lag)))
        .collect()
}

#[tokio::test]
async fn describe_shows_committed_offsets_log_end_and_lag_of_an_empty_group() {
    let (_broker, bootstrap) = bootstrap();
    let mut client = client(&bootstrap).await;
    let topic = unique("lag");
    let group_id = unique("lag-group");
    create_topic(&mut client, &topic, 3).await;
    produce_to(&mut client, &bootstrap, &topic, 0, 10).await;
    produce_to(&mut client, &bootstrap, &topic, 1, 4).await;

    let consumer = member(&bootstrap, &group_id, &topic);
    common::consume_count(&consumer, 14, CONSUME_WAIT_MAX)
        .await
        .expect("consume what was produced");
    let mut commit = TopicPartitionList::new();
    commit
        .add_partition_offset(&topic, 0, Offset::Offset(6))
        .unwrap();
    commit
        .add_partition_offset(&topic, 1, Offset::Offset(4))
        .unwrap();
    consumer.commit(&commit, CommitMode::Sync).expect("commit");
    drop(consumer); // closes: leaves the group
    wait_for_group(&mut client, &group_id, "Empty", |d| d.state == "Empty").await;

    let described = group::describe(
        &mut client,
        &group::DescribeArgs {
            groups: vec![group_id.clone()],
        },
    )
    .await
    .unwrap();
    assert!(described.errors.is_empty(), "{:?}", described.errors);
    let report = &described.reports[0];
    assert_eq!(report.description.protocol_type, "consumer");
    assert!(report.description.members.is_empty());
    let rows: Vec<_> = report
        .partitions
        .iter()
        .map(|p| {
            (
                p.topic.as_str(),
                p.partition,
                p.committed_offset,
                p.log_end_offset,
                p.lag,
            )
        })
        .collect();
    assert_eq!(
        rows,
        vec![
            (topic.as_str(), 0, Some(6), Some(10), Some(4)),
            (topic.as_str(), 1, Some(4), Some(4), Some(0)),
        ]
    );
    let text = group::render_reports(&described.reports);
    assert!(
        text.starts_with(&format!(
            "Consumer group '{group_id}' has no active members.\n"
        )),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>()
                == [
                    group_id.as_str(),
                    topic.as_str(),
                    "0",
                    "6",
                    "10",
                    "4",
                    "-",
                    "-",
                    "-"
                ]),
        "{text}"
    );

    let GroupCommand::List(all) = group_command(&bootstrap, &["list"]) else {
        unreachable!()
    };
    let listing = group::list(&mut client, &all).await.unwrap();
    assert!(listing.broker_errors.is_empty());
    let listed = listing
        .groups
        .iter()
        .find(|g| g.group_id == group_id)
        .expect("the group is listed");
    assert_eq!(listed.protocol_type, "consumer");
    assert_eq!(listed.state.as_deref(), Some("Empty"));
    assert!(group::render_listing(&listing)
        .lines()
        .any(|l| l.split_whitespace().next() == Some(group_id.as_str())));

    let GroupCommand::List(stable) = group_command(&bootstrap, &["list", "--state", "Stable"])
    else {
        unreachable!()
    };
    let listing = group::list(&mut client, &stable).await.unwrap();
    assert!(
        listing.groups.iter().all(|g| g.group_id != group_id),
        "an Empty group listed under --state Stable"
    );
}

#[tokio::test]
async fn a_group_with_a_live_member_shows_its_assignment_and_refuses_delete_and_reset() {
    let (_broker, bootstrap) = bootstrap();
    let mut client = client(&bootstrap).await;
    let topic = unique("live");
    let group_id = unique("live-group");
    create_topic(&mut client, &topic, 2).await;
    produce_to(&mut client, &bootstrap, &topic, 0, 3).await;

    let consumer = member(&bootstrap, &group_id, &topic);
    // librdkafka completes joins and syncs from poll: keep polling.
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let poller = tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop_rx.changed() => break,
                _ = consumer.recv() => {}
            }
        }
        drop(consumer);
    });

    let description = wait_for_group(
        &mut client,
        &group_id,
        "Stable with both partitions assigned",
        |d| {
            d.state == "Stable"
                && d.members.len() == 1
                && d.members[0]
                    .assignment
                    .as_ref()
                    .is_ok_and(|a| a.values().map(Vec::len).sum::<usize>() == 2)
        },
    )
    .await;
    let m = &description.members[0];
    assert_eq!(m.client_id, CLIENT_ID);
    assert_eq!(
        m.assignment,
        Ok(Assignment::from([(topic.clone(), vec![0, 1])]))
    );
    assert_eq!(description.protocol, "range");

    let described = group::describe(
        &mut client,
        &group::DescribeArgs {
            groups: vec![group_id.clone()],
        },
    )
    .await
    .unwrap();
    let report = &described.reports[0];
    assert_eq!(report.partitions.len(), 2, "{report:?}");
    for p in &report.partitions {
        assert_eq!(
            p.member.as_ref().map(|m| m.member_id.as_str()),
            Some(m.member_id.as_str())
        );
    }
    let text = group::render_reports(&described.reports);
    assert!(text.contains(&format!("{topic}:0,1")), "{text}");

    let deleted = group::delete(
        &mut client,
        &group::DeleteArgs {
            groups: vec![group_id.clone()],
        },
    )
    .await
    .unwrap();
    assert!(deleted.deleted.is_empty());
    assert_eq!(deleted.errors.len(), 1);
    assert_eq!(deleted.errors[0].1.name(), "NON_EMPTY_GROUP");

    let args = reset_args(
        &bootstrap,
        &[&group_id, "--topic", &topic, "--to-earliest", "--execute"],
    );
    let planned = group::plan_reset(&mut client, &args).await.unwrap();
    assert_eq!(planned.active_members, Some(1));
    let refused = group::execute_reset(&mut client, &group_id, &planned)
        .await
        .unwrap_err();
    let kafka = refused
        .downcast_ref::<KafkaError>()
        .unwrap_or_else(|| panic!("not a Kafka error: {refused:#}"));
    assert_eq!(kafka.name(), "UNKNOWN_MEMBER_ID", "{refused:#}");

    stop_tx.send(true).unwrap();
    poller.await.unwrap();
    wait_for_group(&mut client, &group_id, "Empty", |d| d.state == "Empty").await;
    let deleted = group::delete(
        &mut client,
        &group::DeleteArgs {
            groups: vec![group_id.clone()],
        },
    )
    .await
    .unwrap();
    assert_eq!(
        deleted.deleted,
        vec![group_id.clone()],
        "{:?}",
        deleted.errors
    );
    let gone = describe_gone(&mut client, &group_id).await;
    assert_eq!(gone.name(), "GROUP_ID_NOT_FOUND");
}

/// The error `describe` gives for a group that does not exist.
async fn describe_gone(client: &mut Client, group: &str) -> KafkaError {
    let described = group::describe(
        client,
        &group::DescribeArgs {
            groups: vec![group.to_owned()],
        },
    )
    .await
    .unwrap();
    assert!(described.reports.is_empty(), "{:?}", described.reports);
    described.errors[0].1.clone()
}

#[tokio::test]
async fn reset_offsets_plans_without_execute_and_commits_with_it() {
    let (_broker, bootstrap) = bootstrap();
    let mut client = client(&bootstrap).await;
    let topic = unique("reset");
    let group_id = unique("reset-group");
    create_topic(&mut client, &topic, 2).await;
    produce_to(&mut client, &bootstrap, &topic, 0, 10).await;
    produce_to(&mut client, &bootstrap, &topic, 1, 3).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let midpoint_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    tokio::time::sleep(Duration::from_millis(50)).await;
    produce_to(&mut client, &bootstrap, &topic, 1, 2).await;
    let t = |p: i32| (topic.clone(), p);

    // A group that does not exist yet gets its first offsets from an admin commit.
    let plan = reset(
        &mut client,
        &reset_args(
            &bootstrap,
            &[&group_id, "--topic", &topic, "--to-latest", "--execute"],
        ),
    )
    .await;
    assert_eq!(plan, BTreeMap::from([(t(0), 10), (t(1), 5)]));
    assert_eq!(
        offsets_table(&mut client, &group_id).await,
        BTreeMap::from([
            (0, (Some(10), Some(10), Some(0))),
            (1, (Some(5), Some(5), Some(0)))
        ])
    );

    // Without --execute nothing moves.
    let dry = reset(
        &mut client,
        &reset_args(&bootstrap, &[&group_id, "--topic", &topic, "--to-earliest"]),
    )
    .await;
    assert_eq!(dry, BTreeMap::from([(t(0), 0), (t(1), 0)]));
    assert_eq!(
        group::render_reset(&group_id, &dry)
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .collect::<Vec<_>>(),
        vec![
            vec!["GROUP", "TOPIC", "PARTITION", "NEW-OFFSET"],
            vec![group_id.as_str(), topic.as_str(), "0", "0"],
            vec![group_id.as_str(), topic.as_str(), "1", "0"],
        ]
    );
    assert_eq!(
        offsets_table(&mut client, &group_id).await[&0].0,
        Some(10),
        "a dry run committed"
    );

    let shifted = reset(
        &mut client,
        &reset_args(
            &bootstrap,
            &[
                &group_id,
                "--topic",
                &topic,
                "--shift-by",
                "-3",
                "--execute",
            ],
        ),
    )
    .await;
    assert_eq!(shifted, BTreeMap::from([(t(0), 7), (t(1), 2)]));

    // Out-of-range targets are kept inside the log, one partition at a time.
    let clamped = reset(
        &mut client,
        &reset_args(
            &bootstrap,
            &[
                &group_id,
                "--topic",
                &format!("{topic}:0"),
                "--to-offset",
                "100",
                "--execute",
            ],
        ),
    )
    .await;
    assert_eq!(clamped, BTreeMap::from([(t(0), 10)]));
    let shifted_back = reset(
        &mut client,
        &reset_args(
            &bootstrap,
            &[
                &group_id,
                "--topic",
                &topic,
                "--partition",
                "1",
                "--shift-by",
                "-50",
                "--execute",
            ],
        ),
    )
    .await;
    assert_eq!(shifted_back, BTreeMap::from([(t(1), 0)]));
    assert_eq!(
        offsets_table(&mut client, &group_id).await,
        BTreeMap::from([
            (0, (Some(10), Some(10), Some(0))),
            (1, (Some(0), Some(5), Some(5)))
        ])
    );

    // By time: the first record at or after the time, else the log end.
    let mut by_time = reset_args(
        &bootstrap,
        &[&group_id, "--topic", &topic, "--to-earliest", "--execute"],
    );
    by_time.to = ResetTo {
        to_earliest: false,
        to_latest: false,
        to_offset: None,
        shift_by: None,
        to_datetime: Some(midpoint_ms),
    };
    let planned = reset(&mut client, &by_time).await;
    assert_eq!(planned, BTreeMap::from([(t(0), 10), (t(1), 3)]));
    let from_1970 = reset(
        &mut client,
        &reset_args(
            &bootstrap,
            &[
                &group_id,
                "--topic",
                &topic,
                "--to-datetime",
                "1970-01-01T00:00:00Z",
            ],
        ),
    )
    .await;
    assert_eq!(from_1970, BTreeMap::from([(t(0), 0), (t(1), 0)]));

    let missing = group::plan_reset(
        &mut client,
        &reset_args(
            &bootstrap,
            &[
                &group_id,
                "--topic",
                &topic,
                "--partition",
                "7",
                "--to-latest",
            ],
        ),
    )
    .await
    .unwrap_err();
    assert!(
        missing.to_string().contains("no partition 7"),
        "{missing:#}"
    );
}

#[tokio::test]
async fn delete_removes_empty_groups_and_names_each_failure() {
    let (_broker, bootstrap) = bootstrap();
    let mut client = client(&bootstrap).await;
    let topic = unique("delete");
    let group_id = unique("delete-group");
    let missing = unique("never-existed");
    create_topic(&mut client, &topic, 1).await;
    reset(
        &mut client,
        &reset_args(
            &bootstrap,
            &[&group_id, "--topic", &topic, "--to-earliest", "--execute"],
        ),
    )
    .await;

    let GroupCommand::Delete(args) = group_command(&bootstrap, &["delete", &group_id, &missing])
    else {
        unreachable!()
    };
    let deleted = group::delete(&mut client, &args).await.unwrap();
    assert_eq!(deleted.deleted, vec![group_id.clone()]);
    let errors: Vec<(String, String)> = deleted
        .errors
        .iter()
        .map(|(g, e)| (g.clone(), e.name()))
        .collect();
    assert_eq!(
        errors,
        vec![(missing.clone(), "GROUP_ID_NOT_FOUND".to_owned())]
    );
    assert_eq!(
        describe_gone(&mut client, &group_id).await.name(),
        "GROUP_ID_NOT_FOUND"
    );
    assert_eq!(
        describe_gone(&mut client, &missing).await.name(),
        "GROUP_ID_NOT_FOUND"
    );
}

/// The built binary: exit codes, error names on stderr, dry-run output.
#[tokio::test]
async fn binary_prints_plans_and_fails_with_kafka_error_names() {
    let (_broker, bootstrap) = bootstrap();
    let mut client = client(&bootstrap).await;
    let topic = unique("bin");
    let group_id = unique("bin-group");
    create_topic(&mut client, &topic, 2).await;
    produce_to(&mut client, &bootstrap, &topic, 1, 4).await;
    let run = |args: &[&str]| {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_fjord"))
            .arg("group")
            .args(args)
            .env("FJORD_BOOTSTRAP_SERVER", &bootstrap)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .output()
    };

    let out = run(&["reset-offsets", &group_id, "--topic", &topic, "--to-latest"])
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let rows: Vec<Vec<&str>> = stdout
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows,
        vec![
            vec!["GROUP", "TOPIC", "PARTITION", "NEW-OFFSET"],
            vec![group_id.as_str(), topic.as_str(), "0", "0"],
            vec![group_id.as_str(), topic.as_str(), "1", "4"],
        ]
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("Dry run"));

    let out = run(&["describe", &group_id]).await.unwrap();
    assert_eq!(out.status.code(), Some(1), "a dry run created the group");
    assert!(String::from_utf8_lossy(&out.stderr).contains("GROUP_ID_NOT_FOUND"));

    let out = run(&[
        "reset-offsets",
        &group_id,
        "--topic",
        &topic,
        "--to-latest",
        "--execute",
    ])
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&["describe", &group_id]).await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("CURRENT-OFFSET"));

    let out = run(&["list"]).await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.split_whitespace().next() == Some(group_id.as_str())));

    let out = run(&["delete", &group_id]).await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&["delete", &group_id]).await.unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("GROUP_ID_NOT_FOUND"));

    let out = run(&["reset-offsets", &group_id, "--topic", &topic])
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "no target is a usage error");
}

/// The pre-KIP-699/709 request layouts, forced with version caps against a
/// broker that speaks newer ones: FindCoordinator one key at a time,
/// OffsetFetch with a top-level group, ListGroups without states. A Fjord
/// that advertises less than Kafka 4 takes these paths.
#[tokio::test]
async fn older_group_protocol_versions_give_the_same_answers() {
    use kafka_protocol::messages::ApiKey;

    let (_broker, bootstrap) = bootstrap();
    let mut config = ClientConfig::default();
    for (api, max) in [
        (ApiKey::FindCoordinator, 3),
        (ApiKey::OffsetFetch, 7),
        (ApiKey::OffsetCommit, 7),
        (ApiKey::ListGroups, 3),
        (ApiKey::DescribeGroups, 4),
        (ApiKey::DeleteGroups, 1),
    ] {
        config.api_versions_max.insert(api as i16, max);
    }
    let mut old = Client::connect(&bootstrap, config).await.unwrap();
    let mut new = client(&bootstrap).await;
    let topic = unique("old");
    let groups = [unique("old-group-a"), unique("old-group-b")];
    create_topic(&mut new, &topic, 2).await;
    produce_to(&mut new, &bootstrap, &topic, 0, 5).await;

    for (i, g) in groups.iter().enumerate() {
        let offset = i.to_string();
        reset(
            &mut old,
            &reset_args(
                &bootstrap,
                &[g, "--topic", &topic, "--to-offset", &offset, "--execute"],
            ),
        )
        .await;
    }
    for (i, g) in groups.iter().enumerate() {
        let expected = BTreeMap::from([
            (0, (Some(i as i64), Some(5), Some(5 - i as i64))),
            (1, (Some(0), Some(0), Some(0))),
        ]);
        assert_eq!(offsets_table(&mut old, g).await, expected);
        assert_eq!(offsets_table(&mut new, g).await, expected);
    }

    let listing = old.list_groups(&[], &[]).await.unwrap();
    for g in &groups {
        let listed = listing
            .groups
            .iter()
            .find(|l| &l.group_id == g)
            .expect("listed");
        assert_eq!(listed.state, None, "ListGroups v3 has no state");
    }
    // A filter the broker cannot apply is that broker's error, never
    // silently dropped.
    let filtered = old.list_groups(&["Empty".to_owned()], &[]).await.unwrap();
    assert!(filtered.groups.is_empty());
    let (_, refused) = &filtered.broker_errors[0];
    assert!(refused.to_string().contains("needs v4"), "{refused:#}");

    let answers = old.delete_groups(&groups).await.unwrap();
    assert!(answers.values().all(Result::is_ok), "{answers:?}");
    assert_eq!(
        describe_gone(&mut old, &groups[0]).await.name(),
        "GROUP_ID_NOT_FOUND"
    );
}
