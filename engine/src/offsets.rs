//! Source positions. A source is a set of partitions (Kafka: topic + partition; a replay file: one
//! partition) and an offset in each; `Offsets` maps each partition to the next offset to read.
//! Serialised as Spark's `{"topic":{"0":42}}` so users recognise them in progress and checkpoints.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The next offset to read in each partition of each topic (`topic → partition → offset`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Offsets(pub BTreeMap<String, BTreeMap<i32, i64>>);

impl Offsets {
    /// No positions.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the next offset of `topic`/`partition`.
    pub fn set(&mut self, topic: &str, partition: i32, next_offset: i64) {
        self.0
            .entry(topic.to_owned())
            .or_default()
            .insert(partition, next_offset);
    }

    /// The next offset of `topic`/`partition`, if known.
    pub fn get(&self, topic: &str, partition: i32) -> Option<i64> {
        self.0.get(topic).and_then(|p| p.get(&partition)).copied()
    }

    /// Every `(topic, partition, next_offset)`.
    pub fn iter(&self) -> impl Iterator<Item = (&str, i32, i64)> {
        self.0
            .iter()
            .flat_map(|(t, parts)| parts.iter().map(move |(p, o)| (t.as_str(), *p, *o)))
    }

    /// Whether no partition has a position.
    pub fn is_empty(&self) -> bool {
        self.0.values().all(BTreeMap::is_empty)
    }

    /// Records between `self` (start) and `end`, summed over partitions.
    pub fn distance_to(&self, end: &Offsets) -> i64 {
        end.iter()
            .map(|(t, p, e)| e - self.get(t, p).unwrap_or(e))
            .sum()
    }
}

impl std::fmt::Display for Offsets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = serde_json::to_string(self).map_err(|_| std::fmt::Error)?;
        f.write_str(&text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialises_as_spark_does() {
        let mut o = Offsets::new();
        o.set("crypto_trades", 1, 7);
        o.set("crypto_trades", 0, 42);
        assert_eq!(o.to_string(), r#"{"crypto_trades":{"0":42,"1":7}}"#);
        let back: Offsets = serde_json::from_str(&o.to_string()).unwrap();
        assert_eq!(back, o);
    }

    #[test]
    fn distance_counts_records_between_positions() {
        let mut a = Offsets::new();
        a.set("t", 0, 10);
        a.set("t", 1, 0);
        let mut b = a.clone();
        b.set("t", 0, 15);
        b.set("t", 1, 3);
        assert_eq!(a.distance_to(&b), 8);
    }
}
