//! The Cassandra table of `coinstream query` against the real node (`scripts/services.sh up
//! cassandra`, or `$CASSANDRA_NODES`): rows written by the real sink, read back through
//! DataFusion. Queries whose filters are pushed into CQL return what the same query returns when
//! its filters cannot be pushed (so DataFusion filters a full scan), and what the test computes
//! from the rows it wrote; the scan's `output_rows` metric shows how many rows Cassandra sent
//! (one partition against all of them). Decimals come back exact, and a stored value that would
//! need rounding to fit the column is an error, never a rounded number.
//!
//! Each test uses its own keyspace and drops it at the end. A missing node is a failure that says
//! how to start it, never a skip.

use std::num::NonZeroU16;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryArray, BooleanArray, Date32Array, Decimal128Array, Float32Array, Float64Array,
    Int8Array, Int16Array, Int64Array, LargeStringArray, RecordBatch, StringArray, StringViewArray,
    TimestampMicrosecondArray, TimestampMillisecondArray, TimestampSecondArray,
};
use arrow::datatypes::SchemaRef;
use arrow::util::pretty::pretty_format_batches;
use connectors::cassandra::{CassandraConfig, CassandraSink, CassandraTable, register_table};
use datafusion::physical_plan::{ExecutionPlan, collect, displayable};
use datafusion::prelude::{SessionConfig, SessionContext};
use engine::Sink;
use scylla::client::session::Session;
use testkit::cassandra::{column, drop_keyspace, session, type_matrix};
use testkit::env::cassandra_nodes;

const SYMBOLS: [&str; 3] = ["BTC-USD", "ETH-USD", "SOL-USD"];
/// 2025-11-23, 2025-11-24, 2025-11-25 as days since the epoch.
const DAYS: [i32; 3] = [20_415, 20_416, 20_417];
/// Trades per symbol per day: one partition's rows.
const PER_PARTITION: usize = 120;
const MICROS_PER_DAY: i64 = 86_400_000_000;

/// The profit rows' table, in SQL DDL as users declare tables.
fn profit_schema() -> SchemaRef {
    const DDL: &str = "CREATE TABLE profit (
        symbol     VARCHAR NOT NULL,
        trade_id   BIGINT NOT NULL,
        trade_time TIMESTAMP(6) WITH TIME ZONE NOT NULL,
        trade_date DATE NOT NULL,
        side       VARCHAR,
        profit     DECIMAL(38,10)
    )";
    engine::schema::ddl_table("profit.sql", DDL, "profit").unwrap()
}

/// One written trade.
#[derive(Debug, Clone)]
struct Trade {
    symbol: &'static str,
    id: i64,
    time_micros: i64,
    day: i32,
    /// Unscaled, scale 10.
    profit: i128,
}

/// Every trade: each symbol and day gets [`PER_PARTITION`] trades a minute apart, with profits
/// of every sign and one of 36 digits.
fn trades() -> Vec<Trade> {
    let mut out = Vec::new();
    let mut id = 1_000;
    for symbol in SYMBOLS {
        for day in DAYS {
            for k in 0..PER_PARTITION as i64 {
                id += 1;
                let profit = match id % 7 {
                    0 => 123_456_789_012_345_678_901_234_561_234_567_891,
                    r => (id * 7_919 - 5_000_000) as i128 * 10i128.pow(r as u32),
                };
                out.push(Trade {
                    symbol,
                    id,
                    time_micros: i64::from(day) * MICROS_PER_DAY + k * 60_000_000,
                    day,
                    profit,
                });
            }
        }
    }
    out
}

fn batch_of(trades: &[Trade]) -> RecordBatch {
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            trades.iter().map(|t| t.symbol),
        )),
        Arc::new(Int64Array::from_iter_values(trades.iter().map(|t| t.id))),
        Arc::new(
            TimestampMicrosecondArray::from_iter_values(trades.iter().map(|t| t.time_micros))
                .with_timezone("UTC"),
        ),
        Arc::new(Date32Array::from_iter_values(trades.iter().map(|t| t.day))),
        Arc::new(StringArray::from_iter_values(
            trades
                .iter()
                .map(|t| if t.id % 2 == 0 { "buy" } else { "sell" }),
        )),
        Arc::new(
            Decimal128Array::from_iter_values(trades.iter().map(|t| t.profit))
                .with_precision_and_scale(38, 10)
                .unwrap(),
        ),
    ];
    RecordBatch::try_new(profit_schema(), columns).unwrap()
}

fn config(keyspace: &str, table: &str) -> CassandraConfig {
    serde_json::from_value(serde_json::json!({
        "contact_points": cassandra_nodes(),
        "keyspace": keyspace,
        "table": table,
    }))
    .expect("the test config is valid")
}

/// Writes `batch` with the real sink (which creates the keyspace and table).
async fn write(config: &CassandraConfig, batch: RecordBatch) {
    let mut sink = CassandraSink::new(config.clone(), batch.schema()).unwrap();
    sink.healthcheck().await.expect("the sink connects");
    sink.write(1, &[batch]).await.expect("the rows are written");
    sink.close().await.unwrap();
}

/// A test's own keyspace, whose `crypto_trades` table the real sink has written.
struct Written {
    /// A session for writing around the sink and dropping the keyspace.
    admin: Session,
    keyspace: String,
    config: CassandraConfig,
}

impl Written {
    /// `trades` written into a fresh keyspace named after `prefix`.
    async fn trades(prefix: &str, trades: &[Trade]) -> Self {
        let admin = session().await;
        let keyspace = testkit::unique_name(prefix);
        let config = config(&keyspace, "crypto_trades");
        write(&config, batch_of(trades)).await;
        Self {
            admin,
            keyspace,
            config,
        }
    }

    /// A DataFusion context with the table registered as `crypto_trades`, as `coinstream query`
    /// registers it.
    async fn context(&self) -> SessionContext {
        let ctx = SessionContext::new();
        register_table(&ctx, &["crypto_trades"], &self.config, profit_schema())
            .await
            .unwrap();
        ctx
    }

    /// Drops the test's keyspace, at the end of a test that passed.
    async fn drop_keyspace(self) {
        drop_keyspace(&self.admin, &self.keyspace).await;
    }
}

/// A query's result (pretty-printed), its plan as EXPLAIN shows it, and the rows every
/// `CassandraScan` in it returned.
struct Ran {
    result: String,
    plan: String,
    rows_read: usize,
}

async fn run(ctx: &SessionContext, sql: &str) -> Ran {
    let plan = ctx
        .sql(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .create_physical_plan()
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let batches = collect(plan.clone(), ctx.task_ctx())
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    Ran {
        result: pretty_format_batches(&batches).unwrap().to_string(),
        plan: displayable(plan.as_ref()).indent(true).to_string(),
        rows_read: scanned(&plan),
    }
}

fn scanned(plan: &Arc<dyn ExecutionPlan>) -> usize {
    if plan.name() == "CassandraScan" {
        return plan
            .metrics()
            .and_then(|m| m.output_rows())
            .expect("the scan counts its rows");
    }
    plan.children().into_iter().map(scanned).sum()
}

#[tokio::test]
async fn pushed_down_filters_read_one_partition_and_return_what_a_full_scan_filtered_returns() {
    let all = trades();
    let written = Written::trades("cq_push", &all).await;
    let (config, keyspace) = (&written.config, &written.keyspace);
    // Small pages and batches, so every read spans several of both.
    let ctx = SessionContext::new_with_config(SessionConfig::new().with_batch_size(64));
    let table = CassandraTable::connect(config, profit_schema())
        .await
        .expect("the table connects");
    let table = Arc::new(table.with_page_rows(NonZeroU16::new(50).unwrap()));
    ctx.register_table("profit", table.clone()).unwrap();
    ctx.register_table("crypto_trades", table).unwrap();

    // The partition key, bound by equality: one partition read.
    let pushed = run(
        &ctx,
        "SELECT symbol, trade_id, trade_time, profit FROM profit \
         WHERE symbol = 'ETH-USD' AND trade_date = DATE '2025-11-24' ORDER BY trade_id",
    )
    .await;
    let unpushed = run(
        &ctx,
        "SELECT symbol, trade_id, trade_time, profit FROM profit \
         WHERE symbol || '' = 'ETH-USD' AND CAST(trade_date AS VARCHAR) = '2025-11-24' \
         ORDER BY trade_id",
    )
    .await;
    assert!(
        pushed.plan.contains(
            "CassandraScan: ks.crypto_trades projection=[symbol, trade_id, trade_time, profit] \
             where=\"symbol\" = ? AND \"trade_date\" = ? ['ETH-USD', 2025-11-24]"
                .replace("ks", keyspace)
                .as_str()
        ),
        "{}",
        pushed.plan
    );
    assert!(
        unpushed.plan.contains("where=none (full scan)"),
        "{}",
        unpushed.plan
    );
    assert_eq!(pushed.result, unpushed.result);
    let expected = all
        .iter()
        .filter(|t| t.symbol == "ETH-USD" && t.day == DAYS[1])
        .count();
    assert_eq!(expected, PER_PARTITION);
    assert_eq!(
        pushed.result.lines().count(),
        expected + 4,
        "{}",
        pushed.result
    );
    assert_eq!(pushed.rows_read, PER_PARTITION, "one partition read");
    assert_eq!(unpushed.rows_read, all.len(), "every row read");

    // A slice of the clustering key inside the partition, as [start, end).
    let (from, to) = ("2025-11-24T00:30:00Z", "2025-11-24T01:10:00Z");
    let pushed = run(
        &ctx,
        &format!(
            "SELECT trade_id, profit FROM crypto_trades WHERE symbol = 'SOL-USD' \
             AND trade_date = DATE '2025-11-24' AND trade_time >= TIMESTAMP '{from}' \
             AND trade_time < TIMESTAMP '{to}' ORDER BY trade_id"
        ),
    )
    .await;
    let unpushed = run(
        &ctx,
        &format!(
            "SELECT trade_id, profit FROM crypto_trades WHERE symbol || '' = 'SOL-USD' \
             AND CAST(trade_date AS VARCHAR) = '2025-11-24' \
             AND trade_time >= TIMESTAMP '{from}' AND trade_time < TIMESTAMP '{to}' \
             ORDER BY trade_id"
        ),
    )
    .await;
    let start = i64::from(DAYS[1]) * MICROS_PER_DAY + 30 * 60_000_000;
    let end = i64::from(DAYS[1]) * MICROS_PER_DAY + 70 * 60_000_000;
    let in_slice = all
        .iter()
        .filter(|t| {
            t.symbol == "SOL-USD" && t.day == DAYS[1] && (start..end).contains(&t.time_micros)
        })
        .count();
    assert_eq!(in_slice, 40);
    assert!(
        pushed
            .plan
            .contains("AND \"trade_time\" >= ? AND \"trade_time\" < ?"),
        "{}",
        pushed.plan
    );
    assert_eq!(pushed.result, unpushed.result);
    assert_eq!(pushed.rows_read, in_slice, "only the slice read");
    assert_eq!(unpushed.rows_read, all.len());

    // IN on the partition key: two partitions.
    let pushed = run(
        &ctx,
        "SELECT symbol, count(*) AS n, sum(profit) AS total FROM profit \
         WHERE symbol IN ('BTC-USD', 'SOL-USD') AND trade_date = DATE '2025-11-25' \
         GROUP BY symbol ORDER BY symbol",
    )
    .await;
    let unpushed = run(
        &ctx,
        "SELECT symbol, count(*) AS n, sum(profit) AS total FROM profit \
         WHERE symbol || '' IN ('BTC-USD', 'SOL-USD') AND CAST(trade_date AS VARCHAR) = '2025-11-25' \
         GROUP BY symbol ORDER BY symbol",
    )
    .await;
    assert!(
        pushed.plan.contains(
            "where=\"symbol\" IN ? AND \"trade_date\" = ? [('BTC-USD', 'SOL-USD'), 2025-11-25]"
        ),
        "{}",
        pushed.plan
    );
    assert_eq!(pushed.result, unpushed.result);
    assert_eq!(pushed.rows_read, 2 * PER_PARTITION);

    // A limit with every filter pushed goes into the CQL too.
    let limited = run(
        &ctx,
        "SELECT trade_id FROM profit WHERE symbol = 'BTC-USD' \
         AND trade_date = DATE '2025-11-23' LIMIT 5",
    )
    .await;
    assert!(limited.plan.contains("limit=5"), "{}", limited.plan);
    assert_eq!(limited.result.lines().count(), 5 + 4, "{}", limited.result);
    assert_eq!(limited.rows_read, 5);

    // count(*) projects no column at all.
    let counted = run(&ctx, "SELECT count(*) AS n FROM crypto_trades").await;
    assert!(
        counted.result.contains(&format!("| {} |", all.len())),
        "{}",
        counted.result
    );

    written.drop_keyspace().await;
}

/// The query: per symbol, the count and the largest profit, exact to the last digit.
#[tokio::test]
async fn aggregates_every_row_with_exact_decimals() {
    let all = trades();
    let written = Written::trades("cq_agg", &all).await;
    let ran = run(
        &written.context().await,
        "SELECT symbol, count(*) AS n, max(profit) AS best, min(profit) AS worst \
         FROM crypto_trades GROUP BY symbol ORDER BY symbol",
    )
    .await;
    let mut expected = String::new();
    for symbol in SYMBOLS {
        let profits: Vec<i128> = all
            .iter()
            .filter(|t| t.symbol == symbol)
            .map(|t| t.profit)
            .collect();
        let show = |v: i128| {
            let digits = format!("{:011}", v.unsigned_abs());
            let (int, frac) = digits.split_at(digits.len() - 10);
            format!("{}{int}.{frac}", if v < 0 { "-" } else { "" })
        };
        expected.push_str(&format!(
            "{symbol} {} {} {}\n",
            profits.len(),
            show(*profits.iter().max().unwrap()),
            show(*profits.iter().min().unwrap())
        ));
    }
    let got: String = ran
        .result
        .lines()
        .filter(|l| l.starts_with("| ") && !l.contains("symbol"))
        .map(|l| {
            let cells: Vec<&str> = l
                .split('|')
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .collect();
            format!("{}\n", cells.join(" "))
        })
        .collect();
    assert_eq!(got, expected, "{}", ran.result);
    assert!(
        got.contains("12345678901234567890123456.1234567891"),
        "the 36-digit profit is exact: {got}"
    );
    assert_eq!(ran.rows_read, all.len());
    written.drop_keyspace().await;
}

/// A decimal written outside the pipeline with more digits after the point than the column's
/// scale would have to be rounded: the query fails naming the column instead.
#[tokio::test]
async fn a_decimal_finer_than_the_column_scale_is_an_error_not_a_rounded_value() {
    let written = Written::trades("cq_dec", &trades()[..3]).await;
    let keyspace = &written.keyspace;
    written
        .admin
        .query_unpaged(
            format!(
                "INSERT INTO \"{keyspace}\".\"crypto_trades\" \
                 (symbol, trade_date, trade_time, trade_id, profit) \
                 VALUES ('BTC-USD', '2025-11-23', 1763856000000, 1, 0.12345678901)"
            ),
            (),
        )
        .await
        .expect("insert a finer decimal");
    let err = written
        .context()
        .await
        .sql("SELECT profit FROM crypto_trades WHERE symbol = 'BTC-USD' AND trade_date = DATE '2025-11-23'")
        .await
        .unwrap()
        .collect()
        .await
        .expect_err("a decimal that needs rounding");
    let message = err.to_string();
    assert!(
        message.contains(
            "column \"profit\": decimal 12345678901E-11 has more than 10 digits after the point"
        ),
        "{message}"
    );
    written.drop_keyspace().await;
}

/// Every Arrow type the sink stores reads back as the same Arrow type and value.
#[tokio::test]
async fn every_stored_type_reads_back_as_its_arrow_type() {
    let admin = session().await;
    let keyspace = testkit::unique_name("cq_types");
    let written = type_matrix(vec![
        column(
            "Mixed Case",
            StringArray::from(vec![Some("a"), None, Some("ü ✓")]),
        ),
        column("b", BooleanArray::from(vec![Some(true), Some(false), None])),
        column("i8", Int8Array::from(vec![Some(-128), None, Some(127)])),
        column("i16", Int16Array::from(vec![Some(-32768), Some(5), None])),
        column(
            "i64",
            Int64Array::from(vec![Some(i64::MIN), Some(i64::MAX), None]),
        ),
        column(
            "f32",
            Float32Array::from(vec![Some(1.5), None, Some(-0.25)]),
        ),
        column(
            "f64",
            Float64Array::from(vec![Some(0.1), Some(-1e300), None]),
        ),
        column(
            "dec",
            Decimal128Array::from(vec![Some(-999_999_999), Some(1), None])
                .with_precision_and_scale(9, 2)
                .unwrap(),
        ),
        column(
            "large_text",
            LargeStringArray::from(vec![None, Some("large"), Some("")]),
        ),
        column(
            "view_text",
            StringViewArray::from(vec![
                Some("a view longer than twelve bytes"),
                None,
                Some("v"),
            ]),
        ),
        column(
            "bin",
            BinaryArray::from(vec![Some(&b"\x00\xff"[..]), None, Some(&b""[..])]),
        ),
        column(
            "ts_s",
            TimestampSecondArray::from(vec![Some(-86_400), Some(0), None]),
        ),
        column(
            "ts_ms",
            TimestampMillisecondArray::from(vec![Some(1_795_000_000_123), None, Some(-1)])
                .with_timezone("+02:00"),
        ),
        column(
            "day",
            Date32Array::from(vec![Some(-1), Some(0), Some(20_415)]),
        ),
    ]);
    let schema = written.schema();
    let config: CassandraConfig = serde_json::from_value(serde_json::json!({
        "contact_points": cassandra_nodes(),
        "keyspace": keyspace,
        "table": "types",
        "partition_key": ["id"],
        "clustering_key": [],
    }))
    .unwrap();
    write(&config, written.clone()).await;
    let ctx = SessionContext::new();
    register_table(&ctx, &["types"], &config, schema.clone())
        .await
        .unwrap();
    let batches = ctx
        .sql("SELECT * FROM types ORDER BY id")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    for (field, read) in schema.fields().iter().zip(batches[0].schema().fields()) {
        assert_eq!(field.data_type(), read.data_type(), "{}", field.name());
    }
    assert_eq!(
        pretty_format_batches(&batches).unwrap().to_string(),
        pretty_format_batches(&[written]).unwrap().to_string()
    );
    drop_keyspace(&admin, &keyspace).await;
}

#[tokio::test]
async fn a_table_the_pipeline_has_not_created_is_a_clear_error() {
    let keyspace = testkit::unique_name("cq_none");
    let err = register_table(
        &SessionContext::new(),
        &["profit"],
        &config(&keyspace, "crypto_trades"),
        profit_schema(),
    )
    .await
    .expect_err("no such table");
    assert_eq!(
        err.to_string(),
        format!(
            "sink cassandra {keyspace}.crypto_trades: table \"{keyspace}\".\"crypto_trades\" \
             does not exist yet; run the pipeline first"
        )
    );
}
