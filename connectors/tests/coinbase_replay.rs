//! The Coinbase feed client against an in-process WebSocket server that speaks the feeds' exact
//! formats (`../shared/exchange-formats.md` §1, §2) and misbehaves on purpose: it drops the
//! connection mid-stream and replays an overlap, goes silent, sends hostile frames and skips trade
//! ids. The exactly-once test publishes through the real Kafka (`scripts/services.sh up`) and reads
//! the topic back; a missing broker fails it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use connectors::coinbase::client::{self, FeedTask, ReceivedTrade};
use connectors::coinbase::config::{CoinbaseConfig, FeedKind, Settings};
use connectors::coinbase::gaps::TradeTracker;
use connectors::common::counters::CounterSet;
use connectors::common::trade::TradeRecord;
use engine::{OffsetRange, Poll, PollLimits, Source, SourceOffset, StartRequest};
use testkit::coinbase::{
    FeedServer, Step, advanced_ack, advanced_heartbeat, advanced_trades, exchange_ack,
    exchange_match, heartbeat, interleaved, price, trade_time,
};
use testkit::env::required_data;
use tokio::sync::watch;

mod support;
use support::fresh_topic_producer;

/// A connection's opening: the subscriptions ack for the products, then the `last_match` the
/// exchange sends for each on subscribe, given as `(product, trade id)` in subscription order.
fn subscribed(last_matches: &[(&str, i64)]) -> Vec<Step> {
    let products: Vec<&str> = last_matches.iter().map(|&(product, _)| product).collect();
    let mut steps = vec![Step::Text(exchange_ack(&products))];
    steps.extend(
        last_matches
            .iter()
            .map(|&(product, id)| Step::Text(exchange_match("last_match", product, id))),
    );
    steps
}

/// BTC-USD `match` frames with the trade ids `ids`, in order.
fn btc_matches(ids: std::ops::RangeInclusive<i64>) -> impl Iterator<Item = Step> {
    ids.map(|id| Step::Text(exchange_match("match", "BTC-USD", id)))
}

/// A first BTC-USD connection: the ack, then the trades 1 to `upto`.
fn btc_fresh(upto: i64) -> Vec<Step> {
    let mut steps = vec![Step::Text(exchange_ack(&["BTC-USD"]))];
    steps.extend(btc_matches(1..=upto));
    steps
}

/// A BTC-USD connection that replays `last` as its `last_match`, carries the trades after it up
/// to `upto`, then stays alive on heartbeats.
fn btc_resumed(last: i64, upto: i64) -> Vec<Step> {
    let mut steps = subscribed(&[("BTC-USD", last)]);
    steps.extend(btc_matches(last + 1..=upto));
    steps.push(Step::KeepAlive(vec![heartbeat("BTC-USD", upto)]));
    steps
}

// ---- the client ----------------------------------------------------------------------------

fn settings(url: &str, feed: FeedKind, products: &[&str], idle_ms: u64) -> Settings {
    let mut config = CoinbaseConfig::new(
        feed,
        required_data("coin_map.json"),
        required_data("my_Portfolio.json"),
    );
    config.url = Some(url.to_owned());
    config.product_ids = Some(products.iter().map(|p| (*p).to_owned()).collect());
    config.idle_timeout = Duration::from_millis(idle_ms);
    config.reconnect_backoff_initial = Duration::from_millis(50);
    config.reconnect_backoff_max = Duration::from_millis(500);
    config.validate().unwrap()
}

/// The feed client of one test, on a stand-in server, with its shutdown switch.
struct Client {
    server: FeedServer,
    feed: FeedTask,
    stop: watch::Sender<bool>,
}

impl Client {
    /// Serves `scripts` (reading `requests` subscribe messages per connection) and starts the
    /// client of `kind` for `products` with idle timeout `idle_ms` and a channel of 100 trades.
    async fn start(
        scripts: Vec<Vec<Step>>,
        requests: usize,
        kind: FeedKind,
        products: &[&str],
        idle_ms: u64,
    ) -> Self {
        Self::on(
            FeedServer::scripted(scripts, requests).await,
            kind,
            products,
            idle_ms,
        )
    }

    /// The client of `kind` for `products` on `server`.
    fn on(server: FeedServer, kind: FeedKind, products: &[&str], idle_ms: u64) -> Self {
        let (stop, shutdown) = watch::channel(false);
        let feed = client::spawn(
            settings(&server.url, kind, products, idle_ms),
            TradeTracker::default(),
            100,
            shutdown,
        );
        Self { server, feed, stop }
    }

    /// Asks the client to stop and waits (5 s at most) for it to end without an error.
    async fn stop(self) {
        self.stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), self.feed.task)
            .await
            .expect("the client stops on shutdown")
            .unwrap()
            .unwrap();
    }

    fn counter(&self, name: &str) -> u64 {
        self.feed.counters.get(name)
    }
}

/// Reads trades from the client until `n` arrived (or fails after 30 s).
/// The client replaced its one connection once, for idle timeout, and the server saw two.
fn assert_replaced_once_for_silence(c: &Client) {
    assert_eq!(c.counter("idle_timeouts"), 1);
    assert_eq!(c.counter("reconnects"), 1);
    assert_eq!(c.server.connections(), 2);
}

async fn take(feed: &mut FeedTask, n: usize) -> Vec<TradeRecord<'static>> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while out.len() < n {
        match tokio::time::timeout_at(deadline, feed.trades.recv()).await {
            Ok(Some(ReceivedTrade { record, .. })) => out.push(record),
            Ok(None) => panic!("the client stopped after {} trades", out.len()),
            Err(_) => panic!(
                "only {} of {n} trades within 30 s: {:?}; counters {:?}",
                out.len(),
                out.iter()
                    .map(|t| (&t.symbol, t.trade_id))
                    .collect::<Vec<_>>(),
                feed.counters.snapshot()
            ),
        }
    }
    out
}

/// Asserts nothing more arrives within `quiet`.
async fn assert_no_more(feed: &mut FeedTask, quiet: Duration) {
    if let Ok(Some(extra)) = tokio::time::timeout(quiet, feed.trades.recv()).await {
        panic!("unexpected extra trade {:?}", extra.record);
    }
}

fn ids(trades: &[TradeRecord], product: &str) -> Vec<i64> {
    trades
        .iter()
        .filter(|t| t.symbol == product)
        .map(|t| t.trade_id)
        .collect()
}

// ---- the engine source ---------------------------------------------------------------------

/// The engine's `coinbase` source on `url` for `products`, with `extra` TOML lines, started.
async fn engine_source(
    url: &str,
    products: &[&str],
    extra: &str,
    start: StartRequest,
) -> Box<dyn Source> {
    let config = source_config(&format!(
        "type = \"coinbase\"\nurl = {url:?}\nproduct_ids = {products:?}\ncoin_map = {:?}\n{extra}",
        required_data("coin_map.json").display().to_string(),
    ));
    let mut source = connectors::build_source(&config).unwrap();
    source.start(start).await.unwrap();
    source
}

/// Polls `source` (committing each batch) until it handed out `n` records or 20 s passed;
/// returns the batches.
async fn poll_batches(
    source: &mut dyn Source,
    n: usize,
    limits: PollLimits,
) -> Vec<engine::SourceBatch> {
    let mut batches = Vec::new();
    let mut count = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    while count < n && Instant::now() < deadline {
        if let Poll::Batch(b) = source.poll(limits).await.unwrap() {
            assert!(b.records.len() <= limits.max_records);
            source.commit(&b.end).await.unwrap();
            count += b.records.len();
            batches.push(b);
        }
    }
    batches
}

// ---- tests ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_trade_reaches_kafka_once_in_order_across_a_dropped_connection() {
    let products = ["BTC-USD", "ETH-USD"];
    // 1st connection: last_match, then trades up to 1060 / 5060 and an abrupt drop.
    let mut first = subscribed(&[("BTC-USD", 1000), ("ETH-USD", 5000)]);
    first.extend(interleaved(1001..=1060, 5001..=5060));
    first.push(Step::Drop);
    // 2nd connection: a last_match already published, then an overlap, then new trades, then
    // the server closes with a close frame.
    let mut second = subscribed(&[("BTC-USD", 1060), ("ETH-USD", 5060)]);
    second.extend(interleaved(1040..=1100, 5030..=5100));
    second.push(Step::Heartbeats(
        vec![heartbeat("BTC-USD", 1100), heartbeat("ETH-USD", 5100)],
        Duration::from_millis(300),
    ));
    second.push(Step::Drop);
    // 3rd connection: only replays, then heartbeats until the client leaves.
    let mut third = subscribed(&[("BTC-USD", 1100), ("ETH-USD", 5100)]);
    third.push(Step::KeepAlive(vec![
        heartbeat("BTC-USD", 1100),
        heartbeat("ETH-USD", 5100),
    ]));
    let server = FeedServer::scripted(vec![first, second, third], 1).await;

    let (topic, producer) = fresh_topic_producer("coinbase_replay").await;

    let (stop, shutdown) = watch::channel(false);
    let mut feed = client::spawn(
        settings(&server.url, FeedKind::Exchange, &products, 2_000),
        TradeTracker::default(),
        1_000,
        shutdown,
    );
    let counters = feed.counters.clone();
    let expected = 101 + 101;
    // 2nd connection: 2 last_match + 21 + 31 overlapping trades; 3rd: 2 last_match.
    const DUPLICATES: u64 = 2 + 21 + 31 + 2;
    let stopper = {
        let counters = counters.clone();
        tokio::spawn(async move {
            // Until everything is published and the third connection's replays were read (and
            // dropped).
            let deadline = Instant::now() + Duration::from_secs(60);
            while (counters.get("published") < expected as u64
                || counters.get("duplicates") < DUPLICATES)
                && Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            stop.send(true).unwrap();
        })
    };
    // Published in batches of what has arrived, each acknowledged before the next is read (as
    // the engine's Kafka sink does per micro-batch).
    let mut published = 0u64;
    let mut batch = Vec::new();
    while feed.trades.recv_many(&mut batch, 500).await > 0 {
        let trades = batch.drain(..);
        let sent = producer
            .send_all(trades.map(|t| (t.record.symbol.to_string(), t.record.to_json())))
            .await
            .unwrap();
        counters
            .published
            .fetch_add(sent, std::sync::atomic::Ordering::Relaxed);
        published += sent;
    }
    stopper.await.unwrap();
    feed.task.await.unwrap().unwrap();
    producer.flush().unwrap();
    assert_eq!(
        published,
        expected as u64,
        "counters {:?}",
        counters.snapshot()
    );

    let on_kafka: BTreeMap<String, Vec<TradeRecord>> =
        testkit::kafka::read_topic_by_key(&topic, expected, Duration::from_secs(2)).await;
    let btc: Vec<i64> = on_kafka["BTC-USD"].iter().map(|t| t.trade_id).collect();
    let eth: Vec<i64> = on_kafka["ETH-USD"].iter().map(|t| t.trade_id).collect();
    assert_eq!(
        btc,
        (1000..=1100).collect::<Vec<_>>(),
        "BTC-USD once each, in order"
    );
    assert_eq!(
        eth,
        (5000..=5100).collect::<Vec<_>>(),
        "ETH-USD once each, in order"
    );
    assert_eq!(on_kafka.len(), 2, "no other keys");
    let t = &on_kafka["BTC-USD"][1];
    assert_eq!(
        (
            t.coin_name.as_deref(),
            t.side.as_ref(),
            t.price.to_string(),
            t.sequence
        ),
        (Some("Bitcoin"), "sell", price(1001), Some(1001 * 7 + 3)),
        "normalised: trade 1001's maker bought, so its taker sold"
    );

    let c = counters.snapshot();
    let get = |n: &str| c.iter().find(|(k, _)| *k == n).unwrap().1;
    assert!(get("reconnects") >= 2, "{c:?}");
    assert_eq!(get("duplicates"), DUPLICATES, "{c:?}");
    assert_eq!(
        (get("gaps"), get("lost_trades"), get("errors")),
        (0, 0, 0),
        "{c:?}"
    );
    let subscribes = server.subscribes();
    assert!(subscribes.len() >= 3, "resubscribed on every connection");
    for s in &subscribes {
        let request: serde_json::Value = serde_json::from_str(&s[0]).unwrap();
        assert_eq!(
            request,
            serde_json::json!({"type":"subscribe","product_ids":["BTC-USD","ETH-USD"],"channels":["matches","heartbeat"]})
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_is_replaced_but_heartbeats_keep_one_alive() {
    let products = ["BTC-USD"];
    let mut first = btc_fresh(10);
    // Heartbeats only, for three idle timeouts: the connection stays.
    first.push(Step::Heartbeats(
        vec![heartbeat("BTC-USD", 10)],
        Duration::from_millis(2_400),
    ));
    first.push(Step::Text(exchange_match("match", "BTC-USD", 11)));
    // Then nothing at all, far longer than the idle timeout.
    first.push(Step::Silence(Duration::from_secs(60)));
    let second = btc_resumed(11, 20);
    let mut c = Client::start(vec![first, second], 1, FeedKind::Exchange, &products, 800).await;
    let started = Instant::now();
    let first_part = take(&mut c.feed, 11).await;
    assert!(
        started.elapsed() >= Duration::from_millis(2_400),
        "trade 11 came after the heartbeat-only phase"
    );
    assert_eq!(c.counter("reconnects"), 0, "heartbeats kept it alive");
    let rest = take(&mut c.feed, 9).await;
    let all: Vec<TradeRecord<'static>> = first_part.into_iter().chain(rest).collect();
    assert_eq!(ids(&all, "BTC-USD"), (1..=20).collect::<Vec<_>>());
    assert_no_more(&mut c.feed, Duration::from_millis(500)).await;
    assert_replaced_once_for_silence(&c);
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_frames_and_error_messages_are_counted_not_fatal() {
    let products = ["BTC-USD", "FOO-USD"];
    let script = vec![
        Step::Text(exchange_ack(&products)),
        Step::Text(exchange_match("match", "BTC-USD", 1)),
        Step::Text(r#"{"type":"match","trade_id":2,"#.into()),
        Step::Text(r#"{"type":"match","trade_id":"two","product_id":"BTC-USD","price":"1","size":"1","side":"buy","time":"2026-11-20T00:00:00Z"}"#.into()),
        Step::Text(r#"{"type":"match","trade_id":2,"product_id":"BTC-USD","price":"1","size":"1","side":"buy"}"#.into()),
        Step::Text(r#"{"type":"match","trade_id":2,"product_id":"BTC-USD","price":"1","size":"1","side":"up","time":"2026-11-20T00:00:00Z"}"#.into()),
        Step::Text("[1,2,3]".into()),
        Step::Text(r#"{"type":"ticker","product_id":"BTC-USD","price":"1"}"#.into()),
        Step::Binary(vec![0xff, 0x00, 0x13, 0x37]),
        Step::Text(format!(r#"{{"type":"{}"}}"#, "x".repeat(100_000))),
        Step::Text(exchange_match("match", "FOO-USD", 7)),
        Step::Text(exchange_match("match", "BTC-USD", 2)),
        Step::Text(r#"{"type":"heartbeat","product_id":"BTC-USD"}"#.into()),
        Step::Text(r#"{"type":"error","message":"slow consumer"}"#.into()),
        // Values that cannot be a trade: counted, never handed on.
        Step::Text(exchange_match("match", "BTC-USD", 3).replace(&price(3), "0")),
        Step::Text(exchange_match("match", "BTC-USD", 3).replace(&price(3), "-1.5")),
        Step::Text(exchange_match("match", "BTC-USD", 3).replace(&price(3), "NaN")),
        Step::Text(exchange_match("match", "BTC-USD", 3).replace("\"size\":\"0.0004\"", "\"size\":\"Infinity\"")),
        Step::Text(exchange_match("match", "BTC-USD", 3).replace("\"trade_id\":3,", "")),
        Step::Text(exchange_match("match", "BTC-USD", 3)),
        Step::KeepAlive(vec![heartbeat("BTC-USD", 3)]),
    ];
    let mut c = Client::start(vec![script], 1, FeedKind::Exchange, &products, 2_000).await;
    let trades = take(&mut c.feed, 3).await;
    assert_eq!(ids(&trades, "BTC-USD"), [1, 2, 3]);
    assert_no_more(&mut c.feed, Duration::from_millis(500)).await;
    let n = c.feed.counters.clone();
    // bad JSON, wrong type, missing time, unknown side, no type, binary garbage, heartbeat
    // without last_trade_id; price 0, price -1.5, price NaN, size Infinity, no trade id.
    assert_eq!(n.get("invalid"), 7 + 5, "{:?}", n.snapshot());
    assert_eq!(n.get("exchange_errors"), 1);
    assert_eq!(n.get("errors"), 13);
    assert_eq!(
        n.get("unknown_products"),
        1,
        "FOO-USD is not in the coin map"
    );
    assert_eq!(n.get("reconnects"), 0, "the connection carried on");
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skipped_trade_ids_and_heartbeats_ahead_are_counted_as_lost() {
    let products = ["BTC-USD"];
    let mut script = vec![Step::Text(exchange_ack(&products))];
    for id in [1, 2, 3, 4, 5, 8, 9, 10] {
        script.push(Step::Text(exchange_match("match", "BTC-USD", id)));
    }
    // Sequence jumps between the trades above are normal and not counted. The heartbeat says
    // 11..=13 happened but never came.
    script.push(Step::Text(heartbeat("BTC-USD", 13)));
    script.push(Step::Text(heartbeat("BTC-USD", 13)));
    script.push(Step::Text(exchange_match("match", "BTC-USD", 14)));
    script.push(Step::KeepAlive(vec![heartbeat("BTC-USD", 14)]));
    let mut c = Client::start(vec![script], 1, FeedKind::Exchange, &products, 2_000).await;
    let trades = take(&mut c.feed, 9).await;
    assert_eq!(ids(&trades, "BTC-USD"), [1, 2, 3, 4, 5, 8, 9, 10, 14]);
    assert_no_more(&mut c.feed, Duration::from_millis(300)).await;
    assert_eq!(c.counter("gaps"), 2, "{:?}", c.feed.counters.snapshot());
    assert_eq!(c.counter("lost_trades"), 2 + 3);
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn advanced_trade_market_trades_become_the_same_records() {
    // Snapshot newest-first, updates mixing products and out of order, a drop, then a snapshot
    // overlapping what was already published.
    let first = vec![
        Step::Text(advanced_trades(
            "snapshot",
            0,
            &[("BTC-USD", 103), ("BTC-USD", 102), ("BTC-USD", 101), ("ETH-USD", 500)],
        )),
        Step::Text(advanced_ack()),
        Step::Text(advanced_heartbeat(1)),
        Step::Text(advanced_trades("update", 3, &[("ETH-USD", 502), ("BTC-USD", 104), ("ETH-USD", 501)])),
        Step::Text(advanced_trades("update", 4, &[("BTC-USD", 106), ("BTC-USD", 105)])),
        Step::Text(r#"{"type":"error","message":"slow consumer"}"#.into()),
        Step::Text(r#"{"channel":"market_trades","events":[{"type":"update","trades":[{"trade_id":"abc","product_id":"BTC-USD","price":"1","size":"1","side":"BUY","time":"2026-11-20T00:00:00Z"}]}]}"#.into()),
        Step::Drop,
    ];
    let second = vec![
        Step::Text(advanced_ack()),
        Step::Text(advanced_trades(
            "snapshot",
            0,
            &[("BTC-USD", 106), ("BTC-USD", 105), ("ETH-USD", 502)],
        )),
        Step::Text(advanced_trades(
            "update",
            2,
            &[("BTC-USD", 107), ("ETH-USD", 503)],
        )),
        Step::KeepAlive(vec![advanced_heartbeat(9)]),
    ];
    let mut c = Client::start(
        vec![first, second],
        2,
        FeedKind::Advanced,
        &["BTC-USD", "ETH-USD"],
        2_000,
    )
    .await;
    let trades = take(&mut c.feed, 11).await;
    assert_eq!(ids(&trades, "BTC-USD"), (101..=107).collect::<Vec<_>>());
    assert_eq!(ids(&trades, "ETH-USD"), (500..=503).collect::<Vec<_>>());
    assert_no_more(&mut c.feed, Duration::from_millis(500)).await;
    let t = trades.iter().find(|t| t.trade_id == 102).unwrap();
    assert_eq!(
        (
            t.side.as_ref(),
            t.sequence,
            t.coin_name.as_deref(),
            t.trade_time.to_string()
        ),
        ("buy", None, Some("Bitcoin"), trade_time(102)),
        "maker SELL -> taker buy; no per-product sequence"
    );
    let n = c.feed.counters.clone();
    assert_eq!(n.get("duplicates"), 3, "{:?}", n.snapshot());
    assert_eq!((n.get("exchange_errors"), n.get("invalid")), (1, 1));
    assert_eq!(n.get("reconnects"), 1);
    let subscribes = c.server.subscribes();
    assert_eq!(subscribes.len(), 2);
    for s in subscribes {
        let channels: Vec<String> = s
            .iter()
            .map(|m| {
                serde_json::from_str::<serde_json::Value>(m).unwrap()["channel"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        assert_eq!(channels, ["market_trades", "heartbeats"]);
    }
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_source_hands_out_trades_with_trade_id_offsets_and_cannot_replay() {
    let products = ["BTC-USD", "ETH-USD"];
    let mut script = subscribed(&[("BTC-USD", 10), ("ETH-USD", 70)]);
    script.extend(interleaved(11..=14, 71..=72));
    script.push(Step::KeepAlive(vec![
        heartbeat("BTC-USD", 14),
        heartbeat("ETH-USD", 72),
    ]));
    let server = FeedServer::scripted(vec![script], 1).await;
    let extra = "idle_timeout_ms = 2000\nconnect_timeout_ms = 1000\n";
    let mut source = engine_source(&server.url, &products, extra, StartRequest::default()).await;
    assert!(source.description().starts_with("coinbase ws://127.0.0.1"));
    let limits = PollLimits {
        max_records: 5,
        max_wait: Duration::from_millis(500),
    };
    let batches = poll_batches(&mut *source, 8, limits).await;
    for b in &batches {
        for r in &b.records {
            let product = source.describe_position(r.position)["product"].clone();
            let product = product.as_str().unwrap();
            assert!(
                b.start.json()["lastTradeId"][product]
                    .as_i64()
                    .is_none_or(|last| last < r.position.offset)
            );
            assert!(b.end.json()["lastTradeId"][product].as_i64().unwrap() >= r.position.offset);
        }
    }
    let records: Vec<(String, engine::RawRecord)> = batches
        .iter()
        .flat_map(|b| b.records.clone())
        .map(|r| {
            let product = source.describe_position(r.position)["product"].clone();
            (product.as_str().unwrap().to_owned(), r)
        })
        .collect();
    let ends: Vec<SourceOffset> = batches.iter().map(|b| b.end.clone()).collect();
    let offsets: Vec<(String, i64)> = records
        .iter()
        .map(|(product, r)| (product.clone(), r.position.offset))
        .collect();
    let of = |p: &str| {
        offsets
            .iter()
            .filter(|(t, _)| t == p)
            .map(|(_, o)| *o)
            .collect::<Vec<_>>()
    };
    assert_eq!(of("BTC-USD"), [10, 11, 12, 13, 14]);
    assert_eq!(of("ETH-USD"), [70, 71, 72]);
    let last = ends.last().unwrap();
    assert_eq!(
        last.json(),
        &serde_json::json!({"lastTradeId": {"BTC-USD": 14, "ETH-USD": 72}})
    );
    let payload: TradeRecord = serde_json::from_slice(&records[0].1.payload).unwrap();
    assert_eq!(payload.trade_id, records[0].1.position.offset);
    let metrics: BTreeMap<_, _> = source.metrics().into_iter().collect();
    assert_eq!(metrics["published"], 8);
    assert_eq!(metrics["reconnects"], 0);
    let err = source
        .fetch_range(&OffsetRange {
            start: SourceOffset::default(),
            end: last.clone(),
        })
        .await
        .unwrap_err();
    assert!(err.to_string().contains("cannot replay"), "{err}");
    source.close().await.unwrap();

    // A restart from the checkpoint's offsets does not hand out the feed's last_match again.
    let committed = last.clone();
    let start = StartRequest {
        committed: Some(committed),
        available_now: true,
    };
    let mut again = engine_source(&server.url, &products, extra, start).await;
    let polled = again.poll(limits).await.unwrap();
    assert!(matches!(polled, Poll::Exhausted), "{polled:?}");
    let metrics: BTreeMap<_, _> = again.metrics().into_iter().collect();
    assert!(metrics["duplicates"] >= 2, "{metrics:?}");
    again.close().await.unwrap();
}

// ---- hostile input: refused products, ping-only connections, values that cannot be real -----

/// heartbeat-zero-false-loss: a heartbeat's `last_trade_id` of 0 (or any id below the first
/// trade seen) says nothing about loss.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_with_last_trade_id_zero_report_no_loss() {
    let mut script: Vec<Step> = testkit::coinbase::HEARTBEAT_ZERO_FALSE_LOSS_FRAMES
        .lines()
        .map(|l| Step::Text(l.to_owned()))
        .collect();
    // Then zero heartbeats for a while, and a stale non-zero one below the first trade.
    script.push(Step::Heartbeats(
        vec![heartbeat("BTC-USD", 0), heartbeat("ETH-USD", 0)],
        Duration::from_millis(300),
    ));
    script.push(Step::Text(heartbeat("BTC-USD", 831_102_000)));
    script.push(Step::KeepAlive(vec![heartbeat("BTC-USD", 0)]));
    let mut c = Client::start(
        vec![script],
        1,
        FeedKind::Exchange,
        &["BTC-USD", "ETH-USD"],
        2_000,
    )
    .await;
    let trades = take(&mut c.feed, 4).await;
    assert_eq!(ids(&trades, "BTC-USD"), [831_102_379, 831_102_380]);
    assert_eq!(ids(&trades, "ETH-USD"), [612_558_206, 612_558_207]);
    assert_no_more(&mut c.feed, Duration::from_millis(800)).await;
    let n = c.feed.counters.clone();
    assert_eq!(
        (n.get("trades"), n.get("gaps"), n.get("lost_trades")),
        (4, 0, 0),
        "{:?}",
        n.snapshot()
    );
    c.stop().await;
}

/// subscribe-error-reconnect-loop: a `Failed to subscribe` naming one product drops that product
/// and the others flow; with nothing left the client stops with a permanent error naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_product_the_exchange_refuses_is_dropped_and_the_others_flow() {
    let mut frames = vec![exchange_ack(&["BTC-USD", "ETH-USD"])];
    frames.extend((1..=5).map(|id| exchange_match("match", "BTC-USD", id)));
    frames.extend((101..=105).map(|id| exchange_match("match", "ETH-USD", id)));
    let server = FeedServer::refusing(
        "DOT-USD",
        frames,
        vec![heartbeat("BTC-USD", 5), heartbeat("ETH-USD", 105)],
    )
    .await;
    let mut c = Client::on(
        server,
        FeedKind::Exchange,
        &["BTC-USD", "ETH-USD", "DOT-USD"],
        2_000,
    );
    let started = Instant::now();
    let trades = take(&mut c.feed, 10).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "resubscribed at once"
    );
    assert_eq!(ids(&trades, "BTC-USD"), [1, 2, 3, 4, 5]);
    assert_eq!(ids(&trades, "ETH-USD"), [101, 102, 103, 104, 105]);
    assert_no_more(&mut c.feed, Duration::from_millis(500)).await;
    let subscribes: Vec<serde_json::Value> = c
        .server
        .subscribes()
        .iter()
        .map(|s| serde_json::from_str(&s[0]).unwrap())
        .collect();
    assert_eq!(subscribes.len(), 2, "{subscribes:?}");
    assert_eq!(
        subscribes[0]["product_ids"],
        serde_json::json!(["BTC-USD", "ETH-USD", "DOT-USD"])
    );
    assert_eq!(
        subscribes[1]["product_ids"],
        serde_json::json!(["BTC-USD", "ETH-USD"]),
        "subscribed again without the refused product"
    );
    let n = c.feed.counters.clone();
    assert_eq!(
        (
            n.get("exchange_errors"),
            n.get("idle_timeouts"),
            n.get("reconnects")
        ),
        (1, 0, 1),
        "{:?}",
        n.snapshot()
    );
    let server = c.server.url.clone();
    c.stop().await;

    // Only the refused product: the client stops by itself, with the product and the reason.
    let (_stop, shutdown) = watch::channel(false);
    let mut feed = client::spawn(
        settings(&server, FeedKind::Exchange, &["DOT-USD"], 2_000),
        TradeTracker::default(),
        100,
        shutdown,
    );
    let err = tokio::time::timeout(Duration::from_secs(5), &mut feed.task)
        .await
        .expect("the client stops instead of reconnecting forever")
        .unwrap()
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("DOT-USD") && text.contains("DOT-USD is not a valid product"),
        "{text}"
    );
    assert!(!err.is_transient(), "{err:?}");
    assert!(
        feed.trades.recv().await.is_none(),
        "the trades channel closed"
    );
    assert_eq!(feed.counters.get("reconnects"), 0);
}

/// The engine source ends with the client's permanent error, so `coinstream run` exits non-zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_source_fails_permanently_when_every_product_is_refused() {
    let server = FeedServer::refusing("DOT-USD", vec![], vec![]).await;
    let mut source = engine_source(
        &server.url,
        &["DOT-USD"],
        "idle_timeout_ms = 2000\n",
        StartRequest::default(),
    )
    .await;
    let limits = PollLimits {
        max_records: 10,
        max_wait: Duration::from_millis(200),
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let err = loop {
        match source.poll(limits).await {
            Ok(Poll::Idle) if Instant::now() < deadline => continue,
            Ok(other) => panic!("expected the refusal, got {other:?}"),
            Err(e) => break e,
        }
    };
    let text = err.to_string();
    assert!(text.contains("DOT-USD is not a valid product"), "{text}");
    assert!(!err.is_transient(), "{err:?}");
    source.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authentication_failure_stops_the_advanced_trade_client() {
    let script = vec![
        Step::Text(r#"{"type":"error","message":"authentication failure"}"#.into()),
        Step::KeepAlive(vec![advanced_heartbeat(1)]),
    ];
    let c = Client::start(vec![script], 2, FeedKind::Advanced, &["BTC-USD"], 2_000).await;
    let err = tokio::time::timeout(Duration::from_secs(5), c.feed.task)
        .await
        .expect("an authentication failure is not retried")
        .unwrap()
        .unwrap_err();
    assert!(err.to_string().contains("authentication failure"), "{err}");
    assert!(!err.is_transient());
    assert_eq!(c.server.connections(), 1);
}

/// Liveness comes from data: a connection that answers pings but carries no trade or heartbeat
/// for the idle timeout is replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_only_answers_pings_is_replaced() {
    let products = ["BTC-USD"];
    let mut first = btc_fresh(3);
    // Pings (and an unused message type) only, for far longer than the idle timeout.
    first.push(Step::Text(
        r#"{"type":"ticker","product_id":"BTC-USD","price":"1"}"#.into(),
    ));
    first.push(Step::Pings(Duration::from_secs(30)));
    let second = btc_resumed(3, 6);
    let mut c = Client::start(vec![first, second], 1, FeedKind::Exchange, &products, 800).await;
    let started = Instant::now();
    let trades = take(&mut c.feed, 6).await;
    assert_eq!(ids(&trades, "BTC-USD"), [1, 2, 3, 4, 5, 6]);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_secs(10),
        "replaced after the idle timeout, not kept by the pings: {took:?}"
    );
    assert_replaced_once_for_silence(&c);
    c.stop().await;
}

/// A run of the client whose every frame was unusable (here: Advanced Trade frames read as the
/// Exchange feed) ends in a permanent error with the first reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_that_could_use_no_frame_fails() {
    let script = vec![Step::KeepAlive(vec![
        advanced_trades("update", 1, &[("BTC-USD", 7)]),
        advanced_heartbeat(2),
    ])];
    let mut c = Client::start(vec![script], 1, FeedKind::Exchange, &["BTC-USD"], 5_000).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.counter("invalid") < 20 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c.stop.send(true).unwrap();
    assert!(c.feed.trades.recv().await.is_none());
    let err = c.feed.task.await.unwrap().unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("frames received could be used") && text.contains("message without a type"),
        "{text}"
    );
    assert!(!err.is_transient());
}

/// Trades whose values cannot be real reach the engine as rejected records (dead letters) with
/// their reason, from the live source and from a capture alike; the good ones are unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trades_that_cannot_be_real_become_dead_letters_with_their_reason() {
    let good = |id| exchange_match("match", "BTC-USD", id);
    let bad = [
        good(3).replace(&price(3), "0"),
        good(3).replace(&price(3), "-90000.03"),
        good(3).replace(&price(3), "NaN"),
        good(3).replace("\"size\":\"0.0004\"", "\"size\":\"Infinity\""),
        good(3).replace("\"size\":\"0.0004\"", "\"size\":\"0\""),
        good(3).replace("\"trade_id\":3,", ""),
    ];
    let reasons = [
        "match BTC-USD 3: price \"0\" is not greater than zero",
        "match BTC-USD 3: price \"-90000.03\" is not greater than zero",
        "match BTC-USD 3: price \"NaN\" is not a decimal: NaN and infinities are not finite decimals",
        "match BTC-USD 3: size \"Infinity\" is not a decimal: NaN and infinities are not finite decimals",
        "match BTC-USD 3: size \"0\" is not greater than zero",
        "match without trade_id",
    ];
    let mut frames = vec![exchange_ack(&["BTC-USD"]), good(1), good(2)];
    frames.extend(bad.iter().cloned());
    frames.push(good(3));

    // The live source.
    let mut script: Vec<Step> = frames.iter().cloned().map(Step::Text).collect();
    script.push(Step::KeepAlive(vec![heartbeat("BTC-USD", 3)]));
    let server = FeedServer::scripted(vec![script], 1).await;
    let mut source = engine_source(&server.url, &["BTC-USD"], "", StartRequest::default()).await;
    let limits = PollLimits {
        max_records: 100,
        max_wait: Duration::from_millis(300),
    };
    let records: Vec<engine::RawRecord> = poll_batches(&mut *source, 9, limits)
        .await
        .into_iter()
        .flat_map(|b| b.records)
        .collect();
    let trades: Vec<i64> = records
        .iter()
        .filter(|r| r.rejected.is_none())
        .map(|r| r.position.offset)
        .collect();
    assert_eq!(trades, [1, 2, 3]);
    let rejected: Vec<(&str, String)> = records
        .iter()
        .filter_map(|r| {
            Some((
                r.rejected.as_deref()?,
                String::from_utf8(r.payload.clone()).unwrap(),
            ))
        })
        .collect();
    assert_eq!(
        rejected.iter().map(|(r, _)| *r).collect::<Vec<_>>(),
        reasons
    );
    for ((_, payload), frame) in rejected.iter().zip(&bad) {
        assert_eq!(payload, frame, "the frame as received");
    }
    let metrics: BTreeMap<_, _> = source.metrics().into_iter().collect();
    assert_eq!(
        (metrics["invalid"], metrics["published"]),
        (6, 3),
        "{metrics:?}"
    );
    source.close().await.unwrap();

    // A capture of the same frames.
    let dir = tempfile::tempdir().unwrap();
    let capture = dir.path().join("capture.jsonl");
    std::fs::write(&capture, frames.join("\n")).unwrap();
    let config = source_config(&format!(
        "type = \"replay\"\npath = {:?}\ncoin_map = {:?}\n",
        capture.display().to_string(),
        required_data("coin_map.json").display().to_string()
    ));
    let mut replay = connectors::build_source(&config).unwrap();
    replay.start(StartRequest::default()).await.unwrap();
    let Poll::Batch(batch) = replay.poll(limits).await.unwrap() else {
        panic!("a batch");
    };
    let rejected: Vec<&str> = batch
        .records
        .iter()
        .filter_map(|r| r.rejected.as_deref())
        .collect();
    assert_eq!(rejected, reasons);
    assert_eq!(
        batch
            .records
            .iter()
            .filter(|r| r.rejected.is_none())
            .count(),
        3
    );
}

/// A `[source]` section read as the config loader reads it.
fn source_config(text: &str) -> connectors::SourceConfig {
    connectors::SourceConfig::from_toml(toml::from_str(text).unwrap())
        .unwrap_or_else(|e| panic!("{e}"))
}
