//! ListOffsets: where a partition's log starts and ends, asked of its leader.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{anyhow, Context, Result};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::{BrokerId, ListOffsetsRequest, TopicName};
use kafka_protocol::protocol::StrBytes;

use crate::client::cluster::{Client, METADATA_RETRIES_MAX, RETRY_BACKOFF};
use crate::client::error::KafkaError;
use crate::client::metadata::TopicMetadata;

/// Which offset of a partition's log to look up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetSpec {
    /// The log start offset (ListOffsets timestamp -2).
    Earliest,
    /// The log end offset, i.e. the next offset to be written (timestamp -1).
    Latest,
    /// The first offset whose record timestamp is at or after this many
    /// milliseconds since the epoch. The broker answers -1 when no record is
    /// that recent; callers decide what that means (Kafka's reset tool falls
    /// back to the log end offset).
    Timestamp(i64),
}

impl OffsetSpec {
    fn timestamp(self) -> i64 {
        match self {
            OffsetSpec::Earliest => -2,
            OffsetSpec::Latest => -1,
            OffsetSpec::Timestamp(ms) => ms,
        }
    }
}

impl Client {
    /// The `spec` offset of each of `partitions` of `topic`, from their
    /// leaders. Leadership changes are retried with fresh metadata (bounded);
    /// any other partition error is returned.
    pub async fn list_offsets(
        &mut self,
        topic: &TopicMetadata,
        partitions: &[i32],
        spec: OffsetSpec,
    ) -> Result<BTreeMap<i32, i64>> {
        let mut meta = topic.clone();
        let mut todo: BTreeSet<i32> = partitions.iter().copied().collect();
        let mut offsets = BTreeMap::new();
        let mut last_error: Option<anyhow::Error> = None;
        for attempt in 0..=METADATA_RETRIES_MAX {
            if todo.is_empty() {
                break;
            }
            if attempt > 0 {
                tokio::time::sleep(RETRY_BACKOFF).await;
                meta = self.topic_metadata(&meta.name, false).await?;
            }
            let mut by_leader: BTreeMap<i32, Vec<(i32, i32)>> = BTreeMap::new();
            for &p in &todo {
                match meta.partition(p) {
                    Some(pm) if pm.leader_id >= 0 => by_leader
                        .entry(pm.leader_id)
                        .or_default()
                        .push((p, pm.leader_epoch)),
                    Some(_) => {
                        last_error = Some(anyhow!(
                            "partition {p} has no leader (LEADER_NOT_AVAILABLE)"
                        ))
                    }
                    None => {
                        return Err(anyhow!(
                            "topic '{}' has no partition {p} ({} partitions)",
                            meta.name,
                            meta.partition_count()
                        ))
                    }
                }
            }
            let request_timeout_ms = self.config().request_timeout.as_millis();
            for (leader, parts) in by_leader {
                let conn = match self.broker(leader).await {
                    Ok(c) => c,
                    Err(e) => {
                        last_error = Some(e);
                        continue;
                    }
                };
                let version = conn.version::<ListOffsetsRequest>()?;
                let mut request = ListOffsetsRequest::default()
                    .with_replica_id(BrokerId(-1))
                    .with_topics(vec![ListOffsetsTopic::default()
                        .with_name(TopicName(StrBytes::from_string(meta.name.clone())))
                        .with_partitions(
                            parts
                                .iter()
                                .map(|&(p, epoch)| {
                                    ListOffsetsPartition::default()
                                        .with_partition_index(p)
                                        .with_current_leader_epoch(epoch)
                                        .with_timestamp(spec.timestamp())
                                })
                                .collect(),
                        )]);
                if version >= 10 {
                    request.timeout_ms = i32::try_from(request_timeout_ms).unwrap_or(i32::MAX);
                }
                let response = match conn.send(&request, version).await {
                    Ok(r) => r,
                    Err(e) => {
                        last_error = Some(e);
                        continue;
                    }
                };
                for p in response.topics.iter().flat_map(|t| &t.partitions) {
                    if !todo.contains(&p.partition_index) {
                        continue;
                    }
                    match KafkaError::check(p.error_code, None) {
                        Ok(()) => {
                            offsets.insert(p.partition_index, p.offset);
                            todo.remove(&p.partition_index);
                        }
                        Err(e) if e.is_stale_metadata() => {
                            last_error = Some(anyhow::Error::new(e).context(format!(
                                "ListOffsets for partition {}",
                                p.partition_index
                            )));
                        }
                        Err(e) => {
                            return Err(anyhow::Error::new(e).context(format!(
                                "ListOffsets for {}-{}",
                                meta.name, p.partition_index
                            )))
                        }
                    }
                }
            }
        }
        if todo.is_empty() {
            return Ok(offsets);
        }
        let error = last_error.unwrap_or_else(|| anyhow!("no answer"));
        Err(error).with_context(|| {
            format!(
                "ListOffsets for topic '{}' partitions {todo:?} failed after {METADATA_RETRIES_MAX} retries",
                meta.name
            )
        })
    }
}
