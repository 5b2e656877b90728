//! A minimal async Kafka protocol client, used by the `fjord` CLI's client
//! subcommands (`topic`, `produce`, `consume`, `group`) against Fjord or
//! Apache Kafka.
//!
//! Layering, bottom up: `framing` (length-prefixed frames, header versions),
//! `connection` (one broker: ApiVersions negotiation, correlation ids,
//! timeouts), `cluster` (bootstrap, Metadata, a connection per broker),
//! then the pieces the commands share: `metadata` (topic/partition view),
//! `offsets` (ListOffsets), `records` (record batches in and out),
//! `partitioner` (Java-compatible key hashing), and for consumer groups
//! `coordinator` (FindCoordinator), `groups` (ListGroups, DescribeGroups,
//! OffsetFetch, OffsetCommit, DeleteGroups) and `consumer_protocol` (the
//! assignment bytes inside DescribeGroups).

pub mod cluster;
pub mod connection;
pub mod consumer_protocol;
pub mod coordinator;
pub mod error;
pub mod framing;
pub mod groups;
pub mod metadata;
pub mod offsets;
pub mod partitioner;
pub mod records;

pub use cluster::Client;
pub use connection::{ClientConfig, Connection};
pub use error::KafkaError;
pub use metadata::{PartitionMetadata, TopicMetadata};
pub use offsets::OffsetSpec;
