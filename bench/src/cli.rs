//! The `fjord-bench` command line.
//!
//! The parsed [`RunArgs`] is also what the report writes under `"params"`, so
//! every flag is serialisable and the generated names (topic, group) are
//! filled in before the run starts: the report says exactly what ran.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use anyhow::{bail, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::{Serialize, Serializer};

use crate::payload;

#[derive(Parser, Debug)]
#[command(
    name = "fjord-bench",
    version,
    about = "The same workloads against any Kafka-protocol broker (Fjord or Apache Kafka)"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run one workload and write its JSON report.
    Run(Box<RunArgs>),
    /// Start a local Fjord cluster, kill -9 a partition leader again and
    /// again under a librdkafka producer, and measure each failover.
    Failover(crate::failover::FailoverArgs),
    /// Print a partition's leader and replicas (`LEADER R1,R2,...`) by
    /// Metadata, once it has a leader; for fault scripts.
    Leader(LeaderArgs),
    /// Wait until Metadata lists --count brokers.
    Brokers(BrokersArgs),
    /// Random faults (bench/fault) against a running three-node cluster
    /// for --minutes, under one e2e run with the history checker.
    Soak(crate::soak::SoakArgs),
}

#[derive(Args, Debug, Clone)]
pub struct LeaderArgs {
    #[arg(long)]
    pub bootstrap: String,
    #[arg(long)]
    pub topic: String,
    #[arg(long, default_value_t = 0)]
    pub partition: i32,
    /// Bound on waiting for a leader.
    #[arg(long, default_value_t = 30.0)]
    pub timeout_sec: f64,
}

#[derive(Args, Debug, Clone)]
pub struct BrokersArgs {
    #[arg(long)]
    pub bootstrap: String,
    #[arg(long)]
    pub count: usize,
    #[arg(long, default_value_t = 60.0)]
    pub timeout_sec: f64,
}

#[derive(Args, Debug, Clone, Serialize)]
pub struct RunArgs {
    /// Bootstrap address of the broker under test (HOST:PORT[,HOST:PORT...]).
    #[arg(long)]
    pub bootstrap: String,
    /// throughput: as fast as possible; rate: open loop at --rate;
    /// e2e: rate plus a consumer group, measuring end-to-end latency.
    #[arg(long, value_enum)]
    pub workload: Workload,
    /// Free text that identifies this run in the report (e.g. "fjord" or "kafka").
    #[arg(long)]
    pub label: String,
    /// Where to write the JSON report.
    #[arg(long)]
    pub out: PathBuf,

    /// Topic to use (default bench-<uuid>, created and deleted by the bench).
    #[arg(long)]
    pub topic: Option<String>,
    /// Partitions of the topic when the bench creates it.
    #[arg(long, default_value_t = 1)]
    pub partitions: i32,
    /// Replication factor of the topic when the bench creates it.
    #[arg(long, default_value_t = 1)]
    pub replication_factor: i32,
    /// Topic config KEY=VALUE when the bench creates it (e.g.
    /// min.insync.replicas=2). Repeatable.
    #[arg(long = "topic-config", value_name = "KEY=VALUE")]
    pub topic_configs: Vec<String>,
    /// Keep the topic the bench created instead of deleting it at the end.
    #[arg(long)]
    pub keep_topic: bool,

    /// Value size in bytes (a 28-byte bench header plus padding).
    #[arg(long, default_value_t = 100)]
    pub record_size: usize,
    #[arg(long, value_enum, default_value_t = Acks::All)]
    pub acks: Acks,
    #[arg(long, value_enum, default_value_t = Compression::None)]
    pub compression: Compression,
    #[arg(long, default_value_t = 5)]
    pub linger_ms: u64,
    #[arg(long, default_value_t = 16384)]
    pub batch_size: u64,
    /// Independent producer clients, each on its own thread and connection.
    #[arg(long, default_value_t = 1)]
    pub producers: usize,
    /// `none` (null keys) or N: keys drawn uniformly from N distinct keys.
    #[arg(long, default_value = "none")]
    pub keys: Keys,

    /// Total records (all producers together). For throughput, the run stops
    /// at --records or --duration-sec, whichever comes first.
    #[arg(long)]
    pub records: Option<u64>,
    /// Measured duration in seconds (after --warmup-sec).
    #[arg(long, env = "DURATION_SEC")]
    pub duration_sec: Option<f64>,
    /// Target records per second (all producers together), for rate and e2e.
    #[arg(long, env = "TARGET_RPS")]
    pub rate: Option<f64>,
    /// Seconds at the start whose records are checked but left out of the
    /// latency histograms and the throughput figure.
    #[arg(long, default_value_t = 0.0)]
    pub warmup_sec: f64,

    /// Consumer group id for e2e (default bench-<uuid>).
    #[arg(long)]
    pub group: Option<String>,
    /// Consumers in the e2e group, each on its own thread and connection.
    #[arg(long, default_value_t = 1)]
    pub consumers: usize,

    /// Broker process to sample (CPU time, RSS) every 100 ms. Repeatable.
    #[arg(long = "broker-pid")]
    pub broker_pids: Vec<u32>,
    /// File of "AT_SEC COMMAND..." lines; each command runs with `sh -c` at
    /// that many seconds after producing starts.
    #[arg(long)]
    pub fault_schedule: Option<PathBuf>,

    /// Extra librdkafka producer property KEY=VALUE (overrides the bench's). Repeatable.
    #[arg(long = "producer-prop", value_name = "KEY=VALUE")]
    pub producer_props: Vec<String>,
    /// Extra librdkafka consumer property KEY=VALUE (overrides the bench's). Repeatable.
    #[arg(long = "consumer-prop", value_name = "KEY=VALUE")]
    pub consumer_props: Vec<String>,

    /// Bound on waiting for the e2e group assignment before producing.
    #[arg(long, default_value_t = 60)]
    pub assign_timeout_sec: u64,
    /// Bound on reading back (or draining) the topic to the end offsets.
    #[arg(long, default_value_t = 120)]
    pub verify_timeout_sec: u64,

    /// Keep every acknowledgement and consumption with its offset, read the
    /// topic back from the beginning at the end (also after an e2e run), and
    /// check for inconsistent and non-monotonic offsets and records taken
    /// back (see history.rs); also measures the unavailability after each
    /// fault. For bounded runs: up to 10 million events are kept.
    #[arg(long)]
    pub check_offsets: bool,

    /// Exit 0 even if records were lost or duplicated.
    #[arg(long)]
    pub allow_loss: bool,
    /// No progress bar (it is also off when stderr is not a terminal).
    #[arg(long)]
    pub no_progress: bool,
}

#[derive(ValueEnum, Serialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    Throughput,
    Rate,
    E2e,
}

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Workload::Throughput => "throughput",
            Workload::Rate => "rate",
            Workload::E2e => "e2e",
        }
    }
}

#[derive(ValueEnum, Serialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acks {
    #[value(name = "all")]
    #[serde(rename = "all")]
    All,
    #[value(name = "1")]
    #[serde(rename = "1")]
    Leader,
    #[value(name = "0")]
    #[serde(rename = "0")]
    None,
}

impl Acks {
    /// The value of librdkafka's `acks` property.
    pub fn config_value(self) -> &'static str {
        match self {
            Acks::All => "all",
            Acks::Leader => "1",
            Acks::None => "0",
        }
    }
}

#[derive(ValueEnum, Serialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl Compression {
    /// The value of librdkafka's `compression.type` property.
    pub fn config_value(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

/// Record keys: null, or drawn uniformly from `N` distinct keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keys {
    None,
    Distinct(u64),
}

impl FromStr for Keys {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("none") {
            return Ok(Keys::None);
        }
        match s.parse::<u64>() {
            Ok(0) | Err(_) => Err(format!("expected `none` or a positive count, got {s:?}")),
            Ok(n) => Ok(Keys::Distinct(n)),
        }
    }
}

impl fmt::Display for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Keys::None => f.write_str("none"),
            Keys::Distinct(n) => write!(f, "{n}"),
        }
    }
}

/// `"none"` or the key count as a number.
impl Serialize for Keys {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Keys::None => s.serialize_str("none"),
            Keys::Distinct(n) => s.serialize_u64(*n),
        }
    }
}

/// When the producers stop.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StopRule {
    /// Total records over all producers, warmup included.
    pub records: Option<u64>,
    /// Producing time in seconds, warmup included (throughput only; rate
    /// workloads turn their duration into a record count).
    pub seconds: Option<f64>,
}

impl RunArgs {
    /// Checks the flags against each other, fills in generated names and
    /// returns when the producers stop.
    pub fn resolve(&mut self) -> Result<StopRule> {
        if self.partitions < 1 {
            bail!("--partitions must be at least 1");
        }
        if self.replication_factor < 1 {
            bail!("--replication-factor must be at least 1");
        }
        if self.producers < 1 || self.consumers < 1 {
            bail!("--producers and --consumers must be at least 1");
        }
        if self.record_size < payload::HEADER_LEN {
            bail!(
                "--record-size must be at least {} bytes (the bench header: magic, run id, sequence id, send time)",
                payload::HEADER_LEN
            );
        }
        if !(self.warmup_sec >= 0.0 && self.warmup_sec.is_finite()) {
            bail!("--warmup-sec must be a non-negative number");
        }
        if let Some(d) = self.duration_sec {
            if !(d > 0.0 && d.is_finite()) {
                bail!("--duration-sec must be a positive number");
            }
        }
        if let Some(r) = self.rate {
            if !(r > 0.0 && r.is_finite()) {
                bail!("--rate must be a positive number of records per second");
            }
        }
        if self.records == Some(0) {
            bail!("--records must be positive");
        }
        for prop in self
            .producer_props
            .iter()
            .chain(&self.consumer_props)
            .chain(&self.topic_configs)
        {
            split_prop(prop)?;
        }
        let id = uuid::Uuid::new_v4().simple().to_string();
        if self.topic.is_none() {
            self.topic = Some(format!("bench-{id}"));
        }
        if self.workload == Workload::E2e && self.group.is_none() {
            self.group = Some(format!("bench-{id}"));
        }

        let warmup = self.warmup_sec;
        match self.workload {
            Workload::Throughput => {
                if self.records.is_none() && self.duration_sec.is_none() {
                    bail!("throughput needs --records N or --duration-sec S (or DURATION_SEC)");
                }
                Ok(StopRule {
                    records: self.records,
                    seconds: self.duration_sec.map(|d| d + warmup),
                })
            }
            Workload::Rate | Workload::E2e => {
                let Some(rate) = self.rate else {
                    bail!("{} needs --rate RPS (or TARGET_RPS)", self.workload.name());
                };
                let records = match (self.records, self.duration_sec) {
                    (Some(n), _) => n,
                    (None, Some(d)) => ((d + warmup) * rate).ceil() as u64,
                    (None, None) => bail!(
                        "{} needs --duration-sec S (or DURATION_SEC)",
                        self.workload.name()
                    ),
                };
                Ok(StopRule {
                    records: Some(records.max(1)),
                    seconds: None,
                })
            }
        }
    }

    pub fn topic(&self) -> &str {
        self.topic.as_deref().expect("resolve() fills the topic")
    }
}

/// Splits a `KEY=VALUE` client property.
pub fn split_prop(prop: &str) -> Result<(&str, &str)> {
    match prop.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim(), v.trim())),
        _ => bail!("client property {prop:?} is not KEY=VALUE"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &[&str]) -> RunArgs {
        let mut argv = vec![
            "fjord-bench",
            "run",
            "--bootstrap",
            "127.0.0.1:9092",
            "--label",
            "x",
            "--out",
            "/tmp/x.json",
        ];
        argv.extend_from_slice(extra);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Run(args) => *args,
            other => panic!("not a run: {other:?}"),
        }
    }

    #[test]
    fn rate_workload_turns_duration_and_warmup_into_a_record_count() {
        let mut args = parse(&[
            "--workload",
            "rate",
            "--rate",
            "1000",
            "--duration-sec",
            "2",
            "--warmup-sec",
            "1",
        ]);
        let stop = args.resolve().unwrap();
        assert_eq!(stop.records, Some(3000));
        assert!(args.topic().starts_with("bench-"));
    }

    #[test]
    fn acks_keys_and_params_serialise_as_typed_on_the_command_line() {
        let mut args = parse(&[
            "--workload",
            "throughput",
            "--records",
            "10",
            "--acks",
            "1",
            "--keys",
            "16",
        ]);
        args.resolve().unwrap();
        let v = serde_json::to_value(&args).unwrap();
        assert_eq!(v["acks"], "1");
        assert_eq!(v["keys"], 16);
        assert_eq!(v["workload"], "throughput");
        assert_eq!(v["compression"], "none");
    }

    #[test]
    fn rate_without_a_rate_is_rejected() {
        let mut args = parse(&["--workload", "e2e", "--duration-sec", "1"]);
        if std::env::var_os("TARGET_RPS").is_none() {
            assert!(args.resolve().is_err());
        }
    }
}
