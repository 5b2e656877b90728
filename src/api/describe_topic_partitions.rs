//! DescribeTopicPartitions (API 75, KIP-966): the paginated topic
//! description the Java admin client (and so `kafka-topics.sh --describe`)
//! uses instead of Metadata.
//!
//! Kafka's semantics: topics sorted by name; an empty request list means
//! every topic; a page holds at most `min(response_partition_limit,
//! max.request.partition.size.limit)` partitions; `cursor` resumes at a
//! topic and partition, and `next_cursor` names the first partition left
//! out (null when the answer is complete). A topic named explicitly that
//! does not exist gets UNKNOWN_TOPIC_OR_PARTITION (INVALID_TOPIC_EXCEPTION
//! for an illegal name); with an empty list only existing topics are shown.

use std::collections::BTreeSet;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_topic_partitions_response::{
    Cursor, DescribeTopicPartitionsResponsePartition, DescribeTopicPartitionsResponseTopic,
};
use kafka_protocol::messages::{
    BrokerId, DescribeTopicPartitionsRequest, DescribeTopicPartitionsResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use uuid::Uuid;

use crate::api::admin::acl;
use crate::broker::Broker;
use crate::cluster::validate_topic_name;

/// Most topics one request may name (bounds the work per request).
const TOPICS_MAX: usize = 10_000;

fn name(n: &str) -> TopicName {
    TopicName(StrBytes::from_string(n.to_string()))
}

pub fn handle(
    broker: &Broker,
    _version: i16,
    request: DescribeTopicPartitionsRequest,
) -> DescribeTopicPartitionsResponse {
    let mut response = DescribeTopicPartitionsResponse::default();
    let fetch_all = request.topics.is_empty();
    let cursor_topic = request
        .cursor
        .as_ref()
        .map(|c| c.topic_name.to_string())
        .unwrap_or_default();
    // Sorted and deduplicated; a cursor skips every topic before its own.
    let topics: BTreeSet<String> = if fetch_all {
        broker.metadata.topic_names().into_iter().collect()
    } else {
        request
            .topics
            .iter()
            .take(TOPICS_MAX)
            .map(|t| t.name.to_string())
            .collect()
    };
    if let Some(cursor) = &request.cursor {
        if !fetch_all && !topics.contains(cursor.topic_name.as_str()) {
            // Kafka answers this with INVALID_REQUEST for the whole request;
            // the response has no top-level error code, so say it per topic.
            let mut t = DescribeTopicPartitionsResponseTopic::default();
            t.error_code = ResponseError::InvalidRequest.code();
            t.name = Some(cursor.topic_name.clone());
            response.topics.push(t);
            return response;
        }
    }
    let mut remaining = i64::from(
        request
            .response_partition_limit
            .min(broker.config.max_request_partition_size_limit)
            .max(1),
    );
    for topic_name in topics.range(cursor_topic.clone()..) {
        if remaining == 0 {
            let mut next = Cursor::default();
            next.topic_name = name(topic_name);
            next.partition_index = 0;
            response.next_cursor = Some(next);
            break;
        }
        let Some(topic) = broker.metadata.topic(topic_name) else {
            if !fetch_all {
                let mut t = DescribeTopicPartitionsResponseTopic::default();
                t.error_code = match validate_topic_name(topic_name) {
                    Ok(()) => ResponseError::UnknownTopicOrPartition.code(),
                    Err((code, _)) => code.code(),
                };
                t.name = Some(name(topic_name));
                t.topic_id = Uuid::nil();
                response.topics.push(t);
            }
            continue;
        };
        let first = if *topic_name == cursor_topic {
            request
                .cursor
                .as_ref()
                .map_or(0, |c| c.partition_index.max(0))
        } else {
            0
        };
        if first >= topic.partitions {
            continue;
        }
        let end = (i64::from(first) + remaining).min(i64::from(topic.partitions)) as i32;
        let mut t = DescribeTopicPartitionsResponseTopic::default();
        t.name = Some(name(topic_name));
        t.topic_id = topic.id;
        t.is_internal = topic.internal;
        t.topic_authorized_operations = acl::TOPIC_ALL;
        t.partitions = (first..end)
            .map(|index| {
                let mut p = DescribeTopicPartitionsResponsePartition::default();
                p.partition_index = index;
                let view = broker.partition_view(&topic, index);
                match view.leader {
                    Some(leader) => {
                        p.leader_id = BrokerId(leader);
                        p.leader_epoch = view.leader_epoch;
                    }
                    None => {
                        p.error_code = ResponseError::LeaderNotAvailable.code();
                        p.leader_id = BrokerId(-1);
                    }
                }
                p.replica_nodes = view.replicas.into_iter().map(BrokerId).collect();
                p.isr_nodes = view.isr.into_iter().map(BrokerId).collect();
                p.eligible_leader_replicas = Some(Vec::new());
                p.last_known_elr = Some(Vec::new());
                p.offline_replicas = view.offline.into_iter().map(BrokerId).collect();
                p
            })
            .collect();
        remaining -= i64::from(end - first);
        response.topics.push(t);
        if end < topic.partitions {
            let mut next = Cursor::default();
            next.topic_name = name(topic_name);
            next.partition_index = end;
            response.next_cursor = Some(next);
            break;
        }
    }
    response
}
