//! Stateful streaming on the real Kafka and Cassandra: `pipelines/ohlcv-cassandra.toml` (candles
//! in append mode, each window's row written once when the watermark passes its end) and
//! `pipelines/pnl-live-cassandra.toml` (the latest price and profit per product in update mode,
//! upserted by symbol), each over two runs so that the second continues the first's state.

use std::collections::BTreeMap;

use futures::TryStreamExt;
use rust_decimal::Decimal;
use scylla::value::{CqlDecimal, CqlTimestamp};

mod common;

use common::{Setup, check, decimal, produce, repo, session, wait_with_limit};

const MINUTE_MICROS: i64 = 60_000_000;
const DELAY_MICROS: i64 = 10_000_000;

/// A trade as produced: (symbol, trade_id, trade_time in µs, price text, size).
type Trade = (String, i64, i64, String, Decimal);

/// `n` generated trades from `generator`, as messages and as trades.
fn generate(
    generator: &mut connectors::generate::Generator,
    n: usize,
) -> (Vec<(String, Vec<u8>)>, Vec<Trade>) {
    let mut messages = Vec::new();
    let mut trades = Vec::new();
    for _ in 0..n {
        let trade = generator.next_trade();
        let record = generator.record(&trade, "2026-11-23T00:00:00.000000Z");
        let time = chrono::DateTime::parse_from_rfc3339(&record.trade_time)
            .unwrap()
            .timestamp_micros();
        trades.push((
            record.symbol.clone(),
            record.trade_id,
            time,
            record.price.clone(),
            record.size.parse().unwrap(),
        ));
        messages.push((record.symbol.clone(), record.to_json()));
    }
    (messages, trades)
}

/// Trades `spacing_us` apart on average from 2026-11-20.
fn generator(seed: u64, spacing_us: i64) -> connectors::generate::Generator {
    connectors::generate::Generator::from_files(
        &repo().join("required_data/my_Portfolio.json"),
        &repo().join("required_data/coin_map.json"),
        seed,
        1_795_132_800_000_000,
        spacing_us,
    )
    .unwrap()
}

fn run(setup: &Setup) -> String {
    check(&wait_with_limit(
        setup.run(&["--max-records-per-batch", "700"]),
        std::time::Duration::from_secs(300),
    ))
}

type Candle = (Decimal, Decimal, Decimal, Decimal, Decimal, i64);

/// The candles whose minute ends at or before `closed_by`, recomputed from the trades.
fn candles_of(trades: &[Trade], closed_by: i64) -> BTreeMap<(String, i64), Candle> {
    let mut windows: BTreeMap<(String, i64), Vec<&Trade>> = BTreeMap::new();
    for t in trades {
        windows
            .entry((t.0.clone(), t.2 - t.2.rem_euclid(MINUTE_MICROS)))
            .or_default()
            .push(t);
    }
    windows
        .into_iter()
        .filter(|((_, start), _)| start + MINUTE_MICROS <= closed_by)
        .map(|(key, mut ts)| {
            ts.sort_by_key(|t| (t.2, t.1));
            let price = |t: &Trade| t.3.parse::<Decimal>().unwrap().normalize();
            let candle = (
                price(ts[0]),
                ts.iter().map(|t| price(t)).max().unwrap(),
                ts.iter().map(|t| price(t)).min().unwrap(),
                price(ts[ts.len() - 1]),
                ts.iter().map(|t| t.4).sum::<Decimal>().normalize(),
                ts.len() as i64,
            );
            (key, candle)
        })
        .collect()
}

async fn stored_candles(
    session: &scylla::client::session::Session,
    keyspace: &str,
) -> BTreeMap<(String, i64), Candle> {
    let query = format!(
        "SELECT symbol, window_start, window_end, open, high, low, close, volume, trade_count \
         FROM \"{keyspace}\".ohlcv_1m"
    );
    type Row = (
        String,
        CqlTimestamp,
        CqlTimestamp,
        CqlDecimal,
        CqlDecimal,
        CqlDecimal,
        CqlDecimal,
        CqlDecimal,
        i64,
    );
    let mut rows = session
        .query_iter(query, &[])
        .await
        .unwrap()
        .rows_stream::<Row>()
        .unwrap();
    let mut out = BTreeMap::new();
    while let Some((symbol, start, end, o, h, l, c, v, n)) = rows.try_next().await.unwrap() {
        assert_eq!(
            end.0 - start.0,
            60_000,
            "window_end is one minute after window_start"
        );
        let d = |x: &CqlDecimal| decimal(x).normalize();
        out.insert(
            (symbol, start.0 * 1000),
            (d(&o), d(&h), d(&l), d(&c), d(&v), n),
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn candles_reach_cassandra_once_the_watermark_passes_and_open_windows_continue_next_run() {
    // One partition: the trades arrive in time order, so no row is late whatever the batches,
    // and the recomputation below is the exact expectation.
    let setup = Setup::shipped("ohlcv", "pipelines/ohlcv-cassandra.toml", 1).await;
    // About ten trades a second of event time: 1,500 trades span about 2.5 minutes.
    let mut generator = generator(7, 100_000);
    let (messages, mut trades) = generate(&mut generator, 1_500);
    produce(&setup.topic, &messages).await;
    let log = run(&setup);
    let session = session().await;
    let max = |trades: &[Trade]| trades.iter().map(|t| t.2).max().unwrap();
    let first = candles_of(&trades, max(&trades) - DELAY_MICROS);
    assert!(first.len() > 20, "{} candles closed", first.len());
    assert_eq!(
        stored_candles(&session, &setup.keyspace).await,
        first,
        "{log}"
    );

    // The next trades close the windows left open, whose first trades came in the first run.
    let (messages, more) = generate(&mut generator, 1_500);
    trades.extend(more);
    produce(&setup.topic, &messages).await;
    let log = run(&setup);
    assert!(log.contains("Restored the aggregation's state"), "{log}");
    let all = candles_of(&trades, max(&trades) - DELAY_MICROS);
    assert!(all.len() > first.len());
    assert_eq!(
        stored_candles(&session, &setup.keyspace).await,
        all,
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pnl_live_in_update_mode_keeps_each_products_latest_price_and_profit() {
    let setup = Setup::shipped("pnl", "pipelines/pnl-live-cassandra.toml", 6).await;
    let portfolio = testkit::profit::Portfolio::shipped();
    let mut generator = generator(11, 1_000);
    let session = session().await;
    let mut trades = Vec::new();
    for round in 0..2 {
        let (messages, more) = generate(&mut generator, 3_000);
        trades.extend(more);
        produce(&setup.topic, &messages).await;
        let log = run(&setup);
        // Per portfolio product: its latest trade by (time, id), and how many it had.
        let mut want: BTreeMap<String, (i64, Decimal, Decimal, i64)> = BTreeMap::new();
        let mut sorted: Vec<&Trade> = trades.iter().collect();
        sorted.sort_by_key(|t| (t.2, t.1));
        for t in sorted {
            if let Some(profit) = portfolio.profit_of_text(&t.0, &t.3) {
                let count = want.get(&t.0).map_or(0, |w| w.3) + 1;
                want.insert(
                    t.0.clone(),
                    (
                        t.1,
                        t.3.parse::<Decimal>().unwrap().normalize(),
                        profit.normalize(),
                        count,
                    ),
                );
            }
        }
        let query = format!(
            "SELECT symbol, trade_id, price, unrealised_profit, trades FROM \"{}\".pnl_live",
            setup.keyspace
        );
        let mut rows = session
            .query_iter(query, &[])
            .await
            .unwrap()
            .rows_stream::<(String, i64, CqlDecimal, CqlDecimal, i64)>()
            .unwrap();
        let mut got = BTreeMap::new();
        while let Some((symbol, id, price, profit, n)) = rows.try_next().await.unwrap() {
            got.insert(
                symbol,
                (
                    id,
                    decimal(&price).normalize(),
                    decimal(&profit).normalize(),
                    n,
                ),
            );
        }
        assert!(want.len() >= 5, "{want:?}");
        assert_eq!(got, want, "round {round}\n{log}");
        if round == 1 {
            assert!(log.contains("Restored the aggregation's state"), "{log}");
        }
    }
}
