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
//!
//! Memory: a frame is read only once it fits two byte budgets, each held
//! until its request has been handled — the connection's
//! (`connection.max.inflight.bytes`; a larger single request takes all of
//! it, so it is read once nothing else of the connection is in flight) and
//! the broker's ([`RequestBudget`], `queued.max.request.bytes`). A client
//! that pipelines faster than the broker answers is slowed by TCP, never
//! buffered. When the client goes away (or sends garbage) the connection
//! ends at once: the request being handled is abandoned (long polls
//! included; appends run on blocking threads and finish whatever happens to
//! the request) and queued requests are dropped with their budget, except
//! `acks=0` produces, which Kafka would have handled too and whose sender
//! could not wait for an answer.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use futures::stream::FuturesOrdered;
use futures::{FutureExt, StreamExt};
use kafka_protocol::messages::ApiKey;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tracing::Instrument;

use crate::api::{KafkaApis, Outcome};
use crate::config::BrokerConfig;
use kafka_protocol::messages::RequestKind;

use crate::protocol::{self, FrameError, Request};

/// The broker-wide budget of request bytes read but not yet handled
/// (`queued.max.request.bytes`), shared by every listener's connections.
#[derive(Clone, Debug)]
pub struct RequestBudget {
    bytes: Arc<Semaphore>,
    total: usize,
}

impl RequestBudget {
    pub fn new(bytes: usize) -> RequestBudget {
        let total = bytes.min(Semaphore::MAX_PERMITS);
        RequestBudget {
            bytes: Arc::new(Semaphore::new(total)),
            total,
        }
    }

    /// Bytes of the budget not held by any request right now.
    pub fn available(&self) -> usize {
        self.bytes.available_permits()
    }

    pub fn total(&self) -> usize {
        self.total
    }
}

/// The budget a request holds while it waits and while it is handled.
struct Held {
    _connection: OwnedSemaphorePermit,
    _broker: OwnedSemaphorePermit,
}

/// Malformed requests: counted always, warned about at most once per
/// [`MALFORMED_WARN_INTERVAL`] (a flood of garbage must not become a flood
/// of log lines).
static MALFORMED_TOTAL: AtomicU64 = AtomicU64::new(0);
static MALFORMED_REPORTED: AtomicU64 = AtomicU64::new(0);
static MALFORMED_LAST_WARN_MS: AtomicU64 = AtomicU64::new(0);
pub const MALFORMED_WARN_INTERVAL: Duration = Duration::from_secs(10);

/// Malformed requests seen since the process started.
pub fn malformed_requests_total() -> u64 {
    MALFORMED_TOTAL.load(Ordering::Relaxed)
}

/// Counts one malformed request and warns if the interval has passed since
/// the last warning (which then covers every request since).
fn note_malformed(peer: SocketAddr, reason: &str) {
    let total = MALFORMED_TOTAL.fetch_add(1, Ordering::Relaxed) + 1;
    let now_ms = process_clock().elapsed().as_millis() as u64 + 1;
    let last = MALFORMED_LAST_WARN_MS.load(Ordering::Relaxed);
    let due =
        last == 0 || now_ms.saturating_sub(last) >= MALFORMED_WARN_INTERVAL.as_millis() as u64;
    if due
        && MALFORMED_LAST_WARN_MS
            .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        let reported = MALFORMED_REPORTED.swap(total, Ordering::Relaxed);
        tracing::warn!(
            %peer,
            reason,
            since_last_warning = total - reported,
            malformed_requests_total = total,
            "malformed request(s); connections closed (one warning per {}s)",
            MALFORMED_WARN_INTERVAL.as_secs()
        );
    } else {
        tracing::debug!(%peer, reason, "malformed request; closing connection");
    }
}

fn process_clock() -> &'static Instant {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now)
}

/// Why a connection ended early; [`ConnectionEnd::Malformed`] is already
/// counted and logged (rate-limited) and needs no further line.
#[derive(Debug)]
pub enum ConnectionEnd {
    Malformed(String),
    Other(anyhow::Error),
}

impl std::fmt::Display for ConnectionEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectionEnd::Malformed(reason) => write!(f, "malformed request: {reason}"),
            ConnectionEnd::Other(e) => write!(f, "{e:#}"),
        }
    }
}

impl From<anyhow::Error> for ConnectionEnd {
    fn from(e: anyhow::Error) -> Self {
        ConnectionEnd::Other(e)
    }
}

impl From<std::io::Error> for ConnectionEnd {
    fn from(e: std::io::Error) -> Self {
        ConnectionEnd::Other(e.into())
    }
}

/// The per-connection limits, copied out of the config once.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub request_bytes_max: usize,
    pub inflight_requests_max: usize,
    /// `connection.max.inflight.bytes`.
    pub inflight_bytes_max: usize,
    pub idle_timeout: Duration,
}

impl Limits {
    pub fn from_config(config: &BrokerConfig) -> Limits {
        Limits {
            request_bytes_max: config.socket_request_max_bytes,
            inflight_requests_max: config.connection_max_inflight_requests,
            inflight_bytes_max: config.resources.connection_max_inflight_bytes,
            idle_timeout: Duration::from_millis(config.connections_max_idle_ms.max(1)),
        }
    }
}

/// Answers not yet written, oldest first: each resolves to its encoded frame
/// (None for a request that gets no answer).
type Waiting = FuturesOrdered<BoxFuture<'static, anyhow::Result<Option<Bytes>>>>;

/// What the reader hands to the responder.
enum Inbound {
    Request(Box<Request>, Held),
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
    budget: RequestBudget,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), ConnectionEnd> {
    let (read_half, write_half) = socket.into_split();
    let (tx, mut rx) = mpsc::channel::<Inbound>(limits.inflight_requests_max);
    // Dropped by the reader when it stops: the peer is gone or misbehaved.
    let (reader_alive, mut reader_gone) = oneshot::channel::<()>();
    let mut reader = tokio::spawn(read_frames(
        read_half,
        tx,
        limits,
        budget,
        peer,
        reader_alive,
    ));
    let mut writer = BufWriter::with_capacity(64 * 1024, write_half);
    // Answers still waiting (produces' fsyncs), oldest first.
    let mut waiting = Waiting::new();

    let result: anyhow::Result<bool> = async {
        loop {
            let inbound = tokio::select! {
                biased;
                _ = shutdown.changed() => return Ok(false),
                _ = &mut reader_gone => return Ok(true),
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
                return Ok(true);
            };
            let (request, held) = match inbound {
                Inbound::Ready(frame) => {
                    queue_or_write(&mut waiting, &mut writer, Some(frame)).await?;
                    if rx.is_empty() {
                        writer.flush().await?;
                    }
                    continue;
                }
                Inbound::Request(request, held) => (request, held),
            };
            if request.api_key != ApiKey::Produce {
                // Everything but a produce runs after the earlier requests are done.
                tokio::select! {
                    biased;
                    _ = &mut reader_gone => return Ok(true),
                    written = write_waiting(&mut waiting, &mut writer) => written?,
                }
            }
            let span = request_span(&request);
            let encode = encoder(&request);
            let outcome = tokio::select! {
                biased;
                outcome = apis.handle(*request, peer).instrument(span) => outcome,
                // The client is gone: abandon the request (a long poll, a
                // join waiting for its group). Handlers keep their state
                // consistent on cancellation: appends run on blocking threads.
                _ = &mut reader_gone => return Ok(true),
            };
            // Handled: its bytes are free for the next request.
            drop(held);
            match outcome {
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
    // Produces waiting for their fsync are appended already: let their
    // group commits finish (bounded by the in-flight limit), unanswered.
    if !waiting.is_empty() {
        tokio::spawn(async move { while waiting.next().await.is_some() {} });
    }
    let peer_gone = matches!(result, Ok(true));
    if peer_gone {
        // What the client sent before it left: acks=0 produces are handled
        // (nobody can wait for their answer, and Kafka handles what it has
        // read); everything else is dropped with its budget.
        rx.close();
        while let Some(inbound) = rx.recv().await {
            if let Inbound::Request(request, held) = inbound {
                if is_fire_and_forget(&request) {
                    let _ = apis.handle(*request, peer).await;
                }
                drop(held);
            }
        }
    }
    drop(rx);
    reader.abort();
    // Surface the reader's reason (bad frame, idle timeout) if it had one.
    if let Ok(Ok(Err(e))) = tokio::time::timeout(Duration::from_millis(10), &mut reader).await {
        return Err(e);
    }
    result.map(|_| ()).map_err(ConnectionEnd::Other)
}

/// An `acks=0` produce: handled even after its client left.
fn is_fire_and_forget(request: &Request) -> bool {
    matches!(&request.body, RequestKind::Produce(p) if p.acks == 0)
}

fn request_span(request: &Request) -> tracing::Span {
    tracing::debug_span!(
        "request",
        api = ?request.api_key,
        version = request.version,
        correlation_id = request.header.correlation_id,
        client_id = request.header.client_id.as_deref().unwrap_or(""),
    )
}

/// Turns a handler's outcome into the frame to write (None: no answer).
fn encoder(
    request: &Request,
) -> impl FnOnce(Outcome) -> anyhow::Result<Option<Bytes>> + Send + 'static {
    let correlation_id = request.header.correlation_id;
    let api_key = request.api_key;
    let version = request.version;
    move |outcome: Outcome| match outcome {
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

/// Reads and decodes frames into `tx` until EOF, a bad frame, or idleness;
/// `_alive` is dropped when it returns, which tells the responder.
async fn read_frames(
    mut socket: OwnedReadHalf,
    tx: mpsc::Sender<Inbound>,
    limits: Limits,
    budget: RequestBudget,
    peer: SocketAddr,
    _alive: oneshot::Sender<()>,
) -> Result<(), ConnectionEnd> {
    let connection_bytes = Arc::new(Semaphore::new(
        limits.inflight_bytes_max.min(Semaphore::MAX_PERMITS),
    ));
    let connection_total = limits.inflight_bytes_max.min(Semaphore::MAX_PERMITS);
    loop {
        let mut len_buf = [0u8; 4];
        match tokio::time::timeout(limits.idle_timeout, socket.read_exact(&mut len_buf)).await {
            Err(_) => {
                return Err(anyhow::anyhow!("idle for longer than connections.max.idle.ms").into())
            }
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Ok(Err(e)) => return Err(e.into()),
            Ok(Ok(_)) => {}
        }
        let len = i32::from_be_bytes(len_buf);
        if len < 8 {
            let reason = format!("frame length {len}");
            note_malformed(peer, &reason);
            return Err(ConnectionEnd::Malformed(reason));
        }
        let len = len as usize;
        if len > limits.request_bytes_max {
            let reason = format!(
                "frame of {len} bytes exceeds socket.request.max.bytes={}",
                limits.request_bytes_max
            );
            note_malformed(peer, &reason);
            return Err(ConnectionEnd::Malformed(reason));
        }
        // Budget before memory: nothing is allocated (or read) until both
        // budgets have room. Sizes fit u32: socket.request.max.bytes is an int.
        let held = Held {
            _connection: acquire(&connection_bytes, len.min(connection_total)).await?,
            _broker: acquire(&budget.bytes, len.min(budget.total)).await?,
        };
        let mut frame = BytesMut::zeroed(len);
        match tokio::time::timeout(limits.idle_timeout, socket.read_exact(&mut frame)).await {
            Err(_) => {
                return Err(anyhow::anyhow!(
                    "frame body not received within connections.max.idle.ms"
                )
                .into())
            }
            Ok(result) => {
                result?;
            }
        }
        let inbound = match protocol::decode_request(frame.freeze()) {
            Ok(request) => Inbound::Request(Box::new(request), held),
            Err(FrameError::UnsupportedApiVersions(response)) => Inbound::Ready(response),
            Err(FrameError::Malformed(reason)) => {
                note_malformed(peer, &reason);
                return Err(ConnectionEnd::Malformed(reason));
            }
        };
        if tx.send(inbound).await.is_err() {
            return Ok(());
        }
    }
}

async fn acquire(semaphore: &Arc<Semaphore>, bytes: usize) -> anyhow::Result<OwnedSemaphorePermit> {
    let permits = u32::try_from(bytes).map_err(|_| anyhow::anyhow!("request of {bytes} bytes"))?;
    semaphore
        .clone()
        .acquire_many_owned(permits)
        .await
        .map_err(|_| anyhow::anyhow!("request budget closed"))
}
