//! Per-batch progress, shaped as Spark's `StreamingQueryProgress` so its readers feel at home.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::position::SourceOffset;

/// Milliseconds spent in each phase of a batch.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Durations {
    /// Waiting for the source (the trigger's poll).
    pub get_batch: u64,
    /// Decoding raw messages into Arrow.
    pub decode: u64,
    /// Running the SQL transform.
    pub query: u64,
    /// Writing rows and dead letters (including retries).
    pub sink: u64,
    /// Committing the source and the checkpoint.
    pub commit: u64,
    /// All of the above.
    pub total: u64,
}

/// The source's part of a batch's progress.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceProgress {
    /// What the source reads.
    pub description: String,
    /// Where the batch started, as the source writes its offsets.
    pub start_offset: SourceOffset,
    /// Where it ended, likewise.
    pub end_offset: SourceOffset,
    /// Messages in the batch.
    pub num_input_rows: u64,
    /// The source's own counters.
    pub metrics: BTreeMap<String, u64>,
}

/// The sink's part of a batch's progress.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SinkProgress {
    /// Where rows go.
    pub description: String,
    /// Rows written.
    pub num_output_rows: u64,
}

/// A stateful operator's part of a batch's progress (Spark's `stateOperators[]`).
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StateOperatorProgress {
    /// The operator (`stateStoreSave`, as Spark names a streaming aggregation's).
    pub operator_name: String,
    /// Groups held in the state after the batch.
    pub num_rows_total: u64,
    /// Groups the batch changed.
    pub num_rows_updated: u64,
    /// Groups that left the state (their window closed).
    pub num_rows_removed: u64,
    /// An estimate of the state's memory, in bytes.
    pub memory_used_bytes: u64,
    /// Input rows dropped because their event time was older than the watermark.
    pub num_rows_dropped_by_watermark: u64,
    /// Input rows skipped because the state of their source part, taken over from another
    /// instance through the shared state store, already holds them.
    pub num_rows_already_in_state: u64,
}

/// One batch's progress.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchProgress {
    /// The batch id (increases by one per batch, across restarts).
    pub batch_id: u64,
    /// When the batch started (RFC 3339).
    pub timestamp: String,
    /// Messages read from the source.
    pub num_input_rows: u64,
    /// Messages per second arriving since the previous batch started.
    pub input_rows_per_second: f64,
    /// Messages per second this batch was processed at.
    pub processed_rows_per_second: f64,
    /// Messages that went to the dead-letter output.
    pub num_dead_letters: u64,
    /// The same messages counted by what rejected them: `decode` (the source or the decoder) or
    /// `transform <name>` (a row the transform failed on).
    pub dead_letters_by_reason: BTreeMap<String, u64>,
    /// Decimal values rounded to their column's scale (the input's decimal policy).
    pub num_rounded_decimals: u64,
    /// Time per phase.
    pub duration_ms: Durations,
    /// The source (one per query for now, in a list as Spark's).
    pub sources: Vec<SourceProgress>,
    /// The sink.
    pub sink: SinkProgress,
    /// The stateful operators (a streaming aggregation), if any.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub state_operators: Vec<StateOperatorProgress>,
    /// Event times of a query with a watermark (Spark's `eventTime`), as RFC 3339 text:
    /// `watermark` (the one this batch used), `max` (the batch's largest kept event time),
    /// `maxSeen` (the largest so far).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub event_time: BTreeMap<String, String>,
}

impl BatchProgress {
    /// A one-line summary for people.
    pub fn human_line(&self) -> String {
        let rounded = match self.num_rounded_decimals {
            0 => String::new(),
            n => format!(", {n} decimals rounded"),
        };
        let state = match self.state_operators.first() {
            None => String::new(),
            Some(op) => format!(
                ", state {} groups ({} updated, {} closed), {} late{}",
                op.num_rows_total,
                op.num_rows_updated,
                op.num_rows_removed,
                op.num_rows_dropped_by_watermark,
                self.event_time
                    .get("watermark")
                    .map(|w| format!(", watermark {w}"))
                    .unwrap_or_default()
            ),
        };
        format!(
            "batch {}: {} in, {} out, {} dead-lettered{}{rounded}{state} in {} ms (decode {} / query {} / sink {} / commit {}), {:.0} rows/s, offsets {}",
            self.batch_id,
            self.num_input_rows,
            self.sink.num_output_rows,
            self.num_dead_letters,
            if self.dead_letters_by_reason.is_empty() {
                String::new()
            } else {
                let parts: Vec<String> = self
                    .dead_letters_by_reason
                    .iter()
                    .map(|(reason, n)| format!("{reason} {n}"))
                    .collect();
                format!(" ({})", parts.join(", "))
            },
            self.duration_ms.total,
            self.duration_ms.decode,
            self.duration_ms.query,
            self.duration_ms.sink,
            self.duration_ms.commit,
            self.processed_rows_per_second,
            self.sources
                .first()
                .map(|s| s.end_offset.to_string())
                .unwrap_or_default(),
        )
    }

    /// The record as one JSON line.
    pub fn json_line(&self) -> String {
        serde_json::to_string(self)
            .unwrap_or_else(|e| format!("{{\"error\":\"progress not serialisable: {e}\"}}"))
    }
}
