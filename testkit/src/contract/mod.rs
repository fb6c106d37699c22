//! The contract every source and every sink runs, as Vector's component compliance tests are
//! for its components: one driver that calls a connector the way the engine's runtime does
//! (`engine::runtime`) and checks what the traits' docs promise (`engine::source`,
//! `engine::sink`). A connector's test supplies a fixture (how to build it over test data, what
//! it promises) and calls [`check_source`], [`check_sink`] or [`check_dead_letter_sink`]; a
//! broken promise fails with the connector's name and the check's.
//!
//! Sources ([`SourceFixture`]):
//! - **call order**: `poll` before `start` is an error, never records;
//! - **offsets round-trip**: every offset a source hands out survives JSON (serialise,
//!   deserialise, equal), and the source is only ever handed back the round-tripped copy, as a
//!   checkpoint on disk would;
//! - **full read and empty polls**: a start with no committed offset hands out the fixture's
//!   records once each, batches within `max_records`; once all are out, polls return no records
//!   (`Idle` or `Exhausted`, no batch with a moved offset), and a restart from the last committed
//!   end hands out nothing; records added then come next, exactly;
//! - **exact replay**: a batch polled but not committed, then a crash (the source dropped
//!   without `close`): a restarted source's `fetch_range` over the batch's offsets gives the same
//!   records and offsets; a source that cannot replay refuses with a permanent error instead;
//! - **resume after commit**: a restart from a committed batch's end continues after it: the
//!   rest of the records, none of the committed batch's, none twice.
//!
//! Sinks ([`SinkFixture`], and [`DeadLetterFixture`] for dead-letter outputs): healthcheck
//! before the first write; empty batches are accepted and write nothing; rows read back as
//! written; the same batch id written again (in the same instance and after a restart) is
//! idempotent, or at-least-once where the sink says so ([`Delivery`]); and failures are
//! [`engine::Error::Sink`] errors classified as the fixture says (transient or permanent).

mod sink;
mod source;

pub use sink::{
    DeadLetterFailure, DeadLetterFixture, Delivery, Failure, SinkFixture, Stage,
    check_dead_letter_sink, check_sink, contract_letters, contract_rows, contract_schema,
    letter_line, row_lines,
};
pub use source::{Replay, SourceFixture, check_source, default_identity};

use engine::SourceOffset;

/// `offset` after a trip through its JSON text, as the checkpoint stores it; panics (naming
/// `who`) when the copy differs.
pub fn round_trip(who: &str, offset: &SourceOffset) -> SourceOffset {
    let text = serde_json::to_string(offset)
        .unwrap_or_else(|e| panic!("{who}: offset {offset} does not serialise: {e}"));
    let back: SourceOffset = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{who}: offset {text} does not deserialise: {e}"));
    assert_eq!(
        &back, offset,
        "{who}: offset changed on its trip through JSON ({text})"
    );
    back
}
