//! What the replay tests (`coinbase_replay.rs`, `gateio_replay.rs`) share beyond testkit.

use std::time::Duration;

use connectors::kafka::config::Compression;
use connectors::kafka::producer::{TopicProducer, TransportFailures};
use testkit::env::kafka_bootstrap;

/// A new 3-partition topic named after `prefix` on the real Kafka, and an LZ4 producer to it
/// that has reached the broker (a missing broker fails the test here, naming the fix).
pub async fn fresh_topic_producer(prefix: &str) -> (String, TopicProducer) {
    let topic = testkit::unique_name(prefix);
    testkit::kafka::create_topic(&topic, 3).await;
    let producer = TopicProducer::new(
        &kafka_bootstrap(),
        &topic,
        Compression::Lz4,
        &Default::default(),
        None,
        TransportFailures::Logged,
    )
    .unwrap();
    producer
        .check(Duration::from_secs(15))
        .await
        .unwrap_or_else(|e| panic!("{e}; start Kafka with scripts/services.sh up"));
    (topic, producer)
}
