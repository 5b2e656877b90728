//! Consumer group administration as a client speaks it: ListGroups (every
//! broker), and at each group's coordinator DescribeGroups (falling back to
//! ConsumerGroupDescribe for KIP-848 groups), OffsetFetch, OffsetCommit and
//! DeleteGroups.
//!
//! Design decision: all coordinator-bound requests go through one routine,
//! [`Client::send_to_group_coordinators`], which looks coordinators up in a
//! batch, groups the groups by coordinator, and retries (bounded) exactly
//! the groups whose coordinator moved or was still loading. The APIs differ
//! only in how a request is built and how an answer splits per group, so
//! each is two small closures, and the retry rules live in one place.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestGroup;
use kafka_protocol::messages::{
    ConsumerGroupDescribeRequest, DeleteGroupsRequest, DescribeGroupsRequest, GroupId,
    ListGroupsRequest, OffsetCommitRequest, OffsetFetchRequest, TopicName,
};
use kafka_protocol::protocol::{Request, StrBytes};

use crate::client::cluster::{Client, RETRY_BACKOFF};
use crate::client::connection::Connection;
use crate::client::consumer_protocol::{decode_assignment, Assignment, CONSUMER_PROTOCOL_TYPE};
use crate::client::coordinator::CoordinatorType;
use crate::client::error::KafkaError;

/// How often a group request is sent again after the coordinator moved or
/// was loading. Kafka answers COORDINATOR_NOT_AVAILABLE for the first few
/// seconds after `__consumer_offsets` is created on first use, so this is
/// generous, and [`COORDINATOR_WAIT_MAX`] bounds it in time as well.
pub const COORDINATOR_RETRIES_MAX: u32 = 50;
/// Longest we keep retrying coordinator lookups and group requests.
pub const COORDINATOR_WAIT_MAX: Duration = Duration::from_secs(20);
/// Most groups per DescribeGroups / DeleteGroups / OffsetFetch request.
pub const GROUPS_PER_REQUEST_MAX: usize = 100;
/// First OffsetFetch version that takes several groups (KIP-709).
const OFFSET_FETCH_GROUPS_VERSION_MIN: i16 = 8;
/// First OffsetFetch version where a null topic list means "all topics".
const OFFSET_FETCH_ALL_TOPICS_VERSION_MIN: i16 = 2;
/// First ListGroups versions that filter by state (KIP-518) and by type (KIP-848).
const LIST_GROUPS_STATES_VERSION_MIN: i16 = 4;
const LIST_GROUPS_TYPES_VERSION_MIN: i16 = 5;

/// A (topic, partition) pair; tuples sort by topic, then partition, which
/// is the order every group listing prints in.
pub type TopicPartition = (String, i32);

/// One group as ListGroups reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedGroup {
    pub group_id: String,
    /// "consumer" for consumer groups; empty for groups that only store offsets.
    pub protocol_type: String,
    /// Known from ListGroups v4 (e.g. "Stable", "Empty").
    pub state: Option<String>,
    /// Known from ListGroups v5: "classic", "consumer" (KIP-848), "share", ...
    pub group_type: Option<String>,
}

/// What ListGroups found: the groups of every broker that answered, and the
/// brokers that did not (a partial listing must not look complete).
#[derive(Debug, Default)]
pub struct GroupListing {
    /// Sorted by group id.
    pub groups: Vec<ListedGroup>,
    pub broker_errors: Vec<(i32, anyhow::Error)>,
}

/// A group as its coordinator describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupDescription {
    pub group_id: String,
    /// Node id of the coordinator that answered.
    pub coordinator_id: i32,
    /// "Stable", "Empty", "PreparingRebalance", ...; "Dead" for a group the
    /// coordinator does not know (classic DescribeGroups reports no error).
    pub state: String,
    pub protocol_type: String,
    /// The assignor in use ("range", "uniform", ...); empty when none.
    pub protocol: String,
    /// "classic" (JoinGroup/SyncGroup) or "consumer" (KIP-848).
    pub group_type: String,
    pub members: Vec<GroupMember>,
}

/// One member of a described group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMember {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    /// The member's partitions, or why they cannot be shown (a group of
    /// another protocol type, undecodable assignment bytes).
    pub assignment: Result<Assignment, String>,
}

/// A group's committed position in one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedOffset {
    pub offset: i64,
    /// -1 when the committer did not know it.
    pub leader_epoch: i32,
    pub metadata: Option<String>,
}

/// Per partition: the committed offset, or the Kafka error OffsetFetch gave.
pub type CommittedOffsets = BTreeMap<TopicPartition, Result<CommittedOffset, KafkaError>>;

/// Per group: the answer, or the Kafka error for that group.
pub type PerGroup<T> = BTreeMap<String, Result<T, KafkaError>>;

impl Client {
    /// ListGroups on every broker (each knows only the groups it
    /// coordinates), optionally filtered by state (v4+) and type (v5+).
    /// A filter the broker cannot apply is an error rather than silently
    /// ignored, so `--state Empty` never lists a Stable group.
    pub async fn list_groups(
        &mut self,
        states: &[String],
        types: &[String],
    ) -> Result<GroupListing> {
        self.metadata(Some(&[]), false).await?;
        let node_ids: Vec<i32> = self.brokers_known().keys().copied().collect();
        let mut listing = GroupListing::default();
        let mut groups: BTreeMap<String, ListedGroup> = BTreeMap::new();
        for node_id in node_ids {
            match self.list_groups_on(node_id, states, types).await {
                Ok(found) => {
                    for g in found {
                        groups.entry(g.group_id.clone()).or_insert(g);
                    }
                }
                Err(e) => listing.broker_errors.push((node_id, e)),
            }
        }
        listing.groups = groups.into_values().collect();
        Ok(listing)
    }

    async fn list_groups_on(
        &mut self,
        node_id: i32,
        states: &[String],
        types: &[String],
    ) -> Result<Vec<ListedGroup>> {
        let deadline = Instant::now() + COORDINATOR_WAIT_MAX;
        for attempt in 0..=COORDINATOR_RETRIES_MAX {
            if attempt > 0 {
                tokio::time::sleep(RETRY_BACKOFF).await;
            }
            let conn = self.broker(node_id).await?;
            let version = conn.version::<ListGroupsRequest>()?;
            let mut request = ListGroupsRequest::default();
            if !states.is_empty() {
                if version < LIST_GROUPS_STATES_VERSION_MIN {
                    bail!("broker {node_id} speaks ListGroups v{version}; filtering by state needs v{LIST_GROUPS_STATES_VERSION_MIN}");
                }
                request.states_filter = states.iter().cloned().map(StrBytes::from_string).collect();
            }
            if !types.is_empty() {
                if version < LIST_GROUPS_TYPES_VERSION_MIN {
                    bail!("broker {node_id} speaks ListGroups v{version}; filtering by type needs v{LIST_GROUPS_TYPES_VERSION_MIN}");
                }
                request.types_filter = types.iter().cloned().map(StrBytes::from_string).collect();
            }
            let response = conn.send(&request, version).await?;
            match KafkaError::check(response.error_code, None) {
                Ok(()) => {
                    return Ok(response
                        .groups
                        .iter()
                        .map(|g| ListedGroup {
                            group_id: g.group_id.0.as_str().to_owned(),
                            protocol_type: g.protocol_type.as_str().to_owned(),
                            state: (version >= LIST_GROUPS_STATES_VERSION_MIN)
                                .then(|| g.group_state.as_str().to_owned()),
                            group_type: (version >= LIST_GROUPS_TYPES_VERSION_MIN)
                                .then(|| g.group_type.as_str().to_owned()),
                        })
                        .collect())
                }
                Err(e) if e.is_coordinator_moving() && Instant::now() < deadline => continue,
                Err(e) => {
                    return Err(
                        anyhow::Error::new(e).context(format!("ListGroups on broker {node_id}"))
                    )
                }
            }
        }
        bail!(
            "ListGroups on broker {node_id}: still loading after {COORDINATOR_RETRIES_MAX} retries"
        )
    }

    /// Describes each of `groups` at its coordinator. Classic groups come
    /// from DescribeGroups; a KIP-848 group, which DescribeGroups refuses
    /// (GROUP_ID_NOT_FOUND, "not a classic group"), is asked again with
    /// ConsumerGroupDescribe when the broker speaks it.
    pub async fn describe_groups(
        &mut self,
        groups: &[String],
    ) -> Result<PerGroup<GroupDescription>> {
        let mut described = self
            .send_to_group_coordinators(
                groups,
                |_| GROUPS_PER_REQUEST_MAX,
                |batch, _| {
                    Ok(DescribeGroupsRequest::default()
                        .with_groups(batch.iter().map(|g| group_id(g)).collect()))
                },
                |response: kafka_protocol::messages::DescribeGroupsResponse, _, node_id| {
                    Ok(response
                        .groups
                        .into_iter()
                        .map(|g| {
                            let message = g.error_message.as_ref().map(StrBytes::as_str);
                            let answer = KafkaError::check(g.error_code, message)
                                .map(|()| classic_description(&g, node_id));
                            (g.group_id.0.as_str().to_owned(), answer)
                        })
                        .collect())
                },
            )
            .await?;
        let not_classic: Vec<String> = described
            .iter()
            .filter(|(_, d)| matches!(d, Err(e) if e.code == KafkaError::GROUP_ID_NOT_FOUND))
            .map(|(g, _)| g.clone())
            .collect();
        if not_classic.is_empty() {
            return Ok(described);
        }
        let speaks_consumer_describe = self
            .any_broker()
            .await?
            .broker_versions::<ConsumerGroupDescribeRequest>()
            .is_some();
        if speaks_consumer_describe {
            let consumer_groups = self
                .send_to_group_coordinators(
                    &not_classic,
                    |_| GROUPS_PER_REQUEST_MAX,
                    |batch, _| {
                        Ok(ConsumerGroupDescribeRequest::default()
                            .with_group_ids(batch.iter().map(|g| group_id(g)).collect()))
                    },
                    |response: kafka_protocol::messages::ConsumerGroupDescribeResponse,
                     _,
                     node_id| {
                        Ok(response
                            .groups
                            .into_iter()
                            .map(|g| {
                                let message = g.error_message.as_ref().map(StrBytes::as_str);
                                let answer = KafkaError::check(g.error_code, message)
                                    .map(|()| consumer_group_description(&g, node_id));
                                (g.group_id.0.as_str().to_owned(), answer)
                            })
                            .collect())
                    },
                )
                .await?;
            for (group, answer) in consumer_groups {
                // Still not found: keep DescribeGroups' answer, which says
                // why in classic terms.
                if answer.is_ok() {
                    described.insert(group, answer);
                }
            }
        }
        Ok(described)
    }

    /// The offsets `group` has committed, for every partition it committed
    /// to (OffsetFetch with a null topic list).
    pub async fn fetch_committed_offsets(&mut self, group: &str) -> Result<CommittedOffsets> {
        let groups = [group.to_owned()];
        let mut answers = self
            .send_to_group_coordinators(
                &groups,
                |version| if version >= OFFSET_FETCH_GROUPS_VERSION_MIN { GROUPS_PER_REQUEST_MAX } else { 1 },
                |batch, version| {
                    if version < OFFSET_FETCH_ALL_TOPICS_VERSION_MIN {
                        bail!("OffsetFetch v{version} cannot ask for all topics; the broker is too old");
                    }
                    let mut request = OffsetFetchRequest::default();
                    if version >= OFFSET_FETCH_GROUPS_VERSION_MIN {
                        request.groups = batch
                            .iter()
                            .map(|g| OffsetFetchRequestGroup::default().with_group_id(group_id(g)).with_topics(None))
                            .collect();
                    } else {
                        let [only] = batch else {
                            bail!("OffsetFetch v{version} takes one group, not {}", batch.len());
                        };
                        request.group_id = group_id(only);
                        request.topics = None;
                    }
                    Ok(request)
                },
                |response: kafka_protocol::messages::OffsetFetchResponse, version, _| {
                    Ok(split_offset_fetch(response, version, group))
                },
            )
            .await?;
        let answer = answers
            .remove(group)
            .ok_or_else(|| anyhow!("OffsetFetch gave no answer for group '{group}'"))?;
        answer.with_context(|| format!("OffsetFetch for group '{group}'"))
    }

    /// Commits `offsets` for `group` as an administrator: generation -1 and
    /// no member id, which a coordinator accepts only while the group has
    /// no members (it answers e.g. UNKNOWN_MEMBER_ID otherwise). Returns the
    /// error of each partition the coordinator refused.
    pub async fn commit_offsets_as_admin(
        &mut self,
        group: &str,
        offsets: &BTreeMap<TopicPartition, i64>,
    ) -> Result<BTreeMap<TopicPartition, KafkaError>> {
        let groups = [group.to_owned()];
        let mut by_topic: BTreeMap<&str, Vec<OffsetCommitRequestPartition>> = BTreeMap::new();
        for ((topic, partition), offset) in offsets {
            by_topic.entry(topic.as_str()).or_default().push(
                OffsetCommitRequestPartition::default()
                    .with_partition_index(*partition)
                    .with_committed_offset(*offset),
            );
        }
        let mut answers = self
            .send_to_group_coordinators(
                &groups,
                |_| 1,
                |_, _| {
                    Ok(OffsetCommitRequest::default()
                        .with_group_id(group_id(group))
                        .with_generation_id_or_member_epoch(-1)
                        .with_member_id(StrBytes::from_static_str(""))
                        .with_topics(
                            by_topic
                                .iter()
                                .map(|(topic, partitions)| {
                                    OffsetCommitRequestTopic::default()
                                        .with_name(TopicName(StrBytes::from_string(
                                            (*topic).to_owned(),
                                        )))
                                        .with_partitions(partitions.clone())
                                })
                                .collect(),
                        ))
                },
                |response: kafka_protocol::messages::OffsetCommitResponse, _, _| {
                    let mut refused = BTreeMap::new();
                    for topic in &response.topics {
                        for p in &topic.partitions {
                            if let Some(e) = KafkaError::from_code(p.error_code, None) {
                                // The coordinator moved: nothing was written,
                                // so the whole commit is retried elsewhere.
                                if e.is_coordinator_moving() {
                                    return Ok(vec![(group.to_owned(), Err(e))]);
                                }
                                refused.insert(
                                    (topic.name.0.as_str().to_owned(), p.partition_index),
                                    e,
                                );
                            }
                        }
                    }
                    Ok(vec![(group.to_owned(), Ok(refused))])
                },
            )
            .await?;
        let answer = answers
            .remove(group)
            .ok_or_else(|| anyhow!("OffsetCommit gave no answer for group '{group}'"))?;
        answer.with_context(|| format!("OffsetCommit for group '{group}'"))
    }

    /// Deletes `groups` (DeleteGroups at each coordinator); per group, the
    /// error the coordinator gave, e.g. NON_EMPTY_GROUP or GROUP_ID_NOT_FOUND.
    pub async fn delete_groups(&mut self, groups: &[String]) -> Result<PerGroup<()>> {
        self.send_to_group_coordinators(
            groups,
            |_| GROUPS_PER_REQUEST_MAX,
            |batch, _| {
                Ok(DeleteGroupsRequest::default()
                    .with_groups_names(batch.iter().map(|g| group_id(g)).collect()))
            },
            |response: kafka_protocol::messages::DeleteGroupsResponse, _, _| {
                Ok(response
                    .results
                    .iter()
                    .map(|r| {
                        (
                            r.group_id.0.as_str().to_owned(),
                            KafkaError::check(r.error_code, None),
                        )
                    })
                    .collect())
            },
        )
        .await
    }

    /// The connection to a coordinator FindCoordinator named, refreshing
    /// the broker list first if the node is new to us.
    async fn coordinator_connection(&mut self, node_id: i32) -> Result<&mut Connection> {
        if !self.brokers_known().contains_key(&node_id) {
            self.metadata(Some(&[]), false).await?;
        }
        self.broker(node_id).await
    }

    /// Sends request `R` for `groups` to their coordinators: `build` makes a
    /// request for a batch of at most `batch_max(version)` groups, `split`
    /// cuts the response into per-group answers (given the coordinator's
    /// node id). Groups whose coordinator moved or was loading are looked
    /// up and sent again, within [`COORDINATOR_RETRIES_MAX`] and
    /// [`COORDINATOR_WAIT_MAX`]; other Kafka errors are final answers.
    async fn send_to_group_coordinators<R, T>(
        &mut self,
        groups: &[String],
        batch_max: impl Fn(i16) -> usize,
        build: impl Fn(&[String], i16) -> Result<R>,
        split: impl Fn(R::Response, i16, i32) -> Result<Vec<(String, Result<T, KafkaError>)>>,
    ) -> Result<PerGroup<T>>
    where
        R: Request,
    {
        let deadline = Instant::now() + COORDINATOR_WAIT_MAX;
        let mut pending: BTreeSet<String> = groups.iter().cloned().collect();
        let mut answered: PerGroup<T> = BTreeMap::new();
        let mut last_error: Option<anyhow::Error> = None;
        for attempt in 0..=COORDINATOR_RETRIES_MAX {
            if pending.is_empty() || (attempt > 0 && Instant::now() >= deadline) {
                break;
            }
            if attempt > 0 {
                tokio::time::sleep(RETRY_BACKOFF).await;
            }
            let keys: Vec<String> = pending.iter().cloned().collect();
            let lookup = match self.find_coordinators(CoordinatorType::Group, &keys).await {
                Ok(lookup) => lookup,
                Err(e) => {
                    last_error = Some(e.context("FindCoordinator"));
                    continue;
                }
            };
            let mut by_coordinator: BTreeMap<i32, Vec<String>> = BTreeMap::new();
            for (group, answer) in lookup {
                match answer {
                    Ok(c) => by_coordinator.entry(c.node_id).or_default().push(group),
                    Err(e) if e.is_coordinator_moving() => last_error = Some(e.into()),
                    Err(e) => {
                        pending.remove(&group);
                        answered.insert(group, Err(e));
                    }
                }
            }
            for (node_id, batch) in by_coordinator {
                let conn = match self.coordinator_connection(node_id).await {
                    Ok(conn) => conn,
                    Err(e) => {
                        last_error = Some(e);
                        continue;
                    }
                };
                let version = conn.version::<R>()?;
                let per_request = batch_max(version).clamp(1, GROUPS_PER_REQUEST_MAX);
                for chunk in batch.chunks(per_request) {
                    let request = build(chunk, version)?;
                    let response = match conn.send(&request, version).await {
                        Ok(response) => response,
                        Err(e) => {
                            last_error = Some(e);
                            break;
                        }
                    };
                    for (group, answer) in split(response, version, node_id)? {
                        if !pending.contains(&group) {
                            continue;
                        }
                        match answer {
                            Err(e) if e.is_coordinator_moving() => last_error = Some(e.into()),
                            answer => {
                                pending.remove(&group);
                                answered.insert(group, answer);
                            }
                        }
                    }
                }
            }
        }
        if pending.is_empty() {
            return Ok(answered);
        }
        match last_error.map(|e| e.downcast::<KafkaError>()) {
            // Still moving at the end: that is each group's answer.
            Some(Ok(kafka_error)) => {
                for group in pending {
                    answered.insert(group, Err(kafka_error.clone()));
                }
                Ok(answered)
            }
            Some(Err(e)) => Err(e.context(format!("no answer for groups {pending:?}"))),
            None => bail!("no answer for groups {pending:?}"),
        }
    }
}

fn group_id(group: &str) -> GroupId {
    GroupId(StrBytes::from_string(group.to_owned()))
}

fn classic_description(
    g: &kafka_protocol::messages::describe_groups_response::DescribedGroup,
    coordinator_id: i32,
) -> GroupDescription {
    let protocol_type = g.protocol_type.as_str().to_owned();
    let members = g
        .members
        .iter()
        .map(|m| GroupMember {
            member_id: m.member_id.as_str().to_owned(),
            group_instance_id: m.group_instance_id.as_ref().map(|s| s.as_str().to_owned()),
            client_id: m.client_id.as_str().to_owned(),
            client_host: m.client_host.as_str().to_owned(),
            assignment: if protocol_type == CONSUMER_PROTOCOL_TYPE {
                decode_assignment(&m.member_assignment).map_err(|e| format!("{e:#}"))
            } else {
                Err(format!(
                    "protocol type '{protocol_type}' is not the consumer protocol"
                ))
            },
        })
        .collect();
    GroupDescription {
        group_id: g.group_id.0.as_str().to_owned(),
        coordinator_id,
        state: g.group_state.as_str().to_owned(),
        protocol_type,
        protocol: g.protocol_data.as_str().to_owned(),
        group_type: "classic".to_owned(),
        members,
    }
}

fn consumer_group_description(
    g: &kafka_protocol::messages::consumer_group_describe_response::DescribedGroup,
    coordinator_id: i32,
) -> GroupDescription {
    let members = g
        .members
        .iter()
        .map(|m| {
            let mut assignment = Assignment::new();
            for tp in &m.assignment.topic_partitions {
                assignment
                    .entry(tp.topic_name.0.as_str().to_owned())
                    .or_default()
                    .extend(&tp.partitions);
            }
            for partitions in assignment.values_mut() {
                partitions.sort_unstable();
                partitions.dedup();
            }
            GroupMember {
                member_id: m.member_id.as_str().to_owned(),
                group_instance_id: m.instance_id.as_ref().map(|s| s.as_str().to_owned()),
                client_id: m.client_id.as_str().to_owned(),
                client_host: m.client_host.as_str().to_owned(),
                assignment: Ok(assignment),
            }
        })
        .collect();
    GroupDescription {
        group_id: g.group_id.0.as_str().to_owned(),
        coordinator_id,
        // ConsumerGroupDescribe spells states in lower case ("stable");
        // print them the way DescribeGroups and the Kafka tool do.
        state: capitalize(g.group_state.as_str()),
        protocol_type: CONSUMER_PROTOCOL_TYPE.to_owned(),
        protocol: g.assignor_name.as_str().to_owned(),
        group_type: "consumer".to_owned(),
        members,
    }
}

fn capitalize(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// One group's answer out of an OffsetFetch response of any version.
fn split_offset_fetch(
    response: kafka_protocol::messages::OffsetFetchResponse,
    version: i16,
    asked: &str,
) -> Vec<(String, Result<CommittedOffsets, KafkaError>)> {
    let partition = |topic: &str,
                     index: i32,
                     offset: i64,
                     epoch: i32,
                     metadata: &Option<StrBytes>,
                     code: i16| {
        let answer = KafkaError::check(code, None).map(|()| CommittedOffset {
            offset,
            leader_epoch: epoch,
            metadata: metadata.as_ref().map(|m| m.as_str().to_owned()),
        });
        ((topic.to_owned(), index), answer)
    };
    // A partition without a commit comes back with offset -1; it has no
    // position, so it is left out like the Java admin client does.
    let committed = |answer: &(TopicPartition, Result<CommittedOffset, KafkaError>)| !matches!(&answer.1, Ok(c) if c.offset < 0);
    if version >= OFFSET_FETCH_GROUPS_VERSION_MIN {
        return response
            .groups
            .iter()
            .map(|g| {
                let answer = KafkaError::check(g.error_code, None).map(|()| {
                    g.topics
                        .iter()
                        .flat_map(|t| {
                            t.partitions.iter().map(move |p| {
                                partition(
                                    t.name.0.as_str(),
                                    p.partition_index,
                                    p.committed_offset,
                                    p.committed_leader_epoch,
                                    &p.metadata,
                                    p.error_code,
                                )
                            })
                        })
                        .filter(committed)
                        .collect()
                });
                (g.group_id.0.as_str().to_owned(), answer)
            })
            .collect();
    }
    let answer = KafkaError::check(response.error_code, None).map(|()| {
        response
            .topics
            .iter()
            .flat_map(|t| {
                t.partitions.iter().map(move |p| {
                    partition(
                        t.name.0.as_str(),
                        p.partition_index,
                        p.committed_offset,
                        p.committed_leader_epoch,
                        &p.metadata,
                        p.error_code,
                    )
                })
            })
            .filter(committed)
            .collect()
    });
    vec![(asked.to_owned(), answer)]
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::offset_fetch_response::{
        OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
        OffsetFetchResponseTopic, OffsetFetchResponseTopics,
    };
    use kafka_protocol::messages::OffsetFetchResponse;

    fn topic(name: &str) -> TopicName {
        TopicName(StrBytes::from_string(name.to_owned()))
    }

    #[test]
    fn offset_fetch_answers_read_the_same_in_old_and_new_layouts() {
        let old =
            OffsetFetchResponse::default().with_topics(vec![OffsetFetchResponseTopic::default()
                .with_name(topic("t"))
                .with_partitions(vec![
                    OffsetFetchResponsePartition::default()
                        .with_partition_index(0)
                        .with_committed_offset(12),
                    OffsetFetchResponsePartition::default()
                        .with_partition_index(1)
                        .with_committed_offset(-1),
                ])]);
        let new =
            OffsetFetchResponse::default().with_groups(vec![OffsetFetchResponseGroup::default()
                .with_group_id(group_id("g"))
                .with_topics(vec![OffsetFetchResponseTopics::default()
                    .with_name(topic("t"))
                    .with_partitions(vec![
                        OffsetFetchResponsePartitions::default()
                            .with_partition_index(0)
                            .with_committed_offset(12),
                        OffsetFetchResponsePartitions::default()
                            .with_partition_index(1)
                            .with_committed_offset(-1),
                    ])])]);
        let expected = CommittedOffsets::from([(
            ("t".to_owned(), 0),
            Ok(CommittedOffset {
                offset: 12,
                leader_epoch: -1,
                metadata: Some(String::new()),
            }),
        )]);
        for (response, version) in [(old, 7), (new, 8)] {
            let answers = split_offset_fetch(response, version, "g");
            assert_eq!(answers, vec![("g".to_owned(), Ok(expected.clone()))]);
        }
    }

    #[test]
    fn offset_fetch_group_errors_are_per_group() {
        let old = OffsetFetchResponse::default().with_error_code(KafkaError::NOT_COORDINATOR);
        let answers = split_offset_fetch(old, 5, "g");
        assert_eq!(answers.len(), 1);
        assert!(answers[0].1.as_ref().unwrap_err().is_coordinator_moving());
    }

    #[test]
    fn consumer_group_states_print_like_classic_ones() {
        assert_eq!(capitalize("stable"), "Stable");
        assert_eq!(capitalize(""), "");
    }
}
