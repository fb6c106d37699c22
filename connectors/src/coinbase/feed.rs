//! Parsing of Exchange feed messages and their normalisation into bus records.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::Deserialize;

use crate::common::trade::TradeRecord;

/// What one feed message is. A trade borrows its texts from the message it was parsed from
/// (`'a`); [`TradeRecord::into_owned`] detaches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedEvent<'a> {
    /// A trade (`match`, or `last_match` replayed after subscribing), normalised.
    Trade {
        /// The bus record.
        record: TradeRecord<'a>,
        /// It came as `last_match` (historical: may duplicate one already seen).
        last_match: bool,
    },
    /// A heartbeat: the product's last trade id so far.
    Heartbeat {
        /// The product.
        product_id: String,
        /// The id of the product's last trade.
        last_trade_id: i64,
    },
    /// The subscriptions acknowledgement.
    Subscriptions,
    /// An `error` message from the exchange.
    Error {
        /// Its summary.
        message: String,
        /// Its detail, if any.
        reason: Option<String>,
    },
    /// A message type this pipeline does not use (the docs say to ignore unknown types).
    Other(String),
    /// A message that cannot be used, and why.
    Invalid(String),
}

impl FeedEvent<'_> {
    /// The event with its own copies of every text, free of the message it was parsed from.
    pub fn into_owned(self) -> FeedEvent<'static> {
        match self {
            FeedEvent::Trade { record, last_match } => FeedEvent::Trade {
                record: record.into_owned(),
                last_match,
            },
            FeedEvent::Heartbeat {
                product_id,
                last_trade_id,
            } => FeedEvent::Heartbeat {
                product_id,
                last_trade_id,
            },
            FeedEvent::Subscriptions => FeedEvent::Subscriptions,
            FeedEvent::Error { message, reason } => FeedEvent::Error { message, reason },
            FeedEvent::Other(kind) => FeedEvent::Other(kind),
            FeedEvent::Invalid(reason) => FeedEvent::Invalid(reason),
        }
    }
}

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    trade_id: Option<i64>,
    sequence: Option<i64>,
    #[serde(borrow)]
    side: Option<Text<'a>>,
    #[serde(borrow)]
    size: Option<Text<'a>>,
    #[serde(borrow)]
    price: Option<Text<'a>>,
    #[serde(borrow)]
    product_id: Option<Text<'a>>,
    #[serde(borrow)]
    time: Option<Text<'a>>,
    last_trade_id: Option<i64>,
    message: Option<String>,
    reason: Option<String>,
}

/// A text field of a frame, borrowed from it (copied only when it holds escapes). serde borrows a
/// `Cow<str>` field marked `borrow`, but not one inside an `Option` (serde issue #1497): there
/// every text of every trade was copied, five allocations a frame.
#[derive(Deserialize)]
struct Text<'a>(#[serde(borrow)] Cow<'a, str>);

/// Parses one feed message. `coins` maps product ids to coin names; `ingest_time` is when it
/// arrived (RFC 3339). A trade borrows its texts from all three, copying none.
pub fn parse<'a>(
    line: &'a [u8],
    coins: &'a BTreeMap<String, String>,
    ingest_time: &'a str,
) -> FeedEvent<'a> {
    // The line's UTF-8 is checked once, whole: from bytes, serde_json checks each string it
    // borrows on its own, about 25 short checks a frame (4% of the embedded job's CPU). A line
    // that is not UTF-8 takes the byte parser, which says where it fails.
    let parsed = match std::str::from_utf8(line) {
        Ok(text) => serde_json::from_str::<Message>(text),
        Err(_) => serde_json::from_slice::<Message>(line),
    };
    let message = match parsed {
        Ok(m) => m,
        Err(e) => return classify_unparsed(line, e),
    };
    match message.kind.as_ref() {
        "match" | "last_match" => normalise(message, coins, ingest_time),
        "heartbeat" => match (message.product_id, message.last_trade_id) {
            (Some(Text(p)), Some(id)) => FeedEvent::Heartbeat {
                product_id: p.into_owned(),
                last_trade_id: id,
            },
            _ => FeedEvent::Invalid("heartbeat without product_id or last_trade_id".into()),
        },
        "subscriptions" => FeedEvent::Subscriptions,
        "error" => FeedEvent::Error {
            message: message.message.unwrap_or_default(),
            reason: message.reason,
        },
        other => FeedEvent::Other(other.to_owned()),
    }
}

/// A message that did not fit the shape: say why, but skip types we ignore anyway.
fn classify_unparsed(line: &[u8], error: serde_json::Error) -> FeedEvent<'static> {
    match serde_json::from_slice::<serde_json::Value>(line) {
        Err(_) => FeedEvent::Invalid(format!("invalid JSON: {error}")),
        Ok(value) => match value.get("type").and_then(|t| t.as_str()) {
            Some(kind @ ("match" | "last_match" | "heartbeat" | "error" | "subscriptions")) => {
                FeedEvent::Invalid(format!("{kind} message with wrong field types: {error}"))
            }
            Some(other) => FeedEvent::Other(other.to_owned()),
            None => FeedEvent::Invalid("message without a type".into()),
        },
    }
}

/// The taker's side of a trade whose `side` field is the **maker's** side, as in both Coinbase
/// feeds (Exchange `buy`/`sell`, Advanced Trade `BUY`/`SELL`): the maker sold, so the taker bought.
pub fn taker_side_of(maker_side: &str) -> Option<&'static str> {
    match maker_side {
        "sell" | "SELL" => Some("buy"),
        "buy" | "BUY" => Some("sell"),
        _ => None,
    }
}

/// The `subscribe` request for `matches` and `heartbeat` of `products` (it must reach the feed
/// within 5 s of connecting, or the feed disconnects).
pub fn subscribe_message(products: &[String]) -> String {
    serde_json::json!({
        "type": "subscribe",
        "product_ids": products,
        "channels": ["matches", "heartbeat"],
    })
    .to_string()
}

fn normalise<'a>(
    m: Message<'a>,
    coins: &'a BTreeMap<String, String>,
    ingest_time: &'a str,
) -> FeedEvent<'a> {
    let missing = [
        ("trade_id", m.trade_id.is_none()),
        ("product_id", m.product_id.is_none()),
        ("price", m.price.is_none()),
        ("size", m.size.is_none()),
        ("side", m.side.is_none()),
        ("time", m.time.is_none()),
    ];
    if let Some((field, _)) = missing.iter().find(|(_, absent)| *absent) {
        return FeedEvent::Invalid(format!("{} without {field}", m.kind));
    }
    let text = |field: Option<Text<'a>>| field.map(|t| t.0).unwrap_or_default();
    let side = m.side.as_ref().map(|t| t.0.as_ref());
    let Some(taker_side) = side.and_then(taker_side_of) else {
        return FeedEvent::Invalid(format!("unknown side {side:?}; expected buy or sell"));
    };
    let symbol = text(m.product_id);
    let record = TradeRecord {
        coin_name: coins
            .get(symbol.as_ref())
            .map(|c| Cow::Borrowed(c.as_str())),
        symbol,
        trade_id: m.trade_id.unwrap_or_default(),
        sequence: m.sequence,
        trade_time: text(m.time),
        price: text(m.price),
        size: text(m.size),
        side: Cow::Borrowed(taker_side),
        ingest_time: Cow::Borrowed(ingest_time),
    };
    if let Err(why) = record.check() {
        return FeedEvent::Invalid(format!(
            "{} {} {}: {why}",
            m.kind, record.symbol, record.trade_id
        ));
    }
    FeedEvent::Trade {
        record,
        last_match: m.kind == "last_match",
    }
}

/// The coin map of the feed parsers' unit tests (here and in [`super::advanced`]).
#[cfg(test)]
pub(super) fn test_coins() -> BTreeMap<String, String> {
    [
        ("BTC-USD".to_owned(), "Bitcoin".to_owned()),
        ("ETH-USD".to_owned(), "Ethereum".to_owned()),
    ]
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_a_documented_match_inverting_the_makers_side() {
        let line = br#"{"type":"match","trade_id":10,"sequence":50,"maker_order_id":"ac928c66-ca53-498f-9c13-a110027a60e8","taker_order_id":"132fb6ae-456b-4654-b4e0-d681ac05cea1","time":"2014-11-07T08:19:27.028459Z","product_id":"BTC-USD","size":"5.23512","price":"400.23","side":"sell"}"#;
        let coins = test_coins();
        let FeedEvent::Trade { record, last_match } =
            parse(line, &coins, "2014-11-07T08:19:28.000000Z")
        else {
            panic!("not a trade");
        };
        assert!(!last_match);
        assert_eq!(record.side, "buy", "maker sold, so the taker bought");
        assert_eq!(record.coin_name.as_deref(), Some("Bitcoin"));
        assert_eq!((record.trade_id, record.sequence), (10, Some(50)));
        assert_eq!(
            (record.price.as_ref(), record.size.as_ref()),
            ("400.23", "5.23512")
        );
    }

    #[test]
    fn a_trades_texts_are_borrowed_from_the_frame_unless_they_hold_escapes() {
        let coins = test_coins();
        let line = br#"{"type":"match","trade_id":10,"time":"2014-11-07T08:19:27.028459Z","product_id":"BTC\u002dUSD","size":"5.23512","price":"400.23","side":"sell"}"#;
        let FeedEvent::Trade { record, .. } = parse(line, &coins, "") else {
            panic!("not a trade");
        };
        for (field, text) in [
            ("trade_time", &record.trade_time),
            ("size", &record.size),
            ("price", &record.price),
        ] {
            assert!(matches!(text, Cow::Borrowed(_)), "{field} was copied");
        }
        // An escape is decoded into a copy: the same product as written plainly.
        assert!(matches!(record.symbol, Cow::Owned(_)));
        assert_eq!(record.symbol, "BTC-USD");
        assert_eq!(record.coin_name.as_deref(), Some("Bitcoin"));
    }

    #[test]
    fn subscribes_to_matches_and_heartbeat_of_every_product() {
        let message: serde_json::Value =
            serde_json::from_str(&subscribe_message(&["BTC-USD".into(), "ETH-USD".into()]))
                .unwrap();
        assert_eq!(
            message,
            serde_json::json!({"type":"subscribe","product_ids":["BTC-USD","ETH-USD"],"channels":["matches","heartbeat"]})
        );
    }

    #[test]
    fn classifies_other_messages() {
        let c = test_coins();
        assert_eq!(
            parse(br#"{"type":"heartbeat","sequence":90,"last_trade_id":20,"product_id":"BTC-USD","time":"2014-11-07T08:19:28.464459Z"}"#, &c, ""),
            FeedEvent::Heartbeat { product_id: "BTC-USD".into(), last_trade_id: 20 }
        );
        assert_eq!(
            parse(br#"{"type":"subscriptions","channels":[]}"#, &c, ""),
            FeedEvent::Subscriptions
        );
        assert_eq!(
            parse(br#"{"type":"error","message":"Failed to subscribe","reason":"FOO-USD is not a valid product"}"#, &c, ""),
            FeedEvent::Error { message: "Failed to subscribe".into(), reason: Some("FOO-USD is not a valid product".into()) }
        );
        assert_eq!(
            parse(br#"{"type":"ticker","price":"1"}"#, &c, ""),
            FeedEvent::Other("ticker".into())
        );
    }

    #[test]
    fn explains_unusable_messages() {
        let c = test_coins();
        let invalid = |line: &[u8]| match parse(line, &c, "") {
            FeedEvent::Invalid(reason) => reason,
            other => panic!("expected invalid, got {other:?}"),
        };
        assert!(invalid(br#"{"type":"match","trade_id":1"#).starts_with("invalid JSON"));
        assert!(
            invalid(br#"{"type":"match","trade_id":"ten","product_id":"BTC-USD"}"#)
                .starts_with("match message with wrong field types")
        );
        assert_eq!(invalid(br#"{"type":"match","trade_id":1,"product_id":"BTC-USD","price":"1","size":"1","side":"sell"}"#), "match without time");
        assert!(invalid(br#"{"type":"match","trade_id":1,"product_id":"BTC-USD","price":"1","size":"1","side":"up","time":"t"}"#).starts_with("unknown side"));
        assert_eq!(invalid(br#"{"no":"type"}"#), "message without a type");
    }

    #[test]
    fn rejects_trades_whose_values_cannot_be_real() {
        let c = test_coins();
        let reason = |price: &str, size: &str| {
            let line = format!(
                r#"{{"type":"match","trade_id":12,"product_id":"BTC-USD","price":"{price}","size":"{size}","side":"sell","time":"2014-11-07T08:19:27.028459Z"}}"#
            );
            match parse(line.as_bytes(), &c, "") {
                FeedEvent::Invalid(reason) => reason,
                other => panic!("{price} {size}: expected invalid, got {other:?}"),
            }
        };
        assert_eq!(
            reason("0", "1"),
            "match BTC-USD 12: price \"0\" is not greater than zero"
        );
        assert_eq!(
            reason("400.23", "-0.5"),
            "match BTC-USD 12: size \"-0.5\" is not greater than zero"
        );
        assert!(reason("NaN", "1").contains("price \"NaN\" is not a decimal"));
        assert!(reason("1", "Infinity").contains("size \"Infinity\" is not a decimal"));
        assert!(reason("1e", "1").contains("not a decimal"));
        // A price given as a JSON number is not the documented decimal string.
        assert!(matches!(
            parse(br#"{"type":"match","trade_id":12,"product_id":"BTC-USD","price":400.23,"size":"1","side":"sell","time":"2014-11-07T08:19:27.028459Z"}"#, &c, ""),
            FeedEvent::Invalid(r) if r.starts_with("match message with wrong field types")
        ));
        assert!(matches!(
            parse(br#"{"type":"match","trade_id":-3,"product_id":"BTC-USD","price":"1","size":"1","side":"sell","time":"2014-11-07T08:19:27.028459Z"}"#, &c, ""),
            FeedEvent::Invalid(r) if r.ends_with("trade_id -3 is negative")
        ));
    }
}
