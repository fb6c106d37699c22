//! `[sink] type = "delta"`: the embedded store as a Delta Lake table (the `deltalake` crate), the
//! table format Spark, pandas (`deltalake`), DuckDB and polars read.
//!
//! - Each micro-batch is one atomic Delta commit carrying a `txn` action (application id = the
//!   query's id, version = the batch id), as Spark's Delta sink writes it. A batch replayed after
//!   a crash between the commit and the checkpoint's commit log finds its id recorded in the
//!   table and is not written twice.
//! - The commit is a blind append ([`append`]): it reads nothing of the table, so a commit costs
//!   the same at the 100,000th batch as at the first. Checkpoints of the log (every
//!   `delta.checkpointInterval` commits, 100 by default), which readers start from, are written
//!   in the background.
//! - Partitioned Hive-style by `partition_by` (the partition columns live in the folder names and
//!   the log, not in the files, as the Delta protocol says).
//! - Compaction (Delta's OPTIMIZE, bin-packing) runs in the background while the stream goes on:
//!   every `every_batches` batches or `interval`, the small files of each partition that received
//!   no file since the previous compaction (a finished day, a product no longer traded), or that
//!   holds `active_partition_files` small files already, are merged in one commit per partition;
//!   then VACUUM deletes the files removed from the table longer than `retention` ago. Appends and compactions are both commits of the one table, so a
//!   reader sees the table before or after each, never both the old and the new files.

mod append;
pub mod maintenance;
mod read;

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::prelude::SessionContext;
use deltalake::kernel::engine::arrow_conversion::TryIntoKernel;
use deltalake::kernel::schema::cast::normalize_for_delta;
use deltalake::kernel::transaction::TransactionError;
use deltalake::kernel::{LogicalFileView, StructType};
use deltalake::protocol::SaveMode;
use deltalake::{DeltaTable, DeltaTableError};
use engine::{Error, Result, Retry, Sink};
use futures::FutureExt;
use serde::Deserialize;
use tokio::task::JoinHandle;

use crate::common::config::{Problem, partition_columns_problem};
use crate::common::files::io_retry;
use crate::common::store::{exists_or_warn, register_empty};

/// `[sink] type = "delta"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeltaConfig {
    /// The table's folder, relative to the config file.
    #[serde(deserialize_with = "crate::common::config::path")]
    pub path: PathBuf,
    /// Columns whose values name the partition folders, outermost first. Fixed when the table is
    /// created: a table with other partition columns is refused.
    #[serde(default)]
    pub partition_by: Vec<String>,
    /// `[sink.compaction]`: when small files are merged and old ones deleted.
    #[serde(default)]
    pub compaction: CompactionConfig,
}

/// `[sink.compaction]` of a Delta sink.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CompactionConfig {
    /// `false` turns background compaction off (`coinstream compact` still works).
    pub enabled: bool,
    /// Compact after this many batches since the last compaction.
    #[serde(deserialize_with = "crate::common::config::at_least_one")]
    pub every_batches: NonZeroU64,
    /// Compact also when this much time passed since the last compaction (`"10m"`); unset: by
    /// batch count only.
    #[serde(deserialize_with = "crate::common::config::optional_positive_secs")]
    pub interval: Option<Duration>,
    /// A partition that still receives data (today's) is compacted too once it holds this many
    /// small files, so the file count a writer and every reader pay for stays bounded.
    #[serde(deserialize_with = "crate::common::config::at_least_one")]
    pub active_partition_files: NonZeroU64,
    /// Bytes a merged file aims at; files this large already are left alone.
    #[serde(deserialize_with = "crate::common::config::at_least_one")]
    pub target_file_size: NonZeroU64,
    /// How long a file removed from the table (by compaction) is kept for readers of older
    /// versions (`query --as-of`) before VACUUM deletes it (`"7d"`, Delta's default).
    #[serde(deserialize_with = "crate::common::config::secs")]
    pub retention: Duration,
    /// How long the log keeps a commit (`delta.logRetentionDuration`, set when the table is
    /// created): older commits are deleted at compaction, after a checkpoint covers them, and
    /// `--as-of` cannot reach back further. A micro-batch is a commit, and every commit lists
    /// the log, so a short one keeps commits cheap (default `"2d"`; Delta's own is 30 days).
    #[serde(deserialize_with = "crate::common::config::secs")]
    pub log_retention: Duration,
}

impl Default for CompactionConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            every_batches: NonZeroU64::new(1000).expect("not zero"),
            interval: None,
            active_partition_files: NonZeroU64::new(200).expect("not zero"),
            target_file_size: NonZeroU64::new(128 * 1024 * 1024).expect("not zero"),
            retention: Duration::from_secs(7 * 24 * 3600),
            log_retention: Duration::from_secs(2 * 24 * 3600),
        }
    }
}

impl DeltaConfig {
    /// A problem at `partition_by` when it names columns the transform's output `schema` lacks.
    pub fn check_columns(&self, schema: &SchemaRef) -> Option<Problem> {
        partition_columns_problem(&self.partition_by, schema)
    }
}

/// The Delta sink.
pub struct DeltaSink {
    config: DeltaConfig,
    /// The transform's output schema: the table's, when this sink creates it.
    schema: SchemaRef,
    /// The `txn` application id: the query's id ([`Sink::bind_query`]).
    app_id: String,
    table: Option<DeltaTable>,
    /// Whether the next write must first ask the table whether its batch is there already: at
    /// the first write of a run (the replay of a batch the last run did not commit) and after a
    /// failed write (whose commit may have landed before the failure was seen).
    verify_next: bool,
    /// The last batch id this instance committed: a batch written again in the same run (the
    /// runtime does after a failed checkpoint commit) is known to be there.
    last_written: Option<u64>,
    batches_since_compaction: u64,
    last_compaction: Instant,
    /// The time (ms since the epoch) the previous compaction started: partitions with a file
    /// newer than this still receive data and are left alone.
    idle_since_ms: i64,
    compaction: Option<JoinHandle<std::result::Result<maintenance::Compacted, DeltaTableError>>>,
    /// The blind-append writer, built from the table at the first write of a run and again
    /// after the table changed under it; `None` until then.
    appender: Option<append::Appender>,
    /// The version the last checkpoint was started at.
    checkpointed: u64,
    /// The running background checkpoint: the version it covers.
    checkpoint: Option<JoinHandle<std::result::Result<u64, DeltaTableError>>>,
    /// Taken by an append's commit and a background compaction's.
    gate: maintenance::CommitGate,
}

/// How a background compaction ended: the task's own result inside the join's.
type CompactionResult = std::result::Result<
    std::result::Result<maintenance::Compacted, DeltaTableError>,
    tokio::task::JoinError,
>;

impl DeltaSink {
    /// Builds the sink for rows of `schema`; nothing is touched before [`Sink::healthcheck`].
    pub fn new(config: DeltaConfig, schema: SchemaRef) -> Self {
        Self {
            config,
            schema,
            app_id: engine::checkpoint::query_id(),
            table: None,
            verify_next: true,
            last_written: None,
            batches_since_compaction: 0,
            last_compaction: Instant::now(),
            idle_since_ms: now_ms(),
            compaction: None,
            appender: None,
            checkpointed: 0,
            checkpoint: None,
            gate: maintenance::CommitGate::default(),
        }
    }

    fn failed(&self, what: &str, e: DeltaTableError) -> Error {
        let retry = retry_of(&e);
        Error::sink_failed(self.description(), what.to_owned(), retry).caused_by(e)
    }

    /// The table, opened (or found not created yet) at the first use.
    async fn table(&mut self) -> Result<&mut DeltaTable> {
        if self.table.is_none() {
            let table = open(&self.config.path)
                .await
                .map_err(|e| self.failed("cannot open the table", e))?;
            self.table = Some(table);
        }
        Ok(self.table.as_mut().expect("just set"))
    }

    /// Whether batch `batch_id` of this query is already in the table.
    async fn already_written(&mut self, batch_id: u64) -> Result<bool> {
        let app_id = self.app_id.clone();
        let table = self.table().await?;
        if table.version().is_none() {
            return Ok(false);
        }
        table
            .update_state()
            .await
            .map_err(|e| self.failed("cannot read the table's log", e))?;
        let table = self.table.as_ref().expect("opened above");
        let recorded = table
            .snapshot()
            .map_err(|e| self.failed("cannot read the table's log", e))?
            .transaction_version(table.log_store().as_ref(), &app_id)
            .await
            .map_err(|e| self.failed("cannot read the table's transactions", e))?;
        Ok(recorded.is_some_and(|v| v >= batch_id as i64))
    }

    /// `log_retention` as the table property `delta.logRetentionDuration` spells it.
    fn log_retention(&self) -> String {
        format!(
            "interval {} seconds",
            self.config.compaction.log_retention.as_secs()
        )
    }

    /// Logs what a finished compaction did; a failed one is only logged (the next one tries
    /// again, and the stream's rows do not depend on it).
    fn report_compaction(&self, finished: CompactionResult) {
        let table = self.config.path.display();
        match finished {
            Ok(Ok(done)) => tracing::info!(%table, %done, "Compacted idle partitions."),
            Ok(Err(e)) => tracing::warn!(%table, error = %engine::report(&e),
                "Compaction failed; the next one tries again."),
            Err(e) => tracing::warn!(%table, error = %e, "Compaction task failed."),
        }
    }

    /// Starts a background compaction when one is due and none is running.
    fn maybe_compact(&mut self) {
        let c = &self.config.compaction;
        if !c.enabled {
            return;
        }
        match background(&mut self.compaction) {
            Background::Running => return,
            Background::Free(Some(finished)) => self.report_compaction(finished),
            Background::Free(None) => {}
        }
        let due = self.batches_since_compaction >= c.every_batches.get()
            || c.interval
                .is_some_and(|i| self.last_compaction.elapsed() >= i);
        if !due {
            return;
        }
        let options = maintenance::Options::of(c, Some(self.idle_since_ms));
        self.batches_since_compaction = 0;
        self.last_compaction = Instant::now();
        self.idle_since_ms = now_ms();
        // Opened afresh (from the latest checkpoint): the sink's own state of the table is not
        // kept up to date by its blind appends. At the version this sink committed last: a
        // listing of the log taken while appends land may show a later commit without the one
        // before it, which the reader refuses as a gap.
        let path = self.config.path.clone();
        let version = (self.appender.as_ref().map(append::Appender::version))
            .or_else(|| self.table.as_ref().and_then(DeltaTable::version));
        let gate = self.gate.clone();
        self.compaction = Some(tokio::spawn(async move {
            // No gate: every commit up to `version` was complete before the listing began.
            let table = open_at(&path, version).await?;
            maintenance::compact_gated(table, options, &gate).await
        }));
    }

    /// Starts a background checkpoint of `version` when `interval` commits passed since the
    /// last one started and none is running (one that takes longer than `interval` commits, on
    /// a table of many files, makes the next come later: the stream does not wait for it).
    fn maybe_checkpoint(&mut self, version: u64, interval: u64) {
        match background(&mut self.checkpoint) {
            Background::Running => return,
            Background::Free(Some(finished)) => self.report_checkpoint(finished),
            Background::Free(None) => {}
        }
        if version < self.checkpointed + interval {
            return;
        }
        self.checkpointed = version;
        let path = self.config.path.clone();
        self.checkpoint = Some(tokio::spawn(async move {
            checkpoint(&path, version).await?;
            Ok(version)
        }));
    }

    /// Logs how a background checkpoint ended; a failed one is only logged (readers replay
    /// more commits until the next one).
    fn report_checkpoint(
        &self,
        finished: std::result::Result<
            std::result::Result<u64, DeltaTableError>,
            tokio::task::JoinError,
        >,
    ) {
        let table = self.config.path.display();
        match finished {
            Ok(Ok(version)) => tracing::debug!(%table, version, "Checkpoint written."),
            Ok(Err(e)) => tracing::warn!(%table, error = %engine::report(&e),
                "Checkpoint failed; the next one tries again."),
            Err(e) => tracing::warn!(%table, error = %e, "Checkpoint task failed."),
        }
    }

    /// Records batch `batch_id` as committed by this instance and starts a compaction if due.
    fn written(&mut self, batch_id: u64) {
        self.last_written = Some(batch_id);
        self.batches_since_compaction += 1;
        self.maybe_compact();
    }

    /// Forgets what this sink knew of the table: the next write opens it again and asks it
    /// whether its batch is there.
    fn forget_table(&mut self) {
        self.verify_next = true;
        self.table = None;
        self.appender = None;
    }

    /// The appender of the table, created first when it has no version yet (a sink not bound to
    /// a query: its first batch creates the table).
    ///
    /// # Errors
    /// The table cannot be created or read, or it uses table features a blind append cannot
    /// honour (permanent).
    async fn appender_of_table(&mut self) -> Result<append::Appender> {
        if self.table().await?.version().is_none() {
            self.create_table().await?;
        }
        let table = self.table().await?;
        let version = table.version().unwrap_or_default();
        let appender = append::Appender::of(table);
        let Some(appender) = appender.map_err(|e| self.failed("cannot read the table", e))? else {
            return Err(Error::sink_failed(
                self.description(),
                "the table uses Delta table features a blind append cannot honour (a writer \
                 protocol above 2, or column mapping); coinstream writes only tables without \
                 them: write to another path"
                    .to_owned(),
                Retry::Permanent,
            ));
        };
        // The first checkpoint of a run comes `interval` commits after its start.
        self.checkpointed = self.checkpointed.max(version);
        Ok(appender)
    }

    /// Creates the table, empty, with the sink's columns and `partition_by`. A table another
    /// writer created meanwhile is taken as it is (its layout is checked at the next start).
    async fn create_table(&mut self) -> Result<()> {
        let table = self.table().await?.clone();
        let columns: StructType = normalize_for_delta(&self.schema)
            .as_ref()
            .try_into_kernel()
            .map_err(|e| self.failed("the output's columns have no Delta type", e.into()))?;
        let created = table
            .create()
            .with_columns(columns.fields().cloned())
            .with_partition_columns(self.config.partition_by.clone())
            .with_configuration([("delta.logRetentionDuration", Some(self.log_retention()))])
            .with_save_mode(SaveMode::Ignore)
            .await
            .map_err(|e| {
                // A lost response may have left it created: open it again before the retry.
                self.forget_table();
                self.failed("cannot create the table", e)
            })?;
        self.table = Some(created);
        Ok(())
    }
}

#[async_trait]
impl Sink for DeltaSink {
    fn description(&self) -> String {
        format!("delta {}", self.config.path.display())
    }

    async fn healthcheck(&mut self) -> Result<()> {
        std::fs::create_dir_all(&self.config.path).map_err(|e| {
            Error::sink_failed(self.description(), "cannot create the folder", io_retry(&e))
                .caused_by(e)
        })?;
        let table = self.table().await?;
        let Ok(snapshot) = table.snapshot() else {
            return Ok(()); // created by the first write
        };
        let found = snapshot.metadata().partition_columns().to_vec();
        let table_has_rows_of_another_layout = found != self.config.partition_by;
        if table_has_rows_of_another_layout {
            return Err(Error::sink_failed(
                self.description(),
                format!(
                    "the table is partitioned by {found:?} and the config says partition_by = {:?}; \
                     write to another path, or set partition_by to the table's",
                    self.config.partition_by
                ),
                Retry::Permanent,
            ));
        }
        Ok(())
    }

    async fn bind_query(&mut self, query_id: &str, committed_batches: u64) -> Result<()> {
        self.app_id = query_id.to_owned();
        if self.table().await?.version().is_some() {
            return Ok(());
        }
        if committed_batches > 0 {
            // Writing on would leave the table without the rows of those batches, silently.
            return Err(Error::sink_failed(
                self.description(),
                format!(
                    "the query's checkpoint says it committed {committed_batches} batches, but \
                     there is no Delta table here: their rows went to another store (before \
                     Delta, the default was a Parquet folder at the same path) or the table was \
                     deleted. Delete the checkpoint folder to write every row here, or point \
                     sink.path at the table"
                ),
                Retry::Permanent,
            ));
        }
        // Created now, empty, so that a run whose batches hold no rows (no portfolio trade yet)
        // still leaves a table, and the check above means what it says at the next start.
        self.create_table().await
    }

    async fn write(&mut self, batch_id: u64, batches: &[RecordBatch]) -> Result<()> {
        if batches.iter().all(|b| b.num_rows() == 0) {
            return Ok(());
        }
        let known = self.last_written.is_some_and(|last| batch_id <= last);
        if known || (self.verify_next && self.already_written(batch_id).await?) {
            tracing::info!(batch_id, table = %self.config.path.display(),
                "The table already holds this batch (its txn is recorded); not writing it again.");
            self.verify_next = false;
            self.last_written = Some(self.last_written.map_or(batch_id, |l| l.max(batch_id)));
            return Ok(());
        }
        self.verify_next = false;
        let appender = match self.appender.take() {
            Some(appender) => appender,
            None => self.appender_of_table().await?,
        };
        let appender = self.appender.insert(appender);
        let interval = appender.checkpoint_interval();
        match appender
            .append(&self.gate, &self.app_id, batch_id, batches)
            .await
        {
            Ok(append::Appended::Committed(version)) => {
                self.written(batch_id);
                self.maybe_checkpoint(version, interval);
                Ok(())
            }
            Ok(append::Appended::AlreadyThere(version)) => {
                tracing::warn!(batch_id, version, table = %self.config.path.display(),
                    "Another writer of this query committed this batch; not writing it again.");
                self.last_written = Some(self.last_written.map_or(batch_id, |l| l.max(batch_id)));
                Ok(())
            }
            Ok(append::Appended::Stale(version)) => {
                self.forget_table();
                Err(Error::sink_failed(
                    self.description(),
                    format!(
                        "version {version} of the table changed its schema or protocol while this \
                         run wrote to it; opening it again"
                    ),
                    Retry::Transient,
                ))
            }
            Err(e) => {
                // The commit may have landed before the error (a lost response): ask the table
                // before writing this batch again.
                self.forget_table();
                Err(self.failed("cannot commit the batch", e))
            }
        }
    }

    async fn close(&mut self) -> Result<()> {
        if let Some(running) = self.compaction.take() {
            tracing::info!("Waiting for the running compaction to finish.");
            self.report_compaction(running.await);
        }
        if let Some(running) = self.checkpoint.take() {
            tracing::debug!("Waiting for the running checkpoint to finish.");
            self.report_checkpoint(running.await);
        }
        Ok(())
    }
}

/// Opens the table at `path` (a folder); a folder without a Delta log is a table not created
/// yet (`version()` is `None`).
///
/// # Errors
/// The log cannot be read (permissions, a corrupt log).
pub async fn open(path: &Path) -> std::result::Result<DeltaTable, DeltaTableError> {
    let url = table_url(path)?;
    if !path.join("_delta_log").is_dir() {
        // Not loaded: loading a folder without a log fails (and the kernel logs that failure as
        // an error) where "not created yet" is the expected state of a first run.
        return deltalake::DeltaTableBuilder::from_url(url)?.build();
    }
    DeltaTable::try_from_url(url).await
}

/// The table at `path` as of `version` (`None`: the latest).
async fn open_at(
    path: &Path,
    version: Option<u64>,
) -> std::result::Result<DeltaTable, DeltaTableError> {
    let Some(version) = version else {
        return open(path).await;
    };
    let mut table = deltalake::DeltaTableBuilder::from_url(table_url(path)?)?.build()?;
    table.load_version(version).await?;
    Ok(table)
}

/// Writes the log checkpoint of `version` of the table at `path` with the Delta kernel, which
/// streams the previous checkpoint and the commits since into the new one. delta-rs's
/// `create_checkpoint_from_table_url_and_cleanup` does the same after loading the whole table
/// (every live file's `add` with its parsed statistics, about 10 KB a file), which it uses only to
/// delete expired commits: that load made a checkpoint's memory and CPU grow with the table.
/// Expired commits are deleted at compaction, not here. The kernel's work is blocking I/O and
/// Parquet encoding: on a blocking thread, not the stream's.
///
/// # Errors
/// The log up to `version` cannot be read, or the checkpoint cannot be written.
async fn checkpoint(path: &Path, version: u64) -> std::result::Result<(), DeltaTableError> {
    let log_store = deltalake::DeltaTableBuilder::from_url(table_url(path)?)?
        .build()?
        .log_store();
    let engine = log_store.engine(None);
    let root = log_store.transaction_url(None)?;
    tokio::task::spawn_blocking(move || {
        let snapshot = delta_kernel::Snapshot::builder_for(root)
            .at_version(version)
            .build(engine.as_ref())?;
        snapshot.checkpoint(engine.as_ref(), None)?;
        Ok(())
    })
    .await
    .map_err(|e| DeltaTableError::Generic(format!("the checkpoint task failed: {e}")))?
}

fn table_url(path: &Path) -> std::result::Result<url::Url, DeltaTableError> {
    let text = path.to_str().ok_or_else(|| {
        DeltaTableError::InvalidTableLocation(format!("{} is not UTF-8", path.display()))
    })?;
    deltalake::ensure_table_uri(text)
}

/// Which version of a table `query` reads: Delta's time travel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AsOf {
    /// The table as a commit left it.
    Version(u64),
    /// The table as it was at an instant (the last commit at or before it).
    Timestamp(chrono::DateTime<chrono::Utc>),
}

impl std::str::FromStr for AsOf {
    type Err = String;

    /// A version number (`12`) or an RFC 3339 instant (`2026-11-30T12:00:00Z`).
    fn from_str(text: &str) -> std::result::Result<Self, String> {
        if let Ok(version) = text.parse::<u64>() {
            return Ok(AsOf::Version(version));
        }
        chrono::DateTime::parse_from_rfc3339(text)
            .map(|t| AsOf::Timestamp(t.to_utc()))
            .map_err(|e| {
                format!("{text:?} is neither a table version (12) nor an RFC 3339 instant (2026-11-30T12:00:00Z): {e}")
            })
    }
}

/// Registers the Delta table at `path` as table `name` for `query` and reports, at its latest
/// version or `as_of` an earlier one. A table not created yet (a run stored nothing: no portfolio
/// trade yet, or every row dead-lettered), or whose folder no run has written yet, is an empty
/// table of `schema`, the transform's output schema (with a warning for the missing folder).
///
/// # Errors
/// The log cannot be read, `as_of` is given for a table no run has written, or `as_of` names a version the table does
/// not have (or an instant before its first commit).
pub async fn register_table(
    session: &SessionContext,
    name: &str,
    path: &Path,
    schema: SchemaRef,
    as_of: Option<&AsOf>,
) -> Result<()> {
    if !exists_or_warn(name, path) {
        if as_of.is_some() {
            return Err(Error::config(
                path.display().to_string(),
                "--as-of: no run has written this table yet".to_owned(),
            ));
        }
        return register_empty(session, name, path, schema);
    }
    let failed = |what: String, e: DeltaTableError| {
        Error::sink_failed(format!("delta {}", path.display()), what, retry_of(&e)).caused_by(e)
    };
    let mut table = open(path)
        .await
        .map_err(|e| failed("cannot open the table".into(), e))?;
    if table.version().is_none() {
        if as_of.is_some() {
            return Err(Error::config(
                path.display().to_string(),
                "--as-of: the table has no version yet".to_owned(),
            ));
        }
        return register_empty(session, name, path, schema);
    }
    match as_of {
        None => {}
        Some(AsOf::Version(v)) => table
            .load_version(*v)
            .await
            .map_err(|e| failed(format!("cannot load version {v}"), e))?,
        Some(AsOf::Timestamp(t)) => {
            table
                .load_with_datetime(*t)
                .await
                .map_err(|e| failed(format!("cannot load the version as of {t}"), e))?;
            // The table's first version when `t` is earlier still: refused, as Spark does, rather
            // than answered with rows that did not exist at `t`.
            let loaded = table.version().unwrap_or_default();
            let committed = table
                .snapshot()
                .ok()
                .and_then(|s| s.version_timestamp(loaded));
            if let Some(committed) = committed.filter(|&c| c > t.timestamp_millis()) {
                let first = chrono::DateTime::from_timestamp_millis(committed).unwrap_or_default();
                return Err(Error::config(
                    path.display().to_string(),
                    format!(
                        "--as-of {t}: the table has no version then; its first commit is at {first}"
                    ),
                ));
            }
        }
    }
    let root = path.canonicalize().map_err(|e| Error::io(path, e))?;
    let version = read::DeltaVersion::of(&table, &root)
        .map_err(|e| failed("cannot read the table".into(), e))?;
    session.register_table(name, Arc::new(version))?;
    Ok(())
}

/// Whether retrying may help: storage and commit races are worth another try; a table whose
/// schema or partitioning does not fit the rows, or a corrupt log, is not.
fn retry_of(e: &DeltaTableError) -> Retry {
    match e {
        DeltaTableError::Io { source } => io_retry(source),
        DeltaTableError::ObjectStore { .. } => Retry::Transient,
        DeltaTableError::Transaction {
            source:
                TransactionError::VersionAlreadyExists(_)
                | TransactionError::CommitConflict(_)
                | TransactionError::MaxCommitAttempts(_)
                | TransactionError::ObjectStore { .. }
                | TransactionError::LogStoreError { .. },
        } => Retry::Transient,
        DeltaTableError::VersionAlreadyExists(_) => Retry::Transient,
        _ => Retry::Permanent,
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// A partition's values as the log holds them, by column name in order:
/// `[("symbol", Some("BTC-USD")), ("trade_date", Some("2026-11-30"))]`.
pub type PartitionValues = Vec<(String, Option<String>)>;

/// Files of the table that readers see now, by partition: each file's size in bytes and the
/// time it was written (ms since the epoch).
pub fn files_by_partition(
    table: &DeltaTable,
) -> std::result::Result<HashMap<PartitionValues, Vec<(i64, i64)>>, DeltaTableError> {
    Ok(live_files(table)?
        .into_iter()
        .map(|(partition, files)| {
            let files = files.iter().map(|f| (f.size(), f.modification_time()));
            (partition, files.collect())
        })
        .collect())
}

/// The live files of the table's loaded version, by partition.
fn live_files(
    table: &DeltaTable,
) -> std::result::Result<BTreeMap<PartitionValues, Vec<LogicalFileView>>, DeltaTableError> {
    let mut by_partition: BTreeMap<_, Vec<_>> = BTreeMap::new();
    for file in table.snapshot()?.log_data().iter() {
        let mut values: PartitionValues = file.partition_values_map().into_iter().collect();
        values.sort();
        by_partition.entry(values).or_default().push(file);
    }
    Ok(by_partition)
}

/// A background task's slot (compaction, checkpoint): still running, or free to start another,
/// with the result of the one that finished since the last look.
enum Background<T> {
    Running,
    Free(Option<T>),
}

/// Looks at `slot` without waiting: a finished task is taken out and its result returned.
fn background<T>(
    slot: &mut Option<JoinHandle<T>>,
) -> Background<std::result::Result<T, tokio::task::JoinError>> {
    match slot {
        Some(running) if !running.is_finished() => Background::Running,
        // Finished: its result is ready, so `now_or_never` does not wait.
        _ => Background::Free(slot.take().and_then(FutureExt::now_or_never)),
    }
}
