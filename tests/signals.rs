//! How the `coinstream` binary ends on SIGINT.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use testkit::env::repo;

/// SIGINT while the sink is still unreachable at start (a Kafka sink whose broker never answers,
/// so its healthcheck waits out its timeout and is retried) is a clean stop: nothing was read, so
/// the run exits 0 at once, saying so, with no talk of an uncommitted batch.
#[test]
fn sigint_while_the_sink_fails_its_healthcheck_exits_0_promptly() {
    let dir = tempfile::tempdir().unwrap();
    let repo = repo();
    let child = Command::new(env!("CARGO_BIN_EXE_coinstream"))
        .args(["run", "--trigger", "available-now", "--config"])
        .arg(repo.join("pipelines/ingest-coinbase.toml"))
        .arg("--set")
        .arg(format!(
            "source={{ type = \"coinbase_capture\", path = {:?}, coin_map = {:?} }}",
            repo.join("required_data/sample_trades.jsonl")
                .display()
                .to_string(),
            repo.join("required_data/coin_map.json")
                .display()
                .to_string(),
        ))
        // Port 1: nothing listens, and nothing leaves the machine.
        .args(["--set", "sink.brokers=\"127.0.0.1:1\""])
        .arg("--set")
        .arg(format!(
            "dead_letter={{ type = \"file\", path = {:?} }}",
            dir.path().join("dead_letters").display().to_string()
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary runs");
    // Inside the healthcheck's first attempt (its metadata fetch waits 10 s).
    std::thread::sleep(Duration::from_millis(1500));
    let signalled = Instant::now();
    let killed = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let out = child.wait_with_output().unwrap();
    let waited = signalled.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    assert!(waited < Duration::from_secs(4), "took {waited:?}: {stderr}");
    assert!(
        stderr.contains("Stopped while waiting for the sink to pass its healthcheck; nothing was read, written or committed."),
        "{stderr}"
    );
    assert!(!stderr.contains("replayed on restart"), "{stderr}");
    assert!(!stderr.contains("batch 0"), "no batch ran: {stderr}");
}
