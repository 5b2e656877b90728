//! `fjord topic create|list|describe|delete`: topic administration over the
//! Kafka protocol (CreateTopics, Metadata, DescribeConfigs, DeleteTopics),
//! with output shaped like `kafka-topics.sh` so operators can read it at a
//! glance and scripts written against one work against the other.
//!
//! Each subcommand is a function that returns its output as text, so tests
//! can check it; `run` prints it. Kafka errors come back as [`KafkaError`]
//! (printed by name) and make the process exit non-zero.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::{anyhow, bail, Context, Result};
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::{
    CreateTopicsRequest, DeleteTopicsRequest, DescribeConfigsRequest, TopicName,
};
use kafka_protocol::protocol::StrBytes;

use crate::cli::ConnectArgs;
use crate::client::cluster::{METADATA_RETRIES_MAX, RETRY_BACKOFF};
use crate::client::metadata::format_topic_id;
use crate::client::{Client, KafkaError, TopicMetadata};

/// DescribeConfigs resource type for topics.
const RESOURCE_TYPE_TOPIC: i8 = 2;
/// DescribeConfigs config source meaning "nobody set this" (Kafka's
/// `DEFAULT_CONFIG`); `describe` hides these unless `--all-configs`.
const CONFIG_SOURCE_DEFAULT: i8 = 5;

/// `fjord topic ...`: the connection flags plus one subcommand.
#[derive(clap::Args, Debug, Clone)]
pub struct TopicArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    #[command(subcommand)]
    pub command: TopicCommand,
}

/// The topic administration subcommands.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum TopicCommand {
    /// Create a topic.
    Create(CreateArgs),
    /// List topic names.
    List(ListArgs),
    /// Show partitions, leaders, replicas, ISR, topic id and configs.
    Describe(DescribeArgs),
    /// Delete a topic.
    Delete(DeleteArgs),
}

/// `topic create`: unset sizes defer to the broker defaults (CreateTopics v4+).
#[derive(clap::Args, Debug, Clone)]
pub struct CreateArgs {
    /// Topic name.
    pub name: String,
    /// Number of partitions (default: the broker's num.partitions).
    #[arg(long)]
    pub partitions: Option<i32>,
    /// Replicas per partition (default: the broker's default.replication.factor).
    #[arg(long)]
    pub replication_factor: Option<i16>,
    /// Topic config override, e.g. --config retention.ms=60000 (repeatable).
    #[arg(long = "config", value_name = "KEY=VALUE", value_parser = parse_config)]
    pub configs: Vec<(String, String)>,
}

/// `topic list`.
#[derive(clap::Args, Debug, Clone)]
pub struct ListArgs {
    /// Leave out internal topics such as __consumer_offsets.
    #[arg(long)]
    pub exclude_internal: bool,
}

/// `topic describe`: Metadata for the layout, DescribeConfigs for configs.
#[derive(clap::Args, Debug, Clone)]
pub struct DescribeArgs {
    /// Topic to describe (default: all topics).
    pub name: Option<String>,
    /// Show every config, including defaults nobody set.
    #[arg(long)]
    pub all_configs: bool,
}

/// `topic delete`.
#[derive(clap::Args, Debug, Clone)]
pub struct DeleteArgs {
    /// Topic name.
    pub name: String,
}

fn parse_config(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got '{s}'")),
    }
}

/// Runs one topic subcommand and prints its output; Kafka errors are
/// returned (by name) for a non-zero exit.
pub async fn run(args: TopicArgs) -> Result<()> {
    let mut client = args.connect.connect().await?;
    let output = match &args.command {
        TopicCommand::Create(a) => create(&mut client, a).await?,
        TopicCommand::List(a) => list(&mut client, a).await?,
        TopicCommand::Describe(a) => {
            let described = describe(&mut client, a).await?;
            print!("{}", described.text);
            if !described.config_errors.is_empty() {
                bail!(
                    "DescribeConfigs failed for {}",
                    described.config_errors.join("; ")
                );
            }
            return Ok(());
        }
        TopicCommand::Delete(a) => delete(&mut client, a).await?,
    };
    print!("{output}");
    Ok(())
}

fn topic_name(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_owned()))
}

/// The broker-side wait we ask for in admin requests: shorter than our own
/// request timeout, so the broker's answer (even a timeout) reaches us.
fn admin_timeout_ms(client: &Client) -> i32 {
    let ms = client.config().request_timeout.as_millis() * 3 / 4;
    i32::try_from(ms).unwrap_or(i32::MAX)
}

pub async fn create(client: &mut Client, args: &CreateArgs) -> Result<String> {
    let mut last_error = None;
    for attempt in 0..=METADATA_RETRIES_MAX {
        if attempt > 0 {
            tokio::time::sleep(RETRY_BACKOFF).await;
            client.metadata(Some(&[]), false).await?;
        }
        let timeout_ms = admin_timeout_ms(client);
        let conn = client.controller().await?;
        let version = conn.version::<CreateTopicsRequest>()?;
        if version < 4 && (args.partitions.is_none() || args.replication_factor.is_none()) {
            bail!("this broker needs explicit --partitions and --replication-factor");
        }
        let configs = args
            .configs
            .iter()
            .map(|(k, v)| {
                CreatableTopicConfig::default()
                    .with_name(StrBytes::from_string(k.clone()))
                    .with_value(Some(StrBytes::from_string(v.clone())))
            })
            .collect();
        let request = CreateTopicsRequest::default()
            .with_timeout_ms(timeout_ms)
            .with_topics(vec![CreatableTopic::default()
                .with_name(topic_name(&args.name))
                .with_num_partitions(args.partitions.unwrap_or(-1))
                .with_replication_factor(args.replication_factor.unwrap_or(-1))
                .with_configs(configs)]);
        let response = conn.send(&request, version).await?;
        let result = response
            .topics
            .iter()
            .find(|t| t.name.0.as_str() == args.name)
            .ok_or_else(|| anyhow!("CreateTopics response has no result for '{}'", args.name))?;
        let message = result.error_message.as_ref().map(StrBytes::as_str);
        match KafkaError::check(result.error_code, message) {
            Ok(()) => return Ok(format!("Created topic {}.\n", args.name)),
            Err(e) if e.code == KafkaError::NOT_CONTROLLER => last_error = Some(e),
            Err(e) => return Err(e.into()),
        }
    }
    Err(last_error.map_or_else(|| anyhow!("CreateTopics failed"), Into::into))
}

pub async fn delete(client: &mut Client, args: &DeleteArgs) -> Result<String> {
    let mut last_error = None;
    for attempt in 0..=METADATA_RETRIES_MAX {
        if attempt > 0 {
            tokio::time::sleep(RETRY_BACKOFF).await;
            client.metadata(Some(&[]), false).await?;
        }
        let timeout_ms = admin_timeout_ms(client);
        let conn = client.controller().await?;
        let version = conn.version::<DeleteTopicsRequest>()?;
        let mut request = DeleteTopicsRequest::default().with_timeout_ms(timeout_ms);
        if version >= 6 {
            request.topics =
                vec![DeleteTopicState::default().with_name(Some(topic_name(&args.name)))];
        } else {
            request.topic_names = vec![topic_name(&args.name)];
        }
        let response = conn.send(&request, version).await?;
        let result = response
            .responses
            .iter()
            .find(|t| t.name.as_ref().is_some_and(|n| n.0.as_str() == args.name))
            .ok_or_else(|| anyhow!("DeleteTopics response has no result for '{}'", args.name))?;
        let message = result.error_message.as_ref().map(StrBytes::as_str);
        match KafkaError::check(result.error_code, message) {
            Ok(()) => return Ok(format!("Deleted topic {}.\n", args.name)),
            Err(e) if e.code == KafkaError::NOT_CONTROLLER => last_error = Some(e),
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!("deleting topic '{}'", args.name)))
            }
        }
    }
    Err(last_error.map_or_else(|| anyhow!("DeleteTopics failed"), Into::into))
}

pub async fn list(client: &mut Client, args: &ListArgs) -> Result<String> {
    let response = client.metadata(None, false).await?;
    let mut names: Vec<&str> = response
        .topics
        .iter()
        .filter(|t| !(args.exclude_internal && t.is_internal))
        .filter_map(|t| t.name.as_ref().map(|n| n.0.as_str()))
        .collect();
    names.sort_unstable();
    Ok(names.iter().map(|n| format!("{n}\n")).collect())
}

/// One config entry as `describe` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigEntry {
    pub name: String,
    pub value: Option<String>,
    pub is_default: bool,
    pub is_sensitive: bool,
}

/// DescribeConfigs for `topics`, one request to any broker.
pub async fn describe_topic_configs(
    client: &mut Client,
    topics: &[String],
) -> Result<BTreeMap<String, Result<Vec<ConfigEntry>, KafkaError>>> {
    if topics.is_empty() {
        return Ok(BTreeMap::new());
    }
    let conn = client.any_broker().await?;
    let version = conn.version::<DescribeConfigsRequest>()?;
    let request = DescribeConfigsRequest::default().with_resources(
        topics
            .iter()
            .map(|t| {
                DescribeConfigsResource::default()
                    .with_resource_type(RESOURCE_TYPE_TOPIC)
                    .with_resource_name(StrBytes::from_string(t.clone()))
                    .with_configuration_keys(None)
            })
            .collect(),
    );
    let response = conn.send(&request, version).await?;
    let mut out = BTreeMap::new();
    for result in &response.results {
        let message = result.error_message.as_ref().map(StrBytes::as_str);
        let entries = KafkaError::check(result.error_code, message).map(|()| {
            let mut entries: Vec<ConfigEntry> = result
                .configs
                .iter()
                .map(|c| ConfigEntry {
                    name: c.name.as_str().to_owned(),
                    value: c.value.as_ref().map(|v| v.as_str().to_owned()),
                    is_default: c.config_source == CONFIG_SOURCE_DEFAULT,
                    is_sensitive: c.is_sensitive,
                })
                .collect();
            entries.sort_by(|a, b| a.name.cmp(&b.name));
            entries
        });
        out.insert(result.resource_name.as_str().to_owned(), entries);
    }
    Ok(out)
}

pub async fn describe(client: &mut Client, args: &DescribeArgs) -> Result<Described> {
    let wanted = args.name.clone().map(|n| vec![n]);
    let response = client.metadata(wanted.as_deref(), false).await?;
    let mut topics = Vec::new();
    for t in &response.topics {
        match TopicMetadata::from_response(t) {
            Ok(meta) => topics.push(meta),
            // Asked by name: a missing topic is the answer, and an error.
            Err(e) if args.name.is_some() => return Err(e.into()),
            Err(e) => tracing::warn!(error = %e, "skipping topic"),
        }
    }
    topics.sort_by(|a, b| a.name.cmp(&b.name));
    let names: Vec<String> = topics.iter().map(|t| t.name.clone()).collect();
    let configs = describe_topic_configs(client, &names)
        .await
        .context("DescribeConfigs")?;
    let mut out = String::new();
    let mut config_errors = Vec::new();
    for topic in &topics {
        let config_text = match configs.get(&topic.name) {
            Some(Ok(entries)) => entries
                .iter()
                .filter(|e| args.all_configs || !e.is_default)
                .map(|e| {
                    let value = match (&e.value, e.is_sensitive) {
                        (_, true) => "<sensitive>",
                        (Some(v), false) => v.as_str(),
                        (None, false) => "null",
                    };
                    format!("{}={value}", e.name)
                })
                .collect::<Vec<_>>()
                .join(","),
            Some(Err(e)) => {
                config_errors.push(format!("{}: {e}", topic.name));
                format!("<{e}>")
            }
            None => String::new(),
        };
        write_topic(&mut out, topic, &config_text);
    }
    Ok(Described {
        text: out,
        config_errors,
    })
}

/// What `describe` found: the text to print, and the topics whose configs
/// could not be read (shown inline too; they make the command fail).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Described {
    pub text: String,
    pub config_errors: Vec<String>,
}

fn join_ids(ids: &[i32]) -> String {
    ids.iter().map(i32::to_string).collect::<Vec<_>>().join(",")
}

fn write_topic(out: &mut String, topic: &TopicMetadata, configs: &str) {
    let replication_factor = topic.partitions.first().map_or(0, |p| p.replicas.len());
    let _ = writeln!(
        out,
        "Topic: {}\tTopicId: {}\tPartitionCount: {}\tReplicationFactor: {}\tConfigs: {}",
        topic.name,
        format_topic_id(&topic.topic_id),
        topic.partitions.len(),
        replication_factor,
        configs
    );
    for p in &topic.partitions {
        let leader = if p.leader_id >= 0 {
            p.leader_id.to_string()
        } else {
            "none".to_owned()
        };
        let _ = write!(
            out,
            "\tTopic: {}\tPartition: {}\tLeader: {}\tLeaderEpoch: {}\tReplicas: {}\tIsr: {}",
            topic.name,
            p.partition,
            leader,
            p.leader_epoch,
            join_ids(&p.replicas),
            join_ids(&p.isr)
        );
        if !p.offline_replicas.is_empty() {
            let _ = write!(out, "\tOffline: {}", join_ids(&p.offline_replicas));
        }
        if let Some(e) = &p.error {
            let _ = write!(out, "\tError: {e}");
        }
        out.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::PartitionMetadata;
    use uuid::Uuid;

    #[test]
    fn config_flags_need_key_and_value() {
        assert_eq!(
            parse_config("retention.ms=1000").unwrap(),
            ("retention.ms".to_owned(), "1000".to_owned())
        );
        assert_eq!(
            parse_config("a=b=c").unwrap(),
            ("a".to_owned(), "b=c".to_owned())
        );
        assert!(parse_config("novalue").is_err());
        assert!(parse_config("=x").is_err());
    }

    #[test]
    fn describe_output_looks_like_kafka_topics() {
        let topic = TopicMetadata {
            name: "t".to_owned(),
            topic_id: Uuid::from_u64_pair(0x0001020304050607, 0x08090a0b0c0d0e0f),
            is_internal: false,
            partitions: vec![PartitionMetadata {
                partition: 0,
                leader_id: -1,
                leader_epoch: 0,
                replicas: vec![1, 2],
                isr: vec![2],
                offline_replicas: vec![1],
                error: None,
            }],
        };
        let mut out = String::new();
        write_topic(&mut out, &topic, "retention.ms=1");
        assert_eq!(
            out,
            "Topic: t\tTopicId: AAECAwQFBgcICQoLDA0ODw\tPartitionCount: 1\tReplicationFactor: 2\tConfigs: retention.ms=1\n\
             \tTopic: t\tPartition: 0\tLeader: none\tLeaderEpoch: 0\tReplicas: 1,2\tIsr: 2\tOffline: 1\n"
        );
    }
}
