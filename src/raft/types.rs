//! Who is who: node ids and Raft group ids.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A group member's address as openraft stores it in memberships.
pub use openraft::BasicNode;

/// A node's id: Kafka's `node.id` (broker id), which is never negative.
pub type NodeId = u64;

/// Names one Raft group on the wire and in the node's registry.
///
/// Partition groups are named by topic id, not topic name, so that a topic
/// deleted and created again under the same name can never receive a
/// message meant for the old one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum GroupId {
    /// The cluster metadata group (Kafka's controller quorum).
    Metadata,
    /// One partition of one topic.
    Partition { topic_id: Uuid, partition: i32 },
}

impl std::fmt::Display for GroupId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GroupId::Metadata => write!(f, "metadata"),
            GroupId::Partition {
                topic_id,
                partition,
            } => write!(f, "{topic_id}-{partition}"),
        }
    }
}
