//! The schedule: a backfill of `from`..`to` in pages of at most 1000 windows, then (unless it was
//! bounded or `once`) a poll per pair shortly after every interval boundary, fetching everything
//! since the last published window. Only closed windows leave, each once per (pair, interval,
//! window start): a per-pair watermark of the last published start drops overlaps and repeats.
//!
//! Pages start on a window boundary (the first at or after `from`) and each next page right
//! after the previous page's last window, so an unaligned `from` skips nothing.
//!
//! A pair the API refuses (unknown or delisted) is dropped with an ERROR and the others go on;
//! when none is left the run fails. A run (a backfill, a `once` poll) that received rows but
//! could use none of them fails too; the live schedule logs such a stretch once at ERROR.
//!
//! The watermark lives in memory; [`run`] starts from the watermarks it is given and returns
//! where it ended. The engine source ([`super::source`]) keeps them between runs in the
//! checkpoint. A pair with a watermark and no `from` resumes right after it, however far back
//! that is; in a backfill, windows at or before it count as duplicates.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use engine::{Error, Result};
use tokio::sync::{mpsc, watch};

use super::candles::CandleRecord;
use super::client::{Failure, GateClient, Request};
use super::config::{MAX_POINTS_PER_REQUEST, Settings};
use crate::common::counters::{CounterSet, add, read};
use crate::common::trade::rfc3339_micros;

/// Re-polls, `poll_delay` apart, while the window that just ended is not closed yet.
const MAX_CATCH_UP_POLLS: u32 = 5;

/// What the poller counted since it started.
#[derive(Debug, Default)]
pub struct Counters {
    /// HTTP requests sent.
    pub requests: AtomicU64,
    /// Rows received.
    pub rows_in: AtomicU64,
    /// Candles the consumer published (the engine's sink acknowledged them).
    pub published: AtomicU64,
    /// Rows of windows still open (fetched again later).
    pub open_windows: AtomicU64,
    /// Rows of windows already published, or outside the requested range.
    pub duplicates: AtomicU64,
    /// Rows that could not be used, and error answers.
    pub errors: AtomicU64,
    /// Requests retried after a transient failure.
    pub retries: AtomicU64,
    /// HTTP 429 answers.
    pub rate_limited: AtomicU64,
    /// Windows missing between two published ones (a pair without trades in a window may have
    /// no candle for it).
    pub gaps: AtomicU64,
    /// Rows in the legacy 7-element format.
    pub legacy_rows: AtomicU64,
}

impl CounterSet for Counters {
    /// Every counter, plus `skipped` (open windows and duplicates).
    fn snapshot(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("requests", read(&self.requests)),
            ("messages_in", read(&self.rows_in)),
            ("published", read(&self.published)),
            ("skipped", read(&self.open_windows) + read(&self.duplicates)),
            ("open_windows", read(&self.open_windows)),
            ("duplicates", read(&self.duplicates)),
            ("errors", read(&self.errors)),
            ("retries", read(&self.retries)),
            ("rate_limited", read(&self.rate_limited)),
            ("gaps", read(&self.gaps)),
            ("legacy_rows", read(&self.legacy_rows)),
        ]
    }
}

/// A source error as a permanent one: same name and cause, its message passed through `message`.
/// An error of any other kind comes back as `Err`, unchanged, for the caller to decide.
pub(super) fn permanent(
    error: Error,
    message: impl FnOnce(String) -> String,
) -> std::result::Result<Error, Error> {
    match error {
        Error::Source {
            name,
            message: text,
            source,
            ..
        } => Ok(Error::Source {
            name,
            message: message(text),
            retry: engine::Retry::Permanent,
            source,
        }),
        other => Err(other),
    }
}

/// Why a pass over the pairs ended early.
enum Stop {
    /// Shutdown was asked for, or nobody takes the candles any more.
    Requested,
    /// A request failed for good.
    Failed(Error),
}

/// Why a pair's range ended early.
enum RangeStop {
    Stop(Stop),
    /// The API refused the pair itself.
    PairRefused(Error),
}

impl From<Stop> for RangeStop {
    fn from(stop: Stop) -> Self {
        RangeStop::Stop(stop)
    }
}

struct Poller {
    settings: Settings,
    client: GateClient,
    /// The last published window start per pair.
    watermark: BTreeMap<String, i64>,
    tx: mpsc::Sender<CandleRecord>,
    counters: Arc<Counters>,
    /// Rows that parsed, and rows that did not, over the whole run.
    usable_rows: u64,
    bad_rows: u64,
    /// Why the first unusable row was unusable.
    first_bad_row: Option<String>,
    /// Whether the current stretch of pages without a usable row was already logged at ERROR.
    reported_unusable: bool,
}

/// Runs the schedule until it is done (`once`, or a bounded backfill) or `shutdown` turns true;
/// candles go to `tx` in window order per pair. `resume` holds the last window already published
/// per pair (see the module docs); the result is the last window handed to `tx` per pair. Fails
/// on a permanent API error, or on a transient one during a bounded backfill or a `once` poll (a
/// live schedule logs it and tries again: its first pass after the client's backoff, later ones
/// at the next window).
pub async fn run(
    settings: Settings,
    resume: BTreeMap<String, i64>,
    tx: mpsc::Sender<CandleRecord>,
    mut shutdown: watch::Receiver<bool>,
    counters: Arc<Counters>,
) -> Result<BTreeMap<String, i64>> {
    let mut poller = Poller {
        client: GateClient::new(&settings, counters.clone()),
        settings,
        watermark: resume,
        tx,
        counters,
        usable_rows: 0,
        bad_rows: 0,
        first_bad_row: None,
        reported_unusable: false,
    };
    let secs = poller.settings.interval.secs();
    // Without `from`, each pair starts after its watermark or `lookback_windows` back.
    let first = poller
        .settings
        .from
        .map(|from| (from, poller.settings.to.unwrap_or_else(now_secs)));
    let bounded = poller.settings.once || poller.settings.to.is_some();
    loop {
        match poller.pass(first, &mut shutdown).await {
            Ok(()) => break,
            Err(Stop::Requested) => return Ok(poller.watermark),
            Err(Stop::Failed(e)) if bounded || !e.is_transient() => return Err(e),
            // A live schedule outlasts the API being down: the client waits (with its backoff,
            // which grows to its cap until a request succeeds) before the pass starts again.
            Err(Stop::Failed(e)) => {
                tracing::error!(error = %e, "Gate.io first poll failed; trying again.");
            }
        }
    }
    if bounded {
        return match poller.nothing_usable() {
            Some(e) => Err(e),
            None => Ok(poller.watermark),
        };
    }
    loop {
        // In milliseconds: a wait computed from whole seconds could start a 1 s window's poll
        // almost a whole window late.
        let now_ms = chrono::Utc::now().timestamp_millis();
        let window_ms = secs * 1000;
        let next_boundary_ms = (now_ms.div_euclid(window_ms) + 1) * window_ms;
        let mut wait = Duration::from_millis((next_boundary_ms - now_ms).max(0) as u64)
            + poller.settings.poll_delay;
        for attempt in 0..=MAX_CATCH_UP_POLLS {
            tokio::select! {
                _ = shutdown.changed() => return Ok(poller.watermark),
                _ = tokio::time::sleep(wait) => {}
            }
            match poller.pass(None, &mut shutdown).await {
                Ok(()) => {}
                Err(Stop::Requested) => return Ok(poller.watermark),
                Err(Stop::Failed(e)) if !e.is_transient() => return Err(e),
                Err(Stop::Failed(e)) => {
                    tracing::error!(error = %e, "Gate.io poll failed; trying again at the next window.");
                    break;
                }
            }
            // The window that just ended: Gate.io marks it closed a moment after the boundary.
            let expected = now_secs().div_euclid(secs) * secs - secs;
            let behind: Vec<&String> = poller
                .settings
                .pairs
                .iter()
                .filter(|p| poller.watermark.get(*p).is_none_or(|w| *w < expected))
                .collect();
            if behind.is_empty() {
                break;
            }
            tracing::debug!(
                ?behind,
                attempt,
                "Latest window not closed yet; polling again shortly."
            );
            wait = poller.settings.poll_delay;
        }
    }
}

impl Poller {
    /// A run that received rows but could use none of them failed.
    fn nothing_usable(&self) -> Option<Error> {
        (self.usable_rows == 0 && self.bad_rows > 0).then(|| Error::Source {
            name: format!("gateio {}", self.settings.base_url),
            message: format!(
                "none of the {} rows received could be used (the first: {})",
                self.bad_rows,
                self.first_bad_row.as_deref().unwrap_or_default()
            ),
            retry: engine::Retry::Permanent,
            source: None,
        })
    }

    /// Drops `pair`, which the API refused; fails when no pair is left.
    fn drop_pair(&mut self, pair: &str, error: Error) -> std::result::Result<(), Stop> {
        self.settings.pairs.retain(|p| p != pair);
        // A configured pair will never deliver: an operator must act.
        tracing::error!(
            pair,
            error = %error,
            left = self.settings.pairs.join(","),
            "Gate.io refused a currency pair; it is dropped and the others go on."
        );
        if !self.settings.pairs.is_empty() {
            return Ok(());
        }
        Err(Stop::Failed(
            permanent(error, |message| {
                format!("every currency pair was refused; the last, {pair}: {message}")
            })
            .unwrap_or_else(|other| other),
        ))
    }

    /// Fetches every pair: `range`, or from each pair's watermark to now.
    async fn pass(
        &mut self,
        range: Option<(i64, i64)>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> std::result::Result<(), Stop> {
        let secs = self.settings.interval.secs();
        for pair in self.settings.pairs.clone() {
            let (from, to) = match range {
                Some(r) => r,
                None => {
                    let now = now_secs();
                    let from = self.watermark.get(&pair).map_or(
                        now.div_euclid(secs) * secs - self.settings.lookback_windows * secs,
                        |w| w + secs,
                    );
                    (from, now)
                }
            };
            match self.range(&pair, from, to, shutdown).await {
                Ok(()) => {}
                Err(RangeStop::Stop(stop)) => return Err(stop),
                Err(RangeStop::PairRefused(e)) => self.drop_pair(&pair, e)?,
            }
        }
        Ok(())
    }

    /// Fetches windows of `pair` starting in `from..=to`, in pages the API accepts: at most
    /// [`MAX_POINTS_PER_REQUEST`] window starts, both ends counted, each page from a window
    /// boundary.
    async fn range(
        &mut self,
        pair: &str,
        from: i64,
        to: i64,
        shutdown: &mut watch::Receiver<bool>,
    ) -> std::result::Result<(), RangeStop> {
        let secs = self.settings.interval.secs();
        // The first window starting at or after `from`: a page spanning 1000 intervals from an
        // unaligned `from` holds only 999 windows, and the next one would skip a window.
        let mut page_from = from.div_euclid(secs) * secs;
        if page_from < from {
            page_from += secs;
        }
        while page_from <= to {
            let page_to = (page_from + (MAX_POINTS_PER_REQUEST - 1) * secs).min(to);
            let request = Request {
                pair,
                interval: self.settings.interval,
                from: page_from,
                to: page_to,
            };
            let rows = tokio::select! {
                _ = shutdown.changed() => return Err(Stop::Requested.into()),
                rows = self.client.candlesticks(request) => match rows {
                    Ok(rows) => rows,
                    Err(Failure { error, pair_refused: true }) => {
                        return Err(RangeStop::PairRefused(error));
                    }
                    Err(Failure { error, .. }) => return Err(Stop::Failed(error).into()),
                },
            };
            self.publish(pair, page_from, page_to, rows).await?;
            page_from = page_to + secs;
        }
        Ok(())
    }

    async fn publish(
        &mut self,
        pair: &str,
        from: i64,
        to: i64,
        rows: Vec<std::result::Result<super::candles::Candle, String>>,
    ) -> std::result::Result<(), Stop> {
        let secs = self.settings.interval.secs();
        let now = now_secs();
        let ingest_time = rfc3339_micros(chrono::Utc::now());
        add(&self.counters.rows_in, rows.len() as u64);
        let received = rows.len();
        let mut candles = Vec::with_capacity(rows.len());
        let mut bad = Vec::new();
        for row in rows {
            match row {
                Ok(c) => candles.push(c),
                Err(reason) => bad.push(reason),
            }
        }
        self.usable_rows += candles.len() as u64;
        self.bad_rows += bad.len() as u64;
        if let Some(first) = bad.first() {
            add(&self.counters.errors, bad.len() as u64);
            if self.first_bad_row.is_none() {
                self.first_bad_row = Some(first.clone());
            }
            if candles.is_empty() {
                // Once per stretch of pages with nothing usable, not once per row.
                if !self.reported_unusable {
                    self.reported_unusable = true;
                    tracing::error!(
                        pair,
                        rows = received,
                        first_reason = %first,
                        "No row of the Gate.io answer could be used."
                    );
                }
            } else {
                tracing::warn!(
                    pair,
                    unusable = bad.len(),
                    rows = received,
                    first_reason = %first,
                    "Unusable candlestick rows skipped."
                );
            }
        }
        if !candles.is_empty() {
            self.reported_unusable = false;
        }
        // Row order is not documented.
        candles.sort_by_key(|c| c.window_start);
        for candle in candles {
            let closed = match candle.closed {
                Some(closed) => closed,
                None => {
                    add(&self.counters.legacy_rows, 1);
                    candle.window_start + secs <= now
                }
            };
            if !closed {
                add(&self.counters.open_windows, 1);
                continue;
            }
            let watermark = self.watermark.get(pair).copied();
            if candle.window_start < from
                || candle.window_start > to
                || watermark.is_some_and(|w| candle.window_start <= w)
            {
                add(&self.counters.duplicates, 1);
                continue;
            }
            if let Some(w) = watermark {
                let missing = (candle.window_start - w) / secs - 1;
                if missing > 0 {
                    add(&self.counters.gaps, missing as u64);
                    tracing::debug!(pair, after = w, missing, "Windows without a candle.");
                }
            }
            self.watermark.insert(pair.to_owned(), candle.window_start);
            let record =
                CandleRecord::new(pair, self.settings.interval.name(), candle, &ingest_time);
            if self.tx.send(record).await.is_err() {
                return Err(Stop::Requested);
            }
        }
        Ok(())
    }
}

fn now_secs() -> i64 {
    chrono::Utc::now().timestamp()
}
