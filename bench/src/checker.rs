//! Lost and duplicated records, counted over sequence ids with bitsets.
//!
//! Every record of a run carries a unique sequence id. The delivery callback
//! marks ids acknowledged; the consumers mark them consumed. At the end, LOST
//! is acknowledged-but-never-consumed and DUPLICATED is consumed-more-than-once.
//!
//! Bits, not a map: a million records cost 128 KiB per set. The sets are made
//! of lazily allocated chunks of atomic words so that producer callbacks and
//! consumer threads mark ids concurrently without a lock, and a throughput
//! run of unknown length needs no size up front.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

const CHUNK_BITS_LOG2: u32 = 20;
const CHUNK_WORDS: usize = (1 << CHUNK_BITS_LOG2) / 64;
/// 2^16 chunks of 2^20 bits: sequence ids up to 2^36 (68 billion records).
const CHUNKS_MAX: usize = 1 << 16;
pub const SEQ_MAX: u64 = (CHUNKS_MAX as u64) << CHUNK_BITS_LOG2;

/// A concurrent set of sequence ids.
pub struct SeqSet {
    chunks: Box<[OnceLock<Box<[AtomicU64]>>]>,
}

impl Default for SeqSet {
    fn default() -> Self {
        SeqSet {
            chunks: (0..CHUNKS_MAX).map(|_| OnceLock::new()).collect(),
        }
    }
}

impl SeqSet {
    /// Adds `seq`; returns whether it was already present.
    pub fn insert(&self, seq: u64) -> bool {
        assert!(
            seq < SEQ_MAX,
            "sequence id {seq} beyond the checker's range"
        );
        let chunk = self.chunks[(seq >> CHUNK_BITS_LOG2) as usize]
            .get_or_init(|| (0..CHUNK_WORDS).map(|_| AtomicU64::new(0)).collect());
        let bit_in_chunk = (seq & ((1 << CHUNK_BITS_LOG2) - 1)) as usize;
        let mask = 1u64 << (bit_in_chunk % 64);
        chunk[bit_in_chunk / 64].fetch_or(mask, Ordering::Relaxed) & mask != 0
    }

    #[cfg(test)]
    pub fn contains(&self, seq: u64) -> bool {
        if seq >= SEQ_MAX {
            return false;
        }
        let Some(chunk) = self.chunks[(seq >> CHUNK_BITS_LOG2) as usize].get() else {
            return false;
        };
        let bit_in_chunk = (seq & ((1 << CHUNK_BITS_LOG2) - 1)) as usize;
        chunk[bit_in_chunk / 64].load(Ordering::Relaxed) & (1u64 << (bit_in_chunk % 64)) != 0
    }

    /// Number of ids in `self` and not in `other`.
    pub fn count_not_in(&self, other: &SeqSet) -> u64 {
        let mut n = 0u64;
        for (mine, theirs) in self.chunks.iter().zip(other.chunks.iter()) {
            let Some(mine) = mine.get() else { continue };
            match theirs.get() {
                None => {
                    n += mine
                        .iter()
                        .map(|w| w.load(Ordering::Relaxed).count_ones() as u64)
                        .sum::<u64>()
                }
                Some(theirs) => {
                    n += mine
                        .iter()
                        .zip(theirs.iter())
                        .map(|(a, b)| {
                            (a.load(Ordering::Relaxed) & !b.load(Ordering::Relaxed)).count_ones()
                                as u64
                        })
                        .sum::<u64>()
                }
            }
        }
        n
    }
}

/// What marking a consumed id found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consumed {
    First,
    Again,
}

/// The run's acknowledged and consumed sequence ids.
#[derive(Default)]
pub struct Checker {
    acked: SeqSet,
    consumed: SeqSet,
    /// Ids consumed at least twice; DUPLICATED counts these.
    consumed_again: SeqSet,
    consumed_total: AtomicU64,
    consumed_unique: AtomicU64,
    duplicated: AtomicU64,
}

/// The checker's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Verdict {
    /// Consumptions of this run's records, duplicates included.
    pub consumed: u64,
    /// Distinct ids consumed.
    pub consumed_unique: u64,
    /// Acknowledged, never consumed.
    pub lost: u64,
    /// Distinct ids consumed more than once.
    pub duplicated: u64,
    /// Consumed although their delivery failed or never resolved (e.g. a
    /// timed-out produce that the broker did write).
    pub consumed_not_acked: u64,
}

impl Checker {
    pub fn mark_acked(&self, seq: u64) {
        self.acked.insert(seq);
    }

    pub fn mark_consumed(&self, seq: u64) -> Consumed {
        self.consumed_total.fetch_add(1, Ordering::Relaxed);
        if !self.consumed.insert(seq) {
            self.consumed_unique.fetch_add(1, Ordering::Relaxed);
            return Consumed::First;
        }
        if !self.consumed_again.insert(seq) {
            self.duplicated.fetch_add(1, Ordering::Relaxed);
        }
        Consumed::Again
    }

    #[cfg(test)]
    pub fn is_acked(&self, seq: u64) -> bool {
        self.acked.contains(seq)
    }

    /// Call once marking has stopped.
    pub fn verdict(&self) -> Verdict {
        Verdict {
            consumed: self.consumed_total.load(Ordering::Relaxed),
            consumed_unique: self.consumed_unique.load(Ordering::Relaxed),
            lost: self.acked.count_not_in(&self.consumed),
            duplicated: self.duplicated.load(Ordering::Relaxed),
            consumed_not_acked: self.consumed.count_not_in(&self.acked),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_acked_record_consumed_once_is_clean() {
        let c = Checker::default();
        for seq in 0..10_000 {
            c.mark_acked(seq);
        }
        for seq in (0..10_000).rev() {
            assert_eq!(c.mark_consumed(seq), Consumed::First);
        }
        let v = c.verdict();
        assert_eq!(v.lost, 0);
        assert_eq!(v.duplicated, 0);
        assert_eq!(v.consumed, 10_000);
        assert_eq!(v.consumed_unique, 10_000);
    }

    #[test]
    fn acked_but_never_consumed_is_lost() {
        let c = Checker::default();
        for seq in 0..100 {
            c.mark_acked(seq);
            if seq % 10 != 3 {
                c.mark_consumed(seq);
            }
        }
        assert_eq!(c.verdict().lost, 10);
    }

    #[test]
    fn a_record_consumed_three_times_is_one_duplicate() {
        let c = Checker::default();
        c.mark_acked(7);
        c.mark_acked(8);
        assert_eq!(c.mark_consumed(7), Consumed::First);
        assert_eq!(c.mark_consumed(7), Consumed::Again);
        assert_eq!(c.mark_consumed(7), Consumed::Again);
        c.mark_consumed(8);
        let v = c.verdict();
        assert_eq!(v.duplicated, 1);
        assert_eq!(v.consumed, 4);
        assert_eq!(v.consumed_unique, 2);
        assert_eq!(v.lost, 0);
    }

    #[test]
    fn a_failed_delivery_that_was_written_anyway_is_not_lost() {
        let c = Checker::default();
        c.mark_acked(1);
        c.mark_consumed(1);
        c.mark_consumed(2); // delivery failed, the broker had written it
        let v = c.verdict();
        assert_eq!(v.lost, 0);
        assert_eq!(v.consumed_not_acked, 1);
    }

    #[test]
    fn ids_across_chunks_and_with_nothing_consumed_are_counted() {
        let c = Checker::default();
        let far = 5 << CHUNK_BITS_LOG2;
        for seq in [
            0,
            63,
            64,
            (1 << CHUNK_BITS_LOG2) - 1,
            1 << CHUNK_BITS_LOG2,
            far,
        ] {
            c.mark_acked(seq);
        }
        assert_eq!(c.verdict().lost, 6);
        c.mark_consumed(far);
        c.mark_consumed(64);
        assert_eq!(c.verdict().lost, 4);
        assert!(c.is_acked(far));
        assert!(!c.is_acked(far + 1));
    }

    #[test]
    fn concurrent_marking_loses_no_bits() {
        let c = std::sync::Arc::new(Checker::default());
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let c = c.clone();
                std::thread::spawn(move || {
                    for i in 0..50_000u64 {
                        let seq = i * 4 + t;
                        c.mark_acked(seq);
                        c.mark_consumed(seq);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let v = c.verdict();
        assert_eq!(v.consumed_unique, 200_000);
        assert_eq!(v.lost, 0);
        assert_eq!(v.duplicated, 0);
    }
}
