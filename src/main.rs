//! The `fjord` command: `serve` runs a broker; the other subcommands are small
//! Kafka clients that work against Fjord and Apache Kafka alike.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use fjord::config::ConfigSources;

#[derive(Parser)]
#[command(
    name = "fjord",
    version,
    about = "A replicated log broker that speaks the Kafka protocol"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a broker (defaults: node 1 on 127.0.0.1:9092, data in ./fjord-data).
    Serve(ServeArgs),
    /// Create, list, describe and delete topics (any Kafka-protocol broker).
    Topic(fjord::cli::topic::TopicArgs),
    /// Write records from stdin or --message to a topic.
    Produce(fjord::cli::produce::ProduceArgs),
    /// Print records from a topic.
    Consume(fjord::cli::consume::ConsumeArgs),
    /// List, describe and delete consumer groups; reset their offsets.
    Group(fjord::cli::group::GroupArgs),
    /// Show the cluster: brokers, controller, who leads what.
    Cluster(fjord::cli::cluster::ClusterArgs),
    /// Start a local cluster of separate `fjord serve` processes (node n:
    /// clients on BASE+n-1, peers on BASE+100+n-1); Ctrl-C stops them all.
    DevCluster(fjord::cli::dev_cluster::DevClusterArgs),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// TOML file of broker properties (Kafka names, e.g. "log.retention.ms" = 60000).
    #[arg(long)]
    config: Option<PathBuf>,
    /// listeners, e.g. PLAINTEXT://127.0.0.1:9092
    #[arg(long)]
    listeners: Option<String>,
    /// advertised.listeners (defaults to listeners)
    #[arg(long)]
    advertised_listeners: Option<String>,
    /// log.dirs: where partitions and metadata are stored
    #[arg(long)]
    log_dirs: Option<String>,
    /// node.id
    #[arg(long)]
    node_id: Option<i32>,
    /// When appends become durable: `interval` (flush every log.flush.interval.ms,
    /// like Kafka) or `always` (fsync before acknowledging).
    #[arg(long, value_parser = ["interval", "always"])]
    fsync: Option<String>,
    /// Any broker property, as key=value (repeatable); wins over every other source.
    #[arg(long = "override", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
}

fn main() -> std::process::ExitCode {
    bound_allocator_caches();
    let cli = Cli::parse();
    // openraft's own lines are off unless RUST_LOG asks for them: while a
    // peer is down it logs every failed replication and vote of every group
    // (thousands of lines a second with many partitions). Fjord logs peer
    // connections and partition leadership changes itself.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=off")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve(args).await,
            Command::Topic(args) => fjord::cli::topic::run(args).await,
            Command::Produce(args) => fjord::cli::produce::run(args).await,
            Command::Consume(args) => fjord::cli::consume::run(args).await,
            Command::Group(args) => fjord::cli::group::run(args).await,
            Command::Cluster(args) => fjord::cli::cluster::run(args).await,
            Command::DevCluster(args) => fjord::cli::dev_cluster::run(args).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut sources = ConfigSources::new();
    if let Some(path) = &args.config {
        sources.load_toml(path)?;
    }
    sources.load_env(std::env::vars())?;
    let flags = [
        ("listeners", args.listeners),
        ("advertised.listeners", args.advertised_listeners),
        ("log.dirs", args.log_dirs),
        ("node.id", args.node_id.map(|n| n.to_string())),
        ("log.fsync", args.fsync),
    ];
    for (key, value) in flags {
        if let Some(value) = value {
            sources.set(key, value)?;
        }
    }
    for pair in &args.overrides {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--override expects key=value, got `{pair}`"))?;
        sources.set(k, v)?;
    }
    // Fail on a bad config before touching the disk.
    sources.build()?;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        fjord::cli::stop_requested().await;
        let _ = stop_tx.send(true);
    });
    fjord::broker::run(sources, stop_rx).await
}

/// Keeps glibc's malloc from holding on to freed fetch and produce buffers.
///
/// By default glibc gives each thread that allocates its own arena (up to 8
/// per core) and, once a large buffer has been freed, raises its mmap
/// threshold so that later buffers of that size come from an arena too. The
/// broker allocates megabyte buffers (fetch responses, produce requests) on
/// many blocking threads, so each arena keeps its high-water mark: measured
/// here, reading back 2.5 M records over 8 partitions left 110 MiB resident
/// with the defaults and 25 MiB with one arena. Two arenas keep the two
/// runtime threads from contending on one lock; a fixed threshold (which also
/// stops the adjustment) sends every buffer of 128 KiB or more to its own
/// mapping, returned to the kernel when it is freed.
fn bound_allocator_caches() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const ARENAS_MAX: libc::c_int = 2;
        const MMAP_THRESHOLD_BYTES: libc::c_int = 128 * 1024;
        // SAFETY: mallopt only changes allocator tuning; called before any
        // other thread exists. A refused setting (return 0) leaves the default.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, ARENAS_MAX);
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES);
        }
    }
}
