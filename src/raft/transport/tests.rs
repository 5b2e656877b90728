//! The transport over real loopback TCP: calls, multiplexing, limits,
//! refusals, garbage, reconnects and liveness.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use uuid::Uuid;

use super::*;

const WAIT: Duration = Duration::from_secs(10);

/// Answers `body` with `from`, the group's partition and `body` itself;
/// `b"fail"` with an error and `b"hang"` never.
struct Echo;

impl Handler for Echo {
    fn handle(
        &self,
        from: NodeId,
        group: GroupId,
        body: Vec<u8>,
    ) -> BoxFuture<'static, Result<Vec<u8>, String>> {
        Box::pin(async move {
            match body.as_slice() {
                b"fail" => Err("refused by the test".to_string()),
                b"hang" => futures::future::pending().await,
                _ => {
                    let partition = match group {
                        GroupId::Partition { partition, .. } => partition,
                        GroupId::Metadata => -1,
                    };
                    Ok(
                        format!("{from}:{partition}:{}", String::from_utf8_lossy(&body))
                            .into_bytes(),
                    )
                }
            }
        })
    }
}

struct Node {
    transport: Arc<Transport>,
    stop: watch::Sender<bool>,
    addr: String,
}

impl Node {
    fn stop(&self) {
        let _ = self.stop.send(true);
    }
}

async fn node(config: TransportConfig, listener: TcpListener) -> Node {
    let (stop, stopped) = watch::channel(false);
    let addr = listener.local_addr().expect("bound").to_string();
    let transport = Transport::new(config, stopped);
    tokio::spawn(transport.clone().serve(listener, Arc::new(Echo)));
    Node {
        transport,
        stop,
        addr,
    }
}

async fn started(id: NodeId, cluster: &str) -> Node {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    node(
        TransportConfig::new(id, Some(cluster.to_string())),
        listener,
    )
    .await
}

fn partition(n: i32) -> GroupId {
    GroupId::Partition {
        topic_id: Uuid::nil(),
        partition: n,
    }
}

async fn connected(from: &Node, to: NodeId, addr: &str) {
    from.transport.add_peer(to, addr.to_string());
    let state = from
        .transport
        .wait_for_peer(to, WAIT, |s| *s == PeerState::Connected)
        .await;
    assert_eq!(state, Some(PeerState::Connected));
}

#[tokio::test]
async fn calls_of_many_groups_share_one_connection() {
    let a = started(1, "c").await;
    let b = started(2, "c").await;
    connected(&a, 2, &b.addr).await;
    let calls = (0..200).map(|n| {
        let transport = a.transport.clone();
        async move {
            transport
                .call(2, partition(n), format!("m{n}").into_bytes())
                .await
        }
    });
    let answers = futures::future::join_all(calls).await;
    for (n, answer) in answers.into_iter().enumerate() {
        assert_eq!(
            answer.expect("answered"),
            format!("1:{n}:m{n}").into_bytes()
        );
    }
    assert_eq!(b.transport.connections_accepted(), 1);
    assert_eq!(
        a.transport.call(2, partition(0), b"fail".to_vec()).await,
        Err(CallError::Remote(2, "refused by the test".into()))
    );
    assert_eq!(
        a.transport.call(9, partition(0), vec![]).await,
        Err(CallError::UnknownPeer(9))
    );
    a.stop();
    b.stop();
}

#[tokio::test]
async fn a_call_nobody_answers_times_out_and_waiting_calls_are_bounded() {
    let b = started(2, "c").await;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let mut config = TransportConfig::new(1, Some("c".into()));
    config.call_timeout = Duration::from_millis(300);
    config.max_inflight = 4;
    let a = node(config, listener).await;
    connected(&a, 2, &b.addr).await;
    let hanging = (0..4).map(|_| a.transport.call(2, partition(0), b"hang".to_vec()));
    let extra = async {
        // Runs once the four are waiting (they register before their first await).
        tokio::task::yield_now().await;
        a.transport.call(2, partition(0), b"x".to_vec()).await
    };
    let (hung, extra) = tokio::join!(futures::future::join_all(hanging), extra);
    assert_eq!(extra, Err(CallError::Busy(2)));
    for result in hung {
        assert_eq!(result, Err(CallError::Timeout(2)));
    }
    // A call its caller gives up on (drops) gives its slot back too.
    for _ in 0..8 {
        let dropped = tokio::time::timeout(
            Duration::from_millis(20),
            a.transport.call(2, partition(0), b"hang".to_vec()),
        )
        .await;
        assert!(dropped.is_err(), "a hanging call cannot answer");
    }
    // The timed-out calls gave their slots back.
    assert_eq!(
        a.transport.call(2, partition(3), b"ok".to_vec()).await,
        Ok(b"1:3:ok".to_vec())
    );
    a.stop();
    b.stop();
}

#[tokio::test]
async fn another_clusters_node_is_refused_with_the_reason() {
    let a = started(1, "first").await;
    let b = started(2, "second").await;
    a.transport.add_peer(2, b.addr.clone());
    let state = a
        .transport
        .wait_for_peer(2, WAIT, |s| matches!(s, PeerState::Refused(_)))
        .await;
    match state {
        Some(PeerState::Refused(reason)) => {
            assert!(
                reason.contains("cluster second") && reason.contains("cluster first"),
                "{reason}"
            )
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(
        a.transport.call(2, partition(0), vec![]).await,
        Err(CallError::Unreachable(2))
    );
    assert_eq!(b.transport.connections_accepted(), 0);
    // Calling the wrong node id at an address is refused too.
    let c = started(3, "first").await;
    a.transport.add_peer(4, c.addr.clone());
    let state = a
        .transport
        .wait_for_peer(4, WAIT, |s| matches!(s, PeerState::Refused(_)))
        .await;
    assert!(matches!(state, Some(PeerState::Refused(r)) if r.contains("not node 4")));
    // A node that has not joined any cluster yet is let in.
    let fresh = node(
        TransportConfig::new(5, None),
        TcpListener::bind("127.0.0.1:0").await.expect("bind"),
    )
    .await;
    connected(&fresh, 1, &a.addr).await;
    for n in [a, b, c, fresh] {
        n.stop();
    }
}

/// Reads until the server closes; true if it did within WAIT.
async fn closed_by_server(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 1024];
    let read = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(WAIT, read).await.is_ok()
}

#[tokio::test]
async fn garbage_closes_only_its_own_connection() {
    let a = started(1, "c").await;
    let b = started(2, "c").await;
    connected(&a, 2, &b.addr).await;
    let hello = |to: NodeId| {
        let frame = Frame::Hello {
            version: PROTOCOL_VERSION,
            cluster_id: Some("c".into()),
            from: 7,
            to,
        };
        let body = codec(1 << 20).serialize(&frame).expect("encodes");
        let mut out = (body.len() as u32).to_be_bytes().to_vec();
        out.extend(body);
        out
    };
    let oversized = u32::MAX.to_be_bytes().to_vec();
    let mut garbage_after_hello = hello(2);
    garbage_after_hello.extend([0, 0, 0, 5, 0xff, 0xff, 0xff, 0xff, 0xff]);
    // A length that claims a huge Vec inside a small frame must not allocate it.
    let mut huge_claim = hello(2);
    huge_claim.extend([
        0, 0, 0, 12, 4, 0, 0, 0xfc, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f,
    ]);
    for (name, bytes) in [
        ("http", b"GET / HTTP/1.1\r\n\r\n".to_vec()),
        ("oversized length", oversized),
        ("garbage after hello", garbage_after_hello),
        ("huge vec claim", huge_claim),
    ] {
        let mut stream = TcpStream::connect(&b.addr).await.expect("connect");
        stream.write_all(&bytes).await.expect("write");
        assert!(
            closed_by_server(&mut stream).await,
            "{name}: connection left open"
        );
    }
    // The real peer's connection is untouched.
    assert_eq!(
        a.transport.call(2, partition(1), b"still".to_vec()).await,
        Ok(b"1:1:still".to_vec())
    );
    a.stop();
    b.stop();
}

#[tokio::test]
async fn a_peer_that_comes_back_is_reconnected_and_liveness_follows_it() {
    let a = started(1, "c").await;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("bound").port();
    let b = node(TransportConfig::new(2, Some("c".into())), listener).await;
    connected(&a, 2, &b.addr).await;
    assert!(a.transport.is_alive(2));
    assert!(
        b.transport.is_alive(1),
        "the server hears the caller's heartbeats"
    );

    b.stop();
    let state = a
        .transport
        .wait_for_peer(2, WAIT, |s| *s == PeerState::Connecting)
        .await;
    assert_eq!(state, Some(PeerState::Connecting));
    tokio::time::sleep(a.transport.config().dead_after).await;
    assert!(!a.transport.is_alive(2), "a stopped peer counts as dead");

    let listener = TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("rebind");
    let again = node(TransportConfig::new(2, Some("c".into())), listener).await;
    let state = a
        .transport
        .wait_for_peer(2, WAIT, |s| *s == PeerState::Connected)
        .await;
    assert_eq!(state, Some(PeerState::Connected));
    assert!(a.transport.is_alive(2));
    assert_eq!(
        a.transport.call(2, partition(2), b"back".to_vec()).await,
        Ok(b"1:2:back".to_vec())
    );
    a.stop();
    again.stop();
}

#[tokio::test]
async fn a_connection_holds_at_most_its_byte_budget_in_handlers() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let mut config = TransportConfig::new(2, Some("c".into()));
    // One "hang" request (4 bytes) fits; a second request must wait for it.
    config.max_inflight_bytes = 5;
    let b = node(config, listener).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let mut config = TransportConfig::new(1, Some("c".into()));
    config.call_timeout = Duration::from_millis(500);
    let a = node(config, listener).await;
    connected(&a, 2, &b.addr).await;
    let (hung, blocked) =
        tokio::join!(a.transport.call(2, partition(0), b"hang".to_vec()), async {
            tokio::task::yield_now().await;
            a.transport.call(2, partition(1), b"ok".to_vec()).await
        });
    assert_eq!(hung, Err(CallError::Timeout(2)));
    assert_eq!(
        blocked,
        Err(CallError::Timeout(2)),
        "the budget was not enforced"
    );
    a.stop();
    b.stop();
}
