//! ApiVersions over raw TCP: the first request every client sends, checked
//! byte for byte because a client cannot talk to a broker that gets it wrong.

mod common;

use std::collections::HashSet;

use anyhow::{ensure, Result};

use common::raw::{
    self, ApiVersionsV0, API_KEY_API_VERSIONS, API_KEY_FETCH, API_KEY_METADATA, API_KEY_PRODUCE,
    ERROR_UNSUPPORTED_VERSION,
};
use common::Broker;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_versions_v0_request_is_answered_in_the_v0_layout() -> Result<()> {
    let broker = Broker::start()?;
    let mut stream = raw::connect(broker.bootstrap()).await?;
    let correlation_id = 0x1234_5678;
    raw::write_frame(
        &mut stream,
        &raw::request_header_v1(API_KEY_API_VERSIONS, 0, correlation_id),
    )
    .await?;
    let response = ApiVersionsV0::parse(&raw::read_frame(&mut stream).await?)?;

    ensure!(
        response.correlation_id == correlation_id,
        "correlation id {:#x}",
        response.correlation_id
    );
    ensure!(
        response.error_code == 0,
        "error code {}",
        response.error_code
    );
    let mut seen = HashSet::new();
    for range in &response.api_keys {
        ensure!(
            seen.insert(range.api_key),
            "api key {} listed twice",
            range.api_key
        );
        ensure!(
            0 <= range.min_version && range.min_version <= range.max_version,
            "bad range {range:?}"
        );
    }
    for api_key in [
        API_KEY_PRODUCE,
        API_KEY_FETCH,
        API_KEY_METADATA,
        API_KEY_API_VERSIONS,
    ] {
        ensure!(
            response.range(api_key).is_some(),
            "api key {api_key} not advertised"
        );
    }
    let api_versions = response.range(API_KEY_API_VERSIONS).expect("checked above");
    ensure!(
        api_versions.min_version == 0 && api_versions.max_version >= 3,
        "ApiVersions should be supported from v0 to at least v3 (KIP-511): {api_versions:?}"
    );
    eprintln!("{} api keys advertised", response.api_keys.len());

    // The connection stays usable: a second request on it is answered too.
    raw::write_frame(
        &mut stream,
        &raw::request_header_v1(API_KEY_API_VERSIONS, 0, correlation_id + 1),
    )
    .await?;
    let again = ApiVersionsV0::parse(&raw::read_frame(&mut stream).await?)?;
    ensure!(
        again.correlation_id == correlation_id + 1,
        "second correlation id {:#x}",
        again.correlation_id
    );
    ensure!(
        again.error_code == 0,
        "second error code {}",
        again.error_code
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_versions_with_a_too_new_version_gets_unsupported_version_and_the_v0_list() -> Result<()>
{
    const TOO_NEW_VERSION: i16 = 100;
    let broker = Broker::start()?;
    let mut stream = raw::connect(broker.bootstrap()).await?;
    let correlation_id = 77;
    // What a future client would send: the flexible header and a v3-style
    // body (client software name and version, empty tagged fields).
    let mut request = raw::request_header_v2(API_KEY_API_VERSIONS, TOO_NEW_VERSION, correlation_id);
    for text in ["fjord-it", "0.1.0"] {
        request.push(text.len() as u8 + 1);
        request.extend_from_slice(text.as_bytes());
    }
    request.push(0);
    raw::write_frame(&mut stream, &request).await?;
    let response = ApiVersionsV0::parse(&raw::read_frame(&mut stream).await?)?;

    ensure!(
        response.correlation_id == correlation_id,
        "correlation id {}",
        response.correlation_id
    );
    ensure!(
        response.error_code == ERROR_UNSUPPORTED_VERSION,
        "error code {}, expected UNSUPPORTED_VERSION ({ERROR_UNSUPPORTED_VERSION})",
        response.error_code
    );
    let api_versions = response.range(API_KEY_API_VERSIONS).ok_or_else(|| {
        anyhow::anyhow!("the error response must list ApiVersions' supported range: {response:?}")
    })?;
    ensure!(
        api_versions.min_version <= 3
            && 3 <= api_versions.max_version
            && api_versions.max_version < TOO_NEW_VERSION,
        "ApiVersions range {api_versions:?} should let the client retry with v3"
    );

    // The client's retry with a supported version on the same connection works.
    raw::write_frame(
        &mut stream,
        &raw::request_header_v1(API_KEY_API_VERSIONS, 0, correlation_id + 1),
    )
    .await?;
    let retry = ApiVersionsV0::parse(&raw::read_frame(&mut stream).await?)?;
    ensure!(
        retry.error_code == 0,
        "retry error code {}",
        retry.error_code
    );
    ensure!(
        retry.correlation_id == correlation_id + 1,
        "retry correlation id {}",
        retry.correlation_id
    );
    Ok(())
}
