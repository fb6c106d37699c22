//! `[state] type = "cassandra"`: the shared store of a stateful query's aggregation state
//! ([`engine::stateful::SharedState`]), a table on the Cassandra cluster of the `[sink]`, so that
//! instances of one query in a consumer group hand a Kafka partition's open windows to each other
//! through the cluster they already write to (as Kafka Streams hands state over through its
//! changelog topics).
//!
//! One row per query and source part, `PRIMARY KEY ((query, part))`, holding the part's state as
//! one Arrow IPC value (`state blob`), replaced whole after every batch that read the part: a
//! single-row write is atomic in Cassandra, so a part's groups, the watermark and the offset after
//! the records they hold always change together. Reads and writes use the sink's connection
//! settings and consistency (`local_quorum` by default: a read after a write on another instance
//! sees it).

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema};
use async_trait::async_trait;
use engine::stateful::SharedState;
use engine::{Result, Retry};
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;
use tokio::sync::OnceCell;

use super::config::{CassandraConfig, Settings};
use super::schema::ensure_schema;
use super::session::connect;
use crate::Error as ClientError;

/// The default table of `[state]`.
pub const DEFAULT_STATE_TABLE: &str = "coinstream_state";

/// The state table on the sink's cluster; connects on first use.
pub struct CassandraState {
    settings: Settings,
    ready: OnceCell<(Arc<Session>, PreparedStatement, PreparedStatement)>,
}

impl CassandraState {
    /// The state table `table` in the keyspace of the Cassandra `sink`, with its connection
    /// settings.
    ///
    /// # Errors
    /// [`engine::Error::Config`] when the sink's settings do not validate.
    pub fn new(sink: &CassandraConfig, table: &str) -> Result<Self> {
        let mut config = sink.clone();
        config.table = table.to_owned();
        config.partition_key = vec!["query".into(), "part".into()];
        config.clustering_key = Vec::new();
        config.ttl_secs = None;
        let schema = Arc::new(Schema::new(vec![
            Field::new("query", DataType::Utf8, false),
            Field::new("part", DataType::Utf8, false),
            Field::new("state", DataType::Binary, false),
        ]));
        Ok(Self {
            settings: config.validate(&schema)?,
            ready: OnceCell::new(),
        })
    }

    async fn ready(&self) -> Result<&(Arc<Session>, PreparedStatement, PreparedStatement)> {
        let who = self.description();
        self.ready
            .get_or_try_init(|| async {
                let session = Arc::new(connect(&self.settings, &who).await?);
                ensure_schema(&session, &self.settings, &who).await?;
                let table = self.settings.qualified_table();
                let prepare = async |cql: String| {
                    let mut statement = session.prepare(cql.as_str()).await.map_err(|e| {
                        ClientError::cassandra(format!("cannot prepare {cql}"), e).at_sink(&who)
                    })?;
                    // Both read or replace one whole row: safe to send again.
                    statement.set_is_idempotent(true);
                    Ok::<_, engine::Error>(statement)
                };
                let select = prepare(format!(
                    "SELECT \"state\" FROM {table} WHERE \"query\" = ? AND \"part\" = ?"
                ))
                .await?;
                let insert = prepare(format!(
                    "INSERT INTO {table} (\"query\", \"part\", \"state\") VALUES (?, ?, ?)"
                ))
                .await?;
                Ok((session, select, insert))
            })
            .await
    }
}

#[async_trait]
impl SharedState for CassandraState {
    fn description(&self) -> String {
        format!(
            "cassandra state {}.{}",
            self.settings.config.keyspace, self.settings.config.table
        )
    }

    async fn load(&self, query: &str, part: &str) -> Result<Option<Vec<u8>>> {
        let (session, select, _) = self.ready().await?;
        let result = session
            .execute_unpaged(select, (query, part))
            .await
            .map_err(|e| {
                ClientError::cassandra(format!("cannot read the state of {part}"), e)
                    .at_sink(self.description())
            })?;
        let rows = result.into_rows_result().map_err(|e| {
            engine::Error::sink_failed(
                self.description(),
                format!("the state of {part} is not a row: {e}"),
                Retry::Permanent,
            )
        })?;
        let row = rows.maybe_first_row::<(Vec<u8>,)>().map_err(|e| {
            engine::Error::sink_failed(
                self.description(),
                format!("the state of {part} does not read as a blob: {e}"),
                Retry::Permanent,
            )
        })?;
        Ok(row.map(|(state,)| state))
    }

    async fn save(&self, query: &str, part: &str, state: Vec<u8>) -> Result<()> {
        let (session, _, insert) = self.ready().await?;
        session
            .execute_unpaged(insert, (query, part, state))
            .await
            .map_err(|e| {
                ClientError::cassandra(format!("cannot write the state of {part}"), e)
                    .at_sink(self.description())
            })?;
        Ok(())
    }
}
