//! What a client needs to know about a topic, taken out of a Metadata
//! response: its id, and per partition the leader to send to plus the replica
//! sets to show.
//!
//! The wire structs are kept out of callers so that Produce, Fetch and
//! `topic describe` agree on one reading of the response (sorted partitions,
//! errors as [`KafkaError`]).

use kafka_protocol::messages::metadata_response::MetadataResponseTopic;
use uuid::Uuid;

use crate::client::error::KafkaError;

/// One topic as the cluster described it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicMetadata {
    pub name: String,
    /// Nil when the broker's Metadata version predates topic ids (< v10).
    pub topic_id: Uuid,
    pub is_internal: bool,
    /// Sorted by partition index.
    pub partitions: Vec<PartitionMetadata>,
}

/// One partition: who leads it, who replicates it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionMetadata {
    pub partition: i32,
    /// -1 while the partition has no leader.
    pub leader_id: i32,
    /// -1 when the broker's Metadata version predates leader epochs.
    pub leader_epoch: i32,
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
    pub offline_replicas: Vec<i32>,
    pub error: Option<KafkaError>,
}

impl TopicMetadata {
    /// Reads one topic of a Metadata response; a topic-level error becomes
    /// the `Err`.
    pub fn from_response(topic: &MetadataResponseTopic) -> Result<Self, KafkaError> {
        KafkaError::check(topic.error_code, None).map_err(|mut e| {
            let name = topic.name.as_ref().map_or("?", |n| n.0.as_str());
            e.message = Some(format!("topic '{name}'"));
            e
        })?;
        let mut partitions: Vec<PartitionMetadata> = topic
            .partitions
            .iter()
            .map(|p| PartitionMetadata {
                partition: p.partition_index,
                leader_id: p.leader_id.0,
                leader_epoch: p.leader_epoch,
                replicas: p.replica_nodes.iter().map(|b| b.0).collect(),
                isr: p.isr_nodes.iter().map(|b| b.0).collect(),
                offline_replicas: p.offline_replicas.iter().map(|b| b.0).collect(),
                error: KafkaError::from_code(p.error_code, None),
            })
            .collect();
        partitions.sort_by_key(|p| p.partition);
        Ok(TopicMetadata {
            name: topic
                .name
                .as_ref()
                .map(|n| n.0.as_str().to_owned())
                .unwrap_or_default(),
            topic_id: topic.topic_id,
            is_internal: topic.is_internal,
            partitions,
        })
    }

    pub fn partition(&self, index: i32) -> Option<&PartitionMetadata> {
        self.partitions
            .binary_search_by_key(&index, |p| p.partition)
            .ok()
            .map(|i| &self.partitions[i])
    }

    pub fn partition_count(&self) -> i32 {
        i32::try_from(self.partitions.len()).unwrap_or(i32::MAX)
    }

    /// True when every partition has a leader: ready for Produce and Fetch.
    pub fn all_partitions_led(&self) -> bool {
        !self.partitions.is_empty() && self.partitions.iter().all(|p| p.leader_id >= 0)
    }
}

/// A topic id the way Kafka prints it: URL-safe base64 of the 16 bytes,
/// without padding (`Uuid.toString()` in the Java client).
pub fn format_topic_id(id: &Uuid) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let bytes = id.as_bytes();
    let mut out = String::with_capacity(22);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let sextets = chunk.len() + 1;
        for i in 0..sextets {
            let index = (n >> (18 - 6 * i)) & 0x3f;
            out.push(char::from(ALPHABET[index as usize]));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::metadata_response::MetadataResponsePartition;
    use kafka_protocol::messages::TopicName;
    use kafka_protocol::protocol::StrBytes;

    #[test]
    fn topic_ids_print_like_the_java_client() {
        // Values printed by org.apache.kafka.common.Uuid#toString.
        let id = Uuid::from_u64_pair(0x0001020304050607, 0x08090a0b0c0d0e0f);
        assert_eq!(format_topic_id(&id), "AAECAwQFBgcICQoLDA0ODw");
        let id = Uuid::from_u64_pair(u64::MAX, u64::MAX - 1);
        assert_eq!(format_topic_id(&id), "_____________________g");
    }

    #[test]
    fn partitions_are_sorted_and_topic_errors_named() {
        let topic = MetadataResponseTopic::default()
            .with_name(Some(TopicName(StrBytes::from_static_str("t"))))
            .with_partitions(vec![
                MetadataResponsePartition::default()
                    .with_partition_index(1)
                    .with_leader_id(2.into()),
                MetadataResponsePartition::default()
                    .with_partition_index(0)
                    .with_leader_id((-1).into())
                    .with_error_code(KafkaError::LEADER_NOT_AVAILABLE),
            ]);
        let meta = TopicMetadata::from_response(&topic).unwrap();
        assert_eq!(meta.partitions[0].partition, 0);
        assert_eq!(meta.partition(1).unwrap().leader_id, 2);
        assert!(!meta.all_partitions_led());
        let missing = topic.with_error_code(KafkaError::UNKNOWN_TOPIC_OR_PARTITION);
        let err = TopicMetadata::from_response(&missing).unwrap_err();
        assert_eq!(err.to_string(), "UNKNOWN_TOPIC_OR_PARTITION: topic 't'");
    }
}
