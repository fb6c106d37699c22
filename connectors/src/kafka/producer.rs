//! Publishing to Kafka: an idempotent producer that batches (`linger.ms`) and keeps many sends in
//! flight, never flushing per message. Used by the Kafka sink, the dead-letter output and `coinstream generate --topic`.

use std::collections::BTreeMap;
use std::time::Duration;

use engine::{Error, Result, Retry};
use futures::stream::{FuturesUnordered, StreamExt};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use super::client_log::ProducerContext;
pub use super::client_log::TransportFailures;
use super::config::Compression;
use super::dead_letter::{Failure, classify};
use super::security::{KafkaSecurity, SecurityWatch};
use crate::Error as ClientError;

/// How long one message may wait for the broker's acknowledgement (librdkafka retries inside).
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(120);

/// Sends in flight before waiting for acknowledgements.
const MAX_IN_FLIGHT: usize = 50_000;

/// A batching, idempotent Kafka producer for one topic.
pub struct TopicProducer {
    producer: FutureProducer<ProducerContext>,
    context: ProducerContext,
    topic: String,
    security: Option<KafkaSecurity>,
}

impl TopicProducer {
    /// A producer for `topic` on `brokers` whose record batches are compressed with
    /// `compression` (extra librdkafka properties in `properties`), over TLS and/or with a SASL
    /// login when `security` says so. `failures` says where librdkafka's broker connection
    /// failures go: [`TransportFailures::Logged`] (each time, at ERROR) for a long-running client;
    /// [`TransportFailures::Debug`] for a short-lived command (`coinstream generate --topic`),
    /// whose [`TopicProducer::check`] and [`TopicProducer::create_topic`] then name the last one
    /// in their error instead, once.
    ///
    /// # Errors
    /// A [`Error::Config`] when librdkafka refuses the properties.
    pub fn new(
        brokers: &str,
        topic: &str,
        compression: Compression,
        properties: &BTreeMap<String, String>,
        security: Option<KafkaSecurity>,
        failures: TransportFailures,
    ) -> Result<Self> {
        let context = ProducerContext::new(failures, SecurityWatch::new(security.as_ref()));
        // Batched sends (never a flush per message); the user's properties may retune these,
        // but not idempotence, which keeps a retried send from writing a trade twice.
        let defaults = [
            ("linger.ms", "10"),
            compression.property(),
            ("queue.buffering.max.messages", "1000000"),
        ];
        let producer = super::client_config(brokers, &defaults, properties, security.as_ref())
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .create_with_context(context.clone())
            .map_err(|e| {
                Error::config(
                    "brokers",
                    format!(
                        "cannot create a Kafka producer for {brokers}: {}",
                        engine::report(&e)
                    ),
                )
            })?;
        Ok(Self {
            producer,
            context,
            topic: topic.to_owned(),
            security,
        })
    }

    /// Sends every `(key, payload)` and returns once all are acknowledged.
    ///
    /// # Errors
    /// A record that librdkafka could not deliver fails the whole call as an [`Error::Sink`] with
    /// rdkafka's error as the source: transient when it timed out or the brokers were away (it
    /// retries inside until its delivery timeout), permanent when the broker refuses the record
    /// itself, which no resend changes (too large for the topic's `max.message.bytes`, an
    /// invalid or unauthorized topic: see [`super::dead_letter::classify`]). Records already
    /// acknowledged stay written (callers resend the batch, which is at-least-once).
    pub async fn send_all(
        &self,
        messages: impl IntoIterator<Item = (String, Vec<u8>)>,
    ) -> Result<u64> {
        let mut in_flight = FuturesUnordered::new();
        let mut sent = 0u64;
        for (key, payload) in messages {
            let topic = self.topic.clone();
            let producer = self.producer.clone();
            in_flight.push(async move {
                producer
                    .send(
                        FutureRecord::to(&topic).key(&key).payload(&payload),
                        DELIVERY_TIMEOUT,
                    )
                    .await
                    .map(|_| ())
                    .map_err(|(e, _)| e)
            });
            if in_flight.len() >= MAX_IN_FLIGHT {
                self.settle(in_flight.next().await)?;
            }
            sent += 1;
        }
        while let Some(result) = in_flight.next().await {
            self.settle(Some(result))?;
        }
        Ok(sent)
    }

    /// The sink name of this producer's errors.
    fn name(&self) -> String {
        format!("kafka {}", self.topic)
    }

    fn settle(&self, result: Option<Result<(), rdkafka::error::KafkaError>>) -> Result<()> {
        match result {
            // librdkafka already retried the send until the delivery timeout; what it still
            // refuses for the record itself (its size, its topic) it would refuse again.
            Some(Err(e)) => {
                if let Some(fatal) = self.context.watch.fatal() {
                    return Err(Error::sink_failed(self.name(), fatal, Retry::Permanent));
                }
                let retry = match classify(&e) {
                    Failure::Transient => Retry::Transient,
                    Failure::TooLarge | Failure::Permanent => Retry::Permanent,
                };
                Err(ClientError::kafka("message not delivered", retry, e).at_sink(self.name()))
            }
            _ => Ok(()),
        }
    }

    /// Fetches the topic's metadata, as the first send would: fails when no broker answers within
    /// `timeout` (the sink's healthcheck, before the source is read).
    ///
    /// # Errors
    /// A transient [`Error::Sink`] when no broker answers; a permanent one, with librdkafka's
    /// reason, when a broker refused the login or the TLS handshake failed (see
    /// [`SecurityWatch`]).
    pub async fn check(&self, timeout: Duration) -> Result<()> {
        let producer = self.producer.clone();
        let topic = self.topic.clone();
        tokio::task::spawn_blocking(move || producer.client().fetch_metadata(Some(&topic), timeout))
            .await
            .map_err(|e| Error::Internal(format!("Kafka metadata task failed: {e}")))?
            .map(|_| ())
            .map_err(|e| match self.context.watch.fatal() {
                Some(fatal) => Error::sink_failed(self.name(), fatal, Retry::Permanent),
                None => ClientError::kafka(self.no_answer(timeout), Retry::Transient, e)
                    .at_sink(self.name()),
            })
    }

    /// "no broker answered within …", with the last connection failure librdkafka reported.
    fn no_answer(&self, timeout: Duration) -> String {
        match self.context.last_transport_failure() {
            Some(failure) => {
                format!("no broker answered within {timeout:?} (last attempt: {failure})")
            }
            None => format!("no broker answered within {timeout:?}"),
        }
    }

    /// Creates this producer's topic with `partitions` partitions (replication 1) when it does
    /// not exist; an existing topic must already have that many. `timeout` bounds the broker's
    /// answer.
    ///
    /// # Errors
    /// A permanent [`Error::Sink`] when an existing topic has another partition count or the
    /// broker refuses the topic; a transient one when no broker answers within `timeout`.
    pub async fn create_topic(
        &self,
        brokers: &str,
        partitions: i32,
        timeout: Duration,
    ) -> Result<()> {
        use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
        use rdkafka::types::RDKafkaErrorCode;

        // The producer's context: its failures are routed, and remembered, the same way.
        let admin: AdminClient<ProducerContext> =
            super::client_config(brokers, &[], &Default::default(), self.security.as_ref())
                .create_with_context(self.context.clone())
                .map_err(|e| {
                    ClientError::kafka("cannot create a Kafka admin client", Retry::Permanent, e)
                        .at_sink(self.name())
                })?;
        let topic = NewTopic::new(&self.topic, partitions, TopicReplication::Fixed(1));
        let options = AdminOptions::new().request_timeout(Some(timeout));
        let created = tokio::time::timeout(timeout, admin.create_topics([&topic], &options))
            .await
            .map_err(|_| {
                Error::sink_failed(self.name(), self.no_answer(timeout), Retry::Transient)
            })?
            .map_err(|e| {
                // librdkafka's own error is a bare timeout when no broker was reachable.
                let message = match self.context.last_transport_failure() {
                    Some(_) => format!("topic not created: {}", self.no_answer(timeout)),
                    None => "topic not created".to_owned(),
                };
                ClientError::kafka(message, Retry::Transient, e).at_sink(self.name())
            })?;
        for result in created {
            match result {
                Ok(_) => {}
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {
                    let existing = self.partition_count(timeout).await?;
                    if existing != partitions as usize {
                        return Err(Error::sink_failed(
                            self.name(),
                            format!(
                                "the topic exists with {existing} partitions, not {partitions}: \
                                 add partitions with kafka-topics.sh --alter, or pick another topic"
                            ),
                            Retry::Permanent,
                        ));
                    }
                }
                Err((_, code)) => {
                    return Err(Error::sink_failed(
                        self.name(),
                        format!("the broker refused to create the topic: {code}"),
                        Retry::Permanent,
                    ));
                }
            }
        }
        Ok(())
    }

    /// The topic's partition count, from the brokers' metadata.
    async fn partition_count(&self, timeout: Duration) -> Result<usize> {
        let producer = self.producer.clone();
        let topic = self.topic.clone();
        let metadata = tokio::task::spawn_blocking(move || {
            producer.client().fetch_metadata(Some(&topic), timeout)
        })
        .await
        .map_err(|e| Error::Internal(format!("Kafka metadata task failed: {e}")))?
        .map_err(|e| {
            ClientError::kafka(self.no_answer(timeout), Retry::Transient, e).at_sink(self.name())
        })?;
        Ok(metadata
            .topics()
            .iter()
            .find(|t| t.name() == self.topic)
            .map_or(0, |t| t.partitions().len()))
    }

    /// Waits until every queued message is delivered.
    ///
    /// # Errors
    /// A transient [`Error::Sink`] when the queue does not drain within the delivery timeout.
    pub fn flush(&self) -> Result<()> {
        self.producer.flush(DELIVERY_TIMEOUT).map_err(|e| {
            ClientError::kafka("flush failed", Retry::Transient, e).at_sink(self.name())
        })
    }
}
