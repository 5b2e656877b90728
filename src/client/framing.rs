//! The Kafka wire framing as a client sees it: a 4-byte big-endian length,
//! then a request header and body going out, a response header and body
//! coming back.
//!
//! Header versions depend on the API *and* its version (flexible versions use
//! header v2/v1 with tagged fields), so encoding and decoding are generic over
//! kafka-protocol's `Request` trait, which knows both. Reading is split from
//! decoding so the length check happens before a single body byte is buffered:
//! a peer announcing a 2 GiB frame costs us nothing.

use anyhow::{bail, ensure, Context, Result};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::client::error::KafkaError;

/// Size of the length prefix in front of every frame.
pub const FRAME_LENGTH_BYTES: usize = 4;

/// A human name for an API key, for errors and traces.
pub fn api_name(key: i16) -> String {
    match ApiKey::try_from(key) {
        Ok(k) => format!("{k:?}"),
        Err(_) => format!("api key {key}"),
    }
}

/// Encodes one complete request frame (length prefix included).
pub fn encode_request<R: Request>(
    request: &R,
    version: i16,
    correlation_id: i32,
    client_id: &StrBytes,
) -> Result<Bytes> {
    ensure!(
        version >= R::VERSIONS.min && version <= R::VERSIONS.max,
        "{} v{version} is outside the versions this client can encode ({})",
        api_name(R::KEY),
        R::VERSIONS
    );
    let header = RequestHeader::default()
        .with_request_api_key(R::KEY)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(client_id.clone()));
    let header_version = R::header_version(version);
    let size = header.compute_size(header_version)? + request.compute_size(version)?;
    let size = i32::try_from(size).context("request too large to frame")?;
    let mut buf = BytesMut::with_capacity(FRAME_LENGTH_BYTES + size as usize);
    buf.put_i32(size);
    header
        .encode(&mut buf, header_version)
        .context("encoding request header")?;
    request
        .encode(&mut buf, version)
        .with_context(|| format!("encoding {} v{version} request", api_name(R::KEY)))?;
    debug_assert_eq!(buf.len(), FRAME_LENGTH_BYTES + size as usize);
    Ok(buf.freeze())
}

/// Reads one frame body (without its length prefix). Fails before allocating
/// if the announced length is negative or above `frame_bytes_max`.
pub async fn read_frame<Rd: AsyncRead + Unpin>(
    reader: &mut Rd,
    frame_bytes_max: usize,
) -> Result<Bytes> {
    let len = reader.read_i32().await.context("reading response length")?;
    let len = usize::try_from(len).map_err(|_| anyhow::anyhow!("negative frame length {len}"))?;
    ensure!(
        len <= frame_bytes_max,
        "response of {len} bytes exceeds the limit of {frame_bytes_max} bytes"
    );
    let mut buf = BytesMut::zeroed(len);
    reader
        .read_exact(&mut buf)
        .await
        .context("reading response body")?;
    Ok(buf.freeze())
}

/// Decodes a response frame body (as returned by [`read_frame`]) to the
/// request `R` sent at `version` with `correlation_id`.
///
/// ApiVersions is special (KIP-511): a broker that does not know the version
/// we asked for answers in the v0 layout with `UNSUPPORTED_VERSION`. Its error
/// code is the first body field in every version, so we peek at it and decode
/// such an answer as v0, which carries the broker's supported range.
pub fn decode_response<R: Request>(
    mut frame: Bytes,
    version: i16,
    correlation_id: i32,
) -> Result<R::Response> {
    let header_version = R::Response::header_version(version);
    let header =
        ResponseHeader::decode(&mut frame, header_version).context("decoding response header")?;
    if header.correlation_id != correlation_id {
        bail!(
            "response correlation id {} does not match request {correlation_id}",
            header.correlation_id
        );
    }
    let mut body_version = version;
    if R::KEY == ApiKey::ApiVersions as i16
        && frame.len() >= 2
        && (&frame[..2]).get_i16() == KafkaError::UNSUPPORTED_VERSION
    {
        body_version = 0;
    }
    let response = R::Response::decode(&mut frame, body_version)
        .with_context(|| format!("decoding {} v{body_version} response", api_name(R::KEY)))?;
    ensure!(
        !frame.has_remaining(),
        "{} v{body_version} response has {} unexpected trailing bytes",
        api_name(R::KEY),
        frame.remaining()
    );
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::api_versions_response::ApiVersion;
    use kafka_protocol::messages::{
        ApiVersionsRequest, ApiVersionsResponse, MetadataRequest, MetadataResponse,
    };

    fn client_id() -> StrBytes {
        StrBytes::from_static_str("fjord-test")
    }

    #[test]
    fn request_frame_has_length_prefix_and_v1_header() {
        // Metadata v1 uses request header v1: key, version, correlation id,
        // nullable client id; no tagged fields.
        let frame = encode_request(&MetadataRequest::default(), 1, 7, &client_id()).unwrap();
        let mut b = frame.clone();
        let len = b.get_i32() as usize;
        assert_eq!(len, frame.len() - 4);
        assert_eq!(b.get_i16(), 3); // Metadata
        assert_eq!(b.get_i16(), 1);
        assert_eq!(b.get_i32(), 7);
        assert_eq!(b.get_i16(), 10); // "fjord-test".len()
        assert_eq!(&b[..10], b"fjord-test");
        b.advance(10);
        // Metadata v1 body: topics array, empty (not null: null means all).
        assert_eq!(b.get_i32(), 0);
        assert!(!b.has_remaining());
    }

    #[test]
    fn flexible_request_frame_ends_header_with_tagged_fields() {
        // Metadata v12 uses request header v2: client id stays a non-compact
        // string, followed by an empty tagged-field section.
        let frame = encode_request(&MetadataRequest::default(), 12, 1, &client_id()).unwrap();
        assert_eq!(&frame[4..8], &[0, 3, 0, 12]);
        assert_eq!(frame[8..12], 1i32.to_be_bytes());
        assert_eq!(&frame[12..14], &[0, 10]);
        assert_eq!(frame[24], 0, "no tagged fields in the header");
    }

    #[test]
    fn request_version_outside_library_range_is_an_error() {
        assert!(encode_request(&MetadataRequest::default(), 99, 1, &client_id()).is_err());
    }

    fn response_body<Resp: Encodable>(
        correlation_id: i32,
        header_version: i16,
        r: &Resp,
        v: i16,
    ) -> Bytes {
        let mut buf = BytesMut::new();
        ResponseHeader::default()
            .with_correlation_id(correlation_id)
            .encode(&mut buf, header_version)
            .unwrap();
        r.encode(&mut buf, v).unwrap();
        buf.freeze()
    }

    #[test]
    fn response_round_trips_with_flexible_header() {
        let resp = MetadataResponse::default().with_controller_id(3.into());
        let body = response_body(42, 1, &resp, 12);
        let decoded = decode_response::<MetadataRequest>(body, 12, 42).unwrap();
        assert_eq!(decoded.controller_id.0, 3);
    }

    #[test]
    fn response_with_wrong_correlation_id_is_rejected() {
        let body = response_body(5, 1, &MetadataResponse::default(), 12);
        let err = decode_response::<MetadataRequest>(body, 12, 6).unwrap_err();
        assert!(err.to_string().contains("correlation id"), "{err}");
    }

    #[test]
    fn truncated_or_padded_response_is_an_error_not_a_panic() {
        let body = response_body(1, 1, &MetadataResponse::default(), 12);
        for cut in 0..body.len() {
            assert!(decode_response::<MetadataRequest>(body.slice(..cut), 12, 1).is_err());
        }
        let mut padded = BytesMut::from(&body[..]);
        padded.put_u8(0);
        assert!(decode_response::<MetadataRequest>(padded.freeze(), 12, 1).is_err());
    }

    #[test]
    fn api_versions_unsupported_version_answer_is_decoded_as_v0() {
        let resp = ApiVersionsResponse::default()
            .with_error_code(KafkaError::UNSUPPORTED_VERSION)
            .with_api_keys(vec![ApiVersion::default()
                .with_api_key(18)
                .with_min_version(0)
                .with_max_version(2)]);
        // ApiVersions responses always use response header v0.
        let body = response_body(9, 0, &resp, 0);
        let decoded = decode_response::<ApiVersionsRequest>(body, 4, 9).unwrap();
        assert_eq!(decoded.error_code, KafkaError::UNSUPPORTED_VERSION);
        assert_eq!(decoded.api_keys[0].max_version, 2);
    }

    #[tokio::test]
    async fn read_frame_enforces_size_limit_before_reading_body() {
        let mut input: &[u8] = &[0x7f, 0xff, 0xff, 0xff];
        let err = read_frame(&mut input, 1024).await.unwrap_err();
        assert!(err.to_string().contains("exceeds"), "{err}");
        let mut negative: &[u8] = &[0xff, 0xff, 0xff, 0xfe];
        assert!(read_frame(&mut negative, 1024).await.is_err());
        let mut short: &[u8] = &[0, 0, 0, 5, 1, 2];
        assert!(read_frame(&mut short, 1024).await.is_err());
        let mut ok: &[u8] = &[0, 0, 0, 2, 1, 2, 3];
        assert_eq!(&read_frame(&mut ok, 1024).await.unwrap()[..], &[1, 2]);
    }
}
