//! The sink half of the contract: [`SinkFixture`] and [`check_sink`] for the transform's rows,
//! [`DeadLetterFixture`] and [`check_dead_letter_sink`] for dead-letter outputs.

use std::sync::Arc;

use arrow::array::{Array, Decimal128Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use async_trait::async_trait;
use engine::{DeadLetter, DeadLetterSink, Error, RecordPosition, Retry, Sink};

/// What writing the same batch id again does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// The rows are there once (files named by batch id, rows keyed by their primary key).
    Idempotent,
    /// The rows may be there twice (an append-only log, a terminal); documented by the sink.
    AtLeastOnce,
}

/// When a [`Failure`] must show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// `healthcheck` fails.
    Healthcheck,
    /// `healthcheck` passes (it checks without side effects) and `write` fails.
    Write,
}

/// A sink that must fail, and how.
pub struct Failure {
    /// What is wrong, for messages (`an unreachable node`).
    pub what: String,
    /// The sink, built over the broken target.
    pub sink: Box<dyn Sink>,
    /// The rows to write; `None`: [`contract_rows`].
    pub rows: Option<RecordBatch>,
    /// Where the failure must show.
    pub stage: Stage,
    /// Its class.
    pub retry: Retry,
}

/// The query id the contract binds its sinks to ([`Sink::bind_query`]), before and after a
/// restart.
pub const CONTRACT_QUERY_ID: &str = "contract-query";

/// A sink under test, writing rows of [`contract_schema`] to a target the fixture can read.
#[async_trait]
pub trait SinkFixture: Send {
    /// Names the sink in failure messages.
    const NAME: &'static str;

    /// What writing the same batch id again does.
    const DELIVERY: Delivery;

    /// A new instance (a restart) writing rows of `schema` to the fixture's target.
    async fn build(&mut self, schema: SchemaRef) -> Box<dyn Sink>;

    /// Every row the target holds, as [`row_lines`] renders them, in any order; waits until at
    /// least `at_least` rows are there (a broker delivers a moment later), within reason.
    async fn read_back(&mut self, at_least: usize) -> Vec<String>;

    /// Sinks over broken targets, each with the failure it must report (at least one).
    async fn failures(&mut self, schema: SchemaRef) -> Vec<Failure>;
}

/// The contract's rows: `key utf8 not null, id int64 not null, price decimal(28,10) not null`.
pub fn contract_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("key", DataType::Utf8, false),
        Field::new("id", DataType::Int64, false),
        Field::new("price", DataType::Decimal128(28, 10), false),
    ]))
}

/// `rows` rows of batch `batch`: ids `batch * 1000 + i`, keys over three values, exact prices
/// with ten decimals (a scale a float would not keep).
pub fn contract_rows(batch: u64, rows: usize) -> RecordBatch {
    let ids: Vec<i64> = (0..rows as i64).map(|i| batch as i64 * 1000 + i).collect();
    let keys: Vec<String> = ids.iter().map(|id| format!("K-{}", id % 3)).collect();
    // 60000.0000000001 + id: the last digit is the tenth decimal.
    let prices: Vec<i128> = ids
        .iter()
        .map(|id| (60_000 + i128::from(*id)) * 10_i128.pow(10) + 1)
        .collect();
    let price = Decimal128Array::from(prices)
        .with_precision_and_scale(28, 10)
        .expect("precision 28 and scale 10 are valid");
    RecordBatch::try_new(
        contract_schema(),
        vec![
            Arc::new(StringArray::from(keys)),
            Arc::new(Int64Array::from(ids)),
            Arc::new(price),
        ],
    )
    .expect("the columns match the contract schema")
}

/// Each row of `batches` (of [`contract_schema`]) as `key|id|price`, the price with its ten
/// decimals (`60001.0000000001`).
pub fn row_lines(batches: &[RecordBatch]) -> Vec<String> {
    let mut lines = Vec::new();
    for batch in batches {
        let column = |name: &str| {
            batch
                .column_by_name(name)
                .unwrap_or_else(|| panic!("a contract batch has column {name}"))
        };
        let keys = column("key")
            .as_any()
            .downcast_ref::<StringArray>()
            .expect("key is utf8");
        let ids = column("id")
            .as_any()
            .downcast_ref::<Int64Array>()
            .expect("id is int64");
        let prices = column("price")
            .as_any()
            .downcast_ref::<Decimal128Array>()
            .expect("price is decimal");
        for i in 0..batch.num_rows() {
            lines.push(format!(
                "{}|{}|{}",
                keys.value(i),
                ids.value(i),
                prices.value_as_string(i)
            ));
        }
    }
    lines
}

fn sorted(mut lines: Vec<String>) -> Vec<String> {
    lines.sort();
    lines
}

fn sink_error(who: &str, what: &str, result: engine::Result<()>, retry: Retry) {
    match result {
        Err(Error::Sink { retry: got, .. }) if got == retry => {}
        Err(e) => panic!(
            "{who}: {what} must fail as a {retry:?} sink error, got {}",
            e.report()
        ),
        Ok(()) => panic!("{who}: {what} must fail as a {retry:?} sink error, it succeeded"),
    }
}

/// Runs every sink check on `fixture`; panics at the first broken promise, naming the sink and
/// the check.
pub async fn check_sink<F: SinkFixture>(fixture: &mut F) {
    let schema = contract_schema();
    let mut sink = fixture.build(schema.clone()).await;
    let name = format!("sink {} ({})", F::NAME, sink.description());
    let who = |check: &str| format!("{name}, check {check}");
    let ok = |who: String, what: &str, r: engine::Result<()>| {
        r.unwrap_or_else(|e| panic!("{who}: {what} failed: {}", e.report()))
    };

    ok(who("call order"), "healthcheck", sink.healthcheck().await);
    // As the runtime does: the query's id, the same across restarts of one query.
    ok(
        who("call order"),
        "bind_query",
        sink.bind_query(CONTRACT_QUERY_ID, 0).await,
    );
    ok(
        who("empty batches"),
        "write of no batches",
        sink.write(0, &[]).await,
    );
    ok(
        who("empty batches"),
        "write of a batch of no rows",
        sink.write(1, &[RecordBatch::new_empty(schema.clone())])
            .await,
    );
    let empty_who = who("empty batches");
    let held = fixture.read_back(0).await;
    assert!(
        held.is_empty(),
        "{empty_who}: empty batches wrote rows: {held:?}"
    );

    // One batch id, its rows in two record batches (a transform's output often is).
    let first = contract_rows(2, 40);
    let parts = [first.slice(0, 25), first.slice(25, 15)];
    let written = sorted(row_lines(&parts));
    ok(
        who("write"),
        "write of batch 2",
        sink.write(2, &parts).await,
    );
    let write_who = who("write");
    assert_eq!(
        sorted(fixture.read_back(written.len()).await),
        written,
        "{write_who}: the rows read back are not the rows written"
    );

    // The same batch again, as the runtime writes it after a failed commit.
    ok(
        who("replay"),
        "second write of batch 2",
        sink.write(2, &parts).await,
    );
    let replay_who = who("replay");
    let delivery = F::DELIVERY;
    let expect_after = |times: usize| -> Vec<String> {
        sorted(
            written
                .iter()
                .flat_map(|l| std::iter::repeat_n(l.clone(), times))
                .collect(),
        )
    };
    match delivery {
        Delivery::Idempotent => assert_eq!(
            sorted(fixture.read_back(written.len()).await),
            written,
            "{replay_who}: an idempotent sink holds other rows after a batch was written twice"
        ),
        Delivery::AtLeastOnce => assert_eq!(
            sorted(fixture.read_back(2 * written.len()).await),
            expect_after(2),
            "{replay_who}: an at-least-once sink holds other rows after a batch was written twice"
        ),
    }
    ok(who("close"), "close", sink.close().await);

    // A restart writes the same batch once more, then the next one.
    let mut sink = fixture.build(schema.clone()).await;
    let restart_who = format!("sink {} ({}), check restart", F::NAME, sink.description());
    ok(restart_who.clone(), "healthcheck", sink.healthcheck().await);
    // Batches 0 and 1 were committed before the restart; 2 was written but not committed.
    ok(
        restart_who.clone(),
        "bind_query",
        sink.bind_query(CONTRACT_QUERY_ID, 2).await,
    );
    ok(
        restart_who.clone(),
        "write of batch 2 after a restart",
        sink.write(2, &parts).await,
    );
    let next = contract_rows(3, 10);
    ok(
        restart_who.clone(),
        "write of batch 3",
        sink.write(3, std::slice::from_ref(&next)).await,
    );
    ok(restart_who.clone(), "close", sink.close().await);
    let times = match delivery {
        Delivery::Idempotent => 1,
        Delivery::AtLeastOnce => 3,
    };
    let mut expected = expect_after(times);
    expected.extend(row_lines(&[next]));
    let expected = sorted(expected);
    assert_eq!(
        sorted(fixture.read_back(expected.len()).await),
        expected,
        "{restart_who}: the rows after a restart are not the rows written"
    );

    let failures = fixture.failures(schema.clone()).await;
    assert!(
        !failures.is_empty(),
        "sink {}: the contract needs at least one failure to classify",
        F::NAME
    );
    for mut failure in failures {
        let who = format!(
            "sink {} ({}), check failure classified: {}",
            F::NAME,
            failure.sink.description(),
            failure.what
        );
        let rows = failure.rows.take().unwrap_or_else(|| contract_rows(9, 3));
        match failure.stage {
            Stage::Healthcheck => sink_error(
                &who,
                "healthcheck",
                failure.sink.healthcheck().await,
                failure.retry,
            ),
            Stage::Write => {
                ok(who.clone(), "healthcheck", failure.sink.healthcheck().await);
                sink_error(
                    &who,
                    "write",
                    failure.sink.write(9, &[rows]).await,
                    failure.retry,
                );
            }
        }
    }
}

/// A dead-letter output that must fail, and how.
pub struct DeadLetterFailure {
    /// What is wrong, for messages.
    pub what: String,
    /// The output, built over the broken target.
    pub sink: Box<dyn DeadLetterSink>,
    /// The letters to write; `None`: [`contract_letters`].
    pub letters: Option<Vec<DeadLetter>>,
    /// Its class.
    pub retry: Retry,
}

/// A dead-letter output under test, writing to a target the fixture can read.
#[async_trait]
pub trait DeadLetterFixture: Send {
    /// Names the output in failure messages.
    const NAME: &'static str;

    /// What writing the same batch id again does.
    const DELIVERY: Delivery;

    /// A new instance (a restart) writing to the fixture's target.
    async fn build(&mut self) -> Box<dyn DeadLetterSink>;

    /// Every letter the target holds, as [`letter_line`] renders them, in any order; waits until
    /// at least `at_least` are there.
    async fn read_back(&mut self, at_least: usize) -> Vec<String>;

    /// Outputs over broken targets, each with the failure it must report (at least one).
    async fn failures(&mut self) -> Vec<DeadLetterFailure>;
}

/// `n` dead letters of batch `batch`: positions in a source's words, raw frames (one not UTF-8
/// text is left out: every output writes text), a converted record on every other one.
pub fn contract_letters(batch: u64, n: usize) -> Vec<DeadLetter> {
    (0..n as i64)
        .map(|i| {
            let offset = batch as i64 * 1000 + i;
            let record_position = RecordPosition::new((i % 2) as u32, offset);
            DeadLetter {
                position: serde_json::json!({"file": "/data/feed.jsonl", "line": offset + 1}),
                record_position,
                raw: format!(r#"{{"type":"match","trade_id":{offset},"price":"1e999"}}"#)
                    .into_bytes(),
                record: (i % 2 == 0).then(|| format!(r#"{{"trade_id":{offset}}}"#).into_bytes()),
                reason: format!("price out of range in letter {offset}"),
            }
        })
        .collect()
}

/// A letter as `position|reason|raw|record` (record empty when there is none).
pub fn letter_line(
    position: &serde_json::Value,
    reason: &str,
    raw: &str,
    record: Option<&str>,
) -> String {
    format!("{position}|{reason}|{raw}|{}", record.unwrap_or(""))
}

fn letter_lines(letters: &[DeadLetter]) -> Vec<String> {
    letters
        .iter()
        .map(|l| {
            let record = l
                .record
                .as_ref()
                .map(|r| String::from_utf8_lossy(r).into_owned());
            letter_line(
                &l.position,
                &l.reason,
                &String::from_utf8_lossy(&l.raw),
                record.as_deref(),
            )
        })
        .collect()
}

/// Runs every dead-letter output check on `fixture`; panics at the first broken promise.
pub async fn check_dead_letter_sink<F: DeadLetterFixture>(fixture: &mut F) {
    let mut sink = fixture.build().await;
    let who = format!("dead-letter output {} ({})", F::NAME, sink.description());
    let ok = |what: &str, r: engine::Result<()>| {
        r.unwrap_or_else(|e| panic!("{who}: {what} failed: {}", e.report()));
    };
    ok("write of no letters", sink.write(0, &[]).await);
    let held = fixture.read_back(0).await;
    assert!(held.is_empty(), "{who}: no letters wrote letters: {held:?}");

    let letters = contract_letters(1, 12);
    let written = sorted(letter_lines(&letters));
    ok("write of batch 1", sink.write(1, &letters).await);
    assert_eq!(
        sorted(fixture.read_back(written.len()).await),
        written,
        "{who}: the letters read back are not the letters written"
    );
    ok("second write of batch 1", sink.write(1, &letters).await);
    ok("close", sink.close().await);
    let mut sink = fixture.build().await;
    ok(
        "write of batch 1 after a restart",
        sink.write(1, &letters).await,
    );
    ok("close", sink.close().await);
    let times = match F::DELIVERY {
        Delivery::Idempotent => 1,
        Delivery::AtLeastOnce => 3,
    };
    let expected = sorted(
        written
            .iter()
            .flat_map(|l| std::iter::repeat_n(l.clone(), times))
            .collect(),
    );
    assert_eq!(
        sorted(fixture.read_back(expected.len()).await),
        expected,
        "{who}: the letters after batch 1 was written three times ({:?})",
        F::DELIVERY
    );

    let failures = fixture.failures().await;
    assert!(
        !failures.is_empty(),
        "{who}: the contract needs at least one failure to classify"
    );
    for mut failure in failures {
        let letters = failure
            .letters
            .take()
            .unwrap_or_else(|| contract_letters(9, 2));
        let result = failure.sink.write(9, &letters).await;
        sink_error(
            &format!("{who}, check failure classified: {}", failure.what),
            "write",
            result,
            failure.retry,
        );
    }
}
