//! The sink's table: create the keyspace and table when missing (`IF NOT EXISTS`), then read the
//! table's columns back from `system_schema.columns` and check that an existing table takes the
//! transform's rows under the configured primary key (and, for the query table, that it exists).

use engine::{Error, Result, Retry};
use scylla::client::session::Session;

use super::config::Settings;
use super::types::quote;
use crate::Error as ClientError;

/// Creates what is missing and checks what exists; `sink` names the sink in errors. A table
/// that cannot take the rows is a permanent error naming the column or the key.
pub(super) async fn ensure_schema(session: &Session, s: &Settings, sink: &str) -> Result<()> {
    for cql in [s.create_keyspace_cql(), s.create_table_cql()] {
        session
            .query_unpaged(cql.as_str(), ())
            .await
            .map_err(|e| ClientError::cassandra(cql.as_str(), e).at_sink(sink))?;
    }
    let existing = existing_columns(session, s, sink).await?;
    check_table(s, &existing).map_err(|m| Error::sink_failed(sink, m, Retry::Permanent))?;
    tracing::info!(sink, "The keyspace and table are in place.");
    Ok(())
}

/// Checks, without creating anything, that the table exists and holds the transform's columns
/// under the configured key (what the query table reads); `who` names the store in errors.
pub(super) async fn check_existing(session: &Session, s: &Settings, who: &str) -> Result<()> {
    let existing = existing_columns(session, s, who).await?;
    if existing.is_empty() {
        return Err(Error::sink_failed(
            who,
            format!(
                "table {} does not exist yet; run the pipeline first",
                s.qualified_table()
            ),
            Retry::Permanent,
        ));
    }
    check_table(s, &existing).map_err(|m| Error::sink_failed(who, m, Retry::Permanent))
}

async fn existing_columns(
    session: &Session,
    s: &Settings,
    sink: &str,
) -> Result<Vec<ExistingColumn>> {
    const QUERY: &str = "SELECT column_name, type, kind, position FROM system_schema.columns \
                         WHERE keyspace_name = ? AND table_name = ?";
    let result = session
        .query_unpaged(QUERY, (&s.config.keyspace, &s.config.table))
        .await
        .map_err(|e| ClientError::cassandra("cannot read the table's columns", e).at_sink(sink))?;
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
    if partition != s.config.partition_key || clustering != s.config.clustering_key {
        let show = |p: &[String], c: &[String]| {
            let p: Vec<String> = p.iter().map(|n| quote(n)).collect();
            let mut all = vec![format!("({})", p.join(", "))];
            all.extend(c.iter().map(|n| quote(n)));
            format!("PRIMARY KEY ({})", all.join(", "))
        };
        return Err(format!(
            "existing table {table} has {}, but the config asks for {}",
            show(&partition, &clustering),
            show(&s.config.partition_key, &s.config.clustering_key)
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;
    use crate::cassandra::config::CassandraConfig;

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
