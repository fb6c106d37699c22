//! The sink's table as a DataFusion table, for `coinstream query`: [`CassandraTable`] (the
//! `TableProvider`) plans a [`CassandraScan`], one paged CQL SELECT of the projected columns
//! with the filters [`super::pushdown`] accepts in its WHERE clause, streamed as record batches.
//!
//! The scan's display shows what reaches Cassandra (`EXPLAIN`), and its `output_rows` metric
//! counts the rows Cassandra returned (`EXPLAIN ANALYZE`): every pushed filter is exact, so no
//! row is read and then dropped inside the scan.

use std::fmt;
use std::sync::Arc;

use arrow::datatypes::{Field, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::{Session as DfSession, TableProvider};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, Result as DfResult};
use datafusion::datasource::TableType;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{BaselineMetrics, ExecutionPlanMetricsSet, MetricsSet};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
};
use datafusion::prelude::SessionContext;
use futures::{StreamExt, TryStreamExt};
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;
use scylla::value::{CqlValue, Row};

use super::config::{CassandraConfig, Settings};
use super::pushdown::{self, Keys, Pushdown};
use super::read;
use super::schema::check_existing;
use super::session::connect;
use super::types::quote;
use crate::Error as ClientError;

/// Rows per page of the SELECT by default: one round trip per page.
pub const PAGE_ROWS: i32 = 5_000;

/// Registers the Cassandra table of `config` in `session` under each of `names` (the output
/// transform's name, as for the Parquet store, and the table's own name), with the columns of
/// the transform's output `schema`. Connects and checks that the table exists with those
/// columns and the configured key; errors name the table (`sink cassandra ks.table: …`).
pub async fn register_table(
    session: &SessionContext,
    names: &[&str],
    config: &CassandraConfig,
    schema: SchemaRef,
) -> engine::Result<()> {
    let table = Arc::new(CassandraTable::connect(config, schema).await?);
    for name in names {
        session.register_table(*name, table.clone())?;
    }
    Ok(())
}

/// A Cassandra table read with paged SELECTs; see the module docs.
#[derive(Debug)]
pub struct CassandraTable {
    session: Arc<Session>,
    settings: Arc<Settings>,
    /// The transform's output schema, every column nullable: Cassandra stores a null as a
    /// missing cell, so any non-key column can come back empty.
    schema: SchemaRef,
    /// Rows per page of each SELECT.
    page_rows: i32,
}

impl CassandraTable {
    /// Connects with the sink's settings (contact points, credentials, consistency, timeouts)
    /// and checks the table holds the transform's columns under the configured key.
    pub async fn connect(config: &CassandraConfig, schema: SchemaRef) -> engine::Result<Self> {
        let settings = config.validate(&schema)?;
        let who = format!(
            "cassandra {}.{}",
            settings.config.keyspace, settings.config.table
        );
        let session = connect(&settings, &who).await?;
        check_existing(&session, &settings, &who).await?;
        let fields: Vec<Field> = schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect();
        Ok(Self {
            session: Arc::new(session),
            settings: Arc::new(settings),
            schema: Arc::new(Schema::new(fields)),
            page_rows: PAGE_ROWS,
        })
    }

    /// This table reading `rows` rows per page (default [`PAGE_ROWS`]); at least 1.
    pub fn with_page_rows(mut self, rows: std::num::NonZeroU16) -> Self {
        self.page_rows = i32::from(rows.get());
        self
    }

    fn pushdown(&self, filters: &[&Expr]) -> Pushdown {
        pushdown::plan(
            filters,
            &Keys {
                schema: &self.schema,
                partition_key: &self.settings.config.partition_key,
                clustering_key: &self.settings.config.clustering_key,
            },
        )
    }
}

#[async_trait]
impl TableProvider for CassandraTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DfResult<Vec<TableProviderFilterPushDown>> {
        Ok(self
            .pushdown(filters)
            .pushed
            .into_iter()
            .map(|pushed| {
                if pushed {
                    TableProviderFilterPushDown::Exact
                } else {
                    TableProviderFilterPushDown::Unsupported
                }
            })
            .collect())
    }

    async fn scan(
        &self,
        _state: &dyn DfSession,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        // DataFusion hands the scan exactly the filters it was told are exact; each must be in
        // the WHERE clause, since nothing above the scan applies them again.
        let refs: Vec<&Expr> = filters.iter().collect();
        let pushdown = self.pushdown(&refs);
        if let Some(i) = pushdown.pushed.iter().position(|p| !p) {
            return Err(DataFusionError::Internal(format!(
                "the cassandra scan was given filter {} that it cannot push into CQL",
                filters[i]
            )));
        }
        let schema = match projection {
            Some(p) => Arc::new(self.schema.project(p)?),
            None => self.schema.clone(),
        };
        let mut columns: Vec<String> = schema.fields().iter().map(|f| quote(f.name())).collect();
        let selects_nothing = columns.is_empty();
        if selects_nothing {
            // CQL selects at least one column; `count(*)` needs only the rows.
            columns.push(quote(&self.settings.config.partition_key[0]));
        }
        let mut cql = format!(
            "SELECT {} FROM {}",
            columns.join(", "),
            self.settings.qualified_table()
        );
        let where_cql = pushdown.where_cql();
        if !where_cql.is_empty() {
            cql.push_str(" WHERE ");
            cql.push_str(&where_cql);
        }
        // CQL's LIMIT is a positive int; any other limit is left to DataFusion's own.
        let limit = limit.and_then(|n| i32::try_from(n).ok().filter(|n| *n > 0));
        if let Some(n) = limit {
            cql.push_str(&format!(" LIMIT {n}"));
        }
        let who = format!(
            "cassandra {}.{}",
            self.settings.config.keyspace, self.settings.config.table
        );
        let mut prepared = self.session.prepare(cql.as_str()).await.map_err(|e| {
            external(ClientError::cassandra(format!("cannot prepare {cql}"), e).at_sink(&who))
        })?;
        prepared.set_page_size(self.page_rows);
        prepared.set_is_idempotent(true);
        let properties = PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Ok(Arc::new(CassandraScan {
            session: self.session.clone(),
            table: format!(
                "{}.{}",
                self.settings.config.keyspace, self.settings.config.table
            ),
            prepared,
            values: pushdown
                .restrictions
                .iter()
                .map(|r| r.value.clone())
                .collect(),
            shown_where: where_cql,
            shown_values: pushdown
                .restrictions
                .iter()
                .map(|r| r.shown_value())
                .collect(),
            limit,
            selects_nothing,
            schema,
            properties: Arc::new(properties),
            metrics: ExecutionPlanMetricsSet::new(),
        }))
    }
}

fn external(e: engine::Error) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

/// One paged SELECT on a Cassandra table (one partition of output). Displays as
/// `CassandraScan: ks.table projection=[…] where="symbol" = ? AND … ['BTC-USD', …]`.
#[derive(Debug)]
pub struct CassandraScan {
    session: Arc<Session>,
    /// `keyspace.table`, for display and errors.
    table: String,
    prepared: PreparedStatement,
    /// Bound to the WHERE clause's markers, in order.
    values: Vec<CqlValue>,
    shown_where: String,
    shown_values: Vec<String>,
    limit: Option<i32>,
    /// The SELECT reads one key column that the (empty) projection drops.
    selects_nothing: bool,
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl CassandraScan {
    /// The CQL the scan runs.
    pub fn cql(&self) -> &str {
        self.prepared.get_statement()
    }
}

impl DisplayAs for CassandraScan {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self
            .schema
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        let projection = format!("[{}]", names.join(", "));
        let filter = if self.shown_where.is_empty() {
            "none (full scan)".to_owned()
        } else {
            format!("{} [{}]", self.shown_where, self.shown_values.join(", "))
        };
        match t {
            DisplayFormatType::TreeRender => {
                writeln!(f, "table={}", self.table)?;
                writeln!(f, "projection={projection}")?;
                write!(f, "where={filter}")?;
            }
            _ => {
                write!(
                    f,
                    "CassandraScan: {} projection={projection} where={filter}",
                    self.table
                )?;
            }
        }
        if let Some(n) = self.limit {
            write!(f, " limit={n}")?;
        }
        Ok(())
    }
}

impl ExecutionPlan for CassandraScan {
    fn name(&self) -> &str {
        "CassandraScan"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        Vec::new()
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        if children.is_empty() {
            Ok(self)
        } else {
            Err(DataFusionError::Internal(
                "CassandraScan has no children".into(),
            ))
        }
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        let baseline = BaselineMetrics::new(&self.metrics, partition);
        let batch_rows = context.session_config().batch_size().max(1);
        let (session, prepared, values) = (
            self.session.clone(),
            self.prepared.clone(),
            self.values.clone(),
        );
        let who = format!("cassandra {}", self.table);
        let read_error = {
            let who = who.clone();
            move |e: ClientError| external(e.at_sink(&who))
        };
        let started = {
            let read_error = read_error.clone();
            async move {
                let pager = session
                    .execute_iter(prepared, values)
                    .await
                    .map_err(|e| read_error(ClientError::cassandra("cannot read", e)))?;
                let rows = pager.rows_stream::<Row>().map_err(|e| {
                    DataFusionError::Internal(format!("rows of {who} as CQL values: {e}"))
                })?;
                Ok::<_, DataFusionError>(
                    rows.map_err(move |e| read_error(ClientError::cassandra("a page failed", e))),
                )
            }
        };
        let schema = self.schema.clone();
        let selects_nothing = self.selects_nothing;
        let table = self.table.clone();
        let batches = futures::stream::once(started)
            .try_flatten()
            .try_chunks(batch_rows)
            .map(move |chunk| {
                let mut rows = chunk.map_err(|e| e.1)?;
                if selects_nothing {
                    rows.iter_mut().for_each(|r| r.columns.clear());
                }
                let timer = baseline.elapsed_compute().timer();
                let batch = read::batch(&schema, rows)
                    .map_err(|m| DataFusionError::Execution(format!("cassandra {table}: {m}")))?;
                timer.done();
                baseline.record_output(batch.num_rows());
                Ok(batch)
            });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema.clone(),
            batches,
        )))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }
}
