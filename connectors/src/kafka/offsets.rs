//! The Kafka source's positions: its [`SourceOffset`] is Spark's `{"topic":{"0":42}}` (the next
//! offset per topic and partition), so users recognise it in progress records and checkpoints; and
//! a table that gives each topic-partition the small number its records carry
//! ([`RecordPosition::partition`]), so a record costs no copy of its topic name.

use std::collections::BTreeMap;

use engine::{RawRecord, RecordPosition, SourceOffset};
use serde::{Deserialize, Serialize};

/// A topic and a partition of it.
pub type Partition = (String, i32);

/// The next offset to read in each partition of each topic (`topic → partition → offset`),
/// serialised as Spark's `{"topic":{"0":42}}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct KafkaOffsets(pub BTreeMap<String, BTreeMap<i32, i64>>);

impl KafkaOffsets {
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

    /// The engine's form.
    pub fn to_source_offset(&self) -> SourceOffset {
        SourceOffset::new(serde_json::json!(self.0))
    }

    /// Reads the engine's form (written by this source, now or by any earlier version: the shape
    /// never changed).
    ///
    /// # Errors
    /// A message naming the offset when it is not Spark's shape (another source's checkpoint).
    pub fn from_source_offset(offset: &SourceOffset) -> Result<Self, String> {
        offset.parse().map_err(|e| {
            format!("the offset {offset} is not a Kafka offset ({{\"topic\":{{\"0\":42}}}}): {e}")
        })
    }
}

impl std::fmt::Display for KafkaOffsets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.to_source_offset().fmt(f)
    }
}

/// Every topic-partition the source has seen, numbered in the order first seen (numbers are never
/// reused, so a record's number stays valid after its partition is revoked).
#[derive(Debug, Clone, Default)]
pub struct PartitionTable {
    partitions: Vec<Partition>,
    /// The number found last: records come in runs of one partition, so this is usually it.
    last: usize,
}

impl PartitionTable {
    /// The position of the record at `offset` of `topic`/`partition`, numbering the partition if
    /// it is new (the only allocation, once per partition).
    pub fn position(&mut self, topic: &str, partition: i32, offset: i64) -> RecordPosition {
        let index = match self.partitions.get(self.last) {
            Some((t, p)) if *p == partition && t == topic => self.last,
            _ => match self
                .partitions
                .iter()
                .position(|(t, p)| *p == partition && t == topic)
            {
                Some(i) => i,
                None => {
                    self.partitions.push((topic.to_owned(), partition));
                    self.partitions.len() - 1
                }
            },
        };
        self.last = index;
        RecordPosition::new(index as u32, offset)
    }

    /// The topic-partition numbered `index`.
    ///
    /// # Panics
    /// When `index` was not given out by this table (an invariant: every record of the source was
    /// numbered by it).
    pub fn partition(&self, index: u32) -> &Partition {
        &self.partitions[index as usize]
    }

    /// `records` grouped by topic-partition, in topic-partition order, each partition's records
    /// in the order given (their offsets'): the order of a batch whatever order librdkafka
    /// fetched its partitions in, so a batch read again after a crash comes back in the order it
    /// was first handed out.
    pub fn in_partition_order(&self, records: Vec<RawRecord>) -> Vec<RawRecord> {
        let mut groups: Vec<(&Partition, Vec<RawRecord>)> = Vec::new();
        for r in records {
            let partition = self.partition(r.position.partition);
            match groups.iter_mut().find(|(p, _)| *p == partition) {
                Some((_, group)) => group.push(r),
                None => groups.push((partition, vec![r])),
            }
        }
        groups.sort_by(|a, b| a.0.cmp(b.0));
        groups.into_iter().flat_map(|(_, group)| group).collect()
    }

    /// The number of `partition`, if it has one.
    pub fn index_of(&self, partition: &Partition) -> Option<u32> {
        self.partitions
            .iter()
            .position(|p| p == partition)
            .map(|i| i as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialises_as_spark_does_and_reads_back() {
        let mut o = KafkaOffsets::new();
        o.set("crypto_trades", 1, 7);
        o.set("crypto_trades", 0, 42);
        let offset = o.to_source_offset();
        assert_eq!(offset.to_string(), r#"{"crypto_trades":{"0":42,"1":7}}"#);
        assert_eq!(KafkaOffsets::from_source_offset(&offset).unwrap(), o);
        let other = SourceOffset::new(serde_json::json!({"file": "/f", "line": 3}));
        let err = KafkaOffsets::from_source_offset(&other).unwrap_err();
        assert!(err.contains(r#"{"file":"/f","line":3}"#), "{err}");
    }

    #[test]
    fn numbers_each_partition_once_and_keeps_the_numbers() {
        let mut table = PartitionTable::default();
        assert_eq!(table.position("a", 0, 5), RecordPosition::new(0, 5));
        assert_eq!(table.position("a", 1, 6), RecordPosition::new(1, 6));
        assert_eq!(table.position("b", 0, 7), RecordPosition::new(2, 7));
        assert_eq!(table.position("a", 0, 8), RecordPosition::new(0, 8));
        assert_eq!(table.partition(2), &("b".to_owned(), 0));
        assert_eq!(table.index_of(&("a".to_owned(), 1)), Some(1));
        assert_eq!(table.index_of(&("c".to_owned(), 0)), None);
    }
}
