//! The replica admin APIs: ElectLeaders (preferred leaders back in place,
//! `kafka-leader-election.sh`), DescribeLogDirs (`kafka-log-dirs.sh`) and
//! ListPartitionReassignments (`kafka-reassign-partitions.sh --list`).
//!
//! ElectLeaders may reach any node (the Java admin client sends it to the
//! controller). A partition's leader moves its leadership to the preferred
//! replica itself (the same hand-over as `auto.leader.rebalance.enable`), so
//! the node that got the request does its own partitions and forwards the
//! others, once, to their leaders over the Kafka protocol.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_log_dirs_response::{
    DescribeLogDirsPartition, DescribeLogDirsResult, DescribeLogDirsTopic,
};
use kafka_protocol::messages::elect_leaders_request::TopicPartitions;
use kafka_protocol::messages::elect_leaders_response::{PartitionResult, ReplicaElectionResult};
use kafka_protocol::messages::{
    DescribeLogDirsRequest, DescribeLogDirsResponse, ElectLeadersRequest, ElectLeadersResponse,
    ListPartitionReassignmentsRequest, ListPartitionReassignmentsResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;

use crate::broker::Broker;
use crate::client::connection::{ClientConfig, Connection};
use crate::raft::transfer::{HandOver, Resignation};

/// The client id of an ElectLeaders request one node forwards to another:
/// the receiver elects for the partitions it leads and forwards nothing.
pub const ELECT_FORWARD_CLIENT_ID: &str = "fjord-elect-leaders-forward";

/// Bounds on how long an election waits for the preferred replica to take
/// over (the request's `timeout_ms`, within these).
const ELECTION_WAIT_MIN: Duration = Duration::from_secs(1);
const ELECTION_WAIT_MAX: Duration = Duration::from_secs(30);

/// Kafka's ElectionType: 0 preferred, 1 unclean.
const UNCLEAN: i8 = 1;

/// Each partition's error code (0: elected) and message.
type Outcomes = BTreeMap<(String, i32), (i16, Option<String>)>;

pub async fn elect_leaders(
    broker: &Arc<Broker>,
    version: i16,
    request: ElectLeadersRequest,
    forwarded: bool,
) -> ElectLeadersResponse {
    let wait = Duration::from_millis(u64::try_from(request.timeout_ms).unwrap_or(0))
        .clamp(ELECTION_WAIT_MIN, ELECTION_WAIT_MAX);
    let unclean = version >= 1 && request.election_type == UNCLEAN;
    // Null: every partition of every topic.
    let wanted: Vec<(String, i32)> = match request.topic_partitions {
        Some(topics) => topics
            .into_iter()
            .flat_map(|t| {
                let name = t.topic.to_string();
                t.partitions.into_iter().map(move |p| (name.clone(), p))
            })
            .collect(),
        None => broker
            .metadata
            .topics()
            .into_iter()
            .flat_map(|t| (0..t.partitions).map(move |p| (t.name.clone(), p)))
            .collect(),
    };
    let mut outcomes = Outcomes::new();
    let mut local = Vec::new();
    let mut remote: BTreeMap<i32, Vec<(String, i32)>> = BTreeMap::new();
    for (topic, partition) in wanted {
        let Some(meta) = broker.metadata.topic(&topic) else {
            outcomes.insert(
                (topic, partition),
                (ResponseError::UnknownTopicOrPartition.code(), None),
            );
            continue;
        };
        let replicas = meta.replicas_of(partition);
        let Some(&preferred) = replicas.first() else {
            outcomes.insert(
                (topic, partition),
                (ResponseError::UnknownTopicOrPartition.code(), None),
            );
            continue;
        };
        let view = broker.partition_view(&meta, partition);
        let refusal = if unclean {
            // Raft elects only replicas that hold every committed record:
            // there is never an unclean election to run.
            Some(match view.leader {
                Some(_) => (ResponseError::ElectionNotNeeded.code(), None),
                None => (
                    ResponseError::EligibleLeadersNotAvailable.code(),
                    Some("Fjord elects only replicas that hold every committed record".to_string()),
                ),
            })
        } else if view.leader == Some(preferred) {
            Some((ResponseError::ElectionNotNeeded.code(), None))
        } else if !broker.metadata.is_reachable(preferred) {
            Some((
                ResponseError::PreferredLeaderNotAvailable.code(),
                Some(format!("Preferred replica {preferred} is not available")),
            ))
        } else {
            None
        };
        if let Some(outcome) = refusal {
            outcomes.insert((topic, partition), outcome);
            continue;
        }
        match view.leader {
            Some(leader) if leader == broker.config.node_id => {
                local.push((topic, partition, preferred))
            }
            Some(leader) if !forwarded => {
                remote.entry(leader).or_default().push((topic, partition))
            }
            _ => {
                outcomes.insert(
                    (topic, partition),
                    (
                        ResponseError::NotLeaderOrFollower.code(),
                        Some("The partition has no leader that could hand over now".to_string()),
                    ),
                );
            }
        }
    }

    let elections = local
        .into_iter()
        .map(|(topic, partition, preferred)| async move {
            let outcome = match broker
                .replicas
                .get(&topic, partition)
                .and_then(|p| p.group())
            {
                None => (ResponseError::NotLeaderOrFollower.code(), None),
                Some(group) => match group.resign(HandOver::To(preferred as u64), wait).await {
                    Resignation::Moved { .. } => (0, None),
                    Resignation::NotLeader => (ResponseError::NotLeaderOrFollower.code(), None),
                    Resignation::Failed(why) => {
                        (ResponseError::PreferredLeaderNotAvailable.code(), Some(why))
                    }
                },
            };
            ((topic, partition), outcome)
        });
    let forwards = remote
        .into_iter()
        .map(|(leader, partitions)| forward(broker, leader, partitions, request.timeout_ms));
    let (elected, forwarded) = futures::future::join(
        futures::future::join_all(elections),
        futures::future::join_all(forwards),
    )
    .await;
    outcomes.extend(elected);
    for answers in forwarded {
        outcomes.extend(answers);
    }
    response(outcomes)
}

/// Forwards the election of `partitions` to their leader `leader`; what it
/// answered (or why it could not be asked).
async fn forward(
    broker: &Arc<Broker>,
    leader: i32,
    partitions: Vec<(String, i32)>,
    timeout_ms: i32,
) -> Outcomes {
    let failed = |partitions: &[(String, i32)], why: String| -> Outcomes {
        partitions
            .iter()
            .map(|k| {
                (
                    k.clone(),
                    (ResponseError::NotLeaderOrFollower.code(), Some(why.clone())),
                )
            })
            .collect()
    };
    let Some(address) = broker
        .metadata
        .alive_brokers()
        .into_iter()
        .find(|b| b.id == leader)
        .map(|b| format!("{}:{}", b.host, b.port))
    else {
        return failed(&partitions, format!("Broker {leader} is not available"));
    };
    let mut by_topic: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    for (topic, partition) in &partitions {
        by_topic.entry(topic.clone()).or_default().push(*partition);
    }
    let request = ElectLeadersRequest::default()
        .with_election_type(0)
        .with_timeout_ms(timeout_ms)
        .with_topic_partitions(Some(
            by_topic
                .into_iter()
                .map(|(t, ps)| {
                    TopicPartitions::default()
                        .with_topic(TopicName(StrBytes::from_string(t)))
                        .with_partitions(ps)
                })
                .collect(),
        ));
    let config = ClientConfig {
        client_id: ELECT_FORWARD_CLIENT_ID.to_string(),
        request_timeout: ELECTION_WAIT_MAX + Duration::from_secs(5),
        ..ClientConfig::default()
    };
    let answered = async {
        let mut conn = Connection::connect(&address, &config).await?;
        let version = conn.version_at_most::<ElectLeadersRequest>(2)?;
        conn.send(&request, version).await
    };
    match answered.await {
        Ok(response) => response
            .replica_election_results
            .into_iter()
            .flat_map(|t| {
                let topic = t.topic.to_string();
                t.partition_result.into_iter().map(move |p| {
                    (
                        (topic.clone(), p.partition_id),
                        (p.error_code, p.error_message.map(|m| m.to_string())),
                    )
                })
            })
            .collect(),
        Err(e) => failed(&partitions, format!("Forwarding to broker {leader}: {e:#}")),
    }
}

fn response(outcomes: Outcomes) -> ElectLeadersResponse {
    let mut topics: BTreeMap<String, Vec<PartitionResult>> = BTreeMap::new();
    for ((topic, partition), (code, message)) in outcomes {
        let mut p = PartitionResult::default()
            .with_partition_id(partition)
            .with_error_code(code);
        p.error_message = message.map(StrBytes::from_string);
        topics.entry(topic).or_default().push(p);
    }
    let mut response = ElectLeadersResponse::default();
    response.replica_election_results = topics
        .into_iter()
        .map(|(topic, partitions)| {
            ReplicaElectionResult::default()
                .with_topic(TopicName(StrBytes::from_string(topic)))
                .with_partition_result(partitions)
        })
        .collect();
    response
}

/// This node's log directory and the partitions in it: size on disk and how
/// far the log end is behind the high watermark (Kafka's offset lag).
pub async fn describe_log_dirs(
    broker: &Arc<Broker>,
    version: i16,
    request: DescribeLogDirsRequest,
) -> DescribeLogDirsResponse {
    let wanted: Option<BTreeMap<String, Vec<i32>>> = request.topics.map(|topics| {
        topics
            .into_iter()
            .map(|t| (t.topic.to_string(), t.partitions))
            .collect()
    });
    let b = broker.clone();
    let listed = super::blocking(move || {
        let mut topics: BTreeMap<String, Vec<DescribeLogDirsPartition>> = BTreeMap::new();
        for partition in b.replicas.all() {
            let tp = &partition.tp;
            if let Some(wanted) = &wanted {
                if !wanted
                    .get(&tp.topic)
                    .is_some_and(|ps| ps.contains(&tp.partition))
                {
                    continue;
                }
            }
            if partition.is_offline() {
                continue;
            }
            let lag = (partition.high_watermark() - partition.log_end_offset()).max(0);
            topics.entry(tp.topic.clone()).or_default().push(
                DescribeLogDirsPartition::default()
                    .with_partition_index(tp.partition)
                    .with_partition_size(i64::try_from(partition.size_bytes()).unwrap_or(i64::MAX))
                    .with_offset_lag(lag),
            );
        }
        let space = disk_space(b.replicas.log_dir());
        (topics, space)
    })
    .await;
    let mut result = DescribeLogDirsResult::default().with_log_dir(StrBytes::from_string(
        std::path::absolute(broker.replicas.log_dir())
            .unwrap_or_else(|_| broker.replicas.log_dir().to_path_buf())
            .display()
            .to_string(),
    ));
    match listed {
        Ok((topics, space)) => {
            result.topics = topics
                .into_iter()
                .map(|(name, mut partitions)| {
                    partitions.sort_by_key(|p| p.partition_index);
                    DescribeLogDirsTopic::default()
                        .with_name(TopicName(StrBytes::from_string(name)))
                        .with_partitions(partitions)
                })
                .collect();
            if version >= 4 {
                let (total, usable) = space.unwrap_or((-1, -1));
                result.total_bytes = total;
                result.usable_bytes = usable;
            }
        }
        Err((code, _)) => result.error_code = code.code(),
    }
    DescribeLogDirsResponse::default().with_results(vec![result])
}

/// (total, usable) bytes of the file system holding `dir`.
fn disk_space(dir: &std::path::Path) -> Option<(i64, i64)> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs(3) with a NUL-terminated path and a zeroed struct it fills.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
        return None;
    }
    let block = stat.f_frsize.max(1);
    let total = stat.f_blocks.saturating_mul(block);
    let usable = stat.f_bavail.saturating_mul(block);
    Some((
        i64::try_from(total).unwrap_or(i64::MAX),
        i64::try_from(usable).unwrap_or(i64::MAX),
    ))
}

/// No reassignment is ever under way: replica lists change only when a
/// topic is created or grows.
pub fn list_partition_reassignments(
    _version: i16,
    _request: ListPartitionReassignmentsRequest,
) -> ListPartitionReassignmentsResponse {
    ListPartitionReassignmentsResponse::default()
}
