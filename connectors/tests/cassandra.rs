//! The Cassandra sink against the real node that `scripts/services.sh` runs (or the nodes in
//! `$CASSANDRA_NODES`): every Arrow type the sink stores, read back exactly; the default trade key
//! (idempotent replays, no trade overwriting another); an incompatible existing table; and a write
//! while the node is stopped, then after it is back, with the same sink.
//!
//! Each test uses its own keyspace and drops it at the end. A missing node is a failure that says
//! how to start it, never a skip. The outage test stops the shared node, so it holds the write side
//! of [`SERVER`] while the others hold the read side.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{
    ArrayRef, BinaryArray, BooleanArray, Date32Array, Decimal128Array, Float32Array, Float64Array,
    Int8Array, Int16Array, Int64Array, LargeBinaryArray, LargeStringArray, StringArray,
    StringViewArray, TimestampMicrosecondArray, TimestampMillisecondArray,
    TimestampNanosecondArray, TimestampSecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use connectors::cassandra::{CassandraConfig, CassandraSink};
use engine::{Error, Retry, Sink};
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::value::{CqlValue, Row};
use testkit::cassandra::{column, type_matrix};

/// Held for reading by every test that needs the node up, and for writing by the one that stops it.
static SERVER: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

const START_HINT: &str = "start it with `scripts/services.sh up cassandra` or point CASSANDRA_NODES \
                          at a running node";

fn nodes() -> Vec<String> {
    std::env::var("CASSANDRA_NODES")
        .unwrap_or_else(|_| "127.0.0.1:9042".into())
        .split(',')
        .map(|n| n.trim().to_owned())
        .filter(|n| !n.is_empty())
        .collect()
}

/// A session for setting up and reading back; panics (a failure, not a skip) without a node.
async fn session() -> Session {
    let nodes = nodes();
    SessionBuilder::new()
        .known_nodes(&nodes)
        .connection_timeout(Duration::from_secs(5))
        .build()
        .await
        .unwrap_or_else(|e| panic!("Cassandra is not reachable at {nodes:?}: {e}; {START_HINT}"))
}

/// A keyspace name no other test (or earlier run) uses.
fn unique_keyspace(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        nanos % 1_000_000_000_000
    )
}

fn config(extra: serde_json::Value) -> CassandraConfig {
    let mut value = serde_json::json!({ "contact_points": nodes() });
    value
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    serde_json::from_value(value).expect("the test config is valid")
}

/// A test's own keyspace: the read side of [`SERVER`] while it lives, a session to read back
/// what was written, and the keyspace's name (unique per run).
struct TestKeyspace {
    _server: tokio::sync::RwLockReadGuard<'static, ()>,
    reader: Session,
    name: String,
}

impl TestKeyspace {
    async fn new(prefix: &str) -> Self {
        Self {
            _server: SERVER.read().await,
            reader: session().await,
            name: unique_keyspace(prefix),
        }
    }

    async fn drop(self) {
        drop_keyspace(&self.reader, &self.name).await;
    }
}

async fn drop_keyspace(session: &Session, keyspace: &str) {
    session
        .query_unpaged(format!("DROP KEYSPACE IF EXISTS \"{keyspace}\""), ())
        .await
        .expect("drop the test keyspace");
}

/// Every row of a SELECT, each cell rendered exactly (decimals from their unscaled integer and
/// scale, timestamps to the millisecond), sorted.
async fn select(session: &Session, cql: &str) -> Vec<String> {
    let result = session.query_unpaged(cql, ()).await.expect(cql);
    let rows = result.into_rows_result().expect("a SELECT returns rows");
    let names: Vec<String> = rows
        .column_specs()
        .iter()
        .map(|c| c.name().to_owned())
        .collect();
    let mut lines: Vec<String> = rows
        .rows::<Row>()
        .expect("rows")
        .map(|row| {
            let row = row.expect("a row");
            names
                .iter()
                .zip(&row.columns)
                .map(|(name, cell)| format!("{name}={}", render(cell.as_ref())))
                .collect::<Vec<_>>()
                .join(" | ")
        })
        .collect();
    lines.sort();
    lines
}

fn render(cell: Option<&CqlValue>) -> String {
    let Some(value) = cell else {
        return "NULL".into();
    };
    match value {
        CqlValue::Text(s) | CqlValue::Ascii(s) => format!("{s:?}"),
        CqlValue::Boolean(b) => b.to_string(),
        CqlValue::TinyInt(v) => v.to_string(),
        CqlValue::SmallInt(v) => v.to_string(),
        CqlValue::Int(v) => v.to_string(),
        CqlValue::BigInt(v) => v.to_string(),
        CqlValue::Float(v) => format!("{v:?}"),
        CqlValue::Double(v) => format!("{v:?}"),
        CqlValue::Decimal(d) => {
            let (bytes, scale) = d.as_signed_be_bytes_slice_and_exponent();
            decimal_string(bytes, scale)
        }
        CqlValue::Timestamp(t) => chrono::DateTime::from_timestamp_millis(t.0)
            .expect("timestamp in range")
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        CqlValue::Date(d) => {
            let days = i64::from(d.0) - (1i64 << 31);
            (chrono::NaiveDate::from_ymd_opt(1970, 1, 1).unwrap() + chrono::Duration::days(days))
                .to_string()
        }
        CqlValue::Blob(b) => format!(
            "0x{}",
            b.iter().map(|x| format!("{x:02x}")).collect::<String>()
        ),
        other => panic!("the test does not render {other:?}"),
    }
}

/// The exact decimal a CQL `decimal` holds (two's complement big-endian integer × 10^-scale).
fn decimal_string(bytes: &[u8], scale: i32) -> String {
    assert!(bytes.len() <= 16, "test values fit in an i128");
    let fill = if bytes.first().is_some_and(|b| b & 0x80 != 0) {
        0xff
    } else {
        0
    };
    let mut full = [fill; 16];
    full[16 - bytes.len()..].copy_from_slice(bytes);
    let unscaled = i128::from_be_bytes(full);
    let digits = unscaled.unsigned_abs().to_string();
    let sign = if unscaled < 0 { "-" } else { "" };
    if scale <= 0 {
        let zeros = "0".repeat(scale.unsigned_abs() as usize);
        return format!("{sign}{digits}{zeros}");
    }
    let scale = scale as usize;
    let padded = format!("{digits:0>width$}", width = scale + 1);
    let (int, frac) = padded.split_at(padded.len() - scale);
    format!("{sign}{int}.{frac}")
}

fn utc_micros() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

#[tokio::test]
async fn type_matrix_round_trips_exactly_with_quoted_mixed_case_names() {
    let ks = TestKeyspace::new("cs_types").await;
    let (reader, keyspace) = (&ks.reader, &ks.name);

    let batch = type_matrix(vec![
        column(
            "Mixed Case",
            StringArray::from(vec![Some("Ünïcode ✓"), Some(""), None]),
        ),
        column("b", BooleanArray::from(vec![Some(true), Some(false), None])),
        column(
            "i8",
            Int8Array::from(vec![Some(i8::MIN), Some(i8::MAX), None]),
        ),
        column(
            "i16",
            Int16Array::from(vec![Some(i16::MIN), Some(-7), None]),
        ),
        column(
            "i64",
            Int64Array::from(vec![Some(i64::MIN), Some(i64::MAX), None]),
        ),
        column(
            "f32",
            Float32Array::from(vec![Some(1.5), Some(-0.25), None]),
        ),
        column(
            "f64",
            Float64Array::from(vec![Some(0.1), Some(-1e300), None]),
        ),
        column(
            "dec",
            Decimal128Array::from(vec![Some(123_456_789_012_345_678), Some(-1), None])
                .with_precision_and_scale(38, 10)
                .unwrap(),
        ),
        column(
            "dec_small",
            Decimal128Array::from(vec![Some(12_345), Some(-5), None])
                .with_precision_and_scale(9, 2)
                .unwrap(),
        ),
        column(
            "large_text",
            LargeStringArray::from(vec![Some("large"), Some("x"), None]),
        ),
        column(
            "view_text",
            StringViewArray::from(vec![
                Some("a view string longer than twelve bytes"),
                Some("short"),
                None,
            ]),
        ),
        column(
            "bin",
            BinaryArray::from(vec![Some(&[0u8, 1, 255][..]), Some(&[][..]), None]),
        ),
        column(
            "large_bin",
            LargeBinaryArray::from(vec![Some(&[7u8][..]), Some(&[8u8, 9][..]), None]),
        ),
        column(
            "ts_s",
            TimestampSecondArray::from(vec![Some(1_700_000_000), Some(0), None]),
        ),
        column(
            "ts_ms",
            TimestampMillisecondArray::from(vec![Some(1_700_000_000_123), Some(-1), None])
                .with_timezone("UTC"),
        ),
        column(
            "ts_us",
            TimestampMicrosecondArray::from(vec![Some(1_700_000_000_123_456), Some(-1), None])
                .with_timezone("UTC"),
        ),
        column(
            "ts_ns",
            TimestampNanosecondArray::from(vec![
                Some(1_700_000_000_123_456_789),
                Some(999_999),
                None,
            ])
            .with_timezone("+02:00"),
        ),
        column("day", Date32Array::from(vec![Some(19_675), Some(-1), None])),
    ]);
    let schema = batch.schema();

    let mut sink = CassandraSink::new(
        config(serde_json::json!({
            "keyspace": keyspace,
            "table": "TypeMatrix",
            "partition_key": ["id"],
            "clustering_key": [],
        })),
        schema.clone(),
    )
    .unwrap();
    sink.healthcheck().await.expect("healthcheck");
    sink.write(1, &[batch]).await.expect("write");
    sink.close().await.unwrap();

    let names: Vec<String> = schema
        .fields()
        .iter()
        .map(|f| format!("\"{}\"", f.name()))
        .collect();
    let got = select(
        reader,
        &format!(
            "SELECT {} FROM \"{keyspace}\".\"TypeMatrix\"",
            names.join(", ")
        ),
    )
    .await;
    let expected = vec![
        "id=1 | Mixed Case=\"Ünïcode ✓\" | b=true | i8=-128 | i16=-32768 | \
         i64=-9223372036854775808 | f32=1.5 | f64=0.1 | dec=12345678.9012345678 | \
         dec_small=123.45 | large_text=\"large\" | \
         view_text=\"a view string longer than twelve bytes\" | bin=0x0001ff | large_bin=0x07 | \
         ts_s=2023-11-14T22:13:20.000Z | ts_ms=2023-11-14T22:13:20.123Z | \
         ts_us=2023-11-14T22:13:20.123Z | ts_ns=2023-11-14T22:13:20.123Z | day=2023-11-14",
        "id=2 | Mixed Case=\"\" | b=false | i8=127 | i16=-7 | i64=9223372036854775807 | \
         f32=-0.25 | f64=-1e300 | dec=-0.0000000001 | dec_small=-0.05 | large_text=\"x\" | \
         view_text=\"short\" | bin=0x | large_bin=0x0809 | ts_s=1970-01-01T00:00:00.000Z | \
         ts_ms=1969-12-31T23:59:59.999Z | ts_us=1969-12-31T23:59:59.999Z | \
         ts_ns=1970-01-01T00:00:00.000Z | day=1969-12-31",
        "id=3 | Mixed Case=NULL | b=NULL | i8=NULL | i16=NULL | i64=NULL | f32=NULL | f64=NULL | \
         dec=NULL | dec_small=NULL | large_text=NULL | view_text=NULL | bin=NULL | \
         large_bin=NULL | ts_s=NULL | ts_ms=NULL | ts_us=NULL | ts_ns=NULL | day=NULL",
    ];
    assert_eq!(got, expected);

    // The table the sink created has the CQL types of the documented mapping.
    let types = select(
        reader,
        &format!(
            "SELECT column_name, type FROM system_schema.columns \
             WHERE keyspace_name = '{keyspace}' AND table_name = 'TypeMatrix'"
        ),
    )
    .await;
    let expected_types = [
        ("Mixed Case", "text"),
        ("b", "boolean"),
        ("bin", "blob"),
        ("day", "date"),
        ("dec", "decimal"),
        ("dec_small", "decimal"),
        ("f32", "float"),
        ("f64", "double"),
        ("i16", "smallint"),
        ("i64", "bigint"),
        ("i8", "tinyint"),
        ("id", "int"),
        ("large_bin", "blob"),
        ("large_text", "text"),
        ("ts_ms", "timestamp"),
        ("ts_ns", "timestamp"),
        ("ts_s", "timestamp"),
        ("ts_us", "timestamp"),
        ("view_text", "text"),
    ];
    let mut expected_types: Vec<String> = expected_types
        .iter()
        .map(|(n, t)| format!("column_name={n:?} | type={t:?}"))
        .collect();
    expected_types.sort();
    assert_eq!(types, expected_types);

    ks.drop().await;
}

fn profit_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("symbol", DataType::Utf8, true),
        Field::new("coin_name", DataType::Utf8, true),
        Field::new("trade_id", DataType::Int64, true),
        Field::new("trade_time", utc_micros(), true),
        Field::new("trade_date", DataType::Date32, true),
        Field::new("price", DataType::Decimal128(28, 10), true),
        Field::new("size", DataType::Decimal128(28, 10), true),
        Field::new("side", DataType::Utf8, true),
        Field::new("profit", DataType::Decimal128(38, 20), true),
    ]))
}

/// One trade: (symbol, coin_name, trade_id, trade_time µs, price, size, side, profit), with
/// prices and sizes as unscaled decimals (scale 10) and profit at scale 20.
type Trade = (
    &'static str,
    Option<&'static str>,
    i64,
    i64,
    i128,
    i128,
    &'static str,
    i128,
);

fn profit_batch(trades: &[Trade]) -> RecordBatch {
    let day = |us: i64| (us.div_euclid(86_400_000_000)) as i32;
    let dec = |values: Vec<i128>, p: u8, s: i8| -> ArrayRef {
        Arc::new(
            Decimal128Array::from(values)
                .with_precision_and_scale(p, s)
                .unwrap(),
        )
    };
    RecordBatch::try_new(
        profit_schema(),
        vec![
            Arc::new(StringArray::from_iter_values(trades.iter().map(|t| t.0))),
            Arc::new(StringArray::from(
                trades.iter().map(|t| t.1).collect::<Vec<_>>(),
            )),
            Arc::new(Int64Array::from_iter_values(trades.iter().map(|t| t.2))),
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(trades.iter().map(|t| t.3))
                    .with_timezone("UTC"),
            ),
            Arc::new(Date32Array::from_iter_values(
                trades.iter().map(|t| day(t.3)),
            )),
            dec(trades.iter().map(|t| t.4).collect(), 28, 10),
            dec(trades.iter().map(|t| t.5).collect(), 28, 10),
            Arc::new(StringArray::from_iter_values(trades.iter().map(|t| t.6))),
            dec(trades.iter().map(|t| t.7).collect(), 38, 20),
        ],
    )
    .unwrap()
}

/// 2024-03-01T12:00:00.123456Z in µs.
const NOON: i64 = 1_709_294_400_123_456;
const DAY_US: i64 = 86_400_000_000;

const TRADES: [Trade; 5] = [
    // Two BTC trades in the same microsecond: same partition and trade_time, different trade_id.
    (
        "BTC-USD",
        Some("Bitcoin"),
        101,
        NOON,
        650_001_234_500_000,
        1_000_000,
        "buy",
        12_345_000_000_000_000_000_000,
    ),
    (
        "BTC-USD",
        Some("Bitcoin"),
        102,
        NOON,
        650_001_234_600_000,
        25_000_000,
        "sell",
        -5_000_000_000_000_000_000_000,
    ),
    (
        "BTC-USD",
        Some("Bitcoin"),
        103,
        NOON + DAY_US,
        660_000_000_000_000,
        10_000_000_000,
        "buy",
        1,
    ),
    (
        "ETH-USD",
        None,
        7,
        NOON,
        35_000_000_000_000,
        5_000_000_000,
        "sell",
        0,
    ),
    (
        "ETH-USD",
        None,
        8,
        NOON + 1,
        35_000_100_000_000,
        5_000_000_000,
        "buy",
        -1,
    ),
];

/// [`TRADES`] as [`read_trades`] renders them.
fn expected_trades() -> Vec<String> {
    let mut rows: Vec<String> = [
        (r#""BTC-USD""#, "2024-03-01", 101, r#""Bitcoin""#, "65000.1234500000", "0.0001000000", r#""buy""#, "123.45000000000000000000"),
        (r#""BTC-USD""#, "2024-03-01", 102, r#""Bitcoin""#, "65000.1234600000", "0.0025000000", r#""sell""#, "-50.00000000000000000000"),
        (r#""BTC-USD""#, "2024-03-02", 103, r#""Bitcoin""#, "66000.0000000000", "1.0000000000", r#""buy""#, "0.00000000000000000001"),
        (r#""ETH-USD""#, "2024-03-01", 7, "NULL", "3500.0000000000", "0.5000000000", r#""sell""#, "0.00000000000000000000"),
        (r#""ETH-USD""#, "2024-03-01", 8, "NULL", "3500.0100000000", "0.5000000000", r#""buy""#, "-0.00000000000000000001"),
    ]
    .iter()
    .map(|(symbol, date, id, coin, price, size, side, profit)| {
        format!(
            "symbol={symbol} | trade_date={date} | trade_time={date}T12:00:00.123Z | trade_id={id} | \
             coin_name={coin} | price={price} | size={size} | side={side} | profit={profit}"
        )
    })
    .collect();
    rows.sort();
    rows
}

/// The trades table, one line per row.
async fn read_trades(session: &Session, keyspace: &str) -> Vec<String> {
    select(
        session,
        &format!(
            "SELECT symbol, trade_date, trade_time, trade_id, coin_name, price, size, side, profit \
             FROM \"{keyspace}\".crypto_trades"
        ),
    )
    .await
}

#[tokio::test]
async fn default_trade_key_keeps_every_trade_and_replays_change_nothing() {
    let ks = TestKeyspace::new("cs_trades").await;
    let (reader, keyspace) = (&ks.reader, &ks.name);
    let cfg = config(serde_json::json!({ "keyspace": keyspace }));

    // Two record batches in one write, as a transform may return.
    let batches = [profit_batch(&TRADES[..2]), profit_batch(&TRADES[2..])];
    let mut sink = CassandraSink::new(cfg.clone(), profit_schema()).unwrap();
    sink.healthcheck().await.expect("healthcheck");
    sink.write(42, &batches).await.expect("first write");
    let first = read_trades(reader, keyspace).await;
    assert_eq!(first, expected_trades());

    // The same batch again, then once more from a new sink (a restarted engine replaying it).
    sink.write(42, &batches).await.expect("replayed write");
    sink.close().await.unwrap();
    let mut restarted = CassandraSink::new(cfg, profit_schema()).unwrap();
    restarted
        .healthcheck()
        .await
        .expect("healthcheck on the existing table");
    restarted
        .write(42, &batches)
        .await
        .expect("write after restart");
    assert_eq!(read_trades(reader, keyspace).await, first);

    // One partition per product per day; both same-microsecond BTC trades are in it.
    let partition = select(
        reader,
        &format!(
            "SELECT trade_id FROM \"{keyspace}\".crypto_trades \
             WHERE symbol = 'BTC-USD' AND trade_date = '2024-03-01'"
        ),
    )
    .await;
    assert_eq!(partition, ["trade_id=101", "trade_id=102"]);

    ks.drop().await;
}

#[tokio::test]
async fn partition_batches_write_every_row_of_every_partition() {
    let ks = TestKeyspace::new("cs_batches").await;
    let (reader, keyspace) = (&ks.reader, &ks.name);
    // Two rows per batch: BTC-USD of 03-01 fills one, ETH-USD of 03-01 (split across the two
    // record batches) another, and BTC-USD of 03-02 goes alone.
    let cfg = config(serde_json::json!({ "keyspace": keyspace, "batch_size_rows": 2 }));
    let batches = [profit_batch(&TRADES[..4]), profit_batch(&TRADES[4..])];
    let mut sink = CassandraSink::new(cfg.clone(), profit_schema()).unwrap();
    sink.healthcheck().await.expect("healthcheck");
    sink.write(1, &batches)
        .await
        .expect("write in partition batches");
    assert_eq!(read_trades(reader, keyspace).await, expected_trades());

    // 1,000 trades over 7 products and 3 days, 30 rows a batch: full batches and a partial
    // one in each partition, every row written once and only once.
    let products = ["A", "B", "C", "D", "E", "F", "G"];
    let many: Vec<Trade> = (0..1_000i64)
        .map(|i| {
            let symbol = products[(i % 7) as usize];
            let time = NOON + (i % 3) * DAY_US + i;
            (
                symbol,
                None,
                i,
                time,
                1 + i128::from(i),
                1,
                "buy",
                i128::from(i),
            )
        })
        .collect();
    let cfg =
        config(serde_json::json!({ "keyspace": keyspace, "table": "many", "batch_size_rows": 30 }));
    let mut sink = CassandraSink::new(cfg, profit_schema()).unwrap();
    sink.write(2, &[profit_batch(&many[..500]), profit_batch(&many[500..])])
        .await
        .expect("write 1,000 rows in partition batches");
    let ids = select(reader, &format!("SELECT trade_id FROM \"{keyspace}\".many")).await;
    let mut ids: Vec<i64> = ids
        .iter()
        .map(|row| row.strip_prefix("trade_id=").unwrap().parse().unwrap())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, (0..1_000).collect::<Vec<_>>());

    ks.drop().await;
}

#[tokio::test]
async fn healthcheck_names_a_column_of_an_incompatible_existing_table() {
    let ks = TestKeyspace::new("cs_incompatible").await;
    let (reader, keyspace) = (&ks.reader, &ks.name);
    reader
        .query_unpaged(
            format!(
                "CREATE KEYSPACE \"{keyspace}\" WITH replication = \
                 {{'class': 'SimpleStrategy', 'replication_factor': 1}}"
            ),
            (),
        )
        .await
        .unwrap();
    // `price` is a double here, but the transform writes exact decimals.
    reader
        .query_unpaged(
            format!(
                "CREATE TABLE \"{keyspace}\".crypto_trades (symbol text, coin_name text, \
                 trade_id bigint, trade_time timestamp, trade_date date, price double, \
                 size decimal, side text, profit decimal, \
                 PRIMARY KEY ((symbol, trade_date), trade_time, trade_id))"
            ),
            (),
        )
        .await
        .unwrap();

    let mut sink = CassandraSink::new(
        config(serde_json::json!({ "keyspace": keyspace })),
        profit_schema(),
    )
    .unwrap();
    let err = sink.healthcheck().await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Sink {
                retry: Retry::Permanent,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("column \"price\" of existing table")
            && err
                .to_string()
                .contains("is double, but the transform writes decimal"),
        "{err}"
    );

    ks.drop().await;
}

fn services(args: &[&str]) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/services.sh");
    let status = std::process::Command::new(script)
        .args(args)
        .status()
        .unwrap_or_else(|e| panic!("cannot run {script}: {e}"));
    assert!(status.success(), "{script} {args:?} failed: {status}");
}

/// Starts Cassandra again when dropped, unless already done: a failing test must not leave the
/// shared node down.
struct RestartCassandra {
    done: bool,
}

impl RestartCassandra {
    fn now(&mut self) {
        services(&["start", "cassandra"]);
        self.done = true;
    }
}

impl Drop for RestartCassandra {
    fn drop(&mut self) {
        if !self.done {
            services(&["start", "cassandra"]);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_stops_cassandra_write_fails_transiently_then_same_sink_recovers() {
    let _server = SERVER.write().await;
    let reader = session().await;
    let keyspace = unique_keyspace("cs_outage");
    let mut sink = CassandraSink::new(
        config(serde_json::json!({
            "keyspace": keyspace,
            "request_timeout_ms": 2000,
            "retry_backoff_ms": 50,
        })),
        profit_schema(),
    )
    .unwrap();
    sink.healthcheck().await.expect("healthcheck");
    sink.write(1, &[profit_batch(&TRADES[..2])])
        .await
        .expect("write while up");
    drop(reader);

    let mut restart = RestartCassandra { done: false };
    tokio::task::spawn_blocking(|| services(&["stop", "cassandra"]))
        .await
        .unwrap();

    let second = [profit_batch(&TRADES[2..])];
    let started = Instant::now();
    let down = tokio::time::timeout(Duration::from_secs(60), sink.write(2, &second))
        .await
        .expect("a write while Cassandra is down returns within 60 s");
    let err = down.expect_err("a write while Cassandra is down fails");
    assert!(err.is_transient(), "{err:?}");
    eprintln!(
        "write with Cassandra down failed in {:?}: {err}",
        started.elapsed()
    );

    tokio::task::spawn_blocking(move || {
        restart.now();
        restart
    })
    .await
    .unwrap();

    // The runtime would retry with backoff; do the same, with the same sink, until it succeeds.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut failures = 0;
    loop {
        match sink.write(2, &second).await {
            Ok(()) => break,
            Err(e) => {
                assert!(e.is_transient(), "{e:?}");
                failures += 1;
                assert!(
                    Instant::now() < deadline,
                    "no successful write within 120 s of the restart: {e}"
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    eprintln!("write succeeded after the restart ({failures} transient failures first)");

    let reader = session().await;
    assert_eq!(read_trades(&reader, &keyspace).await, expected_trades());
    drop_keyspace(&reader, &keyspace).await;
}
