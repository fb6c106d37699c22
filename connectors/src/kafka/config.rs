//! Kafka source and dead-letter configs, and the producers' compression codec.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use std::time::Duration;

use engine::Error;

use super::offsets::KafkaOffsets;
use super::security::{self, KafkaSecurityConfig};
use serde::Deserialize;

use crate::common::config::{self, Problem, millis, positive_millis};

/// Where a partition starts when the group has no committed offset for it (the first start).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartingOffsets {
    /// The oldest message still kept.
    Earliest,
    /// Only messages produced after the start.
    Latest,
    /// Per partition, as Spark's `startingOffsets` JSON (`{"topic":{"0":23,"1":-2}}`, where -2
    /// means earliest and -1 latest). As in Spark, the JSON names every partition the topics have
    /// at the first start, and only those: a topic not subscribed or missing is a config problem
    /// ([`KafkaSourceConfig::check`]), a partition the broker does not have or one left out an
    /// error at start ([`StartingOffsets::mismatch`]).
    Specific(KafkaOffsets),
}

/// Spark's offset for "the earliest kept offset" in `startingOffsets` JSON.
pub const EARLIEST_OFFSET: i64 = -2;
/// Spark's offset for "the end of the partition" in `startingOffsets` JSON.
pub const LATEST_OFFSET: i64 = -1;

impl StartingOffsets {
    /// Why specific offsets do not fit the partitions the topics have, if they do not: a named
    /// partition the broker does not have (always: partitions are never removed, so it is a typo),
    /// or, on the query's `first_start`, a partition left out. Spark refuses the latter too ("you
    /// must specify all TopicPartitions"), rather than guess where it should start; after the
    /// first start, partitions added since are expected to be missing (they start at earliest).
    /// `None` for `earliest`/`latest`.
    pub fn mismatch(
        &self,
        partitions: &BTreeSet<(String, i32)>,
        first_start: bool,
    ) -> Option<String> {
        let Self::Specific(offsets) = self else {
            return None;
        };
        let unknown: Vec<String> = offsets
            .iter()
            .filter(|(t, p, _)| !partitions.contains(&((*t).to_owned(), *p)))
            .map(|(t, p, _)| format!("{t}/{p}"))
            .collect();
        if !unknown.is_empty() {
            let existing: Vec<String> =
                partitions.iter().map(|(t, p)| format!("{t}/{p}")).collect();
            return Some(format!(
                "starting_offsets names partitions the broker does not have: {}; the topics have {}",
                unknown.join(", "),
                existing.join(", ")
            ));
        }
        let missing: Vec<String> = partitions
            .iter()
            .filter(|(t, p)| offsets.get(t, *p).is_none())
            .map(|(t, p)| format!("{t}/{p}"))
            .collect();
        (first_start && !missing.is_empty()).then(|| {
            format!(
                "starting_offsets must name every partition of the topics, but leaves out {}; use {EARLIEST_OFFSET} for earliest or {LATEST_OFFSET} for latest",
                missing.join(", ")
            )
        })
    }

    /// The config problems of specific offsets against the subscribed `topics`, checkable without
    /// a broker: a topic not subscribed, a subscribed topic left out, an offset below -2.
    fn problems(&self, topics: &[String]) -> Vec<String> {
        let Self::Specific(offsets) = self else {
            return Vec::new();
        };
        let mut problems = Vec::new();
        for topic in offsets.0.keys() {
            if !topics.contains(topic) {
                problems.push(format!(
                    "names topic {topic:?}, which is not in topics ({})",
                    topics.join(", ")
                ));
            }
        }
        for topic in topics {
            if !offsets.0.contains_key(topic) {
                problems.push(format!(
                    "leaves out topic {topic:?}: name each of its partitions, with {EARLIEST_OFFSET} for earliest or {LATEST_OFFSET} for latest"
                ));
            }
        }
        for (topic, partition, offset) in offsets.iter() {
            if offset < EARLIEST_OFFSET {
                problems.push(format!(
                    "{topic}/{partition}: offset {offset} is not an offset, {EARLIEST_OFFSET} (earliest) or {LATEST_OFFSET} (latest)"
                ));
            }
        }
        problems
    }
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
        json => serde_json::from_str::<KafkaOffsets>(json).map(StartingOffsets::Specific).map_err(|e| {
            format!("starting_offsets must be earliest, latest or JSON such as {{\"topic\":{{\"0\":23}}}}: {e}")
        }),
    }
}

/// Default group session timeout: short enough that a killed instance's partitions move on
/// quickly, above the broker's 6 s minimum.
const DEFAULT_SESSION_TIMEOUT: Duration = Duration::from_secs(10);

/// Default limit between polls before the group drops this member: long, because a batch waits
/// for its sink (e.g. while Cassandra is down) before the next poll.
const DEFAULT_MAX_POLL_INTERVAL: Duration = Duration::from_secs(900);

/// Default interval between the group commits of a running query. Every batch's commit is an
/// OffsetCommit request the broker appends to `__consumer_offsets`: at a 10 ms trigger that was
/// about 100 a second, the broker's largest cost of a live run (see bench/results).
const DEFAULT_COMMIT_INTERVAL: Duration = Duration::from_secs(1);

/// `[source] type = "kafka"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaSourceConfig {
    /// `host:port,…`; default the `KAFKA_BOOTSTRAP` environment variable, else `127.0.0.1:9092`.
    pub brokers: Option<String>,
    /// Topics to read (at least one).
    pub topics: Vec<String>,
    /// The consumer group. Instances sharing it share the topics' partitions.
    pub group_id: String,
    /// Where a first start begins: `earliest`, `latest` (default) or per-partition JSON naming
    /// every partition of every topic in `topics` and nothing else (as Spark requires). Once the
    /// group has committed offsets, those win.
    pub starting_offsets: StartingOffsets,
    /// Stop with an error when committed offsets were already deleted by retention (default
    /// true); when false, log it and continue from the earliest available offset.
    pub fail_on_data_loss: bool,
    /// The group session timeout: milliseconds or text such as `"10s"` (default 10 s).
    #[serde(rename = "session_timeout_ms", deserialize_with = "positive_millis")]
    pub session_timeout: Duration,
    /// The longest time between polls before the group drops this member: milliseconds or text
    /// such as `"15m"` (default 15 min).
    #[serde(rename = "max_poll_interval_ms", deserialize_with = "positive_millis")]
    pub max_poll_interval: Duration,
    /// How often the processed offsets are committed to the group while the query runs:
    /// milliseconds or text such as `"1s"` (default 1 s); 0 commits after every batch. The
    /// checkpoint, not the group, is where a restart resumes, so this only bounds how far the
    /// group's offsets (its lag in Kafka's tools) trail the query. A partition this instance gives
    /// up in a rebalance has its processed offsets committed before it goes, and `close` commits
    /// the rest; only after a crash does another instance of the group re-read up to this much of
    /// the partitions it takes over, which the sinks' idempotent writes absorb.
    #[serde(rename = "commit_interval_ms", deserialize_with = "millis")]
    pub commit_interval: Duration,
    /// Extra librdkafka properties (never secrets: those come from `security`).
    pub properties: BTreeMap<String, String>,
    /// TLS and SASL login (`[source.security]`, see [`KafkaSecurityConfig`]). Default: none
    /// (plain TCP).
    pub security: Option<KafkaSecurityConfig>,
}

impl Default for KafkaSourceConfig {
    /// No topics and no group (which [`KafkaSourceConfig::check`] reports), every other default.
    fn default() -> Self {
        Self {
            brokers: None,
            topics: Vec::new(),
            group_id: String::new(),
            starting_offsets: StartingOffsets::Latest,
            fail_on_data_loss: true,
            session_timeout: DEFAULT_SESSION_TIMEOUT,
            max_poll_interval: DEFAULT_MAX_POLL_INTERVAL,
            commit_interval: DEFAULT_COMMIT_INTERVAL,
            properties: BTreeMap::new(),
            security: None,
        }
    }
}

impl KafkaSourceConfig {
    /// Every problem serde cannot see; keys are relative to the section.
    pub fn check(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        if self.topics.is_empty() || self.topics.iter().any(|t| t.trim().is_empty()) {
            problems.push(Problem::new(
                "topics",
                "list at least one topic, none empty",
            ));
        }
        if self.group_id.trim().is_empty() {
            problems.push(Problem::new("group_id", "must not be empty"));
        }
        for message in self.starting_offsets.problems(&self.topics) {
            problems.push(Problem::new("starting_offsets", message));
        }
        for key in ["enable.auto.commit", "group.id", "bootstrap.servers"] {
            if self.properties.contains_key(key) {
                problems.push(Problem::new(
                    format!("properties.{key}"),
                    "is set by coinstream itself",
                ));
            }
        }
        problems.extend(security::problems(self.security.as_ref(), &self.properties));
        problems
    }

    /// [`KafkaSourceConfig::check`] as one error naming the `source` section.
    pub fn validate(&self) -> Result<(), Error> {
        Problem::into_result("source", self.check())
    }

    /// The brokers in use.
    pub fn brokers(&self) -> String {
        self.brokers.clone().unwrap_or_else(config::kafka_bootstrap)
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
    /// Refuses a codec set through the `properties` of config section `section`: the codec has
    /// its own key, `<section>.compression`. The problem's key is relative to the section.
    pub fn refuse_in_properties(
        section: &str,
        properties: &BTreeMap<String, String>,
    ) -> Option<Problem> {
        COMPRESSION_PROPERTIES
            .into_iter()
            .find(|key| properties.contains_key(*key))
            .map(|key| {
                Problem::new(
                    format!("properties.{key}"),
                    format!("set {section}.compression instead"),
                )
            })
    }
}

impl<'de> Deserialize<'de> for Compression {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
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
    /// The codec letters are compressed with: `none` (default), `gzip`, `snappy`, `lz4` or `zstd`.
    #[serde(default)]
    pub compression: Compression,
    /// Extra librdkafka producer properties (not the compression, which is `compression`, nor
    /// secrets, which come from `security`).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// TLS and SASL login (`[dead_letter.security]`, see [`KafkaSecurityConfig`]). Default:
    /// none (plain TCP).
    #[serde(default)]
    pub security: Option<KafkaSecurityConfig>,
}

impl KafkaDeadLetterConfig {
    /// Every problem serde cannot see; keys are relative to the section.
    pub fn check(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        if self.topic.trim().is_empty() {
            problems.push(Problem::new("topic", "must not be empty"));
        }
        problems.extend(Compression::refuse_in_properties(
            "dead_letter",
            &self.properties,
        ));
        problems.extend(security::problems(self.security.as_ref(), &self.properties));
        problems
    }

    /// [`KafkaDeadLetterConfig::check`] as one error naming the `dead_letter` section.
    pub fn validate(&self) -> Result<(), Error> {
        Problem::into_result("dead_letter", self.check())
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
    fn specific_offsets_must_name_exactly_the_subscribed_topics() {
        let parse = |topics: &str, offsets: &str| {
            let text =
                format!("topics = {topics}\ngroup_id = \"g\"\nstarting_offsets = '{offsets}'");
            let c =
                config::from_toml::<KafkaSourceConfig>("source", toml::from_str(&text).unwrap())
                    .unwrap();
            c.check()
                .iter()
                .map(Problem::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        };
        // The user's report: a topic that is not subscribed silently started at the end.
        assert_eq!(
            parse(r#"["trades"]"#, r#"{"other":{"0":1}}"#),
            "starting_offsets: names topic \"other\", which is not in topics (trades)\n\
             starting_offsets: leaves out topic \"trades\": name each of its partitions, with -2 for earliest or -1 for latest"
        );
        assert_eq!(
            parse(r#"["a", "b"]"#, r#"{"a":{"0":-2,"1":-3}}"#),
            "starting_offsets: leaves out topic \"b\": name each of its partitions, with -2 for earliest or -1 for latest\n\
             starting_offsets: a/1: offset -3 is not an offset, -2 (earliest) or -1 (latest)"
        );
        assert_eq!(parse(r#"["a", "b"]"#, r#"{"a":{"0":5},"b":{"0":-1}}"#), "");
    }

    #[test]
    fn specific_offsets_must_fit_the_partitions_the_broker_has() {
        let offsets = parse_starting_offsets(r#"{"t":{"0":3,"5":3}}"#).unwrap();
        let three: BTreeSet<(String, i32)> = (0..3).map(|p| ("t".to_owned(), p)).collect();
        let err = offsets.mismatch(&three, false).unwrap();
        assert_eq!(
            err,
            "starting_offsets names partitions the broker does not have: t/5; the topics have t/0, t/1, t/2"
        );
        let offsets = parse_starting_offsets(r#"{"t":{"0":3,"2":-1}}"#).unwrap();
        assert_eq!(
            offsets.mismatch(&three, true).unwrap(),
            "starting_offsets must name every partition of the topics, but leaves out t/1; use -2 for earliest or -1 for latest"
        );
        // After the first start the committed offsets win, and partitions added since are not in
        // the JSON.
        assert_eq!(offsets.mismatch(&three, false), None);
        let all = parse_starting_offsets(r#"{"t":{"0":3,"1":-2,"2":-1}}"#).unwrap();
        assert_eq!(all.mismatch(&three, true), None);
        assert_eq!(StartingOffsets::Latest.mismatch(&three, true), None);
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
            let table: toml::Value = toml::from_str(&format!("topic = \"dl\"\n{extra}")).unwrap();
            config::from_toml::<KafkaDeadLetterConfig>("dead_letter", table)
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
            config.check(),
            [Problem::new(
                "properties.compression.type",
                "set dead_letter.compression instead"
            )]
        );
    }

    #[test]
    fn source_reports_every_problem_and_reads_durations() {
        let parse = |text: &str| {
            config::from_toml::<KafkaSourceConfig>("source", toml::from_str(text).unwrap())
        };
        let c = parse("topics = [\"t\"]\ngroup_id = \"g\"").unwrap();
        assert!(c.check().is_empty());
        assert_eq!(c.session_timeout, DEFAULT_SESSION_TIMEOUT);
        assert_eq!(c.starting_offsets, StartingOffsets::Latest);
        assert_eq!(c.commit_interval, DEFAULT_COMMIT_INTERVAL);
        let c = parse("topics = [\"t\"]\ngroup_id = \"g\"\nsession_timeout_ms = 7000\nmax_poll_interval_ms = \"5m\"\ncommit_interval_ms = 0").unwrap();
        assert_eq!(
            (c.session_timeout, c.max_poll_interval, c.commit_interval),
            (
                Duration::from_secs(7),
                Duration::from_secs(300),
                Duration::ZERO
            )
        );
        let c = parse("topics = [\"\"]\n[properties]\n\"group.id\" = \"x\"").unwrap();
        let problems: Vec<String> = c.check().iter().map(Problem::to_string).collect();
        assert_eq!(
            problems,
            [
                "topics: list at least one topic, none empty",
                "group_id: must not be empty",
                "properties.group.id: is set by coinstream itself"
            ]
        );
        assert_eq!(
            parse("session_timeout_ms = 0").unwrap_err().to_string(),
            "source.session_timeout_ms: must be at least 1"
        );
    }
}
