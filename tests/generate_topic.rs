//! `coinstream generate --topic` against the real Kafka of `scripts/services.sh`: an unreachable
//! broker fails within seconds with one error line that names it and says why, and `--partitions N` creates the
//! topic with N partitions (an existing one must already have N).

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};

mod common;

fn generate(args: &[&str]) -> (bool, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_coinstream"));
    cmd.arg("generate").args(args).current_dir(common::repo());
    let out = common::wait_with_limit(cmd, Duration::from_secs(120));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn partitions(topic: &str) -> usize {
    let consumer: BaseConsumer = testkit::kafka::client_config().create().unwrap();
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    metadata.topics()[0].partitions().len()
}

#[test]
fn an_unreachable_broker_fails_within_seconds_with_one_line_naming_it() {
    // Nothing listens on port 1 of the loopback: every connection is refused.
    for extra in [&[][..], &["--partitions", "2"][..]] {
        let started = Instant::now();
        let mut args = vec![
            "--count",
            "5",
            "--topic",
            "never_created",
            "--brokers",
            "127.0.0.1:1",
        ];
        args.extend(extra);
        let (ok, stderr) = generate(&args);
        let elapsed = started.elapsed();
        assert!(!ok, "{stderr}");
        assert!(elapsed < Duration::from_secs(30), "{elapsed:?}: {stderr}");
        let error = stderr
            .lines()
            .find(|l| l.starts_with("error: "))
            .unwrap_or("");
        assert!(error.contains("--brokers 127.0.0.1:1"), "{stderr}");
        // Why, once: librdkafka's connection failure, not its ERROR line on every reconnect
        // attempt (about 400 in 10 s).
        assert!(
            error.contains("Connection refused") && !error.contains("(after "),
            "{stderr}"
        );
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_creates_the_topic_with_that_many() {
    let topic = common::unique("generate_partitions");
    let (ok, stderr) = generate(&["--count", "200", "--topic", &topic, "--partitions", "4"]);
    assert!(ok, "{stderr}");
    assert_eq!(partitions(&topic), 4);
    let received = testkit::kafka::read_topic(&topic, 200, Duration::from_secs(3)).await;
    assert_eq!(received.len(), 200);
    let used: BTreeSet<i32> = received.iter().map(|r| r.partition).collect();
    assert!(
        used.len() > 1,
        "keyed by product over 4 partitions: {used:?}"
    );

    // Again with the same count: appends; with another count: refused, naming both.
    let (ok, stderr) = generate(&["--count", "10", "--topic", &topic, "--partitions", "4"]);
    assert!(ok, "{stderr}");
    let (ok, stderr) = generate(&["--count", "10", "--topic", &topic, "--partitions", "3"]);
    assert!(!ok, "{stderr}");
    assert!(
        stderr.contains("exists with 4 partitions, not 3"),
        "{stderr}"
    );
    assert_eq!(partitions(&topic), 4);
}

/// Without `--portfolio`/`--coin-map`, `generate` takes them from the config's reference tables,
/// resolved against the config file as `run` resolves them: it works from any folder given
/// `--config`, and from a folder without `coinstream.toml` it says what to pass.
#[test]
fn default_reference_files_come_from_the_config_not_the_current_folder() {
    let elsewhere = tempfile::tempdir().unwrap();
    let out = elsewhere.path().join("feed.jsonl");
    let config = common::repo().join("coinstream.toml");
    let run = |args: &[&std::ffi::OsStr]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_coinstream"));
        cmd.arg("generate")
            .args(["--count", "200", "--out"])
            .arg(&out)
            .args(args)
            .current_dir(elsewhere.path());
        common::wait_with_limit(cmd, Duration::from_secs(60))
    };
    let ok = run(&["--config".as_ref(), config.as_os_str()]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let portfolio: serde_json::Value = serde_json::from_slice(
        &std::fs::read(common::repo().join("required_data/my_Portfolio.json")).unwrap(),
    )
    .unwrap();
    let text = std::fs::read_to_string(&out).unwrap();
    let products: BTreeSet<String> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["product_id"].as_str().map(String::from))
        .collect();
    let held = portfolio.as_object().map(|o| o.len()).unwrap_or(0);
    assert!(held > 0 && products.len() >= held, "{products:?}");
    for symbol in portfolio.as_object().unwrap().keys() {
        assert!(products.contains(symbol), "{symbol} missing: {products:?}");
    }

    let failed = run(&[]);
    assert!(!failed.status.success());
    let err = String::from_utf8_lossy(&failed.stderr);
    assert!(
        err.contains("coinstream.toml") && err.contains("--portfolio"),
        "{err}"
    );
}
