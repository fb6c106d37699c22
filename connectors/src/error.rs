//! The connectors' error: a failure of a client library (rdkafka, scylla, hyper), kept as the
//! `#[source]`, with what was being done and whether retrying can help. It becomes the engine's
//! [`engine::Error::Source`] or [`engine::Error::Sink`] at the trait boundary
//! ([`Error::at_source`], [`Error::at_sink`]), where the runtime reads the retry class and
//! applies the one backoff policy.

use engine::Retry;
use rdkafka::error::KafkaError;

use crate::cassandra::CassandraError;
use crate::common::http::HttpError;

/// Result alias with the connectors' [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A client library failed. The message says what was being done; the library's error is the
/// source (print the chain with [`engine::report`]).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Kafka (rdkafka) failed.
    #[error("{context}")]
    Kafka {
        /// What was being done (`message not delivered`, `flush failed`…).
        context: String,
        /// Whether retrying may help (decided by the caller, which knows the operation).
        retry: Retry,
        /// rdkafka's error.
        #[source]
        source: KafkaError,
    },
    /// Cassandra (the scylla driver) failed.
    #[error("{context}")]
    Cassandra {
        /// What was being done.
        context: String,
        /// The driver's error; its retry class comes from [`CassandraError::retry`].
        #[source]
        source: CassandraError,
    },
    /// An HTTP request got no response.
    #[error("{context}")]
    Http {
        /// What was being done.
        context: String,
        /// The client's error; its retry class comes from [`HttpError::retry`].
        #[source]
        source: HttpError,
    },
}

impl Error {
    /// A Kafka failure with its retry class.
    pub fn kafka(context: impl Into<String>, retry: Retry, source: KafkaError) -> Self {
        Error::Kafka {
            context: context.into(),
            retry,
            source,
        }
    }

    /// A Cassandra failure, classified by the driver's error.
    pub fn cassandra(context: impl Into<String>, source: impl Into<CassandraError>) -> Self {
        Error::Cassandra {
            context: context.into(),
            source: source.into(),
        }
    }

    /// An HTTP failure, classified by the client's error.
    pub fn http(context: impl Into<String>, source: HttpError) -> Self {
        Error::Http {
            context: context.into(),
            source,
        }
    }

    /// Whether retrying may help.
    pub fn retry(&self) -> Retry {
        match self {
            Error::Kafka { retry, .. } => *retry,
            Error::Cassandra { source, .. } => source.retry(),
            Error::Http { source, .. } => source.retry(),
        }
    }

    /// The engine's error for source `name`: the message is the context, the library's error
    /// the source, the retry class kept.
    pub fn at_source(self, name: impl Into<String>) -> engine::Error {
        let retry = self.retry();
        let (context, source) = self.into_parts();
        engine::Error::source_failed(name, context, retry).caused_by(source)
    }

    /// The engine's error for sink (or dead-letter output) `name`; see [`Error::at_source`].
    pub fn at_sink(self, name: impl Into<String>) -> engine::Error {
        let retry = self.retry();
        let (context, source) = self.into_parts();
        engine::Error::sink_failed(name, context, retry).caused_by(source)
    }

    fn into_parts(self) -> (String, engine::BoxError) {
        match self {
            Error::Kafka {
                context, source, ..
            } => (context, Box::new(source)),
            Error::Cassandra { context, source } => (context, Box::new(source)),
            Error::Http { context, source } => (context, Box::new(source)),
        }
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::error::RDKafkaErrorCode;

    use super::*;

    #[test]
    fn keeps_the_library_error_as_the_source_of_the_engine_error() {
        let e = Error::kafka(
            "message not delivered",
            Retry::Transient,
            KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut),
        )
        .at_sink("kafka trades");
        assert!(e.is_transient());
        assert_eq!(e.to_string(), "sink kafka trades: message not delivered");
        let source = std::error::Error::source(&e).expect("the rdkafka error");
        assert!(source.downcast_ref::<KafkaError>().is_some(), "{source:?}");
        assert!(
            engine::report(&e)
                .to_string()
                .starts_with("sink kafka trades: message not delivered: Message production error: MessageTimedOut"),
            "{}",
            engine::report(&e)
        );
    }

    #[test]
    fn a_permanent_kafka_failure_stays_permanent_at_the_source() {
        let e = Error::kafka(
            "cannot subscribe",
            Retry::Permanent,
            KafkaError::Subscription("bad pattern".into()),
        )
        .at_source("kafka trades");
        assert!(!e.is_transient());
        assert!(matches!(e, engine::Error::Source { .. }), "{e:?}");
    }
}
