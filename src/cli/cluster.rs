//! `fjord cluster status`: who is in the cluster and who leads what, from
//! Metadata (brokers, controller, every partition's leader and replicas).
//! Works against any Kafka-protocol cluster, Apache Kafka included.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::Result;
use kafka_protocol::messages::MetadataResponse;

use kafka_protocol::protocol::StrBytes;

use crate::cli::ConnectArgs;
use crate::client::Client;

/// `fjord cluster ...`: the connection flags plus one subcommand.
#[derive(clap::Args, Debug, Clone)]
pub struct ClusterArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    #[command(subcommand)]
    pub command: ClusterCommand,
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum ClusterCommand {
    /// Cluster id, controller, and per broker: address, rack, partitions led
    /// and replicas held; partitions without a leader.
    Status,
    /// Make a broker-only node (already running and registered) a voter of
    /// the metadata quorum (AddRaftVoter, as `kafka-metadata-quorum.sh
    /// add-controller` does).
    AddVoter {
        /// The broker's node.id.
        #[arg(long)]
        node_id: i32,
    },
}

pub async fn run(args: ClusterArgs) -> Result<()> {
    let mut client = args.connect.connect().await?;
    match args.command {
        ClusterCommand::Status => print!("{}", status(&mut client).await?),
        ClusterCommand::AddVoter { node_id } => {
            add_voter(&mut client, node_id).await?;
            println!("Node {node_id} is a voter.");
        }
    }
    Ok(())
}

/// The status report as text.
pub async fn status(client: &mut Client) -> Result<String> {
    let metadata = client.metadata(None, false).await?;
    Ok(format_status(&metadata))
}

/// Sends AddRaftVoter for `node_id`; a Kafka error comes back by name.
pub async fn add_voter(client: &mut Client, node_id: i32) -> Result<()> {
    use kafka_protocol::messages::AddRaftVoterRequest;
    let cluster_id = client
        .cluster_id()
        .map(|s| StrBytes::from_string(s.to_string()));
    let timeout_ms = i32::try_from(client.config().request_timeout.as_millis()).unwrap_or(i32::MAX);
    let conn = client.any_broker().await?;
    let version = conn.version::<AddRaftVoterRequest>()?;
    let request = AddRaftVoterRequest::default()
        .with_cluster_id(cluster_id)
        .with_timeout_ms(timeout_ms)
        .with_voter_id(node_id);
    let response = conn.send(&request, version).await?;
    if response.error_code != 0 {
        let code = kafka_protocol::error::ResponseError::try_from_code(response.error_code);
        anyhow::bail!(
            "AddRaftVoter: {} {}",
            code.map_or_else(|| response.error_code.to_string(), |c| format!("{c:?}")),
            response.error_message.as_deref().unwrap_or("")
        );
    }
    Ok(())
}

/// The status text: the brokers (those listed alive, and any a replica
/// list names that Metadata does not list: down), how many partitions each
/// leads and holds, and the partitions without a leader (offline) or with
/// fewer replicas in sync than assigned (under-replicated).
fn format_status(metadata: &MetadataResponse) -> String {
    let mut led: BTreeMap<i32, usize> = BTreeMap::new();
    let mut held: BTreeMap<i32, usize> = BTreeMap::new();
    let mut leaderless = Vec::new();
    let mut under_replicated = Vec::new();
    let mut partitions = 0usize;
    for topic in &metadata.topics {
        let name = topic.name.as_ref().map_or("", |n| n.0.as_str());
        for p in &topic.partitions {
            partitions += 1;
            if p.leader_id.0 >= 0 {
                *led.entry(p.leader_id.0).or_default() += 1;
                if p.isr_nodes.len() < p.replica_nodes.len() {
                    under_replicated.push(format!("{name}-{}", p.partition_index));
                }
            } else {
                leaderless.push(format!("{name}-{}", p.partition_index));
            }
            for r in &p.replica_nodes {
                *held.entry(r.0).or_default() += 1;
            }
        }
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "ClusterId: {}\tController: {}\tBrokers: {}\tTopics: {}\tPartitions: {partitions}",
        metadata.cluster_id.as_deref().unwrap_or("-"),
        metadata.controller_id.0,
        metadata.brokers.len(),
        metadata.topics.len(),
    );
    let alive: BTreeMap<i32, _> = metadata.brokers.iter().map(|b| (b.node_id.0, b)).collect();
    let mut ids: Vec<i32> = alive.keys().chain(held.keys()).copied().collect();
    ids.sort_unstable();
    ids.dedup();
    for id in ids {
        let (address, rack, up) = match alive.get(&id) {
            Some(b) => (
                format!("{}:{}", b.host.as_str(), b.port),
                b.rack.as_deref().unwrap_or("-").to_string(),
                "yes",
            ),
            None => ("-".to_string(), "-".to_string(), "no"),
        };
        let _ = writeln!(
            out,
            "\tBroker: {id}\tAddress: {address}\tRack: {rack}\tAlive: {up}\tLeads: {}\tReplicas: {}{}",
            led.get(&id).copied().unwrap_or(0),
            held.get(&id).copied().unwrap_or(0),
            if id == metadata.controller_id.0 {
                "\t(controller)"
            } else {
                ""
            },
        );
    }
    for (what, list) in [
        ("Offline (no leader)", &mut leaderless),
        ("Under-replicated", &mut under_replicated),
    ] {
        if !list.is_empty() {
            list.sort();
            let _ = writeln!(out, "{what} ({}): {}", list.len(), list.join(" "));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::metadata_response::{
        MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
    };
    use kafka_protocol::messages::{BrokerId, TopicName};
    use kafka_protocol::protocol::StrBytes;

    #[test]
    fn status_counts_leaders_replicas_down_brokers_and_troubled_partitions() {
        let broker = |id: i32| {
            MetadataResponseBroker::default()
                .with_node_id(BrokerId(id))
                .with_host(StrBytes::from_static_str("127.0.0.1"))
                .with_port(9090 + id)
        };
        let partition = |index: i32, leader: i32, replicas: &[i32], isr: &[i32]| {
            MetadataResponsePartition::default()
                .with_partition_index(index)
                .with_leader_id(BrokerId(leader))
                .with_replica_nodes(replicas.iter().map(|&r| BrokerId(r)).collect())
                .with_isr_nodes(isr.iter().map(|&r| BrokerId(r)).collect())
        };
        let metadata = MetadataResponse::default()
            .with_cluster_id(Some(StrBytes::from_static_str("abc")))
            .with_controller_id(BrokerId(2))
            .with_brokers(vec![broker(2), broker(1)])
            .with_topics(vec![MetadataResponseTopic::default()
                .with_name(Some(TopicName(StrBytes::from_static_str("t"))))
                .with_partitions(vec![
                    partition(0, 1, &[1, 2], &[1, 2]),
                    partition(1, 2, &[2, 1, 3], &[2, 1]),
                    partition(2, -1, &[1], &[]),
                ])]);
        let text = format_status(&metadata);
        assert!(
            text.starts_with(
                "ClusterId: abc\tController: 2\tBrokers: 2\tTopics: 1\tPartitions: 3\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "\tBroker: 1\tAddress: 127.0.0.1:9091\tRack: -\tAlive: yes\tLeads: 1\tReplicas: 3\n"
            ),
            "{text}"
        );
        assert!(text.contains("\tBroker: 2\tAddress: 127.0.0.1:9092\tRack: -\tAlive: yes\tLeads: 1\tReplicas: 2\t(controller)\n"), "{text}");
        // Named by a replica list, not listed alive: down.
        assert!(
            text.contains("\tBroker: 3\tAddress: -\tRack: -\tAlive: no\tLeads: 0\tReplicas: 1\n"),
            "{text}"
        );
        assert!(text.contains("Offline (no leader) (1): t-2"), "{text}");
        assert!(text.contains("Under-replicated (1): t-1"), "{text}");
        assert!(text.find("Broker: 1") < text.find("Broker: 2"), "{text}");
    }
}
