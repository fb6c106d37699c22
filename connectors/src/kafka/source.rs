//! `[source] type = "kafka"`: a consumer-group member handing the engine batches of messages.

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
use super::context::{RebalanceEvent, SourceContext};

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
const PREFETCH_DEFAULTS: &[(&str, &str)] = &[
    ("queued.min.messages", "20000"),
    ("fetch.queue.backoff.ms", "20"),
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
}

#[derive(Debug, Default, Clone)]
struct Counters {
    messages: u64,
    rebalances: u64,
    dropped_on_revoke: u64,
    consumer_errors: u64,
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
    /// With `available_now`: every partition's high watermark at start.
    targets: Option<BTreeMap<Partition, (i64, i64)>>,
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
            counters: Counters::default(),
        })
    }

    fn error(&self, message: impl Into<String>, retry: Retry) -> Error {
        Error::Source {
            name: self.description(),
            message: message.into(),
            retry,
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
        let gathered =
            gathered.map_err(|e| self.error(format!("consumer failed: {e}"), retry_of(&e)))?;
        self.counters.consumer_errors += gathered.errors;
        self.counters.messages += gathered.records.len() as u64;
        // Revocations apply to what was buffered before this gather; the gathered records were
        // already filtered in order, and may hold a re-assigned partition's messages read again
        // from its committed offset, which must stay.
        for event in gathered.events {
            self.counters.rebalances += 1;
            match event {
                RebalanceEvent::Assigned(parts) => self.assigned.extend(parts),
                RebalanceEvent::Revoked(parts) => {
                    let revoked: BTreeSet<Partition> = parts.into_iter().collect();
                    let before = self.buffer.len();
                    self.buffer
                        .retain(|r| !revoked.contains(&(r.topic.clone(), r.partition)));
                    self.counters.dropped_on_revoke += (before - self.buffer.len()) as u64;
                    for p in &revoked {
                        self.assigned.remove(p);
                        self.last_end.remove(p);
                    }
                }
            }
        }
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
        for (topic, partition, next) in end.iter() {
            self.last_end.insert((topic.to_owned(), partition), next);
        }
        SourceBatch {
            records,
            start,
            end,
        }
    }

    /// Whether every partition of the topics is committed up to its watermark at start.
    async fn caught_up(&self) -> Result<bool> {
        let Some(targets) = self.targets.clone() else {
            return Ok(false);
        };
        if !self.buffer.is_empty() {
            return Ok(false);
        }
        let consumer = self.consumer()?;
        let latest = self.config.starting_offsets == StartingOffsets::Latest;
        let done = tokio::task::spawn_blocking(move || -> Result<bool, KafkaError> {
            let mut tpl = TopicPartitionList::new();
            for (topic, partition) in targets.keys() {
                tpl.add_partition(topic, *partition);
            }
            let committed = consumer.committed_offsets(tpl, REQUEST_TIMEOUT)?;
            Ok(committed.elements().iter().all(|e| {
                let (low, high) = targets[&(e.topic().to_owned(), e.partition())];
                match e.offset() {
                    Offset::Offset(c) => c >= high,
                    // Nothing committed: done only if there was nothing to read.
                    _ => high <= low || latest,
                }
            }))
        })
        .await
        .map_err(|e| Error::Internal(format!("kafka offsets task failed: {e}")))?;
        done.map_err(|e| {
            self.error(
                format!("cannot read committed offsets: {e}"),
                Retry::Transient,
            )
        })
    }
}

fn retry_of(e: &KafkaError) -> Retry {
    match e.rdkafka_error_code() {
        Some(RDKafkaErrorCode::Fatal) => Retry::Permanent,
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
            Some(Err(e)) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::Fatal) => {
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
            PREFETCH_DEFAULTS,
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
                self.config.session_timeout_ms.to_string(),
            )
            .set(
                "max.poll.interval.ms",
                self.config.max_poll_interval_ms.to_string(),
            );
        let context = SourceContext::new(
            self.config.starting_offsets.clone(),
            self.config.fail_on_data_loss,
        );
        let consumer: BaseConsumer<SourceContext> = client
            .create_with_context(context)
            .map_err(|e| self.error(format!("cannot create consumer: {e}"), Retry::Permanent))?;
        let topics: Vec<&str> = self.config.topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&topics)
            .map_err(|e| self.error(format!("cannot subscribe: {e}"), Retry::Permanent))?;
        let consumer = Arc::new(consumer);
        if request.available_now {
            let c = consumer.clone();
            let topics = self.config.topics.clone();
            let targets = tokio::task::spawn_blocking(move || watermarks(&c, &topics))
                .await
                .map_err(|e| Error::Internal(format!("kafka metadata task failed: {e}")))?
                .map_err(|e| {
                    self.error(
                        format!("cannot read the topics' offsets: {e}"),
                        Retry::Transient,
                    )
                })?;
            tracing::info!(
                partitions = targets.len(),
                "Available-now: reading every partition up to its end at start."
            );
            self.targets = Some(targets);
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
        let consumer = self.consumer()?;
        let query: Vec<(String, i32)> = owned.iter().map(|(t, p, _)| (t.clone(), *p)).collect();
        let committed = tokio::task::spawn_blocking(move || committed_positions(&consumer, &query))
            .await
            .map_err(|e| Error::Internal(format!("kafka offsets task failed: {e}")))?
            .map_err(|e| {
                self.error(
                    format!("cannot read committed offsets: {e}"),
                    Retry::Transient,
                )
            })?;
        let wanted: Vec<(String, i32, i64)> = owned
            .into_iter()
            .filter(|(t, p, e)| committed.get(&(t.clone(), *p)).is_none_or(|c| c < e))
            .collect();
        let reached = |buffer: &VecDeque<RawRecord>, t: &str, p: i32, e: i64| {
            buffer
                .iter()
                .any(|r| r.topic == t && r.partition == p && r.offset >= e - 1)
        };
        loop {
            let missing: Vec<&(String, i32, i64)> = wanted
                .iter()
                .filter(|(t, p, e)| !reached(&self.buffer, t, *p, *e))
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
        if self.caught_up().await? {
            return Ok(Poll::Exhausted);
        }
        Ok(Poll::Idle)
    }

    async fn commit(&mut self, end: &Offsets) -> Result<()> {
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
            Ok(()) => Ok(()),
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

    fn metrics(&self) -> Vec<(&'static str, u64)> {
        let c = &self.counters;
        vec![
            ("messages", c.messages),
            ("rebalances", c.rebalances),
            ("dropped_on_revoke", c.dropped_on_revoke),
            ("consumer_errors", c.consumer_errors),
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
