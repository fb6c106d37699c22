//! SQL transforms: plain `.sql` files, one query each, named after the file's stem. Each is
//! planned once at start-up (a SQL error stops the run before any data flows) and its physical
//! plan executed for every micro-batch without re-planning.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use datafusion::error::DataFusionError;
use datafusion::execution::TaskContext;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::execution_plan::reset_plan_states;
use datafusion::physical_plan::{ExecutionPlan, collect, displayable};
use datafusion::prelude::SessionContext;

use crate::error::{Error, Result};
use crate::stateful::{OutputMode, StatefulAggregation, Watermark};

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
    /// The aggregation over the stream, when the query has one: `physical` is then its
    /// per-batch part (input rows to partial aggregates).
    stateful: Option<StatefulAggregation>,
    task_ctx: Arc<TaskContext>,
}

impl PlannedTransform {
    /// Plans `file` against `session`'s tables.
    pub async fn plan(session: &SessionContext, file: TransformFile) -> Result<Self> {
        let sql_error = |source: datafusion::error::DataFusionError| Error::Sql {
            name: file.name.clone(),
            file: file.path.clone(),
            message: "planning failed".into(),
            source,
        };
        let frame = session.sql(&file.sql).await.map_err(sql_error)?;
        // The optimised plan, so `explain` shows what runs (projections pushed into the scans).
        let logical = session
            .state()
            .optimize(frame.logical_plan())
            .map_err(sql_error)?;
        let physical = frame.create_physical_plan().await.map_err(sql_error)?;
        let stateful = StatefulAggregation::split(&physical)
            .map_err(|message| sql_error(DataFusionError::Plan(message)))?;
        let task_ctx = session.task_ctx();
        Ok(Self {
            file,
            logical,
            physical: match &stateful {
                Some(s) => s.partial_plan().clone(),
                None => physical,
            },
            stateful,
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

    /// The output schema (the rows that go to the sink).
    pub fn schema(&self) -> arrow::datatypes::SchemaRef {
        match &self.stateful {
            Some(s) => s.schema(),
            None => self.physical.schema(),
        }
    }

    /// The aggregation over the stream that keeps state across batches, if the query has one.
    pub fn stateful(&self) -> Option<&StatefulAggregation> {
        self.stateful.as_ref()
    }

    /// The schema of a stateful aggregation's output rows (keys and aggregate values), the
    /// input of the plan above it; the transform's output schema for a stateless transform.
    pub fn stateful_output_schema(&self) -> arrow::datatypes::SchemaRef {
        match &self.stateful {
            Some(s) => s.aggregation_schema(),
            None => self.physical.schema(),
        }
    }

    /// Runs the plan above a stateful aggregation over the groups it emits (see
    /// [`crate::stateful`]).
    ///
    /// # Errors
    /// [`Error::Sql`] naming the transform; [`Error::Internal`] for a transform that does not
    /// aggregate.
    pub async fn run_above_state(&self, emitted: RecordBatch) -> Result<Vec<RecordBatch>> {
        let stateful = self.stateful.as_ref().ok_or_else(|| {
            Error::Internal(format!("transform {} keeps no state", self.file.name))
        })?;
        stateful
            .finish(emitted, self.task_ctx.clone())
            .await
            .map_err(|source| Error::Sql {
                name: self.file.name.clone(),
                file: self.file.path.clone(),
                message: "execution above the aggregation's state failed".into(),
                source,
            })
    }

    /// Runs the plan over what the input slots hold now (for a stateful transform, its per-batch
    /// part: the partial aggregates of the batch's rows). Returns the rows and the executed plan
    /// (which carries this run's metrics).
    pub async fn execute(&self) -> Result<(Vec<RecordBatch>, Arc<dyn ExecutionPlan>)> {
        // Operators such as a hash join cache their build side inside the plan; a fresh copy of
        // the plan's state per batch keeps one batch's rows from leaking into the next.
        let plan = reset_plan_states(self.physical.clone())?;
        let batches = collect(plan.clone(), self.task_ctx.clone())
            .await
            .map_err(|source| {
                let (name, file) = (self.file.name.clone(), self.file.path.clone());
                if is_row_error(&source) {
                    Error::SqlRows { name, file, source }
                } else {
                    Error::Sql {
                        name,
                        file,
                        message: "execution failed".into(),
                        source,
                    }
                }
            })?;
        Ok((batches, plan))
    }

    /// The logical and physical plans as text (`explain`); for a stateful transform, the
    /// stateful aggregation with its keys, window, output mode and watermark between the
    /// physical plans above and below it.
    pub fn explain(&self, mode: OutputMode, watermark: Option<&Watermark>) -> String {
        let physical = match &self.stateful {
            Some(s) => s.explain(mode, watermark),
            None => format!(
                "-- physical plan --\n{}",
                displayable(self.physical.as_ref()).indent(true)
            ),
        };
        format!(
            "== {} ({}) ==\n-- logical plan --\n{}\n{physical}",
            self.file.name,
            self.file.path.display(),
            self.logical.display_indent(),
        )
    }

    /// An executed plan with its per-operator metrics (`explain --analyze`).
    pub fn explain_executed(plan: &Arc<dyn ExecutionPlan>) -> String {
        datafusion::physical_plan::display::DisplayableExecutionPlan::with_metrics(plan.as_ref())
            .indent(true)
            .to_string()
    }
}

/// Whether an error raised while a planned transform ran is about the values of the rows it ran
/// over, so that the rows that cause it can be found and dead-lettered while the others flow on.
///
/// The rule: arithmetic overflow, division by zero, a failed cast or parse, a compute kernel or a
/// function rejecting its argument (Arrow's `ArithmeticOverflow`, `DivideByZero`, `CastError`,
/// `ParseError`, `ComputeError`, `InvalidArgumentError`, `JsonError`, and DataFusion's
/// `Execution`, which functions raise on values they cannot take) are about rows. Everything else
/// is not and stays fatal: resources exhausted, memory, IO, an internal error, a panicked task,
/// an external error that is none of the above, planning, schema and configuration errors
/// (wrappers such as `Context` and `Shared` are judged by what they wrap).
pub fn is_row_error(error: &DataFusionError) -> bool {
    match error {
        DataFusionError::ArrowError(e, _) => is_row_arrow_error(e),
        DataFusionError::Execution(_) => true,
        DataFusionError::Context(_, inner) | DataFusionError::Diagnostic(_, inner) => {
            is_row_error(inner)
        }
        DataFusionError::Shared(inner) => is_row_error(inner),
        DataFusionError::Collection(errors) => {
            !errors.is_empty() && errors.iter().all(is_row_error)
        }
        DataFusionError::External(e) => is_row_external(e.as_ref()),
        _ => false,
    }
}

fn is_row_arrow_error(error: &ArrowError) -> bool {
    match error {
        ArrowError::ArithmeticOverflow(_)
        | ArrowError::DivideByZero
        | ArrowError::CastError(_)
        | ArrowError::ParseError(_)
        | ArrowError::ComputeError(_)
        | ArrowError::InvalidArgumentError(_)
        | ArrowError::JsonError(_) => true,
        ArrowError::ExternalError(e) => is_row_external(e.as_ref()),
        _ => false,
    }
}

/// An error boxed by a stream adapter: judged by the DataFusion or Arrow error inside, if any.
fn is_row_external(error: &(dyn std::error::Error + Send + Sync + 'static)) -> bool {
    if let Some(e) = error.downcast_ref::<DataFusionError>() {
        is_row_error(e)
    } else if let Some(e) = error.downcast_ref::<ArrowError>() {
        is_row_arrow_error(e)
    } else {
        false
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn errors_about_values_are_row_errors_and_the_rest_stay_fatal() {
        let arrow = |e| DataFusionError::ArrowError(Box::new(e), None);
        for e in [
            arrow(ArrowError::ArithmeticOverflow(
                "Overflow happened on: 1 * 2".into(),
            )),
            arrow(ArrowError::DivideByZero),
            arrow(ArrowError::CastError("Cannot cast string 'x'".into())),
            arrow(ArrowError::ParseError("bad date".into())),
            arrow(ArrowError::ComputeError("bad value".into())),
            DataFusionError::Execution("Arrow error: Divide by zero error".into()),
            DataFusionError::Context(
                "in profit".into(),
                Box::new(arrow(ArrowError::DivideByZero)),
            ),
            DataFusionError::Shared(Arc::new(arrow(ArrowError::DivideByZero))),
            DataFusionError::External(Box::new(ArrowError::DivideByZero)),
            arrow(ArrowError::ExternalError(Box::new(
                DataFusionError::Execution("function failed".into()),
            ))),
        ] {
            assert!(is_row_error(&e), "{e}");
        }
        for e in [
            DataFusionError::ResourcesExhausted("memory".into()),
            DataFusionError::Internal("bug".into()),
            DataFusionError::Plan("no such column".into()),
            DataFusionError::IoError(std::io::Error::other("disk")),
            DataFusionError::NotImplemented("x".into()),
            arrow(ArrowError::MemoryError("oom".into())),
            arrow(ArrowError::IoError(
                "disk".into(),
                std::io::Error::other("disk"),
            )),
            DataFusionError::External(Box::new(std::io::Error::other("socket"))),
            DataFusionError::Context(
                "in profit".into(),
                Box::new(DataFusionError::ResourcesExhausted("memory".into())),
            ),
            DataFusionError::Collection(vec![
                arrow(ArrowError::DivideByZero),
                DataFusionError::Internal("bug".into()),
            ]),
        ] {
            assert!(!is_row_error(&e), "{e}");
        }
    }
}
