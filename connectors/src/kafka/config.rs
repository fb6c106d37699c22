//! Kafka source and dead-letter configs, and the producers' compression codec.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

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

/// The codec a producer compresses record batches with (librdkafka's `compression.type`). The
/// broker's `max.message.bytes` limit applies to the compressed batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// Uncompressed (the dead-letter output's default).
    #[default]
    None,
    /// gzip.
    Gzip,
    /// Snappy.
    Snappy,
    /// LZ4 (the ingesters' default).
    Lz4,
    /// Zstandard (brokers since Kafka 2.1).
    Zstd,
}

/// librdkafka's producer property the codec goes into (`compression.codec` is its alias).
pub const COMPRESSION_PROPERTIES: [&str; 2] = ["compression.type", "compression.codec"];

impl Compression {
    /// Every codec, in the order the error message lists them.
    pub const ALL: [Compression; 5] = [
        Compression::None,
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ];

    /// The name in config files and flags, which is also librdkafka's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }

    /// The librdkafka property that selects this codec.
    pub fn property(self) -> (&'static str, &'static str) {
        (COMPRESSION_PROPERTIES[0], self.as_str())
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Compression {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|c| c.as_str() == text)
            .ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|c| c.as_str()).collect();
                format!("must be one of {}, not {text:?}", names.join(", "))
            })
    }
}

impl Compression {
    /// Reads the value of the config key `key` (e.g. `sink.compression`), naming the key in the
    /// error: the config enums are internally tagged, so the TOML error cannot point at the line.
    pub fn deserialize_key<'de, D: serde::Deserializer<'de>>(
        d: D,
        key: &str,
    ) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse()
            .map_err(|e| serde::de::Error::custom(format!("{key}: {e}")))
    }

    /// Refuses a codec set through the `properties` of config section `section`: the codec has
    /// its own key, `<section>.compression`.
    pub fn refuse_in_properties(
        section: &str,
        properties: &BTreeMap<String, String>,
    ) -> Result<(), Error> {
        match COMPRESSION_PROPERTIES
            .into_iter()
            .find(|key| properties.contains_key(*key))
        {
            Some(key) => Err(Error::config(
                format!("{section}.properties.{key}"),
                format!("set {section}.compression instead"),
            )),
            None => Ok(()),
        }
    }
}

/// `dead_letter.compression`.
fn dead_letter_compression<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Compression, D::Error> {
    Compression::deserialize_key(d, "dead_letter.compression")
}

/// `[dead_letter] type = "kafka"`: dead letters as JSON messages on a topic.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaDeadLetterConfig {
    /// `host:port,…`; default as for the source.
    pub brokers: Option<String>,
    /// The topic (created by the broker on first write if it allows that).
    pub topic: String,
    /// The codec letters are compressed with: `none` (default), `gzip`, `snappy`, `lz4` or `zstd`.
    #[serde(default, deserialize_with = "dead_letter_compression")]
    pub compression: Compression,
    /// Extra librdkafka producer properties (not the compression, which is `compression`).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

impl KafkaDeadLetterConfig {
    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), Error> {
        if self.topic.trim().is_empty() {
            return Err(Error::config("dead_letter.topic", "must not be empty"));
        }
        Compression::refuse_in_properties("dead_letter", &self.properties)
    }
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

    #[test]
    fn compression_names_are_librdkafkas() {
        for c in Compression::ALL {
            assert_eq!(c.as_str().parse::<Compression>(), Ok(c));
            assert_eq!(c.property(), ("compression.type", c.as_str()));
        }
        assert_eq!(
            "brotli".parse::<Compression>().unwrap_err(),
            "must be one of none, gzip, snappy, lz4, zstd, not \"brotli\""
        );
    }

    #[test]
    fn dead_letter_compression_defaults_to_none_and_names_its_key_when_wrong() {
        let parse = |extra: &str| {
            toml::from_str::<KafkaDeadLetterConfig>(&format!("topic = \"dl\"\n{extra}"))
        };
        assert_eq!(parse("").unwrap().compression, Compression::None);
        assert_eq!(
            parse("compression = \"zstd\"").unwrap().compression,
            Compression::Zstd
        );
        let err = parse("compression = \"brotli\"").unwrap_err().to_string();
        assert!(
            err.contains("dead_letter.compression: must be one of none, gzip, snappy, lz4, zstd"),
            "{err}"
        );
        let config = parse("[properties]\n\"compression.type\" = \"gzip\"").unwrap();
        assert_eq!(
            config.validate().unwrap_err().to_string(),
            "config: dead_letter.properties.compression.type: set dead_letter.compression instead"
        );
    }
}
