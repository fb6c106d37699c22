//! `GET /spot/candlesticks` rows and the candle record on the bus.
//!
//! A row is an array of strings read **by index** (the order is not OHLC):
//! `[start, quote volume, close, high, low, open, base volume, closed]`. Rows of 7 elements (no
//! `closed` flag; an older API version) are accepted as legacy: such a window counts as closed
//! once its end has passed. Prices and volumes stay decimal strings as received, checked with the
//! engine's one decimal parser: prices must be greater than zero, volumes at least zero (a window
//! without trades has none).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::common::excerpt::excerpt;

/// The candle record's table, `CREATE TABLE gateio_candles (...)`: `sql/tables/gateio_candles.sql`,
/// the one declaration of its columns (see [`CandleRecord`]).
pub const CANDLE_TABLE_DDL: &str = include_str!("../../../sql/tables/gateio_candles.sql");

/// One row of the response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candle {
    /// Window start, unix seconds.
    pub window_start: i64,
    /// The window's prices and volumes.
    pub ohlcv: Ohlcv,
    /// Whether the window is closed; `None` for a legacy 7-element row.
    pub closed: Option<bool>,
}

/// A window's prices and volumes, each the decimal string the API sent (checked, trailing zeros
/// kept): what a [`Candle`] read from the API and the [`CandleRecord`] on the bus share.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ohlcv {
    /// Opening price.
    pub open: String,
    /// Highest price.
    pub high: String,
    /// Lowest price.
    pub low: String,
    /// Closing price.
    pub close: String,
    /// Volume in the base currency; `None` when the API did not send it.
    pub volume_base: Option<String>,
    /// Volume in the quote currency.
    pub volume_quote: String,
}

/// Parses a response body: a JSON array of rows. The outer error means the body is not such an
/// array; each row parses on its own (a bad row does not spoil the others).
pub fn parse_rows(body: &[u8]) -> Result<Vec<Result<Candle, String>>, String> {
    let rows: Vec<Value> =
        serde_json::from_slice(body).map_err(|e| format!("not a JSON array of rows: {e}"))?;
    Ok(rows.iter().map(parse_row).collect())
}

fn parse_row(row: &Value) -> Result<Candle, String> {
    let Some(cells) = row.as_array() else {
        return Err(format!("row {row} is not an array"));
    };
    if cells.len() < 7 {
        return Err(format!(
            "row {row} has {} elements; expected 8 (7 for the legacy format)",
            cells.len()
        ));
    }
    let text = |i: usize, what: &str| -> Result<&str, String> {
        cells[i]
            .as_str()
            .ok_or_else(|| format!("row {row}: {what} (index {i}) is not a string"))
    };
    let checked = |i: usize, what: &str, zero_allowed: bool| -> Result<String, String> {
        let s = text(i, what)?;
        let shown = excerpt(s.as_bytes());
        match engine::decimal::is_positive_decimal(s) {
            Ok(true) => Ok(s.to_owned()),
            Ok(false) if zero_allowed && !is_negative(s) => Ok(s.to_owned()),
            Ok(false) => Err(format!(
                "row {}: {what} \"{shown}\" is not {}",
                excerpt(row.to_string().as_bytes()),
                if zero_allowed {
                    "zero or more"
                } else {
                    "greater than zero"
                }
            )),
            Err(e) => Err(format!(
                "row {}: {what} \"{shown}\" {e}",
                excerpt(row.to_string().as_bytes())
            )),
        }
    };
    let price = |i: usize, what: &str| checked(i, what, false);
    let volume = |i: usize, what: &str| checked(i, what, true);
    let start = text(0, "window start")?;
    let window_start = start
        .parse::<i64>()
        .map_err(|_| format!("row {row}: window start {start:?} is not unix seconds"))?;
    let closed = match cells.get(7) {
        None => None,
        Some(_) => match text(7, "closed flag")? {
            "true" => Some(true),
            "false" => Some(false),
            other => {
                return Err(format!(
                    "row {row}: closed flag {other:?} is not \"true\" or \"false\""
                ));
            }
        },
    };
    Ok(Candle {
        window_start,
        ohlcv: Ohlcv {
            volume_quote: volume(1, "quote volume")?,
            close: price(2, "close")?,
            high: price(3, "high")?,
            low: price(4, "low")?,
            open: price(5, "open")?,
            volume_base: Some(volume(6, "base volume")?),
        },
        closed,
    })
}

/// Whether `decimal` (already known to be a decimal that is not positive) is below zero: the
/// grammar allows a sign only in front, and `-0` is zero.
fn is_negative(decimal: &str) -> bool {
    decimal
        .strip_prefix('-')
        .is_some_and(|magnitude| engine::decimal::is_positive_decimal(magnitude) == Ok(true))
}

/// One closed candle as it travels on the bus (topic `crypto_candles`, keyed by pair).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CandleRecord {
    /// `BASE_QUOTE`, e.g. `BTC_USDT`.
    pub currency_pair: String,
    /// The interval's API name, e.g. `1m`.
    pub interval: String,
    /// Window start, RFC 3339 UTC.
    pub window_start: String,
    /// The prices and volumes, as fields of the record itself (`open`, `high`, …).
    #[serde(flatten)]
    pub ohlcv: Ohlcv,
    /// When coinstream fetched it, RFC 3339 UTC.
    pub ingest_time: String,
}

impl CandleRecord {
    /// The record of `candle` of `pair` at `interval`.
    pub fn new(pair: &str, interval: &str, candle: Candle, ingest_time: &str) -> Self {
        let window_start = chrono::DateTime::from_timestamp(candle.window_start, 0)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            .unwrap_or_default();
        Self {
            currency_pair: pair.to_owned(),
            interval: interval.to_owned(),
            window_start,
            ohlcv: candle.ohlcv,
            ingest_time: ingest_time.to_owned(),
        }
    }

    /// The record as one JSON object.
    pub fn to_json(&self) -> Vec<u8> {
        // A struct of strings always serialises.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_real_row_by_index_not_as_ohlc() {
        let rows = parse_rows(
            br#"[["1717246800","1157762.86821200","67772.5","67839.9","67715","67715.1","17.07790000","true"]]"#,
        )
        .unwrap();
        let candle = rows[0].clone().unwrap();
        assert_eq!(
            candle,
            Candle {
                window_start: 1_717_246_800,
                ohlcv: Ohlcv {
                    volume_quote: "1157762.86821200".into(),
                    close: "67772.5".into(),
                    high: "67839.9".into(),
                    low: "67715".into(),
                    open: "67715.1".into(),
                    volume_base: Some("17.07790000".into()),
                },
                closed: Some(true),
            }
        );
        let record = CandleRecord::new("BTC_USDT", "1h", candle, "2024-06-01T13:00:01.000000Z");
        assert_eq!(record.window_start, "2024-06-01T13:00:00Z");
        let json: Value = serde_json::from_slice(&record.to_json()).unwrap();
        assert_eq!(json["open"], "67715.1");
        assert_eq!(json["volume_quote"], "1157762.86821200");
    }

    #[test]
    fn accepts_legacy_rows_and_rejects_bad_ones_one_by_one() {
        let rows = parse_rows(
            br#"[["1717246800","1","2","3","1","2","0.5"],
                 ["1717246860","1","2","3","1"],
                 ["1717246920","1","abc","3","1","2","0.5","true"],
                 [1717246980,"1","2","3","1","2","0.5","true"],
                 ["1717247040","1","2","3","1","2","0.5","maybe"],
                 ["1717247100","1e2","2","3","1","2","0.5","false"],
                 {"t":1}]"#,
        )
        .unwrap();
        assert_eq!(rows[0].as_ref().unwrap().closed, None, "legacy");
        assert!(rows[1].as_ref().unwrap_err().contains("has 5 elements"));
        assert!(
            rows[2]
                .as_ref()
                .unwrap_err()
                .contains("close \"abc\" is not a decimal")
        );
        assert!(
            rows[3]
                .as_ref()
                .unwrap_err()
                .contains("window start (index 0) is not a string")
        );
        assert!(
            rows[4]
                .as_ref()
                .unwrap_err()
                .contains("closed flag \"maybe\"")
        );
        let open = rows[5].as_ref().unwrap();
        assert_eq!(
            (open.closed, open.ohlcv.volume_quote.as_str()),
            (Some(false), "1e2"),
            "kept as received: the engine's decimal parser reads exponents exactly"
        );
        assert!(rows[6].as_ref().unwrap_err().contains("is not an array"));
        assert!(parse_rows(br#"{"label":"X"}"#).is_err());
    }

    #[test]
    fn rejects_prices_that_cannot_be_real_and_negative_volumes() {
        let reason = |cells: &str| {
            let body = format!("[[\"1717246800\",{cells},\"true\"]]");
            parse_rows(body.as_bytes()).unwrap()[0].clone().unwrap_err()
        };
        let ok = |cells: &str| {
            let body = format!("[[\"1717246800\",{cells},\"true\"]]");
            parse_rows(body.as_bytes()).unwrap()[0].clone().unwrap()
        };
        assert!(
            reason(r#""1","0","3","1","2","0.5""#).contains("close \"0\" is not greater than zero")
        );
        assert!(
            reason(r#""1","2","3","-1","2","0.5""#).contains("low \"-1\" is not greater than zero")
        );
        assert!(reason(r#""1","2","NaN","1","2","0.5""#).contains("high \"NaN\" is not a decimal"));
        assert!(
            reason(r#""1","2","3","1","Infinity","0.5""#)
                .contains("open \"Infinity\" is not a decimal")
        );
        assert!(
            reason(r#""-1","2","3","1","2","0.5""#)
                .contains("quote volume \"-1\" is not zero or more")
        );
        assert!(
            reason(r#""1","2","3","1","2","""#)
                .contains("base volume \"\" is not a decimal: empty")
        );
        // A window without trades has zero volume.
        let quiet = ok(r#""0","2","2","2","2","-0""#);
        assert_eq!(
            (
                quiet.ohlcv.volume_quote.as_str(),
                quiet.ohlcv.volume_base.as_deref()
            ),
            ("0", Some("-0"))
        );
        let long = reason(&format!(r#""1","{}","3","1","2","0.5""#, "x".repeat(5_000)));
        assert!(long.len() < 1_000, "shortened: {} chars", long.len());
    }
}
