//! Produce: validates each partition's batches (CRC32C, size, every record,
//! producer sequence), assigns offsets, appends, and answers per partition.
//!
//! All partitions of one request are appended in a single blocking task: one
//! thread hop per request, not per partition. The log walks every record of
//! a batch (decompressing it as a stream) like Kafka's LogValidator; a
//! partition whose records break a rule is refused whole, and Produce v8+
//! answers carry the per-record errors (`record_errors`) and a summary.
//!
//! With `--fsync always` the answer waits for the fsync that covers the
//! append, but the append itself is done before this handler returns: the
//! response comes back as [`Outcome::Later`], so the connection can append
//! the client's next pipelined produce while the disk works, and one fsync
//! (the partition's group commit) covers both.

use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::produce_response::{
    BatchIndexAndErrorMessage, PartitionProduceResponse, TopicProduceResponse,
};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse, ResponseKind, TopicName};
use kafka_protocol::protocol::StrBytes;
use uuid::Uuid;

use super::Outcome;
use crate::broker::{now_ms, Broker};
use crate::log::{AppendError, AppendInfo, RecordError};
use crate::replica::Partition;

/// One partition's slice of the request, resolved to a partition (or an error).
struct Work {
    topic_index: usize,
    partition_index: i32,
    records: Option<Bytes>,
    /// `None` until appended; an error set up front skips the append.
    result: Option<Result<AppendInfo, Refusal>>,
}

/// Why a partition's records were not appended, as the answer carries it.
struct Refusal {
    code: ResponseError,
    message: String,
    /// Per-record errors (Produce v8+), in record order.
    record_errors: Vec<RecordError>,
}

impl From<(ResponseError, String)> for Refusal {
    fn from((code, message): (ResponseError, String)) -> Self {
        Refusal {
            code,
            message,
            record_errors: Vec::new(),
        }
    }
}

/// An appended partition whose answer waits for its fsync: the index of its
/// [`Work`], the partition, and the offset everything below which must be durable.
type PendingSync = (usize, Arc<Partition>, i64);

pub async fn handle(broker: &Arc<Broker>, version: i16, request: ProduceRequest) -> Outcome {
    let acks = request.acks;
    let mut topics: Vec<(TopicName, Uuid, Option<String>)> =
        Vec::with_capacity(request.topic_data.len());
    let mut work = Vec::new();
    let request_error = if !matches!(acks, -1..=1) {
        Some(ResponseError::InvalidRequiredAcks)
    } else if request.transactional_id.is_some() {
        // Transactions are not implemented; InitProducerId refuses
        // transactional ids, so a well-behaved client never gets here.
        Some(ResponseError::TransactionalIdAuthorizationFailed)
    } else {
        None
    };

    for topic in request.topic_data {
        // Produce v13+ names topics by id.
        let meta = if version >= 13 {
            broker.metadata.topic_by_id(topic.topic_id)
        } else {
            broker.metadata.topic(&topic.name)
        };
        // Clients may not write to internal topics (Kafka's rule).
        let internal = meta.as_ref().is_some_and(|t| t.internal);
        let name = if version >= 13 {
            meta.map(|t| t.name)
        } else {
            Some(topic.name.to_string())
        };
        let topic_index = topics.len();
        topics.push((topic.name.clone(), topic.topic_id, name.clone()));
        for partition in topic.partition_data {
            let refusal = match (&request_error, &name) {
                (Some(code), _) => Some((*code, String::new())),
                (None, Some(_)) if internal => Some((
                    ResponseError::InvalidTopicException,
                    "Cannot append to internal topic".to_string(),
                )),
                (None, None) if version >= 13 => {
                    Some((ResponseError::UnknownTopicId, String::new()))
                }
                (None, None) => Some((ResponseError::UnknownTopicOrPartition, String::new())),
                (None, Some(_)) => None,
            };
            let result = refusal.map(|r| Err(r.into()));
            work.push(Work {
                topic_index,
                partition_index: partition.index,
                records: partition.records,
                result,
            });
        }
    }

    let b = broker.clone();
    let names: Vec<Option<String>> = topics.iter().map(|t| t.2.clone()).collect();
    let appended = super::blocking(move || {
        let now = now_ms();
        let mut syncs: Vec<PendingSync> = Vec::new();
        for (index, item) in work.iter_mut().enumerate() {
            if item.result.is_some() {
                continue;
            }
            let name = names[item.topic_index].as_deref().unwrap_or_default();
            let Some(target) = b.replicas.get(name, item.partition_index) else {
                // A partition whose log could not be opened yet is retried
                // in the background: a retriable storage error, not "unknown".
                let code = if b.replicas.is_offline(name, item.partition_index) {
                    ResponseError::KafkaStorageError
                } else {
                    ResponseError::UnknownTopicOrPartition
                };
                item.result = Some(Err((code, String::new()).into()));
                continue;
            };
            let result = append_one(&target, name, item.records.take(), now, version);
            if let Ok(info) = &result {
                if target.sync_before_ack() {
                    syncs.push((index, target, info.last_offset + 1));
                }
            }
            item.result = Some(result);
        }
        (work, syncs)
    })
    .await;
    let (work, syncs) = match appended {
        Ok(done) => done,
        Err((_, message)) => return Outcome::Close(format!("produce failed: {message}")),
    };

    if acks == 0 {
        if !syncs.is_empty() {
            // Nobody waits for the answer, but the data is committed (and so
            // readable) only once synced.
            tokio::spawn(wait_for_syncs(syncs));
        }
        // Kafka closes the connection when an acks=0 produce fails, the only
        // way such a client can notice.
        return match work
            .iter()
            .find_map(|w| w.result.as_ref().and_then(|r| r.as_ref().err()))
        {
            Some(refusal) => {
                Outcome::Close(format!("acks=0 produce failed with {:?}", refusal.code))
            }
            None => Outcome::NoResponse,
        };
    }
    if syncs.is_empty() {
        return respond(version, topics, work);
    }
    Outcome::Later(Box::pin(async move {
        let mut work = work;
        for (index, failure) in wait_for_syncs(syncs).await {
            if let Some(item) = work.get_mut(index) {
                item.result = Some(Err(failure.into()));
            }
        }
        respond(version, topics, work)
    }))
}

/// Runs the fsyncs (group commits) the appends need, all partitions at once;
/// returns the ones that failed, by [`Work`] index.
async fn wait_for_syncs(syncs: Vec<PendingSync>) -> Vec<(usize, (ResponseError, String))> {
    let waits = syncs
        .into_iter()
        .map(|(index, partition, end_offset)| async move {
            let synced = super::blocking(move || partition.sync_to_blocking(end_offset)).await;
            let failure = match synced {
                Ok(Ok(())) => return None,
                Ok(Err(e)) => (ResponseError::KafkaStorageError, e.to_string()),
                Err(e) => e,
            };
            Some((index, failure))
        });
    futures::future::join_all(waits)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// The produce response for appended (or refused) partitions.
fn respond(
    version: i16,
    topics: Vec<(TopicName, Uuid, Option<String>)>,
    work: Vec<Work>,
) -> Outcome {
    let mut response = ProduceResponse::default();
    let mut responses: Vec<TopicProduceResponse> = topics
        .into_iter()
        .map(|(name, id, _)| {
            let mut t = TopicProduceResponse::default();
            if version >= 13 {
                t.topic_id = id;
            } else {
                t.name = name;
            }
            t
        })
        .collect();
    for item in work {
        let mut p = PartitionProduceResponse::default();
        p.index = item.partition_index;
        let result = item.result.unwrap_or_else(|| {
            Err((
                ResponseError::UnknownServerError,
                "not appended".to_string(),
            )
                .into())
        });
        match result {
            Ok(info) => {
                p.base_offset = info.base_offset;
                if version >= 2 {
                    p.log_append_time_ms = info.log_append_time_ms;
                }
                if version >= 5 {
                    p.log_start_offset = info.log_start_offset;
                }
            }
            Err(refusal) => {
                p.error_code = refusal.code.code();
                p.base_offset = -1;
                if version >= 8 {
                    if !refusal.message.is_empty() {
                        p.error_message = Some(StrBytes::from_string(refusal.message));
                    }
                    p.record_errors = refusal
                        .record_errors
                        .into_iter()
                        .map(|e| {
                            BatchIndexAndErrorMessage::default()
                                .with_batch_index(e.batch_index)
                                .with_batch_index_error_message(Some(StrBytes::from_string(
                                    e.message,
                                )))
                        })
                        .collect();
                }
            }
        }
        if let Some(t) = responses.get_mut(item.topic_index) {
            t.partition_responses.push(p);
        }
    }
    response.responses = responses;
    ResponseKind::Produce(response).into()
}

fn append_one(
    target: &Partition,
    topic: &str,
    records: Option<Bytes>,
    now: i64,
    version: i16,
) -> Result<AppendInfo, Refusal> {
    let partition = target.tp.partition;
    let records = match records {
        Some(r) if !r.is_empty() => r,
        _ => {
            let code = if version >= 8 {
                ResponseError::InvalidRecord
            } else {
                ResponseError::CorruptMessage
            };
            return Err((code, "produce request without records".to_string()).into());
        }
    };
    target.append_unsynced_blocking(&records, now).map_err(|e| {
        let mut code = ResponseError::try_from_code(e.kafka_error_code())
            .unwrap_or(ResponseError::UnknownServerError);
        // INVALID_RECORD exists from Produce v8; older clients know CORRUPT_MESSAGE.
        if code == ResponseError::InvalidRecord && version < 8 {
            code = ResponseError::CorruptMessage;
        }
        if code == ResponseError::KafkaStorageError {
            tracing::error!(topic, partition, error = %e, "append failed");
        } else {
            tracing::debug!(topic, partition, error = %e, "append rejected");
        }
        let message = e.to_string();
        let record_errors = match e {
            AppendError::RecordErrors { record_errors, .. } => record_errors,
            _ => Vec::new(),
        };
        Refusal {
            code,
            message,
            record_errors,
        }
    })
}
