//! The Kafka source against what real topics do (issue 10), on the real broker of
//! `scripts/services.sh`: topics written by the Java producer with every codec and with
//! transactions, partitions added while a query runs or while it is stopped, and records deleted
//! by retention before the query read them. Each test stores into Parquet and checks every row
//! once, or the documented error.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rust_decimal::Decimal;

fn admin() -> AdminClient<DefaultClientContext> {
    testkit::kafka::client_config().create().unwrap()
}

async fn add_partitions(topic: &str, total: usize) {
    for r in admin()
        .create_partitions(&[NewPartitions::new(topic, total)], &AdminOptions::new())
        .await
        .expect("create partitions")
    {
        r.expect("partitions added");
    }
}

/// Writes `messages` to `topic` with the Java producer (`tests/java/TopicWriter.java`): `lines`
/// are `PARTITION|KEY|VALUE` or `--commit` / `--abort`.
fn java_write(topic: &str, compression: &str, transactional_id: Option<&str>, lines: &[String]) {
    let jars = testkit::env::kafka_jars().unwrap_or_else(|| repo().join(".services/jars/kafka"));
    assert!(
        jars.join("kafka-clients-4.3.1.jar").exists()
            || std::fs::read_dir(&jars).is_ok_and(|d| d
                .filter_map(Result::ok)
                .any(|e| e.file_name().to_string_lossy().starts_with("kafka-clients"))),
        "no kafka-clients jar in {jars:?}: run scripts/services.sh up (KAFKA_JARS names the folder)"
    );
    let mut cmd = Command::new(testkit::env::java());
    cmd.arg("-cp")
        .arg(format!("{}/*", jars.display()))
        .arg(repo().join("tests/java/TopicWriter.java"))
        .args([brokers().as_str(), topic, compression]);
    if let Some(id) = transactional_id {
        cmd.arg(id);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("java");
    {
        let mut stdin = child.stdin.take().unwrap();
        for line in lines {
            writeln!(stdin, "{line}").unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    let records = lines.iter().filter(|l| !l.starts_with("--")).count();
    assert!(
        out.status.success()
            && String::from_utf8_lossy(&out.stdout).contains(&format!("sent {records}")),
        "TopicWriter failed ({}): {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `messages` as TopicWriter lines, the key choosing the partition.
fn lines(messages: &[(String, Vec<u8>)]) -> Vec<String> {
    messages
        .iter()
        .map(|(key, body)| format!("|{key}|{}", String::from_utf8_lossy(body)))
        .collect()
}

/// The test's pipeline with a Parquet sink and file dead letters, reading `topics`, with the
/// `--set` flags `source` (`source.starting_offsets=latest`) over the shipped source.
fn parquet_config(setup: &Setup, topics: &[String], source: &[&str]) -> (Pipeline, PathBuf) {
    let (config, store) = setup.parquet_config(&setup.config);
    let config = config
        .set("source.topics", topics.to_vec())
        .set_flag("dead_letter={ type = \"file\" }")
        .set_path("dead_letter.path", &setup.dir.path().join("dead_letters"));
    let config = source
        .iter()
        .fold(config, |config, flag| config.set_flag(flag));
    (config, store)
}

/// What the store holds so far (the query may be running).
fn stored(store: &Path) -> BTreeMap<(String, i64), Decimal> {
    if !store.exists() {
        return BTreeMap::new();
    }
    parquet_profits_so_far(store)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_the_java_producer_wrote_with_every_codec_are_read_whole() {
    let setup = Setup::new("codecs").await;
    let codecs = ["gzip", "snappy", "lz4", "zstd"];
    let topics: Vec<String> = codecs
        .iter()
        .map(|c| format!("{}_{c}", setup.topic))
        .collect();
    for topic in &topics {
        testkit::kafka::create_topic(topic, PARTITIONS).await;
    }
    let (messages, expected) = trades(2_000, 21);
    for (i, chunk) in messages.chunks(500).enumerate() {
        java_write(&topics[i], codecs[i], None, &lines(chunk));
    }
    let (config, store) = parquet_config(&setup, &topics, &[]);
    // Before librdkafka had zstd, the zstd topic's partitions stalled and this never ended.
    let log = Running::spawn(setup.run_with(&config, &[])).finish(Duration::from_secs(120));
    assert_eq!(progress_sum(&log, "numInputRows"), 2_000, "{log}");
    assert_eq!(stored(&store), expected);
    for topic in &topics {
        assert_committed_to_end(&setup.group, topic);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transactional_topic_is_read_committed_and_available_now_ends_with_no_lag() {
    let setup = Setup::new("txn").await;
    let (messages, mut expected) = trades(1_500, 22);
    // Transactions of 100 records; the fifth and the eleventh are aborted, and their records
    // must never be stored.
    let mut input = Vec::new();
    for (i, chunk) in messages.chunks(100).enumerate() {
        input.extend(lines(chunk));
        if i == 4 || i == 10 {
            input.push("--abort".to_owned());
            for (key, body) in chunk {
                let record: serde_json::Value = serde_json::from_slice(body).unwrap();
                expected.remove(&(key.clone(), record["trade_id"].as_i64().unwrap()));
            }
        } else {
            input.push("--commit".to_owned());
        }
    }
    java_write(&setup.topic, "zstd", Some(&unique("txn")), &input);
    let (config, store) = parquet_config(&setup, std::slice::from_ref(&setup.topic), &[]);
    let log = Running::spawn(setup.run_with(&config, &[])).finish(Duration::from_secs(120));
    assert_eq!(progress_sum(&log, "numInputRows"), 1_300, "{log}");
    assert_eq!(stored(&store), expected, "the committed transactions, once");
    // Commit markers take the last offsets: the group's lag is 0 only if they were committed too.
    assert_committed_to_end(&setup.group, &setup.topic);

    let log = Running::spawn(setup.run_with(&config, &[])).finish(Duration::from_secs(60));
    assert_eq!(progress_sum(&log, "numInputRows"), 0, "{log}");
    assert_eq!(stored(&store), expected);
}

/// Sends each message to its partition, `(partition, key, payload)`.
async fn produce_to(topic: &str, messages: &[(i32, String, Vec<u8>)]) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .unwrap();
    // A partition added a moment ago may not be in the broker's metadata answer yet; librdkafka
    // refuses a send to a partition its metadata lacks (UnknownPartition) rather than waiting.
    let highest = messages.iter().map(|m| m.0).max().unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let metadata = producer
            .client()
            .fetch_metadata(Some(topic), Duration::from_secs(5))
            .expect("topic metadata");
        let known = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .map_or(0, |t| t.partitions().len());
        if known > highest as usize {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{topic} still has {known} partitions after 30 s; partition {highest} expected"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (partition, key, body) in messages {
        producer
            .send(
                FutureRecord::to(topic)
                    .partition(*partition)
                    .key(key)
                    .payload(body),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("produced");
    }
}

/// Waits until the store holds `expected`, or panics with what the run printed.
fn wait_for_rows(
    run: &mut Running,
    store: &Path,
    expected: &BTreeMap<(String, i64), Decimal>,
    limit: Duration,
) {
    let deadline = Instant::now() + limit;
    loop {
        let rows = stored(store);
        if rows.len() >= expected.len() {
            assert_eq!(&rows, expected);
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} rows after {limit:?}:\n{}",
            rows.len(),
            expected.len(),
            run.log().join("\n")
        );
        run.read_for(Duration::from_millis(500));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_added_while_running_or_stopped_are_read_from_their_earliest_offset() {
    let setup = Setup::new("grow").await;
    let (messages, all_expected) = trades(900, 23);
    let portfolio = |part: &[(String, Vec<u8>)]| -> BTreeMap<(String, i64), Decimal> {
        part.iter()
            .filter_map(|(key, body)| {
                let record: serde_json::Value = serde_json::from_slice(body).unwrap();
                let id = (key.clone(), record["trade_id"].as_i64().unwrap());
                all_expected.get(&id).map(|p| (id, *p))
            })
            .collect()
    };
    let (before, rest) = messages.split_at(300);
    let (during, rest) = rest.split_at(200);
    let (added_running, added_stopped) = rest.split_at(200);
    // Written before the first start: `latest` skips them.
    produce(&setup.topic, before).await;
    let (config, store) = parquet_config(
        &setup,
        std::slice::from_ref(&setup.topic),
        &["source.starting_offsets=\"latest\""],
    );
    let mut run = Running::spawn(setup.run_triggered(&config, "interval:200ms", &[]));
    let deadline = Instant::now() + Duration::from_secs(60);
    while !run
        .log()
        .iter()
        .any(|l| l.contains("Partitions assigned to this instance"))
    {
        assert!(Instant::now() < deadline, "{}", run.log().join("\n"));
        run.read_for(Duration::from_millis(200));
    }
    produce(&setup.topic, during).await;
    let mut expected = portfolio(during);
    wait_for_rows(&mut run, &store, &expected, Duration::from_secs(60));

    // Two partitions added while the query runs: found by the next metadata refresh, read whole.
    add_partitions(&setup.topic, 8).await;
    let to_new: Vec<(i32, String, Vec<u8>)> = added_running
        .iter()
        .enumerate()
        .map(|(i, (k, v))| (6 + (i % 2) as i32, k.clone(), v.clone()))
        .collect();
    produce_to(&setup.topic, &to_new).await;
    expected.extend(portfolio(added_running));
    wait_for_rows(&mut run, &store, &expected, Duration::from_secs(90));
    run.terminate(Duration::from_secs(60));

    // A partition added and written while the query is stopped has no committed offset when it
    // restarts: it is read from its earliest offset, not from `latest`.
    add_partitions(&setup.topic, 9).await;
    let to_stopped: Vec<(i32, String, Vec<u8>)> = added_stopped
        .iter()
        .map(|(k, v)| (8, k.clone(), v.clone()))
        .collect();
    produce_to(&setup.topic, &to_stopped).await;
    expected.extend(portfolio(added_stopped));
    let log = Running::spawn(setup.run_with(&config, &[])).finish(Duration::from_secs(120));
    assert_eq!(
        progress_sum(&log, "numInputRows"),
        added_stopped.len() as u64,
        "{log}"
    );
    assert_eq!(
        stored(&store),
        expected,
        "every record after the first start, once"
    );
}

/// A one-partition topic whose records are read a few per second, each its own record batch, so
/// the query is far behind the end when retention deletes records.
async fn slow_reader_setup(name: &str, fail_on_data_loss: bool) -> (Setup, Pipeline, PathBuf) {
    let setup = Setup::new(name).await;
    let topic = format!("{}_one", setup.topic);
    testkit::kafka::create_topic(&topic, 1).await;
    let (config, store) = parquet_config(
        &setup,
        std::slice::from_ref(&topic),
        &[
            &format!("source.fail_on_data_loss={fail_on_data_loss}"),
            "source.properties={ \"queued.min.messages\" = \"1\", \"max.partition.fetch.bytes\" = \"1\" }",
        ],
    );
    (setup, config, store)
}

/// 60 records, one per send (so one per record batch), to partition 0 of `topic`: offset i holds
/// `messages[i]`.
async fn produce_sixty(topic: &str, seed: u64) -> Messages {
    let (messages, _) = trades(60, seed);
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("linger.ms", "0")
        .create()
        .unwrap();
    for (key, body) in &messages {
        producer
            .send(
                FutureRecord::to(topic).partition(0).key(key).payload(body),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("produced");
    }
    messages
}

/// Deletes the records of partition 0 of `topic` below `offset`, as retention does.
async fn delete_below(topic: &str, offset: i64) {
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, rdkafka::Offset::Offset(offset))
        .unwrap();
    admin()
        .delete_records(&tpl, &AdminOptions::new())
        .await
        .expect("delete records");
}

/// The query of `config` running micro-batches of one record every 300 ms, so it stays behind.
fn spawn_one_record_per_batch(setup: &Setup, config: &Pipeline) -> Running {
    Running::spawn(setup.run_triggered(config, "interval:300ms", &["--max-records-per-batch", "1"]))
}

/// Waits until the run stored at least one batch, then deletes offsets below 40.
async fn delete_behind_the_reader(run: &mut Running, topic: &str) {
    run.wait_for_batches(2, Duration::from_secs(60));
    delete_below(topic, 40).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_deleted_by_retention_before_they_are_read_stop_the_query_naming_the_range() {
    let (setup, config, _store) = slow_reader_setup("lossstop", true).await;
    let topic = format!("{}_one", setup.topic);
    produce_sixty(&topic, 24).await;
    let mut run = spawn_one_record_per_batch(&setup, &config);
    delete_behind_the_reader(&mut run, &topic).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while run.is_running() {
        assert!(
            Instant::now() < deadline,
            "the query did not stop:\n{}",
            run.log().join("\n")
        );
        run.read_for(Duration::from_millis(200));
    }
    run.read_for(Duration::from_millis(500));
    let log = run.log().join("\n");
    let prefix = format!("{topic}/0: offsets ");
    let at = log.find(&prefix).unwrap_or_else(|| panic!("{log}"));
    let range = &log[at + prefix.len()..];
    let (from, rest) = range.split_once("..").unwrap();
    let from: i64 = from.parse().unwrap();
    assert!((1..40).contains(&from), "{log}");
    assert!(
        rest.starts_with("40 were deleted by retention before they were read"),
        "{log}"
    );
    assert!(log.contains("fail_on_data_loss = false"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_deleted_by_retention_are_counted_and_the_query_goes_on_without_fail_on_data_loss()
{
    let (setup, config, store) = slow_reader_setup("losscount", false).await;
    let topic = format!("{}_one", setup.topic);
    let messages = produce_sixty(&topic, 25).await;
    let mut run = spawn_one_record_per_batch(&setup, &config);
    delete_behind_the_reader(&mut run, &topic).await;
    // Every record from 40 on arrives; then stop and count.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let read = progress_sum(&run.log().join("\n"), "numInputRows");
        let lost = run
            .log()
            .iter()
            .filter(|l| l.starts_with('{'))
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["sources"][0]["metrics"]
                    ["lost_offsets"]
                    .as_u64()
                    .unwrap_or(0)
            })
            .max()
            .unwrap_or(0);
        if read + lost >= 60 {
            assert!(lost > 0, "{}", run.log().join("\n"));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "read {read}, lost {lost}:\n{}",
            run.log().join("\n")
        );
        run.read_for(Duration::from_millis(500));
    }
    let log = run.terminate(Duration::from_secs(60));
    assert!(
        log.contains("Data loss: continuing (fail_on_data_loss = false)"),
        "{log}"
    );
    // What was read is exactly the records before the deleted range and every one from 40 on.
    let read = progress_sum(&log, "numInputRows") as usize;
    let first_lost = read - 20;
    let (_, all_expected) = trades(60, 25);
    let kept: BTreeMap<(String, i64), Decimal> = messages
        .iter()
        .enumerate()
        .filter(|(i, _)| *i < first_lost || *i >= 40)
        .filter_map(|(_, (key, body))| {
            let record: serde_json::Value = serde_json::from_slice(body).unwrap();
            let id = (key.clone(), record["trade_id"].as_i64().unwrap());
            all_expected.get(&id).map(|p| (id, *p))
        })
        .collect();
    assert_eq!(stored(&store), kept);
}

/// The number text after `"field":` in a JSON object (decimals are exact JSON numbers, which
/// `serde_json` would read as floats).
fn number_text<'a>(json: &'a str, field: &str) -> &'a str {
    let start = json
        .find(&format!("\"{field}\":"))
        .unwrap_or_else(|| panic!("no {field} in {json}"))
        + field.len()
        + 3;
    let rest = &json[start..];
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || "+-.eE".contains(c)))
        .unwrap_or(rest.len());
    &rest[..end]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kafka_sink_writes_every_row_once_as_json_keyed_by_its_column() {
    use std::str::FromStr;

    let setup = Setup::new("ksink").await;
    let out = format!("{}_out", setup.topic);
    testkit::kafka::create_topic(&out, 3).await;
    let (messages, expected) = trades(1_000, 26);
    produce(&setup.topic, &messages).await;
    let config = setup
        .config
        .clone()
        .set_flag(&format!(
            "sink={{ type = \"kafka\", topic = \"{out}\", key = \"symbol\", compression = \"zstd\" }}"
        ))
        .set_flag("dead_letter={ type = \"file\" }")
        .set_path("dead_letter.path", &setup.dir.path().join("dead_letters"));
    let log = Running::spawn(setup.run_with(&config, &[])).finish(Duration::from_secs(120));
    assert_eq!(progress_sum(&log, "numInputRows"), 1_000, "{log}");
    assert_committed_to_end(&setup.group, &setup.topic);

    let mut written: BTreeMap<(String, i64), Vec<Decimal>> = BTreeMap::new();
    let messages = testkit::kafka::read_topic(&out, expected.len(), Duration::from_secs(2)).await;
    // Nothing more than the rows arrives.
    assert_eq!(messages.len(), expected.len());
    for m in &messages {
        let body = std::str::from_utf8(&m.payload).unwrap();
        let row: serde_json::Value = m.json();
        let symbol = row["symbol"].as_str().unwrap().to_owned();
        assert_eq!(m.key, symbol, "keyed by symbol: {body}");
        let profit = Decimal::from_str(number_text(body, "profit")).unwrap();
        written
            .entry((symbol, row["trade_id"].as_i64().unwrap()))
            .or_default()
            .push(profit);
    }
    let once: BTreeMap<(String, i64), Decimal> = written
        .into_iter()
        .map(|(k, v)| {
            assert_eq!(v.len(), 1, "{k:?} written once");
            (k, v[0])
        })
        .collect();
    let normal = |m: &BTreeMap<(String, i64), Decimal>| -> BTreeMap<(String, i64), Decimal> {
        m.iter().map(|(k, v)| (k.clone(), v.normalize())).collect()
    };
    assert_eq!(
        normal(&once),
        normal(&expected),
        "every row, its exact profit"
    );
}
