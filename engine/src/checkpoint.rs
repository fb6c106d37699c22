//! The checkpoint folder, as Spark's: before a batch is processed its offsets are written to
//! `offsets/<batchId>`; after the sink acknowledged it and the source committed it,
//! `commits/<batchId>` is written. On restart a batch with offsets but no commit is replayed over
//! exactly the same offsets. Files are written to a temporary name, synced and renamed, so a crash
//! leaves either the old state or the new one.

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
        self.write_atomically(
            &self.dir.join("offsets").join(batch.batch_id.to_string()),
            &body,
        )
    }

    /// Records that a batch was written and committed.
    pub fn commit(&self, batch_id: u64) -> Result<()> {
        self.write_atomically(&self.dir.join("commits").join(batch_id.to_string()), b"{}")?;
        if let Some(old) = batch_id.checked_sub(RETAINED_BATCHES) {
            for sub in ["offsets", "commits"] {
                // Best effort: a leftover old entry is harmless, recovery reads only the newest.
                let _ = fs::remove_file(self.dir.join(sub).join(old.to_string()));
            }
        }
        Ok(())
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

    fn write_atomically(&self, path: &Path, body: &[u8]) -> Result<()> {
        write_atomically(path, body)
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
