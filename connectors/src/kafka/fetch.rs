//! The exact re-read of a batch that was planned but not committed before a stop
//! ([`engine::Source::fetch_range`]). The group resumes each partition at its committed offset,
//! which for a batch that was never committed is the batch's start: reading on to the batch's end
//! rebuilds it exactly. Partitions the group now gives to another instance are that instance's to
//! replay, and one whose group offset is already past the batch's end was finished by another
//! instance after a rebalance.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use engine::{RawRecord, Result, Retry, SourceBatch};

use super::offsets::{KafkaOffsets, PartitionTable};
use super::source::KafkaSource;

/// How long a replay of an uncommitted batch may wait for its partitions and messages.
const REPLAY_TIMEOUT: Duration = Duration::from_secs(120);

/// One partition of a batch to re-read: its topic, partition, and end offset (exclusive).
type Wanted = (String, i32, i64);

impl KafkaSource {
    /// Re-reads the records between `start` and `end` of the partitions this instance holds.
    pub(super) async fn refetch(
        &mut self,
        start: &KafkaOffsets,
        end: &KafkaOffsets,
    ) -> Result<SourceBatch> {
        // A paused partition would never reach the batch's end.
        self.resume_all()?;
        let deadline = Instant::now() + REPLAY_TIMEOUT;
        while self.assigned.is_empty() && Instant::now() < deadline {
            self.gather(usize::MAX, Duration::from_millis(200)).await?;
        }
        let owned: Vec<Wanted> = end
            .iter()
            .filter(|(t, p, _)| self.assigned.contains(&((*t).to_owned(), *p)))
            .map(|(t, p, e)| (t.to_owned(), p, e))
            .collect();
        let query = owned.iter().map(|(t, p, _)| (t.clone(), *p)).collect();
        let committed = self.group_committed(query).await?;
        let wanted: Vec<Wanted> = owned
            .into_iter()
            .filter(|(t, p, e)| committed.get(&(t.clone(), *p)).is_none_or(|c| c < e))
            .collect();
        loop {
            let missing: Vec<&Wanted> = wanted.iter().filter(|w| !self.reached(w)).collect();
            if missing.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                return Err(self.error(
                    format!("could not re-read the uncommitted batch {start} .. {end}: partitions {missing:?} did not reach their end"),
                    Retry::Transient,
                ));
            }
            self.gather(usize::MAX, Duration::from_millis(200)).await?;
        }
        let buffer = std::mem::take(&mut self.buffer);
        let (records, rest) = take_range(buffer, &self.partitions, start, &wanted);
        let records = self.partitions.in_partition_order(records);
        self.buffer = rest;
        let (mut s, mut e) = (KafkaOffsets::new(), KafkaOffsets::new());
        for (topic, partition, last) in &wanted {
            s.set(
                topic,
                *partition,
                start.get(topic, *partition).unwrap_or(*last),
            );
            e.set(topic, *partition, *last);
            self.last_end.insert((topic.clone(), *partition), *last);
        }
        tracing::info!(records = records.len(), start = %s, end = %e, "Re-read the uncommitted batch.");
        Ok(SourceBatch {
            records,
            start: s.to_source_offset(),
            end: e.to_source_offset(),
            rows: None,
        })
    }

    /// Whether the partition was read up to the batch's end: the consumer's position is there
    /// (a batch's end may be a position past commit markers, which no record reaches), or the
    /// buffer holds the batch's last record.
    fn reached(&self, (topic, partition, end): &Wanted) -> bool {
        let key = (topic.clone(), *partition);
        if self.positions.get(&key).is_some_and(|pos| pos >= end) {
            return true;
        }
        let Some(number) = self.partitions.index_of(&key) else {
            return false;
        };
        self.buffer
            .iter()
            .any(|r| r.position.partition == number && r.position.offset >= end - 1)
    }
}

/// Splits `buffer` into the records of the batch (in `wanted`'s partitions, from `start` on and
/// before each end) and the rest, both in buffer order.
fn take_range(
    buffer: VecDeque<RawRecord>,
    partitions: &PartitionTable,
    start: &KafkaOffsets,
    wanted: &[Wanted],
) -> (Vec<RawRecord>, VecDeque<RawRecord>) {
    // Per wanted partition number: (from, end); looked up once per partition, not per record.
    let ranges: Vec<(u32, i64, i64)> = wanted
        .iter()
        .filter_map(|(t, p, e)| {
            let number = partitions.index_of(&(t.clone(), *p))?;
            Some((number, start.get(t, *p).unwrap_or(i64::MIN), *e))
        })
        .collect();
    let mut records = Vec::new();
    let mut rest = VecDeque::new();
    for r in buffer {
        let in_batch = ranges.iter().any(|(n, from, end)| {
            *n == r.position.partition && (*from..*end).contains(&r.position.offset)
        });
        if in_batch {
            records.push(r)
        } else {
            rest.push_back(r)
        }
    }
    (records, rest)
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;

    fn record(table: &mut PartitionTable, topic: &str, partition: i32, offset: i64) -> RawRecord {
        RawRecord {
            position: table.position(topic, partition, offset),
            payload: Vec::new(),
            frame: None,
            rejected: None,
            received_at: SystemTime::now(),
        }
    }

    fn spans(records: &[RawRecord], table: &PartitionTable) -> Vec<(String, i32, i64)> {
        records
            .iter()
            .map(|r| {
                let (t, p) = table.partition(r.position.partition);
                (t.clone(), *p, r.position.offset)
            })
            .collect()
    }

    #[test]
    fn takes_exactly_the_batch_and_keeps_the_rest_in_order() {
        let mut table = PartitionTable::default();
        let mut buffer = VecDeque::new();
        // Partition t/0 re-read from 10 (its committed offset) past the batch's end 13; t/1 from
        // 3, where the batch started at 5 (records before the start were committed by an earlier
        // batch of another instance); u/0 is not in the batch.
        for (t, p, o) in [
            ("t", 0, 10),
            ("t", 1, 3),
            ("t", 0, 11),
            ("u", 0, 7),
            ("t", 1, 5),
            ("t", 0, 12),
            ("t", 0, 13),
            ("t", 1, 6),
        ] {
            buffer.push_back(record(&mut table, t, p, o));
        }
        let mut start = KafkaOffsets::new();
        start.set("t", 0, 10);
        start.set("t", 1, 5);
        let wanted = vec![("t".to_owned(), 0, 13), ("t".to_owned(), 1, 7)];
        let (batch, rest) = take_range(buffer, &table, &start, &wanted);
        assert_eq!(
            spans(&batch, &table),
            [
                ("t".into(), 0, 10),
                ("t".into(), 0, 11),
                ("t".into(), 1, 5),
                ("t".into(), 0, 12),
                ("t".into(), 1, 6),
            ]
        );
        assert_eq!(
            spans(&Vec::from(rest), &table),
            [("t".into(), 1, 3), ("u".into(), 0, 7), ("t".into(), 0, 13)]
        );
    }
}
