//! One producer client on its own thread: as fast as possible (throughput)
//! or open loop on a schedule (rate, e2e).
//!
//! A `ThreadedProducer` per client: its polling thread runs the delivery
//! callback as soon as librdkafka has a result, so the ack time is not held
//! back by what the sending thread is doing (sleeping until the next send, or
//! waiting for queue room). The sending thread never buffers on its own:
//! in-flight data is bounded by librdkafka's `queue.buffering.max.*`, and on
//! `QueueFull` it waits for deliveries to make room.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::time::Duration;

use anyhow::{Context as _, Result};
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{
    BaseRecord, DeliveryResult, Producer, ProducerContext, PurgeConfig, ThreadedProducer,
};
use rdkafka::ClientContext;

use crate::checker::Checker;
use crate::cli::{Keys, RunArgs};
use crate::clock::{self, now_us, RateSchedule, Step};
use crate::error_name;
use crate::history::{History, Source};
use crate::payload::{self, Header, ValueBuilder};
use crate::stats::{LatencyRecorder, Live, SecondCounter};

/// Bound on the final flush; what is still unresolved then is purged and
/// counted as failed (`_PURGE_QUEUE` / `_PURGE_INFLIGHT`).
const FLUSH_TIMEOUT: Duration = Duration::from_secs(120);
/// Bound on one wait for queue room; the loop re-checks its stop condition.
const QUEUE_FULL_WAIT: Duration = Duration::from_millis(5);
/// Bound on the metadata request that connects a producer before the start.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// librdkafka producer properties for this run; `--producer-prop` wins.
pub fn client_config(args: &RunArgs) -> Vec<(String, String)> {
    let mut props: Vec<(String, String)> = [
        ("bootstrap.servers", args.bootstrap.clone()),
        ("acks", args.acks.config_value().to_string()),
        (
            "compression.type",
            args.compression.config_value().to_string(),
        ),
        ("linger.ms", args.linger_ms.to_string()),
        ("batch.size", args.batch_size.to_string()),
        // The in-flight bound: at most this much is queued in the client.
        ("queue.buffering.max.messages", "100000".to_string()),
        ("queue.buffering.max.kbytes", "65536".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    for prop in &args.producer_props {
        let (k, v) = crate::cli::split_prop(prop).expect("checked by resolve()");
        props.retain(|(key, _)| key != k);
        props.push((k.to_string(), v.to_string()));
    }
    props
}

/// How a producer decides what to send next.
#[derive(Debug, Clone, Copy)]
pub enum Pace {
    /// As fast as possible until `records` (all producers) or `deadline_us`.
    Flat {
        records: Option<u64>,
        deadline_us: Option<u64>,
    },
    /// Open loop: send `i` at `schedule.due_us(i)`, for `i < records`.
    Open {
        schedule: RateSchedule,
        records: u64,
    },
}

/// The fixed facts of the run a producer needs.
pub struct ProducerSetup {
    pub index: u64,
    pub producers: u64,
    pub config: Vec<(String, String)>,
    pub topic: String,
    pub run_id: u64,
    pub record_size: usize,
    pub keys: Keys,
    pub checker: Arc<Checker>,
    /// `--check-offsets`: acknowledgements with their offsets.
    pub history: Option<Arc<History>>,
    pub live: Arc<Live>,
    /// Set on Ctrl-C: stop sending, flush, report.
    pub stop: Arc<AtomicBool>,
}

/// When the run starts, sent to every producer once all are connected.
#[derive(Debug, Clone, Copy)]
pub struct Start {
    pub t0_us: u64,
    pub warmup_end_us: u64,
    pub pace: Pace,
}

/// What one producer saw.
pub struct ProducerOutcome {
    pub sent: u64,
    pub sent_per_second: SecondCounter,
    pub send_ack: LatencyRecorder,
    pub acked: u64,
    pub errors: BTreeMap<String, u64>,
    pub client_errors: BTreeMap<String, u64>,
    /// Still unresolved after the flush bound (then purged).
    pub flush_timed_out: bool,
}

/// Wakes a sender waiting for queue room when a delivery frees some.
/// Notifying costs one atomic load unless someone is waiting.
#[derive(Default)]
struct RoomWaiter {
    waiting: AtomicUsize,
    lock: Mutex<()>,
    cv: Condvar,
}

impl RoomWaiter {
    fn wait(&self, max: Duration) {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let guard = self.lock.lock().expect("room lock");
        // A wake-up lost between the QueueFull and this wait costs at most `max`.
        let _ = self.cv.wait_timeout(guard, max).expect("room lock");
        self.waiting.fetch_sub(1, Ordering::SeqCst);
    }

    fn notify(&self) {
        if self.waiting.load(Ordering::SeqCst) > 0 {
            let _guard = self.lock.lock().expect("room lock");
            self.cv.notify_all();
        }
    }
}

#[derive(Default)]
struct DeliveryStats {
    send_ack: Option<LatencyRecorder>,
    acked: u64,
    errors: BTreeMap<String, u64>,
    client_errors: BTreeMap<String, u64>,
}

/// Runs on the producer's polling thread: checks off and times each delivery.
struct BenchProducerContext {
    /// `--producer-prop debug=...` was given: librdkafka's log lines go to
    /// stderr (otherwise they are dropped, like the client errors).
    debug: bool,
    run_id: u64,
    checker: Arc<Checker>,
    history: Option<Arc<History>>,
    live: Arc<Live>,
    room: RoomWaiter,
    stats: Mutex<DeliveryStats>,
}

impl ClientContext for BenchProducerContext {
    /// Client-level errors (a broker connection going down) are counted, not
    /// logged: under a fault schedule there are many and they are expected.
    fn log(&self, _level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        if self.debug {
            eprintln!("{} rdkafka {fac}: {message}", crate::failover::wall_clock());
        }
    }

    fn error(&self, error: KafkaError, _reason: &str) {
        let mut stats = self.stats.lock().expect("stats lock");
        *stats
            .client_errors
            .entry(error_name::of(&error))
            .or_default() += 1;
    }
}

impl ProducerContext for BenchProducerContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        let done_us = now_us();
        let mut stats = self.stats.lock().expect("stats lock");
        match result {
            Ok(msg) => {
                if let Some(h) = msg.payload().and_then(payload::decode) {
                    debug_assert_eq!(h.run_id, self.run_id);
                    self.checker.mark_acked(h.seq);
                    if let Some(history) = &self.history {
                        history.record(Source::Ack, h.seq, msg.partition(), msg.offset());
                        history.acked_at(h.sent_us, done_us);
                    }
                    if let Some(r) = stats.send_ack.as_mut() {
                        r.record(h.sent_us, done_us);
                    }
                }
                stats.acked += 1;
                Live::add(&self.live.acked, 1);
            }
            Err((err, _)) => {
                *stats.errors.entry(error_name::of(err)).or_default() += 1;
                Live::add(&self.live.errors, 1);
            }
        }
        drop(stats);
        self.room.notify();
    }
}

/// Creates the client, connects it (metadata for the topic), reports ready
/// on `ready`, waits for `start`, produces, flushes.
pub fn run(
    setup: ProducerSetup,
    ready: mpsc::Sender<Result<()>>,
    start: mpsc::Receiver<Start>,
) -> Option<ProducerOutcome> {
    // `ready` is consumed here: the orchestrator counts one report per
    // producer, and a sender kept alive past it would hold its wait open.
    let producer = match connect(&setup) {
        Ok(p) => {
            let _ = ready.send(Ok(()));
            p
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            return None;
        }
    };
    drop(ready);
    // The orchestrator drops the start sender to abort.
    let start = start.recv().ok()?;
    producer
        .context()
        .stats
        .lock()
        .expect("stats lock")
        .send_ack = Some(LatencyRecorder::new(start.t0_us, start.warmup_end_us));

    let mut sender = Sender {
        producer: &producer,
        setup: &setup,
        builder: ValueBuilder::new(setup.record_size, setup.run_id ^ setup.index),
        sent: 0,
        sent_per_second: SecondCounter::default(),
        t0_us: start.t0_us,
    };
    match start.pace {
        Pace::Flat {
            records,
            deadline_us,
        } => sender.flat(records, deadline_us),
        Pace::Open { schedule, records } => {
            let stop = setup.stop.clone();
            let mut send = |seq: u64, scheduled_us: u64| {
                sender.send(seq, scheduled_us, &|| stop.load(Ordering::Relaxed))
            };
            drive_open_loop(
                &schedule,
                setup.index,
                setup.producers,
                records,
                &mut now_us,
                &mut clock::sleep_until_us,
                &mut send,
            );
        }
    }
    let (sent, sent_per_second) = (sender.sent, sender.sent_per_second);

    let flush_timed_out = producer.flush(FLUSH_TIMEOUT).is_err();
    if flush_timed_out {
        producer.purge(PurgeConfig::default().queue().inflight());
        let _ = producer.flush(Duration::from_secs(5));
    }
    let stats = std::mem::take(&mut *producer.context().stats.lock().expect("stats lock"));
    Some(ProducerOutcome {
        sent,
        sent_per_second,
        send_ack: stats.send_ack.expect("set at start"),
        acked: stats.acked,
        errors: stats.errors,
        client_errors: stats.client_errors,
        flush_timed_out,
    })
}

fn connect(setup: &ProducerSetup) -> Result<ThreadedProducer<BenchProducerContext>> {
    let mut config = ClientConfig::new();
    for (k, v) in &setup.config {
        config.set(k, v);
    }
    if setup.config.iter().any(|(k, _)| k == "debug") {
        // rust-rdkafka passes the `log` crate's level on, which is off here.
        config.set_log_level(rdkafka::config::RDKafkaLogLevel::Debug);
    }
    let context = BenchProducerContext {
        debug: setup.config.iter().any(|(k, _)| k == "debug"),
        run_id: setup.run_id,
        checker: setup.checker.clone(),
        history: setup.history.clone(),
        live: setup.live.clone(),
        room: RoomWaiter::default(),
        stats: Mutex::new(DeliveryStats::default()),
    };
    let producer: ThreadedProducer<BenchProducerContext> = config
        .create_with_context(context)
        .context("creating the producer")?;
    // Connect and learn the partition leaders now, not in the measured time.
    producer
        .client()
        .fetch_metadata(Some(&setup.topic), CONNECT_TIMEOUT)
        .with_context(|| format!("producer metadata for {}", setup.topic))?;
    Ok(producer)
}

struct Sender<'a> {
    producer: &'a ThreadedProducer<BenchProducerContext>,
    setup: &'a ProducerSetup,
    builder: ValueBuilder,
    sent: u64,
    sent_per_second: SecondCounter,
    t0_us: u64,
}

impl Sender<'_> {
    /// Sequence ids `index, index + producers, …` as fast as the queue allows.
    fn flat(&mut self, records: Option<u64>, deadline_us: Option<u64>) {
        let setup = self.setup;
        let stop =
            || setup.stop.load(Ordering::Relaxed) || deadline_us.is_some_and(|d| now_us() >= d);
        let mut seq = setup.index;
        while records.is_none_or(|n| seq < n) && !stop() {
            if !self.send(seq, now_us(), &stop) {
                break;
            }
            seq += setup.producers;
        }
    }

    /// Hands one record to librdkafka, waiting for room while the queue is
    /// full. Returns false if `abandon` said to give up while waiting (the
    /// record then does not exist: not sent, not counted).
    fn send(&mut self, seq: u64, stamp_us: u64, abandon: &dyn Fn() -> bool) -> bool {
        let header = Header {
            run_id: self.setup.run_id,
            seq,
            sent_us: stamp_us,
        };
        let keys = match self.setup.keys {
            Keys::None => None,
            Keys::Distinct(n) => Some(n),
        };
        let topic = self.setup.topic.as_str();
        loop {
            let (key, value) = self.builder.record(header, keys);
            let mut record = BaseRecord::to(topic).payload(value);
            if let Some(key) = key {
                record = record.key(key);
            }
            match self.producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    if abandon() {
                        return false;
                    }
                    self.producer.context().room.wait(QUEUE_FULL_WAIT);
                }
                Err((err, _)) => {
                    // Rejected before queueing (e.g. too large): sent, failed.
                    let ctx = self.producer.context();
                    let mut stats = ctx.stats.lock().expect("stats lock");
                    *stats.errors.entry(error_name::of(&err)).or_default() += 1;
                    Live::add(&self.setup.live.errors, 1);
                    break;
                }
            }
        }
        self.sent += 1;
        self.sent_per_second.add(self.t0_us, now_us());
        Live::add(&self.setup.live.sent, 1);
        true
    }
}

/// The open-loop driver: sends `first, first + step, …` below `end`, each at
/// its scheduled time and stamped with it. Overdue sends go out at once, in
/// order, still stamped with their scheduled time, so any lag is latency.
/// `send` returns false to stop. Returns how many were sent.
pub fn drive_open_loop(
    schedule: &RateSchedule,
    first: u64,
    step: u64,
    end: u64,
    now_us: &mut dyn FnMut() -> u64,
    sleep_until_us: &mut dyn FnMut(u64),
    send: &mut dyn FnMut(u64, u64) -> bool,
) -> u64 {
    let mut sent = 0;
    let mut i = first;
    while i < end {
        match schedule.step(i, now_us()) {
            Step::WaitUntil(due_us) => sleep_until_us(due_us),
            Step::SendNow { scheduled_us } => {
                if !send(i, scheduled_us) {
                    break;
                }
                sent += 1;
                i += step;
            }
        }
    }
    sent
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    /// A fake clock and a send that stalls for 2 s on the third record: every
    /// record is stamped with its scheduled time, the ones delayed by the
    /// stall go out back to back, and the producer then returns to the
    /// schedule.
    #[test]
    fn open_loop_stamps_scheduled_times_through_a_stall() {
        let schedule = RateSchedule {
            start_us: 1_000,
            rate_per_sec: 1000.0, // every 1 ms
        };
        let now = Cell::new(0u64);
        let mut stamps = Vec::new();
        let mut sleeps = Vec::new();
        let mut send_times = Vec::new();
        let sent = drive_open_loop(
            &schedule,
            0,
            1,
            2_010,
            &mut || now.get(),
            &mut |until| {
                sleeps.push(until);
                now.set(until);
            },
            &mut |seq, stamp| {
                stamps.push((seq, stamp));
                send_times.push(now.get());
                if seq == 2 {
                    now.set(now.get() + 2_000_000);
                }
                true
            },
        );
        assert_eq!(sent, 2_010);
        for &(seq, stamp) in &stamps {
            assert_eq!(stamp, schedule.due_us(seq));
        }
        // Sends 3..=2002 were due during the stall: sent at once, no sleep.
        let stall_end = send_times[2] + 2_000_000;
        assert!(send_times[3..=2002].iter().all(|&t| t == stall_end));
        // Their latency (from the stamp) includes the lag: 1.999 s for send 3.
        assert_eq!(
            clock::latency_us(stamps[3].1, stall_end),
            stall_end - schedule.due_us(3)
        );
        assert_eq!(clock::latency_us(stamps[3].1, stall_end), 1_999_000);
        // Then back on schedule: every later send waited for its due time.
        assert!(sleeps.contains(&schedule.due_us(2003)));
        assert_eq!(send_times[2003], schedule.due_us(2003));
    }

    #[test]
    fn open_loop_producers_split_the_sequence_ids() {
        let schedule = RateSchedule {
            start_us: 0,
            rate_per_sec: 1e6,
        };
        let mut seen = Vec::new();
        for p in 0..3 {
            let mut t = 0;
            drive_open_loop(
                &schedule,
                p,
                3,
                10,
                &mut || {
                    t += 1;
                    t
                },
                &mut |_| {},
                &mut |seq, _| {
                    seen.push(seq);
                    true
                },
            );
        }
        seen.sort();
        assert_eq!(seen, (0..10).collect::<Vec<_>>());
    }
}
