//! The one Coinbase WebSocket stand-in: an in-process server that reads each connection's
//! subscribe requests, then plays a script of frames in the feeds' exact formats
//! (`../shared/exchange-formats.md` §1 Exchange `matches`/`heartbeat`, §2 Advanced Trade
//! `market_trades`), and misbehaves on purpose when told: drops the connection, goes silent,
//! answers only pings. Plus builders of those frames.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

/// The frames of the field case heartbeat-zero-false-loss (`testkit/fixtures/`, see its README),
/// one per line: heartbeats with `last_trade_id` 0 around four contiguous trades of two products.
/// Run by the feed source's tests and, through the whole pipeline, by the binary's.
pub const HEARTBEAT_ZERO_FALSE_LOSS_FRAMES: &str =
    include_str!("../fixtures/heartbeat-zero-false-loss/frames.jsonl");

/// The field case replay-restart-duplicate's capture, run 1 (`testkit/fixtures/`, see its
/// README): the subscriptions ack and BTC-USD matches 831102700..702, one frame per line.
pub const RESTART_PART_A: &str = include_str!("../fixtures/replay-restart-duplicate/part_a.jsonl");

/// What that capture grew by before run 2: a reconnect (the ack, `last_match` repeating
/// 831102702), then the new match 831102703.
pub const RESTART_PART_B: &str = include_str!("../fixtures/replay-restart-duplicate/part_b.jsonl");

/// How often [`Step::Heartbeats`], [`Step::KeepAlive`] and [`Step::Pings`] repeat.
pub const TICK: Duration = Duration::from_millis(100);

/// What the server does on one connection, after reading the client's subscribe requests. After
/// the last step it holds the connection open until the client closes it.
#[derive(Debug, Clone)]
pub enum Step {
    /// One text frame.
    Text(String),
    /// One binary frame.
    Binary(Vec<u8>),
    /// Sends these frames every [`TICK`] for the duration (keeps the connection alive).
    Heartbeats(Vec<String>, Duration),
    /// Sends nothing for the duration, holding the connection open.
    Silence(Duration),
    /// Closes the TCP connection without a close frame.
    Drop,
    /// Sends these frames every [`TICK`] until the client goes away.
    KeepAlive(Vec<String>),
    /// Sends only WebSocket pings, every [`TICK`], for the duration (the transport stays up).
    Pings(Duration),
}

/// Picks the steps of a connection from its number (from 0) and its subscribe requests.
type Script = dyn Fn(usize, &[String]) -> Vec<Step> + Send + Sync;

/// A running stand-in; it stops with the test's runtime.
pub struct FeedServer {
    /// `ws://127.0.0.1:<port>`.
    pub url: String,
    /// The subscribe requests of each connection, in connection order.
    pub subscribes: Arc<Mutex<Vec<Vec<String>>>>,
    /// How many connections were accepted.
    pub connections: Arc<AtomicUsize>,
}

impl FeedServer {
    /// Serves `scripts[i]` on the i-th connection (connections after the last script get the
    /// last one again); reads `requests` subscribe messages first on each.
    pub async fn scripted(scripts: Vec<Vec<Step>>, requests: usize) -> Self {
        assert!(!scripts.is_empty(), "at least one connection script");
        Self::answering(requests, move |i, _| {
            scripts[i.min(scripts.len() - 1)].clone()
        })
        .await
    }

    /// Serves what `script(connection number, subscribe requests)` returns; reads `requests`
    /// subscribe messages first on each connection.
    pub async fn answering(
        requests: usize,
        script: impl Fn(usize, &[String]) -> Vec<Step> + Send + Sync + 'static,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let url = format!("ws://{}", listener.local_addr().expect("a local address"));
        let subscribes = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let (log, count) = (subscribes.clone(), connections.clone());
        let script: Arc<Script> = Arc::new(script);
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let i = count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(connection(tcp, i, script.clone(), requests, log.clone()));
            }
        });
        Self {
            url,
            subscribes,
            connections,
        }
    }

    /// A stand-in for the Exchange feed that answers any subscribe naming `refused` the way the
    /// feed answers an unknown product: one `error` frame, then silence; any other subscribe gets
    /// `frames`, then `keep_alive` until the client leaves.
    pub async fn refusing(refused: &str, frames: Vec<String>, keep_alive: Vec<String>) -> Self {
        let refused = refused.to_owned();
        Self::answering(1, move |_, requests| {
            let asked: serde_json::Value =
                serde_json::from_str(requests.first().map_or("{}", String::as_str))
                    .unwrap_or_default();
            let names_refused = asked["product_ids"]
                .as_array()
                .is_some_and(|ids| ids.iter().any(|p| p.as_str() == Some(&refused)));
            if names_refused {
                vec![Step::Text(subscribe_error(&refused))]
            } else {
                let mut steps: Vec<Step> = frames.iter().cloned().map(Step::Text).collect();
                steps.push(Step::KeepAlive(keep_alive.clone()));
                steps
            }
        })
        .await
    }

    /// A copy of the subscribe requests so far, per connection.
    pub fn subscribes(&self) -> Vec<Vec<String>> {
        self.subscribes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// How many connections were accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

async fn connection(
    tcp: TcpStream,
    number: usize,
    script: Arc<Script>,
    requests: usize,
    log: Arc<Mutex<Vec<Vec<String>>>>,
) {
    let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
        return;
    };
    let mut received = Vec::new();
    for _ in 0..requests {
        // The feed's rule: subscribe within 5 s or be disconnected.
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => received.push(t.to_string()),
            _ => return,
        }
    }
    let steps = script(number, &received);
    log.lock().unwrap_or_else(|e| e.into_inner()).push(received);
    for step in steps {
        let sent = match step {
            Step::Text(t) => ws.send(Message::text(t)).await.is_ok(),
            Step::Binary(b) => ws.send(Message::binary(b)).await.is_ok(),
            Step::Heartbeats(frames, duration) => {
                let until = Instant::now() + duration;
                let mut ok = true;
                while ok && Instant::now() < until {
                    for f in &frames {
                        ok &= ws.send(Message::text(f.clone())).await.is_ok();
                    }
                    tokio::time::sleep(TICK).await;
                }
                ok
            }
            Step::Silence(d) => {
                tokio::time::sleep(d).await;
                true
            }
            Step::Drop => return,
            Step::Pings(duration) => {
                let until = Instant::now() + duration;
                let mut ok = true;
                while ok && Instant::now() < until {
                    ok = ws
                        .send(Message::Ping(b"alive?".to_vec().into()))
                        .await
                        .is_ok();
                    // Read the pongs, as a server does.
                    while let Ok(Some(Ok(_))) = tokio::time::timeout(TICK, ws.next()).await {}
                }
                ok
            }
            Step::KeepAlive(frames) => loop {
                for f in &frames {
                    if ws.send(Message::text(f.clone())).await.is_err() {
                        return;
                    }
                }
                tokio::time::sleep(TICK).await;
            },
        };
        if !sent {
            return;
        }
    }
    // Hold the connection until the client closes it.
    while let Some(Ok(_)) = ws.next().await {}
}

// ---- the frames -----------------------------------------------------------------------------

/// Trade `id`'s time: RFC 3339 UTC with 6 fractional digits, as the Exchange feed sends it.
pub fn trade_time(id: i64) -> String {
    let nanos = u32::try_from(id.rem_euclid(1000)).unwrap_or(0) * 1000;
    chrono::DateTime::from_timestamp(1_795_000_000 + id, nanos)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// Trade `id`'s price as decimal text, derived from the id so a test can check it.
pub fn price(id: i64) -> String {
    format!("{}.{:02}", 90_000 + id % 500, id % 100)
}

/// An Exchange `match` (or `last_match`, per `kind`) of trade `id` at [`price`]`(id)`, in the
/// live key order; the maker sold for even ids.
pub fn exchange_match(kind: &str, product: &str, id: i64) -> String {
    exchange_match_at(kind, product, id, &price(id))
}

/// [`exchange_match`] at a given `price` (decimal text, or anything hostile).
pub fn exchange_match_at(kind: &str, product: &str, id: i64, price: &str) -> String {
    format!(
        r#"{{"type":"{kind}","trade_id":{id},"maker_order_id":"ac928c66-ca53-498f-9c13-a110027a60e8","taker_order_id":"132fb6ae-456b-4654-b4e0-d681ac05cea1","side":"{}","size":"0.{:04}","price":"{price}","product_id":"{product}","sequence":{},"time":"{}"}}"#,
        if id % 2 == 0 { "sell" } else { "buy" },
        id % 10_000 + 1,
        id * 7 + 3,
        trade_time(id)
    )
}

/// An Exchange `heartbeat` of `product` naming `last_trade_id`.
pub fn heartbeat(product: &str, last_trade_id: i64) -> String {
    format!(
        r#"{{"type":"heartbeat","sequence":{},"last_trade_id":{last_trade_id},"product_id":"{product}","time":"2026-11-20T00:00:00.000000Z"}}"#,
        last_trade_id * 7 + 5
    )
}

/// The Exchange `subscriptions` ack for `matches` and `heartbeat` of `products`.
pub fn exchange_ack(products: &[&str]) -> String {
    let ids = serde_json::to_string(products).unwrap_or_default();
    format!(
        r#"{{"type":"subscriptions","channels":[{{"name":"matches","product_ids":{ids}}},{{"name":"heartbeat","product_ids":{ids}}}]}}"#
    )
}

/// The Exchange `error` frame that refuses a subscription to `product`.
pub fn subscribe_error(product: &str) -> String {
    format!(
        r#"{{"type":"error","message":"Failed to subscribe","reason":"{product} is not a valid product"}}"#
    )
}

/// An Advanced Trade `market_trades` frame (`kind` = `snapshot` | `update`) with connection
/// sequence `seq`, holding `trades` as `(product, id)` at [`price`]`(id)`.
pub fn advanced_trades(kind: &str, seq: u64, trades: &[(&str, i64)]) -> String {
    let trades: Vec<String> = trades
        .iter()
        .map(|(product, id)| {
            format!(
                r#"{{"trade_id":"{id}","product_id":"{product}","price":"{}","size":"0.5","side":"{}","time":"{}"}}"#,
                price(*id),
                if id % 2 == 0 { "SELL" } else { "BUY" },
                trade_time(*id)
            )
        })
        .collect();
    format!(
        r#"{{"channel":"market_trades","client_id":"","timestamp":"2026-11-20T00:00:00.123456789Z","sequence_num":{seq},"events":[{{"type":"{kind}","trades":[{}]}}]}}"#,
        trades.join(",")
    )
}

/// An Advanced Trade `heartbeats` frame with `heartbeat_counter` = `counter`.
pub fn advanced_heartbeat(counter: u64) -> String {
    format!(
        r#"{{"channel":"heartbeats","client_id":"","timestamp":"2026-11-20T00:00:00.123456789Z","sequence_num":{counter},"events":[{{"current_time":"2026-11-20 00:00:00.121961769 +0000 UTC m=+91717.525857105","heartbeat_counter":{counter}}}]}}"#
    )
}

/// The Advanced Trade `subscriptions` ack for BTC-USD and ETH-USD.
pub fn advanced_ack() -> String {
    r#"{"channel":"subscriptions","client_id":"","timestamp":"2026-11-20T00:00:00.1Z","sequence_num":2,"events":[{"subscriptions":{"heartbeats":["heartbeats"],"market_trades":["BTC-USD","ETH-USD"]}}]}"#.into()
}

/// Matches of BTC-USD ids `btc` and ETH-USD ids `eth`, alternating, with a BTC-USD heartbeat
/// (last trade id 0: "unknown") after every 25 pairs.
pub fn interleaved(
    btc: std::ops::RangeInclusive<i64>,
    eth: std::ops::RangeInclusive<i64>,
) -> Vec<Step> {
    let mut steps = Vec::new();
    let (mut b, mut e) = (btc.peekable(), eth.peekable());
    let mut n = 0;
    while b.peek().is_some() || e.peek().is_some() {
        if let Some(id) = b.next() {
            steps.push(Step::Text(exchange_match("match", "BTC-USD", id)));
        }
        if let Some(id) = e.next() {
            steps.push(Step::Text(exchange_match("match", "ETH-USD", id)));
        }
        n += 1;
        if n % 25 == 0 {
            steps.push(Step::Text(heartbeat("BTC-USD", 0)));
        }
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_script_is_played_after_the_subscribe_and_connections_are_counted() {
        let server = FeedServer::scripted(
            vec![vec![
                Step::Text(exchange_ack(&["BTC-USD"])),
                Step::Text(exchange_match("match", "BTC-USD", 7)),
                Step::Drop,
            ]],
            1,
        )
        .await;
        let (mut ws, _) = tokio_tungstenite::connect_async(&server.url).await.unwrap();
        ws.send(Message::text(r#"{"type":"subscribe"}"#))
            .await
            .unwrap();
        let mut texts = Vec::new();
        while let Some(Ok(Message::Text(t))) = ws.next().await {
            texts.push(t.to_string());
        }
        assert_eq!(texts.len(), 2, "{texts:?}");
        let m: serde_json::Value = serde_json::from_str(&texts[1]).unwrap();
        assert_eq!(m["price"], price(7));
        assert_eq!(m["trade_id"], 7);
        assert_eq!(server.connections(), 1);
        assert_eq!(
            server.subscribes(),
            vec![vec![r#"{"type":"subscribe"}"#.to_owned()]]
        );
    }
}
