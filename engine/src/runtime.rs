//! The micro-batch loop: poll the source, record the batch's offsets, decode, run the transform,
//! write rows and dead letters, and only then commit the source and the checkpoint.
//!
//! A row the transform fails on (an overflow, a failed cast: see
//! [`crate::transform::is_row_error`]) does not stop the query: the rows that cause the error are
//! found by bisection (the private `isolate` module) and dead-lettered with their message, the
//! transform runs again over the other rows, and the batch is written and committed as usual, so
//! a restart never meets that row again.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arrow::record_batch::RecordBatch;
use datafusion::physical_plan::ExecutionPlan;
use tokio::sync::watch;

use crate::checkpoint::{Checkpoint, EntryWrite, PlannedBatch, QueryIdentity};
use crate::context::InputSlot;
use crate::decode::{Decoded, RecordDecoder};
use crate::error::{Error, Result, report};
use crate::isolate::{Isolation, isolate};
use crate::position::OffsetRange;
use crate::progress::{
    BatchProgress, Durations, SinkProgress, SourceProgress, StateOperatorProgress,
};
use crate::retry::{Backoff, retry_transient};
use crate::sink::{DeadLetter, DeadLetterSink, Sink};
use crate::source::{Poll, PollLimits, RawRecord, Source, SourceBatch, StartRequest};
use crate::stateful::{self, OutputMode, SharedState, StateStore, States, Watermark};
use crate::transform::PlannedTransform;
use crate::trigger::Trigger;

/// How long an available-now poll may wait for records that are there but not yet delivered.
const AVAILABLE_NOW_WAIT: Duration = Duration::from_millis(500);

/// What ran, in the end.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunSummary {
    /// Batches processed in this run.
    pub batches: u64,
    /// Messages read.
    pub input_rows: u64,
    /// Rows written to the sink.
    pub output_rows: u64,
    /// Messages dead-lettered.
    pub dead_letters: u64,
    /// The same, by what rejected them (see [`BatchProgress::dead_letters_by_reason`]).
    pub dead_letters_by_reason: BTreeMap<String, u64>,
    /// The reason of the run's first dead letter, if any.
    pub first_dead_letter: Option<String>,
}

/// A streaming query: one source, one transform, one sink.
pub struct StreamingQuery {
    /// Where messages come from.
    pub source: Box<dyn Source>,
    /// Decodes messages into the input table's schema.
    pub decoder: RecordDecoder,
    /// The input table's slot in the engine context.
    pub input: InputSlot,
    /// The transform whose rows go to the sink.
    pub transform: PlannedTransform,
    /// Where rows go.
    pub sink: Box<dyn Sink>,
    /// Where messages that do not decode, and those whose row the transform fails on, go.
    pub dead_letters: Box<dyn DeadLetterSink>,
    /// The checkpoint folder; without one every run starts from the source's own position.
    pub checkpoint: Option<Checkpoint>,
    /// When batches run.
    pub trigger: Trigger,
    /// At most this many messages per batch.
    pub max_records_per_batch: usize,
    /// When a stateful transform's groups go to the sink (ignored by a transform that does not
    /// aggregate the stream).
    pub output_mode: OutputMode,
    /// The input table's watermark, for a stateful transform ([`crate::stateful`]).
    pub watermark: Option<Watermark>,
    /// Where a stateful transform keeps each source part's state for every instance of the
    /// query (scale-out over a consumer group); without it the state is this instance's, in the
    /// checkpoint.
    pub shared_state: Option<Box<dyn SharedState>>,
    /// Called after every batch.
    pub on_progress: Box<dyn FnMut(&BatchProgress) + Send>,
}

/// What [`StreamingQuery::run_one_batch`] did with its one batch.
#[derive(Debug)]
pub struct OneBatch {
    /// Messages the source handed out.
    pub messages: usize,
    /// Rows they decoded into (the transform's input).
    pub decoded_rows: usize,
    /// Messages that did not decode, and those whose row the transform failed on.
    pub dead_letters: Vec<DeadLetter>,
    /// The transform's output rows.
    pub output: Vec<RecordBatch>,
    /// The transform's plan as last executed, with its metrics (see
    /// [`PlannedTransform::explain_executed`]).
    pub plan: Arc<dyn ExecutionPlan>,
}

/// What the retries of the sink's healthcheck and the source's start are called in logs and in
/// [`Error::Stopped`].
const SINK_CHECK: &str = "sink healthcheck";
const SOURCE_START: &str = "source start";

/// What [`StreamingQuery::run`]'s batch loop carries from one batch to the next.
struct LoopState {
    /// When the previous batch started (for the input rate).
    last_start: Instant,
    /// The run's totals so far.
    summary: RunSummary,
    /// A stateful transform's state; `None` for a transform that does not aggregate the stream.
    state: Option<States>,
    /// Turns true when the run is to stop.
    shutdown: watch::Receiver<bool>,
    /// Commit markers being written in the checkpoint, oldest first.
    markers: VecDeque<EntryWrite>,
}

/// The stages of a batch before [`StreamingQuery::process`] takes it over.
struct Stages {
    /// The source's poll, or a replayed batch's re-read.
    get_batch: Duration,
    /// Its offsets being written to the checkpoint, which `process` waits for before the batch
    /// is written anywhere (none for a replayed batch: its offsets are there already).
    wal: Option<EntryWrite>,
}

enum Step {
    Batch(SourceBatch, Duration),
    Idle,
    /// The source has nothing more (an available-now run's end, or a finite source).
    Exhausted,
    /// `shutdown` turned true.
    Stopped,
}

impl StreamingQuery {
    /// Runs until the source is exhausted (or, with an interval trigger, until `shutdown` turns
    /// true), then closes the sink and the source. The sink's healthcheck and the source's start
    /// run side by side before the first poll. A batch in flight when `shutdown` turns true is
    /// finished first. A `shutdown` while the sink has not yet passed its healthcheck (an
    /// unreachable sink is waited for) or the source has not started ends the run at once with an
    /// empty summary: nothing was read, so nothing is left uncommitted.
    ///
    /// # Errors
    /// A permanent failure of the source, the sink, the dead-letter output, the transform or the
    /// checkpoint; [`Error::Stopped`] for a `shutdown` while a batch's write or commit was failing
    /// transiently (the batch is replayed on restart); and [`Error::NothingUsable`] when the run
    /// ended without a `shutdown` having received records and dead-lettered every one (after
    /// committing them, so a restart does not meet them again). A run that received nothing, or
    /// wrote at least one row, or was stopped by `shutdown`, is `Ok`.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) -> Result<RunSummary> {
        let (query_id, recovered) = match &self.checkpoint {
            Some(cp) => {
                let id = cp.bind_recognising(
                    &QueryIdentity {
                        source: self.source.identity(),
                        transform: self.transform.name().to_owned(),
                    },
                    &self.source.former_identities(),
                )?;
                (id, cp.recover()?)
            }
            None => (crate::checkpoint::query_id(), Default::default()),
        };
        let state = self.open_state(&recovered)?;
        let available_now = self.trigger == Trigger::AvailableNow;
        if let Some(layout) = self.decoder.row_layout() {
            self.source.build_rows(layout);
        }
        let request = StartRequest {
            committed: recovered.committed.clone(),
            available_now,
        };
        // The sink's healthcheck and the source's start run side by side: each is a few network
        // round trips (connecting and checking a table, joining a consumer group) that do not
        // depend on each other, and one after the other they were most of the time to the first
        // batch. Nothing is polled before both are done. A sink that is down at start (a
        // transient failure) is waited for, as one that goes down mid-run is. A healthcheck has
        // no side effects, so one in progress is dropped at a stop: a check that takes its full
        // timeout against an unreachable service must not delay it.
        let mut backoff = Backoff::default();
        let mut check_shutdown = shutdown.clone();
        let mut start_backoff = Backoff::default();
        let mut start_shutdown = shutdown.clone();
        let (sink, source) = (&mut self.sink, &mut self.source);
        // Which of the two a stop interrupted, for the log.
        let sink_passed = std::cell::Cell::new(false);
        let ready = tokio::select! {
            biased;
            _ = stop_requested(&mut shutdown) => None,
            // The first permanent failure of either ends the run at once.
            ready = async {
                tokio::try_join!(
                    async {
                        retry_transient(&mut backoff, &mut check_shutdown, SINK_CHECK,
                            async || sink.healthcheck().await).await?;
                        sink_passed.set(true);
                        Ok(())
                    },
                    retry_transient(&mut start_backoff, &mut start_shutdown, SOURCE_START,
                        async || source.start(request.clone()).await),
                )
            } => Some(ready),
        };
        // A stop while either was still waiting: whether it was the sink's healthcheck.
        let stopped_waiting_for_sink = match ready {
            Some(Ok(((), ()))) => None,
            Some(Err(Error::Stopped { what, .. })) => Some(what == SINK_CHECK),
            None => Some(!sink_passed.get()),
            Some(Err(e)) => return Err(e),
        };
        match stopped_waiting_for_sink {
            None => {}
            Some(true) => {
                tracing::info!(sink = %self.sink.description(),
                    "Stopped while waiting for the sink to pass its healthcheck; nothing was read, written or committed.");
                return Ok(RunSummary::default());
            }
            Some(false) => {
                tracing::info!(source = %self.source.description(),
                    "Stopped while waiting for the source to start; nothing was read, written or committed.");
                return Ok(RunSummary::default());
            }
        }
        self.sink
            .bind_query(&query_id, recovered.next_batch_id)
            .await?;
        let mut run = LoopState {
            last_start: Instant::now(),
            summary: RunSummary::default(),
            state,
            shutdown,
            markers: VecDeque::new(),
        };
        let mut batch_id = recovered.next_batch_id;
        // Where the last batch ended: a no-data batch starts and ends there.
        let mut last_end = recovered.committed.clone();
        if let Some(pending) = recovered.pending {
            tracing::info!(batch_id = pending.batch_id, start = %pending.start, end = %pending.end,
                "Replaying a batch that was not committed before the last stop.");
            let started = Instant::now();
            let range = OffsetRange {
                start: pending.start,
                end: pending.end,
            };
            // A batch without records (a stateful query's no-data batch) has nothing to fetch.
            let batch = if range.start == range.end {
                SourceBatch {
                    records: Vec::new(),
                    start: range.start.clone(),
                    end: range.end.clone(),
                    rows: None,
                }
            } else {
                self.source.fetch_range(&range).await?
            };
            last_end = Some(range.end);
            let stages = Stages {
                get_batch: started.elapsed(),
                wal: None,
            };
            self.process(pending.batch_id, batch, stages, started, &mut run)
                .await?;
        }
        let interval = match self.trigger {
            Trigger::ProcessingTime(i) => i,
            Trigger::AvailableNow => Duration::ZERO,
        };
        let mut next_tick = Instant::now();
        // The poll's retries stop with the run: the select below drops them when `shutdown`
        // turns true, through its own receiver.
        let mut poll_shutdown = run.shutdown.clone();
        let mut stopped = false;
        loop {
            if *run.shutdown.borrow() {
                stopped = true;
                break;
            }
            // A processing-time trigger starts batches on interval boundaries; one that ran late
            // is followed at once by the next.
            let pause = next_tick.saturating_duration_since(Instant::now());
            if !pause.is_zero() {
                tokio::select! {
                    _ = run.shutdown.changed() => {
                        stopped = true;
                        break;
                    }
                    _ = tokio::time::sleep(pause) => {}
                }
            }
            let started = Instant::now();
            next_tick = (next_tick + interval).max(started);
            // At the tick the batch takes what the source has; half the interval is enough for a
            // source to hand over what it has buffered.
            let max_wait = if available_now {
                AVAILABLE_NOW_WAIT
            } else {
                interval / 2
            };
            let limits = PollLimits {
                max_records: self.max_records_per_batch.max(1),
                max_wait,
            };
            let step = tokio::select! {
                biased;
                _ = run.shutdown.changed() => Step::Stopped,
                polled = retry_transient(&mut backoff, &mut poll_shutdown, "source poll",
                    async || self.source.poll(limits).await) => match polled? {
                    Poll::Batch(b) => Step::Batch(b, started.elapsed()),
                    Poll::Idle => Step::Idle,
                    Poll::Exhausted => Step::Exhausted,
                },
            };
            // With nothing new to read, a stateful query whose watermark moved past the end of a
            // window still runs a batch without records to write it (Spark's no-data batch).
            // An exhausted source is not polled again: the run ends after that batch.
            let ends_after = matches!(step, Step::Exhausted);
            let step = match step {
                Step::Idle | Step::Exhausted if self.needs_no_data_batch(&run.state) => {
                    let Some(end) = last_end.clone() else {
                        return Err(Error::Internal(
                            "windows to close before any batch ended".into(),
                        ));
                    };
                    Step::Batch(
                        SourceBatch {
                            records: Vec::new(),
                            start: end.clone(),
                            end,
                            rows: None,
                        },
                        started.elapsed(),
                    )
                }
                other => other,
            };
            match step {
                Step::Exhausted => break,
                Step::Stopped => {
                    stopped = true;
                    break;
                }
                Step::Idle => {}
                Step::Batch(batch, waited) => {
                    last_end = Some(batch.end.clone());
                    // Written and synced while the batch is decoded and queried (a disk flush
                    // takes milliseconds, and longer while other writers share the disk).
                    let wal = match &self.checkpoint {
                        Some(cp) => Some(cp.plan_in_background(&PlannedBatch {
                            batch_id,
                            start: batch.start.clone(),
                            end: batch.end.clone(),
                        })?),
                        None => None,
                    };
                    let stages = Stages {
                        get_batch: waited,
                        wal,
                    };
                    self.process(batch_id, batch, stages, started, &mut run)
                        .await?;
                    batch_id += 1;
                    if ends_after {
                        break;
                    }
                }
            }
        }
        // A clean stop leaves the last batch marked committed, so the next start does not
        // replay it.
        for marker in run.markers.drain(..) {
            marker.wait().await?;
        }
        self.sink.close().await?;
        self.dead_letters.close().await?;
        self.source.close().await?;
        let summary = run.summary;
        // Checked once here, for every source: a run that ended by itself with nothing but dead
        // letters has input that does not fit the declared table (or a source that is not what
        // the config says), which an exit 0 would hide. A stop ends a run that might still
        // have met good records, so it is not judged.
        if !stopped
            && summary.input_rows > 0
            && summary.output_rows == 0
            && summary.dead_letters >= summary.input_rows
        {
            return Err(Error::NothingUsable {
                received: summary.input_rows,
                first_reason: summary.first_dead_letter.unwrap_or_default(),
                dead_letters: self.dead_letters.description(),
            });
        }
        Ok(summary)
    }

    /// Runs one batch as a run's first would, through the same decode and transform code (rows
    /// the transform fails on become dead letters), but writes and commits nothing: the source
    /// starts from its own position with `available_now` (the checkpoint is not read), is polled
    /// once (waiting at most `max_wait`), and is closed; the sink and the dead-letter output are
    /// not called. For `explain --analyze`: [`OneBatch::plan`] carries the per-operator metrics
    /// of the transform's last execution.
    ///
    /// # Errors
    /// The source failing to start, poll or close (not retried: nothing here is worth waiting
    /// for), the batch failing to decode as a whole, or the transform failing in a way no single
    /// row explains.
    pub async fn run_one_batch(&mut self, max_wait: Duration) -> Result<OneBatch> {
        if let Some(layout) = self.decoder.row_layout() {
            self.source.build_rows(layout);
        }
        self.source
            .start(StartRequest {
                available_now: true,
                ..Default::default()
            })
            .await?;
        let limits = PollLimits {
            max_records: self.max_records_per_batch.max(1),
            max_wait,
        };
        let (records, rows) = match self.source.poll(limits).await? {
            Poll::Batch(batch) => (batch.records, batch.rows),
            Poll::Idle | Poll::Exhausted => (Vec::new(), None),
        };
        let decoded = self.decoder.decode_with(&records, rows.as_ref())?;
        let (output, transform_letters, plan) = self.run_transform(&decoded, &records).await?;
        self.source.close().await?;
        let decoded_rows = decoded.batch.num_rows();
        let mut dead_letters = decoded.dead_letters;
        dead_letters.extend(transform_letters);
        Ok(OneBatch {
            messages: records.len(),
            decoded_rows,
            dead_letters,
            output,
            plan,
        })
    }

    /// Processes one batch of the run: `before` says how long the batch took before it was
    /// handed here, since it `started`.
    async fn process(
        &mut self,
        batch_id: u64,
        batch: SourceBatch,
        before: Stages,
        started: Instant,
        run: &mut LoopState,
    ) -> Result<()> {
        let LoopState {
            last_start,
            summary,
            state,
            shutdown,
            markers,
        } = run;
        let timestamp = chrono::DateTime::<chrono::Utc>::from(SystemTime::now())
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let since_last = last_start.elapsed();
        *last_start = started;
        let t = Instant::now();
        let decoded = self
            .decoder
            .decode_with(&batch.records, batch.rows.as_ref())?;
        let decode = t.elapsed();

        let t = Instant::now();
        if let Some(states) = state.as_mut() {
            self.take_over_parts(states, &batch.records, shutdown)
                .await?;
        }
        // As Spark's: the batch closes windows with the watermark of the batches before it, and
        // judges rows late against the one the previous batch closed windows with, so a row
        // has one batch to arrive after the largest time seen moved past its window.
        let (watermark_late, watermark) = match (state.as_ref(), &self.watermark) {
            (Some(states), Some(w)) => (states.late_watermark(), states.watermark(w.delay)),
            _ => (None, None),
        };
        let (decoded, late, late_letters) =
            self.drop_late(decoded, &batch.records, state.is_some(), watermark_late)?;
        let (rows, transform_letters, state_progress) = match state.as_mut() {
            Some(states) => {
                let (rows, letters, progress) = self
                    .aggregate(states, &decoded, &batch.records, &late, watermark)
                    .await?;
                (rows, letters, Some(progress))
            }
            None => {
                let (rows, letters, _plan) = self.run_transform(&decoded, &batch.records).await?;
                (rows, letters, None)
            }
        };
        let query = t.elapsed();
        // The batch's messages and input rows are not needed once its rows and dead letters
        // exist (a shared state's save needs only the offset after each part's records): freed
        // before the sink write rather than held through it. (Fields left out of a pattern
        // would live to the end of the function.)
        let Decoded {
            dead_letters: decode_letters,
            rounded_decimals,
            batch: input_rows,
            rows: input_positions,
        } = decoded;
        drop((input_rows, input_positions));
        let n = batch.records.len() as u64;
        let SourceBatch {
            records,
            start,
            end,
            rows: built_rows,
        } = batch;
        drop(built_rows);
        // Only a shared state's save reads them: a walk of every record otherwise wasted.
        let offsets_after = match (&state, &self.shared_state) {
            (Some(_), Some(_)) => offsets_after(&records),
            _ => BTreeMap::new(),
        };
        drop(records);
        let mut by_reason = BTreeMap::new();
        if !decode_letters.is_empty() {
            by_reason.insert("decode".to_owned(), decode_letters.len() as u64);
        }
        if !late_letters.is_empty() {
            by_reason.insert("late".to_owned(), late_letters.len() as u64);
        }
        if !transform_letters.is_empty() {
            by_reason.insert(
                format!("transform {}", self.transform.name()),
                transform_letters.len() as u64,
            );
        }
        let mut dead_letters = decode_letters;
        dead_letters.extend(late_letters);
        dead_letters.extend(transform_letters);
        // Positions in the source's own words, once per letter (never per record).
        for letter in &mut dead_letters {
            letter.position = self.source.describe_position(letter.record_position);
        }

        // The batch's offsets are durable before anything of it leaves the process: a restart
        // must replay exactly this batch if a sink saw any of it.
        let t = Instant::now();
        if let Some(wal) = before.wal {
            wal.wait().await?;
        }
        let wal_commit = t.elapsed();

        let t = Instant::now();
        let output_rows: usize = rows.iter().map(RecordBatch::num_rows).sum();
        let mut backoff = Backoff::default();
        retry_transient(&mut backoff, shutdown, "sink write", async || {
            self.sink.write(batch_id, &rows).await
        })
        .await?;
        // `retry_transient` starts each operation's count at 0: what it leaves is its retries.
        let sink_retries = u64::from(backoff.attempts());
        let mut dead_letter_retries = 0;
        if !dead_letters.is_empty() {
            tracing::warn!(batch_id, count = dead_letters.len(),
                first_reason = %dead_letters[0].reason, "Messages went to the dead-letter output.");
            retry_transient(&mut backoff, shutdown, "dead-letter write", async || {
                self.dead_letters.write(batch_id, &dead_letters).await
            })
            .await?;
            dead_letter_retries = u64::from(backoff.attempts());
        }
        let sink = t.elapsed();

        let t = Instant::now();
        // The state after this batch is saved before the batch is committed: a crash in between
        // replays the batch from the state before it (the newest version at or before the last
        // commit), which is the state it was planned against.
        if let Some(states) = state.as_mut() {
            self.save_states(states, batch_id, &offsets_after, shutdown)
                .await?;
        }
        retry_transient(&mut backoff, shutdown, "source commit", async || {
            self.source.commit(&end).await
        })
        .await?;
        if let Some(cp) = &self.checkpoint {
            // Earlier markers that are written are taken (their failure is this batch's); one
            // the file system still holds is not waited for here.
            while markers.front().is_some_and(EntryWrite::is_finished) {
                if let Some(written) = markers.pop_front() {
                    written.wait().await?;
                }
            }
            markers.push_back(cp.commit_in_background(batch_id));
        }
        let commit = t.elapsed();

        let processing = wal_commit + decode + query + sink + commit;
        summary.batches += 1;
        summary.input_rows += n;
        summary.output_rows += output_rows as u64;
        summary.dead_letters += dead_letters.len() as u64;
        if summary.first_dead_letter.is_none() {
            summary.first_dead_letter = dead_letters.first().map(|l| l.reason.clone());
        }
        for (reason, n) in &by_reason {
            *summary
                .dead_letters_by_reason
                .entry(reason.clone())
                .or_default() += n;
        }
        let (source_metrics, offsets_behind_latest) =
            SourceProgress::source_metrics(self.source.metrics(), self.source.backlog());
        let progress = BatchProgress {
            batch_id,
            timestamp,
            num_input_rows: n,
            input_rows_per_second: per_second(n, since_last),
            processed_rows_per_second: per_second(n, processing),
            num_dead_letters: dead_letters.len() as u64,
            dead_letters_by_reason: by_reason,
            num_rounded_decimals: rounded_decimals as u64,
            duration_ms: Durations {
                get_batch: millis(before.get_batch),
                wal_commit: millis(wal_commit),
                decode: millis(decode),
                query: millis(query),
                sink: millis(sink),
                commit: millis(commit),
                total: millis(before.get_batch + processing),
            },
            sources: vec![SourceProgress {
                description: self.source.description(),
                start_offset: start,
                end_offset: end,
                num_input_rows: n,
                metrics: source_metrics,
                offsets_behind_latest,
            }],
            sink: SinkProgress {
                description: self.sink.description(),
                num_output_rows: output_rows as u64,
                num_retries: sink_retries,
            },
            dead_letter_sink: SinkProgress {
                description: self.dead_letters.description(),
                num_output_rows: dead_letters.len() as u64,
                num_retries: dead_letter_retries,
            },
            state_operators: state_progress.into_iter().collect(),
            event_time: match state.as_ref() {
                Some(states) if self.watermark.is_some() => {
                    // Before any event time, the epoch (as Spark reports it).
                    let mut times = BTreeMap::from([(
                        "watermark".to_owned(),
                        stateful::format_nanos(watermark.unwrap_or(0)),
                    )]);
                    if let Some(max) = late.max_event_time {
                        times.insert("max".to_owned(), stateful::format_nanos(max));
                    }
                    if let Some(max) = states
                        .stores
                        .values()
                        .filter_map(|s| s.max_event_time)
                        .max()
                    {
                        times.insert("maxSeen".to_owned(), stateful::format_nanos(max));
                    }
                    times
                }
                _ => BTreeMap::new(),
            },
        };
        (self.on_progress)(&progress);
        Ok(())
    }

    /// Whether the state holds windows the next batch's watermark closes while the last batch's
    /// did not (see [`States::would_close`]).
    fn needs_no_data_batch(&self, state: &Option<States>) -> bool {
        match (state, &self.watermark) {
            (Some(states), Some(w)) => states.would_close(w.delay),
            _ => false,
        }
    }

    /// The state of a stateful transform, restored from the checkpoint (`None` for a transform
    /// that does not aggregate the stream).
    fn open_state(&self, recovered: &crate::checkpoint::Recovered) -> Result<Option<States>> {
        let Some(agg) = self.transform.stateful() else {
            if let Some(w) = &self.watermark {
                tracing::warn!(watermark = %w, transform = self.transform.name(),
                    "The transform does not aggregate the stream, so the watermark has no effect (as in Spark).");
            }
            return Ok(None);
        };
        agg.check(self.output_mode, self.watermark.as_ref())
            .map_err(|message| {
                Error::config(
                    format!(
                        "transform {} ({})",
                        self.transform.name(),
                        self.transform.file().display()
                    ),
                    message,
                )
            })?;
        if let Some(shared) = &self.shared_state {
            // Each part's state is taken from the shared store when its first record arrives
            // (`take_over_parts`), whichever instance held it before.
            tracing::info!(store = %shared.description(), query = %self.shared_state_key(),
                "The aggregation's state is kept per source part in a shared store.");
            return Ok(Some(States::default()));
        }
        if self.source.assigned_partitions().is_some() {
            tracing::warn!(source = %self.source.description(),
                "The source's parts may move to other instances of the query, but the aggregation's state stays in this instance's checkpoint: run one instance, or configure a shared [state] store.");
        }
        // The newest version at or before the last committed batch: a batch to replay saved its
        // state before it was committed (its commit marker is written after, in the background),
        // and replaying it over that state would count its rows twice.
        let last_committed = match &recovered.pending {
            Some(pending) => pending.batch_id.checked_sub(1),
            None => recovered.next_batch_id.checked_sub(1),
        };
        let store = match &self.checkpoint {
            Some(cp) => agg.load(&cp.state_dir(), last_committed)?,
            None => StateStore::default(),
        };
        Ok(Some(States {
            stores: BTreeMap::from([(None, store)]),
        }))
    }

    /// The key of this query's states in the shared store: the same for every instance (the
    /// source's identity, which names a Kafka source's topics and group, and the transform).
    fn shared_state_key(&self) -> String {
        format!("{} {}", self.source.identity(), self.transform.name())
    }

    /// With a shared state store: drops the state of parts this instance no longer reads (their
    /// new owner takes it from the store), and takes the state of each part of `records` it does
    /// not hold yet from the store.
    async fn take_over_parts(
        &self,
        states: &mut States,
        records: &[RawRecord],
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<()> {
        let (Some(shared), Some(agg)) = (&self.shared_state, self.transform.stateful()) else {
            return Ok(());
        };
        if let Some(assigned) = self.source.assigned_partitions() {
            let before = states.stores.len();
            states
                .stores
                .retain(|part, _| part.is_some_and(|p| assigned.contains(&p)));
            if states.stores.len() < before {
                tracing::info!(
                    parts = before - states.stores.len(),
                    "Dropped the aggregation state of source parts this instance no longer reads."
                );
            }
        }
        let parts: std::collections::BTreeSet<u32> =
            records.iter().map(|r| r.position.partition).collect();
        let key = self.shared_state_key();
        let mut backoff = Backoff::default();
        for part in parts {
            if states.stores.contains_key(&Some(part)) {
                continue;
            }
            let name = self.part_name(part);
            let saved = retry_transient(&mut backoff, shutdown, "state load", async || {
                shared.load(&key, &name).await
            })
            .await?;
            let store = match saved {
                Some(bytes) => {
                    let store = agg.decode(
                        &bytes,
                        &format!("the state of part {name} in {}", shared.description()),
                    )?;
                    tracing::info!(part = %name, groups = store.len(), offset_after = store.offset_after,
                        "Took over the aggregation state of a source part.");
                    store
                }
                None => StateStore::default(),
            };
            states.stores.insert(Some(part), store);
        }
        Ok(())
    }

    fn part_name(&self, part: u32) -> String {
        self.source
            .partition_name(part)
            .unwrap_or_else(|| part.to_string())
    }

    /// Saves the state after batch `batch_id`, before the batch is committed: a crash in between
    /// replays the batch from the state before it. In the checkpoint (the newest version at or
    /// before the last commit is what a restart loads), or, shared, each part held, with the
    /// offset after the records it holds (`after`, by part, from [`offsets_after`]), so that its
    /// next owner skips those.
    async fn save_states(
        &self,
        states: &mut States,
        batch_id: u64,
        after: &BTreeMap<u32, i64>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<()> {
        let Some(agg) = self.transform.stateful() else {
            return Ok(());
        };
        let Some(shared) = &self.shared_state else {
            if let (Some(cp), Some(store)) = (&self.checkpoint, states.stores.get(&None)) {
                agg.save(
                    store,
                    &cp.state_dir(),
                    batch_id,
                    crate::checkpoint::RETAINED_BATCHES,
                )?;
            }
            return Ok(());
        };
        let watermark = self
            .watermark
            .as_ref()
            .and_then(|w| states.watermark(w.delay));
        let key = self.shared_state_key();
        let mut backoff = Backoff::default();
        for (part, store) in &mut states.stores {
            let Some(part) = *part else { continue };
            // Every part held, not only those this batch read: the watermark may have closed
            // (and written) windows of a part without a record of its own, and the part's next
            // owner must not find them open.
            if let Some(&next) = after.get(&part) {
                store.offset_after = Some(store.offset_after.map_or(next, |o| o.max(next)));
            }
            store.watermark_floor = store.watermark_floor.max(watermark);
            let bytes = agg.encode(store)?;
            let name = self.part_name(part);
            retry_transient(&mut backoff, shutdown, "state save", async || {
                shared.save(&key, &name, bytes.clone()).await
            })
            .await?;
        }
        Ok(())
    }

    /// Takes the rows older than the watermark (and those without an event time) out of a
    /// decoded batch, before the transform. Returns the rows kept, what was taken, and the dead
    /// letters for it (timeless rows always; late rows when the watermark says so).
    fn drop_late(
        &self,
        decoded: Decoded,
        records: &[RawRecord],
        stateful: bool,
        watermark: Option<i64>,
    ) -> Result<(Decoded, stateful::LateRows, Vec<DeadLetter>)> {
        let Some(w) = self.watermark.as_ref().filter(|_| stateful) else {
            return Ok((decoded, stateful::LateRows::default(), Vec::new()));
        };
        let (batch, late) = stateful::drop_late(&decoded.batch, &w.column, watermark)?;
        if late.late.is_empty() && late.no_event_time.is_empty() {
            return Ok((Decoded { batch, ..decoded }, late, Vec::new()));
        }
        let mut letters = Vec::new();
        let record = |row: usize| &records[decoded.rows[row]];
        for &row in &late.no_event_time {
            letters.push(DeadLetter::from_record(
                record(row),
                format!("no event time: the watermark's column {} is null", w.column),
            ));
        }
        if w.dead_letter_late {
            for &row in &late.late {
                letters.push(DeadLetter::from_record(
                    record(row),
                    format!(
                        "late: its {} is before the watermark {} that the previous batch closed windows with (the largest event time seen then minus {:?})",
                        w.column,
                        stateful::format_nanos(watermark.unwrap_or_default()),
                        w.delay
                    ),
                ));
            }
        }
        let rows = stateful::kept_rows(decoded.batch.num_rows(), &late)
            .into_iter()
            .map(|i| decoded.rows[i])
            .collect();
        Ok((
            Decoded {
                batch,
                rows,
                ..decoded
            },
            late,
            letters,
        ))
    }

    /// Runs the transform's part below the aggregation over the batch (per source part when the
    /// state is shared, skipping the records a part's state already holds), merges the partial
    /// aggregates into the state, moves the watermark, and returns the rows the groups to write
    /// make through the plan above the aggregation, with the dead letters of rows the transform
    /// failed on.
    async fn aggregate(
        &self,
        states: &mut States,
        decoded: &Decoded,
        records: &[RawRecord],
        late: &stateful::LateRows,
        watermark: Option<i64>,
    ) -> Result<(Vec<RecordBatch>, Vec<DeadLetter>, StateOperatorProgress)> {
        let agg = self
            .transform
            .stateful()
            .ok_or_else(|| Error::Internal("a state without a stateful transform".into()))?;
        let mut by_part: Vec<(Option<u32>, Decoded)> = Vec::new();
        let mut already = 0u64;
        if self.shared_state.is_some() {
            let mut rows_of: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
            for (row, &record) in decoded.rows.iter().enumerate() {
                let position = records[record].position;
                let held = states
                    .stores
                    .get(&Some(position.partition))
                    .and_then(|s| s.offset_after)
                    .is_some_and(|after| position.offset < after);
                if held {
                    already += 1;
                } else {
                    rows_of.entry(position.partition).or_default().push(row);
                }
            }
            for (part, rows) in rows_of {
                let indices =
                    arrow::array::UInt32Array::from_iter_values(rows.iter().map(|&r| r as u32));
                let batch = arrow::compute::take_record_batch(&decoded.batch, &indices)?;
                by_part.push((
                    Some(part),
                    Decoded {
                        batch,
                        dead_letters: Vec::new(),
                        rows: rows.iter().map(|&r| decoded.rows[r]).collect(),
                        rounded_decimals: 0,
                    },
                ));
            }
            if already > 0 {
                tracing::info!(
                    rows = already,
                    "Skipped rows that the taken-over state of their source part already holds."
                );
            }
        }
        // Without a shared store the whole batch is one slice: no copy of it.
        let slices: Vec<(Option<u32>, &Decoded)> = if self.shared_state.is_some() {
            by_part.iter().map(|(part, slice)| (*part, slice)).collect()
        } else {
            vec![(None, decoded)]
        };
        let mut letters = Vec::new();
        let mut touched = BTreeMap::new();
        for (part, slice) in slices {
            let (partial, failed, _plan) = self.run_transform(slice, records).await?;
            letters.extend(failed);
            let store = states.stores.entry(part).or_default();
            touched.insert(part, agg.merge(store, &partial)?);
            if let Some(w) = &self.watermark
                && let Some(max) = stateful::max_event_time(&slice.batch, &w.column)?
            {
                store.max_event_time = Some(store.max_event_time.map_or(max, |m| m.max(max)));
            }
        }
        let mut emitted = Vec::new();
        let mut progress = StateOperatorProgress {
            operator_name: "stateStoreSave".into(),
            num_rows_dropped_by_watermark: late.late.len() as u64,
            num_rows_already_in_state: already,
            ..Default::default()
        };
        let none = std::collections::BTreeSet::new();
        for (part, store) in &mut states.stores {
            let changed = touched.get(part).unwrap_or(&none);
            let (rows, removed) = agg.emit(store, changed, self.output_mode, watermark)?;
            if rows.num_rows() > 0 {
                emitted.push(rows);
            }
            progress.num_rows_total += store.len() as u64;
            progress.num_rows_updated += changed.len() as u64;
            progress.num_rows_removed += removed;
            progress.memory_used_bytes += store.memory_used_bytes();
        }
        let emitted = match emitted.len() {
            0 => RecordBatch::new_empty(self.transform.stateful_output_schema()),
            1 => emitted.remove(0),
            _ => arrow::compute::concat_batches(&emitted[0].schema(), &emitted)?,
        };
        states.closed_with(watermark);
        let rows = self.transform.run_above_state(emitted).await?;
        Ok((rows, letters, progress))
    }

    /// Runs the transform over a decoded batch. When it fails on the rows' values, the rows that
    /// fail alone are found by bisection and become dead letters carrying their message, and the
    /// transform runs once more over every other row: their output is then exactly what it would
    /// have been had the failing rows never arrived (right for joins and aggregates alike). An
    /// error no single row explains stops the query, with the batch left uncommitted.
    async fn run_transform(
        &self,
        decoded: &Decoded,
        records: &[RawRecord],
    ) -> Result<(Vec<RecordBatch>, Vec<DeadLetter>, Arc<dyn ExecutionPlan>)> {
        let batch = &decoded.batch;
        let first = match self.execute(vec![batch.clone()]).await {
            Ok((rows, plan)) => return Ok((rows, Vec::new(), plan)),
            Err(e @ Error::SqlRows { .. }) => e,
            Err(e) => return Err(e),
        };
        let started = Instant::now();
        let mut runs = 0u64;
        let outcome = isolate(
            batch.num_rows(),
            first,
            async |range: Range<usize>| {
                runs += 1;
                self.execute(vec![batch.slice(range.start, range.len())])
                    .await
                    .map(drop)
            },
            |e| matches!(e, Error::SqlRows { .. }),
        )
        .await;
        let failing = match outcome {
            Isolation::Rows(failing) => failing,
            Isolation::Fatal(e) => return Err(e),
            Isolation::Unexplained { range, error } => {
                let describe = |row: usize| {
                    self.source
                        .describe_position(records[decoded.rows[row]].position)
                };
                return Err(self.unexplained(
                    &format!(
                        "the {} rows from {} to {} fail together, though each half of them runs alone",
                        range.len(),
                        describe(range.start),
                        describe(range.end - 1),
                    ),
                    error,
                ));
            }
        };
        let mut good = Vec::new();
        let mut next = 0;
        for &(row, _) in &failing {
            if row > next {
                good.push(batch.slice(next, row - next));
            }
            next = row + 1;
        }
        if next < batch.num_rows() {
            good.push(batch.slice(next, batch.num_rows() - next));
        }
        let (rows, plan) = match self.execute(good).await {
            Ok(executed) => executed,
            Err(e @ Error::SqlRows { .. }) => {
                return Err(self.unexplained(
                    &format!(
                        "without the {} rows that fail alone, the other rows still fail together",
                        failing.len()
                    ),
                    e,
                ));
            }
            Err(e) => return Err(e),
        };
        tracing::warn!(transform = self.transform.name(), rows = failing.len(), runs = runs + 2,
            elapsed_ms = millis(started.elapsed()), first_reason = %failing[0].1,
            "The transform failed on rows; they go to the dead-letter output and the rest of the batch flows.");
        let letters = failing
            .into_iter()
            .map(|(row, error)| {
                DeadLetter::from_record(&records[decoded.rows[row]], report(&error).to_string())
            })
            .collect();
        Ok((rows, letters, plan))
    }

    /// Runs the transform over `batches` as the input table's rows.
    async fn execute(
        &self,
        batches: Vec<RecordBatch>,
    ) -> Result<(Vec<RecordBatch>, Arc<dyn ExecutionPlan>)> {
        self.input.set(batches);
        let executed = self.transform.execute().await;
        self.input.set(Vec::new());
        executed
    }

    /// The fatal error for a transform error that no single row explains.
    fn unexplained(&self, rows: &str, error: Error) -> Error {
        let source = match error {
            Error::SqlRows { source, .. } => source,
            other => datafusion::error::DataFusionError::External(Box::new(other)),
        };
        Error::Sql {
            name: self.transform.name().to_owned(),
            file: self.transform.file().to_owned(),
            message: format!(
                "no single row explains the error, so no row can be dead-lettered for it and the query stops with the batch uncommitted: {rows}"
            ),
            source,
        }
    }
}

/// Returns once `shutdown` is true; never, when its sender is gone (no stop can come then).
async fn stop_requested(shutdown: &mut watch::Receiver<bool>) {
    if shutdown.wait_for(|stop| *stop).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// The offset after the last of `records` in each part (source partition) they come from.
fn offsets_after(records: &[RawRecord]) -> BTreeMap<u32, i64> {
    let mut after = BTreeMap::new();
    for r in records {
        let next = r.position.offset.saturating_add(1);
        let entry = after.entry(r.position.partition).or_insert(next);
        *entry = (*entry).max(next);
    }
    after
}

fn millis(d: Duration) -> u64 {
    d.as_millis() as u64
}

fn per_second(n: u64, d: Duration) -> f64 {
    let secs = d.as_secs_f64();
    if secs > 0.0 { n as f64 / secs } else { 0.0 }
}
