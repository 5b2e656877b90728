//! The CONTROLLER listener of a running `fjord`: peers of this cluster get
//! in, peers of another cluster are refused with the reason, and garbage
//! (a Kafka client pointed at the wrong port, noise, absurd lengths) closes
//! only its own connection while Kafka clients go on being served.

mod common;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, ensure, Context, Result};
use fjord::raft::transport::{CallError, PeerState, Transport, TransportConfig};
use fjord::raft::GroupId;
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

use common::{bulk, raw, unique_topic, Broker};

/// The broker's node id (the default `node.id`).
const BROKER_NODE: u64 = 1;
/// Garbage connections sent to the CONTROLLER port.
const GARBAGE_CONNECTIONS: u64 = 200;
const HANDSHAKE_WAIT: Duration = Duration::from_secs(10);

fn cluster_id(broker: &Broker) -> Result<String> {
    let dir = broker.data_dir().ok_or_else(|| anyhow!("no data dir"))?;
    let text =
        std::fs::read_to_string(dir.join("meta.properties")).context("reading meta.properties")?;
    text.lines()
        .find_map(|l| l.strip_prefix("cluster.id="))
        .map(str::to_string)
        .ok_or_else(|| anyhow!("meta.properties has no cluster.id: {text}"))
}

/// A peer (node 2) of `cluster` connecting to the broker's CONTROLLER port.
async fn peer(cluster: &str, address: &str) -> (Arc<Transport>, watch::Sender<bool>, PeerState) {
    let (stop, stopped) = watch::channel(false);
    let transport = Transport::new(TransportConfig::new(2, Some(cluster.to_string())), stopped);
    transport.add_peer(BROKER_NODE, address.to_string());
    let state = transport
        .wait_for_peer(BROKER_NODE, HANDSHAKE_WAIT, |s| *s != PeerState::Connecting)
        .await
        .unwrap_or(PeerState::Connecting);
    (transport, stop, state)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_port_admits_its_cluster_refuses_others_and_survives_garbage() -> Result<()> {
    let test = "controller_port_admits_its_cluster_refuses_others_and_survives_garbage";
    let Some(mut broker) = Broker::start_process_with_controller(test, &[])? else {
        return Ok(());
    };
    let controller = broker
        .controller_address()
        .ok_or_else(|| anyhow!("no controller listener"))?;
    let cluster = cluster_id(&broker)?;

    // Another cluster's node is told why it cannot join.
    let (_other, stop_other, state) = peer("some-other-cluster", &controller).await;
    let _ = stop_other.send(true);
    match &state {
        PeerState::Refused(reason) => ensure!(
            reason.contains(&cluster) && reason.contains("some-other-cluster"),
            "the refusal should name both clusters: {reason}"
        ),
        other => anyhow::bail!("another cluster's node got {other:?}"),
    }

    // A node of this cluster gets in; it hosts no group yet, so a call is
    // answered with an error naming the group.
    let (member, stop_member, state) = peer(&cluster, &controller).await;
    ensure!(state == PeerState::Connected, "a member got {state:?}");
    let answer = member
        .call(BROKER_NODE, GroupId::Metadata, vec![1, 2, 3])
        .await;
    ensure!(
        // Not a Raft message: the metadata group answers with the decoding
        // error and goes on.
        matches!(&answer, Err(CallError::Remote(1, reason)) if !reason.is_empty()),
        "call answered {answer:?}"
    );

    // Garbage, each on its own connection.
    for i in 0..GARBAGE_CONNECTIONS {
        let mut stream = raw::connect(&controller).await?;
        let bytes = match i % 4 {
            // A Kafka client that was given the CONTROLLER port.
            0 => {
                let mut frame = raw::request_header_v2(raw::API_KEY_API_VERSIONS, 3, i as i32);
                frame.extend([0, 0, 0]);
                let mut out = (frame.len() as u32).to_be_bytes().to_vec();
                out.extend(frame);
                out
            }
            // A length far above any frame limit.
            1 => vec![0x7f, 0xff, 0xff, 0xff, 1, 2, 3],
            // A small frame of noise.
            2 => {
                let mut out = 32u32.to_be_bytes().to_vec();
                out.extend(raw::pseudo_random_bytes(i + 1, 32));
                out
            }
            // Noise without framing.
            _ => raw::pseudo_random_bytes(i + 1, 100),
        };
        stream.write_all(&bytes).await?;
        raw::expect_closed(&mut stream)
            .await
            .with_context(|| format!("garbage connection {i}"))?;
    }
    ensure!(broker.is_alive(), "the broker died:\n{}", broker.log_tail());

    // The member's connection and Kafka clients are still served.
    let answer = member.call(BROKER_NODE, GroupId::Metadata, vec![]).await;
    ensure!(
        matches!(answer, Err(CallError::Remote(..))),
        "after garbage: {answer:?}"
    );
    let _ = stop_member.send(true);
    let mut conn = bulk::connect(broker.bootstrap()).await?;
    let topic = unique_topic("after-garbage");
    bulk::create_topic(&mut conn, &topic, 1, &[]).await?;
    let errors = bulk::produce_round(&mut conn, &topic, 1, 10).await?;
    ensure!(errors.is_empty(), "produce after garbage: {errors:?}");
    broker.stop()?;
    Ok(())
}
