//! Counters an ingester keeps as atomics (updated from its tasks, read from anywhere) and reports
//! as a named snapshot: in the engine's progress, in tests, and in its log lines.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// Adds `n` to `counter`. Relaxed: the counters order nothing, they only count.
pub fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// Adds what the last batch handed out to `published` once that batch is published, and resets
/// `handed_out` to 0, so that committing the same batch again counts nothing.
pub fn publish(published: &AtomicU64, handed_out: &mut u64) {
    add(published, std::mem::take(handed_out));
}

/// Reads `counter`.
pub fn read(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

/// A set of named counters.
pub trait CounterSet {
    /// Every counter by name, in a stable order.
    fn snapshot(&self) -> Vec<(&'static str, u64)>;

    /// The value of counter `name` (0 if there is none).
    fn get(&self, name: &str) -> u64 {
        self.snapshot()
            .into_iter()
            .find(|(n, _)| *n == name)
            .map_or(0, |(_, v)| v)
    }

    /// Logs `message` at `info` with every counter as `name=value`.
    fn log(&self, message: &str) {
        let mut counters = String::new();
        for (name, value) in self.snapshot() {
            let _ = write!(counters, " {name}={value}");
        }
        tracing::info!("{message}{counters}");
    }
}
