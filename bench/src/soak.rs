//! `fjord-bench soak`: random faults from `bench/fault` for as long as asked,
//! against a running three-node cluster (`scripts/fjord-cluster` or
//! `scripts/kafka-cluster`), under one e2e run with the history checker.
//!
//! The schedule is drawn from `--seed` (printed, and written into the
//! report), so a soak that found something replays with the same faults at
//! the same times: from 10 s on, a fault (kill -9 of the leader or of a
//! follower, SIGSTOP of the leader, or the leader cut off from its peers),
//! lasting 2–8 s, then 8–20 s of calm, until 25 s before the end. The run
//! is bounded: `--minutes` of producing at `--rate`, then the checks.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;

/// The faults a soak draws from (`bench/fault` names).
const KINDS: [&str; 4] = [
    "kill-leader",
    "kill-follower",
    "pause-leader",
    "isolate-leader",
];
/// Longest soak (bounds the traffic and the history).
const MINUTES_MAX: f64 = 24.0 * 60.0;

#[derive(Args, Debug, Clone)]
pub struct SoakArgs {
    /// Bootstrap address of the cluster under test.
    #[arg(long)]
    pub bootstrap: String,
    /// "SCRIPT DIR": the cluster's script and directory, as `bench/fault`
    /// takes them (e.g. "scripts/fjord-cluster /tmp/c").
    #[arg(long, env = "BENCH_CLUSTER")]
    pub cluster: String,
    /// How long to produce while faults strike.
    #[arg(long)]
    pub minutes: f64,
    /// Records per second.
    #[arg(long, default_value_t = 2000.0)]
    pub rate: f64,
    /// Seed of the fault schedule (default: the clock).
    #[arg(long)]
    pub seed: Option<u64>,
    /// The fault script.
    #[arg(long, default_value = "bench/fault")]
    pub fault_script: PathBuf,
    #[arg(long, default_value = "soak")]
    pub label: String,
    /// Where to write the JSON report.
    #[arg(long)]
    pub out: PathBuf,
}

/// A small deterministic generator (xorshift64*), so that a seed replays
/// the same schedule on any machine.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

/// The schedule file's text for a soak of `seconds` from `seed`; each line
/// runs `script` (with its environment assignments, if any).
pub fn schedule(seed: u64, seconds: f64, script: &str) -> String {
    let mut rng = Rng::new(seed);
    let mut out = format!("# fjord-bench soak, seed {seed}\n");
    let mut t = 10.0;
    while t + 25.0 < seconds {
        let kind = KINDS[rng.range(0, KINDS.len() as u64 - 1) as usize];
        let down = rng.range(2, 8);
        out.push_str(&format!("{t} {script} {kind} {down}\n"));
        t += (down + rng.range(8, 20)) as f64;
    }
    out
}

/// The `fjord-bench run` arguments of a soak, with its schedule written to
/// `schedule_path`; returns them and the seed.
pub fn plan(args: &SoakArgs, schedule_path: &std::path::Path) -> Result<(Vec<String>, u64)> {
    if !(args.minutes > 0.0 && args.minutes <= MINUTES_MAX) {
        bail!("--minutes must be above 0 and at most {MINUTES_MAX}");
    }
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(1)
    });
    let seconds = args.minutes * 60.0;
    if args.cluster.contains('\'') {
        bail!("--cluster must not contain a single quote");
    }
    let script = format!(
        "BENCH_CLUSTER='{}' {}",
        args.cluster,
        args.fault_script.display()
    );
    let text = schedule(seed, seconds, &script);
    std::fs::write(schedule_path, &text)?;
    eprintln!(
        "soak: seed {seed}, {} faults over {:.0} s (schedule in {})",
        text.lines().filter(|l| !l.starts_with('#')).count(),
        seconds,
        schedule_path.display()
    );
    let argv = [
        "fjord-bench",
        "run",
        "--bootstrap",
        &args.bootstrap,
        "--workload",
        "e2e",
        "--label",
        &args.label,
        "--out",
        &args.out.display().to_string(),
        "--rate",
        &args.rate.to_string(),
        "--duration-sec",
        &seconds.to_string(),
        "--acks",
        "all",
        "--producer-prop",
        "enable.idempotence=true",
        "--replication-factor",
        "3",
        "--topic-config",
        "min.insync.replicas=2",
        "--check-offsets",
        "--verify-timeout-sec",
        "300",
        "--no-progress",
        "--fault-schedule",
        &schedule_path.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    Ok((argv, seed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_replays_the_same_schedule_and_another_seed_does_not() {
        let a = schedule(42, 600.0, "bench/fault");
        assert_eq!(a, schedule(42, 600.0, "bench/fault"));
        assert_ne!(a, schedule(43, 600.0, "bench/fault"));
        let steps = crate::faults::parse(&a).unwrap();
        assert!(steps.len() >= 10, "{a}");
        // Faults never overlap: each starts after the last one's end.
        for w in steps.windows(2) {
            let down: f64 = w[0].command.rsplit(' ').next().unwrap().parse().unwrap();
            assert!(w[1].at_sec >= w[0].at_sec + down + 8.0, "{a}");
        }
        assert!(steps.last().unwrap().at_sec + 25.0 < 600.0);
        assert!(steps
            .iter()
            .all(|s| KINDS.iter().any(|k| s.command.contains(k))));
    }
}
