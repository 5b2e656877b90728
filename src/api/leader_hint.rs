//! KIP-951: a produce or fetch refused with NOT_LEADER_OR_FOLLOWER (or,
//! for fetch, FENCED_LEADER_EPOCH) names the partition's current leader and
//! its epoch, and the response carries that broker's endpoint, so the
//! client can go there at once instead of refreshing its metadata first.

use crate::broker::Broker;
use crate::cluster::state::BrokerRegistration;

/// The leader a refusal names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaderHint {
    pub leader: i32,
    pub epoch: i32,
}

/// The partition's leader as this node knows it, if another node leads it
/// now (a node that is still being elected is not named).
pub fn leader_of(broker: &Broker, topic: &str, partition: i32) -> Option<LeaderHint> {
    let meta = broker.metadata.topic(topic)?;
    let view = broker.partition_view(&meta, partition);
    let leader = view.leader.filter(|&l| l != broker.config.node_id)?;
    Some(LeaderHint {
        leader,
        epoch: view.leader_epoch,
    })
}

/// The endpoints of the brokers `hints` name, each once.
pub fn endpoints(
    broker: &Broker,
    hints: impl Iterator<Item = LeaderHint>,
) -> Vec<BrokerRegistration> {
    let mut ids: Vec<i32> = hints.map(|h| h.leader).collect();
    ids.sort_unstable();
    ids.dedup();
    if ids.is_empty() {
        return Vec::new();
    }
    broker
        .metadata
        .alive_brokers()
        .into_iter()
        .filter(|b| ids.binary_search(&b.id).is_ok())
        .collect()
}
