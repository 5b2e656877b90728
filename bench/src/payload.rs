//! The bytes of a bench record: a fixed header the checker and the latency
//! recorders read back, then padding up to `--record-size`.
//!
//! ```text
//! 0  4  magic "FJB1"
//! 4  8  run id        (big-endian; records of other runs in a reused topic are skipped)
//! 12 8  sequence id   (unique within the run; the checker's bit index)
//! 20 8  send time     (µs on this process's monotonic clock; for rate
//!                      workloads the *scheduled* time, see `clock`)
//! 28 .. padding
//! ```
//!
//! The send time rides in the value rather than in the record timestamp so
//! that the delivery callback and the consumer both get microseconds on one
//! monotonic clock without any lookup table. The padding is lowercase letters
//! from a per-producer random pool at a per-record offset: text-like, so
//! compression has something to do, and not one repeated value.

pub const MAGIC: [u8; 4] = *b"FJB1";
pub const HEADER_LEN: usize = 28;

/// Letters the padding is cut from; larger than any sane record so a slice
/// starting at a per-record offset still varies.
const PAD_POOL_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub run_id: u64,
    pub seq: u64,
    pub sent_us: u64,
}

/// Reads the header of a value written by this bench, `None` for anything else.
pub fn decode(value: &[u8]) -> Option<Header> {
    if value.len() < HEADER_LEN || value[0..4] != MAGIC {
        return None;
    }
    let word = |at: usize| u64::from_be_bytes(value[at..at + 8].try_into().expect("8 bytes"));
    Some(Header {
        run_id: word(4),
        seq: word(12),
        sent_us: word(20),
    })
}

/// Builds values (and keys) for one producer; reuses its buffers so sending
/// allocates nothing per record.
pub struct ValueBuilder {
    value: Vec<u8>,
    pool: Vec<u8>,
    key: Vec<u8>,
    rng: SplitMix64,
}

impl ValueBuilder {
    pub fn new(record_size: usize, seed: u64) -> Self {
        assert!(record_size >= HEADER_LEN, "record size below the header");
        let mut rng = SplitMix64(seed);
        let pool = (0..PAD_POOL_BYTES.max(record_size * 2))
            .map(|_| b'a' + (rng.next() % 26) as u8)
            .collect();
        ValueBuilder {
            value: vec![0; record_size],
            pool,
            key: Vec::with_capacity(24),
            rng,
        }
    }

    /// The key (drawn uniformly from `distinct_keys` keys, "key-<n>", or
    /// none) and the value for `header`; both valid until the next call.
    pub fn record(&mut self, header: Header, distinct_keys: Option<u64>) -> (Option<&[u8]>, &[u8]) {
        if let Some(distinct) = distinct_keys {
            use std::io::Write;
            let n = self.rng.next() % distinct;
            self.key.clear();
            write!(self.key, "key-{n}").expect("write to Vec");
        }
        let pad = self.value.len() - HEADER_LEN;
        if pad > 0 {
            // A multiplicative hash spreads consecutive records over the pool.
            let start = (header.seq.wrapping_mul(0x9E37_79B9) as usize) % (self.pool.len() - pad);
            self.value[HEADER_LEN..].copy_from_slice(&self.pool[start..start + pad]);
        }
        self.value[0..4].copy_from_slice(&MAGIC);
        self.value[4..12].copy_from_slice(&header.run_id.to_be_bytes());
        self.value[12..20].copy_from_slice(&header.seq.to_be_bytes());
        self.value[20..28].copy_from_slice(&header.sent_us.to_be_bytes());
        (distinct_keys.map(|_| &self.key[..]), &self.value)
    }
}

/// A tiny, fast, seedable generator (Steele et al.'s SplitMix64): the bench
/// needs varied bytes and uniform keys, not cryptographic randomness.
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_value_has_the_record_size() {
        let mut b = ValueBuilder::new(100, 7);
        let h = Header {
            run_id: 0xDEAD_BEEF,
            seq: 123_456,
            sent_us: 987_654_321,
        };
        let (key, v) = b.record(h, None);
        assert_eq!(key, None);
        let v = v.to_vec();
        assert_eq!(v.len(), 100);
        assert_eq!(decode(&v), Some(h));
        assert!(v[HEADER_LEN..].iter().all(u8::is_ascii_lowercase));
    }

    #[test]
    fn foreign_values_are_not_decoded() {
        assert_eq!(decode(b"hello"), None);
        assert_eq!(decode(&[0u8; 64]), None);
    }

    #[test]
    fn header_only_records_have_no_padding() {
        let mut b = ValueBuilder::new(HEADER_LEN, 1);
        let h = Header {
            run_id: 1,
            seq: 2,
            sent_us: 3,
        };
        assert_eq!(decode(b.record(h, None).1), Some(h));
    }

    #[test]
    fn keys_stay_within_the_distinct_count() {
        let mut b = ValueBuilder::new(HEADER_LEN, 1);
        let mut seen = std::collections::BTreeSet::new();
        let h = Header {
            run_id: 1,
            seq: 2,
            sent_us: 3,
        };
        for _ in 0..1000 {
            seen.insert(b.record(h, Some(4)).0.unwrap().to_vec());
        }
        assert_eq!(seen.len(), 4);
    }
}
