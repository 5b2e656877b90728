//! Topic administration: CreateTopics, DeleteTopics, CreatePartitions,
//! DeleteRecords, DescribeCluster.
//!
//! Until replication exists a partition has exactly one replica, this node:
//! a replication factor above one, or an assignment naming another broker, is
//! refused with Kafka's error rather than accepted and silently ignored.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::{
    BrokerId, CreatePartitionsRequest, CreatePartitionsResponse, CreateTopicsRequest,
    CreateTopicsResponse, DeleteRecordsRequest, DeleteRecordsResponse, DeleteTopicsRequest,
    DeleteTopicsResponse, DescribeClusterRequest, DescribeClusterResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use uuid::Uuid;

use crate::broker::{Broker, KafkaError};
use crate::cluster::TopicConfigs;
use crate::raft::partition_group::ProduceError;

/// Bounds on how long DeleteRecords waits for the new log start to be
/// committed (the request's `timeout_ms`, within these).
const DELETE_RECORDS_WAIT_MIN: Duration = Duration::from_secs(1);
const DELETE_RECORDS_WAIT_MAX: Duration = Duration::from_secs(60);

/// Kafka's AclOperation codes, as bits of an authorized-operations field.
pub mod acl {
    pub const READ: i32 = 3;
    pub const WRITE: i32 = 4;
    pub const CREATE: i32 = 5;
    pub const DELETE: i32 = 6;
    pub const ALTER: i32 = 7;
    pub const DESCRIBE: i32 = 8;
    pub const CLUSTER_ACTION: i32 = 9;
    pub const DESCRIBE_CONFIGS: i32 = 10;
    pub const ALTER_CONFIGS: i32 = 11;
    pub const IDEMPOTENT_WRITE: i32 = 12;

    const fn bits(ops: &[i32]) -> i32 {
        let mut out = 0;
        let mut i = 0;
        while i < ops.len() {
            out |= 1 << ops[i];
            i += 1;
        }
        out
    }

    /// Kafka's "not requested" marker for an authorized-operations field.
    pub const NOT_REQUESTED: i32 = i32::MIN;
    /// Every operation Kafka supports on a topic (`AclEntry.supportedOperations`):
    /// without an authorizer, a client may do all of them.
    pub const TOPIC_ALL: i32 = bits(&[
        READ,
        WRITE,
        CREATE,
        DELETE,
        ALTER,
        DESCRIBE,
        DESCRIBE_CONFIGS,
        ALTER_CONFIGS,
    ]);
    /// Every operation Kafka supports on the cluster.
    pub const CLUSTER_ALL: i32 = bits(&[
        CREATE,
        ALTER,
        DESCRIBE,
        CLUSTER_ACTION,
        DESCRIBE_CONFIGS,
        ALTER_CONFIGS,
        IDEMPOTENT_WRITE,
    ]);
    /// Every operation Kafka 4.4 supports on a group (KIP-848 added the config ones).
    pub const GROUP_ALL: i32 = bits(&[READ, DESCRIBE, DELETE, DESCRIBE_CONFIGS, ALTER_CONFIGS]);

    /// The field's value: all operations when asked, else Kafka's marker.
    pub fn when(asked: bool, all: i32) -> i32 {
        if asked {
            all
        } else {
            NOT_REQUESTED
        }
    }
}

fn message(text: String) -> Option<StrBytes> {
    Some(StrBytes::from_string(text))
}

/// One topic to create, after defaults are applied.
struct NewTopic {
    name: String,
    partitions: i32,
    replication_factor: i16,
    configs: BTreeMap<String, String>,
}

fn check_new_topic(
    broker: &Broker,
    topic: &kafka_protocol::messages::create_topics_request::CreatableTopic,
) -> Result<NewTopic, KafkaError> {
    let name = topic.name.to_string();
    let replication_factor = match topic.replication_factor {
        -1 => broker.config.default_replication_factor,
        rf => rf,
    };
    let mut partitions = match topic.num_partitions {
        -1 => broker.config.num_partitions,
        n => n,
    };
    if !topic.assignments.is_empty() {
        if topic.num_partitions != -1 || topic.replication_factor != -1 {
            return Err((
                ResponseError::InvalidRequest,
                "Both numPartitions or replicationFactor and replicasAssignments were set.".into(),
            ));
        }
        let node = broker.config.node_id;
        for a in &topic.assignments {
            if a.broker_ids.len() != 1 || a.broker_ids[0] != node {
                return Err((
                    ResponseError::InvalidReplicaAssignment,
                    format!("Partition {} may only be assigned to broker {node}: manual assignments of other brokers or of several replicas are not supported yet.", a.partition_index),
                ));
            }
        }
        let mut indexes: Vec<i32> = topic
            .assignments
            .iter()
            .map(|a| a.partition_index)
            .collect();
        indexes.sort_unstable();
        if indexes.iter().enumerate().any(|(i, p)| *p != i as i32) {
            return Err((
                ResponseError::InvalidReplicaAssignment,
                "Partitions must be numbered consecutively from 0.".into(),
            ));
        }
        partitions = indexes.len() as i32;
    } else if replication_factor < 1 {
        // More replicas than alive brokers is refused by placement.
        return Err((
            ResponseError::InvalidReplicationFactor,
            "Replication factor must be larger than 0, or -1 to use the default value.".into(),
        ));
    }
    let mut configs = BTreeMap::new();
    for c in &topic.configs {
        let Some(value) = &c.value else {
            return Err((
                ResponseError::InvalidConfig,
                format!(
                    "Null value not supported for topic config {}",
                    c.name.as_str()
                ),
            ));
        };
        configs.insert(c.name.to_string(), value.to_string());
    }
    broker.check_new_topic(&name, partitions, &configs)?;
    Ok(NewTopic {
        name,
        partitions,
        replication_factor: if replication_factor == -1 {
            1
        } else {
            replication_factor
        },
        configs,
    })
}

pub async fn create_topics(
    broker: &Arc<Broker>,
    version: i16,
    request: CreateTopicsRequest,
) -> CreateTopicsResponse {
    let b = broker.clone();
    let results = super::blocking(move || {
        let mut seen = HashSet::new();
        let duplicates: HashSet<String> = request
            .topics
            .iter()
            .filter(|t| !seen.insert(t.name.to_string()))
            .map(|t| t.name.to_string())
            .collect();
        request
            .topics
            .iter()
            .map(|topic| {
                let mut r = CreatableTopicResult::default();
                r.name = topic.name.clone();
                // Kafka sends null on success; some clients read "" as an error.
                r.error_message = None;
                let outcome = if duplicates.contains(topic.name.as_str()) {
                    Err((
                        ResponseError::InvalidRequest,
                        "Duplicate topic name in request.".to_string(),
                    ))
                } else {
                    check_new_topic(&b, topic).and_then(|new| {
                        if request.validate_only {
                            Ok((new, Uuid::nil()))
                        } else {
                            b.create_topic(
                                &new.name,
                                new.partitions,
                                new.replication_factor,
                                new.configs.clone(),
                            )
                            .map(|meta| (new, meta.id))
                        }
                    })
                };
                match outcome {
                    Ok((new, id)) => {
                        if version >= 5 {
                            r.num_partitions = new.partitions;
                            r.replication_factor = new.replication_factor;
                            r.configs = Some(
                                TopicConfigs::describe(&b.layers(), &new.configs)
                                    .into_iter()
                                    .map(|e| {
                                        let mut c = CreatableTopicConfigs::default();
                                        c.name = StrBytes::from_string(e.name);
                                        c.value = e.value.map(StrBytes::from_string);
                                        c.read_only = e.read_only;
                                        c.is_sensitive = false;
                                        c.config_source = e.source.id();
                                        c
                                    })
                                    .collect(),
                            );
                        }
                        if version >= 7 {
                            r.topic_id = id;
                        }
                    }
                    Err((code, text)) => {
                        r.error_code = code.code();
                        if version >= 1 {
                            r.error_message = message(text);
                        }
                    }
                }
                r
            })
            .collect::<Vec<_>>()
    })
    .await;
    let mut response = CreateTopicsResponse::default();
    match results {
        Ok(topics) => response.topics = topics,
        Err((_, text)) => tracing::error!(%text, "create topics failed"),
    }
    response
}

pub async fn delete_topics(
    broker: &Arc<Broker>,
    version: i16,
    request: DeleteTopicsRequest,
) -> DeleteTopicsResponse {
    // v6+ names topics by name or id; older versions by name only.
    let wanted: Vec<(Option<String>, Uuid)> = if version >= 6 {
        request
            .topics
            .into_iter()
            .map(|t| (t.name.map(|n| n.to_string()), t.topic_id))
            .collect()
    } else {
        request
            .topic_names
            .into_iter()
            .map(|n| (Some(n.to_string()), Uuid::nil()))
            .collect()
    };
    let b = broker.clone();
    let results = super::blocking(move || {
        wanted
            .into_iter()
            .map(|(name, id)| {
                let mut r = DeletableTopicResult::default();
                let resolved = match &name {
                    Some(n) => Some(n.clone()),
                    None => b.metadata.topic_by_id(id).map(|t| t.name),
                };
                let outcome = match &resolved {
                    _ if !b.config.delete_topic_enable => Err((
                        ResponseError::TopicDeletionDisabled,
                        "Topic deletion is disabled.".to_string(),
                    )),
                    None => Err((
                        ResponseError::UnknownTopicId,
                        format!("Topic id {id} does not exist."),
                    )),
                    Some(n) => match b.metadata.topic(n) {
                        Some(meta) if meta.internal => Err((
                            ResponseError::InvalidTopicException,
                            "Internal topics cannot be deleted.".into(),
                        )),
                        _ => b.delete_topic(n),
                    },
                };
                r.name = resolved.map(|n| TopicName(StrBytes::from_string(n)));
                match outcome {
                    Ok(meta) => {
                        if version >= 6 {
                            r.topic_id = meta.id;
                        }
                    }
                    Err((code, text)) => {
                        if version >= 6 {
                            r.topic_id = id;
                        }
                        r.error_code = code.code();
                        if version >= 5 {
                            r.error_message = message(text);
                        }
                    }
                }
                r
            })
            .collect::<Vec<_>>()
    })
    .await;
    let mut response = DeleteTopicsResponse::default();
    match results {
        Ok(r) => response.responses = r,
        Err((_, text)) => tracing::error!(%text, "delete topics failed"),
    }
    response
}

pub async fn create_partitions(
    broker: &Arc<Broker>,
    _version: i16,
    request: CreatePartitionsRequest,
) -> CreatePartitionsResponse {
    let b = broker.clone();
    let results = super::blocking(move || {
        request
            .topics
            .into_iter()
            .map(|topic| {
                let mut r = CreatePartitionsTopicResult::default();
                let node = b.config.node_id;
                let outcome = if topic.assignments.as_ref().is_some_and(|a| {
                    a.iter()
                        .any(|x| x.broker_ids.len() != 1 || x.broker_ids[0] != BrokerId(node))
                }) {
                    Err((
                        ResponseError::InvalidReplicaAssignment,
                        format!("New partitions may only be assigned to broker {node}."),
                    ))
                } else {
                    match b.check_add_partitions(&topic.name, topic.count) {
                        Err(e) => Err(e),
                        Ok(_) if request.validate_only => Ok(()),
                        Ok(_) => b.add_partitions(&topic.name, topic.count).map(|_| ()),
                    }
                };
                if let Err((code, text)) = outcome {
                    r.error_code = code.code();
                    r.error_message = message(text);
                }
                r.name = topic.name;
                r
            })
            .collect::<Vec<_>>()
    })
    .await;
    let mut response = CreatePartitionsResponse::default();
    match results {
        Ok(r) => response.results = r,
        Err((_, text)) => tracing::error!(%text, "create partitions failed"),
    }
    response
}

pub async fn delete_records(
    broker: &Arc<Broker>,
    _version: i16,
    request: DeleteRecordsRequest,
) -> DeleteRecordsResponse {
    let wait = Duration::from_millis(u64::try_from(request.timeout_ms).unwrap_or(0))
        .clamp(DELETE_RECORDS_WAIT_MIN, DELETE_RECORDS_WAIT_MAX);
    let mut topics = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let mut t = DeleteRecordsTopicResult::default();
        // Kafka refuses to delete records of an internal topic: for
        // __consumer_offsets it would drop every group's offsets.
        let internal = broker
            .metadata
            .topic(&topic.name)
            .is_some_and(|m| m.internal);
        for p in &topic.partitions {
            let mut r = DeleteRecordsPartitionResult::default();
            r.partition_index = p.partition_index;
            r.low_watermark = -1;
            let partition = broker.replicas.get(&topic.name, p.partition_index);
            match partition {
                _ if internal => r.error_code = ResponseError::InvalidTopicException.code(),
                None => {
                    r.error_code = broker
                        .missing_partition_error(&topic.name, p.partition_index)
                        .code()
                }
                Some(partition) => {
                    let hw = partition.high_watermark();
                    // -1 means "up to the high watermark".
                    let target = if p.offset == -1 { hw } else { p.offset };
                    if partition.led_epoch().is_err() {
                        r.error_code = ResponseError::NotLeaderOrFollower.code();
                    } else if target < 0 || target > hw {
                        r.error_code = ResponseError::OffsetOutOfRange.code();
                    } else if target <= partition.log_start_offset() {
                        r.low_watermark = partition.log_start_offset();
                    } else {
                        // Every replica moves its log start (the leader
                        // proposes it through the partition's group).
                        match partition.advance_log_start(target, wait).await {
                            Ok(low) => r.low_watermark = low,
                            Err(ProduceError::NotLeader(_)) => {
                                r.error_code = ResponseError::NotLeaderOrFollower.code()
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "delete records failed");
                                r.error_code = ResponseError::RequestTimedOut.code();
                            }
                        }
                    }
                }
            }
            t.partitions.push(r);
        }
        t.name = topic.name;
        topics.push(t);
    }
    let mut response = DeleteRecordsResponse::default();
    response.topics = topics;
    response
}

/// AddRaftVoter (KIP-853): makes a broker that joined as a learner a voter
/// of the metadata group. The request's listeners are not needed: the
/// broker registered its CONTROLLER address when it joined.
pub async fn add_raft_voter(
    broker: &Arc<Broker>,
    request: kafka_protocol::messages::AddRaftVoterRequest,
) -> kafka_protocol::messages::AddRaftVoterResponse {
    let mut response = kafka_protocol::messages::AddRaftVoterResponse::default();
    if let Some(id) = &request.cluster_id {
        if id.as_str() != broker.metadata.cluster_id() {
            response.error_code = ResponseError::InconsistentClusterId.code();
            response.error_message = Some(StrBytes::from_string(format!(
                "This is cluster {}, not {}.",
                broker.metadata.cluster_id(),
                id.as_str()
            )));
            return response;
        }
    }
    if let Err((code, message)) = broker.metadata.add_voter(request.voter_id).await {
        response.error_code = code.code();
        response.error_message = Some(StrBytes::from_string(message));
    }
    response
}

pub fn describe_cluster(
    broker: &Broker,
    version: i16,
    request: DescribeClusterRequest,
) -> DescribeClusterResponse {
    let mut response = DescribeClusterResponse::default();
    if version >= 1 && request.endpoint_type != 1 && request.endpoint_type != 2 {
        response.error_code = ResponseError::UnsupportedEndpointType.code();
        return response;
    }
    if version >= 1 {
        response.endpoint_type = request.endpoint_type;
    }
    // Endpoint type 2 asks for the controllers: the metadata group's voters
    // at their CONTROLLER addresses.
    let controllers = version >= 1 && request.endpoint_type == 2;
    let voters = broker.metadata.voters();
    response.brokers = broker
        .metadata
        .alive_brokers()
        .into_iter()
        .filter_map(|b| {
            let (host, port) = if controllers {
                if !voters.contains(&b.id) {
                    return None;
                }
                let (host, port) = b.controller.as_deref()?.rsplit_once(':')?;
                (host.to_string(), port.parse().ok()?)
            } else {
                (b.host, b.port)
            };
            let mut node = DescribeClusterBroker::default();
            node.broker_id = BrokerId(b.id);
            node.host = StrBytes::from_string(host);
            node.port = port;
            node.rack = b.rack.map(StrBytes::from_string);
            Some(node)
        })
        .collect();
    response.cluster_id = StrBytes::from_string(broker.metadata.cluster_id().to_string());
    response.controller_id = BrokerId(broker.metadata.controller_id());
    response.cluster_authorized_operations = acl::when(
        request.include_cluster_authorized_operations,
        acl::CLUSTER_ALL,
    );
    response
}
