//! One client connection: Kafka's 4-byte-length framing, requests read ahead
//! while earlier ones are handled, responses written strictly in request order.
//!
//! Two halves: a reader task decodes frames into a bounded queue (its capacity
//! is the in-flight limit, so a client that pipelines faster than we answer is
//! slowed by TCP backpressure rather than by our memory), and this task takes
//! requests from the queue one at a time, handles them, and writes the
//! responses. Handling one at a time per connection is what Kafka does too, and
//! it keeps the idempotent producer's pipelined batches in order.
//!
//! One refinement: a produce whose answer waits for an fsync
//! ([`Outcome::Later`]) is already appended when its handler returns, so the
//! next queued produce is appended while the first one's fsync runs, and one
//! group commit covers both. The waiting answers form an ordered queue (at
//! most the in-flight limit long) and are written in request order. Any other
//! request first waits for that queue to empty, so it sees every earlier
//! produce committed, exactly as if requests were handled one by one.
//!
//! Every size is checked before anything is allocated: a frame longer than
//! `socket.request.max.bytes` closes the connection without being read.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use futures::stream::FuturesOrdered;
use futures::{FutureExt, StreamExt};
use kafka_protocol::messages::ApiKey;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

use crate::api::{KafkaApis, Outcome};
use crate::config::BrokerConfig;
use crate::protocol::{self, FrameError, Request};

/// The per-connection limits, copied out of the config once.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub request_bytes_max: usize,
    pub inflight_requests_max: usize,
    pub idle_timeout: Duration,
}

impl Limits {
    pub fn from_config(config: &BrokerConfig) -> Limits {
        Limits {
            request_bytes_max: config.socket_request_max_bytes,
            inflight_requests_max: config.connection_max_inflight_requests,
            idle_timeout: Duration::from_millis(config.connections_max_idle_ms.max(1)),
        }
    }
}

/// Answers not yet written, oldest first: each resolves to its encoded frame
/// (None for a request that gets no answer).
type Waiting = FuturesOrdered<BoxFuture<'static, anyhow::Result<Option<Bytes>>>>;

/// What the reader hands to the responder.
enum Inbound {
    Request(Box<Request>),
    /// A response prepared by the reader itself (KIP-511 ApiVersions fallback).
    Ready(Bytes),
}

/// Serves one connection until the client leaves, misbehaves, or the broker
/// shuts down.
pub async fn run(
    socket: TcpStream,
    peer: SocketAddr,
    apis: Arc<KafkaApis>,
    limits: Limits,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let (read_half, write_half) = socket.into_split();
    let (tx, mut rx) = mpsc::channel::<Inbound>(limits.inflight_requests_max);
    let mut reader = tokio::spawn(read_frames(read_half, tx, limits, peer));
    let mut writer = BufWriter::with_capacity(64 * 1024, write_half);

    let result = async {
        // Answers still waiting (produces' fsyncs), oldest first.
        let mut waiting = Waiting::new();
        loop {
            let inbound = tokio::select! {
                biased;
                _ = shutdown.changed() => return Ok(()),
                done = waiting.next(), if !waiting.is_empty() => {
                    // `next` on a non-empty queue always yields an item.
                    if let Some(frame) = done {
                        write_frame(&mut writer, frame?).await?;
                        if rx.is_empty() {
                            writer.flush().await?;
                        }
                    }
                    continue;
                }
                inbound = rx.recv(), if waiting.len() < limits.inflight_requests_max => inbound,
            };
            let Some(inbound) = inbound else {
                // The reader ended: answer what is in flight, flush, stop.
                write_waiting(&mut waiting, &mut writer).await?;
                writer.flush().await?;
                return Ok(());
            };
            let request = match inbound {
                Inbound::Ready(frame) => {
                    queue_or_write(&mut waiting, &mut writer, Some(frame)).await?;
                    if rx.is_empty() {
                        writer.flush().await?;
                    }
                    continue;
                }
                Inbound::Request(request) => request,
            };
            if request.api_key != ApiKey::Produce {
                // Everything but a produce runs after the earlier requests are done.
                write_waiting(&mut waiting, &mut writer).await?;
            }
            let span = tracing::debug_span!(
                "request",
                api = ?request.api_key,
                version = request.version,
                correlation_id = request.header.correlation_id,
                client_id = request.header.client_id.as_deref().unwrap_or(""),
            );
            let correlation_id = request.header.correlation_id;
            let api_key = request.api_key;
            let version = request.version;
            let encode = move |outcome: Outcome| -> anyhow::Result<Option<Bytes>> {
                match outcome {
                    Outcome::Respond(body) => Ok(Some(protocol::encode_response(
                        correlation_id,
                        api_key,
                        version,
                        &body,
                    )?)),
                    Outcome::NoResponse => Ok(None),
                    Outcome::Close(reason) => anyhow::bail!("closing connection: {reason}"),
                    Outcome::Later(_) => anyhow::bail!("a deferred answer deferred again"),
                }
            };
            match apis.handle(*request, peer).instrument(span).await {
                Outcome::Later(answer) => waiting.push_back(answer.map(encode).boxed()),
                Outcome::Close(reason) => {
                    // Answer what came before, then close.
                    write_waiting(&mut waiting, &mut writer).await?;
                    writer.flush().await?;
                    anyhow::bail!("closing connection: {reason}");
                }
                outcome => queue_or_write(&mut waiting, &mut writer, encode(outcome)?).await?,
            }
            // Batch writes: flush only when no further request is queued.
            if rx.is_empty() {
                writer.flush().await?;
            }
        }
    }
    .await;
    reader.abort();
    // Surface the reader's reason (bad frame, idle timeout) if it had one.
    if let Ok(Ok(Err(e))) = tokio::time::timeout(Duration::from_millis(10), &mut reader).await {
        return Err(e);
    }
    result
}

/// Writes a ready answer now, or behind the answers still waiting so that the
/// order stays the request order.
async fn queue_or_write(
    waiting: &mut Waiting,
    writer: &mut BufWriter<OwnedWriteHalf>,
    frame: Option<Bytes>,
) -> anyhow::Result<()> {
    if waiting.is_empty() {
        write_frame(writer, frame).await
    } else {
        waiting.push_back(futures::future::ready(Ok(frame)).boxed());
        Ok(())
    }
}

/// Waits for every answer still waiting and writes them, in order.
async fn write_waiting(
    waiting: &mut Waiting,
    writer: &mut BufWriter<OwnedWriteHalf>,
) -> anyhow::Result<()> {
    while let Some(frame) = waiting.next().await {
        write_frame(writer, frame?).await?;
    }
    Ok(())
}

async fn write_frame(
    writer: &mut BufWriter<OwnedWriteHalf>,
    frame: Option<Bytes>,
) -> anyhow::Result<()> {
    if let Some(frame) = frame {
        writer.write_all(&frame).await?;
    }
    Ok(())
}

/// Reads and decodes frames into `tx` until EOF, a bad frame, or idleness.
async fn read_frames(
    mut socket: OwnedReadHalf,
    tx: mpsc::Sender<Inbound>,
    limits: Limits,
    peer: SocketAddr,
) -> anyhow::Result<()> {
    loop {
        let mut len_buf = [0u8; 4];
        match tokio::time::timeout(limits.idle_timeout, socket.read_exact(&mut len_buf)).await {
            Err(_) => anyhow::bail!("idle for longer than connections.max.idle.ms"),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Ok(Err(e)) => return Err(e.into()),
            Ok(Ok(_)) => {}
        }
        let len = i32::from_be_bytes(len_buf);
        if len < 8 {
            tracing::warn!(%peer, len, "malformed frame length; closing connection");
            anyhow::bail!("malformed frame length {len}");
        }
        let len = len as usize;
        if len > limits.request_bytes_max {
            tracing::warn!(
                %peer,
                len,
                max = limits.request_bytes_max,
                "request larger than socket.request.max.bytes; closing connection"
            );
            anyhow::bail!("frame of {len} bytes exceeds socket.request.max.bytes");
        }
        let mut frame = BytesMut::zeroed(len);
        match tokio::time::timeout(limits.idle_timeout, socket.read_exact(&mut frame)).await {
            Err(_) => anyhow::bail!("frame body not received within connections.max.idle.ms"),
            Ok(result) => {
                result?;
            }
        }
        let inbound = match protocol::decode_request(frame.freeze()) {
            Ok(request) => Inbound::Request(Box::new(request)),
            Err(FrameError::UnsupportedApiVersions(response)) => Inbound::Ready(response),
            Err(FrameError::Malformed(reason)) => {
                tracing::warn!(%peer, %reason, "malformed request; closing connection");
                anyhow::bail!("malformed request: {reason}");
            }
        };
        if tx.send(inbound).await.is_err() {
            return Ok(());
        }
    }
}
