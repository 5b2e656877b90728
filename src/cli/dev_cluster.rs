//! `fjord dev-cluster`: a local cluster of real, separate `fjord serve`
//! processes on loopback, for trying replication and failover by hand.
//!
//! Node `n` (1-based) serves clients on `--base-port + n - 1` and peers on
//! `--base-port + 100 + n - 1`, keeps its data in `DIR/node-n` and its output
//! in `DIR/node-n.log`. Every node is a voter. The command prints the
//! bootstrap address once every node accepts connections, and on Ctrl-C or
//! SIGTERM stops them one by one with SIGTERM (each hands its leaderships
//! to the nodes still up).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio::process::{Child, Command};

/// How long the nodes may take to serve clients.
const READY_WAIT_MAX: Duration = Duration::from_secs(60);
/// How long a node may take to stop after SIGTERM before it is killed.
const STOP_WAIT_MAX: Duration = Duration::from_secs(30);
/// Port offset of the CONTROLLER listeners from the client listeners.
const CONTROLLER_PORT_OFFSET: u16 = 100;

#[derive(clap::Args, Debug)]
pub struct DevClusterArgs {
    /// How many nodes (voters) to start.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=9))]
    pub nodes: u16,
    /// Client port of node 1; node n listens on BASE+n-1, and for peers on BASE+100+n-1.
    #[arg(long, default_value_t = 9092)]
    pub base_port: u16,
    /// Where the nodes keep their data (DIR/node-N) and output (DIR/node-N.log).
    #[arg(long, default_value = "fjord-dev-cluster")]
    pub dir: PathBuf,
    /// Broker property for every node, as key=value (repeatable).
    #[arg(long = "override", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
}

/// One node of the cluster: its id, ports and process.
struct Node {
    id: u16,
    port: u16,
    child: Child,
}

pub async fn run(args: DevClusterArgs) -> Result<()> {
    let last_port =
        u32::from(args.base_port) + u32::from(CONTROLLER_PORT_OFFSET) + u32::from(args.nodes) - 1;
    if last_port > u32::from(u16::MAX) {
        bail!(
            "--base-port {} leaves no room for {} nodes",
            args.base_port,
            args.nodes
        );
    }
    let exe = std::env::current_exe().context("finding the fjord executable")?;
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    let controller_port = |id: u16| args.base_port + CONTROLLER_PORT_OFFSET + id - 1;
    let voters = (1..=args.nodes)
        .map(|id| format!("{id}@127.0.0.1:{}", controller_port(id)))
        .collect::<Vec<_>>()
        .join(",");

    let mut nodes = Vec::new();
    for id in 1..=args.nodes {
        let port = args.base_port + id - 1;
        let log_path = args.dir.join(format!("node-{id}.log"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let err = log.try_clone().context("duplicating the log descriptor")?;
        let mut command = Command::new(&exe);
        command
            .arg("serve")
            .arg("--node-id")
            .arg(id.to_string())
            .arg("--log-dirs")
            .arg(args.dir.join(format!("node-{id}")))
            .arg("--listeners")
            .arg(format!(
                "PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{}",
                controller_port(id)
            ))
            .arg("--override")
            .arg(format!("controller.quorum.voters={voters}"));
        for pair in &args.overrides {
            command.arg("--override").arg(pair);
        }
        command
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err))
            .kill_on_drop(true);
        let child = match command.spawn() {
            Ok(child) => child,
            Err(e) => {
                stop_all(&mut nodes).await;
                bail!("starting node {id}: {e}");
            }
        };
        println!(
            "node {id}: pid {}, clients 127.0.0.1:{port}, peers 127.0.0.1:{}, data {}, log {}",
            child.id().unwrap_or(0),
            controller_port(id),
            args.dir.join(format!("node-{id}")).display(),
            log_path.display()
        );
        nodes.push(Node { id, port, child });
    }

    let bootstrap = nodes
        .iter()
        .map(|n| format!("127.0.0.1:{}", n.port))
        .collect::<Vec<_>>()
        .join(",");
    let stop = super::stop_requested();
    tokio::pin!(stop);
    let ready = tokio::select! {
        ready = wait_ready(&mut nodes) => ready,
        _ = &mut stop => Err(anyhow::anyhow!("stopped before the cluster was up")),
    };
    if let Err(e) = ready {
        stop_all(&mut nodes).await;
        return Err(e);
    }
    println!("cluster up: bootstrap.servers={bootstrap}");
    println!("(Ctrl-C stops every node)");

    // Run until asked to stop; a node that exits by itself is reported and
    // the others keep running.
    let mut exited = vec![false; nodes.len()];
    loop {
        let any_exit = async {
            loop {
                for (i, node) in nodes.iter_mut().enumerate() {
                    if exited[i] {
                        continue;
                    }
                    if let Ok(Some(status)) = node.child.try_wait() {
                        return (i, status);
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        };
        tokio::select! {
            (i, status) = any_exit => {
                exited[i] = true;
                eprintln!("node {} exited: {status} (see its log)", nodes[i].id);
                if exited.iter().all(|&e| e) {
                    bail!("every node exited");
                }
            }
            _ = &mut stop => break,
        }
    }
    stop_all(&mut nodes).await;
    Ok(())
}

/// Waits until every node accepts connections on its client port, or fails
/// if one exits first or the wait runs out.
async fn wait_ready(nodes: &mut [Node]) -> Result<()> {
    let started = Instant::now();
    for node in nodes.iter_mut() {
        loop {
            if let Some(status) = node.child.try_wait()? {
                bail!(
                    "node {} exited while starting: {status} (see its log)",
                    node.id
                );
            }
            let connected = tokio::time::timeout(
                Duration::from_secs(1),
                tokio::net::TcpStream::connect(("127.0.0.1", node.port)),
            )
            .await;
            if matches!(connected, Ok(Ok(_))) {
                break;
            }
            if started.elapsed() > READY_WAIT_MAX {
                bail!(
                    "node {} does not serve clients after {READY_WAIT_MAX:?}",
                    node.id
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// Stops the running nodes one at a time, last first, with SIGTERM (so
/// each hands its leaderships to the nodes still up), killing any that
/// outlives [`STOP_WAIT_MAX`].
async fn stop_all(nodes: &mut [Node]) {
    for node in nodes.iter_mut().rev() {
        if !matches!(node.child.try_wait(), Ok(None)) {
            continue;
        }
        if let Some(pid) = node.child.id() {
            // SAFETY: kill(2) on the pid of a child this process spawned and
            // has not reaped (try_wait just saw it running).
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGTERM);
            }
        }
        match tokio::time::timeout(STOP_WAIT_MAX, node.child.wait()).await {
            Ok(Ok(status)) => println!("node {} stopped: {status}", node.id),
            Ok(Err(e)) => eprintln!("node {}: {e}", node.id),
            Err(_) => {
                eprintln!(
                    "node {} still running after {STOP_WAIT_MAX:?}; killing it",
                    node.id
                );
                let _ = node.child.kill().await;
            }
        }
    }
}
