//! The feed client as an engine [`Source`] (`[source] type = "coinbase"`): live trades go straight
//! into SQL with no Kafka in between.
//!
//! - A batch's offset is the last trade id handed out per product,
//!   `{"lastTradeId":{"BTC-USD":831102702}}`, every product seen so far, so the engine's
//!   checkpoint holds it; a restart seeds the trade tracker with it and does not hand out the
//!   feed's `last_match` again. (Older versions wrote `{"BTC-USD":{"0":<next trade id>}}`, which
//!   is read too.) A trade's dead letter names it as `{"product":"BTC-USD","trade_id":42}`.
//! - A live feed cannot replay: a batch planned but not committed before a crash is gone, so
//!   [`Source::fetch_range`] keeps the engine's refusal. A pipeline with this source therefore
//!   runs without a checkpoint folder, or accepts that such a restart fails until the checkpoint
//!   is removed.
//! - [`Source::commit`] has nothing to tell the exchange; it only counts the batch as published.
//! - Frames (or trades in them) that cannot be used, e.g. a price of zero, are handed out as
//!   rejected records (the engine dead-letters them with their reason), named
//!   `{"url":"wss://…","frame":7}` (the frame's number since the client started).
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
    Error, Poll, PollLimits, RawRecord, RecordPosition, Result, Retry, Source, SourceBatch,
    SourceOffset, StartRequest,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::client::{self, Counters, FeedTask, ReceivedTrade, RejectedFrame, Unusable};
use super::config::{CoinbaseConfig, Settings};
use super::gaps::TradeTracker;
use crate::common::counters::CounterSet;
use crate::common::handout::Handout;

/// Trades buffered between the client and the engine; the client stops reading when it is full.
const CHANNEL_CAPACITY: usize = 100_000;

/// The [`RecordPosition::partition`] of rejected frames (trades carry their product's number).
const FRAMES: u32 = u32::MAX;

/// A batch's start or end: the last trade id handed out per product.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FeedOffset {
    last_trade_id: BTreeMap<String, i64>,
}

/// The last trade id per product in an offset of this version or an older one
/// (`{"BTC-USD":{"0":<next trade id>}}`). (Not a serde untagged enum: that cannot read the older
/// form's integer map keys.)
fn last_trade_ids(offset: &SourceOffset) -> Result<BTreeMap<String, i64>, serde_json::Error> {
    if let Ok(current) = offset.parse::<FeedOffset>() {
        return Ok(current.last_trade_id);
    }
    let legacy: BTreeMap<String, BTreeMap<i32, i64>> = offset.parse()?;
    Ok(legacy
        .into_iter()
        .filter_map(|(product, p)| Some((product, p.get(&0)? - 1)))
        .collect())
}

/// `[source] type = "coinbase"`.
pub struct CoinbaseSource {
    settings: Settings,
    /// The running client and the sender that stops it.
    feed: Option<(FeedTask, watch::Sender<bool>)>,
    counters: Arc<Counters>,
    /// Received but not yet handed out (kept here so a dropped `poll` loses nothing).
    pending: Vec<ReceivedTrade>,
    /// Unusable frames received but not yet handed out.
    pending_rejected: Vec<RejectedFrame>,
    /// The last trade id handed out per product.
    last_ids: BTreeMap<String, i64>,
    /// The products trades were handed out for (numbered as records' partitions), and the
    /// trades of the last batch.
    handout: Handout,
    available_now: bool,
    seen_any: bool,
}

impl CoinbaseSource {
    /// Validates the config and reads its files; nothing connects until [`Source::start`].
    pub fn new(config: CoinbaseConfig) -> Result<Self> {
        Ok(Self {
            settings: config.validate()?,
            feed: None,
            counters: Arc::new(Counters::default()),
            pending: Vec::new(),
            pending_rejected: Vec::new(),
            last_ids: BTreeMap::new(),
            handout: Handout::default(),
            available_now: false,
            seen_any: false,
        })
    }

    fn offset(&self) -> Result<SourceOffset> {
        SourceOffset::of(&FeedOffset {
            last_trade_id: self.last_ids.clone(),
        })
    }

    fn batch(&mut self) -> Result<SourceBatch> {
        let start = self.offset()?;
        let mut records = Vec::with_capacity(self.pending.len());
        for trade in std::mem::take(&mut self.pending) {
            let number = self.handout.number(&trade.record.symbol);
            let trade_id = trade.record.trade_id;
            match self.last_ids.get_mut(trade.record.symbol.as_ref()) {
                Some(last) => *last = trade_id,
                None => {
                    self.last_ids
                        .insert(trade.record.symbol.to_string(), trade_id);
                }
            }
            records.push(RawRecord {
                payload: trade.record.to_json(),
                position: RecordPosition::new(number, trade_id),
                rejected: None,
                frame: None,
                received_at: trade.received_at,
            });
        }
        // `published` counts trades; rejected frames are dead letters.
        let trades = records.len();
        for rejected in self.pending_rejected.drain(..) {
            records.push(RawRecord {
                payload: rejected.frame,
                position: RecordPosition::new(FRAMES, rejected.number as i64),
                frame: None,
                rejected: Some(rejected.reason),
                received_at: rejected.received_at,
            });
        }
        self.handout.handed_out(trades);
        Ok(SourceBatch {
            records,
            start,
            end: self.offset()?,
            rows: None,
        })
    }

    /// The last trade id per product in a committed offset of any version.
    fn parse_offset(&self, offset: &SourceOffset) -> Result<BTreeMap<String, i64>> {
        last_trade_ids(offset).map_err(|e| {
            Error::source_failed(
                self.description(),
                format!("the checkpointed offset {offset} is not a last trade id per product"),
                Retry::Permanent,
            )
            .caused_by(e)
        })
    }

    /// Why the client stopped while the source runs: its permanent error (every product
    /// refused), or else a bug.
    async fn stopped(&mut self) -> Error {
        let Some((feed, _stop)) = self.feed.take() else {
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

    fn describe_position(&self, position: RecordPosition) -> serde_json::Value {
        match self.handout.name(position.partition) {
            Some(product) => serde_json::json!({ "product": product, "trade_id": position.offset }),
            None => serde_json::json!({ "url": self.settings.url, "frame": position.offset }),
        }
    }

    fn identity(&self) -> String {
        // The products may change between runs of the same query (a product added or delisted);
        // the feed it reads from may not.
        format!("coinbase {}", self.settings.url)
    }

    async fn start(&mut self, request: StartRequest) -> Result<()> {
        let mut tracker = TradeTracker::default();
        if let Some(committed) = &request.committed {
            self.last_ids = self.parse_offset(committed)?;
            for (product, last) in &self.last_ids {
                tracker.seed(product, *last);
            }
        }
        self.available_now = request.available_now;
        let (stop, shutdown) = watch::channel(false);
        let feed = client::start(
            self.settings.clone(),
            tracker,
            CHANNEL_CAPACITY,
            shutdown,
            Unusable::HandedOn,
        );
        self.counters = feed.counters.clone();
        self.feed = Some((feed, stop));
        Ok(())
    }

    async fn poll(&mut self, limits: PollLimits) -> Result<Poll> {
        let Some((feed, _)) = self.feed.as_mut() else {
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
        Ok(Poll::Batch(self.batch()?))
    }

    async fn commit(&mut self, _end: &SourceOffset) -> Result<()> {
        // Nothing to acknowledge to the exchange; the batch is now published.
        self.handout.commit(&self.counters.published)
    }

    fn metrics(&self) -> Vec<(&'static str, u64)> {
        self.counters.snapshot()
    }

    async fn close(&mut self) -> Result<()> {
        if let Some((feed, stop)) = self.feed.take() {
            let _ = stop.send(true);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_offsets_of_this_version_and_older_ones() {
        let current = SourceOffset::new(serde_json::json!({"lastTradeId": {"BTC-USD": 14}}));
        let older = SourceOffset::new(serde_json::json!({"BTC-USD": {"0": 15}}));
        let expected = BTreeMap::from([("BTC-USD".to_owned(), 14)]);
        assert_eq!(last_trade_ids(&current).unwrap(), expected);
        assert_eq!(last_trade_ids(&older).unwrap(), expected);
        assert!(last_trade_ids(&SourceOffset::new(serde_json::json!([1]))).is_err());
    }
}
