//! Kafka helpers on the real broker ([`crate::env::kafka_bootstrap`]): create topics, produce,
//! read a topic back, and look at a group's committed offsets. A broker that does not answer
//! fails the test with [`crate::env::START_HINT`].

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message as _, Offset, TopicPartitionList};

use crate::env::{START_HINT, kafka_bootstrap};

/// A client config pointed at the test broker.
pub fn client_config() -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", kafka_bootstrap());
    config
}

/// Creates `topics` as `(name, partitions)`, replication 1; panics when the broker does not
/// answer within 30 s or refuses one.
pub async fn create_topics(topics: &[(&str, i32)]) {
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|(name, partitions)| NewTopic::new(name, *partitions, TopicReplication::Fixed(1)))
        .collect();
    create(&new).await;
}

/// Creates one topic with `partitions` partitions and the topic configs `config` (e.g.
/// `("max.message.bytes", "4096")`).
pub async fn create_topic_with_config(name: &str, partitions: i32, config: &[(&str, &str)]) {
    let topic = config.iter().fold(
        NewTopic::new(name, partitions, TopicReplication::Fixed(1)),
        |t, (k, v)| t.set(k, v),
    );
    create(&[topic]).await;
}

async fn create(new: &[NewTopic<'_>]) {
    let admin: AdminClient<DefaultClientContext> =
        client_config().create().expect("a Kafka admin client");
    let created = tokio::time::timeout(
        Duration::from_secs(30),
        admin.create_topics(new, &AdminOptions::new()),
    )
    .await
    .unwrap_or_else(|_| {
        panic!(
            "Kafka at {} did not answer; {START_HINT}",
            kafka_bootstrap()
        )
    })
    .expect("create topics");
    for r in created {
        r.expect("topic created");
    }
}

/// Creates one topic with `partitions` partitions.
pub async fn create_topic(topic: &str, partitions: i32) {
    create_topics(&[(topic, partitions)]).await;
}

/// Produces `(key, payload)` messages to `topic` with an idempotent producer and waits for every
/// acknowledgement.
pub async fn produce(topic: &str, messages: &[(String, Vec<u8>)]) {
    let producer: FutureProducer = client_config()
        .set("enable.idempotence", "true")
        .set("linger.ms", "20")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .expect("a Kafka producer");
    for chunk in messages.chunks(10_000) {
        let sends = chunk.iter().map(|(key, body)| {
            producer.send(
                FutureRecord::to(topic).key(key).payload(body),
                Duration::from_secs(60),
            )
        });
        for r in futures::future::join_all(sends).await {
            r.map_err(|(e, _)| e).expect("produced");
        }
    }
}

/// Produces one message and returns the partition and offset it got.
pub async fn produce_one(topic: &str, key: &str, payload: &[u8]) -> (i32, i64) {
    let producer: FutureProducer = client_config().create().expect("a Kafka producer");
    let delivery = producer
        .send(
            FutureRecord::to(topic).key(key).payload(payload),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| e)
        .expect("produced");
    (delivery.partition, delivery.offset)
}

/// Every message of `topic` as JSON values: [`read_topic`] with a 2 s quiet time.
pub async fn read_json(topic: &str, expected: usize) -> Vec<serde_json::Value> {
    read_topic(topic, expected, Duration::from_secs(2))
        .await
        .iter()
        .map(Received::json)
        .collect()
}

/// One message read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The message key as UTF-8 (empty when the message had none).
    pub key: String,
    /// The payload bytes (empty for a tombstone).
    pub payload: Vec<u8>,
    /// Partition and offset.
    pub partition: i32,
    /// Offset in the partition.
    pub offset: i64,
}

impl Received {
    /// The payload parsed as JSON into `T`; panics with the payload when it does not parse.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> T {
        serde_json::from_slice(&self.payload).unwrap_or_else(|e| {
            panic!(
                "message {}@{} is not the JSON expected: {e}: {}",
                self.partition,
                self.offset,
                String::from_utf8_lossy(&self.payload)
            )
        })
    }
}

/// Every message of `topic` from the start, in offset order per partition: waits up to 60 s for
/// `expected` messages, then `quiet` more to catch any extra; panics when fewer arrive. Reads with
/// a fresh group that commits nothing.
pub async fn read_topic(topic: &str, expected: usize, quiet: Duration) -> Vec<Received> {
    let consumer: StreamConsumer = client_config()
        .set("group.id", crate::unique_name(&format!("{topic}_reader")))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("a Kafka consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let mut out = Vec::new();
    let mut limit = Instant::now() + Duration::from_secs(60);
    let mut quiet_started = false;
    loop {
        let left = limit.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, consumer.recv()).await {
            Ok(Ok(m)) => {
                out.push(Received {
                    key: m
                        .key()
                        .map(|k| String::from_utf8_lossy(k).into_owned())
                        .unwrap_or_default(),
                    payload: m.payload().unwrap_or_default().to_vec(),
                    partition: m.partition(),
                    offset: m.offset(),
                });
                if out.len() >= expected && !quiet_started {
                    quiet_started = true;
                    limit = Instant::now() + quiet;
                }
            }
            Ok(Err(e)) => panic!("consuming {topic}: {e}"),
            Err(_) => break,
        }
    }
    assert!(
        out.len() >= expected,
        "only {} of {expected} messages on {topic}",
        out.len()
    );
    out
}

/// [`read_topic`] with each payload parsed as JSON `T`, grouped by key in arrival order.
pub async fn read_topic_by_key<T: serde::de::DeserializeOwned>(
    topic: &str,
    expected: usize,
    quiet: Duration,
) -> BTreeMap<String, Vec<T>> {
    let mut out: BTreeMap<String, Vec<T>> = BTreeMap::new();
    for m in read_topic(topic, expected, quiet).await {
        let value = m.json();
        out.entry(m.key).or_default().push(value);
    }
    out
}

/// How many messages `topic`'s first `partitions` partitions hold (high minus low watermark).
pub fn messages_on(topic: &str, partitions: i32) -> i64 {
    let consumer: BaseConsumer = client_config().create().expect("a Kafka consumer");
    (0..partitions)
        .map(|p| {
            let (low, high) = consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .expect("watermarks");
            high - low
        })
        .sum()
}

/// Each partition's committed offset in `group` (None when nothing is committed) and its end
/// (high watermark), for partitions `0..partitions`.
pub fn committed_and_end(
    group: &str,
    topic: &str,
    partitions: i32,
) -> Vec<(i32, Option<i64>, i64)> {
    let consumer: BaseConsumer = client_config()
        .set("group.id", group)
        .create()
        .expect("a Kafka consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let committed = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("committed offsets");
    committed
        .elements()
        .iter()
        .map(|e| {
            let (_, high) = consumer
                .fetch_watermarks(topic, e.partition(), Duration::from_secs(10))
                .expect("watermarks");
            let at = match e.offset() {
                Offset::Offset(n) => Some(n),
                _ => None,
            };
            (e.partition(), at, high)
        })
        .collect()
}

/// Asserts `group` committed every partition of `topic` to its end.
pub fn assert_committed_to_end(group: &str, topic: &str, partitions: i32) {
    for (partition, committed, end) in committed_and_end(group, topic, partitions) {
        assert_eq!(
            committed,
            Some(end),
            "partition {partition} committed to its end"
        );
    }
}

/// Waits until `group` is stable with `members` members, each holding at least one partition;
/// panics after `limit`.
pub fn wait_for_members(group: &str, members: usize, limit: Duration) {
    let client: BaseConsumer = client_config().create().expect("a Kafka consumer");
    let deadline = Instant::now() + limit;
    let mut last = String::new();
    while Instant::now() < deadline {
        let list = client
            .fetch_group_list(Some(group), Duration::from_secs(10))
            .expect("group list");
        if let Some(g) = list.groups().first() {
            // A member's assignment is the consumer protocol's bytes; more than the header of
            // an empty assignment means it holds partitions.
            let holding = g
                .members()
                .iter()
                .filter(|m| m.assignment().is_some_and(|a| a.len() > 10))
                .count();
            if g.state() == "Stable" && g.members().len() == members && holding == members {
                return;
            }
            last = format!("{} with {} members", g.state(), g.members().len());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("group {group} did not become stable with {members} members in {limit:?}: {last}");
}
