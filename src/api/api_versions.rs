//! ApiVersions: the table of APIs and versions this broker implements.
//!
//! Clients choose their code paths from this answer (librdkafka picks its
//! message format and codecs from it), so it lists only what is implemented.

use kafka_protocol::messages::{ApiVersionsRequest, ApiVersionsResponse};

use crate::protocol::api_version_entries;

pub fn handle(_version: i16, _request: ApiVersionsRequest) -> ApiVersionsResponse {
    let mut response = ApiVersionsResponse::default();
    response.api_keys = api_version_entries();
    response
}
