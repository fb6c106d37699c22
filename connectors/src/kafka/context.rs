//! The consumer's context. It serves rebalances itself so that a partition's first position is
//! decided before fetching starts, as Spark's Kafka source decides it:
//! - the group's committed offset, unless retention already deleted it (data loss);
//! - with nothing committed, on the query's first start (no checkpoint, no committed offset for
//!   any partition of the topics) and for a partition that existed then, the configured
//!   `starting_offsets`, resolved to a concrete offset and committed at once, so every partition
//!   has a recorded position and a restart never depends on a reset policy;
//! - any other partition with nothing committed (added to a topic while the query runs, or never
//!   committed before a restart) starts at its earliest offset, so none of its records is skipped.
//!
//! It records every rebalance, with each assigned partition's first position, so the source can
//! drop messages of partitions it no longer owns and check each fetch for data loss.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};

use super::config::StartingOffsets;
use super::security::{KafkaSecurity, SecurityWatch};

/// How long broker look-ups inside a rebalance may take.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a revocation waits for the batch in process to be committed
/// ([`SourceContext::wait_for_batch`]): a healthy batch takes milliseconds to a second; one whose
/// sink keeps failing is not waited for past this, and its records are read again by the
/// partitions' next owner (which the sinks' idempotent writes absorb).
const BATCH_WAIT: Duration = Duration::from_secs(30);

/// `mutex`'s value even when a holder panicked: each value here is replaced or taken whole, so a
/// panic cannot leave it half-written, and the run must still see the events and the data loss.
fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// A partition and, when known, the offset this member starts reading it at.
pub type Assignment = ((String, i32), Option<i64>);

/// One rebalance, as seen by this member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RebalanceEvent {
    /// These partitions are now ours, with their first positions where known.
    Assigned(Vec<Assignment>),
    /// These partitions are no longer ours.
    Revoked(Vec<(String, i32)>),
}

/// How the query starts: decided once, before the first rebalance.
#[derive(Debug, Clone)]
pub struct StartPolicy {
    /// Where partitions start on the query's first start.
    pub starting_offsets: StartingOffsets,
    /// Whether this is the query's first start (no checkpoint, nothing committed).
    pub first_start: bool,
    /// The partitions the topics had at start: only these take `starting_offsets`.
    pub initial_partitions: BTreeSet<(String, i32)>,
    /// Stop when records were deleted by retention before they were read.
    pub fail_on_data_loss: bool,
}

/// Raises each partition's offset in `offsets` to its end in `ends` (never lowers one).
fn raise(
    offsets: &mut BTreeMap<(String, i32), i64>,
    ends: impl IntoIterator<Item = ((String, i32), i64)>,
) {
    for (partition, end) in ends {
        let at = offsets.entry(partition).or_insert(end);
        *at = (*at).max(end);
    }
}

/// Decides first positions and records rebalance events for the source to apply.
#[derive(Debug)]
pub struct SourceContext {
    /// Set by the source before it subscribes (it needs the consumer to decide it).
    policy: OnceLock<StartPolicy>,
    events: Mutex<Vec<RebalanceEvent>>,
    /// Set when a rebalance found committed offsets deleted by retention and the config says to stop.
    data_loss: Mutex<Option<String>>,
    /// Offsets found deleted by retention at assignment and skipped (fail_on_data_loss = false).
    lost_offsets: AtomicU64,
    /// A refused login or failed TLS handshake, which must stop the source.
    security: SecurityWatch,
    /// Whether the group rebalances incrementally (cooperative-sticky, or the KIP-848 consumer
    /// protocol), decided from the client's config. Asking librdkafka in the rebalance callback
    /// (`rd_kafka_rebalance_protocol`) can block forever when the callback runs from the
    /// consumer's close (librdkafka issue #4041): a run then never exits.
    cooperative: bool,
    /// Rebalance callbacks served so far, so a close can tell when none is left queued.
    rebalances: AtomicU64,
    /// Per partition, the end of the last batch this query processed (its checkpoint's offsets
    /// at start, then each batch committed): a partition assigned to this member starts there
    /// when the group's committed offset is behind it, as after a crash before a commit was
    /// answered.
    processed: Mutex<BTreeMap<(String, i32), i64>>,
    /// Per partition, the end of processed batches not committed to the group yet (the source
    /// commits at most every `commit_interval_ms`): a revoked partition's is committed in the
    /// rebalance callback, before the partition goes to its next owner.
    uncommitted: Mutex<BTreeMap<(String, i32), i64>>,
    /// Whether a batch was handed to the engine and not committed yet, and its signal: a gather
    /// reading ahead while the engine processes a batch can serve a revocation, which waits for
    /// the batch's commit so that the partitions' next owner starts after it.
    in_process: Mutex<bool>,
    batch_done: Condvar,
}

impl SourceContext {
    /// A context whose start policy is set with [`SourceContext::set_policy`] before subscribing,
    /// for a client configured as `client` with `security`.
    pub fn new(client: &ClientConfig, security: Option<&KafkaSecurity>) -> Self {
        let cooperative = client
            .get("partition.assignment.strategy")
            .is_some_and(|s| s.contains("cooperative-sticky"))
            || client
                .get("group.protocol")
                .is_some_and(|p| p.eq_ignore_ascii_case("consumer"));
        Self {
            policy: OnceLock::new(),
            events: Mutex::default(),
            data_loss: Mutex::default(),
            lost_offsets: AtomicU64::new(0),
            security: SecurityWatch::new(security),
            cooperative,
            rebalances: AtomicU64::new(0),
            processed: Mutex::default(),
            uncommitted: Mutex::default(),
            in_process: Mutex::new(false),
            batch_done: Condvar::new(),
        }
    }

    /// Records batch ends (next offset per partition) whose commit to the group waits for the
    /// next [`SourceContext::take_uncommitted`] or a revocation; a later end of a partition
    /// replaces an earlier one.
    pub fn defer_commit(&self, ends: impl IntoIterator<Item = ((String, i32), i64)>) {
        raise(&mut locked(&self.uncommitted), ends);
    }

    /// Takes every end recorded by [`SourceContext::defer_commit`] and not committed since.
    pub fn take_uncommitted(&self) -> BTreeMap<(String, i32), i64> {
        std::mem::take(&mut *locked(&self.uncommitted))
    }

    /// Marks a batch as handed to the engine: a revocation served from now on waits for
    /// [`SourceContext::batch_finished`] (or [`BATCH_WAIT`]).
    pub fn batch_handed_out(&self) {
        *locked(&self.in_process) = true;
    }

    /// Marks the batch handed out as finished (committed, or given up by a closing source) and
    /// wakes a revocation waiting for it.
    pub fn batch_finished(&self) {
        *locked(&self.in_process) = false;
        self.batch_done.notify_all();
    }

    /// Waits until no batch is in process, at most [`BATCH_WAIT`]: a revocation served by a
    /// gather reading ahead then commits the batch's ends (deferred by the source's `commit`).
    fn wait_for_batch(&self) {
        let deadline = Instant::now() + BATCH_WAIT;
        let mut in_process = locked(&self.in_process);
        while *in_process {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                tracing::warn!(
                    waited_s = BATCH_WAIT.as_secs(),
                    "A revocation did not wait longer for the batch in process; the partitions' next owner reads its records again."
                );
                return;
            }
            in_process = match self.batch_done.wait_timeout(in_process, left) {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
    }

    /// Commits (and waits for) the uncommitted ends of the partitions being revoked, so their
    /// next owner starts after what this instance processed. A failure is logged: the next owner
    /// then re-reads those records, which the sinks' idempotent writes absorb.
    fn commit_revoked(&self, consumer: &BaseConsumer<Self>, revoked: &[(String, i32)]) {
        let mut tpl = TopicPartitionList::new();
        {
            let mut uncommitted = locked(&self.uncommitted);
            for partition in revoked {
                if let Some(end) = uncommitted.remove(partition) {
                    let _ =
                        tpl.add_partition_offset(&partition.0, partition.1, Offset::Offset(end));
                }
            }
        }
        if tpl.count() == 0 {
            return;
        }
        if let Err(e) = consumer.commit(&tpl, CommitMode::Sync) {
            tracing::warn!(error = %e, "Could not commit the processed offsets of the revoked partitions; their next owner reads those records again.");
        }
    }

    /// Records that this query processed each partition up to (not including) its offset; an
    /// offset below one already recorded is ignored.
    pub fn record_processed(&self, ends: impl IntoIterator<Item = ((String, i32), i64)>) {
        raise(&mut locked(&self.processed), ends);
    }

    /// How many rebalance callbacks (assign, revoke or failed) have been served.
    pub fn rebalances(&self) -> u64 {
        self.rebalances.load(Ordering::Relaxed)
    }

    /// The refused login or failed TLS handshake that must stop the source, if any.
    pub fn security_failure(&self) -> Option<String> {
        self.security.fatal()
    }

    /// Sets how the query starts; only the first call counts.
    pub fn set_policy(&self, policy: StartPolicy) {
        let _ = self.policy.set(policy);
    }

    /// Takes the events recorded since the last call.
    pub fn take_events(&self) -> Vec<RebalanceEvent> {
        std::mem::take(&mut *locked(&self.events))
    }

    /// The data loss that must stop the run, if any.
    pub fn data_loss(&self) -> Option<String> {
        locked(&self.data_loss).clone()
    }

    /// Offsets skipped at assignment because retention had deleted them.
    pub fn lost_offsets(&self) -> u64 {
        self.lost_offsets.load(Ordering::Relaxed)
    }

    fn push(&self, event: RebalanceEvent) {
        locked(&self.events).push(event);
    }

    /// Sets each partition's first position in `tpl` (left unset: the committed offset) and
    /// returns, per partition, the concrete first position where known, plus the positions
    /// resolved from `starting_offsets` (to commit, so they are recorded).
    fn choose_positions(
        &self,
        consumer: &BaseConsumer<Self>,
        tpl: &mut TopicPartitionList,
    ) -> (Vec<Assignment>, TopicPartitionList) {
        let mut resolved = TopicPartitionList::new();
        let unknown = |tpl: &TopicPartitionList| {
            tpl.elements()
                .iter()
                .map(|e| ((e.topic().to_owned(), e.partition()), None))
                .collect::<Vec<_>>()
        };
        let Some(policy) = self.policy.get() else {
            tracing::error!(
                "Partitions assigned before the start policy was set; librdkafka picks their positions."
            );
            return (unknown(tpl), resolved);
        };
        let committed = match consumer.committed_offsets(tpl.clone(), LOOKUP_TIMEOUT) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "Could not read committed offsets during a rebalance; librdkafka will use them itself.");
                return (unknown(tpl), resolved);
            }
        };
        let processed = locked(&self.processed).clone();
        let mut assignments = Vec::new();
        for elem in committed.elements() {
            let (topic, partition) = (elem.topic().to_owned(), elem.partition());
            let key = (topic.clone(), partition);
            // Read from the broker once per partition, by whichever check needs them first.
            let read = std::cell::OnceCell::new();
            let marks = || {
                read.get_or_init(|| consumer.fetch_watermarks(&topic, partition, LOOKUP_TIMEOUT))
                    .clone()
            };
            let group = match elem.offset() {
                Offset::Offset(c) => Some(c),
                _ => None,
            };
            let mut offset = elem.offset();
            if let Some(&done) = processed.get(&key)
                && group.is_none_or(|c| c < done)
            {
                // This query processed the partition further than the group recorded: a batch's
                // commit was not answered before a crash, or not sent before the partition
                // moved. An offset past the partition's end is not this partition's (a topic
                // deleted and made again): the group's offset stands.
                match marks() {
                    Ok((_, high)) if done <= high => {
                        tracing::info!(topic, partition, group = ?group, processed = done, "Starting where this query's checkpoint says it processed to, ahead of the group's committed offset.");
                        offset = Offset::Offset(done);
                        // Committed below, so the group records it too.
                        let _ = resolved.add_partition_offset(&topic, partition, offset);
                        if let Err(e) = tpl.set_partition_offset(&topic, partition, offset) {
                            tracing::warn!(error = %e, topic, partition, "Could not set a starting position.");
                        }
                    }
                    Ok((_, high)) => tracing::warn!(
                        topic,
                        partition,
                        processed = done,
                        high,
                        "The checkpoint's offset is past the partition's end; using the group's."
                    ),
                    Err(e) => {
                        tracing::warn!(error = %e, topic, partition, "Could not read the partition's end to check the checkpoint's offset; using the group's.")
                    }
                }
            }
            let (position, first) = match offset {
                Offset::Offset(c) => {
                    let Ok((low, _high)) = marks() else {
                        assignments.push((key, Some(c)));
                        continue;
                    };
                    if c >= low {
                        assignments.push((key, Some(c)));
                        continue;
                    }
                    let message = format!(
                        "{topic}/{partition}: committed offset {c} was deleted by retention (earliest kept is {low}); offsets {c}..{low} were never processed"
                    );
                    if policy.fail_on_data_loss {
                        tracing::error!(%message, "Data loss: stopping (fail_on_data_loss = true).");
                        *locked(&self.data_loss) = Some(message);
                        assignments.push((key, Some(c)));
                        continue;
                    }
                    tracing::error!(%message, "Data loss: continuing from the earliest kept offset (fail_on_data_loss = false).");
                    self.lost_offsets
                        .fetch_add((low - c) as u64, Ordering::Relaxed);
                    (Offset::Offset(low), Some(low))
                }
                _ if policy.first_start && policy.initial_partitions.contains(&key) => {
                    let wanted = match &policy.starting_offsets {
                        StartingOffsets::Earliest => Offset::Beginning,
                        StartingOffsets::Latest => Offset::End,
                        StartingOffsets::Specific(o) => match o.get(&topic, partition) {
                            Some(-2) => Offset::Beginning,
                            Some(n) if n >= 0 => Offset::Offset(n),
                            Some(_) => Offset::End,
                            // Not reached: the source refuses to start unless the JSON names
                            // every partition there was at the first start. Were it reached,
                            // reading all of the partition loses nothing.
                            None => Offset::Beginning,
                        },
                    };
                    // A concrete offset, committed below: the partition's position is recorded
                    // from the first start on.
                    let concrete = match (wanted, marks()) {
                        (Offset::Offset(n), _) => Some(n),
                        (Offset::Beginning, Ok((low, _))) => Some(low),
                        (Offset::End, Ok((_, high))) => Some(high),
                        _ => None,
                    };
                    match concrete {
                        Some(n) => {
                            let _ =
                                resolved.add_partition_offset(&topic, partition, Offset::Offset(n));
                            (Offset::Offset(n), Some(n))
                        }
                        None => (wanted, None),
                    }
                }
                // Added after the first start, or never committed: read all of it.
                _ => {
                    if !policy.first_start || !policy.initial_partitions.contains(&key) {
                        tracing::info!(
                            topic,
                            partition,
                            "A partition with no committed offset starts at its earliest offset."
                        );
                    }
                    (Offset::Beginning, None)
                }
            };
            assignments.push((key, first));
            if let Err(e) = tpl.set_partition_offset(&topic, partition, position) {
                tracing::warn!(error = %e, topic, partition, "Could not set a starting position.");
            }
        }
        (assignments, resolved)
    }
}

impl ClientContext for SourceContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, facility: &str, message: &str) {
        self.security.log(level, facility, message);
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        self.security.observe(&error, reason);
    }
}

impl ConsumerContext for SourceContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let parts = |tpl: &TopicPartitionList| {
            tpl.elements()
                .iter()
                .map(|e| (e.topic().to_owned(), e.partition()))
                .collect::<Vec<_>>()
        };
        let cooperative = self.cooperative;
        self.rebalances.fetch_add(1, Ordering::Relaxed);
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let (assigned, resolved) = self.choose_positions(consumer, tpl);
                tracing::info!(partitions = ?parts(tpl), "Partitions assigned to this instance.");
                let result = if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                };
                if let Err(e) = result {
                    tracing::error!(error = %e, "Could not take the assigned partitions.");
                }
                if resolved.count() > 0 {
                    // Spark writes the resolved starting offsets to its offset log before the
                    // first batch; the group's commit is that record here.
                    if let Err(e) = consumer.commit(&resolved, CommitMode::Sync) {
                        tracing::warn!(error = %e, "Could not record the starting offsets; a restart before the first batch resolves them again.");
                    }
                }
                self.push(RebalanceEvent::Assigned(assigned));
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let revoked = parts(tpl);
                tracing::info!(partitions = ?revoked, "Partitions revoked from this instance.");
                self.wait_for_batch();
                self.commit_revoked(consumer, &revoked);
                // A partition the source paused ([`super::source`]'s flow control) would stay
                // paused in librdkafka when it is assigned again; resuming one that is not
                // paused does nothing.
                if let Err(e) = consumer.resume(tpl) {
                    tracing::warn!(error = %e, "Could not resume the revoked partitions.");
                }
                self.push(RebalanceEvent::Revoked(revoked));
                let result = if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                };
                if let Err(e) = result {
                    tracing::error!(error = %e, "Could not release the revoked partitions.");
                }
            }
            other => {
                let code: RDKafkaErrorCode = other.into();
                tracing::warn!(error = %code, "Rebalance failed.");
                if let Ok(assignment) = consumer.assignment() {
                    let _ = consumer.resume(&assignment);
                }
                let _ = consumer.unassign();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::ClientConfig;

    use super::SourceContext;

    #[test]
    fn the_rebalance_protocol_comes_from_the_clients_config() {
        let cooperative = |settings: &[(&str, &str)]| {
            let mut client = ClientConfig::new();
            for (key, value) in settings {
                client.set(*key, *value);
            }
            SourceContext::new(&client, None).cooperative
        };
        assert!(!cooperative(&[]));
        assert!(!cooperative(&[(
            "partition.assignment.strategy",
            "range,roundrobin"
        )]));
        assert!(cooperative(&[(
            "partition.assignment.strategy",
            "cooperative-sticky"
        )]));
        assert!(cooperative(&[("group.protocol", "consumer")]));
        assert!(!cooperative(&[("group.protocol", "classic")]));
    }
}
