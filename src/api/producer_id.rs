//! InitProducerId for idempotent (non-transactional) producers.
//!
//! Every call hands out a fresh producer id with epoch 0, as Kafka does for a
//! producer without a transactional id (an epoch bump after an error, KIP-360,
//! also gets a fresh id: sequence numbers restart at zero either way).
//! Transactions are not implemented, so a transactional id is refused.

use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};

use crate::broker::Broker;

pub async fn handle(
    broker: &Arc<Broker>,
    _version: i16,
    request: InitProducerIdRequest,
) -> InitProducerIdResponse {
    let mut response = InitProducerIdResponse::default();
    response.producer_id = ProducerId(-1);
    response.producer_epoch = -1;
    if request.transactional_id.is_some() {
        response.error_code = ResponseError::TransactionalIdAuthorizationFailed.code();
        return response;
    }
    let b = broker.clone();
    match super::blocking(move || b.producer_ids.next_id(&b.metadata)).await {
        Ok(Ok(id)) => {
            response.producer_id = ProducerId(id);
            response.producer_epoch = 0;
        }
        Ok(Err((code, message))) => {
            tracing::error!(?code, %message, "cannot allocate a producer id block");
            response.error_code = ResponseError::CoordinatorNotAvailable.code();
        }
        Err(_) => response.error_code = ResponseError::CoordinatorNotAvailable.code(),
    }
    response
}
