//! Whole-broker test harness: runs a real `fjord` process and talks to it with
//! stock clients (rdkafka) or raw TCP.
//!
//! Design decision: every test gets its own broker process, data directory and
//! port, so tests in one file can run in parallel and a crash in one test never
//! poisons another. The price (a process start per test) is small next to the
//! client work each test does.
//!
//! `FJORD_TEST_EXTERNAL_BOOTSTRAP=host:port` points the tests that never stop
//! or kill the broker at an already running broker instead (for example Apache
//! Kafka, to check the tests themselves); tests that need to stop, kill or
//! restart the broker print why and skip in that mode.

#![allow(dead_code)] // Each test file uses a different subset of the harness.

pub mod bulk;
pub mod cluster;
pub mod kafka_rpc;
pub mod produce_stream;
pub mod raw;

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, ensure, Context as _, Result};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::FutureProducer;
use rdkafka::{Offset, TopicPartitionList};

/// Environment variable naming an already running broker to test instead of
/// spawning `fjord`.
pub const EXTERNAL_BOOTSTRAP_ENV: &str = "FJORD_TEST_EXTERNAL_BOOTSTRAP";
/// Environment variable naming the `fjord` binary when the tests do not live
/// in the `fjord` crate (where Cargo sets `CARGO_BIN_EXE_fjord`).
pub const FJORD_BIN_ENV: &str = "FJORD_BIN";

/// How long a freshly spawned broker may take to accept TCP connections. A
/// debug build on a loaded 2-core machine is slow to start; a broker that is
/// not listening after this is broken.
pub const BROKER_READY_WAIT_MAX: Duration = Duration::from_secs(60);
/// How long a broker may take to exit after SIGTERM before we call it hung.
pub const BROKER_STOP_WAIT_MAX: Duration = Duration::from_secs(30);
/// Interval between readiness/exit checks: there is no event to wait for on a
/// foreign process, so we poll, always under one of the bounds above.
const PROCESS_POLL_INTERVAL: Duration = Duration::from_millis(20);
/// Longest wait for a SIGSTOPped broker to have stopped every thread.
const PAUSE_WAIT_MAX: Duration = Duration::from_secs(10);
/// Bound for admin operations and for a new topic to show leaders in metadata.
pub const TOPIC_READY_WAIT_MAX: Duration = Duration::from_secs(30);
/// Timeout of one blocking metadata / watermark request.
pub const METADATA_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Lines of broker output shown when a test fails.
const BROKER_LOG_TAIL_LINES: usize = 60;

/// A broker under test: either a `fjord` process owned by this handle, or an
/// external broker given by [`EXTERNAL_BOOTSTRAP_ENV`].
pub struct Broker {
    bootstrap: String,
    process: Option<BrokerProcess>,
}

/// A `fjord serve` process and everything needed to start it again on the
/// same data directory and port.
struct BrokerProcess {
    bin: PathBuf,
    /// Holds `data/` (the broker's `--log-dirs`) and `fjord.log` (its
    /// stdout and stderr, appended across restarts).
    dir: tempfile::TempDir,
    port: u16,
    /// The CONTROLLER (node-to-node) listener's port, if it has one.
    controller_port: Option<u16>,
    extra_args: Vec<String>,
    /// RLIMIT_NOFILE (soft and hard) the process starts with, if limited.
    nofile_limit: Option<u64>,
    child: Option<Child>,
}

impl Broker {
    /// A broker with default settings: the external one if configured, else a
    /// fresh `fjord` process.
    pub fn start() -> Result<Broker> {
        Broker::start_with(&[])
    }

    /// Like [`Broker::start`], with extra `fjord serve` arguments (for example
    /// `["--override", "socket.request.max.bytes=1048576"]`). An external
    /// broker runs with its own configuration; the arguments are then ignored
    /// and the test must cope with the external broker's defaults.
    pub fn start_with(extra_args: &[&str]) -> Result<Broker> {
        if let Some(bootstrap) = external_bootstrap() {
            if !extra_args.is_empty() {
                eprintln!("note: external broker {bootstrap}: ignoring broker args {extra_args:?}");
            }
            return Ok(Broker {
                bootstrap,
                process: None,
            });
        }
        Broker::spawn(extra_args, None)
    }

    /// A `fjord` process owned by the test, for tests that stop, kill or
    /// restart the broker. Returns `None` (after printing why) when an
    /// external broker is configured: such a test must then skip.
    pub fn start_process(test_name: &str, extra_args: &[&str]) -> Result<Option<Broker>> {
        if skip_for_external(test_name, "to stop/kill/restart its own fjord process") {
            return Ok(None);
        }
        Broker::spawn(extra_args, None).map(Some)
    }

    /// Like [`Broker::start_process`], with RLIMIT_NOFILE set to
    /// `nofile_limit` (soft and hard, so the broker cannot raise it) in the
    /// child before `fjord` runs, also across restarts.
    pub fn start_process_with_nofile(
        test_name: &str,
        extra_args: &[&str],
        nofile_limit: u64,
    ) -> Result<Option<Broker>> {
        if skip_for_external(test_name, "its own fjord process under a descriptor limit") {
            return Ok(None);
        }
        Broker::spawn(extra_args, Some(nofile_limit)).map(Some)
    }

    /// A `fjord` process owned by the test that also listens for peers on a
    /// CONTROLLER listener of its own ([`Broker::controller_address`]).
    pub fn start_process_with_controller(
        test_name: &str,
        extra_args: &[&str],
    ) -> Result<Option<Broker>> {
        if skip_for_external(
            test_name,
            "its own fjord process with a CONTROLLER listener",
        ) {
            return Ok(None);
        }
        let mut broker = Broker::prepare(extra_args, None)?;
        if let Some(process) = broker.process.as_mut() {
            process.controller_port = Some(free_port()?);
            process.launch()?;
        }
        Ok(Some(broker))
    }

    /// `count` nodes of one cluster (node ids 1..=count, every one a voter),
    /// each a `fjord` process with its own ports and data directory. They
    /// are all spawned before any is waited for: a node serves clients
    /// only once a majority of the voters has formed the metadata group.
    /// `None` (after printing why) when an external broker is configured.
    pub fn start_cluster(
        test_name: &str,
        count: usize,
        extra_args: &[&str],
    ) -> Result<Option<Vec<Broker>>> {
        let Some(mut nodes) = Broker::prepare_cluster(test_name, count, extra_args)? else {
            return Ok(None);
        };
        for node in &mut nodes {
            node.spawn_again()?;
        }
        for node in &mut nodes {
            node.wait_ready()?;
        }
        Ok(Some(nodes))
    }

    /// Like [`Broker::start_cluster`], with no process started yet: the
    /// test starts each with [`Broker::spawn_again`], in its own order.
    pub fn prepare_cluster(
        test_name: &str,
        count: usize,
        extra_args: &[&str],
    ) -> Result<Option<Vec<Broker>>> {
        if skip_for_external(test_name, "a cluster of its own fjord processes") {
            return Ok(None);
        }
        let mut nodes = Vec::with_capacity(count);
        for _ in 0..count {
            let mut node = Broker::prepare(extra_args, None)?;
            node.process_mut()?.controller_port = Some(free_port()?);
            nodes.push(node);
        }
        let voters = quorum_voters(&nodes)?;
        for (i, node) in nodes.iter_mut().enumerate() {
            node.process_mut()?.extra_args.extend([
                "--node-id".to_string(),
                (i + 1).to_string(),
                "--override".to_string(),
                format!("controller.quorum.voters={voters}"),
            ]);
        }
        Ok(Some(nodes))
    }

    /// Waits (bounded by [`BROKER_READY_WAIT_MAX`]) until the broker's
    /// output contains `text`.
    pub fn wait_log(&self, text: &str) -> Result<()> {
        let started = Instant::now();
        while !self.log_text().contains(text) {
            ensure!(
                started.elapsed() < BROKER_READY_WAIT_MAX,
                "no {text:?} in the broker output within {BROKER_READY_WAIT_MAX:?}:\n{}",
                self.log_tail()
            );
            thread::sleep(PROCESS_POLL_INTERVAL);
        }
        Ok(())
    }

    /// A broker-only node `node_id` (not a voter) joining the cluster of
    /// `voters` (as started by [`Broker::start_cluster`]), with its own
    /// CONTROLLER listener; waits until it serves clients.
    pub fn join_cluster(voters: &[Broker], node_id: i32, extra_args: &[&str]) -> Result<Broker> {
        let mut node = Broker::prepare_join(voters, node_id, extra_args)?;
        node.process_mut()?.launch()?;
        Ok(node)
    }

    /// Like [`Broker::join_cluster`], with the process not started yet
    /// (start it with [`Broker::spawn_again`]).
    pub fn prepare_join(voters: &[Broker], node_id: i32, extra_args: &[&str]) -> Result<Broker> {
        let quorum = quorum_voters(voters)?;
        let mut node = Broker::prepare(extra_args, None)?;
        let process = node.process_mut()?;
        process.controller_port = Some(free_port()?);
        process.extra_args.extend([
            "--node-id".to_string(),
            node_id.to_string(),
            "--override".to_string(),
            format!("controller.quorum.voters={quorum}"),
        ]);
        Ok(node)
    }

    /// Starts the process again after [`Broker::stop`] or [`Broker::kill9`]
    /// without waiting for it to serve (a cluster node may wait for others).
    pub fn spawn_again(&mut self) -> Result<()> {
        self.process_mut()?.spawn_child()
    }

    /// Waits (bounded) until the process serves clients, or fails with its
    /// output if it exits first.
    pub fn wait_ready(&mut self) -> Result<()> {
        self.process_mut()?.wait_ready()
    }

    /// Waits (bounded) for the process to exit by itself; its exit status.
    pub fn wait_exit(&mut self, within: Duration) -> Result<ExitStatus> {
        let process = self.process_mut()?;
        let child = process.child.as_mut().context("no process")?;
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait()? {
                process.child = None;
                return Ok(status);
            }
            ensure!(
                started.elapsed() < within,
                "fjord still running after {within:?}"
            );
            thread::sleep(PROCESS_POLL_INTERVAL);
        }
    }

    /// `host:port` of the CONTROLLER listener, if the broker has one.
    pub fn controller_address(&self) -> Option<String> {
        let port = self.process.as_ref()?.controller_port?;
        Some(format!("127.0.0.1:{port}"))
    }

    fn spawn(extra_args: &[&str], nofile_limit: Option<u64>) -> Result<Broker> {
        let mut broker = Broker::prepare(extra_args, nofile_limit)?;
        if let Some(process) = broker.process.as_mut() {
            process.launch()?;
        }
        Ok(broker)
    }

    /// A broker handle whose process is not started yet.
    fn prepare(extra_args: &[&str], nofile_limit: Option<u64>) -> Result<Broker> {
        let bin = fjord_bin()?;
        let dir = tempfile::Builder::new()
            .prefix("fjord-it-")
            .tempdir()
            .context("creating the broker's temporary directory")?;
        let port = free_port()?;
        let process = BrokerProcess {
            bin,
            dir,
            port,
            controller_port: None,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            nofile_limit,
            child: None,
        };
        Ok(Broker {
            bootstrap: format!("127.0.0.1:{port}"),
            process: Some(process),
        })
    }

    /// `host:port` for clients' `bootstrap.servers`.
    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    /// True when testing an external broker (no process control).
    pub fn is_external(&self) -> bool {
        self.process.is_none()
    }

    /// Process id of the running `fjord`, if this handle owns one.
    pub fn pid(&self) -> Option<u32> {
        self.process
            .as_ref()
            .and_then(|p| p.child.as_ref())
            .map(|c| c.id())
    }

    /// Whether the broker is still up: for an owned process, that it has not
    /// exited; for an external broker, that it accepts a TCP connection.
    pub fn is_alive(&mut self) -> bool {
        match self.process.as_mut() {
            Some(p) => match p.child.as_mut() {
                Some(child) => matches!(child.try_wait(), Ok(None)),
                None => false,
            },
            None => match self.bootstrap.parse::<SocketAddr>() {
                Ok(addr) => TcpStream::connect_timeout(&addr, Duration::from_secs(5)).is_ok(),
                Err(_) => false,
            },
        }
    }

    /// Graceful stop: SIGTERM, then wait (bounded) for the process to exit.
    pub fn stop(&mut self) -> Result<ExitStatus> {
        self.process_mut()?.stop()
    }

    /// Crash stop: SIGKILL, then reap the process.
    pub fn kill9(&mut self) -> Result<()> {
        self.process_mut()?.kill9()
    }

    /// SIGSTOP, and waits until every thread of the process has stopped:
    /// the process is frozen, its sockets stay open.
    ///
    /// kill(2) returns before the process stops: the kernel hands a stop
    /// signal to one thread, which stops the others once it runs, and on a
    /// loaded machine the other threads go on working (answering peers)
    /// for milliseconds meanwhile. The parent learns of the completed stop
    /// through waitid(2) with `WSTOPPED`.
    pub fn pause(&mut self) -> Result<()> {
        self.signal(libc::SIGSTOP)?;
        let pid = self.pid().context("no running process to pause")?;
        let deadline = Instant::now() + PAUSE_WAIT_MAX;
        loop {
            // SAFETY: waitid(2) on a child this handle spawned, writing
            // into a zeroed siginfo_t it owns.
            let (rc, stopped) = unsafe {
                let mut info: libc::siginfo_t = std::mem::zeroed();
                let rc = libc::waitid(libc::P_PID, pid, &mut info, libc::WSTOPPED | libc::WNOHANG);
                (rc, info.si_pid() != 0)
            };
            ensure!(
                rc == 0,
                "waitid({pid}): {}",
                std::io::Error::last_os_error()
            );
            if stopped {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "process {pid} did not stop within {PAUSE_WAIT_MAX:?} of SIGSTOP"
            );
            thread::sleep(Duration::from_millis(1));
        }
    }

    /// SIGCONT after [`pause`](Self::pause).
    pub fn resume(&mut self) -> Result<()> {
        self.signal(libc::SIGCONT)
    }

    fn signal(&mut self, signal: libc::c_int) -> Result<()> {
        let pid = self.pid().context("no running process to signal")?;
        let pid = libc::pid_t::try_from(pid).context("pid")?;
        // SAFETY: kill(2) with a pid this handle spawned and still owns.
        let rc = unsafe { libc::kill(pid, signal) };
        ensure!(
            rc == 0,
            "kill({pid}, {signal}): {}",
            std::io::Error::last_os_error()
        );
        Ok(())
    }

    /// Stops the broker gracefully if it is running, then starts it again on
    /// the same data directory and port, and waits until it accepts
    /// connections.
    pub fn restart(&mut self) -> Result<()> {
        let process = self.process_mut()?;
        if process.child.is_some() {
            process.stop()?;
        }
        process.launch()
    }

    /// The broker's data directory (`--log-dirs`), if this handle owns a process.
    pub fn data_dir(&self) -> Option<PathBuf> {
        self.process.as_ref().map(|p| p.data_dir())
    }

    /// The last lines of the broker's output (empty for an external broker).
    pub fn log_tail(&self) -> String {
        self.process
            .as_ref()
            .map(|p| p.log_tail())
            .unwrap_or_default()
    }

    /// Peak resident memory of the broker process in KiB (`VmHWM`), if this
    /// handle owns a running process.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        let pid = self.pid()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    /// Descriptors the broker process has open now (`/proc/<pid>/fd`).
    pub fn open_fds(&self) -> Option<usize> {
        let pid = self.pid()?;
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .ok()
            .map(|entries| entries.count())
    }

    /// Everything the broker has written to stdout and stderr so far, across
    /// restarts (empty for an external broker).
    pub fn log_text(&self) -> String {
        let mut text = String::new();
        if let Some(p) = &self.process {
            if let Ok(mut f) = File::open(p.log_path()) {
                let _ = f.read_to_string(&mut text);
            }
        }
        text
    }

    fn process_mut(&mut self) -> Result<&mut BrokerProcess> {
        self.process
            .as_mut()
            .ok_or_else(|| anyhow!("no process control over external broker {}", self.bootstrap))
    }
}

/// `controller.quorum.voters` for `nodes` as node ids 1, 2, ...
fn quorum_voters(nodes: &[Broker]) -> Result<String> {
    Ok(nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            Ok(format!(
                "{}@{}",
                i + 1,
                n.controller_address().context("controller")?
            ))
        })
        .collect::<Result<Vec<_>>>()?
        .join(","))
}

impl Drop for Broker {
    fn drop(&mut self) {
        let Some(process) = self.process.as_mut() else {
            return;
        };
        if let Some(mut child) = process.child.take() {
            // SIGKILL: a test is over, its broker's shutdown is not under test.
            let _ = child.kill();
            let _ = child.wait();
        }
        if thread::panicking() {
            eprintln!(
                "---- fjord output (last {BROKER_LOG_TAIL_LINES} lines, {}) ----\n{}",
                process.log_path().display(),
                process.log_tail()
            );
        }
    }
}

impl BrokerProcess {
    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("fjord.log")
    }

    /// Spawns `fjord serve` and waits until its listener accepts connections.
    fn launch(&mut self) -> Result<()> {
        self.spawn_child()?;
        self.wait_ready()
    }

    /// Spawns `fjord serve` without waiting for it.
    fn spawn_child(&mut self) -> Result<()> {
        assert!(
            self.child.is_none(),
            "launching a broker that is still running"
        );
        std::fs::create_dir_all(self.data_dir())?;
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let mut cmd = Command::new(&self.bin);
        cmd.arg("serve")
            .arg("--listeners")
            .arg(match self.controller_port {
                Some(controller) => format!(
                    "PLAINTEXT://127.0.0.1:{},CONTROLLER://127.0.0.1:{controller}",
                    self.port
                ),
                None => format!("PLAINTEXT://127.0.0.1:{}", self.port),
            })
            .arg("--log-dirs")
            .arg(self.data_dir())
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if let Some(limit) = self.nofile_limit {
            use std::os::unix::process::CommandExt;
            let rlimit = libc::rlimit {
                rlim_cur: limit as libc::rlim_t,
                rlim_max: limit as libc::rlim_t,
            };
            // SAFETY: setrlimit is async-signal-safe and touches only the
            // child, between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &rlimit) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {:?}", self.bin))?;
        self.child = Some(child);
        Ok(())
    }

    fn wait_ready(&mut self) -> Result<()> {
        let addr: SocketAddr = ([127, 0, 0, 1], self.port).into();
        let started = Instant::now();
        loop {
            let child = self.child.as_mut().expect("wait_ready without a child");
            if let Some(status) = child.try_wait()? {
                self.child = None;
                bail!(
                    "fjord exited during start-up ({status}); output:\n{}",
                    self.log_tail()
                );
            }
            if TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok() {
                return Ok(());
            }
            if started.elapsed() > BROKER_READY_WAIT_MAX {
                bail!(
                    "fjord did not accept connections on {addr} within {BROKER_READY_WAIT_MAX:?}; output:\n{}",
                    self.log_tail()
                );
            }
            thread::sleep(PROCESS_POLL_INTERVAL);
        }
    }

    fn stop(&mut self) -> Result<ExitStatus> {
        let mut child = self
            .child
            .take()
            .ok_or_else(|| anyhow!("stop: broker is not running"))?;
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()
            .context("running kill -TERM")?;
        ensure!(
            status.success(),
            "kill -TERM {} failed: {status}",
            child.id()
        );
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if started.elapsed() > BROKER_STOP_WAIT_MAX {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "fjord did not exit within {BROKER_STOP_WAIT_MAX:?} of SIGTERM (killed it); output:\n{}",
                    self.log_tail()
                );
            }
            thread::sleep(PROCESS_POLL_INTERVAL);
        }
    }

    fn kill9(&mut self) -> Result<()> {
        let mut child = self
            .child
            .take()
            .ok_or_else(|| anyhow!("kill9: broker is not running"))?;
        child.kill().context("SIGKILL")?;
        child.wait().context("reaping killed broker")?;
        Ok(())
    }

    fn log_tail(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = File::open(self.log_path()) {
            let _ = f.read_to_string(&mut text);
        }
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(BROKER_LOG_TAIL_LINES);
        lines[from..].join("\n")
    }
}

fn external_bootstrap() -> Option<String> {
    std::env::var(EXTERNAL_BOOTSTRAP_ENV)
        .ok()
        .filter(|s| !s.trim().is_empty())
}

fn fjord_bin() -> Result<PathBuf> {
    if let Some(path) = option_env!("CARGO_BIN_EXE_fjord") {
        return Ok(PathBuf::from(path));
    }
    match std::env::var_os(FJORD_BIN_ENV) {
        Some(path) => Ok(PathBuf::from(path)),
        None => bail!(
            "no fjord binary: set {FJORD_BIN_ENV}=/path/to/fjord (or {EXTERNAL_BOOTSTRAP_ENV}=host:port)"
        ),
    }
}

/// Whether an external broker is configured, which a test that needs its
/// own process must skip (printing why).
fn skip_for_external(test_name: &str, needs: &str) -> bool {
    match external_bootstrap() {
        Some(bootstrap) => {
            eprintln!(
                "SKIP {test_name}: needs {needs}, but {EXTERNAL_BOOTSTRAP_ENV}={bootstrap} is set"
            );
            true
        }
        None => false,
    }
}

/// A port that was free a moment ago, below the kernel's ephemeral range
/// (32768–60999 by default): a broker restarted on its port after a kill
/// would otherwise find it taken now and then by some client's outgoing
/// connection, which the kernel numbers from that range (seen under CPU
/// load: "Address already in use"). Another process could still take it
/// before the broker binds; that shows up as a clear start-up failure. No
/// port is handed out twice by one test process.
fn free_port() -> Result<u16> {
    const FIRST: u16 = 20_000;
    const COUNT: u64 = 8_000; // up to 27999: clear of the compat tests' 28xxx
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut handed_out = HANDED_OUT
        .lock()
        .map_err(|_| anyhow!("port registry poisoned"))?;
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0)
        ^ (u64::from(std::process::id()) << 16);
    for i in 0..COUNT {
        let port = FIRST + ((seed.wrapping_add(i * 7_919)) % COUNT) as u16;
        if handed_out.contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            handed_out.push(port);
            return Ok(port);
        }
    }
    let listener = TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// A topic name no other test (or earlier run against an external broker)
/// uses.
pub fn unique_topic(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}-{}-{nanos}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Client settings shared by every rdkafka client in the tests.
pub fn client_config(bootstrap: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("broker.address.family", "v4")
        // Quick reconnects after a broker restart; the default backoff grows to 10 s.
        .set("reconnect.backoff.ms", "50")
        .set("reconnect.backoff.max.ms", "500");
    config
}

/// A producer with `acks=all` (librdkafka's default, set explicitly because
/// the durability tests depend on it) and the given extra settings.
pub fn producer(bootstrap: &str, extra: &[(&str, &str)]) -> Result<FutureProducer> {
    let mut config = client_config(bootstrap);
    config.set("acks", "all");
    for (k, v) in extra {
        config.set(*k, *v);
    }
    Ok(config.create()?)
}

/// Settings for a consumer that is given its partitions with `assign()` (a
/// group id is required by librdkafka but no group membership is used, and
/// nothing is committed) and checks record-batch CRCs.
pub fn consumer_config(bootstrap: &str, extra: &[(&str, &str)]) -> ClientConfig {
    let mut config = client_config(bootstrap);
    config
        .set("group.id", unique_topic("fjord-it-group"))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("check.crcs", "true");
    for (k, v) in extra {
        config.set(*k, *v);
    }
    config
}

/// Assigns partitions `0..partitions` of `topic`, each starting at `start`.
pub fn assign_all<C: Consumer<Ctx>, Ctx: ConsumerContext>(
    consumer: &C,
    topic: &str,
    partitions: i32,
    start: Offset,
) -> Result<()> {
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, start)?;
    }
    consumer.assign(&tpl)?;
    Ok(())
}

/// A [`consumer_config`] consumer with all partitions of `topic` assigned.
pub fn assigned_consumer(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    start: Offset,
    extra: &[(&str, &str)],
) -> Result<StreamConsumer> {
    let consumer: StreamConsumer = consumer_config(bootstrap, extra).create()?;
    assign_all(&consumer, topic, partitions, start)?;
    Ok(consumer)
}

/// Creates a topic and waits until metadata shows a leader for every
/// partition, so that the first produce does not race topic creation.
pub async fn create_topic(bootstrap: &str, topic: &str, partitions: i32) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = client_config(bootstrap).create()?;
    let options = AdminOptions::new().operation_timeout(Some(TOPIC_READY_WAIT_MAX));
    let new_topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let results = tokio::time::timeout(
        TOPIC_READY_WAIT_MAX,
        admin.create_topics([&new_topic], &options),
    )
    .await
    .context("CreateTopics timed out")??;
    for result in results {
        result.map_err(|(name, code)| anyhow!("creating topic {name}: {code:?}"))?;
    }
    let (bootstrap, topic) = (bootstrap.to_string(), topic.to_string());
    tokio::task::spawn_blocking(move || wait_topic_leaders(&bootstrap, &topic, partitions)).await?
}

fn wait_topic_leaders(bootstrap: &str, topic: &str, partitions: i32) -> Result<()> {
    let client: BaseConsumer = client_config(bootstrap).create()?;
    let started = Instant::now();
    loop {
        let metadata = client.fetch_metadata(Some(topic), METADATA_REQUEST_TIMEOUT);
        if let Ok(metadata) = metadata {
            let ready = metadata.topics().iter().any(|t| {
                t.name() == topic
                    && t.error().is_none()
                    && t.partitions().len() == partitions as usize
                    && t.partitions().iter().all(|p| p.leader() >= 0)
            });
            if ready {
                return Ok(());
            }
        }
        if started.elapsed() > TOPIC_READY_WAIT_MAX {
            bail!("topic {topic} has no leaders after {TOPIC_READY_WAIT_MAX:?}");
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// (low, high) watermarks of every partition of `topic`. Retries (bounded)
/// while the broker cannot answer yet, e.g. just after a restart while it
/// recovers its logs, or while a node has not yet heard which node leads a
/// partition it does not host (it names no leader then, as Kafka does), each
/// time with a new client: librdkafka asks for no new metadata for a
/// watermark query alone.
pub async fn watermarks(bootstrap: &str, topic: &str, partitions: i32) -> Result<Vec<(i64, i64)>> {
    let (bootstrap, topic) = (bootstrap.to_string(), topic.to_string());
    tokio::task::spawn_blocking(move || -> Result<Vec<(i64, i64)>> {
        let started = Instant::now();
        loop {
            let client: BaseConsumer = client_config(&bootstrap).create()?;
            let marks: Result<Vec<(i64, i64)>> = (0..partitions)
                .map(|p| {
                    client
                        .fetch_watermarks(&topic, p, METADATA_REQUEST_TIMEOUT)
                        .with_context(|| format!("watermarks of {topic}/{p}"))
                })
                .collect();
            match marks {
                Ok(marks) => return Ok(marks),
                Err(e) if started.elapsed() > TOPIC_READY_WAIT_MAX => return Err(e),
                Err(_) => thread::sleep(Duration::from_millis(100)),
            }
        }
    })
    .await?
}

/// One consumed record, owned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
}

/// Receives exactly `count` records within `wait_max` in total, failing on
/// any consumer error but a lost connection to a broker (librdkafka reports
/// it, to a node just killed, and reconnects or moves on by itself; a record
/// it then never delivers still fails the count).
pub async fn consume_count<C: ConsumerContext + 'static>(
    consumer: &StreamConsumer<C>,
    count: usize,
    wait_max: Duration,
) -> Result<Vec<Record>> {
    let deadline = tokio::time::Instant::now() + wait_max;
    let mut records = Vec::with_capacity(count);
    while records.len() < count {
        let received = tokio::time::timeout_at(deadline, consumer.recv())
            .await
            .map_err(|_| {
                anyhow!(
                    "received {} of {count} records within {wait_max:?}",
                    records.len()
                )
            })?;
        let message = match received {
            Err(KafkaError::MessageConsumption(
                code
                @ (RDKafkaErrorCode::BrokerTransportFailure | RDKafkaErrorCode::AllBrokersDown),
            )) => {
                eprintln!("consumer: {code} (librdkafka carries on)");
                continue;
            }
            other => other.context("consumer error")?,
        };
        records.push(Record {
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            value: message.payload().map(<[u8]>::to_vec),
        });
    }
    Ok(records)
}

/// Reads every partition of `topic` from offset 0 up to the high watermark
/// as of the call, within `wait_max`. Fails if a partition's log does not start
/// at 0 (nothing in these tests deletes records).
pub async fn consume_all(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    wait_max: Duration,
) -> Result<Vec<Record>> {
    let marks = watermarks(bootstrap, topic, partitions).await?;
    for (p, (low, _)) in marks.iter().enumerate() {
        ensure!(
            *low == 0,
            "partition {p} log start offset is {low}, expected 0"
        );
    }
    let total: i64 = marks.iter().map(|(low, high)| high - low).sum();
    let consumer = assigned_consumer(bootstrap, topic, partitions, Offset::Beginning, &[])?;
    let records = consume_count(&consumer, total as usize, wait_max).await?;
    for r in &records {
        let high = marks[r.partition as usize].1;
        ensure!(
            r.offset < high,
            "record at {}/{} is above the high watermark {high} read before consuming",
            r.partition,
            r.offset
        );
    }
    Ok(records)
}

/// Groups records by partition, in the order they were received.
pub fn by_partition(records: &[Record]) -> BTreeMap<i32, Vec<&Record>> {
    let mut map: BTreeMap<i32, Vec<&Record>> = BTreeMap::new();
    for r in records {
        map.entry(r.partition).or_default().push(r);
    }
    map
}

/// Asserts that within each partition the received offsets are
/// `first, first+1, first+2, ...` (no gap, no duplicate, no reordering).
pub fn assert_offsets_contiguous(records: &[Record], first_offset: i64) -> Result<()> {
    for (partition, rs) in by_partition(records) {
        for (i, r) in rs.iter().enumerate() {
            let expected = first_offset + i as i64;
            ensure!(
                r.offset == expected,
                "partition {partition}: record #{i} has offset {}, expected {expected}",
                r.offset
            );
        }
    }
    Ok(())
}

/// Test messages: the value carries a unique id (`id=00000042;` then
/// padding), the key is one of `keys` keys chosen by the id.
pub fn message_key(id: u64, keys: u64) -> String {
    format!("key-{:05}", id % keys)
}

/// Value of message `id`: a parseable id and ~100 bytes of compressible,
/// id-dependent padding so that every codec has something to do.
pub fn message_value(id: u64) -> String {
    format!(
        "id={id:010};payload={}",
        "fjord-integration-test-".repeat(3 + (id % 3) as usize)
    )
}

/// The id in a value made by [`message_value`].
pub fn parse_id(value: &[u8]) -> Result<u64> {
    let text = std::str::from_utf8(value).context("value is not UTF-8")?;
    let id = text
        .strip_prefix("id=")
        .and_then(|rest| rest.split(';').next())
        .ok_or_else(|| anyhow!("value {text:?} has no id"))?;
    Ok(id.parse()?)
}

/// What the broker acknowledged for one message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ack {
    pub id: u64,
    pub partition: i32,
    pub offset: i64,
}

/// Asserts that every acknowledged message is stored at exactly the partition
/// and offset its delivery report named, with the key and value that were
/// sent. Returns the number of acknowledged messages that are missing.
pub fn check_acks_present(acks: &[Ack], records: &[Record], keys: u64) -> Result<usize> {
    Ok(missing_acks(acks, records, keys)?.len())
}

/// [`check_acks_present`], naming the acknowledged messages that are missing.
fn missing_acks<'a>(acks: &'a [Ack], records: &[Record], keys: u64) -> Result<Vec<&'a Ack>> {
    let mut at: HashMap<(i32, i64), &Record> = HashMap::with_capacity(records.len());
    for r in records {
        ensure!(
            at.insert((r.partition, r.offset), r).is_none(),
            "offset {}/{} received twice",
            r.partition,
            r.offset
        );
    }
    // librdkafka acknowledges some messages without an offset (-1): an
    // idempotent producer whose request failed with an uncertain outcome (its
    // leader was killed) and whose next request succeeded knows the first
    // was persisted too, but not where ("implicitly acked"). Those are found
    // by their value, in their partition, and must be there exactly once.
    let mut by_value: HashMap<(i32, &[u8]), usize> = HashMap::new();
    if acks.iter().any(|a| a.offset < 0) {
        for r in records {
            *by_value
                .entry((r.partition, r.value.as_deref().unwrap_or_default()))
                .or_default() += 1;
        }
    }
    let mut missing = Vec::new();
    for ack in acks {
        if ack.offset < 0 {
            let value = message_value(ack.id);
            match by_value.get(&(ack.partition, value.as_bytes())) {
                None => missing.push(ack),
                Some(1) => {}
                Some(n) => bail!(
                    "message {} (acknowledged without an offset) is in {}/* {n} times",
                    ack.id,
                    ack.partition
                ),
            }
            continue;
        }
        let Some(r) = at.get(&(ack.partition, ack.offset)) else {
            missing.push(ack);
            continue;
        };
        let value = r.value.as_deref().unwrap_or_default();
        ensure!(
            value == message_value(ack.id).as_bytes(),
            "{}/{} holds {:?}, but message {} was acknowledged there",
            ack.partition,
            ack.offset,
            String::from_utf8_lossy(value),
            ack.id
        );
        ensure!(
            r.key.as_deref() == Some(message_key(ack.id, keys).as_bytes()),
            "{}/{}: key {:?} does not match message {}",
            ack.partition,
            ack.offset,
            r.key.as_deref().map(String::from_utf8_lossy),
            ack.id
        );
    }
    Ok(missing)
}

/// Asserts that, for every key, records appear in the order they were
/// produced (ids increase), all records of a key are in one partition.
pub fn assert_per_key_order(records: &[Record]) -> Result<()> {
    let mut last: HashMap<Vec<u8>, (i32, u64)> = HashMap::new();
    for (partition, rs) in by_partition(records) {
        for r in rs {
            let id = parse_id(r.value.as_deref().unwrap_or_default())?;
            let key = r.key.clone().unwrap_or_default();
            if let Some((p, prev)) = last.insert(key.clone(), (partition, id)) {
                ensure!(
                    p == partition,
                    "key {:?} is in partitions {p} and {partition}",
                    String::from_utf8_lossy(&key)
                );
                ensure!(
                    prev < id,
                    "key {:?} in partition {partition}: id {id} at offset {} after id {prev}",
                    String::from_utf8_lossy(&key),
                    r.offset
                );
            }
        }
    }
    Ok(())
}

/// Producer settings for sending a whole test's messages at once: the local
/// queue holds them all (so `send_result` never reports a full queue), and a
/// message that is not acknowledged within a minute is a failure.
pub const BULK_PRODUCER_SETTINGS: &[(&str, &str)] = &[
    ("linger.ms", "10"),
    ("queue.buffering.max.messages", "1000000"),
    ("queue.buffering.max.kbytes", "1048576"),
    ("message.timeout.ms", "60000"),
];

/// Sends messages `ids` (keys and values from [`message_key`] and
/// [`message_value`]) and waits for every delivery report; fails on the first
/// failed delivery. Acks come back in send order.
pub async fn produce_ids(
    producer: &FutureProducer,
    topic: &str,
    ids: std::ops::Range<u64>,
    keys: u64,
) -> Result<Vec<Ack>> {
    let mut pending = Vec::with_capacity((ids.end - ids.start) as usize);
    for id in ids {
        let key = message_key(id, keys);
        let value = message_value(id);
        let record = rdkafka::producer::FutureRecord::to(topic)
            .key(&key)
            .payload(&value);
        let delivery = producer
            .send_result(record)
            .map_err(|(e, _)| anyhow!("enqueueing message {id}: {e}"))?;
        pending.push((id, delivery));
    }
    let (ids, deliveries): (Vec<u64>, Vec<_>) = pending.into_iter().unzip();
    let results = futures::future::join_all(deliveries).await;
    ids.into_iter()
        .zip(results)
        .map(|(id, result)| {
            let delivery = result
                .map_err(|_| anyhow!("producer dropped message {id}"))?
                .map_err(|(e, _)| anyhow!("message {id} not delivered: {e}"))?;
            Ok(Ack {
                id,
                partition: delivery.partition,
                offset: delivery.offset,
            })
        })
        .collect()
}

/// Checks that `records` are exactly the acknowledged messages `acks` (every
/// ack present at its partition and offset, nothing else), that offsets are
/// contiguous from 0 and that each key's records are in produce order.
pub fn assert_exactly_acked(acks: &[Ack], records: &[Record], keys: u64) -> Result<()> {
    let missing = missing_acks(acks, records, keys)?;
    if !missing.is_empty() {
        // Name them, with how far each one's partition was read: an offset
        // past the end read, or inside it, tell different stories.
        let mut read_to: BTreeMap<i32, i64> = BTreeMap::new();
        for r in records {
            let end = read_to.entry(r.partition).or_insert(0);
            *end = (*end).max(r.offset + 1);
        }
        let named: Vec<String> = missing
            .iter()
            .take(10)
            .map(|a| {
                format!(
                    "message {} at {}/{} (partition read to {})",
                    a.id,
                    a.partition,
                    a.offset,
                    read_to.get(&a.partition).copied().unwrap_or(0)
                )
            })
            .collect();
        bail!(
            "{} of {} acknowledged messages are missing: {}",
            missing.len(),
            acks.len(),
            named.join(", ")
        );
    }
    if records.len() != acks.len() {
        // Name the records no acknowledgement accounts for: their offsets
        // and values tell a duplicate from a record that was never acked.
        let acked: std::collections::BTreeSet<(i32, i64)> =
            acks.iter().map(|a| (a.partition, a.offset)).collect();
        let acked_without_offset: std::collections::BTreeSet<(i32, Vec<u8>)> = acks
            .iter()
            .filter(|a| a.offset < 0)
            .map(|a| (a.partition, message_value(a.id).into_bytes()))
            .collect();
        let extra: Vec<String> = records
            .iter()
            .filter(|r| !acked.contains(&(r.partition, r.offset)))
            .filter(|r| {
                let value = r.value.clone().unwrap_or_default();
                !acked_without_offset.contains(&(r.partition, value))
            })
            .take(10)
            .map(|r| {
                let value = r.value.as_deref().unwrap_or_default();
                let shown = String::from_utf8_lossy(&value[..value.len().min(40)]).into_owned();
                // A copy of an acknowledged message (a duplicate) names
                // where its acknowledgement put it.
                let acked_at = parse_id(value)
                    .ok()
                    .and_then(|id| acks.iter().find(|a| a.id == id))
                    .map(|a| format!(" (message acknowledged at {}@{})", a.partition, a.offset))
                    .unwrap_or_default();
                format!("{}@{} {shown:?}{acked_at}", r.partition, r.offset)
            })
            .collect();
        bail!(
            "received {} records for {} acknowledged messages; not acknowledged: {}",
            records.len(),
            acks.len(),
            extra.join(", ")
        );
    }
    assert_offsets_contiguous(records, 0)?;
    assert_per_key_order(records)
}
