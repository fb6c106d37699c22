//! The checkpoint folder, as Spark's: before a batch is processed its offsets are written to
//! `offsets/<batchId>`; after the sink acknowledged it and the source committed it,
//! `commits/<batchId>` is written. On restart a batch with offsets but no commit is replayed over
//! exactly the same offsets. Offsets entries are written to a temporary name, synced and renamed,
//! so a crash leaves either the old state or the new one. Commit markers are empty files, not
//! synced: an operating-system crash that loses one only makes the next start replay that batch
//! over the same offsets, which the sinks' idempotent writes absorb (and a source that committed
//! it already skips). Each sync costs a disk flush, and at a 10 ms trigger two per batch were a
//! tenth of the engine's CPU.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::offsets::Offsets;

/// How many batches' entries are kept; older ones are deleted.
const RETAINED_BATCHES: u64 = 100;

/// One entry of the offsets log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlannedBatch {
    /// The batch id.
    pub batch_id: u64,
    /// Where the batch starts.
    pub start: Offsets,
    /// Where it ends (what is committed once it is written).
    pub end: Offsets,
}

/// What the checkpoint says on start-up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovered {
    /// The id the next new batch gets.
    pub next_batch_id: u64,
    /// The end offsets of the last committed batch.
    pub committed: Option<Offsets>,
    /// A batch that was planned but not committed: replay it first.
    pub pending: Option<PlannedBatch>,
}

/// A checkpoint folder.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    dir: PathBuf,
}

impl Checkpoint {
    /// Opens (creating if needed) a checkpoint folder.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        for sub in ["offsets", "commits"] {
            let path = dir.join(sub);
            fs::create_dir_all(&path).map_err(|e| Error::io(&path, e))?;
        }
        Ok(Self { dir })
    }

    /// Reads the folder's state.
    pub fn recover(&self) -> Result<Recovered> {
        let Some(last) = self.last_id("offsets")? else {
            return Ok(Recovered::default());
        };
        let planned = self.read_planned(last)?;
        if self.dir.join("commits").join(last.to_string()).exists() {
            return Ok(Recovered {
                next_batch_id: last + 1,
                committed: Some(planned.end),
                pending: None,
            });
        }
        let committed = match last.checked_sub(1) {
            Some(prev) if self.dir.join("offsets").join(prev.to_string()).exists() => {
                Some(self.read_planned(prev)?.end)
            }
            _ => None,
        };
        Ok(Recovered {
            next_batch_id: last + 1,
            committed,
            pending: Some(planned),
        })
    }

    /// Records a batch's offsets before it is processed.
    pub fn plan(&self, batch: &PlannedBatch) -> Result<()> {
        let body = serde_json::to_vec(batch).map_err(|e| Error::Internal(e.to_string()))?;
        write_atomically(
            &self.dir.join("offsets").join(batch.batch_id.to_string()),
            &body,
        )
    }

    /// Records that a batch was written and committed (see the module docs on why this is not
    /// synced).
    pub fn commit(&self, batch_id: u64) -> Result<()> {
        let path = self.dir.join("commits").join(batch_id.to_string());
        fs::File::create(&path).map_err(|e| Error::io(&path, e))?;
        if batch_id > 0 && batch_id.is_multiple_of(RETAINED_BATCHES) {
            self.prune(batch_id - RETAINED_BATCHES);
        }
        Ok(())
    }

    /// Deletes the entries of batches before `before`, best effort: a leftover old entry is
    /// harmless, recovery reads only the newest. Runs once every [`RETAINED_BATCHES`] batches.
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

    fn read_planned(&self, id: u64) -> Result<PlannedBatch> {
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

    fn offsets(n: i64) -> Offsets {
        let mut o = Offsets::new();
        o.set("t", 0, n);
        o
    }

    #[test]
    fn keeps_the_latest_batches_and_prunes_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let cp = Checkpoint::open(dir.path()).unwrap();
        for id in 0..=2 * RETAINED_BATCHES + 5 {
            cp.plan(&PlannedBatch {
                batch_id: id,
                start: offsets(id as i64),
                end: offsets(id as i64 + 1),
            })
            .unwrap();
            cp.commit(id).unwrap();
        }
        let ids = |sub: &str| -> Vec<u64> {
            let mut ids: Vec<u64> = fs::read_dir(dir.path().join(sub))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_str().unwrap().parse().unwrap())
                .collect();
            ids.sort();
            ids
        };
        // The last prune ran at batch 200 and removed everything before batch 100.
        let kept: Vec<u64> = (RETAINED_BATCHES..=2 * RETAINED_BATCHES + 5).collect();
        assert_eq!(ids("offsets"), kept);
        assert_eq!(ids("commits"), kept);
        let r = cp.recover().unwrap();
        assert_eq!(r.next_batch_id, 2 * RETAINED_BATCHES + 6);
        assert_eq!(r.committed, Some(offsets(2 * RETAINED_BATCHES as i64 + 6)));
        assert_eq!(r.pending, None);
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
        cp.commit(0).unwrap();
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
}
