use super::*;

use tokio::sync::oneshot::error::TryRecvError;
use tokio::sync::oneshot::Receiver;

// The fake clock is a plain `i64` of milliseconds passed to every call.

const SESSION_MS: i32 = 10_000;
const REBALANCE_MS: i32 = 60_000;
const DELAY_MS: i32 = 3_000;

fn config(initial_delay_ms: i32) -> GroupConfig {
    GroupConfig {
        initial_rebalance_delay_ms: initial_delay_ms,
        ..GroupConfig::default()
    }
}

fn new_group(initial_delay_ms: i32) -> Group {
    Group::new("g", config(initial_delay_ms), 0)
}

/// A consumer JoinGroup with one protocol ("range").
fn request(member_id: &str) -> JoinRequest {
    JoinRequest {
        member_id: member_id.to_string(),
        group_instance_id: None,
        client_id: "client".to_string(),
        client_host: "/127.0.0.1".to_string(),
        session_timeout_ms: SESSION_MS,
        rebalance_timeout_ms: REBALANCE_MS,
        protocol_type: "consumer".to_string(),
        protocols: vec![("range".to_string(), Bytes::from_static(b"range-meta"))],
        require_known_member_id: false,
    }
}

fn static_request(member_id: &str, instance: &str) -> JoinRequest {
    JoinRequest {
        group_instance_id: Some(instance.to_string()),
        ..request(member_id)
    }
}

fn protocols(list: &[(&str, &str)]) -> Vec<(String, Bytes)> {
    list.iter()
        .map(|(name, meta)| (name.to_string(), Bytes::from(meta.to_string())))
        .collect()
}

fn assignments(list: &[(&str, &str)]) -> Vec<(String, Bytes)> {
    protocols(list)
}

/// The answer on `rx`, if one was sent; a dropped waiter is a bug.
fn answer<T>(rx: &mut Receiver<T>) -> Option<T> {
    match rx.try_recv() {
        Ok(value) => Some(value),
        Err(TryRecvError::Empty) => None,
        Err(TryRecvError::Closed) => panic!("waiter dropped without an answer"),
    }
}

fn join_with_effects(
    g: &mut Group,
    now_ms: i64,
    request: JoinRequest,
) -> (Receiver<JoinResult>, Effects) {
    let (tx, rx) = oneshot::channel();
    let effects = g.join(now_ms, request, tx);
    assert!(
        effects.syncs_after_persist.is_empty(),
        "JoinGroup never releases SyncGroup answers"
    );
    (rx, effects)
}

fn join(g: &mut Group, now_ms: i64, request: JoinRequest) -> Receiver<JoinResult> {
    join_with_effects(g, now_ms, request).0
}

/// A JoinGroup that must be answered at once.
fn join_now(g: &mut Group, now_ms: i64, request: JoinRequest) -> JoinResult {
    answer(&mut join(g, now_ms, request)).expect("JoinGroup answered at once")
}

fn sync_full(
    g: &mut Group,
    now_ms: i64,
    member_id: &str,
    instance: Option<&str>,
    generation_id: i32,
    protocol: (Option<&str>, Option<&str>),
    given: Vec<(String, Bytes)>,
) -> (Receiver<SyncResult>, Effects) {
    let (tx, rx) = oneshot::channel();
    let effects = g.sync(
        now_ms,
        member_id,
        instance,
        generation_id,
        protocol,
        given,
        tx,
    );
    (rx, effects)
}

fn sync(
    g: &mut Group,
    now_ms: i64,
    member_id: &str,
    generation_id: i32,
    given: Vec<(String, Bytes)>,
) -> (Receiver<SyncResult>, Effects) {
    sync_full(
        g,
        now_ms,
        member_id,
        None,
        generation_id,
        (None, None),
        given,
    )
}

/// A SyncGroup that must be answered at once (not deferred to persistence).
fn sync_now(g: &mut Group, now_ms: i64, member_id: &str, generation_id: i32) -> SyncResult {
    let (mut rx, effects) = sync(g, now_ms, member_id, generation_id, Vec::new());
    assert!(effects.syncs_after_persist.is_empty());
    answer(&mut rx).expect("SyncGroup answered at once")
}

/// Sends the SyncGroup answers that wait for the metadata to be durable.
fn deliver(effects: Effects) {
    for (waiter, result) in effects.syncs_after_persist {
        let _ = waiter.send(result);
    }
}

fn error_of(result: &SyncResult) -> Option<ResponseError> {
    result.error
}

/// Joins every request at `now_ms`, then runs the timers until the join
/// phase ends. Returns the answers (in request order) and the time it ended.
fn form(g: &mut Group, now_ms: i64, requests: Vec<JoinRequest>) -> (Vec<JoinResult>, i64) {
    let mut rxs: Vec<_> = requests.into_iter().map(|r| join(g, now_ms, r)).collect();
    let mut now = now_ms;
    for _ in 0..100 {
        if g.state != GroupState::PreparingRebalance {
            break;
        }
        now = g.next_deadline_ms().expect("a join phase has a deadline");
        g.on_timer(now);
    }
    let results = rxs
        .iter_mut()
        .map(|rx| answer(rx).expect("join completed"))
        .collect();
    (results, now)
}

/// A Stable group of generation 1 formed from `requests` (the first is the
/// leader); every member got the assignment `a-<index>`. Returns the member
/// ids in join order and the time the group became Stable.
fn stable_group_of(requests: Vec<JoinRequest>) -> (Group, Vec<String>, i64) {
    let mut g = new_group(DELAY_MS);
    let (results, now) = form(&mut g, 0, requests);
    let ids: Vec<String> = results.iter().map(|r| r.member_id.clone()).collect();
    assert_eq!(g.state, GroupState::CompletingRebalance);
    assert_eq!(results[0].leader, ids[0]);
    let mut followers: Vec<_> = ids[1..]
        .iter()
        .map(|id| sync(&mut g, now, id, 1, Vec::new()).0)
        .collect();
    let given: Vec<(String, Bytes)> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| (id.clone(), Bytes::from(format!("a-{i}"))))
        .collect();
    let (mut leader_rx, effects) = sync(&mut g, now, &ids[0], 1, given);
    deliver(effects);
    assert!(answer(&mut leader_rx).is_some());
    for rx in &mut followers {
        assert!(answer(rx).is_some());
    }
    assert_eq!(g.state, GroupState::Stable);
    (g, ids, now)
}

fn stable_group(n: usize) -> (Group, Vec<String>, i64) {
    stable_group_of((0..n).map(|_| request("")).collect())
}

/// Heartbeats for `member_id` every 5s after `from_ms` while before
/// `until_ms`, running the timers at each step as the scheduler would.
/// Returns the time of the last heartbeat.
fn keep_alive(
    g: &mut Group,
    member_id: &str,
    instance: Option<&str>,
    generation_id: i32,
    from_ms: i64,
    until_ms: i64,
) -> i64 {
    let mut t = from_ms;
    while t + 5_000 < until_ms {
        t += 5_000;
        g.heartbeat(t, member_id, instance, generation_id);
        g.on_timer(t);
    }
    t
}

fn restored(member_id: &str, instance: Option<&str>, session_timeout_ms: i32) -> RestoredMember {
    RestoredMember {
        member_id: member_id.to_string(),
        group_instance_id: instance.map(str::to_string),
        client_id: "client".to_string(),
        client_host: "/127.0.0.1".to_string(),
        rebalance_timeout_ms: REBALANCE_MS,
        session_timeout_ms,
        subscription: Bytes::from_static(b"range-meta"),
        assignment: Bytes::from(format!("assignment-of-{member_id}")),
    }
}

// ---------------------------------------------------------------------------
// Forming a group

#[test]
fn group_state_names_are_kafkas() {
    let names: Vec<&str> = [
        GroupState::Empty,
        GroupState::PreparingRebalance,
        GroupState::CompletingRebalance,
        GroupState::Stable,
        GroupState::Dead,
    ]
    .iter()
    .map(GroupState::name)
    .collect();
    assert_eq!(
        names,
        [
            "Empty",
            "PreparingRebalance",
            "CompletingRebalance",
            "Stable",
            "Dead"
        ]
    );
}

#[test]
fn new_group_is_empty_at_generation_zero_without_timers() {
    let g = new_group(DELAY_MS);
    assert_eq!(g.state, GroupState::Empty);
    assert_eq!(g.generation_id, 0);
    assert!(g.is_empty());
    assert_eq!(g.next_deadline_ms(), None);
}

#[test]
fn single_member_without_initial_delay_completes_join_at_once_as_leader() {
    let mut g = new_group(0);
    let result = join_now(&mut g, 0, request(""));
    assert_eq!(result.error, None);
    assert!(
        result.member_id.starts_with("client-"),
        "member id is prefixed by the client id"
    );
    assert_eq!(result.generation_id, 1);
    assert_eq!(result.leader, result.member_id);
    assert_eq!(result.protocol_type.as_deref(), Some("consumer"));
    assert_eq!(result.protocol_name.as_deref(), Some("range"));
    assert_eq!(
        result.members,
        vec![(
            result.member_id.clone(),
            None,
            Bytes::from_static(b"range-meta")
        )]
    );
    assert_eq!(g.state, GroupState::CompletingRebalance);
    assert_eq!(g.generation_id, 1);
}

#[test]
fn single_member_leader_sync_makes_group_stable_once_persisted() {
    let mut g = new_group(0);
    let id = join_now(&mut g, 0, request("")).member_id;
    let (mut rx, effects) = sync(&mut g, 10, &id, 1, assignments(&[(&id, "mine")]));
    assert!(
        effects.persist_group,
        "the leader's assignment must be made durable"
    );
    assert_eq!(g.state, GroupState::Stable);
    assert!(
        answer(&mut rx).is_none(),
        "the answer waits for persistence"
    );
    deliver(effects);
    let result = answer(&mut rx).unwrap();
    assert_eq!(result.error, None);
    assert_eq!(result.assignment, Bytes::from_static(b"mine"));
    assert_eq!(result.protocol_type.as_deref(), Some("consumer"));
    assert_eq!(result.protocol_name.as_deref(), Some("range"));
}

#[test]
fn several_members_share_one_generation_and_only_the_leader_gets_member_metadata() {
    let mut g = new_group(DELAY_MS);
    let requests: Vec<JoinRequest> = (0..3)
        .map(|i| JoinRequest {
            protocols: protocols(&[("range", &format!("meta-{i}"))]),
            ..request("")
        })
        .collect();
    let (results, _) = form(&mut g, 0, requests);
    let ids: Vec<String> = results.iter().map(|r| r.member_id.clone()).collect();
    assert_eq!(g.state, GroupState::CompletingRebalance);
    assert_eq!(g.generation_id, 1);
    for r in &results {
        assert_eq!(r.error, None);
        assert_eq!(r.generation_id, 1);
        assert_eq!(r.leader, ids[0]);
        assert_eq!(r.protocol_name.as_deref(), Some("range"));
    }
    let expected: Vec<(String, Option<String>, Bytes)> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| (id.clone(), None, Bytes::from(format!("meta-{i}"))))
        .collect();
    assert_eq!(results[0].members, expected);
    assert!(results[1].members.is_empty());
    assert!(results[2].members.is_empty());
}

#[test]
fn several_members_become_stable_after_leader_sync() {
    let (g, ids, _) = stable_group(3);
    assert_eq!(g.generation_id, 1);
    assert_eq!(g.leader_id.as_deref(), Some(ids[0].as_str()));
    assert_eq!(g.members.len(), 3);
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(g.members[id].assignment, Bytes::from(format!("a-{i}")));
    }
}

#[test]
fn generation_increments_with_every_completed_rebalance() {
    let (mut g, ids, now) = stable_group(1);
    for generation in 2..5 {
        // The leader rejoining in Stable forces a rebalance.
        let result = join_now(&mut g, now, request(&ids[0]));
        assert_eq!(result.generation_id, generation);
        assert_eq!(g.generation_id, generation);
        let (_, effects) = sync(&mut g, now, &ids[0], generation, Vec::new());
        assert!(effects.persist_group);
        assert_eq!(g.state, GroupState::Stable);
    }
}

#[test]
fn protocol_is_chosen_by_each_members_first_common_preference() {
    let mut g = new_group(DELAY_MS);
    let requests = vec![
        JoinRequest {
            protocols: protocols(&[("range", "a-range"), ("roundrobin", "a-rr")]),
            ..request("")
        },
        JoinRequest {
            protocols: protocols(&[("roundrobin", "b-rr"), ("range", "b-range")]),
            ..request("")
        },
        // "sticky" is not supported by everyone, so this vote goes to roundrobin.
        JoinRequest {
            protocols: protocols(&[
                ("sticky", "c-sticky"),
                ("roundrobin", "c-rr"),
                ("range", "c-range"),
            ]),
            ..request("")
        },
    ];
    let (results, _) = form(&mut g, 0, requests);
    assert_eq!(g.protocol_name.as_deref(), Some("roundrobin"));
    assert!(results
        .iter()
        .all(|r| r.protocol_name.as_deref() == Some("roundrobin")));
    let metadata: Vec<&Bytes> = results[0].members.iter().map(|(_, _, m)| m).collect();
    assert_eq!(
        metadata,
        [
            &Bytes::from("a-rr"),
            &Bytes::from("b-rr"),
            &Bytes::from("c-rr")
        ]
    );
}

#[test]
fn protocol_vote_tie_goes_to_the_earliest_members_preference() {
    let mut g = new_group(DELAY_MS);
    let requests = vec![
        JoinRequest {
            protocols: protocols(&[("range", "a"), ("roundrobin", "a")]),
            ..request("")
        },
        JoinRequest {
            protocols: protocols(&[("roundrobin", "b"), ("range", "b")]),
            ..request("")
        },
    ];
    form(&mut g, 0, requests);
    assert_eq!(g.protocol_name.as_deref(), Some("range"));
}

#[test]
fn leader_is_kept_across_rebalances_while_still_a_member() {
    let (mut g, ids, now) = stable_group(2);
    // A new member joins: everyone must rejoin.
    let mut newcomer = join(&mut g, now, request(""));
    assert_eq!(g.state, GroupState::PreparingRebalance);
    let mut follower = join(&mut g, now, request(&ids[1]));
    let leader = join_now(&mut g, now, request(&ids[0]));
    let follower = answer(&mut follower).unwrap();
    let newcomer = answer(&mut newcomer).unwrap();
    assert_eq!(leader.generation_id, 2);
    assert_eq!(leader.leader, ids[0]);
    assert_eq!(follower.leader, ids[0]);
    assert_eq!(newcomer.leader, ids[0]);
    assert_eq!(leader.members.len(), 3);
    assert!(follower.members.is_empty() && newcomer.members.is_empty());
}

#[test]
fn a_new_leader_is_chosen_when_the_leader_leaves() {
    let (mut g, ids, now) = stable_group(2);
    let (errors, _) = g.leave(now, &[(ids[0].clone(), None)]);
    assert_eq!(errors, [None]);
    let result = join_now(&mut g, now, request(&ids[1]));
    assert_eq!(result.leader, ids[1]);
    assert_eq!(result.members.len(), 1);
}

// ---------------------------------------------------------------------------
// JoinGroup errors

#[test]
fn new_dynamic_member_must_first_get_a_member_id_then_joins_with_it() {
    let mut g = new_group(0);
    let first = join_now(
        &mut g,
        0,
        JoinRequest {
            require_known_member_id: true,
            ..request("")
        },
    );
    assert_eq!(first.error, Some(ResponseError::MemberIdRequired));
    assert_eq!(first.generation_id, -1);
    assert!(first.member_id.starts_with("client-"));
    assert_eq!(
        g.state,
        GroupState::Empty,
        "a pending member does not start a rebalance"
    );
    assert!(g.members.is_empty());
    assert!(!g.is_empty(), "the pending member counts");
    assert_eq!(g.next_deadline_ms(), Some(i64::from(SESSION_MS)));

    let second = join_now(
        &mut g,
        100,
        JoinRequest {
            require_known_member_id: true,
            ..request(&first.member_id)
        },
    );
    assert_eq!(second.error, None);
    assert_eq!(second.member_id, first.member_id);
    assert_eq!(second.generation_id, 1);
    assert_eq!(second.leader, first.member_id);
}

#[test]
fn static_member_is_never_asked_for_a_member_id() {
    let mut g = new_group(0);
    let result = join_now(
        &mut g,
        0,
        JoinRequest {
            require_known_member_id: true,
            ..static_request("", "instance-1")
        },
    );
    assert_eq!(result.error, None);
    assert!(
        result.member_id.starts_with("instance-1-"),
        "static member ids are prefixed by the instance id"
    );
}

#[test]
fn pending_member_that_never_returns_expires_and_stops_blocking_the_join() {
    let (mut g, ids, now) = stable_group(1);
    let pending = join_now(
        &mut g,
        now,
        JoinRequest {
            require_known_member_id: true,
            ..request("")
        },
    );
    assert_eq!(pending.error, Some(ResponseError::MemberIdRequired));
    assert_eq!(g.state, GroupState::Stable);

    // The leader rejoins: the join phase waits for the pending member too.
    let mut leader = join(&mut g, now, request(&ids[0]));
    assert_eq!(g.state, GroupState::PreparingRebalance);
    assert!(answer(&mut leader).is_none());
    let pending_deadline_ms = now + i64::from(SESSION_MS);
    assert_eq!(g.next_deadline_ms(), Some(pending_deadline_ms));

    g.on_timer(pending_deadline_ms - 1);
    assert!(answer(&mut leader).is_none());
    g.on_timer(pending_deadline_ms);
    let result = answer(&mut leader).expect("the join completes once the pending member expired");
    assert_eq!(result.generation_id, 2);
    assert_eq!(result.members.len(), 1);
    assert!(g.pending_members.is_empty());

    let late = join_now(&mut g, pending_deadline_ms + 1, request(&pending.member_id));
    assert_eq!(late.error, Some(ResponseError::UnknownMemberId));
}

#[test]
fn pending_member_that_leaves_stops_blocking_the_join() {
    let (mut g, ids, now) = stable_group(1);
    let pending = join_now(
        &mut g,
        now,
        JoinRequest {
            require_known_member_id: true,
            ..request("")
        },
    );
    let mut leader = join(&mut g, now, request(&ids[0]));
    assert!(answer(&mut leader).is_none());
    let (errors, _) = g.leave(now + 1, &[(pending.member_id.clone(), None)]);
    assert_eq!(errors, [None]);
    assert_eq!(answer(&mut leader).unwrap().generation_id, 2);
}

#[test]
fn join_with_an_id_the_group_never_gave_is_unknown_member() {
    let mut empty = new_group(0);
    let result = join_now(&mut empty, 0, request("ghost"));
    assert_eq!(result.error, Some(ResponseError::UnknownMemberId));
    assert_eq!(result.member_id, "ghost");

    let (mut g, _, now) = stable_group(1);
    let result = join_now(&mut g, now, request("ghost"));
    assert_eq!(result.error, Some(ResponseError::UnknownMemberId));
    assert_eq!(g.state, GroupState::Stable);
}

#[test]
fn join_with_session_timeout_outside_configured_bounds_is_rejected() {
    let mut g = new_group(0);
    let min = GroupConfig::default().min_session_timeout_ms;
    let max = GroupConfig::default().max_session_timeout_ms;
    for bad in [min - 1, max + 1] {
        let result = join_now(
            &mut g,
            0,
            JoinRequest {
                session_timeout_ms: bad,
                ..request("")
            },
        );
        assert_eq!(
            result.error,
            Some(ResponseError::InvalidSessionTimeout),
            "session timeout {bad}"
        );
        assert_eq!(g.state, GroupState::Empty);
        assert!(g.is_empty());
    }
    for good in [min, max] {
        let mut g = new_group(0);
        let result = join_now(
            &mut g,
            0,
            JoinRequest {
                session_timeout_ms: good,
                ..request("")
            },
        );
        assert_eq!(result.error, None, "session timeout {good}");
    }
}

#[test]
fn join_with_another_protocol_type_is_inconsistent() {
    let mut g = new_group(0);
    join_now(&mut g, 0, request(""));
    let result = join_now(
        &mut g,
        1,
        JoinRequest {
            protocol_type: "connect".to_string(),
            ..request("")
        },
    );
    assert_eq!(result.error, Some(ResponseError::InconsistentGroupProtocol));
    assert_eq!(g.members.len(), 1);
    assert_eq!(g.state, GroupState::CompletingRebalance);
}

#[test]
fn join_with_no_protocol_in_common_is_inconsistent() {
    let mut g = new_group(0);
    join_now(&mut g, 0, request(""));
    let result = join_now(
        &mut g,
        1,
        JoinRequest {
            protocols: protocols(&[("roundrobin", "x")]),
            ..request("")
        },
    );
    assert_eq!(result.error, Some(ResponseError::InconsistentGroupProtocol));
    assert_eq!(g.members.len(), 1);
}

#[test]
fn join_with_no_protocols_or_no_protocol_type_is_inconsistent_even_when_empty() {
    let mut g = new_group(0);
    let no_protocols = join_now(
        &mut g,
        0,
        JoinRequest {
            protocols: Vec::new(),
            ..request("")
        },
    );
    assert_eq!(
        no_protocols.error,
        Some(ResponseError::InconsistentGroupProtocol)
    );
    let no_type = join_now(
        &mut g,
        0,
        JoinRequest {
            protocol_type: String::new(),
            ..request("")
        },
    );
    assert_eq!(
        no_type.error,
        Some(ResponseError::InconsistentGroupProtocol)
    );
    assert_eq!(g.state, GroupState::Empty);
}

#[test]
fn join_beyond_group_max_size_is_rejected() {
    let mut g = Group::new(
        "g",
        GroupConfig {
            max_size: 2,
            ..config(DELAY_MS)
        },
        0,
    );
    let _a = join(&mut g, 0, request(""));
    let _b = join(&mut g, 0, request(""));
    let result = join_now(&mut g, 0, request(""));
    assert_eq!(result.error, Some(ResponseError::GroupMaxSizeReached));
    assert_eq!(g.members.len(), 2);
}

#[test]
fn pending_members_count_towards_group_max_size_and_may_still_return() {
    let mut g = Group::new(
        "g",
        GroupConfig {
            max_size: 1,
            ..config(0)
        },
        0,
    );
    let pending = join_now(
        &mut g,
        0,
        JoinRequest {
            require_known_member_id: true,
            ..request("")
        },
    );
    assert_eq!(pending.error, Some(ResponseError::MemberIdRequired));
    let other = join_now(&mut g, 0, request(""));
    assert_eq!(other.error, Some(ResponseError::GroupMaxSizeReached));
    let back = join_now(&mut g, 1, request(&pending.member_id));
    assert_eq!(back.error, None);
}

// ---------------------------------------------------------------------------
// SyncGroup, Heartbeat, LeaveGroup and OffsetCommit errors

#[test]
fn unknown_member_id_is_rejected_by_sync_heartbeat_leave_and_commit() {
    let (mut g, _, now) = stable_group(1);
    let result = sync_now(&mut g, now, "ghost", 1);
    assert_eq!(error_of(&result), Some(ResponseError::UnknownMemberId));
    assert_eq!(
        g.heartbeat(now, "ghost", None, 1),
        Some(ResponseError::UnknownMemberId)
    );
    let (errors, effects) = g.leave(now, &[("ghost".to_string(), None)]);
    assert_eq!(errors, [Some(ResponseError::UnknownMemberId)]);
    assert!(!effects.persist_group);
    assert_eq!(
        g.check_commit("ghost", None, 1),
        Err(ResponseError::UnknownMemberId)
    );
    assert_eq!(g.state, GroupState::Stable);
}

#[test]
fn sync_and_heartbeat_on_an_empty_group_are_unknown_member() {
    let mut g = new_group(0);
    assert_eq!(
        error_of(&sync_now(&mut g, 0, "m", 0)),
        Some(ResponseError::UnknownMemberId)
    );
    assert_eq!(
        g.heartbeat(0, "m", None, 0),
        Some(ResponseError::UnknownMemberId)
    );

    // A group that emptied out keeps its generation but knows nobody.
    let (mut g, ids, now) = stable_group(1);
    g.leave(now, &[(ids[0].clone(), None)]);
    assert_eq!(g.state, GroupState::Empty);
    assert_eq!(
        error_of(&sync_now(&mut g, now, &ids[0], 2)),
        Some(ResponseError::UnknownMemberId)
    );
}

#[test]
fn stale_generation_is_rejected_by_sync_heartbeat_and_commit() {
    let (mut g, ids, now) = stable_group(2);
    for stale in [0, 2] {
        assert_eq!(
            error_of(&sync_now(&mut g, now, &ids[1], stale)),
            Some(ResponseError::IllegalGeneration)
        );
        assert_eq!(
            g.heartbeat(now, &ids[1], None, stale),
            Some(ResponseError::IllegalGeneration)
        );
        assert_eq!(
            g.check_commit(&ids[1], None, stale),
            Err(ResponseError::IllegalGeneration)
        );
    }
    assert_eq!(g.state, GroupState::Stable);
}

#[test]
fn sync_with_mismatching_protocol_type_or_name_is_inconsistent() {
    let (mut g, ids, now) = stable_group(1);
    for protocol in [
        (Some("connect"), None),
        (None, Some("roundrobin")),
        (Some("consumer"), Some("roundrobin")),
    ] {
        let (mut rx, _) = sync_full(&mut g, now, &ids[0], None, 1, protocol, Vec::new());
        assert_eq!(
            answer(&mut rx).unwrap().error,
            Some(ResponseError::InconsistentGroupProtocol),
            "{protocol:?}"
        );
    }
    let (mut rx, _) = sync_full(
        &mut g,
        now,
        &ids[0],
        None,
        1,
        (Some("consumer"), Some("range")),
        Vec::new(),
    );
    assert_eq!(answer(&mut rx).unwrap().error, None);
}

#[test]
fn heartbeat_during_preparing_rebalance_says_rebalance_in_progress() {
    let (mut g, ids, now) = stable_group(2);
    let _leader = join(&mut g, now, request(&ids[0]));
    assert_eq!(g.state, GroupState::PreparingRebalance);
    assert_eq!(
        g.heartbeat(now + 1, &ids[1], None, 1),
        Some(ResponseError::RebalanceInProgress)
    );
}

#[test]
fn heartbeat_during_completing_rebalance_succeeds() {
    let mut g = new_group(DELAY_MS);
    let (results, now) = form(&mut g, 0, vec![request(""), request("")]);
    assert_eq!(g.state, GroupState::CompletingRebalance);
    assert_eq!(g.heartbeat(now + 1, &results[1].member_id, None, 1), None);
}

#[test]
fn sync_during_preparing_rebalance_says_rebalance_in_progress() {
    let (mut g, ids, now) = stable_group(2);
    let _newcomer = join(&mut g, now, request(""));
    assert_eq!(g.state, GroupState::PreparingRebalance);
    assert_eq!(
        error_of(&sync_now(&mut g, now, &ids[1], 1)),
        Some(ResponseError::RebalanceInProgress)
    );
}

#[test]
fn commit_during_completing_rebalance_says_rebalance_in_progress() {
    let mut g = new_group(DELAY_MS);
    let (results, _) = form(&mut g, 0, vec![request(""), request("")]);
    assert_eq!(g.state, GroupState::CompletingRebalance);
    assert_eq!(
        g.check_commit(&results[1].member_id, None, 1),
        Err(ResponseError::RebalanceInProgress)
    );
    // The member and generation are still checked first.
    assert_eq!(
        g.check_commit(&results[1].member_id, None, 0),
        Err(ResponseError::IllegalGeneration)
    );
    assert_eq!(
        g.check_commit("ghost", None, 1),
        Err(ResponseError::UnknownMemberId)
    );
}

#[test]
fn waiting_syncs_are_answered_rebalance_in_progress_when_a_rebalance_restarts() {
    let mut g = new_group(DELAY_MS);
    let (results, now) = form(&mut g, 0, vec![request(""), request("")]);
    let (mut follower_sync, _) = sync(&mut g, now, &results[1].member_id, 1, Vec::new());
    assert!(answer(&mut follower_sync).is_none());
    // A new member arrives before the leader sent the assignment.
    let _newcomer = join(&mut g, now + 1, request(""));
    assert_eq!(g.state, GroupState::PreparingRebalance);
    assert_eq!(
        answer(&mut follower_sync).unwrap().error,
        Some(ResponseError::RebalanceInProgress)
    );
}

#[test]
fn static_member_with_another_member_id_is_fenced_everywhere() {
    let (mut g, ids, now) = stable_group_of(vec![static_request("", "a"), static_request("", "b")]);
    // ids[0] is a real member, but not the one holding instance "b".
    for impostor in ["not-b", ids[0].as_str()] {
        let result = join_now(&mut g, now, static_request(impostor, "b"));
        assert_eq!(
            result.error,
            Some(ResponseError::FencedInstanceId),
            "join by {impostor}"
        );
        let (mut rx, _) = sync_full(
            &mut g,
            now,
            impostor,
            Some("b"),
            1,
            (None, None),
            Vec::new(),
        );
        assert_eq!(
            answer(&mut rx).unwrap().error,
            Some(ResponseError::FencedInstanceId)
        );
        assert_eq!(
            g.heartbeat(now, impostor, Some("b"), 1),
            Some(ResponseError::FencedInstanceId)
        );
        assert_eq!(
            g.check_commit(impostor, Some("b"), 1),
            Err(ResponseError::FencedInstanceId)
        );
        let (errors, _) = g.leave(now, &[(impostor.to_string(), Some("b".to_string()))]);
        assert_eq!(errors, [Some(ResponseError::FencedInstanceId)]);
    }
    assert_eq!(g.state, GroupState::Stable);
    assert_eq!(g.members.len(), 2);
    assert_eq!(g.heartbeat(now, &ids[1], Some("b"), 1), None);
}

#[test]
fn old_process_waiting_to_join_is_fenced_when_its_instance_rejoins() {
    let (mut g, ids, now) = stable_group_of(vec![static_request("", "a"), static_request("", "b")]);
    // The old process of "a" (the leader) rejoins and waits for "b".
    let mut old = join(&mut g, now, static_request(&ids[0], "a"));
    assert_eq!(g.state, GroupState::PreparingRebalance);
    assert!(answer(&mut old).is_none());
    // A new process of "a" starts.
    let mut new = join(&mut g, now + 1, static_request("", "a"));
    let fenced = answer(&mut old).unwrap();
    assert_eq!(fenced.error, Some(ResponseError::FencedInstanceId));
    assert_eq!(fenced.member_id, ids[0]);
    assert!(answer(&mut new).is_none(), "still waiting for b");

    let b = join_now(&mut g, now + 2, static_request(&ids[1], "b"));
    let new = answer(&mut new).unwrap();
    assert_eq!(new.error, None);
    assert_ne!(new.member_id, ids[0]);
    assert_eq!(new.generation_id, 2);
    assert_eq!(new.leader, new.member_id, "the instance keeps leadership");
    assert_eq!(b.leader, new.member_id);
    assert_eq!(
        g.heartbeat(now + 3, &ids[0], Some("a"), 2),
        Some(ResponseError::FencedInstanceId)
    );
}

#[test]
fn dead_group_answers_waiters_and_later_requests_coordinator_not_available() {
    // A waiting JoinGroup.
    let (mut g, ids, now) = stable_group(2);
    let mut waiting_join = join(&mut g, now, request(&ids[0]));
    g.mark_dead();
    assert_eq!(g.state, GroupState::Dead);
    assert_eq!(
        answer(&mut waiting_join).unwrap().error,
        Some(ResponseError::CoordinatorNotAvailable)
    );

    // A waiting SyncGroup.
    let mut g2 = new_group(DELAY_MS);
    let (results, now2) = form(&mut g2, 0, vec![request(""), request("")]);
    let (mut waiting_sync, _) = sync(&mut g2, now2, &results[1].member_id, 1, Vec::new());
    g2.mark_dead();
    assert_eq!(
        answer(&mut waiting_sync).unwrap().error,
        Some(ResponseError::CoordinatorNotAvailable)
    );

    assert_eq!(
        join_now(&mut g, now, request("")).error,
        Some(ResponseError::CoordinatorNotAvailable)
    );
    assert_eq!(
        join_now(&mut g, now, request(&ids[1])).error,
        Some(ResponseError::CoordinatorNotAvailable)
    );
    assert_eq!(
        error_of(&sync_now(&mut g, now, &ids[1], 1)),
        Some(ResponseError::CoordinatorNotAvailable)
    );
    assert_eq!(
        g.heartbeat(now, &ids[1], None, 1),
        Some(ResponseError::CoordinatorNotAvailable)
    );
    assert_eq!(
        g.check_commit(&ids[1], None, 1),
        Err(ResponseError::CoordinatorNotAvailable)
    );
    assert_eq!(
        g.check_commit("", None, -1),
        Err(ResponseError::CoordinatorNotAvailable)
    );
    assert!(g.is_empty());
}

// ---------------------------------------------------------------------------
// Rebalance timeout

#[test]
fn member_that_does_not_rejoin_within_rebalance_timeout_is_dropped() {
    let (mut g, ids, now) = stable_group(3);
    let mut leader = join(&mut g, now, request(&ids[0]));
    let mut follower = join(&mut g, now, request(&ids[1]));
    let deadline_ms = now + i64::from(REBALANCE_MS);
    assert_eq!(
        g.next_deadline_ms(),
        Some(now + i64::from(SESSION_MS)),
        "the silent member's session"
    );

    // The third member stays alive with heartbeats but never rejoins.
    assert_eq!(
        g.heartbeat(now + 1, &ids[2], None, 1),
        Some(ResponseError::RebalanceInProgress)
    );
    keep_alive(&mut g, &ids[2], None, 1, now, deadline_ms);
    g.on_timer(deadline_ms - 1);
    assert!(answer(&mut leader).is_none());
    assert_eq!(g.state, GroupState::PreparingRebalance);

    g.on_timer(deadline_ms);
    let leader = answer(&mut leader).unwrap();
    let follower = answer(&mut follower).unwrap();
    assert_eq!(leader.generation_id, 2);
    assert_eq!(follower.generation_id, 2);
    let members: Vec<&String> = leader.members.iter().map(|(id, _, _)| id).collect();
    assert_eq!(members, [&ids[0], &ids[1]]);
    assert_eq!(g.state, GroupState::CompletingRebalance);
    assert_eq!(
        g.heartbeat(deadline_ms, &ids[2], None, 1),
        Some(ResponseError::UnknownMemberId)
    );
}

#[test]
fn leader_that_does_not_rejoin_in_time_is_replaced_by_a_member_that_did() {
    let (mut g, ids, now) = stable_group(2);
    let _newcomer = join(&mut g, now, request(""));
    let mut follower = join(&mut g, now, request(&ids[1]));
    let deadline_ms = now + i64::from(REBALANCE_MS);
    // The leader keeps its session alive but does not rejoin.
    keep_alive(&mut g, &ids[0], None, 1, now, deadline_ms);
    assert!(answer(&mut follower).is_none());
    g.on_timer(deadline_ms);
    let follower = answer(&mut follower).unwrap();
    assert_eq!(follower.leader, ids[1]);
    assert_eq!(follower.members.len(), 2);
    assert!(!g.members.contains_key(&ids[0]));
}

#[test]
fn static_member_that_does_not_rejoin_in_time_keeps_its_place() {
    // Kafka removes only dynamic members at the end of the join phase: a
    // static member stays (with its slot in the assignment) until its session
    // expires, so a restarting process does not cost another rebalance.
    let (mut g, ids, now) = stable_group_of(vec![static_request("", "a"), static_request("", "b")]);
    let mut leader = join(&mut g, now, static_request(&ids[0], "a"));
    let deadline_ms = now + i64::from(REBALANCE_MS);
    keep_alive(&mut g, &ids[1], Some("b"), 1, now, deadline_ms);
    g.on_timer(deadline_ms);
    let leader = answer(&mut leader).unwrap();
    assert_eq!(leader.generation_id, 2);
    let members: Vec<&String> = leader.members.iter().map(|(id, _, _)| id).collect();
    assert_eq!(members, [&ids[0], &ids[1]]);
    assert_eq!(g.state, GroupState::CompletingRebalance);

    // The silent member learns of the new generation and catches up
    // without another rebalance.
    assert_eq!(
        g.heartbeat(deadline_ms + 1, &ids[1], Some("b"), 1),
        Some(ResponseError::IllegalGeneration)
    );
    let b = join_now(&mut g, deadline_ms + 2, static_request(&ids[1], "b"));
    assert_eq!(b.error, None);
    assert_eq!(b.generation_id, 2);
    assert_eq!(g.state, GroupState::CompletingRebalance);
    let (mut b_sync, _) = sync(&mut g, deadline_ms + 3, &ids[1], 2, Vec::new());
    let (_, effects) = sync(
        &mut g,
        deadline_ms + 3,
        &ids[0],
        2,
        assignments(&[(&ids[0], "x"), (&ids[1], "y")]),
    );
    deliver(effects);
    assert_eq!(
        answer(&mut b_sync).unwrap().assignment,
        Bytes::from_static(b"y")
    );
    assert_eq!(g.state, GroupState::Stable);
}

#[test]
fn join_phase_with_only_silent_static_members_waits_for_their_sessions() {
    let (mut g, ids, now) = stable_group_of(vec![static_request("", "a"), static_request("", "b")]);
    let (errors, _) = g.leave(now, &[(String::new(), Some("b".to_string()))]);
    assert_eq!(errors, [None]);
    assert_eq!(g.state, GroupState::PreparingRebalance);
    let deadline_ms = now + i64::from(REBALANCE_MS);
    // "a" heartbeats but never rejoins: nobody could lead a new generation.
    let last_heartbeat_ms = keep_alive(&mut g, &ids[0], Some("a"), 1, now, deadline_ms);
    g.on_timer(deadline_ms);
    assert_eq!(g.state, GroupState::PreparingRebalance);
    assert_eq!(g.generation_id, 1);
    assert!(g.members.contains_key(&ids[0]));
    // Its session runs out: the group empties.
    let expiry_ms = last_heartbeat_ms + i64::from(SESSION_MS);
    assert_eq!(g.next_deadline_ms(), Some(expiry_ms));
    let effects = g.on_timer(expiry_ms);
    assert!(effects.persist_group);
    assert_eq!(g.state, GroupState::Empty);
    assert_eq!(g.generation_id, 2);
}

#[test]
fn silent_static_member_rejoining_after_postponement_completes_the_join() {
    let (mut g, ids, now) = stable_group_of(vec![static_request("", "a"), static_request("", "b")]);
    g.leave(now, &[(String::new(), Some("b".to_string()))]);
    let deadline_ms = now + i64::from(REBALANCE_MS);
    keep_alive(&mut g, &ids[0], Some("a"), 1, now, deadline_ms);
    g.on_timer(deadline_ms);
    assert_eq!(g.state, GroupState::PreparingRebalance);
    let result = join_now(&mut g, deadline_ms + 1, static_request(&ids[0], "a"));
    assert_eq!(result.generation_id, 2);
    assert_eq!(result.leader, ids[0]);
}

// ---------------------------------------------------------------------------
// Session timeout

#[test]
fn silent_member_in_stable_expires_at_session_timeout_and_triggers_rebalance() {
    let (mut g, ids, now) = stable_group(2);
    let expiry_ms = now + i64::from(SESSION_MS);
    assert_eq!(g.heartbeat(now + 5_000, &ids[0], None, 1), None);
    assert_eq!(g.next_deadline_ms(), Some(expiry_ms));

    g.on_timer(expiry_ms - 1);
    assert_eq!(g.state, GroupState::Stable);
    assert_eq!(g.members.len(), 2);

    g.on_timer(expiry_ms);
    assert_eq!(g.state, GroupState::PreparingRebalance);
    assert!(!g.members.contains_key(&ids[1]));
    assert_eq!(
        g.heartbeat(expiry_ms, &ids[0], None, 1),
        Some(ResponseError::RebalanceInProgress)
    );
    let result = join_now(&mut g, expiry_ms + 1, request(&ids[0]));
    assert_eq!(result.generation_id, 2);
    assert_eq!(result.members.len(), 1);
}

#[test]
fn heartbeats_push_the_session_deadline() {
    let (mut g, ids, now) = stable_group(1);
    assert_eq!(g.heartbeat(now + 8_000, &ids[0], None, 1), None);
    let pushed_ms = now + 8_000 + i64::from(SESSION_MS);
    assert_eq!(g.next_deadline_ms(), Some(pushed_ms));
    g.on_timer(now + i64::from(SESSION_MS));
    assert_eq!(
        g.state,
        GroupState::Stable,
        "the original deadline no longer applies"
    );
    let effects = g.on_timer(pushed_ms);
    // The last member expiring empties the group.
    assert!(effects.persist_group);
    assert_eq!(g.state, GroupState::Empty);
    assert_eq!(g.generation_id, 2);
}

#[test]
fn members_awaiting_join_or_sync_are_not_expired() {
    let (mut g, ids, now) = stable_group(2);
    // The leader waits in the join phase for longer than its session.
    let mut leader_join = join(&mut g, now, request(&ids[0]));
    let late_ms = now + 3 * i64::from(SESSION_MS);
    let mut t = now;
    while t < late_ms {
        t += 5_000;
        g.heartbeat(t, &ids[1], None, 1);
        g.on_timer(t);
    }
    assert!(g.members.contains_key(&ids[0]));
    assert!(answer(&mut leader_join).is_none());

    // Now the follower rejoins; then it waits in the sync phase for longer
    // than its session while the leader heartbeats.
    let follower = join_now(&mut g, t, request(&ids[1]));
    assert_eq!(follower.generation_id, 2);
    let (mut follower_sync, _) = sync(&mut g, t, &ids[1], 2, Vec::new());
    let sync_started_ms = t;
    while t < sync_started_ms + 2 * i64::from(SESSION_MS) {
        t += 5_000;
        assert_eq!(g.heartbeat(t, &ids[0], None, 2), None);
        g.on_timer(t);
    }
    assert!(g.members.contains_key(&ids[1]));
    assert_eq!(g.state, GroupState::CompletingRebalance);
    let (_, effects) = sync(&mut g, t, &ids[0], 2, assignments(&[(&ids[1], "yours")]));
    deliver(effects);
    assert_eq!(
        answer(&mut follower_sync).unwrap().assignment,
        Bytes::from_static(b"yours")
    );
}

// ---------------------------------------------------------------------------
// group.initial.rebalance.delay.ms

#[test]
fn first_join_completes_only_after_the_initial_rebalance_delay() {
    let mut g = new_group(DELAY_MS);
    let mut rx = join(&mut g, 1_000, request(""));
    assert_eq!(g.state, GroupState::PreparingRebalance);
    assert!(
        answer(&mut rx).is_none(),
        "not even a lone member completes early"
    );
    let end_ms = 1_000 + i64::from(DELAY_MS);
    assert_eq!(g.next_deadline_ms(), Some(end_ms));
    g.on_timer(end_ms - 1);
    assert!(answer(&mut rx).is_none());
    g.on_timer(end_ms);
    let result = answer(&mut rx).unwrap();
    assert_eq!(result.generation_id, 1);
    assert_eq!(g.state, GroupState::CompletingRebalance);
}

#[test]
fn members_joining_during_the_initial_delay_extend_it_up_to_the_rebalance_timeout() {
    let mut g = new_group(DELAY_MS);
    let short = |id: &str| JoinRequest {
        rebalance_timeout_ms: 10_000,
        ..request(id)
    };
    let mut rxs = vec![join(&mut g, 0, short(""))];
    // (time a member joins, when the delay then ends)
    let steps = [
        (1_000, 3_000),
        (5_000, 6_000),
        (8_000, 9_000),
        (9_500, 10_000),
    ];
    for (join_ms, end_ms) in steps {
        rxs.push(join(&mut g, join_ms, short("")));
        assert_eq!(g.next_deadline_ms(), Some(end_ms));
        g.on_timer(end_ms - 1);
        g.on_timer(end_ms);
        if end_ms < 10_000 {
            assert_eq!(
                g.state,
                GroupState::PreparingRebalance,
                "delay extended at {end_ms}"
            );
            assert!(rxs.iter_mut().all(|rx| answer(rx).is_none()));
        }
    }
    // The last extension is cut to the rebalance timeout, and a member that
    // joined during it does not extend it further.
    assert_eq!(g.state, GroupState::CompletingRebalance);
    let results: Vec<JoinResult> = rxs.iter_mut().map(|rx| answer(rx).unwrap()).collect();
    assert_eq!(results.len(), 5);
    assert!(results.iter().all(|r| r.generation_id == 1));
    assert_eq!(results[0].members.len(), 5);
}

#[test]
fn without_initial_delay_the_first_join_completes_at_once() {
    let mut g = new_group(0);
    let result = join_now(&mut g, 0, request(""));
    assert_eq!(result.generation_id, 1);
    assert_eq!(g.state, GroupState::CompletingRebalance);
}

#[test]
fn initial_delay_applies_only_to_a_group_that_was_empty() {
    let (mut g, ids, now) = stable_group(1);
    let result = join_now(&mut g, now, request(&ids[0]));
    assert_eq!(result.generation_id, 2);
}

// ---------------------------------------------------------------------------
// SyncGroup

#[test]
fn followers_wait_for_the_leader_and_get_their_assignment_once_persisted() {
    let mut g = new_group(DELAY_MS);
    let (results, now) = form(&mut g, 0, vec![request(""), request(""), request("")]);
    let ids: Vec<String> = results.iter().map(|r| r.member_id.clone()).collect();
    let (mut b, effects_b) = sync(&mut g, now, &ids[1], 1, Vec::new());
    let (mut c, effects_c) = sync(&mut g, now, &ids[2], 1, Vec::new());
    assert!(!effects_b.persist_group && !effects_c.persist_group);
    assert!(answer(&mut b).is_none() && answer(&mut c).is_none());
    assert_eq!(g.state, GroupState::CompletingRebalance);

    let given = assignments(&[(&ids[0], "A"), (&ids[1], "B"), (&ids[2], "C")]);
    let (mut a, effects) = sync(&mut g, now + 1, &ids[0], 1, given);
    assert_eq!(g.state, GroupState::Stable);
    assert!(effects.persist_group);
    assert_eq!(effects.syncs_after_persist.len(), 3);
    assert!(
        answer(&mut b).is_none(),
        "nothing goes out before the metadata is durable"
    );
    deliver(effects);
    for (rx, expected) in [(&mut a, "A"), (&mut b, "B"), (&mut c, "C")] {
        let result = answer(rx).unwrap();
        assert_eq!(result.error, None);
        assert_eq!(result.assignment, Bytes::from(expected));
        assert_eq!(result.protocol_type.as_deref(), Some("consumer"));
        assert_eq!(result.protocol_name.as_deref(), Some("range"));
    }
}

#[test]
fn members_the_leader_left_out_get_an_empty_assignment() {
    let mut g = new_group(DELAY_MS);
    let (results, now) = form(&mut g, 0, vec![request(""), request("")]);
    let (leader, follower) = (&results[0].member_id, &results[1].member_id);
    let (mut follower_rx, _) = sync(&mut g, now, follower, 1, Vec::new());
    let (_, effects) = sync(
        &mut g,
        now,
        leader,
        1,
        assignments(&[(leader, "all"), ("not-a-member", "x")]),
    );
    deliver(effects);
    let result = answer(&mut follower_rx).unwrap();
    assert_eq!(result.error, None);
    assert!(result.assignment.is_empty());
}

#[test]
fn sync_in_stable_returns_the_current_assignment_at_once() {
    let (mut g, ids, now) = stable_group(2);
    let (mut rx, effects) = sync(
        &mut g,
        now + 1,
        &ids[1],
        1,
        assignments(&[(&ids[1], "ignored")]),
    );
    assert!(!effects.persist_group);
    let result = answer(&mut rx).unwrap();
    assert_eq!(result.error, None);
    assert_eq!(result.assignment, Bytes::from_static(b"a-1"));
}

#[test]
fn follower_that_never_syncs_is_removed_after_the_sync_deadline() {
    let mut g = new_group(DELAY_MS);
    let (results, now) = form(&mut g, 0, vec![request(""), request("")]);
    let (leader, follower) = (results[0].member_id.clone(), results[1].member_id.clone());
    let (_, effects) = sync(&mut g, now, &leader, 1, Vec::new());
    deliver(effects);
    assert_eq!(g.state, GroupState::Stable);
    let deadline_ms = now + i64::from(REBALANCE_MS);
    // Both keep their sessions alive; only the leader synced.
    assert_eq!(g.heartbeat(now + 1, &follower, None, 1), None);
    let mut t = now;
    while t + 5_000 < deadline_ms {
        t += 5_000;
        assert_eq!(g.heartbeat(t, &leader, None, 1), None);
        assert_eq!(g.heartbeat(t, &follower, None, 1), None);
        g.on_timer(t);
    }
    assert_eq!(g.state, GroupState::Stable);
    g.on_timer(deadline_ms);
    assert!(!g.members.contains_key(&follower));
    assert_eq!(g.state, GroupState::PreparingRebalance);
    assert_eq!(
        g.heartbeat(deadline_ms, &leader, None, 1),
        Some(ResponseError::RebalanceInProgress)
    );
}

#[test]
fn leader_that_never_syncs_is_removed_after_the_sync_deadline_and_waiting_syncs_are_told_to_rejoin()
{
    let mut g = new_group(DELAY_MS);
    let (results, now) = form(&mut g, 0, vec![request(""), request("")]);
    let (leader, follower) = (results[0].member_id.clone(), results[1].member_id.clone());
    let (mut follower_sync, _) = sync(&mut g, now, &follower, 1, Vec::new());
    let deadline_ms = now + i64::from(REBALANCE_MS);
    keep_alive(&mut g, &leader, None, 1, now, deadline_ms);
    assert_eq!(g.next_deadline_ms(), Some(deadline_ms));
    g.on_timer(deadline_ms);
    assert!(!g.members.contains_key(&leader));
    assert_eq!(
        answer(&mut follower_sync).unwrap().error,
        Some(ResponseError::RebalanceInProgress)
    );
    assert_eq!(g.state, GroupState::PreparingRebalance);
    let result = join_now(&mut g, deadline_ms + 1, request(&follower));
    assert_eq!(result.generation_id, 2);
    assert_eq!(result.leader, follower);
}

// ---------------------------------------------------------------------------
// Static membership (KIP-345)

#[test]
fn static_member_rejoining_in_stable_gets_a_new_id_without_rebalance() {
    let (mut g, ids, now) = stable_group_of(vec![static_request("", "a"), static_request("", "b")]);
    let (mut rx, effects) = join_with_effects(&mut g, now + 1, static_request("", "b"));
    let result = answer(&mut rx).expect("answered at once");
    assert!(
        effects.persist_group,
        "the new member id must be made durable"
    );
    assert_eq!(result.error, None);
    assert_ne!(result.member_id, ids[1]);
    assert!(result.member_id.starts_with("b-"));
    assert_eq!(result.generation_id, 1);
    assert_eq!(result.leader, ids[0]);
    assert!(result.members.is_empty());
    assert_eq!(g.state, GroupState::Stable);
    assert_eq!(g.generation_id, 1);

    // The leader is unaffected; the new id has the old assignment; the old
    // id is fenced.
    assert_eq!(g.heartbeat(now + 2, &ids[0], Some("a"), 1), None);
    assert_eq!(g.heartbeat(now + 2, &result.member_id, Some("b"), 1), None);
    assert_eq!(
        g.heartbeat(now + 2, &ids[1], Some("b"), 1),
        Some(ResponseError::FencedInstanceId)
    );
    let (mut sync_rx, _) = sync_full(
        &mut g,
        now + 2,
        &result.member_id,
        Some("b"),
        1,
        (None, None),
        Vec::new(),
    );
    assert_eq!(
        answer(&mut sync_rx).unwrap().assignment,
        Bytes::from_static(b"a-1")
    );
}

#[test]
fn static_leader_rejoining_in_stable_triggers_a_rebalance() {
    let (mut g, ids, now) = stable_group_of(vec![static_request("", "a"), static_request("", "b")]);
    let mut new_a = join(&mut g, now + 1, static_request("", "a"));
    assert!(answer(&mut new_a).is_none());
    assert_eq!(g.state, GroupState::PreparingRebalance);
    assert_eq!(
        g.heartbeat(now + 2, &ids[1], Some("b"), 1),
        Some(ResponseError::RebalanceInProgress)
    );
    let b = join_now(&mut g, now + 3, static_request(&ids[1], "b"));
    let new_a = answer(&mut new_a).unwrap();
    assert_ne!(new_a.member_id, ids[0]);
    assert_eq!(new_a.generation_id, 2);
    assert_eq!(new_a.leader, new_a.member_id);
    assert_eq!(b.leader, new_a.member_id);
    assert_eq!(new_a.members.len(), 2);
    let instances: HashSet<Option<String>> =
        new_a.members.iter().map(|(_, i, _)| i.clone()).collect();
    assert_eq!(
        instances,
        HashSet::from([Some("a".to_string()), Some("b".to_string())])
    );
}

#[test]
fn static_member_rejoining_with_changed_protocols_triggers_a_rebalance() {
    let (mut g, ids, now) = stable_group_of(vec![static_request("", "a"), static_request("", "b")]);
    let changed = JoinRequest {
        protocols: protocols(&[("range", "new-subscription")]),
        ..static_request("", "b")
    };
    let mut new_b = join(&mut g, now + 1, changed);
    assert!(answer(&mut new_b).is_none());
    assert_eq!(g.state, GroupState::PreparingRebalance);
    let a = join_now(&mut g, now + 2, static_request(&ids[0], "a"));
    assert_eq!(a.generation_id, 2);
    assert!(a
        .members
        .iter()
        .any(|(_, _, m)| m == &Bytes::from_static(b"new-subscription")));
    assert_eq!(answer(&mut new_b).unwrap().generation_id, 2);
}

#[test]
fn static_member_leaves_by_instance_id() {
    let (mut g, ids, now) = stable_group_of(vec![static_request("", "a"), static_request("", "b")]);
    let (errors, _) = g.leave(now, &[(String::new(), Some("b".to_string()))]);
    assert_eq!(errors, [None]);
    assert!(!g.members.contains_key(&ids[1]));
    assert_eq!(g.state, GroupState::PreparingRebalance);
    // The instance is free again: a new process joins as a new member.
    let mut b = join(&mut g, now + 1, static_request("", "b"));
    let a = join_now(&mut g, now + 1, static_request(&ids[0], "a"));
    assert_eq!(a.generation_id, 2);
    assert_eq!(answer(&mut b).unwrap().error, None);
    let (errors, _) = g.leave(
        now + 2,
        &[(String::new(), Some("never-joined".to_string()))],
    );
    assert_eq!(errors, [Some(ResponseError::UnknownMemberId)]);
}

#[test]
fn restored_static_member_rejoins_without_rebalance() {
    let mut g = Group::restore(
        "g",
        config(DELAY_MS),
        7,
        Some("consumer".to_string()),
        Some("range".to_string()),
        Some("m1".to_string()),
        0,
        vec![
            restored("m1", None, SESSION_MS),
            restored("m2", Some("b"), SESSION_MS),
        ],
        100,
    );
    let result = join_now(&mut g, 200, static_request("", "b"));
    assert_eq!(result.error, None);
    assert_eq!(result.generation_id, 7);
    assert_eq!(g.state, GroupState::Stable);
    assert_eq!(
        g.members[&result.member_id].assignment,
        Bytes::from_static(b"assignment-of-m2")
    );
}

// ---------------------------------------------------------------------------
// LeaveGroup

#[test]
fn last_member_leaving_empties_the_group_and_bumps_the_generation() {
    let (mut g, ids, now) = stable_group(1);
    let (errors, effects) = g.leave(now, &[(ids[0].clone(), None)]);
    assert_eq!(errors, [None]);
    assert!(effects.persist_group);
    assert_eq!(g.state, GroupState::Empty);
    assert_eq!(g.generation_id, 2);
    assert_eq!(g.protocol_name, None);
    assert_eq!(g.leader_id, None);
    assert!(g.is_empty());
    assert_eq!(g.next_deadline_ms(), None);
}

#[test]
fn leave_in_stable_starts_a_rebalance_among_the_rest() {
    let (mut g, ids, now) = stable_group(3);
    let (errors, effects) = g.leave(now, &[(ids[2].clone(), None)]);
    assert_eq!(errors, [None]);
    assert!(!effects.persist_group);
    assert_eq!(g.state, GroupState::PreparingRebalance);
    let mut b = join(&mut g, now + 1, request(&ids[1]));
    let a = join_now(&mut g, now + 1, request(&ids[0]));
    assert_eq!(a.generation_id, 2);
    assert_eq!(a.members.len(), 2);
    assert_eq!(answer(&mut b).unwrap().generation_id, 2);
}

#[test]
fn batched_leave_reports_each_member_on_its_own() {
    let (mut g, ids, now) =
        stable_group_of(vec![request(""), static_request("", "b"), request("")]);
    let leaving = [
        (ids[0].clone(), None),
        ("ghost".to_string(), None),
        (ids[2].clone(), Some("b".to_string())),
        (String::new(), Some("b".to_string())),
        (ids[0].clone(), None),
    ];
    let (errors, _) = g.leave(now, &leaving);
    assert_eq!(
        errors,
        [
            None,
            Some(ResponseError::UnknownMemberId),
            Some(ResponseError::FencedInstanceId),
            None,
            Some(ResponseError::UnknownMemberId),
        ]
    );
    let remaining: Vec<&String> = g.members.keys().collect();
    assert_eq!(remaining, [&ids[2]]);
    assert_eq!(g.state, GroupState::PreparingRebalance);
}

#[test]
fn leave_during_the_join_phase_completes_it_when_the_rest_has_joined() {
    let (mut g, ids, now) = stable_group(2);
    let mut leader = join(&mut g, now, request(&ids[0]));
    assert!(answer(&mut leader).is_none());
    g.leave(now + 1, &[(ids[1].clone(), None)]);
    let result = answer(&mut leader).unwrap();
    assert_eq!(result.generation_id, 2);
    assert_eq!(result.members.len(), 1);
}

#[test]
fn member_leaving_while_its_join_waits_is_told_it_is_unknown() {
    let (mut g, ids, now) = stable_group(2);
    let mut leader = join(&mut g, now, request(&ids[0]));
    g.leave(now + 1, &[(ids[0].clone(), None)]);
    assert_eq!(
        answer(&mut leader).unwrap().error,
        Some(ResponseError::UnknownMemberId)
    );
    let follower = join_now(&mut g, now + 2, request(&ids[1]));
    assert_eq!(follower.generation_id, 2);
    assert_eq!(follower.leader, ids[1]);
}

#[test]
fn member_leaving_while_its_sync_waits_is_told_it_is_unknown() {
    let mut g = new_group(DELAY_MS);
    let (results, now) = form(&mut g, 0, vec![request(""), request("")]);
    let (mut follower_sync, _) = sync(&mut g, now, &results[1].member_id, 1, Vec::new());
    g.leave(now + 1, &[(results[1].member_id.clone(), None)]);
    assert_eq!(
        answer(&mut follower_sync).unwrap().error,
        Some(ResponseError::UnknownMemberId)
    );
    assert_eq!(g.state, GroupState::PreparingRebalance);
}

// ---------------------------------------------------------------------------
// OffsetCommit checks

#[test]
fn commit_with_generation_minus_one_is_allowed_only_when_empty() {
    let g = new_group(0);
    assert_eq!(g.check_commit("", None, -1), Ok(()));
    let (g, ids, _) = stable_group(1);
    assert_eq!(
        g.check_commit("", None, -1),
        Err(ResponseError::UnknownMemberId)
    );
    assert_eq!(
        g.check_commit(&ids[0], None, -1),
        Err(ResponseError::IllegalGeneration)
    );
}

#[test]
fn member_commit_with_current_generation_is_allowed_in_stable_and_preparing_rebalance() {
    let (mut g, ids, now) = stable_group(2);
    assert_eq!(g.check_commit(&ids[1], None, 1), Ok(()));
    let _leader = join(&mut g, now, request(&ids[0]));
    assert_eq!(g.state, GroupState::PreparingRebalance);
    assert_eq!(g.check_commit(&ids[1], None, 1), Ok(()));
}

// ---------------------------------------------------------------------------
// Restore and timers

#[test]
fn restored_group_with_members_is_stable_and_they_can_heartbeat() {
    let mut g = Group::restore(
        "g",
        config(DELAY_MS),
        5,
        Some("consumer".to_string()),
        Some("range".to_string()),
        Some("m1".to_string()),
        1_234,
        vec![
            restored("m1", None, SESSION_MS),
            restored("m2", None, 20_000),
        ],
        100,
    );
    assert_eq!(g.state, GroupState::Stable);
    assert_eq!(g.generation_id, 5);
    assert_eq!(g.leader_id.as_deref(), Some("m1"));
    assert_eq!(g.state_timestamp_ms, 1_234);
    assert_eq!(
        g.members["m2"].metadata("range"),
        Bytes::from_static(b"range-meta")
    );
    assert_eq!(g.heartbeat(200, "m1", None, 5), None);
    assert_eq!(
        g.heartbeat(200, "m1", None, 4),
        Some(ResponseError::IllegalGeneration)
    );
    assert_eq!(g.check_commit("m2", None, 5), Ok(()));
    let result = sync_now(&mut g, 200, "m2", 5);
    assert_eq!(result.assignment, Bytes::from_static(b"assignment-of-m2"));
    assert_eq!(result.protocol_name.as_deref(), Some("range"));
}

#[test]
fn restored_members_get_a_fresh_session_and_expire_without_heartbeats() {
    let mut g = Group::restore(
        "g",
        config(DELAY_MS),
        5,
        Some("consumer".to_string()),
        Some("range".to_string()),
        Some("m1".to_string()),
        0,
        vec![restored("m1", None, SESSION_MS)],
        100,
    );
    let expiry_ms = 100 + i64::from(SESSION_MS);
    assert_eq!(g.next_deadline_ms(), Some(expiry_ms));
    g.on_timer(expiry_ms - 1);
    assert_eq!(g.state, GroupState::Stable);
    g.on_timer(expiry_ms);
    assert_eq!(g.state, GroupState::Empty);
    assert_eq!(g.generation_id, 6);
}

#[test]
fn restored_group_without_members_is_empty_and_takes_standalone_commits() {
    let g = Group::restore(
        "g",
        config(DELAY_MS),
        3,
        Some("consumer".to_string()),
        None,
        None,
        0,
        Vec::new(),
        100,
    );
    assert_eq!(g.state, GroupState::Empty);
    assert_eq!(g.generation_id, 3);
    assert!(g.is_empty());
    assert_eq!(g.check_commit("", None, -1), Ok(()));
    assert_eq!(g.next_deadline_ms(), None);
}

#[test]
fn next_deadline_is_the_earliest_timer() {
    let mut g = new_group(0);
    assert_eq!(g.next_deadline_ms(), None);
    // Empty with a pending member: its deadline to come back.
    let pending = join_now(
        &mut g,
        0,
        JoinRequest {
            require_known_member_id: true,
            ..request("")
        },
    );
    let id = pending.member_id;
    assert_eq!(g.next_deadline_ms(), Some(i64::from(SESSION_MS)));
    // CompletingRebalance: the session (10s) comes before the sync deadline (60s).
    join_now(&mut g, 1_000, request(&id));
    assert_eq!(g.next_deadline_ms(), Some(1_000 + i64::from(SESSION_MS)));
    // Stable: the session, pushed by each heartbeat.
    let (_, effects) = sync(&mut g, 2_000, &id, 1, Vec::new());
    deliver(effects);
    assert_eq!(g.next_deadline_ms(), Some(2_000 + i64::from(SESSION_MS)));
    g.heartbeat(4_000, &id, None, 1);
    assert_eq!(g.next_deadline_ms(), Some(4_000 + i64::from(SESSION_MS)));
    // PreparingRebalance: a member that has not rejoined may expire first.
    let _newcomer = join(&mut g, 5_000, request(""));
    assert_eq!(g.state, GroupState::PreparingRebalance);
    assert_eq!(g.next_deadline_ms(), Some(4_000 + i64::from(SESSION_MS)));
}

#[test]
fn next_deadline_in_the_join_phase_is_the_rebalance_deadline_once_everyone_waits() {
    let (mut g, ids, now) = stable_group(1);
    // A pending member with a session longer than the rebalance timeout
    // blocks the join until the rebalance deadline.
    let pending = join_now(
        &mut g,
        now,
        JoinRequest {
            require_known_member_id: true,
            session_timeout_ms: 2 * REBALANCE_MS,
            ..request("")
        },
    );
    assert_eq!(pending.error, Some(ResponseError::MemberIdRequired));
    let mut leader = join(&mut g, now, request(&ids[0]));
    let deadline_ms = now + i64::from(REBALANCE_MS);
    assert_eq!(g.next_deadline_ms(), Some(deadline_ms));
    g.on_timer(deadline_ms);
    assert_eq!(answer(&mut leader).unwrap().generation_id, 2);
}

#[test]
fn timer_without_anything_due_changes_nothing() {
    let (mut g, ids, now) = stable_group(2);
    let effects = g.on_timer(now + 1);
    assert!(!effects.persist_group);
    assert!(effects.syncs_after_persist.is_empty());
    assert_eq!(g.state, GroupState::Stable);
    assert_eq!(g.members.len(), 2);
    assert_eq!(g.heartbeat(now + 2, &ids[1], None, 1), None);
}

// ---------------------------------------------------------------------------
// Rejoins of existing members

#[test]
fn rejoin_with_changed_metadata_in_stable_rebalances_and_the_other_member_learns_by_heartbeat() {
    // Cooperative rebalancing: a member whose owned partitions changed
    // rejoins with new metadata.
    let (mut g, ids, now) = stable_group(2);
    let changed = JoinRequest {
        protocols: protocols(&[("range", "owned-less")]),
        ..request(&ids[1])
    };
    let mut follower = join(&mut g, now + 1, changed);
    assert!(answer(&mut follower).is_none());
    assert_eq!(g.state, GroupState::PreparingRebalance);
    assert_eq!(
        g.heartbeat(now + 2, &ids[0], None, 1),
        Some(ResponseError::RebalanceInProgress)
    );
    let leader = join_now(&mut g, now + 3, request(&ids[0]));
    let follower = answer(&mut follower).unwrap();
    assert_eq!(leader.generation_id, 2);
    assert_eq!(follower.generation_id, 2);
    assert_eq!(leader.leader, ids[0]);
    assert!(leader
        .members
        .contains(&(ids[1].clone(), None, Bytes::from_static(b"owned-less"))));
    assert_eq!(g.state, GroupState::CompletingRebalance);
}

#[test]
fn follower_rejoin_with_unchanged_metadata_in_stable_gets_the_current_generation() {
    let (mut g, ids, now) = stable_group(2);
    let result = join_now(&mut g, now + 1, request(&ids[1]));
    assert_eq!(result.error, None);
    assert_eq!(result.generation_id, 1);
    assert_eq!(result.leader, ids[0]);
    assert!(result.members.is_empty());
    assert_eq!(g.state, GroupState::Stable);
    assert_eq!(g.generation_id, 1);
}

#[test]
fn leader_rejoin_in_stable_triggers_a_rebalance() {
    // The leader may rejoin because topic metadata changed, which its
    // member metadata does not show.
    let (mut g, ids, now) = stable_group(2);
    let mut leader = join(&mut g, now + 1, request(&ids[0]));
    assert!(answer(&mut leader).is_none());
    assert_eq!(g.state, GroupState::PreparingRebalance);
}

#[test]
fn rejoin_with_unchanged_metadata_in_completing_rebalance_repeats_the_answer() {
    let mut g = new_group(DELAY_MS);
    let (results, now) = form(&mut g, 0, vec![request(""), request("")]);
    let leader = join_now(&mut g, now + 1, request(&results[0].member_id));
    assert_eq!(
        leader, results[0],
        "the leader lost its answer and gets it again, members included"
    );
    let follower = join_now(&mut g, now + 1, request(&results[1].member_id));
    assert_eq!(follower, results[1]);
    assert_eq!(g.state, GroupState::CompletingRebalance);
}

#[test]
fn rejoin_with_changed_metadata_in_completing_rebalance_restarts_the_rebalance() {
    let mut g = new_group(DELAY_MS);
    let (results, now) = form(&mut g, 0, vec![request(""), request("")]);
    let changed = JoinRequest {
        protocols: protocols(&[("range", "changed")]),
        ..request(&results[1].member_id)
    };
    let mut follower = join(&mut g, now + 1, changed);
    assert_eq!(g.state, GroupState::PreparingRebalance);
    let leader = join_now(&mut g, now + 2, request(&results[0].member_id));
    assert_eq!(leader.generation_id, 2);
    assert_eq!(answer(&mut follower).unwrap().generation_id, 2);
}

#[test]
fn second_join_from_the_same_member_replaces_the_first_waiter() {
    let (mut g, ids, now) = stable_group(2);
    let mut first = join(&mut g, now, request(&ids[0]));
    let mut second = join(&mut g, now + 1, request(&ids[0]));
    assert_eq!(
        answer(&mut first).unwrap().error,
        Some(ResponseError::RebalanceInProgress)
    );
    assert!(answer(&mut second).is_none());
    join_now(&mut g, now + 2, request(&ids[1]));
    assert_eq!(answer(&mut second).unwrap().generation_id, 2);
}
