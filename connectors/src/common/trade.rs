//! The trade record on the bus: one JSON object per trade, the same whichever venue it came from.
//! Prices and sizes are decimal strings (exact); `side` is the taker's side.
//!
//! [`TradeRecord::check`] is the edge: a record leaves a connector only if the engine would
//! accept it, and a price or size of zero or below is not a trade (as the holding's last price
//! it would write the whole holding off).

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use super::excerpt::excerpt;

/// The bus record's table, `CREATE TABLE trades (...)`: `sql/tables/trades.sql`, the one
/// declaration of its columns (the default input table, and the schema fuzz targets decode).
pub const TRADE_TABLE_DDL: &str = include_str!("../../../sql/tables/trades.sql");

/// The bus record's Arrow schema, from [`TRADE_TABLE_DDL`].
///
/// # Panics
/// Never: `sql/tables/trades.sql` is part of the build and a unit test parses it.
pub fn trade_schema() -> arrow::datatypes::SchemaRef {
    engine::schema::ddl_table("sql/tables/trades.sql", TRADE_TABLE_DDL, "trades")
        .expect("sql/tables/trades.sql declares table trades (a unit test checks it)")
}

/// One trade as it travels on the bus.
///
/// Its text fields are `Cow`s so that a connector can build the record from a frame it has just
/// parsed without copying (the capture source borrows them from its read buffer);
/// [`TradeRecord::into_owned`] detaches a record that has to outlive that buffer. Deserialising
/// always copies (no `#[serde(borrow)]`), so `TradeRecord<'static>` is `DeserializeOwned`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TradeRecord<'a> {
    /// The product, `BASE-QUOTE` (e.g. `BTC-USD`).
    pub symbol: Cow<'a, str>,
    /// The coin's name from the coin map, if the product is in it.
    pub coin_name: Option<Cow<'a, str>>,
    /// The venue's trade id (per product, increasing).
    pub trade_id: i64,
    /// The venue's sequence number, where it has one.
    pub sequence: Option<i64>,
    /// When the venue matched the trade (RFC 3339, UTC).
    pub trade_time: Cow<'a, str>,
    /// Quote currency per unit of base, as a decimal string.
    pub price: Cow<'a, str>,
    /// Base quantity, as a decimal string.
    pub size: Cow<'a, str>,
    /// The taker's side, `buy` or `sell`.
    pub side: Cow<'a, str>,
    /// When coinstream received it (RFC 3339, UTC).
    pub ingest_time: Cow<'a, str>,
}

impl TradeRecord<'_> {
    /// Why the record cannot be published, if it cannot: a negative trade id, a price or size
    /// that is not a finite decimal greater than zero (checked with the engine's one decimal
    /// parser), or a time that is not RFC 3339.
    pub fn check(&self) -> Result<(), String> {
        if self.trade_id < 0 {
            return Err(format!("trade_id {} is negative", self.trade_id));
        }
        check_positive_decimal("price", &self.price)?;
        check_positive_decimal("size", &self.size)?;
        if chrono::DateTime::parse_from_rfc3339(&self.trade_time).is_err() {
            return Err(format!(
                "time \"{}\" is not an RFC 3339 time",
                excerpt(self.trade_time.as_bytes())
            ));
        }
        Ok(())
    }

    /// The record as one JSON object.
    pub fn to_json(&self) -> Vec<u8> {
        // Room for a whole record (about 230 bytes) at once; `to_vec` would grow from 128.
        let mut out = Vec::with_capacity(256);
        // Writing a struct of strings and integers to a Vec cannot fail.
        let _ = serde_json::to_writer(&mut out, self);
        out
    }

    /// The record with its own copies of every text, free of the buffer it was parsed from.
    pub fn into_owned(self) -> TradeRecord<'static> {
        TradeRecord {
            symbol: Cow::Owned(self.symbol.into_owned()),
            coin_name: self.coin_name.map(|c| Cow::Owned(c.into_owned())),
            trade_id: self.trade_id,
            sequence: self.sequence,
            trade_time: Cow::Owned(self.trade_time.into_owned()),
            price: Cow::Owned(self.price.into_owned()),
            size: Cow::Owned(self.size.into_owned()),
            side: Cow::Owned(self.side.into_owned()),
            ingest_time: Cow::Owned(self.ingest_time.into_owned()),
        }
    }
}

/// Checks that `text`, the value of `field`, is a finite decimal greater than zero (a price, a
/// size); the error names the field and the (shortened) value.
pub fn check_positive_decimal(field: &str, text: &str) -> Result<(), String> {
    match engine::decimal::is_positive_decimal(text) {
        Ok(true) => Ok(()),
        Ok(false) => Err(format!(
            "{field} \"{}\" is not greater than zero",
            excerpt(text.as_bytes())
        )),
        Err(e) => Err(format!("{field} \"{}\" {e}", excerpt(text.as_bytes()))),
    }
}

/// Formats a time as RFC 3339 with microseconds, as the exchange does.
pub fn rfc3339_micros(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record<'a>(price: &'a str, size: &'a str) -> TradeRecord<'a> {
        TradeRecord {
            symbol: "BTC-USD".into(),
            coin_name: Some("Bitcoin".into()),
            trade_id: 7,
            sequence: None,
            trade_time: "2026-11-20T00:00:00.123456Z".into(),
            price: price.into(),
            size: size.into(),
            side: "buy".into(),
            ingest_time: "2026-11-20T00:00:01Z".into(),
        }
    }

    #[test]
    fn accepts_positive_finite_decimals() {
        for (price, size) in [("400.23", "5.23512"), ("1.5E+4", "0.00000001"), ("1", "1.")] {
            assert_eq!(record(price, size).check(), Ok(()), "{price} {size}");
        }
    }

    #[test]
    fn rejects_values_that_cannot_be_a_trade_with_their_reason() {
        let reason = |price: &str, size: &str| record(price, size).check().unwrap_err();
        assert_eq!(reason("0", "1"), "price \"0\" is not greater than zero");
        assert_eq!(
            reason("0.000", "1"),
            "price \"0.000\" is not greater than zero"
        );
        assert_eq!(
            reason("-3.5", "1"),
            "price \"-3.5\" is not greater than zero"
        );
        assert_eq!(reason("1", "-0"), "size \"-0\" is not greater than zero");
        assert!(reason("NaN", "1").starts_with("price \"NaN\" is not a decimal: NaN"));
        assert!(reason("1", "Infinity").starts_with("size \"Infinity\" is not a decimal"));
        assert!(reason("1", "").starts_with("size \"\" is not a decimal: empty"));
        assert!(reason("1 000", "1").contains("spaces"));
        let long = reason(&"9".repeat(10_000), "x");
        assert!(long.starts_with("size \"x\""), "{long}");
        let huge = reason("abc".repeat(1_000).as_str(), "1");
        assert!(huge.len() < 400, "the value is shortened: {huge}");
        let mut negative_id = record("1", "1");
        negative_id.trade_id = -1;
        assert_eq!(negative_id.check().unwrap_err(), "trade_id -1 is negative");
        let mut bad_time = record("1", "1");
        bad_time.trade_time = "yesterday".into();
        assert_eq!(
            bad_time.check().unwrap_err(),
            "time \"yesterday\" is not an RFC 3339 time"
        );
    }
}
