//! The sink: connect, make sure the keyspace and a compatible table exist ([`super::schema`]),
//! prepare the INSERT once, then write each micro-batch as concurrent UNLOGGED batches, each
//! holding rows of one partition (or, with `batch_size_rows = 1`, as concurrent INSERTs), all
//! idempotent.
//!
//! Retries live in two layers, neither of them here. The driver's `DefaultRetryPolicy` sends an
//! INSERT (idempotent: it carries its full primary key) once more at once, to another node, when
//! its coordinator was overloaded, lost the connection or lacked replicas: a one-node blip costs
//! one request, not the batch. Every other transient failure fails the write, and the runtime
//! retries the whole batch with the engine's jittered backoff (re-sending rows rewrites the same
//! values). A per-INSERT sleep-and-retry loop here (as before) only delayed that: when the
//! cluster is down every INSERT fails, and pausing each one before the runtime pauses the batch
//! stacked two backoffs.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use arrow::row::{RowConverter, SortField};
use async_trait::async_trait;
use engine::{Error, Result, Retry, Sink};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use scylla::client::session::Session;
use scylla::errors::ExecutionError;
use scylla::statement::batch::{Batch, BatchStatement, BatchType};
use scylla::statement::prepared::PreparedStatement;

use super::config::{CassandraConfig, Settings};
use super::schema::ensure_schema;
use super::session::connect;
use super::types::{BatchRows, quote};
use crate::Error as ClientError;

/// The Cassandra sink. Cheap to build: nothing connects until `healthcheck` (or the first `write`).
pub struct CassandraSink {
    settings: Settings,
    /// Set once connected; kept across failures, since the driver reconnects by itself.
    session: Option<Arc<Session>>,
    /// Prepared once the schema is known to be right.
    insert: Option<PreparedStatement>,
}

impl std::fmt::Debug for CassandraSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CassandraSink")
            .field("settings", &self.settings)
            .field("connected", &self.session.is_some())
            .finish()
    }
}

impl CassandraSink {
    /// Validates `config` against the transform's output `schema` (every problem at once, as an
    /// [`Error::Config`]).
    pub fn new(config: CassandraConfig, schema: SchemaRef) -> Result<Self> {
        Ok(Self {
            settings: config.validate(&schema)?,
            session: None,
            insert: None,
        })
    }

    fn error(&self, message: String, retry: Retry) -> Error {
        Error::sink_failed(self.description(), message, retry)
    }

    /// Connects, ensures the schema and prepares the INSERT, unless already done.
    async fn ready(&mut self) -> Result<(Arc<Session>, PreparedStatement)> {
        let session = match &self.session {
            Some(s) => s.clone(),
            None => {
                let s = Arc::new(connect(&self.settings, &self.description()).await?);
                self.session = Some(s.clone());
                s
            }
        };
        if let Some(insert) = &self.insert {
            return Ok((session, insert.clone()));
        }
        ensure_schema(&session, &self.settings, &self.description()).await?;
        let cql = self.settings.insert_cql();
        let mut insert = session.prepare(cql.as_str()).await.map_err(|e| {
            ClientError::cassandra(format!("cannot prepare {cql}"), e).at_sink(self.description())
        })?;
        // Every row has its full primary key, so re-sending an INSERT can only rewrite the same row.
        insert.set_is_idempotent(true);
        self.insert = Some(insert.clone());
        tracing::info!(sink = %self.description(), statement = %cql, "Prepared the insert.");
        Ok((session, insert))
    }

    /// Refuses a batch with a null in a key column: Cassandra cannot store it, and retrying won't
    /// change that.
    fn check_keys(&self, rows: &BatchRows<'_>) -> Result<()> {
        for column in self.settings.key_column_indices() {
            let nulls = (0..rows.len()).filter(|&r| rows.is_null(column, r)).count();
            if nulls > 0 {
                return Err(self.error(
                    format!(
                        "{nulls} rows have a null in primary key column {}, which Cassandra cannot store",
                        quote(&self.settings.columns[column].name)
                    ),
                    Retry::Permanent,
                ));
            }
        }
        Ok(())
    }
}

impl Settings {
    /// `keyspace.table` as descriptions and logs name it (unquoted, unlike
    /// [`Settings::qualified_table`], which goes into CQL).
    pub(super) fn table_name(&self) -> String {
        format!("{}.{}", self.config.keyspace, self.config.table)
    }
}

#[async_trait]
impl Sink for CassandraSink {
    fn description(&self) -> String {
        format!("cassandra {}", self.settings.table_name())
    }

    async fn healthcheck(&mut self) -> Result<()> {
        self.ready().await.map(|_| ())
    }

    async fn write(&mut self, batch_id: u64, batches: &[RecordBatch]) -> Result<()> {
        let total: usize = batches.iter().map(RecordBatch::num_rows).sum();
        if total == 0 {
            return Ok(());
        }
        let (session, insert) = self.ready().await?;
        let started = Instant::now();
        let mut all_rows = Vec::with_capacity(batches.len());
        for batch in batches {
            let rows = BatchRows::new(batch).map_err(|m| {
                Error::Internal(format!("a batch does not have the transform's schema: {m}"))
            })?;
            self.check_keys(&rows)?;
            all_rows.push(rows);
        }
        let batch_size = self.settings.config.batch_size_rows.get();
        let written = if batch_size == 1 {
            write_rows(&session, &insert, &all_rows, &self.settings).await
        } else {
            let groups = partitions(batches, &self.settings.partition_key_indices())
                .map_err(|e| Error::Internal(format!("cannot group rows by partition: {e}")))?;
            write_partitions(&session, &insert, &all_rows, &groups, &self.settings).await
        };
        written.map_err(|e| {
            ClientError::cassandra(format!("batch {batch_id}: an insert failed"), e)
                .at_sink(self.description())
        })?;
        let elapsed = started.elapsed();
        tracing::debug!(sink = %self.description(), batch_id, rows = total,
            elapsed_ms = elapsed.as_millis() as u64,
            rows_per_sec = (total as f64 / elapsed.as_secs_f64().max(1e-9)) as u64,
            "Wrote a batch.");
        Ok(())
    }

    async fn close(&mut self) -> Result<()> {
        self.insert = None;
        self.session = None;
        Ok(())
    }
}

/// Sends every row as its own INSERT, at most `max_in_flight` at once (see [`send_bounded`]).
async fn write_rows(
    session: &Session,
    insert: &PreparedStatement,
    batches: &[BatchRows<'_>],
    settings: &Settings,
) -> std::result::Result<(), ExecutionError> {
    let requests = batches.iter().flat_map(|rows| {
        (0..rows.len()).map(move |r| session.execute_unpaged(insert, rows.row(r)))
    });
    send_bounded(requests, settings.config.max_in_flight.get()).await
}

/// Awaits every request `requests` makes, at most `max_in_flight` at once (each is made when a
/// place is free). Returns at the first that failed (after the driver's retry policy), dropping
/// the ones in flight: the runtime retries the whole micro-batch, and every request carries full
/// primary keys, so re-sending rewrites the same rows.
async fn send_bounded<T>(
    requests: impl Iterator<Item = impl Future<Output = std::result::Result<T, ExecutionError>>>,
    max_in_flight: usize,
) -> std::result::Result<(), ExecutionError> {
    let mut in_flight = FuturesUnordered::new();
    for request in requests {
        if in_flight.len() >= max_in_flight
            && let Some(done) = in_flight.next().await
        {
            done?;
        }
        in_flight.push(request);
    }
    while let Some(done) = in_flight.next().await {
        done?;
    }
    Ok(())
}

/// Where each row of `batches` is, `(batch, row)`, grouped by partition (equal values in the
/// `key_columns`, indices into each batch's columns): the groups in order of their first row, the
/// rows of a group in their order. Fails only if a key column's Arrow type cannot be compared,
/// which the sink's column types rule out.
fn partitions(
    batches: &[RecordBatch],
    key_columns: &[usize],
) -> std::result::Result<Vec<Vec<(usize, usize)>>, ArrowError> {
    let Some(first) = batches.first() else {
        return Ok(Vec::new());
    };
    let fields = key_columns
        .iter()
        .map(|&c| SortField::new(first.schema_ref().field(c).data_type().clone()))
        .collect();
    // One converter for every batch: its rows compare byte for byte across them.
    let converter = RowConverter::new(fields)?;
    let mut group_of: HashMap<Box<[u8]>, usize> = HashMap::new();
    let mut groups: Vec<Vec<(usize, usize)>> = Vec::new();
    for (b, batch) in batches.iter().enumerate() {
        let columns: Vec<_> = key_columns
            .iter()
            .map(|&c| batch.column(c).clone())
            .collect();
        let keys = converter.convert_columns(&columns)?;
        for (r, key) in keys.iter().enumerate() {
            match group_of.get(key.as_ref()) {
                Some(&g) => groups[g].push((b, r)),
                None => {
                    group_of.insert(key.as_ref().into(), groups.len());
                    groups.push(vec![(b, r)]);
                }
            }
        }
    }
    Ok(groups)
}

/// Sends the rows of each partition in `groups` (from [`partitions`]) as UNLOGGED batches of at
/// most `batch_size_rows` rows, at most `max_in_flight` batches at once. The driver routes each
/// batch by its first row's token, so every batch goes to a replica of its one partition. Returns
/// at the first batch that failed, dropping the ones in flight: the runtime retries the whole
/// micro-batch (every row is rewritten with the same values).
async fn write_partitions(
    session: &Session,
    insert: &PreparedStatement,
    batches: &[BatchRows<'_>],
    groups: &[Vec<(usize, usize)>],
    settings: &Settings,
) -> std::result::Result<(), ExecutionError> {
    let batch_size = settings.config.batch_size_rows.get();
    let statement = |rows: usize| {
        let mut batch = Batch::new_with_statements(
            BatchType::Unlogged,
            vec![BatchStatement::PreparedStatement(insert.clone()); rows],
        );
        // Every row carries its full primary key: re-sending the batch rewrites the same rows.
        batch.set_is_idempotent(true);
        batch
    };
    // Built at the first full chunk: a live micro-batch of a few rows per partition has none.
    let full = std::sync::OnceLock::new();
    let requests = groups
        .iter()
        .flat_map(|g| g.chunks(batch_size))
        .map(|chunk| {
            let values: Vec<_> = chunk.iter().map(|&(b, r)| batches[b].row(r)).collect();
            // Full batches share one statement; only a partition's last, shorter one needs its own
            // (a statement holds one copy of the prepared INSERT per row).
            let batch = if chunk.len() == batch_size {
                Cow::Borrowed(full.get_or_init(|| statement(batch_size)))
            } else {
                Cow::Owned(statement(chunk.len()))
            };
            async move { session.batch(&batch, values).await }
        });
    send_bounded(requests, settings.config.max_in_flight.get()).await
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{ArrayRef, Date32Array, Int64Array, StringArray};
    use arrow::record_batch::RecordBatch;

    use super::partitions;

    fn batch(rows: &[(&str, i32, i64)]) -> RecordBatch {
        RecordBatch::try_from_iter([
            (
                "symbol",
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))) as ArrayRef,
            ),
            (
                "trade_date",
                Arc::new(Date32Array::from_iter_values(rows.iter().map(|r| r.1))),
            ),
            (
                "trade_id",
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.2))),
            ),
        ])
        .unwrap()
    }

    #[test]
    fn rows_group_by_every_partition_key_column_across_batches() {
        let batches = [
            batch(&[
                ("BTC", 1, 10),
                ("ETH", 1, 11),
                ("BTC", 2, 12),
                ("BTC", 1, 13),
            ]),
            batch(&[("ETH", 1, 14), ("BTC", 1, 15), ("ETH", 2, 16)]),
        ];
        // Keys (symbol, trade_date): groups in order of first row, rows in order.
        assert_eq!(
            partitions(&batches, &[0, 1]).unwrap(),
            [
                vec![(0, 0), (0, 3), (1, 1)],
                vec![(0, 1), (1, 0)],
                vec![(0, 2)],
                vec![(1, 2)],
            ]
        );
        // Keyed by the date alone, the products share partitions.
        assert_eq!(
            partitions(&batches, &[1]).unwrap(),
            [
                vec![(0, 0), (0, 1), (0, 3), (1, 0), (1, 1)],
                vec![(0, 2), (1, 2)]
            ]
        );
        assert!(partitions(&[], &[0]).unwrap().is_empty());
    }
}
