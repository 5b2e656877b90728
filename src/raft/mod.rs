//! Consensus: every partition is a Raft group (openraft), and so is the
//! cluster's metadata (Kafka's controller quorum).
//!
//! openraft is pinned exactly and only this module names it, so that moving
//! to another version touches one place. The layout:
//! - `types` — node and group identities shared by everything below.
//! - `transport` — node-to-node RPC on the CONTROLLER listener: one
//!   connection per peer and direction carrying every group's messages,
//!   framing, request ids, timeouts, reconnects, and node liveness.
//! - `leaders` — the report of which groups a node leads, carried by the
//!   transport's heartbeat to every peer: followers learn from it that
//!   their leader is there, and every node who leads what.
//! - `entry_log` — a file-backed Raft log and state machine for small groups
//!   (the metadata group), whose entries are serialized commands.
//! - `network` — openraft's network over the transport, and the registry
//!   that routes a peer's request to the group it names.
//! - `partition_store` — the Raft log of a partition group, kept in the
//!   partition's own segment files plus a small entry index: the leader's
//!   store assigns offsets, followers store the leader's bytes, Raft's own
//!   entries take no offsets.
//! - `partition_group` — a partition's group on this node: that store, a
//!   state machine that moves the high watermark to the committed end, and
//!   produce through the leader.
//! - `group` — starts an entry group on a node (files, Raft, registry) and
//!   bootstraps a fresh one: the lowest voter initializes it once a majority
//!   of the voters hold no state of it.
//! - `transfer` — moving a group's leadership to a caught-up follower before
//!   this node stops (Kafka's controlled shutdown).
//!
//! Design decision (see DESIGN.md, "Consensus layout"): partition groups
//! run with openraft's per-group timers off. Heartbeats and elections of
//! thousands of partition groups would cost CPU in proportion to the
//! partition count even when idle; instead one node-level heartbeat per
//! peer tells which nodes are alive and which groups each leads, and a
//! node-level election driver triggers elections only in the groups whose
//! leader is gone. The metadata group is a single group and keeps
//! openraft's own timers (`group::GroupTimers`).

pub mod entry_log;
pub mod group;
pub mod leaders;
pub mod network;
pub mod partition_group;
pub mod partition_store;
pub mod transfer;
pub mod transport;
pub mod types;

pub use types::{GroupId, NodeId};

#[doc(hidden)]
pub use openraft as __openraft;

/// Declares the Raft type configuration of an entry group whose entries
/// carry `$command` and whose state machine answers `$response`, so that
/// modules outside `raft` never name openraft.
#[macro_export]
macro_rules! entry_group_types {
    ($vis:vis $name:ident, $command:ty, $response:ty) => {
        $crate::raft::__openraft::declare_raft_types!(
            $vis $name:
                D = $command,
                R = $response,
                NodeId = u64,
                Node = $crate::raft::__openraft::BasicNode,
                Entry = $crate::raft::__openraft::Entry<$name>,
                SnapshotData = Vec<u8>,
                AsyncRuntime = $crate::raft::__openraft::TokioRuntime,
        );
    };
}
