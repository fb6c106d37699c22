//! What `coinstream` prints for people and scripts, through the binary on the embedded default
//! pipeline (`coinstream.toml`, no servers): log lines without colour codes off a terminal or
//! with `NO_COLOR`, `--log-format json`, `--progress json` records alone on stdout, the default
//! `--log` filter (against the real Cassandra), and `query --format table|csv|json`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

mod common;

use common::{Pipeline, coinstream, embedded_config, ok};
use testkit::env::repo;

const BIN: &str = env!("CARGO_BIN_EXE_coinstream");
const LIMIT: Duration = Duration::from_secs(300);
const ESC: &str = "\x1b[";

/// A capture of `count` generated trades in `dir`.
fn capture(dir: &Path, count: u64) -> PathBuf {
    let feed = dir.join("feed.jsonl");
    let args: Vec<String> = ["generate", "--count", &count.to_string(), "--out"]
        .iter()
        .map(|a| (*a).to_owned())
        .chain([feed.display().to_string()])
        .collect();
    ok(common::wait_with_limit(coinstream(&args), LIMIT));
    feed
}

/// `run --trigger available-now` of `config` with `extra` flags before the config's.
fn run_args(config: &Pipeline, extra: &[&str]) -> Vec<String> {
    let mut all: Vec<String> = ["run", "--trigger", "available-now"]
        .iter()
        .chain(extra)
        .map(|a| (*a).to_owned())
        .collect();
    all.extend(config.args());
    all
}

/// A fresh embedded pipeline in its own folder over `count` trades.
fn pipeline(count: u64) -> (tempfile::TempDir, Pipeline) {
    let dir = tempfile::tempdir().unwrap();
    let feed = capture(dir.path(), count);
    let config = embedded_config(dir.path(), &feed);
    (dir, config)
}

/// `config` with its own checkpoint and store in `dir/name`, so each run reads the whole capture
/// and writes (and logs) the same.
fn fresh_store(config: &Pipeline, dir: &tempfile::TempDir, name: &str) -> Pipeline {
    config
        .clone()
        .set_path("engine.checkpoint_dir", &dir.path().join(name).join("cp"))
        .set_path("sink.path", &dir.path().join(name).join("profit"))
}

/// `args` run under a pseudo-terminal (util-linux `script`), so the binary's stderr is a
/// terminal; returns what the terminal showed (stdout discarded).
fn on_terminal(args: &[String], no_color: Option<&str>) -> String {
    let quoted: Vec<String> = std::iter::once(BIN.to_owned())
        .chain(args.iter().cloned())
        .map(|a| format!("'{}'", a.replace('\'', r"'\''")))
        .collect();
    let mut cmd = Command::new("script");
    cmd.args([
        "-qec",
        &format!("{} >/dev/null", quoted.join(" ")),
        "/dev/null",
    ])
    .current_dir(repo());
    match no_color {
        Some(v) => cmd.env("NO_COLOR", v),
        None => cmd.env_remove("NO_COLOR"),
    };
    ok(common::wait_with_limit(cmd, LIMIT)).0
}

#[test]
fn logs_to_a_pipe_carry_no_colour_codes() {
    let (_dir, config) = pipeline(300);
    let mut cmd = coinstream(&run_args(&config, &[]));
    cmd.env_remove("NO_COLOR");
    let (_, stderr) = ok(common::wait_with_limit(cmd, LIMIT));
    assert!(stderr.contains("Run finished."), "{stderr}");
    assert!(
        !stderr.contains(ESC),
        "colour codes in piped stderr:\n{stderr:?}"
    );
}

#[test]
fn logs_on_a_terminal_are_coloured_unless_no_color_is_set() {
    let (dir, config) = pipeline(300);
    // Each run its own store, so each run writes and logs the same.
    let fresh = |name: &str| fresh_store(&config, &dir, name);
    let coloured = on_terminal(&run_args(&fresh("a"), &[]), None);
    assert!(coloured.contains("Run finished."), "{coloured}");
    assert!(
        coloured.contains(ESC),
        "no colour at a terminal:\n{coloured:?}"
    );
    let plain = on_terminal(&run_args(&fresh("b"), &[]), Some("1"));
    assert!(plain.contains("Run finished."), "{plain}");
    assert!(
        !plain.contains(ESC),
        "colour despite NO_COLOR=1:\n{plain:?}"
    );
    // An empty NO_COLOR is as if unset (no-color.org).
    let empty = on_terminal(&run_args(&fresh("c"), &[]), Some(""));
    assert!(
        empty.contains(ESC),
        "no colour with NO_COLOR empty:\n{empty:?}"
    );
}

/// `coinstream run … | jq -c '[.batchId, .numInputRows]'` through a real shell pipe (bash with
/// `pipefail`, so a failing run fails the pipe too): jq fails on the first line of its input
/// that is not a JSON object, so its success means every line of the run's stdout was a progress
/// record. Returns jq's output, one `[batchId, numInputRows]` per record, and the run's stderr.
fn piped_through_jq(args: &[String], dir: &Path) -> (Vec<(u64, u64)>, String) {
    let stderr_file = dir.join("stderr.txt");
    let mut cmd = Command::new("bash");
    cmd.args([
        "-c",
        r#"set -o pipefail; "$0" "$@" 2>"$STDERR_FILE" | jq -c '[.batchId, .numInputRows]'"#,
        BIN,
    ])
    .args(args)
    .env("STDERR_FILE", &stderr_file)
    .current_dir(repo());
    let out = common::wait_with_limit(cmd, LIMIT);
    let stderr = std::fs::read_to_string(&stderr_file).unwrap_or_default();
    assert!(
        out.status.success(),
        "the pipe failed ({}): jq said {}\nthe run's stderr:\n{stderr}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let records = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let [id, rows]: [u64; 2] = serde_json::from_str(l).unwrap_or_else(|e| {
                panic!("{e}: jq printed {l:?}: a stdout line without batchId or numInputRows")
            });
            (id, rows)
        })
        .collect();
    (records, stderr)
}

/// The lines of the end-of-run report (`sql/reports/pnl_by_coin.sql`, an aligned table) in
/// `text`, which must hold its header.
fn report_lines(text: &str) -> Vec<&str> {
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with('|') || l.starts_with('+'))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with('|') && l.contains("symbol")),
        "no report table in:\n{text}"
    );
    lines
}

/// The records are the batches 0, 1, … in order, and they count every input row.
fn assert_records_cover(records: &[(u64, u64)], input_rows: u64) {
    assert!(!records.is_empty());
    let ids: Vec<u64> = records.iter().map(|r| r.0).collect();
    assert_eq!(ids, (0..records.len() as u64).collect::<Vec<_>>());
    assert_eq!(records.iter().map(|r| r.1).sum::<u64>(), input_rows);
}

/// With `--progress json`, stdout carries the progress records and nothing else, so
/// `run --progress json | jq` works; the logs and the end-of-run report go to stderr. With the
/// default `--progress human`, the progress lines go to stderr and the report to stdout.
#[test]
fn progress_json_goes_to_stdout_alone_and_the_report_to_stderr() {
    // Several batches, so several records.
    const SMALL: &str = "--max-records-per-batch=100";
    let (dir, config) = pipeline(300);
    // Each run its own store, so each run reads the whole capture.
    let fresh = |name: &str| fresh_store(&config, &dir, name);

    let (records, stderr) = piped_through_jq(
        &run_args(&fresh("json"), &["--progress", "json", SMALL]),
        dir.path(),
    );
    let finished = stderr
        .lines()
        .find(|l| l.contains("Run finished."))
        .unwrap_or_else(|| panic!("no `Run finished.` log line on stderr:\n{stderr}"));
    let logged: u64 = finished
        .split("input_rows=")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no input_rows in {finished:?}"));
    assert_eq!(logged, 300, "{finished}");
    assert_records_cover(&records, 300);
    assert!(records.len() >= 3, "{records:?}");
    report_lines(&stderr);
    assert!(
        !stderr.lines().any(|l| l.contains("numInputRows")),
        "a progress record on stderr:\n{stderr}"
    );

    // The default: a human line per batch on stderr, and on stdout only the report.
    let (stdout, stderr) = ok(common::wait_with_limit(
        coinstream(&run_args(&fresh("human"), &[SMALL])),
        LIMIT,
    ));
    let non_empty: Vec<&str> = stdout.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        report_lines(&stdout),
        non_empty,
        "only the report on stdout"
    );
    let batches = stderr.lines().filter(|l| l.starts_with("batch ")).count();
    assert_eq!(batches, records.len(), "{stderr}");
    assert!(stderr.contains("Run finished."), "{stderr}");
    assert!(!stdout.contains("Run finished."), "{stdout}");
}

/// A reader that stops early (`| head -n 1`) stops the records, not the run: it ends as it
/// would have, every row in the store.
#[test]
fn a_closed_stdout_stops_the_records_not_the_run() {
    let (dir, config) = pipeline(300);
    let mut cmd = Command::new("bash");
    cmd.args([
        "-c",
        r#"set -o pipefail; "$0" "$@" 2>/dev/null | head -n 1"#,
        BIN,
    ])
    // Thirty batches: head has long exited before the last records are written.
    .args(run_args(
        &config,
        &["--progress", "json", "--max-records-per-batch=10"],
    ))
    .current_dir(repo());
    let (first, _) = ok(common::wait_with_limit(cmd, LIMIT));
    let record: serde_json::Value = serde_json::from_str(first.trim()).unwrap();
    assert_eq!(record["batchId"], 0, "{first}");
    let expected = common::expected_rows(&dir.path().join("feed.jsonl"));
    let mut args = vec!["query".to_owned(), "--format".to_owned(), "csv".to_owned()];
    args.extend(config.args());
    args.push("SELECT count(*) AS n FROM profit".into());
    let (count, _) = ok(common::wait_with_limit(coinstream(&args), LIMIT));
    assert_eq!(
        count.lines().nth(1),
        Some(expected.len().to_string().as_str())
    );
}

/// `--log-format json` with `--progress json`: stdout still carries only the records, and
/// stderr holds one log object per line and the report, no record.
#[test]
fn log_format_json_prints_one_object_per_line() {
    let (dir, config) = pipeline(300);
    let (records, stderr) = piped_through_jq(
        &run_args(&config, &["--log-format", "json", "--progress", "json"]),
        dir.path(),
    );
    let report = report_lines(&stderr);
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty() && !report.contains(l))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect();
    for line in &lines {
        assert!(
            line["level"].is_string() && line["fields"]["message"].is_string(),
            "not a log object on stderr: {line}"
        );
    }
    let finished = lines
        .iter()
        .find(|l| l["fields"]["message"] == "Run finished.")
        .unwrap_or_else(|| panic!("no `Run finished.` log object in {stderr}"));
    assert_eq!(finished["level"], "INFO");
    assert_eq!(finished["fields"]["input_rows"], 300);
    assert_eq!(finished["target"], "coinstream::pipeline::run");
    assert_records_cover(&records, 300);
}

/// The Cassandra driver's routine INFO lines ("No sharding information received", "Node added
/// to cluster") stay out of the default filter; `--log info` shows them, so they are there to
/// hide. A query of a table no run created connects, then fails, and writes nothing.
#[test]
fn default_log_filter_hides_the_cassandra_drivers_routine_lines() {
    let query = |extra: &[&str]| {
        let mut args: Vec<String> = extra.iter().map(|a| (*a).to_owned()).collect();
        args.push("query".to_owned());
        args.extend(
            Pipeline::shipped("pipelines/kafka-cassandra.toml")
                .set("sink.keyspace", "system")
                .set("sink.table", common::unique("absent"))
                .args(),
        );
        args.push("SELECT 1".to_owned());
        let out = common::wait_with_limit(coinstream(&args), LIMIT);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "{stderr}");
        assert!(stderr.contains("does not exist yet"), "{stderr}");
        assert!(stderr.contains("Connected to Cassandra"), "{stderr}");
        stderr
    };
    let noisy = query(&["--log", "info"]);
    for line in ["No sharding information received", "Node added to cluster"] {
        assert!(noisy.contains(line), "{line:?} not in {noisy}");
    }
    let quiet = query(&[]);
    assert!(!quiet.contains("scylla"), "{quiet}");
}

/// `query --format table|csv|json` on the embedded store after a short run: each prints every
/// stored row with its exact profit, as the feed and the portfolio give it.
#[test]
fn query_formats_print_every_row_exactly() {
    use rust_decimal::Decimal;
    use std::collections::BTreeMap;
    use std::str::FromStr;

    let (dir, config) = pipeline(300);
    ok(common::wait_with_limit(
        coinstream(&run_args(&config, &[])),
        LIMIT,
    ));
    let expected = common::expected_rows(&dir.path().join("feed.jsonl"));
    assert!(expected.len() > 100, "{}", expected.len());
    let query = |format: &str| {
        let mut args = vec!["query".to_owned(), "--format".to_owned(), format.to_owned()];
        args.extend(config.args());
        args.push(
            "SELECT symbol, trade_id, profit, side FROM profit ORDER BY symbol, trade_id".into(),
        );
        ok(common::wait_with_limit(coinstream(&args), LIMIT)).0
    };
    type Rows = BTreeMap<(String, i64), (Decimal, String)>;
    let row = |symbol: &str, id: &str, profit: &str, side: &str| {
        (
            (symbol.to_owned(), id.parse::<i64>().unwrap()),
            (Decimal::from_str(profit).unwrap(), side.to_owned()),
        )
    };

    // Table: a border, the header, a border, one line per row, a border; every line as wide.
    let table = query("table");
    let lines: Vec<&str> = table.lines().filter(|l| !l.is_empty()).collect();
    assert!(
        lines.iter().all(|l| l.len() == lines[0].len()),
        "not aligned:\n{table}"
    );
    let cells = |l: &str| -> Vec<String> {
        l.trim_matches('|')
            .split('|')
            .map(|c| c.trim().to_owned())
            .collect()
    };
    assert_eq!(cells(lines[1]), ["symbol", "trade_id", "profit", "side"]);
    let from_table: Rows = lines[3..lines.len() - 1]
        .iter()
        .map(|l| {
            let c = cells(l);
            row(&c[0], &c[1], &c[2], &c[3])
        })
        .collect();
    assert_eq!(from_table, expected);
    assert_eq!(lines.len() - 4, expected.len());

    // CSV: a header, then one line per row.
    let csv = query("csv");
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("symbol,trade_id,profit,side"));
    let from_csv: Rows = lines
        .map(|l| {
            let c: Vec<&str> = l.split(',').collect();
            assert_eq!(c.len(), 4, "{l}");
            row(c[0], c[1], c[2], c[3])
        })
        .collect();
    assert_eq!(from_csv, expected);
    assert_eq!(csv.lines().count() - 1, expected.len());

    // JSON: one object per line; the profit an unquoted JSON number whose text is exact.
    let json = query("json");
    let from_json: Rows = json
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            assert_eq!(v.as_object().unwrap().len(), 4, "{l}");
            assert!(v["profit"].is_number(), "{l}");
            let text = l.split("\"profit\":").nth(1).unwrap();
            let text = &text[..text.find([',', '}']).unwrap()];
            row(
                v["symbol"].as_str().unwrap(),
                &v["trade_id"].to_string(),
                text,
                v["side"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(from_json, expected);
    assert_eq!(json.lines().count(), expected.len());
}

/// The end-of-run report (`sql/reports/pnl_by_coin.sql`) shows each coin's profit in cents,
/// rounded half away from zero from the newest stored row, whose value keeps its full scale.
#[test]
fn the_pnl_report_shows_profit_in_cents_and_the_store_keeps_every_digit() {
    use rust_decimal::{Decimal, RoundingStrategy};
    use std::collections::BTreeMap;
    use std::str::FromStr;

    let (_dir, config) = pipeline(400);
    let (report, _) = ok(common::wait_with_limit(
        coinstream(&run_args(&config, &[])),
        LIMIT,
    ));
    // The newest stored row per symbol, by (trade_time, trade_id), with its stored profit text.
    let mut args = vec!["query".to_owned(), "--format".to_owned(), "csv".to_owned()];
    args.extend(config.args());
    args.push("SELECT symbol, trade_time, trade_id, profit FROM profit".into());
    let (stored, _) = ok(common::wait_with_limit(coinstream(&args), LIMIT));
    let mut newest: BTreeMap<String, (chrono::DateTime<chrono::Utc>, i64, String)> =
        BTreeMap::new();
    for line in stored.lines().skip(1) {
        let c: Vec<&str> = line.split(',').collect();
        let key = (c[1].parse().unwrap(), c[2].parse::<i64>().unwrap());
        let scale = c[3].split('.').nth(1).map_or(0, str::len);
        assert_eq!(scale, 20, "stored profit keeps its scale: {line}");
        let entry = newest
            .entry(c[0].to_owned())
            .or_insert((key.0, key.1, c[3].to_owned()));
        if key > (entry.0, entry.1) {
            *entry = (key.0, key.1, c[3].to_owned());
        }
    }
    assert!(newest.len() > 5, "{stored}");

    let lines: Vec<&str> = report.lines().filter(|l| l.starts_with('|')).collect();
    let cells = |l: &str| -> Vec<String> {
        l.trim_matches('|')
            .split('|')
            .map(|c| c.trim().to_owned())
            .collect()
    };
    let header = cells(lines[0]);
    let (symbol, profit) = (
        header.iter().position(|h| h == "symbol").unwrap(),
        header.iter().position(|h| h == "profit").unwrap(),
    );
    let shown: BTreeMap<String, String> = lines[1..]
        .iter()
        .map(|l| {
            let c = cells(l);
            (c[symbol].clone(), c[profit].clone())
        })
        .collect();
    assert_eq!(
        shown.keys().collect::<Vec<_>>(),
        newest.keys().collect::<Vec<_>>()
    );
    for (sym, (_, _, full)) in &newest {
        let text = &shown[sym];
        assert_eq!(
            text.split('.').nth(1).map(str::len),
            Some(2),
            "{sym}: {text}"
        );
        let cents = Decimal::from_str(full)
            .unwrap()
            .round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero);
        assert_eq!(
            Decimal::from_str(text).unwrap(),
            cents,
            "{sym}: {full} shown as {text}"
        );
    }
}
