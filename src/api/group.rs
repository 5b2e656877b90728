//! Consumer group membership APIs (classic protocol): JoinGroup, SyncGroup,
//! Heartbeat, LeaveGroup, DescribeGroups, ListGroups, DeleteGroups.
//!
//! These handlers only translate between the wire and the coordinator
//! (`coordinator::group_coordinator`), setting each response field only in
//! the versions that carry it.

use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::{
    DeleteGroupsRequest, DeleteGroupsResponse, DescribeGroupsRequest, DescribeGroupsResponse,
    GroupId, HeartbeatRequest, HeartbeatResponse, JoinGroupRequest, JoinGroupResponse,
    LeaveGroupRequest, LeaveGroupResponse, ListGroupsRequest, ListGroupsResponse, SyncGroupRequest,
    SyncGroupResponse,
};
use kafka_protocol::protocol::StrBytes;

use crate::broker::Broker;
use crate::coordinator::group::JoinRequest;

/// Most groups or members one request may name.
const ITEMS_MAX: usize = 10_000;

fn text(s: String) -> StrBytes {
    StrBytes::from_string(s)
}

fn code(e: Option<ResponseError>) -> i16 {
    e.map(|e| e.code()).unwrap_or(0)
}

pub async fn join(
    broker: &Arc<Broker>,
    version: i16,
    client: (&str, &str),
    request: JoinGroupRequest,
) -> JoinGroupResponse {
    let (client_id, client_host) = client;
    let join = JoinRequest {
        member_id: request.member_id.to_string(),
        group_instance_id: if version >= 5 {
            request.group_instance_id.map(|s| s.to_string())
        } else {
            None
        },
        client_id: client_id.to_string(),
        client_host: client_host.to_string(),
        session_timeout_ms: request.session_timeout_ms,
        rebalance_timeout_ms: if version >= 1 {
            request.rebalance_timeout_ms
        } else {
            request.session_timeout_ms
        },
        protocol_type: request.protocol_type.to_string(),
        protocols: request
            .protocols
            .into_iter()
            .take(ITEMS_MAX)
            .map(|p| (p.name.to_string(), p.metadata))
            .collect(),
        require_known_member_id: version >= 4,
    };
    let result = broker.groups.join(broker, &request.group_id, join).await;
    let mut response = JoinGroupResponse::default();
    response.error_code = code(result.error);
    response.generation_id = result.generation_id;
    if version >= 7 {
        response.protocol_type = result.protocol_type.map(text);
        response.protocol_name = result.protocol_name.map(text);
    } else {
        response.protocol_name = Some(text(result.protocol_name.unwrap_or_default()));
    }
    response.leader = text(result.leader);
    response.member_id = text(result.member_id);
    response.members = result
        .members
        .into_iter()
        .map(|(member_id, instance, metadata)| {
            let mut m = JoinGroupResponseMember::default();
            m.member_id = text(member_id);
            if version >= 5 {
                m.group_instance_id = instance.map(text);
            }
            m.metadata = metadata;
            m
        })
        .collect();
    response
}

pub async fn sync(
    broker: &Arc<Broker>,
    version: i16,
    request: SyncGroupRequest,
) -> SyncGroupResponse {
    let instance = if version >= 3 {
        request.group_instance_id.as_ref().map(|s| s.to_string())
    } else {
        None
    };
    let protocol_type = if version >= 5 {
        request.protocol_type.as_ref().map(|s| s.to_string())
    } else {
        None
    };
    let protocol_name = if version >= 5 {
        request.protocol_name.as_ref().map(|s| s.to_string())
    } else {
        None
    };
    let assignments = request
        .assignments
        .into_iter()
        .take(ITEMS_MAX)
        .map(|a| (a.member_id.to_string(), a.assignment))
        .collect();
    let result = broker
        .groups
        .sync(
            broker,
            &request.group_id,
            &request.member_id,
            instance.as_deref(),
            request.generation_id,
            (protocol_type.as_deref(), protocol_name.as_deref()),
            assignments,
        )
        .await;
    let mut response = SyncGroupResponse::default();
    response.error_code = code(result.error);
    if version >= 5 {
        response.protocol_type = result.protocol_type.map(text);
        response.protocol_name = result.protocol_name.map(text);
    }
    response.assignment = result.assignment;
    response
}

pub async fn heartbeat(
    broker: &Arc<Broker>,
    version: i16,
    request: HeartbeatRequest,
) -> HeartbeatResponse {
    let instance = if version >= 3 {
        request.group_instance_id.as_ref().map(|s| s.to_string())
    } else {
        None
    };
    let error = broker
        .groups
        .heartbeat(
            broker,
            &request.group_id,
            &request.member_id,
            instance.as_deref(),
            request.generation_id,
        )
        .await;
    let mut response = HeartbeatResponse::default();
    response.error_code = code(error);
    response
}

pub async fn leave(
    broker: &Arc<Broker>,
    version: i16,
    request: LeaveGroupRequest,
) -> LeaveGroupResponse {
    let members: Vec<(String, Option<String>)> = if version >= 3 {
        request
            .members
            .iter()
            .take(ITEMS_MAX)
            .map(|m| {
                (
                    m.member_id.to_string(),
                    m.group_instance_id.as_ref().map(|s| s.to_string()),
                )
            })
            .collect()
    } else {
        vec![(request.member_id.to_string(), None)]
    };
    let mut response = LeaveGroupResponse::default();
    match broker
        .groups
        .leave(broker, &request.group_id, &members)
        .await
    {
        Ok(errors) => {
            if version >= 3 {
                response.members = members
                    .into_iter()
                    .zip(errors)
                    .map(|((member_id, instance), error)| {
                        let mut m = MemberResponse::default();
                        m.member_id = text(member_id);
                        m.group_instance_id = instance.map(text);
                        m.error_code = code(error);
                        m
                    })
                    .collect();
            } else {
                response.error_code = code(errors.into_iter().next().flatten());
            }
        }
        Err(e) => response.error_code = e.code(),
    }
    response
}

pub fn describe(
    broker: &Broker,
    version: i16,
    request: DescribeGroupsRequest,
) -> DescribeGroupsResponse {
    let mut response = DescribeGroupsResponse::default();
    response.groups = request
        .groups
        .into_iter()
        .take(ITEMS_MAX)
        .map(|group_id| {
            if let Err(e) = broker.groups.coordinates(broker, &group_id) {
                let mut g = DescribedGroup::default();
                g.error_code = e.code();
                g.group_id = group_id;
                return g;
            }
            let d = broker.groups.describe(&group_id);
            let mut g = DescribedGroup::default();
            g.group_state = StrBytes::from_static_str(d.state);
            g.protocol_type = text(d.protocol_type);
            g.protocol_data = text(d.protocol_name);
            g.members = d
                .members
                .into_iter()
                .map(
                    |(member_id, instance, client_id, client_host, metadata, assignment)| {
                        let mut m = DescribedGroupMember::default();
                        m.member_id = text(member_id);
                        if version >= 4 {
                            m.group_instance_id = instance.map(text);
                        }
                        m.client_id = text(client_id);
                        m.client_host = text(client_host);
                        m.member_metadata = metadata;
                        m.member_assignment = assignment;
                        m
                    },
                )
                .collect();
            if version >= 6 && d.state == "Dead" {
                // KIP-1043: v6 reports an unknown group as an error.
                g.error_code = ResponseError::GroupIdNotFound.code();
                g.error_message = Some(text(format!("Group {} not found.", group_id.as_str())));
            }
            // Kafka leaves an unknown (Dead) group's operations unset.
            if version >= 3 && d.state != "Dead" {
                g.authorized_operations = crate::api::admin::acl::when(
                    request.include_authorized_operations,
                    crate::api::admin::acl::GROUP_ALL,
                );
            }
            g.group_id = group_id;
            g
        })
        .collect();
    response
}

pub fn list(broker: &Broker, version: i16, request: ListGroupsRequest) -> ListGroupsResponse {
    let states: Vec<String> = if version >= 4 {
        request
            .states_filter
            .iter()
            .map(|s| s.to_ascii_lowercase())
            .collect()
    } else {
        Vec::new()
    };
    let types: Vec<String> = if version >= 5 {
        request
            .types_filter
            .iter()
            .map(|s| s.to_ascii_lowercase())
            .collect()
    } else {
        Vec::new()
    };
    let mut response = ListGroupsResponse::default();
    response.groups = broker
        .groups
        .list()
        .into_iter()
        .filter(|(_, _, state)| states.is_empty() || states.contains(&state.to_ascii_lowercase()))
        .filter(|_| types.is_empty() || types.iter().any(|t| t == "classic"))
        .map(|(id, protocol_type, state)| {
            let mut g = ListedGroup::default();
            g.group_id = GroupId(text(id));
            g.protocol_type = text(protocol_type);
            if version >= 4 {
                g.group_state = StrBytes::from_static_str(state);
            }
            if version >= 5 {
                g.group_type = StrBytes::from_static_str("classic");
            }
            g
        })
        .collect();
    response
}

pub async fn delete(
    broker: &Arc<Broker>,
    _version: i16,
    request: DeleteGroupsRequest,
) -> DeleteGroupsResponse {
    let mut response = DeleteGroupsResponse::default();
    for group_id in request.groups_names.into_iter().take(ITEMS_MAX) {
        let error = broker.groups.delete_group(broker, &group_id).await;
        let mut r = DeletableGroupResult::default();
        r.group_id = group_id;
        r.error_code = code(error);
        response.results.push(r);
    }
    response
}
