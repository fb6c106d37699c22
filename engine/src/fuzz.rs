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
use fuzz::Harness;

use crate::decode::{Decoded, RecordDecoder};
use crate::flat_json::FlatDecoder;
use crate::position::RecordPosition;
use crate::schema::ddl_table;
use crate::source::RawRecord;

/// The bus trade record's table: `sql/tables/trades.sql`, the one declaration of its columns.
const TRADE: &str = include_str!("../../sql/tables/trades.sql");

/// The same keys read as every other type the fast path knows: narrower integers, floats, a small
/// and a wide decimal, seconds and nanoseconds.
const WIDE: &str = "CREATE TABLE wide (
    symbol      VARCHAR NOT NULL,
    coin_name   VARCHAR,
    trade_id    INT,
    sequence    DOUBLE,
    trade_time  TIMESTAMP(9) WITH TIME ZONE NOT NULL,
    price       DECIMAL(38,20) NOT NULL,
    size        DECIMAL(10,2),
    side        VARCHAR,
    ingest_time TIMESTAMP(0) WITH TIME ZONE,
    maker       BOOLEAN
)";

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
            position: RecordPosition::new(0, i as i64),
            payload: line.to_vec(),
            frame: None,
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
                .map(|l| (l.record_position.offset, &l.reason))
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
    let mut reference = RecordDecoder::new(schema.clone()).without_fast_path();
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
    let flat = FlatDecoder::new(schema.clone(), Default::default())
        .and_then(|f| f.decode(records.iter().map(|r| r.payload.as_slice())))
        .map(|(batch, _rounded)| batch);
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
        ddl_table("trades.sql", TRADE, "trades").expect("the trade table parses"),
        ddl_table("wide", WIDE, "wide").expect("the wide table parses"),
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
    fuzz::mutate_for_budget!(&harness, check);
    harness.report(&format!(
        "the fast path took {} of {} (input, schema) pairs",
        taken.load(Ordering::Relaxed),
        2 * harness.executions(),
    ));
}

#[test]
fn a_decimal_exponent_past_i16_is_a_dead_letter_not_a_panic() {
    // Found by the coinbase_exchange fuzz target: a match whose size is "536.2151e40097242".
    let schema = ddl_table("trades.sql", TRADE, "trades").expect("the trade table parses");
    let line = br#"{"symbol":"ADA-USD","trade_id":1,"trade_time":"2026-11-20T14:03:14.325174Z","price":"0.78439767","size":"536.2151e40097242","side":"buy"}"#;
    let decoded = RecordDecoder::new(schema)
        .decode(&records(line))
        .expect("decoding never fails as a whole");
    assert_eq!(decoded.batch.num_rows(), 0);
    assert_eq!(decoded.dead_letters.len(), 1);
}

/// What the reference makes of a decimal text: the unscaled value as a decimal string (exact,
/// any size), whether digits were rounded away, or `None` when the text is not in the grammar.
struct Reference {
    negative: bool,
    /// The unscaled magnitude's digits, no leading zeros ("0" for zero).
    magnitude: String,
    /// How many digits the magnitude has before rounding (the integer digits the column must
    /// hold whatever the policy).
    truncated_digits: usize,
    rounded: bool,
}

/// Round half up to `scale` by string arithmetic alone, independent of `decimal::parse_decimal`:
/// Java `BigDecimal` grammar `[+-]?(digits[.digits?]|.digits)([eE][+-]?digits)?`.
fn reference(text: &str, scale: i8) -> Option<Reference> {
    let (negative, rest) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    let (mantissa, exponent) = match rest.find(['e', 'E']) {
        Some(at) => (&rest[..at], Some(&rest[at + 1..])),
        None => (rest, None),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(int) || !all_digits(frac) || (int.is_empty() && frac.is_empty()) {
        return None;
    }
    let exponent: i64 = match exponent {
        None => 0,
        Some(e) => {
            let digits = e.strip_prefix(['+', '-']).unwrap_or(e);
            if digits.is_empty() || !all_digits(digits) {
                return None;
            }
            // Beyond an i32 the grammar refuses (Java's int scale); compare only below that.
            let magnitude: i64 = digits.parse().ok().filter(|m| *m <= i64::from(i32::MAX))?;
            if e.starts_with('-') {
                -magnitude
            } else {
                magnitude
            }
        }
    };
    let digits = format!("{int}{frac}");
    let shift = exponent - frac.len() as i64 + i64::from(scale);
    let (kept, dropped) = if shift >= 0 {
        let zeros = if digits.bytes().all(|b| b == b'0') {
            0
        } else {
            // Anything this long overflows every type: keep the string small.
            shift.min(100) as usize
        };
        (format!("{digits}{}", "0".repeat(zeros)), String::new())
    } else {
        let cut = (-shift) as usize;
        if cut >= digits.len() {
            let dropped = format!("{}{digits}", "0".repeat((cut - digits.len()).min(100)));
            ("0".to_owned(), dropped)
        } else {
            let (k, d) = digits.split_at(digits.len() - cut);
            (k.to_owned(), d.to_owned())
        }
    };
    let rounded = dropped.bytes().any(|b| b != b'0');
    let mut magnitude: Vec<u8> = kept.trim_start_matches('0').bytes().collect();
    let truncated_digits = magnitude.len();
    if dropped.as_bytes().first().is_some_and(|d| *d >= b'5') {
        crate::decimal::increment_digits(&mut magnitude);
    }
    let magnitude = String::from_utf8(magnitude).expect("ASCII digits");
    Some(Reference {
        negative,
        magnitude: if magnitude.is_empty() {
            "0".to_owned()
        } else {
            magnitude
        },
        truncated_digits,
        rounded,
    })
}

/// The column types every decimal input is parsed into.
const DECIMAL_TYPES: [(u8, i8); 7] = [
    (28, 10),
    (38, 20),
    (38, 0),
    (10, 2),
    (1, 0),
    (38, 38),
    (5, 5),
];

fn check_decimal(input: &[u8]) {
    use crate::decimal::{DecimalError, DecimalPolicy, check_decimal, parse_decimal};
    let Ok(text) = std::str::from_utf8(input) else {
        return;
    };
    let syntax_ok = check_decimal(text).is_ok();
    if text.is_empty()
        || text.contains(char::is_whitespace)
        || text.to_ascii_lowercase().contains("nan")
        || text.to_ascii_lowercase().contains("inf")
    {
        assert!(!syntax_ok, "{text:?} is refused");
    }
    for (precision, scale) in DECIMAL_TYPES {
        for policy in [DecimalPolicy::RoundHalfUp, DecimalPolicy::Reject] {
            let ours = parse_decimal(text, precision, scale, policy);
            assert_eq!(
                matches!(ours, Err(DecimalError::Syntax(_))),
                !syntax_ok,
                "{text:?}: parse_decimal and check_decimal agree on the grammar"
            );
            let Some(expected) = reference(text, scale) else {
                // Outside the grammar (or an exponent past an int): only a syntax error will do.
                if !text.contains(['e', 'E']) {
                    assert!(
                        matches!(ours, Err(DecimalError::Syntax(_))),
                        "{text:?} as decimal({precision},{scale}): {ours:?}"
                    );
                }
                continue;
            };
            let what = format!("{text:?} as decimal({precision},{scale}) {policy:?}");
            // Too many integer digits overflow under either policy; a value that fits but has
            // digits past the scale is refused under Reject; rounding up can still overflow.
            if expected.truncated_digits > usize::from(precision) {
                assert_eq!(
                    ours,
                    Err(DecimalError::Overflow { precision, scale }),
                    "{what}"
                );
            } else if expected.rounded && policy == DecimalPolicy::Reject {
                assert_eq!(ours, Err(DecimalError::ExcessScale { scale }), "{what}");
            } else if expected.magnitude.len() > usize::from(precision) {
                assert_eq!(
                    ours,
                    Err(DecimalError::Overflow { precision, scale }),
                    "{what}"
                );
            } else {
                let parsed = ours.unwrap_or_else(|e| panic!("{what}: {e}"));
                let magnitude: i128 = expected.magnitude.parse().expect("at most 38 digits");
                let value = if expected.negative {
                    -magnitude
                } else {
                    magnitude
                };
                assert_eq!(parsed.value, value, "{what}");
                assert_eq!(parsed.rounded, expected.rounded, "{what}");
            }
        }
    }
}

#[test]
fn decimal() {
    let harness = Harness::new("decimal", &["1", "5", "9", ".", "e", "E", "-", "+", "0"]);
    harness.replay_seeds(check_decimal);
    fuzz::mutate_for_budget!(&harness, check_decimal);
    harness.report("");
}
