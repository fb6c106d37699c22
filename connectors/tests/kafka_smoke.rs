//! Smoke test of the real Kafka broker through `rdkafka`, independent of our Kafka connector:
//! it proves the broker from `scripts/services.sh` (or `$KAFKA_BOOTSTRAP`) accepts topics and
//! keeps per-partition order for an idempotent producer, which the Kafka source relies on.
//!
//! A missing broker is a test failure with a message that says how to start it, never a skip.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::join_all;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};

use testkit::env::{START_HINT, env_or};
use testkit::unique_name;

const DEFAULT_BOOTSTRAP: &str = "127.0.0.1:9092";
const PARTITIONS: i32 = 3;
const MESSAGES: usize = 10_000;
/// Distinct keys; the default partitioner hashes them, so all partitions get messages.
const KEYS: usize = 50;
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);
const CONSUME_TIMEOUT: Duration = Duration::from_secs(90);

fn bootstrap() -> String {
    env_or("KAFKA_BOOTSTRAP", DEFAULT_BOOTSTRAP)
}

fn client_config(bootstrap: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap);
    config
}

/// Fails the test (instead of hanging in a later call) when no broker answers.
fn require_broker(admin: &AdminClient<DefaultClientContext>, bootstrap: &str) {
    if let Err(err) = admin.inner().fetch_metadata(None, METADATA_TIMEOUT) {
        panic!(
            "Kafka broker not reachable at KAFKA_BOOTSTRAP={bootstrap} within {METADATA_TIMEOUT:?} \
             ({err}); {START_HINT}"
        );
    }
}

/// One produced message, as the producer's delivery report saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Record {
    offset: i64,
    key: String,
    payload: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produced_messages_come_back_in_partition_order() {
    let bootstrap = bootstrap();
    let admin: AdminClient<DefaultClientContext> = client_config(&bootstrap)
        .create()
        .expect("an AdminClient with only bootstrap.servers set is a valid config");
    tokio::task::block_in_place(|| require_broker(&admin, &bootstrap));

    let topic = unique_name("coinstream_kafka_smoke");
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let created = admin
        .create_topics(
            &[NewTopic::new(
                &topic,
                PARTITIONS,
                TopicReplication::Fixed(1),
            )],
            &opts,
        )
        .await
        .unwrap_or_else(|err| panic!("create topic {topic} on {bootstrap}: {err}"));
    for result in created {
        result.unwrap_or_else(|(name, code)| panic!("create topic {name}: {code}"));
    }

    // Delete the topic whatever the outcome; re-raise the test's panic afterwards.
    let outcome = AssertUnwindSafe(produce_and_consume(&bootstrap, &topic))
        .catch_unwind()
        .await;
    let deleted = admin.delete_topics(&[&topic], &opts).await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
    for result in deleted.unwrap_or_else(|err| panic!("delete topic {topic}: {err}")) {
        result.unwrap_or_else(|(name, code)| panic!("delete topic {name}: {code}"));
    }
}

async fn produce_and_consume(bootstrap: &str, topic: &str) {
    let produced = produce(bootstrap, topic).await;
    assert_eq!(
        produced.len(),
        PARTITIONS as usize,
        "{KEYS} keys should hash onto all {PARTITIONS} partitions, got {:?}",
        produced.keys().collect::<Vec<_>>()
    );
    let consumed = consume(bootstrap, topic).await;

    for (partition, expected) in &produced {
        let got = consumed.get(partition).map_or(&[][..], Vec::as_slice);
        assert_eq!(
            got.len(),
            expected.len(),
            "partition {partition}: consumed {} messages, produced {}",
            got.len(),
            expected.len()
        );
        if let Some(i) = (0..got.len()).find(|&i| got[i] != expected[i]) {
            panic!(
                "partition {partition}: message #{i} out of order or corrupted: \
                 consumed {:?}, produced {:?}",
                got[i], expected[i]
            );
        }
    }
    assert_eq!(
        consumed.len(),
        produced.len(),
        "messages on unexpected partitions"
    );
    let total: usize = consumed.values().map(Vec::len).sum();
    assert_eq!(total, MESSAGES);
}

/// Produces every message and returns them per partition, in the order they were enqueued.
async fn produce(bootstrap: &str, topic: &str) -> BTreeMap<i32, Vec<Record>> {
    let producer: FutureProducer = client_config(bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("message.timeout.ms", "30000")
        .set("queue.buffering.max.messages", (2 * MESSAGES).to_string())
        .create()
        .expect("an idempotent FutureProducer config is valid");

    // send_result enqueues synchronously, so the enqueue order is exactly 0..MESSAGES; the
    // idempotent producer must keep that order within each partition.
    let mut deliveries = Vec::with_capacity(MESSAGES);
    for i in 0..MESSAGES {
        let key = format!("key-{}", i % KEYS);
        let payload = format!("message {i} for {key}");
        let record = FutureRecord::to(topic).key(&key).payload(&payload);
        let delivery = producer
            .send_result(record)
            .unwrap_or_else(|(err, _)| panic!("enqueue message {i}: {err}"));
        deliveries.push((key, payload, delivery));
    }

    let (meta, futures): (Vec<_>, Vec<_>) = deliveries
        .into_iter()
        .map(|(key, payload, delivery)| ((key, payload), delivery))
        .unzip();
    let reports = join_all(futures).await;

    let mut by_partition: BTreeMap<i32, Vec<Record>> = BTreeMap::new();
    let mut partition_of_key: BTreeMap<String, i32> = BTreeMap::new();
    for (i, ((key, payload), report)) in meta.into_iter().zip(reports).enumerate() {
        let delivery = match report {
            Ok(Ok(delivery)) => delivery,
            Ok(Err((err, _))) => panic!("message {i} not delivered: {err}"),
            Err(_) => panic!("message {i}: producer dropped the delivery report"),
        };
        let first = *partition_of_key
            .entry(key.clone())
            .or_insert(delivery.partition);
        assert_eq!(
            first, delivery.partition,
            "key {key} went to two partitions"
        );
        let records = by_partition.entry(delivery.partition).or_default();
        if let Some(prev) = records.last() {
            assert!(
                delivery.offset > prev.offset,
                "message {i} got offset {} on partition {}, not after {}",
                delivery.offset,
                delivery.partition,
                prev.offset
            );
        }
        records.push(Record {
            offset: delivery.offset,
            key,
            payload,
        });
    }
    by_partition
}

/// Reads the topic from the beginning in a fresh group until MESSAGES have arrived.
async fn consume(bootstrap: &str, topic: &str) -> BTreeMap<i32, Vec<Record>> {
    let consumer: StreamConsumer = client_config(bootstrap)
        .set("group.id", unique_name("coinstream_kafka_smoke_group"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .expect("a StreamConsumer config with a group.id is valid");
    consumer
        .subscribe(&[topic])
        .unwrap_or_else(|err| panic!("subscribe to {topic}: {err}"));

    let mut by_partition: BTreeMap<i32, Vec<Record>> = BTreeMap::new();
    let mut received = 0;
    let deadline = Instant::now() + CONSUME_TIMEOUT;
    while received < MESSAGES {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let message = match tokio::time::timeout(remaining, consumer.recv()).await {
            Ok(Ok(message)) => message,
            Ok(Err(err)) => panic!("consume from {topic} after {received} messages: {err}"),
            Err(_) => panic!(
                "timed out after {CONSUME_TIMEOUT:?}: consumed {received} of {MESSAGES} messages \
                 from {topic} (per partition: {:?})",
                by_partition
                    .iter()
                    .map(|(p, records)| (*p, records.len()))
                    .collect::<Vec<_>>()
            ),
        };
        let text = |bytes: Option<&[u8]>, what: &str| {
            let bytes = bytes.unwrap_or_else(|| panic!("message without {what}"));
            String::from_utf8(bytes.to_vec()).unwrap_or_else(|err| panic!("{what}: {err}"))
        };
        by_partition
            .entry(message.partition())
            .or_default()
            .push(Record {
                offset: message.offset(),
                key: text(message.key(), "key"),
                payload: text(message.payload(), "payload"),
            });
        received += 1;
    }
    by_partition
}
