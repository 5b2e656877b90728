//! Request handlers, one file per API family, like Kafka's KafkaApis.
//!
//! Each handler takes the decoded request and returns the response body; it
//! never fails as a whole: problems become per-topic or per-partition Kafka
//! error codes, which is what clients understand and retry on.

pub mod admin;
pub mod api_versions;
pub mod configs;
pub mod coordinator;
pub mod describe_topic_partitions;
pub mod fetch;
pub mod group;
pub mod leader_hint;
pub mod list_offsets;
pub mod metadata;
pub mod offsets;
pub mod produce;
pub mod producer_id;
pub mod replicas;

use std::sync::Arc;

use kafka_protocol::messages::{RequestKind, ResponseKind};

use crate::broker::Broker;
use crate::protocol::Request;

/// What the connection should do after a request.
pub enum Outcome {
    Respond(Box<ResponseKind>),
    /// `acks=0` produce: the client expects no answer.
    NoResponse,
    /// Close the connection (e.g. a failed `acks=0` produce, so the client notices).
    Close(String),
    /// The request's effects are done (a produce is appended, in request
    /// order) but its answer waits for something slower (the fsync that makes
    /// it durable). The connection may read and start the next produce
    /// meanwhile; answers still go out in request order.
    Later(futures::future::BoxFuture<'static, Outcome>),
}

impl From<ResponseKind> for Outcome {
    fn from(body: ResponseKind) -> Self {
        Outcome::Respond(Box::new(body))
    }
}

/// Routes requests to their handlers.
pub struct KafkaApis {
    broker: Arc<Broker>,
}

impl KafkaApis {
    pub fn new(broker: Arc<Broker>) -> KafkaApis {
        KafkaApis { broker }
    }

    pub fn broker(&self) -> &Arc<Broker> {
        &self.broker
    }

    /// Handles one request.
    pub async fn handle(&self, request: Request, peer: std::net::SocketAddr) -> Outcome {
        let b = &self.broker;
        let v = request.version;
        let client_id = request
            .header
            .client_id
            .as_deref()
            .unwrap_or("")
            .to_string();
        match request.body {
            RequestKind::JoinGroup(r) => {
                let host = format!("/{}", peer.ip());
                ResponseKind::JoinGroup(group::join(b, v, (&client_id, &host), r).await).into()
            }
            RequestKind::SyncGroup(r) => ResponseKind::SyncGroup(group::sync(b, v, r).await).into(),
            RequestKind::Heartbeat(r) => {
                ResponseKind::Heartbeat(group::heartbeat(b, v, r).await).into()
            }
            RequestKind::LeaveGroup(r) => {
                ResponseKind::LeaveGroup(group::leave(b, v, r).await).into()
            }
            RequestKind::DescribeGroups(r) => {
                ResponseKind::DescribeGroups(group::describe(b, v, r)).into()
            }
            RequestKind::ListGroups(r) => ResponseKind::ListGroups(group::list(b, v, r)).into(),
            RequestKind::DeleteGroups(r) => {
                ResponseKind::DeleteGroups(group::delete(b, v, r).await).into()
            }
            RequestKind::OffsetCommit(r) => {
                ResponseKind::OffsetCommit(offsets::commit(b, v, r).await).into()
            }
            RequestKind::OffsetFetch(r) => {
                ResponseKind::OffsetFetch(offsets::fetch(b, v, r)).into()
            }
            RequestKind::OffsetDelete(r) => {
                ResponseKind::OffsetDelete(offsets::delete(b, v, r).await).into()
            }
            RequestKind::ApiVersions(r) => {
                ResponseKind::ApiVersions(api_versions::handle(v, r)).into()
            }
            RequestKind::Metadata(r) => {
                ResponseKind::Metadata(metadata::handle(b, v, r).await).into()
            }
            RequestKind::Produce(r) => produce::handle(b, v, r).await,
            RequestKind::Fetch(r) => ResponseKind::Fetch(fetch::handle(b, v, r).await).into(),
            RequestKind::ListOffsets(r) => {
                ResponseKind::ListOffsets(list_offsets::handle(b, v, r).await).into()
            }
            RequestKind::OffsetForLeaderEpoch(r) => {
                ResponseKind::OffsetForLeaderEpoch(list_offsets::offset_for_leader_epoch(b, v, r))
                    .into()
            }
            RequestKind::InitProducerId(r) => {
                ResponseKind::InitProducerId(producer_id::handle(b, v, r).await).into()
            }
            RequestKind::FindCoordinator(r) => {
                ResponseKind::FindCoordinator(coordinator::find(b, v, r)).into()
            }
            RequestKind::CreateTopics(r) => {
                ResponseKind::CreateTopics(admin::create_topics(b, v, r).await).into()
            }
            RequestKind::DeleteTopics(r) => {
                ResponseKind::DeleteTopics(admin::delete_topics(b, v, r).await).into()
            }
            RequestKind::CreatePartitions(r) => {
                ResponseKind::CreatePartitions(admin::create_partitions(b, v, r).await).into()
            }
            RequestKind::DeleteRecords(r) => {
                ResponseKind::DeleteRecords(admin::delete_records(b, v, r).await).into()
            }
            RequestKind::AddRaftVoter(r) => {
                ResponseKind::AddRaftVoter(admin::add_raft_voter(b, r).await).into()
            }
            RequestKind::DescribeCluster(r) => {
                ResponseKind::DescribeCluster(admin::describe_cluster(b, v, r)).into()
            }
            RequestKind::DescribeConfigs(r) => {
                ResponseKind::DescribeConfigs(configs::describe(b, v, r)).into()
            }
            RequestKind::AlterConfigs(r) => {
                ResponseKind::AlterConfigs(configs::alter(b, v, r).await).into()
            }
            RequestKind::IncrementalAlterConfigs(r) => {
                ResponseKind::IncrementalAlterConfigs(configs::incremental_alter(b, v, r).await)
                    .into()
            }
            RequestKind::ElectLeaders(r) => {
                let forwarded = client_id == replicas::ELECT_FORWARD_CLIENT_ID;
                ResponseKind::ElectLeaders(replicas::elect_leaders(b, v, r, forwarded).await).into()
            }
            RequestKind::DescribeLogDirs(r) => {
                ResponseKind::DescribeLogDirs(replicas::describe_log_dirs(b, v, r).await).into()
            }
            RequestKind::ListPartitionReassignments(r) => ResponseKind::ListPartitionReassignments(
                replicas::list_partition_reassignments(v, r),
            )
            .into(),
            RequestKind::DescribeTopicPartitions(r) => {
                ResponseKind::DescribeTopicPartitions(describe_topic_partitions::handle(b, v, r))
                    .into()
            }
            // `protocol::decode_request` only lets through the APIs in the
            // supported table, so this arm is reached only if the table and
            // this match disagree: close rather than guess an answer.
            _ => Outcome::Close(format!("no handler for {:?}", request.api_key)),
        }
    }
}

/// Runs blocking work (file I/O) off the async workers. A panic inside is
/// reported as a storage error rather than taking the connection task down.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, crate::broker::KafkaError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        tracing::error!(error = %e, "blocking task failed");
        (
            kafka_protocol::error::ResponseError::KafkaStorageError,
            e.to_string(),
        )
    })
}
