//! The Parquet store written by the sink and read back by `register_store`: partition values
//! that need escaping, nulls and dates come back exactly, with the transform's types and column
//! order; a store in the old layout is refused with a message naming its folder.

use std::sync::Arc;

use arrow::array::{Date32Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::util::pretty::pretty_format_batches;
use connectors::parquet::{ParquetConfig, ParquetSink, register_store};
use datafusion::prelude::SessionContext;
use engine::Sink;

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("key", DataType::Utf8, true),
        Field::new("id", DataType::Int64, false),
        Field::new("day", DataType::Date32, true),
    ]))
}

fn config(dir: &std::path::Path) -> ParquetConfig {
    ParquetConfig {
        path: dir.join("store"),
        partition_by: vec!["key".into(), "day".into()],
    }
}

async fn query(config: &ParquetConfig, sql: &str) -> engine::Result<String> {
    let session = SessionContext::new();
    register_store(&session, "t", config, schema()).await?;
    let batches = session.sql(sql).await?.collect().await?;
    Ok(pretty_format_batches(&batches).unwrap().to_string())
}

#[tokio::test]
async fn escaped_null_and_date_partition_values_read_back_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let batch = RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(StringArray::from(vec![
                Some("a/b=c%d:e"),
                None,
                Some("plain"),
            ])),
            Arc::new(Int64Array::from(vec![1, 2, 3])),
            Arc::new(Date32Array::from(vec![Some(20_412), Some(20_413), None])),
        ],
    )
    .unwrap();
    let mut sink = ParquetSink::new(config.clone());
    sink.healthcheck().await.unwrap();
    sink.write(7, &[batch]).await.unwrap();

    let store = &config.path;
    assert!(store.join("key=a%2Fb%3Dc%25d%3Ae/day=2025-11-20").is_dir());
    assert!(
        store
            .join("key=__HIVE_DEFAULT_PARTITION__/day=2025-11-21")
            .is_dir()
    );
    assert!(
        store
            .join("key=plain/day=__HIVE_DEFAULT_PARTITION__")
            .is_dir()
    );

    let got = query(
        &config,
        "SELECT key, id, day, arrow_typeof(day) AS t FROM t ORDER BY id",
    )
    .await
    .unwrap();
    assert_eq!(
        got,
        "\
+-----------+----+------------+--------+
| key       | id | day        | t      |
+-----------+----+------------+--------+
| a/b=c%d:e | 1  | 2025-11-20 | Date32 |
|           | 2  | 2025-11-21 | Date32 |
| plain     | 3  |            | Date32 |
+-----------+----+------------+--------+"
    );
    // The transform's column order, partition columns where the transform has them.
    let star = query(&config, "SELECT * FROM t WHERE id = 1")
        .await
        .unwrap();
    assert!(star.lines().nth(1).unwrap().starts_with("| key "), "{star}");
    assert_eq!(
        query(&config, "SELECT count(*) AS n FROM t WHERE key IS NULL")
            .await
            .unwrap()
            .lines()
            .nth(3),
        Some("| 1 |")
    );
}

#[tokio::test]
async fn a_store_whose_files_hold_the_partition_columns_is_refused_naming_its_folder() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    // What coinstream wrote before: every column in the file, the partition folders as well.
    let folder = config.path.join("key=plain/day=2025-11-20");
    std::fs::create_dir_all(&folder).unwrap();
    let batch = RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(StringArray::from(vec!["plain"])),
            Arc::new(Int64Array::from(vec![1])),
            Arc::new(Date32Array::from(vec![20_412])),
        ],
    )
    .unwrap();
    let file = std::fs::File::create(folder.join("part-0000000000-0000.parquet")).unwrap();
    let mut writer = parquet::arrow::ArrowWriter::try_new(file, schema(), None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();

    let err = query(&config, "SELECT * FROM t")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains(&folder.display().to_string()), "{err}");
    assert!(
        err.contains("older coinstream") && err.contains("move the store aside"),
        "{err}"
    );
}
