//! Table maintenance: compaction (Delta's OPTIMIZE, bin-packing), VACUUM and the deletion of
//! expired commits from the log. Used in the background by the Delta sink and by
//! `coinstream compact`.

use std::fmt;
use std::num::NonZeroU64;
use std::time::Duration;

use deltalake::table::config::TablePropertiesExt;
use deltalake::{DeltaTable, DeltaTableError, FilterOp, FilterValue};

use super::files_by_partition;

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
        if let Some(v) = self.version {
            write!(f, "; table version {v}")?;
        }
        Ok(())
    }
}

/// Merges the small files of each chosen partition (one OPTIMIZE commit per partition, so a
/// reader sees a partition's old files or its merged ones, never both), then vacuums.
/// Appends of a running stream may commit in between: an append and a compaction do not
/// conflict (the append reads nothing), so neither waits for the other.
///
/// # Errors
/// Reading the log, writing the merged files or committing failed; what was committed before
/// the failure stays (each partition's merge is atomic).
pub async fn compact(table: DeltaTable, options: Options) -> Result<Compacted, DeltaTableError> {
    compact_gated(table, options, &CommitGate::default()).await
}

/// Held by whoever commits to the table in this process: the sink's appends for the moment of
/// their commit, a compaction while it lists the log, for each partition's merge and for
/// VACUUM. A listing of `_delta_log` taken while an append creates its commit file can miss
/// that file (on a local file system a directory listing is not a snapshot: 53 of 76 background
/// compactions failed with the kernel's "Expected contiguous commit files, but found gap" over
/// 88,889 one-trade batches) and the kernel refuses the gap. Without it a stream
/// of blind appends (a few ms each) takes every version a merge tries to commit at: each of
/// its attempts re-reads the table, which takes longer than the next append, so after its 15
/// attempts the merge gives up, every time.
pub(super) type CommitGate = std::sync::Arc<tokio::sync::Mutex<()>>;

/// [`compact`], holding `gate` while it commits; the stream's appends wait meanwhile.
pub(super) async fn compact_gated(
    mut table: DeltaTable,
    options: Options,
    gate: &CommitGate,
) -> Result<Compacted, DeltaTableError> {
    let mut done = Compacted::default();
    {
        // As every read of the log here: not while an append commits (see `CommitGate`).
        let _held = gate.lock().await;
        table.update_state().await?;
    }
    let target = options.target_file_size.get() as i64;
    let mut chosen = Vec::new();
    for (partition, files) in files_by_partition(&table)? {
        let small = files.iter().filter(|(size, _)| *size < target).count();
        let newest = files.iter().map(|(_, modified)| *modified).max();
        let idle = match (options.idle_since_ms, newest) {
            (Some(since), Some(newest)) => newest < since,
            _ => true,
        } || small >= options.active_partition_files;
        // A partition whose values include a null cannot be selected by an equality filter: it
        // is left as it is.
        if small > 1 && idle && partition.iter().all(|(_, v)| v.is_some()) {
            chosen.push(partition);
        }
    }
    chosen.sort();
    for partition in &chosen {
        let filters: Vec<_> = partition
            .iter()
            .map(|(column, value)| {
                (
                    column.as_str(),
                    FilterOp::Eq,
                    FilterValue::Scalar(value.as_deref().expect("checked above")),
                )
            })
            .collect();
        let held = gate.lock().await;
        let (merged, metrics) = table
            .clone()
            .optimize()
            .with_filters(&filters)
            .with_target_size(options.target_file_size)
            // One core for merging: the stream keeps the other.
            .with_max_concurrent_tasks(1)
            .await?;
        drop(held);
        table = merged;
        if metrics.num_files_removed > 0 {
            done.partitions += 1;
        }
        done.files_removed += metrics.num_files_removed;
        done.files_added += metrics.num_files_added;
    }
    let retention = chrono::Duration::from_std(options.retention)
        .map_err(|e| DeltaTableError::Generic(format!("retention out of range: {e}")))?;
    let held = gate.lock().await;
    let (table, vacuumed) = table
        .vacuum()
        .with_retention_period(retention)
        // The retention is the config's choice; Delta's own 7-day floor would refuse a shorter
        // one that the user set on purpose.
        .with_enforce_retention_duration(false)
        .await?;
    drop(held);
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
