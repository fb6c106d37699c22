//! The Coinbase capture source on 100,000 generated feed frames (one file, one batch), read and
//! decoded into the input table's rows: trades handed over as bus-record JSON for the decoder to
//! parse again, against rows the source builds itself (`Source::build_rows`), the path the
//! engine takes. Run: `cargo bench -p coinstream-connectors --bench capture`.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::Duration;

use connectors::coinbase::capture::{CoinbaseCaptureConfig, CoinbaseCaptureSource};
use connectors::common::trade::trade_schema;
use connectors::generate::{Generator, write_feed};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use engine::decode::RecordDecoder;
use engine::{Poll, PollLimits, Source, StartRequest};

const TRADES: u64 = 100_000;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Reads the whole capture at `path` as one batch and decodes it; with `rows`, the source builds
/// the trades' rows. Returns the rows decoded.
async fn read_and_decode(path: &Path, rows: bool) -> usize {
    let mut source = CoinbaseCaptureSource::new(CoinbaseCaptureConfig {
        path: path.to_owned(),
        coin_map: repo().join("required_data/coin_map.json"),
    })
    .unwrap();
    let mut decoder = RecordDecoder::new(trade_schema());
    if rows {
        source.build_rows(decoder.row_layout().unwrap());
    }
    source.start(StartRequest::default()).await.unwrap();
    let limits = PollLimits {
        max_records: 2 * TRADES as usize,
        max_wait: Duration::from_secs(1),
    };
    let Poll::Batch(batch) = source.poll(limits).await.unwrap() else {
        panic!("the capture is not empty");
    };
    let decoded = decoder
        .decode_with(&batch.records, batch.rows.as_ref())
        .unwrap();
    decoded.batch.num_rows()
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("feed.jsonl");
    let mut generator = Generator::from_files(
        &repo().join("required_data/my_Portfolio.json"),
        &repo().join("required_data/coin_map.json"),
        42,
        1_764_633_600_000_000,
        1_000,
    )
    .unwrap();
    let mut out = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    write_feed(&mut generator, TRADES, &mut out).unwrap();
    drop(out);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .build()
        .unwrap();
    // Both ways give every trade's row.
    let json = rt.block_on(read_and_decode(&path, false));
    assert_eq!(json, rt.block_on(read_and_decode(&path, true)));
    assert_eq!(json as u64, TRADES);

    let mut group = c.benchmark_group("capture, 100k frames");
    group.sample_size(10);
    group.throughput(Throughput::Elements(TRADES));
    group.bench_function("read + decode, trades as JSON", |b| {
        b.iter(|| black_box(rt.block_on(read_and_decode(&path, false))))
    });
    group.bench_function("read + decode, rows built by the source", |b| {
        b.iter(|| black_box(rt.block_on(read_and_decode(&path, true))))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
