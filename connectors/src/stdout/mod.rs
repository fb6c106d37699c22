//! `[sink] type = "stdout"`: rows printed as a table (for people) or JSON lines (for pipes), and
//! `type = "null"`, which only counts rows (to measure the engine without a store).

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
}

impl StdoutSink {
    /// Builds the sink.
    pub fn new(config: StdoutConfig) -> Self {
        Self { config }
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
        let mut out = std::io::stdout().lock();
        let written = match self.config.format {
            StdoutFormat::Table => {
                let table = arrow::util::pretty::pretty_format_batches(batches)?;
                writeln!(out, "{table}")
            }
            StdoutFormat::Json => {
                let mut writer = arrow::json::LineDelimitedWriter::new(&mut out);
                writer.write_batches(&batches.iter().collect::<Vec<_>>())?;
                writer.finish()?;
                Ok(())
            }
        };
        written.and_then(|_| out.flush()).map_err(|e| {
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
