//! The production path end to end on the real Kafka and Cassandra (`scripts/services.sh up`):
//! generated trades produced to a fresh topic → `coinstream run` with
//! `pipelines/kafka-cassandra.toml` → Cassandra, checked row by row against an independent
//! computation of each profit. The servers must be running: a missing one fails the test.
//! One test swaps Cassandra for the Parquet store, to show a poison row does not hold the
//! partition up whatever the sink.

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;
use std::time::{Duration, Instant};

use common::*;
use rust_decimal::Decimal;

mod common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_100k_trades_from_six_partitions_exactly_once_with_their_profit() {
    let setup = Setup::new("full").await;
    let (messages, expected) = trades(100_000, 1);
    produce(&setup.topic, &messages).await;
    let started = Instant::now();
    let out = setup.run(&[]).output().unwrap();
    let log = records(&out);
    let elapsed = started.elapsed();
    let session = session().await;
    let rows = stored(&session, &setup.keyspace).await;
    assert_exactly(&rows, &expected);
    assert_committed_to_end(&setup.group, &setup.topic);
    let batches = log.lines().filter(|l| l.starts_with('{')).count();
    assert!(
        batches >= 5,
        "max_records_per_batch bounds each batch: {batches} batches"
    );
    eprintln!(
        "100000 trades ({} portfolio rows) Kafka -> Cassandra in {elapsed:?}",
        expected.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_three_sigkills_with_every_row_once_and_offsets_at_the_end() {
    let setup = Setup::new("kill").await;
    let (messages, expected) = trades(60_000, 2);
    produce(&setup.topic, &messages).await;
    let mut seed: u64 = 0x9e3779b97f4a7c15 ^ std::process::id() as u64;
    let mut replays = 0;
    for round in 0..3 {
        let mut child = Running::spawn(setup.run(&["--max-records-per-batch", "3000"]));
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        // A random point inside the run: after 1 to 3 batches of this round, then up to 300 ms
        // into the next batch (a batch of 3000 rows takes longer than that to write).
        let batches = 1 + (seed >> 40) % 3;
        let delay = Duration::from_millis((seed >> 20) % 300);
        child.wait_for_batches(batches as usize, Duration::from_secs(120));
        std::thread::sleep(delay);
        let log = child.kill();
        replays += log
            .iter()
            .filter(|l| l.contains("Replaying a batch that was not committed"))
            .count();
        eprintln!(
            "round {round}: killed {delay:?} after batch {batches}, {} batches done, {replays} replays so far",
            log.iter().filter(|l| l.starts_with('{')).count()
        );
    }
    let log = Running::spawn(setup.run(&["--max-records-per-batch", "3000"]))
        .finish(Duration::from_secs(300));
    replays += log
        .lines()
        .filter(|l| l.contains("Replaying a batch that was not committed"))
        .count();
    eprintln!("{replays} uncommitted batches replayed after kills");
    let session = session().await;
    assert_exactly(&stored(&session, &setup.keyspace).await, &expected);
    assert_committed_to_end(&setup.group, &setup.topic);
}

/// Two engines in one consumer group, as users scale past one machine: both join first, then
/// the trades arrive, so the split does not depend on how fast one instance starts (with
/// `available-now` a quick first member can drain the topic before the second has joined).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_in_one_group_share_the_partitions_and_store_every_row_once() {
    let setup = Setup::new("pair").await;
    let (messages, expected) = trades(60_000, 3);
    let second_dir = tempfile::tempdir().unwrap();
    let second_config = setup.config.clone().set_path(
        "engine.checkpoint_dir",
        &second_dir.path().join("checkpoint"),
    );
    let args = ["--max-records-per-batch", "5000"];
    let a = Running::spawn(setup.run_triggered(&setup.config, "interval:200ms", &args));
    let b = Running::spawn(setup.run_triggered(&second_config, "interval:200ms", &args));
    wait_for_members(&setup.group, 2, Duration::from_secs(120));
    produce(&setup.topic, &messages).await;

    common::wait_for_no_lag(&setup.group, &setup.topic, Duration::from_secs(600)).await;
    let (log_a, log_b) = (
        a.terminate(Duration::from_secs(60)),
        b.terminate(Duration::from_secs(60)),
    );
    let (ra, rb) = (
        progress_sum(&log_a, "numInputRows"),
        progress_sum(&log_b, "numInputRows"),
    );
    eprintln!("instance a read {ra}, instance b read {rb}");
    if ra + rb != messages.len() as u64 {
        eprintln!("instance a:\n{log_a}\ninstance b:\n{log_b}");
    }
    let session = session().await;
    assert_exactly(&stored(&session, &setup.keyspace).await, &expected);
    assert!(
        ra > 0 && rb > 0,
        "both instances took partitions: a {ra}, b {rb}"
    );
    assert_eq!(
        ra + rb,
        messages.len() as u64,
        "no message read by both instances"
    );
    assert_committed_to_end(&setup.group, &setup.topic);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_messages_go_to_the_dead_letter_topic_with_their_reason() {
    let setup = Setup::new("hostile").await;
    let (mut messages, expected) = trades(20_000, 4);
    let hostile: Vec<(String, Vec<u8>)> = (0..200)
        .map(|i| {
            let body = match i % 4 {
                0 => r#"{"symbol":"BTC-USD","trade_id":1,"price":"abc","size":"1","side":"buy","trade_time":"2026-11-20T00:00:00Z"}"#.to_owned(),
                1 => r#"{"symbol":"BTC-USD","trade_id":"#.to_owned(),
                2 => r#"{"symbol":"ETH-USD","price":"1","size":"1","side":"buy","trade_time":"2026-11-20T00:00:00Z"}"#.to_owned(),
                _ => "\u{0}\u{1}not json at all".to_owned(),
            };
            (format!("hostile-{i}"), body.into_bytes())
        })
        .collect();
    for (i, h) in hostile.iter().enumerate() {
        messages.insert(i * 100 + 50, h.clone());
    }
    produce(&setup.topic, &messages).await;
    let out = setup.run(&[]).output().unwrap();
    let log = records(&out);
    let dead = progress_sum(&log, "numDeadLetters");
    assert_eq!(dead, 200, "every hostile message counted");
    let session = session().await;
    assert_exactly(&stored(&session, &setup.keyspace).await, &expected);

    let letters = testkit::kafka::read_json(&setup.dead_letters, 200).await;
    assert_eq!(
        letters.len(),
        200,
        "every hostile message is on the dead-letter topic"
    );
    let raws: BTreeSet<String> = letters
        .iter()
        .map(|l| l["raw"].as_str().unwrap_or("").to_owned())
        .collect();
    for (_, body) in &hostile {
        let text = String::from_utf8(body.clone()).unwrap();
        assert!(raws.contains(&text), "{text} in the dead letters");
    }
    for l in &letters {
        assert_eq!(l["topic"], setup.topic.as_str());
        assert!(l["offset"].is_i64() && l["partition"].is_i64());
        let reason = l["reason"].as_str().unwrap();
        let raw = l["raw"].as_str().unwrap_or("");
        let ok = if raw.contains("abc") {
            reason.contains("abc")
        } else if raw.ends_with("\"trade_id\":") {
            reason.starts_with("invalid JSON")
        } else if raw.contains("ETH-USD") {
            reason == "missing required field trade_id"
        } else {
            reason.starts_with("invalid JSON")
        };
        assert!(ok, "reason {reason:?} for {raw:?}");
    }
}

/// The `profit-overflow-poison-pill` case on the Kafka path: the good rows are stored, the
/// overflowing one goes to the dead-letter topic, and the group commits past it, so a second run
/// reads nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trade_whose_profit_overflows_is_dead_lettered_and_the_group_commits_past_it() {
    let setup = Setup::new("poison").await;
    let records =
        std::fs::read_to_string(repo().join("tests/fixtures/profit-overflow/kafka_records.txt"))
            .unwrap();
    let messages: Messages = records
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (key, value) = l.split_once('|').unwrap();
            (key.to_owned(), value.as_bytes().to_vec())
        })
        .collect();
    assert_eq!(messages.len(), 3);
    produce(&setup.topic, &messages).await;

    let (config, store) = setup.parquet_config(&setup.config);

    let expected: BTreeMap<(String, i64), Decimal> = [
        (("ADA-USD".to_owned(), 96034230), "646.8"),
        (("ADA-USD".to_owned(), 96034232), "658.8"),
    ]
    .into_iter()
    .map(|(k, v)| (k, Decimal::from_str(v).unwrap()))
    .collect();
    let log = common::records(&setup.run_with(&config, &[]).output().unwrap());
    assert_eq!(progress_sum(&log, "numInputRows"), 3, "{log}");
    assert_eq!(progress_sum(&log, "numDeadLetters"), 1, "{log}");
    assert_eq!(parquet_profits(&store), expected, "the 2 good rows");
    assert_past_the_poison_row(&setup);

    // The second run finds the group past the poison row.
    let log = common::records(&setup.run_with(&config, &[]).output().unwrap());
    assert_eq!(progress_sum(&log, "numInputRows"), 0, "{log}");
    assert_eq!(parquet_profits(&store), expected);
    assert_past_the_poison_row(&setup);

    let letters = testkit::kafka::read_json(&setup.dead_letters, 1).await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(
        letters[0]["raw"].as_str().unwrap().as_bytes(),
        messages[1].1.as_slice()
    );
    let reason = letters[0]["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("transform profit (") && reason.contains("Arithmetic overflow"),
        "{reason}"
    );
}

/// The one partition the three records (all keyed ADA-USD) went to is committed to its end, 3;
/// the others hold nothing and have nothing to commit.
fn assert_past_the_poison_row(setup: &Setup) {
    let offsets = committed_and_end(&setup.group, &setup.topic);
    let used: Vec<_> = offsets.iter().filter(|(_, _, end)| *end > 0).collect();
    assert_eq!(used.len(), 1, "{offsets:?}");
    assert_eq!(
        used[0].1,
        Some(3),
        "committed past the poison row: {offsets:?}"
    );
    for (partition, committed, end) in &offsets {
        if *end == 0 {
            assert!(
                matches!(committed, None | Some(0)),
                "partition {partition}: {offsets:?}"
            );
        }
    }
}

/// `coinstream query` on the pipeline's Cassandra table: the issue's aggregate, a join with a
/// reference table, and `EXPLAIN ANALYZE` of a query for one symbol and day, which reads that
/// one partition only (its `output_rows` equals the partition's count, computed with filters
/// DataFusion cannot push, and is below the table's total).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_reads_the_cassandra_table_and_pushes_one_partition_down() {
    let setup = Setup::new("query").await;
    let (messages, expected) = trades(3_000, 5);
    produce(&setup.topic, &messages).await;
    check(&setup.run(&[]).output().unwrap());
    let query = |sql: &str| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_coinstream"));
        cmd.arg("query").args(setup.config.args()).arg(sql);
        let out = cmd.current_dir(setup.dir.path()).output().unwrap();
        check(&out);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // The cells of each row of a pretty-printed table, header and borders dropped.
    let rows = |table: &str| -> Vec<Vec<String>> {
        table
            .lines()
            .filter(|l| l.starts_with("| "))
            .skip(1)
            .map(|l| {
                l.trim_matches('|')
                    .split(" | ")
                    .map(|c| c.trim().to_owned())
                    .collect()
            })
            .collect()
    };

    let mut by_symbol: BTreeMap<String, (usize, Decimal)> = BTreeMap::new();
    for ((symbol, _), profit) in &expected {
        let e = by_symbol.entry(symbol.clone()).or_insert((0, *profit));
        e.0 += 1;
        e.1 = e.1.max(*profit);
    }
    let got = rows(&query(
        "SELECT symbol, count(*) AS n, max(profit) AS best FROM crypto_trades \
         GROUP BY symbol ORDER BY symbol",
    ));
    let got: BTreeMap<String, (usize, Decimal)> = got
        .iter()
        .map(|r| {
            (
                r[0].clone(),
                (r[1].parse().unwrap(), Decimal::from_str(&r[2]).unwrap()),
            )
        })
        .collect();
    assert_eq!(got, by_symbol);

    // The table is also named after the output transform, and joins the reference tables.
    let joined = rows(&query(
        "SELECT t.symbol, p.coin_name, count(*) AS n FROM profit t \
         JOIN portfolio p ON p.symbol = t.symbol GROUP BY t.symbol, p.coin_name ORDER BY t.symbol",
    ));
    assert_eq!(joined.len(), by_symbol.len(), "{joined:?}");
    for row in &joined {
        assert!(!row[1].is_empty(), "{row:?}");
        assert_eq!(
            row[2].parse::<usize>().unwrap(),
            by_symbol[&row[0]].0,
            "{row:?}"
        );
    }

    let (symbol, _) = by_symbol.iter().next().unwrap();
    let day = rows(&query(&format!(
        "SELECT CAST(max(trade_date) AS VARCHAR) FROM profit WHERE symbol = '{symbol}'"
    )))[0][0]
        .clone();
    let partition: usize = rows(&query(&format!(
        "SELECT count(*) FROM profit WHERE symbol || '' = '{symbol}' \
         AND CAST(trade_date AS VARCHAR) = '{day}'"
    )))[0][0]
        .parse()
        .unwrap();
    assert!(
        partition > 0 && partition < expected.len(),
        "{partition} of {}",
        expected.len()
    );
    let explained = query(&format!(
        "EXPLAIN ANALYZE SELECT count(*) FROM profit WHERE symbol = '{symbol}' \
         AND trade_date = DATE '{day}'"
    ));
    let scan = format!(
        "CassandraScan: {}.crypto_trades projection=[] where=\"symbol\" = ? AND \
         \"trade_date\" = ? ['{symbol}', {day}], metrics=[output_rows={partition},",
        setup.keyspace
    );
    assert!(explained.contains(&scan), "{scan} in\n{explained}");
    let plain = query(&format!(
        "EXPLAIN SELECT profit FROM profit WHERE symbol = '{symbol}' AND trade_date = DATE '{day}'"
    ));
    assert!(
        plain.contains("where=\"symbol\" = ? AND \"trade_date\" = ?"),
        "{plain}"
    );
}
