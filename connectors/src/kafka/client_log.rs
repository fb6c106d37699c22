//! What the producer's librdkafka client logs. librdkafka reports a broker it cannot reach on
//! every reconnect attempt (a `FAIL` log line, then `BrokerTransportFailure` and `AllBrokersDown`
//! global errors), every 50 ms or so with nothing listening: dozens of ERROR lines a second. A
//! long-running sink keeps them visible (an operator must act on them); a short-lived client
//! such as `coinstream generate --topic` routes them to debug instead, as its own error (which
//! carries the last such failure, see [`ProducerContext::last_transport_failure`]) says the same
//! once. Every other log line and error keeps its level in both.

use std::sync::{Arc, Mutex};

use rdkafka::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use super::security::SecurityWatch;

/// Where a producer's broker connection failures go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportFailures {
    /// At librdkafka's own level (ERROR), each time: for long-running clients.
    Logged,
    /// At debug, remembered for the client's own error: for a short-lived command.
    Debug,
}

/// The client context of [`super::producer::TopicProducer`] (and its admin client): routes
/// connection failures as [`TransportFailures`] says, and lets its [`SecurityWatch`] keep the
/// failures retrying cannot fix (a refused login, a failed TLS handshake).
#[derive(Clone)]
pub struct ProducerContext {
    failures: TransportFailures,
    /// What retrying cannot fix, for the producer's errors.
    pub watch: SecurityWatch,
    /// The last connection failure librdkafka reported (`127.0.0.1:1/bootstrap: Connect to
    /// ipv4#127.0.0.1:1 failed: Connection refused (after 0ms in state CONNECT)`).
    last: Arc<Mutex<Option<String>>>,
}

impl ProducerContext {
    /// A context routing connection failures as `failures` says, watched by `watch`.
    pub fn new(failures: TransportFailures, watch: SecurityWatch) -> Self {
        Self {
            failures,
            watch,
            last: Arc::default(),
        }
    }

    /// The last broker connection failure librdkafka reported, if any.
    pub fn last_transport_failure(&self) -> Option<String> {
        self.last.lock().ok()?.clone()
    }

    fn remember(&self, failure: &str) {
        // librdkafka's trailer (`(after 0ms in state CONNECT, 1 identical error(s) suppressed)`)
        // says nothing a user can act on.
        let failure = match failure.find(" (after ") {
            Some(at) if failure.ends_with(')') => &failure[..at],
            _ => failure,
        };
        if let Ok(mut last) = self.last.lock() {
            *last = Some(failure.to_owned());
        }
    }
}

/// A failure to reach a broker (refused, unresolvable, timed out, TLS or SASL handshake
/// failed), as librdkafka reports it on each attempt.
fn is_transport_error(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::BrokerTransportFailure
                | RDKafkaErrorCode::AllBrokersDown
                | RDKafkaErrorCode::Resolve
        )
    )
}

impl ClientContext for ProducerContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        // librdkafka's facility for a failed broker connection (it also says why: refused,
        // resolution, TLS, SASL).
        if fac == "FAIL" {
            self.remember(log_message);
            if self.failures == TransportFailures::Debug {
                tracing::debug!(target: "librdkafka", "librdkafka: {fac} {log_message}");
                return;
            }
        }
        self.watch.log(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if is_transport_error(&error) {
            if error.rdkafka_error_code() != Some(RDKafkaErrorCode::AllBrokersDown) {
                self.remember(reason);
            }
            if self.failures == TransportFailures::Debug {
                tracing::debug!("librdkafka: {error}: {reason}");
                return;
            }
        }
        self.watch.observe(&error, reason);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REFUSED: &str = "127.0.0.1:1/bootstrap: Connect to ipv4#127.0.0.1:1 failed: \
                           Connection refused (after 0ms in state CONNECT, 1 identical error(s) \
                           suppressed)";

    #[test]
    fn remembers_the_last_connection_failure_without_librdkafkas_trailer() {
        for failures in [TransportFailures::Logged, TransportFailures::Debug] {
            let context = ProducerContext::new(failures, SecurityWatch::new(None));
            assert_eq!(context.last_transport_failure(), None);
            context.log(RDKafkaLogLevel::Error, "FAIL", REFUSED);
            let expected =
                "127.0.0.1:1/bootstrap: Connect to ipv4#127.0.0.1:1 failed: Connection refused";
            assert_eq!(context.last_transport_failure().as_deref(), Some(expected));
            // "1/1 brokers are down" says less than the failure before it.
            context.error(
                KafkaError::Global(RDKafkaErrorCode::AllBrokersDown),
                "1/1 brokers are down",
            );
            assert_eq!(context.last_transport_failure().as_deref(), Some(expected));
            context.error(
                KafkaError::Global(RDKafkaErrorCode::Resolve),
                "nowhere:9092/bootstrap: Failed to resolve 'nowhere:9092'",
            );
            assert_eq!(
                context.last_transport_failure().as_deref(),
                Some("nowhere:9092/bootstrap: Failed to resolve 'nowhere:9092'")
            );
        }
    }

    #[test]
    fn other_errors_are_not_taken_for_connection_failures() {
        let context = ProducerContext::new(TransportFailures::Debug, SecurityWatch::new(None));
        context.error(
            KafkaError::Global(RDKafkaErrorCode::Authentication),
            "SASL authentication error",
        );
        context.log(
            RDKafkaLogLevel::Warning,
            "CONFWARN",
            "a property is ignored",
        );
        assert_eq!(context.last_transport_failure(), None);
    }
}
