//! Garbage from clients is counted, not narrated: a flood of malformed
//! requests on fresh connections adds a few summary lines to the broker's
//! log, not lines per request, and every other client is still served.

mod common;

use anyhow::{ensure, Result};

use common::{bulk, raw, unique_topic, Broker};

/// Garbage frames sent, each on its own connection.
const GARBAGE_CONNECTIONS: usize = 2_000;
/// Log lines the flood may add: a warning per interval (the test runs for
/// seconds, so one or two), with room for unrelated lines.
const LOG_LINES_ADDED_MAX: usize = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_malformed_requests_adds_only_a_few_log_lines() -> Result<()> {
    let Some(broker) = Broker::start_process(
        "a_flood_of_malformed_requests_adds_only_a_few_log_lines",
        &[],
    )?
    else {
        return Ok(());
    };
    let topic = unique_topic("bystander");
    let mut conn = bulk::connect(broker.bootstrap()).await?;
    bulk::create_topic(&mut conn, &topic, 1, &[]).await?;
    let lines_before = broker.log_text().lines().count();

    for i in 0..GARBAGE_CONNECTIONS {
        let mut stream = raw::connect(broker.bootstrap()).await?;
        // Alternate between an unknown api key and a known one with a body
        // of noise: both are malformed requests.
        let frame = if i % 2 == 0 {
            let mut noise = raw::pseudo_random_bytes(i as u64 + 1, 32);
            noise[..2].copy_from_slice(&(-16657i16).to_be_bytes());
            noise
        } else {
            let mut body = raw::request_header_v2(raw::API_KEY_METADATA, 12, 3);
            body.extend(raw::pseudo_random_bytes(i as u64 + 1, 32));
            body
        };
        raw::write_frame(&mut stream, &frame).await?;
        raw::expect_closed(&mut stream).await?;
    }

    // The broker closed the last connection, so it has logged whatever it
    // logs about them.
    ensure!(bulk::produce_round(&mut conn, &topic, 1, 3)
        .await?
        .is_empty());
    let log = broker.log_text();
    let added: Vec<&str> = log.lines().skip(lines_before).collect();
    ensure!(
        added.len() <= LOG_LINES_ADDED_MAX,
        "{GARBAGE_CONNECTIONS} malformed requests added {} log lines, e.g.:\n{}",
        added.len(),
        added.iter().take(6).copied().collect::<Vec<_>>().join("\n")
    );
    ensure!(
        added.iter().any(|l| l.contains("malformed")),
        "no summary of the malformed requests in the log:\n{}",
        added.join("\n")
    );
    Ok(())
}
