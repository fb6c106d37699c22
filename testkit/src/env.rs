//! Where the services are: the variables `scripts/services.sh env` prints, with the defaults of a
//! local `scripts/services.sh up`, and the repository root.

use std::path::PathBuf;

/// Printed by every "service missing" failure.
pub const START_HINT: &str = "start the services with `scripts/services.sh up` and export what \
     `scripts/services.sh env` prints (or run everything with `scripts/test.sh`)";

/// The value of env var `name`, trimmed, or `default` when it is unset or blank.
pub fn env_or(name: &str, default: &str) -> String {
    match std::env::var(name) {
        Ok(value) if !value.trim().is_empty() => value.trim().to_owned(),
        _ => default.to_owned(),
    }
}

/// Kafka's `bootstrap.servers`, from `KAFKA_BOOTSTRAP` (default `127.0.0.1:9092`).
pub fn kafka_bootstrap() -> String {
    env_or("KAFKA_BOOTSTRAP", "127.0.0.1:9092")
}

/// Cassandra's contact points (`host:port`), from the comma-separated `CASSANDRA_NODES`
/// (default `127.0.0.1:9042`).
pub fn cassandra_nodes() -> Vec<String> {
    env_or("CASSANDRA_NODES", "127.0.0.1:9042")
        .split(',')
        .map(|n| n.trim().to_owned())
        .filter(|n| !n.is_empty())
        .collect()
}

/// The first of [`cassandra_nodes`], for a plain TCP check.
pub fn cassandra_node() -> String {
    cassandra_nodes()
        .into_iter()
        .next()
        .unwrap_or_else(|| "127.0.0.1:9042".to_owned())
}

/// The Kafka distribution's `libs` folder (`KAFKA_JARS`), for tests that run Java Kafka clients;
/// `None` when unset.
pub fn kafka_jars() -> Option<PathBuf> {
    std::env::var_os("KAFKA_JARS")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// The `java` launcher (`JAVA`, default `java` on the `PATH`).
pub fn java() -> String {
    env_or("JAVA", "java")
}

/// The repository (workspace) root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from(".."), PathBuf::from)
}

/// A file shipped in `required_data/`, e.g. `coin_map.json`.
pub fn required_data(name: &str) -> PathBuf {
    repo().join("required_data").join(name)
}
