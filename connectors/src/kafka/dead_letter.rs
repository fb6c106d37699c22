//! `[dead_letter] type = "kafka"`: each dead letter as one JSON message (its position as the source
//! describes it, the reason, the message as received and, when the source converted it, the
//! converted record: the same JSON as the file output, see [`crate::dead_letter`]) on a topic,
//! keyed by its source `topic/partition` for a Kafka record and by its position's JSON otherwise,
//! compressed with `compression` (default none). A replayed batch sends its dead letters again:
//! this output is at-least-once.
//!
//! What the producer reports for a letter decides what happens next ([`Failure`]):
//! - **Too large**: the topic's `max.message.bytes` (checked by the broker on the compressed batch)
//!   or librdkafka's own `message.max.bytes` (checked before sending) refused it. The letter is sent
//!   again alone and whole, because the broker refuses a whole batch and so fails the small
//!   letters batched with a big one. If it is refused again, it is sent cut down
//!   ([`truncated_dead_letter_json`]): `raw` and `record` keep their first 64 KiB, then 4 KiB, then
//!   256 bytes, `truncated: true` and `raw_bytes` (the original size) mark it, and the position
//!   stays whole. The first form accepted is kept, and the cut is logged at WARN with the
//!   sizes. If even the 256-byte form is refused, the query stops with a permanent error naming the
//!   dead-letter topic, the letter's position and the broker's message: a letter
//!   is never dropped silently, and never retried forever.
//! - **Permanent**: a failure that no retry fixes until a person acts: authorization or
//!   authentication, an invalid topic, a record, timestamp or codec the broker rejects, a policy
//!   violation, a fatal idempotence error, or a topic or partition that does not exist. The last
//!   one is permanent because librdkafka reports it only after the broker has not created the topic
//!   for `topic.metadata.propagation.max.ms` (30 s): with auto-creation on, the first write creates
//!   the topic and this never happens; with it off, nothing in coinstream will create it. The query
//!   stops with [`Retry::Permanent`], naming the topic; create the topic or grant the ACL, then
//!   restart: nothing past the batch was committed.
//! - **Transient**: everything else (timeouts, brokers down, not enough in-sync replicas), which
//!   librdkafka has already retried until `message.timeout.ms`: the runtime retries the batch with
//!   backoff and commits nothing meanwhile.

use std::time::Duration;

use async_trait::async_trait;
use engine::{DeadLetter, DeadLetterSink, Error, Result, Retry};
use futures::future::join_all;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use super::config::KafkaDeadLetterConfig;
use super::security::SecurityWatch;
use crate::dead_letter::{dead_letter_json, truncated_dead_letter_json};

/// How long a dead letter may wait for room in librdkafka's queue.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);

/// The per-field limits, in bytes, of the cut-down forms a letter refused as too large is sent in,
/// largest first.
pub const TRUNCATION_STEPS: [usize; 3] = [64 * 1024, 4 * 1024, 256];

/// What a producer error means for the letter it refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Larger than the broker or the client accepts: send it smaller.
    TooLarge,
    /// No retry helps: stop the query.
    Permanent,
    /// Retrying may help: the runtime retries the batch with backoff.
    Transient,
}

/// Sorts a producer error (see the module docs for why each is where it is).
pub fn classify(error: &KafkaError) -> Failure {
    use RDKafkaErrorCode as C;
    match error.rdkafka_error_code() {
        Some(C::MessageSizeTooLarge | C::MessageBatchTooLarge) => Failure::TooLarge,
        Some(
            C::TopicAuthorizationFailed
            | C::ClusterAuthorizationFailed
            | C::TransactionalIdAuthorizationFailed
            | C::SaslAuthenticationFailed
            | C::UnsupportedSASLMechanism
            | C::Authentication
            | C::InvalidTopic
            | C::UnknownTopic
            | C::UnknownPartition
            | C::UnknownTopicOrPartition
            | C::UnknownTopicId
            | C::InvalidRecord
            | C::InvalidTimestamp
            | C::InvalidRequiredAcks
            | C::UnsupportedForMessageFormat
            | C::UnsupportedCompressionType
            | C::UnsupportedVersion
            | C::PolicyViolation
            | C::InvalidArgument
            | C::Fatal
            | C::GaplessGuarantee
            | C::ProducerFenced
            | C::Fenced,
        ) => Failure::Permanent,
        _ => Failure::Transient,
    }
}

/// The Kafka dead-letter output.
pub struct KafkaDeadLetterSink {
    config: KafkaDeadLetterConfig,
    producer: FutureProducer<SecurityWatch>,
    watch: SecurityWatch,
}

impl KafkaDeadLetterSink {
    /// Builds the producer (idempotent, acks from all in-sync replicas, the configured codec).
    pub fn new(config: KafkaDeadLetterConfig) -> Result<Self> {
        config.validate()?;
        let brokers = config
            .brokers
            .clone()
            .unwrap_or_else(super::default_brokers);
        let defaults = [("linger.ms", "5"), config.compression.property()];
        let security = super::security::resolve("dead_letter", config.security.as_ref())?;
        let watch = SecurityWatch::new(security.as_ref());
        let producer =
            super::client_config(&brokers, &defaults, &config.properties, security.as_ref())
                .set("enable.idempotence", "true")
                .create_with_context(watch.clone())
                .map_err(|e| {
                    Error::config(
                        "dead_letter",
                        format!("cannot create the Kafka producer: {e}"),
                    )
                })?;
        Ok(Self {
            config,
            producer,
            watch,
        })
    }

    async fn send(&self, key: &str, body: &str) -> Result<(), KafkaError> {
        self.producer
            .send(
                FutureRecord::to(&self.config.topic).key(key).payload(body),
                DELIVERY_TIMEOUT,
            )
            .await
            .map(drop)
            .map_err(|(e, _)| e)
    }

    /// Sends a letter the topic refused as too large: alone and whole, then cut down step by step.
    async fn send_smaller(&self, letter: &DeadLetter, key: &str, whole: &str) -> Result<()> {
        let mut refused = match self.send(key, whole).await {
            Ok(()) => return Ok(()),
            Err(e) => self.check(letter, e)?,
        };
        for limit in TRUNCATION_STEPS {
            let Some(cut) = truncated_dead_letter_json(letter, limit) else {
                continue;
            };
            let body = cut.to_string();
            match self.send(key, &body).await {
                Ok(()) => {
                    tracing::warn!(dead_letter_topic = %self.config.topic, position = %letter.position,
                        raw_bytes = letter.raw.len(), letter_bytes = whole.len(),
                        sent_bytes = body.len(), max_field_bytes = limit, error = %refused,
                        "A dead letter was too large for the dead-letter topic; it was written truncated.");
                    return Ok(());
                }
                Err(e) => refused = self.check(letter, e)?,
            }
        }
        Err(Error::Sink {
            name: self.description(),
            message: format!(
                "dead-letter topic {} refused the dead letter of {} even cut to {} bytes per field: {refused}",
                self.config.topic,
                letter.position,
                TRUNCATION_STEPS[TRUNCATION_STEPS.len() - 1],
            ),
            retry: Retry::Permanent,
            source: None,
        })
    }

    /// Passes a too-large refusal back to be cut further; any other failure becomes the error.
    fn check(&self, letter: &DeadLetter, error: KafkaError) -> Result<KafkaError> {
        match classify(&error) {
            Failure::TooLarge => Ok(error),
            other => Err(self.failed(letter, &error, other)),
        }
    }

    fn failed(&self, letter: &DeadLetter, error: &KafkaError, failure: Failure) -> Error {
        use RDKafkaErrorCode as C;
        if let Some(fatal) = self.watch.fatal() {
            return Error::Sink {
                name: self.description(),
                message: format!(
                    "dead letter of {} not delivered to topic {}: {fatal}",
                    letter.position, self.config.topic
                ),
                retry: Retry::Permanent,
                source: None,
            };
        }
        let (retry, hint) = match (failure, error.rdkafka_error_code()) {
            (Failure::Transient, _) => (Retry::Transient, ""),
            (_, Some(C::UnknownTopic | C::UnknownTopicOrPartition | C::UnknownPartition)) => (
                Retry::Permanent,
                " (permanent: the topic does not exist and the broker did not create it; create it, then restart)",
            ),
            (
                _,
                Some(
                    C::TopicAuthorizationFailed
                    | C::ClusterAuthorizationFailed
                    | C::TransactionalIdAuthorizationFailed,
                ),
            ) => (
                Retry::Permanent,
                " (permanent: allow coinstream to write to the topic, then restart)",
            ),
            _ => (Retry::Permanent, " (permanent: retrying cannot fix it)"),
        };
        Error::Sink {
            name: self.description(),
            message: format!(
                "dead letter of {} not delivered to topic {}: {error}{hint}",
                letter.position, self.config.topic
            ),
            retry,
            source: None,
        }
    }
}

/// A letter's message key: `topic/partition` for a Kafka record (its letters stay in order per
/// source partition), else its position's JSON.
fn key(letter: &DeadLetter) -> String {
    match (
        letter.position.get("topic").and_then(|t| t.as_str()),
        letter.position.get("partition"),
    ) {
        (Some(topic), Some(partition)) => format!("{topic}/{partition}"),
        _ => letter.position.to_string(),
    }
}

#[async_trait]
impl DeadLetterSink for KafkaDeadLetterSink {
    fn description(&self) -> String {
        format!("kafka dead letters {}", self.config.topic)
    }

    async fn write(&mut self, _batch_id: u64, letters: &[DeadLetter]) -> Result<()> {
        let payloads: Vec<(String, String)> = letters
            .iter()
            .map(|l| (key(l), dead_letter_json(l).to_string()))
            .collect();
        let sent = join_all(payloads.iter().map(|(key, body)| self.send(key, body))).await;
        let mut transient = None;
        let mut too_large = Vec::new();
        for ((letter, payload), result) in letters.iter().zip(&payloads).zip(sent) {
            let Err(e) = result else { continue };
            match classify(&e) {
                Failure::TooLarge => too_large.push((letter, payload)),
                Failure::Permanent => return Err(self.failed(letter, &e, Failure::Permanent)),
                Failure::Transient => {
                    transient.get_or_insert_with(|| self.failed(letter, &e, Failure::Transient));
                }
            }
        }
        // One at a time, so that each is alone in its request.
        for (letter, (key, body)) in too_large {
            self.send_smaller(letter, key, body).await?;
        }
        transient.map_or(Ok(()), Err)
    }

    async fn close(&mut self) -> Result<()> {
        self.producer
            .flush(DELIVERY_TIMEOUT)
            .map_err(|e| Error::Sink {
                name: self.description(),
                message: format!("flush failed: {e}"),
                retry: Retry::Transient,
                source: None,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorts_producer_errors() {
        let produce = |code| KafkaError::MessageProduction(code);
        for (code, failure) in [
            (RDKafkaErrorCode::MessageSizeTooLarge, Failure::TooLarge),
            (RDKafkaErrorCode::MessageBatchTooLarge, Failure::TooLarge),
            (
                RDKafkaErrorCode::TopicAuthorizationFailed,
                Failure::Permanent,
            ),
            (RDKafkaErrorCode::UnknownTopic, Failure::Permanent),
            (RDKafkaErrorCode::InvalidRecord, Failure::Permanent),
            (RDKafkaErrorCode::Fatal, Failure::Permanent),
            (RDKafkaErrorCode::MessageTimedOut, Failure::Transient),
            (RDKafkaErrorCode::AllBrokersDown, Failure::Transient),
            (RDKafkaErrorCode::NotEnoughReplicas, Failure::Transient),
            (RDKafkaErrorCode::QueueFull, Failure::Transient),
        ] {
            assert_eq!(classify(&produce(code)), failure, "{code:?}");
        }
        assert_eq!(classify(&KafkaError::Canceled), Failure::Transient);
    }

    #[test]
    fn letters_are_keyed_by_kafka_partition_or_by_position() {
        let letter = |position| DeadLetter {
            position,
            record_position: engine::RecordPosition::new(0, 5),
            raw: Vec::new(),
            record: None,
            reason: "r".into(),
        };
        let kafka = serde_json::json!({"topic": "trades", "partition": 3, "offset": 5});
        assert_eq!(key(&letter(kafka)), "trades/3");
        let capture = serde_json::json!({"file": "/f.jsonl", "line": 6});
        assert_eq!(key(&letter(capture)), r#"{"file":"/f.jsonl","line":6}"#);
    }

    #[test]
    fn the_smallest_form_fits_a_small_topic() {
        // A letter cut at the last step, with a long reason and a source topic of Kafka's longest
        // name, stays well under 4 KiB (a small but plausible max.message.bytes).
        let letter = DeadLetter {
            position: serde_json::json!({
                "topic": "t".repeat(249),
                "partition": i32::MAX,
                "offset": i64::MAX,
            }),
            record_position: engine::RecordPosition::new(u32::MAX, i64::MAX),
            raw: vec![b'"'; 1_000_000],
            record: Some(vec![0xff; 1_000_000]),
            reason: "r".repeat(100_000),
        };
        let last = TRUNCATION_STEPS[TRUNCATION_STEPS.len() - 1];
        let body = truncated_dead_letter_json(&letter, last)
            .unwrap()
            .to_string();
        assert!(body.len() < 2048, "{} bytes", body.len());
    }
}
