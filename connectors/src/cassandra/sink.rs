//! The sink: connect, make sure the keyspace and a compatible table exist, prepare the INSERT once,
//! then write each batch as concurrent, individually retried, idempotent INSERTs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use engine::{Error, Result, Retry, Sink};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::errors::{
    ConnectionError, ConnectionPoolError, ConnectionSetupRequestErrorKind, DbError, ExecutionError,
    MetadataError, NewSessionError, PrepareError, RequestAttemptError,
};
use scylla::policies::retry::FallthroughRetryPolicy;
use scylla::statement::prepared::PreparedStatement;

use super::config::{CassandraConfig, Settings};
use super::types::{BatchRows, RowRef, quote};

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
        Error::Sink {
            name: self.description(),
            message,
            retry,
        }
    }

    /// Connects, ensures the schema and prepares the INSERT, unless already done.
    async fn ready(&mut self) -> Result<(Arc<Session>, PreparedStatement)> {
        let session = match &self.session {
            Some(s) => s.clone(),
            None => {
                let s = Arc::new(self.connect().await?);
                self.session = Some(s.clone());
                s
            }
        };
        if let Some(insert) = &self.insert {
            return Ok((session, insert.clone()));
        }
        self.ensure_schema(&session).await?;
        let cql = self.settings.insert_cql();
        let mut insert = session
            .prepare(cql.as_str())
            .await
            .map_err(|e| self.error(format!("cannot prepare {cql}: {e}"), prepare_retry(&e)))?;
        // Every row has its full primary key, so re-sending an INSERT can only rewrite the same row.
        insert.set_is_idempotent(true);
        self.insert = Some(insert.clone());
        tracing::info!(sink = %self.description(), statement = %cql, "Prepared the insert.");
        Ok((session, insert))
    }

    async fn connect(&self) -> Result<Session> {
        let s = &self.settings;
        // Retries are ours (see `insert_with_retry`): the driver reports every failure at once.
        let profile = ExecutionProfile::builder()
            .consistency(s.consistency)
            .request_timeout(Some(s.request_timeout))
            .retry_policy(Arc::new(FallthroughRetryPolicy::new()))
            .build();
        // The default load balancing policy is token-aware; it needs the keyspace's replication,
        // which is the only schema metadata fetched.
        let mut builder = SessionBuilder::new()
            .known_nodes(&s.contact_points)
            .connection_timeout(s.connect_timeout)
            .keyspaces_to_fetch([s.keyspace.clone()])
            .default_execution_profile_handle(profile.into_handle());
        if let Some(dc) = &s.local_datacenter {
            builder = builder.prefer_datacenter(dc.clone());
        }
        if let Some(c) = &s.credentials {
            builder = builder.user(&c.username, &c.password);
        }
        let started = Instant::now();
        let session = builder.build().await.map_err(|e| {
            self.error(
                format!("cannot connect to {}: {e}", s.contact_points.join(", ")),
                new_session_retry(&e),
            )
        })?;
        let datacenters: Vec<String> = {
            let state = session.get_cluster_state();
            let mut dcs: Vec<String> = state
                .get_nodes_info()
                .iter()
                .filter_map(|n| n.datacenter.clone())
                .collect();
            dcs.sort();
            dcs.dedup();
            dcs
        };
        if let Some(dc) = &s.local_datacenter
            && !datacenters.contains(dc)
        {
            return Err(self.error(
                format!(
                    "local_datacenter {dc:?} is not a datacenter of the cluster; its datacenters are {datacenters:?}"
                ),
                Retry::Permanent,
            ));
        }
        tracing::info!(sink = %self.description(), contact_points = ?s.contact_points,
            datacenters = ?datacenters, elapsed_ms = started.elapsed().as_millis() as u64,
            "Connected to Cassandra.");
        Ok(session)
    }

    async fn ensure_schema(&self, session: &Session) -> Result<()> {
        let s = &self.settings;
        for cql in [s.create_keyspace_cql(), s.create_table_cql()] {
            session
                .query_unpaged(cql.as_str(), ())
                .await
                .map_err(|e| self.error(format!("{cql}: {e}"), execution_retry(&e)))?;
        }
        let existing = self.existing_columns(session).await?;
        check_table(s, &existing).map_err(|m| self.error(m, Retry::Permanent))?;
        tracing::info!(sink = %self.description(), "The keyspace and table are in place.");
        Ok(())
    }

    async fn existing_columns(&self, session: &Session) -> Result<Vec<ExistingColumn>> {
        const QUERY: &str = "SELECT column_name, type, kind, position FROM system_schema.columns \
                             WHERE keyspace_name = ? AND table_name = ?";
        let s = &self.settings;
        let result = session
            .query_unpaged(QUERY, (&s.keyspace, &s.table))
            .await
            .map_err(|e| {
                self.error(
                    format!("cannot read the table's columns: {e}"),
                    execution_retry(&e),
                )
            })?;
        let unexpected = |e: &dyn std::fmt::Display| {
            Error::Internal(format!(
                "system_schema.columns has an unexpected shape: {e}"
            ))
        };
        let rows = result.into_rows_result().map_err(|e| unexpected(&e))?;
        rows.rows::<(String, String, String, i32)>()
            .map_err(|e| unexpected(&e))?
            .map(|row| {
                row.map(|(name, cql_type, kind, position)| ExistingColumn {
                    name,
                    cql_type,
                    kind,
                    position,
                })
                .map_err(|e| unexpected(&e))
            })
            .collect()
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

#[async_trait]
impl Sink for CassandraSink {
    fn description(&self) -> String {
        format!(
            "cassandra {}.{}",
            self.settings.keyspace, self.settings.table
        )
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
        write_rows(&session, &insert, &all_rows, &self.settings)
            .await
            .map_err(|f| {
                self.error(
                    format!(
                        "batch {batch_id}: an insert failed after {} attempt(s): {}",
                        f.attempts, f.error
                    ),
                    f.retry,
                )
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

/// Sends every row, at most `max_in_flight` at once. Returns at the first INSERT that failed for
/// good, dropping the ones in flight: the runtime retries the whole batch.
async fn write_rows(
    session: &Session,
    insert: &PreparedStatement,
    batches: &[BatchRows<'_>],
    settings: &Settings,
) -> std::result::Result<(), InsertFailure> {
    let max_in_flight = settings.max_in_flight.get();
    let mut in_flight = FuturesUnordered::new();
    for rows in batches {
        for r in 0..rows.len() {
            if in_flight.len() >= max_in_flight
                && let Some(done) = in_flight.next().await
            {
                done?;
            }
            in_flight.push(insert_with_retry(session, insert, rows.row(r), settings));
        }
    }
    while let Some(done) = in_flight.next().await {
        done?;
    }
    Ok(())
}

/// An INSERT that failed for good.
struct InsertFailure {
    error: ExecutionError,
    attempts: u32,
    retry: Retry,
}

/// Runs one INSERT, retrying transient failures with doubling pauses up to `max_attempts`.
async fn insert_with_retry(
    session: &Session,
    insert: &PreparedStatement,
    row: RowRef<'_, '_>,
    settings: &Settings,
) -> std::result::Result<(), InsertFailure> {
    let mut backoff = settings.retry_backoff;
    let mut attempts = 0;
    loop {
        attempts += 1;
        let error = match session.execute_unpaged(insert, row).await {
            Ok(_) => return Ok(()),
            Err(e) => e,
        };
        let retry = execution_retry(&error);
        if retry == Retry::Permanent || attempts >= settings.max_attempts.get() {
            return Err(InsertFailure {
                error,
                attempts,
                retry,
            });
        }
        tracing::debug!(error = %error, attempts, retry_in_ms = backoff.as_millis() as u64,
            "Insert failed; retrying.");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// A row of `system_schema.columns`.
#[derive(Debug, Clone)]
struct ExistingColumn {
    name: String,
    cql_type: String,
    /// `partition_key`, `clustering`, `regular` or `static`.
    kind: String,
    position: i32,
}

/// Whether an existing table can take the transform's rows under the configured key.
fn check_table(s: &Settings, existing: &[ExistingColumn]) -> std::result::Result<(), String> {
    let table = s.qualified_table();
    if existing.is_empty() {
        return Err(format!("table {table} does not exist after CREATE TABLE"));
    }
    for column in &s.columns {
        let want = column.cql.cql_name();
        match existing.iter().find(|e| e.name == column.name) {
            None => {
                let names: Vec<String> = existing.iter().map(|e| quote(&e.name)).collect();
                return Err(format!(
                    "existing table {table} has no column {} (needed as {want}); its columns are {}; \
                     add the column or use another table",
                    quote(&column.name),
                    names.join(", ")
                ));
            }
            Some(e) if e.cql_type != want => {
                return Err(format!(
                    "column {} of existing table {table} is {}, but the transform writes {want}",
                    quote(&column.name),
                    e.cql_type
                ));
            }
            Some(_) => {}
        }
    }
    let key_of = |kind: &str| {
        let mut cols: Vec<&ExistingColumn> = existing.iter().filter(|e| e.kind == kind).collect();
        cols.sort_by_key(|e| e.position);
        cols.into_iter().map(|e| e.name.clone()).collect::<Vec<_>>()
    };
    let (partition, clustering) = (key_of("partition_key"), key_of("clustering"));
    if partition != s.partition_key || clustering != s.clustering_key {
        let show = |p: &[String], c: &[String]| {
            let p: Vec<String> = p.iter().map(|n| quote(n)).collect();
            let mut all = vec![format!("({})", p.join(", "))];
            all.extend(c.iter().map(|n| quote(n)));
            format!("PRIMARY KEY ({})", all.join(", "))
        };
        return Err(format!(
            "existing table {table} has {}, but the config asks for {}",
            show(&partition, &clustering),
            show(&s.partition_key, &s.clustering_key)
        ));
    }
    Ok(())
}

/// Timeouts, unavailable or overloaded replicas and lost connections pass; bad statements, bad
/// data and refused credentials don't.
fn execution_retry(e: &ExecutionError) -> Retry {
    match e {
        ExecutionError::BadQuery(_) | ExecutionError::UseKeyspaceError(_) => Retry::Permanent,
        ExecutionError::PrepareError(e) => prepare_retry(e),
        ExecutionError::LastAttemptError(e) => attempt_retry(e),
        // EmptyPlan means no node is up (a wrong local_datacenter is refused when connecting);
        // the rest are pools, timeouts and schema agreement.
        _ => Retry::Transient,
    }
}

fn prepare_retry(e: &PrepareError) -> Retry {
    match e {
        PrepareError::AllAttemptsFailed { first_attempt } => attempt_retry(first_attempt),
        _ => Retry::Transient,
    }
}

fn attempt_retry(e: &RequestAttemptError) -> Retry {
    match e {
        RequestAttemptError::DbError(db, _) => db_retry(db),
        RequestAttemptError::SerializationError(_)
        | RequestAttemptError::CqlRequestSerialization(_) => Retry::Permanent,
        _ => Retry::Transient,
    }
}

fn db_retry(e: &DbError) -> Retry {
    match e {
        DbError::SyntaxError
        | DbError::Invalid
        | DbError::AlreadyExists { .. }
        | DbError::FunctionFailure { .. }
        | DbError::AuthenticationError
        | DbError::Unauthorized
        | DbError::ConfigError
        | DbError::ProtocolError => Retry::Permanent,
        _ => Retry::Transient,
    }
}

fn new_session_retry(e: &NewSessionError) -> Retry {
    match e {
        NewSessionError::EmptyKnownNodesList | NewSessionError::IllegalConfig(_) => {
            Retry::Permanent
        }
        NewSessionError::MetadataError(MetadataError::ConnectionPoolError(
            ConnectionPoolError::Broken {
                last_connection_error: ConnectionError::ConnectionSetupRequestError(setup),
            },
        )) => match &setup.error {
            ConnectionSetupRequestErrorKind::DbError(db, _) => db_retry(db),
            ConnectionSetupRequestErrorKind::MissingAuthentication => Retry::Permanent,
            _ => Retry::Transient,
        },
        _ => Retry::Transient,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    fn settings() -> Settings {
        let schema = Arc::new(Schema::new(vec![
            Field::new("symbol", DataType::Utf8, true),
            Field::new("trade_date", DataType::Date32, true),
            Field::new("trade_time", DataType::Int64, true),
            Field::new("trade_id", DataType::Int64, true),
            Field::new("Price", DataType::Decimal128(20, 4), true),
        ]));
        let config: CassandraConfig = serde_json::from_str("{}").unwrap();
        config.validate(&schema).unwrap()
    }

    fn col(name: &str, cql_type: &str, kind: &str, position: i32) -> ExistingColumn {
        ExistingColumn {
            name: name.into(),
            cql_type: cql_type.into(),
            kind: kind.into(),
            position,
        }
    }

    fn matching() -> Vec<ExistingColumn> {
        vec![
            col("symbol", "text", "partition_key", 0),
            col("trade_date", "date", "partition_key", 1),
            col("trade_time", "bigint", "clustering", 0),
            col("trade_id", "bigint", "clustering", 1),
            col("Price", "decimal", "regular", -1),
        ]
    }

    #[test]
    fn accepts_a_matching_table_with_extra_columns() {
        let mut existing = matching();
        existing.push(col("note", "text", "regular", -1));
        assert_eq!(check_table(&settings(), &existing), Ok(()));
    }

    #[test]
    fn names_the_column_whose_type_differs() {
        let mut existing = matching();
        existing[4] = col("Price", "double", "regular", -1);
        let err = check_table(&settings(), &existing).unwrap_err();
        assert!(
            err.contains("column \"Price\"")
                && err.contains("is double, but the transform writes decimal"),
            "{err}"
        );
    }

    #[test]
    fn names_a_missing_column() {
        let mut existing = matching();
        existing[4] = col("price", "decimal", "regular", -1);
        let err = check_table(&settings(), &existing).unwrap_err();
        assert!(err.contains("has no column \"Price\""), "{err}");
    }

    #[test]
    fn refuses_a_different_primary_key() {
        let mut existing = matching();
        existing[1] = col("trade_date", "date", "clustering", 2);
        let err = check_table(&settings(), &existing).unwrap_err();
        assert!(
            err.contains(
                "has PRIMARY KEY ((\"symbol\"), \"trade_time\", \"trade_id\", \"trade_date\")"
            ),
            "{err}"
        );
    }
}
