//! Helpers of the tests that run `coinstream` on the real Kafka and Cassandra
//! (`scripts/services.sh up`): a fresh topic, group, keyspace and config per test, generated
//! trades with their independently computed profit, and readers of what ended up where.
// Each test binary uses a different part of this module.
#![allow(dead_code, unused_imports)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Output};
use std::str::FromStr;
use std::time::{Duration, Instant};

use coinstream::config::Override;

pub mod candles;
pub mod scrape;
use futures::TryStreamExt;
use rust_decimal::Decimal;
use scylla::client::session::Session;
use scylla::value::CqlDecimal;
pub use testkit::cassandra::{decimal, session};
pub use testkit::env::{cassandra_node, kafka_bootstrap as brokers, repo};
pub use testkit::kafka::{produce, wait_for_members};
pub use testkit::unique_name as unique;

/// Partitions of each test's input topic.
pub const PARTITIONS: i32 = 6;

/// A shipped config file run in place, with the keys a test needs set over it through the
/// loader (`--set KEY=VALUE` for the binary, [`coinstream::config::Config::load_with`] in
/// process), never by editing its text: a comment or a reordering in the file cannot make an
/// override silently miss, and its relative paths stay relative to its own folder.
#[derive(Debug, Clone)]
pub struct Pipeline {
    /// The config file, as shipped.
    pub file: PathBuf,
    /// The keys set over it, in order.
    pub overrides: Vec<Override>,
}

impl Pipeline {
    /// The file `path` of the repository (`coinstream.toml`, `pipelines/kafka-cassandra.toml`).
    pub fn shipped(path: &str) -> Self {
        Self {
            file: repo().join(path),
            overrides: Vec::new(),
        }
    }

    /// This pipeline with `key` set to `value` (a path as `path.display().to_string()`).
    pub fn set(mut self, key: &str, value: impl Into<toml::Value>) -> Self {
        self.overrides.push(Override::new(key, value));
        self
    }

    /// This pipeline with `key` set to `path`.
    pub fn set_path(self, key: &str, path: &std::path::Path) -> Self {
        self.set(key, path.display().to_string())
    }

    /// This pipeline with `flag` (`key=value`, the value TOML) set, as `--set` reads it.
    pub fn set_flag(mut self, flag: &str) -> Self {
        self.overrides
            .push(flag.parse().unwrap_or_else(|e| panic!("--set {flag}: {e}")));
        self
    }

    /// `--config FILE --set KEY=VALUE...`, the arguments of `run`, `explain` and `query`.
    pub fn args(&self) -> Vec<String> {
        let mut args = vec!["--config".to_owned(), self.file.display().to_string()];
        for o in &self.overrides {
            args.push("--set".to_owned());
            args.push(o.to_string());
        }
        args
    }

    /// The config the binary runs, loaded in process (it must load).
    pub fn load(&self) -> coinstream::config::Config {
        coinstream::config::Config::load_with(&self.file, &self.overrides)
            .unwrap_or_else(|e| panic!("{e}"))
    }
}

/// The shipped default config (`coinstream.toml`), run in place, over the capture `feed`, with
/// its outputs (the checkpoint, the store and the dead letters) under `dir/data`.
pub fn embedded_config(dir: &std::path::Path, feed: &std::path::Path) -> Pipeline {
    Pipeline::shipped("coinstream.toml")
        .set_path("source.path", feed)
        .set_path("engine.checkpoint_dir", &dir.join("data/checkpoint"))
        .set_path("sink.path", &dir.join("data/profit"))
        .set_path("dead_letter.path", &dir.join("data/dead_letters"))
}

/// `coinstream ARGS`, run from the repository's root.
pub fn coinstream(args: &[String]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_coinstream"));
    cmd.args(args).current_dir(repo());
    cmd
}

/// `head`, then `config`'s `--config FILE --set KEY=VALUE...`, then `tail`.
pub fn args(head: &[&str], config: &Pipeline, tail: &[&str]) -> Vec<String> {
    let mut all: Vec<String> = head.iter().map(|a| (*a).to_owned()).collect();
    all.extend(config.args());
    all.extend(tail.iter().map(|a| (*a).to_owned()));
    all
}

/// Fails unless `stderr` holds every one of `expected`, naming the first missing.
pub fn assert_mentions(stderr: &str, expected: &[&str]) {
    for expected in expected {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
}

/// The stdout and stderr of a run; panics, showing both, when it did not succeed.
pub fn ok(out: Output) -> (String, String) {
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    (stdout, stderr)
}

/// One test's topic, group, keyspace and config: `pipelines/kafka-cassandra.toml` reading the
/// test's topic as its own group, writing to its keyspace, dead letters and checkpoint.
pub struct Setup {
    pub dir: tempfile::TempDir,
    pub topic: String,
    pub dead_letters: String,
    pub group: String,
    pub keyspace: String,
    pub config: Pipeline,
}

impl Setup {
    /// `pipelines/kafka-cassandra.toml` over a topic of [`PARTITIONS`] partitions.
    pub async fn new(name: &str) -> Self {
        Self::shipped(name, "pipelines/kafka-cassandra.toml", PARTITIONS).await
    }

    /// The shipped Kafka → Cassandra pipeline `pipeline` (a path from the repo root) over fresh
    /// names: a topic of `partitions` partitions and its one-partition dead-letter topic, a
    /// consumer group, a keyspace and a checkpoint folder under the test's folder.
    pub async fn shipped(name: &str, pipeline: &str, partitions: i32) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let topic = unique(&format!("trades_{name}"));
        let dead_letters = format!("{topic}_dlq");
        let group = unique(&format!("group_{name}"));
        let keyspace = unique(&format!("ks_{name}"));
        let config = Pipeline::shipped(pipeline)
            .set("source.topics", vec![topic.clone()])
            .set("source.group_id", group.clone())
            .set("sink.keyspace", keyspace.clone())
            .set("dead_letter.topic", dead_letters.clone())
            .set_path("engine.checkpoint_dir", &dir.path().join("checkpoint"));
        config.load();
        testkit::kafka::create_topics(&[(&topic, partitions), (&dead_letters, 1)]).await;
        Self {
            dir,
            topic,
            dead_letters,
            group,
            keyspace,
            config,
        }
    }

    /// `config` with the Cassandra sink replaced by a Parquet store under the test's folder;
    /// returns the pipeline and the store's folder.
    pub fn parquet_config(&self, config: &Pipeline) -> (Pipeline, PathBuf) {
        let store = self.dir.path().join("profit");
        let mut sink = toml::Table::new();
        sink.insert("type".into(), "parquet".into());
        sink.insert("path".into(), store.display().to_string().into());
        sink.insert("partition_by".into(), vec!["symbol"].into());
        (config.clone().set("sink", sink), store)
    }

    pub fn run(&self, extra: &[&str]) -> Command {
        self.run_with(&self.config, extra)
    }

    pub fn run_with(&self, config: &Pipeline, extra: &[&str]) -> Command {
        self.run_triggered(config, "available-now", extra)
    }

    /// `coinstream run` with `config` and `trigger`, printing progress as JSON lines.
    pub fn run_triggered(&self, config: &Pipeline, trigger: &str, extra: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_coinstream"));
        cmd.arg("run")
            .args(config.args())
            .args(["--trigger", trigger, "--progress", "json"]);
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
    let portfolio = testkit::profit::Portfolio::shipped();
    let mut messages = Vec::new();
    let mut expected = BTreeMap::new();
    for _ in 0..n {
        let trade = generator.next_trade();
        let record = generator.record(&trade, "2026-11-23T00:00:00.000000Z");
        if let Some(profit) = portfolio.profit_of_text(&record.symbol, &record.price) {
            expected.insert((record.symbol.to_string(), record.trade_id), profit);
        }
        messages.push((record.symbol.to_string(), record.to_json()));
    }
    (messages, expected)
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

/// Waits until `group` has committed every message of `topic`; panics after `limit`.
pub async fn wait_for_no_lag(group: &str, topic: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let lag: i64 = committed_and_end(group, topic)
            .iter()
            .map(|(_, committed, end)| end - committed.unwrap_or(0))
            .sum();
        if lag == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{lag} messages not committed after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The progress records (stdout) and the logs (stderr) of `coinstream run --trigger
/// available-now` with `config` to the end of its input, at most `max_records` per batch; panics
/// when the run fails or takes over 300 s.
pub fn run_available_now(config: &Pipeline, max_records: &str) -> (String, String) {
    ok(wait_with_limit(
        coinstream(&args(
            &["run", "--trigger", "available-now", "--progress", "json"],
            config,
            &["--max-records-per-batch", max_records],
        )),
        Duration::from_secs(300),
    ))
}

/// Runs `coinstream run` with `config` (a batch every 10 ms of at most `max_records`) and kills
/// it with SIGKILL, `rounds` times, each after its first batch and a wait that differs by round
/// and by clock (a different point of the batch cycle each time). Returns the waits, for the
/// failure message.
pub fn kill_at_random_points(config: &Pipeline, max_records: &str, rounds: u64) -> Vec<Duration> {
    let mut kills = Vec::new();
    for round in 0..rounds {
        let mut running = Running::spawn(coinstream(&args(
            &["run", "--trigger", "interval:10ms", "--progress", "json"],
            config,
            &["--max-records-per-batch", max_records],
        )));
        running.wait_for_batches(1, Duration::from_secs(60));
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos() as u64;
        let wait = Duration::from_millis(50 + (round * 137 + nanos % 400) % 600);
        running.read_for(wait);
        kills.push(wait);
        running.kill();
    }
    kills
}

/// The crash test of a pipeline: kills `coinstream run` with `config` five times at random points
/// of its batch cycle ([`kill_at_random_points`], at most `max_records` per batch; the input must
/// hold more than five rounds' batches at the 10 ms trigger's pace, about 70 each, whatever the
/// build's speed, or a round finds nothing left to read), runs it to the
/// end of its input (available-now, at most 150 records per batch), then asserts that `stored`
/// (what the sink holds) is `expected`: no batch lost, none written twice.
pub fn assert_exactly_once_after_kills<T: PartialEq + std::fmt::Debug>(
    config: &Pipeline,
    max_records: &str,
    expected: T,
    stored: impl FnOnce() -> T,
) {
    let kills = kill_at_random_points(config, max_records, 5);
    run_available_now(config, "150");
    assert_eq!(stored(), expected, "after kills at {kills:?}");
}

/// Each partition's committed offset in `group` (None when nothing is committed) and its end.
pub fn committed_and_end(group: &str, topic: &str) -> Vec<(i32, Option<i64>, i64)> {
    testkit::kafka::committed_and_end(group, topic, PARTITIONS)
}

/// Committed offsets of the group equal every partition's end.
pub fn assert_committed_to_end(group: &str, topic: &str) {
    testkit::kafka::assert_committed_to_end(group, topic, PARTITIONS);
}

/// A `coinstream` process whose standard output and standard error are read as they come, into
/// one log, so a long run never blocks on a full pipe: the progress records (`--progress json`,
/// on stdout) and the logs (on stderr), each stream in its own order.
pub struct Running {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
    log: Vec<String>,
}

impl Running {
    pub fn spawn(mut cmd: Command) -> Self {
        let mut child = cmd
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        let stdout: Box<dyn std::io::Read + Send> = Box::new(child.stdout.take().unwrap());
        let stderr: Box<dyn std::io::Read + Send> = Box::new(child.stderr.take().unwrap());
        for stream in [stdout, stderr] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                use std::io::BufRead;
                for line in std::io::BufReader::new(stream)
                    .lines()
                    .map_while(Result::ok)
                {
                    let _ = tx.send(line);
                }
            });
        }
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
            // A run that ended by itself (a finite source read to its end) prints no more than
            // what is still in the pipe.
            if let Some(status) = self.child.try_wait().unwrap() {
                self.read_for(Duration::from_millis(200));
                let seen = self.log.iter().filter(|l| l.starts_with('{')).count();
                assert!(
                    seen >= batches,
                    "the run ended ({status}) after {seen} of {batches} batches:\n{}",
                    self.log.join("\n")
                );
                return;
            }
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

    /// Everything printed, once the process has exited (the readers end at the pipes' ends).
    fn drain(&mut self) -> Vec<String> {
        let mut log = std::mem::take(&mut self.log);
        log.extend(self.lines.iter());
        log
    }
}

/// The sum of `field` over the JSON progress records (the lines starting with `{`) of `log`: a
/// run's stdout with `--progress json`, or a [`Running`] log.
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

/// The stderr (the logs) of a run that must have succeeded; panics, showing both streams, when
/// it did not.
pub fn check(out: &Output) -> String {
    check_both(out).1
}

/// The stdout of a run that must have succeeded: with `--progress json`, its progress records,
/// one per line. Panics, showing both streams, when it did not succeed.
pub fn records(out: &Output) -> String {
    check_both(out).0
}

/// The stdout and stderr of a run that must have succeeded; panics, showing both, when it did
/// not.
pub fn check_both(out: &Output) -> (String, String) {
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(
        out.status.success(),
        "coinstream failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    (stdout, stderr)
}

/// Every record batch of the embedded store at `root`: a Delta table read through its log (the
/// files of its latest version only), else the Parquet files under it (recursively), with the
/// partition columns of its folder names appended as text; panics on any other file (only
/// finished files may be visible once the query has stopped).
pub fn parquet_batches(root: &std::path::Path) -> Vec<arrow::record_batch::RecordBatch> {
    if root.join("_delta_log").is_dir() {
        return delta_batches(root);
    }
    read_parquet_tree(root, false)
}

/// Every row of the Delta table at `root`, as `coinstream query` reads it, with dictionary-encoded
/// columns (Delta's partition columns) decoded to their values and string views as strings.
pub fn delta_batches(root: &std::path::Path) -> Vec<arrow::record_batch::RecordBatch> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let session = datafusion::prelude::SessionContext::new();
        let empty = std::sync::Arc::new(arrow::datatypes::Schema::empty());
        connectors::delta::register_table(&session, "t", root, empty, None)
            .await
            .unwrap_or_else(|e| panic!("{}", engine::report(&e)));
        let batches = session.sql("SELECT * FROM t").await.unwrap();
        let batches = batches.collect().await.unwrap();
        batches.into_iter().map(plain_strings).collect()
    })
}

fn plain_strings(batch: arrow::record_batch::RecordBatch) -> arrow::record_batch::RecordBatch {
    use arrow::datatypes::{DataType, Field, Schema};
    let mut fields = Vec::new();
    let mut columns = Vec::new();
    for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
        let plain = match field.data_type() {
            DataType::Dictionary(_, value) => Some((**value).clone()),
            DataType::Utf8View => Some(DataType::Utf8),
            _ => None,
        };
        let (field, column) = match plain {
            Some(plain) => (
                Field::new(field.name(), plain.clone(), field.is_nullable()),
                arrow::compute::cast(column, &plain).unwrap(),
            ),
            None => (field.as_ref().clone(), column.clone()),
        };
        fields.push(field);
        columns.push(column);
    }
    arrow::record_batch::RecordBatch::try_new(std::sync::Arc::new(Schema::new(fields)), columns)
        .unwrap()
}

/// Every `(symbol, trade_id) → profit` the Parquet files under `root` hold so far, while the query
/// may still be writing: a file still being written (`*.tmp`, renamed when finished) is skipped.
pub fn parquet_profits_so_far(root: &std::path::Path) -> BTreeMap<(String, i64), Decimal> {
    profits_of(root, read_parquet_tree(root, true))
}

/// Every file under `root`, hidden ones included, in no particular order.
pub fn files_under(root: &std::path::Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files
}

fn read_parquet_tree(
    root: &std::path::Path,
    skip_in_progress: bool,
) -> Vec<arrow::record_batch::RecordBatch> {
    let mut batches = Vec::new();
    for path in files_under(root) {
        // A file still being written has a hidden name (`.part-….parquet.tmp`).
        if skip_in_progress && path.extension().is_some_and(|e| e == "tmp") {
            continue;
        }
        assert_eq!(
            path.extension().and_then(|e| e.to_str()),
            Some("parquet"),
            "only finished files: {path:?}"
        );
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
            std::fs::File::open(&path).unwrap(),
        )
        .unwrap()
        .build()
        .unwrap();
        batches
            .extend(reader.map(|b| testkit::hive::with_partition_columns(root, &path, b.unwrap())));
    }
    batches
}

/// Every `(symbol, trade_id) → profit` in the Parquet files under `root`.
pub fn parquet_profits(root: &std::path::Path) -> BTreeMap<(String, i64), Decimal> {
    profits_of(root, parquet_batches(root))
}

fn profits_of(
    root: &std::path::Path,
    batches: Vec<arrow::record_batch::RecordBatch>,
) -> BTreeMap<(String, i64), Decimal> {
    use arrow::array::{Array, AsArray, Decimal128Array};
    use arrow::datatypes::Int64Type;
    let mut rows = BTreeMap::new();
    for batch in batches {
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
    rows
}

/// Runs `cmd` to its end with stdout and stderr captured; kills it and panics after `limit`.
pub fn wait_with_limit(mut cmd: Command, limit: Duration) -> Output {
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    output_within(child, limit)
}

/// `child`'s exit and what it printed (the pipes it was spawned with); kills it and panics when
/// it has not exited within `limit`.
pub fn output_within(child: Child, limit: Duration) -> Output {
    let id = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            // Where every thread waits, so that a hang seen once (in CI) can be diagnosed;
            // gdb is optional, its absence only leaves the stacks out.
            let stacks = Command::new("gdb")
                .args([
                    "-batch",
                    "-p",
                    &id.to_string(),
                    "-ex",
                    "thread apply all bt",
                ])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_else(|e| format!("(no stacks: gdb: {e})"));
            let _ = Command::new("kill")
                .args(["-KILL", &id.to_string()])
                .status();
            panic!("coinstream did not stop within {limit:?}; its threads:\n{stacks}");
        }
    }
}

/// The `match` and `last_match` messages of a capture of Coinbase feed messages (one JSON
/// message a line), read with serde_json alone; lines that are not JSON are passed over.
pub fn feed_matches(feed: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(feed)
        .unwrap()
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|m| matches!(m["type"].as_str(), Some("match" | "last_match")))
        .collect()
}

/// The expected rows, computed from the feed file and the portfolio with no code of ours.
pub fn expected_rows(feed: &std::path::Path) -> BTreeMap<(String, i64), (Decimal, String)> {
    let portfolio = testkit::profit::Portfolio::shipped();
    let mut expected = BTreeMap::new();
    for m in feed_matches(feed) {
        let symbol = m["product_id"].as_str().unwrap();
        let (Some(profit), Some(id)) = (
            portfolio.profit_of_text(symbol, m["price"].as_str().unwrap_or("x")),
            m["trade_id"].as_i64(),
        ) else {
            continue;
        };
        let taker = if m["side"] == "sell" { "buy" } else { "sell" };
        expected.insert((symbol.to_owned(), id), (profit, taker.to_owned()));
    }
    expected
}
