//! Broker properties as DescribeConfigs sees them: four layers, highest first
//! — dynamic per-broker (AlterConfigs on BROKER `<node.id>`), dynamic
//! cluster default (BROKER `""`), static (file, environment, flags) and the
//! built-in default — and the rules for changing them at runtime.
//!
//! The layers are kept apart rather than merged because Kafka reports where
//! each value came from (config_source and the synonym list), and because a
//! topic takes its default from whichever layer holds its broker synonym.

use std::collections::BTreeMap;

use kafka_protocol::error::ResponseError;

use crate::broker::KafkaError;
use crate::config::{self, check_value, ConfigSources, ConfigType, UpdateMode};

use super::topic_config;

/// Kafka's DescribeConfigs config sources.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigSource {
    Topic = 1,
    DynamicBroker = 2,
    DynamicDefaultBroker = 3,
    StaticBroker = 4,
    Default = 5,
}

impl ConfigSource {
    pub fn id(self) -> i8 {
        self as i8
    }
}

/// One synonym of a config: a property that sets the same thing, where it is set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Synonym {
    pub name: String,
    pub value: Option<String>,
    pub source: ConfigSource,
}

/// One described config, ready for DescribeConfigs or CreateTopics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigEntry {
    pub name: String,
    pub value: Option<String>,
    pub source: ConfigSource,
    pub read_only: bool,
    pub config_type: ConfigType,
    pub doc: &'static str,
    /// Kafka's order: topic, then per layer (dynamic broker, dynamic default,
    /// static, default) each synonym in chain order.
    pub synonyms: Vec<Synonym>,
}

/// Resource name of the cluster-wide dynamic default in AlterConfigs.
pub const CLUSTER_DEFAULT: &str = "";

/// The layered broker properties of this node.
#[derive(Clone, Debug, Default)]
pub struct BrokerLayers {
    dynamic_broker: BTreeMap<String, String>,
    dynamic_default: BTreeMap<String, String>,
    static_explicit: BTreeMap<String, String>,
    /// Defaults computed from other settings (`ConfigSources::derived_defaults`).
    derived_defaults: BTreeMap<String, String>,
}

impl BrokerLayers {
    /// Layers the stored dynamic configs over the static ones. A stored value
    /// today's rules reject (written by an older Fjord, or by hand) is left
    /// out — the broker must always start; [`rejected`] names them so that
    /// startup can warn once.
    pub fn new(
        sources: &ConfigSources,
        dynamic_default: &BTreeMap<String, String>,
        dynamic_broker: &BTreeMap<String, String>,
    ) -> BrokerLayers {
        let keep = |map: &BTreeMap<String, String>| {
            map.iter()
                .filter(|(k, v)| validate_dynamic(k, Some(v)).is_ok())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect::<BTreeMap<_, _>>()
        };
        BrokerLayers {
            dynamic_broker: keep(dynamic_broker),
            dynamic_default: keep(dynamic_default),
            static_explicit: sources
                .explicit()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            derived_defaults: sources
                .derived_defaults()
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        }
    }

    /// The value in effect for a property and the layer it comes from.
    pub fn value(&self, key: &str) -> Option<(&str, ConfigSource)> {
        let layers = [
            (
                self.dynamic_broker.get(key).map(String::as_str),
                ConfigSource::DynamicBroker,
            ),
            (
                self.dynamic_default.get(key).map(String::as_str),
                ConfigSource::DynamicDefaultBroker,
            ),
            (
                self.static_explicit.get(key).map(String::as_str),
                ConfigSource::StaticBroker,
            ),
            (
                config::default_value(key)
                    .filter(|v| !v.trim().is_empty())
                    .or_else(|| self.derived_defaults.get(key).map(String::as_str)),
                ConfigSource::Default,
            ),
        ];
        layers
            .into_iter()
            .find_map(|(v, source)| v.filter(|v| !v.trim().is_empty()).map(|v| (v, source)))
    }

    /// Kafka's synonym list for a config whose broker synonyms are `chain`
    /// (most specific first): every layer in turn, each chain entry set in
    /// it; then, as Kafka does, everything before the first entry naming
    /// `chain[0]` is dropped (so `retention.ms` with only the built-in
    /// `log.retention.hours` reports no synonym at all).
    pub fn synonyms(&self, chain: &[&str]) -> Vec<Synonym> {
        let Some(first) = chain.first() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let defaults: BTreeMap<String, String> = chain
            .iter()
            .filter_map(|k| config::default_value(k).map(|v| (k.to_string(), v.to_string())))
            .collect();
        let layers = [
            (&self.dynamic_broker, ConfigSource::DynamicBroker),
            (&self.dynamic_default, ConfigSource::DynamicDefaultBroker),
            (&self.static_explicit, ConfigSource::StaticBroker),
            (&defaults, ConfigSource::Default),
        ];
        for (layer, source) in layers {
            for name in chain {
                if let Some(value) = layer.get(*name).filter(|v| !v.trim().is_empty()) {
                    out.push(Synonym {
                        name: name.to_string(),
                        value: Some(value.clone()),
                        source,
                    });
                }
            }
        }
        match out.iter().position(|s| s.name == *first) {
            Some(at) => out.split_off(at),
            None => Vec::new(),
        }
    }

    /// The dynamic configs stored for this node or for the cluster default.
    pub fn dynamic(&self, cluster_default: bool) -> &BTreeMap<String, String> {
        if cluster_default {
            &self.dynamic_default
        } else {
            &self.dynamic_broker
        }
    }

    /// Every broker property of this node, as DescribeConfigs reports it.
    pub fn describe_broker(&self) -> Vec<ConfigEntry> {
        config::property_names()
            .map(|name| {
                let chain = topic_config::broker_chain(name);
                let synonyms = self.synonyms(&chain);
                let def = config::property(name);
                ConfigEntry {
                    name: name.to_string(),
                    value: self.value(name).map(|(v, _)| v.to_string()),
                    source: synonyms.first().map_or(ConfigSource::Default, |s| s.source),
                    read_only: !is_dynamic(name),
                    config_type: def.map_or(ConfigType::String, |d| d.config_type),
                    doc: def.map_or("", |d| d.doc),
                    synonyms,
                }
            })
            .collect()
    }

    /// The cluster-wide dynamic defaults (DescribeConfigs on BROKER `""`).
    pub fn describe_cluster_default(&self) -> Vec<ConfigEntry> {
        self.dynamic_default
            .iter()
            .map(|(name, value)| {
                let def = config::property(name);
                let synonym = Synonym {
                    name: name.clone(),
                    value: Some(value.clone()),
                    source: ConfigSource::DynamicDefaultBroker,
                };
                ConfigEntry {
                    name: name.clone(),
                    value: Some(value.clone()),
                    source: ConfigSource::DynamicDefaultBroker,
                    read_only: false,
                    config_type: def.map_or(ConfigType::String, |d| d.config_type),
                    doc: def.map_or("", |d| d.doc),
                    synonyms: vec![synonym],
                }
            })
            .collect()
    }
}

/// The stored dynamic configs [`BrokerLayers::new`] leaves out, with why.
pub fn rejected(map: &BTreeMap<String, String>) -> Vec<(String, String, String)> {
    map.iter()
        .filter_map(|(k, v)| {
            validate_dynamic(k, Some(v))
                .err()
                .map(|(_, why)| (k.clone(), v.clone(), why))
        })
        .collect()
}

/// Whether a broker property may be changed by AlterConfigs: Kafka lets it
/// change at runtime, and it is the default of a topic config, so that every
/// open partition picks the new value up.
pub fn is_dynamic(name: &str) -> bool {
    config::property(name).is_some_and(|d| d.update_mode != UpdateMode::ReadOnly)
        && topic_config::is_broker_synonym(name)
}

/// Checks one dynamic broker config change (`None` = delete).
pub fn validate_dynamic(name: &str, value: Option<&str>) -> Result<(), KafkaError> {
    if !is_dynamic(name) {
        return Err(not_dynamic(&[name]));
    }
    let (Some(def), Some(value)) = (config::property(name), value) else {
        return Ok(());
    };
    check_value(name, def.config_type, def.validator, value)
        .map_err(|why| (ResponseError::InvalidConfig, why))
}

/// Kafka's answer to a change of a property that is not dynamic here.
pub fn not_dynamic(names: &[&str]) -> KafkaError {
    // Kafka answers INVALID_REQUEST (InvalidRequestException) for this.
    (
        ResponseError::InvalidRequest,
        format!(
            "Cannot update these configs dynamically: [{}]",
            names.join(", ")
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn synonyms_follow_kafkas_layer_order_and_drop_leading_fallbacks() {
        let sources = ConfigSources::new();
        let layers = BrokerLayers::new(
            &sources,
            &map(&[("log.retention.ms", "123456")]),
            &map(&[("log.retention.ms", "654321")]),
        );
        let chain = [
            "log.retention.ms",
            "log.retention.minutes",
            "log.retention.hours",
        ];
        let names: Vec<(String, ConfigSource)> = layers
            .synonyms(&chain)
            .into_iter()
            .map(|s| (s.name, s.source))
            .collect();
        assert_eq!(
            names,
            vec![
                ("log.retention.ms".into(), ConfigSource::DynamicBroker),
                (
                    "log.retention.ms".into(),
                    ConfigSource::DynamicDefaultBroker
                ),
                ("log.retention.hours".into(), ConfigSource::Default),
            ]
        );
        // Only the built-in hours: Kafka reports no synonym for retention.ms.
        let plain = BrokerLayers::new(&sources, &BTreeMap::new(), &BTreeMap::new());
        assert!(plain.synonyms(&chain).is_empty());
    }

    #[test]
    fn invalid_stored_dynamic_values_are_ignored_not_fatal() {
        let layers = BrokerLayers::new(
            &ConfigSources::new(),
            &map(&[("log.segment.bytes", "20"), ("num.io.threads", "3")]),
            &BTreeMap::new(),
        );
        assert_eq!(
            layers.value("log.segment.bytes"),
            Some(("1073741824", ConfigSource::Default))
        );
        assert!(layers.dynamic(true).is_empty());
    }

    #[test]
    fn only_topic_default_synonyms_are_dynamic() {
        assert!(is_dynamic("log.retention.ms"));
        assert!(is_dynamic("message.max.bytes"));
        assert!(is_dynamic("compression.zstd.level"));
        assert!(!is_dynamic("log.retention.hours"));
        assert!(!is_dynamic("log.dirs"));
        assert_eq!(
            validate_dynamic("log.retention.hours", Some("5")).map_err(|e| e.0),
            Err(ResponseError::InvalidRequest)
        );
        assert_eq!(
            validate_dynamic("log.segment.bytes", Some("20")).map_err(|e| e.0),
            Err(ResponseError::InvalidConfig)
        );
    }
}
