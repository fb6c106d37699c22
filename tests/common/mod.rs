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

    pub fn run(&self, extra: &[&str]) -> Command {
        self.run_with(&self.config, extra)
    }

    pub fn run_with(&self, config: &std::path::Path, extra: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_coinstream"));
        cmd.args([
            "run",
            "--config",
            config.to_str().unwrap(),
            "--trigger",
            "available-now",
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

/// Committed offsets of the group equal every partition's end.
pub fn assert_committed_to_end(group: &str, topic: &str) {
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
    for e in committed.elements() {
        let (_, high) = consumer
            .fetch_watermarks(topic, e.partition(), Duration::from_secs(10))
            .unwrap();
        assert_eq!(
            e.offset(),
            Offset::Offset(high),
            "partition {} committed to its end",
            e.partition()
        );
    }
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

pub fn wait(mut child: Child, limit: Duration) -> Output {
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "coinstream did not finish in {limit:?}:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
