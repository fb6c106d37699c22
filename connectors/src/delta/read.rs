//! Reading a loaded version of a Delta table as a DataFusion table, for `coinstream query`.
//!
//! The table's live files and their partition values come from the log (delta-rs's snapshot);
//! DataFusion's own Parquet scan reads them, in parallel, with the query's filters pruning whole
//! files by their partition values and row groups by their statistics. delta-rs has such a table
//! provider too, behind its `datafusion` feature, which also builds DataFusion's default
//! features and the parts of delta-rs this project does not use (MERGE, UPDATE, DELETE, its
//! DataFusion writer), about a tenth of a cold release build's work, and puts delta-rs on the
//! build's critical path behind DataFusion (bench/results/2026-12-03-build.md).
//!
//! Not read here, refused with an error that says so: column mapping (the files' column names
//! are not the table's) and deletion vectors (rows of a file marked deleted). coinstream never
//! writes either; tables other writers made with them need a reader that has them (Spark, the
//! `deltalake` Python package).

use std::sync::Arc;

use arrow::array::{Array, RecordBatch};
use arrow::datatypes::{Field, FieldRef, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::common::cast::as_boolean_array;
use datafusion::common::{Column, DFSchema, ScalarValue};
use datafusion::datasource::TableProvider;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::object_store::ObjectStoreUrl;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder, ParquetSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::datasource::table_schema::TableSchema;
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown, TableType};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::empty::EmptyExec;
use delta_kernel::table_features::ColumnMappingMode;
use deltalake::kernel::engine::arrow_conversion::TryIntoArrow;
use deltalake::logstore::object_store::ObjectMeta;
use deltalake::{DeltaTable, DeltaTableError, Path as StorePath};

/// One version of a Delta table in a local folder, as DataFusion reads it: the table's columns
/// with the partition columns last (in the table's partition order), as delta-rs and Spark
/// show them.
#[derive(Debug)]
pub(super) struct DeltaVersion {
    /// The files' columns, then the partition columns.
    schema: SchemaRef,
    /// The partition columns' fields, in the table's partition order.
    partition_fields: Vec<FieldRef>,
    /// The files' columns (the schema without the partition columns).
    file_schema: SchemaRef,
    files: Vec<PartitionedFile>,
}

impl DeltaVersion {
    /// The version `table` has loaded, whose folder is `root` (absolute).
    ///
    /// # Errors
    /// The table's schema has no Arrow form, a partition value does not parse as its column's
    /// type, or the table uses column mapping or deletion vectors (above).
    pub(super) fn of(table: &DeltaTable, root: &std::path::Path) -> Result<Self, DeltaTableError> {
        let state = table.snapshot()?;
        if let Some(mode) = state.table_config().column_mapping_mode
            && mode != ColumnMappingMode::None
        {
            return Err(unsupported(format!(
                "uses column mapping ({mode:?}), which coinstream's reader does not read"
            )));
        }
        let table_schema: Schema = state.schema().as_ref().try_into_arrow()?;
        let partition_by = state.metadata().partition_columns();
        let is_partition = |name: &str| partition_by.iter().any(|p| p == name);
        let file_fields = (table_schema.fields().iter())
            .filter(|f| !is_partition(f.name()))
            .cloned();
        let file_schema = Arc::new(Schema::new(file_fields.collect::<Vec<_>>()));
        let partition_fields = (partition_by.iter())
            .map(|name| Ok(Arc::new(table_schema.field_with_name(name)?.clone())))
            .collect::<Result<Vec<_>, DeltaTableError>>()?;
        let all = (file_schema.fields().iter())
            .chain(&partition_fields)
            .cloned();
        let schema = Arc::new(Schema::new(all.collect::<Vec<_>>()));

        let mut files = Vec::new();
        for file in state.log_data().iter() {
            if file.deletion_vector_descriptor().is_some() {
                return Err(unsupported(format!(
                    "has deletion vectors (file {}), which coinstream's reader does not apply",
                    file.path()
                )));
            }
            let mut values = file.partition_values_map();
            let partition_values = (partition_fields.iter())
                .map(|field| partition_value(field, values.remove(field.name()).flatten()))
                .collect::<Result<Vec<_>, _>>()?;
            // The store path straight from the file's: through text, a `%` in a folder name
            // (Delta escapes partition values with them) would be escaped twice.
            let location = StorePath::from_absolute_path(local_path(root, &file.path())?)
                .map_err(|e| DeltaTableError::Generic(format!("a file's path: {e}")))?;
            let meta = ObjectMeta {
                location,
                last_modified: file.modification_datetime()?,
                size: u64::try_from(file.size()).map_err(|_| {
                    DeltaTableError::Generic(format!("file {} has a negative size", file.path()))
                })?,
                e_tag: None,
                version: None,
            };
            files
                .push(PartitionedFile::new_from_meta(meta).with_partition_values(partition_values));
        }
        Ok(Self {
            schema,
            partition_fields,
            file_schema,
            files,
        })
    }
}

/// A partition value as the log holds it (text; `None` or, as the protocol says, an empty
/// text: null), as a value of `field`'s type. Delta writes dates as `2026-11-30` and timestamps
/// as `2026-11-30 12:00:00.000000` (UTC), which Arrow's casts from text read.
fn partition_value(field: &Field, text: Option<String>) -> Result<ScalarValue, DeltaTableError> {
    let parsed = match text.filter(|t| !t.is_empty()) {
        None => ScalarValue::try_from(field.data_type()),
        Some(text) => ScalarValue::try_from_string(text, field.data_type()),
    };
    parsed.map_err(|e| {
        DeltaTableError::Generic(format!(
            "partition column {:?}: a value is not a {}: {e}",
            field.name(),
            field.data_type()
        ))
    })
}

/// Where a file the log names (`path`, URL-decoded) is: relative to the table's folder `root`,
/// or an absolute `file://` URL (the protocol allows both).
fn local_path(root: &std::path::Path, path: &str) -> Result<std::path::PathBuf, DeltaTableError> {
    if !path.contains("://") {
        return Ok(root.join(path));
    }
    let url =
        url::Url::parse(path).map_err(|e| unsupported(format!("names a file {path:?}: {e}")))?;
    url.to_file_path().map_err(|()| {
        unsupported(format!(
            "names a file outside the local file system: {path}"
        ))
    })
}

fn unsupported(what: String) -> DeltaTableError {
    DeltaTableError::Generic(format!("the table {what}"))
}

impl DeltaVersion {
    /// The files whose partition values pass the `filters` that read only partition columns
    /// (all files when there are none), as Spark and delta-rs prune partitions at planning. A
    /// volatile filter (`random() < 0.5`) is left to DataFusion: evaluated here too, it would
    /// be applied twice.
    fn files_matching(
        &self,
        state: &dyn Session,
        filters: &[Expr],
    ) -> DfResult<Vec<PartitionedFile>> {
        let is_partition = |c: &Column| self.partition_fields.iter().any(|f| f.name() == &c.name);
        let on_partitions = filters
            .iter()
            .filter(|f| !f.is_volatile() && f.column_refs().iter().all(|c| is_partition(c)))
            .cloned();
        let (Some(predicate), false) =
            (conjunction(on_partitions), self.partition_fields.is_empty())
        else {
            return Ok(self.files.clone());
        };
        let schema = Arc::new(Schema::new(self.partition_fields.clone()));
        let predicate =
            state.create_physical_expr(predicate, &DFSchema::try_from(schema.clone())?)?;
        // One row a file, one column a partition column.
        let columns = (0..self.partition_fields.len())
            .map(|i| {
                ScalarValue::iter_to_array(self.files.iter().map(|f| f.partition_values[i].clone()))
            })
            .collect::<DfResult<Vec<_>>>()?;
        let values = RecordBatch::try_new(schema, columns)?;
        let matched = predicate.evaluate(&values)?.into_array(values.num_rows())?;
        let matched = as_boolean_array(&matched)?;
        Ok((self.files.iter().enumerate())
            .filter(|(i, _)| matched.is_valid(*i) && matched.value(*i))
            .map(|(_, f)| f.clone())
            .collect())
    }
}

#[async_trait]
impl TableProvider for DeltaVersion {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    /// Every filter prunes files and row groups, and DataFusion applies it to the rows as well.
    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DfResult<Vec<TableProviderFilterPushDown>> {
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let files = self.files_matching(state, filters)?;
        if files.is_empty() {
            let schema = match projection {
                Some(p) => Arc::new(self.schema.project(p)?),
                None => self.schema.clone(),
            };
            return Ok(Arc::new(EmptyExec::new(schema)));
        }
        let table_schema = TableSchema::builder(self.file_schema.clone())
            .with_table_partition_cols(self.partition_fields.clone())
            .build();
        // DataFusion's physical optimizer hands the filters to the Parquet scan as well, which
        // skips row groups by their statistics.
        let source = ParquetSource::new(table_schema)
            .with_table_parquet_options(state.table_options().parquet.clone());
        // Files dealt round-robin to as many groups as DataFusion runs partitions.
        let groups = state
            .config()
            .target_partitions()
            .clamp(1, files.len().max(1));
        let mut grouped = vec![Vec::new(); groups];
        for (i, file) in files.into_iter().enumerate() {
            grouped[i % groups].push(file);
        }
        let config =
            FileScanConfigBuilder::new(ObjectStoreUrl::local_filesystem(), Arc::new(source))
                .with_file_groups(grouped.into_iter().map(FileGroup::new).collect())
                .with_projection_indices(projection.cloned())?
                .with_limit(filters.is_empty().then_some(limit).flatten())
                .build();
        Ok(DataSourceExec::from_data_source(config))
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use arrow::array::{
        Date32Array, Decimal128Array, RecordBatch, StringArray, TimestampMicrosecondArray,
    };
    use arrow::datatypes::{DataType, TimeUnit};
    use datafusion::prelude::SessionContext;
    use engine::Sink;

    use super::super::{CompactionConfig, DeltaConfig, DeltaSink, register_table};
    use super::*;

    /// Partitioned by a text, a date and a timestamp column: every kind of value Delta writes
    /// as text in the log and in the folder names.
    fn schema() -> SchemaRef {
        let utc = Some("UTC".into());
        Arc::new(Schema::new(vec![
            Field::new("symbol", DataType::Utf8, true),
            Field::new("trade_date", DataType::Date32, true),
            Field::new(
                "minute",
                DataType::Timestamp(TimeUnit::Microsecond, utc),
                true,
            ),
            Field::new("price", DataType::Decimal128(18, 8), false),
        ]))
    }

    /// Six rows: symbols that need escaping in a folder name, a null symbol, two dates, two
    /// minutes, and prices that tell the rows apart.
    fn rows(n: i128) -> RecordBatch {
        let symbols = [Some("BTC-USD"), Some("A/B C%=:x"), None];
        let minute = 1_764_504_000_000_000_i64; // 2025-11-30T12:00:00Z
        RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(StringArray::from_iter((0..6).map(|i| symbols[i % 3]))),
                Arc::new(Date32Array::from_iter_values(
                    (0..6).map(|i| 20_000 + i / 3),
                )),
                Arc::new(
                    TimestampMicrosecondArray::from_iter_values(
                        (0..6).map(|i| minute + i64::from(i / 3) * 60_000_000),
                    )
                    .with_timezone("UTC"),
                ),
                Arc::new(
                    Decimal128Array::from_iter_values((0..6).map(|i| n * 1_000 + i))
                        .with_precision_and_scale(18, 8)
                        .unwrap(),
                ),
            ],
        )
        .unwrap()
    }

    async fn table(path: &Path, batches: i128) {
        let config = DeltaConfig {
            path: path.to_owned(),
            partition_by: vec!["symbol".into(), "trade_date".into(), "minute".into()],
            compaction: CompactionConfig {
                enabled: false,
                ..CompactionConfig::default()
            },
        };
        let mut sink = DeltaSink::new(config, schema());
        sink.healthcheck().await.unwrap();
        sink.bind_query("q", 0).await.unwrap();
        for n in 0..batches {
            sink.write(n as u64, &[rows(n)]).await.unwrap();
        }
        sink.close().await.unwrap();
    }

    async fn sql(ctx: &SessionContext, sql: &str) -> Vec<String> {
        let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
        let text = arrow::util::pretty::pretty_format_batches(&batches).unwrap();
        text.to_string().lines().map(str::to_owned).collect()
    }

    #[tokio::test]
    async fn every_row_reads_back_with_its_partition_values_and_a_filter_prunes_by_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t");
        table(&path, 3).await;
        let ctx = SessionContext::new();
        register_table(&ctx, "t", &path, schema(), None)
            .await
            .unwrap();

        // The file column first, then the partition columns in the table's order.
        let all = sql(&ctx, "SELECT * FROM t ORDER BY price").await;
        let written: Vec<_> = (0..3).map(rows).collect();
        let ordered = datafusion::prelude::SessionContext::new();
        ordered
            .register_batch(
                "w",
                arrow::compute::concat_batches(&schema(), &written).unwrap(),
            )
            .unwrap();
        let expected = sql(
            &ordered,
            "SELECT price, symbol, trade_date, minute FROM w ORDER BY price",
        )
        .await;
        assert_eq!(all, expected);

        let one = "SELECT count(*) AS n, min(price) AS low FROM t \
                   WHERE symbol = 'A/B C%=:x' AND minute = TIMESTAMP '2025-11-30T12:01:00Z' \
                   AND price > 0";
        assert_eq!(
            sql(&ctx, one).await,
            [
                "+---+------------+",
                "| n | low        |",
                "+---+------------+",
                "| 3 | 0.00000004 |",
                "+---+------------+",
            ]
        );
        let nulls = sql(&ctx, "SELECT count(*) AS n FROM t WHERE symbol IS NULL").await;
        assert_eq!(nulls[3], "| 6 |");

        // Only the 3 files of that partition are read, and the filter on a file column reaches
        // the Parquet scan.
        let plan = sql(&ctx, &format!("EXPLAIN {one}")).await.join("\n");
        assert_eq!(plan.matches(".parquet").count(), 3, "{plan}");
        assert!(plan.contains("AND price@0 > 0.00000000"), "{plan}");
    }

    /// Writes a table log by hand: a protocol, a metadata action with `configuration`, and one
    /// `add` with `extra` fields.
    fn hand_written(
        path: &Path,
        protocol: &str,
        configuration: &str,
        field_metadata: &str,
        extra: &str,
    ) {
        let log = path.join("_delta_log");
        std::fs::create_dir_all(&log).unwrap();
        let schema = format!(
            r#"{{"type":"struct","fields":[{{"name":"price","type":"long","nullable":true,"metadata":{field_metadata}}}]}}"#
        );
        let schema = serde_json::to_string(&schema).unwrap();
        let commit = format!(
            "{{\"protocol\":{protocol}}}\n\
             {{\"metaData\":{{\"id\":\"x\",\"format\":{{\"provider\":\"parquet\",\"options\":{{}}}},\"schemaString\":{schema},\"partitionColumns\":[],\"configuration\":{configuration},\"createdTime\":0}}}}\n\
             {{\"add\":{{\"path\":\"f.parquet\",\"partitionValues\":{{}},\"size\":1,\"modificationTime\":0,\"dataChange\":true{extra}}}}}\n"
        );
        std::fs::write(log.join(format!("{:020}.json", 0)), commit).unwrap();
    }

    #[tokio::test]
    async fn tables_with_column_mapping_or_deletion_vectors_are_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let mapped = dir.path().join("mapped");
        hand_written(
            &mapped,
            r#"{"minReaderVersion":2,"minWriterVersion":5}"#,
            r#"{"delta.columnMapping.mode":"name","delta.columnMapping.maxColumnId":"1"}"#,
            r#"{"delta.columnMapping.id":1,"delta.columnMapping.physicalName":"col-1"}"#,
            "",
        );
        let deleted = dir.path().join("deleted");
        hand_written(
            &deleted,
            r#"{"minReaderVersion":3,"minWriterVersion":7,"readerFeatures":["deletionVectors"],"writerFeatures":["deletionVectors"]}"#,
            r#"{"delta.enableDeletionVectors":"true"}"#,
            "{}",
            r#","deletionVector":{"storageType":"u","pathOrInlineDv":"ab^-aqEH.-t@S}K{vb[*k^","offset":1,"sizeInBytes":36,"cardinality":2}"#,
        );
        let price = Arc::new(Schema::new(vec![Field::new(
            "price",
            DataType::Int64,
            true,
        )]));
        for (path, reason) in [(&mapped, "column mapping"), (&deleted, "deletion vectors")] {
            let ctx = SessionContext::new();
            let e = register_table(&ctx, "t", path, price.clone(), None)
                .await
                .unwrap_err();
            // What a user reads: the error with every cause.
            let text = e.report().to_string();
            assert!(text.contains(reason), "{}: {text}", path.display());
        }
    }
}
