//! The candle poller as an engine [`Source`] (`[source] type = "gateio"`,
//! `pipelines/ingest-gateio.toml`): the same requests, pages, alignment, gap and duplicate rules
//! as [`super::poller`] (which runs in a task behind this source), the same candle records.
//!
//! - **Position**: the last window per pair and interval, kept in the engine's checkpoint. A
//!   batch's offset is `{"lastWindow":{"BTC_USDT 1m":1700000000}}`: per `"PAIR interval"`, the
//!   start (unix seconds) of the last window handed out. A batch's end offset carries every pair
//!   and interval known so far (those of other intervals in the checkpoint included), so a restart
//!   resumes each pair right after its last committed window, however far back that is, and a
//!   backfill counts the windows at or before it as duplicates: nothing is published twice and
//!   nothing is skipped. (The first version wrote `{"BTC_USDT 1m":{"0":<next window start>}}`,
//!   which is read too.) A candle's dead letter names it
//!   `{"pair":"BTC_USDT","interval":"1m","window_start":1700000000}`.
//! - **Replay**: closed windows do not change, so [`Source::fetch_range`] fetches a batch planned
//!   but not committed before a crash again from the API (the same windows, in the same pages);
//!   only `ingest_time` differs.
//! - **Errors**: a permanent API error (a refused request, every pair refused, a run whose every
//!   row was unusable) fails [`Source::poll`] for good. So does a transient one (5xx, timeouts,
//!   broken connections) that outlasted the client's own `max_attempts` in a bounded run (`once`,
//!   a backfill to `to_secs`, available-now): the run ends failed, naming the URL and the reason,
//!   rather than hang. A live schedule never gives up: the client keeps retrying with its backoff
//!   (growing to `retry_backoff_max_ms`), logging each failure with its attempt count. A replay
//!   ([`Source::fetch_range`]) that fails is returned as transient: the engine retries it. A 429 is always waited out inside the client until the reset time its
//!   headers give (see [`super::client`]), never retried early.
//! - With `available_now` (`--trigger available-now`) the source does one poll, as `once`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use engine::{
    Error, OffsetRange, Poll, PollLimits, RawRecord, RecordPosition, Result, Retry, Source,
    SourceBatch, SourceOffset, StartRequest,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::candles::CandleRecord;
use super::config::{GateioConfig, Interval, Settings};
use super::poller::{self, Counters};
use crate::common::counters::CounterSet;
use crate::common::handout::Handout;

/// Candles buffered between the poller and the engine; the poller waits when it is full.
const CHANNEL_CAPACITY: usize = 50_000;

/// The poller task behind the source.
struct Running {
    candles: mpsc::Receiver<CandleRecord>,
    task: JoinHandle<Result<BTreeMap<String, i64>>>,
    stop: watch::Sender<bool>,
}

/// `[source] type = "gateio"`.
pub struct GateioSource {
    settings: Settings,
    running: Option<Running>,
    counters: Arc<Counters>,
    /// Received but not yet handed out (kept here so a dropped `poll` loses nothing).
    pending: Vec<(i64, CandleRecord)>,
    /// The next window start to publish per `"PAIR interval"`, after everything handed out.
    next: BTreeMap<String, i64>,
    /// The `"PAIR interval"` keys candles were handed out for (numbered as records'
    /// partitions), and the candles of the last batch.
    handout: Handout,
    started: bool,
}

/// The offsets key of `pair` at `interval`.
fn key(pair: &str, interval: &str) -> String {
    format!("{pair} {interval}")
}

/// A batch's start or end: per `"PAIR interval"`, the start of the last window handed out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CandleOffset {
    last_window: BTreeMap<String, i64>,
}

/// The length in seconds of the interval a `"PAIR interval"` key names.
fn interval_secs(key: &str) -> std::result::Result<i64, String> {
    let (_, interval) = key
        .split_once(' ')
        .ok_or_else(|| format!("{key:?} is not \"PAIR interval\""))?;
    Ok(Interval::parse(interval)?.secs())
}

/// The offset of `next` (the next window start per key).
fn to_offset(next: &BTreeMap<String, i64>) -> Result<SourceOffset> {
    let mut last_window = BTreeMap::new();
    for (key, next) in next {
        let secs = interval_secs(key).map_err(Error::Internal)?;
        last_window.insert(key.clone(), next - secs);
    }
    SourceOffset::of(&CandleOffset { last_window })
}

/// The next window start per key in an offset of this version or the first one. (Not a serde
/// untagged enum: that cannot read the older form's integer map keys.)
fn next_windows(offset: &SourceOffset) -> std::result::Result<BTreeMap<String, i64>, String> {
    if let Ok(current) = offset.parse::<CandleOffset>() {
        let mut next = BTreeMap::new();
        for (key, last) in current.last_window {
            let secs = interval_secs(&key)?;
            next.insert(key, last + secs);
        }
        return Ok(next);
    }
    let legacy: BTreeMap<String, BTreeMap<i32, i64>> = offset.parse().map_err(|e| e.to_string())?;
    Ok(legacy
        .into_iter()
        .filter_map(|(key, p)| Some((key, *p.get(&0)?)))
        .collect())
}

/// A record's window start in unix seconds (the poller writes it as RFC 3339).
fn window_start(record: &CandleRecord) -> Result<i64> {
    chrono::DateTime::parse_from_rfc3339(&record.window_start)
        .map(|t| t.timestamp())
        .map_err(|e| {
            Error::Internal(format!(
                "candle window start {:?} is not RFC 3339: {e}",
                record.window_start
            ))
        })
}

/// A candle as the engine takes it: at `window` (its start, unix seconds) of key `number`.
fn raw_record(record: &CandleRecord, number: u32, window: i64) -> RawRecord {
    RawRecord {
        payload: record.to_json(),
        position: RecordPosition::new(number, window),
        frame: None,
        rejected: None,
        received_at: SystemTime::now(),
    }
}

impl GateioSource {
    /// Validates the config (reading the portfolio when the pairs come from it); nothing is
    /// requested until the first [`Source::poll`].
    pub fn new(config: GateioConfig) -> Result<Self> {
        Ok(Self {
            settings: config.validate()?,
            running: None,
            counters: Arc::new(Counters::default()),
            pending: Vec::new(),
            next: BTreeMap::new(),
            handout: Handout::default(),
            started: false,
        })
    }

    fn interval(&self) -> &'static str {
        self.settings.interval.name()
    }

    /// The last window handed out per pair of this interval: where the poller resumes.
    fn watermarks(&self) -> BTreeMap<String, i64> {
        let secs = self.settings.interval.secs();
        self.settings
            .pairs
            .iter()
            .filter_map(|pair| {
                let next = self.next.get(&key(pair, self.interval()))?;
                Some((pair.clone(), next - secs))
            })
            .collect()
    }

    /// Starts the poller after the last window handed out.
    fn spawn(&mut self) {
        let (candles_tx, candles) = mpsc::channel(CHANNEL_CAPACITY);
        let (stop, shutdown) = watch::channel(false);
        let task = tokio::spawn(poller::run(
            self.settings.clone(),
            self.watermarks(),
            candles_tx,
            shutdown,
            self.counters.clone(),
        ));
        self.running = Some(Running {
            candles,
            task,
            stop,
        });
    }

    fn error(&self, message: String) -> Error {
        Error::source_failed(self.description(), message, Retry::Permanent)
    }

    /// The next window start per key in a checkpointed offset.
    fn parse_offset(&self, offset: &SourceOffset) -> Result<BTreeMap<String, i64>> {
        next_windows(offset).map_err(|e| {
            self.error(format!(
                "the checkpointed offset {offset} is not a last window per pair and interval: {e}"
            ))
        })
    }

    fn batch(&mut self) -> Result<SourceBatch> {
        // Where each key starts: the previous end, so a replay covers the windows without a
        // candle too; a key first seen in this batch, at its first window.
        let mut start = self.next.clone();
        let mut records = Vec::with_capacity(self.pending.len());
        let secs = self.settings.interval.secs();
        for (window, record) in std::mem::take(&mut self.pending) {
            let key = key(&record.currency_pair, &record.interval);
            start.entry(key.clone()).or_insert(window);
            let number = self.handout.number(&key);
            self.next.insert(key, window + secs);
            records.push(raw_record(&record, number, window));
        }
        self.handout.handed_out(records.len());
        Ok(SourceBatch {
            records,
            start: to_offset(&start)?,
            end: to_offset(&self.next)?,
            rows: None,
        })
    }

    /// Whether the poller's run ends by itself (so its failures end the query).
    fn bounded(&self) -> bool {
        self.settings.once || self.settings.to.is_some()
    }

    /// The poller ended with nothing left to hand out: a bounded run is over, or it failed.
    async fn ended(&mut self) -> Result<Poll> {
        let Some(running) = self.running.take() else {
            return Err(Error::Internal("gateio source polled before start".into()));
        };
        match running.task.await {
            Ok(Ok(_)) => Ok(Poll::Exhausted),
            // A bounded run (`once`, a backfill to `to_secs`, available-now) already retried the
            // request `max_attempts` times: it ends here, failed, so a scheduler sees it. Handed
            // to the engine as transient, the poll would be retried forever.
            Ok(Err(e)) if e.is_transient() && self.bounded() => Err(final_failure(e)),
            // Kept for the next poll: the engine retries it, and the poller resumes after the
            // last window handed out (with `from`, the windows before it count as duplicates).
            Ok(Err(e)) if e.is_transient() => {
                self.spawn();
                Err(e)
            }
            Ok(Err(e)) => Err(e),
            Err(e) => Err(Error::Internal(format!(
                "the Gate.io poller task failed: {e}"
            ))),
        }
    }
}

/// `error` as a permanent failure, with its message and cause.
fn final_failure(error: Error) -> Error {
    poller::permanent(error, |message| message).unwrap_or_else(|other| {
        Error::source_failed(
            "gateio",
            engine::report(&other).to_string(),
            Retry::Permanent,
        )
    })
}

#[async_trait]
impl Source for GateioSource {
    fn description(&self) -> String {
        format!(
            "gateio {} ({} pairs, {})",
            self.settings.base_url,
            self.settings.pairs.len(),
            self.interval()
        )
    }

    fn identity(&self) -> String {
        // Pairs and the interval may change between runs of the same query (the positions are
        // per pair and interval); the API it reads from may not.
        format!("gateio {}", self.settings.base_url)
    }

    fn describe_position(&self, position: RecordPosition) -> serde_json::Value {
        let key = self.handout.name(position.partition).unwrap_or("");
        let (pair, interval) = key.split_once(' ').unwrap_or((key, ""));
        serde_json::json!({ "pair": pair, "interval": interval, "window_start": position.offset })
    }

    async fn start(&mut self, request: StartRequest) -> Result<()> {
        if let Some(committed) = &request.committed {
            self.next = self.parse_offset(committed)?;
        }
        if request.available_now {
            self.settings.once = true;
        }
        self.started = true;
        Ok(())
    }

    async fn fetch_range(&mut self, range: &OffsetRange) -> Result<SourceBatch> {
        let (start_next, end_next_windows) = (
            self.parse_offset(&range.start)?,
            self.parse_offset(&range.end)?,
        );
        let secs = self.settings.interval.secs();
        let mut records = Vec::new();
        for (topic, &end_next) in &end_next_windows {
            let Some((pair, interval)) = topic.split_once(' ') else {
                continue;
            };
            let from = start_next.get(topic).copied().unwrap_or(end_next);
            if interval != self.interval() || from >= end_next {
                continue;
            }
            let mut settings = self.settings.clone();
            settings.pairs = vec![pair.to_owned()];
            settings.from = Some(from);
            settings.to = Some(end_next - secs);
            settings.once = true;
            let (tx, mut rx) = mpsc::channel(CHANNEL_CAPACITY);
            let (_stop, shutdown) = watch::channel(false);
            let task = tokio::spawn(poller::run(
                settings,
                BTreeMap::new(),
                tx,
                shutdown,
                self.counters.clone(),
            ));
            let number = self.handout.number(topic);
            while let Some(record) = rx.recv().await {
                let window = window_start(&record)?;
                records.push(raw_record(&record, number, window));
            }
            task.await
                .map_err(|e| Error::Internal(format!("the Gate.io poller task failed: {e}")))??;
        }
        self.next.extend(end_next_windows);
        self.handout.handed_out(records.len());
        Ok(SourceBatch {
            records,
            start: range.start.clone(),
            end: range.end.clone(),
            rows: None,
        })
    }

    async fn poll(&mut self, limits: PollLimits) -> Result<Poll> {
        if !self.started {
            return Err(Error::Internal("gateio source polled before start".into()));
        }
        if self.running.is_none() {
            self.spawn();
        }
        let Some(running) = self.running.as_mut() else {
            return Err(Error::Internal("the Gate.io poller did not start".into()));
        };
        let deadline = tokio::time::Instant::now() + limits.max_wait;
        let max = limits.max_records.max(1);
        let mut closed = false;
        while self.pending.len() < max {
            match tokio::time::timeout_at(deadline, running.candles.recv()).await {
                Ok(Some(record)) => {
                    let window = window_start(&record)?;
                    self.pending.push((window, record));
                }
                Ok(None) => {
                    closed = true;
                    break;
                }
                Err(_) => break,
            }
        }
        if !self.pending.is_empty() {
            return Ok(Poll::Batch(self.batch()?));
        }
        if closed {
            return self.ended().await;
        }
        Ok(Poll::Idle)
    }

    async fn commit(&mut self, _end: &SourceOffset) -> Result<()> {
        // Nothing to acknowledge to the API; the batch is now published.
        self.handout.commit(&self.counters.published)
    }

    fn metrics(&self) -> Vec<(&'static str, u64)> {
        self.counters.snapshot()
    }

    async fn close(&mut self) -> Result<()> {
        if let Some(running) = self.running.take() {
            let _ = running.stop.send(true);
            drop(running.candles);
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), running.task).await;
        }
        self.counters.log("Gate.io source stopped.");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_offset_is_the_last_window_per_pair_and_interval_and_older_ones_are_read() {
        let next = BTreeMap::from([
            ("BTC_USDT 1m".to_owned(), 1_700_000_060),
            ("ETH_USDT 1h".to_owned(), 1_700_003_600),
        ]);
        let offset = to_offset(&next).unwrap();
        assert_eq!(
            offset.to_string(),
            r#"{"lastWindow":{"BTC_USDT 1m":1700000000,"ETH_USDT 1h":1700000000}}"#
        );
        assert_eq!(next_windows(&offset).unwrap(), next);
        let first_version = SourceOffset::new(serde_json::json!({
            "BTC_USDT 1m": {"0": 1_700_000_060},
            "ETH_USDT 1h": {"0": 1_700_003_600},
        }));
        assert_eq!(next_windows(&first_version).unwrap(), next);
        let bad = SourceOffset::new(serde_json::json!({"lastWindow": {"BTC_USDT 2m": 0}}));
        assert!(next_windows(&bad).unwrap_err().contains("2m"));
    }
}
