//! Decode + `sql/profit.sql` on 1,000,000 generated trades, and the fixed cost of one micro-batch.
//! Run: `cargo bench -p coinstream-engine --bench decode_profit`.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::PathBuf;
use std::time::SystemTime;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use engine::RawRecord;
use engine::context::{ContextOptions, EngineContext, InputSlot};
use engine::decode::RecordDecoder;
use engine::reference::ReferenceTable;
use engine::schema::ddl_table;
use engine::transform::{PlannedTransform, TransformFile};

const TRADES: usize = 1_000_000;
const BATCH: usize = 100_000;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The input and reference tables, as `coinstream.toml` declares them.
const TRADES_DDL: &str = include_str!("../../sql/tables/trades.sql");
const REFERENCE_DDL: &str = include_str!("../../sql/tables/reference.sql");

/// The coin map's products with their names and a price level each: the first trade's price of
/// the product in the shipped sample capture (`required_data/sample_trades.jsonl`), so the
/// generated prices have the digits the real ones have.
fn products() -> Vec<(String, String, f64)> {
    let read =
        |file: &str| std::fs::read_to_string(repo().join("required_data").join(file)).unwrap();
    let names: BTreeMap<String, String> = serde_json::from_str(&read("coin_map.json")).unwrap();
    let mut levels = BTreeMap::new();
    for line in read("sample_trades.jsonl").lines() {
        let Ok(frame) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let product = frame["product_id"].as_str();
        let price = frame["price"].as_str().and_then(|p| p.parse::<f64>().ok());
        if let (Some(product), Some(price)) = (product, price) {
            levels.entry(product.to_owned()).or_insert(price);
        }
    }
    names
        .into_iter()
        .map(|(symbol, name)| {
            let level = levels[&symbol];
            (symbol, name, level)
        })
        .collect()
}

/// Bus records shaped as the connectors write them, over every product of the coin map (9 of the
/// portfolio and 4 others).
fn messages(n: usize) -> Vec<RawRecord> {
    let products = products();
    let mut state: u64 = 42;
    (0..n)
        .map(|i| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let (symbol, name, level) = &products[(state >> 33) as usize % products.len()];
            let price = level * (1.0 + ((state >> 40) as f64 / (1u64 << 24) as f64 - 0.5) / 50.0);
            let payload = format!(
                r#"{{"symbol":"{symbol}","coin_name":"{name}","trade_id":{},"sequence":{},"trade_time":"2026-11-20T14:{:02}:{:02}.{:06}Z","price":"{price:.8}","size":"{:.8}","side":"{}","ingest_time":"2026-11-20T14:00:00.000000Z"}}"#,
                100_000_000 + i,
                5_000_000_000u64 + i as u64 * 7,
                (i / 60_000) % 60,
                (i / 1000) % 60,
                i % 1_000_000,
                (state % 10_000) as f64 / 1000.0,
                if state & 1 == 0 { "buy" } else { "sell" },
            );
            RawRecord {
                position: engine::RecordPosition::new(0, i as i64),
                payload: payload.into_bytes(),
                rejected: None,
                frame: None,
                received_at: SystemTime::now(),
            }
        })
        .collect()
}

/// User + system CPU seconds of this process so far (Linux: `/proc/self/stat`, 100 ticks/s).
fn process_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

async fn planned() -> (EngineContext, InputSlot, PlannedTransform) {
    let mut ctx = EngineContext::new(&ContextOptions::default());
    for name in ["portfolio", "coins"] {
        let table = ddl_table("reference.sql", REFERENCE_DDL, name).unwrap();
        let path = repo().join(match name {
            "portfolio" => "required_data/my_Portfolio.json",
            _ => "required_data/coin_map.json",
        });
        ctx.register_reference(
            &ReferenceTable::declared(name.into(), path, "symbol", &table).unwrap(),
        )
        .unwrap();
    }
    let slot = ctx
        .register_input(
            "trades",
            ddl_table("trades.sql", TRADES_DDL, "trades").unwrap(),
        )
        .unwrap();
    let transform = ctx
        .register_transform(TransformFile::read(&repo().join("sql/profit.sql")).unwrap())
        .await
        .unwrap();
    (ctx, slot, transform)
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (ctx, slot, transform) = rt.block_on(planned());
    let schema = slot.schema().clone();
    let records = messages(TRADES);

    let mut group = c.benchmark_group("1M trades");
    group.sample_size(10);
    group.throughput(Throughput::Elements(TRADES as u64));
    // A capture where one product in eight is missing from the coin map: its frames reach the
    // decoder already rejected by the source (dead letters), the rest decode as usual. The target
    // (issue 15) is within 1.3x of the clean batches.
    let mut with_dead_letters = records.clone();
    for r in with_dead_letters.iter_mut().step_by(8) {
        r.rejected = Some("product not in the coin map".into());
    }
    // One malformed message per batch: it alone takes arrow's per-message path.
    let mut one_bad = records.clone();
    for r in one_bad.iter_mut().step_by(BATCH) {
        r.payload.truncate(r.payload.len() / 2);
    }
    for (name, capture) in [
        ("decode", &records),
        ("decode, 12.5% already rejected", &with_dead_letters),
        ("decode, one malformed message per batch", &one_bad),
    ] {
        group.bench_function(name, |b| {
            let mut decoder = RecordDecoder::new(schema.clone());
            b.iter(|| {
                for chunk in capture.chunks(BATCH) {
                    black_box(decoder.decode(chunk).unwrap());
                }
            })
        });
    }
    let mut decoder = RecordDecoder::new(schema.clone());
    let decoded: Vec<_> = records
        .chunks(BATCH)
        .map(|c| decoder.decode(c).unwrap().batch)
        .collect();
    group.bench_function("profit.sql", |b| {
        b.iter(|| {
            rt.block_on(async {
                for batch in &decoded {
                    slot.set(vec![batch.clone()]);
                    black_box(transform.execute().await.unwrap());
                }
            })
        })
    });
    group.bench_function("decode + profit.sql", |b| {
        let mut decoder = RecordDecoder::new(schema.clone());
        b.iter(|| {
            rt.block_on(async {
                for chunk in records.chunks(BATCH) {
                    slot.set(vec![decoder.decode(chunk).unwrap().batch]);
                    black_box(transform.execute().await.unwrap());
                }
            })
        })
    });
    group.finish();

    // Throughput per core, from the CPU time this process used (wall time on a shared 2-core
    // machine also counts other processes' turns).
    let per_cpu_second = |label: &str, run: &mut dyn FnMut()| {
        let (cpu0, wall0) = (process_cpu_seconds(), std::time::Instant::now());
        let rounds = 5;
        for _ in 0..rounds {
            run();
        }
        let cpu = process_cpu_seconds() - cpu0;
        let wall = wall0.elapsed().as_secs_f64();
        println!(
            "{label:<40} {:>12.0} trades per CPU-second ({:.2} CPU-s, {:.2} wall-s for {rounds} x 1M)",
            (rounds * TRADES) as f64 / cpu,
            cpu,
            wall
        );
    };
    let mut decoder = RecordDecoder::new(schema.clone());
    per_cpu_second("decode", &mut || {
        for chunk in records.chunks(BATCH) {
            black_box(decoder.decode(chunk).unwrap());
        }
    });
    per_cpu_second("decode, 12.5% already rejected", &mut || {
        for chunk in with_dead_letters.chunks(BATCH) {
            black_box(decoder.decode(chunk).unwrap());
        }
    });
    per_cpu_second("decode, one malformed message per batch", &mut || {
        for chunk in one_bad.chunks(BATCH) {
            black_box(decoder.decode(chunk).unwrap());
        }
    });
    per_cpu_second("decode + profit.sql", &mut || {
        rt.block_on(async {
            for chunk in records.chunks(BATCH) {
                slot.set(vec![decoder.decode(chunk).unwrap().batch]);
                black_box(transform.execute().await.unwrap());
            }
        })
    });

    // The fixed cost of a micro-batch: one trade through the reused plan, against planning the
    // same SQL again for every batch.
    let one = decoder.decode(&records[..1]).unwrap().batch;
    let mut group = c.benchmark_group("per-batch overhead (1 trade)");
    group.bench_function("reused plan", |b| {
        b.iter(|| {
            rt.block_on(async {
                slot.set(vec![one.clone()]);
                black_box(transform.execute().await.unwrap());
            })
        })
    });
    let sql = std::fs::read_to_string(repo().join("sql/profit.sql")).unwrap();
    group.bench_function("re-planned", |b| {
        b.iter(|| {
            rt.block_on(async {
                slot.set(vec![one.clone()]);
                black_box(
                    ctx.session()
                        .sql(&sql)
                        .await
                        .unwrap()
                        .collect()
                        .await
                        .unwrap(),
                );
            })
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
