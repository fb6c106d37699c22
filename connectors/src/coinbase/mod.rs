//! Coinbase's WebSocket feeds: Exchange (`wss://ws-feed.exchange.coinbase.com`, channels `matches`
//! and `heartbeat`; docs: <https://docs.cdp.coinbase.com/exchange/websocket-feed/channels>) and
//! Advanced Trade (`wss://advanced-trade-ws.coinbase.com`, channels `market_trades` and
//! `heartbeats`; docs: <https://docs.cdp.coinbase.com/advanced-trade/docs/ws-channels>).
//!
//! Quirks that shape this code:
//! - `side` in a `match` (and in an Advanced Trade trade) is the **maker's** side; the bus record
//!   carries the taker's, so it is inverted here (`sell` ⇒ the taker bought).
//! - `trade_id` and `sequence` are JSON numbers, `price` and `size` decimal strings; Advanced
//!   Trade's `trade_id` is a string of digits.
//! - `sequence` jumps are normal on `matches` (it counts the product's full stream); dropped trades
//!   show as `trade_id` gaps and in heartbeats' `last_trade_id`. They cannot be replayed.
//! - A `subscribe` must arrive within 5 s of connecting; after it the feed sends `last_match` (an
//!   old trade) per product, which after a reconnect repeats one already published.
//! - New message types may appear at any time and must be ignored.
//!
//! Layout: [`feed`] and [`advanced`] parse frames into [`feed::FeedEvent`]s, [`gaps`] tracks trade
//! ids per product, [`client`] owns the connection and its reconnects, [`source`] makes the client
//! an engine source, [`config`] is `[source] type = "coinbase"`; [`capture`] reads a file of
//! recorded feed messages (`[source] type = "coinbase_capture"`).

pub mod advanced;
pub mod capture;
pub mod client;
pub mod config;
pub mod feed;
pub mod gaps;
pub mod source;
