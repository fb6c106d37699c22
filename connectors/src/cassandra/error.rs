//! Which scylla driver errors retrying can fix: the one place that classifies them (as
//! transient or permanent) for the sink, its schema checks and the query table's reads. Retrying itself is the runtime's
//! (whole batches, with the engine's backoff) and the driver's (one request again on another
//! node, without pause); see the sink's module docs.

use engine::Retry;
use scylla::errors::{
    ConnectionError, ConnectionPoolError, ConnectionSetupRequestErrorKind, DbError, ExecutionError,
    MetadataError, NewSessionError, NextRowError, PagerExecutionError, PrepareError,
    RequestAttemptError,
};

/// An error of the scylla driver, as one type (see [`crate::Error::Cassandra`]).
#[derive(Debug, thiserror::Error)]
pub enum CassandraError {
    /// Connecting (the control connection, the first metadata fetch) failed.
    #[error(transparent)]
    NewSession(#[from] NewSessionError),
    /// Preparing a statement failed.
    #[error(transparent)]
    Prepare(#[from] PrepareError),
    /// A statement failed (after the driver's own retry policy gave up).
    #[error(transparent)]
    Execution(#[from] ExecutionError),
    /// A paged read could not start (its first page failed).
    #[error(transparent)]
    Pager(#[from] PagerExecutionError),
    /// A later page of a paged read failed, or its rows could not be read.
    #[error(transparent)]
    NextRow(#[from] NextRowError),
}

impl CassandraError {
    /// Timeouts, unavailable or overloaded replicas, lost connections and nodes that are down are
    /// transient; bad statements, bad data, refused credentials and illegal settings are not.
    pub fn retry(&self) -> Retry {
        match self {
            CassandraError::NewSession(e) => new_session_retry(e),
            CassandraError::Prepare(e) => prepare_retry(e),
            CassandraError::Execution(e) => execution_retry(e),
            CassandraError::Pager(e) => pager_retry(e),
            // A page that failed after the read started: the query is re-run whole, so retrying
            // the read is the caller's call; only rows of an unexpected shape are permanent.
            CassandraError::NextRow(NextRowError::RowDeserializationError(_)) => Retry::Permanent,
            CassandraError::NextRow(_) => Retry::Transient,
        }
    }
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

fn pager_retry(e: &PagerExecutionError) -> Retry {
    match e {
        PagerExecutionError::PrepareError(e) => prepare_retry(e),
        PagerExecutionError::SerializationError(_) => Retry::Permanent,
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
        NewSessionError::MetadataError(MetadataError::ConnectionPoolError(
            ConnectionPoolError::Broken {
                last_connection_error: ConnectionError::IoError(io),
            },
        )) if is_tls_rejection(io) => Retry::Permanent,
        _ => Retry::Transient,
    }
}

/// Whether a connection failed because TLS refused the node's certificate (wrong CA, a name
/// that does not match, expired): the same certificate is presented on every retry. A TLS
/// error of the transport itself (the peer closing mid-handshake) stays transient.
fn is_tls_rejection(io: &std::io::Error) -> bool {
    matches!(
        io.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()),
        Some(
            rustls::Error::InvalidCertificate(_)
                | rustls::Error::NoCertificatesPresented
                | rustls::Error::UnsupportedNameType
                | rustls::Error::PeerIncompatible(_)
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_statements_and_credentials_are_permanent_timeouts_are_not() {
        let db = |e: DbError| {
            CassandraError::from(ExecutionError::LastAttemptError(
                RequestAttemptError::DbError(e, String::new()),
            ))
            .retry()
        };
        assert_eq!(db(DbError::SyntaxError), Retry::Permanent);
        assert_eq!(db(DbError::Unauthorized), Retry::Permanent);
        assert_eq!(db(DbError::Overloaded), Retry::Transient);
        assert_eq!(db(DbError::IsBootstrapping), Retry::Transient);
        assert_eq!(
            CassandraError::from(NewSessionError::EmptyKnownNodesList).retry(),
            Retry::Permanent
        );
        assert_eq!(
            CassandraError::from(ExecutionError::EmptyPlan).retry(),
            Retry::Transient
        );
    }
}
