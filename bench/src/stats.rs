//! Latency histograms, the per-second timeline and the live counters.
//!
//! Each thread that completes records (a producer's delivery callback, a
//! consumer) owns its own [`LatencyRecorder`]; they are merged once at the
//! end, so the hot path takes no shared lock. The live counters are atomics
//! read by the progress bar.
//!
//! A latency lands in the timeline second in which it *completed* (ack or
//! consume time), which is also the second that counts the record as acked or
//! consumed. Records stamped before the end of the warmup still count in the
//! timeline and the checker, but not in the overall histogram.

use std::sync::atomic::{AtomicU64, Ordering};

use hdrhistogram::Histogram;
use serde::Serialize;

/// Longest latency told apart; longer ones are recorded as this.
pub const LATENCY_US_MAX: u64 = 60_000_000;

/// Counters the progress bar reads while the run goes on.
#[derive(Default)]
pub struct Live {
    pub sent: AtomicU64,
    pub acked: AtomicU64,
    pub errors: AtomicU64,
    pub consumed: AtomicU64,
}

impl Live {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// Latencies of one kind (send→ack or end-to-end), overall and per second.
pub struct LatencyRecorder {
    t0_us: u64,
    warmup_end_us: u64,
    overall: Histogram<u64>,
    seconds: Vec<SecondLatency>,
    last_done_us: Option<u64>,
}

struct SecondLatency {
    count: u64,
    sum_us: u64,
    hist: Histogram<u32>,
}

impl SecondLatency {
    fn new() -> Self {
        SecondLatency {
            count: 0,
            sum_us: 0,
            // Two significant digits are plenty for a per-second p99 and keep
            // a long run's timeline small (~20 KiB a second).
            hist: Histogram::new_with_bounds(1, LATENCY_US_MAX, 2).expect("valid bounds"),
        }
    }
}

/// Latency percentiles in milliseconds, as the report writes them.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LatencySummary {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
    pub count: u64,
}

/// One second of one latency kind in the timeline.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SecondSummary {
    pub count: u64,
    pub avg_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

impl LatencyRecorder {
    pub fn new(t0_us: u64, warmup_end_us: u64) -> Self {
        LatencyRecorder {
            t0_us,
            warmup_end_us,
            overall: Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).expect("valid bounds"),
            seconds: Vec::new(),
            last_done_us: None,
        }
    }

    /// Records a record stamped at `stamp_us` that completed at `done_us`.
    pub fn record(&mut self, stamp_us: u64, done_us: u64) {
        let latency_us = crate::clock::latency_us(stamp_us, done_us);
        let second = (done_us.saturating_sub(self.t0_us) / 1_000_000) as usize;
        if self.seconds.len() <= second {
            self.seconds.resize_with(second + 1, SecondLatency::new);
        }
        let s = &mut self.seconds[second];
        s.count += 1;
        s.sum_us += latency_us;
        s.hist.saturating_record(latency_us);
        if stamp_us >= self.warmup_end_us {
            self.overall.saturating_record(latency_us);
        }
        self.last_done_us = Some(self.last_done_us.map_or(done_us, |d| d.max(done_us)));
    }

    pub fn merge(&mut self, other: LatencyRecorder) {
        self.overall
            .add(&other.overall)
            .expect("same histogram bounds");
        if self.seconds.len() < other.seconds.len() {
            self.seconds
                .resize_with(other.seconds.len(), SecondLatency::new);
        }
        for (mine, theirs) in self.seconds.iter_mut().zip(other.seconds) {
            mine.count += theirs.count;
            mine.sum_us += theirs.sum_us;
            mine.hist.add(&theirs.hist).expect("same histogram bounds");
        }
        self.last_done_us = match (self.last_done_us, other.last_done_us) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }

    /// Completions after the warmup (the throughput figure's numerator).
    pub fn measured_count(&self) -> u64 {
        self.overall.len()
    }

    /// When the last record completed.
    pub fn last_done_us(&self) -> Option<u64> {
        self.last_done_us
    }

    pub fn summary(&self) -> Option<LatencySummary> {
        let h = &self.overall;
        if h.is_empty() {
            return None;
        }
        Some(LatencySummary {
            p50: ms(h.value_at_quantile(0.50)),
            p95: ms(h.value_at_quantile(0.95)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            mean: h.mean() / 1000.0,
            count: h.len(),
        })
    }

    pub fn seconds(&self) -> usize {
        self.seconds.len()
    }

    pub fn second(&self, t: usize) -> SecondSummary {
        match self.seconds.get(t) {
            Some(s) if s.count > 0 => SecondSummary {
                count: s.count,
                avg_ms: Some(s.sum_us as f64 / s.count as f64 / 1000.0),
                p95_ms: Some(ms(s.hist.value_at_quantile(0.95))),
                p99_ms: Some(ms(s.hist.value_at_quantile(0.99))),
            },
            _ => SecondSummary::default(),
        }
    }
}

/// Events per timeline second (records sent by one producer thread).
#[derive(Default, Debug, Clone)]
pub struct SecondCounter {
    counts: Vec<u64>,
}

impl SecondCounter {
    pub fn add(&mut self, t0_us: u64, at_us: u64) {
        let second = (at_us.saturating_sub(t0_us) / 1_000_000) as usize;
        if self.counts.len() <= second {
            self.counts.resize(second + 1, 0);
        }
        self.counts[second] += 1;
    }

    pub fn merge(&mut self, other: &SecondCounter) {
        if self.counts.len() < other.counts.len() {
            self.counts.resize(other.counts.len(), 0);
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
    }

    pub fn get(&self, t: usize) -> u64 {
        self.counts.get(t).copied().unwrap_or(0)
    }

    pub fn seconds(&self) -> usize {
        self.counts.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_records_are_in_the_timeline_but_not_the_histogram() {
        let mut r = LatencyRecorder::new(0, 1_000_000);
        r.record(500_000, 600_000); // warmup: 100 ms
        r.record(1_500_000, 1_502_000); // 2 ms
        let s = r.summary().unwrap();
        assert_eq!(s.count, 1);
        assert!((s.p50 - 2.0).abs() < 0.01);
        assert_eq!(r.second(0).count, 1);
        assert_eq!(r.second(1).count, 1);
        assert!((r.second(0).avg_ms.unwrap() - 100.0).abs() < 1e-9);
    }

    #[test]
    fn merged_recorders_add_up_per_second() {
        let mut a = LatencyRecorder::new(0, 0);
        let mut b = LatencyRecorder::new(0, 0);
        a.record(0, 1_000);
        b.record(2_000_000, 2_004_000);
        b.record(2_000_000, 2_002_000);
        a.merge(b);
        assert_eq!(a.seconds(), 3);
        assert_eq!(a.second(1), SecondSummary::default());
        assert_eq!(a.second(2).count, 2);
        assert!((a.second(2).avg_ms.unwrap() - 3.0).abs() < 1e-9);
        assert_eq!(a.summary().unwrap().count, 3);
        assert_eq!(a.last_done_us(), Some(2_004_000));
    }

    #[test]
    fn latencies_beyond_the_range_saturate() {
        let mut r = LatencyRecorder::new(0, 0);
        r.record(0, 10 * LATENCY_US_MAX);
        assert!(r.summary().unwrap().max >= 59_000.0);
    }
}
