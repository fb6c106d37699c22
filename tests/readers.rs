//! The embedded pipeline's Parquet store opened by the readers people use (pandas, pyarrow,
//! DuckDB), with their defaults, through `tests/readers/check_parquet.py` run by the venv python
//! that `scripts/test.sh` makes (`COINSTREAM_PYTHON`); each must see what `coinstream query` sees.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod common;

use common::Pipeline;
use testkit::env::repo;

/// The venv python with `scripts/requirements.txt` installed; a missing one fails the test.
fn python() -> PathBuf {
    let python = std::env::var_os("COINSTREAM_PYTHON").map(PathBuf::from);
    match python {
        Some(p) if p.is_file() => p,
        other => panic!(
            "COINSTREAM_PYTHON is {other:?}, not a python: run scripts/test.sh, which makes the \
             venv with scripts/requirements.txt (or set COINSTREAM_PYTHON to a python that has \
             those packages)"
        ),
    }
}

fn coinstream(cwd: &Path, args: &[String]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_coinstream"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("the binary runs")
}

/// The shipped sample feed plus one copy of its last trade on the next day, so the store has
/// two `trade_date` folders.
fn feed(dir: &Path) -> PathBuf {
    let sample = std::fs::read_to_string(repo().join("required_data/sample_trades.jsonl")).unwrap();
    let last = sample
        .lines()
        .rev()
        .find(|l| l.contains(r#""type":"match""#))
        .expect("a match in the sample");
    let mut next_day: serde_json::Value = serde_json::from_str(last).unwrap();
    next_day["trade_id"] = (next_day["trade_id"].as_i64().unwrap() + 1).into();
    next_day["sequence"] = (next_day["sequence"].as_i64().unwrap() + 1).into();
    next_day["time"] = "2026-11-21T00:00:01.000000Z".into();
    let path = dir.join("feed.jsonl");
    std::fs::write(&path, format!("{}\n{next_day}\n", sample.trim_end())).unwrap();
    path
}

/// The cells of a `coinstream query` table, row by row.
fn query(dir: &Path, config: &Pipeline, sql: &str) -> Vec<Vec<String>> {
    let mut args = vec!["query".to_owned()];
    args.extend(config.args());
    args.push(sql.to_owned());
    let out = coinstream(dir, &args);
    common::check(&out);
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|l| l.starts_with('|'))
        .skip(1) // the header
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_owned())
                .collect()
        })
        .collect()
}

#[test]
fn pandas_pyarrow_and_duckdb_read_the_parquet_store_as_query_does() {
    let python = python();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("data/profit");
    let config = Pipeline::shipped("coinstream.toml")
        .set_path("source.path", &feed(dir.path()))
        .set_path("engine.checkpoint_dir", &dir.path().join("data/checkpoint"))
        .set_path("sink.path", &store)
        .set_path("dead_letter.path", &dir.path().join("data/dead_letters"));
    let mut run = vec!["run".to_owned(), "--trigger".into(), "available-now".into()];
    run.extend(config.args());
    common::check(&coinstream(dir.path(), &run));

    // Only finished files, each in its partition folders: no leftover being written.
    for batch_file in walk(&store) {
        let rel = batch_file
            .strip_prefix(&store)
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        let parts: Vec<&str> = rel.split('/').collect();
        assert!(
            parts.len() == 3
                && parts[0].starts_with("symbol=")
                && parts[1].starts_with("trade_date=")
                && parts[2].starts_with("part-")
                && parts[2].ends_with(".parquet"),
            "{rel}"
        );
    }

    let rows = &query(dir.path(), &config, "SELECT count(*) FROM profit")[0][0];
    let by_symbol = query(
        dir.path(),
        &config,
        "SELECT symbol, CAST(sum(profit) AS VARCHAR) FROM profit GROUP BY symbol",
    );
    let by_date = query(
        dir.path(),
        &config,
        "SELECT CAST(trade_date AS VARCHAR), count(*) FROM profit GROUP BY trade_date",
    );
    assert!(by_symbol.len() > 1, "several symbols: {by_symbol:?}");
    assert_eq!(by_date.len(), 2, "two days: {by_date:?}");
    let expected = serde_json::json!({
        "rows": rows.parse::<u64>().unwrap(),
        "profit_by_symbol": by_symbol.iter().map(|r| (r[0].clone(), r[1].clone().into()))
            .collect::<serde_json::Map<_, _>>(),
        "rows_by_date": by_date.iter()
            .map(|r| (r[0].clone(), r[1].parse::<u64>().unwrap().into()))
            .collect::<serde_json::Map<_, _>>(),
    });
    let expected_file = dir.path().join("expected.json");
    std::fs::write(&expected_file, expected.to_string()).unwrap();

    let out = Command::new(&python)
        .arg(repo().join("tests/readers/check_parquet.py"))
        .arg(&store)
        .arg(&expected_file)
        .output()
        .unwrap_or_else(|e| panic!("{python:?} does not run ({e}): run scripts/test.sh"));
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "the readers disagree with query:\n{said}\nexpected {expected}"
    );
    for reader in ["pandas", "pyarrow.dataset", "duckdb"] {
        assert!(said.contains(&format!("{reader}: ok")), "{said}");
    }
}

/// Every file under `root`, hidden ones included.
fn walk(root: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.push(path);
            }
        }
    }
    assert!(!files.is_empty(), "no file under {root:?}");
    files
}
