//! The `fjord` subcommands that act as a Kafka client: `topic`, `produce`,
//! `consume`, `group`, `cluster`, and `dev-cluster`, which starts a local
//! cluster. Each exposes a clap `Args` struct and `run(args)`.

use std::time::Duration;

use anyhow::Result;

use crate::client::{Client, ClientConfig};

pub mod cluster;
pub mod consume;
pub mod dev_cluster;
pub mod group;
pub mod produce;
pub mod topic;

/// How to reach the cluster; flattened into every client subcommand.
#[derive(clap::Args, Debug, Clone)]
pub struct ConnectArgs {
    /// Comma-separated host:port list of brokers to bootstrap from.
    #[arg(
        long,
        env = "FJORD_BOOTSTRAP_SERVER",
        default_value = "127.0.0.1:9092",
        global = true
    )]
    pub bootstrap_server: String,
    /// Bound on each request/response exchange with a broker.
    #[arg(long, default_value_t = 30_000, global = true)]
    pub request_timeout_ms: u64,
    /// Bound on opening a connection (TCP connect plus ApiVersions).
    #[arg(long, default_value_t = 10_000, global = true)]
    pub connect_timeout_ms: u64,
}

impl ConnectArgs {
    pub fn client_config(&self) -> ClientConfig {
        ClientConfig {
            connect_timeout: Duration::from_millis(self.connect_timeout_ms),
            request_timeout: Duration::from_millis(self.request_timeout_ms),
            ..ClientConfig::default()
        }
    }

    pub async fn connect(&self) -> Result<Client> {
        Client::connect(&self.bootstrap_server, self.client_config()).await
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn stop_requested() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
