//! Cluster metadata: the cluster id, the brokers, and every topic's id,
//! partition count and configs.
//!
//! Today this is one node's durable copy, a JSON document rewritten atomically
//! (write to a temporary file, fsync, rename) on every change; changes are rare
//! admin operations, so rewriting the whole document keeps recovery trivial.
//! When the metadata Raft group arrives, the same [`ClusterMetadata`] methods
//! become the state machine's `apply`, and callers do not change.

pub mod auto_create;
pub mod broker_config;
pub mod partition_dirs;
pub mod topic_config;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use kafka_protocol::error::ResponseError;
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use broker_config::BrokerLayers;
pub use topic_config::TopicConfigs;

/// Most partitions a topic may have (Kafka's own practical limit is far
/// lower per broker; this bounds memory spent on one bad request).
pub const TOPIC_PARTITIONS_MAX: i32 = 10_000;
/// Kafka's limit on a topic name's length.
pub const TOPIC_NAME_BYTES_MAX: usize = 249;

/// One topic as the cluster knows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TopicMeta {
    pub name: String,
    pub id: Uuid,
    pub partitions: i32,
    /// Only the configs set on this topic; defaults come from the broker.
    pub configs: BTreeMap<String, String>,
    #[serde(default)]
    pub internal: bool,
}

#[derive(Clone, Default, Serialize, Deserialize)]
struct Document {
    topics: BTreeMap<String, TopicMeta>,
    /// Dynamic broker configs by AlterConfigs resource name: `""` is the
    /// cluster-wide default, `"<node.id>"` one broker's own.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    broker_configs: BTreeMap<String, BTreeMap<String, String>>,
}

/// The durable, shared view of the cluster's metadata.
pub struct ClusterMetadata {
    cluster_id: String,
    node_id: i32,
    path: PathBuf,
    state: RwLock<Document>,
    /// Serialises admin changes (create, delete, grow, reconfigure), which
    /// do file I/O between their check and their commit; they are rare, and
    /// this keeps "check, create the logs, register" free of races.
    changes: parking_lot::Mutex<()>,
}

impl ClusterMetadata {
    /// Opens (or creates) the metadata in `log_dir`. The cluster id is created
    /// once and kept in `meta.properties`, like Kafka's.
    pub fn open(log_dir: &Path, node_id: i32) -> anyhow::Result<ClusterMetadata> {
        std::fs::create_dir_all(log_dir)?;
        let meta_path = log_dir.join("meta.properties");
        let cluster_id = match std::fs::read_to_string(&meta_path) {
            Ok(text) => {
                let mut id = None;
                for line in text.lines() {
                    if let Some((k, v)) = line.split_once('=') {
                        if k.trim() == "cluster.id" {
                            id = Some(v.trim().to_string());
                        }
                        if k.trim() == "node.id" && v.trim() != node_id.to_string() {
                            anyhow::bail!(
                                "{} belongs to node {}, but this is node {node_id}",
                                log_dir.display(),
                                v.trim()
                            );
                        }
                    }
                }
                id.ok_or_else(|| anyhow::anyhow!("{} has no cluster.id", meta_path.display()))?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let id = new_cluster_id();
                write_atomically(
                    &meta_path,
                    format!("version=1\ncluster.id={id}\nnode.id={node_id}\n").as_bytes(),
                )?;
                id
            }
            Err(e) => return Err(e.into()),
        };
        let path = log_dir.join("fjord-metadata.json");
        let state = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice::<Document>(&bytes)
                .map_err(|e| anyhow::anyhow!("{} is not valid metadata: {e}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Document::default(),
            Err(e) => return Err(e.into()),
        };
        Ok(ClusterMetadata {
            cluster_id,
            node_id,
            path,
            state: RwLock::new(state),
            changes: parking_lot::Mutex::new(()),
        })
    }

    /// Holds off other admin changes while the guard lives (see `changes`).
    pub fn lock_changes(&self) -> parking_lot::MutexGuard<'_, ()> {
        self.changes.lock()
    }

    /// The dynamic broker configs stored under an AlterConfigs resource name.
    pub fn broker_configs(&self, resource_name: &str) -> BTreeMap<String, String> {
        self.state
            .read()
            .broker_configs
            .get(resource_name)
            .cloned()
            .unwrap_or_default()
    }

    /// Replaces the dynamic broker configs of one resource name (validated
    /// by the caller) and persists the change.
    pub fn set_broker_configs(
        &self,
        resource_name: &str,
        configs: BTreeMap<String, String>,
    ) -> Result<(), (ResponseError, String)> {
        let mut state = self.state.write();
        let mut next = state.clone();
        if configs.is_empty() {
            next.broker_configs.remove(resource_name);
        } else {
            next.broker_configs
                .insert(resource_name.to_string(), configs);
        }
        self.persist(&next)?;
        *state = next;
        Ok(())
    }

    /// Partitions of every topic, the figure `max.broker.partitions` caps.
    pub fn partition_count_total(&self) -> i64 {
        self.state
            .read()
            .topics
            .values()
            .map(|t| i64::from(t.partitions))
            .sum()
    }

    /// Kafka's collision rule: `.` and `_` are the same in metric names, so
    /// `a.b` and `a_b` cannot both exist.
    pub fn colliding_topic(&self, name: &str) -> Option<String> {
        let unified = |n: &str| n.replace('.', "_");
        let wanted = unified(name);
        self.state
            .read()
            .topics
            .keys()
            .find(|existing| existing.as_str() != name && unified(existing) == wanted)
            .cloned()
    }

    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    /// The controller: on a single node, the node itself.
    pub fn controller_id(&self) -> i32 {
        self.node_id
    }

    pub fn topic(&self, name: &str) -> Option<TopicMeta> {
        self.state.read().topics.get(name).cloned()
    }

    pub fn topic_by_id(&self, id: Uuid) -> Option<TopicMeta> {
        self.state
            .read()
            .topics
            .values()
            .find(|t| t.id == id)
            .cloned()
    }

    /// Every topic, sorted by name.
    pub fn topics(&self) -> Vec<TopicMeta> {
        self.state.read().topics.values().cloned().collect()
    }

    /// Every topic name, sorted.
    pub fn topic_names(&self) -> Vec<String> {
        self.state.read().topics.keys().cloned().collect()
    }

    /// Checks a new topic's name and partition count without creating it.
    pub fn validate_new_topic(
        &self,
        name: &str,
        partitions: i32,
    ) -> Result<(), (ResponseError, String)> {
        validate_topic_name(name)?;
        if self.state.read().topics.contains_key(name) {
            return Err((
                ResponseError::TopicAlreadyExists,
                format!("Topic '{name}' already exists."),
            ));
        }
        if let Some(existing) = self.colliding_topic(name) {
            return Err((
                ResponseError::InvalidTopicException,
                format!("Topic '{name}' collides with existing topic: {existing}"),
            ));
        }
        if !(1..=TOPIC_PARTITIONS_MAX).contains(&partitions) {
            return Err((
                ResponseError::InvalidPartitions,
                format!("Number of partitions must be between 1 and {TOPIC_PARTITIONS_MAX}."),
            ));
        }
        Ok(())
    }

    /// Creates a topic and persists the change before returning.
    pub fn create_topic(
        &self,
        name: &str,
        partitions: i32,
        configs: BTreeMap<String, String>,
        internal: bool,
    ) -> Result<TopicMeta, (ResponseError, String)> {
        self.register_topic(TopicMeta {
            name: name.to_string(),
            id: Uuid::new_v4(),
            partitions,
            configs,
            internal,
        })
    }

    /// Registers a topic whose logs already exist (the last step of an
    /// all-or-nothing creation) and persists the change. On error nothing
    /// is registered.
    pub fn register_topic(&self, meta: TopicMeta) -> Result<TopicMeta, (ResponseError, String)> {
        let mut state = self.state.write();
        if state.topics.contains_key(&meta.name) {
            return Err((
                ResponseError::TopicAlreadyExists,
                format!("Topic '{}' already exists.", meta.name),
            ));
        }
        let mut next = state.clone();
        next.topics.insert(meta.name.clone(), meta.clone());
        self.persist(&next)?;
        *state = next;
        Ok(meta)
    }

    /// Removes a topic from the metadata; the caller removes its data.
    pub fn delete_topic(&self, name: &str) -> Result<TopicMeta, (ResponseError, String)> {
        let mut state = self.state.write();
        let mut next = state.clone();
        let meta = next.topics.remove(name).ok_or_else(unknown_topic)?;
        self.persist(&next)?;
        *state = next;
        Ok(meta)
    }

    /// Grows a topic to `count` partitions (Kafka never shrinks a topic).
    pub fn set_partition_count(
        &self,
        name: &str,
        count: i32,
    ) -> Result<TopicMeta, (ResponseError, String)> {
        let mut state = self.state.write();
        let mut next = state.clone();
        let meta = next.topics.get_mut(name).ok_or_else(unknown_topic)?;
        if count <= meta.partitions {
            return Err((
                ResponseError::InvalidPartitions,
                format!(
                    "Topic currently has {} partitions, which is higher than the requested {count}.",
                    meta.partitions
                ),
            ));
        }
        if count > TOPIC_PARTITIONS_MAX {
            return Err((
                ResponseError::InvalidPartitions,
                format!("Number of partitions must be at most {TOPIC_PARTITIONS_MAX}."),
            ));
        }
        meta.partitions = count;
        let updated = meta.clone();
        self.persist(&next)?;
        *state = next;
        Ok(updated)
    }

    /// Replaces a topic's own configs (validated by the caller).
    pub fn set_topic_configs(
        &self,
        name: &str,
        configs: BTreeMap<String, String>,
    ) -> Result<TopicMeta, (ResponseError, String)> {
        let mut state = self.state.write();
        let mut next = state.clone();
        let meta = next.topics.get_mut(name).ok_or_else(unknown_topic)?;
        meta.configs = configs;
        let updated = meta.clone();
        self.persist(&next)?;
        *state = next;
        Ok(updated)
    }

    /// Writes `doc` durably; the in-memory state changes only after this
    /// succeeds, so memory never runs ahead of the disk.
    fn persist(&self, doc: &Document) -> Result<(), (ResponseError, String)> {
        let bytes = serde_json::to_vec_pretty(doc)
            .map_err(|e| (ResponseError::UnknownServerError, e.to_string()))?;
        write_atomically(&self.path, &bytes).map_err(|e| {
            tracing::error!(error = %e, "cannot persist cluster metadata");
            (
                ResponseError::KafkaStorageError,
                format!("cannot persist metadata: {e}"),
            )
        })
    }
}

fn unknown_topic() -> (ResponseError, String) {
    (
        ResponseError::UnknownTopicOrPartition,
        "This server does not host this topic-partition.".to_string(),
    )
}

/// Kafka's topic-name rules: 1..=249 chars of `[a-zA-Z0-9._-]`, not `.`/`..`.
pub fn validate_topic_name(name: &str) -> Result<(), (ResponseError, String)> {
    let bad = |why: &str| {
        Err((
            ResponseError::InvalidTopicException,
            format!("Topic name \"{name}\" is illegal, {why}"),
        ))
    };
    if name.is_empty() {
        return bad("it can't be empty");
    }
    if name == "." || name == ".." {
        return bad("it cannot be \".\" or \"..\"");
    }
    if name.len() > TOPIC_NAME_BYTES_MAX {
        return bad("it can't be longer than 249 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
    {
        return bad("it contains a character other than ASCII alphanumerics, '.', '_' and '-'");
    }
    Ok(())
}

/// A Kafka-style cluster id: 16 random bytes, URL-safe base64 without padding.
fn new_cluster_id() -> String {
    kafka_uuid_string(&Uuid::new_v4())
}

/// Kafka's string form of a Uuid (`Uuid.toString`): its 16 bytes in
/// URL-safe base64 without padding, 22 characters.
pub fn kafka_uuid_string(id: &Uuid) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let bytes = id.into_bytes();
    let mut out = String::with_capacity(22);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for b in bytes {
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 6 {
            bits -= 6;
            out.push(ALPHABET[((acc >> bits) & 63) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((acc << (6 - bits)) & 63) as usize] as char);
    }
    out
}

/// Writes `bytes` to `path` so that a crash leaves either the old or the new
/// file, never a torn one.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_id_and_topics_survive_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = ClusterMetadata::open(dir.path(), 1).expect("open");
        let created = first
            .create_topic("orders", 3, BTreeMap::new(), false)
            .expect("create");
        let id = first.cluster_id().to_string();
        assert_eq!(id.len(), 22);
        drop(first);
        let again = ClusterMetadata::open(dir.path(), 1).expect("reopen");
        assert_eq!(again.cluster_id(), id);
        assert_eq!(again.topic("orders"), Some(created.clone()));
        assert_eq!(
            again.topic_by_id(created.id).map(|t| t.name),
            Some("orders".into())
        );
    }

    #[test]
    fn another_nodes_data_dir_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        drop(ClusterMetadata::open(dir.path(), 1).expect("open"));
        assert!(ClusterMetadata::open(dir.path(), 2).is_err());
    }

    #[test]
    fn topic_names_follow_kafka_rules() {
        assert!(validate_topic_name("a-b_c.9").is_ok());
        for bad in ["", ".", "..", "has space", "slash/", &"x".repeat(250)] {
            assert_eq!(
                validate_topic_name(bad).map_err(|e| e.0),
                Err(ResponseError::InvalidTopicException),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn partitions_only_grow() {
        let dir = tempfile::tempdir().expect("tempdir");
        let meta = ClusterMetadata::open(dir.path(), 1).expect("open");
        meta.create_topic("t", 2, BTreeMap::new(), false)
            .expect("create");
        assert_eq!(
            meta.set_partition_count("t", 2).map_err(|e| e.0),
            Err(ResponseError::InvalidPartitions)
        );
        assert_eq!(
            meta.set_partition_count("t", 5).map(|t| t.partitions),
            Ok(5)
        );
        assert_eq!(
            meta.create_topic("t", 1, BTreeMap::new(), false)
                .map_err(|e| e.0),
            Err(ResponseError::TopicAlreadyExists)
        );
    }
}
