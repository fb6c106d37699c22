//! The feed client as an engine [`Source`] (`[source] type = "coinbase"`): live trades go straight
//! into SQL with no Kafka in between.
//!
//! - Offsets are trade ids: one "topic" per product (partition 0), a batch spans from each
//!   product's first trade id to one past its last. A batch's end offsets carry every product seen
//!   so far, so the engine's checkpoint holds the last trade id per product; a restart seeds the
//!   trade tracker with them and does not hand out the feed's `last_match` again (its
//!   de-duplication state lives in the offsets, so it needs no [`Source::checkpoint_state`]).
//! - A live feed cannot replay: a batch planned but not committed before a crash is gone, so
//!   [`Source::fetch_range`] keeps the engine's refusal. A pipeline with this source therefore
//!   runs without a checkpoint folder, or accepts that such a restart fails until the checkpoint
//!   is removed.
//! - [`Source::commit`] has nothing to tell the exchange; it only counts the batch as published.
//! - Frames (or trades in them) that cannot be used, e.g. a price of zero, are handed out as
//!   rejected records (the engine dead-letters them with their reason): topic = the feed's URL,
//!   offset = the frame's number since the client started.
//! - When the exchange refuses every product (or the credentials), the client stops and `poll`
//!   returns its permanent error. A run that received frames but could use none of them fails
//!   at [`Source::close`] with the client's error.
//! - With `available_now` (e.g. `--trigger available-now`) the source ends at the first poll that
//!   gets no trade within its wait (before the first trade, within `connect_timeout_ms`): a live
//!   feed has no "end of what is there".

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use engine::{
    Error, Offsets, Poll, PollLimits, RawRecord, Result, Source, SourceBatch, StartRequest,
};
use tokio::sync::watch;

use super::client::{self, Counters, FeedTask, ReceivedTrade, RejectedFrame};
use super::config::{CoinbaseConfig, Settings};
use super::gaps::TradeTracker;
use crate::common::counters::{CounterSet, add};

/// Trades buffered between the client and the engine; the client stops reading when it is full.
const CHANNEL_CAPACITY: usize = 100_000;

/// `[source] type = "coinbase"`.
pub struct CoinbaseSource {
    settings: Settings,
    feed: Option<FeedTask>,
    stop: Option<watch::Sender<bool>>,
    counters: Arc<Counters>,
    /// Received but not yet handed out (kept here so a dropped `poll` loses nothing).
    pending: Vec<ReceivedTrade>,
    /// Unusable frames received but not yet handed out.
    pending_rejected: Vec<RejectedFrame>,
    /// Next trade id per product after everything handed out.
    next_ids: BTreeMap<String, i64>,
    handed_out: u64,
    available_now: bool,
    seen_any: bool,
}

impl CoinbaseSource {
    /// Validates the config and reads its files; nothing connects until [`Source::start`].
    pub fn new(config: CoinbaseConfig) -> Result<Self> {
        Ok(Self {
            settings: config.validate()?,
            feed: None,
            stop: None,
            counters: Arc::new(Counters::default()),
            pending: Vec::new(),
            pending_rejected: Vec::new(),
            next_ids: BTreeMap::new(),
            handed_out: 0,
            available_now: false,
            seen_any: false,
        })
    }

    fn batch(&mut self) -> SourceBatch {
        let mut start = Offsets::new();
        let mut records = Vec::with_capacity(self.pending.len());
        for trade in self.pending.drain(..) {
            let product = trade.record.symbol.clone();
            if start.get(&product, 0).is_none() {
                start.set(&product, 0, trade.record.trade_id);
            }
            self.next_ids
                .insert(product.clone(), trade.record.trade_id + 1);
            records.push(RawRecord {
                payload: trade.record.to_json(),
                topic: product,
                partition: 0,
                offset: trade.record.trade_id,
                rejected: None,
                frame: None,
                received_at: trade.received_at,
            });
        }
        // `published` counts trades; rejected frames are dead letters.
        let trades = records.len() as u64;
        for rejected in self.pending_rejected.drain(..) {
            records.push(RawRecord {
                payload: rejected.frame,
                topic: self.settings.url.clone(),
                partition: 0,
                offset: rejected.number as i64,
                frame: None,
                rejected: Some(rejected.reason),
                received_at: rejected.received_at,
            });
        }
        let mut end = Offsets::new();
        for (product, next) in &self.next_ids {
            end.set(product, 0, *next);
            if start.get(product, 0).is_none() {
                start.set(product, 0, *next);
            }
        }
        self.handed_out = trades;
        SourceBatch {
            records,
            start,
            end,
        }
    }

    /// Why the client stopped while the source runs: its permanent error (every product
    /// refused), or else a bug.
    async fn stopped(&mut self) -> Error {
        let Some(feed) = self.feed.take() else {
            return Error::Internal("coinbase source polled before start".into());
        };
        match feed.task.await {
            Ok(Err(e)) => e,
            Ok(Ok(())) => {
                Error::Internal("the coinbase feed client stopped while the source runs".into())
            }
            Err(e) => Error::Internal(format!("the coinbase feed client task failed: {e}")),
        }
    }
}

/// The next unusable frame; pends forever when there is no such channel or it closed (the end
/// of the client shows on the trades channel).
async fn recv_rejected(
    rejected: &mut Option<tokio::sync::mpsc::Receiver<RejectedFrame>>,
) -> Option<RejectedFrame> {
    match rejected {
        Some(rx) => match rx.recv().await {
            Some(r) => Some(r),
            None => {
                *rejected = None;
                std::future::pending().await
            }
        },
        None => std::future::pending().await,
    }
}

#[async_trait]
impl Source for CoinbaseSource {
    fn description(&self) -> String {
        format!(
            "coinbase {} ({} products)",
            self.settings.url,
            self.settings.products.len()
        )
    }

    fn identity(&self) -> String {
        // The products may change between runs of the same query (a product added or delisted);
        // the feed it reads from may not.
        format!("coinbase {}", self.settings.url)
    }

    async fn start(&mut self, request: StartRequest) -> Result<()> {
        let mut tracker = TradeTracker::default();
        if let Some(committed) = &request.committed {
            for (product, _, next) in committed.iter() {
                tracker.seed(product, next - 1);
                self.next_ids.insert(product.to_owned(), next);
            }
        }
        self.available_now = request.available_now;
        let (stop, shutdown) = watch::channel(false);
        let feed = client::spawn_keeping_rejected(
            self.settings.clone(),
            tracker,
            CHANNEL_CAPACITY,
            shutdown,
        );
        self.counters = feed.counters.clone();
        self.feed = Some(feed);
        self.stop = Some(stop);
        Ok(())
    }

    async fn poll(&mut self, limits: PollLimits) -> Result<Poll> {
        let Some(feed) = self.feed.as_mut() else {
            return Err(Error::Internal(
                "coinbase source polled before start".into(),
            ));
        };
        // A live feed needs a moment to connect and subscribe: with available_now, "nothing within
        // the wait" only counts once the first trade arrived or a connect timeout passed.
        let wait = if self.available_now && !self.seen_any {
            limits.max_wait.max(self.settings.connect_timeout)
        } else {
            limits.max_wait
        };
        let mut deadline = tokio::time::Instant::now() + wait;
        let max = limits.max_records.max(1);
        while self.pending.len() + self.pending_rejected.len() < max {
            let next = tokio::select! {
                Some(rejected) = recv_rejected(&mut feed.rejected) => {
                    self.pending_rejected.push(rejected);
                    continue;
                }
                next = tokio::time::timeout_at(deadline, feed.trades.recv()) => next,
            };
            match next {
                Ok(Some(trade)) => {
                    if !self.seen_any {
                        self.seen_any = true;
                        deadline = deadline.min(tokio::time::Instant::now() + limits.max_wait);
                    }
                    self.pending.push(trade);
                }
                Ok(None) => {
                    if self.pending.is_empty() && self.pending_rejected.is_empty() {
                        return Err(self.stopped().await);
                    }
                    break;
                }
                Err(_) => break,
            }
        }
        if self.pending.is_empty() && self.pending_rejected.is_empty() {
            return Ok(if self.available_now {
                Poll::Exhausted
            } else {
                Poll::Idle
            });
        }
        Ok(Poll::Batch(self.batch()))
    }

    async fn commit(&mut self, _end: &Offsets) -> Result<()> {
        // Nothing to acknowledge to the exchange; the batch is now published.
        add(
            &self.counters.published,
            std::mem::take(&mut self.handed_out),
        );
        Ok(())
    }

    fn metrics(&self) -> Vec<(&'static str, u64)> {
        self.counters.snapshot()
    }

    async fn close(&mut self) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
        }
        if let Some(feed) = self.feed.take() {
            drop(feed.trades);
            // A client that received frames but could use none of them ends in a permanent
            // error (a wrong feed kind or url): the run is not a success.
            if let Ok(Ok(Err(e))) =
                tokio::time::timeout(std::time::Duration::from_secs(5), feed.task).await
            {
                return Err(e);
            }
        }
        Ok(())
    }
}
