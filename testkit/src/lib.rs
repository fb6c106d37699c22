//! Test support shared by every coinstream test suite (dev-only, never published), as
//! DataFusion's `test-utils/` crate and Vector's `src/test_util/` are for theirs.
//!
//! - [`env`]: where the real services are (`KAFKA_BOOTSTRAP`, `CASSANDRA_NODES`, `KAFKA_JARS`,
//!   `JAVA`, as `scripts/services.sh env` prints them) and the repository root;
//! - [`unique_name`]: names for topics, groups and keyspaces that no other test or run uses;
//! - [`kafka`]: topic creation, producing and reading a topic back, committed offsets;
//! - [`cassandra`]: a session, keyspace drop and exact decimals read back;
//! - [`services`]: `scripts/services.sh` control, with a guard that restarts a stopped service;
//! - [`coinbase`]: the one scripted Coinbase WebSocket stand-in and the feeds' frames;
//! - [`gateio`]: the one Gate.io REST v4 stand-in, on hyper's HTTP/1.1 server;
//! - [`profit`]: the one portfolio profit oracle, computed with no code of the engine;
//! - [`contract`]: the contract suite every source and sink runs;
//! - [`hive`]: partition columns read back from Hive-style folder names.
//!
//! A missing service is a failure that says how to start it, never a skip.

pub mod cassandra;
pub mod coinbase;
pub mod contract;
pub mod env;
pub mod gateio;
pub mod hive;
pub mod kafka;
pub mod profit;
pub mod services;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// `prefix` plus the process id, the wall clock in ms and a per-process counter: unique across
/// tests in one run, concurrent runs on one machine and runs that reuse the same services.
/// Only `[a-z0-9_]` is added, so with such a prefix the result is a valid Kafka topic, consumer
/// group and (unquoted) CQL identifier.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}_{}_{millis}_{n}", std::process::id())
}

#[cfg(test)]
mod tests {
    #[test]
    fn unique_names_differ_within_one_process() {
        let (a, b) = (super::unique_name("t"), super::unique_name("t"));
        assert_ne!(a, b);
        assert!(
            a.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "{a}"
        );
    }
}
