//! Typed Kafka requests over one raw connection, encoded and decoded with
//! `kafka-protocol`: for requests no client library sends (or sends only in
//! its own way), and for checking fields a client would hide, such as a
//! null versus an empty error message.

use anyhow::{anyhow, Context as _, Result};
use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};
use tokio::net::TcpStream;

use super::raw;

/// One connection and its correlation ids.
pub struct KafkaConnection {
    stream: TcpStream,
    correlation_id: i32,
}

impl KafkaConnection {
    pub async fn connect(bootstrap: &str) -> Result<KafkaConnection> {
        Ok(KafkaConnection {
            stream: raw::connect(bootstrap).await?,
            correlation_id: 0,
        })
    }

    /// Sends `request` at `version` and decodes its response.
    pub async fn send<R: Request>(&mut self, version: i16, request: &R) -> Result<R::Response> {
        self.correlation_id += 1;
        let header = RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation_id)
            .with_client_id(Some(StrBytes::from_static_str("fjord-it")));
        let mut buf = BytesMut::new();
        header
            .encode(&mut buf, R::header_version(version))
            .map_err(|e| anyhow!("encoding request header: {e}"))?;
        request
            .encode(&mut buf, version)
            .map_err(|e| anyhow!("encoding api {} v{version}: {e}", R::KEY))?;
        raw::write_frame(&mut self.stream, &buf).await?;
        let frame = raw::read_frame(&mut self.stream)
            .await
            .with_context(|| format!("api {} v{version}", R::KEY))?;
        let mut body = Bytes::from(frame);
        let response_header =
            ResponseHeader::decode(&mut body, R::Response::header_version(version))
                .map_err(|e| anyhow!("decoding response header: {e}"))?;
        anyhow::ensure!(
            response_header.correlation_id == self.correlation_id,
            "correlation id {} != {}",
            response_header.correlation_id,
            self.correlation_id
        );
        R::Response::decode(&mut body, version)
            .map_err(|e| anyhow!("decoding api {} v{version} response: {e}", R::KEY))
    }
}

/// Builders for the admin requests the tests send, at the newest version
/// both Fjord and Kafka 4.4 speak.
pub mod admin {
    use super::*;
    use kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic;
    use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
    use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
    use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
    use kafka_protocol::messages::describe_configs_response::DescribeConfigsResult;
    use kafka_protocol::messages::incremental_alter_configs_request::{
        AlterConfigsResource, AlterableConfig,
    };
    use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
    use kafka_protocol::messages::metadata_response::MetadataResponseTopic;
    use kafka_protocol::messages::*;

    pub const CREATE_TOPICS_VERSION: i16 = 7;
    pub const CREATE_PARTITIONS_VERSION: i16 = 3;
    pub const DESCRIBE_CONFIGS_VERSION: i16 = 4;
    pub const INCREMENTAL_ALTER_CONFIGS_VERSION: i16 = 1;
    pub const ALTER_CONFIGS_VERSION: i16 = 2;
    pub const METADATA_VERSION: i16 = 12;
    pub const RESOURCE_TOPIC: i8 = 2;
    pub const RESOURCE_BROKER: i8 = 4;
    pub const OP_SET: i8 = 0;
    pub const OP_DELETE: i8 = 1;
    pub const OP_APPEND: i8 = 2;
    pub const OP_SUBTRACT: i8 = 3;

    pub fn s(text: &str) -> StrBytes {
        StrBytes::from_string(text.to_string())
    }

    pub fn topic_name(text: &str) -> TopicName {
        TopicName(s(text))
    }

    /// CreateTopics of one topic; returns its result.
    pub async fn create_topic(
        conn: &mut KafkaConnection,
        name: &str,
        partitions: i32,
        configs: &[(&str, &str)],
        validate_only: bool,
    ) -> Result<CreatableTopicResult> {
        create_topic_as(conn, name, partitions, -1, configs, validate_only).await
    }

    /// A topic with `replication` replicas per partition.
    pub async fn create_topic_with_replication(
        conn: &mut KafkaConnection,
        name: &str,
        partitions: i32,
        replication: i16,
    ) -> Result<CreatableTopicResult> {
        create_topic_as(conn, name, partitions, replication, &[], false).await
    }

    async fn create_topic_as(
        conn: &mut KafkaConnection,
        name: &str,
        partitions: i32,
        replication: i16,
        configs: &[(&str, &str)],
        validate_only: bool,
    ) -> Result<CreatableTopicResult> {
        let topic = CreatableTopic::default()
            .with_name(topic_name(name))
            .with_num_partitions(partitions)
            .with_replication_factor(replication)
            .with_configs(
                configs
                    .iter()
                    .map(|(k, v)| {
                        CreatableTopicConfig::default()
                            .with_name(s(k))
                            .with_value(Some(s(v)))
                    })
                    .collect(),
            );
        let request = CreateTopicsRequest::default()
            .with_topics(vec![topic])
            .with_timeout_ms(30_000)
            .with_validate_only(validate_only);
        let mut response = conn.send(CREATE_TOPICS_VERSION, &request).await?;
        response
            .topics
            .pop()
            .ok_or_else(|| anyhow!("CreateTopics answered no topic"))
    }

    /// CreatePartitions growing one topic to `count`; returns (code, message).
    pub async fn create_partitions(
        conn: &mut KafkaConnection,
        name: &str,
        count: i32,
    ) -> Result<(i16, Option<String>)> {
        let request = CreatePartitionsRequest::default()
            .with_topics(vec![CreatePartitionsTopic::default()
                .with_name(topic_name(name))
                .with_count(count)
                .with_assignments(None)])
            .with_timeout_ms(30_000);
        let response = conn.send(CREATE_PARTITIONS_VERSION, &request).await?;
        let r = response
            .results
            .first()
            .ok_or_else(|| anyhow!("CreatePartitions answered nothing"))?;
        Ok((
            r.error_code,
            r.error_message.as_ref().map(|m| m.to_string()),
        ))
    }

    /// IncrementalAlterConfigs of one resource; returns (code, message).
    pub async fn incremental_alter(
        conn: &mut KafkaConnection,
        resource_type: i8,
        resource_name: &str,
        ops: &[(&str, i8, Option<&str>)],
        validate_only: bool,
    ) -> Result<(i16, Option<String>)> {
        let resource = AlterConfigsResource::default()
            .with_resource_type(resource_type)
            .with_resource_name(s(resource_name))
            .with_configs(
                ops.iter()
                    .map(|(k, op, v)| {
                        AlterableConfig::default()
                            .with_name(s(k))
                            .with_config_operation(*op)
                            .with_value(v.map(s))
                    })
                    .collect(),
            );
        let request = IncrementalAlterConfigsRequest::default()
            .with_resources(vec![resource])
            .with_validate_only(validate_only);
        let response = conn
            .send(INCREMENTAL_ALTER_CONFIGS_VERSION, &request)
            .await?;
        let r = response
            .responses
            .first()
            .ok_or_else(|| anyhow!("IncrementalAlterConfigs answered nothing"))?;
        Ok((
            r.error_code,
            r.error_message.as_ref().map(|m| m.to_string()),
        ))
    }

    /// DescribeConfigs of one resource, with synonyms and documentation.
    pub async fn describe_configs(
        conn: &mut KafkaConnection,
        resource_type: i8,
        resource_name: &str,
        keys: Option<&[&str]>,
        include_documentation: bool,
    ) -> Result<DescribeConfigsResult> {
        let request = DescribeConfigsRequest::default()
            .with_resources(vec![DescribeConfigsResource::default()
                .with_resource_type(resource_type)
                .with_resource_name(s(resource_name))
                .with_configuration_keys(
                    keys.map(|k| k.iter().map(|k| s(k)).collect()),
                )])
            .with_include_synonyms(true)
            .with_include_documentation(include_documentation);
        let mut response = conn.send(DESCRIBE_CONFIGS_VERSION, &request).await?;
        response
            .results
            .pop()
            .ok_or_else(|| anyhow!("DescribeConfigs answered nothing"))
    }

    /// The described value of one config, if present.
    pub fn config_value(result: &DescribeConfigsResult, name: &str) -> Option<String> {
        result
            .configs
            .iter()
            .find(|c| c.name.as_str() == name)
            .and_then(|c| c.value.as_ref().map(|v| v.to_string()))
    }

    /// Metadata for the named topics (no auto-creation unless asked).
    pub async fn metadata(
        conn: &mut KafkaConnection,
        topics: &[&str],
        allow_auto_create: bool,
    ) -> Result<Vec<MetadataResponseTopic>> {
        let request = MetadataRequest::default()
            .with_topics(Some(
                topics
                    .iter()
                    .map(|t| MetadataRequestTopic::default().with_name(Some(topic_name(t))))
                    .collect(),
            ))
            .with_allow_auto_topic_creation(allow_auto_create);
        Ok(conn.send(METADATA_VERSION, &request).await?.topics)
    }

    /// Whether the broker knows a topic (Metadata without auto-creation).
    pub async fn topic_exists(conn: &mut KafkaConnection, name: &str) -> Result<bool> {
        let topics = metadata(conn, &[name], false).await?;
        Ok(topics.first().is_some_and(|t| t.error_code == 0))
    }
}
