//! One consumer group's state machine (the classic rebalance protocol), like
//! Kafka's GroupMetadata + GroupCoordinator pair.
//!
//! The design decision: this module is pure. It never reads a clock, never
//! sleeps and never touches the disk; every operation takes `now_ms` (a
//! monotonic millisecond count) and returns what must happen next
//! ([`Effects`]: metadata to persist, sync answers that may only go out once it
//! is persisted). Deferred answers (a JoinGroup waiting for the rest of the
//! group) are `oneshot` senders stored with the member and completed by a
//! later operation or by [`Group::on_timer`]. That keeps every transition
//! testable with a fake clock, and leaves one scheduler (in the coordinator)
//! to drive all timers of all groups.
//!
//! States: Empty → PreparingRebalance → CompletingRebalance → Stable, back to
//! PreparingRebalance on any membership change, Empty when the last member
//! leaves, Dead when the group is deleted.

use std::collections::{BTreeMap, HashMap, HashSet};

use bytes::Bytes;
use indexmap::IndexMap;
use kafka_protocol::error::ResponseError;
use tokio::sync::oneshot;

/// Limits and timeouts of the group coordinator (Kafka's names and defaults).
#[derive(Clone, Debug)]
pub struct GroupConfig {
    /// `group.min.session.timeout.ms`
    pub min_session_timeout_ms: i32,
    /// `group.max.session.timeout.ms`
    pub max_session_timeout_ms: i32,
    /// `group.initial.rebalance.delay.ms`
    pub initial_rebalance_delay_ms: i32,
    /// `group.max.size`
    pub max_size: usize,
}

impl Default for GroupConfig {
    fn default() -> Self {
        GroupConfig {
            min_session_timeout_ms: 6_000,
            max_session_timeout_ms: 1_800_000,
            initial_rebalance_delay_ms: 3_000,
            max_size: 10_000,
        }
    }
}

/// How long a member that was told MEMBER_ID_REQUIRED, or that joined an
/// empty group, may take to come back (Kafka's new-member join timeout).
pub const NEW_MEMBER_JOIN_TIMEOUT_MS: i64 = 300_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupState {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
    Dead,
}

impl GroupState {
    /// Kafka's name, as DescribeGroups and ListGroups report it.
    pub fn name(&self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
            GroupState::Dead => "Dead",
        }
    }
}

/// A JoinGroup request, as the state machine needs it.
#[derive(Clone, Debug)]
pub struct JoinRequest {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    pub protocol_type: String,
    pub protocols: Vec<(String, Bytes)>,
    /// v4+: a new dynamic member must first be given an id (MEMBER_ID_REQUIRED).
    pub require_known_member_id: bool,
}

/// The answer to a JoinGroup.
#[derive(Clone, Debug, PartialEq)]
pub struct JoinResult {
    pub error: Option<ResponseError>,
    pub generation_id: i32,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub leader: String,
    pub member_id: String,
    /// Only the leader gets the members and their metadata.
    pub members: Vec<(String, Option<String>, Bytes)>,
}

impl JoinResult {
    fn error(error: ResponseError, member_id: &str) -> JoinResult {
        JoinResult {
            error: Some(error),
            generation_id: -1,
            protocol_type: None,
            protocol_name: None,
            leader: String::new(),
            member_id: member_id.to_string(),
            members: Vec::new(),
        }
    }
}

/// The answer to a SyncGroup.
#[derive(Clone, Debug, PartialEq)]
pub struct SyncResult {
    pub error: Option<ResponseError>,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub assignment: Bytes,
}

impl SyncResult {
    fn error(error: ResponseError) -> SyncResult {
        SyncResult {
            error: Some(error),
            protocol_type: None,
            protocol_name: None,
            assignment: Bytes::new(),
        }
    }
}

pub type JoinWaiter = oneshot::Sender<JoinResult>;
pub type SyncWaiter = oneshot::Sender<SyncResult>;

/// What the caller must do after an operation.
#[derive(Default)]
pub struct Effects {
    /// The group's metadata changed in a way that must be made durable.
    pub persist_group: bool,
    /// SyncGroup answers to send once the metadata is durable.
    pub syncs_after_persist: Vec<(SyncWaiter, SyncResult)>,
}

impl Effects {
    fn merge(&mut self, other: Effects) {
        self.persist_group |= other.persist_group;
        self.syncs_after_persist.extend(other.syncs_after_persist);
    }
}

/// One member of a group.
pub struct Member {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    pub protocol_type: String,
    pub protocols: Vec<(String, Bytes)>,
    pub assignment: Bytes,
    join_waiter: Option<JoinWaiter>,
    sync_waiter: Option<SyncWaiter>,
    heartbeat_deadline_ms: i64,
}

impl Member {
    /// The metadata this member sent for `protocol`.
    pub fn metadata(&self, protocol: &str) -> Bytes {
        self.protocols
            .iter()
            .find(|(name, _)| name == protocol)
            .map(|(_, m)| m.clone())
            .unwrap_or_default()
    }
}

/// A committed offset.
#[derive(Clone, Debug, PartialEq)]
pub struct CommittedOffset {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: String,
    /// Wall-clock time of the commit (persisted; drives expiry).
    pub commit_timestamp_ms: i64,
}

/// One consumer group.
pub struct Group {
    pub group_id: String,
    pub state: GroupState,
    pub generation_id: i32,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub leader_id: Option<String>,
    /// In join order: the first member becomes leader when none is left.
    pub members: IndexMap<String, Member>,
    /// Members told MEMBER_ID_REQUIRED, with the deadline to come back.
    pending_members: HashMap<String, i64>,
    /// `group.instance.id` -> member id.
    static_members: HashMap<String, String>,
    /// Members that have not sent SyncGroup since the join completed.
    pending_sync: HashSet<String>,
    /// PreparingRebalance: when the join completes anyway.
    rebalance_deadline_ms: Option<i64>,
    /// Initial delayed join: how much longer the delay may still be extended.
    initial_delay_remaining_ms: Option<i64>,
    /// Whether a member joined since the initial delay was last armed.
    joined_during_delay: bool,
    /// CompletingRebalance: when members that never synced are removed.
    sync_deadline_ms: Option<i64>,
    /// Wall-clock time the group entered its state (persisted; offset expiry).
    pub state_timestamp_ms: i64,
    pub offsets: BTreeMap<(String, i32), CommittedOffset>,
    config: GroupConfig,
    member_id_counter: u64,
}

impl Group {
    pub fn new(group_id: &str, config: GroupConfig, wall_now_ms: i64) -> Group {
        Group {
            group_id: group_id.to_string(),
            state: GroupState::Empty,
            generation_id: 0,
            protocol_type: None,
            protocol_name: None,
            leader_id: None,
            members: IndexMap::new(),
            pending_members: HashMap::new(),
            static_members: HashMap::new(),
            pending_sync: HashSet::new(),
            rebalance_deadline_ms: None,
            initial_delay_remaining_ms: None,
            joined_during_delay: false,
            sync_deadline_ms: None,
            state_timestamp_ms: wall_now_ms,
            offsets: BTreeMap::new(),
            config,
            member_id_counter: 0,
        }
    }

    /// Restores a group from its persisted metadata (Stable if it has members,
    /// else Empty). Members get a fresh session to heartbeat in.
    #[allow(clippy::too_many_arguments)]
    pub fn restore(
        group_id: &str,
        config: GroupConfig,
        generation_id: i32,
        protocol_type: Option<String>,
        protocol_name: Option<String>,
        leader_id: Option<String>,
        state_timestamp_ms: i64,
        members: Vec<RestoredMember>,
        now_ms: i64,
    ) -> Group {
        let mut group = Group::new(group_id, config, state_timestamp_ms);
        group.generation_id = generation_id;
        group.protocol_type = protocol_type;
        group.protocol_name = protocol_name.clone();
        group.leader_id = leader_id;
        for m in members {
            if let Some(instance) = &m.group_instance_id {
                group
                    .static_members
                    .insert(instance.clone(), m.member_id.clone());
            }
            let protocols = match &protocol_name {
                Some(name) => vec![(name.clone(), m.subscription)],
                None => Vec::new(),
            };
            group.members.insert(
                m.member_id.clone(),
                Member {
                    member_id: m.member_id,
                    group_instance_id: m.group_instance_id,
                    client_id: m.client_id,
                    client_host: m.client_host,
                    session_timeout_ms: m.session_timeout_ms,
                    rebalance_timeout_ms: m.rebalance_timeout_ms,
                    protocol_type: group.protocol_type.clone().unwrap_or_default(),
                    protocols,
                    assignment: m.assignment,
                    join_waiter: None,
                    sync_waiter: None,
                    heartbeat_deadline_ms: now_ms + i64::from(m.session_timeout_ms),
                },
            );
        }
        group.state = if group.members.is_empty() {
            GroupState::Empty
        } else {
            GroupState::Stable
        };
        group
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty() && self.pending_members.is_empty()
    }

    /// The earliest time [`Group::on_timer`] has something to do.
    pub fn next_deadline_ms(&self) -> Option<i64> {
        let keep_alive = |m: &Member| self.keeps_alive(m);
        self.members
            .values()
            .filter(|m| !keep_alive(m))
            .map(|m| m.heartbeat_deadline_ms)
            .chain(self.pending_members.values().copied())
            .chain(self.rebalance_deadline_ms)
            .chain(self.sync_deadline_ms)
            .min()
    }

    /// A member waiting for the group's answer is not expected to heartbeat.
    fn keeps_alive(&self, member: &Member) -> bool {
        (self.state == GroupState::PreparingRebalance && member.join_waiter.is_some())
            || (self.state == GroupState::CompletingRebalance && member.sync_waiter.is_some())
    }

    /// Whether the group accepts these protocols (Kafka's supportsProtocols).
    fn supports_protocols(&self, protocol_type: &str, protocols: &[(String, Bytes)]) -> bool {
        if protocol_type.is_empty() || protocols.is_empty() {
            return false;
        }
        if self.members.is_empty() {
            return true;
        }
        if self.protocol_type.as_deref() != Some(protocol_type) {
            return false;
        }
        let candidates = self.candidate_protocols();
        protocols.iter().any(|(name, _)| candidates.contains(name))
    }

    /// Protocols every current member supports.
    fn candidate_protocols(&self) -> HashSet<String> {
        let mut members = self.members.values();
        let Some(first) = members.next() else {
            return HashSet::new();
        };
        let mut set: HashSet<String> = first.protocols.iter().map(|(n, _)| n.clone()).collect();
        for m in members {
            let theirs: HashSet<&String> = m.protocols.iter().map(|(n, _)| n).collect();
            set.retain(|n| theirs.contains(n));
        }
        set
    }

    /// Picks the protocol by vote: each member votes for its most preferred
    /// candidate; the most votes win (ties: the earliest member's preference).
    fn select_protocol(&self) -> Option<String> {
        let candidates = self.candidate_protocols();
        let mut votes: IndexMap<String, usize> = IndexMap::new();
        for m in self.members.values() {
            if let Some((name, _)) = m.protocols.iter().find(|(n, _)| candidates.contains(n)) {
                *votes.entry(name.clone()).or_default() += 1;
            }
        }
        let best = votes.values().copied().max()?;
        votes.into_iter().find(|(_, v)| *v == best).map(|(n, _)| n)
    }

    fn new_member_id(&mut self, prefix: &str) -> String {
        self.member_id_counter += 1;
        format!("{prefix}-{}", uuid::Uuid::new_v4())
    }

    fn max_rebalance_timeout_ms(&self) -> i64 {
        self.members
            .values()
            .map(|m| i64::from(m.rebalance_timeout_ms))
            .max()
            .unwrap_or(0)
    }

    /// Handles a JoinGroup. The answer goes to `waiter`, now or later.
    pub fn join(&mut self, now_ms: i64, request: JoinRequest, waiter: JoinWaiter) -> Effects {
        let reply = |waiter: JoinWaiter, e: ResponseError| {
            let _ = waiter.send(JoinResult::error(e, &request.member_id));
        };
        if self.state == GroupState::Dead {
            reply(waiter, ResponseError::CoordinatorNotAvailable);
            return Effects::default();
        }
        if request.session_timeout_ms < self.config.min_session_timeout_ms
            || request.session_timeout_ms > self.config.max_session_timeout_ms
        {
            reply(waiter, ResponseError::InvalidSessionTimeout);
            return Effects::default();
        }
        if !self.supports_protocols(&request.protocol_type, &request.protocols) {
            reply(waiter, ResponseError::InconsistentGroupProtocol);
            return Effects::default();
        }
        if request.member_id.is_empty() {
            self.join_unknown_member(now_ms, request, waiter)
        } else {
            self.join_known_member(now_ms, request, waiter)
        }
    }

    fn join_unknown_member(
        &mut self,
        now_ms: i64,
        request: JoinRequest,
        waiter: JoinWaiter,
    ) -> Effects {
        if let Some(instance) = request.group_instance_id.clone() {
            if let Some(old_id) = self.static_members.get(&instance).cloned() {
                return self.replace_static_member(now_ms, &old_id, request, waiter);
            }
        }
        if self.members.len() + self.pending_members.len() >= self.config.max_size {
            let _ = waiter.send(JoinResult::error(ResponseError::GroupMaxSizeReached, ""));
            return Effects::default();
        }
        let prefix = match &request.group_instance_id {
            Some(instance) => instance.clone(),
            None if request.client_id.is_empty() => "member".to_string(),
            None => request.client_id.clone(),
        };
        let member_id = self.new_member_id(&prefix);
        if request.group_instance_id.is_none() && request.require_known_member_id {
            // KIP-394: the client must come back with this id, so a client
            // that times out and retries does not leave a ghost member.
            self.pending_members.insert(
                member_id.clone(),
                now_ms + i64::from(request.session_timeout_ms),
            );
            let _ = waiter.send(JoinResult::error(
                ResponseError::MemberIdRequired,
                &member_id,
            ));
            return Effects::default();
        }
        self.add_member_and_rebalance(now_ms, member_id, request, waiter)
    }

    fn join_known_member(
        &mut self,
        now_ms: i64,
        request: JoinRequest,
        waiter: JoinWaiter,
    ) -> Effects {
        let member_id = request.member_id.clone();
        if let Some(instance) = &request.group_instance_id {
            match self.static_members.get(instance) {
                Some(current) if *current != member_id => {
                    let _ = waiter.send(JoinResult::error(
                        ResponseError::FencedInstanceId,
                        &member_id,
                    ));
                    return Effects::default();
                }
                _ => {}
            }
        }
        if !self.members.contains_key(&member_id) {
            if self.pending_members.remove(&member_id).is_some() {
                return self.add_member_and_rebalance(now_ms, member_id, request, waiter);
            }
            let _ = waiter.send(JoinResult::error(
                ResponseError::UnknownMemberId,
                &member_id,
            ));
            return Effects::default();
        }
        match self.state {
            GroupState::PreparingRebalance => {
                self.update_member(now_ms, &member_id, &request, Some(waiter));
                self.maybe_complete_join(now_ms)
            }
            GroupState::CompletingRebalance | GroupState::Stable => {
                let unchanged = self
                    .members
                    .get(&member_id)
                    .is_some_and(|m| m.protocols == request.protocols);
                let is_leader = self.leader_id.as_deref() == Some(member_id.as_str());
                if unchanged && !(self.state == GroupState::Stable && is_leader) {
                    // Nothing changed (e.g. the member lost our answer): give
                    // it the current generation again without a rebalance.
                    if let Some(m) = self.members.get_mut(&member_id) {
                        m.heartbeat_deadline_ms = now_ms + i64::from(m.session_timeout_ms);
                    }
                    let result = self.join_result(&member_id);
                    let _ = waiter.send(result);
                    Effects::default()
                } else {
                    self.update_member(now_ms, &member_id, &request, Some(waiter));
                    self.prepare_rebalance(now_ms)
                }
            }
            GroupState::Empty | GroupState::Dead => {
                let _ = waiter.send(JoinResult::error(
                    ResponseError::UnknownMemberId,
                    &member_id,
                ));
                Effects::default()
            }
        }
    }

    /// A static member rejoined with a new process: the new member id takes
    /// over the instance; in a Stable group nothing else changes (KIP-345).
    fn replace_static_member(
        &mut self,
        now_ms: i64,
        old_id: &str,
        request: JoinRequest,
        waiter: JoinWaiter,
    ) -> Effects {
        let Some(mut member) = self.members.shift_remove(old_id) else {
            self.static_members
                .remove(request.group_instance_id.as_deref().unwrap_or_default());
            return self.join_unknown_member(now_ms, request, waiter);
        };
        // The old process, if still waiting, is fenced.
        if let Some(old_waiter) = member.join_waiter.take() {
            let _ = old_waiter.send(JoinResult::error(ResponseError::FencedInstanceId, old_id));
        }
        if let Some(old_waiter) = member.sync_waiter.take() {
            let _ = old_waiter.send(SyncResult::error(ResponseError::FencedInstanceId));
        }
        let prefix = request.group_instance_id.clone().unwrap_or_default();
        let new_id = self.new_member_id(&prefix);
        let was_leader = self.leader_id.as_deref() == Some(old_id);
        if was_leader {
            self.leader_id = Some(new_id.clone());
        }
        let protocols_unchanged = member.protocols == request.protocols;
        member.member_id = new_id.clone();
        member.client_id = request.client_id.clone();
        member.client_host = request.client_host.clone();
        member.session_timeout_ms = request.session_timeout_ms;
        member.rebalance_timeout_ms = request.rebalance_timeout_ms;
        member.heartbeat_deadline_ms = now_ms + i64::from(request.session_timeout_ms);
        self.members.insert(new_id.clone(), member);
        if let Some(instance) = &request.group_instance_id {
            self.static_members.insert(instance.clone(), new_id.clone());
        }
        if self.pending_sync.remove(old_id) {
            self.pending_sync.insert(new_id.clone());
        }
        match self.state {
            GroupState::Stable if protocols_unchanged && !was_leader => {
                let mut result = self.join_result(&new_id);
                result.members.clear();
                let _ = waiter.send(result);
                Effects {
                    persist_group: true,
                    ..Effects::default()
                }
            }
            GroupState::PreparingRebalance => {
                self.update_member(now_ms, &new_id, &request, Some(waiter));
                self.maybe_complete_join(now_ms)
            }
            _ => {
                self.update_member(now_ms, &new_id, &request, Some(waiter));
                self.prepare_rebalance(now_ms)
            }
        }
    }

    fn add_member_and_rebalance(
        &mut self,
        now_ms: i64,
        member_id: String,
        request: JoinRequest,
        waiter: JoinWaiter,
    ) -> Effects {
        if let Some(instance) = &request.group_instance_id {
            self.static_members
                .insert(instance.clone(), member_id.clone());
        }
        if self.members.is_empty() {
            self.protocol_type = Some(request.protocol_type.clone());
        }
        self.members.insert(
            member_id.clone(),
            Member {
                member_id: member_id.clone(),
                group_instance_id: request.group_instance_id.clone(),
                client_id: request.client_id.clone(),
                client_host: request.client_host.clone(),
                session_timeout_ms: request.session_timeout_ms,
                rebalance_timeout_ms: request.rebalance_timeout_ms,
                protocol_type: request.protocol_type.clone(),
                protocols: request.protocols.clone(),
                assignment: Bytes::new(),
                join_waiter: Some(waiter),
                sync_waiter: None,
                heartbeat_deadline_ms: now_ms + NEW_MEMBER_JOIN_TIMEOUT_MS,
            },
        );
        self.joined_during_delay = true;
        match self.state {
            GroupState::PreparingRebalance => self.maybe_complete_join(now_ms),
            _ => self.prepare_rebalance(now_ms),
        }
    }

    fn update_member(
        &mut self,
        now_ms: i64,
        member_id: &str,
        request: &JoinRequest,
        waiter: Option<JoinWaiter>,
    ) {
        if let Some(m) = self.members.get_mut(member_id) {
            m.protocols = request.protocols.clone();
            m.session_timeout_ms = request.session_timeout_ms;
            m.rebalance_timeout_ms = request.rebalance_timeout_ms;
            m.heartbeat_deadline_ms = now_ms + i64::from(request.session_timeout_ms);
            if let Some(w) = waiter {
                if let Some(old) = m.join_waiter.replace(w) {
                    let _ = old.send(JoinResult::error(
                        ResponseError::RebalanceInProgress,
                        member_id,
                    ));
                }
            }
        }
    }

    /// Starts (or restarts) a rebalance.
    fn prepare_rebalance(&mut self, now_ms: i64) -> Effects {
        let mut effects = Effects::default();
        if self.state == GroupState::CompletingRebalance {
            // Assignments of the aborted generation are void.
            for m in self.members.values_mut() {
                m.assignment = Bytes::new();
                if let Some(w) = m.sync_waiter.take() {
                    let _ = w.send(SyncResult::error(ResponseError::RebalanceInProgress));
                }
            }
        }
        self.sync_deadline_ms = None;
        self.pending_sync.clear();
        let was_empty = self.state == GroupState::Empty;
        if self.state != GroupState::PreparingRebalance {
            tracing::info!(
                group = %self.group_id,
                generation = self.generation_id,
                members = self.members.len(),
                "preparing to rebalance"
            );
        }
        self.state = GroupState::PreparingRebalance;
        if was_empty && self.config.initial_rebalance_delay_ms > 0 {
            // Wait for more members before the first assignment, extending
            // while they keep arriving, up to the rebalance timeout.
            let delay = i64::from(self.config.initial_rebalance_delay_ms);
            let budget = self.max_rebalance_timeout_ms().max(delay);
            self.initial_delay_remaining_ms = Some(budget - delay);
            self.joined_during_delay = false;
            self.rebalance_deadline_ms = Some(now_ms + delay);
        } else {
            self.initial_delay_remaining_ms = None;
            self.rebalance_deadline_ms = Some(now_ms + self.max_rebalance_timeout_ms());
            effects.merge(self.maybe_complete_join(now_ms));
        }
        effects
    }

    fn all_members_joined(&self) -> bool {
        self.pending_members.is_empty() && self.members.values().all(|m| m.join_waiter.is_some())
    }

    fn maybe_complete_join(&mut self, now_ms: i64) -> Effects {
        if self.state == GroupState::PreparingRebalance
            && self.initial_delay_remaining_ms.is_none()
            && self.all_members_joined()
        {
            self.complete_join(now_ms)
        } else {
            Effects::default()
        }
    }

    /// Ends the join phase: members that did not rejoin are dropped, the
    /// generation advances, and every member gets its JoinGroup answer.
    fn complete_join(&mut self, now_ms: i64) -> Effects {
        // Static members (KIP-345) keep their place until their session
        // expires, as in Kafka's onCompleteJoin: a restarting process must
        // not cost the group a second rebalance.
        let absent: Vec<String> = self
            .members
            .values()
            .filter(|m| m.join_waiter.is_none() && m.group_instance_id.is_none())
            .map(|m| m.member_id.clone())
            .collect();
        for id in absent {
            self.drop_member(&id);
        }
        self.initial_delay_remaining_ms = None;
        if !self.members.is_empty() && self.members.values().all(|m| m.join_waiter.is_none()) {
            // Only silent static members are left: nobody could lead. Wait
            // another rebalance timeout, for them to rejoin or their sessions
            // to expire (Kafka does the same).
            self.rebalance_deadline_ms = Some(now_ms + self.max_rebalance_timeout_ms());
            return Effects::default();
        }
        self.rebalance_deadline_ms = None;
        self.generation_id = self.generation_id.wrapping_add(1);
        if self.members.is_empty() {
            self.state = GroupState::Empty;
            self.protocol_name = None;
            self.leader_id = None;
            return Effects {
                persist_group: true,
                ..Effects::default()
            };
        }
        self.protocol_name = self.select_protocol();
        // The leader must be a member that rejoined (it gets the members'
        // metadata in its JoinGroup answer): Kafka's maybeElectNewJoinedLeader.
        let leader_rejoined = self
            .leader_id
            .as_ref()
            .and_then(|l| self.members.get(l))
            .is_some_and(|m| m.join_waiter.is_some());
        if !leader_rejoined {
            self.leader_id = self
                .members
                .values()
                .find(|m| m.join_waiter.is_some())
                .map(|m| m.member_id.clone());
        }
        self.state = GroupState::CompletingRebalance;
        tracing::info!(
            group = %self.group_id,
            generation = self.generation_id,
            members = self.members.len(),
            protocol = self.protocol_name.as_deref().unwrap_or(""),
            "join phase complete; waiting for the leader's assignment"
        );
        self.sync_deadline_ms = Some(now_ms + self.max_rebalance_timeout_ms());
        self.pending_sync = self.members.keys().cloned().collect();
        let ids: Vec<String> = self.members.keys().cloned().collect();
        for id in ids {
            let result = self.join_result(&id);
            if let Some(m) = self.members.get_mut(&id) {
                m.heartbeat_deadline_ms = now_ms + i64::from(m.session_timeout_ms);
                if let Some(w) = m.join_waiter.take() {
                    let _ = w.send(result);
                }
            }
        }
        Effects::default()
    }

    /// The current generation's JoinGroup answer for one member.
    fn join_result(&self, member_id: &str) -> JoinResult {
        let is_leader = self.leader_id.as_deref() == Some(member_id);
        let protocol = self.protocol_name.clone().unwrap_or_default();
        JoinResult {
            error: None,
            generation_id: self.generation_id,
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol_name.clone(),
            leader: self.leader_id.clone().unwrap_or_default(),
            member_id: member_id.to_string(),
            members: if is_leader {
                self.members
                    .values()
                    .map(|m| {
                        (
                            m.member_id.clone(),
                            m.group_instance_id.clone(),
                            m.metadata(&protocol),
                        )
                    })
                    .collect()
            } else {
                Vec::new()
            },
        }
    }

    fn drop_member(&mut self, member_id: &str) {
        if let Some(mut m) = self.members.shift_remove(member_id) {
            // A member removed while its JoinGroup or SyncGroup waits (e.g. by
            // LeaveGroup) is told it is gone, as Kafka's
            // removeMemberAndUpdateGroup does, rather than left to time out.
            if let Some(w) = m.join_waiter.take() {
                let _ = w.send(JoinResult::error(ResponseError::UnknownMemberId, member_id));
            }
            if let Some(w) = m.sync_waiter.take() {
                let _ = w.send(SyncResult::error(ResponseError::UnknownMemberId));
            }
            if let Some(instance) = &m.group_instance_id {
                if self.static_members.get(instance).map(String::as_str) == Some(member_id) {
                    self.static_members.remove(instance);
                }
            }
        }
        self.pending_sync.remove(member_id);
    }

    /// Removes a member (left or expired) and moves the group along.
    fn remove_member_and_update(&mut self, now_ms: i64, member_id: &str) -> Effects {
        self.drop_member(member_id);
        match self.state {
            GroupState::Stable | GroupState::CompletingRebalance => self.prepare_rebalance(now_ms),
            GroupState::PreparingRebalance => self.maybe_complete_join(now_ms),
            GroupState::Empty | GroupState::Dead => Effects::default(),
        }
    }

    /// Validates a member's generation for SyncGroup/Heartbeat/OffsetCommit.
    fn check_member(
        &self,
        member_id: &str,
        instance: Option<&str>,
        generation_id: i32,
    ) -> Result<(), ResponseError> {
        if let Some(instance) = instance {
            if let Some(current) = self.static_members.get(instance) {
                if current != member_id {
                    return Err(ResponseError::FencedInstanceId);
                }
            }
        }
        if !self.members.contains_key(member_id) {
            return Err(ResponseError::UnknownMemberId);
        }
        if generation_id != self.generation_id {
            return Err(ResponseError::IllegalGeneration);
        }
        Ok(())
    }

    /// Handles a SyncGroup. The answer goes to `waiter`, now or later.
    #[allow(clippy::too_many_arguments)]
    pub fn sync(
        &mut self,
        now_ms: i64,
        member_id: &str,
        instance: Option<&str>,
        generation_id: i32,
        protocol: (Option<&str>, Option<&str>),
        assignments: Vec<(String, Bytes)>,
        waiter: SyncWaiter,
    ) -> Effects {
        if self.state == GroupState::Dead {
            let _ = waiter.send(SyncResult::error(ResponseError::CoordinatorNotAvailable));
            return Effects::default();
        }
        if let Err(e) = self.check_member(member_id, instance, generation_id) {
            let _ = waiter.send(SyncResult::error(e));
            return Effects::default();
        }
        let (protocol_type, protocol_name) = protocol;
        if protocol_type.is_some_and(|t| Some(t) != self.protocol_type.as_deref())
            || protocol_name.is_some_and(|n| Some(n) != self.protocol_name.as_deref())
        {
            let _ = waiter.send(SyncResult::error(ResponseError::InconsistentGroupProtocol));
            return Effects::default();
        }
        self.pending_sync.remove(member_id);
        if let Some(m) = self.members.get_mut(member_id) {
            m.heartbeat_deadline_ms = now_ms + i64::from(m.session_timeout_ms);
        }
        match self.state {
            GroupState::Empty => {
                let _ = waiter.send(SyncResult::error(ResponseError::UnknownMemberId));
                Effects::default()
            }
            GroupState::PreparingRebalance => {
                let _ = waiter.send(SyncResult::error(ResponseError::RebalanceInProgress));
                Effects::default()
            }
            GroupState::Stable => {
                let result = self.sync_result(member_id);
                let _ = waiter.send(result);
                Effects::default()
            }
            GroupState::CompletingRebalance => {
                if let Some(m) = self.members.get_mut(member_id) {
                    m.sync_waiter = Some(waiter);
                }
                if self.leader_id.as_deref() != Some(member_id) {
                    return Effects::default();
                }
                // The leader's assignment completes the generation: members it
                // left out get an empty assignment.
                let mut given: HashMap<String, Bytes> = assignments.into_iter().collect();
                for m in self.members.values_mut() {
                    m.assignment = given.remove(&m.member_id).unwrap_or_default();
                }
                self.state = GroupState::Stable;
                tracing::info!(group = %self.group_id, generation = self.generation_id, "group stable");
                self.sync_deadline_ms = if self.pending_sync.is_empty() {
                    None
                } else {
                    self.sync_deadline_ms
                };
                let mut effects = Effects {
                    persist_group: true,
                    ..Effects::default()
                };
                let ids: Vec<String> = self.members.keys().cloned().collect();
                for id in ids {
                    let result = self.sync_result(&id);
                    if let Some(w) = self.members.get_mut(&id).and_then(|m| m.sync_waiter.take()) {
                        effects.syncs_after_persist.push((w, result));
                    }
                }
                effects
            }
            GroupState::Dead => Effects::default(),
        }
    }

    fn sync_result(&self, member_id: &str) -> SyncResult {
        SyncResult {
            error: None,
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol_name.clone(),
            assignment: self
                .members
                .get(member_id)
                .map(|m| m.assignment.clone())
                .unwrap_or_default(),
        }
    }

    /// Handles a Heartbeat; returns the error, if any.
    pub fn heartbeat(
        &mut self,
        now_ms: i64,
        member_id: &str,
        instance: Option<&str>,
        generation_id: i32,
    ) -> Option<ResponseError> {
        if self.state == GroupState::Dead {
            return Some(ResponseError::CoordinatorNotAvailable);
        }
        if let Err(e) = self.check_member(member_id, instance, generation_id) {
            return Some(e);
        }
        if let Some(m) = self.members.get_mut(member_id) {
            m.heartbeat_deadline_ms = now_ms + i64::from(m.session_timeout_ms);
        }
        match self.state {
            GroupState::Empty => Some(ResponseError::UnknownMemberId),
            GroupState::PreparingRebalance => Some(ResponseError::RebalanceInProgress),
            _ => None,
        }
    }

    /// Handles LeaveGroup for each `(member id, group instance id)`.
    pub fn leave(
        &mut self,
        now_ms: i64,
        leaving: &[(String, Option<String>)],
    ) -> (Vec<Option<ResponseError>>, Effects) {
        let mut effects = Effects::default();
        let mut errors = Vec::with_capacity(leaving.len());
        for (member_id, instance) in leaving {
            let target = match instance {
                Some(instance) => match self.static_members.get(instance) {
                    Some(current) if !member_id.is_empty() && current != member_id => {
                        errors.push(Some(ResponseError::FencedInstanceId));
                        continue;
                    }
                    Some(current) => Some(current.clone()),
                    None => None,
                },
                None => Some(member_id.clone()),
            };
            let Some(target) = target else {
                errors.push(Some(ResponseError::UnknownMemberId));
                continue;
            };
            if self.pending_members.remove(&target).is_some() {
                effects.merge(self.maybe_complete_join(now_ms));
                errors.push(None);
            } else if self.members.contains_key(&target) {
                effects.merge(self.remove_member_and_update(now_ms, &target));
                errors.push(None);
            } else {
                errors.push(Some(ResponseError::UnknownMemberId));
            }
        }
        (errors, effects)
    }

    /// Whether an OffsetCommit from this member and generation may be stored.
    pub fn check_commit(
        &self,
        member_id: &str,
        instance: Option<&str>,
        generation_id: i32,
    ) -> Result<(), ResponseError> {
        match self.state {
            GroupState::Dead => Err(ResponseError::CoordinatorNotAvailable),
            // Admin tools and consumers without a group commit with generation -1.
            _ if generation_id < 0 && self.state == GroupState::Empty => Ok(()),
            GroupState::CompletingRebalance => {
                self.check_member(member_id, instance, generation_id)?;
                Err(ResponseError::RebalanceInProgress)
            }
            _ => self.check_member(member_id, instance, generation_id),
        }
    }

    /// Runs every timer that is due: expired sessions, the end of the join
    /// phase, members that never synced.
    pub fn on_timer(&mut self, now_ms: i64) -> Effects {
        let mut effects = Effects::default();
        // Pending members that never came back.
        let expired_pending: Vec<String> = self
            .pending_members
            .iter()
            .filter(|(_, deadline)| **deadline <= now_ms)
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired_pending {
            self.pending_members.remove(&id);
            effects.merge(self.maybe_complete_join(now_ms));
        }
        // Members whose session expired.
        let expired: Vec<String> = self
            .members
            .values()
            .filter(|m| m.heartbeat_deadline_ms <= now_ms && !self.keeps_alive(m))
            .map(|m| m.member_id.clone())
            .collect();
        for id in expired {
            tracing::info!(group = %self.group_id, member = %id, "member session expired");
            effects.merge(self.remove_member_and_update(now_ms, &id));
        }
        // The join phase's deadline.
        if self.state == GroupState::PreparingRebalance
            && self.rebalance_deadline_ms.is_some_and(|d| d <= now_ms)
        {
            match self.initial_delay_remaining_ms {
                Some(remaining) if self.joined_during_delay && remaining > 0 => {
                    let delay = i64::from(self.config.initial_rebalance_delay_ms).min(remaining);
                    self.initial_delay_remaining_ms = Some(remaining - delay);
                    self.joined_during_delay = false;
                    self.rebalance_deadline_ms = Some(now_ms + delay);
                }
                _ => {
                    self.initial_delay_remaining_ms = None;
                    effects.merge(self.complete_join(now_ms));
                }
            }
        }
        // Members that never sent SyncGroup for this generation.
        if self.sync_deadline_ms.is_some_and(|d| d <= now_ms) {
            self.sync_deadline_ms = None;
            if matches!(
                self.state,
                GroupState::CompletingRebalance | GroupState::Stable
            ) && !self.pending_sync.is_empty()
            {
                let stragglers: Vec<String> = self.pending_sync.drain().collect();
                for id in &stragglers {
                    self.drop_member(id);
                }
                effects.merge(self.prepare_rebalance(now_ms));
            }
        }
        effects
    }

    /// Marks the group deleted: waiting members are told so.
    pub fn mark_dead(&mut self) {
        self.state = GroupState::Dead;
        for m in self.members.values_mut() {
            if let Some(w) = m.join_waiter.take() {
                let _ = w.send(JoinResult::error(
                    ResponseError::CoordinatorNotAvailable,
                    &m.member_id,
                ));
            }
            if let Some(w) = m.sync_waiter.take() {
                let _ = w.send(SyncResult::error(ResponseError::CoordinatorNotAvailable));
            }
        }
        self.members.clear();
        self.pending_members.clear();
        self.static_members.clear();
    }

    /// Topics the members subscribe to (from consumer-protocol metadata), for
    /// OffsetDelete's GROUP_SUBSCRIBED_TO_TOPIC check.
    pub fn subscribed_topics(&self) -> Option<HashSet<String>> {
        if self.protocol_type.as_deref() != Some("consumer") {
            return None;
        }
        let protocol = self.protocol_name.clone()?;
        let mut topics = HashSet::new();
        for m in self.members.values() {
            topics.extend(crate::coordinator::consumer_protocol::subscription_topics(
                &m.metadata(&protocol),
            )?);
        }
        Some(topics)
    }
}

/// A member as persisted in the group metadata record.
#[derive(Clone, Debug, PartialEq)]
pub struct RestoredMember {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub rebalance_timeout_ms: i32,
    pub session_timeout_ms: i32,
    pub subscription: Bytes,
    pub assignment: Bytes,
}

#[cfg(test)]
mod tests;
