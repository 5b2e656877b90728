//! The progress bar on stderr: elapsed time against the planned duration (or
//! records against the planned count) with the live counters and rates.
//! Off with --no-progress or when stderr is not a terminal, so logs and the
//! compare harness get clean output.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::task::JoinHandle;

use crate::clock::{now_us, secs};
use crate::stats::Live;

const REFRESH: Duration = Duration::from_millis(250);

/// What the bar measures progress against.
#[derive(Debug, Clone, Copy)]
pub enum Plan {
    Seconds(f64),
    Records(u64),
}

pub struct Progress {
    bar: ProgressBar,
    task: JoinHandle<()>,
}

impl Progress {
    /// Starts the bar, or returns None if it is disabled.
    pub fn start(enabled: bool, plan: Plan, live: Arc<Live>, t0_us: u64) -> Option<Progress> {
        if !enabled || !std::io::stderr().is_terminal() {
            return None;
        }
        let (len, unit) = match plan {
            Plan::Seconds(s) => (s.ceil() as u64, "s"),
            Plan::Records(n) => (n, " rec"),
        };
        let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template(&format!(
                "{{elapsed_precise}} [{{bar:30}}] {{pos}}/{{len}}{unit} {{msg}}"
            ))
            .expect("valid template")
            .progress_chars("=> "),
        );
        let bar_task = bar.clone();
        let task = tokio::spawn(async move {
            let mut last = (now_us(), 0u64, 0u64);
            loop {
                tokio::time::sleep(REFRESH).await;
                let now = now_us();
                let sent = Live::get(&live.sent);
                let acked = Live::get(&live.acked);
                let errors = Live::get(&live.errors);
                let consumed = Live::get(&live.consumed);
                let dt = secs(now - last.0).max(1e-6);
                let ack_rate = (acked - last.1) as f64 / dt;
                let consume_rate = (consumed - last.2) as f64 / dt;
                last = (now, acked, consumed);
                bar_task.set_position(match plan {
                    Plan::Seconds(_) => secs(now.saturating_sub(t0_us)) as u64,
                    Plan::Records(_) => sent,
                });
                bar_task.set_message(format!(
                    "sent {sent} acked {acked} ({ack_rate:.0}/s) consumed {consumed} ({consume_rate:.0}/s) errors {errors}"
                ));
            }
        });
        Some(Progress { bar, task })
    }

    pub fn finish(self) {
        self.task.abort();
        self.bar.finish_and_clear();
    }
}
