//! Reference tables: small JSON files loaded once into memory with a declared schema. The file is
//! one JSON object keyed by id; each value is either an object of the declared columns
//! (`{"BTC-USD": {"buy_price": "…"}}`) or a single scalar (`{"BTC-USD": "Bitcoin"}`). The key
//! becomes the table's first column. A table declared in DDL (`engine::schema`) declares the key
//! column first, `VARCHAR NOT NULL` ([`ReferenceTable::declared`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use arrow::datatypes::{Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;

use crate::decimal::DecimalPolicy;
use crate::decode::RecordDecoder;
use crate::error::{Error, Result};
use crate::position::RecordPosition;
use crate::source::RawRecord;

/// How to load one reference table.
#[derive(Debug, Clone)]
pub struct ReferenceTable {
    /// The table name SQL uses.
    pub name: String,
    /// The JSON file.
    pub path: PathBuf,
    /// The name of the column the object's keys go into.
    pub key_column: String,
    /// The declared value columns (one column if values are scalars).
    pub columns: SchemaRef,
    /// Values are scalars (one column) rather than objects.
    pub scalar_values: bool,
}

impl ReferenceTable {
    /// The reference table whose whole schema (key column included) is `table`, as declared in
    /// DDL: the key column `key` must be its first column, `VARCHAR NOT NULL`. With exactly one
    /// column besides the key, the file maps each key to a scalar (`{"BTC-USD": "Bitcoin"}`);
    /// with more, to an object of the columns.
    ///
    /// # Errors
    /// [`Error::Config`] (`what` is the table's name) if the key column is not the first column,
    /// is not `VARCHAR NOT NULL`, or is the only column.
    pub fn declared(name: String, path: PathBuf, key: &str, table: &Schema) -> Result<Self> {
        let fields = table.fields();
        let key_ok = fields.first().is_some_and(|f| {
            f.name() == key
                && f.data_type() == &arrow::datatypes::DataType::Utf8
                && !f.is_nullable()
        });
        if !key_ok {
            return Err(Error::config(
                &name,
                format!("the file's keys go into column {key}: declare it first, VARCHAR NOT NULL"),
            ));
        }
        let values: Vec<_> = fields.iter().skip(1).cloned().collect();
        if values.is_empty() {
            return Err(Error::config(
                &name,
                format!("declare at least one column besides the key {key}"),
            ));
        }
        Ok(Self {
            scalar_values: values.len() == 1,
            name,
            path,
            key_column: key.to_owned(),
            columns: Arc::new(Schema::new(values)),
        })
    }

    /// The table's full schema: the key column, then the declared columns.
    pub fn schema(&self) -> SchemaRef {
        let mut fields = vec![Arc::new(Field::new(
            &self.key_column,
            arrow::datatypes::DataType::Utf8,
            false,
        ))];
        fields.extend(self.columns.fields().iter().cloned());
        Arc::new(Schema::new(fields))
    }

    /// Reads and decodes the file. Errors name the file and the key at fault.
    pub fn load(&self) -> Result<RecordBatch> {
        let fail = |message: String| Error::Reference {
            table: self.name.clone(),
            path: self.path.clone(),
            message,
        };
        let text = std::fs::read(&self.path).map_err(|e| fail(format!("cannot read: {e}")))?;
        let root: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&text)
            .map_err(|e| fail(format!("not a JSON object keyed by id: {e}")))?;
        if self.scalar_values && self.columns.fields().len() != 1 {
            return Err(fail(
                "a table of scalar values declares exactly one value column".into(),
            ));
        }
        let mut keys = Vec::with_capacity(root.len());
        let mut records = Vec::with_capacity(root.len());
        for (i, (key, value)) in root.into_iter().enumerate() {
            let mut row = if self.scalar_values {
                let mut row = serde_json::Map::new();
                row.insert(self.columns.field(0).name().clone(), value);
                row
            } else {
                match value {
                    serde_json::Value::Object(row) => row,
                    other => {
                        return Err(fail(format!(
                            "key {key:?}: expected an object, found {other}"
                        )));
                    }
                }
            };
            if row.contains_key(&self.key_column) {
                return Err(fail(format!(
                    "key {key:?}: field {} clashes with the key column",
                    self.key_column
                )));
            }
            row.insert(
                self.key_column.clone(),
                serde_json::Value::String(key.clone()),
            );
            records.push(RawRecord {
                position: RecordPosition::new(0, i as i64),
                payload: serde_json::to_vec(&row).map_err(|e| Error::Internal(e.to_string()))?,
                rejected: None,
                frame: None,
                received_at: SystemTime::now(),
            });
            keys.push(key);
        }
        // A value with more decimals than its declared column is a mistake in the declaration,
        // not a value to change quietly: refuse it, naming the key, the column and the value.
        let decoded = RecordDecoder::new(self.schema())
            .with_decimal_policy(DecimalPolicy::Reject)
            .decode(&records)?;
        if let Some(bad) = decoded.dead_letters.first() {
            let key = &keys[bad.record_position.offset as usize];
            return Err(fail(format!("key {key:?}: {}", bad.reason)));
        }
        Ok(decoded.batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::ddl_table;

    /// Loads `body` (the JSON file's text) as table `portfolio` keyed by `symbol`, with `columns`
    /// (DDL column definitions) besides; the error as text names the file `ref.json`.
    fn load(body: &str, scalar: bool, columns: &str) -> std::result::Result<RecordBatch, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ref.json");
        std::fs::write(&path, body).unwrap();
        let ddl = format!("CREATE TABLE portfolio (symbol VARCHAR NOT NULL, {columns})");
        let schema = ddl_table("t.sql", &ddl, "portfolio").unwrap();
        let t = ReferenceTable::declared("portfolio".into(), path, "symbol", &schema).unwrap();
        assert_eq!(t.scalar_values, scalar);
        assert_eq!(t.schema(), schema, "the declared table is the loaded one");
        t.load().map_err(|e| e.to_string())
    }

    #[test]
    fn declared_tables_have_their_key_first_as_varchar_not_null() {
        for ddl in [
            "CREATE TABLE r (name VARCHAR NOT NULL, symbol VARCHAR NOT NULL)",
            "CREATE TABLE r (symbol VARCHAR, name VARCHAR NOT NULL)",
            "CREATE TABLE r (symbol BIGINT NOT NULL, name VARCHAR NOT NULL)",
        ] {
            let schema = ddl_table("t.sql", ddl, "r").unwrap();
            let err = ReferenceTable::declared("r".into(), "r.json".into(), "symbol", &schema)
                .unwrap_err()
                .to_string();
            assert_eq!(
                err,
                "config: r: the file's keys go into column symbol: declare it first, VARCHAR NOT NULL"
            );
        }
        let schema = ddl_table("t.sql", "CREATE TABLE r (symbol VARCHAR NOT NULL)", "r").unwrap();
        let err = ReferenceTable::declared("r".into(), "r.json".into(), "symbol", &schema)
            .unwrap_err()
            .to_string();
        assert!(err.contains("at least one column besides the key"), "{err}");
    }

    #[test]
    fn loads_objects_keyed_by_id() {
        let batch = load(
            r#"{"BTC-USD":{"coin_name":"Bitcoin","buy_price":"60000.5","size":"0.25","buy_time":1700000000000}}"#,
            false,
            "coin_name VARCHAR NOT NULL, buy_price DECIMAL(28,10) NOT NULL, \
             size DECIMAL(28,10) NOT NULL, buy_time TIMESTAMP(3) WITH TIME ZONE NOT NULL",
        )
        .unwrap();
        let text = arrow::util::pretty::pretty_format_batches(&[batch])
            .unwrap()
            .to_string();
        assert!(
            text.contains(
                "| BTC-USD | Bitcoin   | 60000.5000000000 | 0.2500000000 | 2023-11-14T22:13:20Z |"
            ),
            "{text}"
        );
    }

    #[test]
    fn loads_scalar_maps() {
        let batch = load(
            r#"{"BTC-USD":"Bitcoin","ETH-USD":"Ethereum"}"#,
            true,
            "coin_name VARCHAR NOT NULL",
        );
        assert_eq!(batch.unwrap().num_rows(), 2);
    }

    #[test]
    fn refuses_bad_values_naming_file_key_column_and_value() {
        const PRICE_AND_SIZE: &str = "buy_price DECIMAL(28,10) NOT NULL, size DECIMAL(28,10)";
        for (body, expected) in [
            (
                r#"{"BTC-USD":{"buy_price":"60000.5"},"ADA-USD":{"buy_price":"0.742100000051"}}"#,
                r#"key "ADA-USD": column buy_price: "0.742100000051" has non-zero digits beyond the scale 10"#,
            ),
            (
                r#"{"BTC-USD":{"buy_price":"1"},"ETH-USD":{"buy_price":"lots"}}"#,
                r#"key "ETH-USD""#,
            ),
            (
                r#"{"BTC-USD":{"size":"1"}}"#,
                r#"key "BTC-USD": missing required field buy_price"#,
            ),
            (r#"["BTC-USD"]"#, "not a JSON object keyed by id"),
        ] {
            let err = load(body, false, PRICE_AND_SIZE).unwrap_err();
            assert!(err.contains(expected), "{body}: {err}");
            assert!(err.contains("ref.json"), "{body}: {err}");
        }
    }
}
