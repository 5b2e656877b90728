//! The names errors are counted under in the report.
//!
//! librdkafka's own names (`rd_kafka_err2name`) are the Kafka protocol's for
//! broker errors (`NOT_LEADER_FOR_PARTITION`, `REQUEST_TIMED_OUT`) and start with
//! an underscore for client-side ones (`_MSG_TIMED_OUT`, `_QUEUE_FULL`): the
//! vocabulary a Kafka operator already reads in broker and client logs.

use std::ffi::CStr;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::types::RDKafkaRespErr;

pub fn of_code(code: RDKafkaErrorCode) -> String {
    match RDKafkaRespErr::try_from(code as i32) {
        Ok(err) => {
            // SAFETY: rd_kafka_err2name returns a pointer to a static,
            // NUL-terminated string for every error code, known or not.
            let name = unsafe { CStr::from_ptr(rdkafka::bindings::rd_kafka_err2name(err)) };
            name.to_string_lossy().into_owned()
        }
        Err(_) => format!("{code:?}"),
    }
}

pub fn of(err: &KafkaError) -> String {
    match err.rdkafka_error_code() {
        Some(code) => of_code(code),
        None => format!("{err}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_and_client_errors_have_librdkafka_names() {
        assert_eq!(
            of_code(RDKafkaErrorCode::NotLeaderForPartition),
            "NOT_LEADER_FOR_PARTITION"
        );
        assert_eq!(of_code(RDKafkaErrorCode::MessageTimedOut), "_MSG_TIMED_OUT");
        assert_eq!(
            of(&KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)),
            "_QUEUE_FULL"
        );
    }
}
