//! `[source] type = "coinbase_capture"`: reads a capture of Coinbase Exchange feed messages, one
//! JSON message per line exactly as the feed sends them (as `coinstream ingest coinbase` or any
//! WebSocket recorder writes them). The type was called `replay` before; that name is still
//! accepted, with a deprecation warning. Trades (`match`, `last_match`) are normalised to bus records; heartbeats,
//! subscriptions and unknown types are skipped; unusable lines (and trades of products missing from
//! the coin map) are passed on as rejected so they reach the dead-letter output with their reason.
//! A UTF-8 byte-order mark before the first line is skipped (RFC 8259 §8.1 lets parsers ignore
//! one; editors on Windows write it), and CRLF line ends work.
//!
//! A batch's offset is `{"file":"/data/feed.jsonl","lines":120,"lastTradeId":{"BTC-USD":42}}`:
//! the file's canonical path (so a position does not depend on how the path was typed nor on the
//! folder `run` started in), the lines read, and the de-duplication state there. A batch can be
//! read again exactly after a crash. A record's position is its line; a dead letter names it as
//! `{"file":"/data/feed.jsonl","line":12}`, counting lines from 1 as editors do.
//!
//! A capture repeats trades: after a reconnect the feed sends `last_match` again and may overlap
//! `match`es already captured. The source drops a trade whose id is not above the last one handed
//! out for its product, and that last id per product is part of each offset, so a capture that grew
//! between two runs stores each trade once.
//!
//! Offsets of older versions are read too ([`engine::checkpoint`] has their forms): the file keyed
//! by its path (as typed, in the oldest ones) with the line under partition 0, and the state
//! beside it where it was saved. Without a saved state, it is rebuilt by reading the capture up to
//! the committed line.
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use engine::checkpoint::{LEGACY_OFFSETS, LEGACY_STATE};
use engine::decode::{FlatRows, RowLayout};
use engine::{
    Bytes, Error, OffsetRange, Poll, PollLimits, RawRecord, RecordPosition, Result, Retry, Source,
    SourceBatch, SourceOffset, StartRequest,
};
use serde::{Deserialize, Serialize};

use super::feed::{self, FeedEvent};
use crate::common::config::{self, Problem};
use crate::common::reference_files::read_coin_map;
use crate::common::trade::{TradeColumns, rfc3339_micros};

/// `[source] type = "coinbase_capture"` (formerly `"replay"`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoinbaseCaptureConfig {
    /// The file of feed messages (JSON lines), relative to the config file.
    #[serde(deserialize_with = "config::path")]
    pub path: PathBuf,
    /// The coin map used to name coins (`product id → name`), relative to the config file.
    #[serde(deserialize_with = "config::path")]
    pub coin_map: PathBuf,
}

impl CoinbaseCaptureConfig {
    /// Every problem serde cannot see (keys relative to the section): the capture must be a
    /// readable file and the coin map must read.
    pub fn check(&self) -> Vec<Problem> {
        let mut problems: Vec<Problem> = config::readable_file("path", &self.path)
            .into_iter()
            .collect();
        if let Err(e) = read_coin_map(&self.coin_map) {
            problems.push(Problem::new("coin_map", e.to_string()));
        }
        problems
    }
}

/// Counters of a capture read.
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
#[derive(Debug, Default, Clone)]
struct ReadState {
    last_trade_id: BTreeMap<String, i64>,
    counters: Counters,
}

/// The key of the last trade id per product in the state older versions saved beside offsets.
const STATE_LAST_TRADE_ID: &str = "lastTradeId";

/// A batch's start or end in the capture (the engine's [`SourceOffset`] of this source).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CaptureOffset {
    /// The file's canonical path.
    file: String,
    /// Lines read: the next line to read, counted from 0.
    lines: i64,
    /// The last trade id handed out per product, to drop the trades the capture repeats.
    last_trade_id: BTreeMap<String, i64>,
}

/// An older version's offsets: the file (keyed by its path) with the line under partition 0.
type LegacyOffsets = BTreeMap<String, BTreeMap<i32, i64>>;

/// Where an offset stands in this file: the next line and, when the offset holds it, the
/// de-duplication state there.
struct Resolved {
    line: i64,
    last_trade_id: Option<BTreeMap<String, i64>>,
}

/// What `read_lines` read.
struct Read {
    records: Vec<RawRecord>,
    /// The rows of the trades it built rows for, in parts, when the engine offered its builder.
    rows: Vec<Result<FlatRows>>,
    /// Lines read.
    lines: i64,
    /// Whether the file ended.
    eof: bool,
    /// The buffer the lines were read into, which the records' frames are slices of: kept by
    /// the source to read a later batch into once those records are gone.
    buffer: Bytes,
}

/// The read buffers kept for reuse: one batch's in the engine and one read ahead are the most
/// in use at once.
const SPARE_BUFFERS: usize = 2;

/// What `read_lines` hands back from its blocking task: the reader and state, moved back, and
/// what it read.
type ReadDone = (BufReader<File>, ReadState, std::io::Result<Read>);

/// A read started before the engine asked for it (see [`CoinbaseCaptureSource::poll`]).
struct ReadAhead {
    task: tokio::task::JoinHandle<ReadDone>,
    /// The batch's first line and start offset, and the state before it: what a read that
    /// turns out to be unwanted is undone to.
    first: i64,
    start: SourceOffset,
    before: ReadState,
    max_records: usize,
}

/// The UTF-8 byte-order mark.
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// The Coinbase capture source.
pub struct CoinbaseCaptureSource {
    config: CoinbaseCaptureConfig,
    /// The file's canonical path: in offsets, positions and the identity.
    file: String,
    coins: Arc<BTreeMap<String, String>>,
    reader: Option<BufReader<File>>,
    state: Option<ReadState>,
    next_line: i64,
    at_end: bool,
    /// Set by `start`: a poll before it would read from the first line, whatever was committed.
    started: bool,
    /// Set by `start` for an available-now run: each poll starts reading the next batch, so
    /// that parsing it (on a blocking thread) overlaps the engine's work on the current one.
    read_ahead: bool,
    ahead: Option<ReadAhead>,
    /// The counters as of the last batch handed out (the state itself may be with a read
    /// ahead).
    counters: Counters,
    /// Set by `build_rows`: trades are handed over as rows, not as JSON.
    columns: Option<TradeColumns>,
    /// The buffers of the last batches read, newest last: a batch is read into one whose
    /// records the engine has dropped, so that its pages are not faulted in afresh each batch
    /// (some 30 MB for 100,000 lines: about half the embedded job's page faults at that size).
    spare_buffers: Vec<Bytes>,
}

impl CoinbaseCaptureSource {
    /// Builds the source; reads the coin map now so a bad one fails before any data flows.
    pub fn new(config: CoinbaseCaptureConfig) -> Result<Self> {
        let coins = Arc::new(read_coin_map(&config.coin_map)?);
        let file = canonical(&config.path);
        Ok(Self {
            config,
            file,
            coins,
            reader: None,
            state: Some(ReadState::default()),
            next_line: 0,
            at_end: false,
            started: false,
            read_ahead: false,
            ahead: None,
            counters: Counters::default(),
            columns: None,
            spare_buffers: Vec::new(),
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

    fn error(&self, message: String) -> Error {
        Error::source_failed(self.description(), message, Retry::Permanent)
    }

    /// The offset at `lines` with the current de-duplication state.
    fn offset(&self, lines: i64) -> Result<SourceOffset> {
        SourceOffset::of(&CaptureOffset {
            file: self.file.clone(),
            lines,
            last_trade_id: self
                .state
                .as_ref()
                .map(|s| s.last_trade_id.clone())
                .unwrap_or_default(),
        })
    }

    /// Reads lines from the current position: until `max_records` records, `max_lines` lines or
    /// the end of the file; returns the batch and the lines it spans. Blocking IO runs off the
    /// async executor.
    async fn read(&mut self, max_records: usize, max_lines: i64) -> Result<(SourceBatch, i64)> {
        let ahead = self.begin_read(max_records, max_lines)?;
        self.finish_read(ahead).await
    }

    /// Starts reading the next batch on a blocking thread; the reader and state go with it.
    fn begin_read(&mut self, max_records: usize, max_lines: i64) -> Result<ReadAhead> {
        let mut reader = match self.reader.take() {
            Some(r) => r,
            None => self.open_at(self.next_line)?,
        };
        let first = self.next_line;
        let start = self.offset(first)?;
        let mut state = self.state.take().unwrap_or_default();
        let before = state.clone();
        let coins = self.coins.clone();
        let columns = self.columns.clone();
        let buffer = self.free_buffer();
        let task = tokio::task::spawn_blocking(move || {
            let result = read_lines(
                &mut reader,
                &mut state,
                &coins,
                first,
                max_records,
                max_lines,
                Emit::Records(columns.as_ref(), buffer),
            );
            (reader, state, result)
        });
        Ok(ReadAhead {
            task,
            first,
            start,
            before,
            max_records,
        })
    }

    /// An empty buffer to read a batch into: a spare one no record holds any more (its pages
    /// are in memory already), or a new one.
    fn free_buffer(&mut self) -> Vec<u8> {
        let mut free = None;
        for buffer in std::mem::take(&mut self.spare_buffers) {
            match buffer.try_into_mut() {
                Ok(mut unused) if free.is_none() => {
                    // Emptied first: turning it into a `Vec` would otherwise move its bytes.
                    unused.clear();
                    free = Some(Vec::from(unused));
                }
                Ok(_) => {}
                Err(in_use) => self.spare_buffers.push(in_use),
            }
        }
        free.unwrap_or_default()
    }

    /// Waits for a read and takes its reader and state back.
    async fn finish_read(&mut self, ahead: ReadAhead) -> Result<(SourceBatch, i64)> {
        let (reader, state, result) = ahead
            .task
            .await
            .map_err(|e| Error::Internal(format!("capture reader task failed: {e}")))?;
        self.reader = Some(reader);
        self.counters = state.counters.clone();
        self.state = Some(state);
        let Read {
            records,
            rows,
            lines,
            eof,
            buffer,
        } = result.map_err(|e| self.io_error(e))?;
        if self.spare_buffers.len() >= SPARE_BUFFERS {
            self.spare_buffers.remove(0);
        }
        self.spare_buffers.push(buffer);
        self.next_line = ahead.first + lines;
        self.at_end = eof;
        let batch = SourceBatch {
            records,
            start: ahead.start,
            end: self.offset(self.next_line)?,
            rows: match (&self.columns, rows.is_empty()) {
                (Some(columns), false) => Some(FlatRows::concat(
                    columns.schema(),
                    rows.into_iter().collect::<Result<_>>()?,
                )?),
                _ => None,
            },
        };
        Ok((batch, lines))
    }

    /// Drops a read ahead that is not wanted after all: back to where it started.
    async fn undo_read_ahead(&mut self) -> Result<()> {
        if let Some(ReadAhead {
            task,
            first,
            before,
            ..
        }) = self.ahead.take()
        {
            // Waited for, not aborted: a blocking read cannot be interrupted.
            let _ = task.await;
            self.counters = before.counters.clone();
            self.state = Some(before);
            self.reader = Some(self.open_at(first)?);
            self.next_line = first;
            self.at_end = false;
        }
        Ok(())
    }

    /// Where `offset` stands in this file: this version's offset, or an older version's (module
    /// docs). A position in another file is an error naming both, never a silent start from line 0.
    fn resolve(&self, offset: &SourceOffset) -> Result<Resolved> {
        let json = offset.json();
        if json.get("file").is_some() {
            let offset: CaptureOffset = offset.parse().map_err(|e| {
                self.error(format!(
                    "the checkpointed offset {offset} is not a capture offset: {e}"
                ))
            })?;
            if offset.file != self.file {
                return Err(self.other_file(&offset.file));
            }
            return Ok(Resolved {
                line: offset.lines,
                last_trade_id: Some(offset.last_trade_id),
            });
        }
        let unreadable = |e: serde_json::Error| {
            self.error(format!("unreadable checkpointed offset {offset}: {e}"))
        };
        let (legacy, state) = match (json.get(LEGACY_OFFSETS), json.get(LEGACY_STATE)) {
            (Some(offsets), Some(state)) => (offsets, Some(state)),
            _ => (json, None),
        };
        let legacy: LegacyOffsets = LegacyOffsets::deserialize(legacy).map_err(unreadable)?;
        let last_trade_id = match state {
            Some(state) => Some(parse_state(state).ok_or_else(|| {
                self.error(format!(
                    "the checkpointed source state {state} has no {STATE_LAST_TRADE_ID} map of \
                     product to trade id"
                ))
            })?),
            None => None,
        };
        Ok(Resolved {
            line: self.legacy_line(&legacy)?,
            last_trade_id,
        })
    }

    /// The line of this file in an older version's offsets. The oldest keyed the file by the path
    /// as it was typed: that key is adopted when it names the same file.
    fn legacy_line(&self, offsets: &LegacyOffsets) -> Result<i64> {
        if let Some(line) = offsets.get(&self.file).and_then(|p| p.get(&0)) {
            return Ok(*line);
        }
        if offsets.values().all(BTreeMap::is_empty) {
            return Ok(0);
        }
        if let [(only, partitions)] = offsets.iter().collect::<Vec<_>>().as_slice()
            && canonical(std::path::Path::new(only.as_str())) == self.file
            && let Some(line) = partitions.get(&0)
        {
            tracing::info!(checkpoint_topic = %only, file = %self.file,
                "Adopting the position a checkpoint of an older version holds for this file.");
            return Ok(*line);
        }
        let files: Vec<&str> = offsets.keys().map(String::as_str).collect();
        Err(self.other_file(&files.join(", ")))
    }

    fn other_file(&self, files: &str) -> Error {
        self.error(format!(
            "the checkpoint holds positions in {files} and not in {}: it belongs to another \
             source; give this query its own checkpoint_dir",
            self.file
        ))
    }

    /// The de-duplication state at `resolved`: its own, else rebuilt from the file.
    async fn state_at(&self, resolved: &Resolved) -> Result<ReadState> {
        Ok(match &resolved.last_trade_id {
            Some(last_trade_id) => ReadState {
                last_trade_id: last_trade_id.clone(),
                counters: Counters::default(),
            },
            None if resolved.line > 0 => {
                let state = self.rebuild_state(resolved.line).await?;
                tracing::info!(
                    lines = resolved.line,
                    products = state.last_trade_id.len(),
                    "Rebuilt the last trade id per product from the capture (the checkpoint has no source state)."
                );
                state
            }
            None => ReadState::default(),
        })
    }

    /// The de-duplication state after the first `lines` lines, read from the file (for a
    /// checkpoint without saved state).
    async fn rebuild_state(&self, lines: i64) -> Result<ReadState> {
        let mut reader = self.open_at(0)?;
        let coins = self.coins.clone();
        let (state, result) = tokio::task::spawn_blocking(move || {
            let mut state = ReadState::default();
            let result = read_lines(
                &mut reader,
                &mut state,
                &coins,
                0,
                usize::MAX,
                lines,
                Emit::Nothing,
            );
            (state, result)
        })
        .await
        .map_err(|e| Error::Internal(format!("capture reader task failed: {e}")))?;
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

/// What `read_lines` hands back besides the state.
enum Emit<'a> {
    /// Only the state is rebuilt.
    Nothing,
    /// The records, and the trades' rows when there are columns to build them in; the lines
    /// are read into the buffer given (emptied, its capacity kept).
    Records(Option<&'a TradeColumns>, Vec<u8>),
}

/// The fewest lines parsed on a thread of their own: below it, starting the thread costs more
/// than its share of the parsing saves.
const PARSE_PART_LINES: usize = 4_096;

/// The most lines read and parsed in one round (what a rebuild of the state holds at once).
const ROUND_LINES: usize = 16_384;

/// Reads lines, updating `state`, and returns what `emit` asks for.
///
/// Lines are read in rounds. Each round's lines are parsed on every core at once; the state,
/// the counters and the records then follow the lines in order, as if read one by one; and the
/// rows of the round's new trades are built on every core at once. A line makes at most one
/// record, so a round reads no more lines than the batch still lacks records, and never reads
/// past the batch's end. The lines stay in one buffer per batch that the records share: a record
/// keeps its line as received (`frame`) at no copy.
fn read_lines(
    reader: &mut BufReader<File>,
    state: &mut ReadState,
    coins: &BTreeMap<String, String>,
    first_line: i64,
    max_records: usize,
    max_lines: i64,
    emit: Emit<'_>,
) -> std::io::Result<Read> {
    let (emit, columns, mut arena) = match emit {
        Emit::Nothing => (false, None, Vec::new()),
        Emit::Records(columns, buffer) => (true, columns, buffer),
    };
    let mut records = Vec::with_capacity(if emit { max_records.min(65_536) } else { 0 });
    let mut rows = Vec::new();
    let mut frames: Vec<(usize, Range<usize>)> = Vec::new();
    let mut ranges: Vec<Range<usize>> = Vec::new();
    // The trades whose rows a round builds: (record position, line in the round).
    let mut to_build: Vec<(usize, usize)> = Vec::new();
    let mut lines = 0i64;
    let mut eof = false;
    let received_at = SystemTime::now();
    let ingest_time = rfc3339_micros(chrono::Utc::now());
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    while !eof && records.len() < max_records && lines < max_lines {
        let want = (max_records - records.len())
            .min(ROUND_LINES)
            .min(usize::try_from(max_lines - lines).unwrap_or(usize::MAX));
        if !emit {
            arena.clear();
        }
        // Room for the round's lines at the length of those read so far (a line of a feed
        // frame is about 300 bytes), so the buffer is not copied as it grows.
        let line_bytes = if lines > 0 {
            arena.len() / lines as usize + 1
        } else {
            320
        };
        arena.reserve(want.saturating_mul(line_bytes).min(256 << 20));
        ranges.clear();
        let round_first = first_line + lines;
        while ranges.len() < want {
            let start = arena.len();
            if reader.read_until(b'\n', &mut arena)? == 0 {
                eof = true;
                break;
            }
            let range = trimmed(&arena[start..], round_first + ranges.len() as i64 == 0);
            ranges.push(start + range.start..start + range.end);
        }
        let parsed = parse_lines(&arena, &ranges, coins, &ingest_time, cores);
        // The parts' events in line order, by reference: an event is about 220 bytes, and
        // moving them all into one vector was a copy of every line's event each round.
        let events: Vec<&Option<FeedEvent>> = parsed.iter().flatten().collect();
        to_build.clear();
        for (k, (range, event)) in ranges.iter().zip(events.iter().copied()).enumerate() {
            let offset = round_first + k as i64;
            lines += 1;
            state.counters.lines += 1;
            let Some(event) = event else {
                state.counters.skipped += 1;
                continue;
            };
            // The record this line makes, if any, goes there.
            let position = records.len();
            // A record the source rejects keeps its line as its frame, with no payload: the
            // engine dead-letters it with its reason without reading it.
            let mut record = |payload: Vec<u8>, rejected: Option<String>| {
                frames.push((position, range.clone()));
                records.push(RawRecord {
                    position: RecordPosition::new(0, offset),
                    payload,
                    rejected,
                    frame: None,
                    received_at,
                });
            };
            match event {
                FeedEvent::Trade { record: trade, .. } if trade.coin_name.is_none() => {
                    state.counters.invalid += 1;
                    if emit {
                        let reason =
                            format!("unknown product {} (not in the coin map)", trade.symbol);
                        record(Vec::new(), Some(reason));
                    }
                }
                FeedEvent::Trade { record: trade, .. } => {
                    // The product's key is copied only the first time it is seen.
                    let last = match state.last_trade_id.get_mut(trade.symbol.as_ref()) {
                        Some(last) => last,
                        None => state
                            .last_trade_id
                            .entry(trade.symbol.to_string())
                            .or_insert(i64::MIN),
                    };
                    if trade.trade_id <= *last {
                        state.counters.duplicates += 1;
                    } else {
                        *last = trade.trade_id;
                        state.counters.trades += 1;
                        if emit && columns.is_some() {
                            // Its row is built below; a trade the builder refuses gets its JSON.
                            to_build.push((position, k));
                            record(Vec::new(), None);
                        } else if emit {
                            record(trade.to_json(), None);
                        }
                    }
                }
                FeedEvent::Invalid(reason) => {
                    state.counters.invalid += 1;
                    if emit {
                        record(Vec::new(), Some(reason.clone()));
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
        }
        if let Some(columns) = columns {
            let trade = |k: usize| match events[k] {
                Some(FeedEvent::Trade { record, .. }) => Some(record),
                _ => None,
            };
            for (built, refused) in in_parts(&to_build, cores, |part| {
                let mut rows = columns.builder(part.len());
                let mut refused = Vec::new();
                for &(position, k) in part {
                    if let Some(t) = trade(k)
                        && !columns.append(&mut rows, t, position)
                    {
                        refused.push((position, t.to_json()));
                    }
                }
                (rows.finish(), refused)
            }) {
                rows.push(built);
                for (position, json) in refused {
                    records[position].payload = json;
                }
            }
        }
    }
    let arena = Bytes::from(arena);
    for (index, range) in frames {
        records[index].frame = Some(arena.slice(range));
    }
    Ok(Read {
        records,
        rows,
        lines,
        eof,
        buffer: arena,
    })
}

/// Parses the lines of `arena` at `ranges` (an empty range is no event) on up to `cores`
/// threads: each line's event, in line order, in consecutive parts.
fn parse_lines<'a>(
    arena: &'a [u8],
    ranges: &[Range<usize>],
    coins: &'a BTreeMap<String, String>,
    ingest_time: &'a str,
    cores: usize,
) -> Vec<Vec<Option<FeedEvent<'a>>>> {
    in_parts(ranges, cores, |part| {
        part.iter()
            .map(|r| (!r.is_empty()).then(|| feed::parse(&arena[r.clone()], coins, ingest_time)))
            .collect()
    })
}

/// `work` over consecutive parts of `items` on up to `cores` threads at once, in parts of at
/// least [`PARSE_PART_LINES`] items (below that, starting a thread costs more than its share of
/// the work saves); the parts' outputs in order.
fn in_parts<T: Sync, R: Send>(
    items: &[T],
    cores: usize,
    work: impl Fn(&[T]) -> R + Sync,
) -> Vec<R> {
    engine::decode::in_parts(items, cores.min(items.len() / PARSE_PART_LINES), work)
}

#[async_trait]
impl Source for CoinbaseCaptureSource {
    fn description(&self) -> String {
        format!("coinbase capture {}", self.file)
    }

    fn identity(&self) -> String {
        format!("coinbase capture {}", self.file)
    }

    fn former_identities(&self) -> Vec<String> {
        // What checkpoints recorded while this source was called `replay`: they stay this
        // query's.
        vec![format!("replay {}", self.file)]
    }

    fn describe_position(&self, position: RecordPosition) -> serde_json::Value {
        serde_json::json!({ "file": self.file, "line": position.offset + 1 })
    }

    fn build_rows(&mut self, layout: RowLayout) {
        self.columns = Some(TradeColumns::new(layout));
    }

    async fn start(&mut self, request: StartRequest) -> Result<()> {
        let resolved = match &request.committed {
            Some(committed) => self.resolve(committed)?,
            None => Resolved {
                line: 0,
                last_trade_id: None,
            },
        };
        self.undo_read_ahead().await?;
        self.state = Some(self.state_at(&resolved).await?);
        self.counters = self
            .state
            .as_ref()
            .map(|s| s.counters.clone())
            .unwrap_or_default();
        self.next_line = resolved.line;
        self.reader = Some(self.open_at(self.next_line)?);
        self.started = true;
        self.read_ahead = request.available_now;
        Ok(())
    }

    async fn fetch_range(&mut self, range: &OffsetRange) -> Result<SourceBatch> {
        let from = self.resolve(&range.start)?;
        let to = self.resolve(&range.end)?.line;
        if from.line > to {
            return Err(self.error(format!(
                "checkpointed range {range} is not a range of this file"
            )));
        }
        self.undo_read_ahead().await?;
        self.state = Some(self.state_at(&from).await?);
        self.reader = Some(self.open_at(from.line)?);
        self.next_line = from.line;
        let (batch, _) = self.read(usize::MAX, to - from.line).await?;
        if self.next_line != to {
            return Err(self.error(format!(
                "the file ends at line {} but the checkpointed batch ends at {to}",
                self.next_line
            )));
        }
        Ok(batch)
    }

    async fn poll(&mut self, limits: PollLimits) -> Result<Poll> {
        if !self.started {
            return Err(Error::Internal(
                "coinbase capture source polled before start".into(),
            ));
        }
        if self
            .ahead
            .as_ref()
            .is_some_and(|a| a.max_records != limits.max_records)
        {
            self.undo_read_ahead().await?;
        }
        let (batch, lines) = match self.ahead.take() {
            Some(ahead) => self.finish_read(ahead).await?,
            None if self.at_end => return Ok(Poll::Exhausted),
            None => self.read(limits.max_records, i64::MAX).await?,
        };
        if lines == 0 {
            return Ok(Poll::Exhausted);
        }
        // The engine decodes, transforms and writes this batch next, on its own thread: the next
        // one is parsed meanwhile. Nothing of it counts as read until the engine polls it, so a
        // stop or crash loses no position (the checkpoint only knows planned batches).
        if self.read_ahead && !self.at_end {
            self.ahead = Some(self.begin_read(limits.max_records, i64::MAX)?);
        }
        Ok(Poll::Batch(batch))
    }

    async fn commit(&mut self, _end: &SourceOffset) -> Result<()> {
        // The engine's checkpoint holds a file's position; there is nothing to tell the file.
        Ok(())
    }

    fn metrics(&self) -> Vec<(&'static str, u64)> {
        let c = &self.counters;
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

    use testkit::coinbase::RESTART_PART_A as PART_A;

    /// A reconnect as the capture shows it: the ack, `last_match` repeating 831102702, a new
    /// match, and a `match` overlapping one already captured (the case's own part B,
    /// [`testkit::coinbase::RESTART_PART_B`], has no overlap).
    const PART_B: &str = r#"{"type":"subscriptions","channels":[{"name":"matches","product_ids":["BTC-USD","ETH-USD","ADA-USD","DOGE-USD"]},{"name":"heartbeat","product_ids":["BTC-USD","ETH-USD","ADA-USD","DOGE-USD"]}]}
{"type":"last_match","trade_id":831102702,"maker_order_id":"00000000-0000-4000-8000-000831102702","taker_order_id":"00000000-0000-4000-9000-000831102702","side":"buy","size":"0.3","price":"104212.37","product_id":"BTC-USD","sequence":104512339202,"time":"2025-05-12T14:03:22.300000Z"}
{"type":"match","trade_id":831102701,"maker_order_id":"00000000-0000-4000-8000-000831102701","taker_order_id":"00000000-0000-4000-9000-000831102701","side":"sell","size":"0.2","price":"104212.36","product_id":"BTC-USD","sequence":104512339201,"time":"2025-05-12T14:03:22.200000Z"}
{"type":"match","trade_id":831102703,"maker_order_id":"00000000-0000-4000-8000-000831102703","taker_order_id":"00000000-0000-4000-9000-000831102703","side":"sell","size":"0.4","price":"104212.38","product_id":"BTC-USD","sequence":104512339300,"time":"2025-05-12T14:03:25.100000Z"}
"#;

    fn source(path: &Path) -> CoinbaseCaptureSource {
        CoinbaseCaptureSource::new(CoinbaseCaptureConfig {
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
    /// batch: the handed-out records and the last end offset.
    async fn run(
        source: &mut CoinbaseCaptureSource,
        committed: Option<SourceOffset>,
    ) -> (Vec<RawRecord>, Option<SourceOffset>) {
        source
            .start(StartRequest {
                committed: committed.clone(),
                available_now: true,
            })
            .await
            .unwrap();
        let (mut records, mut end) = (Vec::new(), committed);
        while let Poll::Batch(batch) = source.poll(LIMITS).await.unwrap() {
            records.extend(batch.records);
            end = Some(batch.end);
        }
        (records, end)
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

    fn offset(json: serde_json::Value) -> SourceOffset {
        SourceOffset::new(json)
    }

    /// A batch is read into the buffer of an earlier one only once no record holds a frame of
    /// that one: kept records keep their lines however many batches are read after them, and
    /// the batches read into reused buffers hold their own lines.
    #[tokio::test]
    async fn a_read_buffer_is_reused_only_once_no_record_holds_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("feed.jsonl");
        let text = format!("{PART_A}{PART_B}");
        std::fs::write(&path, &text).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let check = |batch: &SourceBatch| {
            for r in &batch.records {
                let line = lines[usize::try_from(r.position.offset).unwrap()];
                assert_eq!(r.frame.as_deref(), Some(line.as_bytes()), "{r:?}");
            }
        };
        let start = StartRequest {
            committed: None,
            available_now: true,
        };
        let one = PollLimits {
            max_records: 1,
            ..LIMITS
        };

        let mut s = source(&path);
        s.start(start.clone()).await.unwrap();
        let mut kept = Vec::new();
        while let Poll::Batch(batch) = s.poll(one).await.unwrap() {
            kept.push(batch);
        }
        assert!(kept.len() >= 3, "several batches: {}", kept.len());
        kept.iter().for_each(check);
        // A buffer handed out to read into lies outside every kept frame (the end-of-file
        // read's, which made no record, may be free).
        let free = s.free_buffer();
        let room =
            free.as_ptr_range().start..free.as_ptr_range().start.wrapping_add(free.capacity());
        for r in kept.iter().flat_map(|b| &b.records) {
            let frame = r.frame.as_deref().unwrap_or_default();
            assert!(!room.contains(&frame.as_ptr()), "{r:?} is in a free buffer");
        }
        drop(kept);
        assert!(s.free_buffer().capacity() > 0, "a buffer no record holds");

        // Each batch dropped once checked, as the engine does: later ones reuse the buffers.
        let mut s = source(&path);
        s.start(start).await.unwrap();
        let mut batches = 0;
        while let Poll::Batch(batch) = s.poll(one).await.unwrap() {
            check(&batch);
            batches += 1;
        }
        assert!(batches >= 3);
    }

    /// An available-now run reads the next batch ahead while the engine works on the current
    /// one: the batches, their offsets and the counters are those of a run without reading
    /// ahead, and a planned batch fetched while a read ahead is in flight is read exactly.
    #[tokio::test]
    async fn reading_ahead_changes_no_batch_offset_or_counter() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("feed.jsonl");
        std::fs::write(&path, format!("{PART_A}{PART_B}")).unwrap();
        let batches = |available_now: bool| {
            let path = path.clone();
            async move {
                let mut s = source(&path);
                s.start(StartRequest {
                    committed: None,
                    available_now,
                })
                .await
                .unwrap();
                let mut out = Vec::new();
                while let Poll::Batch(b) = s.poll(LIMITS).await.unwrap() {
                    let lines = s.metrics()[0];
                    out.push((trade_ids(&b.records), b.start, b.end, lines));
                }
                out
            }
        };
        let (ahead, plain) = (batches(true).await, batches(false).await);
        assert!(ahead.len() >= 2, "more than one batch: {ahead:?}");
        assert_eq!(ahead, plain);

        let mut s = source(&path);
        s.start(StartRequest {
            committed: None,
            available_now: true,
        })
        .await
        .unwrap();
        let Poll::Batch(first) = s.poll(LIMITS).await.unwrap() else {
            panic!("no first batch");
        };
        assert!(s.ahead.is_some(), "the second batch is being read");
        let again = s.fetch_range(&first.range()).await.unwrap();
        assert_eq!(trade_ids(&again.records), trade_ids(&first.records));
        assert_eq!(again.end, first.end);
        let Poll::Batch(second) = s.poll(LIMITS).await.unwrap() else {
            panic!("no second batch");
        };
        assert_eq!(
            (second.start, &second.records.len()),
            (first.end, &ahead[1].0.len())
        );
    }

    #[tokio::test]
    async fn a_capture_that_grew_with_a_reconnect_stores_each_trade_once_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("capture.jsonl");
        std::fs::write(&path, PART_A).unwrap();
        let file = canonical(&path);
        let (first, end) = run(&mut source(&path), None).await;
        assert_eq!(trade_ids(&first), [831102700, 831102701, 831102702]);
        assert_eq!(
            end.as_ref().unwrap().json(),
            &serde_json::json!({"file": file, "lines": 4, "lastTradeId": {"BTC-USD": 831102702}})
        );

        let mut grown = PART_A.to_owned();
        grown.push_str(PART_B);
        std::fs::write(&path, grown).unwrap();
        let mut again = source(&path);
        let (second, last) = run(&mut again, end.clone()).await;
        assert_eq!(trade_ids(&second), [831102703], "the repeats are dropped");
        assert_eq!(
            last.unwrap().json()["lastTradeId"],
            serde_json::json!({"BTC-USD": 831102703})
        );
        let metrics: BTreeMap<_, _> = again.metrics().into_iter().collect();
        assert_eq!(metrics["duplicates"], 2);

        // Offsets of older versions, with the state saved beside them and without it (then it
        // is rebuilt from the capture up to the committed line): the same outcome.
        for older in [
            serde_json::json!({
                LEGACY_OFFSETS: {&file: {"0": 4}},
                LEGACY_STATE: {"lastTradeId": {"BTC-USD": 831102702}},
            }),
            serde_json::json!({&file: {"0": 4}}),
        ] {
            let (records, _) = run(&mut source(&path), Some(offset(older))).await;
            assert_eq!(trade_ids(&records), [831102703]);
        }
    }

    #[tokio::test]
    async fn an_uncommitted_batch_is_read_again_from_the_state_at_its_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("capture.jsonl");
        std::fs::write(&path, format!("{PART_A}{PART_B}")).unwrap();
        let file = canonical(&path);
        // Batches of 2 records: lines 0..3 (700, 701), then 3..8 (702, 703). Read the second
        // again from the state the first one left, in this version's offsets and an older one's.
        let start =
            serde_json::json!({"file": file, "lines": 3, "lastTradeId": {"BTC-USD": 831102701}});
        let end =
            serde_json::json!({"file": file, "lines": 8, "lastTradeId": {"BTC-USD": 831102703}});
        let older_start = serde_json::json!({
            LEGACY_OFFSETS: {&file: {"0": 3}},
            LEGACY_STATE: {"lastTradeId": {"BTC-USD": 831102701}},
        });
        let older_end = serde_json::json!({
            LEGACY_OFFSETS: {&file: {"0": 8}},
            LEGACY_STATE: {"lastTradeId": {"BTC-USD": 831102703}},
        });
        for (start, end) in [(start, end), (older_start, older_end)] {
            let mut src = source(&path);
            let (start, end) = (offset(start), offset(end));
            src.start(StartRequest {
                committed: Some(start.clone()),
                available_now: true,
            })
            .await
            .unwrap();
            let batch = src.fetch_range(&OffsetRange { start, end }).await.unwrap();
            assert_eq!(trade_ids(&batch.records), [831102702, 831102703]);
            assert_eq!(batch.end.json()["lines"], 8);
        }
    }

    /// With the engine's row builder offered, trades come as rows instead of JSON: every batch
    /// decodes into the rows and dead letters its JSON gave, in the same order; in small
    /// batches, and in batches whose rounds parse and build on more than one thread.
    #[tokio::test]
    async fn trades_handed_over_as_rows_decode_as_their_json_did() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("capture.jsonl");
        let odd = [
            // Not in the coin map: rejected by the source.
            r#"{"type":"match","trade_id":5,"side":"buy","size":"1","price":"2","product_id":"FOO-USD","sequence":1,"time":"2025-05-12T14:03:25.100000Z"}"#,
            // A price beyond DECIMAL(28,10): refused by the builder, dead-lettered by the decoder.
            r#"{"type":"match","trade_id":831102800,"side":"buy","size":"1","price":"1e30","product_id":"BTC-USD","sequence":2,"time":"2025-05-12T14:03:26.100000Z"}"#,
            "not json",
            // Rounded to the column's scale.
            r#"{"type":"match","trade_id":831102801,"side":"sell","size":"0.123456789012345","price":"3","product_id":"BTC-USD","time":"2025-05-12T14:03:27Z"}"#,
        ];
        // Trades enough for rounds on more than one thread, with repeats (dropped by the source)
        // and refused prices among them.
        let many: String = (0..3 * PARSE_PART_LINES as i64)
            .map(|i| {
                let id = 831_103_000 + if i % 100 == 99 { i - 50 } else { i };
                let price = if i % 997 == 500 { "1e30" } else { "104212.5" };
                format!(
                    r#"{{"type":"match","trade_id":{id},"side":"buy","size":"0.25","price":"{price}","product_id":"BTC-USD","sequence":{i},"time":"2025-05-12T14:04:00.{i:06}Z"}}"#,
                ) + "\n"
            })
            .collect();
        std::fs::write(&path, format!("{PART_A}{PART_B}{}\n{many}", odd.join("\n"))).unwrap();
        let schema = crate::common::trade::trade_schema();
        let decode_all = |batches: Vec<SourceBatch>| {
            let mut decoder = engine::decode::RecordDecoder::new(schema.clone());
            let (mut rows, mut letters, mut rounded, mut built) = (Vec::new(), Vec::new(), 0, 0);
            for b in batches {
                let d = decoder.decode_with(&b.records, b.rows.as_ref()).unwrap();
                built += b.rows.map_or(0, |r| r.accepted.len());
                rows.push(d.batch);
                letters.extend(d.dead_letters);
                rounded += d.rounded_decimals;
            }
            // Without the ingest time, which differs from run to run.
            let rows = arrow::compute::concat_batches(&schema, &rows).unwrap();
            let rows = rows.project(&[0, 1, 2, 3, 4, 5, 6, 7]).unwrap();
            let letters: Vec<_> = letters
                .into_iter()
                .map(|l| (l.record_position, l.raw, l.reason))
                .collect();
            (rows, letters, rounded, built)
        };
        let big = PollLimits {
            max_records: 100_000,
            ..LIMITS
        };
        for limits in [LIMITS, big] {
            let mut batches = [Vec::new(), Vec::new()];
            for (offer, batches) in batches.iter_mut().enumerate() {
                let mut src = source(&path);
                if offer == 1 {
                    let decoder = engine::decode::RecordDecoder::new(schema.clone());
                    src.build_rows(decoder.row_layout().unwrap());
                }
                src.start(StartRequest {
                    committed: None,
                    available_now: true,
                })
                .await
                .unwrap();
                while let Poll::Batch(batch) = src.poll(limits).await.unwrap() {
                    batches.push(batch);
                }
            }
            let [json, rows] = batches;
            let (json, rows) = (decode_all(json), decode_all(rows));
            assert_eq!(json.3, 0);
            assert_eq!(rows.0, json.0);
            assert_eq!(rows.1, json.1);
            assert_eq!(rows.2, json.2);
            assert_eq!(rows.2, 1, "one size rounded");
            assert_eq!(
                rows.3,
                rows.0.num_rows(),
                "every row that decodes was built"
            );
            // The capture's parts hold 4 new trades and `odd` 1 that decodes; of the 3 * 4,096
            // generated, 122 repeat an earlier id and 12 have a refused price.
            assert_eq!(rows.3, 5 + 3 * PARSE_PART_LINES - 122 - 12);
            let reasons: Vec<&str> = rows.1.iter().map(|l| l.2.as_str()).collect();
            assert_eq!(reasons.len(), 3 + 12, "{reasons:?}");
        }
    }

    #[test]
    fn lines_parsed_in_parts_are_the_lines_parsed_one_by_one() {
        let sample: Vec<&str> = PART_A
            .lines()
            .chain(PART_B.lines())
            .chain(["", "not json"])
            .collect();
        let mut arena = Vec::new();
        let mut ranges = Vec::new();
        for i in 0..3 * PARSE_PART_LINES + 7 {
            let line = sample[i % sample.len()].as_bytes();
            ranges.push(arena.len()..arena.len() + line.len());
            arena.extend_from_slice(line);
        }
        let coins = read_coin_map(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("../required_data/coin_map.json"),
        )
        .unwrap();
        let parse = |cores| {
            let parts = parse_lines(&arena, &ranges, &coins, "2026-12-02T00:00:00Z", cores);
            assert_eq!(
                parts.len(),
                cores.min(ranges.len() / PARSE_PART_LINES).max(1)
            );
            parts.into_iter().flatten().collect::<Vec<_>>()
        };
        let one = parse(1);
        assert_eq!(one.len(), ranges.len());
        assert!(
            one.iter()
                .any(|e| matches!(e, Some(FeedEvent::Trade { .. })))
        );
        assert!(one.iter().any(Option::is_none));
        for cores in [2, 3, 8] {
            assert_eq!(parse(cores), one);
        }
    }

    #[tokio::test]
    async fn a_dead_letter_names_the_file_and_the_line_from_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("capture.jsonl");
        let subscriptions = PART_A.lines().next().unwrap();
        std::fs::write(&path, format!("{subscriptions}\nnot json\n")).unwrap();
        let mut src = source(&path);
        let (records, _) = run(&mut src, None).await;
        assert_eq!(records.len(), 1);
        assert!(records[0].rejected.is_some());
        assert_eq!(
            src.describe_position(records[0].position),
            serde_json::json!({"file": canonical(&path), "line": 2})
        );
    }

    #[tokio::test]
    async fn the_position_does_not_depend_on_how_the_path_was_typed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let path = dir.path().join("capture.jsonl");
        std::fs::write(&path, PART_A).unwrap();
        let typed = dir.path().join("sub/../././capture.jsonl");
        let canonical = std::fs::canonicalize(&path).unwrap().display().to_string();
        assert_eq!(source(&typed).file, canonical);
        assert_eq!(source(&typed).identity(), source(&path).identity());
        #[cfg(unix)]
        {
            let link = dir.path().join("link.jsonl");
            std::os::unix::fs::symlink(&path, &link).unwrap();
            assert_eq!(source(&link).file, source(&path).file);
        }

        // An older version keyed the file by the path as typed: that position is adopted.
        let legacy = serde_json::json!({typed.display().to_string(): {"0": 3}});
        let (records, end) = run(&mut source(&path), Some(offset(legacy))).await;
        assert_eq!(trade_ids(&records), [831102702]);
        let end = end.unwrap();
        assert_eq!(
            (&end.json()["file"], &end.json()["lines"]),
            (&serde_json::json!(canonical), &serde_json::json!(4))
        );

        // A position in another file is refused, naming both, in any version's offsets.
        for other in [
            serde_json::json!({"/elsewhere/other.jsonl": {"0": 3}}),
            serde_json::json!({"file": "/elsewhere/other.jsonl", "lines": 3, "lastTradeId": {}}),
        ] {
            let err = source(&path)
                .start(StartRequest {
                    committed: Some(offset(other)),
                    ..Default::default()
                })
                .await
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("/elsewhere/other.jsonl") && err.contains(&canonical),
                "{err}"
            );
        }
    }

    #[tokio::test]
    async fn a_byte_order_mark_is_skipped_and_crlf_lines_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("capture.jsonl");
        let lines: Vec<&str> = PART_A.lines().collect();
        let mut body = b"\xEF\xBB\xBF".to_vec();
        body.extend_from_slice(format!("{}\r\n{}\r\n", lines[1], lines[2]).as_bytes());
        std::fs::write(&path, body).unwrap();
        let (records, _) = run(&mut source(&path), None).await;
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
        let (records, _) = run(&mut source(&path), None).await;
        assert_eq!(records.len(), 2);
        assert!(records[1].rejected.is_some(), "{:?}", records[1].rejected);
    }
}
