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
//!   `starting_offsets`, whose JSON must name each of them, as Spark requires; later ones start at
//!   their earliest offset). New partitions are found within `topic.metadata.refresh.interval.ms`
//!   (5 s by default here).
//! - **Retention during a run.** Every fetch is checked: where the offsets skipped between two
//!   records (or up to the position) are below the partition's earliest kept offset, retention
//!   deleted records before they were read. With `fail_on_data_loss` the query stops naming the
//!   partition and the lost range; without it the loss is logged at ERROR and counted
//!   (`lost_offsets` in the progress record).
//! - **Skewed partitions.** A batch takes each partition's share of its backlog (as Spark splits
//!   `maxOffsetsPerTrigger`), but librdkafka fetches every partition alike, so a backlog in one
//!   partition would fill the buffer with the others' records while it waits for its share.
//!   Fetching of a partition with two shares buffered is paused until it is down to one, as
//!   Kafka's own consumers apply back-pressure (`KafkaConsumer.pause`); see
//!   [`KafkaSource::throttle`].
//!
//! Positions: a batch's offsets are Spark's `{"topic":{"0":42}}` (next offset per partition,
//! [`KafkaOffsets`]); a record carries its partition's number in the source's [`PartitionTable`]
//! and its offset, and a dead letter describes it as `{"topic":"t","partition":0,"offset":5}`.
//!
//! Layout: this file holds the [`Source`] impl and the batch bookkeeping (rebalances, batch
//! bounds, data-loss checks, commits); `consumer.rs` the blocking consumer loop and broker
//! look-ups; `fetch.rs` the exact re-read of a batch that was planned but not committed.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use engine::{
    Error, OffsetRange, Poll, PollLimits, RawRecord, RecordPosition, Result, Retry, Source,
    SourceBatch, SourceOffset, StartRequest,
};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::{Offset, TopicPartitionList};

use super::config::{KafkaSourceConfig, StartingOffsets};
use super::consumer::{
    CONSUMER_DEFAULTS, Gathered, REQUEST_TIMEOUT, committed_positions, gather, offsets_of,
    partition_list, retry_of, watermarks,
};
use super::context::{RebalanceEvent, SourceContext, StartPolicy};
use super::offsets::{KafkaOffsets, Partition, PartitionTable};

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
    pub(super) config: KafkaSourceConfig,
    consumer: Option<Arc<BaseConsumer<SourceContext>>>,
    /// The number of each topic-partition seen (what records carry).
    pub(super) partitions: PartitionTable,
    /// Messages fetched but not yet handed out (e.g. past a replayed batch's end).
    pub(super) buffer: VecDeque<RawRecord>,
    /// Per partition, the end of the last batch handed out: the next batch's start.
    pub(super) last_end: BTreeMap<Partition, i64>,
    pub(super) assigned: BTreeSet<Partition>,
    /// Assigned partitions whose fetching this source paused ([`Self::throttle`]).
    paused: BTreeSet<Partition>,
    /// Partitions resumed since the last gather, whose broker thread the next gather wakes.
    wake: Vec<Partition>,
    /// With `available_now`: every partition's (low, end) at start, the end being the last
    /// stable offset under `read_committed`.
    targets: Option<BTreeMap<Partition, (i64, i64)>>,
    /// The partitions a `latest` first start skips: there at the first start, nothing committed.
    /// Any other partition with nothing committed is read from its earliest offset.
    skipped_by_latest: BTreeSet<Partition>,
    /// The consumer's position of each assigned partition after the last gather.
    pub(super) positions: BTreeMap<Partition, i64>,
    /// Per assigned partition, the offset the next record should have if none was lost: the
    /// first position, then one past each record read. Records past it are checked for loss.
    expected: BTreeMap<Partition, i64>,
    /// Per partition, what this instance knows to be committed in the group.
    committed: BTreeMap<Partition, i64>,
    /// The offsets of the last commit sent without waiting for the broker's answer
    /// ([`Self::send_uncommitted`]); `close` commits them again and waits.
    in_flight: Option<KafkaOffsets>,
    /// When the last commit to the group was sent ([`Self::commit_due`]).
    last_commit: Option<Instant>,
    /// Per partition, its end as last read from the broker (the high watermark, or the last
    /// stable offset under `read_committed`), and when: what each partition has left to read
    /// decides its share of a batch.
    ends: BTreeMap<Partition, i64>,
    ends_read: Option<Instant>,
    /// A read of the ends running on a blocking thread ([`Self::refresh_ends`]).
    ends_reading: Option<EndsRead>,
    /// A gather running on a blocking thread: the read-ahead a poll starts for the next batch
    /// while the engine processes this one ([`Self::read_ahead`]).
    gathering: Option<GatherTask>,
    counters: Counters,
}

/// The partitions' (low, end) offsets read from the broker by a blocking task.
type EndsRead = tokio::task::JoinHandle<Result<BTreeMap<Partition, (i64, i64)>, KafkaError>>;

/// A gather on a blocking thread ([`KafkaSource::start_gather`]): the partition table it
/// numbered records with, and what it read.
type GatherTask = tokio::task::JoinHandle<(PartitionTable, Result<Gathered, KafkaError>)>;

/// Each partition's share of a batch ([`KafkaSource::shares`]).
struct Shares {
    /// By partition number.
    by_number: BTreeMap<u32, usize>,
    /// Whether an assigned partition with records to read has none buffered yet and no number.
    unnumbered: bool,
    /// Records buffered per partition number when the shares were computed (the buffer is
    /// counted once per computation, not again to check or take them).
    buffered: BTreeMap<u32, usize>,
}

/// The least a poll may buffer while it waits for every partition's share: small batches still
/// look past one partition's fetch (128 KiB of records) for the others'.
const BALANCE_BUFFER: usize = 65_536;

/// Records a partition keeps buffered beyond its shares before its fetching is paused, and after
/// it is resumed: about one fetch response of trade records (`max.partition.fetch.bytes`), so
/// that small shares do not pause and resume a partition at every batch.
const PAUSE_MARGIN: usize = 2_048;

/// How often a running (not available-now) source reads the partitions' ends again.
const ENDS_REFRESH: Duration = Duration::from_secs(1);

impl KafkaSource {
    /// Builds the source (it connects in `start`).
    pub fn new(config: KafkaSourceConfig) -> Result<Self> {
        config.validate()?;
        Ok(Self {
            config,
            consumer: None,
            partitions: PartitionTable::default(),
            buffer: VecDeque::new(),
            last_end: BTreeMap::new(),
            assigned: BTreeSet::new(),
            paused: BTreeSet::new(),
            wake: Vec::new(),
            targets: None,
            skipped_by_latest: BTreeSet::new(),
            positions: BTreeMap::new(),
            expected: BTreeMap::new(),
            committed: BTreeMap::new(),
            in_flight: None,
            last_commit: None,
            ends: BTreeMap::new(),
            ends_read: None,
            ends_reading: None,
            gathering: None,
            counters: Counters::default(),
        })
    }

    pub(super) fn error(&self, message: impl Into<String>, retry: Retry) -> Error {
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

    /// Reads an offset the engine hands back (this source's own, of any version).
    pub(super) fn parse_offset(&self, offset: &SourceOffset) -> Result<KafkaOffsets> {
        KafkaOffsets::from_source_offset(offset).map_err(|e| self.error(e, Retry::Permanent))
    }

    /// Polls the consumer on a blocking thread (see [`gather`]) and applies what it returned.
    pub(super) async fn gather(&mut self, max_records: usize, max_wait: Duration) -> Result<()> {
        self.start_gather(max_records, max_wait).await?;
        self.finish_gather().await
    }

    /// Starts a gather on a blocking thread (after taking the one in flight, if any): it runs
    /// while the caller goes on, and [`Self::finish_gather`] takes what it read.
    async fn start_gather(&mut self, max_records: usize, max_wait: Duration) -> Result<()> {
        self.finish_gather().await?;
        let consumer = self.consumer()?;
        // A copy of the table goes to the blocking thread and comes back with any new
        // partitions (only a gather numbers partitions); the source keeps naming the records it
        // handed out meanwhile.
        let mut table = self.partitions.clone();
        let wake = std::mem::take(&mut self.wake);
        self.gathering = Some(tokio::task::spawn_blocking(move || {
            wake_fetchers(&consumer, &wake);
            let gathered = gather(&consumer, &mut table, max_records, max_wait);
            (table, gathered)
        }));
        Ok(())
    }

    /// Waits for the gather in flight, if any, and buffers what it read: its records, the
    /// rebalances it served, the consumer's positions; checks the records for data loss.
    async fn finish_gather(&mut self) -> Result<()> {
        let Some(gathering) = self.gathering.take() else {
            return Ok(());
        };
        let (table, gathered) = gathering
            .await
            .map_err(|e| Error::Internal(format!("kafka poll task failed: {e}")))?;
        self.partitions = table;
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
                    // librdkafka may keep a partition paused across its release and return
                    // (the rebalance callback resumes it first, but a resume can be lost to the
                    // release's own version barrier); resuming one that is not paused does
                    // nothing.
                    let tpl = partition_list(parts.iter().map(|(p, _)| p));
                    if let Err(e) = self.consumer()?.resume(&tpl) {
                        tracing::warn!(error = %e, "Could not resume the assigned partitions.");
                    }
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
                    let numbers: Vec<u32> = revoked
                        .iter()
                        .filter_map(|p| self.partitions.index_of(p))
                        .collect();
                    let before = self.buffer.len();
                    self.buffer
                        .retain(|r| !numbers.contains(&r.position.partition));
                    self.counters.dropped_on_revoke += (before - self.buffer.len()) as u64;
                    for p in &revoked {
                        // Its next owner may commit past this: `close` must not commit it back.
                        if let Some(sent) = self.in_flight.as_mut().and_then(|o| o.0.get_mut(&p.0))
                        {
                            sent.remove(&p.1);
                        }
                        self.assigned.remove(p);
                        // The rebalance callback resumed it before releasing it.
                        self.paused.remove(p);
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

    /// Each assigned partition's share of a batch of `max` records, by partition number: what it
    /// has left to read (to its end, or what is buffered if more) in proportion, as Spark splits
    /// `maxOffsetsPerTrigger` across partitions by their lag; everything left when it all fits.
    /// Partitions advance together, so event time does too: a batch drawn from one partition's
    /// backlog would push a query's watermark past the other partitions' rows and make them late.
    fn shares(&self, max: usize) -> Shares {
        // Counted in a dense list: the buffer holds up to eight batches.
        let mut counts: Vec<(usize, i64)> = Vec::new();
        for r in &self.buffer {
            let (count, first) = dense_slot(&mut counts, r.position.partition);
            if *count == 0 {
                *first = r.position.offset;
            }
            *count += 1;
        }
        let buffered: BTreeMap<u32, (usize, i64)> = (0u32..)
            .zip(counts)
            .filter(|(_, (count, _))| *count > 0)
            .collect();
        let mut left: BTreeMap<u32, usize> = BTreeMap::new();
        for (&number, &(count, first)) in &buffered {
            let partition = self.partitions.partition(number);
            let to_end = self
                .ends
                .get(partition)
                .map_or(0, |&end| usize::try_from(end - first).unwrap_or(0));
            left.insert(number, count.max(to_end));
        }
        // Assigned partitions with records still to fetch and none buffered count too: their
        // share waits for them (one never read from has no number yet).
        let mut unnumbered = 0usize;
        for partition in &self.assigned {
            let number = self.partitions.index_of(partition);
            if number.is_some_and(|n| left.contains_key(&n)) {
                continue;
            }
            let next = self
                .positions
                .get(partition)
                .or_else(|| self.committed.get(partition))
                .copied()
                .or_else(|| {
                    self.targets
                        .as_ref()
                        .and_then(|t| t.get(partition))
                        .map(|m| m.0)
                });
            let Some(&end) = self.ends.get(partition) else {
                continue;
            };
            let to_end = match next {
                Some(next) => usize::try_from(end - next).unwrap_or(0),
                // Where it starts is not known yet: wait for it as for one record.
                None => 1,
            };
            if to_end == 0 {
                continue;
            }
            match number {
                Some(n) => {
                    left.insert(n, to_end);
                }
                None => unnumbered += to_end,
            }
        }
        let total: usize = left.values().sum::<usize>() + unnumbered;
        let by_number = if total <= max {
            left
        } else {
            left.into_iter()
                .map(|(number, n)| {
                    let share = (n as u128 * max as u128 / total as u128) as usize;
                    (number, share.max(1))
                })
                .collect()
        };
        Shares {
            by_number,
            unnumbered: unnumbered > 0,
            buffered: buffered
                .into_iter()
                .map(|(n, (count, _))| (n, count))
                .collect(),
        }
    }

    /// Whether some partition has fewer records buffered than its share (and more to fetch).
    fn short_of(shares: &Shares) -> bool {
        shares.unnumbered
            || shares
                .by_number
                .iter()
                .any(|(number, &share)| shares.buffered.get(number).copied().unwrap_or(0) < share)
    }

    /// Pauses fetching of each partition with two shares and [`PAUSE_MARGIN`] records buffered,
    /// and resumes each paused one down to less than one share and the margin. Without it, a
    /// partition holding most of a backlog gets its share only once librdkafka, which fetches all
    /// partitions alike, has handed over as many records of every other partition: measured on a
    /// 1,000,000-trade topic whose busiest partition held a third of it, the buffer held up to
    /// eight batches (the poll's bound), 70 MB of a 106 MB heap peak.
    ///
    /// Pausing drops what librdkafka has fetched of the partition and not yet handed over; a
    /// resume fetches again from the consumer's position, the offset after the last record
    /// buffered, so nothing is skipped or read twice, and the next gather wakes the fetcher
    /// ([`wake_fetchers`]). Transient when librdkafka refuses the list.
    ///
    /// On that topic (`kb_1m` of bench/results/2026-12-03-kafka-skew.md, Kafka -> null), peak
    /// RSS went from 200-210 MB to 152-176 MB and wall time from 3.2-3.3 s to 3.3-3.7 s; without
    /// it the smallest partitions were read to their end while the busiest was a quarter
    /// through, with it every batch took each partition's share.
    fn throttle(&mut self, shares: &Shares) -> Result<()> {
        let (mut pause, mut resume) = (Vec::new(), Vec::new());
        for partition in &self.assigned {
            let Some(number) = self.partitions.index_of(partition) else {
                continue;
            };
            let buffered = shares.buffered.get(&number).copied().unwrap_or(0);
            let share = shares.by_number.get(&number).copied().unwrap_or(0);
            let paused = self.paused.contains(partition);
            if !paused && buffered >= 2 * share + PAUSE_MARGIN {
                pause.push(partition.clone());
            } else if paused && buffered < share + PAUSE_MARGIN {
                resume.push(partition.clone());
            }
        }
        if !resume.is_empty() {
            self.consumer()?
                .resume(&partition_list(&resume))
                .map_err(|e| {
                    self.error(format!("cannot resume fetching: {e}"), Retry::Transient)
                })?;
            for p in &resume {
                self.paused.remove(p);
            }
            self.wake.extend(resume);
        }
        if !pause.is_empty() {
            self.consumer()?
                .pause(&partition_list(&pause))
                .map_err(|e| self.error(format!("cannot pause fetching: {e}"), Retry::Transient))?;
            self.paused.extend(pause);
        }
        Ok(())
    }

    /// Resumes fetching of every partition this source paused (before a re-read, which must
    /// reach each partition's end).
    pub(super) fn resume_all(&mut self) -> Result<()> {
        if self.paused.is_empty() {
            return Ok(());
        }
        self.consumer()?
            .resume(&partition_list(&self.paused))
            .map_err(|e| self.error(format!("cannot resume fetching: {e}"), Retry::Transient))?;
        self.wake.extend(std::mem::take(&mut self.paused));
        Ok(())
    }

    /// Reads the partitions' ends again, at most every [`ENDS_REFRESH`] (available-now keeps
    /// the ends at start: its run stops there). The read (a metadata request and one request per
    /// partition) runs beside the polls and its result is taken by the first poll after it is
    /// answered: waited for inside a poll, its round trips held up one batch a second, 1% of the
    /// batches of a 10 ms trigger, which was the live tail's p99.
    async fn refresh_ends(&mut self) -> Result<()> {
        if self.targets.is_some() {
            return Ok(());
        }
        if self.ends_reading.as_ref().is_some_and(|r| r.is_finished()) {
            self.take_ends().await?;
        }
        if self.ends_reading.is_none() && self.ends_read.is_none_or(|t| t.elapsed() >= ENDS_REFRESH)
        {
            let consumer = self.consumer()?;
            let topics = self.config.topics.clone();
            self.ends_reading = Some(tokio::task::spawn_blocking(move || {
                watermarks(&consumer, &topics)
            }));
        }
        Ok(())
    }

    /// Waits for the read of the ends in flight, if any, and keeps what it read.
    async fn take_ends(&mut self) -> Result<()> {
        let Some(reading) = self.ends_reading.take() else {
            return Ok(());
        };
        let marks = reading
            .await
            .map_err(|e| Error::Internal(format!("kafka metadata task failed: {e}")))?;
        match marks {
            Ok(marks) => {
                self.ends = marks.into_iter().map(|(p, (_, end))| (p, end)).collect();
                self.ends_read = Some(Instant::now());
            }
            // Shares fall back on what is buffered; the next poll reads the ends again.
            Err(e) => tracing::debug!(error = %e, "Could not read the partitions' ends."),
        }
        Ok(())
    }

    /// Marks the batch handed out as finished without committing anything (none of its
    /// partitions is this instance's any more, or the source is closing), so that no revocation
    /// waits for it.
    fn give_up_batch(&self) {
        if let Some(consumer) = &self.consumer {
            consumer.context().batch_finished();
        }
    }

    /// Starts a gather of up to a batch of records for the next batches (within the poll's buffer
    /// bound) that runs while the engine decodes, queries and writes the batch just taken, when some
    /// partition still being fetched has records the consumer has not read (by the last read
    /// of the ends): a backlog, whose records are there to be read at once. A source that is
    /// caught up reads nothing ahead, so a live record is never held in a gather until the
    /// next poll. The next poll takes what it read; `close` waits for it and drops it.
    ///
    /// Why: librdkafka hands over records at about 1 CPU-s per 1,000,000 trades but mostly
    /// waits on fetches, and without this the engine's decode and query waited for the poll and
    /// the poll for them.
    async fn read_ahead(&mut self, limits: PollLimits) -> Result<()> {
        if self.buffer.len() >= buffer_bound(limits.max_records) {
            return Ok(());
        }
        let unread = self
            .assigned
            .iter()
            .filter(|p| !self.paused.contains(*p))
            .any(|p| matches!((self.positions.get(p), self.ends.get(p)), (Some(at), Some(end)) if at < end));
        if !unread {
            return Ok(());
        }
        self.start_gather(limits.max_records, limits.max_wait).await
    }

    /// Takes a batch of each partition's share of buffered records (see [`Self::shares`]),
    /// oldest first within each partition; the rest stays buffered in order.
    fn take_batch(&mut self, shares: &Shares, max: usize) -> SourceBatch {
        let buffered = &shares.buffered;
        let mut quota: BTreeMap<u32, usize> = buffered
            .iter()
            .map(|(&p, &n)| (p, n.min(shares.by_number.get(&p).copied().unwrap_or(0))))
            .collect();
        let mut total: usize = quota.values().sum();
        // A partition still short of its share (its records not fetched within the poll's wait)
        // leaves its place to partitions with more buffered: a batch waits for a partition no
        // longer than the poll's wait, and stays full.
        for (p, &n) in buffered {
            if total >= max {
                break;
            }
            let q = quota.entry(*p).or_default();
            let extra = (n - *q).min(max - total);
            *q += extra;
            total += extra;
        }
        // Shares are rounded up to one record each: never more than `max` in all.
        while total > max {
            if let Some(q) = quota.values_mut().max_by_key(|q| **q) {
                *q -= 1;
            }
            total -= 1;
        }
        // What each partition number may still give, in a dense list.
        let mut left: Vec<usize> = Vec::new();
        for (&number, &q) in &quota {
            *dense_slot(&mut left, number) = q;
        }
        let mut records = Vec::with_capacity(total);
        let mut kept = VecDeque::with_capacity(self.buffer.len().saturating_sub(total));
        for r in self.buffer.drain(..) {
            match left.get_mut(r.position.partition as usize) {
                Some(q) if *q > 0 => {
                    *q -= 1;
                    records.push(r);
                }
                _ => kept.push_back(r),
            }
        }
        self.buffer = kept;
        let records = self.partitions.in_partition_order(records);
        let (start, end) = batch_bounds(
            &records,
            &self.buffer,
            &self.partitions,
            &self.positions,
            &mut self.last_end,
        );
        SourceBatch {
            records,
            start: start.to_source_offset(),
            end: end.to_source_offset(),
            rows: None,
        }
    }

    /// Whether every partition of the topics has been read and committed up to its end at start.
    /// A partition of this instance is done when the consumer's position reached that end (a
    /// position counts commit markers and compacted offsets, which no record fills); one of
    /// another instance of the group when the group's committed offset reached it.
    async fn caught_up(&mut self) -> Result<bool> {
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
        Ok(others.iter().all(|p| match committed.get(p) {
            Some(&c) => c >= targets[p].1,
            // Nothing committed yet: only a latest first start has nothing to read there; a
            // partition added since is read from its earliest offset once it is assigned.
            None => self.skipped_by_latest.contains(p),
        }))
    }

    /// The group's committed offset of each of `partitions` that has one (a broker request).
    pub(super) async fn group_committed(
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
        let numbers: Vec<u32> = advanced
            .iter()
            .filter_map(|(p, _)| self.partitions.index_of(p))
            .collect();
        if advanced.is_empty()
            || self
                .buffer
                .iter()
                .any(|r| numbers.contains(&r.position.partition))
        {
            return Ok(());
        }
        let mut end = KafkaOffsets::new();
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
        let mut jumps = offset_jumps(records, &self.partitions, &mut self.expected);
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
        if let Some(fatal) = self
            .consumer
            .as_ref()
            .and_then(|c| c.context().security_failure())
        {
            return self.error(fatal, Retry::Permanent);
        }
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

    /// Makes sure every processed batch is committed in the group: commits the offsets not sent
    /// yet and those of the last commit sent without waiting, and waits (librdkafka sends a
    /// group's commits in order, so the earlier ones are answered by then); its failure is this
    /// call's.
    async fn settle_commit(&mut self) -> Result<()> {
        let mut end = self.in_flight.take().unwrap_or_default();
        if let Some(consumer) = &self.consumer {
            for ((topic, partition), next) in consumer.context().take_uncommitted() {
                end.set(&topic, partition, next);
            }
        }
        if end.iter().next().is_none() {
            return Ok(());
        }
        self.commit_offsets(&end).await
    }

    /// Whether processed offsets go to the group now: at once under available-now (whose end
    /// is judged by what the group committed) or with `commit_interval_ms` 0, else once the
    /// interval has passed since the last commit.
    fn commit_due(&self) -> bool {
        let interval = self.config.commit_interval;
        self.targets.is_some()
            || interval.is_zero()
            || self.last_commit.is_none_or(|t| t.elapsed() >= interval)
    }

    /// Sends the processed offsets not committed yet, of the partitions this instance holds, to
    /// the group without waiting for the answer. Transient when they cannot be sent (they stay
    /// to be sent with the next batch's).
    fn send_uncommitted(&mut self) -> Result<()> {
        let consumer = self.consumer()?;
        let uncommitted = consumer.context().take_uncommitted();
        let mut end = KafkaOffsets::new();
        for ((topic, partition), next) in &uncommitted {
            end.set(topic, *partition, *next);
        }
        let Some(tpl) = self.owned(&end)? else {
            return Ok(());
        };
        if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
            consumer.context().defer_commit(uncommitted);
            return Err(self.error(format!("commit of {end} failed: {e}"), Retry::Transient));
        }
        self.last_commit = Some(Instant::now());
        // What the group holds once the commit arrives; the partitions' next reader, this
        // instance or another, starts there.
        self.committed.extend(offsets_of(&tpl));
        self.in_flight = Some(end);
        Ok(())
    }

    /// The offsets of `end` of the partitions this instance holds, as librdkafka takes them
    /// (`None`: it holds none of them).
    fn owned(&self, end: &KafkaOffsets) -> Result<Option<TopicPartitionList>> {
        let mut tpl = TopicPartitionList::new();
        for (topic, partition, next) in end.iter() {
            if self.assigned.contains(&(topic.to_owned(), partition)) {
                tpl.add_partition_offset(topic, partition, Offset::Offset(next))
                    .map_err(|e| Error::Internal(format!("bad offset list: {e}")))?;
            }
        }
        Ok((tpl.count() > 0).then_some(tpl))
    }

    /// Commits `end` to the group for the partitions this instance holds, and waits for it.
    async fn commit_offsets(&mut self, end: &KafkaOffsets) -> Result<()> {
        let Some(tpl) = self.owned(end)? else {
            return Ok(());
        };
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

/// The most records a poll buffers (with its read-ahead) for batches of `max_records`: enough to
/// wait for every partition's share (see [`BALANCE_BUFFER`]), bounded.
fn buffer_bound(max_records: usize) -> usize {
    max_records.saturating_mul(8).max(BALANCE_BUFFER)
}

/// Wakes the broker threads that fetch `resumed`: librdkafka notices a resumed partition only at
/// its broker thread's next loop, which idles up to a second when it has nothing to fetch (the
/// other partitions paused or at their end), and every batch then waited for it. A request to
/// the partition's leader (its offsets, answered from memory) runs that loop at once. Measured
/// on the skewed 1,000,000-trade topic of [`KafkaSource::throttle`]: without it, 8.1-11.5 s
/// against 3.0 s unpaused; with it and `fetch.wait.max.ms` at 50 ms, 3.5 s.
fn wake_fetchers(consumer: &BaseConsumer<SourceContext>, resumed: &[Partition]) {
    for (topic, partition) in resumed {
        // Only the request matters, not its answer; a failure leaves the wait as it was.
        let _ = consumer.fetch_watermarks(topic, *partition, REQUEST_TIMEOUT);
    }
}

/// The entry of partition `number` in a list indexed by partition number, grown with defaults
/// to hold it: partition numbers are small and dense, and a map look-up per record stood out in
/// the profile.
fn dense_slot<T: Clone + Default>(list: &mut Vec<T>, number: u32) -> &mut T {
    let number = number as usize;
    if number >= list.len() {
        list.resize(number + 1, T::default());
    }
    &mut list[number]
}

/// The start and end of a batch of `records` just taken from the buffer (`still_buffered` is what
/// stays), per partition, and records each end in `last_end` (the next batch's start).
///
/// A partition starts where the previous batch of it ended (else at its first record) and ends
/// one past its last record; where the batch holds the partition's last fetched record, it ends
/// at the consumer's position instead: past the commit markers (and compacted offsets) after that
/// record, so committing it leaves no lag that no record will ever fill.
fn batch_bounds(
    records: &[RawRecord],
    still_buffered: &VecDeque<RawRecord>,
    partitions: &PartitionTable,
    positions: &BTreeMap<Partition, i64>,
    last_end: &mut BTreeMap<Partition, i64>,
) -> (KafkaOffsets, KafkaOffsets) {
    // Per partition number: (first offset, one past the last). Numbers, not names: no copy of a
    // topic name per record.
    let mut spans: BTreeMap<u32, (i64, i64)> = BTreeMap::new();
    for r in records {
        let RecordPosition { partition, offset } = r.position;
        spans
            .entry(partition)
            .and_modify(|span| span.1 = offset + 1)
            .or_insert((offset, offset + 1));
    }
    let buffered: BTreeSet<u32> = still_buffered
        .iter()
        .map(|r| r.position.partition)
        .collect();
    let (mut start, mut end) = (KafkaOffsets::new(), KafkaOffsets::new());
    for (number, (first, mut next)) in spans {
        let key = partitions.partition(number);
        if !buffered.contains(&number)
            && let Some(&position) = positions.get(key)
        {
            next = next.max(position);
        }
        start.set(&key.0, key.1, last_end.get(key).copied().unwrap_or(first));
        end.set(&key.0, key.1, next);
        last_end.insert(key.clone(), next);
    }
    (start, end)
}

/// The offsets skipped between records of one gather, per partition, as `(partition, expected,
/// found)`, where `expected` (updated here) is the offset each partition's next record should
/// have. A skip is a commit marker, an aborted transaction, compaction, or data loss: the caller
/// tells them apart by the partition's earliest kept offset.
fn offset_jumps(
    records: &[RawRecord],
    partitions: &PartitionTable,
    expected: &mut BTreeMap<Partition, i64>,
) -> Vec<(Partition, i64, i64)> {
    let mut jumps = Vec::new();
    // Per partition number of this gather, the next expected offset: the map is read and written
    // once per partition, not once per record (this runs for every record consumed).
    let mut next: Vec<(u32, Option<i64>)> = Vec::new();
    for r in records {
        let RecordPosition { partition, offset } = r.position;
        let slot = match next.iter().position(|(n, _)| *n == partition) {
            Some(i) => i,
            None => {
                let known = expected.get(partitions.partition(partition)).copied();
                next.push((partition, known));
                next.len() - 1
            }
        };
        if let Some(e) = next[slot].1
            && offset > e
        {
            jumps.push((partitions.partition(partition).clone(), e, offset));
        }
        next[slot].1 = Some(offset + 1);
    }
    for (number, next) in next {
        if let Some(e) = next {
            expected.insert(partitions.partition(number).clone(), e);
        }
    }
    jumps
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

    fn describe_position(&self, position: RecordPosition) -> serde_json::Value {
        let (topic, partition) = self.partitions.partition(position.partition);
        serde_json::json!({ "topic": topic, "partition": partition, "offset": position.offset })
    }

    fn partition_name(&self, partition: u32) -> Option<String> {
        let (topic, partition) = self.partitions.partition(partition);
        Some(format!("{topic}/{partition}"))
    }

    fn assigned_partitions(&self) -> Option<Vec<u32>> {
        Some(
            self.assigned
                .iter()
                .filter_map(|p| self.partitions.index_of(p))
                .collect(),
        )
    }

    async fn start(&mut self, request: StartRequest) -> Result<()> {
        let security = super::security::resolve("source", self.config.security.as_ref())?;
        let mut client = super::client_config(
            &self.config.brokers(),
            CONSUMER_DEFAULTS,
            &self.config.properties,
            security.as_ref(),
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
            .create_with_context(SourceContext::new(&client, security.as_ref()))
            .map_err(|e| self.error(format!("cannot create consumer: {e}"), Retry::Permanent))?;
        let consumer = Arc::new(consumer);
        // The partitions there are now, their ends, and whether the group committed any of them:
        // with no checkpoint and no commit, this is the query's first start.
        let c = consumer.clone();
        let topics = self.config.topics.clone();
        let (marks, committed) = tokio::task::spawn_blocking(move || {
            let read = || {
                let marks = watermarks(&c, &topics)?;
                let partitions: Vec<Partition> = marks.keys().cloned().collect();
                let committed = committed_positions(&c, &partitions)?;
                Ok::<_, KafkaError>((marks, committed))
            };
            let result = read();
            if result.is_err() {
                // librdkafka queues a consumer's log lines and errors until it is polled
                // (rdkafka sets log.queue), so the reason of a refused login or failed TLS
                // handshake reaches the context only here. Nothing is subscribed yet: the
                // poll serves events and returns no message.
                while c.poll(Duration::ZERO).is_some() {}
            }
            result
        })
        .await
        .map_err(|e| Error::Internal(format!("kafka metadata task failed: {e}")))?
        .map_err(|e| match consumer.context().security_failure() {
            Some(fatal) => self.error(fatal, Retry::Permanent),
            None => self.error(
                format!("cannot read the topics' partitions and offsets: {e}"),
                Retry::Transient,
            ),
        })?;
        // The checkpoint's offsets of these topics: where this query processed each partition
        // to, which is where it starts when the group's committed offset is behind.
        let processed: Vec<(Partition, i64)> = match &request.committed {
            Some(offset) => self
                .parse_offset(offset)?
                .iter()
                .filter(|(topic, _, _)| self.config.topics.iter().any(|t| t == topic))
                .map(|(topic, partition, next)| ((topic.to_owned(), partition), next))
                .collect(),
            None => Vec::new(),
        };
        let checkpointed = !processed.is_empty();
        consumer.context().record_processed(processed);
        let first_start = !checkpointed && committed.is_empty();
        // Checked against the broker's partitions before subscribing: a partition named by
        // mistake, or one left out, would otherwise start at the end and skip its records.
        let partitions: BTreeSet<Partition> = marks.keys().cloned().collect();
        if let Some(message) = self
            .config
            .starting_offsets
            .mismatch(&partitions, first_start)
        {
            return Err(self.error(message, Retry::Permanent));
        }
        self.skipped_by_latest =
            if first_start && self.config.starting_offsets == StartingOffsets::Latest {
                partitions.clone()
            } else {
                BTreeSet::new()
            };
        consumer.context().set_policy(StartPolicy {
            starting_offsets: self.config.starting_offsets.clone(),
            first_start,
            initial_partitions: partitions,
            fail_on_data_loss: self.config.fail_on_data_loss,
        });
        let topics: Vec<&str> = self.config.topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&topics)
            .map_err(|e| self.error(format!("cannot subscribe: {e}"), Retry::Permanent))?;
        self.ends = marks
            .iter()
            .map(|(p, &(_, end))| (p.clone(), end))
            .collect();
        self.ends_read = Some(Instant::now());
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

    async fn fetch_range(&mut self, range: &OffsetRange) -> Result<SourceBatch> {
        let (start, end) = (
            self.parse_offset(&range.start)?,
            self.parse_offset(&range.end)?,
        );
        let batch = self.refetch(&start, &end).await?;
        self.consumer()?.context().batch_handed_out();
        Ok(batch)
    }

    async fn poll(&mut self, limits: PollLimits) -> Result<Poll> {
        // What the last poll's read-ahead read, and the rebalances it served, first.
        self.finish_gather().await?;
        // Batch ends held back by the commit interval go out once it has passed, also when no
        // batch follows them.
        if self.commit_due() {
            self.send_uncommitted()?;
        }
        // Available-now with every partition read and committed up to its end at start: a gather
        // would only wait out `max_wait` for records that are not to be read.
        if self.targets.is_some() && self.caught_up().await? {
            return Ok(Poll::Exhausted);
        }
        // Partitions short of this batch's share fetch again before the first gather waits.
        let shares = self.shares(limits.max_records);
        self.throttle(&shares)?;
        if self.buffer.len() < limits.max_records {
            self.gather(limits.max_records - self.buffer.len(), limits.max_wait)
                .await?;
        } else {
            // Read ahead far enough, but the consumer is still polled at every batch, without
            // waiting: librdkafka serves rebalances only in a poll, and a member that keeps
            // taking batches from its buffer would never let a joining member have partitions.
            self.gather(1, Duration::ZERO).await?;
        }
        self.refresh_ends().await?;
        // Fetch on until every partition has its share buffered (librdkafka hands over one
        // partition's fetched records after another), for at most the poll's wait again (the
        // first gather may have spent it waiting for the group to assign partitions) and within
        // a bounded buffer.
        let deadline = Instant::now() + limits.max_wait;
        let mut shares = self.shares(limits.max_records);
        self.throttle(&shares)?;
        let bound = buffer_bound(limits.max_records);
        while Self::short_of(&shares) && self.buffer.len() < bound {
            let wait = deadline.saturating_duration_since(Instant::now());
            if wait.is_zero() {
                break;
            }
            let before = self.buffer.len();
            self.gather(limits.max_records, wait).await?;
            if self.buffer.len() == before {
                break;
            }
            shares = self.shares(limits.max_records);
            self.throttle(&shares)?;
        }
        if !self.buffer.is_empty() {
            let batch = self.take_batch(&shares, limits.max_records);
            self.consumer()?.context().batch_handed_out();
            // Partitions the batch took down to less than their next share resume now, so
            // that their fetch, like the read-ahead, runs while the batch is processed.
            let shares = self.shares(limits.max_records);
            self.throttle(&shares)?;
            self.read_ahead(limits).await?;
            return Ok(Poll::Batch(batch));
        }
        self.commit_marker_positions().await?;
        if self.caught_up().await? {
            return Ok(Poll::Exhausted);
        }
        Ok(Poll::Idle)
    }

    /// Records the batch ending at `end` as processed and sends its commit to the group without
    /// waiting for the broker's answer, so that it travels while the next batch is polled
    /// (Kafka's `commitAsync` after a batch, `commitSync` at close), at most once per
    /// `commit_interval_ms`: the ends of batches in between go with the next commit, with a
    /// revoked partition's commit, or at close. Transient when the commit cannot be sent.
    ///
    /// Why no answer is needed: the engine's checkpoint records the batch as committed once this
    /// returns, and a restart resumes each partition at the checkpoint's offset where the group's
    /// is behind it (a crash before the commit was sent or arrived); librdkafka sends the commit
    /// ahead of anything a later rebalance sends, so the partitions' next owner reads on past the
    /// batch; and `close` commits the last ends again and waits. A commit the broker refuses is
    /// logged (librdkafka's COMMITFAIL warning) and superseded by the next one, which covers its
    /// offsets.
    async fn commit(&mut self, end: &SourceOffset) -> Result<()> {
        let end = self.parse_offset(end)?;
        let Some(tpl) = self.owned(&end)? else {
            self.give_up_batch();
            return Ok(());
        };
        let consumer = self.consumer()?;
        let ends: Vec<_> = offsets_of(&tpl).collect();
        consumer.context().record_processed(ends.iter().cloned());
        consumer.context().defer_commit(ends);
        // A revocation waiting for this batch commits the ends deferred above.
        consumer.context().batch_finished();
        if self.commit_due() {
            self.send_uncommitted()?;
        }
        Ok(())
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
            ("paused_partitions", self.paused.len() as u64),
            ("buffered_records", self.buffer.len() as u64),
        ]
    }

    /// Each assigned partition's end as last read (at start, then at most every
    /// [`ENDS_REFRESH`] while polling) less where the last batch of it ended (else its committed
    /// offset): records newer than the last read of the ends are not counted yet.
    fn backlog(&self) -> Vec<(String, u64)> {
        self.assigned
            .iter()
            .filter_map(|partition| {
                let end = *self.ends.get(partition)?;
                let next = self
                    .last_end
                    .get(partition)
                    .or_else(|| self.committed.get(partition))?;
                let (topic, number) = partition;
                Some((
                    format!("{topic}/{number}"),
                    u64::try_from(end - next).unwrap_or(0),
                ))
            })
            .collect()
    }

    async fn close(&mut self) -> Result<()> {
        // A batch handed out and not committed is given up (a revocation must not wait for it
        // while the group is left). A read of the ends or a read-ahead holds the consumer too:
        // the consumer is closed here, not on their thread after this returns.
        self.give_up_batch();
        // What a read-ahead read is dropped with the rest of the buffer, and so is a failure of
        // it: no batch holds those records, and the run that closes the source is over.
        if let Some(gathering) = self.gathering.take()
            && let Ok((_, Err(e))) = gathering.await
        {
            tracing::debug!(error = %e, "The read-ahead at close failed.");
        }
        self.take_ends().await?;
        // The last batch's commit, answered before the consumer leaves the group.
        self.settle_commit().await?;
        if let Some(consumer) = self.consumer.take() {
            tokio::task::spawn_blocking(move || leave_group(&consumer))
                .await
                .map_err(|e| Error::Internal(format!("kafka close task failed: {e}")))?;
        }
        Ok(())
    }
}

/// A source dropped without `close` (an error path, a test's simulated crash) still leaves the
/// group before its consumer is dropped: the consumer's own `Drop` would otherwise answer the
/// revoke from inside its close, which can hang forever (see [`leave_group`]). Nothing is
/// committed here, so what was handed out but not committed is read again by the next owner.
impl Drop for KafkaSource {
    fn drop(&mut self) {
        // A read-ahead ends within its poll's wait once no revocation waits for a batch; another
        // holder still running after that (a read of the ends) drops the last reference later,
        // and the group then sees this member leave when its session times out.
        self.give_up_batch();
        if let Some(gathering) = self.gathering.take() {
            let deadline = Instant::now() + LEAVE_WITHIN;
            while !gathering.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        if let Some(consumer) = self.consumer.take().and_then(|c| Arc::try_unwrap(c).ok()) {
            leave_group(&consumer);
        }
    }
}

/// How long a close waits for the group to take back this member's partitions.
const LEAVE_WITHIN: Duration = Duration::from_secs(10);

/// Leaves the group with the consumer still open: unsubscribes, then polls until the revoke this
/// raises has been answered, no partition is assigned and a poll served no further rebalance (one
/// already queued, such as an assignment not yet taken, is served by the next poll at once).
///
/// Why before dropping the consumer: its `Drop` closes it and serves what is queued, and answering
/// a rebalance from inside that close can block forever in `rd_kafka_assign` (librdkafka issue
/// #4884, open; seen here as a run that never exited). With nothing left to revoke, the close
/// answers nothing. Messages still fetched are dropped: no batch holds them and nothing was
/// committed for them, so the partition's next owner reads them.
fn leave_group(consumer: &BaseConsumer<SourceContext>) {
    consumer.unsubscribe();
    let deadline = Instant::now() + LEAVE_WITHIN;
    loop {
        let served = consumer.context().rebalances();
        let _ = consumer.poll(Duration::from_millis(100));
        let quiet = consumer.context().rebalances() == served;
        let unassigned = consumer.assignment().map_or(true, |a| a.count() == 0);
        if quiet && unassigned {
            return;
        }
        if Instant::now() >= deadline {
            tracing::warn!(
                "The group did not take back this instance's partitions within {LEAVE_WITHIN:?}; closing the consumer anyway."
            );
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;

    fn records(table: &mut PartitionTable, at: &[(&str, i32, i64)]) -> VecDeque<RawRecord> {
        at.iter()
            .map(|(t, p, o)| RawRecord {
                position: table.position(t, *p, *o),
                payload: Vec::new(),
                frame: None,
                rejected: None,
                received_at: SystemTime::now(),
            })
            .collect()
    }

    fn key(topic: &str, partition: i32) -> Partition {
        (topic.to_owned(), partition)
    }

    #[test]
    fn a_batch_spans_from_the_last_end_to_past_its_records_or_to_the_position() {
        let mut table = PartitionTable::default();
        let mut buffer = records(
            &mut table,
            &[
                ("t", 0, 4),
                ("t", 1, 0),
                ("t", 0, 5),
                ("t", 1, 1),
                ("t", 1, 2),
            ],
        );
        // The consumer stands past commit markers in both partitions.
        let positions = BTreeMap::from([(key("t", 0), 8), (key("t", 1), 5)]);
        // The previous batch of t/0 ended at 3 (offset 3 was a marker, no record).
        let mut last_end = BTreeMap::from([(key("t", 0), 3)]);
        let batch: Vec<RawRecord> = buffer.drain(..4).collect();
        let (start, end) = batch_bounds(&batch, &buffer, &table, &positions, &mut last_end);
        assert_eq!(start.to_string(), r#"{"t":{"0":3,"1":0}}"#);
        // t/0's last fetched record is in the batch: its end is the position, past the markers;
        // t/1 still has a record buffered: its end is one past its last record in the batch.
        assert_eq!(end.to_string(), r#"{"t":{"0":8,"1":2}}"#);
        assert_eq!(
            last_end,
            BTreeMap::from([(key("t", 0), 8), (key("t", 1), 2)])
        );

        let batch: Vec<RawRecord> = buffer.drain(..).collect();
        let (start, end) = batch_bounds(&batch, &buffer, &table, &positions, &mut last_end);
        assert_eq!(start.to_string(), r#"{"t":{"1":2}}"#);
        assert_eq!(end.to_string(), r#"{"t":{"1":5}}"#);
    }

    #[test]
    fn skipped_offsets_are_found_per_partition_across_gathers() {
        let mut table = PartitionTable::default();
        let mut expected = BTreeMap::from([(key("t", 0), 10)]);
        let gathered = records(
            &mut table,
            &[
                ("t", 0, 10),
                ("t", 0, 11),
                ("t", 1, 0),
                ("t", 0, 14),
                ("t", 1, 1),
            ],
        );
        let jumps = offset_jumps(&Vec::from(gathered), &table, &mut expected);
        assert_eq!(jumps, [(key("t", 0), 12, 14)]);
        assert_eq!(
            expected,
            BTreeMap::from([(key("t", 0), 15), (key("t", 1), 2)])
        );
        // The next gather continues from there.
        let gathered = records(&mut table, &[("t", 1, 4)]);
        let jumps = offset_jumps(&Vec::from(gathered), &table, &mut expected);
        assert_eq!(jumps, [(key("t", 1), 2, 4)]);
    }
}
