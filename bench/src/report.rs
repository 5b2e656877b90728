//! The JSON report, a contract with `bench/compare` (which plots and writes
//! the comparison from it): the top-level keys below are fixed; anything new
//! goes under "extra". Also the human summary printed at the end.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context as _, Result};
use serde::Serialize;

use crate::faults::FaultEvent;
use crate::stats::LatencySummary;

#[derive(Debug, Serialize)]
pub struct Report {
    pub label: String,
    pub workload: String,
    pub bootstrap: String,
    pub params: serde_json::Value,
    pub duration_sec: f64,
    pub sent: u64,
    pub acked: u64,
    pub errors: BTreeMap<String, u64>,
    pub consumed: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub throughput: Throughput,
    pub latency_ms: Latencies,
    pub timeline: Vec<TimelineSecond>,
    pub broker: Broker,
    pub faults: Vec<FaultEvent>,
    pub extra: serde_json::Value,
    /// `--check-offsets`: the anomalies that fail the run (in "extra").
    #[serde(skip)]
    pub anomaly_total: u64,
}

#[derive(Debug, Serialize)]
pub struct Throughput {
    pub records_per_sec: f64,
    pub mb_per_sec: f64,
}

#[derive(Debug, Serialize)]
pub struct Latencies {
    pub send_ack: Option<LatencySummary>,
    pub e2e: Option<LatencySummary>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct TimelineSecond {
    pub t: u64,
    pub sent: u64,
    pub acked: u64,
    pub consumed: u64,
    pub send_ack_avg_ms: Option<f64>,
    pub send_ack_p95_ms: Option<f64>,
    pub send_ack_p99_ms: Option<f64>,
    pub e2e_avg_ms: Option<f64>,
    pub e2e_p95_ms: Option<f64>,
    pub e2e_p99_ms: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct Broker {
    pub pids: Vec<u32>,
    pub cpu_seconds: Option<f64>,
    pub peak_rss_kib: Option<u64>,
}

impl Report {
    /// Writes the report next to its final name, then renames it in place, so
    /// a reader never sees half a file.
    pub fn write(&self, path: &Path) -> Result<()> {
        let json = serde_json::to_string_pretty(self).context("serialising the report")?;
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        std::fs::write(&tmp, json + "\n").with_context(|| format!("writing {tmp:?}"))?;
        std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
        Ok(())
    }

    /// The lines printed at the end of a run.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{} '{}' against {}: {:.1} s measured",
            self.workload, self.label, self.bootstrap, self.duration_sec
        );
        let _ = writeln!(
            s,
            "  throughput   {:.0} records/s, {:.2} MB/s",
            self.throughput.records_per_sec, self.throughput.mb_per_sec
        );
        let line = |name: &str, l: &Option<LatencySummary>| {
            match l {
            Some(l) => format!(
                "  {name:<12} avg {:.2} ms  p50 {:.2}  p95 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2} ms\n",
                l.mean, l.p50, l.p95, l.p99, l.p999, l.max
            ),
            None => format!("  {name:<12} -\n"),
        }
        };
        s.push_str(&line("publish", &self.latency_ms.send_ack));
        if self.latency_ms.e2e.is_some() {
            s.push_str(&line("end-to-end", &self.latency_ms.e2e));
        }
        let errors = if self.errors.is_empty() {
            "none".to_string()
        } else {
            self.errors
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(s, "  errors       {errors}");
        let _ = writeln!(
            s,
            "  check        sent {}, acked {}, consumed {}, lost {}, duplicated {}",
            self.sent, self.acked, self.consumed, self.lost, self.duplicated
        );
        if let Some(cpu) = self.broker.cpu_seconds {
            let _ = writeln!(
                s,
                "  broker       cpu {:.2} s, peak rss {:.1} MiB (pids {:?})",
                cpu,
                self.broker.peak_rss_kib.unwrap_or(0) as f64 / 1024.0,
                self.broker.pids
            );
        }
        for f in &self.faults {
            let _ = writeln!(
                s,
                "  fault        t={:.2} s exit {}: {}",
                f.t, f.exit_code, f.command
            );
        }
        let ms =
            |v: &serde_json::Value| v.as_f64().map_or("-".to_string(), |v| format!("{v:.0} ms"));
        for m in self.extra["fault_marks"].as_array().into_iter().flatten() {
            let line = if m["kind"] == "fault" {
                format!(
                    "  @{:<8.2}    {}: first ack after {}, first consumed after {}",
                    m["t"].as_f64().unwrap_or(0.0),
                    m["what"].as_str().unwrap_or(""),
                    ms(&m["first_ack_ms"]),
                    ms(&m["first_consumed_ms"]),
                )
            } else {
                format!(
                    "  @{:<8.2}    {}",
                    m["t"].as_f64().unwrap_or(0.0),
                    m["what"].as_str().unwrap_or("")
                )
            };
            let _ = writeln!(s, "{line}");
        }
        let a = &self.extra["anomalies"];
        if a.is_object() {
            let n = |k: &str| a[k].as_u64().unwrap_or(0);
            let _ = writeln!(
                s,
                "  anomalies    lost {}, unseen {}, duplicated {}, inconsistent offsets {}, non-monotonic offsets {}, taken back {} (redelivered to the group: {}; final read {} of {} acknowledged{})",
                n("lost"),
                n("unseen"),
                n("duplicated"),
                n("inconsistent_offsets"),
                n("nonmonotonic_offsets"),
                n("taken_back"),
                n("redelivered"),
                n("final_read"),
                n("acknowledged"),
                if a["complete_history"] == false { "; history truncated" } else { "" },
            );
        }
        s
    }
}
