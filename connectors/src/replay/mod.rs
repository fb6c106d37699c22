//! Replays a file of Coinbase Exchange feed messages, one JSON message per line exactly as the feed
//! sends them. Trades (`match`, `last_match`) are normalised to bus records; heartbeats,
//! subscriptions and unknown types are skipped; unusable lines (and trades of products missing from
//! the coin map) are passed on as rejected so they reach the dead-letter output with their reason.
//! A UTF-8 byte-order mark before the first line is skipped (RFC 8259 §8.1 lets parsers ignore
//! one; editors on Windows write it), and CRLF line ends work.
//!
//! Offsets are line numbers (partition 0, topic = the file's canonical path, so a position does
//! not depend on how the path was typed nor on the folder `run` started in). A batch can be
//! replayed exactly after a crash.
//!
//! A capture repeats trades: after a reconnect the feed sends `last_match` again and may overlap
//! `match`es already captured. The source drops a trade whose id is not above the last one handed
//! out for its product, and that last id per product is saved in the checkpoint with each batch
//! ([`Source::checkpoint_state`]), so a capture that grew between two runs stores each trade once.
//! A checkpoint of an older version has no such state; it is then rebuilt by reading the capture
//! up to the committed line.
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use engine::{
    Bytes, Error, Offsets, Poll, PollLimits, RawRecord, Result, Retry, Source, SourceBatch,
    StartRequest,
};
use serde::Deserialize;

use crate::coinbase::feed::{self, FeedEvent};
use crate::common::config::{self, Problem};
use crate::common::reference_files::read_coin_map;
use crate::common::trade::rfc3339_micros;

/// `[source] type = "replay"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayConfig {
    /// The file of feed messages (JSON lines), relative to the config file.
    #[serde(deserialize_with = "config::path")]
    pub path: PathBuf,
    /// The coin map used to name coins (`product id → name`), relative to the config file.
    #[serde(deserialize_with = "config::path")]
    pub coin_map: PathBuf,
}

impl ReplayConfig {
    /// Every problem serde cannot see (keys relative to the section): the coin map must read.
    pub fn check(&self) -> Vec<Problem> {
        match read_coin_map(&self.coin_map) {
            Ok(_) => Vec::new(),
            Err(e) => vec![Problem::new("coin_map", e.to_string())],
        }
    }
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

/// The key of the last trade id per product in the checkpointed state.
const STATE_LAST_TRADE_ID: &str = "lastTradeId";

/// The UTF-8 byte-order mark.
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// The replay source.
pub struct ReplaySource {
    config: ReplayConfig,
    /// The file's canonical path: its topic in offsets and its identity.
    topic: String,
    /// The topic an older version's checkpoint keyed this file by (the path as typed then).
    legacy_topic: Option<String>,
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
        let topic = canonical(&config.path);
        Ok(Self {
            config,
            topic,
            legacy_topic: None,
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
            source: None,
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
            source: None,
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
                true,
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

    /// The committed line of this file in `committed`. A checkpoint of an older version keys the
    /// file by the path as it was typed: that key is adopted when it names the same file; a
    /// position in another file is an error naming both, never a silent start from line 0.
    fn committed_line(&mut self, committed: &Offsets) -> Result<i64> {
        if let Some(line) = committed.get(&self.topic, 0) {
            return Ok(line);
        }
        if committed.is_empty() {
            return Ok(0);
        }
        let topics: Vec<&String> = committed.0.keys().collect();
        if let [only] = topics.as_slice()
            && canonical(std::path::Path::new(only.as_str())) == self.topic
            && let Some(line) = committed.get(only, 0)
        {
            tracing::info!(checkpoint_topic = %only, file = %self.topic,
                "Adopting the position a checkpoint of an older version holds for this file.");
            self.legacy_topic = Some((*only).clone());
            return Ok(line);
        }
        Err(Error::Source {
            name: self.description(),
            message: format!(
                "the checkpoint holds positions in {} and not in {}: it belongs to another \
                 source; give this query its own checkpoint_dir",
                topics
                    .iter()
                    .map(|t| t.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                self.topic
            ),
            retry: Retry::Permanent,
            source: None,
        })
    }

    /// The line of this file in `offsets` (under its canonical or adopted legacy topic).
    fn line_in(&self, offsets: &Offsets) -> Option<i64> {
        offsets
            .get(&self.topic, 0)
            .or_else(|| self.legacy_topic.as_deref().and_then(|t| offsets.get(t, 0)))
    }

    /// The de-duplication state after the first `lines` lines, read from the file (for a
    /// checkpoint without saved state).
    async fn rebuild_state(&self, lines: i64) -> Result<ReadState> {
        let mut reader = self.open_at(0)?;
        let coins = self.coins.clone();
        let topic = self.topic.clone();
        let (state, result) = tokio::task::spawn_blocking(move || {
            let mut state = ReadState::default();
            let result = read_lines(
                &mut reader,
                &mut state,
                &coins,
                &topic,
                0,
                usize::MAX,
                lines,
                false,
            );
            (state, result)
        })
        .await
        .map_err(|e| Error::Internal(format!("replay reader task failed: {e}")))?;
        result.map_err(|e| self.io_error(e))?;
        Ok(ReadState {
            last_trade_id: state.last_trade_id,
            counters: Counters::default(),
        })
    }
}

/// The path's canonical form (absolute, no `.`/`..`, symlinks resolved), as text; the absolute
/// path when it cannot be resolved (the file does not exist yet: opening it will say so).
fn canonical(path: &std::path::Path) -> String {
    std::fs::canonicalize(path)
        .or_else(|_| std::path::absolute(path))
        .unwrap_or_else(|_| path.to_owned())
        .display()
        .to_string()
}

/// The last trade id per product from a checkpointed state.
fn parse_state(state: &serde_json::Value) -> Option<BTreeMap<String, i64>> {
    serde_json::from_value(state.get(STATE_LAST_TRADE_ID)?.clone()).ok()
}

/// The range of the line in `raw` (one line as read, with its end) without surrounding ASCII
/// whitespace (so CRLF ends too) and, on the file's first line, without a byte-order mark.
fn trimmed(raw: &[u8], first_line: bool) -> Range<usize> {
    let mut from = if first_line && raw.starts_with(BOM) {
        BOM.len()
    } else {
        0
    };
    let mut to = raw.len();
    while from < to && raw[from].is_ascii_whitespace() {
        from += 1;
    }
    while to > from && raw[to - 1].is_ascii_whitespace() {
        to -= 1;
    }
    from..to
}

/// Reads lines, updating `state`; with `emit` the records are returned, without it only the
/// state is rebuilt. Each trade's record keeps its line as received (`frame`): the lines are read
/// into one buffer per batch that the records share, so keeping them costs no copy.
#[allow(clippy::too_many_arguments)]
fn read_lines(
    reader: &mut BufReader<File>,
    state: &mut ReadState,
    coins: &BTreeMap<String, String>,
    topic: &str,
    first_line: i64,
    max_records: usize,
    max_lines: i64,
    emit: bool,
) -> std::io::Result<(Vec<RawRecord>, i64, bool)> {
    let mut records = Vec::with_capacity(if emit { max_records.min(65_536) } else { 0 });
    // Trade lines stay in `arena` (their records' frames); other lines are dropped from it.
    let mut arena: Vec<u8> = Vec::with_capacity(if emit { 64 << 10 } else { 4096 });
    let mut frames: Vec<(usize, Range<usize>)> = Vec::new();
    let mut lines = 0i64;
    let mut eof = false;
    let received_at = SystemTime::now();
    let ingest_time = rfc3339_micros(chrono::Utc::now());
    while records.len() < max_records && lines < max_lines {
        let line_start = arena.len();
        if reader.read_until(b'\n', &mut arena)? == 0 {
            eof = true;
            break;
        }
        let offset = first_line + lines;
        lines += 1;
        state.counters.lines += 1;
        let range = trimmed(&arena[line_start..], offset == 0);
        let range = line_start + range.start..line_start + range.end;
        let line = &arena[range.clone()];
        let mut keep_frame = false;
        if line.is_empty() {
            state.counters.skipped += 1;
            arena.truncate(line_start);
            continue;
        }
        let record = |payload: Vec<u8>, rejected: Option<String>| RawRecord {
            topic: topic.to_owned(),
            partition: 0,
            offset,
            payload,
            rejected,
            frame: None,
            received_at,
        };
        match feed::parse(line, coins, &ingest_time) {
            FeedEvent::Trade { record: trade, .. } if trade.coin_name.is_none() => {
                state.counters.invalid += 1;
                let reason = format!("unknown product {} (not in the coin map)", trade.symbol);
                if emit {
                    records.push(record(line.to_vec(), Some(reason)));
                }
            }
            FeedEvent::Trade { record: trade, .. } => {
                let last = state
                    .last_trade_id
                    .entry(trade.symbol.clone())
                    .or_insert(i64::MIN);
                if trade.trade_id <= *last {
                    state.counters.duplicates += 1;
                } else {
                    *last = trade.trade_id;
                    state.counters.trades += 1;
                    if emit {
                        records.push(record(trade.to_json(), None));
                        frames.push((records.len() - 1, range));
                        keep_frame = true;
                    }
                }
            }
            FeedEvent::Invalid(reason) => {
                state.counters.invalid += 1;
                if emit {
                    records.push(record(line.to_vec(), Some(reason)));
                }
            }
            FeedEvent::Error { message, reason } => {
                state.counters.exchange_errors += 1;
                if emit {
                    tracing::warn!(
                        offset,
                        message,
                        reason = reason.as_deref().unwrap_or(""),
                        "The exchange sent an error message."
                    );
                }
            }
            FeedEvent::Heartbeat { .. } | FeedEvent::Subscriptions | FeedEvent::Other(_) => {
                state.counters.skipped += 1
            }
        }
        if !keep_frame {
            arena.truncate(line_start);
        }
    }
    let arena = Bytes::from(arena);
    for (index, range) in frames {
        records[index].frame = Some(arena.slice(range));
    }
    Ok((records, lines, eof))
}

#[async_trait]
impl Source for ReplaySource {
    fn description(&self) -> String {
        format!("replay {}", self.topic)
    }

    fn checkpoint_state(&self) -> Option<serde_json::Value> {
        let state = self.state.as_ref()?;
        Some(serde_json::json!({ STATE_LAST_TRADE_ID: state.last_trade_id }))
    }

    async fn start(&mut self, request: StartRequest) -> Result<()> {
        self.next_line = match &request.committed {
            Some(committed) => self.committed_line(committed)?,
            None => 0,
        };
        let state = match &request.committed_state {
            Some(saved) => ReadState {
                last_trade_id: parse_state(saved).ok_or_else(|| Error::Source {
                    name: self.description(),
                    message: format!(
                        "the checkpointed source state {saved} has no {STATE_LAST_TRADE_ID} map \
                         of product to trade id"
                    ),
                    retry: Retry::Permanent,
                    source: None,
                })?,
                counters: Counters::default(),
            },
            None if self.next_line > 0 => {
                let state = self.rebuild_state(self.next_line).await?;
                tracing::info!(
                    lines = self.next_line,
                    products = state.last_trade_id.len(),
                    "Rebuilt the last trade id per product from the capture (the checkpoint has no source state)."
                );
                state
            }
            None => ReadState::default(),
        };
        self.state = Some(state);
        self.reader = Some(self.open_at(self.next_line)?);
        Ok(())
    }

    async fn fetch_range(&mut self, start: &Offsets, end: &Offsets) -> Result<SourceBatch> {
        let (from, to) = match (self.line_in(start), self.line_in(end)) {
            (Some(from), Some(to)) if from <= to => (from, to),
            _ => {
                return Err(Error::Source {
                    name: self.description(),
                    message: format!(
                        "checkpointed range {start} .. {end} is not a range of this file"
                    ),
                    retry: Retry::Permanent,
                    source: None,
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
                source: None,
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::time::Duration;

    /// The `replay-restart-duplicate` case: subscriptions and BTC-USD matches 831102700..702.
    const PART_A: &str = r#"{"type":"subscriptions","channels":[{"name":"matches","product_ids":["BTC-USD","ETH-USD","ADA-USD","DOGE-USD"]},{"name":"heartbeat","product_ids":["BTC-USD","ETH-USD","ADA-USD","DOGE-USD"]}]}
{"type":"match","trade_id":831102700,"maker_order_id":"00000000-0000-4000-8000-000831102700","taker_order_id":"00000000-0000-4000-9000-000831102700","side":"sell","size":"0.1","price":"104212.35","product_id":"BTC-USD","sequence":104512339200,"time":"2025-05-12T14:03:22.100000Z"}
{"type":"match","trade_id":831102701,"maker_order_id":"00000000-0000-4000-8000-000831102701","taker_order_id":"00000000-0000-4000-9000-000831102701","side":"sell","size":"0.2","price":"104212.36","product_id":"BTC-USD","sequence":104512339201,"time":"2025-05-12T14:03:22.200000Z"}
{"type":"match","trade_id":831102702,"maker_order_id":"00000000-0000-4000-8000-000831102702","taker_order_id":"00000000-0000-4000-9000-000831102702","side":"buy","size":"0.3","price":"104212.37","product_id":"BTC-USD","sequence":104512339202,"time":"2025-05-12T14:03:22.300000Z"}
"#;
    /// A reconnect as the capture shows it: the ack, `last_match` repeating 831102702, a new
    /// match, and a `match` overlapping one already captured.
    const PART_B: &str = r#"{"type":"subscriptions","channels":[{"name":"matches","product_ids":["BTC-USD","ETH-USD","ADA-USD","DOGE-USD"]},{"name":"heartbeat","product_ids":["BTC-USD","ETH-USD","ADA-USD","DOGE-USD"]}]}
{"type":"last_match","trade_id":831102702,"maker_order_id":"00000000-0000-4000-8000-000831102702","taker_order_id":"00000000-0000-4000-9000-000831102702","side":"buy","size":"0.3","price":"104212.37","product_id":"BTC-USD","sequence":104512339202,"time":"2025-05-12T14:03:22.300000Z"}
{"type":"match","trade_id":831102701,"maker_order_id":"00000000-0000-4000-8000-000831102701","taker_order_id":"00000000-0000-4000-9000-000831102701","side":"sell","size":"0.2","price":"104212.36","product_id":"BTC-USD","sequence":104512339201,"time":"2025-05-12T14:03:22.200000Z"}
{"type":"match","trade_id":831102703,"maker_order_id":"00000000-0000-4000-8000-000831102703","taker_order_id":"00000000-0000-4000-9000-000831102703","side":"sell","size":"0.4","price":"104212.38","product_id":"BTC-USD","sequence":104512339300,"time":"2025-05-12T14:03:25.100000Z"}
"#;

    fn source(path: &Path) -> ReplaySource {
        ReplaySource::new(ReplayConfig {
            path: path.to_owned(),
            coin_map: Path::new(env!("CARGO_MANIFEST_DIR")).join("../required_data/coin_map.json"),
        })
        .unwrap()
    }

    const LIMITS: PollLimits = PollLimits {
        max_records: 2,
        max_wait: Duration::from_millis(10),
    };

    /// Starts `source` as the engine does and polls to the end, as a run with commits after each
    /// batch: the handed-out records, the end offsets and the state saved with the last batch.
    async fn run(
        source: &mut ReplaySource,
        committed: Option<Offsets>,
        committed_state: Option<serde_json::Value>,
    ) -> (Vec<RawRecord>, Option<Offsets>, Option<serde_json::Value>) {
        source
            .start(StartRequest {
                committed: committed.clone(),
                available_now: true,
                committed_state: committed_state.clone(),
            })
            .await
            .unwrap();
        let (mut records, mut end, mut state) = (Vec::new(), committed, committed_state);
        while let Poll::Batch(batch) = source.poll(LIMITS).await.unwrap() {
            records.extend(batch.records);
            end = Some(batch.end);
            state = source.checkpoint_state();
        }
        (records, end, state)
    }

    fn trade_ids(records: &[RawRecord]) -> Vec<i64> {
        records
            .iter()
            .map(|r| {
                let v: serde_json::Value = serde_json::from_slice(&r.payload).unwrap();
                v["trade_id"].as_i64().unwrap()
            })
            .collect()
    }

    #[tokio::test]
    async fn a_capture_that_grew_with_a_reconnect_stores_each_trade_once_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("capture.jsonl");
        std::fs::write(&path, PART_A).unwrap();
        let (first, end, state) = run(&mut source(&path), None, None).await;
        assert_eq!(trade_ids(&first), [831102700, 831102701, 831102702]);
        assert_eq!(
            state,
            Some(serde_json::json!({"lastTradeId": {"BTC-USD": 831102702}}))
        );

        let mut grown = PART_A.to_owned();
        grown.push_str(PART_B);
        std::fs::write(&path, grown).unwrap();
        let mut again = source(&path);
        let (second, _, state) = run(&mut again, end.clone(), state).await;
        assert_eq!(trade_ids(&second), [831102703], "the repeats are dropped");
        assert_eq!(
            state,
            Some(serde_json::json!({"lastTradeId": {"BTC-USD": 831102703}}))
        );
        let metrics: BTreeMap<_, _> = again.metrics().into_iter().collect();
        assert_eq!(metrics["duplicates"], 2);

        // A checkpoint of an older version has offsets and no state: the state is rebuilt from
        // the capture up to the committed line, with the same outcome.
        let (rebuilt, _, _) = run(&mut source(&path), end, None).await;
        assert_eq!(trade_ids(&rebuilt), [831102703]);
    }

    #[tokio::test]
    async fn an_uncommitted_batch_is_replayed_from_the_state_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("capture.jsonl");
        std::fs::write(&path, format!("{PART_A}{PART_B}")).unwrap();
        // Batches of 2 records: lines 0..3 (700, 701), then 3..7 (702, 703). Replay the second
        // from the state the first one left.
        let mut src = source(&path);
        let mut committed = Offsets::new();
        committed.set(&src.topic.clone(), 0, 3);
        let mut end = Offsets::new();
        end.set(&src.topic.clone(), 0, 8);
        src.start(StartRequest {
            committed: Some(committed.clone()),
            available_now: true,
            committed_state: Some(serde_json::json!({"lastTradeId": {"BTC-USD": 831102701}})),
        })
        .await
        .unwrap();
        let batch = src.fetch_range(&committed, &end).await.unwrap();
        assert_eq!(trade_ids(&batch.records), [831102702, 831102703]);
    }

    #[tokio::test]
    async fn the_position_does_not_depend_on_how_the_path_was_typed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let path = dir.path().join("capture.jsonl");
        std::fs::write(&path, PART_A).unwrap();
        let typed = dir.path().join("sub/../././capture.jsonl");
        let canonical = std::fs::canonicalize(&path).unwrap();
        assert_eq!(source(&typed).topic, canonical.display().to_string());
        assert_eq!(source(&typed).identity(), source(&path).identity());
        #[cfg(unix)]
        {
            let link = dir.path().join("link.jsonl");
            std::os::unix::fs::symlink(&path, &link).unwrap();
            assert_eq!(source(&link).topic, source(&path).topic);
        }

        // An older version keyed the file by the path as typed: that position is adopted.
        let mut legacy = Offsets::new();
        legacy.set(&typed.display().to_string(), 0, 3);
        let (records, end, _) = run(&mut source(&path), Some(legacy), None).await;
        assert_eq!(trade_ids(&records), [831102702]);
        assert_eq!(
            end.unwrap().get(&canonical.display().to_string(), 0),
            Some(4)
        );

        // A position in another file is refused, naming both.
        let mut other = Offsets::new();
        other.set("/elsewhere/other.jsonl", 0, 3);
        let err = source(&path)
            .start(StartRequest {
                committed: Some(other),
                ..Default::default()
            })
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("/elsewhere/other.jsonl")
                && err.contains(&canonical.display().to_string()),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_byte_order_mark_is_skipped_and_crlf_lines_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("capture.jsonl");
        let lines: Vec<&str> = PART_A.lines().collect();
        let mut body = b"\xEF\xBB\xBF".to_vec();
        body.extend_from_slice(format!("{}\r\n{}\r\n", lines[1], lines[2]).as_bytes());
        std::fs::write(&path, body).unwrap();
        let (records, _, _) = run(&mut source(&path), None, None).await;
        assert_eq!(trade_ids(&records), [831102700, 831102701]);
        assert!(records.iter().all(|r| r.rejected.is_none()));
        // Each record keeps its line as received (without the mark and the line end).
        assert_eq!(records[0].frame.as_deref(), Some(lines[1].as_bytes()));
        assert_eq!(records[1].frame.as_deref(), Some(lines[2].as_bytes()));

        // A mark anywhere else is not skipped: that line is not JSON.
        let mut body = format!("{}\n", lines[1]).into_bytes();
        body.extend_from_slice(b"\xEF\xBB\xBF");
        body.extend_from_slice(lines[2].as_bytes());
        std::fs::write(&path, body).unwrap();
        let (records, _, _) = run(&mut source(&path), None, None).await;
        assert_eq!(records.len(), 2);
        assert!(records[1].rejected.is_some(), "{:?}", records[1].rejected);
    }
}
