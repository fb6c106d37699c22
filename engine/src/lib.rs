//! # coinstream's engine
//!
//! A micro-batch streaming runtime in the manner of Spark Structured Streaming, built on Arrow and
//! DataFusion. It knows nothing of exchanges, Kafka, Cassandra or file layouts: sources and sinks
//! are traits ([`Source`], [`Sink`], [`DeadLetterSink`]) that the `connectors` crate implements,
//! and the `coinstream` binary wires config to components.
//!
//! ## Data flow of one micro-batch ([`runtime::StreamingQuery`])
//! ```text
//! trigger tick ─► Source::poll ─► checkpoint offsets/<id> ─► decode (declared schema: a flat
//!      JSON fast path, arrow-json for the rest) ─► [watermark: late rows out]
//!      ─► InputSlot (the input table, `input.table`)
//!      ─► PlannedTransform::execute (plan made once at start)
//!      ─► [stateful: merge into the state, emit, the plan above the aggregation]
//!      ─► Sink::write + DeadLetterSink::write ─► [state/<id>] ─► Source::commit
//!      ─► checkpoint commits/<id> ─► BatchProgress
//! ```
//! A row the transform fails on (an overflow, a failed cast) is found by bisection and
//! dead-lettered; the rest of the batch flows ([`runtime`] module docs).
//! Nothing is committed before the sink acknowledged every row; a crash in between leaves
//! `offsets/<id>` without `commits/<id>`, and the next start replays exactly that range with the
//! same batch id: a sink that writes idempotently per batch id (Delta with its `txn` action,
//! Parquet, Cassandra) stores it once; an append-only one (Kafka, as Spark's Kafka sink) may hold
//! it twice (at-least-once).
//!
//! ## Stateful aggregation ([`stateful`], [`window`])
//! A transform that aggregates the stream keeps each group's partial aggregates across batches, as
//! Spark's streaming aggregation does. The plan is split at its aggregation: per batch the part
//! below runs with the aggregation in `Partial` mode, the rows are merged into the state
//! (DataFusion's accumulators), the groups to write (append: windows the watermark closed; update:
//! groups the batch changed) are evaluated and run through the part above. The watermark (the
//! largest event time seen minus a delay) drops late rows before the transform. The state is
//! written to the checkpoint (`state/<batchId>.arrow`) before the batch commits, so a replay meets
//! the state it was planned against.
//!
//! ## Positions belong to the source ([`position`])
//! A batch's start and end are [`SourceOffset`]s: JSON that the source writes and alone reads
//! (Spark's per-source `Offset`), holding everything it needs to continue exactly there (a Kafka
//! source's `{"topic":{"0":42}}`, a capture's file, line and last trade id per product). The
//! engine stores them in `offsets/<id>`, shows them in progress records and hands them back on
//! restart; it never looks inside, and checkpoints of older versions reach the source in a
//! documented legacy form ([`checkpoint`]). Each record carries a compact [`RecordPosition`] (two
//! numbers, no allocation); only a dead letter or an error asks the source to describe it
//! ([`Source::describe_position`]), so a Kafka letter says `{"topic":"t","partition":0,"offset":5}`
//! and a capture letter `{"file":"/data/feed.jsonl","line":12}`.
//!
//! ## Errors and retries ([`error`], [`retry`])
//! Every failure is an [`Error`] that keeps the error it came from as its `source()` (an rdkafka,
//! scylla or HTTP error wrapped by the connectors, DataFusion's for SQL), and [`report`] prints the
//! whole chain, each cause once. A source or sink failure carries a [`Retry`] class: the
//! connector only says whether it is transient (a broker or node that is down, a timeout) or
//! permanent (bad credentials, a schema that does not match); the runtime alone retries, with the
//! one jittered exponential [`retry::Backoff`], around healthcheck, poll, write, dead letters and
//! commit. A permanent error stops the query without committing the batch it was in.
//!
//! ## One batch without the loop
//! [`runtime::StreamingQuery::run_one_batch`] runs a first batch through the very code a run uses
//! (poll, decode, transform with row isolation) and writes and commits nothing: `explain --analyze`
//! shows its plan with per-operator metrics, so what it measures is what `run` does.
//!
//! ## Tasks and shutdown
//! The query runs as one task: batches are sequential, each batch's query may use
//! `target_partitions` threads. Shutdown (a `watch` flag) is checked between batches and while
//! retrying; a batch in flight is finished, then the sink, the dead-letter output and the source are
//! closed in that order. The sink's healthcheck and the source's start run side by side (both are
//! network round trips); a shutdown before both are done ends the run at once with nothing read
//! (the healthcheck has no side effects, so one in progress is dropped).
//!
//! ## Runs that could use nothing
//! A run that ends by itself (available-now done, or the source exhausted) having received
//! records and dead-lettered every one, with no row written, fails with
//! [`Error::NothingUsable`] after committing them: the one check, for every source, that input
//! which does not fit the declared table is not hidden behind a successful exit.
//!
//! ## Adding a connector
//! Implement [`Source`] (emit one JSON object per business event with its [`RecordPosition`], and
//! say where each batch starts and ends with your own [`SourceOffset`] JSON) or [`Sink`] in the
//! `connectors` crate, add its config to the tagged enum there, and nothing here changes.

#![warn(missing_docs)]

pub mod checkpoint;
pub mod context;
pub mod decimal;
pub mod decode;
pub mod error;
mod flat_json;
#[cfg(test)]
mod fuzz;
mod isolate;
pub mod position;
pub mod progress;
pub mod reference;
pub mod retry;
pub mod runtime;
pub mod schema;
pub mod sink;
pub mod source;
pub mod stateful;
pub mod transform;
pub mod trigger;
pub mod window;

pub use bytes::Bytes;
pub use error::{BoxError, Error, Result, Retry, report};
pub use position::{OffsetRange, RecordPosition, SourceOffset};
pub use sink::{DeadLetter, DeadLetterSink, Sink};
pub use source::{Poll, PollLimits, RawRecord, Source, SourceBatch, StartRequest};
