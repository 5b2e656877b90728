//! `fjord group list|describe|delete|reset-offsets`: consumer group
//! administration over the Kafka protocol, shaped like
//! `kafka-consumer-groups.sh` so operators read it at a glance and scripts
//! move between the two.
//!
//! Each subcommand is a function that returns what it found as data plus a
//! `render` step, so tests can check both without scraping stdout; `run`
//! prints. Kafka errors come back as [`KafkaError`] (printed by name) and
//! make the process exit non-zero. Offsets are reset the way the Kafka tool
//! does it: an OffsetCommit with generation -1 and no member id, which a
//! coordinator only accepts while the group has no members; otherwise the
//! broker's refusal is the answer.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use anyhow::{anyhow, bail, ensure, Result};

use crate::cli::ConnectArgs;
use crate::client::consumer_protocol::{format_assignment, partition_count};
use crate::client::groups::{GroupDescription, GroupListing, TopicPartition};
use crate::client::{Client, KafkaError, OffsetSpec, TopicMetadata};

/// The one-character cell for "nothing here", as the Kafka tool prints it.
const NONE_CELL: &str = "-";
/// The ASSIGNMENT cell of a member whose assignment we cannot decode (the
/// reason follows the table, so the cell stays one word).
const UNREADABLE_CELL: &str = "<unreadable>";
/// States in which a group is moving partitions between members: classic
/// (PreparingRebalance, CompletingRebalance) and KIP-848 (Assigning,
/// Reconciling). Describing such a group shows a snapshot that is about to
/// change, so we say so.
const REBALANCING_STATES: [&str; 4] = [
    "PreparingRebalance",
    "CompletingRebalance",
    "Assigning",
    "Reconciling",
];
/// States in which an admin OffsetCommit is accepted.
const INACTIVE_STATES: [&str; 2] = ["Empty", "Dead"];

/// `fjord group ...`: the connection flags plus one subcommand.
#[derive(clap::Args, Debug, Clone)]
pub struct GroupArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    #[command(subcommand)]
    pub command: GroupCommand,
}

/// The consumer group subcommands.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum GroupCommand {
    /// List groups with their state, protocol type and group type.
    List(ListArgs),
    /// Show groups: state, members and their partitions, and per partition
    /// the committed offset, log end offset and lag.
    Describe(DescribeArgs),
    /// Delete groups and their committed offsets (only groups without members).
    Delete(DeleteArgs),
    /// Move a group's committed offsets; prints the plan, commits it only
    /// with --execute (the group must have no members).
    ResetOffsets(ResetOffsetsArgs),
}

/// `group list`.
#[derive(clap::Args, Debug, Clone)]
pub struct ListArgs {
    /// Only groups in this state, e.g. Empty or Stable (repeatable or
    /// comma-separated; needs ListGroups v4).
    #[arg(long = "state", value_name = "STATE", value_delimiter = ',')]
    pub states: Vec<String>,
    /// Only groups of this type: classic, consumer, share or streams
    /// (repeatable or comma-separated; needs ListGroups v5).
    #[arg(long = "type", value_name = "TYPE", value_delimiter = ',')]
    pub types: Vec<String>,
}

/// `group describe`.
#[derive(clap::Args, Debug, Clone)]
pub struct DescribeArgs {
    /// Groups to describe.
    #[arg(required = true, value_name = "GROUP")]
    pub groups: Vec<String>,
}

/// `group delete`.
#[derive(clap::Args, Debug, Clone)]
pub struct DeleteArgs {
    /// Groups to delete.
    #[arg(required = true, value_name = "GROUP")]
    pub groups: Vec<String>,
}

/// `group reset-offsets`: which partitions, to where, and whether to commit.
#[derive(clap::Args, Debug, Clone)]
pub struct ResetOffsetsArgs {
    /// The group whose offsets move.
    pub group: String,
    /// Topic to reset; `TOPIC:0,2` picks partitions like kafka-consumer-groups.sh.
    #[arg(long, value_name = "TOPIC[:PARTITIONS]")]
    pub topic: String,
    /// Partition to reset (repeatable or comma-separated; default: all).
    #[arg(long = "partition", value_name = "PARTITION", value_delimiter = ',')]
    pub partitions: Vec<i32>,
    #[command(flatten)]
    pub to: ResetTo,
    /// Commit the new offsets. Without it nothing changes: the plan is printed.
    #[arg(long)]
    pub execute: bool,
    /// Only print the plan (the default; accepted for scripts written for
    /// kafka-consumer-groups.sh).
    #[arg(long, conflicts_with = "execute")]
    pub dry_run: bool,
}

/// Where `reset-offsets` moves each partition: exactly one of these.
#[derive(clap::Args, Debug, Clone)]
#[group(required = true, multiple = false)]
pub struct ResetTo {
    /// To the log start offset.
    #[arg(long)]
    pub to_earliest: bool,
    /// To the log end offset (skip everything not yet consumed).
    #[arg(long)]
    pub to_latest: bool,
    /// To this offset (kept within the log's start and end).
    #[arg(long, value_name = "OFFSET")]
    pub to_offset: Option<i64>,
    /// By this many records from the committed offset, back if negative
    /// (kept within the log's start and end).
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub shift_by: Option<i64>,
    /// To the first record with a timestamp at or after this time, RFC 3339
    /// (2024-05-01T12:00:00Z, 2024-05-01T14:00:00.000+02:00; no zone = UTC).
    /// Partitions without such a record go to the log end offset.
    #[arg(long, value_name = "DATETIME", value_parser = parse_datetime_ms)]
    pub to_datetime: Option<i64>,
}

/// The chosen target of a reset, out of [`ResetTo`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetSpec {
    Earliest,
    Latest,
    Offset(i64),
    ShiftBy(i64),
    /// Milliseconds since the epoch.
    Datetime(i64),
}

impl ResetTo {
    pub fn spec(&self) -> Result<ResetSpec> {
        let chosen = [
            self.to_earliest.then_some(ResetSpec::Earliest),
            self.to_latest.then_some(ResetSpec::Latest),
            self.to_offset.map(ResetSpec::Offset),
            self.shift_by.map(ResetSpec::ShiftBy),
            self.to_datetime.map(ResetSpec::Datetime),
        ];
        let mut chosen = chosen.into_iter().flatten();
        match (chosen.next(), chosen.next()) {
            (Some(spec), None) => Ok(spec),
            _ => bail!(
                "give exactly one of --to-earliest, --to-latest, --to-offset, --shift-by, --to-datetime"
            ),
        }
    }
}

/// Runs one group subcommand and prints its output; Kafka errors are
/// returned (by name) for a non-zero exit.
pub async fn run(args: GroupArgs) -> Result<()> {
    let mut client = args.connect.connect().await?;
    match &args.command {
        GroupCommand::List(a) => {
            let listing = list(&mut client, a).await?;
            print!("{}", render_listing(&listing));
            if !listing.broker_errors.is_empty() {
                let errors: Vec<String> = listing
                    .broker_errors
                    .iter()
                    .map(|(id, e)| format!("broker {id}: {e:#}"))
                    .collect();
                bail!("the listing is incomplete: {}", errors.join("; "));
            }
        }
        GroupCommand::Describe(a) => {
            let described = describe(&mut client, a).await?;
            print!("{}", render_reports(&described.reports));
            fail_on_group_errors("describe", described.errors)?;
        }
        GroupCommand::Delete(a) => {
            let deleted = delete(&mut client, a).await?;
            for group in &deleted.deleted {
                println!("Deleted group '{group}'.");
            }
            fail_on_group_errors("delete", deleted.errors)?;
        }
        GroupCommand::ResetOffsets(a) => {
            let reset = plan_reset(&mut client, a).await?;
            for warning in &reset.warnings {
                eprintln!("warning: {warning}");
            }
            // Like the Kafka tool: after --execute the table is printed only
            // once the coordinator took the offsets.
            if a.execute {
                execute_reset(&mut client, &a.group, &reset).await?;
            }
            print!("{}", render_reset(&a.group, &reset.plan));
            if !a.execute {
                eprintln!("Dry run: nothing was committed. Add --execute to commit these offsets.");
            }
        }
    }
    Ok(())
}

/// Turns per-group Kafka errors into the command's error: a single one
/// stays a [`KafkaError`] (callers can downcast it), several are listed.
fn fail_on_group_errors(verb: &str, mut errors: Vec<(String, KafkaError)>) -> Result<()> {
    match errors.len() {
        0 => Ok(()),
        1 => {
            let (group, e) = errors.remove(0);
            Err(anyhow::Error::new(e).context(format!("cannot {verb} group '{group}'")))
        }
        n => {
            let each: Vec<String> = errors.iter().map(|(g, e)| format!("'{g}': {e}")).collect();
            bail!("cannot {verb} {n} groups: {}", each.join("; "))
        }
    }
}

// ---------------------------------------------------------------- list

pub async fn list(client: &mut Client, args: &ListArgs) -> Result<GroupListing> {
    client.list_groups(&args.states, &args.types).await
}

/// `GROUP STATE PROTOCOL-TYPE TYPE`, one group per line, sorted by id.
pub fn render_listing(listing: &GroupListing) -> String {
    let rows = listing
        .groups
        .iter()
        .map(|g| {
            vec![
                g.group_id.clone(),
                cell(g.state.as_deref().unwrap_or("")),
                cell(&g.protocol_type),
                cell(g.group_type.as_deref().unwrap_or("")),
            ]
        })
        .collect::<Vec<_>>();
    render_table(&["GROUP", "STATE", "PROTOCOL-TYPE", "TYPE"], &rows)
}

// ---------------------------------------------------------------- describe

/// One row of the offsets table: where a group stands in one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionLag {
    pub topic: String,
    pub partition: i32,
    /// None: the group never committed here (a new assignment).
    pub committed_offset: Option<i64>,
    /// None: the log end offset could not be read (e.g. topic deleted).
    pub log_end_offset: Option<i64>,
    /// Log end offset minus committed offset, when both are known.
    pub lag: Option<i64>,
    /// The member the partition is assigned to, if any.
    pub member: Option<MemberCells>,
}

/// What the offsets table says about a member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberCells {
    pub member_id: String,
    pub client_host: String,
    pub client_id: String,
}

/// One described group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupReport {
    pub description: GroupDescription,
    /// "host:port (id)" of the coordinator.
    pub coordinator: String,
    /// Sorted by topic, then partition.
    pub partitions: Vec<PartitionLag>,
    /// Why committed offsets could not be read, if they could not.
    pub offsets_error: Option<String>,
}

/// What `describe` found: reports for groups that exist, errors for the rest.
#[derive(Debug, Default)]
pub struct Described {
    pub reports: Vec<GroupReport>,
    pub errors: Vec<(String, KafkaError)>,
}

/// DescribeGroups, OffsetFetch and ListOffsets (latest) for each group.
/// A group the coordinator calls "Dead" does not exist: it becomes a
/// GROUP_ID_NOT_FOUND error, as in `kafka-consumer-groups.sh`.
pub async fn describe(client: &mut Client, args: &DescribeArgs) -> Result<Described> {
    let descriptions = client.describe_groups(&args.groups).await?;
    let mut described = Described::default();
    for group in &args.groups {
        let description = match descriptions.get(group) {
            Some(Ok(d)) if d.state == "Dead" => {
                let e = KafkaError {
                    code: KafkaError::GROUP_ID_NOT_FOUND,
                    message: Some(format!("group '{group}' does not exist")),
                };
                described.errors.push((group.clone(), e));
                continue;
            }
            Some(Ok(d)) => d.clone(),
            Some(Err(e)) => {
                described.errors.push((group.clone(), e.clone()));
                continue;
            }
            None => bail!("DescribeGroups gave no answer for group '{group}'"),
        };
        let (committed, offsets_error) = match client.fetch_committed_offsets(group).await {
            Ok(offsets) => (offsets, None),
            Err(e) => (BTreeMap::new(), Some(format!("{e:#}"))),
        };
        let mut committed_offsets = BTreeMap::new();
        for (tp, answer) in committed {
            match answer {
                Ok(c) => {
                    committed_offsets.insert(tp, c.offset);
                }
                Err(e) => {
                    tracing::warn!(group = %group, topic = %tp.0, partition = tp.1, error = %e, "no committed offset")
                }
            }
        }
        let assigned = assigned_partitions(&description);
        let wanted: BTreeSet<TopicPartition> = assigned
            .keys()
            .chain(committed_offsets.keys())
            .cloned()
            .collect();
        let log_end_offsets = log_end_offsets(client, &wanted).await;
        let partitions = lag_rows(&wanted, &committed_offsets, &log_end_offsets, &assigned);
        let coordinator = match client.brokers_known().get(&description.coordinator_id) {
            Some(addr) => format!("{addr} ({})", description.coordinator_id),
            None => format!("({})", description.coordinator_id),
        };
        described.reports.push(GroupReport {
            description,
            coordinator,
            partitions,
            offsets_error,
        });
    }
    Ok(described)
}

/// Partition → the member that owns it.
fn assigned_partitions(description: &GroupDescription) -> BTreeMap<TopicPartition, MemberCells> {
    let mut assigned = BTreeMap::new();
    for member in &description.members {
        let Ok(assignment) = &member.assignment else {
            continue;
        };
        for (topic, partitions) in assignment {
            for &p in partitions {
                let cells = MemberCells {
                    member_id: member.member_id.clone(),
                    client_host: member.client_host.clone(),
                    client_id: member.client_id.clone(),
                };
                assigned.insert((topic.clone(), p), cells);
            }
        }
    }
    assigned
}

/// The log end offset of each partition, topic by topic. A topic that
/// cannot be read (deleted, no leader) is left out and shows as "-":
/// describing a group must not fail because one of its topics went away.
async fn log_end_offsets(
    client: &mut Client,
    wanted: &BTreeSet<TopicPartition>,
) -> BTreeMap<TopicPartition, i64> {
    let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for (topic, partition) in wanted {
        by_topic.entry(topic.as_str()).or_default().push(*partition);
    }
    let mut found = BTreeMap::new();
    for (topic, partitions) in by_topic {
        let meta = match client.topic_metadata(topic, false).await {
            Ok(meta) => meta,
            Err(e) => {
                tracing::warn!(topic, error = %format!("{e:#}"), "cannot read topic metadata");
                continue;
            }
        };
        let existing: Vec<i32> = partitions
            .into_iter()
            .filter(|&p| meta.partition(p).is_some())
            .collect();
        match client
            .list_offsets(&meta, &existing, OffsetSpec::Latest)
            .await
        {
            Ok(offsets) => {
                for (p, offset) in offsets {
                    found.insert((topic.to_owned(), p), offset);
                }
            }
            Err(e) => {
                tracing::warn!(topic, error = %format!("{e:#}"), "cannot read log end offsets")
            }
        }
    }
    found
}

/// The offsets table: every partition the group is assigned or has
/// committed to, sorted by topic and partition.
fn lag_rows(
    wanted: &BTreeSet<TopicPartition>,
    committed: &BTreeMap<TopicPartition, i64>,
    log_end_offsets: &BTreeMap<TopicPartition, i64>,
    assigned: &BTreeMap<TopicPartition, MemberCells>,
) -> Vec<PartitionLag> {
    wanted
        .iter()
        .map(|tp| {
            let committed_offset = committed.get(tp).copied();
            let log_end_offset = log_end_offsets.get(tp).copied();
            let lag = match (committed_offset, log_end_offset) {
                (Some(c), Some(end)) => Some(end - c),
                _ => None,
            };
            PartitionLag {
                topic: tp.0.clone(),
                partition: tp.1,
                committed_offset,
                log_end_offset,
                lag,
                member: assigned.get(tp).cloned(),
            }
        })
        .collect()
}

/// All reports, blank-line separated.
pub fn render_reports(reports: &[GroupReport]) -> String {
    reports
        .iter()
        .map(render_report)
        .collect::<Vec<_>>()
        .join("\n")
}

/// One group: a notice for an empty or rebalancing group, then the group
/// line, the members (if any) and the offsets table.
pub fn render_report(report: &GroupReport) -> String {
    let d = &report.description;
    let mut out = String::new();
    if d.members.is_empty() {
        let _ = writeln!(
            out,
            "Consumer group '{}' has no active members.\n",
            d.group_id
        );
    } else if REBALANCING_STATES.contains(&d.state.as_str()) {
        let _ = writeln!(
            out,
            "Warning: consumer group '{}' is rebalancing.\n",
            d.group_id
        );
    }
    out.push_str(&render_table(
        &[
            "GROUP",
            "COORDINATOR (ID)",
            "TYPE",
            "PROTOCOL-TYPE",
            "ASSIGNMENT-STRATEGY",
            "STATE",
            "#MEMBERS",
        ],
        &[vec![
            d.group_id.clone(),
            report.coordinator.clone(),
            cell(&d.group_type),
            cell(&d.protocol_type),
            cell(&d.protocol),
            cell(&d.state),
            d.members.len().to_string(),
        ]],
    ));
    if !d.members.is_empty() {
        let rows: Vec<Vec<String>> = d
            .members
            .iter()
            .map(|m| {
                let (count, assignment) = match &m.assignment {
                    Ok(a) => (partition_count(a).to_string(), cell(&format_assignment(a))),
                    Err(_) => (NONE_CELL.to_owned(), UNREADABLE_CELL.to_owned()),
                };
                vec![
                    d.group_id.clone(),
                    cell(&m.member_id),
                    cell(m.group_instance_id.as_deref().unwrap_or("")),
                    cell(&m.client_host),
                    cell(&m.client_id),
                    count,
                    assignment,
                ]
            })
            .collect();
        out.push('\n');
        out.push_str(&render_table(
            &[
                "GROUP",
                "CONSUMER-ID",
                "GROUP-INSTANCE-ID",
                "HOST",
                "CLIENT-ID",
                "#PARTITIONS",
                "ASSIGNMENT",
            ],
            &rows,
        ));
        for m in &d.members {
            if let Err(why) = &m.assignment {
                let _ = writeln!(out, "Assignment of {} unreadable: {why}", m.member_id);
            }
        }
    }
    if let Some(e) = &report.offsets_error {
        let _ = write!(out, "\nCommitted offsets unavailable: {e}\n");
    }
    let rows: Vec<Vec<String>> = report
        .partitions
        .iter()
        .map(|p| {
            let member = p.member.as_ref();
            vec![
                d.group_id.clone(),
                p.topic.clone(),
                p.partition.to_string(),
                opt_cell(p.committed_offset),
                opt_cell(p.log_end_offset),
                opt_cell(p.lag),
                member.map_or_else(|| NONE_CELL.to_owned(), |m| cell(&m.member_id)),
                member.map_or_else(|| NONE_CELL.to_owned(), |m| cell(&m.client_host)),
                member.map_or_else(|| NONE_CELL.to_owned(), |m| cell(&m.client_id)),
            ]
        })
        .collect();
    out.push('\n');
    out.push_str(&render_table(
        &[
            "GROUP",
            "TOPIC",
            "PARTITION",
            "CURRENT-OFFSET",
            "LOG-END-OFFSET",
            "LAG",
            "CONSUMER-ID",
            "HOST",
            "CLIENT-ID",
        ],
        &rows,
    ));
    out
}

// ---------------------------------------------------------------- delete

/// What `delete` did: groups deleted, and the Kafka error for each of the rest.
#[derive(Debug, Default)]
pub struct Deleted {
    pub deleted: Vec<String>,
    pub errors: Vec<(String, KafkaError)>,
}

pub async fn delete(client: &mut Client, args: &DeleteArgs) -> Result<Deleted> {
    let answers = client.delete_groups(&args.groups).await?;
    let mut deleted = Deleted::default();
    for group in &args.groups {
        match answers.get(group) {
            Some(Ok(())) => deleted.deleted.push(group.clone()),
            Some(Err(e)) => deleted.errors.push((group.clone(), e.clone())),
            None => bail!("DeleteGroups gave no answer for group '{group}'"),
        }
    }
    deleted.deleted.dedup();
    deleted.errors.dedup();
    Ok(deleted)
}

// ---------------------------------------------------------------- reset-offsets

/// What `reset-offsets` plans to commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reset {
    /// Partition → new offset, sorted.
    pub plan: BTreeMap<TopicPartition, i64>,
    /// Adjustments worth telling the user (clamped offsets, empty
    /// partitions, a group that will refuse --execute).
    pub warnings: Vec<String>,
    /// Members of the group when it was not empty at planning time.
    pub active_members: Option<usize>,
}

/// Computes the new offsets (nothing is committed here), and notes why
/// `--execute` would be refused if the group has members.
pub async fn plan_reset(client: &mut Client, args: &ResetOffsetsArgs) -> Result<Reset> {
    let spec = args.to.spec()?;
    let (topic, from_topic_arg) = parse_topic_partitions(&args.topic)?;
    ensure!(
        from_topic_arg.is_empty() || args.partitions.is_empty(),
        "give partitions either as --topic {topic}:P,... or with --partition, not both"
    );
    let meta = client.topic_metadata(&topic, false).await?;
    let partitions = chosen_partitions(
        &meta,
        from_topic_arg
            .into_iter()
            .chain(args.partitions.iter().copied()),
    )?;
    let earliest = client
        .list_offsets(&meta, &partitions, OffsetSpec::Earliest)
        .await?;
    let latest = client
        .list_offsets(&meta, &partitions, OffsetSpec::Latest)
        .await?;
    let target = match spec {
        ResetSpec::Earliest => Target::Exact(earliest.clone()),
        ResetSpec::Latest => Target::Exact(latest.clone()),
        ResetSpec::Offset(n) => Target::Clamped(partitions.iter().map(|&p| (p, n)).collect()),
        ResetSpec::ShiftBy(n) => {
            let committed = client.fetch_committed_offsets(&args.group).await?;
            let mut shifted = BTreeMap::new();
            for &p in &partitions {
                match committed.get(&(topic.clone(), p)) {
                    Some(Ok(c)) => {
                        shifted.insert(p, c.offset.saturating_add(n));
                    }
                    Some(Err(e)) => {
                        return Err(anyhow::Error::new(e.clone()).context(format!(
                            "reading the committed offset of {topic}-{p} to shift it"
                        )))
                    }
                    None => bail!(
                        "group '{}' has no committed offset for {topic}-{p} to shift from",
                        args.group
                    ),
                }
            }
            Target::Clamped(shifted)
        }
        ResetSpec::Datetime(ms) => Target::ByTime(
            client
                .list_offsets(&meta, &partitions, OffsetSpec::Timestamp(ms))
                .await?,
        ),
    };
    let mut warnings = Vec::new();
    let plan = plan_offsets(
        &topic,
        &partitions,
        target,
        &earliest,
        &latest,
        &mut warnings,
    )?;

    // Best effort: the coordinator decides, but saying why up front beats
    // a bare UNKNOWN_MEMBER_ID after --execute.
    let mut active_members = None;
    if let Ok(described) = client
        .describe_groups(std::slice::from_ref(&args.group))
        .await
    {
        if let Some(Ok(d)) = described.get(&args.group) {
            if !INACTIVE_STATES.contains(&d.state.as_str()) {
                active_members = Some(d.members.len());
                warnings.push(format!(
                    "group '{}' is {} with {} member(s); offsets can only be reset while it has none",
                    args.group,
                    d.state,
                    d.members.len()
                ));
            }
        }
    }
    Ok(Reset {
        plan,
        warnings,
        active_members,
    })
}

/// Commits a plan with an admin OffsetCommit. A refusal is an error that
/// carries the coordinator's [`KafkaError`] (by name), e.g.
/// UNKNOWN_MEMBER_ID for a group that still has members.
pub async fn execute_reset(client: &mut Client, group: &str, reset: &Reset) -> Result<()> {
    let refused = client.commit_offsets_as_admin(group, &reset.plan).await?;
    let Some(first) = refused.values().next() else {
        return Ok(());
    };
    let what = if refused.values().all(|e| e.code == first.code) {
        format!("all {} partition(s)", refused.len())
    } else {
        let each: Vec<String> = refused
            .iter()
            .map(|((t, p), e)| format!("{t}-{p}: {}", e.name()))
            .collect();
        each.join(", ")
    };
    let hint = match reset.active_members {
        Some(n) => format!("; the group has {n} active member(s), stop them first"),
        None => String::new(),
    };
    Err(anyhow::Error::new(first.clone()).context(format!(
        "the coordinator refused the new offsets of group '{group}' for {what}{hint}"
    )))
}

/// The partitions named on the command line (checked against the topic),
/// or all of them.
fn chosen_partitions(meta: &TopicMetadata, given: impl Iterator<Item = i32>) -> Result<Vec<i32>> {
    let given: BTreeSet<i32> = given.collect();
    if given.is_empty() {
        return Ok(meta.partitions.iter().map(|p| p.partition).collect());
    }
    for &p in &given {
        ensure!(
            meta.partition(p).is_some(),
            "topic '{}' has no partition {p} (it has {})",
            meta.name,
            meta.partition_count()
        );
    }
    Ok(given.into_iter().collect())
}

/// Where the new offsets come from, before they are checked against the log.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    /// Offsets the log reported (earliest, latest): used as they are.
    Exact(BTreeMap<i32, i64>),
    /// Offsets the user asked for: kept within [earliest, latest], as the
    /// Kafka tool does, since a position outside the log is useless.
    Clamped(BTreeMap<i32, i64>),
    /// ListOffsets by timestamp: -1 means no record that recent, and then
    /// the log end offset.
    ByTime(BTreeMap<i32, i64>),
}

/// The new offset of every partition; warnings for adjusted ones.
fn plan_offsets(
    topic: &str,
    partitions: &[i32],
    target: Target,
    earliest: &BTreeMap<i32, i64>,
    latest: &BTreeMap<i32, i64>,
    warnings: &mut Vec<String>,
) -> Result<BTreeMap<TopicPartition, i64>> {
    let mut plan = BTreeMap::new();
    for &p in partitions {
        let start = *earliest
            .get(&p)
            .ok_or_else(|| anyhow!("no log start offset for {topic}-{p}"))?;
        let end = *latest
            .get(&p)
            .ok_or_else(|| anyhow!("no log end offset for {topic}-{p}"))?;
        let wanted = |offsets: &BTreeMap<i32, i64>| {
            offsets
                .get(&p)
                .copied()
                .ok_or_else(|| anyhow!("no target offset for {topic}-{p}"))
        };
        let offset = match &target {
            Target::Exact(offsets) => wanted(offsets)?,
            Target::Clamped(offsets) => {
                let asked = wanted(offsets)?;
                if asked < start {
                    warnings.push(format!(
                        "new offset {asked} of {topic}-{p} is below its log start offset; using {start}"
                    ));
                    start
                } else if asked > end {
                    warnings.push(format!(
                        "new offset {asked} of {topic}-{p} is above its log end offset; using {end}"
                    ));
                    end
                } else {
                    asked
                }
            }
            Target::ByTime(offsets) => match wanted(offsets)? {
                found if found >= 0 => found,
                _ => {
                    warnings.push(format!(
                        "{topic}-{p} has no record at or after that time; using its log end offset {end}"
                    ));
                    end
                }
            },
        };
        plan.insert((topic.to_owned(), p), offset);
    }
    Ok(plan)
}

/// The plan as `kafka-consumer-groups.sh --reset-offsets` prints it.
pub fn render_reset(group: &str, plan: &BTreeMap<TopicPartition, i64>) -> String {
    let rows: Vec<Vec<String>> = plan
        .iter()
        .map(|((topic, p), offset)| {
            vec![
                group.to_owned(),
                topic.clone(),
                p.to_string(),
                offset.to_string(),
            ]
        })
        .collect();
    render_table(&["GROUP", "TOPIC", "PARTITION", "NEW-OFFSET"], &rows)
}

/// `TOPIC` or `TOPIC:0,2` (Kafka's `--topic` syntax; topic names cannot
/// contain ':').
fn parse_topic_partitions(arg: &str) -> Result<(String, Vec<i32>)> {
    let (topic, partitions) = match arg.split_once(':') {
        None => (arg, Vec::new()),
        Some((topic, list)) => {
            let partitions = list
                .split(',')
                .map(|p| {
                    p.trim()
                        .parse::<i32>()
                        .map_err(|_| anyhow!("'{p}' in --topic {arg} is not a partition number"))
                })
                .collect::<Result<Vec<i32>>>()?;
            (topic, partitions)
        }
    };
    ensure!(!topic.is_empty(), "--topic needs a topic name");
    Ok((topic.to_owned(), partitions))
}

/// Parses an RFC 3339 date-time into milliseconds since the epoch:
/// `YYYY-MM-DDTHH:MM[:SS[.fraction]]` then `Z`, `±HH:MM`, `±HHMM` or
/// nothing (UTC). A space may stand for the `T`. Times before 1970 are
/// refused: ListOffsets reads negative timestamps as "earliest"/"latest".
pub fn parse_datetime_ms(s: &str) -> Result<i64, String> {
    let bad = || format!("'{s}' is not an RFC 3339 date-time such as 2024-05-01T12:00:00Z");
    let (date, rest) = s.split_once(['T', 't', ' ']).ok_or_else(bad)?;
    let mut date_parts = date.splitn(3, '-');
    let mut next_number = |width: usize| -> Result<i64, String> {
        let part = date_parts.next().ok_or_else(bad)?;
        digits(part, width).ok_or_else(bad)
    };
    let (year, month, day) = (next_number(4)?, next_number(2)?, next_number(2)?);

    // Split the zone off the time: Z, or the last '+'/'-'.
    let (time, zone_minutes) = if let Some(time) = rest.strip_suffix(['Z', 'z']) {
        (time, 0)
    } else if let Some(at) = rest.rfind(['+', '-']) {
        let (time, zone) = rest.split_at(at);
        let sign = if zone.starts_with('-') { -1 } else { 1 };
        let zone = zone[1..].replace(':', "");
        let (hours, minutes) = (
            digits(zone.get(..2).ok_or_else(bad)?, 2).ok_or_else(bad)?,
            digits(zone.get(2..).ok_or_else(bad)?, 2).ok_or_else(bad)?,
        );
        if hours > 23 || minutes > 59 {
            return Err(bad());
        }
        (time, sign * (hours * 60 + minutes))
    } else {
        (rest, 0)
    };

    let (clock, fraction) = match time.split_once(['.', ',']) {
        Some((clock, fraction)) => (clock, Some(fraction)),
        None => (time, None),
    };
    let mut clock_parts = clock.split(':');
    let hour = digits(clock_parts.next().ok_or_else(bad)?, 2).ok_or_else(bad)?;
    let minute = digits(clock_parts.next().ok_or_else(bad)?, 2).ok_or_else(bad)?;
    let second = match clock_parts.next() {
        Some(sec) => digits(sec, 2).ok_or_else(bad)?,
        None if fraction.is_none() => 0,
        None => return Err(bad()),
    };
    if clock_parts.next().is_some() {
        return Err(bad());
    }
    let millis = match fraction {
        None => 0,
        Some(f) if !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()) => {
            // Milliseconds: the first three digits, right-padded.
            let mut ms = 0;
            for i in 0..3 {
                ms = ms * 10 + f.as_bytes().get(i).map_or(0, |b| i64::from(b - b'0'));
            }
            ms
        }
        Some(_) => return Err(bad()),
    };
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return Err(bad());
    }
    let days = days_from_civil(year, month, day);
    let ms = (((days * 24 + hour) * 60 + minute - zone_minutes) * 60 + second) * 1000 + millis;
    if ms < 0 {
        return Err(format!(
            "'{s}' is before 1970, which ListOffsets cannot look up"
        ));
    }
    Ok(ms)
}

/// A run of exactly `width` ASCII digits.
fn digits(s: &str, width: usize) -> Option<i64> {
    (s.len() == width && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
}

fn is_leap_year(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap_year(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`), so no date library is needed for one flag.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

// ---------------------------------------------------------------- output

/// An empty value shows as "-", so columns stay aligned and parseable.
fn cell(value: &str) -> String {
    if value.is_empty() {
        NONE_CELL.to_owned()
    } else {
        value.to_owned()
    }
}

fn opt_cell(value: Option<i64>) -> String {
    value.map_or_else(|| NONE_CELL.to_owned(), |v| v.to_string())
}

/// Left-aligned columns as wide as their widest cell plus one space, like
/// the Kafka tools; no trailing spaces.
fn render_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, value) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(value.chars().count());
            }
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (value, width) in row.iter().zip(&widths) {
            let _ = write!(line, "{value:<width$} ", width = width);
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::consumer_protocol::Assignment;
    use crate::client::groups::GroupMember;

    #[test]
    fn datetimes_parse_as_rfc3339() {
        assert_eq!(parse_datetime_ms("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(
            parse_datetime_ms("2024-05-01T12:00:00Z"),
            Ok(1_714_564_800_000)
        );
        assert_eq!(
            parse_datetime_ms("2024-05-01T14:00:00.250+02:00"),
            Ok(1_714_564_800_250)
        );
        assert_eq!(
            parse_datetime_ms("2024-05-01T07:30:00-0430"),
            Ok(1_714_564_800_000)
        );
        // Kafka tool style, without a zone: UTC.
        assert_eq!(
            parse_datetime_ms("2024-05-01T12:00:00.000"),
            Ok(1_714_564_800_000)
        );
        assert_eq!(parse_datetime_ms("2024-05-01 12:00"), Ok(1_714_564_800_000));
        assert_eq!(
            parse_datetime_ms("2000-02-29T00:00:00.1Z"),
            Ok(951_782_400_100)
        );
        for bad in [
            "2024-05-01",
            "2024-13-01T00:00:00Z",
            "2023-02-29T00:00:00Z",
            "2024-05-01T24:00:00Z",
            "2024-05-01T12:00:00+2",
            "2024-05-01T12:00:00.Z",
            "24-05-01T12:00:00Z",
            "1969-12-31T23:59:59Z",
            "2024-05-01T12:00:00:00Z",
            "",
        ] {
            assert!(parse_datetime_ms(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn topic_arguments_take_kafkas_partition_syntax() {
        assert_eq!(
            parse_topic_partitions("t").unwrap(),
            ("t".to_owned(), vec![])
        );
        assert_eq!(
            parse_topic_partitions("orders:0,2").unwrap(),
            ("orders".to_owned(), vec![0, 2])
        );
        assert!(parse_topic_partitions("t:x").is_err());
        assert!(parse_topic_partitions(":1").is_err());
    }

    fn offsets(pairs: &[(i32, i64)]) -> BTreeMap<i32, i64> {
        pairs.iter().copied().collect()
    }

    #[test]
    fn requested_offsets_stay_inside_the_log() {
        let earliest = offsets(&[(0, 10), (1, 0)]);
        let latest = offsets(&[(0, 50), (1, 5)]);
        let mut warnings = Vec::new();
        let plan = plan_offsets(
            "t",
            &[0, 1],
            Target::Clamped(offsets(&[(0, 3), (1, 99)])),
            &earliest,
            &latest,
            &mut warnings,
        )
        .unwrap();
        assert_eq!(
            plan,
            BTreeMap::from([(("t".to_owned(), 0), 10), (("t".to_owned(), 1), 5)])
        );
        assert_eq!(warnings.len(), 2, "{warnings:?}");
    }

    #[test]
    fn a_time_after_the_last_record_resets_to_the_log_end() {
        let earliest = offsets(&[(0, 0), (1, 0)]);
        let latest = offsets(&[(0, 30), (1, 0)]);
        let mut warnings = Vec::new();
        let plan = plan_offsets(
            "t",
            &[0, 1],
            Target::ByTime(offsets(&[(0, 7), (1, -1)])),
            &earliest,
            &latest,
            &mut warnings,
        )
        .unwrap();
        assert_eq!(
            plan,
            BTreeMap::from([(("t".to_owned(), 0), 7), (("t".to_owned(), 1), 0)])
        );
        assert_eq!(warnings.len(), 1);
    }

    #[test]
    fn lag_is_log_end_minus_committed_and_unknowns_show_as_dashes() {
        let tp = |p: i32| ("t".to_owned(), p);
        let wanted = BTreeSet::from([tp(0), tp(1), tp(2)]);
        let committed = BTreeMap::from([(tp(0), 12), (tp(2), 4)]);
        let ends = BTreeMap::from([(tp(0), 30), (tp(1), 0)]);
        let member = MemberCells {
            member_id: "m-1".to_owned(),
            client_host: "/127.0.0.1".to_owned(),
            client_id: "c".to_owned(),
        };
        let assigned = BTreeMap::from([(tp(1), member.clone())]);
        let rows = lag_rows(&wanted, &committed, &ends, &assigned);
        assert_eq!(rows[0].lag, Some(18));
        assert_eq!(rows[1].committed_offset, None);
        assert_eq!(rows[1].lag, None);
        assert_eq!(rows[1].member, Some(member));
        assert_eq!(rows[2].log_end_offset, None);

        let report = GroupReport {
            description: GroupDescription {
                group_id: "g".to_owned(),
                coordinator_id: 1,
                state: "Stable".to_owned(),
                protocol_type: "consumer".to_owned(),
                protocol: "range".to_owned(),
                group_type: "classic".to_owned(),
                members: vec![GroupMember {
                    member_id: "m-1".to_owned(),
                    group_instance_id: None,
                    client_id: "c".to_owned(),
                    client_host: "/127.0.0.1".to_owned(),
                    assignment: Ok(Assignment::from([("t".to_owned(), vec![1])])),
                }],
            },
            coordinator: "127.0.0.1:9092 (1)".to_owned(),
            partitions: rows,
            offsets_error: None,
        };
        assert_eq!(
            render_report(&report),
            "\
GROUP COORDINATOR (ID)   TYPE    PROTOCOL-TYPE ASSIGNMENT-STRATEGY STATE  #MEMBERS
g     127.0.0.1:9092 (1) classic consumer      range               Stable 1

GROUP CONSUMER-ID GROUP-INSTANCE-ID HOST       CLIENT-ID #PARTITIONS ASSIGNMENT
g     m-1         -                 /127.0.0.1 c         1           t:1

GROUP TOPIC PARTITION CURRENT-OFFSET LOG-END-OFFSET LAG CONSUMER-ID HOST       CLIENT-ID
g     t     0         12             30             18  -           -          -
g     t     1         -              0              -   m-1         /127.0.0.1 c
g     t     2         4              -              -   -           -          -
"
        );
    }

    #[test]
    fn reset_plans_print_like_the_kafka_tool() {
        let plan = BTreeMap::from([(("t".to_owned(), 1), 0), (("t".to_owned(), 0), 7)]);
        assert_eq!(
            render_reset("g", &plan),
            "GROUP TOPIC PARTITION NEW-OFFSET\ng     t     0         7\ng     t     1         0\n"
        );
    }

    #[test]
    fn exactly_one_reset_target_is_chosen() {
        let none = ResetTo {
            to_earliest: false,
            to_latest: false,
            to_offset: None,
            shift_by: None,
            to_datetime: None,
        };
        assert!(none.spec().is_err());
        let shift = ResetTo {
            shift_by: Some(-5),
            ..none.clone()
        };
        assert_eq!(shift.spec().unwrap(), ResetSpec::ShiftBy(-5));
        let two = ResetTo {
            to_latest: true,
            ..shift
        };
        assert!(two.spec().is_err());
    }
}
