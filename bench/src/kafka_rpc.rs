//! Typed Kafka requests over one raw connection (`kafka-protocol`), for
//! what librdkafka does not show: a partition's leader epoch in Metadata.
//! Works against any broker that speaks the protocol.

use std::time::Duration;

use anyhow::{anyhow, ensure, Context as _, Result};
use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{MetadataRequest, RequestHeader, ResponseHeader, TopicName};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Bound on one request's round trip, connecting included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest response accepted.
const RESPONSE_BYTES_MAX: usize = 64 * 1024 * 1024;

/// One connection and its correlation ids.
pub struct KafkaConnection {
    stream: TcpStream,
    correlation_id: i32,
}

impl KafkaConnection {
    pub async fn connect(address: &str) -> Result<KafkaConnection> {
        let stream = tokio::time::timeout(REQUEST_TIMEOUT, TcpStream::connect(address))
            .await
            .map_err(|_| anyhow!("connecting to {address} timed out"))??;
        stream.set_nodelay(true)?;
        Ok(KafkaConnection {
            stream,
            correlation_id: 0,
        })
    }

    /// Sends `request` at `version` and decodes its response.
    pub async fn send<R: Request>(&mut self, version: i16, request: &R) -> Result<R::Response> {
        tokio::time::timeout(REQUEST_TIMEOUT, self.round_trip(version, request))
            .await
            .map_err(|_| {
                anyhow!(
                    "api {} v{version}: no answer in {REQUEST_TIMEOUT:?}",
                    R::KEY
                )
            })?
    }

    async fn round_trip<R: Request>(&mut self, version: i16, request: &R) -> Result<R::Response> {
        self.correlation_id += 1;
        let header = RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation_id)
            .with_client_id(Some(StrBytes::from_static_str("fjord-bench")));
        let mut buf = BytesMut::new();
        header
            .encode(&mut buf, R::header_version(version))
            .map_err(|e| anyhow!("encoding request header: {e}"))?;
        request
            .encode(&mut buf, version)
            .map_err(|e| anyhow!("encoding api {} v{version}: {e}", R::KEY))?;
        let len = u32::try_from(buf.len()).context("request too large")?;
        self.stream.write_all(&len.to_be_bytes()).await?;
        self.stream.write_all(&buf).await?;
        let mut len = [0u8; 4];
        self.stream.read_exact(&mut len).await?;
        let len = u32::from_be_bytes(len) as usize;
        ensure!(len <= RESPONSE_BYTES_MAX, "response of {len} bytes");
        let mut frame = vec![0u8; len];
        self.stream.read_exact(&mut frame).await?;
        let mut body = Bytes::from(frame);
        let response_header =
            ResponseHeader::decode(&mut body, R::Response::header_version(version))
                .map_err(|e| anyhow!("decoding response header: {e}"))?;
        ensure!(
            response_header.correlation_id == self.correlation_id,
            "correlation id {} != {}",
            response_header.correlation_id,
            self.correlation_id
        );
        R::Response::decode(&mut body, version)
            .map_err(|e| anyhow!("decoding api {} v{version} response: {e}", R::KEY))
    }
}

/// A partition's leader and leader epoch as the broker at `address` names
/// them (Metadata v12); `None` while it names no leader.
pub async fn leader_and_epoch(
    address: &str,
    topic: &str,
    partition: i32,
) -> Result<Option<(i32, i32)>> {
    let mut conn = KafkaConnection::connect(address).await?;
    let request = MetadataRequest::default()
        .with_allow_auto_topic_creation(false)
        .with_topics(Some(vec![MetadataRequestTopic::default().with_name(Some(
            TopicName(StrBytes::from_string(topic.to_string())),
        ))]));
    let response = conn.send(12, &request).await?;
    Ok(response
        .topics
        .iter()
        .filter(|t| t.name.as_ref().is_some_and(|n| n.0.as_str() == topic))
        .flat_map(|t| t.partitions.iter())
        .find(|p| p.partition_index == partition && p.leader_id.0 >= 0)
        .map(|p| (p.leader_id.0, p.leader_epoch)))
}
