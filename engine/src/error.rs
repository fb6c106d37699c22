//! The engine's error type. Variants say who is at fault; `Source` and `Sink` errors carry whether
//! retrying can help, so the runtime (not the connector) decides to back off or to stop.
//!
//! Errors keep the error they came from as their [`std::error::Error::source`], and their own
//! message never repeats it (the Rust API guidelines' rule, so a chain prints each cause once).
//! Print an error with [`report`] (or `anyhow`'s `{:#}`) to see the whole chain:
//! `sink cassandra ks.trades: cannot connect to 127.0.0.1:9042: Control connection pool error: …`.

use std::fmt;
use std::path::PathBuf;

use datafusion::error::DataFusionError;

/// Result alias with the engine's [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The error a source or sink failed with, as it came from the library or service client
/// (rdkafka, scylla, hyper, std::io…).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Whether a failure of an outside system may go away by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Transient (a timeout, a server that is down): the runtime retries with backoff.
    Transient,
    /// Permanent (bad credentials, a schema that does not match): the run stops.
    Permanent,
}

/// Everything that can go wrong in the engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The user's configuration is wrong; `what` names the key or file.
    #[error("config: {what}: {message}")]
    Config {
        /// The key, file or flag at fault.
        what: String,
        /// What is wrong and what would have been valid.
        message: String,
    },
    /// A reference data file could not be loaded; the message names the key at fault.
    #[error("reference table {table} from {}: {message}", path.display())]
    Reference {
        /// The table being loaded.
        table: String,
        /// The file it was loaded from.
        path: PathBuf,
        /// What is wrong, naming the key.
        message: String,
    },
    /// A SQL transform failed to plan or run; DataFusion's error is the source.
    #[error("transform {name} ({}): {message}", file.display())]
    Sql {
        /// The transform's name (its file stem).
        name: String,
        /// The transform's file.
        file: PathBuf,
        /// What was being done (planning, running), and what follows from the failure.
        message: String,
        /// DataFusion's error, with the position where it has one.
        #[source]
        source: DataFusionError,
    },
    /// A transform failed on the values of the rows it ran over (an overflow, a failed cast, a
    /// division by zero, a function rejecting a value; see [`crate::transform::is_row_error`]).
    /// The runtime finds the rows that cause it and dead-letters them with this error's
    /// [`report`].
    #[error("transform {name} ({})", file.display())]
    SqlRows {
        /// The transform's name (its file stem).
        name: String,
        /// The transform's file.
        file: PathBuf,
        /// DataFusion's error.
        #[source]
        source: DataFusionError,
    },
    /// A source failed. Build it with [`Error::source_failed`].
    #[error("source {name}: {message}")]
    Source {
        /// The source's name.
        name: String,
        /// What failed.
        message: String,
        /// Whether retrying may help.
        retry: Retry,
        /// The error of the client library or service, when there is one.
        #[source]
        source: Option<BoxError>,
    },
    /// A sink (or a dead-letter output) failed. Build it with [`Error::sink_failed`].
    #[error("sink {name}: {message}")]
    Sink {
        /// The sink's name.
        name: String,
        /// What failed.
        message: String,
        /// Whether retrying may help.
        retry: Retry,
        /// The error of the client library or service, when there is one.
        #[source]
        source: Option<BoxError>,
    },
    /// The checkpoint folder could not be read or written.
    #[error("checkpoint {}: {message}", path.display())]
    Checkpoint {
        /// The file or folder at fault.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// A stateful query's state does not fit it or the query (see [`crate::stateful`]).
    #[error("state: {0}")]
    State(String),
    /// DataFusion or Arrow failed while running a plan.
    #[error("execution")]
    Execution(#[from] DataFusionError),
    /// Arrow failed outside DataFusion.
    #[error("arrow")]
    Arrow(#[from] arrow::error::ArrowError),
    /// A file could not be read or written.
    #[error("io on {}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The run was asked to stop while an operation was still failing transiently; the batch
    /// stays uncommitted. The last failure is the source.
    #[error(
        "stopped: {what} still failing at shutdown; the batch stays uncommitted and is replayed on restart"
    )]
    Stopped {
        /// The operation that was being retried (`sink write`, `source commit`…).
        what: String,
        /// Its last failure.
        #[source]
        source: Box<Error>,
    },
    /// A run ended (an available-now run that finished, or an exhausted source) having received
    /// records and used none of them: every one was dead-lettered and no row was written. The
    /// dead letters and the source's position are committed first, so nothing is lost and a
    /// restart does not meet these records again. Permanent: the input does not fit the declared
    /// table, or the source is not what the config says.
    #[error(
        "the run received {received} records and could use none of them; the first was \
         dead-lettered because: {first_reason} (see the {dead_letters})"
    )]
    NothingUsable {
        /// Records the run received (all dead-lettered).
        received: u64,
        /// The first dead letter's reason.
        first_reason: String,
        /// The dead-letter output, as it describes itself (`dead letters in data/dead_letters`).
        dead_letters: String,
    },
    /// A bug in coinstream: an invariant did not hold.
    #[error("internal error (a bug in coinstream): {0}")]
    Internal(String),
}

impl Error {
    /// Whether the runtime should retry the operation that failed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::Source {
                retry: Retry::Transient,
                ..
            } | Error::Sink {
                retry: Retry::Transient,
                ..
            }
        )
    }

    /// Shorthand for a [`Error::Config`].
    pub fn config(what: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Config {
            what: what.into(),
            message: message.into(),
        }
    }

    /// Shorthand for an [`Error::Io`].
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// A [`Error::Source`] without a cause; add one with [`Error::caused_by`].
    pub fn source_failed(
        name: impl Into<String>,
        message: impl Into<String>,
        retry: Retry,
    ) -> Self {
        Error::Source {
            name: name.into(),
            message: message.into(),
            retry,
            source: None,
        }
    }

    /// A [`Error::Sink`] without a cause; add one with [`Error::caused_by`].
    pub fn sink_failed(name: impl Into<String>, message: impl Into<String>, retry: Retry) -> Self {
        Error::Sink {
            name: name.into(),
            message: message.into(),
            retry,
            source: None,
        }
    }

    /// Sets the cause of a [`Error::Source`] or [`Error::Sink`] (the client library's error);
    /// other variants keep their own and are returned unchanged.
    pub fn caused_by(mut self, cause: impl Into<BoxError>) -> Self {
        if let Error::Source { source, .. } | Error::Sink { source, .. } = &mut self {
            *source = Some(cause.into());
        }
        self
    }

    /// This error and every cause under it, for logs and messages: see [`report`].
    pub fn report(&self) -> Report<'_> {
        report(self)
    }
}

/// Displays an error followed by each of its causes, `": "`-separated (what `anyhow` prints with
/// `{:#}`, and what `std::error::Report` will print). Use it wherever an error becomes text: a
/// log field (`error = %report(&e)`), a dead letter's reason, the binary's last word.
///
/// Many libraries (DataFusion, rdkafka, scylla) put their cause's message in their own as well as
/// returning it from `source()`; a cause whose message the text printed just before already
/// contains is skipped, so each message appears once. Some embed the cause's `Debug` form instead
/// (DataFusion's `SQL error: ParserError("Expected: …")` wraps sqlparser's `sql parser error:
/// Expected: …`, with its quotes escaped): that `Debug` form is replaced by the cause's message
/// (`SQL error: sql parser error: Expected: …`), so no Rust debug dump reaches a user.
pub fn report<'a>(error: &'a (dyn std::error::Error + 'static)) -> Report<'a> {
    Report(error)
}

/// See [`report`].
#[derive(Debug, Clone, Copy)]
pub struct Report<'a>(&'a (dyn std::error::Error + 'static));

impl fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = self.0.to_string();
        // The message printed last: the one a cause may repeat.
        let mut shown = text.clone();
        let mut cause = self.0.source();
        while let Some(c) = cause {
            let message = c.to_string();
            let debug = format!("{c:?}");
            if shown.contains(&debug) {
                text = text.replace(&debug, &message);
                shown = shown.replace(&debug, &message);
            } else if !shown.contains(message.as_str()) {
                text.push_str(": ");
                text.push_str(&message);
                shown = message;
            }
            cause = c.source();
        }
        f.write_str(&text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_prints_every_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        let outer = Error::sink_failed(
            "cassandra ks.t",
            "cannot connect to 127.0.0.1:9042",
            Retry::Transient,
        )
        .caused_by(io);
        assert_eq!(
            outer.to_string(),
            "sink cassandra ks.t: cannot connect to 127.0.0.1:9042"
        );
        let stopped = Error::Stopped {
            what: "sink write".into(),
            source: Box::new(outer),
        };
        assert_eq!(
            report(&stopped).to_string(),
            "stopped: sink write still failing at shutdown; the batch stays uncommitted and is \
             replayed on restart: sink cassandra ks.t: cannot connect to 127.0.0.1:9042: \
             connection refused"
        );
    }

    #[test]
    fn a_cause_is_kept_only_by_source_and_sink_errors() {
        let e = Error::source_failed("kafka t", "poll failed", Retry::Transient)
            .caused_by("broker down");
        assert!(e.is_transient());
        assert_eq!(
            report(&e).to_string(),
            "source kafka t: poll failed: broker down"
        );
        let e = Error::config("sink.ttl_secs", "must be at least 1").caused_by("ignored");
        assert!(std::error::Error::source(&e).is_none());
    }

    #[test]
    fn report_skips_a_cause_its_wrapper_already_printed() {
        // DataFusion prints the Arrow error it wraps and returns it as its source too.
        let df = DataFusionError::ArrowError(
            Box::new(arrow::error::ArrowError::ArithmeticOverflow(
                "Overflow happened".into(),
            )),
            None,
        );
        let e = Error::SqlRows {
            name: "profit".into(),
            file: "sql/profit.sql".into(),
            source: df,
        };
        assert_eq!(
            report(&e).to_string(),
            "transform profit (sql/profit.sql): Arrow error: Arithmetic overflow: Overflow happened"
        );
    }

    #[test]
    fn report_shows_a_parser_error_datafusion_printed_in_debug_form_as_its_message() {
        use datafusion::sql::sqlparser::dialect::GenericDialect;
        use datafusion::sql::sqlparser::parser::Parser;
        let parse = Parser::parse_sql(&GenericDialect {}, "SELECT FROM WHERE \"x\" 'y'");
        let df = DataFusionError::from(parse.unwrap_err());
        let e = Error::Sql {
            name: "profit".into(),
            file: "sql/profit.sql".into(),
            message: "does not plan".into(),
            source: df,
        };
        let text = report(&e).to_string();
        assert!(
            text.contains("SQL error: sql parser error: Expected"),
            "{text}"
        );
        assert!(!text.contains("ParserError"), "no Rust debug form: {text}");
        assert_eq!(text.matches("Expected").count(), 1, "{text}");
    }
}
