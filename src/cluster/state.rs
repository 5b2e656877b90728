//! The metadata group's state machine: what every node applies, in the same
//! order, from the metadata Raft log (Kafka's `__cluster_metadata` records).
//!
//! Every check that decides whether a command takes effect is made here, on
//! the applied state, so that two admin requests racing on two nodes cannot
//! both win: the proposer's own checks only give early, friendly errors.

use std::collections::BTreeMap;

use kafka_protocol::error::ResponseError;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::TopicMeta;
use crate::raft::entry_log::Applier;

/// A broker as it registered itself with the metadata group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerRegistration {
    pub id: i32,
    /// The advertised Kafka listener.
    pub host: String,
    pub port: i32,
    pub rack: Option<String>,
    /// Its CONTROLLER listener (`host:port`), where peers reach it.
    pub controller: Option<String>,
}

/// The cluster's metadata, as applied on this node.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct MetadataState {
    /// Set by the first command of a new cluster ([`MetadataCommand::Bootstrap`]).
    pub cluster_id: Option<String>,
    pub topics: BTreeMap<String, TopicMeta>,
    /// Dynamic broker configs by AlterConfigs resource name: `""` is the
    /// cluster-wide default, `"<node.id>"` one broker's own.
    pub broker_configs: BTreeMap<String, BTreeMap<String, String>>,
    pub brokers: BTreeMap<i32, BrokerRegistration>,
    /// The first producer id of the next block handed out.
    pub next_producer_id: i64,
}

/// A change to the metadata. Commands are applied in log order on every node.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum MetadataCommand {
    /// Names the cluster. The first one applied wins; later ones (every node
    /// proposes one when it starts) change nothing and answer the id in use.
    /// A node upgraded from a single-node data directory carries what that
    /// directory held, which the first one also installs.
    Bootstrap {
        cluster_id: String,
        topics: BTreeMap<String, TopicMeta>,
        broker_configs: BTreeMap<String, BTreeMap<String, String>>,
        next_producer_id: i64,
    },
    RegisterBroker(BrokerRegistration),
    CreateTopic(TopicMeta),
    /// Deletes the topic with this name and id (a topic created again under
    /// the same name in between is not touched).
    DeleteTopic {
        name: String,
        id: Uuid,
    },
    /// Grows a topic from `from` partitions to `from + replicas.len()`.
    AddPartitions {
        name: String,
        from: i32,
        replicas: Vec<Vec<i32>>,
    },
    SetTopicConfigs {
        name: String,
        configs: BTreeMap<String, String>,
    },
    SetBrokerConfigs {
        resource: String,
        configs: BTreeMap<String, String>,
    },
    /// Hands out `count` producer ids to one broker.
    AllocateProducerIds {
        broker: i32,
        count: i64,
    },
}

/// What applying a command answers.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub enum MetadataResponse {
    #[default]
    Done,
    ClusterId(String),
    Topic(TopicMeta),
    /// The first id of an allocated block.
    ProducerIds(i64),
    /// A Kafka error code and message.
    Refused(i16, String),
}

impl MetadataResponse {
    fn refused((code, message): (ResponseError, String)) -> Self {
        MetadataResponse::Refused(code.code(), message)
    }
}

/// Kafka's collision rule: `.` and `_` are the same in metric names, so
/// `a.b` and `a_b` cannot both exist.
pub fn colliding_topic<'a>(topics: &'a BTreeMap<String, TopicMeta>, name: &str) -> Option<&'a str> {
    let unified = |n: &str| n.replace('.', "_");
    let wanted = unified(name);
    topics
        .keys()
        .find(|existing| existing.as_str() != name && unified(existing) == wanted)
        .map(String::as_str)
}

fn unknown_topic(name: &str) -> (ResponseError, String) {
    (
        ResponseError::UnknownTopicOrPartition,
        format!("The topic '{name}' does not exist."),
    )
}

impl MetadataState {
    fn create_topic(&mut self, meta: &TopicMeta) -> Result<TopicMeta, (ResponseError, String)> {
        if self.topics.contains_key(&meta.name) {
            return Err((
                ResponseError::TopicAlreadyExists,
                format!("Topic '{}' already exists.", meta.name),
            ));
        }
        if let Some(existing) = colliding_topic(&self.topics, &meta.name) {
            return Err((
                ResponseError::InvalidTopicException,
                format!(
                    "Topic '{}' collides with existing topic: {existing}",
                    meta.name
                ),
            ));
        }
        if meta.replicas.len() != meta.partitions as usize {
            return Err((
                ResponseError::InvalidReplicaAssignment,
                format!(
                    "Topic '{}' has {} partitions but {} replica lists.",
                    meta.name,
                    meta.partitions,
                    meta.replicas.len()
                ),
            ));
        }
        self.topics.insert(meta.name.clone(), meta.clone());
        Ok(meta.clone())
    }

    fn add_partitions(
        &mut self,
        name: &str,
        from: i32,
        replicas: &[Vec<i32>],
    ) -> Result<TopicMeta, (ResponseError, String)> {
        let meta = self
            .topics
            .get_mut(name)
            .ok_or_else(|| unknown_topic(name))?;
        if meta.partitions != from || replicas.is_empty() {
            return Err((
                ResponseError::InvalidPartitions,
                format!(
                    "Topic '{name}' has {} partitions now, not {from}.",
                    meta.partitions
                ),
            ));
        }
        meta.partitions = from + replicas.len() as i32;
        meta.replicas.extend(replicas.iter().cloned());
        Ok(meta.clone())
    }
}

impl Applier for MetadataState {
    type Command = MetadataCommand;
    type Response = MetadataResponse;

    fn apply(&mut self, command: &MetadataCommand) -> MetadataResponse {
        match command {
            MetadataCommand::Bootstrap {
                cluster_id,
                topics,
                broker_configs,
                next_producer_id,
            } => {
                if let Some(existing) = &self.cluster_id {
                    return MetadataResponse::ClusterId(existing.clone());
                }
                self.cluster_id = Some(cluster_id.clone());
                self.topics = topics.clone();
                self.broker_configs = broker_configs.clone();
                self.next_producer_id = self.next_producer_id.max(*next_producer_id);
                MetadataResponse::ClusterId(cluster_id.clone())
            }
            MetadataCommand::RegisterBroker(registration) => {
                self.brokers.insert(registration.id, registration.clone());
                MetadataResponse::Done
            }
            MetadataCommand::CreateTopic(meta) => match self.create_topic(meta) {
                Ok(meta) => MetadataResponse::Topic(meta),
                Err(e) => MetadataResponse::refused(e),
            },
            MetadataCommand::DeleteTopic { name, id } => match self.topics.get(name) {
                Some(meta) if meta.id == *id => {
                    let meta = meta.clone();
                    self.topics.remove(name);
                    MetadataResponse::Topic(meta)
                }
                _ => MetadataResponse::refused(unknown_topic(name)),
            },
            MetadataCommand::AddPartitions {
                name,
                from,
                replicas,
            } => match self.add_partitions(name, *from, replicas) {
                Ok(meta) => MetadataResponse::Topic(meta),
                Err(e) => MetadataResponse::refused(e),
            },
            MetadataCommand::SetTopicConfigs { name, configs } => match self.topics.get_mut(name) {
                Some(meta) => {
                    meta.configs = configs.clone();
                    MetadataResponse::Topic(meta.clone())
                }
                None => MetadataResponse::refused(unknown_topic(name)),
            },
            MetadataCommand::SetBrokerConfigs { resource, configs } => {
                if configs.is_empty() {
                    self.broker_configs.remove(resource);
                } else {
                    self.broker_configs
                        .insert(resource.clone(), configs.clone());
                }
                MetadataResponse::Done
            }
            MetadataCommand::AllocateProducerIds { broker, count } => {
                let start = self.next_producer_id;
                match start.checked_add((*count).max(1)) {
                    Some(next) => {
                        self.next_producer_id = next;
                        tracing::debug!(broker, start, count, "allocated producer ids");
                        MetadataResponse::ProducerIds(start)
                    }
                    None => MetadataResponse::refused((
                        ResponseError::UnknownServerError,
                        "producer ids are exhausted".into(),
                    )),
                }
            }
        }
    }

    fn save(&self) -> Result<Vec<u8>, String> {
        serde_json::to_vec(self).map_err(|e| e.to_string())
    }

    fn load(bytes: &[u8]) -> Result<Self, String> {
        serde_json::from_slice(bytes).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(name: &str, partitions: i32) -> TopicMeta {
        TopicMeta {
            name: name.into(),
            id: Uuid::new_v4(),
            partitions,
            configs: BTreeMap::new(),
            internal: false,
            replicas: (0..partitions).map(|_| vec![1]).collect(),
        }
    }

    fn bootstrap(id: &str) -> MetadataCommand {
        MetadataCommand::Bootstrap {
            cluster_id: id.into(),
            topics: BTreeMap::new(),
            broker_configs: BTreeMap::new(),
            next_producer_id: 0,
        }
    }

    #[test]
    fn the_first_bootstrap_names_the_cluster() {
        let mut state = MetadataState::default();
        assert_eq!(
            state.apply(&bootstrap("first")),
            MetadataResponse::ClusterId("first".into())
        );
        assert_eq!(
            state.apply(&bootstrap("second")),
            MetadataResponse::ClusterId("first".into())
        );
        assert_eq!(state.cluster_id.as_deref(), Some("first"));
    }

    #[test]
    fn racing_creates_and_deletes_are_decided_by_log_order() {
        let mut state = MetadataState::default();
        let a = topic("orders", 2);
        let b = topic("orders", 3);
        assert_eq!(
            state.apply(&MetadataCommand::CreateTopic(a.clone())),
            MetadataResponse::Topic(a.clone())
        );
        assert!(matches!(
            state.apply(&MetadataCommand::CreateTopic(b.clone())),
            MetadataResponse::Refused(code, _) if code == ResponseError::TopicAlreadyExists.code()
        ));
        assert!(matches!(
            state.apply(&MetadataCommand::CreateTopic(topic("orders.x", 1))),
            MetadataResponse::Topic(_)
        ));
        assert!(matches!(
            state.apply(&MetadataCommand::CreateTopic(topic("orders_x", 1))),
            MetadataResponse::Refused(code, _) if code == ResponseError::InvalidTopicException.code()
        ));
        // A delete naming another incarnation's id leaves this one alone.
        assert!(matches!(
            state.apply(&MetadataCommand::DeleteTopic {
                name: "orders".into(),
                id: b.id
            }),
            MetadataResponse::Refused(..)
        ));
        assert_eq!(
            state.apply(&MetadataCommand::DeleteTopic {
                name: "orders".into(),
                id: a.id
            }),
            MetadataResponse::Topic(a)
        );
        assert!(!state.topics.contains_key("orders"));
    }

    #[test]
    fn partitions_grow_from_the_count_the_proposer_saw() {
        let mut state = MetadataState::default();
        state.apply(&MetadataCommand::CreateTopic(topic("t", 2)));
        let grow = |from| MetadataCommand::AddPartitions {
            name: "t".into(),
            from,
            replicas: vec![vec![1], vec![1]],
        };
        assert!(
            matches!(state.apply(&grow(2)), MetadataResponse::Topic(t) if t.partitions == 4 && t.replicas.len() == 4)
        );
        // The same request applied twice (two proposers saw 2) grows once.
        assert!(matches!(
            state.apply(&grow(2)),
            MetadataResponse::Refused(..)
        ));
    }

    #[test]
    fn producer_id_blocks_never_overlap_and_survive_a_snapshot() {
        let mut state = MetadataState::default();
        let take = |s: &mut MetadataState| match s.apply(&MetadataCommand::AllocateProducerIds {
            broker: 1,
            count: 1000,
        }) {
            MetadataResponse::ProducerIds(start) => start,
            other => panic!("{other:?}"),
        };
        assert_eq!(take(&mut state), 0);
        assert_eq!(take(&mut state), 1000);
        let mut restored = MetadataState::load(&state.save().expect("save")).expect("load");
        assert_eq!(take(&mut restored), 2000);
    }
}
