//! FindCoordinator: on a single node every group's coordinator is this node.
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
    let (host, port) = broker.advertised();
    let node = BrokerId(broker.config.node_id);
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
                c.key = key;
                if available {
                    c.node_id = node;
                    c.host = StrBytes::from_string(host.to_string());
                    c.port = port;
                } else {
                    c.node_id = BrokerId(-1);
                    c.port = -1;
                    c.error_code = ResponseError::CoordinatorNotAvailable.code();
                }
                c
            })
            .collect();
    } else if available {
        response.node_id = node;
        response.host = StrBytes::from_string(host.to_string());
        response.port = port;
    } else {
        response.error_code = ResponseError::CoordinatorNotAvailable.code();
        response.node_id = BrokerId(-1);
        response.port = -1;
    }
    response
}
