//! Metadata: brokers, controller, cluster id, and each topic's partitions with
//! their leader and leader epoch. Auto-creates requested topics when
//! `auto.create.topics.enable` is on and the client allows it.

use std::collections::BTreeMap;
use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, MetadataRequest, MetadataResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use uuid::Uuid;

use crate::api::admin::acl;
use crate::broker::Broker;
use crate::cluster::{validate_topic_name, TopicMeta};

/// Most topics one Metadata request may name (bounds the work per request).
const METADATA_TOPICS_MAX: usize = 10_000;

pub async fn handle(
    broker: &Arc<Broker>,
    version: i16,
    request: MetadataRequest,
) -> MetadataResponse {
    let mut response = MetadataResponse::default();
    response.brokers = broker
        .metadata
        .listed_brokers()
        .into_iter()
        .map(|b| {
            let mut node = MetadataResponseBroker::default();
            node.node_id = BrokerId(b.id);
            node.host = StrBytes::from_string(b.host);
            node.port = b.port;
            if version >= 1 {
                node.rack = b.rack.map(StrBytes::from_string);
            }
            node
        })
        .collect();
    if version >= 1 {
        response.controller_id = BrokerId(broker.metadata.controller_id());
    }
    if version >= 2 {
        response.cluster_id = Some(StrBytes::from_string(
            broker.metadata.cluster_id().to_string(),
        ));
    }

    // v0: an empty list means every topic; v1+: null means every topic.
    let requested = match request.topics {
        None => None,
        Some(list) if list.is_empty() && version == 0 => None,
        Some(list) => Some(list),
    };
    let allow_auto_create = (version < 4 || request.allow_auto_topic_creation)
        && broker.config.auto_create_topics_enable;
    // v8-10 carry the cluster's operations; v11 dropped the field.
    if (8..=10).contains(&version) {
        response.cluster_authorized_operations = acl::when(
            request.include_cluster_authorized_operations,
            acl::CLUSTER_ALL,
        );
    }
    let topic_ops = if version >= 8 {
        acl::when(request.include_topic_authorized_operations, acl::TOPIC_ALL)
    } else {
        acl::NOT_REQUESTED
    };
    let mut auto_create_budget = broker.config.auto_create_topics_max_per_request;

    match requested {
        None => {
            for topic in broker.metadata.topics() {
                let mut entry = topic_response(broker, version, &topic);
                entry.topic_authorized_operations = topic_ops;
                response.topics.push(entry);
            }
        }
        Some(list) => {
            for wanted in list.into_iter().take(METADATA_TOPICS_MAX) {
                let mut entry = match wanted.name {
                    Some(name) => {
                        by_name(
                            broker,
                            version,
                            name,
                            allow_auto_create,
                            &mut auto_create_budget,
                        )
                        .await
                    }
                    None => match broker.metadata.topic_by_id(wanted.topic_id) {
                        Some(topic) => topic_response(broker, version, &topic),
                        None => error_topic(
                            version,
                            None,
                            wanted.topic_id,
                            ResponseError::UnknownTopicId,
                        ),
                    },
                };
                if entry.error_code == 0 {
                    entry.topic_authorized_operations = topic_ops;
                }
                response.topics.push(entry);
            }
        }
    }
    response
}

async fn by_name(
    broker: &Arc<Broker>,
    version: i16,
    name: TopicName,
    allow_auto_create: bool,
    auto_create_budget: &mut usize,
) -> MetadataResponseTopic {
    if let Some(topic) = broker.metadata.topic(&name) {
        return topic_response(broker, version, &topic);
    }
    if let Err((code, _)) = validate_topic_name(&name) {
        return error_topic(version, Some(name), Uuid::nil(), code);
    }
    if !allow_auto_create {
        return error_topic(
            version,
            Some(name),
            Uuid::nil(),
            ResponseError::UnknownTopicOrPartition,
        );
    }
    // Beyond either limit the client gets a retriable error and asks again.
    let limited = if *auto_create_budget == 0 {
        Some("auto.create.topics.max.per.request")
    } else if !broker.auto_create_rate.try_acquire() {
        Some("auto.create.topics.max.per.second")
    } else {
        None
    };
    if let Some(limit) = limited {
        broker.auto_create_rate.warn_limited(&name, limit);
        return error_topic(
            version,
            Some(name),
            Uuid::nil(),
            ResponseError::LeaderNotAvailable,
        );
    }
    *auto_create_budget -= 1;
    let b = broker.clone();
    let topic_name = name.to_string();
    let partitions = broker.config.num_partitions;
    let created = super::blocking(move || {
        let rf = b.config.default_replication_factor;
        b.create_topic(&topic_name, partitions, rf, BTreeMap::new())
    })
    .await;
    match created.and_then(|r| r) {
        Ok(topic) => topic_response(broker, version, &topic),
        // Another request created it between our check and our create.
        Err((ResponseError::TopicAlreadyExists, _)) => match broker.metadata.topic(&name) {
            Some(topic) => topic_response(broker, version, &topic),
            None => error_topic(
                version,
                Some(name),
                Uuid::nil(),
                ResponseError::LeaderNotAvailable,
            ),
        },
        Err((code, message)) => {
            tracing::warn!(topic = %name.as_str(), %message, "auto-create failed");
            error_topic(version, Some(name), Uuid::nil(), code)
        }
    }
}

fn topic_response(broker: &Broker, version: i16, topic: &TopicMeta) -> MetadataResponseTopic {
    let mut out = MetadataResponseTopic::default();
    out.name = Some(TopicName(StrBytes::from_string(topic.name.clone())));
    if version >= 10 {
        out.topic_id = topic.id;
    }
    if version >= 1 {
        out.is_internal = topic.internal;
    }
    out.partitions = (0..topic.partitions)
        .map(|index| {
            let mut p = MetadataResponsePartition::default();
            p.partition_index = index;
            let view = broker.partition_view(topic, index);
            p.replica_nodes = view.replicas.iter().copied().map(BrokerId).collect();
            // No leader is named before one is elected, as in Kafka: an
            // epoch names one leader. Fjord named the replica likely to win
            // (with the election's term) until librdkafka, told of the
            // winner by one node and of the guess by another, kept a
            // producer on the guessed broker for good, and sent batches to
            // a replica that was becoming leader: the first refused, the
            // next taken out of sequence, OUT_OF_ORDER_SEQUENCE_NUMBER made
            // it bump its epoch and resend batches the old leader had
            // already committed (duplicates).
            match view.leader {
                Some(leader) => {
                    p.leader_id = BrokerId(leader);
                    if version >= 7 {
                        p.leader_epoch = view.leader_epoch;
                    }
                    p.isr_nodes = view.isr.iter().copied().map(BrokerId).collect();
                }
                // An offline log (or one not opened yet) has no leader until
                // it is reopened, and its replica is listed offline (v5+),
                // as Kafka lists replicas on a failed log dir.
                None => {
                    p.error_code = ResponseError::LeaderNotAvailable.code();
                    p.leader_id = BrokerId(-1);
                    if version >= 5 {
                        p.offline_replicas = view.offline.iter().copied().map(BrokerId).collect();
                    }
                }
            }
            p
        })
        .collect();
    out
}

fn error_topic(
    version: i16,
    name: Option<TopicName>,
    id: Uuid,
    code: ResponseError,
) -> MetadataResponseTopic {
    let mut out = MetadataResponseTopic::default();
    out.error_code = code.code();
    out.name = name;
    if version >= 10 {
        out.topic_id = id;
    }
    out
}
