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
    /// Waiting for the batch's offsets to be written to the checkpoint's write-ahead log (synced
    /// to disk; Spark's `walCommit`). The write runs while the batch is decoded and queried, so
    /// this is only what is left of it before the sink write. 0 without a checkpoint and for a
    /// replayed batch.
    pub wal_commit: u64,
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
#[derive(Debug, Clone, Default, Serialize)]
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
    /// The source's own counters ([`crate::source::Source::metrics`]), and, for a source with
    /// a backlog, Spark's `minOffsetsBehindLatest`, `maxOffsetsBehindLatest` and
    /// `avgOffsetsBehindLatest` over its parts (the mean is the one fractional value).
    pub metrics: BTreeMap<String, serde_json::Number>,
    /// Records available past the batch's end, per part of the source (`"topic/3"`), as the
    /// source knew its ends after the batch ([`crate::source::Source::backlog`]); absent for a
    /// source without one.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub offsets_behind_latest: BTreeMap<String, u64>,
}

/// The names of the backlog's summary in [`SourceProgress::metrics`], as Spark's Kafka source
/// reports them: minimum, maximum, mean over the parts.
pub const BACKLOG_SUMMARY: [&str; 3] = [
    "minOffsetsBehindLatest",
    "maxOffsetsBehindLatest",
    "avgOffsetsBehindLatest",
];

impl SourceProgress {
    /// The source's `counters` and `backlog` as a progress record carries them: the counters
    /// and the backlog's minimum, maximum and mean (see [`BACKLOG_SUMMARY`]) in `metrics`, the
    /// backlog per part in `offsets_behind_latest`.
    pub fn source_metrics(
        counters: Vec<(&'static str, u64)>,
        backlog: Vec<(String, u64)>,
    ) -> (BTreeMap<String, serde_json::Number>, BTreeMap<String, u64>) {
        let mut metrics: BTreeMap<String, serde_json::Number> = counters
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.into()))
            .collect();
        let backlog: BTreeMap<String, u64> = backlog.into_iter().collect();
        if let (Some(min), Some(max)) = (backlog.values().min(), backlog.values().max()) {
            let mean = backlog.values().map(|&v| v as f64).sum::<f64>() / backlog.len() as f64;
            let [min_name, max_name, avg_name] = BACKLOG_SUMMARY;
            metrics.insert(min_name.to_owned(), (*min).into());
            metrics.insert(max_name.to_owned(), (*max).into());
            // A mean of finite counts is finite: `from_f64` refuses only NaN and infinities.
            if let Some(mean) = serde_json::Number::from_f64(mean) {
                metrics.insert(avg_name.to_owned(), mean);
            }
        }
        (metrics, backlog)
    }
}

/// The sink's part of a batch's progress.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SinkProgress {
    /// Where rows go.
    pub description: String,
    /// Rows written.
    pub num_output_rows: u64,
    /// Attempts of the batch's write that failed transiently and were retried (the runtime's
    /// one retry policy, [`crate::retry`]); 0 when the first attempt succeeded.
    pub num_retries: u64,
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
#[derive(Debug, Clone, Default, Serialize)]
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
    /// The dead-letter output, written only when the batch had dead letters (its
    /// `numOutputRows` is then [`BatchProgress::num_dead_letters`]).
    pub dead_letter_sink: SinkProgress,
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
