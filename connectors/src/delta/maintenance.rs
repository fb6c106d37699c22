//! Table maintenance: compaction (Delta's OPTIMIZE, bin-packing), VACUUM and the deletion of
//! expired commits from the log. Used in the background by the Delta sink and by
//! `coinstream compact`.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::num::NonZeroU64;
use std::sync::Arc;
use std::time::Duration;

use arrow::datatypes::{Schema, SchemaRef};
use deltalake::datafile::DataFileReader;
use deltalake::datafile::reader::ParquetFileReader;
use deltalake::datafile::writer::{PartitionWriter, PartitionWriterConfig};
use deltalake::kernel::schema::cast_record_batch;
use deltalake::kernel::transaction::CommitData;
use deltalake::kernel::{Action, Add, EagerSnapshot, LogicalFileView};
use deltalake::logstore::{LogStore, LogStoreRef};
use deltalake::parquet::basic::{Compression, ZstdLevel};
use deltalake::parquet::file::properties::WriterProperties;
use deltalake::protocol::DeltaOperation;
use deltalake::table::config::TablePropertiesExt;
use deltalake::{DeltaTable, DeltaTableError};
use futures::TryStreamExt;
use indexmap::IndexMap;

use super::append::{self, Put};

/// What to compact and what to delete.
#[derive(Debug, Clone)]
pub struct Options {
    /// Only partitions whose newest file is older than this (ms since the epoch): partitions
    /// that receive no more data. `None`: every partition.
    pub idle_since_ms: Option<i64>,
    /// A partition that still receives data is compacted too once it holds this many small
    /// files: what a writer and every reader pay grows with the table's file count.
    pub active_partition_files: usize,
    /// Bytes a merged file aims at; larger files are left alone.
    pub target_file_size: NonZeroU64,
    /// Files removed from the table longer ago than this are deleted (VACUUM).
    pub retention: Duration,
}

impl Options {
    /// The options `[sink.compaction]` sets, for partitions idle since `idle_since_ms` (`None`:
    /// every partition).
    pub fn of(config: &super::CompactionConfig, idle_since_ms: Option<i64>) -> Self {
        Self {
            idle_since_ms,
            active_partition_files: config.active_partition_files.get() as usize,
            target_file_size: config.target_file_size,
            retention: config.retention,
        }
    }
}

/// What a compaction did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Compacted {
    /// Partitions whose files were merged.
    pub partitions: u64,
    /// Files the merges removed from the table.
    pub files_removed: u64,
    /// Files the merges added.
    pub files_added: u64,
    /// Partitions whose merge was not committed: another writer's commit removed one of its
    /// files first (another compaction).
    pub conflicts: u64,
    /// Files VACUUM deleted from the folder.
    pub files_deleted: u64,
    /// Commits deleted from the log (older than its retention, covered by a checkpoint).
    pub commits_deleted: u64,
    /// The table's version after the last commit.
    pub version: Option<u64>,
}

impl fmt::Display for Compacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} partitions compacted: {} files merged into {}; {} unreferenced files and {} \
             expired commits deleted",
            self.partitions,
            self.files_removed,
            self.files_added,
            self.files_deleted,
            self.commits_deleted
        )?;
        if self.conflicts > 0 {
            write!(f, "; {} partitions left to another writer", self.conflicts)?;
        }
        if let Some(v) = self.version {
            write!(f, "; table version {v}")?;
        }
        Ok(())
    }
}

/// Merges the small files of each chosen partition (one OPTIMIZE commit per partition, so a
/// reader sees a partition's old files or its merged ones, never both), then vacuums.
/// Appends of a running stream commit in between, while the files are merged: an append and a
/// compaction do not conflict (the append reads nothing), so neither waits for the other. A
/// partition one of whose files another writer removed first (a second compaction) is left as
/// that writer made it ([`Compacted::conflicts`]).
///
/// # Errors
/// Reading the log, reading or writing a data file, or committing failed; what was committed
/// before the failure stays (each partition's merge is atomic).
pub async fn compact(table: DeltaTable, options: Options) -> Result<Compacted, DeltaTableError> {
    compact_gated(table, options, &CommitGate::default()).await
}

/// Held by whoever commits to the table in this process, for the moment of the commit (an
/// append's, each merged partition's, VACUUM's). A listing of `_delta_log` for the latest
/// version taken while an append creates its commit file can miss that file (on a local file
/// system a directory listing is not a snapshot: 53 of 76 background compactions failed with
/// the kernel's "Expected contiguous commit files, but found gap" over 88,889 one-trade
/// batches) and the kernel refuses the gap, so a compaction lists the log only up to a version
/// it knows to be complete (its files existed before the listing began), and delta-rs's own
/// commits (VACUUM's), which list the latest, run under the gate. Reading and merging files
/// needs no gate: a compaction that held it through each partition's merge stalled the
/// stream's appends for seconds (p99 from the Kafka send to a readable row 4.5–5.2 s at 2,000
/// trades/s, 93–105 ms since; bench/results/2026-12-02-delta-live-tail.md).
pub(super) type CommitGate = std::sync::Arc<tokio::sync::Mutex<()>>;

/// [`compact`] of `table` as it was loaded, taking `gate` only to put each partition's commit
/// and for VACUUM: the files are read and merged while the stream's appends go on. The state
/// it merges by may be older than the latest: the commits after it are read (by version, no
/// listing) and judged before each merge is committed.
pub(super) async fn compact_gated(
    mut table: DeltaTable,
    options: Options,
    gate: &CommitGate,
) -> Result<Compacted, DeltaTableError> {
    let mut done = Compacted::default();
    let read_version = table
        .version()
        .ok_or_else(|| DeltaTableError::Generic("the table has no commit to compact".to_owned()))?;
    let merge = Merge::of(&table)?;
    let mut seen = Seen {
        version: read_version,
        removed: HashSet::new(),
        changed_table: false,
    };
    for bins in chosen_bins(&table, &options)? {
        let files: usize = bins.iter().map(Vec::len).sum();
        let rewritten: HashSet<String> = bins
            .iter()
            .flatten()
            .map(|f| f.path().into_owned())
            .collect();
        // What landed meanwhile may rule this merge out before it is made.
        seen.catch_up(table.log_store().as_ref()).await?;
        if let Some(why) = seen.conflict(&rewritten) {
            tracing::info!(reason = why, "A partition's merge was not made.");
            done.conflicts += 1;
            continue;
        }
        let actions = merge.partition(&bins).await?;
        let new_files = append::added_paths(&actions);
        let added = new_files.len();
        let commit = CommitData::new(
            actions,
            DeltaOperation::Optimize {
                predicate: None,
                target_size: options.target_file_size.get() as i64,
            },
            HashMap::from([
                ("readVersion".to_owned(), read_version.into()),
                (
                    "operationMetrics".to_owned(),
                    serde_json::json!({"numFilesRemoved": files, "numFilesAdded": added}),
                ),
            ]),
            Vec::new(),
        );
        // The appends of the merge's seconds, read without the gate.
        seen.catch_up(table.log_store().as_ref()).await?;
        let put = match seen.conflict(&rewritten) {
            Some(why) => Put::Stopped(seen.version, why),
            None => {
                append::put_after(
                    &table.log_store(),
                    gate,
                    seen.version,
                    commit.get_bytes()?.into(),
                    |theirs| {
                        seen.record(theirs)?;
                        Ok(seen.conflict(&rewritten))
                    },
                )
                .await?
            }
        };
        match put {
            Put::Committed(at) => {
                seen.version = at;
                done.partitions += 1;
                done.files_removed += files as u64;
                done.files_added += added as u64;
            }
            Put::Stopped(at, why) => {
                append::delete_unreferenced(&table.log_store(), &new_files).await;
                tracing::info!(
                    version = at,
                    reason = why,
                    "A partition's merge was not committed."
                );
                seen.version = at;
                done.conflicts += 1;
            }
        }
    }
    let retention = chrono::Duration::from_std(options.retention)
        .map_err(|e| DeltaTableError::Generic(format!("retention out of range: {e}")))?;
    // VACUUM deletes by the state it reads: with this compaction's removes. Up to a version
    // known to be complete, so the listing needs no gate; a dry run there says whether any file
    // expired (rarely, with days of retention) before the gate is taken for the real one.
    table.update_incremental(Some(seen.version)).await?;
    let vacuum = |table: DeltaTable| {
        table
            .vacuum()
            .with_retention_period(retention)
            // The retention is the config's choice; Delta's own 7-day floor would refuse a
            // shorter one that the user set on purpose.
            .with_enforce_retention_duration(false)
    };
    let (mut table, mut vacuumed) = vacuum(table).with_dry_run(true).await?;
    if !vacuumed.files_deleted.is_empty() {
        let _held = gate.lock().await;
        // delta-rs's commits (VACUUM START/END) expect the latest state.
        table.update_state().await?;
        (table, vacuumed) = vacuum(table).await?;
    }
    done.files_deleted = vacuumed.files_deleted.len() as u64;
    done.version = table.version();
    // Commits older than the table's log retention that a checkpoint covers (the stream's
    // appends leave this to here).
    if let Some(version) = done.version {
        let keep_after = chrono::Utc::now().timestamp_millis()
            - table
                .snapshot()?
                .table_config()
                .log_retention_duration()
                .as_millis() as i64;
        done.commits_deleted = deltalake::checkpoints::cleanup_expired_logs_for(
            version,
            table.log_store().as_ref(),
            keep_after,
            None,
        )
        .await? as u64;
    }
    Ok(done)
}

/// The bins of small files to merge, of each partition [`compact_gated`] compacts: a partition
/// that received no file since `options.idle_since_ms`, or that holds
/// `options.active_partition_files` small files. A bin is a run of the partition's small files
/// in the order they were written, up to `options.target_file_size` bytes together; a bin of
/// one file is no merge and left out, as is a partition left with none.
fn chosen_bins(
    table: &DeltaTable,
    options: &Options,
) -> Result<Vec<Vec<Vec<LogicalFileView>>>, DeltaTableError> {
    let target = options.target_file_size.get() as i64;
    let mut chosen = Vec::new();
    for mut files in super::live_files(table)?.into_values() {
        let small = files.iter().filter(|f| f.size() < target).count();
        let newest = files.iter().map(LogicalFileView::modification_time).max();
        let idle = match (options.idle_since_ms, newest) {
            (Some(since), Some(newest)) => newest < since,
            _ => true,
        };
        if small < 2 || !(idle || small >= options.active_partition_files) {
            continue;
        }
        // The order they were written in, so a merged file keeps the rows' order.
        files.sort_by_cached_key(|f| (f.modification_time(), f.path().into_owned()));
        let mut bins: Vec<Vec<LogicalFileView>> = Vec::new();
        let mut bin: Vec<LogicalFileView> = Vec::new();
        let mut bytes = 0;
        for file in files {
            if file.size() >= target || bytes + file.size() > target {
                bins.push(std::mem::take(&mut bin));
                bytes = 0;
            }
            if file.size() < target {
                bytes += file.size();
                bin.push(file);
            }
        }
        bins.push(bin);
        bins.retain(|bin| bin.len() > 1);
        if !bins.is_empty() {
            chosen.push(bins);
        }
    }
    Ok(chosen)
}

/// What merging a partition's files needs of the table, read once per compaction.
struct Merge {
    log_store: LogStoreRef,
    partition_columns: Vec<String>,
    /// The table's schema without its partition columns: what a data file holds.
    file_schema: SchemaRef,
    /// The table's properties: which columns' statistics a new file's `add` carries.
    snapshot: EagerSnapshot,
}

impl Merge {
    fn of(table: &DeltaTable) -> Result<Self, DeltaTableError> {
        let snapshot = table.snapshot()?;
        let partition_columns = snapshot.metadata().partition_columns().to_vec();
        let schema = snapshot.snapshot().arrow_schema();
        let fields: Vec<_> = schema
            .fields()
            .iter()
            .filter(|f| !partition_columns.contains(f.name()))
            .cloned()
            .collect();
        Ok(Self {
            log_store: table.log_store(),
            partition_columns,
            file_schema: Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone())),
            snapshot: snapshot.snapshot().clone(),
        })
    }

    /// Merges each bin of one partition's files into one new file: the actions of its commit,
    /// each merged file's `remove` and each new file's `add` (both `dataChange: false`: the
    /// rows are the same).
    ///
    /// # Errors
    /// A file cannot be read or written; the new files written before the failure are deleted
    /// again.
    async fn partition(
        &self,
        bins: &[Vec<LogicalFileView>],
    ) -> Result<Vec<Action>, DeltaTableError> {
        let mut removes = Vec::new();
        let mut adds = Vec::new();
        for bin in bins {
            match self.bin(bin).await {
                Ok(added) => adds.extend(added),
                Err(e) => {
                    let written: Vec<String> = adds.into_iter().map(|a: Add| a.path).collect();
                    append::delete_unreferenced(&self.log_store, &written).await;
                    return Err(e);
                }
            }
            removes.extend(bin.iter().map(|f| Action::Remove(f.remove_action(false))));
        }
        Ok(removes
            .into_iter()
            .chain(adds.into_iter().map(Action::Add))
            .collect())
    }

    /// Writes the rows of `bin` (files of one partition) as one new file: its `add`.
    async fn bin(&self, bin: &[LogicalFileView]) -> Result<Vec<Add>, DeltaTableError> {
        let Some(first) = bin.first() else {
            return Ok(Vec::new());
        };
        // The typed values (a date, a number) name the new file's folder as the old ones'.
        let values = first.partition_values();
        let values = (self.partition_columns.iter())
            .map(|column| {
                let data = values.as_ref();
                let at = data.and_then(|d| d.fields().iter().position(|f| f.name() == column));
                match (data, at) {
                    (Some(data), Some(at)) => Ok((column.clone(), data.values()[at].clone())),
                    _ => Err(DeltaTableError::Generic(format!(
                        "the file {} has no value of the partition column {column}",
                        first.path()
                    ))),
                }
            })
            .collect::<Result<IndexMap<_, _>, DeltaTableError>>()?;
        let config = PartitionWriterConfig::try_new(
            self.file_schema.clone(),
            values,
            Some(merged_file_properties()),
            // One file per bin: a bin is at most the target size already.
            None,
            None,
            None,
            None,
        )?;
        let properties = self.snapshot.table_properties();
        let mut writer = PartitionWriter::try_with_config(
            self.log_store.object_store(None),
            config,
            properties.num_indexed_cols(),
            (properties.data_skipping_stats_columns.as_ref())
                .map(|columns| columns.iter().map(ToString::to_string).collect()),
        )?;
        if let Err(e) = self.copy(bin, &mut writer).await {
            writer.abort().await.ok();
            return Err(e);
        }
        let mut adds = writer.close().await?;
        for add in &mut adds {
            add.data_change = false;
        }
        Ok(adds)
    }

    /// Writes the rows of `files`, in order, to `writer`.
    async fn copy(
        &self,
        files: &[LogicalFileView],
        writer: &mut PartitionWriter,
    ) -> Result<(), DeltaTableError> {
        let reader = ParquetFileReader::new(self.log_store.object_store(None));
        for file in files {
            let mut batches = reader.read_file(file.object_store_path()).await?;
            while let Some(batch) = batches.try_next().await? {
                writer
                    .write(&cast_record_batch(
                        &batch,
                        self.file_schema.clone(),
                        false,
                        true,
                    )?)
                    .await?;
            }
        }
        Ok(())
    }
}

/// Parquet settings of a merged file: what delta-rs's OPTIMIZE writes (zstd level 4), files
/// read far more often than written.
fn merged_file_properties() -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(4).expect("a valid level"),
        ))
        .build()
}

/// What the commits of other writers since the version a compaction read did to the files it
/// merges: a merge whose file another writer removed (another compaction, a delete), or any
/// merge after a change of the schema or the protocol, must not be committed. Appends are no
/// conflict.
struct Seen {
    /// Commits up to this version were read.
    version: u64,
    /// Paths (percent-decoded) those commits removed.
    removed: HashSet<String>,
    changed_table: bool,
}

impl Seen {
    fn record(&mut self, commit: &[u8]) -> Result<(), DeltaTableError> {
        for action in append::actions_of(commit)? {
            if action.get("metaData").is_some() || action.get("protocol").is_some() {
                self.changed_table = true;
            }
            let removed = action.get("remove").and_then(|r| r.get("path"));
            if let Some(path) = removed.and_then(|p| p.as_str()) {
                self.removed.insert(decoded(path));
            }
        }
        Ok(())
    }

    /// Reads the commits after `version` that are in the log now.
    async fn catch_up(&mut self, log_store: &dyn LogStore) -> Result<(), DeltaTableError> {
        while let Some(commit) = log_store.read_commit_entry(self.version + 1).await? {
            self.record(&commit)?;
            self.version += 1;
        }
        Ok(())
    }

    /// Why a merge of the files `rewritten` may not be committed after what was seen.
    fn conflict(&self, rewritten: &HashSet<String>) -> Option<&'static str> {
        if self.changed_table {
            Some("the table's schema or protocol changed")
        } else if rewritten.iter().any(|path| self.removed.contains(path)) {
            Some("another writer removed a file this merge rewrote")
        } else {
            None
        }
    }
}

/// A file's path in the log with its percent-encoding undone: writers differ in what they
/// encode.
fn decoded(path: &str) -> String {
    percent_encoding::percent_decode_str(path)
        .decode_utf8_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use arrow::array::{Date32Array, Decimal128Array, Int64Array, RecordBatch, StringArray};
    use arrow::datatypes::{DataType, Field};
    use datafusion::prelude::SessionContext;
    use engine::Sink;

    use super::super::{CompactionConfig, DeltaConfig, DeltaSink, open, register_table};
    use super::*;

    /// A trade table's columns, partitioned by the first two (a null symbol is a partition too).
    fn schema() -> SchemaRef {
        let columns = [
            ("symbol", DataType::Utf8),
            ("trade_date", DataType::Date32),
            ("trade_id", DataType::Int64),
            ("price", DataType::Decimal128(18, 8)),
        ];
        let fields = columns.map(|(name, kind)| Field::new(name, kind, name == "symbol"));
        Arc::new(Schema::new(fields.to_vec()))
    }

    /// Batch `n`'s rows: one per partition of three symbols (one of them null) on two dates.
    fn rows(n: i64) -> RecordBatch {
        let symbols = [Some("BTC-USD"), Some("ETH-USD"), None];
        let count = 6;
        RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(StringArray::from_iter((0..count).map(|i| symbols[i % 3]))),
                Arc::new(Date32Array::from_iter_values(
                    (0..count).map(|i| 20_000 + (i / 3) as i32),
                )),
                Arc::new(Int64Array::from_iter_values(
                    (0..count as i64).map(|i| n * 100 + i),
                )),
                Arc::new(
                    Decimal128Array::from_iter_values(
                        (0..count as i128).map(|i| 1_234_567_890_123 + n as i128 * 7 + i),
                    )
                    .with_precision_and_scale(18, 8)
                    .unwrap(),
                ),
            ],
        )
        .unwrap()
    }

    fn sink(path: &Path) -> DeltaSink {
        let config = DeltaConfig {
            path: path.to_owned(),
            partition_by: vec!["symbol".to_owned(), "trade_date".to_owned()],
            compaction: CompactionConfig {
                enabled: false,
                ..CompactionConfig::default()
            },
        };
        DeltaSink::new(config, schema())
    }

    /// The sink of a new table at `path` that holds `batches`.
    async fn table_with(path: &Path, batches: std::ops::Range<i64>) -> DeltaSink {
        let mut sink = sink(path);
        sink.healthcheck().await.unwrap();
        sink.bind_query("q", 0).await.unwrap();
        append(&mut sink, batches).await;
        sink
    }

    async fn append(sink: &mut DeltaSink, batches: std::ops::Range<i64>) {
        for n in batches {
            sink.write(n as u64, &[rows(n)]).await.unwrap();
        }
    }

    fn every_partition() -> Options {
        Options {
            idle_since_ms: None,
            active_partition_files: 1,
            target_file_size: NonZeroU64::new(128 * 1024 * 1024).unwrap(),
            retention: Duration::from_secs(7 * 24 * 3600),
        }
    }

    /// The table's rows as text, ordered by trade id, and its live files.
    async fn table_rows(path: &Path) -> (Vec<String>, usize) {
        let table = open(path).await.unwrap();
        let files = table.snapshot().unwrap().log_data().iter().count();
        let ctx = SessionContext::new();
        register_table(&ctx, "t", path, schema(), None)
            .await
            .unwrap();
        let sql = "SELECT symbol, trade_date, trade_id, price FROM t ORDER BY trade_id";
        let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
        let text = arrow::util::pretty::pretty_format_batches(&batches)
            .unwrap()
            .to_string();
        (text.lines().map(str::to_owned).collect(), files)
    }

    fn expected_rows(batches: std::ops::Range<i64>) -> Vec<String> {
        let all: Vec<_> = batches.map(rows).collect();
        let text = arrow::util::pretty::pretty_format_batches(&all)
            .unwrap()
            .to_string();
        text.lines().map(str::to_owned).collect()
    }

    /// The actions of commit `version` of the table at `path`.
    fn commit(path: &Path, version: u64) -> Vec<serde_json::Value> {
        let file = path.join(format!("_delta_log/{version:020}.json"));
        append::actions_of(&std::fs::read(file).unwrap()).unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn appends_go_on_while_a_compaction_merges_and_every_row_stays_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t");
        let mut sink = table_with(&path, 0..30).await;
        let (_, before) = table_rows(&path).await;
        assert_eq!(before, 6 * 30);

        let table = open(&path).await.unwrap();
        let gate = sink.gate.clone();
        let compaction =
            tokio::spawn(async move { compact_gated(table, every_partition(), &gate).await });
        let mut n = 30;
        loop {
            append(&mut sink, n..n + 1).await;
            n += 1;
            if compaction.is_finished() {
                break;
            }
        }
        let done = compaction.await.unwrap().unwrap();
        assert_eq!(
            (
                done.partitions,
                done.files_removed,
                done.files_added,
                done.conflicts
            ),
            (6, 6 * 30, 6, 0),
            "{done}"
        );
        let (rows, files) = table_rows(&path).await;
        assert_eq!(rows, expected_rows(0..n));
        // Each partition's merged file, plus what the appends made after its commit.
        assert!(files < 6 * n as usize, "{files} files after {n} batches");

        // Each merge is an OPTIMIZE commit of its own that changes no data, after the version
        // it read.
        let last = done.version.unwrap();
        let optimizes: Vec<_> = (0..=last)
            .map(|v| (v, commit(&path, v)))
            .filter(|(_, a)| a[0]["commitInfo"]["operation"] == "OPTIMIZE")
            .collect();
        assert_eq!(optimizes.len(), 6);
        for (version, actions) in optimizes {
            let info = &actions[0]["commitInfo"];
            assert!(info["readVersion"].as_u64().unwrap() < version, "{info}");
            let files: Vec<_> = actions[1..]
                .iter()
                .map(|a| a.get("add").or(a.get("remove")).unwrap())
                .collect();
            assert_eq!(files.len(), 31, "30 removed, 1 added: {actions:?}");
            assert!(
                files.iter().all(|f| f["dataChange"] == false),
                "{actions:?}"
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_merge_of_files_another_compaction_rewrote_first_is_not_committed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t");
        let mut sink = table_with(&path, 0..5).await;
        // Loaded before the other compaction: its plan merges the files that one removes.
        let stale = open(&path).await.unwrap();
        let first = compact(open(&path).await.unwrap(), every_partition())
            .await
            .unwrap();
        assert_eq!((first.partitions, first.conflicts), (6, 0), "{first}");
        append(&mut sink, 5..7).await;

        let second = compact_gated(stale, every_partition(), &CommitGate::default())
            .await
            .unwrap();
        assert_eq!((second.partitions, second.conflicts), (0, 6), "{second}");
        let (rows, files) = table_rows(&path).await;
        assert_eq!(rows, expected_rows(0..7));
        assert_eq!(
            files,
            6 + 6 * 2,
            "the first compaction's files and the later appends'"
        );
        // The merges that were not committed left no file behind: on disk are the live files
        // and the 30 the first compaction removed.
        assert_eq!(parquet_files(&path), 6 + 6 * 2 + 30);

        // VACUUM with no retention deletes every removed file.
        let last = compact(
            open(&path).await.unwrap(),
            Options {
                retention: Duration::ZERO,
                ..every_partition()
            },
        )
        .await
        .unwrap();
        assert_eq!(
            (last.partitions, last.files_removed, last.files_deleted),
            (6, 18, 48),
            "{last}"
        );
        assert_eq!(parquet_files(&path), 6);
        assert_eq!(table_rows(&path).await, (expected_rows(0..7), 6));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_sinks_log_checkpoint_holds_the_table_without_the_commits_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t");
        // Version 0 creates the table; batch 99 is version 100, `delta.checkpointInterval`.
        let mut sink = table_with(&path, 0..101).await;
        sink.close().await.unwrap();
        let log = path.join("_delta_log");
        let hint = std::fs::read_to_string(log.join("_last_checkpoint")).unwrap();
        let hint: serde_json::Value = serde_json::from_str(&hint).unwrap();
        assert_eq!(hint["version"], 100, "{hint}");
        assert!(log.join(format!("{:020}.checkpoint.parquet", 100)).exists());
        for version in 0..=100 {
            std::fs::remove_file(log.join(format!("{version:020}.json"))).unwrap();
        }
        assert_eq!(table_rows(&path).await, (expected_rows(0..101), 6 * 101));
    }

    /// Data files in the table's folder (in its partition folders), referenced or not.
    fn parquet_files(dir: &Path) -> usize {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|p| !p.ends_with("_delta_log"))
            .map(|p| match p.is_dir() {
                true => parquet_files(&p),
                false => usize::from(p.extension().is_some_and(|e| e == "parquet")),
            })
            .sum()
    }
}
