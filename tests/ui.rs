//! `coinstream run`'s HTTP server, through the binary: `/metrics` and `/api/progress` agree with
//! the progress records the run prints, `--no-ui` listens on nothing, and an explicit `--ui` that
//! cannot bind stops the run.

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpListener;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

mod common;

use common::scrape::{free_addr, get, samples, snapshot};
use common::{Running, embedded_config};
use testkit::env::repo;

const STAGES: [&str; 6] = ["getBatch", "walCommit", "decode", "query", "sink", "commit"];

/// `coinstream run` of the embedded job (`coinstream.toml`) printing JSON progress, with `extra`
/// flags. `live` swaps the sample capture, which ends the run once read, for a `generate` source
/// of 200 trades a second that keeps it up (with a 100 ms interval trigger).
fn run_embedded(dir: &std::path::Path, live: bool, extra: &[&str]) -> Command {
    let feed = repo().join("required_data/sample_trades.jsonl");
    let mut config = embedded_config(dir, &feed);
    if live {
        config = config.set_flag(
            "source={ type = \"generate\", portfolio = \"required_data/my_Portfolio.json\", \
             coin_map = \"required_data/coin_map.json\", rate_per_sec = 200, seed = 14 }",
        );
    }
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_coinstream"));
    cmd.args(["run", "--trigger", "interval:100ms", "--progress", "json"])
        .args(config.args())
        .args(extra)
        .current_dir(repo());
    cmd
}

/// The JSON progress records of a log, in order.
fn printed_records(log: &[String]) -> Vec<Value> {
    log.iter()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The socket inodes `pid` listens on over TCP (IPv4 or IPv6), from /proc.
fn listening_sockets(pid: u32) -> BTreeSet<u64> {
    let mut listening: BTreeSet<u64> = BTreeSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // `st` 0A is LISTEN; field 9 is the socket's inode.
            if fields.get(3) == Some(&"0A") {
                listening.insert(fields[9].parse().unwrap());
            }
        }
    }
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter_map(|target| {
            target
                .to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .filter(|inode| listening.contains(inode))
        .collect()
}

#[test]
fn metrics_and_progress_equal_the_sums_of_the_printed_records() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let mut running = Running::spawn(run_embedded(dir.path(), true, &["--ui", &addr.to_string()]));
    running.wait_for_batches(3, Duration::from_secs(120));
    let bound = format!("UI and metrics on http://{addr}");
    assert!(
        running.log().iter().any(|l| l.contains(&bound)),
        "no {bound:?} in:\n{}",
        running.log().join("\n")
    );
    assert_eq!(listening_sockets(running.id()).len(), 1);
    assert_eq!(get(addr, "/nothing-here").0, 404);

    let (records, metrics) = snapshot(addr);
    // Fewer than the 100 records kept: the records are every batch so far, so the counters
    // must equal their sums.
    assert!((3..100).contains(&records.len()), "{records:#?}");
    // The same records `--progress json` printed, in order (each is recorded, then printed).
    running.read_for(Duration::from_millis(300));
    let printed = printed_records(running.log());
    assert!(printed.len() >= records.len());
    assert_eq!(records, printed[..records.len()]);
    let metrics = samples(&metrics);
    let metric = |series: &str| {
        *metrics
            .get(series)
            .unwrap_or_else(|| panic!("no {series} in {metrics:#?}"))
    };
    let sum = |f: &dyn Fn(&Value) -> u64| records.iter().map(f).sum::<u64>() as f64;

    let output_rows = sum(&|r| r["sink"]["numOutputRows"].as_u64().unwrap());
    assert!(output_rows > 0.0, "{records:#?}");
    assert_eq!(metric("coinstream_output_rows_total"), output_rows);
    assert_eq!(
        metric("coinstream_input_rows_total"),
        sum(&|r| r["numInputRows"].as_u64().unwrap())
    );
    assert!(metric("coinstream_input_rows_total") >= output_rows);
    assert_eq!(metric("coinstream_batches_total"), records.len() as f64);
    assert_eq!(
        metric("coinstream_rounded_decimals_total"),
        sum(&|r| r["numRoundedDecimals"].as_u64().unwrap())
    );
    let mut by_reason: BTreeMap<String, u64> = BTreeMap::new();
    for r in &records {
        for (reason, n) in r["deadLettersByReason"].as_object().unwrap() {
            *by_reason.entry(reason.clone()).or_default() += n.as_u64().unwrap();
        }
    }
    let dead_letter_series: BTreeMap<String, f64> = metrics
        .iter()
        .filter(|(k, _)| k.starts_with("coinstream_dead_letters_total{"))
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    assert_eq!(
        dead_letter_series,
        by_reason
            .iter()
            .map(|(reason, n)| (
                format!("coinstream_dead_letters_total{{reason=\"{reason}\"}}"),
                *n as f64
            ))
            .collect::<BTreeMap<_, _>>()
    );
    for stage in STAGES {
        assert_eq!(
            metric(&format!(
                "coinstream_batch_duration_seconds_count{{stage=\"{stage}\"}}"
            )),
            records.len() as f64
        );
        let seconds = sum(&|r| r["durationMs"][stage].as_u64().unwrap()) / 1000.0;
        let served = metric(&format!(
            "coinstream_batch_duration_seconds_sum{{stage=\"{stage}\"}}"
        ));
        assert!(
            (served - seconds).abs() < 1e-9,
            "{stage}: {served} vs {seconds}"
        );
    }
    // Retries per sink: the sums of the records' (the embedded job's file sinks do not fail, so
    // both series are there, at 0).
    for (sink, field) in [("output", "sink"), ("dead_letters", "deadLetterSink")] {
        assert_eq!(
            metric(&format!("coinstream_sink_retries_total{{sink=\"{sink}\"}}")),
            sum(&|r| r[field]["numRetries"].as_u64().unwrap())
        );
    }
    // The source's own metrics: the last record's (the generator's position: every trade it
    // made, in a fresh run all handed out by now).
    let last = &records.last().unwrap()["sources"][0]["metrics"];
    let generated = last["generated"].as_u64().unwrap() as f64;
    assert_eq!(generated, metric("coinstream_input_rows_total"), "{last}");
    assert_eq!(
        metric(r#"coinstream_source_metric{name="generated"}"#),
        generated
    );
    // A generator has no backlog: no lag series.
    assert!(
        !metrics
            .keys()
            .any(|k| k.starts_with("coinstream_source_offsets_behind_latest")),
        "{metrics:#?}"
    );
    // The embedded job is stateless and has no watermark: no state or watermark series.
    assert!(records.iter().all(|r| r.get("stateOperators").is_none()));
    assert!(
        !metrics
            .keys()
            .any(|k| k.starts_with("coinstream_watermark") || k.starts_with("coinstream_state")),
        "{metrics:#?}"
    );

    running.terminate(Duration::from_secs(60));
}

#[test]
fn no_ui_listens_on_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut running = Running::spawn(run_embedded(dir.path(), true, &["--no-ui"]));
    running.wait_for_batches(1, Duration::from_secs(120));
    assert!(running.is_running());
    // The same check finds the one listener of a run with `--ui` (the test above).
    assert_eq!(listening_sockets(running.id()), BTreeSet::new());
    let log = running.terminate(Duration::from_secs(60));
    assert!(!log.contains("UI and metrics on"), "{log}");
}

#[test]
fn an_explicit_ui_address_that_is_taken_stops_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let out = common::wait_with_limit(
        run_embedded(dir.path(), false, &["--ui", &addr.to_string()]),
        Duration::from_secs(120),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("--ui {addr}: cannot listen there")),
        "{stderr}"
    );
    // Stopped before reading the source: no batch ran, so no progress record was printed.
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.trim().is_empty(), "{stdout}\n{stderr}");
}
