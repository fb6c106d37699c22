//! What a live source (one whose records come from a task of its own, with nothing to
//! acknowledge upstream) has handed out to the engine: the names its records' partitions number,
//! and the size of the last batch, which counts as published once the engine commits it.

use std::sync::atomic::AtomicU64;

use engine::Result;

use super::counters::publish;

/// The bookkeeping a live source keeps between `poll` and `commit`.
#[derive(Debug, Default)]
pub struct Handout {
    /// The names (a product, a pair and interval) records were handed out for, numbered in the
    /// order first seen: a record's partition is its name's number.
    names: Vec<String>,
    /// Records in the last batch handed out, not yet counted as published.
    last_batch: u64,
}

impl Handout {
    /// The partition number of `name`, numbered (the next number) if it is new.
    pub fn number(&mut self, name: &str) -> u32 {
        match self.names.iter().position(|n| n == name) {
            Some(i) => i as u32,
            None => {
                self.names.push(name.to_owned());
                (self.names.len() - 1) as u32
            }
        }
    }

    /// The name that partition `number` stands for, if it was handed out.
    pub fn name(&self, number: u32) -> Option<&str> {
        self.names.get(number as usize).map(String::as_str)
    }

    /// Notes a batch of `records` (those that count as published: dead letters do not) handed
    /// out; it replaces the last one, which the engine either committed or gave up on.
    pub fn handed_out(&mut self, records: usize) {
        self.last_batch = records as u64;
    }

    /// The whole `Source::commit` of a live source: counts the last batch into `published`,
    /// once, so committing the same batch again counts nothing. Never fails.
    pub fn commit(&mut self, published: &AtomicU64) -> Result<()> {
        publish(published, &mut self.last_batch);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::common::counters::read;

    #[test]
    fn numbers_names_in_the_order_first_seen() {
        let mut handout = Handout::default();
        assert_eq!(handout.number("BTC-USD"), 0);
        assert_eq!(handout.number("ETH-USD"), 1);
        assert_eq!(handout.number("BTC-USD"), 0);
        assert_eq!(handout.name(1), Some("ETH-USD"));
        assert_eq!(handout.name(2), None);
    }

    #[test]
    fn a_batch_counts_as_published_once() {
        let published = AtomicU64::new(5);
        let mut handout = Handout::default();
        handout.handed_out(3);
        handout.commit(&published).unwrap();
        handout.commit(&published).unwrap();
        assert_eq!(read(&published), 8);
    }
}
