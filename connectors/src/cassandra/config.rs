//! `[sink] type = "cassandra"`: the raw config (what serde reads) and [`Settings`], the validated
//! form whose values cannot be wrong. Validation checks the config against the transform's output
//! schema and reports every problem at once, before any connection opens.

use std::collections::{BTreeMap, BTreeSet};
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::PathBuf;
use std::time::Duration;

use arrow::datatypes::SchemaRef;
use engine::{Error, Result};
use scylla::statement::Consistency;
use serde::Deserialize;

use super::types::{CqlType, quote};

/// The env var the default contact points come from (comma-separated `host:port`).
pub const NODES_ENV: &str = "CASSANDRA_NODES";
/// The contact point when neither the config nor [`NODES_ENV`] names one.
pub const DEFAULT_NODE: &str = "127.0.0.1:9042";
/// Cassandra rejects a TTL above 20 years.
const MAX_TTL_SECS: u32 = 630_720_000;
/// Cassandra limits keyspace and table names to 48 word characters, even quoted.
const MAX_NAME_CHARS: usize = 48;

/// `[sink] type = "cassandra"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CassandraConfig {
    /// Nodes to connect to first (`host:port`); the driver discovers the rest. Default: the
    /// comma-separated list in env `CASSANDRA_NODES`, else `["127.0.0.1:9042"]`.
    #[serde(default = "default_contact_points")]
    pub contact_points: Vec<String>,
    /// The datacenter whose nodes coordinate requests (token-aware within it); must be a datacenter
    /// of the cluster. Default: none (all nodes are local).
    pub local_datacenter: Option<String>,
    /// The NAME of the env var holding the username (never the username itself). Default: none
    /// (no authentication); set together with `password_env`.
    pub username_env: Option<String>,
    /// The NAME of the env var holding the password. Default: none; set together with
    /// `username_env`.
    pub password_env: Option<String>,
    /// Connect over TLS, trusting the PEM CA certificate in this file. Default: none (plain TCP).
    /// This build has no TLS support: setting it is a config error.
    pub tls_ca_cert_path: Option<PathBuf>,
    /// The keyspace, created when missing (case-sensitive). Default `crypto_keyspace`.
    #[serde(default = "default_keyspace")]
    pub keyspace: String,
    /// The table, created when missing from the transform's columns (case-sensitive). Default
    /// `crypto_trades`.
    #[serde(default = "default_table")]
    pub table: String,
    /// The keyspace's replication when the sink creates it (an existing keyspace is left as it is).
    /// Default `{ strategy = "simple", replication_factor = 1 }`.
    #[serde(default)]
    pub replication: Replication,
    /// Partition key columns, in order. Default `["symbol", "trade_date"]`: one partition per
    /// product per day.
    #[serde(default = "default_partition_key")]
    pub partition_key: Vec<String>,
    /// Clustering columns, in order. Default `["trade_time", "trade_id"]`: no trade overwrites
    /// another, and a replayed row overwrites only itself.
    #[serde(default = "default_clustering_key")]
    pub clustering_key: Vec<String>,
    /// Rows expire this many seconds after they are written (at most 630720000, 20 years).
    /// Default: none (rows never expire).
    pub ttl_secs: Option<u32>,
    /// The consistency level of every write. Default `local_quorum`.
    #[serde(default)]
    pub consistency: ConsistencyLevel,
    /// At most this many INSERTs in flight at once. Default 256.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// A request (one INSERT, or one schema statement) that got no answer within this many
    /// milliseconds fails. Default 10000.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Opening a connection fails after this many milliseconds. Default 5000.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Attempts per INSERT on timeouts, unavailable replicas and connection errors, before the
    /// write fails as transient (and the runtime retries the batch). Default 3.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// The pause before an INSERT's second attempt, in milliseconds; it doubles for each further
    /// attempt. Default 100.
    #[serde(default = "default_retry_backoff_ms")]
    pub retry_backoff_ms: u64,
}

/// `replication`: how a keyspace the sink creates is replicated.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "strategy", rename_all = "snake_case", deny_unknown_fields)]
pub enum Replication {
    /// `SimpleStrategy`: one replication factor for the whole cluster (single datacenter).
    Simple {
        /// Copies of each row. Default 1.
        #[serde(default = "default_replication_factor")]
        replication_factor: u32,
    },
    /// `NetworkTopologyStrategy`: copies per datacenter.
    NetworkTopology {
        /// Datacenter name → copies of each row there, e.g. `{ dc1 = 3, dc2 = 2 }`.
        datacenters: BTreeMap<String, u32>,
    },
}

impl Default for Replication {
    fn default() -> Self {
        Replication::Simple {
            replication_factor: default_replication_factor(),
        }
    }
}

/// `consistency`: CQL consistency levels that apply to writes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsistencyLevel {
    /// `ANY` (a hint is enough).
    Any,
    /// `ONE`.
    One,
    /// `TWO`.
    Two,
    /// `THREE`.
    Three,
    /// `QUORUM` across datacenters.
    Quorum,
    /// `ALL` replicas.
    All,
    /// `LOCAL_QUORUM` (the default).
    #[default]
    LocalQuorum,
    /// `EACH_QUORUM`.
    EachQuorum,
    /// `LOCAL_ONE`.
    LocalOne,
}

impl From<ConsistencyLevel> for Consistency {
    fn from(level: ConsistencyLevel) -> Self {
        match level {
            ConsistencyLevel::Any => Consistency::Any,
            ConsistencyLevel::One => Consistency::One,
            ConsistencyLevel::Two => Consistency::Two,
            ConsistencyLevel::Three => Consistency::Three,
            ConsistencyLevel::Quorum => Consistency::Quorum,
            ConsistencyLevel::All => Consistency::All,
            ConsistencyLevel::LocalQuorum => Consistency::LocalQuorum,
            ConsistencyLevel::EachQuorum => Consistency::EachQuorum,
            ConsistencyLevel::LocalOne => Consistency::LocalOne,
        }
    }
}

fn default_contact_points() -> Vec<String> {
    contact_points_from(std::env::var(NODES_ENV).ok().as_deref())
}

fn contact_points_from(env: Option<&str>) -> Vec<String> {
    let nodes: Vec<String> = env
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    if nodes.is_empty() {
        vec![DEFAULT_NODE.to_owned()]
    } else {
        nodes
    }
}

fn default_keyspace() -> String {
    "crypto_keyspace".into()
}

fn default_table() -> String {
    "crypto_trades".into()
}

fn default_replication_factor() -> u32 {
    1
}

fn default_partition_key() -> Vec<String> {
    vec!["symbol".into(), "trade_date".into()]
}

fn default_clustering_key() -> Vec<String> {
    vec!["trade_time".into(), "trade_id".into()]
}

fn default_max_in_flight() -> usize {
    256
}

fn default_request_timeout_ms() -> u64 {
    10_000
}

fn default_connect_timeout_ms() -> u64 {
    5_000
}

fn default_max_attempts() -> u32 {
    3
}

fn default_retry_backoff_ms() -> u64 {
    100
}

/// A username and password read from the environment. `Debug` shows neither.
#[derive(Clone)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &"<redacted>")
            .field("password", &"<redacted>")
            .finish()
    }
}

/// A column of the table: the transform's output column and its CQL type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableColumn {
    pub name: String,
    pub cql: CqlType,
}

/// The validated config.
#[derive(Debug, Clone)]
pub struct Settings {
    pub contact_points: Vec<String>,
    pub local_datacenter: Option<String>,
    pub credentials: Option<Credentials>,
    pub keyspace: String,
    pub table: String,
    pub replication: Replication,
    /// The transform's columns, in output order (the INSERT binds them in this order).
    pub columns: Vec<TableColumn>,
    pub partition_key: Vec<String>,
    pub clustering_key: Vec<String>,
    pub ttl_secs: Option<NonZeroU32>,
    pub consistency: Consistency,
    pub max_in_flight: NonZeroUsize,
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    pub max_attempts: NonZeroU32,
    pub retry_backoff: Duration,
}

impl CassandraConfig {
    /// Checks the config against the transform's output `schema`, reading credentials from the
    /// environment. Every problem is reported in one [`Error::Config`].
    pub fn validate(&self, schema: &SchemaRef) -> Result<Settings> {
        self.validate_with_env(schema, |name| std::env::var(name).ok())
    }

    fn validate_with_env(
        &self,
        schema: &SchemaRef,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Settings> {
        let mut problems = Vec::new();
        let mut problem = |key: &str, message: String| problems.push(format!("{key}: {message}"));

        if self.contact_points.is_empty() {
            problem("contact_points", "must name at least one host:port".into());
        }
        if self.local_datacenter.as_deref() == Some("") {
            problem(
                "local_datacenter",
                "must not be empty; omit it instead".into(),
            );
        }
        let credentials = match (&self.username_env, &self.password_env) {
            (None, None) => None,
            (Some(user_var), Some(password_var)) => {
                let mut read = |key: &str, var: &str| {
                    env(var).or_else(|| {
                        problem(key, format!("env var {var} is not set"));
                        None
                    })
                };
                let username = read("username_env", user_var);
                let password = read("password_env", password_var);
                username
                    .zip(password)
                    .map(|(username, password)| Credentials { username, password })
            }
            _ => {
                problem(
                    "username_env",
                    "set both username_env and password_env, or neither".into(),
                );
                None
            }
        };
        if let Some(path) = &self.tls_ca_cert_path {
            problem(
                "tls_ca_cert_path",
                format!(
                    "TLS (CA {}) is not supported by this build: it is compiled without the \
                     scylla driver's TLS feature; remove the key or connect through a TLS proxy",
                    path.display()
                ),
            );
        }
        for (key, name) in [("keyspace", &self.keyspace), ("table", &self.table)] {
            if name.is_empty()
                || name.chars().count() > MAX_NAME_CHARS
                || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            {
                problem(
                    key,
                    format!(
                        "{name:?} is not a valid name: Cassandra allows 1 to {MAX_NAME_CHARS} \
                         letters, digits and underscores"
                    ),
                );
            }
        }
        match &self.replication {
            Replication::Simple { replication_factor } if *replication_factor == 0 => problem(
                "replication.replication_factor",
                "must be at least 1".into(),
            ),
            Replication::NetworkTopology { datacenters } if datacenters.is_empty() => problem(
                "replication.datacenters",
                "name at least one datacenter and its replication factor".into(),
            ),
            Replication::NetworkTopology { datacenters } => {
                for (dc, factor) in datacenters {
                    if *factor == 0 {
                        problem(
                            &format!("replication.datacenters.{dc}"),
                            "must be at least 1".into(),
                        );
                    }
                }
            }
            Replication::Simple { .. } => {}
        }

        let mut columns = Vec::new();
        for field in schema.fields() {
            match CqlType::for_arrow(field.data_type()) {
                Some(cql) => columns.push(TableColumn {
                    name: field.name().clone(),
                    cql,
                }),
                None => problem(
                    "sink",
                    format!(
                        "the transform's column {} has Arrow type {}, which the cassandra sink \
                         cannot store; cast it to one of: {}",
                        quote(field.name()),
                        field.data_type(),
                        CqlType::supported_arrow_types()
                    ),
                ),
            }
        }
        if self.partition_key.is_empty() {
            problem("partition_key", "must name at least one column".into());
        }
        let mut seen = BTreeSet::new();
        for (key, names) in [
            ("partition_key", &self.partition_key),
            ("clustering_key", &self.clustering_key),
        ] {
            for name in names {
                if schema.field_with_name(name).is_err() {
                    let valid: Vec<String> =
                        schema.fields().iter().map(|f| quote(f.name())).collect();
                    problem(
                        key,
                        format!(
                            "column {} is not in the transform's output; valid columns are {}",
                            quote(name),
                            valid.join(", ")
                        ),
                    );
                }
                if !seen.insert(name) {
                    problem(
                        key,
                        format!("column {} appears twice in the primary key", quote(name)),
                    );
                }
            }
        }
        let ttl_secs = match self.ttl_secs {
            None => None,
            Some(0) => {
                problem("ttl_secs", "must be at least 1; omit it for no TTL".into());
                None
            }
            Some(t) if t > MAX_TTL_SECS => {
                problem(
                    "ttl_secs",
                    format!("{t} is above Cassandra's maximum of {MAX_TTL_SECS} (20 years)"),
                );
                None
            }
            Some(t) => NonZeroU32::new(t),
        };
        let max_in_flight = NonZeroUsize::new(self.max_in_flight);
        if max_in_flight.is_none() {
            problem("max_in_flight", "must be at least 1".into());
        }
        let max_attempts = NonZeroU32::new(self.max_attempts);
        if max_attempts.is_none() {
            problem("max_attempts", "must be at least 1".into());
        }
        for (key, ms) in [
            ("request_timeout_ms", self.request_timeout_ms),
            ("connect_timeout_ms", self.connect_timeout_ms),
        ] {
            if ms == 0 {
                problem(key, "must be at least 1".into());
            }
        }

        if !problems.is_empty() {
            return Err(Error::config("sink (cassandra)", problems.join("; ")));
        }
        Ok(Settings {
            contact_points: self.contact_points.clone(),
            local_datacenter: self.local_datacenter.clone(),
            credentials,
            keyspace: self.keyspace.clone(),
            table: self.table.clone(),
            replication: self.replication.clone(),
            columns,
            partition_key: self.partition_key.clone(),
            clustering_key: self.clustering_key.clone(),
            ttl_secs,
            consistency: self.consistency.into(),
            max_in_flight: max_in_flight.unwrap_or(NonZeroUsize::MIN),
            request_timeout: Duration::from_millis(self.request_timeout_ms),
            connect_timeout: Duration::from_millis(self.connect_timeout_ms),
            max_attempts: max_attempts.unwrap_or(NonZeroU32::MIN),
            retry_backoff: Duration::from_millis(self.retry_backoff_ms),
        })
    }
}

impl Settings {
    /// `keyspace.table`, quoted.
    pub fn qualified_table(&self) -> String {
        format!("{}.{}", quote(&self.keyspace), quote(&self.table))
    }

    /// `CREATE KEYSPACE IF NOT EXISTS …` with the configured replication.
    pub fn create_keyspace_cql(&self) -> String {
        let replication = match &self.replication {
            Replication::Simple { replication_factor } => {
                format!("{{'class': 'SimpleStrategy', 'replication_factor': {replication_factor}}}")
            }
            Replication::NetworkTopology { datacenters } => {
                let dcs: Vec<String> = datacenters
                    .iter()
                    .map(|(dc, n)| format!("'{}': {n}", dc.replace('\'', "''")))
                    .collect();
                format!("{{'class': 'NetworkTopologyStrategy', {}}}", dcs.join(", "))
            }
        };
        format!(
            "CREATE KEYSPACE IF NOT EXISTS {} WITH replication = {replication}",
            quote(&self.keyspace)
        )
    }

    /// `CREATE TABLE IF NOT EXISTS …` with the transform's columns and the configured key.
    pub fn create_table_cql(&self) -> String {
        let mut parts: Vec<String> = self
            .columns
            .iter()
            .map(|c| format!("{} {}", quote(&c.name), c.cql.cql_name()))
            .collect();
        let partition: Vec<String> = self.partition_key.iter().map(|c| quote(c)).collect();
        let mut key = vec![format!("({})", partition.join(", "))];
        key.extend(self.clustering_key.iter().map(|c| quote(c)));
        parts.push(format!("PRIMARY KEY ({})", key.join(", ")));
        format!(
            "CREATE TABLE IF NOT EXISTS {} ({})",
            self.qualified_table(),
            parts.join(", ")
        )
    }

    /// The INSERT every row is bound to, its columns in the transform's order.
    pub fn insert_cql(&self) -> String {
        let names: Vec<String> = self.columns.iter().map(|c| quote(&c.name)).collect();
        let markers = vec!["?"; names.len()].join(", ");
        let ttl = self
            .ttl_secs
            .map(|t| format!(" USING TTL {t}"))
            .unwrap_or_default();
        format!(
            "INSERT INTO {} ({}) VALUES ({markers}){ttl}",
            self.qualified_table(),
            names.join(", ")
        )
    }

    /// The index, in [`Settings::columns`], of every primary key column.
    pub fn key_column_indices(&self) -> Vec<usize> {
        self.partition_key
            .iter()
            .chain(&self.clustering_key)
            .filter_map(|k| self.columns.iter().position(|c| &c.name == k))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::datatypes::{DataType, Field, Schema, TimeUnit};

    use super::*;

    fn profit_schema() -> SchemaRef {
        let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
        Arc::new(Schema::new(vec![
            Field::new("symbol", DataType::Utf8, true),
            Field::new("coin_name", DataType::Utf8, true),
            Field::new("trade_id", DataType::Int64, true),
            Field::new("trade_time", ts, true),
            Field::new("trade_date", DataType::Date32, true),
            Field::new("price", DataType::Decimal128(38, 10), true),
            Field::new("size", DataType::Decimal128(38, 10), true),
            Field::new("side", DataType::Utf8, true),
            Field::new("profit", DataType::Decimal128(38, 10), true),
        ]))
    }

    /// Configs as JSON: serde applies the same attributes as for the TOML file.
    fn parse(json: &str) -> std::result::Result<CassandraConfig, String> {
        serde_json::from_str(json).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_give_the_documented_statements() {
        let config = parse(r#"{"contact_points": ["127.0.0.1:9042"]}"#).unwrap();
        let settings = config.validate(&profit_schema()).unwrap();
        assert_eq!(settings.consistency, Consistency::LocalQuorum);
        assert_eq!(settings.max_in_flight.get(), 256);
        assert_eq!(
            settings.create_keyspace_cql(),
            "CREATE KEYSPACE IF NOT EXISTS \"crypto_keyspace\" WITH replication = \
             {'class': 'SimpleStrategy', 'replication_factor': 1}"
        );
        assert_eq!(
            settings.create_table_cql(),
            "CREATE TABLE IF NOT EXISTS \"crypto_keyspace\".\"crypto_trades\" (\"symbol\" text, \
             \"coin_name\" text, \"trade_id\" bigint, \"trade_time\" timestamp, \"trade_date\" date, \
             \"price\" decimal, \"size\" decimal, \"side\" text, \"profit\" decimal, \
             PRIMARY KEY ((\"symbol\", \"trade_date\"), \"trade_time\", \"trade_id\"))"
        );
        assert_eq!(
            settings.insert_cql(),
            "INSERT INTO \"crypto_keyspace\".\"crypto_trades\" (\"symbol\", \"coin_name\", \
             \"trade_id\", \"trade_time\", \"trade_date\", \"price\", \"size\", \"side\", \
             \"profit\") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
        );
        assert_eq!(settings.key_column_indices(), vec![0, 4, 3, 2]);
    }

    #[test]
    fn network_topology_and_ttl() {
        let config = parse(
            r#"{"replication": {"strategy": "network_topology", "datacenters": {"dc1": 3, "dc2": 2}},
                "ttl_secs": 3600, "consistency": "each_quorum"}"#,
        )
        .unwrap();
        let settings = config.validate(&profit_schema()).unwrap();
        assert_eq!(
            settings.create_keyspace_cql(),
            "CREATE KEYSPACE IF NOT EXISTS \"crypto_keyspace\" WITH replication = \
             {'class': 'NetworkTopologyStrategy', 'dc1': 3, 'dc2': 2}"
        );
        assert!(settings.insert_cql().ends_with(" USING TTL 3600"));
        assert_eq!(settings.consistency, Consistency::EachQuorum);
    }

    #[test]
    fn rejects_unknown_config_field() {
        let err = parse(r#"{"ttl": 5}"#).unwrap_err();
        assert!(err.contains("unknown field `ttl`"), "{err}");
        let err = parse(r#"{"replication": {"strategy": "simple", "factor": 2}}"#).unwrap_err();
        assert!(err.contains("unknown field `factor`"), "{err}");
    }

    #[test]
    fn reports_every_problem_at_once() {
        let config = parse(
            r#"{"contact_points": [], "keyspace": "bad-name", "partition_key": ["nope"],
                "clustering_key": ["trade_id", "trade_id"], "ttl_secs": 0, "max_in_flight": 0,
                "tls_ca_cert_path": "ca.pem", "username_env": "U"}"#,
        )
        .unwrap();
        let err = config.validate(&profit_schema()).unwrap_err().to_string();
        for expected in [
            "contact_points: must name at least one",
            "keyspace: \"bad-name\" is not a valid name",
            "partition_key: column \"nope\" is not in the transform's output",
            "clustering_key: column \"trade_id\" appears twice",
            "ttl_secs: must be at least 1",
            "max_in_flight: must be at least 1",
            "tls_ca_cert_path: TLS (CA ca.pem) is not supported by this build",
            "username_env: set both username_env and password_env",
        ] {
            assert!(err.contains(expected), "missing {expected:?} in {err}");
        }
    }

    #[test]
    fn rejects_unsupported_column_types_naming_the_column() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("symbol", DataType::Utf8, false),
            Field::new("trade_date", DataType::Date32, false),
            Field::new("trade_time", DataType::Int64, false),
            Field::new("trade_id", DataType::Int64, false),
            Field::new("Weird", DataType::UInt64, true),
        ]));
        let err = parse("{}")
            .unwrap()
            .validate(&schema)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("column \"Weird\" has Arrow type UInt64"),
            "{err}"
        );
    }

    #[test]
    fn credentials_come_from_env_and_debug_redacts_them() {
        let config = parse(r#"{"username_env": "CS_USER", "password_env": "CS_PASS"}"#).unwrap();
        let env = |name: &str| match name {
            "CS_USER" => Some("alice".to_owned()),
            "CS_PASS" => Some("s3cret-pw".to_owned()),
            _ => None,
        };
        let settings = config.validate_with_env(&profit_schema(), env).unwrap();
        let creds = settings.credentials.as_ref().unwrap();
        assert_eq!(
            (creds.username.as_str(), creds.password.as_str()),
            ("alice", "s3cret-pw")
        );
        let debug = format!("{settings:?}");
        assert!(
            !debug.contains("s3cret-pw") && !debug.contains("alice"),
            "{debug}"
        );

        let err = config
            .validate_with_env(&profit_schema(), |_| None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("env var CS_PASS is not set"), "{err}");
    }

    #[test]
    fn contact_points_default_from_env_list() {
        assert_eq!(contact_points_from(None), vec![DEFAULT_NODE]);
        assert_eq!(
            contact_points_from(Some(" 10.0.0.1:9042, 10.0.0.2:9042 ,")),
            vec!["10.0.0.1:9042", "10.0.0.2:9042"]
        );
    }
}
