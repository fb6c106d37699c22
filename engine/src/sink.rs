//! The contracts of sinks (the transform's rows) and dead-letter outputs (messages that could not
//! be decoded). Both are called by the runtime only, one batch at a time, in batch-id order.
//!
//! # Call order
//! [`Sink::healthcheck`] once before any data flows, [`Sink::bind_query`] once with the query's
//! id, [`Sink::write`] once per batch (again with the same batch id if the engine restarted
//! before committing it: writes must be idempotent per batch id), [`Sink::close`] once on
//! shutdown. A `write` that returns `Ok` has made every row
//! durable; the source is committed only after that.
//!
//! # Errors
//! Every method fails with [`Error::Sink`](crate::Error::Sink), whose `retry` says whether trying
//! again may help and whose source is the client library's error. The runtime retries
//! [`Retry::Transient`](crate::Retry) failures of `healthcheck` and `write` with its backoff
//! ([`crate::retry`]) until they succeed or the run is stopped (the batch then stays
//! uncommitted); a permanent failure stops the run at once. A sink never sleeps and retries on
//! its own (a driver's immediate retry on another node is fine).

use arrow::record_batch::RecordBatch;
use async_trait::async_trait;

use crate::error::Result;
use crate::position::RecordPosition;
use crate::source::RawRecord;

/// Where a transform's output goes.
#[async_trait]
pub trait Sink: Send {
    /// A short name for logs and progress.
    fn description(&self) -> String;

    /// Does what `write` will do, without side effects (e.g. prepares the insert statement).
    ///
    /// # Errors
    /// Transient when the service cannot be reached (the runtime waits for it, as for a sink that
    /// goes down mid-run); permanent when writing cannot work (a table whose columns do not
    /// match, refused credentials, a folder that cannot be written).
    async fn healthcheck(&mut self) -> Result<()> {
        Ok(())
    }

    /// Called once per run, after `healthcheck` and before the first `write`, with the query's
    /// id and how many batches it committed before this run (0 at its first start). The id is
    /// Spark's `queryId`, kept in the checkpoint's metadata: the same across restarts of one
    /// query, new for a new checkpoint folder (without a checkpoint, new at every run). A sink
    /// that recognises a replayed batch by itself keys the batch ids it records by it (Delta's
    /// `txn` action: application id and version, as Spark's Delta sink writes them).
    ///
    /// # Errors
    /// Permanent when the sink's target cannot hold what the query says it wrote (a table that
    /// does not exist although batches were committed: they went elsewhere, or it was deleted).
    async fn bind_query(&mut self, _query_id: &str, _committed_batches: u64) -> Result<()> {
        Ok(())
    }

    /// Writes one batch's rows; returns once every row is durable.
    ///
    /// # Errors
    /// Transient when some rows may not be durable but a retry may make them so (timeouts, an
    /// unreachable service: the runtime writes the same batch again); permanent when the rows
    /// cannot be written (a null in a key column, refused credentials).
    async fn write(&mut self, batch_id: u64, batches: &[RecordBatch]) -> Result<()>;

    /// Flushes and releases resources.
    ///
    /// # Errors
    /// Reported as the run's error (a Parquet file whose footer could not be written).
    async fn close(&mut self) -> Result<()> {
        Ok(())
    }
}

/// A message that could not become a row, with where it came from and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Where the message came from, as its source describes it
    /// ([`crate::Source::describe_position`]): e.g. `{"topic":"t","partition":0,"offset":5}` for a
    /// Kafka record. The runtime sets it before any dead-letter output sees the letter; until then
    /// it is the neutral form of `record_position`.
    pub position: serde_json::Value,
    /// The same place in the compact form the record carried.
    pub record_position: RecordPosition,
    /// The message exactly as received (the feed frame, before any conversion by the source).
    pub raw: Vec<u8>,
    /// The record the source converted the message into, when that differs from `raw` (what the
    /// decoder or the transform saw).
    pub record: Option<Vec<u8>>,
    /// Why it was rejected.
    pub reason: String,
}

impl DeadLetter {
    /// The dead letter of `record`: its frame as received and, when the source converted it into
    /// JSON, the converted payload. Its `position` is the neutral description of the record's
    /// position (the runtime replaces it with the source's).
    pub fn from_record(record: &RawRecord, reason: impl Into<String>) -> Self {
        let (raw, converted) = match &record.frame {
            // An empty payload beside a frame: the source built the row itself (no JSON).
            Some(frame) if record.payload.is_empty() => (frame.to_vec(), None),
            Some(frame) => (frame.to_vec(), Some(record.payload.clone())),
            None => (record.payload.clone(), None),
        };
        Self {
            position: record.position.to_json(),
            record_position: record.position,
            raw,
            record: converted,
            reason: reason.into(),
        }
    }
}

/// Where dead letters go.
#[async_trait]
pub trait DeadLetterSink: Send {
    /// A short name for logs.
    fn description(&self) -> String;

    /// Stores one batch's dead letters durably (idempotent per batch id, as [`Sink::write`]).
    ///
    /// # Errors
    /// As [`Sink::write`]: transient failures are retried by the runtime, and the batch is not
    /// committed before its dead letters are stored; a permanent one (a topic that does not
    /// exist, a letter the output refuses even cut down) stops the run.
    async fn write(&mut self, batch_id: u64, letters: &[DeadLetter]) -> Result<()>;

    /// Flushes and releases resources.
    ///
    /// # Errors
    /// Reported as the run's error.
    async fn close(&mut self) -> Result<()> {
        Ok(())
    }
}
