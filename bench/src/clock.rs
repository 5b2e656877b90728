//! The bench's one time base, and the open-loop send schedule.
//!
//! Every timestamp in the bench is microseconds since the process started on
//! the monotonic clock (`now_us`), so a send time written into a record by a
//! producer thread and a consume time read by a consumer thread subtract
//! without any wall-clock step in between.
//!
//! The rate workloads are open loop: send `i` is due at `start + i / rate`
//! whatever happened to send `i - 1`. Its latency is measured from that due
//! time, not from when the producer got round to it, so a broker stall that
//! holds the producer back shows up as latency on every record it delayed
//! (no coordinated omission). A producer that has fallen behind sends at
//! once and the lag is part of the latency.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

static ORIGIN: OnceLock<Instant> = OnceLock::new();

/// Microseconds since the first call (made at the start of `main`).
pub fn now_us() -> u64 {
    ORIGIN.get_or_init(Instant::now).elapsed().as_micros() as u64
}

/// Microseconds since the Unix epoch (wall clock), for lining the bench's
/// times up with other processes' (fault scripts, librdkafka's log).
pub fn unix_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

pub fn secs(us: u64) -> f64 {
    us as f64 / 1e6
}

/// When send `i` of an open-loop run is due.
#[derive(Debug, Clone, Copy)]
pub struct RateSchedule {
    pub start_us: u64,
    pub rate_per_sec: f64,
}

/// What a rate producer does next for its next send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Not due yet: sleep until this time.
    WaitUntil(u64),
    /// Due (or overdue): send now, stamped with the scheduled time.
    SendNow { scheduled_us: u64 },
}

impl RateSchedule {
    pub fn due_us(&self, i: u64) -> u64 {
        self.start_us + (i as f64 * 1e6 / self.rate_per_sec) as u64
    }

    pub fn step(&self, i: u64, now_us: u64) -> Step {
        let due = self.due_us(i);
        if due <= now_us {
            Step::SendNow { scheduled_us: due }
        } else {
            Step::WaitUntil(due)
        }
    }
}

/// Latency of a record stamped `stamp_us` (its scheduled time in the rate
/// workloads) that completed at `done_us`.
pub fn latency_us(stamp_us: u64, done_us: u64) -> u64 {
    done_us.saturating_sub(stamp_us)
}

/// Sleeps until `deadline_us` on the bench clock (returns at once if past).
pub fn sleep_until_us(deadline_us: u64) {
    let now = now_us();
    if deadline_us > now {
        std::thread::sleep(Duration::from_micros(deadline_us - now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_are_due_at_start_plus_i_over_rate() {
        let s = RateSchedule {
            start_us: 1_000_000,
            rate_per_sec: 1000.0,
        };
        assert_eq!(s.due_us(0), 1_000_000);
        assert_eq!(s.due_us(1), 1_001_000);
        assert_eq!(s.due_us(2500), 3_500_000);
        assert_eq!(s.step(1, 1_000_500), Step::WaitUntil(1_001_000));
        assert_eq!(
            s.step(1, 1_001_000),
            Step::SendNow {
                scheduled_us: 1_001_000
            }
        );
    }

    /// A producer stalled for 2 s (say a broker pause) sends the overdue
    /// records at once, and each one's latency counts from when it was due:
    /// the first overdue record carries the whole stall.
    #[test]
    fn latency_after_a_stall_counts_from_the_scheduled_time() {
        let s = RateSchedule {
            start_us: 0,
            rate_per_sec: 100.0, // one send every 10 ms
        };
        let stall_ends_us = 2_000_000;
        let ack_delay_us = 1_000;
        let mut latencies = Vec::new();
        for i in 0..=200 {
            let Step::SendNow { scheduled_us } = s.step(i, stall_ends_us) else {
                panic!("send {i} is overdue after the stall");
            };
            latencies.push(latency_us(scheduled_us, stall_ends_us + ack_delay_us));
        }
        assert_eq!(latencies[0], 2_001_000);
        assert_eq!(latencies[100], 1_001_000);
        assert_eq!(latencies[200], 1_000);
        // Send 201 is not due yet: the producer is back on schedule.
        assert_eq!(s.step(201, stall_ends_us), Step::WaitUntil(2_010_000));
        // A closed-loop measurement (from the actual send) would have
        // reported 1 ms for every one of them.
        assert!(latencies.iter().all(|&l| l >= ack_delay_us));
    }

    #[test]
    fn latency_never_goes_negative() {
        assert_eq!(latency_us(10, 5), 0);
    }
}
