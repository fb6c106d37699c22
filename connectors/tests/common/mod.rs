//! Shared helpers for the integration tests that talk to the real Kafka and Cassandra started by
//! `scripts/services.sh up`. They hold no test logic: only where the services are and how to name
//! the objects a test creates so that parallel and repeated runs never collide.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Start command printed by every "service missing" failure.
pub const START_HINT: &str = "start the services with `scripts/services.sh up` \
     (or run everything with `scripts/test.sh`)";

/// The value of env var `name`, or `default` when it is unset or blank.
pub fn env_or(name: &str, default: &str) -> String {
    match std::env::var(name) {
        Ok(value) if !value.trim().is_empty() => value.trim().to_owned(),
        _ => default.to_owned(),
    }
}

/// `prefix` plus the process id, the wall clock in ms and a per-process counter: unique across
/// tests in one run, concurrent runs on one machine and runs that reuse the same services.
/// Only `[a-z0-9_]` is added, so the result is a valid Kafka topic and CQL identifier.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}_{}_{millis}_{n}", std::process::id())
}
