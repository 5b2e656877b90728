//! Raw Kafka framing over TCP, for tests that must send what no client
//! library would: oversized or garbage frames, unsupported API versions.
//!
//! Design decision: every read is bounded by a timeout, because the failure
//! these tests look for is often a broker that waits forever.

use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context as _, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Bound for one raw response or for the broker to close a connection.
pub const RAW_RESPONSE_WAIT_MAX: Duration = Duration::from_secs(30);
/// Largest response frame the raw tests accept (an ApiVersions response is a
/// few hundred bytes).
const RAW_RESPONSE_BYTES_MAX: usize = 1 << 20;

/// Kafka API keys used by the raw tests.
pub const API_KEY_PRODUCE: i16 = 0;
pub const API_KEY_FETCH: i16 = 1;
pub const API_KEY_METADATA: i16 = 3;
pub const API_KEY_API_VERSIONS: i16 = 18;
/// Kafka error code `UNSUPPORTED_VERSION`.
pub const ERROR_UNSUPPORTED_VERSION: i16 = 35;

pub async fn connect(bootstrap: &str) -> Result<TcpStream> {
    let stream = tokio::time::timeout(RAW_RESPONSE_WAIT_MAX, TcpStream::connect(bootstrap))
        .await
        .map_err(|_| anyhow!("connecting to {bootstrap} timed out"))?
        .with_context(|| format!("connecting to {bootstrap}"))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Writes `body` preceded by its 4-byte big-endian length.
pub async fn write_frame(stream: &mut TcpStream, body: &[u8]) -> Result<()> {
    let len = i32::try_from(body.len())?;
    stream.write_all(&len.to_be_bytes()).await?;
    stream.write_all(body).await?;
    stream.flush().await?;
    Ok(())
}

/// Reads one length-prefixed frame and returns its body.
pub async fn read_frame(stream: &mut TcpStream) -> Result<Vec<u8>> {
    tokio::time::timeout(RAW_RESPONSE_WAIT_MAX, async {
        let mut len = [0u8; 4];
        stream
            .read_exact(&mut len)
            .await
            .context("reading the response length")?;
        let len = i32::from_be_bytes(len);
        ensure!(
            (0..=RAW_RESPONSE_BYTES_MAX as i32).contains(&len),
            "response length {len} out of range"
        );
        let mut body = vec![0u8; len as usize];
        stream
            .read_exact(&mut body)
            .await
            .context("reading the response body")?;
        Ok(body)
    })
    .await
    .map_err(|_| anyhow!("no response within {RAW_RESPONSE_WAIT_MAX:?}"))?
}

/// Waits until the broker closes the connection (EOF or reset). Fails if the
/// broker sends anything or keeps the connection open past the bound.
pub async fn expect_closed(stream: &mut TcpStream) -> Result<()> {
    let mut buf = [0u8; 256];
    match tokio::time::timeout(RAW_RESPONSE_WAIT_MAX, stream.read(&mut buf)).await {
        Err(_) => bail!("connection still open {RAW_RESPONSE_WAIT_MAX:?} after the bad frame"),
        Ok(Ok(0)) => Ok(()),
        Ok(Ok(n)) => bail!(
            "expected the connection to be closed, got {n} bytes: {:02x?}",
            &buf[..n]
        ),
        Ok(Err(e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted
            ) =>
        {
            Ok(())
        }
        Ok(Err(e)) => Err(e).context("reading from the broker"),
    }
}

/// Request header v1 (api key, version, correlation id, nullable client id).
pub fn request_header_v1(api_key: i16, api_version: i16, correlation_id: i32) -> Vec<u8> {
    let mut buf = Vec::new();
    buf.extend_from_slice(&api_key.to_be_bytes());
    buf.extend_from_slice(&api_version.to_be_bytes());
    buf.extend_from_slice(&correlation_id.to_be_bytes());
    let client_id = b"fjord-it";
    buf.extend_from_slice(&(client_id.len() as i16).to_be_bytes());
    buf.extend_from_slice(client_id);
    buf
}

/// Request header v2: v1 plus an empty tagged-field section.
pub fn request_header_v2(api_key: i16, api_version: i16, correlation_id: i32) -> Vec<u8> {
    let mut buf = request_header_v1(api_key, api_version, correlation_id);
    buf.push(0);
    buf
}

/// Big-endian reader over a response body that fails instead of panicking.
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        ensure!(
            self.buf.len() >= n,
            "response truncated: need {n} more bytes"
        );
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    pub fn i16(&mut self) -> Result<i16> {
        Ok(i16::from_be_bytes(self.take(2)?.try_into()?))
    }

    pub fn i32(&mut self) -> Result<i32> {
        Ok(i32::from_be_bytes(self.take(4)?.try_into()?))
    }

    pub fn remaining(&self) -> usize {
        self.buf.len()
    }
}

/// One entry of an ApiVersions response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApiVersionRange {
    pub api_key: i16,
    pub min_version: i16,
    pub max_version: i16,
}

/// An ApiVersions response body in the v0 layout (response header v0, then
/// error code and a non-flexible array of ranges, nothing after it).
#[derive(Debug)]
pub struct ApiVersionsV0 {
    pub correlation_id: i32,
    pub error_code: i16,
    pub api_keys: Vec<ApiVersionRange>,
}

impl ApiVersionsV0 {
    /// Parses `frame`, failing unless it is exactly the v0 layout.
    pub fn parse(frame: &[u8]) -> Result<Self> {
        let mut r = Reader::new(frame);
        let correlation_id = r.i32()?;
        let error_code = r.i16()?;
        let count = r.i32()?;
        ensure!(
            (0..=1000).contains(&count),
            "api_keys count {count} out of range"
        );
        let mut api_keys = Vec::with_capacity(count as usize);
        for _ in 0..count {
            api_keys.push(ApiVersionRange {
                api_key: r.i16()?,
                min_version: r.i16()?,
                max_version: r.i16()?,
            });
        }
        ensure!(
            r.remaining() == 0,
            "{} bytes after the v0 api_keys array: not the v0 layout",
            r.remaining()
        );
        Ok(ApiVersionsV0 {
            correlation_id,
            error_code,
            api_keys,
        })
    }

    pub fn range(&self, api_key: i16) -> Option<ApiVersionRange> {
        self.api_keys.iter().copied().find(|r| r.api_key == api_key)
    }
}

/// Deterministic pseudo-random bytes (xorshift64*): reproducible garbage
/// without a dependency.
pub fn pseudo_random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.max(1);
    (0..len)
        .map(|_| {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            (state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
        })
        .collect()
}

/// Waits until the broker has read every byte `client` sent it: the kernel's
/// receive queue of the broker's end of the connection (`/proc/net/tcp`) is
/// empty and nothing is left in `client`'s send queue. For tests whose
/// setup needs the broker to have taken a request in before the next client
/// sends one. IPv4 loopback only.
pub async fn await_read_by_broker(client: &TcpStream) -> Result<()> {
    let (ours, theirs) = (client.local_addr()?, client.peer_addr()?);
    let hex = |a: std::net::SocketAddr| -> Result<String> {
        let std::net::SocketAddr::V4(v4) = a else {
            bail!("{a} is not IPv4");
        };
        Ok(format!(
            "{:08X}:{:04X}",
            u32::from_le_bytes(v4.ip().octets()),
            v4.port()
        ))
    };
    let (client_end, broker_end) = (hex(ours)?, hex(theirs)?);
    let started = std::time::Instant::now();
    loop {
        let table = std::fs::read_to_string("/proc/net/tcp")?;
        // Columns: sl local rem st tx_queue:rx_queue ...
        let queues = |local: &str, remote: &str| {
            table.lines().skip(1).find_map(|line| {
                let f: Vec<&str> = line.split_whitespace().collect();
                (f.get(1) == Some(&local) && f.get(2) == Some(&remote)).then(|| {
                    let (tx, rx) = f.get(4)?.split_once(':')?;
                    Some((
                        u64::from_str_radix(tx, 16).ok()?,
                        u64::from_str_radix(rx, 16).ok()?,
                    ))
                })?
            })
        };
        let sent = queues(&client_end, &broker_end).context("the client's socket is not listed")?;
        let received =
            queues(&broker_end, &client_end).context("the broker's socket is not listed")?;
        if sent.0 == 0 && received.1 == 0 {
            return Ok(());
        }
        ensure!(
            started.elapsed() < RAW_RESPONSE_WAIT_MAX,
            "the broker left bytes unread: client send queue {}, broker receive queue {}",
            sent.0,
            received.1
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
