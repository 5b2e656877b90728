//! Topic and broker configs are validated with Kafka's types and ranges
//! before anything is stored, whatever is stored always loads, and
//! DescribeConfigs / IncrementalAlterConfigs answer as Kafka does.
//!
//! Most tests also run against Apache Kafka (`FJORD_TEST_EXTERNAL_BOOTSTRAP`);
//! the ones that restart the broker or edit its data skip there.

mod common;

use anyhow::{ensure, Context as _, Result};

use common::kafka_rpc::admin::*;
use common::kafka_rpc::KafkaConnection;
use common::{unique_topic, Broker};

const NONE: i16 = 0;
const INVALID_CONFIG: i16 = 40;
const INVALID_REQUEST: i16 = 42;
const SOURCE_TOPIC: i8 = 1;
const SOURCE_DYNAMIC_DEFAULT: i8 = 3;
const SOURCE_DEFAULT: i8 = 5;
const TYPE_INT: i8 = 3;
const TYPE_LIST: i8 = 7;

#[tokio::test]
async fn segment_bytes_below_kafkas_floor_is_refused_and_nothing_is_stored() -> Result<()> {
    let broker = Broker::start()?;
    let mut conn = KafkaConnection::connect(broker.bootstrap()).await?;
    let topic = unique_topic("tiny-segments");
    let r = create_topic(&mut conn, &topic, 1, &[("segment.bytes", "20")], false).await?;
    ensure!(
        r.error_code == INVALID_CONFIG,
        "CreateTopics segment.bytes=20 answered {} {:?}",
        r.error_code,
        r.error_message
    );
    let message = r.error_message.map(|m| m.to_string()).unwrap_or_default();
    ensure!(
        message.contains("Value must be at least 1048576"),
        "message {message:?}"
    );
    ensure!(
        !topic_exists(&mut conn, &topic).await?,
        "the refused topic was registered"
    );

    let ok = create_topic(&mut conn, &topic, 1, &[], false).await?;
    ensure!(ok.error_code == NONE, "plain create: {}", ok.error_code);
    let (code, _) = incremental_alter(
        &mut conn,
        RESOURCE_TOPIC,
        &topic,
        &[("segment.bytes", OP_SET, Some("63"))],
        false,
    )
    .await?;
    ensure!(
        code == INVALID_CONFIG,
        "alter segment.bytes=63 answered {code}"
    );
    let described = describe_configs(
        &mut conn,
        RESOURCE_TOPIC,
        &topic,
        Some(&["segment.bytes"]),
        false,
    )
    .await?;
    ensure!(
        config_value(&described, "segment.bytes").as_deref() == Some("1073741824"),
        "segment.bytes is now {:?}",
        config_value(&described, "segment.bytes")
    );
    Ok(())
}

#[tokio::test]
async fn int_configs_are_bounded_by_the_int_range() -> Result<()> {
    let broker = Broker::start()?;
    let mut conn = KafkaConnection::connect(broker.bootstrap()).await?;
    let topic = unique_topic("int-range");
    let r = create_topic(
        &mut conn,
        &topic,
        1,
        &[("max.message.bytes", "2147483648")],
        false,
    )
    .await?;
    ensure!(
        r.error_code == INVALID_CONFIG,
        "max.message.bytes=2^31 answered {}",
        r.error_code
    );
    let r = create_topic(
        &mut conn,
        &topic,
        1,
        &[("max.message.bytes", "2147483647")],
        false,
    )
    .await?;
    ensure!(
        r.error_code == NONE,
        "max.message.bytes=2^31-1 answered {}",
        r.error_code
    );
    Ok(())
}

#[tokio::test]
async fn every_kafka_topic_config_is_accepted_with_kafkas_values() -> Result<()> {
    let broker = Broker::start()?;
    let mut conn = KafkaConnection::connect(broker.bootstrap()).await?;
    for (key, value) in [
        ("compression.type", "zstd"),
        ("compression.type", "lz4"),
        ("compression.type", "gzip"),
        ("compression.type", "snappy"),
        ("compression.type", "uncompressed"),
        ("file.delete.delay.ms", "1000"),
        ("min.cleanable.dirty.ratio", "0.25"),
        ("leader.replication.throttled.replicas", "0:1"),
        ("segment.jitter.ms", "5"),
        ("preallocate", "true"),
    ] {
        let topic = unique_topic("kafka-config");
        let r = create_topic(&mut conn, &topic, 1, &[(key, value)], false).await?;
        ensure!(
            r.error_code == NONE,
            "{key}={value} answered {} {:?}",
            r.error_code,
            r.error_message
        );
        let d = describe_configs(&mut conn, RESOURCE_TOPIC, &topic, Some(&[key]), false).await?;
        ensure!(
            config_value(&d, key).as_deref() == Some(value),
            "{key} described as {:?}",
            config_value(&d, key)
        );
    }
    for (key, value) in [("compression.type", "brotli"), ("no.such.config", "1")] {
        let topic = unique_topic("kafka-config");
        let r = create_topic(&mut conn, &topic, 1, &[(key, value)], false).await?;
        ensure!(
            r.error_code == INVALID_CONFIG,
            "{key}={value} answered {}",
            r.error_code
        );
    }
    Ok(())
}

#[tokio::test]
async fn describe_configs_v4_reports_types_documentation_and_synonyms() -> Result<()> {
    let broker = Broker::start()?;
    let mut conn = KafkaConnection::connect(broker.bootstrap()).await?;
    let topic = unique_topic("describe-v4");
    let r = create_topic(&mut conn, &topic, 1, &[("segment.ms", "5000")], false).await?;
    ensure!(r.error_code == NONE, "create: {}", r.error_code);
    let d = describe_configs(&mut conn, RESOURCE_TOPIC, &topic, None, true).await?;
    ensure!(d.error_code == NONE, "describe: {}", d.error_code);
    let find = |name: &str| d.configs.iter().find(|c| c.name.as_str() == name);
    let segment_ms = find("segment.ms").context("segment.ms")?;
    ensure!(
        segment_ms.config_source == SOURCE_TOPIC,
        "segment.ms source {}",
        segment_ms.config_source
    );
    let policy = find("cleanup.policy").context("cleanup.policy")?;
    ensure!(
        policy.config_type == TYPE_LIST,
        "cleanup.policy type {}",
        policy.config_type
    );
    ensure!(
        policy.config_source == SOURCE_DEFAULT,
        "cleanup.policy source {}",
        policy.config_source
    );
    ensure!(
        policy.documentation.as_ref().is_some_and(|d| !d.is_empty()),
        "cleanup.policy has no documentation"
    );
    let synonyms: Vec<&str> = policy.synonyms.iter().map(|s| s.name.as_str()).collect();
    ensure!(
        synonyms == ["log.cleanup.policy"],
        "cleanup.policy synonyms {synonyms:?}"
    );
    let bytes = find("segment.bytes").context("segment.bytes")?;
    ensure!(
        bytes.config_type == TYPE_INT,
        "segment.bytes type {}",
        bytes.config_type
    );
    ensure!(
        find("file.delete.delay.ms").is_some(),
        "file.delete.delay.ms not described"
    );
    ensure!(
        d.configs.len() >= 37,
        "only {} configs described",
        d.configs.len()
    );

    let plain = describe_configs(
        &mut conn,
        RESOURCE_TOPIC,
        &topic,
        Some(&["cleanup.policy"]),
        false,
    )
    .await?;
    ensure!(
        plain.configs[0].documentation.is_none(),
        "documentation sent when not asked: {:?}",
        plain.configs[0].documentation
    );
    Ok(())
}

#[tokio::test]
async fn incremental_append_and_subtract_start_from_the_default() -> Result<()> {
    let broker = Broker::start()?;
    let mut conn = KafkaConnection::connect(broker.bootstrap()).await?;
    let topic = unique_topic("append");
    ensure!(
        create_topic(&mut conn, &topic, 1, &[], false)
            .await?
            .error_code
            == NONE
    );
    let policy =
        |d: &kafka_protocol::messages::describe_configs_response::DescribeConfigsResult| {
            config_value(d, "cleanup.policy")
        };
    let (code, msg) = incremental_alter(
        &mut conn,
        RESOURCE_TOPIC,
        &topic,
        &[("cleanup.policy", OP_APPEND, Some("compact"))],
        false,
    )
    .await?;
    ensure!(code == NONE, "APPEND answered {code} {msg:?}");
    let d = describe_configs(
        &mut conn,
        RESOURCE_TOPIC,
        &topic,
        Some(&["cleanup.policy"]),
        false,
    )
    .await?;
    ensure!(
        policy(&d).as_deref() == Some("delete,compact"),
        "after APPEND: {:?}",
        policy(&d)
    );
    let (code, _) = incremental_alter(
        &mut conn,
        RESOURCE_TOPIC,
        &topic,
        &[("cleanup.policy", OP_SUBTRACT, Some("delete"))],
        false,
    )
    .await?;
    ensure!(code == NONE, "SUBTRACT answered {code}");
    let d = describe_configs(
        &mut conn,
        RESOURCE_TOPIC,
        &topic,
        Some(&["cleanup.policy"]),
        false,
    )
    .await?;
    ensure!(
        policy(&d).as_deref() == Some("compact"),
        "after SUBTRACT: {:?}",
        policy(&d)
    );

    // APPEND to a non-list, duplicate keys, unknown keys, validate_only.
    let (code, _) = incremental_alter(
        &mut conn,
        RESOURCE_TOPIC,
        &topic,
        &[("retention.ms", OP_APPEND, Some("5"))],
        false,
    )
    .await?;
    ensure!(
        code == INVALID_CONFIG,
        "APPEND to retention.ms answered {code}"
    );
    let (code, _) = incremental_alter(
        &mut conn,
        RESOURCE_TOPIC,
        &topic,
        &[
            ("retention.ms", OP_SET, Some("5")),
            ("retention.ms", OP_DELETE, None),
        ],
        false,
    )
    .await?;
    ensure!(code == INVALID_REQUEST, "duplicate keys answered {code}");
    let (code, _) = incremental_alter(
        &mut conn,
        RESOURCE_TOPIC,
        &topic,
        &[("no.such.key", OP_SET, Some("5"))],
        false,
    )
    .await?;
    ensure!(code == INVALID_CONFIG, "unknown key answered {code}");
    let (code, _) = incremental_alter(
        &mut conn,
        RESOURCE_TOPIC,
        &topic,
        &[("retention.ms", OP_SET, Some("5000"))],
        true,
    )
    .await?;
    ensure!(code == NONE, "validate_only answered {code}");
    let d = describe_configs(
        &mut conn,
        RESOURCE_TOPIC,
        &topic,
        Some(&["retention.ms"]),
        false,
    )
    .await?;
    ensure!(
        config_value(&d, "retention.ms").as_deref() == Some("604800000"),
        "validate_only changed retention.ms to {:?}",
        config_value(&d, "retention.ms")
    );
    Ok(())
}

#[tokio::test]
async fn dynamic_broker_defaults_apply_to_topics_and_survive_a_restart() -> Result<()> {
    let Some(mut broker) = Broker::start_process("dynamic_broker_defaults", &[])? else {
        return Ok(());
    };
    let mut conn = KafkaConnection::connect(broker.bootstrap()).await?;
    let topic = unique_topic("dynamic");
    let own = unique_topic("dynamic-own");
    ensure!(
        create_topic(&mut conn, &topic, 1, &[], false)
            .await?
            .error_code
            == NONE
    );
    ensure!(
        create_topic(&mut conn, &own, 1, &[("retention.ms", "1000")], false)
            .await?
            .error_code
            == NONE
    );
    let (code, msg) = incremental_alter(
        &mut conn,
        RESOURCE_BROKER,
        "",
        &[("log.retention.ms", OP_SET, Some("123456"))],
        false,
    )
    .await?;
    ensure!(code == NONE, "dynamic default answered {code} {msg:?}");
    let (code, msg) = incremental_alter(
        &mut conn,
        RESOURCE_BROKER,
        "1",
        &[("log.retention.hours", OP_SET, Some("5"))],
        false,
    )
    .await?;
    ensure!(
        code == INVALID_REQUEST
            && msg
                .as_deref()
                .is_some_and(|m| m.contains("Cannot update these configs dynamically")),
        "read-only property answered {code} {msg:?}"
    );
    let (code, _) = incremental_alter(
        &mut conn,
        RESOURCE_BROKER,
        "",
        &[("log.segment.bytes", OP_SET, Some("20"))],
        false,
    )
    .await?;
    ensure!(
        code == INVALID_CONFIG,
        "log.segment.bytes=20 answered {code}"
    );

    for round in ["before restart", "after restart"] {
        let d = describe_configs(
            &mut conn,
            RESOURCE_TOPIC,
            &topic,
            Some(&["retention.ms"]),
            false,
        )
        .await?;
        let entry = d.configs.first().context("retention.ms")?;
        ensure!(
            entry.value.as_deref() == Some("123456")
                && entry.config_source == SOURCE_DYNAMIC_DEFAULT,
            "{round}: retention.ms {:?} source {}",
            entry.value,
            entry.config_source
        );
        let d = describe_configs(
            &mut conn,
            RESOURCE_TOPIC,
            &own,
            Some(&["retention.ms"]),
            false,
        )
        .await?;
        ensure!(
            config_value(&d, "retention.ms").as_deref() == Some("1000"),
            "{round}: the topic's own value lost"
        );
        let d = describe_configs(&mut conn, RESOURCE_BROKER, "", None, false).await?;
        ensure!(
            config_value(&d, "log.retention.ms").as_deref() == Some("123456"),
            "{round}: cluster default describes as {:?}",
            d.configs
                .iter()
                .map(|c| c.name.to_string())
                .collect::<Vec<_>>()
        );
        let d = describe_configs(
            &mut conn,
            RESOURCE_BROKER,
            "1",
            Some(&["log.retention.ms", "log.dirs"]),
            false,
        )
        .await?;
        let retention = d
            .configs
            .iter()
            .find(|c| c.name.as_str() == "log.retention.ms")
            .context("log.retention.ms")?;
        ensure!(
            !retention.read_only && retention.config_source == SOURCE_DYNAMIC_DEFAULT,
            "{round}: {retention:?}"
        );
        let dirs = d
            .configs
            .iter()
            .find(|c| c.name.as_str() == "log.dirs")
            .context("log.dirs")?;
        ensure!(
            dirs.read_only && dirs.config_source == 4,
            "{round}: {dirs:?}"
        );
        if round == "before restart" {
            broker.restart()?;
            conn = KafkaConnection::connect(broker.bootstrap()).await?;
        }
    }
    Ok(())
}

#[tokio::test]
async fn broker_starts_and_serves_a_topic_whose_stored_config_is_invalid_today() -> Result<()> {
    let Some(mut broker) = Broker::start_process("stored_invalid_config", &[])? else {
        return Ok(());
    };
    let topic = unique_topic("stored-invalid");
    broker.stop()?;
    // The single-node metadata file an older Fjord left, with what it
    // accepted then: segment.bytes=20 (and a bad dynamic default). Starting
    // on it imports it into the metadata group.
    let data = broker.data_dir().context("data dir")?;
    std::fs::remove_dir_all(&data)?;
    std::fs::create_dir_all(&data)?;
    std::fs::write(
        data.join("meta.properties"),
        "version=1\ncluster.id=8J0rJ4zyTnW8B6BjmJ_3HA\nnode.id=1\n",
    )?;
    let doc = serde_json::json!({
        "topics": {
            topic.clone(): {
                "name": topic,
                "id": "0b6fd3a6-1f49-4b2a-9e71-5c1f0d9a8c11",
                "partitions": 2,
                "configs": { "segment.bytes": "20" },
            }
        },
        "broker_configs": { "": { "log.segment.bytes": "30" } },
    });
    std::fs::write(
        data.join("fjord-metadata.json"),
        serde_json::to_vec_pretty(&doc)?,
    )?;
    broker.restart()?;

    let producer = common::producer(broker.bootstrap(), &[])?;
    for partition in 0..2 {
        producer
            .send(
                rdkafka::producer::FutureRecord::<str, str>::to(&topic)
                    .partition(partition)
                    .payload("still served"),
                std::time::Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| anyhow::anyhow!("produce to partition {partition}: {e}"))?;
    }
    let marks = common::watermarks(broker.bootstrap(), &topic, 2).await?;
    ensure!(
        marks.iter().all(|(_, high)| *high == 1),
        "watermarks {marks:?}"
    );
    Ok(())
}
