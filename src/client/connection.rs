//! One TCP connection to one broker.
//!
//! A `Connection` negotiates API versions once (ApiVersions, KIP-511 fallback)
//! and then runs one request at a time: write a frame, read its response. A
//! CLI needs no pipelining, and one-at-a-time keeps correlation handling
//! trivial; parallelism comes from talking to several brokers at once, each
//! over its own `Connection` (see `cluster.rs`).
//!
//! Every wait is bounded by a timeout from [`ClientConfig`]. A timeout or I/O
//! error in the middle of an exchange leaves the byte stream at an unknown
//! position, so the connection marks itself broken and the cluster client
//! replaces it on next use.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use kafka_protocol::messages::{ApiKey, ApiVersionsRequest};
use kafka_protocol::protocol::{Message, Request, StrBytes, VersionRange};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tracing::debug;

use crate::client::error::KafkaError;
use crate::client::framing::{api_name, decode_response, encode_request, read_frame};

/// Read buffer in front of the socket: big enough that a typical response is
/// read in a handful of syscalls, small enough not to matter per connection.
const READ_BUFFER_BYTES: usize = 64 * 1024;

/// How many ApiVersions attempts we make: our highest version, then the
/// highest the broker said it supports.
const API_VERSIONS_ATTEMPTS_MAX: usize = 2;

/// Settings shared by every connection of a client.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Sent in every request header; brokers log it and quota by it.
    pub client_id: String,
    /// Bound on TCP connect plus the ApiVersions handshake.
    pub connect_timeout: Duration,
    /// Bound on one request/response exchange (Fetch adds its max wait).
    pub request_timeout: Duration,
    /// Largest response frame we accept; larger ones are refused before any
    /// body byte is buffered. Fetch sizes are chosen below it.
    pub response_bytes_max: usize,
    /// Highest version to use per API key, below what both sides support.
    /// Empty normally; tests use it to exercise older request layouts
    /// against a broker that speaks newer ones.
    pub api_versions_max: HashMap<i16, i16>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            client_id: "fjord-cli".to_owned(),
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            response_bytes_max: 64 * 1024 * 1024,
            api_versions_max: HashMap::new(),
        }
    }
}

/// A connection to one broker with its negotiated API version table.
#[derive(Debug)]
pub struct Connection {
    addr: String,
    stream: BufReader<TcpStream>,
    client_id: StrBytes,
    request_timeout: Duration,
    response_bytes_max: usize,
    correlation_id_next: i32,
    /// api key → the broker's (min, max) version.
    api_versions: HashMap<i16, VersionRange>,
    /// Caps from [`ClientConfig::api_versions_max`].
    api_versions_max: HashMap<i16, i16>,
    broken: bool,
}

impl Connection {
    /// Connects to `addr` ("host:port") and negotiates API versions, all
    /// within `config.connect_timeout`.
    pub async fn connect(addr: &str, config: &ClientConfig) -> Result<Self> {
        let connect = async {
            let stream = TcpStream::connect(addr)
                .await
                .with_context(|| format!("connecting to {addr}"))?;
            stream.set_nodelay(true)?;
            let mut conn = Connection {
                addr: addr.to_owned(),
                stream: BufReader::with_capacity(READ_BUFFER_BYTES, stream),
                client_id: StrBytes::from_string(config.client_id.clone()),
                request_timeout: config.connect_timeout,
                response_bytes_max: config.response_bytes_max,
                correlation_id_next: 1,
                api_versions: HashMap::new(),
                api_versions_max: config.api_versions_max.clone(),
                broken: false,
            };
            conn.negotiate_api_versions().await?;
            conn.request_timeout = config.request_timeout;
            Ok::<_, anyhow::Error>(conn)
        };
        timeout(config.connect_timeout, connect)
            .await
            .map_err(|_| {
                anyhow!(
                    "connecting to {addr}: timed out after {} ms",
                    config.connect_timeout.as_millis()
                )
            })?
    }

    /// Asks the broker which versions it speaks. We start at our highest
    /// ApiVersions version; a broker that does not know it answers
    /// UNSUPPORTED_VERSION with its own range, and we retry once within it.
    async fn negotiate_api_versions(&mut self) -> Result<()> {
        let cap = self
            .api_versions_max
            .get(&(ApiKey::ApiVersions as i16))
            .copied()
            .unwrap_or(i16::MAX);
        let mut version = ApiVersionsRequest::VERSIONS.max.min(cap).max(0);
        for _ in 0..API_VERSIONS_ATTEMPTS_MAX {
            let mut request = ApiVersionsRequest::default();
            if version >= 3 {
                request = request
                    .with_client_software_name(StrBytes::from_static_str("fjord"))
                    .with_client_software_version(StrBytes::from_static_str(env!(
                        "CARGO_PKG_VERSION"
                    )));
            }
            let response = self.send(&request, version).await?;
            if response.error_code == KafkaError::UNSUPPORTED_VERSION {
                let broker_max = response
                    .api_keys
                    .iter()
                    .find(|k| k.api_key == ApiKey::ApiVersions as i16)
                    .map_or(0, |k| k.max_version);
                if broker_max >= version || broker_max < 0 {
                    bail!(
                        "{}: broker rejected ApiVersions v{version} but advertises v{broker_max}",
                        self.addr
                    );
                }
                version = broker_max;
                continue;
            }
            KafkaError::check(response.error_code, None)
                .with_context(|| format!("ApiVersions from {}", self.addr))?;
            self.api_versions = response
                .api_keys
                .iter()
                .map(|k| {
                    let range = VersionRange {
                        min: k.min_version,
                        max: k.max_version,
                    };
                    (k.api_key, range)
                })
                .collect();
            debug!(addr = %self.addr, apis = self.api_versions.len(), "negotiated api versions");
            return Ok(());
        }
        bail!("{}: could not agree on an ApiVersions version", self.addr)
    }

    /// The address this connection was opened to.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// False once an exchange failed halfway; such a connection must be
    /// replaced, never reused.
    pub fn is_usable(&self) -> bool {
        !self.broken
    }

    /// The broker's version range for `R`, if it supports the API at all.
    pub fn broker_versions<R: Request>(&self) -> Option<VersionRange> {
        self.api_versions.get(&R::KEY).copied()
    }

    /// The highest version of `R` that both we and the broker support.
    pub fn version<R: Request>(&self) -> Result<i16> {
        self.version_at_most::<R>(R::VERSIONS.max)
    }

    /// Like [`Self::version`], capped at `max` (for callers that cannot fill
    /// a newer version's fields, e.g. topic ids).
    pub fn version_at_most<R: Request>(&self, max: i16) -> Result<i16> {
        let cap = self
            .api_versions_max
            .get(&R::KEY)
            .copied()
            .unwrap_or(i16::MAX);
        let ours = VersionRange {
            min: R::VERSIONS.min,
            max: max.min(R::VERSIONS.max).min(cap),
        };
        let theirs = self
            .broker_versions::<R>()
            .ok_or_else(|| anyhow!("broker {} does not support {}", self.addr, api_name(R::KEY)))?;
        let both = ours.intersect(&theirs);
        if both.is_empty() {
            bail!(
                "no common {} version with broker {}: we speak {ours}, it speaks {theirs}",
                api_name(R::KEY),
                self.addr
            );
        }
        Ok(both.max)
    }

    /// Sends `request` at `version` and waits for its response, within the
    /// configured request timeout.
    pub async fn send<R: Request>(&mut self, request: &R, version: i16) -> Result<R::Response> {
        let limit = self.request_timeout;
        self.send_within(request, version, limit).await
    }

    /// Like [`Self::send`] with an explicit bound, for requests that wait on
    /// the broker side (Fetch `max_wait_ms`, Produce `timeout_ms`).
    pub async fn send_within<R: Request>(
        &mut self,
        request: &R,
        version: i16,
        limit: Duration,
    ) -> Result<R::Response> {
        let (correlation_id, frame) = self.prepare(request, version)?;
        let response_bytes_max = self.response_bytes_max;
        let exchange = async {
            self.stream.get_mut().write_all(&frame).await?;
            read_frame(&mut self.stream, response_bytes_max).await
        };
        let body = match timeout(limit, exchange).await {
            Ok(Ok(body)) => body,
            Ok(Err(e)) => {
                self.broken = true;
                return Err(e.context(format!("{} request to {}", api_name(R::KEY), self.addr)));
            }
            Err(_) => {
                self.broken = true;
                bail!(
                    "{} request to {} timed out after {} ms",
                    api_name(R::KEY),
                    self.addr,
                    limit.as_millis()
                );
            }
        };
        // A body that fails to decode was still read whole, so the stream
        // stays in step and the connection remains usable.
        decode_response::<R>(body, version, correlation_id)
            .with_context(|| format!("response from {}", self.addr))
    }

    /// Sends a request the broker will not answer (Produce with acks=0).
    pub async fn send_without_response<R: Request>(
        &mut self,
        request: &R,
        version: i16,
    ) -> Result<()> {
        let (_, frame) = self.prepare(request, version)?;
        let limit = self.request_timeout;
        match timeout(limit, self.stream.get_mut().write_all(&frame)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                self.broken = true;
                Err(anyhow::Error::new(e).context(format!("writing to {}", self.addr)))
            }
            Err(_) => {
                self.broken = true;
                bail!(
                    "writing to {} timed out after {} ms",
                    self.addr,
                    limit.as_millis()
                )
            }
        }
    }

    fn prepare<R: Request>(&mut self, request: &R, version: i16) -> Result<(i32, bytes::Bytes)> {
        if self.broken {
            bail!("connection to {} is broken", self.addr);
        }
        let correlation_id = self.correlation_id_next;
        self.correlation_id_next = self.correlation_id_next.wrapping_add(1);
        debug!(api = %api_name(R::KEY), version, correlation_id, addr = %self.addr, "request");
        let frame = encode_request(request, version, correlation_id, &self.client_id)?;
        Ok((correlation_id, frame))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::api_versions_response::ApiVersion;
    use kafka_protocol::messages::{ApiVersionsResponse, MetadataRequest, ResponseHeader};
    use kafka_protocol::protocol::Encodable;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    /// A fake broker that answers ApiVersions (after optionally refusing our
    /// first version, as an old broker would) and then stays silent.
    async fn fake_broker(refuse_first: bool) -> (String, tokio::task::JoinHandle<Vec<i16>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let task = tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut versions_seen = Vec::new();
            loop {
                let Ok(len) = sock.read_i32().await else {
                    return versions_seen;
                };
                let mut buf = vec![0u8; len as usize];
                sock.read_exact(&mut buf).await.unwrap();
                let key = i16::from_be_bytes([buf[0], buf[1]]);
                let version = i16::from_be_bytes([buf[2], buf[3]]);
                let correlation_id = i32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
                if key != ApiKey::ApiVersions as i16 {
                    // Never answer anything else: the client must time out.
                    continue;
                }
                versions_seen.push(version);
                let refuse = refuse_first && versions_seen.len() == 1;
                let (resp, body_version) = if refuse {
                    let r = ApiVersionsResponse::default()
                        .with_error_code(KafkaError::UNSUPPORTED_VERSION)
                        .with_api_keys(vec![ApiVersion::default()
                            .with_api_key(18)
                            .with_min_version(0)
                            .with_max_version(2)]);
                    (r, 0)
                } else {
                    let r = ApiVersionsResponse::default().with_api_keys(vec![
                        ApiVersion::default()
                            .with_api_key(18)
                            .with_min_version(0)
                            .with_max_version(version),
                        ApiVersion::default()
                            .with_api_key(3)
                            .with_min_version(0)
                            .with_max_version(9),
                    ]);
                    (r, version)
                };
                let mut out = bytes::BytesMut::new();
                ResponseHeader::default()
                    .with_correlation_id(correlation_id)
                    .encode(&mut out, 0)
                    .unwrap();
                resp.encode(&mut out, body_version).unwrap();
                sock.write_i32(out.len() as i32).await.unwrap();
                sock.write_all(&out).await.unwrap();
            }
        });
        (addr, task)
    }

    fn quick_config() -> ClientConfig {
        ClientConfig {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_millis(200),
            ..ClientConfig::default()
        }
    }

    #[tokio::test]
    async fn negotiation_falls_back_to_the_brokers_api_versions_version() {
        let (addr, task) = fake_broker(true).await;
        let conn = Connection::connect(&addr, &quick_config()).await.unwrap();
        assert_eq!(conn.version::<MetadataRequest>().unwrap(), 9);
        drop(conn);
        assert_eq!(
            task.await.unwrap(),
            vec![ApiVersionsRequest::VERSIONS.max, 2]
        );
    }

    #[tokio::test]
    async fn configured_caps_lower_the_negotiated_versions() {
        let (addr, task) = fake_broker(false).await;
        let mut config = quick_config();
        config.api_versions_max.insert(ApiKey::Metadata as i16, 5);
        config
            .api_versions_max
            .insert(ApiKey::ApiVersions as i16, 1);
        let conn = Connection::connect(&addr, &config).await.unwrap();
        assert_eq!(conn.version::<MetadataRequest>().unwrap(), 5);
        assert_eq!(conn.version_at_most::<MetadataRequest>(3).unwrap(), 3);
        drop(conn);
        assert_eq!(task.await.unwrap(), vec![1]);
    }

    #[tokio::test]
    async fn silent_broker_times_out_and_breaks_the_connection() {
        let (addr, _task) = fake_broker(false).await;
        let mut conn = Connection::connect(&addr, &quick_config()).await.unwrap();
        let err = conn.send(&MetadataRequest::default(), 9).await.unwrap_err();
        assert!(err.to_string().contains("timed out"), "{err}");
        assert!(!conn.is_usable());
        let again = conn.send(&MetadataRequest::default(), 9).await.unwrap_err();
        assert!(again.to_string().contains("broken"), "{again}");
    }

    #[tokio::test]
    async fn unsupported_api_is_reported_by_name() {
        let (addr, _task) = fake_broker(false).await;
        let conn = Connection::connect(&addr, &quick_config()).await.unwrap();
        let err = conn
            .version::<kafka_protocol::messages::FetchRequest>()
            .unwrap_err();
        assert!(err.to_string().contains("does not support Fetch"), "{err}");
    }

    #[tokio::test]
    async fn connect_to_a_closed_port_fails_quickly() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        drop(listener);
        assert!(Connection::connect(&addr, &quick_config()).await.is_err());
    }
}
