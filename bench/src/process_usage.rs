//! CPU time and memory of the broker processes (and of the bench itself),
//! sampled from /proc every 100 ms on a thread of its own.
//!
//! CPU seconds are the utime+stime delta between the first and the last
//! sample of each pid, in clock ticks (`sysconf(_SC_CLK_TCK)`, 100 on Linux).
//! Peak RSS is the largest VmRSS sampled during the run rather than VmHWM,
//! which covers the process's whole life: a broker reused across runs would
//! otherwise report an earlier run's peak. VmHWM is kept in "extra".
//! A pid that exits mid-run (a fault) keeps what was sampled before.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use serde::Serialize;

use crate::clock::now_us;

pub const SAMPLE_INTERVAL: Duration = Duration::from_millis(100);

/// One /proc reading of one process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Reading {
    pub cpu_ticks: u64,
    pub rss_kib: u64,
    pub hwm_kib: u64,
}

/// utime + stime (fields 14 and 15) from the text of /proc/PID/stat.
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) may contain spaces and parentheses: the
    // fields after it start after the *last* ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// A "Name:   123 kB" line of /proc/PID/status.
pub fn parse_status_kib(status: &str, name: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let value = line.strip_prefix(name)?.strip_prefix(':')?;
        value.split_whitespace().next()?.parse().ok()
    })
}

fn read(pid: &str) -> Option<Reading> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some(Reading {
        cpu_ticks: parse_stat_cpu_ticks(&stat)?,
        rss_kib: parse_status_kib(&status, "VmRSS").unwrap_or(0),
        hwm_kib: parse_status_kib(&status, "VmHWM").unwrap_or(0),
    })
}

fn clock_ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

#[derive(Debug, Default, Clone)]
struct PidTrack {
    first: Option<Reading>,
    last: Option<Reading>,
    peak_rss_kib: u64,
}

/// Per-second usage summed over the broker pids.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct UsageSecond {
    pub t: u64,
    pub cpu_seconds: f64,
    pub rss_kib: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Usage {
    pub pids: Vec<u32>,
    /// Summed over pids; None if no pid could be read.
    pub cpu_seconds: Option<f64>,
    pub peak_rss_kib: Option<u64>,
    pub vm_hwm_kib: Option<u64>,
    pub timeline: Vec<UsageSecond>,
    /// The bench process itself (client side of the 2-core budget).
    pub client_cpu_seconds: Option<f64>,
}

pub struct Sampler {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Usage>,
}

impl Sampler {
    /// Starts sampling now; timeline seconds count from `t0_us`.
    pub fn start(pids: Vec<u32>, t0_us: u64) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let stop_flag = stop.clone();
        let handle = std::thread::Builder::new()
            .name("usage-sampler".into())
            .spawn(move || sample(pids, t0_us, &stop_flag))
            .expect("spawning the sampler thread");
        Sampler { stop, handle }
    }

    pub fn finish(self) -> Usage {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().expect("sampler thread")
    }
}

fn sample(pids: Vec<u32>, t0_us: u64, stop: &AtomicBool) -> Usage {
    let tick_sec = 1.0 / clock_ticks_per_sec();
    let mut tracks = vec![PidTrack::default(); pids.len()];
    let mut me = PidTrack::default();
    let mut timeline: Vec<UsageSecond> = Vec::new();
    let mut second_start_ticks: Option<u64> = None;
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        for (pid, track) in pids.iter().zip(tracks.iter_mut()) {
            if let Some(r) = read(&pid.to_string()) {
                track.first.get_or_insert(r);
                track.last = Some(r);
                track.peak_rss_kib = track.peak_rss_kib.max(r.rss_kib);
            }
        }
        if let Some(r) = read("self") {
            me.first.get_or_insert(r);
            me.last = Some(r);
        }
        // Ticks used so far, summed over pids (from each one's first sample).
        let ticks_now: u64 = tracks
            .iter()
            .filter_map(|t| Some(t.last?.cpu_ticks.saturating_sub(t.first?.cpu_ticks)))
            .sum();
        let rss_now: u64 = tracks
            .iter()
            .filter_map(|t| t.last.map(|r| r.rss_kib))
            .sum();
        let second = now_us().saturating_sub(t0_us) / 1_000_000;
        // Close the seconds that have ended since the last sample.
        while (timeline.len() as u64) < second || (stopping && timeline.len() as u64 == second) {
            let start = second_start_ticks.unwrap_or(0);
            timeline.push(UsageSecond {
                t: timeline.len() as u64,
                cpu_seconds: ticks_now.saturating_sub(start) as f64 * tick_sec,
                rss_kib: rss_now,
            });
            second_start_ticks = Some(ticks_now);
        }
        if stopping {
            break;
        }
        std::thread::sleep(SAMPLE_INTERVAL);
    }
    let read_any = tracks.iter().any(|t| t.first.is_some());
    let cpu_ticks: u64 = tracks
        .iter()
        .filter_map(|t| Some(t.last?.cpu_ticks.saturating_sub(t.first?.cpu_ticks)))
        .sum();
    Usage {
        cpu_seconds: read_any.then_some(cpu_ticks as f64 * tick_sec),
        peak_rss_kib: read_any.then(|| tracks.iter().map(|t| t.peak_rss_kib).sum()),
        vm_hwm_kib: read_any.then(|| {
            tracks
                .iter()
                .filter_map(|t| t.last.map(|r| r.hwm_kib))
                .sum()
        }),
        timeline,
        client_cpu_seconds: match (me.first, me.last) {
            (Some(a), Some(b)) => Some(b.cpu_ticks.saturating_sub(a.cpu_ticks) as f64 * tick_sec),
            _ => None,
        },
        pids,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_cpu_ticks_survive_a_command_name_with_spaces_and_parens() {
        let stat = "1234 (my (odd) proc) S 1 1234 1234 0 -1 4194304 100 0 0 0 250 75 0 0 20 0 4 0 100 1000 50";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(325));
    }

    #[test]
    fn status_lines_give_kib() {
        let status = "Name:\tjava\nVmHWM:\t  204800 kB\nVmRSS:\t  102400 kB\n";
        assert_eq!(parse_status_kib(status, "VmRSS"), Some(102_400));
        assert_eq!(parse_status_kib(status, "VmHWM"), Some(204_800));
        assert_eq!(parse_status_kib(status, "VmSwap"), None);
    }

    #[test]
    fn this_process_can_be_read() {
        let r = read("self").unwrap();
        assert!(r.rss_kib > 0);
    }
}
