//! The trade record on the bus: one JSON object per trade, the same whichever venue it came from.
//! Prices and sizes are decimal strings (exact); `side` is the taker's side.
//!
//! [`TradeRecord::check`] is the edge: a record leaves a connector only if the engine would
//! accept it, and a price or size of zero or below is not a trade (as the holding's last price
//! it would write the whole holding off).

use std::borrow::Cow;

use engine::decode::{RowBuilder, RowLayout};
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

/// Where each field of a [`TradeRecord`] goes in the input table's rows, for a source that
/// builds rows itself ([`engine::Source::build_rows`]) instead of writing each trade as JSON for
/// the engine to parse again. A field the table has no column for is left out, as the decoder
/// ignores it in JSON; a column no field fills is null.
#[derive(Debug, Clone)]
pub struct TradeColumns {
    layout: RowLayout,
    symbol: Option<usize>,
    coin_name: Option<usize>,
    trade_id: Option<usize>,
    sequence: Option<usize>,
    trade_time: Option<usize>,
    price: Option<usize>,
    size: Option<usize>,
    side: Option<usize>,
    ingest_time: Option<usize>,
}

impl TradeColumns {
    /// The columns of `layout` the fields go to, by their names in the bus record's JSON.
    pub fn new(layout: RowLayout) -> Self {
        let f = |name: &str| layout.field(name);
        Self {
            symbol: f("symbol"),
            coin_name: f("coin_name"),
            trade_id: f("trade_id"),
            sequence: f("sequence"),
            trade_time: f("trade_time"),
            price: f("price"),
            size: f("size"),
            side: f("side"),
            ingest_time: f("ingest_time"),
            layout,
        }
    }

    /// An empty builder with room for `capacity` rows.
    pub fn builder(&self, capacity: usize) -> RowBuilder {
        self.layout.builder(capacity)
    }

    /// The schema of the rows.
    pub fn schema(&self) -> &arrow::datatypes::SchemaRef {
        self.layout.schema()
    }

    /// Appends `trade`'s row as the batch's record at `position`: what decoding
    /// [`TradeRecord::to_json`] would give. `false` when the builder refused it: then the
    /// record has to be handed over as that JSON, for the decoder to judge.
    pub fn append(&self, rows: &mut RowBuilder, trade: &TradeRecord<'_>, position: usize) -> bool {
        let text = |rows: &mut RowBuilder, column: Option<usize>, value: Option<&str>| match (
            column, value,
        ) {
            (Some(c), Some(v)) => rows.text(c, v),
            (Some(c), None) => rows.null(c),
            (None, _) => {}
        };
        let integer = |rows: &mut RowBuilder, column: Option<usize>, value: Option<i64>| match (
            column, value,
        ) {
            (Some(c), Some(v)) => rows.integer(c, v),
            (Some(c), None) => rows.null(c),
            (None, _) => {}
        };
        text(rows, self.symbol, Some(&trade.symbol));
        text(rows, self.coin_name, trade.coin_name.as_deref());
        integer(rows, self.trade_id, Some(trade.trade_id));
        integer(rows, self.sequence, trade.sequence);
        text(rows, self.trade_time, Some(&trade.trade_time));
        text(rows, self.price, Some(&trade.price));
        text(rows, self.size, Some(&trade.size));
        text(rows, self.side, Some(&trade.side));
        text(rows, self.ingest_time, Some(&trade.ingest_time));
        rows.end_row(position)
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

    #[test]
    fn a_built_row_is_the_row_its_json_decodes_into() {
        let schema = trade_schema();
        let mut decoder = engine::decode::RecordDecoder::new(schema.clone());
        let columns = TradeColumns::new(decoder.row_layout().unwrap());
        let mut trades = Vec::new();
        for (price, size) in [
            ("400.23", "5.23512"),
            ("1.5E+4", "0.00000001"),
            ("0.123456789012345", "1"),
            ("1e30", "1"),
        ] {
            for (coin_name, sequence) in [(Some("Bitcoin"), Some(9)), (None, None)] {
                let mut trade = record(price, size);
                trade.coin_name = coin_name.map(Into::into);
                trade.sequence = sequence;
                trades.push(trade);
            }
        }
        let mut quoted = record("1", "2");
        quoted.symbol = "BTC-\"USD\"".into();
        trades.push(quoted);
        let mut zoned = record("1", "2");
        zoned.trade_time = "2026-11-20T01:00:00.5+01:00".into();
        trades.push(zoned);
        let mut bad_time = record("1", "2");
        bad_time.ingest_time = "yesterday".into();
        trades.push(bad_time);

        let mut rows = columns.builder(trades.len());
        let kept: Vec<usize> = (0..trades.len())
            .filter(|&i| columns.append(&mut rows, &trades[i], i))
            .collect();
        let built = rows.finish().unwrap();
        assert_eq!(built.accepted, kept);
        // Refused: the two decimals beyond DECIMAL(28,10) and the time that is not one.
        assert_eq!(kept.len(), trades.len() - 3, "{kept:?}");
        let as_json = |i: usize| engine::RawRecord {
            position: engine::RecordPosition::new(0, i as i64),
            payload: trades[i].to_json(),
            frame: None,
            rejected: None,
            received_at: std::time::SystemTime::UNIX_EPOCH,
        };
        let decoded = decoder
            .decode(&kept.iter().map(|&i| as_json(i)).collect::<Vec<_>>())
            .unwrap();
        assert!(decoded.dead_letters.is_empty());
        assert_eq!(built.batch, decoded.batch);
        assert_eq!(built.rounded, 2);
        assert_eq!(decoded.rounded_decimals, 2);
        // What it refused, the decoder dead-letters from the JSON.
        let refused: Vec<_> = (0..trades.len())
            .filter(|i| !kept.contains(i))
            .map(as_json)
            .collect();
        assert_eq!(decoder.decode(&refused).unwrap().dead_letters.len(), 3);
    }
}
