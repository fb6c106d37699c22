//! SQL transforms: plain `.sql` files, one query each, named after the file's stem. Each is
//! planned once at start-up (a SQL error stops the run before any data flows) and its physical
//! plan executed for every micro-batch without re-planning.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use datafusion::execution::TaskContext;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::execution_plan::reset_plan_states;
use datafusion::physical_plan::{ExecutionPlan, collect, displayable};
use datafusion::prelude::SessionContext;

use crate::error::{Error, Result};

/// A transform's source text.
#[derive(Debug, Clone)]
pub struct TransformFile {
    /// The file stem, which is also the view name.
    pub name: String,
    /// Where it was read from.
    pub path: PathBuf,
    /// The query.
    pub sql: String,
}

impl TransformFile {
    /// Reads a `.sql` file; its stem must be a plain SQL identifier.
    pub fn read(path: &Path) -> Result<Self> {
        let sql = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .filter(|s| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
            .ok_or_else(|| {
                Error::config(
                    path.display().to_string(),
                    "a transform's file name must be letters, digits and _ (it names the view)",
                )
            })?;
        Ok(Self {
            name: name.to_owned(),
            path: path.to_owned(),
            sql,
        })
    }
}

/// A transform planned once; executed per micro-batch.
#[derive(Debug)]
pub struct PlannedTransform {
    file: TransformFile,
    logical: LogicalPlan,
    physical: Arc<dyn ExecutionPlan>,
    task_ctx: Arc<TaskContext>,
}

impl PlannedTransform {
    /// Plans `file` against `session`'s tables.
    pub async fn plan(session: &SessionContext, file: TransformFile) -> Result<Self> {
        let sql_error = |e: datafusion::error::DataFusionError| Error::Sql {
            name: file.name.clone(),
            file: file.path.clone(),
            message: e.to_string(),
        };
        let frame = session.sql(&file.sql).await.map_err(sql_error)?;
        // The optimised plan, so `explain` shows what runs (projections pushed into the scans).
        let logical = session
            .state()
            .optimize(frame.logical_plan())
            .map_err(sql_error)?;
        let physical = frame.create_physical_plan().await.map_err(sql_error)?;
        let task_ctx = session.task_ctx();
        Ok(Self {
            file,
            logical,
            physical,
            task_ctx,
        })
    }

    /// The transform's name.
    pub fn name(&self) -> &str {
        &self.file.name
    }

    /// The transform's file.
    pub fn file(&self) -> &Path {
        &self.file.path
    }

    /// The transform's SQL text.
    pub fn sql(&self) -> &str {
        &self.file.sql
    }

    /// The optimised logical plan.
    pub fn logical_plan(&self) -> &LogicalPlan {
        &self.logical
    }

    /// The output schema.
    pub fn schema(&self) -> arrow::datatypes::SchemaRef {
        self.physical.schema()
    }

    /// Runs the plan over what the input slots hold now. Returns the rows and the executed plan
    /// (which carries this run's metrics).
    pub async fn execute(&self) -> Result<(Vec<RecordBatch>, Arc<dyn ExecutionPlan>)> {
        // Operators such as a hash join cache their build side inside the plan; a fresh copy of
        // the plan's state per batch keeps one batch's rows from leaking into the next.
        let plan = reset_plan_states(self.physical.clone())?;
        let batches = collect(plan.clone(), self.task_ctx.clone())
            .await
            .map_err(|e| Error::Sql {
                name: self.file.name.clone(),
                file: self.file.path.clone(),
                message: e.to_string(),
            })?;
        Ok((batches, plan))
    }

    /// The logical and physical plans as text (`explain`).
    pub fn explain(&self) -> String {
        format!(
            "== {} ({}) ==\n-- logical plan --\n{}\n-- physical plan --\n{}",
            self.file.name,
            self.file.path.display(),
            self.logical.display_indent(),
            displayable(self.physical.as_ref()).indent(true)
        )
    }

    /// An executed plan with its per-operator metrics (`explain --analyze`).
    pub fn explain_executed(plan: &Arc<dyn ExecutionPlan>) -> String {
        datafusion::physical_plan::display::DisplayableExecutionPlan::with_metrics(plan.as_ref())
            .indent(true)
            .to_string()
    }
}
