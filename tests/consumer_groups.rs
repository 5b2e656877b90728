//! Consumer groups (classic protocol: FindCoordinator, JoinGroup, SyncGroup,
//! Heartbeat, LeaveGroup, OffsetCommit, OffsetFetch) seen from stock clients:
//! sharing partitions, moving them away from a killed member, keeping
//! committed offsets across a broker restart, static membership, and fencing
//! of stale generations.
//!
//! Design decisions:
//! - Every member reports what happens to it (assignments, records, confirmed
//!   commits) into one [`GroupLog`] whose `watch` channel the test awaits, so
//!   waits are on events ("the three members share all partitions", "every
//!   partition is committed up to its end"), each under a bound, never sleeps.
//! - Members commit synchronously after processing (every [`COMMIT_EVERY`]
//!   records, when idle, and for revoked partitions in the revoke callback),
//!   so a graceful hand-off re-delivers nothing and any duplicate is a bug.
//! - The member that is killed runs in its own OS process: the test binary
//!   runs itself with `--exact group_member_child_process --ignored` and
//!   [`CHILD_ENV`] set, and that child reports over stdout (`@@` lines) and
//!   takes commands over stdin. A process's output written before SIGKILL is
//!   still in the pipe, so the test knows exactly what it consumed and which
//!   commits the broker confirmed to it.
//! - The stale-generation check speaks the protocol by hand (kafka-protocol
//!   message types), because no client library will send a stale generation
//!   on purpose.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context as _, Result};
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::Message;
use rdkafka::statistics::Statistics;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::watch;
use tokio::task::block_in_place;

use common::{
    client_config, create_topic, parse_id, produce_ids, producer, unique_topic, Ack, Broker,
    Record, BULK_PRODUCER_SETTINGS, METADATA_REQUEST_TIMEOUT, TOPIC_READY_WAIT_MAX,
};

/// `session.timeout.ms` of the members: Kafka's smallest allowed value by
/// default (`group.min.session.timeout.ms`), so that a dead member is noticed
/// quickly.
const SESSION_TIMEOUT_MS: u64 = 6_000;
/// `heartbeat.interval.ms`: how soon a live member learns of a rebalance.
const HEARTBEAT_INTERVAL_MS: u64 = 500;
/// A member commits after this many processed records (and whenever it is
/// idle, and in its revoke callback).
const COMMIT_EVERY: usize = 500;
/// How long one `poll` of a member may block; a member checks its stop flag
/// between polls, so this bounds how long stopping takes.
const MEMBER_POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Keys of the test messages (ids are spread over partitions by key).
const KEYS: u64 = 100;
/// Broker settings for `fjord`: no initial rebalance delay (Kafka's default
/// of 3 s only slows the tests; the Kafka of `scripts/kafka-server` runs with
/// 0 too). An external broker runs with its own settings.
const BROKER_ARGS: &[&str] = &["--override", "group.initial.rebalance.delay.ms=0"];

/// Bound for a group to form or rebalance (joins, the broker's initial
/// rebalance delay, syncs) on a loaded 2-core machine with a debug broker.
const GROUP_FORM_WAIT_MAX: Duration = Duration::from_secs(60);
/// Bound for a group to consume and commit everything produced so far.
const CONSUME_WAIT_MAX: Duration = Duration::from_secs(120);
/// Bound for a member thread or process to close (LeaveGroup included).
const MEMBER_CLOSE_WAIT_MAX: Duration = Duration::from_secs(30);

/// Environment variable that makes [`group_member_child_process`] act as a
/// group member: `bootstrap<TAB>topic<TAB>group`.
const CHILD_ENV: &str = "FJORD_TEST_GROUP_CHILD";
/// Name of the test function the child process runs.
const CHILD_TEST_NAME: &str = "group_member_child_process";
/// Line prefix of the child's reports on stdout (libtest prints there too).
const CHILD_LINE_MARK: &str = "@@";

// ---------------------------------------------------------------------------
// What members report, and where the test waits for it.
// ---------------------------------------------------------------------------

/// One record delivered to a member.
#[derive(Clone, Copy, Debug)]
struct Delivery {
    member: usize,
    partition: i32,
    offset: i64,
    id: u64,
}

/// What the test knows about one member.
#[derive(Clone, Debug, Default)]
struct MemberView {
    /// Partitions currently assigned.
    assignment: BTreeSet<i32>,
    /// Assign callbacks so far.
    assigns: u32,
    /// Revoke callbacks so far.
    revokes: u32,
    /// Records delivered so far.
    delivered: usize,
    /// Offset of the last record delivered, per partition.
    last_delivered: BTreeMap<i32, i64>,
    /// Last offset the broker confirmed committed by this member, per partition.
    committed: BTreeMap<i32, i64>,
    /// Heartbeat requests sent (from librdkafka statistics, if enabled).
    heartbeats: i64,
    /// librdkafka's own count of rebalances (assign + revoke), from statistics.
    client_rebalances: i64,
    /// The member has stopped committing (child processes, on command).
    holding: bool,
    /// The member has closed (or its process's output ended).
    closed: bool,
    /// Failed commits, rebalance errors, unparseable records.
    errors: Vec<String>,
}

/// Everything the members of one test report.
struct GroupLog {
    view: watch::Sender<Vec<MemberView>>,
    /// Every delivery, in the order the test learnt of it.
    deliveries: Mutex<Vec<Delivery>>,
}

impl GroupLog {
    fn new(members: usize) -> Arc<GroupLog> {
        Arc::new(GroupLog {
            view: watch::Sender::new(vec![MemberView::default(); members]),
            deliveries: Mutex::new(Vec::new()),
        })
    }

    fn update(&self, member: usize, f: impl FnOnce(&mut MemberView)) {
        self.view.send_modify(|views| f(&mut views[member]));
    }

    fn snapshot(&self) -> Vec<MemberView> {
        self.view.borrow().clone()
    }

    fn deliveries(&self) -> Vec<Delivery> {
        self.deliveries
            .lock()
            .expect("delivery log poisoned")
            .clone()
    }

    /// Waits until `condition` holds for the members' views.
    async fn wait_for(
        &self,
        what: &str,
        wait_max: Duration,
        mut condition: impl FnMut(&[MemberView]) -> bool,
    ) -> Result<()> {
        let mut rx = self.view.subscribe();
        let waited = tokio::time::timeout(wait_max, async {
            rx.wait_for(|views| condition(views)).await.map(|_| ())
        })
        .await;
        match waited {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => bail!("member views closed while waiting for {what}"),
            Err(_) => bail!(
                "no {what} within {wait_max:?}; members:\n{}",
                summary(&self.snapshot())
            ),
        }
    }
}

fn summary(views: &[MemberView]) -> String {
    views
        .iter()
        .enumerate()
        .map(|(i, v)| {
            format!(
                "  member {i}: assignment {:?}, assigns {}, revokes {}, delivered {}, \
                 committed {:?}, heartbeats {}, holding {}, closed {}, errors {:?}",
                v.assignment,
                v.assigns,
                v.revokes,
                v.delivered,
                v.committed,
                v.heartbeats,
                v.holding,
                v.closed,
                v.errors
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// True when each of `members` holds at least one partition, no partition is
/// held twice, and together they hold `0..partitions`.
fn members_share_all(views: &[MemberView], members: &[usize], partitions: i32) -> bool {
    let mut held = BTreeSet::new();
    for &m in members {
        let assignment = &views[m].assignment;
        if assignment.is_empty() || !assignment.iter().all(|p| held.insert(*p)) {
            return false;
        }
    }
    held == (0..partitions).collect()
}

/// The highest offset of `partition` the broker confirmed to any of `members`.
fn committed_max(views: &[MemberView], members: &[usize], partition: i32) -> Option<i64> {
    members
        .iter()
        .filter_map(|&m| views[m].committed.get(&partition).copied())
        .max()
}

/// True when every partition is committed (by one of `members`) up to its
/// log end in `ends`.
fn committed_to_ends(views: &[MemberView], members: &[usize], ends: &[i64]) -> bool {
    ends.iter().enumerate().all(|(p, &end)| {
        end == 0 || committed_max(views, members, p as i32).is_some_and(|c| c >= end)
    })
}

/// Log end offset of each partition, from delivery reports (every message of
/// the topic was produced by the test, so the acks cover each log).
fn log_ends(acks: &[Ack], partitions: i32) -> Vec<i64> {
    let mut ends = vec![0i64; partitions as usize];
    for a in acks {
        let end = &mut ends[a.partition as usize];
        *end = (*end).max(a.offset + 1);
    }
    ends
}

/// Where a member reports what happens to it: into a [`GroupLog`] (members
/// in the test process) or as lines on stdout (a child process).
trait MemberEvents: Send + Sync + 'static {
    fn assigned(&self, partitions: &BTreeSet<i32>);
    fn revoked(&self, partitions: &BTreeSet<i32>);
    fn delivered(&self, partition: i32, offset: i64, id: u64);
    fn committed(&self, offsets: &BTreeMap<i32, i64>);
    fn holding(&self);
    fn stats(&self, heartbeats: i64, client_rebalances: i64);
    fn error(&self, what: String);
    fn closed(&self);
}

struct LogEvents {
    log: Arc<GroupLog>,
    member: usize,
}

impl MemberEvents for LogEvents {
    fn assigned(&self, partitions: &BTreeSet<i32>) {
        self.log.update(self.member, |v| {
            v.assignment.extend(partitions);
            v.assigns += 1;
        });
    }

    fn revoked(&self, partitions: &BTreeSet<i32>) {
        self.log.update(self.member, |v| {
            v.assignment.retain(|p| !partitions.contains(p));
            v.revokes += 1;
        });
    }

    fn delivered(&self, partition: i32, offset: i64, id: u64) {
        self.log
            .deliveries
            .lock()
            .expect("delivery log poisoned")
            .push(Delivery {
                member: self.member,
                partition,
                offset,
                id,
            });
        self.log.update(self.member, |v| {
            v.delivered += 1;
            v.last_delivered.insert(partition, offset);
        });
    }

    fn committed(&self, offsets: &BTreeMap<i32, i64>) {
        self.log
            .update(self.member, |v| v.committed.extend(offsets));
    }

    fn holding(&self) {
        self.log.update(self.member, |v| v.holding = true);
    }

    fn stats(&self, heartbeats: i64, client_rebalances: i64) {
        self.log.update(self.member, |v| {
            v.heartbeats = heartbeats;
            v.client_rebalances = client_rebalances;
        });
    }

    fn error(&self, what: String) {
        eprintln!("member {}: {what}", self.member);
        self.log.update(self.member, |v| v.errors.push(what));
    }

    fn closed(&self) {
        self.log.update(self.member, |v| v.closed = true);
    }
}

/// The child process's reports: one `@@`-prefixed line per event, flushed at
/// once so that nothing is lost when the process is killed.
struct StdoutEvents;

impl StdoutEvents {
    fn line(&self, text: std::fmt::Arguments<'_>) {
        let mut out = std::io::stdout().lock();
        // If the parent is gone there is nobody to report to; ignore.
        let _ = writeln!(out, "{CHILD_LINE_MARK}{text}");
        let _ = out.flush();
    }
}

fn join_partitions(partitions: &BTreeSet<i32>) -> String {
    partitions
        .iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

impl MemberEvents for StdoutEvents {
    fn assigned(&self, partitions: &BTreeSet<i32>) {
        self.line(format_args!("ASSIGN {}", join_partitions(partitions)));
    }

    fn revoked(&self, partitions: &BTreeSet<i32>) {
        self.line(format_args!("REVOKE {}", join_partitions(partitions)));
    }

    fn delivered(&self, partition: i32, offset: i64, id: u64) {
        self.line(format_args!("MSG {partition} {offset} {id}"));
    }

    fn committed(&self, offsets: &BTreeMap<i32, i64>) {
        let list: Vec<String> = offsets.iter().map(|(p, o)| format!("{p}:{o}")).collect();
        self.line(format_args!("COMMIT {}", list.join(",")));
    }

    fn holding(&self) {
        self.line(format_args!("HOLD"));
    }

    fn stats(&self, _heartbeats: i64, _client_rebalances: i64) {}

    fn error(&self, what: String) {
        self.line(format_args!("ERROR {}", what.replace('\n', " ")));
    }

    fn closed(&self) {
        self.line(format_args!("CLOSED"));
    }
}

/// Parses one child report (the text after [`CHILD_LINE_MARK`]) into events.
fn apply_child_line(events: &LogEvents, line: &str) -> Result<()> {
    let (kind, rest) = line.split_once(' ').unwrap_or((line, ""));
    let partitions = |text: &str| -> Result<BTreeSet<i32>> {
        text.split(',')
            .filter(|s| !s.is_empty())
            .map(|s| s.parse::<i32>().map_err(Into::into))
            .collect()
    };
    match kind {
        "ASSIGN" => events.assigned(&partitions(rest)?),
        "REVOKE" => events.revoked(&partitions(rest)?),
        "MSG" => {
            let fields: Vec<&str> = rest.split(' ').collect();
            ensure!(fields.len() == 3, "bad MSG line {line:?}");
            events.delivered(fields[0].parse()?, fields[1].parse()?, fields[2].parse()?);
        }
        "COMMIT" => {
            let mut offsets = BTreeMap::new();
            for pair in rest.split(',').filter(|s| !s.is_empty()) {
                let (p, o) = pair
                    .split_once(':')
                    .ok_or_else(|| anyhow!("bad COMMIT line {line:?}"))?;
                offsets.insert(p.parse()?, o.parse()?);
            }
            events.committed(&offsets);
        }
        "HOLD" => events.holding(),
        "ERROR" => events.error(rest.to_string()),
        "CLOSED" => {}
        _ => bail!("unknown child report {line:?}"),
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// A group member: subscribe, process, commit after processing.
// ---------------------------------------------------------------------------

/// Consumer settings of a group member with manual commits.
fn member_config(bootstrap: &str, group: &str, extra: &[(&str, &str)]) -> ClientConfig {
    let mut config = client_config(bootstrap);
    config
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", SESSION_TIMEOUT_MS.to_string())
        .set("heartbeat.interval.ms", HEARTBEAT_INTERVAL_MS.to_string())
        .set("check.crcs", "true");
    for (k, v) in extra {
        config.set(*k, *v);
    }
    config
}

struct MemberContext<E: MemberEvents> {
    events: E,
    topic: String,
    /// Offset after the last processed record, per assigned partition.
    processed: Mutex<BTreeMap<i32, i64>>,
    /// While set, the member commits nothing (not even on revoke).
    hold_commits: Arc<AtomicBool>,
}

impl<E: MemberEvents> MemberContext<E> {
    fn new(events: E, topic: &str, hold_commits: Arc<AtomicBool>) -> Self {
        MemberContext {
            events,
            topic: topic.to_string(),
            processed: Mutex::new(BTreeMap::new()),
            hold_commits,
        }
    }

    /// Commits synchronously what has been processed of `only` (or of every
    /// partition) and reports the confirmed offsets.
    fn commit_processed(&self, consumer: &BaseConsumer<Self>, only: Option<&BTreeSet<i32>>) {
        if self.hold_commits.load(Ordering::SeqCst) {
            return;
        }
        let offsets: BTreeMap<i32, i64> = self
            .processed
            .lock()
            .expect("processed offsets poisoned")
            .iter()
            .filter(|(p, _)| only.is_none_or(|only| only.contains(p)))
            .map(|(p, o)| (*p, *o))
            .collect();
        if offsets.is_empty() {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        for (p, o) in &offsets {
            if let Err(e) = tpl.add_partition_offset(&self.topic, *p, Offset::Offset(*o)) {
                self.events
                    .error(format!("building commit {offsets:?}: {e}"));
                return;
            }
        }
        match consumer.commit(&tpl, CommitMode::Sync) {
            Ok(()) => self.events.committed(&offsets),
            Err(e) => self.events.error(format!("commit {offsets:?} failed: {e}")),
        }
    }
}

fn partitions_of(tpl: &TopicPartitionList) -> BTreeSet<i32> {
    tpl.elements().iter().map(|e| e.partition()).collect()
}

impl<E: MemberEvents> ClientContext for MemberContext<E> {
    fn stats(&self, statistics: Statistics) {
        let heartbeats = statistics
            .brokers
            .values()
            .map(|b| b.req.get("Heartbeat").copied().unwrap_or(0))
            .sum();
        let rebalances = statistics.cgrp.as_ref().map_or(0, |c| c.rebalance_cnt);
        self.events.stats(heartbeats, rebalances);
    }
}

impl<E: MemberEvents> ConsumerContext for MemberContext<E> {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            // Commit what was processed before the partitions go to another
            // member, so that it starts right after it.
            let revoked = partitions_of(tpl);
            self.commit_processed(consumer, Some(&revoked));
            self.processed
                .lock()
                .expect("processed offsets poisoned")
                .retain(|p, _| !revoked.contains(p));
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => self.events.assigned(&partitions_of(tpl)),
            Rebalance::Revoke(tpl) => self.events.revoked(&partitions_of(tpl)),
            Rebalance::Error(e) => self.events.error(format!("rebalance error: {e}")),
        }
    }
}

/// The poll loop of a member, until `stop` is set: report each record as
/// processed, commit every [`COMMIT_EVERY`] records and when idle, then close
/// (which revokes, committing in the callback, and leaves the group unless
/// the member is static).
fn run_member<E: MemberEvents>(
    consumer: BaseConsumer<MemberContext<E>>,
    stop: &AtomicBool,
) -> Result<()> {
    let context = Arc::clone(consumer.context());
    let mut uncommitted = 0usize;
    let mut hold_reported = false;
    while !stop.load(Ordering::SeqCst) {
        if !hold_reported && context.hold_commits.load(Ordering::SeqCst) {
            // From here on nothing is committed (commits happen only on this
            // thread, in this loop or in callbacks this loop's poll runs).
            context.events.holding();
            hold_reported = true;
        }
        match consumer.poll(MEMBER_POLL_INTERVAL) {
            Some(Ok(message)) => {
                let (partition, offset) = (message.partition(), message.offset());
                match parse_id(message.payload().unwrap_or_default()) {
                    Ok(id) => context.events.delivered(partition, offset, id),
                    Err(e) => context
                        .events
                        .error(format!("record {partition}/{offset}: {e}")),
                }
                context
                    .processed
                    .lock()
                    .expect("processed offsets poisoned")
                    .insert(partition, offset + 1);
                uncommitted += 1;
                if uncommitted >= COMMIT_EVERY {
                    context.commit_processed(&consumer, None);
                    uncommitted = 0;
                }
            }
            // Transient errors (a broker connection dropped, ...) are retried
            // by librdkafka; what matters is what is delivered and committed.
            Some(Err(e)) => eprintln!("poll: {e}"),
            None => {
                if uncommitted > 0 {
                    context.commit_processed(&consumer, None);
                    uncommitted = 0;
                }
            }
        }
    }
    if uncommitted > 0 {
        context.commit_processed(&consumer, None);
    }
    drop(consumer);
    context.events.closed();
    Ok(())
}

/// A member running on a thread of the test process.
struct Member {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<Result<()>>>,
}

impl Member {
    fn start(
        log: &Arc<GroupLog>,
        index: usize,
        config: &ClientConfig,
        topic: &str,
    ) -> Result<Member> {
        let events = LogEvents {
            log: Arc::clone(log),
            member: index,
        };
        let context = MemberContext::new(events, topic, Arc::new(AtomicBool::new(false)));
        let consumer: BaseConsumer<MemberContext<LogEvents>> =
            config.create_with_context(context)?;
        consumer.subscribe(&[topic])?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = thread::Builder::new()
            .name(format!("member-{index}"))
            .spawn({
                let stop = Arc::clone(&stop);
                move || run_member(consumer, &stop)
            })?;
        Ok(Member {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops polling and closes the consumer (blocking; bounded by
    /// [`MEMBER_CLOSE_WAIT_MAX`]).
    fn stop(mut self) -> Result<()> {
        self.stop.store(true, Ordering::SeqCst);
        let thread = self.thread.take().expect("member stopped twice");
        let started = Instant::now();
        while !thread.is_finished() {
            ensure!(
                started.elapsed() < MEMBER_CLOSE_WAIT_MAX,
                "member did not close within {MEMBER_CLOSE_WAIT_MAX:?}"
            );
            thread::sleep(Duration::from_millis(20));
        }
        thread
            .join()
            .map_err(|_| anyhow!("member thread panicked"))?
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        // A failing test: let the thread close its consumer on its own.
        self.stop.store(true, Ordering::SeqCst);
    }
}

async fn stop_members(members: Vec<Member>) -> Result<()> {
    block_in_place(|| members.into_iter().try_for_each(Member::stop))
}

/// Fails if any member reported an error.
fn ensure_no_member_errors(views: &[MemberView]) -> Result<()> {
    ensure!(
        views.iter().all(|v| v.errors.is_empty()),
        "members reported errors:\n{}",
        summary(views)
    );
    Ok(())
}

/// Committed offset and metadata of partitions `0..partitions` of `topic` for
/// `group`, as an OffsetFetch from a client that is not a member sees them
/// (`None`: nothing committed). Retries (bounded) while the coordinator
/// cannot answer yet, e.g. just after a broker restart.
async fn fetch_committed(
    bootstrap: &str,
    group: &str,
    topic: &str,
    partitions: i32,
) -> Result<Vec<Option<(i64, String)>>> {
    let (bootstrap, group, topic) = (bootstrap.to_string(), group.to_string(), topic.to_string());
    tokio::task::spawn_blocking(move || {
        let mut config = client_config(&bootstrap);
        config.set("group.id", &group);
        let client: BaseConsumer = config.create()?;
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition(&topic, p);
        }
        let started = Instant::now();
        loop {
            let attempt = client
                .committed_offsets(tpl.clone(), METADATA_REQUEST_TIMEOUT)
                .map_err(anyhow::Error::from)
                .and_then(|committed| {
                    let mut out = vec![None; partitions as usize];
                    for e in committed.elements_for_topic(&topic) {
                        e.error().with_context(|| {
                            format!("committed offset of {topic}/{}", e.partition())
                        })?;
                        out[e.partition() as usize] = match e.offset() {
                            Offset::Offset(o) => Some((o, e.metadata().to_string())),
                            _ => None,
                        };
                    }
                    Ok(out)
                });
            match attempt {
                Ok(out) => return Ok(out),
                Err(e) if started.elapsed() > TOPIC_READY_WAIT_MAX => {
                    return Err(e.context(format!("OffsetFetch for group {group}")))
                }
                Err(_) => thread::sleep(Duration::from_millis(100)),
            }
        }
    })
    .await?
}

// ---------------------------------------------------------------------------
// 1. Three members share a topic.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_share_six_partitions_and_read_each_record_exactly_once() -> Result<()> {
    const MESSAGES: u64 = 60_000;
    const PARTITIONS: i32 = 6;
    const MEMBERS: usize = 3;
    let broker = Broker::start_with(BROKER_ARGS)?;
    let bootstrap = broker.bootstrap();
    let topic = unique_topic("group-share");
    let group = unique_topic("group-share");
    create_topic(bootstrap, &topic, PARTITIONS).await?;

    let started = Instant::now();
    let log = GroupLog::new(MEMBERS);
    let config = member_config(bootstrap, &group, &[]);
    let members = (0..MEMBERS)
        .map(|i| Member::start(&log, i, &config, &topic))
        .collect::<Result<Vec<_>>>()?;
    let all: Vec<usize> = (0..MEMBERS).collect();
    log.wait_for(
        "group of 3 members sharing all 6 partitions",
        GROUP_FORM_WAIT_MAX,
        |v| members_share_all(v, &all, PARTITIONS),
    )
    .await?;
    let formed = started.elapsed();
    let shares: Vec<BTreeSet<i32>> = log.snapshot().into_iter().map(|v| v.assignment).collect();

    // Produced once the group is stable, so that each record has one owner.
    let acks = {
        let producer = producer(bootstrap, BULK_PRODUCER_SETTINGS)?;
        produce_ids(&producer, &topic, 0..MESSAGES, KEYS).await?
    };
    let ends = log_ends(&acks, PARTITIONS);
    log.wait_for(
        "commit of every partition up to its log end",
        CONSUME_WAIT_MAX,
        |v| committed_to_ends(v, &all, &ends),
    )
    .await?;
    let consumed = started.elapsed();
    stop_members(members).await?;
    let views = log.snapshot();
    ensure_no_member_errors(&views)?;
    eprintln!(
        "group formed in {formed:?}, {MESSAGES} records consumed and committed after {consumed:?}; \
         per member (records, partitions): {:?}",
        views
            .iter()
            .zip(&shares)
            .map(|(v, partitions)| (v.delivered, partitions))
            .collect::<Vec<_>>()
    );

    // Each id exactly once, each at the partition and offset it was stored at.
    let deliveries = log.deliveries();
    let ack_at: HashMap<(i32, i64), u64> = acks
        .iter()
        .map(|a| ((a.partition, a.offset), a.id))
        .collect();
    let mut seen = HashSet::with_capacity(deliveries.len());
    for d in &deliveries {
        ensure!(
            ack_at.get(&(d.partition, d.offset)) == Some(&d.id),
            "member {} got id {} at {}/{}, where id {:?} was stored",
            d.member,
            d.id,
            d.partition,
            d.offset,
            ack_at.get(&(d.partition, d.offset))
        );
        ensure!(
            seen.insert(d.id),
            "id {} delivered twice (second time to member {} at {}/{})",
            d.id,
            d.member,
            d.partition,
            d.offset
        );
    }
    ensure!(
        deliveries.len() == acks.len(),
        "{} of {} records delivered",
        deliveries.len(),
        acks.len()
    );
    // Per partition, in delivery order: offsets 0, 1, 2, ... (no gap, no
    // duplicate, no reordering).
    let mut next = vec![0i64; PARTITIONS as usize];
    for d in &deliveries {
        let expected = &mut next[d.partition as usize];
        ensure!(
            d.offset == *expected,
            "partition {}: offset {} delivered (to member {}) when {} was next",
            d.partition,
            d.offset,
            d.member,
            expected
        );
        *expected += 1;
    }

    // What the group committed is what a new member would resume from.
    let committed = fetch_committed(bootstrap, &group, &topic, PARTITIONS).await?;
    for (p, end) in ends.iter().enumerate() {
        ensure!(
            committed[p].as_ref().map(|c| c.0) == Some(*end),
            "partition {p}: committed {:?}, log end {end}",
            committed[p]
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// 2. A member's process is killed.
// ---------------------------------------------------------------------------

/// A group member running in a child process (see the module documentation).
struct ChildMember {
    child: Child,
    stdin: Option<ChildStdin>,
    reader: Option<thread::JoinHandle<()>>,
}

impl ChildMember {
    fn spawn(
        log: &Arc<GroupLog>,
        index: usize,
        bootstrap: &str,
        topic: &str,
        group: &str,
    ) -> Result<Self> {
        let exe = std::env::current_exe().context("locating the test binary")?;
        let mut child = Command::new(exe)
            .args([
                CHILD_TEST_NAME,
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, format!("{bootstrap}\t{topic}\t{group}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("spawning a member process")?;
        let stdout = child.stdout.take().expect("piped stdout");
        let events = LogEvents {
            log: Arc::clone(log),
            member: index,
        };
        let reader = thread::Builder::new()
            .name(format!("member-{index}-stdout"))
            .spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    // libtest may print "test name ... " on the same line.
                    if let Some((_, report)) = line.split_once(CHILD_LINE_MARK) {
                        if let Err(e) = apply_child_line(&events, report) {
                            events.error(format!("{e:#}"));
                        }
                    }
                }
                events.closed();
            })?;
        Ok(ChildMember {
            stdin: child.stdin.take(),
            child,
            reader: Some(reader),
        })
    }

    fn command(&mut self, command: &str) -> Result<()> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| anyhow!("member's stdin already closed"))?;
        writeln!(stdin, "{command}")?;
        stdin.flush()?;
        Ok(())
    }

    fn kill9(&mut self) -> Result<()> {
        self.child.kill().context("SIGKILL")?;
        self.child.wait().context("reaping the killed member")?;
        Ok(())
    }

    /// Closes the member's stdin (its signal to close) and waits, bounded,
    /// for a successful exit and the end of its output.
    fn finish(mut self) -> Result<()> {
        drop(self.stdin.take());
        let started = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait()? {
                break status;
            }
            ensure!(
                started.elapsed() < MEMBER_CLOSE_WAIT_MAX,
                "member process {} did not exit within {MEMBER_CLOSE_WAIT_MAX:?}",
                self.child.id()
            );
            thread::sleep(Duration::from_millis(20));
        };
        ensure!(status.success(), "member process exited with {status}");
        if let Some(reader) = self.reader.take() {
            reader
                .join()
                .map_err(|_| anyhow!("member output reader panicked"))?;
        }
        Ok(())
    }
}

impl Drop for ChildMember {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Not a test: the group member that [`ChildMember::spawn`] runs in a child
/// process. Reports on stdout; `hold` on stdin stops its commits, end of
/// stdin closes it.
#[test]
#[ignore = "helper run as a child process by killed_member_partitions_move_to_survivors_which_resume_at_its_committed_offsets"]
fn group_member_child_process() -> Result<()> {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        eprintln!("{CHILD_ENV} is not set: nothing to do (this is a helper, not a test)");
        return Ok(());
    };
    let fields: Vec<&str> = spec.split('\t').collect();
    let [bootstrap, topic, group] = fields[..] else {
        bail!("{CHILD_ENV}={spec:?}: expected bootstrap, topic and group");
    };
    // Separates the reports from libtest's "test name ... " prefix.
    println!();
    let hold = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    thread::spawn({
        let (hold, stop) = (Arc::clone(&hold), Arc::clone(&stop));
        move || {
            for line in std::io::stdin().lock().lines() {
                match line.as_deref().map(str::trim) {
                    Ok("hold") => hold.store(true, Ordering::SeqCst),
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            stop.store(true, Ordering::SeqCst);
        }
    });
    let context = MemberContext::new(StdoutEvents, topic, hold);
    let consumer: BaseConsumer<MemberContext<StdoutEvents>> =
        member_config(bootstrap, group, &[]).create_with_context(context)?;
    consumer.subscribe(&[topic])?;
    run_member(consumer, &stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_member_partitions_move_to_survivors_which_resume_at_its_committed_offsets(
) -> Result<()> {
    const PARTITIONS: i32 = 6;
    const PHASE: u64 = 3_000;
    const VICTIM: usize = 0;
    const SURVIVORS: [usize; 2] = [1, 2];
    let broker = Broker::start_with(BROKER_ARGS)?;
    let bootstrap = broker.bootstrap();
    let topic = unique_topic("group-kill");
    let group = unique_topic("group-kill");
    create_topic(bootstrap, &topic, PARTITIONS).await?;
    let producer = producer(bootstrap, BULK_PRODUCER_SETTINGS)?;

    let log = GroupLog::new(3);
    let mut children = (0..3)
        .map(|i| ChildMember::spawn(&log, i, bootstrap, &topic, &group))
        .collect::<Result<Vec<_>>>()?;
    log.wait_for(
        "group of 3 member processes sharing all 6 partitions",
        GROUP_FORM_WAIT_MAX,
        |v| members_share_all(v, &[0, 1, 2], PARTITIONS),
    )
    .await?;
    let victim_partitions = log.snapshot()[VICTIM].assignment.clone();

    // Phase 1: consumed and committed by everyone.
    let mut acks = produce_ids(&producer, &topic, 0..PHASE, KEYS).await?;
    let ends_1 = log_ends(&acks, PARTITIONS);
    log.wait_for("commit of phase 1", CONSUME_WAIT_MAX, |v| {
        committed_to_ends(v, &[0, 1, 2], &ends_1)
    })
    .await?;

    // Phase 2: the victim stops committing first, so what it consumes now is
    // processed but uncommitted when it dies.
    children[VICTIM].command("hold")?;
    log.wait_for("victim to stop committing", GROUP_FORM_WAIT_MAX, |v| {
        v[VICTIM].holding
    })
    .await?;
    acks.extend(produce_ids(&producer, &topic, PHASE..2 * PHASE, KEYS).await?);
    let ends_2 = log_ends(&acks, PARTITIONS);
    log.wait_for(
        "phase 2 consumed (victim) and committed (survivors)",
        CONSUME_WAIT_MAX,
        |v| {
            (0..PARTITIONS).all(|p| {
                let end = ends_2[p as usize];
                if victim_partitions.contains(&p) {
                    end == 0 || v[VICTIM].last_delivered.get(&p) == Some(&(end - 1))
                } else {
                    end == 0 || committed_max(v, &SURVIVORS, p).is_some_and(|c| c >= end)
                }
            })
        },
    )
    .await?;
    let at_kill = log.snapshot();
    ensure_no_member_errors(&at_kill)?;
    ensure!(
        at_kill[VICTIM].assignment == victim_partitions,
        "the victim's assignment changed before the kill:\n{}",
        summary(&at_kill)
    );
    // The group's committed offset of each partition at the kill.
    let committed_at_kill: Vec<i64> = (0..PARTITIONS)
        .map(|p| committed_max(&at_kill, &[0, 1, 2], p).unwrap_or(0))
        .collect();
    let uncommitted: i64 = victim_partitions
        .iter()
        .map(|&p| ends_2[p as usize] - committed_at_kill[p as usize])
        .sum();
    ensure!(
        uncommitted > 0,
        "the victim has no uncommitted records; the test would prove nothing:\n{}",
        summary(&at_kill)
    );

    children[VICTIM].kill9()?;
    let killed_at = Instant::now();
    log.wait_for(
        "survivors sharing all 6 partitions after the kill",
        Duration::from_millis(SESSION_TIMEOUT_MS) + GROUP_FORM_WAIT_MAX,
        |v| members_share_all(v, &SURVIVORS, PARTITIONS),
    )
    .await?;
    let moved_after = killed_at.elapsed();

    // Phase 3: the survivors alone.
    acks.extend(produce_ids(&producer, &topic, 2 * PHASE..3 * PHASE, KEYS).await?);
    let ends_3 = log_ends(&acks, PARTITIONS);
    log.wait_for(
        "commit of phase 3 by the survivors",
        CONSUME_WAIT_MAX,
        |v| committed_to_ends(v, &SURVIVORS, &ends_3),
    )
    .await?;
    let mut children = children.into_iter();
    drop(children.next()); // The victim, already reaped.
    block_in_place(|| children.try_for_each(ChildMember::finish))?;
    let views = log.snapshot();
    ensure_no_member_errors(&views)?;
    eprintln!(
        "victim held partitions {victim_partitions:?} with {uncommitted} uncommitted records; \
         survivors held all partitions {moved_after:?} after the kill \
         (session.timeout.ms={SESSION_TIMEOUT_MS})"
    );

    // Every record was delivered, each as what was stored there.
    let deliveries = log.deliveries();
    let ack_at: HashMap<(i32, i64), u64> = acks
        .iter()
        .map(|a| ((a.partition, a.offset), a.id))
        .collect();
    for d in &deliveries {
        ensure!(
            ack_at.get(&(d.partition, d.offset)) == Some(&d.id),
            "member {} got id {} at {}/{}, where id {:?} was stored",
            d.member,
            d.id,
            d.partition,
            d.offset,
            ack_at.get(&(d.partition, d.offset))
        );
    }
    let delivered: HashSet<u64> = deliveries.iter().map(|d| d.id).collect();
    let missing: Vec<u64> = acks
        .iter()
        .map(|a| a.id)
        .filter(|id| !delivered.contains(id))
        .collect();
    ensure!(
        missing.is_empty(),
        "{} acknowledged records never delivered (first: {:?})",
        missing.len(),
        &missing[..missing.len().min(10)]
    );

    // Per partition, in delivery order, offsets go 0, 1, 2, ... with one
    // exception: where the victim's partition moves to a survivor, delivery
    // restarts exactly at the offset committed at the kill. Earlier would
    // re-deliver committed records; later would skip records the victim
    // processed but never committed.
    let mut redelivered = 0i64;
    for p in 0..PARTITIONS {
        let mut previous: Option<&Delivery> = None;
        for d in deliveries.iter().filter(|d| d.partition == p) {
            let expected = previous.map_or(0, |prev| prev.offset + 1);
            let handoff = previous.is_some_and(|prev| prev.member == VICTIM && d.member != VICTIM);
            if d.offset == expected {
                // In order.
            } else if handoff && d.offset == committed_at_kill[p as usize] {
                redelivered += expected - d.offset;
            } else {
                bail!(
                    "partition {p}: member {} got offset {} after offset {} (member {:?}); \
                     committed at the kill: {}",
                    d.member,
                    d.offset,
                    expected - 1,
                    previous.map(|prev| prev.member),
                    committed_at_kill[p as usize]
                );
            }
            previous = Some(d);
        }
    }
    ensure!(
        redelivered == uncommitted,
        "survivors re-delivered {redelivered} records, but the victim left {uncommitted} uncommitted"
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// 3. Committed offsets survive a broker restart.
// ---------------------------------------------------------------------------

/// A new member of `group` that receives `count` records of `topic`
/// (blocking, bounded by `wait_max`). Returns the consumer, still a member,
/// and the records in the order received.
fn consume_as_member(
    config: &ClientConfig,
    topic: &str,
    count: usize,
    wait_max: Duration,
) -> Result<(BaseConsumer, Vec<Record>)> {
    let consumer: BaseConsumer = config.create()?;
    consumer.subscribe(&[topic])?;
    let started = Instant::now();
    let mut records = Vec::with_capacity(count);
    while records.len() < count {
        ensure!(
            started.elapsed() < wait_max,
            "received {} of {count} records within {wait_max:?}",
            records.len()
        );
        match consumer.poll(MEMBER_POLL_INTERVAL) {
            Some(Ok(m)) => records.push(Record {
                partition: m.partition(),
                offset: m.offset(),
                key: m.key().map(<[u8]>::to_vec),
                value: m.payload().map(<[u8]>::to_vec),
            }),
            Some(Err(e)) => eprintln!("poll: {e}"),
            None => {}
        }
    }
    Ok((consumer, records))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_offsets_survive_a_broker_restart_and_the_group_resumes_there() -> Result<()> {
    const MESSAGES: u64 = 6_000;
    const PARTITIONS: i32 = 3;
    let Some(mut broker) = Broker::start_process(
        "committed_offsets_survive_a_broker_restart_and_the_group_resumes_there",
        BROKER_ARGS,
    )?
    else {
        return Ok(());
    };
    let bootstrap = broker.bootstrap().to_string();
    let topic = unique_topic("group-restart");
    let group = unique_topic("group-restart");
    create_topic(&bootstrap, &topic, PARTITIONS).await?;
    let acks = {
        let producer = producer(&bootstrap, BULK_PRODUCER_SETTINGS)?;
        produce_ids(&producer, &topic, 0..MESSAGES, KEYS).await?
    };
    let ends = log_ends(&acks, PARTITIONS);
    // The group "left off" halfway through each partition, with metadata.
    let resume_at: Vec<i64> = ends.iter().map(|end| end / 2).collect();
    let metadata = |p: i32| format!("fjord-it resume p{p}");
    let expected: Vec<Option<(i64, String)>> = (0..PARTITIONS)
        .map(|p| Some((resume_at[p as usize], metadata(p))))
        .collect();

    let config = member_config(&bootstrap, &group, &[]);
    block_in_place(|| -> Result<()> {
        let (member, _) = consume_as_member(&config, &topic, acks.len(), CONSUME_WAIT_MAX)?;
        let mut tpl = TopicPartitionList::new();
        for p in 0..PARTITIONS {
            tpl.add_partition_offset(&topic, p, Offset::Offset(resume_at[p as usize]))?;
            tpl.find_partition(&topic, p)
                .expect("just added")
                .set_metadata(metadata(p));
        }
        member.commit(&tpl, CommitMode::Sync)?;
        Ok(())
    })?;
    let before = fetch_committed(&bootstrap, &group, &topic, PARTITIONS).await?;
    ensure!(
        before == expected,
        "committed before the restart: {before:?}, expected {expected:?}"
    );

    let started = Instant::now();
    block_in_place(|| broker.restart())?;
    eprintln!("broker restarted in {:?}", started.elapsed());
    let after = fetch_committed(&bootstrap, &group, &topic, PARTITIONS).await?;
    ensure!(
        after == expected,
        "committed after the restart: {after:?}, before: {expected:?}"
    );

    // A new member resumes exactly there: the second half of each partition,
    // in order, nothing from the first half.
    let remaining: i64 = ends.iter().zip(&resume_at).map(|(e, r)| e - r).sum();
    let started = Instant::now();
    let (_member, records) = block_in_place(|| {
        consume_as_member(&config, &topic, remaining as usize, CONSUME_WAIT_MAX)
    })?;
    eprintln!(
        "{remaining} records after the committed offsets read in {:?}",
        started.elapsed()
    );
    let ack_at: HashMap<(i32, i64), u64> = acks
        .iter()
        .map(|a| ((a.partition, a.offset), a.id))
        .collect();
    let mut next = resume_at.clone();
    for r in &records {
        let expected_offset = &mut next[r.partition as usize];
        ensure!(
            r.offset == *expected_offset,
            "partition {}: offset {} received when {} was next (committed: {})",
            r.partition,
            r.offset,
            expected_offset,
            resume_at[r.partition as usize]
        );
        let id = parse_id(r.value.as_deref().unwrap_or_default())?;
        ensure!(
            ack_at.get(&(r.partition, r.offset)) == Some(&id),
            "{}/{} holds id {id}, expected {:?}",
            r.partition,
            r.offset,
            ack_at.get(&(r.partition, r.offset))
        );
        *expected_offset += 1;
    }
    ensure!(next == ends, "read up to {next:?}, log ends are {ends:?}");
    Ok(())
}

// ---------------------------------------------------------------------------
// 4. Static membership.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_member_restart_within_session_timeout_does_not_rebalance_the_group() -> Result<()> {
    const PARTITIONS: i32 = 6;
    /// Long enough that the static member's restart is clearly within it.
    const STATIC_SESSION_TIMEOUT_MS: &str = "10000";
    /// Heartbeats the other member must complete after the static member's
    /// return before the test concludes that no rebalance follows.
    const HEARTBEATS_AFTER_REJOIN: i64 = 4;
    let (dynamic, first, second) = (0, 1, 2);
    let broker = Broker::start_with(BROKER_ARGS)?;
    let bootstrap = broker.bootstrap();
    let topic = unique_topic("group-static");
    let group = unique_topic("group-static");
    let instance = unique_topic("fjord-it-static");
    create_topic(bootstrap, &topic, PARTITIONS).await?;

    let log = GroupLog::new(3);
    let common_settings = [
        ("session.timeout.ms", STATIC_SESSION_TIMEOUT_MS),
        ("statistics.interval.ms", "100"),
    ];
    let dynamic_config = member_config(bootstrap, &group, &common_settings);
    let mut static_config = member_config(bootstrap, &group, &common_settings);
    static_config.set("group.instance.id", &instance);

    // The dynamic member joins first (and leads the group).
    let dynamic_member = Member::start(&log, dynamic, &dynamic_config, &topic)?;
    log.wait_for(
        "dynamic member holding all partitions",
        GROUP_FORM_WAIT_MAX,
        |v| v[dynamic].assignment.len() == PARTITIONS as usize,
    )
    .await?;
    let static_member = Member::start(&log, first, &static_config, &topic)?;
    log.wait_for(
        "dynamic and static member sharing all partitions",
        GROUP_FORM_WAIT_MAX,
        |v| members_share_all(v, &[dynamic, first], PARTITIONS),
    )
    .await?;
    // Statistics lag a little: wait until they are from after the rebalance
    // (two heartbeats later) before taking the "before" picture.
    let heartbeats = log.snapshot()[dynamic].heartbeats;
    log.wait_for(
        "heartbeats of the dynamic member after the rebalance",
        GROUP_FORM_WAIT_MAX,
        |v| v[dynamic].heartbeats >= heartbeats + 2,
    )
    .await?;
    let before = log.snapshot();

    // The static member closes (no LeaveGroup) and a new incarnation with the
    // same group.instance.id joins.
    block_in_place(|| static_member.stop())?;
    let closed_at = Instant::now();
    let restarted = Member::start(&log, second, &static_config, &topic)?;
    log.wait_for(
        "restarted static member's assignment",
        GROUP_FORM_WAIT_MAX,
        |v| !v[second].assignment.is_empty(),
    )
    .await?;
    let rejoined_after = closed_at.elapsed();
    ensure!(
        rejoined_after < Duration::from_millis(STATIC_SESSION_TIMEOUT_MS.parse()?),
        "the static member took {rejoined_after:?} to rejoin, more than its session timeout"
    );
    // A rebalance would reach the dynamic member through its heartbeats.
    let heartbeats = log.snapshot()[dynamic].heartbeats;
    log.wait_for(
        "heartbeats of the dynamic member after the rejoin",
        GROUP_FORM_WAIT_MAX,
        |v| v[dynamic].heartbeats >= heartbeats + HEARTBEATS_AFTER_REJOIN,
    )
    .await?;
    let after = log.snapshot();
    stop_members(vec![restarted, dynamic_member]).await?;
    ensure_no_member_errors(&log.snapshot())?;
    eprintln!(
        "static member rejoined {rejoined_after:?} after closing; dynamic member: \
         {} heartbeats since",
        after[dynamic].heartbeats - heartbeats
    );

    let (b, a) = (&before[dynamic], &after[dynamic]);
    ensure!(
        (a.assigns, a.revokes, &a.assignment, a.client_rebalances)
            == (b.assigns, b.revokes, &b.assignment, b.client_rebalances),
        "the dynamic member saw a rebalance when the static member restarted: \
         before: assigns {}, revokes {}, assignment {:?}, rebalances {}; \
         after: assigns {}, revokes {}, assignment {:?}, rebalances {}",
        b.assigns,
        b.revokes,
        b.assignment,
        b.client_rebalances,
        a.assigns,
        a.revokes,
        a.assignment,
        a.client_rebalances
    );
    ensure!(
        after[second].assignment == before[first].assignment,
        "the restarted static member got {:?}, its previous incarnation had {:?}",
        after[second].assignment,
        before[first].assignment
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// 5. Stale generations are fenced (raw protocol).
// ---------------------------------------------------------------------------

mod raw_group {
    use std::collections::HashMap;
    use std::time::{Duration, Instant};

    use anyhow::{anyhow, bail, ensure, Context as _, Result};
    use bytes::{BufMut, Bytes, BytesMut};
    use kafka_protocol::error::ResponseError;
    use kafka_protocol::messages::consumer_protocol_assignment::TopicPartition as AssignedPartitions;
    use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
    use kafka_protocol::messages::offset_commit_request::{
        OffsetCommitRequestPartition, OffsetCommitRequestTopic,
    };
    use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
    use kafka_protocol::messages::{
        ApiVersionsRequest, ConsumerProtocolAssignment, ConsumerProtocolSubscription,
        FindCoordinatorRequest, GroupId, HeartbeatRequest, JoinGroupRequest, JoinGroupResponse,
        OffsetCommitRequest, RequestHeader, ResponseHeader, SyncGroupRequest, TopicName,
    };
    use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};
    use tokio::net::TcpStream;

    use super::common::raw;

    pub const ILLEGAL_GENERATION: i16 = 22;
    pub const REBALANCE_IN_PROGRESS: i16 = 27;
    const COORDINATOR_LOAD_IN_PROGRESS: i16 = 14;
    const COORDINATOR_NOT_AVAILABLE: i16 = 15;
    const MEMBER_ID_REQUIRED: i16 = 79;
    /// Session and rebalance timeout the raw members announce.
    const RAW_SESSION_TIMEOUT_MS: i32 = 10_000;
    /// Bound for the group coordinator to become available (Kafka creates
    /// its offsets topic on the first FindCoordinator).
    const COORDINATOR_WAIT_MAX: Duration = Duration::from_secs(30);
    const RETRY_INTERVAL: Duration = Duration::from_millis(100);
    pub const PROTOCOL_TYPE: &str = "consumer";
    pub const PROTOCOL_NAME: &str = "range";

    pub fn error_name(code: i16) -> String {
        match ResponseError::try_from_code(code) {
            None => "NONE".into(),
            Some(e) => format!("{e:?} ({code})"),
        }
    }

    fn str_bytes(s: &str) -> StrBytes {
        StrBytes::from_string(s.to_string())
    }

    /// One connection speaking the protocol with kafka-protocol's types, at
    /// the highest version both sides support (up to a cap per request).
    pub struct RawConn {
        stream: TcpStream,
        next_correlation_id: i32,
        versions: HashMap<i16, (i16, i16)>,
    }

    impl RawConn {
        pub async fn connect(addr: &str) -> Result<RawConn> {
            let mut conn = RawConn {
                stream: raw::connect(addr).await?,
                next_correlation_id: 1,
                versions: HashMap::new(),
            };
            let response = conn.call(&ApiVersionsRequest::default(), 0).await?;
            ensure!(
                response.error_code == 0,
                "ApiVersions: {}",
                error_name(response.error_code)
            );
            conn.versions = response
                .api_keys
                .iter()
                .map(|k| (k.api_key, (k.min_version, k.max_version)))
                .collect();
            Ok(conn)
        }

        /// Highest version of `R` that the broker, kafka-protocol and `cap`
        /// allow.
        pub fn version<R: Request>(&self, cap: i16) -> Result<i16> {
            let (min, max) = *self
                .versions
                .get(&R::KEY)
                .ok_or_else(|| anyhow!("broker does not support API key {}", R::KEY))?;
            let version = max.min(cap).min(R::VERSIONS.max);
            ensure!(
                version >= min.max(R::VERSIONS.min),
                "no common version of API key {}: broker {min}..={max}, test {}..={}",
                R::KEY,
                R::VERSIONS.min,
                cap.min(R::VERSIONS.max)
            );
            Ok(version)
        }

        pub async fn call<R: Request>(&mut self, request: &R, version: i16) -> Result<R::Response> {
            let correlation_id = self.next_correlation_id;
            self.next_correlation_id += 1;
            let header = RequestHeader::default()
                .with_request_api_key(R::KEY)
                .with_request_api_version(version)
                .with_correlation_id(correlation_id)
                .with_client_id(Some(StrBytes::from_static_str("fjord-it-raw")));
            let mut buf = BytesMut::new();
            header.encode(&mut buf, R::header_version(version))?;
            request.encode(&mut buf, version)?;
            raw::write_frame(&mut self.stream, &buf).await?;
            let mut body = Bytes::from(raw::read_frame(&mut self.stream).await?);
            let response_header =
                ResponseHeader::decode(&mut body, R::Response::header_version(version))?;
            ensure!(
                response_header.correlation_id == correlation_id,
                "correlation id {} in the response to {correlation_id}",
                response_header.correlation_id
            );
            R::Response::decode(&mut body, version)
                .with_context(|| format!("decoding the response to API key {} v{version}", R::KEY))
        }
    }

    /// `host:port` of `group`'s coordinator, asked at `bootstrap`.
    pub async fn find_coordinator(bootstrap: &str, group: &str) -> Result<String> {
        let mut conn = RawConn::connect(bootstrap).await?;
        let version = conn.version::<FindCoordinatorRequest>(3)?;
        let request = FindCoordinatorRequest::default().with_key(str_bytes(group));
        let started = Instant::now();
        loop {
            let response = conn.call(&request, version).await?;
            match response.error_code {
                0 => return Ok(format!("{}:{}", response.host, response.port)),
                COORDINATOR_LOAD_IN_PROGRESS | COORDINATOR_NOT_AVAILABLE
                    if started.elapsed() < COORDINATOR_WAIT_MAX =>
                {
                    tokio::time::sleep(RETRY_INTERVAL).await
                }
                code => bail!("FindCoordinator({group}): {}", error_name(code)),
            }
        }
    }

    /// A `consumer` protocol subscription to `topic` (version 0).
    fn subscription(topic: &str) -> Result<Bytes> {
        let mut buf = BytesMut::new();
        buf.put_i16(0);
        ConsumerProtocolSubscription::default()
            .with_topics(vec![str_bytes(topic)])
            .encode(&mut buf, 0)?;
        Ok(buf.freeze())
    }

    /// A `consumer` protocol assignment of `partitions` of `topic` (version 0).
    pub fn assignment(topic: &str, partitions: &[i32]) -> Result<Bytes> {
        let mut buf = BytesMut::new();
        buf.put_i16(0);
        ConsumerProtocolAssignment::default()
            .with_assigned_partitions(vec![AssignedPartitions::default()
                .with_topic(TopicName(str_bytes(topic)))
                .with_partitions(partitions.to_vec())])
            .encode(&mut buf, 0)?;
        Ok(buf.freeze())
    }

    /// JoinGroup as `member_id` (empty: a new member, which first learns its
    /// id from MEMBER_ID_REQUIRED, as in JoinGroup v4+).
    pub async fn join(
        conn: &mut RawConn,
        group: &str,
        member_id: &str,
        topic: &str,
    ) -> Result<JoinGroupResponse> {
        let version = conn.version::<JoinGroupRequest>(9)?;
        let mut member_id = member_id.to_string();
        for _ in 0..2 {
            let request = JoinGroupRequest::default()
                .with_group_id(GroupId(str_bytes(group)))
                .with_session_timeout_ms(RAW_SESSION_TIMEOUT_MS)
                .with_rebalance_timeout_ms(RAW_SESSION_TIMEOUT_MS)
                .with_member_id(str_bytes(&member_id))
                .with_protocol_type(str_bytes(PROTOCOL_TYPE))
                .with_protocols(vec![JoinGroupRequestProtocol::default()
                    .with_name(str_bytes(PROTOCOL_NAME))
                    .with_metadata(subscription(topic)?)]);
            let response = conn.call(&request, version).await?;
            if response.error_code == MEMBER_ID_REQUIRED && member_id.is_empty() {
                member_id = response.member_id.to_string();
                continue;
            }
            ensure!(
                response.error_code == 0,
                "JoinGroup({group}, member {member_id:?}): {}",
                error_name(response.error_code)
            );
            return Ok(response);
        }
        bail!("JoinGroup({group}): MEMBER_ID_REQUIRED twice")
    }

    /// SyncGroup; the leader passes every member's assignment, followers none.
    /// Returns the member's own assignment.
    pub async fn sync(
        conn: &mut RawConn,
        group: &str,
        generation: i32,
        member_id: &str,
        assignments: Vec<(String, Bytes)>,
    ) -> Result<Bytes> {
        let version = conn.version::<SyncGroupRequest>(5)?;
        let mut request = SyncGroupRequest::default()
            .with_group_id(GroupId(str_bytes(group)))
            .with_generation_id(generation)
            .with_member_id(str_bytes(member_id))
            .with_assignments(
                assignments
                    .into_iter()
                    .map(|(member, assignment)| {
                        SyncGroupRequestAssignment::default()
                            .with_member_id(str_bytes(&member))
                            .with_assignment(assignment)
                    })
                    .collect(),
            );
        if version >= 5 {
            request = request
                .with_protocol_type(Some(str_bytes(PROTOCOL_TYPE)))
                .with_protocol_name(Some(str_bytes(PROTOCOL_NAME)));
        }
        let response = conn.call(&request, version).await?;
        ensure!(
            response.error_code == 0,
            "SyncGroup({group}, generation {generation}, member {member_id}): {}",
            error_name(response.error_code)
        );
        Ok(response.assignment)
    }

    /// Heartbeat; returns the error code.
    pub async fn heartbeat(
        conn: &mut RawConn,
        group: &str,
        generation: i32,
        member_id: &str,
    ) -> Result<i16> {
        let version = conn.version::<HeartbeatRequest>(4)?;
        let request = HeartbeatRequest::default()
            .with_group_id(GroupId(str_bytes(group)))
            .with_generation_id(generation)
            .with_member_id(str_bytes(member_id));
        Ok(conn.call(&request, version).await?.error_code)
    }

    /// Heartbeats (bounded) until the coordinator answers `code`, the way a
    /// member learns that the group is rebalancing.
    pub async fn heartbeat_until(
        conn: &mut RawConn,
        group: &str,
        generation: i32,
        member_id: &str,
        code: i16,
        wait_max: Duration,
    ) -> Result<()> {
        let started = Instant::now();
        loop {
            let got = heartbeat(conn, group, generation, member_id).await?;
            if got == code {
                return Ok(());
            }
            ensure!(
                got == 0,
                "Heartbeat(generation {generation}): {} while waiting for {}",
                error_name(got),
                error_name(code)
            );
            ensure!(
                started.elapsed() < wait_max,
                "heartbeats did not return {} within {wait_max:?}",
                error_name(code)
            );
            tokio::time::sleep(RETRY_INTERVAL).await;
        }
    }

    /// OffsetCommit of one partition; returns the partition's error code.
    #[allow(clippy::too_many_arguments)]
    pub async fn commit(
        conn: &mut RawConn,
        group: &str,
        generation: i32,
        member_id: &str,
        topic: &str,
        partition: i32,
        offset: i64,
        metadata: &str,
    ) -> Result<i16> {
        let version = conn.version::<OffsetCommitRequest>(9)?;
        let request = OffsetCommitRequest::default()
            .with_group_id(GroupId(str_bytes(group)))
            .with_generation_id_or_member_epoch(generation)
            .with_member_id(str_bytes(member_id))
            .with_topics(vec![OffsetCommitRequestTopic::default()
                .with_name(TopicName(str_bytes(topic)))
                .with_partitions(vec![OffsetCommitRequestPartition::default()
                    .with_partition_index(partition)
                    .with_committed_offset(offset)
                    .with_committed_metadata(Some(str_bytes(metadata)))])]);
        let response = conn.call(&request, version).await?;
        let codes: Vec<i16> = response
            .topics
            .iter()
            .flat_map(|t| t.partitions.iter())
            .filter(|p| p.partition_index == partition)
            .map(|p| p.error_code)
            .collect();
        match codes[..] {
            [code] => Ok(code),
            _ => bail!("OffsetCommit response without exactly one entry for partition {partition}: {response:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offset_commit_with_a_stale_generation_is_rejected() -> Result<()> {
    use raw_group::{
        assignment, commit, error_name, find_coordinator, heartbeat_until, join, sync, RawConn,
        ILLEGAL_GENERATION, REBALANCE_IN_PROGRESS,
    };
    /// Bound for a JoinGroup or SyncGroup parked for the rest of the group.
    const PARKED_WAIT_MAX: Duration = Duration::from_secs(30);
    let broker = Broker::start_with(BROKER_ARGS)?;
    let bootstrap = broker.bootstrap();
    let topic = unique_topic("group-stale");
    let group = unique_topic("group-stale");
    create_topic(bootstrap, &topic, 1).await?;
    let coordinator = find_coordinator(bootstrap, &group).await?;

    // Member A alone: generation g, A leads and takes partition 0.
    let mut a = RawConn::connect(&coordinator).await?;
    let joined = join(&mut a, &group, "", &topic).await?;
    let a_id = joined.member_id.to_string();
    let g = joined.generation_id;
    ensure!(
        joined.leader.as_str() == a_id,
        "the only member {a_id} is not the leader ({})",
        joined.leader
    );
    sync(
        &mut a,
        &group,
        g,
        &a_id,
        vec![(a_id.clone(), assignment(&topic, &[0])?)],
    )
    .await?;
    let code = commit(&mut a, &group, g, &a_id, &topic, 0, 1, "generation g").await?;
    ensure!(
        code == 0,
        "commit at the current generation {g}: {}",
        error_name(code)
    );

    // Member B joins: the group rebalances, A hears it from a heartbeat and
    // rejoins, and both end up in generation g+1.
    let b_join = tokio::spawn({
        let (coordinator, group, topic) = (coordinator.clone(), group.clone(), topic.clone());
        async move {
            let mut b = RawConn::connect(&coordinator).await?;
            let joined = join(&mut b, &group, "", &topic).await?;
            anyhow::Ok((b, joined))
        }
    });
    heartbeat_until(
        &mut a,
        &group,
        g,
        &a_id,
        REBALANCE_IN_PROGRESS,
        PARKED_WAIT_MAX,
    )
    .await?;
    let rejoined = join(&mut a, &group, &a_id, &topic).await?;
    let (mut b, b_joined) = tokio::time::timeout(PARKED_WAIT_MAX, b_join)
        .await
        .map_err(|_| anyhow!("B's JoinGroup not answered within {PARKED_WAIT_MAX:?}"))???;
    let g2 = rejoined.generation_id;
    let b_id = b_joined.member_id.to_string();
    ensure!(
        g2 > g && b_joined.generation_id == g2,
        "generations after B joined: A {g2}, B {} (before: {g})",
        b_joined.generation_id
    );
    let leader = rejoined.leader.to_string();
    ensure!(
        leader == a_id || leader == b_id,
        "leader {leader} is neither A {a_id} nor B {b_id}"
    );
    let plan = vec![
        (a_id.clone(), assignment(&topic, &[0])?),
        (b_id.clone(), assignment(&topic, &[])?),
    ];
    let (a_plan, b_plan) = if leader == a_id {
        (plan, Vec::new())
    } else {
        (Vec::new(), plan)
    };
    let b_sync = tokio::spawn({
        let (group, b_id) = (group.clone(), b_id.clone());
        async move { sync(&mut b, &group, g2, &b_id, b_plan).await.map(|_| b) }
    });
    sync(&mut a, &group, g2, &a_id, a_plan).await?;
    let _b = tokio::time::timeout(PARKED_WAIT_MAX, b_sync)
        .await
        .map_err(|_| anyhow!("B's SyncGroup not answered within {PARKED_WAIT_MAX:?}"))???;

    // Stable at g+1: a commit at g+1 is accepted, one at g is fenced and
    // changes nothing.
    let code = commit(&mut a, &group, g2, &a_id, &topic, 0, 5, "generation g+1").await?;
    ensure!(
        code == 0,
        "commit at the current generation {g2}: {}",
        error_name(code)
    );
    let code = commit(&mut a, &group, g, &a_id, &topic, 0, 7, "stale generation").await?;
    ensure!(
        code == ILLEGAL_GENERATION,
        "commit at stale generation {g} (current {g2}) answered {}, expected {}",
        error_name(code),
        error_name(ILLEGAL_GENERATION)
    );
    let committed = fetch_committed(bootstrap, &group, &topic, 1).await?;
    ensure!(
        committed == vec![Some((5, "generation g+1".to_string()))],
        "committed after the stale commit: {committed:?}"
    );
    Ok(())
}
