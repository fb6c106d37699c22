//! `[sink] type = "cassandra"`: the config serde reads (typed: durations, counts of at least 1,
//! defaults in one [`Default`] impl) and [`Settings`], what the sink needs beyond it: the
//! credentials read from the environment, the contact points with their environment fallback, and
//! the table's columns from the transform's output schema. [`CassandraConfig::check`] reports every
//! problem serde cannot see before any connection opens; the CQL text is in `cql.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::PathBuf;
use std::time::Duration;

use arrow::datatypes::SchemaRef;
use engine::Result;
use scylla::statement::Consistency;
use secrecy::SecretString;
use serde::Deserialize;

use super::tls::CassandraTls;
use super::types::{CqlType, quote};
use crate::common::config::{self, Problem, millis, positive_millis};

/// The env var the default contact points come from (comma-separated `host:port`).
pub const NODES_ENV: &str = config::CASSANDRA_NODES_ENV;
/// The contact point when neither the config nor [`NODES_ENV`] names one.
pub const DEFAULT_NODE: &str = config::DEFAULT_CASSANDRA_NODE;
/// Cassandra rejects a TTL above 20 years.
const MAX_TTL_SECS: u32 = 630_720_000;
/// Cassandra limits keyspace and table names to 48 word characters, even quoted.
const MAX_NAME_CHARS: usize = 48;

/// `[sink] type = "cassandra"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CassandraConfig {
    /// Nodes to connect to first (`host:port`); the driver discovers the rest. Default: the
    /// comma-separated list in env `CASSANDRA_NODES`, else `["127.0.0.1:9042"]`.
    pub contact_points: Option<Vec<String>>,
    /// The datacenter whose nodes coordinate requests (token-aware within it); must be a datacenter
    /// of the cluster. Default: none (all nodes are local).
    pub local_datacenter: Option<String>,
    /// The NAME of the env var holding the username (never the username itself). Default: none
    /// (no authentication); set together with `password_env`.
    pub username_env: Option<String>,
    /// The NAME of the env var holding the password. Default: none; set together with
    /// `username_env`.
    pub password_env: Option<String>,
    /// Connect over TLS, trusting only the PEM CA certificate(s) in this file (relative to the
    /// config file). Default: none (plain TCP).
    #[serde(deserialize_with = "config::optional_path")]
    pub tls_ca_cert_path: Option<PathBuf>,
    /// Check that each node's certificate names the address the driver connects to (the IP
    /// address the cluster reports for the node). Default true; the chain is checked either way.
    pub tls_verify_hostname: bool,
    /// PEM client certificate for mutual TLS (relative to the config file); set together with
    /// `tls_client_key_path` and `tls_ca_cert_path`. Default: none.
    #[serde(deserialize_with = "config::optional_path")]
    pub tls_client_cert_path: Option<PathBuf>,
    /// PEM private key (unencrypted, PKCS#8, PKCS#1 or SEC1) of `tls_client_cert_path`.
    #[serde(deserialize_with = "config::optional_path")]
    pub tls_client_key_path: Option<PathBuf>,
    /// The keyspace, created when missing (case-sensitive). Default `crypto_keyspace`.
    pub keyspace: String,
    /// The table, created when missing from the transform's columns (case-sensitive). Default
    /// `crypto_trades`.
    pub table: String,
    /// The keyspace's replication when the sink creates it (an existing keyspace is left as it is).
    /// Default `{ strategy = "simple", replication_factor = 1 }`.
    pub replication: Replication,
    /// Partition key columns, in order. Default `["symbol", "trade_date"]`: one partition per
    /// product per day.
    pub partition_key: Vec<String>,
    /// Clustering columns, in order. Default `["trade_time", "trade_id"]`: no trade overwrites
    /// another, and a replayed row overwrites only itself.
    pub clustering_key: Vec<String>,
    /// Rows expire this many seconds after they are written (1 to 630720000, 20 years).
    /// Default: none (rows never expire).
    pub ttl_secs: Option<Ttl>,
    /// The consistency level of every write. Default `local_quorum`.
    pub consistency: ConsistencyLevel,
    /// At most this many requests (INSERTs, or batches of `batch_size_rows`) in flight at once.
    /// Default 256.
    #[serde(deserialize_with = "config::at_least_one")]
    pub max_in_flight: NonZeroUsize,
    /// Rows of one partition (equal `partition_key` values) sent together as one UNLOGGED batch,
    /// as spark-cassandra-connector's `batch.size.rows` with its default grouping by partition
    /// key: Cassandra applies such a batch as one mutation, so a row costs it a third of what an
    /// INSERT of its own does (bench/results/2026-12-02-cassandra-batches.md). 1 sends each row
    /// as its own INSERT. A batch of one partition is exempt from Cassandra's
    /// `batch_size_warn_threshold` and `batch_size_fail_threshold` (CASSANDRA-10876) but, as one
    /// mutation, must stay under `max_mutation_size` (half of `commitlog_segment_size`, 16 MiB by
    /// default): with rows of more than about 100 KiB, lower this. 1 to 65535. Default 128.
    #[serde(deserialize_with = "config::at_least_one")]
    pub batch_size_rows: NonZeroUsize,
    /// A request (one INSERT, or one schema statement) that got no answer within this long
    /// fails: milliseconds or text such as `"10s"`. Default 10 s.
    #[serde(rename = "request_timeout_ms", deserialize_with = "positive_millis")]
    pub request_timeout: Duration,
    /// Opening a connection fails after this long: milliseconds or text. Default 5 s.
    #[serde(rename = "connect_timeout_ms", deserialize_with = "positive_millis")]
    pub connect_timeout: Duration,
    /// Attempts per INSERT on timeouts, unavailable replicas and connection errors, before the
    /// write fails as transient (and the runtime retries the batch). Default 3.
    #[serde(deserialize_with = "config::at_least_one")]
    pub max_attempts: NonZeroU32,
    /// The pause before an INSERT's second attempt (milliseconds or text); it doubles for each
    /// further attempt. Default 100 ms.
    #[serde(rename = "retry_backoff_ms", deserialize_with = "millis")]
    pub retry_backoff: Duration,
}

impl Default for CassandraConfig {
    fn default() -> Self {
        Self {
            contact_points: None,
            local_datacenter: None,
            username_env: None,
            password_env: None,
            tls_ca_cert_path: None,
            tls_verify_hostname: true,
            tls_client_cert_path: None,
            tls_client_key_path: None,
            keyspace: "crypto_keyspace".into(),
            table: "crypto_trades".into(),
            replication: Replication::default(),
            partition_key: vec!["symbol".into(), "trade_date".into()],
            clustering_key: vec!["trade_time".into(), "trade_id".into()],
            ttl_secs: None,
            consistency: ConsistencyLevel::default(),
            max_in_flight: NonZeroUsize::new(256).unwrap_or(NonZeroUsize::MIN),
            batch_size_rows: NonZeroUsize::new(128).unwrap_or(NonZeroUsize::MIN),
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            max_attempts: NonZeroU32::new(3).unwrap_or(NonZeroU32::MIN),
            retry_backoff: Duration::from_millis(100),
        }
    }
}

/// `ttl_secs`: how long a row lives after it is written, in seconds; at least 1, at most
/// Cassandra's 20 years, so a `Ttl` is always one Cassandra accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ttl(NonZeroU32);

impl Ttl {
    /// The TTL in seconds (1 to 630720000).
    pub fn secs(self) -> u32 {
        self.0.get()
    }
}

impl<'de> Deserialize<'de> for Ttl {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let ttl: NonZeroU32 = config::at_least_one(d)?;
        if ttl.get() > MAX_TTL_SECS {
            return Err(serde::de::Error::custom(format!(
                "{ttl} is above Cassandra's maximum of {MAX_TTL_SECS} (20 years)"
            )));
        }
        Ok(Ttl(ttl))
    }
}

/// `replication`: how a keyspace the sink creates is replicated.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "strategy", rename_all = "snake_case", deny_unknown_fields)]
pub enum Replication {
    /// `SimpleStrategy`: one replication factor for the whole cluster (single datacenter).
    Simple {
        /// Copies of each row. Default 1.
        #[serde(default = "one")]
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
            replication_factor: one(),
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

fn one() -> u32 {
    1
}

/// A username and password read from the environment. `Debug` shows neither; the password stays
/// in its redacting wrapper until it is handed to the driver.
#[derive(Clone)]
pub struct Credentials {
    /// The username.
    pub username: String,
    /// The password.
    pub password: SecretString,
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

/// The config the sink was validated from, plus what it needs beyond it: the contact points and
/// credentials with the environment read, the TLS settings with their files read, the table's
/// columns from the transform's output, and the driver's consistency. `Debug` redacts credentials.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The config as written (keyspace, table, keys, limits, timeouts); every check passed.
    pub config: CassandraConfig,
    /// `contact_points`, else the environment's fallback ([`NODES_ENV`], then [`DEFAULT_NODE`]).
    pub contact_points: Vec<String>,
    pub credentials: Option<Credentials>,
    /// TLS, when `tls_ca_cert_path` is set.
    pub tls: Option<CassandraTls>,
    /// The transform's columns, in output order (the INSERT binds them in this order).
    pub columns: Vec<TableColumn>,
    /// `consistency` as the driver's type.
    pub consistency: Consistency,
}

impl CassandraConfig {
    /// Every problem the config has on its own, reading credentials from the environment; keys
    /// are relative to the section. The loader calls it; [`CassandraConfig::validate`] repeats it
    /// with the output schema's checks.
    pub fn check(&self) -> Vec<Problem> {
        self.check_with_env(|name| std::env::var(name).ok()).2
    }

    /// Checks the config against the transform's output `schema`, reading credentials from the
    /// environment. Every problem is reported in one [`engine::Error::Config`] naming `sink`.
    pub fn validate(&self, schema: &SchemaRef) -> Result<Settings> {
        self.validate_with_env(schema, |name| std::env::var(name).ok())
            .map_err(|problems| Problem::into_error("sink", problems))
    }

    /// The credentials, the TLS settings, and every problem of the config alone.
    fn check_with_env(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> (Option<Credentials>, Option<CassandraTls>, Vec<Problem>) {
        let mut problems = Vec::new();
        let mut problem = |key: &str, message: String| problems.push(Problem::new(key, message));

        if self.contact_points.as_ref().is_some_and(Vec::is_empty) {
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
                    .map(|(username, password)| Credentials {
                        username,
                        password: SecretString::from(password),
                    })
            }
            _ => {
                problem(
                    "username_env",
                    "set both username_env and password_env, or neither".into(),
                );
                None
            }
        };
        let client = match (&self.tls_client_cert_path, &self.tls_client_key_path) {
            (Some(cert), Some(key)) => Some((cert.as_path(), key.as_path())),
            (None, None) => None,
            _ => {
                problem(
                    "tls_client_cert_path",
                    "set both tls_client_cert_path and tls_client_key_path, or neither".into(),
                );
                None
            }
        };
        let tls = match &self.tls_ca_cert_path {
            Some(ca) => match CassandraTls::new(ca, client, self.tls_verify_hostname) {
                Ok(tls) => Some(tls),
                Err(found) => {
                    for (key, message) in found {
                        problem(key, message);
                    }
                    None
                }
            },
            None => {
                if client.is_some() {
                    problem(
                        "tls_client_cert_path",
                        "a client certificate needs TLS: set tls_ca_cert_path too".into(),
                    );
                }
                None
            }
        };
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
        let mut seen = BTreeSet::new();
        for (key, names) in [
            ("partition_key", &self.partition_key),
            ("clustering_key", &self.clustering_key),
        ] {
            for name in names {
                if !seen.insert(name) {
                    problem(
                        key,
                        format!("column {} appears twice in the primary key", quote(name)),
                    );
                }
            }
        }
        if self.partition_key.is_empty() {
            problem("partition_key", "must name at least one column".into());
        }
        // The native protocol counts a batch's statements in 16 bits.
        if self.batch_size_rows.get() > usize::from(u16::MAX) {
            problem(
                "batch_size_rows",
                format!("must be at most {} (the CQL protocol's limit)", u16::MAX),
            );
        }
        (credentials, tls, problems)
    }

    fn validate_with_env(
        &self,
        schema: &SchemaRef,
        env: impl Fn(&str) -> Option<String>,
    ) -> std::result::Result<Settings, Vec<Problem>> {
        let (credentials, tls, mut problems) = self.check_with_env(env);
        let mut problem = |key: &str, message: String| problems.push(Problem::new(key, message));

        let mut columns = Vec::new();
        for field in schema.fields() {
            match CqlType::for_arrow(field.data_type()) {
                Some(cql) => columns.push(TableColumn {
                    name: field.name().clone(),
                    cql,
                }),
                None => problem(
                    "",
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
            }
        }

        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Settings {
            contact_points: self
                .contact_points
                .clone()
                .unwrap_or_else(config::cassandra_nodes),
            credentials,
            tls,
            columns,
            consistency: self.consistency.into(),
            config: self.clone(),
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;

    use arrow::datatypes::{DataType, Field, Schema, TimeUnit};

    use super::*;

    pub(crate) fn profit_schema() -> SchemaRef {
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
    pub(crate) fn parse(json: &str) -> std::result::Result<CassandraConfig, String> {
        serde_json::from_str(json).map_err(|e| e.to_string())
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
                "clustering_key": ["trade_id", "trade_id"],
                "tls_ca_cert_path": "ca.pem", "username_env": "U"}"#,
        )
        .unwrap();
        let alone: Vec<String> = config.check().iter().map(Problem::to_string).collect();
        let err = config.validate(&profit_schema()).unwrap_err().to_string();
        for expected in [
            "contact_points: must name at least one",
            "keyspace: \"bad-name\" is not a valid name",
            "clustering_key: column \"trade_id\" appears twice",
            "tls_ca_cert_path: cannot read ca.pem: ",
            "username_env: set both username_env and password_env",
        ] {
            assert!(err.contains(expected), "missing {expected:?} in {err}");
            assert!(
                alone.iter().any(|p| p.starts_with(expected)),
                "check() misses {expected:?}: {alone:?}"
            );
        }
        // Only the schema check knows the output's columns.
        assert!(
            err.contains("partition_key: column \"nope\" is not in the transform's output"),
            "{err}"
        );
        assert_eq!(alone.len(), 5, "{alone:?}");
    }

    #[test]
    fn counts_durations_and_ttl_are_typed() {
        for (json, expected) in [
            (r#"{"ttl_secs": 0}"#, "must be at least 1"),
            (
                r#"{"ttl_secs": 630720001}"#,
                "above Cassandra's maximum of 630720000",
            ),
            (r#"{"max_in_flight": 0}"#, "must be at least 1"),
            (r#"{"batch_size_rows": 0}"#, "must be at least 1"),
            (r#"{"request_timeout_ms": 0}"#, "must be at least 1"),
        ] {
            let err = parse(json).unwrap_err();
            assert!(err.contains(expected), "{json}: {err}");
        }
        let config =
            parse(r#"{"request_timeout_ms": "2s", "retry_backoff_ms": 50, "ttl_secs": 60}"#)
                .unwrap();
        assert_eq!(config.request_timeout, Duration::from_secs(2));
        assert_eq!(config.retry_backoff, Duration::from_millis(50));
        assert_eq!(config.ttl_secs.map(Ttl::secs), Some(60));
        assert_eq!(config.connect_timeout, Duration::from_secs(5));
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
            (
                creds.username.as_str(),
                secrecy::ExposeSecret::expose_secret(&creds.password)
            ),
            ("alice", "s3cret-pw")
        );
        let debug = format!("{settings:?}");
        assert!(
            !debug.contains("s3cret-pw") && !debug.contains("alice"),
            "{debug}"
        );

        let err = config
            .validate_with_env(&profit_schema(), |_| None)
            .unwrap_err();
        assert!(
            err.contains(&Problem::new("password_env", "env var CS_PASS is not set")),
            "{err:?}"
        );
    }
}
