//! FindCoordinator: a group's coordinator is the leader of its
//! `__consumer_offsets` partition, wherever that is.
//!
//! librdkafka only enables LZ4 (and its group code paths) when the broker
//! lists FindCoordinator, so it is implemented even before consumer groups.
//! Transaction coordinators do not exist yet: those keys get
//! COORDINATOR_NOT_AVAILABLE.

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::{BrokerId, FindCoordinatorRequest, FindCoordinatorResponse};
use kafka_protocol::protocol::StrBytes;

use crate::broker::Broker;

/// Kafka's coordinator key types.
const KEY_TYPE_GROUP: i8 = 0;

/// Most keys one batched request may carry.
const COORDINATOR_KEYS_MAX: usize = 10_000;

pub fn find(
    broker: &Broker,
    version: i16,
    request: FindCoordinatorRequest,
) -> FindCoordinatorResponse {
    // A group's coordinator, if it has one now: (node, host, port).
    let brokers = broker.metadata.alive_brokers();
    let locate = |group: &str| {
        let node = broker.coordinator_of(group)?;
        let b = brokers.iter().find(|b| b.id == node)?;
        Some((
            BrokerId(node),
            StrBytes::from_string(b.host.clone()),
            b.port,
        ))
    };
    let key_type = if version >= 1 {
        request.key_type
    } else {
        KEY_TYPE_GROUP
    };
    let available = key_type == KEY_TYPE_GROUP;
    let mut response = FindCoordinatorResponse::default();
    if version >= 4 {
        response.coordinators = request
            .coordinator_keys
            .into_iter()
            .take(COORDINATOR_KEYS_MAX)
            .map(|key| {
                let mut c = Coordinator::default();
                let found = available.then(|| locate(&key)).flatten();
                c.key = key;
                if let Some((node, host, port)) = found {
                    c.node_id = node;
                    c.host = host;
                    c.port = port;
                } else {
                    c.node_id = BrokerId(-1);
                    c.port = -1;
                    c.error_code = ResponseError::CoordinatorNotAvailable.code();
                }
                c
            })
            .collect();
    } else if let Some((node, host, port)) = available.then(|| locate(&request.key)).flatten() {
        response.node_id = node;
        response.host = host;
        response.port = port;
    } else {
        response.error_code = ResponseError::CoordinatorNotAvailable.code();
        response.node_id = BrokerId(-1);
        response.port = -1;
    }
    response
}
