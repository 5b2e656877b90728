//! One run, start to end: topic, (e2e) consumer group, producers, samplers
//! and faults, drain or read back, checker verdict, report.
//!
//! Phases, each bounded:
//! 1. create the topic and wait for leaders;
//! 2. e2e only: start the group consumers, wait until every partition is
//!    assigned (`--assign-timeout-sec`);
//! 3. connect every producer (metadata) so no connection setup is measured;
//! 4. t0: producers run; broker sampling, faults and progress start;
//! 5. producers flush; the end offsets are read; e2e consumers drain up to
//!    them (`--verify-timeout-sec`), and that ends the measured workload;
//! 6. throughput/rate: an assign()-ed consumer reads the topic back up to
//!    the end offsets (`--verify-timeout-sec`) for the checker;
//! 7. delete the topic if the bench created it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use serde_json::json;

use crate::admin::{self, TopicSetup};
use crate::checker::Checker;
use crate::cli::{RunArgs, StopRule, Workload};
use crate::clock::{now_us, secs, unix_us, RateSchedule};
use crate::consumer::{
    self, Assignment, ConsumerOutcome, ConsumerSetup, Membership, Positions, RunStart,
};
use crate::faults::{self, FaultEnv, FaultRunner};
use crate::history::{Anomalies, History, Source};
use crate::process_usage::Sampler;
use crate::producer::{self, Pace, ProducerOutcome, ProducerSetup, Start};
use crate::progress::{Plan, Progress};
use crate::report::{Broker, Latencies, Report, Throughput, TimelineSecond};
use crate::stats::{LatencyRecorder, Live, SecondCounter};

const MIB: f64 = 1024.0 * 1024.0;
const DRAIN_POLL: Duration = Duration::from_millis(20);

/// Ctrl-C: the first stops producing (the run still drains, checks and
/// reports), the second also stops draining and reading back.
#[derive(Default)]
pub struct Interrupts {
    pub stop_producing: Arc<AtomicBool>,
    pub stop_verifying: Arc<AtomicBool>,
}

pub async fn run(args: RunArgs, stop_rule: StopRule, interrupts: &Interrupts) -> Result<Report> {
    let fault_steps = match &args.fault_schedule {
        Some(path) => faults::parse(
            &std::fs::read_to_string(path)
                .with_context(|| format!("reading the fault schedule {}", path.display()))?,
        )?,
        None => Vec::new(),
    };
    let configs = args
        .topic_configs
        .iter()
        .map(|c| crate::cli::split_prop(c))
        .collect::<Result<Vec<_>>>()?;
    let spec = admin::TopicSpec {
        name: args.topic(),
        partitions: args.partitions,
        replication_factor: args.replication_factor,
        configs,
    };
    let topic = admin::ensure_topic(&args.bootstrap, &spec).await?;
    if !topic.created {
        eprintln!(
            "using the existing topic {} ({} partitions)",
            topic.name, topic.partitions
        );
    }
    let result = run_on_topic(&args, stop_rule, interrupts, &topic, fault_steps).await;
    let deleted = if topic.created && !args.keep_topic {
        match admin::delete_topic(&args.bootstrap, &topic.name).await {
            Ok(()) => true,
            Err(e) => {
                eprintln!("warning: could not delete the topic {}: {e:#}", topic.name);
                false
            }
        }
    } else {
        false
    };
    let mut report = result?;
    report.extra["topic_deleted"] = json!(deleted);
    Ok(report)
}

async fn run_on_topic(
    args: &RunArgs,
    stop_rule: StopRule,
    interrupts: &Interrupts,
    topic: &TopicSetup,
    fault_steps: Vec<faults::FaultStep>,
) -> Result<Report> {
    let run_id = uuid::Uuid::new_v4().as_u64_pair().0;
    let checker = Arc::new(Checker::default());
    let history = args.check_offsets.then(|| {
        // Sends are indexed up to the planned end, with room to spare.
        let planned_sec = match (stop_rule.seconds, stop_rule.records, args.rate) {
            (Some(s), _, _) => s,
            (None, Some(n), Some(rate)) => n as f64 / rate,
            _ => 3600.0,
        };
        let horizon_sec = (planned_sec + 900.0).min(86_400.0);
        Arc::new(History::new(now_us() + (horizon_sec * 1e6) as u64))
    });
    let live = Arc::new(Live::default());
    let positions = Arc::new(Positions::new(topic.partitions));
    let run_start: Arc<OnceLock<RunStart>> = Arc::new(OnceLock::new());
    let assignment = Arc::new(Assignment::default());
    let consumers_stop = Arc::new(AtomicBool::new(false));

    // Phase 2: the e2e group, assigned before anything is produced.
    let group = match (args.workload, &args.group) {
        (Workload::E2e, Some(group)) => Some(Membership::Group(group.clone())),
        _ => None,
    };
    let consumer_config = group
        .as_ref()
        .map(|m| consumer::client_config(args, m))
        .unwrap_or_default();
    // What every consumer of this run shares; the rest is per consumer.
    let consumer_setup = |index, config, membership, stop, source| ConsumerSetup {
        index,
        config,
        topic: topic.name.clone(),
        membership,
        run_id,
        checker: checker.clone(),
        history: history.clone().map(|h| (h, source)),
        live: live.clone(),
        positions: positions.clone(),
        assignment: assignment.clone(),
        start: run_start.clone(),
        stop,
    };
    let mut consumer_threads = Vec::new();
    if let Some(membership) = &group {
        for index in 0..args.consumers {
            consumer_threads.push(spawn_consumer(consumer_setup(
                index,
                consumer_config.clone(),
                membership.clone(),
                consumers_stop.clone(),
                Source::Live,
            ))?);
        }
        let deadline = now_us() + args.assign_timeout_sec * 1_000_000;
        while !assignment.complete(topic.partitions, args.consumers) {
            if consumer_threads.iter().any(JoinHandle::is_finished) {
                consumers_stop.store(true, Ordering::Relaxed);
                for t in consumer_threads {
                    join(t).await??;
                }
                bail!("a consumer stopped before the group was assigned");
            }
            if now_us() >= deadline {
                consumers_stop.store(true, Ordering::Relaxed);
                bail!(
                    "the group was not assigned every partition within {} s",
                    args.assign_timeout_sec
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    // Phase 3: producers connected and waiting for the start.
    let producer_config = producer::client_config(args);
    let (ready_tx, ready_rx) = mpsc::channel();
    let mut producers = Vec::new();
    for index in 0..args.producers {
        let (start_tx, start_rx) = mpsc::channel();
        let setup = ProducerSetup {
            index: index as u64,
            producers: args.producers as u64,
            config: producer_config.clone(),
            topic: topic.name.clone(),
            run_id,
            record_size: args.record_size,
            keys: args.keys,
            checker: checker.clone(),
            history: history.clone(),
            live: live.clone(),
            stop: interrupts.stop_producing.clone(),
        };
        let ready = ready_tx.clone();
        let handle = std::thread::Builder::new()
            .name(format!("producer-{index}"))
            .spawn(move || producer::run(setup, ready, start_rx))
            .context("spawning a producer thread")?;
        producers.push((start_tx, handle));
    }
    drop(ready_tx);
    // One report per producer; a producer thread that dies without one drops
    // its sender, which ends the iteration early rather than hanging it.
    let expected = args.producers;
    let ready =
        tokio::task::spawn_blocking(move || ready_rx.iter().take(expected).collect::<Vec<_>>())
            .await
            .context("waiting for producers")?;
    let reported = ready.len();
    if let Some(Err(e)) = ready.into_iter().find(Result::is_err) {
        consumers_stop.store(true, Ordering::Relaxed);
        return Err(e.context("connecting a producer"));
    }
    if reported < expected {
        consumers_stop.store(true, Ordering::Relaxed);
        bail!(
            "{} of {expected} producer threads stopped before connecting",
            expected - reported
        );
    }

    // Phase 4: t0.
    let t0_us = now_us();
    let t0_unix_us = unix_us();
    let warmup_end_us = t0_us + (args.warmup_sec * 1e6) as u64;
    run_start
        .set(RunStart {
            t0_us,
            warmup_end_us,
        })
        .expect("set once");
    let pace = match args.workload {
        Workload::Throughput => Pace::Flat {
            records: stop_rule.records,
            deadline_us: stop_rule.seconds.map(|s| t0_us + (s * 1e6) as u64),
        },
        Workload::Rate | Workload::E2e => Pace::Open {
            schedule: RateSchedule {
                start_us: t0_us,
                rate_per_sec: args.rate.expect("checked by resolve()"),
            },
            records: stop_rule.records.expect("rate workloads have a count"),
        },
    };
    let sampler = Sampler::start(args.broker_pids.clone(), t0_us);
    let faults = FaultRunner::start(
        fault_steps,
        t0_us,
        FaultEnv {
            bootstrap: args.bootstrap.clone(),
            topic: topic.name.clone(),
            broker_pids: args.broker_pids.clone(),
        },
    );
    let plan = match (stop_rule.seconds, stop_rule.records, args.rate) {
        (Some(s), _, _) => Plan::Seconds(s),
        (None, Some(n), Some(rate)) => Plan::Seconds(n as f64 / rate),
        (None, Some(n), None) => Plan::Records(n),
        (None, None, _) => Plan::Seconds(0.0),
    };
    let progress = Progress::start(!args.no_progress, plan, live.clone(), t0_us);
    for (start_tx, _) in &producers {
        let _ = start_tx.send(Start {
            t0_us,
            warmup_end_us,
            pace,
        });
    }
    let mut produced: Vec<ProducerOutcome> = Vec::new();
    for (_, handle) in producers {
        produced.push(
            join(handle)
                .await?
                .ok_or_else(|| anyhow!("a producer did not start"))?,
        );
    }
    let produce_end_us = now_us();

    // Phase 5: end offsets; the e2e group drains up to them.
    let end_offsets = end_offsets(args, topic).await;
    let mut verification_complete = false;
    let mut consumed_outcomes: Vec<ConsumerOutcome> = Vec::new();
    let verify_start_us = now_us();
    if group.is_some() {
        verification_complete = drain(
            &positions,
            end_offsets.as_deref(),
            args,
            &interrupts.stop_verifying,
            &|| consumer_threads.iter().all(JoinHandle::is_finished),
        )
        .await;
        consumers_stop.store(true, Ordering::Relaxed);
        for t in consumer_threads {
            consumed_outcomes.push(join(t).await??);
        }
    }
    let workload_end_us = now_us();
    if let Some(p) = progress {
        p.finish();
    }
    let usage = sampler.finish();
    let (fault_details, faults_not_run) = faults.finish().await;

    // Phase 6: read back what the producers wrote (throughput and rate),
    // and with --check-offsets also after an e2e run: every partition from
    // the beginning, now that the faults have healed, up to the end offsets
    // taken now.
    let mut final_read_complete = false;
    if group.is_none() || history.is_some() {
        eprintln!("reading the topic back to check for lost and duplicated records ...");
        let membership = Membership::ReadBack {
            partitions: topic.partitions,
        };
        let readback_stop = Arc::new(AtomicBool::new(false));
        let config = consumer::client_config(args, &membership);
        let mut setup = consumer_setup(0, config, membership, readback_stop.clone(), Source::Final);
        let final_ends = if group.is_some() {
            // The group's consumption is checked by the live checker; this
            // read is counted by the history alone.
            setup.checker = Arc::new(Checker::default());
            setup.positions = Arc::new(Positions::new(topic.partitions));
            end_offsets_after_faults(args, topic).await
        } else {
            end_offsets.clone()
        };
        let readback_positions = setup.positions.clone();
        let thread = spawn_consumer(setup)?;
        let complete = drain(
            &readback_positions,
            final_ends.as_deref(),
            args,
            &interrupts.stop_verifying,
            &|| thread.is_finished(),
        )
        .await;
        readback_stop.store(true, Ordering::Relaxed);
        let outcome = join(thread).await??;
        final_read_complete = complete;
        if group.is_none() {
            verification_complete = complete;
            consumed_outcomes.push(outcome);
        }
    }
    let verify_sec = secs(now_us() - verify_start_us);

    // Assemble.
    let mut sent_per_second = SecondCounter::default();
    let mut send_ack = LatencyRecorder::new(t0_us, warmup_end_us);
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut client_errors: BTreeMap<String, u64> = BTreeMap::new();
    let (mut sent, mut acked, mut flush_timed_out) = (0, 0, false);
    for p in produced {
        sent += p.sent;
        acked += p.acked;
        flush_timed_out |= p.flush_timed_out;
        sent_per_second.merge(&p.sent_per_second);
        send_ack.merge(p.send_ack);
        add_counts(&mut errors, p.errors);
        add_counts(&mut client_errors, p.client_errors);
    }
    let mut e2e: Option<LatencyRecorder> = None;
    let mut consumed_per_second = SecondCounter::default();
    let mut consumer_errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut foreign = 0;
    for c in consumed_outcomes {
        foreign += c.foreign;
        consumed_per_second.merge(&c.consumed_per_second);
        add_counts(&mut consumer_errors, c.errors);
        add_counts(&mut client_errors, c.client_errors);
        if let Some(r) = c.e2e {
            match e2e.as_mut() {
                Some(all) => all.merge(r),
                None => e2e = Some(r),
            }
        }
    }
    let verdict = checker.verdict();
    let marks = fault_marks(&fault_details, t0_us, t0_unix_us, history.as_deref());
    let anomalies = history
        .as_ref()
        .map(|h| h.anomalies(args.producers as u64, final_read_complete));
    let measured_end_us = send_ack.last_done_us().unwrap_or(produce_end_us);
    let duration_sec = secs(measured_end_us.saturating_sub(warmup_end_us)).max(1e-6);
    let records_per_sec = send_ack.measured_count() as f64 / duration_sec;

    let seconds = [
        sent_per_second.seconds(),
        send_ack.seconds(),
        consumed_per_second.seconds(),
        e2e.as_ref().map_or(0, LatencyRecorder::seconds),
    ]
    .into_iter()
    .max()
    .unwrap_or(0);
    let timeline = (0..seconds)
        .map(|t| {
            let a = send_ack.second(t);
            let e = e2e.as_ref().map(|r| r.second(t)).unwrap_or_default();
            TimelineSecond {
                t: t as u64,
                sent: sent_per_second.get(t),
                acked: a.count,
                consumed: consumed_per_second.get(t),
                send_ack_avg_ms: a.avg_ms,
                send_ack_p95_ms: a.p95_ms,
                send_ack_p99_ms: a.p99_ms,
                e2e_avg_ms: e.avg_ms,
                e2e_p95_ms: e.p95_ms,
                e2e_p99_ms: e.p99_ms,
            }
        })
        .collect();

    let error_count: u64 = errors.values().sum();
    let extra = json!({
        "run_id": format!("{run_id:016x}"),
        "topic": topic.name,
        "partitions": topic.partitions,
        "topic_created": topic.created,
        "librdkafka_version": rdkafka::util::get_rdkafka_version().1,
        "warmup_sec": args.warmup_sec,
        "produce_sec": secs(produce_end_us - t0_us),
        "workload_sec": secs(workload_end_us - t0_us),
        "measured": "records stamped after the warmup; duration from the warmup's end to the last ack",
        "timeline_bucket": "second of completion (ack or consume time); t = 0 when producing starts",
        "latency_from": match args.workload {
            Workload::Throughput => "send time",
            _ => "scheduled send time (open loop: t0 + i / rate)",
        },
        "mb_unit": "MiB (1048576 bytes) of record values",
        "unresolved": sent.saturating_sub(acked + error_count),
        "flush_timed_out": flush_timed_out,
        "consumed_unique": verdict.consumed_unique,
        "consumed_not_acked": verdict.consumed_not_acked,
        "foreign_records": foreign,
        "verification": {
            "method": if group.is_some() { "consumer group" } else { "read back (assign from the beginning)" },
            "complete": verification_complete,
            "end_offsets": end_offsets,
            "sec": verify_sec,
        },
        "rebalances": assignment.rebalances(),
        "consumer_errors": consumer_errors,
        "client_errors": client_errors,
        "producer_config": producer_config.into_iter().collect::<BTreeMap<_, _>>(),
        "consumer_config": consumer_config.into_iter().collect::<BTreeMap<_, _>>(),
        "broker_timeline": usage.timeline,
        "broker_vm_hwm_kib": usage.vm_hwm_kib,
        "client_cpu_seconds": usage.client_cpu_seconds,
        "fault_details": fault_details,
        "faults_not_run": faults_not_run.iter().map(|s| json!({"at_sec": s.at_sec, "command": s.command})).collect::<Vec<_>>(),
        "interrupted": interrupts.stop_producing.load(Ordering::Relaxed),
        "fault_marks": marks,
        "anomalies": anomalies,
    });
    // With a history, its final read decides lost and duplicated; the live
    // group's re-deliveries are at-least-once, not duplicates in the log.
    let (lost, duplicated) = match &anomalies {
        Some(a) => (a.lost, a.duplicated),
        None => (verdict.lost, verdict.duplicated),
    };
    let anomaly_total = anomalies.as_ref().map_or(0, Anomalies::total);

    Ok(Report {
        label: args.label.clone(),
        workload: args.workload.name().to_string(),
        bootstrap: args.bootstrap.clone(),
        params: serde_json::to_value(args).context("serialising the parameters")?,
        duration_sec,
        sent,
        acked,
        errors,
        consumed: verdict.consumed,
        lost,
        duplicated,
        throughput: Throughput {
            records_per_sec,
            mb_per_sec: records_per_sec * args.record_size as f64 / MIB,
        },
        latency_ms: Latencies {
            send_ack: send_ack.summary(),
            e2e: e2e.as_ref().and_then(LatencyRecorder::summary),
        },
        timeline,
        broker: Broker {
            pids: usage.pids,
            cpu_seconds: usage.cpu_seconds,
            peak_rss_kib: usage.peak_rss_kib,
        },
        faults: fault_details.iter().map(|d| d.event.clone()).collect(),
        extra,
        anomaly_total,
    })
}

/// A fault script's `@fault UNIX_US WHAT` / `@heal UNIX_US WHAT` line, on
/// the run's time axis, with (for a fault) how long until a record sent
/// after it was acknowledged and consumed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FaultMark {
    pub t: f64,
    pub kind: String,
    pub what: String,
    pub first_ack_ms: Option<f64>,
    pub first_consumed_ms: Option<f64>,
}

fn fault_marks(
    details: &[faults::FaultDetail],
    t0_us: u64,
    t0_unix_us: u64,
    history: Option<&History>,
) -> Vec<FaultMark> {
    let mut marks: Vec<FaultMark> = details
        .iter()
        .flat_map(|d| d.output.lines())
        .filter_map(|line| {
            let (kind, rest) = line.strip_prefix('@')?.split_once(' ')?;
            if kind != "fault" && kind != "heal" {
                return None;
            }
            let (at, what) = rest.split_once(' ').unwrap_or((rest, ""));
            let at_unix_us: u64 = at.parse().ok()?;
            let rel_us = at_unix_us as i64 - t0_unix_us as i64;
            let at_us = (t0_us as i64 + rel_us).max(0) as u64;
            let (ack, consumed) = match (kind, history) {
                ("fault", Some(h)) => h.first_after(at_us),
                _ => (None, None),
            };
            let ms = |t: Option<u64>| t.map(|t| t.saturating_sub(at_us) as f64 / 1e3);
            Some(FaultMark {
                t: rel_us as f64 / 1e6,
                kind: kind.to_string(),
                what: what.to_string(),
                first_ack_ms: ms(ack),
                first_consumed_ms: ms(consumed),
            })
        })
        .collect();
    marks.sort_by(|a, b| a.t.total_cmp(&b.t));
    marks
}

/// End offsets for the final read, once the faults have healed: retried
/// (bounded) while the cluster is still electing.
async fn end_offsets_after_faults(args: &RunArgs, topic: &TopicSetup) -> Option<Vec<i64>> {
    let deadline = now_us() + args.verify_timeout_sec * 1_000_000;
    loop {
        if let Some(ends) = end_offsets(args, topic).await {
            return Some(ends);
        }
        if now_us() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn spawn_consumer(setup: ConsumerSetup) -> Result<JoinHandle<Result<ConsumerOutcome>>> {
    std::thread::Builder::new()
        .name(format!("consumer-{}", setup.index))
        .spawn(move || consumer::run(setup))
        .context("spawning a consumer thread")
}

async fn join<T: Send + 'static>(handle: JoinHandle<T>) -> Result<T> {
    tokio::task::spawn_blocking(move || handle.join())
        .await
        .context("join task")?
        .map_err(|_| anyhow!("a bench thread panicked"))
}

/// High watermarks after producing; None (and a warning) if the broker does
/// not answer, e.g. because a fault took it down.
async fn end_offsets(args: &RunArgs, topic: &TopicSetup) -> Option<Vec<i64>> {
    let (bootstrap, name, partitions) =
        (args.bootstrap.clone(), topic.name.clone(), topic.partitions);
    match tokio::task::spawn_blocking(move || admin::end_offsets(&bootstrap, &name, partitions))
        .await
    {
        Ok(Ok(ends)) => Some(ends),
        Ok(Err(e)) => {
            eprintln!("warning: could not read the end offsets: {e:#}");
            None
        }
        Err(e) => {
            eprintln!("warning: end offsets task failed: {e}");
            None
        }
    }
}

/// Waits until every partition is consumed up to `end_offsets`, bounded by
/// --verify-timeout-sec, or until every consumer thread has stopped.
/// Returns whether it got there.
async fn drain(
    positions: &Positions,
    end_offsets: Option<&[i64]>,
    args: &RunArgs,
    stop: &AtomicBool,
    consumers_gone: &(dyn Fn() -> bool + Sync),
) -> bool {
    let Some(ends) = end_offsets else {
        return false;
    };
    let deadline = now_us() + args.verify_timeout_sec * 1_000_000;
    loop {
        if positions.reached(ends) {
            return true;
        }
        if consumers_gone() {
            // Their error (from the join) says why; no point waiting.
            return false;
        }
        if now_us() >= deadline || stop.load(Ordering::Relaxed) {
            eprintln!(
                "warning: consumers did not reach the end offsets within {} s; lost counts may be too high",
                args.verify_timeout_sec
            );
            return false;
        }
        tokio::time::sleep(DRAIN_POLL).await;
    }
}

fn add_counts(into: &mut BTreeMap<String, u64>, from: BTreeMap<String, u64>) {
    for (k, v) in from {
        *into.entry(k).or_default() += v;
    }
}
