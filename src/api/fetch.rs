//! Fetch: serves committed batches (below the high watermark) as stored bytes,
//! and long-polls when there is less than `min_bytes` of data.
//!
//! The long poll subscribes to the high watermark of every partition it reads
//! *before* its first read, so an append that lands between the read and the
//! wait still wakes it; it then sleeps until an append or the deadline, never
//! polling. Limits: `max_bytes` (capped by `fetch.max.bytes`) for the whole
//! response and `partition_max_bytes` per partition, except that the first
//! batch of the first partition with data is always returned whole (KIP-74)
//! so a large batch cannot stall a consumer. `max_wait_ms` is capped by
//! `fetch.max.wait.ms.max`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::fetch_response::{
    FetchableTopicResponse, LeaderIdAndEpoch, NodeEndpoint, PartitionData,
};
use kafka_protocol::messages::{BrokerId, FetchRequest, FetchResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use tokio::sync::watch;
use tokio::time::Instant;
use uuid::Uuid;

use super::leader_hint;
use crate::broker::Broker;
use crate::log::ReadError;
use crate::replica::Partition;

/// One requested partition, resolved.
struct Slot {
    topic_index: usize,
    partition_index: i32,
    fetch_offset: i64,
    partition_max_bytes: usize,
    current_leader_epoch: i32,
    partition: Result<Arc<Partition>, ResponseError>,
}

/// The answer for one partition in one pass.
#[derive(Clone)]
struct Answer {
    error: Option<ResponseError>,
    high_watermark: i64,
    log_start_offset: i64,
    records: Bytes,
}

pub async fn handle(broker: &Arc<Broker>, version: i16, request: FetchRequest) -> FetchResponse {
    let config = broker.config.clone();
    let mut topics: Vec<(TopicName, Uuid)> = Vec::with_capacity(request.topics.len());
    let mut topic_names: Vec<Option<String>> = Vec::with_capacity(request.topics.len());
    let mut slots = Vec::new();
    for topic in request.topics {
        let name = if version >= 13 {
            broker.metadata.topic_by_id(topic.topic_id).map(|t| t.name)
        } else {
            Some(topic.topic.to_string())
        };
        let topic_index = topics.len();
        topics.push((topic.topic.clone(), topic.topic_id));
        topic_names.push(name.clone());
        for p in topic.partitions {
            let partition = match &name {
                None if version >= 13 => Err(ResponseError::UnknownTopicId),
                None => Err(ResponseError::UnknownTopicOrPartition),
                Some(name) => broker
                    .replicas
                    .get(name, p.partition)
                    .ok_or_else(|| broker.missing_partition_error(name, p.partition)),
            };
            slots.push(Slot {
                topic_index,
                partition_index: p.partition,
                fetch_offset: p.fetch_offset,
                partition_max_bytes: p.partition_max_bytes.max(0) as usize,
                current_leader_epoch: if version >= 9 {
                    p.current_leader_epoch
                } else {
                    -1
                },
                partition,
            });
        }
    }

    let max_bytes = if version >= 3 {
        (request.max_bytes.max(0) as usize).min(config.fetch_max_bytes)
    } else {
        config.fetch_max_bytes
    };
    let min_bytes = request.min_bytes.max(0) as usize;
    let max_wait = Duration::from_millis(
        (request.max_wait_ms.max(0) as u64).min(config.fetch_max_wait_ms_max),
    );
    let deadline = Instant::now() + max_wait;

    // Subscribe before the first read so no append can slip between the two.
    let mut watchers: Vec<watch::Receiver<i64>> = slots
        .iter()
        .filter_map(|s| s.partition.as_ref().ok().map(|p| p.subscribe()))
        .collect();
    let slots = Arc::new(slots);

    let answers = loop {
        for w in watchers.iter_mut() {
            w.mark_unchanged();
        }
        let pass = {
            let slots = slots.clone();
            super::blocking(move || read_pass(&slots, max_bytes)).await
        };
        let answers = match pass {
            Ok(answers) => answers,
            Err((code, _)) => break error_answers(slots.len(), code),
        };
        let total: usize = answers.iter().map(|a| a.records.len()).sum();
        let any_error = answers.iter().any(|a| a.error.is_some());
        if total >= min_bytes || any_error || Instant::now() >= deadline || watchers.is_empty() {
            break answers;
        }
        if !wait_for_append(&mut watchers, deadline).await {
            // Deadline reached: answer with what there is now.
            let count = slots.len();
            let slots = slots.clone();
            break match super::blocking(move || read_pass(&slots, max_bytes)).await {
                Ok(answers) => answers,
                Err((code, _)) => error_answers(count, code),
            };
        }
    };

    let mut response = FetchResponse::default();
    let names: Vec<Option<String>> = topic_names;
    let mut hints = Vec::new();
    let mut out: Vec<FetchableTopicResponse> = topics
        .into_iter()
        .map(|(name, id)| {
            let mut t = FetchableTopicResponse::default();
            if version >= 13 {
                t.topic_id = id;
            } else {
                t.topic = name;
            }
            t
        })
        .collect();
    for (slot, answer) in slots.iter().zip(answers) {
        let mut p = PartitionData::default();
        p.partition_index = slot.partition_index;
        p.error_code = answer.error.map(|e| e.code()).unwrap_or(0);
        p.high_watermark = answer.high_watermark;
        if version >= 4 {
            p.last_stable_offset = answer.high_watermark;
        }
        if version >= 5 {
            p.log_start_offset = answer.log_start_offset;
        }
        p.records = Some(answer.records);
        // KIP-951: name the leader, if another node leads.
        let moved = matches!(
            answer.error,
            Some(ResponseError::NotLeaderOrFollower | ResponseError::FencedLeaderEpoch)
        );
        let topic = names.get(slot.topic_index).and_then(Option::as_deref);
        let hint = (version >= 16 && moved)
            .then(|| leader_hint::leader_of(broker, topic?, slot.partition_index))
            .flatten();
        if let Some(h) = hint {
            p.current_leader = LeaderIdAndEpoch::default()
                .with_leader_id(BrokerId(h.leader))
                .with_leader_epoch(h.epoch);
            hints.push(h);
        }
        if let Some(t) = out.get_mut(slot.topic_index) {
            t.partitions.push(p);
        }
    }
    response.responses = out;
    if version >= 16 {
        response.node_endpoints = leader_hint::endpoints(broker, hints.into_iter())
            .into_iter()
            .map(|b| {
                NodeEndpoint::default()
                    .with_node_id(BrokerId(b.id))
                    .with_host(StrBytes::from_string(b.host))
                    .with_port(b.port)
                    .with_rack(b.rack.map(StrBytes::from_string))
            })
            .collect();
    }
    response
}

/// Reads every slot once, sharing `max_bytes` across them. Blocking.
fn read_pass(slots: &[Slot], max_bytes: usize) -> Vec<Answer> {
    let mut remaining = max_bytes;
    let mut first_data_given = false;
    slots
        .iter()
        .map(|slot| {
            let partition = match &slot.partition {
                Ok(p) => p,
                Err(code) => return error_answer(*code),
            };
            let high_watermark = partition.high_watermark();
            let log_start_offset = partition.log_start_offset();
            let mut answer = Answer {
                error: None,
                high_watermark,
                log_start_offset,
                records: Bytes::new(),
            };
            // Consumers read from the leader only (no KIP-392 follower fetching).
            let epoch = match partition.led_epoch() {
                Ok(epoch) => epoch,
                Err(_) => return error_answer(ResponseError::NotLeaderOrFollower),
            };
            // A leader cut off from its followers (or superseded) has
            // nothing new to give; refusing sends the consumer to look for
            // the leader the others elected instead of polling here.
            if !partition.has_standing() {
                return error_answer(ResponseError::NotLeaderOrFollower);
            }
            // Elected a moment ago, before it applied what its predecessor
            // committed: its high watermark and log start may be behind,
            // so it serves nothing yet (an offset between its high
            // watermark and the true one would otherwise look out of
            // range, and records DeleteRecords removed could be served).
            // The fetch waits: the blank entry's apply wakes it.
            if !partition.leads_settled() {
                return answer;
            }
            if slot.current_leader_epoch >= 0 {
                if slot.current_leader_epoch < epoch {
                    answer.error = Some(ResponseError::FencedLeaderEpoch);
                    return answer;
                }
                if slot.current_leader_epoch > epoch {
                    answer.error = Some(ResponseError::UnknownLeaderEpoch);
                    return answer;
                }
            }
            let limit = slot.partition_max_bytes.min(remaining);
            let min_one_batch = !first_data_given;
            if limit == 0 && !min_one_batch {
                return answer;
            }
            if slot.fetch_offset == high_watermark && slot.fetch_offset >= log_start_offset {
                return answer;
            }
            match partition.read_blocking(slot.fetch_offset, limit, min_one_batch) {
                Ok(read) => {
                    if !read.records.is_empty() {
                        first_data_given = true;
                        remaining = remaining.saturating_sub(read.records.len());
                    }
                    answer.records = read.records;
                }
                Err(ReadError::OffsetOutOfRange { .. }) => answer.error = Some(ResponseError::OffsetOutOfRange),
                Err(e) => {
                    tracing::error!(partition = %partition.tp.dir_name(), error = %e, "read failed");
                    answer.error = Some(ResponseError::KafkaStorageError);
                }
            }
            answer
        })
        .collect()
}

fn error_answer(code: ResponseError) -> Answer {
    Answer {
        error: Some(code),
        high_watermark: -1,
        log_start_offset: -1,
        records: Bytes::new(),
    }
}

fn error_answers(count: usize, code: ResponseError) -> Vec<Answer> {
    vec![error_answer(code); count]
}

/// Waits until any watched high watermark moves (true) or the deadline (false).
async fn wait_for_append(watchers: &mut Vec<watch::Receiver<i64>>, deadline: Instant) -> bool {
    if watchers.is_empty() {
        return false;
    }
    let outcome = {
        let changed = futures::future::select_all(watchers.iter_mut().map(|w| w.changed().boxed()));
        match tokio::time::timeout_at(deadline, changed).await {
            Err(_) => None,
            Ok((result, index, _)) => Some((result.is_ok(), index)),
        }
    };
    match outcome {
        None => false,
        Some((true, _)) => true,
        Some((false, index)) => {
            // The partition was deleted: stop watching it; the next pass
            // reports the error.
            drop(watchers.remove(index));
            true
        }
    }
}
