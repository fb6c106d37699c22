//! The `coinstream` binary end to end on the embedded pipeline (replay → profit.sql → Parquet),
//! with every stored row checked against an independent computation of its profit.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::str::FromStr;

use arrow::array::{Array, AsArray};
use arrow::datatypes::Int64Type;
use rust_decimal::Decimal;

mod common;

use common::{Pipeline, assert_mentions, embedded_config as config};
use testkit::coinbase::{RESTART_PART_A, RESTART_PART_B};
use testkit::env::repo;

fn coinstream(args: &[impl AsRef<std::ffi::OsStr>]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_coinstream"))
        .args(args)
        .current_dir(repo())
        .output()
        .expect("the binary runs")
}

/// `args` then the arguments of `config`.
fn with_config(args: &[&str], config: &Pipeline) -> Vec<String> {
    let mut all: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    all.extend(config.args());
    all
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts that the standard error of `out` holds `text`, showing it when not.
fn assert_stderr_has(out: &Output, text: &str) {
    let stderr = stderr(out);
    assert!(stderr.contains(text), "{stderr}");
}

/// `(symbol, trade_id) → (profit, side)` as read back from every Parquet file under `root`.
fn stored_rows(root: &Path) -> Vec<((String, i64), (Decimal, String))> {
    let mut rows = Vec::new();
    for batch in common::parquet_batches(root) {
        let col = |name: &str| batch.column(batch.schema().index_of(name).unwrap()).clone();
        let symbol = col("symbol");
        let symbol = symbol.as_string::<i32>();
        let ids = col("trade_id");
        let ids = ids.as_primitive::<Int64Type>();
        let side = col("side");
        let side = side.as_string::<i32>();
        let profit = col("profit");
        let profit = profit
            .as_any()
            .downcast_ref::<arrow::array::Decimal128Array>()
            .unwrap();
        for i in 0..batch.num_rows() {
            assert!(!profit.is_null(i));
            rows.push((
                (symbol.value(i).to_owned(), ids.value(i)),
                (
                    Decimal::from_str(&profit.value_as_string(i)).unwrap(),
                    side.value(i).to_owned(),
                ),
            ));
        }
    }
    rows
}

/// One test's folder, with the shipped config pointed at a feed and its outputs in the folder.
struct Project {
    dir: tempfile::TempDir,
    feed: PathBuf,
    cfg: Pipeline,
}

impl Project {
    /// On the feed file `feed`.
    fn on(feed: PathBuf) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), &feed);
        Self { dir, feed, cfg }
    }

    /// On a feed file in the folder holding `text`.
    fn with_feed(text: impl AsRef<[u8]>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let feed = dir.path().join("feed.jsonl");
        std::fs::write(&feed, text).unwrap();
        let cfg = config(dir.path(), &feed);
        Self { dir, feed, cfg }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `coinstream query <config> <sql>` in the repository.
    fn query(&self, sql: &str) -> Output {
        let mut args = with_config(&["query"], &self.cfg);
        args.push(sql.to_owned());
        coinstream(&args)
    }

    /// `coinstream run <config> --trigger available-now --progress json` in the folder.
    fn run(&self) -> Output {
        run_in(self.path(), &self.cfg.args())
    }

    /// [`Project::run`], which must succeed.
    fn run_ok(&self) -> Output {
        let out = self.run();
        assert!(out.status.success(), "run failed: {}", stderr(&out));
        out
    }

    /// What the Parquet store holds.
    fn stored(&self) -> Vec<((String, i64), (Decimal, String))> {
        stored_rows(&self.path().join("data/profit"))
    }

    /// What the store holds, by key.
    fn stored_by_key(&self) -> BTreeMap<(String, i64), (Decimal, String)> {
        self.stored().into_iter().collect()
    }

    /// The dead letters written, by offset.
    fn dead_letters(&self) -> Vec<serde_json::Value> {
        dead_letters(&self.path().join("data/dead_letters"))
    }
}

#[test]
fn available_now_run_stores_every_portfolio_trade_with_its_exact_profit() {
    let mut project = Project::on(repo().join("required_data/sample_trades.jsonl"));
    // The shipped config reads a capture in batches of up to 50,000; a 2,000-record cap makes
    // the sample several batches, whose ids must follow each other.
    project.cfg = project.cfg.set("engine.max_records_per_batch", 2000);
    let out = project.run_ok();
    let progress = progress_lines(&out);
    assert!(
        progress.len() >= 5,
        "the 2000-record cap makes several batches: {}",
        stderr(&out)
    );
    for (i, p) in progress.iter().enumerate() {
        assert_eq!(p["batchId"], i as u64);
    }
    let input: u64 = progress
        .iter()
        .map(|p| p["numInputRows"].as_u64().unwrap())
        .sum();

    let stored = project.stored();
    let expected = common::expected_rows(&project.feed);
    assert!(
        expected.len() > 8_000,
        "the sample holds ~10,000 trades, most in the portfolio"
    );
    assert!(
        input as usize > expected.len(),
        "non-portfolio trades are read too"
    );
    assert_eq!(stored.len(), expected.len(), "one row per portfolio trade");
    let stored: BTreeMap<_, _> = stored.into_iter().collect();
    assert_eq!(stored.len(), expected.len(), "no trade stored twice");
    for (key, (profit, side)) in &expected {
        let (got_profit, got_side) = stored
            .get(key)
            .unwrap_or_else(|| panic!("trade {key:?} missing"));
        assert_eq!(got_profit, profit, "profit of {key:?}");
        assert_eq!(got_side, side, "taker side of {key:?}");
    }

    // The report (on stderr, as stdout carries the progress records) and `query` read the
    // same store.
    assert!(stderr(&out).contains("| Bitcoin "), "P&L table printed");
    let q = project.query("SELECT COUNT(*) AS n, COUNT(DISTINCT symbol) AS s FROM profit");
    assert!(q.status.success(), "{}", stderr(&q));
    let text = String::from_utf8_lossy(&q.stdout);
    assert!(text.contains(&format!("| {} ", expected.len())), "{text}");

    // A second run finds everything committed: no new batches, nothing doubled.
    let again = project.run_ok();
    assert!(
        !String::from_utf8_lossy(&again.stdout)
            .lines()
            .any(|l| l.starts_with('{') && l.contains("\"numInputRows\":1")),
        "{}",
        String::from_utf8_lossy(&again.stdout)
    );
    assert_eq!(project.stored().len(), expected.len());
}

#[test]
fn hostile_feed_lines_go_to_dead_letters_with_reasons_and_good_rows_flow() {
    let good = r#"{"type":"match","trade_id":7,"sequence":50,"maker_order_id":"a","taker_order_id":"b","time":"2026-11-20T14:00:00.028459Z","product_id":"BTC-USD","size":"0.5","price":"92000.01","side":"sell"}"#;
    let lines = [
        good,
        r#"{"type":"match","trade_id":8,"sequence":51,"time":"2026-11-20T14:00:01Z","product_id":"BTC-USD","size":"0.5","price":"abc","side":"buy"}"#,
        r#"{"type":"match","trade_id":9,"product_id":"ETH-"#,
        r#"{"type":"match","sequence":52,"time":"2026-11-20T14:00:01Z","product_id":"ETH-USD","size":"1","price":"3000","side":"buy"}"#,
        r#"{"type":"heartbeat","sequence":90,"last_trade_id":20,"product_id":"BTC-USD","time":"2026-11-20T14:00:02Z"}"#,
        r#"{"type":"match","trade_id":10,"sequence":53,"time":"2026-11-20T14:00:03Z","product_id":"FOO-USD","size":"1","price":"1","side":"buy"}"#,
        "\u{1}garbage",
    ];
    let project = Project::with_feed(lines.join("\n"));
    project.run_ok();
    let stored = project.stored();
    assert_eq!(stored.len(), 1, "the one good portfolio trade: {stored:?}");
    assert_eq!(stored[0].0, ("BTC-USD".to_owned(), 7));

    let letters = project.dead_letters();
    let summary: Vec<(i64, String)> = letters
        .iter()
        .map(|l| (line_index(l), l["reason"].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(summary.len(), 5, "{summary:?}");
    assert_eq!(summary[0].0, 1);
    assert!(summary[0].1.contains("abc"), "{summary:?}");
    assert!(summary[1].1.starts_with("invalid JSON"), "{summary:?}");
    assert_eq!(summary[2].1, "match without trade_id");
    assert_eq!(
        summary[3],
        (
            5,
            "unknown product FOO-USD (not in the coin map)".to_owned()
        )
    );
    assert_eq!(summary[4].0, 6);
    assert_eq!(letters[1]["raw"], lines[2]);
    // A capture's letters name the file and the line, and carry no Kafka fields.
    let file = std::fs::canonicalize(&project.feed).unwrap();
    assert_eq!(
        letters[0]["position"],
        serde_json::json!({"file": file.display().to_string(), "line": 2})
    );
    assert!(letters[0].get("offset").is_none() && letters[0].get("topic").is_none());
}

/// The number of stored rows per `(symbol, trade_id)`.
fn copies(root: &Path) -> BTreeMap<(String, i64), usize> {
    let mut copies = BTreeMap::new();
    for (key, _) in stored_rows(root) {
        *copies.entry(key).or_insert(0) += 1;
    }
    copies
}

/// The `trades` cell of the P&L report's row for `symbol` in `printed` (a run's stderr with
/// `--progress json`, its stdout without).
fn report_trades(printed: &[u8], symbol: &str) -> Option<String> {
    let text = String::from_utf8_lossy(printed);
    let row = text.lines().find(|l| l.contains(&format!(" {symbol} ")))?;
    let cells: Vec<&str> = row
        .split('|')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    cells.last().map(|c| (*c).to_owned())
}

/// `coinstream run --trigger available-now` in `cwd` with `args`.
fn run_in(cwd: &Path, args: &[impl AsRef<std::ffi::OsStr>]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_coinstream"))
        .args(["run", "--trigger", "available-now", "--progress", "json"])
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("the binary runs")
}

/// The input rows a run's JSON progress records (its stdout) report.
fn input_rows(o: &Output) -> u64 {
    common::progress_sum(&String::from_utf8_lossy(&o.stdout), "numInputRows")
}

#[test]
fn a_capture_that_grew_with_a_reconnect_between_runs_stores_each_trade_once() {
    let project = Project::with_feed(RESTART_PART_A);
    project.run_ok();

    let mut grown = std::fs::OpenOptions::new()
        .append(true)
        .open(&project.feed)
        .unwrap();
    std::io::Write::write_all(&mut grown, RESTART_PART_B.as_bytes()).unwrap();
    let second = project.run_ok();

    let copies = copies(&project.path().join("data/profit"));
    let expected: BTreeMap<(String, i64), usize> = (831102700..=831102703)
        .map(|id| (("BTC-USD".to_owned(), id), 1))
        .collect();
    assert_eq!(copies, expected, "4 rows, one per trade id");
    assert_eq!(
        report_trades(&second.stderr, "BTC-USD").as_deref(),
        Some("4"),
        "the P&L report counts 4 trades:\n{}",
        stderr(&second)
    );
}

/// Rewrites the offsets entries of a capture query's checkpoint in the form versions before
/// per-source offsets wrote: `{"<file>":{"0":<lines>}}` with the source's state beside it, and
/// its metadata with the source's identity under its former name (`replay <file>`).
fn to_legacy_checkpoint(checkpoint: &Path) {
    let metadata_path = checkpoint.join("metadata");
    let mut metadata: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&metadata_path).unwrap()).unwrap();
    let source = metadata["source"].as_str().unwrap();
    let file = source
        .strip_prefix("coinbase capture ")
        .unwrap_or_else(|| panic!("recorded under the current name: {source}"));
    metadata["source"] = format!("replay {file}").into();
    std::fs::write(&metadata_path, metadata.to_string()).unwrap();
    for entry in std::fs::read_dir(checkpoint.join("offsets")).unwrap() {
        let path = entry.unwrap().path();
        let planned: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let legacy = |offset: &serde_json::Value| {
            let file = offset["file"].as_str().unwrap();
            serde_json::json!({ file: { "0": offset["lines"] } })
        };
        let entry = serde_json::json!({
            "batchId": planned["batchId"],
            "start": legacy(&planned["start"]),
            "end": legacy(&planned["end"]),
            "sourceState": { "lastTradeId": planned["end"]["lastTradeId"] },
        });
        std::fs::write(&path, entry.to_string()).unwrap();
    }
}

#[test]
fn a_checkpoint_of_the_previous_version_restarts_without_loss_under_the_old_type_name() {
    let dir = tempfile::tempdir().unwrap();
    let feed = dir.path().join("capture.jsonl");
    std::fs::write(&feed, RESTART_PART_A).unwrap();
    let cfg = config(dir.path(), &feed);
    // Batches of one message, so the checkpoint holds several entries.
    let first = run_in(
        dir.path(),
        &with_config(&["--max-records-per-batch", "1"], &cfg),
    );
    assert!(first.status.success(), "{}", stderr(&first));
    let checkpoint = dir.path().join("data/checkpoint");
    to_legacy_checkpoint(&checkpoint);
    // The last batch stays uncommitted, as after a crash: it is read again from the old offsets.
    let mut ids: Vec<u64> = std::fs::read_dir(checkpoint.join("commits"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_str().unwrap().parse().unwrap())
        .collect();
    ids.sort();
    std::fs::remove_file(checkpoint.join(format!("commits/{}", ids.last().unwrap()))).unwrap();

    let mut grown = std::fs::OpenOptions::new()
        .append(true)
        .open(&feed)
        .unwrap();
    std::io::Write::write_all(&mut grown, RESTART_PART_B.as_bytes()).unwrap();
    // The source's old name, as a config of that version has it: the loader reads a key set
    // over the file as it reads the file's own.
    let second = run_in(dir.path(), &cfg.set("source.type", "replay").args());
    assert!(second.status.success(), "{}", stderr(&second));
    assert!(
        stderr(&second).contains("type = \"replay\" is deprecated")
            && stderr(&second).contains("coinbase_capture"),
        "{}",
        stderr(&second)
    );
    assert!(
        stderr(&second).contains("Replaying a batch that was not committed"),
        "{}",
        stderr(&second)
    );
    let copies = copies(&dir.path().join("data/profit"));
    let expected: BTreeMap<(String, i64), usize> = (831102700..=831102703)
        .map(|id| (("BTC-USD".to_owned(), id), 1))
        .collect();
    assert_eq!(copies, expected, "4 rows, one per trade id");
}

/// A folder with the shipped `coinstream.toml` as a user has it (relative paths), the files it
/// names, and `capture` as its capture.
fn project(capture: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    for sub in ["required_data", "sql/reports", "sql/tables", "elsewhere"] {
        std::fs::create_dir_all(root.join(sub)).unwrap();
    }
    for file in [
        "coinstream.toml",
        "required_data/coin_map.json",
        "required_data/my_Portfolio.json",
        "sql/profit.sql",
        "sql/reports/pnl_by_coin.sql",
        "sql/tables/trades.sql",
        "sql/tables/reference.sql",
    ] {
        std::fs::copy(repo().join(file), root.join(file)).unwrap();
    }
    std::fs::write(root.join("required_data/sample_trades.jsonl"), capture).unwrap();
    dir
}

/// The first `n` lines of the shipped sample capture.
fn sample_lines(n: usize) -> String {
    let text = std::fs::read_to_string(repo().join("required_data/sample_trades.jsonl")).unwrap();
    let mut out: String = text.lines().take(n).collect::<Vec<_>>().join("\n");
    out.push('\n');
    out
}

/// A [`project`] over the first lines of the sample capture, after its first run.
struct RunOnce {
    dir: tempfile::TempDir,
    /// The rows the first run read.
    input_rows: u64,
    /// The rows the first run stored.
    stored: usize,
}

/// A [`project`] over the first `lines` lines of the sample capture, run once from its folder
/// with no arguments; panics when that run fails.
fn run_once(lines: usize) -> RunOnce {
    let dir = project(&sample_lines(lines));
    let first = run_in(dir.path(), &[] as &[&str]);
    assert!(first.status.success(), "{}", stderr(&first));
    let stored = stored_rows(&dir.path().join("data/profit")).len();
    RunOnce {
        dir,
        input_rows: input_rows(&first),
        stored,
    }
}

#[test]
fn the_same_config_typed_another_way_or_run_from_another_folder_reprocesses_nothing() {
    let RunOnce {
        dir,
        input_rows: read,
        stored,
    } = run_once(400);
    let root = dir.path();
    assert!(
        stored > 100,
        "the first 400 lines hold portfolio trades: {stored}"
    );
    assert!(read as usize >= stored);

    let absolute = root.join("coinstream.toml");
    let absolute = absolute.to_str().unwrap();
    let spellings: [(&Path, &[&str]); 4] = [
        (root, &["--config", "./coinstream.toml"]),
        (root, &["--config", absolute]),
        (&root.join("elsewhere"), &["--config", "../coinstream.toml"]),
        (Path::new("/"), &["--config", absolute]),
    ];
    for (cwd, args) in spellings {
        let again = run_in(cwd, args);
        assert!(
            again.status.success(),
            "{args:?} in {cwd:?}: {}",
            stderr(&again)
        );
        assert_eq!(
            input_rows(&again),
            0,
            "{args:?} in {cwd:?}: {}",
            stderr(&again)
        );
        assert_eq!(
            stored_rows(&root.join("data/profit")).len(),
            stored,
            "{args:?} in {cwd:?} stored nothing again"
        );
    }
}

#[test]
fn a_checkpoint_of_another_query_is_refused_naming_both() {
    let RunOnce { dir, stored, .. } = run_once(50);
    let root = dir.path();

    // The same checkpoint folder, another capture.
    std::fs::write(root.join("required_data/other.jsonl"), sample_lines(80)).unwrap();
    // Relative to the config's folder, as in the file.
    let other = run_in(
        root,
        &[
            "--config",
            "coinstream.toml",
            "--set",
            "source.path=required_data/other.jsonl",
        ],
    );
    assert!(!other.status.success(), "{}", stderr(&other));
    let err = stderr(&other);
    let canonical = |p: &str| {
        std::fs::canonicalize(root.join(p))
            .unwrap()
            .display()
            .to_string()
    };
    assert!(
        err.contains(&canonical("required_data/sample_trades.jsonl"))
            && err.contains(&canonical("required_data/other.jsonl"))
            && err.contains("data/checkpoint"),
        "{err}"
    );
    assert_eq!(
        stored_rows(&root.join("data/profit")).len(),
        stored,
        "nothing ran"
    );
}

/// The shipped config with a generate source of `count` trades (or, without one, `rate_per_sec`
/// trades a second for ever) in place of the capture, its outputs in `dir`.
fn generate_config(dir: &Path, count: Option<u64>) -> Pipeline {
    let limit = match count {
        Some(n) => format!("count = {n}"),
        None => "rate_per_sec = 40".to_owned(),
    };
    // The whole section: no key of the capture source is left. Relative paths are relative to
    // the shipped file's folder, the repository.
    config(dir, &repo().join("required_data/sample_trades.jsonl")).set_flag(&format!(
        "source={{ type = \"generate\", portfolio = \"required_data/my_Portfolio.json\", coin_map = \"required_data/coin_map.json\", {limit}, seed = 7 }}"
    ))
}

#[test]
fn a_generate_source_resumes_from_its_checkpoint_and_stores_each_trade_once() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = generate_config(dir.path(), Some(300));
    let mut inputs = Vec::new();
    for _ in 0..3 {
        let out = run_in(
            dir.path(),
            &with_config(&["--max-records-per-batch", "120"], &cfg),
        );
        assert!(out.status.success(), "{}", stderr(&out));
        inputs.push(input_rows(&out));
    }
    assert_eq!(inputs, [300, 0, 0], "the checkpoint holds the position");
    let copies = copies(&dir.path().join("data/profit"));
    assert!(
        copies.len() > 200,
        "90% of trades are portfolio trades: {}",
        copies.len()
    );
    assert!(copies.values().all(|&n| n == 1), "each trade stored once");
}

#[test]
fn a_second_run_on_a_held_checkpoint_is_refused_and_a_killed_holder_leaves_no_stale_lock() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = generate_config(dir.path(), None);
    let long_run = || {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_coinstream"));
        cmd.args(with_config(&["run"], &cfg))
            .args(["--trigger", "interval:100ms"])
            .args(["--progress", "json"]);
        common::Running::spawn(cmd)
    };
    let mut holder = long_run();
    holder.wait_for_batches(1, std::time::Duration::from_secs(60));
    let pid = holder.id();

    let second = Command::new(env!("CARGO_BIN_EXE_coinstream"))
        .args(with_config(&["run"], &cfg))
        .args(["--trigger", "interval:100ms"])
        .output()
        .unwrap();
    assert!(!second.status.success());
    let err = stderr(&second);
    let folder = dir.path().join("data/checkpoint").display().to_string();
    assert!(
        err.contains(&folder) && err.contains(&format!("pid {pid}")),
        "names the folder {folder} and pid {pid}: {err}"
    );
    assert!(holder.is_running(), "the holder runs on");

    holder.kill();
    let mut restarted = long_run();
    restarted.wait_for_batches(2, std::time::Duration::from_secs(60));
    let log = restarted.terminate(std::time::Duration::from_secs(30));
    assert!(!log.contains("in use by another"), "{log}");
    let copies = copies(&dir.path().join("data/profit"));
    assert!(
        copies.values().all(|&n| n == 1),
        "no trade stored twice across the kill: {copies:?}"
    );
}

#[test]
fn a_capture_with_a_byte_order_mark_keeps_its_first_trade() {
    // The `utf8-bom-first-line` case: EF BB BF, then two BTC-USD matches.
    let mut body = b"\xEF\xBB\xBF".to_vec();
    body.extend_from_slice(br#"{"type":"match","trade_id":831102600,"maker_order_id":"00000000-0000-4000-8000-000831102600","taker_order_id":"00000000-0000-4000-9000-000831102600","side":"sell","size":"0.1","price":"104212.35","product_id":"BTC-USD","sequence":104512339100,"time":"2025-05-12T14:03:22.100000Z"}"#);
    body.extend_from_slice(b"\r\n");
    body.extend_from_slice(br#"{"type":"match","trade_id":831102601,"maker_order_id":"00000000-0000-4000-8000-000831102601","taker_order_id":"00000000-0000-4000-9000-000831102601","side":"buy","size":"0.2","price":"104212.40","product_id":"BTC-USD","sequence":104512339101,"time":"2025-05-12T14:03:22.200000Z"}"#);
    body.extend_from_slice(b"\r\n");
    let project = Project::with_feed(body);
    project.run_ok();
    let stored = project.stored_by_key();
    let ids: Vec<i64> = stored.keys().map(|(_, id)| *id).collect();
    assert_eq!(ids, [831102600, 831102601], "both trades stored");
    assert_eq!(
        stored[&("BTC-USD".to_owned(), 831102600)].1,
        "buy",
        "the maker sold"
    );
    let letters = project.path().join("data/dead_letters");
    let dead: usize = std::fs::read_dir(&letters).map(|d| d.count()).unwrap_or(0);
    assert_eq!(dead, 0, "no dead letters");
}

#[test]
fn dead_letters_keep_the_feed_frame_as_received() {
    // Lines the source rejects (a bad time, a price that is not a decimal) and one it converts but
    // the engine's decoder rejects: either way the letter holds the line as received.
    let lines = [
        r#"{"type":"match","trade_id":7,"sequence":50,"time":"2026-11-20T14:00:00Z","product_id":"BTC-USD","size":"0.5","price":"92000.01","side":"sell"}"#,
        r#"{"type":"match","trade_id":8,"sequence":51,"time":"not a time","product_id":"BTC-USD","size":"0.5","price":"92000.02","side":"sell"}"#,
        r#"{"type":"match","trade_id":9,"sequence":52,"time":"2026-11-20T14:00:01Z","product_id":"BTC-USD","size":"0.5","price":"abc","side":"sell"}"#,
        // A finite positive price passes the source; it overflows decimal(28,10) in the decoder.
        r#"{"type":"match","trade_id":10,"sequence":53,"time":"2026-11-20T14:00:02Z","product_id":"BTC-USD","size":"0.5","price":"1E+30","side":"sell"}"#,
    ];
    let project = Project::with_feed(lines.join("\n"));
    project.run_ok();
    let letters = project.dead_letters();
    let offsets: Vec<i64> = letters.iter().map(line_index).collect();
    assert_eq!(offsets, [1, 2, 3], "{letters:?}");
    for letter in &letters {
        let offset = line_index(letter) as usize;
        assert_eq!(
            letter["raw"], lines[offset],
            "the frame as received, side unflipped"
        );
        assert!(!letter["reason"].as_str().unwrap().is_empty());
        // Where the engine rejected the converted record, it is there too, with the taker's side.
        if let Some(record) = letter.get("record") {
            let record: serde_json::Value = serde_json::from_str(record.as_str().unwrap()).unwrap();
            assert_eq!(record["side"], "buy", "{letter}");
            assert_eq!(record["trade_id"], offset as i64 + 7);
        }
    }
    let from_decoder: Vec<i64> = letters
        .iter()
        .filter(|l| l.get("record").is_some())
        .map(line_index)
        .collect();
    assert_eq!(
        from_decoder,
        [3],
        "only the overflowing price passes the source and is rejected by the decoder: {letters:?}"
    );
    assert!(
        letters[2]["reason"].as_str().unwrap().contains("price"),
        "{letters:?}"
    );
}

#[test]
fn explain_shows_plans_and_analyze_shows_metrics() {
    let out = coinstream(&["explain"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("== profit ("), "{text}");
    assert!(
        text.contains("-- logical plan --") && text.contains("Join"),
        "{text}"
    );
    assert!(
        text.contains("-- physical plan --") && text.contains("HashJoinExec"),
        "{text}"
    );
    let out = coinstream(&["explain", "--analyze", "profit"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("analyzed on one batch: 10000 messages"),
        "{text}"
    );
    assert!(
        text.contains("output_rows="),
        "per-operator metrics: {text}"
    );
    let out = coinstream(&["explain", "nope"]);
    assert!(!out.status.success());
    assert_stderr_has(&out, "no transform \"nope\"; the config has profit");
}

#[test]
fn bad_sql_and_bad_reference_files_stop_the_run_before_data_flows() {
    let mut project = Project::on(repo().join("required_data/sample_trades.jsonl"));
    let dir = project.path().to_owned();
    let sql = dir.join("profit.sql");
    std::fs::write(&sql, "SELECT symbol, FROM trades WHERE").unwrap();
    project.cfg = project
        .cfg
        .clone()
        .set("transforms.files", vec![sql.display().to_string()]);
    let out = project.run();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("transform profit (") && stderr(&out).contains("profit.sql"),
        "{}",
        stderr(&out)
    );
    // The whole chain, each cause once: what failed, then DataFusion's parser error under it,
    // as its message (not its Rust debug form, `ParserError("…")`).
    assert!(
        stderr(&out).contains("profit.sql): planning failed: SQL error: sql parser error: ")
            && stderr(&out).matches("sql parser error").count() == 1
            && !stderr(&out).contains("ParserError"),
        "{}",
        stderr(&out)
    );
    assert!(!dir.join("data/profit").exists(), "no data flowed");

    std::fs::write(
        &sql,
        std::fs::read_to_string(repo().join("sql/profit.sql")).unwrap(),
    )
    .unwrap();
    let portfolio = dir.join("portfolio.json");
    std::fs::write(
        &portfolio,
        r#"{"BTC-USD":{"coin_name":"Bitcoin","buy_price":"a lot","size":"1","buy_time":0}}"#,
    )
    .unwrap();
    // The shipped file's first `[[reference]]` is the portfolio.
    let shipped: toml::Table =
        toml::from_str(&std::fs::read_to_string(&project.cfg.file).unwrap()).unwrap();
    assert_eq!(shipped["reference"][0]["name"].as_str(), Some("portfolio"));
    project.cfg = project.cfg.clone().set_path("reference.0.path", &portfolio);
    let out = project.run();
    assert!(!out.status.success());
    assert_mentions(&stderr(&out), &["portfolio.json", "key \"BTC-USD\""]);
}

#[test]
fn a_sink_error_prints_its_cause_from_the_operating_system() {
    let project = Project::on(repo().join("required_data/sample_trades.jsonl"));
    // A file where the Delta table's folder goes: the healthcheck cannot create the folder.
    std::fs::create_dir(project.path().join("data")).unwrap();
    std::fs::write(project.path().join("data/profit"), "not a folder").unwrap();
    let out = project.run();
    assert!(!out.status.success());
    let err = stderr(&out);
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: sink delta ")
            && last.contains("/data/profit: cannot create the folder: ")
            && last.ends_with("File exists (os error 17)"),
        "the sink, what failed, then the io error under it: {err}"
    );
}

/// The capture line a dead letter names, counted from 0 (letters count lines from 1, as editors
/// do: `{"position":{"file":…,"line":1}}` is the first line).
fn line_index(letter: &serde_json::Value) -> i64 {
    letter["position"]["line"].as_i64().expect("a capture line") - 1
}

/// Every dead letter written under `dir` (JSON objects), by line; none when `dir` is missing.
fn dead_letters(dir: &Path) -> Vec<serde_json::Value> {
    let mut letters = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return letters;
    };
    for entry in entries {
        for line in std::fs::read_to_string(entry.unwrap().path())
            .unwrap()
            .lines()
        {
            letters.push(serde_json::from_str::<serde_json::Value>(line).unwrap());
        }
    }
    letters.sort_by_key(line_index);
    letters
}

/// The JSON progress records of a run, from its stdout.
fn progress_lines(o: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The `profit-overflow-poison-pill` case on the replay path: the 4 ordinary trades are stored,
/// the overflowing one is dead-lettered with DataFusion's message, the run exits 0 and a second
/// run finds nothing left to do.
#[test]
fn a_trade_whose_profit_overflows_is_dead_lettered_and_the_run_goes_on() {
    let project = Project::on(repo().join("tests/fixtures/profit-overflow/feed.jsonl"));
    let out = project.run_ok();

    let poison = ("ADA-USD".to_owned(), 96034231);
    let mut expected = common::expected_rows(&project.feed);
    assert!(expected.remove(&poison).is_some());
    let stored = project.stored_by_key();
    assert_eq!(
        stored.keys().collect::<Vec<_>>(),
        vec![
            &("ADA-USD".to_owned(), 96034230),
            &("ADA-USD".to_owned(), 96034232),
            &("ETH-USD".to_owned(), 612558300),
            &("ETH-USD".to_owned(), 612558301),
        ],
        "the 4 ordinary trades"
    );
    assert_eq!(stored, expected, "each with its exact profit");
    assert_eq!(
        stored[&("ADA-USD".to_owned(), 96034230)].0,
        Decimal::from_str("646.8").unwrap()
    );

    let letters = project.dead_letters();
    assert_eq!(letters.len(), 1, "{letters:?}");
    let raw = letters[0]["raw"].as_str().unwrap();
    assert!(
        raw.contains("96034231") && raw.contains("99999999999999999.5"),
        "the overflowing trade: {raw}"
    );
    let reason = letters[0]["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("transform profit (")
            && reason.contains("profit.sql): ")
            && reason.contains("Arithmetic overflow"),
        "the transform and DataFusion's message: {reason}"
    );

    let progress = progress_lines(&out);
    let dead: u64 = progress
        .iter()
        .map(|p| p["numDeadLetters"].as_u64().unwrap())
        .sum();
    assert_eq!(dead, 1, "{}", stderr(&out));
    assert!(
        progress
            .iter()
            .any(|p| p["deadLettersByReason"] == serde_json::json!({"transform profit": 1})),
        "{}",
        stderr(&out)
    );
    let report = stderr(&out);
    assert!(
        report.contains("| Cardano ") && report.contains("| Ethereum "),
        "{report}"
    );

    // The batch was committed: a restart meets the poison row no more.
    let again = project.run_ok();
    assert_eq!(
        input_rows(&again),
        0,
        "nothing reprocessed: {}",
        stderr(&again)
    );
    assert_eq!(project.stored_by_key(), stored);
    assert_eq!(project.dead_letters().len(), 1);
}

#[test]
fn a_run_that_stores_nothing_ends_with_an_empty_report() {
    // Products in the coin map but not in the portfolio: decoded, then joined away.
    let lines = [
        r#"{"type":"match","trade_id":11,"sequence":1,"maker_order_id":"a","taker_order_id":"b","time":"2026-11-20T14:00:00.000001Z","product_id":"LINK-USD","size":"3","price":"14.02","side":"sell"}"#,
        r#"{"type":"match","trade_id":12,"sequence":2,"maker_order_id":"a","taker_order_id":"b","time":"2026-11-20T14:00:01Z","product_id":"XLM-USD","size":"100","price":"0.25","side":"buy"}"#,
    ];
    let project = Project::with_feed(lines.join("\n"));
    let query = |sql: &str| project.query(sql);
    // Before any run: the reference tables, and an empty output table with a warning that names
    // the folder no run has written yet.
    let before = query(
        "SELECT (SELECT COUNT(*) FROM profit) AS n, (SELECT COUNT(*) FROM portfolio) AS held",
    );
    assert!(before.status.success(), "{}", stderr(&before));
    let table = String::from_utf8_lossy(&before.stdout);
    let held = serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(
        &std::fs::read(common::repo().join("required_data/my_Portfolio.json")).unwrap(),
    )
    .unwrap()
    .len();
    assert!(
        table
            .lines()
            .any(|l| l.replace(' ', "") == format!("|0|{held}|")),
        "{table}"
    );
    assert!(
        stderr(&before).contains("No run has written this store yet"),
        "{}",
        stderr(&before)
    );

    let out = project.run_ok();
    assert_eq!(input_rows(&out), 2, "both trades read: {}", stderr(&out));
    assert!(project.stored().is_empty());
    // The report's header, and no row.
    let report = stderr(&out);
    let lines: Vec<&str> = report.lines().filter(|l| l.starts_with('|')).collect();
    assert_eq!(lines.len(), 1, "{report}");
    for column in [
        "coin_name",
        "symbol",
        "last_trade_time",
        "last_price",
        "profit",
        "trades",
    ] {
        assert!(lines[0].contains(column), "{report}");
    }

    let q = query("SELECT COUNT(*) AS n FROM profit");
    assert!(q.status.success(), "{}", stderr(&q));
    assert!(
        String::from_utf8_lossy(&q.stdout).contains("| 0 "),
        "{}",
        String::from_utf8_lossy(&q.stdout)
    );
}

/// The `decimal-excess-scale` case's capture: ADA-USD prices and sizes with 11–12 decimals into
/// the bus's `decimal(28,10)` columns.
const EXCESS_SCALE_FEED: &str = r#"{"type":"subscriptions","channels":[{"name":"matches","product_ids":["BTC-USD","ETH-USD","ADA-USD","DOGE-USD"]},{"name":"heartbeat","product_ids":["BTC-USD","ETH-USD","ADA-USD","DOGE-USD"]}]}
{"type":"match","trade_id":96034223,"maker_order_id":"00000000-0000-4000-8000-000096034223","taker_order_id":"00000000-0000-4000-9000-000096034223","side":"sell","size":"2987.85","price":"0.796","product_id":"ADA-USD","sequence":9712066600,"time":"2025-05-12T14:03:22.100000Z"}
{"type":"match","trade_id":96034224,"maker_order_id":"00000000-0000-4000-8000-000096034224","taker_order_id":"00000000-0000-4000-9000-000096034224","side":"sell","size":"0.00000000019","price":"0.79600000009","product_id":"ADA-USD","sequence":9712066601,"time":"2025-05-12T14:03:22.200000Z"}
{"type":"match","trade_id":96034225,"maker_order_id":"00000000-0000-4000-8000-000096034225","taker_order_id":"00000000-0000-4000-9000-000096034225","side":"buy","size":"1.99999999999","price":"0.742100000051","product_id":"ADA-USD","sequence":9712066602,"time":"2025-05-12T14:03:22.300000Z"}
"#;

/// `trade_id → [price, size, profit]` as stored, read back from every Parquet file under `root`.
fn stored_amounts(root: &Path) -> BTreeMap<i64, [String; 3]> {
    let mut rows = BTreeMap::new();
    for batch in common::parquet_batches(root) {
        let col = |name: &str| batch.column(batch.schema().index_of(name).unwrap()).clone();
        let ids = col("trade_id");
        let text = |name: &str, i: usize| {
            arrow::util::display::array_value_to_string(&col(name), i).unwrap()
        };
        for i in 0..batch.num_rows() {
            rows.insert(
                ids.as_primitive::<Int64Type>().value(i),
                [text("price", i), text("size", i), text("profit", i)],
            );
        }
    }
    rows
}

/// Every dead letter under `dir` as `(offset, reason, raw)`, in offset order.
fn dead_letter_triples(dir: &Path) -> Vec<(i64, String, String)> {
    let mut letters: Vec<(i64, String, String)> = dead_letters(dir)
        .iter()
        .map(|l| {
            (
                line_index(l),
                l["reason"].as_str().unwrap().to_owned(),
                l["raw"].to_string(),
            )
        })
        .collect();
    letters.sort();
    letters
}

/// Runs the default pipeline over `EXCESS_SCALE_FEED` in `dir` with `decimal_policy`, and
/// returns the run's output and its progress records.
fn run_excess_scale(
    dir: &Path,
    decimal_policy: &str,
    progress: &str,
) -> (Output, Vec<serde_json::Value>) {
    let feed = dir.join("feed.jsonl");
    std::fs::write(&feed, EXCESS_SCALE_FEED).unwrap();
    let cfg = config(dir, &feed).set("input.decimal_policy", decimal_policy);
    let mut args = with_config(&["run"], &cfg);
    args.extend(["--trigger", "available-now", "--progress", progress].map(String::from));
    let out = coinstream(&args);
    assert!(out.status.success(), "run failed: {}", stderr(&out));
    let records = progress_lines(&out);
    (out, records)
}

#[test]
fn excess_decimal_digits_round_half_up_as_spark_and_each_rounding_is_counted() {
    let dir = tempfile::tempdir().unwrap();
    let (_, progress) = run_excess_scale(dir.path(), "round_half_up", "json");
    let stored = stored_amounts(&dir.path().join("data/profit"));
    let amounts = |id: i64| stored[&id].clone().map(|s| Decimal::from_str(&s).unwrap());
    assert_eq!(stored.len(), 3, "{stored:?}");
    assert_eq!(stored[&96034223][..2], ["0.7960000000", "2987.8500000000"]);
    assert_eq!(stored[&96034224][..2], ["0.7960000001", "0.0000000002"]);
    assert_eq!(stored[&96034225][..2], ["0.7421000001", "2.0000000000"]);
    // The profit follows the stored price: (0.7421000001 - 0.7421) × 12000.
    assert_eq!(
        amounts(96034225)[2],
        Decimal::from_str("0.0000012").unwrap()
    );
    assert!(dead_letter_triples(&dir.path().join("data/dead_letters")).is_empty());
    let rounded: u64 = progress
        .iter()
        .map(|p| p["numRoundedDecimals"].as_u64().unwrap())
        .sum();
    assert_eq!(rounded, 4, "{progress:?}");

    // The human progress line says so too.
    let dir = tempfile::tempdir().unwrap();
    let (out, _) = run_excess_scale(dir.path(), "round_half_up", "human");
    assert_stderr_has(&out, "0 dead-lettered, 4 decimals rounded in ");
}

#[test]
fn reject_decimal_policy_dead_letters_values_that_would_change_and_stores_exact_ones() {
    let dir = tempfile::tempdir().unwrap();
    let (out, progress) = run_excess_scale(dir.path(), "reject", "json");
    let stored = stored_amounts(&dir.path().join("data/profit"));
    assert_eq!(stored.keys().copied().collect::<Vec<_>>(), [96034223]);
    assert_eq!(stored[&96034223][..2], ["0.7960000000", "2987.8500000000"]);
    let letters = dead_letter_triples(&dir.path().join("data/dead_letters"));
    let reasons: Vec<(i64, &str)> = letters.iter().map(|(o, r, _)| (*o, r.as_str())).collect();
    assert_eq!(
        reasons,
        [
            (
                2,
                r#"column price: "0.79600000009" has non-zero digits beyond the scale 10 (decimal policy reject)"#
            ),
            (
                3,
                r#"column price: "0.742100000051" has non-zero digits beyond the scale 10 (decimal policy reject)"#
            ),
        ],
        "{}",
        stderr(&out)
    );
    assert!(letters[0].2.contains("96034224"), "{letters:?}");
    assert!(letters[1].2.contains("96034225"), "{letters:?}");
    let sum = |key: &str| -> u64 { progress.iter().map(|p| p[key].as_u64().unwrap()).sum() };
    assert_eq!(sum("numDeadLetters"), 2);
    assert_eq!(sum("numRoundedDecimals"), 0);
}

#[test]
fn a_run_that_could_use_none_of_its_messages_exits_non_zero_after_storing_them_as_dead_letters() {
    // Not a Coinbase feed: every line is a dead letter.
    let project = Project::with_feed("{\"hello\":1}\nnot json\n{\"price\":\"1\"}\n");
    let out = project.run();
    assert!(!out.status.success(), "{}", stderr(&out));
    let expected = format!(
        "error: the run received 3 records and could use none of them; the first was \
         dead-lettered because: message without a type (see the dead letters in {})",
        project.path().join("data/dead_letters").display()
    );
    assert_stderr_has(&out, &expected);
    assert_eq!(project.dead_letters().len(), 3);
    assert!(project.stored().is_empty());

    // They were committed: the restart reads nothing, so it has nothing to judge and exits 0.
    let again = project.run_ok();
    assert_eq!(input_rows(&again), 0, "{}", stderr(&again));
    assert_eq!(
        project.dead_letters().len(),
        3,
        "nothing dead-lettered twice"
    );
}

#[test]
fn a_declared_column_no_record_has_fails_the_run_naming_the_first_reason() {
    let mut project = Project::on(repo().join("required_data/sample_trades.jsonl"));
    let ddl = std::fs::read_to_string(repo().join("sql/tables/trades.sql"))
        .unwrap()
        .replace(
            "    symbol      VARCHAR NOT NULL,",
            "    venue       VARCHAR NOT NULL,\n    symbol      VARCHAR NOT NULL,",
        );
    assert!(ddl.contains("venue"), "the DDL changed shape: {ddl}");
    let tables = project.path().join("trades.sql");
    std::fs::write(&tables, ddl).unwrap();
    project.cfg = project.cfg.clone().set(
        "tables.files",
        vec![
            tables.display().to_string(),
            repo()
                .join("sql/tables/reference.sql")
                .display()
                .to_string(),
        ],
    );
    let out = project.run();
    assert!(!out.status.success(), "{}", stderr(&out));
    let received = input_rows(&out);
    assert!(received > 1000, "{}", stderr(&out));
    let expected = format!(
        "error: the run received {received} records and could use none of them; the first was \
         dead-lettered because: missing required field venue (see the dead letters in {})",
        project.path().join("data/dead_letters").display()
    );
    assert_stderr_has(&out, &expected);
    assert_eq!(project.dead_letters().len() as u64, received);
    assert!(
        !stderr(&out).lines().any(|l| l.starts_with('|')),
        "no report after a failed run"
    );
}
