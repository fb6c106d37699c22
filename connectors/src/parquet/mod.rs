//! The embedded store: a Parquet dataset under a folder, partitioned Hive-style by the configured
//! columns, the layout pandas, pyarrow, DuckDB, Spark and DataFusion open with their defaults
//! (see [`layout`]): the partition columns are in the folder names only
//! (`symbol=BTC-USD/trade_date=2026-11-30/part-<batch>-<n>.parquet`), and each file is written
//! under a hidden temporary name, synced and renamed, so no reader ever sees a torn file. File names
//! come from the batch id, so a replayed batch overwrites its own files instead of doubling rows.
//! [`register_store`] reads the store back for `query` and the run's report.

mod layout;
mod store;

pub use store::register_store;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use arrow::array::{Array, RecordBatch, UInt32Array};
use arrow::compute::{concat_batches, take_record_batch};
use arrow::datatypes::SchemaRef;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use async_trait::async_trait;
use engine::{Error, Result, Retry, Sink};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use serde::Deserialize;

use crate::common::config::{Problem, partition_columns_problem};
use crate::common::files::io_retry;

/// `[sink] type = "parquet"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParquetConfig {
    /// The dataset's folder, relative to the config file.
    #[serde(deserialize_with = "crate::common::config::path")]
    pub path: PathBuf,
    /// Columns whose values name the partition folders, outermost first.
    #[serde(default)]
    pub partition_by: Vec<String>,
}

impl ParquetConfig {
    /// A problem at `partition_by` (relative to the section) when it names columns that the
    /// transform's output `schema` lacks, so a run stops before reading instead of at its first
    /// write.
    pub fn check_columns(&self, schema: &SchemaRef) -> Option<Problem> {
        partition_columns_problem(&self.partition_by, schema)
    }
}

/// The Parquet sink.
pub struct ParquetSink {
    config: ParquetConfig,
}

impl ParquetSink {
    /// Builds the sink.
    pub fn new(config: ParquetConfig) -> Self {
        Self { config }
    }

    fn error(&self, message: String, retry: Retry) -> Error {
        Error::sink_failed(self.description(), message, retry)
    }
}

#[async_trait]
impl Sink for ParquetSink {
    fn description(&self) -> String {
        format!("parquet {}", self.config.path.display())
    }

    async fn healthcheck(&mut self) -> Result<()> {
        let probe = self.config.path.join(".coinstream-write-check");
        fs::create_dir_all(&self.config.path)
            .and_then(|_| fs::write(&probe, b""))
            .and_then(|_| fs::remove_file(&probe))
            .map_err(|e| {
                self.error("folder is not writable".into(), Retry::Permanent)
                    .caused_by(e)
            })
    }

    async fn write(&mut self, batch_id: u64, batches: &[RecordBatch]) -> Result<()> {
        let Some(first) = batches.first() else {
            return Ok(());
        };
        let combined = concat_batches(&first.schema(), batches)?;
        if combined.num_rows() == 0 {
            return Ok(());
        }
        let config = self.config.clone();
        let description = self.description();
        tokio::task::spawn_blocking(move || write_partitions(&config, batch_id, &combined))
            .await
            .map_err(|e| Error::Internal(format!("parquet writer task failed: {e}")))?
            .map_err(|failed| Error::sink_failed(description, failed.message, failed.retry))
    }
}

/// Why writing a batch failed, and whether writing it again may succeed.
struct Failed {
    message: String,
    retry: Retry,
}

impl Failed {
    /// Retrying cannot help: the rows or the config are wrong.
    fn permanent(message: String) -> Self {
        Self {
            message,
            retry: Retry::Permanent,
        }
    }

    /// The encoder failed (it may be the disk under it): worth trying again.
    fn transient(message: String) -> Self {
        Self {
            message,
            retry: Retry::Transient,
        }
    }

    /// A file operation failed: a wrong path is permanent, a full disk is not.
    fn io(what: String, e: &std::io::Error) -> Self {
        Self {
            message: format!("{what}: {e}"),
            retry: io_retry(e),
        }
    }
}

fn write_partitions(
    config: &ParquetConfig,
    batch_id: u64,
    batch: &RecordBatch,
) -> std::result::Result<(), Failed> {
    let schema = batch.schema();
    let mut key_columns = Vec::new();
    for name in &config.partition_by {
        let index = schema.index_of(name).map_err(|_| {
            Failed::permanent(format!(
                "partition column {name} is not in the transform's output"
            ))
        })?;
        key_columns.push((name.as_str(), index));
    }
    // The files hold every other column, in the transform's order: a reader takes the partition
    // columns from the folder names, and one also found in the file clashes with it.
    let file_columns: Vec<usize> = (0..schema.fields().len())
        .filter(|i| !key_columns.iter().any(|(_, k)| k == i))
        .collect();
    let batch_columns: Vec<_> = key_columns
        .iter()
        .map(|(_, index)| batch.column(*index).clone())
        .collect();
    // Arrow's display text is each type's canonical one (`2026-11-30`, `12.3400000000`), which
    // readers cast back to the column's type exactly.
    let options = FormatOptions::default();
    let formatters = batch_columns
        .iter()
        .map(|col| ArrayFormatter::try_new(col.as_ref(), &options))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Failed::permanent(e.to_string()))?;
    let mut groups: BTreeMap<Vec<String>, Vec<u32>> = BTreeMap::new();
    for row in 0..batch.num_rows() {
        let mut key = Vec::with_capacity(key_columns.len());
        for (((name, _), col), formatter) in key_columns.iter().zip(&batch_columns).zip(&formatters)
        {
            let text = (!col.is_null(row)).then(|| formatter.value(row).to_string());
            key.push(layout::folder(name, text.as_deref()).map_err(Failed::permanent)?);
        }
        groups.entry(key).or_default().push(row as u32);
    }
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .build();
    let stored = batch
        .project(&file_columns)
        .map_err(|e| Failed::permanent(e.to_string()))?;
    for (n, (key, rows)) in groups.into_iter().enumerate() {
        let dir = key
            .iter()
            .fold(config.path.clone(), |dir, part| dir.join(part));
        fs::create_dir_all(&dir)
            .map_err(|e| Failed::io(format!("cannot create {}", dir.display()), &e))?;
        let part = take_record_batch(&stored, &UInt32Array::from(rows))
            .map_err(|e| Failed::permanent(e.to_string()))?;
        write_file(&dir, &layout::file_name(batch_id, n), &part, props.clone())?;
    }
    Ok(())
}

/// Writes `batch` as `dir/name`, first under its hidden temporary name (see [`layout::temp_name`]).
fn write_file(
    dir: &Path,
    name: &str,
    batch: &RecordBatch,
    props: WriterProperties,
) -> std::result::Result<(), Failed> {
    let path = dir.join(name);
    let tmp = dir.join(layout::temp_name(name));
    let file = fs::File::create(&tmp)
        .map_err(|e| Failed::io(format!("cannot create {}", tmp.display()), &e))?;
    let encode = |e: parquet::errors::ParquetError| {
        Failed::transient(format!("cannot write {}: {e}", tmp.display()))
    };
    let mut writer = ArrowWriter::try_new(file, batch.schema(), Some(props)).map_err(encode)?;
    writer.write(batch).map_err(encode)?;
    let file = writer.into_inner().map_err(encode)?;
    file.sync_all()
        .map_err(|e| Failed::io(format!("cannot sync {}", tmp.display()), &e))?;
    fs::rename(&tmp, &path)
        .map_err(|e| Failed::io(format!("cannot rename into {}", path.display()), &e))
}
