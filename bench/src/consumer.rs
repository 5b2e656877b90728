//! Consumers: the e2e consumer group, and the read-back that checks the
//! throughput and rate workloads.
//!
//! Both are a `BaseConsumer` polled on its own thread; each consumed record of
//! this run is checked off in the [`Checker`], and in the group workload also
//! timed end to end against the send time in its value. Either stops when the
//! orchestrator sets `stop` (once every partition is consumed up to the end
//! offsets taken after producing, or the verify bound has passed).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::{Context as _, Result};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::checker::Checker;
use crate::cli::RunArgs;
use crate::clock::now_us;
use crate::error_name;
use crate::history::{History, Source};
use crate::payload;
use crate::stats::{LatencyRecorder, Live, SecondCounter};

const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// How a consumer gets its partitions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Membership {
    /// `subscribe` in this group; e2e latency is recorded.
    Group(String),
    /// `assign` every partition from the beginning; nothing is timed.
    ReadBack { partitions: i32 },
}

/// librdkafka consumer properties for this run; `--consumer-prop` wins.
pub fn client_config(args: &RunArgs, membership: &Membership) -> Vec<(String, String)> {
    let mut props: Vec<(String, String)> = vec![
        ("bootstrap.servers".into(), args.bootstrap.clone()),
        ("auto.offset.reset".into(), "earliest".into()),
        ("enable.partition.eof".into(), "false".into()),
    ];
    match membership {
        Membership::Group(group) => {
            props.push(("group.id".into(), group.clone()));
            props.push(("enable.auto.commit".into(), "true".into()));
        }
        Membership::ReadBack { .. } => {
            // librdkafka refuses assign() without a group.id (Local: Unknown
            // group) even though an assign()-ed consumer never joins it.
            props.push(("group.id".into(), format!("{}-readback", args.topic())));
            props.push(("enable.auto.commit".into(), "false".into()));
        }
    }
    for prop in &args.consumer_props {
        let (k, v) = crate::cli::split_prop(prop).expect("checked by resolve()");
        props.retain(|(key, _)| key != k);
        props.push((k.to_string(), v.to_string()));
    }
    props
}

/// Which consumer owns which partition, from the rebalance callbacks.
#[derive(Default)]
pub struct Assignment {
    state: Mutex<AssignState>,
}

#[derive(Default)]
struct AssignState {
    owner: BTreeMap<i32, usize>,
    assigned_once: BTreeSet<usize>,
    rebalances: u64,
}

impl Assignment {
    /// Every partition has an owner and every consumer has had its first
    /// assignment (possibly empty): the group is settled enough to produce.
    pub fn complete(&self, partitions: i32, consumers: usize) -> bool {
        let s = self.state.lock().expect("assignment lock");
        s.assigned_once.len() == consumers && (0..partitions).all(|p| s.owner.contains_key(&p))
    }

    pub fn rebalances(&self) -> u64 {
        self.state.lock().expect("assignment lock").rebalances
    }

    fn assigned(&self, consumer: usize, tpl: &TopicPartitionList) {
        let mut s = self.state.lock().expect("assignment lock");
        for e in tpl.elements() {
            s.owner.insert(e.partition(), consumer);
        }
        s.assigned_once.insert(consumer);
        s.rebalances += 1;
    }

    fn revoked(&self, consumer: usize, tpl: &TopicPartitionList) {
        let mut s = self.state.lock().expect("assignment lock");
        for e in tpl.elements() {
            if s.owner.get(&e.partition()) == Some(&consumer) {
                s.owner.remove(&e.partition());
            }
        }
    }
}

struct BenchConsumerContext {
    /// `--consumer-prop debug=...` was given: librdkafka's log lines go to
    /// stderr (otherwise they are dropped).
    debug: bool,
    index: usize,
    assignment: Arc<Assignment>,
    client_errors: Mutex<BTreeMap<String, u64>>,
}

impl ClientContext for BenchConsumerContext {
    fn log(&self, _level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        if self.debug {
            eprintln!(
                "{} rdkafka consumer-{} {fac}: {message}",
                crate::failover::wall_clock(),
                self.index
            );
        }
    }

    fn error(&self, error: KafkaError, _reason: &str) {
        let mut errors = self.client_errors.lock().expect("errors lock");
        *errors.entry(error_name::of(&error)).or_default() += 1;
    }
}

impl ConsumerContext for BenchConsumerContext {
    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => self.assignment.assigned(self.index, tpl),
            Rebalance::Revoke(tpl) => self.assignment.revoked(self.index, tpl),
            Rebalance::Error(_) => {}
        }
    }
}

/// The next offset consumed per partition, across all consumers.
pub struct Positions(Box<[AtomicI64]>);

impl Positions {
    pub fn new(partitions: i32) -> Self {
        Positions((0..partitions).map(|_| AtomicI64::new(0)).collect())
    }

    fn advance(&self, partition: i32, next_offset: i64) {
        if let Some(p) = self.0.get(partition as usize) {
            p.fetch_max(next_offset, Ordering::Relaxed);
        }
    }

    /// Every partition has been consumed up to its end offset.
    pub fn reached(&self, end_offsets: &[i64]) -> bool {
        self.0
            .iter()
            .zip(end_offsets)
            .all(|(p, &end)| p.load(Ordering::Relaxed) >= end)
    }
}

/// When producing started, for the e2e timeline; set once before any record.
#[derive(Debug, Clone, Copy)]
pub struct RunStart {
    pub t0_us: u64,
    pub warmup_end_us: u64,
}

pub struct ConsumerSetup {
    pub index: usize,
    pub config: Vec<(String, String)>,
    pub topic: String,
    pub membership: Membership,
    pub run_id: u64,
    pub checker: Arc<Checker>,
    /// `--check-offsets`: what this consumer reads, as `Live` (the group)
    /// or `Final` (the read-back).
    pub history: Option<(Arc<History>, Source)>,
    pub live: Arc<Live>,
    pub positions: Arc<Positions>,
    pub assignment: Arc<Assignment>,
    pub start: Arc<OnceLock<RunStart>>,
    pub stop: Arc<AtomicBool>,
}

/// What one consumer saw.
pub struct ConsumerOutcome {
    pub e2e: Option<LatencyRecorder>,
    /// Records consumed per timeline second (this run's records only).
    pub consumed_per_second: SecondCounter,
    /// Records in the topic that this run did not write.
    pub foreign: u64,
    pub errors: BTreeMap<String, u64>,
    pub client_errors: BTreeMap<String, u64>,
}

/// Creates the consumer, joins the group or assigns the partitions, then
/// polls until `stop` (see [`consume`]).
pub fn run(setup: ConsumerSetup) -> Result<ConsumerOutcome> {
    let consumer = connect(&setup)?;
    Ok(consume(setup, consumer))
}

/// Creates the consumer and joins the group or assigns the partitions.
/// Returns once that request is made (assignment arrives during polling).
fn connect(setup: &ConsumerSetup) -> Result<BaseConsumer<BenchConsumerContext>> {
    let mut config = ClientConfig::new();
    for (k, v) in &setup.config {
        config.set(k, v);
    }
    if setup.config.iter().any(|(k, _)| k == "debug") {
        // rust-rdkafka passes the `log` crate's level on, which is off here.
        config.set_log_level(rdkafka::config::RDKafkaLogLevel::Debug);
    }
    let context = BenchConsumerContext {
        debug: setup.config.iter().any(|(k, _)| k == "debug"),
        index: setup.index,
        assignment: setup.assignment.clone(),
        client_errors: Mutex::default(),
    };
    let consumer: BaseConsumer<BenchConsumerContext> = config
        .create_with_context(context)
        .context("creating the consumer")?;
    match &setup.membership {
        Membership::Group(_) => consumer.subscribe(&[&setup.topic]).context("subscribing")?,
        Membership::ReadBack { partitions } => {
            let mut tpl = TopicPartitionList::new();
            for p in 0..*partitions {
                tpl.add_partition_offset(&setup.topic, p, Offset::Beginning)
                    .context("building the assignment")?;
            }
            consumer.assign(&tpl).context("assigning")?;
        }
    }
    Ok(consumer)
}

/// Polls until `stop`, checking off and timing this run's records.
fn consume(setup: ConsumerSetup, consumer: BaseConsumer<BenchConsumerContext>) -> ConsumerOutcome {
    let timed = matches!(setup.membership, Membership::Group(_));
    let mut e2e: Option<LatencyRecorder> = None;
    let mut consumed_per_second = SecondCounter::default();
    let mut foreign = 0u64;
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    while !setup.stop.load(Ordering::Relaxed) {
        let msg = match consumer.poll(POLL_INTERVAL) {
            None => continue,
            Some(Err(err)) => {
                *errors.entry(error_name::of(&err)).or_default() += 1;
                continue;
            }
            Some(Ok(msg)) => msg,
        };
        let done_us = now_us();
        setup.positions.advance(msg.partition(), msg.offset() + 1);
        let header = msg
            .payload()
            .and_then(payload::decode)
            .filter(|h| h.run_id == setup.run_id);
        let Some(header) = header else {
            foreign += 1;
            continue;
        };
        setup.checker.mark_consumed(header.seq);
        if let Some((history, source)) = &setup.history {
            history.record(*source, header.seq, msg.partition(), msg.offset());
            if *source == Source::Live {
                history.consumed_at(header.sent_us, done_us);
            }
        }
        Live::add(&setup.live.consumed, 1);
        if timed {
            // Producing has started (this run's record exists), so `start` is set.
            let Some(start) = setup.start.get() else {
                continue;
            };
            consumed_per_second.add(start.t0_us, done_us);
            e2e.get_or_insert_with(|| LatencyRecorder::new(start.t0_us, start.warmup_end_us))
                .record(header.sent_us, done_us);
        }
    }
    let client_errors = std::mem::take(
        &mut *consumer
            .context()
            .client_errors
            .lock()
            .expect("errors lock"),
    );
    drop(consumer);
    ConsumerOutcome {
        e2e,
        consumed_per_second,
        foreign,
        errors,
        client_errors,
    }
}
