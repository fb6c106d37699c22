//! Blind appends: a micro-batch's files and its `txn` action written as the next commit of the
//! log, without loading the table's state.
//!
//! delta-rs's own write (`DeltaTable::write`) rebuilds the table's state after each commit:
//! it replays every live file's `add` action (the last checkpoint plus the commits since), so
//! its cost per commit grows with the table's file count (7 ms at the first one-message batch,
//! 138 ms at the 1,470th). An append reads nothing of the table, as Delta's blind appends do:
//! it needs only the version it commits after, which this module keeps in memory.
//!
//! A commit is one `_delta_log/<version>.json` created with put-if-absent (what delta-rs's own
//! default log store does): the commit info, the files' `add` actions and the `txn` action
//! (application id, batch id) land together or not at all. When another writer took the
//! version first (a background compaction, another process), its commit is read: a compaction
//! or another append does not conflict with a blind append, so the append takes the next
//! version; the same query's `txn` for this batch means the batch is there already; a changed
//! schema or protocol means this state is stale and the table must be opened again.

use std::collections::HashMap;

use arrow::array::RecordBatch;
use deltalake::kernel::transaction::CommitData;
use deltalake::kernel::{Action, Transaction};
use deltalake::logstore::LogStoreRef;
use deltalake::logstore::object_store::{self, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::table::config::TablePropertiesExt;
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use deltalake::{DeltaTable, DeltaTableError, Path};

/// What a blind append needs to know of a table, kept between commits.
pub(super) struct Appender {
    log_store: LogStoreRef,
    /// Writes the Parquet files (partition folders, statistics) and returns their `add`
    /// actions; emptied by each flush. In a mutex only to be `Sync` (the writer's encoders are
    /// not, and the sink is shared across awaits): it is reached through `&mut self`, unlocked.
    writer: tokio::sync::Mutex<RecordBatchWriter>,
    partition_by: Vec<String>,
    /// The latest version of the table this appender knows of: its next commit is the one after.
    version: u64,
    /// `delta.checkpointInterval`: commits between two checkpoints.
    checkpoint_interval: u64,
}

/// How an append ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Appended {
    /// Committed as this version of the table.
    Committed(u64),
    /// Another writer of the same query committed this batch already (its `txn` is in the log
    /// at this version); the files this append wrote were deleted again.
    AlreadyThere(u64),
    /// The table's schema or protocol changed since this appender was built (at this version):
    /// nothing was committed; open the table again.
    Stale(u64),
}

impl Appender {
    /// The appender of `table` (loaded, at its latest version as far as the caller knows), or
    /// `None` when the table needs more of a writer than a blind append does: a writer protocol
    /// above 2 (table features such as deletion vectors, row tracking, constraints) or column
    /// mapping, which the sink refuses.
    ///
    /// # Errors
    /// The table has no version yet, or its schema cannot be read.
    pub(super) fn of(table: &DeltaTable) -> Result<Option<Self>, DeltaTableError> {
        let snapshot = table.snapshot()?;
        if snapshot.protocol().min_writer_version() > 2 {
            return Ok(None);
        }
        let Ok(writer) = RecordBatchWriter::for_table(table) else {
            // Column mapping, which the plain writer refuses.
            return Ok(None);
        };
        Ok(Some(Self {
            log_store: table.log_store(),
            writer: tokio::sync::Mutex::new(writer),
            partition_by: snapshot.metadata().partition_columns().to_vec(),
            version: snapshot.version(),
            checkpoint_interval: snapshot.table_config().checkpoint_interval().get(),
        }))
    }

    /// The latest version of the table this appender knows of.
    pub(super) fn version(&self) -> u64 {
        self.version
    }

    /// `delta.checkpointInterval` of the table.
    pub(super) fn checkpoint_interval(&self) -> u64 {
        self.checkpoint_interval
    }

    /// Writes `batches` (rows of the table's schema) as new files and commits them with the
    /// `txn` action (`app_id`, `batch_id`) as the next version. Costs the same at the
    /// millionth commit as at the first: nothing of the table is read, except the commits
    /// another writer made in between.
    ///
    /// # Errors
    /// Writing a file or the commit failed, or a commit of another writer cannot be read. The
    /// commit may have landed before a failure was seen: ask the table before writing the
    /// batch again.
    pub(super) async fn append(
        &mut self,
        gate: &super::maintenance::CommitGate,
        app_id: &str,
        batch_id: u64,
        batches: &[RecordBatch],
    ) -> Result<Appended, DeltaTableError> {
        let writer = self.writer.get_mut();
        for batch in batches.iter().filter(|b| b.num_rows() > 0) {
            writer.write(batch.clone()).await?;
        }
        let adds = writer.flush().await?;
        let partition_by = (!self.partition_by.is_empty()).then(|| self.partition_by.clone());
        let commit = CommitData::new(
            adds.into_iter().map(Action::Add).collect(),
            DeltaOperation::Write {
                mode: SaveMode::Append,
                partition_by,
                predicate: None,
            },
            HashMap::from([("isBlindAppend".to_owned(), serde_json::Value::Bool(true))]),
            vec![Transaction::new(app_id, batch_id as i64)],
        );
        let bytes = commit.get_bytes()?;
        let put = put_after(
            &self.log_store,
            gate,
            self.version,
            bytes.into(),
            |theirs| {
                Ok(match other_commit(theirs, app_id, batch_id)? {
                    Other::NoConflict => None,
                    stop => Some(stop),
                })
            },
        )
        .await?;
        Ok(match put {
            Put::Committed(version) => {
                self.version = version;
                Appended::Committed(version)
            }
            Put::Stopped(version, other) => {
                delete_unreferenced(&self.log_store, &added_paths(&commit.actions)).await;
                if other == Other::ThisBatch {
                    self.version = version;
                    Appended::AlreadyThere(version)
                } else {
                    Appended::Stale(version)
                }
            }
        })
    }
}

/// How [`put_after`] ended.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Put<S> {
    /// The commit is this version of the table.
    Committed(u64),
    /// Nothing was committed: another writer's commit at this version is in the way, for the
    /// judge's reason.
    Stopped(u64, S),
}

/// Puts the commit `bytes` as the first free version of the log after `after`, each version
/// created with put-if-absent. A version another writer took first is read and given to
/// `judge`: `None` (no conflict) moves on to the next version, `Some(reason)` stops there.
///
/// The gate is held from the first put to the last: a writer that may be many versions behind
/// (a compaction that merged for seconds while the stream appended) reads those commits before
/// it calls this, without the gate (reading a commit by name needs none; only listings of the
/// log do).
///
/// # Errors
/// The put failed for another reason than an existing version, a commit of another writer
/// cannot be read, or `judge` failed.
pub(super) async fn put_after<S>(
    log_store: &LogStoreRef,
    gate: &super::maintenance::CommitGate,
    after: u64,
    bytes: PutPayload,
    mut judge: impl FnMut(&[u8]) -> Result<Option<S>, DeltaTableError>,
) -> Result<Put<S>, DeltaTableError> {
    let mut version = after + 1;
    let store = log_store.object_store(None);
    let create = PutOptions {
        mode: PutMode::Create,
        ..PutOptions::default()
    };
    // Held to the end: another commit of this process waits for this one, and this one for it.
    let _committing = gate.lock().await;
    loop {
        let path = Path::from(format!("_delta_log/{version:020}.json"));
        match store.put_opts(&path, bytes.clone(), create.clone()).await {
            Ok(_) => return Ok(Put::Committed(version)),
            Err(object_store::Error::AlreadyExists { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        let theirs = log_store.read_commit_entry(version).await?.ok_or_else(|| {
            DeltaTableError::Generic(format!(
                "commit {version} exists for a put but cannot be read"
            ))
        })?;
        if let Some(stop) = judge(&theirs)? {
            return Ok(Put::Stopped(version, stop));
        }
        version += 1;
    }
}

/// The paths of the files `actions` add.
pub(super) fn added_paths(actions: &[Action]) -> Vec<String> {
    (actions.iter())
        .filter_map(|action| match action {
            Action::Add(add) => Some(add.path.clone()),
            _ => None,
        })
        .collect()
}

/// Deletes the data files at `adds` (paths in the table, as their `add` actions name them), which no commit references (a commit that was not made):
/// VACUUM in its default (lite) mode deletes only files a commit removed, so these would stay in
/// the folder for good. A file that cannot be deleted is only logged.
pub(super) async fn delete_unreferenced(log_store: &LogStoreRef, adds: &[String]) {
    let store = log_store.object_store(None);
    for add in adds {
        let path = Path::from(add.as_str());
        if let Err(e) = store.delete(&path).await {
            tracing::warn!(file = %path, error = %e, "Cannot delete a data file no commit references.");
        }
    }
}

/// The actions of a commit (`_delta_log/N.json`: one JSON object a line).
///
/// # Errors
/// The commit is not UTF-8 or a line is not JSON.
pub(super) fn actions_of(log: &[u8]) -> Result<Vec<serde_json::Value>, DeltaTableError> {
    let text = std::str::from_utf8(log)
        .map_err(|e| DeltaTableError::Generic(format!("a commit is not UTF-8: {e}")))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| Ok(serde_json::from_str(line)?))
        .collect()
}

/// What another writer's commit means for a blind append of batch `batch_id` of `app_id`.
#[derive(Debug, PartialEq, Eq)]
enum Other {
    /// Files added or removed (another append, a compaction): the append goes after it.
    NoConflict,
    /// It records this batch (or a later one) of the same query.
    ThisBatch,
    /// It changes the schema, the partitioning or the protocol.
    ChangedTable,
}

fn other_commit(log: &[u8], app_id: &str, batch_id: u64) -> Result<Other, DeltaTableError> {
    let mut found = Other::NoConflict;
    for action in actions_of(log)? {
        if action.get("metaData").is_some() || action.get("protocol").is_some() {
            return Ok(Other::ChangedTable);
        }
        if let Some(txn) = action.get("txn") {
            let same_query = txn.get("appId").and_then(|a| a.as_str()) == Some(app_id);
            let version = txn.get("version").and_then(|v| v.as_i64());
            if same_query && version.is_some_and(|v| v >= batch_id as i64) {
                found = Other::ThisBatch;
            }
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn another_commit_is_judged_by_its_actions() {
        let compaction = br#"{"commitInfo":{"operation":"OPTIMIZE"}}
{"remove":{"path":"a.parquet","dataChange":false}}
{"add":{"path":"b.parquet","dataChange":false}}"#;
        assert_eq!(other_commit(compaction, "q", 7).unwrap(), Other::NoConflict);
        let other_query = br#"{"txn":{"appId":"other","version":9}}"#;
        assert_eq!(
            other_commit(other_query, "q", 7).unwrap(),
            Other::NoConflict
        );
        let earlier_batch = br#"{"txn":{"appId":"q","version":6}}"#;
        assert_eq!(
            other_commit(earlier_batch, "q", 7).unwrap(),
            Other::NoConflict
        );
        let this_batch = br#"{"txn":{"appId":"q","version":7}}"#;
        assert_eq!(other_commit(this_batch, "q", 7).unwrap(), Other::ThisBatch);
        let schema = br#"{"metaData":{"id":"x"}}"#;
        assert_eq!(other_commit(schema, "q", 7).unwrap(), Other::ChangedTable);
        let protocol = br#"{"protocol":{"minReaderVersion":1,"minWriterVersion":7}}"#;
        assert_eq!(other_commit(protocol, "q", 7).unwrap(), Other::ChangedTable);
    }
}
