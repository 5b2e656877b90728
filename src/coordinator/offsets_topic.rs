//! The records of `__consumer_offsets`, in Apache Kafka's own layout so that
//! the topic means the same thing to a Kafka operator's tools:
//!
//! | key version | key | value |
//! |---|---|---|
//! | 1 | OffsetCommitKey: group, topic, partition | OffsetCommitValue v3: offset, leader epoch, metadata, commit timestamp |
//! | 2 | GroupMetadataKey: group | GroupMetadataValue v3: protocol type, generation, protocol, leader, state timestamp, members |
//!
//! A null value is a tombstone (offset deleted, group deleted). Decoding is
//! bounded and total: a malformed record is an error, never a panic.

use bytes::{BufMut, Bytes, BytesMut};

use super::group::RestoredMember;

const KEY_OFFSET_COMMIT: i16 = 1;
const KEY_OFFSET_COMMIT_V0: i16 = 0;
const KEY_GROUP_METADATA: i16 = 2;
const VALUE_OFFSET_COMMIT_VERSION: i16 = 3;
const VALUE_GROUP_METADATA_VERSION: i16 = 3;
/// Most members one persisted group may list.
const MEMBERS_MAX: usize = 100_000;

/// What one `__consumer_offsets` record says.
#[derive(Clone, Debug, PartialEq)]
pub enum OffsetsRecord {
    Offset {
        group: String,
        topic: String,
        partition: i32,
        /// `None`: the offset was deleted.
        value: Option<OffsetValue>,
    },
    Group {
        group: String,
        /// `None`: the group was deleted.
        value: Option<GroupValue>,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct OffsetValue {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: String,
    pub commit_timestamp_ms: i64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct GroupValue {
    pub protocol_type: String,
    pub generation_id: i32,
    pub protocol_name: Option<String>,
    pub leader_id: Option<String>,
    pub state_timestamp_ms: i64,
    pub members: Vec<RestoredMember>,
}

impl OffsetsRecord {
    /// The record's key and value bytes.
    pub fn encode(&self) -> (Bytes, Option<Bytes>) {
        let mut key = BytesMut::new();
        match self {
            OffsetsRecord::Offset {
                group,
                topic,
                partition,
                value,
            } => {
                key.put_i16(KEY_OFFSET_COMMIT);
                put_str(&mut key, group);
                put_str(&mut key, topic);
                key.put_i32(*partition);
                let value = value.as_ref().map(|v| {
                    let mut out = BytesMut::new();
                    out.put_i16(VALUE_OFFSET_COMMIT_VERSION);
                    out.put_i64(v.offset);
                    out.put_i32(v.leader_epoch);
                    put_str(&mut out, &v.metadata);
                    out.put_i64(v.commit_timestamp_ms);
                    out.freeze()
                });
                (key.freeze(), value)
            }
            OffsetsRecord::Group { group, value } => {
                key.put_i16(KEY_GROUP_METADATA);
                put_str(&mut key, group);
                let value = value.as_ref().map(|v| {
                    let mut out = BytesMut::new();
                    out.put_i16(VALUE_GROUP_METADATA_VERSION);
                    put_str(&mut out, &v.protocol_type);
                    out.put_i32(v.generation_id);
                    put_nullable_str(&mut out, v.protocol_name.as_deref());
                    put_nullable_str(&mut out, v.leader_id.as_deref());
                    out.put_i64(v.state_timestamp_ms);
                    out.put_i32(v.members.len() as i32);
                    for m in &v.members {
                        put_str(&mut out, &m.member_id);
                        put_nullable_str(&mut out, m.group_instance_id.as_deref());
                        put_str(&mut out, &m.client_id);
                        put_str(&mut out, &m.client_host);
                        out.put_i32(m.rebalance_timeout_ms);
                        out.put_i32(m.session_timeout_ms);
                        put_bytes(&mut out, &m.subscription);
                        put_bytes(&mut out, &m.assignment);
                    }
                    out.freeze()
                });
                (key.freeze(), value)
            }
        }
    }

    /// Parses a record's key and value.
    pub fn decode(key: &[u8], value: Option<&[u8]>) -> Result<OffsetsRecord, String> {
        let mut k = Reader::new(key);
        match k.i16()? {
            KEY_OFFSET_COMMIT | KEY_OFFSET_COMMIT_V0 => {
                let group = k.string()?;
                let topic = k.string()?;
                let partition = k.i32()?;
                let value = match value {
                    None => None,
                    Some(v) => {
                        let mut r = Reader::new(v);
                        let version = r.i16()?;
                        let offset = r.i64()?;
                        let leader_epoch = if version >= 3 { r.i32()? } else { -1 };
                        let metadata = r.string()?;
                        let commit_timestamp_ms = r.i64()?;
                        Some(OffsetValue {
                            offset,
                            leader_epoch,
                            metadata,
                            commit_timestamp_ms,
                        })
                    }
                };
                Ok(OffsetsRecord::Offset {
                    group,
                    topic,
                    partition,
                    value,
                })
            }
            KEY_GROUP_METADATA => {
                let group = k.string()?;
                let value = match value {
                    None => None,
                    Some(v) => Some(decode_group_value(v)?),
                };
                Ok(OffsetsRecord::Group { group, value })
            }
            other => Err(format!("unknown __consumer_offsets key version {other}")),
        }
    }
}

fn decode_group_value(v: &[u8]) -> Result<GroupValue, String> {
    let mut r = Reader::new(v);
    let version = r.i16()?;
    if !(0..=3).contains(&version) {
        return Err(format!("unsupported group metadata version {version}"));
    }
    let protocol_type = r.string()?;
    let generation_id = r.i32()?;
    let protocol_name = r.nullable_string()?;
    let leader_id = r.nullable_string()?;
    let state_timestamp_ms = if version >= 2 { r.i64()? } else { -1 };
    let count = r.i32()?;
    if count < 0 || count as usize > MEMBERS_MAX {
        return Err(format!("bad member count {count}"));
    }
    let mut members = Vec::with_capacity((count as usize).min(v.len()));
    for _ in 0..count {
        let member_id = r.string()?;
        let group_instance_id = if version >= 3 {
            r.nullable_string()?
        } else {
            None
        };
        let client_id = r.string()?;
        let client_host = r.string()?;
        let rebalance_timeout_ms = if version >= 1 { r.i32()? } else { 0 };
        let session_timeout_ms = r.i32()?;
        let subscription = r.bytes()?;
        let assignment = r.bytes()?;
        members.push(RestoredMember {
            member_id,
            group_instance_id,
            client_id,
            client_host,
            rebalance_timeout_ms: if version >= 1 {
                rebalance_timeout_ms
            } else {
                session_timeout_ms
            },
            session_timeout_ms,
            subscription,
            assignment,
        });
    }
    Ok(GroupValue {
        protocol_type,
        generation_id,
        protocol_name,
        leader_id,
        state_timestamp_ms,
        members,
    })
}

fn put_str(out: &mut BytesMut, s: &str) {
    let len = s.len().min(i16::MAX as usize);
    out.put_i16(len as i16);
    out.put_slice(&s.as_bytes()[..len]);
}

fn put_nullable_str(out: &mut BytesMut, s: Option<&str>) {
    match s {
        Some(s) => put_str(out, s),
        None => out.put_i16(-1),
    }
}

fn put_bytes(out: &mut BytesMut, b: &[u8]) {
    out.put_i32(b.len() as i32);
    out.put_slice(b);
}

/// A bounds-checked big-endian reader.
struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, at: 0 }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(n).ok_or("length overflow")?;
        let slice = self
            .buf
            .get(self.at..end)
            .ok_or_else(|| format!("truncated record at byte {}", self.at))?;
        self.at = end;
        Ok(slice)
    }

    fn i16(&mut self) -> Result<i16, String> {
        let b = self.take(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    fn i32(&mut self) -> Result<i32, String> {
        let b = self.take(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn i64(&mut self) -> Result<i64, String> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(i64::from_be_bytes(a))
    }

    fn nullable_string(&mut self) -> Result<Option<String>, String> {
        let len = self.i16()?;
        if len < 0 {
            return Ok(None);
        }
        let b = self.take(len as usize)?;
        String::from_utf8(b.to_vec())
            .map(Some)
            .map_err(|e| e.to_string())
    }

    fn string(&mut self) -> Result<String, String> {
        self.nullable_string()?
            .ok_or_else(|| "null where a string is required".to_string())
    }

    fn bytes(&mut self) -> Result<Bytes, String> {
        let len = self.i32()?;
        if len < 0 {
            return Ok(Bytes::new());
        }
        Ok(Bytes::copy_from_slice(self.take(len as usize)?))
    }
}

/// Kafka's `Utils.abs(groupId.hashCode()) % partitions`: Java's String
/// hashCode over UTF-16 code units, so a group lands on the same partition
/// number as it would in Kafka.
pub fn partition_for_group(group: &str, partitions: i32) -> i32 {
    let mut h: i32 = 0;
    for unit in group.encode_utf16() {
        h = h.wrapping_mul(31).wrapping_add(i32::from(unit));
    }
    // Utils.abs maps i32::MIN to 0, unlike i32::abs.
    let positive = if h == i32::MIN { 0 } else { h.abs() };
    positive % partitions.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_records_round_trip() {
        let record = OffsetsRecord::Offset {
            group: "g".into(),
            topic: "orders".into(),
            partition: 3,
            value: Some(OffsetValue {
                offset: 42,
                leader_epoch: 5,
                metadata: "m".into(),
                commit_timestamp_ms: 1_700_000_000_000,
            }),
        };
        let (k, v) = record.encode();
        assert_eq!(OffsetsRecord::decode(&k, v.as_deref()), Ok(record));
    }

    #[test]
    fn group_records_and_tombstones_round_trip() {
        let record = OffsetsRecord::Group {
            group: "g".into(),
            value: Some(GroupValue {
                protocol_type: "consumer".into(),
                generation_id: 7,
                protocol_name: Some("range".into()),
                leader_id: Some("m-1".into()),
                state_timestamp_ms: 99,
                members: vec![RestoredMember {
                    member_id: "m-1".into(),
                    group_instance_id: Some("i-1".into()),
                    client_id: "c".into(),
                    client_host: "/127.0.0.1".into(),
                    rebalance_timeout_ms: 300_000,
                    session_timeout_ms: 45_000,
                    subscription: Bytes::from_static(b"sub"),
                    assignment: Bytes::from_static(b"asg"),
                }],
            }),
        };
        let (k, v) = record.encode();
        assert_eq!(OffsetsRecord::decode(&k, v.as_deref()), Ok(record));
        let tombstone = OffsetsRecord::Group {
            group: "g".into(),
            value: None,
        };
        let (k, v) = tombstone.encode();
        assert_eq!(v, None);
        assert_eq!(OffsetsRecord::decode(&k, None), Ok(tombstone));
    }

    #[test]
    fn malformed_records_are_errors() {
        assert!(OffsetsRecord::decode(&[], None).is_err());
        assert!(OffsetsRecord::decode(&[0, 9, 0, 1, b'g'], None).is_err());
        assert!(OffsetsRecord::decode(&[0, 2, 0, 5, b'g'], None).is_err());
        let (k, _) = OffsetsRecord::Group {
            group: "g".into(),
            value: None,
        }
        .encode();
        assert!(OffsetsRecord::decode(&k, Some(&[0, 3, 0x7f, 0xff])).is_err());
    }

    #[test]
    fn group_partition_matches_java_string_hash_code() {
        // Values printed by jshell: "test-group".hashCode() == 627841412,
        // "ünïcødé".hashCode() == -609219977.
        assert_eq!(partition_for_group("test-group", 50), 627841412 % 50);
        assert_eq!(partition_for_group("ünïcødé", 50), 609219977 % 50);
        assert_eq!(partition_for_group("", 50), 0);
        for g in ["a", "console-consumer-12345", "ünïcødé"] {
            let p = partition_for_group(g, 50);
            assert!((0..50).contains(&p));
        }
    }
}
