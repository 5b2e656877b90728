//! Producer id allocation for idempotent producers (InitProducerId).
//!
//! Ids are handed out from blocks that the metadata group allocates (Kafka's
//! AllocateProducerIds: the controller hands out blocks of 1000). A block is
//! committed before its first id is given out, and no block is allocated
//! twice, so an id is never handed out twice, on any node, across restarts;
//! what is left of a node's block when it stops is skipped.

use parking_lot::Mutex;

use crate::broker::KafkaError;
use crate::cluster::ClusterMetadata;

/// Ids per block: one metadata commit per this many producers.
pub const PRODUCER_ID_BLOCK_SIZE: i64 = 1000;

/// Hands out producer ids unique across the cluster and across restarts.
#[derive(Default)]
pub struct ProducerIdManager {
    state: Mutex<Block>,
}

#[derive(Default)]
struct Block {
    next: i64,
    /// Exclusive end of the block this node holds.
    end: i64,
}

impl ProducerIdManager {
    pub fn new() -> ProducerIdManager {
        ProducerIdManager::default()
    }

    /// The next unused producer id. Blocking when a new block must be
    /// allocated by the metadata group.
    pub fn next_id(&self, metadata: &ClusterMetadata) -> Result<i64, KafkaError> {
        let mut block = self.state.lock();
        if block.next >= block.end {
            let start = metadata.allocate_producer_ids(PRODUCER_ID_BLOCK_SIZE)?;
            *block = Block {
                next: start,
                end: start + PRODUCER_ID_BLOCK_SIZE,
            };
        }
        let id = block.next;
        block.next += 1;
        Ok(id)
    }
}
