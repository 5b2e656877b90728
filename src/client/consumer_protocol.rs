//! The embedded "consumer" protocol of classic groups, as a client reads it
//! back: the assignment bytes a leader hands each member in SyncGroup, which
//! DescribeGroups returns verbatim as `member_assignment`.
//!
//! The bytes are a `ConsumerProtocolAssignment` prefixed by its own `int16`
//! version (they are not a Kafka request, so no header carries it). Like the
//! Java client, a version above the highest we know is read as that highest
//! version: newer versions only append fields, so the prefix we know still
//! parses. The decoder is kafka-protocol's, whose array reads are bounded by
//! the bytes actually present (the vendored "Fjord patch"), so hostile bytes
//! cost an error, never a large allocation.

use std::collections::BTreeMap;

use anyhow::{bail, ensure, Context, Result};
use bytes::{Buf, Bytes};
use kafka_protocol::messages::ConsumerProtocolAssignment;
use kafka_protocol::protocol::{Decodable, Message};

/// `protocol_type` of groups whose members speak the consumer protocol (the
/// Java consumer, librdkafka, ...); other types (e.g. Kafka Connect's
/// "connect") carry assignments we cannot read.
pub const CONSUMER_PROTOCOL_TYPE: &str = "consumer";

/// Size of the version prefix in front of the assignment.
const VERSION_PREFIX_BYTES: usize = 2;

/// The partitions a member was assigned: topic → sorted, distinct partitions.
pub type Assignment = BTreeMap<String, Vec<i32>>;

/// Decodes a member's assignment bytes (any version, 0 through 3 and
/// later). Empty bytes are an empty assignment: members that have joined but
/// not yet synced have no assignment, and DescribeGroups sends none for them.
pub fn decode_assignment(bytes: &[u8]) -> Result<Assignment> {
    if bytes.is_empty() {
        return Ok(Assignment::new());
    }
    ensure!(
        bytes.len() >= VERSION_PREFIX_BYTES,
        "consumer protocol assignment of {} byte(s) is too short for its version",
        bytes.len()
    );
    let mut buf = Bytes::copy_from_slice(bytes);
    let version = buf.get_i16();
    if version < ConsumerProtocolAssignment::VERSIONS.min {
        bail!("unsupported consumer protocol assignment version {version}");
    }
    let readable = version.min(ConsumerProtocolAssignment::VERSIONS.max);
    let decoded = ConsumerProtocolAssignment::decode(&mut buf, readable)
        .with_context(|| format!("decoding consumer protocol assignment v{version}"))?;
    let mut assignment = Assignment::new();
    for topic in decoded.assigned_partitions {
        assignment
            .entry(topic.topic.0.as_str().to_owned())
            .or_default()
            .extend(topic.partitions);
    }
    for partitions in assignment.values_mut() {
        partitions.sort_unstable();
        partitions.dedup();
    }
    Ok(assignment)
}

/// An assignment the way `kafka-consumer-groups.sh --members --verbose`
/// shows it, `topic:0,1,2`, with `;` between topics so that the whole stays
/// one whitespace-free table cell.
pub fn format_assignment(assignment: &Assignment) -> String {
    assignment
        .iter()
        .map(|(topic, partitions)| {
            let partitions: Vec<String> = partitions.iter().map(i32::to_string).collect();
            format!("{topic}:{}", partitions.join(","))
        })
        .collect::<Vec<_>>()
        .join(";")
}

/// How many partitions an assignment holds.
pub fn partition_count(assignment: &Assignment) -> usize {
    assignment.values().map(Vec::len).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds assignment bytes by hand, in the layout of the Kafka schema
    /// (`ConsumerProtocolAssignment.json`), so the test checks our reading
    /// against the spec rather than against kafka-protocol's own encoder.
    fn assignment_bytes(
        version: i16,
        topics: &[(&str, &[i32])],
        user_data: Option<&[u8]>,
    ) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&version.to_be_bytes());
        out.extend_from_slice(&(topics.len() as i32).to_be_bytes());
        for (topic, partitions) in topics {
            out.extend_from_slice(&(topic.len() as i16).to_be_bytes());
            out.extend_from_slice(topic.as_bytes());
            out.extend_from_slice(&(partitions.len() as i32).to_be_bytes());
            for p in *partitions {
                out.extend_from_slice(&p.to_be_bytes());
            }
        }
        match user_data {
            None => out.extend_from_slice(&(-1i32).to_be_bytes()),
            Some(d) => {
                out.extend_from_slice(&(d.len() as i32).to_be_bytes());
                out.extend_from_slice(d);
            }
        }
        out
    }

    #[test]
    fn every_known_version_decodes() {
        for version in 0..=3 {
            let bytes = assignment_bytes(version, &[("orders", &[2, 0]), ("audit", &[1])], None);
            let assignment = decode_assignment(&bytes).unwrap();
            assert_eq!(
                assignment,
                Assignment::from([
                    ("audit".to_owned(), vec![1]),
                    ("orders".to_owned(), vec![0, 2]),
                ]),
                "v{version}"
            );
        }
    }

    #[test]
    fn user_data_is_skipped() {
        let bytes = assignment_bytes(1, &[("t", &[0])], Some(b"sticky-generation"));
        assert_eq!(
            decode_assignment(&bytes).unwrap(),
            Assignment::from([("t".to_owned(), vec![0])])
        );
    }

    #[test]
    fn a_newer_version_is_read_as_the_newest_known() {
        // A v7 assignment is a v3 assignment plus fields we do not know.
        let mut bytes = assignment_bytes(7, &[("t", &[3])], None);
        bytes.extend_from_slice(&[0, 0, 0, 9]);
        assert_eq!(
            decode_assignment(&bytes).unwrap(),
            Assignment::from([("t".to_owned(), vec![3])])
        );
    }

    #[test]
    fn empty_bytes_are_an_empty_assignment() {
        assert!(decode_assignment(&[]).unwrap().is_empty());
        let no_topics = assignment_bytes(3, &[], None);
        assert!(decode_assignment(&no_topics).unwrap().is_empty());
    }

    #[test]
    fn repeated_topics_merge_and_partitions_dedupe() {
        let bytes = assignment_bytes(0, &[("t", &[1, 0]), ("t", &[1, 2])], None);
        assert_eq!(
            decode_assignment(&bytes).unwrap(),
            Assignment::from([("t".to_owned(), vec![0, 1, 2])])
        );
    }

    #[test]
    fn malformed_bytes_are_errors_not_panics() {
        assert!(decode_assignment(&[0]).is_err());
        assert!(
            decode_assignment(&[0xff, 0xff, 0, 0, 0, 0]).is_err(),
            "negative version"
        );
        let full = assignment_bytes(0, &[("topic", &[0, 1])], None);
        for len in 2..full.len() {
            assert!(
                decode_assignment(&full[..len]).is_err(),
                "truncated at {len}"
            );
        }
        // A count of two billion topics in a few bytes must fail fast.
        let mut huge = vec![0, 0];
        huge.extend_from_slice(&i32::MAX.to_be_bytes());
        assert!(decode_assignment(&huge).is_err());
    }

    #[test]
    fn assignments_format_like_the_kafka_tool() {
        let assignment =
            Assignment::from([("a".to_owned(), vec![0, 1, 2]), ("b".to_owned(), vec![5])]);
        assert_eq!(format_assignment(&assignment), "a:0,1,2;b:5");
        assert_eq!(partition_count(&assignment), 4);
        assert_eq!(format_assignment(&Assignment::new()), "");
    }
}
