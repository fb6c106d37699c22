//! Stateful streaming on the real Kafka and Cassandra: `pipelines/ohlcv-cassandra.toml` (candles
//! in append mode, each window's row written once when the watermark passes its end) and
//! `pipelines/pnl-live-cassandra.toml` (the latest price and profit per product in update mode,
//! upserted by symbol), each over two runs so that the second continues the first's state from
//! the shared state table; and two instances in one group, one stopped mid-run, its partitions'
//! open windows taken over by the other through that table.

use std::collections::BTreeMap;

use futures::TryStreamExt;
use rust_decimal::Decimal;
use scylla::value::{CqlDecimal, CqlTimestamp};

mod common;

use std::time::{Duration, Instant};

use common::{
    Running, Setup, check, decimal, produce, progress_sum, records, repo, session,
    wait_for_members, wait_with_limit,
};

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
            record.symbol.to_string(),
            record.trade_id,
            time,
            record.price.to_string(),
            record.size.parse().unwrap(),
        ));
        messages.push((record.symbol.to_string(), record.to_json()));
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
        Duration::from_secs(300),
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
    // The open windows came back from the shared state table.
    assert!(log.contains("Took over the aggregation state"), "{log}");
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
            assert!(log.contains("Took over the aggregation state"), "{log}");
        }
    }
}

async fn wait_for_no_lag(setup: &Setup) {
    common::wait_for_no_lag(&setup.group, &setup.topic, Duration::from_secs(300)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_one_stopped_mid_run_every_candle_exact_and_written_once() {
    let setup = Setup::shipped("ohlcv_pair", "pipelines/ohlcv-cassandra.toml", 6).await;
    // The watermark is one for the query (Spark's), while partitions are read side by side in
    // any order: trades come in three waves of 25 minutes of event time, each read to the end
    // before the next, and a delay of 30 minutes keeps every row of a wave on time, so the
    // recomputation below is exact.
    let watermark = r#"input.watermark={ column = "trade_time", delay = "30m" }"#;
    let config_a = setup.config.clone().set_flag(watermark);
    let second_dir = tempfile::tempdir().unwrap();
    let config_b = config_a.clone().set_path(
        "engine.checkpoint_dir",
        &second_dir.path().join("checkpoint"),
    );
    let mut generator = generator(5, 1_000_000);
    let mut trades = Vec::new();
    let args = ["--max-records-per-batch", "100"];
    let mut a = Running::spawn(setup.run_triggered(&config_a, "interval:100ms", &args));
    let b = Running::spawn(setup.run_triggered(&config_b, "interval:100ms", &args));
    wait_for_members(&setup.group, 2, Duration::from_secs(120));
    let mut wave = async |trades: &mut Vec<Trade>| {
        let (messages, more) = generate(&mut generator, 1_500);
        trades.extend(more);
        produce(&setup.topic, &messages).await;
    };
    wave(&mut trades).await;
    wait_for_no_lag(&setup).await;
    // Instance a stops in the middle of the second wave: its partitions, with their open
    // windows, go to b.
    let before = a.log().iter().filter(|l| l.starts_with('{')).count();
    wave(&mut trades).await;
    a.wait_for_batches(before + 2, Duration::from_secs(120));
    let log_a = a.terminate(Duration::from_secs(60));
    wait_for_no_lag(&setup).await;
    wave(&mut trades).await;
    wait_for_no_lag(&setup).await;
    // With nothing left to read, b closes the windows the final watermark passed in a batch
    // without records (Spark's no-data batch) while it runs: wait for their rows.
    let max = trades.iter().map(|t| t.2).max().unwrap();
    let want = candles_of(&trades, max - 30 * MINUTE_MICROS);
    let session = session().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut b = b;
    while stored_candles(&session, &setup.keyspace).await.len() < want.len()
        && Instant::now() < deadline
    {
        b.read_for(Duration::from_millis(200));
    }
    let log_b = b.terminate(Duration::from_secs(60));
    let (ra, rb) = (
        progress_sum(&log_a, "numInputRows"),
        progress_sum(&log_b, "numInputRows"),
    );
    assert!(ra > 0 && rb > 0, "a read {ra} before it stopped, b {rb}");
    assert_eq!(ra + rb, trades.len() as u64, "no message read by both");
    assert!(
        log_b.contains("Took over the aggregation state"),
        "b took a's partitions with their state:\n{log_b}"
    );
    let dropped: u64 = [&log_a, &log_b]
        .iter()
        .flat_map(|log| log.lines().filter(|l| l.starts_with('{')))
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["stateOperators"][0]
                ["numRowsDroppedByWatermark"]
                .as_u64()
                .unwrap_or(0)
        })
        .sum();
    assert_eq!(dropped, 0, "no row late\na:\n{log_a}\nb:\n{log_b}");
    assert!(want.len() > 200, "{} candles", want.len());
    let got = stored_candles(&session, &setup.keyspace).await;
    let missing: Vec<_> = want.keys().filter(|k| !got.contains_key(*k)).collect();
    let wrong: Vec<_> = want
        .iter()
        .filter(|(k, v)| got.get(*k).is_some_and(|g| g != *v))
        .map(|(k, _)| k)
        .collect();
    let extra: Vec<_> = got.keys().filter(|k| !want.contains_key(*k)).collect();
    assert!(
        missing.is_empty() && wrong.is_empty() && extra.is_empty(),
        "{} of {} candles missing (first {:?}), {} wrong (first {:?}), {} extra (first {:?})\na:\n{log_a}\nb:\n{log_b}",
        missing.len(),
        want.len(),
        missing.first(),
        wrong.len(),
        wrong.first(),
        extra.len(),
        extra.first()
    );
    // Each window written once over both instances (a Cassandra upsert would hide a second).
    let output_rows = |log: &str| -> u64 {
        log.lines()
            .filter(|l| l.starts_with('{'))
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["sink"]["numOutputRows"]
                    .as_u64()
                    .unwrap()
            })
            .sum()
    };
    let written = output_rows(&log_a) + output_rows(&log_b);
    assert_eq!(written, want.len() as u64, "a:\n{log_a}\nb:\n{log_b}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_in_six_partitions_is_read_evenly_so_no_partition_falls_behind_the_watermark() {
    // 30,000 trades, 20 a second of event time (25 minutes), in six partitions, drained in
    // batches of 2,000. Each batch takes from every partition a share by what it has left (as
    // Spark splits maxOffsetsPerTrigger), so event time advances evenly: a batch drawn from one
    // partition's backlog (librdkafka hands over one partition's fetch after another) would move
    // the watermark minutes past the other partitions' rows. What stays uneven is the trades'
    // own spread over partitions (about half a minute here), which a 3-minute delay covers.
    let setup = Setup::shipped("ohlcv_backlog", "pipelines/ohlcv-cassandra.toml", 6).await;
    let config = setup
        .config
        .clone()
        .set_flag(r#"input.watermark={ column = "trade_time", delay = "3m" }"#);
    let mut generator = generator(13, 50_000);
    let (messages, trades) = generate(&mut generator, 30_000);
    produce(&setup.topic, &messages).await;
    let log = records(&wait_with_limit(
        setup.run_with(&config, &["--max-records-per-batch", "2000"]),
        Duration::from_secs(300),
    ));
    let batches: Vec<serde_json::Value> = log
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(batches.len() >= 15, "{} batches", batches.len());
    // Every batch but the last few (whose partitions may have run out) reads all six.
    for b in &batches[..batches.len() - 3] {
        let ends = b["sources"][0]["endOffset"].as_object().unwrap();
        let parts = ends.values().next().unwrap().as_object().unwrap().len();
        assert_eq!(
            parts, 6,
            "batch {} read {parts} partitions: {b}",
            b["batchId"]
        );
    }
    let dropped: u64 = batches
        .iter()
        .map(|p| {
            p["stateOperators"][0]["numRowsDroppedByWatermark"]
                .as_u64()
                .unwrap_or(0)
        })
        .sum();
    assert_eq!(dropped, 0, "{log}");
    let max = trades.iter().map(|t| t.2).max().unwrap();
    let want = candles_of(&trades, max - 3 * MINUTE_MICROS);
    let session = session().await;
    assert_eq!(stored_candles(&session, &setup.keyspace).await, want);
}
