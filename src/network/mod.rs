//! The socket server: accepts client connections on the Kafka listeners and
//! runs one [`connection`] task per client.
//!
//! Like Kafka's SocketServer it owns the connection limit: a connection beyond
//! `max.connections` is closed at once instead of queueing work that would
//! grow without bound. One connection's failure never touches another: each
//! lives in its own task and its errors end only that task.

pub mod connection;

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::api::KafkaApis;
pub use connection::{ConnectionEnd, RequestBudget};

/// Accepts connections until `shutdown` turns true. `budget` is the
/// broker-wide request budget, shared by every listener.
pub async fn serve(
    listener: TcpListener,
    apis: Arc<KafkaApis>,
    budget: RequestBudget,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let config = apis.broker().config.clone();
    let permits = Arc::new(Semaphore::new(config.max_connections));
    let limits = connection::Limits::from_config(&config);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.changed() => return Ok(()),
        };
        let (socket, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Out of file descriptors and similar: back off briefly rather
                // than spinning on a failing accept.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::warn!(%peer, max = config.max_connections, "max.connections reached; closing new connection");
            drop(socket);
            continue;
        };
        let _ = socket.set_nodelay(true);
        let apis = apis.clone();
        let shutdown = shutdown.clone();
        let budget = budget.clone();
        tokio::spawn(async move {
            match connection::run(socket, peer, apis, limits, budget, shutdown).await {
                Ok(()) => {}
                // Counted and warned about (rate-limited) where it was found.
                Err(ConnectionEnd::Malformed(_)) => {}
                Err(ConnectionEnd::Other(e)) => {
                    tracing::info!(%peer, error = %format!("{e:#}"), "connection closed")
                }
            }
            drop(permit);
        });
    }
}
