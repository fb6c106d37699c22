//! Apache Kafka, through librdkafka (`rdkafka`). Docs: <https://kafka.apache.org/documentation/>,
//! <https://github.com/confluentinc/librdkafka/blob/master/CONFIGURATION.md>.
//!
//! The source is a consumer-group member that commits offsets itself, only after the engine's sink
//! acknowledged a batch (auto-commit off). Quirks that shape the code:
//! - librdkafka serves rebalance callbacks only inside `poll`, and the engine polls only between
//!   batches, so partitions are never revoked from under a batch being written.
//! - A member that stops polling for `max.poll.interval.ms` is removed from the group; the sink's
//!   retry loop can take long when Cassandra is down, so that limit is raised by default.
//! - Committed offsets are the group's truth: a restart resumes from them, and a batch the engine
//!   planned but never committed starts exactly at its first offset again.

mod client_log;
pub mod config;
mod consumer;
mod context;
pub mod dead_letter;
mod fetch;
pub mod offsets;
pub mod producer;
pub mod security;
pub mod sink;
pub mod source;

use rdkafka::ClientConfig;

/// The brokers to use when the config names none: `KAFKA_BOOTSTRAP`, else the local default
/// (see [`crate::common::config::kafka_bootstrap`]).
pub fn default_brokers() -> String {
    crate::common::config::kafka_bootstrap()
}

/// A client config with the brokers, coinstream's defaults, the user's extra librdkafka
/// properties (which override the defaults), then the `security` table's settings (which the
/// config check keeps out of `properties`).
fn client_config(
    brokers: &str,
    defaults: &[(&str, &str)],
    properties: &std::collections::BTreeMap<String, String>,
    security: Option<&security::KafkaSecurity>,
) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers);
    for (key, value) in defaults {
        config.set(*key, *value);
    }
    for (key, value) in properties {
        config.set(key, value);
    }
    if let Some(security) = security {
        security.apply(&mut config);
    }
    config
}
