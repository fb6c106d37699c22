//! Reading the store back as one DataFusion table, for `coinstream query` and the run's report:
//! the files' columns plus the partition columns read from the folder names, with the
//! transform's types and in the transform's column order. Knows nothing of writing.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::datatypes::{DataType, Schema, SchemaRef};
use datafusion::common::Column;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::datasource::{ViewTable, provider_as_source};
use datafusion::logical_expr::{Expr, LogicalPlanBuilder, cast, lit};
use datafusion::prelude::{SessionContext, nullif};
use engine::{Error, Result};
use parquet::file::reader::{FileReader, SerializedFileReader};

use super::ParquetConfig;
use super::layout;
use crate::common::store::{exists_or_warn, register_empty};

/// Registers the store that `config` describes as table `name`, with `schema` (the transform's
/// output schema): its columns in that order and of those types, the partition columns included.
///
/// A store whose folder does not exist yet (no run wrote it) or holds no file yet (a run stored
/// nothing: no portfolio trade yet, or every row dead-lettered) is an empty table.
///
/// # Errors
/// A [`Error::Config`] naming the folder when it holds a Parquet file outside the partition folders of `partition_by` (the store was written
/// with another `partition_by`), or a file that also holds a partition column (a store written
/// before coinstream kept those in the folder names only: read as it is, a reader would take the
/// folder's value, which the old writer had made lossy).
pub async fn register_store(
    session: &SessionContext,
    name: &str,
    config: &ParquetConfig,
    schema: SchemaRef,
) -> Result<()> {
    let path = &config.path;
    if !exists_or_warn(name, path) {
        return register_empty(session, name, path, schema);
    }
    let walked = {
        let (path, partition_by) = (path.clone(), config.partition_by.clone());
        tokio::task::spawn_blocking(move || check_layout(&path, &partition_by))
            .await
            .map_err(|e| Error::Internal(format!("the store's layout check failed: {e}")))??
    };
    if !walked {
        return register_empty(session, name, path, schema);
    }

    let is_partition = |column: &str| config.partition_by.iter().any(|p| p == column);
    let file_schema = Schema::new(
        schema
            .fields()
            .iter()
            .filter(|f| !is_partition(f.name()))
            .cloned()
            .collect::<Vec<_>>(),
    );
    // DataFusion reads the folder values as text (percent-decoded); the view below turns Hive's
    // null folder into a null and casts the text to the column's type, which is exact because
    // the sink wrote each value's canonical text.
    let options = ListingOptions::new(Arc::new(ParquetFormat::default()))
        .with_file_extension(".parquet")
        .with_table_partition_cols(
            config
                .partition_by
                .iter()
                .map(|c| (c.clone(), DataType::Utf8))
                .collect(),
        );
    let url = format!(
        "{}/",
        path.canonicalize()
            .map_err(|e| Error::io(path, e))?
            .display()
    );
    let files = ListingTable::try_new(
        ListingTableConfig::new(ListingTableUrl::parse(&url)?)
            .with_listing_options(options)
            .with_schema(Arc::new(file_schema)),
    )?;
    let columns: Vec<Expr> = schema
        .fields()
        .iter()
        .map(|f| {
            let column = Expr::Column(Column::new_unqualified(f.name()));
            if is_partition(f.name()) {
                cast(
                    nullif(column, lit(layout::NULL_VALUE)),
                    f.data_type().clone(),
                )
                .alias(f.name())
            } else {
                column
            }
        })
        .collect();
    let plan = LogicalPlanBuilder::scan(name, provider_as_source(Arc::new(files)), None)?
        .project(columns)?
        .build()?;
    session.register_table(name, Arc::new(ViewTable::new(plan, None)))?;
    Ok(())
}

/// Whether the store under `root` holds a finished Parquet file, after checking that each one
/// sits in the partition folders of `partition_by` and lacks those columns.
fn check_layout(root: &Path, partition_by: &[String]) -> Result<bool> {
    let mut found = false;
    let mut stack: Vec<(PathBuf, usize)> = vec![(root.to_owned(), 0)];
    while let Some((dir, depth)) = stack.pop() {
        for entry in fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))? {
            let path = entry.map_err(|e| Error::io(&dir, e))?.path();
            let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            // Hidden names are files being written (and the healthcheck's probe): no reader
            // sees them.
            if file_name.starts_with(['.', '_']) {
                continue;
            }
            if path.is_dir() {
                stack.push((path, depth + 1));
                continue;
            }
            if !file_name.ends_with(".parquet") {
                continue;
            }
            found = true;
            check_folders(root, &path, partition_by)?;
            check_file_columns(&path, partition_by)?;
        }
    }
    Ok(found)
}

/// The folders between `root` and `file` are one `name=value` per column of `partition_by`, in
/// order; a file elsewhere would be left out of the table without a word.
fn check_folders(root: &Path, file: &Path, partition_by: &[String]) -> Result<()> {
    let folders: Vec<String> = file
        .parent()
        .and_then(|p| p.strip_prefix(root).ok())
        .map(|rel| {
            rel.iter()
                .map(|part| part.to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    let matches = folders.len() == partition_by.len()
        && folders.iter().zip(partition_by).all(|(folder, column)| {
            folder
                .split_once('=')
                .is_some_and(|(name, _)| name == layout::escape(column))
        });
    if matches {
        return Ok(());
    }
    let expected: Vec<String> = partition_by.iter().map(|c| format!("{c}=…")).collect();
    Err(Error::config(
        file.parent().unwrap_or(root).display().to_string(),
        format!(
            "holds {} outside the store's partition folders (expected {}/, from partition_by = \
             {partition_by:?}); the store was written with another partition_by: set it back, \
             or move the store aside and run the pipeline again",
            file.display(),
            if expected.is_empty() {
                "the store's folder itself".to_owned()
            } else {
                expected.join("/")
            }
        ),
    ))
}

/// `file` (its footer only) has none of the columns of `partition_by`.
fn check_file_columns(file: &Path, partition_by: &[String]) -> Result<()> {
    if partition_by.is_empty() {
        return Ok(());
    }
    let reader = fs::File::open(file)
        .map_err(|e| Error::io(file, e))
        .and_then(|f| {
            SerializedFileReader::new(f).map_err(|e| {
                Error::config(
                    file.display().to_string(),
                    format!("not a readable Parquet file: {e}"),
                )
            })
        })?;
    let metadata = reader.metadata();
    let kept: Vec<&str> = metadata
        .file_metadata()
        .schema_descr()
        .root_schema()
        .get_fields()
        .iter()
        .map(|f| f.name())
        .filter(|n| partition_by.iter().any(|p| p == n))
        .collect();
    if kept.is_empty() {
        return Ok(());
    }
    Err(Error::config(
        file.parent().unwrap_or(file).display().to_string(),
        format!(
            "holds {}, which also has the partition column(s) {kept:?}: the store was written by \
             an older coinstream, whose folder names may not match the values; move the store \
             aside (or delete it) and its checkpoint, then run the pipeline again to rewrite it \
             in the current layout",
            file.display()
        ),
    ))
}
