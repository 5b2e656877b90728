//! FindCoordinator: which broker owns a consumer group (or a transactional
//! id). Group requests (DescribeGroups, OffsetFetch, OffsetCommit,
//! DeleteGroups) are only answered by the group's coordinator, so every one
//! of them starts here.
//!
//! From v4 one request looks up many keys (KIP-699); older brokers get one
//! request per key. Errors stay per key: one group whose coordinator is still
//! loading must not hide the answer for the others.

use std::collections::BTreeMap;

use anyhow::{anyhow, bail, Result};
use kafka_protocol::messages::FindCoordinatorRequest;
use kafka_protocol::protocol::StrBytes;

use crate::client::cluster::Client;
use crate::client::error::KafkaError;

/// First FindCoordinator version that batches keys.
const BATCHED_VERSION_MIN: i16 = 4;
/// Most keys we put in one batched FindCoordinator request, so that one
/// command over many groups still sends requests of a bounded size.
pub const FIND_COORDINATOR_KEYS_MAX: usize = 100;

/// FindCoordinator's `key_type`: what the key names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CoordinatorType {
    /// A consumer group id (key type 0).
    Group,
    /// A transactional id (key type 1).
    Transaction,
}

impl CoordinatorType {
    fn key_type(self) -> i8 {
        match self {
            CoordinatorType::Group => 0,
            CoordinatorType::Transaction => 1,
        }
    }
}

/// The broker that coordinates a key, as FindCoordinator named it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Coordinator {
    pub node_id: i32,
    pub host: String,
    pub port: i32,
}

/// Per key: its coordinator, or the Kafka error FindCoordinator gave for it.
pub type CoordinatorLookup = BTreeMap<String, Result<Coordinator, KafkaError>>;

impl Client {
    /// Looks up the coordinator of each of `keys` (duplicates collapse), in
    /// one request per [`FIND_COORDINATOR_KEYS_MAX`] keys on brokers that
    /// batch, one per key on older ones. Kafka errors come back per key
    /// (`COORDINATOR_NOT_AVAILABLE` while `__consumer_offsets` is being
    /// created is common; callers retry those); transport errors fail the
    /// whole call.
    pub async fn find_coordinators(
        &mut self,
        key_type: CoordinatorType,
        keys: &[String],
    ) -> Result<CoordinatorLookup> {
        let mut keys: Vec<&String> = keys.iter().collect();
        keys.sort_unstable();
        keys.dedup();
        let conn = self.any_broker().await?;
        let version = conn.version::<FindCoordinatorRequest>()?;
        let mut found = CoordinatorLookup::new();
        if version >= BATCHED_VERSION_MIN {
            for chunk in keys.chunks(FIND_COORDINATOR_KEYS_MAX) {
                let request = FindCoordinatorRequest::default()
                    .with_key_type(key_type.key_type())
                    .with_coordinator_keys(
                        chunk
                            .iter()
                            .map(|k| StrBytes::from_string((*k).clone()))
                            .collect(),
                    );
                let response = conn.send(&request, version).await?;
                for c in &response.coordinators {
                    let message = c.error_message.as_ref().map(StrBytes::as_str);
                    let answer = KafkaError::check(c.error_code, message).map(|()| Coordinator {
                        node_id: c.node_id.0,
                        host: c.host.as_str().to_owned(),
                        port: c.port,
                    });
                    found.insert(c.key.as_str().to_owned(), answer);
                }
            }
        } else {
            for key in &keys {
                let mut request = FindCoordinatorRequest::default()
                    .with_key(StrBytes::from_string((*key).clone()));
                if version >= 1 {
                    request.key_type = key_type.key_type();
                } else if key_type != CoordinatorType::Group {
                    bail!(
                        "broker {} only speaks FindCoordinator v0, which cannot look up {key_type:?} coordinators",
                        conn.addr()
                    );
                }
                let response = conn.send(&request, version).await?;
                let message = response.error_message.as_ref().map(StrBytes::as_str);
                let answer =
                    KafkaError::check(response.error_code, message).map(|()| Coordinator {
                        node_id: response.node_id.0,
                        host: response.host.as_str().to_owned(),
                        port: response.port,
                    });
                found.insert((*key).clone(), answer);
            }
        }
        if let Some(missing) = keys.iter().find(|k| !found.contains_key(k.as_str())) {
            return Err(anyhow!(
                "FindCoordinator response has no answer for '{missing}'"
            ));
        }
        Ok(found)
    }
}
