//! What the embedded stores (the Delta table, the Parquet folder) share when `coinstream query`
//! and the run's report register them as a table.

use std::path::Path;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use engine::{Error, Result};

/// A [`Error::Config`] naming `path` when the store's folder does not exist: no run has used it.
pub fn require_folder(name: &str, path: &Path) -> Result<()> {
    if path.is_dir() {
        return Ok(());
    }
    Err(Error::config(
        path.display().to_string(),
        format!("the store for table {name} does not exist yet; run the pipeline first"),
    ))
}

/// Registers table `name` as an empty table of `schema` (the transform's output schema): the
/// store at `path` exists but a run stored nothing yet (no portfolio trade yet, or every row
/// dead-lettered).
pub fn register_empty(
    session: &SessionContext,
    name: &str,
    path: &Path,
    schema: SchemaRef,
) -> Result<()> {
    tracing::info!(table = name, path = %path.display(), "The store holds no rows yet.");
    session.register_table(name, Arc::new(MemTable::try_new(schema, vec![Vec::new()])?))?;
    Ok(())
}
