//! The benchmark (bench/) is not run by CI, but its scripts must keep working: they must parse,
//! and the coinstream part must run end to end on 1,000 trades against the real Kafka and
//! Cassandra (scripts/services.sh up) and produce its result rows. No pyspark is installed and
//! nothing is built here: bench/run.sh gets this test's own coinstream binary.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn files_with_extension(dir: &Path, ext: &str, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if path.is_dir() {
            // bench/.work holds the venv and run folders, not the bench's own scripts.
            if !name.starts_with('.') && name != "__pycache__" && name != "results" {
                files_with_extension(&path, ext, out);
            }
        } else if path.extension().is_some_and(|e| e == ext) {
            out.push(path);
        }
    }
}

fn bench_files(ext: &str) -> Vec<PathBuf> {
    let mut files = Vec::new();
    files_with_extension(&repo().join("bench"), ext, &mut files);
    files.sort();
    assert!(!files.is_empty(), "no .{ext} files under bench/");
    files
}

/// Runs `check` (named `what` in failures) on every `.{ext}` file under bench/; each must pass.
fn assert_each_passes(ext: &str, what: &str, check: impl Fn(&Path) -> Command) {
    for script in bench_files(ext) {
        let out = check(&script)
            .output()
            .unwrap_or_else(|e| panic!("{what} does not run: {e}"));
        assert!(
            out.status.success(),
            "{what} {}: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn shell_scripts_parse() {
    assert_each_passes("sh", "bash -n", |script| {
        let mut bash = Command::new("bash");
        bash.arg("-n").arg(script);
        bash
    });
}

#[test]
fn python_scripts_compile() {
    let pyc = tempfile::tempdir().unwrap();
    // py_compile, with the byte code kept out of the work tree.
    assert_each_passes("py", "py_compile", |script| {
        let mut python = Command::new("python3");
        python
            .args([
                "-c",
                "import py_compile, sys; py_compile.compile(sys.argv[1], cfile=sys.argv[2], doraise=True)",
            ])
            .arg(script)
            .arg(pyc.path().join("out.pyc"));
        python
    });
}

/// bench/run.sh --coinstream-only on 1,000 trades: Kafka → coinstream → Cassandra, the null-sink
/// run, short live phases into Cassandra and into the embedded store (Delta), and the OHLCV
/// phase (drain and live), each with its measurements and checks in the results JSON.
#[test]
fn coinstream_part_of_the_bench_runs_on_1000_trades() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("work");
    let results = tmp.path().join("results");
    let out = Command::new("bash")
        .arg(repo().join("bench/run.sh"))
        .args(["--coinstream-only", "--trades", "1000", "--coinstream-bin"])
        .arg(env!("CARGO_BIN_EXE_coinstream"))
        .arg("--work")
        .arg(&work)
        .arg("--results")
        .arg(&results)
        .args([
            "--engines",
            "coinstream",
            "--coinstream-live-triggers",
            "interval:100ms",
            "--coinstream-live-delta-triggers",
            "interval:100ms",
            "--live-rate",
            "200",
            "--live-seconds",
            "3",
            "--live-warmup",
            "1",
            "--live-settle",
            "2",
            "--pause",
            "0",
            // The OHLCV phase too: 5 trades/s of trade time makes the 1,000 trades span 200 s,
            // so the final watermark closes a few minutes' candles; the live part's 30 s of sends
            // close one window per product (its first minute ends 15 s in).
            "--trade-rate",
            "5",
            "--ohlcv",
            "--ohlcv-live-rate",
            "200",
            "--ohlcv-live-seconds",
            "30",
            // The embedded phase: coinstream's embedded job on a generated capture of 1,000
            // trades, one product missing from the coin map, run twice.
            "--embedded-frames",
            "1000",
            "--embedded-runs",
            "2",
        ])
        .env("BENCH_WORK", tmp.path().join("bench-work"))
        .output()
        .expect("bench/run.sh runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "bench/run.sh failed ({}):\n{stderr}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );

    let json = std::fs::read_dir(&results)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "json"))
        .unwrap_or_else(|| panic!("no results JSON in {}:\n{stderr}", results.display()));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let runs = report["runs"].as_array().unwrap();
    let run = |sink: &str| {
        runs.iter()
            .find(|r| r["engine"] == "coinstream" && r["sink"] == sink)
            .unwrap_or_else(|| panic!("no coinstream {sink} run in {report}"))
    };

    let cassandra = run("cassandra");
    assert_eq!(cassandra["exit_code"], 0, "{cassandra}");
    let expected = cassandra["rows_expected"].as_u64().unwrap();
    // The generator puts 90% of trades on portfolio products: about 900 of 1,000 are rows.
    assert!((800..=1000).contains(&expected), "{cassandra}");
    assert_eq!(
        cassandra["rows_in_cassandra"].as_u64(),
        Some(expected),
        "{cassandra}"
    );
    assert_eq!(
        cassandra["rows_reported"].as_u64(),
        Some(expected),
        "{cassandra}"
    );
    assert_eq!(
        cassandra["profit_problems"],
        serde_json::json!([]),
        "{cassandra}"
    );
    assert!(
        cassandra["sampled_rows"].as_u64().unwrap() > 0,
        "{cassandra}"
    );
    for key in [
        "wall_s",
        "cpu_s",
        "peak_rss_mb",
        "first_batch_s",
        "trades_per_s",
    ] {
        assert!(
            cassandra[key].as_f64().is_some_and(|v| v > 0.0),
            "{key}: {cassandra}"
        );
    }

    let null = run("null");
    assert_eq!(null["exit_code"], 0, "{null}");
    assert_eq!(null["rows_reported"].as_u64(), Some(expected), "{null}");

    // Live, into Cassandra then into the embedded store (the Delta table of coinstream.toml):
    // every measured trade found in the store, its latency taken.
    for (i, store) in ["cassandra", "delta"].into_iter().enumerate() {
        let live = &report["live"][i];
        assert_eq!(live["engine"], "coinstream", "{report}");
        assert_eq!(live["store"], store, "{report}");
        assert_eq!(live["exit_code"], 0, "{live}");
        assert!(live["rows_measured"].as_u64().unwrap() > 0, "{live}");
        assert_eq!(
            live["rows_measured"], live["rows_expected_measured"],
            "{live}"
        );
        assert_eq!(live["rows_written"], live["rows_sent"], "{live}");
        assert!(live["p99_ms"].as_f64().is_some(), "{live}");
    }

    // OHLCV: every candle the final watermark closes, equal to the bench's own recomputation
    // from the generated records; live, every closed candle written and its latency measured.
    let ohlcv = &report["ohlcv"]["runs"][0];
    assert_eq!(ohlcv["engine"], "coinstream", "{report}");
    assert_eq!(ohlcv["exit_code"], 0, "{ohlcv}");
    let candles = ohlcv["candles_expected"].as_u64().unwrap();
    assert!(candles > 0, "{ohlcv}");
    assert_eq!(
        ohlcv["candles_in_cassandra"].as_u64(),
        Some(candles),
        "{ohlcv}"
    );
    assert_eq!(ohlcv["problems"], serde_json::json!([]), "{ohlcv}");
    assert!(ohlcv["cpu_s"].as_f64().is_some_and(|v| v > 0.0), "{ohlcv}");
    let ohlcv_live = &report["ohlcv"]["live"][0];
    assert_eq!(ohlcv_live["exit_code"], 0, "{ohlcv_live}");
    assert!(
        ohlcv_live["candles_expected"].as_u64().unwrap() > 0,
        "{ohlcv_live}"
    );
    assert_eq!(
        ohlcv_live["candles_measured"], ohlcv_live["candles_expected"],
        "{ohlcv_live}"
    );
    assert_eq!(
        ohlcv_live["problems"],
        serde_json::json!([]),
        "{ohlcv_live}"
    );
    assert!(ohlcv_live["p50_ms"].as_f64().is_some(), "{ohlcv_live}");

    // The embedded job: the rows and dropped trades it reports equal the bench's own count from
    // the capture.
    let runs = report["embedded"]["runs"]
        .as_array()
        .expect("embedded runs");
    assert_eq!(runs.len(), 2, "{report}");
    let want = &report["embedded"]["expected"];
    assert!(want["rows"].as_u64().unwrap() > 0, "{want}");
    assert!(want["unknown_product"].as_u64().unwrap() > 0, "{want}");
    for (i, embedded) in runs.iter().enumerate() {
        assert_eq!(embedded["round"], i + 1, "{embedded}");
        assert_eq!(embedded["engine"], "coinstream", "{report}");
        assert_eq!(embedded["exit_code"], 0, "{embedded}");
        assert_eq!(embedded["rows_written"], want["rows"], "{embedded}");
        assert_eq!(
            embedded["unknown_product_dropped"], want["unknown_product"],
            "{embedded}"
        );
        assert_eq!(embedded["problems"], serde_json::json!([]), "{embedded}");
        assert!(
            embedded["peak_rss_mb"].as_f64().is_some_and(|v| v > 0.0),
            "{embedded}"
        );
    }

    let md = std::fs::read_to_string(json.with_extension("md")).unwrap();
    assert!(md.contains("| coinstream |"), "{md}");
    assert!(md.contains("## OHLCV"), "{md}");
}
