//! The micro-batch runtime through its public API, with in-memory sources and sinks.

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arrow::array::{Array, Int64Array, RecordBatch};
use async_trait::async_trait;
use engine::checkpoint::Checkpoint;
use engine::context::{ContextOptions, EngineContext};
use engine::decode::RecordDecoder;
use engine::progress::BatchProgress;
use engine::runtime::StreamingQuery;
use engine::schema::parse_columns;
use engine::transform::TransformFile;
use engine::trigger::Trigger;
use engine::{
    DeadLetter, DeadLetterSink, Error, Offsets, Poll, PollLimits, RawRecord, Result, Retry, Sink,
    Source, SourceBatch, StartRequest,
};
use tokio::sync::watch;

/// Messages in two partitions of topic `t`, handed out in order, with a record of commits.
struct MemorySource {
    partitions: Vec<Vec<String>>,
    next: Vec<i64>,
    commits: Arc<Mutex<Vec<Offsets>>>,
}

impl MemorySource {
    fn new(partitions: Vec<Vec<String>>, commits: Arc<Mutex<Vec<Offsets>>>) -> Self {
        let next = vec![0; partitions.len()];
        Self {
            partitions,
            next,
            commits,
        }
    }

    fn offsets(positions: &[i64]) -> Offsets {
        let mut o = Offsets::new();
        for (p, n) in positions.iter().enumerate() {
            o.set("t", p as i32, *n);
        }
        o
    }

    fn records(&self, from: &[i64], to: &[i64]) -> Vec<RawRecord> {
        let mut out = Vec::new();
        for (p, msgs) in self.partitions.iter().enumerate() {
            for offset in from[p]..to[p] {
                out.push(RawRecord {
                    topic: "t".into(),
                    partition: p as i32,
                    offset,
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

    async fn start(&mut self, request: StartRequest) -> Result<()> {
        if let Some(c) = request.committed {
            for p in 0..self.next.len() {
                self.next[p] = c.get("t", p as i32).unwrap_or(0);
            }
        }
        Ok(())
    }

    async fn fetch_range(&mut self, start: &Offsets, end: &Offsets) -> Result<SourceBatch> {
        let n = self.partitions.len();
        let from: Vec<i64> = (0..n).map(|p| start.get("t", p as i32).unwrap()).collect();
        let to: Vec<i64> = (0..n).map(|p| end.get("t", p as i32).unwrap()).collect();
        self.next = to.clone();
        Ok(SourceBatch {
            records: self.records(&from, &to),
            start: start.clone(),
            end: end.clone(),
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
        }))
    }

    async fn commit(&mut self, end: &Offsets) -> Result<()> {
        self.commits.lock().unwrap().push(end.clone());
        Ok(())
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
            return Err(Error::Sink {
                name: "memory".into(),
                message: "scripted failure".into(),
                retry,
            });
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

async fn query(
    dir: &std::path::Path,
    source: MemorySource,
    sink: MemorySink,
    letters: MemoryDeadLetters,
    checkpoint: bool,
    progress: Arc<Mutex<Vec<BatchProgress>>>,
    max_records: usize,
) -> StreamingQuery {
    let schema = parse_columns(
        "t",
        &[
            "id int64 not null".into(),
            "price decimal(10,2) not null".into(),
        ],
    )
    .unwrap();
    let mut ctx = EngineContext::new(&ContextOptions::default());
    let tiers_path = dir.join("tiers.json");
    std::fs::write(&tiers_path, r#"{"0":"even","1":"odd"}"#).unwrap();
    ctx.register_reference(&engine::reference::ReferenceTable {
        name: "tiers".into(),
        path: tiers_path,
        key_column: "key".into(),
        columns: parse_columns("c", &["tier utf8 not null".into()]).unwrap(),
        scalar_values: true,
    })
    .unwrap();
    // The reference key is text; expose it as a number for the join.
    ctx.session()
        .sql("CREATE VIEW tiers_by_id AS SELECT CAST(key AS BIGINT) AS id, tier FROM tiers")
        .await
        .unwrap();
    let input = ctx.register_input("trades", schema.clone()).unwrap();
    let sql_path = dir.join("doubled.sql");
    std::fs::write(&sql_path, SQL.replace("JOIN tiers r", "JOIN tiers_by_id r")).unwrap();
    let transform = ctx
        .register_transform(TransformFile::read(&sql_path).unwrap())
        .await
        .unwrap();
    StreamingQuery {
        source: Box::new(source),
        decoder: RecordDecoder::new(schema),
        input,
        transform,
        sink: Box::new(sink),
        dead_letters: Box::new(letters),
        checkpoint: checkpoint.then(|| Checkpoint::open(dir.join("checkpoint")).unwrap()),
        trigger: Trigger::AvailableNow,
        max_records_per_batch: max_records,
        on_progress: Box::new(move |p| progress.lock().unwrap().push(p.clone())),
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
async fn runs_batches_in_order_and_commits_after_each_write() {
    let dir = tempfile::tempdir().unwrap();
    let commits = Arc::new(Mutex::new(Vec::new()));
    let source = MemorySource::new(vec![messages(0..5), messages(100..103)], commits.clone());
    let sink = MemorySink::default();
    let progress = Arc::new(Mutex::new(Vec::new()));
    let q = query(
        dir.path(),
        source,
        sink.clone(),
        Default::default(),
        true,
        progress.clone(),
        3,
    )
    .await;
    let (_tx, rx) = watch::channel(false);
    let summary = q.run(rx).await.unwrap();
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
    let commits = Arc::new(Mutex::new(Vec::new()));
    let source = MemorySource::new(vec![messages(0..4)], commits.clone());
    let sink = MemorySink::default();
    *sink.failures.lock().unwrap() = vec![Some(Retry::Transient), Some(Retry::Transient)];
    let q = query(
        dir.path(),
        source,
        sink.clone(),
        Default::default(),
        false,
        Default::default(),
        10,
    )
    .await;
    let (_tx, rx) = watch::channel(false);
    let summary = q.run(rx).await.unwrap();
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
}

#[tokio::test]
async fn replays_an_uncommitted_batch_with_the_same_id_and_offsets_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let commits = Arc::new(Mutex::new(Vec::new()));
    let sink = MemorySink::default();
    // First run: batch 0 is written; batch 1's write fails for good (the crash).
    *sink.failures.lock().unwrap() = vec![None, Some(Retry::Permanent)];
    let source = MemorySource::new(vec![messages(0..5)], commits.clone());
    let q = query(
        dir.path(),
        source,
        sink.clone(),
        Default::default(),
        true,
        Default::default(),
        2,
    )
    .await;
    let (_tx, rx) = watch::channel(false);
    assert!(q.run(rx).await.is_err());
    assert_eq!(commits.lock().unwrap().len(), 1);

    let progress = Arc::new(Mutex::new(Vec::new()));
    let source = MemorySource::new(vec![messages(0..5)], commits.clone());
    let q = query(
        dir.path(),
        source,
        sink.clone(),
        Default::default(),
        true,
        progress.clone(),
        2,
    )
    .await;
    let (_tx, rx) = watch::channel(false);
    q.run(rx).await.unwrap();
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
    let commits = Arc::new(Mutex::new(Vec::new()));
    let mut msgs = messages(0..3);
    msgs.insert(1, r#"{"id":9,"price":"abc"}"#.into());
    msgs.insert(3, r#"{"id":"#.into());
    let source = MemorySource::new(vec![msgs], commits.clone());
    let sink = MemorySink::default();
    let letters = MemoryDeadLetters::default();
    let q = query(
        dir.path(),
        source,
        sink.clone(),
        letters.clone(),
        false,
        Default::default(),
        100,
    )
    .await;
    let (_tx, rx) = watch::channel(false);
    let summary = q.run(rx).await.unwrap();
    assert_eq!((summary.output_rows, summary.dead_letters), (3, 2));
    let l = letters.0.lock().unwrap();
    assert_eq!(
        l.iter().map(|(_, l)| l.offset).collect::<Vec<_>>(),
        vec![1, 3]
    );
    assert!(l[0].1.reason.contains("abc"), "{}", l[0].1.reason);
    assert_eq!(
        commits.lock().unwrap().last().unwrap(),
        &MemorySource::offsets(&[5])
    );
}

#[tokio::test]
async fn a_bad_transform_fails_at_planning_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut ctx = EngineContext::new(&ContextOptions::default());
    ctx.register_input("trades", parse_columns("t", &["id int64".into()]).unwrap())
        .unwrap();
    let path = dir.path().join("broken.sql");
    std::fs::write(&path, "SELECT id\n  FROM trades WHERE id = = 3").unwrap();
    let err = ctx
        .register_transform(TransformFile::read(&path).unwrap())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("transform broken ("), "{err}");
    assert!(err.contains("broken.sql"), "{err}");
    assert!(err.contains("Line: 2"), "the position is named: {err}");
    std::fs::write(&path, "SELECT nope FROM trades").unwrap();
    let err = ctx
        .register_transform(TransformFile::read(&path).unwrap())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("nope"), "{err}");
}
