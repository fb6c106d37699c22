//! Checking the candle records an ingest run put on Kafka against the Gate.io stand-in's rows.

use connectors::gateio::candles::{Candle, CandleRecord, Ohlcv};

/// Checks one record on the bus, `key` and `payload`, against the stand-in's row for its window
/// (`row(start)`, a `[t, quote volume, close, high, low, open, base volume, closed]` row of
/// strings): the payload must be, byte for byte, what `CandleRecord::to_json` makes of that row
/// at interval `1m` (decimals as the API's text, trailing zeros kept; the window start as RFC
/// 3339), keyed by its pair. Returns the pair and the window start in unix seconds.
///
/// The expected record is built from the row's cells by index here, not by the source's parser,
/// so a parser that mixes up the columns fails.
pub fn check_candle(key: &str, payload: &[u8], row: impl Fn(i64) -> String) -> (String, i64) {
    let record: CandleRecord = serde_json::from_slice(payload)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(payload)));
    let start = chrono::DateTime::parse_from_rfc3339(&record.window_start)
        .unwrap()
        .timestamp();
    assert_eq!(key, record.currency_pair);
    let cells: Vec<String> = serde_json::from_str(&row(start)).unwrap();
    let expected = CandleRecord::new(
        &record.currency_pair,
        "1m",
        Candle {
            window_start: start,
            ohlcv: Ohlcv {
                volume_quote: cells[1].clone(),
                close: cells[2].clone(),
                high: cells[3].clone(),
                low: cells[4].clone(),
                open: cells[5].clone(),
                volume_base: Some(cells[6].clone()),
            },
            closed: Some(true),
        },
        &record.ingest_time,
    );
    assert_eq!(
        String::from_utf8_lossy(payload),
        String::from_utf8_lossy(&expected.to_json()),
        "the record of the stand-in's row"
    );
    (record.currency_pair, start)
}
