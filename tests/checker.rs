//! The loss-and-duplicate checker the fault tests rely on, checked on
//! made-up logs: each case is a way a broker could lose, duplicate or move
//! an acknowledged record, and the checker must name it. No broker runs
//! here; a checker that passed everything would pass every fault test too.

mod common;

use common::{assert_exactly_acked, check_acks_present, message_key, message_value, Ack, Record};

const KEYS: u64 = 4;

/// The partition a message goes to in these logs: its key's.
fn partition_of(id: u64) -> i32 {
    (id % KEYS) as i32 % 2
}

/// A log holding messages `ids` in this order, each partition from offset 0.
fn log_of(ids: &[u64]) -> Vec<Record> {
    let mut next = [0i64; 2];
    ids.iter()
        .map(|&id| {
            let partition = partition_of(id);
            let offset = next[partition as usize];
            next[partition as usize] += 1;
            Record {
                partition,
                offset,
                key: Some(message_key(id, KEYS).into_bytes()),
                value: Some(message_value(id).into_bytes()),
            }
        })
        .collect()
}

/// The acknowledgements a broker that stored `log` would have sent.
fn acks_of(log: &[Record]) -> Vec<Ack> {
    log.iter()
        .map(|r| Ack {
            id: common::parse_id(r.value.as_deref().unwrap_or_default()).expect("made-up value"),
            partition: r.partition,
            offset: r.offset,
        })
        .collect()
}

fn failure(acks: &[Ack], log: &[Record]) -> String {
    match assert_exactly_acked(acks, log, KEYS) {
        Ok(()) => panic!("the checker passed a bad log: {acks:?} against {log:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_log_holding_exactly_what_was_acknowledged_passes() {
    let log = log_of(&(0..20).collect::<Vec<_>>());
    assert_exactly_acked(&acks_of(&log), &log, KEYS).expect("a good log");
}

#[test]
fn a_lost_acknowledged_record_is_named() {
    let log = log_of(&(0..20).collect::<Vec<_>>());
    let acks = acks_of(&log);
    // The broker lost the tail of partition 1 (messages 17 and 19).
    let kept: Vec<Record> = log
        .iter()
        .filter(|r| r.partition != 1 || r.offset < 8)
        .cloned()
        .collect();
    assert_eq!(
        check_acks_present(&acks, &kept, KEYS).expect("comparable"),
        2
    );
    let why = failure(&acks, &kept);
    assert!(
        why.contains("2 of 20 acknowledged messages are missing"),
        "{why}"
    );
    assert!(why.contains("message 17 at 1/8"), "{why}");
}

#[test]
fn a_duplicated_record_is_named() {
    let log = log_of(&[0, 1, 2, 3, 4]);
    let acks = acks_of(&log);
    // A retried batch stored twice: message 4 again after itself.
    let doubled = log_of(&[0, 1, 2, 3, 4, 4]);
    let why = failure(&acks, &doubled);
    assert!(
        why.contains("received 6 records for 5 acknowledged messages"),
        "{why}"
    );
    assert!(why.contains("0@3"), "{why}");
    assert!(why.contains("(message acknowledged at 0@2)"), "{why}");
}

#[test]
fn a_record_moved_to_another_offset_is_named() {
    let acks = acks_of(&log_of(&[0, 2, 4]));
    // Same partition, same records, another order: 2 is where 4 was acked.
    let swapped = log_of(&[0, 4, 2]);
    let why = failure(&acks, &swapped);
    assert!(
        why.contains("but message 2 was acknowledged there"),
        "{why}"
    );
}

#[test]
fn a_record_acknowledged_without_an_offset_counts_once_found_by_value() {
    let ids: Vec<u64> = (0..12).collect();
    let log = log_of(&ids);
    let mut acks = acks_of(&log);
    // librdkafka's implicit acks: persisted, offset unknown (-1). Message
    // 10 is the last of partition 0, so leaving it out moves no other.
    for ack in acks.iter_mut().filter(|a| a.id == 6 || a.id == 10) {
        ack.offset = -1;
    }
    assert_exactly_acked(&acks, &log, KEYS).expect("offset-less acks found by value");

    // Not there at all: missing.
    let without_10 = log_of(&[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 11]);
    let why = failure(&acks, &without_10);
    assert!(why.contains("message 10 at 0/-1"), "{why}");

    // There twice: a duplicate, though no offset names either copy.
    let twice = log_of(&[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 10]);
    let why = failure(&acks, &twice);
    assert!(
        why.contains("message 10 (acknowledged without an offset) is in 0/* 2 times"),
        "{why}"
    );
}

#[test]
fn records_of_one_key_out_of_send_order_are_named() {
    // Message 4 (key 0) stored before message 0 (key 0), both acked there.
    let log = log_of(&[4, 0, 1, 2, 3]);
    let why = failure(&acks_of(&log), &log);
    assert!(why.contains("key"), "{why}");
}
