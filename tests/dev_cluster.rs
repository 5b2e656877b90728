//! `fjord dev-cluster --nodes 3` starts three separate `fjord serve`
//! processes that form one cluster (Metadata from any of them lists three
//! brokers and a controller), prints their pids and the bootstrap address,
//! and on SIGINT stops every one of them.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};
use kafka_protocol::messages::MetadataRequest;

mod common;
use common::kafka_rpc::KafkaConnection;

const UP_WAIT_MAX: Duration = Duration::from_secs(60);
const STOP_WAIT_MAX: Duration = Duration::from_secs(60);

/// A base port with the three client ports and three peer ports free.
fn free_base_port() -> Result<u16> {
    for base in (31000u16..40000).step_by(10) {
        let ports = (0..3).flat_map(|i| [base + i, base + 100 + i]);
        if ports
            .into_iter()
            .all(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok())
        {
            return Ok(base);
        }
    }
    bail!("no free ports for a dev cluster")
}

fn pid_alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            // The state follows the parenthesised command name.
            stat.rsplit_once(')')
                .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_cluster_starts_three_nodes_that_form_one_cluster_and_stops_them() -> Result<()> {
    if std::env::var("FJORD_TEST_BOOTSTRAP").is_ok() {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let base = free_base_port()?;
    let mut child = Command::new(env!("CARGO_BIN_EXE_fjord"))
        .args(["dev-cluster", "--nodes", "3", "--base-port"])
        .arg(base.to_string())
        .arg("--dir")
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting fjord dev-cluster")?;
    let stdout = child.stdout.take().context("stdout")?;
    let (lines_tx, lines_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                return;
            }
        }
    });
    let started = Instant::now();
    let mut pids = Vec::new();
    let bootstrap = loop {
        let left = UP_WAIT_MAX.saturating_sub(started.elapsed());
        let line = lines_rx
            .recv_timeout(left)
            .context("dev-cluster printed no bootstrap address")?;
        if let Some(rest) = line.strip_prefix("node ") {
            if let Some(pid) = rest.split("pid ").nth(1).and_then(|p| p.split(',').next()) {
                pids.push(pid.trim().parse::<i32>()?);
            }
        }
        if let Some(b) = line.strip_prefix("cluster up: bootstrap.servers=") {
            break b.to_string();
        }
    };
    ensure!(pids.len() == 3, "three pids printed: {pids:?}");
    ensure!(
        bootstrap
            == format!(
                "127.0.0.1:{base},127.0.0.1:{},127.0.0.1:{}",
                base + 1,
                base + 2
            ),
        "bootstrap {bootstrap}"
    );

    // Every node answers Metadata with the same three brokers and a controller.
    for addr in bootstrap.split(',') {
        let mut conn = KafkaConnection::connect(addr).await?;
        let started = Instant::now();
        loop {
            let md = conn
                .send(12, &MetadataRequest::default().with_topics(Some(vec![])))
                .await?;
            let mut ids: Vec<i32> = md.brokers.iter().map(|b| b.node_id.0).collect();
            ids.sort_unstable();
            if ids == [1, 2, 3] && md.controller_id.0 >= 1 {
                break;
            }
            ensure!(
                started.elapsed() < UP_WAIT_MAX,
                "{addr} lists brokers {ids:?}, controller {}",
                md.controller_id.0
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // SIGINT (Ctrl-C): every node stops, then the command exits.
    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGINT);
    }
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if started.elapsed() > STOP_WAIT_MAX {
            let _ = child.kill();
            for &pid in &pids {
                // SAFETY: kill(2) of a node this test's child started.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
            bail!("dev-cluster still running {STOP_WAIT_MAX:?} after SIGINT");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    ensure!(status.success(), "dev-cluster exited with {status}");
    let alive: Vec<i32> = pids.iter().copied().filter(|&p| pid_alive(p)).collect();
    ensure!(alive.is_empty(), "nodes still running: {alive:?}");
    Ok(())
}
