//! Fuzz targets of the venue parsers (see the `coinstream-fuzz` crate and `fuzz/README.md`):
//! `coinbase_exchange` ([`feed::parse`]), `coinbase_advanced` ([`advanced::parse`]),
//! `gateio_candles` ([`parse_rows`]) and `gateio_responses` (how the Gate.io client reads an
//! error answer and its rate-limit headers).
//!
//! Besides never panicking, each checks what it parsed against an independent reading of the same
//! bytes (`serde_json::Value`), and sends every trade or candle it accepts through the engine's
//! own decoder into the bus schema (the round trip an ingester's record makes).

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use arrow::array::AsArray;
use arrow::datatypes::{Int64Type, SchemaRef, TimestampSecondType};
use engine::RawRecord;
use engine::decode::RecordDecoder;
use fuzz::Harness;
use hyper::{HeaderMap, StatusCode};
use rust_decimal::Decimal;
use serde_json::Value;

use crate::coinbase::advanced;
use crate::coinbase::feed::{self, FeedEvent};
use crate::common::http::Response;
use crate::common::trade::{TRADE_TABLE_DDL, TradeRecord};
use crate::gateio::candles::{CANDLE_TABLE_DDL, CandleRecord, parse_rows};
use crate::gateio::client;

const INGEST: &str = "2026-11-20T14:00:00.123456Z";

const COINBASE_WORDS: &[&str] = &[
    r#""type""#,
    r#""match""#,
    r#""last_match""#,
    r#""heartbeat""#,
    r#""heartbeats""#,
    r#""error""#,
    r#""subscriptions""#,
    r#""trade_id""#,
    r#""last_trade_id""#,
    r#""sequence""#,
    r#""price""#,
    r#""size""#,
    r#""side""#,
    r#""buy""#,
    r#""sell""#,
    r#""BUY""#,
    r#""SELL""#,
    r#""Buy""#,
    r#""product_id""#,
    r#""BTC-USD""#,
    r#""ETH-USD""#,
    r#""time""#,
    r#""message""#,
    r#""reason""#,
    r#""channel""#,
    r#""market_trades""#,
    r#""events""#,
    r#""trades""#,
    r#""snapshot""#,
    r#""update""#,
];

const GATEIO_WORDS: &[&str] = &[
    r#""true""#,
    r#""false""#,
    r#""label""#,
    r#""message""#,
    r#""detail""#,
    r#""TOO_MANY_REQUESTS""#,
    r#""INVALID_CURRENCY_PAIR""#,
    "HTTP 429",
    "HTTP 200",
    "HTTP 400",
    "HTTP 503",
    "retry-after",
    "x-gate-ratelimit-reset-timestamp",
    "x-gate-ratelimit-requests-remain",
    "1e300",
    "-5",
    "inf",
    "NaN",
    "1717246810123456789",
];

fn coins() -> BTreeMap<String, String> {
    [
        ("BTC-USD".to_owned(), "Bitcoin".to_owned()),
        ("ETH-USD".to_owned(), "Ethereum".to_owned()),
    ]
    .into()
}

/// The declared table `name` of the DDL text `ddl` (a shipped `sql/tables/*.sql`).
fn schema(ddl: &str, name: &str) -> SchemaRef {
    engine::schema::ddl_table(name, ddl, name).expect("the shipped table declaration parses")
}

/// Decodes one bus record with the engine's decoder: the row's batch, or the dead letter's reason.
fn decode(schema: &SchemaRef, json: Vec<u8>) -> Result<arrow::record_batch::RecordBatch, String> {
    let record = RawRecord {
        position: engine::RecordPosition::new(0, 0),
        payload: json,
        frame: None,
        rejected: None,
        received_at: SystemTime::UNIX_EPOCH,
    };
    let decoded = RecordDecoder::new(schema.clone())
        .decode(std::slice::from_ref(&record))
        .unwrap_or_else(|e| panic!("decoding failed as a whole: {e}"));
    match decoded.dead_letters.first() {
        Some(letter) => Err(letter.reason.clone()),
        None => Ok(decoded.batch),
    }
}

/// A decimal string as the bus's `decimal(28,10)` must hold it, when that is exact (no exponent,
/// at most 10 fractional digits); `None` when rounding or rejecting is up to the decimal policy.
fn exact_decimal(text: &str) -> Option<Decimal> {
    let fraction = text.split_once('.').map_or(0, |(_, f)| f.len());
    let plain = text
        .trim_start_matches('-')
        .bytes()
        .all(|b| b.is_ascii_digit() || b == b'.');
    (plain && fraction <= 10)
        .then(|| Decimal::from_str(text).ok())
        .flatten()
}

/// Counts of what the targets saw, for the report line.
#[derive(Default)]
struct Seen {
    trades: AtomicU64,
    round_trips: AtomicU64,
    /// Trades the parser accepted that the engine's decoder dead-letters.
    undecodable: AtomicU64,
}

impl Seen {
    fn line(&self) -> String {
        format!(
            "{} trades accepted, {} decoded back exactly, {} dead-lettered by the engine",
            self.trades.load(Ordering::Relaxed),
            self.round_trips.load(Ordering::Relaxed),
            self.undecodable.load(Ordering::Relaxed),
        )
    }
}

/// The round trip of an accepted trade through the bus record and the engine's decoder: what
/// decodes keeps the symbol, id, side and (where exact) price and size.
fn round_trip(record: &TradeRecord, schema: &SchemaRef, seen: &Seen) {
    seen.trades.fetch_add(1, Ordering::Relaxed);
    let json: Value = serde_json::from_slice(&record.to_json()).expect("a record is JSON");
    assert_eq!(json["trade_id"].as_i64(), Some(record.trade_id));
    let Ok(batch) = decode(schema, record.to_json()) else {
        seen.undecodable.fetch_add(1, Ordering::Relaxed);
        return;
    };
    assert_eq!(batch.num_rows(), 1);
    let text = |name: &str| {
        let column = batch.column_by_name(name).expect("a bus column");
        arrow::util::display::array_value_to_string(column, 0).expect("printable")
    };
    assert_eq!(text("symbol"), record.symbol);
    assert_eq!(text("side"), record.side);
    let ids = batch.column_by_name("trade_id").expect("a bus column");
    assert_eq!(ids.as_primitive::<Int64Type>().value(0), record.trade_id);
    for (name, value) in [("price", &record.price), ("size", &record.size)] {
        if let Some(exact) = exact_decimal(value) {
            let decoded =
                Decimal::from_str(&text(name)).expect("a decimal column prints a decimal");
            assert_eq!(decoded, exact, "{name} {value:?} changed on the way");
        }
    }
    seen.round_trips.fetch_add(1, Ordering::Relaxed);
}

fn check_exchange(frame: &[u8], schema: &SchemaRef, seen: &Seen) {
    let coins = coins();
    let event = feed::parse(frame, &coins, INGEST);
    assert_eq!(event, feed::parse(frame, &coins, INGEST), "parsing is pure");
    // The independent reading fails where the parser rightly skips what it does not read
    // (invalid UTF-8 or `1e400` in an ignored field): then only the record's own checks apply.
    let Ok(value) = serde_json::from_slice::<Value>(frame) else {
        if let FeedEvent::Trade { record, .. } = &event {
            round_trip(record, schema, seen);
        }
        return;
    };
    let field = |name: &str| value.get(name);
    let text = |name: &str| field(name).and_then(Value::as_str);
    match &event {
        FeedEvent::Trade { record, last_match } => {
            assert_eq!(text("type") == Some("last_match"), *last_match);
            assert_eq!(
                field("trade_id").and_then(Value::as_i64),
                Some(record.trade_id)
            );
            assert_eq!(field("sequence").and_then(Value::as_i64), record.sequence);
            assert_eq!(text("product_id"), Some(record.symbol.as_ref()));
            assert_eq!(text("price"), Some(record.price.as_ref()));
            assert_eq!(text("size"), Some(record.size.as_ref()));
            assert_eq!(text("time"), Some(record.trade_time.as_ref()));
            assert_eq!(
                text("side").and_then(feed::taker_side_of),
                Some(record.side.as_ref()),
                "the maker's side is inverted"
            );
            assert_eq!(
                record.coin_name.as_deref(),
                coins.get(record.symbol.as_ref()).map(String::as_str)
            );
            round_trip(record, schema, seen);
        }
        FeedEvent::Heartbeat {
            product_id,
            last_trade_id,
        } => {
            assert_eq!(text("type"), Some("heartbeat"));
            assert_eq!(text("product_id"), Some(product_id.as_str()));
            assert_eq!(
                field("last_trade_id").and_then(Value::as_i64),
                Some(*last_trade_id)
            );
        }
        FeedEvent::Subscriptions => assert_eq!(text("type"), Some("subscriptions")),
        FeedEvent::Error { message, reason } => {
            assert_eq!(text("type"), Some("error"));
            assert_eq!(text("message").unwrap_or_default(), message);
            assert_eq!(text("reason"), reason.as_deref());
        }
        FeedEvent::Other(kind) => assert_eq!(text("type"), Some(kind.as_str())),
        FeedEvent::Invalid(reason) => assert!(!reason.is_empty()),
    }
}

/// The trades of an Advanced Trade frame, read independently: (trade id, product, historical).
fn advanced_trades(frame: &Value) -> Vec<(Option<i64>, &Value, bool)> {
    let Some(events) = frame.get("events").and_then(Value::as_array) else {
        return Vec::new();
    };
    events
        .iter()
        .flat_map(|event| {
            let historical = event.get("type").and_then(Value::as_str) == Some("snapshot");
            event
                .get("trades")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(move |t| {
                    let id = match t.get("trade_id") {
                        Some(Value::String(s)) => s.parse::<i64>().ok(),
                        Some(n) => n.as_i64(),
                        None => None,
                    };
                    (id, t, historical)
                })
        })
        .collect()
}

fn check_advanced(frame: &[u8], schema: &SchemaRef, seen: &Seen) {
    let coins = coins();
    let events = advanced::parse(frame, &coins, INGEST);
    assert_eq!(
        events,
        advanced::parse(frame, &coins, INGEST),
        "parsing is pure"
    );
    assert!(!events.is_empty() || frame_has_no_trades(frame));
    // See check_exchange: a frame the independent reading refuses is checked on its own terms.
    let value = serde_json::from_slice::<Value>(frame).ok();
    let mut last_id = i64::MIN;
    for event in &events {
        match event {
            FeedEvent::Trade { record, last_match } => {
                assert!(record.trade_id >= last_id, "trades leave sorted by id");
                last_id = record.trade_id;
                if let Some(value) = &value {
                    let trades = advanced_trades(value);
                    let source = trades.iter().find(|(id, t, historical)| {
                        *id == Some(record.trade_id)
                            && t.get("product_id").and_then(Value::as_str) == Some(&record.symbol)
                            && t.get("price").and_then(Value::as_str) == Some(&record.price)
                            && t.get("size").and_then(Value::as_str) == Some(&record.size)
                            && t.get("time").and_then(Value::as_str) == Some(&record.trade_time)
                            && t.get("side")
                                .and_then(Value::as_str)
                                .and_then(feed::taker_side_of)
                                == Some(record.side.as_ref())
                            && *historical == *last_match
                    });
                    assert!(source.is_some(), "{record:?} is not a trade of the frame");
                }
                assert_eq!(record.sequence, None);
                round_trip(record, schema, seen);
            }
            FeedEvent::Error { .. } => {
                if let Some(value) = &value {
                    assert_eq!(value.get("type").and_then(Value::as_str), Some("error"));
                }
            }
            FeedEvent::Invalid(reason) => assert!(!reason.is_empty()),
            FeedEvent::Subscriptions | FeedEvent::Other(_) | FeedEvent::Heartbeat { .. } => {}
        }
    }
}

/// A frame may hold no event only as a `market_trades` frame without trades (or one the
/// independent reading cannot judge; see `check_exchange`).
fn frame_has_no_trades(frame: &[u8]) -> bool {
    match serde_json::from_slice::<Value>(frame) {
        Err(_) => true,
        Ok(v) => {
            v.get("channel").and_then(Value::as_str) == Some("market_trades")
                && advanced_trades(&v).is_empty()
        }
    }
}

fn check_candles(body: &[u8], schema: &SchemaRef, seen: &Seen) {
    let rows = parse_rows(body);
    let value = serde_json::from_slice::<Vec<Value>>(body);
    let (rows, value) = match (rows, value) {
        (Err(_), Err(_)) => return,
        (Ok(rows), Ok(value)) => (rows, value),
        (rows, value) => panic!("parse_rows {rows:?} disagrees with serde_json {value:?}"),
    };
    assert_eq!(rows.len(), value.len(), "one result per row");
    for (row, parsed) in value.iter().zip(rows) {
        let Ok(candle) = parsed else { continue };
        let cell = |i: usize| row.get(i).and_then(Value::as_str);
        assert_eq!(
            cell(0).and_then(|s| s.parse::<i64>().ok()),
            Some(candle.window_start)
        );
        assert_eq!(
            candle.closed,
            cell(7).map(|c| c == "true"),
            "the closed flag is read from index 7"
        );
        let ohlcv = &candle.ohlcv;
        for decimal in [
            &ohlcv.open,
            &ohlcv.high,
            &ohlcv.low,
            &ohlcv.close,
            &ohlcv.volume_quote,
        ]
        .into_iter()
        .chain(ohlcv.volume_base.as_ref())
        {
            assert!(
                engine::decimal::check_decimal(decimal).is_ok(),
                "{decimal:?} was checked to be a decimal"
            );
        }
        seen.trades.fetch_add(1, Ordering::Relaxed);
        let record = CandleRecord::new("BTC_USDT", "1m", candle.clone(), INGEST);
        match decode(schema, record.to_json()) {
            Ok(batch) => {
                assert_eq!(batch.num_rows(), 1);
                let start = batch.column_by_name("window_start").expect("a bus column");
                assert_eq!(
                    start.as_primitive::<TimestampSecondType>().value(0),
                    candle.window_start,
                    "the window start is kept"
                );
                seen.round_trips.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                seen.undecodable.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// A response written as `HTTP <status>`, header lines `name: value`, an empty line, the body.
fn response(input: &[u8]) -> Option<Response> {
    let split = input.windows(2).position(|w| w == b"\n\n");
    let (head, body) = match split {
        Some(at) => (&input[..at], &input[at + 2..]),
        None => (input, &[][..]),
    };
    let head = String::from_utf8_lossy(head);
    let mut lines = head.lines();
    let status = lines
        .next()?
        .strip_prefix("HTTP ")?
        .trim()
        .parse::<u16>()
        .ok()?;
    let mut headers = HeaderMap::new();
    for line in lines {
        if let Some((name, value)) = line.split_once(':')
            && let (Ok(name), Ok(value)) = (
                hyper::header::HeaderName::from_bytes(name.trim().as_bytes()),
                hyper::header::HeaderValue::from_str(value.trim()),
            )
        {
            headers.append(name, value);
        }
    }
    Some(Response {
        status: StatusCode::from_u16(status).ok()?,
        headers,
        body: body.to_vec().into(),
    })
}

fn check_response(input: &[u8], seen: &Seen) {
    let Some(response) = response(input) else {
        return;
    };
    seen.trades.fetch_add(1, Ordering::Relaxed);
    let wait = client::rate_limit_wait(&response);
    assert!(
        wait <= client::MAX_RATE_LIMIT_WAIT,
        "waits at most the cap: {wait:?}"
    );
    let described = client::describe("u", &response);
    assert!(
        described.starts_with(&format!("GET u: {}", response.status)),
        "{described}"
    );
    if let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(&response.body)
        && let Some(Value::String(label)) = body.get("label")
    {
        // Unless the body is not Gate.io's error object after all (a repeated key): then its
        // excerpt stands in.
        assert!(
            described.contains(label.as_str())
                || described.ends_with(&crate::common::excerpt::excerpt(&response.body)),
            "names the label: {described}"
        );
    }
    if response.status.is_success() {
        let _ = parse_rows(&response.body);
    }
}

/// Checks every seed of `$harness`, then mutated inputs for the time budget. A macro, not a
/// function: bolero names a target after the function its `check!` is in, and `cargo bolero`
/// selects targets by that name.
macro_rules! fuzz {
    ($harness:expr, $check:expr) => {{
        let harness: &Harness = $harness;
        let check = $check;
        harness.replay_seeds(&check);
        fuzz::mutate_for_budget!(harness, &check);
    }};
}

/// Fuzz target `name` on Coinbase frames: `check` on each, against the bus trade table.
fn coinbase_target(name: &str, check: fn(&[u8], &SchemaRef, &Seen)) {
    let (schema, seen) = (schema(TRADE_TABLE_DDL, "trades"), Seen::default());
    let harness = Harness::new(name, COINBASE_WORDS);
    fuzz!(&harness, |frame: &[u8]| check(frame, &schema, &seen));
    harness.report(&seen.line());
}

#[test]
fn coinbase_exchange() {
    coinbase_target("coinbase_exchange", check_exchange);
}

#[test]
fn coinbase_advanced() {
    coinbase_target("coinbase_advanced", check_advanced);
}

#[test]
fn gateio_candles() {
    let (schema, seen) = (schema(CANDLE_TABLE_DDL, "gateio_candles"), Seen::default());
    let harness = Harness::new("gateio_candles", GATEIO_WORDS);
    fuzz!(&harness, |body: &[u8]| check_candles(body, &schema, &seen));
    harness.report(&seen.line().replace("trades", "candles"));
}

#[test]
fn gateio_responses() {
    let seen = Seen::default();
    let harness = Harness::new("gateio_responses", GATEIO_WORDS);
    fuzz!(&harness, |input: &[u8]| check_response(input, &seen));
    harness.report(&format!(
        "{} well-formed responses",
        seen.trades.load(Ordering::Relaxed)
    ));
}
