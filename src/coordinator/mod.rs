//! Coordinators: consumer groups and their committed offsets (classic
//! protocol), and producer ids for idempotent producers.

pub mod consumer_protocol;
pub mod group;
pub mod group_coordinator;
pub mod offsets_topic;
pub mod producer_id;
