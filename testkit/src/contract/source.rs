//! The source half of the contract: [`SourceFixture`] and [`check_source`].

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use engine::{
    Error, OffsetRange, Poll, PollLimits, RawRecord, Source, SourceBatch, SourceOffset,
    StartRequest,
};

use super::round_trip;

/// How long the driver waits for the records it expects (a Kafka group joins in seconds).
const PATIENCE: Duration = Duration::from_secs(90);

/// Polls after the last record that must hand out nothing.
const EMPTY_POLLS: usize = 2;

/// What a source promises about a batch planned but not committed before a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replay {
    /// `fetch_range` gives the batch's records and offsets again.
    Exact,
    /// `fetch_range` refuses with a permanent error (a live feed that cannot go back).
    Refused,
}

/// A source under test over fixed test data.
#[async_trait]
pub trait SourceFixture: Send {
    /// Names the source in failure messages.
    const NAME: &'static str;

    /// A new instance over the fixture's data, for query `query`: two instances built with the
    /// same `query` are one query started twice (a Kafka source: the same consumer group), other
    /// names are unrelated queries that each read everything.
    fn build(&mut self, query: &str) -> Box<dyn Source>;

    /// How many records a full read hands out.
    fn total(&self) -> usize;

    /// What the source does with an uncommitted batch after a crash (default [`Replay::Exact`]).
    fn replay(&self) -> Replay {
        Replay::Exact
    }

    /// The `available_now` of every start (default true). A source that would end before
    /// records added later arrive (a Kafka source's ends are fixed at start) says false, and the
    /// driver counts records instead of waiting for `Exhausted`.
    fn available_now(&self) -> bool {
        true
    }

    /// The limits of every poll (default 7 records, 500 ms: several batches from a few dozen
    /// records).
    fn limits(&self) -> PollLimits {
        PollLimits {
            max_records: 7,
            max_wait: Duration::from_millis(500),
        }
    }

    /// What makes `record` the same record when two instances hand it out; `position` is its
    /// position in the source's words. Default [`default_identity`]; a source that stamps the
    /// time it read a record (an ingest time) leaves that out.
    fn identity(&self, position: &serde_json::Value, record: &RawRecord) -> String {
        default_identity(position, record)
    }

    /// Adds `n` records to the data, after every query read it all; false when the data cannot
    /// grow (the default).
    async fn append(&mut self, n: usize) -> bool {
        let _ = n;
        false
    }
}

/// A record's position in its source's words, its payload and its rejection.
pub fn default_identity(position: &serde_json::Value, record: &RawRecord) -> String {
    format!(
        "{position} {} {:?}",
        String::from_utf8_lossy(&record.payload),
        record.rejected
    )
}

/// Runs every source check on `fixture`; panics at the first broken promise, naming the source
/// and the check.
pub async fn check_source<F: SourceFixture>(fixture: &mut F) {
    refuses_poll_before_start(fixture).await;
    let (reference, end) = full_read(fixture).await;
    let reference = restarts_after_the_end(fixture, reference, end).await;
    exact_replay(fixture, &reference).await;
    resumes_after_commit(fixture, &reference).await;
}

/// One instance under the driver, calling it as the runtime does.
struct Driven<'f, F: SourceFixture> {
    fixture: &'f F,
    source: Box<dyn Source>,
    check: &'static str,
}

impl<'f, F: SourceFixture> Driven<'f, F> {
    fn who(&self) -> String {
        format!(
            "source {} ({}), check {}",
            F::NAME,
            self.source.description(),
            self.check
        )
    }

    async fn start(
        fixture: &'f mut F,
        query: &str,
        committed: Option<&SourceOffset>,
        check: &'static str,
    ) -> Self {
        let mut source = fixture.build(query);
        let fixture: &'f F = fixture;
        let request = StartRequest {
            committed: committed.cloned(),
            available_now: fixture.available_now(),
        };
        let who = format!("source {}, check {check}", F::NAME);
        source
            .start(request)
            .await
            .unwrap_or_else(|e| panic!("{who}: start failed: {}", e.report()));
        Self {
            fixture,
            source,
            check,
        }
    }

    fn keys(&self, records: &[RawRecord]) -> Vec<String> {
        records
            .iter()
            .map(|r| {
                self.fixture
                    .identity(&self.source.describe_position(r.position), r)
            })
            .collect()
    }

    /// The next poll's result, checked: a batch within the limits, with offsets that
    /// round-trip and records or a moved offset.
    async fn poll(&mut self) -> Poll {
        let limits = self.fixture.limits();
        let polled = self
            .source
            .poll(limits)
            .await
            .unwrap_or_else(|e| panic!("{}: poll failed: {}", self.who(), e.report()));
        if let Poll::Batch(batch) = &polled {
            let who = self.who();
            assert!(
                batch.records.len() <= limits.max_records,
                "{who}: a batch of {} records, above max_records {}",
                batch.records.len(),
                limits.max_records
            );
            round_trip(&who, &batch.start);
            round_trip(&who, &batch.end);
            assert!(
                !batch.records.is_empty() || batch.start != batch.end,
                "{who}: a batch with no records and an offset that did not move ({}): that is Idle",
                batch.end
            );
        }
        polled
    }

    /// Commits `end` (its round-tripped copy), as the runtime does after the sink's write.
    async fn commit(&mut self, end: &SourceOffset) -> SourceOffset {
        let end = round_trip(&self.who(), end);
        self.source
            .commit(&end)
            .await
            .unwrap_or_else(|e| panic!("{}: commit of {end} failed: {}", self.who(), e.report()));
        end
    }

    /// The next batch with records; panics when the source ends or none comes within
    /// [`PATIENCE`]. Batches with no records (a moved offset) are committed on the way.
    async fn next_batch(&mut self) -> SourceBatch {
        let deadline = Instant::now() + PATIENCE;
        while Instant::now() < deadline {
            match self.poll().await {
                Poll::Batch(batch) if batch.records.is_empty() => {
                    self.commit(&batch.end).await;
                }
                Poll::Batch(batch) => return batch,
                Poll::Idle => {}
                Poll::Exhausted => panic!("{}: ended while records were expected", self.who()),
            }
        }
        panic!("{}: no records within {PATIENCE:?}", self.who());
    }

    /// Polls and commits batch after batch until `expected` records came; returns their keys
    /// and the last committed end.
    async fn drain(&mut self, expected: usize) -> (Vec<String>, Option<SourceOffset>) {
        let mut keys = Vec::new();
        let mut end = None;
        while keys.len() < expected {
            let batch = self.next_batch().await;
            keys.extend(self.keys(&batch.records));
            end = Some(self.commit(&batch.end).await);
        }
        assert_eq!(
            keys.len(),
            expected,
            "{}: more records than the data holds: {keys:#?}",
            self.who()
        );
        (keys, end)
    }

    /// Polls until [`EMPTY_POLLS`] polls in a row handed out nothing (`Idle` or `Exhausted`);
    /// a batch with records fails. A batch of no records that moves the offset (input the
    /// source skips, such as a trailing heartbeat) is committed, a few times at most.
    async fn expect_nothing(&mut self) {
        let mut empty = 0;
        for _ in 0..EMPTY_POLLS + 3 {
            match self.poll().await {
                Poll::Idle | Poll::Exhausted => empty += 1,
                Poll::Batch(batch) if batch.records.is_empty() => {
                    empty = 0;
                    self.commit(&batch.end).await;
                }
                Poll::Batch(batch) => panic!(
                    "{}: a poll after the last record handed out {} records, offsets {} .. {}: {:?}",
                    self.who(),
                    batch.records.len(),
                    batch.start,
                    batch.end,
                    self.keys(&batch.records)
                ),
            }
            if empty == EMPTY_POLLS {
                return;
            }
        }
        panic!("{}: the offset kept moving with no records", self.who());
    }

    async fn close(mut self) {
        let who = self.who();
        self.source
            .close()
            .await
            .unwrap_or_else(|e| panic!("{who}: close failed: {}", e.report()));
    }
}

/// Sorted, with a panic naming the duplicates when a key appears twice.
fn distinct(who: &str, keys: impl IntoIterator<Item = String>) -> BTreeSet<String> {
    let mut set = BTreeSet::new();
    for key in keys {
        assert!(
            set.insert(key.clone()),
            "{who}: a record handed out twice: {key}"
        );
    }
    set
}

async fn refuses_poll_before_start<F: SourceFixture>(fixture: &mut F) {
    let mut source = fixture.build("unstarted");
    let limits = fixture.limits();
    match source.poll(limits).await {
        Err(_) => {}
        Ok(polled) => panic!(
            "source {}, check call order: poll before start must fail, got {}",
            F::NAME,
            match polled {
                Poll::Batch(b) => format!("a batch of {} records", b.records.len()),
                Poll::Idle => "Idle".into(),
                Poll::Exhausted => "Exhausted".into(),
            }
        ),
    }
}

/// The reference read: every record once; then empty polls. Returns the records' keys and the
/// last committed end.
async fn full_read<F: SourceFixture>(fixture: &mut F) -> (BTreeSet<String>, SourceOffset) {
    let total = fixture.total();
    assert!(
        total > 0,
        "source {}: a fixture with no records checks nothing",
        F::NAME
    );
    let mut run = Driven::start(fixture, "reference", None, "full read").await;
    let (keys, end) = run.drain(total).await;
    let reference = distinct(&run.who(), keys);
    run.expect_nothing().await;
    run.close().await;
    let end = end.expect("a drain of at least one record committed an end");
    (reference, end)
}

/// A restart from the last end hands out nothing; records added then come next, once. Returns
/// the data's records, the added ones included.
async fn restarts_after_the_end<F: SourceFixture>(
    fixture: &mut F,
    mut reference: BTreeSet<String>,
    end: SourceOffset,
) -> BTreeSet<String> {
    let mut run = Driven::start(fixture, "reference", Some(&end), "restart at the end").await;
    run.expect_nothing().await;
    run.close().await;
    const ADDED: usize = 5;
    if !fixture.append(ADDED).await {
        return reference;
    }
    let mut run = Driven::start(fixture, "reference", Some(&end), "records added later").await;
    let (keys, end) = run.drain(ADDED).await;
    let who = run.who();
    let added = distinct(&who, keys);
    assert!(
        added.is_disjoint(&reference),
        "{who}: records read before came again: {:?}",
        added.intersection(&reference).collect::<Vec<_>>()
    );
    run.expect_nothing().await;
    run.close().await;
    let end = end.expect("a drain of at least one record committed an end");
    let mut run = Driven::start(
        fixture,
        "reference",
        Some(&end),
        "restart after added records",
    )
    .await;
    run.expect_nothing().await;
    run.close().await;
    reference.extend(added);
    reference
}

/// A batch polled but not committed, a crash, and its re-read.
async fn exact_replay<F: SourceFixture>(fixture: &mut F, reference: &BTreeSet<String>) {
    let mut run = Driven::start(fixture, "replay", None, "exact replay").await;
    let first = run.next_batch().await;
    let first_keys = run.keys(&first.records);
    let committed = run.commit(&first.end).await;
    let planned = run.next_batch().await;
    let planned_keys = run.keys(&planned.records);
    // A crash: no close, nothing committed after the first batch.
    drop(run);

    let mut run = Driven::start(fixture, "replay", Some(&committed), "exact replay").await;
    let who = run.who();
    let range = OffsetRange {
        start: round_trip(&who, &planned.start),
        end: round_trip(&who, &planned.end),
    };
    let fetched = run.source.fetch_range(&range).await;
    match run.fixture.replay() {
        Replay::Refused => {
            match fetched {
                Err(Error::Source {
                    retry: engine::Retry::Permanent,
                    ..
                }) => {}
                Err(e) => panic!(
                    "{who}: a source that cannot replay must refuse with a permanent source error, got {}",
                    e.report()
                ),
                Ok(b) => panic!(
                    "{who}: a source that says it cannot replay re-read {} records",
                    b.records.len()
                ),
            }
            run.close().await;
        }
        Replay::Exact => {
            let replayed = fetched
                .unwrap_or_else(|e| panic!("{who}: fetch_range {range} failed: {}", e.report()));
            let mut again = run.keys(&replayed.records);
            let mut before = planned_keys.clone();
            again.sort();
            before.sort();
            assert_eq!(
                again, before,
                "{who}: the replayed batch holds other records"
            );
            assert_eq!(
                (&replayed.start, &replayed.end),
                (&planned.start, &planned.end),
                "{who}: the replayed batch has other offsets"
            );
            run.commit(&replayed.end).await;
            let rest = reference.len() - first_keys.len() - planned_keys.len();
            let (keys, _) = run.drain(rest).await;
            let all = distinct(&who, first_keys.into_iter().chain(planned_keys).chain(keys));
            assert_eq!(
                &all, reference,
                "{who}: the records over the crash are not the data's"
            );
            run.expect_nothing().await;
            run.close().await;
        }
    }
}

/// A committed batch, a clean stop, a restart from its end.
async fn resumes_after_commit<F: SourceFixture>(fixture: &mut F, reference: &BTreeSet<String>) {
    let mut run = Driven::start(fixture, "resume", None, "resume after commit").await;
    let first = run.next_batch().await;
    let first_keys = run.keys(&first.records);
    let committed = run.commit(&first.end).await;
    run.close().await;

    let mut run = Driven::start(fixture, "resume", Some(&committed), "resume after commit").await;
    let who = run.who();
    let (keys, _) = run.drain(reference.len() - first_keys.len()).await;
    let all = distinct(&who, first_keys.into_iter().chain(keys));
    assert_eq!(
        &all, reference,
        "{who}: the records over the restart are not the data's"
    );
    run.expect_nothing().await;
    run.close().await;
}
