//! Kafka source and dead-letter configs.

use std::collections::BTreeMap;

use engine::{Error, Offsets};
use serde::Deserialize;

/// Where a partition starts when the group has no committed offset for it (the first start).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartingOffsets {
    /// The oldest message still kept.
    Earliest,
    /// Only messages produced after the start.
    Latest,
    /// Per partition, as Spark's `startingOffsets` JSON (`{"topic":{"0":23,"1":-2}}`, where -2
    /// means earliest and -1 latest); partitions not named start at the latest.
    Specific(Offsets),
}

impl<'de> Deserialize<'de> for StartingOffsets {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        parse_starting_offsets(&text).map_err(serde::de::Error::custom)
    }
}

/// Parses `earliest`, `latest` or Spark's per-partition JSON.
pub fn parse_starting_offsets(text: &str) -> Result<StartingOffsets, String> {
    match text.trim() {
        "earliest" => Ok(StartingOffsets::Earliest),
        "latest" => Ok(StartingOffsets::Latest),
        json => serde_json::from_str::<Offsets>(json).map(StartingOffsets::Specific).map_err(|e| {
            format!("starting_offsets must be earliest, latest or JSON such as {{\"topic\":{{\"0\":23}}}}: {e}")
        }),
    }
}

fn default_starting_offsets() -> StartingOffsets {
    StartingOffsets::Latest
}

fn default_true() -> bool {
    true
}

/// Default group session timeout: short enough that a killed instance's partitions move on
/// quickly, above the broker's 6 s minimum.
fn default_session_timeout_ms() -> u32 {
    10_000
}

/// Default limit between polls before the group drops this member: long, because a batch waits
/// for its sink (e.g. while Cassandra is down) before the next poll.
fn default_max_poll_interval_ms() -> u32 {
    900_000
}

/// `[source] type = "kafka"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSourceConfig {
    /// `host:port,…`; default the `KAFKA_BOOTSTRAP` environment variable, else `127.0.0.1:9092`.
    pub brokers: Option<String>,
    /// Topics to read (at least one).
    pub topics: Vec<String>,
    /// The consumer group. Instances sharing it share the topics' partitions.
    pub group_id: String,
    /// Where a first start begins: `earliest`, `latest` (default) or per-partition JSON. Once the
    /// group has committed offsets, those win.
    #[serde(default = "default_starting_offsets")]
    pub starting_offsets: StartingOffsets,
    /// Stop with an error when committed offsets were already deleted by retention (default
    /// true); when false, log it and continue from the earliest available offset.
    #[serde(default = "default_true")]
    pub fail_on_data_loss: bool,
    /// The group session timeout in ms (default 10000).
    #[serde(default = "default_session_timeout_ms")]
    pub session_timeout_ms: u32,
    /// The longest time between polls, in ms, before the group drops this member (default 900000).
    #[serde(default = "default_max_poll_interval_ms")]
    pub max_poll_interval_ms: u32,
    /// Extra librdkafka properties (e.g. `"security.protocol" = "SSL"`).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

impl KafkaSourceConfig {
    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), Error> {
        if self.topics.is_empty() || self.topics.iter().any(|t| t.trim().is_empty()) {
            return Err(Error::config(
                "source.topics",
                "list at least one topic, none empty",
            ));
        }
        if self.group_id.trim().is_empty() {
            return Err(Error::config("source.group_id", "must not be empty"));
        }
        for key in ["enable.auto.commit", "group.id", "bootstrap.servers"] {
            if self.properties.contains_key(key) {
                return Err(Error::config(
                    format!("source.properties.{key}"),
                    "is set by coinstream itself",
                ));
            }
        }
        Ok(())
    }

    /// The brokers in use.
    pub fn brokers(&self) -> String {
        self.brokers.clone().unwrap_or_else(super::default_brokers)
    }
}

/// `[dead_letter] type = "kafka"`: dead letters as JSON messages on a topic.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaDeadLetterConfig {
    /// `host:port,…`; default as for the source.
    pub brokers: Option<String>,
    /// The topic (created by the broker on first write if it allows that).
    pub topic: String,
    /// Extra librdkafka producer properties.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_starting_offsets() {
        assert_eq!(
            parse_starting_offsets("earliest").unwrap(),
            StartingOffsets::Earliest
        );
        let StartingOffsets::Specific(o) =
            parse_starting_offsets(r#"{"t":{"0":23,"1":-2}}"#).unwrap()
        else {
            panic!()
        };
        assert_eq!((o.get("t", 0), o.get("t", 1)), (Some(23), Some(-2)));
        assert!(
            parse_starting_offsets("newest")
                .unwrap_err()
                .contains("earliest, latest or JSON")
        );
    }
}
