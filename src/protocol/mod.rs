//! The Kafka wire envelope: which APIs and versions Fjord speaks, how a frame
//! becomes a decoded request, and how a response becomes bytes.
//!
//! Parsing is split into *peek* then *decode*: the api key and version (the
//! first four bytes of a frame) are checked before anything is decoded, because
//! an unknown version must be answered (ApiVersions, KIP-511) or refused
//! without spending effort on a body we cannot read.

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsResponse, RequestHeader, RequestKind, ResponseHeader, ResponseKind,
};
use kafka_protocol::protocol::{Decodable, Encodable};

/// The APIs Fjord implements, with the version range it accepts.
///
/// Ranges are what `kafka-protocol` can decode, except Produce, which is
/// advertised from version 0 (as Kafka 4 does) although versions 0-2 are
/// refused: older librdkafka disables compression when Produce's minimum is
/// above 0.
pub fn supported_apis() -> Vec<(ApiKey, i16, i16)> {
    use ApiKey::*;
    let implemented = [
        Produce,
        Fetch,
        ListOffsets,
        Metadata,
        FindCoordinator,
        ApiVersions,
        CreateTopics,
        DeleteTopics,
        DeleteRecords,
        InitProducerId,
        OffsetForLeaderEpoch,
        DescribeConfigs,
        AlterConfigs,
        CreatePartitions,
        IncrementalAlterConfigs,
        DescribeCluster,
        JoinGroup,
        SyncGroup,
        Heartbeat,
        LeaveGroup,
        DescribeGroups,
        ListGroups,
        DeleteGroups,
        OffsetCommit,
        OffsetFetch,
        OffsetDelete,
        DescribeTopicPartitions,
        AddRaftVoter,
        ElectLeaders,
        DescribeLogDirs,
        ListPartitionReassignments,
    ];
    implemented
        .into_iter()
        .filter_map(|key| {
            let (min, max) = message_range(key)?;
            let min = if key == Produce { 0 } else { min };
            Some((key, min, max))
        })
        .collect()
}

/// The version range of the request and response messages `kafka-protocol`
/// can actually decode and encode for `key`. `ApiKey::valid_versions` is not
/// that: in 0.18 it lists OffsetCommit and OffsetFetch v10 and InitProducerId
/// v6, which the message types themselves refuse, so a client offered v10
/// would send requests we cannot read.
fn message_range(key: ApiKey) -> Option<(i16, i16)> {
    use kafka_protocol::messages::*;
    use kafka_protocol::protocol::Message;
    fn both<Req: Message, Resp: Message>() -> Option<(i16, i16)> {
        let (a, b) = (Req::VERSIONS, Resp::VERSIONS);
        Some((a.min.max(b.min), a.max.min(b.max)))
    }
    match key {
        ApiKey::Produce => both::<ProduceRequest, ProduceResponse>(),
        ApiKey::Fetch => both::<FetchRequest, FetchResponse>(),
        ApiKey::ListOffsets => both::<ListOffsetsRequest, ListOffsetsResponse>(),
        ApiKey::Metadata => both::<MetadataRequest, MetadataResponse>(),
        ApiKey::FindCoordinator => both::<FindCoordinatorRequest, FindCoordinatorResponse>(),
        ApiKey::ApiVersions => both::<ApiVersionsRequest, ApiVersionsResponse>(),
        ApiKey::CreateTopics => both::<CreateTopicsRequest, CreateTopicsResponse>(),
        ApiKey::DeleteTopics => both::<DeleteTopicsRequest, DeleteTopicsResponse>(),
        ApiKey::DeleteRecords => both::<DeleteRecordsRequest, DeleteRecordsResponse>(),
        ApiKey::InitProducerId => both::<InitProducerIdRequest, InitProducerIdResponse>(),
        ApiKey::OffsetForLeaderEpoch => {
            both::<OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse>()
        }
        ApiKey::DescribeConfigs => both::<DescribeConfigsRequest, DescribeConfigsResponse>(),
        ApiKey::AlterConfigs => both::<AlterConfigsRequest, AlterConfigsResponse>(),
        ApiKey::CreatePartitions => both::<CreatePartitionsRequest, CreatePartitionsResponse>(),
        ApiKey::IncrementalAlterConfigs => {
            both::<IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse>()
        }
        ApiKey::DescribeCluster => both::<DescribeClusterRequest, DescribeClusterResponse>(),
        ApiKey::JoinGroup => both::<JoinGroupRequest, JoinGroupResponse>(),
        ApiKey::SyncGroup => both::<SyncGroupRequest, SyncGroupResponse>(),
        ApiKey::Heartbeat => both::<HeartbeatRequest, HeartbeatResponse>(),
        ApiKey::LeaveGroup => both::<LeaveGroupRequest, LeaveGroupResponse>(),
        ApiKey::DescribeGroups => both::<DescribeGroupsRequest, DescribeGroupsResponse>(),
        ApiKey::ListGroups => both::<ListGroupsRequest, ListGroupsResponse>(),
        ApiKey::DeleteGroups => both::<DeleteGroupsRequest, DeleteGroupsResponse>(),
        ApiKey::OffsetCommit => both::<OffsetCommitRequest, OffsetCommitResponse>(),
        ApiKey::OffsetFetch => both::<OffsetFetchRequest, OffsetFetchResponse>(),
        ApiKey::OffsetDelete => both::<OffsetDeleteRequest, OffsetDeleteResponse>(),
        ApiKey::AddRaftVoter => both::<AddRaftVoterRequest, AddRaftVoterResponse>(),
        ApiKey::ElectLeaders => both::<ElectLeadersRequest, ElectLeadersResponse>(),
        ApiKey::DescribeLogDirs => both::<DescribeLogDirsRequest, DescribeLogDirsResponse>(),
        ApiKey::ListPartitionReassignments => {
            both::<ListPartitionReassignmentsRequest, ListPartitionReassignmentsResponse>()
        }
        ApiKey::DescribeTopicPartitions => {
            both::<DescribeTopicPartitionsRequest, DescribeTopicPartitionsResponse>()
        }
        _ => None,
    }
}

/// The version range Fjord decodes for `key`, if it implements the API.
pub fn decodable_range(key: ApiKey) -> Option<(i16, i16)> {
    if supported_apis().iter().any(|(k, _, _)| *k == key) {
        message_range(key)
    } else {
        None
    }
}

/// The advertised table as ApiVersions entries.
pub fn api_version_entries() -> Vec<ApiVersion> {
    supported_apis()
        .into_iter()
        .map(|(key, min, max)| {
            let mut v = ApiVersion::default();
            v.api_key = key as i16;
            v.min_version = min;
            v.max_version = max;
            v
        })
        .collect()
}

/// The fixed prefix of every request: enough to route or refuse it.
#[derive(Clone, Copy, Debug)]
pub struct Peek {
    pub api_key: i16,
    pub api_version: i16,
    pub correlation_id: i32,
}

impl Peek {
    /// Reads the first eight bytes of a frame; `None` if it is shorter.
    pub fn read(frame: &[u8]) -> Option<Peek> {
        let b = frame.get(..8)?;
        Some(Peek {
            api_key: i16::from_be_bytes([b[0], b[1]]),
            api_version: i16::from_be_bytes([b[2], b[3]]),
            correlation_id: i32::from_be_bytes([b[4], b[5], b[6], b[7]]),
        })
    }
}

/// A request decoded from one frame.
pub struct Request {
    pub api_key: ApiKey,
    pub version: i16,
    pub header: RequestHeader,
    pub body: RequestKind,
}

/// Why a frame could not become a [`Request`].
#[derive(Debug)]
pub enum FrameError {
    /// ApiVersions newer than we know: answer with this pre-encoded response.
    UnsupportedApiVersions(Bytes),
    /// Anything else: the connection is closed (Kafka does the same for a
    /// request it cannot parse).
    Malformed(String),
}

/// Decodes a frame (without its length prefix).
pub fn decode_request(mut frame: Bytes) -> Result<Request, FrameError> {
    let peek = Peek::read(&frame)
        .ok_or_else(|| FrameError::Malformed("frame shorter than a request header".into()))?;
    let api_key = ApiKey::try_from(peek.api_key)
        .map_err(|_| FrameError::Malformed(format!("unknown api key {}", peek.api_key)))?;
    let Some((min, max)) = decodable_range(api_key) else {
        return Err(FrameError::Malformed(format!(
            "unsupported api {api_key:?}"
        )));
    };
    if peek.api_version < min || peek.api_version > max {
        if api_key == ApiKey::ApiVersions && peek.api_version > max {
            return Err(FrameError::UnsupportedApiVersions(
                unsupported_api_versions(peek.correlation_id),
            ));
        }
        return Err(FrameError::Malformed(format!(
            "{api_key:?} version {} is not supported (supported {min}..={max})",
            peek.api_version
        )));
    }
    let header_version = api_key.request_header_version(peek.api_version);
    let header = RequestHeader::decode(&mut frame, header_version)
        .map_err(|e| FrameError::Malformed(format!("bad request header: {e}")))?;
    let body = RequestKind::decode(api_key, &mut frame, peek.api_version).map_err(|e| {
        FrameError::Malformed(format!("bad {api_key:?} v{} body: {e}", peek.api_version))
    })?;
    Ok(Request {
        api_key,
        version: peek.api_version,
        header,
        body,
    })
}

/// The KIP-511 answer to an ApiVersions request from the future: v0 layout,
/// error 35, and our table so the client can retry with a version we know.
fn unsupported_api_versions(correlation_id: i32) -> Bytes {
    let mut body = ApiVersionsResponse::default();
    body.error_code = kafka_protocol::error::ResponseError::UnsupportedVersion.code();
    body.api_keys = api_version_entries();
    // Encoding a v0 response from our own well-formed values cannot fail; if
    // it ever did, an empty frame makes the client close and retry.
    encode_response(
        correlation_id,
        ApiKey::ApiVersions,
        0,
        &ResponseKind::ApiVersions(body),
    )
    .unwrap_or_default()
}

/// Encodes a response frame, length prefix included.
pub fn encode_response(
    correlation_id: i32,
    api_key: ApiKey,
    version: i16,
    body: &ResponseKind,
) -> anyhow::Result<Bytes> {
    let mut buf = BytesMut::with_capacity(256);
    buf.put_i32(0);
    let mut header = ResponseHeader::default();
    header.correlation_id = correlation_id;
    // ApiVersions responses always use header v0 (clients parse them before
    // they know which header versions the broker speaks).
    let header_version = if api_key == ApiKey::ApiVersions {
        0
    } else {
        api_key.response_header_version(version)
    };
    header.encode(&mut buf, header_version)?;
    body.encode(&mut buf, version)?;
    let len = i32::try_from(buf.len() - 4)?;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    Ok(buf.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::ApiVersionsRequest;

    fn frame(api_key: ApiKey, version: i16, header_version: i16, body: &RequestKind) -> Bytes {
        let mut buf = BytesMut::new();
        let mut header = RequestHeader::default();
        header.request_api_key = api_key as i16;
        header.request_api_version = version;
        header.correlation_id = 7;
        header.encode(&mut buf, header_version).expect("header");
        body.encode(&mut buf, version).expect("body");
        buf.freeze()
    }

    #[test]
    fn api_versions_round_trips_through_decode() {
        let body = RequestKind::ApiVersions(ApiVersionsRequest::default());
        let req = decode_request(frame(ApiKey::ApiVersions, 0, 1, &body))
            .map_err(|e| format!("{e:?}"))
            .expect("decodes");
        assert_eq!(req.api_key, ApiKey::ApiVersions);
        assert_eq!(req.header.correlation_id, 7);
    }

    #[test]
    fn future_api_versions_gets_error_35_in_v0_layout() {
        let mut raw = BytesMut::new();
        raw.put_i16(ApiKey::ApiVersions as i16);
        raw.put_i16(99);
        raw.put_i32(42);
        raw.put_i16(-1);
        match decode_request(raw.freeze()) {
            Err(FrameError::UnsupportedApiVersions(bytes)) => {
                // length, correlation id, then the v0 body: error code first.
                assert_eq!(
                    i32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]),
                    42
                );
                assert_eq!(i16::from_be_bytes([bytes[8], bytes[9]]), 35);
                let count = i32::from_be_bytes([bytes[10], bytes[11], bytes[12], bytes[13]]);
                assert_eq!(count as usize, supported_apis().len());
            }
            Err(other) => panic!("expected error 35, got {other:?}"),
            Ok(_) => panic!("expected error 35, got a decoded request"),
        }
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        for junk in [
            &b""[..],
            b"\x00",
            b"\xff\xff\x00\x00\x00\x00\x00\x01",
            b"\x00\x03\x00\x09\x00\x00\x00\x01\xff\xff\xff\xff\xff",
        ] {
            assert!(matches!(
                decode_request(Bytes::copy_from_slice(junk)),
                Err(FrameError::Malformed(_))
            ));
        }
    }

    #[test]
    fn produce_is_advertised_from_zero_but_decoded_from_three() {
        let produce = supported_apis()
            .into_iter()
            .find(|(k, _, _)| *k == ApiKey::Produce)
            .expect("produce");
        assert_eq!(produce.1, 0);
        assert_eq!(decodable_range(ApiKey::Produce).map(|r| r.0), Some(3));
    }

    #[test]
    fn huge_array_counts_are_malformed_not_an_abort() {
        // Metadata v1: header (key, version, correlation id, client id) then a
        // topics array claiming i32::MAX entries with nothing behind it.
        let mut raw = BytesMut::new();
        raw.put_i16(ApiKey::Metadata as i16);
        raw.put_i16(1);
        raw.put_i32(1);
        raw.put_i16(-1);
        raw.put_i32(i32::MAX);
        assert!(matches!(
            decode_request(raw.freeze()),
            Err(FrameError::Malformed(_))
        ));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_frames_never_panic(api_key in 0i16..80, version in -1i16..20, body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            let mut raw = BytesMut::new();
            raw.put_i16(api_key);
            raw.put_i16(version);
            raw.put_i32(1);
            raw.extend_from_slice(&body);
            let _ = decode_request(raw.freeze());
        }
    }

    #[test]
    fn every_advertised_version_decodes_and_its_response_encodes() {
        use kafka_protocol::messages::ResponseKind;
        for (key, min, max) in supported_apis() {
            let (decode_min, _) = decodable_range(key).expect("implemented");
            assert!(min <= max, "{key:?}");
            for version in min.max(decode_min)..=max {
                let header_version = key.request_header_version(version);
                let body = RequestKind::decode(key, &mut Bytes::new(), version);
                // An empty body may legitimately fail to decode; what must
                // hold is that the version itself is accepted by the message.
                if let Err(e) = &body {
                    let text = e.to_string();
                    assert!(
                        !text.contains("version not supported"),
                        "{key:?} v{version} is advertised but not decodable: {text}"
                    );
                }
                let _ = header_version;
            }
            // The newest response version encodes from a default body.
            let response = match key {
                ApiKey::OffsetFetch => Some(ResponseKind::OffsetFetch(Default::default())),
                ApiKey::OffsetCommit => Some(ResponseKind::OffsetCommit(Default::default())),
                ApiKey::InitProducerId => Some(ResponseKind::InitProducerId(Default::default())),
                _ => None,
            };
            if let Some(response) = response {
                encode_response(1, key, max, &response).expect("newest response version encodes");
            }
        }
    }
}
