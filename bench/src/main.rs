//! fjord-bench: the same workloads against any Kafka-protocol broker.
//!
//! `fjord-bench run --bootstrap HOST:PORT --workload throughput|rate|e2e ...`
//! produces (and consumes) through librdkafka, checks every record off by
//! its sequence id, writes a JSON report (the contract with `bench/compare`,
//! see `report.rs`) and prints a summary. It exits 1 if records were lost or
//! duplicated (unless --allow-loss), 2 if the run itself failed.

mod admin;
mod checker;
mod cli;
mod clock;
mod consumer;
mod error_name;
mod failover;
mod faults;
mod history;
mod kafka_rpc;
mod payload;
mod process_usage;
mod producer;
mod progress;
mod report;
mod run;
mod soak;
mod stats;

use std::process::ExitCode;
use std::sync::atomic::Ordering;

use clap::Parser;

use crate::cli::{Cli, Command};
use crate::run::Interrupts;

fn main() -> ExitCode {
    // Fix the bench clock's origin before any thread reads it.
    clock::now_us();
    let mut args = match Cli::parse().command {
        Command::Run(args) => args,
        Command::Failover(args) => return failover(args),
        Command::Leader(args) => return leader(args),
        Command::Brokers(args) => return brokers(args),
        Command::Soak(soak) => match soak_run(&soak) {
            Ok(args) => args,
            Err(e) => {
                eprintln!("error: {e:#}");
                return ExitCode::from(2);
            }
        },
    };
    let stop_rule = match args.resolve() {
        Ok(rule) => rule,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    let runtime = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    runtime.block_on(async move {
        let interrupts = Interrupts::default();
        let stop_producing = interrupts.stop_producing.clone();
        let stop_verifying = interrupts.stop_verifying.clone();
        tokio::spawn(async move {
            let mut count = 0;
            while tokio::signal::ctrl_c().await.is_ok() {
                count += 1;
                match count {
                    1 => {
                        eprintln!("\ninterrupted: stopping the producers (Ctrl-C again to skip the check)");
                        stop_producing.store(true, Ordering::Relaxed);
                    }
                    2 => {
                        eprintln!("\ninterrupted again: skipping the rest of the check");
                        stop_verifying.store(true, Ordering::Relaxed);
                    }
                    _ => std::process::exit(130),
                }
            }
        });

        let report = match run::run((*args).clone(), stop_rule, &interrupts).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("error: {e:#}");
                return ExitCode::from(2);
            }
        };
        if let Err(e) = report.write(&args.out) {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
        print!("{}", report.summary());
        println!("  report       {}", args.out.display());
        if report.lost > 0 || report.duplicated > 0 || report.anomaly_total > 0 {
            eprintln!(
                "FAILED: {} acknowledged record(s) never consumed (lost), {} consumed more than once (duplicated), {} anomalies in all{}",
                report.lost,
                report.duplicated,
                report.anomaly_total.max(report.lost + report.duplicated),
                if args.allow_loss { "; allowed by --allow-loss" } else { "" }
            );
            if !args.allow_loss {
                return ExitCode::from(1);
            }
        }
        ExitCode::SUCCESS
    })
}

/// `fjord-bench failover`: prints each kill and the summary, writes the JSON
/// if asked; exits 1 if an acknowledged record was lost or one duplicated.
fn failover(args: failover::FailoverArgs) -> ExitCode {
    let runtime = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let out = args.out.clone();
    let report = match runtime.block_on(failover::run(args)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    println!(
        "{} kills: unavailable median {:.0} ms, max {:.0} ms; sent {}, acknowledged {}, lost {}, duplicated {}",
        report.kills.len(),
        report.unavailable_ms_median,
        report.unavailable_ms_max,
        report.sent,
        report.acknowledged,
        report.lost,
        report.duplicated
    );
    if let Some(out) = out {
        let written = serde_json::to_vec_pretty(&report)
            .map_err(anyhow::Error::from)
            .and_then(|json| std::fs::write(&out, json).map_err(anyhow::Error::from));
        if let Err(e) = written {
            eprintln!("error: writing {}: {e:#}", out.display());
            return ExitCode::from(2);
        }
    }
    if report.lost > 0 || report.duplicated > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// The `run` a soak is: its arguments, its schedule beside the report.
fn soak_run(soak: &soak::SoakArgs) -> anyhow::Result<Box<cli::RunArgs>> {
    let schedule = soak.out.with_extension("schedule");
    let (argv, _seed) = soak::plan(soak, &schedule)?;
    match Cli::try_parse_from(argv)?.command {
        Command::Run(args) => Ok(args),
        _ => anyhow::bail!("a soak is a run"),
    }
}

/// `fjord-bench leader`: `LEADER R1,R2,...` on stdout; exit 1 without one.
fn leader(args: cli::LeaderArgs) -> ExitCode {
    let wait = std::time::Duration::from_secs_f64(args.timeout_sec.clamp(0.0, 3600.0));
    match admin::partition_leader(&args.bootstrap, &args.topic, args.partition, wait) {
        Ok((leader, replicas)) => {
            let replicas: Vec<String> = replicas.iter().map(i32::to_string).collect();
            println!("{leader} {}", replicas.join(","));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// `fjord-bench brokers`: exit 0 once --count brokers are listed.
fn brokers(args: cli::BrokersArgs) -> ExitCode {
    let wait = std::time::Duration::from_secs_f64(args.timeout_sec.clamp(0.0, 3600.0));
    match admin::await_brokers(&args.bootstrap, args.count, wait) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// The bench's runtime: two worker threads (the machine's two cores), or
/// exit status 2 if it cannot start.
fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("error: starting the runtime: {e}");
            ExitCode::from(2)
        })
}
