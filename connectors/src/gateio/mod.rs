//! Gate.io spot candlesticks over REST v4 (`GET https://api.gateio.ws/api/v4/spot/candlesticks`;
//! docs: <https://www.gate.io/docs/developers/apiv4/en/#market-candlesticks>), polled on a schedule
//! into candle records: an engine source (`[source] type = "gateio"`; `coinstream ingest gateio`
//! runs `pipelines/ingest-gateio.toml`, which writes them to Kafka).
//!
//! Quirks that shape this code:
//! - Rows are arrays of **strings** in the order `[start, quote volume, close, high, low, open,
//!   base volume, closed]`, not OHLC; the newest row is usually the still-open window
//!   (`"false"`), which is never published. Older responses have 7 elements (no `closed`).
//! - `limit` and `from`/`to` cannot be combined, and one request spans at most 1000 windows, so a
//!   backfill goes in pages of `from`/`to`.
//! - Public endpoints allow 200 requests per 10 s per IP; every response carries
//!   `X-Gate-RateLimit-Requests-Remain` and `X-Gate-RateLimit-Reset-Timestamp`, and HTTP 429
//!   means wait.
//! - Error answers are `{"label": ..., "message": ...}`: `label` is the stable key.
//!
//! Layout: [`config`] (`[source]` keys → validated settings), [`candles`] (rows and the bus
//! record), [`client`] (requests, rate limits, retries), [`poller`] (schedule, paging, dedupe,
//! counters), [`source`] (the engine source: positions in the checkpoint, replay).

pub mod candles;
pub mod client;
pub mod config;
pub mod poller;
pub mod source;
