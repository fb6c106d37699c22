//! What `coinstream ingest gateio --state FILE` remembers between runs: the last window start
//! published per currency pair and interval, so that separate `--once` runs (an Airflow schedule)
//! publish each closed window once, and a run after a pause starts where the last one ended.
//!
//! The file is written only after Kafka acknowledged every candle of the run: a run that fails
//! leaves it as it was, and the next run publishes those windows again (the candle table's key
//! makes that an overwrite with the same values).
//!
//! ```json
//! {"BTC_USDT 1m": 1780089940, "ETH_USDT 1m": 1780089940}
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use engine::{Error, Result};

/// The last published window start (unix seconds) per `"PAIR interval"`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishedState(BTreeMap<String, i64>);

impl PublishedState {
    /// Reads `path`; a missing file is an empty state, a malformed one an error naming it.
    pub fn load(path: &Path) -> Result<Self> {
        let text = match std::fs::read(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(Error::io(path, e)),
        };
        serde_json::from_slice(&text).map(Self).map_err(|e| {
            Error::config(
                format!("--state {}", path.display()),
                format!(
                    "not a state file ({e}); expected an object of \"PAIR interval\": unix seconds"
                ),
            )
        })
    }

    /// Writes the state to `path` atomically, creating its folder if needed.
    pub fn save(&self, path: &Path) -> Result<()> {
        let body = serde_json::to_vec_pretty(&self.0)
            .map_err(|e| Error::Internal(format!("cannot serialise the Gate.io state: {e}")))?;
        if let Some(folder) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(folder).map_err(|e| Error::io(folder, e))?;
        }
        engine::checkpoint::write_atomically(path, &body)
    }

    /// The last published window of each pair, for `interval`.
    pub fn watermarks(&self, interval: &str) -> BTreeMap<String, i64> {
        self.0
            .iter()
            .filter_map(|(key, start)| {
                let (pair, i) = key.split_once(' ')?;
                (i == interval).then(|| (pair.to_owned(), *start))
            })
            .collect()
    }

    /// Records the last published window of each pair for `interval`.
    pub fn record(&mut self, interval: &str, watermarks: &BTreeMap<String, i64>) {
        for (pair, start) in watermarks {
            self.0.insert(format!("{pair} {interval}"), *start);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_per_pair_and_interval_and_names_a_bad_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new folder").join("state.json");
        assert_eq!(
            PublishedState::load(&path).unwrap(),
            PublishedState::default()
        );
        let mut state = PublishedState::default();
        state.record("1m", &BTreeMap::from([("BTC_USDT".to_owned(), 120)]));
        state.record("1h", &BTreeMap::from([("BTC_USDT".to_owned(), 3600)]));
        state.save(&path).unwrap();
        let loaded = PublishedState::load(&path).unwrap();
        assert_eq!(
            loaded.watermarks("1m"),
            BTreeMap::from([("BTC_USDT".to_owned(), 120)])
        );
        assert_eq!(
            loaded.watermarks("1h"),
            BTreeMap::from([("BTC_USDT".to_owned(), 3600)])
        );
        std::fs::write(&path, "[1, 2]").unwrap();
        let error = PublishedState::load(&path).unwrap_err().to_string();
        assert!(error.contains("state.json"), "{error}");
    }
}
