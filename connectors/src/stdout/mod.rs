//! `[sink] type = "stdout"`: rows printed as a table (for people) or JSON lines (for pipes), and
//! `type = "null"`, which only counts rows (to measure the engine without a store).
//!
//! The stdout sink is at-least-once: a batch the engine writes again (after a failed commit or a
//! restart before one) is printed again. A write that fails (a closed pipe) is permanent: the
//! reader is gone.

use arrow::array::RecordBatch;
use async_trait::async_trait;
use engine::{DeadLetter, DeadLetterSink, Error, Result, Retry, Sink};
use serde::Deserialize;
use std::io::Write;

/// How rows are printed.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StdoutFormat {
    /// An aligned table per batch.
    #[default]
    Table,
    /// One JSON object per row.
    Json,
}

/// `[sink] type = "stdout"`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StdoutConfig {
    /// `table` (default) or `json`.
    #[serde(default)]
    pub format: StdoutFormat,
}

/// The stdout sink.
pub struct StdoutSink {
    config: StdoutConfig,
    out: Box<dyn Write + Send>,
}

impl StdoutSink {
    /// Builds the sink, printing to the process's stdout.
    pub fn new(config: StdoutConfig) -> Self {
        Self::with_writer(config, Box::new(std::io::stdout()))
    }

    /// Builds the sink printing to `out` instead (a test reads back what it printed).
    pub fn with_writer(config: StdoutConfig, out: Box<dyn Write + Send>) -> Self {
        Self { config, out }
    }
}

#[async_trait]
impl Sink for StdoutSink {
    fn description(&self) -> String {
        "stdout".into()
    }

    async fn write(&mut self, _batch_id: u64, batches: &[RecordBatch]) -> Result<()> {
        if batches.iter().all(|b| b.num_rows() == 0) {
            return Ok(());
        }
        // The whole batch is formatted first and written at once, so batches never interleave.
        let mut text = Vec::new();
        match self.config.format {
            StdoutFormat::Table => {
                let table = arrow::util::pretty::pretty_format_batches(batches)?;
                text.extend_from_slice(format!("{table}\n").as_bytes());
            }
            StdoutFormat::Json => {
                let mut writer = arrow::json::LineDelimitedWriter::new(&mut text);
                writer.write_batches(&batches.iter().collect::<Vec<_>>())?;
                writer.finish()?;
            }
        }
        self.out
            .write_all(&text)
            .and_then(|_| self.out.flush())
            .map_err(|e| {
                Error::sink_failed("stdout", "cannot write", Retry::Permanent).caused_by(e)
            })
    }
}

/// The null sink: counts rows and drops them (for benchmarks of the engine alone).
#[derive(Debug, Default)]
pub struct NullSink {
    rows: u64,
}

#[async_trait]
impl Sink for NullSink {
    fn description(&self) -> String {
        format!("null ({} rows so far)", self.rows)
    }

    async fn write(&mut self, _batch_id: u64, batches: &[RecordBatch]) -> Result<()> {
        self.rows += batches.iter().map(|b| b.num_rows() as u64).sum::<u64>();
        Ok(())
    }
}

/// The null dead-letter output: drops every letter (for `explain --analyze`, which writes
/// nothing).
#[derive(Debug, Default)]
pub struct NullDeadLetters;

#[async_trait]
impl DeadLetterSink for NullDeadLetters {
    fn description(&self) -> String {
        "null".into()
    }

    async fn write(&mut self, _batch_id: u64, _letters: &[DeadLetter]) -> Result<()> {
        Ok(())
    }
}
