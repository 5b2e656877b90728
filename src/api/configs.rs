//! DescribeConfigs, AlterConfigs and IncrementalAlterConfigs, for TOPIC and
//! BROKER resources.
//!
//! Every change is validated whole before anything is stored (the same
//! rules as CreateTopics), so a value that is stored is one that loads.
//! Broker resources accept the dynamic properties (see
//! [`broker_config::is_dynamic`]) for the cluster default (`""`) and for
//! this node (`<node.id>`); the rest are refused with Kafka's error, never
//! accepted and ignored.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult, DescribeConfigsSynonym,
};
use kafka_protocol::messages::{
    AlterConfigsRequest, AlterConfigsResponse, DescribeConfigsRequest, DescribeConfigsResponse,
    IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse,
};
use kafka_protocol::protocol::StrBytes;

use crate::broker::{Broker, KafkaError};
use crate::cluster::broker_config::{self, BrokerLayers, ConfigEntry, CLUSTER_DEFAULT};
use crate::cluster::topic_config::topic_config;
use crate::cluster::TopicConfigs;
use crate::config::{self, ConfigType};

/// Kafka's ConfigResource types.
const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;

/// IncrementalAlterConfigs operations.
const OP_SET: i8 = 0;
const OP_DELETE: i8 = 1;
const OP_APPEND: i8 = 2;
const OP_SUBTRACT: i8 = 3;

/// Most resources one request may name (bounds the work per request).
const RESOURCES_MAX: usize = 10_000;

fn text(s: impl Into<String>) -> StrBytes {
    StrBytes::from_string(s.into())
}

/// Which broker resource a name means.
enum BrokerResource {
    ClusterDefault,
    ThisNode,
}

fn broker_resource(broker: &Broker, name: &str) -> Result<BrokerResource, KafkaError> {
    if name == CLUSTER_DEFAULT {
        Ok(BrokerResource::ClusterDefault)
    } else if name == broker.config.node_id.to_string() {
        Ok(BrokerResource::ThisNode)
    } else {
        Err((
            ResponseError::InvalidRequest,
            format!(
                "Unexpected broker id, expected {} or empty string, but received {name}",
                broker.config.node_id
            ),
        ))
    }
}

fn describe_entries(
    broker: &Broker,
    resource_type: i8,
    name: &str,
) -> Result<Vec<ConfigEntry>, KafkaError> {
    match resource_type {
        RESOURCE_TOPIC => match broker.metadata.topic(name) {
            None => Err((
                ResponseError::UnknownTopicOrPartition,
                format!("Topic '{name}' does not exist."),
            )),
            Some(topic) => Ok(TopicConfigs::describe(&broker.layers(), &topic.configs)),
        },
        RESOURCE_BROKER => Ok(match broker_resource(broker, name)? {
            BrokerResource::ClusterDefault => broker.layers().describe_cluster_default(),
            BrokerResource::ThisNode => broker.layers().describe_broker(),
        }),
        other => Err((
            ResponseError::InvalidRequest,
            format!("Config resource type {other} is not supported."),
        )),
    }
}

pub fn describe(
    broker: &Broker,
    version: i16,
    request: DescribeConfigsRequest,
) -> DescribeConfigsResponse {
    let synonyms_wanted = version >= 1 && request.include_synonyms;
    let docs_wanted = version >= 3 && request.include_documentation;
    let mut response = DescribeConfigsResponse::default();
    response.results = request
        .resources
        .into_iter()
        .take(RESOURCES_MAX)
        .map(|resource| {
            let mut result = DescribeConfigsResult::default();
            result.resource_type = resource.resource_type;
            result.resource_name = resource.resource_name.clone();
            // Kafka 4.4 answers "" here on success (not null, as elsewhere).
            result.error_message = Some(StrBytes::default());
            let wanted = |name: &str| {
                resource
                    .configuration_keys
                    .as_ref()
                    .is_none_or(|keys| keys.iter().any(|k| k.as_str() == name))
            };
            match describe_entries(broker, resource.resource_type, &resource.resource_name) {
                Ok(entries) => {
                    result.configs = entries
                        .into_iter()
                        .filter(|e| wanted(&e.name))
                        .map(|e| {
                            let mut c = DescribeConfigsResourceResult::default();
                            c.name = text(e.name);
                            c.value = e.value.map(text);
                            c.read_only = e.read_only;
                            c.is_sensitive = false;
                            c.config_source = e.source.id();
                            if synonyms_wanted {
                                c.synonyms = e
                                    .synonyms
                                    .into_iter()
                                    .map(|s| {
                                        let mut out = DescribeConfigsSynonym::default();
                                        out.name = text(s.name);
                                        out.value = s.value.map(text);
                                        out.source = s.source.id();
                                        out
                                    })
                                    .collect();
                            }
                            c.documentation = None;
                            if version >= 3 {
                                c.config_type = e.config_type.id();
                                if docs_wanted {
                                    c.documentation = Some(text(e.doc));
                                }
                            }
                            c
                        })
                        .collect();
                }
                Err((code, message)) => {
                    result.error_code = code.code();
                    result.error_message = Some(text(message));
                }
            }
            result
        })
        .collect();
    response
}

/// One requested change: name, operation, value.
type Op = (String, i8, Option<String>);

/// Applies `ops` to `own` (the resource's own settings). APPEND and
/// SUBTRACT start from the value in effect, `effective(name)`: the
/// resource's own value, else the default it inherits.
fn apply_ops(
    own: &BTreeMap<String, String>,
    ops: &[Op],
    is_known: impl Fn(&str) -> bool,
    is_list: impl Fn(&str) -> bool,
    effective: impl Fn(&str) -> Option<String>,
) -> Result<BTreeMap<String, String>, KafkaError> {
    let mut seen = HashSet::new();
    if let Some((dup, ..)) = ops.iter().find(|(name, ..)| !seen.insert(name.as_str())) {
        return Err((
            ResponseError::InvalidRequest,
            format!("Error due to duplicate config keys: {dup}"),
        ));
    }
    let mut next = own.clone();
    for (name, op, value) in ops {
        if !is_known(name) {
            return Err((
                ResponseError::InvalidConfig,
                format!("Unknown config name: {name}"),
            ));
        }
        match *op {
            OP_SET => {
                let v = value.clone().ok_or((
                    ResponseError::InvalidRequest,
                    format!("Null value not supported for: {name}"),
                ))?;
                next.insert(name.clone(), v);
            }
            OP_DELETE => {
                next.remove(name);
            }
            OP_APPEND | OP_SUBTRACT => {
                if !is_list(name) {
                    let what = if *op == OP_APPEND {
                        "append"
                    } else {
                        "subtract"
                    };
                    return Err((
                        ResponseError::InvalidConfig,
                        format!("Config value {what} is not allowed for config key: {name}"),
                    ));
                }
                let start = next
                    .get(name)
                    .cloned()
                    .or_else(|| effective(name))
                    .unwrap_or_default();
                let mut items: Vec<String> = start
                    .split(',')
                    .map(|x| x.trim().to_string())
                    .filter(|x| !x.is_empty())
                    .collect();
                for item in value
                    .as_deref()
                    .unwrap_or("")
                    .split(',')
                    .map(str::trim)
                    .filter(|x| !x.is_empty())
                {
                    if *op == OP_APPEND {
                        if !items.iter().any(|i| i == item) {
                            items.push(item.to_string());
                        }
                    } else {
                        items.retain(|i| i != item);
                    }
                }
                next.insert(name.clone(), items.join(","));
            }
            other => {
                return Err((
                    ResponseError::InvalidRequest,
                    format!("Unknown config operation {other} for {name}"),
                ))
            }
        }
    }
    Ok(next)
}

/// Applies (or with `validate_only` only checks) one resource's change.
/// `incremental` false is legacy AlterConfigs: the set replaces everything.
/// Blocking.
fn alter_resource(
    broker: &Broker,
    resource_type: i8,
    name: &str,
    incremental: bool,
    ops: Vec<Op>,
    validate_only: bool,
) -> Result<(), KafkaError> {
    match resource_type {
        RESOURCE_TOPIC => {
            let topic = broker.metadata.topic(name).ok_or((
                ResponseError::UnknownTopicOrPartition,
                format!("Topic '{name}' does not exist."),
            ))?;
            let base = if incremental {
                topic.configs.clone()
            } else {
                BTreeMap::new()
            };
            let layers = broker.layers();
            let next = apply_ops(
                &base,
                &ops,
                TopicConfigs::is_known,
                TopicConfigs::is_list,
                |key| topic_config(key).map(|def| TopicConfigs::broker_default(&layers, def)),
            )
            .map_err(|(code, why)| match code {
                ResponseError::InvalidConfig if why.starts_with("Unknown config name") => (
                    code,
                    why.replace("Unknown config name", "Unknown topic config name"),
                ),
                _ => (code, why),
            })?;
            broker.check_topic_configs(&topic, &next)?;
            if !validate_only {
                broker.set_topic_configs(name, next)?;
            }
            Ok(())
        }
        RESOURCE_BROKER => {
            let resource = broker_resource(broker, name)?;
            let layers: BrokerLayers = broker.layers();
            let cluster_default = matches!(resource, BrokerResource::ClusterDefault);
            let own = if incremental {
                layers.dynamic(cluster_default).clone()
            } else {
                BTreeMap::new()
            };
            let not_dynamic: Vec<&str> = ops
                .iter()
                .map(|(k, ..)| k.as_str())
                .filter(|k| !broker_config::is_dynamic(k))
                .collect();
            if !not_dynamic.is_empty() {
                return Err(broker_config::not_dynamic(&not_dynamic));
            }
            let next = apply_ops(
                &own,
                &ops,
                broker_config::is_dynamic,
                |k| config::property(k).is_some_and(|d| d.config_type == ConfigType::List),
                |k| layers.value(k).map(|(v, _)| v.to_string()),
            )?;
            for (k, v) in &next {
                broker_config::validate_dynamic(k, Some(v))?;
            }
            // The result must still parse as a whole broker configuration.
            broker
                .config_sources
                .with_overrides(&next)
                .and_then(|s| s.build())
                .map_err(|e| (ResponseError::InvalidConfig, format!("{e:#}")))?;
            if !validate_only {
                broker.set_broker_configs(name, next)?;
            }
            Ok(())
        }
        other => Err((
            ResponseError::InvalidRequest,
            format!("Config resource type {other} is not supported."),
        )),
    }
}

pub async fn alter(
    broker: &Arc<Broker>,
    _version: i16,
    request: AlterConfigsRequest,
) -> AlterConfigsResponse {
    use kafka_protocol::messages::alter_configs_response::AlterConfigsResourceResponse;
    let b = broker.clone();
    let results = super::blocking(move || {
        request
            .resources
            .into_iter()
            .take(RESOURCES_MAX)
            .map(|r| {
                let ops = r
                    .configs
                    .iter()
                    .map(|c| {
                        (
                            c.name.to_string(),
                            OP_SET,
                            c.value.as_ref().map(|v| v.to_string()),
                        )
                    })
                    .collect();
                let outcome = alter_resource(
                    &b,
                    r.resource_type,
                    &r.resource_name,
                    false,
                    ops,
                    request.validate_only,
                );
                let mut out = AlterConfigsResourceResponse::default();
                out.resource_type = r.resource_type;
                out.resource_name = r.resource_name;
                // Kafka sends null on success; some clients read "" as an error.
                out.error_message = None;
                if let Err((code, message)) = outcome {
                    out.error_code = code.code();
                    out.error_message = Some(text(message));
                }
                out
            })
            .collect::<Vec<_>>()
    })
    .await;
    let mut response = AlterConfigsResponse::default();
    match results {
        Ok(r) => response.responses = r,
        Err((_, message)) => tracing::error!(%message, "alter configs failed"),
    }
    response
}

pub async fn incremental_alter(
    broker: &Arc<Broker>,
    _version: i16,
    request: IncrementalAlterConfigsRequest,
) -> IncrementalAlterConfigsResponse {
    use kafka_protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse;
    let b = broker.clone();
    let results = super::blocking(move || {
        request
            .resources
            .into_iter()
            .take(RESOURCES_MAX)
            .map(|r| {
                let ops = r
                    .configs
                    .iter()
                    .map(|c| {
                        (
                            c.name.to_string(),
                            c.config_operation,
                            c.value.as_ref().map(|v| v.to_string()),
                        )
                    })
                    .collect();
                let outcome = alter_resource(
                    &b,
                    r.resource_type,
                    &r.resource_name,
                    true,
                    ops,
                    request.validate_only,
                );
                let mut out = AlterConfigsResourceResponse::default();
                out.resource_type = r.resource_type;
                out.resource_name = r.resource_name;
                out.error_message = None;
                if let Err((code, message)) = outcome {
                    out.error_code = code.code();
                    out.error_message = Some(text(message));
                }
                out
            })
            .collect::<Vec<_>>()
    })
    .await;
    let mut response = IncrementalAlterConfigsResponse::default();
    match results {
        Ok(r) => response.responses = r,
        Err((_, message)) => tracing::error!(%message, "incremental alter configs failed"),
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic_ops(
        current: &BTreeMap<String, String>,
        ops: &[Op],
    ) -> Result<BTreeMap<String, String>, KafkaError> {
        apply_ops(
            current,
            ops,
            TopicConfigs::is_known,
            TopicConfigs::is_list,
            |k| (k == "cleanup.policy").then(|| "delete".to_string()),
        )
    }

    #[test]
    fn append_and_subtract_start_from_the_effective_value() {
        let next = topic_ops(
            &BTreeMap::new(),
            &[("cleanup.policy".into(), OP_APPEND, Some("compact".into()))],
        )
        .expect("valid");
        assert_eq!(
            next.get("cleanup.policy").map(String::as_str),
            Some("delete,compact")
        );
        let next = topic_ops(
            &next,
            &[("cleanup.policy".into(), OP_SUBTRACT, Some("delete".into()))],
        )
        .expect("valid");
        assert_eq!(
            next.get("cleanup.policy").map(String::as_str),
            Some("compact")
        );
    }

    #[test]
    fn set_and_delete() {
        let mut current = BTreeMap::new();
        current.insert("retention.ms".to_string(), "1000".to_string());
        let next = topic_ops(
            &current,
            &[
                ("retention.ms".into(), OP_DELETE, None),
                ("segment.bytes".into(), OP_SET, Some("1048576".into())),
            ],
        )
        .expect("valid ops");
        assert!(!next.contains_key("retention.ms"));
        assert_eq!(
            next.get("segment.bytes").map(String::as_str),
            Some("1048576")
        );
    }

    #[test]
    fn bad_requests_get_kafkas_errors() {
        let current = BTreeMap::new();
        let code = |ops: &[Op]| topic_ops(&current, ops).map_err(|e| e.0);
        assert_eq!(
            code(&[("retention.ms".into(), OP_APPEND, Some("5".into()))]),
            Err(ResponseError::InvalidConfig)
        );
        assert_eq!(
            code(&[("no.such.key".into(), OP_SET, Some("5".into()))]),
            Err(ResponseError::InvalidConfig)
        );
        assert_eq!(
            code(&[
                ("retention.ms".into(), OP_SET, Some("5".into())),
                ("retention.ms".into(), OP_DELETE, None)
            ]),
            Err(ResponseError::InvalidRequest)
        );
        assert_eq!(
            code(&[("retention.ms".into(), 9, Some("5".into()))]),
            Err(ResponseError::InvalidRequest)
        );
    }
}
