//! The history of a fault run, checked in the manner of Jepsen's Kafka
//! queue workload, and the unavailability after each fault.
//!
//! With `--check-offsets`, every acknowledgement (partition, offset from the
//! delivery report), every record the e2e group consumed while the faults
//! ran ("live") and every record of the final read-back, which reads every
//! partition from the beginning once the faults have healed ("final"), is
//! kept as an event `(sequence id, partition, offset)`. At the end:
//!
//! - **lost**: acknowledged, not in the final read, which reached the end
//!   offsets; **unseen**: the same when the final read did not get there
//!   (not known to be lost);
//! - **duplicated**: in the final read more than once;
//! - **inconsistent offsets**: positions (partition, offset) at which two
//!   different records were acknowledged or read over the run;
//! - **non-monotonic offsets**: per producer and partition, a record
//!   acknowledged at an offset not above that of the record the producer
//!   sent before it;
//! - **taken back**: read live, then absent from the final read;
//! - **redelivered** (not an anomaly; consumer-group at-least-once after a
//!   rebalance): read live more than once.
//!
//! Events are bounded (`EVENTS_MAX`): past it the history stops recording
//! and the report says the offset checks are incomplete.
//!
//! Unavailability: per 10 ms of send time, the earliest acknowledgement and
//! the earliest live consumption of a record sent then. After a fault at `t`,
//! the first record sent at or after `t` that is acknowledged (consumed)
//! says when the cluster took writes (served reads) again.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use serde::Serialize;

/// Events kept over all three sources (24 bytes each: 240 MB at most).
const EVENTS_MAX: usize = 10_000_000;
/// Send-time bucket of the unavailability index.
const BUCKET_US: u64 = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Ack,
    Live,
    Final,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Event {
    seq: u64,
    partition: i32,
    offset: i64,
}

pub struct History {
    acks: Mutex<Vec<Event>>,
    live: Mutex<Vec<Event>>,
    final_read: Mutex<Vec<Event>>,
    kept: AtomicU64,
    overflow: AtomicBool,
    first_ack: Box<[AtomicU64]>,
    first_consumed: Box<[AtomicU64]>,
}

/// The checker's counts over the history.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Anomalies {
    pub acknowledged: u64,
    pub final_read: u64,
    pub final_read_complete: bool,
    pub lost: u64,
    pub unseen: u64,
    pub duplicated: u64,
    pub inconsistent_offsets: u64,
    pub nonmonotonic_offsets: u64,
    pub taken_back: u64,
    pub redelivered: u64,
    /// False if the history outgrew its bound (the counts cover a prefix).
    pub complete_history: bool,
}

impl Anomalies {
    /// Anomalies that break Kafka's promises for acks=all producers.
    pub fn total(&self) -> u64 {
        self.lost
            + self.duplicated
            + self.inconsistent_offsets
            + self.nonmonotonic_offsets
            + self.taken_back
    }
}

impl History {
    /// `horizon_us`: the unavailability index covers records sent up to
    /// this many microseconds after the bench started.
    pub fn new(horizon_us: u64) -> History {
        let buckets = (horizon_us / BUCKET_US + 1) as usize;
        let index = || (0..buckets).map(|_| AtomicU64::new(u64::MAX)).collect();
        History {
            acks: Mutex::default(),
            live: Mutex::default(),
            final_read: Mutex::default(),
            kept: AtomicU64::new(0),
            overflow: AtomicBool::new(false),
            first_ack: index(),
            first_consumed: index(),
        }
    }

    /// A record of this run at `partition`/`offset`, seen by `source`.
    pub fn record(&self, source: Source, seq: u64, partition: i32, offset: i64) {
        if offset < 0 {
            return; // acks=0: no offset
        }
        if self.kept.fetch_add(1, Ordering::Relaxed) >= EVENTS_MAX as u64 {
            self.overflow.store(true, Ordering::Relaxed);
            return;
        }
        let list = match source {
            Source::Ack => &self.acks,
            Source::Live => &self.live,
            Source::Final => &self.final_read,
        };
        list.lock().expect("history lock").push(Event {
            seq,
            partition,
            offset,
        });
    }

    /// A record sent (scheduled) at `sent_us` was acknowledged at `done_us`.
    pub fn acked_at(&self, sent_us: u64, done_us: u64) {
        if let Some(slot) = self.first_ack.get((sent_us / BUCKET_US) as usize) {
            slot.fetch_min(done_us, Ordering::Relaxed);
        }
    }

    /// A record sent at `sent_us` was consumed live at `done_us`.
    pub fn consumed_at(&self, sent_us: u64, done_us: u64) {
        if let Some(slot) = self.first_consumed.get((sent_us / BUCKET_US) as usize) {
            slot.fetch_min(done_us, Ordering::Relaxed);
        }
    }

    /// After a fault at `t_us`: when the first record sent at or after it
    /// was acknowledged, and when the first was consumed (bench clock).
    pub fn first_after(&self, t_us: u64) -> (Option<u64>, Option<u64>) {
        let from = t_us.div_ceil(BUCKET_US) as usize;
        let first = |index: &[AtomicU64]| {
            index
                .iter()
                .skip(from)
                .map(|s| s.load(Ordering::Relaxed))
                .min()
                .filter(|&t| t != u64::MAX)
        };
        (first(&self.first_ack), first(&self.first_consumed))
    }

    /// The counts; `producers` is how many producers split the sequence ids
    /// (producer `i` sends `i, i + producers, ...` in that order).
    pub fn anomalies(&self, producers: u64, final_read_complete: bool) -> Anomalies {
        let acks = self.acks.lock().expect("history lock");
        let live = self.live.lock().expect("history lock");
        let final_read = self.final_read.lock().expect("history lock");

        let mut in_final: HashMap<u64, u32> = HashMap::with_capacity(final_read.len());
        for e in final_read.iter() {
            *in_final.entry(e.seq).or_default() += 1;
        }
        let mut in_live: HashMap<u64, u32> = HashMap::with_capacity(live.len());
        for e in live.iter() {
            *in_live.entry(e.seq).or_default() += 1;
        }
        let acked: HashSet<u64> = acks.iter().map(|e| e.seq).collect();
        let missing = acked.iter().filter(|s| !in_final.contains_key(s)).count() as u64;
        let taken_back = if final_read_complete {
            in_live.keys().filter(|s| !in_final.contains_key(s)).count() as u64
        } else {
            0
        };

        // Two different records at one position, over every source.
        let mut at: HashMap<(i32, i64), u64> =
            HashMap::with_capacity(acks.len().max(final_read.len()));
        let mut conflicts: HashSet<(i32, i64)> = HashSet::new();
        for e in acks.iter().chain(live.iter()).chain(final_read.iter()) {
            match at.entry((e.partition, e.offset)) {
                Entry::Vacant(v) => {
                    v.insert(e.seq);
                }
                Entry::Occupied(o) => {
                    if *o.get() != e.seq {
                        conflicts.insert((e.partition, e.offset));
                    }
                }
            }
        }

        // Per producer and partition, acknowledged offsets in send order.
        let mut by_seq: Vec<Event> = acks.clone();
        by_seq.sort_unstable_by_key(|e| e.seq);
        let mut last: HashMap<(u64, i32), i64> = HashMap::new();
        let mut nonmonotonic = 0u64;
        for e in &by_seq {
            let key = (e.seq % producers.max(1), e.partition);
            if let Some(&prev) = last.get(&key) {
                if e.offset <= prev {
                    nonmonotonic += 1;
                }
            }
            last.insert(key, e.offset);
        }

        Anomalies {
            acknowledged: acked.len() as u64,
            final_read: in_final.len() as u64,
            final_read_complete,
            lost: if final_read_complete { missing } else { 0 },
            unseen: if final_read_complete { 0 } else { missing },
            duplicated: in_final.values().filter(|&&n| n > 1).count() as u64,
            inconsistent_offsets: conflicts.len() as u64,
            nonmonotonic_offsets: nonmonotonic,
            taken_back,
            redelivered: in_live.values().filter(|&&n| n > 1).count() as u64,
            complete_history: !self.overflow.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history() -> History {
        History::new(10_000_000)
    }

    #[test]
    fn a_clean_history_has_no_anomaly() {
        let h = history();
        for seq in 0..100u64 {
            h.record(Source::Ack, seq, 0, seq as i64);
            h.record(Source::Live, seq, 0, seq as i64);
            h.record(Source::Final, seq, 0, seq as i64);
        }
        let a = h.anomalies(1, true);
        assert_eq!(a.total(), 0, "{a:?}");
        assert_eq!((a.acknowledged, a.final_read, a.unseen), (100, 100, 0));
        assert!(a.complete_history);
    }

    #[test]
    fn every_kind_of_anomaly_is_counted() {
        let h = history();
        // 0..10 acked at 0..10; 3 is missing from the final read (lost),
        // 4 is read twice (duplicated), 5 was read live but the final read
        // has 6 at its offset and 5 nowhere (taken back, and the offset
        // inconsistent); producer 0 of 2 gets 8 acked below 6 (non-monotonic).
        for seq in 0..10u64 {
            let offset = match seq {
                8 => 1,
                _ => seq as i64,
            };
            h.record(Source::Ack, seq, 0, offset);
        }
        h.record(Source::Live, 5, 0, 5);
        for seq in [0u64, 1, 2, 4, 4, 6, 7, 8, 9] {
            let offset = if seq == 6 { 5 } else { seq as i64 };
            h.record(Source::Final, seq, 0, offset);
        }
        let a = h.anomalies(2, true);
        assert_eq!(a.lost, 2, "3 and 5: {a:?}");
        assert_eq!(a.duplicated, 1);
        assert_eq!(a.taken_back, 1);
        // offset 5 (5 and 6), offset 1 (1 and 8), offset 4 (4 then 4 is
        // fine), offset 8 (8 acked at 1, read at 8: 8 alone there).
        assert_eq!(a.inconsistent_offsets, 2, "{a:?}");
        assert_eq!(a.nonmonotonic_offsets, 1, "{a:?}");
        // An incomplete final read: missing records are unseen, not lost.
        let b = h.anomalies(2, false);
        assert_eq!((b.lost, b.unseen, b.taken_back), (0, 2, 0));
    }

    #[test]
    fn unavailability_is_the_first_ack_of_a_record_sent_after_the_fault() {
        let h = history();
        h.acked_at(1_000_000, 1_002_000); // before the fault
        h.acked_at(1_205_000, 1_900_000); // sent during the outage
        h.acked_at(1_500_000, 1_700_000); // sent later, acknowledged first
        h.consumed_at(1_500_000, 1_750_000);
        assert_eq!(h.first_after(1_200_000), (Some(1_700_000), Some(1_750_000)));
        assert_eq!(h.first_after(2_000_000), (None, None));
    }
}
