//! The blocking side of the Kafka source: the consumer's settings, the gather loop that polls
//! librdkafka on a blocking thread (with the [`LINGER`] batching rule), and the broker look-ups
//! (positions, committed offsets, watermarks). Nothing here knows about batches or the engine's
//! offsets.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

use engine::{RawRecord, Retry};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::context::{RebalanceEvent, SourceContext};
use super::offsets::{Partition, PartitionTable};

/// How long metadata and offset requests may take.
pub(super) const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// librdkafka's prefetch, unless the config's `properties` say otherwise. By default librdkafka
/// keeps up to 100,000 messages per partition queued and, whenever a partition's queue is full,
/// waits `fetch.queue.backoff.ms` (1 s) before fetching it again: a consumer that drains faster
/// than that sat idle between bursts. Measured on a 1M-trade backlog, 6 partitions, null sink:
/// librdkafka's defaults 6.3 s and 198 MB peak RSS; these 2.3 s and 164 MB, with the same CPU
/// (and the same 21 s to Cassandra, where 1,000,000 queued messages used 344 MB).
///
/// Also: `read_committed` (aborted transactions never reach a query, as Kafka's own stream
/// processors read), and partitions added to a topic are noticed within 5 s rather than
/// librdkafka's 5 minutes (Spark looks for new partitions at every trigger).
pub(super) const CONSUMER_DEFAULTS: &[(&str, &str)] = &[
    ("queued.min.messages", "20000"),
    // Smaller per-partition chunks per fetch response (librdkafka's default is 1 MiB), so the
    // consumer's one queue interleaves partitions finely and a batch can take its share from
    // each without buffering megabytes of one partition first (see `KafkaSource::shares`).
    ("max.partition.fetch.bytes", "131072"),
    ("fetch.queue.backoff.ms", "20"),
    // A fetch of partitions at their end waits on the broker for new records up to this long
    // (librdkafka's default 500 ms), and while it waits no other fetch goes out: a partition
    // resumed meanwhile (`KafkaSource::throttle`) waited for it at every batch near a backlog's
    // end. Records that arrive still return at once.
    ("fetch.wait.max.ms", "50"),
    ("isolation.level", "read_committed"),
    ("topic.metadata.refresh.interval.ms", "5000"),
];

/// Once records have arrived, how long a poll waits for more before handing them over: enough to
/// take a whole fetch response, short enough not to hold a live trade back.
const LINGER: Duration = Duration::from_millis(2);

/// Messages polled between two clock reads in [`gather`] while messages are queued.
const CLOCK_EVERY: u32 = 64;

/// What one blocking gather returned.
pub(super) struct Gathered {
    /// The records, each numbered by the source's [`PartitionTable`].
    pub records: Vec<RawRecord>,
    pub events: Vec<RebalanceEvent>,
    pub errors: u64,
    /// The consumer's position of each assigned partition after the gather: the offset after
    /// the last record or marker it consumed.
    pub positions: BTreeMap<Partition, i64>,
}

/// Whether retrying can fix a consumer error. Permanent: librdkafka's fatal errors, a codec
/// this build cannot decode, a corrupt or undecodable batch, and refused authorization (the
/// same request gets the same answer until someone changes the broker's ACLs or the build).
pub(super) fn retry_of(e: &KafkaError) -> Retry {
    if matches!(e, KafkaError::MessageConsumptionFatal(_)) {
        return Retry::Permanent;
    }
    match e.rdkafka_error_code() {
        Some(
            RDKafkaErrorCode::Fatal
            | RDKafkaErrorCode::NotImplemented
            | RDKafkaErrorCode::UnsupportedCompressionType
            | RDKafkaErrorCode::BadCompression
            | RDKafkaErrorCode::BadMessage
            | RDKafkaErrorCode::InvalidMessage
            | RDKafkaErrorCode::TopicAuthorizationFailed
            | RDKafkaErrorCode::GroupAuthorizationFailed
            | RDKafkaErrorCode::ClusterAuthorizationFailed
            | RDKafkaErrorCode::SaslAuthenticationFailed
            | RDKafkaErrorCode::Authentication,
        ) => Retry::Permanent,
        _ => Retry::Transient,
    }
}

/// Polls the consumer until `max_records`, `max_wait`, or [`LINGER`] without a message after the
/// first (blocking: run it off the async executor). Records of partitions revoked meanwhile are
/// dropped; new partitions are numbered in `table`.
pub(super) fn gather(
    consumer: &BaseConsumer<SourceContext>,
    table: &mut PartitionTable,
    max_records: usize,
    max_wait: Duration,
) -> Result<Gathered, KafkaError> {
    // The clocks are read once per CLOCK_EVERY messages, not per message: with a read per
    // message here, one in rust-rdkafka's poll and one in librdkafka's timed queue pop,
    // `clock_gettime` was about a quarter of this thread's profile samples (1,000,000 messages).
    // While messages are queued, a poll does not wait, so a time a few messages old is as good.
    let mut now = Instant::now();
    let mut received_at = SystemTime::now();
    let deadline = now + max_wait;
    let mut records: Vec<RawRecord> = Vec::with_capacity(max_records.min(65_536));
    let mut events = Vec::new();
    let mut errors = 0;
    let mut since_clock = 0;
    loop {
        // First without waiting (librdkafka then reads no clock either); only an empty queue
        // waits, up to the deadline, or the linger once there are records.
        let mut polled = consumer.poll(Duration::ZERO);
        if polled.is_none() {
            now = Instant::now();
            received_at = SystemTime::now();
            since_clock = 0;
            let mut remaining = deadline.saturating_duration_since(now);
            if !records.is_empty() {
                remaining = remaining.min(LINGER);
            }
            if !remaining.is_zero() {
                polled = consumer.poll(remaining);
            }
        }
        for event in consumer.context().take_events() {
            if let RebalanceEvent::Revoked(parts) = &event {
                let revoked: Vec<u32> = parts.iter().filter_map(|p| table.index_of(p)).collect();
                records.retain(|r| !revoked.contains(&r.position.partition));
            }
            events.push(event);
        }
        match polled {
            Some(Ok(m)) => records.push(RawRecord {
                position: table.position(m.topic(), m.partition(), m.offset()),
                payload: m.payload().unwrap_or_default().to_vec(),
                rejected: None,
                frame: None,
                received_at,
            }),
            Some(Err(e)) if retry_of(&e) == Retry::Permanent => {
                return Err(e);
            }
            Some(Err(e)) => {
                errors += 1;
                tracing::warn!(error = %e, "Kafka consumer error; librdkafka retries by itself.");
            }
            // Nothing more within the linger: hand over what there is.
            None if !records.is_empty() => break,
            None => {}
        }
        if records.len() >= max_records {
            break;
        }
        since_clock += 1;
        if since_clock >= CLOCK_EVERY {
            now = Instant::now();
            received_at = SystemTime::now();
            since_clock = 0;
        }
        if now >= deadline {
            break;
        }
    }
    Ok(Gathered {
        records,
        events,
        errors,
        positions: positions(consumer),
    })
}

/// The consumer's position of each assigned partition that has one (a local read).
pub(super) fn positions(consumer: &BaseConsumer<SourceContext>) -> BTreeMap<Partition, i64> {
    let Ok(tpl) = consumer.position() else {
        return BTreeMap::new();
    };
    offsets_of(&tpl).collect()
}

/// The offsets a partition list holds (a position, a commit), by partition; entries without
/// one (a logical offset such as `Invalid`) are left out.
pub(super) fn offsets_of(tpl: &TopicPartitionList) -> impl Iterator<Item = (Partition, i64)> {
    tpl.elements().into_iter().filter_map(|e| match e.offset() {
        Offset::Offset(n) => Some(((e.topic().to_owned(), e.partition()), n)),
        _ => None,
    })
}

/// The group's committed offset of each partition that has one.
pub(super) fn committed_positions(
    consumer: &BaseConsumer<SourceContext>,
    partitions: &[Partition],
) -> Result<BTreeMap<Partition, i64>, KafkaError> {
    let committed = consumer.committed_offsets(partition_list(partitions), REQUEST_TIMEOUT)?;
    Ok(offsets_of(&committed).collect())
}

/// `partitions` as a librdkafka partition list, without offsets.
pub(super) fn partition_list<'a>(
    partitions: impl IntoIterator<Item = &'a Partition>,
) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    for (topic, partition) in partitions {
        tpl.add_partition(topic, *partition);
    }
    tpl
}

/// Every partition's (low, high) watermarks.
pub(super) fn watermarks(
    consumer: &BaseConsumer<SourceContext>,
    topics: &[String],
) -> Result<BTreeMap<Partition, (i64, i64)>, KafkaError> {
    let mut out = BTreeMap::new();
    for topic in topics {
        let metadata = consumer.fetch_metadata(Some(topic), REQUEST_TIMEOUT)?;
        for t in metadata.topics() {
            if let Some(err) = t.error() {
                return Err(KafkaError::MetadataFetch(err.into()));
            }
            for p in t.partitions() {
                let marks = consumer.fetch_watermarks(topic, p.id(), REQUEST_TIMEOUT)?;
                out.insert((topic.clone(), p.id()), marks);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumer_errors_that_retrying_cannot_fix_are_permanent() {
        use RDKafkaErrorCode as C;
        for code in [
            C::NotImplemented,
            C::UnsupportedCompressionType,
            C::BadCompression,
            C::BadMessage,
            C::InvalidMessage,
            C::TopicAuthorizationFailed,
            C::GroupAuthorizationFailed,
            C::SaslAuthenticationFailed,
        ] {
            assert_eq!(
                retry_of(&KafkaError::MessageConsumption(code)),
                Retry::Permanent,
                "{code:?}"
            );
        }
        assert_eq!(
            retry_of(&KafkaError::MessageConsumptionFatal(C::Unknown)),
            Retry::Permanent
        );
        for code in [
            C::BrokerTransportFailure,
            C::AllBrokersDown,
            C::NotLeaderForPartition,
            C::UnknownTopicOrPartition,
            C::RequestTimedOut,
        ] {
            assert_eq!(
                retry_of(&KafkaError::MessageConsumption(code)),
                Retry::Transient,
                "{code:?}"
            );
        }
    }
}
