//! DescribeConfigs, AlterConfigs and IncrementalAlterConfigs.
//!
//! Topic configs are writable; broker configs are read-only (they come from
//! the broker's startup configuration), and an attempt to change one is
//! refused with Kafka's error, never accepted and ignored.

use std::collections::BTreeMap;
use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult,
};
use kafka_protocol::messages::{
    AlterConfigsRequest, AlterConfigsResponse, DescribeConfigsRequest, DescribeConfigsResponse,
    IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse,
};
use kafka_protocol::protocol::StrBytes;

use crate::broker::{Broker, KafkaError};
use crate::cluster::TopicConfigs;

/// Kafka's ConfigResource types.
const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;
/// Kafka's config sources.
const SOURCE_TOPIC: i8 = 1;
const SOURCE_STATIC_BROKER: i8 = 4;
const SOURCE_DEFAULT: i8 = 5;

pub fn describe(
    broker: &Broker,
    version: i16,
    request: DescribeConfigsRequest,
) -> DescribeConfigsResponse {
    let mut response = DescribeConfigsResponse::default();
    response.results = request
        .resources
        .into_iter()
        .map(|resource| {
            let mut result = DescribeConfigsResult::default();
            result.resource_type = resource.resource_type;
            result.resource_name = resource.resource_name.clone();
            let wanted = |name: &str| {
                resource
                    .configuration_keys
                    .as_ref()
                    .is_none_or(|keys| keys.iter().any(|k| k.as_str() == name))
            };
            let entries: Result<Vec<(String, String, bool, i8)>, KafkaError> =
                match resource.resource_type {
                    RESOURCE_TOPIC => match broker.metadata.topic(&resource.resource_name) {
                        None => Err((
                            ResponseError::UnknownTopicOrPartition,
                            format!(
                                "Topic '{}' does not exist.",
                                resource.resource_name.as_str()
                            ),
                        )),
                        Some(topic) => Ok(TopicConfigs::describe(&broker.config, &topic.configs)
                            .into_iter()
                            .map(|(name, value, own)| {
                                (
                                    name.to_string(),
                                    value,
                                    false,
                                    if own { SOURCE_TOPIC } else { SOURCE_DEFAULT },
                                )
                            })
                            .collect()),
                    },
                    RESOURCE_BROKER => {
                        let name = resource.resource_name.as_str();
                        if name.is_empty() || name == broker.config.node_id.to_string() {
                            Ok(broker
                                .config_sources
                                .effective()
                                .filter(|(_, v)| !v.is_empty())
                                .map(|(k, v)| {
                                    (k.to_string(), v.to_string(), true, SOURCE_STATIC_BROKER)
                                })
                                .collect())
                        } else {
                            Err((
                                ResponseError::InvalidRequest,
                                format!("Unknown broker {name}."),
                            ))
                        }
                    }
                    other => Err((
                        ResponseError::InvalidRequest,
                        format!("Config resource type {other} is not supported."),
                    )),
                };
            match entries {
                Ok(entries) => {
                    result.configs = entries
                        .into_iter()
                        .filter(|(name, ..)| wanted(name))
                        .map(|(name, value, read_only, source)| {
                            let mut c = DescribeConfigsResourceResult::default();
                            c.name = StrBytes::from_string(name);
                            c.value = Some(StrBytes::from_string(value));
                            c.read_only = read_only;
                            c.config_source = source;
                            c
                        })
                        .collect();
                }
                Err((code, text)) => {
                    result.error_code = code.code();
                    result.error_message = Some(StrBytes::from_string(text));
                }
            }
            let _ = version;
            result
        })
        .collect();
    response
}

/// The change one AlterConfigs resource asks for, applied to `current`.
fn apply_ops(
    current: &BTreeMap<String, String>,
    ops: &[(String, i8, Option<String>)],
) -> Result<BTreeMap<String, String>, KafkaError> {
    let mut next = current.clone();
    for (name, op, value) in ops {
        match op {
            0 => {
                let v = value
                    .clone()
                    .ok_or((ResponseError::InvalidConfig, format!("Null value for {name}")))?;
                next.insert(name.clone(), v);
            }
            1 => {
                if !TopicConfigs::is_known(name) {
                    return Err((ResponseError::InvalidConfig, format!("Unknown topic config name: {name}")));
                }
                next.remove(name);
            }
            2 | 3 if name == "cleanup.policy" => {
                let v = value.clone().unwrap_or_default();
                let mut items: Vec<String> = next
                    .get(name)
                    .map(|s| s.split(',').map(|x| x.trim().to_string()).filter(|x| !x.is_empty()).collect())
                    .unwrap_or_default();
                for item in v.split(',').map(str::trim).filter(|x| !x.is_empty()) {
                    if *op == 2 {
                        if !items.iter().any(|i| i == item) {
                            items.push(item.to_string());
                        }
                    } else {
                        items.retain(|i| i != item);
                    }
                }
                if items.is_empty() {
                    next.remove(name);
                } else {
                    next.insert(name.clone(), items.join(","));
                }
            }
            2 | 3 => {
                return Err((
                    ResponseError::InvalidConfig,
                    format!("Config value append/subtract is not allowed for config key {name}, which is not a list"),
                ))
            }
            other => return Err((ResponseError::InvalidRequest, format!("Unknown config operation {other}"))),
        }
    }
    TopicConfigs::validate_all(&next)?;
    Ok(next)
}

/// Applies (or validates) one resource's change. Blocking.
fn alter_resource(
    broker: &Broker,
    resource_type: i8,
    name: &str,
    incremental: bool,
    ops: Vec<(String, i8, Option<String>)>,
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
            let next = apply_ops(&base, &ops)?;
            if !validate_only {
                broker.set_topic_configs(name, next)?;
            }
            Ok(())
        }
        RESOURCE_BROKER => Err((
            ResponseError::InvalidRequest,
            "Broker configs are read-only in Fjord; set them at startup.".into(),
        )),
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
            .map(|r| {
                let ops = r
                    .configs
                    .iter()
                    .map(|c| {
                        (
                            c.name.to_string(),
                            0i8,
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
                if let Err((code, text)) = outcome {
                    out.error_code = code.code();
                    out.error_message = Some(StrBytes::from_string(text));
                }
                out
            })
            .collect::<Vec<_>>()
    })
    .await;
    let mut response = AlterConfigsResponse::default();
    if let Ok(r) = results {
        response.responses = r;
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
                if let Err((code, text)) = outcome {
                    out.error_code = code.code();
                    out.error_message = Some(StrBytes::from_string(text));
                }
                out
            })
            .collect::<Vec<_>>()
    })
    .await;
    let mut response = IncrementalAlterConfigsResponse::default();
    if let Ok(r) = results {
        response.responses = r;
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incremental_ops_set_delete_append_subtract() {
        let mut current = BTreeMap::new();
        current.insert("retention.ms".to_string(), "1000".to_string());
        let next = apply_ops(
            &current,
            &[
                ("retention.ms".into(), 1, None),
                ("segment.bytes".into(), 0, Some("1048576".into())),
                ("cleanup.policy".into(), 2, Some("compact".into())),
                ("cleanup.policy".into(), 2, Some("delete".into())),
                ("cleanup.policy".into(), 3, Some("compact".into())),
            ],
        )
        .expect("valid ops");
        assert!(!next.contains_key("retention.ms"));
        assert_eq!(
            next.get("segment.bytes").map(String::as_str),
            Some("1048576")
        );
        assert_eq!(
            next.get("cleanup.policy").map(String::as_str),
            Some("delete")
        );
    }

    #[test]
    fn append_to_a_non_list_and_bad_values_are_invalid_config() {
        let current = BTreeMap::new();
        assert_eq!(
            apply_ops(&current, &[("retention.ms".into(), 2, Some("5".into()))]).map_err(|e| e.0),
            Err(ResponseError::InvalidConfig)
        );
        assert_eq!(
            apply_ops(
                &current,
                &[("retention.ms".into(), 0, Some("never".into()))]
            )
            .map_err(|e| e.0),
            Err(ResponseError::InvalidConfig)
        );
    }
}
