//! `[source] type = "kafka"`: a consumer-group member handing the engine batches of messages.
//!
//! What real topics do, and how the source meets it:
//! - **Codecs.** librdkafka is linked with gzip, snappy, lz4 and zstd. A consumer error that
//!   retrying cannot fix (an unsupported codec, a corrupt batch, a refused authorization) stops the
//!   query with the error and the partitions that have not reached their end, never a warning
//!   loop. (The Rust binding drops the partition a consumer error names, so the message lists
//!   each assigned partition still short of its end with its position.)
//! - **Transactions and offset gaps.** Records are read `read_committed` by default (aborted
//!   records never arrive). Commit markers and compaction leave offsets with no record, so the end
//!   is judged by positions: a batch's end offset for a partition is the consumer's position when
//!   the batch holds its last fetched record (past any marker), and a position moved only by
//!   markers is committed on its own, so the group's lag reaches 0 and `available-now` ends.
//! - **Partitions with no committed offset**: see `context.rs` (first start only takes
//!   `starting_offsets`; later ones start at their earliest offset). New partitions are found
//!   within `topic.metadata.refresh.interval.ms` (5 s by default here).
//! - **Retention during a run.** Every fetch is checked: where the offsets skipped between two
//!   records (or up to the position) are below the partition's earliest kept offset, retention
//!   deleted records before they were read. With `fail_on_data_loss` the query stops naming the
//!   partition and the lost range; without it the loss is logged at ERROR and counted
//!   (`lost_offsets` in the progress record).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use engine::{
    Error, Offsets, Poll, PollLimits, RawRecord, Result, Retry, Source, SourceBatch, StartRequest,
};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::config::{KafkaSourceConfig, StartingOffsets};
use super::context::{RebalanceEvent, SourceContext, StartPolicy};

/// How long metadata and offset requests may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a replay of an uncommitted batch may wait for its partitions and messages.
const REPLAY_TIMEOUT: Duration = Duration::from_secs(120);

/// librdkafka's prefetch, unless the config's `properties` say otherwise. By default librdkafka
/// keeps up to 100,000 messages per partition queued and, whenever a partition's queue is full,
/// waits `fetch.queue.backoff.ms` (1 s) before fetching it again: a consumer that drains faster
/// than that sat idle between bursts. Measured on a 1M-trade backlog, 6 partitions, null sink:
/// librdkafka's defaults 6.3 s and 198 MB peak RSS; these 2.3 s and 164 MB, with the same CPU
/// (and the same 21 s to Cassandra, where 1,000,000 queued messages used 344 MB).
///
/// Also: `read_committed` (aborted transactions never reach a query, as Kafka's own stream
/// processors read), and partitions added to a topic are noticed within 5 s rather than
/// librdkafka's 5 minutes (Spark looks for new partitions at every trigger).
const CONSUMER_DEFAULTS: &[(&str, &str)] = &[
    ("queued.min.messages", "20000"),
    ("fetch.queue.backoff.ms", "20"),
    ("isolation.level", "read_committed"),
    ("topic.metadata.refresh.interval.ms", "5000"),
];

/// Once records have arrived, how long a poll waits for more before handing them over: enough to
/// take a whole fetch response, short enough not to hold a live trade back.
const LINGER: Duration = Duration::from_millis(2);

type Partition = (String, i32);

/// What one blocking gather returned.
struct Gathered {
    records: Vec<RawRecord>,
    events: Vec<RebalanceEvent>,
    errors: u64,
    /// The consumer's position of each assigned partition after the gather: the offset after
    /// the last record or marker it consumed.
    positions: BTreeMap<Partition, i64>,
}

#[derive(Debug, Default, Clone)]
struct Counters {
    messages: u64,
    rebalances: u64,
    dropped_on_revoke: u64,
    consumer_errors: u64,
    /// Offsets deleted by retention before they were read (fail_on_data_loss = false).
    lost_offsets: u64,
}

/// The Kafka source.
pub struct KafkaSource {
    config: KafkaSourceConfig,
    consumer: Option<Arc<BaseConsumer<SourceContext>>>,
    /// Messages fetched but not yet handed out (e.g. past a replayed batch's end).
    buffer: VecDeque<RawRecord>,
    /// Per partition, the end of the last batch handed out: the next batch's start.
    last_end: BTreeMap<Partition, i64>,
    assigned: BTreeSet<Partition>,
    /// With `available_now`: every partition's (low, end) at start, the end being the last
    /// stable offset under `read_committed`.
    targets: Option<BTreeMap<Partition, (i64, i64)>>,
    /// The consumer's position of each assigned partition after the last gather.
    positions: BTreeMap<Partition, i64>,
    /// Per assigned partition, the offset the next record should have if none was lost: the
    /// first position, then one past each record read. Records past it are checked for loss.
    expected: BTreeMap<Partition, i64>,
    /// Per partition, what this instance knows to be committed in the group.
    committed: BTreeMap<Partition, i64>,
    counters: Counters,
}

impl KafkaSource {
    /// Builds the source (it connects in `start`).
    pub fn new(config: KafkaSourceConfig) -> Result<Self> {
        config.validate()?;
        Ok(Self {
            config,
            consumer: None,
            buffer: VecDeque::new(),
            last_end: BTreeMap::new(),
            assigned: BTreeSet::new(),
            targets: None,
            positions: BTreeMap::new(),
            expected: BTreeMap::new(),
            committed: BTreeMap::new(),
            counters: Counters::default(),
        })
    }

    fn error(&self, message: impl Into<String>, retry: Retry) -> Error {
        Error::Source {
            name: self.description(),
            message: message.into(),
            retry,
            source: None,
        }
    }

    fn consumer(&self) -> Result<Arc<BaseConsumer<SourceContext>>> {
        self.consumer
            .clone()
            .ok_or_else(|| Error::Internal("kafka source polled before start".into()))
    }

    /// Polls the consumer on a blocking thread until `max_records`, `max_wait`, or [`LINGER`]
    /// without a message after the first.
    async fn gather(&mut self, max_records: usize, max_wait: Duration) -> Result<()> {
        let consumer = self.consumer()?;
        let gathered =
            tokio::task::spawn_blocking(move || gather(&consumer, max_records, max_wait))
                .await
                .map_err(|e| Error::Internal(format!("kafka poll task failed: {e}")))?;
        let gathered = match gathered {
            Ok(g) => g,
            Err(e) => return Err(self.consumer_error(e).await),
        };
        self.counters.consumer_errors += gathered.errors;
        self.counters.messages += gathered.records.len() as u64;
        // Revocations apply to what was buffered before this gather; the gathered records were
        // already filtered in order, and may hold a re-assigned partition's messages read again
        // from its committed offset, which must stay.
        for event in gathered.events {
            self.counters.rebalances += 1;
            match event {
                RebalanceEvent::Assigned(parts) => {
                    for (partition, first) in parts {
                        if let Some(first) = first {
                            self.expected.insert(partition.clone(), first);
                            self.committed.insert(partition.clone(), first);
                        }
                        self.assigned.insert(partition);
                    }
                }
                RebalanceEvent::Revoked(parts) => {
                    let revoked: BTreeSet<Partition> = parts.into_iter().collect();
                    let before = self.buffer.len();
                    self.buffer
                        .retain(|r| !revoked.contains(&(r.topic.clone(), r.partition)));
                    self.counters.dropped_on_revoke += (before - self.buffer.len()) as u64;
                    for p in &revoked {
                        self.assigned.remove(p);
                        self.last_end.remove(p);
                        self.expected.remove(p);
                        self.committed.remove(p);
                        self.positions.remove(p);
                    }
                }
            }
        }
        self.positions.extend(
            gathered
                .positions
                .into_iter()
                .filter(|(p, _)| self.assigned.contains(p)),
        );
        self.check_for_loss(&gathered.records).await?;
        self.buffer.extend(gathered.records);
        let consumer = self.consumer()?;
        if let Some(loss) = consumer.context().data_loss() {
            return Err(self.error(
                format!("{loss}; set fail_on_data_loss = false to continue from the earliest kept offset"),
                Retry::Permanent,
            ));
        }
        Ok(())
    }

    /// Takes up to `max` buffered records as a batch.
    fn take_batch(&mut self, max: usize) -> SourceBatch {
        let n = self.buffer.len().min(max);
        let records: Vec<RawRecord> = self.buffer.drain(..n).collect();
        let (mut start, mut end) = (Offsets::new(), Offsets::new());
        for r in &records {
            let key = (r.topic.clone(), r.partition);
            if start.get(&r.topic, r.partition).is_none() {
                let from = self.last_end.get(&key).copied().unwrap_or(r.offset);
                start.set(&r.topic, r.partition, from);
            }
            end.set(&r.topic, r.partition, r.offset + 1);
        }
        // Where the batch holds a partition's last fetched record, its end is the consumer's
        // position: past the commit markers (and compacted offsets) after that record, so
        // committing it leaves no lag that no record will ever fill.
        // Borrowed keys and one pass over what stays buffered: no copy per record.
        let still_buffered: BTreeSet<(&str, i32)> = self
            .buffer
            .iter()
            .map(|r| (r.topic.as_str(), r.partition))
            .collect();
        let ends: Vec<(String, i32, i64, bool)> = end
            .iter()
            .map(|(t, p, e)| (t.to_owned(), p, e, still_buffered.contains(&(t, p))))
            .collect();
        for (topic, partition, mut next, buffered) in ends {
            let key = (topic, partition);
            if !buffered && let Some(&position) = self.positions.get(&key) {
                next = next.max(position);
                end.set(&key.0, partition, next);
            }
            self.last_end.insert(key, next);
        }
        SourceBatch {
            records,
            start,
            end,
        }
    }

    /// Whether every partition of the topics has been read and committed up to its end at start.
    /// A partition of this instance is done when the consumer's position reached that end (a
    /// position counts commit markers and compacted offsets, which no record fills); one of
    /// another instance of the group when the group's committed offset reached it.
    async fn caught_up(&self) -> Result<bool> {
        let Some(targets) = self.targets.clone() else {
            return Ok(false);
        };
        if !self.buffer.is_empty() {
            return Ok(false);
        }
        let mut others = Vec::new();
        for (partition, &(low, end)) in &targets {
            if end <= low {
                continue;
            }
            if self.assigned.contains(partition) {
                let committed = self.committed.get(partition).copied().unwrap_or(-1);
                // A partition nothing was read from this run has no position yet: it stands
                // where it was committed.
                let position = self.positions.get(partition).copied().unwrap_or(committed);
                if position < end || committed < position {
                    return Ok(false);
                }
            } else {
                others.push(partition.clone());
            }
        }
        if others.is_empty() {
            return Ok(true);
        }
        let committed = self.group_committed(others.clone()).await?;
        let latest = self.config.starting_offsets == StartingOffsets::Latest;
        Ok(others.iter().all(|p| match committed.get(p) {
            Some(&c) => c >= targets[p].1,
            // Nothing committed yet: only a latest first start has nothing to read there.
            None => latest,
        }))
    }

    /// The group's committed offset of each of `partitions` that has one (a broker request).
    async fn group_committed(
        &self,
        partitions: Vec<Partition>,
    ) -> Result<BTreeMap<Partition, i64>> {
        let consumer = self.consumer()?;
        tokio::task::spawn_blocking(move || committed_positions(&consumer, &partitions))
            .await
            .map_err(|e| Error::Internal(format!("kafka offsets task failed: {e}")))?
            .map_err(|e| {
                self.error(
                    format!("cannot read committed offsets: {e}"),
                    Retry::Transient,
                )
            })
    }

    /// Commits positions that commit markers alone moved (no record to hand out), for
    /// partitions with no batch in flight, so the group's lag reaches 0 on transactional topics.
    async fn commit_marker_positions(&mut self) -> Result<()> {
        let advanced: Vec<(Partition, i64)> = self
            .positions
            .iter()
            .filter(|(p, pos)| {
                let committed = self.committed.get(*p).copied();
                let handed_out = self.last_end.get(*p).copied();
                let settled = handed_out.is_none_or(|h| Some(h) == committed);
                settled && committed.is_some_and(|c| **pos > c)
            })
            .map(|(p, pos)| (p.clone(), *pos))
            .collect();
        if advanced.is_empty()
            || self.buffer.iter().any(|r| {
                advanced
                    .iter()
                    .any(|((t, p), _)| *t == r.topic && *p == r.partition)
            })
        {
            return Ok(());
        }
        let mut end = Offsets::new();
        for ((topic, partition), position) in &advanced {
            end.set(topic, *partition, *position);
        }
        self.commit_offsets(&end).await?;
        for (partition, position) in advanced {
            self.last_end.insert(partition, position);
        }
        Ok(())
    }

    /// Checks the records of one gather (and the positions after it) for offsets that retention
    /// deleted before they were read: a jump past the next expected offset is data loss when the
    /// partition's earliest kept offset is above that expected offset; otherwise it is a commit
    /// marker, an aborted transaction or compaction.
    async fn check_for_loss(&mut self, records: &[RawRecord]) -> Result<()> {
        let mut jumps: Vec<(Partition, i64, i64)> = Vec::new();
        // Per partition of this gather, the next expected offset: the map is read and written
        // once per partition, not once per record (this runs for every record consumed).
        let mut next: Vec<(&str, i32, Option<i64>)> = Vec::new();
        for r in records {
            let slot = match next
                .iter()
                .position(|(t, p, _)| *t == r.topic && *p == r.partition)
            {
                Some(i) => i,
                None => {
                    let known = self.expected.get(&(r.topic.clone(), r.partition)).copied();
                    next.push((&r.topic, r.partition, known));
                    next.len() - 1
                }
            };
            if let Some(e) = next[slot].2
                && r.offset > e
            {
                jumps.push(((r.topic.clone(), r.partition), e, r.offset));
            }
            next[slot].2 = Some(r.offset + 1);
        }
        for (topic, partition, expected) in next {
            if let Some(e) = expected {
                self.expected.insert((topic.to_owned(), partition), e);
            }
        }
        for (partition, &position) in &self.positions {
            if let Some(&e) = self.expected.get(partition)
                && position > e
            {
                jumps.push((partition.clone(), e, position));
                self.expected.insert(partition.clone(), position);
            }
        }
        if jumps.is_empty() {
            return Ok(());
        }
        let consumer = self.consumer()?;
        let lows = tokio::task::spawn_blocking(move || {
            let mut lows = BTreeMap::new();
            for ((topic, partition), _, _) in &jumps {
                let key = (topic.clone(), *partition);
                if lows.contains_key(&key) {
                    continue;
                }
                // One look-up per partition and gather, only where offsets were skipped.
                let low = consumer
                    .fetch_watermarks(topic, *partition, REQUEST_TIMEOUT)
                    .ok()
                    .map(|(low, _)| low);
                lows.insert(key, low);
            }
            (jumps, lows)
        })
        .await
        .map_err(|e| Error::Internal(format!("kafka watermark task failed: {e}")))?;
        let (jumps, lows) = lows;
        for ((topic, partition), expected, next) in jumps {
            let Some(Some(low)) = lows.get(&(topic.clone(), partition)) else {
                continue;
            };
            if *low <= expected {
                continue;
            }
            let lost_to = (*low).min(next);
            let message = format!(
                "{topic}/{partition}: offsets {expected}..{lost_to} were deleted by retention before they were read ({} offsets; the earliest kept is {low})",
                lost_to - expected
            );
            if self.config.fail_on_data_loss {
                tracing::error!(%message, "Data loss: stopping (fail_on_data_loss = true).");
                return Err(self.error(
                    format!(
                        "{message}; set fail_on_data_loss = false to continue past lost records"
                    ),
                    Retry::Permanent,
                ));
            }
            tracing::error!(%message, "Data loss: continuing (fail_on_data_loss = false).");
            self.counters.lost_offsets += (lost_to - expected) as u64;
        }
        Ok(())
    }

    /// The error for a consumer error from librdkafka: permanent when retrying cannot fix it.
    async fn consumer_error(&self, e: KafkaError) -> Error {
        let retry = retry_of(&e);
        if retry == Retry::Transient {
            return self.error(format!("consumer failed: {e}"), retry);
        }
        let positions = self.positions.clone();
        let behind = match self.consumer() {
            Ok(consumer) => tokio::task::spawn_blocking(move || {
                positions
                    .iter()
                    .filter_map(|((t, p), pos)| {
                        let (_, end) = consumer.fetch_watermarks(t, *p, REQUEST_TIMEOUT).ok()?;
                        (*pos < end).then(|| format!("{t}/{p} at offset {pos} (end {end})"))
                    })
                    .collect::<Vec<_>>()
            })
            .await
            .unwrap_or_default(),
            Err(_) => Vec::new(),
        };
        let at = if behind.is_empty() {
            String::new()
        } else {
            format!("; partitions not at their end: {}", behind.join(", "))
        };
        self.error(
            format!("consumer error that retrying cannot fix: {e}{at}"),
            retry,
        )
    }

    /// Commits `end` to the group for the partitions this instance holds.
    async fn commit_offsets(&mut self, end: &Offsets) -> Result<()> {
        let mut tpl = TopicPartitionList::new();
        for (topic, partition, next) in end.iter() {
            if self.assigned.contains(&(topic.to_owned(), partition)) {
                tpl.add_partition_offset(topic, partition, Offset::Offset(next))
                    .map_err(|e| Error::Internal(format!("bad offset list: {e}")))?;
            }
        }
        if tpl.count() == 0 {
            return Ok(());
        }
        let consumer = self.consumer()?;
        let result = tokio::task::spawn_blocking(move || consumer.commit(&tpl, CommitMode::Sync))
            .await
            .map_err(|e| Error::Internal(format!("kafka commit task failed: {e}")))?;
        match result {
            Ok(()) => {
                for (topic, partition, next) in end.iter() {
                    let key = (topic.to_owned(), partition);
                    if self.assigned.contains(&key) {
                        self.committed.insert(key, next);
                    }
                }
                Ok(())
            }
            Err(e)
                if matches!(
                    e.rdkafka_error_code(),
                    Some(
                        RDKafkaErrorCode::IllegalGeneration
                            | RDKafkaErrorCode::UnknownMemberId
                            | RDKafkaErrorCode::RebalanceInProgress
                    )
                ) =>
            {
                // The group moved these partitions while the batch was written: the new owner
                // starts from the last committed offset and writes the same rows again, which the
                // sinks' idempotent writes absorb.
                tracing::warn!(error = %e, end = %end, "Offsets not committed: this instance lost the partitions during the batch.");
                Ok(())
            }
            Err(e) => Err(self.error(format!("commit of {end} failed: {e}"), Retry::Transient)),
        }
    }
}

/// Whether retrying can fix a consumer error. Permanent: librdkafka's fatal errors, a codec
/// this build cannot decode, a corrupt or undecodable batch, and refused authorization (the
/// same request gets the same answer until someone changes the broker's ACLs or the build).
fn retry_of(e: &KafkaError) -> Retry {
    if matches!(e, KafkaError::MessageConsumptionFatal(_)) {
        return Retry::Permanent;
    }
    match e.rdkafka_error_code() {
        Some(
            RDKafkaErrorCode::Fatal
            | RDKafkaErrorCode::NotImplemented
            | RDKafkaErrorCode::UnsupportedCompressionType
            | RDKafkaErrorCode::BadCompression
            | RDKafkaErrorCode::BadMessage
            | RDKafkaErrorCode::InvalidMessage
            | RDKafkaErrorCode::TopicAuthorizationFailed
            | RDKafkaErrorCode::GroupAuthorizationFailed
            | RDKafkaErrorCode::ClusterAuthorizationFailed
            | RDKafkaErrorCode::SaslAuthenticationFailed
            | RDKafkaErrorCode::Authentication,
        ) => Retry::Permanent,
        _ => Retry::Transient,
    }
}

fn gather(
    consumer: &BaseConsumer<SourceContext>,
    max_records: usize,
    max_wait: Duration,
) -> Result<Gathered, KafkaError> {
    // One clock read per message: this loop runs once for every message consumed.
    let mut now = Instant::now();
    let deadline = now + max_wait;
    let mut records: Vec<RawRecord> = Vec::with_capacity(max_records.min(65_536));
    let mut events = Vec::new();
    let mut errors = 0;
    loop {
        let mut remaining = deadline.saturating_duration_since(now);
        if !records.is_empty() {
            remaining = remaining.min(LINGER);
        }
        let polled = consumer.poll(remaining);
        for event in consumer.context().take_events() {
            if let RebalanceEvent::Revoked(parts) = &event {
                records.retain(|r| {
                    !parts
                        .iter()
                        .any(|(t, p)| *t == r.topic && *p == r.partition)
                });
            }
            events.push(event);
        }
        match polled {
            Some(Ok(m)) => records.push(RawRecord {
                topic: m.topic().to_owned(),
                partition: m.partition(),
                offset: m.offset(),
                payload: m.payload().unwrap_or_default().to_vec(),
                rejected: None,
                frame: None,
                received_at: SystemTime::now(),
            }),
            Some(Err(e)) if retry_of(&e) == Retry::Permanent => {
                return Err(e);
            }
            Some(Err(e)) => {
                errors += 1;
                tracing::warn!(error = %e, "Kafka consumer error; librdkafka retries by itself.");
            }
            // Nothing more within the linger: hand over what there is.
            None if !records.is_empty() => {
                return Ok(Gathered {
                    records,
                    events,
                    errors,
                    positions: positions(consumer),
                });
            }
            None => {}
        }
        now = Instant::now();
        if records.len() >= max_records || now >= deadline {
            return Ok(Gathered {
                records,
                events,
                errors,
                positions: positions(consumer),
            });
        }
    }
}

#[async_trait]
impl Source for KafkaSource {
    fn description(&self) -> String {
        format!(
            "kafka {} (group {})",
            self.config.topics.join(","),
            self.config.group_id
        )
    }

    async fn start(&mut self, request: StartRequest) -> Result<()> {
        let mut client = super::client_config(
            &self.config.brokers(),
            CONSUMER_DEFAULTS,
            &self.config.properties,
        );
        client
            .set("group.id", &self.config.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            .set("auto.offset.reset", "earliest")
            .set(
                "session.timeout.ms",
                self.config.session_timeout.as_millis().to_string(),
            )
            .set(
                "max.poll.interval.ms",
                self.config.max_poll_interval.as_millis().to_string(),
            );
        let consumer: BaseConsumer<SourceContext> = client
            .create_with_context(SourceContext::new())
            .map_err(|e| self.error(format!("cannot create consumer: {e}"), Retry::Permanent))?;
        let consumer = Arc::new(consumer);
        // The partitions there are now, their ends, and whether the group committed any of them:
        // with no checkpoint and no commit, this is the query's first start.
        let c = consumer.clone();
        let topics = self.config.topics.clone();
        let (marks, committed) = tokio::task::spawn_blocking(move || {
            let marks = watermarks(&c, &topics)?;
            let partitions: Vec<Partition> = marks.keys().cloned().collect();
            let committed = committed_positions(&c, &partitions)?;
            Ok::<_, KafkaError>((marks, committed))
        })
        .await
        .map_err(|e| Error::Internal(format!("kafka metadata task failed: {e}")))?
        .map_err(|e| {
            self.error(
                format!("cannot read the topics' partitions and offsets: {e}"),
                Retry::Transient,
            )
        })?;
        let checkpointed = request.committed.as_ref().is_some_and(|o| {
            o.iter()
                .any(|(topic, _, _)| self.config.topics.iter().any(|t| t == topic))
        });
        let first_start = !checkpointed && committed.is_empty();
        consumer.context().set_policy(StartPolicy {
            starting_offsets: self.config.starting_offsets.clone(),
            first_start,
            initial_partitions: marks.keys().cloned().collect(),
            fail_on_data_loss: self.config.fail_on_data_loss,
        });
        let topics: Vec<&str> = self.config.topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&topics)
            .map_err(|e| self.error(format!("cannot subscribe: {e}"), Retry::Permanent))?;
        if request.available_now {
            tracing::info!(
                partitions = marks.len(),
                "Available-now: reading every partition up to its end at start."
            );
            self.targets = Some(marks);
        }
        self.consumer = Some(consumer);
        Ok(())
    }

    async fn fetch_range(&mut self, start: &Offsets, end: &Offsets) -> Result<SourceBatch> {
        // The group resumes each partition at its committed offset, which for a batch that was
        // never committed is the batch's start: reading on to the batch's end rebuilds it exactly.
        // Partitions the group now gives to another instance are that instance's to replay.
        let deadline = Instant::now() + REPLAY_TIMEOUT;
        while self.assigned.is_empty() && Instant::now() < deadline {
            self.gather(usize::MAX, Duration::from_millis(200)).await?;
        }
        let owned: Vec<(String, i32, i64)> = end
            .iter()
            .filter(|(t, p, _)| self.assigned.contains(&((*t).to_owned(), *p)))
            .map(|(t, p, e)| (t.to_owned(), p, e))
            .collect();
        // A partition whose group offset is already past the batch's end was finished by another
        // instance after a rebalance: nothing of it is left to replay here.
        let query: Vec<(String, i32)> = owned.iter().map(|(t, p, _)| (t.clone(), *p)).collect();
        let committed = self.group_committed(query).await?;
        let wanted: Vec<(String, i32, i64)> = owned
            .into_iter()
            .filter(|(t, p, e)| committed.get(&(t.clone(), *p)).is_none_or(|c| c < e))
            .collect();
        // A batch's end may be a position past commit markers, which no record reaches.
        let reached = |source: &Self, t: &str, p: i32, e: i64| {
            source
                .positions
                .get(&(t.to_owned(), p))
                .is_some_and(|pos| *pos >= e)
                || source
                    .buffer
                    .iter()
                    .any(|r| r.topic == t && r.partition == p && r.offset >= e - 1)
        };
        loop {
            let missing: Vec<&(String, i32, i64)> = wanted
                .iter()
                .filter(|(t, p, e)| !reached(self, t, *p, *e))
                .collect();
            if missing.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                return Err(self.error(
                    format!("could not re-read the uncommitted batch {start} .. {end}: partitions {missing:?} did not reach their end"),
                    Retry::Transient,
                ));
            }
            self.gather(usize::MAX, Duration::from_millis(200)).await?;
        }
        let mut records = Vec::new();
        let mut rest = VecDeque::new();
        for r in self.buffer.drain(..) {
            let in_batch = wanted
                .iter()
                .any(|(t, p, e)| *t == r.topic && *p == r.partition && r.offset < *e)
                && start
                    .get(&r.topic, r.partition)
                    .is_none_or(|s| r.offset >= s);
            if in_batch {
                records.push(r)
            } else {
                rest.push_back(r)
            }
        }
        self.buffer = rest;
        let (mut s, mut e) = (Offsets::new(), Offsets::new());
        for (topic, partition, last) in &wanted {
            let first = start.get(topic, *partition).unwrap_or(*last);
            s.set(topic, *partition, first);
            e.set(topic, *partition, *last);
            self.last_end.insert((topic.clone(), *partition), *last);
        }
        tracing::info!(records = records.len(), start = %s, end = %e, "Re-read the uncommitted batch.");
        Ok(SourceBatch {
            records,
            start: s,
            end: e,
        })
    }

    async fn poll(&mut self, limits: PollLimits) -> Result<Poll> {
        if self.buffer.len() < limits.max_records {
            self.gather(limits.max_records - self.buffer.len(), limits.max_wait)
                .await?;
        }
        if !self.buffer.is_empty() {
            return Ok(Poll::Batch(self.take_batch(limits.max_records)));
        }
        self.commit_marker_positions().await?;
        if self.caught_up().await? {
            return Ok(Poll::Exhausted);
        }
        Ok(Poll::Idle)
    }

    async fn commit(&mut self, end: &Offsets) -> Result<()> {
        self.commit_offsets(end).await
    }

    fn metrics(&self) -> Vec<(&'static str, u64)> {
        let c = &self.counters;
        vec![
            ("messages", c.messages),
            ("rebalances", c.rebalances),
            ("dropped_on_revoke", c.dropped_on_revoke),
            ("consumer_errors", c.consumer_errors),
            (
                "lost_offsets",
                c.lost_offsets
                    + self
                        .consumer
                        .as_ref()
                        .map_or(0, |consumer| consumer.context().lost_offsets()),
            ),
            ("assigned_partitions", self.assigned.len() as u64),
        ]
    }

    async fn close(&mut self) -> Result<()> {
        if let Some(consumer) = self.consumer.take() {
            tokio::task::spawn_blocking(move || consumer.unsubscribe())
                .await
                .map_err(|e| Error::Internal(format!("kafka close task failed: {e}")))?;
        }
        Ok(())
    }
}

/// The consumer's position of each assigned partition that has one (a local read).
fn positions(consumer: &BaseConsumer<SourceContext>) -> BTreeMap<Partition, i64> {
    let Ok(tpl) = consumer.position() else {
        return BTreeMap::new();
    };
    tpl.elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(n) => Some(((e.topic().to_owned(), e.partition()), n)),
            _ => None,
        })
        .collect()
}

/// The group's committed offset of each partition that has one.
fn committed_positions(
    consumer: &BaseConsumer<SourceContext>,
    partitions: &[(String, i32)],
) -> Result<BTreeMap<Partition, i64>, KafkaError> {
    let mut tpl = TopicPartitionList::new();
    for (topic, partition) in partitions {
        tpl.add_partition(topic, *partition);
    }
    let committed = consumer.committed_offsets(tpl, REQUEST_TIMEOUT)?;
    Ok(committed
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(c) => Some(((e.topic().to_owned(), e.partition()), c)),
            _ => None,
        })
        .collect())
}

/// Every partition's (low, high) watermarks.
fn watermarks(
    consumer: &BaseConsumer<SourceContext>,
    topics: &[String],
) -> Result<BTreeMap<Partition, (i64, i64)>, KafkaError> {
    let mut out = BTreeMap::new();
    for topic in topics {
        let metadata = consumer.fetch_metadata(Some(topic), REQUEST_TIMEOUT)?;
        for t in metadata.topics() {
            if let Some(err) = t.error() {
                return Err(KafkaError::MetadataFetch(err.into()));
            }
            for p in t.partitions() {
                let marks = consumer.fetch_watermarks(topic, p.id(), REQUEST_TIMEOUT)?;
                out.insert((topic.clone(), p.id()), marks);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumer_errors_that_retrying_cannot_fix_are_permanent() {
        use RDKafkaErrorCode as C;
        for code in [
            C::NotImplemented,
            C::UnsupportedCompressionType,
            C::BadCompression,
            C::BadMessage,
            C::InvalidMessage,
            C::TopicAuthorizationFailed,
            C::GroupAuthorizationFailed,
            C::SaslAuthenticationFailed,
        ] {
            assert_eq!(
                retry_of(&KafkaError::MessageConsumption(code)),
                Retry::Permanent,
                "{code:?}"
            );
        }
        assert_eq!(
            retry_of(&KafkaError::MessageConsumptionFatal(C::Unknown)),
            Retry::Permanent
        );
        for code in [
            C::BrokerTransportFailure,
            C::AllBrokersDown,
            C::NotLeaderForPartition,
            C::UnknownTopicOrPartition,
            C::RequestTimedOut,
        ] {
            assert_eq!(
                retry_of(&KafkaError::MessageConsumption(code)),
                Retry::Transient,
                "{code:?}"
            );
        }
    }
}
