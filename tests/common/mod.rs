//! Helpers of the tests that run `coinstream` on the real Kafka and Cassandra
//! (`scripts/services.sh up`): a fresh topic, group, keyspace and config per test, generated
//! trades with their independently computed profit, and readers of what ended up where.
// Each test binary uses a different part of this module.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Output};
use std::str::FromStr;
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use rust_decimal::Decimal;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::value::CqlDecimal;

pub const PARTITIONS: i32 = 6;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn brokers() -> String {
    std::env::var("KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

pub fn cassandra_node() -> String {
    std::env::var("CASSANDRA_NODES")
        .unwrap_or_else(|_| "127.0.0.1:9042".into())
        .split(',')
        .next()
        .unwrap_or_default()
        .to_owned()
}

pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        nanos % 1_000_000_000_000
    )
}

/// One test's topic, group, keyspace and config file.
pub struct Setup {
    pub dir: tempfile::TempDir,
    pub topic: String,
    pub dead_letters: String,
    pub group: String,
    pub keyspace: String,
    pub config: PathBuf,
}

impl Setup {
    pub async fn new(name: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let topic = unique(&format!("trades_{name}"));
        let dead_letters = format!("{topic}_dlq");
        let group = unique(&format!("group_{name}"));
        let keyspace = unique(&format!("ks_{name}"));
        let text = std::fs::read_to_string(repo().join("pipelines/kafka-cassandra.toml"))
            .unwrap()
            .replace("\"../", &format!("\"{}/", repo().display()))
            .replace(
                "topics = [\"crypto_trades\"]",
                &format!("topics = [\"{topic}\"]"),
            )
            .replace(
                "group_id = \"coinstream-profit\"",
                &format!("group_id = \"{group}\""),
            )
            .replace(
                "keyspace = \"crypto_keyspace\"",
                &format!("keyspace = \"{keyspace}\""),
            )
            .replace(
                "topic = \"crypto_trades_dead_letters\"",
                &format!("topic = \"{dead_letters}\""),
            )
            .replace(
                &format!("\"{}/data/kafka-cassandra/checkpoint\"", repo().display()),
                &format!("{:?}", dir.path().join("checkpoint")),
            );
        assert!(
            text.contains(&keyspace) && text.contains(&group) && text.contains("checkpoint"),
            "{text}"
        );
        let config = dir.path().join("pipeline.toml");
        std::fs::write(&config, text).unwrap();
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", brokers())
            .create()
            .unwrap();
        let topics = [
            NewTopic::new(&topic, PARTITIONS, TopicReplication::Fixed(1)),
            NewTopic::new(&dead_letters, 1, TopicReplication::Fixed(1)),
        ];
        let created = tokio::time::timeout(
            Duration::from_secs(30),
            admin.create_topics(&topics, &AdminOptions::new()),
        )
        .await
        .unwrap_or_else(|_| {
            panic!(
                "Kafka at {} did not answer; start it with scripts/services.sh up",
                brokers()
            )
        })
        .expect("create topics");
        for r in created {
            r.expect("topic created");
        }
        Self {
            dir,
            topic,
            dead_letters,
            group,
            keyspace,
            config,
        }
    }

    /// Writes `text` (this setup's config, as the test edited it) with the Cassandra sink
    /// replaced by a Parquet store under the test's folder and `dead_letter` as the body of the
    /// `[dead_letter]` section; returns the config file and the store's folder.
    pub fn parquet_config(&self, text: &str, dead_letter: &str) -> (PathBuf, PathBuf) {
        let store = self.dir.path().join("profit");
        let (head, _) = text.split_once("[sink]").unwrap();
        let config = self.dir.path().join("parquet.toml");
        std::fs::write(
            &config,
            format!(
                "{head}[sink]\ntype = \"parquet\"\npath = {store:?}\npartition_by = [\"symbol\"]\n\n[dead_letter]\n{dead_letter}"
            ),
        )
        .unwrap();
        (config, store)
    }

    pub fn run(&self, extra: &[&str]) -> Command {
        self.run_with(&self.config, extra)
    }

    pub fn run_with(&self, config: &std::path::Path, extra: &[&str]) -> Command {
        self.run_triggered(config, "available-now", extra)
    }

    /// `coinstream run` with `config` and `trigger`, printing progress as JSON lines.
    pub fn run_triggered(
        &self,
        config: &std::path::Path,
        trigger: &str,
        extra: &[&str],
    ) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_coinstream"));
        cmd.args([
            "run",
            "--config",
            config.to_str().unwrap(),
            "--trigger",
            trigger,
            "--progress",
            "json",
        ]);
        cmd.args(extra).current_dir(self.dir.path());
        cmd
    }
}

/// Generated trades as bus records, plus the expected profit of each portfolio trade.
/// Messages to produce, `(key, payload)`.
pub type Messages = Vec<(String, Vec<u8>)>;

/// The expected profit of each portfolio trade, by `(symbol, trade_id)`.
pub type Expected = BTreeMap<(String, i64), Decimal>;

pub fn trades(n: u64, seed: u64) -> (Messages, Expected) {
    let mut generator = connectors::generate::Generator::from_files(
        &repo().join("required_data/my_Portfolio.json"),
        &repo().join("required_data/coin_map.json"),
        seed,
        1_795_000_000_000_000,
        1_000,
    )
    .unwrap();
    let portfolio: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("required_data/my_Portfolio.json")).unwrap(),
    )
    .unwrap();
    let mut messages = Vec::new();
    let mut expected = BTreeMap::new();
    for _ in 0..n {
        let trade = generator.next_trade();
        let record = generator.record(&trade, "2026-11-23T00:00:00.000000Z");
        if let Some(h) = portfolio.get(&record.symbol) {
            let d = |v: &serde_json::Value| Decimal::from_str(v.as_str().unwrap()).unwrap();
            let profit =
                (Decimal::from_str(&record.price).unwrap() - d(&h["buy_price"])) * d(&h["size"]);
            expected.insert((record.symbol.clone(), record.trade_id), profit);
        }
        messages.push((record.symbol.clone(), record.to_json()));
    }
    (messages, expected)
}

pub async fn produce(topic: &str, messages: &[(String, Vec<u8>)]) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("enable.idempotence", "true")
        .set("linger.ms", "20")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .unwrap();
    for chunk in messages.chunks(10_000) {
        let sends = chunk.iter().map(|(key, body)| {
            producer.send(
                FutureRecord::to(topic).key(key).payload(body),
                Duration::from_secs(60),
            )
        });
        for r in futures::future::join_all(sends).await {
            r.map_err(|(e, _)| e).expect("produced");
        }
    }
}

pub async fn session() -> Session {
    let built = tokio::time::timeout(
        Duration::from_secs(30),
        SessionBuilder::new().known_node(cassandra_node()).build(),
    )
    .await;
    match built {
        Ok(Ok(session)) => session,
        Ok(Err(e)) => panic!(
            "Cassandra at {} refused: {e}; start it with scripts/services.sh up",
            cassandra_node()
        ),
        Err(_) => panic!(
            "Cassandra at {} did not answer; start it with scripts/services.sh up",
            cassandra_node()
        ),
    }
}

pub fn decimal(d: &CqlDecimal) -> Decimal {
    let (bytes, scale) = d.as_signed_be_bytes_slice_and_exponent();
    let mut v: i128 = if bytes.first().is_some_and(|b| b & 0x80 != 0) {
        -1
    } else {
        0
    };
    for b in bytes {
        v = (v << 8) | i128::from(*b);
    }
    Decimal::from_i128_with_scale(v, scale as u32)
}

/// Every `(symbol, trade_id) → [profit]` stored in the test's keyspace (a list, to see doubles).
pub async fn stored(session: &Session, keyspace: &str) -> BTreeMap<(String, i64), Vec<Decimal>> {
    let query = format!("SELECT symbol, trade_id, profit FROM \"{keyspace}\".\"crypto_trades\"");
    let mut rows = session
        .query_iter(query, &[])
        .await
        .expect("select")
        .rows_stream::<(String, i64, CqlDecimal)>()
        .unwrap();
    let mut out: BTreeMap<(String, i64), Vec<Decimal>> = BTreeMap::new();
    while let Some((symbol, id, profit)) = rows.try_next().await.unwrap() {
        out.entry((symbol, id)).or_default().push(decimal(&profit));
    }
    out
}

pub fn assert_exactly(
    stored: &BTreeMap<(String, i64), Vec<Decimal>>,
    expected: &BTreeMap<(String, i64), Decimal>,
) {
    let missing: Vec<_> = expected
        .keys()
        .filter(|k| !stored.contains_key(*k))
        .take(5)
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} expected rows missing, e.g. {missing:?}",
        expected.len() - stored.len().min(expected.len()),
        expected.len()
    );
    let extra: Vec<_> = stored
        .keys()
        .filter(|k| !expected.contains_key(*k))
        .take(5)
        .collect();
    assert!(extra.is_empty(), "unexpected rows, e.g. {extra:?}");
    for (key, profit) in expected {
        let got = &stored[key];
        assert_eq!(got.len(), 1, "{key:?} stored once");
        assert_eq!(got[0].normalize(), profit.normalize(), "profit of {key:?}");
    }
}

/// Each partition's committed offset in `group` (None when nothing is committed) and its end.
pub fn committed_and_end(group: &str, topic: &str) -> Vec<(i32, Option<i64>, i64)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition(topic, p);
    }
    let committed = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .unwrap();
    committed
        .elements()
        .iter()
        .map(|e| {
            let (_, high) = consumer
                .fetch_watermarks(topic, e.partition(), Duration::from_secs(10))
                .unwrap();
            let at = match e.offset() {
                Offset::Offset(n) => Some(n),
                _ => None,
            };
            (e.partition(), at, high)
        })
        .collect()
}

/// Committed offsets of the group equal every partition's end.
pub fn assert_committed_to_end(group: &str, topic: &str) {
    for (partition, committed, end) in committed_and_end(group, topic) {
        assert_eq!(
            committed,
            Some(end),
            "partition {partition} committed to its end"
        );
    }
}

/// Waits until `group` is stable with `members` members, each holding at least one partition.
pub fn wait_for_members(group: &str, members: usize, limit: Duration) {
    let client: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    let deadline = Instant::now() + limit;
    let mut last = String::new();
    while Instant::now() < deadline {
        let list = client
            .fetch_group_list(Some(group), Duration::from_secs(10))
            .unwrap();
        if let Some(g) = list.groups().first() {
            // A member's assignment is the consumer protocol's bytes; more than the header of
            // an empty assignment means it holds partitions.
            let holding = g
                .members()
                .iter()
                .filter(|m| m.assignment().is_some_and(|a| a.len() > 10))
                .count();
            if g.state() == "Stable" && g.members().len() == members && holding == members {
                return;
            }
            last = format!("{} with {} members", g.state(), g.members().len());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("group {group} did not become stable with {members} members in {limit:?}: {last}");
}

/// A `coinstream` process whose standard error is read as it comes, so a long run never blocks
/// on a full pipe.
pub struct Running {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
    log: Vec<String>,
}

impl Running {
    pub fn spawn(mut cmd: Command) -> Self {
        let mut child = cmd
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                let _ = tx.send(line);
            }
        });
        Self {
            child,
            lines,
            log: Vec::new(),
        }
    }

    /// The lines written so far.
    pub fn log(&mut self) -> &[String] {
        self.log.extend(self.lines.try_iter());
        &self.log
    }

    /// Waits until the process printed `batches` progress lines; panics after `limit`.
    pub fn wait_for_batches(&mut self, batches: usize, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.log().iter().filter(|l| l.starts_with('{')).count() < batches {
            assert!(
                Instant::now() < deadline,
                "fewer than {batches} batches after {limit:?}:\n{}",
                self.log.join("\n")
            );
            if let Ok(line) = self.lines.recv_timeout(Duration::from_millis(100)) {
                self.log.push(line);
            }
        }
    }

    /// Collects what the process prints for `span`.
    pub fn read_for(&mut self, span: Duration) {
        let until = Instant::now() + span;
        while Instant::now() < until {
            if let Ok(line) = self.lines.recv_timeout(Duration::from_millis(100)) {
                self.log.push(line);
            }
        }
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Kills the process with SIGKILL, as a crash, and returns what it printed.
    pub fn kill(mut self) -> Vec<String> {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        self.drain()
    }

    /// Stops the process with SIGTERM (a graceful stop); see [`Running::finish`].
    pub fn terminate(self, limit: Duration) -> String {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success(), "kill -TERM {}", self.child.id());
        self.finish(limit)
    }

    /// Waits for the process to exit and returns its whole log; panics when it does not exit
    /// successfully within `limit`.
    pub fn finish(mut self, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "coinstream did not finish within {limit:?}:\n{}",
                    self.log().join("\n")
                );
            }
            self.read_for(Duration::from_millis(100));
        };
        let log = self.drain().join("\n");
        assert!(status.success(), "coinstream failed ({status}):\n{log}");
        log
    }

    /// Everything printed, once the process has exited (the reader ends at the pipe's end).
    fn drain(&mut self) -> Vec<String> {
        let mut log = std::mem::take(&mut self.log);
        log.extend(self.lines.iter());
        log
    }
}

/// The sum of `field` over the JSON progress lines of a log.
pub fn progress_sum(log: &str, field: &str) -> u64 {
    log.lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()[field]
                .as_u64()
                .unwrap()
        })
        .sum()
}

pub fn check(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "coinstream failed ({}):\n{err}",
        out.status
    );
    err
}

/// Every `(symbol, trade_id) → profit` in the Parquet files under `root`.
pub fn parquet_profits(root: &std::path::Path) -> BTreeMap<(String, i64), Decimal> {
    use arrow::array::{Array, AsArray, Decimal128Array};
    use arrow::datatypes::Int64Type;
    let mut rows = BTreeMap::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
                std::fs::File::open(&path).unwrap(),
            )
            .unwrap()
            .build()
            .unwrap();
            for batch in reader {
                let batch = batch.unwrap();
                let col = |name: &str| batch.column(batch.schema().index_of(name).unwrap()).clone();
                let (symbol, ids, profit) = (col("symbol"), col("trade_id"), col("profit"));
                let profit = profit.as_any().downcast_ref::<Decimal128Array>().unwrap();
                for i in 0..batch.num_rows() {
                    let previous = rows.insert(
                        (
                            symbol.as_string::<i32>().value(i).to_owned(),
                            ids.as_primitive::<Int64Type>().value(i),
                        ),
                        Decimal::from_str(&profit.value_as_string(i)).unwrap(),
                    );
                    assert!(previous.is_none(), "a row stored twice in {root:?}");
                }
            }
        }
    }
    rows
}
