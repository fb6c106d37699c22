//! The trade record on the bus: one JSON object per trade, the same whichever venue it came from.
//! Prices and sizes are decimal strings (exact); `side` is the taker's side.

use serde::{Deserialize, Serialize};

/// The default declared columns of the bus record (see `engine::schema`).
pub const TRADE_COLUMNS: [&str; 9] = [
    "symbol utf8 not null",
    "coin_name utf8",
    "trade_id int64 not null",
    "sequence int64",
    "trade_time timestamp(us) not null",
    "price decimal(28,10) not null",
    "size decimal(28,10) not null",
    "side utf8 not null",
    "ingest_time timestamp(us)",
];

/// The default declared columns as owned strings (for config defaults).
pub fn trade_columns() -> Vec<String> {
    TRADE_COLUMNS.iter().map(|c| (*c).to_owned()).collect()
}

/// One trade as it travels on the bus.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TradeRecord {
    /// The product, `BASE-QUOTE` (e.g. `BTC-USD`).
    pub symbol: String,
    /// The coin's name from the coin map, if the product is in it.
    pub coin_name: Option<String>,
    /// The venue's trade id (per product, increasing).
    pub trade_id: i64,
    /// The venue's sequence number, where it has one.
    pub sequence: Option<i64>,
    /// When the venue matched the trade (RFC 3339, UTC).
    pub trade_time: String,
    /// Quote currency per unit of base, as a decimal string.
    pub price: String,
    /// Base quantity, as a decimal string.
    pub size: String,
    /// The taker's side, `buy` or `sell`.
    pub side: String,
    /// When coinstream received it (RFC 3339, UTC).
    pub ingest_time: String,
}

impl TradeRecord {
    /// The record as one JSON object.
    pub fn to_json(&self) -> Vec<u8> {
        // A struct of strings and integers always serialises.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// Formats a time as RFC 3339 with microseconds, as the exchange does.
pub fn rfc3339_micros(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}
