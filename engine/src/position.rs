//! Source positions, in two forms (Spark's per-source `Offset`, Arroyo's per-source state):
//! - [`SourceOffset`]: where a batch starts or ends, as opaque JSON that only its source writes and
//!   reads. It holds everything the source needs to continue exactly there (a Kafka source: the
//!   next offset per topic and partition, as Spark's `{"topic":{"0":42}}`; a capture reader: the
//!   file, the next line and its de-duplication state). The engine stores it in the checkpoint's
//!   `offsets/<id>` entries, shows it in progress records (`startOffset`/`endOffset`) and hands it
//!   back to the source ([`crate::StartRequest::committed`], [`crate::Source::fetch_range`],
//!   [`crate::Source::commit`]); it never looks inside.
//!   Two of them, a batch's start and end, make an [`OffsetRange`].
//! - [`RecordPosition`]: where one record came from, in a compact neutral form that costs no heap
//!   allocation per record. The source says what it means ([`crate::Source::describe_position`])
//!   only when a person needs to know: in a dead letter or an error.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Where a batch starts or ends in its source: opaque JSON that the source defines and parses.
/// Serialised as the JSON itself. The default is JSON `null` (no position).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SourceOffset(serde_json::Value);

impl SourceOffset {
    /// An offset holding `json`.
    pub fn new(json: serde_json::Value) -> Self {
        Self(json)
    }

    /// The offset of a source's own typed position.
    ///
    /// # Errors
    /// [`crate::Error::Internal`] when `position` cannot be written as JSON (e.g. a map whose keys
    /// are not strings): a bug in the source.
    pub fn of<T: Serialize>(position: &T) -> crate::Result<Self> {
        serde_json::to_value(position)
            .map(Self)
            .map_err(|e| crate::Error::Internal(format!("a source position is not JSON: {e}")))
    }

    /// Reads the offset as the source's typed position.
    ///
    /// # Errors
    /// serde's error when the JSON does not have `T`'s shape (the source turns it into its own
    /// permanent error naming the offset).
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        T::deserialize(&self.0)
    }

    /// The JSON.
    pub fn json(&self) -> &serde_json::Value {
        &self.0
    }
}

impl std::fmt::Display for SourceOffset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The offsets a batch spans: from `start` (where the batch before it ended) to `end` (what is
/// committed once the batch is written). Shown as `start .. end`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OffsetRange {
    /// Where the batch starts.
    pub start: SourceOffset,
    /// Where it ends.
    pub end: SourceOffset,
}

impl std::fmt::Display for OffsetRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} .. {}", self.start, self.end)
    }
}

/// Where one record came from, compactly: `partition` is an index the source assigns to a part of
/// what it reads (a Kafka topic-partition, a capture file, a Coinbase product), `offset` the
/// record's place in it (a Kafka offset, a line number, a trade id). Only the source knows what the
/// numbers mean; [`crate::Source::describe_position`] says it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RecordPosition {
    /// The source's index of the part the record came from.
    pub partition: u32,
    /// The record's place within that part.
    pub offset: i64,
}

impl RecordPosition {
    /// A position.
    pub const fn new(partition: u32, offset: i64) -> Self {
        Self { partition, offset }
    }

    /// The neutral description, `{"partition":p,"offset":o}`, for sources that give none.
    pub fn to_json(self) -> serde_json::Value {
        serde_json::json!({ "partition": self.partition, "offset": self.offset })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn an_offset_is_the_sources_json_unchanged() {
        let spark: BTreeMap<String, BTreeMap<i32, i64>> =
            BTreeMap::from([("crypto_trades".into(), BTreeMap::from([(1, 7), (0, 42)]))]);
        let offset = SourceOffset::of(&spark).unwrap();
        assert_eq!(offset.to_string(), r#"{"crypto_trades":{"0":42,"1":7}}"#);
        let back: SourceOffset = serde_json::from_str(&offset.to_string()).unwrap();
        assert_eq!(back, offset);
        assert_eq!(
            back.parse::<BTreeMap<String, BTreeMap<i32, i64>>>()
                .unwrap(),
            spark
        );
        assert!(back.parse::<Vec<i64>>().is_err());
    }

    #[test]
    fn a_record_position_has_a_neutral_description() {
        assert_eq!(
            RecordPosition::new(2, 9).to_json().to_string(),
            r#"{"offset":9,"partition":2}"#
        );
    }
}
