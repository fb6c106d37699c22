//! Replays a file of Coinbase Exchange feed messages, one JSON message per line exactly as the feed
//! sends them. Trades (`match`, `last_match`) are normalised to bus records; heartbeats,
//! subscriptions and unknown types are skipped; unusable lines (and trades of products missing from
//! the coin map) are passed on as rejected so they reach the dead-letter output with their reason. Offsets are line numbers (partition 0, topic =
//! the file's path), so a batch can be replayed exactly after a crash.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use engine::{
    Error, Offsets, Poll, PollLimits, RawRecord, Result, Retry, Source, SourceBatch, StartRequest,
};
use serde::Deserialize;

use crate::coinbase::feed::{self, FeedEvent};
use crate::common::reference_files::read_coin_map;
use crate::common::trade::rfc3339_micros;

/// `[source] type = "replay"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayConfig {
    /// The file of feed messages (JSON lines).
    pub path: PathBuf,
    /// The coin map used to name coins (`product id → name`).
    pub coin_map: PathBuf,
}

/// Counters of a replay.
#[derive(Debug, Default, Clone)]
struct Counters {
    lines: u64,
    trades: u64,
    skipped: u64,
    invalid: u64,
    exchange_errors: u64,
    duplicates: u64,
}

/// Per-product dedupe and the counters; moved into the blocking reader and back.
#[derive(Debug, Default)]
struct ReadState {
    last_trade_id: BTreeMap<String, i64>,
    counters: Counters,
}

/// The replay source.
pub struct ReplaySource {
    config: ReplayConfig,
    topic: String,
    coins: Arc<BTreeMap<String, String>>,
    reader: Option<BufReader<File>>,
    state: Option<ReadState>,
    next_line: i64,
    at_end: bool,
}

impl ReplaySource {
    /// Builds the source; reads the coin map now so a bad one fails before any data flows.
    pub fn new(config: ReplayConfig) -> Result<Self> {
        let coins = Arc::new(read_coin_map(&config.coin_map)?);
        let topic = config.path.display().to_string();
        Ok(Self {
            config,
            topic,
            coins,
            reader: None,
            state: Some(ReadState::default()),
            next_line: 0,
            at_end: false,
        })
    }

    fn open_at(&self, line: i64) -> Result<BufReader<File>> {
        let file = File::open(&self.config.path).map_err(|e| Error::Source {
            name: self.description(),
            message: format!("cannot open: {e}"),
            retry: Retry::Permanent,
        })?;
        let mut reader = BufReader::with_capacity(1 << 20, file);
        let mut skipped = 0;
        let mut buf = Vec::new();
        while skipped < line {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) => break,
                Ok(_) => skipped += 1,
                Err(e) => return Err(self.io_error(e)),
            }
        }
        Ok(reader)
    }

    fn io_error(&self, e: std::io::Error) -> Error {
        Error::Source {
            name: self.description(),
            message: format!("read failed: {e}"),
            retry: Retry::Transient,
        }
    }

    /// Reads lines from the current position: until `max_records` records, `max_lines` lines or
    /// the end of the file. Blocking IO runs off the async executor.
    async fn read(&mut self, max_records: usize, max_lines: i64) -> Result<SourceBatch> {
        let mut reader = match self.reader.take() {
            Some(r) => r,
            None => self.open_at(self.next_line)?,
        };
        let mut state = self.state.take().unwrap_or_default();
        let coins = self.coins.clone();
        let topic = self.topic.clone();
        let first = self.next_line;
        let joined = tokio::task::spawn_blocking(move || {
            let result = read_lines(
                &mut reader,
                &mut state,
                &coins,
                &topic,
                first,
                max_records,
                max_lines,
            );
            (reader, state, result)
        })
        .await
        .map_err(|e| Error::Internal(format!("replay reader task failed: {e}")))?;
        let (reader, state, result) = joined;
        self.reader = Some(reader);
        self.state = Some(state);
        let (records, lines, eof) = result.map_err(|e| self.io_error(e))?;
        let mut start = Offsets::new();
        start.set(&self.topic, 0, first);
        self.next_line = first + lines;
        self.at_end = eof;
        let mut end = Offsets::new();
        end.set(&self.topic, 0, self.next_line);
        Ok(SourceBatch {
            records,
            start,
            end,
        })
    }
}

fn read_lines(
    reader: &mut BufReader<File>,
    state: &mut ReadState,
    coins: &BTreeMap<String, String>,
    topic: &str,
    first_line: i64,
    max_records: usize,
    max_lines: i64,
) -> std::io::Result<(Vec<RawRecord>, i64, bool)> {
    let mut records = Vec::with_capacity(max_records.min(65_536));
    let mut lines = 0i64;
    let mut buf = Vec::with_capacity(512);
    let received_at = SystemTime::now();
    let ingest_time = rfc3339_micros(chrono::Utc::now());
    while records.len() < max_records && lines < max_lines {
        buf.clear();
        if reader.read_until(b'\n', &mut buf)? == 0 {
            return Ok((records, lines, true));
        }
        let offset = first_line + lines;
        lines += 1;
        state.counters.lines += 1;
        let line = buf.trim_ascii();
        if line.is_empty() {
            state.counters.skipped += 1;
            continue;
        }
        let record = |payload: Vec<u8>, rejected: Option<String>| RawRecord {
            topic: topic.to_owned(),
            partition: 0,
            offset,
            payload,
            rejected,
            received_at,
        };
        match feed::parse(line, coins, &ingest_time) {
            FeedEvent::Trade { record: trade, .. } if trade.coin_name.is_none() => {
                state.counters.invalid += 1;
                let reason = format!("unknown product {} (not in the coin map)", trade.symbol);
                records.push(record(line.to_vec(), Some(reason)));
            }
            FeedEvent::Trade { record: trade, .. } => {
                let last = state
                    .last_trade_id
                    .entry(trade.symbol.clone())
                    .or_insert(i64::MIN);
                if trade.trade_id <= *last {
                    state.counters.duplicates += 1;
                    continue;
                }
                *last = trade.trade_id;
                state.counters.trades += 1;
                records.push(record(trade.to_json(), None));
            }
            FeedEvent::Invalid(reason) => {
                state.counters.invalid += 1;
                records.push(record(line.to_vec(), Some(reason)));
            }
            FeedEvent::Error { message, reason } => {
                state.counters.exchange_errors += 1;
                tracing::warn!(
                    offset,
                    message,
                    reason = reason.as_deref().unwrap_or(""),
                    "The exchange sent an error message."
                );
            }
            FeedEvent::Heartbeat { .. } | FeedEvent::Subscriptions | FeedEvent::Other(_) => {
                state.counters.skipped += 1
            }
        }
    }
    Ok((records, lines, false))
}

#[async_trait]
impl Source for ReplaySource {
    fn description(&self) -> String {
        format!("replay {}", self.config.path.display())
    }

    async fn start(&mut self, request: StartRequest) -> Result<()> {
        self.next_line = request
            .committed
            .as_ref()
            .and_then(|o| o.get(&self.topic, 0))
            .unwrap_or(0);
        self.reader = Some(self.open_at(self.next_line)?);
        Ok(())
    }

    async fn fetch_range(&mut self, start: &Offsets, end: &Offsets) -> Result<SourceBatch> {
        let (from, to) = match (start.get(&self.topic, 0), end.get(&self.topic, 0)) {
            (Some(from), Some(to)) if from <= to => (from, to),
            _ => {
                return Err(Error::Source {
                    name: self.description(),
                    message: format!(
                        "checkpointed range {start} .. {end} is not a range of this file"
                    ),
                    retry: Retry::Permanent,
                });
            }
        };
        self.reader = Some(self.open_at(from)?);
        self.next_line = from;
        let batch = self.read(usize::MAX, to - from).await?;
        if self.next_line != to {
            return Err(Error::Source {
                name: self.description(),
                message: format!(
                    "the file ends at line {} but the checkpointed batch ends at {to}",
                    self.next_line
                ),
                retry: Retry::Permanent,
            });
        }
        Ok(batch)
    }

    async fn poll(&mut self, limits: PollLimits) -> Result<Poll> {
        if self.at_end {
            return Ok(Poll::Exhausted);
        }
        let batch = self.read(limits.max_records, i64::MAX).await?;
        if batch.start == batch.end {
            return Ok(Poll::Exhausted);
        }
        Ok(Poll::Batch(batch))
    }

    async fn commit(&mut self, _end: &Offsets) -> Result<()> {
        // The engine's checkpoint holds a file's position; there is nothing to tell the file.
        Ok(())
    }

    fn metrics(&self) -> Vec<(&'static str, u64)> {
        let c = self
            .state
            .as_ref()
            .map(|s| s.counters.clone())
            .unwrap_or_default();
        vec![
            ("lines", c.lines),
            ("trades", c.trades),
            ("skipped", c.skipped),
            ("invalid", c.invalid),
            ("exchange_errors", c.exchange_errors),
            ("duplicates", c.duplicates),
        ]
    }
}
