//! The Docker files (`docker-compose.yml`, `Dockerfile`, `.dockerignore`)
//! checked without Docker: a wrong listener, a port that is published but not
//! advertised, a stage that does not exist or a source directory the build
//! context leaves out would otherwise show up only on a machine with a Docker
//! engine, in front of a user.
//!
//! Design decisions:
//! - The compose file is parsed as YAML and read the way Compose reads it
//!   (both the short and long syntax of ports, environment and depends_on;
//!   `${VAR:-default}` interpolation), so the checks do not depend on how
//!   the file happens to be written today.
//! - Fjord's environment is checked by Fjord's own configuration code
//!   ([`ConfigSources`]): the container starts only if that code accepts
//!   every `FJORD_*` variable, so the test asks it, for each documented value
//!   of the compose variables.
//! - The Dockerfile is read instruction by instruction (continuation lines
//!   joined, comments dropped); enough to know its stages and what each one
//!   copies, exposes and runs.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, ensure, Context as _, Result};
use fjord::config::{BrokerConfig, ConfigSources};
use serde_norway::Value;

/// The three services the README documents.
const SERVICES: &[&str] = &["fjord", "kafka", "bench"];
/// Where the broker keeps its data inside the container (a volume).
const FJORD_DATA_DIR: &str = "/var/lib/fjord";
/// The Kafka port of Fjord, in the container and on the host.
const FJORD_PORT: u16 = 9092;
/// Apache Kafka's port for clients on the host.
const KAFKA_HOST_PORT: u16 = 19092;
/// Apache Kafka's address for containers on the compose network (the bench).
const KAFKA_NETWORK_ADDRESS: &str = "kafka:9093";
/// Compose variable choosing Fjord's advertised host.
const FJORD_ADVERTISED_HOST_VAR: &str = "FJORD_ADVERTISED_HOST";

fn repo_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(name)
}

fn read_repo_file(name: &str) -> Result<String> {
    std::fs::read_to_string(repo_path(name)).with_context(|| format!("reading {name}"))
}

// ---------------------------------------------------------------- compose --

fn compose() -> Result<Value> {
    let text = read_repo_file("docker-compose.yml")?;
    serde_norway::from_str(&text).context("docker-compose.yml is not valid YAML")
}

fn services(compose: &Value) -> Result<&serde_norway::Mapping> {
    compose
        .get("services")
        .and_then(Value::as_mapping)
        .ok_or_else(|| anyhow!("docker-compose.yml has no `services` mapping"))
}

fn service<'a>(compose: &'a Value, name: &str) -> Result<&'a Value> {
    services(compose)?
        .get(name)
        .ok_or_else(|| anyhow!("docker-compose.yml has no service `{name}`"))
}

/// A YAML scalar as Compose turns it into a string (numbers and booleans in
/// `environment` become their text).
fn scalar(value: &Value) -> Result<String> {
    match value {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        Value::Null => Ok(String::new()),
        other => bail!("expected a scalar, found {other:?}"),
    }
}

fn string_list(value: Option<&Value>) -> Result<Vec<String>> {
    match value {
        None => Ok(Vec::new()),
        Some(Value::Sequence(items)) => items.iter().map(scalar).collect(),
        Some(other) => Ok(vec![scalar(other)?]),
    }
}

/// Expands `$$`, `$VAR`, `${VAR}`, `${VAR:-default}` and `${VAR-default}` as
/// Compose does, with `vars` as the environment of `docker compose`.
fn interpolate(text: &str, vars: &BTreeMap<&str, &str>) -> Result<String> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        rest = &rest[at + 1..];
        if let Some(after) = rest.strip_prefix('$') {
            out.push('$');
            rest = after;
        } else if let Some(after) = rest.strip_prefix('{') {
            let end = after
                .find('}')
                .ok_or_else(|| anyhow!("unclosed ${{ in {text:?}"))?;
            let expr = &after[..end];
            rest = &after[end + 1..];
            let (name, default, empty_is_unset) = if let Some((n, d)) = expr.split_once(":-") {
                (n, Some(d), true)
            } else if let Some((n, d)) = expr.split_once('-') {
                (n, Some(d), false)
            } else {
                (expr, None, false)
            };
            let value = vars.get(name).copied();
            let value = match (value, default) {
                (Some(v), Some(d)) if v.is_empty() && empty_is_unset => d,
                (Some(v), _) => v,
                (None, Some(d)) => d,
                (None, None) => "",
            };
            out.push_str(value);
        } else {
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            ensure!(end > 0, "lone $ in {text:?} (write $$)");
            out.push_str(vars.get(&rest[..end]).copied().unwrap_or(""));
            rest = &rest[end..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// A service's `environment`, in either the mapping or the `K=V` list form,
/// interpolated with `vars`.
fn environment(service: &Value, vars: &BTreeMap<&str, &str>) -> Result<BTreeMap<String, String>> {
    let mut env = BTreeMap::new();
    match service.get("environment") {
        None => {}
        Some(Value::Mapping(map)) => {
            for (k, v) in map {
                env.insert(scalar(k)?, interpolate(&scalar(v)?, vars)?);
            }
        }
        Some(Value::Sequence(items)) => {
            for item in items {
                let item = scalar(item)?;
                let (k, v) = item.split_once('=').unwrap_or((item.as_str(), ""));
                env.insert(k.to_string(), interpolate(v, vars)?);
            }
        }
        Some(other) => bail!("environment must be a mapping or a list, found {other:?}"),
    }
    Ok(env)
}

fn env_var<'a>(env: &'a BTreeMap<String, String>, name: &str) -> Result<&'a str> {
    env.get(name)
        .map(String::as_str)
        .ok_or_else(|| anyhow!("environment variable {name} is not set"))
}

/// One published port: `host` is `None` when Docker picks the host port.
#[derive(Debug, PartialEq, Eq)]
struct Published {
    host: Option<u16>,
    container: u16,
}

fn port_number(text: &str) -> Result<u16> {
    text.trim()
        .parse()
        .with_context(|| format!("port {text:?} is not a single port number"))
}

/// `ports` in the short (`"[IP:]HOST:CONTAINER[/tcp]"`) or long
/// (`{target, published}`) syntax.
fn published_ports(service: &Value) -> Result<Vec<Published>> {
    let Some(ports) = service.get("ports") else {
        return Ok(Vec::new());
    };
    let ports = ports
        .as_sequence()
        .ok_or_else(|| anyhow!("ports must be a list"))?;
    let mut out = Vec::new();
    for port in ports {
        if let Value::Mapping(map) = port {
            let target = map
                .get("target")
                .ok_or_else(|| anyhow!("long-syntax port without target: {map:?}"))?;
            let host = match map.get("published") {
                Some(p) => Some(port_number(&scalar(p)?)?),
                None => None,
            };
            out.push(Published {
                host,
                container: port_number(&scalar(target)?)?,
            });
            continue;
        }
        let text = scalar(port)?;
        let text = text.strip_suffix("/tcp").unwrap_or(&text);
        ensure!(!text.ends_with("/udp"), "Kafka ports are TCP, got {text:?}");
        let parts: Vec<&str> = text.rsplitn(3, ':').collect();
        let published = match parts.as_slice() {
            [container] => Published {
                host: None,
                container: port_number(container)?,
            },
            [container, host] | [container, host, _] => Published {
                host: Some(port_number(host)?),
                container: port_number(container)?,
            },
            _ => bail!("cannot read port {text:?}"),
        };
        out.push(published);
    }
    Ok(out)
}

/// Named volumes a service mounts, as (volume, container path); bind mounts
/// (sources starting with `.`, `/` or `~`) are left out.
fn named_volumes(service: &Value) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for volume in service
        .get("volumes")
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
    {
        let (source, target) = match volume {
            Value::Mapping(map) => (
                map.get("source")
                    .map(scalar)
                    .transpose()?
                    .unwrap_or_default(),
                map.get("target")
                    .map(scalar)
                    .transpose()?
                    .ok_or_else(|| anyhow!("volume without target: {map:?}"))?,
            ),
            other => {
                let text = scalar(other)?;
                let mut parts = text.split(':');
                let source = parts.next().unwrap_or_default().to_string();
                let target = parts
                    .next()
                    .ok_or_else(|| anyhow!("volume {text:?} has no container path"))?
                    .to_string();
                (source, target)
            }
        };
        let bind = source.is_empty()
            || source.starts_with('.')
            || source.starts_with('/')
            || source.starts_with('~');
        if !bind {
            out.push((source, target));
        }
    }
    Ok(out)
}

/// `build` as (context, dockerfile, target); the string form is a context.
fn build_spec(service: &Value) -> Result<(String, String, Option<String>)> {
    match service.get("build") {
        Some(Value::String(context)) => Ok((context.clone(), "Dockerfile".into(), None)),
        Some(Value::Mapping(map)) => {
            let field = |name: &str| map.get(name).map(scalar).transpose();
            Ok((
                field("context")?.unwrap_or_else(|| ".".into()),
                field("dockerfile")?.unwrap_or_else(|| "Dockerfile".into()),
                field("target")?,
            ))
        }
        Some(other) => bail!("build must be a string or a mapping, found {other:?}"),
        None => bail!("service has no build section"),
    }
}

/// Names in `depends_on`, in the list or the mapping form.
fn depends_on(service: &Value) -> Result<Vec<String>> {
    match service.get("depends_on") {
        None => Ok(Vec::new()),
        Some(Value::Sequence(items)) => items.iter().map(scalar).collect(),
        Some(Value::Mapping(map)) => map.keys().map(scalar).collect(),
        Some(other) => bail!("depends_on must be a list or a mapping, found {other:?}"),
    }
}

/// A Kafka listener `NAME://host:port` (an empty host means every interface).
#[derive(Debug, Clone, PartialEq, Eq)]
struct KafkaListener {
    name: String,
    host: String,
    port: u16,
}

fn kafka_listeners(text: &str) -> Result<Vec<KafkaListener>> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|item| {
            let (name, address) = item
                .split_once("://")
                .ok_or_else(|| anyhow!("listener {item:?} is not NAME://host:port"))?;
            let (host, port) = address
                .rsplit_once(':')
                .ok_or_else(|| anyhow!("listener {item:?} has no port"))?;
            Ok(KafkaListener {
                name: name.to_string(),
                host: host.to_string(),
                port: port_number(port)?,
            })
        })
        .collect()
}

/// `listener.security.protocol.map`: listener name -> security protocol.
fn protocol_map(text: &str) -> Result<BTreeMap<String, String>> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|pair| {
            pair.split_once(':')
                .map(|(n, p)| (n.to_string(), p.to_string()))
                .ok_or_else(|| anyhow!("protocol map entry {pair:?} is not NAME:PROTOCOL"))
        })
        .collect()
}

fn comma_set(text: &str) -> BTreeSet<String> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// Fjord's configuration as the container would build it from `env` (the
/// `FJORD_*` variables only; anything else belongs to someone else).
fn fjord_config(env: &BTreeMap<String, String>) -> Result<BrokerConfig> {
    let mut sources = ConfigSources::new();
    sources.load_env(
        env.iter()
            .filter(|(k, _)| k.starts_with("FJORD_"))
            .map(|(k, v)| (k.clone(), v.clone())),
    )?;
    sources.build()
}

// ------------------------------------------------------------- Dockerfile --

/// One instruction: keyword (upper case) and its arguments.
#[derive(Debug, Clone)]
struct Instruction {
    keyword: String,
    args: String,
}

/// A build stage: its `FROM` image, its `AS` name and its instructions.
#[derive(Debug)]
struct Stage {
    name: Option<String>,
    base: String,
    instructions: Vec<Instruction>,
}

impl Stage {
    fn all(&self, keyword: &str) -> impl Iterator<Item = &str> {
        let keyword = keyword.to_string();
        self.instructions
            .iter()
            .filter(move |i| i.keyword == keyword)
            .map(|i| i.args.as_str())
    }

    fn label(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.base)
    }
}

/// Instructions with continuation lines joined and comments (including the
/// ones inside a continued `RUN`) dropped.
fn dockerfile_instructions(text: &str) -> Vec<Instruction> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || trimmed.is_empty() {
            continue;
        }
        if let Some(body) = trimmed.strip_suffix('\\') {
            current.push_str(body.trim_end());
            current.push(' ');
            continue;
        }
        current.push_str(trimmed);
        let full = std::mem::take(&mut current);
        let full = full.trim();
        if full.is_empty() {
            continue;
        }
        let (keyword, args) = full.split_once(char::is_whitespace).unwrap_or((full, ""));
        out.push(Instruction {
            keyword: keyword.to_ascii_uppercase(),
            args: args.trim().to_string(),
        });
    }
    out
}

fn dockerfile_stages(text: &str) -> Result<Vec<Stage>> {
    let mut stages: Vec<Stage> = Vec::new();
    for instruction in dockerfile_instructions(text) {
        if instruction.keyword == "FROM" {
            let words: Vec<&str> = instruction
                .args
                .split_whitespace()
                .filter(|w| !w.starts_with("--"))
                .collect();
            let (base, name) = match words.as_slice() {
                [base] => (*base, None),
                [base, as_kw, name] if as_kw.eq_ignore_ascii_case("as") => {
                    (*base, Some(name.to_string()))
                }
                _ => bail!("cannot read FROM {}", instruction.args),
            };
            stages.push(Stage {
                name,
                base: base.to_string(),
                instructions: Vec::new(),
            });
        } else if let Some(stage) = stages.last_mut() {
            stage.instructions.push(instruction);
        } else {
            ensure!(
                matches!(instruction.keyword.as_str(), "ARG"),
                "{} before the first FROM",
                instruction.keyword
            );
        }
    }
    ensure!(!stages.is_empty(), "the Dockerfile has no FROM");
    Ok(stages)
}

fn dockerfile() -> Result<Vec<Stage>> {
    dockerfile_stages(&read_repo_file("Dockerfile")?)
}

fn stage<'a>(stages: &'a [Stage], name: &str) -> Result<&'a Stage> {
    stages
        .iter()
        .find(|s| s.name.as_deref() == Some(name))
        .ok_or_else(|| anyhow!("the Dockerfile has no stage `{name}`"))
}

/// Sources and `--from` of a `COPY`, in the shell or the JSON form.
fn copy_parts(args: &str) -> Result<(Option<String>, Vec<String>)> {
    let mut from = None;
    let mut rest = Vec::new();
    let words: Vec<String> = if args.trim_start().starts_with('[') {
        serde_json::from_str(args).with_context(|| format!("COPY {args}"))?
    } else {
        args.split_whitespace().map(str::to_string).collect()
    };
    for word in words {
        if let Some(stage) = word.strip_prefix("--from=") {
            from = Some(stage.to_string());
        } else if !word.starts_with("--") {
            rest.push(word);
        }
    }
    ensure!(
        rest.len() >= 2,
        "COPY {args} needs a source and a destination"
    );
    rest.pop();
    Ok((from, rest))
}

/// `ENV` arguments (`K=V K2=V2` or the old `K V` form) as a map.
fn env_args(args: &str) -> BTreeMap<String, String> {
    let words: Vec<&str> = args.split_whitespace().collect();
    if words.len() >= 2 && !words[0].contains('=') {
        return BTreeMap::from([(words[0].to_string(), words[1..].join(" "))]);
    }
    words
        .iter()
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
        .collect()
}

/// The patterns of `.dockerignore` (comments and blank lines dropped).
fn dockerignore() -> Result<Vec<String>> {
    Ok(read_repo_file(".dockerignore")?
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect())
}

/// Whether `pattern` (`*` within a component, `**` across components)
/// matches the path components `path`.
fn glob_match(pattern: &[&str], path: &[&str]) -> bool {
    match (pattern.first(), path.first()) {
        (None, None) => true,
        (Some(&"**"), _) => {
            glob_match(&pattern[1..], path) || (!path.is_empty() && glob_match(pattern, &path[1..]))
        }
        (Some(p), Some(c)) => component_match(p, c) && glob_match(&pattern[1..], &path[1..]),
        _ => false,
    }
}

fn component_match(pattern: &str, text: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == text,
        Some((prefix, rest)) => {
            let Some(text) = text.strip_prefix(prefix) else {
                return false;
            };
            (0..=text.len())
                .filter(|i| text.is_char_boundary(*i))
                .any(|i| component_match(rest, &text[i..]))
        }
    }
}

/// Whether the build context leaves out `path` (or a directory above it).
/// Negated patterns (`!x`) re-include, the last matching pattern wins.
fn context_excludes(patterns: &[String], path: &str) -> bool {
    let components: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    let mut excluded = false;
    for pattern in patterns {
        let (negated, body) = match pattern.strip_prefix('!') {
            Some(body) => (true, body),
            None => (false, pattern.as_str()),
        };
        let body: Vec<&str> = body
            .trim_matches('/')
            .split('/')
            .filter(|c| !c.is_empty())
            .collect();
        let matched = (1..=components.len()).any(|n| glob_match(&body, &components[..n]));
        if matched {
            excluded = !negated;
        }
    }
    excluded
}

/// Paths (relative to the repository) of the workspace members and patched
/// crates: the builder stages must copy all of them for Cargo to load the
/// workspace.
fn cargo_paths_needed() -> Result<Vec<String>> {
    let manifest: toml::Table = read_repo_file("Cargo.toml")?.parse()?;
    let mut paths = vec![
        "Cargo.toml".to_string(),
        "Cargo.lock".to_string(),
        "src".to_string(),
    ];
    if let Some(members) = manifest
        .get("workspace")
        .and_then(|w| w.get("members"))
        .and_then(|m| m.as_array())
    {
        for member in members.iter().filter_map(|m| m.as_str()) {
            if member != "." {
                paths.push(member.trim_end_matches('/').to_string());
            }
        }
    }
    if let Some(patches) = manifest.get("patch").and_then(|p| p.as_table()) {
        for registry in patches.values().filter_map(|r| r.as_table()) {
            for spec in registry.values() {
                if let Some(path) = spec.get("path").and_then(|p| p.as_str()) {
                    paths.push(path.trim_end_matches('/').to_string());
                }
            }
        }
    }
    Ok(paths)
}

// ------------------------------------------------------------------ tests --

#[test]
fn compose_defines_the_fjord_kafka_and_bench_services() -> Result<()> {
    let compose = compose()?;
    let defined: BTreeSet<String> = services(&compose)?
        .keys()
        .map(scalar)
        .collect::<Result<_>>()?;
    for name in SERVICES {
        ensure!(
            defined.contains(*name),
            "service {name} is missing; defined: {defined:?}"
        );
    }
    Ok(())
}

#[test]
fn fjord_service_builds_the_dockerfile_and_publishes_9092() -> Result<()> {
    let compose = compose()?;
    let fjord = service(&compose, "fjord")?;
    let (context, dockerfile_name, target) = build_spec(fjord)?;
    ensure!(
        context == ".",
        "fjord must build from the repository root, not {context:?}"
    );
    ensure!(
        dockerfile_name == "Dockerfile",
        "fjord must build from ./Dockerfile, not {dockerfile_name:?}"
    );
    let stages = dockerfile()?;
    match target {
        Some(target) => {
            stage(&stages, &target)?;
        }
        None => ensure!(
            stages.last().and_then(|s| s.name.as_deref()) == Some("fjord"),
            "without a build target the last stage is built; it must be `fjord`"
        ),
    }
    let ports = published_ports(fjord)?;
    ensure!(
        ports.contains(&Published {
            host: Some(FJORD_PORT),
            container: FJORD_PORT
        }),
        "fjord must publish {FJORD_PORT}:{FJORD_PORT}, publishes {ports:?}"
    );
    let volumes = named_volumes(fjord)?;
    ensure!(
        volumes.iter().any(|(_, target)| target == FJORD_DATA_DIR),
        "fjord must keep {FJORD_DATA_DIR} on a named volume, has {volumes:?}"
    );
    Ok(())
}

/// For each documented setting of the compose variables, the broker accepts
/// its environment, listens on the published port on every interface,
/// advertises an address the intended clients can reach, and writes to the
/// volume.
#[test]
fn fjord_service_environment_is_a_valid_broker_config_for_each_advertised_host() -> Result<()> {
    let compose = compose()?;
    let fjord = service(&compose, "fjord")?;
    let ports = published_ports(fjord)?;
    // (compose variables, advertised host expected, who can reach it)
    let cases: [(BTreeMap<&str, &str>, &str); 2] = [
        (BTreeMap::new(), "localhost"),
        (
            BTreeMap::from([(FJORD_ADVERTISED_HOST_VAR, "fjord")]),
            "fjord",
        ),
    ];
    for (vars, advertised_host) in cases {
        let env = environment(fjord, &vars)?;
        let config = fjord_config(&env)
            .with_context(|| format!("fjord's environment with {vars:?}: {env:?}"))?;
        ensure!(
            config.listeners.len() == 1,
            "fjord listens on one listener, has {:?}",
            config.listeners
        );
        let listener = &config.listeners[0];
        ensure!(
            listener.host == "0.0.0.0",
            "fjord must listen on every interface of the container (0.0.0.0), not {}",
            listener.host
        );
        ensure!(
            ports.iter().any(|p| p.container == listener.port),
            "fjord listens on {} but publishes {ports:?}",
            listener.port
        );
        // Fjord answers every connection with its first advertised listener.
        let advertised = config
            .advertised_listeners
            .first()
            .ok_or_else(|| anyhow!("no advertised listener"))?;
        ensure!(
            advertised.host == advertised_host,
            "with {vars:?} fjord must advertise {advertised_host}, advertises {}",
            advertised.host
        );
        // From the host the advertised port is a host port, from the compose
        // network it is the container port: both must lead to the listener.
        ensure!(
            advertised.port == listener.port
                && ports.contains(&Published {
                    host: Some(advertised.port),
                    container: listener.port
                }),
            "fjord advertises port {} but listens on {} and publishes {ports:?}",
            advertised.port,
            listener.port
        );
        ensure!(
            config.log_dirs == Path::new(FJORD_DATA_DIR),
            "fjord must write to the volume {FJORD_DATA_DIR}, writes to {}",
            config.log_dirs.display()
        );
    }
    Ok(())
}

#[test]
fn kafka_service_is_a_single_kraft_node_with_consistent_listeners() -> Result<()> {
    let compose = compose()?;
    let kafka = service(&compose, "kafka")?;
    let image = scalar(
        kafka
            .get("image")
            .ok_or_else(|| anyhow!("kafka has no image"))?,
    )?;
    let (name, tag) = image
        .split_once(':')
        .ok_or_else(|| anyhow!("kafka image {image:?} has no tag"))?;
    ensure!(
        name == "apache/kafka",
        "kafka must run apache/kafka, runs {name}"
    );
    let major: u32 = tag
        .split('.')
        .next()
        .unwrap_or_default()
        .parse()
        .with_context(|| format!("kafka image tag {tag:?} is not a version"))?;
    ensure!(
        major >= 4,
        "kafka must be a 4.x image (KRaft only), is {tag}"
    );

    let env = environment(kafka, &BTreeMap::new())?;
    let roles = comma_set(env_var(&env, "KAFKA_PROCESS_ROLES")?);
    ensure!(
        roles == BTreeSet::from(["broker".to_string(), "controller".to_string()]),
        "a single node must be broker and controller, has roles {roles:?}"
    );
    let node_id = env_var(&env, "KAFKA_NODE_ID")?;

    let listeners = kafka_listeners(env_var(&env, "KAFKA_LISTENERS")?)?;
    let advertised = kafka_listeners(env_var(&env, "KAFKA_ADVERTISED_LISTENERS")?)?;
    let map = protocol_map(env_var(&env, "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP")?)?;
    let controllers = comma_set(env_var(&env, "KAFKA_CONTROLLER_LISTENER_NAMES")?);
    let inter_broker = env_var(&env, "KAFKA_INTER_BROKER_LISTENER_NAME")?;
    let listener = |name: &str| listeners.iter().find(|l| l.name == name);

    let names: BTreeSet<&str> = listeners.iter().map(|l| l.name.as_str()).collect();
    ensure!(
        names.len() == listeners.len(),
        "listener names repeat: {listeners:?}"
    );
    for l in &listeners {
        ensure!(
            map.contains_key(&l.name),
            "listener {} is not in the security protocol map {map:?}",
            l.name
        );
    }
    for a in &advertised {
        let l = listener(&a.name)
            .ok_or_else(|| anyhow!("advertised listener {} is not in KAFKA_LISTENERS", a.name))?;
        ensure!(
            map.contains_key(&a.name),
            "advertised listener {} is not in the protocol map",
            a.name
        );
        ensure!(
            !controllers.contains(&a.name),
            "controller listener {} must not be advertised to clients",
            a.name
        );
        // The advertised address must lead to that listener: either through
        // a published port (clients on the host) or directly on the compose
        // network by service name (clients in containers).
        if a.host == "localhost" || a.host == "127.0.0.1" {
            let ports = published_ports(kafka)?;
            ensure!(
                ports.contains(&Published {
                    host: Some(a.port),
                    container: l.port
                }),
                "{} is advertised as {}:{} but the published ports are {ports:?}",
                a.name,
                a.host,
                a.port
            );
        } else {
            let hostname = kafka.get("hostname").map(scalar).transpose()?;
            ensure!(
                a.host == "kafka" || Some(&a.host) == hostname.as_ref(),
                "{} is advertised as host {}, which containers cannot resolve",
                a.name,
                a.host
            );
            ensure!(
                a.port == l.port,
                "{} is advertised on port {} but listens on {}",
                a.name,
                a.port,
                l.port
            );
        }
    }
    ensure!(
        advertised.iter().any(|a| a.name == inter_broker),
        "the inter-broker listener {inter_broker} must be advertised"
    );
    let advertised_addresses: Vec<String> = advertised
        .iter()
        .map(|a| format!("{}:{}", a.host, a.port))
        .collect();
    for documented in [
        KAFKA_NETWORK_ADDRESS.to_string(),
        format!("localhost:{KAFKA_HOST_PORT}"),
    ] {
        ensure!(
            advertised_addresses.contains(&documented),
            "the README's address {documented} is not advertised: {advertised_addresses:?}"
        );
    }

    ensure!(!controllers.is_empty(), "no controller listener names");
    let mut controller_ports = BTreeSet::new();
    for name in &controllers {
        let l = listener(name)
            .ok_or_else(|| anyhow!("controller listener {name} is not in KAFKA_LISTENERS"))?;
        controller_ports.insert(l.port);
    }
    let voters = comma_set(env_var(&env, "KAFKA_CONTROLLER_QUORUM_VOTERS")?);
    ensure!(
        voters.len() == 1,
        "a single node has a single voter, got {voters:?}"
    );
    let voter = voters.iter().next().expect("one voter");
    let (id, address) = voter
        .split_once('@')
        .ok_or_else(|| anyhow!("voter {voter:?} is not id@host:port"))?;
    ensure!(
        id == node_id,
        "the voter {voter} is not this node ({node_id})"
    );
    let (_, port) = address
        .rsplit_once(':')
        .ok_or_else(|| anyhow!("voter {voter:?} has no port"))?;
    ensure!(
        controller_ports.contains(&port_number(port)?),
        "the voter {voter} is not on a controller listener port {controller_ports:?}"
    );

    for rf in [
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
    ] {
        ensure!(env_var(&env, rf)? == "1", "{rf} must be 1 on a single node");
    }
    let log_dirs = env_var(&env, "KAFKA_LOG_DIRS")?;
    let volumes = named_volumes(kafka)?;
    ensure!(
        volumes.iter().any(|(_, target)| target == log_dirs),
        "kafka's log dirs {log_dirs} must be on a named volume, volumes: {volumes:?}"
    );
    Ok(())
}

#[test]
fn bench_service_is_profiled_and_built_from_the_bench_target() -> Result<()> {
    let compose = compose()?;
    let bench = service(&compose, "bench")?;
    let profiles = string_list(bench.get("profiles"))?;
    ensure!(
        profiles.iter().any(|p| p == "bench"),
        "bench must be under the `bench` profile so `up` does not start it, profiles: {profiles:?}"
    );
    let (context, dockerfile_name, target) = build_spec(bench)?;
    ensure!(context == "." && dockerfile_name == "Dockerfile");
    let target = target.ok_or_else(|| anyhow!("bench must build a Dockerfile target"))?;
    ensure!(
        target == "bench",
        "bench builds target {target}, expected bench"
    );
    let stages = dockerfile()?;
    stage(&stages, &target)?;
    ensure!(
        published_ports(bench)?.is_empty(),
        "the bench is a client, it publishes no port"
    );
    Ok(())
}

#[test]
fn every_dependency_and_named_volume_is_defined() -> Result<()> {
    let compose = compose()?;
    let services = services(&compose)?;
    let defined: BTreeSet<String> = services.keys().map(scalar).collect::<Result<_>>()?;
    let volumes: BTreeSet<String> = compose
        .get("volumes")
        .and_then(Value::as_mapping)
        .map(|m| m.keys().map(scalar).collect::<Result<_>>())
        .transpose()?
        .unwrap_or_default();
    for (name, service) in services {
        let name = scalar(name)?;
        for dependency in depends_on(service)? {
            ensure!(
                defined.contains(&dependency),
                "{name} depends on {dependency}, which is not a service"
            );
            ensure!(dependency != name, "{name} depends on itself");
        }
        for (volume, _) in named_volumes(service)? {
            ensure!(
                volumes.contains(&volume),
                "{name} mounts volume {volume}, which the top-level `volumes` does not declare"
            );
        }
    }
    Ok(())
}

#[test]
fn dockerfile_has_the_broker_and_bench_stages() -> Result<()> {
    let stages = dockerfile()?;
    let names: BTreeSet<&str> = stages.iter().filter_map(|s| s.name.as_deref()).collect();
    for from in stages.iter().flat_map(|s| s.all("COPY")) {
        if let (Some(source_stage), _) = copy_parts(from)? {
            ensure!(
                names.contains(source_stage.as_str()),
                "COPY --from={source_stage}: no such stage"
            );
        }
    }

    // `docker build .` must give the broker.
    let fjord = stages.last().expect("at least one stage");
    ensure!(
        fjord.name.as_deref() == Some("fjord"),
        "the last (default) stage must be `fjord`, is {}",
        fjord.label()
    );
    ensure!(
        fjord
            .all("EXPOSE")
            .any(|e| e.split_whitespace().any(|p| p == "9092")),
        "the fjord stage must EXPOSE 9092"
    );
    ensure!(
        fjord.all("VOLUME").any(|v| v.contains(FJORD_DATA_DIR)),
        "the fjord stage must declare VOLUME {FJORD_DATA_DIR}"
    );
    ensure!(
        fjord.all("ENTRYPOINT").any(|e| e.contains("fjord")),
        "the fjord stage must run fjord"
    );
    ensure!(
        fjord.all("CMD").any(|c| c.contains("serve")),
        "the fjord image's default command must be `serve`"
    );
    let mut env = BTreeMap::new();
    for args in fjord.all("ENV") {
        env.extend(env_args(args));
    }
    let config = fjord_config(&env).with_context(|| format!("the image's ENV {env:?}"))?;
    ensure!(
        config
            .listeners
            .iter()
            .any(|l| l.host == "0.0.0.0" && l.port == FJORD_PORT),
        "the image must listen on 0.0.0.0:{FJORD_PORT}, listens on {:?}",
        config.listeners
    );
    ensure!(
        config
            .advertised_listeners
            .iter()
            .all(|l| l.host != "0.0.0.0"),
        "0.0.0.0 is not an address a client can connect to; advertise a host"
    );
    ensure!(config.log_dirs == Path::new(FJORD_DATA_DIR));

    let builder = stages
        .iter()
        .find(|s| {
            s.all("RUN")
                .any(|r| r.contains("cargo build") && r.contains("--bin fjord"))
        })
        .ok_or_else(|| anyhow!("no stage runs `cargo build ... --bin fjord`"))?;
    ensure!(
        builder.all("RUN").any(|r| r.contains("--release")),
        "the broker must be a release build"
    );
    ensure!(
        fjord
            .all("COPY")
            .any(|c| c.contains(&format!("--from={}", builder.label()))),
        "the fjord stage must copy the binary from {}",
        builder.label()
    );

    let bench = stage(&stages, "bench")?;
    ensure!(
        bench.all("ENTRYPOINT").any(|e| e.contains("fjord-bench")),
        "the bench stage must run fjord-bench"
    );
    let bench_builder = stages
        .iter()
        .find(|s| {
            s.all("RUN")
                .any(|r| r.contains("cargo build") && r.contains("-p fjord-bench"))
        })
        .ok_or_else(|| anyhow!("no stage runs `cargo build ... -p fjord-bench`"))?;
    ensure!(
        bench_builder.all("RUN").any(|r| r.contains("cmake")),
        "rdkafka's cmake-build needs cmake in {}",
        bench_builder.label()
    );
    Ok(())
}

/// Each builder stage copies everything Cargo needs to load the workspace
/// (members, lock file, patched crates), the sources exist, and the build
/// context does not leave them out.
#[test]
fn dockerfile_copies_the_whole_workspace_and_the_context_keeps_it() -> Result<()> {
    let stages = dockerfile()?;
    let ignore = dockerignore()?;
    for required in ["target", ".git"] {
        ensure!(
            context_excludes(&ignore, required),
            ".dockerignore must leave {required} out of the build context"
        );
    }
    let needed = cargo_paths_needed()?;
    for stage in stages
        .iter()
        .filter(|s| s.all("RUN").any(|r| r.contains("cargo build")))
    {
        let mut copied = Vec::new();
        for args in stage.all("COPY") {
            let (from, sources) = copy_parts(args)?;
            if from.is_some() {
                continue;
            }
            for source in sources {
                let source = source.trim_start_matches("./").trim_end_matches('/');
                ensure!(
                    repo_path(source).exists(),
                    "{}: COPY {source}, which does not exist",
                    stage.label()
                );
                ensure!(
                    !context_excludes(&ignore, source),
                    "{}: COPY {source}, which .dockerignore leaves out",
                    stage.label()
                );
                copied.push(source.to_string());
            }
        }
        for path in &needed {
            ensure!(
                copied.iter().any(|c| c == "."
                    || c == path
                    || path.starts_with(&format!("{c}/"))),
                "{} does not copy {path}, which Cargo needs to load the workspace (copies {copied:?})",
                stage.label()
            );
        }
    }
    Ok(())
}

#[test]
fn helpers_read_compose_and_dockerignore_syntax() -> Result<()> {
    let vars = BTreeMap::from([("SET", "x"), ("EMPTY", "")]);
    assert_eq!(interpolate("a${UNSET:-d}b", &vars)?, "adb");
    assert_eq!(interpolate("${SET:-d}", &vars)?, "x");
    assert_eq!(interpolate("${EMPTY:-d}", &vars)?, "d");
    assert_eq!(interpolate("${EMPTY-d}", &vars)?, "");
    assert_eq!(interpolate("$SET/$$HOME", &vars)?, "x/$HOME");

    let ports: Value = serde_norway::from_str(
        "ports: ['9092:9092', '127.0.0.1:1:2', '3', {target: 4, published: 5}]",
    )?;
    assert_eq!(
        published_ports(&ports)?,
        vec![
            Published {
                host: Some(9092),
                container: 9092
            },
            Published {
                host: Some(1),
                container: 2
            },
            Published {
                host: None,
                container: 3
            },
            Published {
                host: Some(5),
                container: 4
            },
        ]
    );

    let ignore: Vec<String> = ["target/", "**/*.log", "docs", "!docs/keep"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert!(context_excludes(&ignore, "target"));
    assert!(context_excludes(&ignore, "target/release/fjord"));
    assert!(context_excludes(&ignore, "a/b/c.log"));
    assert!(context_excludes(&ignore, "docs/x"));
    assert!(!context_excludes(&ignore, "docs/keep"));
    assert!(!context_excludes(&ignore, "src"));
    assert!(!context_excludes(&ignore, "targets"));

    let stages = dockerfile_stages(
        "ARG X=1\nFROM a AS one\n# c\nRUN a \\\n  # inner\n  b\nFROM one\nCOPY --from=one /x /y\n",
    )?;
    assert_eq!(stages.len(), 2);
    assert_eq!(stages[0].name.as_deref(), Some("one"));
    assert_eq!(stages[0].all("RUN").collect::<Vec<_>>(), vec!["a b"]);
    assert_eq!(stages[1].base, "one");
    assert_eq!(
        copy_parts(stages[1].all("COPY").next().expect("a COPY"))?,
        (Some("one".to_string()), vec!["/x".to_string()])
    );
    Ok(())
}
