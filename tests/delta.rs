//! The embedded default store, a Delta Lake table (`[sink] type = "delta"` in `coinstream.toml`),
//! through the binary: every row once, one commit per batch with its `txn`, a replayed batch
//! recognised by the table, `kill -9` at random points, compaction while the stream writes and
//! readers query, `coinstream compact`, and `query --as-of`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use rust_decimal::Decimal;

mod common;

use common::{
    Pipeline, Running, args, coinstream, embedded_config as config, expected_rows, ok,
    parquet_batches, run_available_now,
};
use testkit::env::repo;

/// A fresh temp dir, the sample capture (`required_data/sample_trades.jsonl`) and the default
/// pipeline over it, writing into the temp dir.
fn sample() -> (tempfile::TempDir, PathBuf, Pipeline) {
    let dir = tempfile::tempdir().unwrap();
    let feed = repo().join("required_data/sample_trades.jsonl");
    let cfg = config(dir.path(), &feed);
    (dir, feed, cfg)
}

/// `(symbol, trade_id) → (profit, side)` of every row of the table; panics on a row stored twice.
fn stored(table: &Path) -> BTreeMap<(String, i64), (Decimal, String)> {
    use arrow::array::{Array, AsArray, Decimal128Array};
    use arrow::datatypes::Int64Type;
    let mut rows = BTreeMap::new();
    for batch in parquet_batches(table) {
        let col = |name: &str| batch.column(batch.schema().index_of(name).unwrap()).clone();
        let (symbol, ids, profit, side) =
            (col("symbol"), col("trade_id"), col("profit"), col("side"));
        let profit = profit.as_any().downcast_ref::<Decimal128Array>().unwrap();
        for i in 0..batch.num_rows() {
            let key = (
                symbol.as_string::<i32>().value(i).to_owned(),
                ids.as_primitive::<Int64Type>().value(i),
            );
            let value = (
                profit.value_as_string(i).parse().unwrap(),
                side.as_string::<i32>().value(i).to_owned(),
            );
            assert!(
                rows.insert(key.clone(), value).is_none(),
                "{key:?} stored twice"
            );
        }
    }
    rows
}

/// The table's commits as their files hold them: `(version, actions)`.
fn commits(table: &Path) -> Vec<(u64, Vec<serde_json::Value>)> {
    let mut commits: Vec<(u64, Vec<serde_json::Value>)> =
        std::fs::read_dir(table.join("_delta_log"))
            .unwrap()
            .filter_map(|e| {
                let path = e.unwrap().path();
                let version = path
                    .file_name()?
                    .to_str()?
                    .strip_suffix(".json")?
                    .parse()
                    .ok()?;
                let actions = std::fs::read_to_string(&path)
                    .unwrap()
                    .lines()
                    .map(|l| serde_json::from_str(l).unwrap())
                    .collect();
                Some((version, actions))
            })
            .collect();
    commits.sort_by_key(|(v, _)| *v);
    commits
}

/// The query id the checkpoint recorded (the `txn` application id).
fn query_id(dir: &Path) -> String {
    let metadata = std::fs::read_to_string(dir.join("data/checkpoint/metadata")).unwrap();
    serde_json::from_str::<serde_json::Value>(&metadata).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn query(config: &Pipeline, sql: &str, extra: &[&str]) -> Output {
    let mut all = args(&["query"], config, extra);
    all.push(sql.to_owned());
    common::wait_with_limit(coinstream(&all), Duration::from_secs(120))
}

/// The cells of the first row a two-column query prints.
fn numbers(table_text: &str) -> [u64; 2] {
    table_text
        .lines()
        .find_map(|l| {
            let cells: Vec<u64> = l.split('|').filter_map(|c| c.trim().parse().ok()).collect();
            <[u64; 2]>::try_from(cells).ok()
        })
        .unwrap_or_else(|| panic!("no row of two numbers in {table_text}"))
}

/// The single number a one-cell query prints.
fn number(table_text: &str) -> u64 {
    table_text
        .lines()
        .filter_map(|l| l.trim_matches(|c| c == '|' || c == ' ').parse().ok())
        .next()
        .unwrap_or_else(|| panic!("no number in {table_text}"))
}

#[test]
fn the_default_run_commits_each_batch_once_with_its_txn_and_time_travel_reads_older_versions() {
    let (dir, feed, cfg) = sample();
    let (records, _) = run_available_now(&cfg, "2000");
    let table = dir.path().join("data/profit");
    let expected = expected_rows(&feed);
    assert_eq!(
        stored(&table),
        expected,
        "every portfolio trade once, its profit exact"
    );

    // One commit per batch that had rows, each with the query's txn, versions = batch ids.
    let id = query_id(dir.path());
    let with_rows: Vec<i64> = records
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|p| p["sink"]["numOutputRows"].as_u64() > Some(0))
        .map(|p| p["batchId"].as_i64().unwrap())
        .collect();
    let txns: Vec<i64> = commits(&table)
        .iter()
        .flat_map(|(_, actions)| actions.iter().filter_map(|a| a.get("txn")))
        .map(|t| {
            assert_eq!(t["appId"], id.as_str(), "{t}");
            t["version"].as_i64().unwrap()
        })
        .collect();
    assert_eq!(txns, with_rows, "{records}");
    assert!(
        with_rows.len() >= 5,
        "the sample is 5 batches of rows: {records}"
    );

    // The log keeps commits for the configured time (a short default: each commit lists it).
    let metadata = commits(&table)[0]
        .1
        .iter()
        .find_map(|a| a.get("metaData").cloned())
        .unwrap();
    assert_eq!(
        metadata["configuration"]["delta.logRetentionDuration"],
        "interval 172800 seconds"
    );

    // Version 0 creates the table, empty, when the query binds to it; version 1 holds exactly
    // the rows the first batch's commit added.
    let first_rows: u64 = commits(&table)[1]
        .1
        .iter()
        .filter_map(|a| a.get("add"))
        .map(|add| {
            let stats: serde_json::Value =
                serde_json::from_str(add["stats"].as_str().unwrap()).unwrap();
            stats["numRecords"].as_u64().unwrap()
        })
        .sum();
    let count = "SELECT count(*) FROM profit";
    let (at_zero, _) = ok(query(&cfg, count, &["--as-of", "0"]));
    assert_eq!(number(&at_zero), 0);
    let (at_one, _) = ok(query(&cfg, count, &["--as-of", "1"]));
    assert_eq!(number(&at_one), first_rows);
    assert!(first_rows > 0 && first_rows < expected.len() as u64);
    let (now, _) = ok(query(
        &cfg,
        count,
        &["--as-of", &chrono::Utc::now().to_rfc3339()],
    ));
    assert_eq!(number(&now), expected.len() as u64);
    let before = query(&cfg, count, &["--as-of", "2000-01-01T00:00:00Z"]);
    assert!(
        !before.status.success(),
        "no version before the first commit"
    );
    let not_a_version = query(&cfg, count, &["--as-of", "yesterday"]);
    assert!(
        String::from_utf8_lossy(&not_a_version.stderr).contains("neither a table version"),
        "{not_a_version:?}"
    );
}

#[test]
fn a_batch_committed_to_the_table_but_not_to_the_checkpoint_is_not_written_again() {
    let (dir, feed, cfg) = sample();
    run_available_now(&cfg, "2000");
    let table = dir.path().join("data/profit");
    let versions = commits(&table).len();
    // A crash after the Delta commit of the last batch with rows and before the checkpoint's
    // commit log: that batch's commit entry is missing (and the empty batch that ended the run
    // never planned), so the restart replays it.
    let checkpoint = dir.path().join("data/checkpoint");
    let last = commits(&table)
        .iter()
        .flat_map(|(_, actions)| actions.iter().filter_map(|a| a.get("txn")))
        .map(|t| t["version"].as_u64().unwrap())
        .max()
        .unwrap();
    for log in ["offsets", "commits"] {
        for entry in std::fs::read_dir(checkpoint.join(log)).unwrap() {
            let path = entry.unwrap().path();
            let id: u64 = path.file_name().unwrap().to_str().unwrap().parse().unwrap();
            if id > last || (log == "commits" && id == last) {
                std::fs::remove_file(path).unwrap();
            }
        }
    }
    let (_, log) = run_available_now(&cfg, "2000");
    assert!(log.contains("Replaying a batch"), "{log}");
    assert!(log.contains("already holds this batch"), "{log}");
    assert_eq!(commits(&table).len(), versions, "no new commit");
    assert_eq!(stored(&table), expected_rows(&feed));
}

#[test]
fn kill_9_at_random_points_then_a_restart_stores_every_trade_exactly_once() {
    let (dir, feed, cfg) = sample();
    // Each kill at another point of the batch cycle (decode, write, Delta commit, checkpoint commit).
    common::assert_exactly_once_after_kills(&cfg, "20", expected_rows(&feed), || {
        stored(&dir.path().join("data/profit"))
    });
}

/// A capture of `count` trades spread over days of trade time (one every `gap_secs`).
fn spread_capture(dir: &Path, count: u64, gap_secs: u64) -> PathBuf {
    let feed = dir.join("spread.jsonl");
    let rate = format!("{}", 1.0 / gap_secs as f64);
    ok(common::wait_with_limit(
        coinstream(&[
            "generate".into(),
            "--count".into(),
            count.to_string(),
            "--rate".into(),
            rate,
            "--start".into(),
            "2026-11-20T00:00:00Z".into(),
            "--out".into(),
            feed.display().to_string(),
        ]),
        Duration::from_secs(60),
    ));
    feed
}

/// Data files of the table's latest version by partition (`symbol=…/trade_date=…`).
fn files_per_partition(table: &Path) -> Vec<(String, usize)> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let table = connectors::delta::open(table).await.unwrap();
        let mut files: Vec<(String, usize)> = connectors::delta::files_by_partition(&table)
            .unwrap()
            .into_iter()
            .map(|(values, files)| {
                let name = values
                    .iter()
                    .map(|(k, v)| format!("{k}={}", v.as_deref().unwrap_or("null")))
                    .collect::<Vec<_>>()
                    .join("/");
                (name, files.len())
            })
            .collect();
        files.sort();
        files
    })
}

/// Data files of the table's latest version, and its partitions.
fn live_files(table: &Path) -> (usize, usize) {
    let files = files_per_partition(table);
    (files.iter().map(|(_, n)| n).sum(), files.len())
}

#[test]
fn compaction_while_the_stream_writes_and_readers_query_loses_and_doubles_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // 1,500 trades 3 minutes apart: about three days, so earlier days' partitions go idle.
    let feed = spread_capture(dir.path(), 1500, 180);
    let cfg = config(dir.path(), &feed)
        .set("sink.compaction.every_batches", 10)
        .set("sink.compaction.retention", "0s");
    let mut running = Running::spawn(coinstream(&args(
        &["run", "--trigger", "interval:20ms", "--progress", "json"],
        &cfg,
        &["--max-records-per-batch", "15"],
    )));
    // Readers during the run: a reader that saw a partition's old files and its merged file
    // together would count rows twice.
    let expected = expected_rows(&feed);
    let started = Instant::now();
    let mut reads = 0;
    let check = "SELECT count(*), count(DISTINCT symbol || ':' || CAST(trade_id AS VARCHAR)) \
                 FROM profit";
    loop {
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "the run did not store every row in 240 s"
        );
        let out = query(&cfg, check, &[]);
        running.read_for(Duration::from_millis(50));
        if !out.status.success() {
            continue; // no table yet
        }
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let [rows, distinct] = numbers(&text);
        assert_eq!(rows, distinct, "a reader saw doubled rows: {text}");
        reads += 1;
        if rows == expected.len() as u64 {
            break;
        }
    }
    // Past the last batch, a compaction is due after at most 10 more (empty batches do not
    // count): let the run end on its own terms, then check what it left.
    let log = running.terminate(Duration::from_secs(60));
    let table = dir.path().join("data/profit");
    assert!(reads >= 3, "readers ran during the stream: {reads}");
    let compactions: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("Compacted idle partitions"))
        .collect();
    assert!(
        compactions.iter().any(|l| !l.contains("done=0 partitions")),
        "{log}"
    );
    assert_eq!(stored(&table), expected);
    // The first day's partitions stopped receiving data a day of trade time before the end:
    // each is one file now.
    let first_day = files_per_partition(&table)
        .into_iter()
        .filter(|(partition, _)| partition.contains("trade_date=2026-11-20"))
        .collect::<Vec<_>>();
    assert!(first_day.len() >= 5, "{first_day:?}");
    assert!(
        first_day.iter().all(|(_, files)| *files == 1),
        "{first_day:?}"
    );

    // `coinstream compact`: every partition down to one file; rows unchanged.
    let (out, _) = ok(common::wait_with_limit(
        coinstream(&args(&["compact"], &cfg, &["--retention", "0s"])),
        Duration::from_secs(120),
    ));
    assert!(out.contains("partitions compacted"), "{out}");
    let (files, partitions) = live_files(&table);
    assert_eq!(files, partitions, "one file per partition: {out}");
    assert_eq!(stored(&table), expected);
}

#[test]
fn a_checkpoint_whose_batches_went_to_another_store_is_refused_rather_than_skipping_them() {
    let dir = tempfile::tempdir().unwrap();
    let feed = repo().join("required_data/sample_trades.jsonl");
    // The earlier default: the same path as a Parquet folder, with its checkpoint.
    let parquet = config(dir.path(), &feed).set("sink.type", "parquet");
    run_available_now(&parquet, "2000");
    let table = dir.path().join("data/profit");

    let out = common::wait_with_limit(
        coinstream(&args(
            &["run", "--trigger", "available-now"],
            &config(dir.path(), &feed),
            &[],
        )),
        Duration::from_secs(120),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("checkpoint says it committed") && err.contains("no Delta table here"),
        "{err}"
    );
    assert!(
        !table.join("_delta_log").exists(),
        "no empty table left behind"
    );
}
