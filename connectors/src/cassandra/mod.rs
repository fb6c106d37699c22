//! `[sink] type = "cassandra"`: the transform's rows as rows of an Apache Cassandra table, over the
//! CQL native protocol with the `scylla` driver (which speaks to Cassandra as well as ScyllaDB).
//!
//! `table` is the same table read back for `coinstream query`: a DataFusion table whose scans
//! push partition and clustering key filters into CQL (`pushdown`), read with paged SELECTs.
//!
//! Docs: CQL <https://cassandra.apache.org/doc/latest/cassandra/developing/cql/index.html>, the
//! driver <https://rust-driver.docs.scylladb.com/stable/>.
//!
//! What the sink does:
//! - `healthcheck` (and the first `write` if no healthcheck ran) connects, creates the keyspace
//!   and table when missing (`IF NOT EXISTS`), checks that an existing table has every output
//!   column with the right type and the configured primary key (a permanent error naming the
//!   column otherwise), and prepares the one INSERT.
//! - `write` groups the micro-batch's rows by partition key and sends each partition's rows as
//!   UNLOGGED batches of up to `batch_size_rows` (default 128; 1 sends one INSERT per row), at
//!   most `max_in_flight` requests at once, token-aware: each goes to a replica of its partition
//!   (the driver's default policy; `local_datacenter` confines coordinators to one DC). The
//!   driver's default retry policy sends an INSERT (or a batch) once more, at once, to another
//!   node when its coordinator was overloaded, unavailable or lost the connection; any other
//!   transient failure fails the batch, and the runtime retries it whole with the engine's
//!   backoff (`sink.rs`'s module docs say why retries live there and not in a loop per INSERT).
//!   `Ok` means every row was acknowledged at the configured consistency level. `max_attempts`
//!   and `retry_backoff_ms` are accepted but no longer used.
//!
//! Column types ([`types`] is the one place that decides them): Boolean → `boolean`, Int8 →
//! `tinyint`, Int16 → `smallint`, Int32 → `int`, Int64 → `bigint`, Float32 → `float`, Float64 →
//! `double`, Decimal128 → `decimal` (exact: the unscaled integer and the scale, no floats),
//! Utf8/LargeUtf8/Utf8View → `text`, Binary/LargeBinary → `blob`, Timestamp (any unit, any
//! zone) → `timestamp`, Date32 → `date`. Anything else is refused when the sink is built.
//!
//! Quirks:
//! - CQL `timestamp` has millisecond precision: microsecond and nanosecond timestamps are floored
//!   to the millisecond. With the default key that loses no trade, since `trade_id` follows
//!   `trade_time` in the clustering key.
//! - An INSERT is an upsert. With the full primary key in every row a replayed batch rewrites the
//!   same rows with the same values, so writes are idempotent; a key that leaves out a column that
//!   tells rows apart makes later rows overwrite earlier ones.
//! - Nulls are sent "unset", not null: no tombstones, and a null never erases a value written
//!   earlier for the same key. A null in a primary key column is refused (permanently), as
//!   Cassandra cannot store it.
//! - Identifiers are always double-quoted, so they are case-sensitive: `Price` and `price` are two
//!   columns. Keyspace and table names must still be 1–48 letters, digits or underscores.
//! - A keyspace that exists keeps its replication; `replication` applies only when the sink
//!   creates it. Extra columns in an existing table are left alone (unset).
//! - When every node is down, INSERTs fail at once (broken connection pools, or no live node to
//!   plan on), so a write fails transiently at once; a node that accepts but does not answer fails requests after
//!   `request_timeout_ms`. The driver reconnects in the background (its pool refill backs off up
//!   to a few seconds), and a later write succeeds on the same session.
//! - TLS is the driver's `rustls-023` feature, on the rustls the other connectors use (see
//!   `tls.rs`); credentials come from named environment variables and stay redacted.

mod config;
mod cql;
mod error;
pub mod pushdown;
mod read;
mod schema;
mod session;
mod sink;
pub mod state;
pub mod table;
mod tls;
mod types;

pub use config::{CassandraConfig, ConsistencyLevel, DEFAULT_NODE, NODES_ENV, Replication};
pub use error::CassandraError;
pub use sink::CassandraSink;
pub use table::{CassandraScan, CassandraTable, register_table};
