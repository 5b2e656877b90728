//! Produce: validates each partition's batches (CRC32C, size, every record,
//! producer sequence), assigns offsets, appends, and answers per partition.
//!
//! All partitions of one request are appended in a single blocking task: one
//! thread hop per request, not per partition. The log walks every record of
//! a batch (decompressing it as a stream) like Kafka's LogValidator; a
//! partition whose records break a rule is refused whole, and Produce v8+
//! answers carry the per-record errors (`record_errors`) and a summary.
//!
//! Each partition is a Raft group: validation runs here, on a blocking
//! thread, and the validated batches are handed to the group's Raft, which
//! the leader's store appends (assigning offsets) in the order they were
//! handed over. The handler returns once every partition's batches are
//! handed over, with the answer as [`Outcome::Later`], so the connection
//! can hand over the client's next pipelined produce (in order) while this
//! one waits: for its commit (acks=all: a majority holds it, and with
//! `--fsync always` has synced it), or for the leader's own append (acks=1,
//! which a failover can lose, as in Kafka). Every wait ends by the request's
//! `timeout_ms` (REQUEST_TIMED_OUT).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::produce_response::{
    BatchIndexAndErrorMessage, LeaderIdAndEpoch, NodeEndpoint, PartitionProduceResponse,
    TopicProduceResponse,
};
use kafka_protocol::messages::{
    BrokerId, ProduceRequest, ProduceResponse, ResponseKind, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use uuid::Uuid;

use super::{leader_hint, Outcome};
use crate::broker::{now_ms, Broker};
use crate::log::{validate_produce, AppendError, AppendInfo, RecordError, Validated};
use crate::raft::partition_group::ProduceError;
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

/// Partitions whose batches passed validation: the index of their
/// [`Work`], the partition, and the batches ready for its group.
type Checked = (usize, Arc<Partition>, Validated);

/// How long a produce waits for its answer when the client asks for no
/// timeout (or a negative one): Kafka's default `request.timeout.ms`.
const PRODUCE_WAIT_DEFAULT_MS: u64 = 30_000;

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
    let checked = super::blocking(move || {
        let now = now_ms();
        let mut checked: Vec<Checked> = Vec::new();
        for (index, item) in work.iter_mut().enumerate() {
            if item.result.is_some() {
                continue;
            }
            let name = names[item.topic_index].as_deref().unwrap_or_default();
            let Some(target) = b.replicas.get(name, item.partition_index) else {
                let code = b.missing_partition_error(name, item.partition_index);
                item.result = Some(Err((code, String::new()).into()));
                continue;
            };
            if target.is_offline() {
                item.result = Some(Err((ResponseError::KafkaStorageError, String::new()).into()));
                continue;
            }
            if let Err(leader) = target.led_epoch() {
                item.result = Some(Err(not_leader(leader)));
                continue;
            }
            match validate_one(&target, name, item.records.take(), now, version) {
                Ok(validated) => checked.push((index, target, validated)),
                Err(refusal) => item.result = Some(Err(refusal)),
            }
        }
        (work, checked, now)
    })
    .await;
    let (mut work, checked, now) = match checked {
        Ok(done) => done,
        Err((_, message)) => return Outcome::Close(format!("produce failed: {message}")),
    };

    // Hand the batches over in request order (which is what orders a
    // client's pipelined produces), after the acks=all ISR check.
    let wait = Duration::from_millis(
        u64::try_from(request.timeout_ms)
            .ok()
            .filter(|&t| t > 0)
            .unwrap_or(PRODUCE_WAIT_DEFAULT_MS),
    );
    let deadline = tokio::time::Instant::now() + wait;
    let lag_max = Duration::from_millis(broker.config.replica_lag_time_max_ms);
    let mut pending = Vec::with_capacity(checked.len());
    for (index, partition, validated) in checked {
        let Some(group) = partition.group() else {
            work[index].result = Some(Err(not_leader(None)));
            continue;
        };
        if acks == -1 {
            let required = partition.log_config().min_insync_replicas as usize;
            let in_sync = group
                .in_sync(lag_max, |n| broker.metadata.is_alive(n as i32))
                .map_or(0, |isr| isr.len());
            if in_sync < required {
                work[index].result = Some(Err((
                    ResponseError::NotEnoughReplicas,
                    format!("{in_sync} replicas are in sync; min.insync.replicas is {required}."),
                )
                    .into()));
                continue;
            }
        }
        match tokio::time::timeout_at(deadline, group.submit(validated, now)).await {
            Ok(Ok(p)) => pending.push((index, p, group)),
            Ok(Err(e)) => work[index].result = Some(Err(produce_error(e))),
            Err(_) => work[index].result = Some(Err(timed_out())),
        }
    }

    if acks == 0 {
        // Nobody waits for the answer; the appends go on without it.
        for (_, p, _) in pending {
            tokio::spawn(p.appended());
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
    if pending.is_empty() {
        return respond(broker, version, topics, work);
    }
    let broker = broker.clone();
    Outcome::Later(Box::pin(async move {
        let waits = pending.into_iter().map(|(index, p, group)| async move {
            let outcome = if acks == 1 {
                tokio::time::timeout_at(deadline, p.appended()).await
            } else {
                tokio::time::timeout_at(deadline, async {
                    tokio::select! {
                        committed = p.committed() => committed,
                        lost = group.lost_standing() => Err(lost),
                    }
                })
                .await
            };
            let result = match outcome {
                Err(_) => Err(timed_out()),
                Ok(Err(e)) => Err(produce_error(e)),
                Ok(Ok(appended)) => appended.map_err(|e| append_refusal(e, version)),
            };
            (index, result)
        });
        for (index, result) in futures::future::join_all(waits).await {
            if let Some(item) = work.get_mut(index) {
                item.result = Some(result);
            }
        }
        respond(&broker, version, topics, work)
    }))
}

fn not_leader(leader: Option<i32>) -> Refusal {
    let message = match leader {
        Some(id) => format!("This broker does not lead the partition; broker {id} does."),
        None => "This broker does not lead the partition, and knows no leader now.".to_string(),
    };
    (ResponseError::NotLeaderOrFollower, message).into()
}

fn timed_out() -> Refusal {
    (
        ResponseError::RequestTimedOut,
        "The produce was not acknowledged within its timeout; it may still be committed."
            .to_string(),
    )
        .into()
}

fn produce_error(e: ProduceError) -> Refusal {
    match e {
        ProduceError::NotLeader(leader) => not_leader(leader.map(|n| n as i32)),
        ProduceError::NotEnoughReplicas { .. } => {
            (ResponseError::NotEnoughReplicas, e.to_string()).into()
        }
        ProduceError::Raft(why) => {
            tracing::debug!(error = %why, "produce not replicated");
            (ResponseError::NotLeaderOrFollower, why).into()
        }
    }
}

/// The produce response for appended (or refused) partitions.
fn respond(
    broker: &Broker,
    version: i16,
    topics: Vec<(TopicName, Uuid, Option<String>)>,
    work: Vec<Work>,
) -> Outcome {
    let mut response = ProduceResponse::default();
    let names: Vec<Option<String>> = topics.iter().map(|t| t.2.clone()).collect();
    let mut hints = Vec::new();
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
                // KIP-951: name the leader, if another node leads.
                let topic = names.get(item.topic_index).and_then(Option::as_deref);
                let hint = (version >= 10 && refusal.code == ResponseError::NotLeaderOrFollower)
                    .then(|| leader_hint::leader_of(broker, topic?, item.partition_index))
                    .flatten();
                if let Some(h) = hint {
                    p.current_leader = LeaderIdAndEpoch::default()
                        .with_leader_id(BrokerId(h.leader))
                        .with_leader_epoch(h.epoch);
                    hints.push(h);
                }
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
    ResponseKind::Produce(response).into()
}

/// The produce checks on one partition's records (on a blocking thread,
/// outside every lock).
fn validate_one(
    target: &Partition,
    topic: &str,
    records: Option<Bytes>,
    now: i64,
    version: i16,
) -> Result<Validated, Refusal> {
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
    let config = target.log_config();
    match validate_produce(&records, &config, now) {
        Ok(validated) => Ok(validated.into_owned(&records)),
        Err(e) => {
            tracing::debug!(topic, partition = target.tp.partition, error = %e, "produce rejected");
            Err(append_refusal(e, version))
        }
    }
}

/// What a refused append answers.
fn append_refusal(e: AppendError, version: i16) -> Refusal {
    let mut code = ResponseError::try_from_code(e.kafka_error_code())
        .unwrap_or(ResponseError::UnknownServerError);
    // INVALID_RECORD exists from Produce v8; older clients know CORRUPT_MESSAGE.
    if code == ResponseError::InvalidRecord && version < 8 {
        code = ResponseError::CorruptMessage;
    }
    if code == ResponseError::KafkaStorageError {
        tracing::error!(error = %e, "append failed");
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
}
