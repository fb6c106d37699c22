//! Every source and every sink runs the one contract (`testkit::contract`): each test below is a
//! fixture (the connector over test data, and what it promises) handed to the contract's driver.
//! Kafka and Cassandra are the real services (`scripts/services.sh`); the exchanges are testkit's
//! stand-ins on loopback.

use std::collections::BTreeMap;
use std::io::Write;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::array::{Decimal128Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use connectors::cassandra::{CassandraConfig, CassandraSink};
use connectors::coinbase::capture::{CoinbaseCaptureConfig, CoinbaseCaptureSource};
use connectors::coinbase::config::{CoinbaseConfig, FeedKind};
use connectors::coinbase::source::CoinbaseSource;
use connectors::dead_letter::{FileDeadLetterConfig, FileDeadLetterSink};
use connectors::delta::{CompactionConfig, DeltaConfig, DeltaSink};
use connectors::gateio::config::GateioConfig;
use connectors::gateio::source::GateioSource;
use connectors::generate::source::{GenerateConfig, GenerateSource};
use connectors::kafka::config::{KafkaDeadLetterConfig, KafkaSourceConfig, StartingOffsets};
use connectors::kafka::dead_letter::KafkaDeadLetterSink;
use connectors::kafka::sink::{KafkaSink, KafkaSinkConfig};
use connectors::parquet::{ParquetConfig, ParquetSink};
use connectors::stdout::{StdoutConfig, StdoutFormat, StdoutSink};
use engine::{DeadLetterSink, RawRecord, Retry, Sink, Source};
use testkit::coinbase::{FeedServer, Step, exchange_ack, exchange_match, heartbeat};
use testkit::contract::{
    self, DeadLetterFailure, DeadLetterFixture, Delivery, Failure, Replay, SinkFixture,
    SourceFixture, Stage,
};
use testkit::env::{cassandra_nodes, kafka_bootstrap, required_data};
use testkit::gateio::RestServer;
use testkit::unique_name;

/// A record's identity without the fields a source stamps with the clock when it reads or
/// generates the record (`fields`), which differ between two reads of the same record.
fn identity_without(fields: &[&str], position: &serde_json::Value, record: &RawRecord) -> String {
    let mut value: serde_json::Value = serde_json::from_slice(&record.payload)
        .unwrap_or_else(|e| panic!("a record that is not JSON ({e}): {:?}", record.payload));
    for field in fields {
        value.as_object_mut().map(|o| o.remove(*field));
    }
    format!("{position} {value} {:?}", record.rejected)
}

// ---- sources --------------------------------------------------------------------------------

struct Generate;

impl SourceFixture for Generate {
    const NAME: &str = "generate";

    fn build(&mut self, _query: &str) -> Box<dyn Source> {
        Box::new(
            GenerateSource::new(GenerateConfig {
                portfolio: required_data("my_Portfolio.json"),
                coin_map: required_data("coin_map.json"),
                count: Some(60),
                rate_per_sec: None,
                seed: 7,
            })
            .expect("a valid generate config"),
        )
    }

    fn total(&self) -> usize {
        60
    }

    fn identity(&self, position: &serde_json::Value, record: &RawRecord) -> String {
        // Trade times follow the clock of the run that generates them (see the source's docs).
        identity_without(&["trade_time", "ingest_time"], position, record)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generate_source_meets_the_contract() {
    contract::check_source(&mut Generate).await;
}

/// A capture file: the subscriptions ack, 40 matches of two products with heartbeats between
/// them and one after the last (lines that are no record).
struct Capture {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Capture {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("a temp dir");
        let path = dir.path().join("feed.jsonl");
        let mut lines = vec![exchange_ack(&["BTC-USD", "ETH-USD"])];
        for i in 0..20 {
            lines.push(exchange_match("match", "BTC-USD", 1000 + i));
            lines.push(exchange_match("match", "ETH-USD", 5000 + i));
            if i % 6 == 5 {
                lines.push(heartbeat("BTC-USD", 1000 + i));
            }
        }
        lines.push(heartbeat("ETH-USD", 5019));
        std::fs::write(&path, lines.join("\n") + "\n").expect("write the capture");
        Self { path, _dir: dir }
    }
}

impl SourceFixture for Capture {
    const NAME: &str = "coinbase_capture";

    fn build(&mut self, _query: &str) -> Box<dyn Source> {
        Box::new(
            CoinbaseCaptureSource::new(CoinbaseCaptureConfig {
                path: self.path.clone(),
                coin_map: required_data("coin_map.json"),
            })
            .expect("a valid capture config"),
        )
    }

    fn total(&self) -> usize {
        40
    }

    fn identity(&self, position: &serde_json::Value, record: &RawRecord) -> String {
        identity_without(&["ingest_time"], position, record)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coinbase_capture_source_meets_the_contract() {
    contract::check_source(&mut Capture::new()).await;
}

/// The Coinbase Exchange feed stand-in: every connection gets the ack, 30 matches of two
/// products, then heartbeats until the client leaves (a reconnect sees the same trades again,
/// as the feed's `last_match` and overlap do).
struct Coinbase {
    server: FeedServer,
}

impl Coinbase {
    async fn new() -> Self {
        let mut script = vec![Step::Text(exchange_ack(&["BTC-USD", "ETH-USD"]))];
        for i in 0..15 {
            script.push(Step::Text(exchange_match("match", "BTC-USD", 2000 + i)));
            script.push(Step::Text(exchange_match("match", "ETH-USD", 7000 + i)));
        }
        script.push(Step::KeepAlive(vec![heartbeat("BTC-USD", 2014)]));
        Self {
            server: FeedServer::scripted(vec![script], 1).await,
        }
    }
}

impl SourceFixture for Coinbase {
    const NAME: &str = "coinbase";

    fn build(&mut self, _query: &str) -> Box<dyn Source> {
        let mut config = CoinbaseConfig::new(
            FeedKind::Exchange,
            required_data("coin_map.json"),
            required_data("my_Portfolio.json"),
        );
        config.url = Some(self.server.url.clone());
        config.product_ids = Some(vec!["BTC-USD".into(), "ETH-USD".into()]);
        config.reconnect_backoff_initial = Duration::from_millis(50);
        config.reconnect_backoff_max = Duration::from_millis(500);
        Box::new(CoinbaseSource::new(config).expect("a valid coinbase config"))
    }

    fn total(&self) -> usize {
        30
    }

    fn replay(&self) -> Replay {
        // A live feed cannot go back (see the source's module docs).
        Replay::Refused
    }

    fn identity(&self, position: &serde_json::Value, record: &RawRecord) -> String {
        identity_without(&["ingest_time"], position, record)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coinbase_source_on_the_feed_stand_in_meets_the_contract() {
    contract::check_source(&mut Coinbase::new().await).await;
}

/// The Gate.io REST stand-in serving closed 1m candles: two pairs, 25 windows each.
struct Gateio {
    server: RestServer,
}

const GATEIO_FROM: i64 = 1_780_000_000 / 60 * 60;
const GATEIO_WINDOWS: i64 = 25;

impl SourceFixture for Gateio {
    const NAME: &str = "gateio";

    fn build(&mut self, _query: &str) -> Box<dyn Source> {
        let mut config = GateioConfig::new(vec!["BTC_USDT".into(), "ETH_USDT".into()]);
        config.base_url = self.server.base.clone();
        config.from_secs = Some(GATEIO_FROM);
        config.to_secs = Some(GATEIO_FROM + (GATEIO_WINDOWS - 1) * 60);
        config.retry_backoff_initial_ms = 50;
        config.retry_backoff_max_ms = 200;
        Box::new(GateioSource::new(config).expect("a valid gateio config"))
    }

    fn total(&self) -> usize {
        2 * GATEIO_WINDOWS as usize
    }

    fn identity(&self, position: &serde_json::Value, record: &RawRecord) -> String {
        identity_without(&["ingest_time"], position, record)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateio_source_on_the_rest_stand_in_meets_the_contract() {
    let server = RestServer::candles(60).await;
    contract::check_source(&mut Gateio { server }).await;
}

/// A topic of three partitions with 60 keyed messages; each query is a consumer group.
struct Kafka {
    topic: String,
    groups: String,
    produced: usize,
}

impl Kafka {
    async fn new() -> Self {
        let topic = unique_name("contract_source");
        testkit::kafka::create_topic(&topic, 3).await;
        let mut kafka = Self {
            groups: format!("{topic}_group"),
            topic,
            produced: 0,
        };
        kafka.produce(60).await;
        kafka
    }

    async fn produce(&mut self, n: usize) {
        let messages: Vec<(String, Vec<u8>)> = (self.produced..self.produced + n)
            .map(|i| {
                let body = serde_json::json!({"id": i, "price": format!("{i}.5")});
                (format!("k{}", i % 10), body.to_string().into_bytes())
            })
            .collect();
        testkit::kafka::produce(&self.topic, &messages).await;
        self.produced += n;
    }
}

#[async_trait]
impl SourceFixture for Kafka {
    const NAME: &str = "kafka";

    fn build(&mut self, query: &str) -> Box<dyn Source> {
        let config = KafkaSourceConfig {
            brokers: Some(kafka_bootstrap()),
            topics: vec![self.topic.clone()],
            group_id: format!("{}_{query}", self.groups),
            starting_offsets: StartingOffsets::Earliest,
            ..KafkaSourceConfig::default()
        };
        Box::new(connectors::kafka::source::KafkaSource::new(config).expect("a valid config"))
    }

    fn total(&self) -> usize {
        60
    }

    fn available_now(&self) -> bool {
        // Its ends are fixed at start: messages produced later must not end the check early.
        false
    }

    async fn append(&mut self, n: usize) -> bool {
        self.produce(n).await;
        true
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_source_meets_the_contract() {
    contract::check_source(&mut Kafka::new().await).await;
}

// ---- sinks ----------------------------------------------------------------------------------

/// A sink that writes under a folder (Parquet's store, Delta's table): what [`InFolder`] needs
/// to run the contract over it.
#[async_trait]
trait FolderFormat: Send {
    /// Names the sink in failure messages.
    const NAME: &'static str;
    /// What its folder is (`store`, `table`), in failure messages and as the folder's name.
    const KIND: &'static str;

    /// A sink writing to `path`, one folder per value of each `partition_by` column.
    fn sink(path: PathBuf, partition_by: Vec<String>) -> Box<dyn Sink>;

    /// Every row written under `path`, as the contract renders them.
    async fn lines(path: &Path) -> Vec<String>;

    /// Failures of this format alone over the folder at `path`, beyond [`folder_failures`].
    fn own_failures(_path: PathBuf) -> Vec<Failure> {
        Vec::new()
    }
}

/// The failures of a sink that writes under a folder (`sink(path, partition_by)`), made in `dir`:
/// a `kind` path (`store`, `table`) that is a file fails the healthcheck, and a partition column
/// the rows do not have fails the write; both permanently.
fn folder_failures(
    dir: &Path,
    kind: &str,
    sink: fn(PathBuf, Vec<String>) -> Box<dyn Sink>,
) -> Vec<Failure> {
    let file = dir.join("a-file");
    std::fs::write(&file, b"not a folder").expect("write a file");
    vec![
        Failure {
            what: format!("a {kind} path that is a file"),
            sink: sink(file, Vec::new()),
            rows: None,
            stage: Stage::Healthcheck,
            retry: Retry::Permanent,
        },
        Failure {
            what: "a partition column the rows do not have".into(),
            sink: sink(dir.join("other"), vec!["trade_date".into()]),
            rows: None,
            stage: Stage::Write,
            retry: Retry::Permanent,
        },
    ]
}

/// The contract's fixture for a [`FolderFormat`]: one folder in a temp dir, partitioned by `key`.
struct InFolder<F> {
    dir: tempfile::TempDir,
    format: PhantomData<F>,
}

impl<F: FolderFormat> InFolder<F> {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("a temp dir"),
            format: PhantomData,
        }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join(F::KIND)
    }
}

#[async_trait]
impl<F: FolderFormat> SinkFixture for InFolder<F> {
    const NAME: &str = F::NAME;

    const DELIVERY: Delivery = Delivery::Idempotent;

    async fn build(&mut self, _schema: SchemaRef) -> Box<dyn Sink> {
        F::sink(self.path(), vec!["key".into()])
    }

    async fn read_back(&mut self, _at_least: usize) -> Vec<String> {
        F::lines(&self.path()).await
    }

    async fn failures(&mut self, _schema: SchemaRef) -> Vec<Failure> {
        let mut failures = folder_failures(self.dir.path(), F::KIND, F::sink);
        failures.extend(F::own_failures(self.path()));
        failures
    }
}

struct Parquet;

#[async_trait]
impl FolderFormat for Parquet {
    const NAME: &'static str = "parquet";

    const KIND: &'static str = "store";

    fn sink(path: PathBuf, partition_by: Vec<String>) -> Box<dyn Sink> {
        Box::new(ParquetSink::new(ParquetConfig { path, partition_by }))
    }

    /// The rows of every Parquet file under `dir`, with the partition columns of its folder
    /// names.
    async fn lines(dir: &Path) -> Vec<String> {
        let mut files = Vec::new();
        let mut folders = vec![dir.to_owned()];
        while let Some(folder) = folders.pop() {
            let Ok(entries) = std::fs::read_dir(&folder) else {
                continue;
            };
            for entry in entries {
                let path = entry.expect("a folder entry").path();
                if path.is_dir() {
                    folders.push(path);
                } else if path.extension().is_some_and(|e| e == "parquet") {
                    files.push(path);
                }
            }
        }
        let mut batches = Vec::new();
        for file in files {
            let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
                std::fs::File::open(&file).expect("open a parquet file"),
            )
            .expect("a readable parquet file")
            .build()
            .expect("a parquet reader");
            for batch in reader {
                let batch = batch.expect("a parquet batch");
                batches.push(testkit::hive::with_partition_columns(dir, &file, batch));
            }
        }
        contract::row_lines(&batches)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parquet_sink_meets_the_contract() {
    contract::check_sink(&mut InFolder::<Parquet>::new()).await;
}

struct Delta;

#[async_trait]
impl FolderFormat for Delta {
    const NAME: &'static str = "delta";

    const KIND: &'static str = "table";

    /// Compaction every other batch, so the contract's writes also run it.
    fn sink(path: PathBuf, partition_by: Vec<String>) -> Box<dyn Sink> {
        let config = DeltaConfig {
            path,
            partition_by,
            compaction: CompactionConfig {
                every_batches: std::num::NonZeroU64::new(2).expect("not zero"),
                ..CompactionConfig::default()
            },
        };
        Box::new(DeltaSink::new(config, testkit::contract::contract_schema()))
    }

    /// Read through the table's log, as `coinstream query` reads it.
    async fn lines(path: &Path) -> Vec<String> {
        if !path.join("_delta_log").is_dir() {
            return Vec::new();
        }
        let session = datafusion::prelude::SessionContext::new();
        let schema = testkit::contract::contract_schema();
        connectors::delta::register_table(&session, "t", path, schema, None)
            .await
            .expect("a readable Delta table");
        // Delta hands partition columns back dictionary-encoded.
        let batches = session
            .sql("SELECT arrow_cast(key, 'Utf8') AS key, id, price FROM t")
            .await
            .expect("a valid query")
            .collect()
            .await
            .expect("the table's rows");
        contract::row_lines(&batches)
    }

    fn own_failures(path: PathBuf) -> Vec<Failure> {
        vec![Failure {
            what: "a table partitioned otherwise than the config says".into(),
            sink: Self::sink(path, vec!["id".into()]),
            rows: None,
            stage: Stage::Healthcheck,
            retry: Retry::Permanent,
        }]
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_sink_meets_the_contract() {
    contract::check_sink(&mut InFolder::<Delta>::new()).await;
}

/// What a stdout sink printed, shared with the test.
#[derive(Clone, Default)]
struct Printed(Arc<Mutex<Vec<u8>>>);

impl Write for Printed {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A terminal whose reader went away.
struct ClosedPipe;

impl Write for ClosedPipe {
    fn write(&mut self, _buf: &[u8]) -> std::io::Result<usize> {
        Err(std::io::ErrorKind::BrokenPipe.into())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Err(std::io::ErrorKind::BrokenPipe.into())
    }
}

/// A JSON row of the contract's schema as the contract renders it (a decimal may be written as
/// a JSON string or number).
fn json_row_line(row: &serde_json::Value) -> String {
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    format!(
        "{}|{}|{}",
        text(&row["key"]),
        text(&row["id"]),
        text(&row["price"])
    )
}

#[derive(Default)]
struct Stdout {
    printed: Printed,
}

#[async_trait]
impl SinkFixture for Stdout {
    const NAME: &str = "stdout";

    const DELIVERY: Delivery = Delivery::AtLeastOnce;

    async fn build(&mut self, _schema: SchemaRef) -> Box<dyn Sink> {
        Box::new(StdoutSink::with_writer(
            StdoutConfig {
                format: StdoutFormat::Json,
            },
            Box::new(self.printed.clone()),
        ))
    }

    async fn read_back(&mut self, _at_least: usize) -> Vec<String> {
        let printed = self.printed.0.lock().unwrap_or_else(|e| e.into_inner());
        String::from_utf8_lossy(&printed)
            .lines()
            .map(|l| json_row_line(&serde_json::from_str(l).expect("a JSON line")))
            .collect()
    }

    async fn failures(&mut self, _schema: SchemaRef) -> Vec<Failure> {
        vec![Failure {
            what: "a closed pipe".into(),
            sink: Box::new(StdoutSink::with_writer(
                StdoutConfig::default(),
                Box::new(ClosedPipe),
            )),
            rows: None,
            stage: Stage::Write,
            retry: Retry::Permanent,
        }]
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdout_sink_meets_the_contract() {
    contract::check_sink(&mut Stdout::default()).await;
}

struct Cassandra {
    keyspace: String,
    session: scylla::client::session::Session,
}

/// A Cassandra sink of rows of `schema` into `keyspace`.contract_rows, through `contact_points`.
fn cassandra_sink(keyspace: &str, contact_points: Vec<String>, schema: SchemaRef) -> Box<dyn Sink> {
    let config: CassandraConfig = serde_json::from_value(serde_json::json!({
        "contact_points": contact_points,
        "keyspace": keyspace,
        "table": "contract_rows",
        "partition_key": ["key"],
        "clustering_key": ["id"],
        "connect_timeout_ms": 2000,
    }))
    .expect("a valid cassandra config");
    Box::new(CassandraSink::new(config, schema).expect("a valid cassandra sink"))
}

#[async_trait]
impl SinkFixture for Cassandra {
    const NAME: &str = "cassandra";

    const DELIVERY: Delivery = Delivery::Idempotent;

    async fn build(&mut self, schema: SchemaRef) -> Box<dyn Sink> {
        cassandra_sink(&self.keyspace, cassandra_nodes(), schema)
    }

    async fn read_back(&mut self, _at_least: usize) -> Vec<String> {
        let cql = format!(
            "SELECT key, id, price FROM \"{}\".contract_rows",
            self.keyspace
        );
        let result = match self.session.query_unpaged(cql.as_str(), ()).await {
            Ok(result) => result,
            // Before the first write made the table (empty batches write nothing).
            Err(e) if e.to_string().contains("contract_rows") => return Vec::new(),
            Err(e) => panic!("{cql}: {e}"),
        };
        let rows = result.into_rows_result().expect("a SELECT returns rows");
        rows.rows::<(String, i64, scylla::value::CqlDecimal)>()
            .expect("the contract's columns")
            .map(|row| {
                let (key, id, price) = row.expect("a row");
                format!("{key}|{id}|{}", testkit::cassandra::decimal(&price))
            })
            .collect()
    }

    async fn failures(&mut self, schema: SchemaRef) -> Vec<Failure> {
        // A table of the same name whose `id` is text: no write can work.
        let other = format!("{}_x", self.keyspace);
        for cql in [
            format!(
                "CREATE KEYSPACE \"{other}\" WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 1}}"
            ),
            format!(
                "CREATE TABLE \"{other}\".contract_rows (key text, id text, price decimal, PRIMARY KEY (key, id))"
            ),
        ] {
            self.session
                .query_unpaged(cql.as_str(), ())
                .await
                .expect(&cql);
        }
        vec![
            Failure {
                what: "no node listening".into(),
                sink: cassandra_sink(&self.keyspace, vec!["127.0.0.1:1".into()], schema.clone()),
                rows: None,
                stage: Stage::Healthcheck,
                retry: Retry::Transient,
            },
            Failure {
                what: "an existing table whose id column is text".into(),
                sink: cassandra_sink(&other, cassandra_nodes(), schema),
                rows: None,
                stage: Stage::Healthcheck,
                retry: Retry::Permanent,
            },
        ]
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cassandra_sink_meets_the_contract() {
    let session = testkit::cassandra::session().await;
    let keyspace = unique_name("contract");
    let mut fixture = Cassandra { keyspace, session };
    contract::check_sink(&mut fixture).await;
    for keyspace in [fixture.keyspace.clone(), format!("{}_x", fixture.keyspace)] {
        testkit::cassandra::drop_keyspace(&fixture.session, &keyspace).await;
    }
}

/// Every message of `topic` (of `partitions`), waiting up to 30 s for `at_least` of them.
async fn topic_messages(
    topic: &str,
    partitions: i32,
    at_least: usize,
) -> Vec<testkit::kafka::Received> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut on = 0;
    while Instant::now() < deadline {
        let t = topic.to_owned();
        on = tokio::task::spawn_blocking(move || testkit::kafka::messages_on(&t, partitions))
            .await
            .expect("the watermark task") as usize;
        if on >= at_least {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if on == 0 {
        return Vec::new();
    }
    testkit::kafka::read_topic(topic, on, Duration::from_millis(500)).await
}

/// A producer pointed at a port nothing listens on, giving up on a message after 2 s.
fn unreachable_properties() -> BTreeMap<String, String> {
    [("message.timeout.ms".to_owned(), "2000".to_owned())].into()
}

/// A Kafka sink of rows of `schema` to `topic` on `brokers`, keyed by the `key` column.
fn kafka_sink(
    brokers: String,
    topic: &str,
    properties: BTreeMap<String, String>,
    schema: &SchemaRef,
) -> Box<dyn Sink> {
    let config = KafkaSinkConfig {
        brokers: Some(brokers),
        topic: topic.to_owned(),
        key: "key".into(),
        compression: Default::default(),
        properties,
        security: None,
        explicit_nulls: false,
    };
    Box::new(KafkaSink::new(config, schema).expect("a valid kafka sink"))
}

struct KafkaRows {
    topic: String,
    small_topic: String,
}

#[async_trait]
impl SinkFixture for KafkaRows {
    const NAME: &str = "kafka";

    // An append-only log: a batch written again is there twice (the module docs say so).
    const DELIVERY: Delivery = Delivery::AtLeastOnce;

    async fn build(&mut self, schema: SchemaRef) -> Box<dyn Sink> {
        kafka_sink(kafka_bootstrap(), &self.topic, Default::default(), &schema)
    }

    async fn read_back(&mut self, at_least: usize) -> Vec<String> {
        topic_messages(&self.topic, 3, at_least)
            .await
            .iter()
            .map(|m| json_row_line(&m.json()))
            .collect()
    }

    async fn failures(&mut self, schema: SchemaRef) -> Vec<Failure> {
        // One row larger than the topic's 1 KiB limit: the broker refuses it every time.
        let big = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(vec!["K".repeat(4096)])),
                Arc::new(Int64Array::from(vec![1])),
                Arc::new(
                    Decimal128Array::from(vec![1_i128])
                        .with_precision_and_scale(28, 10)
                        .expect("a valid decimal type"),
                ),
            ],
        )
        .expect("a row of the contract schema");
        vec![
            Failure {
                what: "no broker listening".into(),
                sink: kafka_sink(
                    "127.0.0.1:1".into(),
                    &self.topic,
                    unreachable_properties(),
                    &schema,
                ),
                rows: None,
                stage: Stage::Healthcheck,
                retry: Retry::Transient,
            },
            Failure {
                what: "a row above the topic's max.message.bytes".into(),
                sink: kafka_sink(
                    kafka_bootstrap(),
                    &self.small_topic,
                    Default::default(),
                    &schema,
                ),
                rows: Some(big),
                stage: Stage::Write,
                retry: Retry::Permanent,
            },
        ]
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_sink_meets_the_contract() {
    let topic = unique_name("contract_sink");
    let small_topic = unique_name("contract_sink_small");
    testkit::kafka::create_topic(&topic, 3).await;
    testkit::kafka::create_topic_with_config(&small_topic, 1, &[("max.message.bytes", "1024")])
        .await;
    contract::check_sink(&mut KafkaRows { topic, small_topic }).await;
}

// ---- dead-letter outputs --------------------------------------------------------------------

/// A letter as the outputs write it (the JSON of `connectors::dead_letter`), rendered as the
/// contract renders letters.
fn letter_json_line(letter: &serde_json::Value) -> String {
    contract::letter_line(
        &letter["position"],
        letter["reason"].as_str().unwrap_or_default(),
        letter["raw"].as_str().unwrap_or_default(),
        letter["record"].as_str(),
    )
}

struct FileLetters {
    dir: tempfile::TempDir,
}

impl FileLetters {
    fn folder(&self) -> PathBuf {
        self.dir.path().join("letters")
    }
}

#[async_trait]
impl DeadLetterFixture for FileLetters {
    const NAME: &str = "file";

    const DELIVERY: Delivery = Delivery::Idempotent;

    async fn build(&mut self) -> Box<dyn DeadLetterSink> {
        Box::new(
            FileDeadLetterSink::new(FileDeadLetterConfig {
                path: self.folder(),
            })
            .expect("a dead-letter folder"),
        )
    }

    async fn read_back(&mut self, _at_least: usize) -> Vec<String> {
        let mut lines = Vec::new();
        for entry in std::fs::read_dir(self.folder()).expect("the dead-letter folder") {
            let path = entry.expect("a folder entry").path();
            if path.extension().is_some_and(|e| e == "jsonl") {
                let text = std::fs::read_to_string(&path).expect("a letters file");
                lines.extend(
                    text.lines()
                        .map(|l| letter_json_line(&serde_json::from_str(l).expect("a JSON line"))),
                );
            }
        }
        lines
    }

    async fn failures(&mut self) -> Vec<DeadLetterFailure> {
        // The folder existed when the output was built, and is a file by the time it writes.
        let gone = self.dir.path().join("gone");
        let sink = FileDeadLetterSink::new(FileDeadLetterConfig { path: gone.clone() })
            .expect("a dead-letter folder");
        std::fs::remove_dir(&gone).expect("remove the folder");
        std::fs::write(&gone, b"a file now").expect("write a file");
        vec![DeadLetterFailure {
            what: "a folder replaced by a file".into(),
            sink: Box::new(sink),
            letters: None,
            retry: Retry::Permanent,
        }]
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_dead_letter_output_meets_the_contract() {
    let dir = tempfile::tempdir().expect("a temp dir");
    contract::check_dead_letter_sink(&mut FileLetters { dir }).await;
}

/// A Kafka dead-letter output to `topic` on `brokers`.
fn kafka_letters(
    brokers: String,
    topic: &str,
    properties: BTreeMap<String, String>,
) -> KafkaDeadLetterSink {
    KafkaDeadLetterSink::new(KafkaDeadLetterConfig {
        brokers: Some(brokers),
        topic: topic.to_owned(),
        compression: Default::default(),
        properties,
        security: None,
    })
    .expect("a valid kafka dead-letter output")
}

struct KafkaLetters {
    topic: String,
}

#[async_trait]
impl DeadLetterFixture for KafkaLetters {
    const NAME: &str = "kafka";

    // The output's module docs: a replayed batch sends its letters again.
    const DELIVERY: Delivery = Delivery::AtLeastOnce;

    async fn build(&mut self) -> Box<dyn DeadLetterSink> {
        Box::new(kafka_letters(
            kafka_bootstrap(),
            &self.topic,
            Default::default(),
        ))
    }

    async fn read_back(&mut self, at_least: usize) -> Vec<String> {
        topic_messages(&self.topic, 1, at_least)
            .await
            .iter()
            .map(|m| letter_json_line(&m.json()))
            .collect()
    }

    async fn failures(&mut self) -> Vec<DeadLetterFailure> {
        let sink = kafka_letters("127.0.0.1:1".into(), &self.topic, unreachable_properties());
        vec![DeadLetterFailure {
            what: "no broker listening".into(),
            sink: Box::new(sink),
            letters: None,
            retry: Retry::Transient,
        }]
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_dead_letter_output_meets_the_contract() {
    let topic = unique_name("contract_letters");
    testkit::kafka::create_topic(&topic, 1).await;
    contract::check_dead_letter_sink(&mut KafkaLetters { topic }).await;
}
