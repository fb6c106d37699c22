//! Streaming aggregation with state, as Spark Structured Streaming's: a transform whose query
//! aggregates (`GROUP BY`) over the input stream keeps, per group, the aggregates' partial state
//! across micro-batches, in memory and in the checkpoint (`state/<batchId>.arrow`, one Arrow IPC
//! file per batch, as Spark's state store versions its state by batch id).
//!
//! ## How a batch runs
//! The transform's physical plan is split at its aggregation ([`StatefulAggregation::split`]):
//! ```text
//! input rows ─► (joins, filters, projections) ─► AggregateExec(Partial): one row per group
//!     with each aggregate's partial state      [the transform's per-batch plan, row isolation]
//!   ─► merged into the state of that group (DataFusion's own accumulators: merge_batch, state)
//!   ─► the groups to emit, evaluated (keys + aggregate values)
//!   ─► the plan above the aggregation (projections, joins with reference tables, filters)
//!   ─► the sink
//! ```
//! Any DataFusion aggregate works, as its accumulator defines its state: `count`, `sum`, `min`,
//! `max`, `avg`, `first_value(x ORDER BY ...)`, `last_value`, `count(DISTINCT ...)`, ...
//!
//! ## Windows, watermark and output modes
//! The group key that is a window (the `{start, end}` struct of [`crate::window`]'s `tumble` and
//! `hop`) decides when a group is finished: when the watermark passes the window's `end`. The
//! watermark ([`Watermark`], Spark's `withWatermark`, with Spark's rules) a batch uses is the
//! largest event time of the batches before it minus the delay; the batch closes windows with it.
//! A row is late when it is older than the watermark the previous batch closed windows with
//! (Spark's watermark for late events): late rows are dropped before the aggregation and counted
//! (`numRowsDroppedByWatermark`), and may go to the dead letters.
//! - [`OutputMode::Append`] emits each window once, by the first batch whose watermark passed its
//!   end (and so needs a watermark and a window key);
//! - [`OutputMode::Update`] emits every group the batch changed, each batch; windows the watermark
//!   passed are then dropped from the state without being emitted again.
//!
//! With nothing new to read, the runtime runs a batch without records when the watermark the
//! next batch would use closes a window ([`States::would_close`], Spark's no-data batch), so a
//! live run writes a window once the largest time seen passed it, and an available-now run ends
//! having written every window its final watermark closes; windows still open stay in the state.
//!
//! The watermark must be on the event-time column the window is computed from, as in Spark: a
//! window over another column is closed by a watermark that says nothing about it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, RecordBatch, UInt32Array};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{Field, Schema};
use arrow::row::{OwnedRow, RowConverter, SortField};
use datafusion::common::ScalarValue;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::Accumulator;
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::execution_plan::reset_plan_states;
use datafusion::physical_plan::streaming::StreamingTableExec;
use datafusion::physical_plan::{ExecutionPlan, collect, displayable};

use crate::context::InputSlot;
use crate::error::{Error, Result};
use crate::window;

/// When a stateful query's groups go to the sink (Spark's `outputMode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OutputMode {
    /// Each window once, when the watermark passes its end.
    #[default]
    Append,
    /// Every group a batch changed, each batch (an upserting sink keeps the latest).
    Update,
}

impl FromStr for OutputMode {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "append" => Ok(Self::Append),
            "update" => Ok(Self::Update),
            other => Err(format!(
                "{other:?} is not an output mode; use append or update"
            )),
        }
    }
}

impl fmt::Display for OutputMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Append => "append",
            Self::Update => "update",
        })
    }
}

/// The input table's watermark (Spark's `withWatermark(column, delay)`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watermark {
    /// The event-time column of the input table (a timestamp).
    pub column: String,
    /// How late a row may arrive, behind the largest event time seen, and still be aggregated.
    pub delay: Duration,
    /// Whether rows dropped as late also go to the dead letters (they are always counted).
    pub dead_letter_late: bool,
}

impl fmt::Display for Watermark {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} - {:?}", self.column, self.delay)
    }
}

/// A transform's aggregation over the stream, split out of its plan (module docs).
#[derive(Debug)]
pub struct StatefulAggregation {
    /// Input rows → one row per group: the keys, then each aggregate's state fields.
    partial: Arc<dyn ExecutionPlan>,
    aggregates: Vec<Arc<AggregateFunctionExpr>>,
    /// How many state fields each aggregate has, in order.
    state_widths: Vec<usize>,
    /// How many key columns lead the partial rows.
    keys: usize,
    /// The key that is a window, if any.
    window: Option<usize>,
    /// Keys as comparable bytes (the state's map keys).
    converter: RowConverter,
    /// What the aggregation yields (keys, then the aggregates' values): the upper plan's input.
    output: InputSlot,
    /// The plan above the aggregation, reading `output`.
    upper: Arc<dyn ExecutionPlan>,
}

impl StatefulAggregation {
    /// Splits `plan` at its aggregation over the stream (one whose input reads a streaming
    /// input table). `Ok(None)` for a plan that aggregates nothing of the stream.
    ///
    /// # Errors
    /// A message for plans the engine cannot keep state for: two aggregations of the stream,
    /// grouping sets, or a stream read above the aggregation too.
    pub fn split(plan: &Arc<dyn ExecutionPlan>) -> std::result::Result<Option<Self>, String> {
        let mut finals = Vec::new();
        plan.apply(|node| {
            if let Some(agg) = node.downcast_ref::<AggregateExec>()
                && *agg.mode() != AggregateMode::Partial
                && reads_stream(node, None)
            {
                // On through its input: an aggregation below it is a second one.
                finals.push(node.clone());
            }
            Ok(TreeNodeRecursion::Continue)
        })
        .map_err(|e| e.to_string())?;
        let found = match finals.as_slice() {
            [] => return Ok(None),
            [one] => one.clone(),
            _ => {
                return Err(
                    "the query aggregates the stream more than once; a streaming query may hold \
                     one aggregation of the stream (aggregate again in a report or `query`)"
                        .into(),
                );
            }
        };
        let last = found
            .downcast_ref::<AggregateExec>()
            .ok_or("not an aggregation")?;
        // The aggregation over raw rows: the Partial one under a Final, or the Single one.
        let first = if matches!(
            last.mode(),
            AggregateMode::Final | AggregateMode::FinalPartitioned
        ) {
            partial_below(last.input()).ok_or(
                "the final aggregation has no partial aggregation below it (an unexpected plan)",
            )?
        } else {
            found.clone()
        };
        let first = first
            .downcast_ref::<AggregateExec>()
            .ok_or("not an aggregation")?;
        let group_by = first.group_expr().clone();
        if !group_by.is_single() {
            return Err(
                "GROUPING SETS, CUBE and ROLLUP are not supported in a streaming query".into(),
            );
        }
        let input = first.input().clone();
        let partial: Arc<dyn ExecutionPlan> = Arc::new(
            AggregateExec::try_new(
                AggregateMode::Partial,
                group_by.clone(),
                first.aggr_expr().to_vec(),
                first.filter_expr().to_vec(),
                input.clone(),
                input.schema(),
            )
            .map_err(|e| e.to_string())?,
        );
        let aggregates = first.aggr_expr().to_vec();
        let mut state_widths = Vec::new();
        for a in &aggregates {
            state_widths.push(a.state_fields().map_err(|e| e.to_string())?.len());
        }
        let keys = group_by.expr().len();
        let partial_schema = partial.schema();
        let key_fields: Vec<SortField> = partial_schema.fields()[..keys]
            .iter()
            .map(|f| SortField::new(f.data_type().clone()))
            .collect();
        let converter = RowConverter::new(key_fields).map_err(|e| e.to_string())?;
        let windows: Vec<usize> = (0..keys)
            .filter(|&i| window::is_window(partial_schema.field(i).data_type()))
            .collect();
        let window = match windows.as_slice() {
            [] => None,
            [one] => Some(*one),
            _ => return Err("the aggregation groups by more than one window".into()),
        };
        let output = InputSlot::new(found.schema());
        let stream: Arc<dyn ExecutionPlan> = Arc::new(
            StreamingTableExec::try_new(
                found.schema(),
                vec![Arc::new(output.clone())],
                None,
                [],
                false,
                None,
            )
            .map_err(|e| e.to_string())?,
        );
        let upper = plan
            .clone()
            .transform_down(|node| {
                if Arc::ptr_eq(&node, &found) {
                    Ok(Transformed::new(
                        stream.clone(),
                        true,
                        TreeNodeRecursion::Jump,
                    ))
                } else {
                    Ok(Transformed::no(node))
                }
            })
            .map_err(|e| e.to_string())?
            .data;
        if reads_stream(plan, Some(&found)) {
            return Err(
                "the query reads the stream again above its aggregation (a join of the \
                 aggregation with the raw stream); aggregate once, then join with reference tables"
                    .into(),
            );
        }
        Ok(Some(Self {
            partial,
            aggregates,
            state_widths,
            keys,
            window,
            converter,
            output,
            upper,
        }))
    }

    /// The per-batch plan: input rows → partial state rows.
    pub fn partial_plan(&self) -> &Arc<dyn ExecutionPlan> {
        &self.partial
    }

    /// The rows the query emits (the plan above the aggregation).
    pub fn schema(&self) -> arrow::datatypes::SchemaRef {
        self.upper.schema()
    }

    /// The aggregation's output rows: the keys, then each aggregate's value.
    pub fn aggregation_schema(&self) -> arrow::datatypes::SchemaRef {
        self.output.schema().clone()
    }

    /// Whether a key of the aggregation is a window.
    pub fn has_window(&self) -> bool {
        self.window.is_some()
    }

    /// Checks that `mode` and `watermark` suit this aggregation (Spark's rules).
    ///
    /// # Errors
    /// A message when append mode lacks a window key or a watermark (a group would never be
    /// final, so nothing would ever be written).
    pub fn check(
        &self,
        mode: OutputMode,
        watermark: Option<&Watermark>,
    ) -> std::result::Result<(), String> {
        if mode == OutputMode::Append {
            if self.window.is_none() {
                return Err(
                    "append output mode needs an aggregation by an event-time window \
                     (tumble or hop in GROUP BY), so that a group is final once the watermark \
                     passes its end; use update mode for groups without a window"
                        .into(),
                );
            }
            if watermark.is_none() {
                return Err(
                    "append output mode needs a watermark on the input table (Spark's \
                     withWatermark), or no window would ever be final"
                        .into(),
                );
            }
        }
        Ok(())
    }

    /// A description for `explain`.
    pub fn explain(&self, mode: OutputMode, watermark: Option<&Watermark>) -> String {
        let schema = self.output.schema();
        let keys: Vec<String> = schema.fields()[..self.keys]
            .iter()
            .enumerate()
            .map(|(i, f)| {
                if Some(i) == self.window {
                    format!(
                        "{} (window: closed when the watermark passes its end)",
                        f.name()
                    )
                } else {
                    f.name().clone()
                }
            })
            .collect();
        let aggregates: Vec<&str> = self.aggregates.iter().map(|a| a.name()).collect();
        format!(
            "-- physical plan per micro-batch, above the state: the groups emitted --\n{}\
             -- stateful aggregation (state per group in the checkpoint, state/<batchId>.arrow) --\n\
             keys: {}\naggregates: {}\noutput mode: {mode}\nwatermark: {}\n\
             -- physical plan per micro-batch, below the state: input rows to partial aggregates --\n{}",
            displayable(self.upper.as_ref()).indent(true),
            keys.join(", "),
            aggregates.join(", "),
            watermark.map_or_else(|| "none".to_owned(), |w| w.to_string()),
            displayable(self.partial.as_ref()).indent(true),
        )
    }

    /// Merges a batch's partial rows into `store`'s groups. Returns the keys it changed.
    ///
    /// # Errors
    /// An accumulator's error (for example an overflow while merging sums).
    pub fn merge(
        &self,
        store: &mut StateStore,
        partial: &[RecordBatch],
    ) -> Result<BTreeSet<OwnedRow>> {
        let mut touched = BTreeSet::new();
        for batch in partial {
            if batch.num_rows() == 0 {
                continue;
            }
            let rows = self
                .converter
                .convert_columns(&batch.columns()[..self.keys])?;
            let mut by_key: BTreeMap<OwnedRow, Vec<u32>> = BTreeMap::new();
            for i in 0..batch.num_rows() {
                by_key
                    .entry(rows.row(i).owned())
                    .or_default()
                    .push(i as u32);
            }
            for (key, indices) in by_key {
                let indices = UInt32Array::from(indices);
                let mut accs = self.accumulators()?;
                let window_end = match self.window {
                    Some(w) => window_end(batch.column(w), indices.value(0) as usize)?,
                    None => None,
                };
                if let Some(group) = store.groups.get(&key) {
                    self.merge_state(&mut accs, &group.state)?;
                }
                let mut column = self.keys;
                for (acc, width) in accs.iter_mut().zip(&self.state_widths) {
                    let states = batch.columns()[column..column + width]
                        .iter()
                        .map(|c| arrow::compute::take(c.as_ref(), &indices, None))
                        .collect::<std::result::Result<Vec<_>, _>>()?;
                    acc.merge_batch(&states)?;
                    column += width;
                }
                let mut state = Vec::new();
                for acc in &mut accs {
                    state.extend(acc.state()?);
                }
                store
                    .groups
                    .insert(key.clone(), Group { window_end, state });
                touched.insert(key);
            }
        }
        Ok(touched)
    }

    /// Takes the groups to emit after a batch from `store` (module docs): evaluated, as the
    /// aggregation's output rows. Closed windows leave the state.
    ///
    /// # Errors
    /// An accumulator's error while evaluating.
    pub fn emit(
        &self,
        store: &mut StateStore,
        touched: &BTreeSet<OwnedRow>,
        mode: OutputMode,
        watermark: Option<i64>,
    ) -> Result<(RecordBatch, u64)> {
        let closed: Vec<OwnedRow> = match watermark {
            Some(wm) => store
                .groups
                .iter()
                .filter(|(_, g)| g.window_end.is_some_and(|end| end <= wm))
                .map(|(k, _)| k.clone())
                .collect(),
            None => Vec::new(),
        };
        let emitted: Vec<OwnedRow> = match mode {
            OutputMode::Append => closed.clone(),
            OutputMode::Update => touched.iter().cloned().collect(),
        };
        let schema = self.output.schema().clone();
        let mut values: Vec<Vec<ScalarValue>> = vec![Vec::new(); self.aggregates.len()];
        for key in &emitted {
            let group = store.groups.get(key).ok_or_else(|| {
                Error::State(format!("group {key:?} to emit is not in the state"))
            })?;
            let mut accs = self.accumulators()?;
            self.merge_state(&mut accs, &group.state)?;
            for (acc, column) in accs.iter_mut().zip(&mut values) {
                column.push(acc.evaluate()?);
            }
        }
        let removed = closed.len() as u64;
        for key in &closed {
            store.groups.remove(key);
        }
        if emitted.is_empty() {
            return Ok((RecordBatch::new_empty(schema), removed));
        }
        let mut columns = self
            .converter
            .convert_rows(emitted.iter().map(|k| k.row()))?;
        for (column, field) in values.into_iter().zip(&schema.fields()[self.keys..]) {
            let array = ScalarValue::iter_to_array(column)?;
            columns.push(if array.data_type() == field.data_type() {
                array
            } else {
                arrow::compute::cast(&array, field.data_type())?
            });
        }
        Ok((RecordBatch::try_new(schema, columns)?, removed))
    }

    /// Runs the plan above the aggregation over `emitted` (the aggregation's output rows).
    ///
    /// # Errors
    /// The plan's error.
    pub async fn finish(
        &self,
        emitted: RecordBatch,
        task_ctx: Arc<TaskContext>,
    ) -> datafusion::error::Result<Vec<RecordBatch>> {
        if emitted.num_rows() == 0 {
            return Ok(Vec::new());
        }
        self.output.set(vec![emitted]);
        let plan = reset_plan_states(self.upper.clone())?;
        let out = collect(plan, task_ctx).await;
        self.output.set(Vec::new());
        out
    }

    fn accumulators(&self) -> Result<Vec<Box<dyn Accumulator>>> {
        self.aggregates
            .iter()
            .map(|a| a.create_accumulator().map_err(Error::from))
            .collect()
    }

    fn merge_state(&self, accs: &mut [Box<dyn Accumulator>], state: &[ScalarValue]) -> Result<()> {
        let mut at = 0;
        for (acc, width) in accs.iter_mut().zip(&self.state_widths) {
            let arrays = state[at..at + width]
                .iter()
                .map(|v| v.to_array_of_size(1))
                .collect::<datafusion::error::Result<Vec<ArrayRef>>>()?;
            acc.merge_batch(&arrays)?;
            at += width;
        }
        Ok(())
    }

    /// `store` as an Arrow IPC file: one row per group (the keys, then each aggregate's state
    /// fields, named as the partial aggregation names them), the largest event time, the
    /// watermark floor and the source offset after the state in the schema's metadata.
    ///
    /// # Errors
    /// An Arrow error building the file.
    pub fn encode(&self, store: &StateStore) -> Result<Vec<u8>> {
        let schema = self.partial.schema();
        let mut columns = if store.groups.is_empty() {
            Vec::new()
        } else {
            self.converter
                .convert_rows(store.groups.keys().map(|k| k.row()))?
        };
        let width: usize = self.state_widths.iter().sum();
        if !store.groups.is_empty() {
            for i in 0..width {
                let array =
                    ScalarValue::iter_to_array(store.groups.values().map(|g| g.state[i].clone()))?;
                columns.push(array);
            }
        }
        // The arrays' own types (an accumulator's state may differ in nullability or list field
        // names from the plan's declared state schema); names from the plan.
        let fields: Vec<Field> = if columns.is_empty() {
            schema.fields().iter().map(|f| f.as_ref().clone()).collect()
        } else {
            schema
                .fields()
                .iter()
                .zip(&columns)
                .map(|(f, c)| Field::new(f.name(), c.data_type().clone(), true))
                .collect()
        };
        let mut metadata = std::collections::HashMap::new();
        for (key, value) in [
            (MAX_EVENT_TIME, store.max_event_time),
            (WATERMARK_FLOOR, store.watermark_floor),
            (OFFSET_AFTER, store.offset_after),
            (LAST_WATERMARK, store.last_watermark),
        ] {
            if let Some(v) = value {
                metadata.insert(key.to_owned(), v.to_string());
            }
        }
        let schema = Arc::new(Schema::new_with_metadata(fields, metadata));
        let mut bytes = Vec::new();
        let mut writer = arrow::ipc::writer::FileWriter::try_new(&mut bytes, &schema)?;
        if !columns.is_empty() {
            writer.write(&RecordBatch::try_new(schema.clone(), columns)?)?;
        }
        writer.finish()?;
        drop(writer);
        Ok(bytes)
    }

    /// A state encoded by [`StatefulAggregation::encode`]; `what` names it in errors.
    ///
    /// # Errors
    /// [`Error::State`] when the bytes are not a state, or one written by a query with other
    /// keys or aggregates (the SQL's aggregation changed).
    pub fn decode(&self, bytes: &[u8], what: &str) -> Result<StateStore> {
        let bad = |message: String| Error::State(format!("{what}: {message}"));
        let reader = arrow::ipc::reader::FileReader::try_new(std::io::Cursor::new(bytes), None)
            .map_err(|e| bad(format!("unreadable state: {e}")))?;
        let width: usize = self.state_widths.iter().sum();
        let expected = self.partial.schema();
        let schema = reader.schema();
        let names =
            |s: &Schema| -> Vec<String> { s.fields().iter().map(|f| f.name().clone()).collect() };
        if schema.fields().len() != self.keys + width || names(&schema) != names(&expected) {
            return Err(bad(format!(
                "the state was written by a query with other keys or aggregates ({}) than this \
                 one's ({}); the SQL's aggregation changed, so the state cannot be reused: give \
                 the query a new checkpoint_dir (and state store), or delete them to start over",
                names(&schema).join(", "),
                names(&expected).join(", ")
            )));
        }
        let number = |key: &str| -> Result<Option<i64>> {
            schema
                .metadata()
                .get(key)
                .map(|v| v.parse::<i64>())
                .transpose()
                .map_err(|e| bad(format!("bad {key}: {e}")))
        };
        let mut store = StateStore {
            max_event_time: number(MAX_EVENT_TIME)?,
            watermark_floor: number(WATERMARK_FLOOR)?,
            offset_after: number(OFFSET_AFTER)?,
            last_watermark: number(LAST_WATERMARK)?,
            ..StateStore::default()
        };
        for batch in reader {
            let batch = batch.map_err(|e| bad(format!("unreadable state: {e}")))?;
            let rows = self
                .converter
                .convert_columns(&batch.columns()[..self.keys])?;
            for i in 0..batch.num_rows() {
                let window_end = match self.window {
                    Some(w) => window_end(batch.column(w), i)?,
                    None => None,
                };
                let state = batch.columns()[self.keys..]
                    .iter()
                    .map(|c| ScalarValue::try_from_array(c.as_ref(), i))
                    .collect::<datafusion::error::Result<Vec<_>>>()?;
                store
                    .groups
                    .insert(rows.row(i).owned(), Group { window_end, state });
            }
        }
        Ok(store)
    }

    /// Writes `store` as the state after batch `batch_id` under `dir` (`<batch_id>.arrow`,
    /// written aside, synced, renamed), and deletes versions older than `retain` batches.
    ///
    /// # Errors
    /// [`Error::Io`] when the folder cannot be written.
    pub fn save(&self, store: &StateStore, dir: &Path, batch_id: u64, retain: u64) -> Result<()> {
        fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let bytes = self.encode(store)?;
        let path = dir.join(format!("{batch_id}.arrow"));
        let tmp = dir.join(format!(".{batch_id}.arrow.tmp"));
        let write = || -> std::io::Result<()> {
            let mut file = fs::File::create(&tmp)?;
            std::io::Write::write_all(&mut file, &bytes)?;
            file.sync_all()?;
            fs::rename(&tmp, &path)
        };
        write().map_err(|e| Error::io(&path, e))?;
        for (version, old) in versions(dir)? {
            if version + retain <= batch_id {
                let _ = fs::remove_file(old);
            }
        }
        Ok(())
    }

    /// The state after batch `last_committed` (the newest version at or before it), or an empty
    /// one when there is none (a first start, or no committed batch).
    ///
    /// # Errors
    /// [`Error::State`] when a state file is unreadable or was written by another query shape
    /// (the SQL's aggregation changed).
    pub fn load(&self, dir: &Path, last_committed: Option<u64>) -> Result<StateStore> {
        let Some(last) = last_committed else {
            return Ok(StateStore::default());
        };
        if !dir.exists() {
            return Ok(StateStore::default());
        }
        let Some((version, path)) = versions(dir)?
            .into_iter()
            .filter(|(v, _)| *v <= last)
            .max_by_key(|(v, _)| *v)
        else {
            return Ok(StateStore::default());
        };
        let bytes = fs::read(&path).map_err(|e| Error::io(&path, e))?;
        let store = self.decode(&bytes, &path.display().to_string())?;
        tracing::info!(
            version,
            groups = store.groups.len(),
            "Restored the aggregation's state."
        );
        Ok(store)
    }
}

/// The schema metadata key of a state's watermark floor (nanoseconds since the epoch).
const WATERMARK_FLOOR: &str = "coinstream.watermarkFloorNanos";
/// The schema metadata key of the source offset right after the records a state holds.
const OFFSET_AFTER: &str = "coinstream.offsetAfter";
/// The schema metadata key of the watermark the last batch closed windows with.
const LAST_WATERMARK: &str = "coinstream.lastWatermarkNanos";

/// The schema metadata key of a state file's largest event time (nanoseconds since the epoch).
const MAX_EVENT_TIME: &str = "coinstream.maxEventTimeNanos";

/// The state files under `dir`, by batch id.
fn versions(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        if let Some(v) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".arrow"))
            .and_then(|n| n.parse::<u64>().ok())
        {
            found.push((v, path));
        }
    }
    Ok(found)
}

fn window_end(column: &ArrayRef, row: usize) -> Result<Option<i64>> {
    let windows = column.as_struct();
    if windows.is_null(row) {
        return Ok(None);
    }
    let ends = window::window_ends_nanos(&windows.slice(row, 1))?;
    Ok(Some(ends.value(0)))
}

/// Whether `plan` reads a streaming input table, outside the subtree `skip` if given.
fn reads_stream(plan: &Arc<dyn ExecutionPlan>, skip: Option<&Arc<dyn ExecutionPlan>>) -> bool {
    let mut found = false;
    let _ = plan.apply(|node| {
        if skip.is_some_and(|s| Arc::ptr_eq(s, node)) {
            return Ok(TreeNodeRecursion::Jump);
        }
        if node.is::<StreamingTableExec>() {
            found = true;
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    });
    found
}

/// The Partial aggregation under a Final one, through repartitioning and coalescing.
fn partial_below(plan: &Arc<dyn ExecutionPlan>) -> Option<Arc<dyn ExecutionPlan>> {
    let mut node = plan.clone();
    loop {
        if let Some(agg) = node.downcast_ref::<AggregateExec>()
            && *agg.mode() == AggregateMode::Partial
        {
            return Some(node);
        }
        let children = node.children();
        if children.len() != 1 {
            return None;
        }
        node = children[0].clone();
    }
}

/// A store of aggregation states that every instance of a query reaches (a Cassandra table):
/// the state of each part of a partitioned source (a Kafka partition), so that when a part moves
/// to another instance (a consumer-group rebalance, an instance stopped) its open windows move
/// with it. Each part's state is one value, written whole after every batch that changed it and
/// before the batch is committed, so a part's state and the offset after it
/// ([`StateStore::offset_after`]) always change together.
#[async_trait::async_trait]
pub trait SharedState: Send + Sync {
    /// Where the states are, for logs.
    fn description(&self) -> String;

    /// The state of `part` of query `query`, as last saved; `None` when there is none.
    ///
    /// # Errors
    /// [`Error::Sink`]-like failures carrying their retry class (a node that is down is
    /// transient).
    async fn load(&self, query: &str, part: &str) -> Result<Option<Vec<u8>>>;

    /// Replaces the state of `part` of query `query`.
    ///
    /// # Errors
    /// As [`SharedState::load`].
    async fn save(&self, query: &str, part: &str, state: Vec<u8>) -> Result<()>;
}

/// One group's state.
#[derive(Debug, Clone)]
struct Group {
    /// The end of its window (nanoseconds since the epoch), if it has one.
    window_end: Option<i64>,
    /// Each aggregate's state fields, in order.
    state: Vec<ScalarValue>,
}

/// The state of a stateful aggregation: each group's partial aggregates, and the largest event
/// time seen (which the watermark follows).
#[derive(Debug, Default)]
pub struct StateStore {
    groups: BTreeMap<OwnedRow, Group>,
    /// The largest event time of the rows aggregated so far (nanoseconds since the epoch).
    pub max_event_time: Option<i64>,
    /// A watermark the state must not go below (nanoseconds since the epoch): the watermark of
    /// the instance that last owned this state, so that rows it already judged late stay late.
    pub watermark_floor: Option<i64>,
    /// For a part of a source shared by instances: the offset right after the last record the
    /// state holds; records below it are in the state already.
    pub offset_after: Option<i64>,
    /// The watermark the last batch closed windows with (nanoseconds since the epoch): rows
    /// older than it are late in the next batch (Spark's watermark for late events).
    pub last_watermark: Option<i64>,
}

impl StateStore {
    /// Groups held.
    pub fn len(&self) -> usize {
        self.groups.len()
    }

    /// Whether no group is held.
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// An estimate of the memory the groups hold, in bytes (keys and accumulator states).
    pub fn memory_used_bytes(&self) -> u64 {
        self.groups
            .iter()
            .map(|(k, g)| {
                (k.row().as_ref().len()
                    + g.state.iter().map(ScalarValue::size).sum::<usize>()
                    + std::mem::size_of::<Group>()) as u64
            })
            .sum()
    }

    /// The watermark (nanoseconds since the epoch) for `delay`: the largest event time seen
    /// minus the delay, and at least the floor; `None` before either.
    pub fn watermark(&self, delay: Duration) -> Option<i64> {
        let own = self
            .max_event_time
            .map(|max| max.saturating_sub(i64::try_from(delay.as_nanos()).unwrap_or(i64::MAX)));
        own.max(self.watermark_floor)
    }
}

/// A stateful query's state during a run: one store, or, with a [`SharedState`], one per part of
/// the source (so each part's state can move to another instance on its own).
#[derive(Debug, Default)]
pub struct States {
    /// By source part (`Some(partition)`, as in [`crate::RecordPosition::partition`]) when
    /// shared; the one store under `None` otherwise.
    pub stores: BTreeMap<Option<u32>, StateStore>,
}

impl States {
    /// The instance's watermark for `delay`: the largest event time of every store minus the
    /// delay, and at least every store's floor. Computed before a batch, it is the watermark
    /// that batch closes windows with.
    pub fn watermark(&self, delay: Duration) -> Option<i64> {
        self.stores
            .values()
            .filter_map(|s| s.watermark(delay))
            .max()
    }

    /// The watermark rows of the next batch are judged late against: the one the previous batch
    /// closed windows with (Spark's watermark for late events; a part taken over from another
    /// instance brings the one that instance last closed its windows with). A row older than it
    /// may belong to a window already written; a row at or after it cannot.
    pub fn late_watermark(&self) -> Option<i64> {
        self.stores.values().filter_map(|s| s.last_watermark).max()
    }

    /// Records `watermark` as the one this batch closed windows with.
    pub fn closed_with(&mut self, watermark: Option<i64>) {
        for store in self.stores.values_mut() {
            store.last_watermark = store.last_watermark.max(watermark);
        }
    }

    /// Whether a batch without records would close windows: the watermark moved since the last
    /// batch and passed the end of a window in the state (Spark's no-data batch).
    pub fn would_close(&self, delay: Duration) -> bool {
        let Some(watermark) = self.watermark(delay) else {
            return false;
        };
        if self.late_watermark().is_some_and(|last| last >= watermark) {
            return false;
        }
        self.stores.values().any(|s| {
            s.groups
                .values()
                .any(|g| g.window_end.is_some_and(|end| end <= watermark))
        })
    }
}

/// The largest event time (nanoseconds since the epoch) in `column` of `batch`.
///
/// # Errors
/// [`Error::State`] when the column is missing or not a timestamp.
pub fn max_event_time(batch: &RecordBatch, column: &str) -> Result<Option<i64>> {
    Ok(arrow::compute::max(&event_times(batch, column)?))
}

/// The event times of `batch` (its `column`) in nanoseconds since the epoch.
fn event_times(batch: &RecordBatch, column: &str) -> Result<arrow::array::Int64Array> {
    let index = batch.schema().index_of(column).map_err(|_| {
        Error::State(format!(
            "the watermark's column {column:?} is not a column of the input table"
        ))
    })?;
    window::timestamps_as_nanos(batch.column(index).as_ref())
        .map_err(|e| Error::State(format!("the watermark's column {column:?}: {e}")))
}

/// What the watermark took out of a batch's decoded rows.
#[derive(Debug, Default)]
pub struct LateRows {
    /// Rows (of the decoded batch) older than the watermark.
    pub late: Vec<usize>,
    /// Rows without an event time.
    pub no_event_time: Vec<usize>,
    /// The largest event time of the rows kept, in nanoseconds since the epoch.
    pub max_event_time: Option<i64>,
}

/// Splits `batch` by the watermark `watermark` on `column` (module docs): the rows kept, and the
/// late and timeless rows' indices.
///
/// # Errors
/// [`Error::State`] when the column is missing or is not a timestamp.
pub fn drop_late(
    batch: &RecordBatch,
    column: &str,
    watermark: Option<i64>,
) -> Result<(RecordBatch, LateRows)> {
    let times = event_times(batch, column)?;
    let mut late = LateRows::default();
    let keep: BooleanArray = times
        .iter()
        .enumerate()
        .map(|(i, t)| match t {
            None => {
                late.no_event_time.push(i);
                Some(false)
            }
            Some(t) if watermark.is_some_and(|wm| t < wm) => {
                late.late.push(i);
                Some(false)
            }
            Some(t) => {
                late.max_event_time = Some(late.max_event_time.map_or(t, |m: i64| m.max(t)));
                Some(true)
            }
        })
        .collect();
    if late.late.is_empty() && late.no_event_time.is_empty() {
        return Ok((batch.clone(), late));
    }
    Ok((filter_record_batch(batch, &keep)?, late))
}

/// The kept rows' positions in the decoded batch, given what [`drop_late`] took out.
pub fn kept_rows(total: usize, late: &LateRows) -> Vec<usize> {
    let out: BTreeSet<usize> = late
        .late
        .iter()
        .chain(&late.no_event_time)
        .copied()
        .collect();
    (0..total).filter(|i| !out.contains(i)).collect()
}

/// A nanosecond timestamp as RFC 3339 text (progress records).
pub fn format_nanos(nanos: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(nanos)
        .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::datatypes::{DataType, Field, Schema, TimeUnit};

    use super::*;
    use crate::context::{ContextOptions, EngineContext};
    use crate::transform::{PlannedTransform, TransformFile};

    async fn plan(sql: &str) -> crate::Result<PlannedTransform> {
        let mut ctx = EngineContext::new(&ContextOptions::default());
        let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
        ctx.register_input(
            "trades",
            Arc::new(Schema::new(vec![
                Field::new("symbol", DataType::Utf8, false),
                Field::new("trade_time", ts, false),
                Field::new("price", DataType::Decimal128(28, 10), false),
            ])),
        )?;
        ctx.register_transform(TransformFile {
            name: "t".into(),
            path: "t.sql".into(),
            sql: sql.into(),
        })
        .await
    }

    /// The whole error chain planning `sql` fails with.
    async fn refusal(sql: &str) -> String {
        crate::report(&plan(sql).await.unwrap_err()).to_string()
    }

    const CANDLES: &str = "SELECT symbol, w['end'] AS window_end, max(price) AS high \
        FROM (SELECT *, tumble(trade_time, INTERVAL '1 minute') AS w FROM trades) GROUP BY symbol, w";

    #[tokio::test]
    async fn a_per_row_query_keeps_no_state_and_an_aggregation_is_split_at_its_window() {
        let per_row = plan("SELECT symbol, price FROM trades").await.unwrap();
        assert!(per_row.stateful().is_none());
        let candles = plan(CANDLES).await.unwrap();
        let agg = candles.stateful().expect("stateful");
        assert!(agg.has_window());
        assert_eq!(
            candles
                .schema()
                .fields()
                .iter()
                .map(|f| f.name().as_str())
                .collect::<Vec<_>>(),
            ["symbol", "window_end", "high"]
        );
        let watermark = Watermark {
            column: "trade_time".into(),
            delay: Duration::from_secs(10),
            dead_letter_late: false,
        };
        assert!(agg.check(OutputMode::Append, Some(&watermark)).is_ok());
        let err = agg.check(OutputMode::Append, None).unwrap_err();
        assert!(err.contains("needs a watermark"), "{err}");
        let no_window = plan("SELECT symbol, max(price) AS high FROM trades GROUP BY symbol")
            .await
            .unwrap();
        let err = no_window
            .stateful()
            .unwrap()
            .check(OutputMode::Append, Some(&watermark))
            .unwrap_err();
        assert!(
            err.contains("needs an aggregation by an event-time window"),
            "{err}"
        );
        assert!(
            no_window
                .stateful()
                .unwrap()
                .check(OutputMode::Update, None)
                .is_ok()
        );
    }

    #[tokio::test]
    async fn two_aggregations_of_the_stream_and_grouping_sets_are_refused_with_the_reason() {
        let twice = refusal(
            "SELECT count(*) AS n FROM (SELECT symbol, max(price) AS m FROM trades GROUP BY symbol)",
        )
        .await;
        assert!(twice.contains("more than once"), "{twice}");
        let sets = refusal("SELECT symbol, max(price) FROM trades GROUP BY ROLLUP(symbol)").await;
        assert!(sets.contains("GROUPING SETS"), "{sets}");
    }

    #[tokio::test]
    async fn a_state_round_trips_and_one_of_another_aggregation_is_refused() {
        let candles = plan(CANDLES).await.unwrap();
        let agg = candles.stateful().unwrap();
        let store = StateStore {
            max_event_time: Some(42),
            watermark_floor: Some(7),
            offset_after: Some(1000),
            ..StateStore::default()
        };
        let back = agg.decode(&agg.encode(&store).unwrap(), "test").unwrap();
        assert_eq!(
            (
                back.max_event_time,
                back.watermark_floor,
                back.offset_after,
                back.len()
            ),
            (Some(42), Some(7), Some(1000), 0)
        );
        let other = plan(
            "SELECT symbol, w['end'] AS window_end, min(price) AS low, count(*) AS n \
             FROM (SELECT *, tumble(trade_time, INTERVAL '1 minute') AS w FROM trades) GROUP BY symbol, w",
        )
        .await
        .unwrap();
        let err = other
            .stateful()
            .unwrap()
            .decode(&agg.encode(&store).unwrap(), "test")
            .unwrap_err();
        assert!(
            err.to_string().contains("other keys or aggregates"),
            "{err}"
        );
    }

    #[test]
    fn the_watermark_is_the_largest_time_minus_the_delay_and_never_below_the_floor() {
        let delay = Duration::from_nanos(10);
        let mut store = StateStore::default();
        assert_eq!(store.watermark(delay), None);
        store.max_event_time = Some(100);
        assert_eq!(store.watermark(delay), Some(90));
        store.watermark_floor = Some(95);
        assert_eq!(store.watermark(delay), Some(95));
        let states = States {
            stores: BTreeMap::from([
                (Some(0), store),
                (
                    Some(1),
                    StateStore {
                        max_event_time: Some(200),
                        ..StateStore::default()
                    },
                ),
            ]),
        };
        assert_eq!(states.watermark(delay), Some(190));
        // Rows are late against the watermark the last batch closed windows with, not the floor.
        let mut states = states;
        assert_eq!(states.late_watermark(), None);
        states.closed_with(Some(150));
        assert_eq!(states.late_watermark(), Some(150));
        assert!(!states.would_close(delay), "no window in the state");
    }
}
