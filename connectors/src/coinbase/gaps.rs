//! Per-product trade-id bookkeeping across connections: which trades were already handed on (so a
//! `last_match`, a snapshot or an overlap replayed after a reconnect is not published twice), and
//! which trade ids never arrived (gaps between consecutive trades, or a heartbeat's
//! `last_trade_id` ahead of the last trade seen). Coinbase's `matches` channel may drop messages
//! and cannot replay them, so lost trades are counted and reported, not recovered.
//!
//! Trade ids increase per product; `sequence` is not used (it counts the product's full stream, so
//! it jumps on `matches` by design).
//!
//! A heartbeat only tells of loss relative to a trade already seen (or a checkpoint's seed): the
//! feed has sent `"last_trade_id":0` for long stretches (a placeholder, not a fact), and before a
//! product's first trade (the `last_match` sent after subscribing) there is nothing to compare
//! with. So a heartbeat of a product without a trade yet, or with an id of 0 or below, is ignored.

use std::collections::HashMap;

/// A run of trade ids that never arrived, inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lost {
    /// The first missing id.
    pub first: i64,
    /// The last missing id.
    pub last: i64,
}

impl Lost {
    /// How many trades are missing.
    pub fn count(&self) -> u64 {
        (self.last - self.first + 1).max(0) as u64
    }
}

/// What a trade id means for its product.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Not seen before: hand it on. `lost` names the ids skipped since the last known one.
    New {
        /// Ids between the last known trade (or heartbeat) and this one, if any.
        lost: Option<Lost>,
    },
    /// At or below the last trade handed on: a replay.
    Duplicate,
}

#[derive(Debug, Clone, Copy)]
struct ProductState {
    /// The highest trade id handed on.
    last_published: Option<i64>,
    /// The highest trade id accounted for: handed on, or reported lost by a heartbeat.
    accounted_through: i64,
}

/// Trade ids per product; see the module docs.
#[derive(Debug, Clone, Default)]
pub struct TradeTracker {
    products: HashMap<String, ProductState>,
}

impl TradeTracker {
    /// Starts `product` after `last_trade_id` (e.g. from the engine's checkpoint): trades up to it
    /// count as already handed on.
    pub fn seed(&mut self, product: &str, last_trade_id: i64) {
        self.products.insert(
            product.to_owned(),
            ProductState {
                last_published: Some(last_trade_id),
                accounted_through: last_trade_id,
            },
        );
    }

    /// Records a trade of `product` with `trade_id`.
    pub fn trade(&mut self, product: &str, trade_id: i64) -> Seen {
        let Some(state) = self.products.get_mut(product) else {
            self.products.insert(
                product.to_owned(),
                ProductState {
                    last_published: Some(trade_id),
                    accounted_through: trade_id,
                },
            );
            return Seen::New { lost: None };
        };
        if state.last_published.is_some_and(|last| trade_id <= last) {
            return Seen::Duplicate;
        }
        // A trade at or below an id a heartbeat already reported lost arrived late after all: it
        // is handed on, and no further loss is reported.
        let lost = (trade_id > state.accounted_through + 1).then(|| Lost {
            first: state.accounted_through + 1,
            last: trade_id - 1,
        });
        state.last_published = Some(trade_id);
        state.accounted_through = state.accounted_through.max(trade_id);
        Seen::New { lost }
    }

    /// Records a heartbeat of `product` saying its last trade is `last_trade_id`; returns the ids
    /// that were never received. A heartbeat before the product's first trade, or with an id of
    /// 0 or below, says nothing about loss (see the module docs).
    pub fn heartbeat(&mut self, product: &str, last_trade_id: i64) -> Option<Lost> {
        if last_trade_id <= 0 {
            return None;
        }
        let state = self.products.get_mut(product)?;
        if last_trade_id <= state.accounted_through {
            return None;
        }
        let lost = Lost {
            first: state.accounted_through + 1,
            last: last_trade_id,
        };
        state.accounted_through = last_trade_id;
        Some(lost)
    }

    /// The highest trade id handed on for `product`.
    pub fn last_trade_id(&self, product: &str) -> Option<i64> {
        self.products.get(product).and_then(|s| s.last_published)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_replays_after_a_reconnect() {
        let mut t = TradeTracker::default();
        assert_eq!(t.trade("BTC-USD", 10), Seen::New { lost: None });
        assert_eq!(t.trade("BTC-USD", 11), Seen::New { lost: None });
        // last_match after a reconnect, then an overlap.
        assert_eq!(t.trade("BTC-USD", 11), Seen::Duplicate);
        assert_eq!(t.trade("BTC-USD", 9), Seen::Duplicate);
        assert_eq!(t.trade("BTC-USD", 12), Seen::New { lost: None });
        assert_eq!(
            t.trade("ETH-USD", 11),
            Seen::New { lost: None },
            "per product"
        );
        assert_eq!(t.last_trade_id("BTC-USD"), Some(12));
    }

    #[test]
    fn reports_skipped_trade_ids_once() {
        let mut t = TradeTracker::default();
        t.trade("BTC-USD", 10);
        assert_eq!(
            t.trade("BTC-USD", 14),
            Seen::New {
                lost: Some(Lost {
                    first: 11,
                    last: 13
                })
            }
        );
        assert_eq!(
            Lost {
                first: 11,
                last: 13
            }
            .count(),
            3
        );
        assert_eq!(t.trade("BTC-USD", 15), Seen::New { lost: None });
    }

    #[test]
    fn a_heartbeat_of_zero_or_before_the_first_trade_says_nothing_about_loss() {
        // heartbeat-zero-false-loss: zero heartbeats around contiguous trades of two products.
        let mut t = TradeTracker::default();
        assert_eq!(t.heartbeat("BTC-USD", 0), None);
        assert_eq!(t.heartbeat("ETH-USD", 0), None);
        assert_eq!(t.trade("BTC-USD", 831_102_379), Seen::New { lost: None });
        assert_eq!(t.trade("ETH-USD", 612_558_206), Seen::New { lost: None });
        assert_eq!(t.trade("BTC-USD", 831_102_380), Seen::New { lost: None });
        assert_eq!(t.heartbeat("BTC-USD", 0), None);
        assert_eq!(t.heartbeat("ETH-USD", 0), None);
        assert_eq!(t.trade("ETH-USD", 612_558_207), Seen::New { lost: None });
        assert_eq!(t.heartbeat("BTC-USD", -5), None);
        // Before any trade, a heartbeat's id is not a start to count losses from.
        let mut early = TradeTracker::default();
        assert_eq!(early.heartbeat("BTC-USD", 20), None);
        assert_eq!(early.heartbeat("BTC-USD", 25), None);
        assert_eq!(early.trade("BTC-USD", 30), Seen::New { lost: None });
        // An id below the first trade seen is stale.
        assert_eq!(early.heartbeat("BTC-USD", 12), None);
        assert_eq!(early.trade("BTC-USD", 31), Seen::New { lost: None });
    }

    #[test]
    fn a_heartbeat_ahead_of_the_last_trade_reports_the_missing_ids() {
        let mut t = TradeTracker::default();
        assert_eq!(t.heartbeat("BTC-USD", 20), None, "no trade yet");
        assert_eq!(t.trade("BTC-USD", 21), Seen::New { lost: None });
        assert_eq!(t.heartbeat("BTC-USD", 21), None);
        assert_eq!(
            t.heartbeat("BTC-USD", 23),
            Some(Lost {
                first: 22,
                last: 23
            })
        );
        assert_eq!(t.heartbeat("BTC-USD", 23), None, "reported once");
        // The next trade continues after what the heartbeat accounted for.
        assert_eq!(t.trade("BTC-USD", 24), Seen::New { lost: None });
        // A late trade inside the reported range is still handed on, without a second report.
        let mut late = TradeTracker::default();
        late.trade("BTC-USD", 1);
        late.heartbeat("BTC-USD", 3);
        assert_eq!(late.trade("BTC-USD", 2), Seen::New { lost: None });
    }

    #[test]
    fn a_seed_from_the_checkpoint_counts_as_handed_on() {
        let mut t = TradeTracker::default();
        t.seed("BTC-USD", 100);
        assert_eq!(t.trade("BTC-USD", 100), Seen::Duplicate);
        assert_eq!(
            t.trade("BTC-USD", 102),
            Seen::New {
                lost: Some(Lost {
                    first: 101,
                    last: 101
                })
            }
        );
    }
}
