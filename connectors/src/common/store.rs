//! What the embedded stores (the Delta table, the Parquet folder) share when `coinstream query`
//! and the run's report register them as a table.

use std::path::Path;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use engine::Result;

/// Whether the store of table `name` at `path` exists. When it does not (no run has written it
/// yet), `query` reads an empty table of the output's columns, so a newcomer can query before the
/// first run; a warning names the folder, so a mistyped path shows.
pub fn exists_or_warn(name: &str, path: &Path) -> bool {
    if path.is_dir() {
        return true;
    }
    tracing::warn!(
        table = name,
        path = %path.display(),
        "No run has written this store yet: the table is empty."
    );
    false
}

/// Registers table `name` as an empty table of `schema` (the transform's output schema): the
/// store at `path` holds no rows yet (no run wrote it, no portfolio trade yet, or every row
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
