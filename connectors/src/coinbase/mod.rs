//! Coinbase Exchange's WebSocket feed (`wss://ws-feed.exchange.coinbase.com`, channels `matches`
//! and `heartbeat`; docs: <https://docs.cdp.coinbase.com/exchange/websocket-feed/channels>).
//!
//! Quirks that shape this code:
//! - `side` in a `match` is the **maker's** side; the bus record carries the taker's, so it is
//!   inverted here (`sell` ⇒ the taker bought).
//! - `trade_id` and `sequence` are JSON numbers, `price` and `size` decimal strings.
//! - `sequence` jumps are normal on `matches` (it counts the product's full stream); dropped trades
//!   show as `trade_id` gaps and in heartbeats' `last_trade_id`.
//! - New message types may appear at any time and must be ignored.

pub mod feed;
