//! The embedded pipeline's stores opened by the readers people use, with their defaults: the
//! Parquet folder by pandas, pyarrow and DuckDB, the Delta table by the `deltalake` package
//! (pandas and pyarrow), through `tests/readers/check_store.py` run by the venv python that
//! `scripts/test.sh` makes (`COINSTREAM_PYTHON`); each must see what `coinstream query` sees.

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
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("data/profit");
    let config = common::embedded_config(dir.path(), &feed(dir.path())).set("sink.type", "parquet");
    run(dir.path(), &config);
    // Only finished files, each in its partition folders: no leftover being written.
    let files = common::files_under(&store);
    assert!(!files.is_empty(), "no file under {store:?}");
    for file in files {
        let rel = file
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
    check_readers(
        dir.path(),
        &config,
        "parquet",
        &["pandas", "pyarrow.dataset", "duckdb"],
    );
}

#[test]
fn the_deltalake_package_reads_the_default_delta_table_as_query_does() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("data/profit");
    let config = common::embedded_config(dir.path(), &feed(dir.path()));
    assert_eq!(
        config.load().sink.type_name(),
        "delta",
        "the shipped default"
    );
    run(dir.path(), &config);
    assert!(store.join("_delta_log").is_dir());
    check_readers(
        dir.path(),
        &config,
        "delta",
        &["deltalake.to_pandas", "deltalake.to_pyarrow_table"],
    );
}

fn run(dir: &Path, config: &Pipeline) {
    let mut run = vec!["run".to_owned(), "--trigger".into(), "available-now".into()];
    run.extend(config.args());
    common::check(&coinstream(dir, &run));
}

/// Runs `tests/readers/check_store.py` on the store of `config` (`kind`: parquet or delta)
/// against what `coinstream query` says of it; every one of `readers` must agree.
fn check_readers(dir: &Path, config: &Pipeline, kind: &str, readers: &[&str]) {
    let python = python();
    let rows = &query(dir, config, "SELECT count(*) FROM profit")[0][0];
    let by_symbol = query(
        dir,
        config,
        "SELECT symbol, CAST(sum(profit) AS VARCHAR) FROM profit GROUP BY symbol",
    );
    let by_date = query(
        dir,
        config,
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
    let expected_file = dir.join("expected.json");
    std::fs::write(&expected_file, expected.to_string()).unwrap();
    let loaded = config.load();
    let store = match &loaded.sink {
        connectors::SinkConfig::Delta(d) => d.path.clone(),
        connectors::SinkConfig::Parquet(p) => p.path.clone(),
        other => panic!("not an embedded store: {}", other.type_name()),
    };
    let out = Command::new(&python)
        .arg(repo().join("tests/readers/check_store.py"))
        .arg(kind)
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
    for reader in readers {
        assert!(said.contains(&format!("{reader}: ok")), "{said}");
    }
}
