//! Smoke test of the real Cassandra node through the `scylla` driver, independent of our
//! Cassandra sink: it proves the node from `scripts/services.sh` (or `$CASSANDRA_NODES`) takes
//! concurrent prepared inserts and returns exactly what was written, for the CQL types the sink
//! writes (`text`, `bigint`, `decimal`, `timestamp`) and a quoted, case-sensitive column name.
//!
//! A missing node is a test failure with a message that says how to start it, never a skip.

use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures::{FutureExt, StreamExt, TryStreamExt};
use rust_decimal::Decimal;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::value::{CqlDecimal, CqlTimestamp};

use testkit::env::{START_HINT, env_or};
use testkit::unique_name;

const DEFAULT_NODES: &str = "127.0.0.1:9042";
const ROWS: usize = 10_000;
const IN_FLIGHT: usize = 128;
const PAGE_SIZE: i32 = 500;
const TEST_TIMEOUT: Duration = Duration::from_secs(180);

fn nodes() -> Vec<String> {
    env_or("CASSANDRA_NODES", DEFAULT_NODES)
        .split(',')
        .map(|n| n.trim().to_owned())
        .filter(|n| !n.is_empty())
        .collect()
}

/// One row of the test table, in Rust types.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Trade {
    trade_id: i64,
    symbol: String,
    price: Decimal,
    traded_at_ms: i64,
}

/// The row as the driver binds and reads it: (trade_id, symbol, "Price", traded_at).
type CqlRow = (i64, String, CqlDecimal, CqlTimestamp);

/// Deterministic rows covering negative and extreme bigints, scales 0..=12, large and negative
/// decimals, pre-1970 timestamps and non-ASCII text.
fn trades() -> Vec<Trade> {
    (0..ROWS as i64)
        .map(|i| {
            let trade_id = match i {
                0 => i64::MIN,
                1 => i64::MAX,
                _ if i % 2 == 0 => -i * 1_000_003,
                _ => i * 1_000_003,
            };
            let symbol = match i % 4 {
                0 => format!("BTC-USD-{i}"),
                1 => format!("ETH-EUR-{i}"),
                2 => format!("ünïcödé €/₿ {i}"),
                _ => String::new(),
            };
            let mantissa = match i % 5 {
                0 => i128::from(i),
                1 => -i128::from(i) * 7_919,
                2 => 79_228_162_514_264_337_593_543_950_335 - i128::from(i), // rust_decimal's max
                3 => -(i128::from(i) << 64) - 1,
                _ => i128::from(i) * 1_000_000,
            };
            let price = Decimal::from_i128_with_scale(mantissa, (i % 13) as u32);
            let traded_at_ms =
                1_700_000_000_000 + i * 61_237 - if i % 17 == 0 { 1 << 42 } else { 0 };
            Trade {
                trade_id,
                symbol,
                price,
                traded_at_ms,
            }
        })
        .collect()
}

fn to_cql(trade: &Trade) -> CqlRow {
    let mantissa = trade.price.mantissa().to_be_bytes();
    let scale = i32::try_from(trade.price.scale()).expect("rust_decimal scales are at most 28");
    (
        trade.trade_id,
        trade.symbol.clone(),
        CqlDecimal::from_signed_be_bytes_slice_and_exponent(&mantissa, scale),
        CqlTimestamp(trade.traded_at_ms),
    )
}

/// Exact inverse of `to_cql`: keeps the scale, so 1.50 and 1.5 stay different.
fn from_cql((trade_id, symbol, price, traded_at): CqlRow) -> Trade {
    let (bytes, scale) = price.as_signed_be_bytes_slice_and_exponent();
    assert!(
        !bytes.is_empty() && bytes.len() <= 16,
        "decimal mantissa of {} bytes for trade {trade_id}",
        bytes.len()
    );
    let fill = if bytes[0] & 0x80 == 0 { 0x00 } else { 0xff };
    let mut be = [fill; 16];
    be[16 - bytes.len()..].copy_from_slice(bytes);
    let scale = u32::try_from(scale)
        .unwrap_or_else(|_| panic!("negative decimal scale {scale} for trade {trade_id}"));
    let price = Decimal::try_from_i128_with_scale(i128::from_be_bytes(be), scale)
        .unwrap_or_else(|err| panic!("decimal of trade {trade_id} out of range: {err}"));
    Trade {
        trade_id,
        symbol,
        price,
        traded_at_ms: traded_at.0,
    }
}

async fn connect(nodes: &[String]) -> Session {
    SessionBuilder::new()
        .known_nodes(nodes)
        .connection_timeout(Duration::from_secs(5))
        .build()
        .await
        .unwrap_or_else(|err| {
            panic!(
                "Cassandra not reachable at CASSANDRA_NODES={} ({err}); {START_HINT}",
                nodes.join(",")
            )
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_inserts_read_back_identical() {
    let nodes = nodes();
    let session = connect(&nodes).await;
    let keyspace = unique_name("coinstream_smoke");
    session
        .query_unpaged(
            format!(
                "CREATE KEYSPACE {keyspace} WITH replication = \
                 {{'class': 'SimpleStrategy', 'replication_factor': 1}}"
            ),
            (),
        )
        .await
        .unwrap_or_else(|err| panic!("create keyspace {keyspace}: {err}"));

    // Drop the keyspace whatever the outcome; re-raise the test's panic or timeout afterwards.
    let outcome = AssertUnwindSafe(tokio::time::timeout(
        TEST_TIMEOUT,
        write_and_read_back(&session, &keyspace),
    ))
    .catch_unwind()
    .await;
    let dropped = session
        .query_unpaged(format!("DROP KEYSPACE {keyspace}"), ())
        .await;
    match outcome {
        Err(panic) => std::panic::resume_unwind(panic),
        Ok(Err(_)) => panic!("test timed out after {TEST_TIMEOUT:?} (keyspace {keyspace})"),
        Ok(Ok(())) => {}
    }
    dropped.unwrap_or_else(|err| panic!("drop keyspace {keyspace}: {err}"));
}

async fn write_and_read_back(session: &Session, keyspace: &str) {
    let table = format!("{keyspace}.trades");
    session
        .query_unpaged(
            format!(
                "CREATE TABLE {table} (trade_id bigint PRIMARY KEY, symbol text, \
                 \"Price\" decimal, traded_at timestamp)"
            ),
            (),
        )
        .await
        .unwrap_or_else(|err| panic!("create table {table}: {err}"));

    let insert = session
        .prepare(format!(
            "INSERT INTO {table} (trade_id, symbol, \"Price\", traded_at) VALUES (?, ?, ?, ?)"
        ))
        .await
        .unwrap_or_else(|err| panic!("prepare insert into {table}: {err}"));
    let written = trades();
    let results: Vec<_> = futures::stream::iter(&written)
        .map(|trade| {
            let insert = &insert;
            async move {
                session
                    .execute_unpaged(insert, to_cql(trade))
                    .await
                    .map_err(|err| (trade.trade_id, err))
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await;
    let failures: Vec<_> = results.into_iter().filter_map(Result::err).collect();
    if let Some((trade_id, err)) = failures.first() {
        panic!(
            "{} of {ROWS} inserts failed; first: trade {trade_id}: {err}",
            failures.len()
        );
    }

    let mut select = session
        .prepare(format!(
            "SELECT trade_id, symbol, \"Price\", traded_at FROM {table}"
        ))
        .await
        .unwrap_or_else(|err| panic!("prepare select from {table}: {err}"));
    select.set_page_size(PAGE_SIZE);
    let mut read: Vec<Trade> = session
        .execute_iter(select, ())
        .await
        .unwrap_or_else(|err| panic!("select from {table}: {err}"))
        .rows_stream::<CqlRow>()
        .unwrap_or_else(|err| {
            panic!("rows of {table} do not match (bigint, text, decimal, timestamp): {err}")
        })
        .map_ok(from_cql)
        .try_collect()
        .await
        .unwrap_or_else(|err| panic!("read {table}: {err}"));

    assert_eq!(read.len(), ROWS, "rows read back from {table}");
    read.sort_by_key(|t| t.trade_id);
    let mut expected = written;
    expected.sort_by_key(|t| t.trade_id);
    for (got, want) in read.iter().zip(&expected) {
        // Decimal's == is numeric; the scale must survive the round trip too.
        assert!(
            got == want && got.price.scale() == want.price.scale(),
            "row read back differs:\n  read    {got:?}\n  written {want:?}"
        );
    }
}
