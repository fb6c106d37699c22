//! `[dead_letter] type = "kafka"`: each dead letter as one JSON message (source topic, partition,
//! offset, reason, the message as received and, when the source converted it, the converted record:
//! the same JSON as the file output) on a topic, keyed by its source `topic/partition`. A replayed batch
//! sends its dead letters again: this output is at-least-once.

use std::time::Duration;

use async_trait::async_trait;
use engine::{DeadLetter, DeadLetterSink, Error, Result, Retry};
use futures::future::try_join_all;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use super::config::KafkaDeadLetterConfig;
use crate::dead_letter::dead_letter_json;

/// How long a dead letter may wait for the broker's acknowledgement.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);

/// The Kafka dead-letter output.
pub struct KafkaDeadLetterSink {
    config: KafkaDeadLetterConfig,
    producer: FutureProducer,
}

impl KafkaDeadLetterSink {
    /// Builds the producer (idempotent, acks from all in-sync replicas).
    pub fn new(config: KafkaDeadLetterConfig) -> Result<Self> {
        let brokers = config
            .brokers
            .clone()
            .unwrap_or_else(super::default_brokers);
        let producer = super::client_config(&brokers, &[("linger.ms", "5")], &config.properties)
            .set("enable.idempotence", "true")
            .create()
            .map_err(|e| {
                Error::config(
                    "dead_letter",
                    format!("cannot create the Kafka producer: {e}"),
                )
            })?;
        Ok(Self { config, producer })
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
            .map(|l| {
                (
                    format!("{}/{}", l.topic, l.partition),
                    dead_letter_json(l).to_string(),
                )
            })
            .collect();
        let sends = payloads.iter().map(|(key, body)| {
            self.producer.send(
                FutureRecord::to(&self.config.topic).key(key).payload(body),
                DELIVERY_TIMEOUT,
            )
        });
        try_join_all(sends).await.map_err(|(e, _)| Error::Sink {
            name: self.description(),
            message: format!("dead letter not delivered: {e}"),
            retry: Retry::Transient,
        })?;
        Ok(())
    }

    async fn close(&mut self) -> Result<()> {
        self.producer
            .flush(DELIVERY_TIMEOUT)
            .map_err(|e| Error::Sink {
                name: self.description(),
                message: format!("flush failed: {e}"),
                retry: Retry::Transient,
            })
    }
}
