//! Which partition directories in the log directory belong to the metadata.
//!
//! Every partition directory carries Kafka's `partition.metadata` file
//! (`version: 0`, `topic_id: <Kafka Uuid string>`), written when the
//! partition is created. At startup, before any partition is opened, a
//! directory whose topic is not in the metadata, whose partition index is
//! beyond the topic's count, or whose topic id differs is *stray*: it is
//! renamed aside (`<dir>.<id>-stray`, like Kafka's stray logs) with a
//! warning and never loaded. So a crash between "logs created" and "metadata
//! written" (CreateTopics, CreatePartitions), or between "metadata removed"
//! and "data deleted" (DeleteTopics), cannot resurrect old records under a
//! re-created topic of the same name.

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::path::Path;

use uuid::Uuid;

use super::{kafka_uuid_string, write_atomically, TopicMeta};

/// Kafka's per-partition topic-id file.
pub const PARTITION_METADATA_FILE: &str = "partition.metadata";
/// Suffix of a directory moved aside (Kafka's `-stray`).
pub const STRAY_SUFFIX: &str = "-stray";
/// Most directory entries looked at in one startup scan (bounds the walk).
pub const LOG_DIR_SCAN_ENTRIES_MAX: usize = 1_000_000;

/// Writes `partition.metadata` into a partition directory, durably.
pub fn write_partition_metadata(dir: &Path, topic_id: Uuid) -> std::io::Result<()> {
    let text = format!("version: 0\ntopic_id: {}\n", kafka_uuid_string(&topic_id));
    write_atomically(&dir.join(PARTITION_METADATA_FILE), text.as_bytes())
}

/// The topic id a partition directory records, `None` if it has no file
/// (a directory written by an older Fjord).
pub fn read_partition_metadata(dir: &Path) -> std::io::Result<Option<Uuid>> {
    match std::fs::read_to_string(dir.join(PARTITION_METADATA_FILE)) {
        Ok(text) => {
            let id = text
                .lines()
                .find_map(|l| l.strip_prefix("topic_id:"))
                .and_then(|v| parse_kafka_uuid(v.trim()));
            match id {
                Some(id) => Ok(Some(id)),
                None => Err(std::io::Error::new(
                    ErrorKind::InvalidData,
                    format!("{} has no valid topic_id", dir.display()),
                )),
            }
        }
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Parses Kafka's 22-character URL-safe base64 Uuid string.
pub fn parse_kafka_uuid(text: &str) -> Option<Uuid> {
    if text.len() != 22 {
        return None;
    }
    let mut acc: u32 = 0;
    let mut bits = 0;
    let mut out = Vec::with_capacity(16);
    for c in text.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    let bytes: [u8; 16] = out.get(..16)?.try_into().ok()?;
    Some(Uuid::from_bytes(bytes))
}

/// `<topic>-<partition>` back into its parts (`None` for anything else,
/// including directories already moved aside).
fn parse_dir_name(name: &str) -> Option<(&str, i32)> {
    let (topic, partition) = name.rsplit_once('-')?;
    let partition: i32 = partition.parse().ok()?;
    (!topic.is_empty() && partition >= 0).then_some((topic, partition))
}

/// Moves every stray partition directory aside (see the module doc) and
/// returns how many it moved; a member directory without the file (from an
/// older Fjord) gets one, so that it is protected from now on. Blocking; run
/// before partitions are opened.
pub fn move_stray_partition_dirs(log_dir: &Path, topics: &[TopicMeta]) -> std::io::Result<usize> {
    let by_name: BTreeMap<&str, &TopicMeta> = topics.iter().map(|t| (t.name.as_str(), t)).collect();
    let mut moved = 0;
    for entry in std::fs::read_dir(log_dir)?.take(LOG_DIR_SCAN_ENTRIES_MAX) {
        let entry = entry?;
        if !entry.file_type()?.is_dir() {
            continue;
        }
        let file_name = entry.file_name();
        let Some(name) = file_name.to_str() else {
            continue;
        };
        if name == super::METADATA_DIR {
            continue;
        }
        let Some((topic, partition)) = parse_dir_name(name) else {
            continue;
        };
        let dir = entry.path();
        let why = match by_name.get(topic) {
            None => Some("its topic is not in the metadata".to_string()),
            Some(meta) if partition >= meta.partitions => {
                Some(format!("the topic has {} partitions", meta.partitions))
            }
            Some(meta) => match read_partition_metadata(&dir) {
                Ok(Some(id)) if id != meta.id => Some(format!(
                    "it belongs to topic id {}, not {}",
                    kafka_uuid_string(&id),
                    kafka_uuid_string(&meta.id)
                )),
                Ok(Some(_)) => None,
                Ok(None) => {
                    write_partition_metadata(&dir, meta.id)?;
                    None
                }
                Err(e) => Some(format!("its {PARTITION_METADATA_FILE} is unreadable: {e}")),
            },
        };
        if let Some(why) = why {
            let aside = log_dir.join(format!("{name}.{}{STRAY_SUFFIX}", Uuid::new_v4().simple()));
            std::fs::rename(&dir, &aside)?;
            tracing::warn!(dir = %dir.display(), moved_to = %aside.display(), %why, "stray partition directory moved aside");
            moved += 1;
        }
    }
    if moved > 0 {
        std::fs::File::open(log_dir)?.sync_all()?;
    }
    Ok(moved)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(name: &str, partitions: i32) -> TopicMeta {
        TopicMeta {
            name: name.into(),
            id: Uuid::new_v4(),
            partitions,
            configs: BTreeMap::new(),
            internal: false,
            replicas: (0..partitions).map(|_| vec![1]).collect(),
        }
    }

    #[test]
    fn kafka_uuid_strings_round_trip() {
        for _ in 0..100 {
            let id = Uuid::new_v4();
            assert_eq!(parse_kafka_uuid(&kafka_uuid_string(&id)), Some(id));
        }
        assert_eq!(parse_kafka_uuid("short"), None);
    }

    #[test]
    fn strays_are_moved_aside_and_members_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let kept = meta("kept", 2);
        let recreated = meta("recreated", 1);
        for (name, id) in [
            ("kept-0", Some(kept.id)),
            ("kept-1", None),
            ("kept-2", Some(kept.id)),
            ("gone-0", Some(Uuid::new_v4())),
            ("recreated-0", Some(Uuid::new_v4())),
        ] {
            let p = dir.path().join(name);
            std::fs::create_dir(&p).expect("mkdir");
            if let Some(id) = id {
                write_partition_metadata(&p, id).expect("write");
            }
        }
        std::fs::create_dir(dir.path().join("not-a-partition")).expect("mkdir");
        let moved =
            move_stray_partition_dirs(dir.path(), &[kept.clone(), recreated]).expect("scan");
        assert_eq!(moved, 3);
        assert!(dir.path().join("kept-0").is_dir());
        assert!(dir.path().join("kept-1").is_dir());
        assert!(!dir.path().join("kept-2").exists());
        assert!(!dir.path().join("gone-0").exists());
        assert!(!dir.path().join("recreated-0").exists());
        assert!(dir.path().join("not-a-partition").is_dir());
        assert_eq!(
            read_partition_metadata(&dir.path().join("kept-0")).expect("read"),
            Some(kept.id)
        );
        // A second scan finds nothing more: moved directories are not partitions.
        assert_eq!(
            move_stray_partition_dirs(dir.path(), &[kept]).expect("scan"),
            0
        );
    }
}
