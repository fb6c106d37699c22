//! Cassandra helpers on the real node ([`crate::env::cassandra_nodes`]): a session for setting up
//! and reading back, keyspace drop, exact decimals, and the batches of type-matrix tests.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Array, ArrayRef, Int32Array, RecordBatch};
use rust_decimal::Decimal;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::value::CqlDecimal;

use crate::env::{START_HINT, cassandra_nodes};

/// A session on the test node; panics (a failure, not a skip) when it does not answer in 30 s.
pub async fn session() -> Session {
    let nodes = cassandra_nodes();
    let built = tokio::time::timeout(
        Duration::from_secs(30),
        SessionBuilder::new()
            .known_nodes(&nodes)
            .connection_timeout(Duration::from_secs(5))
            .build(),
    )
    .await;
    match built {
        Ok(Ok(session)) => session,
        Ok(Err(e)) => panic!("Cassandra at {nodes:?} refused: {e}; {START_HINT}"),
        Err(_) => panic!("Cassandra at {nodes:?} did not answer; {START_HINT}"),
    }
}

/// Drops `keyspace` (quoted, so mixed case is kept) if it exists.
pub async fn drop_keyspace(session: &Session, keyspace: &str) {
    session
        .query_unpaged(format!("DROP KEYSPACE IF EXISTS \"{keyspace}\""), ())
        .await
        .expect("drop the test keyspace");
}

/// Rows 1, 2 and 3 of a type matrix: the not-null key `id` (Int32), then `columns`, each
/// nullable and typed as its array, so that a test names each column once, next to its values;
/// panics when a column does not hold three rows.
pub fn type_matrix(columns: Vec<(&str, ArrayRef)>) -> RecordBatch {
    let id: ArrayRef = Arc::new(Int32Array::from(vec![1, 2, 3]));
    let columns = columns.into_iter().map(|(name, array)| (name, array, true));
    RecordBatch::try_from_iter_with_nullable(std::iter::once(("id", id, false)).chain(columns))
        .expect("every column of a type matrix holds three rows")
}

/// One named column of a [`type_matrix`].
pub fn column<A: Array + 'static>(name: &str, array: A) -> (&str, ArrayRef) {
    (name, Arc::new(array))
}

/// A CQL `decimal` as an exact [`Decimal`]; panics when it does not fit in 96 bits or its scale
/// is outside 0..=28 (a test's values always fit).
pub fn decimal(d: &CqlDecimal) -> Decimal {
    let (bytes, scale) = d.as_signed_be_bytes_slice_and_exponent();
    let mut v: i128 = if bytes.first().is_some_and(|b| b & 0x80 != 0) {
        -1
    } else {
        0
    };
    for b in bytes {
        v = (v << 8) | i128::from(*b);
    }
    let scale = u32::try_from(scale).expect("a non-negative decimal scale");
    Decimal::try_from_i128_with_scale(v, scale).expect("a decimal that fits rust_decimal")
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;

    #[test]
    fn decimals_round_trip_with_sign_and_scale() {
        for text in [
            "0",
            "1.5",
            "-1.5",
            "-0.0000000001",
            "123456789012345678.1234567891",
        ] {
            let d = Decimal::from_str(text).unwrap();
            let cql = CqlDecimal::from_signed_be_bytes_slice_and_exponent(
                &d.mantissa().to_be_bytes(),
                d.scale() as i32,
            );
            assert_eq!(decimal(&cql), d, "{text}");
        }
    }
}
