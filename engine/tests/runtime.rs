//! The micro-batch runtime through its public API, with in-memory sources and sinks.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arrow::array::{Array, Int64Array, RecordBatch};
use async_trait::async_trait;
use engine::checkpoint::Checkpoint;
use engine::context::{ContextOptions, EngineContext};
use engine::decode::RecordDecoder;
use engine::progress::BatchProgress;
use engine::runtime::StreamingQuery;
use engine::schema::ddl_table;
use engine::transform::{PlannedTransform, TransformFile};
use engine::trigger::Trigger;
use engine::{
    DeadLetter, DeadLetterSink, Error, OffsetRange, Poll, PollLimits, RawRecord, RecordPosition,
    Result, Retry, Sink, Source, SourceBatch, SourceOffset, StartRequest,
};
use futures::future::BoxFuture;
use tokio::sync::watch;

/// Messages in partitions, handed out in order, with a record of commits. Its offset is its own
/// JSON: the next message of each partition, `[5, 3]`.
struct MemorySource {
    partitions: Vec<Vec<String>>,
    next: Vec<i64>,
    commits: Arc<Mutex<Vec<SourceOffset>>>,
    /// What the next calls of `start` fail with, in order (a service not ready yet).
    start_failures: Arc<Mutex<Vec<Retry>>>,
}

impl MemorySource {
    fn new(partitions: Vec<Vec<String>>, outputs: &Outputs) -> Self {
        let next = vec![0; partitions.len()];
        Self {
            partitions,
            next,
            commits: outputs.commits.clone(),
            start_failures: outputs.start_failures.clone(),
        }
    }

    fn offsets(positions: &[i64]) -> SourceOffset {
        SourceOffset::of(&positions).unwrap()
    }

    fn parse(offset: &SourceOffset) -> Vec<i64> {
        offset.parse().unwrap()
    }

    fn records(&self, from: &[i64], to: &[i64]) -> Vec<RawRecord> {
        let mut out = Vec::new();
        for (p, msgs) in self.partitions.iter().enumerate() {
            for offset in from[p]..to[p] {
                out.push(RawRecord {
                    position: RecordPosition::new(p as u32, offset),
                    payload: msgs[offset as usize].clone().into_bytes(),
                    rejected: None,
                    frame: None,
                    received_at: SystemTime::now(),
                });
            }
        }
        out
    }
}

#[async_trait]
impl Source for MemorySource {
    fn description(&self) -> String {
        "memory".into()
    }

    fn describe_position(&self, position: RecordPosition) -> serde_json::Value {
        serde_json::json!({"memory": position.partition, "message": position.offset})
    }

    async fn start(&mut self, request: StartRequest) -> Result<()> {
        let mut failures = self.start_failures.lock().unwrap();
        if !failures.is_empty() {
            let retry = failures.remove(0);
            return Err(Error::source_failed("memory", "not ready", retry));
        }
        if let Some(c) = request.committed {
            self.next = Self::parse(&c);
        }
        Ok(())
    }

    async fn fetch_range(&mut self, range: &OffsetRange) -> Result<SourceBatch> {
        let (from, to) = (Self::parse(&range.start), Self::parse(&range.end));
        self.next = to.clone();
        Ok(SourceBatch {
            records: self.records(&from, &to),
            start: range.start.clone(),
            end: range.end.clone(),
            rows: None,
        })
    }

    async fn poll(&mut self, limits: PollLimits) -> Result<Poll> {
        let from = self.next.clone();
        let mut to = from.clone();
        let mut taken = 0;
        // Round-robin over partitions up to the cap, as a Kafka consumer would mix them.
        loop {
            let mut progressed = false;
            for (next, messages) in to.iter_mut().zip(&self.partitions) {
                if taken < limits.max_records && (*next as usize) < messages.len() {
                    *next += 1;
                    taken += 1;
                    progressed = true;
                }
            }
            if !progressed {
                break;
            }
        }
        if taken == 0 {
            return Ok(Poll::Exhausted);
        }
        self.next = to.clone();
        Ok(Poll::Batch(SourceBatch {
            records: self.records(&from, &to),
            start: Self::offsets(&from),
            end: Self::offsets(&to),
            rows: None,
        }))
    }

    async fn commit(&mut self, end: &SourceOffset) -> Result<()> {
        self.commits.lock().unwrap().push(end.clone());
        Ok(())
    }

    fn backlog(&self) -> Vec<(String, u64)> {
        self.partitions
            .iter()
            .zip(&self.next)
            .enumerate()
            .map(|(p, (messages, &next))| {
                (format!("memory/{p}"), messages.len() as u64 - next as u64)
            })
            .collect()
    }
}

/// What a sink was given, per batch id.
type Written = Arc<Mutex<Vec<(u64, Vec<RecordBatch>)>>>;

/// Keeps what it is given per batch id (a rewrite replaces), failing as scripted.
#[derive(Clone, Default)]
struct MemorySink {
    written: Written,
    /// Per write call: `Some(retry)` fails that call.
    failures: Arc<Mutex<Vec<Option<Retry>>>>,
    planned: Arc<Mutex<Planned>>,
}

/// With a checkpoint folder set: per sink write, the batch id that the folder's offsets entry of
/// the batch being written records, as read when the write came (`None`: no entry yet).
#[derive(Default)]
struct Planned {
    checkpoint: Option<std::path::PathBuf>,
    seen: Vec<Option<u64>>,
}

#[async_trait]
impl Sink for MemorySink {
    fn description(&self) -> String {
        "memory".into()
    }

    async fn write(&mut self, batch_id: u64, batches: &[RecordBatch]) -> Result<()> {
        let scripted = {
            let mut f = self.failures.lock().unwrap();
            if f.is_empty() { None } else { f.remove(0) }
        };
        if let Some(retry) = scripted {
            return Err(Error::sink_failed("memory", "scripted failure", retry));
        }
        let mut planned = self.planned.lock().unwrap();
        if let Some(dir) = planned.checkpoint.clone() {
            let entry = std::fs::read(dir.join("offsets").join(batch_id.to_string()))
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .and_then(|v| v["batchId"].as_u64());
            planned.seen.push(entry);
        }
        let mut w = self.written.lock().unwrap();
        w.retain(|(id, _)| *id != batch_id);
        w.push((batch_id, batches.to_vec()));
        Ok(())
    }
}

#[derive(Clone, Default)]
struct MemoryDeadLetters(Arc<Mutex<Vec<(u64, DeadLetter)>>>);

#[async_trait]
impl DeadLetterSink for MemoryDeadLetters {
    fn description(&self) -> String {
        "memory".into()
    }

    async fn write(&mut self, batch_id: u64, letters: &[DeadLetter]) -> Result<()> {
        self.0
            .lock()
            .unwrap()
            .extend(letters.iter().map(|l| (batch_id, l.clone())));
        Ok(())
    }
}

/// `trades(id, price)` joined with a reference table `tiers(id, tier)`; the trades side is written
/// first so a hash join builds on it: the per-batch reset is what keeps batches apart.
const SQL: &str =
    "SELECT t.id, t.price * 2 AS doubled, r.tier FROM trades t JOIN tiers r ON r.id % 2 = t.id % 2";

/// Where one test's query writes, shared with the test to read back: the source's commits, the
/// sink, the dead letters and the progress records.
#[derive(Clone, Default)]
struct Outputs {
    commits: Arc<Mutex<Vec<SourceOffset>>>,
    sink: MemorySink,
    letters: MemoryDeadLetters,
    progress: Arc<Mutex<Vec<BatchProgress>>>,
    start_failures: Arc<Mutex<Vec<Retry>>>,
}

impl Outputs {
    /// Outputs whose sink's first writes end as `writes` says, in order (`Some(retry)` fails
    /// that write); later writes succeed.
    fn failing_writes(writes: Vec<Option<Retry>>) -> Self {
        let out = Self::default();
        *out.sink.failures.lock().unwrap() = writes;
        out
    }

    /// Outputs whose source's first starts fail with `starts`, in order; later starts succeed.
    fn failing_starts(starts: Vec<Retry>) -> Self {
        let out = Self::default();
        *out.start_failures.lock().unwrap() = starts;
        out
    }

    /// Runs `transform` over `partitions` (of topic `t`) into these outputs, at most
    /// `max_records` per batch, with a checkpoint in `dir` when `checkpoint`.
    async fn run(
        &self,
        dir: &std::path::Path,
        transform: Transform,
        partitions: Vec<Vec<String>>,
        checkpoint: bool,
        max_records: usize,
    ) -> engine::Result<engine::runtime::RunSummary> {
        let q = query_with(dir, transform, partitions, self, checkpoint, max_records).await;
        let (_tx, rx) = watch::channel(false);
        q.run(rx).await
    }

    /// Messages 0 to 3, one partition, `doubled()`: one batch of four.
    async fn run_four(
        &self,
        dir: &std::path::Path,
        checkpoint: bool,
    ) -> engine::Result<engine::runtime::RunSummary> {
        self.run(dir, doubled(), vec![messages(0..4)], checkpoint, 10)
            .await
    }
}

/// The test's `doubled` transform: each trade's price doubled, joined with its tier.
fn doubled() -> Transform {
    Transform {
        name: "doubled",
        price: "DECIMAL(10,2)",
        sql: SQL,
    }
}

/// A transform of the test's `trades(id, price)` table.
struct Transform {
    /// Its name (and file stem).
    name: &'static str,
    /// The price column's type.
    price: &'static str,
    /// Its SQL; `tiers` is joined as `tiers_by_id`.
    sql: &'static str,
}

async fn query_with(
    dir: &std::path::Path,
    t: Transform,
    partitions: Vec<Vec<String>>,
    outputs: &Outputs,
    checkpoint: bool,
    max_records: usize,
) -> StreamingQuery {
    let ddl = format!(
        "CREATE TABLE t (id BIGINT NOT NULL, price {} NOT NULL)",
        t.price
    );
    let schema = ddl_table("t", &ddl, "t").unwrap();
    let mut ctx = EngineContext::new(&ContextOptions::default());
    let tiers_path = dir.join("tiers.json");
    std::fs::write(&tiers_path, r#"{"0":"even","1":"odd"}"#).unwrap();
    let tiers = ddl_table(
        "tiers",
        "CREATE TABLE tiers (\"key\" VARCHAR NOT NULL, tier VARCHAR NOT NULL)",
        "tiers",
    )
    .unwrap();
    ctx.register_reference(
        &engine::reference::ReferenceTable::declared("tiers".into(), tiers_path, "key", &tiers)
            .unwrap(),
    )
    .unwrap();
    // The reference key is text; expose it as a number for the join.
    ctx.session()
        .sql("CREATE VIEW tiers_by_id AS SELECT CAST(key AS BIGINT) AS id, tier FROM tiers")
        .await
        .unwrap();
    let input = ctx.register_input("trades", schema.clone()).unwrap();
    let sql_path = dir.join(format!("{}.sql", t.name));
    std::fs::write(
        &sql_path,
        t.sql.replace("JOIN tiers r", "JOIN tiers_by_id r"),
    )
    .unwrap();
    let transform = ctx
        .register_transform(TransformFile::read(&sql_path).unwrap())
        .await
        .unwrap();
    StreamingQuery {
        source: Box::new(MemorySource::new(partitions, outputs)),
        decoder: RecordDecoder::new(schema),
        input,
        transform,
        sink: Box::new(outputs.sink.clone()),
        dead_letters: Box::new(outputs.letters.clone()),
        checkpoint: checkpoint.then(|| Checkpoint::open(dir.join("checkpoint")).unwrap()),
        trigger: Trigger::AvailableNow,
        max_records_per_batch: max_records,
        output_mode: Default::default(),
        watermark: None,
        shared_state: None,
        on_progress: {
            let progress = outputs.progress.clone();
            Box::new(move |p| progress.lock().unwrap().push(p.clone()))
        },
    }
}

fn messages(ids: std::ops::Range<i64>) -> Vec<String> {
    ids.map(|i| format!(r#"{{"id":{i},"price":"{i}.25"}}"#))
        .collect()
}

fn ids_of(written: &[(u64, Vec<RecordBatch>)]) -> Vec<Vec<i64>> {
    written
        .iter()
        .map(|(_, batches)| {
            let mut ids: Vec<i64> = batches
                .iter()
                .flat_map(|b| {
                    b.column(0)
                        .as_any()
                        .downcast_ref::<Int64Array>()
                        .unwrap()
                        .values()
                        .to_vec()
                })
                .collect();
            ids.sort();
            ids
        })
        .collect()
}

#[tokio::test]
async fn a_batchs_offsets_are_in_the_checkpoint_before_the_sink_sees_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = Outputs::default();
    out.sink.planned.lock().unwrap().checkpoint = Some(dir.path().join("checkpoint"));
    let partitions = vec![messages(0..7), messages(100..103)];
    let summary = out
        .run(dir.path(), doubled(), partitions, true, 2)
        .await
        .unwrap();
    assert_eq!(summary.batches, 5);
    // The entry is written beside decode and query, and waited for before the write.
    let planned = out.sink.planned.lock().unwrap().seen.clone();
    assert_eq!(planned, (0..5).map(Some).collect::<Vec<_>>());
}

#[tokio::test]
async fn runs_batches_in_order_and_commits_after_each_write() {
    let dir = tempfile::tempdir().unwrap();
    let out = Outputs::default();
    let (commits, sink, progress) = (&out.commits, &out.sink, &out.progress);
    let partitions = vec![messages(0..5), messages(100..103)];
    let summary = out
        .run(dir.path(), doubled(), partitions, true, 3)
        .await
        .unwrap();
    assert_eq!(
        (summary.batches, summary.input_rows, summary.output_rows),
        (3, 8, 8)
    );
    let written = sink.written.lock().unwrap().clone();
    assert_eq!(
        written.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    // Each batch holds its own rows only, though the plan is reused.
    assert_eq!(
        ids_of(&written),
        vec![vec![0, 1, 100], vec![2, 3, 101], vec![4, 102]]
    );
    let commits = commits.lock().unwrap().clone();
    assert_eq!(commits.last().unwrap(), &MemorySource::offsets(&[5, 3]));
    assert_eq!(commits.len(), 3);
    let p = progress.lock().unwrap();
    assert_eq!(
        p.iter().map(|p| p.batch_id).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    assert_eq!(p[1].sources[0].start_offset, MemorySource::offsets(&[2, 1]));
    assert_eq!(p[1].sources[0].end_offset, MemorySource::offsets(&[4, 2]));
    let json: serde_json::Value = serde_json::from_str(&p[0].json_line()).unwrap();
    for key in [
        "batchId",
        "numInputRows",
        "inputRowsPerSecond",
        "processedRowsPerSecond",
        "durationMs",
        "sources",
    ] {
        assert!(json.get(key).is_some(), "progress lacks {key}: {json}");
    }
    // Exact decimals: 0.25 * 2.
    let doubled = written[0].1[0]
        .column(1)
        .as_any()
        .downcast_ref::<arrow::array::Decimal128Array>()
        .unwrap();
    let mut texts: Vec<String> = (0..doubled.len())
        .map(|i| doubled.value_as_string(i))
        .collect();
    texts.sort();
    assert_eq!(texts, vec!["0.50", "2.50", "200.50"]);
}

#[tokio::test]
async fn retries_transient_sink_failures_and_commits_nothing_meanwhile() {
    let dir = tempfile::tempdir().unwrap();
    let out = Outputs::failing_writes(vec![Some(Retry::Transient), Some(Retry::Transient)]);
    let (commits, sink) = (&out.commits, &out.sink);
    let summary = out.run_four(dir.path(), false).await.unwrap();
    assert_eq!(summary.output_rows, 4);
    assert_eq!(
        commits.lock().unwrap().len(),
        1,
        "one commit, after the write finally succeeded"
    );
    assert_eq!(
        ids_of(&sink.written.lock().unwrap()),
        vec![vec![0, 1, 2, 3]]
    );
    let progress = out.progress.lock().unwrap();
    assert_eq!(progress.len(), 1);
    assert_eq!(progress[0].sink.num_retries, 2);
    assert_eq!(progress[0].dead_letter_sink.num_retries, 0);
    assert_eq!(
        progress[0].json_line().matches("\"numRetries\":2").count(),
        1
    );
}

#[tokio::test]
async fn progress_reports_each_parts_backlog_after_the_batch_and_spark_summary() {
    let dir = tempfile::tempdir().unwrap();
    let out = Outputs::default();
    // 5 + 2 messages, 3 per batch taken round-robin: after batch 0 the parts hold 3 and 1,
    // after batch 1 one and none, after batch 2 none.
    let partitions = vec![messages(0..5), messages(5..7)];
    out.run(dir.path(), doubled(), partitions, false, 3)
        .await
        .unwrap();
    let progress = out.progress.lock().unwrap();
    let backlogs: Vec<Vec<u64>> = progress
        .iter()
        .map(|p| {
            p.sources[0]
                .offsets_behind_latest
                .values()
                .copied()
                .collect()
        })
        .collect();
    assert_eq!(backlogs, vec![vec![3, 1], vec![1, 0], vec![0, 0]]);
    let first: serde_json::Value = serde_json::from_str(&progress[0].json_line()).unwrap();
    assert_eq!(
        first["sources"][0]["offsetsBehindLatest"],
        serde_json::json!({"memory/0": 3, "memory/1": 1})
    );
    let metrics = &first["sources"][0]["metrics"];
    assert_eq!(metrics["minOffsetsBehindLatest"], 1);
    assert_eq!(metrics["maxOffsetsBehindLatest"], 3);
    assert_eq!(metrics["avgOffsetsBehindLatest"], 2.0);
    let second: serde_json::Value = serde_json::from_str(&progress[1].json_line()).unwrap();
    assert_eq!(
        second["sources"][0]["metrics"]["avgOffsetsBehindLatest"],
        0.5
    );
}

#[tokio::test]
async fn a_source_that_fails_to_start_transiently_is_started_again_and_a_permanent_failure_stops() {
    let dir = tempfile::tempdir().unwrap();
    let out = Outputs::failing_starts(vec![Retry::Transient, Retry::Transient]);
    let summary = out.run_four(dir.path(), true).await.unwrap();
    assert_eq!(summary.output_rows, 4);
    assert!(
        out.start_failures.lock().unwrap().is_empty(),
        "started three times"
    );

    let out = Outputs::failing_starts(vec![Retry::Permanent, Retry::Transient]);
    let err = out.run_four(dir.path(), false).await.unwrap_err();
    assert!(err.to_string().contains("not ready"), "{err}");
    assert_eq!(
        out.start_failures.lock().unwrap().len(),
        1,
        "not started again"
    );
    assert!(out.sink.written.lock().unwrap().is_empty());
}

#[tokio::test]
async fn replays_an_uncommitted_batch_with_the_same_id_and_offsets_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    // First run: batch 0 is written; batch 1's write fails for good (the crash).
    let out = Outputs::failing_writes(vec![None, Some(Retry::Permanent)]);
    let (commits, sink) = (&out.commits, &out.sink);
    let partitions = vec![messages(0..5)];
    let first = out.run(dir.path(), doubled(), partitions.clone(), true, 2);
    assert!(first.await.is_err());
    assert_eq!(commits.lock().unwrap().len(), 1);

    // The restart: same sink and commits, its own progress.
    let restart = Outputs {
        progress: Default::default(),
        ..out.clone()
    };
    let progress = &restart.progress;
    restart
        .run(dir.path(), doubled(), partitions, true, 2)
        .await
        .unwrap();
    let p = progress.lock().unwrap();
    assert_eq!(p.iter().map(|p| p.batch_id).collect::<Vec<_>>(), vec![1, 2]);
    assert_eq!(p[0].sources[0].start_offset, MemorySource::offsets(&[2]));
    assert_eq!(p[0].sources[0].end_offset, MemorySource::offsets(&[4]));
    let written = sink.written.lock().unwrap().clone();
    assert_eq!(
        ids_of(&written),
        vec![vec![0, 1], vec![2, 3], vec![4]],
        "every row exactly once"
    );
}

#[tokio::test]
async fn dead_letters_bad_messages_and_moves_past_them() {
    let dir = tempfile::tempdir().unwrap();
    let out = Outputs::default();
    let (commits, letters) = (&out.commits, &out.letters);
    let mut msgs = messages(0..3);
    msgs.insert(1, r#"{"id":9,"price":"abc"}"#.into());
    msgs.insert(3, r#"{"id":"#.into());
    let summary = out
        .run(dir.path(), doubled(), vec![msgs], false, 100)
        .await
        .unwrap();
    assert_eq!((summary.output_rows, summary.dead_letters), (3, 2));
    let l = letters.0.lock().unwrap();
    assert_eq!(
        l.iter()
            .map(|(_, l)| l.record_position.offset)
            .collect::<Vec<_>>(),
        vec![1, 3]
    );
    assert!(l[0].1.reason.contains("abc"), "{}", l[0].1.reason);
    // Where each came from, in the source's own words.
    assert_eq!(
        l[1].1.position,
        serde_json::json!({"memory": 0, "message": 3})
    );
    assert_eq!(
        commits.lock().unwrap().last().unwrap(),
        &MemorySource::offsets(&[5])
    );
}

#[tokio::test]
async fn one_batch_runs_through_decode_and_transform_but_writes_and_commits_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = Outputs::default();
    let mut msgs = messages(0..4);
    msgs.insert(2, r#"{"id":9,"price":"abc"}"#.into());
    let mut q = query_with(dir.path(), doubled(), vec![msgs], &out, true, 3).await;
    let one = q.run_one_batch(Duration::from_millis(100)).await.unwrap();
    assert_eq!(
        (one.messages, one.decoded_rows),
        (3, 2),
        "max_records_per_batch holds"
    );
    assert_eq!(one.dead_letters.len(), 1);
    assert!(
        one.dead_letters[0].reason.contains("abc"),
        "{:?}",
        one.dead_letters
    );
    let rows: usize = one.output.iter().map(RecordBatch::num_rows).sum();
    assert_eq!(rows, 2);
    let metrics = PlannedTransform::explain_executed(&one.plan);
    assert!(metrics.contains("output_rows=2"), "{metrics}");
    assert!(out.commits.lock().unwrap().is_empty(), "nothing committed");
    assert!(
        out.sink.written.lock().unwrap().is_empty(),
        "nothing written"
    );
    assert!(
        out.letters.0.lock().unwrap().is_empty(),
        "no dead letter stored"
    );
}

#[tokio::test]
async fn a_bad_transform_fails_at_planning_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut ctx = EngineContext::new(&ContextOptions::default());
    ctx.register_input(
        "trades",
        ddl_table("t", "CREATE TABLE trades (id BIGINT)", "trades").unwrap(),
    )
    .unwrap();
    let path = dir.path().join("broken.sql");
    for (sql, expected) in [
        ("SELECT id\n  FROM trades WHERE id = = 3", "Line: 2"),
        ("SELECT nope FROM trades", "nope"),
    ] {
        std::fs::write(&path, sql).unwrap();
        let err = ctx
            .register_transform(TransformFile::read(&path).unwrap())
            .await
            .unwrap_err()
            .report()
            .to_string();
        assert!(err.starts_with("transform broken ("), "{err}");
        assert!(err.contains("broken.sql"), "{err}");
        assert!(
            err.contains(expected),
            "the position or name is given: {err}"
        );
    }
}

/// profit.sql's arithmetic: a decimal(28,10) price times a decimal(28,10) size is a
/// decimal(38,20), which overflows for a price above about 8.3e13 times 12000.
const VALUE_SQL: &str = "SELECT t.id, t.price * CAST(12000 AS DECIMAL(28,10)) AS value, r.tier \
     FROM trades t JOIN tiers r ON r.id % 2 = t.id % 2";

fn value_transform() -> Transform {
    Transform {
        name: "value",
        price: "DECIMAL(28,10)",
        sql: VALUE_SQL,
    }
}

/// The rows of what a sink was given, as sorted table lines (rows come out of a join in no set
/// order).
fn table_lines(written: &[(u64, Vec<RecordBatch>)]) -> Vec<String> {
    let batches: Vec<RecordBatch> = written.iter().flat_map(|(_, b)| b.clone()).collect();
    let text = arrow::util::pretty::pretty_format_batches(&batches)
        .unwrap()
        .to_string();
    let mut lines: Vec<String> = text
        .lines()
        .filter(|l| l.starts_with('|'))
        .skip(1)
        .map(str::to_owned)
        .collect();
    lines.sort();
    lines
}

const POISON: &str = r#"{"id":4,"price":"99999999999999999.5"}"#;

#[tokio::test]
async fn a_row_that_fails_in_the_transform_is_dead_lettered_and_the_rest_flows_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let good = messages(0..9)
        .into_iter()
        .filter(|m| !m.starts_with(r#"{"id":4,"#))
        .collect::<Vec<_>>();
    // Message 4 overflows in the transform; message 2 does not even decode, so the decoded rows
    // and the messages are numbered differently.
    let mut msgs = good.clone();
    msgs.insert(2, r#"{"id":"#.into());
    msgs.insert(5, POISON.into());
    assert_eq!(msgs[5], POISON);
    let out = Outputs::default();
    let (commits, sink, letters, progress) = (&out.commits, &out.sink, &out.letters, &out.progress);
    let run = out.run(dir.path(), value_transform(), vec![msgs.clone()], true, 100);
    let summary = run.await.unwrap();
    assert_eq!(
        (summary.batches, summary.output_rows, summary.dead_letters),
        (1, 8, 2)
    );
    assert_eq!(
        summary.dead_letters_by_reason,
        [("decode".to_owned(), 1), ("transform value".to_owned(), 1)].into()
    );

    // The good rows are exactly what they give alone.
    let alone = Outputs::default();
    let other = tempfile::tempdir().unwrap();
    let run = alone.run(other.path(), value_transform(), vec![good], false, 100);
    run.await.unwrap();
    let written = sink.written.lock().unwrap().clone();
    assert_eq!(ids_of(&written), vec![vec![0, 1, 2, 3, 5, 6, 7, 8]]);
    assert_eq!(
        table_lines(&written),
        table_lines(&alone.sink.written.lock().unwrap())
    );
    assert!(
        table_lines(&written)
            .iter()
            .any(|l| l.contains("| 8  | 99000.00000000000000000000 | even |")),
        "8.25 * 12000 exactly: {:#?}",
        table_lines(&written)
    );

    let l = letters.0.lock().unwrap().clone();
    assert_eq!(
        l.iter()
            .map(|(_, l)| l.record_position.offset)
            .collect::<Vec<_>>(),
        vec![2, 5]
    );
    let (batch_id, poison) = &l[1];
    assert_eq!(*batch_id, 0);
    assert_eq!(poison.raw, POISON.as_bytes(), "the message as received");
    assert!(
        poison.reason.starts_with("transform value (")
            && poison.reason.contains("value.sql): ")
            && poison.reason.contains("Arithmetic overflow"),
        "the transform and DataFusion's message: {}",
        poison.reason
    );

    // The batch is committed: a restart on the same checkpoint meets the row no more.
    assert_eq!(
        commits.lock().unwrap().clone(),
        vec![MemorySource::offsets(&[10])]
    );
    let p = progress.lock().unwrap().clone();
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].num_dead_letters, 2);
    assert_eq!(p[0].sink.num_output_rows, 8);
    let json: serde_json::Value = serde_json::from_str(&p[0].json_line()).unwrap();
    assert_eq!(
        json["deadLettersByReason"],
        serde_json::json!({"decode": 1, "transform value": 1})
    );
    assert!(
        p[0].human_line()
            .contains("2 dead-lettered (decode 1, transform value 1)"),
        "{}",
        p[0].human_line()
    );
    let again = Outputs {
        commits: Default::default(),
        progress: Default::default(),
        ..out.clone()
    };
    let run = again.run(dir.path(), value_transform(), vec![msgs], true, 100);
    let summary = run.await.unwrap();
    assert_eq!(summary.batches, 0, "nothing reprocessed");
    assert_eq!(letters.0.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn a_batch_whose_every_row_fails_is_all_dead_letters_and_committed() {
    let dir = tempfile::tempdir().unwrap();
    let msgs: Vec<String> = (0..37)
        .map(|i| format!(r#"{{"id":{i},"price":"9999999999999999{}.5"}}"#, i % 10))
        .collect();
    let out = Outputs::default();
    let (commits, letters, progress) = (&out.commits, &out.letters, &out.progress);
    let run = out.run(dir.path(), value_transform(), vec![msgs.clone()], false, 20);
    // Nothing usable: the run fails, but only after storing and committing every batch.
    match run.await.unwrap_err() {
        Error::NothingUsable {
            received,
            first_reason,
            dead_letters,
        } => {
            assert_eq!((received, dead_letters.as_str()), (37, "memory"));
            assert!(
                first_reason.starts_with("transform value (")
                    && first_reason.contains("Arithmetic overflow"),
                "{first_reason}"
            );
        }
        other => panic!("expected NothingUsable, got {other:?}"),
    }
    let l = letters.0.lock().unwrap();
    assert_eq!(
        l.iter()
            .map(|(_, l)| l.record_position.offset)
            .collect::<Vec<_>>(),
        (0..37).collect::<Vec<i64>>()
    );
    for (i, (_, letter)) in l.iter().enumerate() {
        assert_eq!(letter.raw, msgs[i].as_bytes());
        assert!(letter.reason.contains("Arithmetic overflow"), "{letter:?}");
    }
    assert_eq!(
        commits.lock().unwrap().clone(),
        vec![MemorySource::offsets(&[20]), MemorySource::offsets(&[37])]
    );
    let p = progress.lock().unwrap();
    assert_eq!(
        p.iter().map(|p| p.num_dead_letters).collect::<Vec<_>>(),
        vec![20, 17]
    );
    assert_eq!(
        p[1].dead_letters_by_reason,
        [("transform value".to_owned(), 17)].into()
    );
}

#[tokio::test]
async fn an_error_no_single_row_explains_stops_the_query_uncommitted() {
    let dir = tempfile::tempdir().unwrap();
    // Each id fits a TINYINT and so does each half's sum; the whole batch's sum (200) does not.
    // A window function over the batch (an aggregation would be a stateful one, whose sums live
    // in the state and are cast above it).
    let msgs: Vec<String> = (0..4)
        .map(|i| format!(r#"{{"id":50,"price":"{i}"}}"#))
        .collect();
    let out = Outputs::default();
    let (commits, sink, letters) = (&out.commits, &out.sink, &out.letters);
    let total = Transform {
        name: "total",
        price: "DECIMAL(10,2)",
        sql: "SELECT CAST(SUM(t.id) OVER () AS TINYINT) AS total FROM trades t",
    };
    let run = out.run(dir.path(), total, vec![msgs], true, 100);
    let err = run.await.unwrap_err().report().to_string();
    assert!(err.starts_with("transform total ("), "{err}");
    assert!(err.contains("no single row explains the error"), "{err}");
    assert!(
        err.contains(
            r#"the 4 rows from {"memory":0,"message":0} to {"memory":0,"message":3} fail together"#
        ),
        "{err}"
    );
    assert!(err.contains("Cast error"), "DataFusion's message: {err}");
    assert!(commits.lock().unwrap().is_empty(), "nothing committed");
    assert!(sink.written.lock().unwrap().is_empty());
    assert!(letters.0.lock().unwrap().is_empty(), "no row blamed");
}

#[tokio::test]
async fn a_run_that_could_use_none_of_its_messages_fails_after_committing_them() {
    let dir = tempfile::tempdir().unwrap();
    // Every message lacks the required price: all are dead letters at decode.
    let msgs: Vec<String> = (0..5).map(|i| format!(r#"{{"id":{i}}}"#)).collect();
    let out = Outputs::default();
    let (commits, sink, letters) = (&out.commits, &out.sink, &out.letters);
    let run = out.run(dir.path(), doubled(), vec![msgs.clone()], true, 2);
    let err = run.await.unwrap_err();
    let text = err.report().to_string();
    assert!(
        text.starts_with(
            "the run received 5 records and could use none of them; the first was \
             dead-lettered because: "
        ) && text.contains("price")
            && text.ends_with(" (see the memory)"),
        "{text}"
    );
    assert!(!err.is_transient());
    // Stored and committed first: nothing is lost and nothing is left to replay.
    assert_eq!(letters.0.lock().unwrap().len(), 5);
    assert_eq!(
        commits.lock().unwrap().last(),
        Some(&MemorySource::offsets(&[5]))
    );
    assert!(
        ids_of(&sink.written.lock().unwrap())
            .iter()
            .all(Vec::is_empty)
    );

    // The restart meets none of them again, so it has nothing to judge: exit 0.
    let again = Outputs {
        progress: Default::default(),
        ..out.clone()
    };
    let summary = again
        .run(dir.path(), doubled(), vec![msgs], true, 2)
        .await
        .unwrap();
    assert_eq!((summary.batches, summary.input_rows), (0, 0));
    assert_eq!(
        letters.0.lock().unwrap().len(),
        5,
        "nothing dead-lettered twice"
    );
}

#[tokio::test]
async fn a_run_with_one_good_row_or_no_messages_at_all_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let mut msgs: Vec<String> = (0..5).map(|i| format!(r#"{{"id":{i}}}"#)).collect();
    msgs.push(r#"{"id":7,"price":"1.50"}"#.into());
    let out = Outputs::default();
    let summary = out
        .run(dir.path(), doubled(), vec![msgs], false, 100)
        .await
        .unwrap();
    assert_eq!(
        (
            summary.input_rows,
            summary.output_rows,
            summary.dead_letters
        ),
        (6, 1, 5)
    );
    assert!(
        summary
            .first_dead_letter
            .as_deref()
            .is_some_and(|r| r.contains("price")),
        "{summary:?}"
    );

    let empty = Outputs::default();
    let summary = empty
        .run(dir.path(), doubled(), vec![Vec::new()], false, 100)
        .await
        .unwrap();
    assert_eq!(summary, engine::runtime::RunSummary::default());
}

/// A sink whose healthcheck is the test's `check`, called once per attempt; writes go to `inner`.
struct CheckedSink<F> {
    inner: MemorySink,
    check: F,
}

#[async_trait]
impl<F> Sink for CheckedSink<F>
where
    F: FnMut() -> BoxFuture<'static, Result<()>> + Send + Sync,
{
    fn description(&self) -> String {
        "checked".into()
    }

    async fn healthcheck(&mut self) -> Result<()> {
        (self.check)().await
    }

    async fn write(&mut self, batch_id: u64, batches: &[RecordBatch]) -> Result<()> {
        self.inner.write(batch_id, batches).await
    }
}

#[tokio::test]
async fn a_stop_while_the_sink_fails_its_healthcheck_ends_the_run_cleanly_and_promptly() {
    for hang in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let out = Outputs::default();
        let healthchecks = Arc::new(Mutex::new(0));
        let mut q = query_with(dir.path(), doubled(), vec![messages(0..3)], &out, true, 10).await;
        // An unreachable sink: its healthcheck fails transiently, at once or (`hang`) after
        // waiting a minute, as a client with a long connect timeout does.
        let counted = healthchecks.clone();
        q.sink = Box::new(CheckedSink {
            inner: out.sink.clone(),
            check: move || -> BoxFuture<'static, Result<()>> {
                *counted.lock().unwrap() += 1;
                Box::pin(async move {
                    if hang {
                        tokio::time::sleep(Duration::from_secs(60)).await;
                    }
                    Err(Error::sink_failed(
                        "unreachable",
                        "cannot connect",
                        Retry::Transient,
                    ))
                })
            },
        });
        let (tx, rx) = watch::channel(false);
        let started = std::time::Instant::now();
        let stop = async {
            // Long enough for a few retries of the failing check (the first pauses are 50-400 ms).
            tokio::time::sleep(Duration::from_millis(700)).await;
            tx.send(true).unwrap();
        };
        let (ran, ()) = tokio::join!(
            tokio::time::timeout(Duration::from_secs(5), q.run(rx)),
            stop
        );
        let summary = ran
            .expect("the run stops promptly")
            .unwrap_or_else(|e| panic!("a stop is a clean end (hang {hang}): {}", e.report()));
        assert_eq!(summary, engine::runtime::RunSummary::default());
        assert!(started.elapsed() < Duration::from_secs(5));
        let checks = *healthchecks.lock().unwrap();
        assert!(
            if hang { checks == 1 } else { checks >= 2 },
            "hang {hang}: {checks} healthchecks"
        );
        assert!(out.commits.lock().unwrap().is_empty(), "nothing read");
        assert!(out.sink.written.lock().unwrap().is_empty());
        assert!(out.progress.lock().unwrap().is_empty());
    }
}

#[tokio::test]
async fn the_sink_healthcheck_and_the_source_start_run_side_by_side() {
    let dir = tempfile::tempdir().unwrap();
    let out = Outputs::default();
    *out.start_failures.lock().unwrap() = vec![Retry::Transient];
    let mut q = query_with(dir.path(), doubled(), vec![messages(0..3)], &out, true, 10).await;
    // The sink's healthcheck passes only once the source's `start` has been called (its one
    // scripted failure used up): the two must run side by side. Were they one after the other,
    // the check would give up after 5 s, failing the run.
    let start_failures = out.start_failures.clone();
    q.sink = Box::new(CheckedSink {
        inner: out.sink.clone(),
        check: move || -> BoxFuture<'static, Result<()>> {
            let start_failures = start_failures.clone();
            Box::pin(async move {
                let source_started = async {
                    while !start_failures.lock().unwrap().is_empty() {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                };
                tokio::time::timeout(Duration::from_secs(5), source_started)
                    .await
                    .map_err(|_| {
                        let why = "the source was not started while the sink's healthcheck ran";
                        Error::sink_failed("checked", why, Retry::Permanent)
                    })
            })
        },
    });
    let (_tx, rx) = watch::channel(false);
    let summary = q.run(rx).await.unwrap_or_else(|e| panic!("{}", e.report()));
    assert_eq!(summary.output_rows, 3);
    assert_eq!(out.commits.lock().unwrap().len(), 1);
}
