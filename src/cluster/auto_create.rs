//! The budget for topics that Metadata requests auto-create.
//!
//! A client that asks for thousands of unknown names (a typo in a loop, a
//! wildcard gone wrong) must not create thousands of topics. Each request
//! may create at most `auto.create.topics.max.per.request`, and all requests
//! together at most `auto.create.topics.max.per.second`; beyond that a topic
//! is answered LEADER_NOT_AVAILABLE, which clients retry, so a legitimate
//! burst still gets its topics, just spread over a few seconds.

use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// How often at most the "auto-create limited" warning is logged.
pub const AUTO_CREATE_WARNING_INTERVAL: Duration = Duration::from_secs(10);

/// A fixed one-second window of auto-creations, and when the last warning went out.
pub struct AutoCreateRate {
    per_second: u32,
    state: Mutex<Window>,
}

struct Window {
    started: Instant,
    created: u32,
    last_warning: Option<Instant>,
}

impl AutoCreateRate {
    pub fn new(per_second: u32) -> AutoCreateRate {
        AutoCreateRate {
            per_second,
            state: Mutex::new(Window {
                started: Instant::now(),
                created: 0,
                last_warning: None,
            }),
        }
    }

    /// Takes one creation from this second's budget, if any is left.
    pub fn try_acquire(&self) -> bool {
        let mut w = self.state.lock();
        let now = Instant::now();
        if now.duration_since(w.started) >= Duration::from_secs(1) {
            w.started = now;
            w.created = 0;
        }
        if w.created < self.per_second {
            w.created += 1;
            true
        } else {
            false
        }
    }

    /// Logs that auto-creation was held back, at most once per interval.
    pub fn warn_limited(&self, topic: &str, limit: &str) {
        let mut w = self.state.lock();
        let now = Instant::now();
        if w.last_warning
            .is_none_or(|at| now.duration_since(at) >= AUTO_CREATE_WARNING_INTERVAL)
        {
            w.last_warning = Some(now);
            drop(w);
            tracing::warn!(
                topic,
                limit,
                "topic auto-creation held back by a limit; the client will retry"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_is_per_second() {
        let rate = AutoCreateRate::new(2);
        assert!(rate.try_acquire());
        assert!(rate.try_acquire());
        assert!(!rate.try_acquire());
        assert!(!AutoCreateRate::new(0).try_acquire());
    }
}
