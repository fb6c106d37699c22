//! The single builder of the DataFusion `SessionContext`: reference tables, the streaming input
//! tables and the transforms (as views). `run`, `query`, `explain` and the SQL golden tests all go
//! through it, so none of them can drift from the others.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use datafusion::catalog::streaming::StreamingTable;
use datafusion::datasource::MemTable;
use datafusion::execution::TaskContext;
use datafusion::physical_plan::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use datafusion::prelude::{SessionConfig, SessionContext};

use crate::error::{Error, Result};
use crate::reference::ReferenceTable;
use crate::transform::{PlannedTransform, TransformFile};

/// Knobs of the SQL engine.
#[derive(Debug, Clone)]
pub struct ContextOptions {
    /// DataFusion's `target_partitions`: how many threads one batch's query may use. 1 suits
    /// micro-batches on a small machine: repartitioning a batch costs more than it saves.
    pub target_partitions: usize,
    /// DataFusion's `batch_size`: rows per internal Arrow batch.
    pub batch_size: usize,
}

impl Default for ContextOptions {
    fn default() -> Self {
        Self {
            target_partitions: 1,
            batch_size: 65_536,
        }
    }
}

/// The batches a streaming input table holds for the micro-batch being executed.
#[derive(Debug, Clone)]
pub struct InputSlot {
    schema: SchemaRef,
    batches: Arc<Mutex<Vec<RecordBatch>>>,
}

impl InputSlot {
    /// An empty slot for batches of `schema`.
    pub fn new(schema: SchemaRef) -> Self {
        Self {
            schema,
            batches: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// Replaces what the table holds.
    pub fn set(&self, batches: Vec<RecordBatch>) {
        *self
            .batches
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = batches;
    }

    /// The table's schema.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }
}

impl PartitionStream for InputSlot {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let batches = self
            .batches
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        Box::pin(RecordBatchStreamAdapter::new(
            self.schema.clone(),
            futures::stream::iter(batches.into_iter().map(Ok)),
        ))
    }
}

/// A DataFusion session with coinstream's tables and transforms.
pub struct EngineContext {
    session: SessionContext,
    inputs: HashMap<String, InputSlot>,
}

impl EngineContext {
    /// A session with `options` and no tables.
    pub fn new(options: &ContextOptions) -> Self {
        let mut config = SessionConfig::new()
            .with_target_partitions(options.target_partitions.max(1))
            .with_batch_size(options.batch_size.max(1));
        // Plans are executed again for every micro-batch; dynamic filters keep state between
        // executions that `reset_plan_states` does not clear, so they stay off.
        config
            .options_mut()
            .optimizer
            .enable_dynamic_filter_pushdown = false;
        config
            .options_mut()
            .optimizer
            .enable_join_dynamic_filter_pushdown = false;
        config
            .options_mut()
            .optimizer
            .enable_topk_dynamic_filter_pushdown = false;
        config
            .options_mut()
            .optimizer
            .enable_aggregate_dynamic_filter_pushdown = false;
        let session = SessionContext::new_with_config(config);
        crate::window::register(&session);
        Self {
            session,
            inputs: HashMap::new(),
        }
    }

    /// The DataFusion session (for `query` and tests).
    pub fn session(&self) -> &SessionContext {
        &self.session
    }

    /// Loads a reference table and registers it.
    pub fn register_reference(&mut self, table: &ReferenceTable) -> Result<()> {
        let batch = table.load()?;
        let mem = MemTable::try_new(batch.schema(), vec![vec![batch]])?;
        self.session
            .register_table(table.name.as_str(), Arc::new(mem))?;
        Ok(())
    }

    /// Registers a streaming input table; the returned slot sets its rows for each micro-batch.
    pub fn register_input(&mut self, name: &str, schema: SchemaRef) -> Result<InputSlot> {
        let slot = InputSlot::new(schema.clone());
        let table = StreamingTable::try_new(schema, vec![Arc::new(slot.clone())])?;
        self.session.register_table(name, Arc::new(table))?;
        self.inputs.insert(name.to_owned(), slot.clone());
        Ok(slot)
    }

    /// The slot of a registered input table.
    pub fn input(&self, name: &str) -> Option<&InputSlot> {
        self.inputs.get(name)
    }

    /// Plans a transform and registers it as a view named after it, so later transforms and
    /// `query` can read it. Planning errors name the file.
    pub async fn register_transform(&mut self, file: TransformFile) -> Result<PlannedTransform> {
        let planned = PlannedTransform::plan(&self.session, file).await?;
        let view = datafusion::datasource::ViewTable::new(
            planned.logical_plan().clone(),
            Some(planned.sql().to_owned()),
        );
        self.session
            .register_table(planned.name(), Arc::new(view))
            .map_err(|source| Error::Sql {
                name: planned.name().to_owned(),
                file: planned.file().to_owned(),
                message: "cannot register it as a view".into(),
                source,
            })?;
        Ok(planned)
    }
}
