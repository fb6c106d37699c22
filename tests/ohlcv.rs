//! Stateful streaming through the binary: `pipelines/ohlcv.toml` (1-minute tumbling OHLCV
//! candles from trades, 10 s watermark, append mode, into a Delta table). Exact candles against a
//! recomputation from the capture with no code of ours, whatever the batch size; rows out of order
//! within the delay aggregated, late rows dropped, counted and dead-lettered; open windows kept in
//! the checkpoint across a restart; `kill -9` at random points and a restart writing each candle
//! once; update mode; the plan and progress records showing the state; refusals.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use rust_decimal::Decimal;

mod common;

use common::{Pipeline, args, assert_mentions, coinstream, delta_batches, ok, run_available_now};
use testkit::env::repo;

/// A candle as stored: (open, high, low, close, volume, trade_count), decimals normalised.
type Candle = (Decimal, Decimal, Decimal, Decimal, Decimal, i64);
/// `(symbol, window_start in µs since the epoch)` → candle.
type Candles = BTreeMap<(String, i64), Candle>;

const MINUTE_MICROS: i64 = 60_000_000;
const DELAY_MICROS: i64 = 10_000_000;

/// The standard error of `coinstream run --trigger available-now` with `config`, which must fail.
fn run_refused(config: &Pipeline) -> String {
    let out = common::wait_with_limit(
        coinstream(&args(&["run", "--trigger", "available-now"], config, &[])),
        Duration::from_secs(60),
    );
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `pipelines/ohlcv.toml` as shipped, over `feed`, with its outputs under `dir`.
fn ohlcv(dir: &Path, feed: &Path) -> Pipeline {
    Pipeline::shipped("pipelines/ohlcv.toml")
        .set_path("source.path", feed)
        .set_path("engine.checkpoint_dir", &dir.join("checkpoint"))
        .set_path("sink.path", &dir.join("ohlcv_1m"))
        .set_path("dead_letter.path", &dir.join("dead_letters"))
}

fn progress(log: &str) -> Vec<serde_json::Value> {
    log.lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The sum over batches of the stateful operator's `field`.
fn state_sum(log: &str, field: &str) -> u64 {
    progress(log)
        .iter()
        .map(|p| p["stateOperators"][0][field].as_u64().unwrap_or(0))
        .sum()
}

fn decimal(array: &dyn arrow::array::Array, row: usize) -> Decimal {
    use arrow::array::AsArray;
    use arrow::datatypes::{DataType, Decimal128Type};
    let DataType::Decimal128(_, scale) = array.data_type() else {
        panic!("not a decimal: {}", array.data_type());
    };
    Decimal::from_i128_with_scale(
        array.as_primitive::<Decimal128Type>().value(row),
        *scale as u32,
    )
    .normalize()
}

/// Every window of the Delta table at `table`, by (symbol, window start in µs), as `value` makes
/// it of its row (given a column reader and the row); panics on a window that is not
/// `width_micros` long or is stored twice.
fn windows<V>(
    table: &Path,
    width_micros: i64,
    value: impl Fn(&dyn Fn(&str) -> arrow::array::ArrayRef, usize) -> V,
) -> BTreeMap<(String, i64), V> {
    use arrow::array::AsArray;
    use arrow::datatypes::TimestampMicrosecondType;
    let mut windows = BTreeMap::new();
    for batch in delta_batches(table) {
        let col = |name: &str| batch.column(batch.schema().index_of(name).unwrap()).clone();
        let (symbol, start, end) = (col("symbol"), col("window_start"), col("window_end"));
        for row in 0..batch.num_rows() {
            let s = start.as_primitive::<TimestampMicrosecondType>().value(row);
            assert_eq!(
                end.as_primitive::<TimestampMicrosecondType>().value(row),
                s + width_micros,
                "window_end is {width_micros} µs after window_start"
            );
            let key = (symbol.as_string::<i32>().value(row).to_owned(), s);
            let previous = windows.insert(key.clone(), value(&col, row));
            assert!(previous.is_none(), "window {key:?} stored twice");
        }
    }
    windows
}

/// Every candle of the Delta table at `table`; panics on a window stored twice.
fn stored(table: &Path) -> Candles {
    use arrow::array::AsArray;
    use arrow::datatypes::Int64Type;
    windows(table, MINUTE_MICROS, |col, row| {
        (
            decimal(col("open").as_ref(), row),
            decimal(col("high").as_ref(), row),
            decimal(col("low").as_ref(), row),
            decimal(col("close").as_ref(), row),
            decimal(col("volume").as_ref(), row),
            col("trade_count").as_primitive::<Int64Type>().value(row),
        )
    })
}

/// A trade of a capture: (symbol, trade_id, time in µs, price, size).
type Trade = (String, i64, i64, Decimal, Decimal);

/// The trades of a capture of Coinbase feed messages, read with serde_json alone.
fn trades_of(feed: &Path) -> Vec<Trade> {
    common::feed_matches(feed)
        .iter()
        .map(|m| {
            let time = chrono::DateTime::parse_from_rfc3339(m["time"].as_str().unwrap())
                .unwrap()
                .timestamp_micros();
            (
                m["product_id"].as_str().unwrap().to_owned(),
                m["trade_id"].as_i64().unwrap(),
                time,
                m["price"].as_str().unwrap().parse().unwrap(),
                m["size"].as_str().unwrap().parse().unwrap(),
            )
        })
        .collect()
}

/// The candles of `trades` whose minute ends at or before `closed_by` (µs): open/close by
/// (time, trade id), exact sums.
fn candles_of(trades: &[Trade], closed_by: i64) -> Candles {
    let mut windows: BTreeMap<(String, i64), Vec<&Trade>> = BTreeMap::new();
    for t in trades {
        let start = t.2 - t.2.rem_euclid(MINUTE_MICROS);
        windows.entry((t.0.clone(), start)).or_default().push(t);
    }
    windows
        .into_iter()
        .filter(|((_, start), _)| start + MINUTE_MICROS <= closed_by)
        .map(|(key, mut ts)| {
            ts.sort_by_key(|t| (t.2, t.1));
            let prices = || ts.iter().map(|t| t.3);
            let candle = (
                ts[0].3.normalize(),
                prices().max().unwrap().normalize(),
                prices().min().unwrap().normalize(),
                ts[ts.len() - 1].3.normalize(),
                ts.iter().map(|t| t.4).sum::<Decimal>().normalize(),
                ts.len() as i64,
            );
            (key, candle)
        })
        .collect()
}

/// The candles the final watermark of an in-order capture closes.
fn expected(feed: &Path) -> Candles {
    let trades = trades_of(feed);
    let max = trades.iter().map(|t| t.2).max().unwrap();
    candles_of(&trades, max - DELAY_MICROS)
}

#[test]
fn candles_of_the_capture_are_exact_whatever_the_batch_size() {
    let feed = repo().join("required_data/sample_trades.jsonl");
    let want = expected(&feed);
    assert!(want.len() > 100, "{} candles", want.len());
    for max_records in ["2000", "137", "100000"] {
        let dir = tempfile::tempdir().unwrap();
        let config = ohlcv(dir.path(), &feed);
        let (log, _) = run_available_now(&config, max_records);
        // The capture is in order, so no row is late and the oracle above holds.
        assert_eq!(state_sum(&log, "numRowsDroppedByWatermark"), 0, "{log}");
        assert_eq!(
            stored(&dir.path().join("ohlcv_1m")),
            want,
            "batches of {max_records}"
        );
        let batches = progress(&log);
        let last = batches.last().unwrap();
        assert!(
            last["eventTime"]["watermark"].is_string(),
            "the watermark in the progress: {last}"
        );
        let op = &last["stateOperators"][0];
        assert_eq!(op["operatorName"], "stateStoreSave", "{last}");
        // The last minute of each product is still open, in the state.
        assert_eq!(op["numRowsTotal"].as_u64(), Some(13), "{last}");
        assert!(op["memoryUsedBytes"].as_u64().unwrap() > 0, "{last}");
        assert!(
            dir.path()
                .join("checkpoint/state")
                .read_dir()
                .unwrap()
                .count()
                > 0
        );
    }
}

/// A Coinbase `match` message.
fn frame(symbol: &str, id: i64, time: &str, price: &str, size: &str) -> String {
    serde_json::json!({
        "type": "match", "trade_id": id, "sequence": id * 10, "product_id": symbol,
        "maker_order_id": "m", "taker_order_id": "t", "side": "buy",
        "price": price, "size": size, "time": time,
    })
    .to_string()
}

fn write_feed(path: &Path, frames: &[String]) {
    std::fs::write(path, frames.join("\n") + "\n").unwrap();
}

fn d(text: &str) -> Decimal {
    text.parse::<Decimal>().unwrap().normalize()
}

fn candle(o: &str, h: &str, l: &str, c: &str, v: &str, n: i64) -> Candle {
    (d(o), d(h), d(l), d(c), d(v), n)
}

fn micros(time: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(time)
        .unwrap()
        .timestamp_micros()
}

/// One batch per message, so the watermark moves after each (Spark's semantics at their finest).
#[test]
fn rows_out_of_order_within_the_delay_count_late_ones_are_dropped_and_open_windows_survive_a_restart()
 {
    let dir = tempfile::tempdir().unwrap();
    let feed = dir.path().join("feed.jsonl");
    // As Spark: a batch closes windows with the watermark of the batches before it (the
    // largest time they held minus 10 s), and a row is late when it is older than the
    // watermark the previous batch closed windows with.
    let mut frames = vec![
        frame("BTC-USD", 1, "2026-11-20T10:00:05Z", "100", "1"),
        frame("BTC-USD", 2, "2026-11-20T10:00:30Z", "101", "1"),
        // Out of order, within the delay: it counts.
        frame("BTC-USD", 3, "2026-11-20T10:00:20Z", "99", "0.5"),
        // The largest time moves to 10:01:15: the next batch's watermark is 10:01:05.
        frame("BTC-USD", 4, "2026-11-20T10:01:15Z", "105", "2"),
        // This batch closes the 10:00 minute (watermark 10:01:05).
        frame("BTC-USD", 5, "2026-11-20T10:01:20Z", "106", "1"),
        // Older than the watermark the previous batch closed the 10:00 minute with: late,
        // dropped (its minute was written already), counted and dead-lettered.
        frame("BTC-USD", 6, "2026-11-20T10:00:50Z", "50", "7"),
        frame("ETH-USD", 1, "2026-11-20T10:01:59.999999Z", "3000", "1"),
        // The final watermark, 10:02:20, closes the 10:01 minutes in a batch without records at
        // the end of the run; 10:02 stays open.
        frame("BTC-USD", 7, "2026-11-20T10:02:30Z", "107", "1"),
    ];
    write_feed(&feed, &frames);
    let config = ohlcv(dir.path(), &feed).set_flag(
        r#"input.watermark={ column = "trade_time", delay = "10s", dead_letter = true }"#,
    );
    let (log, _) = run_available_now(&config, "1");
    let table = dir.path().join("ohlcv_1m");
    let minute = |m: &str| ("BTC-USD".to_owned(), micros(m));
    let mut want = Candles::from([
        (
            minute("2026-11-20T10:00:00Z"),
            candle("100", "101", "99", "101", "2.5", 3),
        ),
        (
            minute("2026-11-20T10:01:00Z"),
            candle("105", "106", "105", "106", "3", 2),
        ),
        (
            ("ETH-USD".to_owned(), micros("2026-11-20T10:01:00Z")),
            candle("3000", "3000", "3000", "3000", "1", 1),
        ),
    ]);
    assert_eq!(stored(&table), want, "{log}");
    assert_eq!(state_sum(&log, "numRowsDroppedByWatermark"), 1, "{log}");
    let letters: Vec<String> = std::fs::read_dir(dir.path().join("dead_letters"))
        .unwrap()
        .flat_map(|e| {
            std::fs::read_to_string(e.unwrap().path())
                .unwrap()
                .lines()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert!(
        letters[0].contains("late") && letters[0].contains("\\\"trade_id\\\":6"),
        "{}",
        letters[0]
    );

    // More trades arrive; a second run continues the open 10:02 minute from the checkpoint's
    // state (its first trade came in the first run).
    frames.push(frame("BTC-USD", 8, "2026-11-20T10:02:40Z", "104", "1"));
    frames.push(frame("BTC-USD", 9, "2026-11-20T10:03:50Z", "110", "1"));
    write_feed(&feed, &frames);
    let (_, log) = run_available_now(&config, "1");
    assert!(log.contains("Restored the aggregation's state"), "{log}");
    want.insert(
        minute("2026-11-20T10:02:00Z"),
        candle("107", "107", "104", "104", "2", 2),
    );
    assert_eq!(stored(&table), want, "{log}");
}

#[test]
fn kill_9_at_random_points_then_a_restart_writes_each_candle_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let feed = repo().join("required_data/sample_trades.jsonl");
    let config = ohlcv(dir.path(), &feed);
    // Each kill at another point of the batch cycle (aggregation, Delta commit, state save, checkpoint
    // commit). `stored` panics on a candle written twice.
    common::assert_exactly_once_after_kills(&config, "20", expected(&feed), || {
        stored(&dir.path().join("ohlcv_1m"))
    });
}

#[test]
fn update_mode_writes_a_window_in_every_batch_that_changes_it() {
    let dir = tempfile::tempdir().unwrap();
    let feed = dir.path().join("feed.jsonl");
    write_feed(
        &feed,
        &[
            frame("BTC-USD", 1, "2026-11-20T10:00:05Z", "100", "1"),
            frame("BTC-USD", 2, "2026-11-20T10:00:30Z", "101", "1"),
            frame("BTC-USD", 3, "2026-11-20T10:00:40Z", "99", "1"),
        ],
    );
    let config = ohlcv(dir.path(), &feed)
        .set("transforms.output_mode", "update")
        .set_path("sink.path", &dir.path().join("parquet"))
        .set("sink.type", "parquet");
    let (log, _) = run_available_now(&config, "1");
    // Each one-message batch wrote its window as it then stood: three versions of one candle,
    // the window still open (update mode writes before the watermark passes).
    let outputs: Vec<u64> = progress(&log)
        .iter()
        .map(|p| p["sink"]["numOutputRows"].as_u64().unwrap())
        .collect();
    assert_eq!(outputs, [1, 1, 1], "{log}");
    let mut counts: Vec<i64> = common::parquet_batches(&dir.path().join("parquet"))
        .iter()
        .flat_map(|b| {
            use arrow::array::AsArray;
            let c = b.column(b.schema().index_of("trade_count").unwrap());
            c.as_primitive::<arrow::datatypes::Int64Type>()
                .values()
                .to_vec()
        })
        .collect();
    counts.sort();
    assert_eq!(counts, [1, 2, 3]);
}

#[test]
fn explain_shows_the_stateful_aggregation_its_window_mode_and_watermark() {
    let out = ok_stdout(coinstream(&args(
        &["explain"],
        &Pipeline::shipped("pipelines/ohlcv.toml"),
        &[],
    )));
    for part in [
        "-- stateful aggregation",
        "keys: symbol, w (window: closed when the watermark passes its end)",
        "output mode: append",
        "watermark: trade_time - 10s",
        "AggregateExec: mode=Partial",
    ] {
        assert!(out.contains(part), "{part:?} missing from\n{out}");
    }
}

fn ok_stdout(mut cmd: Command) -> String {
    ok(cmd.output().unwrap()).0
}

#[test]
fn append_mode_without_a_watermark_or_without_a_window_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let feed = repo().join("required_data/sample_trades.jsonl");
    let no_watermark = ohlcv(dir.path(), &feed).set_flag(r#"input={ table = "trades" }"#);
    assert_mentions(
        &run_refused(&no_watermark),
        &["append output mode needs a watermark"],
    );
    assert!(
        !dir.path().join("ohlcv_1m").exists(),
        "nothing written before the refusal"
    );
    let wrong_column =
        ohlcv(dir.path(), &feed).set_flag(r#"input.watermark={ column = "price", delay = "10s" }"#);
    assert_mentions(
        &run_refused(&wrong_column),
        &["input.watermark.column", "not a timestamp"],
    );
}

#[test]
fn hopping_windows_count_every_trade_in_each_window_that_holds_it() {
    let dir = tempfile::tempdir().unwrap();
    let sql = repo().join("tests/fixtures/hop_3m.sql");
    let feed = repo().join("required_data/sample_trades.jsonl");
    let config = ohlcv(dir.path(), &feed)
        .set("transforms.files", vec![sql.display().to_string()])
        .set("transforms.output", "hop_3m");
    let (log, _) = run_available_now(&config, "700");
    assert_eq!(state_sum(&log, "numRowsDroppedByWatermark"), 0, "{log}");
    // The oracle: each trade in the three windows that hold it, closed by the final watermark.
    let trades = trades_of(&feed);
    let max = trades.iter().map(|t| t.2).max().unwrap();
    let mut want: BTreeMap<(String, i64), (i64, Decimal)> = BTreeMap::new();
    for t in &trades {
        let latest = t.2 - t.2.rem_euclid(MINUTE_MICROS);
        for k in 0..3 {
            let start = latest - k * MINUTE_MICROS;
            if start + 3 * MINUTE_MICROS <= max - DELAY_MICROS {
                let entry = want.entry((t.0.clone(), start)).or_default();
                entry.0 += 1;
                entry.1 += t.4;
            }
        }
    }
    use arrow::array::AsArray;
    use arrow::datatypes::Int64Type;
    let got = windows(
        &dir.path().join("ohlcv_1m"),
        3 * MINUTE_MICROS,
        |col, row| {
            (
                col("trade_count").as_primitive::<Int64Type>().value(row),
                decimal(col("volume").as_ref(), row),
            )
        },
    );
    let want: BTreeMap<_, _> = want
        .into_iter()
        .map(|(k, (n, v))| (k, (n, v.normalize())))
        .collect();
    assert!(want.len() > 50, "{} windows", want.len());
    assert_eq!(got, want);
}
