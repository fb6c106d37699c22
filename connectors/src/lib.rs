//! # coinstream's connectors
//!
//! Implementations of the engine's [`engine::Source`], [`engine::Sink`] and
//! [`engine::DeadLetterSink`]: one folder per service. Each connector owns its transport, its
//! envelope handling and its config; none knows another, and none knows SQL or batching policy.
//! Config enums here are tagged by `type`, so a new connector fails to compile until every
//! `match` handles it. Each section is read by `from_toml` and checked by `check`, which returns
//! every problem with its key relative to the section, before anything connects.

pub mod cassandra;
pub mod coinbase;
pub mod common;
pub mod dead_letter;
pub mod delta;
pub mod error;
#[cfg(test)]
mod fuzz;
pub mod gateio;
pub mod generate;
pub mod kafka;
pub mod parquet;
pub mod stdout;

use common::config::{Problem, from_tagged_toml, join_key};
use engine::{DeadLetterSink, Result, Sink, Source};
pub use error::Error;
use serde::Deserialize;

/// `[source]`: where messages come from.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceConfig {
    /// A capture of Coinbase Exchange feed messages (a file of them).
    CoinbaseCapture(coinbase::capture::CoinbaseCaptureConfig),
    /// The former name of `coinbase_capture`: still accepted, with a deprecation warning when the
    /// source is built.
    Replay(coinbase::capture::CoinbaseCaptureConfig),
    /// Generated trades.
    Generate(generate::source::GenerateConfig),
    /// A Kafka consumer group.
    Kafka(kafka::config::KafkaSourceConfig),
    /// Live trades from a Coinbase WebSocket feed.
    Coinbase(coinbase::config::CoinbaseConfig),
    /// Closed Gate.io candles polled over REST.
    Gateio(gateio::config::GateioConfig),
}

/// `[sink]`: where the transform's rows go.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SinkConfig {
    /// The embedded store as a Delta Lake table.
    Delta(delta::DeltaConfig),
    /// The embedded Parquet store.
    Parquet(parquet::ParquetConfig),
    /// Rows of an Apache Cassandra table (boxed: it is much larger than the other variants).
    Cassandra(Box<cassandra::CassandraConfig>),
    /// Printed rows.
    Stdout(stdout::StdoutConfig),
    /// Counted and dropped.
    Null {},
    /// JSON rows on a Kafka topic.
    Kafka(kafka::sink::KafkaSinkConfig),
}

/// `[dead_letter]`: where undecodable messages go.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeadLetterConfig {
    /// JSON-lines files in a folder.
    File(dead_letter::FileDeadLetterConfig),
    /// JSON messages on a Kafka topic.
    Kafka(kafka::config::KafkaDeadLetterConfig),
}

/// `[state]`: where a stateful query keeps each source part's aggregation state for every
/// instance of the query (scale-out over a consumer group). Without it the state is the
/// instance's own, in its checkpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum StateConfig {
    /// A table on the Cassandra cluster of the `[sink]` (which must be `cassandra`), in its
    /// keyspace, with its connection settings.
    Cassandra {
        /// The table, created when missing. Default `coinstream_state`.
        #[serde(default = "default_state_table")]
        table: String,
    },
}

fn default_state_table() -> String {
    cassandra::state::DEFAULT_STATE_TABLE.to_owned()
}

impl StateConfig {
    /// Every problem of `[state]` given the `[sink]` (keys relative to `[state]`).
    pub fn check(&self, sink: &SinkConfig) -> Vec<Problem> {
        match (self, sink) {
            (StateConfig::Cassandra { .. }, SinkConfig::Cassandra(_)) => Vec::new(),
            (StateConfig::Cassandra { .. }, _) => vec![Problem::new(
                "type",
                "a cassandra state store uses the sink's Cassandra cluster and keyspace, so it \
                 needs sink.type = \"cassandra\"",
            )],
        }
    }
}

/// Builds the configured shared state store.
///
/// # Errors
/// [`engine::Error::Config`] when the sink cannot host it.
pub fn build_state(
    config: &StateConfig,
    sink: &SinkConfig,
) -> Result<Box<dyn engine::stateful::SharedState>> {
    match (config, sink) {
        (StateConfig::Cassandra { table }, SinkConfig::Cassandra(c)) => {
            Ok(Box::new(cassandra::state::CassandraState::new(c, table)?))
        }
        (StateConfig::Cassandra { .. }, _) => Err(engine::Error::config(
            "state.type",
            "a cassandra state store needs sink.type = \"cassandra\"",
        )),
    }
}

/// Builds the configured source.
pub fn build_source(config: &SourceConfig) -> Result<Box<dyn Source>> {
    Ok(match config {
        SourceConfig::CoinbaseCapture(c) => {
            Box::new(coinbase::capture::CoinbaseCaptureSource::new(c.clone())?)
        }
        // Warned about where the config is read (`SourceConfig::from_toml`).
        SourceConfig::Replay(c) => {
            Box::new(coinbase::capture::CoinbaseCaptureSource::new(c.clone())?)
        }
        SourceConfig::Generate(c) => Box::new(generate::source::GenerateSource::new(c.clone())?),
        SourceConfig::Kafka(c) => Box::new(kafka::source::KafkaSource::new(c.clone())?),
        SourceConfig::Coinbase(c) => Box::new(coinbase::source::CoinbaseSource::new(c.clone())?),
        SourceConfig::Gateio(c) => Box::new(gateio::source::GateioSource::new(c.clone())?),
    })
}

/// Builds the configured sink for rows of `schema` (the output transform's schema).
pub fn build_sink(
    config: &SinkConfig,
    schema: &arrow::datatypes::SchemaRef,
) -> Result<Box<dyn Sink>> {
    Ok(match config {
        SinkConfig::Delta(c) => {
            if let Some(p) = c.check_columns(schema) {
                return Err(engine::Error::config(join_key("sink", &p.key), p.message));
            }
            Box::new(delta::DeltaSink::new(c.clone(), schema.clone()))
        }
        SinkConfig::Parquet(c) => {
            if let Some(p) = c.check_columns(schema) {
                return Err(engine::Error::config(join_key("sink", &p.key), p.message));
            }
            Box::new(parquet::ParquetSink::new(c.clone()))
        }
        SinkConfig::Cassandra(c) => Box::new(cassandra::CassandraSink::new(
            (**c).clone(),
            schema.clone(),
        )?),
        SinkConfig::Stdout(c) => Box::new(stdout::StdoutSink::new(c.clone())),
        SinkConfig::Null {} => Box::new(stdout::NullSink::default()),
        SinkConfig::Kafka(c) => Box::new(kafka::sink::KafkaSink::new(c.clone(), schema)?),
    })
}

/// Builds the configured dead-letter output.
pub fn build_dead_letter(config: &DeadLetterConfig) -> Result<Box<dyn DeadLetterSink>> {
    Ok(match config {
        DeadLetterConfig::File(c) => Box::new(dead_letter::FileDeadLetterSink::new(c.clone())?),
        DeadLetterConfig::Kafka(c) => {
            Box::new(kafka::dead_letter::KafkaDeadLetterSink::new(c.clone())?)
        }
    })
}

impl SourceConfig {
    /// Reads the `[source]` section; its `type` picks the connector.
    pub fn from_toml(section: toml::Value) -> std::result::Result<Self, Problem> {
        let config = from_tagged_toml("source", section)?;
        // Here rather than where the source is built, so every command that reads the config
        // (`run`, `explain`, `query`, `ingest`) warns, and does so once.
        if let SourceConfig::Replay(_) = config {
            tracing::warn!(
                "[source] type = \"replay\" is deprecated and will be removed; it is now called \"coinbase_capture\"."
            );
        }
        Ok(config)
    }

    /// Every problem serde cannot see (keys relative to `[source]`); reads the files it names.
    pub fn check(&self) -> Vec<Problem> {
        match self {
            SourceConfig::CoinbaseCapture(c) | SourceConfig::Replay(c) => c.check(),
            SourceConfig::Generate(c) => c.check(),
            SourceConfig::Kafka(c) => c.check(),
            SourceConfig::Coinbase(c) => c.settings().err().unwrap_or_default(),
            SourceConfig::Gateio(c) => c.settings().err().unwrap_or_default(),
        }
    }
}

impl SinkConfig {
    /// Reads the `[sink]` section; its `type` picks the connector.
    pub fn from_toml(section: toml::Value) -> std::result::Result<Self, Problem> {
        from_tagged_toml("sink", section)
    }

    /// The section's `type`, as written in a config (`"parquet"`, `"cassandra"`, ...).
    pub fn type_name(&self) -> &'static str {
        match self {
            SinkConfig::Delta(_) => "delta",
            SinkConfig::Parquet(_) => "parquet",
            SinkConfig::Cassandra(_) => "cassandra",
            SinkConfig::Stdout(_) => "stdout",
            SinkConfig::Null {} => "null",
            SinkConfig::Kafka(_) => "kafka",
        }
    }

    /// Every problem serde cannot see (keys relative to `[sink]`). Checks against the output
    /// transform's columns happen when the sink is built.
    pub fn check(&self) -> Vec<Problem> {
        match self {
            SinkConfig::Cassandra(c) => c.check(),
            SinkConfig::Kafka(c) => c.check(),
            SinkConfig::Delta(_)
            | SinkConfig::Parquet(_)
            | SinkConfig::Stdout(_)
            | SinkConfig::Null {} => Vec::new(),
        }
    }
}

impl DeadLetterConfig {
    /// Reads the `[dead_letter]` section; its `type` picks the output.
    pub fn from_toml(section: toml::Value) -> std::result::Result<Self, Problem> {
        from_tagged_toml("dead_letter", section)
    }

    /// Every problem serde cannot see (keys relative to `[dead_letter]`).
    pub fn check(&self) -> Vec<Problem> {
        match self {
            DeadLetterConfig::File(_) => Vec::new(),
            DeadLetterConfig::Kafka(c) => c.check(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_capture_source_is_read_under_its_name_and_its_former_one() {
        let read = |kind: &str| -> SourceConfig {
            SourceConfig::from_toml(
                toml::from_str(&format!(
                    "type = \"{kind}\"\npath = \"feed.jsonl\"\ncoin_map = \"coins.json\"\n"
                ))
                .unwrap(),
            )
            .unwrap()
        };
        let (SourceConfig::CoinbaseCapture(current), SourceConfig::Replay(former)) =
            (read("coinbase_capture"), read("replay"))
        else {
            panic!("both names are a capture source");
        };
        assert_eq!(
            (current.path, current.coin_map),
            (former.path, former.coin_map)
        );
    }
}
