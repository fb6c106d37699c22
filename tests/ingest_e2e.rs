//! The ingest pipelines end to end, through the built binary, on the real Kafka and Cassandra
//! (`scripts/services.sh up`); the exchanges are in-process servers speaking their formats:
//! - `coinstream ingest coinbase` (`pipelines/ingest-coinbase.toml`, from a feed that drops the
//!   connection and replays an overlap) → Kafka, every record byte for byte the bus record →
//!   `coinstream run` with `pipelines/kafka-cassandra.toml` → every portfolio trade once, with its
//!   profit;
//! - `coinstream ingest gateio --once` (`pipelines/ingest-gateio.toml`, a paged backfill through a
//!   429, twice over one checkpoint) → Kafka, every record byte for byte the candle record →
//!   `coinstream run` with `pipelines/candles-cassandra.toml` → every candle;
//! - `pipelines/coinbase-embedded.toml`: the feed as an engine source → profit.sql → Parquet.
//!
//! A missing service fails the test.

use std::collections::BTreeMap;
use std::process::Command;
use std::str::FromStr;
use std::time::{Duration, Instant};

use common::*;
use connectors::common::trade::TradeRecord;
use futures::TryStreamExt;
use rust_decimal::Decimal;
use scylla::value::{CqlDecimal, CqlTimestamp};
use testkit::coinbase::{FeedServer, Step, subscribe_error};
use testkit::gateio::{Reply, RestServer};
use testkit::kafka::{Received, messages_on, read_topic};

mod common;

// ---- the Coinbase Exchange feed: testkit's stand-in ------------------------------------------

/// Serves `scripts[i]` on the i-th connection (the last one again after that), after reading the
/// client's subscribe request.
async fn feed_server(scripts: Vec<Vec<Step>>) -> String {
    FeedServer::scripted(scripts, 1).await.url
}

fn ack() -> String {
    r#"{"type":"subscriptions","channels":[{"name":"matches","product_ids":[]},{"name":"heartbeat","product_ids":[]}]}"#.into()
}

fn heartbeat(product: &str, last_trade_id: i64) -> String {
    format!(
        r#"{{"type":"heartbeat","sequence":{},"last_trade_id":{last_trade_id},"product_id":"{product}","time":"2026-11-20T00:00:00.000000Z"}}"#,
        last_trade_id * 3
    )
}

fn portfolio() -> BTreeMap<String, (Decimal, Decimal)> {
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("required_data/my_Portfolio.json")).unwrap(),
    )
    .unwrap();
    json.as_object()
        .unwrap()
        .iter()
        .map(|(symbol, h)| {
            let d = |k: &str| Decimal::from_str(h[k].as_str().unwrap()).unwrap();
            (symbol.clone(), (d("buy_price"), d("size")))
        })
        .collect()
}

/// Matches of `products` at prices around the portfolio's, interleaved by trade id: product k's
/// ids are `step * (k + 1) + offset` for offsets `0..=last`, the first a `last_match` (as the
/// feed sends on subscribing).
fn portfolio_matches(products: &[&str], step: i64, last: i64) -> Vec<String> {
    let holdings = portfolio();
    let mut frames = Vec::new();
    for offset in 0..=last {
        for (k, product) in products.iter().enumerate() {
            let id = step * (k as i64 + 1) + offset;
            let kind = if offset == 0 { "last_match" } else { "match" };
            frames.push(exchange_match(
                kind,
                product,
                id,
                price_of(holdings[*product].0, id),
            ));
        }
    }
    frames
}

/// A trade's price: within ±10 % of `reference`, so profits come out both ways.
fn price_of(reference: Decimal, id: i64) -> Decimal {
    (reference * Decimal::from(90 + id % 21) / Decimal::from(100)).round_dp(8)
}

fn exchange_match(kind: &str, product: &str, id: i64, price: Decimal) -> String {
    let time = chrono::DateTime::from_timestamp(1_795_000_000 + id * 13, 0)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    format!(
        r#"{{"type":"{kind}","trade_id":{id},"maker_order_id":"ac928c66-ca53-498f-9c13-a110027a60e8","taker_order_id":"132fb6ae-456b-4654-b4e0-d681ac05cea1","side":"{}","size":"0.01","price":"{price}","product_id":"{product}","sequence":{},"time":"{time}"}}"#,
        if id % 2 == 0 { "sell" } else { "buy" },
        id * 3 + 1
    )
}

/// Every message on `topic` from the start: exactly `expected`, with 2 s for any extra to show.
async fn read_records(topic: &str, expected: usize) -> Vec<Received> {
    let out = read_topic(topic, expected, Duration::from_secs(2)).await;
    assert_eq!(out.len(), expected, "records on {topic}");
    out
}

/// The built binary's `coinstream ingest <venue>` from the repository root, reading `url` and
/// publishing to `topic` on the test brokers; the caller adds the venue's own flags.
fn ingest_command(venue: &str, url: &str, topic: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_coinstream"));
    command
        .args([
            "ingest",
            venue,
            "--url",
            url,
            "--brokers",
            &brokers(),
            "--topic",
            topic,
        ])
        .current_dir(repo());
    command
}

/// The log without its ANSI colour codes.
fn plain(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_coinbase_then_run_stores_every_portfolio_trade_once_with_its_profit() {
    let setup = Setup::new("ingest").await;
    let holdings = portfolio();
    // Every portfolio product, plus LINK-USD: in the coin map, not in the portfolio (published,
    // but profit.sql keeps no row for it).
    let mut products: Vec<(String, Decimal)> = holdings
        .iter()
        .map(|(p, (buy, _))| (p.clone(), *buy))
        .collect();
    products.push(("LINK-USD".into(), Decimal::from(15)));
    let base = |k: usize| 1_000_000 * (k as i64 + 1);
    let (mut first, mut second) = (vec![Step::Text(ack())], vec![Step::Text(ack())]);
    for (k, (product, reference)) in products.iter().enumerate() {
        let id = base(k);
        first.push(Step::Text(exchange_match(
            "last_match",
            product,
            id,
            price_of(*reference, id),
        )));
        second.push(Step::Text(exchange_match(
            "last_match",
            product,
            id + 25,
            price_of(*reference, id + 25),
        )));
    }
    for offset in 1..=40 {
        for (k, (product, reference)) in products.iter().enumerate() {
            let id = base(k) + offset;
            let frame = Step::Text(exchange_match(
                "match",
                product,
                id,
                price_of(*reference, id),
            ));
            // The first connection drops after trade 25; the second replays from 20.
            if offset <= 25 {
                first.push(frame.clone());
            }
            if offset >= 20 {
                second.push(frame);
            }
        }
    }
    first.push(Step::Drop);
    second.push(Step::KeepAlive(
        products
            .iter()
            .enumerate()
            .map(|(k, (p, _))| heartbeat(p, base(k) + 40))
            .collect(),
    ));
    let url = feed_server(vec![first, second]).await;
    let per_product = 41;
    let total = products.len() as i64 * per_product;
    let mut expected = BTreeMap::new();
    for (k, (product, reference)) in products.iter().enumerate() {
        if let Some((buy, size)) = holdings.get(product) {
            for id in base(k)..=base(k) + 40 {
                expected.insert(
                    (product.clone(), id),
                    (price_of(*reference, id) - buy) * size,
                );
            }
        }
    }

    let names: Vec<&str> = products.iter().map(|(p, _)| p.as_str()).collect();
    let mut ingest = ingest_command("coinbase", &url, &setup.topic);
    ingest.args(["--products", &names.join(",")]);
    let child = Running::spawn(ingest);
    let deadline = Instant::now() + Duration::from_secs(90);
    while messages_on(&setup.topic, PARTITIONS) < total && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Replays after the reconnect would land now, if they were published.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let log = plain(&child.terminate(Duration::from_secs(30)));
    let stopped = log
        .lines()
        .find(|l| l.contains("Coinbase feed client stopped."))
        .unwrap_or_else(|| panic!("no final counters: {log}"));
    assert!(stopped.contains(&format!("published={total}")), "{stopped}");
    assert!(stopped.contains("reconnects=1"), "{stopped}");
    assert_eq!(
        messages_on(&setup.topic, PARTITIONS),
        total,
        "every trade once on Kafka"
    );
    // The records are the bus record, byte for byte: each payload is exactly what
    // `TradeRecord::to_json` makes of the record it holds (field names and order, nulls,
    // decimals and times as the exchange's text), keyed by its product, and holds what the
    // feed sent.
    let on_kafka = read_records(&setup.topic, total as usize).await;
    for Received { key, payload, .. } in &on_kafka {
        let record: TradeRecord = serde_json::from_slice(payload)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(payload)));
        assert_eq!(
            String::from_utf8_lossy(&record.to_json()),
            String::from_utf8_lossy(payload)
        );
        assert_eq!(key, &record.symbol);
        let (k, (_, reference)) = products
            .iter()
            .enumerate()
            .find(|(_, (p, _))| *p == record.symbol)
            .unwrap();
        assert!((base(k)..=base(k) + 40).contains(&record.trade_id));
        assert_eq!(
            record.price,
            price_of(*reference, record.trade_id).to_string()
        );
        assert_eq!(record.size, "0.01");
        assert_eq!(record.sequence, Some(record.trade_id * 3 + 1), "{record:?}");
        assert!(record.trade_time.ends_with(".000000Z"), "{record:?}");
    }

    check(&setup.run(&[]).output().unwrap());
    let session = session().await;
    let rows = stored(&session, &setup.keyspace).await;
    assert_exactly(&rows, &expected);
    assert_eq!(rows.len(), 9 * per_product as usize);
}

// ---- an in-process Gate.io REST API ----------------------------------------------------------

fn candle_row(start: i64) -> String {
    let p = 60_000 + start % 991;
    format!(
        r#"["{start}","{}.5","{p}.5","{}","{}","{}.25","0.{:04}","true"]"#,
        p * 7,
        p + 3,
        p - 4,
        p - 1,
        start % 10_000
    )
}

/// Serves candlestick pages for any pair on testkit's Gate.io stand-in; the second request gets a
/// 429 whose reset is a second away.
async fn rest_server() -> String {
    RestServer::serve(|n, seen| {
        if n == 1 {
            return Reply::too_many_requests(chrono::Utc::now().timestamp() + 1);
        }
        let (from, to) = (seen.query_i64("from"), seen.query_i64("to"));
        let rows: Vec<String> = (from.div_euclid(60)..=to.div_euclid(60))
            .map(|i| candle_row(i * 60))
            .collect();
        Reply::json(format!("[{}]", rows.join(",")))
    })
    .await
    .base
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_gateio_once_then_run_stores_every_candle() {
    let Setup {
        dir,
        topic,
        keyspace,
        config,
        ..
    } = Setup::shipped("candles", "pipelines/candles-cassandra.toml", 3).await;

    let base = rest_server().await;
    let from = 1_780_000_000 / 60 * 60;
    let windows = 1_500;
    let to = from + (windows - 1) * 60;
    // The engine's checkpoint folder: the last window per pair and interval.
    let state = dir.path().join("gateio-checkpoint");
    // One scheduled ingest run to its end: its log and its final counters line.
    let ingest = || {
        let out = ingest_command("gateio", &base, &topic)
            .args([
                "--pairs",
                "BTC_USDT,ETH_USDT",
                "--interval",
                "1m",
                "--from",
                &from.to_string(),
                "--to",
                &chrono::DateTime::from_timestamp(to, 0)
                    .unwrap()
                    .to_rfc3339(),
                "--once",
                "--state",
                state.to_str().unwrap(),
            ])
            .output()
            .unwrap();
        let log = plain(&check(&out));
        let counters = log
            .lines()
            .find(|l| l.contains("Gate.io source stopped."))
            .unwrap_or_else(|| panic!("no final counters: {log}"))
            .to_owned();
        (log, counters)
    };
    let (log, counters) = ingest();
    assert!(log.contains("rate limit hit"), "{log}");
    assert!(
        counters.contains(&format!("published={}", 2 * windows)),
        "{counters}"
    );
    assert_eq!(
        messages_on(&topic, 3),
        2 * windows,
        "every window once on Kafka"
    );
    // The records are the candle record, byte for byte, keyed by its pair.
    let on_kafka = read_records(&topic, 2 * windows as usize).await;
    let mut seen_windows = std::collections::BTreeSet::new();
    for Received { key, payload, .. } in &on_kafka {
        assert!(seen_windows.insert(common::candles::check_candle(key, payload, candle_row)));
    }
    // A second scheduled run over the same windows: the checkpoint says they are out.
    let (_, counters) = ingest();
    assert!(
        counters.contains("published=0")
            && counters.contains(&format!("duplicates={}", 2 * windows)),
        "{counters}"
    );
    assert_eq!(
        messages_on(&topic, 3),
        2 * windows,
        "no window twice across runs"
    );

    check(&run_available_now(&config, dir.path()));
    let session = session().await;
    let mut rows = session
        .query_iter(
            format!(
                "SELECT currency_pair, \"interval\", window_start, open, close, change FROM \"{keyspace}\".\"crypto_candles\""
            ),
            &[],
        )
        .await
        .unwrap()
        .rows_stream::<(String, String, CqlTimestamp, CqlDecimal, CqlDecimal, CqlDecimal)>()
        .unwrap();
    let mut stored: BTreeMap<(String, i64), (Decimal, Decimal)> = BTreeMap::new();
    while let Some((pair, interval, start, open, close, change)) = rows.try_next().await.unwrap() {
        assert_eq!(interval, "1m");
        assert_eq!(decimal(&close) - decimal(&open), decimal(&change));
        stored.insert((pair, start.0 / 1000), (decimal(&open), decimal(&close)));
    }
    assert_eq!(stored.len(), 2 * windows as usize);
    for pair in ["BTC_USDT", "ETH_USDT"] {
        for i in 0..windows {
            let start = from + i * 60;
            let p = 60_000 + start % 991;
            let (open, close) = stored[&(pair.to_owned(), start)];
            assert_eq!(open, Decimal::from_str(&format!("{}.25", p - 1)).unwrap());
            assert_eq!(close, Decimal::from_str(&format!("{p}.5")).unwrap());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_coinbase_pipeline_writes_live_trades_to_parquet() {
    let mut script = vec![Step::Text(ack())];
    script.extend(
        portfolio_matches(&["BTC-USD", "ETH-USD"], 500, 30)
            .into_iter()
            .map(Step::Text),
    );
    script.push(Step::KeepAlive(vec![
        heartbeat("BTC-USD", 530),
        heartbeat("ETH-USD", 1030),
    ]));
    let url = feed_server(vec![script]).await;

    let dir = tempfile::tempdir().unwrap();
    let config = embedded_config(dir.path(), &url, &["BTC-USD", "ETH-USD"]);

    let mut args = vec!["run".to_owned()];
    args.extend(config.args());
    args.extend(["--trigger", "available-now", "--progress", "json"].map(String::from));
    let log = records(&coinstream(dir.path(), &args));
    let progress: Vec<serde_json::Value> = log
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let rows: u64 = progress
        .iter()
        .map(|p| p["numInputRows"].as_u64().unwrap())
        .sum();
    assert_eq!(rows, 62, "{log}");
    assert!(
        log.contains("published"),
        "the source's counters are in the progress: {log}"
    );

    let table = query(
        &config,
        dir.path(),
        "SELECT symbol, count(*) AS n, min(trade_id) AS first, max(trade_id) AS last FROM profit GROUP BY symbol ORDER BY symbol",
    );
    assert_rows(
        &table,
        &[
            "| BTC-USD | 31 | 500   | 530  |",
            "| ETH-USD | 31 | 1000  | 1030 |",
        ],
    );
}

// ---- hostile input ---------------------------------------------------------------------------

/// A Coinbase Exchange stand-in as `../shared/cases/*/ws_script.py`: a subscribe naming `refused`
/// gets `{"type":"error","message":"Failed to subscribe","reason":"<refused> is not a valid
/// product"}` and then silence; any other gets `frames` (10 ms apart), then heartbeats.
async fn case_feed_server(
    refused: Option<&'static str>,
    frames: Vec<String>,
    heartbeats: bool,
) -> String {
    FeedServer::answering(1, move |_, requests| {
        let asked: serde_json::Value =
            serde_json::from_str(requests.first().map_or("{}", String::as_str)).unwrap_or_default();
        let products: Vec<String> = asked["product_ids"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|p| p.as_str())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        if let Some(refused) = refused.filter(|r| products.iter().any(|p| p == r)) {
            return vec![Step::Text(subscribe_error(refused))];
        }
        let mut steps: Vec<Step> = frames.iter().cloned().map(Step::Text).collect();
        if heartbeats {
            steps.push(Step::KeepAlive(
                products.iter().map(|p| heartbeat(p, 0)).collect(),
            ));
        }
        steps
    })
    .await
    .url
}

/// `pipelines/coinbase-embedded.toml` pointed at `url` and `products`, storing under `dir`.
fn embedded_config(dir: &std::path::Path, url: &str, products: &[&str]) -> Pipeline {
    Pipeline::shipped("pipelines/coinbase-embedded.toml")
        .set("source.url", url)
        .set("source.product_ids", products.to_vec())
        .set_path("sink.path", &dir.join("profit"))
        .set_path("dead_letter.path", &dir.join("dead_letters"))
}

/// The built binary run with `args` in `dir`, to its end.
fn coinstream(dir: &std::path::Path, args: &[impl AsRef<std::ffi::OsStr>]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_coinstream"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

fn run_available_now(config: &Pipeline, dir: &std::path::Path) -> std::process::Output {
    let mut args = vec!["run".to_owned()];
    args.extend(config.args());
    args.extend(["--trigger", "available-now"].map(String::from));
    coinstream(dir, &args)
}

/// The table `coinstream query` prints for `sql` (the run must succeed).
fn query(config: &Pipeline, dir: &std::path::Path, sql: &str) -> String {
    let mut args = vec!["query".to_owned()];
    args.extend(config.args());
    args.push(sql.to_owned());
    let out = coinstream(dir, &args);
    check(&out);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Asserts that `table` (as [`query`] prints it) has each of `rows`.
fn assert_rows(table: &str, rows: &[&str]) {
    for row in rows {
        assert!(table.contains(row), "{row} in {table}");
    }
}

/// The log (stderr without its colour codes) of a run that must have exited non-zero.
fn failure_log(out: &std::process::Output) -> String {
    let log = plain(&String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "the run should have failed: {log}");
    log
}

/// heartbeat-zero-false-loss, as its README runs it: the embedded pipeline on a feed whose
/// heartbeats say `last_trade_id: 0`: 4 trades stored, no "Trades lost", gaps=0 lost_trades=0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case_heartbeat_zero_false_loss_stores_four_trades_and_reports_no_loss() {
    let frames = testkit::coinbase::HEARTBEAT_ZERO_FALSE_LOSS_FRAMES;
    let url = case_feed_server(None, frames.lines().map(str::to_owned).collect(), true).await;
    let dir = tempfile::tempdir().unwrap();
    let config = embedded_config(dir.path(), &url, &["BTC-USD", "ETH-USD"]);
    let log = plain(&check(&run_available_now(&config, dir.path())));
    assert!(!log.contains("Trades lost"), "{log}");
    assert!(log.contains("gaps=0 lost_trades=0"), "{log}");
    let table = query(
        &config,
        dir.path(),
        "SELECT symbol, trade_id FROM profit ORDER BY symbol, trade_id",
    );
    assert_rows(
        &table,
        &[
            "| BTC-USD | 831102379 |",
            "| BTC-USD | 831102380 |",
            "| ETH-USD | 612558206 |",
            "| ETH-USD | 612558207 |",
        ],
    );
    assert_eq!(table.matches("-USD |").count(), 4, "{table}");
}

/// subscribe-error-reconnect-loop, as its README runs it: the exchange refuses DOT-USD; BTC-USD
/// and ETH-USD flow after DOT-USD is dropped with an ERROR naming it and the reason. With only
/// DOT-USD the run exits non-zero with that message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case_subscribe_error_drops_the_refused_product_and_the_others_flow() {
    let mut frames = vec![ack()];
    frames.extend(portfolio_matches(&["BTC-USD", "ETH-USD"], 700, 4));
    let url = case_feed_server(Some("DOT-USD"), frames, true).await;
    let dir = tempfile::tempdir().unwrap();
    let config = embedded_config(dir.path(), &url, &["BTC-USD", "ETH-USD", "DOT-USD"]);
    let log = plain(&check(&run_available_now(&config, dir.path())));
    let refused = log
        .lines()
        .find(|l| l.contains("The exchange refused a product"))
        .unwrap_or_else(|| panic!("no refusal logged: {log}"));
    assert!(
        refused.contains("ERROR")
            && refused.contains("DOT-USD")
            && refused.contains("DOT-USD is not a valid product"),
        "{refused}"
    );
    let table = query(
        &config,
        dir.path(),
        "SELECT symbol, count(*) AS n FROM profit GROUP BY symbol ORDER BY symbol",
    );
    assert_rows(&table, &["| BTC-USD | 5 |", "| ETH-USD | 5 |"]);

    let dir = tempfile::tempdir().unwrap();
    let config = embedded_config(dir.path(), &url, &["DOT-USD"]);
    let started = Instant::now();
    let out = run_available_now(&config, dir.path());
    let log = failure_log(&out);
    assert!(
        log.contains("DOT-USD is not a valid product") && log.contains("refused every product"),
        "{log}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "no reconnect loop"
    );
}

/// An ingester whose every message was unusable (a response shape it does not know: here the
/// Advanced Trade feed read as the Exchange feed) logs it once at ERROR and exits non-zero with
/// the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_coinbase_exits_non_zero_when_no_message_could_be_used() {
    let frame = r#"{"channel":"market_trades","client_id":"","timestamp":"2026-11-20T00:00:00.123456789Z","sequence_num":3,"events":[{"type":"update","trades":[{"trade_id":"12","product_id":"BTC-USD","price":"90000.1","size":"0.5","side":"SELL","time":"2026-11-20T00:00:00Z"}]}]}"#;
    let url = case_feed_server(None, vec![frame.to_owned(); 40], false).await;
    let topic = unique("trades_unusable");
    let child = ingest_command("coinbase", &url, &topic)
        .args(["--products", "BTC-USD"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // 40 frames 10 ms apart.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let out = output_within(child, Duration::from_secs(30));
    let log = failure_log(&out);
    assert!(
        log.contains("none of the 40 frames received could be used")
            && log.contains("message without a type"),
        "{log}"
    );
    let errors: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("Nothing the Coinbase feed sent could be used"))
        .collect();
    assert_eq!(errors.len(), 1, "{log}");
    assert!(errors[0].contains("ERROR"), "{}", errors[0]);
    assert!(
        log.matches("Unusable feed message skipped.").count() <= 10,
        "not one WARN per message: {log}"
    );
}

/// `ingest gateio --once` while the API is unreachable (a closed loopback port): each attempt is
/// logged with its number, no recovery is claimed, and after `max_attempts` (5 by default) the run
/// ends non-zero naming the URL and the reason, as a scheduler needs; it used to retry forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_gateio_once_exits_non_zero_when_the_api_is_unreachable() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}/api/v4", listener.local_addr().unwrap());
    drop(listener);
    let topic = unique("candles_unreachable");
    let mut cmd = ingest_command("gateio", &base, &topic);
    cmd.args(["--pairs", "BTC_USDT", "--once"]);
    // 5 attempts, pauses of at most 0.5 + 1 + 2 + 4 s.
    let out = wait_with_limit(cmd, Duration::from_secs(60));
    let log = failure_log(&out);
    let error = log
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_else(|| panic!("no error line: {log}"));
    assert!(
        error.contains(&format!(
            "GET {base}/spot/candlesticks?currency_pair=BTC_USDT"
        )) && error.contains("Connection refused")
            && error.contains("(gave up after 5 attempts)"),
        "{error}"
    );
    for attempt in 1..=4 {
        assert!(
            log.lines()
                .any(|l| l.contains("Gate.io request failed; retrying.")
                    && l.contains(&format!(" attempt={attempt} "))),
            "attempt {attempt} not logged: {log}"
        );
    }
    assert!(
        log.lines()
            .any(|l| l.contains("giving up") && l.contains(" attempt=5 ")),
        "{log}"
    );
    assert!(!log.contains("Recovered"), "a recovery was claimed: {log}");
}
