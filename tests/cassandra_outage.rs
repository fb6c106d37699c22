//! Cassandra stopped for 20 seconds in the middle of a run: the engine stops taking batches,
//! retries, commits nothing meanwhile, and finishes with every row once Cassandra is back, without
//! a restart. It stops the shared Cassandra, so it is the only test in this binary (test binaries
//! run one after another).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

mod common;

fn services(args: &[&str]) {
    let status = Command::new("bash")
        .arg(repo().join("scripts/services.sh"))
        .args(args)
        .status()
        .unwrap();
    assert!(status.success(), "scripts/services.sh {args:?} failed");
}

/// Starts Cassandra again when dropped, so a failing assertion never leaves it down.
struct RestartOnDrop;

impl Drop for RestartOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(repo().join("scripts/services.sh"))
            .args(["start", "cassandra"])
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_twenty_second_cassandra_outage_mid_run_loses_nothing() {
    let setup = Setup::new("outage").await;
    let (messages, expected) = trades(40_000, 5);
    produce(&setup.topic, &messages).await;
    let mut child = setup
        .run(&["--max-records-per-batch", "1000"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (lines_tx, lines_rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let mut log = Vec::new();
    // Wait for the first batch to be written, then take Cassandra away.
    let deadline = Instant::now() + Duration::from_secs(120);
    while !log.iter().any(|l: &String| l.starts_with('{')) {
        assert!(
            Instant::now() < deadline,
            "no batch within 2 minutes:\n{}",
            log.join("\n")
        );
        if let Ok(line) = lines_rx.recv_timeout(Duration::from_millis(200)) {
            log.push(line);
        }
    }
    let _guard = RestartOnDrop;
    services(&["stop", "cassandra"]);
    let stopped_at = Instant::now();
    assert!(
        std::net::TcpStream::connect(cassandra_node()).is_err(),
        "Cassandra still answers at {} after `scripts/services.sh stop cassandra` (was it started by another services folder?)",
        cassandra_node()
    );
    let batches_before = log.iter().filter(|l| l.starts_with('{')).count();
    while stopped_at.elapsed() < Duration::from_secs(20) {
        if let Ok(line) = lines_rx.recv_timeout(Duration::from_millis(200)) {
            log.push(line);
        }
    }
    let batches_during = log.iter().filter(|l| l.starts_with('{')).count() - batches_before;
    assert!(
        child.try_wait().unwrap().is_none(),
        "the engine is still running while Cassandra is down:\n{}",
        log.join("\n")
    );
    services(&["start", "cassandra"]);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            stopped_at.elapsed() < Duration::from_secs(400),
            "the run did not finish after Cassandra came back:\n{}",
            log.join("\n")
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    reader.join().unwrap();
    log.extend(lines_rx.try_iter());
    let text = log.join("\n");
    assert!(status.success(), "the run failed:\n{text}");
    assert!(
        batches_during <= 1,
        "no batch completed while Cassandra was down ({batches_during})"
    );
    assert!(
        text.contains("Transient failure; nothing is committed until it succeeds."),
        "the log says what happened:\n{text}"
    );
    assert!(
        text.contains("Recovered after transient failures."),
        "the log says it recovered:\n{text}"
    );
    let session = session().await;
    assert_exactly(&stored(&session, &setup.keyspace).await, &expected);
    assert_committed_to_end(&setup.group, &setup.topic);
}
