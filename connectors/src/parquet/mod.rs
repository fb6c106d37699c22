//! The embedded store: a Parquet dataset under a folder, partitioned Hive-style by the configured
//! columns (`symbol=BTC-USD/trade_date=2026-11-23/part-<batch>-<n>.parquet`). Each file is written
//! under a temporary name, synced and renamed, so a crash never leaves a torn file, and its name
//! comes from the batch id, so a replayed batch overwrites its own files instead of doubling rows.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{RecordBatch, UInt32Array};
use arrow::compute::{concat_batches, take_record_batch};
use arrow::datatypes::SchemaRef;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use async_trait::async_trait;
use datafusion::datasource::MemTable;
use datafusion::prelude::{ParquetReadOptions, SessionContext};
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
        key_columns.push((name.as_str(), batch.column(index).clone()));
    }
    let options = FormatOptions::default();
    let formatters = key_columns
        .iter()
        .map(|(_, col)| ArrayFormatter::try_new(col.as_ref(), &options))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Failed::permanent(e.to_string()))?;
    let mut groups: BTreeMap<Vec<String>, Vec<u32>> = BTreeMap::new();
    for row in 0..batch.num_rows() {
        let key = formatters
            .iter()
            .map(|f| f.value(row).to_string())
            .collect();
        groups.entry(key).or_default().push(row as u32);
    }
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .build();
    for (n, (key, rows)) in groups.into_iter().enumerate() {
        let mut dir = config.path.clone();
        for ((name, _), value) in key_columns.iter().zip(&key) {
            dir.push(format!("{name}={}", escape(value)));
        }
        fs::create_dir_all(&dir)
            .map_err(|e| Failed::io(format!("cannot create {}", dir.display()), &e))?;
        let part = take_record_batch(batch, &UInt32Array::from(rows))
            .map_err(|e| Failed::permanent(e.to_string()))?;
        write_file(
            &dir.join(format!("part-{batch_id:010}-{n:04}.parquet")),
            &part,
            props.clone(),
        )?;
    }
    Ok(())
}

fn write_file(
    path: &Path,
    batch: &RecordBatch,
    props: WriterProperties,
) -> std::result::Result<(), Failed> {
    let tmp = path.with_extension("parquet.tmp");
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
    fs::rename(&tmp, path)
        .map_err(|e| Failed::io(format!("cannot rename into {}", path.display()), &e))
}

/// Keeps partition values usable as folder names.
fn escape(value: &str) -> String {
    value
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.:".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Registers a dataset written by this sink as table `name` for `query` and reports. A store
/// whose folder exists but holds no file yet (a run stored nothing: no portfolio trade yet, or
/// every row dead-lettered) is an empty table of `schema`, the transform's output schema; a
/// folder that does not exist is an error (no run has used it).
pub async fn register_store(
    session: &SessionContext,
    name: &str,
    path: &Path,
    schema: SchemaRef,
) -> Result<()> {
    if !path.is_dir() {
        return Err(Error::config(
            path.display().to_string(),
            format!("the store for table {name} does not exist yet; run the pipeline first"),
        ));
    }
    if !walk_has_parquet(path) {
        tracing::info!(table = name, path = %path.display(), "The store holds no rows yet.");
        let empty = MemTable::try_new(schema, vec![Vec::new()])?;
        session.register_table(name, Arc::new(empty))?;
        return Ok(());
    }
    // Partition folders are plain folders to the reader: the partition columns are kept in the
    // files too, so no column is derived from a folder name.
    session
        .sql("SET datafusion.execution.listing_table_ignore_subdirectory = false")
        .await?
        .collect()
        .await?;
    let url = format!(
        "{}/",
        path.canonicalize()
            .map_err(|e| Error::io(path, e))?
            .display()
    );
    session
        .register_parquet(name, &url, ParquetReadOptions::default())
        .await?;
    Ok(())
}

fn walk_has_parquet(path: &Path) -> bool {
    let Ok(entries) = fs::read_dir(path) else {
        return false;
    };
    entries.flatten().any(|e| {
        let p = e.path();
        if p.is_dir() {
            walk_has_parquet(&p)
        } else {
            p.extension().is_some_and(|x| x == "parquet")
        }
    })
}
