//! Fuzz target `flat_json` (see the `coinstream-fuzz` crate and `fuzz/README.md`): the flat fast
//! path of [`RecordDecoder`] against the engine's arrow-json path, on batches of hostile bus
//! records.
//!
//! Properties, for every input (one message per line) and each of two schemas (the bus trade
//! record, and a wide one with every type the fast path reads):
//! - decoding never fails and never panics: every message is a row or a dead letter;
//! - the decoder with its fast path gives exactly what it gives without it (rows, dead letters
//!   and their reasons), and a batch the fast path takes on its own is the arrow path's batch
//!   with no dead letter. The reference is the engine's own arrow path, not arrow-json alone, so
//!   the property holds whatever decimal policy both paths share;
//! - the same decoder, used again on the same batch, gives the same result (no state leaks from
//!   one batch into the next).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use arrow::datatypes::SchemaRef;
use fuzz::{Harness, bolero};

use crate::decode::{Decoded, RecordDecoder};
use crate::flat_json::FlatDecoder;
use crate::schema::parse_columns;
use crate::source::RawRecord;

/// The bus trade record's declared columns (`connectors::common::trade::TRADE_COLUMNS`; the
/// engine cannot depend on connectors).
const TRADE: [&str; 9] = [
    "symbol utf8 not null",
    "coin_name utf8",
    "trade_id int64 not null",
    "sequence int64",
    "trade_time timestamp(us) not null",
    "price decimal(28,10) not null",
    "size decimal(28,10) not null",
    "side utf8 not null",
    "ingest_time timestamp(us)",
];

/// The same keys read as every other type the fast path knows: narrower integers, floats, a small
/// and a wide decimal, seconds and nanoseconds.
const WIDE: [&str; 10] = [
    "symbol utf8 not null",
    "coin_name utf8",
    "trade_id int32",
    "sequence float64",
    "trade_time timestamp(ns) not null",
    "price decimal(38,20) not null",
    "size decimal(10,2)",
    "side utf8",
    "ingest_time timestamp(s)",
    "maker boolean",
];

const KEYS: &[&str] = &[
    r#""symbol""#,
    r#""coin_name""#,
    r#""trade_id""#,
    r#""sequence""#,
    r#""trade_time""#,
    r#""price""#,
    r#""size""#,
    r#""side""#,
    r#""ingest_time""#,
    r#""maker""#,
    r#""buy""#,
    r#""BTC-USD""#,
];

fn records(input: &[u8]) -> Vec<RawRecord> {
    input
        .split(|b| *b == b'\n')
        .enumerate()
        .map(|(i, line)| RawRecord {
            topic: "fuzz".into(),
            partition: 0,
            offset: i as i64,
            payload: line.to_vec(),
            rejected: None,
            received_at: SystemTime::UNIX_EPOCH,
        })
        .collect()
}

/// What a decode gave, in a form to compare.
fn outcome(decoded: &crate::Result<Decoded>) -> String {
    match decoded {
        Ok(d) => format!(
            "{:?}\n{:?}",
            d.batch,
            d.dead_letters
                .iter()
                .map(|l| (l.offset, &l.reason))
                .collect::<Vec<_>>()
        ),
        Err(e) => format!("error: {e}"),
    }
}

/// Checks one input against one schema; true if the fast path alone took the batch.
fn check_schema(schema: &SchemaRef, records: &[RawRecord]) -> bool {
    let mut with_fast_path = RecordDecoder::new(schema.clone());
    let fast = with_fast_path.decode(records);
    let decoded = match &fast {
        Ok(d) => d,
        Err(e) => panic!("decoding failed as a whole: {e}"),
    };
    assert_eq!(
        decoded.batch.num_rows() + decoded.dead_letters.len(),
        records.len(),
        "every message is a row or a dead letter"
    );
    let mut reference = RecordDecoder::without_fast_path(schema.clone());
    let arrow = reference.decode(records);
    assert_eq!(
        outcome(&fast),
        outcome(&arrow),
        "the fast path changed the result"
    );
    assert_eq!(
        outcome(&with_fast_path.decode(records)),
        outcome(&fast),
        "a reused decoder gave another result"
    );
    let flat = FlatDecoder::new(schema.clone())
        .and_then(|f| f.decode(records.iter().map(|r| r.payload.as_slice())));
    match (flat, arrow) {
        (Some(flat), Ok(arrow)) => {
            assert!(
                arrow.dead_letters.is_empty(),
                "the fast path took a batch the arrow path dead-letters in part"
            );
            assert_eq!(flat, arrow.batch, "the fast path's batch differs");
            true
        }
        (Some(_), Err(e)) => panic!("the fast path took a batch the arrow path fails: {e}"),
        (None, _) => false,
    }
}

#[test]
fn flat_json() {
    let schemas = [
        parse_columns("trade", &TRADE.map(String::from)).expect("the trade columns parse"),
        parse_columns("wide", &WIDE.map(String::from)).expect("the wide columns parse"),
    ];
    let taken = AtomicU64::new(0);
    let check = |input: &[u8]| {
        let records = records(input);
        for schema in &schemas {
            if check_schema(schema, &records) {
                taken.fetch_add(1, Ordering::Relaxed);
            }
        }
    };
    let harness = Harness::new("flat_json", KEYS);
    harness.replay_seeds(check);
    let seeds_taken = taken.load(Ordering::Relaxed);
    assert!(
        seeds_taken > 0,
        "the fast path took no seed: the differential checks nothing"
    );
    bolero::check!()
        .with_test_time(fuzz::budget())
        .with_type::<Vec<u8>>()
        .map(|driver| harness.mutate(&driver))
        .for_each(|input| {
            harness.count();
            check(&input.0);
        });
    harness.report(&format!(
        "the fast path took {} of {} (input, schema) pairs",
        taken.load(Ordering::Relaxed),
        2 * harness.executions()
    ));
}
