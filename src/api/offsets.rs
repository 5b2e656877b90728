//! Committed offsets: OffsetCommit, OffsetFetch (single and multi-group),
//! OffsetDelete. Versions 10 of OffsetCommit and OffsetFetch name topics by
//! id; older ones by name.

use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{
    OffsetCommitRequest, OffsetCommitResponse, OffsetDeleteRequest, OffsetDeleteResponse,
    OffsetFetchRequest, OffsetFetchResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use uuid::Uuid;

use crate::broker::{now_ms, Broker};
use crate::coordinator::group::CommittedOffset;

/// One topic of an OffsetCommit: per partition, the offset to store or the error.
type CommitPlan = (
    TopicName,
    Uuid,
    Vec<(i32, Result<CommittedOffset, ResponseError>)>,
);

/// Most partitions one request may name.
const PARTITIONS_MAX: usize = 100_000;

fn topic_name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_string()))
}

pub async fn commit(
    broker: &Arc<Broker>,
    version: i16,
    request: OffsetCommitRequest,
) -> OffsetCommitResponse {
    let metadata_max = broker.groups.offsets_config().metadata_max_bytes;
    let now = now_ms();
    // Per partition: Ok(offset to store) or the error to answer.
    let mut plan: Vec<CommitPlan> = Vec::new();
    let mut budget = PARTITIONS_MAX;
    for topic in request.topics {
        let name = if version >= 10 {
            broker.metadata.topic_by_id(topic.topic_id).map(|t| t.name)
        } else {
            Some(topic.name.to_string())
        };
        let partitions = topic
            .partitions
            .iter()
            .take(budget)
            .map(|p| {
                let result = match &name {
                    None => Err(ResponseError::UnknownTopicId),
                    Some(n) => {
                        let known = broker.metadata.topic(n).is_some_and(|t| {
                            p.partition_index >= 0 && p.partition_index < t.partitions
                        });
                        let metadata = p
                            .committed_metadata
                            .as_ref()
                            .map(|m| m.to_string())
                            .unwrap_or_default();
                        if !known {
                            Err(ResponseError::UnknownTopicOrPartition)
                        } else if metadata.len() > metadata_max {
                            Err(ResponseError::OffsetMetadataTooLarge)
                        } else {
                            Ok(CommittedOffset {
                                offset: p.committed_offset,
                                leader_epoch: if version >= 6 {
                                    p.committed_leader_epoch
                                } else {
                                    -1
                                },
                                metadata,
                                commit_timestamp_ms: now,
                            })
                        }
                    }
                };
                (p.partition_index, result)
            })
            .collect::<Vec<_>>();
        budget = budget.saturating_sub(partitions.len());
        let wire_name = match (&name, version >= 10) {
            (Some(n), false) => topic_name(n),
            _ => topic.name.clone(),
        };
        plan.push((wire_name, topic.topic_id, partitions));
    }

    let to_store: Vec<(String, i32, CommittedOffset)> = plan
        .iter()
        .flat_map(|(name, id, partitions)| {
            let resolved = if version >= 10 {
                broker
                    .metadata
                    .topic_by_id(*id)
                    .map(|t| t.name)
                    .unwrap_or_default()
            } else {
                name.to_string()
            };
            partitions.iter().filter_map(move |(p, r)| {
                r.as_ref().ok().map(|o| (resolved.clone(), *p, o.clone()))
            })
        })
        .collect();
    let instance = if version >= 7 {
        request.group_instance_id.as_ref().map(|s| s.to_string())
    } else {
        None
    };
    let group_error = if to_store.is_empty() {
        None
    } else {
        broker
            .groups
            .commit_offsets(
                broker,
                &request.group_id,
                &request.member_id,
                instance.as_deref(),
                request.generation_id_or_member_epoch,
                to_store,
            )
            .await
            .err()
    };

    let mut response = OffsetCommitResponse::default();
    response.topics = plan
        .into_iter()
        .map(|(name, id, partitions)| {
            let mut t = OffsetCommitResponseTopic::default();
            if version >= 10 {
                t.topic_id = id;
            } else {
                t.name = name;
            }
            t.partitions = partitions
                .into_iter()
                .map(|(index, result)| {
                    let mut p = OffsetCommitResponsePartition::default();
                    p.partition_index = index;
                    p.error_code = match result {
                        Err(e) => e.code(),
                        Ok(_) => group_error.map(|e| e.code()).unwrap_or(0),
                    };
                    p
                })
                .collect();
            t
        })
        .collect();
    response
}

/// The committed offset of one partition as OffsetFetch reports it.
fn offset_fields(found: Option<CommittedOffset>) -> (i64, i32, String) {
    match found {
        Some(o) => (o.offset, o.leader_epoch, o.metadata),
        None => (-1, -1, String::new()),
    }
}

pub fn fetch(broker: &Broker, version: i16, request: OffsetFetchRequest) -> OffsetFetchResponse {
    let mut response = OffsetFetchResponse::default();
    if version < 8 {
        if let Err(e) = broker.groups.coordinates(broker, &request.group_id) {
            response.error_code = e.code();
            return response;
        }
        let topics = request.topics.map(|ts| {
            ts.into_iter()
                .map(|t| {
                    (
                        t.name.to_string(),
                        t.partition_indexes
                            .into_iter()
                            .take(PARTITIONS_MAX)
                            .collect(),
                    )
                })
                .collect()
        });
        response.topics = broker
            .groups
            .fetch_offsets(&request.group_id, topics)
            .into_iter()
            .map(|(topic, partitions)| {
                let mut t = OffsetFetchResponseTopic::default();
                t.name = topic_name(&topic);
                t.partitions = partitions
                    .into_iter()
                    .map(|(index, found)| {
                        let (offset, epoch, metadata) = offset_fields(found);
                        let mut p = OffsetFetchResponsePartition::default();
                        p.partition_index = index;
                        p.committed_offset = offset;
                        if version >= 5 {
                            p.committed_leader_epoch = epoch;
                        }
                        p.metadata = Some(StrBytes::from_string(metadata));
                        p
                    })
                    .collect();
                t
            })
            .collect();
        return response;
    }
    response.groups = request
        .groups
        .into_iter()
        .take(PARTITIONS_MAX)
        .map(|group| {
            if let Err(e) = broker.groups.coordinates(broker, &group.group_id) {
                let mut g = OffsetFetchResponseGroup::default();
                g.error_code = e.code();
                g.group_id = group.group_id;
                return g;
            }
            // v10 names topics by id: resolve, remembering the id to echo.
            let wanted: Option<Vec<(String, Uuid, Vec<i32>)>> = group.topics.map(|ts| {
                ts.into_iter()
                    .map(|t| {
                        let name = if version >= 10 {
                            broker
                                .metadata
                                .topic_by_id(t.topic_id)
                                .map(|m| m.name)
                                .unwrap_or_default()
                        } else {
                            t.name.to_string()
                        };
                        (
                            name,
                            t.topic_id,
                            t.partition_indexes
                                .into_iter()
                                .take(PARTITIONS_MAX)
                                .collect(),
                        )
                    })
                    .collect()
            });
            let ids: std::collections::HashMap<String, Uuid> = match &wanted {
                Some(w) => w.iter().map(|(n, id, _)| (n.clone(), *id)).collect(),
                None => broker
                    .metadata
                    .topics()
                    .into_iter()
                    .map(|t| (t.name, t.id))
                    .collect(),
            };
            let found = broker.groups.fetch_offsets(
                &group.group_id,
                wanted.map(|w| w.into_iter().map(|(n, _, p)| (n, p)).collect()),
            );
            let mut g = OffsetFetchResponseGroup::default();
            g.topics = found
                .into_iter()
                .map(|(topic, partitions)| {
                    let mut t = OffsetFetchResponseTopics::default();
                    if version >= 10 {
                        t.topic_id = ids.get(&topic).copied().unwrap_or_default();
                    } else {
                        t.name = topic_name(&topic);
                    }
                    t.partitions = partitions
                        .into_iter()
                        .map(|(index, found)| {
                            let (offset, epoch, metadata) = offset_fields(found);
                            let mut p = OffsetFetchResponsePartitions::default();
                            p.partition_index = index;
                            p.committed_offset = offset;
                            p.committed_leader_epoch = epoch;
                            p.metadata = Some(StrBytes::from_string(metadata));
                            p
                        })
                        .collect();
                    t
                })
                .collect();
            g.group_id = group.group_id;
            g
        })
        .collect();
    response
}

pub async fn delete(
    broker: &Arc<Broker>,
    _version: i16,
    request: OffsetDeleteRequest,
) -> OffsetDeleteResponse {
    let topics: Vec<(String, Vec<i32>)> = request
        .topics
        .iter()
        .map(|t| {
            (
                t.name.to_string(),
                t.partitions
                    .iter()
                    .take(PARTITIONS_MAX)
                    .map(|p| p.partition_index)
                    .collect(),
            )
        })
        .collect();
    let mut response = OffsetDeleteResponse::default();
    match broker
        .groups
        .delete_offsets(broker, &request.group_id, topics)
        .await
    {
        Err(e) => response.error_code = e.code(),
        Ok(results) => {
            response.topics = results
                .into_iter()
                .map(|(topic, partitions)| {
                    let mut t = OffsetDeleteResponseTopic::default();
                    t.name = topic_name(&topic);
                    t.partitions = partitions
                        .into_iter()
                        .map(|(index, error)| {
                            let mut p = OffsetDeleteResponsePartition::default();
                            p.partition_index = index;
                            p.error_code = error.map(|e| e.code()).unwrap_or(0);
                            p
                        })
                        .collect();
                    t
                })
                .collect();
        }
    }
    response
}
