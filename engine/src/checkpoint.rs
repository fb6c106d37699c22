//! The checkpoint folder, as Spark's: before a batch is processed its offsets are written to
//! `offsets/<batchId>`; after the sink acknowledged it and the source committed it,
//! `commits/<batchId>` is written. On restart a batch with offsets but no commit is replayed over
//! exactly the same offsets. Offsets entries are written to a temporary name, synced and renamed,
//! so a crash leaves either the old state or the new one. Commit markers are empty files, not
//! synced: an operating-system crash that loses one only makes the next start replay that batch
//! over the same offsets, which the sinks' idempotent writes absorb (and a source that committed
//! it already skips). Each sync costs a disk flush, and at a 10 ms trigger two per batch were a
//! tenth of the engine's CPU.
//!
//! An offsets entry is `{"batchId":7,"start":<offset>,"end":<offset>}`, where each offset is the
//! source's own JSON ([`SourceOffset`]): everything the source needs to continue exactly there,
//! de-duplication state included.
//!
//! Entries of older versions hold Kafka-shaped offsets (`{"topic":{"0":42}}`) for every source and,
//! from one version on, the source's state after the batch beside them (`"sourceState"`). Such an
//! offset reaches the source unchanged when the entry has no state; with a state, as
//! `{"offsets":<offsets>,"sourceState":<state>}` ([`LEGACY_OFFSETS`], [`LEGACY_STATE`]), the state
//! being the one saved with the batch that ended there (for a batch's start: the batch before it).
//! The sources whose shape changed read those forms, so a restart after an upgrade loses nothing.
//!
//! A checkpoint belongs to one query: `metadata` records the query's identity (its source's
//! identity and its transform) at the first start, and a query with another identity is refused
//! the folder with an error naming both. And one query runs on it at a time: [`Checkpoint::open`]
//! takes an exclusive OS lock on `lock` (holding the process id, for the message a second query
//! gets), which the OS releases when the process ends, even by `kill -9`.

use std::fs;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::position::SourceOffset;

/// How many batches' entries are kept; older ones are deleted.
pub const RETAINED_BATCHES: u64 = 100;

/// In an offset read from an entry of an older version that saved the source's state: the key of
/// the Kafka-shaped offsets (see the module docs).
pub const LEGACY_OFFSETS: &str = "offsets";
/// In an offset read from an entry of an older version that saved the source's state: the key of
/// that state (see the module docs).
pub const LEGACY_STATE: &str = "sourceState";

/// One entry of the offsets log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlannedBatch {
    /// The batch id.
    pub batch_id: u64,
    /// Where the batch starts.
    pub start: SourceOffset,
    /// Where it ends (what is committed once it is written).
    pub end: SourceOffset,
}

/// An offsets entry as read: this version's, or an older one with the source's state beside
/// Kafka-shaped offsets.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Entry {
    batch_id: u64,
    start: SourceOffset,
    end: SourceOffset,
    #[serde(default)]
    source_state: Option<serde_json::Value>,
}

/// An older version's `offsets` with the `state` saved beside them, as one offset (module docs).
fn with_legacy_state(offsets: SourceOffset, state: Option<&serde_json::Value>) -> SourceOffset {
    match state {
        None => offsets,
        Some(state) => SourceOffset::new(serde_json::json!({
            LEGACY_OFFSETS: offsets.json(),
            LEGACY_STATE: state,
        })),
    }
}

/// What the checkpoint says on start-up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovered {
    /// The id the next new batch gets.
    pub next_batch_id: u64,
    /// The end offset of the last committed batch.
    pub committed: Option<SourceOffset>,
    /// A batch that was planned but not committed: replay it first.
    pub pending: Option<PlannedBatch>,
}

/// The file holding the query's identity.
const METADATA: &str = "metadata";
/// The file the running query holds locked.
const LOCK: &str = "lock";

/// What makes a query the same query across restarts (Spark's checkpoint `metadata`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueryIdentity {
    /// The source's [`crate::Source::identity`].
    pub source: String,
    /// The output transform's name.
    pub transform: String,
}

impl std::fmt::Display for QueryIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "source {:?}, transform {:?}",
            self.source, self.transform
        )
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Metadata {
    /// A random id of the query, as Spark's `queryId`: tells two queries of the same shape apart
    /// in logs, and keys the batches a sink recognises as already written (Delta's `txn`).
    id: String,
    #[serde(flatten)]
    identity: QueryIdentity,
}

/// A checkpoint folder, locked for this process while any clone of it lives.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    dir: PathBuf,
    /// The locked `lock` file; dropping the last clone releases the lock.
    _lock: Arc<fs::File>,
}

impl Checkpoint {
    /// Opens (creating if needed) a checkpoint folder and locks it for this process.
    ///
    /// # Errors
    /// [`Error::Checkpoint`] naming the folder and the holder's process id when another process
    /// (or another open `Checkpoint` in this one) holds the folder.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        for sub in ["offsets", "commits"] {
            let path = dir.join(sub);
            fs::create_dir_all(&path).map_err(|e| Error::io(&path, e))?;
        }
        let lock = lock(&dir)?;
        Ok(Self {
            dir,
            _lock: Arc::new(lock),
        })
    }

    /// The folder of a stateful query's state versions (`state/`, see [`crate::stateful`]).
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// Binds the folder to `identity`: records it at the first start (and when adopting a folder
    /// of an older version, which has no metadata), and refuses a folder that belongs to another
    /// query. Returns the query's id (Spark's `queryId`): the one recorded, or a new one.
    pub fn bind(&self, identity: &QueryIdentity) -> Result<String> {
        self.bind_recognising(identity, &[])
    }

    /// [`Checkpoint::bind`], also accepting a folder recorded (by an older version) with one of
    /// `former_sources` as the source of the same transform (see
    /// [`crate::Source::former_identities`]). Its metadata is left as recorded, so the version
    /// that wrote it still recognises it.
    pub fn bind_recognising(
        &self,
        identity: &QueryIdentity,
        former_sources: &[String],
    ) -> Result<String> {
        let path = self.dir.join(METADATA);
        match fs::read(&path) {
            Ok(text) => {
                let recorded: Metadata =
                    serde_json::from_slice(&text).map_err(|e| Error::Checkpoint {
                        path: path.clone(),
                        message: format!("unreadable query metadata: {e}"),
                    })?;
                let formerly_ours = recorded.identity.transform == identity.transform
                    && former_sources.contains(&recorded.identity.source);
                if recorded.identity != *identity && !formerly_ours {
                    return Err(Error::Checkpoint {
                        path: self.dir.clone(),
                        message: format!(
                            "the folder belongs to another query ({}; id {}) and this query is \
                             {identity}; give this query its own checkpoint_dir, or delete the \
                             folder to start that query over",
                            recorded.identity, recorded.id
                        ),
                    });
                }
                Ok(recorded.id)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if self.last_id("offsets")?.is_some() {
                    tracing::info!(checkpoint = %self.dir.display(), query = %identity,
                        "Adopting a checkpoint folder written without query metadata.");
                }
                let metadata = Metadata {
                    id: query_id(),
                    identity: identity.clone(),
                };
                let body =
                    serde_json::to_vec(&metadata).map_err(|e| Error::Internal(e.to_string()))?;
                write_atomically(&path, &body)?;
                Ok(metadata.id)
            }
            Err(e) => Err(Error::io(&path, e)),
        }
    }

    /// Reads the folder's state.
    pub fn recover(&self) -> Result<Recovered> {
        let Some(last) = self.last_id("offsets")? else {
            return Ok(Recovered::default());
        };
        if let Some(before) = (last + 1).checked_sub(RETAINED_BATCHES) {
            self.prune(before);
        }
        let entry = self.read_entry(last)?;
        if self.dir.join("commits").join(last.to_string()).exists() {
            return Ok(Recovered {
                next_batch_id: last + 1,
                committed: Some(with_legacy_state(entry.end, entry.source_state.as_ref())),
                pending: None,
            });
        }
        let prev = match last.checked_sub(1) {
            Some(prev) if self.dir.join("offsets").join(prev.to_string()).exists() => {
                Some(self.read_entry(prev)?)
            }
            _ => None,
        };
        // An older version's state after the previous batch is the state at this batch's start.
        let prev_state = prev.as_ref().and_then(|p| p.source_state.as_ref());
        Ok(Recovered {
            next_batch_id: last + 1,
            committed: prev
                .as_ref()
                .map(|p| with_legacy_state(p.end.clone(), p.source_state.as_ref())),
            pending: Some(PlannedBatch {
                batch_id: entry.batch_id,
                start: with_legacy_state(entry.start, prev_state),
                end: with_legacy_state(entry.end, entry.source_state.as_ref()),
            }),
        })
    }

    /// Records a batch's offsets before it is processed.
    pub fn plan(&self, batch: &PlannedBatch) -> Result<()> {
        let body = serde_json::to_vec(batch).map_err(|e| Error::Internal(e.to_string()))?;
        write_atomically(&self.offsets_path(batch.batch_id), &body)
    }

    /// As [`Self::plan`], on a blocking thread: the batch may be decoded and queried meanwhile,
    /// as long as nothing leaves the process (no sink or dead-letter write, no commit) before
    /// [`EntryWrite::wait`] returned. Must be called from a Tokio runtime.
    pub fn plan_in_background(&self, batch: &PlannedBatch) -> Result<EntryWrite> {
        let body = serde_json::to_vec(batch).map_err(|e| Error::Internal(e.to_string()))?;
        let path = self.offsets_path(batch.batch_id);
        Ok(EntryWrite(tokio::task::spawn_blocking(move || {
            write_atomically(&path, &body)
        })))
    }

    fn offsets_path(&self, batch_id: u64) -> PathBuf {
        self.dir.join("offsets").join(batch_id.to_string())
    }

    /// Records that a batch was written and committed (see the module docs on why this is not
    /// synced), on a blocking thread, so that the file system's stalls (tens of milliseconds
    /// while another writer syncs) stay off the next batch's path. Safe because
    /// recovery reads only the newest offsets entry's marker: once the next batch's offsets
    /// entry exists this marker is never read, and before that a lost marker only replays the
    /// batch, as after an operating-system crash. The marker is on disk once
    /// [`EntryWrite::wait`] returned. Must be called from a Tokio runtime.
    pub fn commit_in_background(&self, batch_id: u64) -> EntryWrite {
        let dir = self.dir.clone();
        EntryWrite(tokio::task::spawn_blocking(move || {
            write_commit_marker(&dir, batch_id)
        }))
    }

    /// Deletes the entries of batches before `before`, best effort: what [`Self::commit_in_background`] left
    /// (a run that stopped between the two writes, or an older version's pruning).
    fn prune(&self, before: u64) {
        for sub in ["offsets", "commits"] {
            let Ok(entries) = fs::read_dir(self.dir.join(sub)) else {
                continue;
            };
            for entry in entries.flatten() {
                let old = entry
                    .file_name()
                    .to_str()
                    .and_then(|n| n.parse::<u64>().ok())
                    .is_some_and(|id| id < before);
                if old {
                    let _ = fs::remove_file(entry.path());
                }
            }
        }
    }

    fn read_entry(&self, id: u64) -> Result<Entry> {
        let path = self.dir.join("offsets").join(id.to_string());
        let text = fs::read(&path).map_err(|e| Error::io(&path, e))?;
        serde_json::from_slice(&text).map_err(|e| Error::Checkpoint {
            path,
            message: format!("unreadable offsets entry: {e}"),
        })
    }

    fn last_id(&self, sub: &str) -> Result<Option<u64>> {
        let path = self.dir.join(sub);
        let entries = fs::read_dir(&path).map_err(|e| Error::io(&path, e))?;
        let mut last = None;
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(&path, e))?;
            if let Some(id) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u64>().ok())
            {
                last = last.max(Some(id));
            }
        }
        Ok(last)
    }
}

/// Writes batch `batch_id`'s commit marker in the checkpoint folder `dir`, and deletes the
/// entries of the batch [`RETAINED_BATCHES`] before it.
fn write_commit_marker(dir: &Path, batch_id: u64) -> Result<()> {
    let path = dir.join("commits").join(batch_id.to_string());
    fs::File::create(&path).map_err(|e| Error::io(&path, e))?;
    // One batch's entries out for each batch in, best effort (a leftover old entry is harmless,
    // recovery reads only the newest): two unlinks a batch, where deleting a hundred batches' at
    // once stalled every hundredth batch.
    if let Some(old) = batch_id.checked_sub(RETAINED_BATCHES) {
        for sub in ["offsets", "commits"] {
            let _ = fs::remove_file(dir.join(sub).join(old.to_string()));
        }
    }
    Ok(())
}

/// A checkpoint entry being written on a blocking thread: a batch's offsets entry, synced
/// ([`Checkpoint::plan_in_background`]), or its commit marker
/// ([`Checkpoint::commit_in_background`]).
#[must_use = "the entry is written only once `wait` returned"]
pub struct EntryWrite(tokio::task::JoinHandle<Result<()>>);

impl EntryWrite {
    /// Whether the write has ended (then [`EntryWrite::wait`] returns at once).
    pub fn is_finished(&self) -> bool {
        self.0.is_finished()
    }

    /// Waits until the entry is written (and, for an offsets entry, synced).
    ///
    /// # Errors
    /// The write's own (the folder unwritable, the disk full), or the blocking task failing.
    pub async fn wait(self) -> Result<()> {
        self.0
            .await
            .map_err(|e| Error::Internal(format!("checkpoint write task failed: {e}")))?
    }
}

/// Takes the exclusive lock on `dir/lock` and writes this process's id into it. `flock`-style
/// locks belong to the open file, so the OS releases them when the process ends however it ends.
fn lock(dir: &Path) -> Result<fs::File> {
    let path = dir.join(LOCK);
    let mut file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| Error::io(&path, e))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = match holder.trim() {
                "" => "a process that has not written its id yet".to_owned(),
                pid => format!("pid {pid}"),
            };
            return Err(Error::Checkpoint {
                path: dir.to_owned(),
                message: format!(
                    "the folder is in use by another running query ({holder}); only one query \
                     may run on a checkpoint folder (two would overwrite each other's batches)"
                ),
            });
        }
        Err(fs::TryLockError::Error(e)) => return Err(Error::io(&path, e)),
    }
    let pid = std::process::id().to_string();
    file.set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| file.write_all(pid.as_bytes()))
        .map_err(|e| Error::io(&path, e))?;
    Ok(file)
}

/// A practically unique id: the time in nanoseconds and the process id, in hex. The id of a
/// query run without a checkpoint, too (new at every run, as nothing it wrote is replayed).
pub fn query_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{nanos:x}-{:x}", std::process::id())
}

/// Writes `body` to `path` so that readers see the old file or the whole new one, never a part.
pub fn write_atomically(path: &Path, body: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    file.write_all(body).map_err(|e| Error::io(&tmp, e))?;
    file.sync_all().map_err(|e| Error::io(&tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A source's offset: its own JSON, here the next line and a de-duplication state.
    fn offsets(n: i64) -> SourceOffset {
        SourceOffset::new(serde_json::json!({"line": n, "last": n - 1}))
    }

    #[test]
    fn keeps_the_latest_batches_and_prunes_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let cp = Checkpoint::open(dir.path()).unwrap();
        let last = 2 * RETAINED_BATCHES + 5;
        for id in 0..=last {
            cp.plan(&PlannedBatch {
                batch_id: id,
                start: offsets(id as i64),
                end: offsets(id as i64 + 1),
            })
            .unwrap();
            write_commit_marker(dir.path(), id).unwrap();
        }
        let ids = |sub: &str| -> Vec<u64> {
            let mut ids: Vec<u64> = fs::read_dir(dir.path().join(sub))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_str().unwrap().parse().unwrap())
                .collect();
            ids.sort();
            ids
        };
        // Each commit removed the batch RETAINED_BATCHES before it.
        let kept: Vec<u64> = (last + 1 - RETAINED_BATCHES..=last).collect();
        assert_eq!(ids("offsets"), kept);
        assert_eq!(ids("commits"), kept);
        // What a stopped run or an older version left behind goes at the next start.
        for sub in ["offsets", "commits"] {
            fs::write(dir.path().join(sub).join("7"), b"{}").unwrap();
        }
        let r = cp.recover().unwrap();
        assert_eq!(ids("offsets"), kept);
        assert_eq!(ids("commits"), kept);
        assert_eq!(r.next_batch_id, 2 * RETAINED_BATCHES + 6);
        assert_eq!(r.committed, Some(offsets(2 * RETAINED_BATCHES as i64 + 6)));
        assert_eq!(r.pending, None);
    }

    #[tokio::test]
    async fn a_marker_written_in_the_background_while_the_next_batch_is_planned_recovers_as_written()
     {
        let dir = tempfile::tempdir().unwrap();
        let cp = Checkpoint::open(dir.path()).unwrap();
        let batch = |id: u64| PlannedBatch {
            batch_id: id,
            start: offsets(id as i64 * 10),
            end: offsets(id as i64 * 10 + 10),
        };
        cp.plan(&batch(0)).unwrap();
        let marker = cp.commit_in_background(0);
        // The next batch's offsets entry may land before the marker: recovery replays it.
        let planned = cp.plan_in_background(&batch(1)).unwrap();
        planned.wait().await.unwrap();
        marker.wait().await.unwrap();
        let r = cp.recover().unwrap();
        assert_eq!(
            (r.next_batch_id, r.committed.clone(), r.pending.clone()),
            (2, Some(offsets(10)), Some(batch(1)))
        );
        cp.commit_in_background(1).wait().await.unwrap();
        let r = cp.recover().unwrap();
        assert_eq!(
            (r.next_batch_id, r.committed, r.pending),
            (2, Some(offsets(20)), None)
        );
    }

    #[test]
    fn recovers_committed_and_pending_batches() {
        let dir = tempfile::tempdir().unwrap();
        let cp = Checkpoint::open(dir.path()).unwrap();
        assert_eq!(cp.recover().unwrap(), Recovered::default());
        cp.plan(&PlannedBatch {
            batch_id: 0,
            start: offsets(0),
            end: offsets(10),
        })
        .unwrap();
        write_commit_marker(dir.path(), 0).unwrap();
        let r = cp.recover().unwrap();
        assert_eq!(
            (r.next_batch_id, r.committed.clone(), r.pending.clone()),
            (1, Some(offsets(10)), None)
        );
        let pending = PlannedBatch {
            batch_id: 1,
            start: offsets(10),
            end: offsets(25),
        };
        cp.plan(&pending).unwrap();
        drop(cp);
        let r = Checkpoint::open(dir.path()).unwrap().recover().unwrap();
        assert_eq!(
            r,
            Recovered {
                next_batch_id: 2,
                committed: Some(offsets(10)),
                pending: Some(pending)
            }
        );
    }

    fn json(text: &str) -> SourceOffset {
        SourceOffset::new(serde_json::from_str(text).unwrap())
    }

    /// A checkpoint holding `entries` (as `offsets/0`, `offsets/1`, …) written by an older
    /// version, with batch 0 committed, and what it recovers from them.
    fn recover_older_entries(entries: &[&str]) -> (tempfile::TempDir, Checkpoint, Recovered) {
        let dir = tempfile::tempdir().unwrap();
        let cp = Checkpoint::open(dir.path()).unwrap();
        for (batch_id, entry) in entries.iter().enumerate() {
            fs::write(dir.path().join(format!("offsets/{batch_id}")), entry).unwrap();
        }
        write_commit_marker(dir.path(), 0).unwrap();
        let recovered = cp.recover().unwrap();
        (dir, cp, recovered)
    }

    #[test]
    fn reads_offsets_entries_of_older_versions_without_state() {
        let (_dir, _cp, r) =
            recover_older_entries(&[r#"{"batchId":0,"start":{"t":{"0":0}},"end":{"t":{"0":4}}}"#]);
        assert_eq!(r.committed, Some(json(r#"{"t":{"0":4}}"#)));
    }

    #[test]
    fn reads_offsets_entries_of_older_versions_with_state_beside_the_offsets() {
        // Written by the version that saved `sourceState` (a capture's last trade id per product).
        let (dir, cp, r) = recover_older_entries(&[
            r#"{"batchId":0,"start":{"/f":{"0":0}},"end":{"/f":{"0":3}},"sourceState":{"lastTradeId":{"BTC-USD":7}}}"#,
            r#"{"batchId":1,"start":{"/f":{"0":3}},"end":{"/f":{"0":8}},"sourceState":{"lastTradeId":{"BTC-USD":9}}}"#,
        ]);
        let after_0 =
            json(r#"{"offsets":{"/f":{"0":3}},"sourceState":{"lastTradeId":{"BTC-USD":7}}}"#);
        assert_eq!(r.committed, Some(after_0.clone()));
        // The uncommitted batch starts with the state the batch before it saved.
        assert_eq!(
            r.pending,
            Some(PlannedBatch {
                batch_id: 1,
                start: after_0,
                end: json(
                    r#"{"offsets":{"/f":{"0":8}},"sourceState":{"lastTradeId":{"BTC-USD":9}}}"#
                ),
            })
        );
        // This version writes the source's offset alone.
        cp.plan(&PlannedBatch {
            batch_id: 2,
            start: offsets(8),
            end: offsets(9),
        })
        .unwrap();
        assert_eq!(
            fs::read_to_string(dir.path().join("offsets/2")).unwrap(),
            r#"{"batchId":2,"start":{"last":7,"line":8},"end":{"last":8,"line":9}}"#
        );
    }

    #[test]
    fn a_second_open_of_a_held_folder_is_refused_naming_the_folder_and_pid() {
        let dir = tempfile::tempdir().unwrap();
        let held = Checkpoint::open(dir.path()).unwrap();
        let err = Checkpoint::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains(&dir.path().display().to_string()), "{err}");
        assert!(
            err.contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        drop(held);
        Checkpoint::open(dir.path()).expect("released when the holder is dropped");
    }

    #[test]
    fn refuses_a_folder_of_another_query_naming_both_and_adopts_old_folders() {
        let dir = tempfile::tempdir().unwrap();
        let cp = Checkpoint::open(dir.path()).unwrap();
        cp.plan(&PlannedBatch {
            batch_id: 0,
            start: offsets(0),
            end: offsets(1),
        })
        .unwrap();
        let ours = QueryIdentity {
            source: "replay /data/a.jsonl".into(),
            transform: "profit".into(),
        };
        // No metadata yet (a folder of an older version): adopted and recorded.
        cp.bind(&ours).unwrap();
        cp.bind(&ours).unwrap();
        let theirs = QueryIdentity {
            source: "replay /data/b.jsonl".into(),
            transform: "profit".into(),
        };
        let err = cp.bind(&theirs).unwrap_err().to_string();
        assert!(
            err.contains("replay /data/a.jsonl") && err.contains("replay /data/b.jsonl"),
            "{err}"
        );
        let other_transform = QueryIdentity {
            transform: "volume".into(),
            ..ours
        };
        let err = cp.bind(&other_transform).unwrap_err().to_string();
        assert!(
            err.contains("\"volume\"") && err.contains("\"profit\""),
            "{err}"
        );
    }

    #[test]
    fn a_folder_recorded_under_a_former_source_identity_stays_the_querys() {
        let dir = tempfile::tempdir().unwrap();
        let cp = Checkpoint::open(dir.path()).unwrap();
        let old = QueryIdentity {
            source: "replay /data/a.jsonl".into(),
            transform: "profit".into(),
        };
        cp.bind(&old).unwrap();
        let recorded = std::fs::read(dir.path().join(METADATA)).unwrap();
        let now = QueryIdentity {
            source: "coinbase capture /data/a.jsonl".into(),
            transform: "profit".into(),
        };
        let former = ["replay /data/a.jsonl".to_owned()];
        assert!(cp.bind(&now).is_err(), "not without the former name");
        cp.bind_recognising(&now, &former).unwrap();
        assert_eq!(
            std::fs::read(dir.path().join(METADATA)).unwrap(),
            recorded,
            "the metadata stays as the older version wrote it"
        );
        let other_transform = QueryIdentity {
            transform: "volume".into(),
            ..now.clone()
        };
        assert!(cp.bind_recognising(&other_transform, &former).is_err());
        let other_file = QueryIdentity {
            source: "coinbase capture /data/b.jsonl".into(),
            ..now
        };
        assert!(
            cp.bind_recognising(&other_file, &["replay /data/b.jsonl".into()])
                .is_err()
        );
    }
}
