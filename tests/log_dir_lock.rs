//! One log directory, one broker: a second `fjord` started on a directory
//! that a running broker holds refuses to start, names the directory, and
//! leaves the first broker serving (two brokers appending to the same files
//! would silently lose acknowledged records).

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};

use common::{bulk, unique_topic, Broker};

/// How long the second broker may take to give up. It exits before binding
/// anything; a debug build on a loaded machine still starts slowly.
const SECOND_BROKER_EXIT_WAIT_MAX: Duration = Duration::from_secs(30);
const POLL_INTERVAL: Duration = Duration::from_millis(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_broker_on_the_same_log_dir_refuses_to_start() -> Result<()> {
    let Some(broker) =
        Broker::start_process("a_second_broker_on_the_same_log_dir_refuses_to_start", &[])?
    else {
        return Ok(());
    };
    let data_dir = broker.data_dir().context("own process")?;
    let topic = unique_topic("locked");
    let mut conn = bulk::connect(broker.bootstrap()).await?;
    bulk::create_topic(&mut conn, &topic, 1, &[]).await?;
    ensure!(bulk::produce_round(&mut conn, &topic, 1, 3)
        .await?
        .is_empty());

    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut second = Command::new(env!("CARGO_BIN_EXE_fjord"))
        .arg("serve")
        .arg("--listeners")
        .arg(format!("PLAINTEXT://127.0.0.1:{port}"))
        .arg("--log-dirs")
        .arg(&data_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let started = Instant::now();
    let status = loop {
        if let Some(status) = second.try_wait()? {
            break status;
        }
        if started.elapsed() > SECOND_BROKER_EXIT_WAIT_MAX {
            let _ = second.kill();
            let _ = second.wait();
            bail!(
                "a second broker on {} was still running after {SECOND_BROKER_EXIT_WAIT_MAX:?}",
                data_dir.display()
            );
        }
        std::thread::sleep(POLL_INTERVAL);
    };
    let output = second.wait_with_output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    ensure!(!status.success(), "the second broker exited with {status}");
    ensure!(
        text.contains("Failed to acquire lock on file .lock in")
            && text.contains(&data_dir.display().to_string()),
        "the second broker's output does not name the locked directory:\n{text}"
    );

    // The first broker still serves, with everything it acknowledged.
    ensure!(bulk::produce_round(&mut conn, &topic, 1, 3)
        .await?
        .is_empty());
    let answers = bulk::fetch_all(&mut conn, &topic, 1, 1 << 20).await?;
    ensure!(
        answers[0] == (0, 6, 6),
        "first broker after the refused start: {answers:?}"
    );
    Ok(())
}
