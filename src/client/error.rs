//! Kafka error codes as the errors our client returns.
//!
//! A Kafka error travels as an `i16` in a response; users and operators know it
//! by its Java name (`UNKNOWN_TOPIC_OR_PARTITION`), so that is how we print it.
//! The name table comes from kafka-protocol's `ResponseError`, converted from
//! its CamelCase variant names, so new codes appear without a table of our own.

use std::fmt;

use kafka_protocol::error::ResponseError;

/// A non-zero error code from a Kafka response, with the broker's message if
/// it sent one. Returned inside `anyhow::Error`, so callers that need to react
/// to a code (retry on `NOT_LEADER_OR_FOLLOWER`) can `downcast_ref` it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaError {
    pub code: i16,
    pub message: Option<String>,
}

impl KafkaError {
    pub const NONE: i16 = 0;
    pub const OFFSET_OUT_OF_RANGE: i16 = 1;
    pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
    pub const LEADER_NOT_AVAILABLE: i16 = 5;
    pub const NOT_LEADER_OR_FOLLOWER: i16 = 6;
    pub const NOT_CONTROLLER: i16 = 41;
    pub const UNSUPPORTED_VERSION: i16 = 35;
    pub const NOT_ENOUGH_REPLICAS: i16 = 19;
    pub const FENCED_LEADER_EPOCH: i16 = 74;
    pub const UNKNOWN_LEADER_EPOCH: i16 = 75;
    pub const UNKNOWN_TOPIC_ID: i16 = 100;
    pub const INCONSISTENT_TOPIC_ID: i16 = 103;
    pub const OFFSET_NOT_AVAILABLE: i16 = 78;
    pub const COORDINATOR_LOAD_IN_PROGRESS: i16 = 14;
    pub const COORDINATOR_NOT_AVAILABLE: i16 = 15;
    pub const NOT_COORDINATOR: i16 = 16;
    pub const GROUP_ID_NOT_FOUND: i16 = 69;

    /// `Some` for a non-zero code, `None` for `NONE` (0).
    pub fn from_code(code: i16, message: Option<&str>) -> Option<Self> {
        (code != Self::NONE).then(|| KafkaError {
            code,
            message: message.filter(|m| !m.is_empty()).map(str::to_owned),
        })
    }

    /// `Ok(())` for `NONE`, else the error, for `?` at call sites.
    pub fn check(code: i16, message: Option<&str>) -> Result<(), KafkaError> {
        match Self::from_code(code, message) {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }

    /// The Java name, e.g. `TOPIC_ALREADY_EXISTS`.
    pub fn name(&self) -> String {
        error_name(self.code)
    }

    /// Errors after which the same request may succeed once metadata is
    /// refreshed: leadership moved, or a new topic has not reached every broker
    /// (or, OFFSET_NOT_AVAILABLE, a leader elected a moment ago has not settled
    /// yet: asked again, it answers).
    /// Each of them means the request was *not* applied, so a produce retry
    /// cannot duplicate records.
    pub fn is_stale_metadata(&self) -> bool {
        matches!(
            self.code,
            Self::UNKNOWN_TOPIC_OR_PARTITION
                | Self::LEADER_NOT_AVAILABLE
                | Self::NOT_LEADER_OR_FOLLOWER
                | Self::NOT_CONTROLLER
                | Self::FENCED_LEADER_EPOCH
                | Self::UNKNOWN_LEADER_EPOCH
                | Self::UNKNOWN_TOPIC_ID
                | Self::INCONSISTENT_TOPIC_ID
                | Self::OFFSET_NOT_AVAILABLE
        )
    }

    /// Errors after which a group request may succeed at the (possibly new)
    /// coordinator: it moved, is still loading its offsets partition, or
    /// `__consumer_offsets` is still being created. None of them applied the
    /// request, so a retry cannot commit twice.
    pub fn is_coordinator_moving(&self) -> bool {
        matches!(
            self.code,
            Self::COORDINATOR_LOAD_IN_PROGRESS
                | Self::COORDINATOR_NOT_AVAILABLE
                | Self::NOT_COORDINATOR
        )
    }
}

impl fmt::Display for KafkaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.name())?;
        if let Some(m) = &self.message {
            write!(f, ": {m}")?;
        }
        Ok(())
    }
}

impl std::error::Error for KafkaError {}

/// Kafka's name for an error code: `3` → `UNKNOWN_TOPIC_OR_PARTITION`.
pub fn error_name(code: i16) -> String {
    match code {
        0 => "NONE".to_owned(),
        _ => match ResponseError::try_from_code(code) {
            Some(ResponseError::Unknown(_)) | None => format!("UNKNOWN_ERROR_CODE_{code}"),
            Some(e) => camel_to_upper_snake(&e.to_string()),
        },
    }
}

fn camel_to_upper_snake(camel: &str) -> String {
    let mut out = String::with_capacity(camel.len() + 8);
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_names_match_java_names() {
        assert_eq!(error_name(3), "UNKNOWN_TOPIC_OR_PARTITION");
        assert_eq!(error_name(36), "TOPIC_ALREADY_EXISTS");
        assert_eq!(error_name(6), "NOT_LEADER_OR_FOLLOWER");
        assert_eq!(error_name(-1), "UNKNOWN_SERVER_ERROR");
        assert_eq!(error_name(0), "NONE");
        assert_eq!(error_name(9999), "UNKNOWN_ERROR_CODE_9999");
    }

    #[test]
    fn errors_of_a_moving_or_unsettled_leader_are_retried() {
        let retried =
            |code| KafkaError::from_code(code, None).is_some_and(|e| e.is_stale_metadata());
        // NOT_LEADER_OR_FOLLOWER, LEADER_NOT_AVAILABLE, and
        // OFFSET_NOT_AVAILABLE from a leader that has not settled yet.
        assert!(retried(6));
        assert!(retried(5));
        assert!(retried(78));
        // OFFSET_OUT_OF_RANGE and TOPIC_AUTHORIZATION_FAILED are answers.
        assert!(!retried(1));
        assert!(!retried(29));
    }

    #[test]
    fn display_includes_broker_message() {
        let e = KafkaError::from_code(36, Some("Topic 't' already exists.")).unwrap();
        assert_eq!(
            e.to_string(),
            "TOPIC_ALREADY_EXISTS: Topic 't' already exists."
        );
        assert!(KafkaError::from_code(0, Some("x")).is_none());
        assert_eq!(
            KafkaError::from_code(3, Some("")).unwrap().to_string(),
            "UNKNOWN_TOPIC_OR_PARTITION"
        );
    }
}
