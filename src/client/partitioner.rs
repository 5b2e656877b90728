//! Choosing a partition for a record, the way the Java producer does.
//!
//! Keyed records must land where a Java (or librdkafka `murmur2_random`)
//! producer would put them, or consumers relying on key → partition stickiness
//! break when producers are mixed; so the hash is Kafka's murmur2, bit for bit,
//! and the partition is `toPositive(murmur2(key)) % partitions`. Unkeyed
//! records are spread round-robin, starting from a random partition.

/// Kafka's `Utils.murmur2`: MurmurHash2, 32-bit, seed `0x9747b28c`, reading
/// little-endian words.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;

    // Java takes the length as an int; keys longer than 2 GiB are not a thing.
    let mut h: u32 = SEED ^ (data.len() as u32);
    let mut words = data.chunks_exact(4);
    for word in &mut words {
        let mut k = u32::from_le_bytes([word[0], word[1], word[2], word[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = words.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// Kafka's `Utils.toPositive`: clears the sign bit (not `abs`, which
/// overflows on `i32::MIN`).
pub fn to_positive(n: i32) -> i32 {
    n & 0x7fff_ffff
}

/// The partition the Java default partitioner picks for `key`.
pub fn partition_for_key(key: &[u8], partition_count: i32) -> i32 {
    debug_assert!(partition_count > 0);
    to_positive(murmur2(key)) % partition_count.max(1)
}

/// Spreads unkeyed records over partitions one record at a time.
#[derive(Debug, Clone)]
pub struct RoundRobin {
    next: u32,
}

impl RoundRobin {
    /// Starts at a random partition so that many short-lived producers do
    /// not all pile onto partition 0.
    pub fn new() -> Self {
        RoundRobin {
            next: uuid::Uuid::new_v4().as_u128() as u32,
        }
    }

    pub fn next_partition(&mut self, partition_count: i32) -> i32 {
        debug_assert!(partition_count > 0);
        let p = self.next % (partition_count.max(1) as u32);
        self.next = self.next.wrapping_add(1);
        p as i32
    }
}

impl Default for RoundRobin {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (key, Utils.murmur2(key), toPositive(hash) % 3), printed by the Java
    /// client (kafka-clients 4.3.1); the first ones also appear in Kafka's
    /// own UtilsTest.
    const JAVA_VALUES: &[(&str, i32, i32)] = &[
        ("", 275646681, 0),
        ("a", -1563381124, 1),
        ("ab", 316155434, 2),
        ("abc", 479470107, 0),
        ("abcd", -1323649548, 2),
        ("21", -973932308, 0),
        ("foobar", -790332482, 0),
        ("a-little-bit-long-string", -985981536, 2),
        ("a-little-bit-longer-string", -1486304829, 2),
        (
            "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
            -58897971,
            2,
        ),
        ("key-0", 29210041, 1),
        ("key-1", 193331640, 0),
        ("key-9999", -1873956848, 0),
        ("éèÿ", -810156800, 0),
    ];

    #[test]
    fn murmur2_matches_the_java_client() {
        for &(key, hash, partition) in JAVA_VALUES {
            assert_eq!(murmur2(key.as_bytes()), hash, "murmur2({key:?})");
            assert_eq!(partition_for_key(key.as_bytes(), 3), partition, "{key:?}");
        }
        let all_bytes: Vec<u8> = (0..=255u8).collect();
        assert_eq!(murmur2(&all_bytes), -1948347274);
    }

    #[test]
    fn to_positive_clears_only_the_sign_bit() {
        assert_eq!(to_positive(i32::MIN), 0);
        assert_eq!(to_positive(-1), i32::MAX);
        assert_eq!(to_positive(5), 5);
    }

    #[test]
    fn round_robin_visits_every_partition_evenly() {
        let mut rr = RoundRobin::new();
        let mut counts = [0; 3];
        for _ in 0..300 {
            counts[rr.next_partition(3) as usize] += 1;
        }
        assert_eq!(counts, [100, 100, 100]);
    }
}
