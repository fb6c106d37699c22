//! Parsing of Coinbase Advanced Trade WebSocket frames (`wss://advanced-trade-ws.coinbase.com`,
//! channels `market_trades` and `heartbeats`; docs:
//! <https://docs.cdp.coinbase.com/advanced-trade/docs/ws-channels>) into the same [`FeedEvent`]s
//! as the Exchange feed, so one client, tracker and bus record serve both.
//!
//! Differences from the Exchange feed that shape this code:
//! - One frame is an envelope (`channel`, `timestamp`, `sequence_num`, `events`) that may carry
//!   many trades, of several products; a `snapshot` event of recent trades comes first after
//!   subscribing, then `update`s batched every 250 ms. Snapshot trades are historical, like the
//!   Exchange's `last_match` (replays are dropped by trade id downstream).
//! - `trade_id` is a **string** of digits (a JSON number is accepted too); the bus record keeps it
//!   as an integer. `sequence_num` counts frames per connection, not per product, so the record's
//!   `sequence` is empty.
//! - `side` is `BUY`/`SELL`, the **maker's** side as on the Exchange feed; it is inverted into the
//!   taker's side the same way ([`feed::taker_side_of`]).
//! - Trades inside a frame are not documented to be in id order; they are handed on sorted by
//!   trade id so each product's trades stay in order.
//! - `heartbeats` frames carry no trade ids: they only keep the connection alive (and prove it is).
//! - Errors come as a bare `{"type":"error","message":...}` without the envelope.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use super::feed::{self, FeedEvent};
use crate::common::trade::TradeRecord;

/// The channel whose frames prove the feed is alive; they are parsed as
/// `FeedEvent::Other(HEARTBEATS)`.
pub const HEARTBEATS: &str = "heartbeats";

/// The `subscribe` requests (one channel per request) for `market_trades` of `products` and for
/// `heartbeats`, which keeps quiet products' connections from being closed after 60–90 s.
pub fn subscribe_messages(products: &[String]) -> Vec<String> {
    vec![
        serde_json::json!({
            "type": "subscribe",
            "product_ids": products,
            "channel": "market_trades",
        })
        .to_string(),
        serde_json::json!({"type": "subscribe", "channel": HEARTBEATS}).to_string(),
    ]
}

#[derive(Deserialize)]
struct Envelope {
    channel: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    message: Option<String>,
    reason: Option<String>,
    #[serde(default)]
    events: Vec<Value>,
}

#[derive(Deserialize)]
struct TradesEvent {
    #[serde(rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    trades: Vec<Value>,
}

#[derive(Deserialize)]
struct Trade {
    trade_id: Option<Value>,
    product_id: Option<String>,
    price: Option<String>,
    size: Option<String>,
    side: Option<String>,
    time: Option<String>,
}

/// Parses one frame into the events it holds, in the order to process them.
pub fn parse(
    frame: &[u8],
    coins: &BTreeMap<String, String>,
    ingest_time: &str,
) -> Vec<FeedEvent<'static>> {
    let envelope: Envelope = match serde_json::from_slice(frame) {
        Ok(e) => e,
        Err(e) => {
            let reason = match serde_json::from_slice::<Value>(frame) {
                Err(_) => format!("invalid JSON: {e}"),
                Ok(_) => format!("frame with wrong field types: {e}"),
            };
            return vec![FeedEvent::Invalid(reason)];
        }
    };
    if envelope.kind.as_deref() == Some("error") {
        return vec![FeedEvent::Error {
            message: envelope.message.unwrap_or_default(),
            reason: envelope.reason,
        }];
    }
    match envelope.channel.as_deref() {
        Some("market_trades") => trades(envelope.events, coins, ingest_time),
        Some("subscriptions") => vec![FeedEvent::Subscriptions],
        // Liveness only; see the module docs.
        Some(HEARTBEATS) => vec![FeedEvent::Other(HEARTBEATS.into())],
        Some(other) => vec![FeedEvent::Other(other.to_owned())],
        None => vec![FeedEvent::Invalid("frame without a channel".into())],
    }
}

fn trades(
    events: Vec<Value>,
    coins: &BTreeMap<String, String>,
    ingest_time: &str,
) -> Vec<FeedEvent<'static>> {
    let mut out = Vec::new();
    let mut trades = Vec::new();
    for event in events {
        let event: TradesEvent = match serde_json::from_value(event) {
            Ok(e) => e,
            Err(e) => {
                out.push(FeedEvent::Invalid(format!(
                    "market_trades event with wrong field types: {e}"
                )));
                continue;
            }
        };
        let historical = event.kind.as_deref() == Some("snapshot");
        for trade in event.trades {
            match normalise(trade, coins, ingest_time) {
                Ok(record) => trades.push((record, historical)),
                Err(reason) => out.push(FeedEvent::Invalid(reason)),
            }
        }
    }
    trades.sort_by_key(|(record, _)| record.trade_id);
    out.extend(
        trades
            .into_iter()
            .map(|(record, last_match)| FeedEvent::Trade { record, last_match }),
    );
    out
}

fn normalise(
    trade: Value,
    coins: &BTreeMap<String, String>,
    ingest_time: &str,
) -> Result<TradeRecord<'static>, String> {
    let t: Trade = serde_json::from_value(trade)
        .map_err(|e| format!("market_trades trade with wrong field types: {e}"))?;
    let trade_id = match &t.trade_id {
        Some(Value::String(s)) => s
            .parse::<i64>()
            .map_err(|_| format!("market_trades trade_id {s:?} is not an integer"))?,
        Some(Value::Number(n)) => n
            .as_i64()
            .ok_or_else(|| format!("market_trades trade_id {n} is not an integer"))?,
        Some(other) => return Err(format!("market_trades trade_id {other} is not a string")),
        None => return Err("market_trades trade without trade_id".into()),
    };
    let (Some(product), Some(price), Some(size), Some(side), Some(time)) =
        (t.product_id, t.price, t.size, t.side, t.time)
    else {
        return Err("market_trades trade without product_id, price, size, side or time".into());
    };
    let taker = feed::taker_side_of(&side)
        .ok_or_else(|| format!("unknown side {side:?}; expected BUY or SELL"))?;
    let record = TradeRecord {
        coin_name: coins.get(&product).cloned().map(Cow::Owned),
        symbol: product.into(),
        trade_id,
        sequence: None,
        trade_time: time.into(),
        price: price.into(),
        size: size.into(),
        side: Cow::Borrowed(taker),
        ingest_time: ingest_time.to_owned().into(),
    };
    record
        .check()
        .map_err(|why| format!("market_trades {} {}: {why}", record.symbol, record.trade_id))?;
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_the_documented_snapshot_inverting_the_makers_side() {
        let frame = br#"{"channel":"market_trades","client_id":"","timestamp":"2023-02-09T20:19:35.39625135Z","sequence_num":0,"events":[{"type":"snapshot","trades":[{"trade_id":"000000000","product_id":"ETH-USD","price":"1260.01","size":"0.3","side":"BUY","time":"2019-08-14T20:42:27.265Z"}]}]}"#;
        let events = parse(frame, &feed::test_coins(), "now");
        let [FeedEvent::Trade { record, last_match }] = events.as_slice() else {
            panic!("{events:?}");
        };
        assert!(*last_match, "a snapshot is historical");
        assert_eq!(record.trade_id, 0);
        assert_eq!(record.side, "sell", "the maker bought, so the taker sold");
        assert_eq!(record.coin_name.as_deref(), Some("Ethereum"));
        assert_eq!(record.sequence, None);
        assert_eq!(
            (record.price.as_ref(), record.size.as_ref()),
            ("1260.01", "0.3")
        );
    }

    #[test]
    fn sorts_the_trades_of_a_frame_by_id_and_keeps_bad_ones_apart() {
        let frame = br#"{"channel":"market_trades","timestamp":"t","sequence_num":3,"events":[{"type":"update","trades":[
            {"trade_id":"12","product_id":"ETH-USD","price":"1","size":"1","side":"SELL","time":"2023-02-09T20:19:35Z"},
            {"trade_id":"11","product_id":"BTC-USD","price":"1","size":"1","side":"SELL","time":"2023-02-09T20:19:35Z"},
            {"trade_id":"x","product_id":"ETH-USD","price":"1","size":"1","side":"SELL","time":"2023-02-09T20:19:35Z"},
            {"trade_id":"10","product_id":"ETH-USD","price":"1","size":"1","side":"SELL","time":"2023-02-09T20:19:35Z"}]}]}"#;
        let events = parse(frame, &feed::test_coins(), "now");
        let ids: Vec<i64> = events
            .iter()
            .filter_map(|e| match e {
                FeedEvent::Trade { record, last_match } => {
                    assert!(!last_match);
                    assert_eq!(record.side, "buy");
                    Some(record.trade_id)
                }
                _ => None,
            })
            .collect();
        assert_eq!(ids, [10, 11, 12]);
        assert!(
            matches!(&events[0], FeedEvent::Invalid(r) if r.contains("\"x\" is not an integer"))
        );
    }

    #[test]
    fn classifies_heartbeats_acks_errors_and_garbage() {
        let c = feed::test_coins();
        assert_eq!(
            parse(br#"{"channel":"heartbeats","client_id":"","timestamp":"2023-06-23T20:31:56.121961769Z","sequence_num":1,"events":[{"current_time":"2023-06-23 20:31:56.121961769 +0000 UTC m=+91717.525857105","heartbeat_counter":3049}]}"#, &c, ""),
            [FeedEvent::Other("heartbeats".into())]
        );
        assert_eq!(
            parse(br#"{"channel":"subscriptions","client_id":"","timestamp":"t","sequence_num":2,"events":[{"subscriptions":{"heartbeats":["heartbeats"],"market_trades":["BTC-USD"]}}]}"#, &c, ""),
            [FeedEvent::Subscriptions]
        );
        assert_eq!(
            parse(
                br#"{"type":"error","message":"authentication failure"}"#,
                &c,
                ""
            ),
            [FeedEvent::Error {
                message: "authentication failure".into(),
                reason: None
            }]
        );
        assert!(matches!(
            parse(b"{\"channel\":", &c, "").as_slice(),
            [FeedEvent::Invalid(r)] if r.starts_with("invalid JSON")
        ));
        assert!(matches!(
            parse(br#"{"channel":"market_trades","events":[{"type":"update","trades":{"a":1}}]}"#, &c, "").as_slice(),
            [FeedEvent::Invalid(r)] if r.contains("wrong field types")
        ));
        assert!(matches!(
            parse(br#"{"channel":"market_trades","events":[{"type":"update","trades":[{"trade_id":{"n":1}}]}]}"#, &c, "").as_slice(),
            [FeedEvent::Invalid(r)] if r.contains("is not a string")
        ));
    }

    #[test]
    fn rejects_trades_without_an_id_or_with_values_that_cannot_be_real() {
        let c = feed::test_coins();
        let frame = |id: &str, price: &str, size: &str| {
            format!(
                r#"{{"channel":"market_trades","events":[{{"type":"update","trades":[{{"trade_id":{id},"product_id":"ETH-USD","price":"{price}","size":"{size}","side":"BUY","time":"2019-08-14T20:42:27.265Z"}},{{"trade_id":"8","product_id":"ETH-USD","price":"1260.01","size":"0.3","side":"BUY","time":"2019-08-14T20:42:27.265Z"}}]}}]}}"#
            )
        };
        let reason = |id: &str, price: &str, size: &str| {
            let events = parse(frame(id, price, size).as_bytes(), &c, "");
            // The good trade of the same frame still comes through.
            assert!(
                matches!(events.last(), Some(FeedEvent::Trade { record, .. }) if record.trade_id == 8),
                "{events:?}"
            );
            match &events[0] {
                FeedEvent::Invalid(r) => r.clone(),
                other => panic!("expected invalid, got {other:?}"),
            }
        };
        assert_eq!(
            reason("\"7\"", "0", "0.3"),
            "market_trades ETH-USD 7: price \"0\" is not greater than zero"
        );
        assert_eq!(
            reason("\"7\"", "1260.01", "-0.3"),
            "market_trades ETH-USD 7: size \"-0.3\" is not greater than zero"
        );
        assert!(reason("\"7\"", "NaN", "0.3").contains("price \"NaN\" is not a decimal"));
        assert!(reason("\"7\"", "1", "Infinity").contains("size \"Infinity\" is not a decimal"));
        assert!(reason("\"\"", "1", "1").contains("trade_id \"\" is not an integer"));
        assert!(reason("null", "1", "1").contains("without trade_id"));
    }

    #[test]
    fn subscribes_to_one_channel_per_request() {
        let messages = subscribe_messages(&["BTC-USD".into()]);
        let parsed: Vec<Value> = messages
            .iter()
            .map(|m| serde_json::from_str(m).unwrap())
            .collect();
        assert_eq!(parsed[0]["channel"], "market_trades");
        assert_eq!(parsed[0]["product_ids"][0], "BTC-USD");
        assert_eq!(parsed[1]["channel"], "heartbeats");
    }
}
