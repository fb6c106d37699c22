//! The contract every source implements. A source hands out raw messages (one per business event,
//! bytes as they were on the wire after unwrapping the venue's envelope), each with its compact
//! [`RecordPosition`], and says where each batch starts and ends with a [`SourceOffset`]: JSON the
//! source defines, holding everything it needs to continue exactly there (Spark's per-source
//! `Offset`). The engine decodes the messages and stores the offsets; nothing is committed until
//! the sink has acknowledged the batch.
//!
//! # Call order
//! 0. [`Source::build_rows`] once, if the engine's decoder can build rows of the input table.
//! 1. [`Source::start`] once, with the end offset of the last batch the engine's checkpoint holds
//!    as committed (if any).
//! 2. If the checkpoint holds a batch that was planned but never committed,
//!    [`Source::fetch_range`] once, for exactly that batch's [`OffsetRange`].
//! 3. [`Source::poll`] repeatedly, one call per trigger (the batch's offsets are saved in the
//!    checkpoint before it is processed), then [`Source::commit`] with the batch's end offset after
//!    the sink acknowledged it. `poll` is never called again before the previous batch is
//!    committed.
//! 4. [`Source::close`] once on shutdown.
//!
//! [`Source::describe_position`] may be called at any time after `start`, for records of the
//! current batch (to describe a dead letter or an error).
//!
//! # Offsets of older checkpoints
//! Checkpoints written before offsets were per source hold Kafka's shape
//! (`{"topic":{"partition":offset}}`) and, from one version on, the source's state beside it; see
//! [`crate::checkpoint`] for how those reach the source. A source whose offset shape changed
//! parses the old shape too, so a restart after an upgrade loses nothing.
//!
//! Cancellation: the runtime may drop a `poll` future when shutting down; a source must not lose
//! records by that (records are only "taken" once committed).
//!
//! # Errors
//! Every method fails with [`Error::Source`](crate::Error::Source), whose `retry` says whether
//! trying again may help and whose source is the client library's error. The runtime retries
//! [`Retry::Transient`](crate::Retry) failures of `poll` and `commit` with its backoff
//! ([`crate::retry`]) until they succeed or the run is stopped; any other failure stops the run
//! with the batch uncommitted. A source never sleeps and retries on its own.

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;

use crate::decode::{FlatRows, RowLayout};
use crate::error::Result;
use crate::position::{OffsetRange, RecordPosition, SourceOffset};

/// One raw message from a source.
#[derive(Debug, Clone)]
pub struct RawRecord {
    /// Where the message came from, compactly ([`Source::describe_position`] says it in words).
    pub position: RecordPosition,
    /// The message body: one JSON object in the declared schema; empty when the source built
    /// the message's row itself ([`SourceBatch::rows`]).
    pub payload: Vec<u8>,
    /// The message as it was received, when `payload` is a conversion of it (e.g. a feed frame
    /// turned into a bus record); `None` when `payload` is the message as received. Only dead
    /// letters copy it, so a source can hand out a cheap slice of its read buffer.
    pub frame: Option<Bytes>,
    /// Set when the source already knows the message is unusable (e.g. a feed line that is not
    /// JSON): the engine dead-letters it with this reason instead of decoding it.
    pub rejected: Option<String>,
    /// When the message was received (for latency metrics).
    pub received_at: SystemTime,
}

/// The records of one micro-batch and the offsets it spans.
#[derive(Debug, Clone, Default)]
pub struct SourceBatch {
    /// The records, in the order the source read them.
    pub records: Vec<RawRecord>,
    /// Where the batch starts: what [`Source::fetch_range`] needs to read it again.
    pub start: SourceOffset,
    /// Where the batch ends: what [`Source::commit`] is given, and where a restart continues.
    pub end: SourceOffset,
    /// Rows the source built itself for some of `records` (after [`Source::build_rows`]), at
    /// their positions in `records` ([`FlatRows::accepted`]); those records' `payload`s are
    /// empty and only the others are decoded. `None` from sources that hand over JSON only.
    pub rows: Option<FlatRows>,
}

impl SourceBatch {
    /// The offsets the batch spans: what [`Source::fetch_range`] is given to read it again.
    pub fn range(&self) -> OffsetRange {
        OffsetRange {
            start: self.start.clone(),
            end: self.end.clone(),
        }
    }
}

/// What a poll returned.
#[derive(Debug)]
pub enum Poll {
    /// New records. A batch may also hold no records but a moved offset (e.g. heartbeats skipped).
    Batch(SourceBatch),
    /// Nothing new right now.
    Idle,
    /// The source will never have more (a finite source read to its end, or, with
    /// `available_now`, everything that was there at start was handed out).
    Exhausted,
}

/// Limits on one poll, from the trigger.
#[derive(Debug, Clone, Copy)]
pub struct PollLimits {
    /// At most this many records in the batch (Spark's `maxOffsetsPerTrigger`).
    pub max_records: usize,
    /// Return by then, with what has arrived (possibly nothing).
    pub max_wait: Duration,
}

/// How the engine starts a source.
#[derive(Debug, Clone, Default)]
pub struct StartRequest {
    /// The end offset of the last committed batch in the engine's checkpoint, if any. A source
    /// with its own committed positions (a Kafka consumer group) may prefer those where they are
    /// ahead (another instance read further), but must start from this one where its own lag
    /// behind it: it may have returned from [`Source::commit`] before its commit was durable.
    pub committed: Option<SourceOffset>,
    /// Process what is available at start, then report [`Poll::Exhausted`].
    pub available_now: bool,
}

/// A source of raw messages. See the module docs for the call order.
#[async_trait]
pub trait Source: Send {
    /// A short name for logs and progress (the source's kind and what it reads).
    fn description(&self) -> String;

    /// What the checkpoint records to recognise the source on a later start: a query whose
    /// source gives another identity is refused the checkpoint. It must not depend on how the
    /// user spelled a path (use a canonical path) nor on settings that may change between runs
    /// without changing what is read. The default is [`Source::description`].
    fn identity(&self) -> String {
        self.description()
    }

    /// Identities older versions recorded for this same source (under a name it no longer has):
    /// a checkpoint recorded under one of them is this query's. The default is none.
    fn former_identities(&self) -> Vec<String> {
        Vec::new()
    }

    /// Where a record came from, for people: JSON naming what the source reads in its own terms
    /// (a Kafka record `{"topic":"t","partition":0,"offset":5}`, a capture line
    /// `{"file":"/data/feed.jsonl","line":12}`). Called for dead letters and errors only, never
    /// per record. The default is [`RecordPosition::to_json`].
    fn describe_position(&self, position: RecordPosition) -> serde_json::Value {
        position.to_json()
    }

    /// For a source whose parts move between instances of a query (a Kafka consumer group's
    /// partitions): the stable name of the part that records with `partition` in their
    /// [`RecordPosition`] come from (`"topic/3"`), which keys that part's aggregation state in a
    /// shared state store. `None` (the default) for a source whose parts never move.
    fn partition_name(&self, partition: u32) -> Option<String> {
        let _ = partition;
        None
    }

    /// For a source whose parts move between instances: the parts this instance reads now, as
    /// [`RecordPosition::partition`] numbers. A stateful query drops the state of a part it no
    /// longer reads (its new owner takes it from the shared state store). `None` (the default):
    /// every part is this instance's.
    fn assigned_partitions(&self) -> Option<Vec<u32>> {
        None
    }

    /// Offers the builder of the input table's rows, before [`Source::start`]. A source that
    /// parses each message itself (a feed frame into a trade) may build rows with it
    /// ([`RowLayout::builder`]) and hand them over in [`SourceBatch::rows`] instead of writing
    /// JSON for the engine to parse again; a message whose row the builder refuses is handed
    /// over as JSON, as before. The default ignores the offer.
    fn build_rows(&mut self, layout: RowLayout) {
        let _ = layout;
    }

    /// Prepares to read; see [`StartRequest`].
    ///
    /// # Errors
    /// Permanent failures stop the run (a committed offset that is not this source's: another
    /// source's checkpoint); transient ones (a service that cannot be reached, a Kafka group
    /// coordinator not elected yet) are retried by the runtime with its backoff until a stop, by
    /// calling `start` again with the same request, as for a sink down at start.
    async fn start(&mut self, request: StartRequest) -> Result<()>;

    /// Reads exactly the records of `range` again (a batch that was planned but not committed
    /// before a crash). The default refuses: a source that cannot replay must not pretend to.
    ///
    /// # Errors
    /// Permanent when the range cannot be read exactly again (the default; records that expired
    /// from the source; offsets that are not this source's); the run stops, with the batch still
    /// planned in the checkpoint.
    async fn fetch_range(&mut self, range: &OffsetRange) -> Result<SourceBatch> {
        let _ = range;
        Err(crate::Error::source_failed(
            self.description(),
            "this source cannot replay an uncommitted batch",
            crate::error::Retry::Permanent,
        ))
    }

    /// Returns the next batch, waiting at most `limits.max_wait`.
    ///
    /// # Errors
    /// Transient when the service is unreachable or timed out (the runtime polls again after a
    /// backoff); permanent when reading cannot work (refused credentials, an unsupported codec,
    /// a feed that sends nothing usable).
    async fn poll(&mut self, limits: PollLimits) -> Result<Poll>;

    /// Makes the batch ending at `end` durable at the source (after the sink acknowledged it).
    /// The engine records the batch as committed in its checkpoint as soon as this returns; a
    /// source may return once the commit is sent, before it is durable, when its
    /// [`Source::start`] resumes from [`StartRequest::committed`] wherever its own record is
    /// behind (the Kafka source does, so its commit travels while the next batch is polled, and
    /// it commits to its group at most once per `commit_interval_ms`).
    ///
    /// # Errors
    /// Transient when the commit may succeed later (the runtime retries it; the rows are already
    /// written, so a commit that never succeeds means they are written again after a restart).
    async fn commit(&mut self, end: &SourceOffset) -> Result<()>;

    /// Counters the source keeps (e.g. reconnects, gaps), reported with each batch's progress
    /// (`sources[].metrics`), read after the batch was committed. Each is a count since the
    /// source was built, except where its name says it is a level (`assigned_partitions`,
    /// `paused_partitions`, `buffered_records`).
    fn metrics(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }

    /// Per part of the source, how many records it knows to be available past the end of the
    /// last batch it handed out: the query's lag behind the source (Spark's "offsets behind
    /// latest"). Each part is named as [`Source::partition_name`] names it (`"topic/3"`), and
    /// only the parts this instance reads are listed. Read after the batch was committed, for
    /// its progress (`sources[].offsetsBehindLatest`, with their minimum, maximum and mean in
    /// `sources[].metrics`); it must answer from what the source already knows (the ends it
    /// last read), never with a request. Empty (the default): a source without a readable end
    /// (a feed, a generator).
    fn backlog(&self) -> Vec<(String, u64)> {
        Vec::new()
    }

    /// Releases the source's resources.
    ///
    /// # Errors
    /// Reported as the run's error, after every batch was committed.
    async fn close(&mut self) -> Result<()> {
        Ok(())
    }
}
