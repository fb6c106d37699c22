//! `coinstream generate --topic` against the real Kafka of `scripts/services.sh`: an unreachable
//! broker fails within seconds with a message that names it, and `--partitions N` creates the
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
fn an_unreachable_broker_fails_within_seconds_naming_it() {
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
