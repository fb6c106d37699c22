//! The engine's error type. Variants say who is at fault; `Source` and `Sink` errors carry whether
//! retrying can help, so the runtime (not the connector) decides to back off or to stop.

use std::path::PathBuf;

/// Result alias with the engine's [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

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
    /// A SQL transform failed to plan or run.
    #[error("transform {name} ({}): {message}", file.display())]
    Sql {
        /// The transform's name (its file stem).
        name: String,
        /// The transform's file.
        file: PathBuf,
        /// DataFusion's message, with the position where it has one.
        message: String,
    },
    /// A transform failed on the values of the rows it ran over (an overflow, a failed cast, a
    /// division by zero, a function rejecting a value; see [`crate::transform::is_row_error`]).
    /// The runtime finds the rows that cause it and dead-letters them with this message.
    #[error("transform {name} ({}): {message}", file.display())]
    SqlRows {
        /// The transform's name (its file stem).
        name: String,
        /// The transform's file.
        file: PathBuf,
        /// DataFusion's message.
        message: String,
    },
    /// A source failed.
    #[error("source {name}: {message}")]
    Source {
        /// The source's name.
        name: String,
        /// What failed.
        message: String,
        /// Whether retrying may help.
        retry: Retry,
    },
    /// A sink failed.
    #[error("sink {name}: {message}")]
    Sink {
        /// The sink's name.
        name: String,
        /// What failed.
        message: String,
        /// Whether retrying may help.
        retry: Retry,
    },
    /// The checkpoint folder could not be read or written.
    #[error("checkpoint {}: {message}", path.display())]
    Checkpoint {
        /// The file or folder at fault.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// DataFusion or Arrow failed while running a plan.
    #[error("execution: {0}")]
    Execution(#[from] datafusion::error::DataFusionError),
    /// Arrow failed outside DataFusion.
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    /// A file could not be read or written.
    #[error("io on {}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The run was asked to stop while a batch was still failing; it stays uncommitted.
    #[error("stopped: {0}")]
    Stopped(String),
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
}
