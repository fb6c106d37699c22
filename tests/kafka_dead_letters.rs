//! What coinstream's Kafka producers write, on the real broker (`scripts/services.sh up kafka`):
//! dead letters on a dead-letter topic that refuses large messages (cut down, never retried
//! forever, never dropped; the run stops when even the smallest form is refused), a dead-letter
//! topic that does not exist (a permanent error naming it), the `compression` of dead letters, and
//! `generate --compression`. Each run reads a fresh topic into the Parquet store, so Cassandra is
//! not needed.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::Value;
use testkit::kafka::{create_topic_with_config, produce_one, read_json};

mod common;

/// The dead-letter topics' `max.message.bytes`: an ordinary letter fits, a 100 KB one does not.
const SMALL_MAX_MESSAGE_BYTES: &str = "4096";

/// The setup's config with the Parquet store under the test's folder and a Kafka dead-letter
/// section of `keys` (an inline table's body, `topic = "t", compression = "zstd"`) in place of
/// the shipped one.
fn parquet_config(setup: &Setup, keys: &str) -> (Pipeline, PathBuf) {
    let (config, store) = setup.parquet_config(&setup.config);
    let config = config.set_flag(&format!("dead_letter={{ type = \"kafka\", {keys} }}"));
    (config, store)
}

/// `n` generated trades (`seed`) on the setup's topic, then one bad record `bad` keyed BTC-USD:
/// the trades' expected profits, and the bad record's partition and offset.
async fn trades_then_bad(setup: &Setup, n: u64, seed: u64, bad: &[u8]) -> (Expected, (i32, i64)) {
    let (messages, expected) = trades(n, seed);
    produce(&setup.topic, &messages).await;
    (expected, produce_one(&setup.topic, "BTC-USD", bad).await)
}

/// Nothing past the batch holding `offset` of `partition` was committed.
fn assert_not_committed_past(setup: &Setup, partition: i32, offset: i64) {
    let at = committed_and_end(&setup.group, &setup.topic)
        .into_iter()
        .find(|(p, _, _)| *p == partition)
        .unwrap();
    assert!(at.1.is_none_or(|c| c <= offset), "{at:?}");
}

fn letter_at(letters: &[Value], partition: i32, offset: i64) -> &Value {
    letters
        .iter()
        .find(|l| l["partition"] == partition && l["offset"] == offset)
        .unwrap_or_else(|| panic!("no letter for {partition}/{offset} in {letters:?}"))
}

/// 100 KB of text that is not JSON, with 3-byte characters so a cut can fall inside one.
fn big_bad_message() -> String {
    let text = "€ this is not JSON, ".repeat(5_000);
    assert!(text.len() > 100_000);
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_larger_than_its_topic_allows_is_written_truncated_and_the_group_commits_past_it()
 {
    let setup = Setup::new("dlq_big").await;
    let dlq = format!("{}_small", setup.dead_letters);
    create_topic_with_config(&dlq, 1, &[("max.message.bytes", SMALL_MAX_MESSAGE_BYTES)]).await;
    let (messages, expected) = trades(2_000, 11);
    produce(&setup.topic, &messages[..1_000]).await;
    let big = big_bad_message();
    let (big_partition, big_offset) = produce_one(&setup.topic, "BTC-USD", big.as_bytes()).await;
    let small = br#"{"symbol":"ETH-USD","price":"#;
    let (small_partition, small_offset) = produce_one(&setup.topic, "ETH-USD", small).await;
    produce(&setup.topic, &messages[1_000..]).await;

    let (config, store) = parquet_config(&setup, &format!("topic = \"{dlq}\""));
    let run = Running::spawn(setup.run_with(&config, &[]));
    // Before the fix, the big letter was retried as transient forever: the run never ended.
    let log = run.finish(Duration::from_secs(120));
    assert_eq!(progress_sum(&log, "numInputRows"), 2_002, "{log}");
    assert_eq!(progress_sum(&log, "numDeadLetters"), 2, "{log}");
    assert_eq!(parquet_profits(&store), expected, "every good row, once");
    assert_committed_to_end(&setup.group, &setup.topic);
    let warning = log
        .lines()
        .find(|l| l.contains("written truncated"))
        .unwrap_or_else(|| panic!("no truncation warning in:\n{log}"));
    assert!(
        [
            "raw_bytes",
            &big.len().to_string(),
            "sent_bytes",
            "max_field_bytes"
        ]
        .iter()
        .all(|w| warning.contains(w)),
        "{warning}"
    );

    let letters = read_json(&dlq, 2).await;
    assert_eq!(letters.len(), 2, "{letters:?}");
    let cut = letter_at(&letters, big_partition, big_offset);
    assert_eq!(cut["topic"], setup.topic.as_str());
    assert_eq!(cut["truncated"], true);
    assert_eq!(cut["raw_bytes"], big.len());
    let kept = cut["raw"].as_str().unwrap();
    assert!(
        !kept.is_empty() && kept.len() < 4096 && big.starts_with(kept),
        "a prefix of the message: {} bytes",
        kept.len()
    );
    let reason = cut["reason"].as_str().unwrap();
    assert!(reason.starts_with("invalid JSON: "), "{reason}");
    assert!(cut.to_string().len() < 4096);

    let whole = letter_at(&letters, small_partition, small_offset);
    assert_eq!(whole["raw"].as_str().unwrap().as_bytes(), small);
    assert!(whole.get("truncated").is_none(), "{whole}");
    assert_eq!(whole["topic"], setup.topic.as_str());

    // The next run finds the group past both.
    let log = records(&setup.run_with(&config, &[]).output().unwrap());
    assert_eq!(progress_sum(&log, "numInputRows"), 0, "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_over_the_producers_own_limit_is_written_truncated() {
    // librdkafka refuses a message over its `message.max.bytes` before sending it; the letter is
    // cut as when the broker refuses it, here to the 4 KiB step (the 64 KiB one is still over).
    let setup = Setup::new("dlq_local").await;
    let big = big_bad_message();
    let (expected, (partition, offset)) = trades_then_bad(&setup, 100, 14, big.as_bytes()).await;
    let (config, store) = parquet_config(
        &setup,
        &format!(
            "topic = \"{}\", properties = {{ \"message.max.bytes\" = \"10000\" }}",
            setup.dead_letters
        ),
    );
    let log = records(&setup.run_with(&config, &[]).output().unwrap());
    assert_eq!(progress_sum(&log, "numDeadLetters"), 1, "{log}");
    assert_eq!(parquet_profits(&store), expected);
    assert_committed_to_end(&setup.group, &setup.topic);

    let letters = read_json(&setup.dead_letters, 1).await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    let cut = letter_at(&letters, partition, offset);
    assert_eq!(
        (&cut["truncated"], &cut["raw_bytes"]),
        (&Value::from(true), &Value::from(big.len()))
    );
    let kept = cut["raw"].as_str().unwrap();
    assert!(
        (4096 - 2..=4096).contains(&kept.len()) && big.starts_with(kept),
        "the 4 KiB step, cut at a character boundary: {} bytes",
        kept.len()
    );
}

/// A Kafka record's position as the source describes it in errors and dead letters.
fn described(topic: &str, partition: i32, offset: i64) -> String {
    serde_json::json!({"topic": topic, "partition": partition, "offset": offset}).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_refused_even_cut_down_stops_the_query_naming_it() {
    // 200 bytes: less than any dead letter with its topic, partition and offset.
    let setup = Setup::new("dlq_tiny").await;
    let dlq = format!("{}_tiny", setup.dead_letters);
    create_topic_with_config(&dlq, 1, &[("max.message.bytes", "200")]).await;
    let big = big_bad_message();
    let (_, (partition, offset)) = trades_then_bad(&setup, 100, 15, big.as_bytes()).await;
    let (config, _) = parquet_config(&setup, &format!("topic = \"{dlq}\""));
    assert_stops_on_the_letter(&setup, &config, partition, offset, |at| {
        [
            format!(
                "dead-letter topic {dlq} refused the dead letter of {at} even cut to 256 bytes per field: "
            ),
            "Message size too large".into(),
        ]
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zstd_dead_letters_are_compressed_and_read_back_whole() {
    let setup = Setup::new("dlq_zstd").await;
    // The broker checks max.message.bytes against the compressed batch: 20 KB of repeated text
    // fits 4 KB only compressed, so a letter arriving whole shows the codec was used.
    let dlq = format!("{}_small", setup.dead_letters);
    create_topic_with_config(&dlq, 1, &[("max.message.bytes", SMALL_MAX_MESSAGE_BYTES)]).await;
    let bad = "not JSON ".repeat(2_300);
    assert!(bad.len() > 20_000);
    let (expected, (partition, offset)) = trades_then_bad(&setup, 200, 12, bad.as_bytes()).await;

    let (config, store) = parquet_config(
        &setup,
        &format!("topic = \"{dlq}\", compression = \"zstd\""),
    );
    let log = records(&setup.run_with(&config, &[]).output().unwrap());
    assert_eq!(progress_sum(&log, "numDeadLetters"), 1, "{log}");
    assert_eq!(parquet_profits(&store), expected);
    assert_committed_to_end(&setup.group, &setup.topic);
    assert!(!log.contains("written truncated"), "{log}");

    let letters = read_json(&dlq, 1).await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    let letter = letter_at(&letters, partition, offset);
    assert_eq!(letter["raw"], bad.as_str());
    assert!(letter.get("truncated").is_none(), "{letter}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_topic_that_does_not_exist_stops_the_query_naming_it() {
    let setup = Setup::new("dlq_missing").await;
    let (_, (partition, offset)) = trades_then_bad(&setup, 100, 13, b"not JSON").await;
    // The test broker creates topics on first write: this producer does not ask it to, as when
    // the broker's auto-creation is off.
    let missing = format!("{}_missing", setup.dead_letters);
    let (config, _) = parquet_config(
        &setup,
        &format!(
            "topic = \"{missing}\", properties = {{ \"allow.auto.create.topics\" = \"false\", \"topic.metadata.propagation.max.ms\" = \"2000\" }}"
        ),
    );
    assert_stops_on_the_letter(&setup, &config, partition, offset, |at| {
        [
            format!("dead letter of {at} not delivered to topic {missing}"),
            "permanent".into(),
        ]
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generate_publishes_zstd_batches_and_rejects_an_unknown_codec() {
    let setup = Setup::new("gen_zstd").await;
    let generate = |codec: &str| {
        Command::new(env!("CARGO_BIN_EXE_coinstream"))
            .args(["generate", "--count", "500", "--topic", &setup.topic])
            .args(["--compression", codec, "--brokers", &brokers()])
            .current_dir(repo())
            .output()
            .unwrap()
    };
    let out = generate("brotli");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("--compression")
            && err.contains("must be one of none, gzip, snappy, lz4, zstd"),
        "{err}"
    );
    check(&generate("zstd"));
    // A consumer decompresses and reads every record.
    let records = read_json(&setup.topic, 500).await;
    assert_eq!(records.len(), 500);
    assert!(
        records.iter().all(|r| r["trade_id"].is_i64()),
        "{:?}",
        records[0]
    );
}

/// The stderr of a run of `config` that must fail, and within two minutes (a hang fails too).
/// `config` runs and stops on a dead letter it cannot deliver, the one of the record at `offset`
/// of `partition`: the error says each of `says(position)` (the record's position as the source
/// describes it) and is not retried as transient, and nothing past that record's batch is
/// committed.
fn assert_stops_on_the_letter(
    setup: &Setup,
    config: &Pipeline,
    partition: i32,
    offset: i64,
    says: impl Fn(&str) -> [String; 2],
) {
    let out = wait_with_limit(setup.run_with(config, &[]), Duration::from_secs(120));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    for expected in says(&described(&setup.topic, partition, offset)) {
        assert!(err.contains(expected.as_str()), "{expected:?} in: {err}");
    }
    assert!(
        !err.contains("Transient failure"),
        "not retried as transient: {err}"
    );
    assert_not_committed_past(setup, partition, offset);
}
