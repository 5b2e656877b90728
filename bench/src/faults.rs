//! The fault schedule: shell commands run at fixed times into the run (kill a
//! broker at 10 s, restart it at 20 s), recorded on the report's time axis.
//!
//! The file has one step per line, `AT_SEC COMMAND...`; blank lines and lines
//! starting with `#` are skipped. Each command runs as `sh -c COMMAND` at
//! `t0 + AT_SEC`, on its own, so a slow command does not delay the next one.
//! Commands see `BENCH_BOOTSTRAP`, `BENCH_TOPIC` and `BENCH_BROKER_PIDS`
//! (space separated) in their environment. Steps not yet due when producing
//! ends are not run; a command still running then gets a bounded wait.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use serde::Serialize;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::clock::{now_us, secs};

/// Bound on waiting for a command still running when the run ends.
const COMMAND_WAIT_AFTER_RUN: Duration = Duration::from_secs(60);
/// Output kept per command in the report.
const OUTPUT_BYTES_MAX: usize = 4096;

#[derive(Debug, Clone, PartialEq)]
pub struct FaultStep {
    pub at_sec: f64,
    pub command: String,
}

/// What the report's "faults" array holds.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FaultEvent {
    /// Seconds after producing started when the command was launched.
    pub t: f64,
    pub command: String,
    /// The exit code; 128+N if killed by signal N; -1 if it could not be
    /// started or did not finish within the bound.
    pub exit_code: i32,
}

/// The same with the command's output and run time, for "extra".
#[derive(Debug, Clone, Serialize)]
pub struct FaultDetail {
    #[serde(flatten)]
    pub event: FaultEvent,
    pub duration_sec: f64,
    pub output: String,
}

pub fn parse(text: &str) -> Result<Vec<FaultStep>> {
    let mut steps = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (at, command) = line
            .split_once(char::is_whitespace)
            .with_context(|| format!("fault schedule line {}: expected `AT_SEC COMMAND`", n + 1))?;
        let at_sec: f64 = at
            .parse()
            .ok()
            .filter(|s: &f64| *s >= 0.0 && s.is_finite())
            .with_context(|| format!("fault schedule line {}: bad time {at:?}", n + 1))?;
        let command = command.trim();
        if command.is_empty() {
            bail!("fault schedule line {}: no command", n + 1);
        }
        steps.push(FaultStep {
            at_sec,
            command: command.to_string(),
        });
    }
    steps.sort_by(|a, b| a.at_sec.total_cmp(&b.at_sec));
    Ok(steps)
}

/// Environment handed to every command.
#[derive(Debug, Clone, Default)]
pub struct FaultEnv {
    pub bootstrap: String,
    pub topic: String,
    pub broker_pids: Vec<u32>,
}

pub struct FaultRunner {
    end_of_run: oneshot::Sender<()>,
    handle: JoinHandle<(Vec<FaultDetail>, Vec<FaultStep>)>,
}

impl FaultRunner {
    pub fn start(steps: Vec<FaultStep>, t0_us: u64, env: FaultEnv) -> FaultRunner {
        let (end_of_run, ended) = oneshot::channel();
        let handle = tokio::spawn(schedule(steps, t0_us, env, ended));
        FaultRunner { end_of_run, handle }
    }

    /// Stops launching steps; waits (bounded) for running commands. Returns
    /// what ran and the steps that were never due.
    pub async fn finish(self) -> (Vec<FaultDetail>, Vec<FaultStep>) {
        let _ = self.end_of_run.send(());
        self.handle.await.unwrap_or_default()
    }
}

async fn schedule(
    steps: Vec<FaultStep>,
    t0_us: u64,
    env: FaultEnv,
    mut ended: oneshot::Receiver<()>,
) -> (Vec<FaultDetail>, Vec<FaultStep>) {
    let mut running = Vec::new();
    let mut steps = steps.into_iter();
    let mut not_run = Vec::new();
    for step in steps.by_ref() {
        let due_us = t0_us + (step.at_sec * 1e6) as u64;
        let wait = Duration::from_micros(due_us.saturating_sub(now_us()));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = &mut ended => { not_run.push(step); break; }
        }
        let task = tokio::spawn(run_command(step.command.clone(), t0_us, env.clone()));
        running.push((step, task));
    }
    // Every step launched before the end: the wait bound counts from the end.
    let ended_already = !not_run.is_empty();
    if !ended_already && !running.is_empty() {
        let _ = ended.await;
    }
    not_run.extend(steps);
    let deadline = tokio::time::Instant::now() + COMMAND_WAIT_AFTER_RUN;
    let mut details = Vec::new();
    for (step, mut task) in running {
        match tokio::time::timeout_at(deadline, &mut task).await {
            Ok(Ok(detail)) => details.push(detail),
            _ => {
                // Dropping the task kills the child (kill_on_drop).
                task.abort();
                details.push(FaultDetail {
                    event: FaultEvent {
                        t: step.at_sec,
                        command: step.command,
                        exit_code: -1,
                    },
                    duration_sec: secs(now_us().saturating_sub(t0_us)) - step.at_sec,
                    output: "still running after the run ended; killed".into(),
                });
            }
        }
    }
    (details, not_run)
}

async fn run_command(command: String, t0_us: u64, env: FaultEnv) -> FaultDetail {
    let started_us = now_us();
    let pids: Vec<String> = env.broker_pids.iter().map(u32::to_string).collect();
    let child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(&command)
        .env("BENCH_BOOTSTRAP", &env.bootstrap)
        .env("BENCH_TOPIC", &env.topic)
        .env("BENCH_BROKER_PIDS", pids.join(" "))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let (exit_code, output) = match child {
        Err(e) => (-1, format!("could not start sh: {e}")),
        Ok(child) => {
            // Bounded by `schedule`, which stops waiting after the run.
            match child.wait_with_output().await {
                Err(e) => (-1, format!("waiting for the command: {e}")),
                Ok(out) => {
                    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
                    text.push_str(&String::from_utf8_lossy(&out.stderr));
                    if text.len() > OUTPUT_BYTES_MAX {
                        let mut cut = OUTPUT_BYTES_MAX;
                        while !text.is_char_boundary(cut) {
                            cut -= 1;
                        }
                        text.truncate(cut);
                    }
                    (exit_code_of(out.status), text)
                }
            }
        }
    };
    FaultDetail {
        event: FaultEvent {
            t: secs(started_us.saturating_sub(t0_us)),
            command,
            exit_code,
        },
        duration_sec: secs(now_us().saturating_sub(started_us)),
        output,
    }
}

fn exit_code_of(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(sig)) => 128 + sig,
        (None, None) => -1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_lines_parse_sorted_with_comments_skipped() {
        let steps = parse(
            "# kill and restart\n\
             20 scripts/restart broker-1\n\
             \n\
             5.5   kill -9 $BENCH_BROKER_PIDS\n",
        )
        .unwrap();
        assert_eq!(
            steps,
            vec![
                FaultStep {
                    at_sec: 5.5,
                    command: "kill -9 $BENCH_BROKER_PIDS".into()
                },
                FaultStep {
                    at_sec: 20.0,
                    command: "scripts/restart broker-1".into()
                },
            ]
        );
    }

    #[test]
    fn bad_lines_are_rejected_with_their_number() {
        let err = parse("1 true\nsoon kill\n").unwrap_err();
        assert!(format!("{err:#}").contains("line 2"));
        assert!(parse("3\n").is_err());
        assert!(parse("-1 true\n").is_err());
    }

    #[tokio::test]
    async fn commands_run_at_their_time_with_exit_codes_and_late_steps_are_skipped() {
        let t0 = now_us();
        let runner = FaultRunner::start(
            parse("0 echo $BENCH_TOPIC\n0.2 exit 3\n100 true\n").unwrap(),
            t0,
            FaultEnv {
                topic: "orders".into(),
                ..FaultEnv::default()
            },
        );
        tokio::time::sleep(Duration::from_millis(600)).await;
        let (details, not_run) = runner.finish().await;
        assert_eq!(details.len(), 2);
        assert_eq!(details[0].event.exit_code, 0);
        assert_eq!(details[0].output.trim(), "orders");
        assert_eq!(details[1].event.exit_code, 3);
        assert!(details[1].event.t >= 0.2);
        assert_eq!(not_run.len(), 1);
    }
}
