//! ListOffsets (earliest, latest, by timestamp via the time index, max
//! timestamp) and OffsetForLeaderEpoch (used by clients to validate their
//! position after a leader change, KIP-320).

use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use kafka_protocol::messages::{
    ListOffsetsRequest, ListOffsetsResponse, OffsetForLeaderEpochRequest,
    OffsetForLeaderEpochResponse,
};

use crate::broker::Broker;
use crate::replica::Partition;

/// Special timestamps of ListOffsets.
const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
const MAX_TIMESTAMP: i64 = -3;
const EARLIEST_LOCAL: i64 = -4;
const LATEST_TIERED: i64 = -5;

pub async fn handle(
    broker: &Arc<Broker>,
    version: i16,
    request: ListOffsetsRequest,
) -> ListOffsetsResponse {
    let b = broker.clone();
    let topics = super::blocking(move || {
        request
            .topics
            .into_iter()
            .map(|topic| {
                let mut out = ListOffsetsTopicResponse::default();
                out.partitions = topic
                    .partitions
                    .iter()
                    .map(|p| {
                        let mut r = ListOffsetsPartitionResponse::default();
                        r.partition_index = p.partition_index;
                        let epoch_to_check = if version >= 4 {
                            p.current_leader_epoch
                        } else {
                            -1
                        };
                        match b.replicas.get(&topic.name, p.partition_index) {
                            None => {
                                r.error_code = b
                                    .missing_partition_error(&topic.name, p.partition_index)
                                    .code()
                            }
                            Some(partition) => {
                                match lookup(&partition, p.timestamp, epoch_to_check, version) {
                                    Ok((offset, timestamp)) => {
                                        r.offset = offset;
                                        r.timestamp = timestamp;
                                        if version >= 4 {
                                            r.leader_epoch = partition.leader_epoch();
                                        }
                                    }
                                    Err(code) => r.error_code = code.code(),
                                }
                            }
                        }
                        r
                    })
                    .collect();
                out.name = topic.name;
                out
            })
            .collect::<Vec<_>>()
    })
    .await;
    let mut response = ListOffsetsResponse::default();
    match topics {
        Ok(topics) => response.topics = topics,
        Err((code, message)) => tracing::error!(?code, %message, "list offsets failed"),
    }
    response
}

/// Resolves one ListOffsets query to `(offset, timestamp)`. Blocking.
fn lookup(
    partition: &Partition,
    timestamp: i64,
    current_leader_epoch: i32,
    version: i16,
) -> Result<(i64, i64), ResponseError> {
    check_epoch(partition, current_leader_epoch)?;
    // A leader elected a moment ago may not have applied what its
    // predecessor committed (a moved log start, the high watermark): it
    // answers once it has (KIP-207's OFFSET_NOT_AVAILABLE, retriable; a
    // client older than v2 knows LEADER_NOT_AVAILABLE instead).
    if !partition.leads_settled() {
        return Err(if version >= 2 {
            ResponseError::OffsetNotAvailable
        } else {
            ResponseError::LeaderNotAvailable
        });
    }
    let storage = |e: crate::log::LogError| {
        tracing::error!(partition = %partition.tp.dir_name(), error = %e, "offset lookup failed");
        ResponseError::KafkaStorageError
    };
    match timestamp {
        LATEST => Ok((partition.high_watermark(), -1)),
        EARLIEST | EARLIEST_LOCAL => Ok((partition.log_start_offset(), -1)),
        MAX_TIMESTAMP => {
            let found = partition
                .with_log(|log| log.max_timestamp())
                .map_err(storage)?;
            Ok(found.unwrap_or((-1, -1)))
        }
        LATEST_TIERED => Ok((-1, -1)),
        ts if ts < 0 => Err(ResponseError::InvalidRequest),
        ts => {
            let hw = partition.high_watermark();
            let found = partition
                .with_log(|log| log.offset_for_timestamp(ts))
                .map_err(storage)?;
            // Never point a consumer above the high watermark.
            Ok(found.filter(|(offset, _)| *offset < hw).unwrap_or((-1, -1)))
        }
    }
}

/// The leader's checks: this node leads, in the epoch the client knows.
fn check_epoch(partition: &Partition, current_leader_epoch: i32) -> Result<(), ResponseError> {
    let epoch = partition
        .led_epoch()
        .map_err(|_| ResponseError::NotLeaderOrFollower)?;
    if current_leader_epoch < 0 {
        return Ok(());
    }
    if current_leader_epoch < epoch {
        Err(ResponseError::FencedLeaderEpoch)
    } else if current_leader_epoch > epoch {
        Err(ResponseError::UnknownLeaderEpoch)
    } else {
        Ok(())
    }
}

pub fn offset_for_leader_epoch(
    broker: &Broker,
    _version: i16,
    request: OffsetForLeaderEpochRequest,
) -> OffsetForLeaderEpochResponse {
    let mut response = OffsetForLeaderEpochResponse::default();
    response.topics = request
        .topics
        .into_iter()
        .map(|topic| {
            let mut out = OffsetForLeaderTopicResult::default();
            out.partitions = topic
                .partitions
                .iter()
                .map(|p| {
                    let mut r = EpochEndOffset::default();
                    r.partition = p.partition;
                    match broker.replicas.get(&topic.topic, p.partition) {
                        None => {
                            r.error_code = broker
                                .missing_partition_error(&topic.topic, p.partition)
                                .code()
                        }
                        Some(partition) => match check_epoch(&partition, p.current_leader_epoch) {
                            Err(code) => r.error_code = code.code(),
                            Ok(()) => {
                                // From the partition's epoch map (Kafka's
                                // leader-epoch-checkpoint), for any past epoch.
                                let (epoch, end) = partition.end_offset_for_epoch(p.leader_epoch);
                                r.leader_epoch = epoch;
                                r.end_offset = end;
                            }
                        },
                    }
                    r
                })
                .collect();
            out.topic = topic.topic;
            out
        })
        .collect();
    response
}
