//! The Coinbase feed client against an in-process WebSocket server that speaks the feeds' exact
//! formats (`../shared/exchange-formats.md` §1, §2) and misbehaves on purpose: it drops the
//! connection mid-stream and replays an overlap, goes silent, sends hostile frames and skips trade
//! ids. The exactly-once test publishes through the real Kafka (`scripts/services.sh up`) and reads
//! the topic back; a missing broker fails it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use connectors::coinbase::client::{self, FeedTask, ReceivedTrade};
use connectors::coinbase::config::{CoinbaseConfig, FeedKind, Settings};
use connectors::coinbase::gaps::TradeTracker;
use connectors::common::counters::CounterSet;
use connectors::common::trade::TradeRecord;
use connectors::kafka::producer::TopicProducer;
use engine::{Offsets, Poll, PollLimits, StartRequest};
use futures::{SinkExt, StreamExt};
use rdkafka::ClientConfig;
use rdkafka::Message as _;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn brokers() -> String {
    std::env::var("KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

// ---- the feeds' frames ---------------------------------------------------------------------

fn trade_time(id: i64) -> String {
    chrono::DateTime::from_timestamp(1_795_000_000 + id, (id % 1000) as u32 * 1000)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

fn price(id: i64) -> String {
    format!("{}.{:02}", 90_000 + id % 500, id % 100)
}

/// A `match` (or `last_match`) in the live key order.
fn exchange_match(kind: &str, product: &str, id: i64) -> String {
    format!(
        r#"{{"type":"{kind}","trade_id":{id},"maker_order_id":"ac928c66-ca53-498f-9c13-a110027a60e8","taker_order_id":"132fb6ae-456b-4654-b4e0-d681ac05cea1","side":"{}","size":"0.{:04}","price":"{}","product_id":"{product}","sequence":{},"time":"{}"}}"#,
        if id % 2 == 0 { "sell" } else { "buy" },
        id % 10_000 + 1,
        price(id),
        id * 7 + 3,
        trade_time(id)
    )
}

fn heartbeat(product: &str, last_trade_id: i64) -> String {
    format!(
        r#"{{"type":"heartbeat","sequence":{},"last_trade_id":{last_trade_id},"product_id":"{product}","time":"2026-11-20T00:00:00.000000Z"}}"#,
        last_trade_id * 7 + 5
    )
}

fn exchange_ack(products: &[&str]) -> String {
    let ids = serde_json::to_string(products).unwrap();
    format!(
        r#"{{"type":"subscriptions","channels":[{{"name":"matches","product_ids":{ids}}},{{"name":"heartbeat","product_ids":{ids}}}]}}"#
    )
}

fn advanced_trades(kind: &str, seq: u64, trades: &[(&str, i64)]) -> String {
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

fn advanced_heartbeat(counter: u64) -> String {
    format!(
        r#"{{"channel":"heartbeats","client_id":"","timestamp":"2026-11-20T00:00:00.123456789Z","sequence_num":{counter},"events":[{{"current_time":"2026-11-20 00:00:00.121961769 +0000 UTC m=+91717.525857105","heartbeat_counter":{counter}}}]}}"#
    )
}

fn advanced_ack() -> String {
    r#"{"channel":"subscriptions","client_id":"","timestamp":"2026-11-20T00:00:00.1Z","sequence_num":2,"events":[{"subscriptions":{"heartbeats":["heartbeats"],"market_trades":["BTC-USD","ETH-USD"]}}]}"#.into()
}

// ---- the scripted server -------------------------------------------------------------------

/// What the server does on one connection, after reading the client's subscribe requests.
#[derive(Clone)]
enum Step {
    Text(String),
    Binary(Vec<u8>),
    /// Sends these frames every 100 ms for the duration (keeps the connection alive).
    Heartbeats(Vec<String>, Duration),
    /// Sends nothing for the duration, holding the connection open.
    Silence(Duration),
    /// Closes the TCP connection without a close frame.
    Drop,
    /// Sends these frames every 100 ms until the client goes away.
    KeepAlive(Vec<String>),
    /// Sends only WebSocket pings, every 100 ms, for the duration (the transport stays up).
    Pings(Duration),
}

struct FeedServer {
    url: String,
    /// The subscribe requests of each connection, in connection order.
    subscribes: Arc<Mutex<Vec<Vec<String>>>>,
    connections: Arc<AtomicUsize>,
}

/// Serves `scripts[i]` on the i-th connection (connections after the last script get the last
/// one again); reads `requests` subscribe messages first on each.
async fn serve(scripts: Vec<Vec<Step>>, requests: usize) -> FeedServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}", listener.local_addr().unwrap());
    let subscribes = Arc::new(Mutex::new(Vec::new()));
    let connections = Arc::new(AtomicUsize::new(0));
    let (log, count) = (subscribes.clone(), connections.clone());
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let i = count.fetch_add(1, Ordering::SeqCst);
            let script = scripts[i.min(scripts.len() - 1)].clone();
            tokio::spawn(connection(tcp, script, requests, log.clone()));
        }
    });
    FeedServer {
        url,
        subscribes,
        connections,
    }
}

async fn connection(
    tcp: tokio::net::TcpStream,
    script: Vec<Step>,
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
    log.lock().unwrap().push(received);
    for step in script {
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
                    tokio::time::sleep(Duration::from_millis(100)).await;
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
                    while let Ok(Some(Ok(_))) =
                        tokio::time::timeout(Duration::from_millis(100), ws.next()).await
                    {
                    }
                }
                ok
            }
            Step::KeepAlive(frames) => loop {
                for f in &frames {
                    if ws.send(Message::text(f.clone())).await.is_err() {
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            },
        };
        if !sent {
            return;
        }
    }
    // Hold the connection until the client closes it.
    while let Some(Ok(_)) = ws.next().await {}
}

// ---- the client ----------------------------------------------------------------------------

fn settings(url: &str, feed: FeedKind, products: &[&str], idle_ms: u64) -> Settings {
    let mut config = CoinbaseConfig::new(
        feed,
        repo().join("required_data/coin_map.json"),
        repo().join("required_data/my_Portfolio.json"),
    );
    config.url = Some(url.to_owned());
    config.product_ids = Some(products.iter().map(|p| (*p).to_owned()).collect());
    config.idle_timeout_ms = idle_ms;
    config.reconnect_backoff_initial_ms = 50;
    config.reconnect_backoff_max_ms = 500;
    config.validate().unwrap()
}

/// Reads trades from the client until `n` arrived (or fails after 30 s).
async fn take(feed: &mut FeedTask, n: usize) -> Vec<TradeRecord> {
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

fn interleaved(
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

// ---- Kafka ---------------------------------------------------------------------------------

async fn create_topic(topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    let created = tokio::time::timeout(
        Duration::from_secs(30),
        admin.create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        ),
    )
    .await
    .unwrap_or_else(|_| {
        panic!(
            "Kafka at {} did not answer; start it with scripts/services.sh up",
            brokers()
        )
    })
    .expect("create topic");
    for r in created {
        r.expect("topic created");
    }
}

/// Every message of `topic` per key, in offset order; waits for `expected` messages, then for
/// `quiet` more to catch any extra.
async fn read_topic(
    topic: &str,
    expected: usize,
    quiet: Duration,
) -> BTreeMap<String, Vec<TradeRecord>> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", format!("{topic}_reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut out: BTreeMap<String, Vec<TradeRecord>> = BTreeMap::new();
    let mut count = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut quiet_until: Option<Instant> = None;
    loop {
        let limit = match quiet_until {
            Some(q) => q,
            None => deadline,
        };
        let left = limit.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, consumer.recv()).await {
            Ok(Ok(m)) => {
                let key = String::from_utf8(m.key().unwrap().to_vec()).unwrap();
                let record: TradeRecord = serde_json::from_slice(m.payload().unwrap()).unwrap();
                out.entry(key).or_default().push(record);
                count += 1;
                if count >= expected && quiet_until.is_none() {
                    quiet_until = Some(Instant::now() + quiet);
                }
            }
            Ok(Err(e)) => panic!("consuming {topic}: {e}"),
            Err(_) => break,
        }
    }
    assert!(
        count >= expected,
        "only {count} of {expected} messages on {topic}"
    );
    out
}

// ---- tests ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_trade_reaches_kafka_once_in_order_across_a_dropped_connection() {
    let products = ["BTC-USD", "ETH-USD"];
    // 1st connection: last_match, then trades up to 1060 / 5060 and an abrupt drop.
    let mut first = vec![
        Step::Text(exchange_ack(&products)),
        Step::Text(exchange_match("last_match", "BTC-USD", 1000)),
        Step::Text(exchange_match("last_match", "ETH-USD", 5000)),
    ];
    first.extend(interleaved(1001..=1060, 5001..=5060));
    first.push(Step::Drop);
    // 2nd connection: a last_match already published, then an overlap, then new trades, then
    // the server closes with a close frame.
    let mut second = vec![
        Step::Text(exchange_ack(&products)),
        Step::Text(exchange_match("last_match", "BTC-USD", 1060)),
        Step::Text(exchange_match("last_match", "ETH-USD", 5060)),
    ];
    second.extend(interleaved(1040..=1100, 5030..=5100));
    second.push(Step::Heartbeats(
        vec![heartbeat("BTC-USD", 1100), heartbeat("ETH-USD", 5100)],
        Duration::from_millis(300),
    ));
    second.push(Step::Drop);
    // 3rd connection: only replays, then heartbeats until the client leaves.
    let third = vec![
        Step::Text(exchange_ack(&products)),
        Step::Text(exchange_match("last_match", "BTC-USD", 1100)),
        Step::Text(exchange_match("last_match", "ETH-USD", 5100)),
        Step::KeepAlive(vec![heartbeat("BTC-USD", 1100), heartbeat("ETH-USD", 5100)]),
    ];
    let server = serve(vec![first, second, third], 1).await;

    let topic = format!(
        "coinbase_replay_{}_{}",
        std::process::id(),
        chrono::Utc::now().timestamp_millis()
    );
    create_topic(&topic, 3).await;
    let producer = TopicProducer::new(
        &brokers(),
        &topic,
        connectors::kafka::config::Compression::Lz4,
        &Default::default(),
    )
    .unwrap();
    producer
        .check(Duration::from_secs(15))
        .await
        .unwrap_or_else(|e| panic!("{e}; start Kafka with scripts/services.sh up"));

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
            .send_all(trades.map(|t| (t.record.symbol.clone(), t.record.to_json())))
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

    let on_kafka = read_topic(&topic, expected, Duration::from_secs(2)).await;
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
            t.side.as_str(),
            t.price.clone(),
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
    let subscribes = server.subscribes.lock().unwrap().clone();
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
    let mut first = vec![Step::Text(exchange_ack(&products))];
    first.extend((1..=10).map(|id| Step::Text(exchange_match("match", "BTC-USD", id))));
    // Heartbeats only, for three idle timeouts: the connection stays.
    first.push(Step::Heartbeats(
        vec![heartbeat("BTC-USD", 10)],
        Duration::from_millis(2_400),
    ));
    first.push(Step::Text(exchange_match("match", "BTC-USD", 11)));
    // Then nothing at all, far longer than the idle timeout.
    first.push(Step::Silence(Duration::from_secs(60)));
    let mut second = vec![
        Step::Text(exchange_ack(&products)),
        Step::Text(exchange_match("last_match", "BTC-USD", 11)),
    ];
    second.extend((12..=20).map(|id| Step::Text(exchange_match("match", "BTC-USD", id))));
    second.push(Step::KeepAlive(vec![heartbeat("BTC-USD", 20)]));
    let server = serve(vec![first, second], 1).await;

    let (stop, shutdown) = watch::channel(false);
    let mut feed = client::spawn(
        settings(&server.url, FeedKind::Exchange, &products, 800),
        TradeTracker::default(),
        100,
        shutdown,
    );
    let started = Instant::now();
    let first_part = take(&mut feed, 11).await;
    assert!(
        started.elapsed() >= Duration::from_millis(2_400),
        "trade 11 came after the heartbeat-only phase"
    );
    assert_eq!(
        feed.counters.get("reconnects"),
        0,
        "heartbeats kept it alive"
    );
    let rest = take(&mut feed, 9).await;
    let all: Vec<TradeRecord> = first_part.into_iter().chain(rest).collect();
    assert_eq!(ids(&all, "BTC-USD"), (1..=20).collect::<Vec<_>>());
    assert_no_more(&mut feed, Duration::from_millis(500)).await;
    assert_eq!(feed.counters.get("idle_timeouts"), 1);
    assert_eq!(feed.counters.get("reconnects"), 1);
    assert_eq!(server.connections.load(Ordering::SeqCst), 2);
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), feed.task)
        .await
        .expect("the client stops on shutdown")
        .unwrap()
        .unwrap();
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
    let server = serve(vec![script], 1).await;
    let (stop, shutdown) = watch::channel(false);
    let mut feed = client::spawn(
        settings(&server.url, FeedKind::Exchange, &products, 2_000),
        TradeTracker::default(),
        100,
        shutdown,
    );
    let trades = take(&mut feed, 3).await;
    assert_eq!(ids(&trades, "BTC-USD"), [1, 2, 3]);
    assert_no_more(&mut feed, Duration::from_millis(500)).await;
    let c = feed.counters.clone();
    // bad JSON, wrong type, missing time, unknown side, no type, binary garbage, heartbeat
    // without last_trade_id; price 0, price -1.5, price NaN, size Infinity, no trade id.
    assert_eq!(c.get("invalid"), 7 + 5, "{:?}", c.snapshot());
    assert_eq!(c.get("exchange_errors"), 1);
    assert_eq!(c.get("errors"), 13);
    assert_eq!(
        c.get("unknown_products"),
        1,
        "FOO-USD is not in the coin map"
    );
    assert_eq!(c.get("reconnects"), 0, "the connection carried on");
    stop.send(true).unwrap();
    feed.task.await.unwrap().unwrap();
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
    let server = serve(vec![script], 1).await;
    let (stop, shutdown) = watch::channel(false);
    let mut feed = client::spawn(
        settings(&server.url, FeedKind::Exchange, &products, 2_000),
        TradeTracker::default(),
        100,
        shutdown,
    );
    let trades = take(&mut feed, 9).await;
    assert_eq!(ids(&trades, "BTC-USD"), [1, 2, 3, 4, 5, 8, 9, 10, 14]);
    assert_no_more(&mut feed, Duration::from_millis(300)).await;
    assert_eq!(
        feed.counters.get("gaps"),
        2,
        "{:?}",
        feed.counters.snapshot()
    );
    assert_eq!(feed.counters.get("lost_trades"), 2 + 3);
    stop.send(true).unwrap();
    feed.task.await.unwrap().unwrap();
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
    let server = serve(vec![first, second], 2).await;
    let (stop, shutdown) = watch::channel(false);
    let mut feed = client::spawn(
        settings(
            &server.url,
            FeedKind::Advanced,
            &["BTC-USD", "ETH-USD"],
            2_000,
        ),
        TradeTracker::default(),
        100,
        shutdown,
    );
    let trades = take(&mut feed, 11).await;
    assert_eq!(ids(&trades, "BTC-USD"), (101..=107).collect::<Vec<_>>());
    assert_eq!(ids(&trades, "ETH-USD"), (500..=503).collect::<Vec<_>>());
    assert_no_more(&mut feed, Duration::from_millis(500)).await;
    let t = trades.iter().find(|t| t.trade_id == 102).unwrap();
    assert_eq!(
        (
            t.side.as_str(),
            t.sequence,
            t.coin_name.as_deref(),
            t.trade_time.clone()
        ),
        ("buy", None, Some("Bitcoin"), trade_time(102)),
        "maker SELL -> taker buy; no per-product sequence"
    );
    let c = feed.counters.clone();
    assert_eq!(c.get("duplicates"), 3, "{:?}", c.snapshot());
    assert_eq!((c.get("exchange_errors"), c.get("invalid")), (1, 1));
    assert_eq!(c.get("reconnects"), 1);
    let subscribes = server.subscribes.lock().unwrap().clone();
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
    stop.send(true).unwrap();
    feed.task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_source_hands_out_trades_with_trade_id_offsets_and_cannot_replay() {
    let products = ["BTC-USD", "ETH-USD"];
    let mut script = vec![
        Step::Text(exchange_ack(&products)),
        Step::Text(exchange_match("last_match", "BTC-USD", 10)),
        Step::Text(exchange_match("last_match", "ETH-USD", 70)),
    ];
    script.extend(interleaved(11..=14, 71..=72));
    script.push(Step::KeepAlive(vec![
        heartbeat("BTC-USD", 14),
        heartbeat("ETH-USD", 72),
    ]));
    let server = serve(vec![script], 1).await;
    let config: connectors::SourceConfig = toml::from_str(&format!(
        r#"
type = "coinbase"
url = "{}"
product_ids = ["BTC-USD", "ETH-USD"]
coin_map = "{}"
idle_timeout_ms = 2000
connect_timeout_ms = 1000
"#,
        server.url,
        repo().join("required_data/coin_map.json").display()
    ))
    .unwrap();
    let mut source = connectors::build_source(&config).unwrap();
    assert!(source.description().starts_with("coinbase ws://127.0.0.1"));
    source.start(StartRequest::default()).await.unwrap();
    let limits = PollLimits {
        max_records: 5,
        max_wait: Duration::from_millis(500),
    };
    let mut records = Vec::new();
    let mut ends = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while records.len() < 8 && Instant::now() < deadline {
        if let Poll::Batch(b) = source.poll(limits).await.unwrap() {
            assert!(b.records.len() <= 5);
            for r in &b.records {
                assert_eq!(b.start.get(&r.topic, 0).map(|s| s <= r.offset), Some(true));
                assert!(b.end.get(&r.topic, 0).unwrap() > r.offset);
            }
            source.commit(&b.end).await.unwrap();
            ends.push(b.end.clone());
            records.extend(b.records);
        }
    }
    let offsets: Vec<(String, i64)> = records
        .iter()
        .map(|r| (r.topic.clone(), r.offset))
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
        (last.get("BTC-USD", 0), last.get("ETH-USD", 0)),
        (Some(15), Some(73))
    );
    let payload: TradeRecord = serde_json::from_slice(&records[0].payload).unwrap();
    assert_eq!(payload.trade_id, records[0].offset);
    let metrics: BTreeMap<_, _> = source.metrics().into_iter().collect();
    assert_eq!(metrics["published"], 8);
    assert_eq!(metrics["reconnects"], 0);
    let err = source.fetch_range(&Offsets::new(), last).await.unwrap_err();
    assert!(err.to_string().contains("cannot replay"), "{err}");
    source.close().await.unwrap();

    // A restart from the checkpoint's offsets does not hand out the feed's last_match again.
    let mut committed = Offsets::new();
    committed.set("BTC-USD", 0, 15);
    committed.set("ETH-USD", 0, 73);
    let mut again = connectors::build_source(&config).unwrap();
    again
        .start(StartRequest {
            committed: Some(committed),
            available_now: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let polled = again.poll(limits).await.unwrap();
    assert!(matches!(polled, Poll::Exhausted), "{polled:?}");
    let metrics: BTreeMap<_, _> = again.metrics().into_iter().collect();
    assert!(metrics["duplicates"] >= 2, "{metrics:?}");
    again.close().await.unwrap();
}

// ---- hostile input: refused products, ping-only connections, values that cannot be real -----

/// The frames of `../shared/cases/heartbeat-zero-false-loss/frames.jsonl`: heartbeats with
/// `last_trade_id` 0 around contiguous trades of two products.
const HEARTBEAT_ZERO_FRAMES: &str = r#"{"type":"subscriptions","channels":[{"name":"matches","product_ids":["BTC-USD","ETH-USD"]},{"name":"heartbeat","product_ids":["BTC-USD","ETH-USD"]}]}
{"type":"heartbeat","last_trade_id":0,"product_id":"BTC-USD","sequence":14011426656,"time":"2025-05-12T14:03:21.402171Z"}
{"type":"heartbeat","last_trade_id":0,"product_id":"ETH-USD","sequence":61204477167,"time":"2025-05-12T14:03:21.402247Z"}
{"type":"match","trade_id":831102379,"maker_order_id":"00000000-0000-4000-8000-000831102379","taker_order_id":"00000000-0000-4000-9000-000831102379","side":"sell","size":"0.1","price":"104212.35","product_id":"BTC-USD","sequence":14011426700,"time":"2025-05-12T14:03:21.500000Z"}
{"type":"match","trade_id":612558206,"maker_order_id":"00000000-0000-4000-8000-000612558206","taker_order_id":"00000000-0000-4000-9000-000612558206","side":"buy","size":"1.1","price":"2515.69","product_id":"ETH-USD","sequence":61204477200,"time":"2025-05-12T14:03:21.600000Z"}
{"type":"match","trade_id":831102380,"maker_order_id":"00000000-0000-4000-8000-000831102380","taker_order_id":"00000000-0000-4000-9000-000831102380","side":"buy","size":"0.2","price":"104212.40","product_id":"BTC-USD","sequence":14011426800,"time":"2025-05-12T14:03:21.700000Z"}
{"type":"heartbeat","last_trade_id":0,"product_id":"BTC-USD","sequence":14011426900,"time":"2025-05-12T14:03:22.402171Z"}
{"type":"heartbeat","last_trade_id":0,"product_id":"ETH-USD","sequence":61204477300,"time":"2025-05-12T14:03:22.402247Z"}
{"type":"match","trade_id":612558207,"maker_order_id":"00000000-0000-4000-8000-000612558207","taker_order_id":"00000000-0000-4000-9000-000612558207","side":"sell","size":"0.4","price":"2515.70","product_id":"ETH-USD","sequence":61204477400,"time":"2025-05-12T14:03:22.600000Z"}
{"type":"heartbeat","last_trade_id":0,"product_id":"BTC-USD","sequence":14011427000,"time":"2025-05-12T14:03:23.402171Z"}
{"type":"heartbeat","last_trade_id":0,"product_id":"ETH-USD","sequence":61204477500,"time":"2025-05-12T14:03:23.402247Z"}"#;

/// heartbeat-zero-false-loss: a heartbeat's `last_trade_id` of 0 (or any id below the first
/// trade seen) says nothing about loss.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_with_last_trade_id_zero_report_no_loss() {
    let mut script: Vec<Step> = HEARTBEAT_ZERO_FRAMES
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
    let server = serve(vec![script], 1).await;
    let (stop, shutdown) = watch::channel(false);
    let mut feed = client::spawn(
        settings(
            &server.url,
            FeedKind::Exchange,
            &["BTC-USD", "ETH-USD"],
            2_000,
        ),
        TradeTracker::default(),
        100,
        shutdown,
    );
    let trades = take(&mut feed, 4).await;
    assert_eq!(ids(&trades, "BTC-USD"), [831_102_379, 831_102_380]);
    assert_eq!(ids(&trades, "ETH-USD"), [612_558_206, 612_558_207]);
    assert_no_more(&mut feed, Duration::from_millis(800)).await;
    let c = feed.counters.clone();
    assert_eq!(
        (c.get("trades"), c.get("gaps"), c.get("lost_trades")),
        (4, 0, 0),
        "{:?}",
        c.snapshot()
    );
    stop.send(true).unwrap();
    feed.task.await.unwrap().unwrap();
}

/// A stand-in for the Exchange feed that answers any subscribe naming `refused` the way the feed
/// answers an unknown product (`../shared/cases/subscribe-error-reconnect-loop`): one `error`,
/// then silence; any other subscribe gets `frames`, then heartbeats.
async fn serve_refusing(
    refused: &'static str,
    frames: Vec<String>,
    keep_alive: Vec<String>,
) -> FeedServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}", listener.local_addr().unwrap());
    let subscribes = Arc::new(Mutex::new(Vec::new()));
    let connections = Arc::new(AtomicUsize::new(0));
    let (log, count) = (subscribes.clone(), connections.clone());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let (log, frames, keep_alive) = (log.clone(), frames.clone(), keep_alive.clone());
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                let request = match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
                    Ok(Some(Ok(Message::Text(t)))) => t.to_string(),
                    _ => return,
                };
                log.lock().unwrap().push(vec![request.clone()]);
                let asked: serde_json::Value = serde_json::from_str(&request).unwrap();
                let products: Vec<&str> = asked["product_ids"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| p.as_str().unwrap())
                    .collect();
                if products.contains(&refused) {
                    let error = format!(
                        r#"{{"type":"error","message":"Failed to subscribe","reason":"{refused} is not a valid product"}}"#
                    );
                    if ws.send(Message::text(error)).await.is_err() {
                        return;
                    }
                    while let Some(Ok(_)) = ws.next().await {}
                    return;
                }
                for f in frames {
                    if ws.send(Message::text(f)).await.is_err() {
                        return;
                    }
                }
                loop {
                    for f in &keep_alive {
                        if ws.send(Message::text(f.clone())).await.is_err() {
                            return;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            });
        }
    });
    FeedServer {
        url,
        subscribes,
        connections,
    }
}

/// subscribe-error-reconnect-loop: a `Failed to subscribe` naming one product drops that product
/// and the others flow; with nothing left the client stops with a permanent error naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_product_the_exchange_refuses_is_dropped_and_the_others_flow() {
    let mut frames = vec![exchange_ack(&["BTC-USD", "ETH-USD"])];
    frames.extend((1..=5).map(|id| exchange_match("match", "BTC-USD", id)));
    frames.extend((101..=105).map(|id| exchange_match("match", "ETH-USD", id)));
    let server = serve_refusing(
        "DOT-USD",
        frames,
        vec![heartbeat("BTC-USD", 5), heartbeat("ETH-USD", 105)],
    )
    .await;
    let (stop, shutdown) = watch::channel(false);
    let mut feed = client::spawn(
        settings(
            &server.url,
            FeedKind::Exchange,
            &["BTC-USD", "ETH-USD", "DOT-USD"],
            2_000,
        ),
        TradeTracker::default(),
        100,
        shutdown,
    );
    let started = Instant::now();
    let trades = take(&mut feed, 10).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "resubscribed at once"
    );
    assert_eq!(ids(&trades, "BTC-USD"), [1, 2, 3, 4, 5]);
    assert_eq!(ids(&trades, "ETH-USD"), [101, 102, 103, 104, 105]);
    assert_no_more(&mut feed, Duration::from_millis(500)).await;
    let subscribes: Vec<serde_json::Value> = server
        .subscribes
        .lock()
        .unwrap()
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
    let c = feed.counters.clone();
    assert_eq!(
        (
            c.get("exchange_errors"),
            c.get("idle_timeouts"),
            c.get("reconnects")
        ),
        (1, 0, 1),
        "{:?}",
        c.snapshot()
    );
    stop.send(true).unwrap();
    feed.task.await.unwrap().unwrap();

    // Only the refused product: the client stops by itself, with the product and the reason.
    let (_stop, shutdown) = watch::channel(false);
    let mut feed = client::spawn(
        settings(&server.url, FeedKind::Exchange, &["DOT-USD"], 2_000),
        TradeTracker::default(),
        100,
        shutdown,
    );
    let ended = tokio::time::timeout(Duration::from_secs(5), feed.task)
        .await
        .expect("the client stops instead of reconnecting forever")
        .unwrap();
    let err = ended.unwrap_err();
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
    let server = serve_refusing("DOT-USD", vec![], vec![]).await;
    let config: connectors::SourceConfig = toml::from_str(&format!(
        r#"
type = "coinbase"
url = "{}"
product_ids = ["DOT-USD"]
coin_map = "{}"
idle_timeout_ms = 2000
"#,
        server.url,
        repo().join("required_data/coin_map.json").display()
    ))
    .unwrap();
    let mut source = connectors::build_source(&config).unwrap();
    source.start(StartRequest::default()).await.unwrap();
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
    let server = serve(vec![script], 2).await;
    let (_stop, shutdown) = watch::channel(false);
    let feed = client::spawn(
        settings(&server.url, FeedKind::Advanced, &["BTC-USD"], 2_000),
        TradeTracker::default(),
        100,
        shutdown,
    );
    let err = tokio::time::timeout(Duration::from_secs(5), feed.task)
        .await
        .expect("an authentication failure is not retried")
        .unwrap()
        .unwrap_err();
    assert!(err.to_string().contains("authentication failure"), "{err}");
    assert!(!err.is_transient());
    assert_eq!(server.connections.load(Ordering::SeqCst), 1);
}

/// Liveness comes from data: a connection that answers pings but carries no trade or heartbeat
/// for the idle timeout is replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_only_answers_pings_is_replaced() {
    let products = ["BTC-USD"];
    let mut first = vec![Step::Text(exchange_ack(&products))];
    first.extend((1..=3).map(|id| Step::Text(exchange_match("match", "BTC-USD", id))));
    // Pings (and an unused message type) only, for far longer than the idle timeout.
    first.push(Step::Text(
        r#"{"type":"ticker","product_id":"BTC-USD","price":"1"}"#.into(),
    ));
    first.push(Step::Pings(Duration::from_secs(30)));
    let mut second = vec![
        Step::Text(exchange_ack(&products)),
        Step::Text(exchange_match("last_match", "BTC-USD", 3)),
    ];
    second.extend((4..=6).map(|id| Step::Text(exchange_match("match", "BTC-USD", id))));
    second.push(Step::KeepAlive(vec![heartbeat("BTC-USD", 6)]));
    let server = serve(vec![first, second], 1).await;
    let (stop, shutdown) = watch::channel(false);
    let mut feed = client::spawn(
        settings(&server.url, FeedKind::Exchange, &products, 800),
        TradeTracker::default(),
        100,
        shutdown,
    );
    let started = Instant::now();
    let trades = take(&mut feed, 6).await;
    assert_eq!(ids(&trades, "BTC-USD"), [1, 2, 3, 4, 5, 6]);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_secs(10),
        "replaced after the idle timeout, not kept by the pings: {took:?}"
    );
    assert_eq!(feed.counters.get("idle_timeouts"), 1);
    assert_eq!(feed.counters.get("reconnects"), 1);
    assert_eq!(server.connections.load(Ordering::SeqCst), 2);
    stop.send(true).unwrap();
    feed.task.await.unwrap().unwrap();
}

/// A run of the client whose every frame was unusable (here: Advanced Trade frames read as the
/// Exchange feed) ends in a permanent error with the first reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_that_could_use_no_frame_fails() {
    let script = vec![Step::KeepAlive(vec![
        advanced_trades("update", 1, &[("BTC-USD", 7)]),
        advanced_heartbeat(2),
    ])];
    let server = serve(vec![script], 1).await;
    let (stop, shutdown) = watch::channel(false);
    let mut feed = client::spawn(
        settings(&server.url, FeedKind::Exchange, &["BTC-USD"], 5_000),
        TradeTracker::default(),
        100,
        shutdown,
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while feed.counters.get("invalid") < 20 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.send(true).unwrap();
    assert!(feed.trades.recv().await.is_none());
    let err = feed.task.await.unwrap().unwrap_err();
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
    let server = serve(vec![script], 1).await;
    let config: connectors::SourceConfig = toml::from_str(&format!(
        r#"
type = "coinbase"
url = "{}"
product_ids = ["BTC-USD"]
coin_map = "{}"
"#,
        server.url,
        repo().join("required_data/coin_map.json").display()
    ))
    .unwrap();
    let mut source = connectors::build_source(&config).unwrap();
    source.start(StartRequest::default()).await.unwrap();
    let limits = PollLimits {
        max_records: 100,
        max_wait: Duration::from_millis(300),
    };
    let mut records = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while records.len() < 9 && Instant::now() < deadline {
        if let Poll::Batch(b) = source.poll(limits).await.unwrap() {
            source.commit(&b.end).await.unwrap();
            records.extend(b.records);
        }
    }
    let trades: Vec<i64> = records
        .iter()
        .filter(|r| r.rejected.is_none())
        .map(|r| r.offset)
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
    let config: connectors::SourceConfig = toml::from_str(&format!(
        "type = \"replay\"\npath = {:?}\ncoin_map = {:?}\n",
        capture.display().to_string(),
        repo()
            .join("required_data/coin_map.json")
            .display()
            .to_string()
    ))
    .unwrap();
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
