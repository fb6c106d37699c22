//! The embedded job's sinks on rows shaped as `sql/profit.sql`'s output (9 products on one day,
//! partitioned by `symbol` and `trade_date` as `coinstream.toml` writes them): one micro-batch
//! written per iteration, as a capture's 40,000-row batch and as a live feed's 20-row batch at a
//! 10 ms trigger. The Delta sink commits one table version per batch, with compaction off (its
//! merges would land in whichever iterations they fell on); the log checkpoints delta-rs writes
//! every 100 commits are in the figures. The Parquet sink writes one file per partition.
//! Run: `cargo bench -p coinstream-connectors --bench sinks`.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, Date32Array, Decimal128Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use connectors::delta::{CompactionConfig, DeltaConfig, DeltaSink};
use connectors::parquet::{ParquetConfig, ParquetSink};
use criterion::measurement::WallTime;
use criterion::{
    BenchmarkGroup, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main,
};
use engine::Sink;

const SYMBOLS: [&str; 9] = [
    "BTC-USD", "ETH-USD", "SOL-USD", "ADA-USD", "DOGE-USD", "DOT-USD", "AVAX-USD", "LINK-USD",
    "LTC-USD",
];

/// The output of `sql/profit.sql` over `sql/tables/trades.sql`: decimals as DataFusion types
/// them (price and size DECIMAL(28,10), the profit's product DECIMAL(38,20)).
fn profit_schema() -> SchemaRef {
    let utc = Some("UTC".into());
    Arc::new(Schema::new(vec![
        Field::new("symbol", DataType::Utf8, false),
        Field::new("coin_name", DataType::Utf8, true),
        Field::new("trade_id", DataType::Int64, false),
        Field::new(
            "trade_time",
            DataType::Timestamp(TimeUnit::Microsecond, utc),
            false,
        ),
        Field::new("trade_date", DataType::Date32, false),
        Field::new("price", DataType::Decimal128(28, 10), false),
        Field::new("size", DataType::Decimal128(28, 10), false),
        Field::new("side", DataType::Utf8, false),
        Field::new("profit", DataType::Decimal128(38, 20), false),
    ]))
}

/// `rows` trades spread over the products in turn, one second apart on 2025-12-02, with
/// prices, sizes and profits that vary from row to row as a feed's do.
fn profit_rows(rows: usize) -> RecordBatch {
    let start = 1_764_633_600_000_000_i64; // 2025-12-02T00:00:00Z
    let day = (start / 86_400_000_000) as i32;
    let n = rows as i64;
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            (0..rows).map(|r| SYMBOLS[r % SYMBOLS.len()]),
        )),
        Arc::new(StringArray::from_iter_values(
            (0..rows).map(|r| &SYMBOLS[r % SYMBOLS.len()][..3]),
        )),
        Arc::new(Int64Array::from_iter_values(1_000_000..1_000_000 + n)),
        Arc::new(
            TimestampMicrosecondArray::from_iter_values((0..n).map(|i| start + i * 1_000_000))
                .with_timezone("UTC"),
        ),
        Arc::new(Date32Array::from_iter_values((0..rows).map(|_| day))),
        Arc::new(
            Decimal128Array::from_iter_values(
                (0..n).map(|i| 1_000_000_000_000 + i128::from(i * 7_919 % 1_000_003)),
            )
            .with_precision_and_scale(28, 10)
            .expect("valid precision"),
        ),
        Arc::new(
            Decimal128Array::from_iter_values(
                (0..n).map(|i| 1_000_000 + i128::from(i * 104_729 % 99_991)),
            )
            .with_precision_and_scale(28, 10)
            .expect("valid precision"),
        ),
        Arc::new(StringArray::from_iter_values(
            (0..rows).map(|r| if r % 2 == 0 { "buy" } else { "sell" }),
        )),
        Arc::new(
            Decimal128Array::from_iter_values(
                (0..n).map(|i| i128::from(i * 15_485_863 % 2_000_003 - 1_000_000) * 10i128.pow(12)),
            )
            .with_precision_and_scale(38, 20)
            .expect("valid precision"),
        ),
    ];
    RecordBatch::try_new(profit_schema(), columns).expect("columns match the schema")
}

fn partition_by() -> Vec<String> {
    vec!["symbol".into(), "trade_date".into()]
}

/// Benches `sink` as `name`: one write of `batch` per iteration, each the next micro-batch (a
/// batch id the sink has not committed), after the healthcheck and the query binding a run does.
fn bench_sink(
    group: &mut BenchmarkGroup<'_, WallTime>,
    rt: &tokio::runtime::Runtime,
    name: &str,
    mut sink: Box<dyn Sink>,
    batch: &RecordBatch,
) {
    rt.block_on(async {
        sink.healthcheck().await.unwrap();
        sink.bind_query("bench", 0).await.unwrap();
    });
    let mut batch_id = 0;
    group.bench_function(BenchmarkId::new(name, batch.num_rows()), |b| {
        b.iter(|| {
            rt.block_on(sink.write(batch_id, std::slice::from_ref(batch)))
                .unwrap();
            batch_id += 1;
        })
    });
    rt.block_on(sink.close()).unwrap();
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("sinks");
    group.sample_size(10);
    for rows in [40_000, 20] {
        let batch = profit_rows(rows);
        group.throughput(Throughput::Elements(rows as u64));
        let dir = tempfile::tempdir().unwrap();
        let delta = DeltaSink::new(
            DeltaConfig {
                path: dir.path().join("delta"),
                partition_by: partition_by(),
                compaction: CompactionConfig {
                    enabled: false,
                    ..CompactionConfig::default()
                },
            },
            profit_schema(),
        );
        bench_sink(
            &mut group,
            &rt,
            "delta, one commit",
            Box::new(delta),
            &batch,
        );
        let parquet = ParquetSink::new(ParquetConfig {
            path: dir.path().join("parquet"),
            partition_by: partition_by(),
        });
        let name = "parquet, files per partition";
        bench_sink(&mut group, &rt, name, Box::new(parquet), &batch);
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
